//! Verify's lookups that do not go through record identity: content objects and keys that do
//! not read back to their record key wait for the extra-object scan, and are judged there.

use super::*;
use crate::archive::fs::FsStore;
use crate::archive::PutOptions;
use crate::state::{testing, ScopeRecord, WindowCommit};
use bytes::Bytes;
use chrono::Utc;

struct Fixture {
    _dir: tempfile::TempDir,
    state: StateDb,
    store: FsStore,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = testing::sqlite_in(dir.path()).await.expect("sqlite");
    let store = FsStore::new(dir.path().join("archive"));
    store.check().await.expect("store");
    let scope = ScopeRecord {
        id: "org".into(),
        label: None,
    };
    state
        .sync_scopes("organizer", &[scope], Utc::now())
        .await
        .expect("scope");
    Fixture {
        _dir: dir,
        state,
        store,
    }
}

impl Fixture {
    /// Stores `bytes` under `key` and, if `catalogue`, catalogues it as a version of
    /// `record_key` whose etag is its sha256.
    async fn object(&self, key: &str, record_key: &str, bytes: &[u8], catalogue: bool) -> String {
        let sha = sha256_hex(bytes);
        self.store
            .put_create_only(key, Bytes::copy_from_slice(bytes), &PutOptions::default())
            .await
            .expect("put");
        if catalogue {
            let row = CatalogueEntry {
                source: "recordings".into(),
                record_key: record_key.into(),
                etag: sha.clone(),
                sha256: sha.clone(),
                storage_key: key.into(),
                size_bytes: bytes.len() as i64,
                scope_id: "org".into(),
                created_at: None,
                archived_at: Utc::now(),
            };
            self.state.catalogue_insert(&[row]).await.expect("row");
        }
        sha
    }

    /// Commits manifest `seq` of organizer `org` listing `entries` (key, sha256).
    async fn manifest(&self, seq: i64, prev: Option<String>, entries: &[(&str, &str)]) -> String {
        let t = Utc::now();
        let records = entries
            .iter()
            .map(|(key, sha)| ManifestEntry {
                key: key.to_string(),
                etag: sha.to_string(),
                sha256: sha.to_string(),
                new: true,
            })
            .collect();
        let bytes =
            Manifest::new("recordings", "org", seq, t, t, prev.clone(), t, records).to_bytes();
        let sha = sha256_hex(&bytes);
        let key = keys::manifest_key("recordings", "org", seq, &sha);
        self.store
            .put_create_only(&key, Bytes::from(bytes), &PutOptions::default())
            .await
            .expect("manifest");
        let row = ManifestRow {
            source: "recordings".into(),
            scope_id: "org".into(),
            seq,
            sha256: sha.clone(),
            prev_sha256: prev,
            storage_key: key,
            window_start: t,
            window_end: t,
            record_count: entries.len() as i64,
            created_at: t,
        };
        let commit = WindowCommit {
            source: "recordings".into(),
            scope_id: "org".into(),
            manifest: row,
            advance_to: Some(t),
            lookback_done_at: None,
            new_records: 0,
            participants: Vec::new(),
            now: t,
        };
        self.state.commit_window(&commit).await.expect("commit");
        sha
    }

    async fn verify(&self) -> VerifyReport {
        let verifier = Verifier {
            state: &self.state,
            store: &self.store,
        };
        verifier
            .run(&VerifyOptions::default())
            .await
            .expect("verify")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_outside_record_identity_are_settled_by_the_scan() {
    let f = fixture().await;
    let content = "content/recordings/org/m/i/aa.mp4";
    let sha = f.object(content, "org/m/i/$content", b"video", true).await;
    // A key in an older layout: it does not read back to its record key.
    let record = "records/recordings/org/m/i/1.json".to_string();
    let record_sha = f.object(&record, "org/m/i", b"{}", false).await;
    let row = CatalogueEntry {
        source: "recordings".into(),
        record_key: "org/m/i".into(),
        etag: "1".into(),
        sha256: record_sha.clone(),
        storage_key: record.clone(),
        size_bytes: 2,
        scope_id: "org".into(),
        created_at: None,
        archived_at: Utc::now(),
    };
    f.state.catalogue_insert(&[row]).await.expect("row");
    let first = f
        .manifest(1, None, &[(content, &sha), (&record, &record_sha)])
        .await;
    let report = f.verify().await;
    assert!(report.ok(), "{}", report.details());
    assert_eq!((report.records_checked, report.manifests_checked), (2, 1));

    // A manifest that lists content nobody catalogued, and content with another hash.
    let ghost = "content/recordings/org/m/ghost/bb.mp4";
    f.manifest(2, Some(first), &[(ghost, "bb"), (content, "cc")])
        .await;
    let report = f.verify().await;
    let problems: Vec<(&str, &str)> = report
        .unchained
        .iter()
        .map(|x| (x.key.as_str(), x.problem.as_str()))
        .collect();
    assert_eq!(problems.len(), 2, "{}", report.details());
    assert!(problems[0].0 == content && problems[0].1.contains("records another sha256"));
    assert!(problems[1].0 == ghost && problems[1].1.contains("not catalogued"));
}
