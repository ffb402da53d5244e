//! The local engine end to end on a real S3 server (moto), with quilt3 reading every package
//! it makes: selection rules, flattening, metadata, versioned and unversioned buckets,
//! `copy=false`, dry runs, bad input, idempotent shards, missing fragments and rollback.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use s3quilt_core::copy::{CopyOptions, ShardMode, copy_shard, copy_shard_from_staging};
use s3quilt_core::engine::{EngineError, EngineOptions, Phase, Progress, RunOutcome, run_local};
use s3quilt_core::finalize::{FinalizeError, finalize};
use s3quilt_core::plan::{PlanError, PlanOptions, plan};
use s3quilt_core::quilt::{Json, PackageName, PhysicalKey};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::{ObjectMetadata, PackageRequest};
use s3quilt_core::storage::{ObjectStore, S3Store, StoreErrorKind};
use s3quilt_core::transaction::abort_run;
use s3quilt_tests::{
    FaultRule, InstrumentedStore, S3Server, SeedObject, create_bucket, get_bytes,
    list_all_versions, manifest_header, moto, run_oracle, seed, server_tests, upload_sha256_parts,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

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
        SeedObject::new("data/tables/tmp/scratch.csv", b"scratch".to_vec()),
        SeedObject::new("data/a b/ünï ñ.json", b"{\"k\": 1}\n".to_vec())
            .content_type("application/json"),
        SeedObject::new("data/odd/100%#[x]~{y}+z.txt", b"odd characters".to_vec()),
        SeedObject::new("data/empty.txt", Vec::new()),
        SeedObject::new("data/folder/", Vec::new()),
        SeedObject::new("elsewhere/not-selected.csv", b"no".to_vec()),
    ]
}

/// Whether buckets on `server` can be versioned: tests that run on every server ask for
/// versioned buckets where they can, and check version ids only there.
fn versioned(server: &S3Server) -> bool {
    server.kind().supports_versioning()
}

/// A client of `server` and two fresh buckets (source, registry), versioned where `server`
/// keeps versions.
async fn client_and_two_buckets(server: &S3Server) -> (aws_sdk_s3::Client, String, String) {
    let client = server.client().await;
    let source = create_bucket(&client, versioned(server)).await;
    let registry = create_bucket(&client, versioned(server)).await;
    (client, source, registry)
}

async fn store(server: &S3Server) -> Arc<dyn ObjectStore> {
    S3Store::shared(server.client().await)
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

fn created(outcome: RunOutcome) -> s3quilt_core::finalize::PackageResult {
    match outcome {
        RunOutcome::Created { package, .. } => package,
        RunOutcome::Planned(p) | RunOutcome::UpToDate(p) => {
            panic!("expected a package, got a plan {p:?}")
        }
    }
}

fn browse(server: &S3Server, registry: &str, name: &str) -> Value {
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
    for entry in out["entries"].as_array().unwrap() {
        assert_eq!(
            entry["hash_valid"],
            json!(true),
            "quilt3 finds the hash of {} valid",
            entry["logical_key"]
        );
    }
    out
}

fn logical_keys(browsed: &Value) -> Vec<String> {
    browsed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["logical_key"].as_str().unwrap().to_string())
        .collect()
}

async fn creates_a_package_quilt3_reads_with_metadata_and_walk_order(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let mut request =
        PackageRequest::new(&source, "data", "team/sample", &format!("s3://{registry}"));
    request.description = Some("first ✓".into());
    request.metadata = Some(json!({"project": "s3quilt", "ratio": 0.5, "nested": {"n": [1, 2]}}));
    let progress = Progress::new();
    let counted = InstrumentedStore::new(store(server).await, Vec::new());
    let outcome = run_local(
        counted.clone(),
        &request,
        &EngineOptions {
            concurrency: 4,
            ..Default::default()
        },
        progress.clone(),
    )
    .await
    .unwrap();
    // Every hash came from S3's copy checksums, and the local engine reads no staging
    // document back: the one read is the look for a base version (`latest`, not there yet).
    // A server that returns no copy checksums has each copy read back and hashed.
    let reads: Vec<String> = counted
        .calls()
        .into_iter()
        .filter(|(operation, _, _)| *operation == "GetObject")
        .map(|(_, _, key)| key)
        .collect();
    let hashed_by_reading = if server.kind().returns_copy_checksums() {
        0
    } else {
        8
    };
    assert_eq!(reads[0], ".quilt/named_packages/team/sample/latest");
    assert_eq!(reads.len(), 1 + hashed_by_reading, "{reads:?}");
    assert!(
        reads[1..].iter().all(|k| k.starts_with("team/sample/")),
        "{reads:?}"
    );
    assert_eq!(counted.count("CopyObject"), 8);
    assert_eq!(
        counted.count("HeadObject"),
        8 + 1 + 1,
        "one per object (beside its copy), the read-access check and the registry's workflow config"
    );
    assert_eq!(
        counted.count("PutObject"),
        8,
        "the plan document; the shard's attempt marker, shard document and fragment (the \
         journal); the outcome (the commit point); the manifest and two pointers"
    );
    let package = created(outcome);
    // The package metadata keeps the key order it was given in (quilt3 writes insertion
    // order; only the top hash sorts keys).
    let header = manifest_header(&client, &registry, &package.top_hash).await;
    assert!(
        header.contains(
            r#""user_meta": {"project": "s3quilt", "ratio": 0.5, "nested": {"n": [1, 2]}}"#
        ),
        "{header}"
    );
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.phase, Phase::Succeeded);
    assert_eq!((snapshot.objects_done, snapshot.objects_total), (8, 8));
    assert_eq!(snapshot.bytes_done, snapshot.bytes_total);

    let browsed = browse(server, &registry, "team/sample");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(browsed["message"], json!("first ✓"));
    assert_eq!(
        browsed["user_meta"],
        json!({"project": "s3quilt", "ratio": 0.5, "nested": {"n": [1, 2]}})
    );
    assert_eq!(
        logical_keys(&browsed),
        [
            "README.md",
            "a b/ünï ñ.json",
            "empty.txt",
            "odd/100%#[x]~{y}+z.txt",
            "tables/a.csv",
            "tables/b.csv",
            "tables/raw/c.csv",
            "tables/tmp/scratch.csv"
        ],
        "every key (folder marker skipped, odd characters kept) in walk order"
    );
    for entry in browsed["entries"].as_array().unwrap() {
        let lk = entry["logical_key"].as_str().unwrap();
        let physical: PhysicalKey = entry["physical_key"].as_str().unwrap().parse().unwrap();
        assert_eq!(physical.bucket, registry);
        assert_eq!(physical.key, format!("team/sample/{lk}"));
        assert_eq!(
            physical.version_id.is_some(),
            versioned(server),
            "copies in a versioned registry are pinned, in an unversioned one not: {physical}"
        );
        let s3 = &entry["meta"]["s3"];
        let source_key: PhysicalKey = s3["source"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            (source_key.bucket.as_str(), source_key.key.as_str()),
            (source.as_str(), format!("data/{lk}").as_str())
        );
        assert_eq!(
            source_key.version_id.is_some(),
            versioned(server),
            "the source version is recorded where there is one"
        );
        assert!(s3["etag"].as_str().is_some() && s3["last_modified"].as_str().is_some());
        assert_eq!(s3["storage_class"], json!("STANDARD"));
    }
    let readme = &browsed["entries"][0]["meta"]["s3"];
    assert_eq!(readme["content_type"], json!("text/markdown"));
    assert_eq!(readme["metadata"], json!({"owner": "lab-7"}));
    // The copy itself keeps the content type and user metadata.
    let head = client
        .head_object()
        .bucket(&registry)
        .key("team/sample/tables/a.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/csv"));
    assert_eq!(
        head.metadata().unwrap().get("rows").map(String::as_str),
        Some("1")
    );

    // Staging is gone: the registry has the manifest, two pointers and the copies only (the
    // local engine keeps no result record; it never finalizes twice).
    let keys: Vec<String> = list_all_versions(&client, &registry)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(!keys.iter().any(|k| k.starts_with(".s3quilt/")), "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| k.starts_with(".quilt/")).count(),
        3,
        "{keys:?}"
    );
}

async fn patterns_follow_gitignore_rules(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, false).await,
        create_bucket(&client, false).await,
    );
    seed(&client, &source, &sample()).await;
    let mut request = PackageRequest::new(&source, "data/", "team/csvs", &registry);
    request.include_patterns = vec!["*.csv".into()];
    request.exclude_patterns = vec!["tmp".into(), "tables/raw/*".into()];
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/csvs");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(logical_keys(&browsed), ["tables/a.csv", "tables/b.csv"]);
    // Unversioned buckets: physical keys carry no version.
    assert!(
        !browsed["entries"][0]["physical_key"]
            .as_str()
            .unwrap()
            .contains("versionId")
    );
}

async fn flatten_with_and_without_collisions(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let mut request = PackageRequest::new(&source, "data/tables", "team/flat", &registry);
    request.preserve_structure = false;
    request.exclude_patterns = vec!["tmp/".into()];
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/flat");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(logical_keys(&browsed), ["a.csv", "b.csv", "c.csv"]);

    // Two `x.csv` in different folders cannot both be `x.csv`: refused, naming both.
    seed(
        &client,
        &source,
        &[SeedObject::new("data/tables/raw/a.csv", b"dup".to_vec())],
    )
    .await;
    let before = list_all_versions(&client, &registry).await;
    let err = run(store(server).await, &request).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, EngineError::Plan(PlanError::Problems(_))),
        "{text}"
    );
    assert!(
        text.contains("\"a.csv\"")
            && text.contains("data/tables/a.csv")
            && text.contains("data/tables/raw/a.csv"),
        "{text}"
    );
    assert_eq!(
        list_all_versions(&client, &registry).await,
        before,
        "a refused plan writes nothing"
    );
}

async fn copy_false_references_objects_in_place(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    let versions = seed(&client, &source, &sample()).await;
    let mut request = PackageRequest::new(&source, "data/tables", "team/inplace", &registry);
    request.copy = false;
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/inplace");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    let first: PhysicalKey = browsed["entries"][0]["physical_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(first.bucket, source);
    assert_eq!(first.key, "data/tables/a.csv");
    assert_eq!(
        first.version_id, versions[1],
        "pinned to the source version"
    );
    let keys: Vec<String> = list_all_versions(&client, &registry)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with(".quilt/") || k.starts_with(".s3quilt/results/")),
        "nothing copied: {keys:?}"
    );
}

async fn copy_false_never_takes_a_composite_checksum_for_a_whole_object_one(
    server: &'static S3Server,
) {
    let (client, source, registry) = client_and_two_buckets(server).await;
    // Two parts, 6 MiB in all: one Quilt chunk, whose hash is SHA-256 of the object's SHA-256.
    // moto's HEAD reports the parts' composite SHA-256 without `-2` and without a type.
    let parts = [vec![1u8; 5 * MIB], vec![2u8; MIB]];
    upload_sha256_parts(&client, &source, "data/two-parts.bin", &parts, None).await;
    let head = client
        .head_object()
        .bucket(&source)
        .key("data/two-parts.bin")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap().ends_with("-2\""),
        "the ETag says multipart: {:?}",
        head.e_tag()
    );
    let mut request = PackageRequest::new(&source, "data", "team/composite", &registry);
    request.copy = false;
    let package = created(run(store(server).await, &request).await.unwrap());
    // `browse` asserts quilt3 finds every entry's hash valid (it reads the bytes).
    let browsed = browse(server, &registry, "team/composite");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    let whole = parts.concat();
    assert_eq!(
        browsed["entries"][0]["hash"]["value"].as_str().unwrap(),
        B64.encode(Sha256::digest(Sha256::digest(&whole))),
        "SHA-256 of the one chunk's SHA-256"
    );
}

/// Keys with characters XML 1.0 cannot carry (listed with `encoding-type=url`) are packaged,
/// and an excluded one does not stop the run.
async fn keys_xml_cannot_carry_are_packaged(server: &'static S3Server) {
    let (client, source, registry) = client_and_two_buckets(server).await;
    let odd = [
        "data/\u{1b}[31mERROR\u{1b}[0m.log",
        "data/ctl\u{1}/a+b c%2B.txt",
        "data/non-character \u{ffff}.txt",
    ];
    let mut objects: Vec<SeedObject> = odd
        .iter()
        .map(|k| SeedObject::new(*k, k.as_bytes().to_vec()))
        .collect();
    objects.push(SeedObject::new("data/plain.txt", b"plain".to_vec()));
    objects.push(SeedObject::new("data/skip/\u{1}.tmp", b"excluded".to_vec()));
    seed(&client, &source, &objects).await;
    let mut request = PackageRequest::new(&source, "data", "team/odd-keys", &registry);
    request.exclude_patterns = vec!["skip/".into()];
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/odd-keys");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    let mut keys = logical_keys(&browsed);
    keys.sort();
    let mut expected: Vec<String> = odd
        .iter()
        .map(|k| k.strip_prefix("data/").unwrap().to_string())
        .chain(["plain.txt".to_string()])
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    // Each copy holds its own source's bytes under the same name.
    for key in odd {
        let copy = format!("team/odd-keys/{}", key.strip_prefix("data/").unwrap());
        assert_eq!(get_bytes(&client, &registry, &copy).await, key.as_bytes());
    }
}

async fn a_key_ending_in_a_slash_that_holds_data_is_skipped_with_a_warning(
    server: &'static S3Server,
) {
    let (client, source, registry) = client_and_two_buckets(server).await;
    seed(
        &client,
        &source,
        &[
            SeedObject::new("data/notes/", b"written by a tool, not a folder".to_vec()),
            SeedObject::new("data/empty-folder/", Vec::new()),
            SeedObject::new("data/a.txt", b"a".to_vec()),
        ],
    )
    .await;
    let request = PackageRequest::new(&source, "data", "team/slash", &registry);
    let RunOutcome::Created { plan, package } = run(store(server).await, &request).await.unwrap()
    else {
        panic!("expected a package")
    };
    assert_eq!(plan.folder_markers, 2);
    assert_eq!(plan.non_empty_folder_markers, ["data/notes/"]);
    let browsed = browse(server, &registry, "team/slash");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(logical_keys(&browsed), ["a.txt"]);
}

async fn a_dry_run_writes_nothing(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let before = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    let mut request = PackageRequest::new(&source, "data", "team/dry", &registry);
    request.dry_run = true;
    request.include_patterns = vec!["**/*.csv".into()];
    let RunOutcome::Planned(summary) = run(store(server).await, &request).await.unwrap() else {
        panic!("expected a plan")
    };
    assert_eq!(summary.objects, 4);
    assert_eq!(summary.bytes, 8 + 8 + 8 + 7);
    assert_eq!(summary.not_included, 4);
    assert_eq!(summary.folder_markers, 1);
    assert_eq!(summary.estimated_requests.copy_object, 4);
    assert!(summary.run_id.is_none());
    let after = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_before_anything_is_written() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let before = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    let base = PackageRequest::new(&source, "data", "team/bad", &registry);
    type Case = (&'static str, Box<dyn Fn(&mut PackageRequest)>);
    let cases: Vec<Case> = vec![
        (
            "package_name",
            Box::new(|r| r.package_name = "team/bad name".into()),
        ),
        (
            "package_name",
            Box::new(|r| r.package_name = "no-slash".into()),
        ),
        (
            "source_bucket",
            Box::new(|r| r.source_bucket = "UPPER".into()),
        ),
        (
            "target_registry",
            Box::new(|r| r.target_registry = "s3://a".into()),
        ),
        (
            "metadata",
            Box::new(|r| r.metadata = Some(json!(["not", "an", "object"]))),
        ),
        (
            "include_patterns",
            Box::new(|r| r.include_patterns = vec!["{unclosed".into()]),
        ),
        (
            "nothing to package",
            Box::new(|r| r.include_patterns = vec!["*.parquet".into()]),
        ),
        (
            "nothing to package",
            Box::new(|r| r.source_prefix = "no/such/prefix".into()),
        ),
        (
            "cannot read the source",
            Box::new(|r| r.source_bucket = "no-such-bucket-here".into()),
        ),
        (
            "cannot write to",
            Box::new(|r| r.target_registry = "no-such-registry-here".into()),
        ),
    ];
    for (expected, mutate) in cases {
        let mut request = base.clone();
        mutate(&mut request);
        let err = run(store(server).await, &request).await.unwrap_err();
        assert!(matches!(err, EngineError::Plan(_)), "{expected}: {err}");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in: {err}"
        );
    }
    let err = run(store(server).await, &{
        let mut r = base.clone();
        r.exclude_patterns = vec!["*".into()];
        r
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("8 removed by exclude_patterns"),
        "{err}"
    );
    let after = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    assert_eq!(before, after);
}

async fn a_file_beside_a_folder_and_overlong_destinations_are_refused_at_plan_time(
    server: &'static S3Server,
) {
    let (client, source, registry) = client_and_two_buckets(server).await;
    // 1,016 bytes below the prefix: the source key (`data/` + it) fits S3's limit, the copy's
    // key (`team/long/` + it) does not.
    // In segments of at most 212 bytes: servers that keep keys as file paths refuse longer
    // ones (`ServerKind::max_key_segment_len`).
    let long = format!(
        "{}/{}.bin",
        vec!["d".repeat(200); 4].join("/"),
        "g".repeat(208)
    );
    assert_eq!(long.len(), 1016);
    seed(
        &client,
        &source,
        &[
            // As s3fs and goofys write a folder: an empty object named like it.
            SeedObject::new("data/exports/images", Vec::new()),
            SeedObject::new("data/exports/images/cat.png", b"cat".to_vec()),
            SeedObject::new("data/exports/images/dog.png", b"dog".to_vec()),
            SeedObject::new("data/exports/table", b"t".to_vec()),
            SeedObject::new(format!("data/{long}"), b"long".to_vec()),
        ],
    )
    .await;
    let before = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    let request = PackageRequest::new(&source, "data", "team/long", &registry);
    let err = run(store(server).await, &request).await.unwrap_err();
    let EngineError::Plan(PlanError::Problems(problems)) = &err else {
        panic!("expected plan problems, got {err}");
    };
    assert_eq!(
        problems.file_beside_folder,
        [(
            "data/exports/images".to_string(),
            "data/exports/images/cat.png".to_string()
        )]
    );
    assert_eq!(
        problems.destination_too_long,
        [(format!("data/{long}"), 1026)]
    );
    let message = err.to_string();
    assert!(
        message.contains(r#"1 object has the name of a folder in the package"#)
            && message.contains(r#""data/exports/images" beside "data/exports/images/cat.png""#)
            && message.contains("exclude_patterns"),
        "{message}"
    );
    assert!(
        message.contains("1 destination key would be longer than S3's 1024-byte key limit")
            && message.contains("(1026 bytes)"),
        "{message}"
    );
    let after = (
        list_all_versions(&client, &source).await,
        list_all_versions(&client, &registry).await,
    );
    assert_eq!(before, after, "nothing was copied or staged");

    // Without the clash and the long key, the rest packages and quilt3 opens it.
    let mut fixed = request.clone();
    fixed.exclude_patterns = vec!["exports/images".into(), "d".repeat(200)];
    let package = created(run(store(server).await, &fixed).await.unwrap());
    let browsed = browse(server, &registry, "team/long");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(logical_keys(&browsed), ["exports/table"]);
    // Referenced in place, the long key has no destination to outgrow.
    let mut in_place = request.clone();
    in_place.copy = false;
    in_place.exclude_patterns = vec!["exports/images".into()];
    let package = created(run(store(server).await, &in_place).await.unwrap());
    let browsed = browse(server, &registry, "team/long");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(logical_keys(&browsed), [long.as_str(), "exports/table"]);
}

async fn unversioned_target_refuses_to_overwrite_unless_asked(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, false).await,
    );
    seed(&client, &source, &sample()).await;
    // Full runs: an incremental run never writes over a key (tests/tests/incremental.rs).
    let mut request = PackageRequest::new(&source, "data/tables", "team/twice", &registry);
    request.incremental = false;
    let first = created(run(store(server).await, &request).await.unwrap());
    let before = list_all_versions(&client, &registry).await;
    let err = run(store(server).await, &request).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("already exist in the unversioned target"),
        "{err}"
    );
    assert_eq!(list_all_versions(&client, &registry).await, before);
    let mut again = request.clone();
    again.overwrite_existing = true;
    again.description = Some("second".into());
    let second = created(run(store(server).await, &again).await.unwrap());
    assert_ne!(first.top_hash, second.top_hash);
    let registry_api = Registry::new(store(server).await, &registry);
    let name: PackageName = "team/twice".parse().unwrap();
    assert_eq!(registry_api.latest(&name).await.unwrap(), second.top_hash);
    browse(server, &registry, "team/twice");

    // The same content again: the same top hash, and the manifest already there is kept as is
    // (the conditional write finds it) while the pointers move.
    let manifests = |versions: &[(String, Option<String>, bool)]| {
        versions
            .iter()
            .filter(|(k, _, _)| k.starts_with(".quilt/packages/"))
            .count()
    };
    let before = list_all_versions(&client, &registry).await;
    let third = created(run(store(server).await, &again).await.unwrap());
    assert_eq!(third.top_hash, second.top_hash);
    let after = list_all_versions(&client, &registry).await;
    assert_eq!(manifests(&after), manifests(&before));
    assert_eq!(manifests(&after), 2, "one manifest per distinct top hash");
    assert_eq!(registry_api.latest(&name).await.unwrap(), third.top_hash);
}

async fn large_objects_take_the_multipart_path_and_stay_valid(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    let big: Vec<u8> = (0..(20 * MIB + 7)).map(|i| (i % 251) as u8).collect();
    seed(
        &client,
        &source,
        &[SeedObject::new("big/pattern.bin", big)
            .content_type("application/octet-stream")
            .meta("k", "v")],
    )
    .await;
    let request = PackageRequest::new(&source, "big", "team/big", &registry);
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/big");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(browsed["entries"][0]["size"], json!(20 * MIB + 7));
    let head = client
        .head_object()
        .bucket(&registry)
        .key("team/big/pattern.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.content_type(),
        Some("application/octet-stream"),
        "multipart copies keep the content type"
    );
    assert_eq!(
        head.metadata().unwrap().get("k").map(String::as_str),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_are_idempotent_and_finalize_checks_every_fragment() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let store = store(server).await;
    let request = PackageRequest::new(&source, "data", "team/shards", &registry);
    let options = PlanOptions {
        shard_max_objects: 3,
        ..Default::default()
    };
    let planned = plan(store.clone(), &request, &options).await.unwrap();
    let run_plan = planned.run.clone().unwrap();
    assert_eq!(planned.shards.len(), 3);
    let copy_options = CopyOptions::new(4);
    let first = copy_shard(
        store.clone(),
        &run_plan,
        &planned.shards[0],
        &copy_options,
        &|_| {},
        ShardMode::LAMBDA,
    )
    .await
    .unwrap();
    assert!(!first.already_done);
    let versions_after_first = list_all_versions(&client, &registry).await;
    let again = copy_shard(
        store.clone(),
        &run_plan,
        &planned.shards[0],
        &copy_options,
        &|_| {},
        ShardMode::LAMBDA,
    )
    .await
    .unwrap();
    assert!(again.already_done);
    assert_eq!(again.fragment, first.fragment);
    assert_eq!(
        list_all_versions(&client, &registry).await,
        versions_after_first,
        "a re-run copies nothing again"
    );

    // Shard 1 never ran (as when a Distributed Map child fails silently): finalize refuses.
    copy_shard(
        store.clone(),
        &run_plan,
        &planned.shards[2],
        &copy_options,
        &|_| {},
        ShardMode::LAMBDA,
    )
    .await
    .unwrap();
    let err = finalize(store.clone(), &registry, &run_plan.run_id)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FinalizeError::MissingFragments { missing, .. } if missing == &vec![1]),
        "{err}"
    );
    let name: PackageName = "team/shards".parse().unwrap();
    assert!(
        Registry::new(store.clone(), &registry)
            .latest(&name)
            .await
            .is_err(),
        "no pointer"
    );

    // Rollback removes exactly the copies and the staging area.
    let report = abort_run(store.clone(), &registry, &run_plan.run_id)
        .await
        .unwrap();
    assert!(report.not_deleted.is_empty(), "{report:?}");
    assert_eq!(report.deleted, 5, "shards 0 and 2 copied 3 + 2 objects");
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_run_finalizes_once_and_a_second_finalize_answers_the_same() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let store = store(server).await;
    let request = PackageRequest::new(&source, "data", "team/staged", &registry);
    let options = PlanOptions {
        shard_max_objects: 4,
        ..Default::default()
    };
    // What the AWS engine does, step by step: plan to staging, copy each shard from staging.
    let planned = plan(store.clone(), &request, &options).await.unwrap();
    let run_plan = planned.run.clone().unwrap();
    assert_eq!(planned.shards.len(), 2);
    for shard in 0..2 {
        copy_shard_from_staging(
            store.clone(),
            &registry,
            &run_plan.run_id,
            shard,
            &CopyOptions::new(4),
        )
        .await
        .unwrap();
    }
    let package = finalize(store.clone(), &registry, &run_plan.run_id)
        .await
        .unwrap();
    let browsed = browse(server, &registry, "team/staged");
    assert_eq!(browsed["top_hash"], json!(package.top_hash));
    assert_eq!(logical_keys(&browsed).len(), 8);

    // Staging is gone except the run's result record, kept so a retried finalizer answers the
    // same and writes nothing.
    let keys: Vec<String> = list_all_versions(&client, &registry)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    let records: Vec<&String> = keys.iter().filter(|k| k.starts_with(".s3quilt/")).collect();
    assert_eq!(
        records,
        [&format!(".s3quilt/results/{}.json", package.run_id)],
        "{keys:?}"
    );
    let again = finalize(store.clone(), &registry, &package.run_id)
        .await
        .unwrap();
    assert_eq!(again, package);
    assert_eq!(
        list_all_versions(&client, &registry).await.len(),
        keys.len()
    );
}

async fn a_failure_mid_copy_rolls_back_to_exactly_what_was_there(server: &'static S3Server) {
    let client = server.client().await;
    let kinds: &[bool] = if versioned(server) {
        &[true, false]
    } else {
        &[false]
    };
    for &target_versioned in kinds {
        let (source, registry) = (
            create_bucket(&client, versioned(server)).await,
            create_bucket(&client, target_versioned).await,
        );
        seed(&client, &source, &sample()).await;
        // An object that was there before the run must survive its rollback.
        seed(
            &client,
            &registry,
            &[SeedObject::new("team/rollback/keep.txt", b"keep".to_vec())],
        )
        .await;
        let before = list_all_versions(&client, &registry).await;
        let failing = InstrumentedStore::new(
            store(server).await,
            vec![FaultRule {
                operation: "CopyObject",
                calls: 5..=5,
                kind: StoreErrorKind::Permanent,
            }],
        );
        let request = PackageRequest::new(&source, "data", "team/rollback", &registry);
        let options = EngineOptions {
            concurrency: 2,
            plan: PlanOptions {
                shard_max_objects: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let progress = Progress::new();
        let err = run_local(failing.clone(), &request, &options, progress.clone())
            .await
            .unwrap_err();
        let EngineError::Copy { error, rollback } = &err else {
            panic!("expected a copy failure, got {err}")
        };
        assert!(error.to_string().contains("injected failure"), "{error}");
        assert!(rollback.not_deleted.is_empty(), "{rollback:?}");
        assert!(
            rollback.deleted >= 4,
            "the copies made before the failure were removed: {rollback:?}"
        );
        assert_eq!(progress.snapshot().phase, Phase::Failed);
        assert_eq!(
            list_all_versions(&client, &registry).await,
            before,
            "versioned={target_versioned}: target exactly as it was"
        );
    }
}

async fn crc64nvme_entries_are_verified_by_quilt3(server: &'static S3Server) {
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let mut request = PackageRequest::new(&source, "data/tables", "team/crc", &registry);
    request.hash_type = Some(s3quilt_core::quilt::HashType::Crc64Nvme);
    let package = created(run(store(server).await, &request).await.unwrap());
    let browsed = browse(server, &registry, "team/crc");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert!(
        browsed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["hash"]["type"] == json!("CRC64NVME"))
    );
    // Sanity: the JSON of package metadata absent stays absent (not null).
    let registry_api = Registry::new(store(server).await, &registry);
    let (_, manifest) = registry_api
        .latest_manifest(&"team/crc".parse().unwrap())
        .await
        .unwrap();
    assert!(manifest.header.user_meta().is_none());
    assert_eq!(
        manifest.header.as_object().get("message"),
        Some(&Json::Null)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failure_no_new_object_is_started() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    let objects: Vec<SeedObject> = (0..60)
        .map(|i| {
            SeedObject::new(
                format!("many/{i:03}.txt"),
                format!("object {i}").into_bytes(),
            )
        })
        .collect();
    seed(&client, &source, &objects).await;
    let failing = InstrumentedStore::new(
        store(server).await,
        vec![FaultRule {
            operation: "CopyObject",
            calls: 3..=3,
            kind: StoreErrorKind::Permanent,
        }],
    );
    let request = PackageRequest::new(&source, "many", "team/stops", &registry);
    let options = EngineOptions {
        concurrency: 2,
        plan: PlanOptions {
            shard_max_objects: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let err = run_local(failing.clone(), &request, &options, Progress::new())
        .await
        .unwrap_err();
    let EngineError::Copy { error, rollback } = &err else {
        panic!("expected a copy failure, got {err}")
    };
    assert!(error.to_string().contains("injected failure"), "{error}");
    // Only objects already in progress when the copy failed went on (at most the shards in
    // flight × objects each); the other ~50 were never copied just to be rolled back.
    let copies = failing.count("CopyObject");
    assert!(
        copies <= 12,
        "{copies} copies issued after an early failure"
    );
    assert_eq!(rollback.deleted, copies - 1, "{rollback:?}");
    assert!(rollback.not_deleted.is_empty(), "{rollback:?}");
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_metadata_copies_with_one_request_per_object() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    seed(&client, &source, &sample()).await;
    let mut request = PackageRequest::new(&source, "data", "team/listing", &registry);
    request.object_metadata = ObjectMetadata::Listing;
    let counted = InstrumentedStore::new(store(server).await, Vec::new());
    let package = created(run(counted.clone(), &request).await.unwrap());
    assert_eq!(counted.count("CopyObject"), 8);
    assert_eq!(
        counted.count("HeadObject"),
        2,
        "only the read-access check and the registry's workflow config"
    );
    let browsed = browse(server, &registry, "team/listing");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    for entry in browsed["entries"].as_array().unwrap() {
        let s3 = &entry["meta"]["s3"];
        let source_key: PhysicalKey = s3["source"].as_str().unwrap().parse().unwrap();
        assert!(
            source_key.version_id.is_some(),
            "the copy's answer names the source version: {s3}"
        );
        assert!(
            s3["etag"].is_string() && s3["last_modified"].is_string(),
            "{s3}"
        );
        assert!(
            s3.get("content_type").is_none() && s3.get("metadata").is_none(),
            "not read, so not recorded: {s3}"
        );
    }
    // The copies themselves still carry the content type and user metadata.
    let head = client
        .head_object()
        .bucket(&registry)
        .key("team/listing/README.md")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/markdown"));
    assert_eq!(
        head.metadata().unwrap().get("owner").map(String::as_str),
        Some("lab-7")
    );
}

/// A run at `concurrency` requests over `store`.
async fn run_at(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
    concurrency: usize,
) -> Result<RunOutcome, EngineError> {
    let options = EngineOptions {
        concurrency,
        ..Default::default()
    };
    run_local(store, request, &options, Progress::new()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn in_full_mode_copies_stay_at_the_limit_while_the_heads_run_beside_them() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    let objects: Vec<SeedObject> = (0..32)
        .map(|i| {
            SeedObject::new(
                format!("many/o-{i:02}.txt"),
                format!("object {i}").into_bytes(),
            )
            .content_type("text/plain")
            .meta("i", &i.to_string())
        })
        .collect();
    seed(&client, &source, &objects).await;
    let request = PackageRequest::new(&source, "many", "team/many", &registry);
    let held = InstrumentedStore::holding(
        store(server).await,
        Vec::new(),
        std::time::Duration::from_millis(40),
    );
    let package = created(run_at(held.clone(), &request, 4).await.unwrap());
    assert_eq!(package.objects, 32);
    assert_eq!(held.count("CopyObject"), 32);
    assert_eq!(
        held.max_in_flight("CopyObject"),
        4,
        "copies fill the request limit, never more"
    );
    assert!(
        held.max_in_flight("HeadObject") >= 1 && held.max_in_flight("HeadObject") <= 4,
        "HEADs have a budget of their own, as large: {}",
        held.max_in_flight("HeadObject")
    );
    assert!(
        held.max_in_flight("*") > 4,
        "HEADs ran beside a full set of copies, not in their slots: {}",
        held.max_in_flight("*")
    );
    // The entries still record what the HEADs read.
    let browsed = browse(server, &registry, "team/many");
    let entry = &browsed["entries"][0];
    assert_eq!(entry["meta"]["s3"]["content_type"], json!("text/plain"));
    assert_eq!(entry["meta"]["s3"]["metadata"]["i"], json!("0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parts_of_one_large_object_take_the_whole_request_limit() {
    let server = moto();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, versioned(server)).await,
        create_bucket(&client, versioned(server)).await,
    );
    // Nine 8 MiB parts: more than the 8 per object a copy used to keep in flight.
    let big: Vec<u8> = (0..(64 * MIB + 3)).map(|i| (i % 253) as u8).collect();
    seed(
        &client,
        &source,
        &[SeedObject::new("one/big.bin", big).content_type("application/x-big")],
    )
    .await;
    let request = PackageRequest::new(&source, "one", "team/one", &registry);
    let held = InstrumentedStore::holding(
        store(server).await,
        Vec::new(),
        std::time::Duration::from_millis(100),
    );
    let package = created(run_at(held.clone(), &request, 16).await.unwrap());
    assert_eq!(held.count("UploadPartCopy"), 9);
    assert_eq!(
        held.max_in_flight("UploadPartCopy"),
        9,
        "every part of the object in flight at once"
    );
    let browsed = browse(server, &registry, "team/one");
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(browsed["entries"][0]["size"], json!(64 * MIB + 3));
}

server_tests! {
    // `ServerKind::lists_url_encoded` (the sample has `+z.txt`)
    creates_a_package_quilt3_reads_with_metadata_and_walk_order => [moto, localstack, seaweedfs];
    patterns_follow_gitignore_rules => [moto, localstack, seaweedfs, demo];
    flatten_with_and_without_collisions => [moto, localstack, seaweedfs, demo];
    copy_false_references_objects_in_place => [moto, localstack, seaweedfs, demo];
    copy_false_never_takes_a_composite_checksum_for_a_whole_object_one => [moto, localstack, seaweedfs, demo];
    // `ServerKind::keeps_keys_ending_in_slash`
    a_key_ending_in_a_slash_that_holds_data_is_skipped_with_a_warning => [moto, localstack];
    // `ServerKind::keeps_keys_ending_in_slash` (the sample's folder marker is counted)
    a_dry_run_writes_nothing => [moto, localstack, seaweedfs];
    // `ServerKind::stores_a_key_beside_its_folder`
    a_file_beside_a_folder_and_overlong_destinations_are_refused_at_plan_time => [moto, localstack, seaweedfs];
    unversioned_target_refuses_to_overwrite_unless_asked => [moto, localstack, seaweedfs, demo];
    large_objects_take_the_multipart_path_and_stay_valid => [moto, localstack, seaweedfs, demo];
    // `ServerKind::lists_url_encoded` (the sample has `+z.txt`)
    a_failure_mid_copy_rolls_back_to_exactly_what_was_there => [moto, localstack, seaweedfs];
    crc64nvme_entries_are_verified_by_quilt3 => [moto, localstack, seaweedfs, demo];
    // `ServerKind::lists_url_encoded`
    keys_xml_cannot_carry_are_packaged => [moto, localstack, seaweedfs];
}
