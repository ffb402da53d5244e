//! The copier Lambda: one Distributed Map item (one shard) in, its objects copied and its
//! manifest fragment written. Logic: `s3quilt_core::aws::copy_step`.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use s3quilt_core::aws::{CopierOutput, StepConfig, copy_step, lambda_deadline};
use s3quilt_core::storage::{ObjectStore, S3Settings, S3Store};

/// One invocation (see `s3quilt_core::aws::events::CopierEvent` for the event).
async fn handler(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: LambdaEvent<serde_json::Value>,
) -> Result<CopierOutput, Diagnostic> {
    let deadline = lambda_deadline(event.context.deadline);
    Ok(copy_step(store, config, event.payload, deadline).await?)
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
    use s3quilt_core::plan::{PlanOptions, plan};
    use s3quilt_core::request::PackageRequest;
    use s3quilt_core::staging::Staging;
    use s3quilt_tests::{SeedObject, create_bucket, moto, seed};
    use serde_json::json;

    fn event(payload: serde_json::Value) -> LambdaEvent<serde_json::Value> {
        LambdaEvent::new(payload, Context::default())
    }

    /// A planned run of 3 objects in 2 shards: (store, registry, run id, source bucket).
    async fn planned() -> (Arc<dyn ObjectStore>, String, String, String) {
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
        let store = S3Store::shared(client);
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
        (store, registry, run.run_id, source)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn copies_a_shard_once() {
        let (store, registry, run_id, _) = planned().await;
        let config = StepConfig::default();
        let payload = json!({"run_id": run_id, "registry_bucket": registry, "shard": 0});
        let out = handler(store.clone(), &config, event(payload.clone()))
            .await
            .unwrap();
        assert_eq!((out.shard, out.objects, out.already_done), (0, 2, false));
        let staging = Staging::new(store.clone(), &registry, &run_id);
        assert_eq!(staging.fragments_present().await.unwrap(), [0]);
        // A retried item finds its fragment and copies nothing.
        let again = handler(store, &config, event(payload)).await.unwrap();
        assert_eq!((again.objects, again.already_done), (2, true));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_source_deleted_after_planning_fails_for_good() {
        let (store, registry, run_id, source) = planned().await;
        store.delete(&source, "d/c.txt", None).await.unwrap();
        let payload = json!({"run_id": run_id, "registry_bucket": registry, "shard": 1});
        let err = handler(store.clone(), &StepConfig::default(), event(payload))
            .await
            .unwrap_err();
        assert_eq!(
            err.error_type, "S3Quilt.SourceChanged",
            "{}",
            err.error_message
        );
        assert!(
            err.error_message.contains("d/c.txt"),
            "{}",
            err.error_message
        );
        let staging = Staging::new(store, &registry, &run_id);
        assert!(staging.fragments_present().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_events_are_invalid_request() {
        let (store, registry, run_id, _) = planned().await;
        let config = StepConfig::default();
        let cases = [
            json!({"run_id": run_id, "registry_bucket": registry}),
            json!({"run_id": "../etc", "registry_bucket": registry, "shard": 0}),
            json!({"run_id": run_id, "registry_bucket": registry, "shard": 0, "extra": 1}),
            json!({"run_id": run_id, "registry_bucket": registry, "shard": 9}),
        ];
        for payload in cases {
            let err = handler(store.clone(), &config, event(payload.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                err.error_type, "S3Quilt.InvalidRequest",
                "{payload}: {}",
                err.error_message
            );
        }
        let unknown_run =
            json!({"run_id": "20200101T000000Z-00000000", "registry_bucket": registry, "shard": 0});
        let err = handler(store, &config, event(unknown_run))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "S3Quilt.NotFound", "{}", err.error_message);
    }
}
