//! The chaos suite's own PostgreSQL cluster and Azurite. The shared ones that
//! scripts/with-postgres.sh and scripts/with-azurite.sh start serve every test running in
//! parallel, so stopping them would break the others; the chaos test starts private ones from
//! the same binaries (the scripts export where they are) and stops and starts them at will, on
//! the same port and data directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Exported by the scripts; found at the usual places otherwise.
const PG_BIN_VAR: &str = "M365_TEST_POSTGRES_BIN";
const AZURITE_BIN_VAR: &str = "M365_TEST_AZURITE_BIN";
const ACCOUNT: &str = "devstoreaccount1";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_VAR) {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("pg_ctl").exists());
    // Prefer 15, as with-postgres.sh does; else the newest.
    dirs.sort_by_key(|d| (d.to_string_lossy().contains("/15/"), d.clone()));
    dirs.pop()
        .expect("no PostgreSQL binaries: run under scripts/with-postgres.sh")
}

/// A private PostgreSQL cluster: trust auth, fsync off, on a fixed port so it can be stopped
/// and started again at the same address.
pub struct OwnPostgres {
    bin: PathBuf,
    work: TempDir,
    port: u16,
    pub running: bool,
}

impl OwnPostgres {
    pub async fn start() -> OwnPostgres {
        let work = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(work.path().join("socket")).expect("socket dir");
        if is_root() {
            // initdb and postgres refuse to run as root.
            run_checked(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(work.path()),
            )
            .await;
        }
        let mut pg = OwnPostgres {
            bin: pg_bin(),
            work,
            port: free_port(),
            running: false,
        };
        let data = pg.data_dir();
        let mut initdb = pg.as_pg("initdb");
        initdb.arg("-D").arg(&data);
        initdb.args(["-U", "postgres", "--auth=trust", "--locale=C", "--no-sync"]);
        run_checked(&mut initdb).await;
        pg.start_server().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn as_pg(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // Output goes to the log file: a pipe would be held open by the server.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.kill_on_drop(true);
        cmd
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.as_pg("pg_ctl");
        cmd.arg("-D").arg(self.data_dir());
        cmd.arg("-l").arg(self.work.path().join("postgres.log"));
        cmd.args(["-w", "-t", "60", action]);
        cmd
    }

    pub async fn start_server(&mut self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} \
             -c max_connections=200 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.work.path().join("socket").display()
        );
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-o").arg(opts);
        run_checked(&mut cmd).await;
        self.running = true;
    }

    /// `immediate` is a crash as far as the server is concerned (recovery on the next start).
    pub async fn stop_server(&mut self, immediate: bool) {
        let mode = if immediate { "immediate" } else { "fast" };
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode]);
        run_checked(&mut cmd).await;
        self.running = false;
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.work.path().join("postgres.log"));
        crate::helpers::tail(&text.unwrap_or_default(), 20)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // Blocking is fine here: the test is over.
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            std::process::Command::new(pg_ctl)
        };
        cmd.arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

async fn run_checked(cmd: &mut Command) {
    let status = cmd.status().await.expect("run a PostgreSQL tool");
    assert!(status.success(), "{cmd:?} exited {status}");
}

fn azurite_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(AZURITE_BIN_VAR) {
        return PathBuf::from(bin);
    }
    // with-azurite.sh installs into target/azurite/VERSION.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/azurite");
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.sort();
    found
        .into_iter()
        .rev()
        .map(|d| d.join("node_modules/.bin/azurite-blob"))
        .find(|p| p.exists())
        .expect("no Azurite: run under scripts/with-azurite.sh")
}

/// A private Azurite (blob service) whose data directory and port survive a stop.
pub struct OwnAzurite {
    bin: PathBuf,
    work: TempDir,
    port: u16,
    child: Option<Child>,
}

impl OwnAzurite {
    pub async fn start() -> OwnAzurite {
        let mut a = OwnAzurite {
            bin: azurite_bin(),
            work: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            child: None,
        };
        a.start_server().await;
        a
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("azurite.log"))
            .expect("azurite log");
        let child = Command::new(&self.bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.work.path().join("data"))
            .args(["--skipApiVersionCheck", "--disableProductStyleUrl"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn azurite");
        self.child = Some(child);
        self.wait_up().await;
    }

    async fn wait_up(&self) {
        let url = format!("{}?comp=list", self.endpoint());
        let deadline = Instant::now() + Duration::from_secs(30);
        // Any HTTP answer (403 without credentials) means it listens.
        while reqwest::get(&url).await.is_err() {
            assert!(Instant::now() < deadline, "Azurite did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, so that Azurite saves its metadata: the outage is the network's, not a disk
    /// loss (a store that forgets acknowledged writes is not what this suite tests). Azurite
    /// logs "successfully closed" at once but its process lingers for a minute or more, so it
    /// is SIGKILLed once it has said so.
    pub async fn stop_server(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let closed_before = self.closed_count();
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.closed_count() == closed_before && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
    }

    fn closed_count(&self) -> usize {
        let log = std::fs::read_to_string(self.work.path().join("azurite.log"));
        log.unwrap_or_default()
            .matches("successfully closed")
            .count()
    }

    /// A fresh container, for the SAS that with-azurite.sh made (an account SAS signed with
    /// the well-known development key, valid on any Azurite).
    pub async fn container(&self) -> crate::azure_env::AzureTarget {
        let sas = std::env::var(crate::azure_env::AZURITE_SAS_VAR)
            .expect("M365_TEST_AZURITE_SAS (run under scripts/with-azurite.sh)");
        let url = format!("{}/chaos{}", self.endpoint(), uuid::Uuid::new_v4().simple());
        let rsp = reqwest::Client::new()
            .put(format!("{url}?restype=container&{sas}"))
            .header("content-length", "0")
            .send()
            .await
            .expect("create container");
        assert_eq!(rsp.status().as_u16(), 201, "create container");
        crate::azure_env::AzureTarget {
            container_url: url,
            sas,
            require_immutability: false,
        }
    }
}
