//! The subscription manager: keeps one Graph subscription per discovered user (`users` mode)
//! or one for the tenant (`tenant` mode), renewed well before expiry, and answers lifecycle
//! events. Only the process holding the lease `notifications/subscriptions` acts on Graph, so
//! several replicas sharing a state database never create the same subscription twice.
//!
//! State lives in the `subscriptions` table, so a lifecycle event received by any replica is
//! recorded there (status `removed` or `reauthorize`) and acted on by the holder. A create
//! whose answer was lost may have happened: the manager lists `GET /subscriptions` and adopts
//! it rather than creating a duplicate. Every hour, and when it takes the lease, it reconciles
//! fully: adopt ours, create the missing, delete strays of ours. Anything that may have lost
//! notifications asks for a polling catch-up of the users concerned.

use super::catchup::{CatchUp, CatchUpScope};
use super::queue::{NotificationQueue, SubscriptionRow};
use super::settings::{NotificationsConfig, SubscriptionMode};
use super::worker::LifecycleEvent;
use crate::graph::{Endpoint, GraphClient, GraphError, Idempotence};
use crate::state::StateError;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use url::Url;

pub const LEASE_KEY: &str = "notifications/subscriptions";
/// A full reconcile against `GET /subscriptions` this often (and when taking the lease).
const RECONCILE_EVERY: Duration = Duration::from_secs(3600);
const BACKOFF_BASE: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Deletions never remove what is archived, and a deleted item carries no data to archive.
const CHANGE_TYPES: &str = "created,updated";
/// Rows for subscriptions that could not be created carry this id prefix (no Graph id).
pub const PLACEHOLDER: &str = "failed:";

/// Values of `subscriptions.status`.
pub mod status {
    pub const ACTIVE: &str = "active";
    pub const REMOVED: &str = "removed";
    pub const FAILED: &str = "failed";
    pub const REAUTHORIZE: &str = "reauthorize";
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("Graph answered {path} with an unreadable subscription: {problem}")]
    Malformed { path: String, problem: String },
}

/// A subscription the configuration asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub resource: String,
    pub user_id: Option<String>,
}

impl Desired {
    fn scope(&self) -> CatchUpScope {
        match &self.user_id {
            Some(u) => CatchUpScope::Users(BTreeSet::from([u.clone()])),
            None => CatchUpScope::All,
        }
    }

    fn placeholder_id(&self) -> String {
        format!(
            "{PLACEHOLDER}{}",
            self.user_id.as_deref().unwrap_or("tenant")
        )
    }
}

/// The subscriptions `cfg` wants for the present `users`.
pub fn desired(cfg: &NotificationsConfig, users: &[String]) -> Vec<Desired> {
    let filter = |r: String| match &cfg.filter {
        Some(f) => format!("{r}?$filter={f}"),
        None => r,
    };
    match cfg.mode {
        SubscriptionMode::Tenant => vec![Desired {
            resource: filter("/copilot/interactionHistory/getAllEnterpriseInteractions".into()),
            user_id: None,
        }],
        SubscriptionMode::Users => users
            .iter()
            .filter(|u| plain_id(u))
            .map(|u| Desired {
                resource: filter(format!(
                    "/copilot/users/{u}/interactionHistory/getAllEnterpriseInteractions"
                )),
                user_id: Some(u.clone()),
            })
            .collect(),
    }
}

/// Graph user ids are GUIDs; anything else must not be spliced into a resource path.
fn plain_id(id: &str) -> bool {
    let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        tracing::warn!(user.id = %id, "user id is not a plain id; no subscription for it (polling covers it)");
    }
    ok
}

/// Resources compare without the leading slash and case (Graph may echo either form).
fn norm(resource: &str) -> String {
    resource.trim_start_matches('/').to_ascii_lowercase()
}

/// A subscription as `GET /subscriptions` lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct RemoteSubscription {
    pub id: String,
    #[serde(default)]
    pub resource: String,
    #[serde(rename = "notificationUrl", default)]
    pub notification_url: Option<String>,
    #[serde(rename = "expirationDateTime", default)]
    pub expiration: Option<String>,
    #[serde(rename = "encryptionCertificateId", default)]
    pub certificate_id: Option<String>,
}

impl RemoteSubscription {
    fn expires_ms(&self) -> Option<i64> {
        let text = self.expiration.as_deref()?;
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    attempts: u32,
    next: Instant,
}

/// See the module documentation.
pub struct Manager {
    graph: GraphClient,
    queue: NotificationQueue,
    cfg: NotificationsConfig,
    owner: String,
    lease_ttl: Duration,
    catch_up: Arc<CatchUp>,
    holder: bool,
    lease_renewed: Option<Instant>,
    next_reconcile: Option<Instant>,
    backoff: HashMap<String, Backoff>,
}

/// At most `n` characters, for the status table.
fn short(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Manager {
    pub fn new(
        graph: GraphClient,
        queue: NotificationQueue,
        cfg: NotificationsConfig,
        owner: String,
        lease_ttl: Duration,
        catch_up: Arc<CatchUp>,
    ) -> Self {
        Manager {
            graph,
            queue,
            cfg,
            owner,
            lease_ttl,
            catch_up,
            holder: false,
            lease_renewed: None,
            next_reconcile: None,
            backoff: HashMap::new(),
        }
    }

    /// Manages until cancelled: a tick at once, then every third of the lease lifetime (at
    /// most 30 s), on each lifecycle event and whenever `wake` is notified (after discovery).
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<LifecycleEvent>,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let every = (self.lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            self.tick().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(ev) = events.recv() => self.on_event(ev).await,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One round: keep the lease, then reconcile (when due) and maintain.
    pub async fn tick(&mut self) {
        if !self.keep_lease(true).await {
            return;
        }
        let due = self.next_reconcile.is_none_or(|t| Instant::now() >= t);
        let result = if due { self.reconcile().await } else { Ok(()) };
        let result = match result {
            Ok(()) => self.maintain().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "subscriptions: round not completed; retrying shortly (polling continues meanwhile)");
        }
        self.publish().await;
    }

    /// Records a lifecycle event; the holder acts on it in the next round.
    pub async fn on_event(&mut self, ev: LifecycleEvent) {
        let status = match ev.event.as_str() {
            "subscriptionRemoved" => Some(status::REMOVED),
            "reauthorizationRequired" => Some(status::REAUTHORIZE),
            _ => None,
        };
        let row = self.queue.subscription(&ev.subscription_id).await;
        if let Ok(Some(row)) = &row {
            if ev.event != "reauthorizationRequired" {
                let scope = match &row.user_id {
                    Some(u) => CatchUpScope::Users(BTreeSet::from([u.clone()])),
                    None => CatchUpScope::All,
                };
                self.catch_up
                    .request(scope, &format!("lifecycle event {}", ev.event));
            }
        }
        match self
            .queue
            .record_event(&ev.subscription_id, &ev.event, status, Utc::now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(subscription.id = %ev.subscription_id, event = %ev.event, "lifecycle event for a subscription this deployment does not know; the next full reconcile settles it");
                self.next_reconcile = None;
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a lifecycle event"),
        }
    }

    /// Takes or extends the lease (at most every third of its lifetime unless `force`).
    async fn keep_lease(&mut self, force: bool) -> bool {
        let fresh = self
            .lease_renewed
            .is_some_and(|t| t.elapsed() < self.lease_ttl / 3);
        if fresh && !force {
            return self.holder;
        }
        let held = self
            .queue
            .state()
            .try_lease(LEASE_KEY, &self.owner, self.lease_ttl, Utc::now())
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot take or renew the subscriptions lease");
                false
            });
        if held && !self.holder {
            tracing::info!(
                mode = self.cfg.mode.as_str(),
                "this process now manages the change-notification subscriptions"
            );
            self.next_reconcile = None;
        } else if !held && self.holder {
            tracing::warn!("subscriptions lease lost; another process manages them now");
        }
        self.holder = held;
        self.lease_renewed = held.then(Instant::now);
        held
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.graph.base_url().clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(segments);
        }
        url
    }

    async fn wanted(&self) -> Result<Vec<Desired>, StateError> {
        let users: Vec<String> = match self.cfg.mode {
            SubscriptionMode::Tenant => Vec::new(),
            SubscriptionMode::Users => self
                .queue
                .state()
                .all_scopes("user")
                .await?
                .into_iter()
                .filter(|s| s.gone_at.is_none())
                .map(|s| s.id)
                .collect(),
        };
        Ok(desired(&self.cfg, &users))
    }

    /// `GET /subscriptions` (all pages), keeping ours: a Copilot resource with our notification
    /// URL, or one our state database records (made before `notification_url` changed).
    pub async fn list_ours(&self) -> Result<Vec<RemoteSubscription>, ManagerError> {
        let recorded: HashSet<String> = (self.queue.subscriptions().await?)
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut next = Some(self.url(&["subscriptions"]));
        let mut out = Vec::new();
        while let Some(url) = next {
            let page = self.graph.get_page(&url, Endpoint::Other, &[]).await?;
            for record in &page.records {
                let s: RemoteSubscription =
                    serde_json::from_slice(&record.bytes).map_err(|e| ManagerError::Malformed {
                        path: url.path().to_owned(),
                        problem: e.to_string(),
                    })?;
                let mine = recorded.contains(&s.id) || self.sends_to_us(&s);
                if mine && norm(&s.resource).starts_with("copilot/") {
                    out.push(s);
                }
            }
            next = page.next_link;
        }
        Ok(out)
    }

    /// Full reconcile: forget rows Graph no longer has, adopt ours, create the missing,
    /// delete strays and duplicates of ours.
    async fn reconcile(&mut self) -> Result<(), ManagerError> {
        let remote = self.list_ours().await?;
        let remote_ids: HashSet<&str> = remote.iter().map(|r| r.id.as_str()).collect();
        for row in self.queue.subscriptions().await? {
            if !remote_ids.contains(row.id.as_str()) && !row.id.starts_with(PLACEHOLDER) {
                self.forget(&row, "subscription no longer exists in Graph")
                    .await?;
            }
        }
        let mut by_resource: HashMap<String, Vec<RemoteSubscription>> = HashMap::new();
        for r in remote {
            if self.outdated(&r) {
                // Before any create: Graph may allow one subscription per resource and app.
                tracing::info!(subscription.id = %r.id, resource = %r.resource, "deleting a subscription of ours made with a notification URL or certificate the configuration no longer has; it is made again");
                self.delete_remote(&r.id).await;
                self.queue.delete_subscription(&r.id).await?;
            } else {
                by_resource.entry(norm(&r.resource)).or_default().push(r);
            }
        }
        for d in self.wanted().await? {
            if !self.keep_lease(false).await {
                return Ok(());
            }
            match by_resource.remove(&norm(&d.resource)) {
                Some(found) => self.adopt(&d, found).await?,
                None => self.create(&d).await?,
            }
        }
        for stray in by_resource.into_values().flatten() {
            tracing::info!(subscription.id = %stray.id, resource = %stray.resource, "deleting a subscription of ours that the configuration no longer asks for (other user, mode or filter)");
            self.delete_remote(&stray.id).await;
            self.queue.delete_subscription(&stray.id).await?;
        }
        self.next_reconcile = Some(Instant::now() + RECONCILE_EVERY);
        Ok(())
    }

    /// Made with a retired certificate (its notifications no longer decrypt) or sending to a
    /// notification URL the configuration no longer has (the receiver moved).
    fn outdated(&self, r: &RemoteSubscription) -> bool {
        let cert = (r.certificate_id.as_ref()).is_some_and(|c| *c != self.cfg.certificate_id);
        cert || (r.notification_url.is_some() && !self.sends_to_us(r))
    }

    /// Posts to the configured notification URL (a trailing slash aside).
    fn sends_to_us(&self, r: &RemoteSubscription) -> bool {
        let ours = self.cfg.notification_url.as_str().trim_end_matches('/');
        (r.notification_url.as_deref()).is_some_and(|u| u.trim_end_matches('/') == ours)
    }

    /// Keeps the longest-lived of our subscriptions on a resource, deletes the others.
    async fn adopt(
        &mut self,
        d: &Desired,
        mut found: Vec<RemoteSubscription>,
    ) -> Result<(), ManagerError> {
        found.sort_by_key(|r| std::cmp::Reverse(r.expires_ms().unwrap_or(0)));
        let keep = found.remove(0);
        for dup in found {
            tracing::info!(subscription.id = %dup.id, "deleting a duplicate subscription");
            self.delete_remote(&dup.id).await;
        }
        let existing = self.queue.subscription(&keep.id).await?;
        let now = ms(Utc::now());
        let row = SubscriptionRow {
            id: keep.id.clone(),
            resource: d.resource.clone(),
            user_id: d.user_id.clone(),
            expires_at: keep.expires_ms().unwrap_or(now),
            // Unknown creation time: count it from now, so polling covers up to here first.
            created_at: existing.as_ref().map_or(now, |r| r.created_at),
            renewed_at: existing.as_ref().and_then(|r| r.renewed_at),
            status: existing
                .as_ref()
                .map_or(status::ACTIVE.into(), |r| r.status.clone()),
            last_event: existing.as_ref().and_then(|r| r.last_event.clone()),
            last_event_at: existing.as_ref().and_then(|r| r.last_event_at),
            last_notification_at: existing.as_ref().and_then(|r| r.last_notification_at),
        };
        self.queue.put_subscription(&row).await?;
        self.queue.delete_subscription(&d.placeholder_id()).await?;
        Ok(())
    }

    /// Renews, reauthorizes, recreates and creates what the table and the configuration ask.
    async fn maintain(&mut self) -> Result<(), ManagerError> {
        let wanted = self.wanted().await?;
        let by_resource: HashMap<String, &Desired> =
            wanted.iter().map(|d| (norm(&d.resource), d)).collect();
        let mut covered = HashSet::new();
        for row in self.queue.subscriptions().await? {
            if !self.keep_lease(false).await {
                return Ok(());
            }
            let Some(d) = by_resource.get(&norm(&row.resource)).copied() else {
                self.drop_unwanted(&row).await?;
                continue;
            };
            if row.id.starts_with(PLACEHOLDER) {
                continue;
            }
            if self.keep_row(&row, d).await? {
                covered.insert(norm(&d.resource));
            }
        }
        for d in &wanted {
            if !covered.contains(&norm(&d.resource)) && self.due(&d.resource) {
                if !self.keep_lease(false).await {
                    return Ok(());
                }
                self.create(d).await?;
            }
        }
        Ok(())
    }

    /// Acts on one row; false when it is gone and its resource needs a new subscription.
    async fn keep_row(&mut self, row: &SubscriptionRow, d: &Desired) -> Result<bool, ManagerError> {
        let now = ms(Utc::now());
        match row.status.as_str() {
            status::REMOVED => {
                tracing::warn!(subscription.id = %row.id, "subscription removed by Graph; recreating it");
                self.delete_remote(&row.id).await;
                self.queue.delete_subscription(&row.id).await?;
                self.catch_up.request(d.scope(), "subscription removed");
                Ok(false)
            }
            status::REAUTHORIZE => self.reauthorize(row, d).await,
            status::FAILED if self.due(&d.resource) => self.renew(row, d).await,
            status::ACTIVE if row.expires_at - now < dur_ms(self.cfg.renew_before) => {
                self.renew(row, d).await
            }
            _ => Ok(true),
        }
    }

    async fn drop_unwanted(&mut self, row: &SubscriptionRow) -> Result<(), ManagerError> {
        if !row.id.starts_with(PLACEHOLDER) {
            tracing::info!(subscription.id = %row.id, resource = %row.resource, "subscription no longer wanted (user left, or mode or filter changed); deleting it");
            self.delete_remote(&row.id).await;
        }
        self.queue.delete_subscription(&row.id).await?;
        Ok(())
    }

    /// Deletes a row whose subscription is gone; if it was live, notifications may be lost.
    async fn forget(&mut self, row: &SubscriptionRow, why: &str) -> Result<(), ManagerError> {
        tracing::warn!(subscription.id = %row.id, reason = why, "forgetting a subscription");
        self.queue.delete_subscription(&row.id).await?;
        let scope = match &row.user_id {
            Some(u) => CatchUpScope::Users(BTreeSet::from([u.clone()])),
            None => CatchUpScope::All,
        };
        self.catch_up.request(scope, why);
        Ok(())
    }

    fn create_body(&self, d: &Desired, expires: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "changeType": CHANGE_TYPES,
            "notificationUrl": self.cfg.notification_url.as_str(),
            "lifecycleNotificationUrl": self.cfg.lifecycle_url.as_str(),
            "resource": d.resource,
            "includeResourceData": true,
            "encryptionCertificate": self.cfg.certificate.base64(),
            "encryptionCertificateId": self.cfg.certificate_id,
            "expirationDateTime": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
            "clientState": self.cfg.client_state.expose_secret(),
        })
    }

    /// `POST /subscriptions`. Graph validates the notification URL during this call, so the
    /// receiver must already be listening.
    async fn create(&mut self, d: &Desired) -> Result<(), ManagerError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.cfg.lifetime).unwrap_or_default();
        let body = self.create_body(d, expires);
        let url = self.url(&["subscriptions"]);
        match self.graph.post_json(&url, &body).await {
            Ok(bytes) => {
                let created: RemoteSubscription =
                    serde_json::from_slice(&bytes).map_err(|e| ManagerError::Malformed {
                        path: url.path().to_owned(),
                        problem: e.to_string(),
                    })?;
                self.created(d, &created, now).await
            }
            Err(e) if e.outcome_unknown() => {
                tracing::warn!(error = %e, resource = %d.resource, "subscription create: no clear answer; looking before creating again");
                self.look_after_unknown(d, e).await
            }
            Err(e) => self.failed(d, None, e).await,
        }
    }

    async fn created(
        &mut self,
        d: &Desired,
        s: &RemoteSubscription,
        now: DateTime<Utc>,
    ) -> Result<(), ManagerError> {
        let row = SubscriptionRow {
            id: s.id.clone(),
            resource: d.resource.clone(),
            user_id: d.user_id.clone(),
            expires_at: s
                .expires_ms()
                .unwrap_or(ms(now) + dur_ms(self.cfg.lifetime)),
            created_at: ms(now),
            renewed_at: None,
            status: status::ACTIVE.into(),
            last_event: None,
            last_event_at: None,
            last_notification_at: None,
        };
        self.queue.put_subscription(&row).await?;
        self.queue.delete_subscription(&d.placeholder_id()).await?;
        self.backoff.remove(&d.resource);
        crate::ops::metrics::subscription_change("created");
        tracing::info!(subscription.id = %s.id, user.id = d.user_id.as_deref().unwrap_or("(tenant)"), "subscription created");
        Ok(())
    }

    /// After a create with an unknown outcome: adopt it if Graph has it, else count a failure.
    async fn look_after_unknown(&mut self, d: &Desired, e: GraphError) -> Result<(), ManagerError> {
        let found: Vec<RemoteSubscription> = match self.list_ours().await {
            Ok(all) => all
                .into_iter()
                .filter(|r| norm(&r.resource) == norm(&d.resource))
                .collect(),
            Err(_) => Vec::new(),
        };
        if found.is_empty() {
            return self.failed(d, None, e).await;
        }
        tracing::info!(resource = %d.resource, "the create had happened; adopting it");
        self.backoff.remove(&d.resource);
        self.adopt(d, found).await
    }

    /// `PATCH /subscriptions/{id}` with a new expiry. Gone (404): recreate.
    async fn renew(&mut self, row: &SubscriptionRow, d: &Desired) -> Result<bool, ManagerError> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(self.cfg.lifetime).unwrap_or_default();
        let body = serde_json::json!({
            "expirationDateTime": expires.to_rfc3339_opts(SecondsFormat::Millis, true)
        });
        match self
            .graph
            .patch_json(&self.url(&["subscriptions", &row.id]), &body)
            .await
        {
            Ok(bytes) => {
                let answer: Option<RemoteSubscription> = serde_json::from_slice(&bytes).ok();
                let expires_at = answer.and_then(|a| a.expires_ms()).unwrap_or(ms(expires));
                self.renewed(row, d, expires_at, "renewed").await?;
                Ok(true)
            }
            Err(e) if e.status() == Some(404) => {
                self.forget(row, "subscription not found when renewing; recreating it")
                    .await?;
                Ok(false)
            }
            Err(e) => {
                self.failed(d, Some(row), e).await?;
                Ok(true)
            }
        }
    }

    async fn renewed(
        &mut self,
        row: &SubscriptionRow,
        d: &Desired,
        expires_at: i64,
        event: &str,
    ) -> Result<(), ManagerError> {
        let now = ms(Utc::now());
        let mut updated = row.clone();
        updated.expires_at = expires_at;
        updated.renewed_at = Some(now);
        updated.status = status::ACTIVE.into();
        updated.last_event = Some(event.into());
        updated.last_event_at = Some(now);
        self.queue.put_subscription(&updated).await?;
        self.backoff.remove(&d.resource);
        crate::ops::metrics::subscription_change(event);
        tracing::debug!(subscription.id = %row.id, event, "subscription kept alive");
        Ok(())
    }

    /// `POST /subscriptions/{id}/reauthorize`; if refused, a renewal (which also reauthorizes).
    async fn reauthorize(
        &mut self,
        row: &SubscriptionRow,
        d: &Desired,
    ) -> Result<bool, ManagerError> {
        let url = self.url(&["subscriptions", &row.id, "reauthorize"]);
        match self
            .graph
            .send_json(Method::POST, &url, None, Idempotence::Idempotent)
            .await
        {
            Ok(_) => {
                self.renewed(row, d, row.expires_at, "reauthorized").await?;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(subscription.id = %row.id, error = %e, "reauthorize refused; renewing instead");
                self.renew(row, d).await
            }
        }
    }

    /// A create or renewal failed: status failed, a catch-up (first time), retry later.
    async fn failed(
        &mut self,
        d: &Desired,
        row: Option<&SubscriptionRow>,
        e: GraphError,
    ) -> Result<(), ManagerError> {
        let attempts = self.bump(&d.resource);
        let what = if row.is_some() { "renewal" } else { "create" };
        tracing::error!(error = %e, resource = %d.resource, attempts, "subscription {what} failed; polling covers this user meanwhile, retrying later");
        crate::ops::metrics::subscription_change("failed");
        let now = ms(Utc::now());
        let mut failed = match row {
            Some(r) => r.clone(),
            None => SubscriptionRow {
                id: d.placeholder_id(),
                resource: d.resource.clone(),
                user_id: d.user_id.clone(),
                expires_at: 0,
                created_at: now,
                renewed_at: None,
                status: String::new(),
                last_event: None,
                last_event_at: None,
                last_notification_at: None,
            },
        };
        failed.status = status::FAILED.into();
        failed.last_event = Some(short(&format!("{what} failed: {e}"), 200));
        failed.last_event_at = Some(now);
        self.queue.put_subscription(&failed).await?;
        if attempts == 1 {
            self.catch_up
                .request(d.scope(), &format!("subscription {what} failed"));
        }
        Ok(())
    }

    fn bump(&mut self, resource: &str) -> u32 {
        let b = self.backoff.entry(resource.to_owned()).or_insert(Backoff {
            attempts: 0,
            next: Instant::now(),
        });
        b.attempts += 1;
        let delay = BACKOFF_BASE
            .saturating_mul(1 << b.attempts.saturating_sub(1).min(8))
            .min(BACKOFF_MAX);
        b.next = Instant::now() + delay;
        b.attempts
    }

    fn due(&self, resource: &str) -> bool {
        self.backoff
            .get(resource)
            .is_none_or(|b| Instant::now() >= b.next)
    }

    /// DELETE, where "already gone" is fine; other failures are logged (a stray expires).
    async fn delete_remote(&self, id: &str) {
        match self.graph.delete(&self.url(&["subscriptions", id])).await {
            Ok(()) => crate::ops::metrics::subscription_change("deleted"),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => {
                tracing::warn!(subscription.id = %id, error = %e, "cannot delete a subscription; it expires by itself")
            }
        }
    }

    /// Subscription counts by status, for metrics.
    async fn publish(&self) {
        if let Ok(rows) = self.queue.subscriptions().await {
            let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
            crate::ops::metrics::subscriptions(&[
                (status::ACTIVE, count(status::ACTIVE)),
                (status::FAILED, count(status::FAILED)),
                (status::REMOVED, count(status::REMOVED)),
                (status::REAUTHORIZE, count(status::REAUTHORIZE)),
            ]);
        }
    }
}

#[cfg(test)]
#[path = "subscriptions_tests.rs"]
mod tests;
