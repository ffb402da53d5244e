//! The command line: clap definitions and the mapping from arguments (or a `--request` file)
//! to a [`PackageRequest`], [`EngineOptions`] and [`S3Settings`].

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use s3quilt_core::aws::ExecutionInput;
use s3quilt_core::engine::EngineOptions;
use s3quilt_core::quilt::HashType;
use s3quilt_core::request::{MAX_METADATA_DEPTH, ObjectMetadata, PackageRequest, workflow_field};
use s3quilt_core::storage::S3Settings;
use serde::Deserialize;

/// Exit codes, shown at the end of `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure (S3 unreachable or failing after retries, unexpected S3 error, internal error)
  2  bad input: invalid arguments or request, nothing selected, or objects that cannot be packaged
  3  access: the source cannot be read or the registry/target cannot be written (denied, no such bucket, no AWS credentials)
  4  the run failed while copying or finalizing and was rolled back

With --json, stdout holds exactly one JSON document: the outcome, or {\"error\": {\"kind\", \"message\"}}.
Logs go to stderr (RUST_LOG sets the level; default: warn).";

/// The usage lines of `create` and `plan`: the arguments, or a request file.
fn usage(command: &str) -> String {
    format!(
        "s3quilt {command} [OPTIONS] <s3://BUCKET/PREFIX> <NAMESPACE/NAME> --registry <s3://BUCKET>\n       s3quilt {command} [OPTIONS] --request <FILE>"
    )
}

/// Turn what sits in S3 into Quilt data packages, with server-side copies.
#[derive(Debug, Parser)]
#[command(name = "s3quilt", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Package s3://BUCKET/PREFIX as NAMESPACE/NAME in a registry (copies objects server-side).
    #[command(after_help = EXIT_CODES, override_usage = usage("create"))]
    Create(PackageArgs),
    /// Dry run of `create`: list and select, print counts, bytes, shards, sample logical keys and
    /// estimated S3 requests; writes nothing.
    #[command(after_help = EXIT_CODES, override_usage = usage("plan"))]
    Plan(PackageArgs),
    /// Start an embedded S3 server on 127.0.0.1, seed a sample dataset and package it.
    #[command(after_help = EXIT_CODES)]
    Demo(DemoArgs),
    /// Serve the Model Context Protocol on stdin/stdout (for Claude Desktop, Claude Code and
    /// other agents): package creation, progress and status, bucket and package browsing.
    Mcp(crate::mcp::McpArgs),
    /// Benchmark on a local moto server behind a latency proxy: the S3 floor (bare CopyObject
    /// requests), s3quilt end to end, and quilt3 `set_dir` + `push`, on the same data.
    Bench(crate::bench::BenchArgs),
    /// Runs left in a registry's staging area (a process that was killed, a run that could not
    /// clean up): list them, finish a committed one, roll back one that is not.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// The demo's embedded S3 server alone, until SIGINT/SIGTERM (for the test harness, which
    /// runs every S3 suite on it as on its other servers).
    #[command(hide = true)]
    DemoServer(DemoServerArgs),
}

/// `runs` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum RunsCommand {
    /// List the runs in the registry's staging area, oldest first, with their state.
    List(RunsArgs),
    /// Finish a committed run: write its manifest and pointers where missing.
    Resume(RunArgs),
    /// Roll back a run that is not committed: delete exactly the object versions it created
    /// and its staging area.
    Abort(RunArgs),
    /// What the finalizer Lambda does: publish a run whose every shard has its fragment
    /// (`s3quilt bench --finalizer` measures it as a process of its own).
    #[command(hide = true)]
    Finalize(RunArgs),
}

impl RunsCommand {
    /// The shared arguments.
    pub fn args(&self) -> &RunsArgs {
        match self {
            RunsCommand::List(a) => a,
            RunsCommand::Resume(a) | RunsCommand::Abort(a) | RunsCommand::Finalize(a) => {
                &a.registry
            }
        }
    }
}

/// Where the runs are.
#[derive(Debug, Clone, Args)]
pub struct RunsArgs {
    /// Registry bucket: s3://BUCKET.
    #[arg(long, value_name = "s3://BUCKET")]
    pub registry: String,
    /// Connection.
    #[command(flatten)]
    pub s3: S3Args,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The run id (as `s3quilt runs list` or an error message shows it).
    #[arg(value_name = "RUN_ID")]
    pub run_id: String,
    /// Where the run is.
    #[command(flatten)]
    pub registry: RunsArgs,
}

/// `--hash-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HashTypeArg {
    /// SHA-256 of 8 MiB+ chunk digests (quilt3's default).
    #[value(name = "sha2-256-chunked")]
    Sha2_256Chunked,
    /// Full-object CRC-64/NVME.
    #[value(name = "CRC64NVME")]
    Crc64Nvme,
}

impl From<HashTypeArg> for HashType {
    fn from(value: HashTypeArg) -> Self {
        match value {
            HashTypeArg::Sha2_256Chunked => HashType::Sha2_256Chunked,
            HashTypeArg::Crc64Nvme => HashType::Crc64Nvme,
        }
    }
}

/// `--object-metadata` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectMetadataArg {
    /// Version, ETag, last-modified, storage class, content type and user metadata
    /// (x-amz-meta-*), read by a HEAD beside each copy.
    Full,
    /// Only what the listing and the copy return (no content type, no user metadata): one S3
    /// request per copied object instead of two. The copies themselves keep both.
    Listing,
}

impl From<ObjectMetadataArg> for ObjectMetadata {
    fn from(value: ObjectMetadataArg) -> Self {
        match value {
            ObjectMetadataArg::Full => ObjectMetadata::Full,
            ObjectMetadataArg::Listing => ObjectMetadata::Listing,
        }
    }
}

/// The flags that set request fields: `--request` takes the whole request instead.
const REQUEST_FIELD_ARGS: [&str; 19] = [
    "source",
    "package",
    "registry",
    "target_bucket",
    "include",
    "exclude",
    "flatten",
    "message",
    "meta",
    "no_copy",
    "hash_type",
    "overwrite_existing",
    "object_metadata",
    "full",
    "base",
    "verify_base",
    "publish_unchanged",
    "workflow",
    "no_workflow",
];

fn default_concurrency() -> u16 {
    u16::try_from(EngineOptions::default().concurrency).unwrap_or(u16::MAX)
}

/// Arguments shared by `create` and `plan`.
#[derive(Debug, Clone, Args)]
pub struct PackageArgs {
    /// Source: s3://BUCKET or s3://BUCKET/PREFIX (a folder).
    #[arg(value_name = "s3://BUCKET/PREFIX", required_unless_present = "request")]
    pub source: Option<String>,
    /// Package name, NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME", required_unless_present = "request")]
    pub package: Option<String>,
    /// Registry bucket the package is written to (s3://BUCKET).
    #[arg(long, value_name = "s3://BUCKET", required_unless_present = "request")]
    pub registry: Option<String>,
    /// Bucket receiving the copies (default: the registry bucket).
    #[arg(long, value_name = "BUCKET")]
    pub target_bucket: Option<String>,
    /// Only keys (relative to the prefix) matching this glob; repeatable. Gitignore-like: `*.csv`
    /// matches at any depth, `raw/2024` is a folder from the top; `*` stays within a folder, `**`
    /// crosses folders.
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out keys matching this glob; repeatable; wins over --include.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Drop folders: logical keys are the base names.
    #[arg(long)]
    pub flatten: bool,
    /// The package message.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Package metadata, a JSON object such as '{"project": "x"}'.
    #[arg(long, value_name = "JSON")]
    pub meta: Option<String>,
    /// Reference objects where they are instead of copying them.
    #[arg(long)]
    pub no_copy: bool,
    /// Entry hash type.
    #[arg(long, value_enum, value_name = "TYPE")]
    pub hash_type: Option<HashTypeArg>,
    /// On an unversioned target bucket, allow replacing keys that already exist.
    #[arg(long)]
    pub overwrite_existing: bool,
    /// What entries' meta.s3 record about each source object: `full` (default), or `listing`,
    /// which leaves out content type and user metadata and halves the S3 requests per copied
    /// object (one instead of two).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub object_metadata: Option<ObjectMetadataArg>,
    /// Package everything again. By default a run starts from the package's latest version:
    /// objects unchanged since it keep their entries without a request, only new and changed
    /// objects are copied, and nothing changed means no new version.
    #[arg(long, conflicts_with_all = ["base", "verify_base"])]
    pub full: bool,
    /// Start from this version (a top hash) instead of the package's latest.
    #[arg(long, value_name = "TOP_HASH")]
    pub base: Option<String>,
    /// Check (one HEAD each) that the objects of reused entries still exist; those gone are
    /// copied again from the source.
    #[arg(long)]
    pub verify_base: bool,
    /// Write a new version even when nothing changed since the base.
    #[arg(long)]
    pub publish_unchanged: bool,
    /// The registry workflow to push with, when the registry has a workflows config
    /// (`.quilt/workflows/config.yml`): default its `default_workflow`.
    #[arg(long, value_name = "NAME")]
    pub workflow: Option<String>,
    /// Push with no workflow (quilt3's `workflow=None`), which a workflows config allows with
    /// `is_workflow_required: false`.
    #[arg(long, conflicts_with = "workflow")]
    pub no_workflow: bool,
    /// Take the whole request from a JSON file (`-`: stdin) instead of the arguments above: the
    /// Step Functions execution input, as a schedule starts it (the bare request, or
    /// {"request": {...}, "max_concurrency": N}, whose max_concurrency is the Map's and not used
    /// here). `plan` always makes it a dry run.
    #[arg(long, value_name = "FILE", conflicts_with_all = REQUEST_FIELD_ARGS)]
    pub request: Option<PathBuf>,
    /// S3 requests in flight at once (a copy and the HEAD beside it are two).
    #[arg(long, value_name = "N", default_value_t = default_concurrency(), value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    #[command(flatten)]
    pub s3: S3Args,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Connection flags (each falls back to the usual AWS environment variables).
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, or AWS).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: $AWS_REGION or the profile's).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Named AWS profile (default: $AWS_PROFILE).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
}

/// `demo` arguments.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the temporary directory holding the demo buckets (printed at the end).
    #[arg(long)]
    pub keep: bool,
    /// After packaging, keep the S3 server running until Ctrl-C so quilt3 can browse it.
    #[arg(long)]
    pub serve: bool,
    /// Print one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `demo-server` options.
#[derive(Debug, Clone, Args)]
pub struct DemoServerArgs {
    /// Directory served: each sub-directory is a bucket (created if missing).
    #[arg(long, value_name = "DIR")]
    pub root: std::path::PathBuf,
    /// Port on 127.0.0.1 (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// An argument with a value the program cannot use; names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{arg}: {problem}")]
pub struct ArgError {
    /// The argument, as spelt on the command line.
    pub arg: &'static str,
    /// What is wrong and what is expected.
    pub problem: String,
}

/// Splits `s3://BUCKET[/PREFIX]` into bucket and prefix (bucket checks are the request's).
pub fn parse_s3_url(arg: &'static str, url: &str) -> Result<(String, String), ArgError> {
    let error = |problem: String| ArgError { arg, problem };
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(error(format!(
            "{url:?} is not an S3 URL; expected s3://BUCKET or s3://BUCKET/PREFIX"
        )));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(error(format!(
            "{url:?} has no bucket; expected s3://BUCKET or s3://BUCKET/PREFIX"
        )));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Parses `--meta`: a JSON object.
pub fn parse_meta(text: &str) -> Result<serde_json::Value, ArgError> {
    let error = |problem: String| ArgError {
        arg: "--meta",
        problem,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let depth = s3quilt_core::request::json_text_depth(text.as_bytes());
        if depth > MAX_METADATA_DEPTH {
            return error(format!(
                "nests {depth} levels deep; at most {MAX_METADATA_DEPTH} levels are allowed"
            ));
        }
        error(format!(
            "is not valid JSON ({e}); expected an object such as '{{\"project\": \"x\"}}'"
        ))
    })?;
    if !value.is_object() {
        return Err(error(format!(
            "must be a JSON object such as '{{\"project\": \"x\"}}', got {text:?}"
        )));
    }
    Ok(value)
}

/// The Step Functions execution input's wrapped form (see `s3quilt_core::aws::ExecutionInput`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedRequest {
    request: PackageRequest,
    #[serde(default)]
    max_concurrency: Option<u32>,
}

/// Parses a `--request` document, `name` being where it came from (for messages): the bare
/// request or the wrapped execution input, exactly as the state machine takes them. Errors
/// name the field (`request.copy: invalid type: ...`, `target_registry: ...`).
pub fn parse_request_json(
    name: &str,
    text: &str,
    dry_run: bool,
) -> Result<PackageRequest, ArgError> {
    let error = |problem: String| ArgError {
        arg: "--request",
        problem: format!("{name}: {problem}"),
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        error(format!(
            "is not valid JSON ({e}); expected a packaging request such as {{\"source_bucket\": \"b\", \"package_name\": \"team/pkg\", \"target_registry\": \"s3://reg\"}}"
        ))
    })?;
    let Some(object) = value.as_object() else {
        return Err(error(
            "must be a JSON object: the request, or {\"request\": {...}, \"max_concurrency\": N}"
                .into(),
        ));
    };
    let wrapped = object.contains_key("request");
    let typed = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        error(format!("{at}{}", e.inner()))
    };
    let mut request = if wrapped {
        let input: WrappedRequest = serde_path_to_error::deserialize(value).map_err(typed)?;
        let input = ExecutionInput {
            request: input.request,
            max_concurrency: input.max_concurrency,
        };
        // The Map's setting, with no meaning here; checked as the planner checks it.
        input
            .effective_max_concurrency()
            .map_err(|e| error(e.message))?;
        input.request
    } else {
        serde_path_to_error::deserialize::<_, PackageRequest>(value).map_err(typed)?
    };
    if dry_run {
        request.dry_run = true;
    }
    request.validate().map_err(|e| {
        error(if wrapped {
            format!("request.{e}")
        } else {
            e.to_string()
        })
    })?;
    Ok(request)
}

/// Reads a `--request` file (`-`: stdin).
fn read_request_file(path: &Path) -> Result<(String, String), ArgError> {
    let error = |name: &str, e: std::io::Error| ArgError {
        arg: "--request",
        problem: format!("cannot read {name}: {e}"),
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| error("stdin", e))?;
        Ok(("stdin".into(), text))
    } else {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| error(&name, e))?;
        Ok((name, text))
    }
}

impl PackageArgs {
    /// The request these arguments describe, or the `--request` file holds (`dry_run` for
    /// `plan`).
    pub fn to_request(&self, dry_run: bool) -> Result<PackageRequest, ArgError> {
        if let Some(path) = &self.request {
            let (name, text) = read_request_file(path)?;
            return parse_request_json(&name, &text, dry_run);
        }
        let missing = |arg: &'static str| ArgError {
            arg,
            problem: "is required (or give --request FILE)".into(),
        };
        let source = self
            .source
            .as_deref()
            .ok_or_else(|| missing("s3://BUCKET/PREFIX"))?;
        let package = self
            .package
            .as_deref()
            .ok_or_else(|| missing("NAMESPACE/NAME"))?;
        let registry = self
            .registry
            .as_deref()
            .ok_or_else(|| missing("--registry"))?;
        let (bucket, prefix) = parse_s3_url("s3://BUCKET/PREFIX", source)?;
        let mut request = PackageRequest::new(&bucket, &prefix, package, registry);
        request.target_bucket = self.target_bucket.clone();
        request.description = self.message.clone();
        request.include_patterns = self.include.clone();
        request.exclude_patterns = self.exclude.clone();
        request.preserve_structure = !self.flatten;
        request.metadata = self.meta.as_deref().map(parse_meta).transpose()?;
        request.copy = !self.no_copy;
        request.dry_run = dry_run;
        request.hash_type = self.hash_type.map(HashType::from);
        request.overwrite_existing = self.overwrite_existing;
        request.object_metadata = self.object_metadata.map(Into::into).unwrap_or_default();
        request.incremental = !self.full;
        request.base = self.base.clone();
        request.verify_base = self.verify_base;
        request.publish_unchanged = self.publish_unchanged;
        request.workflow =
            workflow_field(self.workflow.clone(), self.no_workflow).map_err(|e| ArgError {
                arg: "--workflow",
                problem: e.to_string(),
            })?;
        Ok(request)
    }

    /// Engine settings from these arguments.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            concurrency: usize::from(self.concurrency),
            ..EngineOptions::default()
        }
    }
}

impl S3Args {
    /// Connection settings: the environment's, overridden by flags.
    pub fn settings(&self, from_env: S3Settings) -> S3Settings {
        let mut settings = from_env;
        settings.endpoint_url = self.endpoint_url.clone().or(settings.endpoint_url);
        settings.region = self.region.clone().or(settings.region);
        settings.profile = self.profile.clone().or(settings.profile);
        settings
    }
}

/// The command-line flag that sets a request field, for error messages.
pub fn flag_for_field(field: &str) -> Option<&'static str> {
    Some(match field {
        "source_bucket" | "source_prefix" => "s3://BUCKET/PREFIX",
        "package_name" => "NAMESPACE/NAME",
        "target_registry" => "--registry",
        "target_bucket" => "--target-bucket",
        "description" => "--message",
        "include_patterns" => "--include",
        "exclude_patterns" => "--exclude",
        "metadata" => "--meta",
        "hash_type" => "--hash-type",
        "overwrite_existing" => "--overwrite-existing",
        "object_metadata" => "--object-metadata",
        "incremental" => "--full",
        "base" => "--base",
        "verify_base" => "--verify-base",
        "publish_unchanged" => "--publish-unchanged",
        "workflow" => "--workflow (or --no-workflow)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("s3quilt").chain(args.iter().copied())).unwrap()
    }

    fn package_args(args: &[&str]) -> PackageArgs {
        match parse(args).command {
            Command::Create(a) | Command::Plan(a) => a,
            Command::Demo(_)
            | Command::Mcp(_)
            | Command::Bench(_)
            | Command::Runs(_)
            | Command::DemoServer(_) => panic!("not a package command"),
        }
    }

    #[test]
    fn s3_urls() {
        let ok = |url: &str| parse_s3_url("SRC", url).unwrap();
        assert_eq!(ok("s3://bucket"), ("bucket".into(), "".into()));
        assert_eq!(ok("s3://bucket/"), ("bucket".into(), "".into()));
        assert_eq!(
            ok("s3://bucket/data/2024"),
            ("bucket".into(), "data/2024".into())
        );
        assert_eq!(ok("s3://bucket/a b/é/"), ("bucket".into(), "a b/é/".into()));
        for bad in [
            "bucket/data",
            "s3:/bucket",
            "https://bucket/x",
            "s3://",
            "s3:///data",
            "",
        ] {
            let err = parse_s3_url("SRC", bad).unwrap_err();
            assert_eq!(err.arg, "SRC");
            assert!(err.to_string().starts_with("SRC: "), "{err}");
        }
    }

    #[test]
    fn defaults_map_to_a_default_request() {
        let args = package_args(&[
            "create",
            "s3://src/data",
            "team/pkg",
            "--registry",
            "s3://reg",
        ]);
        let request = args.to_request(false).unwrap();
        assert_eq!(
            request,
            PackageRequest::new("src", "data", "team/pkg", "s3://reg")
        );
        assert_eq!(
            args.engine_options().concurrency,
            EngineOptions::default().concurrency
        );
        assert!(!args.json);
    }

    #[test]
    fn every_flag_maps_to_its_field() {
        let args = package_args(&[
            "plan",
            "s3://src/data/2024/",
            "team/pkg",
            "--registry",
            "reg",
            "--target-bucket",
            "copies",
            "--include",
            "**/*.csv",
            "--include",
            "*.json",
            "--exclude",
            "tmp/**",
            "--flatten",
            "--message",
            "first version",
            "--meta",
            r#"{"project": "x", "n": 1}"#,
            "--hash-type",
            "CRC64NVME",
            "--overwrite-existing",
            "--object-metadata",
            "listing",
            "--base",
            &"ab".repeat(32),
            "--verify-base",
            "--publish-unchanged",
            "--concurrency",
            "8",
            "--endpoint-url",
            "http://127.0.0.1:5055",
            "--region",
            "eu-west-1",
            "--profile",
            "dev",
            "--json",
        ]);
        let request = args.to_request(true).unwrap();
        let mut expected = PackageRequest::new("src", "data/2024/", "team/pkg", "reg");
        expected.target_bucket = Some("copies".into());
        expected.description = Some("first version".into());
        expected.include_patterns = vec!["**/*.csv".into(), "*.json".into()];
        expected.exclude_patterns = vec!["tmp/**".into()];
        expected.preserve_structure = false;
        expected.metadata = Some(serde_json::json!({"project": "x", "n": 1}));
        expected.dry_run = true;
        expected.hash_type = Some(HashType::Crc64Nvme);
        expected.overwrite_existing = true;
        expected.object_metadata = ObjectMetadata::Listing;
        expected.base = Some("ab".repeat(32));
        expected.verify_base = true;
        expected.publish_unchanged = true;
        assert_eq!(request, expected);
        assert_eq!(args.engine_options().concurrency, 8);
        assert!(args.json);
        let settings = args.s3.settings(S3Settings {
            force_path_style: Some(true),
            ..S3Settings::default()
        });
        assert_eq!(
            settings.endpoint_url.as_deref(),
            Some("http://127.0.0.1:5055")
        );
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.profile.as_deref(), Some("dev"));
        assert_eq!(settings.force_path_style, Some(true));

        let no_copy = package_args(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "reg",
            "--no-copy",
        ]);
        assert!(!no_copy.to_request(false).unwrap().copy);
        let chunked = package_args(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "reg",
            "--hash-type",
            "sha2-256-chunked",
        ]);
        assert_eq!(
            chunked.to_request(false).unwrap().hash_type,
            Some(HashType::Sha2_256Chunked)
        );
        let full = package_args(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "reg",
            "--object-metadata",
            "full",
        ]);
        assert_eq!(
            full.to_request(false).unwrap().object_metadata,
            ObjectMetadata::Full
        );
    }

    /// A request file with every field set, as the state machine takes it.
    const REQUEST_FILE: &str = r#"{
        "source_bucket": "src", "source_prefix": "data/2024/", "package_name": "team/pkg",
        "target_registry": "s3://reg", "target_bucket": "copies", "description": "nightly",
        "include_patterns": ["**/*.csv"], "exclude_patterns": ["tmp/**"],
        "preserve_structure": false, "metadata": {"project": "x"}, "copy": true,
        "dry_run": false, "hash_type": "CRC64NVME", "overwrite_existing": true,
        "object_metadata": "listing"
    }"#;

    fn request_file_expected() -> PackageRequest {
        let mut expected = PackageRequest::new("src", "data/2024/", "team/pkg", "s3://reg");
        expected.target_bucket = Some("copies".into());
        expected.description = Some("nightly".into());
        expected.include_patterns = vec!["**/*.csv".into()];
        expected.exclude_patterns = vec!["tmp/**".into()];
        expected.preserve_structure = false;
        expected.metadata = Some(serde_json::json!({"project": "x"}));
        expected.hash_type = Some(HashType::Crc64Nvme);
        expected.overwrite_existing = true;
        expected.object_metadata = ObjectMetadata::Listing;
        expected
    }

    #[test]
    fn a_request_file_maps_field_for_field_and_plan_forces_a_dry_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request.json");
        std::fs::write(&path, REQUEST_FILE).unwrap();
        let path = path.to_str().unwrap();
        let args = package_args(&[
            "create",
            "--request",
            path,
            "--concurrency",
            "4",
            "--endpoint-url",
            "http://127.0.0.1:5055",
            "--region",
            "eu-west-1",
            "--profile",
            "dev",
            "--json",
        ]);
        assert_eq!(args.to_request(false).unwrap(), request_file_expected());
        let mut dry = request_file_expected();
        dry.dry_run = true;
        assert_eq!(args.to_request(true).unwrap(), dry, "plan --request");
        // Engine and connection flags still apply.
        assert_eq!(args.engine_options().concurrency, 4);
        assert!(args.json);
        let settings = args.s3.settings(S3Settings::default());
        assert_eq!(
            settings.endpoint_url.as_deref(),
            Some("http://127.0.0.1:5055")
        );
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.profile.as_deref(), Some("dev"));

        // The wrapped execution input is accepted too; its max_concurrency is the Map's.
        let wrapped = format!(r#"{{"request": {REQUEST_FILE}, "max_concurrency": 16}}"#);
        assert_eq!(
            parse_request_json("w.json", &wrapped, false).unwrap(),
            request_file_expected()
        );
        // A file asking for a dry run stays one with `create`.
        let dry_file = r#"{"source_bucket": "src", "package_name": "a/b",
            "target_registry": "reg", "dry_run": true}"#;
        assert!(
            parse_request_json("d.json", dry_file, false)
                .unwrap()
                .dry_run
        );
    }

    #[test]
    fn a_bad_request_file_names_the_field() {
        let base = r#""source_bucket": "src", "package_name": "a/b", "target_registry": "reg""#;
        let cases = [
            (format!(r#"{{{base}, "copy": "yes"}}"#), "copy: invalid type"),
            (format!(r#"{{{base}, "flaten": true}}"#), "unknown field `flaten`"),
            (
                format!(r#"{{{base}, "object_metadata": "some"}}"#),
                "object_metadata: unknown variant `some`",
            ),
            (
                r#"{"source_bucket": "src", "package_name": "a/b", "target_registry": "Not_A_Bucket"}"#
                    .to_string(),
                "target_registry: \"Not_A_Bucket\"",
            ),
            (
                format!(r#"{{{base}, "include_patterns": ["[oops"]}}"#),
                "include_patterns",
            ),
            (
                r#"{"source_bucket": "src", "target_registry": "reg"}"#.to_string(),
                "missing field `package_name`",
            ),
            (
                format!(r#"{{"request": {{{base}, "copy": 1}}}}"#),
                "request.copy: invalid type",
            ),
            (
                r#"{"request": {"source_bucket": "src", "package_name": "a", "target_registry": "reg"}}"#
                    .to_string(),
                "request.package_name: ",
            ),
            (
                format!(r#"{{"request": {{{base}}}, "max_concurrency": 0}}"#),
                "max_concurrency: 0 is not allowed",
            ),
            (
                format!(r#"{{"request": {{{base}}}, "concurrency": 3}}"#),
                "unknown field `concurrency`",
            ),
            ("{not json".to_string(), "is not valid JSON"),
            ("[\"src\"]".to_string(), "must be a JSON object"),
        ];
        for (text, needle) in cases {
            let err = parse_request_json("r.json", &text, true).unwrap_err();
            assert_eq!(err.arg, "--request");
            let message = err.to_string();
            assert!(
                message.starts_with("--request: r.json: ") && message.contains(needle),
                "{needle} in {message}"
            );
        }
        let missing = package_args(&["plan", "--request", "/nonexistent/request.json"]);
        let err = missing.to_request(true).unwrap_err().to_string();
        assert!(
            err.starts_with("--request: cannot read /nonexistent/request.json"),
            "{err}"
        );
    }

    #[test]
    fn flags_fall_back_to_the_environment() {
        let from_env = S3Settings {
            endpoint_url: Some("http://env".into()),
            region: Some("us-east-2".into()),
            profile: Some("envprofile".into()),
            ..S3Settings::default()
        };
        let settings = S3Args::default().settings(from_env);
        assert_eq!(settings.endpoint_url.as_deref(), Some("http://env"));
        assert_eq!(settings.region.as_deref(), Some("us-east-2"));
        assert_eq!(settings.profile.as_deref(), Some("envprofile"));
    }

    #[test]
    fn bad_source_and_meta_name_their_argument() {
        let bad_url = package_args(&["create", "src/data", "a/b", "--registry", "reg"]);
        assert_eq!(
            bad_url.to_request(false).unwrap_err().arg,
            "s3://BUCKET/PREFIX"
        );
        for meta in ["{not json", "[1, 2]", "\"text\""] {
            let args = package_args(&[
                "create",
                "s3://src",
                "a/b",
                "--registry",
                "reg",
                "--meta",
                meta,
            ]);
            let err = args.to_request(false).unwrap_err();
            assert_eq!(err.arg, "--meta", "{err}");
            assert!(err.to_string().starts_with("--meta: "), "{err}");
        }
        let deep = format!("{}{}", "{\"k\": ".repeat(500), "}".repeat(500));
        let err = parse_meta(&deep).unwrap_err().to_string();
        assert_eq!(
            err,
            "--meta: nests 500 levels deep; at most 64 levels are allowed"
        );
    }

    #[test]
    fn clap_refuses_bad_values() {
        let refused = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("s3quilt").chain(args.iter().copied())).is_err()
        };
        assert!(
            refused(&["create", "s3://src", "a/b"]),
            "--registry is required"
        );
        assert!(refused(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "r",
            "--concurrency",
            "0"
        ]));
        assert!(refused(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "r",
            "--hash-type",
            "SHA256"
        ]));
        assert!(!refused(&["demo", "--keep", "--json"]));
        assert!(refused(&[
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "r",
            "--object-metadata",
            "none"
        ]));
        // --request replaces the source, package, registry and every request-field flag.
        assert!(!refused(&["plan", "--request", "r.json"]));
        assert!(!refused(&[
            "create",
            "--request",
            "-",
            "--concurrency",
            "4",
            "--json",
            "--endpoint-url",
            "http://x",
            "--region",
            "r",
            "--profile",
            "p"
        ]));
        assert!(refused(&["create", "--request", "r.json", "s3://src"]));
        assert!(refused(&[
            "create",
            "--request",
            "r.json",
            "s3://src",
            "a/b",
            "--registry",
            "r"
        ]));
        for flag in [
            &["--registry", "r"][..],
            &["--target-bucket", "t"],
            &["--include", "*.csv"],
            &["--exclude", "x"],
            &["--flatten"],
            &["--message", "m"],
            &["--meta", "{}"],
            &["--no-copy"],
            &["--hash-type", "CRC64NVME"],
            &["--overwrite-existing"],
            &["--object-metadata", "listing"],
            &["--full"],
            &["--base", "h"],
            &["--verify-base"],
            &["--publish-unchanged"],
        ] {
            let mut args = vec!["plan", "--request", "r.json"];
            args.extend_from_slice(flag);
            assert!(refused(&args), "{flag:?} conflicts with --request");
        }
        assert!(
            refused(&["plan", "s3://src", "--registry", "r"]),
            "no package"
        );
        assert!(refused(&["plan"]), "neither arguments nor --request");
    }

    #[test]
    fn full_turns_incremental_off_and_excludes_a_base() {
        let args = package_args(&["create", "s3://src", "a/b", "--registry", "r"]);
        assert!(args.to_request(false).unwrap().incremental);
        let args = package_args(&["create", "s3://src", "a/b", "--registry", "r", "--full"]);
        assert!(!args.to_request(false).unwrap().incremental);
        let refused = Cli::try_parse_from([
            "s3quilt",
            "create",
            "s3://src",
            "a/b",
            "--registry",
            "r",
            "--full",
            "--base",
            "h",
        ]);
        assert!(refused.is_err());
    }

    #[test]
    fn request_fields_have_flags() {
        for field in [
            "source_bucket",
            "package_name",
            "target_registry",
            "target_bucket",
            "metadata",
            "include_patterns",
            "object_metadata",
        ] {
            assert!(flag_for_field(field).is_some(), "{field}");
        }
        assert_eq!(flag_for_field("nope"), None);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
