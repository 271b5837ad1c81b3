//! Group commit for `syncfs`: concurrent batches of one store share filesystem syncs.
//!
//! syncfs(2) flushes the whole filesystem, so every batch that waits on a sync already running
//! would otherwise repeat its work right after. A caller takes a ticket once its own writes are
//! done and returns only after a sync that *began* after its ticket has finished; whoever finds
//! no sync running runs one for every ticket issued so far.

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
pub(super) struct SyncGroup {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Last ticket handed out (tickets are 1, 2, 3, ...: one per caller).
    issued: u64,
    /// Every ticket up to this one is covered by a finished sync.
    completed: u64,
    running: bool,
    /// Failed syncs not yet reported to every caller they covered.
    failures: VecDeque<Failure>,
}

/// A failed sync covering tickets `from + 1 ..= to`.
#[derive(Debug)]
struct Failure {
    from: u64,
    to: u64,
    error: io::Error,
    /// Covered callers that have not yet collected the error.
    unreported: u64,
}

impl SyncGroup {
    /// Returns once a sync (`sync` here or another caller's) that started after this call
    /// began has finished, with that sync's outcome. Blocks: call from blocking threads.
    pub(super) fn sync_after(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        let mut sync = Some(sync);
        while state.completed < ticket {
            if state.running {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Lead: tickets issued so far all belong to callers whose writes are done.
            let (from, to) = (state.completed, state.issued);
            state.running = true;
            drop(state);
            let guard = Leading {
                group: self,
                from,
                to,
            };
            let run = sync
                .take()
                .ok_or_else(|| io::Error::other("sync ran twice"));
            let outcome = run.and_then(|f| f());
            state = guard.finish(outcome);
        }
        match state
            .failures
            .iter()
            .position(|f| f.from < ticket && ticket <= f.to)
        {
            Some(i) => {
                let failure = &mut state.failures[i];
                let error = io::Error::new(failure.error.kind(), failure.error.to_string());
                failure.unreported -= 1;
                if failure.unreported == 0 {
                    state.failures.remove(i);
                }
                Err(error)
            }
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn tickets(&self) -> u64 {
        self.lock().issued
    }

    #[cfg(test)]
    fn pending_failures(&self) -> usize {
        self.lock().failures.len()
    }
}

/// A sync in progress; if the leader unwinds, the covered callers are failed rather than
/// left waiting forever.
struct Leading<'a> {
    group: &'a SyncGroup,
    from: u64,
    to: u64,
}

impl<'a> Leading<'a> {
    fn finish(self, outcome: io::Result<()>) -> MutexGuard<'a, State> {
        let state = self.publish(outcome);
        std::mem::forget(self);
        state
    }

    fn publish(&self, outcome: io::Result<()>) -> MutexGuard<'a, State> {
        let mut state = self.group.lock();
        state.running = false;
        state.completed = self.to;
        if let Err(error) = outcome {
            state.failures.push_back(Failure {
                from: self.from,
                to: self.to,
                error,
                unreported: self.to - self.from,
            });
        }
        self.group.done.notify_all();
        state
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        drop(self.publish(Err(io::Error::other("filesystem sync panicked"))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    /// Starts a caller whose sync blocks until released; returns once that sync is running.
    fn blocked_leader(
        group: &Arc<SyncGroup>,
        syncs: &Arc<AtomicU64>,
    ) -> (mpsc::Sender<()>, thread::JoinHandle<io::Result<()>>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (group, syncs) = (group.clone(), syncs.clone());
        let leader = thread::spawn(move || {
            group.sync_after(|| {
                syncs.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).expect("test alive");
                release_rx.recv().expect("released");
                Ok(())
            })
        });
        started_rx.recv().expect("leader syncing");
        (release_tx, leader)
    }

    fn wait_for_tickets(group: &SyncGroup, n: u64) {
        while group.tickets() < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_caller_arriving_during_a_sync_waits_for_the_next_one() {
        let group = Arc::new(SyncGroup::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let (release, leader) = blocked_leader(&group, &syncs);
        let returned = Arc::new(AtomicBool::new(false));
        let late = {
            let (group, syncs, returned) = (group.clone(), syncs.clone(), returned.clone());
            thread::spawn(move || {
                let outcome = group.sync_after(|| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                });
                returned.store(true, Ordering::SeqCst);
                (outcome, syncs.load(Ordering::SeqCst))
            })
        };
        wait_for_tickets(&group, 2);
        thread::sleep(Duration::from_millis(20));
        assert!(
            !returned.load(Ordering::SeqCst),
            "released during a sync it is not covered by"
        );
        release.send(()).expect("leader alive");
        leader.join().expect("leader").expect("sync ok");
        let (outcome, syncs_seen) = late.join().expect("late caller");
        outcome.expect("sync ok");
        assert_eq!(
            syncs_seen, 2,
            "the late caller needs a sync that began after it arrived"
        );
    }

    #[test]
    fn callers_waiting_together_share_one_sync() {
        let group = Arc::new(SyncGroup::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let (release, leader) = blocked_leader(&group, &syncs);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                thread::spawn(move || {
                    group.sync_after(|| {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        wait_for_tickets(&group, 9);
        release.send(()).expect("leader alive");
        leader.join().expect("leader").expect("sync ok");
        for w in waiters {
            w.join().expect("waiter").expect("sync ok");
        }
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "eight waiters, one shared sync"
        );
    }

    #[test]
    fn a_failed_sync_fails_every_caller_it_covered_and_only_those() {
        let group = Arc::new(SyncGroup::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let (release, leader) = blocked_leader(&group, &syncs);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let group = group.clone();
                thread::spawn(move || group.sync_after(|| Err(io::Error::other("EIO"))))
            })
            .collect();
        wait_for_tickets(&group, 4);
        release.send(()).expect("leader alive");
        leader
            .join()
            .expect("leader")
            .expect("its own sync succeeded");
        for w in waiters {
            let err = w
                .join()
                .expect("waiter")
                .expect_err("covered by the failed sync");
            assert!(err.to_string().contains("EIO"));
        }
        assert_eq!(
            group.pending_failures(),
            0,
            "reported failures are forgotten"
        );
        group
            .sync_after(|| Ok(()))
            .expect("a later sync is unaffected");
    }

    #[test]
    fn a_panicking_sync_fails_its_callers_instead_of_hanging_them() {
        let group = Arc::new(SyncGroup::default());
        let g = group.clone();
        let panicked = thread::spawn(move || g.sync_after(|| panic!("boom"))).join();
        assert!(panicked.is_err());
        group.sync_after(|| Ok(())).expect("the group still works");
    }
}
