//! Teams benchmarks against the simulator at Microsoft's documented limits.
//!
//!   cargo bench --bench chats -- [--users N] [--chats N] [--per-chat N] [--runs N]
//!                                [--rps R] [--recording-mib N] [--skip-chats] [--skip-recording]
//!                                [--dir PATH]   (where state and archive live; default: TMPDIR)
//!                                [--concurrency N]  (export.concurrency; default 32)
//!                                [--pin]  (the simulator on CPU 0, the archiver on CPU 1)
//!                                [--source channels [--teams N] [--channels N] [--posts N]]
//!   scripts/with-postgres.sh cargo bench --bench chats -- --replicas N [...]
//!
//! 1. Chat messages: a fresh simulated tenant (every user in several 1:1, group and meeting
//!    chats, so each message is exported once per member), `m365-archiver run --once` with the
//!    chats source as a child process. Reports getAllMessages requests/s against the 200 rps
//!    budget, 429s, requests per archived message version, records/s, CPU and peak RSS, and
//!    checks the archive against the ground truth. With `--replicas N`, N `run --once`
//!    processes share one fresh PostgreSQL database, the simulator and the archive folder.
//!    With `--source channels`, the same for channel messages: teams of channels with root
//!    posts and replies instead of chats (each message exported once, per team, at most
//!    4 rps per team), under the same 200 rps getAllMessages budget.
//! 2. Recording streaming: one meeting with a recording of `--recording-mib` MiB (1 GiB by
//!    default), archived by a child process; reports its peak RSS (wait4's ru_maxrss) and the
//!    transfer rate, and checks the stored object's sha256 by streaming it back from disk.
//!
//! See docs/benchmarks.md.

#[path = "support/measure.rs"]
mod measure;

use m365_archiver::archive::fs::FsStore;
use m365_archiver::archive::ArchiveStore;
use m365_archiver::groundtruth;
use m365_archiver::sim::{self, SimConfig, TeamsSimConfig};
use measure::{
    class_requests, median, rate_profile, run_child, run_replicas, setup, state_url, Usage,
};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::{Duration, Instant};

const E5_SKU: &str = "06ebc4ee-1bb5-47dd-8120-11324bc54e06";

struct Args {
    users: u32,
    chats: u32,
    per_chat: u32,
    runs: usize,
    rps: f64,
    recording_mib: u64,
    chats_bench: bool,
    recording_bench: bool,
    /// Where each run's state and archive live (a new directory inside it per run).
    dir: Option<std::path::PathBuf>,
    /// export.concurrency of each process.
    concurrency: usize,
    /// N processes on PostgreSQL instead of one on SQLite.
    replicas: Option<usize>,
    /// The simulator (this process) on CPU 0, the archiver on CPU 1.
    pin: bool,
    /// `chats`, or `channels`: `teams` teams of `channels` channels of `posts` root posts
    /// (with up to three replies each) instead of chats.
    source: &'static str,
    teams: u32,
    channels: u32,
    posts: u32,
}

fn parse_args() -> Args {
    let mut a = Args {
        users: 1000,
        chats: 3000,
        per_chat: 20,
        runs: 1,
        rps: 200.0,
        recording_mib: 1024,
        chats_bench: true,
        recording_bench: true,
        dir: None,
        replicas: None,
        concurrency: 32,
        pin: false,
        source: "chats",
        teams: 100,
        channels: 4,
        posts: 40,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        let mut step = 2;
        match argv[i].as_str() {
            "--users" => a.users = next.parse().unwrap_or(a.users),
            "--chats" => a.chats = next.parse().unwrap_or(a.chats),
            "--per-chat" => a.per_chat = next.parse().unwrap_or(a.per_chat),
            "--runs" => a.runs = next.parse().unwrap_or(a.runs),
            "--rps" => a.rps = next.parse().unwrap_or(a.rps),
            "--recording-mib" => a.recording_mib = next.parse().unwrap_or(a.recording_mib),
            "--skip-chats" => (a.chats_bench, step) = (false, 1),
            "--skip-recording" => (a.recording_bench, step) = (false, 1),
            "--dir" => a.dir = Some(next.into()),
            "--concurrency" => a.concurrency = next.parse().unwrap_or(a.concurrency).max(1),
            "--replicas" => a.replicas = next.parse().ok().filter(|n| *n >= 1),
            "--pin" => (a.pin, step) = (true, 1),
            "--source" if next == "channels" => a.source = "channels",
            "--source" => a.source = "chats",
            "--teams" => a.teams = next.parse().unwrap_or(a.teams),
            "--channels" => a.channels = next.parse().unwrap_or(a.channels),
            "--posts" => a.posts = next.parse().unwrap_or(a.posts),
            _ => step = 1,
        }
        i += step;
    }
    a
}

#[derive(Debug, Clone, Default)]
struct ChatFigures {
    versions: f64,
    wall_s: f64,
    versions_per_s: f64,
    requests: f64,
    requests_per_s: f64,
    budget_fraction: f64,
    throttled_pct: f64,
    requests_per_version: f64,
    cpu_s_per_10k: f64,
    peak_rss_mib: f64,
    profile: String,
}

fn main() {
    let args = parse_args();
    if args.pin {
        measure::pin(&[0], &[1]).expect("--pin needs two CPUs");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if args.chats_bench {
        let mut all = Vec::new();
        // Removing a run's 60k files just before the next run's writes would make the next
        // run pay for the deletion (ext4 skips recently freed inodes): keep them to the end.
        let mut dirs = Vec::new();
        for run in 1..=args.runs {
            let (backfill, resweep, dir) = rt.block_on(chat_run(&args));
            dirs.push(dir);
            print_chat(args.source, run, "backfill", &backfill, args.rps);
            print_chat(args.source, run, "re-sweep", &resweep, args.rps);
            all.push((backfill, resweep));
        }
        let med = |g: fn(&(ChatFigures, ChatFigures)) -> f64| median(all.iter().map(g).collect());
        let tenant = match args.source {
            "channels" => format!(
                "{} teams x {} channels x {} posts (with replies)",
                args.teams, args.channels, args.posts
            ),
            _ => format!(
                "{} users, {} chats x {} messages",
                args.users, args.chats, args.per_chat
            ),
        };
        println!(
            "{} median of {} run(s), {tenant}, {}, concurrency {}{}: backfill budget used {:.1}% (429s {:.2}%, {:.0} versions/s, {:.4} requests per archived version, CPU s/10k {:.3}, peak RSS {:.1} MiB) | re-sweep budget used {:.1}% (429s {:.2}%)",
            args.source, all.len(), setup(args.replicas), args.concurrency,
            if args.pin { ", simulator and archiver on a CPU each" } else { "" },
            med(|f| f.0.budget_fraction) * 100.0, med(|f| f.0.throttled_pct), med(|f| f.0.versions_per_s),
            med(|f| f.0.requests_per_version), med(|f| f.0.cpu_s_per_10k), med(|f| f.0.peak_rss_mib),
            med(|f| f.1.budget_fraction) * 100.0, med(|f| f.1.throttled_pct)
        );
    }
    if args.recording_bench {
        let (rss, wall, size) = rt.block_on(recording_run(args.recording_mib));
        println!(
            "recording: {} MiB archived in {:.1} s ({:.0} MiB/s end to end, listing and hashing included); archiver peak RSS {:.1} MiB",
            size >> 20,
            wall.as_secs_f64(),
            (size >> 20) as f64 / wall.as_secs_f64(),
            rss
        );
    }
}

fn print_chat(source: &str, run: usize, phase: &str, f: &ChatFigures, rps: f64) {
    println!(
        "{source} run {run} {phase}: {:.0} message versions checked, pass {:.1} s; {:.0} getAllMessages requests at {:.1} rps = {:.1}% of the {rps} rps budget; 429s {:.2}%; {:.4} requests per archived version; {:.3} CPU s per 10k versions; peak RSS {:.1} MiB",
        f.versions, f.wall_s, f.requests, f.requests_per_s, f.budget_fraction * 100.0,
        f.throttled_pct, f.requests_per_version, f.cpu_s_per_10k, f.peak_rss_mib
    );
    println!("{source} run {run} {phase}: budget used {}", f.profile);
}

/// The backfill (every version new) and then a look-back re-sweep of the same 30 days (every
/// version already archived): the first is bound by the store, the second by the budget.
async fn chat_run(args: &Args) -> (ChatFigures, ChatFigures, tempfile::TempDir) {
    let mut cfg = SimConfig {
        users: args.users,
        unlicensed_users: 0,
        interactions_per_user: 0,
        history_days: 30,
        teams: match args.source {
            "channels" => TeamsSimConfig {
                teams: args.teams,
                channels_per_team: args.channels,
                posts_per_channel: args.posts,
                ..TeamsSimConfig::default()
            },
            _ => TeamsSimConfig {
                chats: args.chats,
                messages_per_chat: args.per_chat,
                ..TeamsSimConfig::default()
            },
        },
        ..SimConfig::default()
    };
    cfg.rate_limits.messages_rps = 200.0;
    cfg.rate_limits.other_rps = 1000.0;
    let sim = sim::spawn(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    let dir = measure::run_dir(args.dir.as_deref());
    let config = dir.path().join("bench.toml");
    let graph = format!(
        "[graph.rate_limits]\nmessages_rps = {}\nother_rps = 100\n",
        args.rps
    );
    let state = state_url(dir.path(), args.replicas).await;
    let write = |export: &str| {
        let text = config_text(
            &sim.authority(),
            dir.path(),
            &state,
            args.source,
            &graph,
            export,
            args.concurrency,
        );
        std::fs::write(&config, text).expect("config");
    };
    write("");
    let backfill = measured_chat_pass(&sim, &config, args).await;
    let store = FsStore::new(dir.path().join("archive"));
    let stored = store.list("records/").await.expect("list").len();
    // Look back over the whole history at once: every page is made of versions already
    // archived, so this pass shows the request pacing alone.
    write("lookback = \"40d\"\nlookback_interval = \"1s\"");
    let resweep = measured_chat_pass(&sim, &config, args).await;
    assert_eq!(
        store.list("records/").await.expect("list").len(),
        stored,
        "a re-sweep stores nothing new"
    );
    sim.shutdown().await;
    (backfill, resweep, dir)
}

/// One `run --once` with fresh simulator counters; checks the archive afterwards.
async fn measured_chat_pass(
    sim: &sim::SimHandle,
    config: &std::path::Path,
    args: &Args,
) -> ChatFigures {
    reqwest::Client::new()
        .delete(format!("{}/_sim/stats", sim.authority()))
        .send()
        .await
        .expect("reset stats");
    let started = Instant::now();
    let usage = run_replicas(config, args.replicas);
    let wall = started.elapsed();
    let stats: serde_json::Value = reqwest::get(format!("{}/_sim/stats", sim.authority()))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let truth = groundtruth::fetch(&sim.authority(), args.source)
        .await
        .expect("truth");
    let archive = config.parent().expect("dir").join("archive");
    let cmp = groundtruth::compare(
        &truth,
        &FsStore::new(archive),
        args.source,
        chrono::Utc::now(),
    )
    .await
    .expect("compare");
    assert!(cmp.is_exact(), "{}", cmp.summary());
    chat_figures(&stats, cmp.matched as f64, wall, usage, args.rps)
}

async fn recording_run(mib: u64) -> (f64, Duration, u64) {
    let mut cfg = SimConfig {
        users: 2,
        unlicensed_users: 0,
        interactions_per_user: 0,
        teams: TeamsSimConfig {
            meetings: 1,
            recording_bytes: mib << 20,
            ..TeamsSimConfig::default()
        },
        ..SimConfig::default()
    };
    cfg.rate_limits.other_rps = 1000.0;
    let sim = sim::spawn(cfg, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator");
    let dir = measure::run_dir(None);
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        config_text(
            &sim.authority(),
            dir.path(),
            &format!("sqlite://{}/state.db", dir.path().display()),
            "recordings",
            "",
            "",
            32,
        ),
    )
    .expect("config");
    let started = Instant::now();
    let (status, usage) = run_child(&config);
    let wall = started.elapsed();
    assert!(status == 0, "archiver exited {status}");
    let truth = groundtruth::fetch(&sim.authority(), "recordings")
        .await
        .expect("truth");
    let mut size = 0;
    for r in &truth {
        let (key, c) = (
            r.content_key().expect("content key"),
            r.content.as_ref().expect("content"),
        );
        let path = dir.path().join("archive").join(&key);
        assert_eq!(stream_sha256(&path), c.sha256, "{key}");
        size += c.size;
    }
    sim.shutdown().await;
    (usage.max_rss_kib as f64 / 1024.0, wall, size)
}

/// sha256 of a file read in 1 MiB pieces.
fn stream_sha256(path: &std::path::Path) -> String {
    let mut f = std::fs::File::open(path).expect("stored content");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

fn config_text(
    authority: &str,
    dir: &std::path::Path,
    state_url: &str,
    source: &str,
    extra: &str,
    export_extra: &str,
    concurrency: usize,
) -> String {
    let start = (chrono::Utc::now() - chrono::Duration::days(32)).to_rfc3339();
    format!(
        r#"[graph]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "11111111-1111-4111-8111-111111111111"
client_secret = "sim-secret-do-not-use"
base_url = "{authority}/v1.0"
authority = "{authority}"
{extra}
[state]
url = "{state_url}"
[store]
kind = "fs"
path = "{dir}/archive"
[export]
sources = ["{source}"]
start = "{start}"
max_window = "60d"
settle_lag = "1s"
page_size = 50
concurrency = {concurrency}
{export_extra}
[discovery]
mode = "sku"
sku_ids = ["{E5_SKU}"]
[teams]
content_timeout = "30m"
[log]
level = "warn"
"#,
        dir = dir.display()
    )
}

fn chat_figures(
    stats: &serde_json::Value,
    versions: f64,
    wall: Duration,
    usage: Usage,
    budget: f64,
) -> ChatFigures {
    let (requests, throttled, span_s) = class_requests(stats, "messages");
    let span_s = span_s.max(1e-9);
    let wall_s = wall.as_secs_f64();
    ChatFigures {
        versions,
        wall_s,
        versions_per_s: versions / wall_s,
        requests,
        requests_per_s: requests / span_s,
        budget_fraction: requests / span_s / budget,
        throttled_pct: if requests > 0.0 {
            throttled / requests * 100.0
        } else {
            0.0
        },
        requests_per_version: requests / versions.max(1.0),
        cpu_s_per_10k: usage.cpu.as_secs_f64() / versions.max(1.0) * 10_000.0,
        peak_rss_mib: usage.max_rss_kib as f64 / 1024.0,
        profile: rate_profile(stats, "messages", budget),
    }
}
