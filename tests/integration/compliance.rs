//! The operator commands on a real archive (local folder, SQLite): `verify` passes on an
//! untouched archive and names each kind of tampering; `hold` and `dispose` keep held and
//! unexpired records, delete the rest where allowed, and audit every step.

use crate::helpers::*;
use m365_archiver::archive::{keys, sha256_hex};
use m365_archiver::manifest::Manifest;
use m365_archiver::state::CatalogueEntry;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

async fn verify(env: &Env) -> (Option<i32>, serde_json::Value) {
    let out = env
        .command(&["verify", "--json"])
        .output()
        .await
        .expect("verify");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json: {e}: {}", text(&out)));
    (out.status.code(), json)
}

fn keys_of(report: &serde_json::Value, kind: &str) -> Vec<String> {
    report[kind]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn writable(path: &Path) {
    let mut p = std::fs::metadata(path).expect("meta").permissions();
    p.set_mode(0o644);
    std::fs::set_permissions(path, p).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_untouched_and_names_every_tampering() {
    let env = Env::new(Db::Sqlite, sim_config(5, 8), &Opts::default()).await;
    env.run_until_ok(2).await;
    let (code, report) = verify(&env).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert!(report["records_checked"].as_u64().unwrap_or(0) > 0);
    assert!(report["manifests_checked"].as_u64().unwrap_or(0) > 0);

    // A manifest stored by a window whose commit never happened: information, not tampering.
    let state = env.state().await;
    let (source, scope) = state.manifest_scopes().await.expect("scopes")[0].clone();
    let t = chrono::Utc::now();
    let orphan = Manifest::new(&source, &scope, 999, t, t, None, t, vec![]).to_bytes();
    let orphan_key = keys::manifest_key(&source, &scope, 999, &sha256_hex(&orphan));
    let orphan_path = env.archive_path().join(&orphan_key);
    std::fs::write(&orphan_path, &orphan).expect("orphan");
    let (code, report) = verify(&env).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["orphaned_manifests"],
        serde_json::json!([orphan_key])
    );

    let records = env.record_files();
    let rel = |p: &Path| {
        p.strip_prefix(env.archive_path())
            .expect("inside")
            .display()
            .to_string()
    };
    // One byte changed in a record.
    let altered = &records[0];
    writable(altered);
    let mut bytes = std::fs::read(altered).expect("read");
    bytes[1] ^= 0x20;
    std::fs::write(altered, &bytes).expect("tamper");
    // A record deleted.
    let deleted = &records[1];
    std::fs::remove_file(deleted).expect("delete");
    // A manifest altered.
    let rows = state.manifests(&source, &scope).await.expect("manifests");
    let manifest_path = env.archive_path().join(&rows[0].storage_key);
    writable(&manifest_path);
    let mut m = std::fs::read(&manifest_path).expect("read");
    m.extend_from_slice(b"\n");
    std::fs::write(&manifest_path, &m).expect("tamper");
    // A catalogue row pointing to nothing.
    let ghost = "records/copilot/ghost/1/1.json".to_string();
    state
        .catalogue_insert(&[CatalogueEntry {
            source: "copilot".into(),
            record_key: "ghost/1".into(),
            etag: "1".into(),
            sha256: "00".repeat(32),
            storage_key: ghost.clone(),
            size_bytes: 2,
            scope_id: "ghost".into(),
            created_at: None,
            archived_at: chrono::Utc::now(),
        }])
        .await
        .expect("ghost row");
    // An object nobody catalogued.
    let extra_path = env.archive_path().join("records/copilot/intruder/1/1.json");
    std::fs::create_dir_all(extra_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&extra_path, b"{}").expect("extra");

    let (code, report) = verify(&env).await;
    assert_eq!(code, Some(1), "{report:#}");
    let altered_keys = keys_of(&report, "altered");
    assert!(altered_keys.contains(&rel(altered)), "{report:#}");
    assert!(altered_keys.contains(&rows[0].storage_key), "{report:#}");
    let missing = keys_of(&report, "missing");
    assert!(
        missing.contains(&rel(deleted)) && missing.contains(&ghost),
        "{report:#}"
    );
    assert_eq!(
        keys_of(&report, "extra"),
        vec!["records/copilot/intruder/1/1.json".to_string()]
    );
    assert!(keys_of(&report, "unchained").is_empty(), "{report:#}");

    // A committed manifest removed from the chain: its successor no longer chains.
    let (source2, scope2) = state.manifest_scopes().await.expect("scopes")[1].clone();
    let rows2 = state.manifests(&source2, &scope2).await.expect("manifests");
    assert!(rows2.len() >= 2, "the test needs two windows for {scope2}");
    let pool = sqlx::SqlitePool::connect(&env.state_url)
        .await
        .expect("raw connection");
    sqlx::query("DELETE FROM manifests WHERE scope_id = $1 AND seq = 1")
        .bind(&scope2)
        .execute(&pool)
        .await
        .expect("delete a manifest row");
    let (code, report) = verify(&env).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        keys_of(&report, "unchained"),
        vec![rows2[1].storage_key.clone()],
        "{report:#}"
    );
    let plain = env.command(&["verify"]).output().await.expect("verify");
    let plain = text(&plain);
    assert!(plain.contains("ARCHIVE VERIFICATION FAILED"), "{plain}");
    assert!(plain.contains(&ghost), "{plain}");
}

fn retention(disposal: bool) -> String {
    format!(
        "[retention]\ndisposal = {disposal}\n[retention.default]\nretain = \"1d\"\nmode = \"unlocked\"\ndispose = true\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispose_spares_held_and_unexpired_records_and_audits_each() {
    let opts = Opts {
        extra: retention(true),
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(4, 12), &opts).await;
    env.run_until_ok(2).await;
    let truth = env.truth().await;
    let held = truth[0].scope.clone();
    let upn: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/users", env.sim.authority()))
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    let held_upn = upn
        .iter()
        .find(|u| u["id"] == held.as_str())
        .and_then(|u| u["user_principal_name"].as_str())
        .expect("upn")
        .to_string();
    let out = env
        .command(&[
            "hold", "add", "--user", &held_upn, "--reason", "case 7", "--by", "alice",
        ])
        .output()
        .await
        .expect("hold");
    assert!(out.status.success(), "{}", text(&out));
    let list = env.command(&["hold", "list"]).output().await.expect("list");
    assert!(text(&list).contains("case 7"), "{}", text(&list));

    let before = env.record_files();
    let dry = env
        .command(&["dispose", "--dry-run"])
        .output()
        .await
        .expect("dry run");
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(env.record_files(), before, "a dry run deletes nothing");

    let out = env
        .command(&["dispose", "--by", "bob"])
        .output()
        .await
        .expect("dispose");
    assert!(out.status.success(), "{}", text(&out));
    let now = chrono::Utc::now();
    let held_prefix = format!("records/copilot/{}/", keys::segment(&held));
    let state = env.state().await;
    let audit = state.audit_list(100_000).await.expect("audit");
    let mut disposed = 0;
    for r in &truth {
        let key = m365_archiver::groundtruth::storage_key(r);
        let present = env.archive_path().join(&key).exists();
        let expired = r.created + chrono::Duration::days(1) < now - chrono::Duration::minutes(1);
        let audited = audit.iter().any(|a| {
            a.action == "record_disposed" && a.subject == key && a.actor == "operator:bob"
        });
        if key.starts_with(&held_prefix) || !expired {
            assert!(
                present,
                "{key} was deleted though {}",
                if expired { "held" } else { "unexpired" }
            );
            assert!(!audited);
        } else if r.visible_from <= now {
            assert!(!present, "{key} expired and unheld but kept");
            assert!(audited, "{key} disposed without an audit entry");
            disposed += 1;
        }
    }
    assert!(disposed > 0, "nothing was old enough to dispose of");
    assert!(audit
        .iter()
        .any(|a| a.action == "legal_hold_added" && a.actor == "operator:alice"));
    assert!(audit.iter().any(|a| a.action == "disposition_run"));
    let (code, report) = verify(&env).await;
    assert_eq!(
        code,
        Some(0),
        "disposed records are expected absent: {report:#}"
    );
    assert_eq!(report["disposed"].as_u64(), Some(disposed));

    // Released, the custodian's expired records go too.
    let out = env
        .command(&["hold", "release", "--user", &held_upn, "--reason", "closed"])
        .output()
        .await
        .expect("release");
    assert!(out.status.success(), "{}", text(&out));
    env.command(&["dispose"]).output().await.expect("dispose");
    let left: Vec<_> = env
        .record_files()
        .into_iter()
        .filter(|p| p.display().to_string().contains(&held_prefix))
        .filter(|p| {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json");
            let created = chrono::DateTime::parse_from_rfc3339(
                json["createdDateTime"].as_str().expect("created"),
            )
            .expect("date");
            created < now - chrono::Duration::days(1) - chrono::Duration::minutes(1)
        })
        .collect();
    assert!(
        left.is_empty(),
        "expired records of a released custodian remain: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disposal_disabled_deletes_nothing() {
    let opts = Opts {
        extra: retention(false),
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(2, 6), &opts).await;
    env.run_until_ok(2).await;
    let before = env.record_files();
    let out = env.command(&["dispose"]).output().await.expect("dispose");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("disposal is disabled"),
        "{}",
        text(&out)
    );
    assert_eq!(env.record_files(), before);
}
