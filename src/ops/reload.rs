//! SIGHUP: re-read the configuration, validate all of it, and apply what can change without a
//! restart. A configuration that does not validate is refused whole and the running one stays;
//! the log says which key is wrong.
//!
//! Applied live: the schedule (`export.*` timing keys, from the next pass), discovery (from its
//! next run), `log.level` (at once) and the retention rules (for records written from then on;
//! nothing already written is touched). Everything that shapes connections or storage (graph.*,
//! state.*, store.*, export.sources, export.page_size, export.write_concurrency, log.format,
//! metrics.*, service.*, teams.*, notifications.*) needs a restart; a reload that changes those
//! says so and keeps the old values.

use crate::app::App;
use crate::config::{self, Config, ExportConfig};
use crate::ops::{systemd, telemetry};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a reload changed, and what it could not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub applied: Vec<&'static str>,
    pub needs_restart: Vec<&'static str>,
}

/// Listens for SIGHUP; each one reads and validates the configuration, applies the log level at
/// once and hands the validated configuration to the daemon loop through `tx`.
pub fn spawn_sighup(
    path: Option<PathBuf>,
    tx: mpsc::Sender<Config>,
    cancel: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            systemd::reloading();
            match load(path.clone()).await {
                Ok(new) => {
                    if let Err(e) = telemetry::set_level(&new.log.level) {
                        tracing::warn!(error = %e, "log level not changed");
                    }
                    tracing::info!(
                        "configuration re-read and valid; the schedule applies from the next pass"
                    );
                    if tx.send(new).await.is_err() {
                        return;
                    }
                    systemd::reloaded("configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays in force (fix the file and send SIGHUP again)");
                    systemd::reloaded("configuration reload refused: see the log");
                }
            }
        }
    }))
}

/// Reading secrets and files blocks: keep it off the async workers.
async fn load(path: Option<PathBuf>) -> Result<Config, config::ConfigError> {
    tokio::task::spawn_blocking(move || config::load(path.as_deref()))
        .await
        .map_err(|e| config::ConfigError::Other(format!("reload task failed: {e}")))?
}

/// Applies the live part of `new` to `app` between passes and logs what changed.
pub fn apply(app: &mut App, new: Config) -> ReloadOutcome {
    let outcome = diff(&app.config, &new);
    let merged = live_export(&app.config.export, &new.export);
    app.scheduler.set_export(merged.clone());
    app.config.export = merged;
    app.config.discovery = new.discovery;
    app.config.discovery_interval = new.discovery_interval;
    app.config.log.level = new.log.level;
    // Group members of the new rules were resolved by the caller before this point.
    app.scheduler
        .ingest()
        .set_compliance(crate::compliance::Compliance::new(new.retention.clone()));
    app.config.retention = new.retention;
    if outcome.needs_restart.is_empty() {
        tracing::info!(applied = ?outcome.applied, "configuration reloaded");
    } else {
        tracing::warn!(
            applied = ?outcome.applied,
            needs_restart = ?outcome.needs_restart,
            "configuration reloaded in part: the keys in needs_restart keep their old values until `systemctl restart m365-archiver`"
        );
    }
    outcome
}

/// The new schedule with the old values for the keys that need a restart.
fn live_export(old: &ExportConfig, new: &ExportConfig) -> ExportConfig {
    ExportConfig {
        sources: old.sources.clone(),
        page_size: old.page_size,
        write_concurrency: old.write_concurrency,
        ..new.clone()
    }
}

/// Which keys differ between two validated configurations, split by whether a reload can
/// apply them.
pub fn diff(old: &Config, new: &Config) -> ReloadOutcome {
    let mut out = ReloadOutcome::default();
    let (o, n) = (&old.export, &new.export);
    let live = [
        ("export.start", o.start != n.start),
        ("export.overlap", o.overlap != n.overlap),
        ("export.max_window", o.max_window != n.max_window),
        ("export.settle_lag", o.settle_lag != n.settle_lag),
        ("export.lookback", o.lookback != n.lookback),
        (
            "export.lookback_interval",
            o.lookback_interval != n.lookback_interval,
        ),
        ("export.poll_interval", o.poll_interval != n.poll_interval),
        ("export.max_staleness", o.max_staleness != n.max_staleness),
        ("export.idle_backoff", o.idle_backoff != n.idle_backoff),
        ("export.concurrency", o.concurrency != n.concurrency),
        ("export.lease_ttl", o.lease_ttl != n.lease_ttl),
        ("discovery", debug_differs(&old.discovery, &new.discovery)),
        (
            "discovery.interval",
            old.discovery_interval != new.discovery_interval,
        ),
        ("log.level", old.log.level != new.log.level),
        // Applies to records written from the next batch on; never to what is already written.
        ("retention", debug_differs(&old.retention, &new.retention)),
    ];
    // Debug text of the Graph settings hides secrets, so a rotated secret is not noticed here:
    // a secret change always needs a restart (documented in docs/operations.md).
    let restart = [
        ("graph", debug_differs(&old.graph, &new.graph)),
        ("state.url", old.state_url != new.state_url),
        ("store", debug_differs(&old.store, &new.store)),
        ("export.sources", o.sources != n.sources),
        ("export.page_size", o.page_size != n.page_size),
        (
            "export.write_concurrency",
            o.write_concurrency != n.write_concurrency,
        ),
        ("log.format", old.log.json != new.log.json),
        ("metrics.listen", old.metrics != new.metrics),
        ("service.shutdown_timeout", old.service != new.service),
        ("teams", debug_differs(&old.teams, &new.teams)),
        (
            "notifications",
            debug_differs(&old.notifications, &new.notifications),
        ),
    ];
    out.applied = live.iter().filter(|(_, d)| *d).map(|(k, _)| *k).collect();
    out.needs_restart = restart
        .iter()
        .filter(|(_, d)| *d)
        .map(|(k, _)| *k)
        .collect();
    out
}

fn debug_differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[graph]
tenant_id = "t"
client_id = "c"
client_secret = "s3cr3t"
[state]
url = "sqlite://state.db"
[store]
kind = "fs"
path = "/tmp/archive"
[export]
sources = ["copilot"]
start = "2024-01-01T00:00:00Z"
poll_interval = "15m"
"#;

    fn cfg(text: &str) -> Config {
        config::load_from_str(text).expect("valid config")
    }

    #[test]
    fn schedule_keys_are_live_storage_keys_need_a_restart() {
        let old = cfg(BASE);
        let new = cfg(&BASE
            .replace(
                "poll_interval = \"15m\"",
                "poll_interval = \"5m\"\npage_size = 50",
            )
            .replace("/tmp/archive", "/srv/archive"));
        let d = diff(&old, &new);
        assert_eq!(d.applied, vec!["export.poll_interval"]);
        assert_eq!(d.needs_restart, vec!["store", "export.page_size"]);
    }

    #[test]
    fn identical_configs_differ_in_nothing() {
        assert_eq!(diff(&cfg(BASE), &cfg(BASE)), ReloadOutcome::default());
    }

    #[test]
    fn live_export_keeps_restart_keys() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace(
            "poll_interval = \"15m\"",
            "poll_interval = \"1m\"\npage_size = 10",
        ));
        let merged = live_export(&old.export, &new.export);
        assert_eq!(merged.poll_interval, std::time::Duration::from_secs(60));
        assert_eq!(merged.page_size, old.export.page_size);
    }

    #[test]
    fn retention_rules_are_live() {
        let with_rules = |years: &str| {
            format!("{BASE}[retention.default]\nretain = \"{years}\"\nmode = \"unlocked\"\n")
        };
        let d = diff(&cfg(&with_rules("7y")), &cfg(&with_rules("10y")));
        assert_eq!(d.applied, vec!["retention"]);
        assert!(d.needs_restart.is_empty(), "{:?}", d.needs_restart);
    }

    #[tokio::test]
    async fn ingest_writes_under_the_swapped_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::state::testing::sqlite_in(dir.path())
            .await
            .expect("state");
        let store = std::sync::Arc::new(crate::archive::fs::FsStore::new(dir.path().join("a")));
        let ingest = crate::ingest::Ingestor::new(store, state, 1);
        let clone = ingest.clone();
        let rules = cfg(&format!(
            "{BASE}[retention.default]\nretain = \"10y\"\nmode = \"locked\"\n"
        ))
        .retention;
        ingest.set_compliance(crate::compliance::Compliance::new(rules.clone()));
        // Every clone (the scheduler's included) sees the new rules.
        assert_eq!(
            format!("{:?}", clone.compliance().rules),
            format!("{:?}", rules)
        );
    }
}
