//! The state an archived batch leaves behind: each new object's retention and custodians, the
//! holds set on it, and its catalogue row, all in one transaction, so a catalogued version can
//! never be without its retention or holds, even after a crash between statements.
//!
//! Batches that arrive while another is being written are committed together (group commit):
//! the pages of every scope in flight wait for one writer on SQLite, and one transaction for
//! all that queued, instead of one each, is what lets the writer keep up with the request
//! budget (docs/benchmarks.md). A caller returns only once its rows are committed; when the
//! shared transaction fails, every batch in it fails and nothing of any of them is kept.

use std::sync::{Arc, Mutex as SyncMutex};

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, Mutex};

use super::catalogue::{insert_chunk, INSERT_CHUNK};
use super::holds::insert_record_holds;
use super::retention::{insert_custodians, insert_participants, insert_retention};
use super::{CatalogueEntry, RetentionRow, StateDb, StateError};

/// Which objects one hold was set on.
pub type HeldKeys = (i64, Vec<String>);

/// Batches waiting for the next group transaction, and the right to write one.
#[derive(Default)]
pub(crate) struct ArchivedQueue {
    pending: SyncMutex<Vec<Pending>>,
    writer: Mutex<()>,
}

struct Pending {
    retention: Vec<RetentionRow>,
    holds: Vec<HeldKeys>,
    catalogue: Vec<CatalogueEntry>,
    now: DateTime<Utc>,
    done: oneshot::Sender<Result<(), Arc<StateError>>>,
}

impl StateDb {
    /// Records a stored batch, committed with whatever other batches are waiting. Rows already
    /// present are kept as they are (a retried batch).
    pub async fn archived_insert(
        &self,
        retention: &[RetentionRow],
        holds: &[HeldKeys],
        catalogue: &[CatalogueEntry],
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        if retention.is_empty() && catalogue.is_empty() {
            return Ok(());
        }
        let (done, mut outcome) = oneshot::channel();
        self.archived_queue().push(Pending {
            retention: retention.to_vec(),
            holds: holds.to_vec(),
            catalogue: catalogue.to_vec(),
            now,
            done,
        });
        tokio::select! {
            // Biased: a batch another caller has committed is reported before this one
            // competes for the writer.
            biased;
            result = &mut outcome => return shared_outcome(result),
            _writer = self.archived.writer.lock() => {
                // Whoever holds the writer drains the queue, this batch included (a batch is
                // only ever taken by a writer, which answers before it lets go).
                let group = self.archived_queue().take();
                self.commit_group(group).await;
            }
        }
        shared_outcome(outcome.await)
    }

    fn archived_queue(&self) -> QueueGuard<'_> {
        QueueGuard(&self.archived.pending)
    }

    /// Writes the batches in one transaction and tells each caller how it went.
    async fn commit_group(&self, group: Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let mut retention = Vec::new();
        let mut holds = Vec::new();
        let mut catalogue = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        let now = group.iter().map(|p| p.now).max().unwrap_or_else(Utc::now);
        for p in group {
            retention.extend(p.retention);
            holds.extend(p.holds);
            catalogue.extend(p.catalogue);
            waiting.push(p.done);
        }
        let result = self
            .insert_archived(retention, holds, catalogue, now)
            .await
            .map_err(Arc::new);
        for done in waiting {
            // A caller that gave up waiting has nothing to be told.
            let _ = done.send(result.clone());
        }
    }

    async fn insert_archived(
        &self,
        mut retention: Vec<RetentionRow>,
        mut holds: Vec<HeldKeys>,
        mut catalogue: Vec<CatalogueEntry>,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "archived_insert";
        // Rows in key order: transactions that insert overlapping rows (a chat message
        // exported for each of its members at once, by several replicas) then take their locks
        // in the same order and wait for each other instead of deadlocking (PostgreSQL).
        retention.sort_by(|a, b| a.storage_key.cmp(&b.storage_key));
        catalogue.sort_by(|a, b| {
            (&a.source, &a.record_key, &a.etag).cmp(&(&b.source, &b.record_key, &b.etag))
        });
        holds.sort_by_key(|(hold, _)| *hold);
        holds.iter_mut().for_each(|(_, keys)| keys.sort());
        let mut tx = self.begin_write(OP).await?;
        let now_ms = super::types::to_ms(now);
        for chunk in retention.chunks(INSERT_CHUNK) {
            insert_retention(tx.conn(), chunk, now_ms).await?;
            insert_custodians(tx.conn(), chunk).await?;
        }
        insert_participants(tx.conn(), retention.iter().flat_map(|r| &r.participants)).await?;
        for (hold, keys) in &holds {
            insert_record_holds(tx.conn(), *hold, keys, now).await?;
        }
        for chunk in catalogue.chunks(INSERT_CHUNK) {
            insert_chunk(tx.conn(), chunk).await?;
        }
        tx.commit(OP).await
    }
}

/// The queue of waiting batches; its lock is never held across an await.
struct QueueGuard<'a>(&'a SyncMutex<Vec<Pending>>);

impl QueueGuard<'_> {
    fn push(&self, p: Pending) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn shared_outcome(
    result: Result<Result<(), Arc<StateError>>, oneshot::error::RecvError>,
) -> Result<(), StateError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StateError::Shared(e)),
        // The writer that took this batch was cancelled mid-transaction: nothing of it was
        // committed, and the caller retries as after any failed write.
        Err(_) => Err(StateError::Abandoned {
            op: "archived_insert",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HoldKind, StateDb};
    use super::*;
    use crate::both_backends;

    both_backends!(
        a_batch_records_retention_holds_and_catalogue_together,
        overlapping_batches_in_any_order_never_deadlock,
        batches_that_wait_for_the_writer_commit_together,
        a_failed_group_commit_fails_every_batch_in_it,
    );

    /// Starts `batches` archived inserts while the writer is taken and returns once all are
    /// queued, so that they are committed as one group when it is let go.
    async fn queued_behind_the_writer(
        db: &StateDb,
        batches: Vec<(Vec<RetentionRow>, Vec<HeldKeys>, Vec<CatalogueEntry>)>,
    ) -> Vec<Result<(), StateError>> {
        let writer = db.archived.writer.lock().await;
        let want = batches.len();
        let now = Utc::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|(retention, holds, catalogue)| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.archived_insert(&retention, &holds, &catalogue, now)
                        .await
                })
            })
            .collect();
        while db.archived.pending.lock().map(|p| p.len()).unwrap_or(0) < want {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(writer);
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("insert task"));
        }
        results
    }

    async fn batches_that_wait_for_the_writer_commit_together(db: StateDb) {
        let now = Utc::now();
        let batches = (0..12)
            .map(|b| {
                let (r, c) = entry(&format!("records/chats/g{b}"), now);
                (vec![r], Vec::new(), vec![c])
            })
            .collect();
        for result in queued_behind_the_writer(&db, batches).await {
            result.expect("each batch of the group is committed");
        }
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 12);
        assert!(db.archived.pending.lock().expect("queue").is_empty());
    }

    /// One batch of a group names a hold that does not exist: the shared transaction fails,
    /// every batch in it reports the failure and none of their rows is kept, so each caller
    /// retries knowing its batch is not recorded.
    async fn a_failed_group_commit_fails_every_batch_in_it(db: StateDb) {
        let now = Utc::now();
        let (good_r, good_c) = entry("records/chats/good", now);
        let (bad_r, bad_c) = entry("records/chats/bad", now);
        let no_such_hold = vec![(987_654, vec![bad_r.storage_key.clone()])];
        let batches = vec![
            (vec![good_r.clone()], Vec::new(), vec![good_c.clone()]),
            (vec![bad_r], no_such_hold, vec![bad_c]),
        ];
        let results = queued_behind_the_writer(&db, batches).await;
        assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 0);
        assert!(db
            .retention_of("records/chats/good")
            .await
            .expect("read")
            .is_none());
        // Retried on its own, the good batch is recorded.
        db.archived_insert(&[good_r], &[], &[good_c], now)
            .await
            .expect("retry");
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 1);
    }

    /// The caller whose task writes a group is cancelled while the transaction waits for
    /// SQLite's writer: its group-mate is told the write was abandoned, nothing of either batch
    /// is kept, and the group-mate's retry succeeds. SQLite only: the writer slot is what holds
    /// the transaction still; one thread, so which caller takes the writer is fixed (the first
    /// to queue for it).
    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_group_writer_abandons_its_group_mates() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = crate::state::testing::sqlite_in(dir.path())
            .await
            .expect("SQLite state database");
        let now = Utc::now();
        let queued = |n: usize| {
            let db = db.clone();
            async move {
                while db.archived.pending.lock().map(|p| p.len()).unwrap_or(0) != n {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        let spawn_insert = |key: &str| {
            let (r, c) = entry(key, now);
            let db = db.clone();
            tokio::spawn(async move { db.archived_insert(&[r], &[], &[c], now).await })
        };
        let group_writer = db.archived.writer.lock().await;
        let first = spawn_insert("records/chats/first");
        queued(1).await;
        let mate = spawn_insert("records/chats/mate");
        queued(2).await;
        let sqlite_writer = db.writer_slot().await;
        drop(group_writer);
        queued(0).await;
        first.abort();
        assert!(first.await.expect_err("aborted").is_cancelled());
        let told = mate.await.expect("group-mate task");
        assert!(
            matches!(told, Err(StateError::Abandoned { .. })),
            "{told:?}"
        );
        drop(sqlite_writer);
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 0);
        let (r, c) = entry("records/chats/mate", now);
        db.archived_insert(&[r], &[], &[c], now)
            .await
            .expect("retry");
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 1);
    }

    fn entry(key: &str, now: DateTime<Utc>) -> (RetentionRow, CatalogueEntry) {
        let retention = RetentionRow {
            storage_key: key.into(),
            source: "chats".into(),
            scope_id: "u1".into(),
            sha256: "ab".into(),
            rule: "default".into(),
            retain_until: None,
            mode: "Locked".into(),
            created_at: Some(now),
            custodians: vec![("user".into(), "u1".into())],
            participants: Vec::new(),
        };
        let catalogue = CatalogueEntry {
            source: "chats".into(),
            record_key: key.into(),
            etag: "1".into(),
            sha256: "ab".into(),
            storage_key: key.into(),
            size_bytes: 2,
            scope_id: "u1".into(),
            created_at: Some(now),
            archived_at: now,
        };
        (retention, catalogue)
    }

    async fn a_batch_records_retention_holds_and_catalogue_together(db: StateDb) {
        let now = Utc::now();
        let hold = db
            .hold_insert(HoldKind::User, "u1", "matter", "op", now)
            .await
            .expect("hold");
        let (r1, c1) = entry("records/chats/a", now);
        let (r2, c2) = entry("records/chats/b", now);
        let holds = vec![(hold.id, vec![r1.storage_key.clone()])];
        db.archived_insert(&[r1, r2.clone()], &holds, &[c1, c2.clone()], now)
            .await
            .expect("batch");
        for key in ["records/chats/a", "records/chats/b"] {
            let kept = db.retention_of(key).await.expect("read");
            assert_eq!(kept.map(|r| r.rule), Some("default".into()), "{key}");
        }
        let lookup = vec![("records/chats/a".to_string(), "1".to_string())];
        assert_eq!(
            db.catalogue_lookup("chats", &lookup)
                .await
                .expect("lookup")
                .len(),
            1
        );
        let held = db.record_holds_open(hold.id, "", 10).await.expect("holds");
        assert_eq!(held, vec!["records/chats/a".to_string()]);
        // A retried batch changes nothing.
        db.archived_insert(&[r2], &[], &[c2], now)
            .await
            .expect("retry");
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 2);
    }

    /// Rounds of eight writers storing the same 100 versions at the same instant, each in
    /// another order (the members of one chat exporting it together): all succeed and each
    /// version is catalogued once. Without the ordering, PostgreSQL reports deadlocks here.
    async fn overlapping_batches_in_any_order_never_deadlock(db: StateDb) {
        const ROUNDS: usize = 10;
        const WRITERS: usize = 8;
        let now = Utc::now();
        for round in 0..ROUNDS {
            let keys: Vec<String> = (0..100)
                .map(|i| format!("records/chats/r{round}/m{i:03}"))
                .collect();
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
            let writers = (0..WRITERS).map(|w| {
                let (db, start) = (db.clone(), start.clone());
                let mut order = keys.clone();
                order.rotate_left(w * 13 % keys.len());
                if w % 2 == 1 {
                    order.reverse();
                }
                tokio::spawn(async move {
                    let (retention, catalogue): (Vec<_>, Vec<_>) =
                        order.iter().map(|k| entry(k, now)).unzip();
                    start.wait().await;
                    db.archived_insert(&retention, &[], &catalogue, now).await
                })
            });
            for writer in futures::future::join_all(writers).await {
                writer.expect("writer task").expect("no deadlock, no error");
            }
        }
        let want = (ROUNDS * 100) as i64;
        assert_eq!(
            db.catalogue_count(Some("chats")).await.expect("count"),
            want
        );
    }
}
