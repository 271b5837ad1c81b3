//! Copilot interactions: `GET /copilot/users/{id}/interactionHistory/getAllEnterpriseInteractions`
//! (seed 000). Identity is (user id, interaction id, etag): interaction ids are epoch
//! milliseconds of the user's own mailbox item, so two users can hold the same id.

use super::{RecordMeta, Scope, Source, SourceError, SourceKind, Window};
use crate::graph::Endpoint;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

#[derive(Debug, Clone)]
pub struct CopilotSource {
    page_size: u32,
    /// Optional `appClass eq '...'` filter (seed 000, example 2).
    app_classes: Vec<String>,
}

impl CopilotSource {
    pub fn new(page_size: u32) -> Self {
        CopilotSource {
            page_size,
            app_classes: Vec::new(),
        }
    }

    pub fn with_app_classes(mut self, app_classes: Vec<String>) -> Self {
        self.app_classes = app_classes;
        self
    }

    fn filter(&self, window: &Window) -> String {
        let dates = format!(
            "createdDateTime gt {} and createdDateTime lt {}",
            Window::odata(window.start),
            Window::odata(window.end)
        );
        if self.app_classes.is_empty() {
            return dates;
        }
        let classes = self
            .app_classes
            .iter()
            .map(|c| format!("appClass eq '{}'", c.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" or ");
        format!("({classes}) and {dates}")
    }
}

/// Only the fields identity needs; everything else stays in the raw bytes untouched.
#[derive(Deserialize)]
struct Ident<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    etag: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "createdDateTime")]
    created: Option<std::borrow::Cow<'a, str>>,
}

impl Source for CopilotSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Copilot
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Interactions
    }

    fn window_url(&self, base: &Url, scope: &Scope, window: &Window) -> Url {
        let mut url = base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend([
                "copilot",
                "users",
                scope.id.as_str(),
                "interactionHistory",
                "getAllEnterpriseInteractions",
            ]);
        }
        url.query_pairs_mut()
            .append_pair("$filter", &self.filter(window))
            .append_pair("$top", &self.page_size.to_string());
        url
    }

    fn record_meta(&self, scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError> {
        let ident: Ident =
            serde_json::from_str(raw.get()).map_err(|e| SourceError::NotAnObject(e.to_string()))?;
        let id = non_empty(ident.id, "id")?;
        // etag is documented on aiInteraction; fall back to the id (which is also the item's
        // version stamp in every observed payload) rather than refuse the record.
        let etag = match ident.etag {
            Some(e) if !e.is_empty() => e.into_owned(),
            _ => id.clone(),
        };
        let created = ident
            .created
            .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
            .map(|d| d.with_timezone(&Utc));
        Ok(RecordMeta {
            parts: vec![scope.id.clone(), id],
            etag,
            created,
            chat_id: None,
        })
    }
}

fn non_empty(
    v: Option<std::borrow::Cow<'_, str>>,
    field: &'static str,
) -> Result<String, SourceError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s.into_owned()),
        Some(_) => Err(SourceError::MissingField {
            field,
            problem: "empty",
        }),
        None => Err(SourceError::MissingField {
            field,
            problem: "absent",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ScopeKind;
    use chrono::TimeZone;

    fn scope(id: &str) -> Scope {
        Scope {
            kind: ScopeKind::User,
            id: id.into(),
            label: None,
        }
    }

    #[test]
    fn url_carries_documented_filter_and_top() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let w = Window {
            start: Utc
                .with_ymd_and_hms(2024, 9, 9, 16, 48, 35)
                .single()
                .expect("t"),
            end: Utc
                .with_ymd_and_hms(2024, 11, 15, 21, 48, 35)
                .single()
                .expect("t"),
        };
        let url = CopilotSource::new(100).window_url(&base, &scope("9fce-1"), &w);
        assert_eq!(
            url.path(),
            "/v1.0/copilot/users/9fce-1/interactionHistory/getAllEnterpriseInteractions"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "$filter".into(),
                    "createdDateTime gt 2024-09-09T16:48:35.000Z and createdDateTime lt 2024-11-15T21:48:35.000Z".into()
                ),
                ("$top".into(), "100".into()),
            ]
        );
    }

    #[test]
    fn app_class_filter_is_quoted() {
        let w = Window {
            start: Utc.timestamp_opt(0, 0).single().expect("t"),
            end: Utc.timestamp_opt(60, 0).single().expect("t"),
        };
        let f = CopilotSource::new(100)
            .with_app_classes(vec![
                "IPM.SkypeTeams.Message.Copilot.Word".into(),
                "o'x".into(),
            ])
            .filter(&w);
        assert!(f.starts_with(
            "(appClass eq 'IPM.SkypeTeams.Message.Copilot.Word' or appClass eq 'o''x') and createdDateTime gt"
        ));
    }

    #[test]
    fn identity_includes_the_user() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"id":"1731701801008","etag":"1731701801008","createdDateTime":"2024-11-15T20:16:41.008Z","future":{"x":1}}"#,
        )
        .expect("json");
        let src = CopilotSource::new(100);
        let a = src.record_meta(&scope("user-a"), &raw).expect("meta");
        let b = src.record_meta(&scope("user-b"), &raw).expect("meta");
        assert_ne!(a.parts, b.parts);
        assert_eq!(a.etag, "1731701801008");
        assert_eq!(a.created.map(|c| c.timestamp_millis()), Some(1731701801008));
    }

    #[test]
    fn missing_id_is_an_error() {
        let raw: Box<RawValue> = serde_json::from_str(r#"{"etag":"1"}"#).expect("json");
        assert!(CopilotSource::new(100)
            .record_meta(&scope("u"), &raw)
            .is_err());
        let raw: Box<RawValue> = serde_json::from_str(r#"[1,2]"#).expect("json");
        assert!(CopilotSource::new(100)
            .record_meta(&scope("u"), &raw)
            .is_err());
    }
}
