//! The simulated tenant: users, licences, groups and per-source record stores.
//!
//! Records are kept as compact metadata (32 bytes per Copilot interaction) and rendered to
//! bytes on demand by `render`, deterministically, so that a tenant of 100,000 users fits
//! in memory and the same record always has the same bytes. New sources (chats, channels,
//! meetings) add a store beside `copilot` and a ground-truth lister.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::config::SimConfig;
use super::text;

/// The Microsoft 365 Copilot SKU.
pub const COPILOT_SKU: &str = "639dec6b-bb19-468b-871c-c5c441c4b0cb";

/// Copilot service plans (seed 001) with their service names.
pub(crate) const COPILOT_PLANS: [(&str, &str); 6] = [
    (
        "82d30987-df9b-4486-b146-198b21d164c7",
        "M365CopilotGraphConnectors",
    ),
    (
        "931e4a88-a67f-48b5-814f-16a5f1e6028d",
        "M365CopilotIntelligentSearch",
    ),
    ("b95945de-b3bd-46db-8437-f2beb6ea2347", "M365CopilotTeams"),
    ("a62f8878-de10-42f3-b68f-6149a25ceb97", "M365CopilotApps"),
    ("3f30311c-6b1e-48a4-ab79-725b469da960", "M365CopilotChat"),
    (
        "89f1c4c8-0878-40f7-804d-869c9128ab5d",
        "M365CopilotPowerPlatformConnectors",
    ),
];
const ALL_PLANS: u8 = 0b11_1111;

/// A non-Copilot SKU every user holds (Microsoft 365 E5) and some of its plans, so that
/// discovery has to pick the Copilot licence out of several.
pub(crate) const E5_SKU: &str = "06ebc4ee-1bb5-47dd-8120-11324bc54e06";
pub(crate) const E5_PLANS: [(&str, &str); 3] = [
    ("efb87545-963c-4e0d-99df-69c6916d9eb0", "exchange"),
    ("57ff2da0-773e-42df-b2af-ffb7a2317929", "TeamspaceAPI"),
    ("5dbe027f-2339-4123-9542-606e4d348a72", "SharePoint"),
];

/// The "Copilot pilot" group: the first half of the licensed users.
pub(crate) const PILOT_GROUP_ID: &str = "aaaaaaaa-0000-4000-8000-00000000c0de";

/// Domain of every generated user principal name.
pub(crate) const DOMAIN: &str = "contoso.example";

/// Latest createdDateTime of generated history, before the anchor.
const HISTORY_END_GAP_MS: i64 = 60_000;
/// Late interactions are created in this span before the anchor.
const LATE_SPAN_MS: i64 = 2 * 3_600_000;
/// Longest delay between a prompt and its response.
const MAX_RESPONSE_DELAY_MS: i64 = 20_000;
/// Share of generated responses typed `unknownFutureValue` (in thousandths).
const UNKNOWN_KIND_PER_MILLE: u32 = 30;

/// Mixes two values into a well-distributed 64-bit hash (splitmix64 finaliser). Stable
/// across Rust versions, unlike `DefaultHasher`, which determinism requires.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .rotate_left(23);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A v4-shaped UUID derived from a hash, for deterministic ids.
pub(crate) fn uuid_from(h: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&h.to_be_bytes());
    bytes[8..].copy_from_slice(&mix(h, 0x5555).to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Milliseconds since the epoch to a UTC time (clamped to chrono's range).
pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The Copilot app a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum AppClass {
    Teams,
    BizChat,
    Word,
    Excel,
    Loop,
}

impl AppClass {
    pub(crate) const ALL: [AppClass; 5] = [
        AppClass::Teams,
        AppClass::BizChat,
        AppClass::Word,
        AppClass::Excel,
        AppClass::Loop,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AppClass::Teams => "IPM.SkypeTeams.Message.Copilot.Teams",
            AppClass::BizChat => "IPM.SkypeTeams.Message.Copilot.BizChat",
            AppClass::Word => "IPM.SkypeTeams.Message.Copilot.Word",
            AppClass::Excel => "IPM.SkypeTeams.Message.Copilot.Excel",
            AppClass::Loop => "IPM.SkypeTeams.Message.Copilot.Loop",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<AppClass> {
        AppClass::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Teams and BizChat dominate real traffic.
    fn pick(rng: &mut impl Rng) -> AppClass {
        match rng.gen_range(0..20) {
            0..=6 => AppClass::Teams,
            7..=13 => AppClass::BizChat,
            14..=15 => AppClass::Word,
            16..=17 => AppClass::Excel,
            _ => AppClass::Loop,
        }
    }
}

/// `interactionType` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Prompt,
    Response,
    /// A response rendered with `"interactionType":"unknownFutureValue"`.
    Unknown,
}

/// One Copilot interaction's metadata; `render` turns it into bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interaction {
    /// createdDateTime in epoch ms; also the id and the etag.
    pub created_ms: i64,
    /// When the record becomes visible to the export API.
    pub visible_from_ms: i64,
    /// Seed shared by a prompt and its response: requestId, session, topic, content.
    pub pair: u64,
    pub kind: Kind,
    pub app: AppClass,
}

/// Copilot licence state of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopilotLicence {
    None,
    /// Licensed, with the bitmask of enabled `COPILOT_PLANS`.
    Enabled {
        plans: u8,
    },
    /// Licence removed through the control API: Graph keeps the plans with
    /// capabilityStatus "Deleted".
    Removed {
        plans: u8,
        at_ms: i64,
    },
}

/// A directory user.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub index: usize,
    pub id: String,
    pub upn: String,
    pub given_name: &'static str,
    pub surname: &'static str,
    pub job_title: &'static str,
    pub office: &'static str,
    pub created_ms: i64,
    pub licence: CopilotLicence,
    pub licence_assigned_ms: i64,
    pub deleted_ms: Option<i64>,
}

impl User {
    pub(crate) fn display_name(&self) -> String {
        format!("{} {}", self.given_name, self.surname)
    }

    pub(crate) fn is_licensed(&self) -> bool {
        matches!(self.licence, CopilotLicence::Enabled { .. })
    }

    pub(crate) fn mail(&self) -> String {
        self.upn.clone()
    }
}

/// Per-user Copilot interactions, sorted by `created_ms`. Each user's list sits behind an
/// `Arc` so a request can snapshot it and release the tenant lock before rendering.
#[derive(Debug, Default)]
pub(crate) struct CopilotStore {
    pub per_user: Vec<Arc<Vec<Interaction>>>,
}

/// Why a tenant change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TenantError {
    #[error("user {0} does not exist")]
    UnknownUser(String),
    #[error("user {0} is already deleted")]
    AlreadyDeleted(String),
    #[error("user {0} has no Copilot licence")]
    NotLicensed(String),
    #[error("user {user} already has an interaction at epoch ms {ms}")]
    Conflict { user: String, ms: i64 },
}

/// Everything the simulated tenant holds.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub users: Vec<User>,
    index: HashMap<String, usize>,
    pub pilot_members: Vec<usize>,
    pub copilot: CopilotStore,
    /// Chats, teams and channels, meetings (empty unless `SimConfig::teams` asks for them).
    pub teams: super::teams_data::TeamsStore,
}

/// Timing inputs of generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub anchor_ms: i64,
    pub started_ms: i64,
}

/// Generated interactions of one user before ids are shared across users.
struct Draft {
    items: Vec<Interaction>,
    /// Per pair (items `2k`, `2k+1`): created in the late span.
    late: Vec<bool>,
    taken: HashSet<i64>,
}

impl Tenant {
    /// Generates the tenant described by `cfg`, deterministic in `cfg.seed` and the anchor.
    pub(crate) fn generate(cfg: &SimConfig, clock: Clock) -> Tenant {
        let users = generate_users(cfg, clock);
        let mut drafts: Vec<Option<Draft>> = users
            .iter()
            .map(|u| u.is_licensed().then(|| generate_draft(cfg, clock, u.index)))
            .collect();
        share_ids(cfg, &mut drafts);
        let per_user = drafts
            .into_iter()
            .map(|d| {
                let mut items = d.map(|d| d.items).unwrap_or_default();
                items.sort_by_key(|i| i.created_ms);
                Arc::new(items)
            })
            .collect();
        let licensed: Vec<usize> = users
            .iter()
            .filter(|u| u.is_licensed())
            .map(|u| u.index)
            .collect();
        let pilot_members = licensed[..licensed.len() / 2].to_vec();
        let index = users
            .iter()
            .map(|u| (u.id.to_ascii_lowercase(), u.index))
            .collect();
        let teams = super::teams_data::TeamsStore::generate(cfg, clock, &users);
        Tenant {
            users,
            index,
            pilot_members,
            copilot: CopilotStore { per_user },
            teams,
        }
    }

    /// Finds a user by object id (GUIDs compare case-insensitively, as in Graph).
    pub(crate) fn user(&self, id: &str) -> Option<&User> {
        self.index
            .get(&id.to_ascii_lowercase())
            .and_then(|&i| self.users.get(i))
    }

    fn user_index(&self, id: &str) -> Result<usize, TenantError> {
        self.index
            .get(&id.to_ascii_lowercase())
            .copied()
            .ok_or_else(|| TenantError::UnknownUser(id.to_owned()))
    }

    /// Removes the Copilot licence; the plans stay listed as "Deleted".
    pub(crate) fn unlicense(&mut self, id: &str, now_ms: i64) -> Result<&User, TenantError> {
        let i = self.user_index(id)?;
        let user = &mut self.users[i];
        match user.licence {
            CopilotLicence::Enabled { plans } => {
                user.licence = CopilotLicence::Removed {
                    plans,
                    at_ms: now_ms,
                };
                Ok(user)
            }
            _ => Err(TenantError::NotLicensed(id.to_owned())),
        }
    }

    /// Soft-deletes a user: it leaves `/users` and appears in deleted items; its Copilot
    /// data stays exportable.
    pub(crate) fn delete(&mut self, id: &str, now_ms: i64) -> Result<&User, TenantError> {
        let i = self.user_index(id)?;
        let user = &mut self.users[i];
        if user.deleted_ms.is_some() {
            return Err(TenantError::AlreadyDeleted(id.to_owned()));
        }
        user.deleted_ms = Some(now_ms);
        Ok(user)
    }

    /// Adds interactions for `id` at exactly the given instants (control API).
    pub(crate) fn add_interactions(
        &mut self,
        id: &str,
        new: &[Interaction],
    ) -> Result<usize, TenantError> {
        let i = self.user_index(id)?;
        if self.copilot.per_user.len() <= i {
            self.copilot.per_user.resize_with(i + 1, Default::default);
        }
        let items = Arc::make_mut(&mut self.copilot.per_user[i]);
        for n in new {
            if items.iter().any(|x| x.created_ms == n.created_ms) {
                return Err(TenantError::Conflict {
                    user: id.to_owned(),
                    ms: n.created_ms,
                });
            }
        }
        items.extend_from_slice(new);
        items.sort_by_key(|x| x.created_ms);
        Ok(i)
    }

    /// A snapshot of one user's interactions.
    pub(crate) fn interactions(&self, index: usize) -> Arc<Vec<Interaction>> {
        self.copilot
            .per_user
            .get(index)
            .cloned()
            .unwrap_or_default()
    }
}

fn generate_users(cfg: &SimConfig, clock: Clock) -> Vec<User> {
    let total = cfg.users as usize + cfg.unlicensed_users as usize;
    let mut roles: Vec<bool> = (0..total).map(|i| i < cfg.users as usize).collect();
    // Interleave licensed and unlicensed users so no client can rely on their order.
    roles.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, 0x0002_01e5)));
    roles
        .into_iter()
        .enumerate()
        .map(|(index, licensed)| generate_user(cfg.seed, clock, index, licensed))
        .collect()
}

fn generate_user(seed: u64, clock: Clock, index: usize, licensed: bool) -> User {
    let h = mix(mix(seed, 0x05e2), index as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let day_ms = 86_400_000;
    let created_ms = clock.anchor_ms - rng.gen_range(400 * day_ms..2_000 * day_ms);
    let plans = if rng.gen_bool(0.8) {
        ALL_PLANS
    } else {
        rng.gen_range(1..ALL_PLANS)
    };
    User {
        index,
        id: uuid_from(h),
        upn: format!("user{index:04}@{DOMAIN}"),
        given_name: pick(&mut rng, text::GIVEN_NAMES),
        surname: pick(&mut rng, text::SURNAMES),
        job_title: pick(&mut rng, text::JOB_TITLES),
        office: pick(&mut rng, text::OFFICES),
        created_ms,
        licence: if licensed {
            CopilotLicence::Enabled { plans }
        } else {
            CopilotLicence::None
        },
        licence_assigned_ms: created_ms + rng.gen_range(0..300 * day_ms),
        deleted_ms: None,
    }
}

pub(crate) fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn generate_draft(cfg: &SimConfig, clock: Clock, index: usize) -> Draft {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(cfg.seed, 0x1a7e), index as u64));
    let n = cfg.interactions_per_user as usize;
    let mut draft = Draft {
        items: Vec::with_capacity(n),
        late: Vec::with_capacity(n / 2),
        taken: HashSet::with_capacity(n),
    };
    let history_ms = i64::from(cfg.history_days) * 86_400_000;
    let end = clock.anchor_ms - HISTORY_END_GAP_MS - MAX_RESPONSE_DELAY_MS;
    for p in 0..n.div_ceil(2) {
        let late = rng.gen_bool(cfg.late_fraction);
        let start = if late {
            clock.anchor_ms - LATE_SPAN_MS
        } else {
            clock.anchor_ms - history_ms
        };
        let prompt_ms = unique_ms(&mut draft.taken, rng.gen_range(start..end.max(start + 1)));
        let visible_from_ms = if late {
            clock.started_ms + cfg.late_delay_secs as i64 * 1_000
        } else {
            prompt_ms.min(clock.started_ms)
        };
        let proto = Interaction {
            created_ms: prompt_ms,
            visible_from_ms,
            pair: rng.gen(),
            kind: Kind::Prompt,
            app: AppClass::pick(&mut rng),
        };
        draft.items.push(proto);
        draft.late.push(late);
        // An odd count ends with a prompt left unanswered (a cancelled request).
        if 2 * p + 1 < n {
            let delay = rng.gen_range(300..MAX_RESPONSE_DELAY_MS);
            let created_ms = unique_ms(&mut draft.taken, prompt_ms + delay);
            let kind = if rng.gen_range(0..1000) < UNKNOWN_KIND_PER_MILLE {
                Kind::Unknown
            } else {
                Kind::Response
            };
            let visible_from_ms = if late {
                visible_from_ms
            } else {
                created_ms.min(clock.started_ms)
            };
            draft.items.push(Interaction {
                created_ms,
                visible_from_ms,
                kind,
                ..proto
            });
        }
    }
    draft
}

/// Moves `ms` forward to the first instant not yet used by this user.
fn unique_ms(taken: &mut HashSet<i64>, mut ms: i64) -> i64 {
    while !taken.insert(ms) {
        ms += 1;
    }
    ms
}

/// Gives some pairs of one user the same instants (hence ids) as a pair of another user:
/// Graph ids are epoch milliseconds of each user's mailbox item, so this happens for real.
/// Each copy makes four records carry a shared id, hence `fraction * total / 4` copies.
fn share_ids(cfg: &SimConfig, drafts: &mut [Option<Draft>]) {
    let owners: Vec<usize> = (0..drafts.len())
        .filter(|&i| drafts[i].as_ref().is_some_and(|d| d.items.len() >= 2))
        .collect();
    if owners.len() < 2 || cfg.shared_id_fraction <= 0.0 {
        return;
    }
    let total: usize = drafts.iter().flatten().map(|d| d.items.len()).sum();
    let copies = ((cfg.shared_id_fraction * total as f64) / 4.0)
        .round()
        .max(1.0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, 0x05a2ed));
    for _ in 0..copies {
        let a = pick(&mut rng, &owners);
        let b = pick(&mut rng, &owners);
        if a != b {
            copy_pair(drafts, a, b, &mut rng);
        }
    }
}

fn copy_pair(drafts: &mut [Option<Draft>], a: usize, b: usize, rng: &mut impl Rng) {
    let Some((_, src)) = drafts[a].as_ref().and_then(|d| full_pair(d, rng)) else {
        return;
    };
    let Some(dst) = drafts[b].as_mut() else {
        return;
    };
    let Some((pb, _)) = full_pair(dst, rng) else {
        return;
    };
    if src.iter().any(|s| dst.taken.contains(&s.created_ms)) {
        return;
    }
    for (k, s) in src.iter().enumerate() {
        let item = &mut dst.items[2 * pb + k];
        dst.taken.remove(&item.created_ms);
        dst.taken.insert(s.created_ms);
        // Both pairs are historical, so the source's visibility rule applies unchanged.
        item.created_ms = s.created_ms;
        item.visible_from_ms = s.visible_from_ms;
    }
}

/// A random complete, non-late pair of a draft: its index and its two records.
fn full_pair(d: &Draft, rng: &mut impl Rng) -> Option<(usize, [Interaction; 2])> {
    let pairs = d.items.len() / 2;
    if pairs == 0 {
        return None;
    }
    let p = rng.gen_range(0..pairs);
    if d.late[p] {
        return None;
    }
    Some((p, [d.items[2 * p], d.items[2 * p + 1]]))
}

/// Parses a Graph-style timestamp to epoch ms.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats epoch ms as `2024-11-15T20:16:41.008Z` (Graph's form).
pub(crate) fn format_ms(ms: i64) -> String {
    ms_to_time(ms).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Formats epoch ms as `2024-11-15T20:16:41Z` (directory timestamps have no fraction).
pub(crate) fn format_secs(ms: i64) -> String {
    ms_to_time(ms).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The default anchor: `now` truncated to the second.
pub(crate) fn default_anchor(now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        let anchor_ms = 1_731_700_000_000;
        Clock {
            anchor_ms,
            started_ms: anchor_ms,
        }
    }

    #[test]
    fn generation_is_deterministic_and_ids_are_unique_per_user() {
        let cfg = SimConfig::default();
        let a = Tenant::generate(&cfg, clock());
        let b = Tenant::generate(&cfg, clock());
        assert_eq!(a.users.len(), 25);
        for (x, y) in a.copilot.per_user.iter().zip(&b.copilot.per_user) {
            assert_eq!(x, y);
            let ids: HashSet<i64> = x.iter().map(|i| i.created_ms).collect();
            assert_eq!(ids.len(), x.len());
        }
        assert_eq!(a.pilot_members.len(), 10);
    }

    #[test]
    fn some_ids_are_shared_across_users() {
        let cfg = SimConfig {
            shared_id_fraction: 0.2,
            ..SimConfig::default()
        };
        let t = Tenant::generate(&cfg, clock());
        let mut seen: HashMap<i64, usize> = HashMap::new();
        for (u, items) in t.copilot.per_user.iter().enumerate() {
            for i in items.iter() {
                seen.entry(i.created_ms).or_insert(u);
            }
        }
        let shared = t
            .copilot
            .per_user
            .iter()
            .enumerate()
            .flat_map(|(u, items)| items.iter().map(move |i| (u, i.created_ms)))
            .filter(|(u, ms)| seen.get(ms) != Some(u))
            .count();
        assert!(shared > 0);
    }

    #[test]
    fn history_stays_inside_its_span() {
        let cfg = SimConfig::default();
        let c = clock();
        let t = Tenant::generate(&cfg, c);
        let lo = c.anchor_ms - 30 * 86_400_000;
        for i in t.copilot.per_user.iter().flat_map(|v| v.iter()) {
            assert!(i.created_ms >= lo && i.created_ms <= c.anchor_ms - HISTORY_END_GAP_MS);
        }
    }
}
