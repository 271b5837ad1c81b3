//! The Azure backend against the recording WORM test double (`blob_double`): what goes over the
//! wire. Every create is conditional and carries the immutability policy and legal hold the
//! retention rules and holds call for; Locked policies are never shortened; holds become the
//! right Set Legal Hold calls; a throttling store fails the window without losing anything.

use crate::blob_double::{self, DoubleHandle, Recorded};
use crate::helpers::*;
use chrono::{DateTime, Months, Utc};
use m365_archiver::archive::{keys, sha256_hex, ArchiveStore, ImmutabilityMode, PutOptions};
use std::collections::{BTreeSet, HashMap};

const PILOT_GROUP: &str = "aaaaaaaa-0000-4000-8000-00000000c0de";

/// Pilot-group users' records: 10 years Locked; prompts: 90 days; everything else 7 years.
fn rules() -> String {
    format!(
        r#"
[retention]
disposal = false
[retention.default]
retain = "7y"
mode = "unlocked"
[[retention.rules]]
name = "pilot"
group = "{PILOT_GROUP}"
retain = "10y"
mode = "locked"
[[retention.rules]]
name = "prompts"
source = "copilot"
interaction_type = "userPrompt"
retain = "90d"
"#
    )
}

async fn double_env(users: u32, per_user: u32, extra: String) -> (Env, DoubleHandle) {
    let double = blob_double::spawn().await;
    let opts = Opts {
        store: StoreKind::Double {
            container_url: double.container_url.clone(),
        },
        extra,
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(users, per_user), &opts).await;
    (env, double)
}

fn record_creates(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter()
        .filter(|r| r.is_create() && r.blob.starts_with("records/"))
        .collect()
}

fn header_date(r: &Recorded, name: &str) -> Option<DateTime<Utc>> {
    r.header(name)
        .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The user id in `records/copilot/<user>/...`.
fn user_of(key: &str) -> String {
    key.split('/').nth(2).unwrap_or_default().to_string()
}

async fn pilot_users(env: &Env) -> BTreeSet<String> {
    let url = format!("{}/_sim/users", env.sim.authority());
    let users: Vec<serde_json::Value> = reqwest::get(url)
        .await
        .expect("sim users")
        .json()
        .await
        .expect("json");
    users
        .iter()
        .filter(|u| u["pilot_group"].as_bool() == Some(true))
        .filter_map(|u| u["id"].as_str().map(keys::segment))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_create_only_with_the_rules_retention() {
    let (env, double) = double_env(12, 10, rules()).await;
    env.run_until_ok(2).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
    let pilot = pilot_users(&env).await;
    assert!(!pilot.is_empty(), "the tenant must have pilot-group users");

    let reqs = double.double.requests();
    let creates: Vec<&Recorded> = reqs.iter().filter(|r| r.is_create()).collect();
    assert!(
        creates.len() >= cmp.matched,
        "{} creates for {} records",
        creates.len(),
        cmp.matched
    );
    for r in &creates {
        assert_eq!(
            r.header("if-none-match"),
            Some("*"),
            "unconditional write of {}",
            r.blob
        );
        assert!(
            header_date(r, "x-ms-immutability-policy-until-date").is_some(),
            "no policy on {}",
            r.blob
        );
        assert!(
            r.header("x-ms-immutability-policy-mode").is_some(),
            "no mode on {}",
            r.blob
        );
        assert!(
            r.header("x-ms-legal-hold").is_some(),
            "no legal-hold header on {}",
            r.blob
        );
    }
    let blobs = double.double.blobs();
    let mut seen_rules = BTreeSet::new();
    for r in record_creates(&reqs) {
        let stored = &blobs[&r.blob];
        assert_eq!(
            r.header("x-ms-meta-sha256"),
            Some(sha256_hex(&stored.bytes).as_str()),
            "{}",
            r.blob
        );
        let json: serde_json::Value = serde_json::from_slice(&stored.bytes).expect("record json");
        let created =
            DateTime::parse_from_rfc3339(json["createdDateTime"].as_str().expect("created"))
                .expect("rfc3339")
                .with_timezone(&Utc);
        let (rule, until, mode) = if pilot.contains(&user_of(&r.blob)) {
            (
                "pilot",
                created.checked_add_months(Months::new(120)),
                "locked",
            )
        } else if json["interactionType"] == "userPrompt" {
            (
                "prompts",
                Some(created + chrono::Duration::days(90)),
                "unlocked",
            )
        } else {
            (
                "default",
                created.checked_add_months(Months::new(84)),
                "unlocked",
            )
        };
        seen_rules.insert(rule);
        let until = until.expect("in range").timestamp();
        assert_eq!(
            header_date(r, "x-ms-immutability-policy-until-date").map(|t| t.timestamp()),
            Some(until),
            "{rule}: {}",
            r.blob
        );
        let sent = r
            .header("x-ms-immutability-policy-mode")
            .map(str::to_ascii_lowercase);
        assert_eq!(sent.as_deref(), Some(mode), "{rule}: {}", r.blob);
        assert_eq!(r.header("x-ms-legal-hold"), Some("false"), "{}", r.blob);
    }
    assert_eq!(
        seen_rules.len(),
        3,
        "every rule was exercised: {seen_rules:?}"
    );
    assert_eq!(
        double.double.overwrites(),
        0,
        "nothing was ever overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_retention_is_never_shortened() {
    let locked = "[retention]\n[retention.default]\nretain = \"7y\"\nmode = \"locked\"\n";
    let (env, double) = double_env(4, 6, locked.to_string()).await;
    env.run_until_ok(2).await;
    let before = double.double.blobs();
    // The rules now say one year; new records get that, written ones keep seven years.
    let shorter = Opts {
        store: StoreKind::Double {
            container_url: double.container_url.clone(),
        },
        extra: locked.replace("7y", "1y"),
        ..Opts::default()
    };
    env.write_config(&shorter);
    let user = env.truth().await[0].scope.clone();
    let created = (Utc::now() - chrono::Duration::minutes(2))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    env.sim_post(
        "/_sim/interactions",
        serde_json::json!({ "user_id": user, "created": created, "with_response": true }),
    )
    .await;
    let mark = double.double.requests().len();
    env.run_until_ok(2).await;

    let after = double.double.blobs();
    for (key, b) in before.iter().filter(|(k, _)| k.starts_with("records/")) {
        assert_eq!(after[key].until, b.until, "{key}: retention changed");
        assert_eq!(after[key].mode.as_deref(), Some("locked"), "{key}");
    }
    let later: Vec<Recorded> = double.double.requests().split_off(mark);
    assert!(
        !later
            .iter()
            .any(|r| r.comp.as_deref() == Some("immutabilityPolicies")),
        "no policy change was attempted"
    );
    let new_records: Vec<&Recorded> = record_creates(&later)
        .into_iter()
        .filter(|r| r.status == 201)
        .collect();
    assert_eq!(
        new_records.len(),
        2,
        "the new prompt and response are written"
    );
    for r in new_records {
        assert!(
            !before.contains_key(&r.blob),
            "{} was written again",
            r.blob
        );
        let until = header_date(r, "x-ms-immutability-policy-until-date").expect("until");
        assert!(
            until < Utc::now() + chrono::Duration::days(367),
            "new records follow the new rule"
        );
    }

    // Asked directly, the store never sends a shorter or unlocked policy either.
    let store = env.archive();
    let key = before
        .keys()
        .find(|k| k.starts_with("records/"))
        .expect("a record")
        .clone();
    let current = before[&key].until.expect("until");
    let mark = double.double.requests().len();
    store
        .extend_retention(
            &key,
            current - chrono::Duration::days(400),
            ImmutabilityMode::Unlocked,
        )
        .await
        .expect("no-op");
    let sent: Vec<Recorded> = double.double.requests().split_off(mark);
    assert!(
        sent.iter()
            .all(|r| r.comp.as_deref() != Some("immutabilityPolicies")),
        "{sent:?}"
    );
    let longer = current + chrono::Duration::days(30);
    store
        .extend_retention(&key, longer, ImmutabilityMode::Unlocked)
        .await
        .expect("extend");
    let b = &double.double.blobs()[&key];
    assert_eq!(b.until.map(|t| t.timestamp()), Some(longer.timestamp()));
    assert_eq!(
        b.mode.as_deref(),
        Some("locked"),
        "a Locked policy stays Locked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_become_legal_hold_calls() {
    let (env, double) = double_env(6, 6, rules()).await;
    let truth = env.truth().await;
    let held_first = truth[0].scope.clone();
    // A hold placed before anything is archived: the user's records are written under hold.
    let out = hold(
        &env,
        &["add", "--user", &held_first, "--reason", "matter 1"],
    )
    .await;
    assert!(out.contains("set on 0 archived object(s)"), "{out}");
    env.run_until_ok(2).await;
    let prefix = format!("records/copilot/{}/", keys::segment(&held_first));
    for r in record_creates(&double.double.requests()) {
        let want = if r.blob.starts_with(&prefix) {
            "true"
        } else {
            "false"
        };
        assert_eq!(r.header("x-ms-legal-hold"), Some(want), "{}", r.blob);
    }

    // A hold on a user already archived: Set Legal Hold true on exactly their records.
    let second = truth
        .iter()
        .map(|t| t.scope.clone())
        .find(|s| *s != held_first)
        .expect("a second user");
    let second_prefix = format!("records/copilot/{}/", keys::segment(&second));
    let theirs: BTreeSet<String> = double
        .double
        .blobs()
        .keys()
        .filter(|k| k.starts_with(&second_prefix))
        .cloned()
        .collect();
    assert!(!theirs.is_empty());
    let mark = double.double.requests().len();
    let out = hold(&env, &["add", "--user", &second, "--reason", "matter 2"]).await;
    assert!(
        out.contains(&format!("set on {} archived object(s)", theirs.len())),
        "{out}"
    );
    assert_eq!(legal_hold_calls(&double, mark, "true"), theirs);
    assert!(double
        .double
        .blobs()
        .iter()
        .filter(|(k, _)| theirs.contains(*k))
        .all(|(_, b)| b.legal_hold));

    // Release: Set Legal Hold false on the same records, and nothing else.
    let mark = double.double.requests().len();
    let out = hold(&env, &["release", "--user", &second, "--reason", "settled"]).await;
    assert!(out.contains("released"), "{out}");
    assert_eq!(legal_hold_calls(&double, mark, "false"), theirs);
    assert!(legal_hold_calls(&double, mark, "true").is_empty());

    let audit = env.state().await.audit_list(1000).await.expect("audit");
    for action in [
        "legal_hold_added",
        "legal_hold_applied",
        "legal_hold_released",
        "legal_hold_cleared",
    ] {
        assert!(
            audit.iter().any(|a| a.action == action),
            "no {action} in the audit log"
        );
    }
    let list = hold(&env, &["list"]).await;
    assert!(
        list.contains("matter 1") && !list.contains("matter 2"),
        "{list}"
    );
}

fn legal_hold_calls(double: &DoubleHandle, from: usize, value: &str) -> BTreeSet<String> {
    double.double.requests()[from..]
        .iter()
        .filter(|r| {
            r.comp.as_deref() == Some("legalhold") && r.header("x-ms-legal-hold") == Some(value)
        })
        .map(|r| r.blob.clone())
        .collect()
}

async fn hold(env: &Env, args: &[&str]) -> String {
    let mut full = vec!["hold"];
    full.extend_from_slice(args);
    let out = env.command(&full).output().await.expect("run hold");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "hold {args:?}: {text}");
    text
}

/// A store that starts answering 503 ServerBusy mid-pass: the pass fails, no checkpoint moves
/// past an unstored record, the operator is told; once it recovers, everything is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_store_fails_the_window_and_loses_nothing() {
    let (env, double) = double_env(10, 12, String::new()).await;
    double.double.fail_after_creates(25);
    let out = env.run_once().await;
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("throttling") || text.contains("ServerBusy"),
        "{}",
        tail(&text, 10)
    );
    let state = env.state().await;
    let truth = env.truth().await;
    let blobs = double.double.blobs();
    let mut by_user: HashMap<&str, Vec<_>> = HashMap::new();
    for r in &truth {
        by_user.entry(r.scope.as_str()).or_default().push(r);
    }
    for row in state.status().await.expect("status") {
        let Some(mark) = row.checkpoint.watermark else {
            continue;
        };
        for r in by_user
            .get(row.scope_id.as_str())
            .into_iter()
            .flatten()
            .filter(|r| r.created < mark)
        {
            let key = m365_archiver::groundtruth::storage_key(r);
            assert!(
                blobs.contains_key(&key),
                "checkpoint of {} passed unstored {key}",
                row.scope_id
            );
        }
    }
    double.double.recover();
    env.run_until_ok(3).await;
    let cmp = env.compare().await;
    assert!(cmp.is_exact(), "{}", cmp.summary());
    assert_eq!(double.double.overwrites(), 0);
}

/// A big file goes up as blocks, conditionally committed with its policy; a retry of a
/// finished upload looks first and sends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_blocks_once() {
    let double = blob_double::spawn().await;
    let target = AzureTarget::for_store(&StoreKind::Double {
        container_url: double.container_url.clone(),
    })
    .await
    .expect("target");
    let store = target.store_with_blocks(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let content: Vec<u8> = (0..3 * 1024 * 1024 + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    let file = dir.path().join("recording.mp4");
    std::fs::write(&file, &content).expect("stage");
    let until = Utc::now() + chrono::Duration::days(3650);
    let opts = PutOptions {
        sha256: sha256_hex(&content),
        retain_until: Some(until),
        mode: ImmutabilityMode::Locked,
        legal_hold: true,
        ..Default::default()
    };
    let key = "content/recordings/m1/r1.mp4";
    let outcome = store
        .put_file_create_only(key, &file, &opts)
        .await
        .expect("upload");
    assert_eq!(outcome, m365_archiver::archive::PutOutcome::Created);
    assert!(!file.exists(), "the staged file is consumed");
    let reqs = double.double.requests();
    let blocks = reqs
        .iter()
        .filter(|r| r.comp.as_deref() == Some("block"))
        .count();
    assert_eq!(blocks, 4, "3 MiB + 100 bytes in 1 MiB blocks");
    let commit = reqs
        .iter()
        .find(|r| r.comp.as_deref() == Some("blocklist"))
        .expect("Put Block List");
    assert_eq!(commit.header("if-none-match"), Some("*"));
    assert_eq!(
        commit
            .header("x-ms-immutability-policy-mode")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("locked")
    );
    assert_eq!(commit.header("x-ms-legal-hold"), Some("true"));
    assert_eq!(
        double.double.blobs()[key].bytes.as_ref(),
        content.as_slice()
    );
    assert_eq!(
        store.hash(key).await.expect("hash"),
        Some((sha256_hex(&content), content.len() as u64))
    );

    std::fs::write(&file, &content).expect("stage again");
    let mark = double.double.requests().len();
    let again = store
        .put_file_create_only(key, &file, &opts)
        .await
        .expect("retry");
    assert_eq!(
        again,
        m365_archiver::archive::PutOutcome::AlreadyExists {
            existing_sha256: sha256_hex(&content)
        }
    );
    let resent = double.double.requests()[mark..]
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(resent, 0, "a retry of a finished upload sends nothing");
    // Under policy and hold the store refuses deletion, and says why.
    let err = store.delete(key).await.expect_err("protected");
    assert!(err.to_string().contains("legal hold"), "{err}");
}

/// A blob planted at a record's key by someone else: the conditional write gets 409, the hashes
/// differ, the integrity alarm goes off, and the planted blob is never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_key_with_other_content_raises_the_alarm() {
    let (env, double) = double_env(3, 4, String::new()).await;
    let key = m365_archiver::groundtruth::storage_key(&env.truth().await[0]);
    double.double.plant(&key, b"{\"planted\":true}");
    let out = env.run_once().await;
    let all = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("integrity alarm"), "{}", tail(&all, 10));
    assert_eq!(
        double.double.blobs()[&key].bytes.as_ref(),
        b"{\"planted\":true}"
    );
    let conflict = double
        .double
        .requests()
        .into_iter()
        .find(|r| r.blob == key && r.is_create())
        .expect("a create");
    assert_eq!(conflict.status, 409);
    assert_eq!(double.double.overwrites(), 0);
}
