//! The record catalogue: one row per archived record version, keyed by
//! (source, record_key, etag), which is also the dedup index.

use std::collections::{HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::bulk::{BulkInsert, Cell};
use super::types::{opt_to_ms, to_ms, RowReader};
use super::{placeholders, CatalogueEntry, StateDb, StateError};

/// record_keys per lookup query (plus one bind for the source).
const LOOKUP_CHUNK: usize = 500;

const CATALOGUE_COLUMNS: &str =
    "source, record_key, etag, sha256, storage_key, size_bytes, scope_id, created_at, archived_at";

impl StateDb {
    /// Finds which (record_key, etag) pairs of `source` are already catalogued, with their
    /// sha256. Any number of keys: they are queried in chunks.
    pub async fn catalogue_lookup(
        &self,
        source: &str,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), String>, StateError> {
        let wanted: HashSet<(&str, &str)> =
            keys.iter().map(|(k, e)| (k.as_str(), e.as_str())).collect();
        // Query by record_key (an index prefix) and keep the wanted etags here: a record has few
        // versions, and this needs no row-value syntax.
        let record_keys: Vec<&str> = {
            let mut seen = HashSet::new();
            keys.iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| seen.insert(*k))
                .collect()
        };
        let mut found = HashMap::new();
        for chunk in record_keys.chunks(LOOKUP_CHUNK) {
            for (key, etag, sha) in lookup_chunk(self, source, chunk).await? {
                if wanted.contains(&(key.as_str(), etag.as_str())) {
                    found.insert((key, etag), sha);
                }
            }
        }
        Ok(found)
    }

    /// Catalogues record versions in one transaction. Versions already catalogued are left as
    /// they are (ON CONFLICT DO NOTHING); returns how many rows were new.
    pub async fn catalogue_insert(&self, entries: &[CatalogueEntry]) -> Result<u64, StateError> {
        const OP: &str = "catalogue_insert";
        if entries.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write(OP).await?;
        let inserted = insert_entries(tx.conn(), entries).await?;
        tx.commit(OP).await?;
        Ok(inserted)
    }

    /// Every catalogued version of a source, ordered by record_key then etag.
    pub async fn catalogue_list(&self, source: &str) -> Result<Vec<CatalogueEntry>, StateError> {
        const OP: &str = "catalogue_list";
        let sql = format!(
            "SELECT {CATALOGUE_COLUMNS} FROM catalogue WHERE source = $1 ORDER BY record_key, etag"
        );
        let query = sqlx::query(&sql).bind(source);
        self.read_rows(query, OP, catalogue_row).await
    }

    /// Number of catalogued versions, of one source or of all.
    pub async fn catalogue_count(&self, source: Option<&str>) -> Result<i64, StateError> {
        let query = match source {
            Some(source) => {
                sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM catalogue WHERE source = $1")
                    .bind(source)
            }
            None => sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM catalogue"),
        };
        let (count,) = query
            .fetch_one(self.pool())
            .await
            .map_err(StateError::op("catalogue_count"))?;
        Ok(count)
    }
}

async fn lookup_chunk(
    db: &StateDb,
    source: &str,
    record_keys: &[&str],
) -> Result<Vec<(String, String, String)>, StateError> {
    let sql = db.bulk_sql(format!(
        "SELECT record_key, etag, sha256 FROM catalogue WHERE source = $1 AND record_key IN ({})",
        placeholders(2, record_keys.len())
    ));
    let mut query = sqlx::query_as(&sql).bind(source);
    for key in record_keys {
        query = query.bind(*key);
    }
    query
        .fetch_all(db.pool())
        .await
        .map_err(StateError::op("catalogue_lookup"))
}

/// Catalogues `entries`; versions already catalogued are left as they are. Returns how many
/// rows were new.
pub(super) async fn insert_entries(
    conn: &mut AnyConnection,
    entries: &[CatalogueEntry],
) -> Result<u64, StateError> {
    const INSERT: BulkInsert<'static, 9> = BulkInsert {
        table: "catalogue",
        columns: CATALOGUE_COLUMNS,
        types: [
            "text", "text", "text", "text", "text", "bigint", "text", "bigint", "bigint",
        ],
        conflict: "ON CONFLICT (source, record_key, etag) DO NOTHING",
        op: "catalogue_insert",
    };
    let cells: Vec<[Cell<'_>; 9]> = entries
        .iter()
        .map(|e| {
            [
                Cell::Text(&e.source),
                Cell::Text(&e.record_key),
                Cell::Text(&e.etag),
                Cell::Text(&e.sha256),
                Cell::Text(&e.storage_key),
                Cell::Int(Some(e.size_bytes)),
                Cell::Text(&e.scope_id),
                Cell::Int(opt_to_ms(e.created_at)),
                Cell::Int(Some(to_ms(e.archived_at))),
            ]
        })
        .collect();
    INSERT.run(conn, &cells).await
}

pub(super) fn catalogue_row(row: &AnyRow, op: &'static str) -> Result<CatalogueEntry, StateError> {
    let r = RowReader::new(row, op);
    Ok(CatalogueEntry {
        source: r.string("source")?,
        record_key: r.string("record_key")?,
        etag: r.string("etag")?,
        sha256: r.string("sha256")?,
        storage_key: r.string("storage_key")?,
        size_bytes: r.int("size_bytes")?,
        scope_id: r.string("scope_id")?,
        created_at: r.opt_time("created_at")?,
        archived_at: r.time("archived_at")?,
    })
}
