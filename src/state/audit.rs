//! The append-only audit log. Triggers in both databases refuse UPDATE and DELETE, so even a
//! bug or an operator with SQL access cannot rewrite history through the application's tables.

use chrono::Utc;
use sqlx::any::AnyRow;

use super::types::{to_ms, RowReader};
use super::{AuditEntry, AuditRow, StateDb, StateError};

impl StateDb {
    /// Appends one event, stamped with the current time.
    pub async fn audit(&self, e: &AuditEntry) -> Result<(), StateError> {
        const OP: &str = "audit";
        let detail = serde_json::to_string(&e.detail).map_err(|err| StateError::InvalidInput {
            op: OP,
            reason: format!("detail is not serialisable: {err}"),
        })?;
        let _slot = self.writer_slot().await;
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_ms(Utc::now()))
        .bind(e.actor.as_str())
        .bind(e.action.as_str())
        .bind(e.subject.as_str())
        .bind(detail)
        .execute(self.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op(OP))
    }

    /// The newest `limit` events, newest first.
    pub async fn audit_list(&self, limit: i64) -> Result<Vec<AuditRow>, StateError> {
        const OP: &str = "audit_list";
        let query = sqlx::query(
            "SELECT id, at, actor, action, subject, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.max(0));
        self.read_rows(query, OP, audit_row).await
    }
}

fn audit_row(row: &AnyRow, op: &'static str) -> Result<AuditRow, StateError> {
    let r = RowReader::new(row, op);
    Ok(AuditRow {
        id: r.int("id")?,
        at: r.time("at")?,
        actor: r.string("actor")?,
        action: r.string("action")?,
        subject: r.string("subject")?,
        detail: r.string("detail")?,
    })
}
