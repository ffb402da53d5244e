//! The manifest: a JSONL file whose first line is the package header and whose other lines are
//! entries in walk order, byte-compatible with quilt3, and its top hash.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

use super::checksum::{HashType, QuiltHash};
use super::json::{Json, JsonError, JsonObject};
use super::names::{LogicalKey, NameError};

/// quilt3 refuses manifest records of this many bytes or more.
pub const MAX_LINE_BYTES: usize = 1_000_000;

/// Why a manifest cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A line is not JSON (or not JSON quilt3 writes).
    #[error("manifest line {line}: {source}")]
    Json {
        /// 1-based line number.
        line: usize,
        /// The parse error.
        source: JsonError,
    },
    /// A line is JSON but not a header or entry.
    #[error("manifest line {line}: {reason}")]
    Shape {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A logical key that quilt3 would refuse.
    #[error("manifest line {line}: {source}")]
    Key {
        /// 1-based line number.
        line: usize,
        /// The key error.
        source: NameError,
    },
    /// The manifest has no header line.
    #[error("manifest is empty: the first line must be the package header")]
    Empty,
    /// Two entries share a logical key.
    #[error("manifest has logical key {0:?} twice")]
    DuplicateKey(String),
    /// Entries streamed out of walk order (a planner or fragment that broke its order).
    #[error("manifest entry {key:?} comes after {after:?}: entries must arrive in walk order")]
    OutOfOrder {
        /// The entry that came too late.
        key: String,
        /// The entry before it.
        after: String,
    },
    /// A line too long for quilt3 to read.
    #[error(
        "manifest record for {what} is {bytes} bytes; quilt3 accepts records under {MAX_LINE_BYTES} bytes (shrink its metadata)"
    )]
    LineTooLong {
        /// Which record.
        what: String,
        /// Its length.
        bytes: usize,
    },
}

/// The first line of a manifest: `version`, optional `user_meta`, optional `workflow`, `message`,
/// kept as an ordered object so a read manifest writes back byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageHeader(JsonObject);

impl PackageHeader {
    /// The header of a new package, keys in quilt3's order. `user_meta: None` leaves the key out,
    /// which is not the same package as `user_meta: null`.
    pub fn new(message: Option<&str>, user_meta: Option<JsonObject>) -> Self {
        let mut header = JsonObject::new();
        header.insert("version", Json::str("v0"));
        if let Some(meta) = user_meta {
            header.insert("user_meta", Json::Object(meta));
        }
        header.insert("message", message.map_or(Json::Null, Json::str));
        PackageHeader(header)
    }

    /// The header with a `workflow` record (quilt3's place for it: after `user_meta`, before
    /// `message`), or without one for `None`.
    pub fn with_workflow(self, workflow: Option<Json>) -> Self {
        let mut header = JsonObject::new();
        for (key, value) in self.0.iter().filter(|(key, _)| *key != "workflow") {
            if key == "message"
                && let Some(workflow) = &workflow
            {
                header.insert("workflow", workflow.clone());
            }
            header.insert(key.as_str(), value.clone());
        }
        PackageHeader(header)
    }

    /// The package message, if any.
    pub fn message(&self) -> Option<&str> {
        self.0.get("message").and_then(Json::as_str)
    }

    /// The package's user metadata, if set.
    pub fn user_meta(&self) -> Option<&Json> {
        self.0.get("user_meta")
    }

    /// The header as an object.
    pub fn as_object(&self) -> &JsonObject {
        &self.0
    }

    /// A header from a parsed first line (quilt3 drops an obsolete `top_hash` key on load).
    pub fn from_object(mut object: JsonObject) -> Self {
        object.remove("top_hash");
        PackageHeader(object)
    }
}

/// A directory-metadata line (`{"logical_key": "dir/", "meta": {...}}`): read and written back,
/// not part of the top hash.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryMeta {
    /// The directory path, ending in `/`.
    pub logical_key: String,
    /// Its metadata.
    pub meta: Json,
}

/// One file of a package.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    /// Path inside the package.
    pub logical_key: LogicalKey,
    /// Where the bytes are (`s3://…` URLs; quilt3 writes exactly one).
    pub physical_keys: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Hash; see [`ManifestEntry::hash`].
    hash: Json,
    /// Entry metadata (`{}` when empty); user metadata lives under `user_meta`.
    pub meta: JsonObject,
}

impl ManifestEntry {
    /// A new entry.
    pub fn new(
        logical_key: LogicalKey,
        physical_key: String,
        size: u64,
        hash: &QuiltHash,
        meta: JsonObject,
    ) -> Self {
        let mut hash_object = JsonObject::new();
        hash_object.insert("type", Json::str(hash.kind.as_str()));
        hash_object.insert("value", Json::str(hash.value.clone()));
        ManifestEntry {
            logical_key,
            physical_keys: vec![physical_key],
            size,
            hash: Json::Object(hash_object),
            meta,
        }
    }

    /// The entry's hash.
    pub fn hash(&self) -> QuiltHash {
        parse_hash(&self.hash).expect("entry hashes are validated when the entry is made")
    }

    /// The line of this entry in a manifest (without the newline).
    pub fn to_line(&self) -> String {
        let mut line = JsonObject::new();
        line.insert("logical_key", Json::str(self.logical_key.as_str()));
        line.insert(
            "physical_keys",
            Json::Array(
                self.physical_keys
                    .iter()
                    .map(|k| Json::str(k.as_str()))
                    .collect(),
            ),
        );
        line.insert("size", Json::int(self.size));
        line.insert("hash", self.hash.clone());
        line.insert("meta", Json::Object(self.meta.clone()));
        Json::Object(line).to_manifest_string()
    }

    /// The text this entry contributes to the top hash.
    pub fn hash_part(&self) -> String {
        let mut part = JsonObject::new();
        part.insert("hash", self.hash.clone());
        part.insert("logical_key", Json::str(self.logical_key.as_str()));
        part.insert("meta", Json::Object(self.meta.clone()));
        part.insert("size", Json::int(self.size));
        Json::Object(part).to_hash_string()
    }

    /// Parses an entry line.
    pub fn from_line(line_no: usize, object: JsonObject) -> Result<Self, ManifestError> {
        let shape = |reason: String| ManifestError::Shape {
            line: line_no,
            reason,
        };
        let key = object
            .get("logical_key")
            .and_then(Json::as_str)
            .ok_or_else(|| shape("entry has no string `logical_key`".into()))?;
        let logical_key: LogicalKey = key.parse().map_err(|source| ManifestError::Key {
            line: line_no,
            source,
        })?;
        let physical_keys = match object.get("physical_keys") {
            Some(Json::Array(keys)) if !keys.is_empty() => keys
                .iter()
                .map(|k| k.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| shape(format!("entry {key:?}: `physical_keys` must be strings")))?,
            _ => {
                return Err(shape(format!(
                    "entry {key:?} has no non-empty `physical_keys` array"
                )));
            }
        };
        let size = object
            .get("size")
            .and_then(Json::as_u64)
            .ok_or_else(|| shape(format!("entry {key:?} has no non-negative integer `size`")))?;
        let hash = object
            .get("hash")
            .cloned()
            .ok_or_else(|| shape(format!("entry {key:?} has no `hash`")))?;
        parse_hash(&hash).ok_or_else(|| {
            shape(format!(
                "entry {key:?}: `hash` must be {{\"type\": T, \"value\": V}} with T one of sha2-256-chunked, CRC64NVME, SHA256"
            ))
        })?;
        let meta = match object.get("meta") {
            None | Some(Json::Null) => JsonObject::new(),
            Some(Json::Object(meta)) => meta.clone(),
            Some(other) => {
                return Err(shape(format!(
                    "entry {key:?}: `meta` is a {}, not an object",
                    other.type_name()
                )));
            }
        };
        Ok(ManifestEntry {
            logical_key,
            physical_keys,
            size,
            hash,
            meta,
        })
    }
}

fn parse_hash(hash: &Json) -> Option<QuiltHash> {
    let object = hash.as_object()?;
    let kind = HashType::parse(object.get("type")?.as_str()?)?;
    let value = object.get("value")?.as_str()?.to_string();
    Some(QuiltHash { kind, value })
}

/// Quilt's walk order: a tree walk that visits each folder's children sorted by name, which is
/// comparing keys part by part (not as whole strings: `a/b.txt` < `a b/x` < `a-c.txt`).
pub fn walk_order(a: &LogicalKey, b: &LogicalKey) -> Ordering {
    a.parts().cmp(b.parts())
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Line 1.
    pub header: PackageHeader,
    /// Directory-metadata lines, in the order read.
    pub directories: Vec<DirectoryMeta>,
    /// Entries, in walk order.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// A manifest from a header and entries in any order (sorted here into walk order).
    /// Fails on a duplicate logical key.
    pub fn new(
        header: PackageHeader,
        mut entries: Vec<ManifestEntry>,
    ) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| walk_order(&a.logical_key, &b.logical_key));
        if let Some(pair) = entries
            .windows(2)
            .find(|w| w[0].logical_key == w[1].logical_key)
        {
            return Err(ManifestError::DuplicateKey(pair[0].logical_key.to_string()));
        }
        Ok(Manifest {
            header,
            directories: Vec::new(),
            entries,
        })
    }

    /// Parses JSONL bytes as quilt3's `Package.load` does (entries end up in walk order).
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or(ManifestError::Empty)?;
        let header =
            match Json::parse(first).map_err(|source| ManifestError::Json { line: 1, source })? {
                Json::Object(object) => PackageHeader::from_object(object),
                other => {
                    return Err(ManifestError::Shape {
                        line: 1,
                        reason: format!(
                            "the package header must be an object, not a {}",
                            other.type_name()
                        ),
                    });
                }
            };
        let mut directories = Vec::new();
        let mut entries = Vec::new();
        for (index, line) in lines {
            let line_no = index + 1;
            let object = match Json::parse(line).map_err(|source| ManifestError::Json {
                line: line_no,
                source,
            })? {
                Json::Object(object) => object,
                other => {
                    return Err(ManifestError::Shape {
                        line: line_no,
                        reason: format!("an entry must be an object, not a {}", other.type_name()),
                    });
                }
            };
            match object.get("logical_key").and_then(Json::as_str) {
                Some(key) if key.ends_with('/') && !object.contains_key("physical_keys") => {
                    directories.push(DirectoryMeta {
                        logical_key: key.to_string(),
                        meta: object.get("meta").cloned().unwrap_or(Json::Null),
                    });
                }
                _ => entries.push(ManifestEntry::from_line(line_no, object)?),
            }
        }
        let mut manifest = Manifest::new(header, entries)?;
        manifest.directories = directories;
        Ok(manifest)
    }

    /// The JSONL bytes quilt3 would write for this package.
    pub fn to_jsonl(&self) -> Result<String, ManifestError> {
        let mut out = String::new();
        let mut push = |line: String, what: &dyn Fn() -> String| {
            if line.len() >= MAX_LINE_BYTES {
                return Err(ManifestError::LineTooLong {
                    what: what(),
                    bytes: line.len(),
                });
            }
            out.push_str(&line);
            out.push('\n');
            Ok(())
        };
        push(
            Json::Object(self.header.as_object().clone()).to_manifest_string(),
            &|| "the package header".into(),
        )?;
        for dir in &self.directories {
            let mut line = JsonObject::new();
            line.insert("logical_key", Json::str(dir.logical_key.as_str()));
            line.insert("meta", dir.meta.clone());
            push(Json::Object(line).to_manifest_string(), &|| {
                format!("directory {:?}", dir.logical_key)
            })?;
        }
        for entry in &self.entries {
            push(entry.to_line(), &|| {
                format!("entry {:?}", entry.logical_key.as_str())
            })?;
        }
        Ok(out)
    }

    /// The top hash (64 hex digits), as quilt3 computes it.
    pub fn top_hash(&self) -> String {
        let mut hasher = TopHasher::new(&self.header);
        for entry in &self.entries {
            hasher.add(entry);
        }
        hasher.finish()
    }
}

/// Writes a manifest one entry at a time, in walk order, holding only the last key: the bytes
/// [`Manifest::to_jsonl`] writes, its top hash, and a SHA-256 of the bytes (to tell whether a
/// manifest already in the registry is byte for byte this one without holding either).
/// Refuses a duplicate key, an entry out of walk order and a line quilt3 cannot read.
pub struct ManifestEncoder {
    top: TopHasher,
    content: Sha256,
    last: Option<LogicalKey>,
    entries: u64,
    entry_bytes: u64,
    manifest_bytes: u64,
}

/// What a [`ManifestEncoder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedManifest {
    /// The top hash.
    pub top_hash: String,
    /// SHA-256 of the manifest's bytes.
    pub content_sha256: [u8; 32],
    /// Entries.
    pub entries: u64,
    /// Sum of the entries' sizes.
    pub entry_bytes: u64,
    /// Length of the manifest.
    pub manifest_bytes: u64,
}

impl ManifestEncoder {
    /// Starts with the header; returns the encoder and the header's line (with its newline).
    pub fn new(header: &PackageHeader) -> Result<(Self, String), ManifestError> {
        let mut encoder = ManifestEncoder {
            top: TopHasher::new(header),
            content: Sha256::new(),
            last: None,
            entries: 0,
            entry_bytes: 0,
            manifest_bytes: 0,
        };
        let line = encoder.line(
            Json::Object(header.as_object().clone()).to_manifest_string(),
            || "the package header".into(),
        )?;
        Ok((encoder, line))
    }

    /// Adds the next entry; returns its line (with its newline).
    pub fn push(&mut self, entry: &ManifestEntry) -> Result<String, ManifestError> {
        if let Some(last) = &self.last {
            match walk_order(last, &entry.logical_key) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(ManifestError::DuplicateKey(entry.logical_key.to_string()));
                }
                Ordering::Greater => {
                    return Err(ManifestError::OutOfOrder {
                        key: entry.logical_key.to_string(),
                        after: last.to_string(),
                    });
                }
            }
        }
        let line = self.line(entry.to_line(), || {
            format!("entry {:?}", entry.logical_key.as_str())
        })?;
        self.top.add(entry);
        self.entries += 1;
        self.entry_bytes += entry.size;
        self.last = Some(entry.logical_key.clone());
        Ok(line)
    }

    fn line(
        &mut self,
        mut line: String,
        what: impl FnOnce() -> String,
    ) -> Result<String, ManifestError> {
        if line.len() >= MAX_LINE_BYTES {
            return Err(ManifestError::LineTooLong {
                what: what(),
                bytes: line.len(),
            });
        }
        line.push('\n');
        self.content.update(line.as_bytes());
        self.manifest_bytes += line.len() as u64;
        Ok(line)
    }

    /// The totals.
    pub fn finish(self) -> EncodedManifest {
        EncodedManifest {
            top_hash: self.top.finish(),
            content_sha256: self.content.finalize().into(),
            entries: self.entries,
            entry_bytes: self.entry_bytes,
            manifest_bytes: self.manifest_bytes,
        }
    }
}

/// Incremental top hash, for callers that stream entries in walk order instead of holding a
/// whole [`Manifest`].
pub struct TopHasher(Sha256);

impl TopHasher {
    /// Starts with the header.
    pub fn new(header: &PackageHeader) -> Self {
        let mut sha = Sha256::new();
        sha.update(
            Json::Object(header.as_object().clone())
                .to_hash_string()
                .as_bytes(),
        );
        TopHasher(sha)
    }

    /// Adds the next entry (in walk order).
    pub fn add(&mut self, entry: &ManifestEntry) {
        self.0.update(entry.hash_part().as_bytes());
    }

    /// The hex top hash.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_name_the_line() {
        let err = Manifest::parse("{\"version\": \"v0\"}\n{\"logical_key\": \"a\", \"size\": 1}\n")
            .unwrap_err();
        assert!(matches!(err, ManifestError::Shape { line: 2, .. }), "{err}");
        let err = Manifest::parse("{\"version\": \"v0\"}\n{not json\n").unwrap_err();
        assert!(matches!(err, ManifestError::Json { line: 2, .. }), "{err}");
        let err = Manifest::parse("").unwrap_err();
        assert!(matches!(err, ManifestError::Empty), "{err}");
        let bad_key = "{\"version\": \"v0\"}\n{\"logical_key\": \"a//b\", \"physical_keys\": [\"s3://b/k\"], \"size\": 0, \"hash\": {\"type\": \"SHA256\", \"value\": \"x\"}, \"meta\": {}}\n";
        assert!(matches!(
            Manifest::parse(bad_key).unwrap_err(),
            ManifestError::Key { line: 2, .. }
        ));
    }

    const HEADER: &str = "{\"version\": \"v0\", \"message\": null}";

    /// The streamed bytes, top hash and totals are those of the whole-manifest writer; a key
    /// twice or out of walk order is refused.
    #[test]
    fn the_encoder_writes_what_the_whole_manifest_writes() {
        let keys = ["a/b.txt", "a b/x", "a-c.txt", "z/\u{e9}.csv"];
        let text = std::iter::once(HEADER.to_string())
            .chain(keys.iter().enumerate().map(|(i, key)| {
                format!(
                    "{{\"logical_key\": \"{key}\", \"physical_keys\": [\"s3://b/{key}\"], \"size\": {i}, \"hash\": {{\"type\": \"SHA256\", \"value\": \"a{i}\"}}, \"meta\": {{\"n\": {i}}}}}"
                )
            }))
            .map(|l| l + "\n")
            .collect::<String>();
        let manifest = Manifest::parse(&text).unwrap();
        let (mut encoder, mut streamed) = ManifestEncoder::new(&manifest.header).unwrap();
        for entry in &manifest.entries {
            streamed.push_str(&encoder.push(entry).unwrap());
        }
        let encoded = encoder.finish();
        let whole = manifest.to_jsonl().unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(encoded.top_hash, manifest.top_hash());
        assert_eq!(
            encoded.content_sha256,
            <[u8; 32]>::from(Sha256::digest(whole.as_bytes()))
        );
        assert_eq!((encoded.entries, encoded.entry_bytes), (4, 6));
        assert_eq!(encoded.manifest_bytes, whole.len() as u64);

        let (mut encoder, _) = ManifestEncoder::new(&manifest.header).unwrap();
        encoder.push(&manifest.entries[1]).unwrap();
        assert!(matches!(
            encoder.push(&manifest.entries[0]),
            Err(ManifestError::OutOfOrder { .. })
        ));
        assert!(matches!(
            encoder.push(&manifest.entries[1]),
            Err(ManifestError::DuplicateKey(key)) if key == "a b/x"
        ));
    }

    fn entry_line(hash: &str, meta: &str) -> String {
        format!(
            "{{\"logical_key\": \"a.txt\", \"physical_keys\": [\"s3://b/a.txt\"], \"size\": 3, \"hash\": {hash}, \"meta\": {meta}}}"
        )
    }

    fn shape_reason(text: &str) -> (usize, String) {
        match Manifest::parse(text) {
            Err(ManifestError::Shape { line, reason }) => (line, reason),
            other => panic!("expected a shape error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn entries_with_a_bad_hash_or_meta_are_refused_naming_line_and_field() {
        let good_hash = "{\"type\": \"SHA256\", \"value\": \"ab\"}";
        for hash in [
            "{\"type\": \"MD5\", \"value\": \"ab\"}",
            "{\"type\": \"SHA256\"}",
            "\"SHA256:ab\"",
        ] {
            let text = format!("{HEADER}\n{}\n", entry_line(hash, "{}"));
            let (line, reason) = shape_reason(&text);
            assert_eq!(line, 2);
            assert!(
                reason.contains("\"a.txt\"") && reason.contains("`hash` must be"),
                "{reason}"
            );
        }
        let text = format!("{HEADER}\n\n{}\n", entry_line(good_hash, "[1]"));
        assert_eq!(
            shape_reason(&text),
            (
                3,
                "entry \"a.txt\": `meta` is a array, not an object".to_string()
            ),
            "blank lines still count"
        );
        let text = format!(
            "{HEADER}\n{{\"logical_key\": \"a\", \"physical_keys\": [1], \"size\": 1, \"hash\": {good_hash}}}\n"
        );
        assert!(shape_reason(&text).1.contains("must be strings"));
        let text = format!(
            "{HEADER}\n{{\"logical_key\": \"a\", \"physical_keys\": [], \"size\": 1, \"hash\": {good_hash}}}\n"
        );
        assert!(shape_reason(&text).1.contains("non-empty `physical_keys`"));
        let text = format!(
            "{HEADER}\n{{\"logical_key\": \"a\", \"physical_keys\": [\"s3://b/a\"], \"size\": -1, \"hash\": {good_hash}}}\n"
        );
        assert!(
            shape_reason(&text)
                .1
                .contains("non-negative integer `size`")
        );
        let text = format!(
            "{HEADER}\n{{\"logical_key\": \"a\", \"physical_keys\": [\"s3://b/a\"], \"size\": 1}}\n"
        );
        assert!(shape_reason(&text).1.contains("has no `hash`"));
    }

    #[test]
    fn missing_or_null_meta_reads_and_writes_as_an_empty_object() {
        let hash = "{\"type\": \"SHA256\", \"value\": \"ab\"}";
        let null_meta = format!("{HEADER}\n{}\n", entry_line(hash, "null"));
        let manifest = Manifest::parse(&null_meta).unwrap();
        assert!(manifest.entries[0].meta.is_empty());
        assert_eq!(
            manifest.to_jsonl().unwrap(),
            format!("{HEADER}\n{}\n", entry_line(hash, "{}"))
        );
        let no_meta = format!(
            "{HEADER}\n{{\"logical_key\": \"a.txt\", \"physical_keys\": [\"s3://b/a.txt\"], \"size\": 3, \"hash\": {hash}}}\n"
        );
        assert_eq!(Manifest::parse(&no_meta).unwrap(), manifest);
        assert_eq!(manifest.entries[0].hash().kind, HashType::Sha256Legacy);
    }

    #[test]
    fn header_and_entries_must_be_objects() {
        assert_eq!(
            shape_reason("[\"v0\"]\n"),
            (
                1,
                "the package header must be an object, not a array".to_string()
            )
        );
        assert_eq!(
            shape_reason(&format!("{HEADER}\n\"a.txt\"\n")),
            (2, "an entry must be an object, not a string".to_string())
        );
        assert!(matches!(
            Manifest::parse("{\"version\": \n"),
            Err(ManifestError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn obsolete_top_hash_and_directory_lines_are_kept_as_quilt3_keeps_them() {
        let text = "{\"version\": \"v0\", \"top_hash\": {\"alg\": \"v0\", \"value\": \"x\"}, \"message\": \"m\"}\n\
            {\"logical_key\": \"d/\", \"meta\": {\"k\": 1}}\n";
        let manifest = Manifest::parse(text).unwrap();
        assert_eq!(manifest.header.message(), Some("m"));
        assert!(!manifest.header.as_object().contains_key("top_hash"));
        assert_eq!(manifest.header.user_meta(), None);
        assert_eq!(manifest.directories.len(), 1);
        assert_eq!(
            manifest.to_jsonl().unwrap(),
            "{\"version\": \"v0\", \"message\": \"m\"}\n{\"logical_key\": \"d/\", \"meta\": {\"k\": 1}}\n"
        );
    }

    #[test]
    fn records_quilt3_cannot_read_are_refused_naming_the_record() {
        let long = "x".repeat(MAX_LINE_BYTES);
        let header = PackageHeader::new(Some(&long), None);
        let err = Manifest::new(header, vec![])
            .unwrap()
            .to_jsonl()
            .unwrap_err();
        assert!(
            matches!(&err, ManifestError::LineTooLong { what, bytes } if what == "the package header" && *bytes > MAX_LINE_BYTES),
            "{err}"
        );

        let mut manifest = Manifest::new(PackageHeader::new(None, None), vec![]).unwrap();
        manifest.directories.push(DirectoryMeta {
            logical_key: "d/".into(),
            meta: Json::str(long.clone()),
        });
        let err = manifest.to_jsonl().unwrap_err();
        assert!(
            matches!(&err, ManifestError::LineTooLong { what, .. } if what == "directory \"d/\""),
            "{err}"
        );

        let mut meta = JsonObject::new();
        meta.insert("user_meta", Json::str(long.clone()));
        let hash = QuiltHash::chunked("AAAA");
        let entry =
            |meta| ManifestEntry::new("a".parse().unwrap(), "s3://b/a".into(), 1, &hash, meta);
        let err = Manifest::new(PackageHeader::new(None, None), vec![entry(meta)])
            .unwrap()
            .to_jsonl()
            .unwrap_err();
        assert!(
            matches!(&err, ManifestError::LineTooLong { what, .. } if what == "entry \"a\""),
            "{err}"
        );
        assert!(err.to_string().contains("under 1000000 bytes"), "{err}");
        // One byte under the limit is accepted.
        let mut meta = JsonObject::new();
        let line_without_value =
            entry(JsonObject::new()).to_line().len() + "\"user_meta\": \"\"".len();
        meta.insert(
            "user_meta",
            Json::str("y".repeat(MAX_LINE_BYTES - 1 - line_without_value)),
        );
        let line = entry(meta.clone()).to_line();
        assert_eq!(line.len(), MAX_LINE_BYTES - 1);
        assert!(
            Manifest::new(PackageHeader::new(None, None), vec![entry(meta)])
                .unwrap()
                .to_jsonl()
                .is_ok()
        );
    }

    #[test]
    fn duplicate_logical_keys_are_refused() {
        let hash = QuiltHash::chunked("AAAA");
        let entry = |pk: &str| {
            ManifestEntry::new(
                "a/b".parse().unwrap(),
                pk.into(),
                1,
                &hash,
                JsonObject::new(),
            )
        };
        let err = Manifest::new(
            PackageHeader::new(None, None),
            vec![entry("s3://b/1"), entry("s3://b/2")],
        )
        .unwrap_err();
        assert!(
            matches!(&err, ManifestError::DuplicateKey(k) if k == "a/b"),
            "{err}"
        );
    }
}
