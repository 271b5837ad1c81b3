//! The worker: takes queued items, decrypts change items and archives the aiInteraction
//! through the same `Ingestor` (dedup on user id + interaction id + etag) as polling; hands
//! lifecycle events on. An item that keeps failing is given up after `MAX_ATTEMPTS` and a
//! polling catch-up is requested for its user, so giving up never loses the record.

use super::catchup::{CatchUp, CatchUpScope};
use super::payload::{parse_item, ItemKind, Verifier};
use super::queue::{NotificationQueue, QueuedItem};
use crate::graph::Record;
use crate::ingest::{IngestError, Ingestor, WindowLog, WindowReport};
use crate::ops::metrics;
use crate::sources::copilot::CopilotSource;
use crate::sources::{Scope, ScopeKind};
use crate::state::StateError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

const MAX_ATTEMPTS: i64 = 5;
/// Prompts whose user is remembered by `requestId`, for their responses (tenant mode).
const RECENT_REQUESTS: usize = 10_000;
const BATCH: i64 = 32;
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// Idle re-check, in case a wake-up was missed (another replica's receiver queued it).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Why one item could not be processed now.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("queued item {id} is unreadable: {problem}")]
    Unreadable { id: i64, problem: String },
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A lifecycle event for the subscription manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub subscription_id: String,
    pub event: String,
}

/// What processing an item did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Archived {
        new: bool,
    },
    Lifecycle(LifecycleEvent),
    /// No user could be found for the interaction; polling will archive it.
    Unattributed,
}

pub struct Worker {
    pub queue: NotificationQueue,
    pub verifier: Arc<Verifier>,
    pub ingest: Ingestor,
    pub source: CopilotSource,
    pub owner: String,
    pub catch_up: Arc<CatchUp>,
    pub lifecycle: Option<mpsc::UnboundedSender<LifecycleEvent>>,
    /// Ask polling at once for an item without a user. Off in tenant mode, where an
    /// aiResponse whose prompt this worker has not seen is such an item and the (then
    /// unrelaxed) regular polling archives it.
    pub unattributed_catch_up: bool,
    /// The users of recent prompts, by `requestId`: a tenant-wide subscription's aiResponse
    /// names no user (its `from` is the Copilot app), but shares its prompt's `requestId`.
    pub recent: RecentRequests,
}

/// A bounded memory of `requestId` -> user id, oldest forgotten first.
#[derive(Debug, Default)]
pub struct RecentRequests {
    inner: std::sync::Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl RecentRequests {
    fn remember(&self, request: &str, user: &str) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (users, order) = &mut *g;
        if users.insert(request.to_owned(), user.to_owned()).is_none() {
            order.push_back(request.to_owned());
        }
        while order.len() > RECENT_REQUESTS {
            if let Some(old) = order.pop_front() {
                users.remove(&old);
            }
        }
    }

    fn user_of(&self, request: &str) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.get(request).cloned()
    }
}

#[derive(Deserialize)]
struct Author<'a> {
    #[serde(borrow, default)]
    from: Option<Identity<'a>>,
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<std::borrow::Cow<'a, str>>,
}
#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(borrow, default)]
    user: Option<UserId<'a>>,
}
#[derive(Deserialize)]
struct UserId<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

impl Worker {
    /// Processes the queue until cancelled.
    pub async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let worked = match self.drain_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "notification queue unavailable; retrying");
                    0
                }
            };
            if worked == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
        }
    }

    /// Claims one batch and processes it; returns how many items it held.
    pub async fn drain_once(&self) -> Result<usize, StateError> {
        let now = chrono::Utc::now();
        let items = self
            .queue
            .claim(&self.owner, BATCH, CLAIM_LEASE, now)
            .await?;
        for item in &items {
            match self.process(item).await {
                Ok(outcome) => self.finish(item, outcome).await?,
                Err(e) => self.fail(item, &e).await?,
            }
        }
        Ok(items.len())
    }

    async fn finish(&self, item: &QueuedItem, outcome: Outcome) -> Result<(), StateError> {
        match outcome {
            Outcome::Archived { new } => {
                let now = chrono::Utc::now();
                let latency_ms = now.timestamp_millis() - item.received_at;
                tracing::debug!(
                    queue.id = item.id,
                    new,
                    queue.latency_ms = latency_ms,
                    "notification archived"
                );
                metrics::notification_processed(if new { "archived" } else { "duplicate" });
                if let Err(e) = self
                    .queue
                    .touch_notification(&item.subscription_id, now)
                    .await
                {
                    tracing::debug!(error = %e, "cannot record the notification time");
                }
            }
            Outcome::Lifecycle(ev) => {
                metrics::notification_processed("lifecycle");
                self.lifecycle(ev)
            }
            Outcome::Unattributed => {
                metrics::notification_processed("unattributed");
                if self.unattributed_catch_up {
                    self.catch_up.request(
                        CatchUpScope::All,
                        "an interaction's user could not be identified from its notification",
                    )
                }
            }
        }
        self.queue.done(item.id).await
    }

    fn lifecycle(&self, ev: LifecycleEvent) {
        tracing::info!(subscription.id = %ev.subscription_id, event = %ev.event, "lifecycle notification");
        // missed and subscriptionRemoved mean notifications were lost: sweep now.
        if ev.event != "reauthorizationRequired" {
            self.catch_up
                .request(CatchUpScope::All, &format!("lifecycle event {}", ev.event));
        }
        if let Some(tx) = &self.lifecycle {
            // The manager may have stopped (shutdown); the next start recreates anyway.
            let _ = tx.send(ev);
        }
    }

    async fn fail(&self, item: &QueuedItem, e: &WorkerError) -> Result<(), StateError> {
        let dead = item.attempts + 1 >= MAX_ATTEMPTS || matches!(e, WorkerError::Unreadable { .. });
        let delay = Duration::from_secs(1 << item.attempts.clamp(0, 6));
        tracing::warn!(queue.id = item.id, attempts = item.attempts + 1, gave_up = dead, error = %e, "notification not archived");
        metrics::notification_processed(if dead { "gave_up" } else { "retry" });
        if dead {
            self.catch_up
                .request(CatchUpScope::All, "a notification could not be archived");
        }
        self.queue
            .failed(item.id, &e.to_string(), delay, dead, chrono::Utc::now())
            .await
    }

    /// Decrypts and archives one item (or reads its lifecycle event).
    pub async fn process(&self, q: &QueuedItem) -> Result<Outcome, WorkerError> {
        let unreadable = |problem: String| WorkerError::Unreadable { id: q.id, problem };
        let raw: &RawValue =
            serde_json::from_str(&q.item).map_err(|e| unreadable(e.to_string()))?;
        let item = parse_item(raw).map_err(|e| unreadable(e.to_string()))?;
        if ItemKind::parse(&q.kind) == Some(ItemKind::Lifecycle) {
            return Ok(Outcome::Lifecycle(LifecycleEvent {
                subscription_id: item.subscription_id,
                event: item.lifecycle_event.unwrap_or_default(),
            }));
        }
        let plain = self
            .verifier
            .decrypt(&item)
            .map_err(|e| unreadable(e.to_string()))?;
        let Some(user) = self.user_of(&item.subscription_id, &plain).await? else {
            return Ok(Outcome::Unattributed);
        };
        self.archive(user, plain).await
    }

    /// The subscription's user (per-user subscriptions), else the prompt's author, else (a
    /// response) the author of the prompt with the same `requestId`, if this worker saw it.
    async fn user_of(
        &self,
        subscription_id: &str,
        plain: &[u8],
    ) -> Result<Option<String>, WorkerError> {
        if let Some(s) = self.queue.subscription(subscription_id).await? {
            if s.user_id.is_some() {
                return Ok(s.user_id);
            }
        }
        let Ok(author) = serde_json::from_slice::<Author>(plain) else {
            return Ok(None);
        };
        let request = author.request_id.filter(|r| !r.trim().is_empty());
        let user = (author.from.and_then(|f| f.user))
            .and_then(|u| u.id)
            .map(|id| id.into_owned())
            .filter(|id| !id.trim().is_empty());
        Ok(match (user, request) {
            (Some(user), Some(request)) => {
                self.recent.remember(&request, &user);
                Some(user)
            }
            (Some(user), None) => Some(user),
            (None, Some(request)) => self.recent.user_of(&request),
            (None, None) => None,
        })
    }

    async fn archive(&self, user: String, plain: Vec<u8>) -> Result<Outcome, WorkerError> {
        let created = created_at(&plain);
        let scope = Scope {
            kind: ScopeKind::User,
            id: user,
            label: None,
        };
        let record = Record {
            bytes: bytes::Bytes::from(plain),
        };
        let mut report = WindowReport::default();
        // Manifests belong to polling windows; the window that later sees this record finds it
        // catalogued and lists it in its manifest.
        let mut log = WindowLog::default();
        self.ingest
            .ingest_records(&self.source, &scope, vec![record], &mut log, &mut report)
            .await?;
        if let Some(latency) = created.and_then(|c| (chrono::Utc::now() - c).to_std().ok()) {
            metrics::notification_latency("copilot", latency);
        }
        Ok(Outcome::Archived {
            new: report.new > 0,
        })
    }
}

/// `createdDateTime` of a decrypted interaction, for the latency histogram.
fn created_at(plain: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(Deserialize)]
    struct Created<'a> {
        #[serde(rename = "createdDateTime", borrow)]
        created: Option<std::borrow::Cow<'a, str>>,
    }
    let c: Created = serde_json::from_slice(plain).ok()?;
    chrono::DateTime::parse_from_rfc3339(&c.created?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::fs::FsStore;
    use crate::notifications::payload::tests::{change, verifier, STATE};
    use crate::notifications::payload::Accepted;
    use crate::notifications::queue::SubscriptionRow;
    use crate::state::testing;

    const PROMPT: &str = r#"{"id":"1731701801008","etag":"1731701801008","createdDateTime":"2024-11-15T20:16:41.008Z","interactionType":"userPrompt","from":{"user":{"id":"u-from"}}}"#;
    const RESPONSE: &str = r#"{"id":"1731701801009", "etag":"1731701801009","interactionType":"aiResponse","from":{"application":{"id":"x"}}}"#;

    struct Rig {
        worker: Worker,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let state = testing::sqlite_in(dir.path()).await.unwrap();
        let store = Arc::new(FsStore::new(dir.path().join("archive")));
        let worker = Worker {
            queue: NotificationQueue::new(state.clone()),
            verifier: Arc::new(verifier()),
            ingest: Ingestor::new(store, state, 2),
            source: CopilotSource::new(100),
            owner: "test".into(),
            catch_up: Arc::new(CatchUp::default()),
            lifecycle: None,
            unattributed_catch_up: true,
            recent: RecentRequests::default(),
        };
        Rig { worker, _dir: dir }
    }

    fn queued(plain: &str) -> Accepted {
        Accepted {
            kind: ItemKind::Change,
            subscription_id: "sub-1".into(),
            raw: change(STATE, plain).to_string(),
        }
    }

    async fn catalogued(w: &Worker) -> i64 {
        w.queue
            .state()
            .catalogue_count(Some("copilot"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_change_is_archived_once_under_the_subscriptions_user() {
        let r = rig().await;
        let w = &r.worker;
        w.queue
            .put_subscription(&SubscriptionRow {
                id: "sub-1".into(),
                resource: "/copilot/users/u-sub/interactionHistory/getAllEnterpriseInteractions"
                    .into(),
                user_id: Some("u-sub".into()),
                expires_at: 0,
                created_at: 0,
                renewed_at: None,
                status: "active".into(),
                last_event: None,
                last_event_at: None,
                last_notification_at: None,
            })
            .await
            .unwrap();
        let now = chrono::Utc::now();
        w.queue
            .enqueue(&[queued(PROMPT), queued(PROMPT)], now)
            .await
            .unwrap();
        assert_eq!(w.drain_once().await.unwrap(), 2);
        assert_eq!(
            catalogued(w).await,
            1,
            "the repeated notification is deduplicated"
        );
        let rows = w.queue.state().catalogue_list("copilot").await.unwrap();
        assert!(
            rows[0].record_key.contains("u-sub"),
            "{:?}",
            rows[0].record_key
        );
        let stored = w
            .ingest
            .store()
            .get(&rows[0].storage_key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&stored[..], PROMPT.as_bytes(), "exact decrypted bytes");
        assert_eq!(w.queue.pending().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn tenant_wide_items_use_the_author_or_ask_polling() {
        let r = rig().await;
        let w = &r.worker;
        let now = chrono::Utc::now();
        w.queue
            .enqueue(&[queued(PROMPT), queued(RESPONSE)], now)
            .await
            .unwrap();
        w.drain_once().await.unwrap();
        let rows = w.queue.state().catalogue_list("copilot").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].record_key.contains("u-from"));
        assert_eq!(w.catch_up.take().map(|c| c.0), Some(CatchUpScope::All));
    }

    /// A tenant-wide subscription's response names no user; the prompt with the same
    /// `requestId` does, so the response is filed under that user (as polling would).
    #[tokio::test]
    async fn a_response_is_filed_under_the_user_of_its_prompt() {
        const ASKED: &str = r#"{"id":"1731701802000","etag":"1731701802000","requestId":"req-7","interactionType":"userPrompt","from":{"user":{"id":"u-asker"}}}"#;
        const ANSWER: &str = r#"{"id":"1731701802001","etag":"1731701802001","requestId":"req-7","interactionType":"aiResponse","from":{"user":null,"application":{"id":"x"}}}"#;
        const STRAY: &str = r#"{"id":"1731701802002","etag":"1731701802002","requestId":"req-8","interactionType":"aiResponse","from":{"application":{"id":"x"}}}"#;
        let r = rig().await;
        let w = &r.worker;
        let now = chrono::Utc::now();
        let items = [queued(ASKED), queued(ANSWER), queued(STRAY)];
        w.queue.enqueue(&items, now).await.unwrap();
        w.drain_once().await.unwrap();
        let rows = w.queue.state().catalogue_list("copilot").await.unwrap();
        assert_eq!(
            rows.len(),
            2,
            "prompt and its response; the stray is left to polling"
        );
        assert!(
            rows.iter().all(|r| r.record_key.contains("u-asker")),
            "{rows:?}"
        );
        assert!(
            w.catch_up.take().is_some(),
            "the response without a known prompt asks polling"
        );
    }

    #[test]
    fn recent_requests_forget_the_oldest_first() {
        let recent = RecentRequests::default();
        for i in 0..=RECENT_REQUESTS {
            recent.remember(&format!("r{i}"), "u");
        }
        assert_eq!(recent.user_of("r0"), None);
        assert_eq!(recent.user_of("r1").as_deref(), Some("u"));
        assert_eq!(
            recent.user_of(&format!("r{RECENT_REQUESTS}")).as_deref(),
            Some("u")
        );
    }

    #[tokio::test]
    async fn an_undecryptable_item_is_given_up_with_a_catch_up() {
        let r = rig().await;
        let w = &r.worker;
        let mut item = change(STATE, PROMPT);
        item["encryptedContent"]["encryptionCertificateId"] = "retired".into();
        let bad = Accepted {
            kind: ItemKind::Change,
            subscription_id: "sub-1".into(),
            raw: item.to_string(),
        };
        w.queue.enqueue(&[bad], chrono::Utc::now()).await.unwrap();
        w.drain_once().await.unwrap();
        assert_eq!(catalogued(w).await, 0);
        assert_eq!(
            w.queue.pending().await.unwrap(),
            0,
            "dead, not retried forever"
        );
        assert!(w.catch_up.take().is_some());
    }

    #[tokio::test]
    async fn lifecycle_events_reach_the_manager_and_request_catch_up() {
        let mut r = rig().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        r.worker.lifecycle = Some(tx);
        let w = &r.worker;
        let life = Accepted {
            kind: ItemKind::Lifecycle,
            subscription_id: "sub-1".into(),
            raw: serde_json::json!({"subscriptionId":"sub-1","lifecycleEvent":"subscriptionRemoved","clientState":STATE}).to_string(),
        };
        w.queue.enqueue(&[life], chrono::Utc::now()).await.unwrap();
        w.drain_once().await.unwrap();
        assert_eq!(rx.recv().await.unwrap().event, "subscriptionRemoved");
        assert!(w.catch_up.take().is_some());
    }
}
