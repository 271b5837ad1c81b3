//! What Azure's answers mean for the archiver: every `azure_core::Error` becomes one outcome,
//! here and nowhere else.
//!
//! | answer | outcome |
//! |---|---|
//! | 409 BlobAlreadyExists, 412, 409 immutable on a create | the key is taken: compare hashes |
//! | 404 BlobNotFound | absent |
//! | 409 BlobImmutableDueToPolicy / LegalHold | `ImmutableDueTo*` (a change was refused) |
//! | 401 / 403, no token | `Auth`, with what to check |
//! | 429, 503 ServerBusy, 500 OperationTimedOut after retries | `Throttled` |
//! | connection failures, other 5xx, 404 ContainerNotFound | `Unavailable`: the window fails and its checkpoint stays |

use crate::archive::StoreError;
use azure_core::error::ErrorKind;
use azure_storage_blob::StorageError;

/// Outcome of a failed request, for the caller to act on.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A create-only write found the key taken.
    Exists,
    /// Nothing under the key.
    NotFound,
    Store(StoreError),
}

/// Context for messages: which store (URL without query), how it authenticates, and the
/// secret to scrub from anything the service echoes back.
pub(crate) struct ErrorContext<'a> {
    pub endpoint: &'a str,
    pub auth_hint: &'a str,
    pub secret: Option<&'a str>,
}

const BLOB_ALREADY_EXISTS: &str = "BlobAlreadyExists";
const IMMUTABLE_POLICY: &str = "BlobImmutableDueToPolicy";
const IMMUTABLE_HOLD: &str = "BlobImmutableDueToLegalHold";
const CONTAINER_NOT_FOUND: &str = "ContainerNotFound";

pub(crate) fn classify(
    op: &'static str,
    key: &str,
    error: azure_core::Error,
    ctx: &ErrorContext<'_>,
) -> Failure {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code.clone().unwrap_or_default();
            let message = service_message(error, ctx);
            http_failure(op, key, status, &code, &message, ctx)
        }
        ErrorKind::Credential => Failure::Store(StoreError::Auth(format!(
            "cannot obtain an Entra ID token for the storage account {}: {}. {}",
            ctx.endpoint,
            scrub(&error.to_string(), ctx.secret),
            ctx.auth_hint
        ))),
        _ => Failure::Store(unreachable(op, key, &chain(&error), ctx)),
    }
}

fn http_failure(
    op: &'static str,
    key: &str,
    status: u16,
    code: &str,
    message: &str,
    ctx: &ErrorContext<'_>,
) -> Failure {
    let creating = op == "create";
    match (status, code) {
        (409, BLOB_ALREADY_EXISTS) | (412, _) => Failure::Exists,
        // A create that hits an existing protected version: the name is taken all the same.
        (409, IMMUTABLE_POLICY | IMMUTABLE_HOLD) if creating => Failure::Exists,
        (409, IMMUTABLE_POLICY) => Failure::Store(StoreError::ImmutableDueToPolicy {
            op,
            key: key.to_string(),
        }),
        (409, IMMUTABLE_HOLD) => Failure::Store(StoreError::ImmutableDueToLegalHold {
            op,
            key: key.to_string(),
        }),
        (404, CONTAINER_NOT_FOUND) => Failure::Store(StoreError::Unavailable(format!(
            "container {} does not exist: create it (with version-level immutability) or fix store.container_url",
            ctx.endpoint
        ))),
        (404, _) => Failure::NotFound,
        (401 | 403, _) => Failure::Store(StoreError::Auth(format!(
            "{op} {key} refused by {} ({status} {code}: {message}). {}",
            ctx.endpoint, ctx.auth_hint
        ))),
        (429 | 503, _) | (500, "OperationTimedOut") => Failure::Store(StoreError::Throttled(format!(
            "{op} {key}: {status} {code} from {} after the configured retries (store.max_retries); \
             the window is retried on the next pass",
            ctx.endpoint
        ))),
        (500..=599, _) => Failure::Store(unreachable(op, key, &format!("{status} {code} {message}"), ctx)),
        _ => Failure::Store(StoreError::Rejected {
            op,
            key: key.to_string(),
            detail: format!("{status} {code}: {message}"),
        }),
    }
}

fn unreachable(op: &str, key: &str, cause: &str, ctx: &ErrorContext<'_>) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot reach the archive store at {} ({op} {key}): {}. Nothing is lost: checkpoints do \
         not advance past unstored records and the window is retried on the next pass",
        ctx.endpoint,
        scrub(cause, ctx.secret)
    ))
}

/// The service's own explanation (the `Message` of its XML error), first line only.
fn service_message(error: azure_core::Error, ctx: &ErrorContext<'_>) -> String {
    let text = StorageError::try_from(error)
        .ok()
        .and_then(|e| e.message)
        .unwrap_or_default();
    let first = text.lines().next().unwrap_or_default().trim().to_string();
    scrub(&first, ctx.secret)
}

/// The error and its causes; never holds a URL (the transport strips them).
fn chain(error: &azure_core::Error) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Removes the SAS signature (and the whole token) from text the service or a library echoes.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return text.to_string();
    };
    let mut out = text.replace(secret, "***");
    for part in secret.split('&') {
        if let Some(sig) = part.strip_prefix("sig=") {
            if sig.len() >= 4 {
                out = out.replace(sig, "***");
                if let Ok(decoded) = percent_encoding::percent_decode_str(sig).decode_utf8() {
                    out = out.replace(decoded.as_ref(), "***");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext<'static> {
        ErrorContext {
            endpoint: "https://acct.blob.core.windows.net/archive",
            auth_hint: "check store.sas_token",
            secret: Some("sv=1&sig=S3cr%2Bt"),
        }
    }

    fn http(op: &'static str, status: u16, code: &str) -> Failure {
        http_failure(op, "records/k.json", status, code, "msg", &ctx())
    }

    #[test]
    fn statuses_become_meanings() {
        assert!(matches!(
            http("create", 409, "BlobAlreadyExists"),
            Failure::Exists
        ));
        assert!(matches!(
            http("create", 412, "ConditionNotMet"),
            Failure::Exists
        ));
        assert!(matches!(
            http("create", 409, IMMUTABLE_POLICY),
            Failure::Exists
        ));
        assert!(matches!(
            http("delete", 409, IMMUTABLE_POLICY),
            Failure::Store(StoreError::ImmutableDueToPolicy { .. })
        ));
        assert!(matches!(
            http("delete", 409, IMMUTABLE_HOLD),
            Failure::Store(StoreError::ImmutableDueToLegalHold { .. })
        ));
        assert!(matches!(
            http("read", 404, "BlobNotFound"),
            Failure::NotFound
        ));
        assert!(matches!(
            http("read", 404, CONTAINER_NOT_FOUND),
            Failure::Store(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            http("create", 403, "AuthorizationPermissionMismatch"),
            Failure::Store(StoreError::Auth(_))
        ));
        assert!(matches!(
            http("create", 503, "ServerBusy"),
            Failure::Store(StoreError::Throttled(_))
        ));
        assert!(matches!(
            http("create", 500, "OperationTimedOut"),
            Failure::Store(StoreError::Throttled(_))
        ));
        assert!(matches!(
            http("create", 502, ""),
            Failure::Store(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            http("create", 400, "InvalidHeaderValue"),
            Failure::Store(StoreError::Rejected { .. })
        ));
    }

    #[test]
    fn sas_signatures_are_scrubbed() {
        let s = scrub("failed for ...&sig=S3cr%2Bt and S3cr+t", ctx().secret);
        assert!(!s.contains("S3cr"), "{s}");
    }
}
