//! Step 1, plan: validate the request, list the source (and read the base version of an
//! incremental run, see [`crate::reuse`]), select and map keys, refuse what cannot be packaged
//! (with the list of offenders), prove access, and write the shards, the reused entries and
//! the plan document to staging. Nothing outside staging is written; a dry run, and a run that
//! finds nothing changed since its base, write nothing.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::quilt::checksum::{chunk_count, is_multipart};
use crate::quilt::manifest::Manifest;
use crate::registry::workflow::{WorkflowError, check_valid_request};
use crate::registry::{Registry, RegistryError, WrittenObject};
use crate::request::{BaseChoice, ObjectMetadata, PackageRequest, RequestError, ValidRequest};
use crate::retry::RetryPolicy;
use crate::reuse::{IncrementalSummary, ReuseRules, Split};
use crate::select::{PatternMatch, Selection, logical_key};
use crate::staging::{
    BaseRecord, FragmentEntry, ManifestFragment, PlannedObject, RunPlan, Shard, ShardRef, Staging,
    new_run_id, run_scoped_key,
};
use crate::storage::{
    ListedObject, ObjectStore, PutOptions, StoreError, StoreErrorKind, Versioning, list_all,
    unix_now,
};

/// Limits on planning.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Most objects in one shard.
    pub shard_max_objects: usize,
    /// Most bytes in one shard (an object bigger than this gets a shard of its own).
    pub shard_max_bytes: u64,
    /// Concurrent listing requests.
    pub list_concurrency: usize,
    /// How many offenders of each kind an error lists.
    pub max_reported: usize,
    /// Write every shard and the shard index to staging, for copiers in other processes (the
    /// AWS engine). The local engine keeps them in memory and stages only the plan document.
    pub stage_shards: bool,
    /// The Step Functions execution this run belongs to (its ARN), recorded in the plan so
    /// the janitor can find the run of an execution that ended without a rollback.
    pub execution: Option<String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            shard_max_objects: 1000,
            shard_max_bytes: 500 * 1024 * 1024 * 1024,
            list_concurrency: 16,
            max_reported: 20,
            stage_shards: true,
            execution: None,
        }
    }
}

/// Objects that cannot go into the package, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlanProblems {
    /// Logical keys that several source keys map to (flattening), with those keys.
    pub collisions: Vec<(String, Vec<String>)>,
    /// Source keys that are not valid logical keys, with why.
    pub invalid_keys: Vec<(String, String)>,
    /// Objects whose logical key is also a folder of the package (`a` beside `a/b`): the
    /// object's source key and one source key inside the folder. quilt3 cannot open such a
    /// package (its `set_dir` refuses the same prefix), as s3fs and goofys folder objects make.
    pub file_beside_folder: Vec<(String, String)>,
    /// Source keys whose copy's key (`namespace/name/` + logical key) would pass S3's
    /// 1,024-byte key limit, with that length.
    pub destination_too_long: Vec<(String, usize)>,
    /// Objects in archive storage that are not restored (key, storage class).
    pub archived: Vec<(String, String)>,
    /// Destination keys that already exist on an unversioned target.
    pub existing_in_target: Vec<String>,
    /// Unfinished runs of the same package in the registry's staging (run id, state): a run
    /// that died leaves its copies, which is what usually makes destination keys exist.
    pub unfinished_runs: Vec<(String, String)>,
}

impl PlanProblems {
    fn is_empty(&self) -> bool {
        self.collisions.is_empty()
            && self.invalid_keys.is_empty()
            && self.file_beside_folder.is_empty()
            && self.destination_too_long.is_empty()
            && self.archived.is_empty()
            && self.existing_in_target.is_empty()
    }
}

/// `"1 key"` / `"3 keys"`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn list_some<T>(items: &[T], max: usize, show: impl Fn(&T) -> String) -> String {
    let mut shown: Vec<String> = items.iter().take(max).map(show).collect();
    if items.len() > max {
        shown.push(format!("… and {} more", items.len() - max));
    }
    shown.join("; ")
}

impl std::fmt::Display for PlanProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = 20;
        let mut parts = Vec::new();
        if !self.collisions.is_empty() {
            parts.push(format!(
                "{} would hold several objects (flattening drops folders; keep the structure or exclude duplicates): {}",
                plural(self.collisions.len(), "logical key", "logical keys"),
                list_some(&self.collisions, max, |(lk, keys)| format!("{lk:?} <- {}", keys.join(", ")))
            ));
        }
        if !self.invalid_keys.is_empty() {
            parts.push(format!(
                "{} cannot be logical keys (exclude them): {}",
                plural(self.invalid_keys.len(), "key", "keys"),
                list_some(&self.invalid_keys, max, |(k, why)| format!("{k:?}: {why}"))
            ));
        }
        if !self.file_beside_folder.is_empty() {
            parts.push(format!(
                "{} the name of a folder in the package, and quilt3 cannot open a package holding both (exclude one of them with `exclude_patterns` (CLI: `--exclude`); a pattern naming the object also covers the folder, so to keep the folder delete the object (s3fs and goofys write empty ones as folders) or package the folder from a prefix below it): {}",
                plural(self.file_beside_folder.len(), "object has", "objects have"),
                list_some(&self.file_beside_folder, max, |(file, inside)| format!("{file:?} beside {inside:?}"))
            ));
        }
        if !self.destination_too_long.is_empty() {
            parts.push(format!(
                "{} longer than S3's {MAX_KEY_BYTES}-byte key limit once the package folder is put before it (shorten the package name, flatten, reference in place with `copy: false`, or exclude them): {}",
                plural(self.destination_too_long.len(), "destination key would be", "destination keys would be"),
                list_some(&self.destination_too_long, max, |(key, len)| format!("{key:?} ({len} bytes)"))
            ));
        }
        if !self.archived.is_empty() {
            parts.push(format!(
                "{} in archive storage and not restored (restore or exclude): {}",
                plural(self.archived.len(), "object is", "objects are"),
                list_some(&self.archived, max, |(k, class)| format!("{k:?} ({class})"))
            ));
        }
        if !self.existing_in_target.is_empty() {
            parts.push(format!(
                "{} in the unversioned target bucket and would be overwritten (set `overwrite_existing` (CLI: `--overwrite-existing`) to allow it, or use a versioned bucket): {}",
                plural(self.existing_in_target.len(), "destination key already exists", "destination keys already exist"),
                list_some(&self.existing_in_target, max, |k| format!("{k:?}"))
            ));
        }
        if !self.unfinished_runs.is_empty() {
            parts.push(format!(
                "{} of this package did not finish and may have left these objects: {} (`s3quilt runs abort RUN_ID` rolls an uncommitted run back, `s3quilt runs resume RUN_ID` finishes a committed one)",
                plural(self.unfinished_runs.len(), "run", "runs"),
                list_some(&self.unfinished_runs, max, |(id, state)| format!("{id} ({state})"))
            ));
        }
        f.write_str(&parts.join("\n"))
    }
}

/// Why planning failed. Nothing outside staging was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The request is invalid.
    #[error("invalid request: {0}")]
    Request(#[from] RequestError),
    /// The source cannot be listed or read.
    #[error("cannot read the source s3://{bucket}/{prefix}: {source}")]
    SourceAccess {
        /// Source bucket.
        bucket: String,
        /// Source prefix.
        prefix: String,
        /// The failure.
        source: StoreError,
    },
    /// The registry or target cannot be written.
    #[error("cannot write to s3://{bucket}: {source}")]
    TargetAccess {
        /// The bucket.
        bucket: String,
        /// The failure.
        source: StoreError,
    },
    /// Some selected objects cannot be packaged.
    #[error("the selection cannot be packaged:\n{0}")]
    Problems(PlanProblems),
    /// The patterns left nothing.
    #[error(
        "nothing to package under s3://{bucket}/{prefix}: {listed} objects listed, {folder_markers} folder markers skipped, {not_included} not matched by include_patterns, {excluded} removed by exclude_patterns{hints}"
    )]
    EmptySelection {
        /// Source bucket.
        bucket: String,
        /// Source prefix.
        prefix: String,
        /// Objects listed.
        listed: u64,
        /// Folder markers skipped.
        folder_markers: u64,
        /// Not matched by includes.
        not_included: u64,
        /// Removed by excludes.
        excluded: u64,
        /// Patterns that matched nothing, each `; <warning>` (empty when none).
        hints: String,
    },
    /// The base version of an incremental run cannot be read.
    #[error(
        "base: cannot read the base version of {package} in s3://{registry}: {source} (give another `base`, or `incremental: false` for a full run)"
    )]
    Base {
        /// Package.
        package: String,
        /// Registry bucket.
        registry: String,
        /// The failure.
        source: RegistryError,
    },
    /// The registry's workflows refuse the push (or their config cannot be used).
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// Any other S3 failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most entries in one staged document of reused entries.
pub const REUSED_DOCUMENT_ENTRIES: usize = 10_000;

/// How many S3 requests a run will make (an estimate shown before it starts).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestEstimate {
    /// ListObjectsV2 pages already made.
    pub list: u64,
    /// HeadObject (metadata of each source object).
    pub head: u64,
    /// CopyObject (objects under 8 MiB).
    pub copy_object: u64,
    /// UploadPartCopy (one per 8 MiB+ chunk of large objects).
    pub upload_part_copy: u64,
    /// Create/CompleteMultipartUpload.
    pub multipart_control: u64,
    /// Staging and registry writes.
    pub put: u64,
    /// Reads of the base version (its manifest) by an incremental run.
    pub get: u64,
}

/// What a plan found (returned for dry runs and before a run starts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    /// Run id (none for a dry run).
    pub run_id: Option<String>,
    /// Package name.
    pub package_name: String,
    /// `s3://registry`.
    pub registry: String,
    /// Bucket receiving copies.
    pub target_bucket: String,
    /// `s3://bucket/prefix`.
    pub source: String,
    /// Objects selected.
    pub objects: u64,
    /// Bytes selected.
    pub bytes: u64,
    /// Shards.
    pub shards: u32,
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Folder markers skipped.
    pub folder_markers: u64,
    /// Keys ending in `/` that hold data (at most [`PlanOptions::max_reported`]): skipped like
    /// every folder marker, because a logical key cannot end in `/` (quilt3 skips them too,
    /// with a warning), and listed so that no data is left out without a word.
    pub non_empty_folder_markers: Vec<String>,
    /// Not matched by include patterns.
    pub not_included: u64,
    /// Removed by exclude patterns.
    pub excluded: u64,
    /// How many listed keys each include and exclude pattern matched.
    #[serde(default)]
    pub pattern_matches: Vec<PatternMatch>,
    /// What the user should look at though the plan is valid: patterns that matched nothing
    /// (with a hint when `[ ]` was probably meant literally), and for a dry run that write
    /// access was not checked.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The first logical keys in walk order.
    pub sample_logical_keys: Vec<String>,
    /// Estimated S3 requests.
    pub estimated_requests: RequestEstimate,
    /// Copy or reference in place.
    pub copy: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// An incremental run: what it reuses of its base version, and what it copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalSummary>,
}

impl PlanSummary {
    /// Objects and bytes the run copies (or hashes in place): all of them, less those an
    /// incremental run reuses.
    pub fn to_copy(&self) -> (u64, u64) {
        let reused = self
            .incremental
            .as_ref()
            .map(|i| i.reused)
            .unwrap_or_default();
        (self.objects - reused.objects, self.bytes - reused.bytes)
    }

    /// Whether an incremental run found nothing changed (and so wrote nothing).
    pub fn up_to_date(&self) -> bool {
        self.incremental.as_ref().is_some_and(|i| i.up_to_date)
    }
}

/// A finished plan: the summary, and for real runs the plan document and shards (already in
/// staging).
#[derive(Debug, Clone)]
pub struct Plan {
    /// What was found.
    pub summary: PlanSummary,
    /// The plan document (`None` for a dry run).
    pub run: Option<RunPlan>,
    /// The shards (empty for a dry run).
    pub shards: Vec<Shard>,
    /// The staging documents this plan wrote (removed again by finalize or rollback).
    pub staged: Vec<WrittenObject>,
    /// Entries an incremental run reuses from its base (also staged): part of the package, in
    /// no shard.
    pub reused: Vec<FragmentEntry>,
}

const ARCHIVE_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// S3's longest object key, in UTF-8 bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Selected objects whose logical key is also a folder of the package: each with the first
/// object inside that folder (in key order).
fn files_beside_folders(selected: &[PlannedObject]) -> Vec<(String, String)> {
    let by_logical: BTreeMap<&str, &str> = selected
        .iter()
        .map(|o| (o.logical_key.as_str(), o.key.as_str()))
        .collect();
    let mut found = Vec::new();
    for (&logical, &key) in &by_logical {
        // Keys inside `logical/` sort right after `logical/` itself.
        let folder = format!("{logical}/");
        if let Some((_, &inside)) = by_logical
            .range::<str, _>((Bound::Included(folder.as_str()), Bound::Unbounded))
            .next()
            .filter(|(other, _)| other.starts_with(&folder))
        {
            found.push((key.to_string(), inside.to_string()));
        }
    }
    found
}

/// Lists everything under `prefix`, fanning out over common prefixes two levels deep so large
/// trees are not one serial pagination. Returns the objects (sorted by key) and the pages used.
pub async fn list_source(
    store: &dyn ObjectStore,
    bucket: &str,
    prefix: &str,
    concurrency: usize,
    retry: &RetryPolicy,
) -> Result<(Vec<ListedObject>, u64), StoreError> {
    async fn delimited(
        store: &dyn ObjectStore,
        bucket: &str,
        prefix: &str,
        retry: &RetryPolicy,
    ) -> Result<(Vec<ListedObject>, Vec<String>, u64), StoreError> {
        let (mut objects, mut prefixes, mut pages, mut token) = (Vec::new(), Vec::new(), 0, None);
        loop {
            let page = retry
                .run(|_| store.list_page(bucket, prefix, Some("/"), token.clone(), None))
                .await?;
            pages += 1;
            objects.extend(page.objects);
            prefixes.extend(page.common_prefixes);
            match page.next_token {
                Some(next) => token = Some(next),
                None => return Ok((objects, prefixes, pages)),
            }
        }
    }
    let (mut objects, level1, mut pages) = delimited(store, bucket, prefix, retry).await?;
    let level1_results: Vec<_> =
        futures::stream::iter(level1.iter().map(|p| delimited(store, bucket, p, retry)))
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    let mut level2 = Vec::new();
    for (found, prefixes, used) in level1_results {
        objects.extend(found);
        level2.extend(prefixes);
        pages += used;
    }
    let full = |p: String| async move {
        let found = list_all(store, bucket, &p, retry).await?;
        let used = (found.len() as u64).div_ceil(1000).max(1);
        Ok::<_, StoreError>((found, used))
    };
    let level2_results: Vec<_> = futures::stream::iter(level2.into_iter().map(full))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for (found, used) in level2_results {
        objects.extend(found);
        pages += used;
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((objects, pages))
}

/// Splits objects into shards bounded by count and bytes.
pub fn make_shards(objects: Vec<PlannedObject>, max_objects: usize, max_bytes: u64) -> Vec<Shard> {
    let mut shards: Vec<Shard> = Vec::new();
    let mut current: Vec<PlannedObject> = Vec::new();
    let mut bytes = 0u64;
    for object in objects {
        if !current.is_empty()
            && (current.len() >= max_objects.max(1) || bytes + object.size > max_bytes)
        {
            shards.push(Shard {
                shard: shards.len() as u32,
                objects: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        bytes += object.size;
        current.push(object);
    }
    if !current.is_empty() {
        shards.push(Shard {
            shard: shards.len() as u32,
            objects: current,
        });
    }
    shards
}

fn estimate<'a>(
    objects: impl Iterator<Item = &'a PlannedObject>,
    list_pages: u64,
    shards: u64,
    valid: &ValidRequest,
    stage_shards: bool,
) -> RequestEstimate {
    // Staged runs write each shard, the index, the plan, each fragment, the manifest, two
    // pointers and a result record; local runs the plan, the manifest and two pointers.
    let probe = u64::from(valid.copy && valid.target_bucket != valid.registry_bucket);
    let put = if stage_shards { shards * 2 + 5 } else { 4 };
    let mut e = RequestEstimate {
        list: list_pages,
        put: put + probe,
        ..Default::default()
    };
    let listing_only = valid.original.object_metadata == ObjectMetadata::Listing;
    for o in objects {
        if !valid.copy {
            e.head += 1;
            continue;
        }
        if is_multipart(o.size) {
            e.head += 1;
            e.upload_part_copy += chunk_count(o.size);
            e.multipart_control += 2;
        } else {
            e.head += u64::from(!listing_only);
            e.copy_object += 1;
        }
    }
    e
}

/// Plans a run: see the module docs. With `dry_run`, nothing is written.
pub async fn plan(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let valid = request.validate()?;
    plan_valid(store, valid, options).await
}

async fn plan_valid(
    store: Arc<dyn ObjectStore>,
    valid: ValidRequest,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let retry = RetryPolicy::default();
    let started_at = unix_now();
    let source_error = |source: StoreError| PlanError::SourceAccess {
        bucket: valid.source_bucket.clone(),
        prefix: valid.source_prefix.clone(),
        source,
    };
    let package_prefix = format!(
        "{}/{}/",
        valid.package_name.namespace(),
        valid.package_name.name()
    );
    // The target's versioning (it decides rollback and overwrite rules) and the base version
    // are read while the source is listed: none depends on another, each is a round trip or more.
    let registry = Registry::new(store.clone(), &valid.registry_bucket);
    let (listed, target_versioned, base) = tokio::join!(
        list_source(
            store.as_ref(),
            &valid.source_bucket,
            &valid.source_prefix,
            options.list_concurrency,
            &retry,
        ),
        target_versioning(store.as_ref(), &valid, &package_prefix, &retry),
        read_base(&registry, &valid),
    );
    let (listed, list_pages) = listed.map_err(source_error)?;
    let base = base?;

    // Select and map.
    let (mut folder_markers, mut not_included, mut excluded) = (0u64, 0u64, 0u64);
    let mut problems = PlanProblems::default();
    let mut selected: Vec<PlannedObject> = Vec::new();
    let mut non_empty_folder_markers = Vec::new();
    let mut tally = valid.selector.tally();
    for object in &listed {
        let relative = &object.key[valid.source_prefix.len()..];
        if relative.is_empty() || relative.ends_with('/') {
            folder_markers += 1;
            if object.size > 0 {
                tracing::warn!(
                    key = object.key,
                    size = object.size,
                    "skipping a key ending in '/' that holds data: a logical key cannot end in '/'"
                );
                if non_empty_folder_markers.len() < options.max_reported {
                    non_empty_folder_markers.push(object.key.clone());
                }
            }
            continue;
        }
        match valid.selector.select_counting(relative, &mut tally) {
            Selection::Selected => {}
            Selection::NotIncluded => {
                not_included += 1;
                continue;
            }
            Selection::Excluded => {
                excluded += 1;
                continue;
            }
        }
        match logical_key(relative, valid.flatten) {
            Ok(lk) => selected.push(PlannedObject {
                key: object.key.clone(),
                size: object.size,
                etag: object.etag.clone(),
                storage_class: object.storage_class.clone(),
                last_modified: object.last_modified.clone(),
                logical_key: lk,
                destination: None,
            }),
            Err(e) => problems
                .invalid_keys
                .push((object.key.clone(), e.to_string())),
        }
    }
    let pattern_matches = valid.selector.pattern_matches(&tally);
    let warnings: Vec<String> = pattern_matches
        .iter()
        .filter_map(|m| m.warning(&valid.source_prefix))
        .collect();
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if selected.is_empty() && problems.is_empty() {
        return Err(PlanError::EmptySelection {
            hints: warnings.iter().map(|w| format!("; {w}")).collect(),
            bucket: valid.source_bucket.clone(),
            prefix: valid.source_prefix.clone(),
            listed: listed.len() as u64,
            folder_markers,
            not_included,
            excluded,
        });
    }

    // Collisions (only possible when flattening, but checked always).
    let mut by_logical: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in &selected {
        by_logical
            .entry(o.logical_key.as_str())
            .or_default()
            .push(o.key.as_str());
    }
    problems.collisions = by_logical
        .into_iter()
        .filter(|(_, keys)| keys.len() > 1)
        .map(|(lk, keys)| {
            (
                lk.to_string(),
                keys.into_iter().map(str::to_string).collect(),
            )
        })
        .collect();

    problems.file_beside_folder = files_beside_folders(&selected);

    selected.sort_by(|a, b| crate::quilt::manifest::walk_order(&a.logical_key, &b.logical_key));
    let workflow = check_valid_request(store.as_ref(), &valid, &selected).await?;
    let objects = selected.len() as u64;
    let bytes = selected.iter().map(|o| o.size).sum();
    let mut summary = PlanSummary {
        run_id: None,
        package_name: valid.package_name.to_string(),
        registry: format!("s3://{}", valid.registry_bucket),
        target_bucket: valid.target_bucket.clone(),
        source: format!("s3://{}/{}", valid.source_bucket, valid.source_prefix),
        objects,
        bytes,
        shards: 0,
        listed: listed.len() as u64,
        folder_markers,
        non_empty_folder_markers,
        not_included,
        excluded,
        pattern_matches,
        warnings,
        sample_logical_keys: selected
            .iter()
            .take(10)
            .map(|o| o.logical_key.to_string())
            .collect(),
        estimated_requests: RequestEstimate::default(),
        copy: valid.copy,
        dry_run: valid.dry_run,
        incremental: None,
    };
    drop(listed);

    // An incremental run copies only what is new or changed since its base.
    let mut split = match &base {
        Some((base_hash, manifest)) => crate::reuse::split(
            manifest,
            base_hash,
            selected,
            &ReuseRules {
                source_bucket: &valid.source_bucket,
                copy: valid.copy,
                target_bucket: &valid.target_bucket,
                package_prefix: &package_prefix,
                hash_type: valid.hash_type,
            },
        ),
        None => Split {
            to_copy: selected,
            ..Split::default()
        },
    };
    let base_hash = base.map(|(hash, _)| hash);
    if base_hash.is_some() && valid.original.verify_base {
        verify_reused(store.as_ref(), &mut split, options, &retry).await?;
    }
    let Split {
        reused,
        mut to_copy,
        summary: mut incremental,
    } = split;
    let reused: Vec<FragmentEntry> = reused.into_iter().map(|(_, entry)| entry).collect();

    // Archived objects: readable only once restored (reused ones are not read).
    let archived: Vec<(String, String)> = futures::stream::iter(
        to_copy
            .iter()
            .filter(|o| ARCHIVE_CLASSES.contains(&o.storage_class.as_str()))
            .map(|o| {
                let (store, retry, bucket) = (store.as_ref(), &retry, &valid.source_bucket);
                async move {
                    let info = retry.run(|_| store.head(bucket, &o.key, None)).await?;
                    let restored = info
                        .restore
                        .as_deref()
                        .is_some_and(|r| r.contains("ongoing-request=\"false\""));
                    Ok::<_, StoreError>(
                        (!restored).then(|| (o.key.clone(), o.storage_class.clone())),
                    )
                }
            }),
    )
    .buffered(options.list_concurrency.max(1))
    .try_filter_map(|found| async move { Ok(found) })
    .try_collect()
    .await
    .map_err(source_error)?;
    problems.archived = archived;

    // Read access (listing does not prove GetObject permission; one HEAD does) and the keys
    // already in a target that keeps no versions are asked at the same time.
    let target_versioning = target_versioned?;
    let target_versioned = target_versioning.keeps_versions();
    let read_access = async {
        match to_copy.first() {
            Some(first) => retry
                .run(|_| store.head(&valid.source_bucket, &first.key, None))
                .await
                .map(drop)
                .map_err(source_error),
            None => Ok(()),
        }
    };
    // An incremental run never writes over a key on such a target (an earlier version may
    // reference it), `overwrite_existing` or not: a taken key gets a key of the run's own.
    let incremental_run = base_hash.is_some();
    let existing = async {
        if !(valid.copy
            && !target_versioned
            && !to_copy.is_empty()
            && (incremental_run || !valid.overwrite_existing))
        {
            return Ok(HashSet::new());
        }
        list_all(
            store.as_ref(),
            &valid.target_bucket,
            &package_prefix,
            &retry,
        )
        .await
        .map(|found| {
            found
                .into_iter()
                .map(|o| o.key)
                .collect::<HashSet<String>>()
        })
        .map_err(|e| PlanError::TargetAccess {
            bucket: valid.target_bucket.clone(),
            source: e,
        })
    };
    let ((), existing) = futures::try_join!(read_access, existing)?;
    let run_id = new_run_id();
    for object in &mut to_copy {
        let default = format!("{package_prefix}{}", object.logical_key);
        if existing.contains(&default) {
            if incremental_run {
                object.destination = Some(run_scoped_key(
                    &package_prefix,
                    &run_id,
                    &object.logical_key,
                ));
            } else {
                problems.existing_in_target.push(default);
            }
        }
    }
    if valid.copy {
        problems.destination_too_long = to_copy
            .iter()
            .map(|o| {
                let length = o.destination.as_ref().map_or(
                    package_prefix.len() + o.logical_key.as_str().len(),
                    String::len,
                );
                (o, length)
            })
            .filter(|(_, len)| *len > MAX_KEY_BYTES)
            .map(|(o, len)| (o.key.clone(), len))
            .collect();
    }
    if !problems.existing_in_target.is_empty() {
        // Say which unfinished runs of this package may own them (a listing of staging).
        if let Ok(runs) = crate::transaction::list_runs(store.clone(), &valid.registry_bucket).await
        {
            problems.unfinished_runs = runs
                .into_iter()
                .filter(|r| r.package == valid.package_name.to_string())
                .map(|r| {
                    let state = match r.state {
                        crate::transaction::RunState::Uncommitted => "not committed".to_string(),
                        crate::transaction::RunState::Committed { .. } => {
                            "committed, not published".to_string()
                        }
                        crate::transaction::RunState::Aborted { .. } => {
                            "aborted, clean-up unfinished".to_string()
                        }
                    };
                    (r.run_id, state)
                })
                .collect();
        }
    }
    if !problems.is_empty() {
        return Err(PlanError::Problems(problems));
    }

    // Nothing to copy and nothing removed: the new version is the base again if its header
    // (message, metadata) is the same, which the top hash tells.
    if let Some(base_hash) = &base_hash {
        incremental.up_to_date = to_copy.is_empty()
            && incremental.removed.objects == 0
            && unchanged_top_hash(&valid, workflow.as_ref(), &reused).as_deref()
                == Some(base_hash.as_str());
        summary.incremental = Some(incremental);
    }
    to_copy.sort_by(|a, b| crate::quilt::manifest::walk_order(&a.logical_key, &b.logical_key));
    let shards = make_shards(to_copy, options.shard_max_objects, options.shard_max_bytes);
    summary.shards = shards.len() as u32;
    let reused_documents = reused.len().div_ceil(REUSED_DOCUMENT_ENTRIES);
    let up_to_date = summary.up_to_date() && !valid.original.publish_unchanged;
    summary.estimated_requests = estimate(
        shards.iter().flat_map(|s| &s.objects),
        list_pages,
        shards.len() as u64,
        &valid,
        options.stage_shards,
    );
    summary.estimated_requests.get = u64::from(base_hash.is_some());
    summary.estimated_requests.put = if up_to_date {
        0
    } else {
        summary.estimated_requests.put + reused_documents as u64
    };
    if valid.dry_run {
        // Nothing short of writing proves the credentials may write, and a dry run writes
        // nothing: say what was not checked rather than let the preview imply it.
        let targets = if valid.target_bucket == valid.registry_bucket {
            format!("s3://{}", valid.registry_bucket)
        } else {
            format!(
                "s3://{} and s3://{}",
                valid.registry_bucket, valid.target_bucket
            )
        };
        summary.warnings.push(format!(
            "write access to {targets} was not checked (a dry run writes nothing); a real run that may not write there stops when it writes its plan, before any object is copied"
        ));
    }
    if valid.dry_run || up_to_date {
        return Ok(Plan {
            summary,
            run: None,
            shards: Vec::new(),
            staged: Vec::new(),
            reused: Vec::new(),
        });
    }

    // Write staging: shards, then the index, then the plan document (its presence means the
    // staging area is complete). The first write proves write access to the registry; the
    // probe of a separate target bucket is written at the same time as the shards. Reused
    // entries are staged whatever the engine (a committed run is finished from staging).
    let staging = Staging::new(store.clone(), &valid.registry_bucket, &run_id);
    let target_error = |bucket: &str| {
        let bucket = bucket.to_string();
        move |source: StoreError| PlanError::TargetAccess {
            bucket: bucket.clone(),
            source,
        }
    };
    // Anything written before a failure is removed again: a failed plan leaves nothing.
    let mut probes: Vec<WrittenObject> = Vec::new();
    let mut staged: Vec<WrittenObject> = Vec::new();
    let written: Result<RunPlan, PlanError> = async {
        let probe_key = format!("{}probe", staging.prefix());
        let probe = async {
            if !(valid.copy && valid.target_bucket != valid.registry_bucket) {
                return Ok(None);
            }
            retry
                .run(|_| {
                    store.put(
                        &valid.target_bucket,
                        &probe_key,
                        bytes::Bytes::from_static(b"s3quilt write probe"),
                        PutOptions {
                            content_type: None,
                            if_none_match: true,
                            tagging: None,
                        },
                    )
                })
                .await
                .map(|written| Some(WrittenObject::from_write(probe_key.clone(), &written)))
                .map_err(target_error(&valid.target_bucket))
        };
        let shard_documents = async {
            if !options.stage_shards {
                return Ok::<_, PlanError>(Vec::new());
            }
            let mut written: Vec<WrittenObject> = futures::stream::iter(shards.iter().map(|s| {
                let staging = &staging;
                async move { staging.put(&staging.shard_key(s.shard), s).await }
            }))
            .buffer_unordered(options.list_concurrency.max(1))
            .try_collect()
            .await
            .map_err(target_error(&valid.registry_bucket))?;
            let index: Vec<ShardRef> = shards
                .iter()
                .map(|s| ShardRef {
                    run_id: run_id.clone(),
                    registry_bucket: valid.registry_bucket.clone(),
                    shard: s.shard,
                    objects: s.objects.len(),
                    bytes: s.objects.iter().map(|o| o.size).sum(),
                })
                .collect();
            written.push(
                staging
                    .put(&staging.shard_index_key(), &index)
                    .await
                    .map_err(target_error(&valid.registry_bucket))?,
            );
            Ok(written)
        };
        let reused_written = async {
            futures::stream::iter(
                reused
                    .chunks(REUSED_DOCUMENT_ENTRIES.max(1))
                    .enumerate()
                    .map(|(document, entries)| {
                        let staging = &staging;
                        let fragment = ManifestFragment {
                            shard: document as u32,
                            entries: entries.to_vec(),
                            created: Vec::new(),
                            attempt: String::new(),
                        };
                        async move {
                            staging
                                .put(&staging.reused_key(document as u32), &fragment)
                                .await
                        }
                    }),
            )
            .buffer_unordered(options.list_concurrency.max(1))
            .try_collect::<Vec<WrittenObject>>()
            .await
            .map_err(target_error(&valid.registry_bucket))
        };
        let (probe, shard_documents, reused_written) =
            tokio::join!(probe, shard_documents, reused_written);
        // All are recorded before any error is returned, so the cleanup below sees them.
        let probe_failed = match probe {
            Ok(written) => {
                probes.extend(written);
                None
            }
            Err(e) => Some(e),
        };
        let reused_failed = match reused_written {
            Ok(written) => {
                staged.extend(written);
                None
            }
            Err(e) => Some(e),
        };
        staged.extend(shard_documents?);
        if let Some(e) = reused_failed {
            return Err(e);
        }
        if let Some(e) = probe_failed {
            return Err(e);
        }
        let run = RunPlan {
            run_id: run_id.clone(),
            request: valid.original.clone(),
            package_name: valid.package_name.clone(),
            registry_bucket: valid.registry_bucket.clone(),
            target_bucket: valid.target_bucket.clone(),
            source_bucket: valid.source_bucket.clone(),
            source_prefix: valid.source_prefix.clone(),
            copy: valid.copy,
            hash_type: valid.hash_type,
            target_versioning,
            overwrite_existing: valid.overwrite_existing,
            shards: shards.len() as u32,
            objects,
            bytes,
            started_at,
            probes: probes.clone(),
            execution: options.execution.clone(),
            base: base_hash.as_ref().map(|top_hash| BaseRecord {
                top_hash: top_hash.clone(),
                reused_objects: reused.len() as u64,
                reused_bytes: reused.iter().map(|e| e.size).sum(),
                reused_documents: reused_documents as u32,
            }),
            workflow: workflow.clone(),
        };
        staged.push(
            staging
                .put(&staging.plan_key(), &run)
                .await
                .map_err(target_error(&valid.registry_bucket))?,
        );
        Ok(run)
    }
    .await;
    let run = match written {
        Ok(run) => run,
        Err(e) => {
            for leftover in staging.remove_all().await {
                tracing::warn!(
                    run_id,
                    leftover,
                    "could not remove staging after a failed plan"
                );
            }
            for probe in &probes {
                let _ = store
                    .delete(
                        &valid.target_bucket,
                        &probe.key,
                        probe.version_id.as_deref(),
                    )
                    .await;
            }
            return Err(e);
        }
    };
    summary.run_id = Some(run_id);
    Ok(Plan {
        summary,
        run: Some(run),
        shards,
        staged,
        reused,
    })
}

/// The base version of an incremental run: `None` for a full run, and for the first version
/// of a package whose base would be its `latest`.
async fn read_base(
    registry: &Registry,
    valid: &ValidRequest,
) -> Result<Option<(String, Manifest)>, PlanError> {
    let base_error = |source| PlanError::Base {
        package: valid.package_name.to_string(),
        registry: valid.registry_bucket.clone(),
        source,
    };
    let top_hash = match &valid.base {
        None => return Ok(None),
        Some(BaseChoice::TopHash(hash)) => hash.clone(),
        Some(BaseChoice::Latest) => match registry.latest(&valid.package_name).await {
            Ok(hash) => hash,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(base_error(e)),
        },
    };
    let manifest = registry.manifest(&top_hash).await.map_err(base_error)?;
    Ok(Some((top_hash, manifest)))
}

/// The top hash of a version made of `reused` alone under this request's header.
fn unchanged_top_hash(
    valid: &ValidRequest,
    workflow: Option<&crate::registry::workflow::WorkflowRecord>,
    reused: &[FragmentEntry],
) -> Option<String> {
    let entries = reused
        .iter()
        .map(FragmentEntry::to_manifest_entry)
        .collect::<Option<Vec<_>>>()?;
    let header = valid.header().with_workflow(workflow.map(|w| w.to_json()));
    Manifest::new(header, entries).ok().map(|m| m.top_hash())
}

/// With `verify_base`: one HEAD per reused entry's object (its version, when pinned); those
/// gone are copied again from the source instead.
async fn verify_reused(
    store: &dyn ObjectStore,
    split: &mut Split,
    options: &PlanOptions,
    retry: &RetryPolicy,
) -> Result<(), PlanError> {
    let gone: Vec<usize> = futures::stream::iter(split.reused.iter().enumerate().map(
        |(index, (_, entry))| async move {
            let Ok(physical) = entry
                .physical_key
                .parse::<crate::quilt::physical_key::PhysicalKey>()
            else {
                return Ok(Some(index));
            };
            match retry
                .run(|_| {
                    store.head(
                        &physical.bucket,
                        &physical.key,
                        physical.version_id.as_deref(),
                    )
                })
                .await
            {
                Ok(_) => Ok(None),
                Err(e) if e.kind == StoreErrorKind::NotFound => Ok(Some(index)),
                Err(e) => Err(PlanError::Store(e)),
            }
        },
    ))
    .buffer_unordered(options.list_concurrency.max(1) * 4)
    .try_filter_map(|gone| async move { Ok(gone) })
    .try_collect()
    .await?;
    split.summary.verified = Some(split.reused.len() as u64);
    split.copy_again(&gone, options.max_reported);
    Ok(())
}

/// The target bucket's versioning. Unversioned (the stricter case: existing keys are refused)
/// when referencing in place or when the answer is denied; on a server whose answer cannot be
/// read, versions under the package's own prefix tell (none there means no key can be
/// overwritten either way).
async fn target_versioning(
    store: &dyn ObjectStore,
    valid: &ValidRequest,
    package_prefix: &str,
    retry: &RetryPolicy,
) -> Result<Versioning, PlanError> {
    if !valid.copy {
        return Ok(Versioning::Off);
    }
    match retry.run(|_| store.versioning(&valid.target_bucket)).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Ok(retry
            .run(|_| store.list_versions(&valid.target_bucket, package_prefix))
            .await
            .map(|versions| versions.iter().any(|v| v.version_id.is_some()))
            .map(|versioned| {
                if versioned {
                    Versioning::Enabled
                } else {
                    Versioning::Off
                }
            })
            .unwrap_or(Versioning::Off)),
        Err(e) if e.kind == StoreErrorKind::AccessDenied => Ok(Versioning::Off),
        Err(e) if e.kind == StoreErrorKind::NotFound => Err(PlanError::TargetAccess {
            bucket: valid.target_bucket.clone(),
            source: e,
        }),
        Err(e) => Err(e.into()),
    }
}
