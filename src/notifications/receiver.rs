//! The webhook receiver: an axum app on its own listen address (behind a TLS reverse proxy).
//!
//! - `?validationToken=...` on either URL: the handshake; answers 200 `text/plain` with the
//!   decoded token (Graph allows 10 s; this answers at once).
//! - A notification post: read within `read_timeout` and at most `max_body` bytes (413 beyond),
//!   checked (`payload`), queued durably, and only then answered 202. Graph allows 3 s; a check
//!   or queue write that takes longer answers 503 so Graph retries rather than us answering 202
//!   for something not yet durable.
//! - Anything refused gets a bare status and no body: the reason goes to the log, never to the
//!   caller.
//! - Connections (`serve`): HTTP/1.1 only (what the reverse proxy speaks), at most
//!   `max_connections` at once, each request head read within `header_timeout` (`axum::serve`
//!   has neither, so a slow or idle client could hold connections for ever).

use super::payload::{Rejection, Verifier};
use super::queue::NotificationQueue;
use crate::ops::metrics;
use axum::body::{to_bytes, Body};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Longest validation token echoed back (Graph's are far shorter).
const MAX_VALIDATION_TOKEN: usize = 4096;

/// Limits of the receiver.
#[derive(Clone, Copy, Debug)]
pub struct ReceiverLimits {
    pub max_body: usize,
    /// Reading the body, checking and queueing it: all inside this.
    pub deadline: Duration,
    /// A request head (also the next one on a kept-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        ReceiverLimits {
            max_body: 1024 * 1024,
            // Below Graph's 3 s, leaving time for the network.
            deadline: Duration::from_millis(2500),
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, within `limits`' connection limits. Requests
/// in flight at shutdown are answered (a cut one was never answered 202: Graph retries it).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ReceiverLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "notification receiver cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = permit;
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let finished = tokio::select! {
                result = conn.as_mut() => Some(result),
                () = shutdown.cancelled() => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "notification receiver connection ended with an error");
            }
        });
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Receiver {
    pub verifier: Arc<Verifier>,
    pub queue: NotificationQueue,
    /// Woken when items were queued, so the worker starts at once.
    pub wake: Arc<Notify>,
    pub limits: ReceiverLimits,
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// Paths: `/notifications` (notificationUrl) and `/lifecycle` (lifecycleNotificationUrl).
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route("/notifications", post(handle))
        .route("/lifecycle", post(handle))
        .with_state(receiver)
}

async fn handle(State(rx): State<Receiver>, Query(q): Query<Handshake>, req: Request) -> Response {
    if let Some(token) = q.validation_token {
        return handshake(token);
    }
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(rx.limits.deadline, accept(&rx, req.into_body())).await {
        Ok(Ok(n)) => {
            tracing::debug!(path, items = n, "notifications queued");
            rx.wake.notify_one();
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Err(refusal)) => refusal.into_response_logged(&path),
        Err(_) => {
            metrics::notification_refused("timeout");
            tracing::warn!(
                path,
                deadline_ms = rx.limits.deadline.as_millis() as u64,
                "notification post not queued in time; answered 503 so Graph retries"
            );
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

fn handshake(token: String) -> Response {
    if token.len() > MAX_VALIDATION_TOKEN || token.chars().any(char::is_control) {
        tracing::warn!("validation handshake refused: token too long or with control characters");
        return StatusCode::BAD_REQUEST.into_response();
    }
    tracing::info!("validation handshake answered");
    let mut resp = (StatusCode::OK, token).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Why a post was not queued.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("body larger than the limit or unreadable")]
    Body,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("queueing failed: {0}")]
    Queue(#[from] crate::state::StateError),
    #[error("checking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Refusal {
    fn into_response_logged(self, path: &str) -> Response {
        let status = match &self {
            Refusal::Body => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Rejected(Rejection::Token(_)) => StatusCode::UNAUTHORIZED,
            Refusal::Rejected(_) => StatusCode::BAD_REQUEST,
            // Not the caller's fault: a 5xx makes Graph retry later.
            Refusal::Queue(_) | Refusal::Task(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        metrics::notification_refused(match &self {
            Refusal::Body => "body_too_large",
            Refusal::Rejected(r) => r.reason(),
            Refusal::Queue(_) => "queue_unavailable",
            Refusal::Task(_) => "internal",
        });
        tracing::warn!(path, status = status.as_u16(), reason = %self, "notification post refused");
        status.into_response()
    }
}

async fn accept(rx: &Receiver, body: Body) -> Result<usize, Refusal> {
    let bytes = to_bytes(body, rx.limits.max_body)
        .await
        .map_err(|_| Refusal::Body)?;
    let verifier = rx.verifier.clone();
    let checked = tokio::task::spawn_blocking(move || verifier.check_post(&bytes)).await??;
    for dropped in &checked.dropped {
        tracing::warn!(reason = %dropped, "notification item dropped");
    }
    rx.queue
        .enqueue(&checked.accepted, chrono::Utc::now())
        .await?;
    let dropped: Vec<&'static str> = checked.dropped.iter().map(|p| p.reason()).collect();
    metrics::notification_post(checked.accepted.len(), &dropped);
    Ok(checked.accepted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifications::payload::tests::{change, post as body_of, token, verifier, STATE};
    use crate::state::testing;

    const PLAIN: &str = r#"{"id":"17","etag":"17","createdDateTime":"2024-11-15T20:16:41.008Z"}"#;

    async fn spawn() -> (String, NotificationQueue, tempfile::TempDir) {
        spawn_with(ReceiverLimits {
            max_body: 64 * 1024,
            ..Default::default()
        })
        .await
    }

    async fn spawn_with(limits: ReceiverLimits) -> (String, NotificationQueue, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let queue = NotificationQueue::new(testing::sqlite_in(dir.path()).await.unwrap());
        let rx = Receiver {
            verifier: Arc::new(verifier()),
            queue: queue.clone(),
            wake: Arc::new(Notify::new()),
            limits,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(rx);
        tokio::spawn(serve(listener, app, limits, CancellationToken::new()));
        (format!("http://{addr}"), queue, dir)
    }

    #[tokio::test]
    async fn handshake_echoes_the_decoded_token_on_both_urls() {
        let (base, _, _d) = spawn().await;
        let http = reqwest::Client::new();
        for path in ["notifications", "lifecycle"] {
            let resp = http
                .post(format!("{base}/{path}?validationToken=a%20b%3Cc%3E"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            assert_eq!(resp.text().await.unwrap(), "a b<c>");
        }
    }

    async fn post_genuine(base: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{base}/notifications"))
            .body(body_of(vec![change(STATE, PLAIN)], vec![token()]))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_genuine_post_is_queued_before_202() {
        let (base, queue, _d) = spawn().await;
        let resp = post_genuine(&base).await;
        assert_eq!(resp.status(), 202);
        assert_eq!(queue.pending().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn hostile_posts_get_a_bare_status_and_queue_nothing() {
        let (base, queue, _d) = spawn().await;
        let http = reqwest::Client::new();
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (body_of(vec![change("wrong", PLAIN)], vec![token()]), 400),
            (body_of(vec![change(STATE, PLAIN)], vec![]), 401),
            (b"{not json".to_vec(), 400),
            (vec![b' '; 65 * 1024], 413),
        ];
        for (body, status) in cases {
            let resp = http
                .post(format!("{base}/notifications"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
            assert!(
                resp.text().await.unwrap().is_empty(),
                "no detail to the caller"
            );
        }
        assert_eq!(queue.pending().await.unwrap(), 0);
    }

    /// A client that opens connections and never finishes a request head (or never starts
    /// one): each is closed after `header_timeout`, and while `max_connections` are held a genuine post waits for a
    /// slot instead of the receiver taking connections without bound.
    #[tokio::test]
    async fn slow_clients_are_cut_off_and_connections_are_capped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = ReceiverLimits {
            header_timeout: Duration::from_millis(300),
            max_connections: 2,
            ..Default::default()
        };
        let (base, queue, _d) = spawn_with(limits).await;
        let addr = base.trim_start_matches("http://").to_owned();
        let mut slow = Vec::new();
        // One sends half a head, the other nothing at all.
        for head in [&b"POST /notifications HTTP/1.1\r\nHost: x\r\n"[..], b""] {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(head).await.unwrap();
            slow.push(s);
        }
        let started = std::time::Instant::now();
        let resp = post_genuine(&base).await;
        assert_eq!(resp.status(), 202);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "the post waited for a slot: {:?}",
            started.elapsed()
        );
        assert_eq!(queue.pending().await.unwrap(), 1);
        for mut s in slow {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "the slow connection was closed");
        }
    }
}
