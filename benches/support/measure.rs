//! What the benchmarks share: running the archiver as a child process and measuring it.

use std::path::Path;
use std::time::Duration;

/// A new directory (in `parent`, else in TMPDIR) for one run's state and archive, deleted when
/// dropped unless `M365_BENCH_KEEP_DIRS=1`. scripts/benchmarks.sh sets it and deletes its own
/// scratch directory after the last bench: on an ext4 without a journal (this VM's) every new
/// inode is slower for minutes after many were freed (`recently_deleted`), so a bench deleting
/// its 100,000 files would slow the next bench's writes.
pub fn run_dir(parent: Option<&Path>) -> tempfile::TempDir {
    let mut dir = match parent {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("a directory for the run");
    if std::env::var_os("M365_BENCH_KEEP_DIRS").is_some_and(|v| v == "1") {
        dir.disable_cleanup(true);
    }
    dir
}

/// The middle value (upper middle for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The `p`-th percentile (0..=100, nearest rank) of `v`; 0 for none.
#[allow(dead_code)] // only the notifications bench reports percentiles
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub struct Usage {
    pub cpu: Duration,
    pub max_rss_kib: i64,
}

/// Runs the archiver and reaps it with wait4 for its CPU time. Peak RSS comes from the
/// process's own high-water mark (VmHWM), sampled while it runs: ru_maxrss would also count
/// the parent's pages a spawned child shares until exec.
#[allow(dead_code)] // the copilot bench runs its processes through run_children
pub fn run_child(config: &std::path::Path) -> (i32, Usage) {
    reap(spawn_archiver(config))
}

/// Several `run --once` processes on the same configuration (replicas), started together;
/// each one's exit code and usage, in start order.
#[allow(dead_code)] // only the copilot bench runs replicas
pub fn run_children(config: &std::path::Path, n: usize) -> Vec<(i32, Usage)> {
    let children: Vec<std::process::Child> = (0..n).map(|_| spawn_archiver(config)).collect();
    std::thread::scope(|scope| {
        let reapers: Vec<_> = children
            .into_iter()
            .map(|child| scope.spawn(move || reap(child)))
            .collect();
        reapers
            .into_iter()
            .map(|r| r.join().expect("reaper thread"))
            .collect()
    })
}

fn spawn_archiver(config: &std::path::Path) -> std::process::Child {
    spawn_command(config, &["run", "--once"])
}

/// As `run_child`, for another command of the archiver (`verify`, ...).
#[allow(dead_code)] // only the scale bench runs other commands
pub fn run_command(config: &std::path::Path, args: &[&str]) -> (i32, Usage) {
    reap(spawn_command(config, args))
}

/// Starts the archiver, under the command `M365_BENCH_WRAP` names if it is set (a profiler:
/// `M365_BENCH_WRAP="heaptrack -o /tmp/ht"`; the figures are then the wrapper's, not the
/// archiver's alone).
fn spawn_command(config: &std::path::Path, args: &[&str]) -> std::process::Child {
    let archiver = env!("CARGO_BIN_EXE_m365-archiver");
    let wrap = std::env::var("M365_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = std::process::Command::new(program);
            c.args(words).arg(archiver);
            c
        }
        None => std::process::Command::new(archiver),
    };
    command.arg("--config").arg(config).args(args);
    if let Some(set) = ARCHIVER_CPUS.get().copied() {
        use std::os::unix::process::CommandExt;
        // SAFETY: sched_setaffinity is async-signal-safe; `set` was built before the fork.
        unsafe {
            command.pre_exec(move || set_affinity(&set));
        }
    }
    command.spawn().expect("spawn archiver")
}

/// The CPUs the archiver processes run on, when the bench pins them (`--pin`).
static ARCHIVER_CPUS: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// Pins this thread (and the threads it starts later: a runtime built afterwards, with an
/// in-process simulator) to `ours`, and the archiver processes started afterwards to
/// `archivers`: the simulator stands in for a remote service and should not take the
/// archiver's CPU. Fails on a machine with fewer CPUs than named.
#[allow(dead_code)] // only the benches with an in-process simulator pin
pub fn pin(ours: &[usize], archivers: &[usize]) -> std::io::Result<()> {
    set_affinity(&cpu_set(ours))?;
    let _ = ARCHIVER_CPUS.set(cpu_set(archivers));
    Ok(())
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the set is a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits for `child` with wait4, sampling its VmHWM until it exits.
// The child is reaped by wait4 (for its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn reap(child: std::process::Child) -> (i32, Usage) {
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

/// The pass's request rate in tenths of its length, as percentages of `budget` (from the
/// simulator's per-second counts; the last, partial second is left out): shows whether a pass
/// below its budget was held throughout or only while it ramped up and drained.
/// `M365_BENCH_PER_SECOND=1` also prints every second's count to stderr.
#[allow(dead_code)] // not every bench prints it
pub fn rate_profile(stats: &serde_json::Value, class: &str, budget: f64) -> String {
    let seconds: Vec<f64> = stats["class_span"][class]["per_second"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    let full = seconds.len().saturating_sub(1);
    // Every second, for a closer look at ramp-up and drain (the tenths average them away).
    if std::env::var_os("M365_BENCH_PER_SECOND").is_some_and(|v| v == "1") {
        let all: Vec<String> = seconds.iter().map(|n| format!("{n:.0}")).collect();
        eprintln!("{class} requests per second: {}", all.join(" "));
    }
    if full < 10 {
        let parts: Vec<String> = seconds[..full]
            .iter()
            .map(|n| format!("{:.0}", n / budget * 100.0))
            .collect();
        return format!("per second: {}%", parts.join(" "));
    }
    let parts: Vec<String> = (0..10)
        .map(|i| {
            let part = &seconds[i * full / 10..(i + 1) * full / 10];
            format!(
                "{:.0}",
                part.iter().sum::<f64>() / part.len() as f64 / budget * 100.0
            )
        })
        .collect();
    format!("by tenths of the pass: {}%", parts.join(" "))
}

/// "1 process, SQLite" or "3 replica(s), PostgreSQL", for summary lines.
#[allow(dead_code)] // only the benches that run replicas
pub fn setup(replicas: Option<usize>) -> String {
    match replicas {
        None => "1 process, SQLite".into(),
        Some(n) => format!("{n} replica(s), PostgreSQL"),
    }
}

/// SQLite in the run's directory, or with replicas a fresh database on the cluster of
/// scripts/with-postgres.sh (replicas share their work through PostgreSQL).
#[allow(dead_code)] // only the benches that run replicas
pub async fn state_url(dir: &std::path::Path, replicas: Option<usize>) -> String {
    if replicas.is_none() {
        return format!("sqlite://{}/state.db", dir.display());
    }
    m365_archiver::state::testing::fresh_postgres_url()
        .await
        .expect("a fresh PostgreSQL database")
        .expect("--replicas needs PostgreSQL: run under scripts/with-postgres.sh")
}

/// Runs 1 or `replicas` `run --once` processes together; every one must exit 0. CPU is their
/// sum, peak RSS the largest.
#[allow(dead_code)] // only the benches that run replicas
pub fn run_replicas(config: &std::path::Path, replicas: Option<usize>) -> Usage {
    let exits = run_children(config, replicas.unwrap_or(1));
    for (status, _) in &exits {
        assert!(*status == 0, "archiver exited {status}");
    }
    Usage {
        cpu: exits.iter().map(|(_, u)| u.cpu).sum(),
        max_rss_kib: exits.iter().map(|(_, u)| u.max_rss_kib).max().unwrap_or(0),
    }
}

/// The simulator as a child process (`m365-archiver sim`) on a free port, with the given
/// simulator configuration; killed when dropped.
#[allow(dead_code)] // only the benches that run the simulator out of process
pub struct SimProcess {
    child: std::process::Child,
    pub authority: String,
}

#[allow(dead_code)]
impl SimProcess {
    pub fn start(dir: &std::path::Path, sim_toml: &str) -> SimProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cfg = dir.join("sim.toml");
        std::fs::write(&cfg, sim_toml).expect("sim config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_m365-archiver"))
            .args([
                "sim",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sim-config",
            ])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start simulator");
        SimProcess {
            child,
            authority: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if reqwest::get(format!("{}/_sim/stats", self.authority))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("simulator did not start");
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
