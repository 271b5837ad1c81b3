//! Turns record metadata into the exact bytes Graph would send.
//!
//! Content follows the seed's aiInteraction examples: prompts from the user paired by
//! `requestId` and `sessionId` with Copilot's response, contexts, reference attachments and
//! adaptive cards whose `content` is an escaped JSON string with `\r\n`, links, mentions,
//! and now and then a field or enum value from the future. Each record gets its own
//! rendering style (see `json`), chosen from a hash of its identity, so its bytes are the
//! same on every request and in the ground truth.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::data::{format_ms, mix, pick, uuid_from, AppClass, Interaction, Kind, User};
use super::json::{render, Escape, Style, J};
use super::text::{self, Topic};

/// Copilot's application id in the seed's examples.
const COPILOT_APP_ID: &str = "fb8d773d-7ef8-4ec0-a117-179f88add510";
/// Characters escaped in generated document URLs (RFC 3986 unreserved ones stay).
const URL_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Sessions a user has per app: pairs are spread over a few conversations.
const SESSIONS_PER_APP: u64 = 5;

/// Identity-derived inputs of a record's rendering.
pub(crate) struct RecordCtx<'a> {
    pub seed: u64,
    pub tenant_id: &'a str,
    pub user: &'a User,
}

/// The exact bytes of one interaction record.
pub(crate) fn interaction(ctx: &RecordCtx<'_>, it: &Interaction) -> String {
    let record_hash = mix(
        mix(mix(ctx.seed, ctx.user.index as u64), it.created_ms as u64),
        it.kind as u64,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(record_hash);
    let pair = Pair::new(ctx, it);
    let tree = record_tree(ctx, it, &pair, &mut rng);
    render(&tree, &record_style(&mut rng))
}

/// Order of records in results: a keyed hash of (seed, user, id), never time.
pub(crate) fn order_key(seed: u64, user_index: usize, created_ms: i64) -> u64 {
    mix(mix(seed ^ 0x0de7, user_index as u64), created_ms as u64)
}

/// What a prompt and its response share.
struct Pair {
    topic: &'static Topic,
    request_id: String,
    session_id: String,
    meeting: Option<Meeting>,
    mention: Option<(String, String)>,
    card: bool,
    hash: u64,
}

struct Meeting {
    thread: String,
    name: &'static str,
}

impl Pair {
    fn new(ctx: &RecordCtx<'_>, it: &Interaction) -> Pair {
        let hash = mix(mix(ctx.seed, ctx.user.index as u64), it.pair);
        let mut rng = ChaCha8Rng::seed_from_u64(hash);
        // A user's pairs in one app share a few sessions, as conversations do.
        let session = mix(
            mix(mix(ctx.seed, ctx.user.index as u64), it.app as u64 + 0x5e55),
            it.pair % SESSIONS_PER_APP,
        );
        let meeting = (it.app == AppClass::Teams && rng.gen_bool(0.5)).then(|| Meeting {
            thread: format!(
                "19:meeting_{}@thread.v2",
                STANDARD_NO_PAD.encode(uuid_from(rng.gen()))
            ),
            name: pick(&mut rng, text::MEETINGS),
        });
        let mention = rng.gen_bool(0.15).then(|| {
            let name = format!(
                "{} {}",
                pick(&mut rng, text::GIVEN_NAMES),
                pick(&mut rng, text::SURNAMES)
            );
            (uuid_from(rng.gen()), name)
        });
        Pair {
            topic: &text::TOPICS[rng.gen_range(0..text::TOPICS.len())],
            request_id: uuid_from(rng.gen()),
            session_id: session_id(session),
            meeting,
            mention,
            card: it.app == AppClass::BizChat || rng.gen_bool(0.3),
            hash,
        }
    }
}

fn session_id(h: u64) -> String {
    let mut bytes = [0u8; 32];
    for (k, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(h, k as u64).to_be_bytes());
    }
    format!("19:{}@thread.v2", URL_SAFE_NO_PAD.encode(bytes))
}

fn record_tree(ctx: &RecordCtx<'_>, it: &Interaction, pair: &Pair, rng: &mut ChaCha8Rng) -> J {
    let id = it.created_ms.to_string();
    let prompt = it.kind == Kind::Prompt;
    let mut members: Vec<(&'static str, J)> = vec![
        ("id", J::str(id.clone())),
        ("sessionId", J::str(pair.session_id.clone())),
        ("requestId", J::str(pair.request_id.clone())),
        ("appClass", J::str(it.app.as_str())),
        ("interactionType", J::str(interaction_type(it.kind))),
        ("conversationType", J::str(conversation_type(it.app))),
        ("etag", J::str(id)),
        ("createdDateTime", J::str(format_ms(it.created_ms))),
        ("locale", J::str(pair.topic.locale)),
    ];
    if rng.gen_bool(0.03) {
        members.push(("sensitivityInfo", sensitivity_info(rng)));
    }
    members.push(("contexts", contexts(it, pair)));
    members.push((
        "from",
        if prompt {
            from_user(ctx)
        } else {
            from_app(it.app)
        },
    ));
    let (body, attachments) = if prompt {
        (prompt_body(pair, rng), J::Arr(vec![]))
    } else {
        response_body_and_attachments(pair, rng)
    };
    members.push(("body", body));
    members.push(("attachments", attachments));
    members.push(("links", if prompt { J::Arr(vec![]) } else { links(pair) }));
    members.push((
        "mentions",
        if prompt {
            mentions(ctx, pair)
        } else {
            J::Arr(vec![])
        },
    ));
    J::obj(members)
}

fn interaction_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Prompt => "userPrompt",
        Kind::Response => "aiResponse",
        Kind::Unknown => "unknownFutureValue",
    }
}

fn conversation_type(app: AppClass) -> &'static str {
    match app {
        AppClass::BizChat => "bizchat",
        _ => "appchat",
    }
}

fn app_display_name(app: AppClass) -> &'static str {
    match app {
        AppClass::Teams => "Copilot in Teams",
        AppClass::BizChat => "Microsoft 365 Chat",
        AppClass::Word => "Copilot in Word",
        AppClass::Excel => "Copilot in Excel",
        AppClass::Loop => "Copilot in Loop",
    }
}

/// A property Graph does not document yet: clients must keep it, number text included.
fn sensitivity_info(rng: &mut ChaCha8Rng) -> J {
    J::obj(vec![
        (
            "@odata.type",
            J::str("#microsoft.graph.aiInteractionSensitivityInfo"),
        ),
        ("labelId", J::str(uuid_from(rng.gen()))),
        ("displayName", J::str("Confidential \\ Finance – Intern")),
        ("priority", J::Num("1.50".to_owned())),
        ("score", J::Num("7.0E-1".to_owned())),
        ("isProtected", J::Bool(true)),
    ])
}

fn contexts(it: &Interaction, pair: &Pair) -> J {
    if let Some(m) = &pair.meeting {
        return J::Arr(vec![J::obj(vec![
            (
                "contextReference",
                J::str(format!("https://microsoft.teams.com/threads/{}", m.thread)),
            ),
            ("displayName", J::str(m.name)),
            ("contextType", J::str("TeamsMeeting")),
        ])]);
    }
    match it.app {
        AppClass::Word | AppClass::Excel | AppClass::Loop => J::Arr(vec![J::obj(vec![
            ("contextReference", J::str(file_url(pair.topic.reference))),
            ("displayName", J::str(pair.topic.reference)),
            ("contextType", J::str("File")),
        ])]),
        _ => J::Arr(vec![]),
    }
}

pub(crate) fn file_url(name: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(name, URL_PATH);
    format!(
        "https://contoso-my.sharepoint.com/personal/shared_contoso_example/Documents/{encoded}?web=1"
    )
}

fn from_user(ctx: &RecordCtx<'_>) -> J {
    J::obj(vec![
        (
            "@odata.type",
            J::str("#microsoft.graph.chatMessageFromIdentitySet"),
        ),
        ("application", J::Null),
        ("device", J::Null),
        (
            "user",
            J::obj(vec![
                (
                    "@odata.type",
                    J::str("#microsoft.graph.teamworkUserIdentity"),
                ),
                ("id", J::str(ctx.user.id.clone())),
                ("displayName", J::str(format!("8:orgid:{}", ctx.user.id))),
                ("userIdentityType", J::str("aadUser")),
                ("tenantId", J::str(ctx.tenant_id)),
            ]),
        ),
    ])
}

fn from_app(app: AppClass) -> J {
    J::obj(vec![
        (
            "@odata.type",
            J::str("#microsoft.graph.chatMessageFromIdentitySet"),
        ),
        ("device", J::Null),
        ("user", J::Null),
        (
            "application",
            J::obj(vec![
                (
                    "@odata.type",
                    J::str("#microsoft.graph.teamworkApplicationIdentity"),
                ),
                ("id", J::str(COPILOT_APP_ID)),
                ("displayName", J::str(app_display_name(app))),
                ("applicationIdentityType", J::str("bot")),
            ]),
        ),
    ])
}

fn body(content_type: &str, content: String) -> J {
    J::obj(vec![
        ("contentType", J::str(content_type)),
        ("content", J::Str(content)),
    ])
}

fn prompt_body(pair: &Pair, rng: &mut ChaCha8Rng) -> J {
    let prompt = pair.topic.prompt;
    match &pair.mention {
        Some((_, name)) => body(
            "html",
            format!("<p><at id=\"0\">{}</at> {}</p>", html(name), html(prompt)),
        ),
        None if rng.gen_bool(0.3) => body("html", format!("<p>{}</p>", html(prompt))),
        None => body("text", prompt.to_owned()),
    }
}

fn response_body_and_attachments(pair: &Pair, rng: &mut ChaCha8Rng) -> (J, J) {
    let mut attachments = Vec::new();
    let mut tags = String::new();
    if let Some(m) = &pair.meeting {
        tags.push_str(&attachment_tag(&m.thread));
        attachments.push(reference_attachment(m));
    }
    if pair.card {
        let id = format!("{:016x}{:016x}", mix(pair.hash, 1), mix(pair.hash, 2));
        tags.push_str(&attachment_tag(&id));
        attachments.push(card_attachment(&id, pair.topic));
    }
    let body = if pair.card && rng.gen_bool(0.7) {
        body("html", tags)
    } else if rng.gen_bool(0.5) {
        body("html", format!("<p>{}</p>{tags}", html(pair.topic.answer)))
    } else {
        body("text", format!("{}{tags}", pair.topic.answer))
    };
    (body, J::Arr(attachments))
}

fn attachment_tag(id: &str) -> String {
    format!("<attachment id=\"{id}\"></attachment>")
}

fn reference_attachment(m: &Meeting) -> J {
    J::obj(vec![
        ("attachmentId", J::str(m.thread.clone())),
        ("contentType", J::str("reference")),
        (
            "contentUrl",
            J::str(format!("https://microsoft.teams.com/threads/{}", m.thread)),
        ),
        ("content", J::Null),
        ("name", J::str(m.name)),
    ])
}

/// An adaptive card whose `content` is itself JSON text with CRLF line breaks, as Graph
/// sends it: the archiver must keep the doubly escaped string intact.
fn card_attachment(id: &str, topic: &Topic) -> J {
    let card = J::obj(vec![
        ("type", J::str("AdaptiveCard")),
        ("version", J::str("1.0")),
        (
            "body",
            J::Arr(vec![
                J::obj(vec![
                    ("type", J::str("TextBlock")),
                    (
                        "text",
                        J::str(format!(
                            "{}\n\n**[{}]({})**",
                            topic.answer,
                            topic.reference,
                            file_url(topic.reference)
                        )),
                    ),
                    ("wrap", J::Bool(true)),
                ]),
                J::obj(vec![
                    ("type", J::str("TextBlock")),
                    ("id", J::str("MessageTextField")),
                    ("text", J::str(topic.answer)),
                    ("wrap", J::Bool(true)),
                ]),
            ]),
        ),
    ]);
    let style = Style {
        newline: "\r\n",
        ..Style::pretty("  ", 0)
    };
    J::obj(vec![
        ("attachmentId", J::str(id)),
        (
            "contentType",
            J::str("application/vnd.microsoft.card.adaptive"),
        ),
        ("contentUrl", J::Null),
        ("content", J::Str(render(&card, &style))),
        ("name", J::Null),
    ])
}

fn links(pair: &Pair) -> J {
    let mut out = Vec::new();
    if let Some(m) = &pair.meeting {
        let event = format!(
            "https://teams.microsoft.com/l/meeting/details?eventId=AAMk{}%3d",
            STANDARD_NO_PAD.encode(mix(pair.hash, 3).to_be_bytes())
        );
        out.push(link(
            format!("{event}&EntityRepresentationId={}", uuid_from(pair.hash)),
            m.name,
            "Event",
        ));
        out.push(link(event, m.name, "Meeting"));
    }
    if pair.card {
        out.push(link(
            file_url(pair.topic.reference),
            pair.topic.reference,
            "File",
        ));
    }
    J::Arr(out)
}

fn link(url: String, name: &str, kind: &str) -> J {
    J::obj(vec![
        ("linkUrl", J::Str(url)),
        ("displayName", J::str(name)),
        ("linkType", J::str(kind)),
    ])
}

fn mentions(ctx: &RecordCtx<'_>, pair: &Pair) -> J {
    let Some((id, name)) = &pair.mention else {
        return J::Arr(vec![]);
    };
    let first = name.split(' ').next().unwrap_or(name);
    J::Arr(vec![J::obj(vec![
        ("mentionId", J::int(0)),
        ("mentionText", J::str(first)),
        (
            "mentioned",
            J::obj(vec![
                (
                    "@odata.type",
                    J::str("#microsoft.graph.aiInteractionMentionedIdentitySet"),
                ),
                ("application", J::Null),
                ("device", J::Null),
                ("conversation", J::Null),
                ("tag", J::Null),
                (
                    "user",
                    J::obj(vec![
                        (
                            "@odata.type",
                            J::str("#microsoft.graph.teamworkUserIdentity"),
                        ),
                        ("id", J::str(id.clone())),
                        ("displayName", J::str(name.clone())),
                        ("userIdentityType", J::str("aadUser")),
                        ("tenantId", J::str(ctx.tenant_id)),
                    ]),
                ),
            ]),
        ),
    ])])
}

/// Escapes text for an HTML body.
pub(crate) fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Picks one of many byte layouts so that only an exact-bytes client passes.
pub(crate) fn record_style(rng: &mut ChaCha8Rng) -> Style {
    let base = match rng.gen_range(0..6) {
        0 => Style::COMPACT,
        1 => Style {
            colon_space: true,
            comma_space: true,
            ..Style::COMPACT
        },
        2 => Style::pretty("\t", 2),
        3 => Style::pretty("  ", 2),
        4 => Style {
            newline: "\r\n",
            ..Style::pretty("    ", 0)
        },
        _ => Style {
            colon_space: false,
            ..Style::pretty(" ", 1)
        },
    };
    let ascii = rng.gen_bool(0.2);
    Style {
        escape: Escape {
            ascii,
            slash: rng.gen_bool(0.15),
            upper_hex: ascii && rng.gen_bool(0.5),
        },
        shuffle_keys: rng.gen_bool(0.15).then(|| rng.gen()),
        ..base
    }
}

/// A user object as `/users` returns it, limited to `select` when given.
pub(crate) fn user_object(user: &User, select: Option<&[String]>) -> J {
    let all = user_properties(user);
    let members = match select {
        None => all
            .into_iter()
            .filter(|(k, _)| DEFAULT_USER_PROPERTIES.contains(k))
            .collect(),
        Some(fields) => all
            .into_iter()
            .filter(|(k, _)| fields.iter().any(|f| f.eq_ignore_ascii_case(k)))
            .collect(),
    };
    J::obj(members)
}

/// Properties `/users` returns without `$select` (Graph v1.0 default set).
pub(crate) const DEFAULT_USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// Every user property the simulator knows, for `$select` validation.
pub(crate) const USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
    "accountEnabled",
    "usageLocation",
    "createdDateTime",
    "deletedDateTime",
    "assignedLicenses",
    "assignedPlans",
];

fn user_properties(user: &User) -> Vec<(&'static str, J)> {
    vec![
        ("businessPhones", J::Arr(vec![])),
        ("displayName", J::str(user.display_name())),
        ("givenName", J::str(user.given_name)),
        ("jobTitle", J::str(user.job_title)),
        ("mail", J::str(user.mail())),
        ("mobilePhone", J::Null),
        ("officeLocation", J::str(user.office)),
        ("preferredLanguage", J::str("en-US")),
        ("surname", J::str(user.surname)),
        ("userPrincipalName", J::str(user.upn.clone())),
        ("id", J::str(user.id.clone())),
        ("accountEnabled", J::Bool(user.deleted_ms.is_none())),
        ("usageLocation", J::str("GB")),
        (
            "createdDateTime",
            J::str(super::data::format_secs(user.created_ms)),
        ),
        (
            "deletedDateTime",
            J::opt_str(user.deleted_ms.map(super::data::format_secs)),
        ),
        ("assignedLicenses", assigned_licenses(user)),
        ("assignedPlans", assigned_plans(user)),
    ]
}

fn assigned_licenses(user: &User) -> J {
    let mut out = vec![license(super::data::E5_SKU)];
    if user.is_licensed() {
        out.push(license(super::COPILOT_SKU));
    }
    J::Arr(out)
}

fn license(sku: &str) -> J {
    J::obj(vec![
        ("disabledPlans", J::Arr(vec![])),
        ("skuId", J::str(sku)),
    ])
}

fn assigned_plans(user: &User) -> J {
    use super::data::{CopilotLicence, COPILOT_PLANS, E5_PLANS};
    let assigned = super::data::format_secs(user.licence_assigned_ms);
    let mut out: Vec<J> = E5_PLANS
        .iter()
        .map(|(id, service)| plan(&assigned, "Enabled", service, id))
        .collect();
    let (plans, status, when) = match user.licence {
        CopilotLicence::None => (0, "Enabled", assigned.clone()),
        CopilotLicence::Enabled { plans } => (plans, "Enabled", assigned.clone()),
        CopilotLicence::Removed { plans, at_ms } => {
            (plans, "Deleted", super::data::format_secs(at_ms))
        }
    };
    for (bit, (id, service)) in COPILOT_PLANS.iter().enumerate() {
        if plans & (1 << bit) != 0 {
            out.push(plan(&when, status, service, id));
        }
    }
    J::Arr(out)
}

fn plan(when: &str, status: &str, service: &str, id: &str) -> J {
    J::obj(vec![
        ("assignedDateTime", J::str(when)),
        ("capabilityStatus", J::str(status)),
        ("service", J::str(service)),
        ("servicePlanId", J::str(id)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::SimConfig;
    use crate::sim::data::{Clock, Tenant};

    #[test]
    fn records_are_valid_json_deterministic_and_varied() {
        let cfg = SimConfig {
            users: 10,
            interactions_per_user: 40,
            ..SimConfig::default()
        };
        let clock = Clock {
            anchor_ms: 1_731_700_000_000,
            started_ms: 1_731_700_000_000,
        };
        let tenant = Tenant::generate(&cfg, clock);
        let mut compact = 0;
        let mut pretty = 0;
        for user in tenant.users.iter().filter(|u| u.is_licensed()) {
            let ctx = RecordCtx {
                seed: cfg.seed,
                tenant_id: &cfg.tenant_id,
                user,
            };
            for it in tenant.interactions(user.index).iter() {
                let bytes = interaction(&ctx, it);
                assert_eq!(bytes, interaction(&ctx, it));
                let v: serde_json::Value = serde_json::from_str(&bytes).expect("valid JSON");
                assert_eq!(v["id"], it.created_ms.to_string());
                assert_eq!(v["etag"], v["id"]);
                if bytes.contains('\n') {
                    pretty += 1;
                } else {
                    compact += 1;
                }
            }
        }
        assert!(compact > 10 && pretty > 10, "{compact} {pretty}");
    }
}
