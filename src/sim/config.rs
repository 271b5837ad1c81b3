//! Simulator configuration: the generated tenant, credentials, rate limits and faults.
//!
//! Everything the simulator generates derives from `seed` and `anchor`, so two simulators
//! with the same pair serve the same bytes (the determinism the benchmarks and the
//! ground-truth comparisons rely on).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Upper bound on generated interactions per user: keeps a typo in a config file from
/// exhausting memory (each interaction costs ~32 bytes of metadata).
const MAX_INTERACTIONS_PER_USER: u32 = 100_000;
/// Upper bound on generated users (licensed + unlicensed); issue 7 needs 100,000.
const MAX_USERS: u32 = 1_000_000;

/// The whole simulator configuration (`config/sim.toml` documents every key).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every generated value (users, interactions, rendering styles, faults).
    pub seed: u64,
    /// The "now" of the generated history; default: start time truncated to the second.
    pub anchor: Option<DateTime<Utc>>,
    /// The only tenant the token endpoint knows.
    pub tenant_id: String,
    /// The only application the token endpoint knows.
    pub client_id: String,
    /// The application's client secret.
    pub client_secret: String,
    /// An accepted client certificate (PEM) for JWT client assertions.
    pub certificate_pem: Option<String>,
    /// Lifetime of issued access tokens.
    pub token_ttl_secs: u64,
    /// Copilot-licensed users.
    pub users: u32,
    /// Users without a Copilot licence (they must not be exported).
    pub unlicensed_users: u32,
    /// Interactions per licensed user (a prompt/response pair counts as two).
    pub interactions_per_user: u32,
    /// createdDateTime spread over `[anchor - history_days, anchor - 1 min]`.
    pub history_days: u32,
    /// Fraction of interactions whose id (epoch ms) equals another user's interaction id.
    pub shared_id_fraction: f64,
    /// Fraction created in the last 2 h before anchor but visible only after `late_delay_secs`.
    pub late_fraction: f64,
    /// How long after start late interactions stay invisible.
    pub late_delay_secs: u64,
    /// Cap for `$top` on the interactions endpoint (and its default).
    pub max_top: u32,
    /// Per-class request rates (token buckets).
    pub rate_limits: SimRateLimits,
    /// Injected faults.
    pub faults: FaultConfig,
    /// Teams data: chats, teams and channels, online meetings (none by default, so a
    /// Copilot-only tenant is generated exactly as before).
    pub teams: TeamsSimConfig,
    /// Change notifications: validation-token signing key, handshake and delivery timing.
    pub notifications: super::notify::NotificationSimConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            anchor: None,
            tenant_id: "00000000-0000-4000-8000-000000000001".to_owned(),
            client_id: "11111111-1111-4111-8111-111111111111".to_owned(),
            client_secret: "sim-secret-do-not-use".to_owned(),
            certificate_pem: None,
            token_ttl_secs: 3599,
            users: 20,
            unlicensed_users: 5,
            interactions_per_user: 20,
            history_days: 30,
            shared_id_fraction: 0.05,
            late_fraction: 0.0,
            late_delay_secs: 5,
            max_top: 100,
            rate_limits: SimRateLimits::default(),
            faults: FaultConfig::default(),
            teams: TeamsSimConfig::default(),
            notifications: Default::default(),
        }
    }
}

/// The Teams part of the simulated tenant (issue 3). Every key defaults so that older
/// configuration files keep working.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsSimConfig {
    /// 1:1, group and meeting chats among the tenant's users.
    pub chats: u32,
    /// Messages per chat (control messages included).
    pub messages_per_chat: u32,
    /// Teams (each with `channels_per_team` channels); `deleted_teams` of them are deleted.
    pub teams: u32,
    pub deleted_teams: u32,
    pub channels_per_team: u32,
    /// Root posts per channel; each gets 0..=`max_replies` replies.
    pub posts_per_channel: u32,
    pub max_replies: u32,
    /// Online meetings, each with a transcript and one or two recordings.
    pub meetings: u32,
    /// Approximate size of a recording (each varies by up to an eighth).
    pub recording_bytes: u64,
    /// Shares of generated messages that were edited, reacted to, deleted (before the anchor).
    pub edited_fraction: f64,
    pub reacted_fraction: f64,
    pub deleted_fraction: f64,
    /// Answer 402 PaymentRequired to getAllMessages without `model=A|B` (older tenants).
    pub require_model: bool,
    /// Cap and default for `$top` on getAllMessages and the meeting artifact lists.
    pub max_top: u32,
}

impl Default for TeamsSimConfig {
    fn default() -> Self {
        Self {
            chats: 0,
            messages_per_chat: 20,
            teams: 0,
            deleted_teams: 0,
            channels_per_team: 3,
            posts_per_channel: 10,
            max_replies: 3,
            meetings: 0,
            recording_bytes: 4 << 20,
            edited_fraction: 0.1,
            reacted_fraction: 0.15,
            deleted_fraction: 0.05,
            require_model: false,
            max_top: 50,
        }
    }
}

/// Bounds that keep a typo from exhausting memory (messages cost ~100 bytes of metadata).
const MAX_TEAMS_MESSAGES: u64 = 5_000_000;

impl TeamsSimConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("teams.edited_fraction", self.edited_fraction),
            ("teams.reacted_fraction", self.reacted_fraction),
            ("teams.deleted_fraction", self.deleted_fraction),
        ] {
            check_fraction(name, v)?;
        }
        if self.deleted_teams > self.teams {
            return Err("teams.deleted_teams must be <= teams.teams".to_owned());
        }
        if self.max_top == 0 {
            return Err("teams.max_top must be >= 1".to_owned());
        }
        let chat_msgs = u64::from(self.chats) * u64::from(self.messages_per_chat);
        let channel_msgs = u64::from(self.teams)
            * u64::from(self.channels_per_team)
            * u64::from(self.posts_per_channel)
            * (1 + u64::from(self.max_replies));
        if chat_msgs + channel_msgs > MAX_TEAMS_MESSAGES {
            return Err(format!(
                "teams: at most {MAX_TEAMS_MESSAGES} generated messages (chats x messages_per_chat + channel posts and replies)"
            ));
        }
        if self.recording_bytes > 64 << 30 {
            return Err("teams.recording_bytes must be <= 64 GiB".to_owned());
        }
        Ok(())
    }
}

/// Requests per second per endpoint class; capacity is one second of burst.
/// A rate of 0 disables throttling for that class.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimRateLimits {
    /// `getAllEnterpriseInteractions` (Graph: 30 rps per app per tenant).
    pub interactions_rps: f64,
    /// Chat and channel `getAllMessages` (Graph: 200 rps per app per tenant).
    pub messages_rps: f64,
    /// Users, groups, deleted items and everything else.
    pub other_rps: f64,
    /// Requests on one team (`/teams/{id}/...`, `/teamwork/deletedTeams/{id}/...`): Graph
    /// allows 4 rps per app per team.
    pub per_team_rps: f64,
    /// Requests on one chat (`/chats/{id}/...`): Graph allows 1 rps per app per chat or channel.
    pub per_chat_rps: f64,
}

impl Default for SimRateLimits {
    fn default() -> Self {
        Self {
            interactions_rps: 30.0,
            messages_rps: 200.0,
            other_rps: 50.0,
            per_team_rps: 4.0,
            per_chat_rps: 1.0,
        }
    }
}

/// Fault injection on Graph data routes (never the token endpoint or `/_sim`).
/// Rates are probabilities per request in `[0, 1]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// 500/502/503/504 at random (503 sometimes with Retry-After).
    pub error_rate: f64,
    /// Chance per request to start a 429 storm.
    pub storm_rate: f64,
    /// Storm length: every Graph request gets 429 + Retry-After for the rest of it.
    pub storm_ms: u64,
    /// Send 200 headers and part of the body, then abort the connection.
    pub reset_rate: f64,
    /// Delay the response by `slow_ms`.
    pub slow_rate: f64,
    /// Delay applied by `slow_rate`.
    pub slow_ms: u64,
    /// 200 with invalid JSON.
    pub malformed_rate: f64,
    /// 200 with the body cut short (Content-Length matches the cut body).
    pub truncated_rate: f64,
    /// 401 InvalidAuthenticationToken for a valid token.
    pub expired_token_rate: f64,
    /// Streamed content (recordings, transcripts) only: abort the transfer part way, so that
    /// a client must resume it (Range) or start over.
    pub content_reset_rate: f64,
}

impl FaultConfig {
    /// Rejects rates outside `[0, 1]` (NaN included).
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("storm_rate", self.storm_rate),
            ("reset_rate", self.reset_rate),
            ("slow_rate", self.slow_rate),
            ("malformed_rate", self.malformed_rate),
            ("truncated_rate", self.truncated_rate),
            ("expired_token_rate", self.expired_token_rate),
            ("content_reset_rate", self.content_reset_rate),
        ];
        for (name, rate) in rates {
            check_fraction(name, rate)?;
        }
        Ok(())
    }
}

impl SimRateLimits {
    /// Rejects negative, infinite or NaN rates.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("interactions_rps", self.interactions_rps),
            ("messages_rps", self.messages_rps),
            ("other_rps", self.other_rps),
        ];
        for (name, rps) in rates {
            if !rps.is_finite() || rps < 0.0 {
                return Err(format!(
                    "rate_limits.{name} must be a finite number >= 0, got {rps}"
                ));
            }
        }
        Ok(())
    }
}

impl SimConfig {
    /// Checks every value a typo could make nonsensical, with a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("tenant_id", &self.tenant_id),
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        check_fraction("shared_id_fraction", self.shared_id_fraction)?;
        check_fraction("late_fraction", self.late_fraction)?;
        if self.users.saturating_add(self.unlicensed_users) > MAX_USERS {
            return Err(format!("users + unlicensed_users must be <= {MAX_USERS}"));
        }
        if self.interactions_per_user > MAX_INTERACTIONS_PER_USER {
            return Err(format!(
                "interactions_per_user must be <= {MAX_INTERACTIONS_PER_USER}"
            ));
        }
        if self.history_days == 0 {
            return Err("history_days must be >= 1".to_owned());
        }
        if self.max_top == 0 {
            return Err("max_top must be >= 1".to_owned());
        }
        if self.token_ttl_secs == 0 {
            return Err("token_ttl_secs must be >= 1".to_owned());
        }
        self.rate_limits.validate()?;
        self.teams.validate()?;
        self.notifications.validate()?;
        self.faults.validate()
    }
}

fn check_fraction(name: &str, value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{name} must be between 0 and 1, got {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let cfg = SimConfig::default();
        assert!(cfg.validate().is_ok());
        let text = toml::to_string(&cfg).expect("serialise");
        let back: SimConfig = toml::from_str(&text).expect("parse");
        assert_eq!(back.seed, 42);
        assert_eq!(back.rate_limits, SimRateLimits::default());
    }

    #[test]
    fn unknown_keys_and_bad_rates_are_rejected() {
        assert!(toml::from_str::<SimConfig>("sed = 1").is_err());
        let cfg = SimConfig {
            late_fraction: 1.5,
            ..SimConfig::default()
        };
        assert!(cfg.validate().is_err());
        let faults = FaultConfig {
            error_rate: f64::NAN,
            ..FaultConfig::default()
        };
        assert!(faults.validate().is_err());
    }

    #[test]
    fn example_config_file_parses() {
        let text = include_str!("../../config/sim.toml");
        let cfg: SimConfig = toml::from_str(text).expect("config/sim.toml must parse");
        assert!(cfg.validate().is_ok());
    }
}
