//! Fault injection on Graph data routes: what a flaky network and an overloaded Graph do
//! to a client. Decisions come from a seeded ChaCha RNG behind the state's mutex; the body
//! faults rewrite a finished 200 response.

use axum::body::{Body, Bytes};
use axum::http::{header, response::Parts};
use axum::response::Response;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::{Duration, Instant};

use super::config::FaultConfig;
use super::data::mix;

/// Time between the partial body of a reset response and the abort.
const RESET_PAUSE: Duration = Duration::from_millis(30);

/// A fault answered instead of the real response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 429 with Retry-After = the rest of the storm.
    Storm { remaining: Duration },
    /// 401 InvalidAuthenticationToken for a valid token.
    ExpiredToken,
    /// 500/502/503/504; 503 sometimes with Retry-After.
    ServerError {
        status: u16,
        retry_after: Option<Duration>,
    },
}

/// A fault applied to a successful response's body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum BodyFault {
    /// Stream part of the body, then abort the connection.
    Reset { keep: f64 },
    /// Serve a prefix with a matching Content-Length.
    Truncated { keep: f64 },
    /// Serve invalid JSON.
    Malformed { html: bool },
}

/// What to do to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub refusal: Option<Refusal>,
    pub delay: Option<Duration>,
    pub body: Option<BodyFault>,
    /// For streamed content only: reset after this fraction of the body.
    pub content_reset: Option<f64>,
}

/// Fault settings and their RNG.
#[derive(Debug)]
pub(crate) struct Faults {
    cfg: FaultConfig,
    rng: ChaCha8Rng,
    storm_until: Option<Instant>,
}

impl Faults {
    pub(crate) fn new(cfg: FaultConfig, seed: u64) -> Faults {
        Faults {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(mix(seed, 0xfa17)),
            storm_until: None,
        }
    }

    pub(crate) fn config(&self) -> &FaultConfig {
        &self.cfg
    }

    /// Replaces the settings; a running storm ends.
    pub(crate) fn set(&mut self, cfg: FaultConfig) {
        self.cfg = cfg;
        self.storm_until = None;
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen::<f64>() < p
    }

    /// Decides the faults of one request arriving at `now`.
    pub(crate) fn plan(&mut self, now: Instant) -> Plan {
        if let Some(refusal) = self.refusal(now) {
            return Plan {
                refusal: Some(refusal),
                ..Plan::default()
            };
        }
        let delay = (self.roll(self.cfg.slow_rate) && self.cfg.slow_ms > 0)
            .then(|| Duration::from_millis(self.cfg.slow_ms));
        let body = self.body_fault();
        // Rolled only when configured, so other fault sequences stay as they were.
        let content_reset = self
            .roll(self.cfg.content_reset_rate)
            .then(|| self.rng.gen_range(0.1..0.9));
        Plan {
            refusal: None,
            delay,
            body,
            content_reset,
        }
    }

    fn refusal(&mut self, now: Instant) -> Option<Refusal> {
        if let Some(until) = self.storm_until.filter(|u| *u > now) {
            return Some(Refusal::Storm {
                remaining: until - now,
            });
        }
        if self.roll(self.cfg.storm_rate) && self.cfg.storm_ms > 0 {
            let length = Duration::from_millis(self.cfg.storm_ms);
            self.storm_until = Some(now + length);
            return Some(Refusal::Storm { remaining: length });
        }
        if self.roll(self.cfg.expired_token_rate) {
            return Some(Refusal::ExpiredToken);
        }
        if self.roll(self.cfg.error_rate) {
            let status = [500, 502, 503, 504][self.rng.gen_range(0..4)];
            let retry_after = (status == 503 && self.rng.gen_bool(0.5))
                .then(|| Duration::from_millis(self.rng.gen_range(100..1500)));
            return Some(Refusal::ServerError {
                status,
                retry_after,
            });
        }
        None
    }

    fn body_fault(&mut self) -> Option<BodyFault> {
        let keep = self.rng.gen_range(0.1..0.9);
        if self.roll(self.cfg.reset_rate) {
            Some(BodyFault::Reset { keep })
        } else if self.roll(self.cfg.truncated_rate) {
            Some(BodyFault::Truncated { keep })
        } else if self.roll(self.cfg.malformed_rate) {
            Some(BodyFault::Malformed {
                html: self.rng.gen_bool(0.3),
            })
        } else {
            None
        }
    }
}

/// Rewrites a complete response body according to `fault`.
pub(crate) fn apply_body_fault(mut parts: Parts, body: Bytes, fault: BodyFault) -> Response {
    // The length changes (or becomes unknown); hyper recomputes it from the new body.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = match fault {
        BodyFault::Truncated { keep } => Body::from(body.slice(..cut_point(body.len(), keep))),
        BodyFault::Malformed { html } => Body::from(malformed(&body, html)),
        BodyFault::Reset { keep } => {
            let part = body.slice(..cut_point(body.len(), keep));
            // The pause lets hyper flush the headers and the first part before the error
            // aborts the connection, as a reset mid-transfer would.
            let abort = futures::stream::once(async {
                tokio::time::sleep(RESET_PAUSE).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                ))
            });
            Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(part)]).chain(abort))
        }
    };
    Response::from_parts(parts, body)
}

/// Streams the first `keep` bytes of a streamed body, then aborts the connection: a reset in
/// the middle of a large download, which a client must resume or restart, never mistake for
/// the end.
pub(crate) fn reset_stream(parts: Parts, body: Body, keep: u64) -> Response {
    /// Where the cut stream is: passing bytes, owing the client its error, or finished.
    enum Cut {
        Passing(u64),
        Failing,
        Done,
    }
    let inner = body.into_data_stream();
    let stream =
        futures::stream::unfold((inner, Cut::Passing(keep)), |(mut inner, cut)| async move {
            match cut {
                Cut::Done => None,
                Cut::Failing => {
                    // The pause lets the part already written reach the client first.
                    tokio::time::sleep(RESET_PAUSE).await;
                    let e = std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated connection reset",
                    );
                    Some((Err(e), (inner, Cut::Done)))
                }
                Cut::Passing(left) => match inner.next().await {
                    None => None,
                    Some(Err(e)) => Some((
                        Err(std::io::Error::other(e.to_string())),
                        (inner, Cut::Done),
                    )),
                    Some(Ok(bytes)) if (bytes.len() as u64) < left => {
                        let left = left - bytes.len() as u64;
                        Some((Ok(bytes), (inner, Cut::Passing(left))))
                    }
                    Some(Ok(bytes)) => {
                        Some((Ok(bytes.slice(..left as usize)), (inner, Cut::Failing)))
                    }
                },
            }
        });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// A prefix length in `[1, len - 1]` (0 for an empty body).
fn cut_point(len: usize, keep: f64) -> usize {
    if len < 2 {
        return 0;
    }
    ((len as f64 * keep) as usize).clamp(1, len - 1)
}

/// Breaks the JSON structurally: the last `]` of a page closes its `value` array, so
/// replacing it cannot leave valid JSON. Or answers an HTML error page with status 200.
fn malformed(body: &[u8], html: bool) -> Vec<u8> {
    if html {
        return b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body><h1>The service is temporarily unavailable.</h1></body></html>".to_vec();
    }
    let mut out = body.to_vec();
    match out.iter().rposition(|&b| b == b']') {
        Some(i) => out[i] = b')',
        None => out.extend_from_slice(b"\"unterminated"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_one_always_fires_and_zero_never() {
        let now = Instant::now();
        let mut f = Faults::new(FaultConfig::default(), 1);
        for _ in 0..100 {
            assert_eq!(f.plan(now), Plan::default());
        }
        f.set(FaultConfig {
            truncated_rate: 1.0,
            ..FaultConfig::default()
        });
        assert!(matches!(
            f.plan(now).body,
            Some(BodyFault::Truncated { .. })
        ));
    }

    #[test]
    fn a_storm_refuses_everything_until_it_ends() {
        let t0 = Instant::now();
        let mut f = Faults::new(
            FaultConfig {
                storm_rate: 1.0,
                storm_ms: 1_000,
                ..FaultConfig::default()
            },
            1,
        );
        assert!(matches!(f.plan(t0).refusal, Some(Refusal::Storm { .. })));
        f.cfg.storm_rate = 0.0;
        let later = t0 + Duration::from_millis(400);
        assert_eq!(
            f.plan(later).refusal,
            Some(Refusal::Storm {
                remaining: Duration::from_millis(600)
            })
        );
        assert_eq!(f.plan(t0 + Duration::from_millis(1_000)).refusal, None);
    }

    #[test]
    fn malformed_bodies_do_not_parse() {
        let page = br#"{"value":[{"a":"]"}]}"#;
        for html in [false, true] {
            let bad = malformed(page, html);
            assert!(serde_json::from_slice::<serde_json::Value>(&bad).is_err());
        }
        assert_eq!(cut_point(10, 0.0), 1);
        assert_eq!(cut_point(10, 1.0), 9);
    }
}
