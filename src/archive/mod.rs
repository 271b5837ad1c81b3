//! The archive store: immutable, create-only object storage for record versions and manifests.
//! A store knows bytes and keys, not Graph. `fs` is the embedded default; Azure Blob plugs in
//! behind the same trait.

pub mod azure;
pub mod fs;
pub mod keys;
pub mod unusable;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Written beside the bytes where the backend supports it (retention, hold, provenance).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Hex sha256 of the bytes, computed by the caller once.
    pub sha256: String,
    pub retain_until: Option<DateTime<Utc>>,
    pub legal_hold: bool,
    /// Mode of the immutability policy `retain_until` sets (ignored without `retain_until`).
    pub mode: ImmutabilityMode,
    /// Provenance stored with the object where the backend keeps metadata (source, scope, ...).
    /// Names are lowercase ASCII identifiers; values are ASCII (callers percent-encode ids).
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One object of a batched create-only write.
#[derive(Debug, Clone)]
pub struct PutItem {
    pub key: String,
    pub bytes: Bytes,
    pub opts: PutOptions,
}

/// Mode of a time-based immutability policy. A Locked policy can be extended but never shortened
/// or removed, by anyone; SEC 17a-4(f) needs Locked. Unlocked can still be changed by an
/// administrator of the storage account.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum ImmutabilityMode {
    #[default]
    Unlocked,
    Locked,
}

impl ImmutabilityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImmutabilityMode::Unlocked => "Unlocked",
            ImmutabilityMode::Locked => "Locked",
        }
    }

    /// Case-insensitive, as operators type it in configuration.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "unlocked" => Some(ImmutabilityMode::Unlocked),
            "locked" => Some(ImmutabilityMode::Locked),
            _ => None,
        }
    }
}

/// What the store knows about one stored object, beyond its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectProperties {
    pub size_bytes: u64,
    /// The sha256 recorded with the object (Azure metadata) or computed from it (fs); None
    /// when the backend has no record of it.
    pub sha256: Option<String>,
    /// The object's own immutability policy; None when the backend has none (fs) or none is set.
    pub retain_until: Option<DateTime<Utc>>,
    pub mode: Option<ImmutabilityMode>,
    pub legal_hold: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Nothing was stored under the key (already deleted by an earlier, interrupted run).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and is now durable.
    Created,
    /// An object already had this key; it was left untouched. The caller compares hashes:
    /// equal means an earlier attempt already stored it, different is an integrity alarm.
    AlreadyExists { existing_sha256: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("archive store: invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("archive store: {op} {key} failed: {source}")]
    Io {
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("archive store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a change because the object's immutability policy is still in force.
    #[error("archive store: {key} is immutable under its retention policy; {op} refused")]
    ImmutableDueToPolicy { op: &'static str, key: String },
    /// The store refused a change because the object is under legal hold.
    #[error("archive store: {key} is under legal hold; {op} refused")]
    ImmutableDueToLegalHold { op: &'static str, key: String },
    /// The store did not accept the archiver's credentials or permissions.
    #[error("archive store refused the credentials: {0}")]
    Auth(String),
    /// The store answered "busy" until the retries ran out.
    #[error("archive store is throttling requests: {0}")]
    Throttled(String),
    /// The store answered something the archiver cannot act on.
    #[error("archive store: {op} {key} failed: {detail}")]
    Rejected {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// This backend cannot do the operation.
    #[error("archive store {store} does not support {op}")]
    Unsupported { store: String, op: &'static str },
}

#[async_trait]
pub trait ArchiveStore: Send + Sync {
    /// For logs and status: where the archive lives (no credentials).
    fn describe(&self) -> String;
    /// Startup check: the store exists and accepts create-only writes and reads.
    async fn check(&self) -> Result<(), StoreError>;
    /// Writes `bytes` under `key` only if nothing is there; never replaces an existing object.
    /// Returns once the object is durable.
    async fn put_create_only(
        &self,
        key: &str,
        bytes: Bytes,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError>;
    /// `put_create_only` for several objects: one result per item, in order, each durable
    /// when this returns. Stores that can make a whole batch durable at once (one filesystem
    /// sync instead of several per object) override it; the default runs `concurrency` puts
    /// at a time.
    async fn put_many_create_only(
        &self,
        items: Vec<PutItem>,
        concurrency: usize,
    ) -> Vec<Result<PutOutcome, StoreError>> {
        use futures::StreamExt;
        futures::stream::iter(items)
            .map(|item| async move {
                self.put_create_only(&item.key, item.bytes, &item.opts)
                    .await
            })
            .buffered(concurrency.max(1))
            .collect()
            .await
    }
    /// As `put_create_only` for content too large to hold in memory (meeting recordings):
    /// `file` is a complete local file whose sha256 is `opts.sha256`. The store publishes it
    /// create-only and may consume (move or link) the file.
    async fn put_file_create_only(
        &self,
        key: &str,
        file: &std::path::Path,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError>;
    /// A local directory where callers stage large downloads before `put_file_create_only`
    /// (on the same filesystem as the store where that makes publishing a link).
    fn staging_dir(&self) -> std::path::PathBuf;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Every key under `prefix` (recursively), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// `list` as a stream, in the same order, for listings too large to hold (`verify` over
    /// millions of records). Stores that can page override it; this default holds the listing.
    fn list_stream<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::stream::BoxStream<'a, Result<String, StoreError>> {
        use futures::StreamExt;
        futures::stream::once(self.list(prefix))
            .map(|listed| match listed {
                Ok(keys) => futures::stream::iter(keys.into_iter().map(Ok)).left_stream(),
                Err(e) => futures::stream::iter([Err(e)]).right_stream(),
            })
            .flatten()
            .boxed()
    }
    /// sha256 and size of the stored bytes, read in bounded memory (verification of
    /// multi-gigabyte recordings); None when nothing is stored under `key`.
    async fn hash(&self, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .get(key)
            .await?
            .map(|b| (sha256_hex(&b), b.len() as u64)))
    }
    /// Size, recorded hash, retention and legal hold of one object; None when absent.
    async fn properties(&self, _key: &str) -> Result<Option<ObjectProperties>, StoreError> {
        Err(self.unsupported("reading object properties"))
    }
    /// Sets or clears the store's legal hold on an object (Azure Set Blob Legal Hold).
    async fn set_legal_hold(&self, _key: &str, _hold: bool) -> Result<(), StoreError> {
        Err(self.unsupported("legal holds"))
    }
    /// Extends an object's immutability policy to `until` (Azure Set Blob Immutability Policy).
    /// Callers never pass an earlier date than the one in force: a Locked policy cannot be
    /// shortened, and the archiver never shortens an Unlocked one either.
    async fn extend_retention(
        &self,
        _key: &str,
        _until: DateTime<Utc>,
        _mode: ImmutabilityMode,
    ) -> Result<(), StoreError> {
        Err(self.unsupported("retention policies"))
    }
    /// Deletes an object. Only disposition calls this, for records whose retention has expired
    /// and that no hold covers; the store itself refuses while a policy or hold is in force.
    async fn delete(&self, _key: &str) -> Result<DeleteOutcome, StoreError> {
        Err(self.unsupported("deletion"))
    }
    /// Whether the store itself enforces retention and legal holds (WORM). When false, the
    /// state database is the only record of them.
    fn enforces_retention(&self) -> bool {
        false
    }
    #[doc(hidden)]
    fn unsupported(&self, op: &'static str) -> StoreError {
        StoreError::Unsupported {
            store: self.describe(),
            op,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
