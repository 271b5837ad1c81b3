//! Claiming many leases in one statement. Replicas that walk the same list of work items would
//! otherwise spend one statement per item each, most of them finding the item taken: at 100k
//! scopes that is the database's whole load. On PostgreSQL the claim skips rows another replica
//! is claiming at that moment (`FOR UPDATE SKIP LOCKED`) instead of queueing behind it. SQLite
//! has one writer at a time anyway: there the claim is the single-lease upsert per key, all in
//! one write transaction.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::leases::{expiry_ms, TRY_LEASE};
use super::types::to_ms;
use super::{Backend, StateDb, StateError};

/// Keys looked at per call (two binds each on PostgreSQL: far below its bind limit).
pub const MAX_CLAIM_KEYS: usize = 500;

/// What a batch claim took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseClaim {
    /// Keys now leased to the caller (taken, or ours already and extended), in the order given.
    pub claimed: Vec<String>,
    /// How many leading keys were decided: every key of `keys[..considered]` that is not in
    /// `claimed` is held by another owner, or was being claimed by one at that moment. Keys
    /// from `considered` on were not looked at (the limit was reached, or more than
    /// [`MAX_CLAIM_KEYS`] were given).
    pub considered: usize,
}

impl StateDb {
    /// Claims, in the order of `keys` (distinct), up to `limit` leases that are free, expired
    /// or already `owner`'s, for `ttl` from `now`. The same rules as [`StateDb::try_lease`],
    /// for many keys at once.
    pub async fn claim_leases(
        &self,
        keys: &[String],
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<LeaseClaim, StateError> {
        let keys = &keys[..keys.len().min(MAX_CLAIM_KEYS)];
        if keys.is_empty() || limit == 0 {
            return Ok(LeaseClaim::default());
        }
        let (now_ms, expires) = (to_ms(now), expiry_ms(to_ms(now), ttl));
        match self.backend() {
            Backend::Postgres => claim_postgres(self, keys, owner, now_ms, expires, limit).await,
            Backend::Sqlite => claim_each(self, keys, owner, now_ms, expires, limit).await,
        }
    }
}

/// One statement: lock the claimable existing rows not locked by anyone else, pick the first
/// `limit` keys that are claimable or have no row, update or insert them. An insert that meets
/// a row another claimer inserted meanwhile does nothing: that key is theirs.
fn postgres_claim_sql(count: usize) -> String {
    // The ordinals are generated integers, not input: safe to write into the statement.
    let wanted = (0..count)
        .map(|i| format!("(${}, {i})", i + 5))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH wanted (work_key, ord) AS (VALUES {wanted}), \
         lockable AS ( \
           SELECT l.work_key FROM leases l JOIN wanted w ON w.work_key = l.work_key \
           WHERE l.expires_at <= $2 OR l.owner = $1 \
           FOR UPDATE OF l SKIP LOCKED), \
         pick AS ( \
           SELECT w.work_key, (k.work_key IS NOT NULL) AS existing FROM wanted w \
           LEFT JOIN lockable k ON k.work_key = w.work_key \
           WHERE k.work_key IS NOT NULL \
              OR NOT EXISTS (SELECT 1 FROM leases l WHERE l.work_key = w.work_key) \
           ORDER BY w.ord LIMIT $4), \
         taken AS ( \
           UPDATE leases SET \
             acquired_at = CASE WHEN leases.owner = $1 THEN leases.acquired_at ELSE $2 END, \
             owner = $1, expires_at = $3 \
           FROM pick WHERE pick.existing AND leases.work_key = pick.work_key \
           RETURNING leases.work_key), \
         fresh AS ( \
           INSERT INTO leases (work_key, owner, acquired_at, expires_at) \
           SELECT work_key, $1, $2, $3 FROM pick WHERE NOT pick.existing \
           ON CONFLICT (work_key) DO NOTHING \
           RETURNING work_key) \
         SELECT p.work_key, CAST(CASE WHEN p.work_key IN \
             (SELECT work_key FROM taken UNION ALL SELECT work_key FROM fresh) \
           THEN 1 ELSE 0 END AS BIGINT) AS claimed \
         FROM pick p"
    )
}

async fn claim_postgres(
    db: &StateDb,
    keys: &[String],
    owner: &str,
    now_ms: i64,
    expires: i64,
    limit: usize,
) -> Result<LeaseClaim, StateError> {
    const OP: &str = "claim_leases";
    let sql = postgres_claim_sql(keys.len());
    let mut query = sqlx::query(&sql)
        .bind(owner)
        .bind(now_ms)
        .bind(expires)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
    for key in keys {
        query = query.bind(key);
    }
    let rows = query
        .fetch_all(db.pool())
        .await
        .map_err(StateError::op(OP))?;
    let mut picked = Vec::with_capacity(rows.len());
    for row in &rows {
        let key: String = row.try_get("work_key").map_err(StateError::op(OP))?;
        let claimed: i64 = row.try_get("claimed").map_err(StateError::op(OP))?;
        picked.push((key, claimed == 1));
    }
    Ok(decide(keys, &picked, limit))
}

/// Turns the picked keys into a `LeaseClaim`: when the limit cut the pick short, only the keys
/// up to the last picked one were looked at.
fn decide(keys: &[String], picked: &[(String, bool)], limit: usize) -> LeaseClaim {
    let position: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .rev()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let considered = if picked.len() >= limit {
        picked
            .iter()
            .filter_map(|(k, _)| position.get(k.as_str()))
            .max()
            .map_or(keys.len(), |last| last + 1)
    } else {
        keys.len()
    };
    let won: HashSet<&str> = picked
        .iter()
        .filter(|(_, claimed)| *claimed)
        .map(|(k, _)| k.as_str())
        .collect();
    let claimed = keys
        .iter()
        .filter(|k| won.contains(k.as_str()))
        .cloned()
        .collect();
    LeaseClaim {
        claimed,
        considered,
    }
}

async fn claim_each(
    db: &StateDb,
    keys: &[String],
    owner: &str,
    now_ms: i64,
    expires: i64,
    limit: usize,
) -> Result<LeaseClaim, StateError> {
    const OP: &str = "claim_leases";
    let mut tx = db.begin_write(OP).await?;
    let mut out = LeaseClaim::default();
    for key in keys {
        if out.claimed.len() >= limit {
            break;
        }
        out.considered += 1;
        let done = sqlx::query(TRY_LEASE)
            .bind(key)
            .bind(owner)
            .bind(now_ms)
            .bind(expires)
            .execute(tx.conn())
            .await
            .map_err(StateError::op(OP))?;
        if done.rows_affected() > 0 {
            out.claimed.push(key.clone());
        }
    }
    tx.commit(OP).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const TTL: Duration = Duration::from_secs(60);

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid test instant")
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| format!("copilot/{k}")).collect()
    }

    /// Free, expired and own leases are claimed in order; a live lease of another owner is
    /// skipped and reported as decided.
    async fn claims_free_expired_and_own(db: StateDb) {
        let all = keys(&["a", "b", "c", "d", "e", "f"]);
        assert!(db.try_lease(&all[2], "other", TTL, at(0)).await.expect("c"));
        let short = Duration::from_secs(1);
        assert!(db
            .try_lease(&all[3], "other", short, at(0))
            .await
            .expect("d"));
        assert!(db.try_lease(&all[4], "me", TTL, at(0)).await.expect("e"));
        let got = db
            .claim_leases(&all, "me", TTL, at(10), 100)
            .await
            .expect("claim");
        assert_eq!(got.claimed, keys(&["a", "b", "d", "e", "f"]));
        assert_eq!(got.considered, 6);
        // c is still the other owner's; the claimed ones are ours now.
        assert!(!db
            .try_lease(&all[2], "third", TTL, at(11))
            .await
            .expect("c"));
        assert!(!db
            .try_lease(&all[3], "other", TTL, at(11))
            .await
            .expect("d"));
        assert!(db.renew_lease(&all[3], "me", TTL, at(11)).await.expect("d"));
    }

    /// With a limit, only the keys up to the last claimed one count as looked at.
    async fn limit_leaves_the_rest_undecided(db: StateDb) {
        let all = keys(&["a", "b", "c", "d", "e"]);
        assert!(db.try_lease(&all[1], "other", TTL, at(0)).await.expect("b"));
        let got = db
            .claim_leases(&all, "me", TTL, at(1), 2)
            .await
            .expect("claim");
        assert_eq!(got.claimed, keys(&["a", "c"]));
        assert_eq!(got.considered, 3);
        let rest = db
            .claim_leases(&all[3..], "me", TTL, at(1), 2)
            .await
            .expect("claim");
        assert_eq!(rest.claimed, keys(&["d", "e"]));
        assert_eq!(rest.considered, 2);
        let none = db
            .claim_leases(&all, "third", TTL, at(2), 2)
            .await
            .expect("claim");
        assert!(none.claimed.is_empty());
        assert_eq!(none.considered, 5, "all held: every key decided");
        let empty = db.claim_leases(&[], "me", TTL, at(2), 2).await;
        assert_eq!(empty.expect("empty"), LeaseClaim::default());
    }

    /// Claimers racing over the same keys (new ones, and expired ones) never both get one,
    /// and between them every key is taken.
    async fn racing_claimers_split_the_keys(db: StateDb) {
        let names: Vec<String> = (0..120).map(|i| format!("u{i:03}")).collect();
        let all = keys(&names.iter().map(String::as_str).collect::<Vec<_>>());
        for key in &all[60..] {
            assert!(db
                .try_lease(key, "dead", Duration::from_secs(1), at(0))
                .await
                .expect("old lease"));
        }
        let claim = |owner: &'static str| {
            let (db, all) = (db.clone(), all.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut from = 0;
                while from < all.len() {
                    let got = db
                        .claim_leases(&all[from..], owner, TTL, at(5), 16)
                        .await
                        .expect("claim");
                    from += got.considered.max(1);
                    mine.extend(got.claimed);
                }
                mine
            })
        };
        let (a, b, c) = (claim("a"), claim("b"), claim("c"));
        let mut seen: Vec<String> = Vec::new();
        for task in [a, b, c] {
            seen.extend(task.await.expect("claimer"));
        }
        let distinct: HashSet<&String> = seen.iter().collect();
        assert_eq!(distinct.len(), seen.len(), "a key was claimed twice");
        assert_eq!(seen.len(), all.len(), "every key is taken by someone");
    }

    #[test]
    fn decide_counts_only_up_to_the_last_pick_when_limited() {
        let all = keys(&["a", "b", "c", "d"]);
        let picked = vec![(all[0].clone(), true), (all[2].clone(), false)];
        let got = decide(&all, &picked, 2);
        assert_eq!(got.claimed, keys(&["a"]));
        assert_eq!(got.considered, 3);
        assert_eq!(decide(&all, &picked, 5).considered, 4);
        assert!(postgres_claim_sql(2).contains("VALUES ($5, 0), ($6, 1)"));
    }

    use crate::both_backends;

    both_backends!(
        claims_free_expired_and_own,
        limit_leaves_the_rest_undecided,
        racing_claimers_split_the_keys,
    );
}
