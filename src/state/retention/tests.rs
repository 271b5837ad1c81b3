//! Migration 0002 on both databases: rows only move forward (triggers), holds cover by
//! custodian, disposal candidates exclude held and unexpired objects.

use super::super::*;
use chrono::{DateTime, TimeZone, Utc};

use crate::both_backends;

both_backends!(
    retention_rows_only_extend,
    holds_release_once_and_are_kept,
    candidates_exclude_held_unexpired_and_disposed,
    dispositions_complete_once,
    a_user_hold_covers_the_chats_its_user_takes_part_in,
    participants_are_only_ever_added,
);

fn at(days: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("instant")
        + chrono::Duration::days(days)
}

fn row(key: &str, user: &str, until: Option<i64>) -> RetentionRow {
    RetentionRow {
        storage_key: key.into(),
        source: "copilot".into(),
        scope_id: user.into(),
        sha256: "ab".into(),
        rule: "default".into(),
        retain_until: until.map(at),
        mode: "Locked".into(),
        created_at: Some(at(0)),
        custodians: vec![
            ("user".into(), user.into()),
            ("upn".into(), format!("{user}@Contoso.com")),
        ],
        participants: Vec::new(),
    }
}

/// A chat message version in `chat`, stored from `exporter`'s export: as ingest writes it, with
/// the chat as its custodian and the exporter as a participant of the chat.
fn chat_row(key: &str, chat: &str, exporter: &str, until: i64) -> RetentionRow {
    RetentionRow {
        source: "chats".into(),
        custodians: vec![("chat".into(), chat.to_ascii_lowercase())],
        participants: vec![
            ChatParticipant::new(chat, "user", exporter),
            ChatParticipant::new(chat, "upn", &format!("{exporter}@contoso.com")),
        ],
        ..row(key, exporter, Some(until))
    }
}

async fn exec(db: &StateDb, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(db.pool()).await.map(|_| ())
}

async fn retention_rows_only_extend(db: StateDb) {
    db.retention_insert(&[row("k1", "u1", Some(10))])
        .await
        .expect("insert");
    // A second insert of the same key keeps the first decision.
    db.retention_insert(&[row("k1", "u1", Some(1))])
        .await
        .expect("insert again");
    assert_eq!(
        db.retention_of("k1")
            .await
            .expect("read")
            .and_then(|r| r.retain_until),
        Some(at(10))
    );
    let later = crate::state::types::to_ms(at(20));
    exec(
        &db,
        &format!("UPDATE record_retention SET retain_until = {later} WHERE storage_key = 'k1'"),
    )
    .await
    .expect("extending is allowed");
    for bad in [
        "UPDATE record_retention SET retain_until = 0 WHERE storage_key = 'k1'",
        "UPDATE record_retention SET mode = 'Unlocked' WHERE storage_key = 'k1'",
        "DELETE FROM record_retention",
    ] {
        assert!(exec(&db, bad).await.is_err(), "must be refused: {bad}");
    }
    // Forever (NULL) is the longest retention: it may be set, never left.
    exec(
        &db,
        "UPDATE record_retention SET retain_until = NULL WHERE storage_key = 'k1'",
    )
    .await
    .expect("extending to forever is allowed");
    let finite =
        format!("UPDATE record_retention SET retain_until = {later} WHERE storage_key = 'k1'");
    assert!(
        exec(&db, &finite).await.is_err(),
        "forever must not become finite"
    );
}

async fn holds_release_once_and_are_kept(db: StateDb) {
    let h = db
        .hold_insert(HoldKind::User, "U1", "matter 1", "op", at(0))
        .await
        .expect("hold");
    assert_eq!(h.target, "u1", "targets are compared lowercased");
    assert_eq!(db.holds(false).await.expect("list").len(), 1);
    let released = db
        .hold_release(h.id, "op", "closed", at(1))
        .await
        .expect("release");
    assert_eq!(released.and_then(|r| r.released_at), Some(at(1)));
    assert!(db
        .hold_release(h.id, "op", "again", at(2))
        .await
        .expect("release")
        .is_none());
    assert!(db.holds(false).await.expect("list").is_empty());
    assert_eq!(db.holds(true).await.expect("list").len(), 1);
    for bad in [
        "UPDATE legal_holds SET reason = 'rewritten'",
        "UPDATE legal_holds SET released_at = NULL",
        "DELETE FROM legal_holds",
    ] {
        assert!(exec(&db, bad).await.is_err(), "must be refused: {bad}");
    }
    let actions: Vec<String> = db
        .audit_list(10)
        .await
        .expect("audit")
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, vec!["legal_hold_released", "legal_hold_added"]);
}

async fn candidates_exclude_held_unexpired_and_disposed(db: StateDb) {
    db.retention_insert(&[
        row("a", "u1", Some(5)),
        row("b", "u2", Some(5)),
        row("c", "u3", Some(50)),
        row("d", "u3", None),
        row("e", "u3", Some(5)),
    ])
    .await
    .expect("rows");
    let now = at(10);
    let keys = |c: Vec<DisposalCandidate>| c.into_iter().map(|c| c.storage_key).collect::<Vec<_>>();
    assert_eq!(
        keys(db.disposal_candidates(now, "", 100).await.expect("q")),
        vec!["a", "b", "e"]
    );
    // A user hold by UPN covers u2's records; a released hold covers nothing.
    let h = db
        .hold_insert(HoldKind::User, "u2@contoso.com", "m", "op", now)
        .await
        .expect("hold");
    let old = db
        .hold_insert(HoldKind::User, "u1", "m", "op", now)
        .await
        .expect("hold");
    db.record_holds_insert(old.id, &["a".to_string()], now)
        .await
        .expect("applied");
    db.hold_release(old.id, "op", "done", now)
        .await
        .expect("release");
    assert_eq!(
        keys(db.disposal_candidates(now, "", 100).await.expect("q")),
        vec!["e"],
        "a: hold row still open"
    );
    db.record_hold_release(old.id, "a", now)
        .await
        .expect("let go");
    assert_eq!(
        keys(db.disposal_candidates(now, "", 100).await.expect("q")),
        vec!["a", "e"]
    );
    assert!(db.is_held("b").await.expect("held"));
    assert!(!db.is_held("a").await.expect("held"));
    assert_eq!(
        db.hold_pending_keys(&h, "", 10).await.expect("pending"),
        vec!["b"]
    );
    // Paging by key.
    assert_eq!(
        keys(db.disposal_candidates(now, "a", 100).await.expect("q")),
        vec!["e"]
    );
    // A completed disposition is no longer a candidate.
    let e = db
        .disposal_candidates(now, "d", 1)
        .await
        .expect("q")
        .remove(0);
    db.disposition_start(&e, "op", now).await.expect("start");
    assert_eq!(
        keys(db.disposal_candidates(now, "", 100).await.expect("q")),
        vec!["a", "e"],
        "intent only"
    );
    let audit = AuditEntry {
        actor: "op".into(),
        action: "record_disposed".into(),
        subject: "e".into(),
        detail: serde_json::json!({}),
    };
    db.disposition_complete("e", &audit, now)
        .await
        .expect("complete");
    assert_eq!(
        keys(db.disposal_candidates(now, "", 100).await.expect("q")),
        vec!["a"]
    );
    assert_eq!(db.disposed_keys().await.expect("disposed"), vec!["e"]);
}

async fn dispositions_complete_once(db: StateDb) {
    db.retention_insert(&[row("k", "u", Some(1))])
        .await
        .expect("row");
    let c = db
        .disposal_candidates(at(5), "", 1)
        .await
        .expect("q")
        .remove(0);
    db.disposition_start(&c, "op", at(5)).await.expect("start");
    let audit = AuditEntry {
        actor: "op".into(),
        action: "record_disposed".into(),
        subject: "k".into(),
        detail: serde_json::json!({}),
    };
    db.disposition_complete("k", &audit, at(5))
        .await
        .expect("complete");
    for bad in [
        "UPDATE dispositions SET completed_at = NULL",
        "UPDATE dispositions SET rule = 'x'",
        "DELETE FROM dispositions",
        "DELETE FROM record_custodians WHERE 1 = 0",
    ] {
        let r = exec(&db, bad).await;
        if bad.contains("record_custodians") {
            assert!(r.is_ok());
        } else {
            assert!(r.is_err(), "must be refused: {bad}");
        }
    }
}

/// A message stored from A's export is covered by a hold on B as soon as B is known to take
/// part in its chat (B's own window saw the chat), by id or by UPN; not before, and not a
/// chat B is not in. Disposal, `is_held`, `held_by_other`, the hold's pending keys and its
/// count all agree.
async fn a_user_hold_covers_the_chats_its_user_takes_part_in(db: StateDb) {
    db.retention_insert(&[
        chat_row("m1", "19:C@thread.v2", "a", 5),
        chat_row("m2", "19:D@thread.v2", "a", 5),
    ])
    .await
    .expect("rows");
    let now = at(10);
    let keys = |c: Vec<DisposalCandidate>| c.into_iter().map(|c| c.storage_key).collect::<Vec<_>>();
    let by_id = db
        .hold_insert(HoldKind::User, "B", "m", "op", now)
        .await
        .expect("hold");
    let by_upn = db
        .hold_insert(HoldKind::User, "b@contoso.com", "m", "op", now)
        .await
        .expect("hold");
    assert_eq!(
        keys(db.disposal_candidates(now, "", 10).await.expect("q")),
        vec!["m1", "m2"],
        "b is not known in either chat yet"
    );
    assert!(db
        .hold_pending_keys(&by_id, "", 10)
        .await
        .expect("q")
        .is_empty());

    // B's window over chat C commits, recording B (id and UPN) as a participant.
    let mut commit = crate::state::tests::next_commit(&db, "chats", "b").await;
    commit.participants = vec![
        ChatParticipant::new("19:c@thread.v2", "user", "b"),
        ChatParticipant::new("19:C@thread.v2", "upn", "B@contoso.com"),
    ];
    db.commit_window_ending(&commit, None)
        .await
        .expect("commit");

    assert_eq!(
        keys(db.disposal_candidates(now, "", 10).await.expect("q")),
        vec!["m2"]
    );
    assert!(db.is_held("m1").await.expect("held"));
    assert!(!db.is_held("m2").await.expect("held"));
    for hold in [&by_id, &by_upn] {
        assert_eq!(
            db.hold_pending_keys(hold, "", 10).await.expect("q"),
            vec!["m1"]
        );
        assert_eq!(
            db.hold_pending_keys(hold, "m1", 10).await.expect("q"),
            Vec::<String>::new()
        );
        assert_eq!(db.hold_scope_count(hold).await.expect("count"), 1);
    }
    assert!(
        db.held_by_other("m1", by_id.id).await.expect("q"),
        "by_upn still covers it"
    );
    assert_eq!(
        db.chats_taken_part_in(
            &["b".into(), "x".into()],
            &["19:C@thread.v2".into(), "19:d@thread.v2".into()]
        )
        .await
        .expect("q"),
        vec![("b".to_string(), "19:c@thread.v2".to_string())]
    );

    // A's own hold covers both chats; a released hold covers nothing.
    let on_a = db
        .hold_insert(HoldKind::User, "a", "m", "op", now)
        .await
        .expect("hold");
    assert_eq!(db.hold_scope_count(&on_a).await.expect("count"), 2);
    for hold in [&by_id, &by_upn, &on_a] {
        db.hold_release(hold.id, "op", "closed", now)
            .await
            .expect("release");
    }
    assert_eq!(
        keys(db.disposal_candidates(now, "", 10).await.expect("q")),
        vec!["m1", "m2"]
    );
}

async fn participants_are_only_ever_added(db: StateDb) {
    let mut commit = crate::state::tests::next_commit(&db, "chats", "b").await;
    commit.participants = vec![ChatParticipant::new("19:c", "user", "b")];
    db.commit_window_ending(&commit, None)
        .await
        .expect("commit");
    // Known again: kept, not an error.
    db.retention_insert(&[chat_row("m1", "19:c", "b", 5)])
        .await
        .expect("row");
    for bad in [
        "DELETE FROM chat_participants",
        "UPDATE chat_participants SET id = 'x'",
    ] {
        assert!(exec(&db, bad).await.is_err(), "must be refused: {bad}");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chat_participants")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(n, 2, "b by id, and b's UPN from the row");
}

/// Archives written before migration 0010 recorded the exporting user and the sender on each
/// chat record; migrating makes them participants of its chat, so their holds keep covering
/// what they covered, and more.
async fn migration_0010_turns_record_users_into_chat_participants(db: StateDb) {
    db.migrate_before(10).await.expect("migrations up to 0009");
    let old_rows = "INSERT INTO record_custodians (storage_key, kind, id) VALUES \
         ('m1', 'user', 'a'), ('m1', 'upn', 'a@contoso.com'), ('m1', 'user', 'b'), \
         ('m1', 'chat', '19:c'), ('m2', 'user', 'a'), ('m2', 'chat', '19:d'), ('i1', 'user', 'a')";
    exec(&db, old_rows).await.expect("an old archive's rows");
    db.migrate().await.expect("migration 0010");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT chat_id, kind, id FROM chat_participants ORDER BY chat_id, kind, id",
    )
    .fetch_all(db.pool())
    .await
    .expect("participants");
    let want = [
        ("19:c", "upn", "a@contoso.com"),
        ("19:c", "user", "a"),
        ("19:c", "user", "b"),
        ("19:d", "user", "a"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(c, k, i)| (c.to_string(), k.to_string(), i.to_string()))
        .collect();
    assert_eq!(rows, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0010_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let db = StateDb::connect(&url).await.expect("connect");
    migration_0010_turns_record_users_into_chat_participants(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_0010_postgres() {
    let Some(url) = crate::state::testing::fresh_postgres_url()
        .await
        .expect("PostgreSQL")
    else {
        return;
    };
    let db = StateDb::connect(&url).await.expect("connect");
    migration_0010_turns_record_users_into_chat_participants(db).await;
}
