//! The archive store: immutable, create-only object storage for record versions and manifests.
//! A store knows bytes and keys, not Graph. `fs` is the embedded default; Azure Blob plugs in
//! behind the same trait.

pub mod fs;
pub mod keys;

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
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
