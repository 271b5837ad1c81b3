//! Bad input loses nothing: a record Graph returns without a usable identity is kept, byte for
//! byte, under quarantine/ and audited, while the rest of its page is archived normally.

use bytes::Bytes;
use m365_archiver::archive::fs::FsStore;
use m365_archiver::archive::{sha256_hex, ArchiveStore};
use m365_archiver::graph::Record;
use m365_archiver::ingest::{Ingestor, WindowLog, WindowReport};
use m365_archiver::sources::copilot::CopilotSource;
use m365_archiver::sources::{Scope, ScopeKind};
use m365_archiver::state::testing;
use std::sync::Arc;

#[tokio::test]
async fn unidentifiable_record_is_quarantined_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = testing::sqlite_in(dir.path()).await.expect("state");
    let store = Arc::new(FsStore::new(dir.path().join("archive")));
    store.check().await.expect("store");
    let ingest = Ingestor::new(store.clone(), state.clone(), 4);
    let scope = Scope {
        kind: ScopeKind::User,
        id: "user-1".into(),
        label: None,
    };
    let good: &[u8] = br#"{"id":"1700000000000","etag":"1700000000000","createdDateTime":"2023-11-14T22:13:20Z"}"#;
    let no_id: &[u8] =
        b"{ \"etag\" : \"5\", \"body\":{\"content\":\"caf\\u00e9\"}, \"future\":[1,2] }";
    let records = vec![
        Record {
            bytes: Bytes::from_static(good),
        },
        Record {
            bytes: Bytes::from_static(no_id),
        },
    ];
    let mut log = WindowLog::default();
    let mut report = WindowReport::default();
    ingest
        .ingest_records(
            &CopilotSource::new(100),
            &scope,
            records,
            &mut log,
            &mut report,
        )
        .await
        .expect("a record without an id must not fail the page");
    assert_eq!((report.new, report.quarantined), (1, 1));

    let kept = store.list("quarantine/").await.expect("list");
    assert_eq!(kept.len(), 1, "{kept:?}");
    let bytes = store.get(&kept[0]).await.expect("get").expect("stored");
    assert_eq!(&bytes[..], no_id, "quarantined bytes are exact");
    assert!(kept[0].ends_with(&format!("{}.json", sha256_hex(no_id))));
    let audit = state.audit_list(10).await.expect("audit");
    assert!(audit.iter().any(|a| a.action == "record_quarantined"));
    assert_eq!(store.list("records/").await.expect("list").len(), 1);
}
