//! The Teams part of the simulated tenant: chats (1:1, group, meeting), teams with standard,
//! private and shared channels (posts and replies), deleted teams, and online meetings with
//! transcripts and recordings.
//!
//! Messages are compact metadata with a list of versions; `messages` renders a version's
//! bytes on demand. A version is what Graph serves between two changes: every edit, reaction
//! or deletion appends one with a later `lastModifiedDateTime` (which is also its etag), and
//! `visible_from_ms` says from when the export API serves it. History generated before the
//! anchor keeps only each message's final state (Graph serves no older versions), so runtime
//! changes (control API) are the only way a message gets several observable versions.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::sync::Arc;

use super::config::{SimConfig, TeamsSimConfig};
use super::data::{mix, pick, uuid_from, Clock, User};

const DAY_MS: i64 = 86_400_000;
/// Deleted messages stay exportable for 21 days (seed 002, "User Deleted Messages").
pub(crate) const DELETED_VISIBLE_MS: i64 = 21 * DAY_MS;
/// Latest instant of generated history, before the anchor.
const HISTORY_END_GAP_MS: i64 = 60_000;
/// Most reactions a message carries (one per supported reaction type).
pub(crate) const MAX_REACTIONS: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChatKind {
    OneOnOne,
    Group,
    Meeting,
}

/// Who sent a message. User indices point into `Tenant::users`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    User(u32),
    /// An external (federated) user, not in the tenant.
    Federated(u32),
    /// An anonymous meeting guest.
    Guest(u32),
    /// A bot (applicationIdentityType `bot`).
    Bot(u8),
    /// A control message: `initiator` added `member`.
    System {
        initiator: u32,
        member: u32,
    },
}

/// One served state of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    /// lastModifiedDateTime in epoch ms; also the etag. Strictly increasing per message.
    pub modified_ms: i64,
    /// From when the export API serves this version.
    pub visible_from_ms: i64,
    pub edits: u16,
    /// lastEditedDateTime: when the body last changed.
    pub edited_ms: Option<i64>,
    pub reactions: u8,
    pub deleted_ms: Option<i64>,
}

impl Version {
    /// Deleted messages are served for 21 days after their deletion.
    pub(crate) fn exportable(&self, now_ms: i64) -> bool {
        self.deleted_ms
            .is_none_or(|d| now_ms - d <= DELETED_VISIBLE_MS)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Message {
    /// The id and createdDateTime (epoch ms): unique within its chat or channel only.
    pub id_ms: i64,
    pub reply_to: Option<i64>,
    pub sender: Sender,
    pub seed: u64,
    /// Never empty.
    pub versions: Vec<Version>,
}

impl Message {
    /// The version served at `as_of_ms`, if the message exists then.
    pub(crate) fn version_at(&self, as_of_ms: i64) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.visible_from_ms <= as_of_ms)
    }

    pub(crate) fn is_system(&self) -> bool {
        matches!(self.sender, Sender::System { .. })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Chat {
    pub id: String,
    pub members: Vec<u32>,
    pub messages: Arc<Vec<Message>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Membership {
    Standard,
    Private,
    Shared,
}

#[derive(Clone, Debug)]
pub(crate) struct Channel {
    pub id: String,
    /// The team that hosts it (channelIdentity.teamId).
    pub host: u32,
    pub membership: Membership,
    pub messages: Arc<Vec<Message>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Team {
    pub id: String,
    pub name: String,
    pub members: Vec<u32>,
    pub deleted_ms: Option<i64>,
    /// Permanently deleted: gone from both listings, every path answers 404.
    pub purged_ms: Option<i64>,
    /// Channels it hosts and shared channels it is a member of (indices into `channels`).
    pub channels: Vec<u32>,
}

/// A transcript or a recording of a meeting.
#[derive(Clone, Debug)]
pub(crate) struct Artifact {
    pub id: String,
    /// createdDateTime in 100 ns ticks since the epoch (Graph shows seven fractional digits).
    pub created_ticks: i64,
    pub seed: u64,
    /// Content size for recordings; transcripts are rendered (their size follows).
    pub size: u64,
    /// Rendered with a space before the content URL, as in the seed's second example.
    pub odd_url: bool,
}

impl Artifact {
    pub(crate) fn created_ms(&self) -> i64 {
        self.created_ticks.div_euclid(10_000)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Meeting {
    pub organizer: u32,
    pub id: String,
    pub end_ms: i64,
    pub attendees: Vec<u32>,
    pub transcripts: Vec<Artifact>,
    pub recordings: Vec<Artifact>,
}

/// Where a message lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conv {
    Chat(u32),
    Channel(u32),
}

/// What a runtime change does to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Edit,
    React,
    Delete,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TeamsError {
    #[error("no chat or channel {0}")]
    UnknownConversation(String),
    #[error("no message {message} in {conversation}")]
    UnknownMessage {
        conversation: String,
        message: String,
    },
    #[error("message {0} is deleted; it cannot change any more")]
    Deleted(String),
    #[error("no team {0}")]
    UnknownTeam(String),
    #[error("team {0} is already deleted")]
    TeamDeleted(String),
}

#[derive(Debug, Default)]
pub(crate) struct TeamsStore {
    pub chats: Vec<Chat>,
    /// Per user index: the chats the user is a member of.
    pub user_chats: Vec<Vec<u32>>,
    pub teams: Vec<Team>,
    pub channels: Vec<Channel>,
    pub meetings: Vec<Meeting>,
    /// Per user index: the meetings the user organised.
    pub organizer_meetings: Vec<Vec<u32>>,
}

/// Generation inputs shared by every generator below.
struct Gen<'a> {
    cfg: &'a TeamsSimConfig,
    seed: u64,
    clock: Clock,
    history_ms: i64,
    users: &'a [User],
}

impl Gen<'_> {
    fn end_ms(&self) -> i64 {
        self.clock.anchor_ms - HISTORY_END_GAP_MS
    }

    fn random_time(&self, rng: &mut ChaCha8Rng) -> i64 {
        let start = self.clock.anchor_ms - self.history_ms;
        rng.gen_range(start..self.end_ms())
    }

    /// The final state of a message created at `created`: maybe edited, reacted to, deleted.
    fn history(&self, rng: &mut ChaCha8Rng, created: i64) -> Version {
        let end = self.end_ms();
        let later = |rng: &mut ChaCha8Rng, t: i64| {
            if t + 1 >= end {
                t + 1
            } else {
                rng.gen_range(t + 1..end)
            }
        };
        let mut v = Version {
            modified_ms: created,
            visible_from_ms: 0,
            edits: 0,
            edited_ms: None,
            reactions: 0,
            deleted_ms: None,
        };
        if rng.gen_bool(self.cfg.edited_fraction) {
            v.edits = 1;
            v.modified_ms = later(rng, v.modified_ms);
            v.edited_ms = Some(v.modified_ms);
        }
        if rng.gen_bool(self.cfg.reacted_fraction) {
            v.reactions = rng.gen_range(1..=3);
            v.modified_ms = later(rng, v.modified_ms);
        }
        if rng.gen_bool(self.cfg.deleted_fraction) {
            v.modified_ms = later(rng, v.modified_ms);
            v.deleted_ms = Some(v.modified_ms);
        }
        v.visible_from_ms = v.modified_ms.min(self.clock.started_ms);
        v
    }

    fn message(
        &self,
        rng: &mut ChaCha8Rng,
        id_ms: i64,
        reply_to: Option<i64>,
        sender: Sender,
    ) -> Message {
        let seed = rng.gen();
        let version = if matches!(sender, Sender::System { .. }) {
            // Control messages are never edited, reacted to or deleted.
            Version {
                modified_ms: id_ms,
                visible_from_ms: id_ms.min(self.clock.started_ms),
                edits: 0,
                edited_ms: None,
                reactions: 0,
                deleted_ms: None,
            }
        } else {
            self.history(rng, id_ms)
        };
        Message {
            id_ms,
            reply_to,
            sender,
            seed,
            versions: vec![version],
        }
    }
}

impl TeamsStore {
    /// Generates the Teams data of `cfg.teams`, deterministic in the seed and the anchor.
    pub(crate) fn generate(cfg: &SimConfig, clock: Clock, users: &[User]) -> TeamsStore {
        let mut store = TeamsStore {
            user_chats: vec![Vec::new(); users.len()],
            organizer_meetings: vec![Vec::new(); users.len()],
            ..TeamsStore::default()
        };
        if users.len() < 2 {
            return store;
        }
        let g = Gen {
            cfg: &cfg.teams,
            seed: cfg.seed,
            clock,
            history_ms: i64::from(cfg.history_days) * DAY_MS,
            users,
        };
        store.generate_chats(&g);
        store.generate_teams(&g);
        store.link_shared_channels();
        store.generate_meetings(&g);
        store
    }

    fn generate_chats(&mut self, g: &Gen<'_>) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(g.seed, 0xc4a7));
        let mut pairs = HashSet::new();
        let mut previous_ids: Vec<i64> = Vec::new();
        for c in 0..g.cfg.chats {
            let (kind, members) = chat_members(&mut rng, g.users.len(), c, &mut pairs);
            let id = chat_id(&mut rng, kind, &members, g.users);
            // Every seventh chat reuses the previous chat's message ids: ids are unique only
            // within a chat, and the archiver must keep such messages apart.
            let reuse = c % 7 == 1 && previous_ids.len() == g.cfg.messages_per_chat as usize;
            let ids = if reuse {
                previous_ids.clone()
            } else {
                unique_times(&mut rng, g, g.cfg.messages_per_chat as usize)
            };
            let messages = chat_messages(&mut rng, g, kind, &members, &ids);
            previous_ids = ids;
            let index = self.chats.len() as u32;
            for &m in &members {
                self.user_chats[m as usize].push(index);
            }
            self.chats.push(Chat {
                id,
                members,
                messages: Arc::new(messages),
            });
        }
    }

    fn generate_teams(&mut self, g: &Gen<'_>) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(g.seed, 0x7ea5));
        let n = g.cfg.teams;
        for t in 0..n {
            let size = rng.gen_range(4..=12).min(g.users.len());
            let members: Vec<u32> = sample(&mut rng, g.users.len(), size)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let deleted = t >= n - g.cfg.deleted_teams;
            self.teams.push(Team {
                id: uuid_from(rng.gen()),
                name: format!("{} {}", pick(&mut rng, TEAM_NAMES), t + 1),
                members,
                deleted_ms: deleted.then(|| g.clock.anchor_ms - rng.gen_range(DAY_MS..10 * DAY_MS)),
                purged_ms: None,
                channels: Vec::new(),
            });
            for k in 0..g.cfg.channels_per_team {
                self.generate_channel(g, &mut rng, t, k);
            }
        }
    }

    fn generate_channel(&mut self, g: &Gen<'_>, rng: &mut ChaCha8Rng, team: u32, k: u32) {
        let membership = match k {
            0 => Membership::Standard,
            // The second channel of every fifth live team is shared with the next live team.
            1 if team.is_multiple_of(5) && self.teams[team as usize].deleted_ms.is_none() => {
                Membership::Shared
            }
            2 => Membership::Private,
            _ => Membership::Standard,
        };
        let members = self.teams[team as usize].members.clone();
        let mut messages = Vec::new();
        let mut taken = HashSet::new();
        for p in 0..g.cfg.posts_per_channel {
            let root_ms = unique(&mut taken, g.random_time(rng));
            let sender = if p == 0 && k == 0 && members.len() > 1 {
                Sender::System {
                    initiator: members[0],
                    member: members[1],
                }
            } else {
                channel_sender(rng, &members)
            };
            messages.push(g.message(rng, root_ms, None, sender));
            if matches!(sender, Sender::System { .. }) {
                continue;
            }
            for _ in 0..rng.gen_range(0..=g.cfg.max_replies) {
                let at = rng
                    .gen_range(root_ms + 1..=(root_ms + DAY_MS).min(g.end_ms()).max(root_ms + 1));
                let reply_ms = unique(&mut taken, at);
                let sender = channel_sender(rng, &members);
                messages.push(g.message(rng, reply_ms, Some(root_ms), sender));
            }
        }
        messages.sort_by_key(|m| m.id_ms);
        let index = self.channels.len() as u32;
        self.channels.push(Channel {
            id: format!(
                "19:{:016x}{:016x}@thread.tacv2",
                rng.gen::<u64>(),
                rng.gen::<u64>()
            ),
            host: team,
            membership,
            messages: Arc::new(messages),
        });
        // A shared channel joins its guest team in `link_shared_channels`, once every team
        // exists.
        self.teams[team as usize].channels.push(index);
    }

    fn generate_meetings(&mut self, g: &Gen<'_>) {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(g.seed, 0x3ee7));
        for m in 0..g.cfg.meetings {
            let organizer = rng.gen_range(0..g.users.len()) as u32;
            let start_ms = g.random_time(&mut rng) - 2 * 3_600_000;
            let end_ms = start_ms + rng.gen_range(30..=60) * 60_000;
            let attendees: Vec<u32> = sample(&mut rng, g.users.len(), 3.min(g.users.len()))
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let id = meeting_id(&mut rng, &g.users[organizer as usize].id);
            let transcripts = vec![artifact(&mut rng, end_ms, 0, false)];
            let recordings_n = if m % 4 == 3 { 2 } else { 1 };
            let recordings = (0..recordings_n)
                .map(|k| {
                    let size = recording_size(&mut rng, g.cfg.recording_bytes);
                    artifact(&mut rng, end_ms + k * 60_000, size, m % 10 == 7)
                })
                .collect();
            self.organizer_meetings[organizer as usize].push(self.meetings.len() as u32);
            self.meetings.push(Meeting {
                organizer,
                id,
                end_ms,
                attendees,
                transcripts,
                recordings,
            });
        }
    }

    /// Adds every shared channel to the next live team after its host.
    fn link_shared_channels(&mut self) {
        let live: Vec<u32> = (0..self.teams.len() as u32)
            .filter(|&t| self.teams[t as usize].deleted_ms.is_none())
            .collect();
        if live.len() < 2 {
            return;
        }
        for (index, channel) in self.channels.iter().enumerate() {
            if channel.membership != Membership::Shared {
                continue;
            }
            let pos = live.iter().position(|&t| t == channel.host).unwrap_or(0);
            let guest = live[(pos + 1) % live.len()];
            self.teams[guest as usize].channels.push(index as u32);
        }
    }

    pub(crate) fn conversation(&self, conv: Conv) -> &Arc<Vec<Message>> {
        match conv {
            Conv::Chat(i) => &self.chats[i as usize].messages,
            Conv::Channel(i) => &self.channels[i as usize].messages,
        }
    }

    fn conversation_mut(&mut self, conv: Conv) -> &mut Arc<Vec<Message>> {
        match conv {
            Conv::Chat(i) => &mut self.chats[i as usize].messages,
            Conv::Channel(i) => &mut self.channels[i as usize].messages,
        }
    }

    /// Finds a chat or channel by its Graph id.
    pub(crate) fn find_conversation(&self, id: &str) -> Option<Conv> {
        if let Some(i) = self.chats.iter().position(|c| c.id == id) {
            return Some(Conv::Chat(i as u32));
        }
        self.channels
            .iter()
            .position(|c| c.id == id)
            .map(|i| Conv::Channel(i as u32))
    }

    /// Applies a change to one message at `now_ms`; returns the new version.
    pub(crate) fn change(
        &mut self,
        conv_id: &str,
        message_id: &str,
        action: Action,
        now_ms: i64,
    ) -> Result<(Conv, i64, Version), TeamsError> {
        let conv = self
            .find_conversation(conv_id)
            .ok_or_else(|| TeamsError::UnknownConversation(conv_id.to_owned()))?;
        let id_ms: i64 = message_id
            .parse()
            .map_err(|_| unknown(conv_id, message_id))?;
        let messages = Arc::make_mut(self.conversation_mut(conv));
        let msg = messages
            .iter_mut()
            .find(|m| m.id_ms == id_ms)
            .ok_or_else(|| unknown(conv_id, message_id))?;
        let version = apply(msg, action, now_ms)?;
        Ok((conv, id_ms, version))
    }

    /// Posts a new message (a reply when `reply_to` is given) in a conversation at `now_ms`.
    pub(crate) fn post(
        &mut self,
        conv: Conv,
        reply_to: Option<i64>,
        sender: Sender,
        seed: u64,
        now_ms: i64,
    ) -> i64 {
        let messages = Arc::make_mut(self.conversation_mut(conv));
        let mut id_ms = now_ms;
        while messages.iter().any(|m| m.id_ms == id_ms) {
            id_ms += 1;
        }
        messages.push(Message {
            id_ms,
            reply_to,
            sender,
            seed,
            versions: vec![Version {
                modified_ms: id_ms,
                visible_from_ms: now_ms,
                edits: 0,
                edited_ms: None,
                reactions: 0,
                deleted_ms: None,
            }],
        });
        id_ms
    }

    /// Makes `n` random changes (edits, reactions, deletions, new posts) at `now_ms`, as users
    /// do while an export runs. Returns how many of each happened.
    pub(crate) fn churn(&mut self, seed: u64, n: u32, now_ms: i64) -> ChurnReport {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, now_ms as u64));
        let mut report = ChurnReport::default();
        let convs = self.chats.len() + self.channels.len();
        if convs == 0 {
            return report;
        }
        for _ in 0..n {
            let k = rng.gen_range(0..convs);
            let conv = if k < self.chats.len() {
                Conv::Chat(k as u32)
            } else {
                Conv::Channel((k - self.chats.len()) as u32)
            };
            self.churn_one(&mut rng, conv, now_ms, &mut report);
        }
        report
    }

    fn churn_one(
        &mut self,
        rng: &mut ChaCha8Rng,
        conv: Conv,
        now_ms: i64,
        report: &mut ChurnReport,
    ) {
        let sender = match conv {
            Conv::Chat(i) => Sender::User(pick(rng, &self.chats[i as usize].members)),
            Conv::Channel(i) => {
                let host = self.channels[i as usize].host as usize;
                Sender::User(pick(rng, &self.teams[host].members))
            }
        };
        let roll = rng.gen_range(0..10);
        let messages = self.conversation(conv).clone();
        let candidates: Vec<&Message> = messages
            .iter()
            .filter(|m| !m.is_system() && m.versions.last().is_some_and(|v| v.deleted_ms.is_none()))
            .collect();
        if roll < 2 || candidates.is_empty() {
            let reply_to = match conv {
                Conv::Channel(_) if rng.gen_bool(0.5) => messages
                    .iter()
                    .filter(|m| m.reply_to.is_none() && !m.is_system())
                    .map(|m| m.id_ms)
                    .next(),
                _ => None,
            };
            self.post(conv, reply_to, sender, rng.gen(), now_ms);
            report.posted += 1;
            return;
        }
        let target = pick(rng, &candidates).id_ms;
        let action = match roll {
            2..=5 => Action::Edit,
            6..=8 => Action::React,
            _ => Action::Delete,
        };
        let msgs = Arc::make_mut(self.conversation_mut(conv));
        if let Some(m) = msgs.iter_mut().find(|m| m.id_ms == target) {
            if apply(m, action, now_ms).is_ok() {
                match action {
                    Action::Edit => report.edited += 1,
                    Action::React => report.reacted += 1,
                    Action::Delete => report.deleted += 1,
                }
            }
        }
    }

    /// Soft-deletes a team: it leaves `/teams` and is listed in `/teamwork/deletedTeams`.
    pub(crate) fn delete_team(&mut self, id: &str, now_ms: i64) -> Result<(), TeamsError> {
        let team = self
            .teams
            .iter_mut()
            .find(|t| t.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| TeamsError::UnknownTeam(id.to_owned()))?;
        if team.deleted_ms.is_some() {
            return Err(TeamsError::TeamDeleted(id.to_owned()));
        }
        team.deleted_ms = Some(now_ms);
        Ok(())
    }

    /// Permanently deletes a team (after soft deletion, or at once): Graph forgets it.
    pub(crate) fn purge_team(&mut self, id: &str, now_ms: i64) -> Result<(), TeamsError> {
        let i = self
            .team_index(id)
            .ok_or_else(|| TeamsError::UnknownTeam(id.to_owned()))?;
        self.teams[i].purged_ms = Some(now_ms);
        Ok(())
    }

    /// A team Graph still knows (live or soft-deleted).
    pub(crate) fn team_index(&self, id: &str) -> Option<usize> {
        self.teams
            .iter()
            .position(|t| t.id.eq_ignore_ascii_case(id) && t.purged_ms.is_none())
    }
}

/// What `churn` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ChurnReport {
    pub posted: u32,
    pub edited: u32,
    pub reacted: u32,
    pub deleted: u32,
}

fn unknown(conv: &str, message: &str) -> TeamsError {
    TeamsError::UnknownMessage {
        conversation: conv.to_owned(),
        message: message.to_owned(),
    }
}

/// Appends the version `action` produces at `now_ms`.
fn apply(msg: &mut Message, action: Action, now_ms: i64) -> Result<Version, TeamsError> {
    let Some(last) = msg.versions.last().copied() else {
        return Err(TeamsError::Deleted(msg.id_ms.to_string()));
    };
    if last.deleted_ms.is_some() || msg.is_system() {
        return Err(TeamsError::Deleted(msg.id_ms.to_string()));
    }
    let modified_ms = now_ms.max(last.modified_ms + 1);
    let mut next = Version {
        modified_ms,
        visible_from_ms: now_ms,
        ..last
    };
    match action {
        Action::Edit => {
            next.edits = next.edits.saturating_add(1);
            next.edited_ms = Some(modified_ms);
        }
        // A reaction beyond the last type replaces one: the count stays, the etag changes.
        Action::React => next.reactions = (next.reactions + 1).min(MAX_REACTIONS),
        Action::Delete => next.deleted_ms = Some(modified_ms),
    }
    msg.versions.push(next);
    Ok(next)
}

/// Moves `ms` forward to the first instant not yet used in this conversation.
fn unique(taken: &mut HashSet<i64>, mut ms: i64) -> i64 {
    while !taken.insert(ms) {
        ms += 1;
    }
    ms
}

fn unique_times(rng: &mut ChaCha8Rng, g: &Gen<'_>, n: usize) -> Vec<i64> {
    let mut taken = HashSet::with_capacity(n);
    let mut out: Vec<i64> = (0..n)
        .map(|_| unique(&mut taken, g.random_time(rng)))
        .collect();
    out.sort_unstable();
    out
}

/// A chat's kind and members: 4 in 10 chats are 1:1 (each pair once), 4 group, 2 meeting.
fn chat_members(
    rng: &mut ChaCha8Rng,
    users: usize,
    c: u32,
    pairs: &mut HashSet<(u32, u32)>,
) -> (ChatKind, Vec<u32>) {
    let kind = match c % 10 {
        0..=3 => ChatKind::OneOnOne,
        4..=7 => ChatKind::Group,
        _ => ChatKind::Meeting,
    };
    if kind == ChatKind::OneOnOne {
        for _ in 0..50 {
            let v = sample(rng, users, 2).into_vec();
            let (a, b) = (v[0].min(v[1]) as u32, v[0].max(v[1]) as u32);
            if pairs.insert((a, b)) {
                return (kind, vec![a, b]);
            }
        }
    }
    let (lo, hi) = if kind == ChatKind::Meeting {
        (3, 10)
    } else {
        (3, 8)
    };
    let n = rng.gen_range(lo..=hi).min(users);
    let members = sample(rng, users, n)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let kind = if kind == ChatKind::OneOnOne {
        ChatKind::Group
    } else {
        kind
    };
    (kind, members)
}

/// Graph's chat id forms: 1:1 chats name both users, group and meeting chats are threads.
fn chat_id(rng: &mut ChaCha8Rng, kind: ChatKind, members: &[u32], users: &[User]) -> String {
    match kind {
        ChatKind::OneOnOne => format!(
            "19:{}_{}@unq.gbl.spaces",
            users[members[0] as usize].id, users[members[1] as usize].id
        ),
        ChatKind::Group => format!(
            "19:{:016x}{:016x}@thread.v2",
            rng.gen::<u64>(),
            rng.gen::<u64>()
        ),
        ChatKind::Meeting => format!(
            "19:meeting_{}@thread.v2",
            STANDARD_NO_PAD.encode(uuid_from(rng.gen()))
        ),
    }
}

fn chat_messages(
    rng: &mut ChaCha8Rng,
    g: &Gen<'_>,
    kind: ChatKind,
    members: &[u32],
    ids: &[i64],
) -> Vec<Message> {
    ids.iter()
        .enumerate()
        .map(|(k, &id_ms)| {
            let sender = if k == 0 && kind != ChatKind::OneOnOne && members.len() > 1 {
                Sender::System {
                    initiator: members[0],
                    member: members[members.len() - 1],
                }
            } else {
                chat_sender(rng, kind, members)
            };
            g.message(rng, id_ms, None, sender)
        })
        .collect()
}

fn chat_sender(rng: &mut ChaCha8Rng, kind: ChatKind, members: &[u32]) -> Sender {
    let roll = rng.gen_range(0..100);
    match kind {
        ChatKind::Group if roll < 5 => Sender::Bot(rng.gen_range(0..BOT_NAMES.len() as u8)),
        ChatKind::Group if roll < 10 => Sender::Federated(rng.gen_range(0..20)),
        ChatKind::Meeting if roll < 6 => Sender::Guest(rng.gen_range(0..20)),
        ChatKind::Meeting if roll < 10 => Sender::Federated(rng.gen_range(0..20)),
        _ => Sender::User(pick(rng, members)),
    }
}

fn channel_sender(rng: &mut ChaCha8Rng, members: &[u32]) -> Sender {
    if rng.gen_range(0..100) < 5 {
        Sender::Bot(rng.gen_range(0..BOT_NAMES.len() as u8))
    } else {
        Sender::User(pick(rng, members))
    }
}

/// `base64("1*{organizer}*0**19:meeting_...@thread.v2")`, as in the seed. Standard base64 can
/// hold `/`, which would break the content URL's path, so such ids are drawn again.
fn meeting_id(rng: &mut ChaCha8Rng, organizer: &str) -> String {
    loop {
        let thread = STANDARD_NO_PAD.encode(uuid_from(rng.gen()));
        let id = STANDARD_NO_PAD.encode(format!("1*{organizer}*0**19:meeting_{thread}@thread.v2"));
        if !id.contains('/') {
            return id;
        }
    }
}

fn artifact(rng: &mut ChaCha8Rng, after_ms: i64, size: u64, odd_url: bool) -> Artifact {
    let id = loop {
        let id = STANDARD_NO_PAD.encode(format!("1##0##{}", uuid_from(rng.gen())));
        if !id.contains('/') {
            break id;
        }
    };
    let created_ms = after_ms + rng.gen_range(60_000..600_000);
    Artifact {
        id,
        created_ticks: created_ms * 10_000 + rng.gen_range(0..10_000),
        seed: rng.gen(),
        size,
        odd_url,
    }
}

fn recording_size(rng: &mut ChaCha8Rng, nominal: u64) -> u64 {
    let spread = (nominal / 8).max(1);
    (nominal - spread / 2 + rng.gen_range(0..spread)).max(64)
}

const TEAM_NAMES: &[&str] = &[
    "Trading Desk",
    "Conformité & Risques",
    "Wealth Management",
    "Vertrieb Süd",
    "Treasury Ops",
    "Équipe Crédit",
    "東京オフィス",
];

pub(crate) const BOT_NAMES: &[&str] = &["Polly", "Approvals", "Jira Cloud"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::data::Tenant;

    fn tenant() -> Tenant {
        let mut cfg = SimConfig {
            users: 30,
            ..SimConfig::default()
        };
        cfg.teams.chats = 40;
        cfg.teams.messages_per_chat = 12;
        cfg.teams.teams = 6;
        cfg.teams.deleted_teams = 1;
        cfg.teams.meetings = 8;
        let anchor_ms = 1_731_700_000_000;
        Tenant::generate(
            &cfg,
            Clock {
                anchor_ms,
                started_ms: anchor_ms,
            },
        )
    }

    #[test]
    fn generation_is_deterministic_and_ids_are_unique_per_conversation() {
        let (a, b) = (tenant(), tenant());
        assert_eq!(a.teams.chats.len(), 40);
        for (x, y) in a.teams.chats.iter().zip(&b.teams.chats) {
            assert_eq!(x.id, y.id);
            let ids: HashSet<i64> = x.messages.iter().map(|m| m.id_ms).collect();
            assert_eq!(ids.len(), x.messages.len());
        }
        let chat_ids: HashSet<&str> = a.teams.chats.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(chat_ids.len(), 40, "chat ids are unique");
        // Some message ids repeat across chats.
        assert_eq!(
            a.teams.chats[0]
                .messages
                .iter()
                .map(|m| m.id_ms)
                .collect::<Vec<_>>(),
            a.teams.chats[1]
                .messages
                .iter()
                .map(|m| m.id_ms)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            a.teams
                .teams
                .iter()
                .filter(|t| t.deleted_ms.is_some())
                .count(),
            1
        );
        assert!(a
            .teams
            .channels
            .iter()
            .any(|c| c.membership == Membership::Shared));
        assert_eq!(a.teams.meetings.len(), 8);
        for m in &a.teams.meetings {
            assert!(!m.id.contains('/'));
            assert!(m.recordings.iter().all(|r| r.size > 0));
        }
    }

    #[test]
    fn changes_append_versions_and_deleted_messages_stop_changing() {
        let mut t = tenant();
        let chat = t.teams.chats[5].clone();
        let msg = chat
            .messages
            .iter()
            .find(|m| !m.is_system() && m.versions[0].deleted_ms.is_none())
            .expect("a live message");
        let id = msg.id_ms.to_string();
        let now = 1_731_800_000_000;
        let (_, _, v1) = t
            .teams
            .change(&chat.id, &id, Action::Edit, now)
            .expect("edit");
        let (_, _, v2) = t
            .teams
            .change(&chat.id, &id, Action::React, now)
            .expect("react");
        assert!(
            v2.modified_ms > v1.modified_ms,
            "etags differ even within one millisecond"
        );
        let (_, _, v3) = t
            .teams
            .change(&chat.id, &id, Action::Delete, now + 5)
            .expect("delete");
        assert_eq!(v3.deleted_ms, Some(v3.modified_ms));
        assert_eq!(
            t.teams.change(&chat.id, &id, Action::Edit, now + 6),
            Err(TeamsError::Deleted(id.clone()))
        );
        let after = &t.teams.chats[5].messages;
        let m = after
            .iter()
            .find(|m| m.id_ms == msg.id_ms)
            .expect("message");
        assert_eq!(m.versions.len(), 4);
        assert_eq!(
            m.version_at(now - 1).map(|v| v.modified_ms),
            Some(msg.versions[0].modified_ms)
        );
        // The original conversation snapshot is untouched (copy on write).
        assert_eq!(
            chat.messages
                .iter()
                .find(|m| m.id_ms == msg.id_ms)
                .map(|m| m.versions.len()),
            Some(1)
        );
    }

    #[test]
    fn deletions_are_served_for_21_days() {
        let v = Version {
            modified_ms: 0,
            visible_from_ms: 0,
            edits: 0,
            edited_ms: None,
            reactions: 0,
            deleted_ms: Some(0),
        };
        assert!(v.exportable(DELETED_VISIBLE_MS));
        assert!(!v.exportable(DELETED_VISIBLE_MS + 1));
    }
}
