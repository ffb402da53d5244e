//! The AWS engine's core side: the events the planner, copier, finalizer and rollback Lambdas
//! take and return, the error names the state machine matches, and Step Functions progress.
//!
//! - [`events`]: the JSON contract between `infra/statemachine.asl.json` and the Lambdas,
//!   including the execution input (the CLI's request JSON) and output.
//! - [`errors`]: [`ErrorType`] (`S3Quilt.Transient`, `S3Quilt.InvalidRequest`, …), the one
//!   mapping from core errors to those names, and its `lambda_runtime::Diagnostic` form.
//! - [`steps`]: what each Lambda does, as library functions over an
//!   [`ObjectStore`](crate::storage::ObjectStore) (the binaries are thin mains around these).
//! - [`sfn`]: start an execution idempotently and report its status and progress.

pub mod errors;
pub mod events;
pub mod sfn;
pub mod steps;

pub use errors::{ErrorType, StepError};
pub use events::{
    CopierEvent, CopierOutput, ExecutionInput, ExecutionOutput, ExecutionStatusEvent,
    JanitorOutput, JanitorRun, PlannerEvent, PlannerOutput, RollbackEvent, RollbackOutput, RunRef,
    StateError,
};
pub use sfn::{
    ExecutionReport, SfnError, ShardCounts, StartedExecution, execution_name, execution_report,
    follow_execution, sfn_client_from_env, start_execution,
};
pub use steps::{
    RollbackFunctionOutput, StepConfig, copy_step, finalize_step, janitor_step, lambda_deadline,
    plan_step, rollback_function, rollback_step,
};
