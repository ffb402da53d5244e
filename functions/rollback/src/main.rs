//! The rollback Lambda: a failed run and its error in, everything the run created (and its
//! staging area) deleted, the error the execution fails with out; deployed a second time as
//! the janitor, it takes EventBridge execution status changes. Logic:
//! `s3quilt_core::aws::rollback_function`.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use s3quilt_core::aws::{RollbackFunctionOutput, StepConfig, lambda_deadline, rollback_function};
use s3quilt_core::storage::{ObjectStore, S3Settings, S3Store};

/// One invocation (see `s3quilt_core::aws::events::RollbackEvent` and
/// `ExecutionStatusEvent` for the events).
async fn handler(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: LambdaEvent<serde_json::Value>,
) -> Result<RollbackFunctionOutput, Diagnostic> {
    let deadline = lambda_deadline(event.context.deadline);
    Ok(rollback_function(store, config, event.payload, deadline).await?)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let store = S3Store::shared(S3Settings::from_env().client().await);
    let config = StepConfig::from_env();
    let config = &config;
    lambda_runtime::run(service_fn(move |event| {
        handler(store.clone(), config, event)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_runtime::Context;
    use s3quilt_core::copy::{CopyOptions, copy_shard_from_staging};
    use s3quilt_core::plan::{PlanOptions, plan};
    use s3quilt_core::request::PackageRequest;
    use s3quilt_tests::{SeedObject, create_bucket, list_all_versions, moto, seed};
    use serde_json::json;

    fn event(payload: serde_json::Value) -> LambdaEvent<serde_json::Value> {
        LambdaEvent::new(payload, Context::default())
    }

    /// The state machine's rollback through the handler.
    async fn rollback(
        store: Arc<dyn ObjectStore>,
        payload: serde_json::Value,
    ) -> Result<s3quilt_core::aws::RollbackOutput, Diagnostic> {
        match handler(store, &StepConfig::default(), event(payload)).await? {
            RollbackFunctionOutput::Rollback(out) => Ok(out),
            other => panic!("not a rollback answer: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn removes_what_the_run_made_and_explains_the_failure() {
        let client = moto().client().await;
        let (source, registry) = (
            create_bucket(&client, true).await,
            create_bucket(&client, true).await,
        );
        let objects: Vec<SeedObject> = ["a", "b", "c"]
            .iter()
            .map(|k| SeedObject::new(format!("d/{k}.txt"), format!("body {k}")))
            .collect();
        seed(&client, &source, &objects).await;
        let store = S3Store::shared(client.clone());
        let options = PlanOptions {
            shard_max_objects: 2,
            ..PlanOptions::default()
        };
        let request = PackageRequest::new(&source, "d", "team/pkg", &registry);
        let run = plan(store.clone(), &request, &options)
            .await
            .unwrap()
            .run
            .unwrap();
        copy_shard_from_staging(
            store.clone(),
            &registry,
            &run.run_id,
            0,
            &CopyOptions::new(4),
        )
        .await
        .unwrap();
        store.delete(&source, "d/c.txt", None).await.unwrap();
        copy_shard_from_staging(
            store.clone(),
            &registry,
            &run.run_id,
            1,
            &CopyOptions::new(4),
        )
        .await
        .unwrap_err();
        assert!(!list_all_versions(&client, &registry).await.is_empty());

        // What Step Functions reports when a Map child failed.
        let payload = json!({"run_id": run.run_id, "registry_bucket": registry,
                             "error": {"Error": "States.ExceedToleratedFailureThreshold",
                                       "Cause": "The tolerated failure threshold was exceeded"}});
        let out = rollback(store, payload).await.unwrap();
        assert_eq!(out.error, "S3Quilt.CopyFailed");
        assert_eq!(out.deleted, 2);
        assert!(out.not_deleted.is_empty(), "{:?}", out.not_deleted);
        assert!(
            out.cause.starts_with(
                "States.ExceedToleratedFailureThreshold: The tolerated failure threshold was exceeded; failed shards: shard 1: "
            ),
            "{}",
            out.cause
        );
        assert!(out.cause.contains("d/c.txt"), "{}", out.cause);
        assert!(
            out.cause.ends_with("rolled back: 2 objects removed)"),
            "{}",
            out.cause
        );
        let left = list_all_versions(&client, &registry).await;
        assert!(left.is_empty(), "the registry keeps {left:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn error_names_pass_through_except_step_functions_own() {
        let store = S3Store::shared(moto().client().await);
        let registry = create_bucket(&moto().client().await, false).await;
        let cases = [
            (
                "S3Quilt.MissingFragments",
                "S3Quilt.MissingFragments",
                "shards [1] have none",
            ),
            (
                "States.Timeout",
                "S3Quilt.StepFailed",
                "States.Timeout: shards [1] have none",
            ),
            ("", "S3Quilt.StepFailed", "shards [1] have none"),
        ];
        for (given, want, cause_start) in cases {
            let cause = json!({"errorType": given, "errorMessage": "shards [1] have none"});
            let payload = json!({"run_id": "20200101T000000Z-00000001", "registry_bucket": registry,
                                 "error": {"Error": given, "Cause": cause.to_string()}});
            let out = rollback(store.clone(), payload).await.unwrap();
            assert_eq!(out.error, want);
            assert!(out.cause.starts_with(cause_start), "{}", out.cause);
            assert_eq!(out.deleted, 0);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_events_are_invalid_request() {
        let store = S3Store::shared(moto().client().await);
        for payload in [
            json!({"registry_bucket": "reg-1"}),
            json!({"run_id": "r-1", "registry_bucket": "BAD"}),
        ] {
            let err = rollback(store.clone(), payload.clone()).await.unwrap_err();
            assert_eq!(
                err.error_type, "S3Quilt.InvalidRequest",
                "{payload}: {}",
                err.error_message
            );
        }
    }
}
