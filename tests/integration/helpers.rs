//! The integration-test harness: a simulator on a loopback port, a fresh state database (SQLite
//! file or a new PostgreSQL database), a temporary archive folder, and the real binary run as a
//! child process against them.

pub use crate::azure_env::{AzureTarget, StoreKind};
use m365_archiver::archive::fs::FsStore;
use m365_archiver::groundtruth::{self, Comparison, TruthRecord};
use m365_archiver::sim::{self, SimConfig, SimHandle};
use m365_archiver::state::{testing, StateDb};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tempfile::TempDir;

pub const SECRET: &str = "sim-secret-do-not-use";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Options of the archiver's configuration that tests vary.
#[derive(Clone, Debug)]
pub struct Opts {
    pub page_size: u32,
    pub rps: f64,
    pub max_window: &'static str,
    pub overlap: &'static str,
    pub settle_lag: &'static str,
    pub lookback: &'static str,
    pub lookback_interval: &'static str,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub lease_ttl: &'static str,
    pub start: String,
    /// Extra lines for the [graph] table (credentials).
    pub graph_credential: String,
    /// Where the archive lives: a local folder (default), Azurite, or the WORM test double.
    /// `M365_TEST_STORE=azurite` switches the default, to run whole suites on Azure.
    pub store: StoreKind,
    /// Extra TOML appended to the configuration (e.g. `[retention]` rules).
    pub extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            page_size: 20,
            rps: 200.0,
            max_window: "40d",
            overlap: "5m",
            settle_lag: "1s",
            lookback: "1d",
            lookback_interval: "1h",
            concurrency: 8,
            max_attempts: 6,
            lease_ttl: "5s",
            start: (chrono::Utc::now() - chrono::Duration::days(45)).to_rfc3339(),
            graph_credential: format!("client_secret = \"{SECRET}\""),
            store: StoreKind::from_env(),
            extra: String::new(),
        }
    }
}

pub struct Env {
    pub sim: SimHandle,
    pub dir: TempDir,
    pub state_url: String,
    pub config: PathBuf,
    /// Set when the archive is an Azure container (Azurite or the test double).
    pub azure: Option<AzureTarget>,
}

/// A simulator config with the tests' usual shape and generous rate limits (throttling has its
/// own tests and the benchmark).
pub fn sim_config(users: u32, per_user: u32) -> SimConfig {
    let mut cfg = SimConfig {
        users,
        interactions_per_user: per_user,
        unlicensed_users: 3,
        history_days: 30,
        shared_id_fraction: 0.05,
        ..SimConfig::default()
    };
    cfg.rate_limits.interactions_rps = 1000.0;
    cfg.rate_limits.other_rps = 1000.0;
    cfg
}

pub async fn state_url(db: Db, dir: &Path) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}/state.db", dir.display()),
        Db::Postgres => testing::fresh_postgres_url()
            .await
            .expect("create a fresh PostgreSQL database")
            .expect(
                "PostgreSQL tests need M365_TEST_POSTGRES_URL: run them through scripts/test.sh",
            ),
    }
}

impl Env {
    pub async fn new(db: Db, sim_cfg: SimConfig, opts: &Opts) -> Env {
        let sim = sim::spawn(sim_cfg, ([127, 0, 0, 1], 0).into())
            .await
            .expect("start simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let state_url = state_url(db, dir.path()).await;
        let config = dir.path().join("config.toml");
        let azure = AzureTarget::for_store(&opts.store).await;
        let env = Env {
            sim,
            dir,
            state_url,
            config,
            azure,
        };
        env.write_config(opts);
        env
    }

    pub fn archive_path(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    pub fn store(&self) -> FsStore {
        FsStore::new(self.archive_path())
    }

    pub fn write_config(&self, o: &Opts) {
        let text = format!(
            r#"
[graph]
tenant_id = "00000000-0000-4000-8000-000000000001"
client_id = "11111111-1111-4111-8111-111111111111"
{cred}
base_url = "{base}"
authority = "{auth}"
max_attempts = {attempts}
backoff_base = "50ms"
backoff_max = "2s"
request_timeout = "10s"
[graph.rate_limits]
interactions_rps = {rps}
other_rps = {rps}
[state]
url = "{state}"
{store}
[export]
sources = ["copilot"]
start = "{start}"
page_size = {page}
overlap = "{overlap}"
max_window = "{maxw}"
settle_lag = "{settle}"
lookback = "{lookback}"
lookback_interval = "{lbi}"
concurrency = {conc}
lease_ttl = "{lease}"
[log]
level = "info"
{extra}
"#,
            cred = o.graph_credential,
            base = self.sim.base_url(),
            auth = self.sim.authority(),
            attempts = o.max_attempts,
            rps = o.rps,
            state = self.state_url,
            store = self.store_toml(),
            extra = self.extra_toml(o),
            start = o.start,
            page = o.page_size,
            overlap = o.overlap,
            maxw = o.max_window,
            settle = o.settle_lag,
            lookback = o.lookback,
            lbi = o.lookback_interval,
            conc = o.concurrency,
            lease = o.lease_ttl,
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_m365-archiver"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("RUST_LOG");
        cmd.kill_on_drop(true);
        cmd
    }

    pub async fn run_once(&self) -> Output {
        self.command(&["run", "--once"])
            .output()
            .await
            .expect("run the archiver")
    }

    /// `run --once` until it exits 0 (faults can exhaust a window's attempts; the next pass
    /// resumes from the checkpoint). Panics after `max` tries.
    pub async fn run_until_ok(&self, max: usize) -> usize {
        for attempt in 1..=max {
            let out = self.run_once().await;
            if out.status.success() {
                return attempt;
            }
            eprintln!(
                "pass {attempt} exited {:?}: {}",
                out.status.code(),
                tail(&String::from_utf8_lossy(&out.stderr), 5)
            );
        }
        panic!("run --once did not succeed in {max} passes");
    }

    pub async fn truth(&self) -> Vec<TruthRecord> {
        groundtruth::fetch(&self.sim.authority(), "copilot")
            .await
            .expect("ground truth")
    }

    pub async fn compare(&self) -> Comparison {
        let truth = self.truth().await;
        groundtruth::compare(
            &truth,
            self.archive().as_ref(),
            "copilot",
            chrono::Utc::now(),
        )
        .await
        .expect("compare")
    }

    pub async fn state(&self) -> StateDb {
        StateDb::connect(&self.state_url)
            .await
            .expect("connect state")
    }

    pub async fn sim_put(&self, path: &str, body: serde_json::Value) {
        let url = format!("{}{path}", self.sim.authority());
        let client = reqwest::Client::new();
        let resp = client
            .put(&url)
            .json(&body)
            .send()
            .await
            .expect("sim control");
        assert!(resp.status().is_success(), "PUT {path}: {}", resp.status());
    }

    pub async fn sim_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}{path}", self.sim.authority());
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .await
            .expect("sim control");
        assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
        resp.json().await.unwrap_or(serde_json::Value::Null)
    }

    pub fn record_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.archive_path().join("records"), &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A finished command's stdout and stderr together, for assertions on what an operator sees.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Creates an interaction for `user` in the simulator, created now (`extra` adds fields, e.g.
/// `with_response`); returns its records as the ground truth has them.
pub(crate) async fn create_interaction(
    env: &Env,
    user: &str,
    extra: serde_json::Value,
) -> Vec<TruthRecord> {
    let created = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let mut body = serde_json::json!({"user_id": user, "created": created});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let made = env.sim_post("/_sim/interactions", body).await;
    serde_json::from_value(made["records"].clone()).expect("created records")
}

/// Every one of `records` is in the archive.
pub(crate) async fn archived(env: &Env, records: &[TruthRecord]) -> bool {
    use m365_archiver::archive::ArchiveStore;
    let store = env.store();
    for r in records {
        if !matches!(store.get(&groundtruth::storage_key(r)).await, Ok(Some(_))) {
            return false;
        }
    }
    true
}
