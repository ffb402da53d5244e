//! Step 3, finalize: check that every shard has its fragment, merge the fragments in walk
//! order into the manifest, **commit** (the run's outcome, see [`crate::transaction`]), then
//! publish: the manifest, the timestamped pointer, `latest`, and remove staging. Nothing under
//! `.quilt/` is written before the commit; nothing after it is ever rolled back: a publish
//! that fails is retried, and else left for `s3quilt runs resume`.

use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::quilt::PackageHeader;
use crate::quilt::manifest::{
    EncodedManifest, ManifestEncoder, ManifestEntry, ManifestError, walk_order,
};
use crate::registry::{MANIFEST_PART_BYTES, ManifestWrite, Registry, RegistryError};
use crate::staging::{FragmentEntry, ManifestFragment, RunPlan, Staging, StagingError};
use crate::storage::{ObjectStore, StoreErrorKind, unix_now};
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
    /// The registry failed (its manifest or pointers).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The second reading of the entries (to write the manifest) differs from the first (the
    /// one the commit is for): staging changed under a committed run.
    #[error(
        "the entries of run {run_id} read back differently while its manifest was written: staging changed after the commit"
    )]
    EntriesChanged {
        /// Run id.
        run_id: String,
    },
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
        source: Box<FinalizeError>,
    },
}

impl FinalizeError {
    /// Whether running finalize again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FinalizeError::Staging(StagingError::Store(e))
            | FinalizeError::Registry(RegistryError::Store(e))
            | FinalizeError::Transaction(TransactionError::Staging(StagingError::Store(e))) => {
                e.kind.is_retryable()
            }
            FinalizeError::Unpublished { source, .. } => source.is_transient(),
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
/// retried Lambda, a re-run) gives the same package. Memory does not grow with the run: the
/// fragments are read a few at a time, twice (once for the top hash, once into the manifest).
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
    let source = EntrySource::Staged {
        staging: &staging,
        plan: &plan,
    };
    publish_entries(store.clone(), &plan, &source, true).await
}

/// Merges the fragments of every shard of `plan` (any order) into the manifest, commits the
/// run and publishes the version (manifest, timestamped pointer, `latest`), then records the
/// result and removes staging. The local engine calls this with the fragments it kept in
/// memory; [`finalize`] reads them from staging. An error before the commit leaves the
/// registry untouched (the caller rolls back); after it, [`FinalizeError::Unpublished`].
pub async fn finalize_fragments(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    mut fragments: Vec<ManifestFragment>,
    reused: Vec<FragmentEntry>,
) -> Result<PackageResult, FinalizeError> {
    fragments.sort_by_key(|f| f.shard);
    require_every_shard(plan, &fragments.iter().map(|f| f.shard).collect())?;
    let reused = [ManifestFragment {
        shard: 0,
        entries: reused,
        created: Vec::new(),
        attempt: String::new(),
    }];
    let source = EntrySource::Held {
        fragments: &fragments,
        reused: &reused,
    };
    publish_entries(store, plan, &source, false).await
}

/// Fragments read ahead of the one being merged (each at most a shard's entries).
const FRAGMENTS_AHEAD: usize = 4;

/// Where a run's entries are: each fragment holds a slice of the walk order (shards are cut
/// from the walk-ordered selection, so shard `n`'s keys all come before shard `n + 1`'s), and
/// the entries reused from the base are another walk-ordered list. Merging the two streams
/// gives the manifest's order with one fragment of each in memory.
enum EntrySource<'a> {
    /// Staged fragments and reused documents (the finalizer Lambda, a resumed run).
    Staged {
        staging: &'a Staging,
        plan: &'a RunPlan,
    },
    /// What the local engine holds, fragments sorted by shard.
    Held {
        fragments: &'a [ManifestFragment],
        reused: &'a [ManifestFragment],
    },
}

type EntryChunks<'a> = BoxStream<'a, Result<Vec<ManifestEntry>, FinalizeError>>;

impl EntrySource<'_> {
    /// Every entry, in walk order (an entry out of order is left for the
    /// [`ManifestEncoder`] to refuse).
    fn entries(&self) -> BoxStream<'_, Result<ManifestEntry, FinalizeError>> {
        let (copied, reused): (EntryChunks, EntryChunks) = match *self {
            EntrySource::Staged { staging, plan } => {
                let documents = plan.base.as_ref().map_or(0, |b| b.reused_documents);
                let read = move |key: String| async move {
                    sorted_entries(&staging.require::<ManifestFragment>(&key).await?)
                };
                (
                    stream::iter(0..plan.shards)
                        .map(move |s| read(staging.fragment_key(s)))
                        .buffered(FRAGMENTS_AHEAD)
                        .boxed(),
                    stream::iter(0..documents)
                        .map(move |d| read(staging.reused_key(d)))
                        .buffered(FRAGMENTS_AHEAD)
                        .boxed(),
                )
            }
            EntrySource::Held { fragments, reused } => (
                stream::iter(fragments.iter().map(sorted_entries)).boxed(),
                stream::iter(reused.iter().map(sorted_entries)).boxed(),
            ),
        };
        merge_in_walk_order(copied, reused)
    }
}

/// A fragment's entries in walk order (a copier records them as its copies finish).
fn sorted_entries(fragment: &ManifestFragment) -> Result<Vec<ManifestEntry>, FinalizeError> {
    let mut entries = fragment_entries(fragment)?;
    entries.sort_by(|a, b| walk_order(&a.logical_key, &b.logical_key));
    Ok(entries)
}

/// One side of [`merge_in_walk_order`]: its stream of chunks and what is left of the current one.
struct MergeSide<'a> {
    chunks: EntryChunks<'a>,
    head: VecDeque<ManifestEntry>,
    done: bool,
}

impl MergeSide<'_> {
    async fn fill(&mut self) -> Result<(), FinalizeError> {
        while self.head.is_empty() && !self.done {
            match self.chunks.try_next().await? {
                Some(chunk) => self.head = chunk.into(),
                None => self.done = true,
            }
        }
        Ok(())
    }
}

/// Merges two streams of walk-ordered chunks into one walk-ordered stream; on equal keys the
/// first stream's entry comes first (and the encoder refuses the pair).
fn merge_in_walk_order<'a>(
    first: EntryChunks<'a>,
    second: EntryChunks<'a>,
) -> BoxStream<'a, Result<ManifestEntry, FinalizeError>> {
    let side = |chunks| MergeSide {
        chunks,
        head: VecDeque::new(),
        done: false,
    };
    stream::try_unfold((side(first), side(second)), |(mut a, mut b)| async move {
        a.fill().await?;
        b.fill().await?;
        let take_first = match (a.head.front(), b.head.front()) {
            (None, None) => return Ok(None),
            (Some(x), Some(y)) => walk_order(&x.logical_key, &y.logical_key) != Ordering::Greater,
            (first, _) => first.is_some(),
        };
        let next = if take_first {
            a.head.pop_front()
        } else {
            b.head.pop_front()
        };
        Ok(next.map(|entry| (entry, (a, b))))
    })
    .boxed()
}

/// The manifest's header for `plan`: its message and metadata, and the workflow it passed.
fn plan_header(plan: &RunPlan) -> Result<PackageHeader, FinalizeError> {
    let valid = plan
        .request
        .validate()
        .map_err(|e| FinalizeError::Fragment {
            shard: 0,
            reason: e.to_string(),
        })?;
    Ok(valid
        .header()
        .with_workflow(plan.workflow.as_ref().map(|w| w.to_json())))
}

/// The first reading of the entries: top hash, totals and, while the manifest fits in one
/// part, its text (so a small manifest is read once).
struct FirstReading {
    encoded: EncodedManifest,
    text: Option<String>,
}

async fn read_entries(
    plan: &RunPlan,
    header: &PackageHeader,
    source: &EntrySource<'_>,
) -> Result<FirstReading, FinalizeError> {
    let (mut encoder, header_line) = ManifestEncoder::new(header)?;
    let mut text = Some(header_line);
    let mut entries = source.entries();
    while let Some(entry) = entries.try_next().await? {
        let line = encoder.push(&entry)?;
        if let Some(kept) = &mut text {
            if kept.len() + line.len() <= MANIFEST_PART_BYTES {
                kept.push_str(&line);
            } else {
                text = None;
            }
        }
    }
    let encoded = encoder.finish();
    if encoded.entries != plan.objects {
        return Err(FinalizeError::CountMismatch {
            run_id: plan.run_id.clone(),
            found: encoded.entries,
            planned: plan.objects,
        });
    }
    Ok(FirstReading { encoded, text })
}

/// Reads the entries (the top hash), commits the run, publishes the version, keeping a result
/// record (`.s3quilt/results/<run id>.json`) when `keep_result`: a finalizer Lambda that runs
/// again after it published answers from it. The local engine keeps none (resuming it repeats
/// the idempotent publish instead).
async fn publish_entries(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    source: &EntrySource<'_>,
    keep_result: bool,
) -> Result<PackageResult, FinalizeError> {
    let header = plan_header(plan)?;
    let first = read_entries(plan, &header, source).await?;
    let top_hash = first.encoded.top_hash.clone();
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    // The commit point. A run committed before (a resumed or retried finalize) keeps the
    // timestamp it committed with.
    let timestamp = transaction::commit(&staging, &top_hash, unix_now()).await?;
    let registry = Registry::new(store.clone(), &plan.registry_bucket);
    let (stamp, manifest_write) = publish(&registry, plan, &header, source, &first, timestamp)
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
        bytes: first.encoded.entry_bytes,
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
    let unpublished = |source: RegistryError| FinalizeError::Unpublished {
        run_id: plan.run_id.clone(),
        top_hash: top_hash.to_string(),
        source: Box::new(source.into()),
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

/// Publishes a committed version: the manifest ([`write_manifest`]), the timestamped pointer
/// (a free second from `timestamp` on), and `latest` unless a newer version of the package was
/// published meanwhile. Every write is idempotent, so a resumed run repeats this safely.
/// Returns the pointer's timestamp and what the manifest write found.
async fn publish(
    registry: &Registry,
    plan: &RunPlan,
    header: &PackageHeader,
    source: &EntrySource<'_>,
    first: &FirstReading,
    timestamp: u64,
) -> Result<(u64, ManifestWrite), FinalizeError> {
    let top_hash = first.encoded.top_hash.as_str();
    let manifest_write = write_manifest(registry, plan, header, source, first).await?;
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

/// Writes a version's manifest by quilt3's rule, the last writer's manifest stands: a manifest
/// already under its top hash (the same content, so the same top hash) is left when its bytes
/// are the same (an identical package, or this run's own earlier write) and replaced when they
/// differ (entries elsewhere: another package's copies, or objects referenced in place), so
/// the new version points where it was asked to. Versions published earlier under the same
/// top hash then read the new physical keys: objects with the same bytes and hashes. See
/// `docs/architecture.md`. The write is conditional (`If-None-Match`), so the usual case
/// costs no read; only a manifest found there is read, as a stream, and compared by SHA-256.
async fn write_manifest(
    registry: &Registry,
    plan: &RunPlan,
    header: &PackageHeader,
    source: &EntrySource<'_>,
    first: &FirstReading,
) -> Result<ManifestWrite, FinalizeError> {
    let ours = Some(first.encoded.content_sha256);
    let top_hash = &first.encoded.top_hash;
    match write_manifest_once(registry, plan, header, source, first, true).await {
        Ok(()) => Ok(ManifestWrite::Written),
        Err(error) if is_precondition_failed(&error) => {
            if registry.manifest_sha256(top_hash).await? == ours {
                Ok(ManifestWrite::Unchanged)
            } else {
                write_manifest_once(registry, plan, header, source, first, false).await?;
                Ok(ManifestWrite::Replaced)
            }
        }
        // A write that landed though its answer was lost is this run's.
        Err(error) => match registry.manifest_sha256(top_hash).await {
            Ok(there) if there == ours => Ok(ManifestWrite::Written),
            _ => Err(error),
        },
    }
}

fn is_precondition_failed(error: &FinalizeError) -> bool {
    matches!(error, FinalizeError::Registry(RegistryError::Store(e)) if e.kind == StoreErrorKind::PreconditionFailed)
}

/// One write of the manifest: the text kept by the first reading, or the entries read again
/// (and checked to be the ones committed) into parts.
async fn write_manifest_once(
    registry: &Registry,
    plan: &RunPlan,
    header: &PackageHeader,
    source: &EntrySource<'_>,
    first: &FirstReading,
    if_none_match: bool,
) -> Result<(), FinalizeError> {
    let encoded = &first.encoded;
    let mut writer =
        registry.manifest_writer(&encoded.top_hash, encoded.manifest_bytes, if_none_match);
    if let Some(text) = &first.text {
        writer.write(text).await?;
    } else {
        let streamed: Result<(), FinalizeError> = async {
            let (mut encoder, header_line) = ManifestEncoder::new(header)?;
            writer.write(&header_line).await?;
            let mut entries = source.entries();
            while let Some(entry) = entries.try_next().await? {
                writer.write(&encoder.push(&entry)?).await?;
            }
            if encoder.finish() != *encoded {
                return Err(FinalizeError::EntriesChanged {
                    run_id: plan.run_id.clone(),
                });
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            writer.abort().await;
            return Err(e);
        }
    }
    writer.finish().await?;
    Ok(())
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
