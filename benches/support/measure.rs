//! What the benchmarks share: running the archiver as a child process and measuring it.

use std::time::Duration;

/// The middle value (upper middle for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub struct Usage {
    pub cpu: Duration,
    pub max_rss_kib: i64,
}

/// Runs the archiver and reaps it with wait4 for its CPU time. Peak RSS comes from the
/// process's own high-water mark (VmHWM), sampled while it runs: ru_maxrss would also count
/// the parent's pages a spawned child shares until exec.
// The child is reaped by wait4 (for its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
pub fn run_child(config: &std::path::Path) -> (i32, Usage) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_m365-archiver"))
        .arg("--config")
        .arg(config)
        .args(["run", "--once"])
        .spawn()
        .expect("spawn archiver");
    let pid = child.id() as libc::pid_t;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(rc == pid, "wait4 failed");
    let max_rss_kib = sampler.join().unwrap_or(0);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    (code, Usage { cpu, max_rss_kib })
}

/// The peak resident set of a live process, from /proc (kept until the process is reaped).
pub fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Requests the simulator saw for one route class (`interactions`, `messages`, ...), how many
/// it answered 429, and the seconds between the first and the last of them.
pub fn class_requests(stats: &serde_json::Value, class: &str) -> (f64, f64, f64) {
    let by_status = &stats["requests"][class];
    let requests: f64 = by_status
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_f64()).sum())
        .unwrap_or(0.0);
    let throttled = by_status["429"].as_f64().unwrap_or(0.0);
    let span = &stats["class_span"][class];
    let t = |k: &str| {
        span[k]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp_millis() as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    (requests, throttled, t("last") - t("first"))
}
