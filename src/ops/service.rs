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
}

impl ServiceError {
    /// sysexits, as `AppError::exit_code`: 69 for a port or signal we cannot have.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServiceError::App(e) => e.exit_code(),
            ServiceError::Http(_) | ServiceError::Signal(_) => 69,
            ServiceError::Metrics(_) => 70,
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
    start_http(&app, &liveness, &ready, &tasks).await?;
    start_watchdog(&app, &liveness, &tasks);
    let (reload_tx, mut reload_rx) = mpsc::channel(4);
    reload::spawn_sighup(config_path, reload_tx, tasks.clone()).map_err(ServiceError::Signal)?;

    ready.store(true, Ordering::SeqCst);
    metrics::set_ready(true);
    systemd::ready("started; first pass running");
    tracing::info!("service ready");

    let deadline = app.config.service.shutdown_timeout;
    let (state, owner) = (app.state.clone(), app.scheduler.owner().to_string());
    let grace = deadline.saturating_sub(LEASE_RELEASE_BUDGET);
    let looped = with_deadline(
        daemon_loop(&mut app, &cancel, &mut reload_rx, &liveness),
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

/// Passes every `export.poll_interval` until cancelled; reloads apply between passes.
async fn daemon_loop(
    app: &mut App,
    cancel: &CancellationToken,
    reloads: &mut mpsc::Receiver<Config>,
    liveness: &Liveness,
) -> Result<(), AppError> {
    let mut last_discovery = None;
    while !cancel.is_cancelled() {
        liveness.set_idle(false);
        let report = app.daemon_pass(&mut last_discovery, cancel).await?;
        if cancel.is_cancelled() {
            break;
        }
        after_pass(app, &report).await;
        liveness.set_idle(true);
        let next = Instant::now() + app.config.export.poll_interval;
        wait_for_next_pass(app, next, cancel, reloads).await;
    }
    Ok(())
}

/// Sleeps until `next`; a reload that arrives meanwhile is applied and moves `next` if the
/// poll interval changed.
async fn wait_for_next_pass(
    app: &mut App,
    mut next: Instant,
    cancel: &CancellationToken,
    reloads: &mut mpsc::Receiver<Config>,
) {
    let pass_end = next - app.config.export.poll_interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => return,
            Some(new) = reloads.recv() => {
                let groups = crate::compliance::daemon::resolve_groups(&app.graph, &new.retention);
                if let Err(e) = groups.await {
                    tracing::error!(error = %e, "reload refused: the retention rules name a group that cannot be listed; keeping the running configuration");
                    continue;
                }
                reload::apply(app, new);
                next = pass_end + app.config.export.poll_interval;
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
    let behind_after = behind_threshold(export.poll_interval, export.settle_lag);
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
