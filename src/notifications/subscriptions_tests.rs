//! Reconcile logic of the subscription manager against a tiny in-test fake of Graph's
//! `/subscriptions` (real HTTP through the real `GraphClient`). End-to-end behaviour against
//! the simulator lives in the integration tests.

use super::*;
use crate::graph::{Budgets, Credential, GraphClientConfig, RetryConfig};
use crate::notifications::cert::{self, EncryptionCertificate};
use crate::state::{testing, ScopeRecord, StateDb};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use secrecy::SecretString;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};

const NOTIFY: &str = "https://archiver.contoso.com/notifications";

#[derive(Default)]
struct FakeState {
    subs: BTreeMap<String, serde_json::Value>,
    next_id: u32,
    creates: u32,
    patches: u32,
    deletes: u32,
    reauthorizes: u32,
    /// Statuses for the next creates (then 201).
    fail_create: VecDeque<u16>,
    /// Create, then answer 500 as if the answer were lost.
    lose_create_answer: bool,
    last_body: Option<serde_json::Value>,
}

type Fake = Arc<Mutex<FakeState>>;

async fn token() -> Response {
    Json(serde_json::json!({"token_type":"Bearer","expires_in":3600,"access_token":"t"}))
        .into_response()
}

async fn list(
    State(f): State<(Fake, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let from: usize = q
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fake = f.0.lock().unwrap();
    let all: Vec<_> = fake.subs.values().cloned().collect();
    let page: Vec<_> = all.iter().skip(from).take(2).cloned().collect();
    let mut body = serde_json::json!({ "value": page });
    if from + 2 < all.len() {
        body["@odata.nextLink"] =
            format!("{}/v1.0/subscriptions?$skiptoken={}", f.1, from + 2).into();
    }
    Json(body).into_response()
}

async fn create(State(f): State<(Fake, String)>, Json(body): Json<serde_json::Value>) -> Response {
    let mut fake = f.0.lock().unwrap();
    fake.creates += 1;
    fake.last_body = Some(body.clone());
    if let Some(status) = fake.fail_create.pop_front() {
        let err =
            serde_json::json!({"error":{"code":"Forbidden","message":"Insufficient privileges"}});
        return (StatusCode::from_u16(status).unwrap(), Json(err)).into_response();
    }
    fake.next_id += 1;
    let id = format!("sub-{}", fake.next_id);
    let mut sub = body.clone();
    sub["id"] = id.clone().into();
    sub.as_object_mut().unwrap().remove("clientState");
    fake.subs.insert(id, sub.clone());
    if std::mem::take(&mut fake.lose_create_answer) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (StatusCode::CREATED, Json(sub)).into_response()
}

async fn renew(
    State(f): State<(Fake, String)>,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let mut fake = f.0.lock().unwrap();
    fake.patches += 1;
    match fake.subs.get_mut(&id) {
        Some(sub) => {
            sub["expirationDateTime"] = body["expirationDateTime"].clone();
            Json(sub.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn remove(State(f): State<(Fake, String)>, Path(id): Path<String>) -> Response {
    let mut fake = f.0.lock().unwrap();
    fake.deletes += 1;
    match fake.subs.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn reauthorize(State(f): State<(Fake, String)>, Path(id): Path<String>) -> Response {
    let mut fake = f.0.lock().unwrap();
    fake.reauthorizes += 1;
    if fake.subs.contains_key(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn start_fake() -> (Fake, GraphClient) {
    let fake = Fake::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/subscriptions", get(list).post(create))
        .route("/v1.0/subscriptions/{id}", patch(renew).delete(remove))
        .route("/v1.0/subscriptions/{id}/reauthorize", post(reauthorize))
        .with_state((fake.clone(), base.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = GraphClientConfig {
        tenant_id: "t".into(),
        client_id: "c".into(),
        credential: Credential::Secret(SecretString::from("s")),
        base_url: Url::parse(&format!("{base}/v1.0")).unwrap(),
        authority: Url::parse(&base).unwrap(),
        token_scope: "https://graph.microsoft.com/.default".into(),
        retry: RetryConfig {
            max_attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
        },
        request_timeout: Duration::from_secs(5),
        budgets: Budgets {
            other_rps: 1000.0,
            ..Budgets::default()
        },
    };
    (fake, GraphClient::new(cfg).unwrap())
}

/// One certificate for the whole test binary (RSA key generation is slow).
fn key_pair() -> &'static (EncryptionCertificate, rsa::RsaPrivateKey) {
    static PAIR: OnceLock<(EncryptionCertificate, rsa::RsaPrivateKey)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let new = cert::generate("test", 30, Utc::now()).unwrap();
        let c = EncryptionCertificate::from_pem(&new.certificate_pem).unwrap();
        let k = cert::private_key_from_pem(new.private_key_pem.expose_secret()).unwrap();
        (c, k)
    })
}

fn config(mode: SubscriptionMode) -> NotificationsConfig {
    let (certificate, key) = key_pair().clone();
    NotificationsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        notification_url: Url::parse(NOTIFY).unwrap(),
        lifecycle_url: Url::parse("https://archiver.contoso.com/lifecycle").unwrap(),
        mode,
        client_state: SecretString::from("client-state-0123456789abcdef0123456789"),
        certificate,
        private_key: Arc::new(key),
        certificate_id: "cert-1".into(),
        validation_keys_pem: String::new(),
        filter: None,
        lifetime: Duration::from_secs(2 * 86_400),
        renew_before: Duration::from_secs(12 * 3600),
        sweep_interval: Duration::from_secs(6 * 3600),
        gap_grace: Duration::from_secs(600),
        max_body: 1 << 20,
    }
}

struct Rig {
    fake: Fake,
    graph: GraphClient,
    state: StateDb,
    queue: NotificationQueue,
    catch_up: Arc<CatchUp>,
    _dir: Option<tempfile::TempDir>,
}

impl Rig {
    async fn new(users: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let state = testing::sqlite_in(dir.path()).await.unwrap();
        Rig::on(state, Some(dir), users).await
    }

    async fn on(state: StateDb, dir: Option<tempfile::TempDir>, users: &[&str]) -> Rig {
        let (fake, graph) = start_fake().await;
        let rig = Rig {
            fake,
            graph,
            queue: NotificationQueue::new(state.clone()),
            state,
            catch_up: Arc::new(CatchUp::default()),
            _dir: dir,
        };
        rig.users(users).await;
        rig
    }

    async fn users(&self, users: &[&str]) {
        let present: Vec<ScopeRecord> = users
            .iter()
            .map(|u| ScopeRecord {
                id: (*u).into(),
                label: None,
            })
            .collect();
        self.state
            .sync_scopes("user", &present, Utc::now())
            .await
            .unwrap();
    }

    fn manager(&self, mode: SubscriptionMode, owner: &str) -> Manager {
        self.manager_with(config(mode), owner)
    }

    fn manager_with(&self, cfg: NotificationsConfig, owner: &str) -> Manager {
        Manager::new(
            self.graph.clone(),
            self.queue.clone(),
            cfg,
            owner.into(),
            Duration::from_secs(60),
            self.catch_up.clone(),
        )
    }

    fn remote(&self, id: &str, resource: &str, url: &str, hours: i64) {
        let exp = (Utc::now() + chrono::Duration::hours(hours)).to_rfc3339();
        self.fake.lock().unwrap().subs.insert(
            id.into(),
            serde_json::json!({"id": id, "resource": resource, "notificationUrl": url,
                               "expirationDateTime": exp, "encryptionCertificateId": "cert-1"}),
        );
    }

    fn remote_users(&self) -> Vec<String> {
        let fake = self.fake.lock().unwrap();
        let mut out: Vec<String> = fake
            .subs
            .values()
            .map(|s| s["resource"].as_str().unwrap_or("").to_owned())
            .collect();
        out.sort();
        out
    }

    async fn rows(&self) -> Vec<SubscriptionRow> {
        self.queue.subscriptions().await.unwrap()
    }
}

fn user_resource(u: &str) -> String {
    format!("/copilot/users/{u}/interactionHistory/getAllEnterpriseInteractions")
}

#[tokio::test]
async fn reconcile_adopts_ours_creates_missing_and_deletes_strays() {
    let rig = Rig::new(&["a", "b", "c"]).await;
    rig.remote("old-a", &user_resource("a"), NOTIFY, 30);
    rig.remote("stray", &user_resource("z"), NOTIFY, 30);
    rig.remote(
        "foreign",
        &user_resource("b"),
        "https://other.example/hook",
        30,
    );
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;

    let body = {
        let fake = rig.fake.lock().unwrap();
        assert!(
            fake.subs.contains_key("old-a"),
            "ours adopted, not recreated"
        );
        assert!(!fake.subs.contains_key("stray"), "stray of ours deleted");
        assert!(
            fake.subs.contains_key("foreign"),
            "someone else's left alone"
        );
        assert_eq!(fake.creates, 2, "b and c created");
        fake.last_body.clone().unwrap()
    };
    assert_eq!(body["includeResourceData"], true);
    assert_eq!(
        body["lifecycleNotificationUrl"],
        "https://archiver.contoso.com/lifecycle"
    );
    assert_eq!(body["encryptionCertificateId"], "cert-1");
    assert_eq!(body["notificationUrl"], NOTIFY);
    assert!(body["encryptionCertificate"].as_str().unwrap().len() > 500);
    let rows = rig.rows().await;
    let mut users: Vec<_> = rows.iter().filter_map(|r| r.user_id.clone()).collect();
    users.sort();
    assert_eq!(users, ["a", "b", "c"]);
    assert!(rows.iter().all(|r| r.status == status::ACTIVE));

    // A second round changes nothing.
    let mut again = rig.manager(SubscriptionMode::Users, "me");
    again.tick().await;
    assert_eq!(rig.fake.lock().unwrap().creates, 2);
}

/// The receiver moved (`notification_url` changed): the subscriptions the state database
/// records under the old URL are deleted before their users' are made again under the new one;
/// a subscription on the old URL that we never recorded is someone else's and stays.
#[tokio::test]
async fn a_changed_notification_url_replaces_our_subscriptions() {
    let rig = Rig::new(&["a", "b"]).await;
    rig.remote(
        "foreign",
        &user_resource("a"),
        "https://old.example/hook",
        30,
    );
    rig.manager(SubscriptionMode::Users, "me").tick().await;
    let old: Vec<String> = rig.rows().await.into_iter().map(|r| r.id).collect();
    assert_eq!(old.len(), 2);
    let moved = "https://archiver2.contoso.com/notifications";
    let mut cfg = config(SubscriptionMode::Users);
    cfg.notification_url = Url::parse(moved).unwrap();
    rig.manager_with(cfg, "me").tick().await;
    {
        let fake = rig.fake.lock().unwrap();
        for id in &old {
            assert!(!fake.subs.contains_key(id), "{id} deleted");
        }
        let urls: Vec<&str> = (fake.subs.values())
            .filter(|s| s["id"] != "foreign")
            .map(|s| s["notificationUrl"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(urls, [moved, moved], "made again under the new URL");
        assert!(
            fake.subs.contains_key("foreign"),
            "someone else's left alone"
        );
        assert_eq!(fake.creates, 4);
    }
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| !old.contains(&r.id)), "{rows:?}");
}

#[tokio::test]
async fn a_create_with_a_lost_answer_is_adopted_not_duplicated() {
    let rig = Rig::new(&["a"]).await;
    rig.fake.lock().unwrap().lose_create_answer = true;
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;
    assert_eq!(rig.fake.lock().unwrap().creates, 1, "not retried blindly");
    assert_eq!(rig.remote_users(), [user_resource("a")]);
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, "sub-1");
    assert_eq!(rows[0].status, status::ACTIVE);
}

#[tokio::test]
async fn tenant_mode_uses_one_subscription_with_the_filter() {
    let rig = Rig::new(&["a", "b"]).await;
    let mut cfg = config(SubscriptionMode::Tenant);
    cfg.filter = Some("appClass eq 'IPM.SkypeTeams.Message.Copilot.Teams'".into());
    rig.manager_with(cfg, "me").tick().await;
    assert_eq!(
        rig.remote_users(),
        ["/copilot/interactionHistory/getAllEnterpriseInteractions?$filter=appClass eq 'IPM.SkypeTeams.Message.Copilot.Teams'"]
    );
    assert_eq!(rig.rows().await[0].user_id, None);
}

#[tokio::test]
async fn renewal_happens_within_renew_before_and_a_vanished_one_is_recreated() {
    let rig = Rig::new(&["a", "b"]).await;
    rig.remote("soon", &user_resource("a"), NOTIFY, 2);
    rig.remote("later", &user_resource("b"), NOTIFY, 40);
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;
    assert_eq!(
        rig.fake.lock().unwrap().patches,
        1,
        "only the one expiring within 12h"
    );
    let soon = rig.queue.subscription("soon").await.unwrap().unwrap();
    assert!(soon.expires_at > Utc::now().timestamp_millis() + 40 * 3_600_000);
    assert_eq!(soon.last_event.as_deref(), Some("renewed"));

    // Graph dropped "later" without telling us: the renewal finds 404 and recreates it.
    rig.fake.lock().unwrap().subs.remove("later");
    let mut row = rig.queue.subscription("later").await.unwrap().unwrap();
    row.expires_at = Utc::now().timestamp_millis() + 60_000;
    rig.queue.put_subscription(&row).await.unwrap();
    m.tick().await;
    assert!(rig.queue.subscription("later").await.unwrap().is_none());
    assert_eq!(rig.remote_users().len(), 2);
    assert_eq!(
        rig.catch_up.take().map(|c| c.0),
        Some(CatchUpScope::Users(BTreeSet::from(["b".to_string()])))
    );
}

#[tokio::test]
async fn lifecycle_events_recreate_and_reauthorize() {
    let rig = Rig::new(&["a", "b"]).await;
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;
    let rows = rig.rows().await;
    let of = |u: &str| {
        rows.iter()
            .find(|r| r.user_id.as_deref() == Some(u))
            .unwrap()
            .id
            .clone()
    };
    let (sub_a, sub_b) = (of("a"), of("b"));

    m.on_event(LifecycleEvent {
        subscription_id: sub_a.clone(),
        event: "subscriptionRemoved".into(),
    })
    .await;
    m.on_event(LifecycleEvent {
        subscription_id: sub_b.clone(),
        event: "reauthorizationRequired".into(),
    })
    .await;
    assert_eq!(
        rig.queue
            .subscription(&sub_a)
            .await
            .unwrap()
            .unwrap()
            .status,
        status::REMOVED
    );
    m.tick().await;

    assert!(
        rig.queue.subscription(&sub_a).await.unwrap().is_none(),
        "replaced"
    );
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == status::ACTIVE), "{rows:?}");
    let b = rig.queue.subscription(&sub_b).await.unwrap().unwrap();
    assert_eq!(b.last_event.as_deref(), Some("reauthorized"));
    assert_eq!(rig.fake.lock().unwrap().reauthorizes, 1);
    let (scope, _) = rig.catch_up.take().unwrap();
    assert_eq!(
        scope,
        CatchUpScope::Users(BTreeSet::from(["a".to_string()]))
    );
}

#[tokio::test]
async fn a_refused_create_is_marked_failed_asks_polling_and_backs_off() {
    let rig = Rig::new(&["a"]).await;
    rig.fake.lock().unwrap().fail_create = VecDeque::from([403, 403]);
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, status::FAILED);
    let why = rows[0].last_event.clone().unwrap();
    assert!(why.contains("AiEnterpriseInteraction.Read.All"), "{why}");
    assert!(rig.catch_up.take().is_some());
    m.tick().await;
    assert_eq!(rig.fake.lock().unwrap().creates, 1, "backing off");

    // Once due again and allowed, the placeholder gives way to the real subscription.
    rig.fake.lock().unwrap().fail_create.clear();
    m.backoff.clear();
    m.tick().await;
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].status.as_str()),
        ("sub-1", status::ACTIVE)
    );
}

crate::both_backends!(only_the_lease_holder_acts_and_departed_users_lose_their_subscription);

/// Two replicas' managers tick at the same moment on one state database: one takes the
/// lease and creates, the other does nothing.
async fn only_the_lease_holder_acts_and_departed_users_lose_their_subscription(db: StateDb) {
    let rig = Rig::on(db, None, &["a", "b"]).await;
    let mut first = rig.manager(SubscriptionMode::Users, "replica-1");
    let mut second = rig.manager(SubscriptionMode::Users, "replica-2");
    tokio::join!(first.tick(), second.tick());
    second.tick().await;
    assert_eq!(
        rig.fake.lock().unwrap().creates,
        2,
        "the second replica did nothing"
    );
    assert_eq!(rig.remote_users().len(), 2);

    rig.users(&["a"]).await;
    first.tick().await;
    second.tick().await;
    assert_eq!(rig.remote_users(), [user_resource("a")]);
    let rows = rig.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].user_id.as_deref(), Some("a"));
}

#[tokio::test]
async fn listing_follows_next_links() {
    let rig = Rig::new(&[]).await;
    for i in 0..5 {
        rig.remote(
            &format!("s{i}"),
            &user_resource(&format!("u{i}")),
            NOTIFY,
            30,
        );
    }
    let m = rig.manager(SubscriptionMode::Users, "me");
    assert_eq!(m.list_ours().await.unwrap().len(), 5);
}

#[tokio::test]
async fn subscriptions_made_with_a_retired_certificate_are_replaced() {
    let rig = Rig::new(&["a"]).await;
    rig.remote("old", &user_resource("a"), NOTIFY, 30);
    rig.fake.lock().unwrap().subs.get_mut("old").unwrap()["encryptionCertificateId"] =
        "retired".into();
    let mut m = rig.manager(SubscriptionMode::Users, "me");
    m.tick().await;
    let fake = rig.fake.lock().unwrap();
    assert!(!fake.subs.contains_key("old"));
    assert_eq!(fake.subs.len(), 1);
    assert_eq!(
        fake.subs.values().next().unwrap()["encryptionCertificateId"],
        "cert-1"
    );
}
