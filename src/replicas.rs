//! Replicas sharing one tenant's rate budget. Every archiver process registers in the state
//! database and heartbeats there (`state::replicas`); the number of live replicas divides the
//! tenant-wide Graph budgets (`graph::Budgets::split`), so that together they stay under
//! Graph's per-tenant limits.
//!
//! Shares shift within a tick (a sixteenth of a heartbeat): between heartbeats every active
//! replica reads the count, and heartbeats at once when it changed. A replica that sees the
//! count grow shrinks at once; one that starts while others run waits until their heartbeats
//! show they have made room (each row carries the divisor its replica applies), so the sum of
//! the shares never exceeds the budget.
//! A replica that dies keeps its place until its row is older than the TTL: the others grow
//! only then, which errs on the side of sending less. While the database cannot be read, a
//! replica keeps its last share: it never grows to the full budget for lack of the count (its
//! leases cannot be renewed either, so its exports stop).
//!
//! A replica with nothing to send (its pass is over; all it has left is scopes leased elsewhere
//! that it waits for; the daemon between passes) gives its share up: once no export holds the
//! budget ([`crate::graph::Busy`]) and no request went out for a sixteenth of a heartbeat, it
//! parks its budget (its requests wait from then on), then marks itself idle in the registry,
//! and the others count it out and grow within a tick. A request arriving at the
//! parked budget makes it active again as it started: its row counts again first, and the
//! request waits until the others' rows show they have shrunk to make room for it.
//!
//! A replica restarted on the same host (systemd, a crash) does not wait for the row its dead
//! predecessor left: rows of the same node (boot and pid namespace) whose process is gone are
//! deleted when a replica joins.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::graph::GraphClient;
use crate::state::{ReplicaRow, StateDb, StateError};

/// How often a replica writes its heartbeat and re-reads the count.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica whose heartbeat is older than this is counted out (four heartbeats: three may be
/// late or lost on a loaded database before the others grow into its share).
pub const TTL: Duration = Duration::from_secs(8);
/// Longest wait at shutdown for deleting the row; after that it expires by itself.
const LEAVE_BUDGET: Duration = Duration::from_secs(3);

/// Heartbeat period and liveness TTL (tests shorten them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub ttl: Duration,
}

impl Timing {
    /// How long the budget must go unused before the replica gives its share up.
    fn quiet(&self) -> Duration {
        self.heartbeat / 16
    }

    /// How often the registry task looks at the budget's use between heartbeats.
    fn tick(&self) -> Duration {
        (self.heartbeat / 16).max(Duration::from_millis(5))
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: HEARTBEAT,
            ttl: TTL,
        }
    }
}

/// This process's place in the registry; cheap to clone.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    state: StateDb,
    graph: GraphClient,
    owner: String,
    host: String,
    node: String,
    started_at: chrono::DateTime<Utc>,
    timing: Timing,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    /// When this replica last went idle; None while active.
    idle_since: Mutex<Option<chrono::DateTime<Utc>>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Registers this process as `owner` (the scheduler's lease owner), takes its share of the
    /// budget, waits until the other live replicas have made room for it, and keeps the share
    /// current in the background until [`Replicas::leave`]. Fails if the first heartbeat cannot
    /// be written: a replica that cannot count the others must not start at the full budget.
    pub async fn join(
        state: &StateDb,
        graph: &GraphClient,
        owner: &str,
        timing: Timing,
    ) -> Result<Replicas, StateError> {
        let replicas = Replicas {
            inner: Arc::new(Inner {
                state: state.clone(),
                graph: graph.clone(),
                owner: owner.to_owned(),
                host: hostname(),
                node: node(),
                started_at: Utc::now(),
                timing,
                stop: CancellationToken::new(),
                task: Mutex::new(None),
                idle_since: Mutex::new(None),
            }),
        };
        replicas.inner.forget_dead_neighbours().await;
        replicas.inner.beat(false).await?;
        crate::ops::metrics::budget_share(&graph.budget_share());
        replicas.inner.wait_for_room().await;
        // About to send: not idle before the first request.
        graph.budget().touch();
        let inner = Arc::clone(&replicas.inner);
        let task = tokio::spawn(async move { inner.run().await });
        *replicas
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(replicas)
    }

    /// The number of live replicas this process divides its budgets by.
    pub fn live(&self) -> u32 {
        self.inner.graph.budget_share().replicas
    }

    /// Whether this replica has given its share up (parked budget, idle in the registry).
    pub fn is_idle(&self) -> bool {
        self.inner.graph.budget().is_parked()
    }

    /// Stops the heartbeat and deletes this replica's row, so that the others take over its
    /// share at their next heartbeat. Bounded in time: a row left behind expires after the TTL.
    /// A replica idle by then stays parked: it is no longer counted anywhere.
    pub async fn leave(&self) {
        self.inner.stop.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            // A beat in flight must not write the row again after it is deleted.
            task.abort();
            let _ = task.await;
        }
        let removal = self.inner.state.remove_replica(&self.inner.owner);
        match tokio::time::timeout(LEAVE_BUDGET, removal).await {
            Ok(Ok(_)) => tracing::debug!("left the replica registry"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not leave the replica registry; this replica's row expires by itself")
            }
            Err(_) => tracing::warn!(
                "leaving the replica registry timed out; this replica's row expires by itself"
            ),
        }
    }
}

impl Inner {
    /// Heartbeats; between them, gives the share up as soon as the budget goes unused, and
    /// takes one back when a request waits for it.
    async fn run(&self) {
        let budget = self.graph.budget();
        let mut healthy = true;
        let mut next_beat = Instant::now() + self.timing.heartbeat;
        let mut next_count = Instant::now() + self.timing.tick();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(self.timing.tick()) => {}
                _ = budget.activity_changed() => {}
            }
            let mut due = Instant::now() >= next_beat;
            if !due && healthy && !budget.is_parked() && Instant::now() >= next_count {
                next_count = Instant::now() + self.timing.tick();
                due = self.count_changed().await;
            }
            let step = if budget.is_parked() {
                if budget.wanted() && (healthy || due) {
                    self.wake().await
                } else if due {
                    self.beat(true).await.map(|_| ())
                } else {
                    continue;
                }
            } else if healthy && budget.park_if_unused(self.timing.quiet()) {
                self.idle().await
            } else if due {
                self.beat(false).await.map(|_| ())
            } else {
                continue;
            };
            next_beat = Instant::now() + self.timing.heartbeat;
            match step {
                Ok(()) => {
                    if !healthy {
                        tracing::info!("replica registry reachable again");
                    }
                    healthy = true;
                }
                Err(e) => {
                    if healthy {
                        let share = self.graph.budget_share().replicas;
                        tracing::warn!(error = %e, replicas = share, idle = budget.is_parked(), "cannot heartbeat in the replica registry; keeping the current share of the rate budget");
                    }
                    healthy = false;
                }
            }
        }
    }

    /// Whether the active replicas are no longer the count this share divides by. Read every
    /// tick, so that a share follows a replica joining or going idle within a tick instead of
    /// at the next heartbeat: with heartbeats 2 s apart, a share boundary (a replica joining,
    /// finishing its pass) otherwise left up to 2 s of the budget unused.
    async fn count_changed(&self) -> bool {
        match self.state.active_replicas(self.timing.ttl).await {
            Ok(active) => active.max(1) != self.graph.budget_share().replicas,
            Err(_) => false,
        }
    }

    /// The budget is parked (nothing is sent from now on): says so in the registry, so that the
    /// others count this replica out at their next heartbeat. If that write fails the others
    /// keep counting it: they send less, never more.
    async fn idle(&self) -> Result<(), StateError> {
        tracing::debug!("nothing to send: giving the share of the rate budget up");
        let mut none = self.graph.budget_share();
        none.budgets.interactions_rps = 0.0;
        none.budgets.messages_rps = 0.0;
        none.budgets.other_rps = 0.0;
        crate::ops::metrics::budget_share(&none);
        self.beat(true).await.map(|_| ())
    }

    /// A request waits at the parked budget: counted again first, then, once the others have
    /// made room (as at [`Replicas::join`]), the budget opens at the new share.
    async fn wake(&self) -> Result<(), StateError> {
        self.beat(false).await?;
        self.wait_for_room().await;
        self.graph.budget().unpark();
        let share = self.graph.budget_share();
        tracing::debug!(
            replicas = share.replicas,
            "work to send again: back to a share of the rate budget"
        );
        crate::ops::metrics::budget_share(&share);
        Ok(())
    }

    /// Writes the heartbeat, idle or active, and returns the count of active replicas. When
    /// active, applies it: a larger count shrinks the share inside the heartbeat's transaction,
    /// before the row records the new divisor; a smaller one grows the share only after the
    /// row recording it is committed. So the row never shows less than the share applied.
    async fn beat(&self, idle: bool) -> Result<u32, StateError> {
        let idle_since = {
            let mut since = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            if idle {
                Some(*since.get_or_insert_with(Utc::now))
            } else {
                since.take();
                None
            }
        };
        let current = self.graph.budget_share().replicas;
        let row = ReplicaRow {
            owner: self.owner.clone(),
            host: self.host.clone(),
            pid: i64::from(std::process::id()),
            node: self.node.clone(),
            started_at: self.started_at,
            heartbeat_at: Utc::now(),
            budget_divisor: i64::from(current),
            idle_since,
        };
        let live = self
            .state
            .replica_heartbeat_with(&row, self.timing.ttl, |live| {
                if idle {
                    return i64::from(current);
                }
                if live > current {
                    self.apply(live);
                    // What is applied now (the old share if that failed).
                    return i64::from(self.graph.budget_share().replicas);
                }
                i64::from(live.max(1))
            })
            .await?;
        if !idle && live < current {
            self.apply(live);
        }
        Ok(live)
    }

    /// Deletes the rows of replicas on this node whose process no longer runs (a predecessor
    /// killed before a restart), so that they neither count nor hold up the join.
    async fn forget_dead_neighbours(&self) {
        if self.node.is_empty() {
            return;
        }
        let Ok(rows) = self.state.live_replicas(chrono::DateTime::UNIX_EPOCH).await else {
            return;
        };
        for row in rows {
            let gone = !std::path::Path::new(&format!("/proc/{}", row.pid)).exists();
            if row.node == self.node && row.owner != self.owner && gone {
                tracing::info!(replica = %row.owner, "forgetting a replica of this host that no longer runs");
                if let Err(e) = self.state.remove_replica(&row.owner).await {
                    tracing::debug!(error = %e, "could not forget a dead replica; it expires by itself");
                }
            }
        }
    }

    /// Divides the budgets by `live`; on a change, logs it and updates the metrics.
    fn apply(&self, live: u32) {
        match self.graph.set_replicas(live) {
            Ok(false) => {}
            Ok(true) => {
                let share = self.graph.budget_share();
                tracing::info!(
                    replicas = share.replicas,
                    interactions_rps = share.budgets.interactions_rps,
                    messages_rps = share.budgets.messages_rps,
                    other_rps = share.budgets.other_rps,
                    "rate budget share changed: {} live replica(s) share the tenant",
                    share.replicas
                );
                crate::ops::metrics::budget_share(&share);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the new share of the rate budget; keeping the current one")
            }
        }
    }

    /// Until the shares of the live replicas add up to at most the whole budget (the others
    /// saw this one), or two heartbeats have passed: a live replica reacts within one, so one
    /// that has not is dead or cut off (it sends nothing then, and is counted out soon).
    async fn wait_for_room(&self) {
        let deadline = Instant::now() + self.timing.heartbeat * 2;
        let poll = self.timing.tick().max(Duration::from_millis(50));
        let mut told = false;
        loop {
            let since =
                Utc::now() - chrono::Duration::from_std(self.timing.ttl).unwrap_or_default();
            match self.state.live_replicas(since).await {
                Ok(rows) if shares_fit(&rows) => return,
                Ok(rows) if !told => {
                    told = true;
                    tracing::info!(
                        replicas = rows.len(),
                        "waiting for the other replicas to make room in the rate budget"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the replica registry"),
            }
            if Instant::now() >= deadline {
                tracing::warn!("other replicas did not make room in the rate budget in time; starting anyway (they are counted out when their heartbeats stop)");
                return;
            }
            tokio::time::sleep(poll).await;
            let _ = self.beat(false).await;
        }
    }
}

/// True when the shares the active replicas apply add up to at most the whole budget (idle
/// ones send nothing).
fn shares_fit(rows: &[ReplicaRow]) -> bool {
    let sum: f64 = rows
        .iter()
        .filter(|r| !r.is_idle())
        .map(|r| 1.0 / (r.budget_divisor.max(1) as f64))
        .sum();
    sum <= 1.0 + 1e-9
}

/// Boot id and pid namespace: processes with the same node see each other's pids. Empty when
/// /proc does not tell (then no row is ever judged by its pid).
fn node() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let pid_ns = std::fs::read_link("/proc/self/ns/pid");
    match (boot, pid_ns) {
        (Ok(boot), Ok(ns)) => format!("{}/{}", boot.trim(), ns.display()),
        _ => String::new(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Budgets, Credential, GraphClientConfig, RetryConfig};

    const FAST: Timing = Timing {
        heartbeat: Duration::from_millis(200),
        ttl: Duration::from_millis(800),
    };

    /// A client that is never asked to send anything: only its budget is looked at.
    fn graph() -> GraphClient {
        let local = |s: &str| url::Url::parse(s).expect("url");
        GraphClient::new(GraphClientConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            credential: Credential::Secret("s".to_string().into()),
            base_url: local("http://127.0.0.1:9/v1.0"),
            authority: local("http://127.0.0.1:9"),
            token_scope: "x/.default".into(),
            retry: RetryConfig::default(),
            request_timeout: Duration::from_secs(1),
            budgets: Budgets {
                interactions_rps: 30.0,
                ..Budgets::default()
            },
        })
        .expect("graph client")
    }

    fn row(divisor: i64) -> ReplicaRow {
        ReplicaRow {
            owner: format!("r{divisor}"),
            host: "h".into(),
            pid: 1,
            node: String::new(),
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
            budget_divisor: divisor,
            idle_since: None,
        }
    }

    #[test]
    fn shares_fit_only_when_they_add_up_to_one_at_most() {
        assert!(shares_fit(&[row(1)]));
        assert!(shares_fit(&[row(3), row(3), row(3)]));
        assert!(
            !shares_fit(&[row(2), row(2), row(3)]),
            "one has not shrunk yet"
        );
        assert!(shares_fit(&[row(0)]), "0 counts as 1");
        assert!(shares_fit(&[]));
        let mut idle = row(1);
        idle.idle_since = Some(Utc::now());
        assert!(
            shares_fit(&[row(2), row(2), idle]),
            "an idle replica sends nothing"
        );
    }

    /// A graph client whose budget is held in use (an export running), so that its replica
    /// does not go idle.
    fn busy_graph() -> (GraphClient, crate::graph::Busy) {
        let g = graph();
        let busy = g.busy();
        (g, busy)
    }

    fn rps(r: &Replicas) -> f64 {
        r.inner.graph.budget_share().budgets.interactions_rps
    }

    async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Three replicas split the budget; a newcomer starts only once the others have shrunk;
    /// one that leaves gives its share back; one that stops heartbeating (killed) is counted
    /// out after the TTL.
    async fn shares_follow_the_live_replicas(db: StateDb) {
        let ((ga, _a), (gb, _b), (gc, _c)) = (busy_graph(), busy_graph(), busy_graph());
        let a = Replicas::join(&db, &ga, "a", FAST).await.expect("a");
        assert_eq!((a.live(), rps(&a)), (1, 30.0));
        let b = Replicas::join(&db, &gb, "b", FAST).await.expect("b");
        // b waited for a to make room.
        assert_eq!(a.live(), 2, "a shrank before b returned from join");
        assert_eq!(rps(&b), 15.0);
        let c = Replicas::join(&db, &gc, "c", FAST).await.expect("c");
        assert_eq!((a.live(), b.live(), c.live()), (3, 3, 3));
        assert!((rps(&c) - 10.0).abs() < 1e-9);
        let rows = db
            .live_replicas(Utc::now() - chrono::Duration::seconds(5))
            .await;
        assert_eq!(rows.expect("rows").len(), 3);

        c.leave().await;
        wait_until("a and b take c's share", || a.live() == 2 && b.live() == 2).await;
        // b dies without leaving: its heartbeat stops, its row stays until the TTL.
        b.inner.stop.cancel();
        let killed = Instant::now();
        wait_until("a counts b out", || a.live() == 1).await;
        assert!(killed.elapsed() >= FAST.ttl / 2, "{:?}", killed.elapsed());
        assert_eq!(rps(&a), 30.0);
        a.leave().await;
        let rows = db
            .live_replicas(Utc::now() - chrono::Duration::seconds(5))
            .await;
        let owners: Vec<String> = rows.expect("rows").into_iter().map(|r| r.owner).collect();
        assert_eq!(
            owners,
            ["b"],
            "only the killed replica's row is left, until forgotten"
        );
    }

    /// Joins as `owner`, asserting that the others made room within `limit`.
    async fn join_within(
        db: &StateDb,
        graph: &GraphClient,
        owner: &str,
        timing: Timing,
        limit: Duration,
    ) -> Replicas {
        let joining = Instant::now();
        let joined = Replicas::join(db, graph, owner, timing).await.expect(owner);
        let took = joining.elapsed();
        assert!(took < limit, "{owner}'s join took {took:?}");
        joined
    }

    /// Shares follow a replica leaving or joining within a tick, not at the next heartbeat:
    /// the heartbeat here is 4 s, and both changes must land in well under half of it.
    async fn shares_change_within_a_tick(db: StateDb) {
        const SLOW: Timing = Timing {
            heartbeat: Duration::from_secs(4),
            ttl: Duration::from_secs(16),
        };
        let ((ga, _a), (gb, _b), (gc, _c)) = (busy_graph(), busy_graph(), busy_graph());
        let a = Replicas::join(&db, &ga, "a", SLOW).await.expect("a");
        let b = join_within(&db, &gb, "b", SLOW, SLOW.heartbeat / 2).await;
        // a has just written its heartbeat (b waited for it): its next is about 4 s away.
        let left = Instant::now();
        b.leave().await;
        wait_until("a takes b's share", || a.live() == 1).await;
        assert!(
            left.elapsed() < SLOW.heartbeat / 2,
            "a grew after {:?}",
            left.elapsed()
        );
        let c = join_within(&db, &gc, "c", SLOW, SLOW.heartbeat / 2).await;
        assert_eq!((a.live(), c.live()), (2, 2));
        c.leave().await;
        a.leave().await;
    }

    /// A row left by a killed predecessor on this node is forgotten at once; one of another
    /// node (whose pids this host cannot check) counts until its TTL.
    async fn dead_neighbours_are_forgotten_at_join(db: StateDb) {
        let mut dead = row(1);
        dead.owner = "dead-here".into();
        dead.pid = i64::from(u32::MAX);
        dead.node = node();
        db.replica_heartbeat(&dead, FAST.ttl)
            .await
            .expect("dead row");
        let mut elsewhere = dead.clone();
        elsewhere.owner = "elsewhere".into();
        elsewhere.node = "other-boot/pid:[1]".into();
        elsewhere.budget_divisor = 2;
        db.replica_heartbeat(&elsewhere, FAST.ttl)
            .await
            .expect("remote row");
        let a = Replicas::join(&db, &graph(), "a", FAST).await.expect("a");
        assert_eq!(
            a.live(),
            2,
            "the remote row counts, the dead local one does not"
        );
        let since = Utc::now() - chrono::Duration::seconds(5);
        let owners: Vec<String> = (db.live_replicas(since).await.expect("rows"))
            .into_iter()
            .map(|r| r.owner)
            .collect();
        assert_eq!(owners.len(), 2);
        assert!(!owners.contains(&"dead-here".to_string()), "{owners:?}");
        a.leave().await;
    }

    /// With the database gone, a replica keeps its last share instead of growing.
    async fn unreachable_registry_keeps_the_last_share(db: StateDb) {
        let ((ga, _a), (gb, _b)) = (busy_graph(), busy_graph());
        let a = Replicas::join(&db, &ga, "a", FAST).await.expect("a");
        let b = Replicas::join(&db, &gb, "b", FAST).await.expect("b");
        assert_eq!(b.live(), 2);
        db.close().await;
        tokio::time::sleep(FAST.ttl * 2).await;
        assert_eq!((a.live(), b.live()), (2, 2), "no growth without a count");
        a.leave().await;
        b.leave().await;
    }

    fn registry_row(rows: &[ReplicaRow], owner: &str) -> ReplicaRow {
        rows.iter()
            .find(|r| r.owner == owner)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {owner} in {rows:?}"))
    }

    async fn rows(db: &StateDb) -> Vec<ReplicaRow> {
        let since = Utc::now() - chrono::Duration::from_std(FAST.ttl).expect("ttl");
        db.live_replicas(since).await.expect("rows")
    }

    /// A replica whose budget goes unused parks it and is counted out: the others grow into
    /// its share within a heartbeat. A request then waits at its parked budget until it is
    /// counted again and the others' rows show they have shrunk; only then does it go out.
    async fn an_idle_replica_gives_its_share_up_and_takes_it_back(db: StateDb) {
        let ((ga, _a), (gb, _b)) = (busy_graph(), busy_graph());
        let (gc, c_busy) = busy_graph();
        let a = Replicas::join(&db, &ga, "a", FAST).await.expect("a");
        let b = Replicas::join(&db, &gb, "b", FAST).await.expect("b");
        let c = Replicas::join(&db, &gc, "c", FAST).await.expect("c");
        wait_until("all three share", || {
            (a.live(), b.live(), c.live()) == (3, 3, 3)
        })
        .await;
        tokio::time::sleep(FAST.heartbeat).await;
        assert!(!c.is_idle(), "an export in progress keeps the share");

        drop(c_busy);
        let done = Instant::now();
        wait_until("c goes idle", || c.is_idle()).await;
        // The budget parks before the heartbeat writes the idle row (sending nothing first is
        // the safe side), so the row may lag the flag by that write.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let row = registry_row(&rows(&db).await, "c");
            if row.is_idle() {
                break;
            }
            assert!(Instant::now() < deadline, "row not idle: {row:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wait_until("a and b count c out", || a.live() == 2 && b.live() == 2).await;
        // A few heartbeats; generous, as the suite shares 2 loaded cores. Without parking,
        // c would keep its share until it left.
        assert!(
            done.elapsed() < Duration::from_secs(5),
            "share given up late: {:?}",
            done.elapsed()
        );
        assert_eq!(rps(&a), 15.0);

        // c has a request to send: it must not go out before a and b have shrunk. (An export
        // starting does not wake c by itself: only a request does.)
        let c_busy = gc.busy();
        tokio::time::sleep(FAST.heartbeat).await;
        assert!(c.is_idle() && a.live() == 2);
        let request = tokio::spawn({
            let gc = gc.clone();
            async move {
                gc.take_slot(crate::graph::Endpoint::Interactions).await;
            }
        });
        let mut saw_waiting = false;
        while !request.is_finished() {
            // Parked state first: once c is let through, a and b must already have shrunk.
            let parked = c.is_idle();
            let seen = (a.live(), b.live());
            if parked {
                saw_waiting |= seen == (2, 2);
            } else {
                assert_eq!(seen, (3, 3), "c took its share before a and b shrank");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        request.await.expect("request");
        assert!(saw_waiting, "the request waited for the others to shrink");
        assert_eq!((a.live(), b.live(), c.live()), (3, 3, 3));
        let rows = rows(&db).await;
        for owner in ["a", "b", "c"] {
            let row = registry_row(&rows, owner);
            assert!(!row.is_idle(), "{row:?}");
            assert_eq!(row.budget_divisor, 3, "{row:?}");
        }
        assert!(!c.is_idle());
        // Nothing uses c's budget any more: it goes idle again.
        drop(c_busy);
        wait_until("c idle again", || c.is_idle()).await;
        wait_until("a and b grow again", || a.live() == 2 && b.live() == 2).await;
        for r in [a, b, c] {
            r.leave().await;
        }
    }

    /// The gate itself: parked only when unused for the quiet time; a request waits there and
    /// asks to be let through.
    #[tokio::test]
    async fn the_budget_parks_only_when_unused() {
        let g = graph();
        let budget = g.budget();
        let quiet = Duration::from_millis(30);
        assert!(!budget.park_if_unused(quiet), "just used (created)");
        tokio::time::sleep(quiet).await;
        let busy = g.busy();
        assert!(!budget.park_if_unused(quiet), "an export holds it");
        drop(busy);
        assert!(!budget.park_if_unused(quiet), "just used");
        tokio::time::sleep(quiet).await;
        assert!(budget.park_if_unused(quiet));
        assert!(budget.is_parked() && !budget.wanted());
        let request = tokio::spawn({
            let g = g.clone();
            async move { g.take_slot(crate::graph::Endpoint::Other).await }
        });
        wait_until("the request asks for the budget", || g.budget().wanted()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !request.is_finished(),
            "a parked budget lets nothing through"
        );
        budget.unpark();
        request.await.expect("request");
        assert!(!budget.wanted() && !budget.is_parked());
    }

    use crate::both_backends;

    both_backends!(
        shares_follow_the_live_replicas,
        shares_change_within_a_tick,
        dead_neighbours_are_forgotten_at_join,
        unreachable_registry_keeps_the_last_share,
        an_idle_replica_gives_its_share_up_and_takes_it_back
    );
}
