//! The ingest suite on real Azure Blob Storage semantics: Azurite (started by
//! scripts/with-azurite.sh), authorised by SAS. Azurite enforces create-only writes and SAS
//! permissions but not WORM; the WORM rules are `worm.rs`'s, against the test double.

use crate::azure_env::azurite_available;
use crate::helpers::*;
use m365_archiver::archive::{sha256_hex, ArchiveStore, PutOptions, PutOutcome};
use m365_archiver::groundtruth::storage_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_through_faults_azurite() {
    if azurite_available() {
        crate::end_to_end::archive_equals_ground_truth_through_faults(
            Db::Sqlite,
            StoreKind::Azurite,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_azurite() {
    if azurite_available() {
        crate::crash::sigkill_at_random_points(Db::Sqlite, StoreKind::Azurite).await;
    }
}

/// A blob already at a record's key with other content is an integrity alarm: reported, never
/// overwritten, and everything else is still archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_blob_with_other_content_is_reported_not_overwritten_azurite() {
    if !azurite_available() {
        return;
    }
    let opts = Opts {
        store: StoreKind::Azurite,
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(4, 6), &opts).await;
    let truth = env.truth().await;
    let key = storage_key(&truth[0]);
    let planted = bytes::Bytes::from_static(b"{\"planted\":true}");
    let store = env.archive();
    let put = PutOptions {
        sha256: sha256_hex(&planted),
        ..Default::default()
    };
    assert_eq!(
        store
            .put_create_only(&key, planted.clone(), &put)
            .await
            .expect("plant"),
        PutOutcome::Created
    );

    let out = env.run_once().await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("integrity alarm"), "{all}");
    assert_eq!(store.get(&key).await.expect("read"), Some(planted));
    let cmp = env.compare().await;
    assert_eq!(cmp.altered, vec![key.clone()]);
    assert!(
        cmp.missing.is_empty() && cmp.extra.is_empty(),
        "{}",
        cmp.summary()
    );
    let audit = env.state().await.audit_list(100).await.expect("audit");
    assert!(audit
        .iter()
        .any(|a| a.action == "integrity_conflict" && a.subject == key));
}

/// The SAS never reaches logs or errors, even at trace level and when Azurite refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_never_in_logs_and_a_bad_one_exits_77() {
    if !azurite_available() {
        return;
    }
    let opts = Opts {
        store: StoreKind::Azurite,
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(2, 3), &opts).await;
    let sas = env.azure.as_ref().expect("azure").sas.clone();
    let sig = sas
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .expect("sig")
        .to_string();
    let out = env
        .command(&["run", "--once"])
        .env("RUST_LOG", "trace")
        .output()
        .await
        .expect("run");
    let all = text(&out);
    assert!(out.status.success(), "{}", tail(&all, 20));
    assert!(
        !all.contains(&sig),
        "the SAS signature leaked into the output"
    );

    let forged = sas.replace(&sig, "Zm9yZ2VkLXNpZ25hdHVyZQ%3D%3D");
    let out = env
        .command(&["run", "--once"])
        .env("M365_ARCHIVER__STORE__SAS_TOKEN", &forged)
        .output()
        .await
        .expect("run");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(77), "{all}");
    assert!(all.contains("store.sas_token"), "says what to fix: {all}");
    assert!(
        !all.contains("Zm9yZ2Vk") && !all.contains(&sig),
        "a signature leaked: {all}"
    );
}

/// An endpoint where nothing listens: the start-up check says so and exits 69.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_is_reported_and_exits_69() {
    let env = Env::new(Db::Sqlite, sim_config(1, 2), &Opts::default()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let out = env
        .command(&["run", "--once"])
        .env("M365_ARCHIVER__STORE__KIND", "azure")
        .env(
            "M365_ARCHIVER__STORE__CONTAINER_URL",
            format!("http://{closed}/devstoreaccount1/archive"),
        )
        .env("M365_ARCHIVER__STORE__SAS_TOKEN", "sp=racwdl&sig=x")
        .env("M365_ARCHIVER__STORE__MAX_RETRIES", "1")
        .env("M365_ARCHIVER__STORE__RETRY_DELAY", "20ms")
        .env("M365_ARCHIVER__RETENTION__DEFAULT__RETAIN", "7y")
        .output()
        .await
        .expect("run");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(69), "{all}");
    assert!(all.contains("cannot reach the archive store"), "{all}");
}

/// A listing spanning several pages streams every name once, in byte order, as `list` does:
/// `verify` merges it against the catalogue and would report false gaps otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_listing_streams_pages_in_byte_order() {
    use futures::TryStreamExt;
    if !azurite_available() {
        return;
    }
    let target = AzureTarget::for_store(&StoreKind::Azurite)
        .await
        .expect("target");
    let store = target.store_with_blocks(1).with_list_page(7);
    let mut keys: Vec<String> = (0..40)
        .map(|i| match i % 4 {
            0 => format!("records/chats/A{i:03}.json"),
            1 => format!("records/chats/a{i:03}.json"),
            2 => format!("records/chats/19%3A{i}%40thread/{i}@{i}.json"),
            _ => format!("records/copilot/u{i}/{i}.json"),
        })
        .collect();
    for key in &keys {
        let bytes = bytes::Bytes::from(key.clone().into_bytes());
        let opts = PutOptions {
            sha256: sha256_hex(&bytes),
            ..Default::default()
        };
        store.put_create_only(key, bytes, &opts).await.expect("put");
    }
    keys.sort();
    let streamed: Vec<String> = store
        .list_stream("records/")
        .try_collect()
        .await
        .expect("stream");
    assert_eq!(
        streamed, keys,
        "every name once, in byte order, across 6 pages"
    );
    assert_eq!(store.list("records/").await.expect("list"), keys);
    let chats: Vec<String> = store
        .list_stream("records/chats/")
        .try_collect()
        .await
        .expect("stream");
    assert_eq!(chats.len(), 30, "the prefix is applied");
}

/// The store's own round trip on Azurite: create-only, reads, listing, hashes, metadata,
/// block uploads, deletion, and the start-up check's immutability verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_store_round_trip() {
    if !azurite_available() {
        return;
    }
    let target = AzureTarget::for_store(&StoreKind::Azurite)
        .await
        .expect("target");
    let store = target.store_with_blocks(1);
    store
        .check()
        .await
        .expect("check passes without required immutability");
    let key = "records/chats/19%3Aabc%40thread.v2/1/1.json";
    let a = bytes::Bytes::from_static(b"{\"id\":\"1\"}");
    let b = bytes::Bytes::from_static(b"{\"id\":\"1\",\"x\":2}");
    let opts = |x: &[u8]| PutOptions {
        sha256: sha256_hex(x),
        ..Default::default()
    };
    assert_eq!(
        store
            .put_create_only(key, a.clone(), &opts(&a))
            .await
            .expect("put"),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_create_only(key, b.clone(), &opts(&b))
            .await
            .expect("put"),
        PutOutcome::AlreadyExists {
            existing_sha256: sha256_hex(&a)
        }
    );
    assert_eq!(store.get(key).await.expect("get"), Some(a.clone()));
    assert_eq!(
        store.list("records/").await.expect("list"),
        vec![key.to_string()]
    );
    let props = store
        .properties(key)
        .await
        .expect("props")
        .expect("present");
    assert_eq!(props.sha256, Some(sha256_hex(&a)));
    assert_eq!(props.size_bytes, a.len() as u64);
    assert_eq!(store.get("records/none.json").await.expect("get"), None);

    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..(2 * 1024 * 1024 + 7))
        .map(|i| (i % 253) as u8)
        .collect();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).expect("stage");
    let big_key = "content/recordings/m/1.mp4";
    let o = store
        .put_file_create_only(big_key, &file, &opts(&big))
        .await
        .expect("blocks");
    assert_eq!(o, PutOutcome::Created);
    assert_eq!(
        store.hash(big_key).await.expect("hash"),
        Some((sha256_hex(&big), big.len() as u64))
    );

    assert_eq!(
        store.delete(key).await.expect("delete"),
        m365_archiver::archive::DeleteOutcome::Deleted
    );
    assert_eq!(
        store.delete(key).await.expect("delete"),
        m365_archiver::archive::DeleteOutcome::NotFound
    );

    let strict = AzureTarget {
        require_immutability: true,
        ..target
    };
    let err = strict
        .store()
        .check()
        .await
        .expect_err("Azurite has no version-level WORM");
    assert!(
        err.to_string().contains("no version-level immutability"),
        "{err}"
    );
}
