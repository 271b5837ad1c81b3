//! Reads for `verify` over archives too large to hold in memory: the catalogue and the manifest
//! table as streams sorted by storage key (to merge with the store's sorted listing), and
//! catalogued objects looked up by record identity.

use std::collections::{HashMap, HashSet};

use futures::stream::{self, BoxStream, StreamExt};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, ConnectOptions, Connection};
use tokio::sync::mpsc;

use super::{placeholders, Backend, StateDb, StateError};

/// record_keys per lookup query (plus one bind for the source).
const LOOKUP_CHUNK: usize = 500;

/// Rows in flight between the reading task and the consumer.
const CHANNEL: usize = 1024;

type RowStream<T> = BoxStream<'static, Result<T, StateError>>;

impl StateDb {
    /// Every catalogued (storage_key, sha256), sorted by storage key byte by byte (the order of
    /// a store listing), streamed: memory does not grow with the catalogue.
    pub fn catalogue_by_storage_key(&self) -> RowStream<(String, String)> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT storage_key, sha256 FROM catalogue ORDER BY storage_key",
            // PostgreSQL sorts text by the database's collation unless told otherwise.
            Backend::Postgres => {
                "SELECT storage_key, sha256 FROM catalogue ORDER BY storage_key COLLATE \"C\""
            }
        };
        self.sorted_rows(sql, "catalogue_by_storage_key")
    }

    /// Every committed manifest's storage key, sorted byte by byte, streamed.
    pub fn manifest_keys_sorted(&self) -> RowStream<String> {
        let sql = match self.backend() {
            Backend::Sqlite => "SELECT storage_key FROM manifests ORDER BY storage_key",
            Backend::Postgres => {
                "SELECT storage_key FROM manifests ORDER BY storage_key COLLATE \"C\""
            }
        };
        let rows = self.sorted_rows::<(String,)>(sql, "manifest_keys_sorted");
        rows.map(|r| r.map(|(k,)| k)).boxed()
    }

    /// Runs one long read on a connection of its own, rows passed on through a bounded
    /// channel. Its own connection, because the statement lasts as long as the reader takes and
    /// a pooled one would log it as a slow statement, a warning about nothing.
    fn sorted_rows<T>(&self, sql: &'static str, op: &'static str) -> RowStream<T>
    where
        T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin + 'static,
    {
        let options = (*self.pool().connect_options())
            .clone()
            .disable_statement_logging();
        let sqlite = self.backend() == Backend::Sqlite;
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(async move {
            let mut conn = match quiet_connection(&options, sqlite).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(StateError::op(op)(e))).await;
                    return;
                }
            };
            let mut rows = sqlx::query_as::<_, T>(sql).fetch(&mut conn);
            while let Some(row) = rows.next().await {
                let failed = row.is_err();
                if tx.send(row.map_err(StateError::op(op))).await.is_err() || failed {
                    break;
                }
            }
            drop(rows);
            let _ = conn.close().await;
        });
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }).boxed()
    }

    /// The catalogued (storage_key, sha256) of each of `source`'s (record_key, etag) versions
    /// that is catalogued; through the primary key, in chunks.
    pub async fn catalogue_objects(
        &self,
        source: &str,
        versions: &[(String, String)],
    ) -> Result<HashMap<(String, String), (String, String)>, StateError> {
        let wanted: HashSet<(&str, &str)> = versions
            .iter()
            .map(|(k, e)| (k.as_str(), e.as_str()))
            .collect();
        let record_keys: Vec<&str> = {
            let mut seen = HashSet::new();
            versions
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| seen.insert(*k))
                .collect()
        };
        let mut found = HashMap::new();
        for chunk in record_keys.chunks(LOOKUP_CHUNK) {
            for (key, etag, storage_key, sha) in objects_chunk(self, source, chunk).await? {
                if wanted.contains(&(key.as_str(), etag.as_str())) {
                    found.insert((key, etag), (storage_key, sha));
                }
            }
        }
        Ok(found)
    }
}

/// A connection that logs no statements, waiting for SQLite's locks as the pool's do.
async fn quiet_connection(
    options: &sqlx::any::AnyConnectOptions,
    sqlite: bool,
) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect_with(options).await?;
    if sqlite {
        let pragma = format!("PRAGMA busy_timeout = {}", super::SQLITE_BUSY_TIMEOUT_MS);
        sqlx::query(&pragma).execute(&mut conn).await?;
    }
    Ok(conn)
}

async fn objects_chunk(
    db: &StateDb,
    source: &str,
    record_keys: &[&str],
) -> Result<Vec<(String, String, String, String)>, StateError> {
    let sql = db.bulk_sql(format!(
        "SELECT record_key, etag, storage_key, sha256 FROM catalogue \
         WHERE source = $1 AND record_key IN ({})",
        placeholders(2, record_keys.len())
    ));
    let mut query = sqlx::query_as(&sql).bind(source);
    for key in record_keys {
        query = query.bind(*key);
    }
    query
        .fetch_all(db.pool())
        .await
        .map_err(StateError::op("catalogue_objects"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{testing, CatalogueEntry};
    use futures::TryStreamExt;

    fn row(record_key: &str, etag: &str, storage_key: &str) -> CatalogueEntry {
        CatalogueEntry {
            source: "copilot".into(),
            record_key: record_key.into(),
            etag: etag.into(),
            sha256: format!("sha-{storage_key}"),
            storage_key: storage_key.into(),
            size_bytes: 1,
            scope_id: "u".into(),
            created_at: None,
            archived_at: chrono::Utc::now(),
        }
    }

    async fn sorted_and_looked_up(db: StateDb) {
        // Byte order: '-' (0x2d) < '.' < '/' < 'A' < '_' < 'a'; a locale collation differs.
        let keys = [
            "records/a/b",
            "records/a-b",
            "records/a.b",
            "records/A",
            "records/_x",
        ];
        let rows: Vec<CatalogueEntry> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| row(&format!("r{i}"), "1", k))
            .collect();
        db.catalogue_insert(&rows).await.expect("insert");
        let streamed: Vec<String> = db
            .catalogue_by_storage_key()
            .map_ok(|(k, _)| k)
            .try_collect()
            .await
            .expect("stream");
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(streamed, want);
        // verify's record pages, after each other, cover the catalogue in key order.
        let mut paged = Vec::new();
        let mut after: Option<CatalogueEntry> = None;
        loop {
            let page = db
                .catalogue_page(after.as_ref(), None, None, 2)
                .await
                .expect("page");
            let Some(last) = page.last().cloned() else {
                break;
            };
            paged.extend(page.into_iter().map(|e| e.record_key));
            after = Some(last);
        }
        assert_eq!(paged, ["r0", "r1", "r2", "r3", "r4"]);
        let asked = vec![
            ("r0".to_string(), "1".to_string()),
            ("r0".to_string(), "2".to_string()),
            ("nope".to_string(), "1".to_string()),
        ];
        let found = db
            .catalogue_objects("copilot", &asked)
            .await
            .expect("lookup");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[&("r0".to_string(), "1".to_string())],
            ("records/a/b".to_string(), "sha-records/a/b".to_string())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_streams_in_byte_order_and_looks_up_by_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite_in(dir.path()).await.expect("sqlite");
        sorted_and_looked_up(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_streams_in_byte_order_and_looks_up_by_identity() {
        match testing::fresh_postgres().await {
            Ok(Some(db)) => sorted_and_looked_up(db).await,
            Ok(None) => eprintln!(
                "skipping PostgreSQL variant ({}=1)",
                testing::SKIP_POSTGRES_VAR
            ),
            Err(e) => panic!("PostgreSQL state database: {e}"),
        }
    }
}
