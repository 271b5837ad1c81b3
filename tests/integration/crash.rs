use crate::helpers::*;
use m365_archiver::archive::sha256_hex;
use m365_archiver::groundtruth::{storage_key, TruthRecord};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// The archiver is SIGKILLed at random moments (fixed seed, so a failure reproduces) and
/// restarted. After every kill no checkpoint may be ahead of the archive; at the end the archive
/// equals the ground truth.
/// Also run on Azure (Azurite) by `azure::sigkill_at_random_points_azurite`.
pub(crate) async fn sigkill_at_random_points(db: Db, store: StoreKind) {
    let mut sim = sim_config(80, 40);
    sim.faults.slow_rate = 0.2;
    sim.faults.slow_ms = 40;
    let opts = Opts {
        page_size: 10,
        max_window: "3d",
        rps: 40.0,
        concurrency: 6,
        store,
        ..Opts::default()
    };
    let env = Env::new(db, sim, &opts).await;
    let truth = env.truth().await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261123);
    let mut kills = 0;
    // Kill until 12 kills have landed mid-run (bounded: a run that finishes is not a kill).
    for _ in 0..30 {
        if kills >= 12 {
            break;
        }
        let mut child = env
            .command(&["run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn archiver");
        let delay = rng.gen_range(150..1500);
        tokio::select! {
            _ = child.wait() => {}
            _ = sleep_ms(delay) => {
                child.start_kill().expect("SIGKILL");
                let _ = child.wait().await;
                kills += 1;
            }
        }
        assert_no_checkpoint_ahead(&env, &truth).await;
    }
    assert!(kills >= 10, "only {kills} kills landed mid-run");
    env.run_until_ok(4).await;
    assert_no_checkpoint_ahead(&env, &truth).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
}

/// Every record created before a user's watermark must be in the store, byte-exact. Rows are
/// matched by source too (a user's chats watermark says nothing about their Copilot records),
/// and a record that appeared in Graph more than the settle lag after the watermark may have
/// been created (back-dated) after the window that passed it ran: the look-back's, not a bug.
pub(crate) async fn assert_no_checkpoint_ahead(env: &Env, truth: &[TruthRecord]) {
    let state = env.state().await;
    // A kill can land before the archiver applied its migrations (a slow start on a loaded
    // machine); open the state as `m365-archiver status` does, which migrates first.
    state.migrate().await.expect("migrate state");
    let store = env.archive();
    let mut by_user: HashMap<(&str, &str), Vec<&TruthRecord>> = HashMap::new();
    for r in truth {
        let scope = (r.source.as_str(), r.scope.as_str());
        by_user.entry(scope).or_default().push(r);
    }
    // Opts::default().settle_lag.
    let settle = chrono::Duration::seconds(1);
    for row in state.status().await.expect("status") {
        let Some(mark) = row.checkpoint.watermark else {
            continue;
        };
        let scope = (row.source.as_str(), row.scope_id.as_str());
        for r in by_user.get(&scope).into_iter().flatten() {
            if r.created >= mark || r.visible_from > mark + settle {
                continue;
            }
            let key = storage_key(r);
            let bytes = store.get(&key).await.expect("read store");
            let bytes = bytes.unwrap_or_else(|| {
                panic!(
                    "checkpoint of {} at {mark} is ahead of the archive: {key} missing",
                    row.scope_id
                )
            });
            assert_eq!(sha256_hex(&bytes), r.sha256, "{key} altered");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_sqlite() {
    sigkill_at_random_points(Db::Sqlite, StoreKind::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_postgres() {
    sigkill_at_random_points(Db::Postgres, StoreKind::Fs).await;
}
