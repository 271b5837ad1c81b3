//! Checkpoints per (source, scope) and the window manifests whose commit advances them.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::types::{opt_to_ms, to_ms, RowReader};
use super::{
    scope_kind_for_source, Checkpoint, ManifestRow, ScopeEnd, StateDb, StateError, WindowCommit,
};

/// Longest error message kept in a checkpoint; Graph error bodies can be long and only the start
/// helps an operator.
const MAX_ERROR_CHARS: usize = 2000;

pub(super) const CHECKPOINT_COLUMNS: &str =
    "source, scope_id, watermark, last_lookback_at, last_success_at, \
     last_error, last_error_at, records_archived, windows_completed";
const MANIFEST_COLUMNS: &str = "source, scope_id, seq, sha256, prev_sha256, storage_key, \
     window_start, window_end, record_count, created_at";

impl StateDb {
    /// The checkpoint of one source for one scope, if any window or error was ever recorded.
    pub async fn checkpoint(
        &self,
        source: &str,
        scope_id: &str,
    ) -> Result<Option<Checkpoint>, StateError> {
        const OP: &str = "checkpoint";
        let ids = [scope_id.to_owned()];
        let rows = (self.scope_rows(OP, "checkpoints", CHECKPOINT_COLUMNS, source, &ids)).await?;
        rows.first().map(|r| checkpoint_row(r, OP)).transpose()
    }

    /// Remembers the latest failure of a source for a scope (shown by `status`); the next
    /// committed window clears it. The watermark is untouched.
    pub async fn record_error(
        &self,
        source: &str,
        scope_id: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "record_error";
        let kind = scope_kind_for_source(source)?;
        let message = truncate_chars(message, MAX_ERROR_CHARS);
        let _slot = self.writer_slot().await;
        sqlx::query(
            "INSERT INTO checkpoints (source, scope_id, scope_kind, last_error, last_error_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (source, scope_id) DO UPDATE SET \
               last_error = excluded.last_error, last_error_at = excluded.last_error_at",
        )
        .bind(source)
        .bind(scope_id)
        .bind(kind)
        .bind(message)
        .bind(to_ms(now))
        .execute(self.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op(OP))
    }

    /// The newest manifest of one source for one scope.
    pub async fn last_manifest(
        &self,
        source: &str,
        scope_id: &str,
    ) -> Result<Option<ManifestRow>, StateError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(StateError::op("last_manifest"))?;
        last_manifest_on(&mut conn, source, scope_id).await
    }

    /// Every manifest of one source for one scope, oldest first (for chain verification).
    pub async fn manifests(
        &self,
        source: &str,
        scope_id: &str,
    ) -> Result<Vec<ManifestRow>, StateError> {
        const OP: &str = "manifests";
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM manifests WHERE source = $1 AND scope_id = $2 ORDER BY seq"
        );
        let query = sqlx::query(&sql).bind(source).bind(scope_id);
        self.read_rows(query, OP, manifest_row).await
    }

    /// Completes a window: the manifest and the checkpoint change in ONE transaction, so a crash
    /// leaves either both or neither.
    ///
    /// The manifest must be the next link of the chain (seq = last + 1, starting at 1, and
    /// prev_sha256 = the last manifest's sha256), otherwise nothing changes. The watermark only
    /// moves forwards: max(stored, advance_to), and None leaves it.
    pub async fn commit_window(&self, c: &WindowCommit) -> Result<(), StateError> {
        self.commit_window_ending(c, None).await
    }

    /// As `commit_window`; with `end` (the scope's last window) the same transaction also
    /// stores the scope's poll schedule and releases its lease (see `ScopeEnd`).
    pub async fn commit_window_ending(
        &self,
        c: &WindowCommit,
        end: Option<&ScopeEnd>,
    ) -> Result<(), StateError> {
        validate_commit(c)?;
        let kind = scope_kind_for_source(&c.source)?;
        // With the stored batches waiting for the writer: one commit for all of them (on
        // SQLite every transaction's begin and commit hold the single writer).
        self.window_in_group(c, kind, end).await?;
        tracing::debug!(
            source = %c.source,
            scope.id = %c.scope_id,
            manifest.seq = c.manifest.seq,
            records.new = c.new_records,
            "window committed"
        );
        Ok(())
    }
}

/// A window's rows, in the caller's transaction: the manifest (the next link of its chain, or
/// an error), the checkpoint and, on the scope's last window, its end.
pub(super) async fn window_rows(
    conn: &mut AnyConnection,
    c: &WindowCommit,
    kind: &str,
    end: Option<&ScopeEnd>,
) -> Result<(), StateError> {
    let last = last_manifest_on(conn, &c.source, &c.scope_id).await?;
    check_chain(c, last.as_ref())?;
    insert_manifest(conn, &c.manifest).await?;
    upsert_checkpoint(conn, c, kind).await?;
    if let Some(end) = end {
        super::scope_end::apply(conn, end, c.new_records > 0).await?;
    }
    Ok(())
}

fn validate_commit(c: &WindowCommit) -> Result<(), StateError> {
    let invalid = |reason: String| StateError::InvalidInput {
        op: "commit_window",
        reason,
    };
    if c.manifest.source != c.source || c.manifest.scope_id != c.scope_id {
        return Err(invalid(format!(
            "manifest is for {}/{} but the commit is for {}/{}",
            c.manifest.source, c.manifest.scope_id, c.source, c.scope_id
        )));
    }
    if c.new_records < 0 {
        return Err(invalid(format!(
            "new_records is negative ({})",
            c.new_records
        )));
    }
    Ok(())
}

fn check_chain(c: &WindowCommit, last: Option<&ManifestRow>) -> Result<(), StateError> {
    let expected = last.map_or(1, |m| m.seq + 1);
    if c.manifest.seq != expected {
        return Err(StateError::ManifestOutOfSequence {
            source_name: c.source.clone(),
            scope_id: c.scope_id.clone(),
            expected,
            got: c.manifest.seq,
        });
    }
    let expected_prev = last.map(|m| m.sha256.clone());
    if c.manifest.prev_sha256 != expected_prev {
        return Err(StateError::ManifestChainBroken {
            source_name: c.source.clone(),
            scope_id: c.scope_id.clone(),
            seq: c.manifest.seq,
            expected: expected_prev,
            got: c.manifest.prev_sha256.clone(),
        });
    }
    Ok(())
}

async fn last_manifest_on(
    conn: &mut AnyConnection,
    source: &str,
    scope_id: &str,
) -> Result<Option<ManifestRow>, StateError> {
    const OP: &str = "last_manifest";
    let sql = format!(
        "SELECT {MANIFEST_COLUMNS} FROM manifests WHERE source = $1 AND scope_id = $2 \
         ORDER BY seq DESC LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(source)
        .bind(scope_id)
        .fetch_optional(conn)
        .await
        .map_err(StateError::op(OP))?;
    row.as_ref().map(|r| manifest_row(r, OP)).transpose()
}

async fn insert_manifest(conn: &mut AnyConnection, m: &ManifestRow) -> Result<(), StateError> {
    let sql = format!(
        "INSERT INTO manifests ({MANIFEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    );
    let result = sqlx::query(&sql)
        .bind(m.source.as_str())
        .bind(m.scope_id.as_str())
        .bind(m.seq)
        .bind(m.sha256.as_str())
        .bind(m.prev_sha256.as_deref())
        .bind(m.storage_key.as_str())
        .bind(to_ms(m.window_start))
        .bind(to_ms(m.window_end))
        .bind(m.record_count)
        .bind(to_ms(m.created_at))
        .execute(conn)
        .await;
    match result {
        Ok(_) => Ok(()),
        // Another replica committed this seq between our read and our insert.
        Err(e) if is_unique_violation(&e) => Err(StateError::ManifestOutOfSequence {
            source_name: m.source.clone(),
            scope_id: m.scope_id.clone(),
            expected: m.seq + 1,
            got: m.seq,
        }),
        Err(e) => Err(StateError::db("commit_window", e)),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

async fn upsert_checkpoint(
    conn: &mut AnyConnection,
    c: &WindowCommit,
    kind: &str,
) -> Result<(), StateError> {
    // The CASE keeps the watermark monotonic in SQL, where the stored value is read under the
    // same write lock, rather than trusting a value read earlier.
    sqlx::query(
        "INSERT INTO checkpoints (source, scope_id, scope_kind, watermark, last_lookback_at, \
           last_success_at, last_error, last_error_at, records_archived, windows_completed) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, 1) \
         ON CONFLICT (source, scope_id) DO UPDATE SET \
           watermark = CASE \
             WHEN excluded.watermark IS NULL THEN checkpoints.watermark \
             WHEN checkpoints.watermark IS NULL OR excluded.watermark > checkpoints.watermark \
               THEN excluded.watermark \
             ELSE checkpoints.watermark END, \
           last_lookback_at = COALESCE(excluded.last_lookback_at, checkpoints.last_lookback_at), \
           last_success_at = excluded.last_success_at, \
           last_error = NULL, \
           last_error_at = NULL, \
           records_archived = checkpoints.records_archived + excluded.records_archived, \
           windows_completed = checkpoints.windows_completed + 1",
    )
    .bind(c.source.as_str())
    .bind(c.scope_id.as_str())
    .bind(kind)
    .bind(opt_to_ms(c.advance_to))
    .bind(opt_to_ms(c.lookback_done_at))
    .bind(to_ms(c.now))
    .bind(c.new_records)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(StateError::op("commit_window"))
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

pub(crate) fn checkpoint_row(row: &AnyRow, op: &'static str) -> Result<Checkpoint, StateError> {
    let r = RowReader::new(row, op);
    Ok(Checkpoint {
        source: r.string("source")?,
        scope_id: r.string("scope_id")?,
        watermark: r.opt_time("watermark")?,
        last_lookback_at: r.opt_time("last_lookback_at")?,
        last_success_at: r.opt_time("last_success_at")?,
        last_error: r.opt_string("last_error")?,
        last_error_at: r.opt_time("last_error_at")?,
        records_archived: r.int("records_archived")?,
        windows_completed: r.int("windows_completed")?,
    })
}

fn manifest_row(row: &AnyRow, op: &'static str) -> Result<ManifestRow, StateError> {
    let r = RowReader::new(row, op);
    Ok(ManifestRow {
        source: r.string("source")?,
        scope_id: r.string("scope_id")?,
        seq: r.int("seq")?,
        sha256: r.string("sha256")?,
        prev_sha256: r.opt_string("prev_sha256")?,
        storage_key: r.string("storage_key")?,
        window_start: r.time("window_start")?,
        window_end: r.time("window_end")?,
        record_count: r.int("record_count")?,
        created_at: r.time("created_at")?,
    })
}

#[cfg(test)]
mod unit {
    use super::truncate_chars;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
    }
}
