//! Logging: human-readable `key=value` lines for a terminal or journald, JSON for log shippers.
//! The level comes from `log.level` unless `RUST_LOG` is set, and can be changed while running
//! (SIGHUP reload) through a reloadable filter.

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log.level \"{level}\" is not a valid filter: {reason}")]
    BadLevel { level: String, reason: String },
    #[error("logging was not initialised by this process, so its level cannot be changed")]
    NotInitialised,
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

pub fn init(json: bool, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // journald stamps every line itself and shows no colours: drop both when stderr is the
    // journal (systemd sets JOURNAL_STREAM for the service's stderr).
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests, demo after config) is harmless: keep the first subscriber.
    let installed = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else if journald {
        registry
            .with(
                fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        // Colours only for a person at a terminal: in a pipe or a file they are noise.
        let ansi = std::io::stderr().is_terminal();
        registry
            .with(
                fmt::layer()
                    .with_ansi(ansi)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Switches the log level of the running process (SIGHUP). `RUST_LOG`, when set, wins over the
/// configuration at start and on reload alike, so an operator's debugging override sticks.
pub fn set_level(level: &str) -> Result<(), TelemetryError> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing::info!(
            log.level = level,
            "RUST_LOG is set and keeps precedence over log.level"
        );
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| TelemetryError::BadLevel {
        level: level.to_string(),
        reason: e.to_string(),
    })?;
    let handle = FILTER.get().ok_or(TelemetryError::NotInitialised)?;
    handle
        .reload(filter)
        .map_err(|e| TelemetryError::Reload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_level_is_refused_before_touching_the_filter() {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let e = set_level("info,[").expect_err("invalid directive");
        assert!(matches!(e, TelemetryError::BadLevel { .. }), "{e}");
    }
}
