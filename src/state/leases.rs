//! Leases on work items (e.g. "copilot/<user id>"), so that several processes sharing one
//! database never work on the same item at once. A lease is held until it expires or is
//! released; an expired lease can be taken by anyone.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::types::to_ms;
use super::{StateDb, StateError};

/// Takes or extends one lease: $1 key, $2 owner, $3 now, $4 expiry (epoch ms). Affects a row
/// only if the lease is free, expired or already the owner's.
pub(super) const TRY_LEASE: &str =
    "INSERT INTO leases (work_key, owner, acquired_at, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (work_key) DO UPDATE SET \
       acquired_at = CASE WHEN leases.owner = excluded.owner \
         THEN leases.acquired_at ELSE excluded.acquired_at END, \
       owner = excluded.owner, \
       expires_at = excluded.expires_at \
     WHERE leases.expires_at <= $3 OR leases.owner = $2";

/// Deletes one lease if it is still the owner's: $1 key, $2 owner.
pub(super) const RELEASE_LEASE: &str = "DELETE FROM leases WHERE work_key = $1 AND owner = $2";

impl StateDb {
    /// Takes the lease on `work_key` for `ttl` if it is free, expired, or already ours (then it
    /// is extended). One statement, so it is atomic in both databases. True if we hold it.
    pub async fn try_lease(
        &self,
        work_key: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let now_ms = to_ms(now);
        let _slot = self.writer_slot().await;
        let done = sqlx::query(TRY_LEASE)
            .bind(work_key)
            .bind(owner)
            .bind(now_ms)
            .bind(expiry_ms(now_ms, ttl))
            .execute(self.write_pool())
            .await
            .map_err(StateError::op("try_lease"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Extends our lease. False if it is no longer ours (someone took it over after it
    /// expired): the caller must stop working on the item.
    pub async fn renew_lease(
        &self,
        work_key: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let _slot = self.writer_slot().await;
        let done =
            sqlx::query("UPDATE leases SET expires_at = $3 WHERE work_key = $1 AND owner = $2")
                .bind(work_key)
                .bind(owner)
                .bind(expiry_ms(to_ms(now), ttl))
                .execute(self.write_pool())
                .await
                .map_err(StateError::op("renew_lease"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives up our lease; someone else's lease on the same key is left alone.
    pub async fn release_lease(&self, work_key: &str, owner: &str) -> Result<(), StateError> {
        let _slot = self.writer_slot().await;
        sqlx::query(RELEASE_LEASE)
            .bind(work_key)
            .bind(owner)
            .execute(self.write_pool())
            .await
            .map(|_| ())
            .map_err(StateError::op("release_lease"))
    }

    /// Gives up every lease of `owner` (at shutdown); returns how many there were.
    pub async fn release_all_leases(&self, owner: &str) -> Result<u64, StateError> {
        let _slot = self.writer_slot().await;
        let done = sqlx::query("DELETE FROM leases WHERE owner = $1")
            .bind(owner)
            .execute(self.write_pool())
            .await
            .map_err(StateError::op("release_all_leases"))?;
        Ok(done.rows_affected())
    }
}

pub(super) fn expiry_ms(now_ms: i64, ttl: Duration) -> i64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_add(ttl_ms)
}
