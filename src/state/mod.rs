//! The state database: scopes, checkpoints, the record catalogue, window manifests, leases and
//! the append-only audit log.
//!
//! SQLite (embedded, one file, the default) and PostgreSQL (production, several replicas) share
//! ONE code path through `sqlx::AnyPool`: the same SQL with `$N` placeholders, only the types the
//! Any driver carries (i64, String, Option), and instants as i64 epoch milliseconds. The two
//! dialects differ only in their migrations (`migrations/sqlite`, `migrations/postgres`, the same
//! logical schema) and in how a write transaction begins (`BEGIN IMMEDIATE` on SQLite, see
//! [`StateDb::begin_write`]).

mod archived;
mod audit;
mod bulk;
mod catalogue;
mod checkpoints;
mod content;
mod error;
mod holds;
mod keyscan;
mod lease_claims;
mod leases;
mod replicas;
mod retention;
mod schedule;
mod scope_end;
mod scopes;
mod status;
#[doc(hidden)]
pub mod testing;
mod types;

#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use archived::HeldKeys;
pub use content::CatalogueVersion;
pub use error::{redact_url, StateError};
pub use holds::{HoldKind, HoldRow};
pub use lease_claims::{LeaseClaim, MAX_CLAIM_KEYS};
pub use replicas::ReplicaRow;
pub use retention::{ChatParticipant, DisposalCandidate, RetentionRow};
pub use schedule::{DueScopes, PollHorizon, PollSchedule};
pub use scope_end::ScopeEnd;
pub use types::{
    AuditEntry, AuditRow, CatalogueEntry, Checkpoint, ManifestRow, ScopeRecord, ScopeRow,
    ScopeSync, StatusRow, WindowCommit,
};

/// How long SQLite waits for another connection's write lock before answering SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;
/// Connections per pool. SQLite serialises writers anyway; the extra connections serve readers.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// Page cache of the SQLite writer connection: four times SQLite's default, room for the index
/// pages a catalogue group rewrites. A pass over 100,000 users fills whatever cache it gets:
/// 32 MiB took its peak RSS from 158 to 196 MiB, near the 200 MiB target (docs/benchmarks.md).
const SQLITE_WRITER_CACHE_KIB: u32 = 8 * 1024;
/// WAL pages after which a commit copies the WAL back into the database (SQLite's default is
/// 1,000). A catalogue group dirties hundreds of index pages, mostly the same ones group after
/// group: copying them back every eighth group instead of every other one writes each once.
const SQLITE_WRITER_CHECKPOINT_PAGES: u32 = 8_000;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

const SQLITE_HINT: &str = "Check that the directory exists and is writable by the service user, \
     and that state.url is right";
const POSTGRES_HINT: &str = "Check that PostgreSQL is running and reachable from this host, that \
     the user, password and database in state.url are right, and that the server accepts the \
     connection (pg_hba.conf, TLS)";

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database engine holds the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Handle on the state database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct StateDb {
    pool: AnyPool,
    backend: Backend,
    /// The URL with its password replaced, for messages.
    redacted_url: Arc<str>,
    /// SQLite allows one writer at a time. Queuing this process's writers here, instead of
    /// letting them spin in SQLite's busy handler, keeps them fair and fast; busy_timeout still
    /// covers other processes (e.g. `status` run beside the daemon). None for PostgreSQL.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Where write transactions run: on SQLite one connection of its own, so its page cache
    /// survives from one transaction to the next (a connection's cache is dropped whenever
    /// another connection has written since its last transaction); `pool` on PostgreSQL.
    writer: AnyPool,
    /// Archived batches waiting to be committed together (see `archived.rs`).
    archived: Arc<archived::ArchivedQueue>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb")
            .field("backend", &self.backend)
            .field("url", &&*self.redacted_url)
            .finish_non_exhaustive()
    }
}

/// A write transaction, plus (on SQLite) this process's writer slot. Fields drop in order: the
/// transaction (rolled back unless committed) before the slot is released.
pub(crate) struct WriteTx {
    pub(crate) tx: Transaction<'static, Any>,
    _slot: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub(crate) async fn commit(self, op: &'static str) -> Result<(), StateError> {
        let WriteTx { tx, _slot } = self;
        tx.commit().await.map_err(StateError::op(op))
    }
}

impl StateDb {
    /// Opens a pool on `sqlite://PATH` (the file is created if missing), `sqlite::memory:`
    /// (tests) or `postgres://...`, and checks that the database answers. Does not migrate.
    pub async fn connect(url: &str) -> Result<StateDb, StateError> {
        sqlx::any::install_default_drivers();
        let redacted = redact_url(url);
        match Backend::from_url(url) {
            Some(Backend::Sqlite) => connect_sqlite(url, &redacted).await,
            Some(Backend::Postgres) => connect_postgres(url, &redacted).await,
            None => Err(StateError::UnsupportedUrl { url: redacted }),
        }
    }

    /// Applies the embedded migrations of this backend; a no-op when they are all applied.
    pub async fn migrate(&self) -> Result<(), StateError> {
        self.run_migrator(self.migrator()).await?;
        tracing::debug!(backend = ?self.backend, "state database migrations applied");
        Ok(())
    }

    /// Applies the embedded migrations older than `version` only: a database as an earlier
    /// release left it, for migration tests.
    #[cfg(test)]
    pub(crate) async fn migrate_before(&self, version: i64) -> Result<(), StateError> {
        let older = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                self.migrator()
                    .migrations
                    .iter()
                    .filter(|m| m.version < version)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        self.run_migrator(&older).await
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        }
    }

    async fn run_migrator(&self, migrator: &sqlx::migrate::Migrator) -> Result<(), StateError> {
        let _slot = self.writer_slot().await;
        migrator
            .run(&self.pool)
            .await
            .map_err(|source| StateError::Migrate {
                url: self.redacted_url.to_string(),
                hint: error::migrate_hint(&source),
                source,
            })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL this handle was opened with, password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StateError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StateError::op("ping"))
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The rows of a read, each converted as it arrives. `fetch_all` held every raw row until
    /// the last one came: at 100,000 scopes about 80 MB beside the converted rows, the peak of
    /// a pass's memory.
    pub(crate) async fn read_rows<'q, T>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
        op: &'static str,
        convert: fn(&sqlx::any::AnyRow, &'static str) -> Result<T, StateError>,
    ) -> Result<Vec<T>, StateError> {
        use futures::TryStreamExt;
        let mut rows = query.fetch(&self.pool);
        let mut converted = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(StateError::op(op))? {
            converted.push(convert(&row, op)?);
        }
        Ok(converted)
    }

    /// Where statements that write run, holding the writer slot (see `writer`).
    pub(crate) fn write_pool(&self) -> &AnyPool {
        &self.writer
    }

    /// Waits for this process's SQLite writer slot (immediately Some(..)/None on PostgreSQL).
    pub(crate) async fn writer_slot(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(Arc::clone(lock).lock_owned().await),
            None => None,
        }
    }

    /// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: a deferred
    /// transaction that reads and then writes can fail with SQLITE_BUSY on the upgrade, which
    /// busy_timeout does not retry; taking the write lock up front makes it wait instead.
    pub(crate) async fn begin_write(&self, op: &'static str) -> Result<WriteTx, StateError> {
        let slot = self.writer_slot().await;
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
        .map_err(StateError::op(op))?;
        Ok(WriteTx { tx, _slot: slot })
    }
}

/// The scope kind whose ids a source's checkpoints use. Kept here, keyed by the source name,
/// so that state needs nothing from the rest of the crate.
fn scope_kind_for_source(source: &str) -> Result<&'static str, StateError> {
    match source {
        "copilot" | "chats" => Ok("user"),
        "channels" => Ok("team"),
        "transcripts" | "recordings" => Ok("organizer"),
        other => Err(StateError::UnknownSource {
            source_name: other.to_owned(),
        }),
    }
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Asks SQLite to create the file when the URL does not say otherwise.
fn sqlite_url_with_create(url: &str) -> String {
    if is_sqlite_memory(url) || url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

async fn connect_sqlite(url: &str, redacted: &str) -> Result<StateDb, StateError> {
    let connect_err = |detail: String| StateError::Connect {
        url: redacted.to_owned(),
        detail,
        hint: SQLITE_HINT,
    };
    let memory = is_sqlite_memory(url);
    let url = sqlite_url_with_create(url);
    if !memory {
        create_parent_dir(&url).await.map_err(connect_err)?;
        probe(&url).await.map_err(connect_err)?;
    }
    // The Any driver re-parses the URL for every connection, and each parse of
    // `sqlite::memory:` names a new, empty database: one connection that never expires is the
    // only way to keep an in-memory database for the pool's lifetime.
    let options = if memory {
        AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        AnyPoolOptions::new().max_connections(SQLITE_MAX_CONNECTIONS)
    };
    let pool = options
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| Box::pin(sqlite_session_pragmas(conn)))
        .connect(&url)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    if !memory {
        // WAL lets readers run beside the writer. The setting is stored in the file, so one
        // connection switching it is enough.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
    }
    // Opened once the file is in WAL mode.
    let writer = if memory {
        pool.clone()
    } else {
        sqlite_writer_pool(&url)
            .await
            .map_err(|e| connect_err(e.to_string()))?
    };
    tracing::debug!(url = %redacted, "state database opened (SQLite)");
    Ok(StateDb {
        pool,
        backend: Backend::Sqlite,
        redacted_url: Arc::from(redacted),
        sqlite_writer: Some(Arc::new(Mutex::new(()))),
        writer,
        archived: Default::default(),
    })
}

/// Per-connection SQLite settings: wait for locks, enforce foreign keys, and make every commit
/// durable (FULL) because a lost catalogue row would hide an archived object from dedup.
/// Temporary data (the statement journal a multi-row insert keeps to undo itself alone) stays
/// in memory: written to a temporary file it cost a write per page touched.
async fn sqlite_session_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    for pragma in [
        format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
        "PRAGMA foreign_keys = ON".to_owned(),
        "PRAGMA synchronous = FULL".to_owned(),
        "PRAGMA temp_store = MEMORY".to_owned(),
    ] {
        sqlx::query(&pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The writer's one connection, kept for the pool's lifetime, with a page cache large enough
/// for the indexes a catalogue group touches (SQLite's default is 2 MiB).
async fn sqlite_writer_pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlite_session_pragmas(conn).await?;
                for pragma in [
                    format!("PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}"),
                    format!("PRAGMA wal_autocheckpoint = {SQLITE_WRITER_CHECKPOINT_PAGES}"),
                ] {
                    sqlx::query(&pragma).execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// Opens and closes one connection. The pool retries a refused connection until its acquire
/// timeout and then reports only "pool timed out"; a single attempt fails fast with the real
/// cause (refused, unknown host, bad password, unreadable file), which is what an operator needs.
async fn probe(url: &str) -> Result<(), String> {
    let attempt = tokio::time::timeout(ACQUIRE_TIMEOUT, AnyConnection::connect(url)).await;
    match attempt {
        Err(_) => Err(format!("no answer within {} s", ACQUIRE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(conn)) => conn.close().await.map_err(|e| e.to_string()),
    }
}

async fn create_parent_dir(url: &str) -> Result<(), String> {
    let options = SqliteConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    let Some(parent) = options.get_filename().parent() else {
        return Ok(());
    };
    if parent.as_os_str().is_empty() {
        return Ok(());
    }
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| format!("cannot create directory {}: {e}", parent.display()))
}

async fn connect_postgres(url: &str, redacted: &str) -> Result<StateDb, StateError> {
    let connect_err = |detail: String| StateError::Connect {
        url: redacted.to_owned(),
        detail: error::scrub_secret(&detail, url),
        hint: POSTGRES_HINT,
    };
    probe(url).await.map_err(connect_err)?;
    let pool = AnyPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| Box::pin(postgres_session_settings(conn)))
        .connect(url)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    tracing::debug!(url = %redacted, "state database opened (PostgreSQL)");
    Ok(StateDb {
        writer: pool.clone(),
        pool,
        backend: Backend::Postgres,
        redacted_url: Arc::from(redacted),
        sqlite_writer: None,
        archived: Default::default(),
    })
}

/// Per-connection PostgreSQL settings. Every statement is planned for its own parameters and
/// the table as it is now: a prepared statement's generic plan, chosen after five executions
/// while the tables were still small, is a sequential scan, and it stayed in use as the
/// catalogue grew to millions of rows (a 100-key lookup then took over a second).
async fn postgres_session_settings(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET plan_cache_mode = force_custom_plan")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// `sql` as the connection's engine binds it fastest. sqlx's SQLite driver looks every `$N`
/// parameter up by its name, a scan of the statement's parameter list each, so a statement of
/// hundreds of parameters (a bulk insert, a long IN list) costs quadratic time; the same
/// statement with anonymous `?` parameters binds in one pass. Only a statement whose `$N`
/// appear exactly once each, in order from `$1`, can be rewritten; any other is left as is.
pub(crate) fn bulk_sql(conn: &AnyConnection, sql: String) -> String {
    bulk_sql_for(conn.backend_name().eq_ignore_ascii_case("sqlite"), sql)
}

impl StateDb {
    /// [`bulk_sql`] for a statement run on the pool.
    pub(crate) fn bulk_sql(&self, sql: String) -> String {
        bulk_sql_for(self.backend == Backend::Sqlite, sql)
    }
}

fn bulk_sql_for(sqlite: bool, sql: String) -> String {
    match sqlite {
        true => positional(&sql).unwrap_or(sql),
        false => sql,
    }
}

fn positional(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut next = 1u64;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let number: u64 = rest[at + 1..at + 1 + digits].parse().ok()?;
        if number != next {
            return None;
        }
        next += 1;
        out.push('?');
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    Some(out)
}

/// `$start, $start+1, ...` placeholders for an IN list or a VALUES row.
pub(crate) fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod bulk_sql_tests {
    use super::bulk_sql_for;

    #[test]
    fn sqlite_statements_with_parameters_in_order_bind_them_anonymously() {
        let sql = "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)".to_string();
        assert_eq!(
            bulk_sql_for(true, sql.clone()),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(bulk_sql_for(false, sql.clone()), sql, "PostgreSQL keeps $N");
    }

    #[test]
    fn statements_that_reuse_or_reorder_parameters_are_left_as_they_are() {
        for sql in [
            "SELECT $1 WHERE a = $1",
            "SELECT $2, $1",
            "SELECT $1, $3",
            "SELECT '$' || $1",
        ] {
            assert_eq!(bulk_sql_for(true, sql.to_string()), sql);
        }
        assert_eq!(bulk_sql_for(true, "SELECT 1".into()), "SELECT 1");
        assert_eq!(bulk_sql_for(true, "SELECT $10".into()), "SELECT $10");
    }
}
