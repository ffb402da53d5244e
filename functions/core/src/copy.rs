//! Step 2, copy one shard: server-side copy each object into `namespace/name/logical_key`
//! (or reference it in place), derive its Quilt hash from S3's checksums where they are exactly
//! what Quilt hashes, stream-hash it where they are not, keep its S3 metadata, and write the
//! shard's manifest fragment to staging.
//!
//! Entry metadata schema (documented in docs/metadata.md): `meta.s3` holds `source` (the source
//! object's physical key, with its version id), `etag`, `last_modified`, `storage_class`,
//! `content_type` (when set) and `metadata` (the `x-amz-meta-*` user metadata, possibly `{}`);
//! with `object_metadata: listing` the last two are not recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};

use crate::quilt::checksum::{
    ChecksumError, HashType, ObjectHasher, QuiltHash, chunk_count, chunk_size,
    hash_from_s3_crc64nvme, hash_from_s3_full_object_sha256, hash_from_s3_parts, is_multipart,
};
use crate::quilt::json::{Json, JsonObject};
use crate::quilt::physical_key::PhysicalKey;
use crate::registry::WrittenObject;
use crate::request::ObjectMetadata;
use crate::retry::{AdaptiveLimit, RetryPolicy};
use crate::staging::{
    FailureRecord, FragmentEntry, ManifestFragment, PlannedObject, RunPlan, Shard, Staging,
    StagingError,
};
use crate::storage::{
    CopiedPart, CopyRequest, ObjectInfo, ObjectStore, PartCopyRequest, StoreError, StoreErrorKind,
    WriteChecksum, WriteResult,
};

/// Why a shard could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// S3 failed for good (after retries) on an object.
    #[error("copying s3://{bucket}/{key}: {source}")]
    Object {
        /// Source bucket.
        bucket: String,
        /// Source key.
        key: String,
        /// The failure.
        source: StoreError,
    },
    /// The source changed between planning and copying.
    #[error(
        "s3://{bucket}/{key} changed after it was planned (ETag {planned} → {now}); re-run to package the current state"
    )]
    SourceChanged {
        /// Source bucket.
        bucket: String,
        /// Source key.
        key: String,
        /// ETag when planned.
        planned: String,
        /// ETag now.
        now: String,
    },
    /// S3 returned a checksum that is not what it should be.
    #[error("checksum for s3://{bucket}/{key}: {source}")]
    Checksum {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What was wrong.
        source: ChecksumError,
    },
    /// Staging could not be read or written.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// The destination exists and this run did not create it.
    #[error(
        "s3://{bucket}/{key} already exists in the unversioned target bucket; set `overwrite_existing` (CLI: `--overwrite-existing`) to replace it"
    )]
    DestinationExists {
        /// Target bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// The shard named is not in the plan.
    #[error("shard {0} is not part of this run")]
    NoSuchShard(u32),
    /// The shard stopped early because another object of the run failed.
    #[error("shard {0} stopped because another object of the run failed")]
    Stopped(u32),
}

impl CopyError {
    /// Whether re-running the shard may succeed (S3 was unavailable or slow).
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Object { source, .. } => source.kind.is_retryable(),
            CopyError::Staging(StagingError::Store(e)) => e.kind.is_retryable(),
            _ => false,
        }
    }
}

/// How a shard is copied.
#[derive(Clone)]
pub struct CopyOptions {
    /// Objects of this shard in progress at once (each waits for request slots of `limit`).
    pub concurrency: usize,
    /// Shared, throttle-adaptive limit on S3 requests in flight (the local engine shares one
    /// across shards): a copy and the HEAD beside it hold two slots, a large object one per
    /// part copy.
    pub limit: Arc<AdaptiveLimit>,
    /// Concurrent UploadPartCopy requests per large object.
    pub part_concurrency: usize,
    /// Retry policy for each request.
    pub retry: RetryPolicy,
    /// Set once an object has failed for good: objects not yet started are skipped (their
    /// copies would only be rolled back). Shared by every shard of a local run.
    pub stop: Arc<AtomicBool>,
}

impl CopyOptions {
    /// Options with `concurrency` objects in flight.
    pub fn new(concurrency: usize) -> Self {
        CopyOptions {
            concurrency: concurrency.max(1),
            limit: Arc::new(AdaptiveLimit::new(concurrency)),
            part_concurrency: 8,
            retry: RetryPolicy::default(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a copier did with one object.
struct CopiedObject {
    entry: FragmentEntry,
    created: Option<WrittenObject>,
}

/// Hashes an object by streaming it (never to disk), restarting the stream on a transient error.
/// The read holds one slot of `limit` while it streams.
#[allow(clippy::too_many_arguments)]
pub async fn stream_hash(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    size: u64,
    kind: HashType,
    retry: &RetryPolicy,
    limit: Option<&AdaptiveLimit>,
) -> Result<QuiltHash, StoreError> {
    retry
        .run_with(limit, |_| async move {
            let mut hasher = ObjectHasher::new(kind, size);
            let mut body = store.get(bucket, key, version_id, None).await?;
            let mut seen = 0u64;
            while let Some(chunk) = body.try_next().await? {
                seen += chunk.len() as u64;
                hasher.update(&chunk);
            }
            if seen != size {
                return Err(StoreError::new(
                    StoreErrorKind::Transient,
                    "GetObject",
                    bucket,
                    key,
                    format!("read {seen} bytes, expected {size}"),
                ));
            }
            Ok(hasher.finish())
        })
        .await
}

fn entry_meta(plan: &RunPlan, object: &PlannedObject, info: &ObjectInfo) -> String {
    let source = PhysicalKey::new(&plan.source_bucket, &object.key, info.version_id.clone());
    let mut s3 = JsonObject::new();
    s3.insert("source", Json::str(source.to_string()));
    if let Some(etag) = info.etag.as_ref().or(object.etag.as_ref()) {
        s3.insert("etag", Json::str(etag.as_str()));
    }
    if let Some(modified) = info
        .last_modified
        .as_ref()
        .or(object.last_modified.as_ref())
    {
        s3.insert("last_modified", Json::str(modified.as_str()));
    }
    s3.insert("storage_class", Json::str(info.storage_class.as_str()));
    // With `object_metadata: listing` nothing was read that tells these, so they are left out
    // (absent means "not recorded"; `{}` means "none").
    if plan.request.object_metadata == ObjectMetadata::Full || !plan.copy {
        if let Some(ct) = &info.content_type {
            s3.insert("content_type", Json::str(ct.as_str()));
        }
        s3.insert(
            "metadata",
            Json::Object(
                info.metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::str(v.as_str())))
                    .collect(),
            ),
        );
    }
    let mut meta = JsonObject::new();
    meta.insert("s3", Json::Object(s3));
    Json::Object(meta).to_manifest_string()
}

/// A stored checksum is the full-object digest only when S3 says so (or the object is not
/// multipart); a composite is a different number and is never used as one.
fn full_object_checksum(info: &ObjectInfo) -> bool {
    match info.checksum_type.as_deref() {
        Some(t) => t == "FULL_OBJECT",
        None => info.parts_count.is_none(),
    }
}

struct ObjectCopier<'a> {
    store: &'a dyn ObjectStore,
    plan: &'a RunPlan,
    options: &'a CopyOptions,
}

impl ObjectCopier<'_> {
    fn object_error(&self, key: &str) -> impl Fn(StoreError) -> CopyError {
        let (bucket, key) = (self.plan.source_bucket.clone(), key.to_string());
        move |source| CopyError::Object {
            bucket: bucket.clone(),
            key: key.clone(),
            source,
        }
    }

    fn checksum_error(&self, bucket: &str, key: &str) -> impl Fn(ChecksumError) -> CopyError {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        move |source| CopyError::Checksum {
            bucket: bucket.clone(),
            key: key.clone(),
            source,
        }
    }

    async fn head_source(&self, object: &PlannedObject) -> Result<ObjectInfo, CopyError> {
        let info = self
            .options
            .retry
            .run_with(Some(&self.options.limit), |_| {
                self.store.head(&self.plan.source_bucket, &object.key, None)
            })
            .await
            .map_err(self.object_error(&object.key))?;
        if let (Some(planned), Some(now)) = (&object.etag, &info.etag)
            && planned != now
        {
            return Err(CopyError::SourceChanged {
                bucket: self.plan.source_bucket.clone(),
                key: object.key.clone(),
                planned: planned.clone(),
                now: now.clone(),
            });
        }
        Ok(info)
    }

    async fn run(&self, object: &PlannedObject) -> Result<CopiedObject, CopyError> {
        if !self.plan.copy {
            return self.reference_in_place(object).await;
        }
        if is_multipart(object.size) {
            // The upload needs the source's content type and metadata before it starts.
            let info = self.head_source(object).await?;
            self.copy_multipart(object, info).await
        } else {
            if self.plan.request.object_metadata == ObjectMetadata::Listing {
                // No HEAD: the entry records what the listing and the copy returned.
                let (written, hash) = self.copy_single(object).await?;
                let info = ObjectInfo {
                    size: object.size,
                    version_id: written.source_version_id.clone(),
                    etag: object.etag.clone(),
                    storage_class: object.storage_class.clone(),
                    last_modified: object.last_modified.clone(),
                    ..ObjectInfo::default()
                };
                return self.finish(object, &info, written, hash).await;
            }
            // HEAD (metadata for the entry) runs beside the copy, not in series with it.
            let (info, copied) = tokio::join!(self.head_source(object), self.copy_single(object));
            let (written, hash) = copied?;
            match info {
                Ok(info) => self.finish(object, &info, written, hash).await,
                Err(e) => {
                    // The copy landed but its entry cannot be made (e.g. the source changed
                    // under the HEAD): remove it now, as no fragment will name it for rollback.
                    self.undo_copy(object, &written).await;
                    Err(e)
                }
            }
        }
    }

    /// Deletes a copy this run made whose entry will not be written (best effort, logged).
    async fn undo_copy(&self, object: &PlannedObject, written: &WriteResult) {
        let dst_key = self.plan.destination_key(&object.logical_key);
        let version = written.version_id.as_deref();
        if let Err(e) = self
            .options
            .retry
            .run(|_| {
                self.store
                    .delete(&self.plan.target_bucket, &dst_key, version)
            })
            .await
        {
            tracing::warn!(key = %dst_key, error = %e, "could not remove a copy whose entry failed");
        }
    }

    fn write_checksum(&self) -> WriteChecksum {
        match self.plan.hash_type {
            HashType::Crc64Nvme => WriteChecksum::Crc64Nvme,
            _ => WriteChecksum::Sha256,
        }
    }

    fn refuse_overwrite(&self) -> bool {
        !self.plan.target_versioned && !self.plan.overwrite_existing
    }

    async fn copy_single(
        &self,
        object: &PlannedObject,
    ) -> Result<(WriteResult, Option<String>), CopyError> {
        let dst_key = self.plan.destination_key(&object.logical_key);
        let request = CopyRequest {
            src_bucket: &self.plan.source_bucket,
            src_key: &object.key,
            src_version_id: None,
            dst_bucket: &self.plan.target_bucket,
            dst_key: &dst_key,
            checksum: self.write_checksum(),
            if_none_match: self.refuse_overwrite(),
            src_if_match: object.etag.as_deref(),
        };
        let result = self
            .options
            .retry
            .run_with(Some(&self.options.limit), |attempt| {
                let request = request.clone();
                let dst_key = dst_key.as_str();
                async move {
                    match self.store.copy(request).await {
                        // A retried conditional copy whose first attempt landed (response lost):
                        // the object there is ours if it is the planned source's copy.
                        Err(e) if e.kind == StoreErrorKind::PreconditionFailed && attempt > 1 => {
                            let there = self
                                .store
                                .head(&self.plan.target_bucket, dst_key, None)
                                .await?;
                            if there.size == object.size
                                && there.etag.is_some()
                                && there.etag == object.etag
                            {
                                Ok(WriteResult {
                                    version_id: there.version_id,
                                    etag: there.etag,
                                    ..Default::default()
                                })
                            } else {
                                Err(e)
                            }
                        }
                        other => other,
                    }
                }
            })
            .await;
        let written = match result {
            Ok(written) => written,
            Err(e) if e.kind == StoreErrorKind::PreconditionFailed => {
                // Either the destination exists (only asked on an unversioned target), or the
                // source's ETag moved. Tell which.
                let now = self
                    .store
                    .head(&self.plan.source_bucket, &object.key, None)
                    .await
                    .ok();
                if let (Some(planned), Some(now)) = (&object.etag, now.and_then(|i| i.etag))
                    && *planned != now
                {
                    return Err(CopyError::SourceChanged {
                        bucket: self.plan.source_bucket.clone(),
                        key: object.key.clone(),
                        planned: planned.clone(),
                        now,
                    });
                }
                if !self.refuse_overwrite() {
                    return Err(self.object_error(&object.key)(e));
                }
                return Err(CopyError::DestinationExists {
                    bucket: self.plan.target_bucket.clone(),
                    key: dst_key,
                });
            }
            Err(e) => return Err(self.object_error(&object.key)(e)),
        };
        let hash = match self.plan.hash_type {
            HashType::Crc64Nvme => written
                .checksum_crc64nvme
                .as_deref()
                .map(hash_from_s3_crc64nvme)
                .transpose()
                .map_err(self.checksum_error(&self.plan.target_bucket, &dst_key))?,
            _ => written
                .checksum_sha256
                .as_deref()
                .map(|c| hash_from_s3_full_object_sha256(object.size, c))
                .transpose()
                .map_err(self.checksum_error(&self.plan.target_bucket, &dst_key))?,
        };
        Ok((written, hash))
    }

    async fn copy_multipart(
        &self,
        object: &PlannedObject,
        info: ObjectInfo,
    ) -> Result<CopiedObject, CopyError> {
        let dst_key = self.plan.destination_key(&object.logical_key);
        let target = &self.plan.target_bucket;
        let upload_id = self
            .options
            .retry
            .run_with(Some(&self.options.limit), |_| {
                self.store.create_multipart(
                    target,
                    &dst_key,
                    WriteChecksum::Sha256,
                    info.content_type.as_deref(),
                    &info.metadata,
                )
            })
            .await
            .map_err(self.object_error(&object.key))?;
        let copied = self.copy_parts(object, &dst_key, &upload_id).await;
        let completed = match copied {
            Ok(parts) => self
                .options
                .retry
                .run_with(Some(&self.options.limit), |_| {
                    self.store.complete_multipart(
                        target,
                        &dst_key,
                        &upload_id,
                        &parts,
                        self.refuse_overwrite(),
                    )
                })
                .await
                .map(|written| (written, parts)),
            Err(e) => Err(e),
        };
        let (written, parts) = match completed {
            Ok(done) => done,
            Err(e) => {
                if let Err(abort) = self
                    .store
                    .abort_multipart(target, &dst_key, &upload_id)
                    .await
                {
                    tracing::warn!(key = %dst_key, error = %abort, "could not abort multipart upload");
                }
                if e.kind == StoreErrorKind::PreconditionFailed && self.refuse_overwrite() {
                    return Err(CopyError::DestinationExists {
                        bucket: target.clone(),
                        key: dst_key,
                    });
                }
                return Err(self.object_error(&object.key)(e));
            }
        };
        // Part checksums are exactly Quilt's chunk digests when the parts are Quilt's chunks,
        // which they are by construction; `hash_from_s3_parts` re-checks the layout anyway.
        let hash = match self.plan.hash_type {
            HashType::Sha2_256Chunked if parts.iter().all(|p| p.checksum_sha256.is_some()) => {
                let layout: Vec<(u64, String)> = parts
                    .iter()
                    .map(|p| {
                        let first = (p.part_number as u64 - 1) * chunk_size(object.size);
                        let len = chunk_size(object.size).min(object.size - first);
                        (len, p.checksum_sha256.clone().unwrap_or_default())
                    })
                    .collect();
                Some(
                    hash_from_s3_parts(object.size, &layout)
                        .map_err(self.checksum_error(target, &dst_key))?,
                )
            }
            _ => None,
        };
        self.finish(object, &info, written, hash).await
    }

    async fn copy_parts(
        &self,
        object: &PlannedObject,
        dst_key: &str,
        upload_id: &str,
    ) -> Result<Vec<CopiedPart>, StoreError> {
        let chunk = chunk_size(object.size);
        let parts = chunk_count(object.size);
        let mut copied: Vec<CopiedPart> = futures::stream::iter((0..parts).map(|i| {
            let first = i * chunk;
            let last = (first + chunk).min(object.size) - 1;
            let request = PartCopyRequest {
                src_bucket: &self.plan.source_bucket,
                src_key: &object.key,
                src_version_id: None,
                dst_bucket: &self.plan.target_bucket,
                dst_key,
                upload_id,
                part_number: i as u32 + 1,
                first_byte: first,
                last_byte: last,
                src_if_match: object.etag.as_deref(),
            };
            async move {
                self.options
                    .retry
                    .run_with(Some(&self.options.limit), |_| {
                        self.store.upload_part_copy(request.clone())
                    })
                    .await
            }
        }))
        .buffer_unordered(self.options.part_concurrency.max(1))
        .try_collect()
        .await?;
        copied.sort_by_key(|p| p.part_number);
        Ok(copied)
    }

    /// Builds the entry of a copied object, stream-hashing the copy when S3 gave no usable checksum.
    async fn finish(
        &self,
        object: &PlannedObject,
        info: &ObjectInfo,
        written: WriteResult,
        hash: Option<String>,
    ) -> Result<CopiedObject, CopyError> {
        let dst_key = self.plan.destination_key(&object.logical_key);
        let hash = match hash {
            Some(value) => QuiltHash {
                kind: self.plan.hash_type,
                value,
            },
            None => stream_hash(
                self.store,
                &self.plan.target_bucket,
                &dst_key,
                written.version_id.as_deref(),
                object.size,
                self.plan.hash_type,
                &self.options.retry,
                Some(&self.options.limit),
            )
            .await
            .map_err(self.object_error(&object.key))?,
        };
        let physical = PhysicalKey::new(
            &self.plan.target_bucket,
            &dst_key,
            written.version_id.clone(),
        );
        Ok(CopiedObject {
            entry: FragmentEntry {
                logical_key: object.logical_key.clone(),
                physical_key: physical.to_string(),
                size: object.size,
                hash_type: hash.kind,
                hash_value: hash.value,
                meta: entry_meta(self.plan, object, info),
            },
            created: Some(WrittenObject {
                key: dst_key,
                version_id: written.version_id,
            }),
        })
    }

    async fn reference_in_place(&self, object: &PlannedObject) -> Result<CopiedObject, CopyError> {
        let info = self.head_source(object).await?;
        let bucket = &self.plan.source_bucket;
        let derived = match self.plan.hash_type {
            HashType::Crc64Nvme => info
                .checksum_crc64nvme
                .as_deref()
                .filter(|_| full_object_checksum(&info))
                .map(hash_from_s3_crc64nvme),
            _ => info
                .checksum_sha256
                .as_deref()
                .filter(|_| full_object_checksum(&info) && chunk_count(info.size) <= 1)
                .map(|c| hash_from_s3_full_object_sha256(info.size, c)),
        };
        let value = match derived.transpose().ok().flatten() {
            Some(value) => value,
            None => {
                stream_hash(
                    self.store,
                    bucket,
                    &object.key,
                    info.version_id.as_deref(),
                    info.size,
                    self.plan.hash_type,
                    &self.options.retry,
                    Some(&self.options.limit),
                )
                .await
                .map_err(self.object_error(&object.key))?
                .value
            }
        };
        let physical = PhysicalKey::new(bucket, &object.key, info.version_id.clone());
        Ok(CopiedObject {
            entry: FragmentEntry {
                logical_key: object.logical_key.clone(),
                physical_key: physical.to_string(),
                size: info.size,
                hash_type: self.plan.hash_type,
                hash_value: value,
                meta: entry_meta(self.plan, object, &info),
            },
            created: None,
        })
    }
}

/// A shard's result.
#[derive(Debug, Clone)]
pub struct ShardOutcome {
    /// The fragment (as written to staging).
    pub fragment: ManifestFragment,
    /// Whether the fragment already existed (a re-run did nothing).
    pub already_done: bool,
}

/// Copies one shard and writes its fragment to staging (what a copier Lambda does). Re-running
/// a shard whose fragment exists does nothing. On failure, what was created is recorded in the
/// shard's failure record (and returned beside the error) so rollback can remove it.
pub async fn copy_shard(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    shard: &Shard,
    options: &CopyOptions,
    on_object: &(dyn Fn(u64) + Send + Sync),
) -> Result<ShardOutcome, (CopyError, Vec<WrittenObject>)> {
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    match staging
        .get::<ManifestFragment>(&staging.fragment_key(shard.shard))
        .await
    {
        Ok(Some(fragment)) => {
            for entry in &fragment.entries {
                on_object(entry.size);
            }
            return Ok(ShardOutcome {
                fragment,
                already_done: true,
            });
        }
        Ok(None) => {}
        Err(e) => return Err((e.into(), Vec::new())),
    }
    let fragment = match copy_objects(store.as_ref(), plan, shard, options, on_object).await {
        Ok(fragment) => fragment,
        Err((error, created)) => {
            let record = FailureRecord {
                shard: shard.shard,
                created: created.clone(),
                error: error.to_string(),
            };
            if let Err(e) = staging
                .put(&staging.failure_key(shard.shard), &record)
                .await
            {
                tracing::warn!(shard = shard.shard, error = %e, "could not record the failed shard's objects");
            }
            return Err((error, created));
        }
    };
    match staging
        .put(&staging.fragment_key(shard.shard), &fragment)
        .await
    {
        Ok(_) => Ok(ShardOutcome {
            fragment,
            already_done: false,
        }),
        Err(e) => Err((StagingError::from(e).into(), fragment.created)),
    }
}

/// Copies (or references) every object of a shard and returns its fragment, touching no
/// staging document: the local engine keeps fragments in memory. On failure the objects
/// already in flight finish first, so everything created is returned beside the error.
pub async fn copy_objects(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    shard: &Shard,
    options: &CopyOptions,
    on_object: &(dyn Fn(u64) + Send + Sync),
) -> Result<ManifestFragment, (CopyError, Vec<WrittenObject>)> {
    let copier = ObjectCopier {
        store,
        plan,
        options,
    };
    let mut results = futures::stream::iter(shard.objects.iter().map(|object| {
        let copier = &copier;
        async move {
            if options.stop.load(Ordering::Acquire) {
                return Ok(None);
            }
            let copied = copier.run(object).await;
            match &copied {
                Ok(_) => on_object(object.size),
                Err(_) => options.stop.store(true, Ordering::Release),
            }
            copied.map(Some)
        }
    }))
    .buffer_unordered(options.concurrency.max(1));

    let mut entries = Vec::with_capacity(shard.objects.len());
    let mut created = Vec::new();
    let mut failure = None;
    while let Some(result) = results.next().await {
        match result {
            Ok(Some(copied)) => {
                created.extend(copied.created);
                entries.push(copied.entry);
            }
            Ok(None) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(error) = failure {
        // Objects already in flight finish so everything they create is known; those not yet
        // started see `stop` and skip.
        while let Some(result) = results.next().await {
            if let Ok(Some(copied)) = result {
                created.extend(copied.created);
            }
        }
        return Err((error, created));
    }
    if entries.len() < shard.objects.len() {
        // Another shard of the run failed while this one was copying: what was copied is
        // returned for rollback, and no fragment (it would be incomplete).
        return Err((CopyError::Stopped(shard.shard), created));
    }
    Ok(ManifestFragment {
        shard: shard.shard,
        entries,
        created,
    })
}

/// Loads the plan and shard from staging and copies it (what the copier Lambda does).
pub async fn copy_shard_from_staging(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
    shard: u32,
    options: &CopyOptions,
) -> Result<ShardOutcome, CopyError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    let plan = staging.plan().await?;
    if shard >= plan.shards {
        return Err(CopyError::NoSuchShard(shard));
    }
    let shard_doc: Shard = staging.require(&staging.shard_key(shard)).await?;
    copy_shard(store, &plan, &shard_doc, options, &|_| {})
        .await
        .map_err(|(e, _)| e)
}
