//! When each (source, scope) is next polled: often while it has new records, ever less often
//! while it has none, and never later than the operator's `export.max_staleness`.
//!
//! After a successful poll that found new record versions, the scope's interval resets to the
//! base interval (`export.poll_interval`); after one that found nothing, it grows by
//! `export.idle_backoff` (1.5 by default), up to `export.max_staleness`. Up to a tenth of each
//! interval, taken off (never added), spreads scopes that were polled together over later
//! passes.
//!
//! Due now, whatever the schedule: a departed scope (its final sweep), a scope that never
//! succeeded, and a scope whose last attempt failed. A catch-up request from change
//! notifications polls its users at once (a catch-up pass runs outside this policy), and while
//! notifications cover a user (`notifications::adaptive`, `notified` below) its Copilot poll may
//! wait past its due time until `notifications.sweep_interval`: coverage is one input here.
//!
//! The bound. Times are those of the daemon's passes, one every base interval `b`. A pass
//! starting at `P` polls a scope when `polled_at + max_staleness < P + b` (hard rule: waiting
//! for the next pass could exceed the bound) or when its scheduled time is at most `P + b/4`
//! (soft rule: the first pass at its time, give or take the noise in when passes start; never
//! much earlier, since growth counts polls and early polls would make intervals grow faster
//! than time passes). `polled_at` is the start of the pass that last polled the
//! scope. A record created at `t` and missed by that poll has `t >= polled_at - settle_lag`
//! (windows end at `now - settle_lag`); the next poll's pass starts no later than
//! `polled_at + max_staleness`; so the record is archived at most
//! `max_staleness + settle_lag + D` after it was created, where `D` is the time its pass took to
//! reach and export the scope ("one poll's duration"). This holds while passes keep their
//! cadence (each finishes within `b`; the daemon warns when one does not) and without
//! notifications stretching the interval.

use std::time::Duration;

use crate::config::ExportConfig;
use crate::state::{PollHorizon, PollSchedule};

/// The policy's parameters, in epoch milliseconds like the state it reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The base interval and the daemon's pass cadence (`export.poll_interval`).
    pub base_ms: i64,
    /// The longest interval (`export.max_staleness`), at least `base_ms`.
    pub max_ms: i64,
    /// Growth of the interval after a poll that found nothing new (`export.idle_backoff`).
    pub backoff: f64,
    /// Share of an interval taken off at random, 0 to 0.5.
    pub jitter: f64,
}

/// The default share of an interval taken off at random.
pub const JITTER: f64 = 0.1;

/// What is known about one (source, scope) when a pass starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The scope left the tenant and awaits its final sweep.
    pub departed: bool,
    pub last_success_at: Option<i64>,
    pub last_error_at: Option<i64>,
    pub schedule: Option<&'a PollSchedule>,
    /// Change notifications cover this scope now (`notifications::adaptive`).
    pub notified: bool,
}

/// Why a scope is polled in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    FinalSweep,
    NeverSucceeded,
    Failed,
    /// Polled before, but no schedule was written (a crash in between, or older state).
    Unscheduled,
    /// Its scheduled time has come.
    Scheduled,
    /// The next pass would be later than `max_staleness` after the last poll.
    Bound,
}

/// Why a scope waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until its scheduled time (epoch ms).
    Until(i64),
    /// Notifications cover it; `notifications.sweep_interval` ends that.
    Notified,
}

/// The decision for one scope in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Due(Due),
    Wait(Wait),
}

impl Decision {
    pub fn is_due(&self) -> bool {
        matches!(self, Decision::Due(_))
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Policy {
    pub fn new(base: Duration, max_staleness: Duration, backoff: f64) -> Policy {
        let base_ms = ms(base).max(1);
        Policy {
            base_ms,
            max_ms: ms(max_staleness).max(base_ms),
            backoff: backoff.max(1.0),
            jitter: JITTER,
        }
    }

    pub fn from_config(cfg: &ExportConfig) -> Policy {
        Policy::new(cfg.poll_interval, cfg.max_staleness, cfg.idle_backoff)
    }

    /// The cut-offs of a pass starting at `pass_start_ms` (the state database's due query
    /// compares with the same two numbers).
    pub fn horizon(&self, pass_start_ms: i64) -> PollHorizon {
        PollHorizon {
            scheduled_by: pass_start_ms.saturating_add(self.base_ms / 4),
            // polled_at + max < pass_start + base: the next pass, `base` later, would be late.
            // Strict, so that on an exact cadence the scope is polled at max, not max - base.
            polled_before: pass_start_ms
                .saturating_add(self.base_ms)
                .saturating_sub(self.max_ms),
        }
    }

    /// Whether a pass starting at `pass_start_ms` polls the scope.
    pub fn decide(&self, f: &Facts, pass_start_ms: i64) -> Decision {
        if f.departed {
            return Decision::Due(Due::FinalSweep);
        }
        let Some(ok) = f.last_success_at else {
            return Decision::Due(Due::NeverSucceeded);
        };
        if f.last_error_at.is_some_and(|e| e >= ok) {
            return Decision::Due(Due::Failed);
        }
        if f.notified {
            return Decision::Wait(Wait::Notified);
        }
        let Some(s) = f.schedule else {
            return Decision::Due(Due::Unscheduled);
        };
        let h = self.horizon(pass_start_ms);
        if s.polled_at < h.polled_before {
            Decision::Due(Due::Bound)
        } else if s.next_due_at <= h.scheduled_by {
            Decision::Due(Due::Scheduled)
        } else {
            Decision::Wait(Wait::Until(self.next_due(s)))
        }
    }

    /// The latest instant the schedule lets the scope wait until (the bound included, so a
    /// schedule written under a longer `max_staleness` cannot outlast a shorter one).
    pub fn next_due(&self, s: &PollSchedule) -> i64 {
        s.next_due_at.min(s.polled_at.saturating_add(self.max_ms))
    }

    /// The interval after a successful poll: the base one if it found new record versions,
    /// otherwise the previous one times the backoff, within [base, max].
    pub fn next_interval(&self, prev: Option<&PollSchedule>, found_new: bool) -> i64 {
        if found_new || self.backoff <= 1.0 {
            return self.base_ms;
        }
        let prev = prev.map_or(self.base_ms, |p| p.interval_ms);
        // f64 holds any interval in ms exactly enough; `as` saturates.
        let grown = (prev as f64 * self.backoff).round() as i64;
        grown.clamp(self.base_ms, self.max_ms)
    }

    /// The schedule after a successful poll in the pass that started at `polled_at`.
    pub fn after_poll(
        &self,
        prev: Option<&PollSchedule>,
        source: &str,
        scope_id: &str,
        polled_at: i64,
        found_new: bool,
    ) -> PollSchedule {
        let interval = self.next_interval(prev, found_new);
        let unit = unit_hash(source, scope_id, polled_at);
        // Jitter only shortens: the bound is never at stake.
        let cut = (interval as f64 * self.jitter * unit) as i64;
        PollSchedule {
            source: source.to_owned(),
            scope_id: scope_id.to_owned(),
            polled_at,
            interval_ms: interval,
            next_due_at: polled_at.saturating_add(interval - cut.clamp(0, interval)),
            last_new_at: if found_new {
                Some(polled_at)
            } else {
                prev.and_then(|p| p.last_new_at)
            },
        }
    }
}

/// A number in [0, 1) from the scope and the poll, the same on every run (no shared RNG,
/// and the benchmark is reproducible).
fn unit_hash(source: &str, scope_id: &str, polled_at: i64) -> f64 {
    // FNV-1a over the inputs, then a splitmix64 finish for well-spread high bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = source
        .bytes()
        .chain([0])
        .chain(scope_id.bytes())
        .chain(polled_at.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const T0: i64 = 1_700_000_000_000;

    fn policy(jitter: f64) -> Policy {
        Policy {
            jitter,
            ..Policy::new(
                Duration::from_secs(15 * 60),
                Duration::from_secs(24 * 3600),
                2.0,
            )
        }
    }

    fn ok_facts(schedule: Option<&PollSchedule>) -> Facts<'_> {
        Facts {
            last_success_at: Some(T0),
            schedule,
            ..Facts::default()
        }
    }

    #[test]
    fn intervals_reset_on_new_records_and_double_up_to_the_bound() {
        let p = policy(0.0);
        let mut s = p.after_poll(None, "copilot", "u", T0, true);
        assert_eq!(s.interval_ms, 15 * MIN);
        let mut seen = Vec::new();
        for k in 1..=10 {
            s = p.after_poll(Some(&s), "copilot", "u", T0 + k * MIN, false);
            seen.push(s.interval_ms / MIN);
        }
        assert_eq!(seen, [30, 60, 120, 240, 480, 960, 1440, 1440, 1440, 1440]);
        assert_eq!(s.last_new_at, Some(T0));
        s = p.after_poll(Some(&s), "copilot", "u", T0 + 99 * MIN, true);
        assert_eq!(s.interval_ms, 15 * MIN);
        assert_eq!(s.next_due_at, T0 + 114 * MIN);
    }

    #[test]
    fn the_backoff_sets_the_growth_and_one_never_grows() {
        let gentle = Policy::new(
            Duration::from_secs(15 * 60),
            Duration::from_secs(24 * 3600),
            1.5,
        );
        let mut s = gentle.after_poll(None, "copilot", "u", T0, true);
        let mut seen = Vec::new();
        for _ in 0..4 {
            s = gentle.after_poll(Some(&s), "copilot", "u", T0, false);
            seen.push(s.interval_ms);
        }
        assert_eq!(seen, [1_350_000, 2_025_000, 3_037_500, 4_556_250]);
        let flat = Policy::new(
            Duration::from_secs(15 * 60),
            Duration::from_secs(24 * 3600),
            1.0,
        );
        assert_eq!(flat.next_interval(Some(&s), false), 15 * MIN);
    }

    #[test]
    fn jitter_only_shortens_and_differs_between_scopes() {
        let p = policy(0.5);
        let prev = PollSchedule {
            interval_ms: 24 * 60 * MIN,
            ..p.after_poll(None, "copilot", "x", T0, false)
        };
        let dues: Vec<i64> = (0..50)
            .map(|i| {
                let s = p.after_poll(Some(&prev), "copilot", &format!("u{i}"), T0, false);
                assert!(s.next_due_at <= T0 + p.max_ms && s.next_due_at >= T0 + p.max_ms / 2);
                s.next_due_at
            })
            .collect();
        let distinct: std::collections::BTreeSet<_> = dues.iter().collect();
        assert!(distinct.len() > 40, "{dues:?}");
        // The same inputs give the same schedule.
        assert_eq!(
            p.after_poll(Some(&prev), "copilot", "u1", T0, false),
            p.after_poll(Some(&prev), "copilot", "u1", T0, false)
        );
    }

    #[test]
    fn departed_new_and_failing_scopes_are_always_due() {
        let p = policy(0.0);
        let waiting = p.after_poll(None, "copilot", "u", T0, true);
        let waiting = Some(&waiting);
        let soon = T0 + MIN;
        let f = Facts {
            departed: true,
            ..ok_facts(waiting)
        };
        assert_eq!(p.decide(&f, soon), Decision::Due(Due::FinalSweep));
        let f = Facts {
            last_success_at: None,
            ..ok_facts(waiting)
        };
        assert_eq!(p.decide(&f, soon), Decision::Due(Due::NeverSucceeded));
        let f = Facts {
            last_error_at: Some(T0 + 1),
            ..ok_facts(waiting)
        };
        assert_eq!(p.decide(&f, soon), Decision::Due(Due::Failed));
        assert_eq!(
            p.decide(&ok_facts(None), soon),
            Decision::Due(Due::Unscheduled)
        );
        assert_eq!(
            p.decide(&ok_facts(waiting), soon),
            Decision::Wait(Wait::Until(T0 + 15 * MIN))
        );
    }

    #[test]
    fn notifications_let_a_due_scope_wait_but_never_a_troubled_one() {
        let p = policy(0.0);
        let s = p.after_poll(None, "copilot", "u", T0, true);
        let later = T0 + 60 * MIN;
        let notified = Facts {
            notified: true,
            ..ok_facts(Some(&s))
        };
        assert_eq!(p.decide(&notified, later), Decision::Wait(Wait::Notified));
        let failed = Facts {
            last_error_at: Some(T0 + 1),
            ..notified
        };
        assert!(p.decide(&failed, later).is_due());
        let departed = Facts {
            departed: true,
            ..notified
        };
        assert!(p.decide(&departed, later).is_due());
    }

    #[test]
    fn passes_on_the_cadence_poll_a_scope_at_its_scheduled_pass() {
        let p = policy(0.0);
        let s = PollSchedule {
            interval_ms: 60 * MIN,
            ..p.after_poll(None, "copilot", "u", T0, false)
        };
        let s = p.after_poll(Some(&s), "copilot", "u", T0, false);
        assert_eq!(s.interval_ms, 120 * MIN);
        let f = ok_facts(Some(&s));
        let first_due = (1..20)
            .map(|k| T0 + k * 15 * MIN)
            .find(|at| p.decide(&f, *at).is_due());
        assert_eq!(first_due, Some(T0 + 120 * MIN), "neither early nor late");
    }

    /// The stated bound, on a virtual clock: passes every base interval, a record created at
    /// any instant, found by the first poll whose window end (pass start - settle lag) passes
    /// it, archived one poll duration after that pass started. However the scope's activity
    /// went before, the delay never exceeds max_staleness + settle_lag + poll duration.
    #[test]
    fn a_record_waits_at_most_max_staleness_plus_one_poll() {
        let settle = 2 * MIN;
        let poll = 3_000;
        for jitter in [0.0, 0.1, 0.5] {
            let p = policy(jitter);
            let bound = p.max_ms + settle + poll;
            // A burst of activity, then silence; the record comes at each instant of a day.
            let mut worst = 0;
            for step in 0..(48 * 4 + 7) {
                let created = T0 + 3 * 3600 * 1000 + step * 7 * MIN + 12_345;
                let mut s: Option<PollSchedule> = None;
                let mut pass = T0;
                let found_at = loop {
                    let f = ok_facts(s.as_ref());
                    if p.decide(&f, pass).is_due() {
                        if pass - settle > created {
                            break pass + poll;
                        }
                        let active = pass < T0 + 3600 * 1000;
                        s = Some(p.after_poll(s.as_ref(), "copilot", "u", pass, active));
                    }
                    pass += p.base_ms;
                };
                worst = worst.max(found_at - created);
            }
            assert!(worst <= bound, "jitter {jitter}: {worst} > {bound}");
            assert!(
                worst > p.max_ms / 4,
                "the idle stretch really was stretched"
            );
        }
    }

    #[test]
    fn a_shorter_bound_after_a_reload_applies_to_existing_schedules() {
        let long = policy(0.0);
        let mut s = long.after_poll(None, "copilot", "u", T0, false);
        s.interval_ms = long.max_ms;
        s.next_due_at = T0 + long.max_ms;
        let short = Policy::new(Duration::from_secs(15 * 60), Duration::from_secs(3600), 2.0);
        let f = ok_facts(Some(&s));
        assert!(!short.decide(&f, T0 + 45 * MIN).is_due());
        assert_eq!(short.decide(&f, T0 + 60 * MIN), Decision::Due(Due::Bound));
        assert!(!long.decide(&f, T0 + 60 * MIN).is_due());
        assert_eq!(short.next_interval(Some(&s), false), short.max_ms);
    }
}
