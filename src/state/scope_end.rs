//! What an idle scope costs the state database per pass. The end of a scope's export (its poll
//! schedule and the release of its lease) rides in the commit of its last window, and a pass
//! reads the checkpoints and schedules of its scopes in batches: an idle scope then costs one
//! write transaction (its window) instead of three, and no reads of its own.

use std::collections::HashMap;

use sqlx::AnyConnection;

use super::checkpoints::{checkpoint_row, CHECKPOINT_COLUMNS};
use super::leases::RELEASE_LEASE;
use super::schedule::{schedule_row, SCHEDULE_COLUMNS, SET_SCHEDULE};
use super::{placeholders, Checkpoint, PollSchedule, StateDb, StateError};

/// Scope ids per batched read (far below both databases' bind limits).
const READ_CHUNK: usize = 500;

/// The end of one (source, scope) export, applied in the transaction that commits its last
/// window: either the window, the schedule and the release all happen, or none does (then the
/// caller still holds the lease and releases it on its own; the old schedule stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeEnd {
    /// The lease to release: deleted only if `owner` still holds it.
    pub work_key: String,
    pub owner: String,
    /// The schedule to store if the committed window found new record versions (or an earlier
    /// window of the same export did: then both are the same).
    pub schedule_if_new: Option<PollSchedule>,
    /// The schedule to store if it found none.
    pub schedule_if_idle: Option<PollSchedule>,
}

/// Stores the schedule and releases the lease on the commit's connection.
pub(super) async fn apply(
    conn: &mut AnyConnection,
    end: &ScopeEnd,
    found_new: bool,
) -> Result<(), StateError> {
    const OP: &str = "commit_window";
    let schedule = if found_new {
        &end.schedule_if_new
    } else {
        &end.schedule_if_idle
    };
    if let Some(s) = schedule {
        sqlx::query(SET_SCHEDULE)
            .bind(s.source.as_str())
            .bind(s.scope_id.as_str())
            .bind(s.polled_at)
            .bind(s.interval_ms)
            .bind(s.next_due_at)
            .bind(s.last_new_at)
            .execute(&mut *conn)
            .await
            .map_err(StateError::op(OP))?;
    }
    sqlx::query(RELEASE_LEASE)
        .bind(end.work_key.as_str())
        .bind(end.owner.as_str())
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(StateError::op(OP))
}

impl StateDb {
    /// The checkpoints of `source` for `scope_ids`, by scope id (absent: none recorded).
    pub async fn checkpoints_of(
        &self,
        source: &str,
        scope_ids: &[String],
    ) -> Result<HashMap<String, Checkpoint>, StateError> {
        const OP: &str = "checkpoints_of";
        let rows = self
            .scope_rows(OP, "checkpoints", CHECKPOINT_COLUMNS, source, scope_ids)
            .await?;
        (rows.iter())
            .map(|row| checkpoint_row(row, OP).map(|cp| (cp.scope_id.clone(), cp)))
            .collect()
    }

    /// The poll schedules of `source` for `scope_ids`, by scope id (absent: none written).
    pub async fn poll_schedules_of(
        &self,
        source: &str,
        scope_ids: &[String],
    ) -> Result<HashMap<String, PollSchedule>, StateError> {
        const OP: &str = "poll_schedules_of";
        let rows = self
            .scope_rows(OP, "poll_schedule", SCHEDULE_COLUMNS, source, scope_ids)
            .await?;
        (rows.iter())
            .map(|row| schedule_row(row, OP).map(|s| (s.scope_id.clone(), s)))
            .collect()
    }

    /// `columns` of `table`'s rows for `source` and `scope_ids`, READ_CHUNK ids per query.
    pub(super) async fn scope_rows(
        &self,
        op: &'static str,
        table: &str,
        columns: &str,
        source: &str,
        scope_ids: &[String],
    ) -> Result<Vec<sqlx::any::AnyRow>, StateError> {
        let mut out = Vec::with_capacity(scope_ids.len());
        for chunk in scope_ids.chunks(READ_CHUNK) {
            let sql = self.bulk_sql(format!(
                "SELECT {columns} FROM {table} WHERE source = $1 AND scope_id IN ({})",
                placeholders(2, chunk.len())
            ));
            let mut query = sqlx::query(&sql).bind(source);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            out.extend(
                query
                    .fetch_all(self.pool())
                    .await
                    .map_err(StateError::op(op))?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ManifestRow, WindowCommit};
    use chrono::{DateTime, TimeZone, Utc};
    use std::time::Duration;

    const TTL: Duration = Duration::from_secs(60);

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid test instant")
    }

    fn schedule(scope: &str, polled_at: i64, interval_ms: i64) -> PollSchedule {
        PollSchedule {
            source: "copilot".into(),
            scope_id: scope.into(),
            polled_at,
            interval_ms,
            next_due_at: polled_at + interval_ms,
            last_new_at: None,
        }
    }

    /// The commit of the next window of `scope`'s chain (or a broken one: wrong seq).
    async fn commit(db: &StateDb, scope: &str, new_records: i64, broken: bool) -> WindowCommit {
        let last = db.last_manifest("copilot", scope).await.expect("last");
        let seq = last.as_ref().map_or(1, |m| m.seq + 1) + i64::from(broken);
        WindowCommit {
            source: "copilot".into(),
            scope_id: scope.into(),
            manifest: ManifestRow {
                source: "copilot".into(),
                scope_id: scope.into(),
                seq,
                sha256: format!("{seq:064x}"),
                prev_sha256: last.map(|m| m.sha256),
                storage_key: format!("manifests/copilot/{scope}/{seq}"),
                window_start: at(seq * 100),
                window_end: at(seq * 100 + 100),
                record_count: 0,
                created_at: at(seq * 100 + 101),
            },
            advance_to: Some(at(seq * 100 + 100)),
            lookback_done_at: None,
            new_records,
            participants: Vec::new(),
            now: at(seq * 100 + 102),
        }
    }

    fn end(scope: &str, owner: &str, polled_at: i64) -> ScopeEnd {
        ScopeEnd {
            work_key: format!("copilot/{scope}"),
            owner: owner.into(),
            schedule_if_new: Some(schedule(scope, polled_at, 1_000)),
            schedule_if_idle: Some(schedule(scope, polled_at, 9_000)),
        }
    }

    /// The last window's commit stores the schedule that matches what it found and releases
    /// the lease; lost, either would leave the scope leased or unscheduled.
    async fn the_last_commit_schedules_and_releases(db: StateDb) {
        let key = "copilot/u";
        assert!(db.try_lease(key, "me", TTL, at(0)).await.expect("lease"));
        let c = commit(&db, "u", 0, false).await;
        db.commit_window_ending(&c, Some(&end("u", "me", 10)))
            .await
            .expect("commit");
        let stored = db.poll_schedule("copilot", "u").await.expect("read");
        assert_eq!(
            stored,
            Some(schedule("u", 10, 9_000)),
            "idle: the grown one"
        );
        assert!(
            db.try_lease(key, "other", TTL, at(1)).await.expect("free"),
            "released in the commit"
        );
        db.release_lease(key, "other").await.expect("release");
        // A window with new records: the reset schedule.
        assert!(db.try_lease(key, "me", TTL, at(2)).await.expect("lease"));
        let c = commit(&db, "u", 3, false).await;
        db.commit_window_ending(&c, Some(&end("u", "me", 20)))
            .await
            .expect("commit");
        let stored = db.poll_schedule("copilot", "u").await.expect("read");
        assert_eq!(stored, Some(schedule("u", 20, 1_000)), "new: the base one");
        assert!(db.try_lease(key, "other", TTL, at(3)).await.expect("free"));
    }

    /// A commit that fails changes nothing: the lease is still held (the caller releases it)
    /// and the old schedule stands.
    async fn a_failed_commit_keeps_lease_and_schedule(db: StateDb) {
        let key = "copilot/u";
        db.set_poll_schedule(&schedule("u", 5, 2_000))
            .await
            .expect("old schedule");
        assert!(db.try_lease(key, "me", TTL, at(0)).await.expect("lease"));
        let c = commit(&db, "u", 0, true).await;
        let failed = db.commit_window_ending(&c, Some(&end("u", "me", 10))).await;
        assert!(
            matches!(failed, Err(StateError::ManifestOutOfSequence { .. })),
            "{failed:?}"
        );
        let stored = db.poll_schedule("copilot", "u").await.expect("read");
        assert_eq!(stored, Some(schedule("u", 5, 2_000)));
        assert!(!db.try_lease(key, "other", TTL, at(1)).await.expect("held"));
        assert!(db.checkpoint("copilot", "u").await.expect("cp").is_none());
    }

    /// A lease another owner took over is not released by our commit.
    async fn the_commit_releases_only_our_lease(db: StateDb) {
        let key = "copilot/u";
        assert!(db.try_lease(key, "other", TTL, at(0)).await.expect("lease"));
        let c = commit(&db, "u", 0, false).await;
        db.commit_window_ending(&c, Some(&end("u", "me", 10)))
            .await
            .expect("commit");
        assert!(!db.try_lease(key, "third", TTL, at(1)).await.expect("held"));
    }

    /// The batched reads return what the single reads do, beyond one chunk.
    async fn batched_reads_match_single_reads(db: StateDb) {
        let ids: Vec<String> = (0..READ_CHUNK + 20).map(|i| format!("u{i:04}")).collect();
        for id in ids.iter().step_by(97) {
            let c = commit(&db, id, 1, false).await;
            db.commit_window(&c).await.expect("commit");
            db.set_poll_schedule(&schedule(id, 7, 3_000))
                .await
                .expect("schedule");
        }
        let cps = db.checkpoints_of("copilot", &ids).await.expect("cps");
        let schedules = db.poll_schedules_of("copilot", &ids).await.expect("s");
        assert_eq!(cps.len(), ids.iter().step_by(97).count());
        for id in &ids {
            let one = db.checkpoint("copilot", id).await.expect("cp");
            assert_eq!(cps.get(id), one.as_ref(), "{id}");
            let one = db.poll_schedule("copilot", id).await.expect("s");
            assert_eq!(schedules.get(id), one.as_ref(), "{id}");
        }
        assert!(db
            .checkpoints_of("chats", &ids)
            .await
            .expect("other source")
            .is_empty());
    }

    use crate::both_backends;

    both_backends!(
        the_last_commit_schedules_and_releases,
        a_failed_commit_keeps_lease_and_schedule,
        the_commit_releases_only_our_lease,
        batched_reads_match_single_reads,
    );
}
