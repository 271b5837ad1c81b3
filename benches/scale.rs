//! Tenant scale (issue 7): a full pass over a large tenant of idle users, and `verify` over an
//! archive of a million record versions.
//!
//!   cargo bench --bench scale -- [--users N] [--records N] [--rps R] [--concurrency N]
//!                                [--runs N] [--skip-pass] [--skip-verify] [--postgres]
//!
//! 1. Pass: the simulator (in this process) with `--users` Copilot-licensed users and no
//!    interactions, its interactions limit raised to `--rps` (Graph's is 30 rps; at 30 rps a
//!    pass over 100,000 users takes 55 min, so the bench scales the rate up and keeps the
//!    ratio), and `m365-archiver run --once` as a child process with discovery by SKU, the
//!    same budget and `export.concurrency = --concurrency`, twice on one state database: the
//!    first pass (no checkpoints yet) and a steady-state pass (every user caught up). Reports
//!    each pass's wall time against the time the budget allows (interaction requests / rps),
//!    429s, the archiver's peak RSS (VmHWM) and CPU time, and checks that every user got a
//!    committed window.
//! 2. Verify: an archive of `--records` record versions (1,000 per user, manifests of 100
//!    records chained per user) written straight through the store's batch API and the state
//!    database, no Graph; then `m365-archiver verify` as a child process. Reports wall time,
//!    records/s, peak RSS and CPU time.
//!
//! State is SQLite in a temporary directory, or with `--postgres` a fresh database on the
//! cluster of `scripts/with-postgres.sh`. See docs/benchmarks.md.

#[path = "support/measure.rs"]
mod measure;

use futures::{StreamExt, TryStreamExt};
use m365_archiver::archive::fs::FsStore;
use m365_archiver::archive::{keys, sha256_hex, ArchiveStore, PutItem, PutOptions, PutOutcome};
use m365_archiver::manifest::{Manifest, ManifestEntry};
use m365_archiver::sim::{self, SimConfig};
use m365_archiver::state::{CatalogueEntry, ManifestRow, ScopeRecord, StateDb, WindowCommit};
use measure::{class_requests, median, run_child, run_command, Usage};
use std::path::Path;
use std::time::{Duration, Instant};

/// Record versions per user in the verify archive, and per manifest (window).
const RECORDS_PER_USER: u64 = 1000;
const RECORDS_PER_WINDOW: u64 = 100;
/// Users written at once while building the verify archive.
const BUILD_CONCURRENCY: usize = 4;

struct Args {
    users: u32,
    records: u64,
    rps: f64,
    concurrency: usize,
    runs: usize,
    pass: bool,
    verify: bool,
    postgres: bool,
    /// Keep the verify archive here (and reuse it if it is already there) instead of a tempdir.
    archive: Option<std::path::PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        users: 100_000,
        records: 1_000_000,
        rps: 1000.0,
        concurrency: 64,
        runs: 1,
        pass: true,
        verify: true,
        postgres: false,
        archive: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        let mut step = 2;
        match argv[i].as_str() {
            "--users" => a.users = next.parse().unwrap_or(a.users),
            "--records" => a.records = next.parse().unwrap_or(a.records),
            "--rps" => a.rps = next.parse().unwrap_or(a.rps),
            "--concurrency" => a.concurrency = next.parse().unwrap_or(a.concurrency),
            "--runs" => a.runs = next.parse().unwrap_or(a.runs),
            "--skip-pass" => (a.pass, step) = (false, 1),
            "--skip-verify" => (a.verify, step) = (false, 1),
            "--postgres" => (a.postgres, step) = (true, 1),
            "--archive" => a.archive = Some(next.into()),
            _ => step = 1,
        }
        i += step;
    }
    a
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("load before: {}", load_average());
    if args.pass {
        rt.block_on(pass_bench(&args));
    }
    if args.verify {
        rt.block_on(verify_bench(&args));
    }
    println!("load after: {}", load_average());
}

// ---------------------------------------------------------------------------------------------
// 1. A full pass over idle users

#[derive(Debug, Clone, Copy, Default)]
struct PassFigures {
    wall_s: f64,
    requests: f64,
    throttled: f64,
    budget_s: f64,
    span_s: f64,
    first_request_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
}

impl PassFigures {
    /// The pass's wall time over the time the budget allows: 1.0 is exactly at the budget.
    fn ratio(&self) -> f64 {
        self.wall_s / self.budget_s.max(1e-9)
    }
}

async fn pass_bench(args: &Args) {
    let rss_before = vm_rss_kib();
    let started = Instant::now();
    let sim = sim::spawn(sim_config(args), ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    println!(
        "simulator: {} users generated in {:.2} s; the bench process grew by {:.1} MiB",
        args.users,
        started.elapsed().as_secs_f64(),
        (vm_rss_kib() - rss_before) as f64 / 1024.0
    );
    let mut all = Vec::new();
    for run in 1..=args.runs {
        let dir = measure::run_dir(None);
        let state_url = state_url(dir.path(), args.postgres).await;
        let config = dir.path().join("bench.toml");
        let graph = format!(
            "[graph.rate_limits]\ninteractions_rps = {}\nother_rps = 1000\n",
            args.rps
        );
        let text = config_text(&sim.authority(), dir.path(), &state_url, &graph, args);
        std::fs::write(&config, text).expect("config");
        // First pass: no checkpoints, every user's first window; then the steady state.
        let first = measured_pass(&sim, &config, args).await;
        print_pass(run, "first", &first, args);
        let steady = measured_pass(&sim, &config, args).await;
        print_pass(run, "steady", &steady, args);
        check_every_user_committed(&state_url, args.users).await;
        all.push((first, steady));
    }
    sim.shutdown().await;
    for (phase, pick) in [
        (
            "first",
            (|f| f.0) as fn(&(PassFigures, PassFigures)) -> PassFigures,
        ),
        ("steady", |f| f.1),
    ] {
        let phase_figures: Vec<PassFigures> = all.iter().map(pick).collect();
        let med = |g: fn(&PassFigures) -> f64| median(phase_figures.iter().map(g).collect());
        println!(
            "{phase} pass median of {} run(s), {} idle users, {} rps, concurrency {}, {}: wall {:.1} s = {:.3} x the budget's {:.1} s | 429s {:.0} | CPU {:.1} s | peak RSS {:.1} MiB",
            all.len(), args.users, args.rps, args.concurrency, backend(args),
            med(|f| f.wall_s), med(PassFigures::ratio), med(|f| f.budget_s),
            med(|f| f.throttled), med(|f| f.cpu_s), med(|f| f.peak_rss_mib)
        );
    }
}

fn print_pass(run: usize, phase: &str, f: &PassFigures, args: &Args) {
    println!(
        "run {run} {phase} pass: {} users in {:.1} s; {:.0} interaction requests, which the {} rps budget allows in {:.1} s: ratio {:.3}; first interaction request after {:.1} s, last {:.1} s later; {:.0} answered 429; CPU {:.1} s ({:.2} ms per user); peak RSS {:.1} MiB; load {}",
        args.users, f.wall_s, f.requests, args.rps, f.budget_s, f.ratio(), f.first_request_s,
        f.span_s, f.throttled, f.cpu_s, f.cpu_s * 1000.0 / f64::from(args.users.max(1)),
        f.peak_rss_mib, load_average()
    );
}

fn sim_config(args: &Args) -> SimConfig {
    let mut cfg = SimConfig {
        users: args.users,
        unlicensed_users: 0,
        interactions_per_user: 0,
        history_days: 30,
        ..SimConfig::default()
    };
    cfg.rate_limits.interactions_rps = args.rps;
    // Discovery lists 999 users a page: about 100 requests for 100,000 users.
    cfg.rate_limits.other_rps = 1000.0;
    cfg
}

/// One `run --once` against the shared simulator, with its request counters reset first.
async fn measured_pass(sim: &sim::SimHandle, config: &Path, args: &Args) -> PassFigures {
    let http = reqwest::Client::new();
    http.delete(format!("{}/_sim/stats", sim.authority()))
        .send()
        .await
        .expect("reset stats");
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let (status, usage) = run_child(config);
    let wall = started.elapsed();
    assert!(status == 0, "archiver exited {status}");
    let stats: serde_json::Value = http
        .get(format!("{}/_sim/stats", sim.authority()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    pass_figures(&stats, started_at, wall, usage, args.rps)
}

/// Every user must have had its windows committed (manifest rows for each user).
async fn check_every_user_committed(state_url: &str, users: u32) {
    let state = StateDb::connect(state_url).await.expect("state");
    let committed = state
        .manifest_scopes()
        .await
        .expect("manifest scopes")
        .len();
    assert_eq!(committed, users as usize, "users with a committed window");
    state.close().await;
}

fn pass_figures(
    stats: &serde_json::Value,
    started_at: chrono::DateTime<chrono::Utc>,
    wall: Duration,
    usage: Usage,
    rps: f64,
) -> PassFigures {
    let (requests, throttled, span_s) = class_requests(stats, "interactions");
    let first = stats["class_span"]["interactions"]["first"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0.0, |t| {
            (t.timestamp_millis() - started_at.timestamp_millis()) as f64 / 1000.0
        });
    PassFigures {
        wall_s: wall.as_secs_f64(),
        requests,
        throttled,
        budget_s: requests / rps,
        span_s,
        first_request_s: first,
        cpu_s: usage.cpu.as_secs_f64(),
        peak_rss_mib: usage.max_rss_kib as f64 / 1024.0,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Verify over a large archive

async fn verify_bench(args: &Args) {
    let temp = measure::run_dir(None);
    let dir = args.archive.as_deref().unwrap_or(temp.path());
    let config = dir.join("bench.toml");
    let built = match reuse(&config).await {
        Some(n) => n,
        None => {
            let state_url = state_url(dir, args.postgres).await;
            let n = timed_build(dir, &state_url, args.records).await;
            let text = config_text("http://127.0.0.1:9", dir, &state_url, "", args);
            std::fs::write(&config, text).expect("config");
            n
        }
    };
    let mut all = Vec::new();
    for run in 1..=args.runs {
        let started = Instant::now();
        let (status, usage) = run_command(&config, &["verify"]);
        let wall = started.elapsed().as_secs_f64();
        assert!(status == 0, "verify exited {status}");
        let (cpu, rss) = (usage.cpu.as_secs_f64(), usage.max_rss_kib as f64 / 1024.0);
        println!(
            "verify run {run}: {built} record versions in {wall:.1} s = {:.0} records/s; CPU {cpu:.1} s; peak RSS {rss:.1} MiB; load {}",
            built as f64 / wall,
            load_average()
        );
        all.push((wall, cpu, rss));
    }
    println!(
        "verify median of {} run(s), {built} record versions, {}: wall {:.1} s | {:.0} records/s | CPU {:.1} s | peak RSS {:.1} MiB",
        all.len(),
        backend(args),
        median(all.iter().map(|f| f.0).collect()),
        built as f64 / median(all.iter().map(|f| f.0).collect()),
        median(all.iter().map(|f| f.1).collect()),
        median(all.iter().map(|f| f.2).collect()),
    );
    let cleanup = Instant::now();
    drop(temp);
    if args.archive.is_none() {
        println!(
            "removed the archive in {:.0} s",
            cleanup.elapsed().as_secs_f64()
        );
    }
}

async fn timed_build(dir: &Path, state_url: &str, records: u64) -> u64 {
    let started = Instant::now();
    let built = build_archive(dir, state_url, records).await;
    println!(
        "verify archive: {built} record versions ({} users, manifests of {RECORDS_PER_WINDOW}) built in {:.0} s; {}",
        built.div_ceil(RECORDS_PER_USER),
        started.elapsed().as_secs_f64(),
        disk_usage(dir)
    );
    built
}

/// The record count of an archive an earlier `--archive` run left complete (its config is
/// written last), or None.
async fn reuse(config: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(config).ok()?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("url = \""))?
        .trim_end_matches('"');
    let state = StateDb::connect(url).await.ok()?;
    let n = state.catalogue_count(None).await.ok()?;
    state.close().await;
    println!(
        "verify archive: reusing {n} record versions in {}",
        config.display()
    );
    u64::try_from(n).ok()
}

/// Writes `records` versions of Copilot interactions for `records / 1000` users with their
/// catalogue rows and manifest chains, as ingest would have; returns how many were written.
async fn build_archive(dir: &Path, state_url: &str, records: u64) -> u64 {
    let store = FsStore::new(dir.join("archive"));
    store.check().await.expect("store");
    let state = StateDb::connect(state_url).await.expect("state");
    state.migrate().await.expect("migrate");
    let users: Vec<ScopeRecord> = (0..records.div_ceil(RECORDS_PER_USER))
        .map(|u| ScopeRecord {
            id: user_id(u),
            label: Some(format!("user{u:06}@contoso.example")),
        })
        .collect();
    state
        .sync_scopes("user", &users, chrono::Utc::now())
        .await
        .expect("scopes");
    let (store, state) = (&store, &state);
    let written: Vec<u64> = futures::stream::iter(users.iter().enumerate())
        .map(|(u, scope)| {
            let n = RECORDS_PER_USER.min(records - u as u64 * RECORDS_PER_USER);
            build_user(store, state, &scope.id, n)
        })
        .buffer_unordered(BUILD_CONCURRENCY)
        .try_collect()
        .await
        .expect("build archive");
    state.close().await;
    written.iter().sum()
}

fn user_id(u: u64) -> String {
    format!("{:08x}-5ca1-4e00-8000-{:012x}", u, u * 7919)
}

/// One user's records, in windows of `RECORDS_PER_WINDOW`, each committed with its manifest.
async fn build_user(store: &FsStore, state: &StateDb, user: &str, n: u64) -> Result<u64, String> {
    let mut prev: Option<ManifestRow> = None;
    let mut written = 0;
    for (w, start) in (0..n).step_by(RECORDS_PER_WINDOW as usize).enumerate() {
        let ids: Vec<u64> = (start..n.min(start + RECORDS_PER_WINDOW)).collect();
        let entries = write_records(store, state, user, &ids).await?;
        written += entries.len() as u64;
        let row = commit_manifest(store, state, user, w as i64 + 1, prev.take(), entries).await?;
        prev = Some(row);
    }
    Ok(written)
}

/// Epoch ms of a user's `i`-th record (also its id and etag): one a minute from 2024-01-01.
fn record_ms(i: u64) -> i64 {
    1_704_067_200_000 + i as i64 * 60_000
}

async fn write_records(
    store: &FsStore,
    state: &StateDb,
    user: &str,
    ids: &[u64],
) -> Result<Vec<ManifestEntry>, String> {
    let now = chrono::Utc::now();
    let mut puts = Vec::with_capacity(ids.len());
    let mut rows = Vec::with_capacity(ids.len());
    for &i in ids {
        let id = record_ms(i).to_string();
        let bytes = bytes::Bytes::from(record_bytes(user, &id));
        let sha256 = sha256_hex(&bytes);
        let record_key = keys::record_key(&[user.to_string(), id.clone()]);
        let storage_key = keys::record_storage_key("copilot", &record_key, &id);
        rows.push(CatalogueEntry {
            source: "copilot".into(),
            record_key,
            etag: id.clone(),
            sha256: sha256.clone(),
            storage_key: storage_key.clone(),
            size_bytes: bytes.len() as i64,
            scope_id: user.to_string(),
            created_at: chrono::DateTime::from_timestamp_millis(record_ms(i)),
            archived_at: now,
        });
        let opts = PutOptions {
            sha256,
            ..PutOptions::default()
        };
        puts.push(PutItem {
            key: storage_key,
            bytes,
            opts,
        });
    }
    for result in store.put_many_create_only(puts, 16).await {
        match result {
            Ok(PutOutcome::Created) => {}
            other => return Err(format!("record not created: {other:?}")),
        }
    }
    state
        .catalogue_insert(&rows)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|r| ManifestEntry {
            key: r.storage_key,
            etag: r.etag,
            sha256: r.sha256,
            new: true,
        })
        .collect())
}

async fn commit_manifest(
    store: &FsStore,
    state: &StateDb,
    user: &str,
    seq: i64,
    prev: Option<ManifestRow>,
    entries: Vec<ManifestEntry>,
) -> Result<ManifestRow, String> {
    let ms = |e: &ManifestEntry| e.etag.parse::<i64>().unwrap_or(0);
    let (lo, hi) = (
        entries.iter().map(ms).min().unwrap_or(0),
        entries.iter().map(ms).max().unwrap_or(0),
    );
    let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let (start, end, now) = (time(lo - 1), time(hi + 1), chrono::Utc::now());
    let record_count = entries.len() as i64;
    let prev_sha256 = prev.map(|p| p.sha256);
    let manifest = Manifest::new(
        "copilot",
        user,
        seq,
        start,
        end,
        prev_sha256.clone(),
        now,
        entries,
    );
    let bytes = bytes::Bytes::from(manifest.to_bytes());
    let sha256 = sha256_hex(&bytes);
    let storage_key = keys::manifest_key("copilot", user, seq, &sha256);
    let opts = PutOptions {
        sha256: sha256.clone(),
        ..PutOptions::default()
    };
    store
        .put_create_only(&storage_key, bytes, &opts)
        .await
        .map_err(|e| e.to_string())?;
    let row = ManifestRow {
        source: "copilot".into(),
        scope_id: user.to_string(),
        seq,
        sha256,
        prev_sha256,
        storage_key,
        window_start: start,
        window_end: end,
        record_count,
        created_at: now,
    };
    let commit = WindowCommit {
        source: "copilot".into(),
        scope_id: user.to_string(),
        manifest: row.clone(),
        advance_to: Some(end),
        lookback_done_at: None,
        new_records: record_count,
        participants: Vec::new(),
        now,
    };
    state
        .commit_window(&commit)
        .await
        .map_err(|e| e.to_string())?;
    Ok(row)
}

/// A Copilot interaction of about 1 KiB, in the shape Graph returns (the bytes only need to
/// be stable and of a realistic size: verify hashes them).
fn record_bytes(user: &str, id: &str) -> Vec<u8> {
    let filler: String = (0..12)
        .map(|k| format!("{:016x}", filler_word(id, k)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"{{"id":"{id}","sessionId":"{user}-s","requestId":"{id}-r","appClass":"IPM.SkypeTeams.Message.Copilot.BizChat","interactionType":"userPrompt","conversationType":"bizchat","etag":"{id}","createdDateTime":"{id}","locale":"en-us","from":{{"user":{{"id":"{user}","displayName":"Bench User"}}}},"body":{{"contentType":"text","content":"Summarise the quarterly figures for the board and list the open risks. {filler} {filler}"}},"attachments":[],"links":[],"mentions":[],"contexts":[]}}"#
    )
    .into_bytes()
}

/// A cheap deterministic filler value (splitmix64 over the id's bytes).
fn filler_word(id: &str, k: u64) -> u64 {
    let mut z = id
        .bytes()
        .fold(k.wrapping_add(0x9E37_79B9_7F4A_7C15), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Shared

fn backend(args: &Args) -> &'static str {
    if args.postgres {
        "PostgreSQL"
    } else {
        "SQLite"
    }
}

/// SQLite in the run's directory, or a fresh database on scripts/with-postgres.sh's cluster.
async fn state_url(dir: &Path, postgres: bool) -> String {
    if !postgres {
        return format!("sqlite://{}/state.db", dir.display());
    }
    m365_archiver::state::testing::fresh_postgres_url()
        .await
        .expect("a fresh PostgreSQL database")
        .expect("--postgres needs PostgreSQL: run under scripts/with-postgres.sh")
}

fn config_text(authority: &str, dir: &Path, state_url: &str, graph: &str, args: &Args) -> String {
    let start = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    format!(
        r#"[graph]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "11111111-1111-4111-8111-111111111111"
client_secret = "sim-secret-do-not-use"
base_url = "{authority}/v1.0"
authority = "{authority}"
{graph}
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
concurrency = {concurrency}
[discovery]
mode = "sku"
sku_ids = ["{sku}"]
[log]
level = "warn"
"#,
        dir = dir.display(),
        concurrency = args.concurrency,
        sku = sim::COPILOT_SKU,
    )
}

/// This process's resident set now (the simulator lives here).
fn vm_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages (the machine is shared; figures need them beside).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn disk_usage(dir: &Path) -> String {
    std::process::Command::new("du")
        .args(["-sh"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().next().map(|v| format!("{v} on disk")))
        .unwrap_or_default()
}
