//! The recipes in `examples/` run as written, so they cannot rot.
//!
//! - `include-exclude`, `flatten-collisions`, `reference-in-place`: each `run.sh` runs with the
//!   built `s3quilt` against moto, on a small dataset laid out like `s3quilt demo`'s, and quilt3
//!   reads the package back: exactly the expected logical keys with the expected contents,
//!   copied into the registry or referenced in the source; the flatten collision is refused
//!   with exit 2 naming both keys and writes no package version.
//! - `scheduled-nightly`: `request.json` is an execution input the planner Lambda's step
//!   accepts (the event built as the state machine builds it, planned as a dry run on moto),
//!   `schedule.yaml` passes cfn-lint and its schedule starts the state machine with exactly
//!   `request.json`, and `run.sh`'s dry run (`s3quilt plan --request`) plans the expected keys
//!   and writes nothing.
//! - `step-functions-from-cli`: `request.json` (the wrapped form) is accepted by the planner
//!   likewise, and `run.sh` runs with a stub `aws` that records its calls: the file is what
//!   `start-execution` gets, the script polls until the execution ends, and exits non-zero when
//!   it failed.
//! - Every folder of `examples/` is one of these recipes, with a README and an executable
//!   `run.sh` that parses.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use s3quilt_core::aws::{ExecutionInput, StepConfig, plan_step};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::S3Store;
use s3quilt_tests::{
    SeedObject, create_bucket, list_all_versions, moto, repo_root, run_child, run_oracle,
    s3quilt_bin, seed, venv_bin,
};
use serde_json::{Value, json};
use serde_norway::Value as Yaml;
use sha2::{Digest, Sha256};

/// How long one `run.sh` may take (each takes about a second).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The recipes, one folder of `examples/` each.
const RECIPES: [&str; 5] = [
    "include-exclude",
    "flatten-collisions",
    "reference-in-place",
    "scheduled-nightly",
    "step-functions-from-cli",
];

/// The variables the scripts read; cleared so the caller's environment cannot change a run.
const SCRIPT_VARIABLES: [&str; 10] = [
    "S3QUILT",
    "SOURCE_BUCKET",
    "SOURCE_PREFIX",
    "REGISTRY_BUCKET",
    "PACKAGE",
    "REQUEST",
    "STATE_MACHINE_ARN",
    "EXECUTION_NAME",
    "POLL_SECONDS",
    "RUST_LOG",
];

fn recipe_dir(recipe: &str) -> PathBuf {
    repo_root().join("examples").join(recipe)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

// ------------------------------------------------------------------ the dataset

/// The sample dataset: the layout of `s3quilt demo`'s (which the recipes' default buckets
/// hold), small: two `readings.csv` in different folders, a key with a space and non-ASCII
/// letters, an empty object.
fn dataset() -> Vec<SeedObject> {
    vec![
        SeedObject::new("README.md", "# Demo dataset\n"),
        SeedObject::new(
            "data/2024/readings.csv",
            "station,date,temperature_c\nnorth-0,2024-01-01,-3.6\n",
        )
        .content_type("text/csv"),
        SeedObject::new(
            "data/2025/readings.csv",
            "station,date,temperature_c\nnorth-0,2025-01-01,-2.1\n",
        )
        .content_type("text/csv"),
        SeedObject::new("data/2025/summary.json", r#"{"stations": 3, "days": 31}"#),
        SeedObject::new("data/stations.json", r#"[{"id": "north-0"}]"#),
        SeedObject::new("reports/Résumé final 2025.txt", "Résumé: a cold January.\n"),
        SeedObject::new("reports/drafts/notes.txt", "draft notes\n"),
        SeedObject::new(
            "images/logo.svg",
            "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        ),
        SeedObject::new("logs/empty.log", ""),
    ]
}

/// Fresh versioned source and registry buckets on moto, the source seeded with [`dataset`].
struct Buckets {
    client: aws_sdk_s3::Client,
    source: String,
    registry: String,
    /// Source key → (version id, SHA-256 of the body).
    objects: BTreeMap<String, (Option<String>, String)>,
}

async fn seeded_buckets() -> Buckets {
    let client = moto().client().await;
    let source = create_bucket(&client, true).await;
    let registry = create_bucket(&client, true).await;
    let objects = dataset();
    let versions = seed(&client, &source, &objects).await;
    let objects = objects
        .iter()
        .zip(versions)
        .map(|(o, v)| (o.key.clone(), (v, hex_sha256(&o.body))))
        .collect();
    Buckets {
        client,
        source,
        registry,
        objects,
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Buckets {
    /// The script variables naming these buckets.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOURCE_BUCKET", self.source.clone()),
            ("REGISTRY_BUCKET", self.registry.clone()),
        ]
    }

    /// Every key (with each of its versions) in the registry.
    async fn registry_keys(&self) -> Vec<(String, Option<String>, bool)> {
        list_all_versions(&self.client, &self.registry).await
    }

    /// The registry's objects under `.quilt/named_packages/<package>/`: one timestamp and
    /// `latest` per version written.
    async fn package_pointers(&self, package: &str) -> Vec<String> {
        let prefix = format!(".quilt/named_packages/{package}/");
        self.registry_keys()
            .await
            .into_iter()
            .filter_map(|(key, _, _)| key.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Asserts that exactly one version of `package` was written and no run left staging.
    async fn assert_one_version(&self, package: &str) {
        let pointers = self.package_pointers(package).await;
        assert_eq!(
            pointers.len(),
            2,
            "{package}: expected one version (a timestamp pointer and `latest`), found {pointers:?}"
        );
        assert!(pointers.iter().any(|p| p == "latest"), "{pointers:?}");
        let staging: Vec<_> = self
            .registry_keys()
            .await
            .into_iter()
            .filter(|(key, _, _)| key.starts_with(".s3quilt/runs/"))
            .collect();
        assert!(staging.is_empty(), "staging left behind: {staging:?}");
    }

    /// The package as quilt3 reads it, every entry's hash verified.
    fn browse(&self, package: &str) -> Value {
        let out = run_oracle(
            moto(),
            &[
                "browse",
                "--registry",
                &format!("s3://{}", self.registry),
                "--name",
                package,
            ],
        );
        assert_eq!(
            out["all_hashes_valid"],
            json!(true),
            "quilt3 finds every hash of {package} valid: {out:#}"
        );
        out
    }

    /// Asserts the package holds exactly `expected` (logical key → source key), each entry
    /// with the source object's bytes, and returns the entries by logical key.
    fn assert_entries(
        &self,
        package: &Value,
        expected: &[(&str, &str)],
    ) -> BTreeMap<String, Value> {
        let entries: BTreeMap<String, Value> = package["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| (e["logical_key"].as_str().unwrap().to_string(), e.clone()))
            .collect();
        let mut want: Vec<&str> = expected.iter().map(|(lk, _)| *lk).collect();
        want.sort_unstable();
        assert_eq!(
            entries.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "logical keys of the package"
        );
        for (logical_key, source_key) in expected {
            let (_, sha) = &self.objects[*source_key];
            assert_eq!(
                entries[*logical_key]["bytes_sha256"].as_str(),
                Some(sha.as_str()),
                "{logical_key} holds the bytes of {source_key}"
            );
        }
        entries
    }
}

// ------------------------------------------------------------------ running a recipe

/// What a `run.sh` did.
struct ScriptRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl ScriptRun {
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }

    fn assert_success(&self, recipe: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{recipe}/run.sh failed: {}",
            self.describe()
        );
    }
}

/// Runs `examples/<recipe>/run.sh` (executed directly, as a user would) with moto's
/// environment (endpoint, credentials), `S3QUILT` = the built binary, the venv's `bin` first on
/// PATH (for `python3`), `path_first` before that if given, and `env`.
fn run_recipe(recipe: &str, env: &[(&str, String)], path_first: Option<&Path>) -> ScriptRun {
    let script = recipe_dir(recipe).join("run.sh");
    let mut cmd = Command::new(&script);
    for var in SCRIPT_VARIABLES {
        cmd.env_remove(var);
    }
    moto().apply_env(&mut cmd);
    let venv_bin_dir = venv_bin("python3")
        .parent()
        .expect("the venv's bin directory")
        .to_path_buf();
    let mut path: Vec<PathBuf> = path_first.into_iter().map(Path::to_path_buf).collect();
    path.push(venv_bin_dir);
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    cmd.env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("S3QUILT", s3quilt_bin())
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .current_dir(std::env::temp_dir());
    let out = run_child(&mut cmd, &format!("{recipe}/run.sh"), SCRIPT_TIMEOUT);
    let run = ScriptRun {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: out.elapsed,
    };
    eprintln!("{recipe}/run.sh: exit {:?} in {:?}", run.code, run.elapsed);
    run
}

// ------------------------------------------------------------------ recipes 1-3

#[tokio::test(flavor = "multi_thread")]
async fn include_exclude_plans_then_packages_only_the_selected_files() {
    let b = seeded_buckets().await;
    let run = run_recipe("include-exclude", &b.env(), None);
    run.assert_success("include-exclude");

    let expected = [
        ("data/2025/readings.csv", "data/2025/readings.csv"),
        ("data/2025/summary.json", "data/2025/summary.json"),
        ("data/stations.json", "data/stations.json"),
    ];
    // The dry run came first and showed the selection.
    let (plan, create) = run
        .stdout
        .split_once("== 2.")
        .unwrap_or_else(|| panic!("no second step: {}", run.describe()));
    assert!(plan.contains("dry run"), "{}", run.describe());
    for (logical_key, _) in expected {
        assert!(
            plan.contains(logical_key),
            "plan lists {logical_key}: {plan}"
        );
    }
    assert!(
        !plan.contains("data/2024/readings.csv"),
        "data/2024 is excluded: {plan}"
    );
    assert!(
        create.contains("Created examples/csv-and-json"),
        "{}",
        run.describe()
    );

    let package = b.browse("examples/csv-and-json");
    let entries = b.assert_entries(&package, &expected);
    for (logical_key, entry) in &entries {
        let physical = entry["physical_key"].as_str().unwrap();
        assert!(
            physical.starts_with(&format!("s3://{}/examples/csv-and-json/", b.registry)),
            "{logical_key} was copied into the registry: {physical}"
        );
    }
    assert_eq!(
        package["message"],
        json!("CSV and JSON files, 2024 left out")
    );
    assert_eq!(package["user_meta"], json!({"recipe": "include-exclude"}));
    b.assert_one_version("examples/csv-and-json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flatten_collisions_are_refused_with_exit_2_then_an_exclude_succeeds() {
    let b = seeded_buckets().await;
    let run = run_recipe("flatten-collisions", &b.env(), None);
    // The script itself fails unless the first run exits 2.
    run.assert_success("flatten-collisions");
    assert!(
        run.stdout.contains("refused with exit 2"),
        "{}",
        run.describe()
    );
    // The collision report names the logical key and both source keys.
    let report = run
        .stderr
        .lines()
        .find(|l| l.contains("would hold several objects"))
        .unwrap_or_else(|| panic!("no collision report: {}", run.describe()));
    for needle in [
        "\"readings.csv\"",
        "data/2024/readings.csv",
        "data/2025/readings.csv",
    ] {
        assert!(report.contains(needle), "{needle} in {report}");
    }

    let package = b.browse("examples/flat");
    b.assert_entries(
        &package,
        &[
            ("readings.csv", "data/2025/readings.csv"),
            ("summary.json", "data/2025/summary.json"),
            ("stations.json", "data/stations.json"),
        ],
    );
    // The refused run wrote no version: only the second run's is there.
    b.assert_one_version("examples/flat").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reference_in_place_points_at_the_source_objects_and_copies_nothing() {
    let b = seeded_buckets().await;
    let run = run_recipe("reference-in-place", &b.env(), None);
    run.assert_success("reference-in-place");
    assert!(
        run.stdout.contains("referenced in place"),
        "{}",
        run.describe()
    );

    let package = b.browse("examples/in-place");
    let entries = b.assert_entries(
        &package,
        &[
            ("Résumé final 2025.txt", "reports/Résumé final 2025.txt"),
            ("drafts/notes.txt", "reports/drafts/notes.txt"),
        ],
    );
    for (logical_key, entry) in &entries {
        let physical = entry["physical_key"].as_str().unwrap();
        let rest = physical
            .strip_prefix(&format!("s3://{}/", b.source))
            .unwrap_or_else(|| panic!("{logical_key} points at the source bucket: {physical}"));
        let (key, version) = rest
            .split_once("?versionId=")
            .unwrap_or_else(|| panic!("{logical_key} is pinned to a version: {physical}"));
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8()
            .unwrap()
            .to_string();
        assert_eq!(key, format!("reports/{logical_key}"), "{physical}");
        assert_eq!(
            Some(version),
            b.objects[&key].0.as_deref(),
            "{logical_key} is pinned to the seeded version"
        );
    }
    // Nothing was copied: the registry holds only Quilt's and s3quilt's own records.
    let copies: Vec<_> = b
        .registry_keys()
        .await
        .into_iter()
        .filter(|(key, _, _)| !key.starts_with(".quilt/") && !key.starts_with(".s3quilt/results/"))
        .collect();
    assert!(copies.is_empty(), "objects copied: {copies:?}");
    b.assert_one_version("examples/in-place").await;
}

// ------------------------------------------------------------------ recipes 4-5

/// The planner's event as the state machine builds it (its `Plan` state's `Parameters`) for an
/// execution started with `input`.
fn planner_event(input: &Value) -> Value {
    let path = repo_root().join("infra").join("statemachine.asl.json");
    let parameters = &read_json(&path)["States"]["Plan"]["Parameters"];
    assert_eq!(
        parameters,
        &json!({"input.$": "$", "execution_name.$": "$$.Execution.Name", "execution_arn.$": "$$.Execution.Id"}),
        "the Plan state passes the execution input as `input`; update planner_event if it changed"
    );
    json!({
        "input": input,
        "execution_name": "examples-test",
        "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:examples:examples-test"
    })
}

/// The request inside an execution input, either form.
fn request_of(input: &mut Value) -> &mut Value {
    if input.get("request").is_some() {
        &mut input["request"]
    } else {
        input
    }
}

/// Checks an execution input as the planner Lambda does (parse either form, validate, Map
/// concurrency) and returns it.
fn assert_valid_execution_input(path: &Path) -> ExecutionInput {
    let input = read_json(path);
    let parsed = ExecutionInput::parse(input.clone())
        .unwrap_or_else(|e| panic!("{}: the planner refuses it: {e}", path.display()));
    parsed
        .request
        .validate()
        .unwrap_or_else(|e| panic!("{}: invalid request: {e}", path.display()));
    parsed
        .effective_max_concurrency()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        input.to_string().len() < 256 * 1024,
        "{} is over Step Functions' 256 KiB input limit",
        path.display()
    );
    parsed
}

/// Runs the planner step (as its Lambda does, with this deployment's bucket allowlist) on
/// `input` with the buckets replaced by `b`'s and `dry_run` set; returns (objects, logical keys).
async fn plan_as_the_planner(b: &Buckets, input: &Value) -> (u64, Vec<String>) {
    let mut input = input.clone();
    let request = request_of(&mut input);
    request["source_bucket"] = json!(b.source);
    request["target_registry"] = json!(format!("s3://{}", b.registry));
    request["dry_run"] = json!(true);
    let config = StepConfig::from_vars(|k| match k {
        "S3QUILT_SOURCE_BUCKETS" => Some(b.source.clone()),
        "S3QUILT_REGISTRY_BUCKETS" => Some(b.registry.clone()),
        _ => None,
    });
    let out = plan_step(
        S3Store::shared(b.client.clone()),
        &config,
        planner_event(&input),
    )
    .await
    .unwrap_or_else(|e| panic!("the planner refuses {input}: {e}"));
    assert!(out.dry_run && out.run_id.is_none(), "a dry run: {out:?}");
    (out.objects, out.summary.sample_logical_keys)
}

fn yaml_str<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {yaml:?}"))
}

/// Asserts `yaml` is `!Ref <name>`.
fn assert_ref(yaml: &Yaml, name: &str, what: &str) {
    match yaml {
        Yaml::Tagged(tagged) if tagged.tag == "Ref" => {
            assert_eq!(yaml_str(&tagged.value, what), name, "{what}");
        }
        _ => match yaml.get("Ref") {
            Some(r) => assert_eq!(yaml_str(r, what), name, "{what}"),
            None => panic!("{what} is not a Ref to {name}: {yaml:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_nightly_request_and_schedule_start_the_state_machine_with_a_valid_request() {
    let dir = recipe_dir("scheduled-nightly");
    let request_path = dir.join("request.json");
    let request_json = read_json(&request_path);
    // The bare form: exactly the request type the CLI, the MCP server and the Lambdas share.
    let request: PackageRequest = serde_json::from_value(request_json.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", request_path.display()));
    request.validate().expect("the nightly request validates");
    assert!(
        !request.dry_run,
        "a nightly run that only plans makes no package"
    );
    let input = assert_valid_execution_input(&request_path);
    assert_eq!(input.max_concurrency, None);

    // schedule.yaml: an EventBridge Scheduler schedule starting the state machine given as a
    // parameter, with request.json as the input, and a role allowed only to start it.
    let schedule_path = dir.join("schedule.yaml");
    let template: Yaml = serde_norway::from_str(&read(&schedule_path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", schedule_path.display()));
    assert!(
        template["Parameters"].get("StateMachineArn").is_some(),
        "StateMachineArn is a parameter"
    );
    let resources = template["Resources"].as_mapping().expect("Resources");
    let schedules: Vec<&Yaml> = resources
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Scheduler::Schedule"))
        .collect();
    assert_eq!(schedules.len(), 1, "one schedule");
    let target = &schedules[0]["Properties"]["Target"];
    assert_ref(&target["Arn"], "StateMachineArn", "the schedule's target");
    let schedule_input: Value = serde_json::from_str(yaml_str(&target["Input"], "Target.Input"))
        .expect("the schedule's Input is JSON");
    assert_eq!(
        schedule_input, request_json,
        "schedule.yaml's Target.Input is request.json"
    );
    let roles: Vec<&Yaml> = resources
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::IAM::Role"))
        .collect();
    assert_eq!(roles.len(), 1, "one role");
    let statements = roles[0]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_sequence()
        .expect("the role's statements");
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(
        yaml_str(&statements[0]["Action"], "Action"),
        "states:StartExecution"
    );
    assert_ref(
        &statements[0]["Resource"],
        "StateMachineArn",
        "the role's resource",
    );

    // cfn-lint (pinned in .ci/run) accepts it as CloudFormation.
    let lint = Command::new(venv_bin("cfn-lint"))
        .arg(&schedule_path)
        .output()
        .expect("run cfn-lint");
    assert!(
        lint.status.success(),
        "cfn-lint {}:\n{}{}",
        schedule_path.display(),
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // The planner step accepts it and selects the CSV files under data/.
    let b = seeded_buckets().await;
    let expected = ["2024/readings.csv", "2025/readings.csv"];
    let (objects, keys) = plan_as_the_planner(&b, &request_json).await;
    assert_eq!(
        (objects, keys.as_slice()),
        (2, expected.map(String::from).as_slice())
    );

    // run.sh: the same request, given to `s3quilt plan --request`, as a local dry run; it
    // writes nothing.
    let run = run_recipe("scheduled-nightly", &b.env(), None);
    run.assert_success("scheduled-nightly");
    assert!(run.stdout.contains("dry run"), "{}", run.describe());
    assert!(
        run.stdout.contains(" plan --request "),
        "run.sh plans the file itself: {}",
        run.describe()
    );
    for key in expected {
        assert!(run.stdout.contains(key), "{key}: {}", run.describe());
    }
    assert!(!run.stdout.contains("summary.json"), "{}", run.describe());
    assert!(
        b.package_pointers("examples/nightly").await.is_empty(),
        "a dry run writes no package"
    );
}

/// A stand-in for the AWS CLI: records each call (arguments separated by \x1f, one call per
/// line) in `$STUB_DIR/calls`, keeps a copy of the `--input` file, answers `start-execution`
/// with an ARN and `describe-execution --query status` with RUNNING twice, then `$STUB_FINAL`.
const AWS_STUB: &str = r#"#!/usr/bin/env bash
set -euo pipefail
printf '%s\x1f' "$@" >>"$STUB_DIR/calls"
echo >>"$STUB_DIR/calls"
case "$1 $2" in
  "stepfunctions start-execution")
    while [ $# -gt 0 ]; do
      if [ "$1" = --input ]; then cp "${2#file://}" "$STUB_DIR/input.json"; fi
      shift
    done
    echo "arn:aws:states:us-east-1:123456789012:execution:s3quilt-packager:stub"
    ;;
  "stepfunctions describe-execution")
    if [[ " $* " == *" --query status "* ]]; then
      n=$(( $(cat "$STUB_DIR/polls" 2>/dev/null || echo 0) + 1 ))
      echo "$n" >"$STUB_DIR/polls"
      if [ "$n" -le 2 ]; then echo RUNNING; else echo "$STUB_FINAL"; fi
    else
      echo "{\"status\": \"$STUB_FINAL\", \"output\": null, \"error\": null, \"cause\": null}"
    fi
    ;;
  *)
    echo "aws stub: unexpected call: $*" >&2
    exit 255
    ;;
esac
"#;

/// A directory holding the `aws` stub (inside moto's directory, removed with it).
fn aws_stub_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = moto()
        .dir()
        .join(format!("aws-stub-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    let aws = dir.join("aws");
    std::fs::write(&aws, AWS_STUB).unwrap();
    std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn stub_calls(dir: &Path) -> Vec<Vec<String>> {
    read(&dir.join("calls"))
        .lines()
        .map(|line| {
            line.strip_suffix('\x1f')
                .unwrap_or(line)
                .split('\x1f')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn step_functions_from_cli_starts_with_an_input_the_planner_accepts_and_polls() {
    let dir = recipe_dir("step-functions-from-cli");
    let request_path = dir.join("request.json");
    let input_json = read_json(&request_path);
    let input = assert_valid_execution_input(&request_path);
    assert_eq!(
        input.max_concurrency,
        Some(16),
        "the wrapped form sets the Map's concurrency"
    );

    let b = seeded_buckets().await;
    let (objects, keys) = plan_as_the_planner(&b, &input_json).await;
    assert_eq!(
        (objects, keys),
        (1, vec!["Résumé final 2025.txt".to_string()])
    );

    let arn = "arn:aws:states:us-east-1:123456789012:stateMachine:s3quilt-packager";
    for (outcome, code) in [("SUCCEEDED", Some(0)), ("FAILED", Some(1))] {
        let stub = aws_stub_dir();
        let mut env = b.env();
        env.extend([
            ("STATE_MACHINE_ARN", arn.to_string()),
            ("POLL_SECONDS", "0".to_string()),
            ("EXECUTION_NAME", "examples-test".to_string()),
            ("STUB_DIR", stub.display().to_string()),
            ("STUB_FINAL", outcome.to_string()),
        ]);
        let run = run_recipe("step-functions-from-cli", &env, Some(&stub));
        assert_eq!(run.code, code, "{outcome}: {}", run.describe());

        let calls = stub_calls(&stub);
        let start = &calls[0];
        assert_eq!(&start[..2], ["stepfunctions", "start-execution"]);
        let flag = |name: &str| -> &str {
            let at = start
                .iter()
                .position(|a| a == name)
                .unwrap_or_else(|| panic!("{name} in {start:?}"));
            &start[at + 1]
        };
        assert_eq!(flag("--state-machine-arn"), arn);
        assert_eq!(flag("--name"), "examples-test");
        assert!(flag("--input").starts_with("file://"), "{start:?}");
        // What was sent: request.json with this test's buckets, which the planner accepts as is.
        let sent = read_json(&stub.join("input.json"));
        let mut expected = input_json.clone();
        request_of(&mut expected)["source_bucket"] = json!(b.source);
        request_of(&mut expected)["target_registry"] = json!(format!("s3://{}", b.registry));
        assert_eq!(sent, expected, "the input sent");
        let config = StepConfig::default();
        let mut dry = sent.clone();
        request_of(&mut dry)["dry_run"] = json!(true);
        plan_step(
            S3Store::shared(b.client.clone()),
            &config,
            planner_event(&dry),
        )
        .await
        .unwrap_or_else(|e| panic!("the planner refuses the input sent: {e}"));
        // Polled until the execution ended, then reported it.
        let describes = calls
            .iter()
            .filter(|c| c[..2] == ["stepfunctions", "describe-execution"])
            .count();
        assert_eq!(describes, 4, "3 status polls and the report: {calls:?}");
        assert!(
            run.stdout.contains(&format!("== {outcome}")),
            "{}",
            run.describe()
        );
    }
}

// ------------------------------------------------------------------ layout

#[test]
fn every_example_folder_is_a_checked_recipe_with_a_readme_and_a_runnable_script() {
    let examples = repo_root().join("examples");
    let mut folders: Vec<String> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("{}: {e}", examples.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    folders.sort();
    let mut recipes = RECIPES.map(String::from).to_vec();
    recipes.sort();
    assert_eq!(
        folders, recipes,
        "every folder of examples/ is a recipe this file runs (add a test for a new one)"
    );
    let index = read(&examples.join("README.md"));
    for recipe in RECIPES {
        let dir = recipe_dir(recipe);
        assert!(
            index.contains(&format!("({recipe}/)")),
            "examples/README.md links {recipe}/"
        );
        let readme = read(&dir.join("README.md"));
        assert!(readme.contains("run.sh"), "{recipe}/README.md shows run.sh");
        let script = dir.join("run.sh");
        let text = read(&script);
        assert!(
            text.starts_with("#!/usr/bin/env bash\n"),
            "{recipe}/run.sh is bash"
        );
        assert!(
            text.contains("\nset -euo pipefail\n"),
            "{recipe}/run.sh sets -euo pipefail"
        );
        if text.contains("S3QUILT") {
            assert!(
                text.contains("S3QUILT=\"${S3QUILT:-s3quilt}\""),
                "{recipe}/run.sh takes the binary from $S3QUILT"
            );
        }
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{recipe}/run.sh is executable");
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .expect("run bash -n");
        assert!(
            syntax.status.success(),
            "{recipe}/run.sh: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
}
