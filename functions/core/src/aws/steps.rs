//! The four steps as the Lambdas run them: parse the event, check it against the deployment's
//! limits, call the core step, shape the result for the state machine, and map errors to
//! [`StepError`]s. The Lambda binaries only build a store and call these.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::errors::{ErrorType, StepError};
use super::events::{
    CopierEvent, CopierOutput, ExecutionInput, ExecutionStatusEvent, JanitorOutput, JanitorRun,
    PlannerEvent, PlannerOutput, QUOTED_NOT_DELETED, RollbackEvent, RollbackOutput, RunRef,
    parse_value,
};
use crate::copy::{CopyOptions, copy_shard_from_staging, stop_before};
use crate::finalize::{PackageResult, finalize};
use crate::plan::{PlanOptions, plan};
use crate::request::parse_bucket;
use crate::retry::{AdaptiveLimit, RetryPolicy};
use crate::staging::{FailureRecord, Staging, StagingError};
use crate::storage::{ObjectStore, list_all};
use crate::transaction::{
    AbortProgress, RollbackReport, RunState, TransactionError, abort_fenced, list_runs, resume_run,
};

/// Requests a copier starts with before it has seen how S3 answers (see
/// [`AdaptiveLimit::slow_start`]).
const COPIER_INITIAL_REQUESTS: usize = 4;

/// How many failed shards' own errors a rollback cause quotes.
const QUOTED_FAILURES: usize = 5;

/// The Lambdas' settings, from their environment (see [`StepConfig::from_env`]).
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// Shard limits for the planner.
    pub plan: PlanOptions,
    /// Objects a copier keeps in flight.
    pub copy_concurrency: usize,
    /// Source buckets this deployment may read (empty: any the role allows).
    pub allowed_source_buckets: Vec<String>,
    /// Registry buckets this deployment may write (empty: any the role allows).
    pub allowed_registry_buckets: Vec<String>,
    /// Target buckets this deployment may write (empty: the registry buckets).
    pub allowed_target_buckets: Vec<String>,
    /// The copier Lambda's timeout: an attempt older than this has no live copier, so
    /// rollback need not wait for it.
    pub copier_timeout: Duration,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            plan: PlanOptions {
                // A copier must finish its shard within Lambda's 15 minutes.
                shard_max_objects: 500,
                shard_max_bytes: 100 * 1024 * 1024 * 1024,
                ..PlanOptions::default()
            },
            copy_concurrency: 32,
            allowed_source_buckets: Vec::new(),
            allowed_registry_buckets: Vec::new(),
            allowed_target_buckets: Vec::new(),
            copier_timeout: Duration::from_secs(900),
        }
    }
}

impl StepConfig {
    /// Settings from `S3QUILT_SHARD_MAX_OBJECTS`, `S3QUILT_SHARD_MAX_BYTES`,
    /// `S3QUILT_COPY_CONCURRENCY`, `S3QUILT_COPIER_TIMEOUT_SECS`, and the comma-separated `S3QUILT_SOURCE_BUCKETS`,
    /// `S3QUILT_REGISTRY_BUCKETS`, `S3QUILT_TARGET_BUCKETS`; unset or empty keeps the default.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Settings from any variable lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut config = StepConfig::default();
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let list = |k: &str| -> Vec<String> {
            var(k)
                .map(|v| {
                    v.split(',')
                        .map(|b| b.trim().to_string())
                        .filter(|b| !b.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(n) = var("S3QUILT_SHARD_MAX_OBJECTS").and_then(|v| v.parse().ok()) {
            config.plan.shard_max_objects = n;
        }
        if let Some(n) = var("S3QUILT_SHARD_MAX_BYTES").and_then(|v| v.parse().ok()) {
            config.plan.shard_max_bytes = n;
        }
        if let Some(n) = var("S3QUILT_COPY_CONCURRENCY").and_then(|v| v.parse().ok()) {
            config.copy_concurrency = n;
        }
        if let Some(n) = var("S3QUILT_COPIER_TIMEOUT_SECS").and_then(|v| v.parse().ok()) {
            config.copier_timeout = Duration::from_secs(n);
        }
        config.allowed_source_buckets = list("S3QUILT_SOURCE_BUCKETS");
        config.allowed_registry_buckets = list("S3QUILT_REGISTRY_BUCKETS");
        config.allowed_target_buckets = list("S3QUILT_TARGET_BUCKETS");
        config
    }

    /// Refuses buckets this deployment is not allowed to use, before any S3 call (the IAM
    /// policy would refuse them too, with a less helpful AccessDenied).
    fn check_buckets(&self, input: &ExecutionInput) -> Result<(), StepError> {
        let valid = input
            .request
            .validate()
            .map_err(|e| StepError::invalid(e.to_string()))?;
        let check = |field: &str, bucket: &str, allowed: &[String]| {
            if allowed.is_empty() || allowed.iter().any(|a| a == bucket) {
                Ok(())
            } else {
                Err(StepError::invalid(format!(
                    "{field}: this deployment may not use bucket {bucket:?}; allowed: {} (redeploy with the bucket added to change that)",
                    allowed.join(", ")
                )))
            }
        };
        check(
            "source_bucket",
            &valid.source_bucket,
            &self.allowed_source_buckets,
        )?;
        check(
            "target_registry",
            &valid.registry_bucket,
            &self.allowed_registry_buckets,
        )?;
        if valid.copy && valid.target_bucket != valid.registry_bucket {
            let targets = if self.allowed_target_buckets.is_empty() {
                &self.allowed_registry_buckets
            } else {
                &self.allowed_target_buckets
            };
            check("target_bucket", &valid.target_bucket, targets)?;
        }
        Ok(())
    }
}

/// A Lambda invocation's deadline (milliseconds since the epoch, `Context::deadline`). `0`,
/// and a deadline less than [`MIN_DEADLINE_LEFT`] away when the invocation starts, are none:
/// Lambda gives at least the function's timeout, and local emulators send such values.
pub fn lambda_deadline(epoch_ms: u64) -> Option<SystemTime> {
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(epoch_ms);
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tracing::debug!(
        epoch_ms,
        left_ms = left.as_millis() as u64,
        "invocation deadline"
    );
    (epoch_ms > 0 && left >= MIN_DEADLINE_LEFT).then_some(deadline)
}

/// The least time left a deadline must give to be believed (see [`lambda_deadline`]).
pub const MIN_DEADLINE_LEFT: Duration = Duration::from_secs(10);

/// Plan: validate the request, list and select, write shards, the shard index and the plan.
pub async fn plan_step(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: serde_json::Value,
) -> Result<PlannerOutput, StepError> {
    let event: PlannerEvent = parse_value("planner event", event)?;
    let input = ExecutionInput::parse(event.input)?;
    let max_concurrency = input.effective_max_concurrency()?;
    config.check_buckets(&input)?;
    let options = PlanOptions {
        execution: event.execution_arn.clone(),
        ..config.plan.clone()
    };
    let planned = plan(store.clone(), &input.request, &options).await?;
    let registry_bucket = parse_bucket("target_registry", &input.request.target_registry)
        .map_err(|e| StepError::invalid(e.to_string()))?;
    let run_id = planned.run.as_ref().map(|r| r.run_id.clone());
    let shard_index_key = run_id
        .as_ref()
        .map(|id| Staging::new(store.clone(), &registry_bucket, id).shard_index_key());
    tracing::info!(
        execution = event.execution_name.as_deref().unwrap_or(""),
        run_id = run_id.as_deref().unwrap_or(""),
        objects = planned.summary.objects,
        shards = planned.summary.shards,
        "planned"
    );
    Ok(PlannerOutput {
        dry_run: planned.run.is_none() && planned.summary.dry_run,
        up_to_date: planned.run.is_none() && !planned.summary.dry_run,
        run_id,
        registry_bucket,
        shard_index_key,
        shards: planned.summary.shards,
        objects: planned.summary.objects,
        bytes: planned.summary.bytes,
        max_concurrency,
        summary: planned.summary,
    })
}

/// Copy one shard (idempotent: a shard whose fragment exists is not copied again). No object
/// is started within [`crate::copy::DEADLINE_MARGIN`] of `deadline` (the Lambda's): the attempt closes
/// and fails as transient, and the state machine's retry copies the rest.
pub async fn copy_step(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: serde_json::Value,
    deadline: Option<SystemTime>,
) -> Result<CopierOutput, StepError> {
    let event: CopierEvent = parse_value("copier event", event)?;
    RunRef {
        run_id: event.run_id.clone(),
        registry_bucket: event.registry_bucket.clone(),
    }
    .validate()?;
    // A fleet of copiers writes one prefix: each starts at a few requests and grows until S3
    // throttles (SDK retries are off, so every 503 reaches the limit).
    let options = CopyOptions {
        deadline,
        limit: Arc::new(AdaptiveLimit::slow_start(
            COPIER_INITIAL_REQUESTS,
            config.copy_concurrency,
        )),
        read_limit: Arc::new(AdaptiveLimit::slow_start(
            COPIER_INITIAL_REQUESTS,
            config.copy_concurrency,
        )),
        ..CopyOptions::new(config.copy_concurrency)
    };
    let outcome = copy_shard_from_staging(
        store,
        &event.registry_bucket,
        &event.run_id,
        event.shard,
        &options,
    )
    .await
    .map_err(|e| {
        tracing::error!(run_id = %event.run_id, shard = event.shard, error = %e, "shard failed");
        StepError::from(e)
    })?;
    let fragment = &outcome.fragment;
    let output = CopierOutput {
        shard: fragment.shard,
        objects: fragment.entries.len() as u64,
        bytes: fragment.entries.iter().map(|e| e.size).sum(),
        already_done: outcome.already_done,
    };
    tracing::info!(run_id = %event.run_id, shard = output.shard, objects = output.objects, already_done = output.already_done, "shard copied");
    Ok(output)
}

/// Finalize: check every fragment is there, write the manifest and pointers, remove staging.
pub async fn finalize_step(
    store: Arc<dyn ObjectStore>,
    event: serde_json::Value,
) -> Result<PackageResult, StepError> {
    let run: RunRef = parse_value("finalizer event", event)?;
    run.validate()?;
    let package = finalize(store, &run.registry_bucket, &run.run_id)
        .await
        .map_err(|e| {
            tracing::error!(run_id = %run.run_id, error = %e, "finalize failed");
            StepError::from(e)
        })?;
    tracing::info!(run_id = %run.run_id, top_hash = %package.top_hash, "package written");
    Ok(package)
}

/// Rollback: decide `aborted`, wait (by answering `settled: false`) while copiers of the run
/// may still be writing, then delete what the run created and its staging area, and compose
/// the error the execution fails with (the original error, the failed shards' own errors,
/// what was removed). A run past its commit point is never rolled back: the answer names its
/// top hash (`committed`) and the state machine finishes it with the finalizer (a finalizer
/// that died after committing lands here through Catch).
///
/// It fails only for an invalid event: a rollback that could not remove everything says so in
/// its `cause` and `not_deleted`, and the execution still fails with the original error.
pub async fn rollback_step(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: serde_json::Value,
) -> Result<RollbackOutput, StepError> {
    let event: RollbackEvent = parse_value("rollback event", event)?;
    RunRef {
        run_id: event.run_id.clone(),
        registry_bucket: event.registry_bucket.clone(),
    }
    .validate()?;
    let shard_errors = failed_shards(store.clone(), &event.registry_bucket, &event.run_id).await;
    let reason = format!("{}: {}", event.error.error, event.error.message());
    let mut committed = None;
    let mut waiting = None;
    // A finalizer that published and then died (before answering) has removed the journal;
    // its result record says the run is done.
    let staging = Staging::new(store.clone(), &event.registry_bucket, &event.run_id);
    let published = staging
        .get::<PackageResult>(&staging.result_key())
        .await
        .ok()
        .flatten();
    let report = if let Some(published) = published {
        committed = Some(published.top_hash);
        RollbackReport::default()
    } else {
        match abort_fenced(
            store.clone(),
            &event.registry_bucket,
            &event.run_id,
            config.copier_timeout,
            &reason,
        )
        .await
        {
            Ok(AbortProgress::Done(report)) => report,
            Ok(AbortProgress::Waiting {
                open_attempts,
                wait,
            }) => {
                tracing::info!(run_id = %event.run_id, open_attempts, wait_s = wait.as_secs(), "waiting for copiers to stop");
                waiting = Some(wait);
                RollbackReport::default()
            }
            Err(TransactionError::Committed { top_hash, .. }) => {
                committed = Some(top_hash);
                RollbackReport::default()
            }
            Err(e) => RollbackReport {
                not_deleted: vec![format!("the rollback could not start: {e}")],
                ..RollbackReport::default()
            },
        }
    };
    keep_full_report(store, &event.registry_bucket, &event.run_id, &report).await;
    // A Fail state may not raise Step Functions' own (`States.`) names: a copy failure that
    // failed the Map is a copy failure; any other such error is named in the cause.
    let error = match event.error.error.as_str() {
        e if e.starts_with("States.") && !shard_errors.is_empty() => ErrorType::CopyFailed.name(),
        e if e.starts_with("States.") || e.is_empty() => ErrorType::StepFailed.name(),
        e => e,
    }
    .to_string();
    let mut cause = event.error.message();
    if error != event.error.error && !event.error.error.is_empty() {
        cause = format!("{}: {cause}", event.error.error);
    }
    if !shard_errors.is_empty() {
        cause.push_str(&format!("; failed shards: {}", shard_errors.join("; ")));
    }
    let quoted = quote(&report.not_deleted);
    cause.push_str(&format!(
        " (run {} rolled back: {} objects removed",
        event.run_id, report.deleted
    ));
    if report.not_deleted.is_empty() {
        cause.push(')');
    } else {
        cause.push_str(&format!(
            "; NOT removed, clean up by hand: {})",
            quoted.join(", ")
        ));
    }
    tracing::warn!(run_id = %event.run_id, %error, deleted = report.deleted, not_deleted = report.not_deleted.len(), settled = waiting.is_none(), committed = committed.is_some(), "rollback");
    Ok(RollbackOutput {
        error,
        cause,
        deleted: report.deleted,
        not_deleted_count: report.not_deleted.len(),
        not_deleted: quoted,
        settled: waiting.is_none(),
        wait_seconds: waiting.map_or(0, |w| w.as_secs()),
        committed,
    })
}

/// The first [`QUOTED_NOT_DELETED`] entries, and how many more there are.
fn quote(not_deleted: &[String]) -> Vec<String> {
    let mut quoted: Vec<String> = not_deleted
        .iter()
        .take(QUOTED_NOT_DELETED)
        .cloned()
        .collect();
    if not_deleted.len() > QUOTED_NOT_DELETED {
        quoted.push(format!(
            "… and {} more (all in the run's rollback-report.json)",
            not_deleted.len() - QUOTED_NOT_DELETED
        ));
    }
    quoted
}

/// Keeps a rollback's whole report in the run's staging area (which stays while anything is
/// left) when it is too long to quote in a state's output.
async fn keep_full_report(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    run_id: &str,
    report: &RollbackReport,
) {
    if report.not_deleted.len() <= QUOTED_NOT_DELETED {
        return;
    }
    let staging = Staging::new(store, bucket, run_id);
    let key = format!("{}rollback-report.json", staging.prefix());
    if let Err(e) = staging.put(&key, report).await {
        tracing::warn!(run_id, error = %e, "could not keep the rollback report");
    }
}

/// The janitor: for an execution that ended `FAILED`, `TIMED_OUT` or `ABORTED` (an EventBridge
/// rule sends every such status change), finishes or rolls back every run of it still in a
/// registry's staging area — the endings no `Catch` reaches (StopExecution, a timeout of the
/// whole execution, `States.Runtime`, a rollback that itself failed). It waits, within its own
/// `deadline`, for copiers still writing; past it, it fails as transient so the invocation is
/// retried.
pub async fn janitor_step(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: ExecutionStatusEvent,
    deadline: Option<SystemTime>,
) -> Result<JanitorOutput, StepError> {
    let detail = event.detail;
    let mut output = JanitorOutput {
        execution_arn: detail.execution_arn.clone(),
        status: detail.status.clone(),
        runs: Vec::new(),
    };
    if !matches!(detail.status.as_str(), "FAILED" | "TIMED_OUT" | "ABORTED") {
        return Ok(output);
    }
    for registry in &janitor_registries(config, detail.input.as_deref())? {
        let runs = list_runs(store.clone(), registry)
            .await
            .map_err(|e| StepError::from(StagingError::from(e)))?;
        for run in runs
            .into_iter()
            .filter(|r| r.execution.as_deref() == Some(detail.execution_arn.as_str()))
        {
            let reason = format!("execution {} ended {}", detail.execution_arn, detail.status);
            let janitor_run = match run.state {
                RunState::Committed { .. } => finish(store.clone(), registry, &run.run_id).await,
                _ => {
                    roll_back_settled(
                        store.clone(),
                        config,
                        registry,
                        &run.run_id,
                        &reason,
                        deadline,
                    )
                    .await?
                }
            };
            tracing::warn!(run_id = %run.run_id, execution = %detail.execution_arn, action = %janitor_run.action, deleted = janitor_run.deleted, "janitor");
            output.runs.push(janitor_run);
        }
    }
    Ok(output)
}

/// The registries whose staging the janitor searches: the one the execution's input names
/// (when EventBridge included the input; it must be one this deployment may use), else every
/// registry the deployment may use.
fn janitor_registries(config: &StepConfig, input: Option<&str>) -> Result<Vec<String>, StepError> {
    let named = input
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|value| ExecutionInput::parse(value).ok())
        .and_then(|input| parse_bucket("target_registry", &input.request.target_registry).ok());
    let allowed = &config.allowed_registry_buckets;
    match named {
        Some(registry) if allowed.is_empty() || allowed.contains(&registry) => Ok(vec![registry]),
        Some(registry) => Err(StepError::invalid(format!(
            "the execution's registry {registry:?} is not one this deployment may use ({})",
            allowed.join(", ")
        ))),
        None if allowed.is_empty() => Err(StepError::invalid(
            "the janitor needs the execution's input in the event or S3QUILT_REGISTRY_BUCKETS (the registries whose runs it cleans up)",
        )),
        None => Ok(allowed.clone()),
    }
}

/// Finishes a committed run for the janitor.
async fn finish(store: Arc<dyn ObjectStore>, registry: &str, run_id: &str) -> JanitorRun {
    match resume_run(store, registry, run_id).await {
        Ok(_) => JanitorRun {
            run_id: run_id.to_string(),
            action: "finished".into(),
            deleted: 0,
            not_deleted: Vec::new(),
        },
        Err(e) => JanitorRun {
            run_id: run_id.to_string(),
            action: "left".into(),
            deleted: 0,
            not_deleted: vec![format!("committed, could not be finished: {e}")],
        },
    }
}

/// Rolls a run back for the janitor, waiting for its copiers until `deadline` (less a margin).
async fn roll_back_settled(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    registry: &str,
    run_id: &str,
    reason: &str,
    deadline: Option<SystemTime>,
) -> Result<JanitorRun, StepError> {
    loop {
        match abort_fenced(
            store.clone(),
            registry,
            run_id,
            config.copier_timeout,
            reason,
        )
        .await
        {
            Ok(AbortProgress::Done(report)) => {
                keep_full_report(store.clone(), registry, run_id, &report).await;
                return Ok(JanitorRun {
                    run_id: run_id.to_string(),
                    action: if report.not_deleted.is_empty() {
                        "rolled_back".into()
                    } else {
                        "left".into()
                    },
                    deleted: report.deleted,
                    not_deleted: quote(&report.not_deleted),
                });
            }
            Ok(AbortProgress::Waiting { wait, .. }) => {
                let stop_at = deadline.map(stop_before);
                let time_left =
                    stop_at.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
                if time_left.is_some_and(|left| left < wait) {
                    return Err(StepError::new(
                        ErrorType::Transient,
                        format!(
                            "run {run_id}: copiers may still be writing; the janitor is retried"
                        ),
                    ));
                }
                tokio::time::sleep(wait).await;
            }
            // It committed meanwhile (its finalizer was still running).
            Err(TransactionError::Committed { .. }) => {
                return Ok(finish(store, registry, run_id).await);
            }
            Err(e) => return Err(StepError::from(e)),
        }
    }
}

/// The rollback Lambda's answer: to a Catch's rollback event, or (as the janitor) to an
/// EventBridge execution status change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum RollbackFunctionOutput {
    /// To the state machine's Rollback state.
    Rollback(RollbackOutput),
    /// To EventBridge.
    Janitor(JanitorOutput),
}

/// What the rollback Lambda does with any event it receives: an EventBridge event (it has a
/// `detail-type`) is the janitor's, anything else the state machine's rollback event.
pub async fn rollback_function(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: serde_json::Value,
    deadline: Option<SystemTime>,
) -> Result<RollbackFunctionOutput, StepError> {
    if event.get("detail-type").is_some() {
        let event: ExecutionStatusEvent = parse_value("EventBridge event", event)?;
        janitor_step(store, config, event, deadline)
            .await
            .map(RollbackFunctionOutput::Janitor)
    } else {
        rollback_step(store, config, event)
            .await
            .map(RollbackFunctionOutput::Rollback)
    }
}

/// The errors the copiers recorded in the run's failure records (a few, in shard order).
async fn failed_shards(store: Arc<dyn ObjectStore>, bucket: &str, run_id: &str) -> Vec<String> {
    let staging = Staging::new(store.clone(), bucket, run_id);
    let prefix = format!("{}failures/", staging.prefix());
    let Ok(mut listed) = list_all(store.as_ref(), bucket, &prefix, &RetryPolicy::default()).await
    else {
        return Vec::new();
    };
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut errors = Vec::new();
    for object in listed.iter().take(QUOTED_FAILURES) {
        if let Ok(Some(record)) = staging.get::<FailureRecord>(&object.key).await {
            errors.push(format!("shard {}: {}", record.shard, record.error));
        }
    }
    if listed.len() > QUOTED_FAILURES {
        errors.push(format!("… and {} more", listed.len() - QUOTED_FAILURES));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PackageRequest;

    #[test]
    fn the_janitor_searches_the_registry_the_execution_named_if_allowed() {
        let input = |registry: &str| {
            serde_json::to_string(&ExecutionInput::new(PackageRequest::new(
                "src-a", "", "a/b", registry,
            )))
            .unwrap()
        };
        let open = StepConfig::default();
        assert_eq!(
            janitor_registries(&open, Some(&input("s3://reg-1"))).unwrap(),
            ["reg-1"]
        );
        let e = janitor_registries(&open, None).unwrap_err();
        assert!(
            e.message.contains("S3QUILT_REGISTRY_BUCKETS"),
            "{}",
            e.message
        );
        let deployed = StepConfig {
            allowed_registry_buckets: vec!["reg-1".into(), "reg-2".into()],
            ..StepConfig::default()
        };
        assert_eq!(
            janitor_registries(&deployed, Some(&input("reg-2"))).unwrap(),
            ["reg-2"]
        );
        let e = janitor_registries(&deployed, Some(&input("reg-3"))).unwrap_err();
        assert!(e.message.contains("reg-3"), "{}", e.message);
        // No input (or one that is not a request): every registry the deployment may use.
        assert_eq!(
            janitor_registries(&deployed, Some("not json")).unwrap(),
            ["reg-1", "reg-2"]
        );
    }

    #[test]
    fn deadlines_too_close_to_believe_are_none() {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(lambda_deadline(0), None);
        assert_eq!(lambda_deadline(now_ms + 2_000), None);
        let real = lambda_deadline(now_ms + 900_000).expect("a Lambda deadline");
        assert_eq!(
            real,
            SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms + 900_000)
        );
    }

    #[test]
    fn config_from_vars() {
        let vars = |k: &str| match k {
            "S3QUILT_SHARD_MAX_OBJECTS" => Some("7".to_string()),
            "S3QUILT_COPY_CONCURRENCY" => Some("3".to_string()),
            "S3QUILT_SOURCE_BUCKETS" => Some(" src-a, src-b ,".to_string()),
            "S3QUILT_REGISTRY_BUCKETS" => Some("reg-1".to_string()),
            "S3QUILT_TARGET_BUCKETS" => Some("".to_string()),
            _ => None,
        };
        let c = StepConfig::from_vars(vars);
        assert_eq!(c.plan.shard_max_objects, 7);
        assert_eq!(
            c.plan.shard_max_bytes,
            StepConfig::default().plan.shard_max_bytes
        );
        assert_eq!(c.copy_concurrency, 3);
        assert_eq!(c.allowed_source_buckets, ["src-a", "src-b"]);
        assert!(c.allowed_target_buckets.is_empty());

        let input = |src: &str, reg: &str, target: Option<&str>| {
            let mut r = PackageRequest::new(src, "", "a/b", reg);
            r.target_bucket = target.map(str::to_string);
            ExecutionInput::new(r)
        };
        c.check_buckets(&input("src-a", "s3://reg-1", None))
            .unwrap();
        let e = c.check_buckets(&input("src-c", "reg-1", None)).unwrap_err();
        assert!(e.message.starts_with("source_bucket"), "{}", e.message);
        assert!(e.message.contains("src-a, src-b"), "{}", e.message);
        let e = c.check_buckets(&input("src-a", "reg-2", None)).unwrap_err();
        assert!(e.message.starts_with("target_registry"), "{}", e.message);
        let e = c
            .check_buckets(&input("src-a", "reg-1", Some("other-1")))
            .unwrap_err();
        assert!(e.message.starts_with("target_bucket"), "{}", e.message);
        StepConfig::default()
            .check_buckets(&input("any-1", "any-2", Some("any-3")))
            .unwrap();
    }
}
