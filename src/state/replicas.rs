//! The replica registry: one row per running archiver process, rewritten by its heartbeat, so
//! that replicas sharing one database know how many of them split the tenant's Graph rate
//! budget. "Live" means a heartbeat within a TTL, judged by the caller's clock (as leases are:
//! the hosts' clocks must agree to well within the TTL, which NTP gives). A clean exit deletes
//! its row; a killed replica's row stops counting after the TTL and is deleted later. An idle
//! replica (nothing to send) keeps heartbeating but is not counted: the others take its share.
//!
//! Heartbeats are serialised (SQLite's single writer; on PostgreSQL a lock on the table), and
//! each records, in its own transaction, the divisor its replica applies after counting: so a
//! replica that becomes active again is counted by every heartbeat after its own, and never
//! reads a row that understates another replica's share.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;

use super::types::{opt_to_ms, to_ms, RowReader};
use super::{StateDb, StateError};

/// Replicas counted in the budget's split: a heartbeat since $1, not idle.
const ACTIVE_SINCE: &str =
    "SELECT COUNT(*) FROM replicas WHERE heartbeat_at >= $1 AND idle_since IS NULL";

/// Rows silent for this many TTLs are deleted by the next heartbeat of any replica: long
/// after they stopped counting, so `status` can still show a replica that just died.
const FORGET_AFTER_TTLS: u32 = 10;

/// A running archiver process as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaRow {
    /// The scheduler's lease owner id (`host:pid:random`).
    pub owner: String,
    pub host: String,
    pub pid: i64,
    /// Boot id and pid namespace of the process: a replica with the same node can tell from
    /// `pid` whether this one still runs.
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// How many replicas this one divides the tenant-wide budgets by right now.
    pub budget_divisor: i64,
    /// Since when this replica has been idle: it sends nothing and is not counted. None: active.
    pub idle_since: Option<DateTime<Utc>>,
}

impl ReplicaRow {
    pub fn is_idle(&self) -> bool {
        self.idle_since.is_some()
    }
}

impl StateDb {
    /// Records a heartbeat of `me` (its row is created if missing, e.g. after an outage made
    /// others forget it), deletes rows silent for `FORGET_AFTER_TTLS` TTLs, and returns how
    /// many active replicas heartbeat within `ttl` of `me.heartbeat_at` (this one included
    /// unless idle; idle ones are not counted). One write transaction.
    pub async fn replica_heartbeat(
        &self,
        me: &ReplicaRow,
        ttl: Duration,
    ) -> Result<u32, StateError> {
        self.replica_heartbeat_with(me, ttl, |_| me.budget_divisor)
            .await
    }

    /// As [`StateDb::replica_heartbeat`]; `divisor` is called in the transaction with the
    /// count, and the divisor it returns is what `me`'s row records on commit (a replica that
    /// shrinks does so in there, before the row says so; one that grows does after the commit).
    pub async fn replica_heartbeat_with(
        &self,
        me: &ReplicaRow,
        ttl: Duration,
        divisor: impl FnOnce(u32) -> i64 + Send,
    ) -> Result<u32, StateError> {
        const OP: &str = "replica_heartbeat";
        let now = to_ms(me.heartbeat_at);
        let mut tx = self.begin_write(OP).await?;
        if self.backend() == super::Backend::Postgres {
            // Self-exclusive, plain reads still pass: one heartbeat at a time.
            sqlx::query("LOCK TABLE replicas IN SHARE ROW EXCLUSIVE MODE")
                .execute(tx.conn())
                .await
                .map_err(StateError::op(OP))?;
        }
        sqlx::query(
            "INSERT INTO replicas (owner, host, pid, node, started_at, heartbeat_at, \
               budget_divisor, idle_since) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
               budget_divisor = excluded.budget_divisor, idle_since = excluded.idle_since",
        )
        .bind(&me.owner)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.node)
        .bind(to_ms(me.started_at))
        .bind(now)
        .bind(me.budget_divisor)
        .bind(opt_to_ms(me.idle_since))
        .execute(tx.conn())
        .await
        .map_err(StateError::op(OP))?;
        sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
            .bind(now.saturating_sub(ms(ttl.saturating_mul(FORGET_AFTER_TTLS))))
            .execute(tx.conn())
            .await
            .map_err(StateError::op(OP))?;
        let live: i64 = sqlx::query_scalar(ACTIVE_SINCE)
            .bind(now.saturating_sub(ms(ttl)))
            .fetch_one(tx.conn())
            .await
            .map_err(StateError::op(OP))?;
        let live = u32::try_from(live).unwrap_or(u32::MAX);
        // Our own row was just written: at least one unless it is idle.
        let live = if me.is_idle() { live } else { live.max(1) };
        let recorded = divisor(live);
        if recorded != me.budget_divisor {
            sqlx::query("UPDATE replicas SET budget_divisor = $2 WHERE owner = $1")
                .bind(&me.owner)
                .bind(recorded)
                .execute(tx.conn())
                .await
                .map_err(StateError::op(OP))?;
        }
        tx.commit(OP).await?;
        Ok(live)
    }

    /// Records the divisor `owner` now applies to its budgets (after a change of the count), so
    /// that a replica that is starting can see when the others have made room for it.
    pub async fn set_replica_divisor(&self, owner: &str, divisor: u32) -> Result<(), StateError> {
        let _slot = self.writer_slot().await;
        sqlx::query("UPDATE replicas SET budget_divisor = $2 WHERE owner = $1")
            .bind(owner)
            .bind(i64::from(divisor))
            .execute(self.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("set_replica_divisor"))
    }

    /// Replicas whose last heartbeat is at or after `since`, oldest first.
    pub async fn live_replicas(&self, since: DateTime<Utc>) -> Result<Vec<ReplicaRow>, StateError> {
        const OP: &str = "live_replicas";
        let query = sqlx::query(
            "SELECT owner, host, pid, node, started_at, heartbeat_at, budget_divisor, \
               idle_since FROM replicas \
             WHERE heartbeat_at >= $1 ORDER BY started_at, owner",
        )
        .bind(to_ms(since));
        self.read_rows(query, OP, replica_row).await
    }

    /// How many replicas are active (heartbeat within `ttl`, not idle): the count a heartbeat
    /// would apply, read without writing, so that a share can follow it between heartbeats.
    pub async fn active_replicas(&self, ttl: Duration) -> Result<u32, StateError> {
        let since = to_ms(Utc::now()).saturating_sub(ms(ttl));
        let live: i64 = sqlx::query_scalar(ACTIVE_SINCE)
            .bind(since)
            .fetch_one(self.pool())
            .await
            .map_err(StateError::op("active_replicas"))?;
        Ok(u32::try_from(live).unwrap_or(u32::MAX))
    }

    /// Deletes `owner`'s row (clean exit); true if there was one.
    pub async fn remove_replica(&self, owner: &str) -> Result<bool, StateError> {
        let _slot = self.writer_slot().await;
        let done = sqlx::query("DELETE FROM replicas WHERE owner = $1")
            .bind(owner)
            .execute(self.write_pool())
            .await
            .map_err(StateError::op("remove_replica"))?;
        Ok(done.rows_affected() > 0)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn replica_row(row: &AnyRow, op: &'static str) -> Result<ReplicaRow, StateError> {
    let r = RowReader::new(row, op);
    Ok(ReplicaRow {
        owner: r.string("owner")?,
        host: r.string("host")?,
        pid: r.int("pid")?,
        node: r.string("node")?,
        started_at: r.time("started_at")?,
        heartbeat_at: r.time("heartbeat_at")?,
        budget_divisor: r.int("budget_divisor")?,
        idle_since: r.opt_time("idle_since")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const TTL: Duration = Duration::from_secs(6);

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid test instant")
    }

    fn replica(owner: &str, heartbeat: i64) -> ReplicaRow {
        ReplicaRow {
            owner: owner.into(),
            host: "host-a".into(),
            pid: 4242,
            node: "boot/pidns".into(),
            started_at: at(0),
            heartbeat_at: at(heartbeat),
            budget_divisor: 1,
            idle_since: None,
        }
    }

    async fn beat(db: &StateDb, owner: &str, secs: i64) -> u32 {
        db.replica_heartbeat(&replica(owner, secs), TTL)
            .await
            .expect("heartbeat")
    }

    /// Live = a heartbeat within the TTL; a silent replica stops counting, then is forgotten;
    /// a clean exit removes the row at once.
    async fn live_count_follows_heartbeats(db: StateDb) {
        assert_eq!(beat(&db, "a", 0).await, 1);
        assert_eq!(beat(&db, "b", 1).await, 2);
        assert_eq!(
            beat(&db, "a", 2).await,
            2,
            "a second beat is not a second replica"
        );
        assert_eq!(beat(&db, "c", 3).await, 3);
        // b's last beat was at 1: at 8 it is older than the 6 s TTL.
        assert_eq!(beat(&db, "a", 8).await, 2);
        let live = db.live_replicas(at(8) - TTL).await.expect("live");
        let owners: Vec<&str> = live.iter().map(|r| r.owner.as_str()).collect();
        assert_eq!(owners, ["a", "c"]);
        assert_eq!(live[0].host, "host-a");
        assert_eq!(live[0].pid, 4242);
        assert_eq!(live[0].node, "boot/pidns");
        assert_eq!(live[0].heartbeat_at, at(8));
        // Not yet forgotten (status can still show it) ...
        assert_eq!(db.live_replicas(at(0)).await.expect("all").len(), 3);
        // ... until FORGET_AFTER_TTLS TTLs have passed.
        assert_eq!(beat(&db, "a", 62).await, 1);
        assert_eq!(db.live_replicas(at(0)).await.expect("all").len(), 2);
        assert!(db.remove_replica("a").await.expect("remove"));
        assert!(!db.remove_replica("a").await.expect("remove again"));
        assert_eq!(db.live_replicas(at(0)).await.expect("all").len(), 1);
    }

    async fn divisor_is_recorded(db: StateDb) {
        beat(&db, "a", 0).await;
        db.set_replica_divisor("a", 3).await.expect("divisor");
        let rows = db.live_replicas(at(0)).await.expect("live");
        assert_eq!(rows[0].budget_divisor, 3);
        // The next heartbeat writes what the replica applies then.
        let mut me = replica("a", 1);
        me.budget_divisor = 2;
        db.replica_heartbeat(&me, TTL).await.expect("beat");
        let rows = db.live_replicas(at(0)).await.expect("live");
        assert_eq!(rows[0].budget_divisor, 2);
    }

    /// An idle replica heartbeats but is not counted, by the others or by itself; when it is
    /// active again, the next heartbeat of any replica counts it.
    async fn idle_replicas_are_not_counted(db: StateDb) {
        assert_eq!(beat(&db, "a", 0).await, 1);
        assert_eq!(beat(&db, "b", 0).await, 2);
        let mut b = replica("b", 1);
        b.idle_since = Some(at(1));
        assert_eq!(db.replica_heartbeat(&b, TTL).await.expect("idle"), 1);
        assert_eq!(
            beat(&db, "a", 2).await,
            1,
            "b is idle: a alone shares the tenant"
        );
        let rows = db.live_replicas(at(0)).await.expect("rows");
        assert_eq!(rows.len(), 2, "an idle replica is still listed");
        assert_eq!(rows[1].idle_since, Some(at(1)));
        assert!(rows[1].is_idle() && !rows[0].is_idle());
        // a idle too: nobody is counted, not even the one heartbeating.
        let mut a = replica("a", 3);
        a.idle_since = Some(at(3));
        assert_eq!(db.replica_heartbeat(&a, TTL).await.expect("idle"), 0);
        assert_eq!(beat(&db, "b", 4).await, 1, "b active again");
        assert_eq!(beat(&db, "c", 4).await, 2);
    }

    /// The divisor chosen from the count is recorded in the same transaction.
    async fn divisor_is_chosen_from_the_count(db: StateDb) {
        beat(&db, "a", 0).await;
        let mut b = replica("b", 0);
        b.budget_divisor = 1;
        let seen = std::sync::Mutex::new(0);
        let live = db
            .replica_heartbeat_with(&b, TTL, |n| {
                *seen.lock().expect("seen") = n;
                i64::from(n)
            })
            .await
            .expect("beat");
        assert_eq!((live, *seen.lock().expect("seen")), (2, 2));
        let rows = db.live_replicas(at(0)).await.expect("rows");
        assert_eq!(rows[1].owner, "b");
        assert_eq!(rows[1].budget_divisor, 2);
    }

    use crate::both_backends;

    both_backends!(
        live_count_follows_heartbeats,
        divisor_is_recorded,
        idle_replicas_are_not_counted,
        divisor_is_chosen_from_the_count
    );
}
