//! The local engine: plan → copy every shard (bounded tokio concurrency) → finalize, in one
//! process, rolling back on any failure, and reporting progress through shared counters that a
//! progress bar, an MCP status call or a test can read at any time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use futures::StreamExt;
use serde::Serialize;

use crate::copy::{CopyError, CopyOptions, copy_objects};
use crate::finalize::{
    FinalizeError, PackageResult, RollbackReport, finalize_fragments, remove_staged, rollback_known,
};
use crate::plan::{PlanError, PlanOptions, PlanSummary, plan};
use crate::registry::WrittenObject;
use crate::request::PackageRequest;
use crate::staging::ManifestFragment;
use crate::storage::ObjectStore;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Listing and selecting.
    Planning,
    /// Copying and hashing.
    Copying,
    /// Writing the manifest and pointers.
    Finalizing,
    /// Undoing a failed run.
    RollingBack,
    /// Finished with a package (or a dry-run plan).
    Succeeded,
    /// Failed (and rolled back).
    Failed,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Planning,
            1 => Phase::Copying,
            2 => Phase::Finalizing,
            3 => Phase::RollingBack,
            4 => Phase::Succeeded,
            _ => Phase::Failed,
        }
    }
}

/// Live progress counters of a run.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    objects_total: AtomicU64,
    bytes_total: AtomicU64,
    objects_done: AtomicU64,
    bytes_done: AtomicU64,
}

/// A point-in-time copy of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    /// Phase.
    pub phase: Phase,
    /// Objects to copy.
    pub objects_total: u64,
    /// Bytes to copy.
    pub bytes_total: u64,
    /// Objects done.
    pub objects_done: u64,
    /// Bytes done.
    pub bytes_done: u64,
}

impl Progress {
    /// Fresh counters (phase: planning).
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// The current values.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            objects_total: self.objects_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            objects_done: self.objects_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn object_done(&self, bytes: u64) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// S3 requests in flight at once across all shards (a copy and the HEAD beside it are two).
    pub concurrency: usize,
    /// Shards copied at once (they share `concurrency`).
    pub shard_concurrency: usize,
    /// Planning limits.
    pub plan: PlanOptions,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency: 64,
            shard_concurrency: 4,
            plan: PlanOptions::default(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// A dry run: what would be packaged.
    Planned(PlanSummary),
    /// A new package version.
    Created {
        /// The plan that was carried out.
        plan: PlanSummary,
        /// The package.
        package: PackageResult,
    },
}

/// Why a run failed; every variant after planning carries what rollback did.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Planning failed; nothing outside staging was written, and staging was removed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A shard failed; the run was rolled back.
    #[error("{error} (rolled back: {} objects removed{})", rollback.deleted, leftover_note(rollback))]
    Copy {
        /// The failure.
        error: CopyError,
        /// What rollback did.
        rollback: RollbackReport,
    },
    /// Finalizing failed; the run was rolled back.
    #[error("{error} (rolled back: {} objects removed{})", rollback.deleted, leftover_note(rollback))]
    Finalize {
        /// The failure.
        error: FinalizeError,
        /// What rollback did.
        rollback: RollbackReport,
    },
}

fn leftover_note(report: &RollbackReport) -> String {
    if report.not_deleted.is_empty() {
        String::new()
    } else {
        format!(
            "; NOT removed, clean up by hand: {}",
            report.not_deleted.join(", ")
        )
    }
}

/// Runs a request end to end in this process. Shards and fragments stay in memory: staging
/// holds only the plan document (the write proof and a trace of a run in progress), so the
/// only round trips outside the copies are the listing, the access checks, the manifest and
/// the pointers.
pub async fn run_local(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
    options: &EngineOptions,
    progress: Arc<Progress>,
) -> Result<RunOutcome, EngineError> {
    progress.set_phase(Phase::Planning);
    let plan_options = PlanOptions {
        stage_shards: false,
        ..options.plan.clone()
    };
    let planned = match plan(store.clone(), request, &plan_options).await {
        Ok(planned) => planned,
        Err(e) => {
            progress.set_phase(Phase::Failed);
            return Err(e.into());
        }
    };
    progress
        .objects_total
        .store(planned.summary.objects, Ordering::Relaxed);
    progress
        .bytes_total
        .store(planned.summary.bytes, Ordering::Relaxed);
    let (summary, staged, shards) = (planned.summary, planned.staged, planned.shards);
    let Some(run) = planned.run else {
        progress.set_phase(Phase::Succeeded);
        return Ok(RunOutcome::Planned(summary));
    };

    progress.set_phase(Phase::Copying);
    // One request limit for the whole run; each shard keeps up to `concurrency` objects in
    // progress so the limit, not the object count, is what binds.
    let copy_options = CopyOptions::new(options.concurrency);
    let on_object = {
        let progress = progress.clone();
        move |bytes: u64| progress.object_done(bytes)
    };
    let mut results = futures::stream::iter(shards.iter().map(|shard| {
        let (store, run, copy_options, on_object) =
            (store.as_ref(), &run, &copy_options, &on_object);
        async move { copy_objects(store, run, shard, copy_options, on_object).await }
    }))
    .buffer_unordered(options.shard_concurrency.max(1));
    let mut failure: Option<CopyError> = None;
    // What a failed run created: the failing shards' objects here, the others' in `fragments`.
    let mut created: Vec<WrittenObject> = Vec::new();
    let mut fragments: Vec<ManifestFragment> = Vec::with_capacity(shards.len());
    while let Some(result) = results.next().await {
        match result {
            Ok(fragment) => fragments.push(fragment),
            Err((error, partial)) => {
                created.extend(partial);
                failure = Some(error);
                // Shards not yet started skip every object (`stop` is set); those in flight
                // finish the objects they started, so everything created is known.
                break;
            }
        }
    }
    if failure.is_some() {
        while let Some(result) = results.next().await {
            match result {
                Ok(fragment) => created.extend(fragment.created),
                Err((_, partial)) => created.extend(partial),
            }
        }
    }
    drop(results);
    // The shards are done with; the manifest is what memory is for from here on.
    drop(shards);
    if let Some(error) = failure {
        progress.set_phase(Phase::RollingBack);
        created.extend(fragments.into_iter().flat_map(|f| f.created));
        let report = rollback_known(store.as_ref(), &run, created, &staged).await;
        progress.set_phase(Phase::Failed);
        return Err(EngineError::Copy {
            error,
            rollback: report,
        });
    }

    progress.set_phase(Phase::Finalizing);
    // Rollback after a failed finalize needs every created object; the entries do not.
    created.extend(
        fragments
            .iter_mut()
            .flat_map(|f| std::mem::take(&mut f.created)),
    );
    match finalize_fragments(store.clone(), &run, fragments).await {
        Ok(package) => {
            // The version stands; staging leftovers are only litter, reported not fatal.
            for leftover in remove_staged(store.as_ref(), &run, &staged).await {
                tracing::warn!(run_id = %run.run_id, leftover, "could not remove staging object");
            }
            progress.set_phase(Phase::Succeeded);
            Ok(RunOutcome::Created {
                plan: summary,
                package,
            })
        }
        Err(error) => {
            progress.set_phase(Phase::RollingBack);
            let report = rollback_known(store.as_ref(), &run, created, &staged).await;
            progress.set_phase(Phase::Failed);
            Err(EngineError::Finalize {
                error,
                rollback: report,
            })
        }
    }
}
