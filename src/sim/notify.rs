//! Change-notification delivery (seed 001): each aiInteraction created in the simulator is
//! posted, encrypted, to every active subscription that matches it, the way Graph does.
//!
//! `interactions_created` renders the new records (the export's exact bytes) and hands them
//! to a dispatcher task over a channel, so the control request never waits on a webhook.
//! The dispatcher drains what is pending, applies the drop policy, encrypts per subscription
//! and spawns one delivery per subscription and batch. A delivery retries 5xx, timeouts and
//! connection errors with exponential backoff for a bounded time (Graph: up to 4 h) and gives
//! up at once on any other status. Lifecycle events go the same way to the lifecycle URL.
//!
//! Tasks hold only a `Weak` to the simulator between steps, and a cancellation token fires
//! when the simulator state is dropped, so a stopped simulator leaves nothing running.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OnceCell};
use tokio_util::sync::CancellationToken;

use super::data::{Interaction, User};
use super::notify_crypto::{EncryptedContent, SigningKey};
use super::render::{self, RecordCtx};
use super::subscriptions::{Scope, Subscription};
use super::{lock, SimError, SimState};

/// Delivery log entries kept (oldest dropped first).
const LOG_CAPACITY: usize = 100_000;

/// Change-notification settings (`[notifications]` in `config/sim.toml`).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSimConfig {
    /// RSA private key (PKCS#8 or PKCS#1 PEM) that signs validation tokens; default: a key
    /// generated on first use (its public half at `GET /_sim/notifications/signing-key`).
    pub signing_key_pem: Option<String>,
    /// How long the validation handshake waits for each URL (Graph: 10 s).
    pub handshake_timeout_ms: u64,
    /// How long one notification post waits for the endpoint's answer.
    pub delivery_timeout_ms: u64,
    /// First retry delay; doubled on each further attempt, up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How long a failing delivery is retried before it is given up (Graph: up to 4 h).
    pub retry_for_secs: u64,
    /// Most notifications in one post.
    pub max_batch: usize,
}

impl Default for NotificationSimConfig {
    fn default() -> Self {
        NotificationSimConfig {
            signing_key_pem: None,
            handshake_timeout_ms: 10_000,
            delivery_timeout_ms: 3_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            retry_for_secs: 4 * 3_600,
            max_batch: 100,
        }
    }
}

/// The signing key is a secret: never printed.
impl std::fmt::Debug for NotificationSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationSimConfig")
            .field(
                "signing_key_pem",
                &self.signing_key_pem.as_ref().map(|_| "<set>"),
            )
            .field("handshake_timeout_ms", &self.handshake_timeout_ms)
            .field("delivery_timeout_ms", &self.delivery_timeout_ms)
            .field("retry_initial_ms", &self.retry_initial_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("retry_for_secs", &self.retry_for_secs)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl NotificationSimConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("delivery_timeout_ms", self.delivery_timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
        ] {
            if v == 0 {
                return Err(format!("notifications.{name} must be >= 1"));
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err("notifications.retry_max_ms must be >= retry_initial_ms".to_owned());
        }
        if !(1..=1_000).contains(&self.max_batch) {
            return Err("notifications.max_batch must be between 1 and 1000".to_owned());
        }
        if let Some(pem) = &self.signing_key_pem {
            SigningKey::from_pem(pem)?;
        }
        Ok(())
    }
}

/// Notification counters, part of `/_sim/stats` (items, except `posts` and `retried`).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct NotificationCounters {
    /// Post attempts made (first tries and retries).
    pub posts: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// Post attempts that were retries.
    pub retried: u64,
    pub failed: u64,
    pub lifecycle_delivered: u64,
    pub lifecycle_failed: u64,
    pub handshakes: u64,
    pub handshakes_failed: u64,
}

/// Per-subscription counters (control listing).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SubCounters {
    pub delivered: u64,
    pub dropped: u64,
    pub retried: u64,
    pub failed: u64,
    pub lifecycle: u64,
    pub last_status: Option<u16>,
    pub last_delivery: Option<String>,
}

/// One line of `GET /_sim/notifications/log`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LogEntry {
    pub subscription_id: String,
    pub interaction_id: String,
    pub user_id: String,
    /// When the interaction was created in the simulator (wall clock).
    pub created_at: String,
    /// When the endpoint accepted the post carrying it.
    pub delivered_at: Option<String>,
    /// `delivered`, `dropped` or `failed`.
    pub outcome: &'static str,
    pub attempts: u32,
}

/// `PUT /_sim/notifications/drop`: lose notifications on purpose.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DropSettings {
    /// Drop this many next notifications.
    pub next: u64,
    /// Then drop each with this probability.
    pub probability: f64,
    /// Seed of the probability draws (default: the simulator's seed).
    pub seed: Option<u64>,
}

struct DropPolicy {
    next: u64,
    probability: f64,
    rng: ChaCha8Rng,
}

impl DropPolicy {
    fn should_drop(&mut self) -> bool {
        if self.next > 0 {
            self.next -= 1;
            return true;
        }
        self.probability > 0.0 && self.rng.gen_bool(self.probability)
    }
}

/// A new aiInteraction, rendered.
#[derive(Clone, Debug)]
pub(crate) struct NewRecord {
    pub id: String,
    pub bytes: String,
    /// Its top-level string properties, which a subscription's `$filter` may test.
    pub fields: BTreeMap<String, String>,
}

/// Interactions of one user created at one instant.
#[derive(Debug)]
struct Created {
    user_id: String,
    created_at: DateTime<Utc>,
    records: Vec<NewRecord>,
}

/// Everything notification-related the simulator holds.
pub(crate) struct Notifications {
    pub cfg: NotificationSimConfig,
    pub subs: Mutex<BTreeMap<String, Subscription>>,
    pub http: reqwest::Client,
    /// The only application the simulator knows: the subscriptions' `applicationId`.
    pub application_id: String,
    /// The service principal of the publisher and of the app in this tenant (deterministic).
    pub publisher_oid: String,
    pub creator_id: String,
    signing: OnceCell<Arc<SigningKey>>,
    tx: mpsc::UnboundedSender<Created>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Created>>>,
    drop_policy: Mutex<DropPolicy>,
    log: Mutex<VecDeque<LogEntry>>,
    seed: u64,
    cancel: CancellationToken,
}

impl Drop for Notifications {
    fn drop(&mut self) {
        // Ends deliveries waiting to retry: the simulator is gone.
        self.cancel.cancel();
    }
}

impl Notifications {
    pub(crate) fn new(
        cfg: &NotificationSimConfig,
        seed: u64,
        application_id: &str,
    ) -> Result<Notifications, SimError> {
        let signing = match &cfg.signing_key_pem {
            Some(pem) => OnceCell::new_with(Some(Arc::new(
                SigningKey::from_pem(pem).map_err(SimError::Config)?,
            ))),
            None => OnceCell::new(),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SimError::Config(format!("notification HTTP client: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        use super::data::{mix, uuid_from};
        Ok(Notifications {
            cfg: cfg.clone(),
            application_id: application_id.to_owned(),
            subs: Mutex::new(BTreeMap::new()),
            http,
            publisher_oid: uuid_from(mix(seed, 0x0bf3_0f3b)),
            creator_id: uuid_from(mix(seed, 0x05e2_71ce)),
            signing,
            tx,
            rx: Mutex::new(Some(rx)),
            drop_policy: Mutex::new(DropPolicy {
                next: 0,
                probability: 0.0,
                rng: ChaCha8Rng::seed_from_u64(seed),
            }),
            log: Mutex::new(VecDeque::new()),
            seed,
            cancel: CancellationToken::new(),
        })
    }

    /// The validation-token key, generated on first use unless configured.
    pub(crate) async fn signing_key(&self) -> Result<Arc<SigningKey>, String> {
        self.signing
            .get_or_try_init(|| async {
                let key = tokio::task::spawn_blocking(SigningKey::generate)
                    .await
                    .map_err(|e| format!("signing key task: {e}"))??;
                tracing::info!("sim generated its notification signing key");
                Ok(Arc::new(key))
            })
            .await
            .cloned()
    }

    /// Removes expired subscriptions (they stop delivering at once).
    pub(crate) fn purge_expired(&self, now: DateTime<Utc>) {
        lock(&self.subs).retain(|id, s| {
            let keep = s.expires > now;
            if !keep {
                tracing::info!(subscription.id = %id, "sim subscription expired and was removed");
            }
            keep
        });
    }

    pub(crate) fn set_drop(&self, s: &DropSettings) {
        *lock(&self.drop_policy) = DropPolicy {
            next: s.next,
            probability: s.probability,
            rng: ChaCha8Rng::seed_from_u64(s.seed.unwrap_or(self.seed)),
        };
    }

    pub(crate) fn drop_settings(&self) -> DropSettings {
        let p = lock(&self.drop_policy);
        DropSettings {
            next: p.next,
            probability: p.probability,
            seed: None,
        }
    }

    pub(crate) fn log_entries(&self) -> Vec<LogEntry> {
        lock(&self.log).iter().cloned().collect()
    }

    fn log(&self, entry: LogEntry) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }
}

/// Starts the dispatcher the first time a subscription exists.
pub(crate) fn ensure_dispatcher(st: &Arc<SimState>) {
    if let Some(rx) = lock(&st.notifications.rx).take() {
        let cancel = st.notifications.cancel.clone();
        tokio::spawn(dispatch(Arc::downgrade(st), rx, cancel));
    }
}

/// Called by whatever adds interactions live (the caller may hold the tenant lock: this
/// takes no tenant lock). Renders the records and queues them for delivery.
pub(crate) fn interactions_created(st: &SimState, user: &User, new: &[Interaction]) {
    if lock(&st.notifications.subs).is_empty() {
        return;
    }
    let ctx = RecordCtx {
        seed: st.seed,
        tenant_id: &st.tenant_id,
        user,
    };
    let records = new
        .iter()
        .map(|it| {
            let bytes = render::interaction(&ctx, it);
            NewRecord {
                id: it.created_ms.to_string(),
                fields: top_level_strings(&bytes),
                bytes,
            }
        })
        .collect();
    let created = Created {
        user_id: user.id.clone(),
        created_at: Utc::now(),
        records,
    };
    // The receiver lives as long as the state; a send error means it is shutting down.
    let _ = st.notifications.tx.send(created);
}

fn top_level_strings(bytes: &str) -> BTreeMap<String, String> {
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(bytes).unwrap_or_default();
    parsed
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect()
}

/// `2025-02-02T10:30:34.9097561Z`: Graph's seven fractional digits.
pub(crate) fn graph_time(t: DateTime<Utc>, offset: bool) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let frac = t.timestamp_subsec_nanos() / 100;
    let zone = if offset { "+00:00" } else { "Z" };
    format!("{base}.{frac:07}{zone}")
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `resourceData` of a notification item.
#[derive(Clone, Debug, Serialize)]
struct ResourceData {
    id: String,
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    #[serde(rename = "@odata.id")]
    odata_id: String,
}

/// One change notification, in the seed's field order.
#[derive(Clone, Debug, Serialize)]
struct ChangeItem {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(rename = "changeType")]
    change_type: &'static str,
    #[serde(rename = "clientState", skip_serializing_if = "Option::is_none")]
    client_state: Option<String>,
    #[serde(rename = "subscriptionExpirationDateTime")]
    subscription_expiration: String,
    resource: String,
    #[serde(rename = "resourceData")]
    resource_data: ResourceData,
    #[serde(rename = "encryptedContent", skip_serializing_if = "Option::is_none")]
    encrypted_content: Option<EncryptedContent>,
    #[serde(rename = "tenantId")]
    tenant_id: String,
}

/// One lifecycle notification.
#[derive(Clone, Debug, Serialize)]
struct LifecycleItem {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(rename = "subscriptionExpirationDateTime")]
    subscription_expiration: String,
    #[serde(rename = "tenantId")]
    tenant_id: String,
    #[serde(rename = "clientState", skip_serializing_if = "Option::is_none")]
    client_state: Option<String>,
    #[serde(rename = "lifecycleEvent")]
    lifecycle_event: &'static str,
}

/// Which interaction an item carries, for the log.
#[derive(Clone, Debug)]
struct Carried {
    interaction_id: String,
    user_id: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug)]
enum JobKind {
    Change {
        carried: Vec<Carried>,
        /// Audience of the validation token, when the items carry resource data.
        token_audience: Option<String>,
    },
    Lifecycle,
}

/// One post to make, retried until it succeeds or is given up.
#[derive(Debug)]
struct Job {
    subscription_id: String,
    url: String,
    items: Vec<serde_json::Value>,
    kind: JobKind,
}

async fn dispatch(
    weak: Weak<SimState>,
    mut rx: mpsc::UnboundedReceiver<Created>,
    cancel: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let Some(st) = weak.upgrade() else { return };
        let jobs = plan(&st, batch);
        drop(st);
        for job in jobs {
            tokio::spawn(deliver(weak.clone(), job, cancel.clone()));
        }
    }
}

/// Matches the new records with the active subscriptions and builds the posts.
fn plan(st: &SimState, batch: Vec<Created>) -> Vec<Job> {
    let n = &st.notifications;
    n.purge_expired(Utc::now());
    let subs: Vec<Subscription> = lock(&n.subs).values().cloned().collect();
    let mut jobs = Vec::new();
    for sub in subs.iter().filter(|s| s.wants_created()) {
        let mut items = Vec::new();
        let mut carried = Vec::new();
        for created in &batch {
            for rec in created
                .records
                .iter()
                .filter(|r| sub.matches(&created.user_id, r))
            {
                let c = Carried {
                    interaction_id: rec.id.clone(),
                    user_id: created.user_id.clone(),
                    created_at: created.created_at,
                };
                if lock(&n.drop_policy).should_drop() {
                    record_dropped(st, &sub.id, c);
                    continue;
                }
                match change_item(st, sub, rec) {
                    Ok(item) => {
                        items.push(item);
                        carried.push(c);
                    }
                    Err(e) => {
                        tracing::warn!(subscription.id = %sub.id, error = %e, "sim could not build a notification");
                        finish_change(st, &sub.id, &[c], None, 0);
                    }
                }
            }
        }
        let audience = sub.include_resource_data.then(|| sub.token_audience());
        let mut carried = carried.into_iter();
        for chunk in items.chunks(n.cfg.max_batch.max(1)) {
            jobs.push(Job {
                subscription_id: sub.id.clone(),
                url: sub.notification_url.clone(),
                items: chunk.to_vec(),
                kind: JobKind::Change {
                    carried: carried.by_ref().take(chunk.len()).collect(),
                    token_audience: audience.clone(),
                },
            });
        }
    }
    jobs
}

fn change_item(
    st: &SimState,
    sub: &Subscription,
    rec: &NewRecord,
) -> Result<serde_json::Value, String> {
    let resource = format!("copilot/interactionHistory/interactions('{}')", rec.id);
    let encrypted_content = match (&sub.certificate, sub.include_resource_data) {
        (Some(cert), true) => Some(cert.encrypt(rec.bytes.as_bytes())?),
        _ => None,
    };
    let item = ChangeItem {
        subscription_id: sub.id.clone(),
        change_type: "created",
        client_state: sub.client_state.clone(),
        subscription_expiration: graph_time(sub.expires, true),
        resource: resource.clone(),
        resource_data: ResourceData {
            id: rec.id.clone(),
            odata_type: "#Microsoft.Graph.aiInteraction",
            odata_id: resource,
        },
        encrypted_content,
        tenant_id: st.tenant_id.clone(),
    };
    serde_json::to_value(item).map_err(|e| e.to_string())
}

fn record_dropped(st: &SimState, sub_id: &str, c: Carried) {
    lock(&st.stats).notifications.dropped += 1;
    if let Some(s) = lock(&st.notifications.subs).get_mut(sub_id) {
        s.counters.dropped += 1;
    }
    tracing::debug!(subscription.id = %sub_id, interaction.id = %c.interaction_id, "sim dropped a notification on purpose");
    st.notifications.log(LogEntry {
        subscription_id: sub_id.to_owned(),
        interaction_id: c.interaction_id,
        user_id: c.user_id,
        created_at: stamp(c.created_at),
        delivered_at: None,
        outcome: "dropped",
        attempts: 0,
    });
}

/// Logs and counts the items of a finished change post (`delivered`: when accepted).
fn finish_change(
    st: &SimState,
    sub_id: &str,
    carried: &[Carried],
    delivered: Option<DateTime<Utc>>,
    attempts: u32,
) {
    let n = carried.len() as u64;
    {
        let mut stats = lock(&st.stats);
        match delivered {
            Some(_) => stats.notifications.delivered += n,
            None => stats.notifications.failed += n,
        }
    }
    if let Some(s) = lock(&st.notifications.subs).get_mut(sub_id) {
        match delivered {
            Some(at) => {
                s.counters.delivered += n;
                s.counters.last_delivery = Some(stamp(at));
            }
            None => s.counters.failed += n,
        }
    }
    for c in carried {
        st.notifications.log(LogEntry {
            subscription_id: sub_id.to_owned(),
            interaction_id: c.interaction_id.clone(),
            user_id: c.user_id.clone(),
            created_at: stamp(c.created_at),
            delivered_at: delivered.map(stamp),
            outcome: if delivered.is_some() {
                "delivered"
            } else {
                "failed"
            },
            attempts,
        });
    }
}

/// How one post attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Accepted(u16),
    /// 5xx, timeout or connection error: retry.
    Transient(Option<u16>),
    /// Any other status: Graph does not retry.
    Refused(u16),
}

/// Posts one job until it is accepted, refused, or out of retry time.
async fn deliver(weak: Weak<SimState>, job: Job, cancel: CancellationToken) {
    let started = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        let Some((http, body, cfg)) = prepare(&weak, &job).await else {
            return;
        };
        attempts += 1;
        let result = post(&http, &job.url, body, cfg.delivery_timeout_ms).await;
        let Some(st) = weak.upgrade() else { return };
        note_attempt(&st, &job.subscription_id, &result, attempts);
        let out_of_time = started.elapsed() >= Duration::from_secs(cfg.retry_for_secs);
        match result {
            Attempt::Accepted(_) => return finished(&st, &job, true, attempts),
            Attempt::Refused(_) => return finished(&st, &job, false, attempts),
            Attempt::Transient(_) if out_of_time => return finished(&st, &job, false, attempts),
            Attempt::Transient(_) => {}
        }
        drop(st);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff(&cfg, attempts)) => {}
        }
    }
}

/// The body of the next attempt (fresh validation tokens); `None` when the simulator is
/// gone or a change's subscription no longer exists.
async fn prepare(
    weak: &Weak<SimState>,
    job: &Job,
) -> Option<(reqwest::Client, Vec<u8>, NotificationSimConfig)> {
    let st = weak.upgrade()?;
    let n = &st.notifications;
    let mut tokens = Vec::new();
    if let JobKind::Change {
        token_audience,
        carried,
    } = &job.kind
    {
        if !lock(&n.subs).contains_key(&job.subscription_id) {
            // Deleted or expired meanwhile: Graph stops delivering for it.
            finish_change(&st, &job.subscription_id, carried, None, 0);
            return None;
        }
        if let Some(aud) = token_audience {
            let token = match n.signing_key().await {
                Ok(key) => key.validation_token(&st.tenant_id, aud, &n.publisher_oid),
                Err(e) => Err(e),
            };
            match token {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    tracing::warn!(error = %e, "sim cannot sign a validation token");
                    finish_change(&st, &job.subscription_id, carried, None, 0);
                    return None;
                }
            }
        }
    }
    let body = if tokens.is_empty() {
        serde_json::json!({ "value": job.items })
    } else {
        serde_json::json!({ "value": job.items, "validationTokens": tokens })
    };
    let bytes = serde_json::to_vec(&body).ok()?;
    Some((n.http.clone(), bytes, n.cfg.clone()))
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>, timeout_ms: u64) -> Attempt {
    let resp = http
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .timeout(Duration::from_millis(timeout_ms))
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            match status {
                200..=299 => Attempt::Accepted(status),
                500..=599 => Attempt::Transient(Some(status)),
                _ => Attempt::Refused(status),
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "sim notification post failed");
            Attempt::Transient(None)
        }
    }
}

fn note_attempt(st: &SimState, sub_id: &str, result: &Attempt, attempts: u32) {
    let status = match result {
        Attempt::Accepted(s) | Attempt::Refused(s) | Attempt::Transient(Some(s)) => Some(*s),
        Attempt::Transient(None) => None,
    };
    {
        let mut stats = lock(&st.stats);
        stats.notifications.posts += 1;
        if attempts > 1 {
            stats.notifications.retried += 1;
        }
    }
    if let Some(s) = lock(&st.notifications.subs).get_mut(sub_id) {
        s.counters.last_status = status;
        if attempts > 1 {
            s.counters.retried += 1;
        }
    }
    tracing::debug!(subscription.id = %sub_id, ?result, attempts, "sim notification post");
}

fn finished(st: &SimState, job: &Job, accepted: bool, attempts: u32) {
    match &job.kind {
        JobKind::Change { carried, .. } => {
            let at = accepted.then(Utc::now);
            finish_change(st, &job.subscription_id, carried, at, attempts);
        }
        JobKind::Lifecycle => {
            let mut stats = lock(&st.stats);
            if accepted {
                stats.notifications.lifecycle_delivered += 1;
            } else {
                stats.notifications.lifecycle_failed += 1;
            }
        }
    }
    if !accepted {
        tracing::warn!(subscription.id = %job.subscription_id, url = %job.url, attempts, "sim gave up a notification post");
    }
}

/// Exponential backoff with a little jitter.
fn backoff(cfg: &NotificationSimConfig, attempts: u32) -> Duration {
    let exp = cfg
        .retry_initial_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
    let base = exp.min(cfg.retry_max_ms);
    let jitter = rand::thread_rng().gen_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

/// Lifecycle events the control API can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum LifecycleEvent {
    SubscriptionRemoved,
    ReauthorizationRequired,
    Missed,
}

impl LifecycleEvent {
    fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::Missed => "missed",
        }
    }
}

/// Why a lifecycle event could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    #[error("subscription {0} does not exist")]
    Unknown(String),
    #[error("subscription {0} has no lifecycleNotificationUrl")]
    NoUrl(String),
}

/// Sends `event` to the subscription's lifecycle URL; `subscriptionRemoved` also removes the
/// subscription (at once: no change notification follows it).
pub(crate) fn send_lifecycle(
    st: &Arc<SimState>,
    sub_id: &str,
    event: LifecycleEvent,
) -> Result<(), LifecycleError> {
    let job = {
        let mut subs = lock(&st.notifications.subs);
        let sub = subs
            .get_mut(sub_id)
            .ok_or_else(|| LifecycleError::Unknown(sub_id.to_owned()))?;
        let url = sub
            .lifecycle_url
            .clone()
            .ok_or_else(|| LifecycleError::NoUrl(sub_id.to_owned()))?;
        sub.counters.lifecycle += 1;
        if event == LifecycleEvent::ReauthorizationRequired {
            sub.reauthorization_required = true;
        }
        let item = LifecycleItem {
            subscription_id: sub.id.clone(),
            subscription_expiration: graph_time(sub.expires, true),
            tenant_id: st.tenant_id.clone(),
            client_state: sub.client_state.clone(),
            lifecycle_event: event.as_str(),
        };
        if event == LifecycleEvent::SubscriptionRemoved {
            subs.remove(sub_id);
        }
        Job {
            subscription_id: sub_id.to_owned(),
            url,
            items: vec![serde_json::to_value(item).unwrap_or_default()],
            kind: JobKind::Lifecycle,
        }
    };
    tracing::info!(subscription.id = %sub_id, event = event.as_str(), "sim sends a lifecycle notification");
    let cancel = st.notifications.cancel.clone();
    tokio::spawn(deliver(Arc::downgrade(st), job, cancel));
    Ok(())
}

/// Which subscriptions a new record goes to.
impl Subscription {
    pub(crate) fn wants_created(&self) -> bool {
        self.change_types.iter().any(|c| c == "created")
    }

    pub(crate) fn matches(&self, user_id: &str, rec: &NewRecord) -> bool {
        let scoped = match &self.scope {
            Scope::Tenant => true,
            Scope::User(id) => id.eq_ignore_ascii_case(user_id),
        };
        scoped && self.filter.as_ref().is_none_or(|f| f.matches(rec))
    }
}
