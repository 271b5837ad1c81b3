//! A recording test double of Azure Blob Storage with version-level WORM: the subset of the
//! Blob REST API the archiver uses, served over real HTTP, enforcing the documented rules and
//! recording every request.
//!
//! Enforced, as Azure does (storage-notes.md): `If-None-Match: *` on Put Blob / Put Block List
//! fails with 409 BlobAlreadyExists when the name is taken; without it an existing blob is
//! silently replaced (a new version), which the double counts as an overwrite; Delete Blob and
//! an overwrite answer 409 BlobImmutableDueToPolicy / BlobImmutableDueToLegalHold while a
//! policy or hold is in force; a Locked policy can be extended, never shortened or unlocked.
//! Requests without a SAS signature get 403.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub blob: String,
    /// The `comp` query parameter ("block", "blocklist", "legalhold", "immutabilityPolicies", ...).
    pub comp: Option<String>,
    /// Lowercased header names.
    pub headers: BTreeMap<String, String>,
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A Put Blob or a Put Block List: the requests that create content.
    pub fn is_create(&self) -> bool {
        self.method == "PUT" && (self.comp.is_none() || self.comp.as_deref() == Some("blocklist"))
    }
}

#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub bytes: Bytes,
    pub metadata: BTreeMap<String, String>,
    pub until: Option<DateTime<Utc>>,
    pub mode: Option<String>,
    pub legal_hold: bool,
    etag: u64,
}

#[derive(Default)]
struct Inner {
    blobs: BTreeMap<String, StoredBlob>,
    blocks: HashMap<(String, String), Bytes>,
    log: Vec<Recorded>,
    overwrites: u64,
    etag: u64,
    /// Answer 503 ServerBusy to every request once this many creates succeeded.
    fail_after_creates: Option<usize>,
    creates: usize,
}

#[derive(Clone, Default)]
pub struct BlobDouble {
    inner: Arc<Mutex<Inner>>,
}

pub struct DoubleHandle {
    pub double: BlobDouble,
    /// `http://127.0.0.1:PORT/devstoreaccount1/archive`
    pub container_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DoubleHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const SAS: &str = "sv=2025-11-05&ss=b&srt=sco&sp=racwdlxi&sig=dGVzdC1zaWduYXR1cmU%3D";

pub async fn spawn() -> DoubleHandle {
    let double = BlobDouble::default();
    let app = Router::new()
        .route("/{account}/{container}", any(container))
        .route("/{account}/{container}/{*blob}", any(blob))
        .with_state(double.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind double");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    DoubleHandle {
        double,
        container_url: format!("http://{addr}/devstoreaccount1/archive"),
        task,
    }
}

impl BlobDouble {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    pub fn blobs(&self) -> BTreeMap<String, StoredBlob> {
        self.lock().blobs.clone()
    }

    pub fn overwrites(&self) -> u64 {
        self.lock().overwrites
    }

    pub fn fail_after_creates(&self, n: usize) {
        let mut g = self.lock();
        g.fail_after_creates = Some(g.creates + n);
    }

    pub fn recover(&self) {
        self.lock().fail_after_creates = None;
    }

    /// Plants a blob as if some other writer had stored it (no policy, no hold).
    pub fn plant(&self, key: &str, bytes: &[u8]) {
        let mut g = self.lock();
        g.etag += 1;
        let etag = g.etag;
        g.blobs.insert(
            key.to_string(),
            StoredBlob {
                bytes: Bytes::copy_from_slice(bytes),
                metadata: BTreeMap::new(),
                until: None,
                mode: None,
                legal_hold: false,
                etag,
            },
        );
    }
}

type Q = Query<HashMap<String, String>>;

async fn container(
    State(d): State<BlobDouble>,
    method: Method,
    Query(q): Q,
    headers: HeaderMap,
) -> Response {
    let rsp = container_inner(&d, &method, &q);
    record(&d, &method, "", &q, &headers, rsp.status());
    rsp
}

fn container_inner(d: &BlobDouble, method: &Method, q: &HashMap<String, String>) -> Response {
    if !q.contains_key("sig") {
        return error(StatusCode::FORBIDDEN, "AuthenticationFailed");
    }
    if busy(d) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy");
    }
    match (method.as_str(), q.get("comp").map(String::as_str)) {
        ("GET", Some("list")) => list(d, q.get("prefix").map(String::as_str).unwrap_or("")),
        ("GET" | "HEAD", None) => {
            let mut h = HeaderMap::new();
            h.insert(
                "x-ms-immutable-storage-with-versioning-enabled",
                HeaderValue::from_static("true"),
            );
            h.insert("etag", HeaderValue::from_static("\"0x1\""));
            h.insert(
                "last-modified",
                HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
            );
            (StatusCode::OK, h).into_response()
        }
        _ => error(StatusCode::BAD_REQUEST, "UnsupportedHttpVerb"),
    }
}

fn list(d: &BlobDouble, prefix: &str) -> Response {
    let g = d.lock();
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="archive"><Blobs>"#,
    );
    for (name, b) in g
        .blobs
        .range(prefix.to_string()..)
        .take_while(|(n, _)| n.starts_with(prefix))
    {
        xml.push_str(&format!(
            "<Blob><Name>{}</Name><Properties><Content-Length>{}</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>",
            escape(name),
            b.bytes.len()
        ));
    }
    xml.push_str("</Blobs><NextMarker /></EnumerationResults>");
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/xml"));
    (StatusCode::OK, h, xml).into_response()
}

async fn blob(
    State(d): State<BlobDouble>,
    method: Method,
    Path((_account, _container, name)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rsp = blob_inner(&d, &method, &name, &q, &headers, body);
    record(&d, &method, &name, &q, &headers, rsp.status());
    rsp
}

fn blob_inner(
    d: &BlobDouble,
    method: &Method,
    name: &str,
    q: &HashMap<String, String>,
    h: &HeaderMap,
    body: Bytes,
) -> Response {
    if !q.contains_key("sig") {
        return error(StatusCode::FORBIDDEN, "AuthenticationFailed");
    }
    if busy(d) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "ServerBusy");
    }
    match (method.as_str(), q.get("comp").map(String::as_str)) {
        ("PUT", None) => store(d, name, h, body),
        ("PUT", Some("block")) => {
            let id = q.get("blockid").cloned().unwrap_or_default();
            d.lock().blocks.insert((name.to_string(), id), body);
            (StatusCode::CREATED, etag_headers(0)).into_response()
        }
        ("PUT", Some("blocklist")) => commit_blocks(d, name, h, &body),
        ("PUT", Some("legalhold")) => set_hold(d, name, h),
        ("PUT", Some("immutabilityPolicies")) => set_policy(d, name, h),
        ("GET", None) => read(d, name, h, true),
        ("HEAD", None) => read(d, name, h, false),
        ("DELETE", None) => delete(d, name),
        _ => error(StatusCode::BAD_REQUEST, "UnsupportedQueryParameter"),
    }
}

fn busy(d: &BlobDouble) -> bool {
    let g = d.lock();
    g.fail_after_creates.is_some_and(|n| g.creates >= n)
}

fn protected(b: &StoredBlob) -> Option<&'static str> {
    if b.legal_hold {
        Some("BlobImmutableDueToLegalHold")
    } else if b.until.is_some_and(|u| u > Utc::now()) {
        Some("BlobImmutableDueToPolicy")
    } else {
        None
    }
}

fn commit_blocks(d: &BlobDouble, name: &str, h: &HeaderMap, body: &[u8]) -> Response {
    let text = String::from_utf8_lossy(body);
    let mut content = Vec::new();
    for part in text.split('<').filter_map(|p| p.split_once('>')) {
        let (tag, value) = part;
        if matches!(tag, "Latest" | "Uncommitted" | "Committed") {
            let key = (name.to_string(), value.to_string());
            let Some(block) = d.lock().blocks.get(&key).cloned() else {
                return error(StatusCode::BAD_REQUEST, "InvalidBlockList");
            };
            content.extend_from_slice(&block);
        }
    }
    store(d, name, h, Bytes::from(content))
}

fn store(d: &BlobDouble, name: &str, h: &HeaderMap, bytes: Bytes) -> Response {
    let mut g = d.lock();
    if let Some(existing) = g.blobs.get(name) {
        if header(h, "if-none-match") == Some("*") {
            return error(StatusCode::CONFLICT, "BlobAlreadyExists");
        }
        if let Some(code) = protected(existing) {
            return error(StatusCode::CONFLICT, code);
        }
        g.overwrites += 1;
    }
    let metadata = h
        .iter()
        .filter_map(|(k, v)| {
            let k = k.as_str().strip_prefix("x-ms-meta-")?;
            Some((k.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let until = header(h, "x-ms-immutability-policy-until-date").and_then(parse_date);
    g.etag += 1;
    g.creates += 1;
    let etag = g.etag;
    g.blobs.insert(
        name.to_string(),
        StoredBlob {
            bytes,
            metadata,
            until,
            // The SDK sends the lowercase values of the current service spec; Azure ignores case.
            mode: header(h, "x-ms-immutability-policy-mode").map(str::to_ascii_lowercase),
            legal_hold: header(h, "x-ms-legal-hold") == Some("true"),
            etag,
        },
    );
    (StatusCode::CREATED, etag_headers(etag)).into_response()
}

fn set_hold(d: &BlobDouble, name: &str, h: &HeaderMap) -> Response {
    let mut g = d.lock();
    let Some(b) = g.blobs.get_mut(name) else {
        return error(StatusCode::NOT_FOUND, "BlobNotFound");
    };
    b.legal_hold = header(h, "x-ms-legal-hold") == Some("true");
    let mut rh = HeaderMap::new();
    rh.insert(
        "x-ms-legal-hold",
        HeaderValue::from_static(if b.legal_hold { "true" } else { "false" }),
    );
    (StatusCode::OK, rh).into_response()
}

fn set_policy(d: &BlobDouble, name: &str, h: &HeaderMap) -> Response {
    let mut g = d.lock();
    let Some(b) = g.blobs.get_mut(name) else {
        return error(StatusCode::NOT_FOUND, "BlobNotFound");
    };
    let Some(until) = header(h, "x-ms-immutability-policy-until-date").and_then(parse_date) else {
        return error(StatusCode::BAD_REQUEST, "InvalidHeaderValue");
    };
    let mode = header(h, "x-ms-immutability-policy-mode")
        .unwrap_or("unlocked")
        .to_ascii_lowercase();
    if b.mode.as_deref() == Some("locked")
        && (mode != "locked" || b.until.is_some_and(|u| until < u))
    {
        return error(StatusCode::CONFLICT, "ImmutabilityPolicyCannotBeShortened");
    }
    b.until = Some(until);
    b.mode = Some(mode);
    StatusCode::OK.into_response()
}

fn read(d: &BlobDouble, name: &str, h: &HeaderMap, with_body: bool) -> Response {
    let g = d.lock();
    let Some(b) = g.blobs.get(name) else {
        return error(StatusCode::NOT_FOUND, "BlobNotFound");
    };
    let total = b.bytes.len();
    let range = header(h, "x-ms-range")
        .or(header(h, "range"))
        .and_then(|r| parse_range(r, total));
    let mut rh = etag_headers(b.etag);
    rh.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
    rh.insert(
        "x-ms-legal-hold",
        HeaderValue::from_static(if b.legal_hold { "true" } else { "false" }),
    );
    if let Some(u) = b.until {
        insert(
            &mut rh,
            "x-ms-immutability-policy-until-date",
            &u.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        );
    }
    if let Some(m) = &b.mode {
        insert(&mut rh, "x-ms-immutability-policy-mode", m);
    }
    for (k, v) in &b.metadata {
        insert(&mut rh, &format!("x-ms-meta-{k}"), v);
    }
    let (status, body) = match range {
        Some((start, end)) if total > 0 => {
            insert(
                &mut rh,
                "content-range",
                &format!("bytes {start}-{end}/{total}"),
            );
            (StatusCode::PARTIAL_CONTENT, b.bytes.slice(start..=end))
        }
        _ => (StatusCode::OK, b.bytes.clone()),
    };
    insert(&mut rh, "content-length", &body.len().to_string());
    if with_body {
        (status, rh, body).into_response()
    } else {
        (status, rh).into_response()
    }
}

fn delete(d: &BlobDouble, name: &str) -> Response {
    let mut g = d.lock();
    let Some(b) = g.blobs.get(name) else {
        return error(StatusCode::NOT_FOUND, "BlobNotFound");
    };
    if let Some(code) = protected(b) {
        return error(StatusCode::CONFLICT, code);
    }
    g.blobs.remove(name);
    StatusCode::ACCEPTED.into_response()
}

fn record(
    d: &BlobDouble,
    method: &Method,
    blob: &str,
    q: &HashMap<String, String>,
    h: &HeaderMap,
    status: StatusCode,
) {
    let headers = h
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    d.lock().log.push(Recorded {
        method: method.to_string(),
        blob: blob.to_string(),
        comp: q.get("comp").cloned(),
        headers,
        status: status.as_u16(),
    });
}

fn error(status: StatusCode, code: &'static str) -> Response {
    let mut h = HeaderMap::new();
    h.insert("x-ms-error-code", HeaderValue::from_static(code));
    h.insert("content-type", HeaderValue::from_static("application/xml"));
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{code} (test double)</Message></Error>"#
    );
    (status, h, body).into_response()
}

fn etag_headers(etag: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    insert(&mut h, "etag", &format!("\"0x{etag:X}\""));
    h.insert(
        "last-modified",
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    h.insert(
        "x-ms-request-server-encrypted",
        HeaderValue::from_static("true"),
    );
    h
}

fn insert(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        axum::http::HeaderName::try_from(name),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn parse_range(r: &str, total: usize) -> Option<(usize, usize)> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end: usize = if b.is_empty() {
        total.checked_sub(1)?
    } else {
        b.parse().ok()?
    };
    (start < total).then(|| (start, end.min(total - 1)))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
