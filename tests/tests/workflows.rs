//! Registry workflows (`.quilt/workflows/config.yml`) on moto, with quilt3 8.0.0 given the same
//! requests on the same registry: every refusal names the rule and writes nothing, where quilt3
//! refuses too; an accepted push has quilt3's header bytes (a quilt3-pushed twin has the same
//! first line) and top hash; a registry without a config gets no `workflow` key. And a version
//! whose top hash an earlier version already had (item 6): its manifest stands.

use std::sync::Arc;

use s3quilt_core::engine::{EngineError, EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::finalize::PackageResult;
use s3quilt_core::plan::PlanError;
use s3quilt_core::registry::Registry;
use s3quilt_core::registry::workflow::{CONFIG_KEY, WorkflowError};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::{ObjectStore, S3Store};
use s3quilt_tests::{
    S3Server, SeedObject, list_all_versions, manifest_header, run_oracle, run_oracle_output, seed,
    server_tests,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn config(registry: &str) -> String {
    format!(
        "version: \"1.1\"\ndefault_workflow: strict\nworkflows:\n  strict:\n    name: Strict\n    is_message_required: true\n    handle_pattern: ^team/\n    metadata_schema: meta\n    entries_schema: files\n  loose:\n    name: Loose\nschemas:\n  meta:\n    url: s3://{registry}/schemas/meta.json\n  files:\n    url: s3://{registry}/schemas/files.json\n"
    )
}

const META_SCHEMA: &str = r#"{"type": "object", "required": ["project"]}"#;
const FILES_SCHEMA: &str =
    r#"{"type": "array", "items": {"properties": {"logical_key": {"pattern": "\\.csv$"}}}}"#;

struct Setup {
    server: &'static S3Server,
    client: aws_sdk_s3::Client,
    store: Arc<dyn ObjectStore>,
    source: String,
    registry: String,
    /// Version ids of the config, the metadata schema and the entries schema.
    versions: Vec<Option<String>>,
}

/// A source with two CSV files and a text file, and a versioned registry with the workflows
/// config (unless `with_config` is false).
async fn setup(server: &'static S3Server, with_config: bool) -> Setup {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = server.versioned_bucket_where_supported().await;
    seed(
        &client,
        &source,
        &[
            SeedObject::new("data/a.csv", b"x,y\n1,2\n".to_vec()),
            SeedObject::new("data/b.csv", b"x,y\n3,4\n".to_vec()),
            SeedObject::new("data/notes.txt", b"notes".to_vec()),
        ],
    )
    .await;
    let versions = if with_config {
        seed(
            &client,
            &registry,
            &[
                SeedObject::new(CONFIG_KEY, config(&registry).into_bytes()),
                SeedObject::new("schemas/meta.json", META_SCHEMA.as_bytes().to_vec()),
                SeedObject::new("schemas/files.json", FILES_SCHEMA.as_bytes().to_vec()),
            ],
        )
        .await
    } else {
        Vec::new()
    };
    Setup {
        server,
        store: S3Store::shared(server.client().await),
        client,
        source,
        registry,
        versions,
    }
}

impl Setup {
    /// The CSV files as `name`, with the message and metadata the strict workflow wants.
    fn request(&self, name: &str) -> PackageRequest {
        let mut request = PackageRequest::new(&self.source, "data", name, &self.registry);
        request.include_patterns = vec!["*.csv".into()];
        request.description = Some("v1".into());
        request.metadata = Some(json!({"project": "x"}));
        request
    }

    async fn run(&self, request: &PackageRequest) -> Result<RunOutcome, EngineError> {
        run_local(
            self.store.clone(),
            request,
            &EngineOptions::default(),
            Progress::new(),
        )
        .await
    }

    async fn created(&self, request: &PackageRequest) -> PackageResult {
        match self.run(request).await.unwrap() {
            RunOutcome::Created { package, .. } => package,
            RunOutcome::Planned(plan) | RunOutcome::UpToDate(plan) => {
                panic!("expected a package, got {plan:?}")
            }
        }
    }

    async fn refused(&self, request: &PackageRequest) -> WorkflowError {
        match self.run(request).await {
            Err(EngineError::Plan(PlanError::Workflow(e))) => e,
            Err(other) => panic!("expected a workflow refusal, got {other}"),
            Ok(_) => panic!("expected a workflow refusal, the run succeeded"),
        }
    }

    /// quilt3 pushing the CSV files (or every file) as `name` with `args` added.
    fn quilt3_push(&self, name: &str, all_files: bool, args: &[&str]) -> Result<Value, String> {
        let files: &[&str] = if all_files {
            &["a.csv", "b.csv", "notes.txt"]
        } else {
            &["a.csv", "b.csv"]
        };
        let spec: Vec<Value> = files
            .iter()
            .map(|f| json!({"logical_key": f, "source": format!("s3://{}/data/{f}", self.source)}))
            .collect();
        let spec_file = std::env::temp_dir().join(format!(
            "s3quilt-workflow-spec-{}-{}-{}.json",
            std::process::id(),
            self.registry,
            name.replace('/', "_")
        ));
        std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
        let registry = format!("s3://{}", self.registry);
        let mut all = vec![
            "push",
            "--registry",
            &registry,
            "--name",
            name,
            "--spec",
            spec_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = run_oracle_output(self.server, &all);
        std::fs::remove_file(&spec_file).ok();
        match (out.success(), out.json) {
            (true, Some(v)) => Ok(v),
            (_, v) => Err(v.map(|v| v.to_string()).unwrap_or(out.stderr)),
        }
    }

    /// Every key in the registry bucket (all versions).
    async fn registry_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = list_all_versions(&self.client, &self.registry)
            .await
            .into_iter()
            .map(|v| v.0)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

async fn refusals_name_the_rule_write_nothing_and_quilt3_refuses_the_same(
    server: &'static S3Server,
) {
    let s = setup(server, true).await;
    type Case = (
        &'static str,
        Box<dyn Fn(&mut PackageRequest)>,
        &'static str,
        Vec<&'static str>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no message",
            Box::new(|r| r.description = None),
            "workflow strict: a message is required (is_message_required: true)",
            vec!["--meta", r#"{"project": "x"}"#],
            "Commit message is required",
        ),
        (
            "name outside the pattern",
            Box::new(|r| r.package_name = "other/pkg".into()),
            "workflow strict: package name \"other/pkg\" does not match handle_pattern \"^team/\"",
            vec!["--message", "v1", "--meta", r#"{"project": "x"}"#],
            "doesn't match required pattern",
        ),
        (
            "metadata without project",
            Box::new(|r| r.metadata = Some(json!({"owner": "y"}))),
            "workflow strict: the package metadata fails metadata_schema \"meta\"",
            vec!["--message", "v1", "--meta", r#"{"owner": "y"}"#],
            "Metadata failed validation",
        ),
        (
            "a file that is not CSV",
            Box::new(|r| r.include_patterns.clear()),
            "workflow strict: the package entries fail entries_schema \"files\"",
            vec!["--message", "v1", "--meta", r#"{"project": "x"}"#],
            "Package entries failed validation",
        ),
        (
            "no workflow where one is required",
            Box::new(|r| r.workflow = Some(None)),
            "workflow: the registry requires a workflow (is_workflow_required: true); pick one of: loose, strict",
            vec!["--no-workflow", "--message", "v1"],
            "Workflow required, but none specified",
        ),
        (
            "an unknown workflow",
            Box::new(|r| r.workflow = Some(Some("gamma".into()))),
            "workflow: the registry has no workflow \"gamma\"; pick one of: loose, strict",
            vec!["--workflow", "gamma", "--message", "v1"],
            "There is no 'gamma' workflow in config",
        ),
    ];
    for (what, mutate, expected, quilt3_args, quilt3_says) in cases {
        let mut request = s.request("team/pkg");
        mutate(&mut request);
        let err = s.refused(&request).await.to_string();
        assert!(err.starts_with(expected), "{what}: {err}");
        // A dry run reports the same refusal.
        request.dry_run = true;
        assert_eq!(s.refused(&request).await.to_string(), err, "{what}");
        let name = request.package_name.clone();
        let all_files = request.include_patterns.is_empty();
        let quilt3 = s
            .quilt3_push(&name, all_files, &quilt3_args)
            .expect_err(what);
        assert!(quilt3.contains(quilt3_says), "{what}: quilt3 says {quilt3}");
    }
    // Nothing was written: no copies, manifests, pointers or staging, by either.
    assert_eq!(
        s.registry_keys().await,
        [CONFIG_KEY, "schemas/files.json", "schemas/meta.json"]
    );
}

async fn an_accepted_push_has_quilt3_header_bytes_and_top_hash(server: &'static S3Server) {
    let s = setup(server, true).await;
    let version = |i: usize| s.versions[i].clone().expect("the registry is versioned");
    let package = s.created(&s.request("team/pkg")).await;
    let header = manifest_header(&s.client, &s.registry, &package.top_hash).await;
    let expected_workflow = format!(
        "\"workflow\": {{\"id\": \"strict\", \"config\": \"s3://{r}/{CONFIG_KEY}?versionId={}\", \"schemas\": {{\"meta\": \"s3://{r}/schemas/meta.json?versionId={}\", \"files\": \"s3://{r}/schemas/files.json?versionId={}\"}}}}",
        version(0),
        version(1),
        version(2),
        r = s.registry,
    );
    assert_eq!(
        header,
        format!(
            "{{\"version\": \"v0\", \"user_meta\": {{\"project\": \"x\"}}, {expected_workflow}, \"message\": \"v1\"}}"
        )
    );

    // quilt3 reads it and recomputes the same top hash.
    let registry = format!("s3://{}", s.registry);
    let browsed = run_oracle(
        s.server,
        &["browse", "--registry", &registry, "--name", "team/pkg"],
    );
    assert_eq!(browsed["top_hash"], json!(package.top_hash));
    assert_eq!(browsed["all_hashes_valid"], json!(true));

    // quilt3 pushing the same request (the default workflow) writes the same first line.
    let twin = s
        .quilt3_push(
            "team/twin",
            false,
            &["--message", "v1", "--meta", r#"{"project": "x"}"#],
        )
        .unwrap();
    let twin_header =
        manifest_header(&s.client, &s.registry, twin["top_hash"].as_str().unwrap()).await;
    assert_eq!(twin_header, header);

    // The loose workflow, named: no message or schemas needed, none recorded.
    let mut loose = s.request("other/loose");
    loose.workflow = Some(Some("loose".into()));
    loose.description = None;
    loose.metadata = None;
    loose.include_patterns.clear();
    let package = s.created(&loose).await;
    let header = manifest_header(&s.client, &s.registry, &package.top_hash).await;
    let twin = s
        .quilt3_push("other/loose-twin", true, &["--workflow", "loose"])
        .unwrap();
    let twin_header =
        manifest_header(&s.client, &s.registry, twin["top_hash"].as_str().unwrap()).await;
    assert_eq!(
        header,
        format!(
            "{{\"version\": \"v0\", \"workflow\": {{\"id\": \"loose\", \"config\": \"s3://{}/{CONFIG_KEY}?versionId={}\"}}, \"message\": null}}",
            s.registry,
            version(0)
        )
    );
    assert_eq!(twin_header, header);
}

async fn without_a_config_there_is_no_workflow_key_and_asking_for_one_is_refused(
    server: &'static S3Server,
) {
    let s = setup(server, false).await;
    let package = s.created(&s.request("team/plain")).await;
    let header = manifest_header(&s.client, &s.registry, &package.top_hash).await;
    assert_eq!(
        header,
        "{\"version\": \"v0\", \"user_meta\": {\"project\": \"x\"}, \"message\": \"v1\"}"
    );
    for (workflow, expected, quilt3_args, quilt3_says) in [
        (
            Some("alpha"),
            "workflow: workflow \"alpha\" is asked for, but the registry has no workflows config",
            vec!["--workflow", "alpha"],
            "'alpha' workflow is specified, but no workflows config exist",
        ),
        (
            None,
            "workflow: no workflow is asked for, but the registry has no workflows config",
            vec!["--no-workflow"],
            "None workflow is specified, but no workflows config exist",
        ),
    ] {
        let mut request = s.request("team/other");
        request.workflow = Some(workflow.map(str::to_string));
        let err = s.refused(&request).await.to_string();
        assert!(err.starts_with(expected), "{err}");
        let quilt3 = s
            .quilt3_push("team/other", false, &quilt3_args)
            .expect_err("quilt3 refuses too");
        assert!(quilt3.contains(quilt3_says), "quilt3 says {quilt3}");
    }
}

/// Item 6: an earlier `--no-copy` version and a copying run with the same content have the same
/// top hash. The copying run's manifest replaces the earlier one (quilt3's rule: the last
/// writer's manifest stands), so the new version points at the registry's copies, and the
/// result says so.
async fn a_version_with_an_earlier_top_hash_points_where_it_was_asked_to(
    server: &'static S3Server,
) {
    let s = setup(server, false).await;
    let mut in_place = s.request("team/same");
    in_place.copy = false;
    // `full` object metadata records the source object's own version and ETag in both runs.
    let first = s.created(&in_place).await;
    assert!(!first.manifest_replaced);
    // Full runs: an incremental rerun would find nothing changed (tests/tests/incremental.rs).
    let mut copying = s.request("team/same");
    copying.incremental = false;
    let second = s.created(&copying).await;
    assert_eq!(
        second.top_hash, first.top_hash,
        "same content, same top hash"
    );
    assert!(second.manifest_replaced);

    let registry = format!("s3://{}", s.registry);
    for top_hash in [&first.top_hash, &second.top_hash] {
        let browsed = run_oracle(
            s.server,
            &[
                "browse",
                "--registry",
                &registry,
                "--name",
                "team/same",
                "--top-hash",
                top_hash,
            ],
        );
        assert_eq!(browsed["all_hashes_valid"], json!(true));
        for entry in browsed["entries"].as_array().unwrap() {
            let physical = entry["physical_key"].as_str().unwrap();
            assert!(
                physical.starts_with(&format!("{registry}/team/same/")),
                "the entries are the registry's copies: {physical}"
            );
        }
    }
    // A rerun copies again (new object versions): its manifest replaces the last one too.
    // What a publish compares (a retried or resumed one leaves the same bytes alone) is the
    // stored bytes' SHA-256: the bytes quilt3 reads.
    let registry_handle = Registry::new(s.store.clone(), &s.registry);
    let manifest = registry_handle.manifest(&first.top_hash).await.unwrap();
    let written: [u8; 32] = Sha256::digest(manifest.to_jsonl().unwrap().as_bytes()).into();
    assert_eq!(
        registry_handle
            .manifest_sha256(&first.top_hash)
            .await
            .unwrap(),
        Some(written)
    );
    let third = s.created(&copying).await;
    assert_eq!(third.top_hash, first.top_hash);
    assert!(third.manifest_replaced);
}

server_tests! {
    refusals_name_the_rule_write_nothing_and_quilt3_refuses_the_same => [moto, localstack, seaweedfs, demo];
    // `ServerKind::returns_copy_checksums`: quilt3 pushes the same request.
    an_accepted_push_has_quilt3_header_bytes_and_top_hash => [moto, localstack];
    without_a_config_there_is_no_workflow_key_and_asking_for_one_is_refused => [moto, localstack, seaweedfs, demo];
    // `ServerKind::supports_versioning`: the versions write the same keys.
    a_version_with_an_earlier_top_hash_points_where_it_was_asked_to => [moto, localstack, seaweedfs];
}
