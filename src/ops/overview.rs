//! Is archiving current? One computation over the checkpoints, shared by the systemd `STATUS=`
//! line, the per-pass summary log line, the metrics gauges and `m365-archiver status`, so that
//! they can never disagree.
//!
//! A (source, scope) pair is *failing* while its last error is newer than its last success,
//! *behind* when its watermark is older than `behind_after` (or it has none yet), and *current*
//! otherwise. A scope takes the worst state of its sources.

use crate::state::StatusRow;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeState {
    Current,
    Behind,
    Failing,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceOverview {
    pub source: String,
    pub scopes: usize,
    pub current: usize,
    pub behind: usize,
    pub failing: usize,
    /// Scopes that left the tenant (deleted or unlicensed), also counted in the states above.
    pub departed: usize,
    pub max_lag_seconds: Option<i64>,
    pub records: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub generated_at: DateTime<Utc>,
    pub behind_after_seconds: u64,
    /// Distinct scopes (a user exported by two sources counts once), by worst state.
    pub scopes: usize,
    pub current: usize,
    pub behind: usize,
    pub failing: usize,
    pub max_lag_seconds: Option<i64>,
    pub records: i64,
    /// "users" when every scope is a user, else "scopes".
    pub noun: &'static str,
    pub by_source: Vec<SourceOverview>,
}

/// The state of one checkpoint row at `now`.
pub fn row_state(row: &StatusRow, now: DateTime<Utc>, behind_after: Duration) -> ScopeState {
    let cp = &row.checkpoint;
    let failing = match (cp.last_error_at, cp.last_success_at) {
        (Some(e), Some(s)) => e > s,
        (Some(_), None) => true,
        _ => false,
    };
    if failing {
        return ScopeState::Failing;
    }
    match lag_seconds(row, now) {
        Some(lag) if lag <= behind_after.as_secs() as i64 => ScopeState::Current,
        _ => ScopeState::Behind,
    }
}

pub fn lag_seconds(row: &StatusRow, now: DateTime<Utc>) -> Option<i64> {
    row.checkpoint
        .watermark
        .map(|w| (now - w).num_seconds().max(0))
}

/// A scope counts as behind once it has missed about two polls: right after a pass its lag is
/// the settle lag, and it grows by one poll interval before the next pass.
pub fn behind_threshold(poll_interval: Duration, settle_lag: Duration) -> Duration {
    poll_interval * 2 + settle_lag
}

impl Overview {
    pub fn build(rows: &[StatusRow], now: DateTime<Utc>, behind_after: Duration) -> Overview {
        let mut by_source: BTreeMap<&str, SourceOverview> = BTreeMap::new();
        let mut by_scope: BTreeMap<(&str, &str), ScopeState> = BTreeMap::new();
        for row in rows {
            let state = row_state(row, now, behind_after);
            let lag = lag_seconds(row, now);
            let s = by_source
                .entry(&row.source)
                .or_insert_with(|| SourceOverview {
                    source: row.source.clone(),
                    ..SourceOverview::default()
                });
            s.scopes += 1;
            s.records += row.checkpoint.records_archived;
            s.max_lag_seconds = s.max_lag_seconds.max(lag);
            s.departed += usize::from(row.gone_at.is_some());
            match state {
                ScopeState::Current => s.current += 1,
                ScopeState::Behind => s.behind += 1,
                ScopeState::Failing => s.failing += 1,
            }
            let worst = by_scope
                .entry((&row.scope_kind, &row.scope_id))
                .or_insert(state);
            *worst = (*worst).max(state);
        }
        let count = |st: ScopeState| by_scope.values().filter(|s| **s == st).count();
        let by_source: Vec<SourceOverview> = by_source.into_values().collect();
        Overview {
            generated_at: now,
            behind_after_seconds: behind_after.as_secs(),
            scopes: by_scope.len(),
            current: count(ScopeState::Current),
            behind: count(ScopeState::Behind),
            failing: count(ScopeState::Failing),
            max_lag_seconds: by_source.iter().filter_map(|s| s.max_lag_seconds).max(),
            records: by_source.iter().map(|s| s.records).sum(),
            noun: if rows.iter().all(|r| r.scope_kind == "user") {
                "users"
            } else {
                "scopes"
            },
            by_source,
        }
    }

    /// Nothing behind, nothing failing.
    pub fn is_current(&self) -> bool {
        self.behind == 0 && self.failing == 0
    }

    /// "312 users current, 3 behind (max lag 2h), 1 failing, 1.2M records".
    pub fn summary(&self) -> String {
        if self.scopes == 0 {
            return "nothing exported yet".into();
        }
        let mut out = format!("{} {} current", self.current, self.noun);
        if self.behind > 0 {
            out.push_str(&format!(", {} behind", self.behind));
        }
        if let Some(lag) = self.max_lag_seconds {
            out.push_str(&format!(" (max lag {})", human_secs(lag)));
        }
        if self.failing > 0 {
            out.push_str(&format!(", {} failing", self.failing));
        }
        out.push_str(&format!(", {} records", human_count(self.records)));
        out
    }
}

pub fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// 950, 12.3k, 1.2M: a count an operator reads at a glance.
pub fn human_count(n: i64) -> String {
    let f = n as f64;
    match n.abs() {
        a if a < 1_000 => n.to_string(),
        a if a < 1_000_000 => format!("{:.1}k", f / 1e3),
        a if a < 1_000_000_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Checkpoint;

    pub(crate) fn row(
        source: &str,
        id: &str,
        lag_s: Option<i64>,
        error: bool,
        records: i64,
        now: DateTime<Utc>,
    ) -> StatusRow {
        let success = now - chrono::Duration::minutes(30);
        StatusRow {
            source: source.into(),
            scope_kind: "user".into(),
            scope_id: id.into(),
            label: Some(format!("{id}@contoso.com")),
            gone_at: None,
            checkpoint: Checkpoint {
                source: source.into(),
                scope_id: id.into(),
                watermark: lag_s.map(|s| now - chrono::Duration::seconds(s)),
                last_lookback_at: None,
                last_success_at: Some(success),
                last_error: error.then(|| "Graph 403: licence missing".to_string()),
                last_error_at: error.then(|| now - chrono::Duration::minutes(1)),
                records_archived: records,
                windows_completed: 1,
            },
            catalogued: records,
        }
    }

    #[test]
    fn states_and_summary() {
        let now = Utc::now();
        let rows = vec![
            row("copilot", "a", Some(60), false, 1_000_000, now),
            row("copilot", "b", Some(7_200), false, 150_000, now),
            row("copilot", "c", Some(60), true, 50_000, now),
            row("copilot", "d", None, false, 0, now),
        ];
        let o = Overview::build(&rows, now, Duration::from_secs(1_800));
        assert_eq!((o.current, o.behind, o.failing), (1, 2, 1));
        assert!(!o.is_current());
        assert_eq!(
            o.summary(),
            "1 users current, 2 behind (max lag 2h), 1 failing, 1.2M records"
        );
    }

    #[test]
    fn a_scope_takes_its_worst_source() {
        let now = Utc::now();
        let rows = vec![
            row("copilot", "a", Some(60), false, 1, now),
            row("chats", "a", Some(60), true, 1, now),
        ];
        let o = Overview::build(&rows, now, Duration::from_secs(1_800));
        assert_eq!((o.scopes, o.current, o.failing), (1, 0, 1));
        assert_eq!(o.by_source.len(), 2);
    }

    #[test]
    fn an_error_older_than_the_last_success_is_healed() {
        let now = Utc::now();
        let mut r = row("copilot", "a", Some(60), true, 1, now);
        r.checkpoint.last_error_at = Some(now - chrono::Duration::hours(2));
        assert_eq!(
            row_state(&r, now, Duration::from_secs(600)),
            ScopeState::Current
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(950), "950");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_secs(90), "90s");
        assert_eq!(human_secs(3 * 86_400), "3d");
    }
}
