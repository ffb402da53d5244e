//! The servers' known gaps, probed: each probe runs on moto, LocalStack, SeaweedFS and the demo's
//! server and asserts
//! what [`ServerKind`]'s capability methods document (the table on [`ServerKind`]). A server
//! upgrade that changes a behaviour fails here, with the observed table, before it silently
//! changes what the other suites show.
//!
//! The probes run on every server whatever `S3QUILT_SERVERS` says (they are the check of the
//! table); the last test shows [`server_tests!`] on all four.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::put_object::PutObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ChecksumMode, ChecksumType, StorageClass,
    TaggingDirective, VersioningConfiguration,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use s3quilt_tests::{
    S3Server, SeedObject, ServerKind, create_bucket, demo, get_bytes, localstack, moto, seaweedfs,
    seed, server_tests, suspend_versioning, upload_sha256_parts,
};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// "refused <status> <code>" or "accepted" for the result of a call.
fn outcome<T, E: ProvideErrorMetadata, R: std::fmt::Debug>(r: &Result<T, SdkError<E, R>>) -> String
where
    SdkError<E, R>: std::error::Error,
{
    match r {
        Ok(_) => "accepted".to_string(),
        Err(SdkError::ServiceError(e)) => format!(
            "refused {:?}",
            e.err().code().unwrap_or("(no code)").to_string()
        ),
        Err(e) => format!("failed: {}", DisplayErrorContext(e)),
    }
}

fn refused<T, E: ProvideErrorMetadata, R: std::fmt::Debug>(
    r: &Result<T, SdkError<E, R>>,
    code: &str,
) -> bool {
    matches!(r, Err(SdkError::ServiceError(e)) if e.err().code() == Some(code))
}

/// One capability: what the server did (a sentence for the failure message) and whether that
/// counts as having it.
struct Observed {
    has: bool,
    detail: String,
}

async fn copy_conditions(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    seed(
        client,
        &bucket,
        &[
            SeedObject::new("src", "source"),
            SeedObject::new("dst", "old"),
        ],
    )
    .await;
    let none_match = client
        .copy_object()
        .bucket(&bucket)
        .key("dst")
        .copy_source(format!("{bucket}/src"))
        .if_none_match("*")
        .send()
        .await;
    let if_match = client
        .copy_object()
        .bucket(&bucket)
        .key("pinned")
        .copy_source(format!("{bucket}/src"))
        .copy_source_if_match("\"0123456789abcdef0123456789abcdef\"")
        .send()
        .await;
    Observed {
        has: refused(&none_match, "PreconditionFailed") && refused(&if_match, "PreconditionFailed"),
        detail: format!(
            "If-None-Match * onto an existing key: {}; wrong x-amz-copy-source-if-match: {}",
            outcome(&none_match),
            outcome(&if_match)
        ),
    }
}

/// The bytes of `key`, or why they cannot be read.
async fn try_get(client: &Client, bucket: &str, key: &str) -> Result<Vec<u8>, String> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("GetObject: {}", DisplayErrorContext(&e)))?;
    out.body
        .collect()
        .await
        .map(|b| b.into_bytes().to_vec())
        .map_err(|e| format!("reading the body: {}", DisplayErrorContext(&e)))
}

async fn refused_copy_keeps_target(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    seed(
        client,
        &bucket,
        &[
            SeedObject::new("src", "source"),
            SeedObject::new("dst", "old"),
        ],
    )
    .await;
    let copy = client
        .copy_object()
        .bucket(&bucket)
        .key("dst")
        .copy_source(format!("{bucket}/src"))
        .if_none_match("*")
        .send()
        .await;
    let dst = try_get(client, &bucket, "dst")
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Observed {
        has: dst.as_deref() == Ok("old"),
        detail: format!(
            "CopyObject If-None-Match * onto \"old\": {}; the target then reads {dst:?}",
            outcome(&copy)
        ),
    }
}

async fn put_key(
    client: &Client,
    bucket: &str,
    key: String,
) -> Result<(), SdkError<PutObjectError, HttpResponse>> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .map(|_| ())
}

/// A key of `len` bytes in segments of 100 bytes (99 × `k` and `/`).
fn segmented_key(len: usize) -> String {
    (0..len)
        .map(|i| if i % 100 == 99 { '/' } else { 'k' })
        .collect()
}

async fn key_length_limit(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let at_limit = put_key(client, &bucket, segmented_key(1024)).await;
    let over = put_key(client, &bucket, segmented_key(1025)).await;
    Observed {
        has: at_limit.is_ok() && refused(&over, "KeyTooLongError"),
        detail: format!(
            "1,024-byte key: {}; 1,025-byte key: {}",
            outcome(&at_limit),
            outcome(&over)
        ),
    }
}

/// Whether the longest stored one-segment key is 255 bytes (`Some(255)`) or there is no
/// segment limit below the key limit (`None`: 1,024 bytes in one segment are stored).
async fn key_segment_limit(client: &Client) -> (Option<usize>, String) {
    let bucket = create_bucket(client, false).await;
    let short = put_key(client, &bucket, "k".repeat(200)).await;
    if short.is_err() {
        // No long segment can be stored where no long key can (`max_key_len`).
        return (None, format!("200-byte key: {}", outcome(&short)));
    }
    let mut detail = Vec::new();
    let mut stored = Vec::new();
    for len in [255, 256, 1024] {
        let r = put_key(client, &bucket, "k".repeat(len)).await;
        detail.push(format!("{len}-byte segment: {}", outcome(&r)));
        stored.push(r.is_ok());
    }
    let limit = match stored[..] {
        [true, true, true] => None,
        [true, false, false] => Some(255),
        _ => Some(0), // matches no documented value: the assertion shows the details
    };
    (limit, detail.join("; "))
}

/// A two-part SHA-256 multipart upload (5 MiB + 1 KiB), optionally tagged, completed; returns
/// (bucket, key, part digests).
async fn upload_two_parts(
    client: &Client,
    tagging: Option<&str>,
) -> (String, String, Vec<Vec<u8>>) {
    let bucket = create_bucket(client, false).await;
    let key = "mpu".to_string();
    let parts = [vec![1u8; 5 * MIB], vec![2u8; 1024]];
    upload_sha256_parts(client, &bucket, &key, &parts, tagging).await;
    (bucket, key, parts.iter().map(|p| sha256(p)).collect())
}

async fn composite_labels(client: &Client) -> Observed {
    let (bucket, key, digests) = upload_two_parts(client, None).await;
    let composite = b64(&sha256(&digests.concat()));
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HeadObject: {}", DisplayErrorContext(&e)));
    let got = head.checksum_sha256().map(str::to_string);
    Observed {
        has: got.as_deref() == Some(&format!("{composite}-2"))
            && head.checksum_type() == Some(&ChecksumType::Composite),
        detail: format!(
            "HeadObject ChecksumSHA256 {got:?} (composite {composite}), ChecksumType {:?}",
            head.checksum_type()
        ),
    }
}

async fn part_checksums(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    seed(client, &bucket, &[SeedObject::new("src", body.clone())]).await;
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("dst")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateMultipartUpload: {}", DisplayErrorContext(&e)));
    let id = upload.upload_id().unwrap();
    let part = client
        .upload_part_copy()
        .bucket(&bucket)
        .key("dst")
        .upload_id(id)
        .part_number(1)
        .copy_source(format!("{bucket}/src"))
        .copy_source_range("bytes=0-99")
        .send()
        .await
        .unwrap_or_else(|e| panic!("UploadPartCopy: {}", DisplayErrorContext(&e)));
    let _ = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("dst")
        .upload_id(id)
        .send()
        .await;
    let got = part
        .copy_part_result()
        .and_then(|r| r.checksum_sha256())
        .map(str::to_string);
    let want = b64(&sha256(&body[..100]));
    Observed {
        has: got.as_deref() == Some(want.as_str()),
        detail: format!("UploadPartCopy ChecksumSHA256 {got:?} (SHA-256 of the range {want})"),
    }
}

async fn versioning(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let r = client
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await;
    Observed {
        has: r.is_ok(),
        detail: format!("PutBucketVersioning Enabled: {}", outcome(&r)),
    }
}

/// A `null` delete marker in a suspended bucket (left by a DeleteObject without a version) is
/// gone after DeleteObject `versionId=null`.
async fn null_delete_markers(client: &Client, supports_versioning: bool) -> Observed {
    if !supports_versioning {
        return Observed {
            has: false,
            detail: "no versioning".into(),
        };
    }
    let bucket = create_bucket(client, true).await;
    suspend_versioning(client, &bucket).await;
    seed(client, &bucket, &[SeedObject::new("k", "x")]).await;
    let delete = |version: Option<&str>| {
        client
            .delete_object()
            .bucket(&bucket)
            .key("k")
            .set_version_id(version.map(str::to_string))
            .send()
    };
    let first = delete(None).await;
    let second = delete(Some("null")).await;
    let left = client
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .map(|l| (l.versions().len(), l.delete_markers().len()));
    Observed {
        has: matches!(left, Ok((0, 0))),
        detail: format!(
            "DeleteObject k: {}, then versionId=null: {}; left (versions, markers): {left:?}",
            outcome(&first),
            outcome(&second)
        ),
    }
}

/// `a/../b.txt` and `c/./d.txt` are stored and listed as written.
async fn dot_segments(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let keys = ["a/../b.txt", "c/./d.txt"];
    let mut puts = Vec::new();
    for key in keys {
        let r = client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await;
        puts.push(format!("{key}: {}", outcome(&r)));
    }
    let listed: Vec<String> = match client.list_objects_v2().bucket(&bucket).send().await {
        Ok(l) => l
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect(),
        Err(e) => vec![format!("ListObjectsV2: {}", DisplayErrorContext(&e))],
    };
    let mut sorted = listed.clone();
    sorted.sort();
    Observed {
        has: sorted == keys,
        detail: format!("PutObject {}; listed {listed:?}", puts.join(", ")),
    }
}

/// PutObject with storage class GLACIER is listed with that class.
async fn archive_storage_classes(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let put = client
        .put_object()
        .bucket(&bucket)
        .key("cold.bin")
        .body(ByteStream::from_static(b"frozen"))
        .storage_class(StorageClass::Glacier)
        .send()
        .await;
    let class = match client.list_objects_v2().bucket(&bucket).send().await {
        Ok(l) => l
            .contents()
            .first()
            .and_then(|o| o.storage_class())
            .map(|c| c.as_str().to_string()),
        Err(e) => Some(format!("ListObjectsV2: {}", DisplayErrorContext(&e))),
    };
    Observed {
        has: put.is_ok() && class.as_deref() == Some("GLACIER"),
        detail: format!(
            "PutObject GLACIER: {}; listed class {class:?}",
            outcome(&put)
        ),
    }
}

/// On a server that keeps versions, a versioned bucket answers `Enabled`; on one that does not,
/// a new bucket answers without a status (as S3 does for a bucket never versioned).
async fn copy_checksums(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    seed(client, &bucket, &[SeedObject::new("src", "hash me")]).await;
    let r = client
        .copy_object()
        .bucket(&bucket)
        .key("copied")
        .copy_source(format!("{bucket}/src"))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await;
    let got = r
        .as_ref()
        .ok()
        .and_then(|o| o.copy_object_result())
        .and_then(|c| c.checksum_sha256())
        .map(str::to_string);
    let want = b64(&sha256(b"hash me"));
    Observed {
        has: got.as_deref() == Some(want.as_str()),
        detail: format!(
            "CopyObject ChecksumSHA256 {got:?} (SHA-256 {want}); {}",
            outcome(&r)
        ),
    }
}

/// The keys of a ListObjectsV2 answer (none if it failed).
fn listed_keys<E, R>(
    r: &Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, SdkError<E, R>>,
) -> Vec<String> {
    r.as_ref()
        .map(|o| {
            o.contents()
                .iter()
                .filter_map(|c| c.key().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn url_encoded_listing(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    seed(client, &bucket, &[SeedObject::new("esc\u{1b}.log", "x")]).await;
    let r = client
        .list_objects_v2()
        .bucket(&bucket)
        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
        .send()
        .await;
    let keys = listed_keys(&r);
    Observed {
        has: keys == ["esc%1B.log"],
        detail: format!(
            "ListObjectsV2 encoding-type=url: keys {keys:?}; {}",
            outcome(&r)
        ),
    }
}

async fn keys_ending_in_slash(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let empty = put_key(client, &bucket, "empty/".into()).await;
    let full = client
        .put_object()
        .bucket(&bucket)
        .key("full/")
        .body(ByteStream::from_static(b"bytes"))
        .send()
        .await;
    let listed = client.list_objects_v2().bucket(&bucket).send().await;
    let keys = listed_keys(&listed);
    let bytes = try_get(client, &bucket, "full/").await;
    Observed {
        has: keys == ["empty/", "full/"] && bytes.as_deref() == Ok(b"bytes".as_slice()),
        detail: format!(
            "PutObject empty/: {}; full/ (5 bytes): {}; listed {keys:?}; full/ reads {:?}",
            outcome(&empty),
            outcome(&full),
            bytes.map(|b| b.len())
        ),
    }
}

async fn key_beside_folder(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    let file = put_key(client, &bucket, "a".into()).await;
    let nested = put_key(client, &bucket, "a/b".into()).await;
    Observed {
        has: file.is_ok() && nested.is_ok(),
        detail: format!("PutObject a: {}; a/b: {}", outcome(&file), outcome(&nested)),
    }
}

async fn bucket_versioning(client: &Client, versioned: bool) -> Observed {
    let bucket = create_bucket(client, versioned).await;
    let r = client.get_bucket_versioning().bucket(&bucket).send().await;
    let status = r.as_ref().ok().and_then(|o| o.status().cloned());
    let want = versioned.then_some(BucketVersioningStatus::Enabled);
    Observed {
        has: r.is_ok() && status == want,
        detail: match &r {
            Ok(_) => format!(
                "GetBucketVersioning of a {} bucket: status {status:?}",
                if versioned { "versioned" } else { "new" }
            ),
            Err(e) => format!("GetBucketVersioning: {}", DisplayErrorContext(e)),
        },
    }
}

async fn tags(client: &Client, bucket: &str, key: &str) -> Result<Vec<(String, String)>, String> {
    client
        .get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map(|o| {
            o.tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()
        })
        .map_err(|e| DisplayErrorContext(&e).to_string())
}

async fn tagging_on_copy(client: &Client) -> Observed {
    let bucket = create_bucket(client, false).await;
    seed(client, &bucket, &[SeedObject::new("src", "tag me")]).await;
    let copy = client
        .copy_object()
        .bucket(&bucket)
        .key("copied")
        .copy_source(format!("{bucket}/src"))
        .tagging("a=1&b=two")
        .tagging_directive(TaggingDirective::Replace)
        .send()
        .await;
    let copied = match &copy {
        Ok(_) => tags(client, &bucket, "copied").await,
        Err(e) => Err(format!("CopyObject: {}", DisplayErrorContext(e))),
    };
    let (mpu_bucket, mpu_key, _) = upload_two_parts(client, Some("c=3")).await;
    let multipart = tags(client, &mpu_bucket, &mpu_key).await;
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut copied_sorted = copied.clone().unwrap_or_default();
    copied_sorted.sort();
    Observed {
        has: copied_sorted == vec![pair("a", "1"), pair("b", "two")]
            && multipart.as_deref() == Ok(&[pair("c", "3")][..]),
        detail: format!(
            "tags after CopyObject REPLACE a=1&b=two: {copied:?}; after \
             CreateMultipartUpload c=3: {multipart:?}"
        ),
    }
}

/// `Some(150)` where a 150-byte key (in 30-byte segments) is stored and a 400-byte one is not,
/// `None` where a 1,024-byte key is stored.
async fn key_len_limit(client: &Client) -> (Option<usize>, String) {
    let bucket = create_bucket(client, false).await;
    let key = |len: usize| {
        let segments = vec!["k".repeat(29); len / 30 - 1].join("/");
        format!("{segments}/{}", "x".repeat(len - segments.len() - 1))
    };
    let mut detail = Vec::new();
    let mut stored = Vec::new();
    for len in [150, 400, 1024] {
        let r = put_key(client, &bucket, key(len)).await;
        detail.push(format!("{len}-byte key: {}", outcome(&r)));
        stored.push(r.is_ok());
    }
    let limit = match stored[..] {
        [true, true, true] => None,
        [true, false, false] => Some(150),
        _ => Some(0), // matches no documented value: the assertion shows the details
    };
    (limit, detail.join("; "))
}

/// Probes `server` and asserts every observed capability equals the documented one.
async fn check_documented_capabilities(server: &S3Server) {
    let kind = server.kind();
    let client = server.client().await;
    // (capability, documented, observed, what the server did)
    let mut rows: Vec<(&str, String, String, String)> = Vec::new();
    let mut row = |name, documented: bool, seen: Observed| {
        rows.push((
            name,
            documented.to_string(),
            seen.has.to_string(),
            seen.detail,
        ));
    };
    row(
        "enforces_copy_conditions",
        kind.enforces_copy_conditions(),
        copy_conditions(&client).await,
    );
    row(
        "keeps_target_on_refused_copy",
        kind.keeps_target_on_refused_copy(),
        refused_copy_keeps_target(&client).await,
    );
    row(
        "enforces_key_length_limit",
        kind.enforces_key_length_limit(),
        key_length_limit(&client).await,
    );
    row(
        "labels_composite_checksums",
        kind.labels_composite_checksums(),
        composite_labels(&client).await,
    );
    row(
        "returns_part_checksums",
        kind.returns_part_checksums(),
        part_checksums(&client).await,
    );
    row(
        "returns_copy_checksums",
        kind.returns_copy_checksums(),
        copy_checksums(&client).await,
    );
    row(
        "lists_url_encoded",
        kind.lists_url_encoded(),
        url_encoded_listing(&client).await,
    );
    row(
        "keeps_keys_ending_in_slash",
        kind.keeps_keys_ending_in_slash(),
        keys_ending_in_slash(&client).await,
    );
    row(
        "stores_a_key_beside_its_folder",
        kind.stores_a_key_beside_its_folder(),
        key_beside_folder(&client).await,
    );
    row(
        "supports_versioning",
        kind.supports_versioning(),
        versioning(&client).await,
    );
    row(
        "parses_bucket_versioning",
        kind.parses_bucket_versioning(),
        bucket_versioning(&client, kind.supports_versioning()).await,
    );
    row(
        "removes_null_delete_markers",
        kind.removes_null_delete_markers(),
        null_delete_markers(&client, kind.supports_versioning()).await,
    );
    row(
        "stores_dot_segments",
        kind.stores_dot_segments(),
        dot_segments(&client).await,
    );
    row(
        "stores_archive_storage_classes",
        kind.stores_archive_storage_classes(),
        archive_storage_classes(&client).await,
    );
    row(
        "supports_object_tagging_on_copy",
        kind.supports_object_tagging_on_copy(),
        tagging_on_copy(&client).await,
    );
    let (key_limit, key_detail) = key_len_limit(&client).await;
    rows.push((
        "max_key_len",
        format!("{:?}", kind.max_key_len()),
        format!("{key_limit:?}"),
        key_detail,
    ));
    let (segment_limit, segment_detail) = key_segment_limit(&client).await;
    rows.push((
        "max_key_segment_len",
        format!("{:?}", kind.max_key_segment_len()),
        format!("{segment_limit:?}"),
        segment_detail,
    ));
    let table: Vec<String> = rows
        .iter()
        .map(|(name, documented, observed, detail)| {
            let mark = if documented == observed { " " } else { "✗" };
            format!("{mark} {name}: documented {documented}, observed {observed} — {detail}")
        })
        .collect();
    eprintln!("{kind}:\n{}", table.join("\n"));
    assert!(
        rows.iter()
            .all(|(_, documented, observed, _)| documented == observed),
        "{kind} does not behave as ServerKind documents (update the table and the methods in \
         tests/src/server.rs if the server changed):\n{}",
        table.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_capabilities_are_as_documented() {
    check_documented_capabilities(moto()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn localstack_capabilities_are_as_documented() {
    check_documented_capabilities(localstack()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seaweedfs_capabilities_are_as_documented() {
    check_documented_capabilities(seaweedfs()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_capabilities_are_as_documented() {
    check_documented_capabilities(demo()).await;
}

/// What LocalStack gives that the copier relies on and moto does not: CopyObject returns the
/// SHA-256 of the copy, and versioning works with version ids on put and copy.
#[tokio::test(flavor = "multi_thread")]
async fn localstack_copy_returns_checksum_and_versions() {
    let server = localstack();
    assert_eq!(server.kind(), ServerKind::LocalStack);
    assert_eq!(server.credentials(), ("test", "test"));
    let client = server.client().await;
    let bucket = create_bucket(&client, true).await;
    let v = seed(&client, &bucket, &[SeedObject::new("a b/ü.txt", "hello")]).await;
    let source_version = v[0].clone().expect("a version id");
    let copy = client
        .copy_object()
        .bucket(&bucket)
        .key("copy")
        .copy_source(format!(
            "{bucket}/a%20b/%C3%BC.txt?versionId={source_version}"
        ))
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CopyObject: {}", DisplayErrorContext(&e)));
    assert_eq!(copy.copy_source_version_id(), Some(source_version.as_str()));
    assert!(copy.version_id().is_some());
    assert_eq!(
        copy.copy_object_result().and_then(|r| r.checksum_sha256()),
        Some(b64(&sha256(b"hello")).as_str())
    );
    assert_eq!(get_bytes(&client, &bucket, "copy").await, b"hello");
}

async fn put_get_roundtrip(server: &'static S3Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, false).await;
    seed(
        &client,
        &bucket,
        &[SeedObject::new("k", server.kind().name())],
    )
    .await;
    assert_eq!(
        get_bytes(&client, &bucket, "k").await,
        server.kind().name().as_bytes()
    );
}

server_tests! {
    put_get_roundtrip => [moto, localstack, seaweedfs, demo];
}
