//! A run is a transaction, tested from outside: faults on the wire (a fault-injecting proxy in
//! front of a real S3 server), processes killed at each phase boundary, concurrent runs of one
//! package and a foreign writer. After every case either a complete new version verifies (every
//! entry's bytes hash to its hash, in every version of the registry), or the registry's full
//! version listing is exactly what it was before, after at most one `runs abort`/`runs resume`.
//!
//! The suite runs on every server of `S3QUILT_SERVERS` that can serve it; a case that rests on
//! an S3 rule a server ignores (conditional copies, object tagging, suspended versioning, the
//! removal of `null` delete markers) asks the server's kind (see `ServerKind`'s capability
//! table) or is not listed for that server, with the capability named beside it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};
use futures::StreamExt;
use s3quilt_core::engine::{EngineError, EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::plan::{PlanError, PlanOptions, plan};
use s3quilt_core::quilt::{ObjectHasher, PackageName, PhysicalKey};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::retry::RetryPolicy;
use s3quilt_core::storage::{ObjectStore, S3Store, StoreErrorKind, get_bytes};
use s3quilt_core::transaction::{RunState, abort_run, list_runs, resume_run};
use s3quilt_tests::{
    Fault, FaultProxy, ProxyRule, S3Server, SeedObject, Select, ServerKind, create_bucket,
    list_all_versions, s3quilt_bin, seed, server_tests, suspend_versioning,
};

const MIB: usize = 1024 * 1024;
const BASE: &str = "team/base";
const PACKAGE: &str = "team/pkg";

/// The target kinds a rule of the transaction is stated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Versioned,
    Unversioned,
    Suspended,
}

impl Target {
    /// The kinds this server can serve faithfully: versioned ones need a server that keeps
    /// versions, suspended versioning one whose versioning answer the SDK can read and that
    /// removes the `null` delete markers a rollback on such a bucket leaves.
    fn on(kind: ServerKind) -> Vec<Target> {
        if !kind.supports_versioning() {
            return vec![Target::Unversioned];
        }
        let mut targets = vec![Target::Versioned, Target::Unversioned];
        if kind.parses_bucket_versioning() && kind.removes_null_delete_markers() {
            targets.push(Target::Suspended);
        }
        targets
    }
}

async fn make_registry(client: &aws_sdk_s3::Client, target: Target) -> String {
    let bucket = create_bucket(client, target != Target::Unversioned).await;
    if target == Target::Suspended {
        suspend_versioning(client, &bucket).await;
    }
    bucket
}

/// A store talking to `endpoint` (the server, or a proxy in front of it) with short timeouts.
fn store_via(server: &S3Server, endpoint: &str, read_timeout: Duration) -> Arc<dyn ObjectStore> {
    let (key, secret) = server.credentials();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .force_path_style(true)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, secret, None, None, "tests"))
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(read_timeout)
                .build(),
        )
        .build();
    S3Store::shared(aws_sdk_s3::Client::from_conf(config))
}

/// Every version of `package` in `registry`: its manifest hashes to its top hash and every
/// entry's bytes (at the pinned version) hash to the entry's hash. Returns the versions.
async fn verify_package(
    store: &Arc<dyn ObjectStore>,
    registry: &str,
    package: &str,
) -> Result<usize, String> {
    let name: PackageName = package.parse().unwrap();
    let reg = Registry::new(store.clone(), registry);
    let versions = reg
        .versions(&name)
        .await
        .map_err(|e| format!("{package}: {e}"))?;
    for version in &versions {
        let manifest = reg
            .manifest(&version.top_hash)
            .await
            .map_err(|e| format!("{package}@{}: {e}", version.timestamp))?;
        for entry in &manifest.entries {
            let physical: PhysicalKey = entry.physical_keys[0].parse().unwrap();
            let bytes = get_bytes(
                store.as_ref(),
                &physical.bucket,
                &physical.key,
                physical.version_id.as_deref(),
            )
            .await
            .map_err(|e| {
                format!(
                    "{package}@{}: entry {} references a missing object: {e}",
                    version.timestamp, entry.logical_key
                )
            })?;
            let mut hasher = ObjectHasher::new(entry.hash().kind, bytes.len() as u64);
            hasher.update(&bytes);
            if hasher.finish() != entry.hash() {
                return Err(format!(
                    "{package}@{}: entry {} has other bytes than its hash",
                    version.timestamp, entry.logical_key
                ));
            }
        }
    }
    Ok(versions.len())
}

/// Finishes what a run left in `registry`: resumes committed runs, aborts the others. Returns
/// (resumed, aborted).
async fn finish_leftovers(store: &Arc<dyn ObjectStore>, registry: &str) -> (usize, usize) {
    let (mut resumed, mut aborted) = (0, 0);
    for run in list_runs(store.clone(), registry).await.unwrap() {
        match run.state {
            RunState::Committed { .. } => {
                resume_run(store.clone(), registry, &run.run_id)
                    .await
                    .unwrap_or_else(|e| panic!("resume {}: {e}", run.run_id));
                resumed += 1;
            }
            _ => {
                let report = abort_run(store.clone(), registry, &run.run_id)
                    .await
                    .unwrap_or_else(|e| panic!("abort {}: {e}", run.run_id));
                assert!(report.not_deleted.is_empty(), "{report:?}");
                aborted += 1;
            }
        }
    }
    (resumed, aborted)
}

fn small(key: &str, body: &str) -> SeedObject {
    SeedObject::new(key, body.as_bytes().to_vec())
}

/// The shared source of a server: `base/` (version 1 of another package) and `data/` (the run
/// under test: three small objects and one that takes the multipart path).
async fn source_bucket(server: &'static S3Server) -> String {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let big: Vec<u8> = (0..9 * MIB).map(|i| (i % 251) as u8).collect();
    seed(
        &client,
        &source,
        &[
            small("base/one.txt", "one"),
            small("base/two/three.txt", "three"),
            small("data/a.csv", "a,b\n1,2\n"),
            small("data/nested/b.json", "{\"b\": 1}"),
            small("data/empty.txt", ""),
            SeedObject::new("data/big.bin", big),
        ],
    )
    .await;
    source
}

/// What one fault case ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The run succeeded; its version verifies.
    Published,
    /// The run failed and was rolled back: the registry is as before.
    RolledBack,
    /// The run left work that `runs resume` finished: the version verifies.
    Resumed,
    /// The run left work that `runs abort` finished: the registry is as before.
    Aborted,
}

/// One case of the matrix: version 1 of `team/base` published directly, then `team/pkg` run
/// through a proxy with `fault` on `operation`; then the invariants.
async fn fault_case(
    server: &'static S3Server,
    source: &str,
    target: Target,
    operation: &'static str,
    select: Select,
    fault: Fault,
) -> Ending {
    let client = server.client().await;
    let registry = make_registry(&client, target).await;
    let direct = store_via(server, server.endpoint(), Duration::from_secs(30));
    let base = PackageRequest::new(source, "base", BASE, &registry);
    run_local(
        direct.clone(),
        &base,
        &EngineOptions::default(),
        Progress::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("version 1: {e}"));
    let before = list_all_versions(&client, &registry).await;

    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation,
            select,
            fault,
        }],
    );
    let proxied = store_via(server, &proxy.endpoint(), Duration::from_secs(3));
    let request = PackageRequest::new(source, "data", PACKAGE, &registry);
    let options = EngineOptions {
        concurrency: 8,
        ..EngineOptions::default()
    };
    let result = run_local(proxied, &request, &options, Progress::new()).await;
    drop(proxy);
    let (resumed, aborted) = finish_leftovers(&direct, &registry).await;
    let what = format!("{operation} {target:?} on {:?}", server.kind());
    let ending = match (&result, resumed, aborted) {
        (Ok(_), 0, 0) => Ending::Published,
        (Ok(_), _, _) => Ending::Resumed,
        (Err(_), 0, 0) => Ending::RolledBack,
        (Err(_), 0, _) => Ending::Aborted,
        (Err(_), _, _) => Ending::Resumed,
    };
    match ending {
        Ending::Published | Ending::Resumed => {
            let versions = verify_package(&direct, &registry, PACKAGE)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(versions, 1, "{what}: one new version");
        }
        Ending::RolledBack | Ending::Aborted => {
            assert_eq!(
                list_all_versions(&client, &registry).await,
                before,
                "{what}: the registry is as before ({result:?})"
            );
        }
    }
    // The published version is never touched.
    assert_eq!(
        verify_package(&direct, &registry, BASE).await,
        Ok(1),
        "{what}: version 1"
    );
    let staging_left: Vec<_> = list_all_versions(&client, &registry)
        .await
        .into_iter()
        .filter(|(k, _, _)| k.starts_with(".s3quilt/runs/"))
        .collect();
    assert!(
        staging_left.is_empty(),
        "{what}: no staging is left ({ending:?}): {staging_left:?}"
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(&registry)
        .send()
        .await
        .expect("ListMultipartUploads");
    assert!(
        uploads.uploads().is_empty(),
        "{what}: no multipart upload is left open: {:?}",
        uploads.uploads()
    );
    ending
}

/// Every operation the local engine issues (as the proxy names them).
const OPERATIONS: [&str; 13] = [
    "ListObjectsV2",
    "GetBucketVersioning",
    "ListObjectVersions",
    "HeadObject",
    "GetObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "PutObject",
    "DeleteObject",
    "GetObjectTagging",
];

/// The faults: five on the first call of an operation, two on every call.
fn faults() -> Vec<(&'static str, Select, Fault)> {
    let first = || Select::Calls(1..=1);
    let every = || Select::Calls(1..=usize::MAX);
    vec![
        ("5xx", first(), Fault::Status(500, "InternalError")),
        ("SlowDown", first(), Fault::Status(503, "SlowDown")),
        ("reset before", first(), Fault::Reset),
        ("applied, reply lost", first(), Fault::ApplyThenReset),
        (
            "stall past timeout",
            first(),
            Fault::StallPastTimeout(Duration::from_secs(4)),
        ),
        (
            "5xx, every call",
            every(),
            Fault::Status(500, "InternalError"),
        ),
        ("applied, every reply lost", every(), Fault::ApplyThenReset),
    ]
}

async fn fault_matrix(server: &'static S3Server) {
    let source = source_bucket(server).await;
    let mut cases = Vec::new();
    for target in Target::on(server.kind()) {
        for operation in OPERATIONS {
            for (name, select, fault) in faults() {
                cases.push((target, operation, name, select, fault));
            }
        }
    }
    let total = cases.len();
    let started = Instant::now();
    let endings: Vec<(Target, &str, &str, Ending)> = futures::stream::iter(cases.into_iter().map(
        |(target, operation, name, select, fault)| {
            let source = source.clone();
            async move {
                let ending = fault_case(server, &source, target, operation, select, fault).await;
                (target, operation, name, ending)
            }
        },
    ))
    .buffer_unordered(6)
    .collect()
    .await;
    let mut counts: BTreeMap<Ending, usize> = BTreeMap::new();
    for (_, _, _, ending) in &endings {
        *counts.entry(*ending).or_default() += 1;
    }
    eprintln!(
        "fault matrix on {:?}: {total} cases in {:.0?}: {counts:?}",
        server.kind(),
        started.elapsed()
    );
    assert_eq!(endings.len(), total);
    // Single faults are retried away: most cases publish.
    assert!(
        counts.get(&Ending::Published).copied().unwrap_or(0) >= total / 2,
        "{counts:?}"
    );
}

server_tests! {
    fault_matrix => [moto, localstack, seaweedfs, demo];
}

/// Finding 2: one retry layer. A copy that fails on every attempt is sent exactly the
/// documented number of times, not that times the SDK's own attempts.
async fn a_failing_request_goes_on_the_wire_the_documented_number_of_times(
    server: &'static S3Server,
) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = server.versioned_bucket_where_supported().await;
    seed(&client, &source, &[small("data/a.csv", "a")]).await;
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "CopyObject",
            select: Select::Calls(1..=usize::MAX),
            fault: Fault::Status(500, "InternalError"),
        }],
    );
    let store = store_via(server, &proxy.endpoint(), Duration::from_secs(10));
    let request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    let err = run_local(store, &request, &EngineOptions::default(), Progress::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Copy { .. }), "{err}");
    let copies = proxy
        .log()
        .iter()
        .filter(|r| r.operation == "CopyObject")
        .count();
    assert_eq!(copies, RetryPolicy::default().max_attempts as usize);
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

/// Finding 4: runs of one package finalizing in the same second each get a timestamped
/// pointer of their own, so every version is listed (on the demo's server, whose buckets keep no
/// versions, too).
async fn concurrent_runs_of_one_package_each_get_their_own_version(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = server.versioned_bucket_where_supported().await;
    // On a versioned registry the runs copy to one key (each version pins its own); one that
    // keeps no versions refuses a second writer of a key, so there each run has its own.
    let versioned = server.kind().supports_versioning();
    for run in 0..3 {
        let name = if versioned {
            "a.csv".to_string()
        } else {
            format!("a{run}.csv")
        };
        seed(
            &client,
            &source,
            &[small(&format!("run{run}/{name}"), &format!("run {run}"))],
        )
        .await;
    }
    let store = store_via(server, server.endpoint(), Duration::from_secs(30));
    let results =
        futures::future::join_all(
            (0..3).map(|run| {
                let store = store.clone();
                let request =
                    PackageRequest::new(&source, &format!("run{run}"), PACKAGE, &registry);
                async move {
                    run_local(store, &request, &EngineOptions::default(), Progress::new()).await
                }
            }),
        )
        .await;
    let mut stamps: Vec<u64> = results
        .into_iter()
        .map(|r| match r.unwrap() {
            RunOutcome::Created { package, .. } => package.timestamp,
            other => panic!("{other:?}"),
        })
        .collect();
    stamps.sort();
    stamps.dedup();
    assert_eq!(stamps.len(), 3, "three pointers: {stamps:?}");
    assert_eq!(verify_package(&store, &registry, PACKAGE).await, Ok(3));
}

/// Finding 1: a run never adopts an object it did not write, even when its own copy's reply
/// was lost and the key holds an object of the same content: another run's copy stays, and so
/// does the other run's version.
async fn a_lost_reply_never_adopts_another_runs_object(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = create_bucket(&client, false).await;
    seed(&client, &source, &[small("data/a.csv", "same bytes")]).await;
    let direct = store_via(server, server.endpoint(), Duration::from_secs(30));
    let request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    // Both runs plan while the key is free.
    let plan_a = plan(direct.clone(), &request, &PlanOptions::default())
        .await
        .unwrap();
    let plan_b = plan(direct.clone(), &request, &PlanOptions::default())
        .await
        .unwrap();
    let (run_a, run_b) = (plan_a.run.unwrap(), plan_b.run.unwrap());
    let options = s3quilt_core::copy::CopyOptions::new(4);
    let mode = s3quilt_core::copy::ShardMode::LAMBDA;
    s3quilt_core::copy::copy_shard(
        direct.clone(),
        &run_a,
        &plan_a.shards[0],
        &options,
        &|_| {},
        mode,
    )
    .await
    .unwrap_or_else(|f| panic!("run A: {}", f.error));
    // Run B's copy: S3 refuses it (the key exists), and that answer is lost; the retry is
    // refused again. The object there has B's content but A's tag.
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "CopyObject",
            select: Select::Calls(1..=1),
            fault: Fault::ApplyThenReset,
        }],
    );
    let proxied = store_via(server, &proxy.endpoint(), Duration::from_secs(10));
    let failure = s3quilt_core::copy::copy_shard(
        proxied,
        &run_b,
        &plan_b.shards[0],
        &s3quilt_core::copy::CopyOptions::new(4),
        &|_| {},
        mode,
    )
    .await
    .expect_err("run B must not take run A's copy as its own");
    assert!(
        matches!(
            failure.error,
            s3quilt_core::copy::CopyError::DestinationExists { .. }
        ),
        "{}",
        failure.error
    );
    assert!(failure.created.is_empty(), "{:?}", failure.created);
    let report = abort_run(direct.clone(), &registry, &run_b.run_id)
        .await
        .unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");
    s3quilt_core::finalize::finalize(direct.clone(), &registry, &run_a.run_id)
        .await
        .unwrap();
    assert_eq!(verify_package(&direct, &registry, PACKAGE).await, Ok(1));
}

/// Finding 1, the other half: on an unversioned target, an object another writer put over one
/// of the run's copies is left when the run rolls back.
async fn rollback_leaves_an_object_another_writer_put_over_a_copy(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = create_bucket(&client, false).await;
    seed(
        &client,
        &source,
        &[small("data/a.csv", "ours"), small("data/b.csv", "ours too")],
    )
    .await;
    let direct = store_via(server, server.endpoint(), Duration::from_secs(30));
    let request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    let planned = plan(direct.clone(), &request, &PlanOptions::default())
        .await
        .unwrap();
    let run = planned.run.unwrap();
    let options = s3quilt_core::copy::CopyOptions::new(4);
    s3quilt_core::copy::copy_shard(
        direct.clone(),
        &run,
        &planned.shards[0],
        &options,
        &|_| {},
        s3quilt_core::copy::ShardMode::LAMBDA,
    )
    .await
    .unwrap_or_else(|f| panic!("{}", f.error));
    seed(
        &client,
        &registry,
        &[small("team/pkg/a.csv", "someone else's")],
    )
    .await;
    let report = abort_run(direct.clone(), &registry, &run.run_id)
        .await
        .unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    assert_eq!(report.replaced_by_others.len(), 1, "{report:?}");
    let left: Vec<String> = list_all_versions(&client, &registry)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(left, vec!["team/pkg/a.csv".to_string()]);
    assert_eq!(
        s3quilt_tests::get_bytes(&client, &registry, "team/pkg/a.csv").await,
        b"someone else's"
    );
}

/// Finding 6: a target whose versioning is suspended is an unversioned target for overwrites:
/// a second version of a package may not replace the first one's copies.
async fn a_suspended_target_never_overwrites_a_published_version(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    let registry = make_registry(&client, Target::Suspended).await;
    seed(&client, &source, &[small("data/a.csv", "version 1")]).await;
    let store = store_via(server, server.endpoint(), Duration::from_secs(30));
    let request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    let options = EngineOptions::default();
    run_local(store.clone(), &request, &options, Progress::new())
        .await
        .unwrap();
    seed(&client, &source, &[small("data/a.csv", "version 2")]).await;
    // A full run would write over the published copy: refused.
    let mut full = request.clone();
    full.incremental = false;
    let err = run_local(store.clone(), &full, &options, Progress::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Plan(PlanError::Problems(p)) if p.existing_in_target == ["team/pkg/a.csv"]),
        "{err}"
    );
    assert_eq!(verify_package(&store, &registry, PACKAGE).await, Ok(1));
    // An incremental run copies the changed object to a key of its own: both versions hold.
    run_local(store.clone(), &request, &options, Progress::new())
        .await
        .unwrap();
    assert_eq!(verify_package(&store, &registry, PACKAGE).await, Ok(2));
}

/// Finding 8: a source that contains what the run writes is refused before anything is
/// listed or copied, naming the field.
async fn a_source_that_holds_what_the_run_writes_is_refused(server: &'static S3Server) {
    let client = server.client().await;
    let registry = server.versioned_bucket_where_supported().await;
    seed(
        &client,
        &registry,
        &[small("team/pkg/a.csv", "x"), small("data/b.csv", "y")],
    )
    .await;
    let before = list_all_versions(&client, &registry).await;
    let store = store_via(server, server.endpoint(), Duration::from_secs(30));
    for prefix in [
        "",
        "team",
        "team/pkg",
        "team/pkg/sub",
        ".quilt",
        ".s3quilt/runs",
    ] {
        let request = PackageRequest::new(&registry, prefix, PACKAGE, &registry);
        let err = run_local(
            store.clone(),
            &request,
            &EngineOptions::default(),
            Progress::new(),
        )
        .await
        .unwrap_err();
        match &err {
            EngineError::Plan(PlanError::Request(e)) => {
                assert_eq!(e.field(), "source_prefix", "{prefix:?}: {e}")
            }
            other => panic!("{prefix:?}: {other}"),
        }
    }
    // A sibling folder of the same bucket is fine.
    let request = PackageRequest::new(&registry, "data", PACKAGE, &registry);
    run_local(
        store.clone(),
        &request,
        &EngineOptions::default(),
        Progress::new(),
    )
    .await
    .unwrap();
    assert!(list_all_versions(&client, &registry).await.len() > before.len());
}

server_tests! {
    a_failing_request_goes_on_the_wire_the_documented_number_of_times => [moto, localstack, seaweedfs, demo];
    concurrent_runs_of_one_package_each_get_their_own_version => [moto, localstack, seaweedfs, demo];
    // `ServerKind::enforces_copy_conditions` (moto copies whatever the conditions say).
    a_lost_reply_never_adopts_another_runs_object => [localstack, seaweedfs, demo];
    rollback_leaves_an_object_another_writer_put_over_a_copy => [localstack, seaweedfs, demo];
    a_suspended_target_never_overwrites_a_published_version => [localstack, seaweedfs];
    a_source_that_holds_what_the_run_writes_is_refused => [moto, localstack, seaweedfs, demo];
}

/// Finding 5: the `s3quilt` process killed (kill -9) at each phase boundary, or stopped with
/// SIGTERM, never leaves a half-made version, and `runs abort`/`runs resume` end every run in a
/// complete version or the registry as before. The proxy holds the request of the chosen phase
/// (the Nth PutObject of a one-shard run: 1 the plan, 2–3 the attempt and shard documents, 4 the
/// fragment, 5 the outcome, 6 the manifest, 7 the timestamped pointer, 8 `latest`; or the first
/// CopyObject) so the process is inside that phase when it is killed.
async fn interrupted_processes_end_complete_or_clean(server: &'static S3Server) {
    let client = server.client().await;
    let source = server.versioned_bucket_where_supported().await;
    seed(
        &client,
        &source,
        &[
            small("data/a.csv", "a"),
            small("data/b/c.txt", "c"),
            small("data/d.txt", "d"),
        ],
    )
    .await;
    let direct = store_via(server, server.endpoint(), Duration::from_secs(30));
    let mut cases: Vec<(&str, &'static str, usize, Fault, bool)> = vec![
        (
            "kill -9 while copying",
            "CopyObject",
            1,
            Fault::Delay(Duration::from_secs(60)),
            false,
        ),
        (
            "SIGTERM while copying",
            "CopyObject",
            1,
            Fault::Delay(Duration::from_secs(2)),
            true,
        ),
    ];
    for (n, phase) in [
        (1, "writing the plan"),
        (2, "opening the attempt"),
        (4, "writing the fragment"),
        (5, "committing"),
        (6, "writing the manifest"),
        (7, "writing the pointer"),
        (8, "writing latest"),
    ] {
        // Delay: the request reaches S3 and is applied; the process dies before the answer.
        cases.push((
            phase,
            "PutObject",
            n,
            Fault::Delay(Duration::from_secs(60)),
            false,
        ));
    }
    // The commit never reaching S3.
    cases.push((
        "committing (not applied)",
        "PutObject",
        5,
        Fault::StallPastTimeout(Duration::from_secs(60)),
        false,
    ));
    let mut summary = Vec::new();
    for (target, (phase, operation, n, fault, sigterm)) in Target::on(server.kind())
        .into_iter()
        .filter(|t| *t != Target::Suspended)
        .flat_map(|t| cases.iter().cloned().map(move |c| (t, c)))
    {
        let registry = make_registry(&client, target).await;
        let before = list_all_versions(&client, &registry).await;
        let proxy = FaultProxy::start(
            server.endpoint(),
            vec![ProxyRule {
                operation,
                select: Select::Calls(n..=n),
                fault,
            }],
        );
        let mut cmd = Command::new(s3quilt_bin());
        server.apply_env(&mut cmd);
        cmd.args([
            "create",
            &format!("s3://{source}/data"),
            PACKAGE,
            "--registry",
            &format!("s3://{registry}"),
            "--endpoint-url",
            &proxy.endpoint(),
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn s3quilt");
        let deadline = Instant::now() + Duration::from_secs(60);
        while proxy
            .log()
            .iter()
            .filter(|r| r.operation == operation)
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "{phase}: the phase was never reached"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{phase}: s3quilt ended before the phase ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let signal = if sigterm { "-TERM" } else { "-KILL" };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        if sigterm {
            assert_eq!(status.code(), Some(130), "{phase}: exit code after SIGTERM");
        }
        drop(proxy);
        let what = format!("{phase} ({target:?})");
        let visible = Registry::new(direct.clone(), &registry)
            .latest(&PACKAGE.parse().unwrap())
            .await;
        if let Ok(top_hash) = &visible {
            // Visible only when whole.
            assert_eq!(
                verify_package(&direct, &registry, PACKAGE).await,
                Ok(1),
                "{what}: {top_hash}"
            );
        }
        let (resumed, aborted) = finish_leftovers(&direct, &registry).await;
        if sigterm {
            assert_eq!(
                (resumed, aborted),
                (0, 0),
                "{what}: SIGTERM rolls back by itself"
            );
        }
        assert!(resumed + aborted <= 1, "{what}: at most one run to finish");
        if verify_package(&direct, &registry, PACKAGE).await == Ok(1) {
            summary.push(format!("{what}: complete version"));
        } else {
            assert_eq!(
                list_all_versions(&client, &registry).await,
                before,
                "{what}: the registry is as before"
            );
            summary.push(format!("{what}: registry as before"));
        }
    }
    eprintln!(
        "interruptions on {:?}:\n{}",
        server.kind(),
        summary.join("\n")
    );
}

server_tests! {
    interrupted_processes_end_complete_or_clean => [moto, localstack, seaweedfs, demo];
}

/// A `runs abort` of a committed run is refused, whatever the store answers.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_runs_are_named() {
    let server = s3quilt_tests::moto();
    let client = server.client().await;
    let registry = create_bucket(&client, true).await;
    let store = store_via(server, server.endpoint(), Duration::from_secs(30));
    let err = abort_run(store.clone(), &registry, "20260101T000000Z-00000000")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no run 20260101T000000Z-00000000"),
        "{err}"
    );
    assert!(list_runs(store, &registry).await.unwrap().is_empty());
    let _ = StoreErrorKind::NotFound;
}
