//! Per-endpoint rate budgets: the client paces itself below Graph's documented per-tenant
//! limits instead of discovering them through 429s. Requests on one team or one chat also
//! take from that resource's own budget (Graph: 4 rps per app per team, 1 rps per app per
//! chat or channel), or a single team's export would be throttled while the tenant budget
//! has room.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::error::GraphError;

/// The rate-budget class of a request (Graph throttles these API families separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `getAllEnterpriseInteractions` (Copilot interactions).
    Interactions,
    /// Teams `getAllMessages` (chats and channels).
    Messages,
    /// Everything else (users, transcripts, recordings, subscriptions, ...).
    Other,
}

/// Requests per second allowed for each endpoint class.
#[derive(Clone, Debug, PartialEq)]
pub struct Budgets {
    pub interactions_rps: f64,
    pub messages_rps: f64,
    pub other_rps: f64,
    /// Requests per second on one team (`/teams/{id}/...`, `/teamwork/deletedTeams/{id}/...`).
    pub per_team_rps: f64,
    /// Requests per second on one chat (`/chats/{id}/...`).
    pub per_chat_rps: f64,
}

impl Default for Budgets {
    /// A margin below the documented per-app-per-tenant limits (30, 200 and 30 rps), so that
    /// other apps' noise and clock skew do not push us into throttling.
    fn default() -> Self {
        Self {
            interactions_rps: 25.0,
            messages_rps: 150.0,
            other_rps: 25.0,
            per_team_rps: 4.0,
            per_chat_rps: 1.0,
        }
    }
}

/// A team or chat with a budget of its own, recognised in a request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    Team(String),
    Chat(String),
}

impl Resource {
    /// `/v1.0/teams/{id}/...`, `/v1.0/teamwork/deletedTeams/{id}/...`, `/v1.0/chats/{id}/...`
    /// (whatever the version prefix); None for anything else, listings included.
    pub(crate) fn of_path(path: &str) -> Option<Resource> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let at = |name: &str| segs.iter().position(|s| s.eq_ignore_ascii_case(name));
        let below = |i: usize| segs.get(i + 1).filter(|_| segs.len() > i + 2);
        if let Some(i) =
            at("deletedTeams").filter(|&i| i > 0 && segs[i - 1].eq_ignore_ascii_case("teamwork"))
        {
            return below(i).map(|id| Resource::Team(id.to_ascii_lowercase()));
        }
        if let Some(i) = at("teams").filter(|&i| i <= 1) {
            return below(i).map(|id| Resource::Team(id.to_ascii_lowercase()));
        }
        if let Some(i) = at("chats").filter(|&i| i <= 1) {
            return below(i).map(|id| Resource::Chat(id.to_ascii_lowercase()));
        }
        None
    }
}

/// One evenly spaced limiter per endpoint class.
#[derive(Debug)]
pub(crate) struct RateBudget {
    interactions: DefaultDirectRateLimiter,
    messages: DefaultDirectRateLimiter,
    other: DefaultDirectRateLimiter,
    per_team_rps: f64,
    per_chat_rps: f64,
    /// One limiter per team or chat seen (a tenant has a bounded number of them).
    per_resource: Mutex<HashMap<Resource, Arc<DefaultDirectRateLimiter>>>,
}

impl RateBudget {
    pub(crate) fn new(budgets: &Budgets) -> Result<Self, GraphError> {
        // Validated now so that a bad value fails at start, not at the first team.
        limiter("per_team_rps", budgets.per_team_rps)?;
        limiter("per_chat_rps", budgets.per_chat_rps)?;
        Ok(Self {
            interactions: limiter("interactions_rps", budgets.interactions_rps)?,
            messages: limiter("messages_rps", budgets.messages_rps)?,
            other: limiter("other_rps", budgets.other_rps)?,
            per_team_rps: budgets.per_team_rps,
            per_chat_rps: budgets.per_chat_rps,
            per_resource: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for the next slot of `endpoint`'s budget, and of the team's or chat's that
    /// `path` addresses, if any. The resource goes first: waiting for it must not hold a
    /// tenant slot that other scopes could use.
    pub(crate) async fn acquire(&self, endpoint: Endpoint, path: &str) {
        if let Some(resource) = self.resource_limiter(path) {
            resource.until_ready().await;
        }
        let limiter = match endpoint {
            Endpoint::Interactions => &self.interactions,
            Endpoint::Messages => &self.messages,
            Endpoint::Other => &self.other,
        };
        limiter.until_ready().await;
    }

    fn resource_limiter(&self, path: &str) -> Option<Arc<DefaultDirectRateLimiter>> {
        let resource = Resource::of_path(path)?;
        let rps = match resource {
            Resource::Team(_) => self.per_team_rps,
            Resource::Chat(_) => self.per_chat_rps,
        };
        let mut map = self.per_resource.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(&resource) {
            return Some(Arc::clone(l));
        }
        // Validated in `new`; a failure here cannot happen, and then no extra limit applies.
        let l = Arc::new(limiter("per-resource", rps).ok()?);
        map.insert(resource, Arc::clone(&l));
        Some(l)
    }
}

/// Burst 1 with a period of 1/rps: requests go out evenly spaced at the budget, never in
/// bursts above it (Graph measures rates over short windows).
fn limiter(name: &str, rps: f64) -> Result<DefaultDirectRateLimiter, GraphError> {
    let invalid = || {
        GraphError::Config(format!(
            "budget {name} must be a positive number of requests per second, got {rps}"
        ))
    };
    if !(rps.is_finite() && rps > 0.0) {
        return Err(invalid());
    }
    let period = Duration::try_from_secs_f64(1.0 / rps).map_err(|_| invalid())?;
    let quota = Quota::with_period(period)
        .ok_or_else(invalid)?
        .allow_burst(NonZeroU32::MIN);
    Ok(RateLimiter::direct(quota))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_budgets() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            let budgets = Budgets {
                interactions_rps: bad,
                ..Budgets::default()
            };
            assert!(RateBudget::new(&budgets).is_err(), "{bad}");
        }
        assert!(RateBudget::new(&Budgets::default()).is_ok());
        let budgets = Budgets {
            per_team_rps: 0.0,
            ..Budgets::default()
        };
        assert!(RateBudget::new(&budgets).is_err());
    }

    #[test]
    fn teams_and_chats_are_recognised_in_paths() {
        let team = Some(Resource::Team("t1".into()));
        assert_eq!(
            Resource::of_path("/v1.0/teams/T1/channels/getAllMessages"),
            team
        );
        assert_eq!(
            Resource::of_path("/v1.0/teamwork/deletedTeams/t1/channels/getAllMessages"),
            team
        );
        assert_eq!(
            Resource::of_path("/beta/chats/19:a@thread.v2/messages"),
            Some(Resource::Chat("19:a@thread.v2".into()))
        );
        for none in [
            "/v1.0/teams",
            "/v1.0/teamwork/deletedTeams",
            "/v1.0/users/u/chats/getAllMessages",
            "/v1.0/users",
        ] {
            assert_eq!(Resource::of_path(none), None, "{none}");
        }
    }

    #[tokio::test]
    async fn one_team_is_paced_at_its_own_rate() {
        let budgets = Budgets {
            messages_rps: 1000.0,
            per_team_rps: 20.0,
            ..Budgets::default()
        };
        let budget = RateBudget::new(&budgets).expect("budget");
        let started = std::time::Instant::now();
        for _ in 0..6 {
            budget
                .acquire(Endpoint::Messages, "/v1.0/teams/a/channels/getAllMessages")
                .await;
        }
        // Burst 1 at 20 rps: five waits of 50 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(240),
            "{:?}",
            started.elapsed()
        );
        let other = std::time::Instant::now();
        budget
            .acquire(Endpoint::Messages, "/v1.0/teams/b/channels/getAllMessages")
            .await;
        assert!(
            other.elapsed() < Duration::from_millis(40),
            "another team is not held back"
        );
    }
}
