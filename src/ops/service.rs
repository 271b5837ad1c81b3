//! The daemon (`run`) as a service: readiness and status for systemd, a watchdog that follows
//! the scheduler, the metrics listener, SIGHUP reloads, a summary line per pass, and a shutdown
//! that always ends within `service.shutdown_timeout`.
//!
//! Shutdown: SIGTERM/SIGINT cancel the token (main.rs). The scheduler stops taking windows and
//! drops the ones in flight without advancing their checkpoints (the checkpoint moves only in
//! the window's final transaction). If something does not return in time (a Graph request
//! inside its retries, a hung database call), the loop is dropped at the deadline; that is safe
//! for the same reason. Leases are then released, bounded in time too: a lease left behind
//! only delays another replica by `export.lease_ttl`.

use crate::app::{App, AppError};
use crate::config::Config;
use crate::notifications::runtime::{behind_interval, Notifications, RuntimeError};
use crate::ops::http::{self, HttpError, Probes};
use crate::ops::metrics::{self, Metrics, MetricsError};
use crate::ops::overview::{behind_threshold, Overview};
use crate::ops::reload;
use crate::ops::systemd::{self, Liveness};
use crate::scheduler::PassReport;
use crate::state::StateDb;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest wait for releasing leases at shutdown, taken out of the shutdown deadline.
const LEASE_RELEASE_BUDGET: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Notifications(#[from] RuntimeError),
}

impl ServiceError {
    /// sysexits, as `AppError::exit_code`: 69 for a port or signal we cannot have.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServiceError::App(e) => e.exit_code(),
            ServiceError::Http(_) | ServiceError::Signal(_) => 69,
            ServiceError::Metrics(_) => 70,
            ServiceError::Notifications(e) => e.exit_code(),
        }
    }
}

/// Runs the daemon until `cancel`, then stops within the configured deadline.
/// `config_path` is re-read on SIGHUP.
pub async fn run(
    mut app: App,
    config_path: Option<PathBuf>,
    cancel: CancellationToken,
) -> Result<(), ServiceError> {
    let stall_limit = systemd::watchdog_interval().unwrap_or(systemd::DEFAULT_STALL_LIMIT);
    let liveness = Arc::new(Liveness::new(stall_limit));
    let ready = Arc::new(AtomicBool::new(false));
    let tasks = cancel.child_token();
    let receiver_up = Arc::new(AtomicBool::new(false));
    let probed = app
        .config
        .notifications
        .is_some()
        .then(|| receiver_up.clone());
    start_http(&app, &liveness, &ready, probed, &tasks).await?;
    start_watchdog(&app, &liveness, &tasks);
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    reload::spawn_sighup(config_path, reload_tx, tasks.clone()).map_err(ServiceError::Signal)?;
    let notifications = Notifications::start(&app, &tasks, receiver_up).await?;

    ready.store(true, Ordering::SeqCst);
    metrics::set_ready(true);
    metrics::budget_share(&app.graph.budget_share());
    systemd::ready("started; first pass running");
    tracing::info!("service ready");

    let deadline = app.config.service.shutdown_timeout;
    let (state, owner) = (app.state.clone(), app.scheduler.owner().to_string());
    let replicas = app.replicas.clone();
    let grace = deadline.saturating_sub(LEASE_RELEASE_BUDGET);
    let looped = with_deadline(
        daemon_loop(
            &mut app,
            &cancel,
            &mut reload_rx,
            &liveness,
            notifications.as_ref(),
        ),
        &cancel,
        grace,
    )
    .await;
    let outcome = looped.unwrap_or_else(|| {
        tracing::warn!(
            deadline_s = deadline.as_secs(),
            "shutdown deadline reached with work still in flight; abandoning it (no checkpoint \
             moves for an unfinished window, so the next start redoes it)"
        );
        Ok(())
    });
    systemd::stopping("stopping: releasing leases");
    metrics::set_ready(false);
    release_leases(&state, &owner).await;
    replicas.leave().await;
    tasks.cancel();
    outcome.map_err(ServiceError::from)
}

/// Runs `work` to its end, or drops it `grace` after `cancel` fires, whichever comes first;
/// None when it was dropped.
pub async fn with_deadline<F: std::future::Future>(
    work: F,
    cancel: &CancellationToken,
    grace: Duration,
) -> Option<F::Output> {
    let expired = async {
        cancel.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        out = work => Some(out),
        _ = expired => None,
    }
}

async fn release_leases(state: &StateDb, owner: &str) {
    match tokio::time::timeout(LEASE_RELEASE_BUDGET, state.release_all_leases(owner)).await {
        Ok(Ok(n)) => tracing::info!(leases_released = n, "stopped"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stopped; could not release leases (they expire after export.lease_ttl)")
        }
        Err(_) => tracing::warn!(
            "stopped; releasing leases timed out (they expire after export.lease_ttl)"
        ),
    }
}

async fn start_http(
    app: &App,
    liveness: &Arc<Liveness>,
    ready: &Arc<AtomicBool>,
    receiver_up: Option<Arc<AtomicBool>>,
    tasks: &CancellationToken,
) -> Result<(), ServiceError> {
    let Some(addr) = app.config.metrics.listen else {
        return Ok(());
    };
    let listener = http::bind(addr).await?;
    let probes = Probes {
        metrics: Metrics::install()?,
        graph: app.graph.clone(),
        state: app.state.clone(),
        store: app.store.clone(),
        liveness: liveness.clone(),
        ready: ready.clone(),
        receiver_up,
    };
    http::spawn(listener, probes, tasks.clone());
    Ok(())
}

fn start_watchdog(app: &App, liveness: &Arc<Liveness>, tasks: &CancellationToken) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    let graph = app.graph.clone();
    let count = move || systemd::progress_count(graph.stats().requests);
    systemd::spawn_watchdog(interval, liveness.clone(), count, tasks.clone());
    tracing::info!(watchdog_s = interval.as_secs(), "systemd watchdog enabled");
}

/// A pass starts every `export.poll_interval` (at once after one that overran) until
/// cancelled: the poll schedule's staleness bound counts on that cadence (`scheduler::due`).
/// Reloads apply between passes; with change notifications, catch-up passes run in between as
/// they are asked for.
async fn daemon_loop(
    app: &mut App,
    cancel: &CancellationToken,
    reloads: &mut mpsc::Receiver<Config>,
    liveness: &Liveness,
    notifications: Option<&Notifications>,
) -> Result<(), AppError> {
    let mut last_discovery = None;
    // The first pass does the backfill: long by nature, not a sign of falling behind.
    let mut first = true;
    while !cancel.is_cancelled() {
        liveness.set_idle(false);
        let started = Instant::now();
        let report = match notifications {
            Some(n) => n.daemon_pass(app, &mut last_discovery, cancel).await?,
            None => app.daemon_pass(&mut last_discovery, cancel).await?,
        };
        if cancel.is_cancelled() {
            break;
        }
        after_pass(app, &report).await;
        liveness.set_idle(true);
        let mut next = started + app.config.export.poll_interval;
        if !std::mem::take(&mut first) {
            warn_if_overran(started, app.config.export.poll_interval);
        }
        while wait_for_next_pass(app, &mut next, cancel, reloads, notifications).await {
            liveness.set_idle(false);
            if let Some(n) = notifications {
                n.catch_up_pass(app, cancel).await;
            }
            liveness.set_idle(true);
        }
    }
    Ok(())
}

/// Resolves when a catch-up pass is due; never without notifications.
async fn catch_up_due(notifications: Option<&Notifications>) {
    match notifications {
        Some(n) => n.catch_up_requested().await,
        None => std::future::pending().await,
    }
}

/// A pass longer than the poll interval delays the next one, and with it the scopes that come
/// due meanwhile: the staleness bound then stretches by the overrun.
fn warn_if_overran(started: Instant, interval: Duration) {
    let took = started.elapsed();
    if took > interval {
        tracing::warn!(
            pass_s = took.as_secs(),
            poll_interval_s = interval.as_secs(),
            "the pass took longer than export.poll_interval; scopes that came due meanwhile wait \
             for the next pass, beyond export.max_staleness by up to the overrun (raise \
             export.concurrency or the rate budget, or lengthen export.poll_interval)"
        );
    }
}

/// Sleeps until `next`; a reload that arrives meanwhile is applied and moves `next` if the
/// poll interval changed. True when it woke early for a catch-up pass.
async fn wait_for_next_pass(
    app: &mut App,
    next: &mut Instant,
    cancel: &CancellationToken,
    reloads: &mut mpsc::Receiver<Config>,
    notifications: Option<&Notifications>,
) -> bool {
    let pass_start = *next - app.config.export.poll_interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep_until((*next).into()) => return false,
            _ = catch_up_due(notifications) => return true,
            Some(new) = reloads.recv() => {
                let groups = crate::compliance::daemon::resolve_groups(&app.graph, &new.retention);
                if let Err(e) = groups.await {
                    tracing::error!(error = %e, "reload refused: the retention rules name a group that cannot be listed; keeping the running configuration");
                    continue;
                }
                reload::apply(app, new);
                *next = pass_start + app.config.export.poll_interval;
            }
        }
    }
}

/// The summary line, `STATUS=` and the scope gauges, from the checkpoints after the pass.
async fn after_pass(app: &App, report: &PassReport) {
    let rows = match app.state.status().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read checkpoints for the pass summary");
            return;
        }
    };
    let export = &app.config.export;
    let behind_after = behind_threshold(behind_interval(&app.config), export.settle_lag);
    let overview = Overview::build(&rows, chrono::Utc::now(), behind_after);
    let summary = overview.summary();
    metrics::pass_done(report.ok(), &overview);
    systemd::status(&summary);
    log_summary(&overview, report, &summary);
}

fn log_summary(o: &Overview, report: &PassReport, summary: &str) {
    let current = o.is_current() && report.ok();
    macro_rules! summary_line {
        ($level:expr, $verdict:literal) => {
            tracing::event!(
                $level,
                scopes.current = o.current,
                scopes.behind = o.behind,
                scopes.failing = o.failing,
                lag.max_s = o.max_lag_seconds.unwrap_or(0),
                records.total = o.records,
                pass.records_new = report.totals.new,
                pass.failed = report.failures.len(),
                pass.elapsed_ms = report.elapsed_ms,
                "{}: {summary}",
                $verdict
            )
        };
    }
    // Warn when not current, so that a journal filtered to warnings shows it.
    if current {
        summary_line!(tracing::Level::INFO, "archive current");
    } else {
        summary_line!(tracing::Level::WARN, "archive NOT current");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_that_ignores_cancellation_is_dropped_at_the_deadline() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let out = with_deadline(
            std::future::pending::<()>(),
            &cancel,
            Duration::from_millis(200),
        )
        .await;
        assert!(out.is_none());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn finished_work_is_returned_and_no_deadline_runs_without_cancel() {
        let cancel = CancellationToken::new();
        let out = with_deadline(
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                7
            },
            &cancel,
            Duration::ZERO,
        )
        .await;
        assert_eq!(out, Some(7));
    }
}
