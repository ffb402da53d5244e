//! Reliability: S3 misbehaving (5xx, SlowDown, resets, answers slower than the timeout) is
//! survived; a persistent failure rolls back to exactly what was there; concurrent runs of one
//! package both produce valid versions; and a table of bad requests is refused before any object
//! is copied, with every bucket's versions unchanged.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::types::StorageClass;
use s3quilt_core::engine::{EngineError, EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::quilt::PackageName;
use s3quilt_core::registry::Registry;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::{ObjectStore, S3Store};
use s3quilt_tests::{
    Fault, FaultProxy, ProxyRule, S3Server, SeedObject, Select, create_bucket, list_all_versions,
    run_oracle, seed, server_tests,
};
use serde_json::json;

fn dataset() -> Vec<SeedObject> {
    let mut objects: Vec<SeedObject> = (0..24)
        .map(|i| {
            SeedObject::new(
                format!("data/part-{i:02}/rows.csv"),
                format!("id,value\n{i},{}\n", i * i).into_bytes(),
            )
        })
        .collect();
    objects.push(SeedObject::new(
        "data/big.bin",
        (0..(9 * 1024 * 1024))
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    ));
    objects
}

/// A client of `server` through `endpoint` with a short read timeout, so delayed answers time
/// out and are retried.
fn client_via(server: &S3Server, endpoint: &str, read_timeout: Duration) -> aws_sdk_s3::Client {
    let config = server
        .config_builder()
        .endpoint_url(endpoint)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(read_timeout)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn browse_ok(server: &S3Server, registry: &str, name: &str) -> serde_json::Value {
    let out = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &format!("s3://{registry}"),
            "--name",
            name,
        ],
    );
    assert_eq!(out["all_hashes_valid"], json!(true), "{out}");
    out
}

async fn transient_faults_are_retried_and_the_package_is_whole(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        server.versioned_bucket_where_supported().await,
        server.versioned_bucket_where_supported().await,
    );
    seed(&client, &source, &dataset()).await;
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![
            ProxyRule {
                operation: "CopyObject",
                select: Select::EveryNth(3),
                fault: Fault::Status(503, "SlowDown"),
            },
            ProxyRule {
                operation: "PutObject",
                select: Select::Calls(1..=2),
                fault: Fault::Status(500, "InternalError"),
            },
            ProxyRule {
                operation: "HeadObject",
                select: Select::EveryNth(7),
                fault: Fault::Reset,
            },
            ProxyRule {
                operation: "UploadPartCopy",
                select: Select::Calls(1..=1),
                fault: Fault::Status(503, "SlowDown"),
            },
            ProxyRule {
                operation: "ListObjectsV2",
                select: Select::Calls(2..=2),
                fault: Fault::Delay(Duration::from_millis(2500)),
            },
        ],
    );
    let store: Arc<dyn ObjectStore> = S3Store::shared(client_via(
        server,
        &proxy.endpoint(),
        Duration::from_secs(1),
    ));
    let request = PackageRequest::new(&source, "data", "team/faulty", &registry);
    let outcome = run_local(
        store,
        &request,
        &EngineOptions {
            concurrency: 8,
            ..Default::default()
        },
        Progress::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("faults must be survived: {e}"));
    let RunOutcome::Created { package, .. } = outcome else {
        panic!("expected a package")
    };
    assert!(
        proxy.faults_injected() >= 8,
        "faults injected: {:?}",
        proxy.requests()
    );
    let browsed = browse_ok(server, &registry, "team/faulty");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(browsed["entries"].as_array().unwrap().len(), 25);
}

async fn a_persistent_failure_rolls_back_and_reports(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        server.versioned_bucket_where_supported().await,
        server.versioned_bucket_where_supported().await,
    );
    seed(&client, &source, &dataset()).await;
    // An object that was there before: under a key the run copies to where the registry keeps
    // versions (its rollback deletes exactly its own version); beside them where it keeps none
    // (the run would refuse to overwrite it).
    let earlier = if server.kind().supports_versioning() {
        "team/broken/part-00/rows.csv"
    } else {
        "team/broken/notes.txt"
    };
    seed(
        &client,
        &registry,
        &[SeedObject::new(earlier, b"was here before".to_vec())],
    )
    .await;
    let before = list_all_versions(&client, &registry).await;
    // After 6 good copies, every CopyObject fails with 500: retries give up, the run rolls back.
    let proxy = FaultProxy::start(
        server.endpoint(),
        vec![ProxyRule {
            operation: "CopyObject",
            select: Select::Calls(7..=100_000),
            fault: Fault::Status(500, "InternalError"),
        }],
    );
    let store: Arc<dyn ObjectStore> = S3Store::shared(client_via(
        server,
        &proxy.endpoint(),
        Duration::from_secs(5),
    ));
    let request = PackageRequest::new(&source, "data", "team/broken", &registry);
    let err = run_local(
        store,
        &request,
        &EngineOptions {
            concurrency: 4,
            ..Default::default()
        },
        Progress::new(),
    )
    .await
    .unwrap_err();
    let EngineError::Copy { error, rollback } = &err else {
        panic!("expected a copy failure: {err}")
    };
    assert!(error.to_string().contains("InternalError"), "{error}");
    assert!(rollback.not_deleted.is_empty(), "{rollback:?}");
    assert!(rollback.deleted >= 6, "{rollback:?}");
    assert_eq!(
        list_all_versions(&client, &registry).await,
        before,
        "the registry is exactly as it was"
    );
    let name: PackageName = "team/broken".parse().unwrap();
    assert!(
        Registry::new(S3Store::shared(client.clone()), &registry)
            .latest(&name)
            .await
            .is_err()
    );
}

async fn concurrent_runs_of_one_package_both_make_valid_versions(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        server.versioned_bucket_where_supported().await,
        server.versioned_bucket_where_supported().await,
    );
    seed(&client, &source, &dataset()).await;
    let store = S3Store::shared(client.clone());
    let mut first = PackageRequest::new(&source, "data", "team/race", &registry);
    first.description = Some("run one".into());
    let mut second = first.clone();
    second.description = Some("run two".into());
    second.exclude_patterns = vec!["big.bin".into()];
    let options = EngineOptions {
        concurrency: 8,
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        run_local(store.clone(), &first, &options, Progress::new()),
        run_local(store.clone(), &second, &options, Progress::new())
    );
    let (RunOutcome::Created { package: a, .. }, RunOutcome::Created { package: b, .. }) =
        (a.unwrap(), b.unwrap())
    else {
        panic!("expected two packages")
    };
    assert_ne!(a.top_hash, b.top_hash);
    let registry_api = Registry::new(store.clone(), &registry);
    let name: PackageName = "team/race".parse().unwrap();
    let latest = registry_api.latest(&name).await.unwrap();
    assert!(latest == a.top_hash || latest == b.top_hash);
    for top_hash in [&a.top_hash, &b.top_hash] {
        let manifest = registry_api.manifest(top_hash).await.unwrap();
        // Each version's entries point at the object versions that run created.
        for entry in &manifest.entries {
            let physical: s3quilt_core::quilt::PhysicalKey =
                entry.physical_keys[0].parse().unwrap();
            let head = client
                .head_object()
                .bucket(&physical.bucket)
                .key(&physical.key)
                .set_version_id(physical.version_id.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(head.content_length(), Some(entry.size as i64));
        }
    }
    browse_ok(server, &registry, "team/race");
}

/// One bad request, how to set it up, and the words its error must contain.
struct BadCase {
    name: &'static str,
    expect: &'static str,
    mutate: Box<dyn Fn(&mut PackageRequest)>,
}

fn case(
    name: &'static str,
    expect: &'static str,
    mutate: impl Fn(&mut PackageRequest) + 'static,
) -> BadCase {
    BadCase {
        name,
        expect,
        mutate: Box::new(mutate),
    }
}

async fn forty_bad_requests_are_refused_before_any_copy(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry, other) = (
        server.versioned_bucket_where_supported().await,
        server.versioned_bucket_where_supported().await,
        create_bucket(&client, false).await,
    );
    seed(&client, &source, &dataset()).await;
    // Keys S3 accepts but Quilt cannot use as logical keys, and archived objects.
    seed(
        &client,
        &source,
        &[
            SeedObject::new("odd/a//b.txt", b"1".to_vec()),
            SeedObject::new("odd2/./x.txt", b"2".to_vec()),
            SeedObject::new("odd3/../y.txt", b"3".to_vec()),
            SeedObject::new("dup/a/same.txt", b"4".to_vec()),
            SeedObject::new("dup/b/same.txt", b"5".to_vec()),
        ],
    )
    .await;
    for (key, class) in [
        ("cold/glacier.bin", StorageClass::Glacier),
        ("cold/deep.bin", StorageClass::DeepArchive),
    ] {
        client
            .put_object()
            .bucket(&source)
            .key(key)
            .body(b"frozen".to_vec().into())
            .storage_class(class)
            .send()
            .await
            .unwrap();
    }
    seed(
        &client,
        &other,
        &[SeedObject::new(
            "team/bad/part-00/rows.csv",
            b"exists".to_vec(),
        )],
    )
    .await;
    let snapshot = || async {
        let mut all = Vec::new();
        for bucket in [&source, &registry, &other] {
            all.push(list_all_versions(&client, bucket).await);
        }
        all
    };
    let before = snapshot().await;
    let big_meta = json!({"blob": "x".repeat(600 * 1024)});
    let other_bucket = other.clone();
    let cases = vec![
        case("name without slash", "package_name", |r| {
            r.package_name = "nopkg".into()
        }),
        case("name with two slashes", "package_name", |r| {
            r.package_name = "a/b/c".into()
        }),
        case("name with a dot", "package_name", |r| {
            r.package_name = "team/pkg.v2".into()
        }),
        case("name with a space", "package_name", |r| {
            r.package_name = "team/my pkg".into()
        }),
        case("empty namespace", "package_name", |r| {
            r.package_name = "/pkg".into()
        }),
        case("empty name", "package_name", |r| {
            r.package_name = "team/".into()
        }),
        case("name with @", "package_name", |r| {
            r.package_name = "team/p@kg".into()
        }),
        case("name with trailing newline", "package_name", |r| {
            r.package_name = "team/pkg\n".into()
        }),
        case("name with a combining mark", "package_name", |r| {
            r.package_name = "team/e\u{301}".into()
        }),
        case("empty name string", "package_name", |r| {
            r.package_name = String::new()
        }),
        case("source bucket upper case", "source_bucket", |r| {
            r.source_bucket = "MyBucket".into()
        }),
        case("source bucket too short", "source_bucket", |r| {
            r.source_bucket = "ab".into()
        }),
        case("source bucket too long", "source_bucket", |r| {
            r.source_bucket = "a".repeat(64)
        }),
        case("source bucket underscore", "source_bucket", |r| {
            r.source_bucket = "my_bucket".into()
        }),
        case("source bucket with a path", "source_bucket", |r| {
            r.source_bucket = "s3://bucket/path".into()
        }),
        case("source bucket like an IP", "source_bucket", |r| {
            r.source_bucket = "10.0.0.1".into()
        }),
        case("registry ends with a dash", "target_registry", |r| {
            r.target_registry = "s3://registry-".into()
        }),
        case("registry with double dots", "target_registry", |r| {
            r.target_registry = "a..b".into()
        }),
        case("target bucket bad", "target_bucket", |r| {
            r.target_bucket = Some("Bad".into())
        }),
        case("target bucket with copy=false", "target_bucket", |r| {
            r.copy = false;
            r.target_bucket = Some("some-bucket".into());
        }),
        case("prefix with //", "source_prefix", |r| {
            r.source_prefix = "data//x".into()
        }),
        case("prefix too long", "source_prefix", |r| {
            r.source_prefix = "p/".repeat(600)
        }),
        case("include pattern unclosed class", "include_patterns", |r| {
            r.include_patterns = vec!["[abc".into()]
        }),
        case("include pattern unclosed brace", "include_patterns", |r| {
            r.include_patterns = vec!["{a,b".into()]
        }),
        case("include pattern empty", "include_patterns", |r| {
            r.include_patterns = vec![String::new()]
        }),
        case("exclude pattern unclosed class", "exclude_patterns", |r| {
            r.exclude_patterns = vec!["x/[".into()]
        }),
        case("exclude pattern only slash", "exclude_patterns", |r| {
            r.exclude_patterns = vec!["/".into()]
        }),
        case("metadata is an array", "metadata", |r| {
            r.metadata = Some(json!([1, 2]))
        }),
        case("metadata is a string", "metadata", |r| {
            r.metadata = Some(json!("tag"))
        }),
        case("metadata is a number", "metadata", |r| {
            r.metadata = Some(json!(3))
        }),
        case("metadata too large", "metadata", move |r| {
            r.metadata = Some(big_meta.clone())
        }),
        case("description too large", "description", |r| {
            r.description = Some("m".repeat(600 * 1024))
        }),
        case("legacy hash type", "hash_type", |r| {
            r.hash_type = Some(s3quilt_core::quilt::HashType::Sha256Legacy)
        }),
        case("key with //", "cannot be logical keys", |r| {
            r.source_prefix = "odd".into()
        }),
        case("key with /./", "cannot be logical keys", |r| {
            r.source_prefix = "odd2".into()
        }),
        case("key with /../", "cannot be logical keys", |r| {
            r.source_prefix = "odd3".into()
        }),
        case("flatten collisions", "several objects", |r| {
            r.source_prefix = "dup".into();
            r.preserve_structure = false;
        }),
        case("archived objects", "GLACIER", |r| {
            r.source_prefix = "cold".into()
        }),
        case("deep archive objects", "DEEP_ARCHIVE", |r| {
            r.source_prefix = "cold".into()
        }),
        case("empty prefix", "nothing to package", |r| {
            r.source_prefix = "nothing/here".into()
        }),
        case(
            "patterns remove everything",
            "removed by exclude_patterns",
            |r| r.exclude_patterns = vec!["*".into()],
        ),
        case(
            "includes match nothing",
            "not matched by include_patterns",
            |r| r.include_patterns = vec!["*.parquet".into()],
        ),
        case(
            "source without read access",
            "cannot read the source",
            |r| r.source_bucket = "no-such-source-bucket".into(),
        ),
        case("registry without write access", "cannot write to", |r| {
            r.target_registry = "no-such-registry-bucket".into()
        }),
        case("target without write access", "cannot write to", |r| {
            r.target_bucket = Some("no-such-target-bucket".into())
        }),
        case(
            "existing keys in an unversioned target",
            "already exist",
            move |r| r.target_bucket = Some(other_bucket.clone()),
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let store = S3Store::shared(client.clone());
    for bad in &cases {
        let mut request = PackageRequest::new(&source, "data", "team/bad", &registry);
        (bad.mutate)(&mut request);
        let err = run_local(
            store.clone(),
            &request,
            &EngineOptions::default(),
            Progress::new(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{}: was accepted", bad.name));
        assert!(
            matches!(err, EngineError::Plan(_)),
            "{}: failed late: {err}",
            bad.name
        );
        assert!(
            err.to_string().contains(bad.expect),
            "{}: expected {:?} in: {err}",
            bad.name,
            bad.expect
        );
    }
    // Unknown fields are refused when the request is read.
    let unknown = serde_json::from_value::<PackageRequest>(json!({
        "source_bucket": source, "package_name": "team/bad", "target_registry": registry, "preserve_structur": false
    }));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("preserve_structur")
    );
    assert_eq!(snapshot().await, before, "no bucket changed");
}

server_tests! {
    transient_faults_are_retried_and_the_package_is_whole => [moto, localstack, seaweedfs, demo];
    a_persistent_failure_rolls_back_and_reports => [moto, localstack, seaweedfs, demo];
    // `ServerKind::supports_versioning`: both runs write the same keys.
    concurrent_runs_of_one_package_both_make_valid_versions => [moto, localstack, seaweedfs];
    // `ServerKind::stores_dot_segments` and `stores_archive_storage_classes` (the refusals
    // name such keys and archived objects).
    forty_bad_requests_are_refused_before_any_copy => [moto, localstack];
}
