//! Teams export routes for messages: `GET /users/{id}/chats/getAllMessages`,
//! `GET /teams/{id}/channels/getAllMessages`, `GET /teamwork/deletedTeams/{id}/channels/getAllMessages`,
//! and the team listings discovery uses (`GET /teams`, `GET /teamwork/deletedTeams`).
//!
//! Like the Copilot export: results unordered (a keyed hash decides), stable across the pages
//! of one query through the snapshot instant in the skiptoken. Each message is served in the
//! version current at that instant, deleted ones for 21 days after deletion. A chat message
//! appears in the export of every member of its chat, byte for byte the same.

use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::data::{mix, Tenant};
use super::error::GraphError;
use super::json::{render, Style, J};
use super::message_filter::{parse_message_filter, MessageFilter, SenderView};
use super::messages::{
    render_message, sender_app_type, sender_user_id, sender_user_type, MsgCtx, Place,
};
use super::odata::{fingerprint, next_link, parse_params, parse_select, parse_top, SkipToken};
use super::page::{page_response, render_page, Origin, PageStyle};
use super::teams_data::{Conv, Message, Version};
use super::{read, SimState};

/// Team listings page at most this many objects, 10 by default (so discovery must page).
const TEAMS_MAX_TOP: u32 = 999;
const TEAMS_DEFAULT_TOP: u32 = 10;
const TEAM_PROPERTIES: &[&str] = &[
    "id",
    "displayName",
    "description",
    "visibility",
    "isArchived",
    "tenantId",
];

/// A parsed getAllMessages request.
struct MessageQuery {
    params: BTreeMap<String, String>,
    filter: MessageFilter,
    top: u32,
    unknown_enums: bool,
}

/// True when a `Prefer` header asks for `include-unknown-enum-members`.
pub(crate) fn wants_unknown_enums(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.trim()
                .eq_ignore_ascii_case("include-unknown-enum-members")
        })
}

fn parse_query(
    st: &SimState,
    uri: &Uri,
    headers: &HeaderMap,
    senders_allowed: bool,
) -> Result<MessageQuery, GraphError> {
    let params = parse_params(uri, &["$filter", "$top", "$skiptoken"])?;
    check_model(st, &params)?;
    let filter = params
        .get("$filter")
        .map(|f| parse_message_filter(f, senders_allowed))
        .transpose()?
        .unwrap_or_default();
    let max = st.teams.max_top;
    let top = parse_top(params.get("$top"), max, max, true)?;
    Ok(MessageQuery {
        params,
        filter,
        top,
        unknown_enums: wants_unknown_enums(headers),
    })
}

/// `model=A|B` (seed 002 "License requirements"); a tenant configured to require it answers
/// 402 without it, as tenants did before Teams APIs stopped being metered.
fn check_model(st: &SimState, params: &BTreeMap<String, String>) -> Result<(), GraphError> {
    match params.get("model").map(|m| m.trim()) {
        Some(m) if m.eq_ignore_ascii_case("A") || m.eq_ignore_ascii_case("B") => Ok(()),
        Some(other) => Err(GraphError::bad_request(format!(
            "Invalid value '{other}' for the model parameter: expected A or B."
        ))),
        None if st.teams.require_model => Err(GraphError::payment_required(
            "Evaluation mode capacity has been exceeded. Use a valid billing model. Visit https://docs.microsoft.com/en-us/graph/teams-licenses for more details.",
        )),
        None => Ok(()),
    }
}

/// `GET /users/{id}/chats/getAllMessages`
pub(crate) async fn chat_messages(
    State(st): State<Arc<SimState>>,
    Path(user_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let q = parse_query(&st, &uri, &headers, true)?;
    let tenant = read(&st.tenant);
    let user = tenant.user(&user_id).ok_or_else(|| {
        GraphError::not_found(format!("The requested user '{user_id}' is invalid."))
    })?;
    let convs: Vec<Conv> = tenant
        .teams
        .user_chats
        .get(user.index)
        .into_iter()
        .flatten()
        .map(|&c| Conv::Chat(c))
        .collect();
    let base = format!("/users/{}/chats/getAllMessages", user.id);
    let fp = fingerprint(&["chats", &user.id, &q.filter.canonical(), &q.top.to_string()]);
    message_page(&st, &tenant, &q, &convs, &base, fp, &uri, &headers)
}

/// `GET /teams/{id}/channels/getAllMessages`: every channel of a live team, hosted or shared.
pub(crate) async fn team_messages(
    State(st): State<Arc<SimState>>,
    Path(team_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    team_page(&st, &team_id, false, &uri, &headers)
}

/// `GET /teamwork/deletedTeams/{id}/channels/getAllMessages`
pub(crate) async fn deleted_team_messages(
    State(st): State<Arc<SimState>>,
    Path(team_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    team_page(&st, &team_id, true, &uri, &headers)
}

fn team_page(
    st: &SimState,
    team_id: &str,
    deleted: bool,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, GraphError> {
    let q = parse_query(st, uri, headers, false)?;
    let tenant = read(&st.tenant);
    let team = tenant
        .teams
        .team_index(team_id)
        .map(|i| &tenant.teams.teams[i])
        .filter(|t| t.deleted_ms.is_some() == deleted)
        .ok_or_else(|| GraphError::not_found(format!("No team found with Group Id {team_id}")))?;
    let convs: Vec<Conv> = team.channels.iter().map(|&c| Conv::Channel(c)).collect();
    let base = if deleted {
        format!("/teamwork/deletedTeams/{}/channels/getAllMessages", team.id)
    } else {
        format!("/teams/{}/channels/getAllMessages", team.id)
    };
    let fp = fingerprint(&[
        "channels",
        &team.id,
        &q.filter.canonical(),
        &q.top.to_string(),
    ]);
    message_page(st, &tenant, &q, &convs, &base, fp, uri, headers)
}

/// One candidate of a page: a message in the version served at the snapshot instant.
struct Hit<'t> {
    conv: Conv,
    msg: &'t Message,
    version: &'t Version,
    order: u64,
}

#[allow(clippy::too_many_arguments)]
fn message_page(
    st: &SimState,
    tenant: &Tenant,
    q: &MessageQuery,
    convs: &[Conv],
    base_path: &str,
    fp: u64,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, GraphError> {
    let token = q
        .params
        .get("$skiptoken")
        .map(|t| SkipToken::decode(t, fp))
        .transpose()?;
    let as_of_ms = token.map_or_else(|| Utc::now().timestamp_millis(), |t| t.as_of_ms);
    let skip = token.map_or(0, |t| t.skip as usize);
    let mut hits = matching(st, tenant, q, convs, fp, as_of_ms);
    hits.sort_by_key(|h| h.order);
    let items: Vec<String> = hits
        .iter()
        .skip(skip)
        .take(q.top as usize)
        .map(|h| {
            let ctx = MsgCtx {
                seed: st.seed,
                tenant_id: &st.tenant_id,
                users: &tenant.users,
                place: place(tenant, h.conv),
                unknown_enums: q.unknown_enums,
            };
            render_message(&ctx, h.msg, h.version)
        })
        .collect();
    let origin = Origin::new(uri, headers);
    let next = (skip + (q.top as usize) < hits.len()).then(|| {
        let token = SkipToken {
            skip: (skip + q.top as usize) as u64,
            as_of_ms,
            fingerprint: fp,
        };
        let options = [
            ("$filter", q.params.get("$filter").map(String::as_str)),
            ("$top", q.params.get("$top").map(String::as_str)),
            ("model", q.params.get("model").map(String::as_str)),
        ];
        next_link(&format!("{}{base_path}", origin.root()), &options, &token)
    });
    let context = origin.context("Collection(chatMessage)");
    let style = PageStyle::varied(mix(fp, skip as u64));
    Ok(page_response(render_page(
        &context,
        true,
        next.as_deref(),
        &items,
        style,
    )))
}

fn matching<'t>(
    st: &SimState,
    tenant: &'t Tenant,
    q: &MessageQuery,
    convs: &[Conv],
    fp: u64,
    as_of_ms: i64,
) -> Vec<Hit<'t>> {
    let mut hits = Vec::new();
    for &conv in convs {
        let salt = match conv {
            Conv::Chat(i) => u64::from(i),
            Conv::Channel(i) => u64::from(i) | 1 << 40,
        };
        for msg in tenant.teams.conversation(conv).iter() {
            let Some(version) = msg.version_at(as_of_ms) else {
                continue;
            };
            if !version.exportable(as_of_ms) {
                continue;
            }
            let user_id = sender_user_id(&tenant.users, msg.sender);
            let view = SenderView {
                user_id: user_id.as_deref(),
                user_type: sender_user_type(msg.sender),
                app_type: sender_app_type(msg.sender),
                system: msg.is_system(),
            };
            if !q.filter.matches(version.modified_ms, &view) {
                continue;
            }
            let order = mix(mix(st.seed ^ fp, salt), msg.id_ms as u64);
            hits.push(Hit {
                conv,
                msg,
                version,
                order,
            });
        }
    }
    hits
}

/// Where a conversation's messages say they live.
pub(crate) fn place(tenant: &Tenant, conv: Conv) -> Place<'_> {
    match conv {
        Conv::Chat(i) => Place::Chat {
            id: &tenant.teams.chats[i as usize].id,
        },
        Conv::Channel(i) => {
            let channel = &tenant.teams.channels[i as usize];
            Place::Channel {
                team_id: &tenant.teams.teams[channel.host as usize].id,
                channel_id: &channel.id,
            }
        }
    }
}

/// `GET /teams`: live teams.
pub(crate) async fn list_teams(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    team_listing(&st, &uri, &headers, false)
}

/// `GET /teamwork/deletedTeams`: deleted teams (their messages stay exportable).
pub(crate) async fn list_deleted_teams(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    team_listing(&st, &uri, &headers, true)
}

fn team_listing(
    st: &SimState,
    uri: &Uri,
    headers: &HeaderMap,
    deleted: bool,
) -> Result<Response, GraphError> {
    let params = parse_params(uri, &["$select", "$top", "$skiptoken"])?;
    let select = parse_select(
        params.get("$select"),
        TEAM_PROPERTIES,
        "microsoft.graph.team",
    )?;
    let top = parse_top(params.get("$top"), TEAMS_DEFAULT_TOP, TEAMS_MAX_TOP, false)?;
    let path = if deleted {
        "/teamwork/deletedTeams"
    } else {
        "/teams"
    };
    let select_raw = params.get("$select").map_or("", String::as_str);
    let fp = fingerprint(&[path, select_raw, &top.to_string()]);
    let skip = params
        .get("$skiptoken")
        .map(|t| SkipToken::decode(t, fp))
        .transpose()?
        .map_or(0, |t| t.skip as usize);
    let (items, more) = {
        let tenant = read(&st.tenant);
        let all: Vec<J> = tenant
            .teams
            .teams
            .iter()
            .filter(|t| t.deleted_ms.is_some() == deleted && t.purged_ms.is_none())
            .map(|t| team_object(st, t, deleted, select.as_deref()))
            .collect();
        let items: Vec<String> = all
            .iter()
            .skip(skip)
            .take(top as usize)
            .map(|j| render(j, &Style::COMPACT))
            .collect();
        (items, skip + (top as usize) < all.len())
    };
    let origin = Origin::new(uri, headers);
    let next = more.then(|| {
        let token = SkipToken {
            skip: (skip + top as usize) as u64,
            as_of_ms: 0,
            fingerprint: fp,
        };
        let options = [
            ("$select", params.get("$select").map(String::as_str)),
            ("$top", params.get("$top").map(String::as_str)),
        ];
        next_link(&format!("{}{path}", origin.root()), &options, &token)
    });
    let context = origin.context(if deleted {
        "teamwork/deletedTeams"
    } else {
        "teams"
    });
    Ok(page_response(render_page(
        &context,
        false,
        next.as_deref(),
        &items,
        PageStyle::COMPACT,
    )))
}

fn team_object(
    st: &SimState,
    t: &super::teams_data::Team,
    deleted: bool,
    select: Option<&[String]>,
) -> J {
    if deleted {
        // A deletedTeam carries its id only.
        return J::obj(vec![("id", J::str(t.id.clone()))]);
    }
    let all = vec![
        ("id", J::str(t.id.clone())),
        ("displayName", J::str(t.name.clone())),
        ("description", J::str(format!("{} – team site", t.name))),
        ("visibility", J::str("private")),
        ("isArchived", J::Bool(false)),
        ("tenantId", J::str(st.tenant_id.clone())),
    ];
    let members = match select {
        None => all,
        Some(fields) => all
            .into_iter()
            .filter(|(k, _)| fields.iter().any(|f| f.eq_ignore_ascii_case(k)))
            .collect(),
    };
    J::obj(members)
}
