//! `GET /copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions` and the
//! Copilot part of the ground truth.
//!
//! Results are unordered (a keyed hash of seed, user and id decides the order, never time),
//! stable across the pages of one query: the first page fixes a snapshot instant carried in
//! the skiptoken, so records that become visible later wait for the next sweep instead of
//! shifting offsets.

use axum::extract::{OriginalUri, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::data::{format_ms, mix, Interaction, Kind, User};
use super::error::GraphError;
use super::odata::{
    fingerprint, next_link, parse_interaction_filter, parse_params, parse_top, SkipToken,
};
use super::page::{page_response, render_page, Origin, PageStyle};
use super::render::{self, order_key, RecordCtx};
use super::{read, SimState};

/// `GET /copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions`
pub(crate) async fn interactions(
    State(st): State<Arc<SimState>>,
    Path(user_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let params = parse_params(&uri, &["$filter", "$top", "$skiptoken"])?;
    let filter = params
        .get("$filter")
        .map(|f| parse_interaction_filter(f))
        .transpose()?
        .unwrap_or_default();
    let top = parse_top(params.get("$top"), st.max_top, st.max_top, true)?;
    let (user, records) = exportable_user(&st, &user_id)?;
    let fp = fingerprint(&["copilot", &user.id, &filter.canonical(), &top.to_string()]);
    let token = params
        .get("$skiptoken")
        .map(|t| SkipToken::decode(t, fp))
        .transpose()?;
    let as_of_ms = token.map_or_else(|| Utc::now().timestamp_millis(), |t| t.as_of_ms);
    let skip = token.map_or(0, |t| t.skip as usize);

    let mut matching: Vec<&Interaction> = records
        .iter()
        .filter(|i| i.visible_from_ms <= as_of_ms && filter.matches(i.created_ms, i.app.as_str()))
        .collect();
    matching.sort_by_cached_key(|i| order_key(st.seed, user.index, i.created_ms));
    let ctx = RecordCtx {
        seed: st.seed,
        tenant_id: &st.tenant_id,
        user: &user,
    };
    let items: Vec<String> = matching
        .iter()
        .skip(skip)
        .take(top as usize)
        .map(|i| render::interaction(&ctx, i))
        .collect();
    let origin = Origin::new(&uri, &headers);
    let next = (skip + (top as usize) < matching.len()).then(|| {
        let token = SkipToken {
            skip: (skip + top as usize) as u64,
            as_of_ms,
            fingerprint: fp,
        };
        let base = format!(
            "{}/copilot/users/{}/interactionHistory/getAllEnterpriseInteractions",
            origin.root(),
            user.id
        );
        let options = [
            ("$filter", params.get("$filter").map(String::as_str)),
            ("$top", params.get("$top").map(String::as_str)),
        ];
        next_link(&base, &options, &token)
    });
    let context = origin.context("Collection(microsoft.graph.aiInteraction)");
    let style = PageStyle::varied(mix(fp, skip as u64));
    Ok(page_response(render_page(
        &context,
        true,
        next.as_deref(),
        &items,
        style,
    )))
}

/// The user and a snapshot of their interactions, or Graph's 404 / 403.
fn exportable_user(
    st: &SimState,
    user_id: &str,
) -> Result<(User, Arc<Vec<Interaction>>), GraphError> {
    let tenant = read(&st.tenant);
    let user = tenant.user(user_id).ok_or_else(|| {
        GraphError::not_found(format!("The requested user '{user_id}' is invalid."))
    })?;
    // A deleted user keeps the licence it had, so its history stays exportable.
    if !user.is_licensed() {
        return Err(GraphError::forbidden(format!(
            "Access denied: the user '{user_id}' is not licensed for Microsoft 365 Copilot."
        )));
    }
    Ok((user.clone(), tenant.interactions(user.index)))
}

/// One record as listed by `/_sim/ground-truth`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TruthRecord {
    pub source: &'static str,
    pub scope: String,
    pub id: String,
    pub etag: String,
    pub sha256: String,
    pub created: String,
    pub visible_from: String,
    /// The export API currently serves this record (its user is licensed).
    pub exportable: bool,
    pub interaction_type: &'static str,
    /// The identity parts an archiver keys this record on: user id, interaction id.
    pub parts: Vec<String>,
}

/// The ground truth of one Copilot record: the hash of the exact bytes served.
pub(crate) fn truth(seed: u64, tenant_id: &str, user: &User, it: &Interaction) -> TruthRecord {
    let ctx = RecordCtx {
        seed,
        tenant_id,
        user,
    };
    let bytes = render::interaction(&ctx, it);
    let id = it.created_ms.to_string();
    TruthRecord {
        source: "copilot",
        scope: user.id.clone(),
        etag: id.clone(),
        parts: vec![user.id.clone(), id.clone()],
        id,
        sha256: hex::encode(Sha256::digest(bytes.as_bytes())),
        created: format_ms(it.created_ms),
        visible_from: format_ms(it.visible_from_ms),
        exportable: user.is_licensed(),
        interaction_type: match it.kind {
            Kind::Prompt => "userPrompt",
            Kind::Response => "aiResponse",
            Kind::Unknown => "unknownFutureValue",
        },
    }
}
