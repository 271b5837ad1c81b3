//! Per-tenant, per-endpoint-class token buckets (graph-notes.md "Throttling").
//!
//! Each class refills at its rate with one second of burst. Every request takes a token,
//! throttled ones too, and the balance may fall to minus one second's worth: a client that
//! ignores Retry-After stays throttled, as with Graph, where throttled requests still count.

use std::time::{Duration, Instant};

use super::config::SimRateLimits;

/// Endpoint classes with separate limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RouteClass {
    /// `getAllEnterpriseInteractions`.
    Interactions,
    /// Chat and channel `getAllMessages`.
    Messages,
    /// Users, groups, deleted items and the rest.
    Other,
}

impl RouteClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RouteClass::Interactions => "interactions",
            RouteClass::Messages => "messages",
            RouteClass::Other => "other",
        }
    }

    /// Classifies a Graph path (version prefix included or not).
    pub(crate) fn of_path(path: &str) -> RouteClass {
        let lower = path.to_ascii_lowercase();
        if lower.contains("/interactionhistory/") {
            RouteClass::Interactions
        } else if lower.contains("/getallmessages") || lower.contains("/getallretainedmessages") {
            RouteClass::Messages
        } else {
            RouteClass::Other
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The tenant's buckets.
#[derive(Debug)]
pub(crate) struct Throttle {
    limits: SimRateLimits,
    buckets: [Bucket; 3],
}

impl Throttle {
    pub(crate) fn new(limits: SimRateLimits, now: Instant) -> Throttle {
        let mut t = Throttle {
            limits,
            buckets: [Bucket {
                tokens: 0.0,
                last: now,
            }; 3],
        };
        t.refill_all(now);
        t
    }

    /// Applies new limits; buckets restart full so a test starts from a known state.
    pub(crate) fn set_limits(&mut self, limits: SimRateLimits, now: Instant) {
        self.limits = limits;
        self.refill_all(now);
    }

    pub(crate) fn limits(&self) -> &SimRateLimits {
        &self.limits
    }

    fn refill_all(&mut self, now: Instant) {
        for class in [
            RouteClass::Interactions,
            RouteClass::Messages,
            RouteClass::Other,
        ] {
            self.buckets[class.slot()] = Bucket {
                tokens: self.rate(class),
                last: now,
            };
        }
    }

    fn rate(&self, class: RouteClass) -> f64 {
        match class {
            RouteClass::Interactions => self.limits.interactions_rps,
            RouteClass::Messages => self.limits.messages_rps,
            RouteClass::Other => self.limits.other_rps,
        }
    }

    /// Takes a token; on failure returns how long until one is available.
    pub(crate) fn admit(&mut self, class: RouteClass, now: Instant) -> Result<(), Duration> {
        let rps = self.rate(class);
        if rps <= 0.0 {
            return Ok(());
        }
        let bucket = &mut self.buckets[class.slot()];
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rps).min(rps);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        bucket.tokens = (bucket.tokens - 1.0).max(-rps);
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rps))
    }
}

/// Formats a wait as Graph's fractional Retry-After seconds (`0.128`), rounded up.
pub(crate) fn retry_after_value(wait: Duration) -> String {
    let ms = wait.as_micros().div_ceil(1000).max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rps: f64) -> SimRateLimits {
        SimRateLimits {
            interactions_rps: rps,
            messages_rps: rps,
            other_rps: rps,
        }
    }

    #[test]
    fn burst_then_throttle_then_refill() {
        let t0 = Instant::now();
        let mut t = Throttle::new(limits(10.0), t0);
        for _ in 0..10 {
            assert!(t.admit(RouteClass::Interactions, t0).is_ok());
        }
        let wait = t
            .admit(RouteClass::Interactions, t0)
            .expect_err("throttled");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        // The other class is independent.
        assert!(t.admit(RouteClass::Other, t0).is_ok());
        assert!(t.admit(RouteClass::Interactions, t0 + wait).is_ok());
    }

    #[test]
    fn ignoring_retry_after_keeps_a_client_throttled() {
        let t0 = Instant::now();
        let mut t = Throttle::new(limits(10.0), t0);
        let mut last = Duration::ZERO;
        for i in 0..40 {
            if let Err(w) = t.admit(RouteClass::Other, t0 + Duration::from_millis(i * 10)) {
                last = w;
            }
        }
        assert!(last > Duration::from_millis(500), "{last:?}");
        assert!(last <= Duration::from_millis(1100), "{last:?}");
    }

    #[test]
    fn retry_after_is_fractional_seconds() {
        assert_eq!(retry_after_value(Duration::from_micros(127_001)), "0.128");
        assert_eq!(retry_after_value(Duration::from_millis(2128)), "2.128");
        assert_eq!(retry_after_value(Duration::ZERO), "0.001");
        assert_eq!(
            RouteClass::of_path(
                "/v1.0/copilot/users/x/interactionHistory/getAllEnterpriseInteractions"
            ),
            RouteClass::Interactions
        );
    }
}
