//! Discovery of the users to archive: Copilot-licensed users by SKU or service plan, the
//! transitive members of a group, or an explicit list. Users that disappear are remembered by
//! the state database and given a final sweep by the scheduler.

use crate::config::DiscoveryConfig;
use crate::graph::{Endpoint, GraphClient, GraphError};
use crate::state::{ScopeRecord, ScopeSync, StateDb, StateError};
use chrono::Utc;
use serde::Deserialize;
use std::collections::BTreeMap;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovering users ({what}): {source}")]
    Graph {
        what: String,
        #[source]
        source: GraphError,
    },
    #[error("discovering users: a user object without an id in {what}")]
    BadUser { what: String },
    #[error(transparent)]
    State(#[from] StateError),
    /// Discovery of teams or meeting organizers (see `discovery/teams.rs`).
    #[error("discovering {what}: {source}")]
    Scopes {
        what: &'static str,
        #[source]
        source: GraphError,
    },
    #[error("discovering {what}: an object without an id in the listing")]
    BadObject { what: &'static str },
}

mod teams;
pub use teams::sync_teams_and_organizers;

#[derive(Deserialize)]
struct UserRow {
    id: Option<String>,
    #[serde(rename = "userPrincipalName")]
    upn: Option<String>,
    #[serde(rename = "assignedPlans", default)]
    assigned_plans: Option<Vec<AssignedPlan>>,
}

#[derive(Deserialize)]
struct AssignedPlan {
    #[serde(rename = "servicePlanId")]
    service_plan_id: Option<String>,
    #[serde(rename = "capabilityStatus")]
    capability_status: Option<String>,
}

impl UserRow {
    /// A removed licence leaves its plans in assignedPlans with capabilityStatus "Deleted"
    /// (or "Suspended"), and the server-side filter still matches them: only Enabled counts.
    fn has_enabled_plan(&self, plans: &[String]) -> bool {
        self.assigned_plans.iter().flatten().any(|p| {
            p.capability_status.as_deref() == Some("Enabled")
                && p.service_plan_id
                    .as_deref()
                    .is_some_and(|id| plans.iter().any(|want| want.eq_ignore_ascii_case(id)))
        })
    }
}

/// Which users of a listing to keep.
enum Keep<'a> {
    All,
    EnabledPlan(&'a [String]),
}

/// Lists the users in scope now, then records them (and those that left) in the state database.
pub async fn sync_users(
    graph: &GraphClient,
    state: &StateDb,
    cfg: &DiscoveryConfig,
) -> Result<ScopeSync, DiscoveryError> {
    let users = discover_users(graph, cfg).await?;
    let sync = state.sync_scopes("user", &users, Utc::now()).await?;
    tracing::info!(
        users = sync.present,
        added = sync.added,
        departed = sync.newly_gone.len(),
        "user discovery complete"
    );
    for id in &sync.newly_gone {
        tracing::warn!(user.id = %id, "user no longer in scope (unlicensed or deleted); a final sweep follows");
    }
    Ok(sync)
}

pub async fn discover_users(
    graph: &GraphClient,
    cfg: &DiscoveryConfig,
) -> Result<Vec<ScopeRecord>, DiscoveryError> {
    let mut found = BTreeMap::new();
    match cfg {
        DiscoveryConfig::Skus(skus) => {
            for sku in skus {
                let filter = format!("assignedLicenses/any(u:u/skuId eq {sku})");
                let url = users_url(graph.base_url(), &filter, "id,userPrincipalName");
                list_users(graph, url, &mut found, "SKU", Keep::All).await?;
            }
        }
        DiscoveryConfig::ServicePlans(plans) => {
            for plan in plans {
                let filter = format!("assignedPlans/any(p:p/servicePlanId eq {plan})");
                let select = "id,userPrincipalName,assignedPlans";
                let url = users_url(graph.base_url(), &filter, select);
                list_users(
                    graph,
                    url,
                    &mut found,
                    "service plan",
                    Keep::EnabledPlan(plans),
                )
                .await?;
            }
        }
        DiscoveryConfig::Group(group) => {
            let url = group_url(graph.base_url(), group);
            list_users(graph, url, &mut found, "group members", Keep::All).await?;
        }
        DiscoveryConfig::Users(ids) => {
            for id in ids {
                found.insert(id.clone(), None);
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(id, label)| ScopeRecord { id, label })
        .collect())
}

fn users_url(base: &Url, filter: &str, select: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segs) = url.path_segments_mut() {
        segs.pop_if_empty().push("users");
    }
    url.query_pairs_mut()
        .append_pair("$select", select)
        .append_pair("$filter", filter)
        .append_pair("$top", "999");
    url
}

fn group_url(base: &Url, group: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segs) = url.path_segments_mut() {
        segs.pop_if_empty()
            .extend(["groups", group, "transitiveMembers", "microsoft.graph.user"]);
    }
    url.query_pairs_mut()
        .append_pair("$select", "id,userPrincipalName")
        .append_pair("$top", "999");
    url
}

async fn list_users(
    graph: &GraphClient,
    first: Url,
    found: &mut BTreeMap<String, Option<String>>,
    what: &str,
    keep: Keep<'_>,
) -> Result<(), DiscoveryError> {
    let mut url = first;
    loop {
        let page = graph
            .get_page(&url, Endpoint::Other, &[])
            .await
            .map_err(|source| DiscoveryError::Graph {
                what: what.to_string(),
                source,
            })?;
        for rec in &page.records {
            let row: UserRow =
                serde_json::from_slice(&rec.bytes).map_err(|_| DiscoveryError::BadUser {
                    what: what.to_string(),
                })?;
            let id = row.id.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                DiscoveryError::BadUser {
                    what: what.to_string(),
                }
            })?;
            let wanted = match keep {
                Keep::All => true,
                Keep::EnabledPlan(plans) => row.has_enabled_plan(plans),
            };
            if wanted {
                found.insert(id, row.upn);
            }
        }
        match page.next_link {
            Some(next) => url = next,
            None => return Ok(()),
        }
    }
}
