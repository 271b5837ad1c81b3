//! Retention rules: how long each record is kept immutable, in which mode, and whether it may be
//! disposed of afterwards.
//!
//! Rules are tried in order and the first whose every given field matches wins; a default rule
//! catches the rest. A rule's period counts from the record's own creation time (its
//! `createdDateTime`; the archiving time when it has none). The decision is written with the
//! object (`x-ms-immutability-policy-until-date` and `-mode`) and kept in the state database,
//! where disposition reads it back. Changing a rule never shortens what was written: the store
//! would refuse for a Locked policy, and the archiver only ever extends (see
//! `archive::azure::plan_extension` and `disposition`).
//!
//! ```toml
//! [retention]
//! disposal = false              # dispose deletes nothing unless this is true
//! [retention.default]
//! retain = "7y"
//! mode = "locked"
//! [[retention.rules]]
//! name = "copilot-bizchat"
//! source = "copilot"
//! app_class = ["IPM.SkypeTeams.Message.Copilot.BizChat"]
//! retain = "10y"
//! mode = "locked"
//! dispose = true
//! ```

pub mod facts;
pub mod period;

pub use facts::RecordFacts;
pub use period::Period;

use crate::archive::ImmutabilityMode;
use crate::config::ConfigError;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// Name of the rule that applies when no other does.
pub const DEFAULT_RULE: &str = "default";

/// `[retention]` as written in the configuration.
#[derive(Debug, Default, Deserialize)]
pub struct RetentionSettings {
    pub disposal: Option<bool>,
    pub default: Option<ActionSettings>,
    /// Each rule is checked on its own (unknown keys refused, naming the rule).
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSettings {
    pub retain: Option<String>,
    pub mode: Option<String>,
    pub dispose: Option<bool>,
}

/// A value or a list of values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    name: Option<String>,
    source: Option<OneOrMany>,
    app_class: Option<OneOrMany>,
    conversation_type: Option<OneOrMany>,
    interaction_type: Option<OneOrMany>,
    message_type: Option<OneOrMany>,
    user: Option<OneOrMany>,
    upn: Option<OneOrMany>,
    group: Option<OneOrMany>,
    team: Option<OneOrMany>,
    chat: Option<OneOrMany>,
    retain: Option<String>,
    mode: Option<String>,
    dispose: Option<bool>,
}

/// What a rule does with the records it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    pub period: Period,
    pub mode: ImmutabilityMode,
    /// Whether disposition may delete these records once their period has run out.
    pub dispose: bool,
}

/// Which records a rule applies to. Every non-empty field must match (a field matches when
/// any of its values does, ignoring ASCII case); an empty matcher matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    pub sources: Vec<String>,
    pub app_classes: Vec<String>,
    pub conversation_types: Vec<String>,
    pub interaction_types: Vec<String>,
    pub message_types: Vec<String>,
    pub users: Vec<String>,
    pub upns: Vec<String>,
    pub groups: Vec<String>,
    pub teams: Vec<String>,
    pub chats: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
}

/// The retention decided for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub rule: String,
    /// None: forever.
    pub retain_until: Option<DateTime<Utc>>,
    pub mode: ImmutabilityMode,
    pub dispose: bool,
}

impl Decision {
    /// The until-date to write with the object: the decision's, or for "forever" the longest
    /// policy Azure allows from now (a Locked policy can be extended later, never shortened).
    pub fn store_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.retain_until.unwrap_or_else(|| {
            Period::Days(period::MAX_DAYS - 1)
                .after(now)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        })
    }
}

/// Group id -> lowercased member ids and UPNs, resolved from Graph.
type Groups = HashMap<String, HashSet<String>>;

/// The validated rules, shared by ingest, holds and disposition.
#[derive(Debug, Clone)]
pub struct RetentionRules {
    rules: Vec<Rule>,
    default: Action,
    disposal: bool,
    configured: bool,
    groups: Arc<RwLock<Groups>>,
}

impl Default for RetentionRules {
    /// No `[retention]` section: keep everything forever, Unlocked, and never dispose.
    fn default() -> Self {
        RetentionRules {
            rules: Vec::new(),
            default: Action {
                period: Period::Forever,
                mode: ImmutabilityMode::Unlocked,
                dispose: false,
            },
            disposal: false,
            configured: false,
            groups: Arc::default(),
        }
    }
}

impl RetentionSettings {
    pub fn validate(self) -> Result<RetentionRules, ConfigError> {
        let configured =
            self.default.is_some() || !self.rules.is_empty() || self.disposal.is_some();
        if !configured {
            return Ok(RetentionRules::default());
        }
        let default = self.default.ok_or_else(|| {
            ConfigError::key(
                "retention.default",
                "is required when [retention] is configured: the rule for records no other rule matches",
            )
        })?;
        let default = action(
            "retention.default",
            default.retain,
            default.mode,
            default.dispose,
        )?;
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, raw) in self.rules.into_iter().enumerate() {
            let key = format!("retention.rules[{i}]");
            let settings: RuleSettings =
                serde_json::from_value(raw).map_err(|e| ConfigError::key(&key, e.to_string()))?;
            let rule = settings.validate(&key)?;
            if rule.name == DEFAULT_RULE || rules.iter().any(|r: &Rule| r.name == rule.name) {
                return Err(ConfigError::key(
                    &key,
                    format!(
                        "rule name \"{}\" is used twice (or is \"default\")",
                        rule.name
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(RetentionRules {
            rules,
            default,
            disposal: self.disposal.unwrap_or(false),
            configured: true,
            groups: Arc::default(),
        })
    }
}

impl RuleSettings {
    fn validate(self, key: &str) -> Result<Rule, ConfigError> {
        let name = self.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| {
            ConfigError::key(
                &format!("{key}.name"),
                "is required: disposition and audit name the rule",
            )
        })?;
        let list = |v: Option<OneOrMany>| v.map(OneOrMany::into_vec).unwrap_or_default();
        let matcher = Matcher {
            sources: list(self.source),
            app_classes: list(self.app_class),
            conversation_types: list(self.conversation_type),
            interaction_types: list(self.interaction_type),
            message_types: list(self.message_type),
            users: list(self.user),
            upns: list(self.upn),
            groups: list(self.group),
            teams: list(self.team),
            chats: list(self.chat),
        };
        for s in &matcher.sources {
            if crate::sources::SourceKind::parse(s).is_none() {
                return Err(ConfigError::key(
                    &format!("{key}.source"),
                    format!("unknown source \"{s}\""),
                ));
            }
        }
        let action = action(key, self.retain, self.mode, self.dispose)?;
        Ok(Rule {
            name,
            matcher,
            action,
        })
    }
}

fn action(
    key: &str,
    retain: Option<String>,
    mode: Option<String>,
    dispose: Option<bool>,
) -> Result<Action, ConfigError> {
    let retain = retain.ok_or_else(|| {
        ConfigError::key(
            &format!("{key}.retain"),
            "is required (e.g. \"7y\" or \"forever\")",
        )
    })?;
    let period =
        Period::parse(&retain).map_err(|e| ConfigError::key(&format!("{key}.retain"), e))?;
    let mode = match mode {
        None => ImmutabilityMode::Unlocked,
        Some(m) => ImmutabilityMode::parse(&m).ok_or_else(|| {
            ConfigError::key(&format!("{key}.mode"), "must be \"locked\" or \"unlocked\"")
        })?,
    };
    let dispose = dispose.unwrap_or(false);
    if dispose && period == Period::Forever {
        return Err(ConfigError::key(
            &format!("{key}.dispose"),
            "cannot be true with retain = \"forever\"",
        ));
    }
    Ok(Action {
        period,
        mode,
        dispose,
    })
}

impl RetentionRules {
    pub fn from_parts(rules: Vec<Rule>, default: Action, disposal: bool) -> Self {
        RetentionRules {
            rules,
            default,
            disposal,
            configured: true,
            groups: Arc::default(),
        }
    }

    /// Whether `[retention]` was configured (the Azure store requires it).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The global switch: disposition deletes nothing unless it is on.
    pub fn disposal_enabled(&self) -> bool {
        self.disposal
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_action(&self) -> Action {
        self.default
    }

    /// The action of the rule named `name` in the current configuration.
    pub fn action_of(&self, name: &str) -> Option<Action> {
        if name == DEFAULT_RULE {
            return Some(self.default);
        }
        self.rules.iter().find(|r| r.name == name).map(|r| r.action)
    }

    /// Groups that rules match on; their members are resolved from Graph at start.
    pub fn group_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .rules
            .iter()
            .flat_map(|r| r.matcher.groups.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Replaces the members of one group (ids and UPNs).
    pub fn set_group_members(&self, group: &str, members: impl IntoIterator<Item = String>) {
        let set = members
            .into_iter()
            .map(|m| m.to_ascii_lowercase())
            .collect();
        if let Ok(mut groups) = self.groups.write() {
            groups.insert(group.to_ascii_lowercase(), set);
        }
    }

    /// The first matching rule's decision, or the default's.
    pub fn decide(&self, facts: &RecordFacts, now: DateTime<Utc>) -> Decision {
        let groups = self.groups.read().map(|g| g.clone()).unwrap_or_default();
        let (rule, action) = self
            .rules
            .iter()
            .find(|r| r.matcher.matches(facts, &groups))
            .map_or((DEFAULT_RULE, self.default), |r| {
                (r.name.as_str(), r.action)
            });
        decision(rule, action, facts.created.unwrap_or(now))
    }

    /// The decision for an object that is not a record (manifests, quarantine): the default
    /// rule from now, and never disposed (manifests hold the integrity chain).
    pub fn decide_evidence(&self, now: DateTime<Utc>) -> Decision {
        Decision {
            dispose: false,
            ..decision(DEFAULT_RULE, self.default, now)
        }
    }
}

/// `action` applied to a record created at `created`.
pub fn decision(rule: &str, action: Action, created: DateTime<Utc>) -> Decision {
    Decision {
        rule: rule.to_string(),
        retain_until: action.period.after(created),
        mode: action.mode,
        dispose: action.dispose,
    }
}

impl Matcher {
    pub fn matches(&self, f: &RecordFacts, groups: &Groups) -> bool {
        one(&self.sources, Some(&f.source))
            && one(&self.app_classes, f.app_class.as_ref())
            && one(&self.conversation_types, f.conversation_type.as_ref())
            && one(&self.interaction_types, f.interaction_type.as_ref())
            && one(&self.message_types, f.message_type.as_ref())
            && any(&self.users, &f.user_ids)
            && any(&self.upns, &f.upns)
            && any(&self.teams, &f.team_ids)
            && any(&self.chats, &f.chat_ids)
            && self.in_groups(f, groups)
    }

    fn in_groups(&self, f: &RecordFacts, groups: &Groups) -> bool {
        if self.groups.is_empty() {
            return true;
        }
        self.groups.iter().any(|g| {
            groups.get(&g.to_ascii_lowercase()).is_some_and(|members| {
                f.user_ids
                    .iter()
                    .chain(&f.upns)
                    .any(|u| members.contains(&u.to_ascii_lowercase()))
            })
        })
    }
}

fn one(wanted: &[String], value: Option<&String>) -> bool {
    wanted.is_empty() || value.is_some_and(|v| wanted.iter().any(|w| w.eq_ignore_ascii_case(v)))
}

fn any(wanted: &[String], values: &[String]) -> bool {
    wanted.is_empty()
        || values
            .iter()
            .any(|v| wanted.iter().any(|w| w.eq_ignore_ascii_case(v)))
}

#[cfg(test)]
mod tests;
