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
