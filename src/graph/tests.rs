//! End-to-end tests of the client against a small axum server on 127.0.0.1 that plays Graph
//! and its token endpoint (real HTTP; nothing in reqwest is mocked).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::{HeaderMap as AxumHeaders, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::SecretString;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
const SECRET: &str = "s3cr3t~Value.of-the-Secret";
const DEFAULT_PAGE: &str = r#"{"value":[{"id":"1"}]}"#;

/// One scripted answer of the fake Graph.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn ok(body: &str) -> Self {
        Self::status(200, body)
    }

    fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn graph_error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({"error": {"code": code, "message": message,
            "innerError": {"request-id": "r", "date": "2024-11-15T20:16:41"}}});
        Self::status(status, &body.to_string())
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::IM_A_TEAPOT);
        let mut response = (status, self.body).into_response();
        response.headers_mut().insert(
            "content-type",
            axum::http::HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// A request the fake Graph saw.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    at: Instant,
    user_agent: String,
    prefer: Option<String>,
}

/// The fake Graph and token endpoint.
#[derive(Default)]
struct Fake {
    token_lifetime_s: AtomicU64,
    token_down: AtomicBool,
    token_calls: AtomicU64,
    issued: Mutex<HashMap<String, Instant>>,
    token_forms: Mutex<Vec<HashMap<String, String>>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    hits: Mutex<Vec<Hit>>,
}

impl Fake {
    fn script(&self, path: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .expect("lock")
            .insert(path.to_owned(), replies.into());
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        let hits = self.hits.lock().expect("lock");
        hits.iter().filter(|h| h.path == path).cloned().collect()
    }

    fn token_calls(&self) -> u64 {
        self.token_calls.load(Ordering::SeqCst)
    }

    fn token_valid(&self, token: &str) -> bool {
        let issued = self.issued.lock().expect("lock");
        issued.get(token).is_some_and(|exp| Instant::now() < *exp)
    }
}

async fn token_endpoint(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = fake.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    fake.token_forms.lock().expect("lock").push(form.clone());
    if fake.token_down.load(Ordering::SeqCst) {
        let body = r#"{"error":"temporarily_unavailable","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}"#;
        return Reply::status(503, body).into_response();
    }
    assert_eq!(uri.path(), format!("/{TENANT}/oauth2/v2.0/token"));
    let accepted = match form.get("client_secret") {
        Some(secret) => secret == SECRET,
        None => form.contains_key("client_assertion"),
    };
    if !accepted {
        // Echoes what it got, as a hostile endpoint might: the client must scrub it.
        let sent = form.get("client_secret").cloned().unwrap_or_default();
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret provided ({sent}). Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: 1\r\nCorrelation ID: 2"),
            "error_codes": [7000215],
        });
        return Reply::status(401, &body.to_string()).into_response();
    }
    let lifetime = fake.token_lifetime_s.load(Ordering::SeqCst);
    let token = format!("token-{n}");
    fake.issued.lock().expect("lock").insert(
        token.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    let body =
        serde_json::json!({"token_type": "Bearer", "expires_in": lifetime, "access_token": token});
    Reply::ok(&body.to_string()).into_response()
}

async fn graph_endpoint(State(fake): State<Arc<Fake>>, uri: Uri, headers: AxumHeaders) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = uri.path().to_owned();
    fake.hits.lock().expect("lock").push(Hit {
        path: path.clone(),
        at: Instant::now(),
        user_agent: header("user-agent").unwrap_or_default(),
        prefer: header("prefer"),
    });
    let authorized = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .is_some_and(|t| fake.token_valid(&t));
    if !authorized {
        return Reply::graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired",
        )
        .into_response();
    }
    let scripted = fake
        .script
        .lock()
        .expect("lock")
        .get_mut(&path)
        .and_then(VecDeque::pop_front);
    scripted
        .unwrap_or_else(|| Reply::ok(DEFAULT_PAGE))
        .into_response()
}

/// Starts the fake on 127.0.0.1:0; it lives as long as the test's runtime.
async fn start_fake(token_lifetime_s: u64) -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    fake.token_lifetime_s
        .store(token_lifetime_s, Ordering::SeqCst);
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .fallback(graph_endpoint)
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, addr)
}

fn url(text: &str) -> Url {
    Url::parse(text).expect("test URL")
}

fn config(graph: SocketAddr, authority: SocketAddr, credential: Credential) -> GraphClientConfig {
    GraphClientConfig {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        credential,
        base_url: url(&format!("http://{graph}/v1.0")),
        authority: url(&format!("http://{authority}")),
        token_scope: DEFAULT_TOKEN_SCOPE.into(),
        retry: RetryConfig {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        request_timeout: Duration::from_secs(5),
        budgets: Budgets {
            interactions_rps: 1000.0,
            messages_rps: 1000.0,
            other_rps: 1000.0,
            ..Budgets::default()
        },
    }
}

fn secret() -> Credential {
    Credential::Secret(SecretString::from(SECRET))
}

fn new_client(addr: SocketAddr) -> GraphClient {
    GraphClient::new(config(addr, addr, secret())).expect("client")
}

fn endpoint_url(addr: SocketAddr, path: &str) -> Url {
    url(&format!("http://{addr}{path}"))
}

#[tokio::test]
async fn page_records_are_byte_exact_over_http() {
    let (fake, addr) = start_fake(3600).await;
    let body = format!(
        "{{\r\n \"@odata.context\" : \"x\",\r\n\t\"value\" :[ {{\"id\":\"1\",  \"t\":\"caf\\u00e9 }} \\\" {{\" ,\"n\":{{\"a\":[1, {{\"b\" : \"}}\"}}]}}}}\r\n ,\r\n\t{{ \"id\" : \"2\", \"raw\":\"naïve 日本語\",\"unknownFutureField\":{{}} }}],\r\n\"@odata.nextLink\":\"http://{addr}/v1.0/x?$skiptoken=abc\"}}"
    );
    fake.script("/v1.0/x", vec![Reply::ok(&body)]);
    let client = new_client(addr);
    let headers = [("Prefer", "include-unknown-enum-members".to_owned())];
    let page = client
        .get_page(
            &endpoint_url(addr, "/v1.0/x?$top=2"),
            Endpoint::Messages,
            &headers,
        )
        .await
        .expect("page");
    assert_eq!(page.records.len(), 2);
    assert_eq!(
        page.records[0].bytes.as_ref(),
        "{\"id\":\"1\",  \"t\":\"caf\\u00e9 } \\\" {\" ,\"n\":{\"a\":[1, {\"b\" : \"}\"}]}}"
            .as_bytes()
    );
    assert_eq!(
        page.records[1].bytes.as_ref(),
        "{ \"id\" : \"2\", \"raw\":\"naïve 日本語\",\"unknownFutureField\":{} }".as_bytes()
    );
    assert_eq!(
        page.next_link,
        Some(endpoint_url(addr, "/v1.0/x?$skiptoken=abc"))
    );
    let hit = &fake.hits("/v1.0/x")[0];
    assert!(
        hit.user_agent.starts_with("m365-archiver/"),
        "{}",
        hit.user_agent
    );
    assert_eq!(hit.prefer.as_deref(), Some("include-unknown-enum-members"));
}

#[tokio::test]
async fn fractional_retry_after_pauses_every_request() {
    let (fake, addr) = start_fake(3600).await;
    fake.script(
        "/v1.0/a",
        vec![
            Reply::graph_error(429, "TooManyRequests", "slow down").header("Retry-After", "0.45"),
            Reply::ok(DEFAULT_PAGE),
        ],
    );
    let client = new_client(addr);
    let a = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .get_page(&endpoint_url(addr, "/v1.0/a"), Endpoint::Interactions, &[])
                .await
        })
    };
    // Wait until the throttle has been seen and the pause set, then start a second request.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().paused_ms == 0 {
        assert!(Instant::now() < deadline, "no pause was set");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let b = client
        .get_page(&endpoint_url(addr, "/v1.0/b"), Endpoint::Messages, &[])
        .await;
    assert!(b.is_ok());
    assert!(a.await.expect("join").is_ok());

    let throttled_at = fake.hits("/v1.0/a")[0].at;
    let a_retry = fake.hits("/v1.0/a")[1].at;
    let b_sent = fake.hits("/v1.0/b")[0].at;
    assert!(
        a_retry - throttled_at >= Duration::from_millis(430),
        "{:?}",
        a_retry - throttled_at
    );
    assert!(
        b_sent - throttled_at >= Duration::from_millis(430),
        "{:?}",
        b_sent - throttled_at
    );
    let stats = client.stats();
    assert_eq!(stats.throttled, 1);
    assert_eq!(stats.retries, 1);
    assert!(stats.paused_ms >= 400, "{}", stats.paused_ms);
    assert_eq!(stats.by_status.get(&429), Some(&1));
}

#[tokio::test]
async fn server_errors_then_success_counts_retries() {
    let (fake, addr) = start_fake(3600).await;
    fake.script(
        "/v1.0/x",
        vec![
            Reply::graph_error(500, "InternalServerError", "oops"),
            Reply::status(502, "<html>Bad Gateway</html>"),
            Reply::graph_error(503, "ServiceUnavailable", "busy"),
            Reply::ok(DEFAULT_PAGE),
        ],
    );
    let client = new_client(addr);
    let page = client
        .get_page(&endpoint_url(addr, "/v1.0/x"), Endpoint::Other, &[])
        .await
        .expect("page after retries");
    assert_eq!(page.records.len(), 1);
    assert_eq!(fake.hits("/v1.0/x").len(), 4);
    let stats = client.stats();
    assert_eq!((stats.requests, stats.retries, stats.throttled), (4, 3, 0));
    assert_eq!(stats.by_status.get(&200), Some(&1));
}

#[tokio::test]
async fn attempts_exhausted() {
    let (fake, addr) = start_fake(3600).await;
    let busy = Reply::graph_error(504, "GatewayTimeout", "slow");
    fake.script("/v1.0/x", vec![busy; 10]);
    let client = new_client(addr);
    let err = client
        .get_page(
            &endpoint_url(addr, "/v1.0/x?$skiptoken=SKIPSECRET"),
            Endpoint::Other,
            &[],
        )
        .await
        .expect_err("must give up");
    assert!(
        matches!(&err, GraphError::Exhausted { attempts: 4, path, .. } if path == "/v1.0/x"),
        "{err:?}"
    );
    assert!(!err.is_permanent());
    assert_eq!(err.status(), Some(504));
    assert!(!err.to_string().contains("SKIPSECRET"), "{err}");
    assert_eq!(fake.hits("/v1.0/x").len(), 4);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (fake, addr) = start_fake(3600).await;
    let client = new_client(addr);
    let cases = [
        (403, "Forbidden", "AiEnterpriseInteraction.Read.All"),
        (402, "PaymentRequired", "`model` parameter"),
        (404, "NotFound", "user deleted"),
        (400, "BadRequest", "Invalid filter clause"),
        (409, "Conflict", "conflict"),
    ];
    for (status, code, expected) in cases {
        let path = format!("/v1.0/s{status}");
        fake.script(
            &path,
            vec![Reply::graph_error(status, code, "Invalid filter clause")],
        );
        let target = endpoint_url(addr, &format!("{path}?$skiptoken=SKIPSECRET"));
        let err = client
            .get_page(&target, Endpoint::Interactions, &[])
            .await
            .expect_err("error status");
        let GraphError::Status {
            status: got,
            code: got_code,
            path: got_path,
            ..
        } = &err
        else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(
            (*got, got_code.as_str(), got_path.as_str()),
            (status, code, path.as_str())
        );
        let text = err.to_string();
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("SKIPSECRET"), "{text}");
        assert!(err.is_permanent());
        assert_eq!(fake.hits(&path).len(), 1, "{status} was retried");
    }
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_once() {
    let (fake, addr) = start_fake(3600).await;
    let expired = Reply::graph_error(401, "InvalidAuthenticationToken", "expired");
    fake.script("/v1.0/once", vec![expired.clone(), Reply::ok(DEFAULT_PAGE)]);
    fake.script("/v1.0/twice", vec![expired.clone(), expired]);
    let client = new_client(addr);

    client
        .get_page(&endpoint_url(addr, "/v1.0/once"), Endpoint::Other, &[])
        .await
        .expect("fresh token works");
    assert_eq!(fake.token_calls(), 2);
    assert_eq!(fake.hits("/v1.0/once").len(), 2);

    let err = client
        .get_page(&endpoint_url(addr, "/v1.0/twice"), Endpoint::Other, &[])
        .await
        .expect_err("second 401 is final");
    assert_eq!(err.status(), Some(401));
    assert!(err.is_permanent());
    assert_eq!(fake.token_calls(), 3);
    assert_eq!(fake.hits("/v1.0/twice").len(), 2);
}

#[tokio::test]
async fn token_is_cached_and_refreshed_before_expiry() {
    let (fake, addr) = start_fake(3600).await;
    let client = new_client(addr);
    for _ in 0..5 {
        client
            .get_bytes(&endpoint_url(addr, "/v1.0/x"), Endpoint::Other, &[])
            .await
            .expect("body");
    }
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(client.stats().token_requests, 1);

    // 2 s tokens: refresh once less than a quarter (0.5 s) is left.
    let (fake, addr) = start_fake(2).await;
    let client = new_client(addr);
    let target = endpoint_url(addr, "/v1.0/x");
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("body");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("body");
    assert_eq!(fake.token_calls(), 1, "refreshed too early");
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("body");
    assert_eq!(fake.token_calls(), 2, "not refreshed");
    // No request ever went out with an expired token.
    assert_eq!(client.stats().by_status.get(&401), None);
}

#[tokio::test]
async fn failed_refresh_keeps_the_valid_token() {
    // 4 s tokens: refresh due at 3 s; still usable until 3.5 s.
    let (fake, addr) = start_fake(4).await;
    let client = new_client(addr);
    let target = endpoint_url(addr, "/v1.0/x");
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("body");
    tokio::time::sleep(Duration::from_millis(3050)).await;
    fake.token_down.store(true, Ordering::SeqCst);
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("old token still serves");
    assert_eq!(fake.token_calls(), 1 + 4, "one full retry cycle");
    client
        .get_bytes(&target, Endpoint::Other, &[])
        .await
        .expect("old token still serves");
    assert_eq!(fake.token_calls(), 5, "the next refresh is postponed");
    assert_eq!(client.stats().by_status.get(&401), None);
    // An explicit check still reports the outage.
    let err = client
        .check_credentials()
        .await
        .expect_err("token endpoint down");
    assert!(
        matches!(err, GraphError::Exhausted { attempts: 4, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let (fake, addr) = start_fake(3600).await;
    let client = new_client(addr);
    let target = endpoint_url(addr, "/v1.0/x");
    let requests = (0..8).map(|_| client.get_bytes(&target, Endpoint::Other, &[]));
    for result in futures::future::join_all(requests).await {
        result.expect("body");
    }
    assert_eq!(fake.token_calls(), 1);
}

#[tokio::test]
async fn wrong_secret_is_a_clear_auth_error_without_the_secret() {
    let (fake, addr) = start_fake(3600).await;
    let wrong = "Wr0ng~SecretValue-xyz";
    let cfg = config(addr, addr, Credential::Secret(SecretString::from(wrong)));
    let client = GraphClient::new(cfg).expect("client");
    let err = client.check_credentials().await.expect_err("wrong secret");
    assert!(
        matches!(
            &err,
            GraphError::Auth {
                status: 401,
                aadsts: Some(7000215),
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(text.contains("graph.client_secret"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!format!("{err:?}").contains(wrong));
    assert!(err.is_permanent());

    // A Graph call with that secret fails the same way, without retrying the token request.
    let err = client
        .get_page(&endpoint_url(addr, "/v1.0/x"), Endpoint::Other, &[])
        .await
        .expect_err("wrong secret");
    assert_eq!(err.status(), Some(401));
    assert_eq!(fake.token_calls(), 2);
    assert!(fake.hits("/v1.0/x").is_empty());

    client_ok(addr).await;
}

async fn client_ok(addr: SocketAddr) {
    new_client(addr)
        .check_credentials()
        .await
        .expect("right secret");
}

#[tokio::test]
async fn unreachable_token_endpoint_names_the_host() {
    let (_, graph) = start_fake(3600).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut cfg = config(graph, closed, secret());
    cfg.retry.max_attempts = 2;
    let client = GraphClient::new(cfg).expect("client");
    let err = client.check_credentials().await.expect_err("unreachable");
    let GraphError::Exhausted {
        attempts: 2, last, ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert!(matches!(**last, GraphError::Transport { .. }), "{last:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(!err.to_string().contains(SECRET));
    assert_eq!(client.stats().token_requests, 2);
}

#[tokio::test]
async fn malformed_page_is_retried() {
    let (fake, addr) = start_fake(3600).await;
    fake.script(
        "/v1.0/x",
        vec![
            Reply::ok(r#"{"value":[{"id":"1"},{"id""#),
            Reply::ok(DEFAULT_PAGE),
        ],
    );
    fake.script("/v1.0/bad", vec![Reply::ok("<html>oops</html>"); 10]);
    let client = new_client(addr);
    let page = client
        .get_page(&endpoint_url(addr, "/v1.0/x"), Endpoint::Interactions, &[])
        .await
        .expect("retried");
    assert_eq!(page.records.len(), 1);
    assert_eq!(client.stats().malformed_pages, 1);

    let err = client
        .get_page(
            &endpoint_url(addr, "/v1.0/bad"),
            Endpoint::Interactions,
            &[],
        )
        .await
        .expect_err("always malformed");
    let GraphError::Exhausted { last, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert!(matches!(**last, GraphError::Malformed { .. }), "{last:?}");
    assert!(!err.to_string().contains("oops"), "{err}");
    assert_eq!(client.stats().malformed_pages, 5);
}

/// A server that cuts the first response body mid-stream, then answers properly.
async fn start_cutting_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for n in 0..4 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => request.extend_from_slice(&buf[..read]),
                }
            }
            let response = if n == 0 {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":[{\"id\"".to_owned()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{DEFAULT_PAGE}",
                    DEFAULT_PAGE.len()
                )
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    addr
}

#[tokio::test]
async fn body_cut_mid_stream_is_retried() {
    let (_, authority) = start_fake(3600).await;
    let graph = start_cutting_server().await;
    let client = GraphClient::new(config(graph, authority, secret())).expect("client");
    let page = client
        .get_page(&endpoint_url(graph, "/v1.0/x"), Endpoint::Messages, &[])
        .await
        .expect("retried after cut");
    assert_eq!(page.records.len(), 1);
    let stats = client.stats();
    assert_eq!(
        (stats.transport_errors, stats.retries, stats.requests),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn foreign_next_links_and_urls_are_refused() {
    let (fake, addr) = start_fake(3600).await;
    let other_port = format!(
        "http://127.0.0.1:{}/v1.0/x?$skiptoken=SKIPSECRET",
        addr.port() + 1
    );
    let links = [
        "https://evil.example.com/v1.0/x?$skiptoken=SKIPSECRET",
        &other_port,
        "https://127.0.0.1/v1.0/x?$skiptoken=SKIPSECRET",
    ];
    let client = new_client(addr);
    for (i, link) in links.iter().enumerate() {
        let path = format!("/v1.0/l{i}");
        let body = serde_json::json!({"value": [], "@odata.nextLink": link});
        fake.script(&path, vec![Reply::ok(&body.to_string())]);
        let err = client
            .get_page(&endpoint_url(addr, &path), Endpoint::Other, &[])
            .await
            .expect_err("foreign link");
        assert!(matches!(err, GraphError::ForeignNextLink { .. }), "{err:?}");
        assert!(err.is_permanent());
        assert!(!err.to_string().contains("SKIPSECRET"), "{err}");
        assert_eq!(fake.hits(&path).len(), 1, "retried");
    }
    let err = client
        .get_bytes(
            &url("https://evil.example.com/v1.0/x"),
            Endpoint::Other,
            &[],
        )
        .await
        .expect_err("foreign url");
    assert!(matches!(err, GraphError::ForeignUrl { .. }), "{err:?}");
    assert_eq!(client.stats().requests, 3);
}

#[tokio::test]
async fn rate_budget_spaces_requests() {
    let (_, addr) = start_fake(3600).await;
    let mut cfg = config(addr, addr, secret());
    cfg.budgets.messages_rps = 50.0;
    let client = GraphClient::new(cfg).expect("client");
    client.check_credentials().await.expect("token");
    let target = endpoint_url(addr, "/v1.0/x");
    let started = Instant::now();
    let requests = (0..20).map(|_| client.get_bytes(&target, Endpoint::Messages, &[]));
    for result in futures::future::join_all(requests).await {
        result.expect("body");
    }
    // 19 gaps of 20 ms after the first request.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn configuration_is_checked() {
    let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
    let mut cfg = config(addr, addr, secret());
    cfg.base_url = url("http://graph.example.com/v1.0");
    assert!(matches!(GraphClient::new(cfg), Err(GraphError::Config(_))));
    let mut cfg = config(addr, addr, secret());
    cfg.budgets.other_rps = 0.0;
    assert!(matches!(GraphClient::new(cfg), Err(GraphError::Config(_))));
    let mut cfg = config(addr, addr, secret());
    cfg.retry.max_attempts = 0;
    assert!(matches!(GraphClient::new(cfg), Err(GraphError::Config(_))));
    let cfg = config(addr, addr, Credential::Secret(SecretString::from("")));
    assert!(matches!(GraphClient::new(cfg), Err(GraphError::Config(_))));
    let mut cfg = config(addr, addr, secret());
    cfg.tenant_id = "../common".into();
    assert!(matches!(GraphClient::new(cfg), Err(GraphError::Config(_))));
    let cfg = config(addr, addr, secret());
    let client = GraphClient::new(cfg).expect("loopback http is allowed");
    assert!(!format!("{client:?}").contains(SECRET));
    let debug = format!("{:?}", config(addr, addr, secret()));
    assert!(!debug.contains(SECRET), "{debug}");
}

/// An RSA key (PKCS#8 PEM) and a self-signed certificate for it.
fn certificate() -> (String, SecretString) {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string();
    let key_pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
        .expect("rcgen key");
    let cert = rcgen::CertificateParams::new(vec!["m365-archiver-test".to_owned()])
        .expect("params")
        .self_signed(&key_pair)
        .expect("certificate");
    (cert.pem(), SecretString::from(key_pem))
}

/// Verifies a captured assertion with the certificate's public key; returns its claims.
fn verify_assertion(
    jwt: &str,
    cert_der: &[u8],
    alg: jsonwebtoken::Algorithm,
    token_url: &str,
) -> (jsonwebtoken::Header, serde_json::Value) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).expect("cert");
    // For RSA the subjectPublicKey bit string is the PKCS#1 RSAPublicKey.
    let key = jsonwebtoken::DecodingKey::from_rsa_der(&cert.public_key().subject_public_key.data);
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .expect("assertion verifies with the certificate's key");
    (data.header, data.claims)
}

#[tokio::test]
async fn certificate_assertions_verify_in_both_forms() {
    let (fake, addr) = start_fake(3600).await;
    let (cert_pem, key_pem) = certificate();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
    let der = pem.contents;
    let token_url = format!("http://{addr}/{TENANT}/oauth2/v2.0/token");

    for form in [AssertionForm::Ps256X5tS256, AssertionForm::Rs256X5t] {
        let credential = Credential::Certificate {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            form,
        };
        let client = GraphClient::new(config(addr, addr, credential)).expect("client");
        client
            .check_credentials()
            .await
            .expect("assertion accepted");
        let sent = fake.token_forms.lock().expect("lock").pop().expect("form");
        assert_eq!(
            sent.get("client_assertion_type").map(String::as_str),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert!(!sent.contains_key("client_secret"));
        assert_eq!(sent.get("client_id").map(String::as_str), Some(CLIENT_ID));
        let jwt = sent.get("client_assertion").expect("assertion");

        let (alg, thumb_ok) = match form {
            AssertionForm::Ps256X5tS256 => (jsonwebtoken::Algorithm::PS256, true),
            AssertionForm::Rs256X5t => (jsonwebtoken::Algorithm::RS256, false),
        };
        let (header, claims) = verify_assertion(jwt, &der, alg, &token_url);
        let sha256 = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der));
        let sha1 = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der));
        if thumb_ok {
            assert_eq!(
                (header.x5t_s256.as_deref(), header.x5t.as_deref()),
                (Some(sha256.as_str()), None)
            );
        } else {
            assert_eq!(
                (header.x5t.as_deref(), header.x5t_s256.as_deref()),
                (Some(sha1.as_str()), None)
            );
        }
        assert_eq!(claims["sub"], CLIENT_ID);
        let jti = claims["jti"].as_str().expect("jti");
        assert_eq!(
            uuid::Uuid::parse_str(jti).expect("uuid").get_version_num(),
            4
        );
        let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
        assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(600));
        assert_eq!(claims["nbf"], claims["iat"]);
    }

    // A key that is not the certificate's is refused at startup.
    let other = rcgen::KeyPair::generate().expect("key");
    let other_cert = rcgen::CertificateParams::new(vec!["other".to_owned()])
        .expect("params")
        .self_signed(&other)
        .expect("cert");
    let credential = Credential::Certificate {
        cert_pem: other_cert.pem(),
        key_pem,
        form: AssertionForm::default(),
    };
    let err = GraphClient::new(config(addr, addr, credential)).expect_err("mismatch");
    assert!(err.to_string().contains("does not belong"), "{err}");
}
