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
//! - dry runs and invalid requests end after the plan.
//!
//! One stack serves every test of this file; hooks on the router are keyed by registry bucket
//! so the tests can run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use s3quilt_core::aws::{
    ExecutionInput, ExecutionReport, execution_report, follow_execution, start_execution,
};
use s3quilt_core::engine::{EngineOptions, Phase, Progress, RunOutcome, run_local};
use s3quilt_core::quilt::{Manifest, PackageName, PhysicalKey};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::staging::{Shard, Staging};
use s3quilt_core::storage::{ObjectStore, S3Store, list_all};
use s3quilt_tests::{
    HookAction, InvokeCall, InvokeHook, SeedObject, SfnStack, create_bucket, list_all_versions,
    seed,
};
use serde_json::json;

/// Objects per shard in the deployed functions' settings: small, so runs have several shards.
const SHARD_MAX_OBJECTS: &str = "3";

type BucketHooks = Mutex<HashMap<String, InvokeHook>>;

fn hooks() -> &'static BucketHooks {
    static HOOKS: OnceLock<BucketHooks> = OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// The shared stack (started on first use; its processes stop when the test process ends).
fn stack() -> &'static SfnStack {
    static STACK: OnceLock<SfnStack> = OnceLock::new();
    STACK.get_or_init(|| {
        let stack = SfnStack::start(&[("S3QUILT_SHARD_MAX_OBJECTS", SHARD_MAX_OBJECTS)]);
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
