//! The HTTP transport under the Azure SDK pipeline: the same reqwest client family (rustls with
//! the ring provider, webpki roots) as the Graph client.
//!
//! The SDK's own reqwest transport brings a second reqwest and the aws-lc crypto provider; two
//! rustls providers in one process make every `ClientConfig::builder()` (sqlx's TLS to
//! PostgreSQL among them) panic for want of a default. One TLS stack avoids that.

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::response::PinnedStream;
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Method, Request};
use futures::TryStreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// How long a connection attempt may take before the store counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub(crate) struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// `read_timeout` bounds the silence between bytes of one response, not a whole transfer
    /// (a 350 MB recording block upload must not time out on the total).
    pub(crate) fn new(read_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(read_timeout)
            // Storage does not redirect; following one could send a signed request elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ReqwestTransport { client })
    }
}

#[async_trait]
impl HttpClient for ReqwestTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut req = self
            .client
            .request(method(request.method()), request.url().clone());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = match request.body().clone() {
            Body::Bytes(bytes) => req.body(bytes),
            Body::SeekableStream(stream) => req.body(reqwest::Body::wrap_stream(stream)),
        };
        let rsp = req.send().await.map_err(transport_error)?;
        let status = rsp.status().as_u16().into();
        let headers = to_headers(rsp.headers());
        let body: PinnedStream = Box::pin(rsp.bytes_stream().map_err(|e| {
            Error::with_error(ErrorKind::Io, e.without_url(), "reading the response body")
        }));
        Ok(AsyncRawResponse::new(status, headers, body))
    }
}

/// Connection failures become `Connection` (the pipeline retries them, and the store reports
/// them as unreachable). The URL is dropped from the error: it carries the SAS signature.
fn transport_error(e: reqwest::Error) -> Error {
    let kind = if e.is_connect() || e.is_timeout() {
        ErrorKind::Connection
    } else {
        ErrorKind::Io
    };
    Error::with_error(kind, e.without_url(), "sending the request to the store")
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Delete => reqwest::Method::DELETE,
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Patch => reqwest::Method::PATCH,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        // Method is non-exhaustive; Blob Storage uses none of any later additions.
        other => {
            reqwest::Method::from_bytes(other.as_ref().as_bytes()).unwrap_or(reqwest::Method::GET)
        }
    }
}

fn to_headers(map: &reqwest::header::HeaderMap) -> Headers {
    map.iter()
        .filter_map(|(k, v)| {
            let value = v.to_str().ok()?;
            Some((
                HeaderName::from(k.as_str().to_owned()),
                HeaderValue::from(value.to_owned()),
            ))
        })
        .collect::<HashMap<_, _>>()
        .into()
}
