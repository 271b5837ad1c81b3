//! OData query options as the documented endpoints accept them: `$filter` (only the
//! documented shapes), `$top`, `$select` and opaque `$skiptoken`s bound to their query.
//!
//! Being strict here is the point: a client that sends `ge` on createdDateTime, or replays
//! a skiptoken under another filter, works against nothing real and must fail in tests.

use axum::http::Uri;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::collections::BTreeMap;
use url::form_urlencoded;

use super::data::{mix, parse_time};

/// A query the simulator refuses, with Graph's explanation (answered as 400 BadRequest).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub(crate) struct ODataError(pub String);

pub(crate) fn bad(msg: impl Into<String>) -> ODataError {
    ODataError(msg.into())
}

/// OData system query options, recognised with or without their `$`.
const SYSTEM_OPTIONS: [&str; 11] = [
    "filter",
    "top",
    "skip",
    "skiptoken",
    "select",
    "orderby",
    "expand",
    "count",
    "search",
    "format",
    "deltatoken",
];

/// Decoded query-string parameters, keys lower-cased; rejects duplicates and system options
/// not in `allowed`. The `$` prefix is optional only on beta: on v1.0 a bare `top=5`
/// would be a silent no-op, so it is refused rather than obeyed.
pub(crate) fn parse_params(
    uri: &Uri,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ODataError> {
    let dollar_optional = uri.path().starts_with("/beta/");
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        let mut key = k.to_ascii_lowercase();
        if SYSTEM_OPTIONS.contains(&key.as_str()) {
            if !dollar_optional {
                return Err(bad(format!(
                    "Query option '{key}' must be written '${key}' on v1.0."
                )));
            }
            key.insert(0, '$');
        }
        if key.starts_with('$') && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&key)) {
            return Err(bad(format!(
                "Query option '{key}' is not supported for this request."
            )));
        }
        if out.insert(key.clone(), v.into_owned()).is_some() {
            return Err(bad(format!(
                "Query option '{key}' was specified more than once."
            )));
        }
    }
    Ok(out)
}

/// `$top`: a positive integer up to `max` (errors above it when `clamp` is false).
pub(crate) fn parse_top(
    raw: Option<&String>,
    default: u32,
    max: u32,
    clamp: bool,
) -> Result<u32, ODataError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let top: u32 = raw
        .trim()
        .parse()
        .map_err(|_| bad(format!("Invalid value '{raw}' for $top query option.")))?;
    if top == 0 {
        return Err(bad("The value of $top must be greater than 0."));
    }
    if top > max && !clamp {
        return Err(bad(format!(
            "Invalid page size specified: '{top}'. Must be between 1 and {max} inclusive."
        )));
    }
    Ok(top.min(max))
}

// ---------------------------------------------------------------- filter expressions

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    Open,
    Close,
    Str(String),
    Word(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ODataError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                out.push(if c == '(' { Tok::Open } else { Tok::Close });
            }
            '\'' => {
                chars.next();
                out.push(Tok::Str(quoted(&mut chars)?));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' || c == '\'' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Tok::Word(word));
            }
        }
    }
    Ok(out)
}

/// Reads an OData string literal after its opening quote (`''` is an escaped quote).
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, ODataError> {
    let mut s = String::new();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                s.push('\'');
            } else {
                return Ok(s);
            }
        } else {
            s.push(c);
        }
    }
    Err(bad("Unterminated string literal in $filter."))
}

/// A parsed boolean expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Cmp {
        field: String,
        op: String,
        value: Tok,
    },
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expr(&mut self) -> Result<Expr, ODataError> {
        let mut terms = vec![self.term()?];
        while self.peek_word("or") {
            self.pos += 1;
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn term(&mut self) -> Result<Expr, ODataError> {
        let mut factors = vec![self.factor()?];
        while self.peek_word("and") {
            self.pos += 1;
            factors.push(self.factor()?);
        }
        Ok(if factors.len() == 1 {
            factors.remove(0)
        } else {
            Expr::And(factors)
        })
    }

    fn factor(&mut self) -> Result<Expr, ODataError> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.expr()?;
                match self.next() {
                    Some(Tok::Close) => Ok(e),
                    _ => Err(bad("')' or operator expected in $filter.")),
                }
            }
            Some(Tok::Word(field)) => {
                let op = match self.next() {
                    Some(Tok::Word(op)) => op.to_ascii_lowercase(),
                    _ => return Err(bad(format!("Operator expected after '{field}'."))),
                };
                match self.next() {
                    Some(value @ (Tok::Word(_) | Tok::Str(_))) => {
                        Ok(Expr::Cmp { field, op, value })
                    }
                    _ => Err(bad(format!("Value expected after '{field} {op}'."))),
                }
            }
            _ => Err(bad("Syntax error in $filter.")),
        }
    }
}

pub(crate) fn parse_expr(filter: &str) -> Result<Expr, ODataError> {
    let mut p = Parser {
        toks: tokenize(filter)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(bad(format!(
            "Syntax error at position {} in '{filter}'.",
            p.pos
        )));
    }
    Ok(e)
}

// ------------------------------------------------------- getAllEnterpriseInteractions

/// The documented `$filter` of getAllEnterpriseInteractions, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct InteractionFilter {
    /// `createdDateTime gt X`, in epoch ms (bounds are compared at ms precision).
    pub after_ms: Option<i64>,
    /// `createdDateTime lt Y`, in epoch ms.
    pub before_ms: Option<i64>,
    /// `appClass eq 'A' or appClass eq 'B'`.
    pub app_classes: Option<Vec<String>>,
}

impl InteractionFilter {
    pub(crate) fn matches(&self, created_ms: i64, app_class: &str) -> bool {
        self.after_ms.is_none_or(|a| created_ms > a)
            && self.before_ms.is_none_or(|b| created_ms < b)
            && self
                .app_classes
                .as_ref()
                .is_none_or(|v| v.iter().any(|a| a.eq_ignore_ascii_case(app_class)))
    }

    /// A canonical form, for binding skiptokens to their query.
    pub(crate) fn canonical(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}",
            self.after_ms, self.before_ms, self.app_classes
        )
    }
}

/// Parses `createdDateTime gt X and createdDateTime lt Y`, either or both bounds, in either
/// order, optionally `and` an `appClass eq '..' or appClass eq '..'` group; parentheses
/// allowed. Only gt/lt are documented on createdDateTime, so anything else is refused.
pub(crate) fn parse_interaction_filter(filter: &str) -> Result<InteractionFilter, ODataError> {
    let mut out = InteractionFilter::default();
    let mut conjuncts = Vec::new();
    flatten_and(parse_expr(filter)?, &mut conjuncts);
    for c in conjuncts {
        match c {
            Expr::Cmp { field, op, value } if field.eq_ignore_ascii_case("createdDateTime") => {
                time_bound(&mut out, &op, &value)?;
            }
            other => {
                if out.app_classes.is_some() {
                    return Err(bad("Only one appClass condition is supported."));
                }
                let mut classes = Vec::new();
                app_class_group(other, &mut classes)?;
                out.app_classes = Some(classes);
            }
        }
    }
    Ok(out)
}

pub(crate) fn flatten_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::And(items) => items.into_iter().for_each(|i| flatten_and(i, out)),
        other => out.push(other),
    }
}

fn time_bound(out: &mut InteractionFilter, op: &str, value: &Tok) -> Result<(), ODataError> {
    date_bound(
        "createdDateTime",
        &mut out.after_ms,
        &mut out.before_ms,
        op,
        value,
    )
}

/// One `gt`/`lt` bound on a date field (the only operators Graph documents for the export
/// APIs), at millisecond precision: mailbox items carry no finer, so finer bounds truncate.
pub(crate) fn date_bound(
    field: &str,
    after_ms: &mut Option<i64>,
    before_ms: &mut Option<i64>,
    op: &str,
    value: &Tok,
) -> Result<(), ODataError> {
    let Tok::Word(raw) = value else {
        return Err(bad(
            "A binary operator with incompatible types was detected. Found operand types 'Edm.DateTimeOffset' and 'Edm.String' for operator kind 'GreaterThan'.",
        ));
    };
    let t = parse_time(raw).ok_or_else(|| {
        bad(format!(
            "Unrecognized 'Edm.DateTimeOffset' literal '{raw}'."
        ))
    })?;
    let slot = match op {
        "gt" => after_ms,
        "lt" => before_ms,
        _ => {
            return Err(bad(format!(
                "Unsupported operator '{op}' on {field}: only 'gt' and 'lt' are supported."
            )))
        }
    };
    if slot.replace(t.timestamp_millis()).is_some() {
        return Err(bad(format!("{field} '{op}' is specified more than once.")));
    }
    Ok(())
}

fn app_class_group(e: Expr, out: &mut Vec<String>) -> Result<(), ODataError> {
    match e {
        Expr::Or(items) => items.into_iter().try_for_each(|i| app_class_group(i, out)),
        Expr::Cmp { field, op, value: Tok::Str(v) }
            if field.eq_ignore_ascii_case("appClass") && op == "eq" =>
        {
            out.push(v);
            Ok(())
        }
        Expr::Cmp { field, op, .. } => Err(bad(format!(
            "Unsupported filter clause '{field} {op}': supported are createdDateTime gt/lt and appClass eq '...'."
        ))),
        Expr::And(_) => Err(bad("Invalid filter: 'and' inside an 'or' group is not supported.")),
    }
}

// -------------------------------------------------------------------- /users filters

/// The licence filters discovery uses on `/users`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UserFilter {
    /// `assignedLicenses/any(u:u/skuId eq <guid>)`
    Sku(String),
    /// `assignedPlans/any(p:p/servicePlanId eq <guid>)`
    Plan(String),
}

/// Parses the only two `/users` filters the simulator supports.
pub(crate) fn parse_user_filter(filter: &str) -> Result<UserFilter, ODataError> {
    let toks = tokenize(filter)?;
    let unsupported = || {
        bad(format!("Unsupported or invalid query filter clause specified for property of resource 'User': '{filter}'."))
    };
    let [Tok::Word(head), Tok::Open, Tok::Word(lambda), Tok::Word(op), Tok::Word(guid), Tok::Close] =
        toks.as_slice()
    else {
        return Err(unsupported());
    };
    let (collection, property) = match head.to_ascii_lowercase().as_str() {
        "assignedlicenses/any" => ("assignedLicenses", "skuid"),
        "assignedplans/any" => ("assignedPlans", "serviceplanid"),
        _ => return Err(unsupported()),
    };
    let Some((var, path)) = lambda.split_once(':') else {
        return Err(unsupported());
    };
    let expected = format!("{var}/{property}");
    if var.is_empty() || !path.eq_ignore_ascii_case(&expected) || !op.eq_ignore_ascii_case("eq") {
        return Err(unsupported());
    }
    let guid = uuid::Uuid::parse_str(guid)
        .map_err(|_| {
            bad(format!(
                "Unrecognized 'Edm.Guid' literal '{guid}' in {collection} filter."
            ))
        })?
        .hyphenated()
        .to_string();
    Ok(if collection == "assignedLicenses" {
        UserFilter::Sku(guid)
    } else {
        UserFilter::Plan(guid)
    })
}

/// Parses `$select` against the known property names.
pub(crate) fn parse_select(
    raw: Option<&String>,
    known: &[&str],
    type_name: &str,
) -> Result<Option<Vec<String>>, ODataError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for field in raw.split(',').map(str::trim) {
        if !known.iter().any(|k| k.eq_ignore_ascii_case(field)) {
            return Err(bad(format!(
                "Could not find a property named '{field}' on type '{type_name}'."
            )));
        }
        out.push(field.to_owned());
    }
    Ok(Some(out))
}

// ----------------------------------------------------------------------- skiptokens

/// Where the next page starts, bound to the query it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SkipToken {
    /// Offset (interactions) or next user index (directory listings).
    pub skip: u64,
    /// Snapshot instant: records that became visible later are left to the next sweep,
    /// so one query's pages stay consistent.
    pub as_of_ms: i64,
    pub fingerprint: u64,
}

/// A 64-bit digest of a query's canonical form.
pub(crate) fn fingerprint(parts: &[&str]) -> u64 {
    parts.iter().fold(0x51a7_u64, |h, p| {
        p.bytes()
            .fold(mix(h, p.len() as u64), |h, b| mix(h, u64::from(b)))
    })
}

impl SkipToken {
    pub(crate) fn encode(&self) -> String {
        STANDARD.encode(format!(
            "SkipValue={}#AsOf={}#Query={:016x}",
            self.skip, self.as_of_ms, self.fingerprint
        ))
    }

    /// Decodes a token and checks it belongs to the query with `fingerprint`.
    pub(crate) fn decode(raw: &str, fingerprint: u64) -> Result<SkipToken, ODataError> {
        let invalid = || bad("The $skiptoken is invalid or does not belong to this query.");
        let bytes = STANDARD.decode(raw.trim()).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.split('#');
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(invalid)
        };
        let skip = field("SkipValue")?.parse().map_err(|_| invalid())?;
        let as_of_ms = field("AsOf")?.parse().map_err(|_| invalid())?;
        let fp = u64::from_str_radix(&field("Query")?, 16).map_err(|_| invalid())?;
        if fp != fingerprint {
            return Err(invalid());
        }
        Ok(SkipToken {
            skip,
            as_of_ms,
            fingerprint: fp,
        })
    }
}

/// Builds an absolute `@odata.nextLink`: `base` plus the original options and a skiptoken,
/// form-encoded as Graph does (spaces as `+`, `'` as `%27`).
pub(crate) fn next_link(base: &str, options: &[(&str, Option<&str>)], token: &SkipToken) -> String {
    let mut query = String::new();
    let encoded = token.encode();
    let all = options
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .chain(std::iter::once(("$skiptoken", encoded.as_str())));
    for (k, v) in all {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(k);
        query.push('=');
        query.extend(form_urlencoded::byte_serialize(v.as_bytes()));
    }
    format!("{base}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        parse_time(s).expect("time").timestamp_millis()
    }

    #[test]
    fn documented_interaction_filters_parse() {
        let f = parse_interaction_filter(
            "createdDateTime gt 2024-09-09T16:48:35Z and createdDateTime lt 2024-11-15T21:48:35.123Z",
        )
        .expect("documented filter");
        assert_eq!(f.after_ms, Some(ms("2024-09-09T16:48:35Z")));
        assert_eq!(f.before_ms, Some(ms("2024-11-15T21:48:35.123Z")));
        let f = parse_interaction_filter(
            "(createdDateTime lt 2024-11-15T21:48:35Z) and (appClass eq 'IPM.SkypeTeams.Message.Copilot.Word' or appClass eq 'IPM.SkypeTeams.Message.Copilot.BizChat')",
        )
        .expect("with app classes");
        assert_eq!(f.after_ms, None);
        assert_eq!(f.app_classes.map(|v| v.len()), Some(2));
    }

    #[test]
    fn undocumented_filters_are_rejected() {
        for f in [
            "createdDateTime ge 2024-09-09T16:48:35Z",
            "createdDateTime le 2024-09-09T16:48:35Z",
            "createdDateTime eq 2024-09-09T16:48:35Z",
            "createdDateTime gt '2024-09-09T16:48:35Z'",
            "createdDateTime gt 2024-09-09 and createdDateTime gt 2024-09-09T16:48:35Z",
            "createdDateTime gt 2024-09-09T16:48:35Z or appClass eq 'x'",
            "id eq '1'",
            "createdDateTime gt",
            "(createdDateTime gt 2024-09-09T16:48:35Z",
        ] {
            assert!(parse_interaction_filter(f).is_err(), "{f}");
        }
    }

    #[test]
    fn user_filters() {
        assert_eq!(
            parse_user_filter(
                "assignedLicenses/any(x:x/skuId eq 639DEC6B-bb19-468b-871c-c5c441c4b0cb)"
            ),
            Ok(UserFilter::Sku(
                "639dec6b-bb19-468b-871c-c5c441c4b0cb".to_owned()
            ))
        );
        assert!(parse_user_filter(
            "assignedPlans/any(p:p/servicePlanId eq b95945de-b3bd-46db-8437-f2beb6ea2347)"
        )
        .is_ok());
        assert!(parse_user_filter(
            "assignedLicenses/any(x:y/skuId eq 639dec6b-bb19-468b-871c-c5c441c4b0cb)"
        )
        .is_err());
        assert!(parse_user_filter("displayName eq 'x'").is_err());
    }

    #[test]
    fn skiptokens_are_bound_to_their_query() {
        let t = SkipToken {
            skip: 100,
            as_of_ms: 5,
            fingerprint: fingerprint(&["a"]),
        };
        let raw = t.encode();
        assert_eq!(SkipToken::decode(&raw, t.fingerprint), Ok(t));
        assert!(SkipToken::decode(&raw, fingerprint(&["b"])).is_err());
        assert!(SkipToken::decode("garbage!", t.fingerprint).is_err());
    }
}
