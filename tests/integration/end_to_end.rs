use crate::helpers::*;
use m365_archiver::sim::FaultConfig;

/// 200 licensed users x 50 interactions (some sharing ids across users) through 5% 5xx, 429
/// storms, malformed and truncated pages, connection resets and expiring tokens: after passes
/// until success the archive equals the ground truth exactly, and a further pass adds nothing.
/// Also run on Azure (Azurite) by `azure::ground_truth_through_faults_azurite`.
pub(crate) async fn archive_equals_ground_truth_through_faults(db: Db, store: StoreKind) {
    let mut sim = sim_config(200, 50);
    sim.token_ttl_secs = 20;
    sim.faults = FaultConfig {
        error_rate: 0.05,
        storm_rate: 0.003,
        storm_ms: 400,
        reset_rate: 0.01,
        malformed_rate: 0.02,
        truncated_rate: 0.01,
        expired_token_rate: 0.01,
        ..FaultConfig::default()
    };
    let env = Env::new(
        db,
        sim,
        &Opts {
            store,
            ..Opts::default()
        },
    )
    .await;
    let passes = env.run_until_ok(8).await;
    eprintln!("archive complete after {passes} pass(es)");

    let truth = env.truth().await;
    assert!(
        truth.len() >= 200 * 50,
        "simulator holds {} records",
        truth.len()
    );
    let shared = shared_id_count(&truth);
    assert!(
        shared > 0,
        "the tenant must contain interaction ids held by two users"
    );
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());

    // Idempotence: another pass (now without faults) archives nothing new.
    env.sim_put("/_sim/faults", serde_json::json!({})).await;
    let before = env.record_keys().await;
    let state = env.state().await;
    let catalogued = state.catalogue_count(Some("copilot")).await.expect("count");
    let out = env.run_once().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        env.record_keys().await,
        before,
        "a re-run must not write records"
    );
    assert_eq!(
        state.catalogue_count(Some("copilot")).await.expect("count"),
        catalogued
    );
    assert_eq!(catalogued as usize, cmp.matched);
}

fn shared_id_count(truth: &[m365_archiver::groundtruth::TruthRecord]) -> usize {
    let mut by_id = std::collections::HashMap::<&str, std::collections::HashSet<&str>>::new();
    for r in truth {
        by_id
            .entry(r.id.as_str())
            .or_default()
            .insert(r.scope.as_str());
    }
    by_id.values().filter(|users| users.len() > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_through_faults_sqlite() {
    archive_equals_ground_truth_through_faults(Db::Sqlite, StoreKind::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_through_faults_postgres() {
    archive_equals_ground_truth_through_faults(Db::Postgres, StoreKind::Fs).await;
}

/// Two archivers on one PostgreSQL at once: leases keep them off each other's users, and the
/// archive still holds every version exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres() {
    let env = Env::new(Db::Postgres, sim_config(60, 20), &Opts::default()).await;
    let (a, b) = tokio::join!(env.run_once(), env.run_once());
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A user skipped because the other process held it is picked up by the next pass.
    env.run_until_ok(3).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
}

/// The operator's view after a pass: one row per user, current, with records counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_every_user() {
    let env = Env::new(Db::Sqlite, sim_config(12, 10), &Opts::default()).await;
    env.run_until_ok(2).await;
    let out = env
        .command(&["status", "--json"])
        .output()
        .await
        .expect("status");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 12);
    let total: i64 = rows
        .iter()
        .map(|r| r["records_archived"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total as usize, env.compare().await.matched);
    for r in rows {
        assert!(r["last_error"].is_null(), "{r}");
        assert!(r["lag_seconds"].as_i64().unwrap_or(i64::MAX) < 600, "{r}");
    }
    let text = env.command(&["status"]).output().await.expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("12 scope(s), 0 failing"), "{text}");
}
