//! Errors at the Graph client's seam.
//!
//! Every message says what happened and, where the operator can act, what to do. No message
//! ever carries a client secret, a client assertion, an access token or a query string (query
//! strings may hold opaque skip tokens, and are useless to an operator anyway).

use thiserror::Error;

use super::retry::is_retryable_status;

/// Longest excerpt of a remote error text kept in an error message.
const MAX_REMOTE_TEXT: usize = 300;

/// A response body that is not the Graph collection envelope we expect, or a record that is not
/// a JSON value. Only positions are reported, never content: bodies hold archived personal data.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PageError {
    #[error("truncated JSON (ends early at line {line} column {column})")]
    Truncated { line: usize, column: usize },
    #[error("invalid JSON at line {line} column {column}")]
    Syntax { line: usize, column: usize },
    #[error(
        "not a Graph collection (expected {{\"value\":[...]}}) at line {line} column {column}"
    )]
    NotACollection { line: usize, column: usize },
    #[error("item {index} of \"value\" is not a JSON object")]
    NotAnObject { index: usize },
    #[error("@odata.nextLink is not an absolute URL")]
    InvalidNextLink,
    #[error("internal error: a parsed record does not lie inside the response body")]
    OutsideBody,
}

impl PageError {
    /// Maps a serde_json error to a position-only error (serde_json's own messages may quote
    /// the offending data).
    pub(crate) fn from_json(err: &serde_json::Error) -> Self {
        let (line, column) = (err.line(), err.column());
        match err.classify() {
            serde_json::error::Category::Eof => Self::Truncated { line, column },
            serde_json::error::Category::Data => Self::NotACollection { line, column },
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                Self::Syntax { line, column }
            }
        }
    }
}

/// Everything the Graph client can fail with.
#[derive(Debug, Error)]
pub enum GraphError {
    /// The client configuration cannot work (bad URL, budget, certificate or key).
    #[error("invalid Graph client configuration: {0}")]
    Config(String),

    /// The token endpoint refused the credentials.
    #[error("{}", auth_message(*status, *aadsts, error, description))]
    Auth {
        status: u16,
        aadsts: Option<u32>,
        error: String,
        description: String,
    },

    /// The token endpoint answered 2xx but without a usable bearer token.
    #[error("the token endpoint at {host} answered without a usable bearer access token")]
    TokenResponse { host: String },

    /// Graph answered with an error status.
    #[error("{}", status_message(*status, code, message, path))]
    Status {
        status: u16,
        code: String,
        message: String,
        path: String,
    },

    /// The request never got a complete answer: connect failure, reset, timeout, body cut.
    #[error("transport error talking to {host} (path {path}): {detail}; check network access (firewall, proxy, DNS) to {host}")]
    Transport {
        host: String,
        path: String,
        detail: String,
    },

    /// Graph answered 2xx with a body that is not a valid collection page.
    #[error("malformed response page from {path}: {source}")]
    Malformed {
        path: String,
        #[source]
        source: PageError,
    },

    /// A page pointed its nextLink at another origin; following it would leak the token.
    #[error("refusing @odata.nextLink to {origin}: it is not on the configured Graph origin {expected}, and the access token is never sent elsewhere")]
    ForeignNextLink { origin: String, expected: String },

    /// A caller asked for a URL outside the configured Graph origin.
    #[error("refusing to send a Graph request to {origin}: only the configured Graph origin {expected} receives the access token")]
    ForeignUrl { origin: String, expected: String },

    /// A caller-supplied request header is not a valid HTTP header.
    #[error("invalid request header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },

    /// Every attempt allowed by the retry policy failed.
    #[error("gave up on {path} after {attempts} attempts; last error: {last}")]
    Exhausted {
        attempts: u32,
        path: String,
        last: Box<GraphError>,
    },
}

impl GraphError {
    /// True when retrying later cannot help without someone changing something (credentials,
    /// permissions, licences, configuration). Exhausted retries are not permanent: the next
    /// pass may well succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Auth { .. }
            | Self::ForeignNextLink { .. }
            | Self::ForeignUrl { .. }
            | Self::InvalidHeader { .. } => true,
            Self::Status { status, .. } => !is_retryable_status(*status),
            Self::TokenResponse { .. }
            | Self::Transport { .. }
            | Self::Malformed { .. }
            | Self::Exhausted { .. } => false,
        }
    }

    /// The HTTP status behind this error, if there was one (for exhausted retries, the last).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Auth { status, .. } | Self::Status { status, .. } => Some(*status),
            Self::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

/// What the operator should do about a token endpoint error code.
fn aadsts_hint(code: u32) -> Option<&'static str> {
    let hint = match code {
        7000215 => "the client secret is wrong: check graph.client_secret (use the secret's Value, not its Secret ID)",
        7000222 => "the client secret has expired: create a new client secret in the app registration and update graph.client_secret",
        700016 => "the application was not found in the tenant: check graph.client_id and that an administrator granted consent to the app in this tenant",
        90002 => "the tenant was not found: check graph.tenant_id",
        900023 => "the tenant identifier is not valid: check graph.tenant_id",
        700027 | 50027 => "the certificate assertion was rejected: is the certificate uploaded to the app registration (Certificates & secrets), and does the private key belong to it?",
        700024 => "the client assertion is outside its validity window: check the server clock (NTP)",
        7000218 => "the request carried no client credential: configure graph.client_secret or a certificate",
        70011 | 1002012 => "the requested scope is invalid: check graph.token_scope (normally https://graph.microsoft.com/.default)",
        7000112 => "the application is disabled in the tenant: re-enable it in Entra ID (Enterprise applications)",
        _ => return None,
    };
    Some(hint)
}

fn auth_message(status: u16, aadsts: Option<u32>, error: &str, description: &str) -> String {
    let said = first_line(description);
    match aadsts {
        Some(code) => match aadsts_hint(code) {
            Some(hint) => format!(
                "token request rejected (HTTP {status}, AADSTS{code}): {hint} [Entra ID: {said}]"
            ),
            None => {
                format!("token request rejected (HTTP {status}, AADSTS{code}, {error}): {said}")
            }
        },
        None => format!("token request rejected (HTTP {status}, {error}): {said}"),
    }
}

/// What the operator should do about a Graph error status.
fn status_hint(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized even with a freshly fetched token: check the app registration's application permissions and admin consent",
        402 => "payment required: the Teams export APIs refuse this tenant without a billing model; set teams.model = \"A\" (security and compliance use, Microsoft 365 E5 licences, seeded capacity) or \"B\" (general use, metered) so that requests carry the `model` parameter, or set up billing for the app (https://learn.microsoft.com/graph/teams-licenses); not retried",
        403 => "missing permission or licence: grant the application permission with admin consent (AiEnterpriseInteraction.Read.All for Copilot; Chat.Read.All, ChannelMessage.Read.All, Team.ReadBasic.All, OnlineMeetingTranscript.Read.All or OnlineMeetingRecording.Read.All for Teams, the meeting ones also need an application access policy)",
        404 => "not found (user deleted or has no mailbox?)",
        405 => "method not allowed: this API is not available at this URL or API version",
        409 => "conflict",
        410 => "gone: the resource no longer exists",
        429 => "throttled by Graph",
        500..=599 => "Graph service error",
        _ => "unexpected HTTP status",
    }
}

fn status_message(status: u16, code: &str, message: &str, path: &str) -> String {
    let hint = status_hint(status);
    let mut out = format!("{hint}: HTTP {status} on {path}");
    match (code.is_empty(), message.is_empty()) {
        (true, true) => {}
        (false, true) => out.push_str(&format!(" ({code})")),
        (true, false) => out.push_str(&format!(": {}", first_line(message))),
        (false, false) => out.push_str(&format!(": {code}: {}", first_line(message))),
    }
    out
}

/// A transport failure, described without the URL (its query may hold skip tokens): the
/// kind of failure, then the chain of causes (e.g. "connection refused").
pub(crate) fn transport_error(url: &url::Url, err: reqwest::Error) -> GraphError {
    let err = err.without_url();
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "response body cut off or unreadable"
    } else {
        "request failed"
    };
    let mut detail = format!("{kind}: {err}");
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        detail.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    GraphError::Transport {
        host: url.host_str().unwrap_or("unknown host").to_owned(),
        path: url.path().to_owned(),
        detail: bounded(&detail),
    }
}

/// First line of a remote text, bounded, so one error stays one log line.
pub(crate) fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    bounded(line)
}

/// Bounds a remote text to `MAX_REMOTE_TEXT` characters (on a char boundary).
pub(crate) fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_REMOTE_TEXT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_message_names_code_and_action() {
        let e = GraphError::Auth {
            status: 401,
            aadsts: Some(7000215),
            error: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x".into(),
        };
        let s = e.to_string();
        assert!(s.contains("AADSTS7000215"), "{s}");
        assert!(s.contains("graph.client_secret"), "{s}");
        assert!(!s.contains("Trace ID"), "{s}");
        assert!(e.is_permanent());
        assert_eq!(e.status(), Some(401));
    }

    #[test]
    fn unknown_aadsts_shows_first_line() {
        let e = GraphError::Auth {
            status: 400,
            aadsts: Some(12345),
            error: "invalid_request".into(),
            description: "AADSTS12345: Something odd.\nsecond line".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("AADSTS12345") && s.contains("Something odd."),
            "{s}"
        );
        assert!(!s.contains("second line"), "{s}");
    }

    #[test]
    fn status_messages_say_what_to_do() {
        let mk = |status| GraphError::Status {
            status,
            code: "Code".into(),
            message: "msg".into(),
            path: "/v1.0/x".into(),
        };
        assert!(mk(403)
            .to_string()
            .contains("AiEnterpriseInteraction.Read.All"));
        assert!(mk(402).to_string().contains("`model` parameter"));
        assert!(mk(404).to_string().contains("user deleted"));
        assert!(mk(400).to_string().contains("msg"));
        assert!(mk(403).is_permanent());
        assert!(!mk(503).is_permanent());
        assert!(!mk(429).is_permanent());
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        let long = "é".repeat(MAX_REMOTE_TEXT + 10);
        let cut = bounded(&long);
        assert!(cut.ends_with("..."));
        assert_eq!(cut.chars().count(), MAX_REMOTE_TEXT + 3);
    }
}
