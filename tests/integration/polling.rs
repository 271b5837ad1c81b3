//! Activity-based polling (issue #7) with the real daemon against the simulator: a user with
//! new interactions is polled every pass, idle users ever less often up to
//! `export.max_staleness`, and a record created for an idle user is still archived within
//! max_staleness + settle_lag + one poll.

use crate::daemon::Daemon;
use crate::helpers::*;
use m365_archiver::groundtruth::TruthRecord;
use m365_archiver::state::StateDb;
use std::collections::BTreeMap;

use std::time::{Duration, Instant};

const BASE: Duration = Duration::from_secs(1);
const MAX_STALENESS: Duration = Duration::from_secs(4);
/// Opts::default().settle_lag.
const SETTLE_LAG: Duration = Duration::from_secs(1);
/// Room for one poll (and a loaded test machine) on top of the bound.
const SLACK: Duration = Duration::from_secs(3);

/// The daemon with a fast schedule.
fn start_daemon(env: &Env) -> Daemon {
    let mut cmd = env.command(&["run"]);
    cmd.env("M365_ARCHIVER__EXPORT__POLL_INTERVAL", "1s")
        .env("M365_ARCHIVER__EXPORT__MAX_STALENESS", "4s")
        .env("M365_ARCHIVER__EXPORT__IDLE_BACKOFF", "2")
        .env("RUST_LOG", "info");
    Daemon::spawn(cmd)
}

/// Largest `scopes_not_due` any pass logged.
fn most_not_due(daemon: &Daemon) -> u64 {
    daemon
        .matching("scopes_not_due=")
        .iter()
        .filter_map(|l| l.split("scopes_not_due=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

async fn create(env: &Env, user: &str) -> Vec<TruthRecord> {
    create_interaction(env, user, serde_json::json!({"visible_after_ms": 0})).await
}

/// Polls (windows committed) per user so far.
async fn polls(state: &StateDb, users: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for u in users {
        let n = state
            .manifests("copilot", u)
            .await
            .expect("manifests")
            .len();
        out.insert(u.clone(), n);
    }
    out
}

/// Waits until every user was polled successfully once and the first pass (the backfill,
/// which may take several windows per user) has ended, so that its windows are not counted
/// as polls.
async fn wait_first_pass(state: &StateDb, daemon: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Errors until the daemon has migrated the new database: not done yet.
        let users = first_pass_done(state).await;
        if let Some(users) = users.filter(|_| daemon.log().contains("pass complete")) {
            return users;
        }
        assert!(
            Instant::now() < deadline,
            "first pass not done; log:\n{}",
            daemon.log()
        );
        sleep_ms(200).await;
    }
}

async fn first_pass_done(state: &StateDb) -> Option<Vec<String>> {
    let scopes = state.all_scopes("user").await.ok()?;
    for s in &scopes {
        let cp = state.checkpoint("copilot", &s.id).await.ok()??;
        cp.last_success_at?;
    }
    let users: Vec<String> = scopes.into_iter().map(|s| s.id).collect();
    (!users.is_empty()).then_some(users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_users_are_polled_less_yet_within_the_staleness_bound() {
    let env = Env::new(Db::Sqlite, sim_config(4, 3), &Opts::default()).await;
    let daemon = start_daemon(&env);
    let state = env.state().await;
    let users = wait_first_pass(&state, &daemon).await;
    let (active, idle) = (users[0].clone(), users[1..].to_vec());

    // Ten seconds in which one user keeps making interactions and the others none.
    let before = polls(&state, &users).await;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        create(&env, &active).await;
        sleep_ms(400).await;
    }
    let after = polls(&state, &users).await;
    let delta = |u: &String| after[u] - before[u];
    let busiest_idle = idle.iter().map(delta).max().unwrap_or(0);
    eprintln!(
        "polls in 10 s: active user {}, idle users {:?}",
        delta(&active),
        idle.iter().map(delta).collect::<Vec<_>>()
    );
    assert!(
        delta(&active) >= 6 && delta(&active) >= 2 * busiest_idle,
        "active user polled {} times, idle ones up to {busiest_idle}; log:\n{}",
        delta(&active),
        daemon.log()
    );
    for u in &idle {
        let s = state.poll_schedule("copilot", u).await.expect("schedule");
        let interval = s.map(|s| s.interval_ms);
        assert_eq!(interval, Some(4_000), "{u} grown to the bound");
    }
    let s = state.poll_schedule("copilot", &active).await.expect("s");
    assert!(
        s.is_some_and(|s| s.interval_ms <= 2_000),
        "active user kept short"
    );
    assert!(
        most_not_due(&daemon) > 0,
        "passes left idle users out; log:\n{}",
        daemon.log()
    );

    // A record for a user idle at the longest interval, made just after that user's poll (the
    // worst moment): it waits for the schedule, not for the next pass, and still arrives
    // within the bound (about 3 s here: the pass that would be later than max_staleness is not
    // waited for, so the last one before it polls).
    let polled = |n: &BTreeMap<String, usize>| n[&idle[0]];
    let seen = polled(&polls(&state, &users).await);
    while polled(&polls(&state, &users).await) == seen {
        sleep_ms(20).await;
    }
    let records = create(&env, &idle[0]).await;
    let created = Instant::now();
    let bound = MAX_STALENESS + SETTLE_LAG + SLACK;
    while !archived(&env, &records).await {
        assert!(
            created.elapsed() < bound,
            "not archived within {bound:?}; log:\n{}",
            daemon.log()
        );
        sleep_ms(50).await;
    }
    let waited = created.elapsed();
    eprintln!(
        "idle user's record archived after {waited:?} (bound {MAX_STALENESS:?} + \
         {SETTLE_LAG:?} settle lag + one poll)"
    );
    assert!(
        waited >= 2 * BASE,
        "waited for its schedule, not the next pass"
    );
    // Nothing lost on the way: every user's records are archived once the last poll ran.
    let deadline = Instant::now() + bound;
    loop {
        let cmp = env.compare().await;
        if cmp.is_exact() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", cmp.summary());
        sleep_ms(200).await;
    }
    daemon.stop().await;
}
