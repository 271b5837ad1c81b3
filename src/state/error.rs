//! Errors of the state database, and the URL redaction that keeps passwords out of them.

use std::borrow::Cow;

/// Why a state database operation failed.
///
/// Every variant names the operation. Connection URLs only ever appear redacted
/// (`postgres://user:***@host/db`), and connection failures carry the driver's message with any
/// password scrubbed rather than the driver error itself, so that printing the whole error chain
/// cannot leak a secret either.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The URL is neither `sqlite:` nor `postgres://` / `postgresql://`.
    #[error(
        "unsupported state database URL {url}: use sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl { url: String },

    /// The database could not be opened or reached when connecting.
    #[error("cannot connect to the state database at {url}: {detail}. {hint}")]
    Connect {
        url: String,
        detail: String,
        hint: &'static str,
    },

    /// Applying the embedded migrations failed.
    #[error("migrating the state database at {url} failed: {source}{hint}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
        hint: &'static str,
    },

    /// The database stopped answering (I/O error, pool timeout, closed pool) during an operation.
    #[error(
        "state database unreachable during {op}: {source}. Check that the database is running and reachable (state.url), then retry"
    )]
    Unavailable {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A query failed for another reason (constraint, trigger, malformed data, ...).
    #[error("state database {op} failed: {source}")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A stored value could not be turned back into its Rust type (e.g. an out-of-range instant).
    #[error("state database {op}: column {column} holds an invalid value ({value})")]
    Corrupt {
        op: &'static str,
        column: &'static str,
        value: String,
    },

    /// `commit_window` was given a manifest whose sequence number does not follow the last one.
    #[error(
        "manifest for {source_name}/{scope_id} has seq {got} but the next must be {expected}; nothing was committed"
    )]
    ManifestOutOfSequence {
        source_name: String,
        scope_id: String,
        expected: i64,
        got: i64,
    },

    /// `commit_window` was given a manifest whose `prev_sha256` is not the last manifest's hash.
    #[error(
        "manifest {seq} for {source_name}/{scope_id} does not chain to the previous one (prev_sha256 {got:?}, expected {expected:?}); nothing was committed"
    )]
    ManifestChainBroken {
        source_name: String,
        scope_id: String,
        seq: i64,
        expected: Option<String>,
        got: Option<String>,
    },

    /// The caller passed something the state database cannot store as asked.
    #[error("invalid input to state database {op}: {reason}")]
    InvalidInput { op: &'static str, reason: String },

    /// The source name has no known scope kind (see `scope_kind_for_source`).
    #[error(
        "unknown source {source_name:?}: expected one of copilot, chats, channels, transcripts, recordings"
    )]
    UnknownSource { source_name: String },

    /// A write shared with other callers' (a group commit) failed; the cause is the same for all.
    #[error(transparent)]
    Shared(std::sync::Arc<StateError>),

    /// The task writing a group commit this call was part of ended (panicked, or its runtime
    /// shut down) before it finished; nothing of the call was committed.
    #[error(
        "state database {op} was abandoned before it committed; nothing of it was kept, retry"
    )]
    Abandoned { op: &'static str },

    /// The test harness is not set up (used only by `state::testing`).
    #[error("{0}")]
    TestSetup(String),
}

impl StateError {
    /// Classifies a driver error: connectivity problems become `Unavailable` (with advice),
    /// everything else `Query`.
    pub(crate) fn db(op: &'static str, source: sqlx::Error) -> Self {
        if is_connectivity(&source) {
            StateError::Unavailable { op, source }
        } else {
            StateError::Query { op, source }
        }
    }

    /// A closure for `map_err` that names the operation.
    pub(crate) fn op(op: &'static str) -> impl Fn(sqlx::Error) -> Self {
        move |e| Self::db(op, e)
    }

    /// True when the database could not be reached; retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StateError::Unavailable { .. } | StateError::Connect { .. } => true,
            StateError::Shared(inner) => inner.is_unavailable(),
            _ => false,
        }
    }
}

fn is_connectivity(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// Query parameters of a database URL whose values are secrets.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword"];

/// Replaces the password of a database URL (and secret query parameters) with `***`.
///
/// Works on the raw string rather than a parsed URL, so that a malformed URL (which a parser
/// would reject, leaving us nothing safe to print) is still redacted. When unsure it redacts
/// too much, never too little.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_query(url).into_owned();
    };
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    // The last '@' ends the user info even if the password itself contains '@', '/' or '?'.
    let redacted_rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], &rest[at..]),
                None => rest.to_owned(),
            }
        }
        None => rest.to_owned(),
    };
    redact_query(&format!("{scheme}://{redacted_rest}")).into_owned()
}

fn redact_query(url: &str) -> Cow<'_, str> {
    let Some(q) = url.find('?') else {
        return Cow::Borrowed(url);
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    Cow::Owned(format!("{base}?{}", pairs.join("&")))
}

/// Removes every occurrence of the URL's password (raw and percent-decoded) from a message.
pub(crate) fn scrub_secret(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    for secret in url_secrets(url) {
        if secret.len() >= 2 {
            out = out.replace(&secret, "***");
        }
    }
    out
}

fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            if let Some((_, password)) = rest[..at].split_once(':') {
                secrets.push(password.to_owned());
                if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                    secrets.push(decoded.into_owned());
                }
            }
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=') {
                if SECRET_PARAMS.contains(&key.to_ascii_lowercase().as_str()) {
                    secrets.push(value.to_owned());
                }
            }
        }
    }
    secrets
}

/// What to do about a failed migration, where the cause is a known setup mistake.
pub(crate) fn migrate_hint(e: &sqlx::migrate::MigrateError) -> &'static str {
    let text = e.to_string();
    if text.contains("no schema has been selected")
        || text.contains("schema") && text.contains("does not exist")
    {
        ". The schema named by search_path in state.url does not exist: create it first \
         (CREATE SCHEMA <name> AUTHORIZATION <archiver role>), one per tenant"
    } else if text.contains("permission denied") {
        ". The database role in state.url may not create tables there: grant it CREATE on the \
         schema (or run `m365-archiver migrate` once as the schema owner)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        assert_eq!(
            redact_url("postgres://archiver:s3cret@db.example:5432/state"),
            "postgres://archiver:***@db.example:5432/state"
        );
    }

    #[test]
    fn awkward_passwords_are_redacted() {
        let redacted = redact_url("postgres://u:p@ss/w?rd@host/db");
        assert!(!redacted.contains("ss/w"), "{redacted}");
        assert!(
            redacted.starts_with("postgres://u:***@host/db"),
            "{redacted}"
        );
    }

    #[test]
    fn query_password_is_redacted() {
        let redacted = redact_url("postgres://u@host/db?sslmode=require&password=hunter22");
        assert_eq!(
            redacted,
            "postgres://u@host/db?sslmode=require&password=***"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "sqlite://var/lib/m365/state.db",
            "sqlite::memory:",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let url = "postgres://u:p%40ss@host/db";
        let scrubbed = scrub_secret("auth failed for p@ss and p%40ss", url);
        assert_eq!(scrubbed, "auth failed for *** and ***");
    }
}
