//! The daemon as a service: SIGTERM mid-window (deadline, checkpoints, leases, resume), the
//! metrics endpoint against the simulator's ground truth, systemd notifications, SIGHUP reload,
//! the unit's verification and hardening score, and the configuration reference.

use crate::daemon::Daemon;
use crate::helpers::*;
use m365_archiver::archive::{sha256_hex, ArchiveStore};
use m365_archiver::groundtruth::{storage_key, TruthRecord};
use m365_archiver::ops::metrics::sample;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shutdown deadline the tests configure, and what they allow on top of it for process
/// start-up and teardown on a loaded 2-core machine.
const SHUTDOWN_TIMEOUT_S: u64 = 3;
const EXIT_SLACK: Duration = Duration::from_millis(2500);

/// The real binary running `run` with extra environment variables.
fn start(env: &Env, vars: &[(&str, String)]) -> Daemon {
    let mut cmd = env.command(&["run"]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Daemon::spawn(cmd)
}

/// Adds lines to the `[export]` table of the test configuration and appends other tables.
fn customise_config(env: &Env, export_lines: &str, tables: &str) {
    let text = std::fs::read_to_string(&env.config).expect("read config");
    let anchor = "[export]\n";
    assert!(text.contains(anchor));
    let text = text.replacen(anchor, &format!("{anchor}{export_lines}\n"), 1);
    std::fs::write(&env.config, format!("{text}\n{tables}\n")).expect("write config");
}

/// Every record created before a scope's watermark is in the store, byte-exact.
async fn assert_no_checkpoint_ahead(env: &Env, truth: &[TruthRecord]) {
    let state = env.state().await;
    let store = env.store();
    let mut by_user: HashMap<&str, Vec<&TruthRecord>> = HashMap::new();
    for r in truth {
        by_user.entry(r.scope.as_str()).or_default().push(r);
    }
    for row in state.status().await.expect("status") {
        let Some(mark) = row.checkpoint.watermark else {
            continue;
        };
        for r in by_user.get(row.scope_id.as_str()).into_iter().flatten() {
            if r.created >= mark {
                continue;
            }
            let key = storage_key(r);
            let bytes = store
                .get(&key)
                .await
                .expect("read store")
                .unwrap_or_else(|| {
                    panic!(
                        "checkpoint of {} at {mark} is ahead of the archive: {key} missing",
                        row.scope_id
                    )
                });
            assert_eq!(sha256_hex(&bytes), r.sha256, "{key} altered");
        }
    }
}

/// Our leases are gone (not merely expired: lease_ttl is far longer than the test) when another
/// owner can take every work key at once.
async fn assert_leases_released(env: &Env) {
    let state = env.state().await;
    for row in state.status().await.expect("status") {
        let key = format!("{}/{}", row.source, row.scope_id);
        let taken = state
            .try_lease(
                &key,
                "test-inspector",
                Duration::from_secs(60),
                chrono::Utc::now(),
            )
            .await
            .expect("try lease");
        assert!(taken, "lease {key} still held after shutdown");
        state
            .release_lease(&key, "test-inspector")
            .await
            .expect("release");
    }
}

/// SIGTERM while windows are in flight and Graph requests hang: the daemon exits within its
/// deadline, no checkpoint is ahead of the archive, its leases are released, and a restart
/// completes the archive.
async fn sigterm_mid_window(db: Db) {
    let mut sim = sim_config(24, 30);
    sim.faults.slow_rate = 1.0;
    sim.faults.slow_ms = 60;
    let opts = Opts {
        page_size: 5,
        max_window: "3d",
        concurrency: 4,
        lease_ttl: "10m",
        ..Opts::default()
    };
    let env = Env::new(db, sim, &opts).await;
    customise_config(
        &env,
        "poll_interval = \"1h\"",
        &format!("[service]\nshutdown_timeout = \"{SHUTDOWN_TIMEOUT_S}s\""),
    );
    let truth = env.truth().await;
    let mut daemon = start(&env, &[]);
    daemon
        .wait_for_nth("service ready", 1, Duration::from_secs(30))
        .await;
    // Some records archived, the pass far from done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.record_files().len() < 20 && Instant::now() < deadline {
        sleep_ms(50).await;
    }
    assert!(
        env.record_files().len() >= 20,
        "nothing archived; log:\n{}",
        daemon.log()
    );
    // From now on every Graph request hangs far longer than the shutdown deadline.
    let mut hang = sim_config(24, 30).faults;
    hang.slow_rate = 1.0;
    hang.slow_ms = 120_000;
    env.sim_put("/_sim/faults", serde_json::to_value(&hang).expect("faults"))
        .await;
    sleep_ms(400).await;
    let (status, took) = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    assert!(
        took <= Duration::from_secs(SHUTDOWN_TIMEOUT_S) + EXIT_SLACK,
        "took {took:?} to stop; log:\n{}",
        daemon.log()
    );
    eprintln!("stopped {took:?} after SIGTERM (deadline {SHUTDOWN_TIMEOUT_S}s, requests hanging)");
    assert!(daemon.count("stopped") >= 1, "{}", daemon.log());
    let cmp = env.compare().await;
    assert!(
        !cmp.missing.is_empty(),
        "the pass finished before SIGTERM: not a mid-window test"
    );
    assert_no_checkpoint_ahead(&env, &truth).await;
    assert_leases_released(&env).await;

    env.sim_put(
        "/_sim/faults",
        serde_json::to_value(sim_config(1, 1).faults).expect("faults"),
    )
    .await;
    env.run_until_ok(3).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_window_sqlite() {
    sigterm_mid_window(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_window_postgres() {
    if skip_postgres() {
        return;
    }
    sigterm_mid_window(Db::Postgres).await;
}

fn skip_postgres() -> bool {
    let skip = std::env::var("M365_SKIP_POSTGRES").is_ok()
        && std::env::var("M365_TEST_POSTGRES_URL").is_err();
    if skip {
        eprintln!("skipping the PostgreSQL variant (M365_SKIP_POSTGRES=1)");
    }
    skip
}

async fn sim_stats(env: &Env) -> serde_json::Value {
    let url = format!("{}/_sim/stats", env.sim.authority());
    reqwest::get(url)
        .await
        .expect("sim stats")
        .json()
        .await
        .expect("stats json")
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// Receives sd_notify datagrams the way systemd does, on a thread that keeps reading (a
/// full socket queue would block the sender).
fn notify_listener(dir: &Path) -> (Arc<Mutex<Vec<String>>>, String) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with the test process; bounded so a leaked thread cannot spin forever.
        let until = Instant::now() + Duration::from_secs(600);
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().expect("notes").push(msg);
            }
        }
    });
    (got, path.display().to_string())
}

/// After one pass under throttling, the metrics agree with the simulator's own counts and the
/// archive, the probes answer, and systemd heard READY, STATUS, WATCHDOG and STOPPING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_ground_truth_and_systemd_is_told() {
    let mut sim = sim_config(10, 25);
    // Below what the archiver is allowed to send: it gets 429s and must pause.
    sim.rate_limits.interactions_rps = 10.0;
    let opts = Opts {
        // Enough attempts that throttling delays users but fails none.
        max_attempts: 12,
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim, &opts).await;
    customise_config(
        &env,
        "poll_interval = \"1h\"",
        "[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    let (notes, sock_path) = notify_listener(env.dir.path());
    let mut daemon = start(
        &env,
        &[
            ("NOTIFY_SOCKET", sock_path),
            ("WATCHDOG_USEC", "2000000".into()),
        ],
    );
    let line = daemon
        .wait_for_nth("metrics endpoint listening", 1, Duration::from_secs(30))
        .await;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics.addr="))
        .expect("metrics.addr in the log line")
        .to_string();
    daemon
        .wait_for_nth("archive current:", 1, Duration::from_secs(120))
        .await;
    let (code, text) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(code, 200);
    let m =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));

    let truth = env.truth().await;
    assert_eq!(
        m(r#"m365_archiver_records_archived_total{source="copilot"}"#) as usize,
        truth.len()
    );
    let bytes: u64 = env
        .record_files()
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(
        m(r#"m365_archiver_archived_bytes_total{source="copilot"}"#) as u64,
        bytes
    );

    let stats = sim_stats(&env).await;
    let mut by_status: HashMap<String, u64> = HashMap::new();
    for (class, statuses) in stats["requests"].as_object().expect("requests") {
        if class == "token" {
            continue;
        }
        for (status, n) in statuses.as_object().expect("statuses") {
            *by_status.entry(status.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    for (status, n) in &by_status {
        let series = format!(r#"m365_archiver_graph_requests_total{{status="{status}"}}"#);
        assert_eq!(m(&series) as u64, *n, "{series}");
    }
    let throttled = stats["responses_429"].as_u64().expect("429s");
    assert!(
        throttled > 0,
        "the simulator never throttled: the test shows nothing"
    );
    assert_eq!(m("m365_archiver_graph_throttled_total") as u64, throttled);
    assert!(m("m365_archiver_graph_paused_milliseconds_total") > 0.0);
    let tokens: u64 = stats["requests"]["token"]
        .as_object()
        .map(|s| s.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(m("m365_archiver_token_requests_total") as u64, tokens);

    let rows = env.state().await.status().await.expect("status");
    let windows: i64 = rows.iter().map(|r| r.checkpoint.windows_completed).sum();
    let counted = m(r#"m365_archiver_windows_total{source="copilot",kind="catch-up"}"#)
        + sample(
            &text,
            r#"m365_archiver_windows_total{source="copilot",kind="look-back"}"#,
        )
        .unwrap_or(0.0);
    assert_eq!(counted as i64, windows);
    assert_eq!(
        m(r#"m365_archiver_scopes{source="copilot",state="current"}"#) as usize,
        rows.len()
    );
    assert_eq!(m(r#"m365_archiver_passes_total{outcome="ok"}"#), 1.0);
    assert_eq!(m("m365_archiver_ready"), 1.0);
    assert!(
        m(r#"m365_archiver_store_operation_seconds_count{op="put",outcome="created"}"#)
            >= truth.len() as f64
    );
    assert!(
        text.contains("m365_archiver_window_lag_seconds_bucket"),
        "{text}"
    );

    assert_eq!(get(&format!("http://{addr}/healthz")).await.0, 200);
    let (code, body) = get(&format!("http://{addr}/readyz")).await;
    assert_eq!(code, 200, "{body}");

    // The watchdog pings every quarter of WATCHDOG_USEC while idle.
    sleep_ms(1200).await;
    let (status, _) = daemon.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", daemon.log());
    sleep_ms(300).await;
    let all = notes.lock().expect("notes").join("\n");
    assert!(all.contains("READY=1"), "{all}");
    assert!(all.contains("STATUS=10 users current"), "{all}");
    assert!(all.contains("WATCHDOG=1"), "{all}");
    assert!(all.contains("STOPPING=1"), "{all}");
}

/// SIGHUP with a broken file keeps the running configuration; with a valid one the new poll
/// interval applies without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_schedule_and_refuses_a_bad_config() {
    let env = Env::new(Db::Sqlite, sim_config(4, 5), &Opts::default()).await;
    customise_config(&env, "poll_interval = \"1h\"", "");
    let good = std::fs::read_to_string(&env.config).expect("config");
    let mut daemon = start(&env, &[]);
    daemon
        .wait_for_nth("archive current:", 1, Duration::from_secs(60))
        .await;

    std::fs::write(
        &env.config,
        good.replace("overlap = \"5m\"", "overlap = \"0s\""),
    )
    .expect("write");
    daemon.signal(libc::SIGHUP);
    let refused = daemon
        .wait_for_nth("configuration reload refused", 1, Duration::from_secs(10))
        .await;
    assert!(refused.contains("export.overlap"), "{refused}");

    std::fs::write(
        &env.config,
        good.replace("poll_interval = \"1h\"", "poll_interval = \"1s\""),
    )
    .expect("write");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_nth("configuration reloaded", 1, Duration::from_secs(10))
        .await;
    // With the old hour-long interval no second pass would come.
    daemon
        .wait_for_nth("archive current:", 2, Duration::from_secs(20))
        .await;
    let (status, _) = daemon.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", daemon.log());
}

/// `systemd-analyze verify` accepts the units (the service and the per-tenant template)
/// without a complaint and their exposure is "OK".
#[tokio::test]
async fn systemd_unit_verifies_and_is_hardened() {
    for unit in ["m365-archiver.service", "m365-archiver@.service"] {
        check_unit(unit).await;
    }
}

async fn check_unit(unit: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(root.join("scripts/check-systemd-unit.sh"))
        .arg(root.join("systemd").join(unit))
        .arg(env!("CARGO_BIN_EXE_m365-archiver"))
        .output()
        .await
        .expect("run scripts/check-systemd-unit.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        eprintln!("\n!!!!! SKIPPED: systemd-analyze is not available and could not be installed:\n{stderr}\n");
        return;
    }
    assert!(out.status.success(), "{unit}: {stdout}\n{stderr}");
    let exposure: f64 = stdout
        .trim()
        .strip_prefix("exposure ")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure: {stdout}"));
    assert!(exposure <= 2.9, "{unit}: exposure {exposure}");
}

/// docs/configuration.md documents exactly the keys the configuration accepts.
#[test]
fn configuration_doc_lists_exactly_the_known_keys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/configuration.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let known: BTreeSet<String> = m365_archiver::config::KNOWN_KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md is out of date: undocumented keys {missing:?}, documented keys that do not exist {extra:?}"
    );
}

/// `status` after a pass: the overview says current and the store is healthy; `--user` shows
/// one user by UPN; an unknown user exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_overview_and_user_detail() {
    let env = Env::new(Db::Sqlite, sim_config(5, 6), &Opts::default()).await;
    env.run_until_ok(2).await;
    let out = env.command(&["status"]).output().await.expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("archive CURRENT: 5 users current"),
        "{text}"
    );
    assert!(text.contains("store: ok"), "{text}");
    assert!(text.contains("change notifications:"), "{text}");

    let rows = env.state().await.status().await.expect("status rows");
    let upn = rows[0].label.clone().expect("discovery stores the UPN");
    let out = env
        .command(&["status", "--user", &upn.to_uppercase()])
        .output()
        .await
        .expect("status --user");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&rows[0].scope_id) && text.contains("records archived"),
        "{text}"
    );
    assert!(!text.contains(&rows[1].scope_id), "{text}");

    let out = env
        .command(&["status", "--user", "nobody@nowhere.example"])
        .output()
        .await
        .expect("status --user");
    assert_eq!(out.status.code(), Some(1));
}
