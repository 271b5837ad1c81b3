//! Legal holds (migration 0002): the holds themselves, and which objects each has been set on in
//! the store. Every change to a hold is written together with its audit entry.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::bulk::{BulkInsert, Cell};
use super::retention::{audit_in, custodian_held_sql};
use super::types::{to_ms, RowReader};
use super::{placeholders, AuditEntry, StateDb, StateError};

/// What a hold is placed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    User,
    Chat,
    Team,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::User => "user",
            HoldKind::Chat => "chat",
            HoldKind::Team => "team",
        }
    }

    pub fn parse(s: &str) -> Option<HoldKind> {
        match s {
            "user" => Some(HoldKind::User),
            "chat" => Some(HoldKind::Chat),
            "team" => Some(HoldKind::Team),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HoldRow {
    pub id: i64,
    pub kind: HoldKind,
    /// Lowercased id (or UPN) of the custodian.
    pub target: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
}

const HOLD_COLUMNS: &str =
    "id, kind, target, reason, created_by, created_at, released_at, released_by, release_reason";

impl StateDb {
    /// Places a hold and audits it, in one transaction.
    pub async fn hold_insert(
        &self,
        kind: HoldKind,
        target: &str,
        reason: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<HoldRow, StateError> {
        const OP: &str = "hold_insert";
        let target = target.to_ascii_lowercase();
        let mut tx = self.begin_write(OP).await?;
        let sql = format!(
            "INSERT INTO legal_holds (kind, target, reason, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {HOLD_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(kind.as_str())
            .bind(target.as_str())
            .bind(reason)
            .bind(actor)
            .bind(to_ms(now))
            .fetch_one(tx.conn())
            .await
            .map_err(StateError::op(OP))?;
        let hold = hold_row(&row, OP)?;
        let audit = AuditEntry {
            actor: actor.to_string(),
            action: "legal_hold_added".into(),
            subject: format!("{}:{}", kind.as_str(), target),
            detail: serde_json::json!({ "hold_id": hold.id, "reason": reason }),
        };
        audit_in(tx.conn(), &audit, now, OP).await?;
        tx.commit(OP).await?;
        Ok(hold)
    }

    /// Releases an active hold and audits it, in one transaction. None if no active hold has
    /// that id.
    pub async fn hold_release(
        &self,
        id: i64,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<HoldRow>, StateError> {
        const OP: &str = "hold_release";
        let mut tx = self.begin_write(OP).await?;
        let done = sqlx::query(
            "UPDATE legal_holds SET released_at = $1, released_by = $2, release_reason = $3 \
             WHERE id = $4 AND released_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(actor)
        .bind(reason)
        .bind(id)
        .execute(tx.conn())
        .await
        .map_err(StateError::op(OP))?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let sql = format!("SELECT {HOLD_COLUMNS} FROM legal_holds WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_one(tx.conn())
            .await
            .map_err(StateError::op(OP))?;
        let hold = hold_row(&row, OP)?;
        let audit = AuditEntry {
            actor: actor.to_string(),
            action: "legal_hold_released".into(),
            subject: format!("{}:{}", hold.kind.as_str(), hold.target),
            detail: serde_json::json!({ "hold_id": id, "reason": reason }),
        };
        audit_in(tx.conn(), &audit, now, OP).await?;
        tx.commit(OP).await?;
        Ok(Some(hold))
    }

    /// Holds, newest first; only active ones unless `all`.
    pub async fn holds(&self, all: bool) -> Result<Vec<HoldRow>, StateError> {
        const OP: &str = "holds";
        let filter = if all { "" } else { "WHERE released_at IS NULL" };
        let sql = format!("SELECT {HOLD_COLUMNS} FROM legal_holds {filter} ORDER BY id DESC");
        let query = sqlx::query(&sql);
        self.read_rows(query, OP, hold_row).await
    }

    /// Objects the hold covers through their custodians (and, for a user hold, the chats its
    /// user takes part in) and that it has not been set on yet, after `after` in key order.
    pub async fn hold_pending_keys(
        &self,
        hold: &HoldRow,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StateError> {
        const OP: &str = "hold_pending_keys";
        let sql = format!(
            "SELECT k.storage_key FROM ({}) k \
             WHERE NOT EXISTS (SELECT 1 FROM record_holds rh WHERE rh.hold_id = $3 \
                               AND rh.storage_key = k.storage_key) \
             ORDER BY k.storage_key LIMIT $4",
            covered_keys_sql(hold.kind, "$1", "$2")
        );
        let rows: Vec<(String,)> = sqlx::query_as(&sql)
            .bind(hold.target.as_str())
            .bind(after)
            .bind(hold.id)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(StateError::op(OP))?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }

    /// Counts the objects a hold covers.
    pub async fn hold_scope_count(&self, hold: &HoldRow) -> Result<i64, StateError> {
        let sql = format!(
            "SELECT COUNT(*) FROM ({}) k",
            covered_keys_sql(hold.kind, "$1", "''")
        );
        let (n,): (i64,) = sqlx::query_as(&sql)
            .bind(hold.target.as_str())
            .fetch_one(self.pool())
            .await
            .map_err(StateError::op("hold_scope_count"))?;
        Ok(n)
    }

    /// Of `chats`, those in which one of `users` (user hold targets: ids or UPNs, lowercased)
    /// takes part, as (user, chat id) pairs, lowercased.
    pub async fn chats_taken_part_in(
        &self,
        users: &[String],
        chats: &[String],
    ) -> Result<Vec<(String, String)>, StateError> {
        const OP: &str = "chats_taken_part_in";
        let mut found = Vec::new();
        if users.is_empty() {
            return Ok(found);
        }
        let users: Vec<String> = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        let chats: Vec<String> = chats.iter().map(|c| c.to_ascii_lowercase()).collect();
        for part in chats.chunks(200) {
            for held in users.chunks(200) {
                let sql = self.bulk_sql(format!(
                    "SELECT DISTINCT id, chat_id FROM chat_participants \
                     WHERE chat_id IN ({}) AND id IN ({})",
                    placeholders(1, part.len()),
                    placeholders(1 + part.len(), held.len())
                ));
                let mut q = sqlx::query_as::<_, (String, String)>(&sql);
                for v in part.iter().chain(held) {
                    q = q.bind(v.as_str());
                }
                found.extend(q.fetch_all(self.pool()).await.map_err(StateError::op(OP))?);
            }
        }
        Ok(found)
    }

    /// Records that the store now holds these objects for `hold_id`.
    pub async fn record_holds_insert(
        &self,
        hold_id: i64,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "record_holds_insert";
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write(OP).await?;
        insert_record_holds(tx.conn(), hold_id, keys, now).await?;
        tx.commit(OP).await
    }

    /// Objects a (released) hold was set on and that have not been let go yet.
    pub async fn record_holds_open(
        &self,
        hold_id: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StateError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT storage_key FROM record_holds WHERE hold_id = $1 AND released_at IS NULL \
             AND storage_key > $2 ORDER BY storage_key LIMIT $3",
        )
        .bind(hold_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(StateError::op("record_holds_open"))?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }

    /// Marks one object as no longer held by `hold_id`.
    pub async fn record_hold_release(
        &self,
        hold_id: i64,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let _slot = self.writer_slot().await;
        sqlx::query(
            "UPDATE record_holds SET released_at = $1 WHERE hold_id = $2 AND storage_key = $3 \
             AND released_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(hold_id)
        .bind(key)
        .execute(self.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op("record_hold_release"))
    }

    /// Whether another active hold than `hold_id` still covers the object.
    pub async fn held_by_other(&self, key: &str, hold_id: i64) -> Result<bool, StateError> {
        // The released hold no longer counts in held_sql (released_at is set); its own
        // record_holds row, still open until this check passes, must not count either.
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT CAST($1 AS TEXT) AS storage_key) k WHERE \
             EXISTS (SELECT 1 FROM record_holds rh WHERE rh.storage_key = k.storage_key \
                     AND rh.released_at IS NULL AND rh.hold_id <> $2 \
                     AND EXISTS (SELECT 1 FROM legal_holds h WHERE h.id = rh.hold_id AND h.released_at IS NULL)) \
             OR ({})",
            custodian_held_sql("k")
        );
        let (n,): (i64,) = sqlx::query_as(&sql)
            .bind(key)
            .bind(hold_id)
            .fetch_one(self.pool())
            .await
            .map_err(StateError::op("held_by_other"))?;
        Ok(n > 0)
    }
}

/// The keys (column `storage_key`, each once) of the objects a hold of `kind` on the target
/// bound at `target` covers, from `after` on: through their custodians, and for a user hold
/// through the chats the user takes part in. Each branch reads one index range.
fn covered_keys_sql(kind: HoldKind, target: &str, after: &str) -> String {
    let direct = |kinds: &str| {
        format!(
            "SELECT c.storage_key FROM record_custodians c \
             WHERE c.kind IN ({kinds}) AND c.id = {target} AND c.storage_key > {after}"
        )
    };
    match kind {
        HoldKind::User => format!(
            "{} UNION SELECT c.storage_key FROM chat_participants p \
             JOIN record_custodians c ON c.kind = 'chat' AND c.id = p.chat_id \
             WHERE p.id = {target} AND c.storage_key > {after}",
            direct("'user', 'upn'")
        ),
        HoldKind::Chat => direct("'chat'"),
        HoldKind::Team => direct("'team'"),
    }
}

fn hold_row(row: &AnyRow, op: &'static str) -> Result<HoldRow, StateError> {
    let r = RowReader::new(row, op);
    let kind = r.string("kind")?;
    Ok(HoldRow {
        id: r.int("id")?,
        kind: HoldKind::parse(&kind).ok_or(StateError::Corrupt {
            op,
            column: "kind",
            value: kind,
        })?,
        target: r.string("target")?,
        reason: r.string("reason")?,
        created_by: r.string("created_by")?,
        created_at: r.time("created_at")?,
        released_at: r.opt_time("released_at")?,
        released_by: r.opt_string("released_by")?,
        release_reason: r.opt_string("release_reason")?,
    })
}

/// Records that `hold_id` was set on the objects under `keys`, in the caller's transaction.
pub(super) async fn insert_record_holds(
    conn: &mut AnyConnection,
    hold_id: i64,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    const INSERT: BulkInsert<'static, 3> = BulkInsert {
        table: "record_holds",
        columns: "hold_id, storage_key, applied_at",
        types: ["bigint", "text", "bigint"],
        conflict: "ON CONFLICT (hold_id, storage_key) DO NOTHING",
        op: "record_holds_insert",
    };
    let at = Some(to_ms(now));
    let cells: Vec<[Cell<'_>; 3]> = keys
        .iter()
        .map(|k| [Cell::Int(Some(hold_id)), Cell::Text(k), Cell::Int(at)])
        .collect();
    INSERT.run(conn, &cells).await.map(|_| ())
}
