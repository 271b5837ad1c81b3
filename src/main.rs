//! The `m365-archiver` binary: parses the command line, loads configuration, starts logging and
//! hands over to the library. Exit codes follow sysexits: 78 configuration, 77 credentials or
//! permissions, 69 a service unreachable, 1 a pass that left scopes failed.

use anyhow::Context;
use clap::{Parser, Subcommand};
use m365_archiver::app::{self, App, AppError};
use m365_archiver::config::{self, Config, ConfigError};
use m365_archiver::ops::{status::StatusReport, telemetry};
use m365_archiver::sim::{self, SimConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

const EX_CONFIG: u8 = 78;
const EX_SOFTWARE: u8 = 70;

#[derive(Parser)]
#[command(
    name = "m365-archiver",
    version,
    about = "Archives Microsoft 365 Copilot interactions and Teams communications to immutable storage"
)]
struct Cli {
    /// Configuration file (TOML). Every key can be overridden as M365_ARCHIVER__SECTION__KEY.
    #[arg(long, global = true, env = "M365_ARCHIVER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the archiver: as a daemon, or one full pass with --once.
    Run {
        /// One full pass over every due scope, then exit (0 if everything succeeded).
        #[arg(long)]
        once: bool,
    },
    /// Checkpoints per scope and source: watermark, lag, records, last success and error.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Archive the built-in simulated tenant with embedded defaults, then show the status.
    Demo {
        /// Where the demo keeps its state and archive.
        #[arg(long, default_value = "m365-archiver-demo")]
        dir: PathBuf,
    },
    /// Serve the Microsoft Graph simulator (test bed and benchmark load).
    Sim {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Simulator configuration (TOML, see config/sim.toml).
        #[arg(long)]
        sim_config: Option<PathBuf>,
    },
    /// Create or upgrade the state database schema, then exit.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and exit (78 naming the key if something is wrong).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Store writes run on blocking threads; each thread can grow its own malloc arena, so a
    // modest cap keeps memory flat without limiting throughput (fsync-bound anyway).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Demo { dir } => {
            telemetry::init(false, "info");
            finish(
                m365_archiver::demo::run(&dir)
                    .await
                    .map(|ok| if ok { 0 } else { 1 }),
            )
        }
        Command::Sim { listen, sim_config } => {
            telemetry::init(false, "info");
            finish(serve_sim(listen, sim_config).await.map(|_| 0))
        }
        command => {
            let config = match load_config(cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            telemetry::init(config.log.json, &config.log.level);
            match run_command(command, config).await {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    tracing::error!(error = %e, "stopping");
                    eprintln!("error: {e}");
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EX_SOFTWARE))
                }
            }
        }
    }
}

fn finish(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, skipping a cause whose text its parent already shows.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn load_config(path: Option<PathBuf>) -> Result<Config, ConfigError> {
    let default = PathBuf::from("/etc/m365-archiver/config.toml");
    let path = path.or_else(|| default.exists().then_some(default));
    config::load(path.as_deref())
}

async fn run_command(command: Command, config: Config) -> Result<u8, AppError> {
    match command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("configuration is valid");
            Ok(0)
        }
        Command::Migrate => {
            app::open_state(&config).await?;
            println!("state database is up to date");
            Ok(0)
        }
        Command::Status { json } => {
            let state = app::open_state(&config).await?;
            let report = StatusReport::build(state.status().await?, chrono::Utc::now());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.render());
            }
            Ok(0)
        }
        Command::Run { once } => run(config, once).await,
        Command::Demo { .. } | Command::Sim { .. } => Ok(0),
    }
}

async fn run(config: Config, once: bool) -> Result<u8, AppError> {
    let app = App::start(config).await?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    if once {
        let report = app.run_once(&cancel).await?;
        for f in &report.failures {
            eprintln!(
                "failed: {} {} ({}): {}",
                f.source,
                f.scope_id,
                f.label.as_deref().unwrap_or("-"),
                f.error
            );
        }
        return Ok(if report.ok() { 0 } else { 1 });
    }
    app.run_forever(&cancel).await?;
    Ok(0)
}

/// SIGTERM or Ctrl-C: stop taking work; windows in flight are abandoned without advancing
/// their checkpoints.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutdown requested: finishing without advancing unfinished windows");
        cancel.cancel();
    });
}

async fn serve_sim(listen: std::net::SocketAddr, path: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg: SimConfig = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => SimConfig::default(),
    };
    println!("simulator listening on http://{listen} (Graph at http://{listen}/v1.0)");
    sim::serve(cfg, listen, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
