//! The operators' view: every checkpoint with its scope and catalogue count.

use sqlx::any::AnyRow;

use super::checkpoints::checkpoint_row;
use super::types::RowReader;
use super::{StateDb, StateError, StatusRow};

impl StateDb {
    /// Every checkpoint, joined with its scope's label and gone mark (by scope kind and id), and
    /// the number of record versions catalogued for that source and scope; ordered by source
    /// then scope id.
    pub async fn status(&self) -> Result<Vec<StatusRow>, StateError> {
        const OP: &str = "status";
        let query = sqlx::query(
            "SELECT c.source, c.scope_id, c.scope_kind, c.watermark, c.last_lookback_at, \
               c.last_success_at, c.last_error, c.last_error_at, c.records_archived, \
               c.windows_completed, s.label, s.gone_at, \
               (SELECT COUNT(*) FROM catalogue k \
                 WHERE k.source = c.source AND k.scope_id = c.scope_id) AS catalogued \
             FROM checkpoints c \
             LEFT JOIN scopes s ON s.kind = c.scope_kind AND s.id = c.scope_id \
             ORDER BY c.source, c.scope_id",
        );
        self.read_rows(query, OP, status_row).await
    }
}

fn status_row(row: &AnyRow, op: &'static str) -> Result<StatusRow, StateError> {
    let r = RowReader::new(row, op);
    let checkpoint = checkpoint_row(row, op)?;
    Ok(StatusRow {
        source: checkpoint.source.clone(),
        scope_kind: r.string("scope_kind")?,
        scope_id: checkpoint.scope_id.clone(),
        label: r.opt_string("label")?,
        gone_at: r.opt_time("gone_at")?,
        checkpoint,
        catalogued: r.int("catalogued")?,
    })
}
