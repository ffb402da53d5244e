//! Step 3, finalize: check that every shard has its fragment, merge the fragments in walk
//! order into the manifest, **commit** (the run's outcome, see [`crate::transaction`]), then
//! publish: the manifest, the timestamped pointer, `latest`, and remove staging. Nothing under
//! `.quilt/` is written before the commit; nothing after it is ever rolled back: a publish
//! that fails is retried, and else left for `s3quilt runs resume`.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::quilt::manifest::{Manifest, ManifestEntry, ManifestError};
use crate::registry::{ManifestWrite, Registry, RegistryError};
use crate::staging::{FragmentEntry, ManifestFragment, RunPlan, Staging, StagingError};
use crate::storage::{ObjectStore, unix_now};
use crate::transaction::{self, Outcome, TransactionError};

pub use crate::transaction::RollbackReport;
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
    /// An earlier version had the same top hash (the same content and metadata) with its
    /// entries elsewhere (in place, or another package's copies): its manifest was replaced by
    /// this one, so this version points at the objects this run asked for (quilt3's rule: the
    /// last writer's manifest stands). Versions naming that top hash now read these entries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manifest_replaced: bool,
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
    /// The commit was refused (the run was aborted) or is not this manifest's.
    #[error(transparent)]
    Transaction(#[from] TransactionError),
    /// Resume of a run that never reached its commit point.
    #[error(
        "run {run_id} is not committed: nothing of it may be published; `s3quilt runs abort {run_id}` rolls it back"
    )]
    NotCommitted {
        /// Run id.
        run_id: String,
    },
    /// The run is committed but its manifest or pointers could not be written (after
    /// retries). It is never rolled back: resuming it writes what is missing.
    #[error(
        "run {run_id} is committed (top hash {top_hash}) but publishing it failed: {source}; `s3quilt runs resume {run_id}` finishes it"
    )]
    Unpublished {
        /// Run id.
        run_id: String,
        /// The committed top hash.
        top_hash: String,
        /// The failure.
        source: Box<RegistryError>,
    },
}

impl FinalizeError {
    /// Whether running finalize again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FinalizeError::Staging(StagingError::Store(e))
            | FinalizeError::Transaction(TransactionError::Staging(StagingError::Store(e))) => {
                e.kind.is_retryable()
            }
            FinalizeError::Unpublished { source, .. } => {
                matches!(source.as_ref(), RegistryError::Store(e) if e.kind.is_retryable())
            }
            _ => false,
        }
    }

    /// Whether the run passed its commit point: it must be finished, never rolled back.
    pub fn is_committed(&self) -> bool {
        matches!(
            self,
            FinalizeError::Unpublished { .. }
                | FinalizeError::Transaction(TransactionError::Committed { .. })
        )
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
            e.to_manifest_entry()
                .ok_or_else(|| FinalizeError::Fragment {
                    shard: fragment.shard,
                    reason: format!(
                        "entry {:?} has meta that is not a JSON object",
                        e.logical_key.as_str()
                    ),
                })
        })
        .collect()
}

/// Finalizes run `run_id` from its staging area (what the finalizer Lambda does, and what
/// `s3quilt runs resume` does for a committed run): see the module docs. Finalizing twice (a
/// retried Lambda, a re-run) gives the same package.
pub async fn finalize(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
) -> Result<PackageResult, FinalizeError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    if let Some(done) = staging.get::<PackageResult>(&staging.result_key()).await? {
        // Published; staging may be left if the process that published it died.
        for leftover in staging.remove_all().await {
            tracing::warn!(run_id, leftover, "could not remove staging object");
        }
        return Ok(done);
    }
    let plan = staging.plan().await?;
    let present: HashSet<u32> = staging
        .fragments_present()
        .await
        .map_err(StagingError::from)?
        .into_iter()
        .collect();
    if let Some(Outcome::Committed { top_hash, .. }) =
        staging.get::<Outcome>(&staging.outcome_key()).await?
        && (0..plan.shards).any(|s| !present.contains(&s))
    {
        // Committed, and its fragments partly removed: only a run that published and then
        // could not finish removing its staging gets here. Its version is what stands.
        return finish_published(store, &plan, &top_hash).await;
    }
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
    let reused = read_reused(&staging, &plan).await?;
    publish_fragments(store, &plan, fragments, reused, true).await
}

/// The staged documents of entries an incremental run reuses from its base.
async fn read_reused(
    staging: &Staging,
    plan: &RunPlan,
) -> Result<Vec<ManifestFragment>, FinalizeError> {
    let documents = plan.base.as_ref().map_or(0, |b| b.reused_documents);
    Ok(futures::stream::iter((0..documents).map(|d| async move {
        staging
            .require::<ManifestFragment>(&staging.reused_key(d))
            .await
    }))
    .buffered(16)
    .try_collect()
    .await?)
}

/// Merges the fragments of every shard of `plan` (any order) into the manifest, commits the
/// run and publishes the version (manifest, timestamped pointer, `latest`), then records the
/// result and removes staging. The local engine calls this with the fragments it kept in
/// memory; [`finalize`] with those it read from staging. An error before the commit leaves
/// the registry untouched (the caller rolls back); after it, [`FinalizeError::Unpublished`].
pub async fn finalize_fragments(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    fragments: Vec<ManifestFragment>,
    reused: Vec<FragmentEntry>,
) -> Result<PackageResult, FinalizeError> {
    let reused = vec![ManifestFragment {
        shard: 0,
        entries: reused,
        created: Vec::new(),
        attempt: String::new(),
    }];
    publish_fragments(store, plan, fragments, reused, false).await
}

/// [`finalize_fragments`], keeping a result record (`.s3quilt/results/<run id>.json`) when
/// `keep_result`: a finalizer Lambda that runs again after it published answers from it. The
/// local engine keeps none (resuming it repeats the idempotent publish instead).
async fn publish_fragments(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    fragments: Vec<ManifestFragment>,
    reused: Vec<ManifestFragment>,
    keep_result: bool,
) -> Result<PackageResult, FinalizeError> {
    let (manifest, bytes) = build_manifest(plan, fragments, reused)?;
    let top_hash = manifest.top_hash();
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    // The commit point. A run committed before (a resumed or retried finalize) keeps the
    // timestamp it committed with.
    let timestamp = transaction::commit(&staging, &top_hash, unix_now()).await?;
    let registry = Registry::new(store.clone(), &plan.registry_bucket);
    let (stamp, manifest_write) = publish(&registry, plan, &manifest, &top_hash, timestamp)
        .await
        .map_err(|source| FinalizeError::Unpublished {
            run_id: plan.run_id.clone(),
            top_hash: top_hash.clone(),
            source: Box::new(source),
        })?;
    let result = PackageResult {
        run_id: plan.run_id.clone(),
        package_name: plan.package_name.to_string(),
        top_hash: top_hash.clone(),
        registry: registry.url(),
        timestamp: stamp,
        objects: plan.objects,
        bytes,
        browse: browse_command(plan.package_name.as_str(), &registry.url(), &top_hash),
        manifest_replaced: manifest_write == ManifestWrite::Replaced,
    };
    // The version is visible now. The result record makes a re-run answer the same; if it
    // cannot be written the package still stands, so that is only logged.
    if keep_result && let Err(e) = staging.put(&staging.result_key(), &result).await {
        tracing::warn!(run_id = %plan.run_id, error = %e, "could not record the run's result");
    }
    // Leftovers of staging are only litter, reported not fatal.
    let (leftovers, ()) = tokio::join!(staging.remove_all(), remove_probes(store.as_ref(), plan));
    for leftover in leftovers {
        tracing::warn!(run_id = %plan.run_id, leftover, "could not remove staging object");
    }
    Ok(result)
}

/// A committed run whose staging removal was cut short after it published: checks that the
/// version is there (its manifest and a pointer naming it), removes what staging is left.
async fn finish_published(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    top_hash: &str,
) -> Result<PackageResult, FinalizeError> {
    let registry = Registry::new(store.clone(), &plan.registry_bucket);
    let unpublished = |source| FinalizeError::Unpublished {
        run_id: plan.run_id.clone(),
        top_hash: top_hash.to_string(),
        source: Box::new(source),
    };
    let manifest = registry.manifest(top_hash).await.map_err(unpublished)?;
    let version = registry
        .versions(&plan.package_name)
        .await
        .map_err(unpublished)?
        .into_iter()
        .rfind(|v| v.top_hash == top_hash)
        .ok_or_else(|| {
            unpublished(RegistryError::NotFound {
                bucket: plan.registry_bucket.clone(),
                what: format!("a pointer of {} to {top_hash}", plan.package_name),
            })
        })?;
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    for leftover in staging.remove_all().await {
        tracing::warn!(run_id = %plan.run_id, leftover, "could not remove staging object");
    }
    remove_probes(store.as_ref(), plan).await;
    Ok(PackageResult {
        run_id: plan.run_id.clone(),
        package_name: plan.package_name.to_string(),
        top_hash: top_hash.to_string(),
        registry: registry.url(),
        timestamp: version.timestamp.parse().unwrap_or_default(),
        objects: manifest.entries.len() as u64,
        bytes: manifest.entries.iter().map(|e| e.size).sum(),
        browse: browse_command(plan.package_name.as_str(), &registry.url(), top_hash),
        manifest_replaced: false,
    })
}

/// The manifest of `plan` from its fragments and the entries reused from its base, and its bytes.
fn build_manifest(
    plan: &RunPlan,
    mut fragments: Vec<ManifestFragment>,
    reused: Vec<ManifestFragment>,
) -> Result<(Manifest, u64), FinalizeError> {
    let run_id = plan.run_id.as_str();
    fragments.sort_by_key(|f| f.shard);
    require_every_shard(plan, &fragments.iter().map(|f| f.shard).collect())?;
    let mut entries = Vec::with_capacity(plan.objects as usize);
    // Each fragment is freed as soon as its entries are built: the fragments and the manifest
    // are never both whole in memory.
    for fragment in fragments.into_iter().chain(reused) {
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
    let header = valid
        .header()
        .with_workflow(plan.workflow.as_ref().map(|w| w.to_json()));
    // Sorting into walk order is n log n; the manifest is the only thing held in memory.
    Ok((Manifest::new(header, entries)?, bytes))
}

/// Publishes a committed version: the manifest (replacing one of the same top hash whose
/// entries are elsewhere: [`Registry::put_manifest_last_writer`]), the timestamped pointer (a
/// free second from `timestamp` on), and `latest` unless a newer version of the package was
/// published meanwhile. Every write is idempotent, so a resumed run repeats this safely.
/// Returns the pointer's timestamp and what the manifest write found.
async fn publish(
    registry: &Registry,
    plan: &RunPlan,
    manifest: &Manifest,
    top_hash: &str,
    timestamp: u64,
) -> Result<(u64, ManifestWrite), RegistryError> {
    let (_, manifest_write) = registry.put_manifest_last_writer(manifest).await?;
    if manifest_write == ManifestWrite::Replaced {
        tracing::info!(run_id = %plan.run_id, top_hash, "an earlier version had this top hash with entries elsewhere: its manifest is replaced by this run's");
    }
    let stamp = registry
        .put_version_pointer(&plan.package_name, top_hash, timestamp)
        .await?;
    let newest = registry.newest_timestamp(&plan.package_name).await?;
    if newest.is_none_or(|newest| newest <= stamp) {
        registry.put_latest(&plan.package_name, top_hash).await?;
    } else {
        tracing::info!(run_id = %plan.run_id, stamp, ?newest, "a newer version was published meanwhile: `latest` left to it");
    }
    Ok((stamp, manifest_write))
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
