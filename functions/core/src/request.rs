//! The packaging request: one type shared by the CLI, the Lambdas and the MCP server, and its
//! validation into a [`ValidRequest`] before anything is read or written.

use serde::{Deserialize, Serialize};

use crate::quilt::checksum::HashType;
use crate::quilt::json::{Json, JsonObject};
use crate::quilt::manifest::{MAX_LINE_BYTES, PackageHeader};
use crate::quilt::names::PackageName;
use crate::registry::workflow::WorkflowChoice;
use crate::select::{Selector, SelectorError};

/// Largest package metadata accepted (its JSON text), well under quilt3's 1 MB record limit.
pub const MAX_METADATA_BYTES: usize = 512 * 1024;
/// Deepest nesting of package metadata (an object holding an object is two levels). Readers
/// recurse per level (serde_json stops at 128, with the MCP message around the metadata), so
/// deeper metadata is refused here, naming the field, rather than by whichever reader breaks.
pub const MAX_METADATA_DEPTH: usize = 64;

/// How deep arrays and objects nest in JSON text (outside strings), without parsing it: for
/// saying how deep a text is that a parser refused as too deep.
pub fn json_text_depth(line: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in line {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'[' | b'{' if !in_string => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' if !in_string => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// How deep `value` nests (a scalar is 0, `{}` and `[]` are 1), counted without recursion.
pub fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(object) => Box::new(object.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        pending.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// A request to package `s3://source_bucket/source_prefix` as `package_name` in `target_registry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRequest {
    /// Bucket holding the objects (a name, or `s3://bucket`).
    pub source_bucket: String,
    /// Folder inside the source bucket; `""` is the whole bucket. Treated as a folder: `data`
    /// means `data/`.
    #[serde(default)]
    pub source_prefix: String,
    /// `namespace/name`.
    pub package_name: String,
    /// Registry bucket (`s3://bucket` or `bucket`).
    pub target_registry: String,
    /// Where copies go (default: the registry bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bucket: Option<String>,
    /// The package message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Globs selecting keys (relative to the prefix); none selects everything.
    #[serde(default)]
    pub include_patterns: Vec<String>,
    /// Globs removing keys; exclusion wins over inclusion.
    #[serde(default)]
    pub exclude_patterns: Vec<String>,
    /// Keep the folder layout (`true`) or flatten to base names (`false`).
    #[serde(default = "default_true")]
    pub preserve_structure: bool,
    /// Package metadata (`user_meta`); must be a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Copy objects into the target bucket (`true`) or reference them in place (`false`).
    #[serde(default = "default_true")]
    pub copy: bool,
    /// Plan only: list, select and report, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Entry hash type: `sha2-256-chunked` (default) or `CRC64NVME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_type: Option<HashType>,
    /// On an unversioned target bucket, allow replacing keys that already exist.
    #[serde(default)]
    pub overwrite_existing: bool,
    /// What each entry's `meta.s3` records (see [`ObjectMetadata`]); default `full`.
    #[serde(default, skip_serializing_if = "ObjectMetadata::is_full")]
    pub object_metadata: ObjectMetadata,
    /// Start from a base version (default `true`): objects unchanged since the base keep its
    /// entries with no request at all; only new and changed objects are copied and hashed.
    /// `false` packages everything again (`--full`).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub incremental: bool,
    /// The base version's top hash (default: the package's `latest`, when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Check that every reused entry's object still exists (one HEAD each); an entry whose
    /// object is gone is copied again from the source. Off by default: the base is trusted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub verify_base: bool,
    /// Publish a new version even when nothing changed since the base (a new timestamped
    /// pointer to the same top hash). By default an unchanged package is left as it is.
    #[serde(default, skip_serializing_if = "is_false")]
    pub publish_unchanged: bool,
    /// The registry workflow (quilt3's `workflow=`, see [`crate::registry::workflow`]): absent
    /// uses the registry's `default_workflow`, `null` pushes with no workflow (recorded as
    /// `"id": null`), a name picks that workflow.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub workflow: Option<Option<String>>,
}

/// A field that is present, `null` included (`Some(None)`); `#[serde(default)]` makes an
/// absent one `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// How much of each source object's S3 metadata an entry records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectMetadata {
    /// Source version, ETag, last-modified and storage class, plus the content type and the
    /// user metadata (`x-amz-meta-*`), read by a HEAD that runs beside each copy.
    #[default]
    Full,
    /// Only what the listing and the copy itself return (source version, ETag, last-modified,
    /// storage class): one request per object instead of two. The copies still carry their
    /// content type and user metadata; only the manifest does not repeat them.
    Listing,
}

impl ObjectMetadata {
    /// Whether this is the default, `full`.
    pub fn is_full(&self) -> bool {
        *self == ObjectMetadata::Full
    }
}

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl PackageRequest {
    /// A request with defaults for everything but the four required fields.
    pub fn new(
        source_bucket: &str,
        source_prefix: &str,
        package_name: &str,
        target_registry: &str,
    ) -> Self {
        PackageRequest {
            source_bucket: source_bucket.to_string(),
            source_prefix: source_prefix.to_string(),
            package_name: package_name.to_string(),
            target_registry: target_registry.to_string(),
            target_bucket: None,
            description: None,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            preserve_structure: true,
            metadata: None,
            copy: true,
            dry_run: false,
            hash_type: None,
            overwrite_existing: false,
            object_metadata: ObjectMetadata::Full,
            incremental: true,
            base: None,
            verify_base: false,
            publish_unchanged: false,
            workflow: None,
        }
    }
}

/// The `workflow` field from the two arguments the CLI and the MCP tools take: a workflow
/// name, and a switch for none (quilt3's `workflow=None`). Both at once is refused.
pub fn workflow_field(
    name: Option<String>,
    no_workflow: bool,
) -> Result<Option<Option<String>>, RequestError> {
    match (name, no_workflow) {
        (Some(name), true) => Err(invalid(
            "workflow",
            format!("names {name:?} and asks for no workflow at once; give one of them"),
        )),
        (Some(name), false) => Ok(Some(Some(name))),
        (None, true) => Ok(Some(None)),
        (None, false) => Ok(None),
    }
}

/// A field of the request that is not acceptable, named, with what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// A field's value is invalid.
    #[error("{field}: {problem}")]
    Invalid {
        /// The request field, as spelt in the request JSON.
        field: &'static str,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// A pattern does not compile.
    #[error(transparent)]
    Pattern(#[from] SelectorError),
}

impl RequestError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RequestError::Invalid { field, .. } => field,
            RequestError::Pattern(e) => e.field(),
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Refuses a source folder that holds what the run writes: the package's own folder in the
/// target (each run would package the last one, nested deeper), the registry's `.quilt/`, or
/// s3quilt's staging (`.s3quilt/`). Two folders overlap when one contains the other, so the
/// registry's root is refused too.
fn refuse_self_reference(
    source_bucket: &str,
    source_prefix: &str,
    registry_bucket: &str,
    target_bucket: Option<&str>,
    package_name: &PackageName,
) -> Result<(), RequestError> {
    let overlaps =
        |written: &str| source_prefix.starts_with(written) || written.starts_with(source_prefix);
    let package_folder = format!("{}/{}/", package_name.namespace(), package_name.name());
    let mut written: Vec<(String, &str)> = Vec::new();
    if source_bucket == registry_bucket {
        written.push((".quilt/".into(), "the registry's manifests and pointers"));
        written.push((".s3quilt/".into(), "s3quilt's staging"));
    }
    if target_bucket == Some(source_bucket) {
        written.push((package_folder, "where this package's copies go"));
    }
    match written.into_iter().find(|(folder, _)| overlaps(folder)) {
        Some((folder, what)) => Err(invalid(
            "source_prefix",
            format!(
                "s3://{source_bucket}/{source_prefix} contains or is inside s3://{source_bucket}/{folder} ({what}): the run would package what it writes. Choose a folder outside it, e.g. the data's own prefix"
            ),
        )),
        None => Ok(()),
    }
}

/// Validates an S3 bucket name (general-purpose bucket rules), accepting an `s3://` prefix.
pub fn parse_bucket(field: &'static str, value: &str) -> Result<String, RequestError> {
    let name = value.strip_prefix("s3://").unwrap_or(value);
    let name = name.strip_suffix('/').unwrap_or(name);
    let allowed = "bucket names are 3-63 characters of lowercase letters, digits, `.` and `-`, starting and ending with a letter or digit (e.g. `my-data-bucket`)";
    if name.contains('/') {
        return Err(invalid(
            field,
            format!("{value:?} has a path; give only the bucket name ({allowed})"),
        ));
    }
    if !(3..=63).contains(&name.len()) {
        return Err(invalid(
            field,
            format!("{value:?} is {} characters; {allowed}", name.len()),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(invalid(
            field,
            format!("{value:?} contains {bad:?}; {allowed}"),
        ));
    }
    let first_last_ok =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_last_ok(name.chars().next()) || !first_last_ok(name.chars().last()) {
        return Err(invalid(
            field,
            format!("{value:?} must start and end with a letter or digit; {allowed}"),
        ));
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err(invalid(
            field,
            format!("{value:?} has adjacent `.`/`-` characters; {allowed}"),
        ));
    }
    if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err(invalid(
            field,
            format!("{value:?} looks like an IP address; {allowed}"),
        ));
    }
    Ok(name.to_string())
}

/// A request that passed validation: every field typed.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// Source bucket.
    pub source_bucket: String,
    /// Source folder, empty or ending in `/`.
    pub source_prefix: String,
    /// Package name.
    pub package_name: PackageName,
    /// Registry bucket.
    pub registry_bucket: String,
    /// Bucket receiving copies.
    pub target_bucket: String,
    /// Package message.
    pub message: Option<String>,
    /// Include/exclude rules.
    pub selector: Selector,
    /// Flatten to base names.
    pub flatten: bool,
    /// Package `user_meta` (absent when not given).
    pub user_meta: Option<JsonObject>,
    /// Copy (`true`) or reference in place.
    pub copy: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Entry hash type.
    pub hash_type: HashType,
    /// Allow replacing existing keys on an unversioned target.
    pub overwrite_existing: bool,
    /// Which version an incremental run starts from (`None`: a full run).
    pub base: Option<BaseChoice>,
    /// The registry workflow asked for.
    pub workflow: WorkflowChoice,
    /// The request as given, for the plan document.
    pub original: PackageRequest,
}

/// The base version of an incremental run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseChoice {
    /// The package's `latest`, when the package exists (else the run is a first version).
    Latest,
    /// This top hash, which must exist.
    TopHash(String),
}

impl ValidRequest {
    /// The manifest header a version of this request gets (line 1 of the manifest).
    pub fn header(&self) -> PackageHeader {
        PackageHeader::new(self.message.as_deref(), self.user_meta.clone())
    }
}

impl PackageRequest {
    /// Checks every field; the error names the first bad field and what is allowed.
    pub fn validate(&self) -> Result<ValidRequest, RequestError> {
        let source_bucket = parse_bucket("source_bucket", &self.source_bucket)?;
        let package_name: PackageName = self
            .package_name
            .parse()
            .map_err(|e: crate::quilt::names::NameError| invalid("package_name", e.to_string()))?;
        let registry_bucket = parse_bucket("target_registry", &self.target_registry)?;
        let target_bucket = match &self.target_bucket {
            Some(b) if !b.is_empty() => parse_bucket("target_bucket", b)?,
            _ => registry_bucket.clone(),
        };
        let mut prefix = self.source_prefix.trim_start_matches('/').to_string();
        if prefix.contains("//") {
            return Err(invalid(
                "source_prefix",
                format!(
                    "{:?} contains `//`; give a folder such as `data/2024/`",
                    self.source_prefix
                ),
            ));
        }
        if prefix.len() > 1024 {
            return Err(invalid(
                "source_prefix",
                "is longer than S3's 1024-byte key limit",
            ));
        }
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if let Some(message) = &self.description
            && message.len() > MAX_METADATA_BYTES
        {
            return Err(invalid(
                "description",
                format!(
                    "is {} bytes; at most {MAX_METADATA_BYTES} are allowed",
                    message.len()
                ),
            ));
        }
        let user_meta = match &self.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(value @ serde_json::Value::Object(_)) => {
                let depth = json_depth(value);
                if depth > MAX_METADATA_DEPTH {
                    return Err(invalid(
                        "metadata",
                        format!(
                            "nests {depth} levels deep; at most {MAX_METADATA_DEPTH} levels are allowed"
                        ),
                    ));
                }
                let json = Json::from_serde(value).map_err(|e| {
                    invalid(
                        "metadata",
                        format!("{e}; write numbers a double can hold, or strings"),
                    )
                })?;
                let size = json.to_manifest_string().len();
                if size > MAX_METADATA_BYTES {
                    return Err(invalid(
                        "metadata",
                        format!(
                            "is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are allowed"
                        ),
                    ));
                }
                json.as_object().cloned()
            }
            Some(other) => {
                let type_name = match other {
                    serde_json::Value::Bool(_) => "boolean",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::String(_) => "string",
                    _ => "array",
                };
                return Err(invalid(
                    "metadata",
                    format!(
                        "must be a JSON object such as {{\"project\": \"x\"}}, not a {type_name}"
                    ),
                ));
            }
        };
        // Each field is bounded above; together they form the manifest's first line, which quilt3
        // refuses at 1,000,000 bytes or more (escapes can make the message longer in JSON).
        let header = PackageHeader::new(self.description.as_deref(), user_meta.clone());
        let header_bytes = Json::Object(header.as_object().clone())
            .to_manifest_string()
            .len();
        if header_bytes >= MAX_LINE_BYTES {
            return Err(invalid(
                if user_meta.is_some() {
                    "metadata"
                } else {
                    "description"
                },
                format!(
                    "with the description, makes a manifest header of {header_bytes} bytes as JSON; quilt3 reads lines under {MAX_LINE_BYTES} bytes"
                ),
            ));
        }
        let selector = Selector::new(&self.include_patterns, &self.exclude_patterns)?;
        let hash_type = self.hash_type.unwrap_or(HashType::Sha2_256Chunked);
        if hash_type == HashType::Sha256Legacy {
            return Err(invalid(
                "hash_type",
                "SHA256 is read-only in Quilt; use `sha2-256-chunked` or `CRC64NVME`",
            ));
        }
        if !self.copy && self.target_bucket.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(invalid(
                "target_bucket",
                "is only used when copying; with `copy: false` objects stay where they are",
            ));
        }
        refuse_self_reference(
            &source_bucket,
            &prefix,
            &registry_bucket,
            self.copy.then_some(target_bucket.as_str()),
            &package_name,
        )?;
        let base = match (&self.base, self.incremental) {
            (Some(_), false) => {
                return Err(invalid(
                    "base",
                    "is a base version for an incremental run; it cannot be given with `incremental: false`",
                ));
            }
            (Some(hash), true) if crate::registry::is_top_hash(hash) => {
                Some(BaseChoice::TopHash(hash.clone()))
            }
            (Some(hash), true) => {
                return Err(invalid(
                    "base",
                    format!(
                        "{hash:?} is not a top hash: give the 64 lowercase hex digits of a version of the package"
                    ),
                ));
            }
            (None, true) => Some(BaseChoice::Latest),
            (None, false) => None,
        };
        if self.verify_base && !self.incremental {
            return Err(invalid(
                "verify_base",
                "checks the entries an incremental run reuses; it cannot be given with `incremental: false`",
            ));
        }
        Ok(ValidRequest {
            source_bucket,
            source_prefix: prefix,
            package_name,
            registry_bucket,
            target_bucket,
            message: self.description.clone(),
            selector,
            flatten: !self.preserve_structure,
            user_meta,
            copy: self.copy,
            dry_run: self.dry_run,
            hash_type,
            overwrite_existing: self.overwrite_existing,
            base,
            workflow: WorkflowChoice::from_field(&self.workflow),
            original: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PackageRequest {
        PackageRequest::new("src-bucket", "data", "team/pkg", "s3://registry")
    }

    type Mutation = Box<dyn Fn(&mut PackageRequest)>;

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "source_bucket",
                Box::new(|r| r.source_bucket = "Bad_Bucket".into()),
            ),
            ("source_bucket", Box::new(|r| r.source_bucket = "ab".into())),
            (
                "source_bucket",
                Box::new(|r| r.source_bucket = "s3://bucket/with/path".into()),
            ),
            (
                "source_bucket",
                Box::new(|r| r.source_bucket = "192.168.1.1".into()),
            ),
            (
                "package_name",
                Box::new(|r| r.package_name = "nopkg".into()),
            ),
            (
                "package_name",
                Box::new(|r| r.package_name = "team/pkg.v2".into()),
            ),
            (
                "target_registry",
                Box::new(|r| r.target_registry = "s3://-bad".into()),
            ),
            (
                "target_bucket",
                Box::new(|r| r.target_bucket = Some("x".into())),
            ),
            (
                "metadata",
                Box::new(|r| r.metadata = Some(serde_json::json!([1, 2]))),
            ),
            (
                "metadata",
                Box::new(|r| r.metadata = Some(serde_json::json!("text"))),
            ),
            (
                "include_patterns",
                Box::new(|r| r.include_patterns = vec!["[unclosed".into()]),
            ),
            (
                "exclude_patterns",
                Box::new(|r| r.exclude_patterns = vec!["a/{b".into()]),
            ),
            (
                "source_prefix",
                Box::new(|r| r.source_prefix = "a//b".into()),
            ),
            (
                "hash_type",
                Box::new(|r| r.hash_type = Some(HashType::Sha256Legacy)),
            ),
            // Each under its own bound, together over quilt3's line limit (control characters
            // are escaped as six bytes each in the manifest).
            (
                "metadata",
                Box::new(|r| {
                    r.description = Some("\u{1}".repeat(MAX_METADATA_BYTES));
                    r.metadata = Some(serde_json::json!({"k": "v"}));
                }),
            ),
            (
                "description",
                Box::new(|r| r.description = Some("\u{1}".repeat(200_000))),
            ),
        ];
        for (field, mutate) in cases {
            let mut request = base();
            mutate(&mut request);
            let err = request.validate().unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn metadata_nesting_is_bounded() {
        let nested = |depth: usize| {
            let mut value = serde_json::json!({});
            for _ in 1..depth {
                value = serde_json::json!({ "k": value });
            }
            value
        };
        assert_eq!(json_depth(&nested(3)), 3);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        let mut request = base();
        request.metadata = Some(nested(MAX_METADATA_DEPTH));
        assert!(request.validate().is_ok());
        request.metadata = Some(nested(MAX_METADATA_DEPTH + 1));
        let err = request.validate().unwrap_err();
        assert_eq!(err.field(), "metadata");
        assert_eq!(
            err.to_string(),
            "metadata: nests 65 levels deep; at most 64 levels are allowed"
        );
    }

    #[test]
    fn defaults_and_normalisation() {
        let valid = base().validate().unwrap();
        assert_eq!(valid.source_prefix, "data/");
        assert_eq!(valid.target_bucket, "registry");
        assert!(valid.user_meta.is_none());
        let request: PackageRequest = serde_json::from_value(serde_json::json!({
            "source_bucket": "b-1", "package_name": "a/b", "target_registry": "reg"
        }))
        .unwrap();
        assert!(request.preserve_structure && request.copy && !request.dry_run);
        let unknown = serde_json::from_value::<PackageRequest>(serde_json::json!({
            "source_bucket": "b-1", "package_name": "a/b", "target_registry": "reg", "flaten": true
        }));
        assert!(unknown.unwrap_err().to_string().contains("flaten"));
        assert_eq!(request.object_metadata, ObjectMetadata::Full);
        let listing: PackageRequest = serde_json::from_value(serde_json::json!({
            "source_bucket": "b-1", "package_name": "a/b", "target_registry": "reg",
            "object_metadata": "listing"
        }))
        .unwrap();
        assert_eq!(listing.object_metadata, ObjectMetadata::Listing);
        let bad = serde_json::from_value::<PackageRequest>(serde_json::json!({
            "source_bucket": "b-1", "package_name": "a/b", "target_registry": "reg",
            "object_metadata": "some"
        }))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("`full`") && bad.contains("`listing`"), "{bad}");
        // `workflow`: absent, `null` and a name are three requests, and each round-trips.
        assert_eq!(request.workflow, None);
        for (workflow, choice) in [
            (serde_json::json!(null), WorkflowChoice::Skip),
            (
                serde_json::json!("alpha"),
                WorkflowChoice::Named("alpha".into()),
            ),
        ] {
            let with: PackageRequest = serde_json::from_value(serde_json::json!({
                "source_bucket": "b-1", "package_name": "a/b", "target_registry": "reg",
                "workflow": workflow
            }))
            .unwrap();
            assert_eq!(with.validate().unwrap().workflow, choice);
            let text = serde_json::to_string(&with).unwrap();
            assert!(text.contains(&format!("\"workflow\":{workflow}")), "{text}");
            assert_eq!(serde_json::from_str::<PackageRequest>(&text).unwrap(), with);
        }
        assert_eq!(
            request.validate().unwrap().workflow,
            WorkflowChoice::Default
        );
        // The default is not written, so requests and plan documents keep their shape.
        assert!(
            !serde_json::to_string(&request)
                .unwrap()
                .contains("object_metadata")
        );
    }
}
