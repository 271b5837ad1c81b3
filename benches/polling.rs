//! Requests per day to keep 100,000 users archived at a staleness bound: the activity-based
//! schedule (`scheduler::due`, the real policy functions) against polling everyone, on a
//! synthetic activity trace in virtual time. Deterministic for a given seed; no network.
//!
//!   cargo bench --bench polling -- [--users N] [--max-staleness 24h] [--base 15m] [--days N]
//!       [--backoff 1.5,2] [--active F] [--regulars F] [--rate R] [--hours 9-17] [--settle 2m]
//!       [--poll-duration 5s] [--jitter F] [--lookback 1d] [--lookback-interval 6h]
//!       [--page-size N] [--seed N]
//!
//! Model: a share `--regulars` of the users are regulars, active on 90% of days; the others
//! are active on a day with the probability that makes `--active` the share of users active on
//! an average day (0.3: (0.3 - 0.25 x 0.9) / 0.75 = 0.1 for the others); each day is drawn
//! independently. An active user makes Copilot interactions (a prompt and a response, two
//! records) as a Poisson process of `--rate` per hour between `--hours` (UTC); nothing happens
//! otherwise. A daemon
//! pass starts every base interval; every poll a pass makes starts with the pass, asks for the
//! window ending `--settle` before it and takes `--poll-duration`. A poll costs one request
//! per window page (at least one), plus a look-back request when `export.lookback_interval`
//! has passed and the catch-up window does not already span the look-back. Discovery delay is
//! from an interaction's creation to the end of the poll that archived it. The first day
//! warms the schedules up and is not measured.
//!
//! Compared: polling every user every base interval (naive), every user every max_staleness
//! (naive at the same bound), and the activity-based schedule for each `--backoff` given.
//! See docs/benchmarks.md.

use m365_archiver::scheduler::due::{Facts, Policy, JITTER};
use m365_archiver::state::PollSchedule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// 2026-01-05T00:00:00Z; any instant would do.
const T0: i64 = 1_767_571_200_000;
const OVERLAP: i64 = 5 * 60_000;
const MAX_WINDOW: i64 = 7 * DAY;
const RECORDS_PER_INTERACTION: i64 = 2;
/// Microsoft's documented limit for getAllEnterpriseInteractions, per tenant.
const COPILOT_RPS: f64 = 30.0;

struct Args {
    users: u64,
    max_staleness: Duration,
    base: Duration,
    days: i64,
    backoffs: Vec<f64>,
    active: f64,
    regulars: f64,
    rate: f64,
    hours: (i64, i64),
    settle: Duration,
    poll_duration: Duration,
    jitter: f64,
    lookback: Duration,
    lookback_interval: Duration,
    page_size: i64,
    seed: u64,
}

fn duration(text: &str, default: Duration) -> Duration {
    humantime::parse_duration(text).unwrap_or(default)
}

fn parse_args() -> Args {
    let mut a = Args {
        users: 100_000,
        max_staleness: Duration::from_secs(24 * 3600),
        base: Duration::from_secs(15 * 60),
        days: 7,
        backoffs: vec![1.5],
        active: 0.3,
        regulars: 0.25,
        rate: 2.0,
        hours: (9, 17),
        settle: Duration::from_secs(120),
        poll_duration: Duration::from_secs(5),
        jitter: JITTER,
        lookback: Duration::from_secs(24 * 3600),
        lookback_interval: Duration::from_secs(6 * 3600),
        page_size: 100,
        seed: 1,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).cloned().unwrap_or_default();
        let mut step = 2;
        match argv[i].as_str() {
            "--users" => a.users = next.parse().unwrap_or(a.users),
            "--max-staleness" => a.max_staleness = duration(&next, a.max_staleness),
            "--base" => a.base = duration(&next, a.base),
            "--days" => a.days = next.parse().unwrap_or(a.days).max(1),
            "--backoff" => {
                let list: Vec<f64> = next.split(',').filter_map(|b| b.parse().ok()).collect();
                if !list.is_empty() {
                    a.backoffs = list;
                }
            }
            "--active" => a.active = next.parse().unwrap_or(a.active),
            "--regulars" => a.regulars = next.parse().unwrap_or(a.regulars),
            "--rate" => a.rate = next.parse().unwrap_or(a.rate),
            "--hours" => {
                if let Some((from, to)) = next.split_once('-') {
                    let (from, to) = (from.parse().unwrap_or(9), to.parse().unwrap_or(17));
                    a.hours = (from.clamp(0, 23), to.clamp(from + 1, 24));
                }
            }
            "--settle" => a.settle = duration(&next, a.settle),
            "--poll-duration" => a.poll_duration = duration(&next, a.poll_duration),
            "--jitter" => a.jitter = next.parse().unwrap_or(a.jitter),
            "--lookback" => a.lookback = duration(&next, a.lookback),
            "--lookback-interval" => a.lookback_interval = duration(&next, a.lookback_interval),
            "--page-size" => a.page_size = next.parse().unwrap_or(a.page_size).max(1),
            "--seed" => a.seed = next.parse().unwrap_or(a.seed),
            _ => step = 1,
        }
        i += step;
    }
    a
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Discovery delays in whole seconds; exact quantiles at one-second resolution.
#[derive(Default)]
struct Delays {
    by_second: Vec<u64>,
    count: u64,
    max_ms: i64,
}

impl Delays {
    fn add(&mut self, delay_ms: i64) {
        let s = usize::try_from(delay_ms.max(0) / 1000).unwrap_or(usize::MAX);
        if s >= self.by_second.len() {
            self.by_second.resize(s + 1, 0);
        }
        self.by_second[s] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(delay_ms);
    }

    fn share_within_s(&self, s: usize) -> f64 {
        let n: u64 = self.by_second.iter().take(s + 1).sum();
        n as f64 / self.count.max(1) as f64
    }

    fn quantile_s(&self, q: f64) -> u64 {
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (s, n) in self.by_second.iter().enumerate() {
            seen += n;
            if seen >= target {
                return s as u64;
            }
        }
        0
    }
}

#[derive(Clone, Copy)]
enum Strategy {
    Every(i64),
    Schedule(Policy),
}

struct Tally {
    name: String,
    strategy: Strategy,
    requests: u64,
    polls: u64,
    /// Requests by pass (all passes), for the busiest one.
    per_pass: Vec<u64>,
    delays: Delays,
}

/// What the simulation needs of the configuration.
struct Sim {
    base: i64,
    max: i64,
    settle: i64,
    poll: i64,
    lookback: i64,
    lookback_interval: i64,
    page: i64,
    passes: usize,
    measure: (i64, i64),
}

/// Daily activity probability of regulars and of the others.
const REGULAR_P: f64 = 0.9;

fn others_p(a: &Args) -> f64 {
    let r = a.regulars.clamp(0.0, 0.99);
    ((a.active - r * REGULAR_P) / (1.0 - r)).clamp(0.0, 1.0)
}

/// One user's interactions, sorted (epoch ms).
fn trace(rng: &mut ChaCha8Rng, a: &Args) -> Vec<i64> {
    let mut out = Vec::new();
    let (from, to) = (a.hours.0 * HOUR, a.hours.1 * HOUR);
    let p = if rng.gen_bool(a.regulars.clamp(0.0, 1.0)) {
        REGULAR_P
    } else {
        others_p(a)
    };
    for day in 0..=a.days {
        if !rng.gen_bool(p) {
            continue;
        }
        let mut t = T0 + day * DAY + from;
        loop {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            t += (-u.ln() / a.rate * HOUR as f64) as i64;
            if t >= T0 + day * DAY + to {
                break;
            }
            out.push(t);
        }
    }
    out
}

fn count_between(times: &[i64], from: i64, to: i64) -> i64 {
    let lo = times.partition_point(|t| *t <= from);
    let hi = times.partition_point(|t| *t < to);
    hi.saturating_sub(lo) as i64
}

fn pages(interactions: i64, page: i64) -> u64 {
    let records = interactions * RECORDS_PER_INTERACTION;
    ((records + page - 1) / page).max(1) as u64
}

/// Polls one user through every pass under one strategy.
fn simulate(sim: &Sim, t: &mut Tally, id: &str, times: &[i64]) {
    let (mut last_poll, mut watermark, mut last_lookback) = (None::<i64>, None::<i64>, None);
    let mut schedule: Option<PollSchedule> = None;
    let mut unfound = 0;
    for k in 0..sim.passes {
        let pass = T0 + k as i64 * sim.base;
        let due = match t.strategy {
            Strategy::Every(every) => last_poll.is_none_or(|l| pass - l >= every),
            Strategy::Schedule(policy) => {
                let facts = Facts {
                    last_success_at: last_poll,
                    schedule: schedule.as_ref(),
                    ..Facts::default()
                };
                policy.decide(&facts, pass).is_due()
            }
        };
        if !due {
            continue;
        }
        let end = pass - sim.settle;
        let first = unfound;
        while unfound < times.len() && times[unfound] < end {
            let created = times[unfound];
            if (sim.measure.0..sim.measure.1).contains(&created) {
                t.delays.add(pass + sim.poll - created);
            }
            unfound += 1;
        }
        let requests = poll_requests(sim, times, watermark, end, pass, &mut last_lookback);
        t.per_pass[k] += requests;
        if (sim.measure.0..sim.measure.1).contains(&pass) {
            t.requests += requests;
            t.polls += 1;
        }
        if let Strategy::Schedule(policy) = t.strategy {
            let found_new = unfound > first;
            let next = policy.after_poll(schedule.as_ref(), "copilot", id, pass, found_new);
            schedule = Some(next);
        }
        (last_poll, watermark) = (Some(pass), Some(end));
    }
}

/// Requests of one poll: the catch-up windows' pages and, when due and not already covered by
/// the catch-up, the look-back's (as `scheduler::plan_windows` plans them).
fn poll_requests(
    sim: &Sim,
    times: &[i64],
    watermark: Option<i64>,
    end: i64,
    pass: i64,
    last_lookback: &mut Option<i64>,
) -> u64 {
    let Some(mark) = watermark else {
        // The first poll's backfill sweeps the look-back span too.
        *last_lookback = Some(pass);
        return pages(count_between(times, i64::MIN, end), sim.page);
    };
    let windows = ((end - mark + MAX_WINDOW - 1) / MAX_WINDOW).max(1) as u64;
    let caught = count_between(times, mark - OVERLAP, end);
    let mut requests = pages(caught, sim.page).max(windows);
    let lookback_due =
        sim.lookback > 0 && last_lookback.is_none_or(|at| pass - at >= sim.lookback_interval);
    if lookback_due {
        *last_lookback = Some(pass);
        if mark > end - sim.lookback {
            let swept = count_between(times, end - sim.lookback - OVERLAP, end);
            requests += pages(swept, sim.page);
        }
    }
    requests
}

fn human(ms: i64) -> String {
    let s = Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0));
    humantime::format_duration(s).to_string()
}

fn main() {
    let a = parse_args();
    let policies: Vec<Policy> = (a.backoffs.iter())
        .map(|b| Policy {
            jitter: a.jitter,
            ..Policy::new(a.base, a.max_staleness, *b)
        })
        .collect();
    let (base, max) = (policies[0].base_ms, policies[0].max_ms);
    let measure = (T0 + DAY, T0 + (a.days + 1) * DAY);
    // Long enough past the measured days for every measured interaction to be found.
    let end = measure.1 + max + ms(a.settle) + 2 * base;
    let sim = Sim {
        base,
        max,
        settle: ms(a.settle),
        poll: ms(a.poll_duration),
        lookback: ms(a.lookback),
        lookback_interval: ms(a.lookback_interval),
        page: a.page_size,
        passes: usize::try_from((end - T0) / base + 1).unwrap_or(0),
        measure,
    };
    let tally = |name: String, strategy| Tally {
        name,
        strategy,
        requests: 0,
        polls: 0,
        per_pass: vec![0; sim.passes],
        delays: Delays::default(),
    };
    let mut tallies = vec![
        tally(
            format!("naive: everyone every {}", human(base)),
            Strategy::Every(base),
        ),
        tally(
            format!("naive at the bound: everyone every {}", human(max)),
            Strategy::Every(max),
        ),
    ];
    for p in &policies {
        tallies.push(tally(
            format!("activity schedule, backoff {}", p.backoff),
            Strategy::Schedule(*p),
        ));
    }
    let started = std::time::Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut interactions = 0u64;
    for u in 0..a.users {
        let times = trace(&mut rng, &a);
        interactions += times
            .iter()
            .filter(|t| (measure.0..measure.1).contains(*t))
            .count() as u64;
        let id = format!("user-{u:06}");
        for t in tallies.iter_mut() {
            simulate(&sim, t, &id, &times);
        }
    }
    report(&a, &sim, &tallies, interactions, started.elapsed());
    let bound = max + sim.settle + sim.poll;
    if tallies[2..].iter().any(|t| t.delays.max_ms > bound) {
        eprintln!("BOUND EXCEEDED: see the table");
        std::process::exit(1);
    }
}

fn report(a: &Args, sim: &Sim, tallies: &[Tally], interactions: u64, took: Duration) {
    println!(
        "Polling at scale: {} users, {} day(s) measured after one warm-up day (seed {})",
        a.users, a.days, a.seed
    );
    println!(
        "model: {:.0}% of users regulars (active on {:.0}% of days), the others active on \
         {:.0}% of days ({:.0}% active on an average day); an active user makes Poisson({}/h) \
         Copilot interactions (prompt + response) between {:02}:00 and {:02}:00 UTC; {} \
         interactions in the measured days",
        a.regulars * 100.0,
        REGULAR_P * 100.0,
        others_p(a) * 100.0,
        a.active * 100.0,
        a.rate,
        a.hours.0,
        a.hours.1,
        interactions
    );
    println!(
        "schedule: base (export.poll_interval) {}, export.max_staleness {}, jitter {}, \
         settle_lag {}, poll duration {}, look-back {} every {}, {} records per page",
        human(sim.base),
        human(sim.max),
        a.jitter,
        human(sim.settle),
        human(sim.poll),
        human(sim.lookback),
        human(sim.lookback_interval),
        sim.page
    );
    println!();
    println!(
        "| approach | requests/day | per user/day | mean rps (budget {COPILOT_RPS}) | busiest \
         pass, first / last day | found within 1h | p50 delay | p99 delay | max delay |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for t in tallies {
        row(a, sim, t);
    }
    let (naive, at_bound) = (&tallies[0], &tallies[1]);
    let ratio = |x: &Tally, y: &Tally| x.requests as f64 / y.requests.max(1) as f64;
    let bound = sim.max + sim.settle + sim.poll;
    println!();
    for t in &tallies[2..] {
        println!(
            "{}: {:.3} of naive's requests ({:.1}x fewer), {:.2}x naive at the bound's; max \
             delay {} <= max_staleness + settle_lag + poll duration ({}): {}",
            t.name,
            ratio(t, naive),
            ratio(naive, t),
            ratio(t, at_bound),
            human(t.delays.max_ms),
            human(bound),
            if t.delays.max_ms <= bound {
                "holds"
            } else {
                "EXCEEDED"
            }
        );
    }
    println!("(simulated in {:.1} s)", took.as_secs_f64());
    // One line for scripts/benchmarks.sh.
    let schedules: Vec<String> = (tallies[2..].iter())
        .map(|t| {
            format!(
                "{}: {:.0} requests/day ({:.1}x fewer than naive), {:.1}% within 1h, max delay {}",
                t.name,
                t.requests as f64 / a.days as f64,
                ratio(naive, t),
                t.delays.share_within_s(3600) * 100.0,
                human(t.delays.max_ms)
            )
        })
        .collect();
    println!(
        "polling summary, {} users, max_staleness {}, base {}: {}",
        a.users,
        human(sim.max),
        human(sim.base),
        schedules.join(" | ")
    );
}

fn row(a: &Args, sim: &Sim, t: &Tally) {
    let per_day = t.requests as f64 / a.days as f64;
    let busiest = |day: i64| {
        let from = usize::try_from(day * DAY / sim.base).unwrap_or(0);
        let to = usize::try_from((day + 1) * DAY / sim.base).unwrap_or(0);
        let passes = t.per_pass.get(from..to).unwrap_or(&[]);
        passes.iter().max().copied().unwrap_or(0)
    };
    let q = |q: f64| human(t.delays.quantile_s(q) as i64 * 1000);
    println!(
        "| {} | {:.0} | {:.2} | {:.1} | {} / {} | {:.1}% | {} | {} | {} |",
        t.name,
        per_day,
        per_day / a.users.max(1) as f64,
        per_day / 86_400.0,
        busiest(1),
        busiest(a.days),
        t.delays.share_within_s(3600) * 100.0,
        q(0.5),
        q(0.99),
        human(t.delays.max_ms),
    );
}
