//! The bench's own S3 stand-in: an in-memory S3 on `s3s`, fast enough that the server is not
//! what a benchmark measures, with a fixed delay added to every request (S3's round trip).
//!
//! What it models: buckets that were never versioned (every object is the `null` version);
//! PutObject, HeadObject, GetObject (ranges), CopyObject (metadata and tagging directives,
//! `x-amz-copy-source-if-match`, `If-None-Match: *`), the multipart upload (Create,
//! UploadPartCopy with byte ranges, Complete with `If-None-Match: *`, Abort, ListMultipartUploads),
//! ListObjectsV2 and ListObjectVersions (prefix, delimiter, pages), DeleteObject(s),
//! GetObjectTagging and GetBucketVersioning. Checksums are S3's: a single-part object's
//! `ChecksumSHA256` / `ChecksumCRC64NVME` is the digest of its bytes (`FULL_OBJECT`), each
//! UploadPartCopy answers its part's SHA-256, and a completed upload reports the composite
//! (`<sha256 of the part digests>-N`, `COMPOSITE`) with an ETag ending in `-N`.
//!
//! What it does not model: versioning, S3's request-rate limits (no SlowDown), object size
//! limits, storage classes other than STANDARD, ACLs, encryption, and MD5 (an ETag here is
//! derived from the SHA-256, not the MD5). Copies share the source's bytes (no copy is made),
//! and an object seeded with `MemoryS3::insert_fill` is one byte repeated, held as a length:
//! a 1 GiB object costs nothing to hold or copy (its digests are computed once per length).

use crate::demo_server::{tagging_output, uploads_output};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::TryStreamExt;
use hyper::body::Incoming;
use hyper::server::conn::http1 as server_http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use sha2::{Digest, Sha256};

use super::proxy::{Counts, Logged, Recorder, classify};

const FILL_CHUNK: usize = 1 << 20;

/// An object's bytes: real ones, or one byte repeated (held as a length).
#[derive(Clone)]
enum Content {
    Bytes(Bytes),
    Fill { byte: u8, len: u64 },
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Fill { len, .. } => *len,
        }
    }

    /// The bytes in `first..end`, sharing storage.
    fn slice(&self, first: u64, end: u64) -> Content {
        match self {
            Content::Bytes(b) => Content::Bytes(b.slice(first as usize..end as usize)),
            Content::Fill { byte, .. } => Content::Fill {
                byte: *byte,
                len: end - first,
            },
        }
    }

    /// The bytes as a stream of chunks (a fill is generated a chunk at a time).
    fn chunks(&self) -> Vec<Bytes> {
        match self {
            Content::Bytes(b) => vec![b.clone()],
            Content::Fill { byte, len } => {
                let full = Bytes::from(vec![*byte; FILL_CHUNK]);
                let mut left = *len;
                let mut out = Vec::new();
                while left > 0 {
                    let n = left.min(FILL_CHUNK as u64);
                    out.push(full.slice(..n as usize));
                    left -= n;
                }
                out
            }
        }
    }
}

/// One stored object.
#[derive(Clone)]
struct Obj {
    content: Content,
    etag: String,
    /// The checksum HEAD reports, and its type: the full-object SHA-256 of a single-part
    /// object, the composite of a completed multipart upload.
    checksum_sha256: String,
    checksum_type: &'static str,
    parts_count: Option<i32>,
    content_type: Option<String>,
    metadata: HashMap<String, String>,
    tagging: Option<String>,
    last_modified: SystemTime,
}

struct Part {
    content: Content,
    digest: [u8; 32],
    etag: String,
}

struct Upload {
    bucket: String,
    key: String,
    content_type: Option<String>,
    metadata: HashMap<String, String>,
    tagging: Option<String>,
    parts: BTreeMap<i32, Part>,
    initiated: SystemTime,
}

/// The in-memory S3 (see the module's documentation for what it models).
#[derive(Default)]
pub struct MemoryS3 {
    buckets: RwLock<HashMap<String, BTreeMap<String, Arc<Obj>>>>,
    uploads: Mutex<HashMap<String, Upload>>,
    next_upload: AtomicU64,
    /// SHA-256 of `len` copies of `byte`, computed once.
    fill_digests: Mutex<HashMap<(u8, u64), [u8; 32]>>,
}

fn etag_of(digest: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&digest[..16]))
}

fn no_such_key() -> s3s::S3Error {
    s3_error!(NoSuchKey)
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// `bytes=first-last` (inclusive) as `first..end`.
fn byte_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let parsed = Range::parse(range).map_err(|_| s3_error!(InvalidRange))?;
    let r = parsed.check(size).map_err(|_| s3_error!(InvalidRange))?;
    Ok((r.start, r.end))
}

fn if_none_match_any(headers: &hyper::HeaderMap) -> bool {
    headers
        .get("if-none-match")
        .is_some_and(|v| v.as_bytes() == b"*")
}

fn etag_matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.trim_matches('"'),
    }
}

impl MemoryS3 {
    /// Records part `number` of upload `upload_id`; returns its digest and ETag.
    fn add_part(
        &self,
        upload_id: &str,
        number: i32,
        content: Content,
    ) -> S3Result<([u8; 32], String)> {
        let digest = self.digest(&content);
        let etag = etag_of(&digest);
        let mut uploads = self.uploads.lock().unwrap();
        let upload = uploads
            .get_mut(upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        upload.parts.insert(
            number,
            Part {
                content,
                digest,
                etag: etag.clone(),
            },
        );
        Ok((digest, etag))
    }

    fn digest(&self, content: &Content) -> [u8; 32] {
        match content {
            Content::Bytes(b) => Sha256::digest(b).into(),
            Content::Fill { byte, len } => {
                if let Some(d) = self.fill_digests.lock().unwrap().get(&(*byte, *len)) {
                    return *d;
                }
                let mut h = Sha256::new();
                for chunk in content.chunks() {
                    h.update(&chunk);
                }
                let d: [u8; 32] = h.finalize().into();
                self.fill_digests.lock().unwrap().insert((*byte, *len), d);
                d
            }
        }
    }

    fn crc64nvme(content: &Content) -> String {
        let crc = crc::Crc::<u64>::new(&crc::CRC_64_NVME);
        let mut d = crc.digest();
        for chunk in content.chunks() {
            d.update(&chunk);
        }
        B64.encode(d.finalize().to_be_bytes())
    }

    fn single_part(
        &self,
        content: Content,
        content_type: Option<String>,
        metadata: HashMap<String, String>,
        tagging: Option<String>,
    ) -> Obj {
        let digest = self.digest(&content);
        Obj {
            content,
            etag: etag_of(&digest),
            checksum_sha256: B64.encode(digest),
            checksum_type: "FULL_OBJECT",
            parts_count: None,
            content_type,
            metadata,
            tagging,
            last_modified: SystemTime::now(),
        }
    }

    /// Creates a bucket (for seeding; also answered over HTTP).
    pub fn create_bucket_now(&self, bucket: &str) {
        self.buckets
            .write()
            .unwrap()
            .entry(bucket.to_string())
            .or_default();
    }

    /// Stores an object of `len` copies of one byte without holding its bytes (seeding).
    pub fn insert_fill(&self, bucket: &str, key: &str, byte: u8, len: u64, content_type: &str) {
        let obj = self.single_part(
            Content::Fill { byte, len },
            Some(content_type.to_string()),
            HashMap::from([("bench".to_string(), "1".to_string())]),
            None,
        );
        self.buckets
            .write()
            .unwrap()
            .entry(bucket.to_string())
            .or_default()
            .insert(key.to_string(), Arc::new(obj));
    }

    fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        match self.buckets.read().unwrap().contains_key(bucket) {
            true => Ok(()),
            false => Err(s3_error!(NoSuchBucket)),
        }
    }

    fn get_obj(&self, bucket: &str, key: &str) -> S3Result<Arc<Obj>> {
        let buckets = self.buckets.read().unwrap();
        let objects = buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        objects.get(key).cloned().ok_or_else(no_such_key)
    }

    /// Stores `obj` at `bucket/key`; with `if_none_match`, only if the key is free.
    fn store(&self, bucket: &str, key: &str, obj: Obj, if_none_match: bool) -> S3Result<()> {
        let mut buckets = self.buckets.write().unwrap();
        let objects = buckets
            .get_mut(bucket)
            .ok_or_else(|| s3_error!(NoSuchBucket))?;
        if if_none_match && objects.contains_key(key) {
            return Err(s3_error!(PreconditionFailed));
        }
        objects.insert(key.to_string(), Arc::new(obj));
        Ok(())
    }

    /// One page of keys under `prefix` after `after`, grouped by `delimiter`: objects and
    /// common prefixes, and the marker to continue from when there is more.
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: usize,
    ) -> S3Result<Listed> {
        let buckets = self.buckets.read().unwrap();
        let objects = buckets.get(bucket).ok_or_else(|| s3_error!(NoSuchBucket))?;
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let (mut found, mut prefixes) = (Vec::new(), Vec::<String>::new());
        let mut last = None;
        for (key, obj) in objects.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            // Resuming after a common prefix skips everything under it.
            if let (Some(a), Some(d)) = (after, delimiter)
                && a.ends_with(d)
                && key.starts_with(a)
            {
                continue;
            }
            let group = delimiter.and_then(|d| {
                key[prefix.len()..]
                    .find(d)
                    .map(|i| key[..prefix.len() + i + d.len()].to_string())
            });
            if let Some(g) = &group
                && prefixes.last() == Some(g)
            {
                continue;
            }
            if found.len() + prefixes.len() == max_keys {
                return Ok((found, prefixes, last));
            }
            match group {
                Some(g) => {
                    last = Some(g.clone());
                    prefixes.push(g);
                }
                None => {
                    last = Some(key.clone());
                    found.push((key.clone(), obj.clone()));
                }
            }
        }
        Ok((found, prefixes, None))
    }
}

/// One page of a listing: objects, common prefixes, and where to continue (if truncated).
type Listed = (Vec<(String, Arc<Obj>)>, Vec<String>, Option<String>);

fn common(prefixes: Vec<String>) -> Option<CommonPrefixList> {
    (!prefixes.is_empty()).then(|| {
        prefixes
            .into_iter()
            .map(|p| CommonPrefix { prefix: Some(p) })
            .collect()
    })
}

fn copy_source(source: &CopySource) -> S3Result<(String, String)> {
    match source {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(s3_error!(NoSuchVersion));
            }
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(NotImplemented, "access point copy sources")),
    }
}

#[async_trait::async_trait]
impl S3 for MemoryS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.create_bucket_now(&req.input.bucket);
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        _req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.require_bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let if_none_match = matches!(req.input.if_none_match, Some(ETagCondition::Any));
        let input = req.input;
        let body: Vec<Bytes> = match input.body {
            Some(body) => body
                .try_collect()
                .await
                .map_err(|e| s3_error!(IncompleteBody, "{e}"))?,
            None => Vec::new(),
        };
        let bytes = match body.len() {
            1 => body.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(body.concat()),
        };
        let obj = self.single_part(
            Content::Bytes(bytes),
            input.content_type,
            input.metadata.unwrap_or_default(),
            input.tagging,
        );
        let out = PutObjectOutput {
            e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
            checksum_sha256: Some(obj.checksum_sha256.clone()),
            checksum_type: Some(ChecksumType::from_static("FULL_OBJECT")),
            ..Default::default()
        };
        self.store(&input.bucket, &input.key, obj, if_none_match)?;
        Ok(S3Response::new(out))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(NoSuchVersion));
        }
        let obj = self.get_obj(&input.bucket, &input.key)?;
        if let Some(cond) = &input.if_match
            && !etag_matches(cond, &obj.etag)
        {
            return Err(s3_error!(PreconditionFailed));
        }
        let checksums = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(obj.content.len() as i64),
            content_type: obj.content_type.clone(),
            e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
            last_modified: Some(timestamp(obj.last_modified)),
            metadata: Some(obj.metadata.clone()),
            parts_count: obj.parts_count,
            checksum_sha256: checksums.then(|| obj.checksum_sha256.clone()),
            checksum_type: checksums.then(|| ChecksumType::from_static(obj.checksum_type)),
            storage_class: None,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(NoSuchVersion));
        }
        let obj = self.get_obj(&input.bucket, &input.key)?;
        let size = obj.content.len();
        let (content, range) = match &input.range {
            Some(r) => {
                let r = r.check(size).map_err(|_| s3_error!(InvalidRange))?;
                (obj.content.slice(r.start, r.end), Some((r.start, r.end)))
            }
            None => (obj.content.clone(), None),
        };
        let len = content.len();
        let stream = futures::stream::iter(
            content
                .chunks()
                .into_iter()
                .map(Ok::<_, std::io::Error>)
                .collect::<Vec<_>>(),
        );
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(len as i64),
            content_range: range.map(|(a, b)| format!("bytes {a}-{}/{size}", b.max(1) - 1)),
            content_type: obj.content_type.clone(),
            e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
            last_modified: Some(timestamp(obj.last_modified)),
            metadata: Some(obj.metadata.clone()),
            parts_count: obj.parts_count,
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let if_none_match = if_none_match_any(&req.headers);
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let src = self.get_obj(&src_bucket, &src_key)?;
        if let Some(cond) = &input.copy_source_if_match
            && !etag_matches(cond, &src.etag)
        {
            return Err(s3_error!(PreconditionFailed));
        }
        let replace_metadata = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        let (content_type, metadata) = if replace_metadata {
            (input.content_type, input.metadata.unwrap_or_default())
        } else {
            (src.content_type.clone(), src.metadata.clone())
        };
        let tagging = if replace_tags {
            input.tagging
        } else {
            src.tagging.clone()
        };
        // A copy is one part whatever the source was: its checksum is the full object's.
        let obj = match src.parts_count {
            None => Obj {
                content_type,
                metadata,
                tagging,
                last_modified: SystemTime::now(),
                ..(*src).clone()
            },
            Some(_) => self.single_part(src.content.clone(), content_type, metadata, tagging),
        };
        let wants_crc64 = input
            .checksum_algorithm
            .as_ref()
            .is_some_and(|a| a.as_str() == ChecksumAlgorithm::CRC64NVME);
        let result = CopyObjectResult {
            e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
            last_modified: Some(timestamp(obj.last_modified)),
            checksum_sha256: (!wants_crc64).then(|| obj.checksum_sha256.clone()),
            checksum_crc64nvme: wants_crc64.then(|| Self::crc64nvme(&obj.content)),
            checksum_type: Some(ChecksumType::from_static("FULL_OBJECT")),
            ..Default::default()
        };
        self.store(&input.bucket, &input.key, obj, if_none_match)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(result),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        if let Some(objects) = self.buckets.write().unwrap().get_mut(&input.bucket) {
            objects.remove(&input.key);
        }
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let mut deleted = Vec::new();
        if let Some(objects) = self.buckets.write().unwrap().get_mut(&input.bucket) {
            for id in input.delete.objects {
                objects.remove(&id.key);
                deleted.push(DeletedObject {
                    key: Some(id.key),
                    version_id: id.version_id,
                    ..Default::default()
                });
            }
        }
        let quiet = input.delete.quiet == Some(true);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            ..Default::default()
        }))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let obj = self.get_obj(&req.input.bucket, &req.input.key)?;
        Ok(S3Response::new(tagging_output(obj.tagging.as_deref())))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = input
            .continuation_token
            .clone()
            .or(input.start_after.clone());
        let (found, prefixes, next) = self.list(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            after.as_deref(),
            max_keys,
        )?;
        let key_count = (found.len() + prefixes.len()) as i32;
        let contents: Vec<Object> = found
            .into_iter()
            .map(|(key, obj)| Object {
                e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
                key: Some(key),
                last_modified: Some(timestamp(obj.last_modified)),
                size: Some(obj.content.len() as i64),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(next.is_some()),
            next_continuation_token: next,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: common(prefixes),
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let (found, prefixes, next) = self.list(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            input.key_marker.as_deref(),
            max_keys,
        )?;
        let versions: Vec<ObjectVersion> = found
            .into_iter()
            .map(|(key, obj)| ObjectVersion {
                e_tag: Some(ETag::Strong(obj.etag.trim_matches('"').to_string())),
                is_latest: Some(true),
                key: Some(key),
                last_modified: Some(timestamp(obj.last_modified)),
                size: Some(obj.content.len() as i64),
                version_id: Some("null".to_string()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            max_keys: Some(max_keys as i32),
            is_truncated: Some(next.is_some()),
            next_key_marker: next.clone(),
            next_version_id_marker: next.map(|_| "null".to_string()),
            common_prefixes: common(prefixes),
            versions: Some(versions),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket)?;
        let id = format!(
            "upload-{}",
            self.next_upload.fetch_add(1, Ordering::Relaxed)
        );
        self.uploads.lock().unwrap().insert(
            id.clone(),
            Upload {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                content_type: input.content_type,
                metadata: input.metadata.unwrap_or_default(),
                tagging: input.tagging,
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let body: Vec<Bytes> = match input.body {
            Some(body) => body
                .try_collect()
                .await
                .map_err(|e| s3_error!(IncompleteBody, "{e}"))?,
            None => Vec::new(),
        };
        let content = Content::Bytes(Bytes::from(body.concat()));
        let (digest, etag) = self.add_part(&input.upload_id, input.part_number, content)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag.trim_matches('"').to_string())),
            checksum_sha256: Some(B64.encode(digest)),
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let src = self.get_obj(&src_bucket, &src_key)?;
        if let Some(cond) = &input.copy_source_if_match
            && !etag_matches(cond, &src.etag)
        {
            return Err(s3_error!(PreconditionFailed));
        }
        if !self.uploads.lock().unwrap().contains_key(&input.upload_id) {
            return Err(s3_error!(NoSuchUpload));
        }
        let size = src.content.len();
        let (first, end) = match &input.copy_source_range {
            Some(r) => byte_range(r, size)?,
            None => (0, size),
        };
        let content = src.content.slice(first, end);
        let (digest, etag) = self.add_part(&input.upload_id, input.part_number, content)?;
        let result = CopyPartResult {
            e_tag: Some(ETag::Strong(etag.trim_matches('"').to_string())),
            checksum_sha256: Some(B64.encode(digest)),
            last_modified: Some(timestamp(SystemTime::now())),
            ..Default::default()
        };
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(result),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let if_none_match = matches!(input.if_none_match, Some(ETagCondition::Any));
        let upload = self
            .uploads
            .lock()
            .unwrap()
            .remove(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        let mut chosen = Vec::with_capacity(listed.len());
        for p in &listed {
            let n = p.part_number.ok_or_else(|| s3_error!(InvalidPart))?;
            let part = upload.parts.get(&n).ok_or_else(|| s3_error!(InvalidPart))?;
            if p.e_tag
                .as_ref()
                .is_some_and(|e| e.value() != part.etag.trim_matches('"'))
            {
                return Err(s3_error!(InvalidPart));
            }
            chosen.push(part);
        }
        // One byte repeated stays a length; anything else is joined.
        let content = match chosen.first().map(|p| &p.content) {
            Some(Content::Fill { byte, .. })
                if chosen
                    .iter()
                    .all(|p| matches!(p.content, Content::Fill { byte: b, .. } if b == *byte)) =>
            {
                Content::Fill {
                    byte: *byte,
                    len: chosen.iter().map(|p| p.content.len()).sum(),
                }
            }
            _ => Content::Bytes(Bytes::from(
                chosen
                    .iter()
                    .flat_map(|p| p.content.chunks())
                    .flat_map(|b| b.to_vec())
                    .collect::<Vec<u8>>(),
            )),
        };
        let n = chosen.len();
        let composite: [u8; 32] = {
            let mut h = Sha256::new();
            chosen.iter().for_each(|p| h.update(p.digest));
            h.finalize().into()
        };
        let etag = {
            let mut h = Sha256::new();
            chosen.iter().for_each(|p| h.update(p.etag.as_bytes()));
            let d: [u8; 32] = h.finalize().into();
            format!("\"{}-{n}\"", hex::encode(&d[..16]))
        };
        let obj = Obj {
            content,
            etag: etag.clone(),
            checksum_sha256: format!("{}-{n}", B64.encode(composite)),
            checksum_type: "COMPOSITE",
            parts_count: Some(n as i32),
            content_type: upload.content_type,
            metadata: upload.metadata,
            tagging: upload.tagging,
            last_modified: SystemTime::now(),
        };
        let checksum = obj.checksum_sha256.clone();
        self.store(&upload.bucket, &upload.key, obj, if_none_match)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(upload.bucket),
            key: Some(upload.key),
            e_tag: Some(ETag::Strong(etag.trim_matches('"').to_string())),
            checksum_sha256: Some(checksum),
            checksum_type: Some(ChecksumType::from_static("COMPOSITE")),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.uploads
            .lock()
            .unwrap()
            .remove(&req.input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let open = self
            .uploads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, u)| u.bucket == input.bucket)
            .map(|(id, u)| (u.key.clone(), id.clone(), u.initiated))
            .collect();
        Ok(S3Response::new(uploads_output(input, open)))
    }
}

/// A running stand-in: one port that delays and counts every request (what is measured),
/// and one that does neither (seeding and cleaning up). Dropping it stops it.
pub struct MemoryServer {
    /// The store itself, for seeding without HTTP.
    pub store: Arc<MemoryS3>,
    measured: SocketAddr,
    direct: SocketAddr,
    recorder: Recorder,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryServer {
    /// Serves a new empty store on two free ports of 127.0.0.1, on a runtime and threads of
    /// its own (so it does not share worker threads with the measured client), with
    /// `access_key`/`secret_key` as its only credentials.
    pub fn start(
        latency: Duration,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<MemoryServer> {
        let store = Arc::new(MemoryS3::default());
        let bind = || -> anyhow::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .context("binding the in-memory S3 on 127.0.0.1")?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let (measured, direct) = (bind()?, bind()?);
        let (measured_addr, direct_addr) = (measured.local_addr()?, direct.local_addr()?);
        let mut builder = S3ServiceBuilder::new(SharedStore(store.clone()));
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();
        let recorder = Recorder::default();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-memory-s3")
            .enable_all()
            .build()
            .context("starting the in-memory S3's runtime")?;
        let thread_recorder = recorder.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let (Ok(measured), Ok(direct)) = (
                    tokio::net::TcpListener::from_std(measured),
                    tokio::net::TcpListener::from_std(direct),
                ) else {
                    return;
                };
                let a = tokio::spawn(accept(
                    measured,
                    service.clone(),
                    Some((latency, thread_recorder)),
                    rx.clone(),
                ));
                let b = tokio::spawn(accept(direct, service, None, rx));
                let _ = tokio::join!(a, b);
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Ok(MemoryServer {
            store,
            measured: measured_addr,
            direct: direct_addr,
            recorder,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The delayed, counted endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.measured)
    }

    /// The endpoint without delay or counting.
    pub fn direct_endpoint(&self) -> String {
        format!("http://{}", self.direct)
    }

    /// Requests seen so far on the measured endpoint, by operation.
    pub fn counts(&self) -> Counts {
        self.recorder.counts()
    }

    /// Requests that arrived at or after `since`.
    pub fn log_since(&self, since: Instant) -> Vec<Logged> {
        self.recorder.log_since(since)
    }
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`MemoryS3`] behind an `Arc`, so the bench keeps a handle for seeding.
struct SharedStore(Arc<MemoryS3>);

macro_rules! shared_store {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl S3 for SharedStore {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.0.$op(req).await
                }
            )*
        }
    };
}

shared_store! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    get_bucket_versioning: GetBucketVersioningInput => GetBucketVersioningOutput,
    put_object: PutObjectInput => PutObjectOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    get_object: GetObjectInput => GetObjectOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_object_tagging: GetObjectTaggingInput => GetObjectTaggingOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    list_object_versions: ListObjectVersionsInput => ListObjectVersionsOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
    list_multipart_uploads: ListMultipartUploadsInput => ListMultipartUploadsOutput,
}

async fn accept(
    listener: tokio::net::TcpListener,
    service: S3Service,
    measured: Option<(Duration, Recorder)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let (service, measured) = (service.clone(), measured.clone());
                tokio::spawn(async move {
                    let handler = service_fn(move |req: hyper::Request<Incoming>| {
                        let (service, measured) = (service.clone(), measured.clone());
                        async move {
                            let Some((latency, recorder)) = measured else {
                                return Service::call(&service, req).await;
                            };
                            let arrived = Instant::now();
                            let op = classify(&req);
                            recorder.arrived(op);
                            if !latency.is_zero() {
                                tokio::time::sleep(latency).await;
                            }
                            let response = Service::call(&service, req).await;
                            recorder.answered(arrived, op);
                            response
                        }
                    });
                    let _ = server_http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_group_by_delimiter_and_resume_after_a_common_prefix() {
        let s3 = MemoryS3::default();
        s3.create_bucket_now("b");
        for key in ["a/1", "a/2", "b/x/1", "b/x/2", "b/y", "c"] {
            s3.insert_fill("b", key, 1, 3, "text/plain");
        }
        let names = |(found, prefixes, next): Listed| {
            (
                found.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
                prefixes,
                next,
            )
        };
        let page = names(s3.list("b", "", Some("/"), None, 2).unwrap());
        assert_eq!(page.0, Vec::<String>::new());
        assert_eq!(page.1, ["a/", "b/"]);
        assert_eq!(page.2.as_deref(), Some("b/"));
        let page = names(s3.list("b", "", Some("/"), Some("b/"), 2).unwrap());
        assert_eq!((page.0, page.1, page.2), (vec!["c".into()], vec![], None));
        let page = names(s3.list("b", "b/", None, None, 1000).unwrap());
        assert_eq!(page.0, ["b/x/1", "b/x/2", "b/y"]);
    }

    #[test]
    fn a_fill_slices_and_hashes_like_its_bytes() {
        let s3 = MemoryS3::default();
        let fill = Content::Fill {
            byte: 7,
            len: 3 * FILL_CHUNK as u64 + 5,
        };
        let bytes = Content::Bytes(Bytes::from(vec![7u8; 3 * FILL_CHUNK + 5]));
        assert_eq!(s3.digest(&fill), s3.digest(&bytes));
        assert_eq!(
            s3.digest(&fill.slice(10, 2 * FILL_CHUNK as u64)),
            s3.digest(&bytes.slice(10, 2 * FILL_CHUNK as u64))
        );
        assert_eq!(MemoryS3::crc64nvme(&fill), MemoryS3::crc64nvme(&bytes));
        assert_eq!(
            fill.chunks().iter().map(Bytes::len).sum::<usize>(),
            3 * FILL_CHUNK + 5
        );
    }

    #[test]
    fn tagging_headers_decode() {
        assert_eq!(
            crate::demo_server::parse_tagging("s3quilt-run=r%2F1&b=c+d"),
            [
                ("s3quilt-run".into(), "r/1".into()),
                ("b".into(), "c d".into())
            ]
        );
    }
}
