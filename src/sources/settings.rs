//! The `[teams]` configuration section: what the Teams sources (chats, channels, transcripts,
//! recordings) and their discovery need. Kept beside the sources; `config.rs` only wires it
//! into `Settings` and `Config`.

use crate::config::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// `from/user/userIdentityType` values Graph knows (teamworkUserIdentityType).
const USER_IDENTITY_TYPES: &[&str] = &[
    "aadUser",
    "onPremiseAadUser",
    "anonymousGuest",
    "federatedUser",
    "personalMicrosoftAccountUser",
    "skypeUser",
    "phoneUser",
    "unknownFutureValue",
    "emailUser",
    "azureCommunicationServicesUser",
];

/// `from/application/applicationIdentityType` values (teamworkApplicationIdentityType).
const APPLICATION_IDENTITY_TYPES: &[&str] = &[
    "aadApplication",
    "bot",
    "tenantBot",
    "office365Connector",
    "outgoingWebhook",
    "unknownFutureValue",
];

#[derive(Debug, Deserialize)]
pub struct TeamsSettings {
    /// `A` or `B`: the Teams export billing model sent as `model=` on getAllMessages.
    pub model: Option<String>,
    #[serde(default)]
    pub chat_from_user_ids: Vec<String>,
    #[serde(default)]
    pub chat_from_user_identity_types: Vec<String>,
    #[serde(default)]
    pub chat_from_application_identity_types: Vec<String>,
    #[serde(default)]
    pub chat_system_messages: bool,
    #[serde(default = "default_include_deleted_teams")]
    pub include_deleted_teams: bool,
    #[serde(default)]
    pub organizers: Vec<String>,
    #[serde(default = "default_content_timeout", with = "humantime_serde")]
    pub content_timeout: Duration,
}

impl Default for TeamsSettings {
    fn default() -> Self {
        TeamsSettings {
            model: None,
            chat_from_user_ids: Vec::new(),
            chat_from_user_identity_types: Vec::new(),
            chat_from_application_identity_types: Vec::new(),
            chat_system_messages: false,
            include_deleted_teams: default_include_deleted_teams(),
            organizers: Vec::new(),
            content_timeout: default_content_timeout(),
        }
    }
}

fn default_include_deleted_teams() -> bool {
    true
}

fn default_content_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// The Teams export billing model (seed 002, "License requirements").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingModel {
    /// Security and compliance: E5 licences, seeded capacity.
    A,
    /// General use: metered.
    B,
}

impl BillingModel {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingModel::A => "A",
            BillingModel::B => "B",
        }
    }
}

/// The seed's optional sender conditions on chats/getAllMessages, OR-combined. Empty means
/// every message (the default, and the only setting that cannot miss a sender).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderFilter {
    pub user_ids: Vec<String>,
    pub user_identity_types: Vec<String>,
    pub application_identity_types: Vec<String>,
    pub system_messages: bool,
}

impl SenderFilter {
    pub fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
            && self.user_identity_types.is_empty()
            && self.application_identity_types.is_empty()
            && !self.system_messages
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamsConfig {
    pub model: Option<BillingModel>,
    pub chat_senders: SenderFilter,
    pub include_deleted_teams: bool,
    /// Meeting organizers to archive; empty means every discovered user.
    pub organizers: Vec<String>,
    pub content_timeout: Duration,
}

impl Default for TeamsConfig {
    fn default() -> Self {
        // The defaults of the settings are valid by construction.
        TeamsConfig {
            model: None,
            chat_senders: SenderFilter::default(),
            include_deleted_teams: default_include_deleted_teams(),
            organizers: Vec::new(),
            content_timeout: default_content_timeout(),
        }
    }
}

fn key_error(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn check_guids(key: &str, ids: &[String]) -> Result<Vec<String>, ConfigError> {
    ids.iter()
        .map(|id| {
            uuid::Uuid::parse_str(id.trim())
                .map(|u| u.hyphenated().to_string())
                .map_err(|_| key_error(key, format!("\"{id}\" is not a GUID")))
        })
        .collect()
}

fn check_members(key: &str, values: &[String], known: &[&str]) -> Result<Vec<String>, ConfigError> {
    values
        .iter()
        .map(|v| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(v.trim()))
                .map(|k| (*k).to_owned())
                .ok_or_else(|| {
                    key_error(
                        key,
                        format!(
                            "unknown value \"{v}\" (expected one of {})",
                            known.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

impl TeamsSettings {
    pub fn validate(self) -> Result<TeamsConfig, ConfigError> {
        let model = match self.model.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(m) if m.eq_ignore_ascii_case("a") => Some(BillingModel::A),
            Some(m) if m.eq_ignore_ascii_case("b") => Some(BillingModel::B),
            Some(other) => {
                return Err(key_error(
                    "teams.model",
                    format!("\"{other}\" is not a billing model: \"A\" (security and compliance) or \"B\" (general use)"),
                ))
            }
        };
        let chat_senders = SenderFilter {
            user_ids: check_guids("teams.chat_from_user_ids", &self.chat_from_user_ids)?,
            user_identity_types: check_members(
                "teams.chat_from_user_identity_types",
                &self.chat_from_user_identity_types,
                USER_IDENTITY_TYPES,
            )?,
            application_identity_types: check_members(
                "teams.chat_from_application_identity_types",
                &self.chat_from_application_identity_types,
                APPLICATION_IDENTITY_TYPES,
            )?,
            system_messages: self.chat_system_messages,
        };
        let only_system = SenderFilter {
            system_messages: false,
            ..chat_senders.clone()
        }
        .is_empty();
        if chat_senders.system_messages && only_system {
            return Err(key_error(
                "teams.chat_system_messages",
                "adds control messages to the sender filters; without any teams.chat_from_* filter every message, control messages included, is exported already (and alone it would export control messages only)",
            ));
        }
        if self.content_timeout < Duration::from_secs(10) {
            return Err(key_error("teams.content_timeout", "must be at least 10s"));
        }
        Ok(TeamsConfig {
            model,
            chat_senders,
            include_deleted_teams: self.include_deleted_teams,
            organizers: check_guids("teams.organizers", &self.organizers)?,
            content_timeout: self.content_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_export_everything() {
        let c = TeamsSettings::default().validate().expect("valid");
        assert_eq!(c, TeamsConfig::default());
        assert!(c.chat_senders.is_empty());
        assert!(c.include_deleted_teams);
    }

    /// The section is wired into the configuration: every key is known, lists come from the
    /// environment too, and the Teams sources are accepted.
    #[test]
    fn teams_section_loads_through_the_configuration() {
        let text = r#"
[graph]
tenant_id = "t"
client_id = "c"
client_secret = "s"
[state]
url = "sqlite://state.db"
[store]
kind = "fs"
path = "/tmp/archive"
[export]
sources = ["copilot", "chats", "channels", "transcripts", "recordings"]
start = "2024-01-01T00:00:00Z"
[teams]
model = "A"
chat_from_application_identity_types = ["bot"]
chat_system_messages = true
include_deleted_teams = false
content_timeout = "2h"
"#;
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        let env = std::collections::HashMap::from([(
            "M365_ARCHIVER__TEAMS__ORGANIZERS".to_owned(),
            "9fce8b1b-6a35-4c5b-9a3e-5f8e2e0a1b2c,0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f".to_owned(),
        )]);
        let c = crate::config::load_with_env(Some(f.path()), Some(env)).expect("valid");
        assert_eq!(c.export.sources.len(), 5);
        assert_eq!(c.teams.model, Some(BillingModel::A));
        assert_eq!(c.teams.chat_senders.application_identity_types, vec!["bot"]);
        assert!(!c.teams.include_deleted_teams);
        assert_eq!(c.teams.organizers.len(), 2);
        assert_eq!(c.teams.content_timeout, Duration::from_secs(7200));
        let typo = text.replace("model = \"A\"", "modle = \"A\"");
        std::fs::write(f.path(), typo).expect("write");
        let e = crate::config::load_with_env(Some(f.path()), None).expect_err("unknown key");
        assert_eq!(key_of(e), "teams.modle");
    }

    #[test]
    fn values_are_checked_and_normalised() {
        let s = TeamsSettings {
            model: Some("b".into()),
            chat_from_user_ids: vec!["9FCE8B1B-6A35-4C5B-9A3E-5F8E2E0A1B2C".into()],
            chat_from_user_identity_types: vec!["federateduser".into()],
            chat_system_messages: true,
            ..TeamsSettings::default()
        };
        let c = s.validate().expect("valid");
        assert_eq!(c.model, Some(BillingModel::B));
        assert_eq!(
            c.chat_senders.user_ids,
            vec!["9fce8b1b-6a35-4c5b-9a3e-5f8e2e0a1b2c"]
        );
        assert_eq!(c.chat_senders.user_identity_types, vec!["federatedUser"]);
        let bad = [
            (
                TeamsSettings {
                    model: Some("C".into()),
                    ..TeamsSettings::default()
                },
                "teams.model",
            ),
            (
                TeamsSettings {
                    chat_from_user_ids: vec!["me".into()],
                    ..TeamsSettings::default()
                },
                "teams.chat_from_user_ids",
            ),
            (
                TeamsSettings {
                    chat_from_application_identity_types: vec!["robot".into()],
                    ..TeamsSettings::default()
                },
                "teams.chat_from_application_identity_types",
            ),
            (
                TeamsSettings {
                    chat_system_messages: true,
                    ..TeamsSettings::default()
                },
                "teams.chat_system_messages",
            ),
            (
                TeamsSettings {
                    organizers: vec!["x".into()],
                    ..TeamsSettings::default()
                },
                "teams.organizers",
            ),
            (
                TeamsSettings {
                    content_timeout: Duration::from_secs(1),
                    ..TeamsSettings::default()
                },
                "teams.content_timeout",
            ),
        ];
        for (settings, key) in bad {
            assert_eq!(key_of(settings.validate().expect_err(key)), key);
        }
    }
}
