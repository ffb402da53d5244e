//! Tool inputs and outputs. The JSON Schemas clients see are generated from these types: every
//! field's doc comment is its description, and `example` attributes give examples.
//!
//! Inputs reject unknown fields (a misspelt `preserve_structre` is an error, not a silently
//! ignored option), and take `null` for any argument as "not given": agents send
//! `"include_patterns": null` for what they leave out. Outputs mirror core types (the plan summary, the package result, object
//! metadata) in JSON-Schema-describable form.

use std::collections::BTreeMap;

use rmcp::ErrorData;
use rmcp::handler::server::common::{FromContextPart, schema_for_input};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::JsonObject;
use s3quilt_core::engine::{Phase, ProgressSnapshot};
use s3quilt_core::quilt::HashType;
use s3quilt_core::request::ObjectMetadata;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `wait_seconds` when not given.
pub const DEFAULT_WAIT_SECONDS: u32 = 20;
/// Longest wait of one call: many MCP clients give up on a call after about 60 s.
pub const MAX_WAIT_SECONDS: u32 = 50;
/// `max_keys` when not given.
pub const DEFAULT_MAX_KEYS: u32 = 100;
/// `max_entries` when not given.
pub const DEFAULT_MAX_ENTRIES: u32 = 100;
/// `packages_list`'s `max_items` when not given.
pub const DEFAULT_MAX_ITEMS: u32 = 100;
/// Most keys or entries one page returns.
pub const MAX_PAGE: u32 = 1000;

/// Tool arguments of type `T`. Unlike rmcp's `Parameters`, a value of the wrong type is
/// reported with the argument's name (`wait_seconds: invalid type: string "x", expected u32`);
/// rmcp turns the error into a tool error, as the protocol asks for argument errors. An
/// argument given as `null` is taken as not given, so it gets its default.
pub struct Args<T>(pub T);

impl<S, T: serde::de::DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Args<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let mut arguments = context.arguments.take().unwrap_or_default();
        arguments.retain(|_, value| !value.is_null());
        let arguments = serde_json::Value::Object(arguments);
        serde_path_to_error::deserialize(arguments)
            .map(Args)
            .map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                // This prefix is what rmcp recognises as an argument error.
                ErrorData::invalid_params(
                    format!(
                        "failed to deserialize parameters: {at}{}. The tool's input schema lists each argument with its type and an example",
                        e.inner()
                    ),
                    None,
                )
            })
    }
}

/// The input schema of a tool taking [`Args<T>`], made plain for clients that handle only
/// simple schemas (MCP Inspector cannot fill in a `type: ["object", "null"]` argument): an
/// optional argument has its value's type without `null` (null is accepted all the same, see
/// [`Args`]), and integers carry no `uint32`/`uint64` formats (the range says what is allowed).
pub fn input_schema<T: JsonSchema + 'static>() -> std::sync::Arc<JsonObject> {
    let schema = schema_for_input::<T>().unwrap_or_else(|e| panic!("input schema of a tool: {e}"));
    plain(&schema, true)
}

/// The output schema of a tool returning `T`, its integers without `uint64` formats (which
/// validators warn about). Results may hold nulls, so their types keep `null`.
pub fn output_schema<T: JsonSchema + 'static>() -> std::sync::Arc<JsonObject> {
    plain(&schema_for_output::<T>(), false)
}

fn plain(schema: &JsonObject, drop_null: bool) -> std::sync::Arc<JsonObject> {
    let mut schema = serde_json::Value::Object(schema.clone());
    make_plain(&mut schema, drop_null);
    let serde_json::Value::Object(schema) = schema else {
        unreachable!("a schema object stays an object")
    };
    std::sync::Arc::new(schema)
}

/// `schema` with the argument `name` required (a registry argument when the server has no
/// default registry), or, given `default`, with the default named in its description.
pub fn with_registry_argument(
    schema: &JsonObject,
    name: &str,
    default: Option<&str>,
) -> std::sync::Arc<JsonObject> {
    use serde_json::Value;
    let mut schema = schema.clone();
    match default {
        None => {
            let required = schema
                .entry("required")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(required) = required
                && !required.iter().any(|r| r == name)
            {
                required.push(Value::from(name));
            }
        }
        Some(default) => {
            if let Some(Value::Object(property)) =
                schema.get_mut("properties").and_then(|p| p.get_mut(name))
            {
                let described = property
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let described = format!("{described} Default on this server: s3://{default}.");
                property.insert("description".into(), Value::from(described.trim_start()));
            }
        }
    }
    std::sync::Arc::new(schema)
}

/// Removes integer formats everywhere in `schema` and, with `drop_null`, the `null`
/// alternative of optional values (`type: [T, "null"]` and `anyOf: [S, {type: null}]`).
fn make_plain(schema: &mut serde_json::Value, drop_null: bool) {
    use serde_json::Value;
    match schema {
        Value::Object(object) => {
            if drop_null {
                if let Some(Value::Array(types)) = object.get_mut("type") {
                    types.retain(|t| t != "null");
                    if let [only] = types.as_slice() {
                        let only = only.clone();
                        object.insert("type".into(), only);
                    }
                }
                if let Some(Value::Array(alternatives)) = object.get("anyOf") {
                    let not_null: Vec<&Value> = alternatives
                        .iter()
                        .filter(|a| a.get("type") != Some(&Value::from("null")))
                        .collect();
                    if let [Value::Object(only)] = not_null.as_slice() {
                        let only = only.clone();
                        object.remove("anyOf");
                        for (key, value) in only {
                            object.entry(key).or_insert(value);
                        }
                    }
                }
                if object.get("default") == Some(&Value::Null) {
                    object.remove("default");
                }
            }
            if object.get("type") == Some(&Value::from("integer"))
                || object
                    .get("type")
                    .and_then(Value::as_array)
                    .is_some_and(|types| types.contains(&Value::from("integer")))
            {
                object.remove("format");
            }
            for value in object.values_mut() {
                make_plain(value, drop_null);
            }
        }
        Value::Array(items) => {
            for item in items {
                make_plain(item, drop_null);
            }
        }
        _ => {}
    }
}

fn default_wait() -> u32 {
    DEFAULT_WAIT_SECONDS
}

fn yes() -> bool {
    true
}

fn default_max_keys() -> u32 {
    DEFAULT_MAX_KEYS
}

fn default_max_entries() -> u32 {
    DEFAULT_MAX_ENTRIES
}

fn default_max_items() -> u32 {
    DEFAULT_MAX_ITEMS
}

fn slash() -> Option<String> {
    Some("/".into())
}

/// Entry hash types that can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HashTypeParam {
    /// SHA-256 of 8 MiB+ chunk digests (quilt3's default).
    #[serde(rename = "sha2-256-chunked")]
    Sha2_256Chunked,
    /// Full-object CRC-64/NVME.
    #[serde(rename = "CRC64NVME")]
    Crc64Nvme,
}

impl From<HashTypeParam> for HashType {
    fn from(value: HashTypeParam) -> Self {
        match value {
            HashTypeParam::Sha2_256Chunked => HashType::Sha2_256Chunked,
            HashTypeParam::Crc64Nvme => HashType::Crc64Nvme,
        }
    }
}

/// How much of each source object's S3 metadata an entry's `meta.s3` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectMetadataParam {
    /// Source version, ETag, last-modified, storage class, content type and user metadata
    /// (`x-amz-meta-*`), read by a HEAD request beside each copy.
    Full,
    /// The same without content type and user metadata (only what the listing and the copy
    /// return): one S3 request per copied object instead of two. The copies keep both.
    Listing,
}

impl From<ObjectMetadataParam> for ObjectMetadata {
    fn from(value: ObjectMetadataParam) -> Self {
        match value {
            ObjectMetadataParam::Full => ObjectMetadata::Full,
            ObjectMetadataParam::Listing => ObjectMetadata::Listing,
        }
    }
}

/// Arguments of `package_create_from_s3`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFromS3Params {
    /// Bucket holding the objects: a bucket name or `s3://bucket`. `s3://bucket/folder/` is
    /// taken as that bucket with `source_prefix` `folder/` (when `source_prefix` is not given).
    #[schemars(example = &"my-data-bucket")]
    pub source_bucket: String,
    /// Folder inside the source bucket to package; empty packages the whole bucket. Always a
    /// folder: `ml-models` means `ml-models/`. Logical keys are paths relative to it.
    #[serde(default)]
    #[schemars(example = &"ml-models/")]
    pub source_prefix: String,
    /// Package name, `namespace/name` (letters, digits, `_` and `-` on each side).
    #[schemars(example = &"myteam/ml-models-v2")]
    pub package_name: String,
    /// Registry bucket the package is written to (`s3://bucket` or `bucket`). Required
    /// unless the server was started with a default registry (the tool's schema then says
    /// which).
    #[serde(default)]
    #[schemars(example = &"s3://my-quilt-registry")]
    pub target_registry: Option<String>,
    /// Bucket receiving the copies (default: the registry bucket). Copies go under
    /// `namespace/name/<logical key>`.
    #[serde(default)]
    #[schemars(example = &"my-quilt-data")]
    pub target_bucket: Option<String>,
    /// The package message (commit message) of the new version.
    #[serde(default)]
    #[schemars(example = &"Models trained 2024-06")]
    pub description: Option<String>,
    /// Glob patterns selecting keys, matched against the key relative to `source_prefix`
    /// (never the full key). Without `/` a pattern matches a name at any depth (`*.csv`);
    /// with `/` it matches the path from the top (`2024/*.csv`). `*` and `?` never cross `/`;
    /// `**` does. A pattern naming a folder selects its contents. None selects everything.
    #[serde(default)]
    #[schemars(example = ["*.csv", "checkpoints/**/*.pt"])]
    pub include_patterns: Vec<String>,
    /// Glob patterns removing keys (same rules as `include_patterns`); exclusion wins.
    #[serde(default)]
    #[schemars(example = ["tmp/", "*.log"])]
    pub exclude_patterns: Vec<String>,
    /// Keep the folder layout (`true`, default) or use base names only (`false`). Flattening
    /// refuses, naming them, files that would get the same name: nothing is overwritten.
    #[serde(default = "yes")]
    pub preserve_structure: bool,
    /// Package metadata (quilt3 `user_meta`): a JSON object.
    #[serde(default)]
    #[schemars(example = serde_json::json!({"project": "churn", "owner": "ml-team"}))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tags of the new version, kept in its package metadata as `"tags": [...]` (quilt3's
    /// `meta` and the Quilt catalog's metadata view show them). Not together with a `tags`
    /// key in `metadata`.
    #[serde(default)]
    #[schemars(example = ["churn", "2024-06"])]
    pub tags: Vec<String>,
    /// Copy objects into the target bucket (`true`, default) or reference them where they are.
    #[serde(default = "yes")]
    pub copy: bool,
    /// Entry hash type (default `sha2-256-chunked`, what quilt3 writes).
    #[serde(default)]
    pub hash_type: Option<HashTypeParam>,
    /// On an unversioned target bucket, allow replacing keys that already exist under
    /// `namespace/name/` (otherwise such a run is refused before anything is written).
    #[serde(default)]
    pub overwrite_existing: bool,
    /// What each entry's `meta.s3` records about its source object: `full` (default: version,
    /// ETag, last-modified, storage class, content type and user metadata) or `listing`
    /// (without content type and user metadata; one S3 request per copied object instead of
    /// two, for large packages).
    #[serde(default)]
    #[schemars(example = &"listing")]
    pub object_metadata: Option<ObjectMetadataParam>,
    /// Start from the package's `latest` version (default `true`): objects unchanged since it
    /// keep their entries with no S3 request, only new and changed objects are copied, and a
    /// run that finds nothing changed writes no version (status says `up_to_date`). `false`
    /// packages everything again.
    #[serde(default = "yes")]
    pub incremental: bool,
    /// Start from this version (a top hash) instead of `latest`.
    #[serde(default)]
    pub base: Option<String>,
    /// Check (one HEAD each) that the objects of reused entries still exist; those gone are
    /// copied again from the source.
    #[serde(default)]
    pub verify_base: bool,
    /// Write a new version even when nothing changed since the base.
    #[serde(default)]
    pub publish_unchanged: bool,
    /// The registry workflow to push with, when the registry has a workflows config
    /// (`.quilt/workflows/config.yml`, quilt3's workflows): default its `default_workflow`. A
    /// push the workflow's rules refuse (message required, package name pattern, metadata or
    /// entries schema) is refused before anything is copied, naming the rule.
    #[serde(default)]
    #[schemars(example = &"alpha")]
    pub workflow: Option<String>,
    /// Push with no workflow (quilt3 `workflow=None`), allowed when the config says
    /// `is_workflow_required: false`. Not together with `workflow`.
    #[serde(default)]
    pub no_workflow: bool,
    /// Plan only: list and select, report counts, bytes and the first logical keys exactly as
    /// a real run would write them; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How long this call waits for the run to finish (0-50 s, default 20) before returning
    /// the run id and progress so far; follow it with `package_create_status`. Validation and
    /// planning errors are always returned by this call.
    #[serde(default = "default_wait")]
    #[schemars(range(max = 50), example = 20)]
    pub wait_seconds: u32,
    /// Names this request so a retried call starts nothing new: a call with the same key
    /// returns the run the first one started (on Step Functions the execution name is made
    /// from it and the request, so this holds across server restarts too). 1-128 characters.
    /// Without it every call starts a new run.
    #[serde(default)]
    #[schemars(example = &"nightly-2026-12-02")]
    pub idempotency_key: Option<String>,
    /// Step Functions engine only: shards copied at once (default 10; at most 200, higher is
    /// lowered). The local engine ignores it.
    #[serde(default)]
    #[schemars(range(min = 1), example = 32)]
    pub max_concurrency: Option<u32>,
}

/// One source of `package_create`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// An object (`s3://bucket/path/file.csv`) or a folder (`s3://bucket/path/`, ending in
    /// `/`).
    #[schemars(example = &"s3://my-data-bucket/runs/2024-06/metrics.csv")]
    pub source: String,
    /// Where it goes in the package: the file's logical key, or the folder's logical folder.
    /// It must be the end of the source's path (`runs/2024-06/metrics.csv` can be
    /// `metrics.csv`, `2024-06/metrics.csv` or `runs/2024-06/metrics.csv`), and all entries
    /// must agree on the folder the paths start from. Default: the path relative to the
    /// deepest folder holding every source.
    #[serde(default)]
    #[schemars(example = &"2024-06/metrics.csv")]
    pub logical_key: Option<String>,
}

/// Arguments of `package_create`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Package name, `namespace/name`.
    #[schemars(example = &"myteam/june-runs")]
    pub package_name: String,
    /// The objects and folders to package, all in one bucket. Paths are kept: two files named
    /// `metrics.csv` in different folders stay two entries.
    pub entries: Vec<SourceEntry>,
    /// Registry bucket (`s3://bucket`); optional when the server has a default registry.
    #[serde(default)]
    #[schemars(example = &"s3://my-quilt-registry")]
    pub target_registry: Option<String>,
    /// Bucket receiving the copies (default: the registry bucket).
    #[serde(default)]
    pub target_bucket: Option<String>,
    /// The package message of the new version.
    #[serde(default)]
    pub description: Option<String>,
    /// Package metadata (quilt3 `user_meta`): a JSON object.
    #[serde(default)]
    #[schemars(example = serde_json::json!({"experiment": "june"}))]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// On an unversioned target bucket, allow replacing keys that already exist.
    #[serde(default)]
    pub overwrite_existing: bool,
    /// What each entry's `meta.s3` records about its source object: `full` (default: version,
    /// ETag, last-modified, storage class, content type and user metadata) or `listing`
    /// (without content type and user metadata; one S3 request per copied object instead of
    /// two, for large packages).
    #[serde(default)]
    #[schemars(example = &"listing")]
    pub object_metadata: Option<ObjectMetadataParam>,
    /// Start from the package's `latest` version (default `true`): objects unchanged since it
    /// keep their entries with no S3 request, only new and changed objects are copied, and a
    /// run that finds nothing changed writes no version (status says `up_to_date`). `false`
    /// packages everything again.
    #[serde(default = "yes")]
    pub incremental: bool,
    /// Start from this version (a top hash) instead of `latest`.
    #[serde(default)]
    pub base: Option<String>,
    /// Check (one HEAD each) that the objects of reused entries still exist; those gone are
    /// copied again from the source.
    #[serde(default)]
    pub verify_base: bool,
    /// Write a new version even when nothing changed since the base.
    #[serde(default)]
    pub publish_unchanged: bool,
    /// The registry workflow to push with (see `package_create_from_s3`); default the
    /// registry's `default_workflow`.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Push with no workflow (quilt3 `workflow=None`). Not together with `workflow`.
    #[serde(default)]
    pub no_workflow: bool,
    /// Plan only; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// How long this call waits for the run (0-50 s, default 20); see `package_create_status`.
    #[serde(default = "default_wait")]
    #[schemars(range(max = 50), example = 20)]
    pub wait_seconds: u32,
}

/// Arguments of `package_create_status`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// The `run_id` a create call returned: a local run id or a Step Functions execution ARN.
    /// Optional when this server has started one run only; without it, a server with several
    /// answers with the list of its runs and their status.
    #[serde(default)]
    #[schemars(example = &"local-20240611T101500Z-3f2a9c1e")]
    pub run_id: String,
    /// Wait up to this many seconds (0-50, default 0) for the run to finish, sending progress
    /// notifications meanwhile.
    #[serde(default)]
    #[schemars(range(max = 50), example = 10)]
    pub wait_seconds: u32,
}

/// Arguments of `bucket_objects_list`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Bucket name or `s3://bucket`.
    #[schemars(example = &"my-data-bucket")]
    pub bucket: String,
    /// Only keys starting with this text (give folders with a trailing `/`).
    #[serde(default)]
    #[schemars(example = &"ml-models/")]
    pub prefix: String,
    /// Group keys at this character into `common_prefixes` (folders); default `/`. Give `""`
    /// to list every key below the prefix.
    #[serde(default = "slash")]
    #[schemars(example = &"/")]
    pub delimiter: Option<String>,
    /// Most objects and folders on this page together (1-1000, default 100); a page ends
    /// earlier when it reaches about 40 KiB of JSON.
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1, max = 1000), example = 100)]
    pub max_keys: u32,
    /// The previous page's `next_continuation_token`, unchanged, with the same bucket, prefix
    /// and delimiter (max_keys may change); omit it for the first page. Only tokens from this
    /// tool are accepted, not S3's own.
    #[serde(default)]
    pub continuation_token: Option<String>,
}

/// Arguments of `bucket_object_info`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfoParams {
    /// Bucket name or `s3://bucket`.
    #[schemars(example = &"my-data-bucket")]
    pub bucket: String,
    /// The full key, exactly as listed (any characters), or the object's URI
    /// `s3://bucket/key` in the same bucket.
    #[schemars(example = &"ml-models/model.pt")]
    pub key: String,
    /// A specific version (versioned buckets); default the current one.
    #[serde(default)]
    pub version_id: Option<String>,
}

/// Arguments of `packages_list`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackagesParams {
    /// Registry bucket (`s3://bucket`); optional when the server has a default registry.
    #[serde(default)]
    #[schemars(example = &"s3://my-quilt-registry")]
    pub registry: Option<String>,
    /// Only packages whose name starts with this text, e.g. a namespace.
    #[serde(default)]
    #[schemars(example = &"myteam/")]
    pub prefix: Option<String>,
    /// List the versions of this package instead of package names.
    #[serde(default)]
    #[schemars(example = &"myteam/ml-models-v2")]
    pub package_name: Option<String>,
    /// Most names or versions on this page (1-1000, default 100); a page ends earlier when it
    /// reaches about 40 KiB of JSON.
    #[serde(default = "default_max_items")]
    #[schemars(range(min = 1, max = 1000), example = 100)]
    pub max_items: u32,
    /// The previous page's `next_continuation_token`, unchanged, with the same registry, prefix
    /// and package_name (max_items may change); omit it for the first page.
    #[serde(default)]
    pub continuation_token: Option<String>,
}

/// Arguments of `package_runs`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunsParams {
    /// Registry bucket (`s3://bucket`); optional when the server has a default registry.
    #[serde(default)]
    #[schemars(example = &"s3://my-quilt-registry")]
    pub registry: Option<String>,
    /// `list` (default): the runs left in the registry's staging area; `abort`: roll back the
    /// run `run_id` (not committed); `resume`: finish the committed run `run_id`.
    #[serde(default)]
    #[schemars(example = &"list")]
    pub action: Option<RunsAction>,
    /// The run to abort or resume, as `list` shows it.
    #[serde(default)]
    #[schemars(example = &"20261201T220118Z-6f1c2a9b")]
    pub run_id: Option<String>,
}

/// What `package_runs` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunsAction {
    /// List the runs.
    List,
    /// Roll back a run that is not committed.
    Abort,
    /// Finish a committed run.
    Resume,
}

/// One run left in a registry's staging area.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StagedRunView {
    /// Run id.
    pub run_id: String,
    /// `namespace/name`.
    pub package: String,
    /// `uncommitted` (abort it), `committed` (resume it) or `aborted` (abort finishes it).
    pub state: String,
    /// Unix seconds when it was planned.
    pub started_at: u64,
    /// Objects planned.
    pub objects: u64,
}

/// What `package_runs` found or did.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunsView {
    /// `s3://registry`.
    pub registry: String,
    /// The runs in staging (after the action).
    pub runs: Vec<StagedRunView>,
    /// What the action did, for a person.
    pub done: String,
}

/// Arguments of `package_browse`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrowseParams {
    /// Package name, `namespace/name`.
    #[schemars(example = &"myteam/ml-models-v2")]
    pub package_name: String,
    /// Registry bucket (`s3://bucket`); optional when the server has a default registry.
    #[serde(default)]
    #[schemars(example = &"s3://my-quilt-registry")]
    pub registry: Option<String>,
    /// The version's top hash (64 hex); default the latest version.
    #[serde(default)]
    pub top_hash: Option<String>,
    /// Only entries whose logical key starts with this text.
    #[serde(default)]
    #[schemars(example = &"checkpoints/")]
    pub path_prefix: Option<String>,
    /// Most entries on this page (1-1000, default 100).
    #[serde(default = "default_max_entries")]
    #[schemars(range(min = 1, max = 1000), example = 100)]
    pub max_entries: u32,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Which engine runs a package creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Inside this server process.
    Local,
    /// An AWS Step Functions execution.
    StepFunctions,
}

/// Whether a run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still planning, copying or finalizing.
    Running,
    /// Finished: a package version was written (or, for a dry run, planned).
    Succeeded,
    /// Failed; whatever it had written was rolled back.
    Failed,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Listing and selecting.
    Planning,
    /// Copying objects server-side.
    Copying,
    /// Writing the manifest and pointers.
    Finalizing,
    /// Undoing a failed run.
    RollingBack,
    /// Done.
    Succeeded,
    /// Failed and rolled back.
    Failed,
}

impl From<Phase> for RunPhase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Planning => RunPhase::Planning,
            Phase::Copying => RunPhase::Copying,
            Phase::Finalizing => RunPhase::Finalizing,
            Phase::RollingBack => RunPhase::RollingBack,
            Phase::Succeeded => RunPhase::Succeeded,
            Phase::Failed => RunPhase::Failed,
        }
    }
}

/// Progress of a run.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunProgress {
    /// Phase.
    pub phase: RunPhase,
    /// Objects copied so far.
    pub objects_done: u64,
    /// Objects to copy (known once planned).
    pub objects_total: u64,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// Bytes to copy (known once planned).
    pub bytes_total: u64,
}

impl From<ProgressSnapshot> for RunProgress {
    fn from(s: ProgressSnapshot) -> Self {
        RunProgress {
            phase: s.phase.into(),
            objects_done: s.objects_done,
            objects_total: s.objects_total,
            bytes_done: s.bytes_done,
            bytes_total: s.bytes_total,
        }
    }
}

/// How many listed keys one pattern matched.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PatternMatchView {
    /// `include_patterns` or `exclude_patterns`.
    pub field: String,
    /// The pattern as given.
    pub pattern: String,
    /// Listed keys it matched.
    pub keys: u64,
}

/// What planning found (the same plan a real run carries out).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PlanView {
    /// `namespace/name`.
    pub package_name: String,
    /// `s3://registry`.
    pub registry: String,
    /// Bucket receiving copies.
    pub target_bucket: String,
    /// `s3://bucket/prefix/` packaged.
    pub source: String,
    /// Objects selected.
    pub objects: u64,
    /// Bytes selected.
    pub bytes: u64,
    /// Shards the copy is split into.
    pub shards: u32,
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Folder markers skipped.
    pub folder_markers: u64,
    /// Keys ending in `/` that hold data: skipped (a logical key cannot end in `/`), listed as
    /// a warning.
    pub non_empty_folder_markers: Vec<String>,
    /// Objects not matched by `include_patterns`.
    pub not_included: u64,
    /// Objects removed by `exclude_patterns`.
    pub excluded: u64,
    /// How many listed keys each include and exclude pattern matched, in the order given.
    pub pattern_matches: Vec<PatternMatchView>,
    /// Patterns that matched no key under the prefix (usually a typo, a pattern written
    /// against the full key, or `[ ]` meant literally: the warning says how to escape them);
    /// for a dry run, that write access to the registry and target was not checked.
    pub warnings: Vec<String>,
    /// The first logical keys, in package order: exactly the keys the package gets.
    pub sample_logical_keys: Vec<String>,
    /// Copy (`true`) or reference in place.
    pub copy: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// An incremental run: what it reused of its base version and what it copied.
    pub incremental: Option<IncrementalView>,
}

/// Objects and their bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct TallyView {
    /// Objects.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What an incremental run found against its base version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct IncrementalView {
    /// The base version's top hash.
    pub base: String,
    /// Unchanged objects: their entries were kept, with no S3 request.
    pub reused: TallyView,
    /// Objects whose source changed since the base: copied.
    pub changed: TallyView,
    /// Objects new since the base: copied.
    pub added: TallyView,
    /// Base entries no longer selected: not in the new version.
    pub removed: TallyView,
    /// Nothing changed: no version was written; the base is the package.
    pub up_to_date: bool,
    /// With `verify_base`: reused entries checked.
    pub verified: Option<u64>,
    /// With `verify_base`: reused entries whose object was gone (copied again).
    pub missing: Vec<String>,
}

/// The package version a run wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct PackageView {
    /// `namespace/name`.
    pub package_name: String,
    /// Top hash of the new version.
    pub top_hash: String,
    /// `s3://registry`.
    pub registry: String,
    /// Pointer timestamp (Unix seconds).
    pub timestamp: u64,
    /// Entries.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// A quilt3 command that opens this version.
    pub browse: String,
    /// An earlier version had the same top hash with its entries elsewhere: its manifest was
    /// replaced by this one (quilt3's rule: the last writer's manifest stands), so this
    /// version's entries are the objects this run asked for.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub manifest_replaced: bool,
}

/// A package creation run: its state, progress, and result or error.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunView {
    /// The run's id: pass it to `package_create_status`.
    pub run_id: String,
    /// Which engine runs it.
    pub engine: EngineKind,
    /// Running, succeeded or failed.
    pub status: RunStatus,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// Progress.
    pub progress: RunProgress,
    /// Seconds since the run started (0 for an execution this server did not start).
    pub elapsed_seconds: u64,
    /// The plan (once known).
    pub plan: Option<PlanView>,
    /// The new package version (when succeeded).
    pub package: Option<PackageView>,
    /// What went wrong and what rollback did (when failed).
    pub error: Option<String>,
    /// What to do next.
    pub next_step: String,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ObjectSummary {
    /// The full key.
    pub key: String,
    /// `s3://bucket/key`.
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modified (RFC 3339).
    pub last_modified: Option<String>,
    /// Storage class.
    pub storage_class: String,
    /// ETag.
    pub etag: Option<String>,
}

/// One page of a bucket listing.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ObjectsPage {
    /// Bucket.
    pub bucket: String,
    /// Prefix listed.
    pub prefix: String,
    /// Delimiter used (none: every key below the prefix).
    pub delimiter: Option<String>,
    /// Objects on this page, in key order, every key as S3 stores it.
    pub objects: Vec<ObjectSummary>,
    /// Folders on this page (keys grouped at the delimiter), in order. Objects and folders
    /// are paged through together in name order: each is on exactly one page.
    pub common_prefixes: Vec<String>,
    /// Pass as `continuation_token` (with the same bucket, prefix and delimiter) for the next
    /// page; absent on the last page.
    pub next_continuation_token: Option<String>,
}

/// Metadata of one object.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ObjectDetails {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// `s3://bucket/key`.
    pub uri: String,
    /// Size in bytes.
    pub size: u64,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`).
    pub metadata: BTreeMap<String, String>,
    /// Version id (versioned buckets).
    pub version_id: Option<String>,
    /// Storage class.
    pub storage_class: String,
    /// Last modified (RFC 3339).
    pub last_modified: Option<String>,
    /// ETag.
    pub etag: Option<String>,
    /// Stored SHA-256 checksum (base64), if S3 has one.
    pub checksum_sha256: Option<String>,
    /// Stored CRC-64/NVME checksum (base64), if S3 has one.
    pub checksum_crc64nvme: Option<String>,
    /// `FULL_OBJECT` or `COMPOSITE`.
    pub checksum_type: Option<String>,
    /// Parts of a multipart object.
    pub parts_count: Option<u32>,
    /// Restore status of an archived object.
    pub restore: Option<String>,
}

/// One version of a package.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct VersionView {
    /// Pointer timestamp (Unix seconds).
    pub timestamp: String,
    /// Top hash.
    pub top_hash: String,
}

/// Packages of a registry, or versions of one package.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PackagesView {
    /// `s3://registry`.
    pub registry: String,
    /// This page of package names, sorted (empty when listing versions).
    pub packages: Vec<String>,
    /// This page of the versions of `package_name`, oldest first (empty when listing
    /// packages).
    pub versions: Vec<VersionView>,
    /// Package names matching `prefix`, or versions of `package_name`, on all pages.
    pub total: u64,
    /// Pass as `continuation_token` (with the same registry, prefix and package_name) for the
    /// next page; absent on the last page.
    pub next_continuation_token: Option<String>,
}

/// One entry of a package.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EntryView {
    /// Path inside the package.
    pub logical_key: String,
    /// Where the bytes are (`s3://bucket/key?versionId=…`).
    pub physical_key: String,
    /// Size in bytes.
    pub size: u64,
    /// Hash type (`sha2-256-chunked`, `CRC64NVME`, …).
    pub hash_type: String,
    /// Hash value.
    pub hash: String,
    /// Entry metadata.
    pub meta: serde_json::Value,
}

/// A page of a package version's entries.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PackageContents {
    /// `namespace/name`.
    pub package_name: String,
    /// `s3://registry`.
    pub registry: String,
    /// Top hash of this version.
    pub top_hash: String,
    /// The package message.
    pub message: Option<String>,
    /// Package metadata (`user_meta`).
    pub metadata: serde_json::Value,
    /// Entries in the version.
    pub total_entries: u64,
    /// Bytes in the version.
    pub total_bytes: u64,
    /// Entries matching `path_prefix`.
    pub matching_entries: u64,
    /// This page of entries, in package order.
    pub entries: Vec<EntryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
