//! The state an archived batch leaves behind: each new object's retention and custodians, the
//! holds set on it, and its catalogue row, all in one transaction, so a catalogued version can
//! never be without its retention or holds, even after a crash between statements.
//!
//! Batches that arrive while another is being written are committed together (group commit):
//! the pages of every scope in flight wait for one writer on SQLite, and one transaction for
//! all that queued, instead of one each, is what lets the writer keep up with the request
//! budget (docs/benchmarks.md). A completed window's manifest row, checkpoint and scope end
//! (`commit_window_ending`) join the same group, each in a savepoint, so a window that is not
//! the next link of its chain fails alone. A caller returns only once its rows are committed;
//! when the shared transaction fails, every batch and window in it fails and nothing of any of
//! them is kept.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex as SyncMutex};

use chrono::{DateTime, Utc};
use tokio::sync::{oneshot, Mutex};

use sqlx::AnyConnection;

use super::catalogue::insert_entries;
use super::checkpoints::window_rows;
use super::holds::insert_record_holds;
use super::retention::{insert_custodians, insert_participants, insert_retention};
use super::{
    CatalogueEntry, ChatParticipant, RetentionRow, ScopeEnd, StateDb, StateError, WindowCommit,
};
use crate::lock;

/// Which objects one hold was set on.
pub type HeldKeys = (i64, Vec<String>);

/// Batches waiting for the next group transaction, and the right to write one.
#[derive(Default)]
pub(crate) struct ArchivedQueue {
    pending: SyncMutex<Vec<Pending>>,
    /// Held by the task committing a group until it is done (owned, so it goes with the task).
    writer: Arc<Mutex<()>>,
    /// Chat participants a committed group has recorded: rows are never deleted, so these
    /// need not be sent again (most of a backfill's are repeats).
    known: SyncMutex<HashSet<ChatParticipant>>,
}

/// Participants remembered at most; past it the memory starts afresh (re-sending a known
/// one costs only a conflict check).
const KNOWN_PARTICIPANTS: usize = 100_000;

struct Pending {
    work: Work,
    done: oneshot::Sender<Result<(), GroupError>>,
}

/// One caller's part of a group transaction.
enum Work {
    /// A stored batch's retention, holds and catalogue rows.
    Archived {
        retention: Vec<RetentionRow>,
        holds: Vec<HeldKeys>,
        catalogue: Vec<CatalogueEntry>,
        now: DateTime<Utc>,
    },
    /// A completed window: its manifest row, checkpoint and (last window) scope end.
    Window {
        commit: Box<WindowCommit>,
        kind: &'static str,
        end: Option<ScopeEnd>,
    },
}

/// How a caller's part of a group went.
enum GroupError {
    /// Its own part failed and was rolled back alone (a window that is not the next link of
    /// its chain).
    Own(StateError),
    /// The group transaction failed: nothing of any part was kept.
    Shared(Arc<StateError>),
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
        let work = Work::Archived {
            retention: retention.to_vec(),
            holds: holds.to_vec(),
            catalogue: catalogue.to_vec(),
            now,
        };
        self.in_group(work, "archived_insert").await
    }

    /// Commits a window (see `commit_window_ending`) with whatever batches are waiting; a
    /// window that fails is rolled back alone and its error is its own.
    pub(super) async fn window_in_group(
        &self,
        commit: &WindowCommit,
        kind: &'static str,
        end: Option<&ScopeEnd>,
    ) -> Result<(), StateError> {
        let work = Work::Window {
            commit: Box::new(commit.clone()),
            kind,
            end: end.cloned(),
        };
        self.in_group(work, "commit_window").await
    }

    async fn in_group(&self, work: Work, op: &'static str) -> Result<(), StateError> {
        let (done, mut outcome) = oneshot::channel();
        self.archived_queue().push(Pending { work, done });
        tokio::select! {
            // Biased: a batch another caller has committed is reported before this one
            // competes for the writer.
            biased;
            result = &mut outcome => return group_outcome(result, op),
            writer = self.archived.writer.clone().lock_owned() => {
                // Whoever holds the writer drains the queue, this batch included (a batch is
                // only ever taken by a writer, which answers before it lets go). The group runs
                // as a task of its own: cancelling this caller (its scope's lease lost, say)
                // must not abandon the other batches it carries, and a runtime worker drives
                // the statements instead of the thread polling every export of the pass. The
                // task keeps the writer until its group is committed, cancelled caller or not.
                let group = self.archived_queue().take();
                let db = self.clone();
                let _ = tokio::spawn(async move {
                    let _writer = writer;
                    db.commit_group(group).await
                })
                .await;
            }
        }
        group_outcome(outcome.await, op)
    }

    fn archived_queue(&self) -> QueueGuard<'_> {
        QueueGuard(&self.archived.pending)
    }

    /// Writes the batches and windows in one transaction and tells each caller how it went.
    async fn commit_group(&self, group: Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let mut rows = GroupRows::default();
        let mut windows = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        for p in group {
            match p.work {
                Work::Archived {
                    retention,
                    holds,
                    catalogue,
                    now,
                } => {
                    rows.now = rows.now.max(Some(now));
                    rows.retention.extend(retention);
                    rows.holds.extend(holds);
                    rows.catalogue.extend(catalogue);
                    waiting.push(p.done);
                }
                Work::Window { commit, kind, end } => windows.push((commit, kind, end, p.done)),
            }
        }
        let parts: Vec<WindowPart<'_>> = windows
            .iter()
            .map(|(c, kind, end, _)| (&**c, *kind, end.as_ref()))
            .collect();
        match self.write_group(rows, &parts).await {
            Ok(own) => {
                // A caller that gave up waiting has nothing to be told.
                for done in waiting {
                    let _ = done.send(Ok(()));
                }
                for ((.., done), result) in windows.into_iter().zip(own) {
                    let _ = done.send(result.map_err(GroupError::Own));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                let all = waiting
                    .into_iter()
                    .chain(windows.into_iter().map(|(.., done)| done));
                for done in all {
                    let _ = done.send(Err(GroupError::Shared(e.clone())));
                }
            }
        }
    }

    /// One transaction: the batches' rows, then each window in a savepoint of its own. Returns
    /// each window's own outcome once the transaction has committed.
    async fn write_group(
        &self,
        mut rows: GroupRows,
        windows: &[WindowPart<'_>],
    ) -> Result<Vec<Result<(), StateError>>, StateError> {
        const OP: &str = "group_commit";
        // Rows in key order: transactions that insert overlapping rows (a chat message
        // exported for each of its members at once, by several replicas) then take their locks
        // in the same order and wait for each other instead of deadlocking (PostgreSQL).
        rows.retention
            .sort_by(|a, b| a.storage_key.cmp(&b.storage_key));
        rows.catalogue.sort_by(|a, b| {
            (&a.source, &a.record_key, &a.etag).cmp(&(&b.source, &b.record_key, &b.etag))
        });
        rows.holds.sort_by_key(|(hold, _)| *hold);
        rows.holds.iter_mut().for_each(|(_, keys)| keys.sort());
        let now = rows.now.unwrap_or_else(Utc::now);
        let now_ms = super::types::to_ms(now);
        let mut tx = self.begin_write(OP).await?;
        insert_retention(tx.conn(), &rows.retention, now_ms).await?;
        insert_custodians(tx.conn(), &rows.retention).await?;
        // Windows' participants with the batches', in one sorted set (lock order, as above).
        let participants = self.unknown_participants(&rows, windows);
        insert_participants(tx.conn(), &participants).await?;
        for (hold, keys) in &rows.holds {
            insert_record_holds(tx.conn(), *hold, keys, now).await?;
        }
        insert_entries(tx.conn(), &rows.catalogue).await?;
        let mut own = Vec::with_capacity(windows.len());
        for (commit, kind, end) in windows {
            own.push(window_in_savepoint(tx.conn(), commit, kind, *end).await?);
        }
        tx.commit(OP).await?;
        self.remember_participants(participants);
        Ok(own)
    }
}

impl StateDb {
    fn unknown_participants(
        &self,
        rows: &GroupRows,
        windows: &[WindowPart<'_>],
    ) -> Vec<ChatParticipant> {
        let known = lock(&self.archived.known);
        let of_rows = rows.retention.iter().flat_map(|r| &r.participants);
        let of_windows = windows.iter().flat_map(|(c, ..)| &c.participants);
        let unknown: BTreeSet<&ChatParticipant> = of_rows
            .chain(of_windows)
            .filter(|p| !known.contains(*p))
            .collect();
        unknown.into_iter().cloned().collect()
    }

    fn remember_participants(&self, committed: Vec<ChatParticipant>) {
        let mut known = lock(&self.archived.known);
        if known.len() + committed.len() > KNOWN_PARTICIPANTS {
            known.clear();
        }
        known.extend(committed);
    }
}

type WindowPart<'a> = (&'a WindowCommit, &'static str, Option<&'a ScopeEnd>);

/// The batches' rows of one group.
#[derive(Default)]
struct GroupRows {
    retention: Vec<RetentionRow>,
    holds: Vec<HeldKeys>,
    catalogue: Vec<CatalogueEntry>,
    now: Option<DateTime<Utc>>,
}

/// Writes one window inside the group transaction; its own failure rolls back only what it
/// wrote (Ok(Err)). Err: the savepoint itself failed, and with it the group.
async fn window_in_savepoint(
    conn: &mut AnyConnection,
    commit: &WindowCommit,
    kind: &str,
    end: Option<&ScopeEnd>,
) -> Result<Result<(), StateError>, StateError> {
    const OP: &str = "commit_window";
    let run = |sql: &'static str| sqlx::query(sql);
    run("SAVEPOINT window_commit")
        .execute(&mut *conn)
        .await
        .map_err(StateError::op(OP))?;
    let outcome = window_rows(conn, commit, kind, end).await;
    if outcome.is_err() {
        run("ROLLBACK TO SAVEPOINT window_commit")
            .execute(&mut *conn)
            .await
            .map_err(StateError::op(OP))?;
    }
    run("RELEASE SAVEPOINT window_commit")
        .execute(&mut *conn)
        .await
        .map_err(StateError::op(OP))?;
    Ok(outcome)
}

/// The queue of waiting batches; its lock is never held across an await.
struct QueueGuard<'a>(&'a SyncMutex<Vec<Pending>>);

impl QueueGuard<'_> {
    fn push(&self, p: Pending) {
        lock(self.0).push(p);
    }

    fn take(&self) -> Vec<Pending> {
        std::mem::take(&mut *lock(self.0))
    }
}

fn group_outcome(
    result: Result<Result<(), GroupError>, oneshot::error::RecvError>,
    op: &'static str,
) -> Result<(), StateError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(GroupError::Own(e))) => Err(e),
        Ok(Err(GroupError::Shared(e))) => Err(StateError::Shared(e)),
        // The task writing the group panicked: nothing of it was committed, and the caller
        // retries as after any failed write. (A cancelled caller no longer takes its group
        // down: the group is a task of its own.)
        Err(_) => Err(StateError::Abandoned { op }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HoldKind, ManifestRow, StateDb};
    use super::*;
    use crate::both_backends;

    both_backends!(
        a_batch_records_retention_holds_and_catalogue_together,
        overlapping_batches_in_any_order_never_deadlock,
        batches_that_wait_for_the_writer_commit_together,
        a_failed_group_commit_fails_every_batch_in_it,
        windows_commit_with_the_batches_and_fail_alone,
        participants_are_remembered_only_once_committed,
    );

    /// Starts `batches` archived inserts while the writer is taken and returns once all are
    /// queued, so that they are committed as one group when it is let go.
    async fn queued_behind_the_writer(
        db: &StateDb,
        batches: Vec<(Vec<RetentionRow>, Vec<HeldKeys>, Vec<CatalogueEntry>)>,
        want: usize,
    ) -> Vec<Result<(), StateError>> {
        let writer = db.archived.writer.lock().await;
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
        until_queued(db, want).await;
        drop(writer);
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("insert task"));
        }
        results
    }

    async fn until_queued(db: &StateDb, n: usize) {
        while db.archived.pending.lock().map(|p| p.len()).unwrap_or(0) < n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Window commits join the group of the batches waiting with them. One that is not the
    /// next link of its chain fails alone, with its own error: the batches and the other
    /// window of the group are committed, and nothing of it is.
    async fn windows_commit_with_the_batches_and_fail_alone(db: StateDb) {
        let now = Utc::now();
        let good = crate::state::tests::next_commit(&db, "chats", "a").await;
        let mut skips_a_link = crate::state::tests::next_commit(&db, "chats", "b").await;
        skips_a_link.manifest.seq = 2;
        let writer = db.archived.writer.lock().await;
        let (r, c) = entry("records/chats/grouped", now);
        let batch = {
            let db = db.clone();
            tokio::spawn(async move { db.archived_insert(&[r], &[], &[c], now).await })
        };
        let windows: Vec<_> = [good, skips_a_link]
            .into_iter()
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move { db.commit_window(&w).await })
            })
            .collect();
        until_queued(&db, 3).await;
        drop(writer);
        batch.await.expect("task").expect("the batch is committed");
        let mut told = Vec::new();
        for w in windows {
            told.push(w.await.expect("task"));
        }
        assert!(told[0].is_ok(), "{told:?}");
        assert!(
            matches!(
                told[1],
                Err(StateError::ManifestOutOfSequence {
                    expected: 1,
                    got: 2,
                    ..
                })
            ),
            "{told:?}"
        );
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 1);
        let seq = |m: Option<ManifestRow>| m.map(|m| m.seq);
        assert_eq!(
            seq(db.last_manifest("chats", "a").await.expect("a")),
            Some(1)
        );
        assert_eq!(seq(db.last_manifest("chats", "b").await.expect("b")), None);
        assert!(db.archived.pending.lock().expect("queue").is_empty());
    }

    async fn batches_that_wait_for_the_writer_commit_together(db: StateDb) {
        let now = Utc::now();
        let batches = (0..12)
            .map(|b| {
                let (r, c) = entry(&format!("records/chats/g{b}"), now);
                (vec![r], Vec::new(), vec![c])
            })
            .collect();
        for result in queued_behind_the_writer(&db, batches, 12).await {
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
        // A window waiting with them fails with them.
        let window = crate::state::tests::next_commit(&db, "chats", "u1").await;
        let in_group = {
            let db = db.clone();
            let window = window.clone();
            tokio::spawn(async move {
                until_queued(&db, 2).await;
                db.commit_window(&window).await
            })
        };
        let results = queued_behind_the_writer(&db, batches, 3).await;
        assert!(results.iter().all(|r| r.is_err()), "{results:?}");
        let told = in_group.await.expect("task");
        assert!(matches!(told, Err(StateError::Shared(_))), "{told:?}");
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 0);
        assert!(db
            .last_manifest("chats", "u1")
            .await
            .expect("read")
            .is_none());
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

    /// The caller that took the writer for a group is cancelled while the transaction waits
    /// for SQLite's writer. The group is a task of its own, so it is committed all the same
    /// and its group-mate is told so: one scope cancelled (its lease lost, say) no longer fails
    /// every batch that happened to queue with it. SQLite only: the writer slot is what holds
    /// the transaction still; one thread, so which caller takes the writer is fixed (the first
    /// to queue for it).
    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_group_writer_still_commits_its_group() {
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
        drop(sqlite_writer);
        let told = mate.await.expect("group-mate task");
        assert!(told.is_ok(), "{told:?}");
        assert_eq!(
            db.catalogue_count(Some("chats")).await.expect("count"),
            2,
            "the cancelled caller's batch is committed with its mate's"
        );
    }

    /// A group that fails forgets nothing it did not write: its participants are sent again
    /// by the retry, and only then remembered (and no longer sent).
    async fn participants_are_remembered_only_once_committed(db: StateDb) {
        let now = Utc::now();
        let p = ChatParticipant::new("19:c", "user", "u1");
        let (mut r, c) = entry("records/chats/p", now);
        r.participants = vec![p.clone()];
        let no_such_hold = vec![(987_654, vec![r.storage_key.clone()])];
        let failed = queued_behind_the_writer(
            &db,
            vec![(vec![r.clone()], no_such_hold, vec![c.clone()])],
            1,
        )
        .await;
        assert!(failed[0].is_err());
        let stored = |db: StateDb| async move {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chat_participants")
                .fetch_one(db.pool())
                .await
                .expect("count");
            n
        };
        assert_eq!(stored(db.clone()).await, 0);
        assert!(!lock(&db.archived.known).contains(&p));
        db.archived_insert(&[r], &[], &[c], now)
            .await
            .expect("retry");
        assert_eq!(stored(db.clone()).await, 1);
        assert!(lock(&db.archived.known).contains(&p));
        let (mut later, _) = entry("records/chats/q", now);
        later.participants = vec![p.clone()];
        let again = GroupRows {
            retention: vec![later],
            ..Default::default()
        };
        assert!(
            db.unknown_participants(&again, &[]).is_empty(),
            "known: not sent again"
        );
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
