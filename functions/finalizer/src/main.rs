//! The finalizer Lambda: a run in, its manifest and pointers written (only when every shard
//! has its fragment), its staging area removed, the package out. Logic:
//! `s3quilt_core::aws::finalize_step`.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use s3quilt_core::aws::finalize_step;
use s3quilt_core::finalize::PackageResult;
use s3quilt_core::storage::{ObjectStore, S3Settings, S3Store};

/// One invocation (see `s3quilt_core::aws::events::RunRef` for the event).
async fn handler(
    store: Arc<dyn ObjectStore>,
    event: LambdaEvent<serde_json::Value>,
) -> Result<PackageResult, Diagnostic> {
    Ok(finalize_step(store, event.payload).await?)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let store = S3Store::shared(S3Settings::from_env().client().await);
    lambda_runtime::run(service_fn(move |event| handler(store.clone(), event))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_runtime::Context;
    use s3quilt_core::copy::{CopyOptions, copy_shard_from_staging};
    use s3quilt_core::plan::{PlanOptions, plan};
    use s3quilt_core::registry::Registry;
    use s3quilt_core::request::PackageRequest;
    use s3quilt_core::staging::Staging;
    use s3quilt_tests::{SeedObject, create_bucket, moto, seed};
    use serde_json::json;

    fn event(payload: serde_json::Value) -> LambdaEvent<serde_json::Value> {
        LambdaEvent::new(payload, Context::default())
    }

    /// A run of 3 objects in 3 shards, the shards in `copied` copied.
    async fn run_with(copied: &[u32]) -> (Arc<dyn ObjectStore>, String, String) {
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
            shard_max_objects: 1,
            ..PlanOptions::default()
        };
        let request = PackageRequest::new(&source, "d", "team/pkg", &registry);
        let run = plan(store.clone(), &request, &options)
            .await
            .unwrap()
            .run
            .unwrap();
        for &shard in copied {
            copy_shard_from_staging(
                store.clone(),
                &registry,
                &run.run_id,
                shard,
                &CopyOptions::new(4),
            )
            .await
            .unwrap();
        }
        (store, registry, run.run_id)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_the_package_when_every_fragment_is_there() {
        let (store, registry, run_id) = run_with(&[0, 1, 2]).await;
        let package = handler(
            store.clone(),
            event(json!({"run_id": run_id, "registry_bucket": registry})),
        )
        .await
        .unwrap();
        assert_eq!(
            (package.objects, package.package_name.as_str()),
            (3, "team/pkg")
        );
        let latest = Registry::new(store.clone(), &registry)
            .latest(&"team/pkg".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(latest, package.top_hash);
        let staging = Staging::new(store, &registry, &run_id);
        assert!(
            staging
                .get::<serde_json::Value>(&staging.plan_key())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_fragment_fails_and_writes_nothing() {
        let (store, registry, run_id) = run_with(&[0, 2]).await;
        let err = handler(
            store.clone(),
            event(json!({"run_id": run_id, "registry_bucket": registry})),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.error_type, "S3Quilt.MissingFragments",
            "{}",
            err.error_message
        );
        assert!(err.error_message.contains("[1]"), "{}", err.error_message);
        let pointers = s3quilt_core::storage::list_all(
            store.as_ref(),
            &registry,
            ".quilt/",
            &Default::default(),
        )
        .await
        .unwrap();
        assert!(pointers.is_empty(), "{pointers:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_events_are_invalid_request() {
        let store = S3Store::shared(moto().client().await);
        for payload in [
            json!({"run_id": "r-1"}),
            json!({"run_id": "a/b", "registry_bucket": "reg-1"}),
            json!([]),
        ] {
            let err = handler(store.clone(), event(payload.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                err.error_type, "S3Quilt.InvalidRequest",
                "{payload}: {}",
                err.error_message
            );
        }
    }
}
