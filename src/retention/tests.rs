//! Table-driven tests: every match field, first-match order, the default, and configuration
//! errors that name their key.

use super::*;
use chrono::TimeZone;

fn created() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0)
        .single()
        .expect("date")
}

fn act(years: u32, mode: ImmutabilityMode) -> Action {
    Action {
        period: Period::Months(years * 12),
        mode,
        dispose: false,
    }
}

fn rule(name: &str, years: u32, m: Matcher) -> Rule {
    Rule {
        name: name.into(),
        matcher: m,
        action: act(years, ImmutabilityMode::Locked),
    }
}

fn v(s: &str) -> Vec<String> {
    vec![s.to_string()]
}

/// One record of each shape the tests need.
fn copilot() -> RecordFacts {
    RecordFacts {
        source: "copilot".into(),
        app_class: Some("IPM.SkypeTeams.Message.Copilot.BizChat".into()),
        conversation_type: Some("bizchat".into()),
        interaction_type: Some("aiResponse".into()),
        user_ids: v("user-1"),
        upns: v("alice@contoso.com"),
        created: Some(created()),
        ..Default::default()
    }
}

fn chat() -> RecordFacts {
    RecordFacts {
        source: "chats".into(),
        message_type: Some("message".into()),
        user_ids: vec!["user-2".into(), "user-3".into()],
        chat_ids: v("19:chat@thread.v2"),
        created: Some(created()),
        ..Default::default()
    }
}

fn channel() -> RecordFacts {
    RecordFacts {
        source: "channels".into(),
        message_type: Some("systemEventMessage".into()),
        team_ids: v("team-9"),
        created: Some(created()),
        ..Default::default()
    }
}

fn rules_with(r: Rule) -> RetentionRules {
    let rules = RetentionRules::from_parts(vec![r], act(1, ImmutabilityMode::Unlocked), false);
    rules.set_group_members("group-legal", ["user-3".to_string()]);
    rules
}

#[test]
fn every_match_field_matches_and_misses() {
    // (field, matcher, record that matches, record that does not)
    let cases: Vec<(&str, Matcher, RecordFacts, RecordFacts)> = vec![
        (
            "source",
            Matcher {
                sources: v("chats"),
                ..Default::default()
            },
            chat(),
            copilot(),
        ),
        (
            "app_class",
            Matcher {
                app_classes: v("ipm.skypeteams.message.copilot.bizchat"),
                ..Default::default()
            },
            copilot(),
            chat(),
        ),
        (
            "conversation_type",
            Matcher {
                conversation_types: v("bizchat"),
                ..Default::default()
            },
            copilot(),
            chat(),
        ),
        (
            "interaction_type",
            Matcher {
                interaction_types: v("aiResponse"),
                ..Default::default()
            },
            copilot(),
            chat(),
        ),
        (
            "message_type",
            Matcher {
                message_types: v("systemEventMessage"),
                ..Default::default()
            },
            channel(),
            chat(),
        ),
        (
            "user",
            Matcher {
                users: v("user-3"),
                ..Default::default()
            },
            chat(),
            copilot(),
        ),
        (
            "upn",
            Matcher {
                upns: v("ALICE@contoso.com"),
                ..Default::default()
            },
            copilot(),
            chat(),
        ),
        (
            "group",
            Matcher {
                groups: v("group-legal"),
                ..Default::default()
            },
            chat(),
            copilot(),
        ),
        (
            "team",
            Matcher {
                teams: v("team-9"),
                ..Default::default()
            },
            channel(),
            chat(),
        ),
        (
            "chat",
            Matcher {
                chats: v("19:chat@thread.v2"),
                ..Default::default()
            },
            chat(),
            channel(),
        ),
    ];
    for (field, matcher, hit, miss) in cases {
        let rules = rules_with(rule("r", 10, matcher));
        let d = rules.decide(&hit, created());
        assert_eq!(d.rule, "r", "{field} should match");
        assert_eq!(
            d.retain_until,
            Period::Months(120).after(created()),
            "{field}"
        );
        assert_eq!(d.mode, ImmutabilityMode::Locked, "{field}");
        let d = rules.decide(&miss, created());
        assert_eq!(d.rule, DEFAULT_RULE, "{field} should not match");
        assert_eq!(d.mode, ImmutabilityMode::Unlocked, "{field}");
    }
}

#[test]
fn all_given_fields_must_match() {
    let m = Matcher {
        sources: v("copilot"),
        interaction_types: v("userPrompt"),
        ..Default::default()
    };
    let rules = rules_with(rule("prompts", 3, m));
    assert_eq!(
        rules.decide(&copilot(), created()).rule,
        DEFAULT_RULE,
        "aiResponse is not a prompt"
    );
    let prompt = RecordFacts {
        interaction_type: Some("userPrompt".into()),
        ..copilot()
    };
    assert_eq!(rules.decide(&prompt, created()).rule, "prompts");
}

#[test]
fn a_list_matches_any_of_its_values() {
    let m = Matcher {
        sources: vec!["chats".into(), "channels".into()],
        ..Default::default()
    };
    let rules = rules_with(rule("teams", 5, m));
    assert_eq!(rules.decide(&chat(), created()).rule, "teams");
    assert_eq!(rules.decide(&channel(), created()).rule, "teams");
    assert_eq!(rules.decide(&copilot(), created()).rule, DEFAULT_RULE);
}

#[test]
fn first_match_wins_in_order() {
    let broad = rule(
        "all-copilot",
        7,
        Matcher {
            sources: v("copilot"),
            ..Default::default()
        },
    );
    let narrow = rule(
        "alice",
        20,
        Matcher {
            upns: v("alice@contoso.com"),
            ..Default::default()
        },
    );
    let default = act(1, ImmutabilityMode::Unlocked);
    let orders = [
        (vec![broad.clone(), narrow.clone()], "all-copilot"),
        (vec![narrow.clone(), broad.clone()], "alice"),
    ];
    for (rules, winner) in orders {
        let rules = RetentionRules::from_parts(rules, default, false);
        assert_eq!(rules.decide(&copilot(), created()).rule, winner);
    }
}

#[test]
fn periods_count_from_creation_not_archiving() {
    let rules = rules_with(rule("r", 7, Matcher::default()));
    let archived_later = created() + chrono::Duration::days(400);
    let d = rules.decide(&copilot(), archived_later);
    assert_eq!(
        d.retain_until,
        Utc.with_ymd_and_hms(2031, 3, 1, 10, 0, 0).single()
    );
    let undated = RecordFacts {
        created: None,
        ..copilot()
    };
    assert_eq!(
        rules.decide(&undated, archived_later).retain_until,
        Period::Months(84).after(archived_later)
    );
}

#[test]
fn unresolved_groups_match_nothing() {
    let rules = RetentionRules::from_parts(
        vec![rule(
            "g",
            9,
            Matcher {
                groups: v("group-unknown"),
                ..Default::default()
            },
        )],
        act(1, ImmutabilityMode::Unlocked),
        false,
    );
    assert_eq!(rules.decide(&chat(), created()).rule, DEFAULT_RULE);
    assert_eq!(rules.group_ids(), v("group-unknown"));
}

#[test]
fn forever_is_written_as_the_longest_policy() {
    let d = Decision {
        rule: "x".into(),
        retain_until: None,
        mode: ImmutabilityMode::Locked,
        dispose: false,
    };
    let until = d.store_until(created());
    assert!(until > created() + chrono::Duration::days(145_000));
}

#[test]
fn no_retention_section_keeps_everything_forever() {
    let r = RetentionSettings::default().validate().expect("valid");
    assert!(!r.is_configured() && !r.disposal_enabled());
    let d = r.decide(&copilot(), created());
    assert_eq!((d.retain_until, d.dispose), (None, false));
}

fn parse(toml_text: &str) -> Result<RetentionRules, ConfigError> {
    let settings: RetentionSettings = toml::from_str(toml_text).expect("toml");
    settings.validate()
}

#[test]
fn configuration_is_read_and_checked() {
    let r = parse(
        r#"
        disposal = true
        [default]
        retain = "7y"
        mode = "Locked"
        [[rules]]
        name = "prompts"
        source = "copilot"
        interaction_type = ["userPrompt"]
        retain = "90d"
        dispose = true
        "#,
    )
    .expect("valid");
    assert!(r.disposal_enabled());
    assert_eq!(r.rules()[0].action.period, Period::Days(90));
    assert_eq!(r.default_action().mode, ImmutabilityMode::Locked);
    assert_eq!(r.action_of("prompts").map(|a| a.dispose), Some(true));
    assert_eq!(r.action_of("gone"), None);

    let bad = [
        ("[[rules]]\nname = \"x\"\nretain = \"1y\"", "retention.default"),
        ("[default]\nretain = \"7 weeks\"", "retention.default.retain"),
        ("[default]\nretain = \"1y\"\nmode = \"frozen\"", "retention.default.mode"),
        ("[default]\nretain = \"forever\"\ndispose = true", "retention.default.dispose"),
        ("[default]\nretain = \"1y\"\n[[rules]]\nretain = \"1y\"", "retention.rules[0].name"),
        ("[default]\nretain = \"1y\"\n[[rules]]\nname = \"a\"\nretain = \"1y\"\napp_clas = \"x\"", "retention.rules[0]"),
        ("[default]\nretain = \"1y\"\n[[rules]]\nname = \"a\"\nretain = \"1y\"\nsource = \"fax\"", "retention.rules[0].source"),
        (
            "[default]\nretain = \"1y\"\n[[rules]]\nname = \"a\"\nretain = \"1y\"\n[[rules]]\nname = \"a\"\nretain = \"2y\"",
            "retention.rules[1]",
        ),
    ];
    for (text, key) in bad {
        match parse(text) {
            Err(ConfigError::Key { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error naming {key}, got {other:?}"),
        }
    }
}
