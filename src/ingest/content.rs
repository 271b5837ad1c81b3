//! Ingest's side of record content (meeting transcripts and recordings, see `content`): for
//! each record of a page that has content, the content is downloaded, published create-only
//! with the same retention and holds as its record, and catalogued, before the window can
//! complete. Content already catalogued is not downloaded again, so a retried window (or a
//! record exported again by a later window) costs one catalogue lookup.

use super::{IngestError, Ingestor, Item, WindowReport};
use crate::archive::{keys, PutOutcome};
use crate::content::{self, content_record_key, content_storage_key, Downloaded};
use crate::graph::{GraphClient, Record};
use crate::manifest::ManifestEntry;
use crate::retention::RecordFacts;
use crate::sources::{ContentRef, RecordMeta, Scope, Source};
use crate::state::CatalogueEntry;
use bytes::Bytes;
use chrono::Utc;

/// A record of a page whose content must be archived with it.
pub(crate) struct Pending {
    record_key: String,
    meta: RecordMeta,
    content: ContentRef,
    facts: RecordFacts,
}

impl Ingestor {
    /// The records of a page that carry content, read before the page is consumed. Records
    /// without a usable identity are left to `ingest_records`, which quarantines them.
    pub(crate) fn pending_content(
        &self,
        graph: &GraphClient,
        source: &dyn Source,
        scope: &Scope,
        records: &[Record],
    ) -> Vec<Pending> {
        if !source.has_content() {
            return Vec::new();
        }
        let src = source.kind().as_str();
        records
            .iter()
            .filter_map(|rec| {
                let raw = rec.raw().ok()?;
                let meta = source.record_meta(scope, raw).ok()?;
                let content = source.content(graph.base_url(), scope, raw).ok()??;
                Some(Pending {
                    record_key: keys::record_key(&meta.parts),
                    meta,
                    content,
                    facts: super::custody::facts_of(src, scope, &rec.bytes),
                })
            })
            .collect()
    }

    /// Archives the content of `pending` records one after the other (recordings are large:
    /// parallelism comes from the scopes running side by side).
    pub(crate) async fn archive_content(
        &self,
        graph: &GraphClient,
        source: &dyn Source,
        scope: &Scope,
        pending: Vec<Pending>,
        entries: &mut Vec<ManifestEntry>,
        report: &mut WindowReport,
    ) -> Result<(), IngestError> {
        let src = source.kind().as_str();
        for p in pending {
            let entry = self.archive_one(graph, src, scope, p, report).await?;
            entries.push(entry);
        }
        Ok(())
    }

    async fn archive_one(
        &self,
        graph: &GraphClient,
        src: &str,
        scope: &Scope,
        p: Pending,
        report: &mut WindowReport,
    ) -> Result<ManifestEntry, IngestError> {
        let content_key = content_record_key(&p.record_key);
        if let Some(known) = self
            .state
            .catalogue_versions(src, &content_key)
            .await?
            .pop()
        {
            report.duplicates += 1;
            return Ok(ManifestEntry {
                key: known.storage_key,
                etag: known.etag,
                sha256: known.sha256,
                new: false,
            });
        }
        let started = std::time::Instant::now();
        let dl = content::download(graph, &p.content, &self.store.staging_dir()).await?;
        let key = content_storage_key(src, &p.record_key, &dl.sha256, p.content.extension);
        let (item, size) = self.publish(src, scope, &key, content_key, p, &dl).await?;
        report.new += 1;
        report.bytes_new += size;
        tracing::info!(
            source = src,
            scope.id = %scope.id,
            key = %key,
            size_bytes = size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "content archived"
        );
        Ok(ManifestEntry {
            key,
            etag: item.meta.etag.clone(),
            sha256: item.sha256.clone(),
            new: true,
        })
    }

    /// Publishes a downloaded file under `key` with its record's retention and holds, then
    /// catalogues it (retention rows first, as for records).
    async fn publish(
        &self,
        src: &str,
        scope: &Scope,
        key: &str,
        content_key: String,
        p: Pending,
        dl: &Downloaded,
    ) -> Result<(Item, u64), IngestError> {
        // The content is a version of its own record key, whose etag is its hash; retention
        // rules see its record's facts.
        let item = Item {
            record_key: content_key,
            meta: RecordMeta {
                etag: dl.sha256.clone(),
                ..p.meta
            },
            sha256: dl.sha256.clone(),
            bytes: Bytes::new(),
            facts: p.facts,
        };
        let custody = self.custody([&item.facts]).await?;
        let now = Utc::now();
        let opts = self.record_options(src, scope, &item, &custody, now);
        let outcome = self.store.put_file_create_only(key, &dl.file, &opts).await;
        // The store consumed the file, or failed: either way it must not linger.
        let _ = tokio::fs::remove_file(&dl.file).await;
        match outcome? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists { existing_sha256 } if existing_sha256 == dl.sha256 => {}
            PutOutcome::AlreadyExists { existing_sha256 } => {
                let err = IngestError::Conflict {
                    key: key.to_owned(),
                    stored_sha256: existing_sha256,
                    new_sha256: dl.sha256.clone(),
                };
                self.report_conflict(&err).await?;
                return Err(err);
            }
        }
        let planned = vec![self.planned(key, scope, &item, &custody, now)];
        let entry = CatalogueEntry {
            source: src.to_owned(),
            record_key: item.record_key.clone(),
            etag: item.meta.etag.clone(),
            sha256: item.sha256.clone(),
            storage_key: key.to_owned(),
            size_bytes: i64::try_from(dl.size).unwrap_or(i64::MAX),
            scope_id: scope.id.clone(),
            created_at: item.meta.created,
            archived_at: now,
        };
        self.record_archived(&planned, &[entry]).await?;
        self.late_holds(&custody, &planned).await?;
        Ok((item, dl.size))
    }
}
