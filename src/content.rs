//! Content that belongs to a record: meeting transcripts (WebVTT, ~300 KB) and recordings
//! (MP4, ~350 MB, some over 1 GB). A body is streamed to a file in the store's staging
//! directory while it is hashed, so memory stays bounded whatever its size; only a complete,
//! hashed file is published (create-only) under its key, so an interrupted download never
//! leaves a partial object that looks complete. A transfer that breaks off is resumed with
//! `Range` (guarded by `If-Range` with the first response's ETag), or restarted from zero when
//! the server will not resume it.
//!
//! Stored under `content/<source>/<organizer>/<meeting>/<item>/<sha256>.<ext>`, outside
//! `records/`, and catalogued as a version of the record key `<record key>/$content` whose
//! etag is the content's sha256 (`$` never survives key encoding, so this key cannot meet a
//! record's). Storing `ingest` wires it into a window: `ingest/content.rs`.

use crate::archive::keys;
use crate::graph::{Endpoint, GraphClient, GraphError};
use crate::sources::ContentRef;
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, ETAG};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Writes go to disk in pieces of this size (the only buffer besides the HTTP chunks).
const WRITE_BUFFER: usize = 1 << 20;
/// A transfer that delivers nothing for this long is treated as broken and resumed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Breaks in one download before it is given up (the next pass starts it again).
const MAX_RESUMES: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("downloading content {path}: {source}")]
    Graph {
        path: String,
        #[source]
        source: GraphError,
    },
    #[error("staging content {path} in {file}: {source}; check free space and permissions of the archive's staging directory")]
    Staging {
        path: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("downloading content {path}: the transfer broke off {resumes} times (last at byte {at}{of}); it will be downloaded again by the next pass")]
    Interrupted {
        path: String,
        resumes: u32,
        at: u64,
        of: String,
    },
    #[error("downloading content {path}: the server answered {detail}")]
    Protocol { path: String, detail: String },
}

/// A complete download in the staging directory.
#[derive(Debug)]
pub struct Downloaded {
    pub file: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The catalogue record key of a record's content.
pub fn content_record_key(record_key: &str) -> String {
    format!("{record_key}/$content")
}

/// `content/<source>/<record key>/<sha256>.<ext>`: the hash in the name makes a changed
/// body a new object instead of a conflict with the old one.
pub fn content_storage_key(
    source: &str,
    record_key: &str,
    sha256: &str,
    extension: &str,
) -> String {
    format!(
        "content/{source}/{record_key}/{sha256}.{}",
        keys::segment(extension)
    )
}

/// Downloads `content` into a new file under `staging`. On any error the partial file is
/// removed; on success the caller owns the file (normally handing it to the store).
pub async fn download(
    graph: &GraphClient,
    content: &ContentRef,
    staging: &Path,
) -> Result<Downloaded, ContentError> {
    let path = content.url.path().to_owned();
    let staging_err = |file: &Path, source| ContentError::Staging {
        path: path.clone(),
        file: file.display().to_string(),
        source,
    };
    tokio::fs::create_dir_all(staging)
        .await
        .map_err(|e| staging_err(staging, e))?;
    // A unique name: two processes never write into one file, and a crash leaves a stray
    // file the store's start-up sweep removes, never something under an archive key.
    let file = staging.join(format!("content-{}.part", uuid::Uuid::new_v4()));
    let result = Transfer::new(graph, content, &file).run().await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&file).await;
    }
    result
}

/// One download: the file, the running hash and what the server promised.
struct Transfer<'a> {
    graph: &'a GraphClient,
    content: &'a ContentRef,
    file: &'a Path,
    hasher: Sha256,
    written: u64,
    /// The total size the server announced, when it did.
    total: Option<u64>,
    /// A strong ETag from the first response, to make sure a resumed range is of the same body.
    validator: Option<String>,
    resumes: u32,
}

/// How a response relates to what is already on disk.
enum Fit {
    /// The whole body from byte 0.
    Whole,
    /// The rest of the body, from exactly where the file ends.
    Rest,
}

impl<'a> Transfer<'a> {
    fn new(graph: &'a GraphClient, content: &'a ContentRef, file: &'a Path) -> Self {
        Transfer {
            graph,
            content,
            file,
            hasher: Sha256::new(),
            written: 0,
            total: None,
            validator: None,
            resumes: 0,
        }
    }

    fn path(&self) -> String {
        self.content.url.path().to_owned()
    }

    async fn run(mut self) -> Result<Downloaded, ContentError> {
        let mut out = self.open(false).await?;
        loop {
            let response = self.request().await?;
            let fit = self.fit(response.headers(), response.status().as_u16())?;
            if matches!(fit, Fit::Whole) && self.written > 0 {
                // The server sent everything again (it cannot resume, or the body changed):
                // start over rather than stitch two bodies together.
                tracing::debug!(path = %self.path(), at = self.written, "content: server restarted the body; downloading from zero");
                out = self.open(true).await?;
            }
            self.note_validator(response.headers());
            match self.pump(response, &mut out).await {
                Ok(()) if self.total.is_none_or(|t| t == self.written) => break,
                Ok(()) => self.broke_off("the body ended early")?,
                Err(Broken::Transfer(why)) => self.broke_off(&why)?,
                Err(Broken::Disk(e)) => return Err(self.staging_error(e)),
            }
        }
        out.flush().await.map_err(|e| self.staging_error(e))?;
        out.into_inner()
            .sync_all()
            .await
            .map_err(|e| self.staging_error(e))?;
        Ok(Downloaded {
            file: self.file.to_path_buf(),
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            size: self.written,
        })
    }

    fn staging_error(&self, source: std::io::Error) -> ContentError {
        ContentError::Staging {
            path: self.path(),
            file: self.file.display().to_string(),
            source,
        }
    }

    /// Opens the staging file, empty; `restart` also forgets what was hashed (the size the
    /// server announced for the new body stays).
    async fn open(
        &mut self,
        restart: bool,
    ) -> Result<tokio::io::BufWriter<tokio::fs::File>, ContentError> {
        if restart {
            self.hasher = Sha256::new();
            self.written = 0;
        }
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.file)
            .await
            .map_err(|e| self.staging_error(e))?;
        Ok(tokio::io::BufWriter::with_capacity(WRITE_BUFFER, f))
    }

    async fn request(&self) -> Result<reqwest::Response, ContentError> {
        let mut headers = Vec::new();
        if self.written > 0 {
            headers.push(("Range", format!("bytes={}-", self.written)));
            if let Some(v) = &self.validator {
                headers.push(("If-Range", v.clone()));
            }
        }
        self.graph
            .get_stream(
                &self.content.url,
                Endpoint::Other,
                &headers,
                self.content.timeout,
            )
            .await
            .map_err(|source| ContentError::Graph {
                path: self.path(),
                source,
            })
    }

    /// Checks a response against the file so far and records the announced size.
    fn fit(&mut self, headers: &HeaderMap, status: u16) -> Result<Fit, ContentError> {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
        };
        if status == 206 {
            let (start, total) = header(CONTENT_RANGE)
                .and_then(parse_content_range)
                .ok_or_else(|| ContentError::Protocol {
                    path: self.path(),
                    detail: "206 Partial Content without a usable Content-Range".into(),
                })?;
            if start != self.written {
                return Err(ContentError::Protocol {
                    path: self.path(),
                    detail: format!("a range from byte {start}; asked for byte {}", self.written),
                });
            }
            self.total = total.or(self.total);
            return Ok(Fit::Rest);
        }
        self.total = header(CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
        Ok(Fit::Whole)
    }

    fn note_validator(&mut self, headers: &HeaderMap) {
        if self.validator.is_none() {
            // Only a strong validator proves that two ranges are of one body.
            self.validator = headers
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.starts_with("W/"))
                .map(str::to_owned);
        }
    }

    /// Streams the response body into the file and the hash.
    async fn pump(
        &mut self,
        response: reqwest::Response,
        out: &mut tokio::io::BufWriter<tokio::fs::File>,
    ) -> Result<(), Broken> {
        let mut body = response.bytes_stream();
        loop {
            let next = tokio::time::timeout(IDLE_TIMEOUT, body.next())
                .await
                .map_err(|_| {
                    Broken::Transfer(format!("no data for {} s", IDLE_TIMEOUT.as_secs()))
                })?;
            let chunk = match next {
                None => return Ok(()),
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Err(Broken::Transfer(e.without_url().to_string())),
            };
            self.hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(Broken::Disk)?;
            self.written += chunk.len() as u64;
        }
    }

    /// Counts a break and decides whether to resume.
    fn broke_off(&mut self, why: &str) -> Result<(), ContentError> {
        self.resumes += 1;
        if self.resumes > MAX_RESUMES {
            return Err(ContentError::Interrupted {
                path: self.path(),
                resumes: self.resumes - 1,
                at: self.written,
                of: self.total.map(|t| format!(" of {t}")).unwrap_or_default(),
            });
        }
        tracing::warn!(
            path = %self.path(),
            at_bytes = self.written,
            attempt = self.resumes,
            reason = why,
            "content: transfer broke off; resuming"
        );
        Ok(())
    }
}

enum Broken {
    Transfer(String),
    Disk(std::io::Error),
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`): the start and, when known, the total.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Budgets, Credential, GraphClientConfig, RetryConfig};
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap as Headers, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::Router;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    const BODY_LEN: usize = 200_000;

    /// How the fake content server behaves.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// Breaks the first response halfway; honours Range afterwards.
        ResumesWithRange,
        /// Breaks the first response halfway; ignores Range (sends everything again).
        RestartsOnly,
        /// Every response breaks halfway and Range is ignored: never completes.
        AlwaysBreaks,
    }

    struct Fake {
        mode: Mode,
        requests: AtomicU32,
        ranges: Mutex<Vec<(String, String)>>,
    }

    fn body() -> Vec<u8> {
        (0..BODY_LEN).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn content(State(f): State<Arc<Fake>>, headers: Headers) -> Response {
        let n = f.requests.fetch_add(1, Ordering::SeqCst);
        let range = headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let if_range = headers
            .get("if-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if let Some(r) = &range {
            f.ranges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((r.clone(), if_range));
        }
        let all = body();
        let start = match (
            f.mode,
            range.as_deref().and_then(|r| r.strip_prefix("bytes=")),
        ) {
            (Mode::ResumesWithRange, Some(r)) => {
                r.trim_end_matches('-').parse::<usize>().unwrap_or(0)
            }
            _ => 0,
        };
        let breaks = match f.mode {
            Mode::AlwaysBreaks => true,
            _ => n == 0,
        };
        let part = all[start..].to_vec();
        let cut = if breaks { part.len() / 2 } else { part.len() };
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = if breaks {
            vec![
                Ok(part[..cut].to_vec()),
                Err(std::io::Error::other("reset")),
            ]
        } else {
            vec![Ok(part)]
        };
        let stream = futures::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            c
        });
        let status = if start > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut resp = (status, Body::from_stream(stream)).into_response();
        let h = resp.headers_mut();
        h.insert(
            "content-length",
            (BODY_LEN - start).to_string().parse().expect("header"),
        );
        h.insert("etag", "\"v1\"".parse().expect("header"));
        if start > 0 {
            let v = format!("bytes {start}-{}/{BODY_LEN}", BODY_LEN - 1);
            h.insert("content-range", v.parse().expect("header"));
        }
        resp
    }

    async fn token() -> impl IntoResponse {
        axum::Json(serde_json::json!({"token_type":"Bearer","expires_in":3599,"access_token":"t"}))
    }

    async fn serve(mode: Mode) -> (GraphClient, url::Url, Arc<Fake>) {
        let fake = Arc::new(Fake {
            mode,
            requests: AtomicU32::new(0),
            ranges: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/content", get(content))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = url::Url::parse(&format!("http://{addr}/v1.0")).expect("url");
        let cfg = GraphClientConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            credential: Credential::Secret("s".to_owned().into()),
            base_url: base.clone(),
            authority: url::Url::parse(&format!("http://{addr}")).expect("url"),
            token_scope: "https://graph.microsoft.com/.default".into(),
            retry: RetryConfig {
                max_attempts: 3,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
            request_timeout: Duration::from_secs(10),
            budgets: Budgets::default(),
        };
        let graph = GraphClient::new(cfg).expect("client");
        let url = base.join("v1.0/content").expect("url");
        (graph, url, fake)
    }

    fn content_ref(url: url::Url) -> ContentRef {
        ContentRef {
            url,
            extension: "mp4",
            timeout: Duration::from_secs(10),
        }
    }

    fn staged(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_broken_transfer_resumes_with_range_and_if_range() {
        let (graph, url, fake) = serve(Mode::ResumesWithRange).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = download(&graph, &content_ref(url), dir.path())
            .await
            .expect("download");
        assert_eq!(dl.size, BODY_LEN as u64);
        assert_eq!(dl.sha256, hex::encode(Sha256::digest(body())));
        assert_eq!(std::fs::read(&dl.file).expect("file"), body());
        let ranges = fake
            .ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert_eq!(
            ranges,
            vec![(format!("bytes={}-", BODY_LEN / 2), "\"v1\"".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_server_that_cannot_resume_is_restarted_from_zero_never_stitched() {
        let (graph, url, fake) = serve(Mode::RestartsOnly).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let dl = download(&graph, &content_ref(url), dir.path())
            .await
            .expect("download");
        assert_eq!(dl.size, BODY_LEN as u64);
        assert_eq!(dl.sha256, hex::encode(Sha256::digest(body())));
        assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_download_that_never_completes_leaves_nothing_behind() {
        let (graph, url, _) = serve(Mode::AlwaysBreaks).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let e = download(&graph, &content_ref(url), dir.path())
            .await
            .expect_err("never completes");
        assert!(
            matches!(
                e,
                ContentError::Interrupted {
                    resumes: MAX_RESUMES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("next pass"), "{e}");
        assert!(staged(dir.path()).is_empty(), "no partial file may remain");
    }

    #[test]
    fn keys_stay_outside_records_and_apart_from_record_keys() {
        let rk = keys::record_key(&["org".into(), "MSo+meeting=".into(), "item".into()]);
        let key = content_storage_key("recordings", &rk, "ab12", "mp4");
        assert_eq!(key, "content/recordings/org/MSo%2Bmeeting%3D/item/ab12.mp4");
        assert!(keys::validate(&key).is_ok());
        // No record key can end in a literal `$content` segment.
        assert!(!keys::record_key(&["$content".into()]).contains('$'));
        assert_eq!(content_record_key(&rk), format!("{rk}/$content"));
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
