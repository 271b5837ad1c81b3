//! Progress of long CLI jobs (backfill, verify, a hold on a large custodian, export): a bar on a
//! terminal, plain lines otherwise (a pipe, a log file, journald), where a bar would be a
//! screenful of control characters.
//!
//! ```no_run
//! use m365_archiver::ops::progress::Progress;
//! let p = Progress::new("verifying", Some(10_000));
//! for _ in 0..10_000 {
//!     p.inc(1);
//! }
//! p.finish("10000 objects verified");
//! ```

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Plain mode prints at most one line per this interval (and at 10% steps of a known total).
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

/// Windows committed by this process (bumped by `ops::metrics::window_archived`), for the
/// `run --once` progress display.
static WINDOWS_DONE: AtomicU64 = AtomicU64::new(0);

pub fn window_done() {
    WINDOWS_DONE.fetch_add(1, Ordering::Relaxed);
}

/// Whether a person is watching (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Shows committed windows while `run --once` (a backfill) runs; `finish` ends it.
pub fn track_windows(label: &str) -> (Arc<Progress>, tokio::task::JoinHandle<()>) {
    let progress = Arc::new(Progress::new(label, None));
    let shown = progress.clone();
    let ticker = tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = WINDOWS_DONE.load(Ordering::Relaxed);
            shown.inc(now.saturating_sub(seen));
            seen = now;
        }
    });
    (progress, ticker)
}

pub struct Progress {
    label: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
}

struct Plain {
    out: Box<dyn Write + Send>,
    done: u64,
    started: Instant,
    last_line: Instant,
    last_decile: u64,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines on stderr otherwise.
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bar(label, total)
        } else {
            Progress::plain(label, total, Box::new(std::io::stderr()))
        }
    }

    fn bar(label: &str, total: Option<u64>) -> Progress {
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})"
        } else {
            "{msg} [{elapsed_precise}] {spinner} {human_pos} ({per_sec})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            label: label.to_string(),
            total,
            bar: Some(bar),
            plain: Mutex::new(Plain::new(Box::new(std::io::sink()))),
        }
    }

    /// Plain lines to `out` (tests pass a buffer).
    pub fn plain(label: &str, total: Option<u64>, out: Box<dyn Write + Send>) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            bar: None,
            plain: Mutex::new(Plain::new(out)),
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        p.done += n;
        let decile = self
            .total
            .filter(|t| *t > 0)
            .map(|t| p.done * 10 / t)
            .unwrap_or(0);
        if decile > p.last_decile || p.last_line.elapsed() >= PLAIN_INTERVAL {
            p.last_decile = decile;
            p.last_line = Instant::now();
            let line = self.line(p.done, p.started.elapsed());
            // Progress output is advisory: a closed stderr must not fail the job.
            let _ = writeln!(p.out, "{line}");
        }
    }

    /// Ends the display with a final line.
    pub fn finish(&self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            eprintln!("{}: {summary}", self.label);
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = p.started.elapsed();
        let _ = writeln!(
            p.out,
            "{}: {summary} ({:.1}s)",
            self.label,
            elapsed.as_secs_f64()
        );
    }

    fn line(&self, done: u64, elapsed: Duration) -> String {
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {done}/{t} ({}%), {rate:.0}/s",
                self.label,
                done * 100 / t
            ),
            _ => format!("{}: {done}, {rate:.0}/s", self.label),
        }
    }
}

impl Plain {
    fn new(out: Box<dyn Write + Send>) -> Plain {
        let now = Instant::now();
        Plain {
            out,
            done: 0,
            started: now,
            last_line: now,
            last_decile: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_mode_prints_a_line_per_tenth_and_a_summary() {
        let out = Shared::default();
        let p = Progress::plain("verifying", Some(100), Box::new(out.clone()));
        for _ in 0..100 {
            p.inc(1);
        }
        p.finish("100 objects verified");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert!(lines[0].starts_with("verifying: 10/100 (10%)"), "{text}");
        assert!(
            lines[10].starts_with("verifying: 100 objects verified"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "no terminal control codes in plain mode"
        );
    }

    #[test]
    fn unknown_total_counts_without_percent() {
        let out = Shared::default();
        let p = Progress::plain("backfill", None, Box::new(out.clone()));
        p.inc(5);
        p.finish("done");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.contains("backfill: done"), "{text}");
        assert!(!text.contains('%'), "{text}");
    }
}
