//! Rows and inputs of the state database, and the conversions between instants and the epoch
//! milliseconds both databases store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::StateError;

/// A scope (user, team, organizer) that discovery found present in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRecord {
    pub id: String,
    pub label: Option<String>,
}

/// What `sync_scopes` changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeSync {
    /// Scopes never seen before.
    pub added: u64,
    /// Distinct scopes present in this discovery pass.
    pub present: u64,
    /// Ids of scopes that were present before and are absent now.
    pub newly_gone: Vec<String>,
}

/// A scope as the state database remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRow {
    pub kind: String,
    pub id: String,
    pub label: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub gone_at: Option<DateTime<Utc>>,
    pub final_sweep_at: Option<DateTime<Utc>>,
}

/// Progress of one source for one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub source: String,
    pub scope_id: String,
    /// Everything before this instant is durably archived. Never moves backwards.
    pub watermark: Option<DateTime<Utc>>,
    pub last_lookback_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub records_archived: i64,
    pub windows_completed: i64,
}

/// One archived record version. The key is (source, record_key, etag); record_key carries
/// every identity part (e.g. "<user id>/<interaction id>"), never a bare Graph id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueEntry {
    pub source: String,
    pub record_key: String,
    pub etag: String,
    pub sha256: String,
    pub storage_key: String,
    pub size_bytes: i64,
    pub scope_id: String,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: DateTime<Utc>,
}

/// One window manifest; `seq` counts from 1 per (source, scope) and `prev_sha256` chains to the
/// previous manifest (None for seq 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRow {
    pub source: String,
    pub scope_id: String,
    pub seq: i64,
    pub sha256: String,
    pub prev_sha256: Option<String>,
    pub storage_key: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub record_count: i64,
    pub created_at: DateTime<Utc>,
}

/// Everything `commit_window` writes in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCommit {
    pub source: String,
    pub scope_id: String,
    pub manifest: ManifestRow,
    /// New watermark; ignored if it is not later than the stored one. None leaves it.
    pub advance_to: Option<DateTime<Utc>>,
    /// Set when this window was a look-back sweep.
    pub lookback_done_at: Option<DateTime<Utc>>,
    pub new_records: i64,
    /// The chats the scope's user was seen taking part in during the window (its export
    /// returned their messages), recorded with the window for user holds.
    pub participants: Vec<super::ChatParticipant>,
    pub now: DateTime<Utc>,
}

/// An audit event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// An audit event as stored; `detail` is the JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

/// One line of the operators' status view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    pub source: String,
    pub scope_kind: String,
    pub scope_id: String,
    pub label: Option<String>,
    pub gone_at: Option<DateTime<Utc>>,
    pub checkpoint: Checkpoint,
    /// Record versions catalogued under this (source, scope).
    pub catalogued: i64,
}

/// Stored form of an instant: milliseconds since the epoch. Sub-millisecond parts are dropped
/// (rounded down), which for a watermark only makes the next window overlap a little more.
pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn opt_to_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(to_ms)
}

/// Reads typed columns from a row, naming the operation in every error.
pub(crate) struct RowReader<'r> {
    pub(crate) row: &'r AnyRow,
    pub(crate) op: &'static str,
}

impl<'r> RowReader<'r> {
    pub(crate) fn new(row: &'r AnyRow, op: &'static str) -> Self {
        Self { row, op }
    }

    pub(crate) fn string(&self, col: &'static str) -> Result<String, StateError> {
        self.row.try_get(col).map_err(StateError::op(self.op))
    }

    pub(crate) fn opt_string(&self, col: &'static str) -> Result<Option<String>, StateError> {
        self.row.try_get(col).map_err(StateError::op(self.op))
    }

    pub(crate) fn int(&self, col: &'static str) -> Result<i64, StateError> {
        self.row.try_get(col).map_err(StateError::op(self.op))
    }

    pub(crate) fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StateError> {
        self.row.try_get(col).map_err(StateError::op(self.op))
    }

    pub(crate) fn time(&self, col: &'static str) -> Result<DateTime<Utc>, StateError> {
        let ms = self.int(col)?;
        DateTime::from_timestamp_millis(ms).ok_or_else(|| StateError::Corrupt {
            op: self.op,
            column: col,
            value: ms.to_string(),
        })
    }

    pub(crate) fn opt_time(&self, col: &'static str) -> Result<Option<DateTime<Utc>>, StateError> {
        match self.opt_int(col)? {
            None => Ok(None),
            Some(ms) => DateTime::from_timestamp_millis(ms)
                .map(Some)
                .ok_or_else(|| StateError::Corrupt {
                    op: self.op,
                    column: col,
                    value: ms.to_string(),
                }),
        }
    }
}
