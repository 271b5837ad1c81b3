//! Disposition: `dispose [--dry-run]` deletes records whose retention has run out, where the
//! configuration allows it, and never one under legal hold.
//!
//! A record is deleted only when every one of these agrees:
//! 1. `retention.disposal = true` (the global switch);
//! 2. the rule it was written under still exists and says `dispose = true`;
//! 3. both the retention recorded at write time and the rule's current period (counted from
//!    the record's creation) have ended: a rule lengthened since only keeps records longer;
//! 4. no active hold covers it, checked in the candidate query and again right before the
//!    deletion, and the store reports no legal hold and no policy still in force.
//!
//! Each deletion is written to `dispositions` first and completed with its audit entry after,
//! so an interrupted run leaves a visible intent that the next run finishes.

use super::ComplianceError;
use crate::archive::{ArchiveStore, StoreError};
use crate::ops::progress::Progress;
use crate::retention::RetentionRules;
use crate::state::{AuditEntry, DisposalCandidate, StateDb};
use chrono::{DateTime, Utc};

const PAGE: i64 = 500;

/// Why a candidate is kept or goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Dispose,
    /// Retention (recorded or as the rule now says) has not ended.
    NotExpired(Option<DateTime<Utc>>),
    /// The rule no longer exists: keep, an operator decides.
    RuleGone,
    /// The rule does not allow disposal.
    NotDisposable,
    Held,
}

/// The decision for one candidate, from the state database's view. Pure, so that the
/// invariant "never a held or unexpired record" can be checked over random inputs.
pub fn judge(
    c: &DisposalCandidate,
    rules: &RetentionRules,
    held: bool,
    now: DateTime<Utc>,
) -> Verdict {
    if held {
        return Verdict::Held;
    }
    if c.retain_until >= now {
        return Verdict::NotExpired(Some(c.retain_until));
    }
    let Some(action) = rules.action_of(&c.rule) else {
        return Verdict::RuleGone;
    };
    if !action.dispose {
        return Verdict::NotDisposable;
    }
    let from = c.created_at.unwrap_or(c.retain_until);
    match action.period.after(from) {
        None => Verdict::NotExpired(None),
        Some(until) if until.max(c.retain_until) >= now => Verdict::NotExpired(Some(until)),
        Some(_) => Verdict::Dispose,
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DisposeReport {
    pub dry_run: bool,
    /// `retention.disposal` is off: nothing was (or would be) deleted.
    pub disabled: bool,
    pub examined: u64,
    pub disposed: u64,
    pub kept_held: u64,
    pub kept_not_expired: u64,
    pub kept_not_disposable: u64,
    pub kept_rule_gone: u64,
    /// The store still protects the object (its own policy or hold).
    pub kept_by_store: u64,
    /// Keys deleted (or, in a dry run, that would be).
    pub keys: Vec<String>,
}

/// Why a candidate stayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Held,
    NotExpired,
    NotDisposable,
    RuleGone,
    ByStore,
}

impl DisposeReport {
    fn keep(&mut self, why: Kept) {
        let counter = match why {
            Kept::Held => &mut self.kept_held,
            Kept::NotExpired => &mut self.kept_not_expired,
            Kept::NotDisposable => &mut self.kept_not_disposable,
            Kept::RuleGone => &mut self.kept_rule_gone,
            Kept::ByStore => &mut self.kept_by_store,
        };
        *counter += 1;
    }

    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would dispose of"
        } else {
            "disposed of"
        };
        let mut s = format!(
            "{verb} {} record(s) of {} with expired retention; kept: {} under legal hold, {} not yet \
             expired under the current rules, {} whose rule forbids disposal, {} whose rule no \
             longer exists, {} still protected by the store",
            self.keys.len(),
            self.examined,
            self.kept_held,
            self.kept_not_expired,
            self.kept_not_disposable,
            self.kept_rule_gone,
            self.kept_by_store
        );
        if self.disabled {
            s.push_str(" (disposal is disabled: set retention.disposal = true to delete)");
        }
        s
    }
}

pub struct Disposer<'a> {
    pub state: &'a StateDb,
    pub store: &'a dyn ArchiveStore,
    pub rules: &'a RetentionRules,
    pub actor: String,
    pub dry_run: bool,
}

impl Disposer<'_> {
    pub async fn run(&self, now: DateTime<Utc>) -> Result<DisposeReport, ComplianceError> {
        let mut report = DisposeReport {
            dry_run: self.dry_run,
            disabled: !self.rules.disposal_enabled(),
            ..Default::default()
        };
        let progress = Progress::new("disposing", None);
        let mut after = String::new();
        loop {
            let page = self.state.disposal_candidates(now, &after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.storage_key.clone();
            for c in &page {
                report.examined += 1;
                self.one(c, now, &mut report).await?;
                progress.inc(1);
            }
        }
        progress.finish("disposal finished");
        if !self.dry_run && !report.disabled {
            self.audit_run(&report).await?;
        }
        Ok(report)
    }

    async fn one(
        &self,
        c: &DisposalCandidate,
        now: DateTime<Utc>,
        report: &mut DisposeReport,
    ) -> Result<(), ComplianceError> {
        if let Some(kept) = self.reason_to_keep(c, now).await? {
            report.keep(kept);
            return Ok(());
        }
        if self.dry_run || report.disabled {
            report.keys.push(c.storage_key.clone());
            return Ok(());
        }
        // A hold placed since the candidate query must still win.
        if self.state.is_held(&c.storage_key).await? {
            report.keep(Kept::Held);
            return Ok(());
        }
        match self.delete(c).await? {
            Some(kept) => report.keep(kept),
            None => {
                report.disposed += 1;
                report.keys.push(c.storage_key.clone());
            }
        }
        Ok(())
    }

    /// Why the candidate must stay, from the rules and from the store; None if it may go.
    async fn reason_to_keep(
        &self,
        c: &DisposalCandidate,
        now: DateTime<Utc>,
    ) -> Result<Option<Kept>, ComplianceError> {
        let kept = match judge(c, self.rules, false, now) {
            Verdict::Dispose => None,
            Verdict::NotExpired(_) => Some(Kept::NotExpired),
            Verdict::NotDisposable => Some(Kept::NotDisposable),
            Verdict::RuleGone => Some(Kept::RuleGone),
            Verdict::Held => Some(Kept::Held),
        };
        if kept.is_some() {
            return Ok(kept);
        }
        let props = self.store.properties(&c.storage_key).await?;
        Ok(match props {
            Some(p) if p.legal_hold => Some(Kept::Held),
            Some(p) if p.retain_until.is_some_and(|u| u > now) => Some(Kept::ByStore),
            _ => None,
        })
    }

    /// Deletes one object, intent first and audit after; Some(reason) if the store refused.
    async fn delete(&self, c: &DisposalCandidate) -> Result<Option<Kept>, ComplianceError> {
        self.state
            .disposition_start(c, &self.actor, Utc::now())
            .await?;
        match self.store.delete(&c.storage_key).await {
            Ok(_) => {}
            Err(StoreError::ImmutableDueToLegalHold { .. }) => return Ok(Some(Kept::Held)),
            Err(StoreError::ImmutableDueToPolicy { .. }) => return Ok(Some(Kept::ByStore)),
            Err(e) => return Err(e.into()),
        }
        let audit = AuditEntry {
            actor: self.actor.clone(),
            action: "record_disposed".into(),
            subject: c.storage_key.clone(),
            detail: serde_json::json!({
                "rule": c.rule,
                "retain_until": c.retain_until.to_rfc3339(),
                "sha256": c.sha256,
                "source": c.source,
                "scope": c.scope_id,
            }),
        };
        self.state
            .disposition_complete(&c.storage_key, &audit, Utc::now())
            .await?;
        Ok(None)
    }

    async fn audit_run(&self, r: &DisposeReport) -> Result<(), ComplianceError> {
        self.state
            .audit(&AuditEntry {
                actor: self.actor.clone(),
                action: "disposition_run".into(),
                subject: "archive".into(),
                detail: serde_json::to_value(DisposeReport {
                    keys: Vec::new(),
                    ..r.clone()
                })
                .unwrap_or_default(),
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
