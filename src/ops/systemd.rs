//! systemd integration: readiness (`READY=1`), a `STATUS=` line kept current, `RELOADING=1` and
//! `STOPPING=1`, and a watchdog that pings only while the scheduler makes progress.
//!
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`), so the same binary runs from a
//! terminal, a container or a test.
//!
//! Why progress and not a timer: a timer task keeps pinging while the scheduler is wedged (a
//! hung database call, a store write stuck on a dead mount), which is exactly when systemd
//! should restart the service. So the pinger asks [`Liveness`] whether anything moved: a Graph
//! request answered, a store write finished, a window committed; or whether the loop is idle
//! between passes, which is healthy too.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bumped by the hot paths (store writes, committed windows); see `ops::metrics`.
static PROGRESS: AtomicU64 = AtomicU64::new(0);

/// Without a systemd watchdog, `/healthz` calls a loop stalled after this long without progress.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(900);

/// Records that the archiver did something (for the watchdog and `/healthz`).
pub fn progress() {
    PROGRESS.fetch_add(1, Ordering::Relaxed);
}

/// Hands the message to the notifier thread. The datagram send blocks while the receiver's
/// queue is full (a busy PID 1), and a blocked async worker would stall the archiver itself:
/// so the send happens on a thread of its own, in order, and this never blocks.
fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let msg = states
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(tx) = notifier() {
        // The thread only ends with the process; a failed send means it could not start.
        let _ = tx.send(msg);
    }
}

fn notifier() -> Option<&'static mpsc::Sender<String>> {
    static TX: OnceLock<Option<mpsc::Sender<String>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<String>();
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for msg in rx {
                    if let Err(e) = sd_notify::notify(&[NotifyState::Custom(&msg)]) {
                        // Not fatal: the service still works, systemd just hears less from it.
                        tracing::warn!(error = %e, "cannot notify systemd");
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the systemd notifier thread");
                None
            }
        }
    })
    .as_ref()
}

/// Startup is complete: migrations ran, the store and Graph accepted us.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What `systemctl status` shows under the unit.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Whether the daemon is making progress. `idle` (sleeping between passes) counts as alive.
#[derive(Debug)]
pub struct Liveness {
    limit: Duration,
    inner: Mutex<LiveState>,
}

#[derive(Debug)]
struct LiveState {
    idle: bool,
    last_count: u64,
    last_change: Instant,
}

impl Liveness {
    /// `limit`: how long without progress before the loop counts as stalled.
    pub fn new(limit: Duration) -> Self {
        Liveness {
            limit,
            inner: Mutex::new(LiveState {
                idle: false,
                last_count: 0,
                last_change: Instant::now(),
            }),
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The loop starts (false) or finishes (true) a pass; either is progress.
    pub fn set_idle(&self, idle: bool) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.idle = idle;
        st.last_change = Instant::now();
    }

    /// Given the current progress count, how long the loop has been stuck (zero when it moved
    /// or is idle).
    pub fn stalled_for(&self, count: u64, now: Instant) -> Duration {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if st.idle || count != st.last_count {
            st.last_count = count;
            st.last_change = now;
            return Duration::ZERO;
        }
        now.saturating_duration_since(st.last_change)
    }

    pub fn is_stalled(&self, count: u64, now: Instant) -> bool {
        self.stalled_for(count, now) > self.limit
    }
}

/// The progress count: our own counter plus everything the Graph client sent.
pub fn progress_count(graph_requests: u64) -> u64 {
    PROGRESS
        .load(Ordering::Relaxed)
        .wrapping_add(graph_requests)
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings `WATCHDOG=1` every quarter of `interval` while the loop is alive; stops pinging (and
/// says why, once) when it is stalled, so that systemd restarts the service.
pub fn spawn_watchdog(
    interval: Duration,
    liveness: Arc<Liveness>,
    count: impl Fn() -> u64 + Send + 'static,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval / 4) => {}
            }
            let stalled = liveness.stalled_for(count(), Instant::now());
            if stalled <= liveness.limit() {
                send(&[NotifyState::Watchdog]);
                warned = false;
            } else if !warned {
                tracing::error!(
                    stalled_s = stalled.as_secs(),
                    "the scheduler made no progress (no Graph request, store write or window) \
                     for longer than the watchdog interval; withholding the watchdog ping so \
                     that systemd restarts the service"
                );
                warned = true;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_or_idle_keeps_it_alive() {
        let l = Liveness::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!l.is_stalled(1, t0));
        // Same count 11 s later: stalled.
        assert!(l.is_stalled(1, t0 + Duration::from_secs(11)));
        // Moved: alive again.
        assert!(!l.is_stalled(2, t0 + Duration::from_secs(12)));
        l.set_idle(true);
        assert!(!l.is_stalled(2, t0 + Duration::from_secs(1000)));
    }

    #[test]
    fn notifications_without_systemd_are_no_ops() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            ready("test");
            status("test");
            stopping("test");
        }
    }
}
