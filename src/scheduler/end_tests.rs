//! A scope's end (schedule and lease release) folded into its last window's commit, and the
//! checkpoints and schedules read per claim batch: against the simulator, with real passes.

use super::*;
use crate::app::App;
use crate::demo::{demo_sim_config, DEMO_CONFIG};
use crate::graph::Endpoint;
use crate::sim::{self, SimHandle};
use crate::sources::copilot::CopilotSource;
use crate::sources::{RecordMeta, SourceError};
use serde_json::value::RawValue;
use url::Url;

async fn start(dir: &std::path::Path) -> (SimHandle, App) {
    let (sim, app) = start_undiscovered(dir).await;
    crate::discovery::sync_users(&app.graph, &app.state, &app.config.discovery)
        .await
        .expect("discovery");
    (sim, app)
}

/// The simulator and an app whose state knows no scope yet.
async fn start_undiscovered(dir: &std::path::Path) -> (SimHandle, App) {
    let cfg = crate::sim::SimConfig {
        users: 3,
        unlicensed_users: 0,
        interactions_per_user: 4,
        ..demo_sim_config()
    };
    let sim = sim::spawn(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    let text = DEMO_CONFIG
        .replace("@SIM@", &sim.authority())
        .replace("@DIR@", &dir.display().to_string());
    let config = crate::config::load_from_str(&text).expect("config");
    let app = App::start(config).await.expect("app");
    (sim, app)
}

async fn lease_count(state: &StateDb) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leases")
        .fetch_one(state.pool())
        .await
        .expect("leases");
    n
}

async fn schedules(state: &StateDb) -> Vec<PollSchedule> {
    state.poll_schedules().await.expect("schedules")
}

/// Copilot, except that every window asks Graph for a page that does not exist.
struct Broken(CopilotSource);

impl Source for Broken {
    fn kind(&self) -> SourceKind {
        self.0.kind()
    }
    fn endpoint(&self) -> Endpoint {
        self.0.endpoint()
    }
    fn window_url(&self, base: &Url, _scope: &Scope, _window: &Window) -> Url {
        let mut url = base.clone();
        url.set_path("/v1.0/no-such-endpoint");
        url
    }
    fn record_meta(&self, scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError> {
        self.0.record_meta(scope, raw)
    }
}

/// A completed scope leaves no lease and a schedule that follows from the previous one (read
/// with its claim batch, or by the export itself when it waited for the lease); a failed one
/// leaves no lease either and its schedule as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_end_released_and_scheduled_or_released_and_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, app) = start(dir.path()).await;
    let cancel = CancellationToken::new();
    let policy = due::Policy::from_config(&app.config.export);

    let before = Utc::now().timestamp_millis();
    let report = app.scheduler.run_pass(&cancel, false).await.expect("pass");
    assert!(report.ok() && report.succeeded == 3, "{report:?}");
    assert!(report.totals.new > 0);
    assert_eq!(lease_count(&app.state).await, 0, "released with the commit");
    let first = schedules(&app.state).await;
    assert_eq!(first.len(), 3);
    for s in &first {
        assert!(s.polled_at >= before && s.polled_at <= Utc::now().timestamp_millis());
        assert_eq!(
            s.interval_ms, policy.base_ms,
            "new records: the base interval"
        );
        assert_eq!(s.last_new_at, Some(s.polled_at));
    }

    // Steady pass; one scope's lease is held elsewhere for a moment, so that export waits for
    // it and reads its own checkpoint and schedule.
    let waited = format!("copilot/{}", first[0].scope_id);
    assert!(app
        .state
        .try_lease(&waited, "other", Duration::from_millis(300), Utc::now())
        .await
        .expect("lease"));
    let report = app.scheduler.run_pass(&cancel, true).await.expect("pass");
    assert!(report.ok() && report.succeeded == 3, "{report:?}");
    assert_eq!(report.totals.new, 0);
    assert_eq!(lease_count(&app.state).await, 0);
    let second = schedules(&app.state).await;
    for (old, s) in first.iter().zip(&second) {
        assert_eq!(old.scope_id, s.scope_id);
        assert!(s.polled_at > old.polled_at, "{s:?}");
        assert_eq!(
            s.interval_ms,
            policy.next_interval(Some(old), false),
            "grown from the previous schedule"
        );
        assert_eq!(s.last_new_at, old.last_new_at);
    }

    // Every window fails: leases released, schedules untouched, the error recorded.
    let broken = Scheduler::new(
        app.config.export.clone(),
        app.graph.clone(),
        app.state.clone(),
        app.scheduler.ingest().clone(),
        vec![Arc::new(Broken(CopilotSource::new(100))) as Arc<dyn Source>],
    );
    let report = broken.run_pass(&cancel, false).await.expect("pass");
    assert_eq!(report.failures.len(), 3, "{report:?}");
    assert_eq!(lease_count(&app.state).await, 0, "released after failure");
    assert_eq!(schedules(&app.state).await, second);
    let cp = app
        .state
        .checkpoint("copilot", &second[0].scope_id)
        .await
        .expect("checkpoint")
        .expect("present");
    assert!(cp.last_error.is_some());
    sim.shutdown().await;
}

/// A one-shot pass covers the scopes up to when it was asked for: a scope another replica
/// exported since then (while this one was still discovering) is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_begun_before_another_replicas_export_skips_those_scopes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, app) = start(dir.path()).await;
    let cancel = CancellationToken::new();
    let begun = PassClock::now();
    let first = app.scheduler.run_pass(&cancel, true).await.expect("pass");
    assert!(first.ok() && first.totals.windows >= 3, "{first:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let skipped = (app.scheduler.run_pass_begun(&cancel, true, begun))
        .await
        .expect("pass");
    assert!(skipped.ok() && skipped.succeeded == 3, "{skipped:?}");
    assert_eq!(skipped.totals.windows, 0, "nothing asked again");

    // A pass asked for now has the few milliseconds since to cover.
    let later = app.scheduler.run_pass(&cancel, true).await.expect("pass");
    assert!(later.totals.windows >= 3, "{later:?}");
    sim.shutdown().await;
}

async fn scopes_with_success(state: &StateDb) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM checkpoints WHERE last_success_at IS NOT NULL")
            .fetch_one(state.pool())
            .await
            .expect("checkpoints");
    n
}

/// The scopes the state knows are exported while discovery runs: this discovery completes
/// only once a scope's export has succeeded, which it never would if the pass waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_scopes_are_exported_while_discovery_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, app) = start(dir.path()).await;
    let cancel = CancellationToken::new();
    let discovery = tokio::time::timeout(Duration::from_secs(20), async {
        while scopes_with_success(&app.state).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (discovered, report) = (app.scheduler)
        .run_pass_beside(&cancel, PassClock::now(), discovery)
        .await;
    discovered.expect("a known scope was exported while discovery ran");
    let report = report.expect("pass");
    assert!(report.ok() && report.succeeded == 3, "{report:?}");
    assert_eq!(report.scopes, 3, "each scope once: {report:?}");
    sim.shutdown().await;
}

/// The scopes discovery adds are exported in the same pass, after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_discovery_adds_are_exported_in_the_same_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, app) = start_undiscovered(dir.path()).await;
    let cancel = CancellationToken::new();
    let discovery = crate::discovery::sync_users(&app.graph, &app.state, &app.config.discovery);
    let (discovered, report) = (app.scheduler)
        .run_pass_beside(&cancel, PassClock::now(), discovery)
        .await;
    discovered.expect("discovery");
    let report = report.expect("pass");
    assert!(report.ok() && report.succeeded == 3, "{report:?}");
    assert!(report.totals.windows >= 3, "{report:?}");
    assert_eq!(scopes_with_success(&app.state).await, 3);
    sim.shutdown().await;
}
