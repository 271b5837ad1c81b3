//! The local-directory archive: not regulatory WORM (root can undo anything), but it never
//! overwrites and never acknowledges a write that is not on disk.
//!
//! A write goes to `<root>/tmp/` first, is fsync'd and made read-only, then published with
//! `link(2)`, which fails if the name exists (create-only without a race), then the directory is
//! fsync'd. A crash leaves at worst a stray temp file, never a partial object under its key.

use super::{
    keys, ArchiveStore, DeleteOutcome, ImmutabilityMode, ObjectProperties, PutItem, PutOptions,
    PutOutcome, StoreError,
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod listing;
mod sync_group;

use sync_group::SyncGroup;

const TMP_DIR: &str = "tmp";
/// Temp files older than this are leftovers of a crash (writes take milliseconds).
const STALE_TMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Shared by clones, so every batch written to this root can share its syncs.
    syncs: std::sync::Arc<SyncGroup>,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsStore {
            root: root.into(),
            syncs: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        keys::validate(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })?;
        Ok(self.root.join(key))
    }

    fn io<'a>(op: &'static str, key: &'a str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            key: key.to_string(),
            source,
        }
    }
}

#[async_trait]
impl ArchiveStore for FsStore {
    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        blocking(move || check_root(&root)).await
    }

    async fn put_create_only(
        &self,
        key: &str,
        bytes: Bytes,
        _opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let key = key.to_string();
        blocking(move || put_blocking(&root, &path, &key, &bytes)).await
    }

    /// One blocking task and two filesystem syncs for the whole batch (see `put_batch`).
    async fn put_many_create_only(
        &self,
        items: Vec<PutItem>,
        _concurrency: usize,
    ) -> Vec<Result<PutOutcome, StoreError>> {
        let n = items.len();
        let batch: Vec<_> = items
            .into_iter()
            .map(|item| (self.path_of(&item.key), item))
            .collect();
        let root = self.root.clone();
        let syncs = self.syncs.clone();
        match tokio::task::spawn_blocking(move || put_batch(&root, &syncs, batch)).await {
            Ok(results) => results,
            Err(e) => (0..n)
                .map(|_| Err(StoreError::Unavailable(format!("store worker failed: {e}"))))
                .collect(),
        }
    }

    async fn put_file_create_only(
        &self,
        key: &str,
        file: &Path,
        _opts: &PutOptions,
    ) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let key = key.to_string();
        let file = file.to_path_buf();
        blocking(move || put_file_blocking(&root, &path, &key, &file)).await
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || match fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("read", &key)(e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let start = if prefix.is_empty() {
            root.clone()
        } else {
            self.path_of(prefix.trim_end_matches('/'))?
        };
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            walk(&root, &start, &mut out).map_err(Self::io("list", &prefix))?;
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Streamed by a walker that holds one directory listing per level, not every key.
    fn list_stream<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::stream::BoxStream<'a, Result<String, StoreError>> {
        let start = if prefix.is_empty() {
            Ok(self.root.clone())
        } else {
            self.path_of(prefix.trim_end_matches('/'))
        };
        match start {
            Ok(start) => listing::list_stream(self.root.clone(), start, prefix.to_string()),
            Err(e) => futures::StreamExt::boxed(futures::stream::iter([Err(e)])),
        }
    }

    async fn hash(&self, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || hash_file(&path).map_err(Self::io("read", &key))).await
    }

    /// The local directory keeps no retention or hold of its own: the state database is the
    /// record of both, and only disposition deletes.
    async fn properties(&self, key: &str) -> Result<Option<ObjectProperties>, StoreError> {
        Ok(self
            .hash(key)
            .await?
            .map(|(sha256, size_bytes)| ObjectProperties {
                size_bytes,
                sha256: Some(sha256),
                retain_until: None,
                mode: None,
                legal_hold: false,
            }))
    }

    async fn set_legal_hold(&self, key: &str, _hold: bool) -> Result<(), StoreError> {
        self.path_of(key)?;
        Ok(())
    }

    async fn extend_retention(
        &self,
        key: &str,
        _until: DateTime<Utc>,
        _mode: ImmutabilityMode,
    ) -> Result<(), StoreError> {
        self.path_of(key)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<DeleteOutcome, StoreError> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || delete_blocking(&path).map_err(Self::io("delete", &key))).await
    }
}

/// Streams the file through sha256 in 1 MiB reads (recordings can be gigabytes).
fn hash_file(path: &Path) -> std::io::Result<Option<(String, u64)>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = Sha256::new();
    // Sized to the file, 4 KiB to 1 MiB: a zeroed 1 MiB buffer for every small record cost
    // verify more than the hashing did.
    let len = file.metadata()?.len();
    let mut buf = vec![
        0u8;
        usize::try_from(len)
            .unwrap_or(usize::MAX)
            .clamp(4096, 1 << 20)
    ];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Some((hex::encode(hasher.finalize()), size)))
}

/// Unlinks the (read-only) file and makes the removal durable. Read-only files can be unlinked:
/// the permission that matters is the directory's.
fn delete_blocking(path: &Path) -> std::io::Result<DeleteOutcome> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(parent) = path.parent() {
                fsync_dir(parent)?;
            }
            Ok(DeleteOutcome::Deleted)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(DeleteOutcome::NotFound),
        Err(e) => Err(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store worker failed: {e}")))?
}

fn check_root(root: &Path) -> Result<(), StoreError> {
    let tmp = root.join(TMP_DIR);
    fs::create_dir_all(&tmp).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot create {}: {e} (check store.path and that the service user may write there)",
            tmp.display()
        ))
    })?;
    let probe = tmp.join(format!(".probe-{}", uuid::Uuid::new_v4()));
    let write = File::create(&probe).and_then(|mut f| {
        f.write_all(b"probe")?;
        f.sync_all()
    });
    let _ = fs::remove_file(&probe);
    write
        .map_err(|e| StoreError::Unavailable(format!("{} is not writable: {e}", root.display())))?;
    remove_stale_temp_files(&tmp);
    Ok(())
}

fn remove_stale_temp_files(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TMP);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn put_blocking(
    root: &Path,
    path: &Path,
    key: &str,
    bytes: &[u8],
) -> Result<PutOutcome, StoreError> {
    publish(root, path, key, |root| write_temp(root, bytes))
}

/// Publishes a complete staged file; the file is consumed whatever the outcome. A file outside
/// the store's filesystem is copied into `tmp/` first.
fn put_file_blocking(
    root: &Path,
    path: &Path,
    key: &str,
    file: &Path,
) -> Result<PutOutcome, StoreError> {
    let outcome = publish(root, path, key, |root| stage_file(root, file));
    let _ = fs::remove_file(file);
    outcome
}

/// Create-only publication: `stage` leaves a durable, read-only file in `tmp/`, which is then
/// linked under the key (link fails if the name exists) and the directory fsync'd.
fn publish(
    root: &Path,
    path: &Path,
    key: &str,
    stage: impl FnOnce(&Path) -> std::io::Result<PathBuf>,
) -> Result<PutOutcome, StoreError> {
    if let Some(existing) = read_existing(path, key)? {
        return Ok(existing);
    }
    let parent = path.parent().ok_or_else(|| StoreError::InvalidKey {
        key: key.to_string(),
        reason: "no parent directory",
    })?;
    create_dirs_durably(root, parent).map_err(FsStore::io("create directory for", key))?;
    let staged = stage(root).map_err(FsStore::io("write", key))?;
    let linked = fs::hard_link(&staged, path);
    let _ = fs::remove_file(&staged);
    match linked {
        Ok(()) => {
            fsync_dir(parent).map_err(FsStore::io("fsync directory of", key))?;
            Ok(PutOutcome::Created)
        }
        // Lost a race with another writer of the same key: report what is there.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_existing(path, key)?.ok_or_else(|| FsStore::io("publish", key)(e))
        }
        Err(e) => Err(FsStore::io("publish", key)(e)),
    }
}

/// Bytes waiting to be linked under their key.
enum StagedFile {
    /// An O_TMPFILE inode in the key's own directory: no name until it is linked, so a crash
    /// leaves nothing behind and no shared `tmp/` directory is contended.
    Anonymous(File),
    /// A named file in `tmp/`, where the filesystem has no O_TMPFILE.
    Named(PathBuf),
}

impl StagedFile {
    fn discard(self) {
        if let StagedFile::Named(tmp) = self {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Staged files a batch keeps open at once (each anonymous one is a file descriptor).
const MAX_STAGED: usize = 64;

/// Batched create-only publication with `publish`'s guarantees at a fraction of its syncs:
/// every new object is staged without a sync of its own, one `syncfs` makes all staged bytes
/// durable, each is linked under its key (create-only), and a second `syncfs` makes the new
/// names and directories durable before anything is acknowledged. A crash at any point leaves
/// each key either absent or complete: a link only ever points at synced bytes. Each "one
/// `syncfs`" is one that began after this batch's step, shared with concurrent batches.
fn put_batch(
    root: &Path,
    syncs: &SyncGroup,
    batch: Vec<(Result<PathBuf, StoreError>, PutItem)>,
) -> Vec<Result<PutOutcome, StoreError>> {
    // Normally made by `check` at start; a store used without it still works.
    let _ = fs::create_dir_all(root.join(TMP_DIR));
    let mut results = Vec::with_capacity(batch.len());
    let mut items = batch.into_iter().peekable();
    while items.peek().is_some() {
        let chunk: Vec<_> = items.by_ref().take(MAX_STAGED).collect();
        results.extend(put_chunk(root, syncs, chunk));
    }
    results
}

fn put_chunk(
    root: &Path,
    syncs: &SyncGroup,
    chunk: Vec<(Result<PathBuf, StoreError>, PutItem)>,
) -> Vec<Result<PutOutcome, StoreError>> {
    let mut results: Vec<Result<PutOutcome, StoreError>> = Vec::with_capacity(chunk.len());
    let mut pending = Vec::new();
    let mut keys = Vec::with_capacity(chunk.len());
    for (i, (path, item)) in chunk.into_iter().enumerate() {
        let staged = path.and_then(|p| Ok((stage(root, &p, &item)?, p)));
        keys.push(item.key);
        match staged {
            Ok((file, dest)) => {
                pending.push((i, file, dest));
                results.push(Ok(PutOutcome::Created));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if pending.is_empty() {
        return results;
    }
    if let Err(e) = syncs.sync_after(|| sync_filesystem(root)) {
        for (i, file, _) in pending {
            file.discard();
            results[i] = Err(FsStore::io("sync staged", &keys[i])(copy_io(&e)));
        }
        return results;
    }
    let mut linked = Vec::with_capacity(pending.len());
    for (i, file, dest) in pending {
        results[i] = link_staged(file, &dest, &keys[i]);
        linked.push(i);
    }
    if let Err(e) = syncs.sync_after(|| sync_filesystem(root)) {
        for i in linked {
            if matches!(results[i], Ok(PutOutcome::Created)) {
                results[i] = Err(FsStore::io("sync published", &keys[i])(copy_io(&e)));
            }
        }
    }
    results
}

/// Writes the bytes read-only, unsynced, to be linked under the key. Nothing is looked up
/// first: the link is create-only and reports what an earlier write left there, and the
/// caller's catalogue already skipped versions it knows (a lookup cost every new version two
/// failing path walks).
fn stage(root: &Path, path: &Path, item: &PutItem) -> Result<StagedFile, StoreError> {
    let key = item.key.as_str();
    let parent = path.parent().ok_or_else(|| StoreError::InvalidKey {
        key: key.to_string(),
        reason: "no parent directory",
    })?;
    match write_anonymous_creating_dirs(parent, &item.bytes) {
        Some(Ok(file)) => Ok(StagedFile::Anonymous(file)),
        Some(Err(e)) => Err(FsStore::io("write", key)(e)),
        None => {
            fs::create_dir_all(parent).map_err(FsStore::io("create directory for", key))?;
            let tmp = write_temp_unsynced(root, &item.bytes).map_err(FsStore::io("write", key))?;
            Ok(StagedFile::Named(tmp))
        }
    }
}

/// `write_anonymous`, creating `dir` only when it is missing (most keys share directories
/// with keys written before).
fn write_anonymous_creating_dirs(dir: &Path, bytes: &[u8]) -> Option<std::io::Result<File>> {
    match write_anonymous(dir, bytes) {
        Some(Err(e)) if e.kind() == ErrorKind::NotFound => match fs::create_dir_all(dir) {
            Ok(()) => write_anonymous(dir, bytes),
            Err(e) => Some(Err(e)),
        },
        other => other,
    }
}

/// Writes `bytes` to a new unnamed read-only inode in `dir`; None where O_TMPFILE (or the
/// /proc/self/fd needed to link it) is unavailable.
fn write_anonymous(dir: &Path, bytes: &[u8]) -> Option<std::io::Result<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let linkable = *PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir());
    if UNSUPPORTED.load(Ordering::Relaxed) || !linkable || !cfg!(target_os = "linux") {
        return None;
    }
    #[cfg(target_os = "linux")]
    let flags = libc::O_TMPFILE;
    #[cfg(not(target_os = "linux"))]
    let flags = 0;
    let opened = OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .mode(0o444)
        .open(dir);
    let mut file = match opened {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            return None;
        }
        Err(e) => return Some(Err(e)),
    };
    Some(file.write_all(bytes).map(|()| file))
}

/// Links a synced staged file under its key (create-only) and drops its staging name.
fn link_staged(file: StagedFile, dest: &Path, key: &str) -> Result<PutOutcome, StoreError> {
    let linked = match &file {
        StagedFile::Anonymous(f) => link_anonymous(f, dest),
        StagedFile::Named(tmp) => fs::hard_link(tmp, dest),
    };
    file.discard();
    match linked {
        Ok(()) => Ok(PutOutcome::Created),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_existing(dest, key)?.ok_or_else(|| FsStore::io("publish", key)(e))
        }
        Err(e) => Err(FsStore::io("publish", key)(e)),
    }
}

/// linkat(2) of an O_TMPFILE inode through /proc/self/fd (AT_EMPTY_PATH would need
/// CAP_DAC_READ_SEARCH); fails with EEXIST if the name is taken.
fn link_anonymous(file: &File, dest: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn copy_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// Flushes every dirty page and inode of the store's filesystem (syncfs(2)) and reports
/// write-back errors. Cheaper than per-object fsyncs when a batch holds many objects; the
/// archive is best kept on its own filesystem so that this flushes only archive writes.
fn sync_filesystem(root: &Path) -> std::io::Result<()> {
    let dir = File::open(root.join(TMP_DIR))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `dir` owns a valid descriptor for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No syncfs: sync(2) everything; it cannot fail.
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        drop(dir);
    }
    Ok(())
}

/// Makes `file` durable and read-only inside `<root>/tmp`, returning the path to link from.
fn stage_file(root: &Path, file: &Path) -> std::io::Result<PathBuf> {
    let tmp_dir = root.join(TMP_DIR);
    fs::create_dir_all(&tmp_dir)?;
    let staged = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    if fs::rename(file, &staged).is_err() {
        fs::copy(file, &staged)?;
        let _ = fs::remove_file(file);
    }
    let f = OpenOptions::new().read(true).open(&staged)?;
    f.sync_all()?;
    f.set_permissions(fs::Permissions::from_mode(0o444))?;
    Ok(staged)
}

/// Hashes what already sits at the key, streaming (recordings are gigabytes).
fn read_existing(path: &Path, key: &str) -> Result<Option<PutOutcome>, StoreError> {
    let found = hash_file(path).map_err(FsStore::io("read existing", key))?;
    Ok(found.map(|(existing_sha256, _)| PutOutcome::AlreadyExists { existing_sha256 }))
}

/// As `write_temp` without the fsync: the batch syncs the whole filesystem once instead.
fn write_temp_unsynced(root: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp_dir = root.join(TMP_DIR);
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = f
        .write_all(bytes)
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o444)));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn write_temp(root: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp_dir = root.join(TMP_DIR);
    fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        f.set_permissions(fs::Permissions::from_mode(0o444))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Creates missing directories and fsyncs each new one's parent, so the new entry survives a
/// power cut along with the file that will be linked into it.
fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.is_dir() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) if p.starts_with(root) || p == root => cur = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        if let Some(p) = d.parent() {
            fsync_dir(p)?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            if !rel.starts_with(TMP_DIR) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::sha256_hex;

    fn opts(bytes: &[u8]) -> PutOptions {
        PutOptions {
            sha256: sha256_hex(bytes),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_only_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        store.check().await.expect("check");
        let key = "records/copilot/u/1/1.json";
        let first = Bytes::from_static(b"{\"id\":\"1\"}");
        assert_eq!(
            store
                .put_create_only(key, first.clone(), &opts(&first))
                .await
                .expect("put"),
            PutOutcome::Created
        );
        let other = Bytes::from_static(b"{\"id\":\"1\",\"x\":2}");
        let again = store
            .put_create_only(key, other.clone(), &opts(&other))
            .await
            .expect("put");
        assert_eq!(
            again,
            PutOutcome::AlreadyExists {
                existing_sha256: sha256_hex(&first)
            }
        );
        assert_eq!(store.get(key).await.expect("get"), Some(first));
        let mode = fs::metadata(dir.path().join(key))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "stored files are read-only");
    }

    #[tokio::test]
    async fn concurrent_writers_of_one_key_store_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(FsStore::new(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let b = Bytes::from(vec![b'a' + i; 32]);
                store
                    .put_create_only("records/x/k.json", b.clone(), &opts(&b))
                    .await
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.expect("join").expect("put") == PutOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        assert_eq!(
            store.list("records/").await.expect("list"),
            vec!["records/x/k.json"]
        );
    }

    #[tokio::test]
    async fn staged_files_publish_create_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        store.check().await.expect("check");
        let staged = store.staging_dir().join("download-1");
        std::fs::write(&staged, b"WEBVTT\n").expect("stage");
        let key = "content/transcripts/m/1.vtt";
        let o = store
            .put_file_create_only(key, &staged, &opts(b"WEBVTT\n"))
            .await
            .expect("put");
        assert_eq!(o, PutOutcome::Created);
        assert!(!staged.exists(), "the staged file is consumed");
        let other = store.staging_dir().join("download-2");
        std::fs::write(&other, b"WEBVTT\nchanged").expect("stage");
        let o = store
            .put_file_create_only(key, &other, &opts(b"x"))
            .await
            .expect("put");
        assert_eq!(
            o,
            PutOutcome::AlreadyExists {
                existing_sha256: sha256_hex(b"WEBVTT\n")
            }
        );
        assert_eq!(
            store.get(key).await.expect("get").as_deref(),
            Some(&b"WEBVTT\n"[..])
        );
    }

    #[tokio::test]
    async fn hash_properties_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        let key = "records/copilot/u/2/2.json";
        let b = Bytes::from_static(b"{\"id\":\"2\"}");
        store
            .put_create_only(key, b.clone(), &opts(&b))
            .await
            .expect("put");
        assert_eq!(
            store.hash(key).await.expect("hash"),
            Some((sha256_hex(&b), b.len() as u64))
        );
        let props = store
            .properties(key)
            .await
            .expect("props")
            .expect("present");
        assert_eq!(props.sha256.as_deref(), Some(sha256_hex(&b).as_str()));
        assert!(!props.legal_hold && props.retain_until.is_none());
        store
            .set_legal_hold(key, true)
            .await
            .expect("hold is a state-database matter");
        assert_eq!(
            store.delete(key).await.expect("delete"),
            DeleteOutcome::Deleted
        );
        assert_eq!(
            store.delete(key).await.expect("delete"),
            DeleteOutcome::NotFound
        );
        assert_eq!(store.hash(key).await.expect("hash"), None);
        assert!(store.properties(key).await.expect("props").is_none());
        assert!(matches!(
            store.delete("../escape").await,
            Err(StoreError::InvalidKey { .. })
        ));
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        let b = Bytes::from_static(b"x");
        for key in ["../x", "/etc/passwd", "a/../../x"] {
            assert!(matches!(
                store.put_create_only(key, b.clone(), &opts(&b)).await,
                Err(StoreError::InvalidKey { .. })
            ));
        }
    }

    #[tokio::test]
    async fn unwritable_root_is_reported() {
        let store = FsStore::new("/proc/m365-archiver-cannot-exist");
        let e = store.check().await.expect_err("unwritable");
        assert!(e.to_string().contains("store.path"), "{e}");
    }

    fn item(key: &str, bytes: &'static [u8]) -> PutItem {
        PutItem {
            key: key.to_string(),
            bytes: Bytes::from_static(bytes),
            opts: opts(bytes),
        }
    }

    #[tokio::test]
    async fn a_batch_reports_each_object_in_order_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::new(dir.path());
        store.check().await.expect("check");
        let same = item("records/chats/c/m1/e1.json", b"{\"id\":\"m1\"}");
        let taken = item("records/chats/c/m2/e1.json", b"{\"id\":\"m2\"}");
        for first in [&same, &taken] {
            store
                .put_create_only(&first.key, first.bytes.clone(), &first.opts)
                .await
                .expect("first put");
        }
        let batch = vec![
            item("records/chats/c/m3/e1.json", b"{\"id\":\"m3\"}"),
            same.clone(),
            item(&taken.key, b"{\"id\":\"m2\",\"edited\":1}"),
            item("records/../../escape.json", b"{}"),
            item("records/chats/other/m4/e1.json", b"{\"id\":\"m4\"}"),
        ];
        let results = store.put_many_create_only(batch, 4).await;
        assert_eq!(results.len(), 5);
        assert_eq!(results[0].as_ref().expect("new"), &PutOutcome::Created);
        assert_eq!(
            results[1].as_ref().expect("same"),
            &PutOutcome::AlreadyExists {
                existing_sha256: same.opts.sha256.clone()
            }
        );
        assert_eq!(
            results[2].as_ref().expect("taken"),
            &PutOutcome::AlreadyExists {
                existing_sha256: taken.opts.sha256.clone()
            },
            "a different version under a used key is reported, not written"
        );
        assert!(matches!(results[3], Err(StoreError::InvalidKey { .. })));
        assert_eq!(results[4].as_ref().expect("new"), &PutOutcome::Created);
        let stored = store.get(&taken.key).await.expect("get").expect("present");
        assert_eq!(stored, taken.bytes, "the first version is untouched");
        let m3 = dir.path().join("records/chats/c/m3/e1.json");
        assert_eq!(fs::read(&m3).expect("read"), b"{\"id\":\"m3\"}");
        assert!(fs::metadata(&m3).expect("meta").permissions().readonly());
        let leftovers = fs::read_dir(dir.path().join(TMP_DIR)).expect("tmp").count();
        assert_eq!(leftovers, 0, "no temp file is left behind");
    }

    #[tokio::test]
    async fn concurrent_batches_writing_one_key_store_it_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(FsStore::new(dir.path()));
        store.check().await.expect("check");
        let key = "records/chats/c/m/e.json";
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put_many_create_only(vec![item(key, b"{\"id\":\"m\"}")], 1)
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            let results = t.await.expect("join");
            match results
                .into_iter()
                .next()
                .expect("one result")
                .expect("put")
            {
                PutOutcome::Created => created += 1,
                PutOutcome::AlreadyExists { .. } => {}
            }
        }
        assert_eq!(created, 1, "exactly one batch publishes the key");
    }
}
