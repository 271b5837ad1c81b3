//! Request counters served at `/_sim/stats`, so tests and benchmarks can see what a client
//! did: how often it was throttled, which faults it met, how many tokens it fetched.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// Fault kinds as counted in `faults`.
pub(crate) const FAULT_KINDS: [&str; 8] = [
    "error",
    "storm_429",
    "storms_started",
    "reset",
    "slow",
    "malformed",
    "truncated",
    "expired_token",
];

/// Counters since the simulator started.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Stats {
    /// Requests by route class (`token`, `interactions`, `messages`, `other`) and status.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub total_requests: u64,
    /// Every 429 answered (rate limiting and storms).
    pub responses_429: u64,
    /// 429s answered by the token buckets.
    pub throttled: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub first_request: Option<String>,
    pub last_request: Option<String>,
    /// First and last request time per route class, so a benchmark can compute the rate one
    /// endpoint was driven at.
    pub class_span: BTreeMap<String, ClassSpan>,
    pub tokens_issued: u64,
    /// Change notifications (`/_sim/notifications/stats` serves the same).
    pub notifications: super::notify::NotificationCounters,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClassSpan {
    pub first: String,
    pub last: String,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: BTreeMap::new(),
            total_requests: 0,
            responses_429: 0,
            throttled: 0,
            faults: FAULT_KINDS.iter().map(|k| (*k, 0)).collect(),
            first_request: None,
            last_request: None,
            class_span: BTreeMap::new(),
            tokens_issued: 0,
            notifications: Default::default(),
        }
    }
}

impl Stats {
    /// Counts one answered request.
    pub(crate) fn record(&mut self, class: &str, status: u16, now: DateTime<Utc>) {
        *self
            .requests
            .entry(class.to_owned())
            .or_default()
            .entry(status.to_string())
            .or_default() += 1;
        self.total_requests += 1;
        if status == 429 {
            self.responses_429 += 1;
        }
        let stamp = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        self.first_request.get_or_insert_with(|| stamp.clone());
        self.class_span
            .entry(class.to_owned())
            .and_modify(|span| span.last = stamp.clone())
            .or_insert_with(|| ClassSpan {
                first: stamp.clone(),
                last: stamp.clone(),
            });
        self.last_request = Some(stamp);
    }

    pub(crate) fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }
}
