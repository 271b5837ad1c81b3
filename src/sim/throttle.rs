//! Per-tenant, per-endpoint-class token buckets (graph-notes.md "Throttling"), plus the
//! per-resource limits: 4 rps per app on one team, 1 rps per app on one chat.
//!
//! Each bucket refills at its rate with one second of burst. Every request takes a token,
//! throttled ones too, and the balance may fall to minus one second's worth: a client that
//! ignores Retry-After stays throttled, as with Graph, where throttled requests still count.

use std::collections::HashMap;
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

/// A resource with its own limit, taken from a request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ResourceKey {
    /// `/teams/{id}/...` or `/teamwork/deletedTeams/{id}/...`
    Team(String),
    /// `/chats/{id}/...`
    Chat(String),
}

impl ResourceKey {
    /// The team or chat a path addresses below it (the listing `/teams` itself is not one).
    pub(crate) fn of_path(path: &str) -> Option<ResourceKey> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // Skip the version segment.
        let rest = match segs.first() {
            Some(&"v1.0") | Some(&"beta") => &segs[1..],
            _ => &segs[..],
        };
        match rest {
            [t, id, _, ..] if t.eq_ignore_ascii_case("teams") => {
                Some(ResourceKey::Team(id.to_ascii_lowercase()))
            }
            [tw, dt, id, _, ..]
                if tw.eq_ignore_ascii_case("teamwork")
                    && dt.eq_ignore_ascii_case("deletedTeams") =>
            {
                Some(ResourceKey::Team(id.to_ascii_lowercase()))
            }
            [c, id, _, ..] if c.eq_ignore_ascii_case("chats") => {
                Some(ResourceKey::Chat(id.to_ascii_lowercase()))
            }
            _ => None,
        }
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
    /// One bucket per team or chat seen; created full on first use.
    per_resource: HashMap<ResourceKey, Bucket>,
}

impl Throttle {
    pub(crate) fn new(limits: SimRateLimits, now: Instant) -> Throttle {
        let mut t = Throttle {
            limits,
            buckets: [Bucket {
                tokens: 0.0,
                last: now,
            }; 3],
            per_resource: HashMap::new(),
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
        self.per_resource.clear();
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
        take(&mut self.buckets[class.slot()], rps, now)
    }

    /// As `admit`, and also from the bucket of the team or chat the request addresses: both
    /// take a token (Graph counts a throttled request against every limit it touches).
    pub(crate) fn admit_keyed(
        &mut self,
        class: RouteClass,
        key: Option<ResourceKey>,
        now: Instant,
    ) -> Result<(), Duration> {
        let tenant = self.admit(class, now);
        let resource = match key {
            None => Ok(()),
            Some(key) => {
                let rps = match key {
                    ResourceKey::Team(_) => self.limits.per_team_rps,
                    ResourceKey::Chat(_) => self.limits.per_chat_rps,
                };
                let bucket = self.per_resource.entry(key).or_insert(Bucket {
                    tokens: rps,
                    last: now,
                });
                take(bucket, rps, now)
            }
        };
        match (tenant, resource) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Err(w),
        }
    }
}

/// Takes one token from a bucket refilling at `rps` (0: unlimited).
fn take(bucket: &mut Bucket, rps: f64, now: Instant) -> Result<(), Duration> {
    if rps <= 0.0 {
        return Ok(());
    }
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
            per_team_rps: rps,
            per_chat_rps: rps,
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
    fn each_team_has_its_own_four_rps() {
        let t0 = Instant::now();
        let mut limits = limits(1000.0);
        limits.per_team_rps = 4.0;
        limits.per_chat_rps = 1.0;
        let mut t = Throttle::new(limits, t0);
        let team =
            |id: &str| ResourceKey::of_path(&format!("/v1.0/teams/{id}/channels/getAllMessages"));
        for _ in 0..4 {
            assert!(t.admit_keyed(RouteClass::Messages, team("a"), t0).is_ok());
        }
        let wait = t
            .admit_keyed(RouteClass::Messages, team("A"), t0)
            .expect_err("fifth request on one team in a second");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Another team, and the tenant-wide class, are unaffected.
        assert!(t.admit_keyed(RouteClass::Messages, team("b"), t0).is_ok());
        let chat = ResourceKey::of_path("/v1.0/chats/19:x@thread.v2/messages");
        assert!(t.admit_keyed(RouteClass::Other, chat.clone(), t0).is_ok());
        assert!(t.admit_keyed(RouteClass::Other, chat, t0).is_err());
        assert_eq!(
            ResourceKey::of_path("/v1.0/teamwork/deletedTeams/T1/channels/getAllMessages"),
            Some(ResourceKey::Team("t1".into()))
        );
        assert_eq!(ResourceKey::of_path("/v1.0/teams"), None);
        assert_eq!(
            ResourceKey::of_path("/v1.0/users/u/chats/getAllMessages"),
            None
        );
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
