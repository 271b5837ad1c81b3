//! `verify [--since DATE] [--user X]`: re-reads the archive and proves it matches what the
//! archiver recorded.
//!
//! - every catalogued record version is in the store with the catalogued sha256 (else
//!   *missing* or *altered*), unless disposition deleted it;
//! - every committed manifest is in the store with its recorded sha256, says what its row says,
//!   and chains to the previous one (`prev_sha256`); its entries agree with the catalogue (else
//!   *missing*, *altered* or *unchained*);
//! - nothing under `records/` is unknown to the catalogue, and nothing under `manifests/` is
//!   unknown to the manifest table (else *extra*). An unreferenced manifest whose content
//!   matches the hash in its name is what a crash between storing a manifest and committing it
//!   leaves: it is reported as an *orphaned manifest from an interrupted commit*, for
//!   information, not as tampering.
//!
//! The extra-object scan needs the whole archive, so it runs only without `--since`/`--user`.
//!
//! Memory stays bounded whatever the archive's size: the catalogue is read page by page, a
//! manifest's entries are looked up in the catalogue by record identity, and the extra-object
//! scan merges the store's sorted listing with the catalogue and manifest table streamed in the
//! same order. Only the disposed keys, and manifest entries whose identity cannot be read back
//! from their key (content objects, names hashed for length), are held until the scan.

use super::ComplianceError;
use crate::archive::{keys, sha256_hex, ArchiveStore};
use crate::manifest::{Manifest, ManifestEntry};
use crate::ops::progress::Progress;
use crate::state::{CatalogueEntry, ManifestRow, StateDb};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};

mod pending;
#[cfg(test)]
mod tests;
use pending::Pending;

const PAGE: i64 = 1000;
/// Objects read and hashed at once.
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only record versions archived, and manifests committed, since then.
    pub since: Option<DateTime<Utc>>,
    /// Only this scope (user id; a UPN is resolved through the known scopes).
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub records_checked: u64,
    pub manifests_checked: u64,
    pub disposed: u64,
    pub missing: Vec<Finding>,
    pub altered: Vec<Finding>,
    pub extra: Vec<Finding>,
    pub unchained: Vec<Finding>,
    /// Informational: manifests stored by a window whose commit never happened.
    pub orphaned_manifests: Vec<String>,
    pub extra_scan: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.altered.is_empty()
            && self.extra.is_empty()
            && self.unchained.is_empty()
    }

    pub fn summary(&self) -> String {
        let verdict = if self.ok() {
            "archive verified"
        } else {
            "ARCHIVE VERIFICATION FAILED"
        };
        let mut s = format!(
            "{verdict}: {} record versions and {} manifests checked; {} missing, {} altered, {} extra, \
             {} unchained; {} disposed (expected absent); {} orphaned manifest(s) from an interrupted commit",
            self.records_checked,
            self.manifests_checked,
            self.missing.len(),
            self.altered.len(),
            self.extra.len(),
            self.unchained.len(),
            self.disposed,
            self.orphaned_manifests.len()
        );
        if !self.extra_scan {
            s.push_str(" (scan for extra objects skipped: --since/--user limit the check)");
        }
        s
    }

    /// One line per finding, for the terminal.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for (kind, list) in [
            ("missing", &self.missing),
            ("altered", &self.altered),
            ("extra", &self.extra),
            ("unchained", &self.unchained),
        ] {
            for f in list {
                out.push_str(&format!("{kind}: {}: {}\n", f.key, f.problem));
            }
        }
        for k in &self.orphaned_manifests {
            out.push_str(&format!(
                "info: {k}: orphaned manifest from an interrupted commit\n"
            ));
        }
        out
    }
}

pub struct Verifier<'a> {
    pub state: &'a StateDb,
    pub store: &'a dyn ArchiveStore,
}

/// Storage keys whose disposition completed: expected absent from the store.
type Disposed = HashSet<String>;

impl Verifier<'_> {
    pub async fn run(&self, opts: &VerifyOptions) -> Result<VerifyReport, ComplianceError> {
        let scope = match &opts.user {
            Some(u) => Some(self.resolve_user(u).await?),
            None => None,
        };
        let mut report = VerifyReport {
            extra_scan: opts.since.is_none() && scope.is_none(),
            ..Default::default()
        };
        let total = self.state.catalogue_count(None).await?.max(0) as u64;
        let progress = Progress::new("verifying", (report.extra_scan).then_some(total));
        let disposed: Disposed = self.state.disposed_keys().await?.into_iter().collect();
        self.check_records(
            opts.since,
            scope.as_deref(),
            &disposed,
            &mut report,
            &progress,
        )
        .await?;
        let mut pending = Pending::default();
        self.check_manifests(
            opts.since,
            scope.as_deref(),
            &disposed,
            &mut pending,
            &mut report,
        )
        .await?;
        if report.extra_scan {
            self.check_extras(&disposed, &mut pending, &mut report)
                .await?;
        }
        pending.finish(&mut report);
        progress.finish("verification finished");
        Ok(report)
    }

    async fn resolve_user(&self, user: &str) -> Result<String, ComplianceError> {
        if user.contains('@') {
            return self
                .state
                .scope_id_by_label("user", user)
                .await?
                .ok_or_else(|| {
                    ComplianceError::Usage(format!("no known user has the UPN {user}"))
                });
        }
        Ok(user.to_string())
    }

    async fn check_records(
        &self,
        since: Option<DateTime<Utc>>,
        scope: Option<&str>,
        disposed: &Disposed,
        report: &mut VerifyReport,
        progress: &Progress,
    ) -> Result<(), ComplianceError> {
        let mut after: Option<CatalogueEntry> = None;
        loop {
            let page = self
                .state
                .catalogue_page(after.as_ref(), since, scope, PAGE)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            after = Some(last);
            let results: Vec<(CatalogueEntry, Option<(String, u64)>)> = stream::iter(page)
                .filter(|e| std::future::ready(!disposed.contains(&e.storage_key)))
                .map(|e| async move {
                    let hash = self.store.hash(&e.storage_key).await?;
                    Ok::<_, ComplianceError>((e, hash))
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            for (entry, hash) in results {
                report.records_checked += 1;
                progress.inc(1);
                judge_record(&entry, hash.as_ref(), report);
            }
        }
        report.disposed = disposed.len() as u64;
        Ok(())
    }

    async fn check_manifests(
        &self,
        since: Option<DateTime<Utc>>,
        scope: Option<&str>,
        disposed: &Disposed,
        pending: &mut Pending,
        report: &mut VerifyReport,
    ) -> Result<(), ComplianceError> {
        for (source, scope_id) in self.state.manifest_scopes().await? {
            if scope.is_some_and(|s| s != scope_id) {
                continue;
            }
            let rows = self.state.manifests(&source, &scope_id).await?;
            check_row_chain(&rows, report);
            for row in rows
                .iter()
                .filter(|r| since.is_none_or(|s| r.created_at >= s))
            {
                report.manifests_checked += 1;
                self.check_manifest(row, disposed, pending, report).await?;
            }
        }
        Ok(())
    }

    async fn check_manifest(
        &self,
        row: &ManifestRow,
        disposed: &Disposed,
        pending: &mut Pending,
        report: &mut VerifyReport,
    ) -> Result<(), ComplianceError> {
        let key = &row.storage_key;
        let Some(bytes) = self.store.get(key).await? else {
            report
                .missing
                .push(finding(key, "committed manifest is not in the store"));
            return Ok(());
        };
        if sha256_hex(&bytes) != row.sha256 {
            report.altered.push(finding(
                key,
                "manifest bytes do not match the committed sha256",
            ));
            return Ok(());
        }
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                report
                    .altered
                    .push(finding(key, &format!("manifest is not readable: {e}")));
                return Ok(());
            }
        };
        if manifest.seq != row.seq
            || manifest.prev_sha256 != row.prev_sha256
            || manifest.scope != row.scope_id
        {
            report.unchained.push(finding(
                key,
                "manifest content disagrees with its committed row",
            ));
        }
        let entries: Vec<&ManifestEntry> = manifest
            .records
            .iter()
            .filter(|e| !disposed.contains(&e.key))
            .collect();
        let catalogued = self.catalogued(&manifest.source, &entries).await?;
        for entry in entries {
            let sha = match catalogued.get(entry.key.as_str()) {
                Some(sha) => Some(sha.clone()),
                // Scoped runs have no scan to settle the rest: read the object instead.
                None if !report.extra_scan => {
                    self.store.hash(&entry.key).await?.map(|(sha, _)| sha)
                }
                None => {
                    pending.add(&entry.key, key, &entry.sha256);
                    continue;
                }
            };
            judge_entry(key, &entry.key, &entry.sha256, sha.as_deref(), report);
        }
        Ok(())
    }

    /// The catalogued sha256 of each entry found through its record identity (source, record
    /// key, etag): the key of a record names it (`keys::record_storage_key`), so this needs no
    /// index on storage keys. Entries it cannot find wait for the extra-object scan.
    async fn catalogued(
        &self,
        source: &str,
        entries: &[&ManifestEntry],
    ) -> Result<HashMap<String, String>, ComplianceError> {
        let versions: Vec<(String, String)> = entries
            .iter()
            .filter_map(|e| Some((record_key_of(source, &e.key, &e.etag)?, e.etag.clone())))
            .collect();
        let found = self.state.catalogue_objects(source, &versions).await?;
        Ok(found.into_values().collect())
    }

    /// Merges the store's sorted listings with the catalogue and the manifest table, streamed
    /// in the same order; the catalogue stream also settles the pending manifest entries.
    async fn check_extras(
        &self,
        disposed: &Disposed,
        pending: &mut Pending,
        report: &mut VerifyReport,
    ) -> Result<(), ComplianceError> {
        let mut catalogue = self.state.catalogue_by_storage_key();
        let mut next = catalogue.try_next().await?;
        let mut stored = self.store.list_stream("records/");
        while let Some(key) = stored.try_next().await? {
            while let Some((k, sha)) = next.as_ref().filter(|(k, _)| *k < key) {
                pending.settle(k, sha);
                next = catalogue.try_next().await?;
            }
            let catalogued = next.as_ref().is_some_and(|(k, _)| *k == key);
            if disposed.contains(&key) {
                report
                    .extra
                    .push(finding(&key, "disposed of, but still in the store"));
            } else if !catalogued {
                report
                    .extra
                    .push(finding(&key, "in the store but not in the catalogue"));
            }
        }
        while let Some((k, sha)) = next {
            pending.settle(&k, &sha);
            next = catalogue.try_next().await?;
        }
        drop(catalogue);
        self.check_manifest_extras(report).await
    }

    async fn check_manifest_extras(
        &self,
        report: &mut VerifyReport,
    ) -> Result<(), ComplianceError> {
        let mut committed = self.state.manifest_keys_sorted();
        let mut next = committed.try_next().await?;
        let mut stored = self.store.list_stream("manifests/");
        while let Some(key) = stored.try_next().await? {
            while next.as_ref().is_some_and(|k| *k < key) {
                next = committed.try_next().await?;
            }
            if next.as_deref() == Some(key.as_str()) {
                continue;
            }
            if self.is_interrupted_commit(&key).await? {
                report.orphaned_manifests.push(key);
            } else {
                report.extra.push(finding(
                    &key,
                    "unreferenced manifest whose content does not match its name",
                ));
            }
        }
        Ok(())
    }

    /// A manifest the ingest stored and then could not commit carries the start of its own
    /// sha256 in its name (`keys::manifest_key`); tampering cannot keep that true.
    async fn is_interrupted_commit(&self, key: &str) -> Result<bool, ComplianceError> {
        let Some(bytes) = self.store.get(key).await? else {
            return Ok(false);
        };
        let sha = sha256_hex(&bytes);
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            return Ok(false);
        };
        Ok(keys::manifest_key(&m.source, &m.scope, m.seq, &sha) == key)
    }
}

fn judge_record(entry: &CatalogueEntry, hash: Option<&(String, u64)>, report: &mut VerifyReport) {
    match hash {
        None => report.missing.push(finding(
            &entry.storage_key,
            "catalogued but not in the store",
        )),
        Some((sha, _)) if *sha != entry.sha256 => report.altered.push(finding(
            &entry.storage_key,
            &format!("stored sha256 {sha}, catalogued {}", entry.sha256),
        )),
        Some(_) => {}
    }
}

/// A manifest entry against the catalogue's sha256 for its key (None: not catalogued).
fn judge_entry(
    manifest: &str,
    key: &str,
    recorded: &str,
    catalogued: Option<&str>,
    report: &mut VerifyReport,
) {
    match catalogued {
        None => report.unchained.push(finding(
            key,
            &format!("listed in manifest {manifest} but not catalogued"),
        )),
        Some(sha) if sha != recorded => report.unchained.push(finding(
            key,
            &format!("manifest {manifest} records another sha256"),
        )),
        Some(_) => {}
    }
}

/// The record key a record's storage key was made from (`keys::record_storage_key`), when
/// the key reads back to exactly that; None for other objects and names hashed for length.
fn record_key_of(source: &str, key: &str, etag: &str) -> Option<String> {
    let rest = key
        .strip_prefix("records/")?
        .strip_prefix(source)?
        .strip_prefix('/')?;
    let suffix = format!("@{}.json", keys::segment(etag));
    let record_key = rest.strip_suffix(&suffix)?;
    (keys::record_storage_key(source, record_key, etag) == key).then(|| record_key.to_string())
}

/// The committed rows of one (source, scope) must form one chain: seq 1, 2, 3... each
/// `prev_sha256` the sha256 of the one before.
fn check_row_chain(rows: &[ManifestRow], report: &mut VerifyReport) {
    let mut prev: Option<&ManifestRow> = None;
    for row in rows {
        let (want_seq, want_prev) = match prev {
            None => (1, None),
            Some(p) => (p.seq + 1, Some(p.sha256.as_str())),
        };
        if row.seq != want_seq || row.prev_sha256.as_deref() != want_prev {
            report.unchained.push(finding(
                &row.storage_key,
                &format!(
                    "manifest {} of {}/{} does not chain to the one before",
                    row.seq, row.source, row.scope_id
                ),
            ));
        }
        prev = Some(row);
    }
}

fn finding(key: &str, problem: &str) -> Finding {
    Finding {
        key: key.to_string(),
        problem: problem.to_string(),
    }
}
