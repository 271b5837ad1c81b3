//! Channel messages: `GET /teams/{id}/channels/getAllMessages`, or for a deleted team
//! `GET /teamwork/deletedTeams/{id}/channels/getAllMessages` (seed 002): root posts and
//! replies (`replyToId`) of every standard, private and shared channel of one team, in
//! `lastModifiedDateTime` windows.
//!
//! Identity is (team id, channel id, message id, etag), read from the message's
//! `channelIdentity`: a shared channel's messages come back with every team it is shared
//! with, but always name the hosting team, so they are stored once.

use super::chats::{modified_between, MessageIdent, MAX_TOP, PREFER_UNKNOWN_ENUMS};
use super::settings::BillingModel;
use super::util::{ensure_param, join, optional, required, time};
use super::{RecordMeta, Scope, Source, SourceError, SourceKind, Window};
use crate::graph::Endpoint;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use url::Url;

/// Which teams are deleted, as discovery last saw them: their messages are served under
/// `/teamwork/deletedTeams` instead of `/teams`. Shared between discovery (writer) and the
/// channels source (reader).
#[derive(Debug, Clone, Default)]
pub struct TeamDirectory {
    deleted: Arc<RwLock<HashSet<String>>>,
}

impl TeamDirectory {
    /// Marks these teams deleted. Teams are never unmarked within a process: a team restored
    /// from deletion shows up in `/teams` again and is exported from there after a restart.
    pub fn mark_deleted<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut set = self.deleted.write().unwrap_or_else(|p| p.into_inner());
        set.extend(ids.into_iter().map(str::to_ascii_lowercase));
    }

    /// Forgets a deletion (the team is listed in `/teams` again).
    pub fn mark_live(&self, id: &str) {
        let mut set = self.deleted.write().unwrap_or_else(|p| p.into_inner());
        set.remove(&id.to_ascii_lowercase());
    }

    pub fn is_deleted(&self, id: &str) -> bool {
        let set = self.deleted.read().unwrap_or_else(|p| p.into_inner());
        set.contains(&id.to_ascii_lowercase())
    }
}

#[derive(Debug, Clone)]
pub struct ChannelsSource {
    page_size: u32,
    model: Option<BillingModel>,
    teams: TeamDirectory,
}

impl ChannelsSource {
    pub fn new(page_size: u32, model: Option<BillingModel>, teams: TeamDirectory) -> Self {
        ChannelsSource {
            page_size: page_size.clamp(1, MAX_TOP),
            model,
            teams,
        }
    }
}

impl Source for ChannelsSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Channels
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Messages
    }

    fn window_url(&self, base: &Url, scope: &Scope, window: &Window) -> Url {
        let id = scope.id.as_str();
        let mut url = if self.teams.is_deleted(id) {
            join(
                base,
                &["teamwork", "deletedTeams", id, "channels", "getAllMessages"],
            )
        } else {
            join(base, &["teams", id, "channels", "getAllMessages"])
        };
        url.query_pairs_mut()
            .append_pair("$filter", &modified_between(window))
            .append_pair("$top", &self.page_size.to_string());
        match self.model {
            Some(m) => ensure_param(url, "model", m.as_str()),
            None => url,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![(PREFER_UNKNOWN_ENUMS.0, PREFER_UNKNOWN_ENUMS.1.to_owned())]
    }

    fn record_meta(&self, scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError> {
        let m = MessageIdent::parse(raw)?;
        let channel = m.channel.as_ref().ok_or(SourceError::MissingField {
            field: "channelIdentity",
            problem: "absent",
        })?;
        // The hosting team, so that a shared channel's messages are one record whichever
        // team exported them; the team being exported if Graph leaves it out.
        let team = optional(channel.team_id.clone()).unwrap_or_else(|| scope.id.clone());
        let channel_id = required(channel.channel_id.clone(), "channelIdentity.channelId")?;
        let id = required(m.id.clone(), "id")?;
        Ok(RecordMeta {
            parts: vec![team, channel_id, id],
            etag: m.version()?,
            created: time(m.created.as_deref()),
            chat_id: None,
        })
    }

    fn next_page_url(&self, next: Url) -> Url {
        match self.model {
            Some(m) => ensure_param(next, "model", m.as_str()),
            None => next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ScopeKind;
    use chrono::{TimeZone, Utc};

    fn scope(id: &str) -> Scope {
        Scope {
            kind: ScopeKind::Team,
            id: id.into(),
            label: None,
        }
    }

    #[test]
    fn deleted_teams_are_read_from_deleted_teams() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let w = Window {
            start: Utc.timestamp_opt(0, 0).single().expect("t"),
            end: Utc.timestamp_opt(60, 0).single().expect("t"),
        };
        let teams = TeamDirectory::default();
        let src = ChannelsSource::new(50, Some(BillingModel::B), teams.clone());
        assert_eq!(
            src.window_url(&base, &scope("T1"), &w).path(),
            "/v1.0/teams/T1/channels/getAllMessages"
        );
        teams.mark_deleted(["t1"]);
        let url = src.window_url(&base, &scope("T1"), &w);
        assert_eq!(
            url.path(),
            "/v1.0/teamwork/deletedTeams/T1/channels/getAllMessages"
        );
        assert!(url.query().unwrap_or_default().ends_with("&model=B"));
        teams.mark_live("T1");
        assert!(!teams.is_deleted("t1"));
    }

    #[test]
    fn identity_names_the_hosting_team_and_channel() {
        let src = ChannelsSource::new(50, None, TeamDirectory::default());
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"id":"1","replyToId":"0","etag":"5","channelIdentity":{"teamId":"host","channelId":"19:c@thread.tacv2"}}"#,
        )
        .expect("json");
        let from_host = src.record_meta(&scope("host"), &raw).expect("meta");
        let from_guest = src.record_meta(&scope("guest"), &raw).expect("meta");
        assert_eq!(from_host, from_guest);
        assert_eq!(from_host.parts, vec!["host", "19:c@thread.tacv2", "1"]);
        let no_team: Box<RawValue> =
            serde_json::from_str(r#"{"id":"1","etag":"5","channelIdentity":{"channelId":"c"}}"#)
                .expect("json");
        assert_eq!(
            src.record_meta(&scope("t"), &no_team).expect("meta").parts[0],
            "t"
        );
        let no_channel: Box<RawValue> =
            serde_json::from_str(r#"{"id":"1","etag":"5"}"#).expect("json");
        assert!(src.record_meta(&scope("t"), &no_channel).is_err());
    }
}
