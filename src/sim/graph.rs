//! Graph routes under `/v1.0` and `/beta`, and the gate every Graph request passes:
//! bearer token, throttling, faults, error rendering, request ids and statistics.
//! Directory listings (users, group members, deleted users) live here; each export
//! source has its own module (`copilot`, later chats, channels, meetings).

use axum::body::to_bytes;
use axum::extract::{OriginalUri, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::data::{Tenant, User, COPILOT_PLANS, E5_PLANS, E5_SKU, PILOT_GROUP_ID};
use super::error::{finish, GraphError, RequestIds};
use super::faults::{apply_body_fault, BodyFault, Plan, Refusal};
use super::json::{render, Style, J};
use super::meetings::Streamed;
use super::odata::{
    fingerprint, next_link, parse_params, parse_select, parse_top, parse_user_filter, SkipToken,
    UserFilter,
};
use super::page::{page_response, render_page, Origin, PageStyle};
use super::render::{user_object, USER_PROPERTIES};
use super::throttle::ResourceKey;
use super::throttle::RouteClass;
use super::{chats, copilot, meetings};
use super::{lock, read, SimState, COPILOT_SKU};

/// Directory listings page at most this many objects.
const DIRECTORY_MAX_TOP: u32 = 999;
const DIRECTORY_DEFAULT_TOP: u32 = 100;

/// The Graph API, mounted under both versions.
pub(crate) fn router(state: Arc<SimState>) -> Router<Arc<SimState>> {
    let api = Router::new()
        .route("/users", get(users))
        .route(
            "/groups/{id}/transitiveMembers/microsoft.graph.user",
            get(group_members),
        )
        .route(
            "/directory/deletedItems/microsoft.graph.user",
            get(deleted_users),
        )
        .route(
            "/copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions",
            get(copilot::interactions),
        )
        .route(
            "/copilot/interactionHistory/getAllEnterpriseInteractions",
            get(tenant_wide_interactions),
        )
        .route(
            "/users/{id}/chats/getAllMessages",
            get(chats::chat_messages),
        )
        .route("/teams", get(chats::list_teams))
        .route(
            "/teams/{id}/channels/getAllMessages",
            get(chats::team_messages),
        )
        .route("/teamwork/deletedTeams", get(chats::list_deleted_teams))
        .route(
            "/teamwork/deletedTeams/{id}/channels/getAllMessages",
            get(chats::deleted_team_messages),
        )
        .route(
            "/users/{id}/onlineMeetings/{function}",
            get(meetings::artifacts),
        )
        .route(
            "/users/{id}/onlineMeetings/{meeting}/transcripts/{item}/content",
            get(meetings::transcript_content),
        )
        .route(
            "/users/{id}/onlineMeetings/{meeting}/recordings/{item}/content",
            get(meetings::recording_content),
        )
        .merge(super::subscriptions::router())
        .fallback(unknown_segment)
        .layer(middleware::from_fn_with_state(state, gate));
    Router::new().nest("/v1.0", api.clone()).nest("/beta", api)
}

/// Authentication, throttling and faults around every Graph request.
async fn gate(State(st): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let ids = RequestIds::from_headers(req.headers());
    let class = RouteClass::of_path(req.uri().path());
    let resource = ResourceKey::of_path(req.uri().path());
    let resp = match admit(&st, req.headers(), class, resource) {
        Err(e) => e.into_response(),
        Ok(plan) => run_with_faults(&st, req, next, plan).await,
    };
    let resp = finish(resp, &ids);
    tracing::debug!(
        route.class = class.as_str(),
        http.status = resp.status().as_u16(),
        request.id = %ids.request_id,
        "sim answered a Graph request"
    );
    lock(&st.stats).record(class.as_str(), resp.status().as_u16(), Utc::now());
    resp
}

/// Checks the token, takes a throttle token and plans faults.
fn admit(
    st: &SimState,
    headers: &HeaderMap,
    class: RouteClass,
    resource: Option<ResourceKey>,
) -> Result<Plan, GraphError> {
    let now = Instant::now();
    st.auth
        .check_bearer(headers.get(header::AUTHORIZATION), now)
        .map_err(GraphError::unauthorized)?;
    if let Err(wait) = lock(&st.throttle).admit_keyed(class, resource, now) {
        lock(&st.stats).throttled += 1;
        return Err(GraphError::throttled(wait));
    }
    let plan = lock(&st.faults).plan(now);
    match plan.refusal {
        None => Ok(plan),
        Some(refusal) => Err(refuse(st, refusal)),
    }
}

fn refuse(st: &SimState, refusal: Refusal) -> GraphError {
    let mut stats = lock(&st.stats);
    match refusal {
        Refusal::Storm { remaining } => {
            stats.fault("storm_429");
            GraphError::throttled(remaining)
        }
        Refusal::ExpiredToken => {
            stats.fault("expired_token");
            GraphError::unauthorized("Access token has expired or is not yet valid.")
        }
        Refusal::ServerError {
            status,
            retry_after,
        } => {
            stats.fault("error");
            GraphError::server(status, retry_after)
        }
    }
}

async fn run_with_faults(st: &SimState, req: Request, next: Next, plan: Plan) -> Response {
    if let Some(delay) = plan.delay {
        lock(&st.stats).fault("slow");
        tokio::time::sleep(delay).await;
    }
    let resp = next.run(req).await;
    let streamed = resp.extensions().get::<Streamed>().copied();
    let stream_reset = match plan.body {
        Some(BodyFault::Reset { keep }) => Some(keep),
        _ => plan.content_reset,
    };
    match (plan.body, streamed) {
        // Content is streamed: it is never buffered here, and only a reset mid-transfer
        // applies (a cut body with a matching Content-Length would be undetectable for binary
        // content, and Graph does not do that).
        (_, Some(s)) => match stream_reset {
            Some(keep) if resp.status().is_success() => {
                lock(&st.stats).fault("reset");
                let (parts, body) = resp.into_parts();
                super::faults::reset_stream(parts, body, (s.len as f64 * keep) as u64)
            }
            _ => resp,
        },
        (Some(fault), None) if resp.status() == StatusCode::OK => {
            lock(&st.stats).fault(match fault {
                BodyFault::Reset { .. } => "reset",
                BodyFault::Truncated { .. } => "truncated",
                BodyFault::Malformed { .. } => "malformed",
            });
            let (parts, body) = resp.into_parts();
            match to_bytes(body, usize::MAX).await {
                Ok(bytes) => apply_body_fault(parts, bytes, fault),
                Err(_) => GraphError::server(500, None).into_response(),
            }
        }
        _ => resp,
    }
}

async fn unknown_segment(OriginalUri(uri): OriginalUri) -> GraphError {
    let segment = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
    GraphError::bad_request(format!("Resource not found for the segment '{segment}'."))
}

/// Documented only as a change-notification resource; a plain GET is reported to 404.
async fn tenant_wide_interactions() -> GraphError {
    GraphError::not_found(
        "Resource not found. The tenant-wide interaction history can only be subscribed to.",
    )
}

/// Which directory objects a listing walks.
enum Listing {
    Users(Option<UserFilter>),
    Pilot,
    Deleted,
}

/// `GET /users`
async fn users(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let params = parse_params(&uri, &["$select", "$top", "$skiptoken", "$filter"])?;
    let filter = params
        .get("$filter")
        .map(|f| parse_user_filter(f))
        .transpose()?;
    let origin = Origin::new(&uri, &headers);
    directory_page(&st, &origin, &params, Listing::Users(filter))
}

/// `GET /groups/{id}/transitiveMembers/microsoft.graph.user`
async fn group_members(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    if !id.eq_ignore_ascii_case(PILOT_GROUP_ID) {
        return Err(GraphError::resource_not_found(&id));
    }
    let params = parse_params(&uri, &["$select", "$top", "$skiptoken"])?;
    let origin = Origin::new(&uri, &headers);
    directory_page(&st, &origin, &params, Listing::Pilot)
}

/// `GET /directory/deletedItems/microsoft.graph.user`
async fn deleted_users(
    State(st): State<Arc<SimState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let params = parse_params(&uri, &["$select", "$top", "$skiptoken"])?;
    let origin = Origin::new(&uri, &headers);
    directory_page(&st, &origin, &params, Listing::Deleted)
}

impl Listing {
    fn path(&self) -> String {
        match self {
            Listing::Users(_) => "/users".to_owned(),
            Listing::Pilot => {
                format!("/groups/{PILOT_GROUP_ID}/transitiveMembers/microsoft.graph.user")
            }
            Listing::Deleted => "/directory/deletedItems/microsoft.graph.user".to_owned(),
        }
    }

    fn context(&self, select: Option<&[String]>) -> String {
        let base = match self {
            Listing::Users(_) => "users",
            Listing::Pilot => "directoryObjects/microsoft.graph.user",
            Listing::Deleted => "directory/deletedItems/microsoft.graph.user",
        };
        match select {
            Some(fields) => format!("{base}({})", fields.join(",")),
            None => base.to_owned(),
        }
    }

    /// Candidates from user index `start` on, in ascending index order (the keyset a
    /// skiptoken continues from).
    fn candidates<'t>(
        &'t self,
        t: &'t Tenant,
        start: usize,
    ) -> Box<dyn Iterator<Item = &'t User> + 't> {
        let from = t.users.get(start..).unwrap_or_default().iter();
        match self {
            Listing::Users(filter) => Box::new(
                from.filter(|u| u.deleted_ms.is_none())
                    .filter(move |u| filter.as_ref().is_none_or(|f| user_matches(u, f))),
            ),
            Listing::Pilot => {
                let pos = t.pilot_members.partition_point(|&i| i < start);
                Box::new(
                    t.pilot_members[pos..]
                        .iter()
                        .filter_map(|&i| t.users.get(i))
                        .filter(|u| u.deleted_ms.is_none()),
                )
            }
            Listing::Deleted => Box::new(from.filter(|u| u.deleted_ms.is_some())),
        }
    }
}

/// Graph's `any()` matches plans whatever their capabilityStatus, removed licences too.
fn user_matches(user: &User, filter: &UserFilter) -> bool {
    use super::data::CopilotLicence;
    match filter {
        UserFilter::Sku(sku) => sku == E5_SKU || (sku == COPILOT_SKU && user.is_licensed()),
        UserFilter::Plan(plan) => {
            let copilot_plans = match user.licence {
                CopilotLicence::None => 0,
                CopilotLicence::Enabled { plans } | CopilotLicence::Removed { plans, .. } => plans,
            };
            E5_PLANS.iter().any(|(id, _)| id == plan)
                || COPILOT_PLANS
                    .iter()
                    .enumerate()
                    .any(|(bit, (id, _))| id == plan && copilot_plans & (1 << bit) != 0)
        }
    }
}

fn directory_page(
    st: &SimState,
    origin: &Origin,
    params: &BTreeMap<String, String>,
    listing: Listing,
) -> Result<Response, GraphError> {
    let select = parse_select(
        params.get("$select"),
        USER_PROPERTIES,
        "microsoft.graph.user",
    )?;
    let top = parse_top(
        params.get("$top"),
        DIRECTORY_DEFAULT_TOP,
        DIRECTORY_MAX_TOP,
        false,
    )?;
    let path = listing.path();
    let filter = params.get("$filter").map_or("", String::as_str);
    let select_raw = params.get("$select").map_or("", String::as_str);
    let fp = fingerprint(&[&path, filter, select_raw, &top.to_string()]);
    let start = params
        .get("$skiptoken")
        .map(|t| SkipToken::decode(t, fp))
        .transpose()?
        .map_or(0, |t| t.skip as usize);
    let tagged = matches!(listing, Listing::Pilot | Listing::Deleted);
    let (items, next_index) = {
        let tenant = read(&st.tenant);
        let mut items = Vec::new();
        let mut next = None;
        for user in listing.candidates(&tenant, start) {
            if items.len() == top as usize {
                next = Some(user.index);
                break;
            }
            items.push(render_user(user, select.as_deref(), tagged));
        }
        (items, next)
    };
    let next = next_index.map(|i| {
        let token = SkipToken {
            skip: i as u64,
            as_of_ms: 0,
            fingerprint: fp,
        };
        let options = [
            ("$filter", params.get("$filter").map(String::as_str)),
            ("$select", params.get("$select").map(String::as_str)),
            ("$top", params.get("$top").map(String::as_str)),
        ];
        next_link(&format!("{}{path}", origin.root()), &options, &token)
    });
    let context = origin.context(&listing.context(select.as_deref()));
    Ok(page_response(render_page(
        &context,
        false,
        next.as_deref(),
        &items,
        PageStyle::COMPACT,
    )))
}

fn render_user(user: &User, select: Option<&[String]>, tagged: bool) -> String {
    let mut obj = user_object(user, select);
    if let (true, J::Obj(members)) = (tagged, &mut obj) {
        members.insert(0, ("@odata.type", J::str("#microsoft.graph.user")));
    }
    render(&obj, &Style::COMPACT)
}
