//! End-to-end tests: a real simulator on 127.0.0.1:0, driven with reqwest.

use super::*;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

const ANCHOR: &str = "2025-03-01T12:00:00Z";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

pub(super) fn anchor() -> DateTime<Utc> {
    data::parse_time(ANCHOR).expect("anchor parses")
}

/// A small tenant without throttling, so tests that do not test it run at full speed.
pub(super) fn small_cfg() -> SimConfig {
    SimConfig {
        anchor: Some(anchor()),
        users: 6,
        unlicensed_users: 2,
        interactions_per_user: 30,
        rate_limits: SimRateLimits {
            interactions_rps: 0.0,
            messages_rps: 0.0,
            other_rps: 0.0,
            per_team_rps: 0.0,
            per_chat_rps: 0.0,
        },
        ..SimConfig::default()
    }
}

fn local() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

pub(super) struct Harness {
    pub(super) sim: SimHandle,
    pub(super) http: Client,
    pub(super) token: String,
}

impl Harness {
    pub(super) async fn start(cfg: SimConfig) -> Harness {
        let secret = cfg.client_secret.clone();
        let (tenant, client) = (cfg.tenant_id.clone(), cfg.client_id.clone());
        let sim = spawn(cfg, local()).await.expect("simulator starts");
        let http = Client::new();
        let resp = request_token(
            &http,
            &sim,
            &tenant,
            &[("client_id", &client), ("client_secret", &secret)],
        )
        .await;
        assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
        let token = resp.1["access_token"].as_str().expect("token").to_owned();
        Harness { sim, http, token }
    }

    pub(super) async fn get(&self, url: &str) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap_or_default())
    }

    fn interactions_url(&self, user: &str, query: &str) -> String {
        format!(
            "{}/copilot/users/{user}/interactionHistory/getAllEnterpriseInteractions{query}",
            self.sim.base_url()
        )
    }

    /// Follows nextLinks; returns each record's exact bytes, sliced from the page text.
    pub(super) async fn fetch_all(&self, first_url: &str) -> Vec<String> {
        let mut url = Some(first_url.to_owned());
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let (status, _, text) = self.get(&u).await;
            assert_eq!(status, StatusCode::OK, "{u}: {text}");
            let page: Page<'_> = serde_json::from_str(&text).expect("page parses");
            if let Some(count) = page.count {
                assert_eq!(count, page.value.len());
            }
            out.extend(page.value.iter().map(|r| r.get().to_owned()));
            url = page.next;
        }
        out
    }

    pub(super) async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/_sim{path}", self.sim.authority()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("control request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn users(&self) -> Vec<Value> {
        let (_, v) = self.control(reqwest::Method::GET, "/users", None).await;
        v.as_array().cloned().unwrap_or_default()
    }

    async fn licensed_user(&self) -> String {
        let users = self.users().await;
        let u = users
            .iter()
            .find(|u| u["licensed"] == true)
            .expect("a licensed user");
        u["id"].as_str().unwrap_or_default().to_owned()
    }

    async fn ground_truth(&self) -> Vec<Value> {
        let (status, v) = self
            .control(reqwest::Method::GET, "/ground-truth?source=copilot", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        v["records"].as_array().cloned().unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(rename = "@odata.count")]
    count: Option<usize>,
    #[serde(rename = "@odata.nextLink")]
    next: Option<String>,
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

async fn request_token(
    http: &Client,
    sim: &SimHandle,
    tenant: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut form = vec![("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)];
    form.extend_from_slice(extra);
    let resp = http
        .post(format!("{}/{tenant}/oauth2/v2.0/token", sim.authority()))
        .form(&form)
        .send()
        .await
        .expect("token request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn id_of(record: &str) -> String {
    let v: Value = serde_json::from_str(record).expect("record parses");
    v["id"].as_str().expect("id").to_owned()
}

pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

// ------------------------------------------------------------------------ tokens

#[tokio::test]
async fn client_secret_grants_and_aad_errors() {
    let cfg = small_cfg();
    let h = Harness::start(cfg.clone()).await;
    let (status, body) = request_token(
        &h.http,
        &h.sim,
        &cfg.tenant_id,
        &[
            ("client_id", &cfg.client_id),
            ("client_secret", &cfg.client_secret),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);

    let wrong = "not-the-secret-value";
    let (status, body) = request_token(
        &h.http,
        &h.sim,
        &cfg.tenant_id,
        &[("client_id", &cfg.client_id), ("client_secret", wrong)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"][0], 7000215);
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.starts_with("AADSTS7000215: Invalid client secret provided."));
    assert!(description.contains("\r\nTrace ID: ") && description.contains("\r\nCorrelation ID: "));
    assert!(
        !body.to_string().contains(wrong),
        "the secret must never be echoed"
    );

    let (status, body) = request_token(
        &h.http,
        &h.sim,
        "other-tenant",
        &[
            ("client_id", &cfg.client_id),
            ("client_secret", &cfg.client_secret),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].clone()),
        (StatusCode::BAD_REQUEST, Value::from(90002))
    );
    let (status, body) = request_token(
        &h.http,
        &h.sim,
        &cfg.tenant_id,
        &[
            ("client_id", "unknown-app"),
            ("client_secret", &cfg.client_secret),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::BAD_REQUEST, Value::from("unauthorized_client"))
    );
    assert_eq!(body["error_codes"][0], 700016);
    h.sim.shutdown().await;
}

struct TestKeys {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    other_key_pem: String,
}

/// RSA keys are slow to make: every test shares one registered and one foreign key.
fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let mut rng = rand::thread_rng();
        let pem = |k: &rsa::RsaPrivateKey| k.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
        let other = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
        let key_pem = pem(&key);
        let kp = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
            .expect("rcgen key");
        let cert = rcgen::CertificateParams::new(vec!["sim-client.example".to_owned()])
            .expect("params")
            .self_signed(&kp)
            .expect("self-signed");
        TestKeys {
            cert_pem: cert.pem(),
            key_pem,
            cert_der: cert.der().to_vec(),
            other_key_pem: pem(&other),
        }
    })
}

fn assertion(
    alg: jsonwebtoken::Algorithm,
    signing_pem: &str,
    aud: &str,
    client: &str,
    exp_offset: i64,
) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let k = keys();
    let mut header = jsonwebtoken::Header::new(alg);
    if alg == jsonwebtoken::Algorithm::RS256 {
        header.x5t = Some(URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&k.cert_der)));
    } else {
        header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&k.cert_der)));
    }
    let now = Utc::now().timestamp();
    let claims = serde_json::json!({
        "aud": aud, "iss": client, "sub": client, "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now - 5, "iat": now - 5, "exp": now + exp_offset,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(signing_pem.as_bytes()).expect("signing key");
    jsonwebtoken::encode(&header, &claims, &key).expect("signed")
}

#[tokio::test]
async fn certificate_assertions_are_verified() {
    use jsonwebtoken::Algorithm::{PS256, RS256};
    let k = keys();
    let cfg = SimConfig {
        certificate_pem: Some(k.cert_pem.clone()),
        ..small_cfg()
    };
    let h = Harness::start(cfg.clone()).await;
    let aud = format!("{}/{}/oauth2/v2.0/token", h.sim.authority(), cfg.tenant_id);
    let try_assertion = |a: String| {
        let (http, sim, tenant, client) = (
            h.http.clone(),
            &h.sim,
            cfg.tenant_id.clone(),
            cfg.client_id.clone(),
        );
        async move {
            let form = [
                ("client_id", client.as_str()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", a.as_str()),
            ];
            request_token(&http, sim, &tenant, &form).await
        }
    };
    for alg in [RS256, PS256] {
        let (status, body) =
            try_assertion(assertion(alg, &k.key_pem, &aud, &cfg.client_id, 600)).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
        assert!(body["access_token"].is_string());
    }
    let (status, body) = try_assertion(assertion(
        RS256,
        &k.other_key_pem,
        &aud,
        &cfg.client_id,
        600,
    ))
    .await;
    assert_eq!(
        (status, body["error_codes"][0].clone()),
        (StatusCode::UNAUTHORIZED, Value::from(700027))
    );
    let (status, body) =
        try_assertion(assertion(PS256, &k.key_pem, &aud, &cfg.client_id, -60)).await;
    assert_eq!(
        (status, body["error_codes"][0].clone()),
        (StatusCode::BAD_REQUEST, Value::from(700024))
    );
    let (status, _) = try_assertion(assertion(
        PS256,
        &k.key_pem,
        "https://elsewhere.example/token",
        &cfg.client_id,
        600,
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn graph_requires_an_issued_token() {
    let h = Harness::start(small_cfg()).await;
    let url = format!("{}/users", h.sim.base_url());
    for auth in [None, Some("Bearer made-up-token")] {
        let mut req = h.http.get(&url).header("client-request-id", "abc-123");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("sent");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()["client-request-id"], "abc-123");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
        assert_eq!(body["error"]["innerError"]["client-request-id"], "abc-123");
        assert!(body["error"]["innerError"]["request-id"].is_string());
    }
    h.sim.shutdown().await;
}

// ------------------------------------------------------------------ interactions

#[tokio::test]
async fn windows_are_strict_at_millisecond_precision() {
    let h = Harness::start(small_cfg()).await;
    let user = h.licensed_user().await;
    let (status, created) = h
        .control(reqwest::Method::POST, "/interactions", Some(serde_json::json!({"user_id": user, "created": "2025-02-19T08:30:15.123Z", "with_response": true})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["records"][0]["id"].as_str().expect("id").to_owned();
    let cases = [
        ("createdDateTime gt 2025-02-19T08:30:15.123Z", false),
        ("createdDateTime gt 2025-02-19T08:30:15.122Z", true),
        ("createdDateTime lt 2025-02-19T08:30:15.123Z", false),
        ("createdDateTime lt 2025-02-19T08:30:15.124Z", true),
        ("createdDateTime gt 2025-02-19T08:30:15Z and createdDateTime lt 2025-02-19T08:30:16Z", true),
        ("createdDateTime lt 2025-02-19T08:30:16Z and createdDateTime gt 2025-02-19T08:30:15Z", true),
        ("(createdDateTime gt 2025-02-19T08:30:15Z) and (appClass eq 'IPM.SkypeTeams.Message.Copilot.Word' or appClass eq 'IPM.SkypeTeams.Message.Copilot.BizChat')", true),
        ("createdDateTime gt 2025-02-19T08:30:15Z and appClass eq 'IPM.SkypeTeams.Message.Copilot.Teams'", false),
    ];
    for (filter, expected) in cases {
        let query = format!(
            "?$filter={}",
            url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
        );
        let ids: Vec<String> = h
            .fetch_all(&h.interactions_url(&user, &query))
            .await
            .iter()
            .map(|r| id_of(r))
            .collect();
        assert_eq!(ids.contains(&id), expected, "{filter}");
    }
    for filter in [
        "createdDateTime ge 2025-02-19T08:30:15Z",
        "createdDateTime le 2025-02-19T08:30:15Z",
        "createdDateTime eq 2025-02-19T08:30:15.123Z",
    ] {
        let (status, _, body) = h
            .get(&h.interactions_url(&user, &format!("?$filter={filter}")))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}");
        assert!(body.contains("\"BadRequest\""));
    }
    h.sim.shutdown().await;
}

#[tokio::test]
async fn paging_returns_every_record_once_in_no_time_order() {
    let h = Harness::start(SimConfig {
        interactions_per_user: 60,
        ..small_cfg()
    })
    .await;
    let user = h.licensed_user().await;
    let records = h.fetch_all(&h.interactions_url(&user, "?$top=7")).await;
    let ids: Vec<i64> = records
        .iter()
        .map(|r| id_of(r).parse().expect("numeric id"))
        .collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a record was served twice");
    let truth: HashSet<i64> = h
        .ground_truth()
        .await
        .iter()
        .filter(|r| r["scope"] == user.as_str())
        .filter_map(|r| r["id"].as_str()?.parse().ok())
        .collect();
    assert_eq!(unique, truth);
    assert!(
        ids.windows(2).any(|w| w[0] > w[1]) && ids.windows(2).any(|w| w[0] < w[1]),
        "results must not be time-ordered"
    );

    // The nextLink keeps $top, uses the host the client used and carries a skiptoken.
    let (_, _, text) = h.get(&h.interactions_url(&user, "?$top=7")).await;
    let page: Value = serde_json::from_str(&text).expect("page");
    let next = page["@odata.nextLink"].as_str().expect("nextLink");
    assert!(
        next.starts_with(&h.sim.base_url())
            && next.contains("$top=7")
            && next.contains("$skiptoken=")
    );
    // Over the cap: pages are clamped to max_top, and paging still reaches every record.
    let capped = h.fetch_all(&h.interactions_url(&user, "?$top=5000")).await;
    assert_eq!(capped.len(), ids.len());
    h.sim.shutdown().await;
}

#[tokio::test]
async fn a_skiptoken_for_another_query_is_rejected() {
    let h = Harness::start(SimConfig {
        interactions_per_user: 40,
        ..small_cfg()
    })
    .await;
    let users: Vec<String> = h
        .users()
        .await
        .iter()
        .filter(|u| u["licensed"] == true)
        .filter_map(|u| u["id"].as_str().map(str::to_owned))
        .collect();
    let (_, _, text) = h.get(&h.interactions_url(&users[0], "?$top=5")).await;
    let page: Value = serde_json::from_str(&text).expect("page");
    let next = page["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();
    let token = next.split("$skiptoken=").nth(1).expect("token");
    let (status, _, _) = h.get(&next).await;
    assert_eq!(status, StatusCode::OK);
    for query in [
        format!("?$top=6&$skiptoken={token}"),
        format!("?$filter=createdDateTime+gt+2020-01-01T00:00:00Z&$top=5&$skiptoken={token}"),
    ] {
        let (status, _, _) = h.get(&h.interactions_url(&users[0], &query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    let (status, _, _) = h
        .get(&h.interactions_url(&users[1], &format!("?$top=5&$skiptoken={token}")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn ground_truth_hashes_the_exact_bytes_served() {
    let h = Harness::start(SimConfig {
        shared_id_fraction: 0.2,
        ..small_cfg()
    })
    .await;
    let truth: HashMap<(String, String), String> = h
        .ground_truth()
        .await
        .iter()
        .map(|r| {
            let key = (
                r["scope"].as_str().unwrap_or_default().to_owned(),
                r["id"].as_str().unwrap_or_default().to_owned(),
            );
            (key, r["sha256"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let mut served = 0;
    let mut reserialised_differs = 0;
    let mut ids_seen: HashMap<String, usize> = HashMap::new();
    for user in h.users().await.iter().filter(|u| u["licensed"] == true) {
        let user = user["id"].as_str().unwrap_or_default().to_owned();
        for record in h.fetch_all(&h.interactions_url(&user, "?$top=9")).await {
            let id = id_of(&record);
            assert_eq!(
                truth.get(&(user.clone(), id.clone())),
                Some(&sha256_hex(&record)),
                "{record}"
            );
            let v: Value = serde_json::from_str(&record).expect("record");
            if serde_json::to_string(&v).expect("serialise") != record {
                reserialised_differs += 1;
            }
            *ids_seen.entry(id).or_default() += 1;
            served += 1;
        }
    }
    assert_eq!(served, truth.len());
    assert!(
        reserialised_differs * 2 > served,
        "most records must not be canonical JSON"
    );
    assert!(
        ids_seen.values().any(|&n| n > 1),
        "some ids must be shared across users"
    );
    h.sim.shutdown().await;
}

#[tokio::test]
async fn licences_and_user_lifecycle() {
    let h = Harness::start(small_cfg()).await;
    let users = h.users().await;
    let unlicensed = users
        .iter()
        .find(|u| u["licensed"] == false)
        .expect("unlicensed user");
    let (status, _, body) = h
        .get(&h.interactions_url(unlicensed["id"].as_str().unwrap_or_default(), ""))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("not licensed for Microsoft 365 Copilot"));
    let (status, _, _) = h
        .get(&h.interactions_url("00000000-dead-4000-8000-000000000000", ""))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let by_sku = format!("{}/users?$select=id,assignedLicenses&$filter=assignedLicenses/any(u:u/skuId+eq+{COPILOT_SKU})&$top=2", h.sim.base_url());
    let listed = h.fetch_all(&by_sku).await;
    assert_eq!(listed.len(), 6);
    let licensed_ids: Vec<String> = listed.iter().map(|r| id_of(r)).collect();

    let victim = licensed_ids[0].clone();
    let (status, _) = h
        .control(
            reqwest::Method::POST,
            &format!("/users/{victim}/unlicense"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = h.get(&h.interactions_url(&victim, "")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(h.fetch_all(&by_sku).await.len(), 5);

    let gone = licensed_ids[1].clone();
    let (status, _) = h
        .control(
            reqwest::Method::POST,
            &format!("/users/{gone}/delete"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deleted = h
        .fetch_all(&format!(
            "{}/directory/deletedItems/microsoft.graph.user?$top=1",
            h.sim.base_url()
        ))
        .await;
    assert_eq!(
        deleted.iter().map(|r| id_of(r)).collect::<Vec<_>>(),
        vec![gone.clone()]
    );
    assert_eq!(h.fetch_all(&by_sku).await.len(), 4);
    assert_eq!(
        h.fetch_all(&h.interactions_url(&gone, "")).await.len(),
        30,
        "deleted users stay exportable"
    );

    let pilot = h.fetch_all(&format!("{}/groups/aaaaaaaa-0000-4000-8000-00000000c0de/transitiveMembers/microsoft.graph.user?$top=2", h.sim.base_url())).await;
    assert!(pilot.len() == 3 || pilot.len() == 2, "{}", pilot.len());
    let (status, _, _) = h
        .get(&format!(
            "{}/users?$filter=displayName+eq+'x'",
            h.sim.base_url()
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.sim.shutdown().await;
}

#[tokio::test]
async fn late_records_appear_after_their_delay() {
    let cfg = SimConfig {
        late_fraction: 0.5,
        late_delay_secs: 1,
        ..small_cfg()
    };
    let h = Harness::start(cfg).await;
    let user = h.licensed_user().await;
    let truth: Vec<Value> = h
        .ground_truth()
        .await
        .into_iter()
        .filter(|r| r["scope"] == user.as_str())
        .collect();
    let late = truth
        .iter()
        .filter(|r| r["visible_from"].as_str() > r["created"].as_str())
        .count();
    assert!(late > 0);
    let early = h.fetch_all(&h.interactions_url(&user, "")).await.len();
    assert_eq!(early, truth.len() - late);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        h.fetch_all(&h.interactions_url(&user, "")).await.len(),
        truth.len()
    );
    h.sim.shutdown().await;
}

// -------------------------------------------------------------- throttling, faults

#[tokio::test]
async fn throttling_answers_429_with_fractional_retry_after() {
    let cfg = SimConfig {
        rate_limits: SimRateLimits {
            interactions_rps: 5.0,
            messages_rps: 5.0,
            other_rps: 100.0,
            ..SimRateLimits::default()
        },
        ..small_cfg()
    };
    let h = Harness::start(cfg).await;
    let user = h.licensed_user().await;
    let mut throttled = None;
    for _ in 0..12 {
        let (status, headers, body) = h.get(&h.interactions_url(&user, "?$top=1")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some((headers, body));
        }
    }
    let (headers, body) = throttled.expect("throttled after the burst");
    let retry = headers["retry-after"].to_str().expect("ascii").to_owned();
    let (secs, frac) = retry.split_once('.').expect("fractional");
    assert!(secs.parse::<u32>().is_ok() && frac.len() == 3, "{retry}");
    assert!(body.contains("\"TooManyRequests\""));
    let (status, _, _) = h.get(&format!("{}/users", h.sim.base_url())).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "other classes have their own bucket"
    );
    let (_, stats) = h.control(reqwest::Method::GET, "/stats", None).await;
    assert!(stats["throttled"].as_u64() > Some(0));
    assert!(stats["requests"]["interactions"]["429"].as_u64() > Some(0));
    h.sim.shutdown().await;
}

#[tokio::test]
async fn each_fault_at_rate_one_produces_its_effect() {
    let h = Harness::start(small_cfg()).await;
    let user = h.licensed_user().await;
    let url = h.interactions_url(&user, "?$top=20");
    let set = |faults: Value| async {
        let (status, _) = h
            .control(reqwest::Method::PUT, "/faults", Some(faults))
            .await;
        assert_eq!(status, StatusCode::OK);
    };

    set(serde_json::json!({"error_rate": 1.0})).await;
    let (status, _, body) = h.get(&url).await;
    assert!(
        status.is_server_error() && body.contains("innerError"),
        "{status}"
    );

    set(serde_json::json!({"storm_rate": 1.0, "storm_ms": 300})).await;
    let (status, headers, _) = h.get(&url).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));

    set(serde_json::json!({"expired_token_rate": 1.0})).await;
    let (status, _, body) = h.get(&url).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("InvalidAuthenticationToken"));

    set(serde_json::json!({"slow_rate": 1.0, "slow_ms": 200})).await;
    let started = std::time::Instant::now();
    let (status, _, _) = h.get(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    for fault in ["malformed_rate", "truncated_rate"] {
        set(serde_json::json!({ fault: 1.0 })).await;
        let (status, _, body) = h.get(&url).await;
        assert_eq!(status, StatusCode::OK);
        assert!(serde_json::from_str::<Value>(&body).is_err(), "{fault}");
    }

    set(serde_json::json!({"reset_rate": 1.0})).await;
    let resp = h
        .http
        .get(&url)
        .bearer_auth(&h.token)
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err(), "the body must break off");

    set(serde_json::json!({})).await;
    let (status, _, _) = h.get(&url).await;
    assert_eq!(status, StatusCode::OK);
    let (_, stats) = h.control(reqwest::Method::GET, "/stats", None).await;
    for kind in [
        "error",
        "storm_429",
        "expired_token",
        "slow",
        "malformed",
        "truncated",
        "reset",
    ] {
        assert!(stats["faults"][kind].as_u64() >= Some(1), "{kind}: {stats}");
    }
    h.sim.shutdown().await;
}

#[tokio::test]
async fn same_seed_and_anchor_give_the_same_ground_truth() {
    let strip = |records: Vec<Value>| -> Vec<(String, String, String, String)> {
        records
            .into_iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("scope"), s("id"), s("sha256"), s("created"))
            })
            .collect()
    };
    let a = Harness::start(small_cfg()).await;
    let b = Harness::start(small_cfg()).await;
    let c = Harness::start(SimConfig {
        seed: 7,
        ..small_cfg()
    })
    .await;
    let (ta, tb, tc) = (
        strip(a.ground_truth().await),
        strip(b.ground_truth().await),
        strip(c.ground_truth().await),
    );
    assert_eq!(ta.len(), 6 * 30);
    assert_eq!(ta, tb);
    assert_ne!(ta, tc);
    for h in [a, b, c] {
        h.sim.shutdown().await;
    }
}

#[tokio::test]
async fn unsupported_query_options_and_routes_are_refused() {
    let h = Harness::start(small_cfg()).await;
    let user = h.licensed_user().await;
    let (status, _, _) = h
        .get(&h.interactions_url(&user, "?$orderby=createdDateTime"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = h.get(&h.interactions_url(&user, "?$top=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = h
        .get(&format!("{}/users?$top=1000", h.sim.base_url()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = h.get(&format!("{}/nothing/here", h.sim.base_url())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Resource not found for the segment"));
    let (status, _, _) = h.get(&h.interactions_url(&user, "?top=1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "v1.0 needs the $ prefix");
    let beta = format!(
        "http://{}/beta/copilot/users/{user}/interactionHistory/getAllEnterpriseInteractions?top=1",
        h.sim.addr
    );
    let (status, _, body) = h.get(&beta).await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_str(&body).expect("page");
    let context = page["@odata.context"].as_str().unwrap_or_default();
    assert!(
        context.ends_with("/beta/$metadata#Collection(microsoft.graph.aiInteraction)"),
        "{context}"
    );
    assert_eq!(page["value"].as_array().map(Vec::len), Some(1));
    h.sim.shutdown().await;
}
