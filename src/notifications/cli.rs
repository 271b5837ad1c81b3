//! The operator's view of change notifications, from the state database (no Graph call):
//! `m365-archiver subscriptions list` and the one line in `status`.

use super::queue::{NotificationQueue, SubscriptionRow};
use super::subscriptions::{status, PLACEHOLDER};
use crate::config::Config;
use crate::state::{StateDb, StateError};
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// `subscriptions list`: the table, or JSON.
pub async fn list(state: &StateDb, json: bool) -> Result<String, StateError> {
    let rows = NotificationQueue::new(state.clone())
        .subscriptions()
        .await?;
    if json {
        return Ok(serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n");
    }
    Ok(table(&rows, Utc::now()))
}

fn table(rows: &[SubscriptionRow], now: DateTime<Utc>) -> String {
    if rows.is_empty() {
        return "no subscriptions (notifications off, or the daemon has not created them yet)\n"
            .into();
    }
    let mut out = format!(
        "{:<38} {:<38} {:<11} {:<12} {:<28} {}\n",
        "ID", "USER", "EXPIRES IN", "STATUS", "LAST EVENT", "LAST NOTIFICATION"
    );
    for r in rows {
        let id = if r.id.starts_with(PLACEHOLDER) {
            "-"
        } else {
            &r.id
        };
        let event = match (&r.last_event, r.last_event_at) {
            (Some(e), Some(at)) => format!("{} ({} ago)", first_words(e), ago(now, at)),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<38} {:<38} {:<11} {:<12} {:<28} {}",
            id,
            r.user_id.as_deref().unwrap_or("(tenant)"),
            expires_in(now, r),
            r.status,
            event,
            r.last_notification_at
                .map(|t| format!("{} ago", ago(now, t)))
                .unwrap_or_else(|| "-".into()),
        );
        let _ = writeln!(out, "  resource: {}", r.resource);
    }
    out
}

fn first_words(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

fn expires_in(now: DateTime<Utc>, r: &SubscriptionRow) -> String {
    if r.expires_at == 0 {
        return "-".into();
    }
    let left = r.expires_at - now.timestamp_millis();
    if left <= 0 {
        "expired".into()
    } else {
        span(left)
    }
}

fn ago(now: DateTime<Utc>, at_ms: i64) -> String {
    span((now.timestamp_millis() - at_ms).max(0))
}

/// `2d 3h`, `4h 10m`, `12m`, `40s`.
fn span(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// The `change notifications:` line of `status`.
pub async fn status_line(config: &Config, state: &StateDb) -> String {
    let Some(cfg) = &config.notifications else {
        return "off (polling only)".into();
    };
    let queue = NotificationQueue::new(state.clone());
    let (rows, pending) = match (queue.subscriptions().await, queue.pending().await) {
        (Ok(rows), Ok(pending)) => (rows, pending),
        (Err(e), _) | (_, Err(e)) => return format!("state unreadable: {e}"),
    };
    summary(
        &rows,
        pending,
        cfg.mode.as_str(),
        cfg.sweep_interval,
        Utc::now(),
    )
}

fn summary(
    rows: &[SubscriptionRow],
    pending: i64,
    mode: &str,
    sweep: std::time::Duration,
    now: DateTime<Utc>,
) -> String {
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    let (active, failed) = (count(status::ACTIVE), count(status::FAILED));
    let other = rows.len() - active - failed;
    let next_expiry = rows
        .iter()
        .filter(|r| r.status == status::ACTIVE)
        .map(|r| r.expires_at)
        .min()
        .map(|t| span((t - now.timestamp_millis()).max(0)))
        .unwrap_or_else(|| "-".into());
    let last = rows
        .iter()
        .filter_map(|r| r.last_notification_at)
        .max()
        .map(|t| format!("{} ago", ago(now, t)))
        .unwrap_or_else(|| "never".into());
    let verdict = if active > 0 && failed == 0 && other == 0 {
        "ok"
    } else {
        "DEGRADED"
    };
    format!(
        "{verdict}, {mode} mode: {} subscription(s) ({active} active, {failed} failed, {other} \
         other), next expiry in {next_expiry}, last notification {last}, {pending} queued; \
         Copilot polled every {} while healthy",
        rows.len(),
        span(i64::try_from(sweep.as_millis()).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, user: Option<&str>, status: &str, expires_at: i64) -> SubscriptionRow {
        SubscriptionRow {
            id: id.into(),
            resource: "/copilot/interactionHistory/getAllEnterpriseInteractions".into(),
            user_id: user.map(Into::into),
            expires_at,
            created_at: 0,
            renewed_at: None,
            status: status.into(),
            last_event: Some("renewed".into()),
            last_event_at: Some(expires_at - 3_600_000),
            last_notification_at: None,
        }
    }

    #[test]
    fn table_and_summary_read_well() {
        let now = Utc::now();
        let t = now.timestamp_millis();
        let rows = vec![
            row(
                "sub-1",
                Some("u1"),
                status::ACTIVE,
                t + 26 * 3_600_000 + 60_000,
            ),
            row("failed:u2", Some("u2"), status::FAILED, 0),
        ];
        let text = table(&rows, now);
        assert!(text.contains("sub-1") && text.contains("1d 2h"), "{text}");
        assert!(
            text.contains("failed") && text.contains("resource: /copilot"),
            "{text}"
        );
        let line = summary(
            &rows,
            3,
            "users",
            std::time::Duration::from_secs(6 * 3600),
            now,
        );
        assert!(
            line.starts_with("DEGRADED, users mode: 2 subscription(s) (1 active, 1 failed"),
            "{line}"
        );
        assert!(
            line.contains("3 queued") && line.contains("every 6h 0m"),
            "{line}"
        );
        assert_eq!(span(40_000), "40s");
        assert_eq!(span(12 * 60_000), "12m");
    }
}
