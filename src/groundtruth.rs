//! Compares an archive with the simulator's ground truth: every record version that exists
//! must be stored exactly once under its key, byte for byte (by sha256), and nothing else may be
//! under `records/`. Used by `demo`, the integration tests and the benchmarks.

use crate::archive::{keys, sha256_hex, ArchiveStore, StoreError};
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

/// The identity parts the archiver uses for a ground-truth record of `source`.
pub fn storage_key(r: &TruthRecord) -> String {
    let record_key = keys::record_key(&[r.scope.clone(), r.id.clone()]);
    keys::record_storage_key(&r.source, &record_key, &r.etag)
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Comparison {
    pub expected: usize,
    pub matched: usize,
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
                "ground truth: archive matches exactly ({} record versions, byte-identical, nothing extra)",
                self.matched
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

/// Records visible at `now` must be archived; records not yet visible may be, or not.
pub async fn compare(
    truth: &[TruthRecord],
    store: &dyn ArchiveStore,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Comparison, TruthError> {
    let stored: BTreeSet<String> = store
        .list(&format!("records/{source}/"))
        .await?
        .into_iter()
        .collect();
    let mut cmp = Comparison::default();
    let mut known = BTreeSet::new();
    for r in truth.iter().filter(|r| r.source == source) {
        let key = storage_key(r);
        known.insert(key.clone());
        if r.visible_from > now && !stored.contains(&key) {
            continue;
        }
        cmp.expected += 1;
        match store.get(&key).await? {
            None => cmp.missing.push(key),
            Some(bytes) if sha256_hex(&bytes) != r.sha256 => cmp.altered.push(key),
            Some(_) => cmp.matched += 1,
        }
    }
    cmp.extra = stored.difference(&known).cloned().collect();
    Ok(cmp)
}
