//! The run's staging area in the registry bucket: the small documents the steps hand each
//! other (plan, shards, shard index, manifest fragments, failure records) and the run's journal
//! (copy attempts, the outcome that is its commit point; see [`crate::transaction`]), under
//! `.s3quilt/runs/<run_id>/`. Steps pass only the run id and shard numbers; everything large
//! lives here. Finalize and rollback remove it.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::quilt::checksum::HashType;
use crate::quilt::json::JsonObject;
use crate::quilt::names::{LogicalKey, PackageName};
use crate::registry::WrittenObject;
use crate::request::PackageRequest;
use crate::retry::RetryPolicy;
use crate::storage::{
    ObjectStore, PutOptions, StoreError, StoreErrorKind, Versioning, get_bytes, list_all,
};

/// Root of every run's staging area.
pub const STAGING_ROOT: &str = ".s3quilt/runs/";
/// Where finished runs' result records stay.
pub const STAGING_ROOT_RESULTS: &str = ".s3quilt/results/";

/// A run's identity: `<UTC yyyymmddThhmmssZ>-<8 hex>`, sortable and unique.
pub fn new_run_id() -> String {
    let now = crate::storage::unix_now();
    let (days, secs) = (now / 86_400, now % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{:08x}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60,
        rand::random::<u32>()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Checks that a run id has the shape [`new_run_id`] gives (so it can be used in keys safely).
pub fn is_valid_run_id(run_id: &str) -> bool {
    run_id.len() <= 64
        && !run_id.is_empty()
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An object chosen by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedObject {
    /// Source key.
    pub key: String,
    /// Size in bytes at listing time.
    pub size: u64,
    /// ETag at listing time (the copy is pinned to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Storage class.
    pub storage_class: String,
    /// Last-modified at listing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// Its path in the package.
    pub logical_key: LogicalKey,
    /// Where its copy goes, when not `namespace/name/logical_key`: an incremental run on a
    /// target that keeps no versions never writes over a key an earlier version references,
    /// so a changed object whose key is taken gets a key of its own run
    /// (see [`run_scoped_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// A shard: a bounded list of objects for one copier invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Shard number (0-based).
    pub shard: u32,
    /// The objects.
    pub objects: Vec<PlannedObject>,
}

/// One item of the shard index (what the Distributed Map iterates over).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRef {
    /// Run id.
    pub run_id: String,
    /// Registry bucket holding the staging area.
    pub registry_bucket: String,
    /// Shard number.
    pub shard: u32,
    /// Objects in the shard.
    pub objects: usize,
    /// Bytes in the shard.
    pub bytes: u64,
}

/// The plan document: everything later steps need to know about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// Run id.
    pub run_id: String,
    /// The request as given.
    pub request: PackageRequest,
    /// Package name.
    pub package_name: PackageName,
    /// Registry bucket.
    pub registry_bucket: String,
    /// Bucket receiving copies.
    pub target_bucket: String,
    /// Source bucket.
    pub source_bucket: String,
    /// Source folder (empty or ending in `/`).
    pub source_prefix: String,
    /// Copy or reference in place.
    pub copy: bool,
    /// Hash type for entries.
    pub hash_type: HashType,
    /// The target bucket's versioning (decides overwrite, physical-key and rollback rules).
    pub target_versioning: Versioning,
    /// Replace existing keys on an unversioned target.
    pub overwrite_existing: bool,
    /// Number of shards.
    pub shards: u32,
    /// Objects in the package.
    pub objects: u64,
    /// Bytes in the package.
    pub bytes: u64,
    /// Unix seconds when planning started.
    pub started_at: u64,
    /// Objects the plan itself created outside staging (e.g. a write probe), to remove at the end.
    #[serde(default)]
    pub probes: Vec<WrittenObject>,
    /// The Step Functions execution (ARN) that made the run, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
    /// The version an incremental run started from, and what it reuses of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRecord>,
    /// The manifest header's `workflow` record, as the registry's workflows resolved it at plan
    /// time (`None`: the registry has no workflows config, and the header has no such key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<crate::registry::workflow::WorkflowRecord>,
}

/// What an incremental run takes from its base version: the reused entries are staged in
/// `reused_documents` documents ([`Staging::reused_key`]) and are part of `objects`/`bytes`,
/// but in no shard; the run never writes, and so never rolls back, anything they point at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The base version's top hash.
    pub top_hash: String,
    /// Entries reused from it.
    pub reused_objects: u64,
    /// Their bytes.
    pub reused_bytes: u64,
    /// Staged documents holding them.
    pub reused_documents: u32,
}

impl RunPlan {
    /// Whether copies keep what they replace (versioning enabled on the target): only then are
    /// entries pinned to a version and existing keys allowed.
    pub fn target_versioned(&self) -> bool {
        self.target_versioning.keeps_versions()
    }

    /// `namespace/name/`: the only folder of the target this run writes to.
    pub fn package_prefix(&self) -> String {
        format!(
            "{}/{}/",
            self.package_name.namespace(),
            self.package_name.name()
        )
    }

    /// Where a copy of `logical_key` goes by default: `namespace/name/logical_key`.
    pub fn destination_key(&self, logical_key: &LogicalKey) -> String {
        format!(
            "{}/{}/{}",
            self.package_name.namespace(),
            self.package_name.name(),
            logical_key
        )
    }

    /// Where the copy of `object` goes: its planned destination, else the default.
    pub fn destination_of(&self, object: &PlannedObject) -> String {
        object
            .destination
            .clone()
            .unwrap_or_else(|| self.destination_key(&object.logical_key))
    }

    /// Entries in the shards (the package's entries less those reused from the base).
    pub fn copied_objects(&self) -> u64 {
        self.objects - self.base.as_ref().map_or(0, |b| b.reused_objects)
    }
}

/// The key of `logical_key`'s copy when written by run `run_id` because the default key is
/// taken: `namespace/name/.s3quilt/<run id>/logical_key` (inside the package's folder, so the
/// run's clean-up rules hold; a run id is new, so no earlier run wrote there).
pub fn run_scoped_key(package_prefix: &str, run_id: &str, logical_key: &LogicalKey) -> String {
    format!("{package_prefix}.s3quilt/{run_id}/{logical_key}")
}

/// One entry of a fragment: the manifest line's parts, plus rollback facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FragmentEntry {
    /// Logical key.
    pub logical_key: LogicalKey,
    /// Physical key URL.
    pub physical_key: String,
    /// Size.
    pub size: u64,
    /// Hash type.
    pub hash_type: HashType,
    /// Hash value.
    pub hash_value: String,
    /// Entry `meta` as a manifest-form JSON text (kept as text so numbers stay exact).
    pub meta: String,
}

impl FragmentEntry {
    /// The manifest entry this stands for; `None` when its `meta` is not a JSON object.
    pub fn to_manifest_entry(&self) -> Option<crate::quilt::manifest::ManifestEntry> {
        let hash = crate::quilt::checksum::QuiltHash {
            kind: self.hash_type,
            value: self.hash_value.clone(),
        };
        Some(crate::quilt::manifest::ManifestEntry::new(
            self.logical_key.clone(),
            self.physical_key.clone(),
            self.size,
            &hash,
            parse_meta(&self.meta)?,
        ))
    }
}

/// What one copier produced for one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFragment {
    /// Shard number.
    pub shard: u32,
    /// Entries, in shard order.
    pub entries: Vec<FragmentEntry>,
    /// Objects this shard created in the target (for rollback).
    pub created: Vec<WrittenObject>,
    /// The copy attempt that made it (see [`Staging::attempt_key`]).
    #[serde(default)]
    pub attempt: String,
}

/// A copier's record of what it created before it failed, so rollback can remove it. One per
/// attempt: a shard retried after a failure keeps every attempt's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Shard number.
    pub shard: u32,
    /// The copy attempt.
    #[serde(default)]
    pub attempt: String,
    /// Destination keys a write whose answer was lost may have landed on, not yet searched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_doubt: Vec<String>,
    /// What was created before the failure.
    pub created: Vec<WrittenObject>,
    /// The error.
    pub error: String,
}

/// Parses a fragment entry's `meta` text.
pub fn parse_meta(text: &str) -> Option<JsonObject> {
    crate::quilt::json::Json::parse(text)
        .ok()?
        .as_object()
        .cloned()
}

/// Why a staging document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// S3 failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document is missing.
    #[error("staging document s3://{bucket}/{key} is missing")]
    Missing {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A document is not what we wrote.
    #[error("staging document s3://{bucket}/{key} is corrupt: {reason}")]
    Corrupt {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Parse error.
        reason: String,
    },
}

/// A run's staging area.
#[derive(Clone)]
pub struct Staging {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    run_id: String,
    retry: RetryPolicy,
}

impl Staging {
    /// The staging area of `run_id` in `registry_bucket`.
    pub fn new(store: Arc<dyn ObjectStore>, registry_bucket: &str, run_id: &str) -> Self {
        Staging {
            store,
            bucket: registry_bucket.to_string(),
            run_id: run_id.to_string(),
            retry: RetryPolicy::default(),
        }
    }

    /// `.s3quilt/runs/<run_id>/`.
    pub fn prefix(&self) -> String {
        format!("{STAGING_ROOT}{}/", self.run_id)
    }

    /// Key of the plan document.
    pub fn plan_key(&self) -> String {
        format!("{}plan.json", self.prefix())
    }

    /// Key of the shard index (a JSON array of [`ShardRef`]).
    pub fn shard_index_key(&self) -> String {
        format!("{}shards.json", self.prefix())
    }

    /// Key of a shard.
    pub fn shard_key(&self, shard: u32) -> String {
        format!("{}shards/{shard:06}.json", self.prefix())
    }

    /// Key of a document of entries reused from the base version (a [`ManifestFragment`]
    /// with nothing created).
    pub fn reused_key(&self, document: u32) -> String {
        format!("{}reused/{document:06}.json", self.prefix())
    }

    /// Key of a shard's fragment.
    pub fn fragment_key(&self, shard: u32) -> String {
        format!("{}fragments/{shard:06}.json", self.prefix())
    }

    /// Key of the run's result record, kept after staging is removed (outside the run's
    /// prefix) so a finalizer that runs again answers with the same package.
    pub fn result_key(&self) -> String {
        format!("{STAGING_ROOT_RESULTS}{}.json", self.run_id)
    }

    /// Key of a failure record: one per shard and attempt.
    pub fn failure_key(&self, shard: u32, attempt: &str) -> String {
        format!("{}failures/{shard:06}-{attempt}.json", self.prefix())
    }

    /// Prefix of the failure records.
    pub fn failures_prefix(&self) -> String {
        format!("{}failures/", self.prefix())
    }

    /// Key of an attempt marker: written before a copier sends its first write for the shard,
    /// closed by the shard's fragment or a failure record of the same attempt. An attempt that
    /// is neither closed nor known in memory is what recovery must search S3 for.
    pub fn attempt_key(&self, shard: u32, attempt: &str) -> String {
        format!("{}attempts/{shard:06}-{attempt}.json", self.prefix())
    }

    /// Prefix of the attempt markers.
    pub fn attempts_prefix(&self) -> String {
        format!("{}attempts/", self.prefix())
    }

    /// Key of the run's outcome: the commit point (see [`crate::transaction`]).
    pub fn outcome_key(&self) -> String {
        format!("{}outcome.json", self.prefix())
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The registry bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Writes a document.
    pub async fn put<T: Serialize>(&self, key: &str, doc: &T) -> Result<WrittenObject, StoreError> {
        self.write(key, doc, false).await
    }

    /// Writes a document unless one is there (`If-None-Match: *`): `Ok(None)` when S3 refused
    /// because the key exists (a lost reply of our own earlier attempt included: read it to tell).
    pub async fn put_if_absent<T: Serialize>(
        &self,
        key: &str,
        doc: &T,
    ) -> Result<Option<WrittenObject>, StoreError> {
        match self.write(key, doc, true).await {
            Ok(written) => Ok(Some(written)),
            Err(e) if e.kind == StoreErrorKind::PreconditionFailed => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write<T: Serialize>(
        &self,
        key: &str,
        doc: &T,
        if_none_match: bool,
    ) -> Result<WrittenObject, StoreError> {
        let body = Bytes::from(serde_json::to_vec(doc).expect("staging documents serialize"));
        let result = self
            .retry
            .run(|_| {
                self.store.put(
                    &self.bucket,
                    key,
                    body.clone(),
                    PutOptions {
                        content_type: Some("application/json".into()),
                        if_none_match,
                        tagging: None,
                    },
                )
            })
            .await?;
        Ok(WrittenObject {
            key: key.to_string(),
            version_id: result.version_id,
            etag: result.etag,
        })
    }

    /// Keys under `prefix` (all pages).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listed = list_all(self.store.as_ref(), &self.bucket, prefix, &self.retry).await?;
        Ok(listed.into_iter().map(|o| o.key).collect())
    }

    /// Reads a document; `Ok(None)` when it does not exist.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StagingError> {
        let bytes = match self
            .retry
            .run(|_| get_bytes(self.store.as_ref(), &self.bucket, key, None))
            .await
        {
            Ok(bytes) => bytes,
            Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StagingError::Corrupt {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Reads a document that must exist.
    pub async fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T, StagingError> {
        self.get(key).await?.ok_or_else(|| StagingError::Missing {
            bucket: self.bucket.clone(),
            key: key.to_string(),
        })
    }

    /// The plan document.
    pub async fn plan(&self) -> Result<RunPlan, StagingError> {
        self.require(&self.plan_key()).await
    }

    /// Shard numbers that have a fragment.
    pub async fn fragments_present(&self) -> Result<Vec<u32>, StoreError> {
        let prefix = format!("{}fragments/", self.prefix());
        let listed = self.list_keys(&prefix).await?;
        Ok(listed
            .iter()
            .filter_map(|key| {
                key.strip_prefix(&prefix)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// Deletes every version (and delete marker) under the staging prefix, so a versioned
    /// registry keeps no trace of the run. Returns what could not be deleted.
    pub async fn remove_all(&self) -> Vec<String> {
        remove_prefix(
            self.store.as_ref(),
            &self.bucket,
            &self.prefix(),
            &self.retry,
        )
        .await
    }
}

/// Deletes every version and delete marker under `prefix`; the plan document and the outcome
/// go last, so a removal cut short still leaves a run that `s3quilt runs` can find and finish.
/// On a bucket whose versioning is suspended, deleting a `null` version leaves a `null` delete
/// marker: a later listing finds it and removes it, so the bucket's version listing is as
/// before. Returns what was left.
pub async fn remove_prefix(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    retry: &RetryPolicy,
) -> Vec<String> {
    let mut failed = Vec::new();
    let is_last = |key: &str| key.ends_with("/plan.json") || key.ends_with("/outcome.json");
    for pass in 0..3 {
        let listed = match retry.run(|_| store.list_versions(bucket, prefix)).await {
            Ok(listed) => listed,
            Err(e) => return vec![format!("{prefix} ({e})")],
        };
        // Pass 0: all but the run's anchors; pass 1: everything left; pass 2: only the `null`
        // delete markers the others made.
        let listed: Vec<_> = listed
            .into_iter()
            .filter(|v| match pass {
                0 => !is_last(&v.key),
                1 => true,
                _ => v.is_delete_marker && v.version_id.is_none(),
            })
            .collect();
        if pass == 0 && listed.is_empty() {
            continue;
        }
        if listed.is_empty() {
            break;
        }
        let results: Vec<_> = futures::stream::iter(listed.into_iter().map(|object| async move {
            let version = match (&object.version_id, pass) {
                (Some(v), _) => Some(v.as_str()),
                (None, 0 | 1) => None,
                (None, _) => Some("null"),
            };
            let result = retry
                .run(|_| store.delete(bucket, &object.key, version))
                .await;
            (object.key.clone(), result)
        }))
        .buffer_unordered(32)
        .collect()
        .await;
        failed.clear();
        for (key, result) in results {
            if let Err(e) = result
                && e.kind != StoreErrorKind::NotFound
            {
                failed.push(format!("{key} ({e})"));
            }
        }
        if pass == 0 && !failed.is_empty() {
            // Keep the anchors while other documents are left.
            return failed;
        }
    }
    failed
}
