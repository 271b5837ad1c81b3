//! The test harness API under `/_sim` (no auth; never exposed by a real deployment):
//! ground truth, statistics, record injection, runtime faults and rate limits, and user
//! lifecycle changes.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use url::form_urlencoded;

use super::config::{FaultConfig, SimRateLimits};
use super::copilot::{truth, TruthRecord};
use super::data::{
    mix, parse_time, AppClass, CopilotLicence, Interaction, Kind, TenantError, User,
};
use super::{lock, read, teams_control, write, SimState};

/// Sources the ground truth knows; new sources add their name and lister.
const SOURCES: &[&str] = &["copilot", "chats", "channels", "transcripts", "recordings"];
const DEFAULT_RESPONSE_DELAY_MS: u64 = 1_500;

/// A refused control request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::Body(_) | ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Tenant(TenantError::UnknownUser(_)) => StatusCode::NOT_FOUND,
            ControlError::Tenant(_) => StatusCode::CONFLICT,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/ground-truth", get(ground_truth))
        .route("/stats", get(stats).delete(reset_stats))
        .route("/interactions", post(create_interactions))
        .route("/faults", put(set_faults).get(get_faults))
        .route("/rate-limits", put(set_rate_limits).get(get_rate_limits))
        .route("/users", get(list_users))
        .route("/users/{id}/unlicense", post(unlicense))
        .route("/users/{id}/delete", post(delete))
        .route("/chats", get(teams_control::chat_members))
        .route("/messages", post(teams_control::change_message))
        .route("/messages/churn", post(teams_control::churn))
        .route("/teams/{id}/delete", post(teams_control::delete_team))
        .route("/teams/{id}/purge", post(teams_control::purge_team))
        .nest("/notifications", super::notify_control::router())
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::Body(e.to_string()))
}

/// `GET /_sim/ground-truth?source=copilot`: every record that exists, visible or not,
/// streamed user by user so a 100,000-user tenant is never rendered in one buffer. Teams
/// sources (`chats`, `channels`, `transcripts`, `recordings`) follow; without `source`, all.
async fn ground_truth(
    State(st): State<Arc<SimState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ControlError> {
    let source = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.into_owned());
    if let Some(s) = source.as_deref().filter(|s| !SOURCES.contains(s)) {
        return Err(ControlError::Invalid(format!(
            "unknown source '{s}'; known: {}",
            SOURCES.join(", ")
        )));
    }
    let teams_sources: Vec<&str> = match source.as_deref() {
        Some("copilot") => Vec::new(),
        Some(s) => vec![s],
        None => teams_control::TEAMS_SOURCES.to_vec(),
    };
    let teams: Vec<teams_control::TeamsTruth> = teams_sources
        .iter()
        .flat_map(|s| teams_control::truth(&st, s, &headers))
        .collect();
    let copilot = source.as_deref().is_none_or(|s| s == "copilot");
    let snapshot: Vec<(User, Arc<Vec<Interaction>>)> = if !copilot {
        Vec::new()
    } else {
        let t = read(&st.tenant);
        t.users
            .iter()
            .map(|u| (u.clone(), t.interactions(u.index)))
            .filter(|(_, items)| !items.is_empty())
            .collect()
    };
    let tail = teams_tail(&teams, !snapshot.is_empty());
    let (seed, tenant_id) = (st.seed, st.tenant_id.clone());
    let chunks =
        futures::stream::iter(snapshot.into_iter().enumerate()).map(move |(n, (user, items))| {
            let mut chunk = String::new();
            for (k, it) in items.iter().enumerate() {
                if n > 0 || k > 0 {
                    chunk.push(',');
                }
                let record = truth(seed, &tenant_id, &user, it);
                // Serialising a plain struct of strings cannot fail.
                chunk.push_str(&serde_json::to_string(&record).unwrap_or_default());
            }
            Ok::<_, Infallible>(Bytes::from(chunk))
        });
    let body = futures::stream::once(async { Ok(Bytes::from_static(b"{\"records\":[")) })
        .chain(chunks)
        .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }))
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]}"))
        }));
    let mut resp = Body::from_stream(body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The Teams records of a ground-truth listing, comma-joined after `before` records.
fn teams_tail(records: &[teams_control::TeamsTruth], before: bool) -> String {
    let mut out = String::new();
    for (k, r) in records.iter().enumerate() {
        if before || k > 0 {
            out.push(',');
        }
        // Serialising a plain struct of strings and numbers cannot fail.
        out.push_str(&serde_json::to_string(r).unwrap_or_default());
    }
    out
}

async fn stats(State(st): State<Arc<SimState>>) -> Response {
    Json(lock(&st.stats).clone()).into_response()
}

/// `DELETE /_sim/stats`: starts the counters afresh (a benchmark measuring one phase).
async fn reset_stats(State(st): State<Arc<SimState>>) -> StatusCode {
    *lock(&st.stats) = super::stats::Stats::default();
    StatusCode::NO_CONTENT
}

/// Body of `POST /_sim/interactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInteraction {
    user_id: String,
    /// createdDateTime of the prompt, RFC 3339, at most millisecond precision.
    created: String,
    #[serde(default)]
    visible_after_ms: u64,
    #[serde(default)]
    with_response: bool,
    #[serde(default = "default_response_delay")]
    response_delay_ms: u64,
    #[serde(default)]
    app_class: Option<String>,
}

fn default_response_delay() -> u64 {
    DEFAULT_RESPONSE_DELAY_MS
}

#[derive(Debug, Serialize)]
struct Created {
    records: Vec<TruthRecord>,
}

/// `POST /_sim/interactions`: a prompt (and optionally its response) at exactly `created`.
async fn create_interactions(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Created>), ControlError> {
    let req: NewInteraction = parse_body(&body)?;
    let new = build_interactions(&st, &req)?;
    let mut tenant = write(&st.tenant);
    let index = tenant.add_interactions(&req.user_id, &new)?;
    let user = &tenant.users[index];
    super::notify::interactions_created(&st, user, &new);
    let records = new
        .iter()
        .map(|it| truth(st.seed, &st.tenant_id, user, it))
        .collect();
    tracing::debug!(user.id = %user.id, count = new.len(), "sim created interactions");
    Ok((StatusCode::CREATED, Json(Created { records })))
}

fn build_interactions(
    st: &SimState,
    req: &NewInteraction,
) -> Result<Vec<Interaction>, ControlError> {
    let created = parse_time(&req.created).ok_or_else(|| {
        ControlError::Invalid(format!("created '{}' is not RFC 3339", req.created))
    })?;
    if created.timestamp_subsec_nanos() % 1_000_000 != 0 {
        return Err(ControlError::Invalid(
            "created must have at most millisecond precision".to_owned(),
        ));
    }
    let app = match &req.app_class {
        None => AppClass::BizChat,
        Some(a) => AppClass::parse(a)
            .ok_or_else(|| ControlError::Invalid(format!("unknown app_class '{a}'")))?,
    };
    let created_ms = created.timestamp_millis();
    let visible_from_ms = Utc::now().timestamp_millis() + req.visible_after_ms as i64;
    let prompt = Interaction {
        created_ms,
        visible_from_ms,
        pair: mix(mix(st.seed, 0xc0de), created_ms as u64),
        kind: Kind::Prompt,
        app,
    };
    let mut out = vec![prompt];
    if req.with_response {
        out.push(Interaction {
            created_ms: created_ms + req.response_delay_ms.max(1) as i64,
            kind: Kind::Response,
            ..prompt
        });
    }
    Ok(out)
}

async fn get_faults(State(st): State<Arc<SimState>>) -> Json<FaultConfig> {
    Json(lock(&st.faults).config().clone())
}

/// `PUT /_sim/faults`: replaces the fault settings (a running storm ends).
async fn set_faults(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Json<FaultConfig>, ControlError> {
    let cfg: FaultConfig = parse_body(&body)?;
    cfg.validate().map_err(ControlError::Invalid)?;
    lock(&st.faults).set(cfg.clone());
    tracing::info!(?cfg, "sim fault settings changed");
    Ok(Json(cfg))
}

async fn get_rate_limits(State(st): State<Arc<SimState>>) -> Json<SimRateLimits> {
    Json(lock(&st.throttle).limits().clone())
}

/// `PUT /_sim/rate-limits`: new rates; the buckets restart full.
async fn set_rate_limits(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Json<SimRateLimits>, ControlError> {
    let limits: SimRateLimits = parse_body(&body)?;
    limits.validate().map_err(ControlError::Invalid)?;
    lock(&st.throttle).set_limits(limits.clone(), Instant::now());
    tracing::info!(?limits, "sim rate limits changed");
    Ok(Json(limits))
}

/// A user as `/_sim/users` lists it.
#[derive(Debug, Serialize)]
struct UserState {
    id: String,
    user_principal_name: String,
    display_name: String,
    /// `enabled`, `removed` or `none`.
    licence: &'static str,
    licensed: bool,
    deleted: bool,
    pilot_group: bool,
    interactions: usize,
}

fn user_state(user: &User, pilot: bool, interactions: usize) -> UserState {
    UserState {
        id: user.id.clone(),
        user_principal_name: user.upn.clone(),
        display_name: user.display_name(),
        licence: match user.licence {
            CopilotLicence::None => "none",
            CopilotLicence::Enabled { .. } => "enabled",
            CopilotLicence::Removed { .. } => "removed",
        },
        licensed: user.is_licensed(),
        deleted: user.deleted_ms.is_some(),
        pilot_group: pilot,
        interactions,
    }
}

/// `GET /_sim/users`
async fn list_users(State(st): State<Arc<SimState>>) -> Json<Vec<UserState>> {
    let t = read(&st.tenant);
    Json(
        t.users
            .iter()
            .map(|u| {
                let pilot = t.pilot_members.binary_search(&u.index).is_ok();
                user_state(u, pilot, t.interactions(u.index).len())
            })
            .collect(),
    )
}

/// `POST /_sim/users/{id}/unlicense`
async fn unlicense(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<Json<UserState>, ControlError> {
    change_user(&st, &id, |t, id, now| t.unlicense(id, now).map(|u| u.index))
}

/// `POST /_sim/users/{id}/delete`: the user moves to deleted items.
async fn delete(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<Json<UserState>, ControlError> {
    change_user(&st, &id, |t, id, now| t.delete(id, now).map(|u| u.index))
}

fn change_user(
    st: &SimState,
    id: &str,
    change: impl FnOnce(&mut super::data::Tenant, &str, i64) -> Result<usize, TenantError>,
) -> Result<Json<UserState>, ControlError> {
    let mut t = write(&st.tenant);
    let index = change(&mut t, id, Utc::now().timestamp_millis())?;
    let pilot = t.pilot_members.binary_search(&index).is_ok();
    let user = &t.users[index];
    tracing::info!(user.id = %user.id, "sim changed a user");
    Ok(Json(user_state(user, pilot, t.interactions(index).len())))
}
