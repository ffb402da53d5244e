//! S3 helpers for tests. Every helper panics with the SDK's full error on failure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    VersioningConfiguration,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// Creates a bucket with a unique lowercase name (`t-<counter>-<random>`), with versioning
/// enabled if asked, and returns its name.
pub async fn create_bucket(client: &Client, versioned: bool) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    let bucket = format!("t-{n}-{:012x}", h.finish() & 0xffff_ffff_ffff);

    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateBucket {bucket}: {}", DisplayErrorContext(&e)));
    if versioned {
        client
            .put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("PutBucketVersioning {bucket}: {}", DisplayErrorContext(&e))
            });
    }
    bucket
}

/// Suspends versioning on `bucket` (created versioned by [`create_bucket`]).
pub async fn suspend_versioning(client: &Client, bucket: &str) {
    client
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "suspend versioning of {bucket}: {}",
                DisplayErrorContext(&e)
            )
        });
}

/// One object for [`seed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedObject {
    pub key: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-<k>`); S3 lowercases the names.
    pub metadata: Vec<(String, String)>,
}

impl SeedObject {
    pub fn new(key: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        SeedObject {
            key: key.into(),
            body: body.into(),
            content_type: None,
            metadata: Vec::new(),
        }
    }

    pub fn content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_string());
        self
    }

    pub fn meta(mut self, k: &str, v: &str) -> Self {
        self.metadata.push((k.to_string(), v.to_string()));
        self
    }
}

/// Puts each object (in order, with `ChecksumAlgorithm::Sha256`) and returns the version ids
/// (`None` in an unversioned bucket).
pub async fn seed(client: &Client, bucket: &str, objects: &[SeedObject]) -> Vec<Option<String>> {
    let mut versions = Vec::with_capacity(objects.len());
    for o in objects {
        let mut req = client
            .put_object()
            .bucket(bucket)
            .key(&o.key)
            .body(ByteStream::from(o.body.clone()))
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        if let Some(ct) = &o.content_type {
            req = req.content_type(ct);
        }
        for (k, v) in &o.metadata {
            req = req.metadata(k, v);
        }
        let out = req.send().await.unwrap_or_else(|e| {
            panic!(
                "PutObject s3://{bucket}/{}: {}",
                o.key,
                DisplayErrorContext(&e)
            )
        });
        versions.push(out.version_id().map(str::to_string));
    }
    versions
}

/// Every object version and delete marker in the bucket as (key, version id, is delete marker),
/// sorted, paginated.
///
/// A bucket that never had versioning (every version id `"null"` or absent, no delete markers,
/// or ListObjectVersions unsupported) is listed with ListObjectsV2 instead, with version `None`.
/// (GetBucketVersioning cannot tell: moto 5.2.5's answer does not parse in the Rust SDK.)
pub async fn list_all_versions(
    client: &Client,
    bucket: &str,
) -> Vec<(String, Option<String>, bool)> {
    let mut out = list_object_versions(client, bucket)
        .await
        .unwrap_or_default();
    let never_versioned = out
        .iter()
        .all(|(_, v, delete)| !*delete && v.as_deref().is_none_or(|v| v == "null"));
    if never_versioned {
        out = list_objects_v2(client, bucket).await;
    }
    out.sort();
    out
}

/// ListObjectVersions, all pages; `None` if the server refuses the call.
async fn list_object_versions(
    client: &Client,
    bucket: &str,
) -> Option<Vec<(String, Option<String>, bool)>> {
    let mut out = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut version_marker: Option<String> = None;
    loop {
        let page = match client
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) if out.is_empty() => {
                eprintln!(
                    "s3quilt-tests: ListObjectVersions {bucket} failed, using ListObjectsV2: {}",
                    DisplayErrorContext(&e)
                );
                return None;
            }
            Err(e) => panic!("ListObjectVersions {bucket}: {}", DisplayErrorContext(&e)),
        };
        for v in page.versions() {
            out.push((
                v.key().unwrap_or_default().to_string(),
                v.version_id().map(str::to_string),
                false,
            ));
        }
        for m in page.delete_markers() {
            out.push((
                m.key().unwrap_or_default().to_string(),
                m.version_id().map(str::to_string),
                true,
            ));
        }
        if page.is_truncated() != Some(true) {
            return Some(out);
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
        if key_marker.is_none() && version_marker.is_none() {
            panic!("ListObjectVersions {bucket}: truncated page without a next marker");
        }
    }
}

/// ListObjectsV2, all pages, as (key, None, false).
async fn list_objects_v2(client: &Client, bucket: &str) -> Vec<(String, Option<String>, bool)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListObjectsV2 {bucket}: {}", DisplayErrorContext(&e)));
        for o in page.contents() {
            out.push((o.key().unwrap_or_default().to_string(), None, false));
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return out,
        }
    }
}

/// The bytes of the current version of `s3://bucket/key`.
pub async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject s3://{bucket}/{key}: {}", DisplayErrorContext(&e)));
    out.body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("GetObject s3://{bucket}/{key}: reading the body: {e}"))
        .into_bytes()
        .to_vec()
}

/// The first line (the header) of the manifest `s3://registry/.quilt/packages/<top_hash>`.
pub async fn manifest_header(client: &Client, registry: &str, top_hash: &str) -> String {
    let manifest = get_bytes(client, registry, &format!(".quilt/packages/{top_hash}")).await;
    let text = String::from_utf8(manifest).expect("a manifest is UTF-8");
    text.lines().next().unwrap_or_default().to_string()
}

/// Uploads `parts` as one multipart upload of `s3://bucket/key` with SHA-256 part checksums
/// (optionally tagged) and completes it.
pub async fn upload_sha256_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    parts: &[Vec<u8>],
    tagging: Option<&str>,
) {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .set_tagging(tagging.map(str::to_string))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateMultipartUpload: {}", DisplayErrorContext(&e)));
    let id = upload.upload_id().unwrap().to_string();
    let mut completed = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("UploadPart {n}: {}", DisplayErrorContext(&e)));
        completed.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_sha256(B64.encode(Sha256::digest(body)))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("CompleteMultipartUpload: {}", DisplayErrorContext(&e)));
}
