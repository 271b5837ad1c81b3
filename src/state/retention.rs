//! Retention decisions per archived object, their custodians, and disposition (migration 0002).
//! Also the paged reads that `verify` walks the catalogue and manifests with.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::bulk::{BulkInsert, Cell};
use super::catalogue::catalogue_row;
use super::types::{opt_to_ms, to_ms, RowReader};
use super::{AuditEntry, CatalogueEntry, StateDb, StateError};

/// The retention written with one object, and who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRow {
    pub storage_key: String,
    pub source: String,
    pub scope_id: String,
    pub sha256: String,
    pub rule: String,
    /// None: forever.
    pub retain_until: Option<DateTime<Utc>>,
    /// "Unlocked" | "Locked".
    pub mode: String,
    pub created_at: Option<DateTime<Utc>>,
    /// (kind, id): kind is user | upn | chat | team; ids are compared lowercased.
    pub custodians: Vec<(String, String)>,
    /// For a chat message: the users it shows taking part in its chat (the exporting user, the
    /// sender). A user hold covers the chat's records through them, so they are not also
    /// written as custodians of each record.
    pub participants: Vec<ChatParticipant>,
}

/// A user taking part in a chat: `kind` is user (an id) or upn; ids are lowercased. A user
/// hold covers every record of the chats its user takes part in (migration 0010).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChatParticipant {
    pub chat_id: String,
    pub kind: String,
    pub id: String,
}

impl ChatParticipant {
    pub fn new(chat_id: &str, kind: &str, id: &str) -> ChatParticipant {
        ChatParticipant {
            chat_id: chat_id.to_ascii_lowercase(),
            kind: kind.to_string(),
            id: id.to_ascii_lowercase(),
        }
    }
}

/// An object whose retention has run out and that no hold covers (as of the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisposalCandidate {
    pub storage_key: String,
    pub source: String,
    pub scope_id: String,
    pub sha256: String,
    pub rule: String,
    pub retain_until: DateTime<Utc>,
    pub created_at: Option<DateTime<Utc>>,
}

const RETENTION_COLUMNS: &str =
    "storage_key, source, scope_id, sha256, rule, retain_until, mode, created_at, recorded_at";
const CATALOGUE_COLUMNS: &str =
    "source, record_key, etag, sha256, storage_key, size_bytes, scope_id, created_at, archived_at";

/// True when some active legal hold covers the object `{alias}.storage_key`: through a hold set
/// on it in the store (a row not yet let go counts, even mid-release), or through a custodian.
pub(crate) fn held_sql(alias: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM record_holds rh WHERE rh.storage_key = {alias}.storage_key \
           AND rh.released_at IS NULL) OR {})",
        custodian_held_sql(alias)
    )
}

/// True when an active hold covers the object `{alias}.storage_key` through one of its
/// custodians (a user hold matches the user's id or UPN), or, for a chat record, through a
/// participant of its chat.
pub(crate) fn custodian_held_sql(alias: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM record_custodians c JOIN legal_holds h \
           ON h.released_at IS NULL AND h.target = c.id \
           AND (h.kind = c.kind OR (h.kind = 'user' AND c.kind = 'upn')) \
           WHERE c.storage_key = {alias}.storage_key) \
         OR EXISTS (SELECT 1 FROM record_custodians c \
           JOIN chat_participants p ON c.kind = 'chat' AND p.chat_id = c.id \
           JOIN legal_holds h ON h.released_at IS NULL AND h.kind = 'user' AND h.target = p.id \
           WHERE c.storage_key = {alias}.storage_key))"
    )
}

impl StateDb {
    /// Records the retention of newly archived objects (and their custodians) in one
    /// transaction; objects already recorded keep their row.
    pub async fn retention_insert(&self, rows: &[RetentionRow]) -> Result<(), StateError> {
        const OP: &str = "retention_insert";
        if rows.is_empty() {
            return Ok(());
        }
        let now = to_ms(Utc::now());
        let mut tx = self.begin_write(OP).await?;
        insert_retention(tx.conn(), rows, now).await?;
        insert_custodians(tx.conn(), rows).await?;
        insert_participants(tx.conn(), rows.iter().flat_map(|r| &r.participants)).await?;
        tx.commit(OP).await
    }

    /// The recorded retention of one object.
    pub async fn retention_of(
        &self,
        storage_key: &str,
    ) -> Result<Option<RetentionRow>, StateError> {
        const OP: &str = "retention_of";
        let sql =
            format!("SELECT {RETENTION_COLUMNS} FROM record_retention WHERE storage_key = $1");
        let row = sqlx::query(&sql)
            .bind(storage_key)
            .fetch_optional(self.pool())
            .await
            .map_err(StateError::op(OP))?;
        row.map(|r| retention_row(&r, OP)).transpose()
    }

    /// Objects whose recorded retention ended before `now` (never "forever"), that are not
    /// disposed yet and that no active hold covers, after `after` in key order.
    pub async fn disposal_candidates(
        &self,
        now: DateTime<Utc>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DisposalCandidate>, StateError> {
        const OP: &str = "disposal_candidates";
        let sql = format!(
            "SELECT r.storage_key, r.source, r.scope_id, r.sha256, r.rule, r.retain_until, r.created_at \
             FROM record_retention r \
             WHERE r.retain_until IS NOT NULL AND r.retain_until < $1 AND r.storage_key > $2 \
               AND NOT EXISTS (SELECT 1 FROM dispositions d WHERE d.storage_key = r.storage_key \
                               AND d.completed_at IS NOT NULL) \
               AND NOT {} \
             ORDER BY r.storage_key LIMIT $3",
            held_sql("r")
        );
        let query = sqlx::query(&sql).bind(to_ms(now)).bind(after).bind(limit);
        self.read_rows(query, OP, candidate_row).await
    }

    /// Whether any active hold covers the object now (checked again right before a deletion).
    pub async fn is_held(&self, storage_key: &str) -> Result<bool, StateError> {
        const OP: &str = "is_held";
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT CAST($1 AS TEXT) AS storage_key) k WHERE {}",
            held_sql("k")
        );
        let (n,): (i64,) = sqlx::query_as(&sql)
            .bind(storage_key)
            .fetch_one(self.pool())
            .await
            .map_err(StateError::op(OP))?;
        Ok(n > 0)
    }

    /// Writes the intent to dispose of an object, before it is deleted.
    pub async fn disposition_start(
        &self,
        c: &DisposalCandidate,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "disposition_start";
        let _slot = self.writer_slot().await;
        sqlx::query(
            "INSERT INTO dispositions (storage_key, source, scope_id, sha256, rule, retain_until, \
               started_at, completed_at, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8) \
             ON CONFLICT (storage_key) DO NOTHING",
        )
        .bind(c.storage_key.as_str())
        .bind(c.source.as_str())
        .bind(c.scope_id.as_str())
        .bind(c.sha256.as_str())
        .bind(c.rule.as_str())
        .bind(to_ms(c.retain_until))
        .bind(to_ms(now))
        .bind(actor)
        .execute(self.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op(OP))
    }

    /// Marks a disposition done and appends its audit entry, together.
    pub async fn disposition_complete(
        &self,
        storage_key: &str,
        audit: &AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "disposition_complete";
        let mut tx = self.begin_write(OP).await?;
        sqlx::query(
            "UPDATE dispositions SET completed_at = $1 WHERE storage_key = $2 AND completed_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(storage_key)
        .execute(tx.conn())
        .await
        .map_err(StateError::op(OP))?;
        audit_in(tx.conn(), audit, now, OP).await?;
        tx.commit(OP).await
    }

    /// Storage keys of completed dispositions (verify expects these objects to be gone).
    pub async fn disposed_keys(&self) -> Result<Vec<String>, StateError> {
        const OP: &str = "disposed_keys";
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT storage_key FROM dispositions WHERE completed_at IS NOT NULL ORDER BY storage_key",
        )
        .fetch_all(self.pool())
        .await
        .map_err(StateError::op(OP))?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }

    /// One page of the catalogue in (source, record_key, etag) order after `after`, optionally
    /// only versions archived since `since` and of one scope. The row-value comparison lets
    /// both databases seek the primary key; the spelled-out OR made SQLite walk the catalogue
    /// from its start for every page (quadratic over a million rows).
    pub async fn catalogue_page(
        &self,
        after: Option<&CatalogueEntry>,
        since: Option<DateTime<Utc>>,
        scope_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CatalogueEntry>, StateError> {
        const OP: &str = "catalogue_page";
        let (src, key, etag) = after.map_or(("", "", ""), |e| {
            (e.source.as_str(), e.record_key.as_str(), e.etag.as_str())
        });
        let sql = format!(
            "SELECT {CATALOGUE_COLUMNS} FROM catalogue \
             WHERE (source, record_key, etag) > ($1, $2, $3) \
               AND archived_at >= $4 AND ($5 = '' OR scope_id = $5) \
             ORDER BY source, record_key, etag LIMIT $6"
        );
        let query = sqlx::query(&sql)
            .bind(src)
            .bind(key)
            .bind(etag)
            .bind(since.map_or(i64::MIN, to_ms))
            .bind(scope_id.unwrap_or(""))
            .bind(limit);
        self.read_rows(query, OP, catalogue_row).await
    }

    /// Every (source, scope) that has committed manifests.
    pub async fn manifest_scopes(&self) -> Result<Vec<(String, String)>, StateError> {
        sqlx::query_as("SELECT DISTINCT source, scope_id FROM manifests ORDER BY source, scope_id")
            .fetch_all(self.pool())
            .await
            .map_err(StateError::op("manifest_scopes"))
    }

    /// The id of a known scope whose label (UPN, team name) is `label`, ignoring case.
    pub async fn scope_id_by_label(
        &self,
        kind: &str,
        label: &str,
    ) -> Result<Option<String>, StateError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM scopes WHERE kind = $1 AND LOWER(label) = LOWER($2) ORDER BY last_seen DESC LIMIT 1",
        )
        .bind(kind)
        .bind(label)
        .fetch_optional(self.pool())
        .await
        .map_err(StateError::op("scope_id_by_label"))?;
        Ok(row.map(|(id,)| id))
    }
}

/// Appends an audit entry inside a caller's transaction.
pub(crate) async fn audit_in(
    conn: &mut AnyConnection,
    e: &AuditEntry,
    now: DateTime<Utc>,
    op: &'static str,
) -> Result<(), StateError> {
    let detail = serde_json::to_string(&e.detail).map_err(|err| StateError::InvalidInput {
        op,
        reason: format!("audit detail is not serialisable: {err}"),
    })?;
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(to_ms(now))
    .bind(e.actor.as_str())
    .bind(e.action.as_str())
    .bind(e.subject.as_str())
    .bind(detail)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(StateError::op(op))
}

pub(super) async fn insert_retention(
    conn: &mut AnyConnection,
    rows: &[RetentionRow],
    now: i64,
) -> Result<(), StateError> {
    const INSERT: BulkInsert<'static, 9> = BulkInsert {
        table: "record_retention",
        columns: RETENTION_COLUMNS,
        types: [
            "text", "text", "text", "text", "text", "bigint", "text", "bigint", "bigint",
        ],
        conflict: "ON CONFLICT (storage_key) DO NOTHING",
        op: "retention_insert",
    };
    let cells: Vec<[Cell<'_>; 9]> = rows
        .iter()
        .map(|r| {
            [
                Cell::Text(&r.storage_key),
                Cell::Text(&r.source),
                Cell::Text(&r.scope_id),
                Cell::Text(&r.sha256),
                Cell::Text(&r.rule),
                Cell::Int(opt_to_ms(r.retain_until)),
                Cell::Text(&r.mode),
                Cell::Int(opt_to_ms(r.created_at)),
                Cell::Int(Some(now)),
            ]
        })
        .collect();
    INSERT.run(conn, &cells).await.map(|_| ())
}

pub(super) async fn insert_custodians(
    conn: &mut AnyConnection,
    rows: &[RetentionRow],
) -> Result<(), StateError> {
    let all: Vec<(&str, &str, String)> = rows
        .iter()
        .flat_map(|r| {
            r.custodians.iter().map(move |(kind, id)| {
                (
                    r.storage_key.as_str(),
                    kind.as_str(),
                    id.to_ascii_lowercase(),
                )
            })
        })
        .collect();
    let rows: Vec<[&str; 3]> = all
        .iter()
        .map(|(k, kind, id)| [*k, *kind, id.as_str()])
        .collect();
    let into = ("record_custodians", "storage_key, kind, id");
    let conflict = "ON CONFLICT (kind, id, storage_key) DO NOTHING";
    insert_text_rows(conn, into, conflict, &rows, "retention_insert").await
}

/// Inserts rows of three text columns into `(table, columns)`.
async fn insert_text_rows(
    conn: &mut AnyConnection,
    (table, columns): (&str, &str),
    conflict: &str,
    rows: &[[&str; 3]],
    op: &'static str,
) -> Result<(), StateError> {
    let bulk = BulkInsert {
        table,
        columns,
        types: ["text"; 3],
        conflict,
        op,
    };
    let cells: Vec<[Cell<'_>; 3]> = rows.iter().map(|r| r.map(Cell::Text)).collect();
    bulk.run(conn, &cells).await.map(|_| ())
}

/// Records chat participants, each once, in key order (so that transactions adding the same
/// ones wait for each other instead of deadlocking on PostgreSQL); known ones are kept.
pub(super) async fn insert_participants<'a>(
    conn: &mut AnyConnection,
    participants: impl IntoIterator<Item = &'a ChatParticipant>,
) -> Result<(), StateError> {
    let all: Vec<&ChatParticipant> = participants
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<[&str; 3]> = all
        .iter()
        .map(|p| [p.chat_id.as_str(), p.kind.as_str(), p.id.as_str()])
        .collect();
    let into = ("chat_participants", "chat_id, kind, id");
    let conflict = "ON CONFLICT (chat_id, kind, id) DO NOTHING";
    insert_text_rows(conn, into, conflict, &rows, "chat_participants_insert").await
}

fn retention_row(row: &AnyRow, op: &'static str) -> Result<RetentionRow, StateError> {
    let r = RowReader::new(row, op);
    Ok(RetentionRow {
        storage_key: r.string("storage_key")?,
        source: r.string("source")?,
        scope_id: r.string("scope_id")?,
        sha256: r.string("sha256")?,
        rule: r.string("rule")?,
        retain_until: r.opt_time("retain_until")?,
        mode: r.string("mode")?,
        created_at: r.opt_time("created_at")?,
        custodians: Vec::new(),
        participants: Vec::new(),
    })
}

fn candidate_row(row: &AnyRow, op: &'static str) -> Result<DisposalCandidate, StateError> {
    let r = RowReader::new(row, op);
    Ok(DisposalCandidate {
        storage_key: r.string("storage_key")?,
        source: r.string("source")?,
        scope_id: r.string("scope_id")?,
        sha256: r.string("sha256")?,
        rule: r.string("rule")?,
        retain_until: r.time("retain_until")?,
        created_at: r.opt_time("created_at")?,
    })
}

#[cfg(test)]
mod tests;
