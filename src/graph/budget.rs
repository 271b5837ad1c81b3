//! Per-endpoint rate budgets: the client paces itself below Graph's documented per-tenant
//! limits instead of discovering them through 429s.

use std::num::NonZeroU32;
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
}

impl Default for Budgets {
    /// A margin below the documented per-app-per-tenant limits (30, 200 and 30 rps), so that
    /// other apps' noise and clock skew do not push us into throttling.
    fn default() -> Self {
        Self {
            interactions_rps: 25.0,
            messages_rps: 150.0,
            other_rps: 25.0,
        }
    }
}

/// One evenly spaced limiter per endpoint class.
#[derive(Debug)]
pub(crate) struct RateBudget {
    interactions: DefaultDirectRateLimiter,
    messages: DefaultDirectRateLimiter,
    other: DefaultDirectRateLimiter,
}

impl RateBudget {
    pub(crate) fn new(budgets: &Budgets) -> Result<Self, GraphError> {
        Ok(Self {
            interactions: limiter("interactions_rps", budgets.interactions_rps)?,
            messages: limiter("messages_rps", budgets.messages_rps)?,
            other: limiter("other_rps", budgets.other_rps)?,
        })
    }

    /// Waits for the next slot of `endpoint`'s budget.
    pub(crate) async fn acquire(&self, endpoint: Endpoint) {
        let limiter = match endpoint {
            Endpoint::Interactions => &self.interactions,
            Endpoint::Messages => &self.messages,
            Endpoint::Other => &self.other,
        };
        limiter.until_ready().await;
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
    }
}
