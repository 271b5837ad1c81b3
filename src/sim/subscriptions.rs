//! `/subscriptions`: Graph's change-notification subscriptions for Copilot aiInteractions
//! (seed 001), behind the same gate (token, throttling, faults) as every Graph route.
//!
//! Resources: `/copilot/interactionHistory/getAllEnterpriseInteractions` (tenant-wide) and
//! `/copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions` (the user must have
//! every Copilot service plan the seed lists), optionally with a `$filter` on top-level
//! aiInteraction properties. Creation validates as documented, then performs the validation
//! handshake on the notification URL and on the lifecycle URL, and only then answers 201.
//! Expired subscriptions are removed when next looked at and never deliver.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use super::data::{parse_time, CopilotLicence, COPILOT_PLANS};
use super::error::GraphError;
use super::notify::{self, graph_time, NewRecord, SubCounters};
use super::notify_crypto::EncryptionCert;
use super::odata::{parse_expr, Expr, Tok};
use super::page::Origin;
use super::{lock, read, SimState};

/// Longest subscription on aiInteraction. The seed states none; this is the documented
/// maximum of Teams resources with resource data (chatMessage), 4320 minutes.
pub(crate) const MAX_EXPIRY_MINUTES: i64 = 4_320;
/// Beyond this, a lifecycleNotificationUrl is required (seed 001).
const LIFECYCLE_REQUIRED_AFTER_MINUTES: i64 = 60;
const MAX_CLIENT_STATE_CHARS: usize = 128;
/// Documented quotas: one tenant-wide subscription per app and tenant, one per app and
/// user, 10,000 in the organisation.
const MAX_SUBSCRIPTIONS: usize = 10_000;
const ODATA_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
const LIFECYCLE_REQUIRED: &str = "lifecycleNotificationUrl is a required property for subscription creation on this resource when the expirationDateTime value is set to greater than 1 hour.";
/// Top-level aiInteraction properties a `$filter` may name.
const FILTERABLE: [&str; 9] = [
    "id",
    "sessionId",
    "requestId",
    "appClass",
    "interactionType",
    "conversationType",
    "etag",
    "createdDateTime",
    "locale",
];
const KNOWN_PROPERTIES: [&str; 13] = [
    "@odata.type",
    "changeType",
    "notificationUrl",
    "lifecycleNotificationUrl",
    "resource",
    "expirationDateTime",
    "clientState",
    "includeResourceData",
    "encryptionCertificate",
    "encryptionCertificateId",
    "latestSupportedTlsVersion",
    "notificationUrlAppId",
    "notificationContentType",
];

/// Whose interactions a subscription covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Tenant,
    User(String),
}

/// The `$filter` of a subscription's resource: eq/ne on top-level string properties,
/// combined with and/or and parentheses.
#[derive(Clone, Debug)]
pub(crate) struct ResourceFilter(Expr);

impl ResourceFilter {
    fn parse(filter: &str) -> Result<ResourceFilter, String> {
        let expr = parse_expr(filter).map_err(|e| e.0)?;
        check_expr(&expr)?;
        Ok(ResourceFilter(expr))
    }

    pub(crate) fn matches(&self, rec: &NewRecord) -> bool {
        eval(&self.0, rec)
    }
}

fn check_expr(e: &Expr) -> Result<(), String> {
    match e {
        Expr::Or(v) | Expr::And(v) => v.iter().try_for_each(check_expr),
        Expr::Cmp { field, op, value } => {
            if field.contains('/') {
                return Err(format!(
                    "Filter on nested properties isn't supported: '{field}'."
                ));
            }
            if !FILTERABLE.iter().any(|f| f.eq_ignore_ascii_case(field)) {
                return Err(format!(
                    "Could not find a property named '{field}' on type 'microsoft.graph.aiInteraction'."
                ));
            }
            if op != "eq" && op != "ne" {
                return Err(format!("Operator '{op}' is not supported on '{field}'."));
            }
            match value {
                Tok::Str(_) => Ok(()),
                _ => Err(format!(
                    "A string literal is expected after '{field} {op}'."
                )),
            }
        }
    }
}

fn eval(e: &Expr, rec: &NewRecord) -> bool {
    match e {
        Expr::Or(v) => v.iter().any(|x| eval(x, rec)),
        Expr::And(v) => v.iter().all(|x| eval(x, rec)),
        Expr::Cmp { field, op, value } => {
            let want = match value {
                Tok::Str(s) => s.as_str(),
                _ => return false,
            };
            let got = rec
                .fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(field))
                .map(|(_, v)| v.as_str());
            let equal = got.is_some_and(|g| g.eq_ignore_ascii_case(want));
            (op == "eq") == equal
        }
    }
}

/// A subscription as the simulator keeps it.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub id: String,
    /// As the client sent it.
    pub resource: String,
    pub scope: Scope,
    pub filter: Option<ResourceFilter>,
    pub change_type: String,
    pub change_types: Vec<String>,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expires: DateTime<Utc>,
    pub include_resource_data: bool,
    pub certificate: Option<EncryptionCert>,
    pub certificate_id: Option<String>,
    pub tls_version: String,
    pub notification_url_app_id: Option<String>,
    pub application_id: String,
    pub creator_id: String,
    pub reauthorization_required: bool,
    pub counters: SubCounters,
}

impl Subscription {
    /// The `aud` of validation tokens: `notificationUrlAppId` when given, else the app.
    pub(crate) fn token_audience(&self) -> String {
        self.notification_url_app_id
            .clone()
            .unwrap_or_else(|| self.application_id.clone())
    }

    fn view(&self, context: Option<String>) -> SubscriptionView<'_> {
        SubscriptionView {
            context,
            id: &self.id,
            resource: &self.resource,
            application_id: &self.application_id,
            change_type: &self.change_type,
            client_state: self.client_state.as_deref(),
            notification_url: &self.notification_url,
            notification_query_options: None,
            lifecycle_url: self.lifecycle_url.as_deref(),
            expiration: graph_time(self.expires, false),
            creator_id: &self.creator_id,
            include_resource_data: self.include_resource_data,
            tls_version: &self.tls_version,
            certificate: self.certificate.as_ref().map(|c| c.base64.as_str()),
            certificate_id: self.certificate_id.as_deref(),
            notification_url_app_id: self.notification_url_app_id.as_deref(),
        }
    }
}

/// The subscription resource as Graph renders it.
#[derive(Serialize)]
struct SubscriptionView<'a> {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    id: &'a str,
    resource: &'a str,
    #[serde(rename = "applicationId")]
    application_id: &'a str,
    #[serde(rename = "changeType")]
    change_type: &'a str,
    #[serde(rename = "clientState")]
    client_state: Option<&'a str>,
    #[serde(rename = "notificationUrl")]
    notification_url: &'a str,
    #[serde(rename = "notificationQueryOptions")]
    notification_query_options: Option<&'a str>,
    #[serde(rename = "lifecycleNotificationUrl")]
    lifecycle_url: Option<&'a str>,
    #[serde(rename = "expirationDateTime")]
    expiration: String,
    #[serde(rename = "creatorId")]
    creator_id: &'a str,
    #[serde(rename = "includeResourceData")]
    include_resource_data: bool,
    #[serde(rename = "latestSupportedTlsVersion")]
    tls_version: &'a str,
    #[serde(rename = "encryptionCertificate")]
    certificate: Option<&'a str>,
    #[serde(rename = "encryptionCertificateId")]
    certificate_id: Option<&'a str>,
    #[serde(rename = "notificationUrlAppId")]
    notification_url_app_id: Option<&'a str>,
}

/// Body of `POST /subscriptions` (unknown properties are refused before this).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    change_type: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
    include_resource_data: Option<bool>,
    encryption_certificate: Option<String>,
    encryption_certificate_id: Option<String>,
    latest_supported_tls_version: Option<String>,
    notification_url_app_id: Option<String>,
}

/// Body of `PATCH /subscriptions/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRequest {
    expiration_date_time: Option<String>,
    notification_url: Option<String>,
}

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route(
            "/subscriptions/{id}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/subscriptions/{id}/reauthorize", post(reauthorize))
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> GraphError {
    GraphError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

fn invalid(message: impl Into<String>) -> GraphError {
    error(StatusCode::BAD_REQUEST, "ValidationError", message)
}

fn not_found() -> GraphError {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_default();
    let mut resp = (status, text).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ODATA_JSON));
    resp
}

/// `POST /subscriptions`
async fn create(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let req = parse_create(&body)?;
    let sub = validate_create(&st, req, Utc::now())?;
    check_quota(&st, &sub)?;
    handshake(&st, &sub.notification_url).await?;
    if let Some(url) = &sub.lifecycle_url {
        handshake(&st, url).await?;
    }
    {
        let mut subs = lock(&st.notifications.subs);
        // Checked again: another create may have won the race during the handshake.
        quota_ok(&subs, &sub)?;
        subs.insert(sub.id.clone(), sub.clone());
    }
    notify::ensure_dispatcher(&st);
    if sub.include_resource_data {
        // Warm the signing key so the first notification does not wait for it.
        let st2 = st.clone();
        tokio::spawn(async move {
            if let Err(e) = st2.notifications.signing_key().await {
                tracing::warn!(error = %e, "sim has no notification signing key");
            }
        });
    }
    tracing::info!(subscription.id = %sub.id, resource = %sub.resource, "sim created a subscription");
    let context = Origin::new(&uri, &headers).context("subscriptions/$entity");
    Ok(json_response(StatusCode::CREATED, &sub.view(Some(context))))
}

fn parse_create(body: &Bytes) -> Result<CreateRequest, GraphError> {
    let unreadable = || {
        GraphError::bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    };
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| unreadable())?;
    if let Some(k) = map.keys().find(|k| !KNOWN_PROPERTIES.contains(&k.as_str())) {
        return Err(GraphError::bad_request(format!(
            "The property '{k}' does not exist on type 'microsoft.graph.subscription'. Make sure to only use property names that are defined by the type."
        )));
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| GraphError::bad_request(format!("Invalid value in the request payload: {e}")))
}

fn required(v: Option<String>, name: &str) -> Result<String, GraphError> {
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid(format!("The property '{name}' is required.")))
}

fn validate_create(
    st: &SimState,
    req: CreateRequest,
    now: DateTime<Utc>,
) -> Result<Subscription, GraphError> {
    let resource = required(req.resource, "resource")?;
    let (scope, filter) = parse_resource(&resource)?;
    if let Scope::User(id) = &scope {
        check_user(st, id)?;
    }
    let change_type = required(req.change_type, "changeType")?;
    let change_types = parse_change_types(&change_type)?;
    let notification_url = required(req.notification_url, "notificationUrl")?;
    check_url(&notification_url, "notificationUrl")?;
    let lifecycle_url = req.lifecycle_notification_url.filter(|u| !u.is_empty());
    if let Some(u) = &lifecycle_url {
        check_url(u, "lifecycleNotificationUrl")?;
    }
    if req
        .client_state
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_STATE_CHARS)
    {
        return Err(invalid(format!(
            "clientState must be at most {MAX_CLIENT_STATE_CHARS} characters."
        )));
    }
    let include_resource_data = req.include_resource_data.unwrap_or(false);
    let certificate = certificate(
        include_resource_data,
        req.encryption_certificate.as_deref(),
        req.encryption_certificate_id.as_deref(),
    )?;
    let expires = parse_expiry(req.expiration_date_time.as_deref(), now)?;
    check_lifecycle_rule(expires, now, lifecycle_url.is_some())?;
    let tls_version = req
        .latest_supported_tls_version
        .unwrap_or_else(|| "v1_2".to_owned());
    if !["v1_0", "v1_1", "v1_2", "v1_3"].contains(&tls_version.as_str()) {
        return Err(invalid(format!(
            "Invalid latestSupportedTlsVersion '{tls_version}'. Supported values: v1_0, v1_1, v1_2, v1_3."
        )));
    }
    Ok(Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        resource,
        scope,
        filter,
        change_type,
        change_types,
        notification_url,
        lifecycle_url,
        client_state: req.client_state,
        expires,
        include_resource_data,
        certificate,
        certificate_id: req.encryption_certificate_id,
        tls_version,
        notification_url_app_id: req.notification_url_app_id,
        application_id: st.notifications.application_id.clone(),
        creator_id: st.notifications.creator_id.clone(),
        reauthorization_required: false,
        counters: SubCounters::default(),
    })
}

/// The two documented resources, with an optional `$filter`.
fn parse_resource(raw: &str) -> Result<(Scope, Option<ResourceFilter>), GraphError> {
    let unsupported = || {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            format!("Resource '{raw}' is not supported for change notifications."),
        )
    };
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is = |s: &str, want: &str| s.eq_ignore_ascii_case(want);
    let scope = match segs.as_slice() {
        [c, h, f]
            if is(c, "copilot")
                && is(h, "interactionHistory")
                && is(f, "getAllEnterpriseInteractions") =>
        {
            Scope::Tenant
        }
        [c, u, id, h, f]
            if is(c, "copilot")
                && is(u, "users")
                && !id.is_empty()
                && is(h, "interactionHistory")
                && is(f, "getAllEnterpriseInteractions") =>
        {
            Scope::User((*id).to_owned())
        }
        _ => return Err(unsupported()),
    };
    let filter = query.map(parse_resource_query).transpose()?;
    Ok((scope, filter))
}

fn parse_resource_query(query: &str) -> Result<ResourceFilter, GraphError> {
    let mut filter = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(k).decode_utf8_lossy();
        if !key.eq_ignore_ascii_case("$filter") || filter.is_some() {
            return Err(invalid(format!(
                "Query option '{key}' is not supported in a subscription resource; only one $filter is."
            )));
        }
        let value = percent_decode_str(v).decode_utf8_lossy().into_owned();
        filter = Some(ResourceFilter::parse(&value).map_err(invalid)?);
    }
    filter.ok_or_else(|| invalid("The resource has an empty query."))
}

/// The user must exist and have every Copilot service plan the seed lists.
fn check_user(st: &SimState, id: &str) -> Result<(), GraphError> {
    let tenant = read(&st.tenant);
    let user = tenant
        .user(id)
        .filter(|u| u.deleted_ms.is_none())
        .ok_or_else(|| GraphError::not_found(format!("The requested user '{id}' is invalid.")))?;
    let all = (1u8 << COPILOT_PLANS.len()) - 1;
    match user.licence {
        CopilotLicence::Enabled { plans } if plans & all == all => Ok(()),
        _ => Err(GraphError::forbidden(format!(
            "The user '{id}' does not have all the Microsoft 365 Copilot service plans this resource requires enabled."
        ))),
    }
}

fn parse_change_types(raw: &str) -> Result<Vec<String>, GraphError> {
    let types: Vec<String> = raw.split(',').map(|s| s.trim().to_owned()).collect();
    match types
        .iter()
        .find(|t| !["created", "updated", "deleted"].contains(&t.as_str()))
    {
        Some(bad) => Err(invalid(format!(
            "Invalid changeType '{bad}'. Supported values: created, updated, deleted."
        ))),
        None => Ok(types),
    }
}

/// HTTPS, as Graph requires; plain HTTP only to this machine, where tests run.
fn check_url(raw: &str, name: &str) -> Result<(), GraphError> {
    let url = url::Url::parse(raw)
        .map_err(|_| invalid(format!("The {name} '{raw}' is not a valid absolute URL.")))?;
    let local = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        _ => Err(invalid(format!("The {name} must use the HTTPS protocol."))),
    }
}

fn certificate(
    include: bool,
    cert: Option<&str>,
    id: Option<&str>,
) -> Result<Option<EncryptionCert>, GraphError> {
    let cert = cert.filter(|c| !c.is_empty());
    let id = id.filter(|i| !i.is_empty());
    match (cert, id) {
        (Some(c), Some(i)) => EncryptionCert::parse(c, i).map(Some).map_err(invalid),
        (None, None) if !include => Ok(None),
        _ if include => Err(invalid(
            "encryptionCertificate and encryptionCertificateId are required when includeResourceData is true.",
        )),
        _ => Err(invalid(
            "encryptionCertificate and encryptionCertificateId must be given together.",
        )),
    }
}

fn parse_expiry(raw: Option<&str>, now: DateTime<Utc>) -> Result<DateTime<Utc>, GraphError> {
    let raw = required(raw.map(str::to_owned), "expirationDateTime")?;
    let t = parse_time(&raw).ok_or_else(|| {
        invalid(format!(
            "expirationDateTime '{raw}' is not a valid date and time."
        ))
    })?;
    if t <= now {
        return Err(invalid("Subscription expiration must be in the future."));
    }
    if t > now + ChronoDuration::minutes(MAX_EXPIRY_MINUTES) {
        return Err(invalid(format!(
            "Subscription expiration can only be {MAX_EXPIRY_MINUTES} minutes in the future."
        )));
    }
    Ok(t)
}

fn check_lifecycle_rule(
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
    has_lifecycle_url: bool,
) -> Result<(), GraphError> {
    let long = expires > now + ChronoDuration::minutes(LIFECYCLE_REQUIRED_AFTER_MINUTES);
    if long && !has_lifecycle_url {
        return Err(invalid(LIFECYCLE_REQUIRED));
    }
    Ok(())
}

fn check_quota(st: &SimState, sub: &Subscription) -> Result<(), GraphError> {
    st.notifications.purge_expired(Utc::now());
    quota_ok(&lock(&st.notifications.subs), sub)
}

fn quota_ok(
    subs: &std::collections::BTreeMap<String, Subscription>,
    sub: &Subscription,
) -> Result<(), GraphError> {
    let same_scope = subs.values().any(|s| match (&s.scope, &sub.scope) {
        (Scope::Tenant, Scope::Tenant) => true,
        (Scope::User(a), Scope::User(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    });
    if same_scope || subs.len() >= MAX_SUBSCRIPTIONS {
        let per = match sub.scope {
            Scope::Tenant => "application and tenant",
            Scope::User(_) => "application and user",
        };
        return Err(error(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            format!("Operation: Create; Exception: [Status Code: Forbidden; Reason: Subscription quota exceeded: at most 1 subscription per {per} on this resource and {MAX_SUBSCRIPTIONS} per organization.]"),
        ));
    }
    Ok(())
}

/// Graph's validation request: POST `url?validationToken=...`; the endpoint must answer
/// 200, `text/plain`, the decoded token exactly, within the timeout.
async fn handshake(st: &SimState, url: &str) -> Result<(), GraphError> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    let target = format!(
        "{url}{sep}validationToken={}",
        utf8_percent_encode(&token, NON_ALPHANUMERIC)
    );
    let timeout = Duration::from_millis(st.notifications.cfg.handshake_timeout_ms);
    let result = tokio::time::timeout(timeout, validation_request(st, &target, &token)).await;
    let outcome = match result {
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Subscription validation request timed out.",
        )),
        Ok(r) => r,
    };
    let mut stats = lock(&st.stats);
    stats.notifications.handshakes += 1;
    if let Err(e) = &outcome {
        stats.notifications.handshakes_failed += 1;
        tracing::info!(url, reason = %e.message, "sim validation handshake failed");
    }
    outcome
}

async fn validation_request(st: &SimState, target: &str, token: &str) -> Result<(), GraphError> {
    let failed = |why: &str| invalid(format!("Subscription validation request failed. {why}"));
    let must_200 = "Notification endpoint must respond with 200 OK to validation request.";
    let resp = st
        .notifications
        .http
        .post(target)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|_| failed(must_200))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(failed(must_200));
    }
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
    let body = resp.text().await.map_err(|_| failed(must_200))?;
    if !plain {
        return Err(failed("Response must have the text/plain content type."));
    }
    if body != token {
        return Err(failed(
            "Response must exactly match validationToken query parameter.",
        ));
    }
    Ok(())
}

/// `GET /subscriptions`
async fn list(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    st.notifications.purge_expired(Utc::now());
    let subs = lock(&st.notifications.subs);
    let value: Vec<SubscriptionView<'_>> = subs.values().map(|s| s.view(None)).collect();
    let body = serde_json::json!({
        "@odata.context": Origin::new(&uri, &headers).context("subscriptions"),
        "value": value,
    });
    json_response(StatusCode::OK, &body)
}

/// `GET /subscriptions/{id}`
async fn get_one(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    st.notifications.purge_expired(Utc::now());
    let subs = lock(&st.notifications.subs);
    let sub = subs.get(&id).ok_or_else(not_found)?;
    let context = Origin::new(&uri, &headers).context("subscriptions/$entity");
    Ok(json_response(StatusCode::OK, &sub.view(Some(context))))
}

/// `PATCH /subscriptions/{id}`: renews (same limits as creation) and/or moves the
/// notification URL (validated again).
async fn update(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GraphError> {
    let now = Utc::now();
    st.notifications.purge_expired(now);
    let req: UpdateRequest = serde_json::from_slice(&body).map_err(|e| {
        GraphError::bad_request(format!(
            "Only expirationDateTime and notificationUrl can be updated: {e}"
        ))
    })?;
    let has_lifecycle = {
        let subs = lock(&st.notifications.subs);
        subs.get(&id).ok_or_else(not_found)?.lifecycle_url.is_some()
    };
    let expires = req
        .expiration_date_time
        .as_deref()
        .map(|raw| parse_expiry(Some(raw), now))
        .transpose()?;
    if let Some(t) = expires {
        check_lifecycle_rule(t, now, has_lifecycle)?;
    }
    if let Some(url) = &req.notification_url {
        check_url(url, "notificationUrl")?;
        handshake(&st, url).await?;
    }
    let mut subs = lock(&st.notifications.subs);
    let sub = subs.get_mut(&id).ok_or_else(not_found)?;
    if let Some(t) = expires {
        sub.expires = t;
        sub.reauthorization_required = false;
    }
    if let Some(url) = req.notification_url {
        sub.notification_url = url;
    }
    tracing::info!(subscription.id = %id, expires = %sub.expires, "sim updated a subscription");
    let context = Origin::new(&uri, &headers).context("subscriptions/$entity");
    Ok(json_response(StatusCode::OK, &sub.view(Some(context))))
}

/// `DELETE /subscriptions/{id}`
async fn remove(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, GraphError> {
    st.notifications.purge_expired(Utc::now());
    match lock(&st.notifications.subs).remove(&id) {
        Some(_) => {
            tracing::info!(subscription.id = %id, "sim deleted a subscription");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(not_found()),
    }
}

/// `POST /subscriptions/{id}/reauthorize`: answers 204 and clears a pending
/// `reauthorizationRequired`.
async fn reauthorize(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, GraphError> {
    st.notifications.purge_expired(Utc::now());
    let mut subs = lock(&st.notifications.subs);
    let sub = subs.get_mut(&id).ok_or_else(not_found)?;
    sub.reauthorization_required = false;
    Ok(StatusCode::NO_CONTENT)
}
