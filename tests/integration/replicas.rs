//! Replicas: three archiver processes against one PostgreSQL database and one simulated tenant
//! share the scopes through leases and the tenant's rate budget through the replica registry.
//! One is SIGKILLed mid-pass; the others take over its scopes once its leases expire.

use crate::daemon::Daemon;
use crate::helpers::*;
use m365_archiver::replicas;
use m365_archiver::state::StateDb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The simulator's limit and the archivers' configured budget: the same, so any overshoot of
/// the combined rate shows as 429s.
const RPS: f64 = 20.0;

/// One `run --once` process.
fn start_replica(env: &Env) -> Daemon {
    Daemon::spawn(env.command(&["run", "--once"]))
}

/// The simulator's counters over time: when, interaction requests, other requests (each class
/// has a budget of its own).
type Samples = Arc<Mutex<Vec<(Instant, f64, f64)>>>;

fn sample_sim(env: &Env, stop: Arc<std::sync::atomic::AtomicBool>) -> Samples {
    let samples: Samples = Arc::default();
    let (sink, url) = (
        samples.clone(),
        format!("{}/_sim/stats", env.sim.authority()),
    );
    tokio::spawn(async move {
        // Bounded: the test ends long before.
        for _ in 0..400 {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Ok(stats) = fetch_stats(&url).await {
                let count = |class: &str| -> f64 {
                    stats["requests"][class]
                        .as_object()
                        .map(|m| m.values().filter_map(|v| v.as_f64()).sum())
                        .unwrap_or(0.0)
                };
                let sample = (Instant::now(), count("interactions"), count("other"));
                sink.lock().expect("samples").push(sample);
            }
            sleep_ms(250).await;
        }
    });
    samples
}

async fn fetch_stats(url: &str) -> Result<serde_json::Value, reqwest::Error> {
    reqwest::get(url).await?.json().await
}

/// One class's highest request rate over windows of at least three seconds, and the windows
/// that went over the budget (one second of burst and sampling jitter allowed).
fn rates(samples: &[(Instant, f64)]) -> (f64, Vec<String>) {
    let mut peak: f64 = 0.0;
    let mut over = Vec::new();
    for (i, (t0, n0)) in samples.iter().enumerate() {
        let Some((t1, n1)) = samples[i..]
            .iter()
            .find(|(t, _)| t.duration_since(*t0) >= Duration::from_secs(3))
        else {
            break;
        };
        let dt = t1.duration_since(*t0).as_secs_f64();
        peak = peak.max((n1 - n0) / dt);
        if n1 - n0 > RPS * dt + RPS + 2.0 {
            over.push(format!("{} requests in {dt:.2}s", n1 - n0));
        }
    }
    (peak, over)
}

async fn live_replicas(state: &StateDb) -> usize {
    let since = chrono::Utc::now() - chrono::Duration::from_std(replicas::TTL).expect("ttl");
    // Before the first replica has migrated the database there is no registry yet.
    state
        .live_replicas(since)
        .await
        .map_or(0, |rows| rows.len())
}

async fn leases(url: &str) -> Vec<(String, String)> {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT owner, work_key FROM leases")
        .fetch_all(&pool)
        .await
        .expect("leases");
    pool.close().await;
    rows
}

fn skip_postgres() -> bool {
    let skip = std::env::var("M365_SKIP_POSTGRES").is_ok()
        && std::env::var("M365_TEST_POSTGRES_URL").is_err();
    if skip {
        eprintln!("skipping: replicas need PostgreSQL (M365_SKIP_POSTGRES=1)");
    }
    skip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_budget_and_take_over_a_killed_one() {
    if skip_postgres() {
        return;
    }
    let mut sim = sim_config(36, 60);
    sim.rate_limits.interactions_rps = RPS;
    sim.rate_limits.other_rps = RPS;
    let opts = Opts {
        page_size: 10,
        rps: RPS,
        concurrency: 4,
        lease_ttl: "5s",
        ..Opts::default()
    };
    let env = Env::new(Db::Postgres, sim, &opts).await;
    let truth = env.truth().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = sample_sim(&env, stop.clone());
    let started = Instant::now();
    let mut replicas: Vec<Daemon> = (0..3).map(|_| start_replica(&env)).collect();

    // All three register; `status` lists them.
    let state = env.state().await;
    while live_replicas(&state).await < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replicas did not register"
        );
        sleep_ms(100).await;
    }
    let status = env
        .command(&["status", "--json"])
        .output()
        .await
        .expect("status");
    let view: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(view["replicas"].as_array().map(Vec::len), Some(3), "{view}");

    // Kill one mid-pass, while it holds leases.
    let victim = replicas.remove(0);
    let mark = format!(":{}:", victim.pid);
    let held = loop {
        let requests = samples.lock().expect("samples").last().map_or(0.0, |s| s.1);
        // Mid-pass: about a third of the ~300 interaction requests sent.
        let held: Vec<String> = leases(&env.state_url)
            .await
            .into_iter()
            .filter(|(owner, _)| owner.contains(&mark))
            .map(|(_, key)| key)
            .collect();
        if requests >= 80.0 && !held.is_empty() {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the victim never held a lease mid-pass; log:\n{}",
            victim.log()
        );
        sleep_ms(100).await;
    };
    let mut victim = victim;
    victim.child.start_kill().expect("SIGKILL");
    let _ = victim.child.wait().await;
    let killed_at = started.elapsed();

    for r in &mut replicas {
        let status = tokio::time::timeout(Duration::from_secs(45), r.child.wait())
            .await
            .unwrap_or_else(|_| panic!("a replica did not finish; log:\n{}", r.log()))
            .expect("wait");
        assert!(
            status.success(),
            "a surviving replica failed; log:\n{}",
            r.log()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "victim killed at {killed_at:?} holding {} lease(s); survivors done at {:?}",
        held.len(),
        started.elapsed()
    );

    // The victim's scopes were taken over: none of its leases is left, the archive is exact.
    let left: Vec<(String, String)> = leases(&env.state_url).await;
    assert!(left.iter().all(|(o, _)| !o.contains(&mark)), "{left:?}");
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
    assert_eq!(cmp.expected, truth.len());
    let catalogued = state.catalogue_count(Some("copilot")).await.expect("count");
    assert_eq!(
        catalogued as usize, cmp.matched,
        "a record was catalogued twice"
    );
    assert_eq!(
        env.record_files().len(),
        cmp.matched,
        "a record was stored twice"
    );

    // Each survivor split the budget three ways while the victim lived.
    for r in &replicas {
        let log = r.log();
        assert!(
            log.contains("3 live replica(s) share the tenant"),
            "log:\n{log}"
        );
    }

    // Together they stayed within the budget, and used it.
    let stats = fetch_stats(&format!("{}/_sim/stats", env.sim.authority()))
        .await
        .expect("stats");
    let requests = stats["total_requests"].as_f64().unwrap_or(0.0);
    let throttled = stats["responses_429"].as_f64().unwrap_or(0.0);
    assert!(
        throttled <= requests * 0.005,
        "{throttled} of {requests} requests answered 429"
    );
    let samples = samples.lock().expect("samples").clone();
    let interactions: Vec<(Instant, f64)> = samples.iter().map(|s| (s.0, s.1)).collect();
    let other: Vec<(Instant, f64)> = samples.iter().map(|s| (s.0, s.2)).collect();
    let (peak, over) = rates(&interactions);
    assert!(
        over.is_empty(),
        "interactions over the {RPS} rps budget: {over:?}"
    );
    let (_, over) = rates(&other);
    assert!(
        over.is_empty(),
        "other requests over the {RPS} rps budget: {over:?}"
    );
    assert!(
        peak >= RPS * 0.6,
        "the replicas used at most {peak:.1} rps of {RPS}"
    );
    eprintln!(
        "{requests} requests, {throttled} answered 429, interactions peak {peak:.1} rps over 3 s"
    );
}
