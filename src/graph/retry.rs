//! The one retry policy of the Graph client: bounded attempts, exponential backoff with full
//! jitter, `Retry-After` honoured, and a tenant-wide pause shared by every request.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use super::error::GraphError;

/// Longest `Retry-After` we obey. Graph asks for seconds to minutes; a larger value is more
/// likely a fault than a request, and obeying it would stall every source of the tenant.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Retry policy settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in total, counting the first try (at least 1).
    pub max_attempts: u32,
    /// Shortest wait before a retry, and the base of the exponential growth.
    pub base_delay: Duration,
    /// Longest wait before a retry (a `Retry-After` from Graph may ask for more).
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    pub(crate) fn validate(&self) -> Result<(), GraphError> {
        if self.max_attempts == 0 {
            return Err(GraphError::Config(
                "retry.max_attempts must be at least 1 (it counts the first try)".into(),
            ));
        }
        if self.base_delay > self.max_delay {
            return Err(GraphError::Config(
                "retry.base_delay must not exceed retry.max_delay".into(),
            ));
        }
        Ok(())
    }

    /// Full-jitter exponential backoff before retry number `retry` (1 for the first retry):
    /// uniform between `base_delay` and `min(max_delay, base_delay * 2^(retry-1))`.
    /// Jitter spreads the retries of many concurrent tasks so they do not hit Graph in step.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let cap = self
            .base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        if cap <= self.base_delay {
            return self.base_delay;
        }
        let low = self.base_delay.as_secs_f64();
        let high = cap.as_secs_f64();
        Duration::from_secs_f64(rand::thread_rng().gen_range(low..=high))
    }
}

/// Whether an HTTP status is worth retrying (transient by nature).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Parses `Retry-After`: delta seconds, possibly fractional (Graph sends `2.128`), or an HTTP
/// date. Values in the past count as zero; absurd values are capped at `MAX_RETRY_AFTER`.
pub(crate) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER)
        }
        Ok(_) => return None,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The tenant-wide pause: when Graph throttles one request, every request of the client holds
/// back until the pause ends, because Graph counts the tenant's requests, not ours one by one.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    until: Mutex<Option<Instant>>,
}

impl Pause {
    /// Extends the pause to `until` (never shortens it). Returns how much wall-clock pause
    /// this call added, for the statistics.
    pub(crate) fn extend(&self, until: Instant) -> Duration {
        let mut guard = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let current_end = guard.map_or(now, |u| u.max(now));
        if until <= current_end {
            return Duration::ZERO;
        }
        *guard = Some(until);
        until - current_end
    }

    fn current(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no pause is in force. Loops because the pause may be extended while waiting.
    pub(crate) async fn wait(&self) {
        while let Some(until) = self.current() {
            if until <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// How one attempt failed.
pub(crate) enum Failure {
    /// Worth another attempt; `retry_after` is what the server asked for, if anything.
    Retry {
        error: GraphError,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(GraphError),
}

/// Runs `op` under `policy`: up to `max_attempts` attempts, waiting
/// max(Retry-After, jittered backoff) between them. `on_retry` is told about each retry before
/// the wait (the Graph client uses it to set the shared pause and count statistics).
pub(crate) async fn run<T, F, Fut, R>(
    policy: &RetryConfig,
    path: &str,
    mut on_retry: R,
    mut op: F,
) -> Result<T, GraphError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    R: FnMut(&GraphError, Option<Duration>),
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let (error, retry_after) = match op().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Retry { error, retry_after }) => (error, retry_after),
        };
        if attempt >= policy.max_attempts {
            return Err(GraphError::Exhausted {
                attempts: attempt,
                path: path.to_owned(),
                last: Box::new(error),
            });
        }
        let delay = policy.backoff(attempt).max(retry_after.unwrap_or_default());
        log_retry(&error, attempt, delay, path);
        on_retry(&error, retry_after);
        tokio::time::sleep(delay).await;
    }
}

/// Throttling is routine under load (and counted in the statistics), so it logs at debug;
/// anything else that needs a retry is unusual and logs at warn.
fn log_retry(error: &GraphError, attempt: u32, delay: Duration, path: &str) {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let status = error.status();
    if status == Some(429) {
        tracing::debug!(
            ?status,
            attempt,
            delay_ms,
            path,
            "graph: throttled, retrying"
        );
    } else {
        tracing::warn!(?status, attempt, delay_ms, path, error = %error, "graph: retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:58Z")
            .map(|d| d.with_timezone(&chrono::Utc))
            .expect("fixed date");
        assert_eq!(
            parse_retry_after("2.128", now),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("1e12", now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let policy = RetryConfig {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 1..40 {
            let d = policy.backoff(retry);
            assert!(
                d >= policy.base_delay && d <= policy.max_delay,
                "{retry}: {d:?}"
            );
        }
        assert_eq!(policy.backoff(1), policy.base_delay);
    }

    #[test]
    fn pause_only_extends() {
        let pause = Pause::default();
        let now = Instant::now();
        let added = pause.extend(now + Duration::from_secs(2));
        assert!(added > Duration::from_millis(1900));
        assert_eq!(pause.extend(now + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(pause.current(), Some(now + Duration::from_secs(2)));
    }
}
