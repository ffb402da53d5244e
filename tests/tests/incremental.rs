//! Incremental versions (issue 14): a run starts from the package's latest version, reuses the
//! entries of unchanged objects without a request, copies only new and changed objects, drops
//! removed ones, and writes no version when nothing changed. Every version of a chain is read
//! back by quilt3, whose bytes must be what the source held when that version was made, on a
//! versioned and on an unversioned registry, with failures and staged (AWS) runs in between.

use std::collections::BTreeMap;
use std::sync::Arc;

use s3quilt_core::copy::{CopyOptions, copy_shard_from_staging};
use s3quilt_core::engine::{EngineError, EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::finalize::finalize;
use s3quilt_core::plan::{PlanError, PlanOptions, plan};
use s3quilt_core::request::{ObjectMetadata, PackageRequest};
use s3quilt_core::reuse::IncrementalSummary;
use s3quilt_core::storage::{ObjectStore, S3Store, StoreErrorKind};
use s3quilt_tests::{
    FaultRule, InstrumentedStore, S3Server, SeedObject, create_bucket, list_all_versions,
    run_oracle, seed, server_tests,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the source holds at one moment: logical key (relative to `data/`) → bytes.
type Content = BTreeMap<String, Vec<u8>>;

async fn put_all(client: &aws_sdk_s3::Client, bucket: &str, content: &Content) {
    let objects: Vec<SeedObject> = content
        .iter()
        .map(|(key, body)| SeedObject::new(format!("data/{key}"), body.clone()))
        .collect();
    seed(client, bucket, &objects).await;
}

async fn delete(client: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    client
        .delete_object()
        .bucket(bucket)
        .key(format!("data/{key}"))
        .send()
        .await
        .unwrap();
}

async fn run(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
) -> Result<RunOutcome, EngineError> {
    let options = EngineOptions {
        concurrency: 8,
        ..Default::default()
    };
    run_local(store, request, &options, Progress::new()).await
}

fn incremental(plan: &s3quilt_core::plan::PlanSummary) -> &IncrementalSummary {
    plan.incremental.as_ref().expect("an incremental run")
}

/// The counts of an incremental summary: (reused, changed, added, removed) objects.
fn counts(i: &IncrementalSummary) -> (u64, u64, u64, u64) {
    (
        i.reused.objects,
        i.changed.objects,
        i.added.objects,
        i.removed.objects,
    )
}

/// HeadObjects sent to the source bucket (the registry's workflow config gets one too).
fn source_heads(counted: &InstrumentedStore, source: &str) -> usize {
    counted
        .calls()
        .iter()
        .filter(|(operation, bucket, _)| *operation == "HeadObject" && bucket == source)
        .count()
}

/// quilt3 reads version `top_hash`: every hash valid, and each entry's bytes are `expected`.
fn assert_version_holds(server: &S3Server, registry: &str, top_hash: &str, expected: &Content) {
    let browsed = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &format!("s3://{registry}"),
            "--name",
            "team/inc",
            "--top-hash",
            top_hash,
        ],
    );
    assert_eq!(browsed["top_hash"].as_str(), Some(top_hash));
    let entries = browsed["entries"].as_array().unwrap();
    let found: BTreeMap<String, String> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["hash_valid"], Value::Bool(true), "{e}");
            (
                e["logical_key"].as_str().unwrap().to_string(),
                e["bytes_sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wanted: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.clone(), format!("{:x}", Sha256::digest(v))))
        .collect();
    assert_eq!(found, wanted, "version {top_hash}");
}

fn package(outcome: RunOutcome) -> (s3quilt_core::plan::PlanSummary, String) {
    match outcome {
        RunOutcome::Created { plan, package } => (plan, package.top_hash),
        other => panic!("expected a new version, got {other:?}"),
    }
}

/// Five versions with changes, additions, removals and renames in between (and one run that
/// finds nothing changed); after each, every earlier version still reads as it was made.
async fn a_chain_of_incremental_versions_keeps_every_version_whole(
    server: &'static S3Server,
    versioned_registry: bool,
) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = create_bucket(&client, versioned_registry).await;
    let store: Arc<dyn ObjectStore> = S3Store::shared(client.clone());
    let request = PackageRequest::new(&source, "data", "team/inc", &format!("s3://{registry}"));
    let mut content: Content = (0..12)
        .map(|i| {
            (
                format!("part-{i:02}.csv"),
                format!("row {i}\n").into_bytes(),
            )
        })
        .collect();
    content.insert("nested/deep/x.json".into(), b"{\"x\": 1}".to_vec());
    put_all(&client, &source, &content).await;
    let mut versions: Vec<(String, Content)> = Vec::new();

    // Version 1: no base yet, so a full run.
    let (plan, v1) = package(run(store.clone(), &request).await.unwrap());
    assert!(plan.incremental.is_none(), "no base: a first version");
    versions.push((v1, content.clone()));

    // Version 2: one changed, one added, one removed, one renamed.
    content.insert("part-03.csv".into(), b"row 3, revised\n".to_vec());
    content.insert("added.txt".into(), b"new".to_vec());
    let renamed = content.remove("part-05.csv").unwrap();
    content.insert("renamed/part-05.csv".into(), renamed);
    content.remove("part-07.csv");
    for key in ["part-05.csv", "part-07.csv"] {
        delete(&client, &source, key).await;
    }
    let changes: Content = ["part-03.csv", "added.txt", "renamed/part-05.csv"]
        .iter()
        .map(|k| (k.to_string(), content[*k].clone()))
        .collect();
    put_all(&client, &source, &changes).await;
    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let (plan, v2) = package(run(counted.clone(), &request).await.unwrap());
    assert_eq!(counts(incremental(&plan)), (10, 1, 2, 2), "{plan:?}");
    assert_eq!(incremental(&plan).base, versions[0].0);
    // Only the changed and added objects are copied, and only they get a HEAD (plus the one
    // HEAD that proves read access before anything is written).
    assert_eq!(counted.count("CopyObject"), 3, "{:?}", counted.calls());
    assert_eq!(
        source_heads(&counted, &source),
        3 + 1,
        "{:?}",
        counted.calls()
    );
    versions.push((v2, content.clone()));

    // Nothing changed: no version, and no copy, HEAD or write at all.
    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let outcome = run(counted.clone(), &request).await.unwrap();
    let RunOutcome::UpToDate(plan) = outcome else {
        panic!("expected up to date, got {outcome:?}");
    };
    assert_eq!(incremental(&plan).base, versions[1].0);
    assert_eq!(counts(incremental(&plan)), (13, 0, 0, 0));
    assert_eq!(source_heads(&counted, &source), 0, "{:?}", counted.calls());
    for operation in ["CopyObject", "PutObject", "UploadPartCopy"] {
        assert_eq!(
            counted.count(operation),
            0,
            "{operation}: {:?}",
            counted.calls()
        );
    }

    // Version 3: only the message changed: a new version, still nothing copied.
    let mut with_message = request.clone();
    with_message.description = Some("same data, new words".into());
    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let (plan, v3) = package(run(counted.clone(), &with_message).await.unwrap());
    assert_eq!(counts(incremental(&plan)), (13, 0, 0, 0));
    assert_eq!(counted.count("CopyObject"), 0);
    versions.push((v3, content.clone()));

    // Version 4: the key that version 1 and 2 reference changes again, in `listing` mode.
    content.insert("part-03.csv".into(), b"row 3, third take\n".to_vec());
    content.insert("part-00.csv".into(), b"row 0, revised\n".to_vec());
    let changes: Content = ["part-03.csv", "part-00.csv"]
        .iter()
        .map(|k| (k.to_string(), content[*k].clone()))
        .collect();
    put_all(&client, &source, &changes).await;
    let mut listing = with_message.clone();
    listing.object_metadata = ObjectMetadata::Listing;
    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let (plan, v4) = package(run(counted.clone(), &listing).await.unwrap());
    assert_eq!(counts(incremental(&plan)), (11, 2, 0, 0));
    // Listing mode reads no metadata: the one HEAD proves read access.
    assert_eq!(source_heads(&counted, &source), 1, "{:?}", counted.calls());
    versions.push((v4, content.clone()));

    // Version 5: the removed key comes back with other bytes, and one more goes.
    content.insert("part-07.csv".into(), b"back again".to_vec());
    content.remove("part-11.csv");
    delete(&client, &source, "part-11.csv").await;
    let back: Content = [("part-07.csv".to_string(), content["part-07.csv"].clone())].into();
    put_all(&client, &source, &back).await;
    let (plan, v5) = package(run(store.clone(), &request).await.unwrap());
    assert_eq!(counts(incremental(&plan)), (12, 0, 1, 1));
    versions.push((v5, content.clone()));

    // Every version still holds exactly what the source held when it was made.
    for (top_hash, expected) in &versions {
        assert_version_holds(server, &registry, top_hash, expected);
    }
    if !versioned_registry {
        // No key was written twice: each copy is a key of its own (changed objects whose key
        // was taken went under the run's own folder), so nothing could be overwritten.
        let keys: Vec<String> = list_all_versions(&client, &registry)
            .await
            .into_iter()
            .filter(|(key, _, _)| key.starts_with("team/inc/"))
            .map(|(key, _, _)| key)
            .collect();
        let scoped = keys.iter().filter(|k| k.contains("/.s3quilt/")).count();
        assert_eq!(scoped, 4, "{keys:?}");
    }
}

async fn chain_on_a_versioned_registry(server: &'static S3Server) {
    a_chain_of_incremental_versions_keeps_every_version_whole(server, true).await;
}

async fn chain_on_an_unversioned_registry(server: &'static S3Server) {
    a_chain_of_incremental_versions_keeps_every_version_whole(server, false).await;
}

/// A failed and an interrupted incremental run roll back what they copied and never touch
/// the reused objects: the base (and the version before it) read as they were.
async fn a_failed_incremental_run_leaves_earlier_versions_whole(server: &'static S3Server) {
    for versioned in [true, false]
        .into_iter()
        .filter(|v| !v || server.kind().supports_versioning())
    {
        let client = server.client().await;
        let source = server.versioned_bucket_where_supported().await;
        let registry = create_bucket(&client, versioned).await;
        let store: Arc<dyn ObjectStore> = S3Store::shared(client.clone());
        let request = PackageRequest::new(&source, "data", "team/inc", &format!("s3://{registry}"));
        let mut content: Content = (0..6)
            .map(|i| (format!("f{i}.txt"), format!("v1 {i}").into_bytes()))
            .collect();
        put_all(&client, &source, &content).await;
        let (_, v1) = package(run(store.clone(), &request).await.unwrap());
        let before = list_all_versions(&client, &registry).await;

        // Three changes; the second copy fails for good: the run rolls back.
        let changes: Content = (0..3)
            .map(|i| (format!("f{i}.txt"), format!("v2 {i}").into_bytes()))
            .collect();
        put_all(&client, &source, &changes).await;
        let failing = InstrumentedStore::new(
            store.clone(),
            vec![FaultRule {
                operation: "CopyObject",
                calls: 2..=2,
                kind: StoreErrorKind::AccessDenied,
            }],
        );
        let err = run(failing, &request).await.unwrap_err();
        assert!(matches!(err, EngineError::Copy { .. }), "{err}");
        assert_eq!(
            list_all_versions(&client, &registry).await,
            before,
            "versioned={versioned}: the registry is exactly as before"
        );
        assert_version_holds(server, &registry, &v1, &content);

        // The same run, not failing, then makes version 2; version 1 still reads as it was.
        let (plan, v2) = package(run(store.clone(), &request).await.unwrap());
        assert_eq!(counts(incremental(&plan)), (3, 3, 0, 0));
        let v1_content = content.clone();
        content.extend(changes);
        assert_version_holds(server, &registry, &v2, &content);
        assert_version_holds(server, &registry, &v1, &v1_content);
    }
}

/// A dry run reports what an incremental run would reuse and copy; `verify_base` finds a
/// reused entry whose object is gone and copies it again; `--full` copies everything; a named
/// base that does not exist is refused naming `base`.
async fn dry_run_verify_full_and_a_missing_base(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = server.versioned_bucket_where_supported().await;
    let store: Arc<dyn ObjectStore> = S3Store::shared(client.clone());
    let request = PackageRequest::new(&source, "data", "team/inc", &format!("s3://{registry}"));
    let content: Content = (0..4)
        .map(|i| (format!("f{i}.txt"), format!("v1 {i}").into_bytes()))
        .collect();
    put_all(&client, &source, &content).await;
    let (_, v1) = package(run(store.clone(), &request).await.unwrap());

    let mut dry = request.clone();
    dry.dry_run = true;
    let RunOutcome::Planned(plan) = run(store.clone(), &dry).await.unwrap() else {
        panic!("a dry run plans");
    };
    assert!(incremental(&plan).up_to_date);
    assert_eq!(plan.estimated_requests.copy_object, 0);
    assert_eq!(plan.estimated_requests.put, 0);

    // Someone deletes the copy of f1 (every version of it): verify_base finds it.
    let versions = list_all_versions(&client, &registry).await;
    for (key, version, _) in versions.iter().filter(|(k, _, _)| k == "team/inc/f1.txt") {
        let mut delete = client.delete_object().bucket(&registry).key(key);
        if let Some(v) = version {
            delete = delete.version_id(v);
        }
        delete.send().await.unwrap();
    }
    let mut verify = request.clone();
    verify.verify_base = true;
    let (plan, v2) = package(run(store.clone(), &verify).await.unwrap());
    let found = incremental(&plan);
    assert_eq!(found.verified, Some(4));
    assert_eq!(found.missing.len(), 1, "{found:?}");
    assert!(found.missing[0].contains("f1.txt"));
    assert_eq!(counts(found), (3, 1, 0, 0));
    assert_eq!(
        v2, v1,
        "same content: the same top hash, now with a live copy of f1"
    );
    assert_version_holds(server, &registry, &v2, &content);

    let mut full = request.clone();
    full.incremental = false;
    // A full run writes every key again: on a registry that keeps no versions, only when asked.
    full.overwrite_existing = !server.kind().supports_versioning();
    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let (plan, _) = package(run(counted.clone(), &full).await.unwrap());
    assert!(plan.incremental.is_none());
    assert_eq!(counted.count("CopyObject"), 4);

    let mut missing = request.clone();
    missing.base = Some("0".repeat(64));
    let err = plan_err(store.clone(), &missing).await;
    assert!(
        err.to_string()
            .starts_with("base: cannot read the base version"),
        "{err}"
    );
}

async fn plan_err(store: Arc<dyn ObjectStore>, request: &PackageRequest) -> PlanError {
    plan(store, request, &PlanOptions::default())
        .await
        .expect_err("the plan is refused")
}

/// The AWS engine's path: the planner stages the reused entries and shards only what must be
/// copied; copiers copy the shards from staging and the finalizer merges both. In place
/// (`copy: false`) too.
async fn staged_runs_shard_only_what_changed(server: &'static S3Server) {
    for copy in [true, false] {
        let client = server.client().await;
        let source = server.versioned_bucket_where_supported().await;
        let registry = server.versioned_bucket_where_supported().await;
        let store: Arc<dyn ObjectStore> = S3Store::shared(client.clone());
        let mut request =
            PackageRequest::new(&source, "data", "team/inc", &format!("s3://{registry}"));
        request.copy = copy;
        let mut content: Content = (0..30)
            .map(|i| (format!("f{i:02}.txt"), format!("v1 {i}").into_bytes()))
            .collect();
        put_all(&client, &source, &content).await;
        let (_, v1) = package(run(store.clone(), &request).await.unwrap());

        let changes: Content = [("f07.txt".to_string(), b"v2 7".to_vec())].into();
        put_all(&client, &source, &changes).await;
        content.extend(changes);
        let options = PlanOptions {
            shard_max_objects: 4,
            ..PlanOptions::default()
        };
        let planned = plan(store.clone(), &request, &options).await.unwrap();
        assert_eq!(
            planned.shards.len(),
            1,
            "only the changed object is sharded"
        );
        assert_eq!(planned.shards[0].objects.len(), 1);
        let run_plan = planned.run.as_ref().unwrap();
        assert_eq!(run_plan.base.as_ref().unwrap().reused_objects, 29);
        assert_eq!(run_plan.objects, 30);
        let run_id = run_plan.run_id.clone();
        copy_shard_from_staging(store.clone(), &registry, &run_id, 0, &CopyOptions::new(8))
            .await
            .unwrap();
        let package = finalize(store.clone(), &registry, &run_id).await.unwrap();
        assert_eq!(package.objects, 30);
        assert_version_holds(server, &registry, &package.top_hash, &content);
        assert_ne!(package.top_hash, v1);
        assert!(
            list_all_versions(&client, &registry)
                .await
                .iter()
                .all(|(key, _, _)| !key.starts_with(".s3quilt/runs/")),
            "staging is removed"
        );
    }
}

server_tests! {
    // `ServerKind::supports_versioning`
    chain_on_a_versioned_registry => [moto, localstack, seaweedfs];
    chain_on_an_unversioned_registry => [moto, localstack, seaweedfs, demo];
    a_failed_incremental_run_leaves_earlier_versions_whole => [moto, localstack, seaweedfs, demo];
    dry_run_verify_full_and_a_missing_base => [moto, localstack, seaweedfs, demo];
    staged_runs_shard_only_what_changed => [moto, localstack, seaweedfs, demo];
}
