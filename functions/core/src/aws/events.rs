//! What the state machine passes to each Lambda and gets back: the contract between
//! `infra/statemachine.asl.json` and the handlers. Steps pass only ids and small counts; the
//! plan, shards and fragments live in the run's staging area (see [`crate::staging`]).
//!
//! Events are parsed here (not by the Lambda runtime) so that a malformed event fails with
//! `S3Quilt.InvalidRequest` and a message naming the field, like every other bad input.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::errors::StepError;
use crate::plan::PlanSummary;
use crate::request::{PackageRequest, parse_bucket};
use crate::staging::is_valid_run_id;

/// Distributed Map concurrency when the input does not set one.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 10;
/// Highest Distributed Map concurrency accepted (higher values are lowered to it): every copier
/// keeps many copies in flight, and S3 allows about 3,500 writes per second per prefix.
pub const MAX_CONCURRENCY_CAP: u32 = 200;

/// The state machine's execution input: the packaging request, exactly as the CLI takes it
/// (`{"source_bucket": …, "package_name": …, …}`), or wrapped with engine settings:
/// `{"request": {…}, "max_concurrency": 32}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionInput {
    /// The packaging request.
    pub request: PackageRequest,
    /// Shards copied at once (default [`DEFAULT_MAX_CONCURRENCY`], at most
    /// [`MAX_CONCURRENCY_CAP`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedInput {
    request: PackageRequest,
    #[serde(default)]
    max_concurrency: Option<u32>,
}

impl ExecutionInput {
    /// Input holding just `request`.
    pub fn new(request: PackageRequest) -> Self {
        ExecutionInput {
            request,
            max_concurrency: None,
        }
    }

    /// Parses either form; errors name the field.
    pub fn parse(value: serde_json::Value) -> Result<Self, StepError> {
        let wrapped = value.as_object().is_some_and(|o| o.contains_key("request"));
        if wrapped {
            let w: WrappedInput = parse_value("execution input", value)?;
            Ok(ExecutionInput {
                request: w.request,
                max_concurrency: w.max_concurrency,
            })
        } else {
            Ok(ExecutionInput::new(parse_value("request", value)?))
        }
    }

    /// The JSON to start an execution with: the bare request when there are no engine
    /// settings (the same JSON the CLI takes), else the wrapped form.
    pub fn to_json(&self) -> serde_json::Value {
        match self.max_concurrency {
            None => serde_json::to_value(&self.request).expect("requests serialize"),
            Some(_) => serde_json::to_value(self).expect("inputs serialize"),
        }
    }

    /// The effective Map concurrency: the default when unset, lowered to the cap.
    pub fn effective_max_concurrency(&self) -> Result<u32, StepError> {
        match self.max_concurrency {
            None => Ok(DEFAULT_MAX_CONCURRENCY),
            Some(0) => Err(StepError::invalid(format!(
                "max_concurrency: 0 is not allowed; give 1 to {MAX_CONCURRENCY_CAP} (default {DEFAULT_MAX_CONCURRENCY})"
            ))),
            Some(n) => Ok(n.min(MAX_CONCURRENCY_CAP)),
        }
    }
}

/// Parses an event (or part of one), mapping serde's message to `S3Quilt.InvalidRequest`.
pub fn parse_value<T: DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, StepError> {
    serde_json::from_value(value).map_err(|e| StepError::invalid(format!("{what}: {e}")))
}

/// The planner's event: the execution input and the execution's name (for the logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerEvent {
    /// The execution input ([`ExecutionInput`], either form).
    pub input: serde_json::Value,
    /// `$$.Execution.Name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_name: Option<String>,
    /// `$$.Execution.Id` (the execution's ARN): recorded in the plan, so the janitor finds
    /// the run of an execution that ended without a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
}

/// The planner's result: what the Map and the finalizer need, and the plan summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannerOutput {
    /// A dry run planned only: the state machine ends after the plan.
    pub dry_run: bool,
    /// An incremental run found nothing changed since its base: the state machine ends after
    /// the plan, and no version is written.
    #[serde(default)]
    pub up_to_date: bool,
    /// The run (absent for a dry run).
    pub run_id: Option<String>,
    /// Registry bucket holding the run's staging area.
    pub registry_bucket: String,
    /// Key of the shard index the Map's ItemReader reads (a JSON array of
    /// [`crate::staging::ShardRef`]).
    pub shard_index_key: Option<String>,
    /// Shards (= Map items).
    pub shards: u32,
    /// Objects selected.
    pub objects: u64,
    /// Bytes selected.
    pub bytes: u64,
    /// The Map's MaxConcurrency (default and cap applied).
    pub max_concurrency: u32,
    /// The plan summary, as the local engine reports it.
    pub summary: PlanSummary,
}

/// A run in a registry: the finalizer's event, and part of the copier's and rollback's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    /// Run id.
    pub run_id: String,
    /// Registry bucket holding its staging area.
    pub registry_bucket: String,
}

impl RunRef {
    /// Checks the run id's shape and the bucket name.
    pub fn validate(&self) -> Result<(), StepError> {
        if !is_valid_run_id(&self.run_id) {
            return Err(StepError::invalid(format!(
                "run_id: {:?} is not a run id (letters, digits and `-`, at most 64)",
                self.run_id
            )));
        }
        parse_bucket("registry_bucket", &self.registry_bucket)
            .map_err(|e| StepError::invalid(e.to_string()))?;
        Ok(())
    }
}

/// The copier's event: one Map item (one shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopierEvent {
    /// Run id.
    pub run_id: String,
    /// Registry bucket.
    pub registry_bucket: String,
    /// Shard number.
    pub shard: u32,
}

/// What a copier did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopierOutput {
    /// Shard number.
    pub shard: u32,
    /// Entries in its fragment.
    pub objects: u64,
    /// Bytes in its fragment.
    pub bytes: u64,
    /// The fragment existed already (a retried item did nothing).
    pub already_done: bool,
}

/// A Step Functions error as `Catch` records it (`ResultPath: "$.error"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateError {
    /// Error name (`S3Quilt.CopyFailed`, `States.TaskFailed`, …).
    #[serde(rename = "Error", default)]
    pub error: String,
    /// Cause: for a Lambda error the JSON `{"errorType", "errorMessage", …}`, else text.
    #[serde(rename = "Cause", default)]
    pub cause: String,
}

impl StateError {
    /// The cause as a message: a Lambda error's `errorMessage`, else the cause as given.
    pub fn message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.cause)
            .ok()
            .and_then(|v| v.get("errorMessage")?.as_str().map(str::to_string))
            .unwrap_or_else(|| self.cause.clone())
    }
}

/// The rollback Lambda's event: the run and the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackEvent {
    /// Run id.
    pub run_id: String,
    /// Registry bucket.
    pub registry_bucket: String,
    /// What failed.
    #[serde(default)]
    pub error: StateError,
}

/// What rollback did, and the error the execution fails with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackOutput {
    /// The error name the execution fails with: the original one, except that Step
    /// Functions' own `States.*` names become `S3Quilt.CopyFailed` (when shards recorded
    /// failures) or `S3Quilt.StepFailed` (named in the cause).
    pub error: String,
    /// The cause the execution fails with: the original message, the failed shards' own
    /// errors, and what rollback removed or could not remove (bounded: a few are quoted).
    pub cause: String,
    /// Object versions deleted from the target.
    pub deleted: usize,
    /// What could not be deleted (needs a person); at most [`QUOTED_NOT_DELETED`] are named
    /// here, the full list is kept in the run's staging area (`rollback-report.json`).
    pub not_deleted: Vec<String>,
    /// How many could not be deleted in all.
    #[serde(default)]
    pub not_deleted_count: usize,
    /// `false` while copiers of the run may still be writing: `aborted` is decided, nothing
    /// is deleted yet, and the state machine waits `wait_seconds` and calls rollback again.
    #[serde(default = "settled_default")]
    pub settled: bool,
    /// How long to wait before calling again (when not `settled`).
    #[serde(default)]
    pub wait_seconds: u64,
    /// Set when the run had passed its commit point: it is never rolled back, and the state
    /// machine finishes it with the finalizer instead (`top hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<String>,
}

fn settled_default() -> bool {
    true
}

/// The most `not_deleted` entries a [`RollbackOutput`] names (Step Functions limits a state's
/// data to 256 KiB).
pub const QUOTED_NOT_DELETED: usize = 20;

/// An EventBridge "Step Functions Execution Status Change" event, as the janitor receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionStatusEvent {
    /// `Step Functions Execution Status Change`.
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    /// The execution.
    pub detail: ExecutionStatusDetail,
}

/// The `detail` of an [`ExecutionStatusEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionStatusDetail {
    /// The execution's ARN.
    #[serde(rename = "executionArn")]
    pub execution_arn: String,
    /// `RUNNING`, `SUCCEEDED`, `FAILED`, `TIMED_OUT` or `ABORTED`.
    pub status: String,
    /// The execution's input (JSON text), when EventBridge included it.
    #[serde(default)]
    pub input: Option<String>,
}

/// What the janitor did with one run of an execution that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JanitorRun {
    /// Run id.
    pub run_id: String,
    /// `rolled_back`, `finished` (it had committed) or `left` (see `not_deleted`).
    pub action: String,
    /// Object versions deleted.
    pub deleted: usize,
    /// What could not be deleted or finished (at most [`QUOTED_NOT_DELETED`]).
    pub not_deleted: Vec<String>,
}

/// What the janitor did for one ended execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JanitorOutput {
    /// The execution.
    pub execution_arn: String,
    /// Its status.
    pub status: String,
    /// Runs of it found in staging (none when its own rollback or finalizer cleaned up).
    pub runs: Vec<JanitorRun>,
}

/// The execution's output: `{"status": "created", "plan": …, "package": …}`, for a dry
/// run `{"status": "planned", "plan": …}`, for an incremental run that found nothing changed
/// `{"status": "up_to_date", "plan": …}` (`plan` is the [`PlanSummary`], `package` the
/// [`crate::finalize::PackageResult`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionOutput {
    /// `created`, `planned` or `up_to_date`.
    pub status: String,
    /// The plan summary.
    pub plan: serde_json::Value,
    /// The package (when created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> serde_json::Value {
        json!({"source_bucket": "src-1", "source_prefix": "data", "package_name": "team/pkg",
               "target_registry": "s3://reg-1"})
    }

    #[test]
    fn input_is_the_request_or_a_wrapper() {
        let bare = ExecutionInput::parse(request()).unwrap();
        assert_eq!(bare.request.package_name, "team/pkg");
        assert_eq!(bare.max_concurrency, None);
        assert_eq!(bare.to_json(), serde_json::to_value(&bare.request).unwrap());
        assert_eq!(
            bare.effective_max_concurrency().unwrap(),
            DEFAULT_MAX_CONCURRENCY
        );

        let wrapped =
            ExecutionInput::parse(json!({"request": request(), "max_concurrency": 5000})).unwrap();
        assert_eq!(wrapped.max_concurrency, Some(5000));
        assert_eq!(
            wrapped.effective_max_concurrency().unwrap(),
            MAX_CONCURRENCY_CAP
        );
        assert_eq!(ExecutionInput::parse(wrapped.to_json()).unwrap(), wrapped);

        let zero =
            ExecutionInput::parse(json!({"request": request(), "max_concurrency": 0})).unwrap();
        assert!(
            zero.effective_max_concurrency()
                .unwrap_err()
                .message
                .contains("max_concurrency")
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let mut typo = request();
        typo["flaten"] = json!(true);
        let e = ExecutionInput::parse(typo).unwrap_err();
        assert_eq!(e.error_type, super::super::ErrorType::InvalidRequest);
        assert!(e.message.contains("flaten"), "{}", e.message);
        let e =
            ExecutionInput::parse(json!({"request": request(), "max_concurency": 3})).unwrap_err();
        assert!(e.message.contains("max_concurency"), "{}", e.message);
        let e = parse_value::<CopierEvent>("copier event", json!({"run_id": "r"})).unwrap_err();
        assert!(e.message.contains("registry_bucket"), "{}", e.message);
    }

    #[test]
    fn run_refs_are_checked() {
        let ok = RunRef {
            run_id: "20261123T101010Z-0a1b2c3d".into(),
            registry_bucket: "reg-1".into(),
        };
        ok.validate().unwrap();
        let bad_id = RunRef {
            run_id: "../x".into(),
            ..ok.clone()
        };
        assert!(bad_id.validate().unwrap_err().message.starts_with("run_id"));
        let bad_bucket = RunRef {
            registry_bucket: "Bad_Bucket".into(),
            ..ok
        };
        assert!(
            bad_bucket
                .validate()
                .unwrap_err()
                .message
                .contains("registry_bucket")
        );
    }

    #[test]
    fn state_error_messages_unwrap_lambda_causes() {
        let lambda = StateError {
            error: "S3Quilt.CopyFailed".into(),
            cause: r#"{"errorType":"S3Quilt.CopyFailed","errorMessage":"copying s3://b/k: gone"}"#
                .into(),
        };
        assert_eq!(lambda.message(), "copying s3://b/k: gone");
        let plain = StateError {
            error: "States.ExceedToleratedFailureThreshold".into(),
            cause: "The specified tolerated failure threshold was exceeded".into(),
        };
        assert_eq!(plain.message(), plain.cause);
    }
}
