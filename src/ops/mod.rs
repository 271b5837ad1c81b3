//! The operator's side: logging, the `status` view, metrics and health endpoints, systemd
//! integration, configuration reload and progress display.

pub mod http;
pub mod metrics;
pub mod overview;
pub mod progress;
pub mod reload;
pub mod service;
pub mod settings;
pub mod status;
pub mod systemd;
pub mod telemetry;
