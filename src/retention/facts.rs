//! The few fields of a record that retention rules and legal holds look at, read from the exact
//! bytes without altering them (the stored bytes are the original slice; this is a borrowed
//! parse beside it).

use crate::sources::{Scope, ScopeKind};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// What rules and holds can match on, for one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFacts {
    pub source: String,
    pub app_class: Option<String>,
    pub conversation_type: Option<String>,
    pub interaction_type: Option<String>,
    pub message_type: Option<String>,
    /// Custodians: the user whose export it came from and the sender, when they are users.
    pub user_ids: Vec<String>,
    /// UPNs known for those users (the scope's label from discovery, or the record's own).
    pub upns: Vec<String>,
    pub team_ids: Vec<String>,
    pub chat_ids: Vec<String>,
    pub created: Option<DateTime<Utc>>,
}

/// The fields facts come from, each kept raw: read in one pass over the record, then each
/// on its own. A repeated name keeps its last value, as a map would.
#[derive(Default)]
struct Fields<'a> {
    app_class: Option<&'a RawValue>,
    conversation_type: Option<&'a RawValue>,
    interaction_type: Option<&'a RawValue>,
    message_type: Option<&'a RawValue>,
    created: Option<&'a RawValue>,
    from: Option<&'a RawValue>,
    chat_id: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    /// What is not a JSON object has none of the fields.
    fn parse(json: &'a str) -> Fields<'a> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde::Deserializer::deserialize_map(&mut de, FieldsVisitor).unwrap_or_default()
    }
}

struct FieldsVisitor;

impl<'de> serde::de::Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let slot = match name.as_ref() {
                "appClass" => &mut fields.app_class,
                "conversationType" => &mut fields.conversation_type,
                "interactionType" => &mut fields.interaction_type,
                "messageType" => &mut fields.message_type,
                "createdDateTime" => &mut fields.created,
                "from" => &mut fields.from,
                "chatId" => &mut fields.chat_id,
                "channelIdentity" => &mut fields.channel,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(fields)
    }
}

fn text(value: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<Cow<'_, str>>(value?.get())
        .ok()
        .map(Cow::into_owned)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Channel<'a> {
    #[serde(borrow, rename = "teamId")]
    team_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct From<'a> {
    #[serde(borrow)]
    user: Option<User<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "userPrincipalName")]
    upn: Option<Cow<'a, str>>,
}

impl RecordFacts {
    /// Reads the facts of one record. Each field is read on its own: one of an unexpected
    /// shape (Graph adds fields and enum values) is absent for matching, and the others still
    /// count, so an odd sender does not push a record out of its appClass rule.
    pub fn read(source: &str, scope: &Scope, raw: &RawValue) -> RecordFacts {
        Self::read_json(source, scope, raw.get())
    }

    /// `read` from the record's text; what is not a JSON object gives the scope's facts only.
    pub fn read_json(source: &str, scope: &Scope, json: &str) -> RecordFacts {
        let fields = Fields::parse(json);
        let mut facts = RecordFacts {
            source: source.to_string(),
            app_class: text(fields.app_class),
            conversation_type: text(fields.conversation_type),
            interaction_type: text(fields.interaction_type),
            message_type: text(fields.message_type),
            created: text(fields.created)
                .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
                .map(|t| t.with_timezone(&Utc)),
            ..Default::default()
        };
        facts.add_scope(scope);
        let from: Option<From<'_>> = fields.from.and_then(|v| serde_json::from_str(v.get()).ok());
        if let Some(user) = from.and_then(|from| from.user) {
            push_unique(&mut facts.user_ids, user.id);
            push_unique(&mut facts.upns, user.upn);
        }
        push_unique(&mut facts.chat_ids, text(fields.chat_id).map(Cow::Owned));
        let channel: Option<Channel<'_>> = fields
            .channel
            .and_then(|v| serde_json::from_str(v.get()).ok());
        push_unique(&mut facts.team_ids, channel.and_then(|c| c.team_id));
        facts
    }

    /// Facts of an object that is not a record (a manifest, a quarantined record): only the
    /// source and scope are known.
    pub fn of_scope(source: &str, scope: &Scope) -> RecordFacts {
        let mut facts = RecordFacts {
            source: source.to_string(),
            ..Default::default()
        };
        facts.add_scope(scope);
        facts
    }

    fn add_scope(&mut self, scope: &Scope) {
        match scope.kind {
            ScopeKind::User | ScopeKind::Organizer => {
                push_unique(&mut self.user_ids, Some(Cow::Borrowed(scope.id.as_str())));
                let upn = scope.label.as_deref().filter(|l| l.contains('@'));
                push_unique(&mut self.upns, upn.map(Cow::Borrowed));
            }
            ScopeKind::Team => {
                push_unique(&mut self.team_ids, Some(Cow::Borrowed(scope.id.as_str())))
            }
        }
    }
}

fn push_unique(list: &mut Vec<String>, value: Option<Cow<'_, str>>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        if !list.iter().any(|x| x.eq_ignore_ascii_case(&v)) {
            list.push(v.into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, upn: &str) -> Scope {
        Scope {
            kind: ScopeKind::User,
            id: id.into(),
            label: Some(upn.into()),
        }
    }

    #[test]
    fn reads_copilot_fields_and_custodians() {
        let json = r#"{"id":"1","appClass":"IPM.SkypeTeams.Message.Copilot.BizChat",
            "interactionType":"aiResponse","conversationType":"bizchat",
            "createdDateTime":"2024-11-15T20:16:41.008Z",
            "from":{"application":{"id":"copilot"},"user":null},"unknownNew":{"x":1}}"#;
        let raw: Box<RawValue> = serde_json::from_str(json).expect("raw");
        let f = RecordFacts::read("copilot", &user("u1", "a@contoso.com"), &raw);
        assert_eq!(
            f.app_class.as_deref(),
            Some("IPM.SkypeTeams.Message.Copilot.BizChat")
        );
        assert_eq!(f.interaction_type.as_deref(), Some("aiResponse"));
        assert_eq!(f.conversation_type.as_deref(), Some("bizchat"));
        assert_eq!(f.user_ids, vec!["u1"]);
        assert_eq!(f.upns, vec!["a@contoso.com"]);
        assert_eq!(
            f.created.map(|t| t.timestamp_millis()),
            Some(1_731_701_801_008)
        );
    }

    #[test]
    fn reads_chat_message_fields() {
        let json = r#"{"id":"m","messageType":"message","chatId":"19:abc@thread.v2",
            "from":{"user":{"id":"u2","userPrincipalName":"b@contoso.com"}},
            "channelIdentity":{"teamId":"t1","channelId":"c"}}"#;
        let raw: Box<RawValue> = serde_json::from_str(json).expect("raw");
        let f = RecordFacts::read("chats", &user("u1", "a@contoso.com"), &raw);
        assert_eq!(f.message_type.as_deref(), Some("message"));
        assert_eq!(f.user_ids, vec!["u1", "u2"]);
        assert_eq!(f.upns, vec!["a@contoso.com", "b@contoso.com"]);
        assert_eq!(f.chat_ids, vec!["19:abc@thread.v2"]);
        assert_eq!(f.team_ids, vec!["t1"]);
    }

    #[test]
    fn odd_shapes_leave_only_that_field_absent() {
        let json = r#"{"appClass":42,"from":"x","interactionType":"userPrompt"}"#;
        let raw: Box<RawValue> = serde_json::from_str(json).expect("raw");
        let f = RecordFacts::read("copilot", &user("u1", "no-upn"), &raw);
        assert_eq!(f.app_class, None);
        assert_eq!(f.interaction_type.as_deref(), Some("userPrompt"));
        assert_eq!(f.user_ids, vec!["u1"]);
        assert!(f.upns.is_empty());
    }

    #[test]
    fn a_repeated_name_counts_once_as_its_last_value() {
        let json = r#"{"appClass":"first","chatId":"19:c@thread.v2","appClass":"last"}"#;
        let f = RecordFacts::read_json("chats", &user("u1", "a@contoso.com"), json);
        assert_eq!(f.app_class.as_deref(), Some("last"));
        assert_eq!(f.chat_ids, vec!["19:c@thread.v2"]);
    }

    #[test]
    fn what_is_not_an_object_gives_the_scope_only() {
        for json in ["[1,2]", "\"text\"", "{\"appClass\":", ""] {
            let f = RecordFacts::read_json("chats", &user("u1", "a@contoso.com"), json);
            assert_eq!(
                f,
                RecordFacts::of_scope("chats", &user("u1", "a@contoso.com"))
            );
        }
    }
}
