//! The multipart path on a server that computes part checksums (SeaweedFS): objects of 8 MiB and
//! more are copied with UploadPartCopy in parts of exactly Quilt's chunk size, and S3's part
//! SHA-256s become the Quilt hash with no byte read back. quilt3 then verifies every entry.

use s3quilt_core::engine::{EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::quilt::checksum::{MIN_CHUNK_SIZE, chunk_count};
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::S3Store;
use s3quilt_tests::{InstrumentedStore, SeedObject, create_bucket, run_oracle, seaweedfs, seed};
use serde_json::json;

const MIB: usize = 1024 * 1024;

fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len).map(|i| ((i + salt) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn part_checksums_become_the_quilt_hash() {
    let server = seaweedfs();
    let client = server.client().await;
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    let objects = vec![
        SeedObject::new("models/weights-20MiB.bin", pattern(20 * MIB, 0))
            .content_type("application/octet-stream")
            .meta("epoch", "7"),
        SeedObject::new("models/exactly-8MiB.bin", pattern(8 * MIB, 3)),
        SeedObject::new("models/8MiB-plus-1.bin", pattern(8 * MIB + 1, 5)),
        SeedObject::new("models/config.json", b"{\"layers\": 12}\n".to_vec())
            .content_type("application/json"),
        SeedObject::new("models/empty", Vec::new()),
    ];
    seed(&client, &source, &objects).await;
    let counted = InstrumentedStore::new(S3Store::shared(client.clone()), Vec::new());
    let request = PackageRequest::new(&source, "models", "team/models", &registry);
    let outcome = run_local(
        counted.clone(),
        &request,
        &EngineOptions {
            concurrency: 4,
            ..Default::default()
        },
        Progress::new(),
    )
    .await
    .unwrap();
    let RunOutcome::Created { package, .. } = outcome else {
        panic!("expected a package")
    };

    // The part size follows quilt3's chunk rule: 3 + 1 + 2 parts.
    let expected_parts: u64 = objects
        .iter()
        .filter(|o| o.body.len() as u64 >= MIN_CHUNK_SIZE)
        .map(|o| chunk_count(o.body.len() as u64))
        .sum();
    assert_eq!(counted.count("UploadPartCopy") as u64, expected_parts);
    assert_eq!(counted.count("CreateMultipartUpload"), 3);
    // No large object was read back: their hashes are S3's part checksums.
    let reads: Vec<String> = counted
        .calls()
        .into_iter()
        .filter(|(op, _, key)| *op == "GetObject" && !key.starts_with(".s3quilt/"))
        .map(|(_, _, key)| key)
        .collect();
    assert!(
        reads.iter().all(|k| !k.ends_with(".bin")),
        "large objects were downloaded: {reads:?}"
    );
    // SeaweedFS's CopyObject returns no checksum, so small objects fall back to a streamed hash.
    assert!(
        reads.iter().any(|k| k.ends_with("config.json")),
        "{reads:?}"
    );

    let browsed = run_oracle(
        server,
        &[
            "browse",
            "--registry",
            &format!("s3://{registry}"),
            "--name",
            "team/models",
        ],
    );
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    let entries = browsed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    for entry in entries {
        assert_eq!(entry["hash_valid"], json!(true), "{entry}");
    }
    let big = entries
        .iter()
        .find(|e| e["logical_key"] == json!("weights-20MiB.bin"))
        .unwrap();
    assert_eq!(big["meta"]["s3"]["metadata"], json!({"epoch": "7"}));
    assert_eq!(
        big["meta"]["s3"]["content_type"],
        json!("application/octet-stream")
    );
}
