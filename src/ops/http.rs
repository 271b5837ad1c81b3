//! The operators' HTTP listener (`metrics.listen`): `/metrics` (Prometheus text), `/healthz`
//! (the process and its scheduler are alive: for restarts) and `/readyz` (started, and the state
//! database and archive store answer now: for load balancers and alerts).
//!
//! It serves no archived content and takes no input, so it needs no authentication; bind it to
//! loopback or a management network.

use crate::archive::ArchiveStore;
use crate::graph::GraphClient;
use crate::ops::metrics::Metrics;
use crate::ops::systemd::{self, Liveness};
use crate::state::StateDb;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A readiness probe waits this long for the database and the store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "metrics.listen: cannot listen on {addr}: {source} (is another process using the \
         port? choose another address or remove metrics.listen)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers look at.
#[derive(Clone)]
pub struct Probes {
    pub metrics: Metrics,
    pub graph: GraphClient,
    pub state: StateDb,
    pub store: Arc<dyn ArchiveStore>,
    pub liveness: Arc<Liveness>,
    pub ready: Arc<AtomicBool>,
    /// With change notifications: true while their receiver listens.
    pub receiver_up: Option<Arc<AtomicBool>>,
}

/// Binds first (so a taken port fails the start, before systemd hears READY=1).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

/// Serves until `cancel`.
pub fn spawn(listener: TcpListener, probes: Probes, cancel: CancellationToken) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(metrics.addr = %addr, "metrics endpoint listening (/metrics, /healthz, /readyz)");
    }
    tokio::spawn(async move {
        let served = axum::serve(listener, router(probes))
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    })
}

async fn metrics(State(p): State<Probes>) -> Response {
    let body = p.metrics.render(&p.graph.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz(State(p): State<Probes>) -> Response {
    let count = systemd::progress_count(p.graph.stats().requests);
    let stalled = p.liveness.stalled_for(count, Instant::now());
    if stalled > p.liveness.limit() {
        let text = format!(
            "stalled: no Graph request, store write or committed window for {}s\n",
            stalled.as_secs()
        );
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(p): State<Probes>) -> Response {
    if !p.ready.load(Ordering::SeqCst) {
        return unavailable("starting: migrations and store checks not finished");
    }
    if p.receiver_up
        .as_ref()
        .is_some_and(|up| !up.load(Ordering::SeqCst))
    {
        return unavailable("change-notification receiver not listening");
    }
    match tokio::time::timeout(PROBE_TIMEOUT, p.state.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return unavailable(&format!("state database: {e}")),
        Err(_) => return unavailable("state database: no answer within 5s"),
    }
    match tokio::time::timeout(PROBE_TIMEOUT, p.store.check()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable("archive store: no answer within 5s"),
    }
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {why}\n"),
    )
        .into_response()
}
