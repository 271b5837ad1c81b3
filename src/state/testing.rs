//! Fresh databases for tests, here and in `tests/`. Not part of the daemon's behaviour.
//!
//! PostgreSQL tests need a server: run them under `scripts/with-postgres.sh`, which starts a
//! throwaway cluster and exports `M365_TEST_POSTGRES_URL`. Without it they fail, unless
//! `M365_SKIP_POSTGRES=1` asks to skip them (quick local runs).

use std::path::Path;

use sqlx::{AnyConnection, Connection};

use super::{redact_url, StateDb, StateError};

/// Admin URL of the throwaway cluster (set by scripts/with-postgres.sh).
pub const POSTGRES_URL_VAR: &str = "M365_TEST_POSTGRES_URL";
/// Set to 1 to skip PostgreSQL tests when no cluster is available.
pub const SKIP_POSTGRES_VAR: &str = "M365_SKIP_POSTGRES";

/// Creates an empty database `t_<uuid>` on the test cluster and returns its URL; Ok(None) when
/// PostgreSQL tests are skipped. Databases are not dropped: the whole cluster is thrown away.
pub async fn fresh_postgres_url() -> Result<Option<String>, StateError> {
    let admin_url = match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ if skip_requested() => return Ok(None),
        _ => {
            return Err(StateError::TestSetup(format!(
                "{POSTGRES_URL_VAR} is not set: run the tests under scripts/with-postgres.sh \
                 (e.g. `scripts/with-postgres.sh cargo test`), or set {SKIP_POSTGRES_VAR}=1 to \
                 skip the PostgreSQL variants"
            )))
        }
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    create_database(&admin_url, &name).await?;
    let mut url = url::Url::parse(&admin_url).map_err(|e| {
        StateError::TestSetup(format!(
            "{POSTGRES_URL_VAR} ({}) is not a valid URL: {e}",
            redact_url(&admin_url)
        ))
    })?;
    url.set_path(&format!("/{name}"));
    Ok(Some(url.to_string()))
}

/// A connected, migrated StateDb on a fresh PostgreSQL database; Ok(None) when skipped.
pub async fn fresh_postgres() -> Result<Option<StateDb>, StateError> {
    let Some(url) = fresh_postgres_url().await? else {
        return Ok(None);
    };
    let db = StateDb::connect(&url).await?;
    db.migrate().await?;
    Ok(Some(db))
}

/// A connected, migrated StateDb on a new SQLite file `state.db` inside `dir`.
pub async fn sqlite_in(dir: &Path) -> Result<StateDb, StateError> {
    let path = dir.join("state.db");
    let db = StateDb::connect(&format!("sqlite://{}", path.display())).await?;
    db.migrate().await?;
    Ok(db)
}

fn skip_requested() -> bool {
    matches!(
        std::env::var(SKIP_POSTGRES_VAR).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

async fn create_database(admin_url: &str, name: &str) -> Result<(), StateError> {
    let mut conn = AnyConnection::connect(admin_url)
        .await
        .map_err(|e| StateError::Connect {
            url: redact_url(admin_url),
            detail: super::error::scrub_secret(&e.to_string(), admin_url),
            hint: "is the throwaway cluster of scripts/with-postgres.sh still running?",
        })?;
    // The name is generated above (t_ + hex), so formatting it into the statement is safe.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(StateError::op("create test database"))?;
    conn.close()
        .await
        .map_err(StateError::op("create test database"))
}

/// Makes two `#[tokio::test]`s (modules `sqlite` and `postgres`) for each named
/// `async fn(StateDb)` of the invoking module: one on a fresh SQLite file, one on a fresh
/// PostgreSQL database (skipped only when `M365_SKIP_POSTGRES=1`).
#[macro_export]
#[doc(hidden)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let db = $crate::state::testing::sqlite_in(dir.path())
                        .await
                        .unwrap_or_else(|e| panic!("SQLite state database: {e}"));
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = match $crate::state::testing::fresh_postgres().await {
                        Ok(Some(db)) => db,
                        Ok(None) => {
                            eprintln!(
                                "skipping PostgreSQL variant ({}=1)",
                                $crate::state::testing::SKIP_POSTGRES_VAR
                            );
                            return;
                        }
                        Err(e) => panic!("PostgreSQL state database: {e}"),
                    };
                    super::$name(db).await;
                }
            )*
        }
    };
}
