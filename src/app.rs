//! Wiring: from a validated `Config` to a running archiver. The binary's commands call these;
//! tests can too.

use crate::archive::fs::FsStore;
use crate::archive::{ArchiveStore, StoreError};
use crate::config::{Config, StoreConfig};
use crate::discovery::{self, DiscoveryError};
use crate::graph::{GraphClient, GraphError};
use crate::ingest::Ingestor;
use crate::replicas::{self, Replicas};
use crate::scheduler::{PassClock, PassReport, Scheduler};
use crate::sources::channels::{ChannelsSource, TeamDirectory};
use crate::sources::chats::ChatsSource;
use crate::sources::meetings::{Artifact, MeetingsSource};
use crate::sources::{copilot::CopilotSource, Source, SourceKind};
use crate::state::{StateDb, StateError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why the archiver could not start or finish; each maps to a sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("state database: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("Microsoft Graph: {0}")]
    Graph(#[from] GraphError),
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
    #[error("{0}")]
    Compliance(#[from] crate::compliance::ComplianceError),
}

impl AppError {
    /// sysexits: 77 permission (credentials), 69 service unavailable, 70 internal.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Graph(GraphError::Auth { .. }) => 77,
            AppError::Discovery(DiscoveryError::Graph { source, .. })
                if source.status() == Some(403) =>
            {
                77
            }
            AppError::Discovery(DiscoveryError::Scopes { source, .. })
                if source.status() == Some(403) =>
            {
                77
            }
            AppError::Store(StoreError::Auth(_)) => 77,
            AppError::Compliance(e) => e.exit_code(),
            AppError::Graph(_) | AppError::Discovery(_) => 69,
            AppError::State(_) | AppError::Store(_) => 69,
        }
    }
}

pub struct App {
    pub config: Config,
    pub state: StateDb,
    pub store: Arc<dyn ArchiveStore>,
    pub graph: GraphClient,
    pub scheduler: Scheduler,
    /// Which teams are deleted, as team discovery last saw it (read by the channels source).
    pub teams: TeamDirectory,
    /// This process in the replica registry: its share of the tenant's rate budget.
    pub replicas: Replicas,
    /// When this process began: what a one-shot pass covers (joining the replicas can take a
    /// few seconds, in which the others export).
    started: PassClock,
}

pub async fn open_state(config: &Config) -> Result<StateDb, AppError> {
    let state = StateDb::connect(&config.state_url).await?;
    state.migrate().await?;
    Ok(state)
}

pub fn open_store(config: &StoreConfig) -> Arc<dyn ArchiveStore> {
    match config {
        StoreConfig::Fs { path } => Arc::new(FsStore::new(path.clone())),
        // A store that cannot even be built reports why from its startup check.
        StoreConfig::Azure(cfg) => match crate::archive::azure::AzureStore::new(cfg) {
            Ok(store) => Arc::new(store),
            Err(e) => Arc::new(crate::archive::unusable::UnusableStore::new(
                format!("azure:{}", cfg.container_url),
                &e,
            )),
        },
    }
}

pub fn sources_for(config: &Config) -> Vec<Arc<dyn Source>> {
    sources_with(config, &TeamDirectory::default())
}

/// The configured sources; the channels source reads deleted teams from `teams`.
pub fn sources_with(config: &Config, teams: &TeamDirectory) -> Vec<Arc<dyn Source>> {
    let (page, t) = (config.export.page_size, &config.teams);
    config
        .export
        .sources
        .iter()
        .map(|kind| match kind {
            SourceKind::Copilot => Arc::new(CopilotSource::new(page)) as Arc<dyn Source>,
            SourceKind::Chats => Arc::new(ChatsSource::new(page, t.model, t.chat_senders.clone())),
            SourceKind::Channels => Arc::new(ChannelsSource::new(page, t.model, teams.clone())),
            SourceKind::Transcripts => Arc::new(MeetingsSource::new(
                Artifact::Transcripts,
                page,
                t.content_timeout,
            )),
            SourceKind::Recordings => Arc::new(MeetingsSource::new(
                Artifact::Recordings,
                page,
                t.content_timeout,
            )),
        })
        .collect()
}

impl App {
    /// Opens state (migrating it), checks the store and the Graph credentials. Fails fast with
    /// an operator-readable error if any of them is not usable.
    pub async fn start(config: Config) -> Result<App, AppError> {
        let started = PassClock::now();
        let state = open_state(&config).await?;
        let store = open_store(&config.store);
        store.check().await?;
        let graph = GraphClient::new(config.graph.clone())?;
        graph.check_credentials().await?;
        crate::compliance::daemon::resolve_groups(&graph, &config.retention).await?;
        let ingest = Ingestor::new(
            store.clone(),
            state.clone(),
            config.export.write_concurrency,
        )
        .with_compliance(crate::compliance::Compliance::new(config.retention.clone()));
        let teams = TeamDirectory::default();
        let scheduler = Scheduler::new(
            config.export.clone(),
            graph.clone(),
            state.clone(),
            ingest,
            sources_with(&config, &teams),
        );
        let replicas = Replicas::join(
            &state,
            &graph,
            scheduler.owner(),
            replicas::Timing::default(),
        )
        .await?;
        tracing::info!(
            state = state_kind(&config.state_url),
            store = %store.describe(),
            graph = %config.graph.base_url,
            "archiver ready"
        );
        Ok(App {
            config,
            state,
            store,
            graph,
            scheduler,
            teams,
            replicas,
            started,
        })
    }

    /// Users, then the teams and meeting organizers the Teams sources need.
    async fn discover(&self) -> Result<(), DiscoveryError> {
        discovery::sync_users(&self.graph, &self.state, &self.config.discovery).await?;
        discovery::sync_teams_and_organizers(
            &self.graph,
            &self.state,
            &self.config.teams,
            &self.config.export.sources,
            &self.teams,
        )
        .await
    }

    /// Discovery and one pass over every scope (the scopes already known are exported while
    /// discovery runs: `Scheduler::run_pass_beside`).
    pub async fn run_once(&self, cancel: &CancellationToken) -> Result<PassReport, AppError> {
        let report = self.pass_once(cancel).await;
        self.replicas.leave().await;
        report
    }

    async fn pass_once(&self, cancel: &CancellationToken) -> Result<PassReport, AppError> {
        let (discovered, report) = (self.scheduler)
            .run_pass_beside(cancel, self.started, self.discover())
            .await;
        discovered?;
        let report = report?;
        self.reconcile_holds().await;
        self.log_graph_stats();
        Ok(report)
    }

    fn log_graph_stats(&self) {
        let s = self.graph.stats();
        tracing::info!(
            graph.requests = s.requests,
            graph.retries = s.retries,
            graph.throttled = s.throttled,
            graph.paused_ms = s.paused_ms,
            graph.transport_errors = s.transport_errors,
            graph.malformed_pages = s.malformed_pages,
            graph.token_requests = s.token_requests,
            "graph usage since start"
        );
    }

    /// One iteration of the daemon: discovery when due, then a pass over the scopes due
    /// (`scheduler::due`). The service loop (`ops::service`) wraps it with readiness, watchdog,
    /// reload and metrics.
    pub async fn daemon_pass(
        &self,
        last_discovery: &mut Option<std::time::Instant>,
        cancel: &CancellationToken,
    ) -> Result<PassReport, AppError> {
        self.daemon_pass_where(last_discovery, cancel, &|_, _| true)
            .await
    }

    /// As `daemon_pass`, over the (source, scope) pairs `keep` accepts (change notifications
    /// relax Copilot polling while they are healthy).
    pub async fn daemon_pass_where(
        &self,
        last_discovery: &mut Option<std::time::Instant>,
        cancel: &CancellationToken,
        keep: crate::scheduler::PassFilter<'_>,
    ) -> Result<PassReport, AppError> {
        let due = last_discovery.is_none_or(|t| t.elapsed() >= self.config.discovery_interval);
        if due {
            // Discovery is not cancellable inside; a shutdown must not wait for its retries.
            let sync = tokio::select! {
                r = self.discover() => r,
                _ = cancel.cancelled() => return Ok(PassReport::default()),
            };
            match sync {
                Ok(_) => {
                    *last_discovery = Some(std::time::Instant::now());
                    self.refresh_groups().await;
                }
                // Keep archiving the scopes already known; try discovery again next pass.
                Err(e) => {
                    tracing::error!(error = %e, "user discovery failed; keeping the known users")
                }
            }
        }
        let report = self.scheduler.run_due_pass(cancel, keep).await?;
        self.reconcile_holds().await;
        self.log_graph_stats();
        Ok(report)
    }

    /// The daemon loop: discovery when due, a pass every poll interval, until cancelled.
    pub async fn run_forever(&self, cancel: &CancellationToken) -> Result<(), AppError> {
        let mut last_discovery: Option<std::time::Instant> = None;
        loop {
            self.daemon_pass(&mut last_discovery, cancel).await?;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.config.export.poll_interval) => {}
            }
        }
        let released = self
            .state
            .release_all_leases(self.scheduler.owner())
            .await?;
        self.replicas.leave().await;
        tracing::info!(leases_released = released, "stopped");
        Ok(())
    }
}

fn state_kind(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}
