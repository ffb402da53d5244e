//! The local engine: plan → copy every shard (bounded tokio concurrency) → commit → publish, in
//! one process, as a transaction ([`crate::transaction`]): rolled back on any failure or
//! interrupt before its commit point, finished after it. Progress is reported through shared
//! counters that a progress bar, an MCP status call or a test can read at any time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use futures::StreamExt;
use serde::Serialize;

use crate::copy::{CopyError, CopyOptions, ShardFailure, ShardMode, copy_shard};
use crate::finalize::{FinalizeError, PackageResult, finalize, finalize_fragments};
use crate::plan::{PlanError, PlanOptions, PlanSummary, plan};
use crate::registry::WrittenObject;
use crate::request::PackageRequest;
use crate::staging::{ManifestFragment, RunPlan, Shard};
use crate::storage::ObjectStore;
use crate::transaction::{RollbackReport, RollbackScope, TransactionError, roll_back};

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
    /// The plan, once planning is done: a caller following a long run sees what it copies.
    plan: std::sync::OnceLock<PlanSummary>,
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

    /// The run's plan, once planning has finished.
    pub fn plan(&self) -> Option<&PlanSummary> {
        self.plan.get()
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn object_done(&self, bytes: u64) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A request to stop a run (SIGINT or SIGTERM, an MCP client that went away): no new object
/// starts; a run before its commit point is rolled back, one past it is finished. Cloning
/// shares the signal.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<InterruptState>);

#[derive(Debug, Default)]
struct InterruptState {
    fired: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Interrupt {
    /// A signal not yet fired.
    pub fn new() -> Self {
        Interrupt::default()
    }

    /// Fires the signal (idempotent).
    pub fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Waits until it fires.
    pub async fn fired(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
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
    /// Stops the run when fired.
    pub interrupt: Interrupt,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            concurrency: 64,
            shard_concurrency: 4,
            plan: PlanOptions::default(),
            interrupt: Interrupt::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunOutcome {
    /// A dry run: what would be packaged.
    Planned(PlanSummary),
    /// An incremental run that found nothing changed since its base version: no version was
    /// written and nothing was copied; the base (`plan.incremental.base`) is the package.
    UpToDate(PlanSummary),
    /// A new package version.
    Created {
        /// The plan that was carried out.
        plan: PlanSummary,
        /// The package.
        package: PackageResult,
    },
}

/// Why a run failed; every variant before the commit point carries what rollback did.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Planning failed; nothing outside staging was written, and staging was removed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A shard failed; the run was rolled back.
    #[error(
        "{error} (rolled back: {}{})",
        removed(rollback),
        leftover_note(rollback)
    )]
    Copy {
        /// The failure.
        error: CopyError,
        /// What rollback did.
        rollback: RollbackReport,
    },
    /// Finalizing failed before the commit point; the run was rolled back.
    #[error(
        "{error} (rolled back: {}{})",
        removed(rollback),
        leftover_note(rollback)
    )]
    Finalize {
        /// The failure.
        error: FinalizeError,
        /// What rollback did.
        rollback: RollbackReport,
    },
    /// The run was interrupted before its commit point and rolled back.
    #[error(
        "the run was interrupted while {phase} (rolled back: {}{})",
        removed(rollback),
        leftover_note(rollback)
    )]
    Interrupted {
        /// What the run was doing.
        phase: &'static str,
        /// What rollback did.
        rollback: RollbackReport,
    },
    /// The run is committed but its version could not be published completely: it is never
    /// rolled back; `s3quilt runs resume <run id>` finishes it.
    #[error(transparent)]
    Unpublished(FinalizeError),
    /// The run failed and could not be rolled back now (its journal could not be written):
    /// `s3quilt runs abort <run id>` finishes the rollback.
    #[error(
        "{error}; the rollback could not start ({cause}): `s3quilt runs abort {run_id}` finishes it"
    )]
    RollbackPending {
        /// Run id.
        run_id: String,
        /// The failure.
        error: String,
        /// Why rollback could not run.
        cause: TransactionError,
    },
}

impl EngineError {
    /// The run id of a run that left work for `s3quilt runs resume|abort`, if any.
    pub fn unfinished_run(&self) -> Option<&str> {
        match self {
            EngineError::Unpublished(FinalizeError::Unpublished { run_id, .. })
            | EngineError::RollbackPending { run_id, .. } => Some(run_id),
            _ => None,
        }
    }
}

fn removed(report: &RollbackReport) -> String {
    let mut text = format!(
        "{} object{} removed",
        report.deleted,
        if report.deleted == 1 { "" } else { "s" }
    );
    if !report.replaced_by_others.is_empty() {
        text.push_str(&format!(
            "; {} replaced by another writer since and left to it: {}",
            report.replaced_by_others.len(),
            report.replaced_by_others.join(", ")
        ));
    }
    text
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

/// What the copy phase of a run produced.
#[derive(Default)]
struct CopyPhase {
    fragments: Vec<ManifestFragment>,
    created: Vec<WrittenObject>,
    in_doubt: Vec<String>,
    failure: Option<CopyError>,
}

/// Runs a request end to end in this process, as a transaction (see [`crate::transaction`]):
/// plan → copy every shard (each a journaled attempt) → commit → publish; any failure or
/// interruption before the commit point rolls back exactly what the run created, any after it
/// is finished. Fragments stay in memory for the manifest and are staged for recovery.
pub async fn run_local(
    store: Arc<dyn ObjectStore>,
    request: &PackageRequest,
    options: &EngineOptions,
    progress: Arc<Progress>,
) -> Result<RunOutcome, EngineError> {
    let interrupt = &options.interrupt;
    progress.set_phase(Phase::Planning);
    let plan_options = PlanOptions {
        stage_shards: false,
        ..options.plan.clone()
    };
    let planned = tokio::select! {
        planned = plan(store.clone(), request, &plan_options) => planned,
        // Planning writes nothing outside staging; a plan cut short while it wrote its plan
        // document is listed by `s3quilt runs list` and removed by `runs abort`.
        () = interrupt.fired() => {
            progress.set_phase(Phase::Failed);
            return Err(EngineError::Interrupted { phase: "planning", rollback: RollbackReport::default() });
        }
    };
    let planned = match planned {
        Ok(planned) => planned,
        Err(e) => {
            progress.set_phase(Phase::Failed);
            return Err(e.into());
        }
    };
    // Progress counts what is copied (an incremental run reuses the rest untouched).
    let (copy_objects, copy_bytes) = planned.summary.to_copy();
    progress
        .objects_total
        .store(copy_objects, Ordering::Relaxed);
    progress.bytes_total.store(copy_bytes, Ordering::Relaxed);
    let _ = progress.plan.set(planned.summary.clone());
    let (summary, shards, reused) = (planned.summary, planned.shards, planned.reused);
    let Some(run) = planned.run else {
        progress.set_phase(Phase::Succeeded);
        return Ok(if summary.dry_run {
            RunOutcome::Planned(summary)
        } else {
            RunOutcome::UpToDate(summary)
        });
    };

    progress.set_phase(Phase::Copying);
    let copied = copy_all(&store, &run, shards, options, &progress).await;
    let CopyPhase {
        mut fragments,
        mut created,
        in_doubt,
        failure,
    } = copied;
    if failure.is_some() || interrupt.is_fired() {
        created.extend(fragments.into_iter().flat_map(|f| f.created));
        let rollback = roll_back_run(&store, &run, &progress, created, in_doubt).await;
        progress.set_phase(Phase::Failed);
        let rollback = rollback.map_err(|cause| EngineError::RollbackPending {
            run_id: run.run_id.clone(),
            error: failure
                .as_ref()
                .map_or("the run was interrupted".to_string(), ToString::to_string),
            cause,
        })?;
        return Err(match failure {
            Some(error) if !interrupt.is_fired() => EngineError::Copy { error, rollback },
            _ => EngineError::Interrupted {
                phase: "copying",
                rollback,
            },
        });
    }

    progress.set_phase(Phase::Finalizing);
    // Rollback after a failed finalize needs every created object; the entries do not.
    created.extend(
        fragments
            .iter_mut()
            .flat_map(|f| std::mem::take(&mut f.created)),
    );
    match finalize_fragments(store.clone(), &run, fragments, reused).await {
        Ok(package) => {
            progress.set_phase(Phase::Succeeded);
            Ok(RunOutcome::Created {
                plan: summary,
                package,
            })
        }
        Err(error) if error.is_committed() => {
            progress.set_phase(Phase::Failed);
            Err(EngineError::Unpublished(error))
        }
        Err(error) => {
            match roll_back_run(&store, &run, &progress, created, Vec::new()).await {
                Ok(rollback) => {
                    progress.set_phase(Phase::Failed);
                    Err(EngineError::Finalize { error, rollback })
                }
                // The commit landed though its answer was lost: finish the run instead.
                Err(TransactionError::Committed { .. }) => {
                    progress.set_phase(Phase::Finalizing);
                    match finalize(store.clone(), &run.registry_bucket, &run.run_id).await {
                        Ok(package) => {
                            progress.set_phase(Phase::Succeeded);
                            Ok(RunOutcome::Created {
                                plan: summary,
                                package,
                            })
                        }
                        Err(error) => {
                            progress.set_phase(Phase::Failed);
                            Err(EngineError::Unpublished(error))
                        }
                    }
                }
                Err(cause) => {
                    progress.set_phase(Phase::Failed);
                    Err(EngineError::RollbackPending {
                        run_id: run.run_id.clone(),
                        error: error.to_string(),
                        cause,
                    })
                }
            }
        }
    }
}

/// Copies every shard (shards at once bounded, requests bounded by one shared limit), each as
/// a journaled attempt. After a failure or an interrupt, objects not yet started are skipped
/// and those in flight finish, so everything created is known when this returns.
async fn copy_all(
    store: &Arc<dyn ObjectStore>,
    run: &RunPlan,
    shards: Vec<Shard>,
    options: &EngineOptions,
    progress: &Arc<Progress>,
) -> CopyPhase {
    // One request limit for the whole run; each shard keeps up to `concurrency` objects in
    // progress so the limit, not the object count, is what binds.
    let copy_options = CopyOptions::new(options.concurrency);
    let watcher = {
        let (interrupt, stop) = (options.interrupt.clone(), copy_options.stop.clone());
        tokio::spawn(async move {
            interrupt.fired().await;
            stop.store(true, Ordering::Release);
        })
    };
    let on_object = {
        let progress = progress.clone();
        move |bytes: u64| progress.object_done(bytes)
    };
    let mut phase = CopyPhase {
        fragments: Vec::with_capacity(shards.len()),
        ..CopyPhase::default()
    };
    let mut results = futures::stream::iter(shards.iter().map(|shard| {
        let (run, copy_options, on_object) = (run, &copy_options, &on_object);
        let store = store.clone();
        async move {
            if copy_options.stop.load(Ordering::Acquire) {
                // Not started: nothing of it exists, not even its attempt marker.
                return Err(ShardFailure::from(CopyError::Stopped(shard.shard)));
            }
            copy_shard(store, run, shard, copy_options, on_object, ShardMode::LOCAL)
                .await
                .map(|outcome| outcome.fragment)
        }
    }))
    .buffer_unordered(options.shard_concurrency.max(1));
    while let Some(result) = results.next().await {
        match result {
            Ok(fragment) => phase.fragments.push(fragment),
            Err(failure) => {
                copy_options.stop.store(true, Ordering::Release);
                phase.created.extend(failure.created);
                phase.in_doubt.extend(failure.in_doubt);
                // The first real failure is the run's; a shard stopped because of it is not.
                if phase.failure.is_none() || matches!(phase.failure, Some(CopyError::Stopped(_))) {
                    phase.failure = Some(failure.error);
                }
            }
        }
    }
    watcher.abort();
    phase
}

/// Rolls `run` back with what this process knows it created.
async fn roll_back_run(
    store: &Arc<dyn ObjectStore>,
    run: &RunPlan,
    progress: &Progress,
    created: Vec<WrittenObject>,
    in_doubt: Vec<String>,
) -> Result<RollbackReport, TransactionError> {
    progress.set_phase(Phase::RollingBack);
    roll_back(
        store.clone(),
        run,
        RollbackScope::Known { created, in_doubt },
        "the run failed or was interrupted before its commit point",
    )
    .await
}
