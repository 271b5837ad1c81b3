//! Per-endpoint rate budgets: the client paces itself below Graph's documented per-tenant
//! limits instead of discovering them through 429s. Requests on one team or one chat also
//! take from that resource's own budget (Graph: 4 rps per app per team, 1 rps per app per
//! chat or channel), or a single team's export would be throttled while the tenant budget
//! has room.
//!
//! Replicas sharing one tenant split the tenant-wide budgets (interactions, messages, other)
//! evenly: each runs at `budget / live replicas`, set through [`RateBudget::set_replicas`]. The
//! per-team and per-chat budgets are not split: they are per resource, and leases keep a team
//! (or a user's chats) with one replica at a time.
//!
//! A replica with nothing to send gives its share up: `crate::replicas` parks the budget (every
//! tenant-wide request then waits at the gate) before marking itself idle in the registry, and
//! the others grow into its share. A request that arrives at the parked gate asks the replica
//! to become active again; it goes out once the others have made room. Exports in progress
//! hold a [`Busy`] guard, so that a replica is never parked between two windows of one scope.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::error::GraphError;

/// The rate-budget class of a request (Graph throttles these API families separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `getAllEnterpriseInteractions` (Copilot interactions).
    Interactions,
    /// Teams `getAllMessages` (chats and channels).
    Messages,
    /// Everything else (users, transcripts, recordings, subscriptions, ...).
    Other,
}

/// Requests per second allowed for each endpoint class.
#[derive(Clone, Debug, PartialEq)]
pub struct Budgets {
    pub interactions_rps: f64,
    pub messages_rps: f64,
    pub other_rps: f64,
    /// Requests per second on one team (`/teams/{id}/...`, `/teamwork/deletedTeams/{id}/...`).
    pub per_team_rps: f64,
    /// Requests per second on one chat (`/chats/{id}/...`).
    pub per_chat_rps: f64,
}

impl Default for Budgets {
    /// A margin below the documented per-app-per-tenant limits (30, 200 and 30 rps), so that
    /// other apps' noise and clock skew do not push us into throttling.
    fn default() -> Self {
        Self {
            interactions_rps: 25.0,
            messages_rps: 150.0,
            other_rps: 25.0,
            per_team_rps: 4.0,
            per_chat_rps: 1.0,
        }
    }
}

impl Budgets {
    /// One replica's share when `replicas` share the tenant: the tenant-wide budgets divided
    /// evenly, the per-team and per-chat ones unchanged (0 counts as 1).
    pub fn split(&self, replicas: u32) -> Budgets {
        let n = f64::from(replicas.max(1));
        Budgets {
            interactions_rps: self.interactions_rps / n,
            messages_rps: self.messages_rps / n,
            other_rps: self.other_rps / n,
            ..self.clone()
        }
    }
}

/// What one replica may send now: its share of the configured budgets.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetShare {
    /// Live replicas the tenant-wide budgets are divided by (1: this process alone).
    pub replicas: u32,
    /// The budgets in force in this process (`configured.split(replicas)`).
    pub budgets: Budgets,
}

/// A team or chat with a budget of its own, recognised in a request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    Team(String),
    Chat(String),
}

impl Resource {
    /// `/v1.0/teams/{id}/...`, `/v1.0/teamwork/deletedTeams/{id}/...`, `/v1.0/chats/{id}/...`
    /// (whatever the version prefix); None for anything else, listings included.
    pub(crate) fn of_path(path: &str) -> Option<Resource> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let at = |name: &str| segs.iter().position(|s| s.eq_ignore_ascii_case(name));
        let below = |i: usize| segs.get(i + 1).filter(|_| segs.len() > i + 2);
        if let Some(i) =
            at("deletedTeams").filter(|&i| i > 0 && segs[i - 1].eq_ignore_ascii_case("teamwork"))
        {
            return below(i).map(|id| Resource::Team(id.to_ascii_lowercase()));
        }
        if let Some(i) = at("teams").filter(|&i| i <= 1) {
            return below(i).map(|id| Resource::Team(id.to_ascii_lowercase()));
        }
        if let Some(i) = at("chats").filter(|&i| i <= 1) {
            return below(i).map(|id| Resource::Chat(id.to_ascii_lowercase()));
        }
        None
    }
}

/// The tenant-wide limiters of one share; replaced whole when the share changes (a governor
/// quota is fixed per limiter).
#[derive(Debug)]
struct TenantLimiters {
    share: BudgetShare,
    interactions: Pace,
    messages: Pace,
    other: Pace,
}

impl TenantLimiters {
    fn new(configured: &Budgets, replicas: u32) -> Result<Self, GraphError> {
        let budgets = configured.split(replicas);
        let pace = |name, whole: f64, share: f64| {
            Pace::with_catch_up(name, share, shared_catch_up_slots(whole, replicas))
        };
        Ok(Self {
            interactions: pace(
                "interactions_rps",
                configured.interactions_rps,
                budgets.interactions_rps,
            )?,
            messages: pace(
                "messages_rps",
                configured.messages_rps,
                budgets.messages_rps,
            )?,
            other: pace("other_rps", configured.other_rps, budgets.other_rps)?,
            share: BudgetShare {
                replicas: replicas.max(1),
                budgets,
            },
        })
    }

    fn get(&self, endpoint: Endpoint) -> &Pace {
        match endpoint {
            Endpoint::Interactions => &self.interactions,
            Endpoint::Messages => &self.messages,
            Endpoint::Other => &self.other,
        }
    }
}

/// One evenly spaced limiter per endpoint class.
#[derive(Debug)]
pub(crate) struct RateBudget {
    configured: Budgets,
    /// Read on every request (an uncontended read lock and an Arc clone), written only when
    /// the number of replicas changes.
    tenant: RwLock<Arc<TenantLimiters>>,
    per_team_rps: f64,
    per_chat_rps: f64,
    /// One limiter per team or chat seen (a tenant has a bounded number of them).
    per_resource: Mutex<HashMap<Resource, Arc<Pace>>>,
    /// Closed while this replica is idle (its share given up).
    gate: Arc<Gate>,
}

/// Whether this replica may send at all, and whether it has anything to send.
#[derive(Debug)]
struct Gate {
    /// Set while idle: tenant-wide requests wait until the replica is active again.
    parked: AtomicBool,
    /// Requests taking a slot plus [`Busy`] guards held: while nonzero the replica is in use.
    in_use: AtomicUsize,
    /// Requests held at the parked gate: they want the replica active again.
    waiting: AtomicUsize,
    /// When a use last began or ended.
    last_use: Mutex<Instant>,
    /// Woken when a request starts waiting at the gate or the last use ends (the replica's
    /// registry task listens).
    changed: tokio::sync::Notify,
    /// Wakes the requests held at the gate when it opens.
    opened: tokio::sync::Notify,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            parked: AtomicBool::new(false),
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            last_use: Mutex::new(Instant::now()),
            changed: tokio::sync::Notify::new(),
            opened: tokio::sync::Notify::new(),
        }
    }

    fn touch(&self) {
        *self.last_use.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.in_use.fetch_add(1, SeqCst);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// Nothing in use, and nothing was for `quiet`.
    fn unused_for(&self, quiet: Duration) -> bool {
        self.in_use.load(SeqCst) == 0
            && self
                .last_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                >= quiet
    }

    /// Parks the gate if nothing used the budget for `quiet`. `parked` and `in_use` are both
    /// SeqCst: a request that enters while this parks either sees the gate parked (and waits)
    /// or is seen here (and the gate opens again).
    fn park_if_unused(&self, quiet: Duration) -> bool {
        if self.parked.load(SeqCst) {
            return true;
        }
        if !self.unused_for(quiet) {
            return false;
        }
        self.parked.store(true, SeqCst);
        if self.unused_for(quiet) {
            return true;
        }
        self.open();
        false
    }

    fn open(&self) {
        self.parked.store(false, SeqCst);
        self.opened.notify_waiters();
    }

    /// Returns at once while the gate is open; else asks for it to open and waits.
    async fn pass(&self) {
        if !self.parked.load(SeqCst) {
            return;
        }
        struct Waiting<'a>(&'a Gate);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, SeqCst);
            }
        }
        self.waiting.fetch_add(1, SeqCst);
        let _waiting = Waiting(self);
        self.changed.notify_one();
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if !self.parked.load(SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

/// Marks the budget in use while held (an export between its windows): the replica is not
/// parked meanwhile. Taken with [`crate::graph::GraphClient::busy`].
#[derive(Debug)]
#[must_use = "the budget is in use only while the guard is held"]
pub struct Busy(Arc<Gate>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.in_use.fetch_sub(1, SeqCst) == 1 {
            self.0.changed.notify_one();
        }
    }
}

impl RateBudget {
    pub(crate) fn new(budgets: &Budgets) -> Result<Self, GraphError> {
        // Validated now so that a bad value fails at start, not at the first team.
        Pace::new("per_team_rps", budgets.per_team_rps)?;
        Pace::new("per_chat_rps", budgets.per_chat_rps)?;
        Ok(Self {
            tenant: RwLock::new(Arc::new(TenantLimiters::new(budgets, 1)?)),
            configured: budgets.clone(),
            per_team_rps: budgets.per_team_rps,
            per_chat_rps: budgets.per_chat_rps,
            per_resource: Mutex::new(HashMap::new()),
            gate: Arc::new(Gate::new()),
        })
    }

    /// Holds the replica active until dropped (see [`Busy`]).
    pub(crate) fn busy(&self) -> Busy {
        self.gate.enter()
    }

    /// Gives up the share if the budget was not used for `quiet` (nothing in flight, no
    /// guard held): tenant-wide requests wait at the gate from now on. True if parked.
    pub(crate) fn park_if_unused(&self, quiet: Duration) -> bool {
        self.gate.park_if_unused(quiet)
    }

    /// Lets requests through again (at the share set by then).
    pub(crate) fn unpark(&self) {
        self.gate.open();
    }

    pub(crate) fn is_parked(&self) -> bool {
        self.gate.parked.load(SeqCst)
    }

    /// Whether requests wait at the parked gate.
    pub(crate) fn wanted(&self) -> bool {
        self.gate.waiting.load(SeqCst) > 0
    }

    /// Counts as a use now (a replica that just joined is about to send).
    pub(crate) fn touch(&self) {
        self.gate.touch();
    }

    /// Resolves when a request starts waiting at the gate or the last use ends (or already
    /// did since the last call).
    pub(crate) async fn activity_changed(&self) {
        self.gate.changed.notified().await;
    }

    /// Divides the tenant-wide budgets by `replicas` from now on. Ok(false) if that was
    /// already the share.
    pub(crate) fn set_replicas(&self, replicas: u32) -> Result<bool, GraphError> {
        let replicas = replicas.max(1);
        if self.current().share.replicas == replicas {
            return Ok(false);
        }
        let next = Arc::new(TenantLimiters::new(&self.configured, replicas)?);
        *self.tenant.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }

    pub(crate) fn share(&self) -> BudgetShare {
        self.current().share.clone()
    }

    fn current(&self) -> Arc<TenantLimiters> {
        Arc::clone(&self.tenant.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits for the next slot of `endpoint`'s budget, and of the team's or chat's that
    /// `path` addresses, if any. The resource goes first: waiting for it must not hold a
    /// tenant slot that other scopes could use.
    /// While the replica is parked (idle), the request first waits for it to be active again.
    pub(crate) async fn acquire(&self, endpoint: Endpoint, path: &str) {
        let _use = self.gate.enter();
        if let Some(resource) = self.resource_limiter(path) {
            resource.ready().await;
        }
        loop {
            self.gate.pass().await;
            let tenant = self.current();
            tenant.get(endpoint).ready().await;
            // Parked while we queued (a race with the last use ending): wait to be active.
            if self.is_parked() {
                continue;
            }
            // The share changed while we waited: queue again at the new rate, or every request
            // queued at the old rate would go out on top of the new share.
            if Arc::ptr_eq(&tenant, &self.current()) {
                return;
            }
        }
    }

    fn resource_limiter(&self, path: &str) -> Option<Arc<Pace>> {
        let resource = Resource::of_path(path)?;
        let rps = match resource {
            Resource::Team(_) => self.per_team_rps,
            Resource::Chat(_) => self.per_chat_rps,
        };
        let mut map = self.per_resource.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(&resource) {
            return Some(Arc::clone(l));
        }
        // Validated in `new`; a failure here cannot happen, and then no extra limit applies.
        let l = Arc::new(Pace::new("per-resource", rps).ok()?);
        map.insert(resource, Arc::clone(&l));
        Some(l)
    }
}

/// How late a request may be for its slot and still have it: the catch-up a budget allows.
const CATCH_UP: Duration = Duration::from_millis(20);

/// One budget: requests go out evenly spaced at its rate (a GCRA limiter with a period of
/// 1/rps). A request that reaches its slot late (its task was not polled in time on a busy
/// process) may still take it within `CATCH_UP`, as a burst of `rps x CATCH_UP` slots (at least
/// one); with no catch-up at all, every late slot was lost and a saturated budget ran at 85-95%.
/// The average never exceeds the rate; any second holds at most the slots caught up on more
/// than strictly even spacing would send (three at 200 rps, none at 30 rps or less).
///
/// Waiters take turns (a fair queue) so that each slot wakes the one task whose turn it is,
/// not every task waiting on the budget.
#[derive(Debug)]
struct Pace {
    limiter: DefaultDirectRateLimiter,
    turn: tokio::sync::Mutex<()>,
}

impl Pace {
    fn new(name: &str, rps: f64) -> Result<Pace, GraphError> {
        Pace::with_catch_up(name, rps, catch_up_slots(rps))
    }

    fn with_catch_up(name: &str, rps: f64, slots: NonZeroU32) -> Result<Pace, GraphError> {
        let invalid = || {
            GraphError::Config(format!(
                "budget {name} must be a positive number of requests per second, got {rps}"
            ))
        };
        if !(rps.is_finite() && rps > 0.0) {
            return Err(invalid());
        }
        let period = Duration::try_from_secs_f64(1.0 / rps).map_err(|_| invalid())?;
        let quota = Quota::with_period(period)
            .ok_or_else(invalid)?
            .allow_burst(slots);
        Ok(Pace {
            limiter: RateLimiter::direct(quota),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    async fn ready(&self) {
        let _turn = self.turn.lock().await;
        self.limiter.until_ready().await;
    }
}

/// The slots a request at `rps` may catch up on: those of `CATCH_UP`, at least one.
fn catch_up_slots(rps: f64) -> NonZeroU32 {
    let slots = (rps * CATCH_UP.as_secs_f64()).floor();
    // Saturating float-to-int cast: a huge budget gets u32::MAX, never a wrap.
    NonZeroU32::new(slots as u32).unwrap_or(NonZeroU32::MIN)
}

/// The slots one of `replicas` shares of a `whole` tenant budget may catch up on: the whole
/// budget's catch-up beyond its first slot, split evenly, and at least one extra slot each if
/// the whole budget has any. Split by the share's own rate instead, 200 rps over 3 replicas
/// left each 66.7 rps share no catch-up at all (one slot of 20 ms is 1.3), and the three
/// together ran 1% below the budget all through the pass. Together the shares send at most
/// `max(whole extra, replicas)` slots more than even spacing in any second.
fn shared_catch_up_slots(whole: f64, replicas: u32) -> NonZeroU32 {
    let extra = catch_up_slots(whole).get() - 1;
    if extra == 0 {
        return NonZeroU32::MIN;
    }
    let each = (extra / replicas.max(1)).max(1);
    NonZeroU32::new(each.saturating_add(1)).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_budgets() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300] {
            let budgets = Budgets {
                interactions_rps: bad,
                ..Budgets::default()
            };
            assert!(RateBudget::new(&budgets).is_err(), "{bad}");
        }
        assert!(RateBudget::new(&Budgets::default()).is_ok());
        let budgets = Budgets {
            per_team_rps: 0.0,
            ..Budgets::default()
        };
        assert!(RateBudget::new(&budgets).is_err());
    }

    #[test]
    fn teams_and_chats_are_recognised_in_paths() {
        let team = Some(Resource::Team("t1".into()));
        assert_eq!(
            Resource::of_path("/v1.0/teams/T1/channels/getAllMessages"),
            team
        );
        assert_eq!(
            Resource::of_path("/v1.0/teamwork/deletedTeams/t1/channels/getAllMessages"),
            team
        );
        assert_eq!(
            Resource::of_path("/beta/chats/19:a@thread.v2/messages"),
            Some(Resource::Chat("19:a@thread.v2".into()))
        );
        for none in [
            "/v1.0/teams",
            "/v1.0/teamwork/deletedTeams",
            "/v1.0/users/u/chats/getAllMessages",
            "/v1.0/users",
        ] {
            assert_eq!(Resource::of_path(none), None, "{none}");
        }
    }

    #[tokio::test]
    async fn one_team_is_paced_at_its_own_rate() {
        let budgets = Budgets {
            messages_rps: 1000.0,
            per_team_rps: 20.0,
            ..Budgets::default()
        };
        let budget = RateBudget::new(&budgets).expect("budget");
        let started = std::time::Instant::now();
        for _ in 0..6 {
            budget
                .acquire(Endpoint::Messages, "/v1.0/teams/a/channels/getAllMessages")
                .await;
        }
        // Burst 1 at 20 rps: five waits of 50 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(240),
            "{:?}",
            started.elapsed()
        );
        let other = std::time::Instant::now();
        budget
            .acquire(Endpoint::Messages, "/v1.0/teams/b/channels/getAllMessages")
            .await;
        assert!(
            other.elapsed() < Duration::from_millis(40),
            "another team is not held back"
        );
    }

    #[test]
    fn replicas_split_only_the_tenant_wide_budgets() {
        let full = Budgets::default();
        let third = full.split(3);
        assert!((third.interactions_rps - 25.0 / 3.0).abs() < 1e-9);
        assert!((third.messages_rps - 50.0).abs() < 1e-9);
        assert!((third.other_rps - 25.0 / 3.0).abs() < 1e-9);
        assert_eq!(third.per_team_rps, full.per_team_rps);
        assert_eq!(third.per_chat_rps, full.per_chat_rps);
        assert_eq!(full.split(0), full);
        assert_eq!(full.split(1), full);
        let budget = RateBudget::new(&full).expect("budget");
        assert_eq!(budget.share().replicas, 1);
        assert!(budget.set_replicas(3).expect("split"));
        assert!(
            !budget.set_replicas(3).expect("same"),
            "no change, no rebuild"
        );
        assert_eq!(
            budget.share(),
            BudgetShare {
                replicas: 3,
                budgets: third
            }
        );
        assert!(budget.set_replicas(0).expect("back to one"));
        assert_eq!(budget.share().budgets, full);
    }

    /// Ten requests at 100 rps alone take ~80 ms; split four ways, ~360 ms. A request queued
    /// before the split is paced by the new share too.
    #[tokio::test]
    async fn a_split_budget_paces_at_the_share() {
        let budgets = Budgets {
            interactions_rps: 100.0,
            ..Budgets::default()
        };
        let budget = Arc::new(RateBudget::new(&budgets).expect("budget"));
        let path = "/v1.0/copilot/users/u/interactionHistory/getAllEnterpriseInteractions";
        let timed = |budget: Arc<RateBudget>| async move {
            let started = std::time::Instant::now();
            for _ in 0..10 {
                budget.acquire(Endpoint::Interactions, path).await;
            }
            started.elapsed()
        };
        let alone = timed(budget.clone()).await;
        assert!(alone < Duration::from_millis(300), "{alone:?}");
        budget.set_replicas(4).expect("split");
        let shared = timed(budget.clone()).await;
        // 25 rps, with one slot to catch up on (the whole budget's, split): 8 x 40 ms.
        assert!(shared >= Duration::from_millis(300), "{shared:?}");
        // A waiter on the old limiter when the share shrinks waits again at the new rate.
        budget.set_replicas(1).expect("whole");
        // At 100 rps a fresh limiter has two slots to catch up on; take both.
        budget.acquire(Endpoint::Interactions, path).await;
        budget.acquire(Endpoint::Interactions, path).await;
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move {
                let started = std::time::Instant::now();
                // The first two go out on the fresh 10 rps limiter's two slots, if not before.
                for _ in 0..3 {
                    budget.acquire(Endpoint::Interactions, path).await;
                }
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        budget.set_replicas(10).expect("split");
        let waited = waiter.await.expect("waiter");
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
    }

    /// A late request may still take the slots of the last 20 ms, and no more: four at
    /// 200 rps, one at Copilot's 30 rps and on one chat.
    #[test]
    fn a_budget_catches_up_on_the_slots_of_20_ms() {
        for (rps, slots) in [
            (200.0, 4),
            (150.0, 3),
            (30.0, 1),
            (4.0, 1),
            (1.0, 1),
            (0.001, 1),
            (1000.0, 20),
            (f64::MAX, u32::MAX),
        ] {
            assert_eq!(catch_up_slots(rps).get(), slots, "{rps} rps");
        }
    }

    /// Replicas split the whole budget's catch-up: one alone has all of it, each of several at
    /// least one extra slot when the whole has any, and together little more than the whole.
    #[test]
    fn replicas_split_the_catch_up_of_the_whole_budget() {
        for (whole, replicas, slots) in [
            (200.0, 1, 4),
            (200.0, 2, 2),
            (200.0, 3, 2),
            (200.0, 8, 2),
            (1000.0, 3, 7),
            (30.0, 1, 1),
            (30.0, 3, 1),
            (150.0, 0, 3),
        ] {
            let got = shared_catch_up_slots(whole, replicas).get();
            assert_eq!(got, slots, "{whole} rps over {replicas}");
            let whole_extra = catch_up_slots(whole).get() - 1;
            let n = replicas.max(1);
            assert!(
                (got - 1) * n <= whole_extra.max(n),
                "{whole} rps over {replicas}"
            );
        }
    }

    /// Waiters are served in the order they came: each slot wakes the task whose turn it is.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_take_their_turns_in_order() {
        let pace = Arc::new(Pace::new("test", 100.0).expect("pace"));
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (pace, served) = (pace.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                pace.ready().await;
                served.lock().expect("served").push(i);
            }));
            // Let it queue before the next one comes.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("waiter");
        }
        let served = served.lock().expect("served").clone();
        assert_eq!(served, (0..8).collect::<Vec<_>>());
    }
}
