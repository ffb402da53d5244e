//! The steps' failure paths on a real S3 server (moto), each with the error it must give and the
//! S3 state it must leave: a source replaced after planning, a destination that appeared after
//! planning, a multipart copy that cannot complete, a retried copy whose first attempt landed,
//! fragments that do not add up, registry writes that fail half way, a rollback that cannot
//! delete, unreadable staging documents, and objects S3 gave no SHA-256 for.
//!
//! Where moto does not implement an S3 answer (it ignores `x-amz-copy-source-if-match` and
//! `If-None-Match` on CopyObject), the answer S3 gives is injected with [`InstrumentedStore`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use s3quilt_core::aws::{
    ErrorType, RollbackFunctionOutput, StepConfig, StepError, rollback_function, rollback_step,
};
use s3quilt_core::copy::{CopyError, CopyOptions, copy_shard_from_staging};
use s3quilt_core::engine::{EngineError, EngineOptions, Phase, Progress, RunOutcome, run_local};
use s3quilt_core::finalize::{FinalizeError, finalize};
use s3quilt_core::plan::{Plan, PlanOptions, plan};
use s3quilt_core::quilt::{HashType, ObjectHasher, PackageName, PhysicalKey};
use s3quilt_core::registry::{Registry, RegistryError, WrittenObject};
use s3quilt_core::request::{ObjectMetadata, PackageRequest};
use s3quilt_core::staging::{
    FailureRecord, ManifestFragment, RunPlan, Shard, Staging, StagingError,
};
use s3quilt_core::storage::{
    ByteChunks, CopiedPart, CopyRequest, ListPage, ObjectInfo, ObjectStore, ObjectVersion,
    PartCopyRequest, PutOptions, S3Store, StoreError, StoreErrorKind, VersionNotDeleted,
    Versioning, WriteChecksum, WriteResult,
};
use s3quilt_core::transaction::{
    AbortProgress, TransactionError, abort_fenced, abort_run, clear_earlier_attempts,
    new_attempt_id, open_attempt, resume_run,
};
use s3quilt_tests::{
    FaultRule, InstrumentedStore, SeedObject, create_bucket, get_bytes, list_all_versions, moto,
    seed,
};
use serde_json::json;

const MIB: usize = 1024 * 1024;
const PACKAGE: &str = "team/pkg";

fn big(seed: u8) -> Vec<u8> {
    (0..9 * MIB)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
}

/// A planned run on moto: source `data/…` (versioned), the registry (also the target).
struct Planned {
    client: aws_sdk_s3::Client,
    source: String,
    registry: String,
    store: Arc<dyn ObjectStore>,
    plan: Plan,
}

impl Planned {
    async fn new(
        versioned_registry: bool,
        objects: &[SeedObject],
        edit: impl FnOnce(&mut PackageRequest),
    ) -> Planned {
        let server = moto();
        let client = server.client().await;
        let source = create_bucket(&client, true).await;
        let registry = create_bucket(&client, versioned_registry).await;
        seed(&client, &source, objects).await;
        let store = S3Store::shared(server.client().await);
        let mut request = PackageRequest::new(&source, "data", PACKAGE, &registry);
        edit(&mut request);
        let plan = plan(store.clone(), &request, &PlanOptions::default())
            .await
            .unwrap();
        Planned {
            client,
            source,
            registry,
            store,
            plan,
        }
    }

    fn run_id(&self) -> &str {
        &self.plan.run.as_ref().unwrap().run_id
    }

    fn staging(&self) -> Staging {
        Staging::new(self.store.clone(), &self.registry, self.run_id())
    }

    fn planned_etag(&self, key: &str) -> String {
        self.plan.shards[0]
            .objects
            .iter()
            .find(|o| o.key == key)
            .and_then(|o| o.etag.clone())
            .unwrap()
    }

    async fn copy(&self, store: Arc<dyn ObjectStore>) -> Result<ManifestFragment, CopyError> {
        copy_shard_from_staging(
            store,
            &self.registry,
            self.run_id(),
            0,
            &CopyOptions::new(4),
        )
        .await
        .map(|outcome| outcome.fragment)
    }

    async fn etag(&self, bucket: &str, key: &str) -> String {
        self.client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .to_string()
    }

    /// Keys (with versions) under `prefix` in the registry.
    async fn registry_keys(&self, prefix: &str) -> Vec<String> {
        list_all_versions(&self.client, &self.registry)
            .await
            .into_iter()
            .filter(|(key, _, _)| key.starts_with(prefix))
            .map(|(key, _, _)| key)
            .collect()
    }

    async fn open_uploads(&self) -> usize {
        self.client
            .list_multipart_uploads()
            .bucket(&self.registry)
            .send()
            .await
            .unwrap()
            .uploads()
            .len()
    }
}

fn step_type(error: CopyError) -> ErrorType {
    StepError::from(error).error_type
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_replaced_after_planning_fails_with_both_etags() {
    // The multipart path reads the source's metadata before it starts; the single-part path
    // reads it beside the copy. Either way the changed ETag is named, and nothing is left.
    for key in ["data/big.bin", "data/a.csv"] {
        let run = Planned::new(
            true,
            &[
                SeedObject::new("data/a.csv", b"one".to_vec()),
                SeedObject::new("data/big.bin", big(0)),
            ],
            |_| {},
        )
        .await;
        let replacement = if key == "data/a.csv" {
            b"two!".to_vec()
        } else {
            big(7)
        };
        seed(
            &run.client,
            &run.source,
            &[SeedObject::new(key, replacement)],
        )
        .await;
        let err = run.copy(run.store.clone()).await.unwrap_err();
        let (planned, now) = (run.planned_etag(key), run.etag(&run.source, key).await);
        assert_ne!(planned, now);
        match &err {
            CopyError::SourceChanged {
                bucket,
                key: failed,
                planned: p,
                now: n,
            } => assert_eq!(
                (bucket, failed.as_str(), p, n),
                (&run.source, key, &planned, &now)
            ),
            other => panic!("{key}: expected SourceChanged, got {other}"),
        }
        assert!(err.to_string().contains("re-run"), "{err}");
        assert_eq!(step_type(err), ErrorType::SourceChanged);
        assert_eq!(run.open_uploads().await, 0, "{key}: no upload left open");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_conditional_copy_tells_a_changed_source_from_an_existing_destination() {
    // With `object_metadata: listing` there is no HEAD beside the copy: a 412 from the
    // conditional copy (source ETag pinned, `If-None-Match: *` on an unversioned target) is
    // told apart by reading the source's ETag again.
    let refused = || {
        vec![FaultRule {
            operation: "CopyObject",
            calls: 1..=usize::MAX,
            kind: StoreErrorKind::PreconditionFailed,
        }]
    };
    let objects = [SeedObject::new("data/a.csv", b"one".to_vec())];
    let listing = |r: &mut PackageRequest| r.object_metadata = ObjectMetadata::Listing;

    let run = Planned::new(false, &objects, listing).await;
    let store = InstrumentedStore::new(run.store.clone(), refused());
    match run.copy(store.clone()).await.unwrap_err() {
        CopyError::DestinationExists { bucket, key } => {
            assert_eq!(
                (bucket.as_str(), key.as_str()),
                (run.registry.as_str(), "team/pkg/a.csv")
            )
        }
        other => panic!("expected DestinationExists, got {other}"),
    }
    assert_eq!(store.count("CopyObject"), 1, "a 412 is not retried");
    assert_eq!(
        store.count("HeadObject"),
        1,
        "the source's ETag is read once"
    );

    let run = Planned::new(false, &objects, listing).await;
    seed(
        &run.client,
        &run.source,
        &[SeedObject::new("data/a.csv", b"changed".to_vec())],
    )
    .await;
    let store = InstrumentedStore::new(run.store.clone(), refused());
    match run.copy(store).await.unwrap_err() {
        CopyError::SourceChanged {
            key, planned, now, ..
        } => {
            assert_eq!(key, "data/a.csv");
            assert_eq!(planned, run.planned_etag("data/a.csv"));
            assert_eq!(now, run.etag(&run.source, "data/a.csv").await);
        }
        other => panic!("expected SourceChanged, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_appeared_after_planning_is_kept_and_the_upload_aborted() {
    let run = Planned::new(false, &[SeedObject::new("data/big.bin", big(0))], |_| {}).await;
    // Someone writes the destination key between planning and copying.
    seed(
        &run.client,
        &run.registry,
        &[SeedObject::new("team/pkg/big.bin", b"not ours".to_vec())],
    )
    .await;
    let store = InstrumentedStore::new(run.store.clone(), vec![]);
    let err = run.copy(store.clone()).await.unwrap_err();
    match &err {
        CopyError::DestinationExists { bucket, key } => {
            assert_eq!(
                (bucket.as_str(), key.as_str()),
                (run.registry.as_str(), "team/pkg/big.bin")
            )
        }
        other => panic!("expected DestinationExists, got {other}"),
    }
    assert!(err.to_string().contains("overwrite_existing"), "{err}");
    assert_eq!(step_type(err), ErrorType::CopyFailed);
    assert_eq!(
        get_bytes(&run.client, &run.registry, "team/pkg/big.bin").await,
        b"not ours"
    );
    assert_eq!(store.count("AbortMultipartUpload"), 1);
    assert_eq!(run.open_uploads().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_copy_that_cannot_complete_is_aborted_and_recorded() {
    let run = Planned::new(
        true,
        &[
            SeedObject::new("data/a.csv", b"one".to_vec()),
            SeedObject::new("data/big.bin", big(0)),
        ],
        |_| {},
    )
    .await;
    let store = InstrumentedStore::new(
        run.store.clone(),
        vec![FaultRule {
            operation: "CompleteMultipartUpload",
            calls: 1..=usize::MAX,
            kind: StoreErrorKind::AccessDenied,
        }],
    );
    let err = run.copy(store.clone()).await.unwrap_err();
    match &err {
        CopyError::Object {
            bucket,
            key,
            source,
        } => {
            assert_eq!(
                (bucket.as_str(), key.as_str()),
                (run.source.as_str(), "data/big.bin")
            );
            assert_eq!(
                (source.kind, source.operation, source.key.as_str()),
                (
                    StoreErrorKind::AccessDenied,
                    "CompleteMultipartUpload",
                    "team/pkg/big.bin"
                )
            );
        }
        other => panic!("expected an object error, got {other}"),
    }
    assert_eq!(step_type(err), ErrorType::AccessDenied);
    assert_eq!(
        store.count("CompleteMultipartUpload"),
        1,
        "AccessDenied is not retried"
    );
    assert_eq!(store.count("AbortMultipartUpload"), 1);
    assert_eq!(run.open_uploads().await, 0);
    assert!(run.registry_keys("team/pkg/big.bin").await.is_empty());

    // The shard's failure record names what it did create, for rollback.
    let staging = run.staging();
    let records = run.registry_keys(&staging.failures_prefix()).await;
    assert_eq!(
        records.len(),
        1,
        "one failure record for the one attempt: {records:?}"
    );
    let record: FailureRecord = staging.require(&records[0]).await.unwrap();
    assert!(
        record.error.contains("CompleteMultipartUpload"),
        "{}",
        record.error
    );
    let created: Vec<&str> = record.created.iter().map(|o| o.key.as_str()).collect();
    assert!(
        created.iter().all(|k| *k == "team/pkg/a.csv"),
        "{created:?}"
    );
    let report = abort_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    assert!(report.not_deleted.is_empty(), "{report:?}");
    assert!(
        list_all_versions(&run.client, &run.registry)
            .await
            .is_empty()
    );
}

/// Copies go through to the real store, but the first copy's answer is lost (it fails as a
/// timeout would after S3 did the copy); later attempts get the 412 S3 gives an
/// `If-None-Match: *` copy onto an existing key. With `intruder`, what lands first is someone
/// else's object instead of the copy.
struct LostFirstAnswer {
    inner: Arc<dyn ObjectStore>,
    copies: AtomicUsize,
    intruder: Option<&'static [u8]>,
}

#[async_trait]
impl ObjectStore for LostFirstAnswer {
    async fn list_page(
        &self,
        b: &str,
        p: &str,
        d: Option<&str>,
        t: Option<String>,
        m: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.inner.list_page(b, p, d, t, m).await
    }
    async fn head(&self, b: &str, k: &str, v: Option<&str>) -> Result<ObjectInfo, StoreError> {
        self.inner.head(b, k, v).await
    }
    async fn get(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        r: Option<(u64, u64)>,
    ) -> Result<ByteChunks, StoreError> {
        self.inner.get(b, k, v, r).await
    }
    async fn put(
        &self,
        b: &str,
        k: &str,
        body: Bytes,
        o: PutOptions,
    ) -> Result<WriteResult, StoreError> {
        self.inner.put(b, k, body, o).await
    }
    async fn copy(&self, r: CopyRequest<'_>) -> Result<WriteResult, StoreError> {
        let failed = |kind| StoreError::new(kind, "CopyObject", r.dst_bucket, r.dst_key, "stub");
        if self.copies.fetch_add(1, Ordering::SeqCst) > 0 {
            return Err(failed(StoreErrorKind::PreconditionFailed));
        }
        match self.intruder {
            Some(bytes) => {
                let body = Bytes::from_static(bytes);
                self.inner
                    .put(r.dst_bucket, r.dst_key, body, PutOptions::default())
                    .await?;
            }
            None => {
                self.inner.copy(r.clone()).await?;
            }
        }
        Err(failed(StoreErrorKind::Transient))
    }
    async fn create_multipart(
        &self,
        b: &str,
        k: &str,
        c: WriteChecksum,
        ct: Option<&str>,
        m: &BTreeMap<String, String>,
        t: Option<&str>,
    ) -> Result<String, StoreError> {
        self.inner.create_multipart(b, k, c, ct, m, t).await
    }
    async fn upload_part_copy(&self, r: PartCopyRequest<'_>) -> Result<CopiedPart, StoreError> {
        self.inner.upload_part_copy(r).await
    }
    async fn upload_part(
        &self,
        b: &str,
        k: &str,
        u: &str,
        n: u32,
        body: Bytes,
    ) -> Result<CopiedPart, StoreError> {
        self.inner.upload_part(b, k, u, n, body).await
    }
    async fn complete_multipart(
        &self,
        b: &str,
        k: &str,
        u: &str,
        p: &[CopiedPart],
        n: bool,
    ) -> Result<WriteResult, StoreError> {
        self.inner.complete_multipart(b, k, u, p, n).await
    }
    async fn abort_multipart(&self, b: &str, k: &str, u: &str) -> Result<(), StoreError> {
        self.inner.abort_multipart(b, k, u).await
    }
    async fn open_uploads(&self, b: &str, k: &str) -> Result<Vec<String>, StoreError> {
        self.inner.open_uploads(b, k).await
    }
    async fn delete(&self, b: &str, k: &str, v: Option<&str>) -> Result<(), StoreError> {
        self.inner.delete(b, k, v).await
    }
    async fn list_versions(&self, b: &str, p: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        self.inner.list_versions(b, p).await
    }
    async fn delete_versions(
        &self,
        b: &str,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionNotDeleted>, StoreError> {
        self.inner.delete_versions(b, versions).await
    }
    async fn delete_if_match(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        e: &str,
    ) -> Result<(), StoreError> {
        self.inner.delete_if_match(b, k, v, e).await
    }
    async fn tag_value(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        t: &str,
    ) -> Result<Option<String>, StoreError> {
        self.inner.tag_value(b, k, v, t).await
    }
    async fn versioning(&self, b: &str) -> Result<Option<Versioning>, StoreError> {
        self.inner.versioning(b).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_copy_whose_first_attempt_landed_is_recognised_as_ours() {
    let objects = [SeedObject::new("data/a.csv", b"one,two\n".to_vec())];
    let run = Planned::new(false, &objects, |_| {}).await;
    let store = Arc::new(LostFirstAnswer {
        inner: run.store.clone(),
        copies: AtomicUsize::new(0),
        intruder: None,
    });
    let fragment = run.copy(store.clone()).await.unwrap();
    assert_eq!(store.copies.load(Ordering::SeqCst), 2, "one retry");
    let entry = &fragment.entries[0];
    assert_eq!(
        entry.physical_key.parse::<PhysicalKey>().unwrap(),
        PhysicalKey::new(&run.registry, "team/pkg/a.csv", None)
    );
    let mut hasher = ObjectHasher::new(HashType::Sha2_256Chunked, 8);
    hasher.update(b"one,two\n");
    assert_eq!(
        entry.hash_value,
        hasher.finish().value,
        "hashed from the copy"
    );
    assert_eq!(
        fragment.created.len(),
        1,
        "the copy is the run's, for rollback"
    );
    assert_eq!(
        get_bytes(&run.client, &run.registry, "team/pkg/a.csv").await,
        b"one,two\n"
    );

    // Someone else's object landed instead: it is not taken for the copy.
    let run = Planned::new(false, &objects, |_| {}).await;
    let store = Arc::new(LostFirstAnswer {
        inner: run.store.clone(),
        copies: AtomicUsize::new(0),
        intruder: Some(b"someone else's"),
    });
    match run.copy(store).await.unwrap_err() {
        CopyError::DestinationExists { key, .. } => assert_eq!(key, "team/pkg/a.csv"),
        other => panic!("expected DestinationExists, got {other}"),
    }
    assert_eq!(
        get_bytes(&run.client, &run.registry, "team/pkg/a.csv").await,
        b"someone else's"
    );
}

fn three_files() -> Vec<SeedObject> {
    ["a", "b", "c"]
        .iter()
        .map(|n| SeedObject::new(format!("data/{n}.csv"), format!("{n}\n").into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn finalize_refuses_fragments_that_do_not_add_up_and_writes_nothing() {
    let run = Planned::new(true, &three_files(), |_| {}).await;
    let good = run.copy(run.store.clone()).await.unwrap();
    let staging = run.staging();
    let key = staging.fragment_key(0);

    let mut short = good.clone();
    short.entries.pop();
    staging.put(&key, &short).await.unwrap();
    let err = finalize(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            FinalizeError::CountMismatch {
                found: 2,
                planned: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(StepError::from(err).error_type, ErrorType::MissingFragments);

    let mut corrupt = good.clone();
    let b = corrupt
        .entries
        .iter_mut()
        .find(|e| e.logical_key.as_str() == "b.csv")
        .unwrap();
    b.meta = "[1, 2]".into();
    staging.put(&key, &corrupt).await.unwrap();
    let err = finalize(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    match &err {
        FinalizeError::Fragment { shard, reason } => {
            assert_eq!(*shard, 0);
            assert!(
                reason.contains("\"b.csv\"") && reason.contains("not a JSON object"),
                "{reason}"
            );
        }
        other => panic!("expected a fragment error, got {other}"),
    }
    assert_eq!(StepError::from(err).error_type, ErrorType::CorruptStaging);

    staging.put(&key, &"not a fragment").await.unwrap();
    let err = finalize(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FinalizeError::Staging(StagingError::Corrupt { key: k, .. }) if *k == key),
        "{err}"
    );
    assert!(
        run.registry_keys(".quilt/").await.is_empty(),
        "no manifest, no pointer"
    );

    // The fragment as the copier wrote it finalizes.
    staging.put(&key, &good).await.unwrap();
    let package = finalize(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    assert_eq!(package.objects, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finalize_that_cannot_write_its_pointers_is_committed_and_finishes_when_run_again() {
    let run = Planned::new(true, &three_files(), |_| {}).await;
    run.copy(run.store.clone()).await.unwrap();
    // PutObject 1 is the outcome (the commit point), 2 the manifest, 3 the timestamped pointer.
    let store = InstrumentedStore::new(
        run.store.clone(),
        vec![FaultRule {
            operation: "PutObject",
            calls: 3..=3,
            kind: StoreErrorKind::AccessDenied,
        }],
    );
    let err = finalize(store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    assert!(err.is_committed(), "{err}");
    match &err {
        FinalizeError::Unpublished { source, run_id, .. }
            if matches!(
                source.as_ref(),
                FinalizeError::Registry(RegistryError::Store(_))
            ) =>
        {
            let FinalizeError::Registry(RegistryError::Store(e)) = source.as_ref() else {
                unreachable!()
            };
            assert_eq!(run_id, run.run_id());
            assert_eq!(
                (e.kind, e.operation),
                (StoreErrorKind::AccessDenied, "PutObject")
            );
            assert!(
                e.key.starts_with(".quilt/named_packages/team/pkg/"),
                "{}",
                e.key
            );
        }
        other => panic!("expected an unpublished run, got {other}"),
    }
    assert!(
        err.to_string().contains("s3quilt runs resume"),
        "the error says how to finish: {err}"
    );
    assert_eq!(StepError::from(err).error_type, ErrorType::AccessDenied);
    let puts: Vec<String> = store
        .calls()
        .into_iter()
        .filter(|(op, _, _)| *op == "PutObject")
        .map(|(_, _, key)| key)
        .collect();
    assert!(puts[0].ends_with("/outcome.json"), "{puts:?}");
    assert!(puts[1].starts_with(".quilt/packages/"), "{puts:?}");
    assert_eq!(
        run.registry_keys(".quilt/packages/").await.len(),
        1,
        "after the commit point the manifest stays"
    );
    assert!(run.registry_keys(".quilt/named_packages/").await.is_empty());
    let name: PackageName = PACKAGE.parse().unwrap();
    let registry = Registry::new(run.store.clone(), &run.registry);
    assert!(registry.latest(&name).await.is_err(), "not visible yet");

    // A committed run is never rolled back.
    let refused = abort_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, TransactionError::Committed { .. }),
        "{refused}"
    );

    // Finalizing again (as `runs resume` does) finishes it, with the manifest already there.
    let package = resume_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    assert_eq!(registry.latest(&name).await.unwrap(), package.top_hash);
    assert!(run.registry_keys(".s3quilt/runs/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_of_the_manifest_write_is_retried() {
    let run = Planned::new(true, &three_files(), |_| {}).await;
    run.copy(run.store.clone()).await.unwrap();
    let store = InstrumentedStore::new(
        run.store.clone(),
        vec![FaultRule {
            operation: "PutObject",
            calls: 2..=2,
            kind: StoreErrorKind::Throttled,
        }],
    );
    let package = finalize(store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    let manifest_puts = store
        .calls()
        .iter()
        .filter(|(op, _, key)| *op == "PutObject" && key.starts_with(".quilt/packages/"))
        .count();
    assert_eq!(manifest_puts, 2);
    let name: PackageName = PACKAGE.parse().unwrap();
    let registry = Registry::new(run.store.clone(), &run.registry);
    assert_eq!(registry.latest(&name).await.unwrap(), package.top_hash);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_run_whose_copies_cannot_be_journaled_removes_its_copies() {
    let server = moto();
    let client = server.client().await;
    let source = create_bucket(&client, true).await;
    let registry = create_bucket(&client, true).await;
    seed(&client, &source, &three_files()).await;
    // PutObject 1 is the plan document, 2 and 3 the attempt marker and the shard document,
    // 4 the fragment: refused, after the copies landed.
    let store = InstrumentedStore::new(
        S3Store::shared(server.client().await),
        vec![FaultRule {
            operation: "PutObject",
            calls: 4..=4,
            kind: StoreErrorKind::AccessDenied,
        }],
    );
    let progress = Progress::new();
    let request = PackageRequest::new(&source, "data", PACKAGE, &registry);
    let err = run_local(
        store.clone(),
        &request,
        &EngineOptions::default(),
        progress.clone(),
    )
    .await
    .unwrap_err();
    match &err {
        EngineError::Copy { error, rollback } => {
            assert!(matches!(error, CopyError::Staging(_)), "{error}");
            assert_eq!(rollback.deleted, 3);
            assert!(rollback.not_deleted.is_empty(), "{rollback:?}");
        }
        other => panic!("expected a copy error, got {other}"),
    }
    assert!(
        err.to_string().contains("rolled back: 3 objects removed"),
        "{err}"
    );
    assert_eq!(progress.snapshot().phase, Phase::Failed);
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_names_every_object_it_could_not_delete() {
    let run = Planned::new(true, &three_files(), |_| {}).await;
    let fragment = run.copy(run.store.clone()).await.unwrap();
    let denied = InstrumentedStore::new(
        run.store.clone(),
        vec![FaultRule {
            operation: "DeleteObject",
            calls: 1..=usize::MAX,
            kind: StoreErrorKind::AccessDenied,
        }],
    );
    let report = abort_run(denied, &run.registry, run.run_id())
        .await
        .unwrap();
    assert_eq!(report.deleted, 0);
    for created in &fragment.created {
        let url = format!(
            "s3://{}/{}?versionId={}",
            run.registry,
            created.key,
            created.version_id.as_deref().unwrap()
        );
        assert!(
            report
                .not_deleted
                .iter()
                .any(|n| n.starts_with(&url) && n.contains("AccessDenied")),
            "{url} in {report:?}"
        );
    }
    assert_eq!(
        report.not_deleted.len(),
        fragment.created.len(),
        "each copy once: {report:?}"
    );
    assert!(
        !run.registry_keys(".s3quilt/runs/").await.is_empty(),
        "the journal stays while copies are left, for another `runs abort`"
    );

    // Allowed again, it removes everything.
    let report = abort_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    assert_eq!(
        (report.deleted, report.not_deleted.len()),
        (3, 0),
        "{report:?}"
    );
    assert!(
        list_all_versions(&run.client, &run.registry)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_does_not_guess_when_staging_cannot_be_read() {
    let run = Planned::new(true, &three_files(), |_| {}).await;
    run.copy(run.store.clone()).await.unwrap();
    let staging = run.staging();

    // An unreadable fragment: it does not close its attempt, so the attempt's keys are searched
    // and only the versions S3 says carry this run's tag are deleted; the unreadable document
    // is reported and the journal stays.
    staging
        .put(&staging.fragment_key(0), &"not a fragment")
        .await
        .unwrap();
    let report = abort_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap();
    assert_eq!(report.deleted, 3, "{report:?}");
    assert!(
        report
            .not_deleted
            .iter()
            .any(|n| n.contains("fragments/000000.json unreadable")),
        "{report:?}"
    );
    assert!(run.registry_keys("team/pkg/").await.is_empty());
    assert!(!run.registry_keys(".s3quilt/runs/").await.is_empty());

    // An unreadable plan: nothing is deleted at all.
    let run = Planned::new(true, &three_files(), |_| {}).await;
    run.copy(run.store.clone()).await.unwrap();
    let staging = run.staging();
    staging.put(&staging.plan_key(), &[1, 2, 3]).await.unwrap();
    let err = abort_run(run.store.clone(), &run.registry, run.run_id())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(run.registry_keys("team/pkg/").await.len(), 3);
    assert!(!run.registry_keys(".s3quilt/runs/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn staging_reads_tell_missing_from_corrupt_from_refused() {
    let server = moto();
    let client = server.client().await;
    let bucket = create_bucket(&client, true).await;
    let store = S3Store::shared(server.client().await);
    let staging = Staging::new(store.clone(), &bucket, "20260101T000000Z-00c0ffee");
    assert_eq!(staging.bucket(), bucket);
    let key = staging.shard_index_key();
    assert_eq!(staging.get::<Vec<u32>>(&key).await.unwrap(), None);
    match staging.require::<Vec<u32>>(&key).await.unwrap_err() {
        StagingError::Missing { bucket: b, key: k } => {
            assert_eq!((b, k), (bucket.clone(), key.clone()))
        }
        other => panic!("expected Missing, got {other}"),
    }
    staging.put(&key, &"text").await.unwrap();
    match staging.get::<Vec<u32>>(&key).await.unwrap_err() {
        StagingError::Corrupt {
            bucket: b,
            key: k,
            reason,
        } => {
            assert_eq!((b, k), (bucket.clone(), key.clone()));
            assert!(reason.contains("expected a sequence"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }

    let denied = InstrumentedStore::new(
        store.clone(),
        vec![
            FaultRule {
                operation: "GetObject",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::AccessDenied,
            },
            FaultRule {
                operation: "ListObjectVersions",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::AccessDenied,
            },
        ],
    );
    let refused = Staging::new(denied.clone(), &bucket, "20260101T000000Z-00c0ffee");
    match refused.get::<Vec<u32>>(&key).await.unwrap_err() {
        StagingError::Store(e) => assert_eq!(e.kind, StoreErrorKind::AccessDenied),
        other => panic!("a refused read is not a missing document: {other}"),
    }
    assert_eq!(denied.count("GetObject"), 1, "AccessDenied is not retried");
    let left = refused.remove_all().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with(&refused.prefix()) && left[0].contains("AccessDenied"),
        "{left:?}"
    );
    assert!(staging.remove_all().await.is_empty());
    assert!(list_all_versions(&client, &bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_without_a_stored_sha256_are_hashed_from_their_bytes() {
    let server = moto();
    let client = server.client().await;
    let source = create_bucket(&client, true).await;
    let registry = create_bucket(&client, true).await;
    let bodies = [
        ("data/x.txt", b"x marks".to_vec()),
        ("data/y.txt", Vec::new()),
    ];
    for (key, body) in &bodies {
        // No ChecksumAlgorithm: S3 keeps only the SDK's default CRC32, no SHA-256 or CRC-64.
        client
            .put_object()
            .bucket(&source)
            .key(*key)
            .body(body.clone().into())
            .send()
            .await
            .unwrap();
    }
    for hash_type in [HashType::Sha2_256Chunked, HashType::Crc64Nvme] {
        let store = InstrumentedStore::new(S3Store::shared(server.client().await), vec![]);
        let mut request = PackageRequest::new(&source, "data", PACKAGE, &registry);
        request.copy = false;
        request.hash_type = Some(hash_type);
        let outcome = run_local(
            store.clone(),
            &request,
            &EngineOptions::default(),
            Progress::new(),
        )
        .await
        .unwrap();
        let RunOutcome::Created { package, .. } = outcome else {
            panic!("expected a package")
        };
        // (Reads of the registry do not count: a second version in the same second reads
        // the pointer that took the second.)
        let source_reads = store
            .calls()
            .iter()
            .filter(|(op, bucket, _)| *op == "GetObject" && *bucket == source)
            .count();
        assert_eq!(source_reads, 2, "{hash_type}: each object read once");
        let registry = Registry::new(store.clone(), &registry);
        let manifest = registry.manifest(&package.top_hash).await.unwrap();
        for (entry, (key, body)) in manifest.entries.iter().zip(&bodies) {
            let mut hasher = ObjectHasher::new(hash_type, body.len() as u64);
            hasher.update(body);
            assert_eq!(entry.hash(), hasher.finish(), "{hash_type} {key}");
            let physical: PhysicalKey = entry.physical_keys[0].parse().unwrap();
            assert_eq!(
                (physical.bucket.as_str(), physical.key.as_str()),
                (source.as_str(), *key)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_cause_quotes_a_few_shard_errors_and_names_what_stayed() {
    let server = moto();
    let client = server.client().await;
    let registry = create_bucket(&client, true).await;
    let store = S3Store::shared(server.client().await);
    let run_id = "20260101T000000Z-0000fa11";
    let staging = Staging::new(store.clone(), &registry, run_id);
    for shard in 0..7 {
        let record = FailureRecord {
            shard,
            attempt: "a".into(),
            created: vec![],
            in_doubt: vec![],
            error: format!("boom {shard}"),
        };
        staging
            .put(&staging.failure_key(shard, "a"), &record)
            .await
            .unwrap();
    }
    let event = serde_json::json!({
        "run_id": run_id,
        "registry_bucket": registry,
        "error": {"Error": "States.ExceedToleratedFailureThreshold", "Cause": "too many failed"},
    });

    // Listing the failure records refused: no shard errors to quote, so a `States.` error is
    // a failed step.
    let unlisted = InstrumentedStore::new(
        store.clone(),
        vec![
            FaultRule {
                operation: "ListObjectsV2",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::AccessDenied,
            },
            FaultRule {
                operation: "DeleteObject",
                calls: 1..=usize::MAX,
                kind: StoreErrorKind::AccessDenied,
            },
        ],
    );
    let out = rollback_step(unlisted, &Default::default(), event.clone())
        .await
        .unwrap();
    assert_eq!(out.error, "S3Quilt.StepFailed");
    assert!(
        out.cause
            .starts_with("States.ExceedToleratedFailureThreshold: too many failed (run "),
        "{}",
        out.cause
    );
    assert_eq!(out.not_deleted.len(), 1, "{:?}", out.not_deleted);
    assert!(
        out.cause
            .contains("; NOT removed, clean up by hand: the rollback could not start: "),
        "{}",
        out.cause
    );

    let out = rollback_step(store.clone(), &Default::default(), event)
        .await
        .unwrap();
    assert_eq!(out.error, "S3Quilt.CopyFailed");
    let quoted: String = (0..5)
        .map(|n| format!("shard {n}: boom {n}"))
        .collect::<Vec<_>>()
        .join("; ");
    assert_eq!(
        out.cause,
        format!(
            "States.ExceedToleratedFailureThreshold: too many failed; failed shards: {quoted}; … and 2 more (run {run_id} rolled back: 0 objects removed)"
        )
    );
    assert!(out.not_deleted.is_empty());
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

/// `count` objects `d/NNN.txt` in a new versioned source, planned as `team/pkg` into a new
/// versioned registry in shards of `shard_max_objects`, with shard 0 copied by a copier.
async fn run_with_shard_0_copied(
    count: usize,
    shard_max_objects: usize,
) -> (aws_sdk_s3::Client, String, Arc<dyn ObjectStore>, RunPlan) {
    let client = moto().client().await;
    let (source, registry) = (
        create_bucket(&client, true).await,
        create_bucket(&client, true).await,
    );
    let objects: Vec<SeedObject> = (0..count)
        .map(|i| SeedObject::new(format!("d/{i:03}.txt"), format!("body {i}")))
        .collect();
    seed(&client, &source, &objects).await;
    let store = S3Store::shared(client.clone());
    let options = PlanOptions {
        shard_max_objects,
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
        &CopyOptions::new(16),
    )
    .await
    .unwrap();
    (client, registry, store, run)
}

/// A rollback of many copies deletes them with DeleteObjects (1,000 versions a request), and a
/// journal naming an object outside the package's folder is not believed.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_rollback_deletes_in_batches_and_only_inside_the_package() {
    let (client, registry, store, run) = run_with_shard_0_copied(150, 200).await;
    // Someone else's object in the registry, outside the package's folder.
    let foreign = client
        .put_object()
        .bucket(&registry)
        .key("other/keep.txt")
        .body(b"keep".to_vec().into())
        .send()
        .await
        .unwrap();
    // A journal entry naming the foreign object (a corrupted or forged record).
    let staging = Staging::new(store.clone(), &registry, &run.run_id);
    let forged = FailureRecord {
        shard: 0,
        attempt: "forged00".into(),
        in_doubt: Vec::new(),
        created: vec![WrittenObject {
            key: "other/keep.txt".into(),
            version_id: foreign.version_id().map(str::to_string),
            etag: foreign.e_tag().map(str::to_string),
        }],
        error: "forged".into(),
    };
    staging
        .put(&staging.failure_key(0, "forged00"), &forged)
        .await
        .unwrap();

    let counted = InstrumentedStore::new(store.clone(), Vec::new());
    let report = abort_run(counted.clone(), &registry, &run.run_id)
        .await
        .unwrap();
    assert_eq!(report.deleted, 150, "{report:?}");
    assert_eq!(counted.count("DeleteObjects"), 1, "{:?}", counted.counts());
    assert_eq!(report.not_deleted.len(), 1, "{report:?}");
    assert!(
        report.not_deleted[0].contains("outside the package folder team/pkg/"),
        "{report:?}"
    );
    let left = list_all_versions(&client, &registry).await;
    assert!(
        left.iter().any(|(k, _, _)| k == "other/keep.txt"),
        "the foreign object was deleted"
    );
    assert!(
        !left.iter().any(|(k, _, _)| k.starts_with("team/pkg/")),
        "copies left: {left:?}"
    );
    // The journal stays while something is not removed.
    assert!(left.iter().any(|(k, _, _)| k.starts_with(".s3quilt/runs/")));
}

/// Rollback on AWS waits while an attempt is open whose copier may still run, after deciding
/// `aborted` (so a copier starting now copies nothing), and rolls back once the attempt is
/// older than the copier's time limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_abort_waits_for_open_attempts_and_stops_late_copiers() {
    let (client, registry, store, run) = run_with_shard_0_copied(4, 2).await;
    // Shard 1's copier opened its attempt and is (for all rollback can tell) still copying.
    let staging = Staging::new(store.clone(), &registry, &run.run_id);
    let shard: Shard = staging.require(&staging.shard_key(1)).await.unwrap();
    open_attempt(&staging, &shard, &new_attempt_id(), false)
        .await
        .unwrap();

    let waiting = abort_fenced(
        store.clone(),
        &registry,
        &run.run_id,
        Duration::from_secs(900),
        "test",
    )
    .await
    .unwrap();
    let AbortProgress::Waiting {
        open_attempts,
        wait,
    } = waiting
    else {
        panic!("rolled back while a copier may be running: {waiting:?}")
    };
    assert_eq!(open_attempts, 1);
    assert!(wait <= Duration::from_secs(10) && wait >= Duration::from_secs(1));
    let copies = |client: aws_sdk_s3::Client, registry: String| async move {
        list_all_versions(&client, &registry)
            .await
            .into_iter()
            .filter(|(k, _, _)| k.starts_with("team/pkg/"))
            .count()
    };
    assert_eq!(
        copies(client.clone(), registry.clone()).await,
        2,
        "nothing deleted yet"
    );
    // A copier that starts now copies nothing: the run is decided.
    let late = copy_shard_from_staging(
        store.clone(),
        &registry,
        &run.run_id,
        1,
        &CopyOptions::new(4),
    )
    .await
    .unwrap_err();
    assert!(matches!(late, CopyError::RunDecided { .. }), "{late}");
    assert_eq!(copies(client.clone(), registry.clone()).await, 2);

    // Past the copier's time limit the attempt's process is gone: roll back.
    let done = abort_fenced(
        store.clone(),
        &registry,
        &run.run_id,
        Duration::ZERO,
        "test",
    )
    .await
    .unwrap();
    let AbortProgress::Done(report) = done else {
        panic!("still waiting: {done:?}")
    };
    assert_eq!(report.deleted, 2, "{report:?}");
    assert!(report.not_deleted.is_empty(), "{report:?}");
    assert!(list_all_versions(&client, &registry).await.is_empty());
}

/// The janitor (the rollback Lambda given an EventBridge status change) rolls back the run of
/// an execution that ended without its own rollback, finds it by the execution ARN in its plan,
/// and leaves runs of other executions alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_janitor_rolls_back_the_runs_of_an_ended_execution() {
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
    let arn = "arn:aws:states:us-east-1:123456789012:execution:pkg:stopped-1";
    let options = PlanOptions {
        execution: Some(arn.to_string()),
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
    let config = StepConfig::default();
    let event = |status: &str, execution: &str| {
        json!({
            "source": "aws.states",
            "detail-type": "Step Functions Execution Status Change",
            "detail": {"executionArn": execution, "status": status,
                       "input": json!({"request": request}).to_string()}
        })
    };
    // Still running, or another execution: nothing is touched.
    for (status, execution) in [("RUNNING", arn), ("ABORTED", "arn:other")] {
        let RollbackFunctionOutput::Janitor(out) =
            rollback_function(store.clone(), &config, event(status, execution), None)
                .await
                .unwrap()
        else {
            panic!("not a janitor answer")
        };
        assert!(out.runs.is_empty(), "{out:?}");
    }
    assert_eq!(
        list_all_versions(&client, &registry)
            .await
            .iter()
            .filter(|(k, _, _)| k.starts_with("team/pkg/"))
            .count(),
        3
    );
    let RollbackFunctionOutput::Janitor(out) =
        rollback_function(store.clone(), &config, event("ABORTED", arn), None)
            .await
            .unwrap()
    else {
        panic!("not a janitor answer")
    };
    assert_eq!(out.runs.len(), 1, "{out:?}");
    assert_eq!(out.runs[0].run_id, run.run_id);
    assert_eq!(out.runs[0].action, "rolled_back", "{out:?}");
    assert_eq!(out.runs[0].deleted, 3);
    assert!(list_all_versions(&client, &registry).await.is_empty());

    // A malformed event is refused, naming it.
    let e = rollback_function(
        store.clone(),
        &config,
        json!({"detail-type": "x", "detail": {}}),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.error_type, ErrorType::InvalidRequest, "{}", e.message);
}

/// The janitor never touches a package its execution published before it ended (a finalizer
/// that published, then timed out): the run is gone from staging, its version stands.
#[tokio::test(flavor = "multi_thread")]
async fn the_janitor_leaves_a_published_run_alone() {
    let (client, registry, store, run) = run_with_shard_0_copied(2, 10).await;
    let staging = Staging::new(store.clone(), &registry, &run.run_id);
    let mut plan_doc: RunPlan = staging.require(&staging.plan_key()).await.unwrap();
    let arn = "arn:aws:states:us-east-1:123456789012:execution:pkg:died-1";
    plan_doc.execution = Some(arn.to_string());
    staging.put(&staging.plan_key(), &plan_doc).await.unwrap();
    finalize(store.clone(), &registry, &run.run_id)
        .await
        .unwrap();
    // Published: its staging is gone, so the janitor finds no run and deletes nothing.
    let config = StepConfig {
        allowed_registry_buckets: vec![registry.clone()],
        ..StepConfig::default()
    };
    let event = json!({
        "detail-type": "Step Functions Execution Status Change",
        "detail": {"executionArn": arn, "status": "TIMED_OUT"}
    });
    let RollbackFunctionOutput::Janitor(out) =
        rollback_function(store.clone(), &config, event, None)
            .await
            .unwrap()
    else {
        panic!("not a janitor answer")
    };
    assert!(out.runs.is_empty(), "{out:?}");
    let name: PackageName = "team/pkg".parse().unwrap();
    Registry::new(store.clone(), &registry)
        .latest_manifest(&name)
        .await
        .expect("the package stands");
    assert!(
        list_all_versions(&client, &registry)
            .await
            .iter()
            .any(|(k, _, _)| k.starts_with("team/pkg/")),
        "its copies stand"
    );
}

/// A new attempt of a shard whose earlier copier died mid-shard first removes the version that
/// copier wrote (found by the run's tag), so the run publishes no orphan.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_attempt_removes_what_a_dead_attempt_of_its_shard_wrote() {
    let (client, registry, store, run) = run_with_shard_0_copied(4, 2).await;
    let staging = Staging::new(store.clone(), &registry, &run.run_id);
    let shard: Shard = staging.require(&staging.shard_key(1)).await.unwrap();
    // Nothing earlier: nothing to remove.
    assert_eq!(
        clear_earlier_attempts(store.as_ref(), &staging, &run, &shard)
            .await
            .unwrap(),
        0
    );
    let attempt = new_attempt_id();
    open_attempt(&staging, &shard, &attempt, false)
        .await
        .unwrap();
    let first = Shard {
        shard: 1,
        objects: shard.objects[..1].to_vec(),
    };
    let dead = tokio::task::spawn_blocking({
        let (store, run, first, attempt) =
            (store.clone(), run.clone(), first.clone(), attempt.clone());
        move || {
            tokio::runtime::Handle::current().block_on(async move {
                s3quilt_core::copy::copy_objects(
                    store.as_ref(),
                    &run,
                    &first,
                    &CopyOptions::new(2),
                    &|_| {},
                    &attempt,
                )
                .await
                .unwrap()
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(dead.created.len(), 1);
    let key = dead.created[0].key.clone();
    let versions_at = |client: aws_sdk_s3::Client, registry: String, key: String| async move {
        list_all_versions(&client, &registry)
            .await
            .into_iter()
            .filter(|(k, _, _)| *k == key)
            .count()
    };
    assert_eq!(
        versions_at(client.clone(), registry.clone(), key.clone()).await,
        1
    );
    let removed = clear_earlier_attempts(store.as_ref(), &staging, &run, &shard)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(versions_at(client.clone(), registry.clone(), key).await, 0);
}
