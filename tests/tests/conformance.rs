//! Conformance with quilt3 8.0.0, on every S3 server of the harness (moto, LocalStack's S3,
//! SeaweedFS and the demo's server; what each does not do is stated once, on `ServerKind`):
//! (a) a package written by our registry code with our hashes is read by quilt3, which computes
//!     the same top hash and finds every entry's hash valid;
//! (b) a package pushed by quilt3 is read by our code with the same entries and top hash;
//! (c) package metadata numbers hash as quilt3 reads them.

use std::sync::Arc;

use futures::TryStreamExt;
use s3quilt_core::engine::{EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::quilt::checksum::{HashType, ObjectHasher};
use s3quilt_core::quilt::{
    Json, JsonObject, LogicalKey, Manifest, ManifestEntry, PackageHeader, PackageName, PhysicalKey,
};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::{ObjectStore, S3Store, unix_now};
use s3quilt_tests::{
    S3Server, SeedObject, create_bucket, manifest_header, run_oracle, seed, server_tests,
};
use serde_json::{Value, json};

/// Objects covering the traps: nesting, space + unicode, empty, larger than one chunk.
fn dataset() -> Vec<SeedObject> {
    let big: Vec<u8> = (0..(8 * 1024 * 1024 + 4321))
        .map(|i| (i % 251) as u8)
        .collect();
    vec![
        SeedObject::new("data/README.md", b"# conformance\n".to_vec())
            .content_type("text/markdown"),
        SeedObject::new("data/a b/ünï ñ.csv", b"x,y\n1,2\n".to_vec()).meta("origin", "lab-7"),
        SeedObject::new(
            "data/nested/deep/er/values.json",
            b"{\"k\": [1, 2, 3]}\n".to_vec(),
        ),
        SeedObject::new("data/empty.txt", Vec::new()),
        SeedObject::new("data/a-c.txt", b"a-c".to_vec()),
        SeedObject::new("data/big/pattern.bin", big),
    ]
}

async fn stream_hash(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    size: u64,
) -> s3quilt_core::quilt::QuiltHash {
    let mut hasher = ObjectHasher::new(HashType::Sha2_256Chunked, size);
    let mut body = store.get(bucket, key, version, None).await.unwrap();
    while let Some(chunk) = body.try_next().await.unwrap() {
        hasher.update(&chunk);
    }
    hasher.finish()
}

fn entry_user_meta() -> JsonObject {
    match Json::parse(r#"{"source": "conformance", "ratio": 0.1, "big": 1e+16, "whole": 1.0, "huge": 1180591620717411303424, "ünï": "ö 😀", "nested": {"z": 1, "a": [null, true]}}"#).unwrap() {
        Json::Object(o) => o,
        _ => unreachable!(),
    }
}

/// A client, a store and two fresh buckets (source, registry) on `server`, versioned where the
/// server keeps versions.
async fn two_buckets(
    server: &S3Server,
) -> (aws_sdk_s3::Client, Arc<dyn ObjectStore>, String, String) {
    let client = server.client().await;
    let store: Arc<dyn ObjectStore> = S3Store::shared(client.clone());
    let versioned = server.kind().supports_versioning();
    let source = create_bucket(&client, versioned).await;
    let registry_bucket = create_bucket(&client, versioned).await;
    (client, store, source, registry_bucket)
}

/// quilt3's `browse` of `registry`'s `name` (see `tests/py/quilt_oracle.py`), `extra` appended.
fn browse(server: &S3Server, registry: &str, name: &str, extra: &[&str]) -> Value {
    let registry = format!("s3://{registry}");
    let mut args = vec!["browse", "--registry", &registry, "--name", name];
    args.extend_from_slice(extra);
    run_oracle(server, &args)
}

async fn quilt3_reads_what_we_write(server: &'static S3Server) {
    let (client, store, source, registry_bucket) = two_buckets(server).await;
    let objects = dataset();
    let versions = seed(&client, &source, &objects).await;

    let mut entries = Vec::new();
    for (object, version) in objects.iter().zip(&versions) {
        let size = object.body.len() as u64;
        let hash = stream_hash(
            store.as_ref(),
            &source,
            &object.key,
            version.as_deref(),
            size,
        )
        .await;
        let logical_key: LogicalKey = object.key.strip_prefix("data/").unwrap().parse().unwrap();
        let mut meta = JsonObject::new();
        if logical_key.as_str() == "nested/deep/er/values.json" {
            meta.insert("user_meta", Json::Object(entry_user_meta()));
        }
        let physical = PhysicalKey::new(&source, &object.key, version.clone());
        entries.push(ManifestEntry::new(
            logical_key,
            physical.to_string(),
            size,
            &hash,
            meta,
        ));
    }
    let package_meta = match Json::parse(r#"{"description": "written by s3quilt", "pi": 2.75, "tags": ["x"], "nested": {"b": 1, "a": null}}"#).unwrap() {
        Json::Object(o) => o,
        _ => unreachable!(),
    };
    let manifest = Manifest::new(
        PackageHeader::new(Some("from rust ✓"), Some(package_meta)),
        entries,
    )
    .unwrap();
    let name: PackageName = "team/conformance".parse().unwrap();
    let registry = Registry::new(store.clone(), &registry_bucket);
    let (top_hash, written) = registry.push(&name, &manifest, unix_now()).await.unwrap();
    assert_eq!(written.len(), 3, "manifest, timestamped pointer, latest");
    assert_eq!(registry.latest(&name).await.unwrap(), top_hash);

    let browsed = browse(server, &registry_bucket, name.as_str(), &[]);
    assert_eq!(
        browsed["top_hash"].as_str().unwrap(),
        top_hash,
        "quilt3 recomputes our top hash"
    );
    assert_eq!(browsed["message"], json!("from rust ✓"));
    assert_eq!(browsed["user_meta"]["pi"], json!(2.75));
    let entries = browsed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), objects.len());
    let walk: Vec<&str> = entries
        .iter()
        .map(|e| e["logical_key"].as_str().unwrap())
        .collect();
    let ours: Vec<&str> = manifest
        .entries
        .iter()
        .map(|e| e.logical_key.as_str())
        .collect();
    assert_eq!(walk, ours, "same walk order");
    for entry in entries {
        assert_eq!(entry["hash_valid"], json!(true), "quilt3 verified {entry}");
    }
    let nested = entries
        .iter()
        .find(|e| e["logical_key"] == json!("nested/deep/er/values.json"))
        .unwrap();
    assert_eq!(
        nested["user_meta"]["huge"].as_f64().unwrap(),
        1180591620717411303424.0
    );
    assert_eq!(nested["user_meta"]["ünï"], json!("ö 😀"));
}

async fn we_read_what_quilt3_pushes(server: &'static S3Server) {
    let (client, store, source, registry_bucket) = two_buckets(server).await;
    // quilt3's own push copies objects of 8 MiB or more in parts and needs each part's
    // checksum, which not every server returns.
    let objects: Vec<SeedObject> = dataset()
        .into_iter()
        .filter(|o| server.kind().returns_part_checksums() || o.body.len() < 8 * 1024 * 1024)
        .collect();
    seed(&client, &source, &objects).await;

    let spec: Vec<Value> = objects
        .iter()
        .map(|o| {
            let logical_key = o.key.strip_prefix("data/").unwrap();
            let meta = if logical_key == "a b/ünï ñ.csv" { json!({"columns": ["x", "y"], "w": 1.0}) } else { Value::Null };
            json!({"logical_key": logical_key, "source": format!("s3://{source}/{}", o.key), "meta": meta})
        })
        .collect();
    let spec_file = std::env::temp_dir().join(format!(
        "s3quilt-spec-{}-{}.json",
        std::process::id(),
        source
    ));
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let pushed = run_oracle(
        server,
        &[
            "push",
            "--registry",
            &format!("s3://{registry_bucket}"),
            "--name",
            "team/from-quilt3",
            "--spec",
            spec_file.to_str().unwrap(),
            "--message",
            "pushed by quilt3",
            "--meta",
            r#"{"k": 1, "f": 0.5, "nested": {"ü": [1e-05]}}"#,
        ],
    );
    std::fs::remove_file(&spec_file).ok();
    let quilt3_top_hash = pushed["top_hash"].as_str().unwrap();

    let registry = Registry::new(store.clone(), &registry_bucket);
    let name: PackageName = "team/from-quilt3".parse().unwrap();
    assert_eq!(registry.packages().await.unwrap(), vec![name.clone()]);
    let versions = registry.versions(&name).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].top_hash, quilt3_top_hash);
    // `manifest` refuses content that does not hash to its name, so reading it proves our
    // top-hash function recomputes quilt3's.
    let (top_hash, manifest) = registry.latest_manifest(&name).await.unwrap();
    assert_eq!(top_hash, quilt3_top_hash);
    assert_eq!(manifest.top_hash(), quilt3_top_hash);
    assert_eq!(manifest.header.message(), Some("pushed by quilt3"));

    let theirs = pushed["entries"].as_array().unwrap();
    assert_eq!(manifest.entries.len(), theirs.len());
    for (ours, theirs) in manifest.entries.iter().zip(theirs) {
        assert_eq!(
            ours.logical_key.as_str(),
            theirs["logical_key"].as_str().unwrap()
        );
        assert_eq!(ours.size, theirs["size"].as_u64().unwrap());
        assert_eq!(ours.hash().value, theirs["hash"]["value"].as_str().unwrap());
        assert_eq!(
            ours.physical_keys[0],
            theirs["physical_key"].as_str().unwrap()
        );
        // Our hash of the bytes quilt3 copied equals the hash quilt3 recorded.
        let physical: PhysicalKey = ours.physical_keys[0].parse().unwrap();
        let hash = stream_hash(
            store.as_ref(),
            &physical.bucket,
            &physical.key,
            physical.version_id.as_deref(),
            ours.size,
        )
        .await;
        assert_eq!(hash, ours.hash(), "{}", ours.logical_key);
    }
    let csv = manifest
        .entries
        .iter()
        .find(|e| e.logical_key.as_str() == "a b/ünï ñ.csv")
        .unwrap();
    assert_eq!(
        csv.meta.get("user_meta").unwrap().to_hash_string(),
        r#"{"columns":["x","y"],"w":1.0}"#
    );
    // Writing it back gives the same bytes quilt3 stored.
    let stored = s3quilt_tests::get_bytes(
        &client,
        &registry_bucket,
        &format!(".quilt/packages/{quilt3_top_hash}"),
    )
    .await;
    assert_eq!(manifest.to_jsonl().unwrap().as_bytes(), stored.as_slice());
}

/// Package metadata numbers as text, the way a user hands them over: what Python's `json`
/// would print for 300 random floats (shortest round-trip digits; a float parser that is not
/// correctly rounded gets some of them wrong by one ulp), integers beyond 64 bits, `-0` (an
/// int for Python), an integer 10^20 and floats of every notation.
fn numbers_metadata_text() -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let floats: Vec<String> = (0..300)
        .map(|_| {
            // xorshift64*, then the top 53 bits as a float in [0, 1), as Python's random().
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            // Rust's `Display` writes the shortest digits that round-trip, as Python's repr.
            format!("{}", bits as f64 / (1u64 << 53) as f64)
        })
        .collect();
    format!(
        r#"{{"ratio": 0.42451918914251396, "huge": 123456789012345678901234567890, "negative_zero": -0, "float_negative_zero": -0.0, "int_1e20": 100000000000000000000, "float_1e20": 1e20, "upper_e": 1E5, "trailing_zero": 1.50, "seventeen_digits": 12345678901234567890.0, "small": 1e-7, "floats": [{}]}}"#,
        floats.join(", ")
    )
}

async fn package_metadata_numbers_hash_as_quilt3_reads_them(server: &'static S3Server) {
    let (client, store, source, registry_bucket) = two_buckets(server).await;
    seed(
        &client,
        &source,
        &[SeedObject::new("data/a.txt", b"a".to_vec())],
    )
    .await;
    let text = numbers_metadata_text();
    let mut request = PackageRequest::new(
        &source,
        "data",
        "team/numbers",
        &format!("s3://{registry_bucket}"),
    );
    // As `--meta` and every request document reach the request: through serde_json.
    request.metadata = Some(serde_json::from_str(&text).unwrap());
    let outcome = run_local(store, &request, &EngineOptions::default(), Progress::new())
        .await
        .unwrap();
    let RunOutcome::Created { package, .. } = outcome else {
        panic!("expected a package, got {outcome:?}");
    };

    // quilt3 replaces the package metadata with `json.loads(text)` and hashes: the same top
    // hash means every number was kept as Python keeps it.
    let browsed = browse(
        server,
        &registry_bucket,
        "team/numbers",
        &["--set-meta", &text],
    );
    assert_eq!(browsed["top_hash"].as_str().unwrap(), package.top_hash);
    assert_eq!(
        browsed["top_hash_with_meta"].as_str().unwrap(),
        package.top_hash,
        "quilt3's top hash for the same metadata text"
    );
    // The manifest's header has the numbers as Python's json.dumps writes them.
    let header = manifest_header(&client, &registry_bucket, &package.top_hash).await;
    assert!(
        header.contains(
            r#""ratio": 0.42451918914251396, "huge": 123456789012345678901234567890, "negative_zero": 0, "float_negative_zero": -0.0, "int_1e20": 100000000000000000000, "float_1e20": 1e+20, "upper_e": 100000.0, "trailing_zero": 1.5, "seventeen_digits": 1.2345678901234567e+19, "small": 1e-07, "floats": ["#
        ),
        "{header}"
    );
}

server_tests! {
    quilt3_reads_what_we_write => [moto, localstack, seaweedfs, demo];
    // quilt3's push needs CopyObject's checksum (`ServerKind::returns_copy_checksums`).
    we_read_what_quilt3_pushes => [moto, localstack];
    package_metadata_numbers_hash_as_quilt3_reads_them => [moto, localstack, seaweedfs, demo];
}
