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
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

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
use crate::transaction::{
    Outcome, clear_earlier_attempts, new_attempt_id, open_attempt, owned_at, run_tagging,
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
    /// The shard stopped early because another object of the run failed, or the run was
    /// interrupted.
    #[error(
        "shard {0} stopped because another object of the run failed or the run was interrupted"
    )]
    Stopped(u32),
    /// The copier's own deadline is near (a Lambda's 15 minutes): the objects not yet started
    /// are left to a new attempt of the shard, after this one closed its journal entry.
    #[error(
        "shard {0} stopped before the copier's deadline; a new attempt of the shard copies the rest"
    )]
    DeadlineNear(u32),
    /// The run's outcome is already decided (rolled back, or committed): no copy may start.
    #[error("run {run_id} is already decided ({outcome:?}): this shard copies nothing")]
    RunDecided {
        /// Run id.
        run_id: String,
        /// The outcome.
        outcome: Outcome,
    },
}

impl CopyError {
    /// Whether re-running the shard may succeed (S3 was unavailable or slow).
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Object { source, .. } => source.kind.is_retryable(),
            CopyError::Staging(StagingError::Store(e)) => e.kind.is_retryable(),
            CopyError::DeadlineNear(_) => true,
            _ => false,
        }
    }
}

/// How a shard is copied.
#[derive(Clone)]
pub struct CopyOptions {
    /// Objects of this shard in progress at once (each waits for request slots of `limit` and
    /// `read_limit`). As many as the request limit: an object in progress after a failure
    /// still copies, so more would only copy more that is rolled back.
    pub concurrency: usize,
    /// Shared, throttle-adaptive limit on the writes in flight (CopyObject, the multipart
    /// upload's requests, one per part copy); the local engine shares one across shards.
    pub limit: Arc<AdaptiveLimit>,
    /// Shared, throttle-adaptive limit on the metadata reads in flight (the HEAD beside each
    /// copy, and the GETs that stream-hash): on S3 they fall under the source prefix's read
    /// budget (5,500 requests/s per prefix), not the destination's 3,500 writes/s, so they get
    /// their own slots and copies stay at `limit` while they run beside them. Each limit halves
    /// on its own SlowDowns.
    pub read_limit: Arc<AdaptiveLimit>,
    /// Concurrent UploadPartCopy requests per large object: by default the request limit
    /// itself, so the parts of one large object (or of a few) can take every slot; parts of
    /// several objects queue first come, first served on `limit`, so no slot idles while any
    /// part waits.
    pub part_concurrency: usize,
    /// Retry policy for each request.
    pub retry: RetryPolicy,
    /// Set once an object has failed for good: objects not yet started are skipped (their
    /// copies would only be rolled back). Shared by every shard of a local run.
    pub stop: Arc<AtomicBool>,
    /// When the process running the copy will be stopped (a Lambda's deadline): a resumable
    /// shard starts no object within [`DEADLINE_MARGIN`] of it.
    pub deadline: Option<SystemTime>,
}

/// How long before its deadline a copier stops starting objects: time for the copies in
/// flight to finish and for the attempt's failure record to be written (a quarter of the time
/// left instead, for a process given less than four times this).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(60);

/// When a process whose `deadline` this is should stop starting work: [`DEADLINE_MARGIN`]
/// before it, or a quarter of the time left for a process given less than four margins (a
/// short timeout), so work is never refused before it starts.
pub fn stop_before(deadline: SystemTime) -> SystemTime {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    deadline - DEADLINE_MARGIN.min(left / 4)
}

/// How often a resumable shard reads the run's outcome while it copies: a rollback decided
/// meanwhile stops it within this (plus the copies in flight), and the rollback waits for it.
pub const FENCE_POLL: Duration = Duration::from_secs(5);

impl CopyOptions {
    /// Options with `concurrency` write requests in flight (and as many metadata reads
    /// beside them), as many objects in progress.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        CopyOptions {
            concurrency,
            limit: Arc::new(AdaptiveLimit::new(concurrency)),
            read_limit: Arc::new(AdaptiveLimit::new(concurrency)),
            part_concurrency: concurrency,
            retry: RetryPolicy::default(),
            stop: Arc::new(AtomicBool::new(false)),
            deadline: None,
        }
    }
}

/// What a copier did with one object.
struct CopiedObject {
    entry: FragmentEntry,
    created: Option<WrittenObject>,
}

/// An object that failed, with the copy it made before failing (if any): a landed copy is in
/// the run's ownership record whatever happens after, so rollback removes it.
struct FailedObject {
    error: CopyError,
    created: Vec<WrittenObject>,
    /// A destination key a lost write may have landed on that could not be searched: rollback
    /// searches it for this run's tag.
    in_doubt: Option<String>,
}

impl From<CopyError> for FailedObject {
    fn from(error: CopyError) -> Self {
        FailedObject {
            error,
            created: Vec::new(),
            in_doubt: None,
        }
    }
}

impl FailedObject {
    fn with_created(error: CopyError, created: WrittenObject) -> Self {
        FailedObject {
            error,
            created: vec![created],
            in_doubt: None,
        }
    }
}

/// Why a shard failed, with everything its attempt created (and keys it could not decide).
#[derive(Debug)]
pub struct ShardFailure {
    /// The first failure.
    pub error: CopyError,
    /// Object versions created, from S3's answers (and its tags, for answers that were lost).
    pub created: Vec<WrittenObject>,
    /// Destination keys where a write whose answer was lost may have landed and that could not
    /// be searched: rollback searches them.
    pub in_doubt: Vec<String>,
}

impl From<CopyError> for ShardFailure {
    fn from(error: CopyError) -> Self {
        ShardFailure {
            error,
            created: Vec::new(),
            in_doubt: Vec::new(),
        }
    }
}

/// Whether a failed attempt of a write may have been applied by S3 (its answer lost): a
/// timeout, a dropped connection or a 5xx. A throttle (503 SlowDown) is refused before S3
/// applies anything.
fn may_have_landed(e: &StoreError) -> bool {
    e.kind == StoreErrorKind::Transient
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

/// A stored checksum is the full-object digest only when that is proven: S3 says
/// `FULL_OBJECT`, or says nothing and the object was not a multipart upload at all (no parts
/// count, and no `-N` in the ETag). A composite is a different number and is never used as
/// one; some servers (moto) report a composite without its `-N` suffix or its type, and only
/// the ETag's `-N` then tells that the object was uploaded in parts.
fn full_object_checksum(info: &ObjectInfo) -> bool {
    match info.checksum_type.as_deref() {
        Some(t) => t == "FULL_OBJECT",
        None => info.parts_count.is_none() && !info.etag.as_deref().is_some_and(multipart_etag),
    }
}

/// Whether an ETag is a multipart upload's (`"<hex>-<parts>"`).
fn multipart_etag(etag: &str) -> bool {
    etag.trim_matches('"')
        .rsplit_once('-')
        .is_some_and(|(_, parts)| !parts.is_empty() && parts.bytes().all(|b| b.is_ascii_digit()))
}

struct ObjectCopier<'a> {
    store: &'a dyn ObjectStore,
    plan: &'a RunPlan,
    options: &'a CopyOptions,
    /// The run's ownership tag (`s3quilt-run=<run id>`) set on every object it writes.
    tagging: String,
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
            .run_with(Some(&self.options.read_limit), |_| {
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

    async fn run(&self, object: &PlannedObject) -> Result<CopiedObject, FailedObject> {
        if !self.plan.copy {
            return Ok(self.reference_in_place(object).await?);
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
                // The copy landed but its entry cannot be made (e.g. the source changed under
                // the HEAD): it is recorded, so rollback removes it.
                Err(error) => Err(FailedObject::with_created(
                    error,
                    self.created(object, &written),
                )),
            }
        }
    }

    /// The ownership record of a write's answer.
    fn created(&self, object: &PlannedObject, written: &WriteResult) -> WrittenObject {
        WrittenObject::from_write(self.plan.destination_of(object), written)
    }

    fn write_checksum(&self) -> WriteChecksum {
        match self.plan.hash_type {
            HashType::Crc64Nvme => WriteChecksum::Crc64Nvme,
            _ => WriteChecksum::Sha256,
        }
    }

    /// On a target that does not keep versions (unversioned or suspended), every write is
    /// conditional on the key being absent, unless the user allowed replacing.
    fn refuse_overwrite(&self) -> bool {
        !self.plan.target_versioned() && !self.plan.overwrite_existing
    }

    /// After a write whose earlier attempt may have landed, what that attempt left: the object
    /// versions at `dst_key` carrying this run's tag other than `answered` (the version the
    /// successful attempt's answer named). On a versioned target these are orphan versions of
    /// ours and are deleted now; any that cannot be are returned for the ownership record.
    async fn remove_lost_attempts(
        &self,
        dst_key: &str,
        answered: &WriteResult,
    ) -> Vec<WrittenObject> {
        let versioned = answered.version_id.as_deref().is_some_and(|v| v != "null");
        if !versioned {
            // The key holds one object, which the successful attempt just wrote.
            return Vec::new();
        }
        let found = match owned_at(self.store, self.plan, dst_key, &self.options.retry).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(key = %dst_key, error = %e, "cannot search for the version of a write whose answer was lost");
                return Vec::new();
            }
        };
        let mut left = Vec::new();
        for orphan in found
            .into_iter()
            .filter(|o| o.version_id != answered.version_id)
        {
            let version = orphan.version_id.as_deref();
            if let Err(e) = self
                .options
                .retry
                .run(|_| {
                    self.store
                        .delete(&self.plan.target_bucket, dst_key, version)
                })
                .await
            {
                tracing::warn!(key = %dst_key, ?version, error = %e, "cannot delete the version of a write whose answer was lost");
                left.push(orphan);
            }
        }
        left
    }

    /// A conditional write refused after an earlier attempt may have landed: the object there
    /// is ours only if S3 says it carries this run's tag.
    async fn claim_lost_write(&self, dst_key: &str) -> Result<Option<WriteResult>, StoreError> {
        let found = owned_at(self.store, self.plan, dst_key, &self.options.retry).await?;
        Ok(found.into_iter().next().map(|o| WriteResult {
            version_id: o.version_id,
            etag: o.etag,
            ..WriteResult::default()
        }))
    }

    async fn copy_single(
        &self,
        object: &PlannedObject,
    ) -> Result<(WriteResult, Option<String>), FailedObject> {
        let dst_key = self.plan.destination_of(object);
        let request = CopyRequest {
            src_bucket: &self.plan.source_bucket,
            src_key: &object.key,
            src_version_id: None,
            dst_bucket: &self.plan.target_bucket,
            dst_key: &dst_key,
            checksum: self.write_checksum(),
            if_none_match: self.refuse_overwrite(),
            src_if_match: object.etag.as_deref(),
            tagging: Some(&self.tagging),
        };
        let in_doubt = AtomicBool::new(false);
        let result = self
            .options
            .retry
            .run_with(Some(&self.options.limit), |_| {
                let request = request.clone();
                let in_doubt = &in_doubt;
                async move {
                    let result = self.store.copy(request).await;
                    if let Err(e) = &result
                        && may_have_landed(e)
                    {
                        in_doubt.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        let in_doubt = in_doubt.into_inner();
        let mut orphans = Vec::new();
        let written = match result {
            Ok(written) => {
                if in_doubt {
                    orphans = self.remove_lost_attempts(&dst_key, &written).await;
                }
                written
            }
            Err(e) if e.kind == StoreErrorKind::PreconditionFailed => {
                if in_doubt && self.refuse_overwrite() {
                    match self.claim_lost_write(&dst_key).await {
                        // Our own copy, whose answer was lost: it has no checksum to hand, so
                        // the entry's hash is computed from the copy.
                        Ok(Some(written)) => return Ok((written, None)),
                        Ok(None) => {}
                        Err(e) => return Err(self.object_error(&object.key)(e).into()),
                    }
                }
                return Err(self.refused_copy(object, dst_key, e).await.into());
            }
            Err(e) if in_doubt => {
                // Every attempt failed, and one may have landed: what carries our tag is ours.
                let error = self.object_error(&object.key)(e);
                return Err(self.lost_writes(error, &dst_key).await);
            }
            Err(e) => return Err(self.object_error(&object.key)(e).into()),
        };
        if let Some(orphan) = orphans.into_iter().next() {
            // A version of ours that could not be removed: fail the object so the run's
            // rollback (which retries the delete and reports it) accounts for it.
            return Err(FailedObject {
                error: self.object_error(&object.key)(StoreError::new(
                    StoreErrorKind::Transient,
                    "DeleteObject",
                    &self.plan.target_bucket,
                    &orphan.key,
                    "an earlier copy attempt whose answer was lost left a version that could not be deleted",
                )),
                created: vec![self.created(object, &written), orphan],
                in_doubt: None,
            });
        }
        let hash = match self.plan.hash_type {
            HashType::Crc64Nvme => written
                .checksum_crc64nvme
                .as_deref()
                .map(hash_from_s3_crc64nvme)
                .transpose(),
            _ => written
                .checksum_sha256
                .as_deref()
                .map(|c| hash_from_s3_full_object_sha256(object.size, c))
                .transpose(),
        };
        match hash {
            Ok(hash) => Ok((written, hash)),
            Err(e) => Err(FailedObject::with_created(
                self.checksum_error(&self.plan.target_bucket, &dst_key)(e),
                self.created(object, &written),
            )),
        }
    }

    /// A write failed for good after an attempt that may have landed: the versions at
    /// `dst_key` that carry this run's tag are recorded as created (so rollback removes them);
    /// if S3 cannot be asked, the key is left for rollback to search.
    async fn lost_writes(&self, error: CopyError, dst_key: &str) -> FailedObject {
        match owned_at(self.store, self.plan, dst_key, &self.options.retry).await {
            Ok(created) => FailedObject {
                error,
                created,
                in_doubt: None,
            },
            Err(e) => {
                tracing::warn!(key = %dst_key, error = %e, "cannot search for a write whose answer was lost");
                FailedObject {
                    error,
                    created: Vec::new(),
                    in_doubt: Some(dst_key.to_string()),
                }
            }
        }
    }

    /// Why a conditional copy was refused: the source's ETag moved, or (on a target that does
    /// not keep versions) the destination exists and is not this run's.
    async fn refused_copy(
        &self,
        object: &PlannedObject,
        dst_key: String,
        e: StoreError,
    ) -> CopyError {
        let now = self
            .options
            .retry
            .run(|_| self.store.head(&self.plan.source_bucket, &object.key, None))
            .await
            .ok();
        if let (Some(planned), Some(now)) = (&object.etag, now.and_then(|i| i.etag))
            && *planned != now
        {
            return CopyError::SourceChanged {
                bucket: self.plan.source_bucket.clone(),
                key: object.key.clone(),
                planned: planned.clone(),
                now,
            };
        }
        if !self.refuse_overwrite() {
            return self.object_error(&object.key)(e);
        }
        CopyError::DestinationExists {
            bucket: self.plan.target_bucket.clone(),
            key: dst_key,
        }
    }

    async fn copy_multipart(
        &self,
        object: &PlannedObject,
        info: ObjectInfo,
    ) -> Result<CopiedObject, FailedObject> {
        let dst_key = self.plan.destination_of(object);
        let target = &self.plan.target_bucket;
        let create_in_doubt = AtomicBool::new(false);
        let created = self
            .options
            .retry
            .run_with(Some(&self.options.limit), |_| {
                let (dst_key, create_in_doubt) = (dst_key.as_str(), &create_in_doubt);
                let info = &info;
                async move {
                    let result = self
                        .store
                        .create_multipart(
                            target,
                            dst_key,
                            WriteChecksum::Sha256,
                            info.content_type.as_deref(),
                            &info.metadata,
                            Some(&self.tagging),
                        )
                        .await;
                    if let Err(e) = &result
                        && may_have_landed(e)
                    {
                        create_in_doubt.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        if create_in_doubt.into_inner() {
            // An upload whose id was lost may be open on the key.
            self.abort_lost_uploads(&dst_key, created.as_deref().ok())
                .await;
        }
        let upload_id = created.map_err(self.object_error(&object.key))?;
        let copied = self.copy_parts(object, &dst_key, &upload_id).await;
        let in_doubt = AtomicBool::new(false);
        let completed = match copied {
            Ok(parts) => self
                .options
                .retry
                .run_with(Some(&self.options.limit), |_| {
                    let (parts, in_doubt) = (&parts, &in_doubt);
                    let dst_key = dst_key.as_str();
                    let upload_id = upload_id.as_str();
                    async move {
                        let result = self
                            .store
                            .complete_multipart(
                                target,
                                dst_key,
                                upload_id,
                                parts,
                                self.refuse_overwrite(),
                            )
                            .await;
                        if let Err(e) = &result
                            && may_have_landed(e)
                        {
                            in_doubt.store(true, Ordering::Relaxed);
                        }
                        result
                    }
                })
                .await
                .map(|written| (written, parts.clone()))
                .map_err(|e| (e, Some(parts))),
            Err(e) => Err((e, None)),
        };
        let (written, parts) = match completed {
            Ok(done) => done,
            // A completion whose answer was lost: the upload is gone (NoSuchUpload) or, on a
            // conditional completion, the key exists. Ours if it carries this run's tag.
            Err((e, Some(parts)))
                if in_doubt.load(Ordering::Relaxed)
                    && matches!(
                        e.kind,
                        StoreErrorKind::NotFound | StoreErrorKind::PreconditionFailed
                    ) =>
            {
                match self.claim_lost_write(&dst_key).await {
                    Ok(Some(written)) => (written, parts),
                    Ok(None) => {
                        return Err(self
                            .abandon_upload(object, &dst_key, &upload_id, e)
                            .await
                            .into());
                    }
                    Err(search) => {
                        let error = self
                            .abandon_upload(object, &dst_key, &upload_id, search)
                            .await;
                        return Err(FailedObject {
                            error,
                            created: Vec::new(),
                            in_doubt: Some(dst_key),
                        });
                    }
                }
            }
            Err((e, _)) if in_doubt.load(Ordering::Relaxed) => {
                let error = self.abandon_upload(object, &dst_key, &upload_id, e).await;
                return Err(self.lost_writes(error, &dst_key).await);
            }
            Err((e, _)) => {
                return Err(self
                    .abandon_upload(object, &dst_key, &upload_id, e)
                    .await
                    .into());
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
                match hash_from_s3_parts(object.size, &layout) {
                    Ok(hash) => Some(hash),
                    Err(e) => {
                        return Err(FailedObject::with_created(
                            self.checksum_error(target, &dst_key)(e),
                            self.created(object, &written),
                        ));
                    }
                }
            }
            _ => None,
        };
        self.finish(object, &info, written, hash).await
    }

    /// Aborts the uploads open on `dst_key` other than `keep`: after a CreateMultipartUpload
    /// whose answer was lost, the upload it may have opened (its id never reached us). Only
    /// this package's runs write under its folder, so at worst a concurrent run of the same
    /// package loses an upload and rolls back; no object version is touched.
    async fn abort_lost_uploads(&self, dst_key: &str, keep: Option<&str>) {
        let target = &self.plan.target_bucket;
        let open = match self
            .options
            .retry
            .run(|_| self.store.open_uploads(target, dst_key))
            .await
        {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(key = %dst_key, error = %e, "cannot list the uploads of a CreateMultipartUpload whose answer was lost");
                return;
            }
        };
        for upload in open.iter().filter(|u| Some(u.as_str()) != keep) {
            if let Err(e) = self
                .options
                .retry
                .run(|_| self.store.abort_multipart(target, dst_key, upload))
                .await
                && e.kind != StoreErrorKind::NotFound
            {
                tracing::warn!(key = %dst_key, error = %e, "could not abort an upload whose id was lost");
            }
        }
    }

    /// Aborts an upload that will not complete and names why it failed.
    async fn abandon_upload(
        &self,
        object: &PlannedObject,
        dst_key: &str,
        upload_id: &str,
        e: StoreError,
    ) -> CopyError {
        let target = &self.plan.target_bucket;
        if let Err(abort) = self
            .options
            .retry
            .run(|_| self.store.abort_multipart(target, dst_key, upload_id))
            .await
            && abort.kind != StoreErrorKind::NotFound
        {
            tracing::warn!(key = %dst_key, error = %abort, "could not abort multipart upload");
        }
        if e.kind == StoreErrorKind::PreconditionFailed && self.refuse_overwrite() {
            return CopyError::DestinationExists {
                bucket: target.clone(),
                key: dst_key.to_string(),
            };
        }
        self.object_error(&object.key)(e)
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
    ) -> Result<CopiedObject, FailedObject> {
        let dst_key = self.plan.destination_of(object);
        let created = self.created(object, &written);
        // Only a real version id pins anything: on a suspended target every write is the
        // `null` version, which the next write replaces.
        let version = written.version_id.clone().filter(|v| v != "null");
        let hash = match hash {
            Some(value) => QuiltHash {
                kind: self.plan.hash_type,
                value,
            },
            None => match stream_hash(
                self.store,
                &self.plan.target_bucket,
                &dst_key,
                version.as_deref(),
                object.size,
                self.plan.hash_type,
                &self.options.retry,
                Some(&self.options.read_limit),
            )
            .await
            {
                Ok(hash) => hash,
                Err(e) => {
                    return Err(FailedObject::with_created(
                        self.object_error(&object.key)(e),
                        created,
                    ));
                }
            },
        };
        let physical = PhysicalKey::new(&self.plan.target_bucket, &dst_key, version);
        Ok(CopiedObject {
            entry: FragmentEntry {
                logical_key: object.logical_key.clone(),
                physical_key: physical.to_string(),
                size: object.size,
                hash_type: hash.kind,
                hash_value: hash.value,
                meta: entry_meta(self.plan, object, info),
            },
            created: Some(created),
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
                    Some(&self.options.read_limit),
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

/// How a copier uses the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMode {
    /// A copier of its own (a Lambda): a shard whose fragment exists is done, and a run whose
    /// outcome is decided copies nothing (a late copier after a rollback writes no object).
    pub resumable: bool,
    /// Write the shard document beside the attempt marker: the local engine keeps shards in
    /// memory, and recovery needs the keys of an attempt whose process died.
    pub stage_shard: bool,
}

impl ShardMode {
    /// What the AWS copier does: the planner staged the shards.
    pub const LAMBDA: ShardMode = ShardMode {
        resumable: true,
        stage_shard: false,
    };
    /// What the local engine does.
    pub const LOCAL: ShardMode = ShardMode {
        resumable: false,
        stage_shard: true,
    };
}

/// What stopped a resumable shard from outside: a rollback decided while it copied, or its
/// process's deadline coming near.
struct Fence {
    watcher: tokio::task::JoinHandle<()>,
    /// 0 nothing, [`Fence::ABORTED`] or [`Fence::DEADLINE`].
    reason: Arc<AtomicU8>,
}

impl Fence {
    const ABORTED: u8 = 1;
    const DEADLINE: u8 = 2;

    /// Watches the run's outcome (every [`FENCE_POLL`]) and the deadline, and sets
    /// `options.stop` when either says no new object may start.
    fn watch(staging: &Staging, options: &CopyOptions) -> Fence {
        let reason = Arc::new(AtomicU8::new(0));
        let (staging, stop, deadline, flag) = (
            staging.clone(),
            options.stop.clone(),
            options.deadline,
            reason.clone(),
        );
        let stop_at = deadline.map(stop_before);
        let watcher = tokio::spawn(async move {
            let outcome_key = staging.outcome_key();
            loop {
                let left = stop_at.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
                if left == Some(Duration::ZERO) {
                    flag.store(Fence::DEADLINE, Ordering::Release);
                    stop.store(true, Ordering::Release);
                    return;
                }
                tokio::time::sleep(left.map_or(FENCE_POLL, |l| l.min(FENCE_POLL))).await;
                // A read that fails is tried again at the next poll: the fence only ever stops.
                if let Ok(Some(Outcome::Aborted { .. })) =
                    staging.get::<Outcome>(&outcome_key).await
                {
                    flag.store(Fence::ABORTED, Ordering::Release);
                    stop.store(true, Ordering::Release);
                    return;
                }
            }
        });
        Fence { watcher, reason }
    }

    /// Names a stop the fence caused for what it was (the run rolled back, or the deadline).
    fn explain(&self, failure: &mut ShardFailure, plan: &RunPlan, shard: u32) {
        if !matches!(failure.error, CopyError::Stopped(_)) {
            return;
        }
        match self.reason.load(Ordering::Acquire) {
            Fence::ABORTED => {
                failure.error = CopyError::RunDecided {
                    run_id: plan.run_id.clone(),
                    outcome: Outcome::Aborted {
                        reason: "rolled back while this shard was copying".into(),
                    },
                }
            }
            Fence::DEADLINE => failure.error = CopyError::DeadlineNear(shard),
            _ => {}
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Copies one shard as one journaled attempt: opens the attempt, copies, and closes it with the
/// shard's fragment or, on failure, a failure record naming what it created (returned beside
/// the error too), so rollback can remove exactly that.
pub async fn copy_shard(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    shard: &Shard,
    options: &CopyOptions,
    on_object: &(dyn Fn(u64) + Send + Sync),
    mode: ShardMode,
) -> Result<ShardOutcome, ShardFailure> {
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    if mode.resumable {
        let (fragment_key, outcome_key) =
            (staging.fragment_key(shard.shard), staging.outcome_key());
        let (fragment, outcome) = tokio::join!(
            staging.get::<ManifestFragment>(&fragment_key),
            staging.get::<Outcome>(&outcome_key),
        );
        match fragment {
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
            Err(e) => return Err(CopyError::from(e).into()),
        }
        match outcome {
            Ok(None) => {}
            Ok(Some(decided)) => {
                return Err(CopyError::RunDecided {
                    run_id: plan.run_id.clone(),
                    outcome: decided,
                }
                .into());
            }
            Err(e) => return Err(CopyError::from(e).into()),
        }
    }
    if mode.resumable {
        match clear_earlier_attempts(store.as_ref(), &staging, plan, shard).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(
                    shard = shard.shard,
                    removed,
                    "removed the copies of earlier attempts"
                )
            }
            Err(e) => return Err(CopyError::from(e).into()),
        }
    }
    let attempt = new_attempt_id();
    if let Err(e) = open_attempt(&staging, shard, &attempt, mode.stage_shard).await {
        return Err(CopyError::from(StagingError::from(e)).into());
    }
    let fence = mode.resumable.then(|| Fence::watch(&staging, options));
    let copied = copy_objects(store.as_ref(), plan, shard, options, on_object, &attempt).await;
    if let Some(fence) = &fence {
        fence.watcher.abort();
    }
    let fragment = match copied {
        Ok(fragment) => fragment,
        Err(mut failure) => {
            if let Some(fence) = &fence {
                fence.explain(&mut failure, plan, shard.shard);
            }
            let record = FailureRecord {
                shard: shard.shard,
                attempt: attempt.clone(),
                created: failure.created.clone(),
                in_doubt: failure.in_doubt.clone(),
                error: failure.error.to_string(),
            };
            if let Err(e) = staging
                .put(&staging.failure_key(shard.shard, &attempt), &record)
                .await
            {
                // The attempt stays open: recovery searches its keys for this run's tag.
                tracing::warn!(shard = shard.shard, error = %e, "could not record the failed shard's objects");
            }
            return Err(failure);
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
        Err(e) => Err(ShardFailure {
            error: StagingError::from(e).into(),
            created: fragment.created,
            in_doubt: Vec::new(),
        }),
    }
}

/// Copies (or references) every object of a shard and returns its fragment, touching no
/// staging document. On failure the objects already in flight finish first, so everything
/// created is returned beside the error.
pub async fn copy_objects(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    shard: &Shard,
    options: &CopyOptions,
    on_object: &(dyn Fn(u64) + Send + Sync),
    attempt: &str,
) -> Result<ManifestFragment, ShardFailure> {
    let copier = ObjectCopier {
        store,
        plan,
        options,
        tagging: run_tagging(&plan.run_id),
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
    let mut in_doubt = Vec::new();
    let mut failure = None;
    // Objects already in flight when one fails finish, so everything they create is known;
    // those not yet started see `stop` and skip.
    while let Some(result) = results.next().await {
        match result {
            Ok(Some(copied)) => {
                created.extend(copied.created);
                entries.push(copied.entry);
            }
            Ok(None) => {}
            Err(failed) => {
                created.extend(failed.created);
                in_doubt.extend(failed.in_doubt);
                failure.get_or_insert(failed.error);
            }
        }
    }
    if failure.is_none() && entries.len() < shard.objects.len() {
        // Another shard of the run failed (or the run was interrupted) while this one was
        // copying: what was copied is returned for rollback, and no fragment (it would be
        // incomplete).
        failure = Some(CopyError::Stopped(shard.shard));
    }
    if let Some(error) = failure {
        return Err(ShardFailure {
            error,
            created,
            in_doubt,
        });
    }
    Ok(ManifestFragment {
        shard: shard.shard,
        entries,
        created,
        attempt: attempt.to_string(),
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
    copy_shard(
        store,
        &plan,
        &shard_doc,
        options,
        &|_| {},
        ShardMode::LAMBDA,
    )
    .await
    .map_err(|failure| failure.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copiers_stop_a_margin_before_their_deadline_or_a_quarter_of_a_short_one() {
        let now = SystemTime::now();
        let lambda = now + Duration::from_secs(900);
        let stop = stop_before(lambda);
        assert_eq!(lambda.duration_since(stop).unwrap(), DEADLINE_MARGIN);
        let short = now + Duration::from_secs(20);
        let margin = short.duration_since(stop_before(short)).unwrap();
        assert!(
            margin <= Duration::from_secs(5) && margin > Duration::from_secs(4),
            "{margin:?}"
        );
        let past = now - Duration::from_secs(1);
        assert_eq!(stop_before(past), past);
    }

    #[test]
    fn only_a_proven_full_object_checksum_is_trusted() {
        let info = |checksum_type: Option<&str>, parts_count: Option<u32>, etag: &str| ObjectInfo {
            checksum_type: checksum_type.map(str::to_string),
            parts_count,
            etag: Some(etag.to_string()),
            ..Default::default()
        };
        let single = "\"9a0364b9e99bb480dd25e1f0284c8555\"";
        let multipart = "\"c1a27e8ab27a8dfa6e7c4f3f0b3d1a27-2\"";
        let cases = [
            (info(Some("FULL_OBJECT"), Some(2), multipart), true),
            (info(Some("COMPOSITE"), None, single), false),
            (info(None, None, single), true),
            (info(None, Some(2), single), false),
            // moto: a composite without `-N` and without a type; the ETag tells.
            (info(None, None, multipart), false),
            (
                info(None, None, "\"c1a27e8ab27a8dfa6e7c4f3f0b3d1a27-\""),
                true,
            ),
        ];
        for (object, trusted) in cases {
            assert_eq!(full_object_checksum(&object), trusted, "{object:?}");
        }
    }
}
