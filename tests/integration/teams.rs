//! Teams communications end to end: chats, channel messages, meeting transcripts and
//! recordings, archived by the real binary from the simulator over HTTP, compared with the
//! simulator's ground truth (every version exactly once, byte-exact, content hashes matching).

use crate::helpers::*;
use m365_archiver::archive::{sha256_hex, ArchiveStore};
use m365_archiver::groundtruth::{self, storage_key, Comparison, TruthRecord};
use m365_archiver::sim::{FaultConfig, SimConfig, TeamsSimConfig};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const TEAMS_SOURCES: [&str; 4] = ["chats", "channels", "transcripts", "recordings"];
/// Microsoft 365 E5, which every simulated user holds: discovery lists every user with it.
const E5_SKU: &str = "06ebc4ee-1bb5-47dd-8120-11324bc54e06";

fn tenant(users: u32, teams: TeamsSimConfig) -> SimConfig {
    let mut cfg = SimConfig {
        users,
        unlicensed_users: 0,
        interactions_per_user: 0,
        history_days: 30,
        teams,
        ..SimConfig::default()
    };
    cfg.rate_limits.interactions_rps = 1000.0;
    cfg.rate_limits.other_rps = 1000.0;
    cfg
}

/// The issue's tenant: 100 users in 300 chats, 20 teams (two deleted) with replies, 30
/// meetings with transcripts and recordings (recordings scaled down to ~160 KB).
fn issue_tenant() -> SimConfig {
    tenant(
        100,
        TeamsSimConfig {
            chats: 300,
            messages_per_chat: 10,
            teams: 20,
            deleted_teams: 2,
            channels_per_team: 3,
            posts_per_channel: 6,
            max_replies: 2,
            meetings: 30,
            recording_bytes: 160_000,
            ..TeamsSimConfig::default()
        },
    )
}

struct TeamsOpts {
    sources: &'static [&'static str],
    model: Option<&'static str>,
    concurrency: usize,
    max_attempts: u32,
}

impl Default for TeamsOpts {
    fn default() -> Self {
        TeamsOpts {
            sources: &TEAMS_SOURCES,
            model: None,
            concurrency: 8,
            max_attempts: 6,
        }
    }
}

/// Replaces the harness's Copilot configuration with a Teams one.
fn write_teams_config(env: &Env, o: &TeamsOpts) {
    let sources: Vec<String> = o.sources.iter().map(|s| format!("\"{s}\"")).collect();
    let model = o
        .model
        .map(|m| format!("model = \"{m}\""))
        .unwrap_or_default();
    let start = (chrono::Utc::now() - chrono::Duration::days(32)).to_rfc3339();
    let text = format!(
        r#"
[graph]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "11111111-1111-4111-8111-111111111111"
client_secret = "{SECRET}"
base_url = "{base}"
authority = "{auth}"
max_attempts = {attempts}
backoff_base = "50ms"
backoff_max = "1s"
request_timeout = "10s"
[graph.rate_limits]
messages_rps = 200
other_rps = 300
per_team_rps = 4
[state]
url = "{state}"
[store]
kind = "fs"
path = "{archive}"
[export]
sources = [{sources}]
start = "{start}"
page_size = 50
overlap = "5m"
max_window = "40d"
settle_lag = "1s"
lookback = "1d"
lookback_interval = "1h"
concurrency = {conc}
lease_ttl = "5s"
[discovery]
mode = "sku"
sku_ids = ["{E5_SKU}"]
[teams]
{model}
content_timeout = "60s"
[log]
level = "info"
"#,
        base = env.sim.base_url(),
        auth = env.sim.authority(),
        attempts = o.max_attempts,
        state = env.state_url,
        archive = env.archive_path().display(),
        sources = sources.join(", "),
        conc = o.concurrency,
    );
    std::fs::write(&env.config, text).expect("write config");
}

async fn teams_env(db: Db, sim: SimConfig, o: &TeamsOpts) -> Env {
    let env = Env::new(db, sim, &Opts::default()).await;
    write_teams_config(&env, o);
    env
}

async fn truth_of(env: &Env, source: &str) -> Vec<TruthRecord> {
    groundtruth::fetch(&env.sim.authority(), source)
        .await
        .expect("ground truth")
}

async fn compare_source(env: &Env, source: &str) -> Comparison {
    let truth = truth_of(env, source).await;
    groundtruth::compare(&truth, &env.store(), source, chrono::Utc::now())
        .await
        .expect("compare")
}

/// Every Teams source must match its ground truth exactly; returns the comparisons.
async fn assert_archive_exact(env: &Env, sources: &[&str]) -> Vec<(String, Comparison)> {
    let mut out = Vec::new();
    for source in sources {
        let cmp = compare_source(env, source).await;
        assert!(cmp.is_exact(), "{source}: {}", cmp.summary());
        assert!(cmp.matched > 0, "{source}: nothing archived");
        eprintln!("{source}: {}", cmp.summary());
        out.push((source.to_string(), cmp));
    }
    out
}

/// Users keep editing, reacting, deleting and posting while the archiver runs.
fn start_churn(env: &Env, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = format!("{}/_sim/messages/churn", env.sim.authority());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut changes = 0;
        while !stop.load(Ordering::SeqCst) {
            let resp = client
                .post(&url)
                .json(&serde_json::json!({"count": 6}))
                .send()
                .await;
            if resp.is_ok_and(|r| r.status().is_success()) {
                changes += 6;
            }
            sleep_ms(150).await;
        }
        changes
    })
}

async fn sim_stats(env: &Env) -> serde_json::Value {
    reqwest::get(format!("{}/_sim/stats", env.sim.authority()))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

/// The issue's tenant through injected faults, edits and deletions during the export and
/// SIGKILL restarts: afterwards the archive equals the ground truth for every Teams source.
async fn teams_archive_equals_ground_truth(db: Db) {
    let mut sim = issue_tenant();
    sim.token_ttl_secs = 30;
    sim.faults = FaultConfig {
        error_rate: 0.03,
        storm_rate: 0.0005,
        storm_ms: 300,
        reset_rate: 0.02,
        malformed_rate: 0.01,
        truncated_rate: 0.01,
        expired_token_rate: 0.01,
        ..FaultConfig::default()
    };
    let env = teams_env(db, sim, &TeamsOpts::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let churn = start_churn(&env, stop.clone());
    let kills = kill_runs(&env, 3).await;
    env.run_until_ok(6).await;
    stop.store(true, Ordering::SeqCst);
    let changes = churn.await.expect("churn task");
    // The last changes fall inside the next pass's window once the settle lag has passed.
    sleep_ms(1_200).await;
    env.run_until_ok(4).await;
    eprintln!("{kills} SIGKILLs, {changes} changes made during the export");

    let cmps = assert_archive_exact(&env, &TEAMS_SOURCES).await;
    let chats = &cmps[0].1;
    assert!(
        chats.optional_matched > 0,
        "edits during the export: earlier versions stay archived"
    );
    assert!(
        cmps[3].1.content_matched >= 30,
        "every recording stored complete"
    );
    assert_each_version_once(&env, "chats", chats).await;
    assert_control_messages_typed(&env).await;
    let stats = sim_stats(&env).await;
    assert!(
        stats["faults"]["reset"].as_u64().unwrap_or(0) > 0,
        "faults were injected: {stats}"
    );

    // Idempotence: a further pass without faults or changes writes nothing and downloads no
    // content again.
    env.sim_put("/_sim/faults", serde_json::json!({})).await;
    let before = env.record_files();
    let content_before = env.store().list("content/").await.expect("list");
    let out = env.run_once().await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", tail(&log, 10));
    assert_eq!(
        env.record_files(),
        before,
        "a re-run must not write records"
    );
    assert_eq!(
        env.store().list("content/").await.expect("list"),
        content_before
    );
    assert!(
        !log.contains("content archived"),
        "content is not downloaded twice"
    );
}

/// SIGKILLs `kills` runs at random moments (fixed seed, so a failure reproduces).
async fn kill_runs(env: &Env, kills: usize) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20_261_203);
    let mut landed = 0;
    for _ in 0..kills * 3 {
        if landed >= kills {
            break;
        }
        let mut child = env
            .command(&["run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn archiver");
        let delay = rng.gen_range(400..2_500);
        tokio::select! {
            _ = child.wait() => {}
            _ = sleep_ms(delay) => {
                child.start_kill().expect("SIGKILL");
                let _ = child.wait().await;
                landed += 1;
            }
        }
    }
    landed
}

/// However many participants exported a message, each version is one file (the comparison
/// found every file to be a distinct known version) and every current version is catalogued.
/// A version stored by a run killed before cataloguing, and edited again before the next
/// pass, stays stored without a catalogue row: hence at most as many rows as files.
async fn assert_each_version_once(env: &Env, source: &str, cmp: &Comparison) {
    let files = env
        .record_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&format!("/records/{source}/")))
        .count();
    assert_eq!(
        files,
        cmp.matched + cmp.optional_matched,
        "{source}: one file per version"
    );
    let state = env.state().await;
    let catalogued = state.catalogue_count(Some(source)).await.expect("count") as usize;
    assert!(
        (cmp.matched..=files).contains(&catalogued),
        "{source}: {catalogued} catalogue rows for {} current versions and {files} files",
        cmp.matched
    );
}

/// The archiver sends `Prefer: include-unknown-enum-members`: control messages are stored as
/// systemEventMessage (without it, Graph types them unknownFutureValue and the bytes would
/// not match the ground truth).
async fn assert_control_messages_typed(env: &Env) {
    let truth = truth_of(env, "chats").await;
    let store = env.store();
    let system: Vec<&TruthRecord> = truth
        .iter()
        .filter(|r| {
            r.message_type.as_deref() == Some("systemEventMessage")
                && r.required(chrono::Utc::now())
        })
        .collect();
    assert!(!system.is_empty(), "the tenant has control messages");
    for r in system {
        let bytes = store
            .get(&storage_key(r))
            .await
            .expect("read")
            .expect("archived");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["messageType"], "systemEventMessage");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_archive_equals_ground_truth_sqlite() {
    teams_archive_equals_ground_truth(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_archive_equals_ground_truth_postgres() {
    teams_archive_equals_ground_truth(Db::Postgres).await;
}

fn small_tenant() -> SimConfig {
    tenant(
        12,
        TeamsSimConfig {
            chats: 20,
            messages_per_chat: 8,
            teams: 3,
            deleted_teams: 0,
            channels_per_team: 2,
            posts_per_channel: 4,
            max_replies: 2,
            meetings: 0,
            ..TeamsSimConfig::default()
        },
    )
}

/// An edit made after its window was archived is a new version in the next pass; the old
/// version stays, unchanged and read-only. A team deleted between passes is then read from
/// /teamwork/deletedTeams, so an edit in it is caught too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_after_archiving_is_a_new_version_and_the_old_one_stays() {
    let sources: &[&str] = &["chats", "channels"];
    let o = TeamsOpts {
        sources: &["chats", "channels"],
        ..TeamsOpts::default()
    };
    let env = teams_env(Db::Sqlite, small_tenant(), &o).await;
    env.run_until_ok(2).await;
    assert_archive_exact(&env, sources).await;

    let chat_msg = pick_unchanged(&truth_of(&env, "chats").await);
    let channel_msg = pick_unchanged(&truth_of(&env, "channels").await);
    let old_chat = env
        .store()
        .get(&storage_key(&chat_msg))
        .await
        .expect("read")
        .expect("archived");
    let team = channel_msg.identity()[0].clone();
    edit(&env, &chat_msg.identity()[0], &chat_msg.id).await;
    env.sim_post(&format!("/_sim/teams/{team}/delete"), serde_json::json!({}))
        .await;
    edit(&env, &channel_msg.identity()[1], &channel_msg.id).await;
    sleep_ms(1_200).await;
    let out = env.run_once().await;
    assert!(
        out.status.success(),
        "{}",
        tail(&String::from_utf8_lossy(&out.stderr), 10)
    );

    for (source, old) in [("chats", &chat_msg), ("channels", &channel_msg)] {
        let versions: Vec<TruthRecord> = truth_of(&env, source)
            .await
            .into_iter()
            .filter(|r| r.identity() == old.identity())
            .collect();
        assert_eq!(versions.len(), 2, "{source}: the edit is a second version");
        for v in &versions {
            let path = env.archive_path().join(storage_key(v));
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|_| panic!("{source}: {} not archived", v.etag));
            assert_eq!(
                sha256_hex(&bytes),
                v.sha256,
                "{source}: {} byte-exact",
                v.etag
            );
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o222, 0, "archived versions are read-only");
        }
    }
    let still = env
        .store()
        .get(&storage_key(&chat_msg))
        .await
        .expect("read")
        .expect("old version kept");
    assert_eq!(still, old_chat, "the old version is unchanged");
    assert_archive_exact(&env, sources).await;
}

/// A legal hold on a chat member covers every message of the chat, whichever member's export
/// stored it first (the archive keeps one copy; Teams keeps one in each member's mailbox); a
/// hold on a user outside the chat covers none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_a_member_covers_every_message_of_the_chat() {
    let o = TeamsOpts {
        sources: &["chats"],
        ..TeamsOpts::default()
    };
    let env = teams_env(Db::Sqlite, small_tenant(), &o).await;
    env.run_until_ok(2).await;
    let chats: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/chats", env.sim.authority()))
        .await
        .expect("chats")
        .json()
        .await
        .expect("json");
    let chat = chats
        .iter()
        .max_by_key(|c| members_of(c).len())
        .expect("a chat");
    let (chat_id, members) = (chat["id"].as_str().expect("id"), members_of(chat));
    assert!(members.len() >= 3, "a group chat: {members:?}");
    let keys: Vec<String> = truth_of(&env, "chats")
        .await
        .iter()
        .filter(|r| r.identity()[0] == chat_id)
        .map(storage_key)
        .filter(|k| env.archive_path().join(k).exists())
        .collect();
    assert!(
        keys.len() >= 8,
        "the chat's messages are archived: {keys:?}"
    );
    let outsider = chats
        .iter()
        .flat_map(members_of)
        .find(|u| !members.contains(u))
        .expect("a user outside the chat");

    let state = env.state().await;
    for user in members.iter().chain([&outsider]) {
        let out = env
            .command(&["hold", "add", "--user", user, "--reason", "matter 9"])
            .output()
            .await
            .expect("hold add");
        assert!(out.status.success(), "{}", text(&out));
        let mut held = Vec::new();
        for key in &keys {
            held.push(state.is_held(key).await.expect("is_held"));
        }
        let member = user != &outsider;
        assert!(
            held.iter().all(|h| *h == member),
            "a hold on {user} (member: {member}) must cover all of chat {chat_id} or none: {held:?}"
        );
        let out = env
            .command(&["hold", "release", "--user", user, "--reason", "closed"])
            .output()
            .await
            .expect("hold release");
        assert!(out.status.success(), "{}", text(&out));
    }
}

fn members_of(chat: &serde_json::Value) -> Vec<String> {
    chat["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A team deleted for good (gone from /teams and /teamwork/deletedTeams; Graph answers 404)
/// ends its final sweep with an audited warning instead of failing every pass forever, and
/// what was archived of it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_deleted_team_ends_its_final_sweep() {
    let o = TeamsOpts {
        sources: &["channels"],
        ..TeamsOpts::default()
    };
    let env = teams_env(Db::Sqlite, small_tenant(), &o).await;
    env.run_until_ok(2).await;
    let archived_before = env.record_files().len();
    let team = truth_of(&env, "channels").await[0].identity()[0].clone();
    env.sim_post(&format!("/_sim/teams/{team}/purge"), serde_json::json!({}))
        .await;

    let out = env.run_once().await;
    assert!(
        out.status.success(),
        "a vanished team must not fail the pass: {}",
        tail(&String::from_utf8_lossy(&out.stderr), 10)
    );
    let state = env.state().await;
    let audit = state.audit_list(50).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "final_sweep_resource_gone" && a.subject.ends_with(&team)),
        "the end of the sweep is audited: {audit:?}"
    );
    assert_eq!(
        env.record_files().len(),
        archived_before,
        "nothing archived is lost"
    );

    let before = sim_stats(&env).await["requests"]["messages"]["404"]
        .as_u64()
        .unwrap_or(0);
    assert!(before > 0, "the purged team answered 404");
    let out = env.run_once().await;
    assert!(out.status.success(), "{}", text(&out));
    let after = sim_stats(&env).await["requests"]["messages"]["404"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(after, before, "a closed final sweep is not retried");
}

/// A current, never-changed, exportable user message.
fn pick_unchanged(truth: &[TruthRecord]) -> TruthRecord {
    truth
        .iter()
        .find(|r| {
            r.message_type.as_deref() == Some("message")
                && r.exportable
                && !r.superseded
                && r.modified == Some(r.created)
        })
        .cloned()
        .expect("an unchanged message")
}

async fn edit(env: &Env, conversation: &str, message_id: &str) {
    let body = serde_json::json!({"conversation": conversation, "message_id": message_id, "action": "edit"});
    env.sim_post("/_sim/messages", body).await;
}

/// Older tenants answer 402 without `model`: the pass stops the source with a message that
/// explains the billing model, without retrying or asking once per user; with the model set,
/// the same tenant archives completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_required_stops_the_source_with_a_clear_message() {
    let mut sim = small_tenant();
    sim.teams.require_model = true;
    let o = TeamsOpts {
        sources: &["chats"],
        concurrency: 4,
        ..TeamsOpts::default()
    };
    let env = teams_env(Db::Sqlite, sim, &o).await;
    let out = env.run_once().await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a pass with failed scopes exits 1"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("teams.model"),
        "the error says what to set: {}",
        tail(&log, 5)
    );
    let stats = sim_stats(&env).await;
    let refused = stats["requests"]["messages"]["402"].as_u64().unwrap_or(0);
    assert!(
        (1..=4).contains(&refused),
        "402 is neither retried nor asked once per user: {refused} requests refused"
    );
    let status = env
        .command(&["status", "--json"])
        .output()
        .await
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let rows = v["rows"].as_array().expect("rows");
    assert!(
        rows.iter()
            .all(|r| r["last_error"].as_str().is_some_and(|e| e.contains("402"))),
        "{v}"
    );

    write_teams_config(
        &env,
        &TeamsOpts {
            model: Some("A"),
            ..o
        },
    );
    env.run_until_ok(2).await;
    assert_archive_exact(&env, &["chats"]).await;
}

/// A recording is streamed to disk while it is hashed: archiving one larger than the memory
/// budget keeps the archiver's peak RSS under 100 MiB. Transfers broken mid-way are resumed
/// with Range, and nothing partial is ever published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_stream_with_bounded_memory_and_resume() {
    const SIZE: u64 = 128 << 20;
    let mut sim = tenant(
        2,
        TeamsSimConfig {
            meetings: 1,
            recording_bytes: SIZE,
            ..TeamsSimConfig::default()
        },
    );
    sim.faults.content_reset_rate = 0.6;
    let o = TeamsOpts {
        sources: &["recordings"],
        max_attempts: 10,
        ..TeamsOpts::default()
    };
    let env = teams_env(Db::Sqlite, sim, &o).await;
    let config = env.config.clone();
    let (code, peak_rss_kib) = tokio::task::spawn_blocking(move || run_measured(&config))
        .await
        .expect("join");
    assert_eq!(code, 0, "the archiver succeeds through resets");
    let peak_mib = peak_rss_kib as f64 / 1024.0;
    eprintln!(
        "archiving a {} MiB recording: peak RSS {peak_mib:.1} MiB",
        SIZE >> 20
    );
    assert!(peak_mib < 100.0, "peak RSS {peak_mib:.1} MiB");
    let cmps = assert_archive_exact(&env, &["recordings"]).await;
    assert!(cmps[0].1.content_matched >= 1);
    let stats = sim_stats(&env).await;
    assert!(
        stats["requests"]["other"]["206"].as_u64().unwrap_or(0) > 0,
        "resumed with Range: {stats}"
    );
    let staging = env.archive_path().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no staged download left behind: {left:?}");
}

/// Runs `run --once` and returns its exit code and peak RSS (KiB): the process's own
/// high-water mark (VmHWM), sampled until it exits (ru_maxrss would also count the test
/// process's pages a spawned child shares until exec).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which std's Child does not see
fn run_measured(config: &std::path::Path) -> (i32, i64) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_m365-archiver"))
        .arg("--config")
        .arg(config)
        .args(["run", "--once"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn archiver");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: wait4 on our own child; rusage is plain old data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, Ordering::SeqCst);
    assert_eq!(rc, pid, "wait4");
    let peak = sampler.join().unwrap_or(0);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, peak)
}

/// The peak resident set of a live process, from /proc (kept until it is reaped).
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
