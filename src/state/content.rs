//! Catalogue lookups for content objects (meeting transcripts and recordings): a content
//! object is catalogued as a version of `<record key>/$content` whose etag is its sha256,
//! which is not known before the download, so the lookup is by record key alone.

use super::{StateDb, StateError};

/// One catalogued version of a record key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueVersion {
    pub etag: String,
    pub sha256: String,
    pub storage_key: String,
}

impl StateDb {
    /// Every catalogued version of one record key of a source, oldest first.
    pub async fn catalogue_versions(
        &self,
        source: &str,
        record_key: &str,
    ) -> Result<Vec<CatalogueVersion>, StateError> {
        const OP: &str = "catalogue_versions";
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT etag, sha256, storage_key FROM catalogue \
             WHERE source = $1 AND record_key = $2 ORDER BY archived_at, etag",
        )
        .bind(source)
        .bind(record_key)
        .fetch_all(self.pool())
        .await
        .map_err(StateError::op(OP))?;
        Ok(rows
            .into_iter()
            .map(|(etag, sha256, storage_key)| CatalogueVersion {
                etag,
                sha256,
                storage_key,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{testing, CatalogueEntry};
    use chrono::Utc;

    fn row(record_key: &str, etag: &str) -> CatalogueEntry {
        CatalogueEntry {
            source: "recordings".into(),
            record_key: record_key.into(),
            etag: etag.into(),
            sha256: etag.into(),
            storage_key: format!("content/recordings/{record_key}/{etag}.mp4"),
            size_bytes: 1,
            scope_id: "org".into(),
            created_at: None,
            archived_at: Utc::now(),
        }
    }

    async fn versions_of_one_key_whatever_their_etag(db: StateDb) {
        let key = "org/meeting/item/$content";
        assert!(db
            .catalogue_versions("recordings", key)
            .await
            .expect("lookup")
            .is_empty());
        db.catalogue_insert(&[row(key, "aa"), row("org/meeting/other/$content", "bb")])
            .await
            .expect("insert");
        let found = db
            .catalogue_versions("recordings", key)
            .await
            .expect("lookup");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].sha256, "aa");
        assert_eq!(
            found[0].storage_key,
            "content/recordings/org/meeting/item/$content/aa.mp4"
        );
        // Another source with the same key is another record.
        assert!(db
            .catalogue_versions("transcripts", key)
            .await
            .expect("lookup")
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_of_one_key_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite_in(dir.path()).await.expect("sqlite");
        versions_of_one_key_whatever_their_etag(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_of_one_key_postgres() {
        match testing::fresh_postgres().await {
            Ok(Some(db)) => versions_of_one_key_whatever_their_etag(db).await,
            Ok(None) => eprintln!(
                "skipping PostgreSQL variant ({}=1)",
                testing::SKIP_POSTGRES_VAR
            ),
            Err(e) => panic!("PostgreSQL state database: {e}"),
        }
    }
}
