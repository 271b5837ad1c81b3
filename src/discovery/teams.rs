//! Discovery of the Teams scopes: teams (live ones from `GET /teams`, deleted ones from
//! `GET /teamwork/deletedTeams`, whose messages stay exportable) for channel messages, and
//! meeting organizers (the discovered users, or a configured list) for transcripts and
//! recordings. Like users, scopes that disappear get a final sweep.

use super::DiscoveryError;
use crate::graph::{Endpoint, GraphClient};
use crate::sources::channels::TeamDirectory;
use crate::sources::settings::TeamsConfig;
use crate::sources::SourceKind;
use crate::state::{ScopeRecord, StateDb};
use chrono::Utc;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use url::Url;

/// Suffix of the label of a deleted team, for logs and `status`.
const DELETED: &str = " (deleted)";

#[derive(Deserialize)]
struct TeamRow {
    id: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
}

/// Records the teams and organizers the configured sources need, and tells the channels
/// source which teams are deleted. Does nothing for sources that are not configured.
pub async fn sync_teams_and_organizers(
    graph: &GraphClient,
    state: &StateDb,
    cfg: &TeamsConfig,
    sources: &[SourceKind],
    directory: &TeamDirectory,
) -> Result<(), DiscoveryError> {
    if sources.contains(&SourceKind::Channels) {
        sync_teams(graph, state, cfg, directory).await?;
    }
    if sources.contains(&SourceKind::Transcripts) || sources.contains(&SourceKind::Recordings) {
        sync_organizers(state, cfg).await?;
    }
    Ok(())
}

async fn sync_teams(
    graph: &GraphClient,
    state: &StateDb,
    cfg: &TeamsConfig,
    directory: &TeamDirectory,
) -> Result<(), DiscoveryError> {
    let base = graph.base_url();
    let live_url = listing(base, &["teams"], Some("id,displayName"));
    let live = list(graph, live_url, "teams").await?;
    let deleted = if cfg.include_deleted_teams {
        list(
            graph,
            listing(base, &["teamwork", "deletedTeams"], None),
            "deleted teams",
        )
        .await?
    } else {
        BTreeMap::new()
    };
    for id in live.keys() {
        directory.mark_live(id);
    }
    directory.mark_deleted(deleted.keys().map(String::as_str));
    let known: HashMap<String, Option<String>> = state
        .all_scopes("team")
        .await?
        .into_iter()
        .map(|r| (r.id, r.label))
        .collect();
    let mut present: Vec<ScopeRecord> = live
        .into_iter()
        .map(|(id, label)| ScopeRecord { id, label })
        .collect();
    let deleted_count = deleted.len();
    let fresh: Vec<String> = deleted
        .into_keys()
        .filter(|id| !present.iter().any(|p| &p.id == id))
        .collect();
    present.extend(fresh.into_iter().map(|id| {
        // A deletedTeam carries no name: keep the one discovery saw while the team was live.
        let label = known.get(&id).cloned().flatten().map(|l| {
            if l.ends_with(DELETED) {
                l
            } else {
                format!("{l}{DELETED}")
            }
        });
        ScopeRecord { id, label }
    }));
    let sync = state.sync_scopes("team", &present, Utc::now()).await?;
    tracing::info!(
        teams = sync.present,
        deleted_teams = deleted_count,
        added = sync.added,
        departed = sync.newly_gone.len(),
        "team discovery complete"
    );
    for id in &sync.newly_gone {
        tracing::warn!(team.id = %id, "team no longer listed (deleted for good, or teams.include_deleted_teams is off); a final sweep follows");
    }
    Ok(())
}

/// Organizers are the configured list, or else every present user: transcripts and recordings
/// are listed per organizer, and any user may organise a meeting.
async fn sync_organizers(state: &StateDb, cfg: &TeamsConfig) -> Result<(), DiscoveryError> {
    let organizers: Vec<ScopeRecord> = if cfg.organizers.is_empty() {
        state
            .all_scopes("user")
            .await?
            .into_iter()
            .filter(|u| u.gone_at.is_none())
            .map(|u| ScopeRecord {
                id: u.id,
                label: u.label,
            })
            .collect()
    } else {
        cfg.organizers
            .iter()
            .map(|id| ScopeRecord {
                id: id.clone(),
                label: None,
            })
            .collect()
    };
    let sync = state
        .sync_scopes("organizer", &organizers, Utc::now())
        .await?;
    tracing::info!(
        organizers = sync.present,
        added = sync.added,
        departed = sync.newly_gone.len(),
        "meeting organizer discovery complete"
    );
    Ok(())
}

fn listing(base: &Url, path: &[&str], select: Option<&str>) -> Url {
    let mut url = base.clone();
    if let Ok(mut segs) = url.path_segments_mut() {
        segs.pop_if_empty().extend(path);
    }
    if let Some(select) = select {
        url.query_pairs_mut().append_pair("$select", select);
    }
    url
}

/// Pages through a listing of objects with an id and maybe a displayName.
async fn list(
    graph: &GraphClient,
    first: Url,
    what: &'static str,
) -> Result<BTreeMap<String, Option<String>>, DiscoveryError> {
    let mut found = BTreeMap::new();
    let mut url = first;
    loop {
        let page = graph
            .get_page(&url, Endpoint::Other, &[])
            .await
            .map_err(|source| DiscoveryError::Scopes { what, source })?;
        for rec in &page.records {
            let row: TeamRow = serde_json::from_slice(&rec.bytes)
                .map_err(|_| DiscoveryError::BadObject { what })?;
            let id = row
                .id
                .filter(|s| !s.trim().is_empty())
                .ok_or(DiscoveryError::BadObject { what })?;
            found.insert(id, row.display_name);
        }
        match page.next_link {
            Some(next) => url = next,
            None => return Ok(found),
        }
    }
}
