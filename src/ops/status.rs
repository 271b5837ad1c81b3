//! `m365-archiver status`: per scope and source, the watermark, how far behind now it is, what
//! was archived, and the last error; `--json` for scripts.

use crate::state::StatusRow;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    pub scopes: usize,
    pub failing: usize,
    pub records_archived: i64,
    pub max_lag_seconds: Option<i64>,
    pub rows: Vec<StatusLine>,
}

#[derive(Debug, Serialize)]
pub struct StatusLine {
    pub source: String,
    pub scope_kind: String,
    pub scope_id: String,
    pub label: Option<String>,
    pub departed_at: Option<DateTime<Utc>>,
    pub watermark: Option<DateTime<Utc>>,
    pub lag_seconds: Option<i64>,
    pub records_archived: i64,
    pub windows_completed: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl StatusReport {
    pub fn build(rows: Vec<StatusRow>, now: DateTime<Utc>) -> Self {
        let mut rows: Vec<StatusLine> = rows.into_iter().map(|r| line(r, now)).collect();
        rows.sort_by(|a, b| {
            (&a.source, a.label.as_ref().unwrap_or(&a.scope_id))
                .cmp(&(&b.source, b.label.as_ref().unwrap_or(&b.scope_id)))
        });
        StatusReport {
            generated_at: now,
            scopes: rows.len(),
            failing: rows.iter().filter(|r| is_failing(r)).count(),
            records_archived: rows.iter().map(|r| r.records_archived).sum(),
            max_lag_seconds: rows.iter().filter_map(|r| r.lag_seconds).max(),
            rows,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} scope(s), {} failing, {} record version(s) archived, max lag {}",
            self.scopes,
            self.failing,
            self.records_archived,
            self.max_lag_seconds
                .map(human_secs)
                .unwrap_or_else(|| "-".into())
        );
        if self.rows.is_empty() {
            let _ = writeln!(out, "nothing exported yet: run `m365-archiver run --once`");
            return out;
        }
        let _ = writeln!(
            out,
            "{:<9} {:<38} {:<24} {:>8} {:>9} {:<20} LAST ERROR",
            "SOURCE", "SCOPE", "WATERMARK", "LAG", "RECORDS", "LAST SUCCESS"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<9} {:<38} {:<24} {:>8} {:>9} {:<20} {}",
                r.source,
                scope_label(r),
                r.watermark
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into()),
                r.lag_seconds.map(human_secs).unwrap_or_else(|| "-".into()),
                r.records_archived,
                r.last_success_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "never".into()),
                if is_failing(r) {
                    r.last_error.as_deref().unwrap_or("")
                } else {
                    ""
                }
            );
        }
        out
    }
}

fn line(r: StatusRow, now: DateTime<Utc>) -> StatusLine {
    let cp = r.checkpoint;
    StatusLine {
        source: r.source,
        scope_kind: r.scope_kind,
        scope_id: r.scope_id,
        label: r.label,
        departed_at: r.gone_at,
        lag_seconds: cp.watermark.map(|w| (now - w).num_seconds().max(0)),
        watermark: cp.watermark,
        records_archived: cp.records_archived,
        windows_completed: cp.windows_completed,
        last_success_at: cp.last_success_at,
        last_error: cp.last_error,
        last_error_at: cp.last_error_at,
    }
}

/// An error counts while it is newer than the last success.
fn is_failing(r: &StatusLine) -> bool {
    match (r.last_error_at, r.last_success_at) {
        (Some(e), Some(s)) => e > s,
        (Some(_), None) => true,
        _ => false,
    }
}

fn scope_label(r: &StatusLine) -> String {
    let mut s = r.label.clone().unwrap_or_else(|| r.scope_id.clone());
    if r.departed_at.is_some() {
        s.push_str(" (departed)");
    }
    if s.len() > 38 {
        s.truncate(35);
        s.push_str("...");
    }
    s
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
