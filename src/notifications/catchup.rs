//! Catch-up requests: notifications speed capture up but never become the only path. A
//! `missed` or `subscriptionRemoved` event, an item that cannot be archived, a gap or a restart
//! asks for a polling pass over the affected users now, instead of at the next (relaxed)
//! poll interval. Polling windows run from each user's checkpoint, which never passes a record
//! that is not archived, so a pass covers every notification that was lost.

use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use tokio::sync::Notify;

/// Which users a catch-up concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUpScope {
    All,
    Users(BTreeSet<String>),
}

/// Collects catch-up requests until the service loop takes them.
#[derive(Debug, Default)]
pub struct CatchUp {
    pending: Mutex<Option<(CatchUpScope, Vec<String>)>>,
    notify: Notify,
    /// When the latest request was made: polling must cover past it before it may relax.
    last: Mutex<Option<DateTime<Utc>>>,
}

impl CatchUp {
    /// Asks for a sweep; `reason` is for the log.
    pub fn request(&self, scope: CatchUpScope, reason: &str) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let merged = match p.take() {
            None => (scope, vec![reason.to_owned()]),
            Some((old, mut reasons)) => {
                reasons.push(reason.to_owned());
                (merge(old, scope), reasons)
            }
        };
        *p = Some(merged);
        drop(p);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Utc::now());
        tracing::info!(reason, "polling catch-up requested");
        self.notify.notify_one();
    }

    /// Puts back requests taken for a pass that turned out not to cover them (it left some
    /// users for later); unlike `request`, the time of the latest trouble stays as it was.
    pub fn restore(&self, scope: CatchUpScope, reasons: Vec<String>) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *p = Some(match p.take() {
            None => (scope, reasons),
            Some((newer, more)) => (merge(scope, newer), [reasons, more].concat()),
        });
        drop(p);
        self.notify.notify_one();
    }

    /// When the latest request was made, if ever.
    pub fn last_requested(&self) -> Option<DateTime<Utc>> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what was requested so far, if anything.
    pub fn take(&self) -> Option<(CatchUpScope, Vec<String>)> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Waits until a request arrives (returns at once if one is pending).
    pub async fn requested(&self) {
        if self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return;
        }
        self.notify.notified().await;
    }
}

fn merge(a: CatchUpScope, b: CatchUpScope) -> CatchUpScope {
    match (a, b) {
        (CatchUpScope::Users(mut x), CatchUpScope::Users(y)) => {
            x.extend(y);
            CatchUpScope::Users(x)
        }
        _ => CatchUpScope::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_merge_and_wake_the_waiter() {
        let c = CatchUp::default();
        c.request(CatchUpScope::Users(["a".into()].into()), "missed");
        c.request(CatchUpScope::Users(["b".into()].into()), "dead item");
        c.requested().await;
        let (scope, reasons) = c.take().unwrap();
        assert_eq!(scope, CatchUpScope::Users(["a".into(), "b".into()].into()));
        assert_eq!(reasons.len(), 2);
        c.request(CatchUpScope::Users(["a".into()].into()), "x");
        c.request(CatchUpScope::All, "restart");
        assert_eq!(c.take().unwrap().0, CatchUpScope::All);
        assert!(c.take().is_none());
    }
}
