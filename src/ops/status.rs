//! `m365-archiver status`: a one-screen overview (is archiving current, totals, users behind,
//! failing users with their last error, store health, change notifications), `--user` for one
//! user's detail, `--all` for every row; `--json` for scripts.

use crate::app::{self, AppError};
use crate::config::Config;
use crate::ops::overview::{behind_threshold, human_count, row_state, Overview, ScopeState};
use crate::scheduler::due::{Decision, Facts, Policy, Wait};
use crate::state::{PollSchedule, ReplicaRow, StateDb, StatusRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

/// How many failing and behind scopes the overview lists (one screen).
const LIST_LIMIT: usize = 10;
/// Up to this many rows, the overview also prints the full table.
const TABLE_LIMIT: usize = 40;
/// A store check that takes longer than this counts as unhealthy.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `status` shows; `--json` prints it (the `rows` of `StatusReport` stay at the top
/// level for existing scripts).
#[derive(Debug, Serialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub report: StatusReport,
    pub overview: Overview,
    pub store: StoreHealth,
    /// Change notifications (subscriptions); polling is the completeness backstop either way.
    pub notifications: String,
    /// Archiver processes heartbeating now; they split the tenant's rate budget evenly.
    pub replicas: Vec<ReplicaRow>,
    #[serde(skip)]
    raw: Vec<StatusRow>,
}

#[derive(Debug, Serialize)]
pub struct StoreHealth {
    pub location: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// Reads the checkpoints and checks the store.
pub async fn gather(config: &Config, state: &StateDb) -> Result<StatusView, AppError> {
    let rows = state.status().await?;
    let now = Utc::now();
    let live_since = now - chrono::Duration::from_std(crate::replicas::TTL).unwrap_or_default();
    let replicas = state.live_replicas(live_since).await?;
    let mut report = StatusReport::build(rows.clone(), now);
    let policy = Policy::from_config(&config.export);
    let schedules = state.poll_schedules().await?;
    with_schedules(&mut report.rows, schedules, &policy, now.timestamp_millis());
    let interval = crate::notifications::runtime::behind_interval(config);
    let behind_after = behind_threshold(interval, config.export.settle_lag);
    let store = app::open_store(&config.store);
    let check = tokio::time::timeout(STORE_CHECK_TIMEOUT, store.check()).await;
    let health = StoreHealth {
        location: store.describe(),
        ok: matches!(check, Ok(Ok(()))),
        error: match check {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 10s".into()),
        },
    };
    Ok(StatusView {
        overview: Overview::build(&rows, now, behind_after),
        report,
        store: health,
        notifications: crate::notifications::cli::status_line(config, state).await,
        replicas,
        raw: rows,
    })
}

/// Prints the view; the exit code is 1 when `--user` matches nothing.
pub fn print(view: &StatusView, json: bool, user: Option<&str>, all: bool) -> Result<u8, AppError> {
    if let Some(user) = user {
        let rows = view.user_rows(user);
        if rows.is_empty() {
            eprintln!("no scope matches \"{user}\" (give a user id or UPN as `status` lists them)");
            return Ok(1);
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
        } else {
            print!("{}", view.render_user(&rows));
        }
        return Ok(0);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(view).unwrap_or_default());
    } else {
        print!("{}", view.render(all));
    }
    Ok(0)
}

impl StatusView {
    /// Rows of one scope, matched by id or label (UPN), case-insensitively.
    pub fn user_rows(&self, user: &str) -> Vec<&StatusLine> {
        let matches = |r: &&StatusLine| {
            r.scope_id.eq_ignore_ascii_case(user)
                || r.label
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(user))
        };
        self.report.rows.iter().filter(matches).collect()
    }

    pub fn render(&self, all: bool) -> String {
        let mut out = String::new();
        let o = &self.overview;
        let verdict = if o.scopes == 0 {
            "EMPTY"
        } else if o.is_current() {
            "CURRENT"
        } else {
            "NOT CURRENT"
        };
        let _ = writeln!(out, "archive {verdict}: {}", o.summary());
        out.push_str(&self.report.headline());
        let _ = writeln!(
            out,
            "store: {} ({})",
            if self.store.ok { "ok" } else { "UNAVAILABLE" },
            self.store.error.as_deref().unwrap_or(&self.store.location)
        );
        let _ = writeln!(out, "change notifications: {}", self.notifications);
        let _ = writeln!(out, "{}", replicas_line(&self.replicas));
        for s in &o.by_source {
            let _ = writeln!(
                out,
                "  {:<11} {} scope(s): {} current, {} behind, {} failing, {} departed; {} records",
                s.source,
                s.scopes,
                s.current,
                s.behind,
                s.failing,
                s.departed,
                human_count(s.records)
            );
        }
        self.render_lists(&mut out);
        if all || self.report.rows.len() <= TABLE_LIMIT {
            out.push('\n');
            out.push_str(&self.report.table());
        } else {
            let _ = writeln!(
                out,
                "\n{} rows: `status --all` lists them, `status --user UPN` shows one user",
                self.report.rows.len()
            );
        }
        out
    }

    fn render_lists(&self, out: &mut String) {
        let behind_after = Duration::from_secs(self.overview.behind_after_seconds);
        let now = self.report.generated_at;
        let mut failing: Vec<&StatusRow> = Vec::new();
        let mut behind: Vec<&StatusRow> = Vec::new();
        for r in &self.raw {
            match row_state(r, now, behind_after) {
                ScopeState::Failing => failing.push(r),
                ScopeState::Behind => behind.push(r),
                ScopeState::Current => {}
            }
        }
        if !failing.is_empty() {
            let _ = writeln!(
                out,
                "\nfailing ({} shown of {}):",
                failing.len().min(LIST_LIMIT),
                failing.len()
            );
            for r in failing.iter().take(LIST_LIMIT) {
                let _ = writeln!(
                    out,
                    "  {:<9} {:<38} since {}: {}",
                    r.source,
                    name(r),
                    stamp(r.checkpoint.last_error_at),
                    r.checkpoint.last_error.as_deref().unwrap_or("")
                );
            }
        }
        if !behind.is_empty() {
            behind.sort_by_key(|r| r.checkpoint.watermark);
            let _ = writeln!(
                out,
                "\nbehind, most first ({} shown of {}):",
                behind.len().min(LIST_LIMIT),
                behind.len()
            );
            for r in behind.iter().take(LIST_LIMIT) {
                let _ = writeln!(
                    out,
                    "  {:<9} {:<38} watermark {}",
                    r.source,
                    name(r),
                    stamp(r.checkpoint.watermark)
                );
            }
        }
    }

    pub fn render_user(&self, rows: &[&StatusLine]) -> String {
        let mut out = String::new();
        for r in rows {
            let _ = writeln!(
                out,
                "{} ({}) / {}",
                r.label.as_deref().unwrap_or("-"),
                r.scope_id,
                r.source
            );
            let fields = [
                (
                    "state",
                    if is_failing(r) {
                        "FAILING".to_string()
                    } else {
                        "ok".to_string()
                    },
                ),
                ("watermark", stamp(r.watermark)),
                (
                    "lag",
                    r.lag_seconds.map(human_secs).unwrap_or_else(|| "-".into()),
                ),
                ("records archived", r.records_archived.to_string()),
                ("windows completed", r.windows_completed.to_string()),
                ("last success", stamp(r.last_success_at)),
                ("last error at", stamp(r.last_error_at)),
                (
                    "last error",
                    r.last_error.clone().unwrap_or_else(|| "-".into()),
                ),
                ("departed", stamp(r.departed_at)),
                (
                    "next poll",
                    r.next_poll_at
                        .map_or_else(|| "next pass".into(), |t| stamp(Some(t))),
                ),
                (
                    "poll interval",
                    r.poll_interval_s
                        .map(human_secs)
                        .unwrap_or_else(|| "-".into()),
                ),
            ];
            for (k, v) in fields {
                let _ = writeln!(out, "  {k:<18} {v}");
            }
        }
        out
    }
}

/// `replicas: 2 live, each at 1/2 of the tenant's rate budget (host pid 12, host pid 34)`;
/// idle replicas (nothing to send) are not counted in the share.
fn replicas_line(replicas: &[ReplicaRow]) -> String {
    if replicas.is_empty() {
        return "replicas: none running".into();
    }
    let who: Vec<String> = replicas
        .iter()
        .map(|r| {
            let idle = if r.is_idle() { ", idle" } else { "" };
            format!("{} pid {}{idle}", r.host, r.pid)
        })
        .collect();
    let active = replicas.iter().filter(|r| !r.is_idle()).count();
    let share = match (active, replicas.len() - active) {
        (0, _) => "all idle".to_string(),
        (n, 0) => format!("each at 1/{n} of the tenant's rate budget"),
        (n, idle) => format!("{idle} idle, each active one at 1/{n} of the tenant's rate budget"),
    };
    format!(
        "replicas: {} live, {share} ({})",
        replicas.len(),
        who.join(", ")
    )
}

fn name(r: &StatusRow) -> String {
    r.label.clone().unwrap_or_else(|| r.scope_id.clone())
}

fn stamp(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

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
    /// When the daemon polls it next (`scheduler::due`); None: at the next pass.
    pub next_poll_at: Option<DateTime<Utc>>,
    /// The schedule's current interval in seconds (None before its first poll).
    pub poll_interval_s: Option<i64>,
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

    /// The overview, then every row (small tenants, the demo).
    pub fn render(&self) -> String {
        let mut out = self.headline();
        out.push_str(&self.table());
        out
    }

    /// "12 scope(s), 0 failing, 340 record version(s) archived, max lag 3m".
    pub fn headline(&self) -> String {
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
        }
        out
    }

    /// One line per (source, scope).
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.rows.is_empty() {
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
        next_poll_at: None,
        poll_interval_s: None,
    }
}

/// Fills in each row's next poll from its schedule, as the daemon's next pass would judge it
/// (change notifications may stretch a Copilot poll further; `status` cannot see that).
fn with_schedules(
    rows: &mut [StatusLine],
    schedules: Vec<PollSchedule>,
    policy: &Policy,
    now: i64,
) {
    let mut by_key: HashMap<(String, String), PollSchedule> = schedules
        .into_iter()
        .map(|s| ((s.source.clone(), s.scope_id.clone()), s))
        .collect();
    for r in rows {
        let schedule = by_key.remove(&(r.source.clone(), r.scope_id.clone()));
        r.poll_interval_s = schedule.as_ref().map(|s| s.interval_ms / 1000);
        let facts = Facts {
            departed: r.departed_at.is_some(),
            last_success_at: r.last_success_at.map(|t| t.timestamp_millis()),
            last_error_at: r.last_error_at.map(|t| t.timestamp_millis()),
            schedule: schedule.as_ref(),
            notified: false,
        };
        if let Decision::Wait(Wait::Until(at)) = policy.decide(&facts, now) {
            r.next_poll_at = DateTime::from_timestamp_millis(at);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::overview::Overview;
    use crate::state::Checkpoint;

    fn row(id: &str, lag_s: i64, error: Option<&str>, now: DateTime<Utc>) -> StatusRow {
        StatusRow {
            source: "copilot".into(),
            scope_kind: "user".into(),
            scope_id: id.into(),
            label: Some(format!("{id}@contoso.com")),
            gone_at: None,
            checkpoint: Checkpoint {
                source: "copilot".into(),
                scope_id: id.into(),
                watermark: Some(now - chrono::Duration::seconds(lag_s)),
                last_lookback_at: None,
                last_success_at: Some(now - chrono::Duration::hours(1)),
                last_error: error.map(str::to_string),
                last_error_at: error.map(|_| now - chrono::Duration::minutes(5)),
                records_archived: 10,
                windows_completed: 2,
            },
            catalogued: 10,
        }
    }

    fn view(rows: Vec<StatusRow>, now: DateTime<Utc>) -> StatusView {
        StatusView {
            overview: Overview::build(&rows, now, Duration::from_secs(1800)),
            report: StatusReport::build(rows.clone(), now),
            store: StoreHealth {
                location: "fs:/var/lib/m365-archiver/archive".into(),
                ok: false,
                error: Some("archive store unavailable: disk full".into()),
            },
            notifications: "not configured (polling only)".into(),
            replicas: Vec::new(),
            raw: rows,
        }
    }

    #[test]
    fn replicas_are_listed_with_their_share() {
        assert_eq!(replicas_line(&[]), "replicas: none running");
        let replica = |host: &str, pid| ReplicaRow {
            owner: format!("{host}:{pid}:abc"),
            host: host.into(),
            pid,
            node: String::new(),
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
            budget_divisor: 2,
            idle_since: None,
        };
        assert_eq!(
            replicas_line(&[replica("a", 1), replica("b", 2)]),
            "replicas: 2 live, each at 1/2 of the tenant's rate budget (a pid 1, b pid 2)"
        );
        let mut idle = replica("c", 3);
        idle.idle_since = Some(Utc::now());
        assert_eq!(
            replicas_line(&[replica("a", 1), replica("b", 2), idle.clone()]),
            "replicas: 3 live, 1 idle, each active one at 1/2 of the tenant's rate budget \
             (a pid 1, b pid 2, c pid 3, idle)"
        );
        assert_eq!(
            replicas_line(&[idle]),
            "replicas: 1 live, all idle (c pid 3, idle)"
        );
    }

    #[test]
    fn overview_names_failing_and_behind_users_and_the_store() {
        let now = Utc::now();
        let v = view(
            vec![
                row("alice", 60, None, now),
                row("bob", 60, Some("Graph 403 Forbidden: licence removed"), now),
                row("carol", 86_400, None, now),
            ],
            now,
        );
        let text = v.render(false);
        assert!(
            text.starts_with("archive NOT CURRENT: 1 users current, 1 behind"),
            "{text}"
        );
        assert!(text.contains("3 scope(s), 1 failing"), "{text}");
        assert!(
            text.contains("store: UNAVAILABLE (archive store unavailable: disk full)"),
            "{text}"
        );
        assert!(
            text.contains("bob@contoso.com") && text.contains("licence removed"),
            "{text}"
        );
        let behind = text
            .split("behind, most first")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("behind list");
        assert!(
            behind.contains("carol@contoso.com") && !behind.contains("alice"),
            "{text}"
        );
    }

    #[test]
    fn user_detail_matches_upn_case_insensitively() {
        let now = Utc::now();
        let v = view(vec![row("bob", 60, Some("Graph 403 Forbidden"), now)], now);
        let rows = v.user_rows("BOB@contoso.com");
        assert_eq!(rows.len(), 1);
        let text = v.render_user(&rows);
        assert!(
            text.contains("FAILING") && text.contains("Graph 403 Forbidden"),
            "{text}"
        );
        assert!(v.user_rows("nobody").is_empty());
    }

    #[test]
    fn user_detail_shows_the_next_poll() {
        let now = Utc::now();
        let mut v = view(
            vec![row("ann", 60, None, now), row("bob", 60, None, now)],
            now,
        );
        let at = (now - chrono::Duration::minutes(30)).timestamp_millis();
        let waiting = PollSchedule {
            source: "copilot".into(),
            scope_id: "ann".into(),
            polled_at: at,
            interval_ms: 4 * 3600 * 1000,
            next_due_at: at + 4 * 3600 * 1000,
            last_new_at: None,
        };
        let policy = Policy::new(Duration::from_secs(900), Duration::from_secs(86_400), 1.5);
        with_schedules(
            &mut v.report.rows,
            vec![waiting],
            &policy,
            now.timestamp_millis(),
        );
        let ann = v.render_user(&v.user_rows("ann"));
        let due = DateTime::from_timestamp_millis(at + 4 * 3600 * 1000);
        assert!(
            ann.contains(&format!("next poll          {}", stamp(due))),
            "{ann}"
        );
        assert!(ann.contains("poll interval      4h"), "{ann}");
        let bob = v.render_user(&v.user_rows("bob"));
        assert!(bob.contains("next poll          next pass"), "{bob}");
    }

    #[test]
    fn large_tenants_get_the_overview_without_every_row() {
        let now = Utc::now();
        let rows: Vec<StatusRow> = (0..50)
            .map(|i| row(&format!("u{i}"), 60, None, now))
            .collect();
        let v = view(rows, now);
        assert!(!v.render(false).contains("LAST ERROR"));
        assert!(v.render(true).contains("LAST ERROR"));
    }
}
