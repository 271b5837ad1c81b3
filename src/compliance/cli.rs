//! The operator commands `hold`, `dispose` and `verify`: argument shapes (clap) and what each
//! prints. The binary only dispatches here.

use super::dispose::Disposer;
use super::holds::{self, Custodian, HoldSelector};
use super::verify::{Verifier, VerifyOptions};
use super::{operator, ComplianceError};
use crate::app::{self, AppError};
use crate::archive::ArchiveStore;
use crate::config::Config;
use crate::state::{HoldKind, StateDb};
use chrono::{DateTime, NaiveDate, Utc};
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold on a user, chat or team, and set it on everything already archived.
    Add {
        #[command(flatten)]
        target: TargetArgs,
        /// The matter or case the hold is for (kept in the audit log).
        #[arg(long)]
        reason: String,
        /// Who places the hold (default: the login name).
        #[arg(long)]
        by: Option<String>,
    },
    /// Release a hold; objects no other hold covers lose their legal hold in the store.
    Release {
        #[command(flatten)]
        target: ReleaseArgs,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// List holds (active ones unless --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Finish hold work an interrupted add or release left (the daemon also does this).
    Reconcile {
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// User id or UPN: their Copilot interactions, the meetings they organized, the messages
    /// they sent, and every message of the chats they take part in.
    #[arg(long)]
    user: Option<String>,
    /// Chat id (e.g. 19:...@thread.v2).
    #[arg(long)]
    chat: Option<String>,
    /// Team id.
    #[arg(long)]
    team: Option<String>,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReleaseArgs {
    /// The hold's id (see `hold list`).
    #[arg(long)]
    id: Option<i64>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    chat: Option<String>,
    #[arg(long)]
    team: Option<String>,
}

fn custodian(
    user: Option<String>,
    chat: Option<String>,
    team: Option<String>,
) -> Option<Custodian> {
    let (kind, id) = match (user, chat, team) {
        (Some(u), _, _) => (HoldKind::User, u),
        (_, Some(c), _) => (HoldKind::Chat, c),
        (_, _, Some(t)) => (HoldKind::Team, t),
        _ => return None,
    };
    Some(Custodian { kind, id })
}

async fn open(config: &Config) -> Result<(StateDb, Arc<dyn ArchiveStore>), AppError> {
    let state = app::open_state(config).await?;
    let store = app::open_store(&config.store);
    store.check().await?;
    Ok((state, store))
}

pub async fn hold(command: HoldCommand, config: &Config) -> Result<u8, AppError> {
    match command {
        HoldCommand::Add { target, reason, by } => {
            let c = custodian(target.user, target.chat, target.team)
                .ok_or_else(|| ComplianceError::Usage("name a --user, --chat or --team".into()))?;
            let (state, store) = open(config).await?;
            let (hold, work) = holds::add(
                &state,
                store.as_ref(),
                &c,
                &reason,
                &operator(by.as_deref()),
            )
            .await?;
            println!(
                "legal hold {} placed on {c}; set on {} archived object(s). New records of this \
                 custodian are archived under hold until it is released.",
                hold.id, work.objects
            );
        }
        HoldCommand::Release { target, reason, by } => {
            let which = match target.id {
                Some(id) => HoldSelector::Id(id),
                None => HoldSelector::Custodian(
                    custodian(target.user, target.chat, target.team).ok_or_else(|| {
                        ComplianceError::Usage("name --id, --user, --chat or --team".into())
                    })?,
                ),
            };
            let (state, store) = open(config).await?;
            let (hold, work) = holds::release(
                &state,
                store.as_ref(),
                &which,
                &reason,
                &operator(by.as_deref()),
            )
            .await?;
            println!(
                "legal hold {} on {} {} released; cleared on {} object(s), {} still held by other holds",
                hold.id,
                hold.kind.as_str(),
                hold.target,
                work.objects,
                work.still_held
            );
        }
        HoldCommand::List { all, json } => {
            let state = app::open_state(config).await?;
            let list = state.holds(all).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print!("{}", holds::render(&list));
            }
        }
        HoldCommand::Reconcile { by } => {
            let (state, store) = open(config).await?;
            let work = holds::reconcile(&state, store.as_ref(), &operator(by.as_deref())).await?;
            println!(
                "holds reconciled: {} object(s) updated in the store",
                work.objects
            );
        }
    }
    Ok(0)
}

pub async fn dispose(config: &Config, dry_run: bool, by: Option<&str>) -> Result<u8, AppError> {
    let (state, store) = open(config).await?;
    let disposer = Disposer {
        state: &state,
        store: store.as_ref(),
        rules: &config.retention,
        actor: operator(by),
        dry_run,
    };
    let report = disposer.run(Utc::now()).await?;
    if dry_run {
        for key in &report.keys {
            println!("would dispose of {key}");
        }
    }
    println!("{}", report.summary());
    tracing::info!(
        disposed = report.disposed,
        examined = report.examined,
        kept_held = report.kept_held,
        dry_run,
        "disposition finished"
    );
    Ok(0)
}

pub async fn verify(
    config: &Config,
    since: Option<&str>,
    user: Option<String>,
    json: bool,
) -> Result<u8, AppError> {
    let since = since.map(parse_since).transpose()?;
    let (state, store) = open(config).await?;
    let report = Verifier {
        state: &state,
        store: store.as_ref(),
    }
    .run(&VerifyOptions { since, user })
    .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.details());
        println!("{}", report.summary());
    }
    if report.ok() {
        tracing::info!(
            records = report.records_checked,
            manifests = report.manifests_checked,
            orphaned_manifests = report.orphaned_manifests.len(),
            "archive verified"
        );
        Ok(0)
    } else {
        tracing::error!(
            missing = report.missing.len(),
            altered = report.altered.len(),
            extra = report.extra.len(),
            unchained = report.unchained.len(),
            "archive verification failed"
        );
        Ok(1)
    }
}

/// `--since` takes an RFC 3339 instant or a date (midnight UTC).
fn parse_since(text: &str) -> Result<DateTime<Utc>, ComplianceError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            ComplianceError::Usage(format!(
                "--since {text}: use YYYY-MM-DD or an RFC 3339 date-time"
            ))
        })
}
