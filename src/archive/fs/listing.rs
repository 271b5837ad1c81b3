//! The local store's listing as a stream, for `verify` over millions of objects: a blocking
//! walker sends the keys in sorted order through a bounded channel, holding one sorted
//! directory listing per level of the tree instead of every key.

use super::{FsStore, TMP_DIR};
use crate::archive::StoreError;
use futures::stream::{self, BoxStream, StreamExt};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Keys in flight between the walker and the reader.
const CHANNEL: usize = 1024;

type Sender = mpsc::Sender<Result<String, StoreError>>;

enum Walk {
    Running(mpsc::Receiver<Result<String, StoreError>>, JoinHandle<()>),
    Done,
}

/// Every key under `start` (a directory inside `root`), sorted as `FsStore::list` sorts them.
pub(super) fn list_stream(
    root: PathBuf,
    start: PathBuf,
    prefix: String,
) -> BoxStream<'static, Result<String, StoreError>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let walker = tokio::task::spawn_blocking(move || walk_sorted(&root, &start, &prefix, &tx));
    stream::unfold(Walk::Running(rx, walker), |walk| async move {
        let Walk::Running(mut rx, walker) = walk else {
            return None;
        };
        match rx.recv().await {
            Some(item) => Some((item, Walk::Running(rx, walker))),
            // A walker that died must not pass for the end of the listing.
            None => walker.await.err().map(|e| {
                let failed = StoreError::Unavailable(format!("store listing failed: {e}"));
                (Err(failed), Walk::Done)
            }),
        }
    })
    .boxed()
}

/// Depth first, each directory's entries in the order of the keys they lead to: a directory
/// sorts as its name plus `/`, so `a.x` comes before everything in `a/` (`.` < `/`), exactly
/// as in a sorted list of whole keys. Stops when the reader goes away.
fn walk_sorted(root: &Path, start: &Path, prefix: &str, tx: &Sender) {
    let mut stack: Vec<(PathBuf, std::vec::IntoIter<String>)> = Vec::new();
    if let Err(e) = descend(start, &mut stack) {
        let _ = tx.blocking_send(Err(FsStore::io("list", prefix)(e)));
        return;
    }
    while let Some((dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let item = match name.strip_suffix('/') {
            Some(sub) => {
                let path = dir.join(sub);
                match descend(&path, &mut stack) {
                    Ok(()) => continue,
                    Err(e) => Err(FsStore::io("list", prefix)(e)),
                }
            }
            None => match key_of(root, &dir.join(&name)) {
                Some(key) => Ok(key),
                None => continue,
            },
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// Pushes `dir`'s entries, sorted, onto the stack (nothing for a directory that is gone).
fn descend(
    dir: &Path,
    stack: &mut Vec<(PathBuf, std::vec::IntoIter<String>)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            name.push('/');
        }
        names.push(name);
    }
    names.sort_unstable();
    stack.push((dir.to_path_buf(), names.into_iter()));
    Ok(())
}

/// The key of a file, or None for staging files under `tmp/`.
fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    (!rel.starts_with(TMP_DIR)).then(|| rel.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use crate::archive::fs::FsStore;
    use crate::archive::ArchiveStore;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn streams_the_same_keys_in_the_same_order_as_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for key in [
            "records/a/b.json",
            "records/a.x",
            "records/a-b/c.json",
            "records/a/b/c.json",
            "records/A/z.json",
            "records/_/y.json",
            "manifests/m.json",
            "tmp/staged",
        ] {
            let path = root.join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"x").expect("write");
        }
        let store = FsStore::new(root);
        for prefix in ["", "records/", "records/a/", "nothing/"] {
            let listed = store.list(prefix).await.expect("list");
            let streamed: Vec<String> = store
                .list_stream(prefix)
                .try_collect()
                .await
                .expect("stream");
            assert_eq!(streamed, listed, "prefix {prefix:?}");
        }
        assert_eq!(
            store
                .list_stream("records/")
                .try_collect::<Vec<_>>()
                .await
                .expect("stream")
                .len(),
            6
        );
    }
}
