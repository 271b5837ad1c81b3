//! Sources: one per Graph export API. A source knows Graph (which URL to call for a scope and
//! window, how to read a record's identity out of its JSON); it knows nothing of storage.
//! The generic window runner in `ingest` pages through the URLs a source builds.

pub mod channels;
pub mod chats;
pub mod copilot;
pub mod meetings;
pub mod settings;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use url::Url;

use crate::graph::Endpoint;

/// The export APIs this archiver knows. The lowercase names are the config values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Copilot,
    Chats,
    Channels,
    Transcripts,
    Recordings,
}

impl SourceKind {
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Copilot,
        SourceKind::Chats,
        SourceKind::Channels,
        SourceKind::Transcripts,
        SourceKind::Recordings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Copilot => "copilot",
            SourceKind::Chats => "chats",
            SourceKind::Channels => "channels",
            SourceKind::Transcripts => "transcripts",
            SourceKind::Recordings => "recordings",
        }
    }

    pub fn parse(s: &str) -> Option<SourceKind> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Teams export APIs (everything but Copilot): they share the `[teams]` settings.
    pub fn is_teams(self) -> bool {
        !matches!(self, SourceKind::Copilot)
    }

    /// What kind of scope this source is exported per.
    pub fn scope_kind(self) -> ScopeKind {
        match self {
            SourceKind::Copilot | SourceKind::Chats => ScopeKind::User,
            SourceKind::Channels => ScopeKind::Team,
            SourceKind::Transcripts | SourceKind::Recordings => ScopeKind::Organizer,
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    User,
    Team,
    Organizer,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::User => "user",
            ScopeKind::Team => "team",
            ScopeKind::Organizer => "organizer",
        }
    }
}

/// One unit of export: a user, a team or a meeting organizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub kind: ScopeKind,
    /// The Graph object id (user id, team id).
    pub id: String,
    /// A human label for logs and status (UPN, team name); never used as a key.
    pub label: Option<String>,
}

/// A date window, exclusive at both ends because Graph documents only `gt` and `lt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// The OData literal Graph expects, at millisecond precision.
    pub fn odata(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{}",
            Window::odata(self.start),
            Window::odata(self.end)
        )
    }
}

/// Identity of one record version, as the source defines it (see DESIGN.md "Record identity").
/// `parts` are the ids that together make the record unique across the tenant, outermost first
/// (for Copilot: user id, interaction id); `etag` distinguishes versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordMeta {
    pub parts: Vec<String>,
    pub etag: String,
    /// The record's own creation time, for retention and for status; None if absent.
    pub created: Option<DateTime<Utc>>,
    /// The chat the record belongs to, when exporting it shows that the scope's user takes
    /// part in that chat (a user's getAllMessages returns only their chats' messages).
    pub chat_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("record has no usable `{field}` ({problem})")]
    MissingField {
        field: &'static str,
        problem: &'static str,
    },
    #[error("record is not a JSON object: {0}")]
    NotAnObject(String),
}

/// Content that belongs to a record (a meeting's transcript or recording) and must be archived
/// before the record's window completes. `content` downloads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRef {
    /// Where Graph serves it; always on the configured Graph origin.
    pub url: Url,
    /// File name extension of the stored object (`vtt`, `mp4`).
    pub extension: &'static str,
    /// Limit for the whole transfer (recordings run to hundreds of MB).
    pub timeout: std::time::Duration,
}

/// A Graph export API. Pure knowledge of Graph: URLs and record identities.
pub trait Source: Send + Sync {
    fn kind(&self) -> SourceKind;
    /// Which rate budget its list requests draw from.
    fn endpoint(&self) -> Endpoint;
    /// The first page's URL for a scope and window; later pages come from `@odata.nextLink`.
    fn window_url(&self, base: &Url, scope: &Scope, window: &Window) -> Url;
    /// Extra request headers (e.g. `Prefer`), if any.
    fn headers(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Reads the identity of one record from its exact JSON bytes.
    fn record_meta(&self, scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError>;
    /// The URL of the page after this one, from Graph's `@odata.nextLink`. Sources add back
    /// query parameters every request must carry should a nextLink drop them (the Teams
    /// `model`).
    fn next_page_url(&self, next: Url) -> Url {
        next
    }
    /// Content to archive with a record, if the source has any (meeting artifacts).
    fn content(
        &self,
        _base: &Url,
        _scope: &Scope,
        _raw: &RawValue,
    ) -> Result<Option<ContentRef>, SourceError> {
        Ok(None)
    }
    /// Whether `content` can return anything, so callers skip the work for other sources.
    fn has_content(&self) -> bool {
        false
    }
}

/// Helpers the Teams sources share for reading JSON and building URLs.
pub(crate) mod util {
    use super::SourceError;
    use chrono::{DateTime, Utc};
    use std::borrow::Cow;
    use url::Url;

    /// A required string field, non-empty.
    pub(crate) fn required(
        v: Option<Cow<'_, str>>,
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

    /// An optional string field; empty counts as absent.
    pub(crate) fn optional(v: Option<Cow<'_, str>>) -> Option<String> {
        v.filter(|s| !s.trim().is_empty()).map(Cow::into_owned)
    }

    pub(crate) fn time(v: Option<&str>) -> Option<DateTime<Utc>> {
        v.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|d| d.with_timezone(&Utc))
    }

    /// `base` with `segments` appended, each encoded as one path segment.
    pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
        let mut url = base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(segments);
        }
        url
    }

    /// Adds `name=value` to a URL's query unless the parameter is already there.
    pub(crate) fn ensure_param(mut url: Url, name: &str, value: &str) -> Url {
        if !url.query_pairs().any(|(k, _)| k == name) {
            url.query_pairs_mut().append_pair(name, value);
        }
        url
    }
}
