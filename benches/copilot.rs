//! Copilot interaction archiving throughput against the simulator at Microsoft's documented
//! rate limit (30 rps per tenant for getAllEnterpriseInteractions).
//!
//!   cargo bench --bench copilot -- [--users N] [--per-user N] [--runs N] [--rps R]
//!   scripts/with-postgres.sh cargo bench --bench copilot -- --replicas N [...]
//!
//! Each run starts a fresh simulated tenant (`m365-archiver sim`) and `m365-archiver run --once`
//! as child processes (CPU and peak RSS are the archiver's alone, from wait4's rusage), then
//! prints records/s, requests/s as a fraction of the budget, 429s, CPU seconds per 10k records
//! and peak RSS, and checks the archive against the ground truth. With several runs it prints
//! the median of each figure. With `--replicas N`, N `run --once` processes share one fresh
//! PostgreSQL database (from `scripts/with-postgres.sh`) and the one tenant: the budget used
//! and the 429s are then those of all of them together. See docs/benchmarks.md.

#[path = "support/measure.rs"]
mod measure;

use m365_archiver::archive::fs::FsStore;
use m365_archiver::groundtruth;
use measure::{
    class_requests, median, rate_profile, run_replicas, setup, state_url, SimProcess, Usage,
};
use std::time::{Duration, Instant};

struct Args {
    users: u32,
    per_user: u32,
    runs: usize,
    rps: f64,
    /// Archiver processes on one PostgreSQL database; None: one process on SQLite.
    replicas: Option<usize>,
}

fn parse_args() -> Args {
    let mut a = Args {
        users: 1000,
        per_user: 100,
        runs: 1,
        rps: 30.0,
        replicas: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--users" => a.users = next.parse().unwrap_or(a.users),
            "--per-user" => a.per_user = next.parse().unwrap_or(a.per_user),
            "--runs" => a.runs = next.parse().unwrap_or(a.runs),
            "--rps" => a.rps = next.parse().unwrap_or(a.rps),
            "--replicas" => a.replicas = next.parse().ok().filter(|n| *n >= 1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

#[derive(Debug, Clone, Default)]
struct Figures {
    records: f64,
    wall_s: f64,
    records_per_s: f64,
    requests: f64,
    requests_per_s: f64,
    budget_fraction: f64,
    throttled: f64,
    throttled_pct: f64,
    cpu_s_per_10k: f64,
    peak_rss_mib: f64,
    profile: String,
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut all = Vec::new();
    // Each run's 100,000 files are deleted at the end, not before the next run: see chats.rs.
    let mut dirs = Vec::new();
    for run in 1..=args.runs {
        let (f, dir) = rt.block_on(one_run(&args));
        dirs.push(dir);
        println!(
            "run {run}: {:.0} records in {:.1} s = {:.0} records/s; {:.0} interaction requests at {:.2} rps = {:.1}% of the {} rps budget; {:.0} answered 429 ({:.2}%); {:.3} CPU s per 10k records; peak RSS {:.1} MiB",
            f.records, f.wall_s, f.records_per_s, f.requests, f.requests_per_s,
            f.budget_fraction * 100.0, args.rps, f.throttled, f.throttled_pct, f.cpu_s_per_10k, f.peak_rss_mib
        );
        println!("run {run}: budget used {}", f.profile);
        all.push(f);
    }
    let med = |g: fn(&Figures) -> f64| median(all.iter().map(g).collect());
    println!(
        "median of {} run(s), {} users x {} interactions, {}: records/s {:.0} | budget used {:.1}% | 429s {:.2}% | CPU s/10k records {:.3} | peak RSS {:.1} MiB",
        all.len(), args.users, args.per_user, setup(args.replicas),
        med(|f| f.records_per_s), med(|f| f.budget_fraction) * 100.0, med(|f| f.throttled_pct),
        med(|f| f.cpu_s_per_10k), med(|f| f.peak_rss_mib)
    );
}

async fn one_run(args: &Args) -> (Figures, tempfile::TempDir) {
    let dir = measure::run_dir(None);
    let sim = SimProcess::start(dir.path(), &sim_toml(args));
    let authority = sim.authority.clone();
    sim.wait_ready().await;
    let config = dir.path().join("bench.toml");
    let state_url = state_url(dir.path(), args.replicas).await;
    let text = config_text(&authority, dir.path(), &state_url, args.rps);
    std::fs::write(&config, text).expect("config");

    let started = Instant::now();
    let usage = run_replicas(&config, args.replicas);
    let wall = started.elapsed();

    let stats: serde_json::Value = reqwest::get(format!("{authority}/_sim/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let truth = groundtruth::fetch(&authority, "copilot")
        .await
        .expect("truth");
    let store = FsStore::new(dir.path().join("archive"));
    let cmp = groundtruth::compare(&truth, &store, "copilot", chrono::Utc::now())
        .await
        .expect("compare");
    assert!(cmp.is_exact(), "{}", cmp.summary());
    drop(sim);
    (figures(&stats, cmp.matched as f64, wall, usage), dir)
}

/// The simulator runs as its own process so that this process stays small: a child's peak RSS
/// (ru_maxrss) includes what it inherited between fork and exec.
/// The simulator's configuration for a run: the tenant and Graph's documented 30 rps.
fn sim_toml(args: &Args) -> String {
    format!(
        "users = {}\ninteractions_per_user = {}\nhistory_days = 30\n[rate_limits]\ninteractions_rps = 30.0\n",
        args.users, args.per_user
    )
}

fn config_text(authority: &str, dir: &std::path::Path, state_url: &str, rps: f64) -> String {
    let start = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    format!(
        r#"[graph]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "11111111-1111-4111-8111-111111111111"
client_secret = "sim-secret-do-not-use"
base_url = "{authority}/v1.0"
authority = "{authority}"
[graph.rate_limits]
interactions_rps = {rps}
[state]
url = "{state_url}"
[store]
kind = "fs"
path = "{dir}/archive"
[export]
sources = ["copilot"]
start = "{start}"
max_window = "60d"
settle_lag = "1s"
concurrency = 32
[log]
level = "warn"
"#,
        dir = dir.display()
    )
}

fn figures(stats: &serde_json::Value, records: f64, wall: Duration, usage: Usage) -> Figures {
    let (requests, throttled, span_s) = class_requests(stats, "interactions");
    let wall_s = wall.as_secs_f64();
    Figures {
        records,
        wall_s,
        records_per_s: records / wall_s,
        requests,
        requests_per_s: requests / span_s.max(1e-9),
        budget_fraction: requests / span_s.max(1e-9) / 30.0,
        throttled,
        throttled_pct: if requests > 0.0 {
            throttled / requests * 100.0
        } else {
            0.0
        },
        cpu_s_per_10k: usage.cpu.as_secs_f64() / records.max(1.0) * 10_000.0,
        peak_rss_mib: usage.max_rss_kib as f64 / 1024.0,
        profile: rate_profile(stats, "interactions", 30.0),
    }
}
