//! The durable notification queue and the subscription rows, in the state database
//! (migration 0005). Several processes may work one queue: an item is claimed for a while
//! (`claimed_until`); a claim that is not finished in time (a crashed worker) is taken again.
//! Instants are epoch milliseconds, as everywhere in the state database.

use crate::state::{StateDb, StateError};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

use super::payload::{Accepted, ItemKind};

/// One queued item, claimed by this worker.
#[derive(Clone, Debug)]
pub struct QueuedItem {
    pub id: i64,
    pub kind: String,
    pub subscription_id: String,
    pub item: String,
    pub received_at: i64,
    pub attempts: i64,
}

/// A subscription as the state database keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionRow {
    pub id: String,
    pub resource: String,
    pub user_id: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
    pub renewed_at: Option<i64>,
    pub status: String,
    pub last_event: Option<String>,
    pub last_event_at: Option<i64>,
    pub last_notification_at: Option<i64>,
}

/// The queue and subscription tables over a state database handle.
#[derive(Clone, Debug)]
pub struct NotificationQueue {
    state: StateDb,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl NotificationQueue {
    pub fn new(state: StateDb) -> Self {
        NotificationQueue { state }
    }

    pub fn state(&self) -> &StateDb {
        &self.state
    }

    /// Stores accepted items in one transaction: all of a post or none.
    pub async fn enqueue(&self, items: &[Accepted], now: DateTime<Utc>) -> Result<(), StateError> {
        let mut tx = self.state.begin_write("notification_enqueue").await?;
        for a in items {
            sqlx::query(
                "INSERT INTO notification_queue (kind, subscription_id, item, received_at, \
                 not_before) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(a.kind.as_str())
            .bind(&a.subscription_id)
            .bind(&a.raw)
            .bind(ms(now))
            .execute(tx.conn())
            .await
            .map_err(StateError::op("notification_enqueue"))?;
        }
        tx.commit("notification_enqueue").await
    }

    /// Claims up to `limit` ready items for `lease`. The outer condition is re-checked under
    /// the row lock on PostgreSQL, so two workers never claim one item.
    pub async fn claim(
        &self,
        owner: &str,
        limit: i64,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<QueuedItem>, StateError> {
        let (now_ms, until) = (ms(now), ms(now) + dur_ms(lease));
        {
            let _slot = self.state.writer_slot().await;
            sqlx::query(
                "UPDATE notification_queue SET claimed_by = $1, claimed_until = $2 \
                 WHERE dead = 0 AND not_before <= $3 \
                   AND (claimed_until IS NULL OR claimed_until < $3) \
                   AND id IN (SELECT id FROM notification_queue WHERE dead = 0 \
                     AND not_before <= $3 AND (claimed_until IS NULL OR claimed_until < $3) \
                     ORDER BY id LIMIT $4)",
            )
            .bind(owner)
            .bind(until)
            .bind(now_ms)
            .bind(limit)
            .execute(self.state.write_pool())
            .await
            .map_err(StateError::op("notification_claim"))?;
        }
        let rows = sqlx::query(
            "SELECT id, kind, subscription_id, item, received_at, attempts FROM notification_queue \
             WHERE claimed_by = $1 AND claimed_until = $2 AND dead = 0 ORDER BY id",
        )
        .bind(owner)
        .bind(until)
        .fetch_all(self.state.pool())
        .await
        .map_err(StateError::op("notification_claim"))?;
        rows.iter().map(queued_item).collect()
    }

    /// The item is archived (or was a lifecycle event now handled): it leaves the queue.
    pub async fn done(&self, id: i64) -> Result<(), StateError> {
        let _slot = self.state.writer_slot().await;
        sqlx::query("DELETE FROM notification_queue WHERE id = $1")
            .bind(id)
            .execute(self.state.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("notification_done"))
    }

    /// Processing failed: retry after `delay`, or give up (`dead`) so polling catches up.
    pub async fn failed(
        &self,
        id: i64,
        error: &str,
        delay: Duration,
        dead: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let _slot = self.state.writer_slot().await;
        sqlx::query(
            "UPDATE notification_queue SET attempts = attempts + 1, not_before = $2, \
             claimed_by = NULL, claimed_until = NULL, last_error = $3, dead = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(ms(now) + dur_ms(delay))
        .bind(error)
        .bind(i64::from(dead))
        .execute(self.state.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op("notification_failed"))
    }

    /// Items waiting (not dead), for metrics and tests.
    pub async fn pending(&self) -> Result<i64, StateError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM notification_queue WHERE dead = 0")
            .fetch_one(self.state.pool())
            .await
            .map_err(StateError::op("notification_pending"))?;
        row.try_get::<i64, _>("n")
            .map_err(StateError::op("notification_pending"))
    }

    /// Inserts or replaces a subscription row.
    pub async fn put_subscription(&self, s: &SubscriptionRow) -> Result<(), StateError> {
        let _slot = self.state.writer_slot().await;
        sqlx::query(
            "INSERT INTO subscriptions (id, resource, user_id, expires_at, created_at, renewed_at, \
             status, last_event, last_event_at, last_notification_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET resource = excluded.resource, \
             user_id = excluded.user_id, expires_at = excluded.expires_at, \
             renewed_at = excluded.renewed_at, status = excluded.status, \
             last_event = excluded.last_event, last_event_at = excluded.last_event_at, \
             last_notification_at = excluded.last_notification_at",
        )
        .bind(&s.id)
        .bind(&s.resource)
        .bind(&s.user_id)
        .bind(s.expires_at)
        .bind(s.created_at)
        .bind(s.renewed_at)
        .bind(&s.status)
        .bind(&s.last_event)
        .bind(s.last_event_at)
        .bind(s.last_notification_at)
        .execute(self.state.write_pool())
        .await
        .map(|_| ())
        .map_err(StateError::op("subscription_put"))
    }

    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StateError> {
        let rows = sqlx::query(
            "SELECT id, resource, user_id, expires_at, created_at, renewed_at, status, \
             last_event, last_event_at, last_notification_at FROM subscriptions ORDER BY id",
        )
        .fetch_all(self.state.pool())
        .await
        .map_err(StateError::op("subscriptions"))?;
        rows.iter().map(subscription_row).collect()
    }

    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>, StateError> {
        let rows = sqlx::query(
            "SELECT id, resource, user_id, expires_at, created_at, renewed_at, status, \
             last_event, last_event_at, last_notification_at FROM subscriptions WHERE id = $1",
        )
        .bind(id)
        .fetch_all(self.state.pool())
        .await
        .map_err(StateError::op("subscription"))?;
        rows.first().map(subscription_row).transpose()
    }

    /// The subscription is gone (deleted, replaced, or never created).
    pub async fn delete_subscription(&self, id: &str) -> Result<(), StateError> {
        let _slot = self.state.writer_slot().await;
        sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(self.state.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("subscription_delete"))
    }

    /// A notification of this subscription was archived at `at`.
    pub async fn touch_notification(&self, id: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        let _slot = self.state.writer_slot().await;
        sqlx::query("UPDATE subscriptions SET last_notification_at = $2 WHERE id = $1")
            .bind(id)
            .bind(ms(at))
            .execute(self.state.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("subscription_touch"))
    }

    /// Records a lifecycle event, and the status it implies if any (the manager that holds
    /// the subscriptions lease acts on the status, whichever process received the event).
    pub async fn record_event(
        &self,
        id: &str,
        event: &str,
        status: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let _slot = self.state.writer_slot().await;
        let done = sqlx::query(
            "UPDATE subscriptions SET last_event = $2, last_event_at = $3, \
             status = COALESCE($4, status) WHERE id = $1",
        )
        .bind(id)
        .bind(event)
        .bind(ms(at))
        .bind(status)
        .execute(self.state.write_pool())
        .await
        .map_err(StateError::op("subscription_event"))?;
        Ok(done.rows_affected() > 0)
    }

    /// When the oldest item still waiting was received (epoch ms), if any: a queue that does
    /// not drain means notifications are not being archived.
    pub async fn oldest_pending(&self) -> Result<Option<i64>, StateError> {
        let row =
            sqlx::query("SELECT MIN(received_at) AS oldest FROM notification_queue WHERE dead = 0")
                .fetch_one(self.state.pool())
                .await
                .map_err(StateError::op("notification_oldest"))?;
        row.try_get::<Option<i64>, _>("oldest")
            .map_err(StateError::op("notification_oldest"))
    }
}

fn queued_item(r: &sqlx::any::AnyRow) -> Result<QueuedItem, StateError> {
    let op = StateError::op("notification_claim");
    Ok(QueuedItem {
        id: r.try_get("id").map_err(&op)?,
        kind: r.try_get("kind").map_err(&op)?,
        subscription_id: r.try_get("subscription_id").map_err(&op)?,
        item: r.try_get("item").map_err(&op)?,
        received_at: r.try_get("received_at").map_err(&op)?,
        attempts: r.try_get("attempts").map_err(&op)?,
    })
}

fn subscription_row(r: &sqlx::any::AnyRow) -> Result<SubscriptionRow, StateError> {
    let op = StateError::op("subscriptions");
    Ok(SubscriptionRow {
        id: r.try_get("id").map_err(&op)?,
        resource: r.try_get("resource").map_err(&op)?,
        user_id: r.try_get("user_id").map_err(&op)?,
        expires_at: r.try_get("expires_at").map_err(&op)?,
        created_at: r.try_get("created_at").map_err(&op)?,
        renewed_at: r.try_get("renewed_at").map_err(&op)?,
        status: r.try_get("status").map_err(&op)?,
        last_event: r.try_get("last_event").map_err(&op)?,
        last_event_at: r.try_get("last_event_at").map_err(&op)?,
        last_notification_at: r.try_get("last_notification_at").map_err(&op)?,
    })
}

impl ItemKind {
    pub fn parse(s: &str) -> Option<ItemKind> {
        match s {
            "change" => Some(ItemKind::Change),
            "lifecycle" => Some(ItemKind::Lifecycle),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing;

    fn accepted(sub: &str) -> Accepted {
        Accepted {
            kind: ItemKind::Change,
            subscription_id: sub.into(),
            raw: format!("{{\"subscriptionId\":\"{sub}\"}}"),
        }
    }

    #[tokio::test]
    async fn claimed_items_are_not_claimed_twice_until_the_claim_lapses() {
        let dir = tempfile::tempdir().unwrap();
        claims_once(NotificationQueue::new(
            testing::sqlite_in(dir.path()).await.unwrap(),
        ))
        .await;
    }

    #[tokio::test]
    async fn claims_are_exclusive_on_postgres_too() {
        // None when M365_SKIP_POSTGRES is set or no server is configured.
        if let Some(db) = testing::fresh_postgres().await.unwrap() {
            claims_once(NotificationQueue::new(db)).await;
        }
    }

    async fn claims_once(q: NotificationQueue) {
        let now = Utc::now();
        q.enqueue(&[accepted("a"), accepted("b")], now)
            .await
            .unwrap();
        let lease = Duration::from_secs(30);
        let first = q.claim("w1", 10, lease, now).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(q.claim("w2", 10, lease, now).await.unwrap().is_empty());
        let later = now + chrono::Duration::seconds(31);
        assert_eq!(q.claim("w2", 10, lease, later).await.unwrap().len(), 2);
        q.done(first[0].id).await.unwrap();
        assert_eq!(q.pending().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn subscription_rows_record_events_and_notifications() {
        let dir = tempfile::tempdir().unwrap();
        subscription_rows(NotificationQueue::new(
            testing::sqlite_in(dir.path()).await.unwrap(),
        ))
        .await;
    }

    #[tokio::test]
    async fn subscription_rows_on_postgres_too() {
        if let Some(db) = testing::fresh_postgres().await.unwrap() {
            subscription_rows(NotificationQueue::new(db)).await;
        }
    }

    async fn subscription_rows(q: NotificationQueue) {
        let now = Utc::now();
        assert_eq!(q.oldest_pending().await.unwrap(), None);
        let row = SubscriptionRow {
            id: "s1".into(),
            resource: "/copilot/users/u/interactionHistory/getAllEnterpriseInteractions".into(),
            user_id: Some("u".into()),
            expires_at: 5,
            created_at: 1,
            renewed_at: None,
            status: "active".into(),
            last_event: None,
            last_event_at: None,
            last_notification_at: None,
        };
        q.put_subscription(&row).await.unwrap();
        assert!(q.record_event("s1", "missed", None, now).await.unwrap());
        let got = q.subscription("s1").await.unwrap().unwrap();
        assert_eq!(
            (got.status.as_str(), got.last_event.as_deref()),
            ("active", Some("missed"))
        );
        q.record_event("s1", "subscriptionRemoved", Some("removed"), now)
            .await
            .unwrap();
        q.touch_notification("s1", now).await.unwrap();
        let got = q.subscription("s1").await.unwrap().unwrap();
        assert_eq!(got.status, "removed");
        assert_eq!(got.last_notification_at, Some(now.timestamp_millis()));
        assert!(!q.record_event("nope", "missed", None, now).await.unwrap());
        q.enqueue(&[accepted("s1")], now).await.unwrap();
        assert_eq!(
            q.oldest_pending().await.unwrap(),
            Some(now.timestamp_millis())
        );
        q.delete_subscription("s1").await.unwrap();
        assert!(q.subscription("s1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_failed_item_waits_and_a_dead_one_is_never_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let q = NotificationQueue::new(testing::sqlite_in(dir.path()).await.unwrap());
        let now = Utc::now();
        q.enqueue(&[accepted("a")], now).await.unwrap();
        let lease = Duration::from_secs(30);
        let got = q.claim("w", 10, lease, now).await.unwrap();
        q.failed(got[0].id, "boom", Duration::from_secs(5), false, now)
            .await
            .unwrap();
        assert!(q.claim("w", 10, lease, now).await.unwrap().is_empty());
        let retry = q
            .claim("w", 10, lease, now + chrono::Duration::seconds(6))
            .await
            .unwrap();
        assert_eq!(retry[0].attempts, 1);
        q.failed(retry[0].id, "boom", Duration::ZERO, true, now)
            .await
            .unwrap();
        let much_later = now + chrono::Duration::hours(1);
        assert!(q
            .claim("w", 10, lease, much_later)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(q.pending().await.unwrap(), 0);
    }
}
