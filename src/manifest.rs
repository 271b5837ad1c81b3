//! Window manifests: for every completed window, the keys and sha256 of every record it
//! returned, chained by hash to the previous manifest of the same source and scope. Anyone
//! holding the archive can recompute the chain and see a record altered, removed or inserted.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "m365-archiver/window-manifest/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub key: String,
    pub etag: String,
    pub sha256: String,
    /// False when the version was already archived (by an earlier window or another user).
    pub new: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub source: String,
    pub scope: String,
    pub seq: i64,
    pub window_start: String,
    pub window_end: String,
    pub prev_sha256: Option<String>,
    pub created_at: String,
    pub records: Vec<ManifestEntry>,
}

impl Manifest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: &str,
        scope: &str,
        seq: i64,
        window_start: DateTime<Utc>,
        window_end: DateTime<Utc>,
        prev_sha256: Option<String>,
        created_at: DateTime<Utc>,
        mut records: Vec<ManifestEntry>,
    ) -> Self {
        // Pages arrive unordered; a sorted list makes manifests comparable and diffable.
        records.sort_by(|a, b| a.key.cmp(&b.key).then(a.etag.cmp(&b.etag)));
        records.dedup_by(|a, b| a.key == b.key && a.etag == b.etag);
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        Manifest {
            format: FORMAT.to_string(),
            source: source.to_string(),
            scope: scope.to_string(),
            seq,
            window_start: ts(window_start),
            window_end: ts(window_end),
            prev_sha256,
            created_at: ts(created_at),
            records,
        }
    }

    /// The stored form; its sha256 is what the next manifest chains to.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::sha256_hex;

    #[test]
    fn chain_changes_when_anything_changes() {
        let t = Utc::now();
        let e = |k: &str, s: &str| ManifestEntry {
            key: k.into(),
            etag: "1".into(),
            sha256: s.into(),
            new: true,
        };
        let m1 = Manifest::new(
            "copilot",
            "u",
            1,
            t,
            t,
            None,
            t,
            vec![e("b", "x"), e("a", "y")],
        );
        assert_eq!(m1.records[0].key, "a");
        let h1 = sha256_hex(&m1.to_bytes());
        let m2 = Manifest::new("copilot", "u", 2, t, t, Some(h1.clone()), t, vec![]);
        let tampered = Manifest::new(
            "copilot",
            "u",
            1,
            t,
            t,
            None,
            t,
            vec![e("b", "x"), e("a", "z")],
        );
        assert_ne!(sha256_hex(&tampered.to_bytes()), h1);
        assert_eq!(m2.prev_sha256.as_deref(), Some(h1.as_str()));
    }
}
