//! Graph's error envelope and request ids.
//!
//! Handlers return `GraphError`; the gate middleware renders it with the request's ids,
//! so every Graph error, from a handler, the auth check, the throttle or a fault, has the
//! same shape: `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use std::time::Duration;

use super::json::{render, Style, J};
use super::odata::ODataError;
use super::throttle::retry_after_value;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");

/// A Graph error response.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub(crate) struct GraphError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Retry-After header value, in (fractional) seconds.
    pub retry_after: Option<String>,
}

impl GraphError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// Teams export APIs without a billing model, on tenants that still require one.
    pub(crate) fn payment_required(message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::PAYMENT_REQUIRED, "PaymentRequired", message)
    }

    /// Directory objects use their own not-found code.
    pub(crate) fn resource_not_found(id: &str) -> GraphError {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        )
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> GraphError {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    pub(crate) fn throttled(wait: Duration) -> GraphError {
        GraphError {
            retry_after: Some(retry_after_value(wait)),
            ..GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests. Please retry after the time in the Retry-After header.",
            )
        }
    }

    pub(crate) fn server(status: u16, retry_after: Option<Duration>) -> GraphError {
        let (status, code, message) = match status {
            502 => (
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "The server received an invalid response from an upstream server.",
            ),
            503 => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry later.",
            ),
            504 => (
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "The server did not receive a timely response from an upstream server.",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "An internal server error occurred.",
            ),
        };
        GraphError {
            retry_after: retry_after.map(retry_after_value),
            ..GraphError::new(status, code, message)
        }
    }
}

impl From<ODataError> for GraphError {
    fn from(e: ODataError) -> Self {
        GraphError::bad_request(e.0)
    }
}

/// The handler's error travels in the response extensions to the gate, which renders
/// it with the request's ids.
impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The ids Graph puts in every response and error.
#[derive(Clone, Debug)]
pub(crate) struct RequestIds {
    pub request_id: String,
    pub client_request_id: String,
}

impl RequestIds {
    /// A fresh request id; the client's `client-request-id` is echoed when it sent one.
    pub(crate) fn from_headers(headers: &HeaderMap) -> RequestIds {
        let request_id = uuid::Uuid::new_v4().to_string();
        let client_request_id = headers
            .get(&CLIENT_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| request_id.clone(), str::to_owned);
        RequestIds {
            request_id,
            client_request_id,
        }
    }
}

/// Renders a pending `GraphError` and stamps the ids on any Graph response.
pub(crate) fn finish(mut resp: Response, ids: &RequestIds) -> Response {
    if let Some(err) = resp.extensions_mut().remove::<GraphError>() {
        resp = envelope(&err, ids);
    }
    let headers = resp.headers_mut();
    for (name, value) in [
        (REQUEST_ID, &ids.request_id),
        (CLIENT_REQUEST_ID, &ids.client_request_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    resp
}

fn envelope(err: &GraphError, ids: &RequestIds) -> Response {
    let body = J::obj(vec![(
        "error",
        J::obj(vec![
            ("code", J::str(err.code)),
            ("message", J::str(err.message.clone())),
            (
                "innerError",
                J::obj(vec![
                    (
                        "date",
                        J::str(Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()),
                    ),
                    ("request-id", J::str(ids.request_id.clone())),
                    ("client-request-id", J::str(ids.client_request_id.clone())),
                ]),
            ),
        ]),
    )]);
    let mut resp = (err.status, render(&body, &Style::COMPACT)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = err
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    resp
}
