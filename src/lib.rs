//! m365-archiver: archives Microsoft 365 Copilot interactions and Teams communications,
//! byte for byte, into immutable storage. The binary in `main.rs` is a thin layer over this
//! library so that tests can drive every step.

pub mod app;
pub mod archive;
pub mod compliance;
pub mod config;
pub mod content;
pub mod demo;
pub mod discovery;
pub mod graph;
pub mod groundtruth;
pub mod ingest;
pub mod manifest;
pub mod notifications;
pub mod ops;
pub mod replicas;
pub mod retention;
pub mod scheduler;
pub mod sim;
pub mod sources;
pub mod state;

/// Locks a mutex even when a panic elsewhere poisoned it: the critical sections of this crate
/// are small and never leave their data half changed, so a poisoned lock's data is still good.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
