//! The finalizer's memory does not grow with the run: it reads the staged fragments a few at a
//! time, twice (the top hash before the commit, then the manifest's text), and writes a
//! manifest larger than one part ([`MANIFEST_PART_BYTES`]) as a multipart upload. Shown on
//! every server: the stored bytes are those of the whole-manifest writer, quilt3 reads them and
//! computes the same top hash, and a staged run whose fragments break the walk order is refused
//! before its commit, leaving the registry as it was.
//!
//! The runs are planned for real, then their fragments are replaced by synthetic ones (many
//! entries with large `meta`, all naming one small seeded object): enough for a 10 MB manifest
//! without copying thousands of objects.

use std::sync::Arc;

use s3quilt_core::finalize::{FinalizeError, finalize};
use s3quilt_core::plan::{PlanOptions, plan};
use s3quilt_core::quilt::manifest::ManifestError;
use s3quilt_core::quilt::{HashType, Manifest};
use s3quilt_core::registry::{MANIFEST_PART_BYTES, Registry};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::staging::{FragmentEntry, ManifestFragment, RunPlan, Staging};
use s3quilt_core::storage::{ObjectStore, S3Store};
use s3quilt_tests::{
    InstrumentedStore, S3Server, SeedObject, create_bucket, get_bytes, list_all_versions,
    run_oracle, seed, server_tests,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PACKAGE: &str = "team/large";
const SHARDS: u32 = 4;
/// Entries per shard: with ~2.2 KB lines, 4 × 1,200 entries make a manifest of two parts.
const PER_SHARD: usize = 1_200;
const BODY: &[u8] = b"one object, many entries";

/// A planned `copy: false` run of `SHARDS` one-object shards whose fragments are replaced by
/// `PER_SHARD` synthetic entries each (`reorder` swaps the first two shards' fragments, breaking
/// the walk order), and its plan's object count set to match.
struct StagedRun {
    client: aws_sdk_s3::Client,
    store: Arc<dyn ObjectStore>,
    registry: String,
    run: RunPlan,
}

async fn staged_run(server: &S3Server, reorder: bool) -> StagedRun {
    let client = server.client().await;
    let source = create_bucket(&client, false).await;
    let registry = create_bucket(&client, false).await;
    let objects: Vec<SeedObject> = (0..SHARDS)
        .map(|s| SeedObject::new(format!("data/{s}.bin"), BODY))
        .collect();
    seed(&client, &source, &objects).await;
    let store = S3Store::shared(server.client().await);
    let mut request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    request.copy = false;
    let options = PlanOptions {
        shard_max_objects: 1,
        ..PlanOptions::default()
    };
    let planned = plan(store.clone(), &request, &options).await.unwrap();
    let run_id = planned.run.as_ref().unwrap().run_id.clone();
    let staging = Staging::new(store.clone(), &registry, &run_id);
    let mut run = staging.plan().await.unwrap();
    assert_eq!(run.shards, SHARDS);
    let hash = format!("{:x}", Sha256::digest(BODY));
    let physical_key = format!("s3://{source}/data/0.bin");
    // A large `meta`, as S3 user metadata (up to 2 KB per object) makes in real packages.
    let meta = format!(r#"{{"note": "{}"}}"#, "m".repeat(2_000));
    for shard in 0..SHARDS {
        // Recorded out of walk order within the shard, as copies finish.
        let entries = (0..PER_SHARD)
            .rev()
            .map(|i| FragmentEntry {
                logical_key: format!("part-{shard}/file-{i:05}.bin").parse().unwrap(),
                physical_key: physical_key.clone(),
                size: BODY.len() as u64,
                hash_type: HashType::Sha256Legacy,
                hash_value: hash.clone(),
                meta: meta.clone(),
            })
            .collect();
        let stored_as = match (reorder, shard) {
            (true, 0) => 1,
            (true, 1) => 0,
            _ => shard,
        };
        let fragment = ManifestFragment {
            shard: stored_as,
            entries,
            created: Vec::new(),
            attempt: String::new(),
        };
        staging
            .put(&staging.fragment_key(stored_as), &fragment)
            .await
            .unwrap();
    }
    run.objects = u64::from(SHARDS) * PER_SHARD as u64;
    run.bytes = run.objects * BODY.len() as u64;
    staging.put(&staging.plan_key(), &run).await.unwrap();
    StagedRun {
        client,
        store,
        registry,
        run,
    }
}

async fn a_manifest_larger_than_a_part_is_written_in_parts(server: &'static S3Server) {
    let staged = staged_run(server, false).await;
    let counted = InstrumentedStore::new(staged.store.clone(), Vec::new());
    let store: Arc<dyn ObjectStore> = counted.clone();
    let package = finalize(store, &staged.registry, &staged.run.run_id)
        .await
        .unwrap();
    assert_eq!(package.objects, staged.run.objects);
    assert_eq!(package.bytes, staged.run.bytes);

    // The bytes the whole-manifest writer gives for the same entries, in walk order.
    let registry = Registry::new(staged.store.clone(), &staged.registry);
    let stored = get_bytes(
        &staged.client,
        &staged.registry,
        &format!(".quilt/packages/{}", package.top_hash),
    )
    .await;
    let manifest = Manifest::parse(std::str::from_utf8(&stored).unwrap()).unwrap();
    assert_eq!(manifest.entries.len() as u64, staged.run.objects);
    assert_eq!(manifest.top_hash(), package.top_hash);
    assert_eq!(manifest.to_jsonl().unwrap().as_bytes(), &stored[..]);
    assert_eq!(
        manifest.entries[0].logical_key.as_str(),
        "part-0/file-00000.bin"
    );
    assert!(stored.len() > MANIFEST_PART_BYTES, "{} bytes", stored.len());
    assert_eq!(
        registry.manifest_sha256(&package.top_hash).await.unwrap(),
        Some(Sha256::digest(&stored).into())
    );
    // Written in parts (one PutObject would hold it whole), each fragment read twice.
    let counts = counted.counts();
    assert_eq!(counts.get("UploadPart").copied(), Some(2), "{counts:?}");
    assert_eq!(
        counts.get("CompleteMultipartUpload").copied(),
        Some(1),
        "{counts:?}"
    );

    // quilt3 reads it and recomputes the top hash from what it read.
    let browsed: Value = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &format!("s3://{}", staged.registry),
            "--name",
            PACKAGE,
            "--no-verify",
        ],
    );
    assert_eq!(browsed["top_hash"], Value::from(package.top_hash.clone()));
    assert_eq!(
        browsed["entries"].as_array().map(Vec::len),
        Some(staged.run.objects as usize)
    );

    // Finalizing again (a retried Lambda) answers from the result record.
    let again = finalize(staged.store.clone(), &staged.registry, &staged.run.run_id)
        .await
        .unwrap();
    assert_eq!(again.top_hash, package.top_hash);
}

async fn fragments_out_of_walk_order_are_refused_before_the_commit(server: &'static S3Server) {
    let staged = staged_run(server, true).await;
    let before = list_all_versions(&staged.client, &staged.registry).await;
    let err = finalize(staged.store.clone(), &staged.registry, &staged.run.run_id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            FinalizeError::Manifest(ManifestError::OutOfOrder { key, .. })
                if key == "part-0/file-00000.bin"
        ),
        "{err}"
    );
    assert!(!err.is_committed(), "{err}");
    let after = list_all_versions(&staged.client, &staged.registry).await;
    assert_eq!(
        after
            .iter()
            .filter(|(key, ..)| key.starts_with(".quilt/"))
            .count(),
        0,
        "nothing published: {after:?}"
    );
    assert_eq!(after, before, "the failed finalize wrote nothing");
}

server_tests! {
    a_manifest_larger_than_a_part_is_written_in_parts => [moto, localstack, seaweedfs, demo];
    fragments_out_of_walk_order_are_refused_before_the_commit => [moto, localstack, seaweedfs, demo];
}
