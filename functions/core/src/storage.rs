//! The storage port: the S3 operations s3quilt needs, in its own terms, behind one trait.
//!
//! Every step (plan, copy, finalize, registry) talks to [`ObjectStore`], never to the SDK, so
//! the same code runs against AWS, moto, SeaweedFS or the embedded demo server, and tests can
//! wrap a store to inject failures. [`S3Store`] is the aws-sdk-s3 adapter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload,
    CompletedPart, EncodingType, MetadataDirective, TaggingDirective,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// What kind of failure a storage call had; decides retry and rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoreErrorKind {
    /// The bucket, key or version does not exist.
    NotFound,
    /// Credentials lack permission (or the bucket belongs to someone else).
    AccessDenied,
    /// A conditional write lost (`If-None-Match: *` on an existing key).
    PreconditionFailed,
    /// S3 asked us to slow down (503 SlowDown, 429).
    Throttled,
    /// A 5xx, timeout or a connection that broke: worth retrying.
    Transient,
    /// No AWS credentials were found: a configuration error, which no retry mends.
    NoCredentials,
    /// Nothing answered at the endpoint (connection refused, unknown host): usually a wrong
    /// endpoint URL. Retried like [`StoreErrorKind::Transient`] (a server restarting refuses
    /// connections for a moment), but reported as what to check.
    Unreachable,
    /// The object is archived (GLACIER / DEEP_ARCHIVE) and not restored.
    InvalidObjectState,
    /// The server does not implement what the request asked (HTTP 501 NotImplemented).
    Unsupported,
    /// Anything else: a request S3 refused for good.
    Permanent,
}

impl StoreErrorKind {
    /// Whether a retry may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            StoreErrorKind::Throttled | StoreErrorKind::Transient | StoreErrorKind::Unreachable
        )
    }
}

/// A failed storage call, naming the operation and object (never credentials or signed URLs).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} s3://{bucket}/{key} failed ({kind:?}): {message}")]
pub struct StoreError {
    /// Classification.
    pub kind: StoreErrorKind,
    /// The S3 operation, e.g. `CopyObject`.
    pub operation: &'static str,
    /// Bucket.
    pub bucket: String,
    /// Key (empty for bucket-level calls).
    pub key: String,
    /// S3's error code and message, or the transport error.
    pub message: String,
}

impl StoreError {
    /// A new error.
    pub fn new(
        kind: StoreErrorKind,
        operation: &'static str,
        bucket: &str,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            operation,
            bucket: bucket.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// One object from a listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListedObject {
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag as S3 returns it (quoted).
    pub etag: Option<String>,
    /// Storage class (`STANDARD` when S3 omits it).
    pub storage_class: String,
    /// Last-modified time, RFC 3339.
    pub last_modified: Option<String>,
}

/// One page of a ListObjectsV2 call.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects on this page.
    pub objects: Vec<ListedObject>,
    /// Common prefixes (with a delimiter).
    pub common_prefixes: Vec<String>,
    /// Token for the next page, if any.
    pub next_token: Option<String>,
}

/// Everything HeadObject tells about an object (with checksum mode enabled).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// Version id, when versioned.
    pub version_id: Option<String>,
    /// ETag.
    pub etag: Option<String>,
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), keys lower-case as S3 returns them.
    pub metadata: BTreeMap<String, String>,
    /// Storage class.
    pub storage_class: String,
    /// Last-modified, RFC 3339.
    pub last_modified: Option<String>,
    /// Stored full-object or composite SHA-256 (base64), if S3 has one.
    pub checksum_sha256: Option<String>,
    /// Stored CRC-64/NVME (base64), if S3 has one.
    pub checksum_crc64nvme: Option<String>,
    /// `FULL_OBJECT` or `COMPOSITE`, when S3 says.
    pub checksum_type: Option<String>,
    /// Number of parts for a multipart object.
    pub parts_count: Option<u32>,
    /// `x-amz-restore`, for archived objects.
    pub restore: Option<String>,
}

/// The checksum algorithm to ask S3 to compute on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteChecksum {
    /// SHA-256.
    Sha256,
    /// CRC-64/NVME.
    Crc64Nvme,
}

/// A server-side copy request.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// Source bucket.
    pub src_bucket: &'a str,
    /// Source key.
    pub src_key: &'a str,
    /// Source version, pinned so the copy is of exactly the object that was planned.
    pub src_version_id: Option<&'a str>,
    /// Destination bucket.
    pub dst_bucket: &'a str,
    /// Destination key.
    pub dst_key: &'a str,
    /// Checksum S3 should compute on the new object.
    pub checksum: WriteChecksum,
    /// Refuse to overwrite an existing destination (`If-None-Match: *`).
    pub if_none_match: bool,
    /// Copy only if the source still has this ETag (the one planned).
    pub src_if_match: Option<&'a str>,
    /// Tag set replacing the source's on the copy (URL-query form): the run's ownership tag.
    pub tagging: Option<&'a str>,
}

/// What a write produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteResult {
    /// Version id of the new object (versioned buckets).
    pub version_id: Option<String>,
    /// ETag.
    pub etag: Option<String>,
    /// SHA-256 checksum S3 returned, if any.
    pub checksum_sha256: Option<String>,
    /// CRC-64/NVME checksum S3 returned, if any.
    pub checksum_crc64nvme: Option<String>,
    /// The version of the source that a copy read (`x-amz-copy-source-version-id`).
    pub source_version_id: Option<String>,
}

/// One part of a multipart copy.
#[derive(Debug, Clone)]
pub struct PartCopyRequest<'a> {
    /// Source bucket.
    pub src_bucket: &'a str,
    /// Source key.
    pub src_key: &'a str,
    /// Source version.
    pub src_version_id: Option<&'a str>,
    /// Destination bucket.
    pub dst_bucket: &'a str,
    /// Destination key.
    pub dst_key: &'a str,
    /// Upload id.
    pub upload_id: &'a str,
    /// 1-based part number.
    pub part_number: u32,
    /// Inclusive byte range of the source.
    pub first_byte: u64,
    /// Inclusive last byte.
    pub last_byte: u64,
    /// Copy only if the source still has this ETag.
    pub src_if_match: Option<&'a str>,
}

/// A finished part.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CopiedPart {
    /// Part number.
    pub part_number: u32,
    /// ETag.
    pub etag: String,
    /// Part SHA-256 (base64), when the server returned it.
    pub checksum_sha256: Option<String>,
}

/// A stream of object bytes.
pub type ByteChunks = BoxStream<'static, Result<Bytes, StoreError>>;

/// Options for a small write.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Content-Type.
    pub content_type: Option<String>,
    /// Refuse to overwrite (`If-None-Match: *`).
    pub if_none_match: bool,
    /// Tag set for the new object (URL-query form, e.g. `s3quilt-run=<run id>`).
    pub tagging: Option<String>,
}

/// A bucket's versioning state, as GetBucketVersioning reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Versioning {
    /// Every write makes a new version with its own id.
    Enabled,
    /// Versioning was on and is suspended: a write replaces the `null` version (older versions
    /// stay). For overwrites this is an unversioned bucket.
    Suspended,
    /// Never versioned: a write replaces the object.
    Off,
}

impl Versioning {
    /// Whether a write keeps what it replaces (only with versioning enabled).
    pub fn keeps_versions(self) -> bool {
        self == Versioning::Enabled
    }
}

/// The S3 operations s3quilt uses.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// One ListObjectsV2 page.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError>;
    /// HeadObject with checksum mode enabled.
    async fn head(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<ObjectInfo, StoreError>;
    /// GetObject, streamed (optionally a byte range, inclusive).
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        range: Option<(u64, u64)>,
    ) -> Result<ByteChunks, StoreError>;
    /// PutObject of a small body (manifests, pointers, staging documents) with a SHA-256 checksum.
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        options: PutOptions,
    ) -> Result<WriteResult, StoreError>;
    /// CopyObject with the source's metadata and a requested checksum.
    async fn copy(&self, request: CopyRequest<'_>) -> Result<WriteResult, StoreError>;
    /// CreateMultipartUpload with a requested checksum algorithm, copying content type and metadata.
    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        checksum: WriteChecksum,
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
        tagging: Option<&str>,
    ) -> Result<String, StoreError>;
    /// UploadPartCopy of one range.
    async fn upload_part_copy(
        &self,
        request: PartCopyRequest<'_>,
    ) -> Result<CopiedPart, StoreError>;
    /// UploadPart of a body (a manifest too large for one PutObject) with a SHA-256 checksum,
    /// which the returned part carries for CompleteMultipartUpload.
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<CopiedPart, StoreError>;
    /// CompleteMultipartUpload.
    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CopiedPart],
        if_none_match: bool,
    ) -> Result<WriteResult, StoreError>;
    /// AbortMultipartUpload.
    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError>;
    /// The ids of the multipart uploads open on exactly `key` (ListMultipartUploads).
    async fn open_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError>;
    /// DeleteObject (a specific version when given).
    async fn delete(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StoreError>;
    /// DeleteObjects: removes exact object versions (`(key, version id)`, at most
    /// [`DELETE_BATCH_MAX`]) in one request. Returns the versions S3 did not delete, each with
    /// why; a version already gone counts as deleted.
    async fn delete_versions(
        &self,
        bucket: &str,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionNotDeleted>, StoreError>;
    /// DeleteObject only if the object's current ETag is `etag` (`If-Match`; S3 answers 412
    /// otherwise), so an object another writer put over ours is never deleted.
    async fn delete_if_match(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        etag: &str,
    ) -> Result<(), StoreError>;
    /// The value of tag `tag` on an object (GetObjectTagging), `None` when it has no such tag.
    async fn tag_value(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tag: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Every version and delete marker under `prefix` (all pages).
    async fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ObjectVersion>, StoreError>;
    /// The bucket's versioning state; `None` when the server's answer cannot be read (moto
    /// 5.2.5 answers with a root element the SDK refuses).
    async fn versioning(&self, bucket: &str) -> Result<Option<Versioning>, StoreError>;
}

/// Most object versions one DeleteObjects request may name (S3's limit).
pub const DELETE_BATCH_MAX: usize = 1000;

/// A version a DeleteObjects request did not delete, with S3's reason.
#[derive(Debug, Clone)]
pub struct VersionNotDeleted {
    /// Key.
    pub key: String,
    /// Version id.
    pub version_id: String,
    /// Why (the kind decides whether to try again).
    pub error: StoreError,
}

/// One entry of ListObjectVersions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectVersion {
    /// Key.
    pub key: String,
    /// Version id (`None` for the `null` version of an unversioned object).
    pub version_id: Option<String>,
    /// Whether this is a delete marker.
    pub is_delete_marker: bool,
}

/// Reads a whole (small) object into memory.
pub async fn get_bytes(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
) -> Result<Bytes, StoreError> {
    let chunks: Vec<Bytes> = store
        .get(bucket, key, version_id, None)
        .await?
        .try_collect()
        .await?;
    Ok(chunks.concat().into())
}

/// Lists every object under `prefix` (all pages, no delimiter), each page retried by `retry`.
pub async fn list_all(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    retry: &crate::retry::RetryPolicy,
) -> Result<Vec<ListedObject>, StoreError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry
            .run(|_| store.list_page(bucket, prefix, None, token.clone(), None))
            .await?;
        out.extend(page.objects);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(out),
        }
    }
}

/// Percent-encodes `bucket/key` for `x-amz-copy-source` (the SDK does not), keeping `/`.
pub fn copy_source(bucket: &str, key: &str, version_id: Option<&str>) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let mut source = format!(
        "{}/{}",
        bucket,
        percent_encoding::utf8_percent_encode(key, SET)
    );
    if let Some(v) = version_id {
        source.push_str("?versionId=");
        source.push_str(&percent_encoding::utf8_percent_encode(v, SET).to_string());
    }
    source
}

/// Connection settings for S3 (and S3-compatible stores), shared by the CLI, Lambdas and MCP.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint URL (`AWS_ENDPOINT_URL` is honoured when this is `None`).
    pub endpoint_url: Option<String>,
    /// Region (default chain when `None`).
    pub region: Option<String>,
    /// Named profile.
    pub profile: Option<String>,
    /// Path-style addressing; on by default for custom endpoints.
    pub force_path_style: Option<bool>,
    /// Longest wait for one request's response to start or continue (default 120 s; S3 keeps
    /// long copies alive with whitespace, so this bounds a hung connection, not a big copy).
    pub read_timeout: Option<std::time::Duration>,
}

impl S3Settings {
    /// Settings from the environment: `AWS_ENDPOINT_URL(_S3)`, `AWS_REGION`, `AWS_PROFILE`,
    /// `S3QUILT_FORCE_PATH_STYLE`, `S3QUILT_READ_TIMEOUT_SECS`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        S3Settings {
            endpoint_url: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            profile: var("AWS_PROFILE"),
            force_path_style: var("S3QUILT_FORCE_PATH_STYLE")
                .map(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            read_timeout: var("S3QUILT_READ_TIMEOUT_SECS")
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_secs),
        }
    }

    /// Builds an SDK config from these settings.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        } else if self.endpoint_url.is_some() {
            // Local servers do not care, but the SDK needs some region to sign with.
            loader = loader.region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1"),
            );
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        // Every request has a deadline: a hung connection fails (and is retried) instead of
        // stalling a run.
        loader = loader.timeout_config(
            aws_smithy_types::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(
                    self.read_timeout
                        .unwrap_or(std::time::Duration::from_secs(120)),
                )
                .build(),
        );
        loader.load().await
    }

    /// An S3 client from these settings.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let config = self.sdk_config().await;
        let path_style = self
            .force_path_style
            .unwrap_or(self.endpoint_url.is_some() || config.endpoint_url().is_some());
        // One retry layer: ours (crate::retry). The SDK's own retries would sit under it, multiply
        // the attempts on the wire, and hide from us that an attempt's reply was lost.
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        aws_sdk_s3::Client::from_conf(s3_config)
    }
}

/// The aws-sdk-s3 adapter.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
}

impl S3Store {
    /// Wraps a client, turning the SDK's own retries off: [`crate::retry`] is the one retry
    /// layer, so the documented attempt count is what goes on the wire and a lost reply is seen
    /// by the layer that records what the run wrote.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
        }
    }

    /// The store as a shared trait object.
    pub fn shared(client: aws_sdk_s3::Client) -> Arc<dyn ObjectStore> {
        Arc::new(S3Store::new(client))
    }
}

fn classify<E>(
    operation: &'static str,
    bucket: &str,
    key: &str,
    err: SdkError<E, HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_string();
            let text = service.err().message().unwrap_or("").to_string();
            let kind = match (status, code.as_str()) {
                (_, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded")
                | (429, _) => StoreErrorKind::Throttled,
                (
                    _,
                    "NoSuchKey" | "NoSuchBucket" | "NoSuchVersion" | "NotFound" | "NoSuchUpload",
                )
                | (404, _) => StoreErrorKind::NotFound,
                // Before the 403 arm: S3 answers an archived object's read with 403
                // InvalidObjectState, which is not a permission problem.
                (_, "InvalidObjectState") => StoreErrorKind::InvalidObjectState,
                (
                    _,
                    "AccessDenied"
                    | "AllAccessDisabled"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch",
                )
                | (403, _) => StoreErrorKind::AccessDenied,
                (_, "PreconditionFailed" | "ConditionalRequestConflict") | (412, _) => {
                    StoreErrorKind::PreconditionFailed
                }
                // A feature the server does not have (LocalStack: `If-Match` on DeleteObject):
                // retrying cannot help.
                (_, "NotImplemented") | (501, _) => StoreErrorKind::Unsupported,
                (s, _) if s >= 500 => StoreErrorKind::Transient,
                _ => StoreErrorKind::Permanent,
            };
            let detail = if code.is_empty() && text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {code}: {text}")
            };
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (StoreErrorKind::Transient, "request timed out".to_string()),
        SdkError::DispatchFailure(failure) => {
            dispatch_failure(&format!("{failure:?}"), failure.as_connector_error())
        }
        SdkError::ResponseError(_) => (
            StoreErrorKind::Transient,
            "malformed or truncated response".to_string(),
        ),
        other => (StoreErrorKind::Permanent, other.to_string()),
    };
    StoreError::new(kind, operation, bucket, key, message)
}

/// A request that was never answered: missing credentials and refused connections are told
/// apart from a broken connection, in words rather than the SDK's nested debug dump.
fn dispatch_failure(
    dump: &str,
    connector: Option<&aws_sdk_s3::error::ConnectorError>,
) -> (StoreErrorKind, String) {
    // The credential chain's error type is not exported by the SDK; its debug name is stable.
    if dump.contains("CredentialsNotLoaded") {
        return (
            StoreErrorKind::NoCredentials,
            "no AWS credentials found (set AWS_PROFILE to a profile that has them, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; after `aws sso login` for SSO profiles)".into(),
        );
    }
    // Each error of the chain, outermost first: hyper's "client error (Connect)", "tcp connect
    // error", then the OS's reason.
    let mut reasons = Vec::new();
    let mut source = connector.map(|c| c as &(dyn std::error::Error + 'static));
    while let Some(error) = source {
        reasons.push(error.to_string());
        source = error.source();
    }
    let reason = reasons.last().cloned().unwrap_or_default();
    if connector.is_some_and(|c| c.is_io()) && dump.contains("ConnectError(") {
        let at = connect_address(dump)
            .map(|address| format!(" at {address}"))
            .unwrap_or_default();
        return (
            StoreErrorKind::Unreachable,
            format!("could not connect to the S3 endpoint{at} ({reason})"),
        );
    }
    (
        StoreErrorKind::Transient,
        format!("could not reach S3 ({})", reasons.join(": ")),
    )
}

/// The address a refused connection went to: hyper-util shows it only in its debug form,
/// `ConnectError("tcp connect error", 127.0.0.1:1, Os { … })`.
fn connect_address(dump: &str) -> Option<&str> {
    let after = &dump[dump.find("ConnectError(\"")? + "ConnectError(\"".len()..];
    let after = after.split_once("\", ")?.1;
    let address = after.split([',', ')']).next()?.trim();
    let looks_like_address = address.contains(':')
        && address
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:[]-".contains(c));
    looks_like_address.then_some(address)
}

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    t.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
}

fn sdk_checksum(c: WriteChecksum) -> ChecksumAlgorithm {
    match c {
        WriteChecksum::Sha256 => ChecksumAlgorithm::Sha256,
        WriteChecksum::Crc64Nvme => ChecksumAlgorithm::Crc64Nvme,
    }
}

/// How a listing's keys, prefixes and markers are written: percent-encoded when the answer says
/// `EncodingType=url` (asked on every listing), as they are otherwise. A server that ignores the
/// request answers without the element, and its names are taken as they are: decoding a plain
/// key would change any `%` or `+` in it.
struct ListedNames<'a> {
    url_encoded: bool,
    operation: &'static str,
    bucket: &'a str,
}

impl<'a> ListedNames<'a> {
    fn new(encoding: Option<&EncodingType>, operation: &'static str, bucket: &'a str) -> Self {
        ListedNames {
            url_encoded: encoding == Some(&EncodingType::Url),
            operation,
            bucket,
        }
    }

    /// The name as stored. S3 may write a space as `+` (form encoding) and always writes a `+`
    /// as `%2B`, so `+` is a space, as botocore's `unquote_plus` of listings has it.
    fn decode(&self, name: &str) -> Result<String, StoreError> {
        if !self.url_encoded {
            return Ok(name.to_string());
        }
        let plus_as_space = name.replace('+', " ");
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Permanent,
                    self.operation,
                    self.bucket,
                    name,
                    format!("a url-encoded name in the listing is not UTF-8 once decoded: {e}"),
                )
            })
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        // Keys may hold characters XML 1.0 cannot carry (`\x01`, ESC, U+FFFF); with
        // `encoding-type=url` S3 percent-encodes keys and prefixes, and the answer says so.
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .set_max_keys(max_keys)
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| classify("ListObjectsV2", bucket, prefix, e))?;
        let names = ListedNames::new(out.encoding_type(), "ListObjectsV2", bucket);
        Ok(ListPage {
            objects: out
                .contents()
                .iter()
                .map(|o| {
                    Ok(ListedObject {
                        key: names.decode(o.key().unwrap_or_default())?,
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: o.e_tag().map(str::to_string),
                        storage_class: o
                            .storage_class()
                            .map_or("STANDARD".to_string(), |c| c.as_str().to_string()),
                        last_modified: timestamp(o.last_modified()),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .map(|p| names.decode(p))
                .collect::<Result<_, StoreError>>()?,
            // The continuation token is opaque, never encoded.
            next_token: if out.is_truncated() == Some(true) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            },
        })
    }

    async fn head(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<ObjectInfo, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| classify("HeadObject", bucket, key, e))?;
        Ok(ObjectInfo {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            version_id: out.version_id().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            content_type: out.content_type().map(str::to_string),
            metadata: out
                .metadata()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            storage_class: out
                .storage_class()
                .map_or("STANDARD".to_string(), |c| c.as_str().to_string()),
            last_modified: timestamp(out.last_modified()),
            checksum_sha256: out.checksum_sha256().map(str::to_string),
            checksum_crc64nvme: out.checksum_crc64_nvme().map(str::to_string),
            checksum_type: out.checksum_type().map(|t| t.as_str().to_string()),
            parts_count: out.parts_count().map(|n| n.max(0) as u32),
            restore: out.restore().map(str::to_string),
        })
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        range: Option<(u64, u64)>,
    ) -> Result<ByteChunks, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .set_range(range.map(|(a, b)| format!("bytes={a}-{b}")))
            .send()
            .await
            .map_err(|e| classify("GetObject", bucket, key, e))?;
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let body: ByteStream = out.body;
        let stream = futures::stream::try_unfold(body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(move |e| {
            StoreError::new(
                StoreErrorKind::Transient,
                "GetObject",
                &bucket,
                &key,
                e.to_string(),
            )
        });
        Ok(stream.boxed())
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        options: PutOptions,
    ) -> Result<WriteResult, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_content_type(options.content_type)
            .set_if_none_match(options.if_none_match.then(|| "*".to_string()))
            .set_tagging(options.tagging)
            .send()
            .await
            .map_err(|e| classify("PutObject", bucket, key, e))?;
        Ok(WriteResult {
            version_id: out.version_id().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            checksum_sha256: out.checksum_sha256().map(str::to_string),
            checksum_crc64nvme: out.checksum_crc64_nvme().map(str::to_string),
            source_version_id: None,
        })
    }

    async fn copy(&self, r: CopyRequest<'_>) -> Result<WriteResult, StoreError> {
        let out = self
            .client
            .copy_object()
            .copy_source(copy_source(r.src_bucket, r.src_key, r.src_version_id))
            .bucket(r.dst_bucket)
            .key(r.dst_key)
            .metadata_directive(MetadataDirective::Copy)
            .checksum_algorithm(sdk_checksum(r.checksum))
            .set_if_none_match(r.if_none_match.then(|| "*".to_string()))
            .set_copy_source_if_match(r.src_if_match.map(str::to_string))
            .set_tagging_directive(r.tagging.map(|_| TaggingDirective::Replace))
            .set_tagging(r.tagging.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("CopyObject", r.dst_bucket, r.dst_key, e))?;
        let result = out.copy_object_result();
        Ok(WriteResult {
            version_id: out.version_id().map(str::to_string),
            etag: result.and_then(|r| r.e_tag()).map(str::to_string),
            checksum_sha256: result.and_then(|r| r.checksum_sha256()).map(str::to_string),
            checksum_crc64nvme: result
                .and_then(|r| r.checksum_crc64_nvme())
                .map(str::to_string),
            source_version_id: out.copy_source_version_id().map(str::to_string),
        })
    }

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        checksum: WriteChecksum,
        content_type: Option<&str>,
        metadata: &BTreeMap<String, String>,
        tagging: Option<&str>,
    ) -> Result<String, StoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(sdk_checksum(checksum))
            .set_content_type(content_type.map(str::to_string))
            .set_metadata((!metadata.is_empty()).then(|| metadata.clone().into_iter().collect()))
            .set_tagging(tagging.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", bucket, key, e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Transient,
                "CreateMultipartUpload",
                bucket,
                key,
                "no upload id",
            )
        })
    }

    async fn upload_part_copy(&self, r: PartCopyRequest<'_>) -> Result<CopiedPart, StoreError> {
        let out = self
            .client
            .upload_part_copy()
            .copy_source(copy_source(r.src_bucket, r.src_key, r.src_version_id))
            .copy_source_range(format!("bytes={}-{}", r.first_byte, r.last_byte))
            .bucket(r.dst_bucket)
            .key(r.dst_key)
            .upload_id(r.upload_id)
            .part_number(r.part_number as i32)
            .set_copy_source_if_match(r.src_if_match.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("UploadPartCopy", r.dst_bucket, r.dst_key, e))?;
        let result = out.copy_part_result();
        Ok(CopiedPart {
            part_number: r.part_number,
            etag: result
                .and_then(|p| p.e_tag())
                .unwrap_or_default()
                .to_string(),
            checksum_sha256: result.and_then(|p| p.checksum_sha256()).map(str::to_string),
        })
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
    ) -> Result<CopiedPart, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| classify("UploadPart", bucket, key, e))?;
        Ok(CopiedPart {
            part_number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            checksum_sha256: out.checksum_sha256().map(str::to_string),
        })
    }

    async fn complete_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CopiedPart],
        if_none_match: bool,
    ) -> Result<WriteResult, StoreError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.part_number as i32)
                            .e_tag(&p.etag)
                            .set_checksum_sha256(p.checksum_sha256.clone())
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .set_if_none_match(if_none_match.then(|| "*".to_string()))
            .send()
            .await
            .map_err(|e| classify("CompleteMultipartUpload", bucket, key, e))?;
        Ok(WriteResult {
            version_id: out.version_id().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
            checksum_sha256: out.checksum_sha256().map(str::to_string),
            checksum_crc64nvme: out.checksum_crc64_nvme().map(str::to_string),
            source_version_id: None,
        })
    }

    async fn open_uploads(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| classify("ListMultipartUploads", bucket, key, e))?;
            ids.extend(
                page.uploads()
                    .iter()
                    .filter(|u| u.key() == Some(key))
                    .filter_map(|u| u.upload_id().map(str::to_string)),
            );
            if page.is_truncated() != Some(true) {
                return Ok(ids);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(ids);
            }
        }
    }

    async fn abort_multipart(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify("AbortMultipartUpload", bucket, key, e))?;
        Ok(())
    }

    async fn delete(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("DeleteObject", bucket, key, e))?;
        Ok(())
    }

    async fn delete_versions(
        &self,
        bucket: &str,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionNotDeleted>, StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let invalid = |e: aws_sdk_s3::error::BuildError| {
            StoreError::new(
                StoreErrorKind::Permanent,
                "DeleteObjects",
                bucket,
                "",
                e.to_string(),
            )
        };
        let objects = versions
            .iter()
            .map(|(key, version)| {
                ObjectIdentifier::builder()
                    .key(key)
                    .version_id(version)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        // Quiet: S3 answers only the versions it could not delete.
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(invalid)?;
        let out = self
            .client
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| classify("DeleteObjects", bucket, "", e))?;
        Ok(out
            .errors()
            .iter()
            .filter_map(|e| {
                let code = e.code().unwrap_or("");
                let kind = match code {
                    "NoSuchKey" | "NoSuchVersion" => return None,
                    "SlowDown" | "Throttling" => StoreErrorKind::Throttled,
                    "AccessDenied" => StoreErrorKind::AccessDenied,
                    "InternalError" | "ServiceUnavailable" | "OperationAborted" => {
                        StoreErrorKind::Transient
                    }
                    _ => StoreErrorKind::Permanent,
                };
                let key = e.key().unwrap_or_default().to_string();
                Some(VersionNotDeleted {
                    error: StoreError::new(
                        kind,
                        "DeleteObjects",
                        bucket,
                        &key,
                        format!("{code}: {}", e.message().unwrap_or("")),
                    ),
                    version_id: e.version_id().unwrap_or_default().to_string(),
                    key,
                })
            })
            .collect())
    }

    async fn delete_if_match(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        etag: &str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| classify("DeleteObject", bucket, key, e))?;
        Ok(())
    }

    async fn tag_value(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tag: &str,
    ) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("GetObjectTagging", bucket, key, e))?;
        Ok(out
            .tag_set()
            .iter()
            .find(|t| t.key() == tag)
            .map(|t| t.value().to_string()))
    }

    async fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<ObjectVersion>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .encoding_type(EncodingType::Url)
                .send()
                .await
                .map_err(|e| classify("ListObjectVersions", bucket, prefix, e))?;
            let names = ListedNames::new(page.encoding_type(), "ListObjectVersions", bucket);
            let version = |v: Option<&str>| v.filter(|v| *v != "null").map(str::to_string);
            for v in page.versions() {
                out.push(ObjectVersion {
                    key: names.decode(v.key().unwrap_or_default())?,
                    version_id: version(v.version_id()),
                    is_delete_marker: false,
                });
            }
            for m in page.delete_markers() {
                out.push(ObjectVersion {
                    key: names.decode(m.key().unwrap_or_default())?,
                    version_id: version(m.version_id()),
                    is_delete_marker: true,
                });
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            // The key marker comes back encoded like the keys; it goes out as a plain key.
            key_marker = page
                .next_key_marker()
                .map(|k| names.decode(k))
                .transpose()?;
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn versioning(&self, bucket: &str) -> Result<Option<Versioning>, StoreError> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => Ok(Some(match out.status() {
                Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
                Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
                None => Versioning::Off,
                // A status this SDK does not know: the stricter rules of an unversioned bucket.
                Some(_) => Versioning::Suspended,
            })),
            Err(SdkError::ResponseError(_)) => Ok(None),
            Err(SdkError::ServiceError(e)) if e.raw().status().is_success() => Ok(None),
            Err(e) => Err(classify("GetBucketVersioning", bucket, "", e)),
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::time::Duration;

    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    /// What the stand-in endpoint answers: status, body, and a `content-length` to declare
    /// instead of the body's (to cut a body short).
    struct Reply {
        status: u16,
        body: String,
        declared_len: Option<usize>,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl Reply {
        fn new(status: u16, body: impl Into<String>) -> Self {
            Reply {
                status,
                body: body.into(),
                declared_len: None,
                headers: Vec::new(),
            }
        }
    }

    /// A stand-in S3 endpoint on 127.0.0.1: answers each request with `answer(method, target)`
    /// and records `"METHOD target"` of every request.
    fn stub(
        answer: impl Fn(&str, &str) -> Reply + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answer, log) = (Arc::new(answer), seen.clone());
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(mut socket) = socket else { return };
                let (answer, log) = (answer.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 8192];
                    let head_end = loop {
                        match socket.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while request.len() < head_end + length {
                        match socket.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let mut words = head.split_whitespace();
                    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    log.lock().unwrap().push(format!("{method} {target}"));
                    let reply = answer(method, target);
                    let mut head = format!(
                        "HTTP/1.1 {} Stub\r\ncontent-length: {}\r\nconnection: close\r\n",
                        reply.status,
                        reply.declared_len.unwrap_or(reply.body.len())
                    );
                    if !reply
                        .headers
                        .iter()
                        .any(|(name, _)| *name == "content-type")
                    {
                        head.push_str("content-type: application/xml\r\n");
                    }
                    for (name, value) in &reply.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    let _ = write!(socket, "{head}\r\n");
                    if method != "HEAD" {
                        let _ = socket.write_all(reply.body.as_bytes());
                    }
                });
            }
        });
        (endpoint, seen)
    }

    /// An S3 store for `endpoint` built from [`S3Settings`], with fixed credentials and no SDK
    /// retries (so each call is one request).
    async fn store(endpoint: &str) -> S3Store {
        let settings = S3Settings {
            endpoint_url: Some(endpoint.to_string()),
            region: Some("eu-west-3".into()),
            profile: Some("s3quilt-unit-tests".into()),
            force_path_style: Some(true),
            read_timeout: Some(Duration::from_secs(5)),
        };
        let config = settings.sdk_config().await;
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-3"));
        assert_eq!(config.endpoint_url(), Some(endpoint));
        let s3 = aws_sdk_s3::config::Builder::from(&config)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKIDUNIT", "secret", None, None, "unit",
            ))
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .force_path_style(true)
            .build();
        S3Store::new(aws_sdk_s3::Client::from_conf(s3))
    }

    const NS: &str = "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"";

    fn s3_error(code: &str, message: &str) -> String {
        format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>")
    }

    fn service_error(status: u16, code: Option<&str>) -> SdkError<GetObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("said S3");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(
            GetObjectError::generic(meta.build()),
            HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn s3_errors_are_classified_by_code_then_status() {
        use StoreErrorKind::*;
        let cases = [
            (503, Some("SlowDown"), Throttled),
            (400, Some("Throttling"), Throttled),
            (400, Some("RequestLimitExceeded"), Throttled),
            (429, None, Throttled),
            (500, Some("InternalError"), Transient),
            (502, None, Transient),
            (404, Some("NoSuchKey"), NotFound),
            (404, Some("NoSuchBucket"), NotFound),
            (400, Some("NoSuchUpload"), NotFound),
            (404, None, NotFound),
            (403, Some("AccessDenied"), AccessDenied),
            (400, Some("InvalidAccessKeyId"), AccessDenied),
            (403, Some("SignatureDoesNotMatch"), AccessDenied),
            (403, None, AccessDenied),
            // An archived object: S3 says 403, but it is not a permission problem.
            (403, Some("InvalidObjectState"), InvalidObjectState),
            (412, Some("PreconditionFailed"), PreconditionFailed),
            (409, Some("ConditionalRequestConflict"), PreconditionFailed),
            (412, None, PreconditionFailed),
            (400, Some("InvalidArgument"), Permanent),
            (400, None, Permanent),
        ];
        for (status, code, kind) in cases {
            let e = classify("GetObject", "b", "k", service_error(status, code));
            assert_eq!(e.kind, kind, "{status} {code:?}");
            assert_eq!(
                e.message,
                format!("HTTP {status} {}: said S3", code.unwrap_or("")),
                "{status} {code:?}"
            );
            assert_eq!(
                (e.operation, e.bucket.as_str(), e.key.as_str()),
                ("GetObject", "b", "k")
            );
            assert_eq!(e.kind.is_retryable(), matches!(kind, Throttled | Transient));
        }
        let bare = SdkError::<GetObjectError, HttpResponse>::service_error(
            GetObjectError::generic(ErrorMetadata::builder().build()),
            HttpResponse::new(404u16.try_into().unwrap(), SdkBody::empty()),
        );
        assert_eq!(classify("HeadObject", "b", "k", bare).message, "HTTP 404");
    }

    #[test]
    fn failures_without_an_s3_answer_are_classified_too() {
        let timeout = SdkError::<GetObjectError, HttpResponse>::timeout_error("slow");
        let e = classify("GetObject", "b", "k", timeout);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (StoreErrorKind::Transient, "request timed out")
        );
        let garbled = SdkError::<GetObjectError, HttpResponse>::response_error(
            "bad xml",
            HttpResponse::new(200u16.try_into().unwrap(), SdkBody::empty()),
        );
        let e = classify("GetObject", "b", "k", garbled);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (StoreErrorKind::Transient, "malformed or truncated response")
        );
        let unsent = SdkError::<GetObjectError, HttpResponse>::construction_failure("no bucket");
        assert_eq!(
            classify("GetObject", "b", "k", unsent).kind,
            StoreErrorKind::Permanent
        );
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_reported_as_such() {
        // Nothing listens on port 1 (a privileged port) on a test machine.
        let store = store("http://127.0.0.1:1").await;
        let e = store.head("bkt", "k", None).await.unwrap_err();
        assert_eq!(
            (e.kind, e.operation),
            (StoreErrorKind::Unreachable, "HeadObject")
        );
        assert!(e.kind.is_retryable());
        assert_eq!(
            e.message,
            "could not connect to the S3 endpoint at 127.0.0.1:1 (Connection refused (os error 111))"
        );
    }

    #[tokio::test]
    async fn missing_credentials_are_a_configuration_error() {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                NoCredentials,
            ))
            .build();
        let store = S3Store::new(aws_sdk_s3::Client::from_conf(config));
        let e = store.head("bkt", "k", None).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::NoCredentials, "{e}");
        assert!(!e.kind.is_retryable());
        assert!(
            e.message.contains("AWS_PROFILE") && e.message.contains("AWS_ACCESS_KEY_ID"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("DispatchFailure"), "{}", e.message);
    }

    /// A credential chain that finds nothing, as the default chain does on a bare machine.
    #[derive(Debug)]
    struct NoCredentials;

    impl aws_sdk_s3::config::ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "no credentials in this test",
                ),
            ))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_operation_names_itself_and_its_object_when_refused() {
        let (endpoint, _) = stub(|_, _| Reply::new(403, s3_error("AccessDenied", "Access Denied")));
        let s = store(&endpoint).await;
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let part = CopiedPart {
            part_number: 1,
            etag: "\"e\"".into(),
            checksum_sha256: None,
        };
        let results: Vec<(&str, &str, Result<(), StoreError>)> = vec![
            (
                "ListObjectsV2",
                "pre/",
                s.list_page("bkt", "pre/", Some("/"), None, Some(10))
                    .await
                    .map(drop),
            ),
            (
                "HeadObject",
                "k",
                s.head("bkt", "k", Some("v1")).await.map(drop),
            ),
            (
                "GetObject",
                "k",
                s.get("bkt", "k", None, Some((0, 9))).await.map(drop),
            ),
            (
                "PutObject",
                "k",
                s.put("bkt", "k", Bytes::from_static(b"{}"), PutOptions::default())
                    .await
                    .map(drop),
            ),
            (
                "CopyObject",
                "k",
                s.copy(CopyRequest {
                    src_bucket: "src",
                    src_key: "a b",
                    src_version_id: Some("v1"),
                    dst_bucket: "bkt",
                    dst_key: "k",
                    checksum: WriteChecksum::Crc64Nvme,
                    if_none_match: true,
                    src_if_match: Some("\"e\""),
                    tagging: Some("s3quilt-run=r1"),
                })
                .await
                .map(drop),
            ),
            (
                "CreateMultipartUpload",
                "k",
                s.create_multipart(
                    "bkt",
                    "k",
                    WriteChecksum::Sha256,
                    Some("text/csv"),
                    &meta,
                    None,
                )
                .await
                .map(drop),
            ),
            (
                "UploadPartCopy",
                "k",
                s.upload_part_copy(PartCopyRequest {
                    src_bucket: "src",
                    src_key: "a",
                    src_version_id: None,
                    dst_bucket: "bkt",
                    dst_key: "k",
                    upload_id: "u1",
                    part_number: 1,
                    first_byte: 0,
                    last_byte: 9,
                    src_if_match: None,
                })
                .await
                .map(drop),
            ),
            (
                "CompleteMultipartUpload",
                "k",
                s.complete_multipart("bkt", "k", "u1", &[part], true)
                    .await
                    .map(drop),
            ),
            (
                "AbortMultipartUpload",
                "k",
                s.abort_multipart("bkt", "k", "u1").await,
            ),
            ("DeleteObject", "k", s.delete("bkt", "k", Some("v1")).await),
            (
                "DeleteObject",
                "k",
                s.delete_if_match("bkt", "k", None, "\"e\"").await,
            ),
            (
                "GetObjectTagging",
                "k",
                s.tag_value("bkt", "k", None, "s3quilt-run").await.map(drop),
            ),
            (
                "ListObjectVersions",
                "pre/",
                s.list_versions("bkt", "pre/").await.map(drop),
            ),
            (
                "GetBucketVersioning",
                "",
                s.versioning("bkt").await.map(drop),
            ),
        ];
        for (operation, key, result) in results {
            let e = result.expect_err(operation);
            assert_eq!(
                (e.kind, e.operation, e.bucket.as_str(), e.key.as_str()),
                (StoreErrorKind::AccessDenied, operation, "bkt", key)
            );
            if operation == "HeadObject" {
                assert_eq!(e.message, "HTTP 403", "a HEAD answer has no body");
            } else {
                assert_eq!(
                    e.message, "HTTP 403 AccessDenied: Access Denied",
                    "{operation}"
                );
            }
            assert_eq!(
                e.to_string(),
                format!(
                    "{operation} s3://bkt/{key} failed (AccessDenied): {}",
                    e.message
                )
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_cut_short_fails_the_read_as_transient() {
        let (endpoint, seen) = stub(|_, _| Reply {
            declared_len: Some(100),
            ..Reply::new(200, "0123456789")
        });
        let s = store(&endpoint).await;
        let e = get_bytes(&s, "bkt", "dir/k", Some("v 1"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.operation, e.bucket.as_str(), e.key.as_str()),
            (StoreErrorKind::Transient, "GetObject", "bkt", "dir/k")
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /bkt/dir/k?") && seen[0].contains("versionId=v%201"),
            "{seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versioning_status_is_read_and_an_unreadable_answer_is_unknown() {
        let (endpoint, _) = stub(|_, target| {
            let body = match target.split('?').next().unwrap().trim_end_matches('/') {
                "/enabled" => format!(
                    "<VersioningConfiguration {NS}><Status>Enabled</Status></VersioningConfiguration>"
                ),
                "/suspended" => format!(
                    "<VersioningConfiguration {NS}><Status>Suspended</Status></VersioningConfiguration>"
                ),
                "/never" => format!("<VersioningConfiguration {NS}/>"),
                _ => "<Unexpected/>".to_string(),
            };
            Reply::new(200, body)
        });
        let s = store(&endpoint).await;
        assert_eq!(
            s.versioning("enabled").await.unwrap(),
            Some(Versioning::Enabled)
        );
        assert_eq!(
            s.versioning("suspended").await.unwrap(),
            Some(Versioning::Suspended)
        );
        assert_eq!(s.versioning("never").await.unwrap(), Some(Versioning::Off));
        assert_eq!(s.versioning("odd").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listings_follow_continuation_tokens_and_map_every_field() {
        let (endpoint, seen) = stub(|_, target| {
            let body = if target.contains("continuation-token=tok%202") {
                format!(
                    "<ListBucketResult {NS}><IsTruncated>true</IsTruncated><Contents><Key>p/c</Key><Size>5</Size></Contents></ListBucketResult>"
                )
            } else {
                format!(
                    "<ListBucketResult {NS}><IsTruncated>true</IsTruncated><NextContinuationToken>tok 2</NextContinuationToken>\
                     <Contents><Key>p/a</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>&quot;e1&quot;</ETag><Size>3</Size><StorageClass>GLACIER</StorageClass></Contents>\
                     <Contents><Key>p/b</Key><Size>0</Size></Contents></ListBucketResult>"
                )
            };
            Reply::new(200, body)
        });
        let s = store(&endpoint).await;
        let listed = list_all(&s, "bkt", "p/", &crate::retry::RetryPolicy::default())
            .await
            .unwrap();
        assert_eq!(
            listed,
            [
                ListedObject {
                    key: "p/a".into(),
                    size: 3,
                    etag: Some("\"e1\"".into()),
                    storage_class: "GLACIER".into(),
                    last_modified: Some("2024-01-02T03:04:05Z".into()),
                },
                ListedObject {
                    key: "p/b".into(),
                    size: 0,
                    etag: None,
                    storage_class: "STANDARD".into(),
                    last_modified: None,
                },
                ListedObject {
                    key: "p/c".into(),
                    size: 5,
                    etag: None,
                    storage_class: "STANDARD".into(),
                    last_modified: None,
                },
            ]
        );
        // The second page was asked for with the token; a truncated page without a token ends
        // the listing instead of looping.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1].contains("continuation-token=tok%202"), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn url_encoded_listings_are_decoded_and_plain_ones_kept() {
        let (endpoint, seen) = stub(|_, target| {
            let body = if target.contains("list-type=2") && target.contains("prefix=enc") {
                format!(
                    "<ListBucketResult {NS}><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>\
                     <Contents><Key>enc/%1B%5B31mERROR%1B%5B0m.log</Key><Size>1</Size></Contents>\
                     <Contents><Key>enc/a+b%2Bc%25%01%EF%BF%BF</Key><Size>1</Size></Contents>\
                     <CommonPrefixes><Prefix>enc/%01dir/</Prefix></CommonPrefixes></ListBucketResult>"
                )
            } else if target.contains("list-type=2") {
                // A server that ignores encoding-type: names as stored.
                format!(
                    "<ListBucketResult {NS}><IsTruncated>false</IsTruncated><Contents><Key>plain/a+b%2B</Key><Size>1</Size></Contents></ListBucketResult>"
                )
            } else if target.contains("key-marker=enc%2F%01") {
                format!(
                    "<ListVersionsResult {NS}><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated><Version><Key>enc/%02</Key><VersionId>v2</VersionId></Version></ListVersionsResult>"
                )
            } else {
                format!(
                    "<ListVersionsResult {NS}><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextKeyMarker>enc/%01</NextKeyMarker><NextVersionIdMarker>v1</NextVersionIdMarker>\
                     <Version><Key>enc/%01</Key><VersionId>v1</VersionId></Version></ListVersionsResult>"
                )
            };
            Reply::new(200, body)
        });
        let s = store(&endpoint).await;
        let page = s
            .list_page("bkt", "enc/", Some("/"), None, None)
            .await
            .unwrap();
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            ["enc/\x1b[31mERROR\x1b[0m.log", "enc/a b+c%\x01\u{ffff}"]
        );
        assert_eq!(page.common_prefixes, ["enc/\x01dir/"]);
        let plain = s
            .list_page("bkt", "plain/", None, None, None)
            .await
            .unwrap();
        assert_eq!(
            plain.objects[0].key, "plain/a+b%2B",
            "not encoded, not decoded"
        );
        let versions = s.list_versions("bkt", "enc/").await.unwrap();
        let keys: Vec<&str> = versions.iter().map(|v| v.key.as_str()).collect();
        assert_eq!(keys, ["enc/\x01", "enc/\x02"]);
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|t| t.contains("encoding-type=url")),
            "every listing asks for url encoding: {seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_listings_follow_markers_and_keep_delete_markers() {
        let (endpoint, seen) = stub(|_, target| {
            let body = if target.contains("key-marker=p%2Fb") {
                format!(
                    "<ListVersionsResult {NS}><IsTruncated>false</IsTruncated><Version><Key>p/c</Key><VersionId>v3</VersionId></Version></ListVersionsResult>"
                )
            } else {
                format!(
                    "<ListVersionsResult {NS}><IsTruncated>true</IsTruncated><NextKeyMarker>p/b</NextKeyMarker><NextVersionIdMarker>v2</NextVersionIdMarker>\
                     <Version><Key>p/a</Key><VersionId>v1</VersionId></Version>\
                     <Version><Key>p/a</Key><VersionId>null</VersionId></Version>\
                     <DeleteMarker><Key>p/b</Key><VersionId>v2</VersionId></DeleteMarker></ListVersionsResult>"
                )
            };
            Reply::new(200, body)
        });
        let s = store(&endpoint).await;
        let version = |key: &str, id: Option<&str>, marker| ObjectVersion {
            key: key.into(),
            version_id: id.map(str::to_string),
            is_delete_marker: marker,
        };
        assert_eq!(
            s.list_versions("bkt", "p/").await.unwrap(),
            [
                version("p/a", Some("v1"), false),
                version("p/a", None, false),
                version("p/b", Some("v2"), true),
                version("p/c", Some("v3"), false),
            ]
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1].contains("version-id-marker=v2"), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn head_reads_every_fact_s3_reports_about_an_object() {
        let (endpoint, seen) = stub(|_, _| Reply {
            declared_len: Some(42),
            headers: vec![
                ("etag", "\"abc-3\""),
                ("x-amz-version-id", "v7"),
                ("content-type", "text/csv"),
                ("x-amz-meta-owner", "lab-7"),
                ("x-amz-storage-class", "GLACIER"),
                ("last-modified", "Tue, 02 Jan 2024 03:04:05 GMT"),
                (
                    "x-amz-checksum-sha256",
                    "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
                ),
                ("x-amz-checksum-crc64nvme", "rosUhgp5mIg="),
                ("x-amz-checksum-type", "COMPOSITE"),
                ("x-amz-mp-parts-count", "3"),
                ("x-amz-restore", "ongoing-request=\"true\""),
            ],
            ..Reply::new(200, "")
        });
        let info = store(&endpoint)
            .await
            .head("bkt", "k", Some("v7"))
            .await
            .unwrap();
        assert_eq!(
            info,
            ObjectInfo {
                size: 42,
                version_id: Some("v7".into()),
                etag: Some("\"abc-3\"".into()),
                content_type: Some("text/csv".into()),
                metadata: BTreeMap::from([("owner".to_string(), "lab-7".to_string())]),
                storage_class: "GLACIER".into(),
                last_modified: Some("2024-01-02T03:04:05Z".into()),
                checksum_sha256: Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into()),
                checksum_crc64nvme: Some("rosUhgp5mIg=".into()),
                checksum_type: Some("COMPOSITE".into()),
                parts_count: Some(3),
                restore: Some("ongoing-request=\"true\"".into()),
            }
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("HEAD /bkt/k?") && seen[0].contains("versionId=v7"),
            "{seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multipart_upload_without_an_id_is_a_transient_failure() {
        let (endpoint, _) = stub(|_, _| {
            Reply::new(
                200,
                format!(
                    "<InitiateMultipartUploadResult {NS}><Bucket>bkt</Bucket><Key>k</Key></InitiateMultipartUploadResult>"
                ),
            )
        });
        let e = store(&endpoint)
            .await
            .create_multipart(
                "bkt",
                "k",
                WriteChecksum::Sha256,
                None,
                &BTreeMap::new(),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.operation, e.message.as_str()),
            (
                StoreErrorKind::Transient,
                "CreateMultipartUpload",
                "no upload id"
            )
        );
    }

    #[test]
    fn copy_sources_are_percent_encoded_keeping_slashes() {
        assert_eq!(
            copy_source("b", "a b/ü+%.csv", None),
            "b/a%20b/%C3%BC%2B%25.csv"
        );
        assert_eq!(
            copy_source("b", "k~_-.", Some("v+/1")),
            "b/k~_-.?versionId=v%2B/1"
        );
    }
}
