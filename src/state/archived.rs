//! The state an archived batch leaves behind, written in one transaction: each new object's
//! retention and custodians, the holds set on it, and its catalogue row. One commit per page
//! instead of two or more (each a full sync on SQLite), and a catalogued version can never
//! be without its retention or holds, even after a crash between statements.

use chrono::{DateTime, Utc};

use super::catalogue::{insert_chunk, INSERT_CHUNK};
use super::holds::insert_record_holds;
use super::retention::{insert_custodians, insert_retention};
use super::{CatalogueEntry, RetentionRow, StateDb, StateError};

/// Which objects one hold was set on.
pub type HeldKeys = (i64, Vec<String>);

impl StateDb {
    /// Records a stored batch. Rows already present are kept as they are (a retried batch);
    /// returns how many catalogue rows were new.
    pub async fn archived_insert(
        &self,
        retention: &[RetentionRow],
        holds: &[HeldKeys],
        catalogue: &[CatalogueEntry],
        now: DateTime<Utc>,
    ) -> Result<u64, StateError> {
        const OP: &str = "archived_insert";
        if retention.is_empty() && catalogue.is_empty() {
            return Ok(0);
        }
        // Rows in key order: transactions that insert overlapping rows (a chat message
        // exported for each of its members at once) then take their locks in the same order
        // and wait for each other instead of deadlocking (PostgreSQL).
        let mut retention = retention.to_vec();
        retention.sort_by(|a, b| a.storage_key.cmp(&b.storage_key));
        let mut catalogue = catalogue.to_vec();
        catalogue.sort_by(|a, b| {
            (&a.source, &a.record_key, &a.etag).cmp(&(&b.source, &b.record_key, &b.etag))
        });
        let mut holds = holds.to_vec();
        holds.sort_by_key(|(hold, _)| *hold);
        holds.iter_mut().for_each(|(_, keys)| keys.sort());
        let mut tx = self.begin_write(OP).await?;
        let now_ms = super::types::to_ms(now);
        for chunk in retention.chunks(INSERT_CHUNK) {
            insert_retention(tx.conn(), chunk, now_ms).await?;
            insert_custodians(tx.conn(), chunk).await?;
        }
        for (hold, keys) in &holds {
            insert_record_holds(tx.conn(), *hold, keys, now).await?;
        }
        let mut inserted = 0;
        for chunk in catalogue.chunks(INSERT_CHUNK) {
            inserted += insert_chunk(tx.conn(), chunk).await?;
        }
        tx.commit(OP).await?;
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HoldKind, StateDb};
    use super::*;
    use crate::both_backends;

    both_backends!(
        a_batch_records_retention_holds_and_catalogue_together,
        overlapping_batches_in_any_order_never_deadlock,
    );

    fn entry(key: &str, now: DateTime<Utc>) -> (RetentionRow, CatalogueEntry) {
        let retention = RetentionRow {
            storage_key: key.into(),
            source: "chats".into(),
            scope_id: "u1".into(),
            sha256: "ab".into(),
            rule: "default".into(),
            retain_until: None,
            mode: "Locked".into(),
            created_at: Some(now),
            custodians: vec![("user".into(), "u1".into())],
        };
        let catalogue = CatalogueEntry {
            source: "chats".into(),
            record_key: key.into(),
            etag: "1".into(),
            sha256: "ab".into(),
            storage_key: key.into(),
            size_bytes: 2,
            scope_id: "u1".into(),
            created_at: Some(now),
            archived_at: now,
        };
        (retention, catalogue)
    }

    async fn a_batch_records_retention_holds_and_catalogue_together(db: StateDb) {
        let now = Utc::now();
        let hold = db
            .hold_insert(HoldKind::User, "u1", "matter", "op", now)
            .await
            .expect("hold");
        let (r1, c1) = entry("records/chats/a", now);
        let (r2, c2) = entry("records/chats/b", now);
        let holds = vec![(hold.id, vec![r1.storage_key.clone()])];
        let new = db
            .archived_insert(&[r1, r2.clone()], &holds, &[c1, c2.clone()], now)
            .await
            .expect("batch");
        assert_eq!(new, 2);
        for key in ["records/chats/a", "records/chats/b"] {
            let kept = db.retention_of(key).await.expect("read");
            assert_eq!(kept.map(|r| r.rule), Some("default".into()), "{key}");
        }
        let lookup = vec![("records/chats/a".to_string(), "1".to_string())];
        assert_eq!(
            db.catalogue_lookup("chats", &lookup)
                .await
                .expect("lookup")
                .len(),
            1
        );
        let held = db.record_holds_open(hold.id, "", 10).await.expect("holds");
        assert_eq!(held, vec!["records/chats/a".to_string()]);
        // A retried batch changes nothing and reports nothing new.
        let again = db
            .archived_insert(&[r2], &[], &[c2], now)
            .await
            .expect("retry");
        assert_eq!(again, 0);
        assert_eq!(db.catalogue_count(Some("chats")).await.expect("count"), 2);
    }

    /// Rounds of eight writers storing the same 100 versions at the same instant, each in
    /// another order (the members of one chat exporting it together): all succeed and each
    /// version is catalogued once. Without the ordering, PostgreSQL reports deadlocks here.
    async fn overlapping_batches_in_any_order_never_deadlock(db: StateDb) {
        const ROUNDS: usize = 10;
        const WRITERS: usize = 8;
        let now = Utc::now();
        for round in 0..ROUNDS {
            let keys: Vec<String> = (0..100)
                .map(|i| format!("records/chats/r{round}/m{i:03}"))
                .collect();
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
            let writers = (0..WRITERS).map(|w| {
                let (db, start) = (db.clone(), start.clone());
                let mut order = keys.clone();
                order.rotate_left(w * 13 % keys.len());
                if w % 2 == 1 {
                    order.reverse();
                }
                tokio::spawn(async move {
                    let (retention, catalogue): (Vec<_>, Vec<_>) =
                        order.iter().map(|k| entry(k, now)).unzip();
                    start.wait().await;
                    db.archived_insert(&retention, &[], &catalogue, now).await
                })
            });
            for writer in futures::future::join_all(writers).await {
                writer.expect("writer task").expect("no deadlock, no error");
            }
        }
        let want = (ROUNDS * 100) as i64;
        assert_eq!(
            db.catalogue_count(Some("chats")).await.expect("count"),
            want
        );
    }
}
