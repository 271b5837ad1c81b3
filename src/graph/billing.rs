//! A 402 PaymentRequired from the Teams export APIs means the tenant needs a billing model
//! (`model=A|B`) or billing set up: retrying cannot help, and every other user or team would
//! get the same answer. After the first 402 on getAllMessages, further getAllMessages requests
//! are not sent for a while; they fail at once with the same explanation, so a pass ends
//! quickly with one clear message instead of one 402 per scope.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::budget::Endpoint;
use super::error::GraphError;

/// How long a 402 stops an endpoint class. Short enough that the daemon notices billing being
/// fixed on the tenant side within a poll or two; long enough to cover a whole pass.
const STOP_FOR: Duration = Duration::from_secs(600);

/// The 402 that stopped an endpoint class, and until when.
#[derive(Debug, Clone)]
struct Stopped {
    until: Instant,
    code: String,
    message: String,
}

#[derive(Debug, Default)]
pub(crate) struct BillingStop {
    messages: Mutex<Option<Stopped>>,
}

impl BillingStop {
    fn slot(&self, endpoint: Endpoint) -> Option<&Mutex<Option<Stopped>>> {
        match endpoint {
            Endpoint::Messages => Some(&self.messages),
            // The billing model applies to getAllMessages only. Other requests share their
            // budget class with discovery, which a 402 elsewhere must not stop; such a 402 is
            // reported per scope as it is.
            Endpoint::Other | Endpoint::Interactions => None,
        }
    }

    /// Fails at once if a recent 402 stopped this endpoint class.
    pub(crate) fn check(&self, endpoint: Endpoint, path: &str) -> Result<(), GraphError> {
        let Some(slot) = self.slot(endpoint) else {
            return Ok(());
        };
        let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(s) if s.until > Instant::now() => Err(GraphError::Status {
                status: 402,
                code: s.code.clone(),
                message: format!(
                    "{} (not sent: an earlier request of this pass was refused the same way)",
                    s.message
                ),
                path: path.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Remembers a 402 answer; other errors leave the state alone.
    pub(crate) fn record(&self, endpoint: Endpoint, error: &GraphError) {
        let (
            Some(slot),
            GraphError::Status {
                status: 402,
                code,
                message,
                ..
            },
        ) = (self.slot(endpoint), error)
        else {
            return;
        };
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|s| s.until <= Instant::now()) {
            tracing::error!(
                endpoint = ?endpoint,
                stop_s = STOP_FOR.as_secs(),
                "graph: 402 Payment Required; no further requests to this API until the billing model is fixed"
            );
        }
        *guard = Some(Stopped {
            until: Instant::now() + STOP_FOR,
            code: code.clone(),
            message: message.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment_required() -> GraphError {
        GraphError::Status {
            status: 402,
            code: "PaymentRequired".into(),
            message: "Evaluation mode capacity has been exceeded.".into(),
            path: "/v1.0/users/a/chats/getAllMessages".into(),
        }
    }

    #[test]
    fn a_402_stops_getallmessages_only() {
        let stop = BillingStop::default();
        assert!(stop.check(Endpoint::Messages, "/x").is_ok());
        stop.record(Endpoint::Messages, &payment_required());
        let e = stop
            .check(Endpoint::Messages, "/v1.0/users/b/chats/getAllMessages")
            .expect_err("stopped");
        assert_eq!(e.status(), Some(402));
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(
            text.contains("/v1.0/users/b/chats/getAllMessages") && text.contains("not sent"),
            "{text}"
        );
        assert!(
            stop.check(Endpoint::Other, "/x").is_ok(),
            "discovery is not stopped"
        );
        assert!(stop.check(Endpoint::Interactions, "/x").is_ok());
        stop.record(Endpoint::Other, &payment_required());
        assert!(stop.check(Endpoint::Other, "/x").is_ok());
    }

    #[test]
    fn other_errors_do_not_stop_anything() {
        let stop = BillingStop::default();
        let e = GraphError::Status {
            status: 403,
            code: "Forbidden".into(),
            message: "no".into(),
            path: "/x".into(),
        };
        stop.record(Endpoint::Messages, &e);
        assert!(stop.check(Endpoint::Messages, "/x").is_ok());
    }
}
