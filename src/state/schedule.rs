//! Poll schedules per (source, scope) and the query for the scopes a pass must poll
//! (migration 0007; the policy is `scheduler::due`).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use super::scopes::scope_row;
use super::types::RowReader;
use super::{ScopeRow, StateDb, StateError};

/// When one (source, scope) is next polled. Instants are epoch ms, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollSchedule {
    pub source: String,
    pub scope_id: String,
    /// Start of the pass that last polled the scope successfully.
    pub polled_at: i64,
    pub interval_ms: i64,
    pub next_due_at: i64,
    /// Start of the last pass whose poll found new record versions.
    pub last_new_at: Option<i64>,
}

/// The two cut-offs of one pass (epoch ms): a scope is due when its scheduled time is at most
/// `scheduled_by`, or when it was last polled before `polled_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollHorizon {
    pub scheduled_by: i64,
    pub polled_before: i64,
}

/// The scopes of one source a pass polls, and how many it leaves for later.
#[derive(Debug, Clone, Default)]
pub struct DueScopes {
    pub due: Vec<ScopeRow>,
    /// Active scopes not due in this pass.
    pub not_due: u64,
}

/// Stores a schedule unless a later poll's is there: $1 source, $2 scope, $3 polled_at,
/// $4 interval_ms, $5 next_due_at, $6 last_new_at.
pub(super) const SET_SCHEDULE: &str =
    "INSERT INTO poll_schedule (source, scope_id, polled_at, interval_ms, next_due_at, \
       last_new_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (source, scope_id) DO UPDATE SET \
       polled_at = excluded.polled_at, interval_ms = excluded.interval_ms, \
       next_due_at = excluded.next_due_at, last_new_at = excluded.last_new_at \
     WHERE poll_schedule.polled_at <= excluded.polled_at";

pub(super) const SCHEDULE_COLUMNS: &str =
    "source, scope_id, polled_at, interval_ms, next_due_at, last_new_at";

impl StateDb {
    /// The active scopes of `kind` that `source` must poll now: departed ones (final sweep),
    /// ones never exported or whose last attempt failed, ones without a schedule, and ones
    /// the schedule or the staleness bound makes due. The same rules as
    /// `scheduler::due::Policy::decide` without notifications; filtered here so that a pass
    /// over a mostly idle tenant reads few rows.
    pub async fn due_scopes(
        &self,
        kind: &str,
        source: &str,
        h: PollHorizon,
    ) -> Result<DueScopes, StateError> {
        const OP: &str = "due_scopes";
        let columns = super::scopes::prefixed_scope_columns("s");
        let sql = format!(
            "SELECT {columns} FROM scopes s \
             LEFT JOIN checkpoints c ON c.source = $2 AND c.scope_id = s.id \
             LEFT JOIN poll_schedule p ON p.source = $2 AND p.scope_id = s.id \
             WHERE s.kind = $1 AND (s.gone_at IS NULL OR s.final_sweep_at IS NULL) \
               AND (s.gone_at IS NOT NULL \
                 OR c.last_success_at IS NULL \
                 OR (c.last_error_at IS NOT NULL AND c.last_error_at >= c.last_success_at) \
                 OR p.polled_at IS NULL \
                 OR p.polled_at < $4 \
                 OR p.next_due_at <= $3) \
             ORDER BY {}",
            super::scopes::pass_order(kind, "c.records_archived")
        );
        let query = (sqlx::query(&sql).bind(kind).bind(source))
            .bind(h.scheduled_by)
            .bind(h.polled_before);
        let due = self.read_rows(query, OP, scope_row).await?;
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM scopes WHERE kind = $1 \
             AND (gone_at IS NULL OR final_sweep_at IS NULL)",
        )
        .bind(kind)
        .fetch_one(self.pool())
        .await
        .map_err(StateError::op(OP))?;
        let not_due = u64::try_from(active)
            .unwrap_or(0)
            .saturating_sub(due.len() as u64);
        Ok(DueScopes { due, not_due })
    }

    /// The schedule of one (source, scope), if a poll ever wrote one.
    pub async fn poll_schedule(
        &self,
        source: &str,
        scope_id: &str,
    ) -> Result<Option<PollSchedule>, StateError> {
        const OP: &str = "poll_schedule";
        let ids = [scope_id.to_owned()];
        let rows = (self.scope_rows(OP, "poll_schedule", SCHEDULE_COLUMNS, source, &ids)).await?;
        rows.first().map(|r| schedule_row(r, OP)).transpose()
    }

    /// Every schedule (for `status`).
    pub async fn poll_schedules(&self) -> Result<Vec<PollSchedule>, StateError> {
        const OP: &str = "poll_schedules";
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM poll_schedule ORDER BY source, scope_id");
        let query = sqlx::query(&sql);
        self.read_rows(query, OP, schedule_row).await
    }

    /// Stores a schedule, unless one from a later poll is already there (a replica or a
    /// catch-up pass that polled the scope after this one).
    pub async fn set_poll_schedule(&self, s: &PollSchedule) -> Result<(), StateError> {
        let _slot = self.writer_slot().await;
        sqlx::query(SET_SCHEDULE)
            .bind(s.source.as_str())
            .bind(s.scope_id.as_str())
            .bind(s.polled_at)
            .bind(s.interval_ms)
            .bind(s.next_due_at)
            .bind(s.last_new_at)
            .execute(self.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("set_poll_schedule"))
    }
}

pub(super) fn schedule_row(row: &AnyRow, op: &'static str) -> Result<PollSchedule, StateError> {
    let r = RowReader::new(row, op);
    Ok(PollSchedule {
        source: r.string("source")?,
        scope_id: r.string("scope_id")?,
        polled_at: r.int("polled_at")?,
        interval_ms: r.int("interval_ms")?,
        next_due_at: r.int("next_due_at")?,
        last_new_at: r.opt_int("last_new_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::due::{Facts, Policy};
    use crate::state::{testing, ScopeRecord};
    use chrono::{TimeZone, Utc};
    use std::collections::BTreeSet;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    /// Each case: (scope, departed, last success, last error, schedule as (polled_at,
    /// next_due_at)), minutes relative to the pass start.
    type Case = (
        &'static str,
        bool,
        Option<i64>,
        Option<i64>,
        Option<(i64, i64)>,
    );
    const CASES: &[Case] = &[
        ("never", false, None, None, None),
        ("error-only", false, None, Some(-5), None),
        ("unscheduled", false, Some(-30), None, None),
        ("waiting", false, Some(-30), None, Some((-30, 60))),
        ("soft-due", false, Some(-30), None, Some((-30, 3))),
        ("soft-next-pass", false, Some(-30), None, Some((-30, 4))),
        // Written under a longer bound than the current one (a reload shortened it).
        ("hard-due", false, Some(-61), None, Some((-61, 600))),
        ("hard-not-yet", false, Some(-45), None, Some((-45, 600))),
        ("failed", false, Some(-30), Some(-10), Some((-30, 60))),
        ("recovered", false, Some(-10), Some(-30), Some((-10, 60))),
        ("departed", true, Some(-30), None, Some((-30, 60))),
    ];

    async fn load_cases(db: &StateDb, pass: i64) {
        let present: Vec<ScopeRecord> = CASES
            .iter()
            .filter(|c| !c.1)
            .map(|c| ScopeRecord {
                id: c.0.into(),
                label: None,
            })
            .collect();
        let first = Utc
            .timestamp_millis_opt(pass - 100 * MIN)
            .single()
            .expect("t");
        let departed: Vec<ScopeRecord> = CASES
            .iter()
            .map(|c| ScopeRecord {
                id: c.0.into(),
                label: None,
            })
            .collect();
        db.sync_scopes("user", &departed, first)
            .await
            .expect("sync");
        let now = Utc
            .timestamp_millis_opt(pass - 90 * MIN)
            .single()
            .expect("t");
        db.sync_scopes("user", &present, now).await.expect("sync");
        for (id, _, ok, err, sched) in CASES {
            sqlx::query(
                "INSERT INTO checkpoints (source, scope_id, scope_kind, last_success_at, \
                 last_error_at) VALUES ('copilot', $1, 'user', $2, $3)",
            )
            .bind(*id)
            .bind(ok.map(|m| pass + m * MIN))
            .bind(err.map(|m| pass + m * MIN))
            .execute(db.pool())
            .await
            .expect("checkpoint");
            if let Some((polled, due)) = sched {
                db.set_poll_schedule(&schedule(id, pass, *polled, *due))
                    .await
                    .expect("schedule");
            }
        }
    }

    fn schedule(id: &str, pass: i64, polled: i64, due: i64) -> PollSchedule {
        PollSchedule {
            source: "copilot".into(),
            scope_id: id.into(),
            polled_at: pass + polled * MIN,
            interval_ms: (due - polled) * MIN,
            next_due_at: pass + due * MIN,
            last_new_at: None,
        }
    }

    /// The due query and `Policy::decide` agree on every case.
    async fn the_query_agrees_with_the_policy(db: StateDb) {
        let pass = 1_700_000_000_000;
        load_cases(&db, pass).await;
        // Base 15 min, bound 1 h: soft cut at +3.75 min, hard cut at polled_at < pass - 45 min.
        let policy = Policy::new(Duration::from_secs(900), Duration::from_secs(3600), 1.5);
        let got = db
            .due_scopes("user", "copilot", policy.horizon(pass))
            .await
            .expect("due");
        let got_ids: BTreeSet<&str> = got.due.iter().map(|r| r.id.as_str()).collect();
        let expected: BTreeSet<&str> = CASES
            .iter()
            .filter(|(id, departed, ok, err, sched)| {
                let stored = sched.map(|(p, d)| schedule(id, pass, p, d));
                let f = Facts {
                    departed: *departed,
                    last_success_at: ok.map(|m| pass + m * MIN),
                    last_error_at: err.map(|m| pass + m * MIN),
                    schedule: stored.as_ref(),
                    notified: false,
                };
                policy.decide(&f, pass).is_due()
            })
            .map(|c| c.0)
            .collect();
        assert_eq!(got_ids, expected);
        let waiting = BTreeSet::from(["waiting", "soft-next-pass", "hard-not-yet", "recovered"]);
        assert_eq!(
            expected,
            CASES
                .iter()
                .map(|c| c.0)
                .filter(|id| !waiting.contains(id))
                .collect()
        );
        assert_eq!(got.not_due, waiting.len() as u64);
        // A departed scope whose final sweep is done is no longer active at all.
        let at = Utc.timestamp_millis_opt(pass).single().expect("t");
        db.finish_final_sweep("user", "departed", at)
            .await
            .expect("swept");
        let got = db
            .due_scopes("user", "copilot", policy.horizon(pass))
            .await
            .expect("due");
        assert!(got.due.iter().all(|r| r.id != "departed"));
        assert_eq!(got.not_due, waiting.len() as u64);
    }

    /// A schedule from an earlier poll never replaces a later one.
    async fn older_schedules_do_not_overwrite_newer(db: StateDb) {
        let later = schedule("u", 0, 10, 20);
        db.set_poll_schedule(&later).await.expect("later");
        db.set_poll_schedule(&schedule("u", 0, 5, 6))
            .await
            .expect("earlier");
        let stored = db.poll_schedule("copilot", "u").await.expect("read");
        assert_eq!(stored, Some(later));
        assert_eq!(db.poll_schedules().await.expect("all").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_query_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        the_query_agrees_with_the_policy(testing::sqlite_in(dir.path()).await.expect("db")).await;
        older_schedules_do_not_overwrite_newer(
            testing::sqlite_in(&dir.path().join("b")).await.expect("db"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn due_query_postgres() {
        for run in 0..2 {
            let db = match testing::fresh_postgres().await {
                Ok(Some(db)) => db,
                Ok(None) => return eprintln!("skipping PostgreSQL variant"),
                Err(e) => panic!("PostgreSQL state database: {e}"),
            };
            if run == 0 {
                the_query_agrees_with_the_policy(db).await;
            } else {
                older_schedules_do_not_overwrite_newer(db).await;
            }
        }
    }
}
