//! The Teams part of the harness API under `/_sim`: changes to messages while an export runs
//! (edit, react, delete, random churn), team deletion, and the ground truth of the chats,
//! channels, transcripts and recordings sources.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::chats::place;
use super::data::{format_ms, Tenant};
use super::meetings::{
    format_ticks, recording_sha256, render_artifact, transcript_vtt, ArtifactKind, Synthetic,
};
use super::messages::{message_type, render_message, MsgCtx};
use super::page::Origin;
use super::teams_data::{Action, ChurnReport, Conv, Message, TeamsError};
use super::{read, write, SimState};

/// The Teams sources the ground truth knows.
pub(crate) const TEAMS_SOURCES: &[&str] = &["chats", "channels", "transcripts", "recordings"];

/// One record version as `/_sim/ground-truth` lists it for a Teams source.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TeamsTruth {
    pub source: &'static str,
    /// The chat, the hosting team, or the organizer.
    pub scope: String,
    pub id: String,
    /// The record's etag; createdDateTime for meeting artifacts, which carry none.
    pub etag: String,
    pub sha256: String,
    pub created: String,
    pub visible_from: String,
    /// lastModifiedDateTime (the date the export windows filter on) or createdDateTime.
    pub modified: String,
    /// Served by the export API now (deleted messages only for 21 days).
    pub exportable: bool,
    /// A later version replaced this one while the simulator ran: an archiver may have caught
    /// it (then it must be byte-exact) or not.
    pub superseded: bool,
    /// The identity parts an archiver keys this record on, outermost first.
    pub parts: Vec<String>,
    pub message_type: Option<&'static str>,
    pub content: Option<ContentTruth>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ContentTruth {
    pub sha256: String,
    pub size: u64,
    pub extension: &'static str,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every record version of a Teams source that exists, visible now or superseded.
pub(crate) fn truth(st: &SimState, source: &str, headers: &HeaderMap) -> Vec<TeamsTruth> {
    let now_ms = Utc::now().timestamp_millis();
    let tenant = read(&st.tenant);
    match source {
        "chats" => (0..tenant.teams.chats.len() as u32)
            .flat_map(|i| message_truths(st, &tenant, Conv::Chat(i), now_ms))
            .collect(),
        "channels" => (0..tenant.teams.channels.len() as u32)
            .flat_map(|i| message_truths(st, &tenant, Conv::Channel(i), now_ms))
            .collect(),
        "transcripts" => artifact_truths(st, &tenant, ArtifactKind::Transcript, headers, now_ms),
        "recordings" => artifact_truths(st, &tenant, ArtifactKind::Recording, headers, now_ms),
        _ => Vec::new(),
    }
}

fn message_truths(st: &SimState, tenant: &Tenant, conv: Conv, now_ms: i64) -> Vec<TeamsTruth> {
    let (source, scope, outer) = match conv {
        Conv::Chat(i) => {
            let id = tenant.teams.chats[i as usize].id.clone();
            ("chats", id.clone(), vec![id])
        }
        Conv::Channel(i) => {
            let c = &tenant.teams.channels[i as usize];
            let team = tenant.teams.teams[c.host as usize].id.clone();
            ("channels", team.clone(), vec![team, c.id.clone()])
        }
    };
    let ctx = MsgCtx {
        seed: st.seed,
        tenant_id: &st.tenant_id,
        users: &tenant.users,
        place: place(tenant, conv),
        unknown_enums: true,
    };
    let mut out = Vec::new();
    for m in tenant.teams.conversation(conv).iter() {
        out.extend(versions_of(&ctx, m, source, &scope, &outer, now_ms));
    }
    out
}

fn versions_of(
    ctx: &MsgCtx<'_>,
    m: &Message,
    source: &'static str,
    scope: &str,
    outer: &[String],
    now_ms: i64,
) -> Vec<TeamsTruth> {
    let visible: Vec<_> = m
        .versions
        .iter()
        .filter(|v| v.visible_from_ms <= now_ms)
        .collect();
    let last = visible.len().saturating_sub(1);
    visible
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let mut parts = outer.to_vec();
            parts.push(m.id_ms.to_string());
            TeamsTruth {
                source,
                scope: scope.to_owned(),
                id: m.id_ms.to_string(),
                etag: v.modified_ms.to_string(),
                sha256: sha256_hex(render_message(ctx, m, v).as_bytes()),
                created: format_ms(m.id_ms),
                visible_from: format_ms(v.visible_from_ms),
                modified: format_ms(v.modified_ms),
                exportable: v.exportable(now_ms),
                superseded: k < last,
                parts,
                message_type: Some(message_type(m, true)),
                content: None,
            }
        })
        .collect()
}

fn artifact_truths(
    st: &SimState,
    tenant: &Tenant,
    kind: ArtifactKind,
    headers: &HeaderMap,
    now_ms: i64,
) -> Vec<TeamsTruth> {
    let origin = Origin::new(&axum::http::Uri::from_static("/v1.0/"), headers);
    let (source, extension) = match kind {
        ArtifactKind::Transcript => ("transcripts", "vtt"),
        ArtifactKind::Recording => ("recordings", "mp4"),
    };
    let mut out = Vec::new();
    for m in &tenant.teams.meetings {
        let organizer = tenant
            .users
            .get(m.organizer as usize)
            .map(|u| u.id.clone())
            .unwrap_or_default();
        for a in kind.list(m) {
            let content = match kind {
                ArtifactKind::Transcript => {
                    let vtt = transcript_vtt(tenant, m, a);
                    ContentTruth {
                        sha256: sha256_hex(vtt.as_bytes()),
                        size: vtt.len() as u64,
                        extension,
                    }
                }
                ArtifactKind::Recording => ContentTruth {
                    sha256: recording_sha256(st, Synthetic::of(a)),
                    size: a.size,
                    extension,
                },
            };
            let created = format_ticks(a.created_ticks);
            out.push(TeamsTruth {
                source,
                scope: organizer.clone(),
                id: a.id.clone(),
                etag: created.clone(),
                sha256: sha256_hex(render_artifact(st, tenant, &origin, kind, m, a).as_bytes()),
                created: created.clone(),
                visible_from: format_ms(a.created_ms()),
                modified: created,
                exportable: a.created_ms() <= now_ms,
                superseded: false,
                parts: vec![organizer.clone(), m.id.clone(), a.id.clone()],
                message_type: None,
                content: Some(content),
            });
        }
    }
    out
}

/// A refused Teams control request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TeamsControlError {
    #[error("invalid request body: {0}")]
    Body(String),
    #[error(transparent)]
    Teams(#[from] TeamsError),
}

impl IntoResponse for TeamsControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            TeamsControlError::Body(_) => StatusCode::BAD_REQUEST,
            TeamsControlError::Teams(TeamsError::Deleted(_) | TeamsError::TeamDeleted(_)) => {
                StatusCode::CONFLICT
            }
            TeamsControlError::Teams(_) => StatusCode::NOT_FOUND,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

/// Body of `POST /_sim/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    /// A chat id or a channel id.
    conversation: String,
    message_id: String,
    action: Action,
}

#[derive(Debug, Serialize)]
pub(crate) struct Changed {
    conversation: String,
    message_id: String,
    etag: String,
    last_modified: String,
}

/// `POST /_sim/messages`: edits, reacts to or deletes one message now.
pub(crate) async fn change_message(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Json<Changed>, TeamsControlError> {
    let req: Change =
        serde_json::from_slice(&body).map_err(|e| TeamsControlError::Body(e.to_string()))?;
    let now_ms = Utc::now().timestamp_millis();
    let (_, id_ms, v) =
        write(&st.tenant)
            .teams
            .change(&req.conversation, &req.message_id, req.action, now_ms)?;
    tracing::debug!(action = ?req.action, "sim changed a message");
    Ok(Json(Changed {
        conversation: req.conversation,
        message_id: id_ms.to_string(),
        etag: v.modified_ms.to_string(),
        last_modified: format_ms(v.modified_ms),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Churn {
    count: u32,
}

/// `POST /_sim/messages/churn`: `count` random posts, edits, reactions and deletions now.
pub(crate) async fn churn(
    State(st): State<Arc<SimState>>,
    body: Bytes,
) -> Result<Json<ChurnReport>, TeamsControlError> {
    let req: Churn =
        serde_json::from_slice(&body).map_err(|e| TeamsControlError::Body(e.to_string()))?;
    let now_ms = Utc::now().timestamp_millis();
    let report = write(&st.tenant)
        .teams
        .churn(st.seed, req.count.min(10_000), now_ms);
    Ok(Json(report))
}

/// `POST /_sim/teams/{id}/delete`: the team moves to `/teamwork/deletedTeams`.
/// A chat and its members (user ids), for tests of what a hold on a member covers.
#[derive(Debug, Serialize)]
pub(crate) struct ChatMembers {
    id: String,
    members: Vec<String>,
}

/// `GET /_sim/chats`: every chat with its members.
pub(crate) async fn chat_members(State(st): State<Arc<SimState>>) -> Json<Vec<ChatMembers>> {
    let tenant = read(&st.tenant);
    let user_id = |m: &u32| tenant.users.get(*m as usize).map(|u| u.id.clone());
    Json(
        tenant
            .teams
            .chats
            .iter()
            .map(|c| ChatMembers {
                id: c.id.clone(),
                members: c.members.iter().filter_map(user_id).collect(),
            })
            .collect(),
    )
}

pub(crate) async fn delete_team(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, TeamsControlError> {
    let now_ms = Utc::now().timestamp_millis();
    write(&st.tenant).teams.delete_team(&id, now_ms)?;
    tracing::info!(team.id = %id, "sim deleted a team");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /_sim/teams/{id}/purge`: the team is deleted for good; Graph answers 404 for it.
pub(crate) async fn purge_team(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, TeamsControlError> {
    let now_ms = Utc::now().timestamp_millis();
    write(&st.tenant).teams.purge_team(&id, now_ms)?;
    tracing::info!(team.id = %id, "sim purged a team");
    Ok(StatusCode::NO_CONTENT)
}
