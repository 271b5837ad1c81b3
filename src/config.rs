//! Configuration: one TOML file, every key overridable from the environment as
//! `M365_ARCHIVER__SECTION__KEY`, validated once at start. Errors name the offending key; the
//! binary exits with 78 (EX_CONFIG) on any of them.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

use crate::graph::{AssertionForm, Budgets, Credential, GraphClientConfig, RetryConfig};
use crate::sources::SourceKind;

pub const ENV_PREFIX: &str = "M365_ARCHIVER";

/// Every key the file may hold. Unknown keys are refused (a typo must not silently fall back to
/// a default in a compliance system). docs/configuration.md is checked against this list.
pub const KNOWN_KEYS: &[&str] = &[
    "graph.tenant_id",
    "graph.client_id",
    "graph.client_secret",
    "graph.client_secret_file",
    "graph.client_secret_credential",
    "graph.certificate_file",
    "graph.private_key_file",
    "graph.private_key_credential",
    "graph.assertion",
    "graph.base_url",
    "graph.authority",
    "graph.token_scope",
    "graph.max_attempts",
    "graph.backoff_base",
    "graph.backoff_max",
    "graph.request_timeout",
    "graph.rate_limits.interactions_rps",
    "graph.rate_limits.messages_rps",
    "graph.rate_limits.other_rps",
    "graph.rate_limits.per_team_rps",
    "graph.rate_limits.per_chat_rps",
    "state.url",
    "store.kind",
    "store.path",
    "store.container_url",
    "store.auth",
    "store.sas_token",
    "store.sas_token_file",
    "store.sas_token_credential",
    "store.tenant_id",
    "store.client_id",
    "store.client_secret",
    "store.client_secret_file",
    "store.client_secret_credential",
    "store.certificate_file",
    "store.private_key_file",
    "store.private_key_credential",
    "store.managed_identity_client_id",
    "store.authority",
    "store.max_retries",
    "store.retry_delay",
    "store.request_timeout",
    "store.block_size_mib",
    "store.upload_parallelism",
    "store.require_immutability",
    "store.staging_path",
    "retention.disposal",
    "retention.default.retain",
    "retention.default.mode",
    "retention.default.dispose",
    "retention.rules",
    "export.sources",
    "export.start",
    "export.page_size",
    "export.overlap",
    "export.max_window",
    "export.settle_lag",
    "export.lookback",
    "export.lookback_interval",
    "export.poll_interval",
    "export.max_staleness",
    "export.idle_backoff",
    "export.concurrency",
    "export.write_concurrency",
    "export.lease_ttl",
    "discovery.mode",
    "discovery.sku_ids",
    "discovery.service_plan_ids",
    "discovery.users",
    "discovery.group_id",
    "discovery.interval",
    "log.format",
    "log.level",
    "metrics.listen",
    "service.shutdown_timeout",
    "teams.model",
    "teams.chat_from_user_ids",
    "teams.chat_from_user_identity_types",
    "teams.chat_from_application_identity_types",
    "teams.chat_system_messages",
    "teams.include_deleted_teams",
    "teams.organizers",
    "teams.content_timeout",
    "notifications.enabled",
    "notifications.listen",
    "notifications.notification_url",
    "notifications.lifecycle_url",
    "notifications.mode",
    "notifications.client_state",
    "notifications.client_state_file",
    "notifications.client_state_credential",
    "notifications.certificate",
    "notifications.private_key",
    "notifications.certificate_id",
    "notifications.validation_keys",
    "notifications.filter.app_class",
    "notifications.filter.conversation_type",
    "notifications.lifetime",
    "notifications.renew_before",
    "notifications.sweep_interval",
    "notifications.gap_grace",
    "notifications.max_body",
];

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "export.sources",
    "discovery.sku_ids",
    "discovery.service_plan_ids",
    "discovery.users",
    "teams.chat_from_user_ids",
    "teams.chat_from_user_identity_types",
    "teams.chat_from_application_identity_types",
    "teams.organizers",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("configuration key `{key}`: {problem}")]
    Key { key: String, problem: String },
    #[error("configuration: {0}")]
    Other(String),
}

impl ConfigError {
    pub(crate) fn key(key: &str, problem: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Settings {
    pub graph: GraphSettings,
    pub state: StateSettings,
    pub store: StoreSettings,
    pub export: ExportSettings,
    #[serde(default)]
    pub discovery: DiscoverySettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub metrics: crate::ops::settings::MetricsSettings,
    #[serde(default)]
    pub service: crate::ops::settings::ServiceSettings,
    #[serde(default)]
    pub retention: crate::retention::RetentionSettings,
    #[serde(default)]
    pub teams: crate::sources::settings::TeamsSettings,
    #[serde(default)]
    pub notifications: crate::notifications::settings::NotificationSettings,
}

#[derive(Debug, Deserialize)]
pub struct GraphSettings {
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_credential: Option<String>,
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub private_key_credential: Option<String>,
    #[serde(default = "default_assertion")]
    pub assertion: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    pub token_scope: Option<String>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
}

#[derive(Debug, Deserialize)]
pub struct RateLimitSettings {
    #[serde(default = "default_interactions_rps")]
    pub interactions_rps: f64,
    #[serde(default = "default_messages_rps")]
    pub messages_rps: f64,
    #[serde(default = "default_other_rps")]
    pub other_rps: f64,
    /// Graph allows 4 rps per app on one team (channel messages of that team).
    #[serde(default = "default_per_team_rps")]
    pub per_team_rps: f64,
    /// Graph allows 1 rps per app on one chat or channel.
    #[serde(default = "default_per_chat_rps")]
    pub per_chat_rps: f64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            interactions_rps: default_interactions_rps(),
            messages_rps: default_messages_rps(),
            other_rps: default_other_rps(),
            per_team_rps: default_per_team_rps(),
            per_chat_rps: default_per_chat_rps(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StateSettings {
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Deserialize)]
pub struct StoreSettings {
    #[serde(default)]
    pub kind: String,
    pub path: Option<PathBuf>,
    /// The `store.*` keys of the Azure backend (ignored with kind = "fs").
    #[serde(flatten)]
    pub azure: crate::archive::azure::AzureSettings,
}

#[derive(Debug, Deserialize)]
pub struct ExportSettings {
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub start: String,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    #[serde(default = "default_max_window", with = "humantime_serde")]
    pub max_window: Duration,
    #[serde(default = "default_settle_lag", with = "humantime_serde")]
    pub settle_lag: Duration,
    #[serde(default = "default_lookback", with = "humantime_serde")]
    pub lookback: Duration,
    #[serde(default = "default_lookback_interval", with = "humantime_serde")]
    pub lookback_interval: Duration,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Unset: the larger of 24h and `poll_interval`, so that existing files stay valid.
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    #[serde(default = "default_idle_backoff")]
    pub idle_backoff: f64,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_write_concurrency")]
    pub write_concurrency: usize,
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

#[derive(Debug, Deserialize)]
pub struct DiscoverySettings {
    #[serde(default = "default_discovery_mode")]
    pub mode: String,
    #[serde(default = "default_sku_ids")]
    pub sku_ids: Vec<String>,
    #[serde(default)]
    pub service_plan_ids: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    pub group_id: Option<String>,
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            mode: default_discovery_mode(),
            sku_ids: default_sku_ids(),
            service_plan_ids: Vec::new(),
            users: Vec::new(),
            group_id: None,
            interval: default_discovery_interval(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogSettings {
    #[serde(default = "default_log_format")]
    pub format: String,
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// The Microsoft 365 Copilot SKU (graph-notes.md "Licensed users").
pub const COPILOT_SKU: &str = "639dec6b-bb19-468b-871c-c5c441c4b0cb";

fn default_assertion() -> String {
    "ps256".into()
}
fn default_base_url() -> String {
    "https://graph.microsoft.com/v1.0".into()
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_max_attempts() -> u32 {
    6
}
fn default_backoff_base() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_interactions_rps() -> f64 {
    30.0
}
fn default_messages_rps() -> f64 {
    200.0
}
fn default_other_rps() -> f64 {
    30.0
}
fn default_per_team_rps() -> f64 {
    4.0
}
fn default_per_chat_rps() -> f64 {
    1.0
}
fn default_page_size() -> u32 {
    100
}
fn default_overlap() -> Duration {
    Duration::from_secs(300)
}
fn default_max_window() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_settle_lag() -> Duration {
    Duration::from_secs(120)
}
fn default_lookback() -> Duration {
    Duration::from_secs(86_400)
}
fn default_lookback_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(900)
}
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);
fn default_idle_backoff() -> f64 {
    1.5
}
fn default_concurrency() -> usize {
    8
}
fn default_write_concurrency() -> usize {
    16
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_discovery_mode() -> String {
    "sku".into()
}
fn default_sku_ids() -> Vec<String> {
    vec![COPILOT_SKU.to_string()]
}
fn default_discovery_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// The validated, resolved configuration the rest of the program uses.
#[derive(Debug)]
pub struct Config {
    pub graph: GraphClientConfig,
    pub state_url: String,
    pub store: StoreConfig,
    pub export: ExportConfig,
    pub discovery: DiscoveryConfig,
    pub discovery_interval: Duration,
    pub log: LogConfig,
    pub metrics: crate::ops::settings::MetricsConfig,
    pub service: crate::ops::settings::ServiceConfig,
    pub retention: crate::retention::RetentionRules,
    pub teams: crate::sources::settings::TeamsConfig,
    /// None unless `notifications.enabled`.
    pub notifications: Option<crate::notifications::settings::NotificationsConfig>,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Fs {
        path: PathBuf,
    },
    /// Boxed: far larger than the other variant.
    Azure(Box<crate::archive::azure::AzureConfig>),
}

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub sources: Vec<SourceKind>,
    pub start: DateTime<Utc>,
    pub page_size: u32,
    pub overlap: Duration,
    pub max_window: Duration,
    pub settle_lag: Duration,
    pub lookback: Duration,
    pub lookback_interval: Duration,
    pub poll_interval: Duration,
    /// Longest interval between two polls of one scope (`scheduler::due`).
    pub max_staleness: Duration,
    /// Factor a scope's poll interval grows by after each poll that found nothing new.
    pub idle_backoff: f64,
    pub concurrency: usize,
    pub write_concurrency: usize,
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone)]
pub enum DiscoveryConfig {
    Skus(Vec<String>),
    ServicePlans(Vec<String>),
    Users(Vec<String>),
    Group(String),
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// Reads the file (if any) and the environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, None)
}

/// As `load`, with the environment given explicitly (tests must not touch the process env).
pub fn load_with_env(
    path: Option<&Path>,
    env: Option<std::collections::HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(p) = path {
        if !p.exists() {
            return Err(ConfigError::Read {
                path: p.display().to_string(),
                reason: "no such file (give --config FILE or create it from config/example.toml)"
                    .into(),
            });
        }
        builder = builder.add_source(config::File::from(p).format(config::FileFormat::Toml));
    }
    let mut environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    if let Some(env) = env {
        environment = environment.source(Some(env));
    }
    let raw = builder
        .add_source(environment)
        .build()
        .map_err(|e| describe_config_error(e, path))?;
    check_known_keys(&raw)?;
    let settings: Settings = raw
        .try_deserialize()
        .map_err(|e| describe_config_error(e, path))?;
    settings.validate()
}

/// Loads from a TOML string (used by `demo` with its embedded configuration).
pub fn load_from_str(toml_text: &str) -> Result<Config, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
        .build()
        .map_err(|e| describe_config_error(e, None))?;
    check_known_keys(&raw)?;
    let settings: Settings = raw
        .try_deserialize()
        .map_err(|e| describe_config_error(e, None))?;
    settings.validate()
}

fn describe_config_error(e: config::ConfigError, path: Option<&Path>) -> ConfigError {
    match e {
        config::ConfigError::Foreign(inner) => ConfigError::Read {
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            reason: inner.to_string(),
        },
        config::ConfigError::FileParse { uri, cause } => ConfigError::Read {
            path: uri.unwrap_or_default(),
            reason: format!("not valid TOML: {cause}"),
        },
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::key(&key, format!("expected {expected}, found {unexpected}")),
        config::ConfigError::Message(m) => message_to_key_error(&m),
        other => message_to_key_error(&other.to_string()),
    }
}

/// serde messages from the config crate look like "missing field `tenant_id`" or
/// "invalid value ... for key `export.overlap`"; turn them into a key-named error.
fn message_to_key_error(m: &str) -> ConfigError {
    if let Some(idx) = m.find("for key `") {
        let rest = &m[idx + 9..];
        if let Some(end) = rest.find('`') {
            return ConfigError::key(&rest[..end], m[..idx].trim().to_string());
        }
    }
    if let Some(rest) = m.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return ConfigError::key(&rest[..end], "is required");
        }
    }
    ConfigError::Other(m.to_string())
}

fn check_known_keys(raw: &config::Config) -> Result<(), ConfigError> {
    let table = raw
        .cache
        .clone()
        .into_table()
        .map_err(|e| ConfigError::Other(e.to_string()))?;
    let mut found = Vec::new();
    collect_keys("", &table, &mut found);
    for key in found {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            let section = key.split('.').next().unwrap_or("");
            // Sections come from KNOWN_KEYS so that a new section cannot be forgotten here.
            let mut sections: Vec<&str> = KNOWN_KEYS
                .iter()
                .filter_map(|k| k.split('.').next())
                .collect();
            sections.sort_unstable();
            sections.dedup();
            let hint = if sections.contains(&section) {
                "unknown key (see config/example.toml for the keys of this section)".to_string()
            } else {
                format!("unknown section (sections: {})", sections.join(", "))
            };
            return Err(ConfigError::key(&key, hint));
        }
    }
    Ok(())
}

fn collect_keys(prefix: &str, table: &config::Map<String, config::Value>, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v.clone().into_table() {
            Ok(sub) if key != "export.sources" => collect_keys(&key, &sub, out),
            _ => out.push(key),
        }
    }
}

impl Settings {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let graph = self.graph.validate()?;
        let state_url = validate_state_url(&self.state.url)?;
        let store = self.store.validate()?;
        let export = self.export.validate()?;
        let discovery_interval = self.discovery.interval;
        let discovery = self.discovery.validate()?;
        let log = self.log.validate()?;
        let metrics = self.metrics.validate()?;
        let service = self.service.validate()?;
        let retention = self.retention.validate()?;
        let teams = self.teams.validate()?;
        let notifications = self.notifications.validate(&export)?;
        if matches!(store, StoreConfig::Azure(_)) && !retention.is_configured() {
            return Err(ConfigError::key(
                "retention.default",
                "is required with store.kind = \"azure\": every blob is written with the \
                 immutability policy the retention rules choose",
            ));
        }
        Ok(Config {
            graph,
            state_url,
            store,
            export,
            discovery,
            discovery_interval,
            log,
            metrics,
            service,
            retention,
            teams,
            notifications,
        })
    }
}

fn require(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::key(key, "is required"));
    }
    Ok(())
}

fn parse_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim_end_matches('/'))
        .map_err(|e| ConfigError::key(key, format!("not a URL ({e})")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(ConfigError::key(key, "must be an http(s) URL"));
    }
    Ok(url)
}

impl GraphSettings {
    fn validate(self) -> Result<GraphClientConfig, ConfigError> {
        require("graph.tenant_id", &self.tenant_id)?;
        require("graph.client_id", &self.client_id)?;
        let base_url = parse_url("graph.base_url", &self.base_url)?;
        let authority = parse_url("graph.authority", &self.authority)?;
        if self.max_attempts == 0 {
            return Err(ConfigError::key("graph.max_attempts", "must be at least 1"));
        }
        let rl = &self.rate_limits;
        for (key, v) in [
            ("graph.rate_limits.interactions_rps", rl.interactions_rps),
            ("graph.rate_limits.messages_rps", rl.messages_rps),
            ("graph.rate_limits.other_rps", rl.other_rps),
            ("graph.rate_limits.per_team_rps", rl.per_team_rps),
            ("graph.rate_limits.per_chat_rps", rl.per_chat_rps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::key(key, "must be a positive number"));
            }
        }
        let token_scope = self
            .token_scope
            .clone()
            .unwrap_or_else(|| default_token_scope(&base_url));
        let credential = self.credential()?;
        Ok(GraphClientConfig {
            tenant_id: self.tenant_id,
            client_id: self.client_id,
            credential,
            base_url,
            authority,
            token_scope,
            retry: RetryConfig {
                max_attempts: self.max_attempts,
                base_delay: self.backoff_base,
                max_delay: self.backoff_max,
            },
            request_timeout: self.request_timeout,
            budgets: Budgets {
                interactions_rps: rl.interactions_rps,
                messages_rps: rl.messages_rps,
                other_rps: rl.other_rps,
                per_team_rps: rl.per_team_rps,
                per_chat_rps: rl.per_chat_rps,
            },
        })
    }

    /// Exactly one way to authenticate: a secret (inline, file or systemd credential) or a
    /// certificate with its private key.
    fn credential(&self) -> Result<Credential, ConfigError> {
        let secret_sources = [
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
            self.client_secret_credential.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let has_cert = self.certificate_file.is_some();
        match (secret_sources, has_cert) {
            (0, false) => Err(ConfigError::key(
                "graph.client_secret",
                "no credential: set one of graph.client_secret, graph.client_secret_file, \
                 graph.client_secret_credential, or graph.certificate_file with graph.private_key_file",
            )),
            (n, true) if n > 0 => Err(ConfigError::key(
                "graph.certificate_file",
                "both a client secret and a certificate are configured: keep one",
            )),
            (n, false) if n > 1 => Err(ConfigError::key(
                "graph.client_secret",
                "set only one of graph.client_secret, graph.client_secret_file, graph.client_secret_credential",
            )),
            (_, false) => Ok(Credential::Secret(self.resolve_secret()?)),
            (_, true) => self.certificate_credential(),
        }
    }

    fn resolve_secret(&self) -> Result<SecretString, ConfigError> {
        if let Some(s) = &self.client_secret {
            return Ok(s.clone());
        }
        if let Some(path) = &self.client_secret_file {
            return read_secret_file("graph.client_secret_file", path);
        }
        let name = self.client_secret_credential.as_deref().unwrap_or_default();
        read_credential("graph.client_secret_credential", name)
    }

    fn certificate_credential(&self) -> Result<Credential, ConfigError> {
        let cert_path = self.certificate_file.as_ref().ok_or_else(|| {
            ConfigError::key("graph.certificate_file", "is required for certificate auth")
        })?;
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|e| {
            ConfigError::key(
                "graph.certificate_file",
                format!("cannot read {}: {e}", cert_path.display()),
            )
        })?;
        let key_pem = match (&self.private_key_file, &self.private_key_credential) {
            (Some(p), None) => read_secret_file("graph.private_key_file", p)?,
            (None, Some(name)) => read_credential("graph.private_key_credential", name)?,
            _ => {
                return Err(ConfigError::key(
                    "graph.private_key_file",
                    "certificate auth needs exactly one of graph.private_key_file or graph.private_key_credential",
                ))
            }
        };
        let form = match self.assertion.to_ascii_lowercase().as_str() {
            "ps256" => AssertionForm::Ps256X5tS256,
            "rs256" => AssertionForm::Rs256X5t,
            _ => {
                return Err(ConfigError::key(
                    "graph.assertion",
                    "must be \"ps256\" (x5t#S256, current) or \"rs256\" (x5t, older)",
                ))
            }
        };
        Ok(Credential::Certificate {
            cert_pem,
            key_pem,
            form,
        })
    }
}

/// `https://graph.microsoft.us/v1.0` -> `https://graph.microsoft.us/.default`: the token
/// audience follows the cloud of the Graph endpoint.
fn default_token_scope(base_url: &Url) -> String {
    format!("{}/.default", base_url.origin().ascii_serialization())
}

pub(crate) fn read_secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::key(key, format!("cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(ConfigError::key(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// systemd's `LoadCredential=NAME:...` puts the secret in `$CREDENTIALS_DIRECTORY/NAME`.
pub(crate) fn read_credential(key: &str, name: &str) -> Result<SecretString, ConfigError> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        ConfigError::key(
            key,
            "CREDENTIALS_DIRECTORY is not set: systemd credentials need LoadCredential= in the unit",
        )
    })?;
    if name.contains('/') || name.is_empty() {
        return Err(ConfigError::key(key, "must be a plain credential name"));
    }
    read_secret_file(key, &Path::new(&dir).join(name))
}

fn validate_state_url(url: &str) -> Result<String, ConfigError> {
    require("state.url", url)?;
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(url.to_string())
    } else {
        Err(ConfigError::key(
            "state.url",
            "must start with sqlite:// (embedded) or postgres:// (production)",
        ))
    }
}

impl StoreSettings {
    fn validate(self) -> Result<StoreConfig, ConfigError> {
        match self.kind.as_str() {
            "fs" => {
                let path = self
                    .path
                    .filter(|p| !p.as_os_str().is_empty())
                    .ok_or_else(|| {
                        ConfigError::key("store.path", "is required when store.kind = \"fs\"")
                    })?;
                Ok(StoreConfig::Fs { path })
            }
            "azure" => Ok(StoreConfig::Azure(Box::new(self.azure.validate()?))),
            "" => Err(ConfigError::key(
                "store.kind",
                "is required (\"fs\" or \"azure\")",
            )),
            other => Err(ConfigError::key(
                "store.kind",
                format!("unknown store kind \"{other}\" (expected \"fs\" or \"azure\")"),
            )),
        }
    }
}

impl ExportSettings {
    fn validate(self) -> Result<ExportConfig, ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::key(
                "export.sources",
                "is required: a list of copilot, chats, channels, transcripts, recordings",
            ));
        }
        let mut sources = Vec::new();
        for s in &self.sources {
            let kind = SourceKind::parse(s.trim()).ok_or_else(|| {
                ConfigError::key(
                    "export.sources",
                    format!("unknown source \"{s}\" (expected copilot, chats, channels, transcripts, recordings)"),
                )
            })?;
            if !sources.contains(&kind) {
                sources.push(kind);
            }
        }
        require("export.start", &self.start)?;
        let start = DateTime::parse_from_rfc3339(&self.start)
            .map_err(|e| {
                ConfigError::key("export.start", format!("not an RFC 3339 date-time ({e})"))
            })?
            .with_timezone(&Utc);
        if !(1..=1000).contains(&self.page_size) {
            return Err(ConfigError::key(
                "export.page_size",
                "must be between 1 and 1000",
            ));
        }
        if self.overlap.is_zero() {
            return Err(ConfigError::key(
                "export.overlap",
                "must be greater than zero: Graph filters only with gt/lt, so windows must overlap \
                 or a record exactly on a window edge is lost",
            ));
        }
        if self.max_window <= self.overlap {
            return Err(ConfigError::key(
                "export.max_window",
                "must be longer than export.overlap",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::key("export.concurrency", "must be at least 1"));
        }
        if self.write_concurrency == 0 {
            return Err(ConfigError::key(
                "export.write_concurrency",
                "must be at least 1",
            ));
        }
        if self.lease_ttl < Duration::from_secs(5) {
            return Err(ConfigError::key("export.lease_ttl", "must be at least 5s"));
        }
        let max_staleness = self.max_staleness()?;
        if !(1.0..=10.0).contains(&self.idle_backoff) {
            return Err(ConfigError::key(
                "export.idle_backoff",
                "must be between 1 (poll every scope every poll_interval) and 10",
            ));
        }
        Ok(ExportConfig {
            sources,
            start,
            page_size: self.page_size,
            overlap: self.overlap,
            max_window: self.max_window,
            settle_lag: self.settle_lag,
            lookback: self.lookback,
            lookback_interval: self.lookback_interval,
            poll_interval: self.poll_interval,
            max_staleness,
            idle_backoff: self.idle_backoff,
            concurrency: self.concurrency,
            write_concurrency: self.write_concurrency,
            lease_ttl: self.lease_ttl,
        })
    }
}

impl ExportSettings {
    /// The staleness bound: at least one poll interval, since no scope is polled more often.
    fn max_staleness(&self) -> Result<Duration, ConfigError> {
        match self.max_staleness {
            None => Ok(DEFAULT_MAX_STALENESS.max(self.poll_interval)),
            Some(m) if m < self.poll_interval || m.is_zero() => Err(ConfigError::key(
                "export.max_staleness",
                format!(
                    "must be at least export.poll_interval ({}): scopes are never polled more \
                     often than that",
                    humantime::format_duration(self.poll_interval)
                ),
            )),
            Some(m) => Ok(m),
        }
    }
}

fn check_guids(key: &str, ids: &[String]) -> Result<(), ConfigError> {
    for id in ids {
        if uuid::Uuid::parse_str(id.trim()).is_err() {
            return Err(ConfigError::key(key, format!("\"{id}\" is not a GUID")));
        }
    }
    Ok(())
}

impl DiscoverySettings {
    fn validate(self) -> Result<DiscoveryConfig, ConfigError> {
        match self.mode.as_str() {
            "sku" => {
                if self.sku_ids.is_empty() {
                    return Err(ConfigError::key(
                        "discovery.sku_ids",
                        "must list at least one SKU id",
                    ));
                }
                check_guids("discovery.sku_ids", &self.sku_ids)?;
                Ok(DiscoveryConfig::Skus(self.sku_ids))
            }
            "service_plans" => {
                if self.service_plan_ids.is_empty() {
                    return Err(ConfigError::key(
                        "discovery.service_plan_ids",
                        "must list at least one service plan id with mode = \"service_plans\"",
                    ));
                }
                check_guids("discovery.service_plan_ids", &self.service_plan_ids)?;
                Ok(DiscoveryConfig::ServicePlans(self.service_plan_ids))
            }
            "users" => {
                if self.users.is_empty() {
                    return Err(ConfigError::key(
                        "discovery.users",
                        "must list at least one user id with mode = \"users\"",
                    ));
                }
                check_guids("discovery.users", &self.users)?;
                Ok(DiscoveryConfig::Users(self.users))
            }
            "group" => {
                let id = self.group_id.ok_or_else(|| {
                    ConfigError::key("discovery.group_id", "is required with mode = \"group\"")
                })?;
                check_guids("discovery.group_id", std::slice::from_ref(&id))?;
                Ok(DiscoveryConfig::Group(id))
            }
            other => Err(ConfigError::key(
                "discovery.mode",
                format!("unknown mode \"{other}\" (expected sku, service_plans, users, group)"),
            )),
        }
    }
}

impl LogSettings {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let json = match self.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::key(
                    "log.format",
                    format!("unknown format \"{other}\" (expected text or json)"),
                ))
            }
        };
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| ConfigError::key("log.level", format!("not a valid filter ({e})")))?;
        Ok(LogConfig {
            json,
            level: self.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    const MINIMAL: &str = r#"
[graph]
tenant_id = "t"
client_id = "c"
client_secret = "s3cr3t-value"
[state]
url = "sqlite://state.db"
[store]
kind = "fs"
path = "/tmp/archive"
[export]
sources = ["copilot"]
start = "2024-01-01T00:00:00Z"
"#;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let f = write(text);
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(Some(f.path()), Some(env))
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load_text(MINIMAL, &[]).expect("valid");
        assert_eq!(
            c.graph.base_url.as_str(),
            "https://graph.microsoft.com/v1.0"
        );
        assert_eq!(c.graph.token_scope, "https://graph.microsoft.com/.default");
        assert_eq!(c.export.page_size, 100);
        assert_eq!(c.export.sources, vec![SourceKind::Copilot]);
        assert!(matches!(c.discovery, DiscoveryConfig::Skus(ref s) if s == &[COPILOT_SKU]));
    }

    #[test]
    fn environment_overrides_file() {
        let c = load_text(
            MINIMAL,
            &[
                ("M365_ARCHIVER__EXPORT__PAGE_SIZE", "50"),
                (
                    "M365_ARCHIVER__GRAPH__BASE_URL",
                    "https://graph.microsoft.us/v1.0",
                ),
                ("M365_ARCHIVER__GRAPH__CLIENT_SECRET", "from-env"),
            ],
        )
        .expect("valid");
        assert_eq!(c.export.page_size, 50);
        assert_eq!(c.graph.token_scope, "https://graph.microsoft.us/.default");
        match c.graph.credential {
            Credential::Secret(s) => assert_eq!(s.expose_secret(), "from-env"),
            _ => panic!("expected a secret"),
        }
    }

    #[test]
    fn environment_list_is_split() {
        let e = load_text(
            MINIMAL,
            &[("M365_ARCHIVER__EXPORT__SOURCES", "copilot,bogus")],
        )
        .expect_err("bogus source");
        assert_eq!(key_of(e), "export.sources");
    }

    #[test]
    fn staleness_bound_defaults_and_is_checked() {
        let c = load_text(MINIMAL, &[]).expect("valid");
        assert_eq!(c.export.max_staleness, Duration::from_secs(24 * 3600));
        assert_eq!(c.export.idle_backoff, 1.5);
        // An existing file with a longer poll interval stays valid.
        let slow = MINIMAL.replace("[export]", "[export]\npoll_interval = \"48h\"");
        let c = load_text(&slow, &[]).expect("valid");
        assert_eq!(c.export.max_staleness, Duration::from_secs(48 * 3600));
        let env = [
            ("M365_ARCHIVER__EXPORT__MAX_STALENESS", "4s"),
            ("M365_ARCHIVER__EXPORT__POLL_INTERVAL", "1s"),
            ("M365_ARCHIVER__EXPORT__IDLE_BACKOFF", "2"),
        ];
        let c = load_text(MINIMAL, &env).expect("valid");
        assert_eq!(c.export.max_staleness, Duration::from_secs(4));
        assert_eq!(c.export.idle_backoff, 2.0);
        for (to, key) in [
            ("max_staleness = \"5m\"", "export.max_staleness"),
            ("idle_backoff = 0.9", "export.idle_backoff"),
        ] {
            let text = MINIMAL.replace("[export]", &format!("[export]\n{to}"));
            assert_eq!(key_of(load_text(&text, &[]).expect_err(key)), key);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[export]", "[export]\nlookbak = \"1h\"");
        assert_eq!(
            key_of(load_text(&text, &[]).expect_err("typo")),
            "export.lookbak"
        );
    }

    #[test]
    fn missing_and_bad_values_name_their_key() {
        let cases = [
            ("tenant_id = \"t\"", "tenant_id = \"\"", "graph.tenant_id"),
            (
                "url = \"sqlite://state.db\"",
                "url = \"mysql://x\"",
                "state.url",
            ),
            ("kind = \"fs\"", "kind = \"s3\"", "store.kind"),
            (
                "start = \"2024-01-01T00:00:00Z\"",
                "start = \"yesterday\"",
                "export.start",
            ),
            ("[export]", "[export]\noverlap = \"0s\"", "export.overlap"),
            (
                "[export]",
                "[export]\nconcurrency = \"many\"",
                "export.concurrency",
            ),
            (
                "[export]",
                "[export]\noverlap = \"five minutes\"",
                "export.overlap",
            ),
        ];
        for (from, to, key) in cases {
            let text = MINIMAL.replace(from, to);
            let e = load_text(&text, &[]).expect_err(key);
            assert_eq!(key_of(e), key, "case {to}");
        }
    }

    #[test]
    fn secret_never_in_debug_output() {
        let c = load_text(MINIMAL, &[]).expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
    }

    #[test]
    fn secret_from_file_and_conflicts() {
        let secret = write("file-secret\n");
        let text = MINIMAL.replace(
            "client_secret = \"s3cr3t-value\"",
            &format!("client_secret_file = \"{}\"", secret.path().display()),
        );
        match load_text(&text, &[]).expect("valid").graph.credential {
            Credential::Secret(s) => assert_eq!(s.expose_secret(), "file-secret"),
            _ => panic!("expected a secret"),
        }
        let both = MINIMAL.replace(
            "client_secret = \"s3cr3t-value\"",
            &format!(
                "client_secret = \"x\"\nclient_secret_file = \"{}\"",
                secret.path().display()
            ),
        );
        assert_eq!(
            key_of(load_text(&both, &[]).expect_err("two")),
            "graph.client_secret"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = load(Some(Path::new("/nonexistent/m365.toml"))).expect_err("missing");
        assert!(matches!(e, ConfigError::Read { .. }));
    }
}
