//! Compares an archive with the simulator's ground truth: every record version that exists
//! must be stored exactly once under its key, byte for byte (by sha256), and nothing else may be
//! under `records/<source>/`; for meeting artifacts, their content too, under
//! `content/<source>/`. Used by `demo`, the integration tests and the benchmarks.
//!
//! Each ground-truth record carries the identity parts the archiver keys on (Copilot: user id,
//! interaction id; chats: chat id, message id; channels: team id, channel id, message id;
//! transcripts and recordings: organizer id, meeting id, item id) and its etag, so the expected
//! storage key follows from it alone.

use crate::archive::{keys, sha256_hex, ArchiveStore, StoreError};
use crate::content::content_storage_key;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Deserialize)]
pub struct TruthRecord {
    pub source: String,
    pub scope: String,
    pub id: String,
    pub etag: String,
    pub sha256: String,
    pub created: DateTime<Utc>,
    pub visible_from: DateTime<Utc>,
    /// Identity parts, outermost first. Empty from older simulators: then (scope, id).
    #[serde(default)]
    pub parts: Vec<String>,
    /// The date the export windows filter on, when it is not `created` (Teams messages:
    /// lastModifiedDateTime).
    #[serde(default)]
    pub modified: Option<DateTime<Utc>>,
    /// False when the export API no longer serves it (a message deleted over 21 days ago).
    #[serde(default = "served")]
    pub exportable: bool,
    /// A later version replaced it while the simulator ran: it may be archived or not.
    #[serde(default)]
    pub superseded: bool,
    #[serde(default)]
    pub message_type: Option<String>,
    /// The record's content (meeting transcripts and recordings).
    #[serde(default)]
    pub content: Option<TruthContent>,
}

fn served() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
pub struct TruthContent {
    pub sha256: String,
    pub size: u64,
    pub extension: String,
}

impl TruthRecord {
    /// The identity parts the archiver keys this record on.
    pub fn identity(&self) -> Vec<String> {
        if self.parts.is_empty() {
            vec![self.scope.clone(), self.id.clone()]
        } else {
            self.parts.clone()
        }
    }

    /// The instant the export windows filter on.
    pub fn window_time(&self) -> DateTime<Utc> {
        self.modified.unwrap_or(self.created)
    }

    /// Must be in the archive at `now`: visible, still served, and not replaced meanwhile.
    pub fn required(&self, now: DateTime<Utc>) -> bool {
        self.visible_from <= now && self.exportable && !self.superseded
    }

    /// Where its content is stored, if it has content.
    pub fn content_key(&self) -> Option<String> {
        let c = self.content.as_ref()?;
        let record_key = keys::record_key(&self.identity());
        Some(content_storage_key(
            &self.source,
            &record_key,
            &c.sha256,
            &c.extension,
        ))
    }
}

#[derive(Deserialize)]
struct TruthList {
    records: Vec<TruthRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    #[error("fetching ground truth from the simulator: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `authority` is the simulator's root, e.g. `http://127.0.0.1:8080`.
pub async fn fetch(authority: &str, source: &str) -> Result<Vec<TruthRecord>, TruthError> {
    let url = format!("{authority}/_sim/ground-truth?source={source}");
    let list: TruthList = reqwest::get(url).await?.error_for_status()?.json().await?;
    Ok(list.records)
}

/// The storage key the archiver uses for a ground-truth record.
pub fn storage_key(r: &TruthRecord) -> String {
    let record_key = keys::record_key(&r.identity());
    keys::record_storage_key(&r.source, &record_key, &r.etag)
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Comparison {
    pub expected: usize,
    pub matched: usize,
    /// Versions that need not be archived (replaced while the export ran) and were, exactly.
    pub optional_matched: usize,
    /// Content objects (transcripts, recordings) found complete and exact.
    pub content_matched: usize,
    pub missing: Vec<String>,
    pub altered: Vec<String>,
    pub extra: Vec<String>,
}

impl Comparison {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.altered.is_empty() && self.extra.is_empty()
    }

    pub fn summary(&self) -> String {
        if self.is_exact() {
            return format!(
                "ground truth: archive matches exactly ({} record versions, byte-identical, nothing extra{}{})",
                self.matched,
                plural_note(self.optional_matched, "superseded versions also caught"),
                plural_note(self.content_matched, "content objects complete and exact"),
            );
        }
        format!(
            "ground truth: MISMATCH: {} expected, {} matched, {} missing, {} altered, {} extra (first missing: {:?}, first altered: {:?}, first extra: {:?})",
            self.expected,
            self.matched,
            self.missing.len(),
            self.altered.len(),
            self.extra.len(),
            self.missing.first(),
            self.altered.first(),
            self.extra.first()
        )
    }
}

fn plural_note(n: usize, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; {what}: {n}")
    }
}

/// Records required at `now` (visible, served, current) must be archived; versions replaced
/// while the export ran, or not yet visible, may be, and then must be exact too. Content of
/// required records must be stored complete under its key.
pub async fn compare(
    truth: &[TruthRecord],
    store: &dyn ArchiveStore,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Comparison, TruthError> {
    let mut cmp = Comparison::default();
    let records = truth.iter().filter(|r| r.source == source);
    let record_keys = records
        .clone()
        .map(|r| (storage_key(r), r.sha256.clone(), r));
    check(
        store,
        &format!("records/{source}/"),
        record_keys,
        now,
        &mut cmp,
        false,
    )
    .await?;
    let content =
        records.filter_map(|r| Some((r.content_key()?, r.content.as_ref()?.sha256.clone(), r)));
    check(
        store,
        &format!("content/{source}/"),
        content,
        now,
        &mut cmp,
        true,
    )
    .await?;
    Ok(cmp)
}

/// Checks objects under `prefix` against `(key, sha256, record)` expectations.
async fn check<'a>(
    store: &dyn ArchiveStore,
    prefix: &str,
    expected: impl Iterator<Item = (String, String, &'a TruthRecord)>,
    now: DateTime<Utc>,
    cmp: &mut Comparison,
    content: bool,
) -> Result<(), TruthError> {
    let stored: BTreeSet<String> = store.list(prefix).await?.into_iter().collect();
    let mut known = BTreeSet::new();
    for (key, sha, r) in expected {
        known.insert(key.clone());
        let required = r.required(now);
        if !required && !stored.contains(&key) {
            continue;
        }
        if required && !content {
            cmp.expected += 1;
        }
        match store.get(&key).await? {
            None => cmp.missing.push(key),
            Some(bytes) if sha256_hex(&bytes) != sha => cmp.altered.push(key),
            Some(_) if content => cmp.content_matched += 1,
            Some(_) if required => cmp.matched += 1,
            Some(_) => cmp.optional_matched += 1,
        }
    }
    cmp.extra.extend(stored.difference(&known).cloned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::fs::FsStore;
    use crate::archive::PutOptions;
    use bytes::Bytes;

    fn record(parts: &[&str], etag: &str, body: &[u8], superseded: bool) -> TruthRecord {
        let t = Utc::now() - chrono::Duration::hours(1);
        TruthRecord {
            source: "chats".into(),
            scope: parts[0].into(),
            id: parts[1].into(),
            etag: etag.into(),
            sha256: sha256_hex(body),
            created: t,
            visible_from: t,
            parts: parts.iter().map(|p| p.to_string()).collect(),
            modified: None,
            exportable: true,
            superseded,
            message_type: None,
            content: None,
        }
    }

    async fn put(store: &FsStore, key: &str, body: &[u8]) {
        let opts = PutOptions {
            sha256: sha256_hex(body),
            ..Default::default()
        };
        store
            .put_create_only(key, Bytes::copy_from_slice(body), &opts)
            .await
            .expect("put");
    }

    #[tokio::test]
    async fn superseded_versions_are_optional_but_must_be_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        let old = record(&["19:c@thread.v2", "1"], "10", b"{\"v\":1}", true);
        let new = record(&["19:c@thread.v2", "1"], "11", b"{\"v\":2}", false);
        put(&store, &storage_key(&new), b"{\"v\":2}").await;
        let truth = vec![old.clone(), new.clone()];
        let cmp = compare(&truth, &store, "chats", Utc::now())
            .await
            .expect("compare");
        assert!(cmp.is_exact(), "{}", cmp.summary());
        assert_eq!((cmp.expected, cmp.matched, cmp.optional_matched), (1, 1, 0));
        put(&store, &storage_key(&old), b"{\"v\":0}").await;
        let cmp = compare(&truth, &store, "chats", Utc::now())
            .await
            .expect("compare");
        assert_eq!(
            cmp.altered,
            vec![storage_key(&old)],
            "a caught old version must be exact"
        );
        assert!(storage_key(&new).starts_with("records/chats/19%3Ac%40thread.v2/1@"));
    }

    #[tokio::test]
    async fn content_must_be_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        let mut r = record(
            &["org", "meeting", "item"],
            "2022-08-03T20:43:36.2573447Z",
            b"{}",
            false,
        );
        r.source = "recordings".into();
        r.content = Some(TruthContent {
            sha256: sha256_hex(b"MP4 bytes"),
            size: 9,
            extension: "mp4".into(),
        });
        put(&store, &storage_key(&r), b"{}").await;
        let truth = vec![r.clone()];
        let cmp = compare(&truth, &store, "recordings", Utc::now())
            .await
            .expect("compare");
        assert_eq!(cmp.missing, vec![r.content_key().expect("key")]);
        put(&store, &r.content_key().expect("key"), b"MP4 bytes").await;
        let cmp = compare(&truth, &store, "recordings", Utc::now())
            .await
            .expect("compare");
        assert!(cmp.is_exact(), "{}", cmp.summary());
        assert_eq!(cmp.content_matched, 1);
    }
}
