//! Azure Blob Storage with version-level immutability: the production WORM archive, on the
//! official `azure_storage_blob` crate.
//!
//! Every write is create-only (`If-None-Match: *`): on a version-level WORM container an
//! overwrite is not refused, it silently makes a new version, so only the condition keeps "never
//! overwrite" true. Each write carries the immutability policy (until-date and mode) and legal
//! hold the retention rules chose, plus the sha256 and provenance as metadata. Large files go up
//! as blocks of `store.block_size_mib` with `store.upload_parallelism` in flight (memory about
//! (parallelism + 1) x block size); the condition and the policy ride on the final Put Block
//! List, so a big object is looked up first and a retry never re-sends gigabytes.

mod auth;
pub mod config;
mod errors;
mod transport;

pub use config::{AzureAuth, AzureConfig, AzureSettings};

use super::{
    keys, sha256_hex, ArchiveStore, DeleteOutcome, ImmutabilityMode, ObjectProperties, PutOptions,
    PutOutcome, StoreError,
};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::{Body, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_core::time::OffsetDateTime;
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders, BlobClientSetImmutabilityPolicyOptions,
    BlobClientUploadOptions, BlobContainerClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, ImmutabilityPolicyMode,
};
use azure_storage_blob::stream::tokio::FileStream;
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use errors::{classify, ErrorContext, Failure};
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZero;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// Metadata name of the content hash written with every object.
pub const SHA256_METADATA: &str = "sha256";
/// Where the startup check writes and reads back; outside `records/` and `manifests/`.
const PROBE_KEY: &str = "_archiver/write-probe";
const PROBE_BYTES: &[u8] = b"m365-archiver write probe\n";
/// Immutability until-dates must lie in the future when written; a record whose retention has
/// (nearly) run out by the time it is archived is protected for this long rather than not at all.
const MIN_POLICY: chrono::Duration = chrono::Duration::days(1);

pub struct AzureStore {
    /// Container URL with the SAS query when authenticating by SAS (never logged).
    container_url: Url,
    /// Container URL without query: for messages.
    endpoint: String,
    credential: Option<Arc<dyn TokenCredential>>,
    client_options: ClientOptions,
    container: BlobContainerClient,
    sas: Option<String>,
    auth_hint: &'static str,
    block_size: NonZero<u64>,
    parallel: NonZero<usize>,
    require_immutability: bool,
    staging: PathBuf,
    /// Names per listing page; None lets the service choose (5,000).
    list_page: Option<i32>,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AzureStore {
    pub fn new(cfg: &AzureConfig) -> Result<Self, StoreError> {
        let transport = transport::ReqwestTransport::new(cfg.request_timeout)
            .map_err(|e| StoreError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        let credential =
            auth::credential(&cfg.auth, &cfg.authority, &transport).map_err(StoreError::Auth)?;
        let sas = match &cfg.auth {
            AzureAuth::Sas(token) => Some(token.expose_secret().to_string()),
            _ => None,
        };
        let mut container_url = cfg.container_url.clone();
        container_url.set_query(sas.as_deref());
        let client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(transport))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: duration(cfg.retry_delay),
                max_retries: cfg.max_retries,
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = BlobContainerClient::new(
            container_url.clone(),
            credential.clone(),
            Some(BlobContainerClientOptions {
                client_options: client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| {
            StoreError::Unavailable(format!("store.container_url {}: {e}", cfg.container_url))
        })?;
        Ok(AzureStore {
            container_url,
            endpoint: cfg.container_url.to_string(),
            credential,
            client_options,
            container,
            sas,
            auth_hint: auth_hint(&cfg.auth),
            block_size: NonZero::new(cfg.block_size_bytes).unwrap_or(NonZero::<u64>::MIN),
            parallel: NonZero::new(cfg.upload_parallelism).unwrap_or(NonZero::<usize>::MIN),
            require_immutability: cfg.require_immutability,
            staging: cfg.staging_path.clone(),
            list_page: None,
        })
    }

    /// Smaller listing pages, so that tests see a listing span pages without 5,000 blobs.
    pub fn with_list_page(mut self, names: i32) -> Self {
        self.list_page = Some(names);
        self
    }

    fn ctx(&self) -> ErrorContext<'_> {
        ErrorContext {
            endpoint: &self.endpoint,
            auth_hint: self.auth_hint,
            secret: self.sas.as_deref(),
        }
    }

    fn fail(&self, op: &'static str, key: &str, e: azure_core::Error) -> Failure {
        classify(op, key, e, &self.ctx())
    }

    /// Like `fail`, for operations where "exists" and "absent" are errors too.
    fn store_error(&self, op: &'static str, key: &str, e: azure_core::Error) -> StoreError {
        match self.fail(op, key, e) {
            Failure::Store(s) => s,
            Failure::Exists | Failure::NotFound => StoreError::Rejected {
                op,
                key: key.to_string(),
                detail: "the object changed while the archiver was working on it".into(),
            },
        }
    }

    /// A client for one blob. The URL is built segment by segment so that `/` in a key stays a
    /// path separator and the `%` of encoded ids is itself encoded: the blob name is the key.
    fn blob(&self, key: &str) -> Result<BlobClient, StoreError> {
        keys::validate(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })?;
        let mut url = self.container_url.clone();
        url.path_segments_mut()
            .map_err(|_| StoreError::InvalidKey {
                key: key.to_string(),
                reason: "the container URL cannot take a path",
            })?
            .pop_if_empty()
            .extend(key.split('/'));
        BlobClient::new(
            url,
            self.credential.clone(),
            Some(BlobClientOptions {
                client_options: self.client_options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| self.store_error("open", key, e))
    }

    fn upload_options(&self, opts: &PutOptions) -> BlobClientUploadOptions<'static> {
        let mut metadata: HashMap<String, String> = opts
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), metadata_value(v)))
            .collect();
        metadata.insert(SHA256_METADATA.to_string(), opts.sha256.clone());
        let (expiry, mode) = match opts.retain_until {
            Some(until) => (
                Some(policy_until(until, Utc::now())),
                Some(policy_mode(opts.mode)),
            ),
            None => (None, None),
        };
        BlobClientUploadOptions {
            immutability_policy_expiry: expiry,
            immutability_policy_mode: mode,
            legal_hold: Some(opts.legal_hold),
            metadata: Some(metadata),
            partition_size: Some(self.block_size),
            parallel: Some(self.parallel),
            ..Default::default()
        }
        .if_not_exists()
    }

    /// The hash of what is stored under a taken key: the recorded sha256 when `trust_metadata`
    /// (multi-gigabyte content), otherwise recomputed from the bytes.
    async fn existing_sha256(
        &self,
        key: &str,
        trust_metadata: bool,
    ) -> Result<PutOutcome, StoreError> {
        if trust_metadata {
            if let Some(sha) = self.properties(key).await?.and_then(|p| p.sha256) {
                return Ok(PutOutcome::AlreadyExists {
                    existing_sha256: sha,
                });
            }
        }
        match self.hash(key).await? {
            Some((sha, _)) => Ok(PutOutcome::AlreadyExists {
                existing_sha256: sha,
            }),
            None => Err(StoreError::Rejected {
                op: "create",
                key: key.to_string(),
                detail: "the store reported the key taken, but nothing can be read under it".into(),
            }),
        }
    }

    async fn upload(
        &self,
        key: &str,
        body: Body,
        opts: &PutOptions,
        large: bool,
    ) -> Result<PutOutcome, StoreError> {
        let blob = self.blob(key)?;
        match blob
            .upload(body.into(), Some(self.upload_options(opts)))
            .await
        {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => match self.fail("create", key, e) {
                Failure::Exists => self.existing_sha256(key, large).await,
                Failure::NotFound => Err(StoreError::Unavailable(format!(
                    "container {} answered 404 to a write: does it exist?",
                    self.endpoint
                ))),
                Failure::Store(err) => Err(err),
            },
        }
    }

    async fn check_container(&self) -> Result<(), StoreError> {
        let props = self
            .container
            .get_properties(None)
            .await
            .map_err(|e| self.store_error("check container", "", e))?;
        let worm = props
            .is_immutable_storage_with_versioning_enabled()
            .ok()
            .flatten()
            == Some(true);
        if worm {
            tracing::info!(store = %self.endpoint, "container has version-level immutability");
            return Ok(());
        }
        const WHY: &str = "container has no version-level immutability: records would not be WORM";
        if self.require_immutability {
            return Err(StoreError::Unavailable(format!(
                "{WHY} ({}). Enable version-level immutability support on the container (it \
                 needs blob versioning), or set store.require_immutability = false for a \
                 non-compliant test store",
                self.endpoint
            )));
        }
        tracing::warn!(store = %self.endpoint, "{WHY} (store.require_immutability = false)");
        Ok(())
    }

    /// Writes (once: create-only) and reads back a probe, carrying an immutability policy like
    /// every write, so that a container refusing policies fails here and not mid-window.
    async fn check_round_trip(&self) -> Result<(), StoreError> {
        let opts = PutOptions {
            sha256: sha256_hex(PROBE_BYTES),
            retain_until: Some(Utc::now()),
            ..Default::default()
        };
        let body = Body::from(Bytes::from_static(PROBE_BYTES));
        match self.upload(PROBE_KEY, body, &opts, false).await? {
            PutOutcome::AlreadyExists { existing_sha256 } if existing_sha256 != opts.sha256 => {
                return Err(StoreError::Rejected {
                    op: "check",
                    key: PROBE_KEY.into(),
                    detail: "the write probe holds other bytes than the archiver wrote".into(),
                })
            }
            _ => {}
        }
        match self.get(PROBE_KEY).await? {
            Some(b) if b.as_ref() == PROBE_BYTES => Ok(()),
            _ => Err(StoreError::Rejected {
                op: "check",
                key: PROBE_KEY.into(),
                detail: "reading back the write probe did not return what was written".into(),
            }),
        }
    }
}

#[async_trait]
impl ArchiveStore for AzureStore {
    fn describe(&self) -> String {
        format!("azure:{}", self.endpoint)
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.check_container().await?;
        self.check_round_trip().await?;
        std::fs::create_dir_all(&self.staging).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the staging directory {} (store.staging_path): {e}",
                self.staging.display()
            ))
        })
    }

    async fn put_create_only(
        &self,
        key: &str,
        bytes: Bytes,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        self.upload(key, Body::from(bytes), opts, false).await
    }

    async fn put_file_create_only(
        &self,
        key: &str,
        file: &Path,
        opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        // Look first: a retry of a finished upload must not send the whole file again.
        let outcome = match self.properties(key).await? {
            Some(_) => self.existing_sha256(key, true).await?,
            None => {
                let handle = tokio::fs::File::open(file)
                    .await
                    .map_err(io("open staged file for", key))?;
                let stream = FileStream::builder(handle)
                    .build()
                    .await
                    .map_err(|e| self.store_error("stage", key, e))?;
                self.upload(key, Body::from(stream), opts, true).await?
            }
        };
        // The store owns the content now; the staged copy is no longer needed.
        let _ = tokio::fs::remove_file(file).await;
        Ok(outcome)
    }

    fn staging_dir(&self) -> PathBuf {
        self.staging.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let blob = self.blob(key)?;
        let rsp = match blob.download(None).await {
            Ok(r) => r,
            Err(e) => return not_found_is_none(self.fail("read", key, e)),
        };
        rsp.body
            .collect()
            .await
            .map(Some)
            .map_err(|e| self.store_error("read", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_stream(prefix).try_collect().await
    }

    /// Page by page (5,000 names each), never the whole listing: `verify` walks millions.
    /// Azure lists names in byte order, the order the trait promises; a listing that is not
    /// is refused rather than let a merge against the catalogue report false gaps.
    fn list_stream<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::stream::BoxStream<'a, Result<String, StoreError>> {
        use futures::StreamExt;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            maxresults: self.list_page,
            ..Default::default()
        };
        let pager = match self.container.list_blobs(Some(options)) {
            Ok(pager) => pager,
            Err(e) => {
                return futures::stream::iter([Err(self.store_error("list", prefix, e))]).boxed()
            }
        };
        let mut last: Option<String> = None;
        pager
            .map_err(move |e| self.store_error("list", prefix, e))
            .try_filter_map(|item| std::future::ready(Ok(item.name)))
            .map(move |name| {
                let name = name?;
                if last.as_ref().is_some_and(|l| *l >= name) {
                    return Err(StoreError::Rejected {
                        op: "list",
                        key: name,
                        detail: "the container listed names out of order".into(),
                    });
                }
                last = Some(name.clone());
                Ok(name)
            })
            .boxed()
    }

    async fn hash(&self, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        let blob = self.blob(key)?;
        let rsp = match blob.download(None).await {
            Ok(r) => r,
            Err(e) => return not_found_is_none(self.fail("read", key, e)),
        };
        let mut body = rsp.body;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| self.store_error("read", key, e))?
        {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(Some((hex::encode(hasher.finalize()), size)))
    }

    async fn properties(&self, key: &str) -> Result<Option<ObjectProperties>, StoreError> {
        let blob = self.blob(key)?;
        let rsp = match blob.get_properties(None).await {
            Ok(r) => r,
            Err(e) => return not_found_is_none(self.fail("read properties of", key, e)),
        };
        let mode = rsp
            .immutability_policy_mode()
            .ok()
            .flatten()
            .map(|m| match m {
                ImmutabilityPolicyMode::Locked => ImmutabilityMode::Locked,
                _ => ImmutabilityMode::Unlocked,
            });
        Ok(Some(ObjectProperties {
            size_bytes: rsp.content_length().ok().flatten().unwrap_or(0),
            sha256: rsp
                .metadata()
                .ok()
                .and_then(|m| m.get(SHA256_METADATA).cloned()),
            retain_until: rsp
                .immutability_policy_expires_on()
                .ok()
                .flatten()
                .and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), 0)),
            mode,
            legal_hold: rsp.legal_hold().ok().flatten().unwrap_or(false),
        }))
    }

    async fn set_legal_hold(&self, key: &str, hold: bool) -> Result<(), StoreError> {
        let blob = self.blob(key)?;
        blob.set_legal_hold(hold, None)
            .await
            .map(|_| ())
            .map_err(|e| self.store_error("set legal hold on", key, e))
    }

    async fn extend_retention(
        &self,
        key: &str,
        until: DateTime<Utc>,
        mode: ImmutabilityMode,
    ) -> Result<(), StoreError> {
        let current = self
            .properties(key)
            .await?
            .ok_or_else(|| StoreError::Rejected {
                op: "extend retention of",
                key: key.to_string(),
                detail: "no such object".into(),
            })?;
        let Some(plan) = plan_extension(current.retain_until, current.mode, until, mode) else {
            return Ok(());
        };
        let blob = self.blob(key)?;
        let options = BlobClientSetImmutabilityPolicyOptions {
            immutability_policy_mode: Some(policy_mode(plan.1)),
            ..Default::default()
        };
        blob.set_immutability_policy(&offset(plan.0), Some(options))
            .await
            .map(|_| ())
            .map_err(|e| self.store_error("extend retention of", key, e))
    }

    async fn delete(&self, key: &str) -> Result<DeleteOutcome, StoreError> {
        let blob = self.blob(key)?;
        match blob.delete(None).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) => match self.fail("delete", key, e) {
                Failure::NotFound => Ok(DeleteOutcome::NotFound),
                Failure::Store(s) => Err(s),
                Failure::Exists => Err(StoreError::Rejected {
                    op: "delete",
                    key: key.to_string(),
                    detail: "the store refused the deletion (conflict)".into(),
                }),
            },
        }
    }

    fn enforces_retention(&self) -> bool {
        true
    }
}

/// The policy change to make, if any: never shorter than what is in force, and never from
/// Locked back to Unlocked (Azure refuses both; the archiver does not even ask).
pub(crate) fn plan_extension(
    current_until: Option<DateTime<Utc>>,
    current_mode: Option<ImmutabilityMode>,
    until: DateTime<Utc>,
    mode: ImmutabilityMode,
) -> Option<(DateTime<Utc>, ImmutabilityMode)> {
    let locked = current_mode == Some(ImmutabilityMode::Locked) || mode == ImmutabilityMode::Locked;
    let new_mode = if locked {
        ImmutabilityMode::Locked
    } else {
        ImmutabilityMode::Unlocked
    };
    let new_until = current_until.map_or(until, |c| c.max(until));
    let changes = Some(new_until) != current_until || Some(new_mode) != current_mode;
    changes.then_some((new_until, new_mode))
}

/// The until-date to write: the rule's, but never in the past nor within a day of now.
pub(crate) fn policy_until(until: DateTime<Utc>, now: DateTime<Utc>) -> OffsetDateTime {
    offset(until.max(now + MIN_POLICY))
}

fn offset(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn policy_mode(mode: ImmutabilityMode) -> ImmutabilityPolicyMode {
    match mode {
        ImmutabilityMode::Locked => ImmutabilityPolicyMode::Locked,
        ImmutabilityMode::Unlocked => ImmutabilityPolicyMode::Unlocked,
    }
}

/// Metadata travels in headers: only visible ASCII survives, so anything else is encoded.
fn metadata_value(v: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b' ');
    percent_encoding::utf8_percent_encode(v, KEEP).to_string()
}

fn not_found_is_none<T>(f: Failure) -> Result<Option<T>, StoreError> {
    match f {
        Failure::NotFound => Ok(None),
        Failure::Store(s) => Err(s),
        Failure::Exists => Ok(None),
    }
}

fn io<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        key: key.to_string(),
        source,
    }
}

fn duration(d: std::time::Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::seconds(1))
}

fn auth_hint(auth: &AzureAuth) -> &'static str {
    match auth {
        AzureAuth::Sas(_) => {
            "Check that store.sas_token is not expired (se=) and grants read, add, create, write, \
             delete, list and immutability-policy (sp=racwdli) on this container"
        }
        AzureAuth::ClientSecret { .. } | AzureAuth::Certificate { .. } => {
            "Check store.tenant_id, store.client_id and the secret or certificate, and that the \
             app has the Storage Blob Data Contributor role on the container"
        }
        AzureAuth::ManagedIdentity { .. } => {
            "Check that this host has a managed identity (store.managed_identity_client_id for a \
             user-assigned one) with the Storage Blob Data Contributor role on the container"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(days: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
            .single()
            .expect("date")
            + chrono::Duration::days(days)
    }

    #[test]
    fn locked_policies_are_never_shortened_or_unlocked() {
        use ImmutabilityMode::*;
        // Shorter Locked: nothing to do.
        assert_eq!(
            plan_extension(Some(t(100)), Some(Locked), t(10), Locked),
            None
        );
        // Shorter and Unlocked asked: still nothing (stays Locked at 100).
        assert_eq!(
            plan_extension(Some(t(100)), Some(Locked), t(10), Unlocked),
            None
        );
        // Longer: extended, stays Locked.
        assert_eq!(
            plan_extension(Some(t(100)), Some(Locked), t(200), Unlocked),
            Some((t(200), Locked))
        );
        // Unlocked may be locked at the same date.
        assert_eq!(
            plan_extension(Some(t(100)), Some(Unlocked), t(100), Locked),
            Some((t(100), Locked))
        );
        // No policy yet: set it.
        assert_eq!(
            plan_extension(None, None, t(5), Unlocked),
            Some((t(5), Unlocked))
        );
    }

    #[test]
    fn policy_dates_are_never_in_the_past() {
        let now = t(0);
        assert_eq!(
            policy_until(t(-30), now).unix_timestamp(),
            (now + MIN_POLICY).timestamp()
        );
        assert_eq!(
            policy_until(t(400), now).unix_timestamp(),
            t(400).timestamp()
        );
    }

    #[test]
    fn metadata_values_stay_header_safe() {
        assert_eq!(metadata_value("user a/ü"), "user%20a/%C3%BC");
    }
}
