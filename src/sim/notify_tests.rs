//! Change notifications end to end: a real simulator and a tiny axum webhook on 127.0.0.1:0,
//! checked with the archiver's own receiver code (`crate::notifications`), so the two sides
//! agree on the documented wire format.

use super::notify_crypto::EncryptionCert;
use super::tests::{small_cfg, Harness};
use super::*;
use crate::notifications::crypto::{self, tests::test_key, EncryptedContent};
use crate::notifications::payload::{DecryptionKey, ItemKind, Verifier};
use crate::notifications::tokens::{keys_from_pem, TokenValidator};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode as AxStatus, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const STATE: &str = "sim-test-client-state";
const CERT_ID: &str = "c1";
const TENANT_RESOURCE: &str = "/copilot/interactionHistory/getAllEnterpriseInteractions";

/// The test certificate (over the archiver tests' key) as base64 DER.
fn cert_b64() -> &'static str {
    static CERT: OnceLock<String> = OnceLock::new();
    CERT.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let pem = test_key().to_pkcs8_pem(LineEnding::LF).expect("pem");
        let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
            .expect("rcgen key");
        let cert = rcgen::CertificateParams::new(vec!["archiver-notifications.example".into()])
            .expect("params")
            .self_signed(&kp)
            .expect("self-signed");
        STANDARD.encode(cert.der())
    })
}

/// One signing key for every test simulator (key generation is slow).
fn signing_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
        key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string()
    })
}

fn cfg() -> SimConfig {
    SimConfig {
        notifications: NotificationSimConfig {
            signing_key_pem: Some(signing_pem().to_owned()),
            handshake_timeout_ms: 1_000,
            delivery_timeout_ms: 2_000,
            retry_initial_ms: 50,
            retry_max_ms: 200,
            retry_for_secs: 30,
            max_batch: 100,
        },
        ..small_cfg()
    }
}

// ------------------------------------------------------------------ the test webhook

/// How the webhook answers a validation request.
#[derive(Clone, Copy, Debug)]
enum Handshake {
    Echo,
    WrongToken,
    Status(u16),
    /// The right token, but as JSON.
    JsonBody,
    Sleep(u64),
}

#[derive(Clone)]
struct HookState {
    posts: mpsc::UnboundedSender<(String, Value)>,
    handshakes: Arc<Mutex<Vec<String>>>,
    modes: Arc<Mutex<HashMap<String, Handshake>>>,
    /// Statuses for the next notification posts; 202 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
}

struct Hook {
    base: String,
    state: HookState,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Hook {
    async fn start() -> Hook {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = HookState {
            posts: tx,
            handshakes: Arc::default(),
            modes: Arc::default(),
            script: Arc::default(),
        };
        let app = axum::Router::new().fallback(hook).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook {
            base: format!("http://{addr}"),
            state,
            rx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn set(&self, path: &str, mode: Handshake) {
        lock(&self.state.modes).insert(path.to_owned(), mode);
    }

    fn script(&self, statuses: &[u16]) {
        lock(&self.state.script).extend(statuses);
    }

    /// The next post, if one arrives within `ms`.
    async fn next(&mut self, ms: u64) -> Option<(String, Value)> {
        tokio::time::timeout(Duration::from_millis(ms), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Items of posts to `path` until `n` have arrived (panics after 10 s).
    async fn items(&mut self, path: &str, n: usize) -> (Vec<Value>, Vec<Value>) {
        let (mut items, mut posts) = (Vec::new(), Vec::new());
        while items.len() < n {
            let (p, body) = self.next(10_000).await.expect("a notification post");
            if p == path {
                items.extend(body["value"].as_array().cloned().unwrap_or_default());
                posts.push(body);
            }
        }
        (items, posts)
    }
}

async fn hook(
    State(h): State<HookState>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if let Some(token) = q.get("validationToken") {
        lock(&h.handshakes).push(path.clone());
        let mode = lock(&h.modes)
            .get(&path)
            .copied()
            .unwrap_or(Handshake::Echo);
        let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        return match mode {
            Handshake::Echo => (AxStatus::OK, text, token.clone()).into_response(),
            Handshake::WrongToken => (AxStatus::OK, text, "not the token").into_response(),
            Handshake::Status(s) => AxStatus::from_u16(s)
                .unwrap_or(AxStatus::IM_A_TEAPOT)
                .into_response(),
            Handshake::JsonBody => (
                AxStatus::OK,
                [(header::CONTENT_TYPE, "application/json")],
                token.clone(),
            )
                .into_response(),
            Handshake::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (AxStatus::OK, text, token.clone()).into_response()
            }
        };
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = h.posts.send((path, value));
    let status = lock(&h.script).pop_front().unwrap_or(202);
    AxStatus::from_u16(status)
        .unwrap_or(AxStatus::ACCEPTED)
        .into_response()
}

// ------------------------------------------------------------------ simulator helpers

async fn graph(
    h: &Harness,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = h
        .http
        .request(method, format!("{}{path}", h.sim.base_url()))
        .bearer_auth(&h.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("graph request");
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

fn in_minutes(m: i64) -> String {
    (Utc::now() + chrono::Duration::minutes(m)).to_rfc3339()
}

/// A subscription body with resource data; `lifecycle`: path of the lifecycle URL.
fn sub_body(
    hook: &Hook,
    path: &str,
    resource: &str,
    minutes: i64,
    lifecycle: Option<&str>,
) -> Value {
    let mut b = json!({
        "changeType": "created",
        "notificationUrl": hook.url(path),
        "resource": resource,
        "includeResourceData": true,
        "encryptionCertificate": cert_b64(),
        "encryptionCertificateId": CERT_ID,
        "expirationDateTime": in_minutes(minutes),
        "clientState": STATE,
    });
    if let Some(l) = lifecycle {
        b["lifecycleNotificationUrl"] = json!(hook.url(l));
    }
    b
}

async fn subscribe(h: &Harness, body: Value) -> (StatusCode, Value) {
    graph(h, Method::POST, "/subscriptions", Some(body)).await
}

async fn licensed_users(h: &Harness) -> Vec<String> {
    let (_, v) = h.control(Method::GET, "/users", None).await;
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["licensed"] == true)
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect()
}

/// Creates a prompt (and its response) for `user` now; returns the ground-truth records.
async fn create(h: &Harness, user: &str, with_response: bool) -> Vec<Value> {
    // Distinct instants per call: ids are epoch ms per user.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let created = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let (status, v) = h
        .control(
            Method::POST,
            "/interactions",
            Some(
                json!({"user_id": user, "created": created, "with_response": with_response,
                        "response_delay_ms": 1}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["records"].as_array().cloned().unwrap_or_default()
}

fn validator(tenant: &str, app: &str) -> TokenValidator {
    let public = {
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
        rsa::RsaPrivateKey::from_pkcs8_pem(signing_pem())
            .expect("key")
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem")
    };
    TokenValidator::new(keys_from_pem(&public).expect("keys"), tenant, app)
}

fn verifier(tenant: &str, app: &str) -> Verifier {
    Verifier::new(
        SecretString::from(STATE),
        validator(tenant, app),
        vec![DecryptionKey {
            certificate_id: CERT_ID.into(),
            key: test_key().clone(),
        }],
    )
}

fn content_of(item: &Value) -> EncryptedContent {
    serde_json::from_value(item["encryptedContent"].clone()).expect("encryptedContent")
}

// ------------------------------------------------------------------ tests

#[test]
fn encryption_round_trips_through_the_archivers_decrypt() {
    let cert = EncryptionCert::parse(cert_b64(), CERT_ID).expect("certificate parses");
    let plain = br#"{"id":"1731701801008","body":{"content":"caf\u00e9 \u2013 r\u00e9sum\u00e9"}}"#;
    for len in [0usize, 1, 15, 16, 17, plain.len()] {
        let enc = cert.encrypt(&plain[..len]).expect("encrypts");
        let wire: EncryptedContent =
            serde_json::from_value(serde_json::to_value(&enc).expect("json")).expect("wire");
        assert_eq!(wire.certificate_id.as_deref(), Some(CERT_ID));
        let der = STANDARD.decode(cert_b64()).expect("der");
        let thumb = hex::encode_upper(sha1::Sha1::digest(&der));
        assert_eq!(wire.certificate_thumbprint.as_deref(), Some(thumb.as_str()));
        assert_eq!(
            crypto::decrypt(&wire, test_key(), CERT_ID).expect("decrypts"),
            &plain[..len]
        );
    }
}

#[test]
fn bad_certificates_and_signing_keys_are_refused() {
    assert!(EncryptionCert::parse("%%%", CERT_ID).is_err());
    assert!(EncryptionCert::parse(&STANDARD.encode(b"not der"), CERT_ID).is_err());
    let cfg = SimConfig {
        notifications: NotificationSimConfig {
            signing_key_pem: Some(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(),
            ),
            ..NotificationSimConfig::default()
        },
        ..SimConfig::default()
    };
    let err = cfg.validate().unwrap_err();
    assert!(err.contains("notifications.signing_key_pem"), "{err}");
    assert!(
        !format!("{:?}", cfg.notifications).contains("AAAA"),
        "key never printed"
    );
}

#[tokio::test]
async fn a_new_interaction_is_delivered_encrypted_signed_and_byte_identical() {
    let sim_cfg = cfg();
    let (tenant, app) = (sim_cfg.tenant_id.clone(), sim_cfg.client_id.clone());
    let h = Harness::start(sim_cfg).await;
    let mut hook = Hook::start().await;
    let (status, sub) =
        subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 120, Some("/l"))).await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    for (k, want) in [
        ("resource", TENANT_RESOURCE),
        ("applicationId", app.as_str()),
        ("changeType", "created"),
        ("clientState", STATE),
        ("encryptionCertificateId", CERT_ID),
    ] {
        assert_eq!(sub[k], want, "{k}");
    }
    assert_eq!(sub["includeResourceData"], true);
    assert_eq!(sub["notificationUrl"], hook.url("/n"));
    assert_eq!(sub["lifecycleNotificationUrl"], hook.url("/l"));
    assert!(sub["creatorId"].is_string() && sub["expirationDateTime"].is_string());
    let id = sub["id"].as_str().expect("id").to_owned();
    assert_eq!(*lock(&hook.state.handshakes), vec!["/n", "/l"]);

    let user = licensed_users(&h).await.remove(0);
    let started = std::time::Instant::now();
    let truth = create(&h, &user, true).await;
    let (items, posts) = hook.items("/n", 2).await;
    let latency = started.elapsed();
    assert!(
        latency < Duration::from_secs(3),
        "delivered after {latency:?}"
    );

    let validator = validator(&tenant, &app);
    for post in &posts {
        let tokens: Vec<String> =
            serde_json::from_value(post["validationTokens"].clone()).expect("tokens");
        assert_eq!(validator.check_all(&tokens), Ok(()));
        // The archiver's whole receiver check accepts the post as it is.
        let body = serde_json::to_vec(post).expect("json");
        let checked = verifier(&tenant, &app)
            .check_post(&body)
            .expect("post accepted");
        assert!(checked.accepted.iter().all(|a| a.kind == ItemKind::Change));
    }
    let mut seen = HashSet::new();
    for item in &items {
        assert_eq!(item["subscriptionId"], id.as_str());
        assert_eq!(item["changeType"], "created");
        assert_eq!(item["clientState"], STATE);
        assert_eq!(item["tenantId"], tenant.as_str());
        let rid = item["resourceData"]["id"].as_str().expect("id");
        let resource = format!("copilot/interactionHistory/interactions('{rid}')");
        assert_eq!(item["resource"], resource.as_str());
        assert_eq!(item["resourceData"]["@odata.id"], resource.as_str());
        assert_eq!(
            item["resourceData"]["@odata.type"],
            "#Microsoft.Graph.aiInteraction"
        );
        let content = content_of(item);
        check_signature_by_hand(&content);
        let plain = crypto::decrypt(&content, test_key(), CERT_ID).expect("decrypts");
        let record = truth
            .iter()
            .find(|r| r["id"] == rid)
            .expect("a created record");
        assert_eq!(
            hex::encode(Sha256::digest(&plain)),
            record["sha256"],
            "export bytes"
        );
        seen.insert(rid.to_owned());
    }
    assert_eq!(seen.len(), 2);

    let (_, log) = h.control(Method::GET, "/notifications/log", None).await;
    let log = log.as_array().cloned().unwrap_or_default();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|e| e["outcome"] == "delivered"
        && e["user_id"] == user.as_str()
        && e["created_at"].is_string()
        && e["delivered_at"].is_string()));
    for e in &log {
        let at = |k: &str| data::parse_time(e[k].as_str().unwrap_or_default()).expect(k);
        let ms = (at("delivered_at") - at("created_at")).num_milliseconds();
        eprintln!("creation to delivery: {ms} ms");
        assert!((0..2_000).contains(&ms), "{ms} ms");
    }
    let (_, stats) = h.control(Method::GET, "/stats", None).await;
    assert_eq!(stats["notifications"]["delivered"], 2);
    assert_eq!(stats["notifications"]["handshakes"], 2);
    h.sim.shutdown().await;
}

/// dataSignature = base64(HMAC-SHA256(key, base64decode(data))), key from dataKey.
fn check_signature_by_hand(content: &EncryptedContent) {
    use hmac::Mac;
    let wrapped = STANDARD.decode(&content.data_key).expect("dataKey");
    let key = test_key()
        .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &wrapped)
        .expect("RSA-OAEP SHA-1");
    assert_eq!(key.len(), 32);
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(&STANDARD.decode(&content.data).expect("data"));
    let sig = STANDARD
        .decode(&content.data_signature)
        .expect("dataSignature");
    assert_eq!(mac.finalize().into_bytes().as_slice(), sig.as_slice());
}

#[tokio::test]
async fn both_urls_must_pass_the_handshake_before_201() {
    let h = Harness::start(cfg()).await;
    let hook = Hook::start().await;
    let cases = [
        (
            "/n1",
            Handshake::WrongToken,
            "/l1",
            Handshake::Echo,
            "exactly match",
        ),
        (
            "/n2",
            Handshake::Status(500),
            "/l2",
            Handshake::Echo,
            "200 OK",
        ),
        (
            "/n3",
            Handshake::JsonBody,
            "/l3",
            Handshake::Echo,
            "text/plain",
        ),
        (
            "/n4",
            Handshake::Sleep(1_500),
            "/l4",
            Handshake::Echo,
            "timed out",
        ),
        (
            "/n5",
            Handshake::Echo,
            "/l5",
            Handshake::WrongToken,
            "exactly match",
        ),
        (
            "/n6",
            Handshake::Echo,
            "/l6",
            Handshake::Status(404),
            "200 OK",
        ),
    ];
    for (n, nm, l, lm, reason) in cases {
        hook.set(n, nm);
        hook.set(l, lm);
        let (status, v) = subscribe(&h, sub_body(&hook, n, TENANT_RESOURCE, 120, Some(l))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{n}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(reason), "{n}: {msg}");
    }
    let (_, list) = graph(&h, Method::GET, "/subscriptions", None).await;
    assert_eq!(
        list["value"].as_array().map(Vec::len),
        Some(0),
        "no subscription was kept"
    );
    let (status, _) = subscribe(
        &h,
        sub_body(&hook, "/ok", TENANT_RESOURCE, 120, Some("/ok-l")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn lifecycle_url_is_required_beyond_one_hour() {
    let h = Harness::start(cfg()).await;
    let hook = Hook::start().await;
    let (status, v) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 61, None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"]["message"],
        "lifecycleNotificationUrl is a required property for subscription creation on this resource when the expirationDateTime value is set to greater than 1 hour."
    );
    let (status, v) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 59, None)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        *lock(&hook.state.handshakes),
        vec!["/n"],
        "the refused request validated nothing"
    );
    // Renewing past an hour needs the lifecycle URL too.
    let path = format!("/subscriptions/{}", v["id"].as_str().unwrap_or_default());
    let (status, _) = graph(
        &h,
        Method::PATCH,
        &path,
        Some(json!({"expirationDateTime": in_minutes(90)})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn renewal_respects_the_maximum_and_unknown_ids_are_404() {
    let h = Harness::start(cfg()).await;
    let hook = Hook::start().await;
    let (status, v) = subscribe(
        &h,
        sub_body(&hook, "/n", TENANT_RESOURCE, 4_321, Some("/l")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("4320 minutes"));
    let (status, v) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 30, Some("/l"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/subscriptions/{}", v["id"].as_str().unwrap_or_default());
    let target = Utc::now() + chrono::Duration::minutes(4_000);
    let (status, renewed) = graph(
        &h,
        Method::PATCH,
        &path,
        Some(json!({"expirationDateTime": target.to_rfc3339()})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let got =
        data::parse_time(renewed["expirationDateTime"].as_str().unwrap_or_default()).expect("time");
    assert!(
        (got - target).num_milliseconds().abs() < 1,
        "{got} vs {target}"
    );
    for bad in [
        json!({"expirationDateTime": in_minutes(4_400)}),
        json!({"expirationDateTime": in_minutes(-1)}),
        json!({"resource": "x"}),
    ] {
        let (status, _) = graph(&h, Method::PATCH, &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, got) = graph(&h, Method::GET, &path, None).await;
    assert_eq!(
        (status, &got["expirationDateTime"]),
        (StatusCode::OK, &renewed["expirationDateTime"])
    );
    let reauth = format!("{path}/reauthorize");
    assert_eq!(
        graph(&h, Method::POST, &reauth, None).await.0,
        StatusCode::NO_CONTENT
    );
    // A second tenant-wide subscription exceeds the documented quota of one.
    let (status, _) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 30, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        graph(&h, Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    let unknown = "/subscriptions/00000000-0000-0000-0000-000000000000";
    for (m, body) in [
        (Method::DELETE, None),
        (Method::GET, None),
        (
            Method::PATCH,
            Some(json!({"expirationDateTime": in_minutes(10)})),
        ),
    ] {
        assert_eq!(
            graph(&h, m.clone(), unknown, body).await.0,
            StatusCode::NOT_FOUND,
            "{m}"
        );
    }
    assert_eq!(
        graph(&h, Method::DELETE, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn creation_is_validated_as_documented() {
    let h = Harness::start(cfg()).await;
    let hook = Hook::start().await;
    let base = sub_body(&hook, "/n", TENANT_RESOURCE, 30, None);
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base.clone();
        b.as_object_mut().map(|o| o.remove(k));
        b
    };
    let (_, users) = h.control(Method::GET, "/users", None).await;
    let unlicensed = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["licensed"] == false))
        .and_then(|u| u["id"].as_str())
        .expect("an unlicensed user")
        .to_owned();
    let user_res =
        |id: &str| format!("/copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions");
    let cases = [
        (with("resource", json!("/me/messages")), 400),
        (
            with(
                "resource",
                json!(format!("{TENANT_RESOURCE}?$filter=from/user/id eq 'x'")),
            ),
            400,
        ),
        (
            with("resource", json!(format!("{TENANT_RESOURCE}?$top=5"))),
            400,
        ),
        (
            with(
                "resource",
                json!(user_res("00000000-dead-4000-8000-000000000000")),
            ),
            404,
        ),
        (with("resource", json!(user_res(&unlicensed))), 403),
        (with("changeType", json!("created,renamed")), 400),
        (
            with("notificationUrl", json!("http://example.com/hook")),
            400,
        ),
        (with("clientState", json!("x".repeat(129))), 400),
        (without("encryptionCertificate"), 400),
        (
            with("encryptionCertificate", json!("bm90IGEgY2VydA==")),
            400,
        ),
        (with("expirationDateTime", json!(in_minutes(-5))), 400),
        (without("expirationDateTime"), 400),
        (with("colour", json!("blue")), 400),
    ];
    for (body, want) in cases {
        let (status, v) = subscribe(&h, body.clone()).await;
        assert_eq!(status.as_u16(), want, "{body}: {v}");
        assert!(
            v["error"]["code"].is_string(),
            "Graph's error envelope: {v}"
        );
    }
    assert!(
        lock(&hook.state.handshakes).is_empty(),
        "nothing invalid reached the handshake"
    );
    let resp = h
        .http
        .post(format!("{}/subscriptions", h.sim.base_url()))
        .json(&base)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_5xx_is_retried_until_accepted_and_a_4xx_is_not() {
    let h = Harness::start(cfg()).await;
    let mut hook = Hook::start().await;
    let (status, _) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 30, None)).await;
    assert_eq!(status, StatusCode::CREATED);
    let user = licensed_users(&h).await.remove(0);
    hook.script(&[503, 503]);
    let truth = create(&h, &user, false).await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (_, body) = hook.next(5_000).await.expect("a post");
        attempts.push(body["value"][0]["resourceData"]["id"].clone());
    }
    assert!(
        attempts.iter().all(|id| *id == truth[0]["id"]),
        "the same item each time"
    );
    wait_for(&h, "delivered", 1).await;
    let (_, stats) = h.control(Method::GET, "/notifications/stats", None).await;
    assert_eq!(
        (stats["retried"].as_u64(), stats["posts"].as_u64()),
        (Some(2), Some(3))
    );
    let (_, log) = h.control(Method::GET, "/notifications/log", None).await;
    assert_eq!(log[0]["attempts"], 3);

    hook.script(&[400]);
    create(&h, &user, false).await;
    assert!(hook.next(5_000).await.is_some());
    wait_for(&h, "failed", 1).await;
    assert!(hook.next(500).await.is_none(), "a 4xx is not retried");
    h.sim.shutdown().await;
}

/// Waits until `/_sim/notifications/stats` shows `n` for `counter`.
async fn wait_for(h: &Harness, counter: &str, n: u64) {
    for _ in 0..200 {
        let (_, stats) = h.control(Method::GET, "/notifications/stats", None).await;
        if stats[counter].as_u64() == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{counter} never reached {n}");
}

#[tokio::test]
async fn dropped_notifications_are_lost_and_counted() {
    let h = Harness::start(cfg()).await;
    let mut hook = Hook::start().await;
    let (status, _) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 30, None)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = h
        .control(Method::PUT, "/notifications/drop", Some(json!({"next": 1})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let user = licensed_users(&h).await.remove(0);
    let truth = create(&h, &user, true).await;
    let (items, _) = hook.items("/n", 1).await;
    assert_eq!(
        items[0]["resourceData"]["id"], truth[1]["id"],
        "the first was dropped"
    );
    assert!(hook.next(300).await.is_none());
    let (_, stats) = h.control(Method::GET, "/stats", None).await;
    assert_eq!(stats["notifications"]["dropped"], 1);
    let (_, log) = h.control(Method::GET, "/notifications/log", None).await;
    let dropped: Vec<&Value> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["outcome"] == "dropped")
        .collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["interaction_id"], truth[0]["id"]);
    // A probability of 1 drops everything, whatever the seed.
    h.control(
        Method::PUT,
        "/notifications/drop",
        Some(json!({"probability": 1.0, "seed": 7})),
    )
    .await;
    create(&h, &user, false).await;
    assert!(hook.next(300).await.is_none());
    h.sim.shutdown().await;
}

#[tokio::test]
async fn lifecycle_events_reach_the_lifecycle_url() {
    let sim_cfg = cfg();
    let (tenant, app) = (sim_cfg.tenant_id.clone(), sim_cfg.client_id.clone());
    let h = Harness::start(sim_cfg).await;
    let mut hook = Hook::start().await;
    let (_, sub) = subscribe(&h, sub_body(&hook, "/n", TENANT_RESOURCE, 120, Some("/l"))).await;
    let id = sub["id"].as_str().expect("id").to_owned();
    let hr = &h;
    let send = |event: &str| {
        let path = format!("/notifications/subscriptions/{id}/lifecycle");
        let body = json!({ "event": event });
        async move { hr.control(Method::POST, &path, Some(body)).await.0 }
    };
    assert_eq!(send("reauthorizationRequired").await, StatusCode::ACCEPTED);
    let (path, body) = hook.next(5_000).await.expect("lifecycle post");
    assert_eq!(path, "/l");
    assert_eq!(
        body["value"][0]["lifecycleEvent"],
        "reauthorizationRequired"
    );
    let (_, listed) = h
        .control(Method::GET, "/notifications/subscriptions", None)
        .await;
    assert_eq!(listed[0]["reauthorization_required"], true);
    let reauth = format!("/subscriptions/{id}/reauthorize");
    assert_eq!(
        graph(&h, Method::POST, &reauth, None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, listed) = h
        .control(Method::GET, "/notifications/subscriptions", None)
        .await;
    assert_eq!(listed[0]["reauthorization_required"], false);

    assert_eq!(send("subscriptionRemoved").await, StatusCode::ACCEPTED);
    let (path, body) = hook.next(5_000).await.expect("lifecycle post");
    assert_eq!(path, "/l");
    let item = &body["value"][0];
    assert_eq!(
        (
            item["subscriptionId"].as_str(),
            item["lifecycleEvent"].as_str()
        ),
        (Some(id.as_str()), Some("subscriptionRemoved"))
    );
    assert_eq!(
        (item["clientState"].as_str(), item["tenantId"].as_str()),
        (Some(STATE), Some(tenant.as_str()))
    );
    let checked = verifier(&tenant, &app)
        .check_post(&serde_json::to_vec(&body).expect("json"))
        .expect("the archiver accepts it");
    assert_eq!(checked.accepted[0].kind, ItemKind::Lifecycle);
    let (status, _) = graph(&h, Method::GET, &format!("/subscriptions/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "removed");
    let user = licensed_users(&h).await.remove(0);
    create(&h, &user, false).await;
    assert!(
        hook.next(300).await.is_none(),
        "a removed subscription delivers nothing"
    );
    assert_eq!(send("missed").await, StatusCode::NOT_FOUND);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn per_user_subscriptions_get_only_their_users_records() {
    let h = Harness::start(cfg()).await;
    let mut hook = Hook::start().await;
    let (status, _) = subscribe(&h, sub_body(&hook, "/all", TENANT_RESOURCE, 30, None)).await;
    assert_eq!(status, StatusCode::CREATED);
    // The seed requires every Copilot plan: some licensed users lack one and are refused.
    let mut chosen = Vec::new();
    for user in licensed_users(&h).await {
        let path = format!("/u{}", chosen.len());
        let mut resource =
            format!("/copilot/users/{user}/interactionHistory/getAllEnterpriseInteractions");
        if !chosen.is_empty() {
            resource.push_str("?$filter=interactionType eq 'aiResponse'");
        }
        let (status, v) = subscribe(&h, sub_body(&hook, &path, &resource, 30, None)).await;
        match status {
            StatusCode::CREATED => chosen.push(user),
            StatusCode::FORBIDDEN => {}
            other => panic!("{other}: {v}"),
        }
        if chosen.len() == 2 {
            break;
        }
    }
    assert_eq!(chosen.len(), 2, "two fully licensed users");
    let a = create(&h, &chosen[0], true).await;
    let b = create(&h, &chosen[1], true).await;
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let mut count = 0;
    while count < 4 + 2 + 1 {
        let (path, body) = hook.next(10_000).await.expect("posts");
        for item in body["value"].as_array().into_iter().flatten() {
            got.entry(path.clone()).or_default().push(
                item["resourceData"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            count += 1;
        }
    }
    assert!(hook.next(300).await.is_none(), "nothing more");
    let ids = |recs: &[Value]| -> Vec<String> {
        recs.iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(got.remove("/all").unwrap_or_default()),
        sorted([ids(&a), ids(&b)].concat())
    );
    assert_eq!(
        sorted(got.remove("/u0").unwrap_or_default()),
        sorted(ids(&a))
    );
    assert_eq!(
        got.remove("/u1").unwrap_or_default(),
        vec![ids(&b)[1].clone()],
        "only the filtered response"
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn expired_subscriptions_stop_delivering_and_disappear() {
    let h = Harness::start(cfg()).await;
    let mut hook = Hook::start().await;
    let mut body = sub_body(&hook, "/n", TENANT_RESOURCE, 1, None);
    body["expirationDateTime"] =
        json!((Utc::now() + chrono::Duration::milliseconds(1_500)).to_rfc3339());
    assert_eq!(subscribe(&h, body).await.0, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let user = licensed_users(&h).await.remove(0);
    create(&h, &user, false).await;
    assert!(hook.next(300).await.is_none());
    let (_, list) = graph(&h, Method::GET, "/subscriptions", None).await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(0));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_generated_signing_key_is_served_as_pem() {
    let h = Harness::start(small_cfg()).await;
    let resp = h
        .http
        .get(format!(
            "{}/_sim/notifications/signing-key",
            h.sim.authority()
        ))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let pem = resp.text().await.expect("pem");
    assert!(keys_from_pem(&pem).is_ok(), "{pem}");
    h.sim.shutdown().await;
}
