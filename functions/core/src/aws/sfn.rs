//! Starting an execution of the packaging state machine and following it: status, phase,
//! progress (shards from the Map Run, objects and bytes from the run's staging area) and the
//! final result or error. Used by the MCP server (`s3quilt mcp --state-machine-arn`); from a
//! shell, `examples/step-functions-from-cli` does the same with the AWS CLI.
//!
//! ## Idempotent starts
//!
//! The run id is made by the planner, inside the execution, so it cannot name the execution.
//! Instead the caller names it: [`execution_name`] hashes the execution input together with a
//! caller token. Step Functions treats a StartExecution with the name and input of a running
//! execution as the same call, and refuses the name of a finished one
//! (`ExecutionAlreadyExists`); [`start_execution`] then returns that execution. So a start
//! retried with the same token (a lost response) never starts a second run, while a new token
//! (the MCP server makes a random one per call) starts a new run of the same request. Names
//! are unique per state machine for 90 days.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::events::{ExecutionInput, ExecutionOutput};
use crate::engine::{Phase, ProgressSnapshot};
use crate::staging::{ShardRef, Staging};
use crate::storage::ObjectStore;

/// Names of the states in `infra/statemachine.asl.json` that progress reports rely on.
pub mod states {
    /// The planner task.
    pub const PLAN: &str = "Plan";
    /// The Distributed Map over shards.
    pub const COPY_SHARDS: &str = "CopyShards";
    /// The finalizer task.
    pub const FINALIZE: &str = "Finalize";
    /// The rollback task.
    pub const ROLLBACK: &str = "Rollback";
    /// The choice after rollback.
    pub const ROLLBACK_DONE: &str = "RollbackDone";
    /// Rollback waiting for copiers still running.
    pub const WAIT_FOR_COPIERS: &str = "WaitForCopiers";
    /// The finalizer finishing a run that committed before it failed.
    pub const FINISH_COMMITTED: &str = "FinishCommitted";
}

/// Why a Step Functions call failed.
#[derive(Debug, thiserror::Error)]
pub enum SfnError {
    /// The API refused or failed.
    #[error("Step Functions {operation} failed: {message}")]
    Api {
        /// The API operation.
        operation: &'static str,
        /// Error code and message.
        message: String,
        /// Whether trying again may help (throttling, 5xx, network).
        transient: bool,
    },
    /// The execution ARN or state machine ARN is not one.
    #[error("{0}")]
    InvalidArn(String),
}

fn api_error<E, R>(operation: &'static str, e: &SdkError<E, R>) -> SfnError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (message, transient) = match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("").to_string();
            let transient = code.contains("Throttl") || code == "ServiceUnavailable";
            (
                format!("{code}: {}", s.err().message().unwrap_or("")),
                transient,
            )
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (aws_sdk_sfn::error::DisplayErrorContext(e).to_string(), true)
        }
        other => (
            aws_sdk_sfn::error::DisplayErrorContext(other).to_string(),
            false,
        ),
    };
    SfnError::Api {
        operation,
        message,
        transient,
    }
}

/// A Step Functions client from the environment (`AWS_ENDPOINT_URL_SFN` or
/// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, the default credential chain).
pub async fn sfn_client_from_env() -> aws_sdk_sfn::Client {
    let region =
        aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(region)
        .load()
        .await;
    aws_sdk_sfn::Client::new(&config)
}

/// The execution name for `input` started by the holder of `caller_token`:
/// `s3q-<40 hex of SHA-256(token, input)>` (Step Functions allows 80 characters).
pub fn execution_name(input: &ExecutionInput, caller_token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"s3quilt-execution-v1\n");
    hash.update(caller_token.as_bytes());
    hash.update(b"\n");
    hash.update(input.to_json().to_string().as_bytes());
    let digest = hex::encode(hash.finalize());
    format!("s3q-{}", &digest[..40])
}

/// The ARN of execution `name` of `state_machine_arn`.
pub fn execution_arn(state_machine_arn: &str, name: &str) -> Result<String, SfnError> {
    match state_machine_arn.split_once(":stateMachine:") {
        Some((head, machine)) if !machine.is_empty() && !machine.contains(':') => {
            Ok(format!("{head}:execution:{machine}:{name}"))
        }
        _ => Err(SfnError::InvalidArn(format!(
            "{state_machine_arn:?} is not a state machine ARN (arn:aws:states:<region>:<account>:stateMachine:<name>)"
        ))),
    }
}

/// A started (or already started) execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartedExecution {
    /// Its ARN.
    pub execution_arn: String,
    /// Its name.
    pub name: String,
    /// It had been started, and had ended, before this call (which started nothing). A start
    /// that meets a still running execution of the same name and input gets that execution
    /// back from Step Functions itself, with `existing: false`.
    pub existing: bool,
}

/// Starts the state machine with `input`, named by [`execution_name`]; returns the existing
/// execution when one with that name was started before (see the module docs).
pub async fn start_execution(
    client: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    input: &ExecutionInput,
    caller_token: &str,
) -> Result<StartedExecution, SfnError> {
    let name = execution_name(input, caller_token);
    let arn = execution_arn(state_machine_arn, &name)?;
    let result = client
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(&name)
        .input(input.to_json().to_string())
        .send()
        .await;
    match result {
        Ok(out) => Ok(StartedExecution {
            existing: false,
            execution_arn: out.execution_arn().to_string(),
            name,
        }),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_execution_already_exists()) =>
        {
            // Same name means same token and input (names are hashes of both): it is ours.
            client
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await
                .map_err(|e| api_error("DescribeExecution", &e))?;
            Ok(StartedExecution {
                execution_arn: arn,
                name,
                existing: true,
            })
        }
        Err(e) => Err(api_error("StartExecution", &e)),
    }
}

/// Map items (= shards) by state, from the Map Run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShardCounts {
    /// All items.
    pub total: u64,
    /// Copied.
    pub succeeded: u64,
    /// Failed, timed out or aborted.
    pub failed: u64,
    /// Running now.
    pub running: u64,
    /// Not started.
    pub pending: u64,
}

/// Where an execution is, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionReport {
    /// Execution ARN.
    pub execution_arn: String,
    /// Step Functions status: `RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`,
    /// `PENDING_REDRIVE`.
    pub status: String,
    /// Phase and object/byte counts, as the local engine reports them.
    pub progress: ProgressSnapshot,
    /// The run id, once planned.
    pub run_id: Option<String>,
    /// Shards, once the Map has started.
    pub shards: Option<ShardCounts>,
    /// The plan summary (as the local engine reports it) from the planner's step, once it has
    /// ended: while the execution runs, and after it ended however it ended.
    pub plan_summary: Option<serde_json::Value>,
    /// The execution's output (when it succeeded).
    pub output: Option<ExecutionOutput>,
    /// The error name (when it failed), e.g. `S3Quilt.CopyFailed`.
    pub error: Option<String>,
    /// The cause (when it failed): what happened, and what rollback did.
    pub cause: Option<String>,
}

impl ExecutionReport {
    /// Whether the execution has ended.
    pub fn is_finished(&self) -> bool {
        !matches!(self.status.as_str(), "RUNNING" | "PENDING_REDRIVE")
    }
}

/// What the execution history says: the state last entered and the planner's output.
#[derive(Default)]
struct HistoryFacts {
    last_state: Option<String>,
    plan: Option<serde_json::Value>,
}

async fn history_facts(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
) -> Result<HistoryFacts, SfnError> {
    let mut facts = HistoryFacts::default();
    let mut pages = client
        .get_execution_history()
        .execution_arn(execution_arn)
        .include_execution_data(true)
        .max_results(500)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api_error("GetExecutionHistory", &e))?;
        for event in page.events() {
            if let Some(entered) = event.state_entered_event_details() {
                // Only the parent's states: Map children run in their own executions.
                if event.r#type() != &HistoryEventType::MapIterationStarted {
                    facts.last_state = Some(entered.name().to_string());
                }
            }
            if let Some(exited) = event.state_exited_event_details()
                && exited.name() == states::PLAN
                && let Some(output) = exited.output()
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(output)
            {
                facts.plan = value.get("plan").cloned();
            }
        }
    }
    Ok(facts)
}

/// The Map Run's item counts; `None` before the Map starts, and when the Map Run cannot be
/// read (a report without shard counts is still a report).
async fn shard_counts(client: &aws_sdk_sfn::Client, execution_arn: &str) -> Option<ShardCounts> {
    match map_run_counts(client, execution_arn).await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(execution_arn, error = %e, "no map run counts");
            None
        }
    }
}

async fn map_run_counts(
    client: &aws_sdk_sfn::Client,
    execution_arn: &str,
) -> Result<Option<ShardCounts>, SfnError> {
    let runs = client
        .list_map_runs()
        .execution_arn(execution_arn)
        .send()
        .await
        .map_err(|e| api_error("ListMapRuns", &e))?;
    let Some(run) = runs.map_runs().first() else {
        return Ok(None);
    };
    let described = client
        .describe_map_run()
        .map_run_arn(run.map_run_arn())
        .send()
        .await
        .map_err(|e| api_error("DescribeMapRun", &e))?;
    Ok(described.item_counts().map(|c| ShardCounts {
        total: c.total().max(0) as u64,
        succeeded: c.succeeded().max(0) as u64,
        failed: (c.failed() + c.timed_out() + c.aborted()).max(0) as u64,
        running: c.running().max(0) as u64,
        pending: c.pending().max(0) as u64,
    }))
}

/// Objects and bytes done: the shards with a fragment, counted from the shard index.
async fn objects_done(
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    run_id: &str,
) -> Option<(u64, u64)> {
    let staging = Staging::new(store, bucket, run_id);
    let index: Vec<ShardRef> = staging.get(&staging.shard_index_key()).await.ok()??;
    let done = staging.fragments_present().await.ok()?;
    Some(
        index
            .iter()
            .filter(|s| done.contains(&s.shard))
            .fold((0, 0), |(o, b), s| (o + s.objects as u64, b + s.bytes)),
    )
}

/// Reports on an execution: see the module docs. `store` (reading the registry bucket) adds
/// object and byte counts while the shards are copied; without it they are known at the end.
pub async fn execution_report(
    client: &aws_sdk_sfn::Client,
    store: Option<Arc<dyn ObjectStore>>,
    execution_arn: &str,
) -> Result<ExecutionReport, SfnError> {
    let described = client
        .describe_execution()
        .execution_arn(execution_arn)
        .send()
        .await
        .map_err(|e| api_error("DescribeExecution", &e))?;
    let status = described.status().clone();
    let facts = history_facts(client, execution_arn).await?;
    let shards = shard_counts(client, execution_arn).await;
    let plan = facts.plan.as_ref();
    let number = |key: &str| plan.and_then(|p| p.get(key)?.as_u64()).unwrap_or(0);
    let run_id = plan
        .and_then(|p| p.get("run_id")?.as_str())
        .map(str::to_string);
    let output: Option<ExecutionOutput> = described
        .output()
        .and_then(|o| serde_json::from_str(o).ok());
    let phase = match status {
        ExecutionStatus::Succeeded => Phase::Succeeded,
        ExecutionStatus::Running | ExecutionStatus::PendingRedrive => {
            match facts.last_state.as_deref() {
                Some(states::COPY_SHARDS) => Phase::Copying,
                Some(states::FINALIZE | states::FINISH_COMMITTED) => Phase::Finalizing,
                Some(states::ROLLBACK | states::ROLLBACK_DONE | states::WAIT_FOR_COPIERS) => {
                    Phase::RollingBack
                }
                _ => Phase::Planning,
            }
        }
        _ => Phase::Failed,
    };
    let (objects_total, bytes_total) = (number("objects"), number("bytes"));
    let (objects_done, bytes_done) = match (&phase, &output) {
        (Phase::Succeeded, _) => (objects_total, bytes_total),
        (Phase::Copying | Phase::Finalizing, _) => {
            match (
                store,
                run_id.as_deref(),
                plan.and_then(|p| p.get("registry_bucket")?.as_str()),
            ) {
                (Some(store), Some(run_id), Some(bucket)) => {
                    objects_done(store, bucket, run_id).await.unwrap_or((0, 0))
                }
                _ => (0, 0),
            }
        }
        _ => (0, 0),
    };
    Ok(ExecutionReport {
        execution_arn: execution_arn.to_string(),
        status: status.as_str().to_string(),
        progress: ProgressSnapshot {
            phase,
            objects_total,
            bytes_total,
            objects_done,
            bytes_done,
        },
        run_id,
        shards,
        plan_summary: plan.and_then(|p| p.get("summary")).cloned(),
        output,
        error: described.error().map(str::to_string),
        cause: described.cause().map(str::to_string),
    })
}

/// Polls [`execution_report`] every `interval` until the execution ends, calling `on_report`
/// with each report (for a progress bar); returns the last one. Transient API failures are
/// retried at the next poll.
pub async fn follow_execution(
    client: &aws_sdk_sfn::Client,
    store: Option<Arc<dyn ObjectStore>>,
    execution_arn: &str,
    interval: Duration,
    mut on_report: impl FnMut(&ExecutionReport),
) -> Result<ExecutionReport, SfnError> {
    let mut failures = 0;
    loop {
        match execution_report(client, store.clone(), execution_arn).await {
            Ok(report) => {
                failures = 0;
                on_report(&report);
                if report.is_finished() {
                    return Ok(report);
                }
            }
            Err(SfnError::Api {
                transient: true, ..
            }) if failures < 10 => failures += 1,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PackageRequest;

    #[test]
    fn names_depend_on_token_and_input_only() {
        let input = ExecutionInput::new(PackageRequest::new("src-1", "d", "a/b", "reg-1"));
        let name = execution_name(&input, "token-1");
        assert!(name.starts_with("s3q-") && name.len() == 44, "{name}");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(name, execution_name(&input.clone(), "token-1"));
        assert_ne!(name, execution_name(&input, "token-2"));
        let mut other = input.clone();
        other.max_concurrency = Some(3);
        assert_ne!(name, execution_name(&other, "token-1"));
    }

    #[test]
    fn execution_arns_come_from_the_state_machine_arn() {
        assert_eq!(
            execution_arn(
                "arn:aws:states:us-east-1:123456789012:stateMachine:s3quilt-packager",
                "s3q-1"
            )
            .unwrap(),
            "arn:aws:states:us-east-1:123456789012:execution:s3quilt-packager:s3q-1"
        );
        assert!(execution_arn("arn:aws:lambda:us-east-1:1:function:x", "n").is_err());
    }
}
