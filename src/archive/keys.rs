//! Storage keys. Graph ids hold `:`, `@`, `/`, `=` and may start with `.`; keys must be safe as
//! file names and blob names and must never let two different ids meet on one key.
//!
//! Each id becomes one path segment: bytes outside `[A-Za-z0-9_.-]` are percent-encoded
//! (including `%` and `~`), a leading `.` is encoded, and a segment longer than
//! `MAX_SEGMENT` is replaced by `~` + the sha256 of the id. `~` never survives encoding, so the
//! hashed form cannot collide with an encoded id.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'.').remove(b'-');

/// Keeps file names far below the usual 255-byte limit, with room for a suffix.
const MAX_SEGMENT: usize = 180;

pub fn segment(id: &str) -> String {
    let mut enc = utf8_percent_encode(id, SEGMENT).to_string();
    if enc.starts_with('.') {
        enc.replace_range(0..1, "%2E");
    }
    if enc.is_empty() {
        // An empty id never reaches here from a source (identity parts are checked), but a
        // key must still never be an empty segment.
        return "%00empty".to_string();
    }
    if enc.len() > MAX_SEGMENT {
        return format!("~{}", hex::encode(Sha256::digest(id.as_bytes())));
    }
    enc
}

/// `parts` encoded and joined with `/`: the catalogue's record key.
pub fn record_key(parts: &[String]) -> String {
    parts
        .iter()
        .map(|p| segment(p))
        .collect::<Vec<_>>()
        .join("/")
}

/// `records/<source>/<record key>@<etag>.json`: the record key's last part and the etag share
/// one file name, so a new record costs one new file and no new directory (on the filesystems
/// we measured, creating a directory costs as much as the file). `@` is always encoded inside
/// a segment, so a name splits one way only; a name too long for a file system becomes `~~` and
/// the sha256 of the name (a single hashed segment is `~` and hex, never `~~`).
pub fn record_storage_key(source: &str, record_key: &str, etag: &str) -> String {
    let (dir, last) = match record_key.rsplit_once('/') {
        Some((dir, last)) => (format!("{dir}/"), last),
        None => (String::new(), record_key),
    };
    let mut name = format!("{last}@{}", segment(etag));
    if name.len() > MAX_SEGMENT {
        name = format!("~~{}", hex::encode(Sha256::digest(name.as_bytes())));
    }
    format!("records/{source}/{dir}{name}.json")
}

/// Records that could not be identified are kept, not dropped, outside `records/`.
pub fn quarantine_key(source: &str, scope_id: &str, sha256: &str) -> String {
    format!("quarantine/{source}/{}/{sha256}.json", segment(scope_id))
}

/// `manifests/<source>/<scope>/<seq>-<sha prefix>.json`; the hash in the name keeps an orphan
/// left by a crash between store and commit from blocking the retry.
pub fn manifest_key(source: &str, scope_id: &str, seq: i64, sha256: &str) -> String {
    let short = sha256.get(..16).unwrap_or(sha256);
    format!(
        "manifests/{source}/{}/{seq:012}-{short}.json",
        segment(scope_id)
    )
}

/// Rejects keys that could escape the store root or are not plain relative paths.
pub fn validate(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("empty key");
    }
    if key.starts_with('/') || key.contains('\\') || key.contains('\0') {
        return Err("not a relative key");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("empty, . or .. segment");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_become_safe_segments() {
        let s = segment("19:meeting_YjQ4@thread.v2");
        assert_eq!(s, "19%3Ameeting_YjQ4%40thread.v2");
        assert!(validate(&format!("records/chats/{s}/1.json")).is_ok());
    }

    #[test]
    fn dots_slashes_and_escapes_cannot_escape_or_collide() {
        for id in [".", "..", "../etc", "a/b", ".hidden"] {
            let s = segment(id);
            assert!(!s.starts_with('.'), "{id} -> {s}");
            assert!(!s.contains('/'), "{id} -> {s}");
            assert!(validate(&s).is_ok());
        }
        // '%' itself is encoded, so an id that looks encoded stays distinct.
        assert_ne!(segment("a%3Ab"), segment("a:b"));
        assert_ne!(segment("~abc"), segment("abc"));
    }

    #[test]
    fn long_ids_are_hashed_and_stay_distinct() {
        let a = "x".repeat(400);
        let b = format!("{}y", "x".repeat(399));
        assert!(segment(&a).starts_with('~'));
        assert!(segment(&a).len() < 100);
        assert_ne!(segment(&a), segment(&b));
    }

    #[test]
    fn record_keys_keep_every_identity_part() {
        let k1 = record_key(&["user-a".into(), "1731701801008".into()]);
        let k2 = record_key(&["user-b".into(), "1731701801008".into()]);
        assert_ne!(k1, k2);
        assert_eq!(
            record_storage_key("copilot", &k1, "1731701801008"),
            "records/copilot/user-a/1731701801008@1731701801008.json"
        );
    }

    #[test]
    fn storage_keys_of_distinct_versions_never_meet() {
        let long = "e".repeat(150);
        let longer = "x".repeat(400);
        let cases = [
            (vec!["c", "m"], "1"),
            (vec!["c", "m@1"], ""),
            (vec!["c", "m"], "@1"),
            (vec!["c@m"], "1"),
            (vec!["c", "m", "1"], "x"),
            (vec!["c", &long], "1"),
            (vec!["c", &long], "2"),
            (vec!["c", "m"], &long),
            (vec!["c", &longer], "1"),
            (vec!["c", &longer], "2"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (parts, etag) in cases {
            let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            let key = record_storage_key("chats", &record_key(&parts), etag);
            assert!(validate(&key).is_ok(), "{key}");
            let name = key.rsplit('/').next().unwrap_or_default();
            assert!(name.len() <= MAX_SEGMENT + 5, "{key}");
            assert!(seen.insert(key.clone()), "two versions share {key}");
        }
    }

    #[test]
    fn validate_rejects_escapes() {
        for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "a\\b"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
