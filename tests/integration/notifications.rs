//! Change notifications end to end: the real daemon with `[notifications]` on, against the
//! simulator's `/subscriptions` (validation handshake, encrypted delivery, signed validation
//! tokens, lifecycle events). New interactions must be archived through notifications within
//! seconds while polling waits an hour; a removed subscription is recreated and caught up;
//! with notifications healthy, Copilot polling is relaxed and saves its requests.

use crate::daemon::Daemon;
use crate::helpers::*;
use m365_archiver::groundtruth::TruthRecord;
use m365_archiver::notifications::cert;

use std::time::{Duration, Instant};

pub(crate) const CLIENT_STATE: &str = "integration-client-state-0123456789abcdef";

/// The daemon polling every `poll_interval`, logging at info.
pub(crate) fn start_daemon(env: &Env, poll_interval: &str) -> Daemon {
    let mut cmd = env.command(&["run"]);
    cmd.env("M365_ARCHIVER__EXPORT__POLL_INTERVAL", poll_interval)
        .env("RUST_LOG", "info");
    Daemon::spawn(cmd)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) async fn get_json(env: &Env, path: &str) -> serde_json::Value {
    let url = format!("{}{path}", env.sim.authority());
    reqwest::get(&url)
        .await
        .expect("sim control")
        .json()
        .await
        .expect("json")
}

/// An environment whose configuration turns notifications on: a fresh certificate, the
/// simulator's token signing key, a receiver on a free loopback port.
async fn notifications_env(users: u32, sweep_interval: &str) -> Env {
    notifications_env_with(Db::Sqlite, sim_config(users, 4), sweep_interval, "")
        .await
        .env
}

/// A notifications environment and what a test needs to post to its receiver itself.
pub(crate) struct NotifEnv {
    pub env: Env,
    /// The receiver's port on 127.0.0.1.
    pub port: u16,
    /// The certificate the daemon decrypts with (resource data is encrypted for it).
    pub certificate: cert::NewCertificate,
}

/// As `notifications_env`, on `db`, with `sim` and `extra` lines in `[notifications]`.
pub(crate) async fn notifications_env_with(
    db: Db,
    sim: m365_archiver::sim::SimConfig,
    sweep_interval: &str,
    extra: &str,
) -> NotifEnv {
    let env = Env::new(db, sim, &Opts::default()).await;
    let dir = env.dir.path().join("notifications");
    let new = cert::generate("integration", 2, chrono::Utc::now()).expect("certificate");
    let (cert_path, key_path) = cert::write(&dir, &new).expect("write certificate");
    let signing = reqwest::get(format!(
        "{}/_sim/notifications/signing-key",
        env.sim.authority()
    ))
    .await
    .expect("signing key")
    .text()
    .await
    .expect("signing key text");
    let keys_path = dir.join("signing.pem");
    std::fs::write(&keys_path, signing).expect("write signing key");
    let port = free_port();
    let section = format!(
        r#"
[notifications]
enabled = true
listen = "127.0.0.1:{port}"
notification_url = "http://127.0.0.1:{port}/notifications"
lifecycle_url = "http://127.0.0.1:{port}/lifecycle"
client_state = "{CLIENT_STATE}"
certificate = "{cert}"
private_key = "{key}"
certificate_id = "{id}"
validation_keys = "{keys}"
sweep_interval = "{sweep_interval}"
{extra}
"#,
        cert = cert_path.display(),
        key = key_path.display(),
        id = new.certificate_id,
        keys = keys_path.display(),
    );
    env.write_config(&Opts {
        extra: section,
        ..Opts::default()
    });
    NotifEnv {
        env,
        port,
        certificate: new,
    }
}

/// A plain connection pool on the state database, to read the notification tables as an
/// operator would (the `StateDb` pool is the crate's own).
pub(crate) async fn raw_state(env: &Env) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&env.state_url)
        .await
        .expect("connect to the state database")
}

/// The simulator's active subscriptions: (id, user id).
pub(crate) async fn sim_subscriptions(env: &Env) -> Vec<(String, String)> {
    let list = get_json(env, "/_sim/notifications/subscriptions").await;
    list.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["user_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

pub(crate) async fn wait_for_subscriptions(
    env: &Env,
    n: usize,
    daemon: &Daemon,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let subs = sim_subscriptions(env).await;
        if subs.len() == n {
            return subs;
        }
        assert!(
            Instant::now() < deadline,
            "{n} subscriptions not created (have {subs:?}); log:\n{}",
            daemon.log()
        );
        sleep_ms(200).await;
    }
}

/// Creates an interaction (a prompt and its response) for `user` now and waits up to 10 s
/// for both to be archived; returns them.
async fn create_and_wait(env: &Env, user: &str, daemon: &Daemon) -> Vec<TruthRecord> {
    let records = create_interaction(env, user, serde_json::json!({"with_response": true})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !archived(env, &records).await {
        assert!(
            Instant::now() < deadline,
            "not archived within 10 s of creation; log:\n{}",
            daemon.log()
        );
        sleep_ms(100).await;
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_interactions_arrive_by_notification_and_removed_subscriptions_come_back() {
    let env = notifications_env(3, "2h").await;
    // Polling every hour: within the test, only notifications can bring new records.
    let daemon = start_daemon(&env, "1h");
    let subs = wait_for_subscriptions(&env, 3, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;

    let user = subs[0].1.clone();
    let records = create_and_wait(&env, &user, &daemon).await;
    assert_eq!(records.len(), 2, "a prompt and its response");
    assert_eq!(
        daemon.count("catch-up pass"),
        0,
        "archived by notification, not by polling; log:\n{}",
        daemon.log()
    );
    let list = env
        .command(&["subscriptions", "list", "--json"])
        .output()
        .await
        .expect("subscriptions list");
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let mine = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["user_id"] == user.as_str()))
        .cloned()
        .expect("the user's subscription row");
    assert!(mine["last_notification_at"].is_i64(), "{mine}");

    // Graph removes the subscription: the daemon recreates it and polls that user at once.
    let removed = subs[0].0.clone();
    env.sim_post(
        &format!("/_sim/notifications/subscriptions/{removed}/lifecycle"),
        serde_json::json!({"event": "subscriptionRemoved"}),
    )
    .await;
    daemon
        .wait_for_nth("catch-up pass", 1, Duration::from_secs(15))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = sim_subscriptions(&env).await;
        let replaced = now.iter().any(|(id, u)| *u == user && *id != removed);
        if replaced && !now.iter().any(|(id, _)| *id == removed) && now.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscription not recreated: {now:?}; log:\n{}",
            daemon.log()
        );
        sleep_ms(200).await;
    }
    let status = env.command(&["status"]).output().await.expect("status");
    let said = text(&status);
    assert!(
        said.contains("change notifications: ok, users mode: 3 subscription(s)"),
        "{said}"
    );
    daemon.stop().await;
}

/// Graph asks for reauthorization: the daemon reauthorizes the subscription (Graph clears
/// the flag), nothing is recreated, and notifications keep bringing new interactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthorization_required_is_answered_and_delivery_goes_on() {
    let env = notifications_env(2, "2h").await;
    let daemon = start_daemon(&env, "1h");
    let subs = wait_for_subscriptions(&env, 2, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    let (id, user) = subs[0].clone();
    env.sim_post(
        &format!("/_sim/notifications/subscriptions/{id}/lifecycle"),
        serde_json::json!({"event": "reauthorizationRequired"}),
    )
    .await;
    let pending = |list: &serde_json::Value| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id.as_str())
            .map(|s| s["reauthorization_required"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = get_json(&env, "/_sim/notifications/subscriptions").await;
        match pending(&list) {
            Some(false) if daemon.count("reauthorizationRequired") > 0 => break,
            None => panic!("subscription {id} gone: {list}; log:\n{}", daemon.log()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "not reauthorized: {list}; log:\n{}",
            daemon.log()
        );
        sleep_ms(100).await;
    }
    assert_eq!(sim_subscriptions(&env).await.len(), 2, "nothing recreated");
    create_and_wait(&env, &user, &daemon).await;
    assert_eq!(daemon.count("catch-up pass"), 0, "{}", daemon.log());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_notifications_relax_copilot_polling() {
    let env = notifications_env(3, "1h").await;
    // Passes every 2 s: without notifications, each would ask every user's interactions.
    let daemon = start_daemon(&env, "2s");
    wait_for_subscriptions(&env, 3, &daemon).await;
    daemon
        .wait_for_nth("copilot polling relaxed", 1, Duration::from_secs(40))
        .await;
    let before = interactions_requests(&env).await;
    sleep_ms(5_000).await;
    let after = interactions_requests(&env).await;
    assert_eq!(
        after,
        before,
        "no Copilot poll while notifications cover every user; log:\n{}",
        daemon.log()
    );
    assert!(daemon.count("users_skipped=3") >= 2, "{}", daemon.log());
    daemon.stop().await;
}

pub(crate) async fn interactions_requests(env: &Env) -> u64 {
    let stats = get_json(env, "/_sim/stats").await;
    stats["requests"]["interactions"]
        .as_object()
        .map(|by_status| by_status.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// `cert new` as an operator runs it: the lines it prints make a configuration `config check`
/// accepts, the private key is 0600 and never printed, and a second run refuses to overwrite.
#[tokio::test]
async fn cert_new_prints_the_configuration_it_made() {
    use std::os::unix::fs::PermissionsExt;
    let env = notifications_env(1, "2h").await;
    let out = env.dir.path().join("fresh");
    let out_arg = out.display().to_string();
    let made = env
        .command(&["cert", "new", "--out", &out_arg, "--days", "30"])
        .output()
        .await
        .expect("cert new");
    let said = text(&made);
    assert_eq!(made.status.code(), Some(0), "{said}");
    let key_pem = std::fs::read_to_string(out.join("private-key.pem")).expect("key");
    let mode = std::fs::metadata(out.join("private-key.pem"))
        .expect("key metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let body = key_pem.lines().nth(1).expect("a PEM body line");
    assert!(!said.contains(body), "the private key is never printed");
    let lines: Vec<&str> = (said.lines())
        .filter(|l| {
            ["certificate =", "private_key =", "certificate_id ="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert_eq!(lines.len(), 3, "{said}");
    let config = std::fs::read_to_string(&env.config).expect("config");
    let swapped: String = (config.lines())
        .map(|l| {
            let key = l.split(" =").next().unwrap_or_default();
            lines
                .iter()
                .find(|n| n.split(" =").next() == Some(key))
                .copied()
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(swapped, config);
    std::fs::write(&env.config, swapped).expect("write config");
    let check = env
        .command(&["config", "check"])
        .output()
        .await
        .expect("check");
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    let again = env
        .command(&["cert", "new", "--out", &out_arg])
        .output()
        .await
        .expect("cert new again");
    assert_ne!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("exists"), "{}", text(&again));
    let key_after = std::fs::read_to_string(out.join("private-key.pem")).expect("key");
    assert_eq!(key_after, key_pem, "never overwritten");
}

#[tokio::test]
async fn a_bad_notifications_key_stops_with_78_naming_it() {
    let env = notifications_env(1, "2h").await;
    let config = std::fs::read_to_string(&env.config).expect("config");
    let bad = config.replace(
        "notification_url = \"http://127.0.0.1:",
        "notification_url = \"http://archiver.example.com:",
    );
    std::fs::write(&env.config, bad).expect("write");
    let out = env
        .command(&["config", "check"])
        .output()
        .await
        .expect("config check");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert!(said.contains("notifications.notification_url"), "{said}");
}
