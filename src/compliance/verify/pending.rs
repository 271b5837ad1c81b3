//! Manifest entries `verify` could not find in the catalogue through their record identity
//! (content objects, names hashed for length, rows whose storage key is not the one their
//! identity names): they wait for the extra-object scan, whose catalogue stream visits every
//! storage key once. Only these entries are held, not the catalogue.

use super::{judge_entry, VerifyReport};
use std::collections::HashMap;

#[derive(Default)]
pub(super) struct Pending {
    /// storage key -> (manifest key, sha256 that manifest records), per listing.
    waiting: HashMap<String, Vec<(String, String)>>,
    /// Listings the scan found catalogued: (manifest key, storage key, recorded, catalogued).
    settled: Vec<(String, String, String, String)>,
}

impl Pending {
    pub(super) fn add(&mut self, key: &str, manifest: &str, recorded: &str) {
        self.waiting
            .entry(key.to_string())
            .or_default()
            .push((manifest.to_string(), recorded.to_string()));
    }

    /// A catalogue row seen by the scan: settles the entries waiting for its key.
    pub(super) fn settle(&mut self, key: &str, catalogued: &str) {
        if let Some(listings) = self.waiting.remove(key) {
            for (manifest, recorded) in listings {
                let found = (manifest, key.to_string(), recorded, catalogued.to_string());
                self.settled.push(found);
            }
        }
    }

    /// Judges what the scan settled; whatever still waits is not catalogued.
    pub(super) fn finish(self, report: &mut VerifyReport) {
        for (manifest, key, recorded, catalogued) in &self.settled {
            judge_entry(manifest, key, recorded, Some(catalogued), report);
        }
        let mut left: Vec<(String, Vec<(String, String)>)> = self.waiting.into_iter().collect();
        left.sort();
        for (key, listings) in left {
            for (manifest, recorded) in listings {
                judge_entry(&manifest, &key, &recorded, None, report);
            }
        }
    }
}
