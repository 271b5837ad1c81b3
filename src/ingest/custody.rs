//! Ingest's side of retention and legal holds: the store options of each new record version
//! (immutability policy from the retention rules, legal hold from the active holds), and the
//! state rows that record them, written before the catalogue rows.

use super::{IngestError, Ingestor, Item};
use crate::archive::PutOptions;
use crate::compliance::{participants, retention_row, Compliance, Custody};
use crate::retention::RecordFacts;
use crate::sources::Scope;
use crate::state::{CatalogueEntry, ChatParticipant, HeldKeys, RetentionRow};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};

/// What was decided for one written record.
pub(super) struct Planned {
    row: RetentionRow,
    facts: RecordFacts,
    holds: Vec<i64>,
}

impl Ingestor {
    /// Writes records under these retention rules (by default: forever, Unlocked, no disposal).
    pub fn with_compliance(self, compliance: Compliance) -> Self {
        self.set_compliance(compliance);
        self
    }

    /// Replaces the rules for writes from now on (SIGHUP). Records already written keep what
    /// they were written with; a Locked retention is never shortened by a rule change.
    pub fn set_compliance(&self, compliance: Compliance) {
        let mut slot = self
            .compliance
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = std::sync::Arc::new(compliance);
    }

    /// The rules in force now.
    pub fn compliance(&self) -> std::sync::Arc<Compliance> {
        self.compliance
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The active holds for one batch of writes, and which of the batch's chats their users
    /// take part in.
    pub(super) async fn custody<'a>(
        &self,
        facts: impl IntoIterator<Item = &'a RecordFacts>,
    ) -> Result<Custody, IngestError> {
        let chats: BTreeSet<String> = facts
            .into_iter()
            .flat_map(|f| f.chat_ids.iter().map(|c| c.to_ascii_lowercase()))
            .collect();
        let chats: Vec<String> = chats.into_iter().collect();
        Ok(Custody::load(&self.state, &chats).await?)
    }

    /// Store options for a record: create-only, sha256, retention, hold and provenance.
    pub(super) fn record_options(
        &self,
        src: &str,
        scope: &Scope,
        item: &Item,
        custody: &Custody,
        now: DateTime<Utc>,
    ) -> PutOptions {
        let provenance = [
            ("source", src),
            ("scope", scope.id.as_str()),
            ("etag", item.meta.etag.as_str()),
        ];
        let (_, opts, _) =
            self.compliance()
                .plan(&item.facts, custody, &item.sha256, &provenance, now);
        opts
    }

    /// Store options for a manifest or a quarantined record: the default rule from now.
    pub(super) fn evidence_options(&self, sha256: &str) -> PutOptions {
        self.compliance().evidence_options(sha256, Utc::now())
    }

    pub(super) fn planned(
        &self,
        key: &str,
        scope: &Scope,
        item: &Item,
        custody: &Custody,
        now: DateTime<Utc>,
    ) -> Planned {
        let decision = self.compliance().rules.decide(&item.facts, now);
        Planned {
            row: retention_row(key, &scope.id, &item.sha256, &item.facts, &decision),
            facts: item.facts.clone(),
            holds: custody.covering(&item.facts),
        }
    }

    /// Records retention, custodians, the holds written with each object and the catalogue
    /// rows, in one transaction: a catalogued record always has its retention recorded.
    pub(super) async fn record_archived(
        &self,
        planned: &[Planned],
        catalogue: &[CatalogueEntry],
    ) -> Result<(), IngestError> {
        let rows: Vec<RetentionRow> = planned.iter().map(|p| p.row.clone()).collect();
        let mut by_hold: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for p in planned {
            for h in &p.holds {
                by_hold
                    .entry(*h)
                    .or_default()
                    .push(p.row.storage_key.clone());
            }
        }
        let holds: Vec<HeldKeys> = by_hold.into_iter().collect();
        self.state
            .archived_insert(&rows, &holds, catalogue, Utc::now())
            .await?;
        Ok(())
    }

    /// A hold placed while this batch was being written did not see these records (they were
    /// not catalogued yet) and the batch did not see the hold: set it now.
    pub(super) async fn late_holds(
        &self,
        before: &Custody,
        planned: &[Planned],
    ) -> Result<(), IngestError> {
        if planned.is_empty() {
            return Ok(());
        }
        let now = self.custody(planned.iter().map(|p| &p.facts)).await?;
        let old = before.hold_ids();
        if now.hold_ids().iter().all(|id| old.contains(id)) {
            return Ok(());
        }
        for p in planned {
            let fresh: Vec<i64> = now
                .covering(&p.facts)
                .into_iter()
                .filter(|h| !old.contains(h))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            self.store.set_legal_hold(&p.row.storage_key, true).await?;
            for h in fresh {
                self.state
                    .record_holds_insert(h, std::slice::from_ref(&p.row.storage_key), Utc::now())
                    .await?;
            }
        }
        Ok(())
    }
}

/// The chat participants a window shows: its scope's user in each chat its export returned.
pub(super) fn window_participants(
    src: &str,
    scope: &Scope,
    chats: &BTreeSet<String>,
) -> Vec<ChatParticipant> {
    let mut facts = RecordFacts::of_scope(src, scope);
    facts.chat_ids = chats.iter().cloned().collect();
    participants(&facts)
}

/// The retention/hold facts of a record, read from its exact bytes.
pub(super) fn facts_of(src: &str, scope: &Scope, bytes: &[u8]) -> RecordFacts {
    match std::str::from_utf8(bytes) {
        Ok(json) => RecordFacts::read_json(src, scope, json),
        Err(_) => RecordFacts::of_scope(src, scope),
    }
}
