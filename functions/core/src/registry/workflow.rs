//! Registry workflows: the rules a registry's `.quilt/workflows/config.yml` sets for every push,
//! as quilt3 8.0.0 applies them, and the manifest header's `workflow` record they produce.
//!
//! * No config: a request that names no workflow is accepted and the header gets no `workflow`
//!   key; a request that names one (or asks for none) is refused, as quilt3 refuses it.
//! * A config: the request's workflow (else `default_workflow`) must exist; asking for none (or
//!   having no default) is allowed only with `is_workflow_required: false` (the default is
//!   `true`). The workflow's rules are checked in quilt3's order: `is_message_required`,
//!   `handle_pattern` (a regular expression searched in the package name), `metadata_schema`
//!   (the package's `user_meta`, `{}` when absent) and `entries_schema` (the list of
//!   `{"logical_key", "size", "meta"}` in walk order, `meta` being the entry's `user_meta`). A
//!   schema is named by its id in the config's `schemas:` map, whose `url` is an `s3://` URL
//!   (a `versionId` pins it); quilt3 refuses other URLs on an S3 registry (relative ones
//!   included), and schemas using `$ref` or a meta-schema other than draft-07.
//! * The accepted push records `{"id": <workflow or null>, "config": <config URL>}` (plus
//!   `"schemas": {id: URL}` for the schemas it loaded), each URL with the `versionId` S3 gave.
//!
//! Everything is decided at plan time, before any object is copied. The pure parts
//! ([`WorkflowConfig::parse`], [`WorkflowConfig::select`], [`Schema::compile`], [`Rules`]) are
//! separate from the reads ([`load_config`], [`check_request`]) so tests reach every rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quilt::json::{Json, JsonObject};
use crate::quilt::physical_key::PhysicalKey;
use crate::retry::RetryPolicy;
use crate::storage::{ObjectStore, StoreError, StoreErrorKind, get_bytes};

/// Where quilt3 looks for the config in a registry bucket.
pub const CONFIG_KEY: &str = ".quilt/workflows/config.yml";

/// The newest config version quilt3 8.0.0 reads.
const SUPPORTED_VERSION: (u64, u64, u64) = (1, 1, 0);

/// How many schema violations an error lists.
const MAX_VIOLATIONS: usize = 5;

/// The meta-schema quilt3 accepts in a schema's `$schema`.
const DRAFT7: &str = "http://json-schema.org/draft-07/schema#";

/// What a request asks for (quilt3's `workflow=` argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowChoice {
    /// Not given: the config's `default_workflow`.
    Default,
    /// Explicitly none (`workflow=None`): recorded as `"id": null`.
    Skip,
    /// A workflow by id.
    Named(String),
}

impl WorkflowChoice {
    /// The choice a request's `workflow` field makes: absent, `null`, or a name.
    pub fn from_field(field: &Option<Option<String>>) -> Self {
        match field {
            None => WorkflowChoice::Default,
            Some(None) => WorkflowChoice::Skip,
            Some(Some(name)) => WorkflowChoice::Named(name.clone()),
        }
    }
}

/// The manifest header's `workflow` value, as quilt3 writes it (key order `id`, `config`,
/// `schemas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// The workflow id, `None` when the push asked for none.
    pub id: Option<String>,
    /// `s3://registry/.quilt/workflows/config.yml`, with `?versionId=` when S3 gave one.
    pub config: String,
    /// Schema ids and the URLs they were read from, in the order they were loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<(String, String)>,
}

impl WorkflowRecord {
    /// The record as the header's JSON value.
    pub fn to_json(&self) -> Json {
        let mut object = JsonObject::new();
        object.insert("id", self.id.as_deref().map_or(Json::Null, Json::str));
        object.insert("config", Json::str(self.config.as_str()));
        if !self.schemas.is_empty() {
            let mut schemas = JsonObject::new();
            for (id, url) in &self.schemas {
                schemas.insert(id.as_str(), Json::str(url.as_str()));
            }
            object.insert("schemas", Json::Object(schemas));
        }
        Json::Object(object)
    }
}

/// Why a push is refused by the registry's workflows (or their config cannot be used). Each
/// message starts with `workflow` and names the rule.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The config (or a schema) could not be read for a reason other than its absence.
    #[error("workflow: cannot read {url}: {source}")]
    Read {
        /// What was read.
        url: String,
        /// The failure.
        source: StoreError,
    },
    /// The config is not a valid workflows config.
    #[error("workflow: the registry's workflows config {url} is invalid: {problem}")]
    Config {
        /// The config's URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// A workflow is asked for, and the registry has no config.
    #[error(
        "workflow: {asked} is asked for, but the registry has no workflows config (s3://{bucket}/{CONFIG_KEY}); leave the workflow out"
    )]
    NoConfig {
        /// `workflow "x"`, or `no workflow`.
        asked: String,
        /// The registry bucket.
        bucket: String,
    },
    /// No workflow was chosen (none asked for, no default) and the config requires one.
    #[error(
        "workflow: the registry requires a workflow (is_workflow_required: true); pick one of: {}",
        .available.join(", ")
    )]
    Required {
        /// The config's workflow ids.
        available: Vec<String>,
    },
    /// The chosen workflow is not in the config.
    #[error(
        "workflow: the registry has no workflow {name:?}{}; pick one of: {}",
        if *.is_default { " (its default_workflow)" } else { "" },
        .available.join(", ")
    )]
    Unknown {
        /// The id asked for.
        name: String,
        /// Whether it came from `default_workflow`.
        is_default: bool,
        /// The config's workflow ids.
        available: Vec<String>,
    },
    /// A schema the workflow names cannot be used.
    #[error("workflow {workflow}: schema {schema_id:?}: {problem}")]
    Schema {
        /// The workflow.
        workflow: String,
        /// The schema id.
        schema_id: String,
        /// What is wrong.
        problem: String,
    },
    /// `is_message_required: true` and the push has no message.
    #[error(
        "workflow {workflow}: a message is required (is_message_required: true); give `description` (CLI: `--message`)"
    )]
    MessageRequired {
        /// The workflow.
        workflow: String,
    },
    /// The package name does not match `handle_pattern`.
    #[error("workflow {workflow}: package name {name:?} does not match handle_pattern {pattern:?}")]
    NamePattern {
        /// The workflow.
        workflow: String,
        /// The package name.
        name: String,
        /// The pattern.
        pattern: String,
    },
    /// The package metadata fails `metadata_schema`.
    #[error(
        "workflow {workflow}: the package metadata fails metadata_schema {schema_id:?} ({url}): {violations}"
    )]
    Metadata {
        /// The workflow.
        workflow: String,
        /// The schema id.
        schema_id: String,
        /// Where the schema was read.
        url: String,
        /// The first violations (`at <JSON pointer>: <problem>`).
        violations: String,
    },
    /// The entries fail `entries_schema`.
    #[error(
        "workflow {workflow}: the package entries fail entries_schema {schema_id:?} ({url}; it is given [{{\"logical_key\", \"size\", \"meta\"}}, ...] in walk order): {violations}"
    )]
    Entries {
        /// The workflow.
        workflow: String,
        /// The schema id.
        schema_id: String,
        /// Where the schema was read.
        url: String,
        /// The first violations (`at <JSON pointer>: <problem>`).
        violations: String,
    },
}

impl WorkflowError {
    /// Whether trying again may succeed (S3 failed transiently while reading).
    pub fn is_transient(&self) -> bool {
        matches!(self, WorkflowError::Read { source, .. } if source.kind.is_retryable())
    }
}

/// A config's `version`: `"1.1"`, or `{base: "1.1", catalog: ...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ConfigVersion {
    Plain(String),
    Compound(CompoundVersion),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompoundVersion {
    base: String,
    #[serde(default)]
    catalog: Option<String>,
}

/// One workflow of the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    handle_pattern: Option<String>,
    #[serde(default)]
    metadata_schema: Option<String>,
    #[serde(default)]
    entries_schema: Option<String>,
    #[serde(default)]
    is_message_required: Option<bool>,
    #[serde(default, rename = "catalog")]
    _catalog: Option<serde::de::IgnoredAny>,
}

/// A `schemas:` entry (other keys are allowed and ignored).
#[derive(Debug, Clone, Deserialize)]
struct SchemaRef {
    url: String,
}

/// A `successors:` entry (read only to be checked, as quilt3 checks it).
#[derive(Debug, Clone, Deserialize)]
struct Successor {
    title: String,
    #[serde(default, rename = "copy_data")]
    _copy_data: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    version: ConfigVersion,
    workflows: BTreeMap<String, WorkflowDef>,
    #[serde(default)]
    is_workflow_required: Option<bool>,
    #[serde(default)]
    default_workflow: Option<String>,
    #[serde(default)]
    schemas: Option<BTreeMap<String, SchemaRef>>,
    #[serde(default)]
    successors: Option<BTreeMap<String, Successor>>,
    #[serde(default, rename = "catalog")]
    _catalog: Option<serde::de::IgnoredAny>,
}

/// A parsed, checked workflows config and where it was read.
#[derive(Debug, Clone)]
pub struct WorkflowConfig {
    location: PhysicalKey,
    file: ConfigFile,
}

/// `^[1-9][0-9]*(\.(0|[1-9][0-9]*)){0,2}$`, parsed to (major, minor, patch).
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let parts: Vec<&str> = text.split('.').collect();
    let number = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        (digits && (p == "0" || !p.starts_with('0'))).then(|| p.parse::<u64>().ok())?
    };
    if parts.len() > 3 || parts[0] == "0" {
        return None;
    }
    let mut numbers = [0u64; 3];
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        *slot = number(part)?;
    }
    Some((numbers[0], numbers[1], numbers[2]))
}

/// A workflow id as the config may spell it: `^[A-Za-z_-][A-Za-z0-9_-]*$`, at most 64.
fn valid_workflow_id(id: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    id.len() <= 64
        && id
            .bytes()
            .next()
            .is_some_and(|b| word(b) && !b.is_ascii_digit())
        && id.bytes().all(word)
}

impl WorkflowConfig {
    /// Parses config text read from `location`, checking it as quilt3 checks it (its schema for
    /// configs, then the version).
    pub fn parse(text: &[u8], location: PhysicalKey) -> Result<Self, WorkflowError> {
        let invalid = |problem: String| WorkflowError::Config {
            url: location.to_string(),
            problem,
        };
        let text = std::str::from_utf8(text).map_err(|_| invalid("it is not UTF-8 text".into()))?;
        let value: serde_json::Value =
            serde_norway::from_str(text).map_err(|e| invalid(format!("it is not YAML ({e})")))?;
        if !value.is_object() {
            return Err(invalid(
                "it must be a mapping with `version` and `workflows`".into(),
            ));
        }
        let file: ConfigFile = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            invalid(format!("{at}{}", e.inner()))
        })?;
        let version_text = match &file.version {
            ConfigVersion::Plain(v) => v.clone(),
            ConfigVersion::Compound(c) => {
                if let Some(catalog) = &c.catalog
                    && parse_version(catalog).is_none()
                {
                    return Err(invalid(format!(
                        "version.catalog {catalog:?} is not a version such as \"1\" or \"1.1\""
                    )));
                }
                c.base.clone()
            }
        };
        let version = parse_version(&version_text).ok_or_else(|| {
            invalid(format!(
                "version {version_text:?} is not a version such as \"1\" or \"1.1\""
            ))
        })?;
        if file.workflows.is_empty() {
            return Err(invalid("workflows must name at least one workflow".into()));
        }
        if let Some(bad) = file.workflows.keys().find(|id| !valid_workflow_id(id)) {
            return Err(invalid(format!(
                "workflow id {bad:?} must be letters, digits, `_` and `-` (not starting with a digit), at most 64"
            )));
        }
        for (id, def) in &file.workflows {
            if def.name.is_empty() {
                return Err(invalid(format!("workflows.{id}.name must not be empty")));
            }
            if def.description.as_deref() == Some("") {
                return Err(invalid(format!(
                    "workflows.{id}.description must not be empty"
                )));
            }
        }
        if file.schemas.as_ref().is_some_and(BTreeMap::is_empty) {
            return Err(invalid(
                "schemas, when given, must name at least one schema".into(),
            ));
        }
        if let Some(successors) = &file.successors {
            if successors.is_empty() {
                return Err(invalid(
                    "successors, when given, must name at least one bucket".into(),
                ));
            }
            if let Some((url, _)) = successors.iter().find(|(_, s)| s.title.is_empty()) {
                return Err(invalid(format!("successors.{url}.title must not be empty")));
            }
        }
        if version > SUPPORTED_VERSION {
            let (major, minor, patch) = version;
            return Err(invalid(format!(
                "version {major}.{minor}.{patch} is not supported (quilt3 8.0.0 reads up to 1.1.0)"
            )));
        }
        Ok(WorkflowConfig { location, file })
    }

    /// Where the config was read (with its version id, when S3 gave one).
    pub fn location(&self) -> &PhysicalKey {
        &self.location
    }

    /// The config's workflow ids, sorted.
    pub fn workflow_ids(&self) -> Vec<String> {
        self.file.workflows.keys().cloned().collect()
    }

    /// The workflow `choice` selects, or why none may be used.
    pub fn select(&self, choice: &WorkflowChoice) -> Result<Selected<'_>, WorkflowError> {
        let (id, is_default) = match choice {
            WorkflowChoice::Default => (self.file.default_workflow.clone(), true),
            WorkflowChoice::Skip => (None, false),
            WorkflowChoice::Named(name) => (Some(name.clone()), false),
        };
        let Some(id) = id else {
            if self.file.is_workflow_required.unwrap_or(true) {
                return Err(WorkflowError::Required {
                    available: self.workflow_ids(),
                });
            }
            return Ok(Selected {
                config: self,
                id: None,
                def: None,
            });
        };
        match self.file.workflows.get_key_value(&id) {
            Some((id, def)) => Ok(Selected {
                config: self,
                id: Some(id),
                def: Some(def),
            }),
            None => Err(WorkflowError::Unknown {
                name: id,
                is_default,
                available: self.workflow_ids(),
            }),
        }
    }

    /// Where schema `schema_id` is read: an `s3://` URL from the `schemas:` map.
    fn schema_location(
        &self,
        workflow: &str,
        schema_id: &str,
    ) -> Result<PhysicalKey, WorkflowError> {
        let problem = |problem: String| WorkflowError::Schema {
            workflow: workflow.to_string(),
            schema_id: schema_id.to_string(),
            problem,
        };
        let url = &self
            .file
            .schemas
            .as_ref()
            .and_then(|schemas| schemas.get(schema_id))
            .ok_or_else(|| problem("the config's `schemas:` has no such id".into()))?
            .url;
        if url.starts_with("file:") {
            return Err(problem(format!(
                "local schema {url:?} cannot be used on a registry in S3; give an s3:// URL"
            )));
        }
        if !url.starts_with("s3://") {
            return Err(problem(format!(
                "URL {url:?} is not an s3:// URL (quilt3 reads schemas from s3://bucket/key URLs only, relative ones included)"
            )));
        }
        url.parse()
            .map_err(|e: crate::quilt::physical_key::PhysicalKeyError| problem(e.to_string()))
    }
}

/// The workflow a push uses: its id (`None` for none) and rules.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    config: &'a WorkflowConfig,
    id: Option<&'a String>,
    def: Option<&'a WorkflowDef>,
}

impl<'a> Selected<'a> {
    /// The workflow id (`None`: no workflow).
    pub fn id(&self) -> Option<&'a str> {
        self.id.map(String::as_str)
    }

    fn label(&self) -> String {
        self.id().unwrap_or("(none)").to_string()
    }

    /// The ids of the schemas it uses and where each is read, metadata schema first.
    pub fn schema_locations(&self) -> Result<Vec<(String, PhysicalKey)>, WorkflowError> {
        let Some(def) = self.def else {
            return Ok(Vec::new());
        };
        let mut found: Vec<(String, PhysicalKey)> = Vec::new();
        for id in [&def.metadata_schema, &def.entries_schema]
            .into_iter()
            .flatten()
        {
            if !found.iter().any(|(known, _)| known == id) {
                found.push((id.clone(), self.config.schema_location(&self.label(), id)?));
            }
        }
        Ok(found)
    }

    /// The rules, given the schemas read for [`Selected::schema_locations`] (id, where read
    /// (with the version S3 gave), text).
    pub fn rules(
        &self,
        schemas: &[(String, PhysicalKey, Vec<u8>)],
    ) -> Result<Rules, WorkflowError> {
        let label = self.label();
        let def = self.def.cloned().unwrap_or_default();
        let pattern = def
            .handle_pattern
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| {
                fancy_regex::Regex::new(p).map(|re| (p.to_string(), re)).map_err(|e| {
                    WorkflowError::Config {
                        url: self.config.location.to_string(),
                        problem: format!("workflows.{label}.handle_pattern {p:?} is not a regular expression: {e}"),
                    }
                })
            })
            .transpose()?;
        let mut compiled: Vec<(String, Schema)> = Vec::new();
        for (id, location, text) in schemas {
            compiled.push((id.clone(), Schema::compile(&label, id, location, text)?));
        }
        let take = |id: &Option<String>| {
            id.as_ref().and_then(|id| {
                compiled
                    .iter()
                    .find(|(known, _)| known == id)
                    .map(|(id, schema)| (id.clone(), schema.clone()))
            })
        };
        let record = WorkflowRecord {
            id: self.id.cloned(),
            config: self.config.location.to_string(),
            schemas: compiled
                .iter()
                .map(|(id, schema)| (id.clone(), schema.url.clone()))
                .collect(),
        };
        Ok(Rules {
            workflow: label,
            message_required: def.is_message_required.unwrap_or(false),
            pattern,
            metadata: take(&def.metadata_schema),
            entries: take(&def.entries_schema),
            record,
        })
    }
}

/// A compiled JSON Schema (draft-07) and where it was read.
#[derive(Debug, Clone)]
pub struct Schema {
    url: String,
    validator: std::sync::Arc<jsonschema::Validator>,
}

/// Whether any object in `value` has a `$ref` key (quilt3 refuses such schemas).
fn has_ref(value: &serde_json::Value) -> bool {
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::Object(object) => {
                if object.contains_key("$ref") {
                    return true;
                }
                pending.extend(object.values());
            }
            serde_json::Value::Array(items) => pending.extend(items),
            _ => {}
        }
    }
    false
}

impl Schema {
    /// Compiles schema `schema_id` of `workflow` from `text`, read from `location`.
    pub fn compile(
        workflow: &str,
        schema_id: &str,
        location: &PhysicalKey,
        text: &[u8],
    ) -> Result<Schema, WorkflowError> {
        let url = location.to_string();
        let problem = |problem: String| WorkflowError::Schema {
            workflow: workflow.to_string(),
            schema_id: schema_id.to_string(),
            problem: format!("{url}: {problem}"),
        };
        let schema: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| problem(format!("is not JSON ({e})")))?;
        if has_ref(&schema) {
            return Err(problem(
                "uses `$ref`, which quilt3 does not support in workflow schemas".into(),
            ));
        }
        if let Some(meta) = schema.get("$schema") {
            match meta.as_str() {
                None => return Err(problem("`$schema` must be a string".into())),
                Some(DRAFT7) => {}
                Some(other) => {
                    return Err(problem(format!(
                        "meta-schema {other:?} is not supported; quilt3 reads {DRAFT7:?} only"
                    )));
                }
            }
        }
        jsonschema::draft7::meta::validate(&schema)
            .map_err(|e| problem(format!("is not a valid JSON Schema: {e}")))?;
        // quilt3 validates without a format checker: `format` is an annotation only.
        let validator = jsonschema::draft7::options()
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| problem(format!("is not a valid JSON Schema: {e}")))?;
        Ok(Schema {
            url,
            validator: std::sync::Arc::new(validator),
        })
    }

    /// The first violations of `instance`, or `None` when it is valid.
    fn violations(&self, instance: &serde_json::Value) -> Option<String> {
        let mut errors = self.validator.iter_errors(instance).peekable();
        errors.peek()?;
        let shown: Vec<String> = errors
            .take(MAX_VIOLATIONS + 1)
            .enumerate()
            .map(|(i, e)| {
                if i == MAX_VIOLATIONS {
                    "…".to_string()
                } else {
                    let at = e.instance_path().as_str();
                    format!("at {:?}: {e}", if at.is_empty() { "/" } else { at })
                }
            })
            .collect();
        Some(shown.join("; "))
    }
}

/// A selected workflow's rules, ready to apply.
#[derive(Debug, Clone)]
pub struct Rules {
    workflow: String,
    message_required: bool,
    pattern: Option<(String, fancy_regex::Regex)>,
    metadata: Option<(String, Schema)>,
    entries: Option<(String, Schema)>,
    record: WorkflowRecord,
}

/// One entry as `entries_schema` sees it.
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    /// Logical key.
    pub logical_key: &'a str,
    /// Size in bytes.
    pub size: u64,
}

impl Rules {
    /// Applies the rules in quilt3's order (message, name, metadata, entries), returning the
    /// header's `workflow` record. `user_meta` is the package metadata (`None`: `{}`);
    /// `entries` are in walk order and carry no user metadata.
    pub fn check<'e>(
        &self,
        package_name: &str,
        message: Option<&str>,
        user_meta: Option<&JsonObject>,
        entries: impl IntoIterator<Item = EntryView<'e>>,
    ) -> Result<WorkflowRecord, WorkflowError> {
        if self.message_required && message.is_none_or(str::is_empty) {
            return Err(WorkflowError::MessageRequired {
                workflow: self.workflow.clone(),
            });
        }
        if let Some((text, pattern)) = &self.pattern
            // A pattern that fails at run time (backtracking limit) does not match.
            && !pattern.is_match(package_name).unwrap_or(false)
        {
            return Err(WorkflowError::NamePattern {
                workflow: self.workflow.clone(),
                name: package_name.to_string(),
                pattern: text.clone(),
            });
        }
        if let Some((schema_id, schema)) = &self.metadata {
            let meta = user_meta
                .map(|m| Json::Object(m.clone()).to_serde())
                .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
            if let Some(violations) = schema.violations(&meta) {
                return Err(WorkflowError::Metadata {
                    workflow: self.workflow.clone(),
                    schema_id: schema_id.clone(),
                    url: schema.url.clone(),
                    violations,
                });
            }
        }
        if let Some((schema_id, schema)) = &self.entries {
            let list: Vec<serde_json::Value> = entries
                .into_iter()
                .map(|e| {
                    serde_json::json!({
                        "logical_key": e.logical_key,
                        "size": e.size,
                        "meta": {},
                    })
                })
                .collect();
            if let Some(violations) = schema.violations(&serde_json::Value::Array(list)) {
                return Err(WorkflowError::Entries {
                    workflow: self.workflow.clone(),
                    schema_id: schema_id.clone(),
                    url: schema.url.clone(),
                    violations,
                });
            }
        }
        Ok(self.record.clone())
    }
}

/// Reads an object for a workflow, pinned to the version a HEAD names (so the URL recorded is
/// the bytes used). `Ok(None)`: there is no such object.
async fn read_pinned(
    store: &dyn ObjectStore,
    location: &PhysicalKey,
    retry: &RetryPolicy,
) -> Result<Option<(PhysicalKey, Vec<u8>)>, WorkflowError> {
    let read_error = |source: StoreError| WorkflowError::Read {
        url: location.to_string(),
        source,
    };
    let (bucket, key) = (&location.bucket, &location.key);
    let version = match &location.version_id {
        Some(v) => Some(v.clone()),
        None => match retry.run(|_| store.head(bucket, key, None)).await {
            Ok(info) => info.version_id,
            Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        },
    };
    match retry
        .run(|_| get_bytes(store, bucket, key, version.as_deref()))
        .await
    {
        Ok(bytes) => Ok(Some((
            PhysicalKey::new(bucket.clone(), key.clone(), version),
            bytes.to_vec(),
        ))),
        Err(e) if e.kind == StoreErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(e)),
    }
}

/// The workflows config of the registry in `bucket`, `None` when it has none.
pub async fn load_config(
    store: &dyn ObjectStore,
    bucket: &str,
) -> Result<Option<WorkflowConfig>, WorkflowError> {
    let retry = RetryPolicy::default();
    let location = PhysicalKey::new(bucket, CONFIG_KEY, None);
    match read_pinned(store, &location, &retry).await? {
        None => Ok(None),
        Some((location, text)) => WorkflowConfig::parse(&text, location).map(Some),
    }
}

/// Applies the registry's workflows to a push of `entries` (walk order) as `package_name` with
/// `message` and `user_meta`: the header's `workflow` record (`None`: the registry has no
/// config and none was asked for), or why the push is refused.
pub async fn check_request<'e>(
    store: &dyn ObjectStore,
    registry_bucket: &str,
    choice: &WorkflowChoice,
    package_name: &str,
    message: Option<&str>,
    user_meta: Option<&JsonObject>,
    entries: impl IntoIterator<Item = EntryView<'e>>,
) -> Result<Option<WorkflowRecord>, WorkflowError> {
    let Some(config) = load_config(store, registry_bucket).await? else {
        return match choice {
            WorkflowChoice::Default => Ok(None),
            WorkflowChoice::Skip => Err(WorkflowError::NoConfig {
                asked: "no workflow".into(),
                bucket: registry_bucket.to_string(),
            }),
            WorkflowChoice::Named(name) => Err(WorkflowError::NoConfig {
                asked: format!("workflow {name:?}"),
                bucket: registry_bucket.to_string(),
            }),
        };
    };
    let selected = config.select(choice)?;
    let retry = RetryPolicy::default();
    let mut schemas = Vec::new();
    for (id, location) in selected.schema_locations()? {
        let (read_from, text) = read_pinned(store, &location, &retry)
            .await?
            .ok_or_else(|| WorkflowError::Schema {
                workflow: selected.label(),
                schema_id: id.clone(),
                problem: format!("{location} does not exist"),
            })?;
        schemas.push((id, read_from, text));
    }
    selected
        .rules(&schemas)?
        .check(package_name, message, user_meta, entries)
        .map(Some)
}

/// [`check_request`] for a validated request and its selected objects (in walk order): the
/// plan's one call, after selection and before anything is written.
pub async fn check_valid_request(
    store: &dyn ObjectStore,
    valid: &crate::request::ValidRequest,
    selected: &[crate::staging::PlannedObject],
) -> Result<Option<WorkflowRecord>, WorkflowError> {
    check_request(
        store,
        &valid.registry_bucket,
        &valid.workflow,
        valid.package_name.as_str(),
        valid.message.as_deref(),
        valid.user_meta.as_ref(),
        selected.iter().map(|o| EntryView {
            logical_key: o.logical_key.as_str(),
            size: o.size,
        }),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> PhysicalKey {
        PhysicalKey::new("reg", CONFIG_KEY, Some("v1".into()))
    }

    fn config(yaml: &str) -> Result<WorkflowConfig, WorkflowError> {
        WorkflowConfig::parse(yaml.as_bytes(), location())
    }

    fn problem(yaml: &str) -> String {
        match config(yaml).unwrap_err() {
            WorkflowError::Config { url, problem } => {
                assert_eq!(url, format!("s3://reg/{CONFIG_KEY}?versionId=v1"));
                problem
            }
            other => panic!("expected a config error, got {other}"),
        }
    }

    const TWO: &str = "version: '1'\nworkflows:\n  beta:\n    name: Beta\n  alpha:\n    name: Alpha\n    is_message_required: true\n    handle_pattern: ^team/\n";

    fn meta(value: serde_json::Value) -> JsonObject {
        Json::from_serde(&value)
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn configs_are_checked_like_quilt3_checks_them() {
        assert!(config(TWO).is_ok());
        assert!(
            config(
                "version: {base: '1.1', catalog: '1'}\nworkflows: {a: {name: A}}\ncatalog: {x: 1}\n"
            )
            .is_ok()
        );
        for (yaml, expected) in [
            ("", "mapping"),
            ("- 1", "mapping"),
            ("version: '1'\n", "workflows"),
            ("workflows: {a: {name: A}}\n", "version"),
            ("version: 1\nworkflows: {a: {name: A}}\n", "version"),
            (
                "version: '01'\nworkflows: {a: {name: A}}\n",
                "not a version",
            ),
            (
                "version: '1.2'\nworkflows: {a: {name: A}}\n",
                "not supported",
            ),
            ("version: '2'\nworkflows: {a: {name: A}}\n", "not supported"),
            ("version: '1'\nworkflows: {}\n", "at least one"),
            (
                "version: '1'\nworkflows: {1a: {name: A}}\n",
                "workflow id \"1a\"",
            ),
            ("version: '1'\nworkflows: {a: {}}\n", "name"),
            (
                "version: '1'\nworkflows: {a: {name: ''}}\n",
                "must not be empty",
            ),
            ("version: '1'\nworkflows: {a: {name: A, nme: B}}\n", "nme"),
            (
                "version: '1'\nworkflows: {a: {name: A}}\nextra: 1\n",
                "extra",
            ),
            (
                "version: '1'\nworkflows: {a: {name: A}}\nschemas: {}\n",
                "at least one schema",
            ),
            (
                "version: '1'\nworkflows: {a: {name: A}}\nschemas: {s: {}}\n",
                "url",
            ),
            (
                "version: '1'\nworkflows: {a: {name: A, is_message_required: 'yes'}}\n",
                "is_message_required",
            ),
            ("version: '1'\nworkflows: [a]\n", "workflows"),
            ("version: '1'\nworkflows: {a: {name: A}\n", "not YAML"),
        ] {
            let found = problem(yaml);
            assert!(found.contains(expected), "{yaml:?}: {found}");
        }
        assert_eq!(parse_version("1"), Some((1, 0, 0)));
        assert_eq!(parse_version("1.1"), Some((1, 1, 0)));
        assert_eq!(parse_version("1.0.7"), Some((1, 0, 7)));
        for bad in ["0", "1.", "1.01", "1.1.1.1", "", "a", "1.-1"] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_workflow_is_chosen_like_quilt3_chooses_it() {
        let two = config(TWO).unwrap();
        // No default, `is_workflow_required` defaulting to true.
        let err = two
            .select(&WorkflowChoice::Default)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "workflow: the registry requires a workflow (is_workflow_required: true); pick one of: alpha, beta"
        );
        assert!(two.select(&WorkflowChoice::Skip).is_err());
        let err = two
            .select(&WorkflowChoice::Named("gamma".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "workflow: the registry has no workflow \"gamma\"; pick one of: alpha, beta"
        );
        let chosen = two.select(&WorkflowChoice::Named("beta".into())).unwrap();
        assert_eq!(chosen.id(), Some("beta"));

        let optional = config(&format!("{TWO}is_workflow_required: false\n")).unwrap();
        let none = optional.select(&WorkflowChoice::Default).unwrap();
        assert_eq!(none.id(), None);
        let record = none
            .rules(&[])
            .unwrap()
            .check("any/name", None, None, [])
            .unwrap();
        assert_eq!(
            record.to_json().to_manifest_string(),
            format!("{{\"id\": null, \"config\": \"s3://reg/{CONFIG_KEY}?versionId=v1\"}}")
        );

        let dangling = config(&format!("{TWO}default_workflow: gamma\n")).unwrap();
        let err = dangling
            .select(&WorkflowChoice::Default)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"gamma\" (its default_workflow)"), "{err}");
        let defaulted = config(&format!("{TWO}default_workflow: beta\n")).unwrap();
        assert_eq!(
            defaulted.select(&WorkflowChoice::Default).unwrap().id(),
            Some("beta")
        );
    }

    #[test]
    fn message_and_name_rules_name_the_rule() {
        let two = config(TWO).unwrap();
        let rules = two
            .select(&WorkflowChoice::Named("alpha".into()))
            .unwrap()
            .rules(&[])
            .unwrap();
        for message in [None, Some("")] {
            let err = rules.check("team/pkg", message, None, []).unwrap_err();
            assert!(matches!(err, WorkflowError::MessageRequired { .. }));
            assert!(
                err.to_string().contains("is_message_required: true"),
                "{err}"
            );
        }
        let err = rules.check("other/pkg", Some("m"), None, []).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workflow alpha: package name \"other/pkg\" does not match handle_pattern \"^team/\""
        );
        // `re.search`: the pattern may match anywhere unless anchored.
        let record = rules.check("team/pkg", Some("m"), None, []).unwrap();
        assert_eq!(record.id.as_deref(), Some("alpha"));
        assert!(record.schemas.is_empty());
        let bad = config("version: '1'\nworkflows: {a: {name: A, handle_pattern: '(unclosed'}}\n")
            .unwrap();
        let err = bad
            .select(&WorkflowChoice::Named("a".into()))
            .unwrap()
            .rules(&[]);
        assert!(err.unwrap_err().to_string().contains("handle_pattern"));
    }

    const WITH_SCHEMAS: &str = "version: '1.1'\nis_workflow_required: false\nworkflows:\n  a:\n    name: A\n    metadata_schema: meta\n    entries_schema: files\nschemas:\n  meta: {url: 's3://schemas/meta.json?versionId=m1'}\n  files: {url: 's3://schemas/dir/files%20v2.json'}\n  local: {url: 'file:///tmp/x.json'}\n  relative: {url: 'schemas/x.json'}\n";

    #[test]
    fn schemas_validate_metadata_and_entries_and_are_recorded() {
        let cfg = config(WITH_SCHEMAS).unwrap();
        let chosen = cfg.select(&WorkflowChoice::Named("a".into())).unwrap();
        let locations = chosen.schema_locations().unwrap();
        let names: Vec<String> = locations
            .iter()
            .map(|(id, at)| format!("{id}={at}"))
            .collect();
        assert_eq!(
            names,
            [
                "meta=s3://schemas/meta.json?versionId=m1",
                "files=s3://schemas/dir/files%20v2.json"
            ]
        );
        let meta_schema = br#"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "required": ["project"], "properties": {"n": {"type": "integer", "maximum": 10}, "site": {"format": "uri"}}}"#;
        let files_schema = br#"{"type": "array", "items": {"properties": {"logical_key": {"pattern": "\\.csv$"}, "size": {"maximum": 100}, "meta": {"type": "object"}}}}"#;
        let read = vec![
            (
                locations[0].0.clone(),
                locations[0].1.clone(),
                meta_schema.to_vec(),
            ),
            (
                locations[1].0.clone(),
                PhysicalKey::new("schemas", "dir/files v2.json", Some("f 1".into())),
                files_schema.to_vec(),
            ),
        ];
        let rules = chosen.rules(&read).unwrap();
        let entry = |logical_key, size| EntryView { logical_key, size };
        let good = meta(serde_json::json!({"project": "x", "n": 10, "site": "not a uri"}));
        let record = rules
            .check(
                "t/p",
                None,
                Some(&good),
                [entry("a.csv", 5), entry("b/c.csv", 100)],
            )
            .unwrap();
        assert_eq!(
            record.to_json().to_manifest_string(),
            format!(
                "{{\"id\": \"a\", \"config\": \"s3://reg/{CONFIG_KEY}?versionId=v1\", \"schemas\": {{\"meta\": \"s3://schemas/meta.json?versionId=m1\", \"files\": \"s3://schemas/dir/files%20v2.json?versionId=f+1\"}}}}"
            )
        );
        // Absent metadata is validated as `{}`.
        let err = rules.check("t/p", None, None, []).unwrap_err();
        assert!(matches!(err, WorkflowError::Metadata { .. }), "{err}");
        assert!(err.to_string().contains("project"), "{err}");
        let big = meta(serde_json::json!({"project": "x", "n": 11}));
        let err = rules
            .check("t/p", None, Some(&big), [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata_schema \"meta\"") && err.contains("/n"),
            "{err}"
        );
        let err = rules
            .check(
                "t/p",
                None,
                Some(&good),
                [entry("a.csv", 5), entry("b.txt", 101)],
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, WorkflowError::Entries { .. }), "{text}");
        assert!(
            text.contains("/1/logical_key") && text.contains("/1/size"),
            "{text}"
        );
    }

    #[test]
    fn unusable_schemas_are_refused_as_quilt3_refuses_them() {
        let cfg = config(WITH_SCHEMAS).unwrap();
        let schema_error = |id: &str, text: &[u8]| {
            Schema::compile("a", id, &PhysicalKey::new("s", "k", None), text)
                .unwrap_err()
                .to_string()
        };
        for (text, expected) in [
            (&br##"{"$ref": "#/definitions/x"}"##[..], "$ref"),
            (br#"{"properties": {"a": {"$ref": "other.json"}}}"#, "$ref"),
            (
                br#"{"$schema": "https://json-schema.org/draft/2020-12/schema"}"#,
                "not supported",
            ),
            (br#"{"$schema": 7}"#, "must be a string"),
            (br#"{"type": "no-such-type"}"#, "not a valid JSON Schema"),
            (b"{not json", "not JSON"),
        ] {
            let err = schema_error("meta", text);
            assert!(
                err.starts_with("workflow a: schema \"meta\": s3://s/k: "),
                "{err}"
            );
            assert!(err.contains(expected), "{expected}: {err}");
        }
        for (id, expected) in [
            ("local", "cannot be used on a registry in S3"),
            ("relative", "not an s3:// URL"),
            ("missing", "has no such id"),
        ] {
            let err = cfg.schema_location("a", id).unwrap_err().to_string();
            assert!(err.contains(expected), "{id}: {err}");
        }
    }
}
