//! A faithful Microsoft Graph simulator over real HTTP: the project's test bed, benchmark
//! load and demo (`m365-archiver sim`).
//!
//! It imitates what Microsoft documents (the seeds and `docs/graph-notes.md`), not what a
//! client expects, so that it catches client bugs: the identity platform's token endpoint
//! (client secret and certificate assertions, AADSTS errors), users with Copilot licences,
//! a pilot group, deleted users, and `getAllEnterpriseInteractions` with the documented
//! `$filter`/`$top`/paging, unordered results, ids shared across users, late records and
//! non-canonical bytes. Token-bucket throttling with fractional Retry-After and injected
//! faults make it hostile on demand; `/_sim` lists the ground truth and steers it all.
//!
//! The module is independent of the archiver by design: it imports nothing else from this
//! crate.
//!
//! Layout: `config` (settings), `data` (tenant and record stores), `render` + `json` +
//! `text` (record bytes), `odata` (query options, skiptokens), `page` (collection pages),
//! `auth` (token endpoint), `graph` (routes and the request gate), `copilot` (the export
//! source), `throttle`, `faults`, `stats`, `control` (`/_sim`). A new source adds a
//! store in `data`, a module like `copilot`, its routes in `graph` and a ground-truth lister.
//! Teams: `teams_data` (chats, teams, channels, meetings and their versions), `messages`
//! (chatMessage bytes), `message_filter`, `chats` (getAllMessages and team listings),
//! `meetings` (transcripts, recordings, streamed content with Range), `teams_control`
//! (message changes while an export runs, Teams ground truth).

mod auth;
mod chats;
mod config;
mod control;
mod copilot;
mod data;
mod error;
mod faults;
mod graph;
mod json;
mod meetings;
mod message_filter;
mod messages;
mod notify;
mod notify_control;
/// Public so integration tests can craft genuine (and then tampered) notification posts.
pub mod notify_crypto;
mod odata;
mod page;
mod render;
mod stats;
mod subscriptions;
mod teams_control;
mod teams_data;
mod text;
mod throttle;

#[cfg(test)]
mod notify_tests;
#[cfg(test)]
mod teams_tests;
#[cfg(test)]
mod tests;

pub use config::{FaultConfig, SimConfig, SimRateLimits, TeamsSimConfig};
pub use data::COPILOT_SKU;
pub use notify::NotificationSimConfig;

use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use data::{Clock, Tenant};
use faults::Faults;
use stats::Stats;
use throttle::Throttle;

/// How long `SimHandle::shutdown` waits for open connections before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the simulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    #[error("invalid simulator client certificate: {0}")]
    Certificate(String),
    #[error("simulator cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("simulator tenant generation failed: {0}")]
    Generate(String),
}

/// State shared by every handler.
pub(crate) struct SimState {
    pub seed: u64,
    pub tenant_id: String,
    pub max_top: u32,
    pub tenant: RwLock<Tenant>,
    pub auth: auth::Auth,
    pub throttle: Mutex<Throttle>,
    pub faults: Mutex<Faults>,
    pub stats: Mutex<Stats>,
    /// Teams settings the routes need at request time (billing model, `$top` cap).
    pub teams: config::TeamsSimConfig,
    /// sha256 of generated recordings by seed, computed once for the ground truth.
    pub content_sha: Mutex<std::collections::HashMap<u64, String>>,
    /// Change-notification subscriptions and their delivery.
    pub notifications: notify::Notifications,
}

pub(crate) use crate::lock;

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulator; dropping it also stops the server.
#[derive(Debug)]
pub struct SimHandle {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SimError>>,
}

impl SimHandle {
    /// `http://{addr}/v1.0`, the Graph base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    /// `http://{addr}`, the identity platform authority.
    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server, waiting a little for open responses.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may already have stopped; then nobody listens.
            let _ = tx.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(Ok(Ok(()))) => tracing::debug!(addr = %self.addr, "simulator stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "simulator stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                    "simulator connections outlived the grace period; aborting them"
                );
                self.task.abort();
            }
        }
    }
}

/// Starts a simulator on `listen` (port 0 picks a free port) in the background.
pub async fn spawn(cfg: SimConfig, listen: SocketAddr) -> Result<SimHandle, SimError> {
    let state = build_state(cfg).await?;
    let listener = bind(listen).await?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, state, async {
        // A dropped handle (sender gone) stops the server too.
        let _ = rx.await;
    }));
    tracing::info!(%addr, "simulator listening");
    Ok(SimHandle {
        addr,
        shutdown: Some(tx),
        task,
    })
}

/// Runs a simulator on `listen` until `shutdown` completes (for `m365-archiver sim`).
pub async fn serve(
    cfg: SimConfig,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let state = build_state(cfg).await?;
    let listener = bind(listen).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "simulator listening");
    }
    run(listener, state, shutdown).await
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })
}

async fn run(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(SimError::Serve)
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(auth::token_endpoint))
        .nest("/_sim", control::router())
        .merge(graph::router(state.clone()))
        .with_state(state)
}

/// Validates the config and generates the tenant (off the async threads: a large tenant
/// takes a while).
async fn build_state(cfg: SimConfig) -> Result<Arc<SimState>, SimError> {
    cfg.validate().map_err(SimError::Config)?;
    let auth = auth::Auth::new(&cfg)?;
    let started = Utc::now();
    let anchor = cfg.anchor.unwrap_or_else(|| data::default_anchor(started));
    let clock = Clock {
        anchor_ms: anchor.timestamp_millis(),
        started_ms: started.timestamp_millis(),
    };
    let gen_cfg = cfg.clone();
    let tenant = tokio::task::spawn_blocking(move || Tenant::generate(&gen_cfg, clock))
        .await
        .map_err(|e| SimError::Generate(e.to_string()))?;
    log_tenant(&tenant, anchor);
    let now = Instant::now();
    Ok(Arc::new(SimState {
        seed: cfg.seed,
        tenant_id: cfg.tenant_id.clone(),
        max_top: cfg.max_top,
        tenant: RwLock::new(tenant),
        auth,
        throttle: Mutex::new(Throttle::new(cfg.rate_limits.clone(), now)),
        faults: Mutex::new(Faults::new(cfg.faults.clone(), cfg.seed)),
        stats: Mutex::new(Stats::default()),
        teams: cfg.teams.clone(),
        content_sha: Mutex::new(std::collections::HashMap::new()),
        notifications: notify::Notifications::new(&cfg.notifications, cfg.seed, &cfg.client_id)?,
    }))
}

fn log_tenant(tenant: &Tenant, anchor: DateTime<Utc>) {
    let records: usize = tenant.copilot.per_user.iter().map(|v| v.len()).sum();
    let t = &tenant.teams;
    let chat_messages: usize = t.chats.iter().map(|c| c.messages.len()).sum();
    let channel_messages: usize = t.channels.iter().map(|c| c.messages.len()).sum();
    tracing::info!(
        users = tenant.users.len(),
        copilot.records = records,
        chats = t.chats.len(),
        chats.messages = chat_messages,
        teams = t.teams.len(),
        channels.messages = channel_messages,
        meetings = t.meetings.len(),
        anchor = %anchor,
        "simulator tenant generated"
    );
}
