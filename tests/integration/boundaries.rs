use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};

fn ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Windows step by exactly one day from `start`, so `start + k days` are window edges; Graph's
/// `gt`/`lt` exclude a record sitting exactly on an edge from one window, and the overlap must
/// bring it into the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_on_a_window_edge_is_archived() {
    let start = Utc::now() - Duration::days(10);
    let start = DateTime::from_timestamp(start.timestamp(), 0).expect("t");
    let opts = Opts {
        max_window: "1d",
        start: start.to_rfc3339(),
        ..Opts::default()
    };
    let mut sim = sim_config(3, 4);
    sim.history_days = 5;
    let env = Env::new(Db::Sqlite, sim, &opts).await;
    let user = first_user(&env).await;
    let mut edges = Vec::new();
    for k in [1, 2, 5] {
        let at = start + Duration::days(k);
        env.sim_post(
            "/_sim/interactions",
            serde_json::json!({"user_id": user, "created": ms(at), "visible_after_ms": 0}),
        )
        .await;
        edges.push(at);
    }
    env.run_until_ok(3).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
    let truth = env.truth().await;
    for at in edges {
        assert!(
            truth.iter().any(|r| r.created == at && r.scope == user),
            "edge record at {at} exists in the simulator"
        );
    }
}

/// A record created in the past but visible only after its window was archived: the
/// look-back sweep catches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_record_is_caught_by_the_lookback() {
    let opts = Opts {
        lookback_interval: "0s",
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(3, 4), &opts).await;
    env.run_until_ok(2).await;
    let user = first_user(&env).await;
    // Created three hours ago, far behind the watermark: only a look-back can find it.
    let created = Utc::now() - Duration::hours(3);
    env.sim_post(
        "/_sim/interactions",
        serde_json::json!({"user_id": user, "created": ms(created), "visible_after_ms": 0}),
    )
    .await;
    let cmp = env.compare().await;
    assert!(
        !cmp.missing.is_empty(),
        "the late record is not archived before the next pass"
    );
    env.run_until_ok(2).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
}

/// Without the look-back the same record would stay missing: proves the test above tests it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lookback_a_late_record_is_missed() {
    let opts = Opts {
        lookback: "0s",
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(2, 4), &opts).await;
    env.run_until_ok(2).await;
    let user = first_user(&env).await;
    let created = Utc::now() - Duration::hours(3);
    env.sim_post(
        "/_sim/interactions",
        serde_json::json!({"user_id": user, "created": ms(created), "visible_after_ms": 0}),
    )
    .await;
    env.run_until_ok(2).await;
    assert!(
        !env.compare().await.missing.is_empty(),
        "the late record is missed"
    );
}

async fn first_user(env: &Env) -> String {
    let truth = env.truth().await;
    let mut users: Vec<&str> = truth.iter().map(|r| r.scope.as_str()).collect();
    users.sort();
    users.first().expect("a user").to_string()
}
