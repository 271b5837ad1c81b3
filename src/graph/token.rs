//! App-only access tokens (OAuth 2.0 client credentials): fetch, cache, refresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::assertion::{AssertionForm, CertSigner};
use super::error::{bounded, first_line, transport_error, GraphError};
use super::retry::{self, is_retryable_status, parse_retry_after, Failure, RetryConfig};
use super::stats::{bump, Counters};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Refresh at the latest this long before expiry (unless a quarter of the lifetime is less).
const MAX_REFRESH_LEAD: Duration = Duration::from_secs(300);
/// While a refresh is in flight or failing, a cached token is still handed out if it has this
/// much left (or half its refresh lead, for very short-lived tokens), so that it does not
/// expire on its way to Graph.
const MIN_REMAINING: Duration = Duration::from_secs(2);
/// After a failed refresh (with the old token still valid), wait this long before the next try.
const REFRESH_RETRY_DELAY: Duration = Duration::from_secs(15);

/// How the application proves its identity to Entra ID.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A client secret (its Value, not its Secret ID).
    Secret(SecretString),
    /// A certificate uploaded to the app registration, and its RSA private key.
    Certificate {
        cert_pem: String,
        key_pem: SecretString,
        form: AssertionForm,
    },
}

enum Signer {
    Secret(SecretString),
    Certificate(CertSigner),
}

/// A bearer token, tagged with the generation of the cache entry it came from, so that a 401
/// drops exactly that token and not one another task has just fetched.
#[derive(Clone)]
pub(crate) struct AccessToken {
    pub(crate) secret: SecretString,
    pub(crate) generation: u64,
}

struct CachedToken {
    token: AccessToken,
    refresh_at: Instant,
    expires_at: Instant,
}

impl CachedToken {
    /// Still safe to send, even though a refresh may be due.
    fn lasts(&self, now: Instant) -> bool {
        let lead = self.expires_at.saturating_duration_since(self.refresh_at);
        now + MIN_REMAINING.min(lead / 2) < self.expires_at
    }
}

/// Settings the token source needs from the client configuration.
pub(crate) struct TokenSettings<'a> {
    pub(crate) authority: &'a Url,
    pub(crate) tenant_id: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) credential: &'a Credential,
    pub(crate) retry: &'a RetryConfig,
}

/// Fetches and caches the client's access token; at most one fetch is in flight.
pub(crate) struct TokenSource {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    scope: String,
    signer: Signer,
    retry: RetryConfig,
    counters: Arc<Counters>,
    cache: RwLock<Option<CachedToken>>,
    refresh: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl TokenSource {
    pub(crate) fn new(
        settings: TokenSettings<'_>,
        http: reqwest::Client,
        counters: Arc<Counters>,
    ) -> Result<Self, GraphError> {
        let token_url = token_url(settings.authority, settings.tenant_id)?;
        if settings.client_id.trim().is_empty() {
            return Err(GraphError::Config("graph.client_id is empty".into()));
        }
        let signer = match settings.credential {
            Credential::Secret(secret) if secret.expose_secret().is_empty() => {
                return Err(GraphError::Config("graph.client_secret is empty".into()))
            }
            Credential::Secret(secret) => Signer::Secret(secret.clone()),
            Credential::Certificate {
                cert_pem,
                key_pem,
                form,
            } => {
                let signer = CertSigner::new(cert_pem, key_pem, *form)?;
                // One trial signature now, so an unusable key fails at startup.
                signer.assertion(token_url.as_str(), settings.client_id)?;
                Signer::Certificate(signer)
            }
        };
        Ok(Self {
            http,
            token_url,
            client_id: settings.client_id.to_owned(),
            scope: settings.scope.to_owned(),
            signer,
            retry: settings.retry.clone(),
            counters,
            cache: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// A token good for a request: the cached one, or a fresh one when it is due for refresh.
    pub(crate) async fn get(&self) -> Result<AccessToken, GraphError> {
        if let Some(token) = self.cached(|t, now| now < t.refresh_at) {
            return Ok(token);
        }
        let _guard = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone else is refreshing: keep working with the old token while it lasts.
                if let Some(token) = self.cached(CachedToken::lasts) {
                    return Ok(token);
                }
                self.refresh.lock().await
            }
        };
        // The refresh we waited for may have done the work.
        if let Some(token) = self.cached(|t, now| now < t.refresh_at) {
            return Ok(token);
        }
        match self.fetch_and_store().await {
            Ok(token) => Ok(token),
            Err(error) => match self.postpone_refresh() {
                Some(token) => {
                    tracing::warn!(
                        error = %error,
                        retry_in_s = REFRESH_RETRY_DELAY.as_secs(),
                        "graph: access token refresh failed; using the current token while it lasts"
                    );
                    Ok(token)
                }
                None => Err(error),
            },
        }
    }

    /// After a failed refresh, keeps handing out the current token while it is valid, and
    /// schedules the next refresh a little later, so that an Entra ID hiccup neither stops
    /// the archiver nor makes every request run its own token retries.
    fn postpone_refresh(&self) -> Option<AccessToken> {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let entry = cache.as_mut()?;
        let now = Instant::now();
        if !entry.lasts(now) {
            return None;
        }
        // Retry before the token stops being usable, and no sooner than needed.
        let lead = entry.expires_at.saturating_duration_since(entry.refresh_at);
        let last_chance = entry.expires_at - MIN_REMAINING.min(lead / 2);
        entry.refresh_at = (now + REFRESH_RETRY_DELAY).min(last_chance);
        Some(entry.token.clone())
    }

    /// Fetches a new token even if a cached one is still good (startup credential check).
    pub(crate) async fn refresh_now(&self) -> Result<AccessToken, GraphError> {
        let _guard = self.refresh.lock().await;
        self.fetch_and_store().await
    }

    /// Drops the cached token if it is still the one of `generation` (Graph answered 401).
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache
            .as_ref()
            .is_some_and(|c| c.token.generation == generation)
        {
            *cache = None;
        }
    }

    /// The host to name in messages about the token endpoint.
    pub(crate) fn host(&self) -> &str {
        self.token_url.host_str().unwrap_or("the token endpoint")
    }

    fn cached(&self, usable: impl Fn(&CachedToken, Instant) -> bool) -> Option<AccessToken> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let entry = cache.as_ref()?;
        usable(entry, Instant::now()).then(|| entry.token.clone())
    }

    async fn fetch_and_store(&self) -> Result<AccessToken, GraphError> {
        let path = self.token_url.path().to_owned();
        let (secret, lifetime, sent_at) =
            retry::run(&self.retry, &path, |_, _| {}, || self.fetch_once()).await?;
        let token = AccessToken {
            secret,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        // Timed from when the request was sent: the token cannot be older than that.
        let lead = MAX_REFRESH_LEAD.min(lifetime / 4);
        let entry = CachedToken {
            token: token.clone(),
            refresh_at: sent_at + lifetime.saturating_sub(lead),
            expires_at: sent_at + lifetime,
        };
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Some(entry);
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "graph: fetched an access token"
        );
        Ok(token)
    }

    /// One POST to the token endpoint.
    async fn fetch_once(&self) -> Result<(SecretString, Duration, Instant), Failure> {
        let assertion = match &self.signer {
            Signer::Certificate(signer) => Some(
                signer
                    .assertion(self.token_url.as_str(), &self.client_id)
                    .map_err(Failure::Fatal)?,
            ),
            Signer::Secret(_) => None,
        };
        let form = self.form(assertion.as_ref());
        bump(&self.counters.token_requests);
        let sent_at = Instant::now();
        let transport = |e| Failure::Retry {
            error: transport_error(&self.token_url, e),
            retry_after: None,
        };
        let response = self
            .http
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let body = response.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            let (secret, lifetime) = self.parse_token(&body).map_err(|error| Failure::Retry {
                error,
                retry_after: None,
            })?;
            return Ok((secret, lifetime, sent_at));
        }
        let error = self.auth_error(status, &body, assertion.as_ref());
        if is_retryable_status(status) {
            return Err(Failure::Retry { error, retry_after });
        }
        Err(Failure::Fatal(error))
    }

    fn form<'a>(&'a self, assertion: Option<&'a SecretString>) -> Vec<(&'static str, &'a str)> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        match (&self.signer, assertion) {
            (Signer::Secret(secret), _) => form.push(("client_secret", secret.expose_secret())),
            (Signer::Certificate(_), Some(jwt)) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", jwt.expose_secret()));
            }
            (Signer::Certificate(_), None) => {}
        }
        form
    }

    fn parse_token(&self, body: &Bytes) -> Result<(SecretString, Duration), GraphError> {
        let bad = || GraphError::TokenResponse {
            host: self.host().to_owned(),
        };
        let parsed: TokenBody = serde_json::from_slice(body).map_err(|_| bad())?;
        let bearer = parsed
            .token_type
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty() && bearer)
            .ok_or_else(bad)?;
        let lifetime = parsed
            .expires_in
            .as_ref()
            .and_then(seconds)
            .ok_or_else(bad)?;
        Ok((SecretString::from(token), lifetime))
    }

    /// Builds the error for a refused token request, scrubbing anything an endpoint might have
    /// echoed back of our credential.
    fn auth_error(
        &self,
        status: u16,
        body: &Bytes,
        assertion: Option<&SecretString>,
    ) -> GraphError {
        let parsed: AadError = serde_json::from_slice(body).unwrap_or_else(|_| AadError {
            description: first_line(&String::from_utf8_lossy(body)),
            ..AadError::default()
        });
        let aadsts = parsed
            .error_codes
            .first()
            .copied()
            .or_else(|| aadsts_in(&parsed.description));
        GraphError::Auth {
            status,
            aadsts,
            error: self.redact(&bounded(&parsed.error), assertion),
            description: self.redact(&parsed.description, assertion),
        }
    }

    fn redact(&self, text: &str, assertion: Option<&SecretString>) -> String {
        let mut out = text.to_owned();
        let secrets = [
            match &self.signer {
                Signer::Secret(s) => Some(s.expose_secret()),
                Signer::Certificate(_) => None,
            },
            assertion.map(|a| a.expose_secret()),
        ];
        for secret in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
            out = out.replace(secret, "[redacted]");
        }
        out
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn token_url(authority: &Url, tenant_id: &str) -> Result<Url, GraphError> {
    let tenant_ok = !tenant_id.is_empty()
        && tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !tenant_id.starts_with('.');
    if !tenant_ok {
        return Err(GraphError::Config(
            "graph.tenant_id must be the tenant GUID or its domain name (e.g. contoso.onmicrosoft.com)"
                .into(),
        ));
    }
    let mut url = authority.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|_| GraphError::Config("graph.authority must be an http(s) URL".into()))?
        .pop_if_empty()
        .extend([tenant_id, "oauth2", "v2.0", "token"]);
    Ok(url)
}

/// No `Debug`: it holds the access token.
#[derive(Deserialize)]
struct TokenBody {
    token_type: Option<String>,
    access_token: Option<String>,
    /// A number in v2.0 responses; older endpoints sent a string.
    expires_in: Option<serde_json::Value>,
}

fn seconds(value: &serde_json::Value) -> Option<Duration> {
    let secs = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::try_from_secs_f64(secs).ok())
        .flatten()
}

#[derive(Deserialize, Default)]
struct AadError {
    #[serde(default)]
    error: String,
    #[serde(default, rename = "error_description")]
    description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// The number after the first "AADSTS" in a description, for bodies without `error_codes`.
fn aadsts_in(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + "AADSTS".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_url_is_built_safely() {
        let authority = Url::parse("https://login.microsoftonline.com").expect("url");
        let url = token_url(&authority, "contoso.onmicrosoft.com").expect("valid");
        assert_eq!(
            url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let authority = Url::parse("https://login.microsoftonline.us/").expect("url");
        let url = token_url(&authority, "0b1c2d3e-0000-4000-8000-000000000000").expect("valid");
        assert_eq!(
            url.path(),
            "/0b1c2d3e-0000-4000-8000-000000000000/oauth2/v2.0/token"
        );
        for bad in ["", "../x", "a/b", "a?b", ".."] {
            assert!(token_url(&authority, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aadsts_code_from_description() {
        assert_eq!(
            aadsts_in("AADSTS7000215: Invalid client secret"),
            Some(7000215)
        );
        assert_eq!(aadsts_in("no code here"), None);
    }

    #[test]
    fn expires_in_forms() {
        assert_eq!(
            seconds(&serde_json::json!(3599)),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(
            seconds(&serde_json::json!("60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(seconds(&serde_json::json!(0)), None);
        assert_eq!(seconds(&serde_json::json!(null)), None);
    }
}
