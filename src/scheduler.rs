//! Scheduler: which (scope, source) pairs to export, in which windows, by whom.
//!
//! Windows come from the checkpoint: `(watermark - overlap, min(watermark + max_window,
//! now - settle_lag))`, exclusive at both ends because Graph documents only `gt`/`lt`; the
//! overlap catches a record sitting exactly on the previous window's end. The watermark moves
//! only when a whole window is archived. A periodic look-back re-sweeps
//! `(watermark - lookback, watermark)` to catch records Graph shows late. A lease per
//! (source, scope) keeps two processes sharing one database off the same work. The daemon's
//! passes poll only the scopes their schedule makes due (`due`: activity-based intervals under
//! `export.max_staleness`); `run --once` and catch-up passes poll every scope they cover.

mod claims;
pub mod due;
#[cfg(test)]
mod end_tests;

use crate::config::ExportConfig;
use crate::graph::GraphClient;
use crate::ingest::{earliest, Ingestor, WindowPlan, WindowReport};
use crate::lock;
use crate::sources::{Scope, ScopeKind, Source, SourceKind, Window};
use crate::state::{Checkpoint, PollSchedule, ScopeEnd, ScopeRow, StateDb, StateError};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use claims::{work_key, LeaseClaims, Prefetched};
use futures::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which (source, scope) pairs a pass covers.
pub type PassFilter<'a> = &'a (dyn Fn(SourceKind, &ScopeRow) -> bool + Sync);

#[derive(Clone)]
pub struct Scheduler {
    export: ExportConfig,
    graph: GraphClient,
    state: StateDb,
    ingest: Ingestor,
    sources: Vec<Arc<dyn Source>>,
    /// Identifies this process in leases.
    owner: String,
}

/// The outcome of one (scope, source) in a pass.
#[derive(Debug, Clone, serde::Serialize)]
pub enum ScopeOutcome {
    Done {
        windows: u64,
        report: WindowTotals,
    },
    LeasedElsewhere,
    Cancelled {
        windows: u64,
        report: WindowTotals,
    },
    Failed {
        error: String,
        report: WindowTotals,
    },
    /// A departed scope whose resource Graph no longer has (404): nothing is left to export,
    /// so its final sweep ends here instead of failing on every pass.
    Vanished {
        error: String,
        report: WindowTotals,
    },
}

impl ScopeOutcome {
    fn totals(&self) -> WindowTotals {
        match self {
            ScopeOutcome::Done { report, .. }
            | ScopeOutcome::Cancelled { report, .. }
            | ScopeOutcome::Failed { report, .. }
            | ScopeOutcome::Vanished { report, .. } => *report,
            ScopeOutcome::LeasedElsewhere => WindowTotals::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LeaseMode {
    TryOnce,
    Wait,
}

/// Renews a lease every third of its lifetime; on failure cancels the export it guards.
async fn heartbeat(
    state: StateDb,
    work_key: String,
    owner: String,
    ttl: Duration,
    guarded: CancellationToken,
    lost: Arc<std::sync::OnceLock<String>>,
) {
    let reason = loop {
        tokio::time::sleep(ttl / 3).await;
        match state.renew_lease(&work_key, &owner, ttl, Utc::now()).await {
            Ok(true) => {}
            // Also what follows the last window's commit, which releases the lease: the export
            // says which it was (`run_scope`), so nothing is logged here.
            Ok(false) => break "another process holds it now".to_owned(),
            Err(e) => break format!("cannot renew it: {e}"),
        }
    };
    tracing::debug!(work_key = %work_key, reason = %reason, "lease not renewed; stopping this export");
    let _ = lost.set(reason);
    guarded.cancel();
}

/// Runs `work` unless `cancel` fires first. Biased: a window that has finished is never taken
/// for cancelled. The last window's commit releases the scope's lease, so a heartbeat right
/// after it finds no lease and cancels the scope, possibly before the export is polled again;
/// unbiased, that completed scope was then reported failed ("lease lost").
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        done = work => Some(done),
        _ = cancel.cancelled() => None,
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct WindowTotals {
    pub windows: u64,
    pub pages: u64,
    pub records: u64,
    pub new: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_new: Option<DateTime<Utc>>,
}

impl WindowTotals {
    fn add(&mut self, r: &WindowReport) {
        self.windows += 1;
        self.pages += r.pages;
        self.records += r.records;
        self.new += r.new;
        self.duplicates += r.duplicates;
        self.quarantined += r.quarantined;
        self.earliest_new = earliest(self.earliest_new, r.earliest_new);
    }
}

/// A scope whose export in this pass stored versions never archived before.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FoundNew {
    pub source: SourceKind,
    pub scope_id: String,
    pub new: u64,
    /// The earliest `createdDateTime` among them (None if none had one).
    pub earliest: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScopeFailure {
    pub source: String,
    pub scope_id: String,
    pub label: Option<String>,
    pub error: String,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PassReport {
    pub scopes: u64,
    pub succeeded: u64,
    pub leased_elsewhere: u64,
    pub cancelled: u64,
    pub failures: Vec<ScopeFailure>,
    pub totals: WindowTotals,
    pub elapsed_ms: u64,
    /// Active (source, scope) pairs the schedule left for a later pass; 0 in a full pass.
    pub not_due: u64,
    /// The scopes that stored new versions (for the notification gap check; not printed).
    #[serde(skip)]
    pub found_new: Vec<FoundNew>,
}

impl PassReport {
    /// Every scope was exported: none failed, none was cut short, none left to another process.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.cancelled == 0 && self.leased_elsewhere == 0
    }

    /// Adds a later pass's report; `again` are the (source, scope) pairs both passes had, whose
    /// outcome is the later one's.
    fn absorb(&mut self, later: PassReport, again: &HashSet<(String, String)>) {
        let failed = self.failures.len();
        (self.failures).retain(|f| !again.contains(&(f.source.clone(), f.scope_id.clone())));
        let failed_before = (failed - self.failures.len()) as u64;
        let twice = again.len() as u64;
        self.scopes = (self.scopes + later.scopes).saturating_sub(twice);
        self.succeeded =
            (self.succeeded + later.succeeded).saturating_sub(twice.saturating_sub(failed_before));
        self.leased_elsewhere += later.leased_elsewhere;
        self.cancelled += later.cancelled;
        self.failures.extend(later.failures);
        merge(&mut self.totals, &later.totals);
        self.elapsed_ms = self.elapsed_ms.max(later.elapsed_ms);
        self.not_due += later.not_due;
        self.found_new.extend(later.found_new);
    }
}

/// When a pass began: the instant for its duration, the wall clock for what it covers.
#[derive(Clone, Copy, Debug)]
pub struct PassClock((Instant, DateTime<Utc>));

impl PassClock {
    pub fn now() -> PassClock {
        PassClock((Instant::now(), Utc::now()))
    }
}

/// Plans the windows for one (scope, source) now. Pure, so the rules are unit-tested.
pub fn plan_windows(
    cp: Option<&Checkpoint>,
    cfg: &ExportConfig,
    now: DateTime<Utc>,
) -> Vec<WindowPlan> {
    let overlap = chrono_of(cfg.overlap);
    let horizon = now - chrono_of(cfg.settle_lag);
    let mut mark = cp.and_then(|c| c.watermark).unwrap_or(cfg.start);
    let mut plans = Vec::new();
    while mark < horizon {
        let end = (mark + chrono_of(cfg.max_window)).min(horizon);
        plans.push(WindowPlan {
            window: Window {
                start: mark - overlap,
                end,
            },
            advance_to: Some(end),
            lookback_done_at: None,
            end: None,
        });
        mark = end;
    }
    if cfg.lookback.is_zero() || mark <= cfg.start || !lookback_due(cp, cfg, now) {
        return plans;
    }
    let start = (mark - chrono_of(cfg.lookback)).max(cfg.start) - overlap;
    match plans.first() {
        // This pass's catch-up already sweeps the look-back span: record it as done.
        Some(first) if first.window.start <= start => {
            if let Some(last) = plans.last_mut() {
                last.lookback_done_at = Some(now);
            }
        }
        _ => plans.push(WindowPlan {
            window: Window { start, end: mark },
            advance_to: None,
            lookback_done_at: Some(now),
            end: None,
        }),
    }
    plans
}

fn lookback_due(cp: Option<&Checkpoint>, cfg: &ExportConfig, now: DateTime<Utc>) -> bool {
    match cp.and_then(|c| c.last_lookback_at) {
        None => true,
        Some(at) => now - at >= chrono_of(cfg.lookback_interval),
    }
}

fn chrono_of(d: Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

impl Scheduler {
    pub fn new(
        export: ExportConfig,
        graph: GraphClient,
        state: StateDb,
        ingest: Ingestor,
        sources: Vec<Arc<dyn Source>>,
    ) -> Self {
        let owner = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &uuid::Uuid::new_v4().to_string()[..8]
        );
        Scheduler {
            export,
            graph,
            state,
            ingest,
            sources,
            owner,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn ingest(&self) -> &Ingestor {
        &self.ingest
    }

    /// Replaces the schedule (SIGHUP reload, `ops::reload`); takes effect from the next pass.
    pub fn set_export(&mut self, export: ExportConfig) {
        self.export = export;
    }

    /// One pass over every active scope and every configured source. With `wait_for_leases`
    /// (`run --once`), scopes another process was exporting are taken again once that process
    /// lets go (or its lease expires), so the pass really covers every scope.
    pub async fn run_pass(
        &self,
        cancel: &CancellationToken,
        wait_for_leases: bool,
    ) -> Result<PassReport, StateError> {
        self.run_pass_begun(cancel, wait_for_leases, PassClock::now())
            .await
    }

    /// As `run_pass`, for a pass asked for at `begun` (before discovery, which may wait for a
    /// share of the rate budget): a scope another replica exported since then is current and
    /// is not asked again for the few seconds in between.
    pub async fn run_pass_begun(
        &self,
        cancel: &CancellationToken,
        wait_for_leases: bool,
        begun: PassClock,
    ) -> Result<PassReport, StateError> {
        self.run_pass_begun_where(cancel, wait_for_leases, begun, &|_, _| true)
            .await
    }

    async fn run_pass_begun_where(
        &self,
        cancel: &CancellationToken,
        wait_for_leases: bool,
        begun: PassClock,
        keep: PassFilter<'_>,
    ) -> Result<PassReport, StateError> {
        let work = self.work_items().await?;
        let report = self
            .run_work(work, keep, cancel, wait_for_leases, begun.0)
            .await?;
        log_pass(&report);
        Ok(report)
    }

    /// One pass over every scope while `discovery` runs: the scopes the state knows are
    /// exported beside it, then the scopes it added and those it found gone meanwhile (their
    /// final sweep, which also settles one whose export failed as not found while it was still
    /// listed). A replica set that discovered first left each replica's share of the budget
    /// unused for the length of its discovery. Discovery's outcome is returned as it came.
    pub async fn run_pass_beside<T, E>(
        &self,
        cancel: &CancellationToken,
        begun: PassClock,
        discovery: impl std::future::Future<Output = Result<T, E>>,
    ) -> (Result<T, E>, Result<PassReport, StateError>) {
        let known = std::sync::Mutex::new(HashMap::new());
        let note = |source: SourceKind, row: &ScopeRow| {
            lock(&known).insert((source, row.id.clone()), row.gone_at.is_some());
            true
        };
        let (discovered, first) = tokio::join!(
            discovery,
            self.run_pass_begun_where(cancel, true, begun, &note)
        );
        let mut report = match first {
            Ok(report) if discovered.is_ok() && !cancel.is_cancelled() => report,
            other => return (discovered, other),
        };
        let known = known.into_inner().unwrap_or_else(|p| p.into_inner());
        let again = std::sync::Mutex::new(HashSet::new());
        let after_discovery =
            |source: SourceKind, row: &ScopeRow| match known.get(&(source, row.id.clone())) {
                None => true,
                Some(&was_gone) => {
                    let newly_gone = !was_gone && row.gone_at.is_some();
                    if newly_gone {
                        lock(&again).insert((source.to_string(), row.id.clone()));
                    }
                    newly_gone
                }
            };
        let second = self
            .run_pass_begun_where(cancel, true, begun, &after_discovery)
            .await;
        match second {
            Ok(second) => {
                report.absorb(
                    second,
                    &again.into_inner().unwrap_or_else(|p| p.into_inner()),
                );
                (discovered, Ok(report))
            }
            Err(e) => (discovered, Err(e)),
        }
    }

    /// As `run_pass`, over the (source, scope) pairs `keep` accepts (change notifications
    /// relax or target polling). A departed scope's final sweep is closed only by a pass that
    /// left none of its sources out.
    pub async fn run_pass_where(
        &self,
        cancel: &CancellationToken,
        wait_for_leases: bool,
        keep: PassFilter<'_>,
    ) -> Result<PassReport, StateError> {
        let clock = (Instant::now(), Utc::now());
        let work = self.work_items().await?;
        let report = self
            .run_work(work, keep, cancel, wait_for_leases, clock)
            .await?;
        log_pass(&report);
        Ok(report)
    }

    /// A daemon pass: the (source, scope) pairs due now (`due`, queried from the state
    /// database, so an idle scope costs no request and no row here), of those the ones `keep`
    /// accepts (change notifications stretch Copilot polls while they cover a user). The next
    /// pass is assumed one `export.poll_interval` later: the schedule's horizon counts on it.
    pub async fn run_due_pass(
        &self,
        cancel: &CancellationToken,
        keep: PassFilter<'_>,
    ) -> Result<PassReport, StateError> {
        let clock = (Instant::now(), Utc::now());
        let horizon = due::Policy::from_config(&self.export).horizon(clock.1.timestamp_millis());
        let (mut work, mut not_due) = (Vec::new(), 0);
        for source in &self.sources {
            let (kind, src) = (source.kind().scope_kind(), source.kind().as_str());
            let found = self.state.due_scopes(kind.as_str(), src, horizon).await?;
            crate::ops::metrics::pass_schedule(src, found.due.len() as u64, found.not_due);
            not_due += found.not_due;
            work.extend(found.due.into_iter().map(|row| (source.clone(), row)));
        }
        let mut report = self.run_work(work, keep, cancel, false, clock).await?;
        report.not_due = not_due;
        log_pass(&report);
        Ok(report)
    }

    /// Runs `work` (less what `keep` refuses) as one pass that began at `clock`.
    async fn run_work(
        &self,
        work: Vec<(Arc<dyn Source>, ScopeRow)>,
        keep: PassFilter<'_>,
        cancel: &CancellationToken,
        wait_for_leases: bool,
        (started, pass_start): (Instant, DateTime<Utc>),
    ) -> Result<PassReport, StateError> {
        let mut left_out = HashSet::new();
        let work: Vec<_> = (work.into_iter())
            .filter(|(s, r)| {
                let kept = keep(s.kind(), r);
                // Only a departed scope's final sweep asks what was left out; a pass that
                // refuses most scopes (after discovery, under notifications) keeps no copy of them.
                if !kept && r.gone_at.is_some() {
                    left_out.insert((r.kind.clone(), r.id.clone()));
                }
                kept
            })
            .collect();
        let mut tally = Tally::default();
        let leased = (self.run_all(work, cancel, LeaseMode::TryOnce, pass_start, &mut tally)).await;
        if wait_for_leases && !cancel.is_cancelled() {
            (self.run_all(leased, cancel, LeaseMode::Wait, pass_start, &mut tally)).await;
        } else {
            for (source, row) in leased {
                tally.add(source.kind(), row, ScopeOutcome::LeasedElsewhere);
            }
        }
        self.summarise(tally, &left_out, started).await
    }

    /// Runs `work`, tallying each outcome as it arrives; on a first try (`TryOnce`) returns
    /// the scopes leased elsewhere instead, for the caller to wait for or count.
    async fn run_all(
        &self,
        work: Vec<(Arc<dyn Source>, ScopeRow)>,
        cancel: &CancellationToken,
        mode: LeaseMode,
        pass_start: DateTime<Utc>,
        tally: &mut Tally,
    ) -> Vec<(Arc<dyn Source>, ScopeRow)> {
        let claims = self.batch_claims(&work, mode);
        let claims = claims.as_ref();
        let mut leased = Vec::new();
        stream::iter(work)
            .map(|(source, row)| async move {
                let outcome = self
                    .run_scope(source.as_ref(), &row, cancel, mode, claims, pass_start)
                    .await;
                (source, row, outcome)
            })
            .buffer_unordered(self.export.concurrency)
            .for_each(|(source, row, outcome)| {
                match (mode, outcome) {
                    (LeaseMode::TryOnce, ScopeOutcome::LeasedElsewhere) => {
                        leased.push((source, row))
                    }
                    (_, outcome) => tally.add(source.kind(), row, outcome),
                }
                std::future::ready(())
            })
            .await;
        if let Some(claims) = claims {
            claims.release_unused().await;
        }
        leased
    }

    /// A first try at every lease claims them in batches, in the order the exports start.
    fn batch_claims(
        &self,
        work: &[(Arc<dyn Source>, ScopeRow)],
        mode: LeaseMode,
    ) -> Option<LeaseClaims> {
        let keys = work.iter().map(|(s, r)| work_key(s.as_ref(), r)).collect();
        matches!(mode, LeaseMode::TryOnce).then(|| {
            LeaseClaims::new(
                self.state.clone(),
                self.owner.clone(),
                self.export.lease_ttl,
                self.export.concurrency,
                keys,
            )
        })
    }

    async fn work_items(&self) -> Result<Vec<(Arc<dyn Source>, ScopeRow)>, StateError> {
        let mut by_kind: HashMap<ScopeKind, Vec<ScopeRow>> = HashMap::new();
        let mut work = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let kind = source.kind().scope_kind();
            if let std::collections::hash_map::Entry::Vacant(e) = by_kind.entry(kind) {
                e.insert(self.state.active_scopes(kind.as_str()).await?);
            }
            // The kind's last source takes its rows instead of cloning them: at 100k scopes
            // a second copy of every row is most of a pass's memory.
            let later = self.sources[i + 1..]
                .iter()
                .any(|s| s.kind().scope_kind() == kind);
            if later {
                for row in by_kind.get(&kind).into_iter().flatten() {
                    work.push((source.clone(), row.clone()));
                }
            } else {
                let rows = by_kind.remove(&kind).unwrap_or_default();
                work.extend(rows.into_iter().map(|row| (source.clone(), row)));
            }
        }
        Ok(work)
    }

    /// Closes the final sweep of scopes that disappeared, once every source succeeded for
    /// them, and reports the pass.
    async fn summarise(
        &self,
        tally: Tally,
        left_out: &HashSet<(String, String)>,
        started: Instant,
    ) -> Result<PassReport, StateError> {
        let Tally {
            mut report,
            gone_ok,
        } = tally;
        for ((kind, id), ok) in gone_ok {
            if ok && !left_out.contains(&(kind.clone(), id.clone())) {
                self.state
                    .finish_final_sweep(&kind, &id, Utc::now())
                    .await?;
                tracing::info!(scope.kind = %kind, scope.id = %id, "final sweep of a departed scope complete");
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Exports one scope for one source under a lease, kept alive by a heartbeat for as long
    /// as the export runs; if the lease is lost the export stops before its next window.
    async fn run_scope(
        &self,
        source: &dyn Source,
        row: &ScopeRow,
        cancel: &CancellationToken,
        mode: LeaseMode,
        claims: Option<&LeaseClaims>,
        pass_start: DateTime<Utc>,
    ) -> ScopeOutcome {
        let work_key = work_key(source, row);
        let acquired = match claims {
            Some(claims) => claims.take(&work_key).await,
            None => self.acquire(&work_key, cancel, mode).await,
        };
        match acquired {
            Ok(true) => {}
            Ok(false) => return ScopeOutcome::LeasedElsewhere,
            Err(e) => {
                return ScopeOutcome::Failed {
                    error: format!("cannot take lease {work_key}: {e}"),
                    report: WindowTotals::default(),
                }
            }
        }
        let facts = match claims {
            Some(claims) => claims.facts(&work_key).await,
            None => None,
        };
        let scope_cancel = cancel.child_token();
        let lost = Arc::new(std::sync::OnceLock::new());
        let heartbeat = tokio::spawn(heartbeat(
            self.state.clone(),
            work_key.clone(),
            self.owner.clone(),
            self.export.lease_ttl,
            scope_cancel.clone(),
            lost.clone(),
        ));
        let mut outcome = self
            .export_scope(source, row, &scope_cancel, pass_start, facts, &work_key)
            .await;
        heartbeat.abort();
        // Every window committed, the last one with the scope's schedule and the lease's
        // release (`ScopeEnd`). A heartbeat that ran after that commit found the lease gone:
        // not a loss, nothing was left to guard. No window means another replica had just
        // polled the scope: its schedule stands.
        if matches!(outcome, ScopeOutcome::Done { windows, .. } if windows > 0) {
            return outcome;
        }
        if let Some(reason) = lost.get().filter(|_| !cancel.is_cancelled()) {
            let scope = Scope {
                kind: source.kind().scope_kind(),
                id: row.id.clone(),
                label: row.label.clone(),
            };
            let msg = format!(
                "lease lost ({reason}); stopped before the next window; the next pass resumes \
                 from the last committed one"
            );
            outcome = self
                .fail(source.kind().as_str(), &scope, None, msg, outcome.totals())
                .await;
        }
        if let Err(e) = self.state.release_lease(&work_key, &self.owner).await {
            tracing::warn!(work_key = %work_key, error = %e, "could not release lease; it expires by itself");
        }
        outcome
    }

    /// What the scope's last window commits besides itself: when the scope is next due after
    /// its poll in the pass that began at `pass_start`, and the lease's release. `prev` is the
    /// stored schedule, None if it could not be read: then no schedule is written and the old
    /// one stays, which is already due or bounded by the previous poll (the scope is polled
    /// sooner, never later).
    fn scope_end(
        &self,
        src: &str,
        scope_id: &str,
        work_key: &str,
        prev: Option<Option<&PollSchedule>>,
        pass_start: DateTime<Utc>,
        found_new_before: bool,
    ) -> ScopeEnd {
        let policy = due::Policy::from_config(&self.export);
        let polled_at = pass_start.timestamp_millis();
        let after = |new| prev.map(|p| policy.after_poll(p, src, scope_id, polled_at, new));
        ScopeEnd {
            work_key: work_key.to_owned(),
            owner: self.owner.clone(),
            schedule_if_new: after(true),
            schedule_if_idle: after(found_new_before),
        }
    }

    /// Takes the lease; in `Wait` mode polls until the holder lets go or its lease expires.
    async fn acquire(
        &self,
        work_key: &str,
        cancel: &CancellationToken,
        mode: LeaseMode,
    ) -> Result<bool, StateError> {
        let ttl = self.export.lease_ttl;
        let deadline = Instant::now() + ttl + Duration::from_secs(5);
        loop {
            if self
                .state
                .try_lease(work_key, &self.owner, ttl, Utc::now())
                .await?
            {
                return Ok(true);
            }
            if matches!(mode, LeaseMode::TryOnce) || Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn export_scope(
        &self,
        source: &dyn Source,
        row: &ScopeRow,
        cancel: &CancellationToken,
        pass_start: DateTime<Utc>,
        facts: Option<Prefetched>,
        work_key: &str,
    ) -> ScopeOutcome {
        let src = source.kind().as_str();
        let scope = Scope {
            kind: source.kind().scope_kind(),
            id: row.id.clone(),
            label: row.label.clone(),
        };
        let mut totals = WindowTotals::default();
        let (cp, prev) = match facts {
            Some(f) => (f.checkpoint, Some(f.schedule)),
            None => match self.state.checkpoint(src, &row.id).await {
                Ok(cp) => (cp, None),
                Err(e) => return self.fail(src, &scope, None, e.to_string(), totals).await,
            },
        };
        if claims::covered_since(cp.as_ref(), &self.export, pass_start) {
            return ScopeOutcome::Done {
                windows: 0,
                report: totals,
            };
        }
        let prev = match prev {
            Some(prev) => Some(prev),
            None => match self.state.poll_schedule(src, &row.id).await {
                Ok(prev) => Some(prev),
                Err(e) => {
                    tracing::warn!(source = src, scope.id = %row.id, error = %e, "could not read the poll schedule; the scope keeps its old one and is polled again at the next pass");
                    None
                }
            },
        };
        // Keeps this replica's share of the rate budget until the last window (`replicas`).
        let _busy = self.graph.busy();
        let plans = plan_windows(cp.as_ref(), &self.export, Utc::now());
        let last = plans.len().saturating_sub(1);
        for (i, mut plan) in plans.into_iter().enumerate() {
            if i == last {
                let end = self.scope_end(
                    src,
                    &row.id,
                    work_key,
                    prev.as_ref().map(Option::as_ref),
                    pass_start,
                    totals.new > 0,
                );
                plan.end = Some(Arc::new(end));
            }
            if cancel.is_cancelled() {
                return ScopeOutcome::Cancelled {
                    windows: totals.windows,
                    report: totals,
                };
            }
            let started = Instant::now();
            let window = self.ingest.run_window(&self.graph, source, &scope, &plan);
            let Some(result) = unless_cancelled(cancel, window).await else {
                return ScopeOutcome::Cancelled {
                    windows: totals.windows,
                    report: totals,
                };
            };
            match result {
                Ok(report) => {
                    log_window(src, &scope, &plan, &report, started.elapsed());
                    crate::ops::metrics::window_archived(src, &plan, &report);
                    totals.add(&report);
                }
                Err(e) if row.gone_at.is_some() && is_not_found(&e) => {
                    return self.vanished(src, &scope, e.to_string(), totals).await;
                }
                Err(e) => {
                    return self
                        .fail(src, &scope, Some(&plan.window), e.to_string(), totals)
                        .await
                }
            }
        }
        ScopeOutcome::Done {
            windows: totals.windows,
            report: totals,
        }
    }

    /// Ends the final sweep of a scope Graph no longer knows, loudly and on the audit log:
    /// what was archived stays; what Graph still held and we had not fetched is out of reach.
    async fn vanished(
        &self,
        src: &str,
        scope: &Scope,
        error: String,
        totals: WindowTotals,
    ) -> ScopeOutcome {
        tracing::warn!(
            source = src,
            scope.kind = %scope.kind.as_str(),
            scope.id = %scope.id,
            error = %error,
            "a departed scope no longer exists at Graph; its final sweep ends here (for deleted \
             teams, teams.include_deleted_teams = true keeps their messages exportable)"
        );
        let entry = crate::state::AuditEntry {
            action: "final_sweep_resource_gone".into(),
            subject: format!("{src}/{}", scope.id),
            detail: serde_json::json!({ "error": error }),
            actor: self.owner.clone(),
        };
        if let Err(e) = self.state.audit(&entry).await {
            tracing::warn!(error = %e, "could not audit the end of a final sweep");
        }
        ScopeOutcome::Vanished {
            error,
            report: totals,
        }
    }

    async fn fail(
        &self,
        src: &str,
        scope: &Scope,
        window: Option<&Window>,
        error: String,
        totals: WindowTotals,
    ) -> ScopeOutcome {
        let error = match window {
            Some(w) => format!("window {w}: {error}"),
            None => error,
        };
        tracing::error!(
            source = src,
            user.id = %scope.id,
            user.upn = scope.label.as_deref().unwrap_or(""),
            error = %error,
            "export failed; the checkpoint stays where it was and the next pass retries"
        );
        if let Err(e) = self
            .state
            .record_error(src, &scope.id, &error, Utc::now())
            .await
        {
            tracing::warn!(error = %e, "could not record the failure in the state database");
        }
        ScopeOutcome::Failed {
            error,
            report: totals,
        }
    }
}

/// Graph answered 404 for the scope's resource (after retries, if any).
fn is_not_found(e: &crate::ingest::IngestError) -> bool {
    matches!(e, crate::ingest::IngestError::Graph(g) if g.status() == Some(404))
}

fn log_pass(report: &PassReport) {
    tracing::info!(
        scopes = report.scopes,
        scopes_not_due = report.not_due,
        succeeded = report.succeeded,
        failed = report.failures.len(),
        leased_elsewhere = report.leased_elsewhere,
        windows = report.totals.windows,
        pages = report.totals.pages,
        records_new = report.totals.new,
        records_duplicate = report.totals.duplicates,
        elapsed_ms = report.elapsed_ms,
        "pass complete: {}",
        if report.ok() {
            "archive current"
        } else {
            "some scopes not current (see status)"
        }
    );
}

/// A pass's outcomes, folded as they arrive: holding every outcome (and its scope row) until
/// the pass ended was most of a pass's memory at 100,000 scopes.
#[derive(Default)]
struct Tally {
    report: PassReport,
    /// Departed scopes (kind, id): whether every source exported them.
    gone_ok: HashMap<(String, String), bool>,
}

impl Tally {
    fn add(&mut self, source: SourceKind, row: ScopeRow, outcome: ScopeOutcome) {
        let report = &mut self.report;
        report.scopes += 1;
        let ok = matches!(
            outcome,
            ScopeOutcome::Done { .. } | ScopeOutcome::Vanished { .. }
        );
        if row.gone_at.is_some() {
            *self
                .gone_ok
                .entry((row.kind, row.id.clone()))
                .or_insert(true) &= ok;
        }
        let totals = outcome.totals();
        if totals.new > 0 {
            report.found_new.push(FoundNew {
                source,
                scope_id: row.id.clone(),
                new: totals.new,
                earliest: totals.earliest_new,
            });
        }
        match outcome {
            ScopeOutcome::Done { report: r, .. } | ScopeOutcome::Vanished { report: r, .. } => {
                report.succeeded += 1;
                merge(&mut report.totals, &r);
            }
            ScopeOutcome::LeasedElsewhere => report.leased_elsewhere += 1,
            ScopeOutcome::Cancelled { report: r, .. } => {
                report.cancelled += 1;
                merge(&mut report.totals, &r);
            }
            ScopeOutcome::Failed { error, report: r } => {
                merge(&mut report.totals, &r);
                report.failures.push(ScopeFailure {
                    source: source.to_string(),
                    scope_id: row.id,
                    label: row.label,
                    error,
                });
            }
        }
    }
}

fn merge(into: &mut WindowTotals, from: &WindowTotals) {
    into.windows += from.windows;
    into.pages += from.pages;
    into.records += from.records;
    into.new += from.new;
    into.duplicates += from.duplicates;
    into.quarantined += from.quarantined;
    into.earliest_new = earliest(into.earliest_new, from.earliest_new);
}

fn log_window(src: &str, scope: &Scope, plan: &WindowPlan, r: &WindowReport, elapsed: Duration) {
    tracing::info!(
        source = src,
        user.id = %scope.id,
        user.upn = scope.label.as_deref().unwrap_or(""),
        window.start = %Window::odata(plan.window.start),
        window.end = %Window::odata(plan.window.end),
        window.kind = if plan.advance_to.is_some() { "catch-up" } else { "look-back" },
        pages = r.pages,
        records = r.records,
        new = r.new,
        duplicates = r.duplicates,
        quarantined = r.quarantined,
        elapsed_ms = elapsed.as_millis() as u64,
        "window archived"
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceKind;
    use chrono::TimeZone;

    fn cfg() -> ExportConfig {
        ExportConfig {
            sources: vec![SourceKind::Copilot],
            start: Utc
                .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
                .single()
                .expect("t"),
            page_size: 100,
            overlap: Duration::from_secs(300),
            max_window: Duration::from_secs(86_400),
            settle_lag: Duration::from_secs(120),
            lookback: Duration::from_secs(86_400),
            lookback_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(900),
            max_staleness: Duration::from_secs(86_400),
            idle_backoff: 1.5,
            concurrency: 4,
            write_concurrency: 4,
            lease_ttl: Duration::from_secs(600),
        }
    }

    fn cp(watermark: DateTime<Utc>, lookback: Option<DateTime<Utc>>) -> Checkpoint {
        Checkpoint {
            source: "copilot".into(),
            scope_id: "u".into(),
            watermark: Some(watermark),
            last_lookback_at: lookback,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
            records_archived: 0,
            windows_completed: 0,
        }
    }

    #[test]
    fn backfill_windows_are_contiguous_overlapping_and_bounded() {
        let c = cfg();
        let now = c.start + ChronoDuration::days(3) + ChronoDuration::hours(5);
        let plans = plan_windows(None, &c, now);
        assert_eq!(plans.iter().filter(|p| p.advance_to.is_some()).count(), 4);
        let overlap = ChronoDuration::seconds(300);
        assert_eq!(plans[0].window.start, c.start - overlap);
        for pair in plans.windows(2) {
            let prev_end = pair[0].advance_to.expect("catch-up");
            // The next window starts before the previous one ended: an edge record is in both.
            assert_eq!(pair[1].window.start, prev_end - overlap);
            assert!(pair[0].window.end - pair[0].window.start <= ChronoDuration::days(1) + overlap);
        }
        let last = plans.last().expect("plans");
        assert_eq!(last.window.end, now - ChronoDuration::seconds(120));
        // The first pass's catch-up covers the look-back span itself.
        assert!(last.lookback_done_at.is_some());
    }

    #[test]
    fn caught_up_scope_gets_only_a_due_lookback() {
        let c = cfg();
        let now = Utc
            .with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
            .single()
            .expect("t");
        let mark = now - ChronoDuration::seconds(120);
        let plans = plan_windows(
            Some(&cp(mark, Some(now - ChronoDuration::minutes(10)))),
            &c,
            now,
        );
        assert!(plans.is_empty(), "look-back not due yet");
        let plans = plan_windows(
            Some(&cp(mark, Some(now - ChronoDuration::hours(2)))),
            &c,
            now,
        );
        assert_eq!(plans.len(), 1);
        let lb = &plans[0];
        assert!(lb.advance_to.is_none());
        assert_eq!(lb.window.end, mark);
        assert_eq!(
            lb.window.start,
            mark - ChronoDuration::days(1) - ChronoDuration::seconds(300)
        );
    }

    #[test]
    fn steady_state_window_then_lookback() {
        let c = cfg();
        let now = Utc
            .with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
            .single()
            .expect("t");
        let mark = now - ChronoDuration::minutes(20);
        let plans = plan_windows(Some(&cp(mark, None)), &c, now);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].window.start, mark - ChronoDuration::seconds(300));
        assert_eq!(
            plans[0].advance_to,
            Some(now - ChronoDuration::seconds(120))
        );
        assert!(plans[1].advance_to.is_none() && plans[1].lookback_done_at.is_some());
    }

    #[test]
    fn a_scope_exported_since_the_pass_began_is_covered() {
        let c = cfg();
        let pass_start = Utc
            .with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
            .single()
            .expect("t");
        let settle = ChronoDuration::seconds(120);
        assert!(!claims::covered_since(None, &c, pass_start));
        // Exported by the previous pass: this one has a window to do.
        let earlier = cp(pass_start - ChronoDuration::minutes(20), Some(pass_start));
        assert!(!claims::covered_since(Some(&earlier), &c, pass_start));
        // Exported by another replica after this pass began.
        let later = pass_start + ChronoDuration::seconds(5);
        let done = cp(later - settle, Some(later));
        assert!(claims::covered_since(Some(&done), &c, pass_start));
    }

    /// The race `unless_cancelled` closes: the window finished and the cancel fired before
    /// the export looked again. Unbiased, each round would pick the cancel half the time.
    #[tokio::test]
    async fn a_finished_window_is_never_taken_for_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        for round in 0..64 {
            let done = unless_cancelled(&cancel, std::future::ready(round)).await;
            assert_eq!(done, Some(round), "round {round}");
        }
        let pending = unless_cancelled(&cancel, std::future::pending::<()>()).await;
        assert_eq!(pending, None, "unfinished work is cancelled");
    }

    #[test]
    fn lookback_never_reaches_before_start() {
        let mut c = cfg();
        c.lookback = Duration::from_secs(86_400 * 365);
        let now = c.start + ChronoDuration::days(2);
        let mark = now - ChronoDuration::seconds(120);
        let plans = plan_windows(Some(&cp(mark, Some(c.start))), &c, now);
        assert_eq!(plans.len(), 1);
        assert_eq!(
            plans[0].window.start,
            c.start - ChronoDuration::seconds(300)
        );
    }
}
