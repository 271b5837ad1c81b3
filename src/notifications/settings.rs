//! The `[notifications]` configuration section: change notifications for Copilot interactions
//! (seed 001). Kept beside the code that uses it; `config.rs` only wires it into `Settings`
//! and `Config`. Everything is checked at start (files read, certificate and key matched,
//! signing keys parsed) so a broken setup stops with exit 78 naming the key, not hours later.

use super::cert::{private_key_from_pem, EncryptionCertificate};
use crate::config::{read_credential, read_secret_file, ConfigError, ExportConfig};
use crate::sources::SourceKind;
use rsa::RsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Graph's limit on clientState; below the minimum a guess becomes thinkable.
const CLIENT_STATE_MAX: usize = 128;
const CLIENT_STATE_MIN: usize = 32;
/// Longest subscription Graph grants on most resources ("under 3 days").
const MAX_LIFETIME: Duration = Duration::from_secs(4230 * 60);
const MIN_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Deserialize)]
pub struct NotificationSettings {
    #[serde(default)]
    pub enabled: bool,
    pub listen: Option<String>,
    pub notification_url: Option<String>,
    pub lifecycle_url: Option<String>,
    #[serde(default = "default_mode")]
    pub mode: String,
    pub client_state: Option<SecretString>,
    pub client_state_file: Option<PathBuf>,
    pub client_state_credential: Option<String>,
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub certificate_id: Option<String>,
    pub validation_keys: Option<PathBuf>,
    #[serde(default)]
    pub filter: FilterSettings,
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    pub lifetime: Duration,
    #[serde(default = "default_renew_before", with = "humantime_serde")]
    pub renew_before: Duration,
    #[serde(default = "default_sweep_interval", with = "humantime_serde")]
    pub sweep_interval: Duration,
    #[serde(default = "default_gap_grace", with = "humantime_serde")]
    pub gap_grace: Duration,
    #[serde(default = "default_max_body")]
    pub max_body: usize,
}

/// Top-level `$filter` on the subscribed resource (seed 001): `value` means `eq`, `!value`
/// means `ne`.
#[derive(Debug, Default, Deserialize)]
pub struct FilterSettings {
    pub app_class: Option<String>,
    pub conversation_type: Option<String>,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        NotificationSettings {
            enabled: false,
            listen: None,
            notification_url: None,
            lifecycle_url: None,
            mode: default_mode(),
            client_state: None,
            client_state_file: None,
            client_state_credential: None,
            certificate: None,
            private_key: None,
            certificate_id: None,
            validation_keys: None,
            filter: FilterSettings::default(),
            lifetime: default_lifetime(),
            renew_before: default_renew_before(),
            sweep_interval: default_sweep_interval(),
            gap_grace: default_gap_grace(),
            max_body: default_max_body(),
        }
    }
}

fn default_mode() -> String {
    "users".into()
}
fn default_lifetime() -> Duration {
    Duration::from_secs(2 * 86_400)
}
fn default_renew_before() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_sweep_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_gap_grace() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_max_body() -> usize {
    1024 * 1024
}

/// Per-user subscriptions (recommended) or one for the whole tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionMode {
    /// `/copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions` per user: every
    /// notification belongs to a known user.
    Users,
    /// `/copilot/interactionHistory/getAllEnterpriseInteractions`: one subscription, but an
    /// aiResponse names no user (its `from` is the Copilot application).
    Tenant,
}

impl SubscriptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionMode::Users => "users",
            SubscriptionMode::Tenant => "tenant",
        }
    }
}

/// The validated section (only when `notifications.enabled`).
#[derive(Clone)]
pub struct NotificationsConfig {
    pub listen: SocketAddr,
    pub notification_url: Url,
    pub lifecycle_url: Url,
    pub mode: SubscriptionMode,
    pub client_state: SecretString,
    pub certificate: EncryptionCertificate,
    pub private_key: Arc<RsaPrivateKey>,
    pub certificate_id: String,
    /// PEM text of Microsoft's token signing keys (checked at load).
    pub validation_keys_pem: String,
    /// The `$filter` expression appended to the resource, if any.
    pub filter: Option<String>,
    pub lifetime: Duration,
    pub renew_before: Duration,
    pub sweep_interval: Duration,
    /// How old an interaction that polling was the first to store must be to count as a gap
    /// in notifications (younger ones may still be on their way).
    pub gap_grace: Duration,
    pub max_body: usize,
}

impl std::fmt::Debug for NotificationsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsConfig")
            .field("listen", &self.listen)
            .field("notification_url", &self.notification_url.as_str())
            .field("lifecycle_url", &self.lifecycle_url.as_str())
            .field("mode", &self.mode)
            .field("certificate", &self.certificate)
            .field("certificate_id", &self.certificate_id)
            .field("filter", &self.filter)
            .field("lifetime", &self.lifetime)
            .field("renew_before", &self.renew_before)
            .field("sweep_interval", &self.sweep_interval)
            .field("gap_grace", &self.gap_grace)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

fn key_err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::key(&format!("notifications.{key}"), problem)
}

fn required<T>(key: &str, v: Option<T>) -> Result<T, ConfigError> {
    v.ok_or_else(|| key_err(key, "is required with notifications.enabled = true"))
}

impl NotificationSettings {
    /// None when disabled; the other keys are then not looked at.
    pub fn validate(
        self,
        export: &ExportConfig,
    ) -> Result<Option<NotificationsConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if !export.sources.contains(&SourceKind::Copilot) {
            return Err(key_err(
                "enabled",
                "change notifications capture Copilot interactions: add \"copilot\" to export.sources",
            ));
        }
        let listen = parse_listen(required("listen", self.listen.as_deref())?)?;
        let notification_url = public_url(
            "notification_url",
            required("notification_url", self.notification_url.as_deref())?,
        )?;
        let lifecycle_url = public_url(
            "lifecycle_url",
            required("lifecycle_url", self.lifecycle_url.as_deref())?,
        )?;
        let mode = match self.mode.as_str() {
            "users" => SubscriptionMode::Users,
            "tenant" => SubscriptionMode::Tenant,
            other => {
                return Err(key_err(
                    "mode",
                    format!("unknown mode \"{other}\" (expected \"users\" or \"tenant\")"),
                ))
            }
        };
        let client_state = self.client_state()?;
        let (certificate, private_key) = self.key_pair()?;
        let certificate_id = check_certificate_id(self.certificate_id.as_deref())?;
        let validation_keys_pem = validation_keys(self.validation_keys.as_deref())?;
        let filter = self.filter.expression()?;
        check_timing(&self, export)?;
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body) {
            return Err(key_err(
                "max_body",
                "must be between 1024 and 67108864 bytes",
            ));
        }
        Ok(Some(NotificationsConfig {
            listen,
            notification_url,
            lifecycle_url,
            mode,
            client_state,
            certificate,
            private_key: Arc::new(private_key),
            certificate_id,
            validation_keys_pem,
            filter,
            lifetime: self.lifetime,
            renew_before: self.renew_before,
            sweep_interval: self.sweep_interval,
            gap_grace: self.gap_grace,
            max_body: self.max_body,
        }))
    }

    /// Exactly one of inline, file or systemd credential, like `graph.client_secret`.
    fn client_state(&self) -> Result<SecretString, ConfigError> {
        let secret = match (
            &self.client_state,
            &self.client_state_file,
            &self.client_state_credential,
        ) {
            (Some(s), None, None) => s.clone(),
            (None, Some(p), None) => read_secret_file("notifications.client_state_file", p)?,
            (None, None, Some(n)) => read_credential("notifications.client_state_credential", n)?,
            (None, None, None) => {
                return Err(key_err(
                    "client_state",
                    "is required with notifications.enabled = true (or client_state_file, \
                     client_state_credential); e.g. the output of `openssl rand -hex 32`",
                ))
            }
            _ => {
                return Err(key_err(
                    "client_state",
                    "set only one of notifications.client_state, client_state_file, \
                     client_state_credential",
                ))
            }
        };
        let s = secret.expose_secret();
        let n = s.chars().count();
        if !(CLIENT_STATE_MIN..=CLIENT_STATE_MAX).contains(&n) {
            return Err(key_err(
                "client_state",
                format!(
                    "must be {CLIENT_STATE_MIN} to {CLIENT_STATE_MAX} characters (it has {n}); \
                     e.g. the output of `openssl rand -hex 32`"
                ),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(key_err(
                "client_state",
                "must not contain control characters",
            ));
        }
        Ok(secret)
    }

    fn key_pair(&self) -> Result<(EncryptionCertificate, RsaPrivateKey), ConfigError> {
        let cert_path = required("certificate", self.certificate.as_deref())?;
        let key_path = required("private_key", self.private_key.as_deref())?;
        let pem = read_text("certificate", cert_path)?;
        let cert = EncryptionCertificate::from_pem(&pem)
            .map_err(|e| key_err("certificate", format!("{}: {e}", cert_path.display())))?;
        cert.check_valid(chrono::Utc::now())
            .map_err(|e| key_err("certificate", e.to_string()))?;
        let key_pem = read_secret_file("notifications.private_key", key_path)?;
        let key = private_key_from_pem(key_pem.expose_secret())
            .map_err(|e| key_err("private_key", format!("{}: {e}", key_path.display())))?;
        cert.check_key(&key).map_err(|_| {
            key_err(
                "private_key",
                format!(
                    "{} does not belong to the certificate {}",
                    key_path.display(),
                    cert_path.display()
                ),
            )
        })?;
        Ok((cert, key))
    }
}

fn read_text(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| key_err(key, format!("cannot read {}: {e}", path.display())))
}

fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|e| {
        key_err(
            "listen",
            format!("\"{text}\" is not an address:port ({e}); e.g. \"127.0.0.1:8443\""),
        )
    })
}

/// Graph delivers only to https; plain http is accepted for this machine only (the simulator
/// and tests), where nothing crosses a network.
fn public_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| key_err(key, format!("\"{text}\" is not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(key_err(
                key,
                "must be an https URL: Graph delivers notifications only over https (plain \
                 http is accepted for localhost only, for tests); put the receiver behind a \
                 TLS reverse proxy and give the proxy's public https URL",
            ))
        }
        _ => return Err(key_err(key, "must be an https URL")),
    }
    if url.fragment().is_some() || url.username() != "" || url.password().is_some() {
        return Err(key_err(key, "must not carry credentials or a #fragment"));
    }
    Ok(url)
}

fn check_certificate_id(id: Option<&str>) -> Result<String, ConfigError> {
    let id = required("certificate_id", id)?.trim();
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(key_err(
            "certificate_id",
            "must be 1 to 128 characters without spaces (the id `cert new` printed)",
        ));
    }
    Ok(id.to_owned())
}

fn validation_keys(path: Option<&Path>) -> Result<String, ConfigError> {
    let path = required("validation_keys", path)?;
    let pem = read_text("validation_keys", path)?;
    super::tokens::keys_from_pem(&pem)
        .map_err(|e| key_err("validation_keys", format!("{}: {e}", path.display())))?;
    Ok(pem)
}

fn check_timing(s: &NotificationSettings, export: &ExportConfig) -> Result<(), ConfigError> {
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&s.lifetime) {
        return Err(key_err(
            "lifetime",
            "must be between 15m and 4230m (Graph's limit: under 3 days)",
        ));
    }
    if s.renew_before < Duration::from_secs(60) || s.renew_before * 2 > s.lifetime {
        return Err(key_err(
            "renew_before",
            "must be at least 1m and at most half of notifications.lifetime",
        ));
    }
    if s.sweep_interval < export.poll_interval || s.sweep_interval > Duration::from_secs(7 * 86_400)
    {
        return Err(key_err(
            "sweep_interval",
            "must be at least export.poll_interval and at most 7d",
        ));
    }
    if s.gap_grace < Duration::from_secs(1) || s.gap_grace > Duration::from_secs(7 * 86_400) {
        return Err(key_err("gap_grace", "must be at least 1s and at most 7d"));
    }
    Ok(())
}

impl FilterSettings {
    /// `appClass eq '...' and conversationType ne '...'`, or None without a filter.
    fn expression(&self) -> Result<Option<String>, ConfigError> {
        let parts = [
            ("filter.app_class", "appClass", &self.app_class),
            (
                "filter.conversation_type",
                "conversationType",
                &self.conversation_type,
            ),
        ];
        let mut terms = Vec::new();
        for (key, property, value) in parts {
            let Some(value) = value.as_deref().map(str::trim) else {
                continue;
            };
            let (op, value) = match value.strip_prefix('!') {
                Some(rest) => ("ne", rest.trim()),
                None => ("eq", value),
            };
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(key_err(key, "must be a value, or !value to exclude it"));
            }
            terms.push(format!("{property} {op} '{}'", value.replace('\'', "''")));
        }
        Ok((!terms.is_empty()).then(|| terms.join(" and ")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::ConfigError;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};

    /// Writes a certificate, its key and a signing key into `dir`; returns the TOML section.
    pub(crate) fn section(dir: &Path) -> String {
        let new = super::super::cert::generate("test", 30, chrono::Utc::now()).unwrap();
        let (cert, key) = super::super::cert::write(dir, &new).unwrap();
        let signing = crate::notifications::crypto::tests::test_key()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let keys = dir.join("signing.pem");
        std::fs::write(&keys, signing).unwrap();
        format!(
            r#"
[notifications]
enabled = true
listen = "127.0.0.1:0"
notification_url = "https://archiver.contoso.com/notifications"
lifecycle_url = "https://archiver.contoso.com/lifecycle"
client_state = "0123456789abcdef0123456789abcdef-state"
certificate = "{}"
private_key = "{}"
certificate_id = "{}"
validation_keys = "{}"
"#,
            cert.display(),
            key.display(),
            new.certificate_id,
            keys.display()
        )
    }

    const BASE: &str = r#"
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
sources = ["copilot"]
start = "2024-01-01T00:00:00Z"
"#;

    fn load(text: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::load_from_str(text)
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn disabled_by_default_and_a_full_section_loads() {
        assert!(load(BASE).unwrap().notifications.is_none());
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{BASE}{}", section(dir.path()));
        let n = load(&text).unwrap().notifications.unwrap();
        assert_eq!(n.mode, SubscriptionMode::Users);
        assert_eq!(n.filter, None);
        assert_eq!(n.sweep_interval, Duration::from_secs(6 * 3600));
        let debug = format!("{n:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    #[test]
    fn filter_becomes_a_top_level_filter() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{BASE}{}\n[notifications.filter]\napp_class = \"IPM.SkypeTeams.Message.Copilot.Teams\"\nconversation_type = \"!bizchat\"\n",
            section(dir.path())
        );
        let n = load(&text).unwrap().notifications.unwrap();
        assert_eq!(
            n.filter.as_deref(),
            Some("appClass eq 'IPM.SkypeTeams.Message.Copilot.Teams' and conversationType ne 'bizchat'")
        );
    }

    #[test]
    fn each_bad_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = section(dir.path());
        let other = tempfile::tempdir().unwrap();
        let foreign = section(other.path());
        let foreign_key = foreign
            .lines()
            .find(|l| l.starts_with("private_key"))
            .unwrap()
            .to_owned();
        let own_key = good
            .lines()
            .find(|l| l.starts_with("private_key"))
            .unwrap()
            .to_owned();
        let cert_line = good
            .lines()
            .find(|l| l.starts_with("certificate ="))
            .unwrap()
            .to_owned();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let cases: Vec<(String, String, &str)> = vec![
            (
                "listen = \"127.0.0.1:0\"".into(),
                "listen = \"nowhere\"".into(),
                "notifications.listen",
            ),
            (
                "listen = \"127.0.0.1:0\"".into(),
                String::new(),
                "notifications.listen",
            ),
            (
                "notification_url = \"https://archiver.contoso.com/notifications\"".into(),
                "notification_url = \"http://archiver.contoso.com/notifications\"".into(),
                "notifications.notification_url",
            ),
            (
                "lifecycle_url = \"https://archiver.contoso.com/lifecycle\"".into(),
                "lifecycle_url = \"not a url\"".into(),
                "notifications.lifecycle_url",
            ),
            (
                "enabled = true".into(),
                "enabled = true\nmode = \"everyone\"".into(),
                "notifications.mode",
            ),
            (
                "client_state = \"0123456789abcdef0123456789abcdef-state\"".into(),
                "client_state = \"short\"".into(),
                "notifications.client_state",
            ),
            (
                "client_state = \"0123456789abcdef0123456789abcdef-state\"".into(),
                String::new(),
                "notifications.client_state",
            ),
            (own_key.clone(), foreign_key, "notifications.private_key"),
            (own_key, String::new(), "notifications.private_key"),
            (
                cert_line.clone(),
                "certificate = \"/nonexistent.pem\"".into(),
                "notifications.certificate",
            ),
            (
                cert_line,
                format!("certificate = \"{}\"", garbage.display()),
                "notifications.certificate",
            ),
            (
                "certificate_id = \"".into(),
                "certificate_id = \"has space ".into(),
                "notifications.certificate_id",
            ),
            (
                "enabled = true".into(),
                "enabled = true\nlifetime = \"5d\"".into(),
                "notifications.lifetime",
            ),
            (
                "enabled = true".into(),
                "enabled = true\nrenew_before = \"25h\"".into(),
                "notifications.renew_before",
            ),
            (
                "enabled = true".into(),
                "enabled = true\nsweep_interval = \"1m\"".into(),
                "notifications.sweep_interval",
            ),
            (
                "enabled = true".into(),
                "enabled = true\ngap_grace = \"0s\"".into(),
                "notifications.gap_grace",
            ),
            (
                "enabled = true".into(),
                "enabled = true\nmax_body = 10".into(),
                "notifications.max_body",
            ),
        ];
        for (from, to, key) in cases {
            assert!(good.contains(&from), "{from}");
            let text = format!("{BASE}{}", good.replacen(&from, &to, 1));
            let err = load(&text).expect_err(key);
            assert_eq!(key_of(err), key, "case {to}");
        }
        let no_keys: String = good
            .lines()
            .filter(|l| !l.starts_with("validation_keys"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = load(&format!("{BASE}{no_keys}")).unwrap_err();
        assert_eq!(key_of(err), "notifications.validation_keys");
        let empty_filter = format!("{BASE}{good}\n[notifications.filter]\napp_class = \"\"\n");
        assert_eq!(
            key_of(load(&empty_filter).unwrap_err()),
            "notifications.filter.app_class"
        );
        let teams_only = BASE.replace("sources = [\"copilot\"]", "sources = [\"chats\"]");
        let err = load(&format!("{teams_only}{good}")).unwrap_err();
        assert_eq!(key_of(err), "notifications.enabled");
    }

    #[test]
    fn http_is_allowed_for_localhost_only() {
        assert!(public_url("notification_url", "http://127.0.0.1:9/n").is_ok());
        assert!(public_url("notification_url", "http://localhost/n").is_ok());
        let err = public_url("notification_url", "http://10.0.0.1/n").unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
    }
}
