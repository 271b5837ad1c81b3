//! Chat messages: `GET /users/{id}/chats/getAllMessages` (seed 002): every 1:1, group and
//! meeting chat message of one user, in `lastModifiedDateTime` windows.
//!
//! A message comes back once per participant, so its identity is (chat id, message id, etag),
//! the same whoever exported it: message ids are unique only within their chat. Each edit,
//! reaction or deletion changes lastModifiedDateTime and the etag, so it is a new version and
//! the earlier ones stay. `Prefer: include-unknown-enum-members` makes control messages come
//! through as `systemEventMessage` instead of `unknownFutureValue`.

use super::settings::{BillingModel, SenderFilter};
use super::util::{ensure_param, join, optional, required, time};
use super::{RecordMeta, Scope, Source, SourceError, SourceKind, Window};
use crate::graph::Endpoint;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use url::Url;

/// Graph's largest `$top` for getAllMessages.
pub const MAX_TOP: u32 = 50;
/// The header that lets control messages through with their real type.
pub const PREFER_UNKNOWN_ENUMS: (&str, &str) = ("Prefer", "include-unknown-enum-members");

#[derive(Debug, Clone)]
pub struct ChatsSource {
    page_size: u32,
    model: Option<BillingModel>,
    senders: SenderFilter,
}

impl ChatsSource {
    pub fn new(page_size: u32, model: Option<BillingModel>, senders: SenderFilter) -> Self {
        ChatsSource {
            page_size: page_size.clamp(1, MAX_TOP),
            model,
            senders,
        }
    }

    /// The seed's filter: `(senders...) and (lastModifiedDateTime gt X and ... lt Y)`.
    fn filter(&self, window: &Window) -> String {
        let dates = modified_between(window);
        if self.senders.is_empty() {
            return dates;
        }
        format!("({}) and ({dates})", sender_clauses(&self.senders))
    }
}

/// `lastModifiedDateTime gt X and lastModifiedDateTime lt Y` (only gt/lt are documented).
pub(crate) fn modified_between(window: &Window) -> String {
    format!(
        "lastModifiedDateTime gt {} and lastModifiedDateTime lt {}",
        Window::odata(window.start),
        Window::odata(window.end)
    )
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sender_clauses(f: &SenderFilter) -> String {
    let mut out: Vec<String> = Vec::new();
    out.extend(
        f.application_identity_types
            .iter()
            .map(|t| format!("from/application/applicationIdentityType eq {}", quoted(t))),
    );
    out.extend(
        f.user_ids
            .iter()
            .map(|id| format!("from/user/id eq {}", quoted(id))),
    );
    out.extend(
        f.user_identity_types
            .iter()
            .map(|t| format!("from/user/userIdentityType eq {}", quoted(t))),
    );
    if f.system_messages {
        out.push("messageType eq 'systemEventMessage'".to_owned());
    }
    out.join(" or ")
}

/// Only the fields identity needs; everything else stays in the raw bytes untouched.
#[derive(Deserialize)]
pub(crate) struct MessageIdent<'a> {
    #[serde(borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub etag: Option<Cow<'a, str>>,
    #[serde(rename = "chatId", borrow)]
    pub chat_id: Option<Cow<'a, str>>,
    #[serde(rename = "createdDateTime", borrow)]
    pub created: Option<Cow<'a, str>>,
    #[serde(rename = "lastModifiedDateTime", borrow)]
    pub modified: Option<Cow<'a, str>>,
    #[serde(rename = "channelIdentity", borrow)]
    pub channel: Option<ChannelIdent<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct ChannelIdent<'a> {
    #[serde(rename = "teamId", borrow)]
    pub team_id: Option<Cow<'a, str>>,
    #[serde(rename = "channelId", borrow)]
    pub channel_id: Option<Cow<'a, str>>,
}

impl<'a> MessageIdent<'a> {
    pub(crate) fn parse(raw: &'a RawValue) -> Result<Self, SourceError> {
        serde_json::from_str(raw.get()).map_err(|e| SourceError::NotAnObject(e.to_string()))
    }

    /// The version stamp: the etag, else lastModifiedDateTime (which moves with it).
    pub(crate) fn version(&self) -> Result<String, SourceError> {
        optional(self.etag.clone())
            .or_else(|| optional(self.modified.clone()))
            .ok_or(SourceError::MissingField {
                field: "etag",
                problem: "absent, and no lastModifiedDateTime either",
            })
    }
}

impl Source for ChatsSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Chats
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Messages
    }

    fn window_url(&self, base: &Url, scope: &Scope, window: &Window) -> Url {
        let mut url = join(
            base,
            &["users", scope.id.as_str(), "chats", "getAllMessages"],
        );
        url.query_pairs_mut()
            .append_pair("$filter", &self.filter(window))
            .append_pair("$top", &self.page_size.to_string());
        match self.model {
            Some(m) => ensure_param(url, "model", m.as_str()),
            None => url,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![(PREFER_UNKNOWN_ENUMS.0, PREFER_UNKNOWN_ENUMS.1.to_owned())]
    }

    fn record_meta(&self, _scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError> {
        let m = MessageIdent::parse(raw)?;
        let chat = required(m.chat_id.clone(), "chatId")?;
        let id = required(m.id.clone(), "id")?;
        Ok(RecordMeta {
            chat_id: Some(chat.clone()),
            parts: vec![chat, id],
            etag: m.version()?,
            created: time(m.created.as_deref()),
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
            kind: ScopeKind::User,
            id: id.into(),
            label: None,
        }
    }

    fn window() -> Window {
        Window {
            start: Utc
                .with_ymd_and_hms(2020, 6, 4, 18, 3, 11)
                .single()
                .expect("t"),
            end: Utc
                .with_ymd_and_hms(2020, 6, 5, 21, 0, 9)
                .single()
                .expect("t"),
        }
    }

    fn pairs(url: &Url) -> Vec<(String, String)> {
        url.query_pairs().into_owned().collect()
    }

    #[test]
    fn url_follows_the_seed() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let url = ChatsSource::new(100, None, SenderFilter::default()).window_url(
            &base,
            &scope("u-1"),
            &window(),
        );
        assert_eq!(url.path(), "/v1.0/users/u-1/chats/getAllMessages");
        assert_eq!(
            pairs(&url),
            vec![
                (
                    "$filter".into(),
                    "lastModifiedDateTime gt 2020-06-04T18:03:11.000Z and lastModifiedDateTime lt 2020-06-05T21:00:09.000Z".into()
                ),
                ("$top".into(), "50".into()),
            ]
        );
    }

    #[test]
    fn sender_filters_and_model() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let senders = SenderFilter {
            user_ids: vec!["a-1".into()],
            user_identity_types: vec!["federatedUser".into()],
            application_identity_types: vec!["bot".into()],
            system_messages: true,
        };
        let src = ChatsSource::new(20, Some(BillingModel::A), senders);
        let url = src.window_url(&base, &scope("u"), &window());
        let p = pairs(&url);
        assert_eq!(
            p[0].1,
            "(from/application/applicationIdentityType eq 'bot' or from/user/id eq 'a-1' or from/user/userIdentityType eq 'federatedUser' or messageType eq 'systemEventMessage') and (lastModifiedDateTime gt 2020-06-04T18:03:11.000Z and lastModifiedDateTime lt 2020-06-05T21:00:09.000Z)"
        );
        assert_eq!(p[2], ("model".into(), "A".into()));
        // A nextLink that dropped the model gets it back; one that kept it is left alone.
        let next = Url::parse(
            "https://graph.microsoft.com/v1.0/users/u/chats/getAllMessages?$skiptoken=x",
        )
        .expect("url");
        assert_eq!(
            src.next_page_url(next).query(),
            Some("$skiptoken=x&model=A")
        );
        let kept =
            Url::parse("https://graph.microsoft.com/v1.0/x?model=A&$skiptoken=y").expect("url");
        assert_eq!(
            src.next_page_url(kept).query(),
            Some("model=A&$skiptoken=y")
        );
        assert_eq!(
            src.headers(),
            vec![("Prefer", "include-unknown-enum-members".to_owned())]
        );
    }

    #[test]
    fn identity_is_the_chat_the_message_and_the_etag_whoever_exports_it() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"id":"1616990032035","etag":"1616990171051","chatId":"19:8ea0e38b@thread.v2","createdDateTime":"2021-03-29T03:53:52.035Z","future":[1]}"#,
        )
        .expect("json");
        let src = ChatsSource::new(50, None, SenderFilter::default());
        let a = src.record_meta(&scope("user-a"), &raw).expect("meta");
        let b = src.record_meta(&scope("user-b"), &raw).expect("meta");
        assert_eq!(a, b);
        assert_eq!(
            a.parts,
            vec![
                "19:8ea0e38b@thread.v2".to_owned(),
                "1616990032035".to_owned()
            ]
        );
        assert_eq!(a.etag, "1616990171051");
        let no_etag: Box<RawValue> = serde_json::from_str(
            r#"{"id":"1","chatId":"c","lastModifiedDateTime":"2021-03-29T03:53:52.035Z"}"#,
        )
        .expect("json");
        assert_eq!(
            src.record_meta(&scope("u"), &no_etag).expect("meta").etag,
            "2021-03-29T03:53:52.035Z"
        );
        for bad in [
            r#"{"id":"1","etag":"2"}"#,
            r#"{"chatId":"c","etag":"2"}"#,
            r#"{"id":"1","chatId":"c"}"#,
        ] {
            let raw: Box<RawValue> = serde_json::from_str(bad).expect("json");
            assert!(src.record_meta(&scope("u"), &raw).is_err(), "{bad}");
        }
    }
}
