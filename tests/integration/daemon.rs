//! The real binary as a child process with its stderr collected line by line: the daemon
//! (`run`) or one `run --once` replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::sleep_ms;

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Spawns `cmd` (stdout discarded, stderr collected).
    pub(crate) fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        let pid = child.id().expect("pid of a running child");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Daemon { child, pid, lines }
    }

    pub(crate) fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The log lines that contain `needle`.
    pub(crate) fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().expect("lines");
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self, needle: &str) -> usize {
        self.matching(needle).len()
    }

    /// Waits until `needle` has appeared `n` times in the log and returns the `n`th such
    /// line; panics with the log otherwise.
    pub(crate) async fn wait_for_nth(&self, needle: &str, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(line) = self.matching(needle).into_iter().nth(n.saturating_sub(1)) {
                return line;
            }
            sleep_ms(50).await;
        }
        panic!(
            "\"{needle}\" not seen {n} time(s) within {within:?}; log:\n{}",
            self.log()
        );
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub(crate) async fn terminate(
        &mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal(libc::SIGTERM);
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still running {within:?} after SIGTERM; log:\n{}",
                    self.log()
                )
            })
            .expect("wait for the child");
        (status, sent.elapsed())
    }

    /// SIGTERM, then up to 15 s for the exit; for tests that no longer look at the daemon.
    pub(crate) async fn stop(mut self) {
        if self.child.id().is_some() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }

    /// SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub(crate) async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the child");
        let _ = self.child.wait().await;
    }
}
