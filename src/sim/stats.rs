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
    /// Requests answered in each whole second since `first`, so a benchmark can tell a
    /// pass held below its budget throughout from one held only while it ramps up or drains.
    pub per_second: Vec<u64>,
    #[serde(skip)]
    started: DateTime<Utc>,
}

impl ClassSpan {
    fn new(now: DateTime<Utc>, stamp: String) -> Self {
        ClassSpan {
            first: stamp.clone(),
            last: stamp,
            per_second: vec![1],
            started: now,
        }
    }

    fn count(&mut self, now: DateTime<Utc>, stamp: String) {
        let second = usize::try_from((now - self.started).num_seconds()).unwrap_or(0);
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
        self.last = stamp;
    }
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
            .and_modify(|span| span.count(now, stamp.clone()))
            .or_insert_with(|| ClassSpan::new(now, stamp.clone()));
        self.last_request = Some(stamp);
    }

    pub(crate) fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_second_of_their_class() {
        let t0 = Utc::now();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        let mut stats = Stats::default();
        for ms in [0, 400, 999, 2_100] {
            stats.record("messages", 200, at(ms));
        }
        stats.record("interactions", 429, at(1_500));
        assert_eq!(stats.class_span["messages"].per_second, vec![3, 0, 1]);
        // Each class counts from its own first request.
        assert_eq!(stats.class_span["interactions"].per_second, vec![1]);
    }
}
