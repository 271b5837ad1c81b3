//! `m365-archiver demo`: the whole job on embedded defaults. Starts the simulated tenant,
//! archives it into a local folder with SQLite state, prints the status, and checks the archive
//! against the simulator's ground truth.

use crate::app::App;
use crate::config;
use crate::groundtruth;
use crate::ops::status::StatusReport;
use crate::sim::{self, SimConfig};
use chrono::{TimeZone, Utc};
use std::path::Path;
use tokio_util::sync::CancellationToken;

pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// The simulated tenant of the demo: fixed, so a second run finds nothing new to archive.
pub fn demo_sim_config() -> SimConfig {
    SimConfig {
        anchor: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).single(),
        users: 30,
        unlicensed_users: 5,
        interactions_per_user: 40,
        history_days: 30,
        ..SimConfig::default()
    }
}

pub async fn run(dir: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let sim = sim::spawn(demo_sim_config(), ([127, 0, 0, 1], 0).into()).await?;
    let text = DEMO_CONFIG
        .replace("@SIM@", &sim.authority())
        .replace("@DIR@", &dir.display().to_string());
    let config = config::load_from_str(&text)?;
    println!(
        "demo: simulated tenant at {}, archive in {}",
        sim.authority(),
        dir.display()
    );
    let app = App::start(config).await?;
    let report = app.run_once(&CancellationToken::new()).await?;
    println!(
        "demo: pass finished in {} ms: {} windows, {} pages, {} new record versions, {} duplicates, {} failed scope(s)",
        report.elapsed_ms,
        report.totals.windows,
        report.totals.pages,
        report.totals.new,
        report.totals.duplicates,
        report.failures.len()
    );
    let status = StatusReport::build(app.state.status().await?, Utc::now());
    println!("\n{}", status.render());
    let truth = groundtruth::fetch(&sim.authority(), "copilot").await?;
    let cmp = groundtruth::compare(&truth, app.store.as_ref(), "copilot", Utc::now()).await?;
    println!("{}", cmp.summary());
    sim.shutdown().await;
    Ok(report.ok() && cmp.is_exact())
}
