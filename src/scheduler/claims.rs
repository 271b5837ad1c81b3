//! Batch lease claims for one pass. The scheduler asks for one work item's lease at a time,
//! in the order it starts them; the first ask claims that item and the next few undecided ones
//! in one statement (`StateDb::claim_leases`, `FOR UPDATE SKIP LOCKED` on PostgreSQL), and
//! later asks are answered from what that claim found. Replicas walking the same 100k scopes
//! thus spend one statement per batch, not one per scope each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::config::ExportConfig;
use crate::sources::Source;
use crate::state::{Checkpoint, PollSchedule, ScopeRow, StateDb, StateError, MAX_CLAIM_KEYS};

/// The lease key of one (source, scope) work item.
pub(crate) fn work_key(source: &dyn Source, row: &ScopeRow) -> String {
    format!("{}/{}", source.kind(), row.id)
}

/// True when the checkpoint as it is now leaves nothing to do as of `pass_start`: another
/// replica exported the scope after this pass began (typically the one whose lease this pass
/// found taken). A freed lease is no proof of that, so without this check every replica
/// would export every scope again in each pass.
pub(crate) fn covered_since(
    cp: Option<&Checkpoint>,
    cfg: &ExportConfig,
    pass_start: DateTime<Utc>,
) -> bool {
    super::plan_windows(cp, cfg, pass_start).is_empty()
}

/// A claimed scope's checkpoint and poll schedule, read with its claim batch (after the claim,
/// so under the lease) instead of by its export one query each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefetched {
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) schedule: Option<PollSchedule>,
}

#[derive(Debug, Clone, Copy)]
enum Known {
    /// Claimed by this process at that instant, not yet handed to its export.
    Ours(Instant),
    /// Held by another replica when we looked (or handed out already).
    Elsewhere,
}

/// One pass's lease claims, shared by the pass's concurrent exports.
pub(crate) struct LeaseClaims {
    state: StateDb,
    owner: String,
    ttl: Duration,
    /// Leases claimed by the first statement: one per export slot, to fill them.
    batch: usize,
    /// Leases claimed by each later statement, as slots free up one by one. Fewer than
    /// `batch`: a replica holding a slot-full of claimed leases when the scopes run out kept
    /// working for seconds after the others had finished, its share of the budget unusable
    /// by them (the 3-replica channel re-sweep's dip two thirds through).
    refill: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    order: Vec<String>,
    position: HashMap<String, usize>,
    known: HashMap<String, Known>,
    /// Read for claimed keys not yet handed out; taken by `facts`.
    prefetched: HashMap<String, Prefetched>,
}

impl LeaseClaims {
    /// `keys`: the pass's work items in the order they will be started.
    pub(crate) fn new(
        state: StateDb,
        owner: String,
        ttl: Duration,
        batch: usize,
        keys: Vec<String>,
    ) -> LeaseClaims {
        let position = keys
            .iter()
            .enumerate()
            .rev()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        LeaseClaims {
            state,
            owner,
            ttl,
            batch: batch.clamp(1, MAX_CLAIM_KEYS),
            refill: (batch / 4).clamp(1, MAX_CLAIM_KEYS),
            inner: Mutex::new(Inner {
                order: keys,
                position,
                known: HashMap::new(),
                prefetched: HashMap::new(),
            }),
        }
    }

    /// True if we now hold `key`'s lease (hand it to one export only: a second ask answers
    /// false). A lease claimed a while ago is renewed first, so that it has at least two thirds
    /// of its TTL left when the export's heartbeat takes over.
    pub(crate) async fn take(&self, key: &str) -> Result<bool, StateError> {
        let mut inner = self.inner.lock().await;
        if !inner.known.contains_key(key) {
            self.claim_from(&mut inner, key).await?;
        }
        match inner.known.insert(key.to_owned(), Known::Elsewhere) {
            Some(Known::Ours(at)) => {
                if at.elapsed() < self.ttl / 3 {
                    return Ok(true);
                }
                // The lease may have lapsed since the read: the export reads afresh.
                inner.prefetched.remove(key);
                drop(inner);
                let now = Utc::now();
                self.state
                    .renew_lease(key, &self.owner, self.ttl, now)
                    .await
            }
            _ => Ok(false),
        }
    }

    /// Claims `key` and the undecided keys after it, up to a window of four batches.
    async fn claim_from(&self, inner: &mut Inner, key: &str) -> Result<(), StateError> {
        let claim = if inner.known.is_empty() {
            self.batch
        } else {
            self.refill
        };
        let window: Vec<String> = match inner.position.get(key) {
            Some(&from) => inner.order[from..]
                .iter()
                .filter(|k| k.as_str() == key || !inner.known.contains_key(k.as_str()))
                .take((self.batch * 4).min(MAX_CLAIM_KEYS))
                .cloned()
                .collect(),
            None => vec![key.to_owned()],
        };
        let got = self
            .state
            .claim_leases(&window, &self.owner, self.ttl, Utc::now(), claim)
            .await?;
        let claimed_at = Instant::now();
        for k in &window[..got.considered.min(window.len())] {
            inner.known.insert(k.clone(), Known::Elsewhere);
        }
        let facts = self.prefetch(&got.claimed).await;
        for k in got.claimed {
            inner.known.insert(k, Known::Ours(claimed_at));
        }
        inner.prefetched.extend(facts);
        Ok(())
    }

    /// Reads the checkpoints and schedules of `keys` in one query each per source. A failure
    /// only costs speed: the exports then read their own.
    async fn prefetch(&self, keys: &[String]) -> HashMap<String, Prefetched> {
        let mut by_source: HashMap<&str, Vec<String>> = HashMap::new();
        for key in keys {
            if let Some((source, id)) = key.split_once('/') {
                by_source.entry(source).or_default().push(id.to_owned());
            }
        }
        let mut out = HashMap::with_capacity(keys.len());
        for (source, ids) in by_source {
            let read = async {
                let cps = self.state.checkpoints_of(source, &ids).await?;
                let schedules = self.state.poll_schedules_of(source, &ids).await?;
                Ok::<_, StateError>((cps, schedules))
            };
            let (mut cps, mut schedules) = match read.await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(source, error = %e, "cannot read a claim batch's checkpoints; each export reads its own");
                    continue;
                }
            };
            for id in ids {
                let facts = Prefetched {
                    checkpoint: cps.remove(&id),
                    schedule: schedules.remove(&id),
                };
                out.insert(format!("{source}/{id}"), facts);
            }
        }
        out
    }

    /// The checkpoint and schedule read with `key`'s claim, if `take` just handed it out
    /// fresh; None means the export must read them itself.
    pub(crate) async fn facts(&self, key: &str) -> Option<Prefetched> {
        self.inner.lock().await.prefetched.remove(key)
    }

    /// Gives back leases claimed but never handed out (a pass cut short).
    pub(crate) async fn release_unused(&self) {
        let inner = self.inner.lock().await;
        for (key, known) in &inner.known {
            if matches!(known, Known::Ours(_)) {
                if let Err(e) = self.state.release_lease(key, &self.owner).await {
                    tracing::warn!(work_key = %key, error = %e, "could not release an unused lease; it expires by itself");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("copilot/u{i:02}")).collect()
    }

    /// Two replicas walking the same keys in the same order each get a disjoint part, with
    /// far fewer statements than keys, and every key goes to one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_walking_the_same_keys_split_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite_in(dir.path()).await.expect("db");
        let ttl = Duration::from_secs(60);
        let all = keys(40);
        let a = LeaseClaims::new(db.clone(), "a".into(), ttl, 4, all.clone());
        let b = LeaseClaims::new(db.clone(), "b".into(), ttl, 4, all.clone());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for key in &all {
            if a.take(key).await.expect("a") {
                got_a.push(key.clone());
            }
            if b.take(key).await.expect("b") {
                got_b.push(key.clone());
            }
        }
        assert_eq!(got_a.len() + got_b.len(), all.len(), "{got_a:?} {got_b:?}");
        assert!(got_a.iter().all(|k| !got_b.contains(k)));
        assert!(!got_b.is_empty(), "b claims the batches a has not reached");
        // A key is handed out once.
        assert!(!a.take(&got_a[0]).await.expect("again"));
        a.release_unused().await;
    }

    /// A claim older than a third of the TTL is renewed before it is handed out; if another
    /// owner took it over meanwhile, it is not ours.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_claims_are_checked_before_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite_in(dir.path()).await.expect("db");
        let ttl = Duration::from_millis(300);
        let all = keys(3);
        let a = LeaseClaims::new(db.clone(), "a".into(), ttl, 3, all.clone());
        assert!(a.take(&all[0]).await.expect("first"));
        tokio::time::sleep(ttl * 2).await;
        // all[1] expired and was taken over; all[2] expired but nobody took it.
        assert!(db
            .try_lease(&all[1], "b", Duration::from_secs(60), Utc::now())
            .await
            .expect("takeover"));
        assert!(!a.take(&all[1]).await.expect("lost"));
        assert!(a.take(&all[2]).await.expect("renewed"));
        assert!(!db
            .try_lease(&all[2], "b", Duration::from_secs(60), Utc::now())
            .await
            .expect("held"));
    }

    /// Unused claims are released at the end of a pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unused_claims_are_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite_in(dir.path()).await.expect("db");
        let ttl = Duration::from_secs(60);
        let all = keys(4);
        let a = LeaseClaims::new(db.clone(), "a".into(), ttl, 4, all.clone());
        assert!(a.take(&all[0]).await.expect("first"));
        a.release_unused().await;
        for key in &all[1..] {
            assert!(db.try_lease(key, "b", ttl, Utc::now()).await.expect("free"));
        }
        assert!(!db
            .try_lease(&all[0], "b", ttl, Utc::now())
            .await
            .expect("in use"));
    }
}
