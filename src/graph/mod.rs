//! The one Microsoft Graph client every source uses.
//!
//! It owns everything about talking to Graph that must be done once and the same way for the
//! whole tenant: the app-only access token (cached, refreshed, re-fetched on 401), the
//! per-endpoint rate budget, the tenant-wide pause that `Retry-After` imposes, one bounded
//! retry policy, nextLink safety, and slicing collection pages into records byte-exact.
//!
//! This module depends on no other module of the crate: `config` maps its settings onto
//! [`GraphClientConfig`].

mod assertion;
mod billing;
mod budget;
mod error;
mod page;
mod retry;
mod stats;
mod token;
mod write;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

pub use assertion::AssertionForm;
pub(crate) use assertion::CertSigner;
pub use budget::{BudgetShare, Budgets, Busy, Endpoint};
pub use error::{GraphError, PageError};
pub use page::{parse_collection, Page, Record};
pub use retry::RetryConfig;
pub use stats::GraphStats;
pub use token::Credential;
pub use write::Idempotence;

use budget::RateBudget;
use error::{first_line, transport_error};
use retry::{is_retryable_status, parse_retry_after, Failure, Pause};
use stats::{bump, Counters};
use token::{TokenSettings, TokenSource};

/// Graph v1.0 in the global cloud.
pub const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
/// Entra ID's token authority in the global cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// App-only scope: every application permission the app was granted.
pub const DEFAULT_TOKEN_SCOPE: &str = "https://graph.microsoft.com/.default";

const USER_AGENT: &str = concat!("m365-archiver/", env!("CARGO_PKG_VERSION"));

/// Everything the client needs; `config` fills it from the operator's settings.
#[derive(Clone, Debug)]
pub struct GraphClientConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
    /// e.g. `https://graph.microsoft.com/v1.0`, or the simulator's `http://127.0.0.1:port/v1.0`.
    pub base_url: Url,
    /// e.g. `https://login.microsoftonline.com`.
    pub authority: Url,
    /// Normally `https://graph.microsoft.com/.default`.
    pub token_scope: String,
    pub retry: RetryConfig,
    /// Limit for one whole request, body included.
    pub request_timeout: Duration,
    pub budgets: Budgets,
}

/// The shared Graph client. Cheap to clone: every clone shares the token cache, the rate
/// budget, the pause and the statistics.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: Url,
    tokens: TokenSource,
    budget: RateBudget,
    pause: Pause,
    retry: RetryConfig,
    counters: Arc<Counters>,
    billing: billing::BillingStop,
}

/// Everything a request needs besides its URL: which budget it takes from, the caller's
/// headers, and (for content downloads) its own time limit.
struct Call<'a> {
    url: &'a Url,
    endpoint: Endpoint,
    headers: &'a HeaderMap,
    timeout: Option<Duration>,
    refreshed: &'a AtomicBool,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base_url", &self.inner.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// Builds the client and checks the configuration (URLs, budgets, retry policy, and for a
    /// certificate credential that the key and certificate load and belong together). Sends
    /// nothing: use [`GraphClient::check_credentials`] for that.
    pub fn new(cfg: GraphClientConfig) -> Result<Self, GraphError> {
        check_service_url("graph.base_url", &cfg.base_url)?;
        check_service_url("graph.authority", &cfg.authority)?;
        cfg.retry.validate()?;
        if cfg.request_timeout.is_zero() {
            return Err(GraphError::Config(
                "request_timeout must be positive".into(),
            ));
        }
        let budget = RateBudget::new(&cfg.budgets)?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|_| GraphError::Config("cannot set up the HTTP client (TLS)".into()))?;
        let counters = Arc::new(Counters::default());
        let settings = TokenSettings {
            authority: &cfg.authority,
            tenant_id: &cfg.tenant_id,
            client_id: &cfg.client_id,
            scope: &cfg.token_scope,
            credential: &cfg.credential,
            retry: &cfg.retry,
        };
        let tokens = TokenSource::new(settings, http.clone(), Arc::clone(&counters))?;
        let inner = Inner {
            http,
            base_url: cfg.base_url,
            tokens,
            budget,
            pause: Pause::default(),
            retry: cfg.retry,
            counters,
            billing: billing::BillingStop::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// Fetches a token now (startup check: wrong credentials fail here with the AADSTS code).
    pub async fn check_credentials(&self) -> Result<(), GraphError> {
        self.inner.tokens.refresh_now().await.map(|_| ())
    }

    /// GETs one collection page under the full retry policy; returns the records sliced out
    /// byte-exact plus the validated nextLink.
    pub async fn get_page(
        &self,
        url: &Url,
        endpoint: Endpoint,
        headers: &[(&'static str, String)],
    ) -> Result<Page, GraphError> {
        self.execute(url, endpoint, headers, |body| self.to_page(url, body))
            .await
    }

    /// GETs any body under the same policy (for non-collection calls). Returns the 2xx body.
    pub async fn get_bytes(
        &self,
        url: &Url,
        endpoint: Endpoint,
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, GraphError> {
        self.execute(url, endpoint, headers, Ok).await
    }

    /// GETs content too large to hold in memory (meeting recordings) under the same token,
    /// budget, pause and retry policy as every request, but with its own time limit for the
    /// whole transfer. Returns the 2xx response with its body unread: the caller streams it
    /// and handles a transfer that breaks off (see `content`). `headers` may carry `Range`.
    pub async fn get_stream(
        &self,
        url: &Url,
        endpoint: Endpoint,
        headers: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<reqwest::Response, GraphError> {
        self.check_own_origin(url)?;
        self.inner.billing.check(endpoint, url.path())?;
        let headers = header_map(headers)?;
        let refreshed = AtomicBool::new(false);
        let call = Call {
            url,
            endpoint,
            headers: &headers,
            timeout: Some(timeout),
            refreshed: &refreshed,
        };
        let result = retry::run(
            &self.inner.retry,
            url.path(),
            |_, retry_after| self.on_retry(retry_after),
            || self.attempt_stream(&call),
        )
        .await;
        if let Err(e) = &result {
            self.inner.billing.record(endpoint, e);
        }
        result
    }

    /// Divides the tenant-wide rate budgets by `replicas` live replicas from now on (0 counts
    /// as 1). Ok(false) if that already was the share.
    pub fn set_replicas(&self, replicas: u32) -> Result<bool, GraphError> {
        self.inner.budget.set_replicas(replicas)
    }

    /// The budgets this process paces itself by now, and how many replicas share the tenant.
    pub fn budget_share(&self) -> BudgetShare {
        self.inner.budget.share()
    }

    /// Keeps this replica's share of the budget while held: an export holds it from its first
    /// window to its last, so that the replica does not go idle between them (`replicas`).
    pub fn busy(&self) -> Busy {
        self.inner.budget.busy()
    }

    /// The replica's side of the budget gate (`crate::replicas` parks it while idle).
    pub(crate) fn budget(&self) -> &RateBudget {
        &self.inner.budget
    }

    /// Takes one slot of `endpoint`'s budget without sending anything (tests of the shares).
    #[cfg(test)]
    pub(crate) async fn take_slot(&self, endpoint: Endpoint) {
        self.inner.budget.acquire(endpoint, "/v1.0/users").await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GraphStats {
        self.inner.counters.snapshot()
    }

    /// The retry loop around one logical request. `parse` turns a 2xx body into the result;
    /// a `Malformed` error from it is retried (Graph does send truncated pages), any other
    /// error is final.
    async fn execute<T, P>(
        &self,
        url: &Url,
        endpoint: Endpoint,
        headers: &[(&'static str, String)],
        parse: P,
    ) -> Result<T, GraphError>
    where
        P: Fn(Bytes) -> Result<T, GraphError>,
    {
        self.check_own_origin(url)?;
        self.inner.billing.check(endpoint, url.path())?;
        let headers = header_map(headers)?;
        let refreshed = AtomicBool::new(false);
        let call = Call {
            url,
            endpoint,
            headers: &headers,
            timeout: None,
            refreshed: &refreshed,
        };
        let result = retry::run(
            &self.inner.retry,
            url.path(),
            |_, retry_after| self.on_retry(retry_after),
            || self.attempt(&call, &parse),
        )
        .await;
        if let Err(e) = &result {
            self.inner.billing.record(endpoint, e);
        }
        result
    }

    /// Before each retry: a server-requested wait becomes the tenant-wide pause.
    fn on_retry(&self, retry_after: Option<Duration>) {
        if let Some(wait) = retry_after {
            let added = self.inner.pause.extend(Instant::now() + wait);
            if !added.is_zero() {
                tracing::debug!(
                    pause_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "graph: throttled, pausing every request of the tenant"
                );
            }
            self.inner.counters.add_pause(added);
        }
        bump(&self.inner.counters.retries);
    }

    /// One attempt, parsed.
    async fn attempt<T, P>(&self, call: &Call<'_>, parse: &P) -> Result<T, Failure>
    where
        P: Fn(Bytes) -> Result<T, GraphError>,
    {
        let response = self.respond(call).await?;
        self.handle(call.url, response, parse).await
    }

    /// One attempt whose 2xx body is left to the caller.
    async fn attempt_stream(&self, call: &Call<'_>) -> Result<reqwest::Response, Failure> {
        let response = self.respond(call).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.failure(call.url, response).await)
    }

    /// Sends once; a 401 gets one fresh token and one re-send within the same attempt
    /// (at most once per logical request: a second 401 is final).
    async fn respond(&self, call: &Call<'_>) -> Result<reqwest::Response, Failure> {
        let (response, generation) = self.send(call).await?;
        if response.status() == StatusCode::UNAUTHORIZED
            && !call.refreshed.swap(true, Ordering::Relaxed)
        {
            tracing::debug!(
                path = call.url.path(),
                "graph: 401, fetching a fresh token and retrying once"
            );
            self.inner.tokens.invalidate(generation);
            bump(&self.inner.counters.retries);
            return Ok(self.send(call).await?.0);
        }
        Ok(response)
    }

    /// Waits out the pause and the budget, then sends with the current token. Every attempt
    /// takes from the budget: Graph counts throttled and failed requests too.
    async fn send(&self, call: &Call<'_>) -> Result<(reqwest::Response, u64), Failure> {
        self.inner.pause.wait().await;
        self.inner
            .budget
            .acquire(call.endpoint, call.url.path())
            .await;
        let token = self.inner.tokens.get().await.map_err(Failure::Fatal)?;
        bump(&self.inner.counters.requests);
        let mut request = self
            .inner
            .http
            .get(call.url.clone())
            .headers(call.headers.clone())
            .bearer_auth(token.secret.expose_secret());
        if let Some(t) = call.timeout {
            request = request.timeout(t);
        }
        match request.send().await {
            Ok(response) => {
                self.inner
                    .counters
                    .record_status(response.status().as_u16());
                Ok((response, token.generation))
            }
            Err(e) => Err(self.transport_failure(call.url, e)),
        }
    }

    /// Sorts a response into success, retry or final error.
    async fn handle<T, P>(
        &self,
        url: &Url,
        response: reqwest::Response,
        parse: &P,
    ) -> Result<T, Failure>
    where
        P: Fn(Bytes) -> Result<T, GraphError>,
    {
        if response.status().is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_failure(url, e))?;
            return parse(body).map_err(|e| self.parse_failure(e));
        }
        Err(self.failure(url, response).await)
    }

    /// Sorts an error response into retry or final error.
    async fn failure(&self, url: &Url, response: reqwest::Response) -> Failure {
        let status = response.status().as_u16();
        let retry_after = throttle_wait(status, response.headers());
        if status == 429 || retry_after.is_some() {
            bump(&self.inner.counters.throttled);
        }
        // An error body cut short still leaves the status to report.
        let body = response.bytes().await.unwrap_or_default();
        let error = status_error(status, &body, url.path());
        if is_retryable_status(status) {
            Failure::Retry { error, retry_after }
        } else {
            Failure::Fatal(error)
        }
    }

    fn transport_failure(&self, url: &Url, err: reqwest::Error) -> Failure {
        bump(&self.inner.counters.transport_errors);
        Failure::Retry {
            error: transport_error(url, err),
            retry_after: None,
        }
    }

    fn parse_failure(&self, error: GraphError) -> Failure {
        if matches!(error, GraphError::Malformed { .. }) {
            bump(&self.inner.counters.malformed_pages);
            Failure::Retry {
                error,
                retry_after: None,
            }
        } else {
            Failure::Fatal(error)
        }
    }

    fn to_page(&self, url: &Url, body: Bytes) -> Result<Page, GraphError> {
        let malformed = |source| GraphError::Malformed {
            path: url.path().to_owned(),
            source,
        };
        let (records, next) = parse_collection(&body).map_err(malformed)?;
        let next_link = match next {
            Some(link) => Some(self.check_next_link(&link).map_err(|e| match e {
                NextLinkError::Invalid => malformed(PageError::InvalidNextLink),
                NextLinkError::Foreign(e) => e,
            })?),
            None => None,
        };
        let records = records.into_iter().map(|bytes| Record { bytes }).collect();
        Ok(Page { records, next_link })
    }

    /// A nextLink is followed only on the configured origin, so the token never leaves it.
    fn check_next_link(&self, link: &str) -> Result<Url, NextLinkError> {
        let url = Url::parse(link).map_err(|_| NextLinkError::Invalid)?;
        if url.origin() != self.inner.base_url.origin() {
            return Err(NextLinkError::Foreign(GraphError::ForeignNextLink {
                origin: url.origin().ascii_serialization(),
                expected: self.inner.base_url.origin().ascii_serialization(),
            }));
        }
        Ok(url)
    }

    fn check_own_origin(&self, url: &Url) -> Result<(), GraphError> {
        if url.origin() == self.inner.base_url.origin() {
            return Ok(());
        }
        Err(GraphError::ForeignUrl {
            origin: url.origin().ascii_serialization(),
            expected: self.inner.base_url.origin().ascii_serialization(),
        })
    }
}

enum NextLinkError {
    Invalid,
    Foreign(GraphError),
}

/// The wait Graph asks for with a throttling answer (429, or 503 with Retry-After).
fn throttle_wait(status: u16, headers: &HeaderMap) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, chrono::Utc::now())
}

/// Graph's error envelope `{"error":{"code":"...","message":"..."}}`.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A `Status` error from an error response; `path` carries no query (it may hold skip tokens).
fn status_error(status: u16, body: &Bytes, path: &str) -> GraphError {
    let (code, message) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (envelope.error.code, first_line(&envelope.error.message)),
        Err(_) => (String::new(), first_line(&String::from_utf8_lossy(body))),
    };
    GraphError::Status {
        status,
        code: error::bounded(&code),
        message,
        path: path.to_owned(),
    }
}

/// Caller headers (e.g. `Prefer`). `Authorization` is the client's alone.
fn header_map(headers: &[(&'static str, String)]) -> Result<HeaderMap, GraphError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let invalid = |reason: &str| GraphError::InvalidHeader {
            name: (*name).to_owned(),
            reason: reason.to_owned(),
        };
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("bad name"))?;
        if header == reqwest::header::AUTHORIZATION {
            return Err(invalid("the client sets Authorization itself"));
        }
        let value = HeaderValue::from_str(value).map_err(|_| invalid("bad value"))?;
        map.append(header, value);
    }
    Ok(map)
}

/// Graph and the authority must be http(s); plain http only to this machine (the simulator),
/// because the bearer token and the client secret travel in those requests.
fn check_service_url(name: &str, url: &Url) -> Result<(), GraphError> {
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err(GraphError::Config(format!("{name} has no host"))),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(GraphError::Config(format!(
            "{name} must use https (plain http is allowed only to localhost)"
        ))),
        _ => Err(GraphError::Config(format!("{name} must be an https URL"))),
    }
}
