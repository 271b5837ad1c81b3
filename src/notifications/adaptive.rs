//! Adaptive polling: while notifications deliver a user's interactions, polling that user can
//! wait `notifications.sweep_interval` instead of its due time. This is one input of the poll
//! schedule (`scheduler::due`, `Facts::notified`): a daemon pass polls the scopes due by
//! activity and staleness bound, less the users skipped here. Polling stays the
//! completeness backstop, so a user is skipped only when notifications provably cover
//! everything after the point polling has reached (the watermark):
//!
//! - `users` mode (in `tenant` mode an aiResponse cannot be attributed, so nothing is skipped),
//!   the receiver listening, and the queue draining (its oldest item younger than 5 minutes);
//! - the user's subscription active, not close to expiry, and created before the watermark;
//! - no trouble since the watermark: no catch-up request (missed, removed, failed create, an
//!   item given up, a restart) and no `missed`/`subscriptionRemoved` on the subscription;
//! - the last poll succeeded within `sweep_interval`, with no error since.

use super::queue::SubscriptionRow;
use super::settings::SubscriptionMode;
use super::subscriptions::{status, PLACEHOLDER};
use crate::scheduler::FoundNew;
use crate::sources::SourceKind;
use crate::state::{ScopeRow, StateDb, StateError};
use sqlx::Row;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// The queue counts as draining while its oldest item is younger than this.
const QUEUE_STALL: Duration = Duration::from_secs(300);

/// The part of a Copilot checkpoint the decision needs (epoch ms).
#[derive(Clone, Debug, Default)]
pub struct CopilotCheckpoint {
    pub scope_id: String,
    pub watermark: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error_at: Option<i64>,
}

/// What is known about notification health now.
#[derive(Clone, Copy, Debug)]
pub struct Health<'a> {
    pub mode: SubscriptionMode,
    pub receiver_up: bool,
    pub oldest_pending_ms: Option<i64>,
    pub last_trouble_ms: Option<i64>,
    pub subscriptions: &'a [SubscriptionRow],
    pub sweep_interval: Duration,
    pub renew_before: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Health<'_> {
    /// Notifications are flowing for the deployment as a whole.
    pub fn healthy(&self, now_ms: i64) -> bool {
        self.mode == SubscriptionMode::Users
            && self.receiver_up
            && self
                .oldest_pending_ms
                .is_none_or(|t| now_ms - t < ms(QUEUE_STALL))
    }

    /// Active subscriptions not close to expiry, by user.
    fn live_by_user(&self, now_ms: i64) -> HashMap<&str, &SubscriptionRow> {
        let margin = ms(self.renew_before) / 2;
        self.subscriptions
            .iter()
            .filter(|s| s.status == status::ACTIVE && !s.id.starts_with(PLACEHOLDER))
            .filter(|s| s.expires_at - now_ms > margin)
            .filter_map(|s| s.user_id.as_deref().map(|u| (u, s)))
            .collect()
    }
}

/// Users whose Copilot poll may be skipped now.
pub fn skippable(h: &Health, checkpoints: &[CopilotCheckpoint], now_ms: i64) -> BTreeSet<String> {
    if !h.healthy(now_ms) {
        return BTreeSet::new();
    }
    let live = h.live_by_user(now_ms);
    checkpoints
        .iter()
        .filter(|c| {
            live.get(c.scope_id.as_str())
                .is_some_and(|s| covered(c, s, h, now_ms))
        })
        .map(|c| c.scope_id.clone())
        .collect()
}

fn covered(c: &CopilotCheckpoint, sub: &SubscriptionRow, h: &Health, now_ms: i64) -> bool {
    let (Some(mark), Some(ok)) = (c.watermark, c.last_success_at) else {
        return false;
    };
    let lost_since = |at: Option<i64>| at.is_some_and(|t| t > mark);
    let event_trouble = matches!(
        sub.last_event.as_deref(),
        Some("missed") | Some("subscriptionRemoved")
    ) && lost_since(sub.last_event_at);
    c.last_error_at.is_none_or(|e| e < ok)
        && now_ms - ok < ms(h.sweep_interval)
        && sub.created_at <= mark
        && !lost_since(h.last_trouble_ms)
        && !event_trouble
}

/// A user whose poll stored interactions that notifications should have brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub user_id: String,
    /// Versions the poll stored for the first time.
    pub new: u64,
    /// The earliest `createdDateTime` among them (epoch ms).
    pub earliest_ms: i64,
}

/// Gaps in notifications a pass revealed: a Copilot poll stored, for the first time, an
/// interaction created while the user's subscription was live, already `grace` old when the
/// pass began, and newer than the latest trouble already known (that one has had its
/// catch-up). Judged only while notifications were healthy before the pass and unfiltered (a
/// `$filter` leaves interactions out on purpose). Conservative: only the earliest new
/// interaction of each user is looked at, so an old straggler hides newer losses from this
/// check (the sweep still archives them).
pub fn gaps(
    h: &Health,
    found: &[FoundNew],
    filtered: bool,
    grace: Duration,
    pass_start_ms: i64,
) -> Vec<Gap> {
    if filtered || !h.healthy(pass_start_ms) {
        return Vec::new();
    }
    let live = h.live_by_user(pass_start_ms);
    let settled = pass_start_ms.saturating_sub(ms(grace));
    found
        .iter()
        .filter(|f| f.source == SourceKind::Copilot)
        .filter_map(|f| {
            let earliest = f.earliest?.timestamp_millis();
            let sub = live.get(f.scope_id.as_str())?;
            let unexplained = h.last_trouble_ms.is_none_or(|t| earliest > t);
            (sub.created_at <= earliest && earliest <= settled && unexplained).then(|| Gap {
                user_id: f.scope_id.clone(),
                new: f.new,
                earliest_ms: earliest,
            })
        })
        .collect()
}

/// Which Copilot users a regular pass leaves out.
#[derive(Clone, Debug, Default)]
pub struct PollPlan {
    pub skip: BTreeSet<String>,
}

impl PollPlan {
    /// The pass filter: everything except the skipped users' Copilot polls (never a departed
    /// user's final sweep).
    pub fn keep(&self, kind: SourceKind, row: &ScopeRow) -> bool {
        !(kind == SourceKind::Copilot && row.gone_at.is_none() && self.skip.contains(&row.id))
    }
}

/// The Copilot checkpoints, for the decision.
pub async fn copilot_checkpoints(state: &StateDb) -> Result<Vec<CopilotCheckpoint>, StateError> {
    let op = StateError::op("copilot_checkpoints");
    let rows = sqlx::query(
        "SELECT scope_id, watermark, last_success_at, last_error_at FROM checkpoints \
         WHERE source = $1",
    )
    .bind(SourceKind::Copilot.as_str())
    .fetch_all(state.pool())
    .await
    .map_err(&op)?;
    rows.iter()
        .map(|r| {
            Ok(CopilotCheckpoint {
                scope_id: r.try_get("scope_id").map_err(&op)?,
                watermark: r.try_get("watermark").map_err(&op)?,
                last_success_at: r.try_get("last_success_at").map_err(&op)?,
                last_error_at: r.try_get("last_error_at").map_err(&op)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const MIN: i64 = 60_000;

    fn sub(user: &str, created_at: i64) -> SubscriptionRow {
        SubscriptionRow {
            id: format!("s-{user}"),
            resource: format!(
                "/copilot/users/{user}/interactionHistory/getAllEnterpriseInteractions"
            ),
            user_id: Some(user.into()),
            expires_at: NOW + 2 * 24 * 60 * MIN,
            created_at,
            renewed_at: None,
            status: status::ACTIVE.into(),
            last_event: None,
            last_event_at: None,
            last_notification_at: None,
        }
    }

    fn cp(user: &str, mark: i64, ok: i64) -> CopilotCheckpoint {
        CopilotCheckpoint {
            scope_id: user.into(),
            watermark: Some(mark),
            last_success_at: Some(ok),
            last_error_at: None,
        }
    }

    fn health(subs: &[SubscriptionRow]) -> Health<'_> {
        Health {
            mode: SubscriptionMode::Users,
            receiver_up: true,
            oldest_pending_ms: None,
            last_trouble_ms: None,
            subscriptions: subs,
            sweep_interval: Duration::from_secs(6 * 3600),
            renew_before: Duration::from_secs(12 * 3600),
        }
    }

    #[test]
    fn a_covered_user_is_skipped_and_each_gap_brings_polling_back() {
        let mark = NOW - 3 * MIN;
        let subs = vec![
            sub("a", mark - MIN),
            sub("b", mark + MIN),
            sub("c", mark - MIN),
        ];
        let cps = vec![
            cp("a", mark, mark + 2 * MIN),
            // Subscribed after the watermark: what lies between is not covered yet.
            cp("b", mark, mark + 2 * MIN),
            // Last poll longer ago than the sweep interval.
            cp("c", mark, NOW - 7 * 60 * MIN),
            // No subscription at all.
            cp("d", mark, mark + 2 * MIN),
        ];
        let h = health(&subs);
        assert_eq!(skippable(&h, &cps, NOW), BTreeSet::from(["a".to_string()]));

        let troubled = Health {
            last_trouble_ms: Some(mark + 1),
            ..h
        };
        assert!(
            skippable(&troubled, &cps, NOW).is_empty(),
            "trouble after the watermark"
        );
        let earlier = Health {
            last_trouble_ms: Some(mark - 1),
            ..h
        };
        assert_eq!(
            skippable(&earlier, &cps, NOW).len(),
            1,
            "trouble already swept"
        );
    }

    fn found(user: &str, earliest: i64) -> FoundNew {
        FoundNew {
            source: SourceKind::Copilot,
            scope_id: user.into(),
            new: 3,
            earliest: chrono::DateTime::from_timestamp_millis(earliest),
        }
    }

    #[test]
    fn a_poll_storing_what_notifications_should_have_brought_is_a_gap() {
        let subs = vec![sub("a", NOW - 60 * MIN), sub("b", NOW - 20 * MIN)];
        let h = health(&subs);
        let grace = Duration::from_secs(600);
        let polled = vec![
            // Created while subscribed, 15 min before the pass: lost on the way.
            found("a", NOW - 15 * MIN),
            // Created before b's subscription existed: polling's job, not a loss.
            found("b", NOW - 30 * MIN),
            // No subscription for c.
            found("c", NOW - 15 * MIN),
        ];
        let gaps = gaps(&h, &polled, false, grace, NOW);
        assert_eq!(
            gaps,
            vec![Gap {
                user_id: "a".into(),
                new: 3,
                earliest_ms: NOW - 15 * MIN
            }]
        );
        let young = [found("a", NOW - 5 * MIN)];
        assert!(
            super::gaps(&h, &young, false, grace, NOW).is_empty(),
            "younger than the grace: its notification may be on its way"
        );
        let other = FoundNew {
            source: SourceKind::Chats,
            ..found("a", NOW - 15 * MIN)
        };
        assert!(super::gaps(&h, &[other], false, grace, NOW).is_empty());
        let lost = [found("a", NOW - 15 * MIN)];
        assert!(
            super::gaps(&h, &lost, true, grace, NOW).is_empty(),
            "a $filter leaves interactions out on purpose"
        );
        let known = Health {
            last_trouble_ms: Some(NOW - 14 * MIN),
            ..h
        };
        assert!(
            super::gaps(&known, &lost, false, grace, NOW).is_empty(),
            "already explained by a catch-up asked after it"
        );
        let before = Health {
            last_trouble_ms: Some(NOW - 16 * MIN),
            ..h
        };
        assert_eq!(super::gaps(&before, &lost, false, grace, NOW).len(), 1);
        let down = Health {
            receiver_up: false,
            ..h
        };
        assert!(super::gaps(&down, &lost, false, grace, NOW).is_empty());
    }

    #[test]
    fn unhealthy_notifications_skip_nothing() {
        let mark = NOW - 3 * MIN;
        let mut subs = vec![sub("a", mark - MIN)];
        let cps = vec![cp("a", mark, mark + MIN)];
        let h = health(&subs);
        for unhealthy in [
            Health {
                receiver_up: false,
                ..h
            },
            Health {
                mode: SubscriptionMode::Tenant,
                ..h
            },
            Health {
                oldest_pending_ms: Some(NOW - 10 * MIN),
                ..h
            },
        ] {
            assert!(skippable(&unhealthy, &cps, NOW).is_empty(), "{unhealthy:?}");
        }
        subs[0].expires_at = NOW + 5 * MIN;
        assert!(
            skippable(&health(&subs), &cps, NOW).is_empty(),
            "close to expiry"
        );
        subs[0].expires_at = NOW + 2 * 24 * 60 * MIN;
        subs[0].status = status::FAILED.into();
        assert!(skippable(&health(&subs), &cps, NOW).is_empty(), "failed");
        subs[0].status = status::ACTIVE.into();
        subs[0].last_event = Some("missed".into());
        subs[0].last_event_at = Some(mark + 1);
        assert!(skippable(&health(&subs), &cps, NOW).is_empty(), "missed");
        let mut failing = cps.clone();
        failing[0].last_error_at = Some(mark + 2 * MIN);
        subs[0].last_event = None;
        assert!(
            skippable(&health(&subs), &failing, NOW).is_empty(),
            "last poll failed"
        );
    }

    #[test]
    fn the_filter_keeps_other_sources_and_departed_users() {
        let plan = PollPlan {
            skip: BTreeSet::from(["a".to_string()]),
        };
        let now = chrono::Utc::now();
        let mut row = ScopeRow {
            kind: "user".into(),
            id: "a".into(),
            label: None,
            first_seen: now,
            last_seen: now,
            gone_at: None,
            final_sweep_at: None,
        };
        assert!(!plan.keep(SourceKind::Copilot, &row));
        assert!(plan.keep(SourceKind::Chats, &row));
        row.gone_at = Some(now);
        assert!(plan.keep(SourceKind::Copilot, &row));
    }
}
