//! Change notifications inside the daemon (`run`): the receiver on `notifications.listen`,
//! the worker that archives queued items, the subscription manager, catch-up passes and
//! adaptive polling. The service loop (`ops::service`) calls in at three points: `start`,
//! `daemon_pass` (instead of `App::daemon_pass`) and `catch_up_pass` when a catch-up is asked.

use super::adaptive::{self, Health, PollPlan};
use super::catchup::{CatchUp, CatchUpScope};
use super::payload::{DecryptionKey, Verifier};
use super::queue::{NotificationQueue, SubscriptionRow};
use super::receiver::{self, Receiver, ReceiverLimits};
use super::settings::{NotificationsConfig, SubscriptionMode};
use super::subscriptions::Manager;
use super::tokens::{keys_from_pem, TokenValidator};
use super::worker::Worker;
use crate::app::{App, AppError};
use crate::config::Config;
use crate::scheduler::PassReport;
use crate::sources::copilot::CopilotSource;
use crate::sources::SourceKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// What the adaptive decisions read before a pass (`Notifications::observe`).
struct Observed {
    subscriptions: Vec<SubscriptionRow>,
    checkpoints: Vec<adaptive::CopilotCheckpoint>,
    receiver_up: bool,
    oldest_pending_ms: Option<i64>,
    last_trouble_ms: Option<i64>,
    at_ms: i64,
}

/// Catch-up passes start at most this often (a burst of events makes one pass, not many).
const CATCH_UP_GAP: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "notifications.listen: cannot listen on {addr}: {source} (is another process using \
         the port? choose another address)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("notifications.validation_keys: {0}")]
    Keys(String),
}

impl RuntimeError {
    /// sysexits: 69 for a port we cannot have, 78 for configuration.
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Bind { .. } => 69,
            RuntimeError::Keys(_) => 78,
        }
    }
}

/// The running notification side of the daemon.
pub struct Notifications {
    cfg: NotificationsConfig,
    queue: NotificationQueue,
    pub catch_up: Arc<CatchUp>,
    /// True while the receiver is listening (readiness).
    pub receiver_up: Arc<AtomicBool>,
    manager_wake: Arc<Notify>,
    last_catch_up: Mutex<Option<Instant>>,
}

impl Notifications {
    /// Starts the receiver, the worker and the manager when `notifications.enabled`; asks a
    /// catch-up of every user (a restart may have missed notifications). Tasks stop with
    /// `tasks`.
    /// `receiver_up` is set while the receiver listens (the readiness probe reads it).
    pub async fn start(
        app: &App,
        tasks: &CancellationToken,
        receiver_up: Arc<AtomicBool>,
    ) -> Result<Option<Notifications>, RuntimeError> {
        let Some(cfg) = app.config.notifications.clone() else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RuntimeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let verifier = Arc::new(verifier(&cfg, &app.config)?);
        let queue = NotificationQueue::new(app.state.clone());
        let n = Notifications {
            cfg: cfg.clone(),
            queue: queue.clone(),
            catch_up: Arc::new(CatchUp::default()),
            receiver_up,
            manager_wake: Arc::new(Notify::new()),
            last_catch_up: Mutex::new(None),
        };
        let wake = Arc::new(Notify::new());
        n.spawn_receiver(listener, verifier.clone(), wake.clone(), tasks);
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            queue: queue.clone(),
            verifier,
            ingest: app.scheduler.ingest().clone(),
            source: CopilotSource::new(app.config.export.page_size),
            owner: app.scheduler.owner().to_owned(),
            catch_up: n.catch_up.clone(),
            lifecycle: Some(tx),
            unattributed_catch_up: cfg.mode == SubscriptionMode::Users,
            recent: Default::default(),
        };
        tokio::spawn(worker.run(wake, tasks.clone()));
        let manager = Manager::new(
            app.graph.clone(),
            queue,
            cfg.clone(),
            app.scheduler.owner().to_owned(),
            app.config.export.lease_ttl,
            n.catch_up.clone(),
        );
        tokio::spawn(manager.run(rx, n.manager_wake.clone(), tasks.clone()));
        n.catch_up.request(CatchUpScope::All, "restart");
        tracing::info!(
            listen = %cfg.listen,
            notification_url = %cfg.notification_url,
            mode = cfg.mode.as_str(),
            sweep_interval_s = cfg.sweep_interval.as_secs(),
            "change notifications enabled; polling stays the completeness backstop"
        );
        Ok(Some(n))
    }

    fn spawn_receiver(
        &self,
        listener: tokio::net::TcpListener,
        verifier: Arc<Verifier>,
        wake: Arc<Notify>,
        tasks: &CancellationToken,
    ) {
        let rx = Receiver {
            verifier,
            queue: self.queue.clone(),
            wake,
            limits: ReceiverLimits {
                max_body: self.cfg.max_body,
                ..ReceiverLimits::default()
            },
        };
        let (up, cancel) = (self.receiver_up.clone(), tasks.clone());
        up.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            let limits = rx.limits;
            receiver::serve(listener, receiver::router(rx), limits, cancel).await;
            up.store(false, Ordering::SeqCst);
        });
    }

    /// Discovery when due, then a pass over the scopes due (`scheduler::due`) that leaves out
    /// the Copilot polls notifications cover. Catch-up requests made before it are answered by
    /// it if it polled every scope (a first start); otherwise the catch-up pass answers them.
    /// A poll that stores what notifications should have brought asks for a catch-up (gap).
    pub async fn daemon_pass(
        &self,
        app: &App,
        last_discovery: &mut Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<PassReport, AppError> {
        let observed = match self.observe(app).await {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(error = %e, "cannot judge notification health; polling every user due");
                None
            }
        };
        let plan = PollPlan {
            skip: (observed.as_ref())
                .map(|o| adaptive::skippable(&self.health(o), &o.checkpoints, o.at_ms))
                .unwrap_or_default(),
        };
        let pending = self.catch_up.take();
        let report = app
            .daemon_pass_where(last_discovery, cancel, &|kind, row| plan.keep(kind, row))
            .await;
        if let Some((scope, reasons)) = pending {
            let everyone = plan.skip.is_empty() && matches!(&report, Ok(r) if r.not_due == 0);
            if everyone {
                tracing::debug!(?reasons, "catch-up answered by a pass over every scope");
            } else {
                self.catch_up.restore(scope, reasons);
            }
        }
        let report = report?;
        if let Some(o) = &observed {
            self.check_gaps(o, &report);
        }
        if !plan.skip.is_empty() {
            crate::ops::metrics::polls_skipped(
                SourceKind::Copilot.as_str(),
                plan.skip.len() as u64,
            );
            tracing::info!(
                users_skipped = plan.skip.len(),
                requests_saved_min = plan.skip.len(),
                "copilot polling relaxed: notifications cover these users (each skipped poll saves at least one Graph request)"
            );
        }
        // Discovery may have added or removed users: their subscriptions follow now.
        self.manager_wake.notify_one();
        Ok(report)
    }

    /// What the adaptive decisions read, before a pass.
    async fn observe(&self, app: &App) -> Result<Observed, crate::state::StateError> {
        Ok(Observed {
            subscriptions: self.queue.subscriptions().await?,
            checkpoints: adaptive::copilot_checkpoints(&app.state).await?,
            receiver_up: self.receiver_up.load(Ordering::SeqCst),
            oldest_pending_ms: self.queue.oldest_pending().await?,
            last_trouble_ms: self.catch_up.last_requested().map(|t| t.timestamp_millis()),
            at_ms: chrono::Utc::now().timestamp_millis(),
        })
    }

    fn health<'a>(&self, o: &'a Observed) -> Health<'a> {
        Health {
            mode: self.cfg.mode,
            receiver_up: o.receiver_up,
            oldest_pending_ms: o.oldest_pending_ms,
            last_trouble_ms: o.last_trouble_ms,
            subscriptions: &o.subscriptions,
            sweep_interval: self.cfg.sweep_interval,
            renew_before: self.cfg.renew_before,
        }
    }

    /// Interactions that polling stored first although notifications were healthy and the
    /// user subscribed: notifications were lost without a `missed` event (a proxy that
    /// dropped posts, a receiver that answered 202 from a restored backup), and other users
    /// may have lost theirs too. Sweep everyone now instead of at each user's next sweep.
    fn check_gaps(&self, o: &Observed, report: &PassReport) {
        let gaps = adaptive::gaps(
            &self.health(o),
            &report.found_new,
            self.cfg.filter.is_some(),
            self.cfg.gap_grace,
            o.at_ms,
        );
        let Some(first) = gaps.first() else {
            return;
        };
        let earliest = chrono::DateTime::from_timestamp_millis(first.earliest_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        tracing::warn!(
            users = gaps.len(),
            interactions = gaps.iter().map(|g| g.new).sum::<u64>(),
            user.id = %first.user_id,
            created = %earliest,
            "gap in notifications: polling stored interactions created while the user was subscribed that no notification brought; sweeping every user now"
        );
        crate::ops::metrics::notification_gaps(gaps.len() as u64);
        self.catch_up
            .request(CatchUpScope::All, "gap in notifications");
    }

    /// Returns once a catch-up is pending and the minimum gap since the last one has passed.
    pub async fn catch_up_requested(&self) {
        self.catch_up.requested().await;
        let last = *self
            .last_catch_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = last {
            tokio::time::sleep_until((at + CATCH_UP_GAP).into()).await;
        }
    }

    /// A polling pass over the Copilot users a catch-up concerns, now.
    pub async fn catch_up_pass(&self, app: &App, cancel: &CancellationToken) {
        *self
            .last_catch_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let Some((scope, reasons)) = self.catch_up.take() else {
            return;
        };
        let users = match &scope {
            CatchUpScope::All => "all".to_string(),
            CatchUpScope::Users(u) => u.len().to_string(),
        };
        tracing::info!(
            users,
            ?reasons,
            "catch-up pass: polling the users concerned now"
        );
        let keep = |kind: SourceKind, row: &crate::state::ScopeRow| {
            kind == SourceKind::Copilot
                && match &scope {
                    CatchUpScope::All => true,
                    CatchUpScope::Users(ids) => ids.contains(&row.id),
                }
        };
        if let Err(e) = app.scheduler.run_pass_where(cancel, false, &keep).await {
            tracing::warn!(error = %e, "catch-up pass failed; the next regular pass retries");
        }
    }
}

/// Checks posts: our clientState, Microsoft's validation tokens for our tenant and app, and
/// our certificate's private key.
fn verifier(cfg: &NotificationsConfig, config: &Config) -> Result<Verifier, RuntimeError> {
    let keys = keys_from_pem(&cfg.validation_keys_pem).map_err(RuntimeError::Keys)?;
    let tokens = TokenValidator::new(keys, &config.graph.tenant_id, &config.graph.client_id);
    Ok(Verifier::new(
        cfg.client_state.clone(),
        tokens,
        vec![DecryptionKey {
            certificate_id: cfg.certificate_id.clone(),
            key: (*cfg.private_key).clone(),
        }],
    ))
}

/// The polling interval the "behind" judgement assumes: an idle scope is polled as rarely as
/// `export.max_staleness` (`scheduler::due`); with notifications in `users` mode, Copilot is
/// polled every `sweep_interval` while they are healthy.
pub fn behind_interval(config: &Config) -> Duration {
    let poll = config.export.poll_interval.max(config.export.max_staleness);
    match &config.notifications {
        Some(n) if n.mode == SubscriptionMode::Users => poll.max(n.sweep_interval),
        _ => poll,
    }
}
