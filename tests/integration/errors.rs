use crate::helpers::*;
use m365_archiver::groundtruth::storage_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_names_the_aadsts_code_and_archives_nothing() {
    let wrong = "Wr0ng-Secret-Value-4242";
    let opts = Opts {
        graph_credential: format!("client_secret = \"{wrong}\""),
        ..Opts::default()
    };
    let env = Env::new(Db::Sqlite, sim_config(3, 4), &opts).await;
    let out = env.run_once().await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(77), "{all}");
    assert!(all.contains("AADSTS7000215"), "{all}");
    assert!(
        all.contains("graph.client_secret"),
        "says what to fix: {all}"
    );
    assert!(!all.contains(wrong), "the secret leaked: {all}");
    assert!(env.record_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_even_at_trace() {
    let env = Env::new(Db::Sqlite, sim_config(2, 4), &Opts::default()).await;
    let out = env
        .command(&["run", "--once"])
        .env("RUST_LOG", "trace")
        .output()
        .await
        .expect("run");
    let all = text(&out);
    assert!(out.status.success(), "{}", tail(&all, 20));
    assert!(!all.contains(SECRET), "client secret in the logs");
    assert!(
        !all.to_ascii_lowercase().contains("bearer "),
        "a bearer token in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_configuration_exits_78_naming_the_key() {
    let env = Env::new(Db::Sqlite, sim_config(1, 2), &Opts::default()).await;
    let cases = [
        ("M365_ARCHIVER__EXPORT__OVERLAP", "0s", "export.overlap"),
        ("M365_ARCHIVER__STATE__URL", "mysql://db", "state.url"),
        (
            "M365_ARCHIVER__EXPORT__SOURCES",
            "copilot,faxes",
            "export.sources",
        ),
        (
            "M365_ARCHIVER__EXPORT__START",
            "last tuesday",
            "export.start",
        ),
        ("M365_ARCHIVER__GRAPH__TENANT_ID", "", "graph.tenant_id"),
        (
            "M365_ARCHIVER__EXPORT__CONCURRENCY",
            "lots",
            "export.concurrency",
        ),
        ("M365_ARCHIVER__EXPORT__TYPO", "1", "export.typo"),
    ];
    for (var, value, key) in cases {
        for cmd in [&["run", "--once"][..], &["config", "check"][..]] {
            let out = env
                .command(cmd)
                .env(var, value)
                .output()
                .await
                .expect("run");
            let all = text(&out);
            assert_eq!(out.status.code(), Some(78), "{var}={value}: {all}");
            assert!(all.contains(key), "{var}={value} must name {key}: {all}");
        }
    }
    let ok = env
        .command(&["config", "check"])
        .output()
        .await
        .expect("run");
    assert!(ok.status.success(), "{}", text(&ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_store_is_reported_and_exits_69() {
    let env = Env::new(Db::Sqlite, sim_config(1, 2), &Opts::default()).await;
    let out = env
        .command(&["run", "--once"])
        .env(
            "M365_ARCHIVER__STORE__PATH",
            "/proc/m365-archiver-no-such-dir",
        )
        .output()
        .await
        .expect("run");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(69), "{all}");
    assert!(all.contains("store.path"), "{all}");
}

/// A file already at a record's key with other content is an integrity alarm: it is reported,
/// never overwritten, and everything else is still archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_file_with_other_content_is_reported_not_overwritten() {
    let env = Env::new(Db::Sqlite, sim_config(4, 6), &Opts::default()).await;
    let truth = env.truth().await;
    let key = storage_key(&truth[0]);
    let path = env.archive_path().join(&key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, b"{\"planted\":true}").expect("plant");

    let out = env.run_once().await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("integrity alarm"), "{all}");
    assert_eq!(std::fs::read(&path).expect("read"), b"{\"planted\":true}");
    let cmp = env.compare().await;
    assert_eq!(cmp.altered, vec![key.clone()]);
    assert!(
        cmp.missing.is_empty() && cmp.extra.is_empty(),
        "{}",
        cmp.summary()
    );
    let audit = env.state().await.audit_list(100).await.expect("audit");
    assert!(audit
        .iter()
        .any(|a| a.action == "integrity_conflict" && a.subject == key));
    let status = env.command(&["status"]).output().await.expect("status");
    assert!(
        text(&status).contains("integrity alarm"),
        "{}",
        text(&status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_in_both_assertion_forms() {
    let (cert_pem, key_pem) = test_certificate();
    for form in ["ps256", "rs256"] {
        let mut sim = sim_config(2, 4);
        sim.certificate_pem = Some(cert_pem.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, &cert_pem).expect("write cert");
        std::fs::write(&key, &key_pem).expect("write key");
        let opts = Opts {
            graph_credential: format!(
                "certificate_file = \"{}\"\nprivate_key_file = \"{}\"\nassertion = \"{form}\"",
                cert.display(),
                key.display()
            ),
            ..Opts::default()
        };
        let env = Env::new(Db::Sqlite, sim, &opts).await;
        env.run_until_ok(2).await;
        let cmp = env.compare().await;
        assert!(cmp.is_exact(), "{form}: {}", cmp.summary());
    }
}

fn test_certificate() -> (String, String) {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
        .expect("rcgen key pair");
    let params = rcgen::CertificateParams::new(vec!["m365-archiver-test".into()]).expect("params");
    let cert = params.self_signed(&pair).expect("self-signed");
    (cert.pem(), key_pem)
}
