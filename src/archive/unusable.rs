//! A store that could not be built (for example an Azure credential that cannot be created
//! from the configuration). It answers every call with the reason, so that the startup check
//! reports it the same way as an unreachable store, and `status` can still show it.

use super::{ArchiveStore, PutOptions, PutOutcome, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::path::{Path, PathBuf};

pub struct UnusableStore {
    what: String,
    reason: String,
    auth: bool,
}

impl UnusableStore {
    pub fn new(what: String, error: &StoreError) -> Self {
        UnusableStore {
            what,
            reason: error.to_string(),
            auth: matches!(error, StoreError::Auth(_)),
        }
    }

    fn error(&self) -> StoreError {
        if self.auth {
            StoreError::Auth(self.reason.clone())
        } else {
            StoreError::Unavailable(self.reason.clone())
        }
    }
}

#[async_trait]
impl ArchiveStore for UnusableStore {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn check(&self) -> Result<(), StoreError> {
        Err(self.error())
    }

    async fn put_create_only(
        &self,
        _: &str,
        _: Bytes,
        _: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        Err(self.error())
    }

    async fn put_file_create_only(
        &self,
        _: &str,
        _: &Path,
        _: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        Err(self.error())
    }

    fn staging_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    async fn get(&self, _: &str) -> Result<Option<Bytes>, StoreError> {
        Err(self.error())
    }

    async fn list(&self, _: &str) -> Result<Vec<String>, StoreError> {
        Err(self.error())
    }
}
