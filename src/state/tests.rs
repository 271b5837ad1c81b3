//! One suite, run against SQLite (a temporary file) and PostgreSQL (a fresh database per test,
//! see `testing`). Each scenario is an `async fn(StateDb)`; `both_backends!` makes the two
//! `#[tokio::test]`s that call it.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::testing;
use super::*;

use crate::both_backends;

both_backends!(
    migrations_are_idempotent,
    catalogue_key_includes_scope,
    insert_conflict_does_nothing,
    inserted_rows_keep_every_value_exactly,
    lookup_batches_beyond_bind_limits,
    watermark_never_moves_backwards,
    manifest_seq_must_be_last_plus_one,
    leases_exclude_other_owners_until_expiry,
    audit_log_is_append_only,
    catalogue_and_manifests_are_immutable,
    scopes_go_and_come_back,
    status_joins_scopes_and_counts,
    passes_start_the_largest_teams_first,
    record_error_keeps_progress,
    concurrent_catalogue_inserts,
);

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0)
        .single()
        .expect("valid test instant")
}

fn entry(source: &str, scope: &str, record_key: &str, etag: &str, sha: &str) -> CatalogueEntry {
    CatalogueEntry {
        source: source.into(),
        record_key: record_key.into(),
        etag: etag.into(),
        sha256: sha.into(),
        storage_key: format!("records/{source}/{record_key}/{etag}"),
        size_bytes: 42,
        scope_id: scope.into(),
        created_at: Some(at(0)),
        archived_at: at(1),
    }
}

fn manifest(source: &str, scope: &str, seq: i64, prev: Option<&str>) -> ManifestRow {
    ManifestRow {
        source: source.into(),
        scope_id: scope.into(),
        seq,
        sha256: format!("sha-{scope}-{seq}"),
        prev_sha256: prev.map(str::to_owned),
        storage_key: format!("manifests/{source}/{scope}/{seq}"),
        window_start: at(seq * 100),
        window_end: at(seq * 100 + 100),
        record_count: 3,
        created_at: at(seq * 100 + 101),
    }
}

/// The commit that appends the next manifest of the chain.
pub(in crate::state) async fn next_commit(db: &StateDb, source: &str, scope: &str) -> WindowCommit {
    let last = db
        .last_manifest(source, scope)
        .await
        .expect("last_manifest");
    let seq = last.as_ref().map_or(1, |m| m.seq + 1);
    let prev = last.as_ref().map(|m| m.sha256.as_str());
    WindowCommit {
        source: source.into(),
        scope_id: scope.into(),
        manifest: manifest(source, scope, seq, prev),
        advance_to: None,
        lookback_done_at: None,
        new_records: 0,
        participants: Vec::new(),
        now: at(seq * 100 + 102),
    }
}

fn scope(id: &str, label: &str) -> ScopeRecord {
    ScopeRecord {
        id: id.into(),
        label: Some(label.into()),
    }
}

async fn migrations_are_idempotent(db: StateDb) {
    db.migrate().await.expect("second migration run");
    db.migrate().await.expect("third migration run");
    db.ping().await.expect("ping");
    assert_eq!(db.catalogue_count(None).await.expect("count"), 0);
    assert!(db.status().await.expect("status").is_empty());
}

async fn catalogue_key_includes_scope(db: StateDb) {
    // Two users whose mailboxes hold the same interaction id with the same etag: two records.
    let interaction = "1700000000123";
    let a = entry(
        "copilot",
        "user-a",
        &format!("user-a/{interaction}"),
        "1",
        "sha-a",
    );
    let b = entry(
        "copilot",
        "user-b",
        &format!("user-b/{interaction}"),
        "1",
        "sha-b",
    );
    assert_eq!(
        db.catalogue_insert(&[a.clone(), b.clone()])
            .await
            .expect("insert"),
        2
    );
    assert_eq!(db.catalogue_count(Some("copilot")).await.expect("count"), 2);

    let keys = vec![
        (a.record_key.clone(), "1".to_owned()),
        (b.record_key.clone(), "1".to_owned()),
    ];
    let found = db.catalogue_lookup("copilot", &keys).await.expect("lookup");
    assert_eq!(found.get(&keys[0]).map(String::as_str), Some("sha-a"));
    assert_eq!(found.get(&keys[1]).map(String::as_str), Some("sha-b"));
    // The same key under another source is a different record.
    let other = db.catalogue_lookup("chats", &keys).await.expect("lookup");
    assert!(other.is_empty());
    assert_eq!(
        db.catalogue_list("copilot").await.expect("list"),
        vec![a, b]
    );
}

async fn insert_conflict_does_nothing(db: StateDb) {
    let original = entry("chats", "user-a", "chat-1/msg-1", "e1", "sha-original");
    assert_eq!(
        db.catalogue_insert(std::slice::from_ref(&original))
            .await
            .expect("insert"),
        1
    );

    let mut rewritten = original.clone();
    rewritten.sha256 = "sha-rewritten".into();
    rewritten.scope_id = "user-b".into();
    let newer_version = entry("chats", "user-b", "chat-1/msg-1", "e2", "sha-e2");
    let inserted = db
        .catalogue_insert(&[rewritten, newer_version.clone(), newer_version.clone()])
        .await
        .expect("insert with conflicts");
    assert_eq!(inserted, 1, "only the new etag is a new row");
    assert_eq!(db.catalogue_insert(&[]).await.expect("empty insert"), 0);
    assert_eq!(
        db.catalogue_list("chats").await.expect("list"),
        vec![original, newer_version]
    );
}

/// Bulk inserts reach PostgreSQL as JSON: text must come back byte for byte, NULL as NULL.
async fn inserted_rows_keep_every_value_exactly(db: StateDb) {
    let mut odd = entry(
        "chats",
        "user \"a\"\\b",
        "chat-1/msg-\u{1F600}-\u{e9}\t\n\r\u{7f}\u{1}",
        "W/\"etag\\1\"",
        "sha-'quoted'",
    );
    odd.size_bytes = i64::MAX;
    odd.created_at = None;
    let plain = entry("chats", "user-b", "chat-1/msg-2", "e1", "sha-2");
    assert_eq!(
        db.catalogue_insert(&[odd.clone(), plain.clone()])
            .await
            .expect("insert"),
        2
    );
    let listed = db.catalogue_list("chats").await.expect("list");
    assert_eq!(listed, vec![plain, odd]);
}

async fn lookup_batches_beyond_bind_limits(db: StateDb) {
    let stored: Vec<CatalogueEntry> = (0..1500)
        .map(|i| {
            entry(
                "copilot",
                "user-a",
                &format!("user-a/{i}"),
                "1",
                &format!("sha-{i}"),
            )
        })
        .collect();
    assert_eq!(db.catalogue_insert(&stored).await.expect("insert"), 1500);

    let mut keys: Vec<(String, String)> = stored
        .iter()
        .map(|e| (e.record_key.clone(), e.etag.clone()))
        .collect();
    // Unknown records, and known records with an unknown etag, are not found.
    keys.extend((1500..2500).map(|i| (format!("user-a/{i}"), "1".to_owned())));
    keys.extend((0..100).map(|i| (format!("user-a/{i}"), "2".to_owned())));
    let found = db.catalogue_lookup("copilot", &keys).await.expect("lookup");
    assert_eq!(found.len(), 1500);
    assert_eq!(
        found
            .get(&("user-a/1234".to_owned(), "1".to_owned()))
            .map(String::as_str),
        Some("sha-1234")
    );
    assert!(!found.contains_key(&("user-a/7".to_owned(), "2".to_owned())));
}

async fn watermark_never_moves_backwards(db: StateDb) {
    let mut first = next_commit(&db, "copilot", "user-a").await;
    first.advance_to = Some(at(200));
    first.new_records = 5;
    db.commit_window(&first).await.expect("first window");

    let mut older = next_commit(&db, "copilot", "user-a").await;
    older.advance_to = Some(at(100));
    older.lookback_done_at = Some(at(250));
    older.new_records = 2;
    db.commit_window(&older).await.expect("look-back window");

    let mut none = next_commit(&db, "copilot", "user-a").await;
    none.new_records = 1;
    db.commit_window(&none)
        .await
        .expect("window without watermark");

    let cp = db
        .checkpoint("copilot", "user-a")
        .await
        .expect("checkpoint")
        .expect("checkpoint exists");
    assert_eq!(cp.watermark, Some(at(200)));
    assert_eq!(cp.last_lookback_at, Some(at(250)));
    assert_eq!(cp.last_success_at, Some(none.now));
    assert_eq!(cp.records_archived, 8);
    assert_eq!(cp.windows_completed, 3);

    let mut later = next_commit(&db, "copilot", "user-a").await;
    later.advance_to = Some(at(300));
    db.commit_window(&later).await.expect("later window");
    let cp = db
        .checkpoint("copilot", "user-a")
        .await
        .expect("checkpoint");
    assert_eq!(cp.and_then(|c| c.watermark), Some(at(300)));
}

async fn manifest_seq_must_be_last_plus_one(db: StateDb) {
    let mut skipped = next_commit(&db, "chats", "user-a").await;
    skipped.manifest = manifest("chats", "user-a", 2, None);
    skipped.advance_to = Some(at(100));
    let err = db.commit_window(&skipped).await.expect_err("seq 2 first");
    assert!(
        matches!(
            err,
            StateError::ManifestOutOfSequence {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(db
        .checkpoint("chats", "user-a")
        .await
        .expect("checkpoint")
        .is_none());
    assert!(db
        .last_manifest("chats", "user-a")
        .await
        .expect("manifest")
        .is_none());

    let first = next_commit(&db, "chats", "user-a").await;
    db.commit_window(&first).await.expect("seq 1");
    let replay = db.commit_window(&first).await.expect_err("seq 1 again");
    assert!(
        matches!(
            replay,
            StateError::ManifestOutOfSequence { expected: 2, .. }
        ),
        "{replay}"
    );

    let mut unchained = next_commit(&db, "chats", "user-a").await;
    unchained.manifest.prev_sha256 = Some("not-the-last-hash".into());
    unchained.advance_to = Some(at(900));
    let err = db
        .commit_window(&unchained)
        .await
        .expect_err("broken chain");
    assert!(
        matches!(err, StateError::ManifestChainBroken { seq: 2, .. }),
        "{err}"
    );

    let cp = db
        .checkpoint("chats", "user-a")
        .await
        .expect("checkpoint")
        .expect("exists");
    assert_eq!(cp.windows_completed, 1, "failed commits changed nothing");
    assert_eq!(cp.watermark, None);
    let manifests = db.manifests("chats", "user-a").await.expect("manifests");
    assert_eq!(manifests, vec![first.manifest.clone()]);

    // Chains are per (source, scope): another scope starts at 1.
    let other = next_commit(&db, "chats", "user-b").await;
    assert_eq!(other.manifest.seq, 1);
    db.commit_window(&other).await.expect("other scope seq 1");
}

async fn leases_exclude_other_owners_until_expiry(db: StateDb) {
    let ttl = Duration::from_secs(60);
    let key = "copilot/user-a";
    assert!(db
        .try_lease(key, "replica-1", ttl, at(0))
        .await
        .expect("lease"));
    assert!(db
        .try_lease(key, "replica-1", ttl, at(10))
        .await
        .expect("re-lease by owner"));
    assert!(!db
        .try_lease(key, "replica-2", ttl, at(20))
        .await
        .expect("refused"));
    assert!(db
        .renew_lease(key, "replica-1", ttl, at(30))
        .await
        .expect("renew"));
    // Renewed at 30 for 60 s: still held at 80, free from 90.
    assert!(!db
        .try_lease(key, "replica-2", ttl, at(80))
        .await
        .expect("refused"));
    assert!(db
        .try_lease(key, "replica-2", ttl, at(91))
        .await
        .expect("takeover"));
    assert!(!db
        .renew_lease(key, "replica-1", ttl, at(92))
        .await
        .expect("lost"));
    assert!(!db
        .try_lease(key, "replica-1", ttl, at(93))
        .await
        .expect("refused"));

    // Releasing someone else's lease does nothing; releasing our own frees it at once.
    db.release_lease(key, "replica-1")
        .await
        .expect("release other");
    assert!(!db
        .try_lease(key, "replica-1", ttl, at(94))
        .await
        .expect("still refused"));
    db.release_lease(key, "replica-2")
        .await
        .expect("release own");
    assert!(db
        .try_lease(key, "replica-1", ttl, at(95))
        .await
        .expect("free again"));

    assert!(db
        .try_lease("chats/user-a", "replica-1", ttl, at(95))
        .await
        .expect("lease"));
    assert!(db
        .try_lease("chats/user-b", "replica-2", ttl, at(95))
        .await
        .expect("lease"));
    assert_eq!(
        db.release_all_leases("replica-1")
            .await
            .expect("release all"),
        2
    );
    assert!(db
        .try_lease(key, "replica-2", ttl, at(96))
        .await
        .expect("free after release all"));
    assert!(!db
        .try_lease("chats/user-b", "replica-1", ttl, at(96))
        .await
        .expect("kept"));
}

async fn audit_log_is_append_only(db: StateDb) {
    for n in 0..3 {
        db.audit(&AuditEntry {
            actor: "operator".into(),
            action: "hold.place".into(),
            subject: format!("user-{n}"),
            detail: serde_json::json!({ "case": "C-1", "n": n }),
        })
        .await
        .expect("audit");
    }
    let before = db.audit_list(10).await.expect("list");
    assert_eq!(before.len(), 3);
    assert_eq!(before[0].subject, "user-2", "newest first");
    assert!(before[0].id > before[2].id);
    let detail: serde_json::Value = serde_json::from_str(&before[0].detail).expect("json");
    assert_eq!(detail["n"], 2);
    assert_eq!(db.audit_list(1).await.expect("limit").len(), 1);

    let update = sqlx::query("UPDATE audit_log SET actor = 'mallory'")
        .execute(db.pool())
        .await;
    assert!(update.is_err(), "UPDATE must be refused");
    let delete = sqlx::query("DELETE FROM audit_log")
        .execute(db.pool())
        .await;
    assert!(delete.is_err(), "DELETE must be refused");
    assert_eq!(db.audit_list(10).await.expect("list"), before);
}

async fn catalogue_and_manifests_are_immutable(db: StateDb) {
    let e = entry("copilot", "user-a", "user-a/1", "1", "sha");
    db.catalogue_insert(std::slice::from_ref(&e))
        .await
        .expect("insert");
    let commit = next_commit(&db, "copilot", "user-a").await;
    db.commit_window(&commit).await.expect("commit");

    let update = sqlx::query("UPDATE catalogue SET sha256 = 'forged'")
        .execute(db.pool())
        .await;
    assert!(update.is_err(), "catalogue UPDATE must be refused");
    let update = sqlx::query("UPDATE manifests SET sha256 = 'forged'")
        .execute(db.pool())
        .await;
    assert!(update.is_err(), "manifest UPDATE must be refused");
    assert_eq!(db.catalogue_list("copilot").await.expect("list"), vec![e]);
    assert_eq!(
        db.last_manifest("copilot", "user-a")
            .await
            .expect("manifest"),
        Some(commit.manifest)
    );
}

async fn scopes_go_and_come_back(db: StateDb) {
    let all = [scope("u1", "Ann"), scope("u2", "Bob"), scope("u3", "Cy")];
    let sync = db.sync_scopes("user", &all, at(0)).await.expect("sync");
    assert_eq!(
        sync,
        ScopeSync {
            added: 3,
            present: 3,
            newly_gone: vec![]
        }
    );
    // Another kind with the same id is a different scope.
    db.sync_scopes("team", &[scope("u2", "Team")], at(0))
        .await
        .expect("sync teams");

    let sync = db
        .sync_scopes("user", &[all[0].clone(), all[2].clone()], at(10))
        .await
        .expect("sync");
    assert_eq!(
        sync,
        ScopeSync {
            added: 0,
            present: 2,
            newly_gone: vec!["u2".into()]
        }
    );
    let again = db
        .sync_scopes("user", &[all[0].clone(), all[2].clone()], at(20))
        .await
        .expect("sync");
    assert!(
        again.newly_gone.is_empty(),
        "already gone is not newly gone"
    );

    let active = db.active_scopes("user").await.expect("active");
    let bob = active
        .iter()
        .find(|s| s.id == "u2")
        .expect("gone scope awaits final sweep");
    assert_eq!(bob.gone_at, Some(at(10)));
    assert_eq!(bob.final_sweep_at, None);

    db.finish_final_sweep("user", "u2", at(30))
        .await
        .expect("final sweep");
    let ids: Vec<String> = db
        .active_scopes("user")
        .await
        .expect("active")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["u1", "u3"]);
    assert_eq!(
        db.active_scopes("team").await.expect("teams").len(),
        1,
        "teams untouched"
    );

    // Bob comes back (relicensed) with a new label, and Dee is new.
    let back = [
        scope("u1", "Ann"),
        scope("u2", "Robert"),
        scope("u3", "Cy"),
        scope("u4", "Dee"),
    ];
    let sync = db.sync_scopes("user", &back, at(40)).await.expect("sync");
    assert_eq!(
        sync,
        ScopeSync {
            added: 1,
            present: 4,
            newly_gone: vec![]
        }
    );
    let rows = db.all_scopes("user").await.expect("all");
    let bob = rows.iter().find(|s| s.id == "u2").expect("bob");
    assert_eq!(bob.label.as_deref(), Some("Robert"));
    assert_eq!((bob.gone_at, bob.final_sweep_at), (None, None));
    assert_eq!((bob.first_seen, bob.last_seen), (at(0), at(40)));
    assert_eq!(db.active_scopes("user").await.expect("active").len(), 4);

    // Finishing a sweep of a present scope is ignored; gone again means a new final sweep.
    db.finish_final_sweep("user", "u2", at(45))
        .await
        .expect("ignored");
    let sync = db
        .sync_scopes("user", &back[..3], at(50))
        .await
        .expect("sync");
    assert_eq!(sync.newly_gone, vec!["u4".to_owned()]);
    let sync = db.sync_scopes("user", &[], at(60)).await.expect("sync");
    assert_eq!(
        sync.newly_gone,
        vec!["u1".to_owned(), "u2".to_owned(), "u3".to_owned()]
    );
    assert_eq!(
        db.active_scopes("user").await.expect("active").len(),
        4,
        "all await a final sweep"
    );
}

async fn status_joins_scopes_and_counts(db: StateDb) {
    db.sync_scopes("user", &[scope("u1", "Ann"), scope("u2", "Bob")], at(0))
        .await
        .expect("sync");
    db.sync_scopes("team", &[scope("t1", "Finance")], at(0))
        .await
        .expect("sync");
    db.sync_scopes("user", &[scope("u1", "Ann")], at(5))
        .await
        .expect("u2 gone");

    let mut copilot = next_commit(&db, "copilot", "u1").await;
    copilot.advance_to = Some(at(100));
    copilot.new_records = 2;
    db.catalogue_insert(&[
        entry("copilot", "u1", "u1/1", "1", "s1"),
        entry("copilot", "u1", "u1/2", "1", "s2"),
        entry("copilot", "u2", "u2/1", "1", "s3"),
    ])
    .await
    .expect("insert");
    db.commit_window(&copilot).await.expect("commit");
    db.commit_window(&next_commit(&db, "channels", "t1").await)
        .await
        .expect("commit");
    db.record_error("copilot", "u2", "403 Forbidden: no licence", at(7))
        .await
        .expect("error");
    db.record_error("transcripts", "u9", "404", at(8))
        .await
        .expect("error");

    let rows = db.status().await.expect("status");
    let keys: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.source.as_str(),
                r.scope_kind.as_str(),
                r.scope_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("channels", "team", "t1"),
            ("copilot", "user", "u1"),
            ("copilot", "user", "u2"),
            ("transcripts", "organizer", "u9"),
        ]
    );
    assert_eq!(rows[0].label.as_deref(), Some("Finance"));
    assert_eq!(rows[1].label.as_deref(), Some("Ann"));
    assert_eq!(rows[1].catalogued, 2);
    assert_eq!(rows[1].checkpoint.watermark, Some(at(100)));
    assert_eq!(rows[1].checkpoint.records_archived, 2);
    assert_eq!(rows[2].gone_at, Some(at(5)));
    assert_eq!(rows[2].catalogued, 1);
    assert_eq!(
        rows[2].checkpoint.last_error.as_deref(),
        Some("403 Forbidden: no licence")
    );
    assert_eq!(rows[3].label, None, "organizer never discovered");

    let json = serde_json::to_value(&rows[2]).expect("json");
    assert_eq!(json["gone_at"], "2023-11-14T22:13:25Z");
}

/// A pass lists teams never archived from first, then by records archived, most first, then
/// by id; the due query does the same. Users, which have no rate limit of their own, stay in
/// id order.
async fn passes_start_the_largest_teams_first(db: StateDb) {
    let teams = ["a", "b", "c", "d", "e"];
    let users = ["u1", "u2", "u3"];
    let records =
        |ids: &[&str]| -> Vec<ScopeRecord> { ids.iter().map(|id| scope(id, id)).collect() };
    db.sync_scopes("team", &records(&teams), at(0))
        .await
        .expect("sync");
    db.sync_scopes("user", &records(&users), at(0))
        .await
        .expect("sync");
    for (source, id, records) in [
        ("channels", "a", 5),
        ("channels", "b", 2),
        ("channels", "c", 9),
        ("channels", "e", 2),
        ("copilot", "u3", 50),
        ("copilot", "u2", 40),
    ] {
        let mut commit = next_commit(&db, source, id).await;
        commit.new_records = records;
        db.commit_window(&commit).await.expect("commit");
    }
    let listed = |rows: Vec<crate::state::ScopeRow>| -> Vec<String> {
        rows.into_iter().map(|s| s.id).collect()
    };
    let order = ["d", "c", "a", "b", "e"];
    assert_eq!(
        listed(db.active_scopes("team").await.expect("teams")),
        order
    );
    assert_eq!(
        listed(db.active_scopes("user").await.expect("users")),
        users
    );
    // Every scope is due in a pass this late (no schedule).
    let policy = crate::scheduler::due::Policy::new(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(120),
        1.5,
    );
    let horizon = policy.horizon(at(1_000_000).timestamp_millis());
    let due = db.due_scopes("team", "channels", horizon).await;
    assert_eq!(listed(due.expect("due").due), order);
    let due = db.due_scopes("user", "copilot", horizon).await;
    assert_eq!(listed(due.expect("due").due), users);
}

async fn record_error_keeps_progress(db: StateDb) {
    let mut commit = next_commit(&db, "recordings", "org-1").await;
    commit.advance_to = Some(at(100));
    db.commit_window(&commit).await.expect("commit");
    let long = "é".repeat(5000);
    db.record_error("recordings", "org-1", &long, at(150))
        .await
        .expect("error");
    let cp = db
        .checkpoint("recordings", "org-1")
        .await
        .expect("cp")
        .expect("exists");
    assert_eq!(cp.watermark, Some(at(100)));
    assert_eq!(cp.last_error_at, Some(at(150)));
    assert_eq!(cp.last_error.map(|e| e.chars().count()), Some(2000));

    // The next good window clears the error.
    db.commit_window(&next_commit(&db, "recordings", "org-1").await)
        .await
        .expect("commit");
    let cp = db
        .checkpoint("recordings", "org-1")
        .await
        .expect("cp")
        .expect("exists");
    assert_eq!((cp.last_error, cp.last_error_at), (None, None));

    let err = db
        .record_error("faxes", "x", "boom", at(0))
        .await
        .expect_err("unknown source");
    assert!(matches!(err, StateError::UnknownSource { .. }), "{err}");
}

async fn concurrent_catalogue_inserts(db: StateDb) {
    const TASKS: usize = 8;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 20;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            let user = format!("user-{t}");
            for b in 0..BATCHES {
                let batch: Vec<CatalogueEntry> = (0..PER_BATCH)
                    .map(|i| entry("copilot", &user, &format!("{user}/{b}-{i}"), "1", "sha"))
                    .collect();
                let keys: Vec<(String, String)> = batch
                    .iter()
                    .map(|e| (e.record_key.clone(), e.etag.clone()))
                    .collect();
                let known = db.catalogue_lookup("copilot", &keys).await?;
                assert!(known.is_empty());
                db.catalogue_insert(&batch).await?;
                // A chat message every task exports: only one insert wins.
                db.catalogue_insert(&[entry("chats", &user, &format!("chat/{b}"), "1", "sha")])
                    .await?;
                let mut commit = next_commit(&db, "copilot", &user).await;
                commit.new_records = PER_BATCH as i64;
                db.commit_window(&commit).await?;
            }
            Ok::<_, StateError>(())
        }));
    }
    for handle in handles {
        handle
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("concurrent writer failed: {e}"));
    }
    let expected = (TASKS * BATCHES * PER_BATCH) as i64;
    assert_eq!(
        db.catalogue_count(Some("copilot")).await.expect("count"),
        expected
    );
    assert_eq!(
        db.catalogue_count(Some("chats")).await.expect("count"),
        BATCHES as i64
    );
    let scopes: HashSet<String> = db
        .status()
        .await
        .expect("status")
        .into_iter()
        .map(|r| r.scope_id)
        .collect();
    assert_eq!(scopes.len(), TASKS);
}

#[tokio::test]
async fn connect_errors_hide_passwords() {
    let url = "postgres://archiver:hunter2secret@127.0.0.1:1/state";
    let err = StateDb::connect(url)
        .await
        .expect_err("nothing listens on port 1");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2secret"), "{shown}");
    assert!(shown.contains("archiver:***@127.0.0.1:1/state"), "{shown}");
    assert!(
        shown.contains("Check that PostgreSQL is running"),
        "{shown}"
    );
    assert!(err.is_unavailable());
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = StateDb::connect("mysql://root:pw@localhost/db")
        .await
        .expect_err("unsupported");
    assert!(matches!(err, StateError::UnsupportedUrl { .. }));
    assert!(!err.to_string().contains(":pw@"), "{err}");
}

#[tokio::test]
async fn sqlite_memory_and_nested_paths_work() {
    let db = StateDb::connect("sqlite::memory:").await.expect("memory");
    db.migrate().await.expect("migrate");
    db.catalogue_insert(&[entry("copilot", "u", "u/1", "1", "s")])
        .await
        .expect("insert");
    assert_eq!(db.catalogue_count(None).await.expect("count"), 1);
    assert_eq!(db.backend(), Backend::Sqlite);

    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("nested/dir/state.db");
    let db = StateDb::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("file");
    db.migrate().await.expect("migrate");
    assert!(path.exists());
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .expect("journal mode");
    assert_eq!(mode.to_lowercase(), "wal");
}

/// Writes go to the writer's own connection, whose page cache survives between transactions
/// (readers' caches are dropped by every commit), and its commits checkpoint the WAL less often.
#[tokio::test]
async fn sqlite_writes_run_on_the_writer_connection() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = testing::sqlite_in(dir.path()).await.expect("SQLite state");
    let pragma = |pool: &sqlx::AnyPool, name: &'static str| {
        let pool = pool.clone();
        async move {
            let (v,): (i64,) = sqlx::query_as(&format!("PRAGMA {name}"))
                .fetch_one(&pool)
                .await
                .expect(name);
            v
        }
    };
    let writer_cache = -i64::from(SQLITE_WRITER_CACHE_KIB);
    assert_eq!(pragma(db.write_pool(), "cache_size").await, writer_cache);
    assert_eq!(pragma(db.write_pool(), "wal_autocheckpoint").await, 8_000);
    assert_eq!(pragma(db.pool(), "wal_autocheckpoint").await, 1_000);
    let mut tx = db.begin_write("test").await.expect("begin");
    let (cache,): (i64,) = sqlx::query_as("PRAGMA cache_size")
        .fetch_one(&mut *tx.conn())
        .await
        .expect("cache_size");
    assert_eq!(
        cache, writer_cache,
        "a write transaction on a reader connection"
    );
}

#[tokio::test]
async fn missing_postgres_url_says_how_to_run() {
    // Only meaningful when the variable is unset and skipping is not requested.
    if std::env::var(testing::POSTGRES_URL_VAR).is_ok()
        || std::env::var(testing::SKIP_POSTGRES_VAR).is_ok()
    {
        return;
    }
    let err = testing::fresh_postgres_url().await.expect_err("must fail");
    assert!(
        err.to_string().contains("scripts/with-postgres.sh"),
        "{err}"
    );
}

/// Every PostgreSQL connection plans each statement afresh: a generic plan cached while the
/// catalogue was small is a sequential scan that would stay in use as the table grows.
#[tokio::test]
async fn postgres_connections_plan_every_statement_afresh() {
    let Some(db) = testing::fresh_postgres().await.expect("postgres") else {
        return;
    };
    // Several connections at once, so that this is not only the first connection of the pool.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(db.pool().acquire().await.expect("connection"));
    }
    for conn in &mut held {
        let (mode,): (String,) = sqlx::query_as("SHOW plan_cache_mode")
            .fetch_one(&mut **conn)
            .await
            .expect("show plan_cache_mode");
        assert_eq!(mode, "force_custom_plan");
    }
}
