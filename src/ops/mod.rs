//! The operator's side: logging set-up and the `status` view.

pub mod status;
pub mod telemetry;
