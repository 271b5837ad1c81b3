//! `/_sim/notifications`: the test harness side of change notifications (no auth, like all
//! of `/_sim`).
//!
//! - `GET  /signing-key`: the PEM public key validation tokens are signed with.
//! - `GET  /subscriptions`: active subscriptions with their delivery counters.
//! - `POST /subscriptions/{id}/lifecycle` `{"event":"subscriptionRemoved"|"reauthorizationRequired"|"missed"}`
//! - `GET|PUT /drop` `{"next":N,"probability":p,"seed":s}`: lose notifications on purpose.
//! - `GET  /stats`: delivered, dropped, retried, failed (also under `notifications` in `/_sim/stats`).
//! - `GET  /log`: one line per notification: interaction, user, created_at, delivered_at.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::control::ControlError;
use super::notify::{
    graph_time, send_lifecycle, DropSettings, LifecycleError, LifecycleEvent, LogEntry,
    NotificationCounters, SubCounters,
};
use super::subscriptions::Scope;
use super::{lock, SimState};

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/signing-key", get(signing_key))
        .route("/subscriptions", get(subscriptions))
        .route("/subscriptions/{id}/lifecycle", post(lifecycle))
        .route("/drop", get(get_drop).put(set_drop))
        .route("/stats", get(stats))
        .route("/log", get(log))
}

async fn signing_key(State(st): State<Arc<SimState>>) -> Result<Response, ControlError> {
    let key = st
        .notifications
        .signing_key()
        .await
        .map_err(ControlError::Invalid)?;
    let mut resp = (StatusCode::OK, key.public_pem.clone()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(resp)
}

/// A subscription as the harness lists it (no clientState: it is the client's secret).
#[derive(Debug, Serialize)]
struct SubscriptionState {
    id: String,
    resource: String,
    /// The user of a per-user subscription; `null` when tenant-wide.
    user_id: Option<String>,
    change_type: String,
    notification_url: String,
    lifecycle_notification_url: Option<String>,
    expiration: String,
    include_resource_data: bool,
    encryption_certificate_id: Option<String>,
    reauthorization_required: bool,
    counters: SubCounters,
}

async fn subscriptions(State(st): State<Arc<SimState>>) -> Json<Vec<SubscriptionState>> {
    st.notifications.purge_expired(Utc::now());
    let subs = lock(&st.notifications.subs);
    Json(
        subs.values()
            .map(|s| SubscriptionState {
                id: s.id.clone(),
                resource: s.resource.clone(),
                user_id: match &s.scope {
                    Scope::Tenant => None,
                    Scope::User(u) => Some(u.clone()),
                },
                change_type: s.change_type.clone(),
                notification_url: s.notification_url.clone(),
                lifecycle_notification_url: s.lifecycle_url.clone(),
                expiration: graph_time(s.expires, false),
                include_resource_data: s.include_resource_data,
                encryption_certificate_id: s.certificate_id.clone(),
                reauthorization_required: s.reauthorization_required,
                counters: s.counters.clone(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleRequest {
    event: LifecycleEvent,
}

/// `POST /_sim/notifications/subscriptions/{id}/lifecycle`: 202, delivered in the background.
async fn lifecycle(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ControlError> {
    let req: LifecycleRequest =
        serde_json::from_slice(&body).map_err(|e| ControlError::Body(e.to_string()))?;
    match send_lifecycle(&st, &id, req.event) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "subscriptionId": id, "lifecycleEvent": req.event })),
        )
            .into_response()),
        Err(e @ LifecycleError::Unknown(_)) => Ok((
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response()),
        Err(e @ LifecycleError::NoUrl(_)) => Err(ControlError::Invalid(e.to_string())),
    }
}

async fn get_drop(State(st): State<Arc<SimState>>) -> Json<DropSettings> {
    Json(st.notifications.drop_settings())
}

/// `PUT /_sim/notifications/drop`: replaces the drop policy.
async fn set_drop(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Json<DropSettings>, ControlError> {
    let s: DropSettings =
        serde_json::from_slice(&body).map_err(|e| ControlError::Body(e.to_string()))?;
    if !(0.0..=1.0).contains(&s.probability) {
        return Err(ControlError::Invalid(format!(
            "probability must be between 0 and 1, got {}",
            s.probability
        )));
    }
    st.notifications.set_drop(&s);
    tracing::info!(
        next = s.next,
        probability = s.probability,
        "sim notification drop policy changed"
    );
    Ok(Json(st.notifications.drop_settings()))
}

async fn stats(State(st): State<Arc<SimState>>) -> Json<NotificationCounters> {
    Json(lock(&st.stats).notifications.clone())
}

async fn log(State(st): State<Arc<SimState>>) -> Json<Vec<LogEntry>> {
    Json(st.notifications.log_entries())
}
