//! Writes to Graph (POST, PATCH, DELETE with JSON), for change-notification subscriptions.
//!
//! Same token, tenant-wide pause, rate budget, 401 refresh and error mapping as the GET path.
//! Retries differ by verb: PATCH and DELETE are idempotent and get the full retry policy. A
//! POST that creates something is retried only when Graph certainly did not act on it (429,
//! or 503 with Retry-After: a throttled request is refused, not processed; a 401 is re-sent
//! once with a fresh token). After a timeout, a cut connection or another 5xx the create may
//! or may not have happened: the error is returned at once and [`GraphError::outcome_unknown`]
//! tells the caller to look (e.g. list subscriptions) before creating again.

use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use url::Url;

use super::retry::{self, Failure};
use super::stats::bump;
use super::{Endpoint, GraphClient, GraphError};

/// Whether repeating a request can do harm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotence {
    /// Repeating it leaves the same result (PATCH to a value, DELETE, reauthorize).
    Idempotent,
    /// Repeating it may create a second object (POST /subscriptions).
    NotIdempotent,
}

/// One write request.
struct Write<'a> {
    method: Method,
    url: &'a Url,
    body: Option<Bytes>,
    refreshed: &'a AtomicBool,
}

impl GraphClient {
    /// POSTs `body` to create something; not repeated when the outcome is unknown.
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<Bytes, GraphError> {
        self.send_json(Method::POST, url, Some(body), Idempotence::NotIdempotent)
            .await
    }

    /// PATCHes `body` (idempotent: full retry policy); returns the 2xx body.
    pub async fn patch_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
    ) -> Result<Bytes, GraphError> {
        self.send_json(Method::PATCH, url, Some(body), Idempotence::Idempotent)
            .await
    }

    /// DELETEs `url` (idempotent: full retry policy). A 404 is an error like any other; the
    /// caller decides whether "already gone" is fine.
    pub async fn delete(&self, url: &Url) -> Result<(), GraphError> {
        self.send_json(Method::DELETE, url, None, Idempotence::Idempotent)
            .await
            .map(|_| ())
    }

    /// Sends one JSON write under the policy `idempotence` allows; returns the 2xx body.
    pub async fn send_json(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        idempotence: Idempotence,
    ) -> Result<Bytes, GraphError> {
        self.check_own_origin(url)?;
        let body = match body {
            Some(v) => Some(Bytes::from(serde_json::to_vec(v).map_err(|e| {
                GraphError::Config(format!("request body does not serialise: {e}"))
            })?)),
            None => None,
        };
        let refreshed = AtomicBool::new(false);
        let write = Write {
            method,
            url,
            body,
            refreshed: &refreshed,
        };
        retry::run(
            &self.inner.retry,
            url.path(),
            |_, retry_after| self.on_retry(retry_after),
            || async {
                let outcome = self.write_attempt(&write).await;
                match (idempotence, outcome) {
                    (Idempotence::NotIdempotent, Err(Failure::Retry { error, retry_after }))
                        if !refused_unprocessed(&error, retry_after) =>
                    {
                        Err(Failure::Fatal(error))
                    }
                    (_, other) => other,
                }
            },
        )
        .await
    }

    /// One attempt; a 401 gets one fresh token and one re-send (Graph did not act on it).
    async fn write_attempt(&self, w: &Write<'_>) -> Result<Bytes, Failure> {
        let (mut response, generation) = self.send_write(w).await?;
        if response.status() == StatusCode::UNAUTHORIZED
            && !w.refreshed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::debug!(
                path = w.url.path(),
                "graph: 401 on a write, fetching a fresh token and re-sending once"
            );
            self.inner.tokens.invalidate(generation);
            bump(&self.inner.counters.retries);
            response = self.send_write(w).await?.0;
        }
        if response.status().is_success() {
            return response
                .bytes()
                .await
                .map_err(|e| self.transport_failure(w.url, e));
        }
        Err(self.failure(w.url, response).await)
    }

    /// Waits out the pause and the budget, then sends with the current token.
    async fn send_write(&self, w: &Write<'_>) -> Result<(reqwest::Response, u64), Failure> {
        self.inner.pause.wait().await;
        self.inner
            .budget
            .acquire(Endpoint::Other, w.url.path())
            .await;
        let token = self.inner.tokens.get().await.map_err(Failure::Fatal)?;
        bump(&self.inner.counters.requests);
        let mut request = self
            .inner
            .http
            .request(w.method.clone(), w.url.clone())
            .bearer_auth(token.secret.expose_secret());
        if let Some(body) = &w.body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.clone());
        }
        match request.send().await {
            Ok(response) => {
                self.inner
                    .counters
                    .record_status(response.status().as_u16());
                Ok((response, token.generation))
            }
            Err(e) => Err(self.transport_failure(w.url, e)),
        }
    }
}

/// A throttling answer: Graph refused the request without processing it.
fn refused_unprocessed(error: &GraphError, retry_after: Option<std::time::Duration>) -> bool {
    match error.status() {
        Some(429) => true,
        Some(503) => retry_after.is_some(),
        _ => false,
    }
}

impl GraphError {
    /// True when a write may or may not have taken effect: no complete answer arrived, or
    /// Graph failed on its side (5xx, 408). Creating again blindly could make a duplicate.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            GraphError::Transport { .. } => true,
            GraphError::Status { status, .. } => *status == 408 || *status >= 500,
            GraphError::Exhausted { last, .. } => last.outcome_unknown(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Budgets, Credential, GraphClientConfig, RetryConfig};
    use super::*;
    use axum::body::Bytes as AxumBytes;
    use axum::extract::State;
    use axum::http::{Method as AxumMethod, StatusCode as AxumStatus, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::Router;
    use secrecy::SecretString;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// What the fake saw: method, path, body.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    #[derive(Clone, Default)]
    struct Fake {
        seen: Seen,
        /// Scripted (status, body) answers, in order; then 200 `{}`.
        replies: Arc<Mutex<VecDeque<(u16, String)>>>,
    }

    async fn token() -> Response {
        let body = r#"{"token_type":"Bearer","expires_in":3600,"access_token":"t"}"#;
        ([("content-type", "application/json")], body).into_response()
    }

    async fn graph(
        State(f): State<Fake>,
        method: AxumMethod,
        uri: Uri,
        body: AxumBytes,
    ) -> Response {
        let text = String::from_utf8_lossy(&body).into_owned();
        f.seen
            .lock()
            .unwrap()
            .push((method.to_string(), uri.path().to_owned(), text));
        let (status, body) = f
            .replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((200, "{}".into()));
        let status = AxumStatus::from_u16(status).unwrap();
        let mut resp = (status, body).into_response();
        if status == AxumStatus::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert("retry-after", "0.01".parse().unwrap());
        }
        resp
    }

    async fn start(replies: Vec<(u16, &str)>) -> (GraphClient, Fake, Url) {
        let fake = Fake::default();
        *fake.replies.lock().unwrap() = replies
            .into_iter()
            .map(|(s, b)| (s, b.to_owned()))
            .collect();
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .fallback(graph)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = Url::parse(&format!("http://{addr}/v1.0")).unwrap();
        let cfg = GraphClientConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            credential: Credential::Secret(SecretString::from("s")),
            base_url: base.clone(),
            authority: Url::parse(&format!("http://{addr}")).unwrap(),
            token_scope: "https://graph.microsoft.com/.default".into(),
            retry: RetryConfig {
                max_attempts: 4,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            },
            request_timeout: Duration::from_secs(5),
            budgets: Budgets {
                other_rps: 1000.0,
                ..Budgets::default()
            },
        };
        let url = Url::parse(&format!("http://{addr}/v1.0/subscriptions")).unwrap();
        (GraphClient::new(cfg).unwrap(), fake, url)
    }

    fn graph_error(code: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string()
    }

    #[tokio::test]
    async fn post_sends_json_and_returns_the_body() {
        let (client, fake, url) = start(vec![(201, r#"{"id":"s1"}"#)]).await;
        let body = serde_json::json!({"resource": "/x", "clientState": "secret-state"});
        let got = client.post_json(&url, &body).await.unwrap();
        assert_eq!(&got[..], br#"{"id":"s1"}"#);
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "POST");
        let sent: serde_json::Value = serde_json::from_str(&seen[0].2).unwrap();
        assert_eq!(sent, body);
    }

    #[tokio::test]
    async fn a_create_is_not_repeated_after_a_server_error_but_is_after_throttling() {
        let (client, fake, url) = start(vec![(500, "{}")]).await;
        let err = client
            .post_json(&url, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(err.outcome_unknown(), "{err}");
        assert_eq!(fake.seen.lock().unwrap().len(), 1, "not retried blindly");

        let (client, fake, url) = start(vec![(429, "{}"), (201, r#"{"id":"s"}"#)]).await;
        client
            .post_json(&url, &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(
            fake.seen.lock().unwrap().len(),
            2,
            "throttled: not processed"
        );
    }

    #[tokio::test]
    async fn patch_and_delete_are_retried() {
        let (client, fake, url) = start(vec![(503, "{}"), (200, "{}"), (502, ""), (204, "")]).await;
        let one = url.join("subscriptions/abc").unwrap();
        client
            .patch_json(&one, &serde_json::json!({"expirationDateTime": "x"}))
            .await
            .unwrap();
        client.delete(&one).await.unwrap();
        let methods: Vec<String> = fake
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0.clone())
            .collect();
        assert_eq!(methods, ["PATCH", "PATCH", "DELETE", "DELETE"]);
    }

    #[tokio::test]
    async fn errors_surface_graphs_message_and_name_the_permission() {
        let msg = "lifecycleNotificationUrl is a required property for subscription creation";
        let (client, _, url) = start(vec![
            (400, &graph_error("ValidationError", msg)),
            (403, &graph_error("Forbidden", "Insufficient privileges")),
            (
                404,
                &graph_error("ResourceNotFound", "no such subscription"),
            ),
        ])
        .await;
        let body = serde_json::json!({"clientState": "never-in-errors"});
        let bad = client.post_json(&url, &body).await.unwrap_err();
        assert!(bad.to_string().contains(msg), "{bad}");
        assert!(!bad.outcome_unknown());
        let denied = client.post_json(&url, &body).await.unwrap_err();
        assert!(
            denied
                .to_string()
                .contains("AiEnterpriseInteraction.Read.All"),
            "{denied}"
        );
        let gone = client
            .delete(&url.join("subscriptions/zz?secret=1").unwrap())
            .await
            .unwrap_err();
        assert_eq!(gone.status(), Some(404));
        for e in [bad, denied, gone] {
            let text = e.to_string();
            assert!(
                !text.contains("never-in-errors") && !text.contains("secret=1"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn foreign_urls_are_refused() {
        let (client, fake, _) = start(vec![]).await;
        let foreign = Url::parse("https://example.com/v1.0/subscriptions").unwrap();
        let err = client.delete(&foreign).await.unwrap_err();
        assert!(matches!(err, GraphError::ForeignUrl { .. }));
        assert!(fake.seen.lock().unwrap().is_empty());
    }
}
