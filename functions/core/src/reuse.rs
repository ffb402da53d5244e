//! Incremental runs, the part of planning that reads the base version: which selected objects
//! are unchanged since it (their entries are reused with no request at all), which are new or
//! changed (copied and hashed as in any run) and which base entries drop out.
//!
//! **Source identity.** An object is unchanged when the base entry recorded for the same source
//! bucket and key (`meta.s3.source`) has the same size, the same ETag and the same
//! last-modified second as the listing shows now. A listing gives no version ids, but every
//! write of an object (a new version included) gives it a new last-modified time, and an
//! object written again within the same second with other bytes has another ETag; one written
//! again with the same bytes is the same content, so its entry (hash, size) is still right.
//!
//! **Where reused entries point.** Only where this run would have put them: into the target
//! bucket under the package's folder when copying, at the source object itself when
//! referencing in place. An entry of the base that points elsewhere (another target bucket, a
//! `copy: false` base for a copying run) is not reused: the new version never points anywhere
//! but where the user asked. The hash type must also be the run's.

use std::collections::HashMap;

use serde::Serialize;

use crate::quilt::checksum::HashType;
use crate::quilt::json::Json;
use crate::quilt::manifest::{Manifest, ManifestEntry};
use crate::quilt::physical_key::PhysicalKey;
use crate::staging::{FragmentEntry, PlannedObject};

/// Objects and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Objects.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }

    fn remove(&mut self, bytes: u64) {
        self.objects -= 1;
        self.bytes -= bytes;
    }
}

/// What an incremental run found against its base (what a plan reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IncrementalSummary {
    /// The base version's top hash.
    pub base: String,
    /// Unchanged objects: their base entries are kept, nothing is requested for them.
    pub reused: Tally,
    /// Objects in the base whose source changed: copied and hashed again.
    pub changed: Tally,
    /// Objects not in the base: copied and hashed.
    pub added: Tally,
    /// Base entries whose object is no longer selected: not in the new version.
    pub removed: Tally,
    /// Nothing changed: no new version is written (the base stands), unless
    /// `publish_unchanged` asked for one.
    pub up_to_date: bool,
    /// With `verify_base`: reused entries checked (one HEAD each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<u64>,
    /// With `verify_base`: reused entries whose object no longer exists (copied again from
    /// the source instead), at most `max_reported` of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// What decides whether a base entry can stand for an object in this run.
#[derive(Debug, Clone, Copy)]
pub struct ReuseRules<'a> {
    /// The run's source bucket.
    pub source_bucket: &'a str,
    /// Copying (`true`) or referencing in place.
    pub copy: bool,
    /// Where copies go.
    pub target_bucket: &'a str,
    /// `namespace/name/`.
    pub package_prefix: &'a str,
    /// The run's entry hash type.
    pub hash_type: HashType,
}

impl ReuseRules<'_> {
    /// Whether the base entry `entry` may stand for `object` in the new version.
    fn reusable(
        &self,
        entry: &ManifestEntry,
        source: &SourceFacts,
        object: &PlannedObject,
    ) -> bool {
        if entry.size != object.size || entry.hash().kind != self.hash_type {
            return false;
        }
        let same_etag = matches!((&source.etag, &object.etag), (Some(a), Some(b)) if a == b);
        let same_time = matches!(
            (&source.last_modified, &object.last_modified),
            (Some(a), Some(b)) if same_second(a, b)
        );
        if !(same_etag && same_time) {
            return false;
        }
        let Some(physical) = entry
            .physical_keys
            .first()
            .and_then(|k| k.parse::<PhysicalKey>().ok())
        else {
            return false;
        };
        if self.copy {
            physical.bucket == self.target_bucket && physical.key.starts_with(self.package_prefix)
        } else {
            physical.bucket == self.source_bucket && physical.key == object.key
        }
    }
}

/// Whether two S3 timestamps (`2026-11-25T00:37:59Z`, `…:59.123Z`) fall in the same second:
/// a HEAD answers in whole seconds, some listings in milliseconds.
fn same_second(a: &str, b: &str) -> bool {
    let second = |t: &str| t.split(['.', 'Z']).next().map(str::to_string);
    second(a) == second(b)
}

/// What a base entry recorded of its source object.
struct SourceFacts {
    key: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

fn source_facts(entry: &ManifestEntry, source_bucket: &str) -> Option<SourceFacts> {
    let s3 = entry.meta.get("s3")?.as_object()?;
    let source: PhysicalKey = s3.get("source")?.as_str()?.parse().ok()?;
    if source.bucket != source_bucket {
        return None;
    }
    let text = |name: &str| s3.get(name).and_then(Json::as_str).map(str::to_string);
    Some(SourceFacts {
        key: source.key,
        etag: text("etag"),
        last_modified: text("last_modified"),
    })
}

/// The selection split against the base.
#[derive(Debug, Default)]
pub struct Split {
    /// Objects whose base entry stands, with that entry under the object's logical key now.
    pub reused: Vec<(PlannedObject, FragmentEntry)>,
    /// Objects to copy (new or changed), in the order given.
    pub to_copy: Vec<PlannedObject>,
    /// The counts.
    pub summary: IncrementalSummary,
}

impl Split {
    /// Moves reused objects back to the objects to copy (their base entries' objects are
    /// gone): `gone` holds indexes into `reused`.
    pub fn copy_again(&mut self, gone: &[usize], max_reported: usize) {
        let mut gone = gone.to_vec();
        gone.sort_unstable();
        for &index in gone.iter().rev() {
            let (object, entry) = self.reused.swap_remove(index);
            self.summary.reused.remove(object.size);
            self.summary.changed.add(object.size);
            if self.summary.missing.len() < max_reported {
                self.summary.missing.push(entry.physical_key);
            }
            self.to_copy.push(object);
        }
    }
}

/// Splits `selected` against the `base` manifest (top hash `base_hash`) under `rules`.
pub fn split(
    base: &Manifest,
    base_hash: &str,
    selected: Vec<PlannedObject>,
    rules: &ReuseRules<'_>,
) -> Split {
    // Base entries by source key; a key packaged twice (never by s3quilt) keeps its first.
    let mut by_source: HashMap<String, (usize, SourceFacts)> = HashMap::new();
    for (index, entry) in base.entries.iter().enumerate() {
        if let Some(facts) = source_facts(entry, rules.source_bucket) {
            by_source.entry(facts.key.clone()).or_insert((index, facts));
        }
    }
    let mut used = vec![false; base.entries.len()];
    let mut out = Split {
        summary: IncrementalSummary {
            base: base_hash.to_string(),
            ..IncrementalSummary::default()
        },
        ..Split::default()
    };
    for object in selected {
        match by_source.get(&object.key) {
            Some((index, facts)) => {
                let entry = &base.entries[*index];
                used[*index] = true;
                if rules.reusable(entry, facts, &object) {
                    out.summary.reused.add(object.size);
                    let reused = reused_entry(entry, &object);
                    out.reused.push((object, reused));
                } else {
                    out.summary.changed.add(object.size);
                    out.to_copy.push(object);
                }
            }
            None => {
                out.summary.added.add(object.size);
                out.to_copy.push(object);
            }
        }
    }
    for (entry, used) in base.entries.iter().zip(used) {
        if !used {
            out.summary.removed.add(entry.size);
        }
    }
    out
}

/// The base entry of `object`, under the object's logical key in this run.
fn reused_entry(entry: &ManifestEntry, object: &PlannedObject) -> FragmentEntry {
    let hash = entry.hash();
    FragmentEntry {
        logical_key: object.logical_key.clone(),
        physical_key: entry.physical_keys[0].clone(),
        size: entry.size,
        hash_type: hash.kind,
        hash_value: hash.value,
        meta: Json::Object(entry.meta.clone()).to_manifest_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quilt::checksum::QuiltHash;
    use crate::quilt::json::JsonObject;
    use crate::quilt::manifest::PackageHeader;
    use crate::quilt::names::LogicalKey;

    const HASH: &str = "kirjjN7YdCgKD2mwdwK0xgosxf54f77K+wFjq4SJ32g=";

    fn entry(logical: &str, physical: &str, source: &str, etag: &str, size: u64) -> ManifestEntry {
        let mut s3 = JsonObject::new();
        s3.insert("source", Json::str(source));
        s3.insert("etag", Json::str(etag));
        s3.insert("last_modified", Json::str("2026-11-25T00:37:59Z"));
        let mut meta = JsonObject::new();
        meta.insert("s3", Json::Object(s3));
        ManifestEntry::new(
            logical.parse::<LogicalKey>().unwrap(),
            physical.to_string(),
            size,
            &QuiltHash {
                kind: HashType::Sha2_256Chunked,
                value: HASH.into(),
            },
            meta,
        )
    }

    fn listed(key: &str, logical: &str, etag: &str, size: u64, modified: &str) -> PlannedObject {
        PlannedObject {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            storage_class: "STANDARD".into(),
            last_modified: Some(modified.into()),
            logical_key: logical.parse().unwrap(),
            destination: None,
        }
    }

    fn rules(copy: bool) -> ReuseRules<'static> {
        ReuseRules {
            source_bucket: "src",
            copy,
            target_bucket: "reg",
            package_prefix: "team/pkg/",
            hash_type: HashType::Sha2_256Chunked,
        }
    }

    fn base() -> Manifest {
        Manifest::new(
            PackageHeader::new(None, None),
            vec![
                entry(
                    "a.txt",
                    "s3://reg/team/pkg/a.txt?versionId=1",
                    "s3://src/d/a.txt",
                    "\"e1\"",
                    5,
                ),
                entry(
                    "b.txt",
                    "s3://reg/team/pkg/b.txt?versionId=1",
                    "s3://src/d/b.txt",
                    "\"e2\"",
                    6,
                ),
                entry(
                    "c.txt",
                    "s3://reg/team/pkg/c.txt?versionId=1",
                    "s3://src/d/c.txt",
                    "\"e3\"",
                    7,
                ),
                entry(
                    "x.txt",
                    "s3://other/team/pkg/x.txt",
                    "s3://src/d/x.txt",
                    "\"e4\"",
                    8,
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn unchanged_objects_keep_their_entries_and_the_rest_is_counted() {
        let selected = vec![
            // Unchanged, listed in milliseconds; renamed in the package (flattened elsewhere).
            listed(
                "d/a.txt",
                "new/a.txt",
                "\"e1\"",
                5,
                "2026-11-25T00:37:59.250Z",
            ),
            // Changed: another ETag.
            listed("d/b.txt", "b.txt", "\"e9\"", 6, "2026-11-25T00:37:59Z"),
            // Its entry points into another bucket: copied again.
            listed("d/x.txt", "x.txt", "\"e4\"", 8, "2026-11-25T00:37:59Z"),
            // New.
            listed("d/n.txt", "n.txt", "\"e5\"", 9, "2026-11-25T00:37:59Z"),
        ];
        let split = split(&base(), "h", selected, &rules(true));
        assert_eq!(split.reused.len(), 1);
        let (object, reused) = &split.reused[0];
        assert_eq!(object.key, "d/a.txt");
        assert_eq!(reused.logical_key.as_str(), "new/a.txt");
        assert_eq!(reused.physical_key, "s3://reg/team/pkg/a.txt?versionId=1");
        assert_eq!(reused.hash_value, HASH);
        assert!(
            reused.meta.contains("\"etag\": \"\\\"e1\\\"\""),
            "{}",
            reused.meta
        );
        let keys: Vec<&str> = split.to_copy.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["d/b.txt", "d/x.txt", "d/n.txt"]);
        let s = &split.summary;
        assert_eq!((s.reused.objects, s.reused.bytes), (1, 5));
        assert_eq!((s.changed.objects, s.changed.bytes), (2, 14));
        assert_eq!((s.added.objects, s.added.bytes), (1, 9));
        assert_eq!((s.removed.objects, s.removed.bytes), (1, 7));
    }

    #[test]
    fn a_new_second_a_new_size_or_another_hash_type_is_a_change() {
        let base = base();
        let cases = [
            listed("d/a.txt", "a.txt", "\"e1\"", 5, "2026-11-25T00:38:00Z"),
            listed("d/a.txt", "a.txt", "\"e1\"", 4, "2026-11-25T00:37:59Z"),
        ];
        for object in cases {
            let split = split(&base, "h", vec![object], &rules(true));
            assert!(split.reused.is_empty());
        }
        let crc = ReuseRules {
            hash_type: HashType::Crc64Nvme,
            ..rules(true)
        };
        let object = listed("d/a.txt", "a.txt", "\"e1\"", 5, "2026-11-25T00:37:59Z");
        assert!(split(&base, "h", vec![object], &crc).reused.is_empty());
    }

    #[test]
    fn a_copying_base_is_not_reused_in_place_nor_the_other_way() {
        let object = listed("d/a.txt", "a.txt", "\"e1\"", 5, "2026-11-25T00:37:59Z");
        // The base copied; this run references in place: the entry is not the source.
        assert!(
            split(&base(), "h", vec![object.clone()], &rules(false))
                .reused
                .is_empty()
        );
        let in_place = Manifest::new(
            PackageHeader::new(None, None),
            vec![entry(
                "a.txt",
                "s3://src/d/a.txt",
                "s3://src/d/a.txt",
                "\"e1\"",
                5,
            )],
        )
        .unwrap();
        assert!(
            split(&in_place, "h", vec![object.clone()], &rules(true))
                .reused
                .is_empty()
        );
        assert_eq!(
            split(&in_place, "h", vec![object], &rules(false))
                .reused
                .len(),
            1
        );
    }

    #[test]
    fn entries_found_gone_are_copied_again_and_reported() {
        let selected = vec![
            listed("d/a.txt", "a.txt", "\"e1\"", 5, "2026-11-25T00:37:59Z"),
            listed("d/c.txt", "c.txt", "\"e3\"", 7, "2026-11-25T00:37:59Z"),
        ];
        let mut split = split(&base(), "h", selected, &rules(true));
        assert_eq!(split.reused.len(), 2);
        split.copy_again(&[1], 10);
        assert_eq!(split.reused.len(), 1);
        assert_eq!(split.to_copy.len(), 1);
        assert_eq!(split.to_copy[0].key, "d/c.txt");
        assert_eq!(
            split.summary.missing,
            ["s3://reg/team/pkg/c.txt?versionId=1"]
        );
        assert_eq!(split.summary.reused.objects, 1);
        assert_eq!(split.summary.changed.objects, 1);
    }
}
