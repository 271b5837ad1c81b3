//! What happens to archived records after they are written: legal holds, disposition when
//! retention has run out, and integrity verification. Retention itself is decided at write
//! time (`crate::retention`, used by ingest through [`Custody`]).

pub mod cli;
pub mod daemon;
pub mod dispose;
pub mod holds;
pub mod verify;

use crate::archive::{PutOptions, StoreError};
use crate::retention::{Decision, RecordFacts, RetentionRules};
use crate::state::{HoldKind, HoldRow, RetentionRow, StateDb, StateError};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    #[error("state database: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no active legal hold {what}; `m365-archiver hold list` shows the active holds")]
    NoSuchHold { what: String },
    #[error(
        "{count} active holds are on {what}; release one by id (`hold release --id N`), see `hold list`"
    )]
    AmbiguousHold { what: String, count: usize },
    #[error("{0}")]
    Usage(String),
}

impl ComplianceError {
    /// sysexits: 69 a service unavailable, 77 credentials refused, 64 a usage problem.
    pub fn exit_code(&self) -> i32 {
        match self {
            ComplianceError::Store(StoreError::Auth(_)) => 77,
            ComplianceError::State(_) | ComplianceError::Store(_) => 69,
            ComplianceError::NoSuchHold { .. }
            | ComplianceError::AmbiguousHold { .. }
            | ComplianceError::Usage(_) => 64,
        }
    }
}

/// Who runs an operator command, for the audit log: `--by`, else the login name.
pub fn operator(by: Option<&str>) -> String {
    let name = by
        .map(str::to_string)
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("operator:{name}")
}

/// The active holds, as ingest sees them when it writes a batch of records.
#[derive(Debug, Clone, Default)]
pub struct Custody {
    holds: Vec<HoldRow>,
}

impl Custody {
    pub async fn load(state: &StateDb) -> Result<Custody, StateError> {
        Ok(Custody {
            holds: state.holds(false).await?,
        })
    }

    pub fn hold_ids(&self) -> Vec<i64> {
        self.holds.iter().map(|h| h.id).collect()
    }

    /// Ids of the holds that cover a record with these facts.
    pub fn covering(&self, facts: &RecordFacts) -> Vec<i64> {
        self.holds
            .iter()
            .filter(|h| covers(h, facts))
            .map(|h| h.id)
            .collect()
    }
}

/// Whether `hold` covers a record with these facts (the same rule as the SQL in state).
pub fn covers(hold: &HoldRow, facts: &RecordFacts) -> bool {
    let has = |ids: &[String]| ids.iter().any(|i| i.eq_ignore_ascii_case(&hold.target));
    match hold.kind {
        HoldKind::User => has(&facts.user_ids) || has(&facts.upns),
        HoldKind::Chat => has(&facts.chat_ids),
        HoldKind::Team => has(&facts.team_ids),
    }
}

/// The store options for a record: create-only with its sha256, the retention the rules chose,
/// the legal hold if any hold covers it, and provenance metadata.
pub fn put_options(
    sha256: &str,
    decision: &Decision,
    legal_hold: bool,
    provenance: &[(&str, &str)],
    now: DateTime<Utc>,
) -> PutOptions {
    let metadata: BTreeMap<String, String> = provenance
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PutOptions {
        sha256: sha256.to_string(),
        retain_until: Some(decision.store_until(now)),
        mode: decision.mode,
        legal_hold,
        metadata,
    }
}

/// The state row recording what was written for one object.
pub fn retention_row(
    storage_key: &str,
    scope_id: &str,
    sha256: &str,
    facts: &RecordFacts,
    decision: &Decision,
) -> RetentionRow {
    let mut custodians = Vec::new();
    let mut add = |kind: &str, ids: &[String]| {
        custodians.extend(
            ids.iter()
                .map(|id| (kind.to_string(), id.to_ascii_lowercase())),
        );
    };
    add("user", &facts.user_ids);
    add("upn", &facts.upns);
    add("chat", &facts.chat_ids);
    add("team", &facts.team_ids);
    RetentionRow {
        storage_key: storage_key.to_string(),
        source: facts.source.clone(),
        scope_id: scope_id.to_string(),
        sha256: sha256.to_string(),
        rule: decision.rule.clone(),
        retain_until: decision.retain_until,
        mode: decision.mode.as_str().to_string(),
        created_at: facts.created,
        custodians,
    }
}

/// Everything ingest needs to write a record compliantly: the rules, shared by all windows.
#[derive(Debug, Clone, Default)]
pub struct Compliance {
    pub rules: RetentionRules,
}

impl Compliance {
    pub fn new(rules: RetentionRules) -> Self {
        Compliance { rules }
    }

    /// The decision, for a record, and its store options given the active holds.
    pub fn plan(
        &self,
        facts: &RecordFacts,
        custody: &Custody,
        sha256: &str,
        provenance: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> (Decision, PutOptions, Vec<i64>) {
        let decision = self.rules.decide(facts, now);
        let holds = custody.covering(facts);
        let opts = put_options(sha256, &decision, !holds.is_empty(), provenance, now);
        (decision, opts, holds)
    }

    /// Store options for evidence that is not a record (manifests, quarantine): the default
    /// rule from now, never a hold (holds are per custodian record).
    pub fn evidence_options(&self, sha256: &str, now: DateTime<Utc>) -> PutOptions {
        let decision = self.rules.decide_evidence(now);
        put_options(sha256, &decision, false, &[], now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(kind: HoldKind, target: &str) -> HoldRow {
        HoldRow {
            id: 7,
            kind,
            target: target.into(),
            reason: "case".into(),
            created_by: "t".into(),
            created_at: Utc::now(),
            released_at: None,
            released_by: None,
            release_reason: None,
        }
    }

    #[test]
    fn holds_cover_by_custodian_kind() {
        let facts = RecordFacts {
            source: "chats".into(),
            user_ids: vec!["U-1".into()],
            upns: vec!["a@contoso.com".into()],
            chat_ids: vec!["19:c@thread.v2".into()],
            team_ids: vec!["t-1".into()],
            ..Default::default()
        };
        assert!(covers(&hold(HoldKind::User, "u-1"), &facts));
        assert!(covers(&hold(HoldKind::User, "A@contoso.com"), &facts));
        assert!(covers(&hold(HoldKind::Chat, "19:c@thread.v2"), &facts));
        assert!(covers(&hold(HoldKind::Team, "t-1"), &facts));
        assert!(!covers(&hold(HoldKind::User, "t-1"), &facts));
        assert!(!covers(&hold(HoldKind::Team, "u-1"), &facts));
    }
}
