//! The exact bytes of chat and channel messages (`chatMessage`), following seed 002 and
//! Graph's chatMessage resource: bodies in text or HTML with mentions, reference attachments,
//! reactions, control messages with their event detail, deleted and edited messages, and now
//! and then a property Graph does not document yet. Each version of a message is rendered
//! in its own byte layout (see `json`), the same on every request and in the ground truth.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::data::{format_ms, mix, uuid_from, User};
use super::json::{render, J};
use super::render::{file_url, html, record_style};
use super::teams_data::{Message, Sender, Version, BOT_NAMES};
use super::text;

/// Reaction types Teams supports (seed 002, "Reactions").
const REACTIONS: [(&str, &str); 6] = [
    ("like", "Like"),
    ("heart", "Heart"),
    ("laugh", "Laugh"),
    ("surprised", "Surprised"),
    ("sad", "Sad"),
    ("angry", "Angry"),
];

/// Short chat lines beside the topic texts, covering what breaks naive text handling.
const LINES: &[&str] = &[
    "Can you send me the deck before 3pm? 🙏",
    "Ça marche, je m'en occupe.",
    "Approved – go ahead with \"Option B\".",
    "見積書を確認しました。",
    "Path is C:\\Deals\\2025\\Q3 — don't move it.",
    "<b>not html</b> & not a tag",
    "Line one\nLine two\ttabbed",
    "👍🏽",
];

/// Where a message lives, as its JSON says it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place<'a> {
    Chat {
        id: &'a str,
    },
    Channel {
        team_id: &'a str,
        channel_id: &'a str,
    },
}

pub(crate) struct MsgCtx<'a> {
    pub seed: u64,
    pub tenant_id: &'a str,
    pub users: &'a [User],
    pub place: Place<'a>,
    /// `Prefer: include-unknown-enum-members` was sent: control messages are typed
    /// `systemEventMessage`; without it Graph answers `unknownFutureValue`.
    pub unknown_enums: bool,
}

/// The exact bytes of one version of a message.
pub(crate) fn render_message(ctx: &MsgCtx<'_>, m: &Message, v: &Version) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(ctx.seed, m.seed), v.modified_ms as u64));
    render(&message_tree(ctx, m, v), &record_style(&mut rng))
}

/// Graph's `messageType` of a message.
pub(crate) fn message_type(m: &Message, unknown_enums: bool) -> &'static str {
    match (m.is_system(), unknown_enums) {
        (false, _) => "message",
        (true, true) => "systemEventMessage",
        (true, false) => "unknownFutureValue",
    }
}

fn message_tree(ctx: &MsgCtx<'_>, m: &Message, v: &Version) -> J {
    let (chat_id, channel) = match ctx.place {
        Place::Chat { id } => (J::str(id), J::Null),
        Place::Channel {
            team_id,
            channel_id,
        } => (
            J::Null,
            J::obj(vec![
                ("teamId", J::str(team_id)),
                ("channelId", J::str(channel_id)),
            ]),
        ),
    };
    let mut members = vec![
        ("id", J::str(m.id_ms.to_string())),
        ("replyToId", J::opt_str(m.reply_to.map(|r| r.to_string()))),
        ("etag", J::str(v.modified_ms.to_string())),
        ("messageType", J::str(message_type(m, ctx.unknown_enums))),
        ("createdDateTime", J::str(format_ms(m.id_ms))),
        ("lastModifiedDateTime", J::str(format_ms(v.modified_ms))),
        ("lastEditedDateTime", J::opt_str(v.edited_ms.map(format_ms))),
        ("deletedDateTime", J::opt_str(v.deleted_ms.map(format_ms))),
        ("subject", subject(ctx, m)),
        ("summary", J::Null),
        ("chatId", chat_id),
        ("importance", J::str(importance(m))),
        ("locale", J::str("en-us")),
        ("webUrl", web_url(ctx, m)),
        ("channelIdentity", channel),
        ("policyViolation", J::Null),
        ("eventDetail", event_detail(ctx, m)),
        ("from", from(ctx, m)),
        ("body", body(ctx, m, v)),
        ("attachments", attachments(m)),
        ("mentions", mentions(ctx, m)),
        ("reactions", reactions(ctx, m, v)),
        ("messageHistory", J::Arr(vec![])),
    ];
    if m.seed % 25 == 3 {
        // A property from the future: the archiver must keep it untouched.
        members.push((
            "contentSafetyInfo",
            J::obj(vec![
                (
                    "@odata.type",
                    J::str("#microsoft.graph.futureContentSafety"),
                ),
                ("score", J::Num("1.0E-2".to_owned())),
                ("labels", J::Arr(vec![J::str("ok")])),
            ]),
        ));
    }
    J::obj(members)
}

fn subject(ctx: &MsgCtx<'_>, m: &Message) -> J {
    match ctx.place {
        Place::Channel { .. }
            if m.reply_to.is_none() && m.seed.is_multiple_of(3) && !m.is_system() =>
        {
            J::str(text::MEETINGS[(m.seed >> 4) as usize % text::MEETINGS.len()])
        }
        _ => J::Null,
    }
}

fn importance(m: &Message) -> &'static str {
    match m.seed % 40 {
        0 => "high",
        1 => "urgent",
        _ => "normal",
    }
}

fn web_url(ctx: &MsgCtx<'_>, m: &Message) -> J {
    match ctx.place {
        Place::Chat { .. } => J::Null,
        Place::Channel {
            team_id,
            channel_id,
        } => {
            let parent = m.reply_to.unwrap_or(m.id_ms);
            J::str(format!(
                "https://teams.microsoft.com/l/message/{}/{}?groupId={team_id}&tenantId={}&createdTime={}&parentMessageId={parent}",
                percent_encoding::utf8_percent_encode(channel_id, percent_encoding::NON_ALPHANUMERIC),
                m.id_ms,
                ctx.tenant_id,
                m.id_ms
            ))
        }
    }
}

/// The user id a message's `from/user/id` carries, for `$filter` matching.
pub(crate) fn sender_user_id(users: &[User], sender: Sender) -> Option<String> {
    match sender {
        Sender::User(i) => users.get(i as usize).map(|u| u.id.clone()),
        Sender::Federated(n) => Some(uuid_from(mix(0xfed, u64::from(n)))),
        Sender::Guest(n) => Some(uuid_from(mix(0x9e57, u64::from(n)))),
        Sender::Bot(_) | Sender::System { .. } => None,
    }
}

/// `from/user/userIdentityType`, for `$filter` matching.
pub(crate) fn sender_user_type(sender: Sender) -> Option<&'static str> {
    match sender {
        Sender::User(_) => Some("aadUser"),
        Sender::Federated(_) => Some("federatedUser"),
        Sender::Guest(_) => Some("anonymousGuest"),
        Sender::Bot(_) | Sender::System { .. } => None,
    }
}

/// `from/application/applicationIdentityType`, for `$filter` matching.
pub(crate) fn sender_app_type(sender: Sender) -> Option<&'static str> {
    matches!(sender, Sender::Bot(_)).then_some("bot")
}

fn user_identity(ctx: &MsgCtx<'_>, index: u32, with_name: bool) -> J {
    let Some(user) = ctx.users.get(index as usize) else {
        return J::Null;
    };
    J::obj(vec![
        (
            "@odata.type",
            J::str("#microsoft.graph.teamworkUserIdentity"),
        ),
        ("id", J::str(user.id.clone())),
        (
            "displayName",
            if with_name {
                J::str(user.display_name())
            } else {
                J::Null
            },
        ),
        ("userIdentityType", J::str("aadUser")),
        ("tenantId", J::str(ctx.tenant_id)),
    ])
}

fn identity_set(user: J, application: J) -> J {
    J::obj(vec![
        ("application", application),
        ("device", J::Null),
        ("user", user),
    ])
}

fn from(ctx: &MsgCtx<'_>, m: &Message) -> J {
    let external = |kind: &str, name: String, tenant: J| {
        J::obj(vec![
            (
                "@odata.type",
                J::str("#microsoft.graph.teamworkUserIdentity"),
            ),
            ("id", J::opt_str(sender_user_id(ctx.users, m.sender))),
            ("displayName", J::Str(name)),
            ("userIdentityType", J::str(kind)),
            ("tenantId", tenant),
        ])
    };
    match m.sender {
        Sender::User(i) => identity_set(user_identity(ctx, i, true), J::Null),
        Sender::Federated(n) => identity_set(
            external(
                "federatedUser",
                format!("Zoë Extern {n} (Fabrikam)"),
                J::str(uuid_from(mix(0xfed7e, u64::from(n % 3)))),
            ),
            J::Null,
        ),
        Sender::Guest(n) => identity_set(
            external("anonymousGuest", format!("Guest {n} (Unverified)"), J::Null),
            J::Null,
        ),
        Sender::Bot(k) => identity_set(
            J::Null,
            J::obj(vec![
                (
                    "@odata.type",
                    J::str("#microsoft.graph.teamworkApplicationIdentity"),
                ),
                ("id", J::str(uuid_from(mix(0xb07, u64::from(k))))),
                (
                    "displayName",
                    J::str(BOT_NAMES[k as usize % BOT_NAMES.len()]),
                ),
                ("applicationIdentityType", J::str("bot")),
            ]),
        ),
        Sender::System { .. } => J::Null,
    }
}

fn event_detail(ctx: &MsgCtx<'_>, m: &Message) -> J {
    let Sender::System { initiator, member } = m.sender else {
        return J::Null;
    };
    J::obj(vec![
        (
            "@odata.type",
            J::str("#microsoft.graph.membersAddedEventMessageDetail"),
        ),
        (
            "visibleHistoryStartDateTime",
            J::str("0001-01-01T00:00:00Z"),
        ),
        ("members", J::Arr(vec![user_identity(ctx, member, false)])),
        (
            "initiator",
            identity_set(user_identity(ctx, initiator, false), J::Null),
        ),
    ])
}

fn text_of(m: &Message, v: &Version) -> &'static str {
    let h = mix(m.seed, u64::from(v.edits));
    let topic = &text::TOPICS[h as usize % text::TOPICS.len()];
    match (h >> 8) % 3 {
        0 => topic.prompt,
        1 => topic.answer,
        _ => LINES[(h >> 16) as usize % LINES.len()],
    }
}

fn mentioned(ctx: &MsgCtx<'_>, m: &Message) -> Option<u32> {
    if ctx.users.is_empty() || !(m.seed >> 8).is_multiple_of(7) || m.is_system() {
        return None;
    }
    Some((mix(m.seed, 0x3e) % ctx.users.len() as u64) as u32)
}

fn body(ctx: &MsgCtx<'_>, m: &Message, v: &Version) -> J {
    let (content_type, content) = if m.is_system() {
        ("html", "<systemEventMessage/>".to_owned())
    } else {
        let text = text_of(m, v);
        match mentioned(ctx, m).and_then(|i| ctx.users.get(i as usize)) {
            Some(user) => (
                "html",
                format!(
                    "<div><div><at id=\"0\">{}</at>&nbsp;{}</div></div>",
                    html(&user.display_name()),
                    html(text)
                ),
            ),
            None if (m.seed >> 12).is_multiple_of(2) => ("html", format!("<p>{}</p>", html(text))),
            None => ("text", text.to_owned()),
        }
    };
    let content = match attachment_id(m) {
        Some(id) => format!("{content}<attachment id=\"{id}\"></attachment>"),
        None => content,
    };
    J::obj(vec![
        ("contentType", J::str(content_type)),
        ("content", J::Str(content)),
    ])
}

fn attachment_id(m: &Message) -> Option<String> {
    ((m.seed >> 20).is_multiple_of(9) && !m.is_system()).then(|| uuid_from(mix(m.seed, 0xa77)))
}

fn attachments(m: &Message) -> J {
    let Some(id) = attachment_id(m) else {
        return J::Arr(vec![]);
    };
    let topic = &text::TOPICS[(m.seed >> 24) as usize % text::TOPICS.len()];
    J::Arr(vec![J::obj(vec![
        ("id", J::Str(id)),
        ("contentType", J::str("reference")),
        ("contentUrl", J::Str(file_url(topic.reference))),
        ("content", J::Null),
        ("name", J::str(topic.reference)),
        ("thumbnailUrl", J::Null),
        ("teamsAppId", J::Null),
    ])])
}

fn mentions(ctx: &MsgCtx<'_>, m: &Message) -> J {
    let Some(i) = mentioned(ctx, m) else {
        return J::Arr(vec![]);
    };
    let name = ctx
        .users
        .get(i as usize)
        .map(User::display_name)
        .unwrap_or_default();
    J::Arr(vec![J::obj(vec![
        ("id", J::int(0)),
        ("mentionText", J::Str(name)),
        (
            "mentioned",
            J::obj(vec![
                ("application", J::Null),
                ("device", J::Null),
                ("conversation", J::Null),
                ("tag", J::Null),
                ("user", user_identity(ctx, i, true)),
            ]),
        ),
    ])])
}

fn reactions(ctx: &MsgCtx<'_>, m: &Message, v: &Version) -> J {
    if ctx.users.is_empty() {
        return J::Arr(vec![]);
    }
    let out = (0..v.reactions)
        .map(|i| {
            let (kind, name) = REACTIONS[(mix(m.seed, u64::from(i)) % 6) as usize];
            let user = (mix(m.seed, 100 + u64::from(i)) % ctx.users.len() as u64) as u32;
            let at = (v.modified_ms - i64::from(v.reactions - 1 - i) * 1_000).max(m.id_ms);
            J::obj(vec![
                ("reactionType", J::str(kind)),
                ("displayName", J::str(name)),
                ("reactionContentUrl", J::Null),
                ("createdDateTime", J::str(format_ms(at))),
                (
                    "user",
                    identity_set(user_identity(ctx, user, false), J::Null),
                ),
            ])
        })
        .collect();
    J::Arr(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::teams_data::Sender;

    fn version(modified_ms: i64) -> Version {
        Version {
            modified_ms,
            visible_from_ms: 0,
            edits: 0,
            edited_ms: None,
            reactions: 2,
            deleted_ms: None,
        }
    }

    #[test]
    fn control_messages_depend_on_the_prefer_header() {
        let m = Message {
            id_ms: 1_700_000_000_000,
            reply_to: None,
            sender: Sender::System {
                initiator: 0,
                member: 0,
            },
            seed: 7,
            versions: vec![version(1_700_000_000_000)],
        };
        let mut ctx = MsgCtx {
            seed: 1,
            tenant_id: "t",
            users: &[],
            place: Place::Chat {
                id: "19:a@thread.v2",
            },
            unknown_enums: true,
        };
        let with: serde_json::Value =
            serde_json::from_str(&render_message(&ctx, &m, &m.versions[0])).expect("json");
        ctx.unknown_enums = false;
        let without: serde_json::Value =
            serde_json::from_str(&render_message(&ctx, &m, &m.versions[0])).expect("json");
        assert_eq!(with["messageType"], "systemEventMessage");
        assert_eq!(without["messageType"], "unknownFutureValue");
        assert_eq!(with["etag"], without["etag"]);
    }

    #[test]
    fn versions_render_deterministically_with_their_etag() {
        let m = Message {
            id_ms: 1_700_000_000_000,
            reply_to: Some(1_699_999_999_000),
            sender: Sender::Bot(1),
            seed: 99,
            versions: vec![version(1_700_000_000_500)],
        };
        let ctx = MsgCtx {
            seed: 1,
            tenant_id: "t",
            users: &[],
            place: Place::Channel {
                team_id: "team",
                channel_id: "19:c@thread.tacv2",
            },
            unknown_enums: true,
        };
        let a = render_message(&ctx, &m, &m.versions[0]);
        assert_eq!(a, render_message(&ctx, &m, &m.versions[0]));
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["etag"], "1700000000500");
        assert_eq!(v["replyToId"], "1699999999000");
        assert_eq!(v["channelIdentity"]["teamId"], "team");
        assert_eq!(v["from"]["application"]["applicationIdentityType"], "bot");
    }
}
