//! Step 3, finalize: check that every shard has its fragment, merge the fragments in walk
//! order, write the manifest and then the pointers (last: the version appears whole or not at
//! all), and remove staging. Step 4, rollback: delete exactly what the run created.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::quilt::checksum::QuiltHash;
use crate::quilt::manifest::{Manifest, ManifestEntry, ManifestError, PackageHeader};
use crate::registry::{Registry, RegistryError, WrittenObject};
use crate::retry::RetryPolicy;
use crate::staging::{FailureRecord, ManifestFragment, RunPlan, Staging, StagingError, parse_meta};
use crate::storage::{ObjectStore, StoreErrorKind, unix_now};

/// The package a run made.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PackageResult {
    /// Run id.
    pub run_id: String,
    /// `namespace/name`.
    pub package_name: String,
    /// Top hash of the new version.
    pub top_hash: String,
    /// `s3://registry`.
    pub registry: String,
    /// Pointer timestamp of the new version.
    pub timestamp: u64,
    /// Entries.
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// How to open it with quilt3.
    pub browse: String,
}

/// Why finalizing failed.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// Staging could not be read.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// Some shards have no fragment (their copier failed or never ran).
    #[error(
        "shards {missing:?} of run {run_id} have no manifest fragment: their copies did not finish, so no package is written"
    )]
    MissingFragments {
        /// Run id.
        run_id: String,
        /// Shards without a fragment.
        missing: Vec<u32>,
    },
    /// The fragments do not add up to the plan.
    #[error("fragments of run {run_id} hold {found} entries; the plan has {planned}")]
    CountMismatch {
        /// Run id.
        run_id: String,
        /// Entries found.
        found: u64,
        /// Entries planned.
        planned: u64,
    },
    /// The merged manifest is invalid.
    #[error("the manifest cannot be written: {0}")]
    Manifest(#[from] ManifestError),
    /// A fragment entry is malformed.
    #[error("fragment of shard {shard}: {reason}")]
    Fragment {
        /// Shard.
        shard: u32,
        /// What is wrong.
        reason: String,
    },
    /// Writing to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl FinalizeError {
    /// Whether running finalize again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FinalizeError::Staging(StagingError::Store(e))
            | FinalizeError::Registry(RegistryError::Store(e)) => e.kind.is_retryable(),
            _ => false,
        }
    }
}

/// The quilt3 call that opens a package version.
pub fn browse_command(name: &str, registry: &str, top_hash: &str) -> String {
    format!(
        "python -c \"import quilt3; quilt3.Package.browse('{name}', registry='{registry}', top_hash='{top_hash}')\""
    )
}

fn fragment_entries(fragment: &ManifestFragment) -> Result<Vec<ManifestEntry>, FinalizeError> {
    fragment
        .entries
        .iter()
        .map(|e| {
            let meta = parse_meta(&e.meta).ok_or_else(|| FinalizeError::Fragment {
                shard: fragment.shard,
                reason: format!(
                    "entry {:?} has meta that is not a JSON object",
                    e.logical_key.as_str()
                ),
            })?;
            let hash = QuiltHash {
                kind: e.hash_type,
                value: e.hash_value.clone(),
            };
            Ok(ManifestEntry::new(
                e.logical_key.clone(),
                e.physical_key.clone(),
                e.size,
                &hash,
                meta,
            ))
        })
        .collect()
}

/// Finalizes run `run_id` from its staging area (what the finalizer Lambda does): see the
/// module docs. Registry writes made before a failure are undone here, so a failed finalize
/// leaves no partial version.
pub async fn finalize(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
) -> Result<PackageResult, FinalizeError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    // Finalizing twice (a retried Lambda, a re-run) gives the same package.
    if let Some(done) = staging.get::<PackageResult>(&staging.result_key()).await? {
        return Ok(done);
    }
    let plan = staging.plan().await?;
    let present: HashSet<u32> = staging
        .fragments_present()
        .await
        .map_err(StagingError::from)?
        .into_iter()
        .collect();
    // Checked from the listing before anything is read.
    require_every_shard(&plan, &present)?;
    let fragments: Vec<ManifestFragment> = futures::stream::iter((0..plan.shards).map(|s| {
        let staging = &staging;
        async move {
            staging
                .require::<ManifestFragment>(&staging.fragment_key(s))
                .await
        }
    }))
    .buffered(16)
    .try_collect()
    .await?;
    let result = finalize_fragments(store.clone(), &plan, fragments).await?;
    // The version is visible now. The result record makes a re-run answer the same; if it
    // cannot be written the package still stands, so that is only logged.
    if let Err(e) = staging.put(&staging.result_key(), &result).await {
        tracing::warn!(run_id, error = %e, "could not record the run's result");
    }
    // Leftovers of staging are only litter, reported not fatal.
    let (leftovers, ()) = tokio::join!(staging.remove_all(), remove_probes(store.as_ref(), &plan));
    for leftover in leftovers {
        tracing::warn!(run_id, leftover, "could not remove staging object");
    }
    Ok(result)
}

/// Merges the fragments of every shard of `plan` (any order) into the manifest and writes the
/// version: manifest, then pointers. Registry writes made before a failure are undone. The
/// local engine calls this with the fragments it kept in memory; [`finalize`] with those it
/// read from staging.
pub async fn finalize_fragments(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    mut fragments: Vec<ManifestFragment>,
) -> Result<PackageResult, FinalizeError> {
    let run_id = plan.run_id.as_str();
    fragments.sort_by_key(|f| f.shard);
    require_every_shard(plan, &fragments.iter().map(|f| f.shard).collect())?;
    let mut entries = Vec::with_capacity(plan.objects as usize);
    // Each fragment is freed as soon as its entries are built: the fragments and the manifest
    // are never both whole in memory.
    for fragment in fragments {
        entries.extend(fragment_entries(&fragment)?);
    }
    if entries.len() as u64 != plan.objects {
        return Err(FinalizeError::CountMismatch {
            run_id: run_id.to_string(),
            found: entries.len() as u64,
            planned: plan.objects,
        });
    }
    let bytes = entries.iter().map(|e| e.size).sum();
    let valid = plan
        .request
        .validate()
        .map_err(|e| FinalizeError::Fragment {
            shard: 0,
            reason: e.to_string(),
        })?;
    let header = PackageHeader::new(valid.message.as_deref(), valid.user_meta);
    // Sorting into walk order is n log n; the manifest is the only thing held in memory.
    let manifest = Manifest::new(header, entries)?;
    let registry = Registry::new(store.clone(), &plan.registry_bucket);
    let timestamp = unix_now();
    let written = write_version(&registry, plan, &manifest, timestamp).await?;
    Ok(PackageResult {
        run_id: run_id.to_string(),
        package_name: plan.package_name.to_string(),
        top_hash: written.clone(),
        registry: registry.url(),
        timestamp,
        objects: plan.objects,
        bytes,
        browse: browse_command(plan.package_name.as_str(), &registry.url(), &written),
    })
}

/// Refuses to finalize unless every shard of `plan` has a fragment in `present`.
fn require_every_shard(plan: &RunPlan, present: &HashSet<u32>) -> Result<(), FinalizeError> {
    let missing: Vec<u32> = (0..plan.shards).filter(|s| !present.contains(s)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(FinalizeError::MissingFragments {
            run_id: plan.run_id.clone(),
            missing,
        })
    }
}

/// Removes the staging documents and probes a run wrote whose keys and versions are known (the
/// local engine's case: no listing needed). Returns what could not be removed.
pub async fn remove_staged(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    staged: &[WrittenObject],
) -> Vec<String> {
    let retry = RetryPolicy::default();
    let targets = staged
        .iter()
        .map(|o| (plan.registry_bucket.as_str(), o))
        .chain(plan.probes.iter().map(|o| (plan.target_bucket.as_str(), o)));
    futures::stream::iter(targets.map(|(bucket, object)| {
        let retry = &retry;
        async move {
            retry
                .run(|_| store.delete(bucket, &object.key, object.version_id.as_deref()))
                .await
                .err()
                .filter(|e| e.kind != StoreErrorKind::NotFound)
                .map(|e| format!("s3://{bucket}/{} ({e})", object.key))
        }
    }))
    .buffer_unordered(32)
    .filter_map(|failed| async move { failed })
    .collect()
    .await
}

async fn write_version(
    registry: &Registry,
    plan: &RunPlan,
    manifest: &Manifest,
    timestamp: u64,
) -> Result<String, FinalizeError> {
    let retry = RetryPolicy::default();
    let top_hash = manifest.top_hash();
    let store = registry.store();
    let mut created: Vec<WrittenObject> = Vec::new();
    let result: Result<(), FinalizeError> = async {
        // A manifest with this top hash may already exist (the same content pushed before):
        // then it is not ours to remove on failure. The conditional write tells, with no HEAD
        // in series before it. (If a first attempt landed but its answer was lost, the retry
        // sees "exists" and the manifest is left on failure: unreferenced, never a version.)
        let (_, object) =
            retry_registry(&retry, || registry.put_manifest_if_absent(manifest)).await?;
        created.extend(object);
        let pointers = retry_registry(&retry, || {
            registry.put_pointers(&plan.package_name, &top_hash, timestamp)
        })
        .await?;
        created.extend(pointers);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        for object in &created {
            if let Err(undo) = store
                .delete(registry.bucket(), &object.key, object.version_id.as_deref())
                .await
            {
                tracing::warn!(key = %object.key, error = %undo, "could not undo a registry write");
            }
        }
        return Err(e);
    }
    Ok(top_hash)
}

async fn retry_registry<T, F, Fut>(retry: &RetryPolicy, op: F) -> Result<T, RegistryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(RegistryError::Store(e))
                if e.kind.is_retryable() && attempt < retry.max_attempts =>
            {
                tokio::time::sleep(retry.delay(attempt, e.kind == StoreErrorKind::Throttled)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn remove_probes(store: &dyn ObjectStore, plan: &RunPlan) {
    for probe in &plan.probes {
        if let Err(e) = store
            .delete(&plan.target_bucket, &probe.key, probe.version_id.as_deref())
            .await
        {
            tracing::warn!(key = %probe.key, error = %e, "could not remove write probe");
        }
    }
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollbackReport {
    /// Objects (versions) deleted from the target.
    pub deleted: usize,
    /// What could not be deleted, with why: these need a person's attention.
    pub not_deleted: Vec<String>,
}

/// Rolls back run `run_id`: deletes exactly the object versions it created (from its
/// fragments, failure records and `also_created`), its probes and its staging area. Never
/// touches objects that existed before. Writes no pointer.
pub async fn rollback(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
    also_created: &[WrittenObject],
) -> RollbackReport {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    let mut report = RollbackReport::default();
    let plan = match staging.plan().await {
        Ok(plan) => Some(plan),
        Err(StagingError::Missing { .. }) => None,
        Err(e) => {
            report.not_deleted.push(format!(
                "run {run_id}: cannot read its plan ({e}); nothing was deleted"
            ));
            return report;
        }
    };
    if let Some(plan) = &plan {
        let mut created: Vec<WrittenObject> = also_created.to_vec();
        // Each shard's fragment and failure record name what it created; read them at once.
        let records: Vec<_> = futures::stream::iter((0..plan.shards).map(|shard| {
            let staging = &staging;
            async move {
                let fragment = staging
                    .get::<ManifestFragment>(&staging.fragment_key(shard))
                    .await;
                let failure = staging
                    .get::<FailureRecord>(&staging.failure_key(shard))
                    .await;
                (shard, fragment, failure)
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
        for (shard, fragment, failure) in records {
            match fragment {
                Ok(Some(fragment)) => created.extend(fragment.created),
                Ok(None) => {}
                Err(e) => report
                    .not_deleted
                    .push(format!("fragment of shard {shard} unreadable: {e}")),
            }
            match failure {
                Ok(Some(record)) => created.extend(record.created),
                Ok(None) => {}
                Err(e) => report
                    .not_deleted
                    .push(format!("failure record of shard {shard} unreadable: {e}")),
            }
        }
        delete_created(store.as_ref(), plan, created, &mut report).await;
        remove_probes(store.as_ref(), plan).await;
    }
    for leftover in staging.remove_all().await {
        report.not_deleted.push(format!("staging {leftover}"));
    }
    report
}

/// Rolls back a run whose created objects and staging documents are known in memory (the
/// local engine): deletes exactly those versions, its probes and its staging documents, with no
/// listing and no staging reads. Never touches objects that existed before.
pub async fn rollback_known(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    created: Vec<WrittenObject>,
    staged: &[WrittenObject],
) -> RollbackReport {
    let mut report = RollbackReport::default();
    delete_created(store, plan, created, &mut report).await;
    for leftover in remove_staged(store, plan, staged).await {
        report.not_deleted.push(format!("staging {leftover}"));
    }
    report
}

/// Deletes the object versions a run created in its target, counting them in `report`.
async fn delete_created(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    mut created: Vec<WrittenObject>,
    report: &mut RollbackReport,
) {
    let retry = RetryPolicy::default();
    created.sort_by(|a, b| (&a.key, &a.version_id).cmp(&(&b.key, &b.version_id)));
    created.dedup();
    let bucket = plan.target_bucket.as_str();
    let results: Vec<(WrittenObject, Result<(), crate::storage::StoreError>)> =
        futures::stream::iter(created.into_iter().map(|object| {
            let retry = &retry;
            async move {
                let result = retry
                    .run(|_| store.delete(bucket, &object.key, object.version_id.as_deref()))
                    .await;
                (object, result)
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    for (object, result) in results {
        match result {
            Ok(()) => report.deleted += 1,
            Err(e) if e.kind == StoreErrorKind::NotFound => report.deleted += 1,
            Err(e) => report.not_deleted.push(format!(
                "s3://{bucket}/{}{} ({e})",
                object.key,
                object
                    .version_id
                    .map(|v| format!("?versionId={v}"))
                    .unwrap_or_default()
            )),
        }
    }
}
