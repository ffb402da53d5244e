//! Reading and writing a registry (`s3quilt_core::registry`) on moto when it holds something
//! unexpected: unknown packages and top hashes, pointers that are not top hashes, manifests that
//! do not hash to their name or do not parse, versions listed by timestamp, a manifest quilt3
//! could not read (refused before anything is written), and S3 refusing a read.

use std::sync::Arc;

use s3quilt_core::quilt::manifest::{MAX_LINE_BYTES, ManifestError};
use s3quilt_core::quilt::{
    Json, JsonObject, Manifest, ManifestEntry, PackageHeader, PackageName, QuiltHash,
};
use s3quilt_core::registry::{PackageVersion, Registry, RegistryError};
use s3quilt_core::storage::{ObjectStore, S3Store, StoreErrorKind};
use s3quilt_tests::{
    FaultRule, InstrumentedStore, S3Server, SeedObject, list_all_versions, seed, server_tests,
};

fn manifest(message: &str) -> Manifest {
    let entry = ManifestEntry::new(
        "a.txt".parse().unwrap(),
        "s3://src/a.txt".into(),
        1,
        &QuiltHash::chunked("AAAA"),
        JsonObject::new(),
    );
    Manifest::new(PackageHeader::new(Some(message), None), vec![entry]).unwrap()
}

async fn registry(server: &'static S3Server) -> (aws_sdk_s3::Client, String, Arc<dyn ObjectStore>) {
    let client = server.client().await;
    let bucket = server.versioned_bucket_where_supported().await;
    (client, bucket, S3Store::shared(server.client().await))
}

async fn unknown_packages_and_top_hashes_are_not_found_with_what_was_looked_for(
    server: &'static S3Server,
) {
    let (_, bucket, store) = registry(server).await;
    let registry = Registry::new(store, &bucket);
    assert_eq!(registry.bucket(), bucket);
    let name: PackageName = "team/none".parse().unwrap();
    let not_found = |e: RegistryError| match e {
        RegistryError::NotFound { bucket: b, what } => {
            assert_eq!(b, bucket);
            what
        }
        other => panic!("expected NotFound, got {other}"),
    };
    assert_eq!(
        not_found(registry.latest(&name).await.unwrap_err()),
        "package team/none"
    );
    assert_eq!(
        not_found(registry.versions(&name).await.unwrap_err()),
        "package team/none"
    );
    assert_eq!(
        not_found(registry.manifest("ABC").await.unwrap_err()),
        "top hash \"ABC\"",
        "not 64 lower-case hex digits: no request"
    );
    let absent = "0".repeat(64);
    assert_eq!(
        not_found(registry.manifest(&absent).await.unwrap_err()),
        format!("manifest {absent}")
    );
    let err = registry.latest(&name).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("package team/none not found in registry s3://{bucket}")
    );
}

async fn pointers_and_manifests_that_are_not_what_they_claim_are_refused(
    server: &'static S3Server,
) {
    let (client, bucket, store) = registry(server).await;
    let registry = Registry::new(store, &bucket);
    let name: PackageName = "team/odd".parse().unwrap();

    seed(
        &client,
        &bucket,
        &[SeedObject::new(
            ".quilt/named_packages/team/odd/latest",
            b"not a top hash\n".to_vec(),
        )],
    )
    .await;
    match registry.latest(&name).await.unwrap_err() {
        RegistryError::BadPointer { bucket: b, key } => assert_eq!(
            (b.as_str(), key.as_str()),
            (bucket.as_str(), ".quilt/named_packages/team/odd/latest")
        ),
        other => panic!("expected BadPointer, got {other}"),
    }

    // A manifest stored under another manifest's top hash.
    let real = manifest("real");
    let other = manifest("other").top_hash();
    seed(
        &client,
        &bucket,
        &[SeedObject::new(
            format!(".quilt/packages/{other}"),
            real.to_jsonl().unwrap().into_bytes(),
        )],
    )
    .await;
    match registry.manifest(&other).await.unwrap_err() {
        RegistryError::HashMismatch {
            stored_as,
            computed,
            ..
        } => assert_eq!((stored_as, computed), (other.clone(), real.top_hash())),
        other => panic!("expected HashMismatch, got {other}"),
    }

    let (not_utf8, not_jsonl) = ("1".repeat(64), "2".repeat(64));
    seed(
        &client,
        &bucket,
        &[
            SeedObject::new(
                format!(".quilt/packages/{not_utf8}"),
                vec![0xff, 0xfe, b'\n'],
            ),
            SeedObject::new(
                format!(".quilt/packages/{not_jsonl}"),
                b"{\"version\": \"v0\"}\n{oops\n".to_vec(),
            ),
        ],
    )
    .await;
    match registry.manifest(&not_utf8).await.unwrap_err() {
        RegistryError::Manifest {
            top_hash,
            source: ManifestError::Shape { line: 0, reason },
            ..
        } => assert_eq!(
            (top_hash, reason.as_str()),
            (not_utf8, "the manifest is not UTF-8")
        ),
        other => panic!("expected a manifest error, got {other}"),
    }
    match registry.manifest(&not_jsonl).await.unwrap_err() {
        RegistryError::Manifest {
            source: ManifestError::Json { line: 2, .. },
            ..
        } => {}
        other => panic!("expected a JSON error on line 2, got {other}"),
    }
}

async fn versions_are_listed_by_timestamp_and_packages_by_latest_pointer(
    server: &'static S3Server,
) {
    let (client, bucket, store) = registry(server).await;
    let registry = Registry::new(store, &bucket);
    let name: PackageName = "team/timeline".parse().unwrap();
    let (early, late) = (manifest("early"), manifest("late"));
    registry.push(&name, &late, 1_000_000_010).await.unwrap();
    registry.push(&name, &early, 999_999_999).await.unwrap();
    // Not a timestamp: ignored.
    seed(
        &client,
        &bucket,
        &[
            SeedObject::new(
                ".quilt/named_packages/team/timeline/notes.txt",
                b"x".to_vec(),
            ),
            SeedObject::new(
                ".quilt/named_packages/team/other/1",
                early.top_hash().into_bytes(),
            ),
        ],
    )
    .await;
    assert_eq!(
        registry.versions(&name).await.unwrap(),
        [
            PackageVersion {
                timestamp: "999999999".into(),
                top_hash: early.top_hash(),
            },
            PackageVersion {
                timestamp: "1000000010".into(),
                top_hash: late.top_hash(),
            },
        ],
        "ordered by number, not by text"
    );
    assert_eq!(
        registry.latest(&name).await.unwrap(),
        early.top_hash(),
        "latest is the last push"
    );
    assert_eq!(
        registry.packages().await.unwrap(),
        std::slice::from_ref(&name),
        "a package without a latest pointer is not listed"
    );

    seed(
        &client,
        &bucket,
        &[SeedObject::new(
            ".quilt/named_packages/team/timeline/1000000020",
            b"garbage".to_vec(),
        )],
    )
    .await;
    assert!(matches!(
        registry.versions(&name).await.unwrap_err(),
        RegistryError::BadPointer { key, .. } if key.ends_with("/1000000020")
    ));
}

async fn a_manifest_quilt3_could_not_read_is_never_written(server: &'static S3Server) {
    let (client, bucket, store) = registry(server).await;
    let counted = InstrumentedStore::new(store, vec![]);
    let registry = Registry::new(counted.clone(), &bucket);
    let mut meta = JsonObject::new();
    meta.insert("note", Json::str("x".repeat(MAX_LINE_BYTES)));
    let too_big = Manifest::new(PackageHeader::new(None, Some(meta)), vec![]).unwrap();
    for result in [
        registry.put_manifest(&too_big).await.map(|_| ()),
        registry.put_manifest_if_absent(&too_big).await.map(|_| ()),
    ] {
        match result.unwrap_err() {
            RegistryError::Manifest {
                top_hash,
                source: ManifestError::LineTooLong { what, .. },
                ..
            } => {
                assert_eq!(top_hash, too_big.top_hash());
                assert_eq!(what, "the package header");
            }
            other => panic!("expected a manifest error, got {other}"),
        }
    }
    assert_eq!(counted.count("PutObject"), 0);
    assert!(list_all_versions(&client, &bucket).await.is_empty());

    // The same manifest twice: the second conditional write finds it and claims nothing.
    let small = manifest("twice");
    let (hash, first) = registry.put_manifest_if_absent(&small).await.unwrap();
    assert_eq!(hash, small.top_hash());
    assert_eq!(first.unwrap().key, format!(".quilt/packages/{hash}"));
    let (_, second) = registry.put_manifest_if_absent(&small).await.unwrap();
    assert_eq!(second, None);
    assert_eq!(registry.manifest(&hash).await.unwrap(), small);
}

async fn a_refused_read_is_a_store_error_not_a_missing_package(server: &'static S3Server) {
    let (_, bucket, store) = registry(server).await;
    let name: PackageName = "team/private".parse().unwrap();
    let written = Registry::new(store.clone(), &bucket);
    let (top_hash, _) = written.push(&name, &manifest("m"), 1).await.unwrap();
    let denied = InstrumentedStore::new(
        store,
        vec![
            FaultRule {
                operation: "GetObject",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::AccessDenied,
            },
            FaultRule {
                operation: "PutObject",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::Transient,
            },
        ],
    );
    let registry = Registry::new(denied, &bucket);
    for err in [
        registry.latest(&name).await.unwrap_err(),
        registry.manifest(&top_hash).await.unwrap_err(),
    ] {
        match err {
            RegistryError::Store(e) => assert_eq!(e.kind, StoreErrorKind::AccessDenied),
            other => panic!("expected a store error, got {other}"),
        }
    }
    match registry
        .put_manifest_if_absent(&manifest("n"))
        .await
        .unwrap_err()
    {
        RegistryError::Store(e) => assert_eq!(
            (e.kind, e.operation),
            (StoreErrorKind::Transient, "PutObject")
        ),
        other => panic!("expected a store error, got {other}"),
    }
}

server_tests! {
    unknown_packages_and_top_hashes_are_not_found_with_what_was_looked_for => [moto, localstack, seaweedfs, demo];
    pointers_and_manifests_that_are_not_what_they_claim_are_refused => [moto, localstack, seaweedfs, demo];
    versions_are_listed_by_timestamp_and_packages_by_latest_pointer => [moto, localstack, seaweedfs, demo];
    a_manifest_quilt3_could_not_read_is_never_written => [moto, localstack, seaweedfs, demo];
    a_refused_read_is_a_store_error_not_a_missing_package => [moto, localstack, seaweedfs, demo];
}
