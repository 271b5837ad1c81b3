//! The `$filter` of Teams `getAllMessages`, as seed 002 documents it: an optional OR-group of
//! sender conditions (`from/user/id eq '..'`, `from/user/userIdentityType eq '..'`,
//! `from/application/applicationIdentityType eq '..'`, `messageType eq|ne 'systemEventMessage'`),
//! then `and (lastModifiedDateTime gt X and lastModifiedDateTime lt Y)`. Channels document
//! only the date part. Anything else is refused, so a client relying on undocumented filters
//! fails here as it would against Graph.

use super::odata::{bad, date_bound, flatten_and, parse_expr, Expr, ODataError, Tok};

/// One sender condition of the OR-group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SenderClause {
    UserId(String),
    UserType(String),
    AppType(String),
    SystemEvents,
    NotSystemEvents,
}

/// What a message offers to the sender conditions.
pub(crate) struct SenderView<'a> {
    pub user_id: Option<&'a str>,
    pub user_type: Option<&'a str>,
    pub app_type: Option<&'a str>,
    pub system: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MessageFilter {
    /// `lastModifiedDateTime gt X`, epoch ms.
    pub after_ms: Option<i64>,
    /// `lastModifiedDateTime lt Y`, epoch ms.
    pub before_ms: Option<i64>,
    pub senders: Option<Vec<SenderClause>>,
}

impl MessageFilter {
    pub(crate) fn matches(&self, modified_ms: i64, sender: &SenderView<'_>) -> bool {
        self.after_ms.is_none_or(|a| modified_ms > a)
            && self.before_ms.is_none_or(|b| modified_ms < b)
            && self
                .senders
                .as_ref()
                .is_none_or(|clauses| clauses.iter().any(|c| c.matches(sender)))
    }

    /// A canonical form, for binding skiptokens to their query.
    pub(crate) fn canonical(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}",
            self.after_ms, self.before_ms, self.senders
        )
    }
}

impl SenderClause {
    fn matches(&self, s: &SenderView<'_>) -> bool {
        let eq = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
        match self {
            SenderClause::UserId(id) => eq(s.user_id, id),
            SenderClause::UserType(t) => eq(s.user_type, t),
            SenderClause::AppType(t) => eq(s.app_type, t),
            SenderClause::SystemEvents => s.system,
            SenderClause::NotSystemEvents => !s.system,
        }
    }
}

/// Parses a getAllMessages `$filter`; sender conditions only when `senders_allowed` (chats).
pub(crate) fn parse_message_filter(
    filter: &str,
    senders_allowed: bool,
) -> Result<MessageFilter, ODataError> {
    let mut out = MessageFilter::default();
    let mut conjuncts = Vec::new();
    flatten_and(parse_expr(filter)?, &mut conjuncts);
    for c in conjuncts {
        match c {
            Expr::Cmp { field, op, value }
                if field.eq_ignore_ascii_case("lastModifiedDateTime") =>
            {
                time_bound(&mut out, &op, &value)?;
            }
            other if senders_allowed => {
                if out.senders.is_some() {
                    return Err(bad("Only one group of sender conditions is supported."));
                }
                let mut clauses = Vec::new();
                sender_group(other, &mut clauses)?;
                out.senders = Some(clauses);
            }
            _ => {
                return Err(bad(
                    "Unsupported filter: only lastModifiedDateTime gt/lt is supported on this API.",
                ))
            }
        }
    }
    Ok(out)
}

fn time_bound(out: &mut MessageFilter, op: &str, value: &Tok) -> Result<(), ODataError> {
    date_bound(
        "lastModifiedDateTime",
        &mut out.after_ms,
        &mut out.before_ms,
        op,
        value,
    )
}

fn sender_group(e: Expr, out: &mut Vec<SenderClause>) -> Result<(), ODataError> {
    match e {
        Expr::Or(items) => items.into_iter().try_for_each(|i| sender_group(i, out)),
        Expr::Cmp {
            field,
            op,
            value: Tok::Str(v),
        } => {
            out.push(sender_clause(&field, &op, v)?);
            Ok(())
        }
        Expr::Cmp { field, op, .. } => Err(bad(format!(
            "Expected a quoted string after '{field} {op}'."
        ))),
        Expr::And(_) => Err(bad(
            "Invalid filter: 'and' inside the sender conditions is not supported.",
        )),
    }
}

fn sender_clause(field: &str, op: &str, value: String) -> Result<SenderClause, ODataError> {
    let f = field.to_ascii_lowercase();
    let clause = match (f.as_str(), op) {
        ("from/user/id", "eq") => SenderClause::UserId(value),
        ("from/user/useridentitytype", "eq") => SenderClause::UserType(value),
        ("from/application/applicationidentitytype", "eq") => SenderClause::AppType(value),
        ("messagetype", "eq") if value == "systemEventMessage" => SenderClause::SystemEvents,
        ("messagetype", "ne") if value == "systemEventMessage" => SenderClause::NotSystemEvents,
        _ => {
            return Err(bad(format!(
                "Unsupported filter clause '{field} {op} '{value}''."
            )))
        }
    };
    Ok(clause)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATES: &str =
        "lastModifiedDateTime gt 2020-06-04T18:03:11.591Z and lastModifiedDateTime lt 2020-06-05T21:00:09.413Z";

    #[test]
    fn seed_filters_parse() {
        let f = parse_message_filter(DATES, false).expect("dates");
        assert!(f.after_ms.is_some() && f.before_ms.is_some() && f.senders.is_none());
        let full = format!(
            "(from/application/applicationIdentityType eq 'bot' or from/user/id eq 'a-b' or from/user/userIdentityType eq 'anonymousGuest' or from/user/userIdentityType eq 'federatedUser' or messageType eq 'systemEventMessage') and ({DATES})"
        );
        let f = parse_message_filter(&full, true).expect("seed's longest filter");
        assert_eq!(f.senders.as_ref().map(Vec::len), Some(5));
        let bot = SenderView {
            user_id: None,
            user_type: None,
            app_type: Some("bot"),
            system: false,
        };
        let in_window = f.after_ms.unwrap_or_default() + 1;
        assert!(f.matches(in_window, &bot));
        let aad = SenderView {
            user_id: Some("c-d"),
            user_type: Some("aadUser"),
            app_type: None,
            system: false,
        };
        assert!(!f.matches(in_window, &aad));
    }

    #[test]
    fn undocumented_filters_are_refused() {
        for f in [
            "lastModifiedDateTime ge 2020-06-04T18:03:11Z",
            "createdDateTime gt 2020-06-04T18:03:11Z",
            "from/user/displayName eq 'x'",
            "messageType eq 'message'",
        ] {
            assert!(parse_message_filter(f, true).is_err(), "{f}");
        }
        let senders = format!("from/user/id eq 'x' and {DATES}");
        assert!(
            parse_message_filter(&senders, false).is_err(),
            "channels take no sender filter"
        );
    }
}
