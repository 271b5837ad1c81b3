//! Legal holds: `hold add`, `hold release`, `hold list`, `hold reconcile`.
//!
//! A hold is recorded (with its audit entry) before anything is set in the store, so that from
//! that moment ingest writes the custodian's new records with legal hold and disposition skips
//! them. Then the hold is set on every existing object of the custodian (Set Blob Legal Hold),
//! with progress; each object set is recorded, so an interrupted run is finished by
//! `hold reconcile` (which the daemon also runs every pass) without redoing work.

use super::ComplianceError;
use crate::archive::ArchiveStore;
use crate::ops::progress::Progress;
use crate::state::{AuditEntry, HoldKind, HoldRow, StateDb};
use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};

/// Objects per state-database page.
const PAGE: i64 = 500;
/// Set Legal Hold calls in flight.
const CONCURRENCY: usize = 16;

/// The custodian a hold command names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Custodian {
    pub kind: HoldKind,
    pub id: String,
}

impl std::fmt::Display for Custodian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.id)
    }
}

/// What applying or releasing did in the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HoldWork {
    /// Objects on which the store's legal hold was set (or cleared).
    pub objects: u64,
    /// Objects another active hold still covers (released from this hold, hold kept).
    pub still_held: u64,
}

/// Places a hold on a custodian and sets it on all their archived objects.
pub async fn add(
    state: &StateDb,
    store: &dyn ArchiveStore,
    custodian: &Custodian,
    reason: &str,
    actor: &str,
) -> Result<(HoldRow, HoldWork), ComplianceError> {
    if reason.trim().is_empty() {
        return Err(ComplianceError::Usage(
            "a hold needs --reason (the matter or case it is for)".into(),
        ));
    }
    let target = resolve(state, custodian).await?;
    let hold = state
        .hold_insert(custodian.kind, &target, reason, actor, Utc::now())
        .await?;
    tracing::info!(hold.id = hold.id, custodian = %custodian, "legal hold placed");
    let work = apply(state, store, &hold, actor).await?;
    Ok((hold, work))
}

/// A user may be named by UPN: the archiver's scopes know the UPN of every discovered user, and
/// matching on the id covers records whose custodian is known only by id.
async fn resolve(state: &StateDb, c: &Custodian) -> Result<String, ComplianceError> {
    if c.id.trim().is_empty() {
        return Err(ComplianceError::Usage(format!(
            "empty {} id",
            c.kind.as_str()
        )));
    }
    if c.kind == HoldKind::User && c.id.contains('@') {
        if let Some(id) = state.scope_id_by_label("user", &c.id).await? {
            return Ok(id.to_ascii_lowercase());
        }
    }
    Ok(c.id.trim().to_ascii_lowercase())
}

/// Sets `hold` on every object of its custodian that it is not yet set on.
pub async fn apply(
    state: &StateDb,
    store: &dyn ArchiveStore,
    hold: &HoldRow,
    actor: &str,
) -> Result<HoldWork, ComplianceError> {
    // Counting a large custodian costs a query: only when a bar will show it.
    let total = if crate::ops::progress::on_terminal() {
        Some(state.hold_scope_count(hold).await?.max(0) as u64)
    } else {
        None
    };
    let progress = Progress::new("holding", total);
    let mut work = HoldWork::default();
    let mut after = String::new();
    loop {
        let keys = state.hold_pending_keys(hold, &after, PAGE).await?;
        let Some(last) = keys.last() else { break };
        after = last.clone();
        set_all(store, &keys, true, &progress).await?;
        state
            .record_holds_insert(hold.id, &keys, Utc::now())
            .await?;
        work.objects += keys.len() as u64;
    }
    progress.finish("done");
    if work.objects > 0 {
        audit(
            state,
            actor,
            "legal_hold_applied",
            hold,
            serde_json::json!({ "objects": work.objects }),
        )
        .await?;
    }
    tracing::info!(
        hold.id = hold.id,
        objects = work.objects,
        "legal hold set in the store"
    );
    Ok(work)
}

/// Releases the active hold named by id, or the only active hold on a custodian.
pub async fn release(
    state: &StateDb,
    store: &dyn ArchiveStore,
    which: &HoldSelector,
    reason: &str,
    actor: &str,
) -> Result<(HoldRow, HoldWork), ComplianceError> {
    if reason.trim().is_empty() {
        return Err(ComplianceError::Usage(
            "releasing a hold needs --reason".into(),
        ));
    }
    let id = select(state, which).await?;
    let hold = state
        .hold_release(id, actor, reason, Utc::now())
        .await?
        .ok_or_else(|| ComplianceError::NoSuchHold {
            what: format!("with id {id}"),
        })?;
    let work = let_go(state, store, &hold, actor).await?;
    Ok((hold, work))
}

/// Which hold a release names.
#[derive(Debug, Clone)]
pub enum HoldSelector {
    Id(i64),
    Custodian(Custodian),
}

async fn select(state: &StateDb, which: &HoldSelector) -> Result<i64, ComplianceError> {
    let c = match which {
        HoldSelector::Id(id) => return Ok(*id),
        HoldSelector::Custodian(c) => c,
    };
    let target = resolve(state, c).await?;
    let raw = c.id.trim().to_ascii_lowercase();
    let active: Vec<HoldRow> = state
        .holds(false)
        .await?
        .into_iter()
        .filter(|h| h.kind == c.kind && (h.target == target || h.target == raw))
        .collect();
    match active.as_slice() {
        [one] => Ok(one.id),
        [] => Err(ComplianceError::NoSuchHold {
            what: format!("on {c}"),
        }),
        many => Err(ComplianceError::AmbiguousHold {
            what: c.to_string(),
            count: many.len(),
        }),
    }
}

/// Clears the store's hold on the objects of a released hold, except where another active hold
/// still covers them.
async fn let_go(
    state: &StateDb,
    store: &dyn ArchiveStore,
    hold: &HoldRow,
    actor: &str,
) -> Result<HoldWork, ComplianceError> {
    let progress = Progress::new("releasing", None);
    let mut work = HoldWork::default();
    let mut after = String::new();
    loop {
        let keys = state.record_holds_open(hold.id, &after, PAGE).await?;
        let Some(last) = keys.last() else { break };
        after = last.clone();
        for key in &keys {
            if state.held_by_other(key, hold.id).await? {
                work.still_held += 1;
            } else {
                store.set_legal_hold(key, false).await?;
                work.objects += 1;
            }
            state.record_hold_release(hold.id, key, Utc::now()).await?;
            progress.inc(1);
        }
    }
    progress.finish("done");
    audit(
        state,
        actor,
        "legal_hold_cleared",
        hold,
        serde_json::json!({ "objects": work.objects, "still_held_by_other_holds": work.still_held }),
    )
    .await?;
    Ok(work)
}

/// Finishes interrupted work: sets every active hold on the objects it covers but is not set
/// on yet, and clears released holds still set in the store. Idempotent.
pub async fn reconcile(
    state: &StateDb,
    store: &dyn ArchiveStore,
    actor: &str,
) -> Result<HoldWork, ComplianceError> {
    let mut total = HoldWork::default();
    for hold in state.holds(true).await? {
        let w = if hold.released_at.is_none() {
            apply(state, store, &hold, actor).await?
        } else if state.record_holds_open(hold.id, "", 1).await?.is_empty() {
            continue;
        } else {
            let_go(state, store, &hold, actor).await?
        };
        total.objects += w.objects;
        total.still_held += w.still_held;
    }
    Ok(total)
}

async fn set_all(
    store: &dyn ArchiveStore,
    keys: &[String],
    hold: bool,
    progress: &Progress,
) -> Result<(), ComplianceError> {
    stream::iter(keys)
        .map(|key| async move {
            store.set_legal_hold(key, hold).await?;
            progress.inc(1);
            Ok::<_, ComplianceError>(())
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn audit(
    state: &StateDb,
    actor: &str,
    action: &str,
    hold: &HoldRow,
    mut detail: serde_json::Value,
) -> Result<(), ComplianceError> {
    detail["hold_id"] = hold.id.into();
    state
        .audit(&AuditEntry {
            actor: actor.to_string(),
            action: action.to_string(),
            subject: format!("{}:{}", hold.kind.as_str(), hold.target),
            detail,
        })
        .await?;
    Ok(())
}

/// `hold list` as text.
pub fn render(holds: &[HoldRow]) -> String {
    if holds.is_empty() {
        return "no legal holds\n".into();
    }
    let mut out = format!(
        "{:>4}  {:<5}  {:<38}  {:<20}  {:<10}  reason\n",
        "id", "kind", "custodian", "placed", "state"
    );
    for h in holds {
        let state = match h.released_at {
            None => "active".to_string(),
            Some(t) => format!("released {}", t.format("%Y-%m-%d")),
        };
        out.push_str(&format!(
            "{:>4}  {:<5}  {:<38}  {:<20}  {:<10}  {}\n",
            h.id,
            h.kind.as_str(),
            h.target,
            h.created_at.format("%Y-%m-%d %H:%M UTC"),
            state,
            h.reason
        ));
    }
    out
}
