//! `[store]` keys of the Azure Blob backend (`store.kind = "azure"`), and their validation.
//!
//! Secrets (SAS token, client secret, private key) are `SecretString`s read inline, from a file
//! or from a systemd credential, exactly like the Graph credentials; `Debug` never prints them.

use crate::config::{read_credential, read_secret_file, ConfigError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Azure's limit for one block is 4000 MiB; 8 MiB keeps memory small and requests short.
const DEFAULT_BLOCK_SIZE_MIB: u64 = 8;
const DEFAULT_UPLOAD_PARALLELISM: usize = 4;
const DEFAULT_MAX_RETRIES: u32 = 6;

/// The raw keys, as deserialised from `[store]` (flattened beside `kind` and `path`).
#[derive(Debug, Default, Deserialize)]
pub struct AzureSettings {
    pub container_url: Option<String>,
    pub auth: Option<String>,
    pub sas_token: Option<SecretString>,
    pub sas_token_file: Option<PathBuf>,
    pub sas_token_credential: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_credential: Option<String>,
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub private_key_credential: Option<String>,
    pub managed_identity_client_id: Option<String>,
    pub authority: Option<String>,
    pub max_retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retry_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    pub block_size_mib: Option<u64>,
    pub upload_parallelism: Option<usize>,
    pub require_immutability: Option<bool>,
    pub staging_path: Option<PathBuf>,
}

/// The validated Azure store configuration.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// The container URL without any query (safe to log).
    pub container_url: Url,
    pub auth: AzureAuth,
    /// Entra ID authority for the token credentials (sovereign clouds differ).
    pub authority: Url,
    /// Retries of one request on 408/429/500/502/503/504 and connection failures.
    pub max_retries: u32,
    /// First retry delay; it doubles per retry (the store's Retry-After wins when given).
    pub retry_delay: Duration,
    /// Longest silence within one response before the request counts as failed.
    pub request_timeout: Duration,
    pub block_size_bytes: u64,
    pub upload_parallelism: usize,
    /// Refuse to start unless the container reports version-level immutability.
    pub require_immutability: bool,
    /// Where large downloads are staged before upload.
    pub staging_path: PathBuf,
}

/// How the archiver authenticates to the storage account.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// A container or account SAS: the query string, without the leading `?`.
    Sas(SecretString),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretString,
    },
    Certificate {
        tenant_id: String,
        client_id: String,
        cert_pem: String,
        key_pem: SecretString,
    },
    /// System-assigned, or user-assigned when a client id is given.
    ManagedIdentity { client_id: Option<String> },
}

impl AzureAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            AzureAuth::Sas(_) => "sas",
            AzureAuth::ClientSecret { .. } => "client_secret",
            AzureAuth::Certificate { .. } => "certificate",
            AzureAuth::ManagedIdentity { .. } => "managed_identity",
        }
    }
}

impl AzureSettings {
    pub fn validate(self) -> Result<AzureConfig, ConfigError> {
        let auth = self.auth()?;
        let container_url = container_url(self.container_url.as_deref(), &auth)?;
        let authority = self.authority()?;
        let block_mib = self.block_size_mib.unwrap_or(DEFAULT_BLOCK_SIZE_MIB);
        if !(1..=4000).contains(&block_mib) {
            return Err(ConfigError::key(
                "store.block_size_mib",
                "must be between 1 and 4000 (Azure's largest block)",
            ));
        }
        let parallel = self
            .upload_parallelism
            .unwrap_or(DEFAULT_UPLOAD_PARALLELISM);
        if !(1..=64).contains(&parallel) {
            return Err(ConfigError::key(
                "store.upload_parallelism",
                "must be between 1 and 64",
            ));
        }
        Ok(AzureConfig {
            container_url,
            auth,
            authority,
            max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            retry_delay: self.retry_delay.unwrap_or(Duration::from_millis(800)),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(60)),
            block_size_bytes: block_mib * 1024 * 1024,
            upload_parallelism: parallel,
            require_immutability: self.require_immutability.unwrap_or(true),
            staging_path: self
                .staging_path
                .unwrap_or_else(|| std::env::temp_dir().join("m365-archiver-staging")),
        })
    }

    fn authority(&self) -> Result<Url, ConfigError> {
        let text = self.authority.as_deref().unwrap_or(DEFAULT_AUTHORITY);
        let url = Url::parse(text.trim_end_matches('/'))
            .map_err(|e| ConfigError::key("store.authority", format!("not a URL ({e})")))?;
        if url.scheme() != "https" {
            return Err(ConfigError::key("store.authority", "must be an https URL"));
        }
        Ok(url)
    }

    fn auth(&self) -> Result<AzureAuth, ConfigError> {
        let kind = match self.auth.as_deref() {
            Some(k) => k.to_string(),
            None if self.has_sas() => "sas".to_string(),
            None => {
                return Err(ConfigError::key(
                    "store.auth",
                    "is required with store.kind = \"azure\": sas, client_secret, certificate or managed_identity",
                ))
            }
        };
        match kind.as_str() {
            "sas" => Ok(AzureAuth::Sas(self.sas_token()?)),
            "client_secret" => Ok(AzureAuth::ClientSecret {
                tenant_id: self.required("store.tenant_id", &self.tenant_id)?,
                client_id: self.required("store.client_id", &self.client_id)?,
                secret: self.client_secret()?,
            }),
            "certificate" => self.certificate(),
            "managed_identity" => Ok(AzureAuth::ManagedIdentity {
                client_id: self.managed_identity_client_id.clone(),
            }),
            other => Err(ConfigError::key(
                "store.auth",
                format!("unknown \"{other}\" (expected sas, client_secret, certificate or managed_identity)"),
            )),
        }
    }

    fn has_sas(&self) -> bool {
        self.sas_token.is_some()
            || self.sas_token_file.is_some()
            || self.sas_token_credential.is_some()
    }

    fn required(&self, key: &str, v: &Option<String>) -> Result<String, ConfigError> {
        v.clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ConfigError::key(key, "is required for this store.auth"))
    }

    fn sas_token(&self) -> Result<SecretString, ConfigError> {
        let raw = one_secret(
            "store.sas_token",
            &self.sas_token,
            &self.sas_token_file,
            &self.sas_token_credential,
        )?;
        normalise_sas(raw.expose_secret())
    }

    fn client_secret(&self) -> Result<SecretString, ConfigError> {
        one_secret(
            "store.client_secret",
            &self.client_secret,
            &self.client_secret_file,
            &self.client_secret_credential,
        )
    }

    fn certificate(&self) -> Result<AzureAuth, ConfigError> {
        let path = self.certificate_file.as_ref().ok_or_else(|| {
            ConfigError::key(
                "store.certificate_file",
                "is required for store.auth = \"certificate\"",
            )
        })?;
        let cert_pem = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::key(
                "store.certificate_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let key_pem = match (&self.private_key_file, &self.private_key_credential) {
            (Some(p), None) => read_secret_file("store.private_key_file", p)?,
            (None, Some(name)) => read_credential("store.private_key_credential", name)?,
            _ => {
                return Err(ConfigError::key(
                    "store.private_key_file",
                    "certificate auth needs exactly one of store.private_key_file or store.private_key_credential",
                ))
            }
        };
        Ok(AzureAuth::Certificate {
            tenant_id: self.required("store.tenant_id", &self.tenant_id)?,
            client_id: self.required("store.client_id", &self.client_id)?,
            cert_pem,
            key_pem,
        })
    }
}

/// Exactly one of the inline value, the file and the systemd credential.
fn one_secret(
    key: &str,
    inline: &Option<SecretString>,
    file: &Option<PathBuf>,
    credential: &Option<String>,
) -> Result<SecretString, ConfigError> {
    match (inline, file, credential) {
        (Some(s), None, None) => Ok(s.clone()),
        (None, Some(p), None) => read_secret_file(&format!("{key}_file"), p),
        (None, None, Some(name)) => read_credential(&format!("{key}_credential"), name),
        (None, None, None) => Err(ConfigError::key(
            key,
            format!("is required: set {key}, {key}_file or {key}_credential"),
        )),
        _ => Err(ConfigError::key(
            key,
            format!("give only one of {key}, {key}_file and {key}_credential"),
        )),
    }
}

/// Accepts the token with or without `?`, or a whole "Blob SAS URL" as the portal shows it, and
/// keeps only the query. A token without a signature cannot authorise anything.
fn normalise_sas(raw: &str) -> Result<SecretString, ConfigError> {
    let raw = raw.trim();
    let query = if raw.starts_with("https://") || raw.starts_with("http://") {
        Url::parse(raw)
            .ok()
            .and_then(|u| u.query().map(str::to_string))
            .unwrap_or_default()
    } else {
        raw.trim_start_matches('?').to_string()
    };
    if !query
        .split('&')
        .any(|p| p.starts_with("sig=") && p.len() > 4)
    {
        return Err(ConfigError::key(
            "store.sas_token",
            "is not a SAS token (no sig= parameter); copy the token or SAS URL from the portal",
        ));
    }
    Ok(SecretString::from(query))
}

fn container_url(text: Option<&str>, auth: &AzureAuth) -> Result<Url, ConfigError> {
    const KEY: &str = "store.container_url";
    let text = text
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| ConfigError::key(KEY, "is required with store.kind = \"azure\" (https://ACCOUNT.blob.core.windows.net/CONTAINER)"))?;
    let url = Url::parse(text.trim().trim_end_matches('/'))
        .map_err(|e| ConfigError::key(KEY, format!("not a URL ({e})")))?;
    if url.query().is_some_and(|q| q.contains("sig=")) {
        return Err(ConfigError::key(
            KEY,
            "contains a SAS signature: put the token in store.sas_token (or _file / _credential) \
             so that it never appears in logs",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::key(KEY, "must not have a query or fragment"));
    }
    match (url.scheme(), auth) {
        ("https", _) => {}
        // Entra ID tokens must never travel in clear; a SAS over http is the emulator's case.
        ("http", AzureAuth::Sas(_)) => {}
        ("http", _) => {
            return Err(ConfigError::key(
                KEY,
                "must be https with Entra ID authentication",
            ))
        }
        _ => return Err(ConfigError::key(KEY, "must be an http(s) URL")),
    }
    if url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .is_none_or(str::is_empty)
    {
        return Err(ConfigError::key(
            KEY,
            "must name the container (…/CONTAINER)",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sas_settings(url: &str) -> AzureSettings {
        AzureSettings {
            container_url: Some(url.into()),
            sas_token: Some(SecretString::from("?sv=2024-08-04&sp=racwl&sig=abc%3D")),
            ..Default::default()
        }
    }

    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn sas_is_detected_and_normalised() {
        let c = sas_settings("http://127.0.0.1:10000/devstoreaccount1/archive")
            .validate()
            .expect("valid");
        match &c.auth {
            AzureAuth::Sas(t) => assert_eq!(t.expose_secret(), "sv=2024-08-04&sp=racwl&sig=abc%3D"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("abc%3D"), "SAS in Debug output");
        assert!(c.require_immutability);
    }

    #[test]
    fn whole_sas_url_is_accepted_as_token() {
        let s = AzureSettings {
            sas_token: Some(SecretString::from(
                "https://a.blob.core.windows.net/c?sp=r&sig=xyz",
            )),
            ..sas_settings("https://a.blob.core.windows.net/c")
        };
        match s.validate().expect("valid").auth {
            AzureAuth::Sas(t) => assert_eq!(t.expose_secret(), "sp=r&sig=xyz"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases: Vec<(AzureSettings, &str)> = vec![
            (
                sas_settings("https://a.blob.core.windows.net/c?sp=r&sig=x"),
                "store.container_url",
            ),
            (
                sas_settings("https://a.blob.core.windows.net/"),
                "store.container_url",
            ),
            (
                AzureSettings {
                    sas_token: Some(SecretString::from("sp=r")),
                    ..sas_settings("https://a/c")
                },
                "store.sas_token",
            ),
            (
                AzureSettings {
                    container_url: Some("https://a/c".into()),
                    ..Default::default()
                },
                "store.auth",
            ),
            (
                AzureSettings {
                    auth: Some("client_secret".into()),
                    container_url: Some("https://a/c".into()),
                    ..Default::default()
                },
                "store.tenant_id",
            ),
            (
                AzureSettings {
                    auth: Some("managed_identity".into()),
                    container_url: Some("http://a/c".into()),
                    ..Default::default()
                },
                "store.container_url",
            ),
            (
                AzureSettings {
                    block_size_mib: Some(0),
                    ..sas_settings("https://a/c")
                },
                "store.block_size_mib",
            ),
            (
                AzureSettings {
                    authority: Some("http://login".into()),
                    ..sas_settings("https://a/c")
                },
                "store.authority",
            ),
        ];
        for (settings, key) in cases {
            assert_eq!(key_of(settings.validate().expect_err(key)), key);
        }
    }
}
