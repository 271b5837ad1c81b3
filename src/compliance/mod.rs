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
use crate::state::{ChatParticipant, HoldKind, HoldRow, RetentionRow, StateDb, StateError};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};

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
    /// (user hold target, chat id), lowercased: of the batch's chats, those a held user takes
    /// part in.
    held_chats: HashSet<(String, String)>,
}

impl Custody {
    /// The active holds, and which of `chats` (the batch's) their users take part in.
    pub async fn load(state: &StateDb, chats: &[String]) -> Result<Custody, StateError> {
        let holds = state.holds(false).await?;
        let users: Vec<String> = holds
            .iter()
            .filter(|h| h.kind == HoldKind::User)
            .map(|h| h.target.clone())
            .collect();
        let held_chats = match users.is_empty() || chats.is_empty() {
            true => HashSet::new(),
            false => state
                .chats_taken_part_in(&users, chats)
                .await?
                .into_iter()
                .collect(),
        };
        Ok(Custody { holds, held_chats })
    }

    pub fn hold_ids(&self) -> Vec<i64> {
        self.holds.iter().map(|h| h.id).collect()
    }

    /// Ids of the holds that cover a record with these facts.
    pub fn covering(&self, facts: &RecordFacts) -> Vec<i64> {
        self.holds
            .iter()
            .filter(|h| covers(h, facts) || self.covers_through_chat(h, facts))
            .map(|h| h.id)
            .collect()
    }

    fn covers_through_chat(&self, hold: &HoldRow, facts: &RecordFacts) -> bool {
        hold.kind == HoldKind::User
            && facts.chat_ids.iter().any(|chat| {
                self.held_chats
                    .contains(&(hold.target.clone(), chat.to_ascii_lowercase()))
            })
    }
}

/// Whether `hold` covers a record with these facts by the record's own custodians (the same
/// rule as the SQL in state, less the chats a held user takes part in, which `Custody` adds).
pub fn covers(hold: &HoldRow, facts: &RecordFacts) -> bool {
    let has = |ids: &[String]| ids.iter().any(|i| i.eq_ignore_ascii_case(&hold.target));
    match hold.kind {
        HoldKind::User => has(&facts.user_ids) || has(&facts.upns),
        HoldKind::Chat => has(&facts.chat_ids),
        HoldKind::Team => has(&facts.team_ids),
    }
}

/// The chat participants a record shows: each of its users (the exporting user, the sender)
/// in each of its chats.
pub fn participants(facts: &RecordFacts) -> Vec<ChatParticipant> {
    let mut out = Vec::new();
    for chat in &facts.chat_ids {
        out.extend(
            facts
                .user_ids
                .iter()
                .map(|id| ChatParticipant::new(chat, "user", id)),
        );
        out.extend(
            facts
                .upns
                .iter()
                .map(|upn| ChatParticipant::new(chat, "upn", upn)),
        );
    }
    out
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
    // A chat record's users are participants of its chat, written once per chat rather than
    // once per record: a user hold covers the whole chat through them.
    if facts.chat_ids.is_empty() {
        add("user", &facts.user_ids);
        add("upn", &facts.upns);
    }
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
        participants: participants(facts),
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

    fn chat_message() -> RecordFacts {
        RecordFacts {
            source: "chats".into(),
            user_ids: vec!["U-1".into(), "u-2".into()],
            upns: vec!["a@contoso.com".into()],
            chat_ids: vec!["19:C@thread.v2".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_chat_record_names_its_chat_and_makes_its_users_participants() {
        let decision = RetentionRules::default().decide(&chat_message(), Utc::now());
        let row = retention_row("k", "u-1", "ab", &chat_message(), &decision);
        assert_eq!(
            row.custodians,
            vec![("chat".into(), "19:c@thread.v2".into())]
        );
        let p = |kind: &str, id: &str| ChatParticipant::new("19:c@thread.v2", kind, id);
        assert_eq!(
            row.participants,
            vec![
                p("user", "u-1"),
                p("user", "u-2"),
                p("upn", "a@contoso.com")
            ]
        );
        // Other records keep their users as custodians of each record.
        let copilot = RecordFacts {
            source: "copilot".into(),
            chat_ids: Vec::new(),
            ..chat_message()
        };
        let row = retention_row("k", "u-1", "ab", &copilot, &decision);
        assert_eq!(row.custodians.len(), 3);
        assert!(row.participants.is_empty());
    }

    #[test]
    fn a_user_hold_covers_a_chat_its_user_takes_part_in() {
        let facts = chat_message();
        let on_b = hold(HoldKind::User, "u-9");
        let mut custody = Custody {
            holds: vec![on_b],
            held_chats: HashSet::new(),
        };
        assert!(custody.covering(&facts).is_empty());
        custody
            .held_chats
            .insert(("u-9".into(), "19:c@thread.v2".into()));
        assert_eq!(custody.covering(&facts), vec![7]);
        // A chat hold or a hold on another user is not widened by it.
        custody.holds = vec![hold(HoldKind::Chat, "u-9"), hold(HoldKind::User, "u-8")];
        assert!(custody.covering(&facts).is_empty());
    }
}
