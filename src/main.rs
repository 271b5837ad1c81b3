//! The `m365-archiver` binary: parses the command line, loads configuration, starts logging and
//! hands over to the library. Exit codes follow sysexits: 78 configuration, 77 credentials or
//! permissions, 69 a service unreachable, 1 a pass that left scopes failed.

use anyhow::Context;
use clap::{Parser, Subcommand};
use m365_archiver::app::{self, App, AppError};
use m365_archiver::config::{self, Config};
use m365_archiver::ops::{progress, service, status, telemetry};
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
    /// Run the archiver: as a daemon (each pass polls the scopes due under
    /// export.max_staleness), or one full pass with --once.
    Run {
        /// One full pass over every scope, due or not, then exit (0 if everything succeeded).
        #[arg(long)]
        once: bool,
    },
    /// Checkpoints per scope and source: watermark, lag, records, last success and error.
    Status {
        #[arg(long)]
        json: bool,
        /// Detail for one user (id or UPN): every source, full last error.
        #[arg(long)]
        user: Option<String>,
        /// Every scope's row, not just the overview (long on a large tenant).
        #[arg(long)]
        all: bool,
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
    /// Encryption certificate for change notifications.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Change-notification subscriptions.
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Legal holds on a user, chat or team: add, release, list.
    Hold {
        #[command(subcommand)]
        command: m365_archiver::compliance::cli::HoldCommand,
    },
    /// Delete records whose retention has expired, where the configuration allows; never a
    /// record under legal hold.
    Dispose {
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who runs the disposition (default: the login name), for the audit log.
        #[arg(long)]
        by: Option<String>,
    },
    /// Re-read the archive: recompute hashes and the manifest chain, cross-check the catalogue.
    /// Exits 1 if anything is missing, altered, extra or unchained.
    Verify {
        /// Only what was archived since this date (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only this user (id or UPN).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create the RSA key pair and self-signed certificate change notifications encrypt to.
    New {
        /// Directory for certificate.pem and private-key.pem (created; files never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Common name of the certificate.
        #[arg(long, default_value = "m365-archiver notifications")]
        subject: String,
    },
}

#[derive(Subcommand)]
enum SubscriptionsCommand {
    /// The change-notification subscriptions as the state database records them.
    List {
        #[arg(long)]
        json: bool,
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
    let code = runtime.block_on(dispatch(cli));
    // Blocking work still running (a store write on a hung mount) must not hold the process
    // past its shutdown deadline; its window is uncommitted, so dropping it loses nothing.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Cert {
            command: CertCommand::New { out, days, subject },
        } => finish(
            m365_archiver::notifications::cert::run_new(&out, days, &subject)
                .map(|text| {
                    print!("{text}");
                    0
                })
                .map_err(anyhow::Error::from),
        ),
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
            let path = config_path(cli.config);
            let config = match config::load(path.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            telemetry::init(config.log.json, &config.log.level);
            if let Command::Run { once: false } = command {
                return run_service(config, path).await;
            }
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

/// `--config`, else the packaged location if it exists (SIGHUP re-reads the same file).
fn config_path(path: Option<PathBuf>) -> Option<PathBuf> {
    let default = PathBuf::from("/etc/m365-archiver/config.toml");
    path.or_else(|| default.exists().then_some(default))
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
        Command::Status { json, user, all } => {
            let state = app::open_state(&config).await?;
            let view = status::gather(&config, &state).await?;
            status::print(&view, json, user.as_deref(), all)
        }
        Command::Run { .. } => run_once(config).await,
        Command::Hold { command } => m365_archiver::compliance::cli::hold(command, &config).await,
        Command::Dispose { dry_run, by } => {
            m365_archiver::compliance::cli::dispose(&config, dry_run, by.as_deref()).await
        }
        Command::Verify { since, user, json } => {
            m365_archiver::compliance::cli::verify(&config, since.as_deref(), user, json).await
        }
        Command::Subscriptions {
            command: SubscriptionsCommand::List { json },
        } => {
            let state = app::open_state(&config).await?;
            let text = m365_archiver::notifications::cli::list(&state, json).await?;
            print!("{text}");
            Ok(0)
        }
        Command::Demo { .. } | Command::Sim { .. } | Command::Cert { .. } => Ok(0),
    }
}

/// `run --once`: one pass, exit 0 only if every scope was exported.
async fn run_once(config: Config) -> Result<u8, AppError> {
    let app = App::start(config).await?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // A person at a terminal sees windows go by; logs and cron get the log lines only.
    let shown = progress::on_terminal().then(|| progress::track_windows("archiving"));
    let report = app.run_once(&cancel).await;
    if let Some((bar, ticker)) = shown {
        ticker.abort();
        bar.finish("pass finished");
    }
    let report = report?;
    for f in &report.failures {
        eprintln!(
            "failed: {} {} ({}): {}",
            f.source,
            f.scope_id,
            f.label.as_deref().unwrap_or("-"),
            f.error
        );
    }
    Ok(if report.ok() { 0 } else { 1 })
}

/// `run`: the daemon under systemd (or a terminal), until SIGTERM/SIGINT.
async fn run_service(config: Config, path: Option<PathBuf>) -> ExitCode {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let result = match App::start(config).await {
        Ok(app) => service::run(app, path, cancel).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopping");
            eprintln!("error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EX_SOFTWARE))
        }
    }
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
        // A second Ctrl-C means "now": the checkpoints are safe either way.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second interrupt: exiting at once");
            std::process::exit(130);
        }
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
