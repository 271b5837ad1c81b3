//! Hostile notification posts against the running daemon's receiver, over real HTTP, with
//! real subscriptions in place. A positive control first proves that a well-formed post (the
//! simulator's own encryption, a validation token from its signing key) is accepted and
//! archived; then each forgery or tampering gets its bare status, archives nothing and queues
//! nothing, and the log names the reason without leaking the clientState or key material.

use crate::helpers::*;
use crate::notifications::{
    notifications_env_with, raw_state, start_daemon, wait_for_subscriptions, NotifEnv, CLIENT_STATE,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use m365_archiver::archive::{keys, ArchiveStore};
use m365_archiver::notifications::cert::{self, EncryptionCertificate};
use m365_archiver::sim::notify_crypto::EncryptionCert;
use m365_archiver::state::StateDb;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::Row;
use std::time::{Duration, Instant};

const TENANT: &str = "00000000-0000-4000-8000-000000000001";
const APP: &str = "11111111-1111-4111-8111-111111111111";
/// `notifications.max_body` for this test.
const MAX_BODY: usize = 64 * 1024;

/// Builds posts for one real subscription, the way Graph would, and then spoils them.
struct Forger {
    cert: EncryptionCert,
    /// The simulator's token signing key (Microsoft's, in production).
    signing_pem: String,
    /// An RSA key that is not a configured validation key.
    stranger_pem: String,
    subscription_id: String,
    user: String,
    /// A real archived interaction of `user`, re-keyed for each post.
    template: Value,
    next_id: i64,
}

/// Microsoft Graph's change notification publisher, named in every genuine token.
const GRAPH_PUBLISHER: &str = "0bf30f3b-4a52-48df-9a82-234910c4a086";

impl Forger {
    /// A fresh interaction (an id nothing else has) and its exact bytes.
    fn interaction(&mut self) -> (String, Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let mut v = self.template.clone();
        v["id"] = id.clone().into();
        v["etag"] = id.clone().into();
        (id, serde_json::to_vec(&v).expect("json"))
    }

    fn item(&self, client_state: &str, plain: &[u8]) -> Value {
        let enc = self.cert.encrypt(plain).expect("encrypt");
        json!({
            "subscriptionId": self.subscription_id, "changeType": "created",
            "clientState": client_state,
            "resource": "copilot/interactionHistory/interactions('forged')",
            "resourceData": {"@odata.type": "#Microsoft.Graph.aiInteraction"},
            "encryptedContent": enc, "tenantId": TENANT,
        })
    }

    fn token(&self, pem: &str, audience: &str, exp_offset_s: i64) -> String {
        self.token_by(pem, audience, exp_offset_s, GRAPH_PUBLISHER)
    }

    /// A token issued to `party` (Graph's publisher in every genuine one).
    fn token_by(&self, pem: &str, audience: &str, exp_offset_s: i64, party: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "aud": audience, "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now.min(now + exp_offset_s) - 60, "nbf": now.min(now + exp_offset_s) - 60,
            "exp": now + exp_offset_s, "tid": TENANT, "azp": party,
        });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .expect("sign a token")
    }

    fn good_token(&self) -> String {
        self.token(&self.signing_pem, APP, 3600)
    }
}

fn body(items: Vec<Value>, tokens: Vec<String>) -> Vec<u8> {
    serde_json::to_vec(&json!({"value": items, "validationTokens": tokens})).expect("json")
}

/// Flips one bit of a base64 field's decoded bytes.
fn flip(item: &mut Value, field: &str, at: usize) {
    let enc = &mut item["encryptedContent"][field];
    let mut raw = STANDARD
        .decode(enc.as_str().expect("field"))
        .expect("base64");
    let i = at % raw.len();
    raw[i] ^= 0x01;
    *enc = STANDARD.encode(raw).into();
}

/// How many rows the queue table has ever had (SQLite AUTOINCREMENT), and how many wait.
async fn queue_counters(state: &sqlx::AnyPool) -> (i64, i64) {
    let seq = sqlx::query("SELECT seq FROM sqlite_sequence WHERE name = 'notification_queue'")
        .fetch_optional(state)
        .await
        .expect("sqlite_sequence")
        .map(|r| r.try_get::<i64, _>("seq").expect("seq"))
        .unwrap_or(0);
    let pending = sqlx::query("SELECT COUNT(*) AS n FROM notification_queue")
        .fetch_one(state)
        .await
        .expect("queue count")
        .try_get::<i64, _>("n")
        .expect("n");
    (seq, pending)
}

async fn catalogued(state: &StateDb, user: &str, id: &str) -> bool {
    let key = keys::record_key(&[user.to_owned(), id.to_owned()]);
    state
        .catalogue_list("copilot")
        .await
        .expect("catalogue")
        .iter()
        .any(|r| r.record_key == key)
}

async fn stored(env: &Env, user: &str, id: &str) -> bool {
    let record_key = keys::record_key(&[user.to_owned(), id.to_owned()]);
    let key = keys::record_storage_key("copilot", &record_key, id);
    matches!(env.store().get(&key).await, Ok(Some(_)))
}

/// Builds the forger: the user's subscription, a real record of theirs as a template.
async fn forger(ne: &NotifEnv, signing_pem: String, subs: &[(String, String)]) -> Forger {
    let (subscription_id, user) = subs[0].clone();
    let state = ne.env.state().await;
    let row = state
        .catalogue_list("copilot")
        .await
        .expect("catalogue")
        .into_iter()
        .find(|r| r.scope_id == user)
        .expect("the first pass archived the user's history");
    let bytes = ne
        .env
        .store()
        .get(&row.storage_key)
        .await
        .expect("read")
        .expect("stored");
    let template: Value = serde_json::from_slice(&bytes).expect("a JSON record");
    let cert_b64 = EncryptionCertificate::from_pem(&ne.certificate.certificate_pem)
        .expect("certificate")
        .base64();
    Forger {
        cert: EncryptionCert::parse(&cert_b64, &ne.certificate.certificate_id).expect("cert"),
        signing_pem,
        stranger_pem: ne.certificate.private_key_pem.expose_secret().to_owned(),
        subscription_id,
        user,
        template,
        // Far from any simulated id (epoch ms of the last 30 days).
        next_id: 4_000_000_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_posts_get_a_bare_status_and_archive_nothing() {
    // The simulator signs validation tokens with a key the test knows, so it can sign good,
    // expired and wrongly addressed tokens itself.
    let signing = cert::generate("sim-signing", 2, chrono::Utc::now()).expect("signing key");
    let signing_pem = signing.private_key_pem.expose_secret().to_owned();
    let mut sim = sim_config(2, 4);
    sim.notifications.signing_key_pem = Some(signing_pem.clone());
    let ne = notifications_env_with(Db::Sqlite, sim, "1h", &format!("max_body = {MAX_BODY}")).await;
    let env = &ne.env;
    let daemon = start_daemon(env, "1h");
    let subs = wait_for_subscriptions(env, 2, &daemon).await;
    daemon
        .wait_for_nth("pass complete", 1, Duration::from_secs(60))
        .await;
    let mut f = forger(&ne, signing_pem, &subs).await;
    let state = env.state().await;
    let url = format!("http://127.0.0.1:{}/notifications", ne.port);
    let http = reqwest::Client::new();
    let send = |bytes: Vec<u8>| {
        let req = http.post(&url).body(bytes);
        async move {
            let resp = req.send().await.expect("post to the receiver");
            let status = resp.status().as_u16();
            (status, resp.bytes().await.expect("body"))
        }
    };

    // Positive control: the same construction, unspoiled, is accepted and archived.
    let (good_id, plain) = f.interaction();
    let good = body(vec![f.item(CLIENT_STATE, &plain)], vec![f.good_token()]);
    let (status, _) = send(good).await;
    assert_eq!(
        status,
        202,
        "a well-formed post is accepted; log:\n{}",
        daemon.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(catalogued(&state, &f.user, &good_id).await && stored(env, &f.user, &good_id).await) {
        assert!(
            Instant::now() < deadline,
            "control not archived; log:\n{}",
            daemon.log()
        );
        sleep_ms(100).await;
    }
    let raw = raw_state(env).await;
    let (seq_before, _) = queue_counters(&raw).await;
    assert!(seq_before >= 1, "the control went through the queue");

    // Each hostile post: (what, body, status, what the log must say).
    let mut cases: Vec<(&str, Vec<u8>, u16, &str)> = Vec::new();
    let mut hostile_ids = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut next = |f: &mut Forger| {
        let (id, plain) = f.interaction();
        hostile_ids.push(id);
        plain
    };

    let plain = next(&mut f);
    cases.push((
        "wrong clientState",
        body(
            vec![f.item("guessed-client-state", &plain)],
            vec![f.good_token()],
        ),
        400,
        "clientState does not match",
    ));
    let plain = next(&mut f);
    let mut item = f.item(CLIENT_STATE, &plain);
    item["encryptedContent"]["dataSignature"] = STANDARD.encode([7u8; 32]).into();
    cases.push((
        "bad dataSignature",
        body(vec![item], vec![f.good_token()]),
        400,
        "dataSignature does not match",
    ));
    let plain = next(&mut f);
    let mut item = f.item(CLIENT_STATE, &plain);
    flip(&mut item, "data", 5);
    secrets.push(
        item["encryptedContent"]["dataKey"]
            .as_str()
            .expect("key")
            .to_owned(),
    );
    cases.push((
        "tampered data",
        body(vec![item], vec![f.good_token()]),
        400,
        "dataSignature does not match",
    ));
    let plain = next(&mut f);
    let mut item = f.item(CLIENT_STATE, &plain);
    flip(&mut item, "dataKey", 100);
    cases.push((
        "tampered dataKey",
        body(vec![item], vec![f.good_token()]),
        400,
        "dataKey cannot be decrypted",
    ));
    let plain = next(&mut f);
    let expired = f.token(&f.signing_pem, APP, -600);
    secrets.push(expired.clone());
    cases.push((
        "expired validation token",
        body(vec![f.item(CLIENT_STATE, &plain)], vec![expired]),
        401,
        "expired or is not yet valid",
    ));
    let plain = next(&mut f);
    let stranger = f.token(&f.stranger_pem, APP, 3600);
    cases.push((
        "token signed by another key",
        body(vec![f.item(CLIENT_STATE, &plain)], vec![stranger]),
        401,
        "matches none of the configured signing keys",
    ));
    let plain = next(&mut f);
    let other_app = f.token(&f.signing_pem, "22222222-2222-4222-8222-222222222222", 3600);
    cases.push((
        "token for another audience",
        body(vec![f.item(CLIENT_STATE, &plain)], vec![other_app]),
        401,
        "audience is not this application",
    ));
    let plain = next(&mut f);
    let not_graph = f.token_by(
        &f.signing_pem,
        APP,
        3600,
        "44444444-4444-4444-8444-444444444444",
    );
    cases.push((
        "token issued to another app than Graph's publisher",
        body(vec![f.item(CLIENT_STATE, &plain)], vec![not_graph]),
        401,
        "not issued to Microsoft Graph's change notification publisher",
    ));
    let plain = next(&mut f);
    let genuine = body(vec![f.item(CLIENT_STATE, &plain)], vec![f.good_token()]);
    let mut malformed = genuine.clone();
    malformed.truncate(genuine.len() - 3);
    cases.push((
        "malformed JSON",
        malformed,
        400,
        "not a notification collection",
    ));
    // Genuine in every respect but its size: only the limit can refuse it.
    let plain = next(&mut f);
    let mut item = f.item(CLIENT_STATE, &plain);
    item["padding"] = "x".repeat(MAX_BODY).into();
    cases.push((
        "oversized body",
        body(vec![item], vec![f.good_token()]),
        413,
        "body larger than the limit",
    ));

    for (what, bytes, want, _) in &cases {
        let (status, detail) = send(bytes.clone()).await;
        assert_eq!(status, *want, "{what}; log:\n{}", daemon.log());
        assert!(detail.is_empty(), "{what}: a bare status, no detail");
    }
    // The handshake echoes tokens; an oversized one is refused, not echoed.
    let long = "a".repeat(5000);
    let resp = http
        .post(format!("{url}?validationToken={long}"))
        .send()
        .await
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 400, "oversized validation token");
    assert!(resp.bytes().await.expect("body").is_empty());

    // Give the worker time to archive anything that had slipped into the queue.
    sleep_ms(1500).await;
    let (seq_after, pending) = queue_counters(&raw).await;
    assert_eq!(seq_after, seq_before, "no hostile item was ever queued");
    assert_eq!(pending, 0, "nothing waiting");
    for id in &hostile_ids {
        assert!(!catalogued(&state, &f.user, id).await, "{id} catalogued");
        assert!(!stored(env, &f.user, id).await, "{id} stored");
    }

    let log = daemon.log();
    for (what, _, _, reason) in &cases {
        assert!(
            log.contains(reason),
            "{what}: log lacks \"{reason}\":\n{log}"
        );
    }
    assert!(log.contains("validation handshake refused"), "{log}");
    assert!(
        !log.contains(CLIENT_STATE),
        "the clientState leaked:\n{log}"
    );
    let key_line = |pem: &str| pem.lines().nth(3).expect("a PEM body line").to_owned();
    secrets.push(key_line(&f.signing_pem));
    secrets.push(key_line(&f.stranger_pem));
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "key material or a token leaked:\n{log}"
        );
    }
    daemon.stop().await;
}
