//! Prometheus metrics through the `metrics` facade: any module records with a one-line call
//! (no registry threaded through constructors), and `metrics-exporter-prometheus` renders the
//! text format that `ops::http` serves on `/metrics`. Without an installed recorder (`run --once`,
//! other commands) every call here is a no-op.
//!
//! Counters recorded where things happen: record versions written (`store_put`, from ingest),
//! windows (`window_archived`, from the scheduler), passes and scope states (`pass_done`, from the
//! daemon loop). Graph counters are owned by `GraphClient` and copied in at scrape time, so they
//! can never disagree with `GraphClient::stats()`.

use crate::archive::{PutOutcome, StoreError};
use crate::graph::{BudgetShare, GraphStats};
use crate::ingest::{WindowPlan, WindowReport};
use crate::ops::overview::Overview;
use crate::ops::systemd;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Metric names, all prefixed so that a shared Prometheus can tell them apart.
pub mod names {
    pub const RECORDS_ARCHIVED: &str = "m365_archiver_records_archived_total";
    pub const BYTES_ARCHIVED: &str = "m365_archiver_archived_bytes_total";
    pub const RECORDS_DUPLICATE: &str = "m365_archiver_records_duplicate_total";
    pub const RECORDS_QUARANTINED: &str = "m365_archiver_records_quarantined_total";
    pub const WINDOWS: &str = "m365_archiver_windows_total";
    pub const PAGES: &str = "m365_archiver_pages_total";
    pub const WINDOW_LAG: &str = "m365_archiver_window_lag_seconds";
    pub const STORE_OP: &str = "m365_archiver_store_operation_seconds";
    pub const STORE_ERRORS: &str = "m365_archiver_store_errors_total";
    pub const GRAPH_REQUESTS: &str = "m365_archiver_graph_requests_total";
    pub const GRAPH_THROTTLED: &str = "m365_archiver_graph_throttled_total";
    pub const GRAPH_PAUSED: &str = "m365_archiver_graph_paused_milliseconds_total";
    pub const GRAPH_RETRIES: &str = "m365_archiver_graph_retries_total";
    pub const GRAPH_TRANSPORT_ERRORS: &str = "m365_archiver_graph_transport_errors_total";
    pub const GRAPH_MALFORMED_PAGES: &str = "m365_archiver_graph_malformed_pages_total";
    pub const TOKEN_REQUESTS: &str = "m365_archiver_token_requests_total";
    pub const PASSES: &str = "m365_archiver_passes_total";
    pub const LAST_PASS: &str = "m365_archiver_last_pass_timestamp_seconds";
    pub const LAST_CURRENT_PASS: &str = "m365_archiver_last_current_pass_timestamp_seconds";
    pub const SCOPES: &str = "m365_archiver_scopes";
    pub const LAG_MAX: &str = "m365_archiver_lag_seconds_max";
    pub const NOTIFICATION_LATENCY: &str = "m365_archiver_notification_latency_seconds";
    pub const NOTIFICATIONS_RECEIVED: &str = "m365_archiver_notification_posts_total";
    pub const NOTIFICATIONS_ACCEPTED: &str = "m365_archiver_notifications_accepted_total";
    pub const NOTIFICATIONS_REJECTED: &str = "m365_archiver_notifications_rejected_total";
    pub const NOTIFICATIONS_QUEUED: &str = "m365_archiver_notifications_queued_total";
    pub const NOTIFICATIONS_PROCESSED: &str = "m365_archiver_notifications_processed_total";
    pub const SUBSCRIPTIONS: &str = "m365_archiver_subscriptions";
    pub const SUBSCRIPTION_CHANGES: &str = "m365_archiver_subscription_changes_total";
    pub const POLLS_SKIPPED: &str = "m365_archiver_polls_skipped_total";
    pub const NOTIFICATION_GAPS: &str = "m365_archiver_notification_gaps_total";
    pub const PASS_SCOPES: &str = "m365_archiver_pass_scopes";
    pub const READY: &str = "m365_archiver_ready";
    pub const BUILD_INFO: &str = "m365_archiver_build_info";
    pub const REPLICAS: &str = "m365_archiver_replicas";
    pub const RATE_BUDGET: &str = "m365_archiver_rate_budget_requests_per_second";
}
use names::*;

/// Store operations take milliseconds locally and up to seconds against a remote blob store.
const STORE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Window lag runs from minutes (steady state) to months (backfill).
const LAG_BUCKETS: &[f64] = &[
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    21_600.0,
    43_200.0,
    86_400.0,
    259_200.0,
    604_800.0,
    2_592_000.0,
    31_536_000.0,
];
/// Change notifications are due within seconds; Graph retries a failed delivery for hours.
const NOTIFICATION_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metrics recorder: {0}")]
    Build(#[from] BuildError),
}

/// The process-wide recorder's handle: renders the scrape payload.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The exporter with this crate's histogram buckets (unset, it would render summaries, which
/// cannot be aggregated across replicas).
pub fn builder() -> Result<PrometheusBuilder, MetricsError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORE_OP.into()), STORE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(WINDOW_LAG.into()), LAG_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(NOTIFICATION_LATENCY.into()),
            NOTIFICATION_BUCKETS,
        )?)
}

impl Metrics {
    /// Installs the process-wide recorder. Once per process: the daemon calls it at start.
    pub fn install() -> Result<Metrics, MetricsError> {
        let handle = builder()?.install_recorder()?;
        describe();
        Ok(Metrics { handle })
    }

    /// A handle for a recorder the caller installed (tests use a thread-local one).
    pub fn from_handle(handle: PrometheusHandle) -> Metrics {
        Metrics { handle }
    }

    /// The Prometheus text payload, with the Graph client's counters copied in first.
    pub fn render(&self, graph: &GraphStats) -> String {
        graph_stats(graph);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Help texts and the metrics that must exist before their first event (so dashboards and
/// alerts see a zero rather than "no data").
pub fn describe() {
    describe_counter!(
        RECORDS_ARCHIVED,
        "Record versions written to the archive store (new, create-only), by source."
    );
    describe_counter!(
        BYTES_ARCHIVED,
        Unit::Bytes,
        "Bytes of record versions written to the archive store, by source."
    );
    describe_counter!(RECORDS_DUPLICATE, "Record versions seen again and not rewritten (window overlap, look-back, shared exports), by source.");
    describe_counter!(
        RECORDS_QUARANTINED,
        "Records without a usable identity kept under quarantine/, by source."
    );
    describe_counter!(WINDOWS, "Export windows completed (checkpoint committed), by source and kind (catch-up, look-back).");
    describe_counter!(
        PAGES,
        "Graph result pages ingested in completed windows, by source."
    );
    describe_histogram!(
        WINDOW_LAG,
        Unit::Seconds,
        "How far behind now a completed catch-up window ended, by source."
    );
    describe_histogram!(
        STORE_OP,
        Unit::Seconds,
        "Archive store write latency, by operation and outcome."
    );
    describe_counter!(
        STORE_ERRORS,
        "Archive store operations that failed, by operation."
    );
    describe_counter!(
        GRAPH_REQUESTS,
        "Microsoft Graph responses by HTTP status (every attempt, token requests excluded)."
    );
    describe_counter!(
        GRAPH_THROTTLED,
        "Graph responses that throttled the archiver (429, or 503 with Retry-After)."
    );
    describe_counter!(
        GRAPH_PAUSED,
        Unit::Milliseconds,
        "Time the whole Graph client paused for Retry-After."
    );
    describe_counter!(GRAPH_RETRIES, "Graph requests retried.");
    describe_counter!(
        GRAPH_TRANSPORT_ERRORS,
        "Graph requests that got no complete answer (connect, reset, timeout)."
    );
    describe_counter!(
        GRAPH_MALFORMED_PAGES,
        "Graph 2xx pages that could not be parsed."
    );
    describe_counter!(
        TOKEN_REQUESTS,
        "Requests sent to the identity platform's token endpoint."
    );
    describe_counter!(
        PASSES,
        "Daemon passes over every scope, by outcome (ok, incomplete)."
    );
    describe_gauge!(
        LAST_PASS,
        Unit::Seconds,
        "Unix time the last pass finished."
    );
    describe_gauge!(
        LAST_CURRENT_PASS,
        Unit::Seconds,
        "Unix time of the last pass after which no scope was behind or failing."
    );
    describe_gauge!(
        SCOPES,
        "Scopes by source and state (current, behind, failing, departed)."
    );
    describe_gauge!(
        LAG_MAX,
        Unit::Seconds,
        "Largest watermark lag among a source's scopes."
    );
    describe_histogram!(
        NOTIFICATION_LATENCY,
        Unit::Seconds,
        "From a record's creation to its archiving through a change notification, by source."
    );
    describe_notifications();
    describe_gauge!(
        PASS_SCOPES,
        "Active scopes in the last daemon pass by source and schedule: due (polled) or not_due \
         (left for a later pass by the activity-based schedule under export.max_staleness)."
    );
    describe_gauge!(
        READY,
        "1 once migrations ran and the store and Graph checks passed."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label tells which build runs."
    );
    describe_gauge!(
        REPLICAS,
        "Live replicas sharing the tenant's rate budget, as this replica last counted them."
    );
    describe_gauge!(
        RATE_BUDGET,
        "This replica's share of the tenant-wide Graph budget, by endpoint class."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(READY).set(0.0);
}

/// The source a store key belongs to and its kind: `records/<source>/...`,
/// `quarantine/<source>/...`, `manifests/<source>/...`.
fn key_kind(key: &str) -> (&str, &str) {
    let mut parts = key.splitn(3, '/');
    let kind = parts.next().unwrap_or("");
    let source = parts.next().unwrap_or("");
    (kind, source)
}

/// One create-only write to the archive store. A `Created` record version is what
/// "records archived" counts: durable, new bytes.
pub fn store_put(
    key: &str,
    bytes: usize,
    elapsed: Duration,
    result: &Result<PutOutcome, StoreError>,
) {
    systemd::progress();
    let (kind, source) = key_kind(key);
    let outcome = match result {
        Ok(PutOutcome::Created) => "created",
        Ok(PutOutcome::AlreadyExists { .. }) => "exists",
        Err(_) => "error",
    };
    histogram!(STORE_OP, "op" => "put", "outcome" => outcome).record(elapsed.as_secs_f64());
    match result {
        Ok(PutOutcome::Created) if kind == "records" => {
            counter!(RECORDS_ARCHIVED, "source" => source.to_string()).increment(1);
            counter!(BYTES_ARCHIVED, "source" => source.to_string()).increment(bytes as u64);
        }
        Err(_) => counter!(STORE_ERRORS, "op" => "put").increment(1),
        _ => {}
    }
}

/// A window whose checkpoint was committed.
pub fn window_archived(source: &str, plan: &WindowPlan, report: &WindowReport) {
    systemd::progress();
    crate::ops::progress::window_done();
    let kind = if plan.advance_to.is_some() {
        "catch-up"
    } else {
        "look-back"
    };
    let src = source.to_string();
    counter!(WINDOWS, "source" => src.clone(), "kind" => kind).increment(1);
    counter!(PAGES, "source" => src.clone()).increment(report.pages);
    counter!(RECORDS_DUPLICATE, "source" => src.clone()).increment(report.duplicates);
    counter!(RECORDS_QUARANTINED, "source" => src.clone()).increment(report.quarantined);
    if plan.advance_to.is_some() {
        let lag = (chrono::Utc::now() - plan.window.end)
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
        histogram!(WINDOW_LAG, "source" => src).record(lag);
    }
}

/// For change notifications (issue 5): the time from a record's creation to its archiving.
pub fn notification_latency(source: &str, latency: Duration) {
    histogram!(NOTIFICATION_LATENCY, "source" => source.to_string()).record(latency.as_secs_f64());
}

/// After each daemon pass: outcome, and the state of every scope per source.
pub fn pass_done(ok: bool, overview: &Overview) {
    let now = chrono::Utc::now().timestamp() as f64;
    counter!(PASSES, "outcome" => if ok { "ok" } else { "incomplete" }).increment(1);
    gauge!(LAST_PASS).set(now);
    if ok && overview.is_current() {
        gauge!(LAST_CURRENT_PASS).set(now);
    }
    for s in &overview.by_source {
        let src = s.source.clone();
        for (state, n) in [
            ("current", s.current),
            ("behind", s.behind),
            ("failing", s.failing),
            ("departed", s.departed),
        ] {
            gauge!(SCOPES, "source" => src.clone(), "state" => state).set(n as f64);
        }
        gauge!(LAG_MAX, "source" => src).set(s.max_lag_seconds.unwrap_or(0) as f64);
    }
}

/// After the number of live replicas changed (and at start): this replica's share.
pub fn budget_share(share: &BudgetShare) {
    gauge!(REPLICAS).set(f64::from(share.replicas));
    let b = &share.budgets;
    for (endpoint, rps) in [
        ("interactions", b.interactions_rps),
        ("messages", b.messages_rps),
        ("other", b.other_rps),
    ] {
        gauge!(RATE_BUDGET, "endpoint" => endpoint).set(rps);
    }
}

fn describe_notifications() {
    describe_counter!(
        NOTIFICATIONS_RECEIVED,
        "Change-notification posts received by the webhook, by outcome (queued, refused)."
    );
    describe_counter!(
        NOTIFICATIONS_ACCEPTED,
        "Notification items that passed every check (clientState, tokens, signature)."
    );
    describe_counter!(
        NOTIFICATIONS_REJECTED,
        "Notification posts refused or items dropped, by reason."
    );
    describe_counter!(
        NOTIFICATIONS_QUEUED,
        "Notification items committed to the durable queue (answered 202)."
    );
    describe_counter!(
        NOTIFICATIONS_PROCESSED,
        "Queued notification items processed, by outcome (archived, duplicate, lifecycle, unattributed, retry, gave_up)."
    );
    describe_gauge!(
        SUBSCRIPTIONS,
        "Change-notification subscriptions by status (active, failed, removed, reauthorize)."
    );
    describe_counter!(
        SUBSCRIPTION_CHANGES,
        "Subscription operations, by event (created, renewed, reauthorized, deleted, failed)."
    );
    describe_counter!(
        POLLS_SKIPPED,
        "Scope polls skipped because change notifications were healthy for that scope (each saves at least one Graph request), by source."
    );
    describe_counter!(
        NOTIFICATION_GAPS,
        "Users whose poll stored Copilot interactions that notifications should have brought (each such pass asks for a catch-up of every user)."
    );
}

/// A notification post that was queued: `accepted` items, and the reasons of dropped ones.
pub fn notification_post(accepted: usize, dropped: &[&'static str]) {
    counter!(NOTIFICATIONS_RECEIVED, "outcome" => "queued").increment(1);
    counter!(NOTIFICATIONS_ACCEPTED).increment(accepted as u64);
    counter!(NOTIFICATIONS_QUEUED).increment(accepted as u64);
    for reason in dropped {
        counter!(NOTIFICATIONS_REJECTED, "reason" => *reason).increment(1);
    }
}

/// A notification post refused as a whole.
pub fn notification_refused(reason: &'static str) {
    counter!(NOTIFICATIONS_RECEIVED, "outcome" => "refused").increment(1);
    counter!(NOTIFICATIONS_REJECTED, "reason" => reason).increment(1);
}

/// One queued item processed by the worker.
pub fn notification_processed(outcome: &'static str) {
    counter!(NOTIFICATIONS_PROCESSED, "outcome" => outcome).increment(1);
}

/// Subscriptions by status, as the manager last saw them.
pub fn subscriptions(by_status: &[(&'static str, usize)]) {
    for (status, n) in by_status {
        gauge!(SUBSCRIPTIONS, "status" => *status).set(*n as f64);
    }
}

pub fn subscription_change(event: &str) {
    counter!(SUBSCRIPTION_CHANGES, "event" => event.to_string()).increment(1);
}

/// Scopes of `source` not polled in a pass because notifications covered them.
pub fn polls_skipped(source: &str, n: u64) {
    counter!(POLLS_SKIPPED, "source" => source.to_string()).increment(n);
}

/// Users whose poll revealed notifications lost without a `missed` event.
pub fn notification_gaps(users: u64) {
    counter!(NOTIFICATION_GAPS).increment(users);
}

/// How many scopes of `source` the last daemon pass found due, and how many it left for later.
pub fn pass_schedule(source: &str, due: u64, not_due: u64) {
    for (schedule, n) in [("due", due), ("not_due", not_due)] {
        gauge!(PASS_SCOPES, "source" => source.to_string(), "schedule" => schedule).set(n as f64);
    }
}

pub fn set_ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// Copies the Graph client's own counters in (absolute: they are totals since start).
fn graph_stats(s: &GraphStats) {
    for (status, n) in &s.by_status {
        counter!(GRAPH_REQUESTS, "status" => status.to_string()).absolute(*n);
    }
    counter!(GRAPH_THROTTLED).absolute(s.throttled);
    counter!(GRAPH_PAUSED).absolute(s.paused_ms);
    counter!(GRAPH_RETRIES).absolute(s.retries);
    counter!(GRAPH_TRANSPORT_ERRORS).absolute(s.transport_errors);
    counter!(GRAPH_MALFORMED_PAGES).absolute(s.malformed_pages);
    counter!(TOKEN_REQUESTS).absolute(s.token_requests);
}

/// The value of one series in a Prometheus text payload (`name{labels}` exactly as rendered,
/// labels in the order given); for tests and the `status` cross-checks.
pub fn sample(payload: &str, series: &str) -> Option<f64> {
    payload.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Window;
    use chrono::Utc;

    fn local<F: FnOnce()>(f: F) -> String {
        let recorder = builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            f();
        });
        Metrics::from_handle(handle).render_without_graph()
    }

    impl Metrics {
        fn render_without_graph(&self) -> String {
            self.handle.run_upkeep();
            self.handle.render()
        }
    }

    #[test]
    fn created_records_count_by_source_and_bytes() {
        let text = local(|| {
            let ok = Ok(PutOutcome::Created);
            store_put(
                "records/copilot/u/1/e.json",
                100,
                Duration::from_millis(2),
                &ok,
            );
            store_put(
                "records/copilot/u/2/e.json",
                50,
                Duration::from_millis(2),
                &ok,
            );
            store_put("records/chats/c/3/e.json", 7, Duration::from_millis(2), &ok);
            let exists = Ok(PutOutcome::AlreadyExists {
                existing_sha256: "x".into(),
            });
            store_put(
                "records/copilot/u/1/e.json",
                100,
                Duration::from_millis(1),
                &exists,
            );
            store_put(
                "manifests/copilot/u/1.json",
                10,
                Duration::from_millis(1),
                &ok,
            );
            let err = Err(StoreError::Unavailable("disk".into()));
            store_put(
                "records/copilot/u/9/e.json",
                5,
                Duration::from_millis(1),
                &err,
            );
        });
        let get = |s: &str| sample(&text, s);
        assert_eq!(
            get(r#"m365_archiver_records_archived_total{source="copilot"}"#),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            get(r#"m365_archiver_records_archived_total{source="chats"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"m365_archiver_archived_bytes_total{source="copilot"}"#),
            Some(150.0)
        );
        assert_eq!(
            get(r#"m365_archiver_store_errors_total{op="put"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"m365_archiver_store_operation_seconds_count{op="put",outcome="created"}"#),
            Some(4.0)
        );
    }

    #[test]
    fn windows_count_duplicates_and_lag_only_for_catch_up() {
        let end = Utc::now() - chrono::Duration::hours(2);
        let window = Window {
            start: end - chrono::Duration::days(1),
            end,
        };
        let catch_up = WindowPlan {
            window,
            advance_to: Some(end),
            lookback_done_at: None,
            end: None,
        };
        let look_back = WindowPlan {
            advance_to: None,
            ..catch_up.clone()
        };
        let report = WindowReport {
            pages: 3,
            records: 10,
            new: 6,
            duplicates: 4,
            quarantined: 1,
            bytes_new: 600,
            earliest_new: None,
        };
        let text = local(|| {
            window_archived("copilot", &catch_up, &report);
            window_archived("copilot", &look_back, &report);
        });
        let get = |s: &str| sample(&text, s);
        assert_eq!(
            get(r#"m365_archiver_records_duplicate_total{source="copilot"}"#),
            Some(8.0)
        );
        assert_eq!(
            get(r#"m365_archiver_pages_total{source="copilot"}"#),
            Some(6.0)
        );
        assert_eq!(
            get(r#"m365_archiver_windows_total{source="copilot",kind="look-back"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"m365_archiver_window_lag_seconds_count{source="copilot"}"#),
            Some(1.0)
        );
        // Two hours behind: in the 7200 s bucket, not the 3600 s one.
        assert_eq!(
            get(r#"m365_archiver_window_lag_seconds_bucket{source="copilot",le="3600"}"#),
            Some(0.0)
        );
        assert_eq!(
            get(r#"m365_archiver_window_lag_seconds_bucket{source="copilot",le="21600"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn graph_counters_are_copied_as_totals() {
        let recorder = builder().expect("builder").build_recorder();
        let m = Metrics::from_handle(recorder.handle());
        let mut stats = GraphStats {
            requests: 12,
            throttled: 2,
            paused_ms: 4_500,
            ..GraphStats::default()
        };
        stats.by_status.insert(200, 10);
        stats.by_status.insert(429, 2);
        let text = metrics::with_local_recorder(&recorder, || {
            m.render(&stats);
            // Rendering twice must not double the totals.
            m.render(&stats)
        });
        assert_eq!(
            sample(&text, r#"m365_archiver_graph_requests_total{status="200"}"#),
            Some(10.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"m365_archiver_graph_requests_total{status="429"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "m365_archiver_graph_throttled_total"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "m365_archiver_graph_paused_milliseconds_total"),
            Some(4500.0)
        );
    }

    #[test]
    fn notification_histogram_is_ready_for_use() {
        let text = local(|| notification_latency("copilot", Duration::from_millis(1500)));
        assert_eq!(
            sample(
                &text,
                r#"m365_archiver_notification_latency_seconds_bucket{source="copilot",le="2"}"#
            ),
            Some(1.0),
            "{text}"
        );
    }
}
