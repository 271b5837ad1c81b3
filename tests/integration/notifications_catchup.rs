//! Notifications lost on the way, a subscription Graph removes mid-stream, and a receiver
//! killed with accepted items still queued: each ends with the archive equal to the ground
//! truth, and each test shows which mechanism closed the gap (the sweep, a `missed` catch-up,
//! the durable queue).

use crate::daemon::Daemon;
use crate::helpers::*;
use crate::notifications::{
    get_json, notifications_env_with, raw_state, sim_subscriptions, start_daemon,
    wait_for_subscriptions,
};
use m365_archiver::groundtruth::storage_key;
use m365_archiver::sim::SimConfig;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A simulator whose notification retries are quick (a killed receiver comes back in seconds).
fn fast_retry_sim(users: u32) -> SimConfig {
    let mut sim = sim_config(users, 4);
    sim.notifications.retry_initial_ms = 200;
    sim.notifications.retry_max_ms = 1_000;
    sim
}

/// Creates interactions (a prompt and its response each) round-robin over `users`, `per_sec`
/// a second for `secs` seconds; returns how many. Each user's ids stay distinct.
async fn stream(env: &Env, users: &[String], per_sec: u32, secs: u32) -> usize {
    let gap = Duration::from_millis(1000 / u64::from(per_sec.max(1)));
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let n = (per_sec * secs) as usize;
    for i in 0..n {
        let user = users[i % users.len()].as_str();
        let now = chrono::Utc::now().timestamp_millis();
        let ms = last.get(user).map_or(now, |l| now.max(l + 5));
        last.insert(user, ms);
        create(env, user, ms).await;
        tokio::time::sleep(gap).await;
    }
    n
}

async fn create(env: &Env, user: &str, ms: i64) {
    let created = chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    env.sim_post(
        "/_sim/interactions",
        serde_json::json!({"user_id": user, "created": created, "with_response": true,
                           "response_delay_ms": 2}),
    )
    .await;
}

/// Waits until the archive equals the ground truth; panics with the difference after `within`.
async fn wait_exact(env: &Env, within: Duration, daemon: &Daemon) {
    let deadline = Instant::now() + within;
    loop {
        let cmp = env.compare().await;
        if cmp.is_exact() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}; log tail:\n{}",
            cmp.summary(),
            tail(&daemon.log(), 40)
        );
        sleep_ms(250).await;
    }
}

/// (user, interaction id) of every notification the simulator dropped on purpose.
async fn dropped(env: &Env) -> BTreeSet<(String, String)> {
    let log = get_json(env, "/_sim/notifications/log").await;
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["outcome"] == "dropped")
        .map(|e| {
            (
                e["user_id"].as_str().unwrap_or_default().to_owned(),
                e["interaction_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn users_of(subs: &[(String, String)]) -> Vec<String> {
    subs.iter().map(|(_, u)| u.clone()).collect()
}

/// 30% of notifications lost (seeded), nothing tells the daemon: the sweep bounds the gap.
/// Polling is relaxed to `sweep_interval` (4 s here) for users notifications cover; each
/// relaxed user is still polled that often, and that poll archives what was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_notifications_are_swept_up() {
    let ne = notifications_env_with(Db::Sqlite, sim_config(4, 4), "4s", "").await;
    let env = &ne.env;
    let daemon = start_daemon(env, "2s");
    let subs = wait_for_subscriptions(env, 4, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    env.sim_put(
        "/_sim/notifications/drop",
        serde_json::json!({"probability": 0.3, "seed": 7}),
    )
    .await;
    stream(env, &users_of(&subs), 5, 6).await;
    let lost = dropped(env).await;
    assert!(!lost.is_empty(), "the seeded policy dropped some");
    wait_exact(env, Duration::from_secs(20), &daemon).await;
    assert!(
        daemon.count("copilot polling relaxed") > 0,
        "polling was relaxed, so the sweep (not constant polling) closed the gap; log:\n{}",
        daemon.log()
    );
    daemon.stop().await;
}

/// Every notification lost and nothing tells the daemon (no `missed`): the first relaxed
/// poll that stores interactions created while their users were subscribed is a gap, and the
/// daemon sweeps every user at once (a catch-up pass for the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_notifications_sweeps_every_user() {
    let ne = notifications_env_with(Db::Sqlite, sim_config(4, 4), "5s", "gap_grace = \"1s\"").await;
    let env = &ne.env;
    let daemon = start_daemon(env, "1s");
    let subs = wait_for_subscriptions(env, 4, &daemon).await;
    daemon
        .wait_for_nth("copilot polling relaxed", 1, Duration::from_secs(60))
        .await;
    assert_eq!(daemon.count("gap in notifications"), 0, "{}", daemon.log());
    env.sim_put(
        "/_sim/notifications/drop",
        serde_json::json!({"probability": 1.0, "seed": 5}),
    )
    .await;
    let made = stream(env, &users_of(&subs), 4, 2).await;
    assert_eq!(
        dropped(env).await.len(),
        2 * made,
        "every prompt and response lost"
    );
    wait_exact(env, Duration::from_secs(30), &daemon).await;
    daemon
        .wait_for_nth(
            "gap in notifications: polling stored",
            1,
            Duration::from_secs(15),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(daemon.log().lines())
        .any(|l| l.contains("catch-up pass") && l.contains("gap in notifications"))
    {
        assert!(
            Instant::now() < deadline,
            "no catch-up pass for the gap; log:\n{}",
            daemon.log()
        );
        sleep_ms(100).await;
    }
    daemon.stop().await;
}

/// Lost notifications followed by Graph's `missed` lifecycle event: with polling an hour away,
/// the archive lacks exactly the dropped records until `missed` arrives, then the catch-up pass
/// brings it to the ground truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_events_trigger_a_catch_up_that_closes_the_gap() {
    let ne = notifications_env_with(Db::Sqlite, sim_config(4, 4), "1h", "").await;
    let env = &ne.env;
    let daemon = start_daemon(env, "1h");
    let subs = wait_for_subscriptions(env, 4, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    env.sim_put(
        "/_sim/notifications/drop",
        serde_json::json!({"probability": 0.3, "seed": 11}),
    )
    .await;
    stream(env, &users_of(&subs), 5, 4).await;
    env.sim_put("/_sim/notifications/drop", serde_json::json!({}))
        .await;
    let lost = dropped(env).await;
    assert!(!lost.is_empty(), "the seeded policy dropped some");
    // Everything delivered is archived; only the dropped records are missing.
    let lost_keys: BTreeSet<String> = env
        .truth()
        .await
        .iter()
        .filter(|r| lost.contains(&(r.scope.clone(), r.id.clone())))
        .map(storage_key)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let cmp = env.compare().await;
        let missing: BTreeSet<String> = cmp.missing.iter().cloned().collect();
        if missing == lost_keys && cmp.altered.is_empty() && cmp.extra.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected exactly the {} dropped records missing: {}",
            lost_keys.len(),
            cmp.summary()
        );
        sleep_ms(250).await;
    }
    let catch_ups = daemon.count("catch-up pass");
    let troubled: BTreeSet<&str> = lost.iter().map(|(u, _)| u.as_str()).collect();
    for (id, user) in &subs {
        if troubled.contains(user.as_str()) {
            env.sim_post(
                &format!("/_sim/notifications/subscriptions/{id}/lifecycle"),
                serde_json::json!({"event": "missed"}),
            )
            .await;
        }
    }
    wait_exact(env, Duration::from_secs(15), &daemon).await;
    assert!(
        daemon.count("catch-up pass") > catch_ups,
        "{}",
        daemon.log()
    );
    daemon.stop().await;
}

/// Graph removes a subscription while interactions keep coming: the daemon recreates it and
/// polls that user at once (catch-up), then at `export.poll_interval` until its watermark
/// passes the new subscription, so the gap between removal and recreation is covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_removed_mid_stream_loses_nothing() {
    let ne = notifications_env_with(Db::Sqlite, sim_config(3, 4), "1h", "").await;
    let env = &ne.env;
    let daemon = start_daemon(env, "3s");
    let subs = wait_for_subscriptions(env, 3, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    let users = users_of(&subs);
    let removed = subs[0].0.clone();
    let streaming = stream(env, &users, 6, 6);
    let remove = async {
        sleep_ms(2_000).await;
        env.sim_post(
            &format!("/_sim/notifications/subscriptions/{removed}/lifecycle"),
            serde_json::json!({"event": "subscriptionRemoved"}),
        )
        .await;
    };
    tokio::join!(streaming, remove);
    wait_exact(env, Duration::from_secs(20), &daemon).await;
    let now = sim_subscriptions(env).await;
    assert!(
        now.iter().any(|(id, u)| *u == subs[0].1 && *id != removed),
        "recreated: {now:?}"
    );
    assert!(daemon.count("catch-up pass") > 0, "{}", daemon.log());
    daemon.stop().await;
}

/// Queue rows: (id, claimed by someone).
async fn queue_rows(state: &sqlx::AnyPool) -> BTreeMap<i64, bool> {
    sqlx::query("SELECT id, claimed_by, dead FROM notification_queue")
        .fetch_all(state)
        .await
        .expect("queue rows")
        .iter()
        .map(|r| {
            let dead: i64 = r.try_get("dead").expect("dead");
            assert_eq!(dead, 0, "no item given up");
            let claimed: Option<String> = r.try_get("claimed_by").expect("claimed_by");
            (r.try_get("id").expect("id"), claimed.is_some())
        })
        .collect()
}

/// SIGKILL while a burst is being delivered, with accepted items still in the queue; after a
/// restart every queued item is processed and the archive equals the ground truth.
async fn killed_receiver_loses_nothing(db: Db) {
    let ne = notifications_env_with(db, fast_retry_sim(4), "1h", "").await;
    let env = &ne.env;
    let mut daemon = start_daemon(env, "1h");
    let subs = wait_for_subscriptions(env, 4, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    let users = users_of(&subs);
    let state = raw_state(env).await;

    // A burst created at once: the simulator batches it into large posts, which the worker
    // drains more slowly than the receiver accepts them.
    let base = chrono::Utc::now().timestamp_millis() - 10_000;
    let burst = (0..160).map(|i| {
        let user = users[i % users.len()].clone();
        async move { create(env, &user, base + (i as i64 / 4) * 10).await }
    });
    // Creating is quick: the simulator delivers in the background.
    futures::future::join_all(burst).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = queue_rows(&state).await;
        if rows.len() >= 5 && rows.values().any(|claimed| !claimed) {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never backed up");
        sleep_ms(5).await;
    }
    daemon.kill().await;
    // The process is gone: this is the queue as it was at the kill.
    let at_kill = queue_rows(&state).await;
    let waiting: BTreeSet<i64> = at_kill
        .iter()
        .filter(|(_, claimed)| !**claimed)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !waiting.is_empty(),
        "accepted items were queued, unprocessed, at the kill"
    );
    eprintln!(
        "at the kill: {} queued item(s), {} of them claimed by the killed worker",
        at_kill.len(),
        at_kill.len() - waiting.len()
    );
    // More arrive while the receiver is down: the simulator retries them.
    let late = (0..8).map(|i| {
        let user = users[i % users.len()].clone();
        async move { create(env, &user, base + 5_000 + i as i64).await }
    });
    futures::future::join_all(late).await;

    let daemon = start_daemon(env, "1h");
    wait_exact(env, Duration::from_secs(25), &daemon).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = queue_rows(&state).await;
        // Items the killed worker had claimed wait out its claim (60 s), then are processed;
        // everything else must be done now.
        if left.keys().all(|id| at_kill.get(id) == Some(&true)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queued items not processed after the restart: {left:?}; log:\n{}",
            tail(&daemon.log(), 40)
        );
        sleep_ms(200).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_loses_nothing_sqlite() {
    killed_receiver_loses_nothing(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_loses_nothing_postgres() {
    killed_receiver_loses_nothing(Db::Postgres).await;
}
