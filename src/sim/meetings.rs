//! Meeting transcripts and recordings: `getAllTranscripts(...)` / `getAllRecordings(...)` per
//! organizer with a date window (seed 002, examples 3 and 4), and their content: WebVTT
//! transcripts, and MP4 recordings generated on the fly from the seed, block by block, so that
//! a recording of any size is never held in memory. Content honours `Range` (and `If-Range`),
//! so a client can resume an interrupted download.

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use super::data::{format_ms, mix, ms_to_time, parse_time, uuid_from, Tenant};
use super::error::GraphError;
use super::json::{render, J};
use super::odata::{fingerprint, next_link, parse_params, parse_top, SkipToken};
use super::page::{page_response, render_page, Origin, PageStyle};
use super::render::record_style;
use super::teams_data::{Artifact, Meeting};
use super::text;
use super::{lock, read, SimState};

/// Generated content is produced and sent in blocks of this size.
const BLOCK: usize = 64 * 1024;

/// Which artifact list a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArtifactKind {
    Transcript,
    Recording,
}

impl ArtifactKind {
    pub(crate) fn list(self, m: &Meeting) -> &[Artifact] {
        match self {
            ArtifactKind::Transcript => &m.transcripts,
            ArtifactKind::Recording => &m.recordings,
        }
    }

    fn function(self) -> &'static str {
        match self {
            ArtifactKind::Transcript => "getAllTranscripts",
            ArtifactKind::Recording => "getAllRecordings",
        }
    }

    fn segment(self) -> &'static str {
        match self {
            ArtifactKind::Transcript => "transcripts",
            ArtifactKind::Recording => "recordings",
        }
    }
}

/// A response whose body is streamed: the gate must not buffer it to inject body faults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streamed {
    pub len: u64,
}

/// The window and organizer of a `getAll...(...)` call, in 100 ns ticks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Call {
    organizer: String,
    after_ticks: Option<i64>,
    before_ticks: Option<i64>,
}

/// `GET /users/{id}/onlineMeetings/{function}`
pub(crate) async fn artifacts(
    State(st): State<Arc<SimState>>,
    Path((user_id, function)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let (kind, args) = split_function(&function)?;
    let params = parse_params(&uri, &["$top", "$skiptoken", "$filter"])?;
    let call = parse_call(args, params.get("$filter").map(String::as_str))?;
    if !call.organizer.eq_ignore_ascii_case(&user_id) {
        return Err(GraphError::bad_request(
            "meetingOrganizerUserId must be the user the request is made for.",
        ));
    }
    let max = st.teams.max_top;
    let top = parse_top(params.get("$top"), max, max, true)?;
    let fp = fingerprint(&[
        kind.function(),
        &user_id.to_ascii_lowercase(),
        &format!("{call:?}"),
        &top.to_string(),
    ]);
    let skip = params
        .get("$skiptoken")
        .map(|t| SkipToken::decode(t, fp))
        .transpose()?
        .map_or(0, |t| t.skip as usize);
    let origin = Origin::new(&uri, &headers);
    let (items, total) = {
        let tenant = read(&st.tenant);
        let user = tenant.user(&user_id).ok_or_else(|| {
            GraphError::not_found(format!("The requested user '{user_id}' is invalid."))
        })?;
        let all = listed(
            &st,
            &tenant,
            user.index,
            kind,
            &call,
            Utc::now().timestamp_millis(),
        );
        let items: Vec<String> = all
            .iter()
            .skip(skip)
            .take(top as usize)
            .map(|(m, a)| render_artifact(&st, &tenant, &origin, kind, m, a))
            .collect();
        (items, all.len())
    };
    let next = (skip + (top as usize) < total).then(|| {
        let token = SkipToken {
            skip: (skip + top as usize) as u64,
            as_of_ms: 0,
            fingerprint: fp,
        };
        let options = [
            ("$filter", params.get("$filter").map(String::as_str)),
            ("$top", params.get("$top").map(String::as_str)),
        ];
        next_link(
            &format!("{}{}", origin.host_url, uri.path()),
            &options,
            &token,
        )
    });
    let context = origin.context(match kind {
        ArtifactKind::Transcript => "Collection(callTranscript)",
        ArtifactKind::Recording => "Collection(meetingRecording)",
    });
    let style = PageStyle::varied(mix(fp, skip as u64));
    Ok(page_response(render_page(
        &context,
        true,
        next.as_deref(),
        &items,
        style,
    )))
}

/// The artifacts an organizer's call lists, unordered across meetings but in creation order
/// within one meeting (seed 002: "correctly sequenced for the meeting in question").
fn listed<'t>(
    st: &SimState,
    tenant: &'t Tenant,
    organizer: usize,
    kind: ArtifactKind,
    call: &Call,
    now_ms: i64,
) -> Vec<(&'t Meeting, &'t Artifact)> {
    let mut out: Vec<(u64, i64, &Meeting, &Artifact)> = Vec::new();
    for &mi in tenant
        .teams
        .organizer_meetings
        .get(organizer)
        .into_iter()
        .flatten()
    {
        let m = &tenant.teams.meetings[mi as usize];
        for a in kind.list(m) {
            let t = a.created_ticks;
            let inside =
                call.after_ticks.is_none_or(|s| t > s) && call.before_ticks.is_none_or(|e| t < e);
            if inside && a.created_ms() <= now_ms {
                out.push((mix(st.seed, u64::from(mi)), t, m, a));
            }
        }
    }
    out.sort_by_key(|(order, t, _, _)| (*order, *t));
    out.into_iter().map(|(_, _, m, a)| (m, a)).collect()
}

fn split_function(segment: &str) -> Result<(ArtifactKind, Option<&str>), GraphError> {
    let (name, args) = match segment.split_once('(') {
        Some((name, rest)) => {
            let args = rest.strip_suffix(')').ok_or_else(|| {
                GraphError::bad_request(format!("Malformed function call '{segment}'."))
            })?;
            (name, Some(args))
        }
        None => (segment, None),
    };
    let kind = match name {
        n if n.eq_ignore_ascii_case("getAllTranscripts") => ArtifactKind::Transcript,
        n if n.eq_ignore_ascii_case("getAllRecordings") => ArtifactKind::Recording,
        _ => {
            return Err(GraphError::bad_request(format!(
                "Resource not found for the segment '{segment}'."
            )))
        }
    };
    Ok((kind, args))
}

/// `meetingOrganizerUserId='..',startDateTime=..,endDateTime=..`; without arguments the older
/// `$filter=MeetingOrganizer/User/Id eq '..'` form. The organizer is required either way.
fn parse_call(args: Option<&str>, filter: Option<&str>) -> Result<Call, GraphError> {
    let mut call = Call::default();
    for arg in args
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let (key, value) = arg.split_once('=').ok_or_else(|| {
            GraphError::bad_request(format!("Malformed function parameter '{arg}'."))
        })?;
        match key.trim().to_ascii_lowercase().as_str() {
            "meetingorganizeruserid" => call.organizer = unquote(value)?.to_owned(),
            "startdatetime" => call.after_ticks = Some(ticks(value)?),
            "enddatetime" => call.before_ticks = Some(ticks(value)?),
            other => {
                return Err(GraphError::bad_request(format!(
                    "Unknown function parameter '{other}'."
                )))
            }
        }
    }
    if call.organizer.is_empty() {
        if let Some(f) = filter {
            call.organizer = organizer_filter(f)?;
        }
    }
    if call.organizer.is_empty() {
        return Err(GraphError::bad_request(
            "The parameter meetingOrganizerUserId is required.",
        ));
    }
    Ok(call)
}

fn unquote(v: &str) -> Result<&str, GraphError> {
    v.trim()
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .ok_or_else(|| GraphError::bad_request(format!("Expected a quoted string, found {v}.")))
}

fn ticks(v: &str) -> Result<i64, GraphError> {
    let t = parse_time(v.trim()).ok_or_else(|| {
        GraphError::bad_request(format!("Unrecognized 'Edm.DateTimeOffset' literal '{v}'."))
    })?;
    Ok(t.timestamp() * 10_000_000 + i64::from(t.timestamp_subsec_nanos() / 100))
}

fn organizer_filter(f: &str) -> Result<String, GraphError> {
    let lower = f.trim();
    let rest = lower
        .strip_prefix("MeetingOrganizer/User/Id eq ")
        .or_else(|| lower.strip_prefix("meetingOrganizer/user/id eq "))
        .ok_or_else(|| GraphError::bad_request(format!("Unsupported filter '{f}'.")))?;
    Ok(unquote(rest)?.to_owned())
}

/// `2022-08-03T20:43:36.2573447Z`: Graph's seven fractional digits.
pub(crate) fn format_ticks(t: i64) -> String {
    let ms = t.div_euclid(10_000);
    let secs = ms_to_time(ms).format("%Y-%m-%dT%H:%M:%S").to_string();
    format!("{secs}.{:07}Z", t.rem_euclid(10_000_000))
}

/// The content URL Graph puts in an artifact.
pub(crate) fn content_url(
    root: &str,
    organizer: &str,
    m: &Meeting,
    kind: ArtifactKind,
    a: &Artifact,
) -> String {
    format!(
        "{root}/users/{organizer}/onlineMeetings/{}/{}/{}/content",
        m.id,
        kind.segment(),
        a.id
    )
}

pub(crate) fn render_artifact(
    st: &SimState,
    tenant: &Tenant,
    origin: &Origin,
    kind: ArtifactKind,
    m: &Meeting,
    a: &Artifact,
) -> String {
    let organizer = tenant
        .users
        .get(m.organizer as usize)
        .map(|u| u.id.clone())
        .unwrap_or_default();
    let url = content_url(&origin.root(), &organizer, m, kind, a);
    let (odata_type, url_key, url) = match kind {
        ArtifactKind::Transcript => (
            "#microsoft.graph.callTranscript",
            "transcriptContentUrl",
            url,
        ),
        ArtifactKind::Recording => (
            "#microsoft.graph.meetingRecording",
            "recordingContentUrl",
            if a.odd_url { format!(" {url}") } else { url },
        ),
    };
    let tree = J::obj(vec![
        ("@odata.type", J::str(odata_type)),
        ("id", J::str(a.id.clone())),
        ("meetingId", J::str(m.id.clone())),
        ("meetingOrganizerId", J::str(organizer.clone())),
        (url_key, J::Str(url)),
        ("createdDateTime", J::str(format_ticks(a.created_ticks))),
        ("endDateTime", J::str(format_ms(m.end_ms))),
        ("contentCorrelationId", J::str(uuid_from(mix(a.seed, 0xc0)))),
        (
            "meetingOrganizer",
            J::obj(vec![
                ("application", J::Null),
                ("device", J::Null),
                (
                    "user",
                    J::obj(vec![
                        ("id", J::str(organizer)),
                        ("displayName", J::Null),
                        ("userIdentityType", J::str("aadUser")),
                        ("tenantId", J::str(st.tenant_id.clone())),
                    ]),
                ),
            ]),
        ),
    ]);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(a.seed);
    render(&tree, &record_style(&mut rng))
}

// ------------------------------------------------------------------------------ content

/// `GET /users/{id}/onlineMeetings/{meeting}/transcripts/{id}/content`
pub(crate) async fn transcript_content(
    State(st): State<Arc<SimState>>,
    Path((user_id, meeting_id, item_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let body = {
        let tenant = read(&st.tenant);
        let (m, a) = find(
            &tenant,
            &user_id,
            &meeting_id,
            ArtifactKind::Transcript,
            &item_id,
        )?;
        transcript_vtt(&tenant, m, a)
    };
    let source = Content::Text(Bytes::from(body));
    Ok(serve(&headers, source, "text/vtt"))
}

/// `GET /users/{id}/onlineMeetings/{meeting}/recordings/{id}/content`
pub(crate) async fn recording_content(
    State(st): State<Arc<SimState>>,
    Path((user_id, meeting_id, item_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, GraphError> {
    let synthetic = {
        let tenant = read(&st.tenant);
        let (_, a) = find(
            &tenant,
            &user_id,
            &meeting_id,
            ArtifactKind::Recording,
            &item_id,
        )?;
        Synthetic::of(a)
    };
    Ok(serve(&headers, Content::Synthetic(synthetic), "video/mp4"))
}

fn find<'t>(
    tenant: &'t Tenant,
    user_id: &str,
    meeting_id: &str,
    kind: ArtifactKind,
    item_id: &str,
) -> Result<(&'t Meeting, &'t Artifact), GraphError> {
    let not_found =
        || GraphError::not_found(format!("The requested {} was not found.", kind.segment()));
    let user = tenant.user(user_id).ok_or_else(not_found)?;
    tenant
        .teams
        .organizer_meetings
        .get(user.index)
        .into_iter()
        .flatten()
        .map(|&i| &tenant.teams.meetings[i as usize])
        .filter(|m| m.id == meeting_id)
        .find_map(|m| {
            kind.list(m)
                .iter()
                .find(|a| a.id == item_id)
                .map(|a| (m, a))
        })
        .ok_or_else(not_found)
}

/// A WebVTT transcript: a few dozen cues spoken by the organizer and attendees.
pub(crate) fn transcript_vtt(tenant: &Tenant, m: &Meeting, a: &Artifact) -> String {
    let mut out = String::from("WEBVTT\r\n\r\n");
    let speakers: Vec<String> = std::iter::once(m.organizer)
        .chain(m.attendees.iter().copied())
        .filter_map(|i| tenant.users.get(i as usize).map(|u| u.display_name()))
        .collect();
    let cues = 20 + a.seed % 40;
    let mut at_ms = 0u64;
    for k in 0..cues {
        let h = mix(a.seed, k);
        let len = 1_500 + h % 6_000;
        let topic = &text::TOPICS[(h >> 8) as usize % text::TOPICS.len()];
        let said = if h.is_multiple_of(2) {
            topic.prompt
        } else {
            topic.answer
        };
        let who = speakers
            .get((h >> 16) as usize % speakers.len().max(1))
            .cloned()
            .unwrap_or_default();
        out.push_str(&format!(
            "{}/{}\r\n{} --> {}\r\n<v {who}>{}</v>\r\n\r\n",
            uuid_from(mix(h, 1)),
            k,
            vtt_time(at_ms),
            vtt_time(at_ms + len),
            said.replace("\r\n", " ").replace('\n', " ")
        ));
        at_ms += len + h % 700;
    }
    out
}

fn vtt_time(ms: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A synthetic recording: an MP4 `ftyp` box, an `mdat` header, then bytes from a keyed hash of
/// their position, so any range can be produced without producing what precedes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Synthetic {
    pub seed: u64,
    pub size: u64,
}

impl Synthetic {
    pub(crate) fn of(a: &Artifact) -> Synthetic {
        Synthetic {
            seed: a.seed,
            size: a.size,
        }
    }

    fn header(&self) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[..24].copy_from_slice(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41");
        h[24..28].copy_from_slice(&1u32.to_be_bytes());
        h[28..32].copy_from_slice(b"mdat");
        h[32..40].copy_from_slice(&self.size.saturating_sub(24).to_be_bytes());
        h
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`: byte `pos` is byte
    /// `pos % 8` (little-endian) of a keyed hash of `pos / 8`.
    pub(crate) fn fill(&self, offset: u64, buf: &mut [u8]) {
        let header = self.header();
        let mut i = 0;
        while i < buf.len() {
            let pos = offset + i as u64;
            if let Some(&h) = header.get(pos as usize) {
                buf[i] = h;
                i += 1;
                continue;
            }
            let word = mix(self.seed, pos / 8).to_le_bytes();
            let from = (pos % 8) as usize;
            let n = (8 - from).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[from..from + n]);
            i += n;
        }
    }

    /// The sha256 of the whole recording (streamed, never held).
    pub(crate) fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BLOCK];
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(BLOCK as u64) as usize;
            self.fill(at, &mut buf[..n]);
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        hex::encode(hasher.finalize())
    }

    fn etag(&self) -> String {
        format!("\"{:016x}-{}\"", self.seed, self.size)
    }
}

/// Cached sha256 of a recording for the ground truth (hashing a large one takes a while).
pub(crate) fn recording_sha256(st: &SimState, s: Synthetic) -> String {
    if let Some(sha) = lock(&st.content_sha).get(&s.seed) {
        return sha.clone();
    }
    let sha = s.sha256();
    lock(&st.content_sha).insert(s.seed, sha.clone());
    sha
}

enum Content {
    Text(Bytes),
    Synthetic(Synthetic),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Text(b) => b.len() as u64,
            Content::Synthetic(s) => s.size,
        }
    }

    fn etag(&self) -> String {
        match self {
            Content::Text(b) => format!("\"{}\"", &hex::encode(Sha256::digest(b))[..16]),
            Content::Synthetic(s) => s.etag(),
        }
    }

    /// The body for `start..end`, streamed block by block.
    fn body(self, start: u64, end: u64) -> Body {
        match self {
            Content::Text(b) => Body::from(b.slice(start as usize..end as usize)),
            Content::Synthetic(s) => {
                let blocks = futures::stream::unfold(start, move |at| async move {
                    if at >= end {
                        return None;
                    }
                    let n = (end - at).min(BLOCK as u64) as usize;
                    let mut buf = vec![0u8; n];
                    s.fill(at, &mut buf);
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), at + n as u64))
                });
                Body::from_stream(blocks)
            }
        }
    }
}

/// A 200 with the whole content, or a 206 for a satisfiable single `Range` (416 otherwise).
fn serve(headers: &HeaderMap, content: Content, content_type: &'static str) -> Response {
    let len = content.len();
    let etag = content.etag();
    let range = requested_range(headers, &etag, len);
    let (status, start, end) = match range {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Err(()) => {
            let mut resp = (StatusCode::RANGE_NOT_SATISFIABLE, "").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let mut resp = (status, content.body(start, end)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (name, value) in [
        (header::CONTENT_LENGTH, (end - start).to_string()),
        (header::ETAG, etag),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp.extensions_mut().insert(Streamed { len: end - start });
    resp
}

/// The single byte range asked for, as `start..end`; None for the whole content (no Range,
/// several ranges, or an If-Range that no longer matches); Err when unsatisfiable.
fn requested_range(headers: &HeaderMap, etag: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(raw) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(cond) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if cond.trim() != etag {
            return Ok(None);
        }
    }
    let Some(spec) = raw.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len),
        (s, e) => {
            let e: u64 = e.parse().map_err(|_| ())?;
            (s.parse().map_err(|_| ())?, (e + 1).min(len))
        }
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_ranges_match_the_whole() {
        let s = Synthetic {
            seed: 9,
            size: 200_003,
        };
        let mut whole = vec![0u8; s.size as usize];
        s.fill(0, &mut whole);
        assert_eq!(&whole[4..8], b"ftyp");
        let mut part = vec![0u8; 1000];
        s.fill(150_001, &mut part);
        assert_eq!(&part[..], &whole[150_001..151_001]);
        assert_eq!(s.sha256(), hex::encode(Sha256::digest(&whole)));
    }

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        let mut h = HeaderMap::new();
        let etag = "\"x\"";
        assert_eq!(requested_range(&h, etag, 100), Ok(None));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        assert_eq!(requested_range(&h, etag, 100), Ok(Some((10, 100))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
        assert_eq!(requested_range(&h, etag, 100), Ok(Some((10, 20))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-5"));
        assert_eq!(requested_range(&h, etag, 100), Ok(Some((95, 100))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=100-"));
        assert_eq!(requested_range(&h, etag, 100), Err(()));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"other\""));
        assert_eq!(
            requested_range(&h, etag, 100),
            Ok(None),
            "a stale If-Range gets everything"
        );
    }

    #[test]
    fn function_calls_need_the_organizer() {
        let (kind, args) = split_function(
            "getAllRecordings(meetingOrganizerUserId='u1',startDateTime=2023-03-17T00:00:00Z,endDateTime=2023-03-18T00:00:00.5Z)",
        )
        .expect("call");
        assert_eq!(kind, ArtifactKind::Recording);
        let call = parse_call(args, None).expect("args");
        assert_eq!(call.organizer, "u1");
        assert_eq!(call.before_ticks.map(|t| t % 10_000_000), Some(5_000_000));
        assert!(parse_call(Some("startDateTime=2023-03-17T00:00:00Z"), None).is_err());
        let legacy =
            parse_call(None, Some("MeetingOrganizer/User/Id eq 'u2'")).expect("filter form");
        assert_eq!(legacy.organizer, "u2");
        assert_eq!(
            format_ticks(16_595_594_162_573_447),
            "2022-08-03T20:43:36.2573447Z"
        );
    }
}
