//! Scopes seen by discovery, and the final sweep of the ones that disappear.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::types::{to_ms, RowReader};
use super::{placeholders, ScopeRecord, ScopeRow, ScopeSync, StateDb, StateError};

/// Rows per multi-row statement: 4 binds each keeps well under SQLite's and PostgreSQL's bind
/// limits.
const UPSERT_CHUNK: usize = 200;
/// Ids per `IN (...)` list.
const ID_CHUNK: usize = 500;

/// `s.`-qualified scope columns, for queries that join scopes with other tables.
pub(super) fn prefixed_scope_columns(alias: &str) -> String {
    SCOPE_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order a pass starts scopes of `kind` in (scopes table `s`; `records`: the scope's
/// records archived). Graph holds each team to 4 rps, so a pass over teams ends with its last
/// teams alone at that rate and the tenant budget mostly unused; started last, the smallest
/// teams make that tail shortest: teams never archived from come first (a backfill, size
/// unknown), then the most records first. Other scopes have no rate of their own; they keep id
/// order, which streams from the primary key instead of sorting 100,000 users' rows.
pub(super) fn pass_order(kind: &str, records: &str) -> String {
    if by_size(kind) {
        format!("({records}) IS NULL DESC, {records} DESC, s.id")
    } else {
        "s.id".to_owned()
    }
}

/// Whether a pass starts scopes of `kind` by size (teams: the kind with a rate limit of its
/// own, `graph::budget`).
fn by_size(kind: &str) -> bool {
    kind == "team"
}

pub(super) const SCOPE_COLUMNS: &str =
    "kind, id, label, first_seen, last_seen, gone_at, final_sweep_at";

impl StateDb {
    /// Records one discovery pass for `kind`: the present scopes are upserted (label,
    /// last_seen = now, no longer gone); known scopes absent from `present` are marked gone at
    /// `now` unless already gone. A scope that comes back loses its gone mark and its final sweep,
    /// so it gets a new final sweep if it disappears again.
    pub async fn sync_scopes(
        &self,
        kind: &str,
        present: &[ScopeRecord],
        now: DateTime<Utc>,
    ) -> Result<ScopeSync, StateError> {
        const OP: &str = "sync_scopes";
        // Later duplicates win; PostgreSQL refuses to upsert one row twice in one statement.
        let present: BTreeMap<&str, Option<&str>> = present
            .iter()
            .map(|s| (s.id.as_str(), s.label.as_deref()))
            .collect();
        let mut tx = self.begin_write(OP).await?;
        let known = known_scopes(tx.conn(), kind).await?;
        let added = present.keys().filter(|id| !known.contains(**id)).count();
        let rows: Vec<(&str, Option<&str>)> = present.iter().map(|(k, v)| (*k, *v)).collect();
        for chunk in rows.chunks(UPSERT_CHUNK) {
            upsert_present(tx.conn(), kind, chunk, now).await?;
        }
        let absent: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|id| !present.contains_key(id))
            .collect();
        let mut newly_gone = Vec::new();
        for chunk in absent.chunks(ID_CHUNK) {
            newly_gone.extend(mark_gone(tx.conn(), kind, chunk, now).await?);
        }
        tx.commit(OP).await?;
        newly_gone.sort();
        if !newly_gone.is_empty() {
            tracing::info!(
                scope.kind = kind,
                gone = newly_gone.len(),
                "scopes disappeared; they get a final sweep"
            );
        }
        Ok(ScopeSync {
            added: added as u64,
            present: present.len() as u64,
            newly_gone,
        })
    }

    /// Scopes to work on: the present ones, plus gone ones whose final sweep is not done yet.
    pub async fn active_scopes(&self, kind: &str) -> Result<Vec<ScopeRow>, StateError> {
        const OP: &str = "active_scopes";
        let columns = prefixed_scope_columns("s");
        // Records archived per scope of the kind, over its sources, where the order uses them.
        let sizes = if by_size(kind) {
            "LEFT JOIN (SELECT k.scope_id, SUM(k.records_archived) AS n FROM checkpoints k \
             JOIN scopes t ON t.kind = $1 AND t.id = k.scope_id GROUP BY k.scope_id) c \
             ON c.scope_id = s.id"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {columns} FROM scopes s {sizes} \
             WHERE s.kind = $1 AND (s.gone_at IS NULL OR s.final_sweep_at IS NULL) \
             ORDER BY {}",
            pass_order(kind, "c.n")
        );
        let query = sqlx::query(&sql).bind(kind);
        self.read_rows(query, OP, scope_row).await
    }

    /// Every scope of a kind, gone or not (for operators and tests).
    pub async fn all_scopes(&self, kind: &str) -> Result<Vec<ScopeRow>, StateError> {
        const OP: &str = "all_scopes";
        let sql = format!("SELECT {SCOPE_COLUMNS} FROM scopes WHERE kind = $1 ORDER BY id");
        let query = sqlx::query(&sql).bind(kind);
        self.read_rows(query, OP, scope_row).await
    }

    /// Records that a gone scope had its final sweep; afterwards it is no longer active. A scope
    /// that is not gone (it came back meanwhile) or already swept is left as it is.
    pub async fn finish_final_sweep(
        &self,
        kind: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        const OP: &str = "finish_final_sweep";
        let _slot = self.writer_slot().await;
        let done = sqlx::query(
            "UPDATE scopes SET final_sweep_at = $3 \
             WHERE kind = $1 AND id = $2 AND gone_at IS NOT NULL AND final_sweep_at IS NULL",
        )
        .bind(kind)
        .bind(id)
        .bind(to_ms(now))
        .execute(self.write_pool())
        .await
        .map_err(StateError::op(OP))?;
        if done.rows_affected() == 0 {
            tracing::debug!(
                scope.kind = kind,
                scope.id = id,
                "final sweep not recorded: scope is present or already swept"
            );
        }
        Ok(())
    }
}

async fn known_scopes(conn: &mut AnyConnection, kind: &str) -> Result<HashSet<String>, StateError> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM scopes WHERE kind = $1")
        .bind(kind)
        .fetch_all(conn)
        .await
        .map_err(StateError::op("sync_scopes"))?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

async fn upsert_present(
    conn: &mut AnyConnection,
    kind: &str,
    rows: &[(&str, Option<&str>)],
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    // $1 = kind, $2 = now; then (id, label) per row.
    let values: Vec<String> = (0..rows.len())
        .map(|i| format!("($1, ${}, ${}, $2, $2)", 3 + 2 * i, 4 + 2 * i))
        .collect();
    let sql = format!(
        "INSERT INTO scopes (kind, id, label, first_seen, last_seen) VALUES {} \
         ON CONFLICT (kind, id) DO UPDATE SET \
           label = excluded.label, \
           last_seen = excluded.last_seen, \
           final_sweep_at = CASE WHEN scopes.gone_at IS NULL THEN scopes.final_sweep_at ELSE NULL END, \
           gone_at = NULL",
        values.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(kind).bind(to_ms(now));
    for (id, label) in rows {
        query = query.bind(*id).bind(label.map(str::to_owned));
    }
    query
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(StateError::op("sync_scopes"))
}

async fn mark_gone(
    conn: &mut AnyConnection,
    kind: &str,
    ids: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<String>, StateError> {
    let sql = format!(
        "UPDATE scopes SET gone_at = $2 WHERE kind = $1 AND gone_at IS NULL AND id IN ({}) \
         RETURNING id",
        placeholders(3, ids.len())
    );
    let mut query = sqlx::query_as::<_, (String,)>(&sql)
        .bind(kind)
        .bind(to_ms(now));
    for id in ids {
        query = query.bind(*id);
    }
    let gone = query
        .fetch_all(conn)
        .await
        .map_err(StateError::op("sync_scopes"))?;
    Ok(gone.into_iter().map(|(id,)| id).collect())
}

pub(super) fn scope_row(row: &AnyRow, op: &'static str) -> Result<ScopeRow, StateError> {
    let r = RowReader::new(row, op);
    Ok(ScopeRow {
        kind: r.string("kind")?,
        id: r.string("id")?,
        label: r.opt_string("label")?,
        first_seen: r.time("first_seen")?,
        last_seen: r.time("last_seen")?,
        gone_at: r.opt_time("gone_at")?,
        final_sweep_at: r.opt_time("final_sweep_at")?,
    })
}
