//! The planner Lambda: the execution input (the packaging request) in, the run's staging area
//! written, the shard index key and counts out. Logic: `s3quilt_core::aws::plan_step`.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use s3quilt_core::aws::{PlannerOutput, StepConfig, plan_step};
use s3quilt_core::storage::{ObjectStore, S3Settings, S3Store};

/// One invocation (see `s3quilt_core::aws::events::PlannerEvent` for the event).
async fn handler(
    store: Arc<dyn ObjectStore>,
    config: &StepConfig,
    event: LambdaEvent<serde_json::Value>,
) -> Result<PlannerOutput, Diagnostic> {
    Ok(plan_step(store, config, event.payload).await?)
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
    use s3quilt_core::staging::{ShardRef, Staging};
    use s3quilt_tests::{SeedObject, create_bucket, moto, seed};
    use serde_json::json;

    fn event(payload: serde_json::Value) -> LambdaEvent<serde_json::Value> {
        LambdaEvent::new(payload, Context::default())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn plans_into_staging_and_reports_the_shard_index() {
        let client = moto().client().await;
        let (source, registry) = (
            create_bucket(&client, true).await,
            create_bucket(&client, true).await,
        );
        let objects: Vec<SeedObject> = (0..5)
            .map(|i| SeedObject::new(format!("in/{i}.txt"), format!("object {i}")))
            .collect();
        seed(&client, &source, &objects).await;
        let store = S3Store::shared(client);
        let mut config = StepConfig::default();
        config.plan.shard_max_objects = 2;
        let request = json!({"source_bucket": source, "source_prefix": "in",
                             "package_name": "team/pkg", "target_registry": registry});
        let input = json!({"request": request, "max_concurrency": 1000});
        let out = handler(
            store.clone(),
            &config,
            event(json!({"input": input, "execution_name": "e1"})),
        )
        .await
        .unwrap();
        assert!(!out.dry_run);
        assert_eq!((out.shards, out.objects), (3, 5));
        assert_eq!(
            out.max_concurrency,
            s3quilt_core::aws::events::MAX_CONCURRENCY_CAP
        );
        let run_id = out.run_id.clone().unwrap();
        let staging = Staging::new(store.clone(), &registry, &run_id);
        assert_eq!(
            out.shard_index_key.as_deref(),
            Some(staging.shard_index_key().as_str())
        );
        let index: Vec<ShardRef> = staging.require(&staging.shard_index_key()).await.unwrap();
        assert_eq!(index.iter().map(|s| s.shard).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(
            index
                .iter()
                .all(|s| s.run_id == run_id && s.registry_bucket == registry)
        );

        // The output is what the state machine reads: the paths it uses must be there.
        let json = serde_json::to_value(&out).unwrap();
        for key in [
            "dry_run",
            "run_id",
            "registry_bucket",
            "shard_index_key",
            "max_concurrency",
            "summary",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }

        // A dry run (the bare request form) writes nothing and says so.
        let dry = json!({"source_bucket": source, "source_prefix": "in", "package_name": "team/pkg",
                         "target_registry": registry, "dry_run": true});
        let out = handler(store, &config, event(json!({"input": dry})))
            .await
            .unwrap();
        assert!(out.dry_run && out.run_id.is_none() && out.shard_index_key.is_none());
        assert_eq!(out.objects, 5);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_requests_and_events_are_invalid_request() {
        let store = S3Store::shared(moto().client().await);
        let config = StepConfig::default();
        let cases = [
            json!({"input": {"source_bucket": "src-1", "package_name": "nopkg", "target_registry": "reg-1"}}),
            json!({"input": {"source_bucket": "src-1", "package_name": "a/b", "target_registry": "reg-1", "flaten": true}}),
            json!({"request": {}}),
            json!("not an object"),
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
        let err = handler(
            store.clone(),
            &config,
            event(json!({"input": {"source_bucket": "no-such-bucket-1", "package_name": "a/b", "target_registry": "reg-1"}})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type, "S3Quilt.NotFound", "{}", err.error_message);
    }
}
