//! The AWS engine end to end, offline: the real state machine definition executed by moto's
//! Step Functions engine, the real Lambda binaries under `cargo lambda watch`, and a router in
//! between (see `s3quilt_tests::SfnStack`). Executions are started and followed with the same
//! core functions the CLI uses (`s3quilt_core::aws::{start_execution, follow_execution}`).
//!
//! - a package made through the state machine equals, entry for entry and top hash, the one
//!   the local engine makes from the same prefix;
//! - a copier that fails for good (its source object was deleted after planning) ends in
//!   rollback, a failed execution naming the shard's error, and no package;
//! - a shard whose copier never wrote its fragment makes the finalizer refuse (moto does not
//!   fail a Distributed Map whose child failed: the finalizer's own check is what protects);
//! - dry runs and invalid requests end after the plan;
//! - the failure paths of the state machine itself: a copier that dies mid-shard (its deadline)
//!   and one retried after dying mid-shard, on versioned and unversioned registries; a
//!   finalizer that dies after publishing; an execution stopped mid-copy whose late copier
//!   runs after it, cleaned up by the janitor.
//!
//! One stack serves every test of this file; hooks on the router are keyed by registry bucket
//! so the tests can run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use s3quilt_core::aws::{
    ExecutionInput, ExecutionReport, execution_report, follow_execution, start_execution,
};
use s3quilt_core::copy::{CopyOptions, copy_objects};
use s3quilt_core::engine::{EngineOptions, Phase, Progress, RunOutcome, run_local};
use s3quilt_core::quilt::{Manifest, PackageName, PhysicalKey};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::staging::{Shard, Staging};
use s3quilt_core::storage::{ObjectStore, S3Store, list_all};
use s3quilt_core::transaction::{new_attempt_id, open_attempt};
use s3quilt_tests::{
    HookAction, InvokeCall, InvokeHook, SeedObject, SfnStack, create_bucket, list_all_versions,
    seed,
};
use serde_json::json;

/// Objects per shard in the deployed functions' settings: small, so runs have several shards.
const SHARD_MAX_OBJECTS: &str = "3";
/// The copier time limit the deployed functions are told of.
const COPIER_TIMEOUT_SECS: &str = "15";

type BucketHooks = Mutex<HashMap<String, InvokeHook>>;

fn hooks() -> &'static BucketHooks {
    static HOOKS: OnceLock<BucketHooks> = OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// The shared stack (started on first use; its processes stop when the test process ends).
fn stack() -> &'static SfnStack {
    static STACK: OnceLock<SfnStack> = OnceLock::new();
    STACK.get_or_init(|| {
        let stack = SfnStack::start(&[
            ("S3QUILT_SHARD_MAX_OBJECTS", SHARD_MAX_OBJECTS),
            // Rollback waits this long for an attempt whose copier may still be running (the
            // Lambda timeout, 900 s, in a deployment).
            ("S3QUILT_COPIER_TIMEOUT_SECS", COPIER_TIMEOUT_SECS),
        ]);
        let dispatch: InvokeHook = Arc::new(|call: InvokeCall| {
            let bucket = call.payload["registry_bucket"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let hook = hooks().lock().unwrap().get(&bucket).cloned();
            Box::pin(async move {
                match hook {
                    Some(hook) => hook(call).await,
                    None => HookAction::Forward,
                }
            })
        });
        stack.router().set_hook(Some(dispatch));
        stack
    })
}

async fn shared_stack() -> &'static SfnStack {
    tokio::task::block_in_place(stack)
}

fn sample() -> Vec<SeedObject> {
    vec![
        SeedObject::new("data/README.md", b"# sample\n".to_vec())
            .content_type("text/markdown")
            .meta("owner", "lab-7"),
        SeedObject::new("data/tables/a.csv", b"x,y\n1,2\n".to_vec())
            .content_type("text/csv")
            .meta("rows", "1"),
        SeedObject::new("data/tables/b.csv", b"x,y\n3,4\n".to_vec()).content_type("text/csv"),
        SeedObject::new("data/tables/raw/c.csv", b"x,y\n5,6\n".to_vec()),
        SeedObject::new("data/a b/ünï ñ.json", b"{\"k\": 1}\n".to_vec())
            .content_type("application/json"),
        SeedObject::new("data/odd/100%#[x]~{y}+z.txt", b"odd characters".to_vec()),
        SeedObject::new("data/empty.txt", Vec::new()),
        SeedObject::new("data/folder/", Vec::new()),
        SeedObject::new("elsewhere/not-selected.csv", b"no".to_vec()),
    ]
}

/// A state machine of the real definition, one per test (so executions can be counted).
async fn state_machine(stack: &SfnStack, name: &str) -> String {
    stack.create_state_machine(name).await
}

/// Starts `input` and follows it to the end (at most 5 minutes).
async fn run(
    stack: &SfnStack,
    machine: &str,
    input: &ExecutionInput,
    token: &str,
) -> ExecutionReport {
    let sfn = stack.sfn_client();
    let store = S3Store::shared(stack.s3_client());
    let started = start_execution(&sfn, machine, input, token)
        .await
        .expect("start execution");
    let mut phases = Vec::new();
    let followed = tokio::time::timeout(
        Duration::from_secs(300),
        follow_execution(
            &sfn,
            Some(store),
            &started.execution_arn,
            Duration::from_millis(300),
            |r| {
                if phases.last() != Some(&r.progress.phase) {
                    phases.push(r.progress.phase);
                }
            },
        ),
    )
    .await;
    match followed {
        Ok(Ok(report)) => {
            eprintln!(
                "execution {} phases {phases:?} -> {}",
                started.name, report.status
            );
            report
        }
        Ok(Err(e)) => panic!("following the execution failed: {e}\n{}", stack.logs()),
        Err(_) => panic!("the execution did not end in 5 minutes\n{}", stack.logs()),
    }
}

async fn latest(store: Arc<dyn ObjectStore>, registry: &str, name: &str) -> (String, Manifest) {
    let name: PackageName = name.parse().unwrap();
    Registry::new(store, registry)
        .latest_manifest(&name)
        .await
        .unwrap_or_else(|e| panic!("no package {name} in {registry}: {e}"))
}

fn request(source: &str, registry: &str) -> PackageRequest {
    let mut request =
        PackageRequest::new(source, "data", "team/sample", &format!("s3://{registry}"));
    request.description = Some("through Step Functions ✓".into());
    request.metadata = Some(json!({"project": "s3quilt", "ratio": 0.5, "nested": {"n": [1, 2]}}));
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn state_machine_package_equals_the_local_engines() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let store = S3Store::shared(client.clone());
    let source = create_bucket(&client, true).await;
    let (via_sfn, via_local) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    let machine = state_machine(stack, "s3quilt-equal").await;

    let input = ExecutionInput {
        request: request(&source, &via_sfn),
        max_concurrency: Some(2),
    };
    let report = run(stack, &machine, &input, "token-equal").await;
    assert_eq!(report.status, "SUCCEEDED", "{report:#?}\n{}", stack.logs());
    let output = report.output.clone().expect("execution output");
    assert_eq!(output.status, "created");
    let package = output.package.expect("package in the output");
    assert_eq!(output.plan["objects"], 7);
    assert_eq!(output.plan["shards"], 3);

    let local = run_local(
        store.clone(),
        &request(&source, &via_local),
        &EngineOptions::default(),
        Progress::new(),
    )
    .await
    .expect("local engine");
    let RunOutcome::Created {
        package: local_package,
        ..
    } = local
    else {
        panic!("the local engine made no package")
    };

    let (sfn_hash, sfn_manifest) = latest(store.clone(), &via_sfn, "team/sample").await;
    let (local_hash, local_manifest) = latest(store.clone(), &via_local, "team/sample").await;
    assert_eq!(package["top_hash"], json!(sfn_hash));
    assert_eq!(local_package.top_hash, local_hash);
    assert_eq!(sfn_manifest.header, local_manifest.header);
    assert_eq!(sfn_manifest.entries.len(), 7);
    assert_eq!(sfn_manifest.entries.len(), local_manifest.entries.len());
    for (a, b) in sfn_manifest.entries.iter().zip(&local_manifest.entries) {
        assert_eq!(
            a.hash_part(),
            b.hash_part(),
            "entry {}",
            a.logical_key.as_str()
        );
        let (pa, pb): (PhysicalKey, PhysicalKey) = (
            a.physical_keys[0].parse().unwrap(),
            b.physical_keys[0].parse().unwrap(),
        );
        assert_eq!(
            (pa.bucket.as_str(), pb.bucket.as_str()),
            (via_sfn.as_str(), via_local.as_str())
        );
        assert_eq!(pa.key, pb.key, "entry {}", a.logical_key.as_str());
        assert!(
            pa.version_id.is_some(),
            "copies in a versioned bucket are pinned"
        );
    }
    assert_eq!(
        sfn_hash, local_hash,
        "top hash through Step Functions vs the local engine"
    );

    // Progress as the CLI sees it; staging is gone.
    assert_eq!(report.progress.phase, Phase::Succeeded);
    assert_eq!(
        (report.progress.objects_total, report.progress.objects_done),
        (7, 7)
    );
    assert_eq!(report.progress.bytes_total, report.progress.bytes_done);
    let shards = report.shards.expect("map run counts");
    assert_eq!((shards.total, shards.succeeded, shards.failed), (3, 3, 0));
    assert!(report.run_id.is_some());
    let run_id = report.run_id.clone().unwrap();
    let staging = list_all(
        store.as_ref(),
        &via_sfn,
        ".s3quilt/runs/",
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    let results = list_all(
        store.as_ref(),
        &via_sfn,
        ".s3quilt/results/",
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].key.contains(&run_id), "{results:?}");

    // A retried start with the same token starts nothing new.
    let sfn = stack.sfn_client();
    let again = start_execution(&sfn, &machine, &input, "token-equal")
        .await
        .unwrap();
    assert_eq!(again.execution_arn, report.execution_arn);
    let executions = sfn
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap();
    assert_eq!(executions.executions().len(), 1);
    let status = execution_report(&sfn, None, &again.execution_arn)
        .await
        .unwrap();
    assert_eq!(status.status, "SUCCEEDED");

    // A new execution of the unchanged source starts from that version: up to date, nothing
    // copied, no new version (the planner read the base; the Map never ran).
    let unchanged = run(stack, &machine, &input, "token-unchanged").await;
    assert_eq!(unchanged.status, "SUCCEEDED", "{unchanged:#?}");
    let output = unchanged.output.expect("execution output");
    assert_eq!(output.status, "up_to_date", "{output:?}");
    assert_eq!(output.plan["incremental"]["base"], json!(sfn_hash));
    assert_eq!(output.plan["incremental"]["reused"]["objects"], 7);
    assert!(output.package.is_none());
    assert_eq!(
        latest(store.clone(), &via_sfn, "team/sample").await.0,
        sfn_hash
    );

    // One object changes: the shards hold only it, the rest is reused from the base.
    seed(
        &client,
        &source,
        &[SeedObject::new(
            "data/tables/a.csv",
            b"x,y\n1,2\n3,4\n".to_vec(),
        )],
    )
    .await;
    let changed = run(stack, &machine, &input, "token-changed").await;
    assert_eq!(
        changed.status,
        "SUCCEEDED",
        "{changed:#?}\n{}",
        stack.logs()
    );
    let output = changed.output.expect("execution output");
    assert_eq!(output.status, "created");
    assert_eq!(output.plan["shards"], 1);
    assert_eq!(output.plan["incremental"]["changed"]["objects"], 1);
    assert_eq!(output.plan["incremental"]["reused"]["objects"], 6);
    let (new_hash, new_manifest) = latest(store.clone(), &via_sfn, "team/sample").await;
    assert_ne!(new_hash, sfn_hash);
    assert_eq!(new_manifest.entries.len(), 7);
    for (a, b) in new_manifest.entries.iter().zip(&sfn_manifest.entries) {
        let same = a.logical_key.as_str() != "tables/a.csv";
        assert_eq!(
            a.physical_keys == b.physical_keys,
            same,
            "{}",
            a.logical_key.as_str()
        );
    }
}

/// Deletes the first object of `shard` from the source when its copier is invoked (after
/// planning, before copying: a real S3 condition the copier cannot get past).
fn delete_source_of_shard(stack: &'static SfnStack, source: String, shard: u64) -> InvokeHook {
    let done = Arc::new(Mutex::new(None::<String>));
    Arc::new(move |call: InvokeCall| {
        let (source, done) = (source.clone(), done.clone());
        Box::pin(async move {
            if call.function != "copier" || call.payload["shard"].as_u64() != Some(shard) {
                return HookAction::Forward;
            }
            let store = S3Store::shared(stack.s3_client());
            let (registry, run_id) = (
                call.payload["registry_bucket"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                call.payload["run_id"].as_str().unwrap().to_string(),
            );
            let staging = Staging::new(store.clone(), &registry, &run_id);
            let doc: Shard = staging
                .require(&staging.shard_key(shard as u32))
                .await
                .unwrap();
            let key = doc.objects[0].key.clone();
            store.delete(&source, &key, None).await.unwrap();
            *done.lock().unwrap() = Some(key);
            HookAction::Forward
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copier_failing_for_good_rolls_back_and_leaves_no_package() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    hooks().lock().unwrap().insert(
        registry.clone(),
        delete_source_of_shard(stack, source.clone(), 1),
    );
    let machine = state_machine(stack, "s3quilt-copy-fails").await;
    let report = run(
        stack,
        &machine,
        &ExecutionInput::new(request(&source, &registry)),
        "t",
    )
    .await;

    assert_eq!(report.status, "FAILED", "{report:#?}");
    assert_eq!(report.progress.phase, Phase::Failed);
    // moto lets the Map succeed past a failed child, and the finalizer refuses the missing
    // fragment; Step Functions fails the Map itself (States.ExceedToleratedFailureThreshold,
    // reported as S3Quilt.CopyFailed). Either way the run is rolled back.
    let error = report.error.clone().unwrap_or_default();
    assert!(
        ["S3Quilt.MissingFragments", "S3Quilt.CopyFailed"].contains(&error.as_str()),
        "{report:#?}"
    );
    let cause = report.cause.clone().unwrap_or_default();
    assert!(cause.contains("failed shards: shard 1: "), "{cause}");
    assert!(
        cause.contains("changed after it was planned") || cause.contains("NotFound"),
        "{cause}"
    );
    assert!(cause.contains("rolled back: "), "{cause}");
    assert!(!cause.contains("NOT removed"), "{cause}");

    // Nothing of the run is left in the registry: no copies (of any version), no staging, no
    // manifest, no pointer.
    let left = list_all_versions(&client, &registry).await;
    assert!(left.is_empty(), "left in the registry: {left:?}");
    let calls = stack.router().invocations();
    let rollbacks = calls
        .iter()
        .filter(|c| c.function == "rollback" && c.payload["registry_bucket"] == registry.as_str())
        .count();
    assert_eq!(rollbacks, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_fragment_makes_the_finalizer_refuse() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    // Shard 0's copier "succeeds" without running: its fragment is never written.
    let skip: InvokeHook = Arc::new(|call: InvokeCall| {
        Box::pin(async move {
            if call.function == "copier" && call.payload["shard"] == 0 {
                HookAction::Respond(
                    json!({"shard": 0, "objects": 0, "bytes": 0, "already_done": false}),
                )
            } else {
                HookAction::Forward
            }
        })
    });
    hooks().lock().unwrap().insert(registry.clone(), skip);
    let machine = state_machine(stack, "s3quilt-missing-fragment").await;
    let report = run(
        stack,
        &machine,
        &ExecutionInput::new(request(&source, &registry)),
        "t",
    )
    .await;

    assert_eq!(report.status, "FAILED", "{report:#?}");
    assert_eq!(
        report.error.as_deref(),
        Some("S3Quilt.MissingFragments"),
        "{report:#?}"
    );
    let cause = report.cause.clone().unwrap_or_default();
    assert!(
        cause.contains("shards [0]") && cause.contains("no package is written"),
        "{cause}"
    );
    assert!(cause.contains("rolled back: 4 objects removed"), "{cause}");
    let shards = report.shards.expect("map run counts");
    assert_eq!((shards.total, shards.succeeded), (3, 3));
    let left = list_all_versions(&client, &registry).await;
    assert!(left.is_empty(), "left in the registry: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_and_invalid_requests_end_after_the_plan() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    let machine = state_machine(stack, "s3quilt-plan-only").await;

    let mut dry = request(&source, &registry);
    dry.dry_run = true;
    let report = run(stack, &machine, &ExecutionInput::new(dry), "t").await;
    assert_eq!(report.status, "SUCCEEDED", "{report:#?}");
    let output = report.output.expect("output");
    assert_eq!(output.status, "planned");
    assert_eq!(output.plan["objects"], 7);
    assert!(output.package.is_none());
    assert!(report.shards.is_none(), "a dry run starts no Map");

    let mut bad = request(&source, &registry);
    bad.package_name = "no-namespace".into();
    let report = run(stack, &machine, &ExecutionInput::new(bad), "t").await;
    assert_eq!(report.status, "FAILED");
    assert_eq!(
        report.error.as_deref(),
        Some("S3Quilt.InvalidRequest"),
        "{report:#?}"
    );
    assert!(report.cause.unwrap_or_default().contains("package_name"));

    let left = list_all_versions(&client, &registry).await;
    assert!(left.is_empty(), "a plan-only run wrote {left:?}");
}

/// What a copier that dies mid-shard leaves: an open attempt of `shard` and a copy of its first
/// object (tagged, as every copy), and no fragment or failure record.
async fn copy_first_object_then_die(
    store: Arc<dyn ObjectStore>,
    registry: &str,
    run_id: &str,
    shard: u32,
) {
    let staging = Staging::new(store.clone(), registry, run_id);
    let plan = staging.plan().await.unwrap();
    let doc: Shard = staging.require(&staging.shard_key(shard)).await.unwrap();
    let attempt = new_attempt_id();
    open_attempt(&staging, &doc, &attempt, false).await.unwrap();
    let first = Shard {
        shard,
        objects: doc.objects[..1].to_vec(),
    };
    copy_objects(
        store.as_ref(),
        &plan,
        &first,
        &CopyOptions::new(2),
        &|_| {},
        &attempt,
    )
    .await
    .unwrap();
}

/// On the first invocation of shard 1's copier, copies its first object and dies with
/// `error_type`; later invocations run the copier.
fn copier_dies_mid_shard(stack: &'static SfnStack, error_type: &'static str) -> InvokeHook {
    let died = Arc::new(Mutex::new(false));
    Arc::new(move |call: InvokeCall| {
        let died = died.clone();
        Box::pin(async move {
            if call.function != "copier" || call.payload["shard"] != 1 {
                return HookAction::Forward;
            }
            if std::mem::replace(&mut *died.lock().unwrap(), true) {
                return HookAction::Forward;
            }
            let store = S3Store::shared(stack.s3_client());
            let registry = call.payload["registry_bucket"]
                .as_str()
                .unwrap()
                .to_string();
            let run_id = call.payload["run_id"].as_str().unwrap().to_string();
            // On a thread of its own: the hook's future must be Send for every lifetime, which
            // rustc cannot prove of the copier's streams.
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Handle::current()
                    .block_on(copy_first_object_then_die(store, &registry, &run_id, 1))
            })
            .await
            .unwrap();
            HookAction::Fail(error_type.to_string())
        })
    })
}

/// Every entry of the latest `team/sample` in `registry` names an object version that exists,
/// and nothing under the package's folder is left that no entry names (no orphan version).
async fn assert_complete_and_no_orphans(stack: &SfnStack, registry: &str) -> String {
    let client = stack.s3_client();
    let store = S3Store::shared(client.clone());
    let (top_hash, manifest) = latest(store.clone(), registry, "team/sample").await;
    let mut named = std::collections::BTreeSet::new();
    for entry in &manifest.entries {
        let physical: PhysicalKey = entry.physical_keys[0].parse().unwrap();
        assert_eq!(physical.bucket, registry);
        store
            .head(registry, &physical.key, physical.version_id.as_deref())
            .await
            .unwrap_or_else(|e| panic!("entry {}: {e}", entry.logical_key.as_str()));
        named.insert((physical.key.clone(), physical.version_id.clone()));
    }
    let versions = list_all_versions(&client, registry).await;
    let versioned = manifest.entries.iter().any(|e| {
        e.physical_keys[0]
            .parse::<PhysicalKey>()
            .unwrap()
            .version_id
            .is_some()
    });
    for (key, version, delete_marker) in versions
        .iter()
        .filter(|(k, _, _)| k.starts_with("team/sample/"))
    {
        assert!(!delete_marker, "delete marker at {key}");
        let version = if versioned { version.clone() } else { None };
        assert!(
            named.contains(&(key.clone(), version.clone())),
            "{key} {version:?} is in no entry (an orphan of an earlier attempt)"
        );
    }
    let staging = list_all(
        store.as_ref(),
        registry,
        ".s3quilt/runs/",
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    top_hash
}

fn calls_of(stack: &SfnStack, function: &str, registry: &str) -> usize {
    stack
        .router()
        .invocations()
        .iter()
        .filter(|c| c.function == function && c.payload["registry_bucket"] == registry)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copier_dying_mid_shard_is_rolled_back_after_its_time_limit() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let source = create_bucket(&client, true).await;
    seed(&client, &source, &sample()).await;
    let machine = state_machine(stack, "s3quilt-copier-dies").await;
    for versioned in [true, false] {
        let registry = create_bucket(&client, versioned).await;
        hooks().lock().unwrap().insert(
            registry.clone(),
            copier_dies_mid_shard(stack, "Sandbox.Timedout"),
        );
        let report = run(
            stack,
            &machine,
            &ExecutionInput::new(request(&source, &registry)),
            &format!("dies-{versioned}"),
        )
        .await;
        assert_eq!(report.status, "FAILED", "{report:#?}");
        let cause = report.cause.clone().unwrap_or_default();
        assert!(cause.contains("rolled back: "), "{cause}");
        assert!(!cause.contains("NOT removed"), "{cause}");
        // The dead attempt's copy is found by its tag once the attempt is past the copier's
        // time limit: nothing of the run is left, of any version.
        let left = list_all_versions(&client, &registry).await;
        assert!(
            left.is_empty(),
            "versioned={versioned}: left in the registry: {left:?}"
        );
        assert!(calls_of(stack, "rollback", &registry) >= 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_retried_after_its_copier_died_publishes_without_orphans() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let source = create_bucket(&client, true).await;
    seed(&client, &source, &sample()).await;
    let machine = state_machine(stack, "s3quilt-copier-retried").await;
    let mut hashes = Vec::new();
    for versioned in [true, false] {
        let registry = create_bucket(&client, versioned).await;
        hooks().lock().unwrap().insert(
            registry.clone(),
            copier_dies_mid_shard(stack, "S3Quilt.Transient"),
        );
        let report = run(
            stack,
            &machine,
            &ExecutionInput::new(request(&source, &registry)),
            &format!("retried-{versioned}"),
        )
        .await;
        assert_eq!(report.status, "SUCCEEDED", "{report:#?}\n{}", stack.logs());
        let copier_calls = stack
            .router()
            .invocations()
            .iter()
            .filter(|c| c.function == "copier" && c.payload["registry_bucket"] == registry.as_str())
            .filter(|c| c.payload["shard"] == 1)
            .count();
        assert_eq!(copier_calls, 2, "shard 1 ran twice");
        hashes.push(assert_complete_and_no_orphans(stack, &registry).await);
    }
    assert_eq!(
        hashes[0], hashes[1],
        "the same package on both kinds of target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finalizer_dying_after_it_published_ends_in_that_version() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    let first = Arc::new(Mutex::new(true));
    let hook: InvokeHook = Arc::new(move |call: InvokeCall| {
        let first = first.clone();
        Box::pin(async move {
            if call.function == "finalizer" && std::mem::replace(&mut *first.lock().unwrap(), false)
            {
                // It wrote the manifest and pointers, then hit its timeout before answering.
                HookAction::ForwardThenFail("Sandbox.Timedout".into())
            } else {
                HookAction::Forward
            }
        })
    });
    hooks().lock().unwrap().insert(registry.clone(), hook);
    let machine = state_machine(stack, "s3quilt-finalizer-dies").await;
    let report = run(
        stack,
        &machine,
        &ExecutionInput::new(request(&source, &registry)),
        "t",
    )
    .await;
    // Rollback sees the run is published and hands it back to the finalizer: the execution
    // succeeds with that version, and not one object of it was deleted.
    assert_eq!(report.status, "SUCCEEDED", "{report:#?}\n{}", stack.logs());
    let output = report.output.clone().expect("output");
    let top_hash = assert_complete_and_no_orphans(stack, &registry).await;
    assert_eq!(
        output.package.expect("package")["top_hash"],
        json!(top_hash)
    );
    assert_eq!(calls_of(stack, "rollback", &registry), 1);
    assert_eq!(calls_of(stack, "finalizer", &registry), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_stopped_mid_copy_is_cleaned_up_by_the_janitor() {
    let stack = shared_stack().await;
    let client = stack.s3_client();
    let store = S3Store::shared(client.clone());
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    seed(&client, &source, &sample()).await;
    // Shard 2's copier is held back: its invocation outlives the execution, as a Lambda
    // invocation outlives a stopped execution.
    let released = Arc::new(tokio::sync::Notify::new());
    let late_done = Arc::new(tokio::sync::Notify::new());
    let (release, done) = (released.clone(), late_done.clone());
    let hook: InvokeHook = Arc::new(move |call: InvokeCall| {
        let (release, done) = (release.clone(), done.clone());
        Box::pin(async move {
            if call.function == "copier" && call.payload["shard"] == 2 {
                release.notified().await;
                // Run the copier now, after the janitor: it must copy nothing.
                let store = S3Store::shared(stack_client());
                let payload = call.payload.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let config = s3quilt_core::aws::StepConfig::default();
                    tokio::runtime::Handle::current()
                        .block_on(s3quilt_core::aws::copy_step(store, &config, payload, None))
                })
                .await
                .unwrap();
                eprintln!("late copier: {result:?}");
                done.notify_one();
                HookAction::Fail("States.Timeout".into())
            } else {
                HookAction::Forward
            }
        })
    });
    hooks().lock().unwrap().insert(registry.clone(), hook);
    let machine = state_machine(stack, "s3quilt-stopped").await;
    let sfn = stack.sfn_client();
    let input = ExecutionInput::new(request(&source, &registry));
    let started = start_execution(&sfn, &machine, &input, "stopped")
        .await
        .unwrap();
    // Wait until shards 0 and 1 have their fragments (shard 2 is held).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let run_id = loop {
        let fragments = list_all(
            store.as_ref(),
            &registry,
            ".s3quilt/runs/",
            &Default::default(),
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.key.contains("/fragments/"))
        .map(|o| o.key)
        .collect::<Vec<_>>();
        if fragments.len() == 2 {
            break fragments[0].split('/').nth(2).unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shards 0 and 1 never finished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    sfn.stop_execution()
        .execution_arn(&started.execution_arn)
        .send()
        .await
        .unwrap();
    let copies_before = list_all(store.as_ref(), &registry, "team/", &Default::default())
        .await
        .unwrap();
    assert!(!copies_before.is_empty(), "shards 0 and 1 copied");

    // EventBridge's event for the ABORTED execution, to the janitor (the rollback binary).
    let event = json!({
        "version": "0",
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {"executionArn": started.execution_arn, "status": "ABORTED",
                   "stateMachineArn": machine, "name": started.name,
                   "input": serde_json::to_string(&input).unwrap()}
    });
    let (status, body) = tokio::task::block_in_place(|| {
        stack.invoke("rollback", &event.to_string(), Duration::from_secs(120))
    })
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["runs"][0]["run_id"], json!(run_id), "{answer}");
    assert_eq!(answer["runs"][0]["action"], "rolled_back", "{answer}");
    assert_eq!(
        answer["runs"][0]["deleted"].as_u64(),
        Some(copies_before.len() as u64),
        "{answer}"
    );

    // The held copier runs now, after the cleanup: it writes nothing.
    released.notify_one();
    tokio::time::timeout(Duration::from_secs(60), late_done.notified())
        .await
        .expect("the late copier ran");
    let left = list_all_versions(&client, &registry).await;
    assert!(left.is_empty(), "left in the registry: {left:?}");
    let status = execution_report(&sfn, None, &started.execution_arn)
        .await
        .unwrap();
    assert_eq!(status.status, "ABORTED");
}

fn stack_client() -> aws_sdk_s3::Client {
    stack().s3_client()
}
