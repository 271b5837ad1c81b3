//! Meeting transcripts and recordings of one organizer (seed 002, examples 3 and 4):
//! `GET /users/{id}/onlineMeetings/getAllTranscripts(meetingOrganizerUserId='{id}',
//! startDateTime=..,endDateTime=..)` and `getAllRecordings(...)`, in createdDateTime windows.
//!
//! The record is the artifact's metadata; its content (WebVTT transcript, MP4 recording) is
//! downloaded and stored beside it by `content`. Identity is (organizer id, meeting id, item
//! id). Artifacts carry no etag and never change (a new recording is a new item), so their
//! createdDateTime is their version stamp.

use super::util::{join, optional, required, time};
use super::{ContentRef, RecordMeta, Scope, Source, SourceError, SourceKind, Window};
use crate::graph::Endpoint;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::time::Duration;
use url::Url;

/// Page size for artifact listings: they are small, and the seed shows pages of 10.
pub const MAX_TOP: u32 = 100;

/// Transcripts or recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    Transcripts,
    Recordings,
}

impl Artifact {
    fn function(self) -> &'static str {
        match self {
            Artifact::Transcripts => "getAllTranscripts",
            Artifact::Recordings => "getAllRecordings",
        }
    }

    fn segment(self) -> &'static str {
        match self {
            Artifact::Transcripts => "transcripts",
            Artifact::Recordings => "recordings",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Artifact::Transcripts => "vtt",
            Artifact::Recordings => "mp4",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MeetingsSource {
    artifact: Artifact,
    page_size: u32,
    content_timeout: Duration,
}

impl MeetingsSource {
    pub fn new(artifact: Artifact, page_size: u32, content_timeout: Duration) -> Self {
        MeetingsSource {
            artifact,
            page_size: page_size.clamp(1, MAX_TOP),
            content_timeout,
        }
    }
}

#[derive(Deserialize)]
struct ArtifactIdent<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    etag: Option<Cow<'a, str>>,
    #[serde(rename = "meetingId", borrow)]
    meeting_id: Option<Cow<'a, str>>,
    #[serde(rename = "meetingOrganizerId", borrow)]
    organizer_id: Option<Cow<'a, str>>,
    #[serde(rename = "createdDateTime", borrow)]
    created: Option<Cow<'a, str>>,
    #[serde(rename = "transcriptContentUrl", borrow)]
    transcript_url: Option<Cow<'a, str>>,
    #[serde(rename = "recordingContentUrl", borrow)]
    recording_url: Option<Cow<'a, str>>,
}

impl<'a> ArtifactIdent<'a> {
    fn parse(raw: &'a RawValue) -> Result<Self, SourceError> {
        serde_json::from_str(raw.get()).map_err(|e| SourceError::NotAnObject(e.to_string()))
    }

    /// (organizer, meeting, item); the organizer is the scope when the record leaves it out.
    fn parts(&self, scope: &Scope) -> Result<[String; 3], SourceError> {
        Ok([
            optional(self.organizer_id.clone()).unwrap_or_else(|| scope.id.clone()),
            required(self.meeting_id.clone(), "meetingId")?,
            required(self.id.clone(), "id")?,
        ])
    }
}

impl Source for MeetingsSource {
    fn kind(&self) -> SourceKind {
        match self.artifact {
            Artifact::Transcripts => SourceKind::Transcripts,
            Artifact::Recordings => SourceKind::Recordings,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Other
    }

    fn window_url(&self, base: &Url, scope: &Scope, window: &Window) -> Url {
        let call = format!(
            "{}(meetingOrganizerUserId='{}',startDateTime={},endDateTime={})",
            self.artifact.function(),
            scope.id.replace('\'', "''"),
            Window::odata(window.start),
            Window::odata(window.end)
        );
        let mut url = join(
            base,
            &["users", scope.id.as_str(), "onlineMeetings", call.as_str()],
        );
        url.query_pairs_mut()
            .append_pair("$top", &self.page_size.to_string());
        url
    }

    fn record_meta(&self, scope: &Scope, raw: &RawValue) -> Result<RecordMeta, SourceError> {
        let a = ArtifactIdent::parse(raw)?;
        let parts = a.parts(scope)?;
        let etag = optional(a.etag.clone())
            .or_else(|| optional(a.created.clone()))
            .unwrap_or_else(|| parts[2].clone());
        Ok(RecordMeta {
            parts: parts.to_vec(),
            etag,
            created: time(a.created.as_deref()),
            chat_id: None,
        })
    }

    /// The content URL Graph gives (seed: it may come with a leading space), if it is on the
    /// configured Graph origin; otherwise the documented form built from the ids, so that the
    /// token never travels elsewhere.
    fn content(
        &self,
        base: &Url,
        scope: &Scope,
        raw: &RawValue,
    ) -> Result<Option<ContentRef>, SourceError> {
        let a = ArtifactIdent::parse(raw)?;
        let given = match self.artifact {
            Artifact::Transcripts => a.transcript_url.as_deref(),
            Artifact::Recordings => a.recording_url.as_deref(),
        };
        let url = match given.and_then(|u| Url::parse(u.trim()).ok()) {
            Some(u) if u.origin() == base.origin() => u,
            _ => {
                let [organizer, meeting, item] = a.parts(scope)?;
                join(
                    base,
                    &[
                        "users",
                        &organizer,
                        "onlineMeetings",
                        &meeting,
                        self.artifact.segment(),
                        &item,
                        "content",
                    ],
                )
            }
        };
        Ok(Some(ContentRef {
            url,
            extension: self.artifact.extension(),
            timeout: self.content_timeout,
        }))
    }

    fn has_content(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ScopeKind;
    use chrono::{TimeZone, Utc};

    fn scope(id: &str) -> Scope {
        Scope {
            kind: ScopeKind::Organizer,
            id: id.into(),
            label: None,
        }
    }

    const RECORD: &str = r##"{"@odata.type":"#microsoft.graph.meetingRecording","id":"MSMjMCMjMGFj","meetingId":"MSoxMjcz","meetingOrganizerId":"org-1","createdDateTime":"2022-08-03T20:43:36.2573447Z","recordingContentUrl":" https://graph.microsoft.com/v1.0/users/org-1/onlineMeetings/MSoxMjcz/recordings/MSMjMCMjMGFj/content"}"##;

    #[test]
    fn url_is_the_documented_function_call() {
        let base = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let w = Window {
            start: Utc
                .with_ymd_and_hms(2023, 3, 17, 0, 0, 0)
                .single()
                .expect("t"),
            end: Utc
                .with_ymd_and_hms(2023, 3, 18, 0, 0, 0)
                .single()
                .expect("t"),
        };
        let src = MeetingsSource::new(Artifact::Transcripts, 500, Duration::from_secs(60));
        let url = src.window_url(&base, &scope("ba321e0d-79ee-478d-8e28-85a19507f456"), &w);
        assert_eq!(
            url.as_str(),
            "https://graph.microsoft.com/v1.0/users/ba321e0d-79ee-478d-8e28-85a19507f456/onlineMeetings/getAllTranscripts(meetingOrganizerUserId='ba321e0d-79ee-478d-8e28-85a19507f456',startDateTime=2023-03-17T00:00:00.000Z,endDateTime=2023-03-18T00:00:00.000Z)?%24top=100"
        );
    }

    #[test]
    fn identity_and_content_link() {
        let raw: Box<RawValue> = serde_json::from_str(RECORD).expect("json");
        let src = MeetingsSource::new(Artifact::Recordings, 10, Duration::from_secs(60));
        let meta = src.record_meta(&scope("org-1"), &raw).expect("meta");
        assert_eq!(meta.parts, vec!["org-1", "MSoxMjcz", "MSMjMCMjMGFj"]);
        assert_eq!(meta.etag, "2022-08-03T20:43:36.2573447Z");
        let graph = Url::parse("https://graph.microsoft.com/v1.0").expect("url");
        let c = src
            .content(&graph, &scope("org-1"), &raw)
            .expect("ok")
            .expect("content");
        assert_eq!(
            c.url.path(),
            "/v1.0/users/org-1/onlineMeetings/MSoxMjcz/recordings/MSMjMCMjMGFj/content"
        );
        assert_eq!(c.extension, "mp4");
        // Another origin (a proxy, a national cloud): built from the ids on ours.
        let local = Url::parse("http://127.0.0.1:9/v1.0").expect("url");
        let c = src
            .content(&local, &scope("org-1"), &raw)
            .expect("ok")
            .expect("content");
        assert_eq!(
            c.url.as_str(),
            "http://127.0.0.1:9/v1.0/users/org-1/onlineMeetings/MSoxMjcz/recordings/MSMjMCMjMGFj/content"
        );
        let no_meeting: Box<RawValue> = serde_json::from_str(r#"{"id":"x"}"#).expect("json");
        assert!(src.record_meta(&scope("o"), &no_meeting).is_err());
    }
}
