//! Several tenants in one deployment: one archiver instance per tenant (its own credentials,
//! rate budget, store and configuration file), all sharing one PostgreSQL database, each in its
//! own schema chosen in `state.url` (`?options[search_path]=<schema>`). Two tenants archive at
//! the same time; each archive equals its own tenant's ground truth and neither schema holds a
//! row of the other.

use crate::helpers::*;
use m365_archiver::sim::SimConfig;
use m365_archiver::state::testing;
use sqlx::Row;

const TENANT_B: &str = "00000000-0000-4000-8000-0000000000b2";
const CLIENT_B: &str = "22222222-2222-4222-8222-2222222222b2";
const SECRET_B: &str = "tenant-b-secret-do-not-use";

/// A second tenant: other ids, another secret, a different history.
fn tenant_b_sim() -> SimConfig {
    SimConfig {
        tenant_id: TENANT_B.into(),
        client_id: CLIENT_B.into(),
        client_secret: SECRET_B.into(),
        seed: 7,
        ..sim_config(12, 15)
    }
}

/// Points an environment's state at `schema` of the shared database; tenant B also gets its
/// own identity, secret and a rate budget of its own.
fn use_schema(env: &mut Env, db_url: &str, schema: &str, tenant_b: bool) {
    env.state_url = format!("{db_url}?options[search_path]={schema}");
    if !tenant_b {
        env.write_config(&Opts::default());
        return;
    }
    env.write_config(&Opts {
        rps: 50.0,
        graph_credential: format!("client_secret = \"{SECRET_B}\""),
        ..Opts::default()
    });
    let text = std::fs::read_to_string(&env.config).expect("read config");
    let text = text
        .replace("00000000-0000-4000-8000-000000000001", TENANT_B)
        .replace("11111111-1111-4111-8111-111111111111", CLIENT_B);
    std::fs::write(&env.config, text).expect("write config");
}

async fn create_schemas(db_url: &str, schemas: &[&str]) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.expect("connect");
    for s in schemas {
        sqlx::query(&format!("CREATE SCHEMA {s}"))
            .execute(&pool)
            .await
            .expect("create schema");
    }
    pool.close().await;
}

async fn catalogue_rows(db_url: &str, schema: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(db_url).await.expect("connect");
    let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {schema}.catalogue"))
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    row.get::<i64, _>("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_share_one_database_in_separate_schemas() {
    let Some(db_url) = testing::fresh_postgres_url().await.expect("postgres") else {
        return;
    };
    create_schemas(&db_url, &["tenant_a", "tenant_b"]).await;
    let mut a = Env::new(Db::Sqlite, sim_config(10, 20), &Opts::default()).await;
    let mut b = Env::new(Db::Sqlite, tenant_b_sim(), &Opts::default()).await;
    use_schema(&mut a, &db_url, "tenant_a", false);
    use_schema(&mut b, &db_url, "tenant_b", true);

    let (out_a, out_b) = tokio::join!(a.run_once(), b.run_once());
    assert!(out_a.status.success(), "tenant A: {}", text(&out_a));
    assert!(out_b.status.success(), "tenant B: {}", text(&out_b));

    let (cmp_a, cmp_b) = (a.compare().await, b.compare().await);
    assert!(cmp_a.is_exact(), "tenant A archive: {cmp_a:?}");
    assert!(cmp_b.is_exact(), "tenant B archive: {cmp_b:?}");
    let (truth_a, truth_b) = (a.truth().await.len() as i64, b.truth().await.len() as i64);
    assert_ne!(
        truth_a, truth_b,
        "the tenants must differ for the test to mean anything"
    );
    assert_eq!(catalogue_rows(&db_url, "tenant_a").await, truth_a);
    assert_eq!(catalogue_rows(&db_url, "tenant_b").await, truth_b);

    // B's credentials are B's alone: B's configuration against A's tenant is refused.
    let swapped = std::fs::read_to_string(&b.config)
        .expect("config")
        .replace(&b.sim.authority(), &a.sim.authority())
        .replace(&b.sim.base_url(), &a.sim.base_url());
    std::fs::write(&b.config, swapped).expect("write");
    let refused = b.run_once().await;
    assert_eq!(refused.status.code(), Some(77), "{}", text(&refused));
}

/// A schema that was never created is named as the problem, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tenant_schema_says_how_to_create_it() {
    let Some(db_url) = testing::fresh_postgres_url().await.expect("postgres") else {
        return;
    };
    let mut env = Env::new(Db::Sqlite, sim_config(2, 1), &Opts::default()).await;
    use_schema(&mut env, &db_url, "tenant_never_made", false);
    let out = env.command(&["migrate"]).output().await.expect("run");
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("CREATE SCHEMA"), "{err}");
}
