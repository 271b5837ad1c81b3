//! Disposition never deletes a held or unexpired record: checked over random rule sets, hold
//! sets and record ages, first on the pure verdict, then end to end (real SQLite state, real
//! files, the real `Disposer`).

use super::*;
use crate::archive::fs::FsStore;
use crate::archive::{sha256_hex, ImmutabilityMode, PutOptions};
use crate::retention::{decision, Action, Matcher, Period, RetentionRules, Rule, DEFAULT_RULE};
use crate::state::{testing, HoldKind, RetentionRow};
use bytes::Bytes;
use chrono::TimeZone;
use proptest::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("date")
}

fn day(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// A rule set: three named rules with random periods and disposal flags, possibly one missing
/// from the current configuration (renamed since the records were written).
#[derive(Debug, Clone)]
struct RuleSet {
    days: [u64; 3],
    dispose: [bool; 3],
    present: [bool; 3],
    default_days: u64,
    default_dispose: bool,
    disposal: bool,
}

fn rule_set() -> impl Strategy<Value = RuleSet> {
    (
        prop::array::uniform3(1u64..400),
        prop::array::uniform3(any::<bool>()),
        prop::array::uniform3(prop::bool::weighted(0.85)),
        1u64..400,
        any::<bool>(),
        prop::bool::weighted(0.8),
    )
        .prop_map(
            |(days, dispose, present, default_days, default_dispose, disposal)| RuleSet {
                days,
                dispose,
                present,
                default_days,
                default_dispose,
                disposal,
            },
        )
}

const NAMES: [&str; 4] = ["r0", "r1", "r2", DEFAULT_RULE];

impl RuleSet {
    fn rules(&self) -> RetentionRules {
        let rules = (0..3)
            .filter(|i| self.present[*i])
            .map(|i| Rule {
                name: NAMES[i].into(),
                matcher: Matcher::default(),
                action: Action {
                    period: Period::Days(self.days[i]),
                    mode: ImmutabilityMode::Locked,
                    dispose: self.dispose[i],
                },
            })
            .collect();
        let default = Action {
            period: Period::Days(self.default_days),
            mode: ImmutabilityMode::Unlocked,
            dispose: self.default_dispose,
        };
        RetentionRules::from_parts(rules, default, self.disposal)
    }

    /// The period a record was written under may differ from today's (rules change).
    fn written_days(&self, rule: usize, shift: i64) -> u64 {
        let base = if rule == 3 {
            self.default_days
        } else {
            self.days[rule]
        };
        (base as i64 + shift).max(1) as u64
    }
}

/// One archived record: its owner, rule, age, and the shift between the period it was written
/// under and the rule's period today.
#[derive(Debug, Clone)]
struct Rec {
    user: usize,
    rule: usize,
    age_days: i64,
    shift: i64,
}

fn recs() -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec(
        (0usize..3, 0usize..4, 0i64..900, -60i64..60).prop_map(|(user, rule, age_days, shift)| {
            Rec {
                user,
                rule,
                age_days,
                shift,
            }
        }),
        1..14,
    )
}

/// Which users are under an active hold, and which had a hold that was released.
fn holds() -> impl Strategy<Value = ([bool; 3], [bool; 3])> {
    (
        prop::array::uniform3(prop::bool::weighted(0.35)),
        prop::array::uniform3(any::<bool>()),
    )
}

fn candidate(i: usize, r: &Rec, set: &RuleSet) -> DisposalCandidate {
    let created = now() - day(r.age_days);
    let written = Period::Days(set.written_days(r.rule, r.shift));
    DisposalCandidate {
        storage_key: format!("records/copilot/user-{}/{i}/1.json", r.user),
        source: "copilot".into(),
        scope_id: format!("user-{}", r.user),
        sha256: String::new(),
        rule: NAMES[r.rule].into(),
        retain_until: written.after(created).expect("in range"),
        created_at: Some(created),
    }
}

/// What may be deleted, stated independently of `judge`: disposal on, rule present with
/// dispose = true, both the written and the current retention over, and not held.
fn may_delete(r: &Rec, set: &RuleSet, held: bool) -> bool {
    let created = now() - day(r.age_days);
    let (present, dispose, days) = if r.rule == 3 {
        (true, set.default_dispose, set.default_days)
    } else {
        (set.present[r.rule], set.dispose[r.rule], set.days[r.rule])
    };
    let written_end = created + day(set.written_days(r.rule, r.shift) as i64);
    let current_end = created + day(days as i64);
    set.disposal && present && dispose && !held && written_end < now() && current_end < now()
}

proptest! {
    #[test]
    fn verdict_never_disposes_held_or_unexpired(set in rule_set(), recs in recs(), held in any::<bool>()) {
        let rules = set.rules();
        for (i, r) in recs.iter().enumerate() {
            let c = candidate(i, r, &set);
            let v = judge(&c, &rules, held, now());
            if v == Verdict::Dispose {
                prop_assert!(!held, "a held record was judged disposable");
                prop_assert!(c.retain_until < now(), "unexpired (as written) record judged disposable");
                let action = rules.action_of(&c.rule).expect("rule present");
                prop_assert!(action.dispose);
                let current = decision(&c.rule, action, c.created_at.expect("created"));
                prop_assert!(current.retain_until.is_some_and(|u| u < now()), "unexpired under today's rule");
            }
            // Disposal's global switch is applied by the Disposer, not the verdict.
            let expected = may_delete(r, &RuleSet { disposal: true, ..set.clone() }, held);
            prop_assert_eq!(v == Verdict::Dispose, expected, "record {:?}", r);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn dispose_end_to_end_never_deletes_held_or_unexpired(
        set in rule_set(), recs in recs(), (active, released) in holds()
    ) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(end_to_end(set, recs, active, released));
    }
}

async fn end_to_end(set: RuleSet, recs: Vec<Rec>, active: [bool; 3], released: [bool; 3]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = testing::sqlite_in(dir.path()).await.expect("state");
    let store = FsStore::new(dir.path().join("archive"));
    let mut rows = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let c = candidate(i, r, &set);
        let body = Bytes::from(format!("{{\"id\":\"{i}\"}}"));
        let opts = PutOptions {
            sha256: sha256_hex(&body),
            ..Default::default()
        };
        store
            .put_create_only(&c.storage_key, body, &opts)
            .await
            .expect("put");
        rows.push(RetentionRow {
            storage_key: c.storage_key.clone(),
            source: c.source.clone(),
            scope_id: c.scope_id.clone(),
            sha256: opts.sha256.clone(),
            rule: c.rule.clone(),
            retain_until: Some(c.retain_until),
            mode: "Locked".into(),
            created_at: c.created_at,
            custodians: vec![("user".into(), c.scope_id.clone())],
            participants: Vec::new(),
        });
    }
    state.retention_insert(&rows).await.expect("retention rows");
    for u in 0..3 {
        let user = format!("user-{u}");
        if released[u] {
            let h = state
                .hold_insert(HoldKind::User, &user, "old case", "t", now() - day(30))
                .await
                .expect("hold");
            crate::compliance::holds::apply(&state, &store, &h, "t")
                .await
                .expect("apply");
            let which = crate::compliance::holds::HoldSelector::Id(h.id);
            crate::compliance::holds::release(&state, &store, &which, "closed", "t")
                .await
                .expect("release");
        }
        if active[u] {
            let h = state
                .hold_insert(HoldKind::User, &user, "case", "t", now() - day(5))
                .await
                .expect("hold");
            crate::compliance::holds::apply(&state, &store, &h, "t")
                .await
                .expect("apply");
        }
    }
    let rules = set.rules();
    let report = Disposer {
        state: &state,
        store: &store,
        rules: &rules,
        actor: "test".into(),
        dry_run: false,
    }
    .run(now())
    .await
    .expect("dispose");
    let audit = state.audit_list(10_000).await.expect("audit");
    for (i, r) in recs.iter().enumerate() {
        let key = &rows[i].storage_key;
        let gone = store.hash(key).await.expect("read").is_none();
        let expected = may_delete(r, &set, active[r.user]);
        assert_eq!(
            gone,
            expected,
            "record {r:?} (held: {}), report: {}",
            active[r.user],
            report.summary()
        );
        let audited = audit
            .iter()
            .any(|a| a.action == "record_disposed" && &a.subject == key);
        assert_eq!(audited, gone, "one audit entry per disposed record: {key}");
    }
    // With disposal off the candidates are listed, and nothing is deleted (checked above).
    let deleted = if set.disposal { report.keys.len() } else { 0 };
    assert_eq!(report.disposed as usize, deleted);
}

#[tokio::test]
async fn dry_run_and_disabled_delete_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = testing::sqlite_in(dir.path()).await.expect("state");
    let store = FsStore::new(dir.path().join("archive"));
    let key = "records/copilot/u/1/1.json";
    let body = Bytes::from_static(b"{}");
    store
        .put_create_only(
            key,
            body.clone(),
            &PutOptions {
                sha256: sha256_hex(&body),
                ..Default::default()
            },
        )
        .await
        .expect("put");
    let created = now() - day(100);
    state
        .retention_insert(&[RetentionRow {
            storage_key: key.into(),
            source: "copilot".into(),
            scope_id: "u".into(),
            sha256: sha256_hex(&body),
            rule: DEFAULT_RULE.into(),
            retain_until: Some(created + day(10)),
            mode: "Unlocked".into(),
            created_at: Some(created),
            custodians: vec![],
            participants: Vec::new(),
        }])
        .await
        .expect("row");
    let action = Action {
        period: Period::Days(10),
        mode: ImmutabilityMode::Unlocked,
        dispose: true,
    };
    for (disposal, dry_run) in [(true, true), (false, false)] {
        let rules = RetentionRules::from_parts(vec![], action, disposal);
        let report = Disposer {
            state: &state,
            store: &store,
            rules: &rules,
            actor: "t".into(),
            dry_run,
        }
        .run(now())
        .await
        .expect("dispose");
        assert_eq!(report.keys, vec![key.to_string()], "listed as disposable");
        assert_eq!(report.disposed, 0);
        assert!(
            store.hash(key).await.expect("read").is_some(),
            "nothing deleted"
        );
    }
    let rules = RetentionRules::from_parts(vec![], action, true);
    let report = Disposer {
        state: &state,
        store: &store,
        rules: &rules,
        actor: "t".into(),
        dry_run: false,
    }
    .run(now())
    .await
    .expect("dispose");
    assert_eq!(report.disposed, 1);
    assert!(store.hash(key).await.expect("read").is_none());
    assert_eq!(
        state.disposed_keys().await.expect("disposed"),
        vec![key.to_string()]
    );
    // A second run finds nothing left to do.
    let again = Disposer {
        state: &state,
        store: &store,
        rules: &rules,
        actor: "t".into(),
        dry_run: false,
    }
    .run(now())
    .await
    .expect("dispose");
    assert_eq!(again.examined, 0);
}
