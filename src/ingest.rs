//! Ingest: pages in, durable record versions out.
//!
//! For one window of one scope: page through Graph, slice each record's exact bytes, hash them,
//! drop versions already catalogued (record identity + etag), write the rest create-only to the
//! archive store, catalogue them, and only when every page is done write the window manifest and
//! advance the checkpoint, together, in one transaction.

use crate::archive::{keys, sha256_hex, ArchiveStore, PutItem, PutOutcome, StoreError};
use crate::graph::{GraphClient, GraphError, Page, Record};
use crate::manifest::{Manifest, ManifestEntry};
use crate::sources::{RecordMeta, Scope, Source, Window};
use crate::state::{
    AuditEntry, CatalogueEntry, ManifestRow, ScopeEnd, StateDb, StateError, WindowCommit,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

mod content;
mod custody;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(
        "integrity alarm: {key} already exists in the archive with different content \
         (stored sha256 {stored_sha256}, Graph returned {new_sha256}); it was not overwritten and \
         the window will not complete until an operator investigates"
    )]
    Conflict {
        key: String,
        stored_sha256: String,
        new_sha256: String,
    },
}

/// What one window did, for the per-window log line and the pass summary.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct WindowReport {
    pub pages: u64,
    pub records: u64,
    pub new: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub bytes_new: u64,
    /// The earliest `createdDateTime` among the versions this window stored for the first
    /// time: how late polling was the first to see something (notifications' gap check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_new: Option<DateTime<Utc>>,
}

/// The earlier of two optional instants.
pub fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How the checkpoint moves when the window completes.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    pub window: Window,
    /// New watermark (catch-up windows); None for look-back sweeps.
    pub advance_to: Option<DateTime<Utc>>,
    /// Set for look-back sweeps.
    pub lookback_done_at: Option<DateTime<Utc>>,
    /// On a scope's last window: its schedule and lease release, committed with the window.
    pub end: Option<Arc<ScopeEnd>>,
}

/// What a window's pages leave for its commit.
#[derive(Debug, Default)]
pub struct WindowLog {
    /// The manifest's entries: every record version the window saw, new or already stored.
    pub entries: Vec<ManifestEntry>,
    /// The chats whose messages the scope's export returned (lowercased): its user takes part
    /// in them, whoever's export stored the messages first.
    chats: BTreeSet<String>,
}

#[derive(Clone)]
pub struct Ingestor {
    store: Arc<dyn ArchiveStore>,
    state: StateDb,
    write_concurrency: usize,
    /// Retention rules for what is written (see `ingest/custody.rs`); shared by every clone and
    /// swapped whole on a SIGHUP reload, so a batch sees one consistent rule set.
    compliance: Arc<std::sync::RwLock<Arc<crate::compliance::Compliance>>>,
}

/// One identified record of a page, ready to store.
struct Item {
    record_key: String,
    meta: RecordMeta,
    sha256: String,
    bytes: Bytes,
    /// What retention rules and holds match on; read only for versions that will be written
    /// (most of a chat page is versions another member's export already stored).
    facts: crate::retention::RecordFacts,
}

impl Ingestor {
    pub fn new(store: Arc<dyn ArchiveStore>, state: StateDb, write_concurrency: usize) -> Self {
        Ingestor {
            store,
            state,
            write_concurrency: write_concurrency.max(1),
            compliance: Arc::new(std::sync::RwLock::new(Arc::new(Default::default()))),
        }
    }

    pub fn store(&self) -> &Arc<dyn ArchiveStore> {
        &self.store
    }

    /// Fetches every page of one window and commits it. On error nothing is committed for the
    /// window (records already stored stay stored and catalogued; the retry dedups them).
    /// The next page is fetched while the current one is stored, so writes do not idle the
    /// request budget; at most one page is prefetched per scope.
    pub async fn run_window(
        &self,
        graph: &GraphClient,
        source: &dyn Source,
        scope: &Scope,
        plan: &WindowPlan,
    ) -> Result<WindowReport, IngestError> {
        let first = source.window_url(graph.base_url(), scope, &plan.window);
        let headers = &source.headers();
        let fetch =
            |url: url::Url| async move { graph.get_page(&url, source.endpoint(), headers).await };
        let mut report = WindowReport::default();
        let mut log = WindowLog::default();
        let mut page = fetch(first).await?;
        loop {
            report.pages += 1;
            let next = page.next_link.take().map(|n| source.next_page_url(n));
            let ingest =
                self.ingest_page(graph, source, scope, page.records, &mut log, &mut report);
            match next {
                Some(url) => page = ingest_while_fetching(ingest, fetch(url)).await?,
                None => {
                    ingest.await?;
                    break;
                }
            }
        }
        self.commit_window(source, scope, plan, log, &report)
            .await?;
        Ok(report)
    }

    /// Stores one page's records and their content (meeting transcripts, recordings), which
    /// is archived with its records, before the window can complete; see ingest/content.rs.
    async fn ingest_page(
        &self,
        graph: &GraphClient,
        source: &dyn Source,
        scope: &Scope,
        records: Vec<Record>,
        log: &mut WindowLog,
        report: &mut WindowReport,
    ) -> Result<(), IngestError> {
        let content = self.pending_content(graph, source, scope, &records);
        self.ingest_records(source, scope, records, log, report)
            .await?;
        self.archive_content(graph, source, scope, content, &mut log.entries, report)
            .await
    }

    /// Stores and catalogues the new versions among `records`, appending manifest entries
    /// and the chats they show the scope taking part in.
    pub async fn ingest_records(
        &self,
        source: &dyn Source,
        scope: &Scope,
        records: Vec<Record>,
        log: &mut WindowLog,
        report: &mut WindowReport,
    ) -> Result<(), IngestError> {
        report.records += records.len() as u64;
        let items = self.identify(source, scope, records, report).await?;
        let chats = items.iter().filter_map(|i| i.meta.chat_id.as_deref());
        log.chats.extend(chats.map(str::to_ascii_lowercase));
        let entries = &mut log.entries;
        let src = source.kind().as_str();
        let lookup: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.record_key.clone(), i.meta.etag.clone()))
            .collect();
        let known = self.state.catalogue_lookup(src, &lookup).await?;
        let mut to_write = Vec::new();
        for item in items {
            let storage_key = keys::record_storage_key(src, &item.record_key, &item.meta.etag);
            match known.get(&(item.record_key.clone(), item.meta.etag.clone())) {
                Some(stored) => {
                    if *stored != item.sha256 {
                        self.report_version_mismatch(src, &storage_key, stored, &item.sha256)
                            .await?;
                    }
                    report.duplicates += 1;
                    entries.push(manifest_entry(&storage_key, &item, false));
                }
                None => {
                    let facts = custody::facts_of(src, scope, &item.bytes);
                    to_write.push((storage_key, Item { facts, ..item }));
                }
            }
        }
        let written = self.write_all(src, scope, to_write, report).await?;
        entries.extend(written);
        Ok(())
    }

    /// Reads identities; records that cannot be identified are quarantined, never dropped.
    /// Also folds a version repeated within one page into one.
    async fn identify(
        &self,
        source: &dyn Source,
        scope: &Scope,
        records: Vec<Record>,
        report: &mut WindowReport,
    ) -> Result<Vec<Item>, IngestError> {
        let mut seen = HashSet::new();
        let mut items = Vec::with_capacity(records.len());
        for rec in records {
            let sha256 = sha256_hex(&rec.bytes);
            let meta: Result<RecordMeta, String> = rec
                .raw()
                .map_err(|e| e.to_string())
                .and_then(|raw| source.record_meta(scope, raw).map_err(|e| e.to_string()));
            match meta {
                Ok(meta) => {
                    let record_key = keys::record_key(&meta.parts);
                    if seen.insert((record_key.clone(), meta.etag.clone())) {
                        items.push(Item {
                            record_key,
                            meta,
                            sha256,
                            bytes: rec.bytes,
                            facts: Default::default(),
                        });
                    } else {
                        report.duplicates += 1;
                    }
                }
                Err(problem) => {
                    self.quarantine(source, scope, rec.bytes, &sha256, &problem)
                        .await?;
                    report.quarantined += 1;
                }
            }
        }
        Ok(items)
    }

    async fn quarantine(
        &self,
        source: &dyn Source,
        scope: &Scope,
        bytes: Bytes,
        sha256: &str,
        problem: &str,
    ) -> Result<(), IngestError> {
        let src = source.kind().as_str();
        let key = keys::quarantine_key(src, &scope.id, sha256);
        let opts = self.evidence_options(sha256);
        self.store.put_create_only(&key, bytes, &opts).await?;
        tracing::warn!(
            source = src,
            user.id = %scope.id,
            key = %key,
            problem,
            "record without a usable identity kept in quarantine"
        );
        self.audit(
            "record_quarantined",
            &key,
            serde_json::json!({ "problem": problem }),
        )
        .await
    }

    async fn report_version_mismatch(
        &self,
        source: &str,
        key: &str,
        stored: &str,
        seen: &str,
    ) -> Result<(), IngestError> {
        tracing::warn!(
            source,
            key,
            stored_sha256 = stored,
            seen_sha256 = seen,
            "Graph returned different bytes for an archived version (same etag); the archived copy is kept"
        );
        self.audit(
            "version_bytes_differ",
            key,
            serde_json::json!({ "stored_sha256": stored, "seen_sha256": seen }),
        )
        .await
    }

    async fn write_all(
        &self,
        src: &str,
        scope: &Scope,
        to_write: Vec<(String, Item)>,
        report: &mut WindowReport,
    ) -> Result<Vec<ManifestEntry>, IngestError> {
        if to_write.is_empty() {
            // An idle user's page: reading the holds for nothing cost a query per window.
            return Ok(Vec::new());
        }
        // Retention counts from each record's creation; `planned_at` stands in where it has none.
        let custody = self.custody(to_write.iter().map(|(_, i)| &i.facts)).await?;
        let planned_at = Utc::now();
        let puts = to_write
            .iter()
            .map(|(key, item)| PutItem {
                key: key.clone(),
                bytes: item.bytes.clone(),
                opts: self.record_options(src, scope, item, &custody, planned_at),
            })
            .collect();
        let started = std::time::Instant::now();
        let results = self
            .store
            .put_many_create_only(puts, self.write_concurrency)
            .await;
        // One batch: each put is booked with the batch's mean time.
        let each = started.elapsed() / u32::try_from(results.len().max(1)).unwrap_or(u32::MAX);
        let mut outcomes = Vec::with_capacity(results.len());
        // The objects that were stored are catalogued even when others failed.
        let mut failure = None;
        for ((key, item), result) in to_write.into_iter().zip(results) {
            crate::ops::metrics::store_put(&key, item.bytes.len(), each, &result);
            match result {
                Ok(outcome) => outcomes.push((key, item, outcome)),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let now = Utc::now();
        let mut catalogue = Vec::with_capacity(outcomes.len());
        let mut entries = Vec::with_capacity(outcomes.len());
        let mut conflict = None;
        let mut planned = Vec::with_capacity(outcomes.len());
        for (key, item, outcome) in outcomes {
            match outcome {
                PutOutcome::Created => {
                    report.new += 1;
                    report.bytes_new += item.bytes.len() as u64;
                    report.earliest_new = earliest(report.earliest_new, item.facts.created);
                }
                // Stored by an attempt that died before cataloguing: same bytes, just record it.
                PutOutcome::AlreadyExists { existing_sha256 } if existing_sha256 == item.sha256 => {
                    report.duplicates += 1;
                }
                PutOutcome::AlreadyExists { existing_sha256 } => {
                    conflict = Some(IngestError::Conflict {
                        key: key.clone(),
                        stored_sha256: existing_sha256,
                        new_sha256: item.sha256.clone(),
                    });
                    continue;
                }
            }
            entries.push(manifest_entry(&key, &item, true));
            planned.push(self.planned(&key, scope, &item, &custody, planned_at));
            catalogue.push(catalogue_entry(src, scope, key, &item, now));
        }
        self.record_archived(&planned, &catalogue).await?;
        self.late_holds(&custody, &planned).await?;
        if let Some(err) = conflict {
            self.report_conflict(&err).await?;
            return Err(err);
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(entries),
        }
    }

    async fn report_conflict(&self, err: &IngestError) -> Result<(), IngestError> {
        if let IngestError::Conflict {
            key,
            stored_sha256,
            new_sha256,
        } = err
        {
            tracing::error!(key = %key, stored_sha256 = %stored_sha256, new_sha256 = %new_sha256,
                "archive object exists with different content; not overwritten");
            self.audit(
                "integrity_conflict",
                key,
                serde_json::json!({ "stored_sha256": stored_sha256, "new_sha256": new_sha256 }),
            )
            .await?;
        }
        Ok(())
    }

    async fn commit_window(
        &self,
        source: &dyn Source,
        scope: &Scope,
        plan: &WindowPlan,
        log: WindowLog,
        report: &WindowReport,
    ) -> Result<(), IngestError> {
        let src = source.kind().as_str();
        let participants = custody::window_participants(src, scope, &log.chats);
        let entries = log.entries;
        let now = Utc::now();
        let last = self.state.last_manifest(src, &scope.id).await?;
        let seq = last.as_ref().map_or(1, |m| m.seq + 1);
        let prev = last.map(|m| m.sha256);
        let record_count = entries.len() as i64;
        let manifest = Manifest::new(
            src,
            &scope.id,
            seq,
            plan.window.start,
            plan.window.end,
            prev.clone(),
            now,
            entries,
        );
        let bytes = Bytes::from(manifest.to_bytes());
        let sha256 = sha256_hex(&bytes);
        let key = keys::manifest_key(src, &scope.id, seq, &sha256);
        let opts = self.evidence_options(&sha256);
        self.store.put_create_only(&key, bytes, &opts).await?;
        let commit = WindowCommit {
            source: src.to_string(),
            scope_id: scope.id.clone(),
            manifest: ManifestRow {
                source: src.to_string(),
                scope_id: scope.id.clone(),
                seq,
                sha256,
                prev_sha256: prev,
                storage_key: key,
                window_start: plan.window.start,
                window_end: plan.window.end,
                record_count,
                created_at: now,
            },
            advance_to: plan.advance_to,
            lookback_done_at: plan.lookback_done_at,
            new_records: report.new as i64,
            participants,
            now,
        };
        self.state
            .commit_window_ending(&commit, plan.end.as_deref())
            .await?;
        Ok(())
    }

    async fn audit(
        &self,
        action: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<(), IngestError> {
        self.state
            .audit(&AuditEntry {
                actor: "ingest".into(),
                action: action.into(),
                subject: subject.into(),
                detail,
            })
            .await?;
        Ok(())
    }
}

/// Runs a page's ingest and the next page's fetch together. An ingest error wins and drops
/// the prefetched page; a fetch error is returned once the ingest has finished.
async fn ingest_while_fetching(
    ingest: impl std::future::Future<Output = Result<(), IngestError>>,
    fetch: impl std::future::Future<Output = Result<Page, GraphError>>,
) -> Result<Page, IngestError> {
    let fetch = async { Ok::<_, IngestError>(fetch.await) };
    let ((), fetched) = tokio::try_join!(ingest, fetch)?;
    Ok(fetched?)
}

fn manifest_entry(key: &str, item: &Item, new: bool) -> ManifestEntry {
    ManifestEntry {
        key: key.to_string(),
        etag: item.meta.etag.clone(),
        sha256: item.sha256.clone(),
        new,
    }
}

fn catalogue_entry(
    src: &str,
    scope: &Scope,
    storage_key: String,
    item: &Item,
    now: DateTime<Utc>,
) -> CatalogueEntry {
    CatalogueEntry {
        source: src.to_string(),
        record_key: item.record_key.clone(),
        etag: item.meta.etag.clone(),
        sha256: item.sha256.clone(),
        storage_key,
        size_bytes: item.bytes.len() as i64,
        scope_id: scope.id.clone(),
        created_at: item.meta.created,
        archived_at: now,
    }
}
