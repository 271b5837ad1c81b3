//! Counters of the client's activity, for the benchmark, metrics and `status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A snapshot of the client's counters since it was created.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GraphStats {
    /// HTTP requests sent to Graph (every attempt, not counting token requests).
    pub requests: u64,
    /// Responses that throttled us (429, or 503 with Retry-After).
    pub throttled: u64,
    /// Retries of Graph requests (including the one re-send after a 401).
    pub retries: u64,
    /// Wall-clock milliseconds of tenant-wide pause imposed by Retry-After.
    pub paused_ms: u64,
    /// Graph responses by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Graph requests that got no complete answer (connect, reset, timeout, cut body).
    pub transport_errors: u64,
    /// 2xx collection pages that failed to parse.
    pub malformed_pages: u64,
    /// Requests sent to the token endpoint.
    pub token_requests: u64,
}

/// The live counters behind `GraphStats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) paused_ms: AtomicU64,
    pub(crate) transport_errors: AtomicU64,
    pub(crate) malformed_pages: AtomicU64,
    pub(crate) token_requests: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
}

/// Adds one to a counter. Relaxed: the counters are independent tallies, not synchronisation.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn record_status(&self, status: u16) {
        let mut map = self.by_status.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(status).or_insert(0) += 1;
    }

    pub(crate) fn add_pause(&self, pause: Duration) {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.paused_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> GraphStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GraphStats {
            requests: load(&self.requests),
            throttled: load(&self.throttled),
            retries: load(&self.retries),
            paused_ms: load(&self.paused_ms),
            by_status: self
                .by_status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            transport_errors: load(&self.transport_errors),
            malformed_pages: load(&self.malformed_pages),
            token_requests: load(&self.token_requests),
        }
    }
}
