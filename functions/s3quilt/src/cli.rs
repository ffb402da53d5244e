//! The command line: clap definitions and the pure mapping from arguments to a
//! [`PackageRequest`], [`EngineOptions`] and [`S3Settings`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use s3quilt_core::engine::EngineOptions;
use s3quilt_core::quilt::HashType;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::S3Settings;

/// Exit codes, shown at the end of `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure (S3 unreachable or failing after retries, unexpected S3 error, internal error)
  2  bad input: invalid arguments or request, nothing selected, or objects that cannot be packaged
  3  access: the source cannot be read or the registry/target cannot be written (denied, no such bucket)
  4  the run failed while copying or finalizing and was rolled back

With --json, stdout holds exactly one JSON document: the outcome, or {\"error\": {\"kind\", \"message\"}}.
Logs go to stderr (RUST_LOG sets the level; default: warn).";

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
    #[command(after_help = EXIT_CODES)]
    Create(PackageArgs),
    /// Dry run of `create`: list and select, print counts, bytes, shards, sample logical keys and
    /// estimated S3 requests; writes nothing.
    #[command(after_help = EXIT_CODES)]
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

fn default_concurrency() -> u16 {
    u16::try_from(EngineOptions::default().concurrency).unwrap_or(u16::MAX)
}

/// Arguments shared by `create` and `plan`.
#[derive(Debug, Clone, Args)]
pub struct PackageArgs {
    /// Source: s3://BUCKET or s3://BUCKET/PREFIX (a folder).
    #[arg(value_name = "s3://BUCKET/PREFIX")]
    pub source: String,
    /// Package name, NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    pub package: String,
    /// Registry bucket the package is written to (s3://BUCKET).
    #[arg(long, value_name = "s3://BUCKET")]
    pub registry: String,
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
    /// Objects copied at once.
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

impl PackageArgs {
    /// The request these arguments describe (`dry_run` for `plan`).
    pub fn to_request(&self, dry_run: bool) -> Result<PackageRequest, ArgError> {
        let (bucket, prefix) = parse_s3_url("s3://BUCKET/PREFIX", &self.source)?;
        let mut request = PackageRequest::new(&bucket, &prefix, &self.package, &self.registry);
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
            Command::Demo(_) | Command::Mcp(_) | Command::Bench(_) => {
                panic!("not a package command")
            }
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
