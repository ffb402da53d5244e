//! A run is a transaction. This module is the one home of its lifecycle: the journal a run
//! keeps in its staging area, the record of what it owns, its commit point, and the two ways a
//! run ends (rolled back before the commit point, rolled forward after it). Both engines, the
//! Lambdas and every face (CLI, MCP) use it.
//!
//! ```text
//!  planned ──copy──▶ copying ──outcome.json = committed──▶ committed ──pointers──▶ done
//!     │                 │                                      (roll forward only)
//!     └──────┬──────────┘
//!            ▼ outcome.json = aborted
//!       rolled back (exactly the versions the run owns are deleted; staging removed)
//! ```
//!
//! - **Ownership record.** A run owns the object versions S3's answers to its writes named
//!   (key, version id, ETag), kept in memory and, per shard attempt, durably in staging: a
//!   fragment (the shard finished) or a failure record (it did not). Every object a run
//!   writes outside staging carries the tag `s3quilt-run=<run id>`, so an object whose write
//!   answer was lost (a reply dropped after S3 applied the write, a process killed mid-shard)
//!   is claimed only when S3 itself says it carries this run's tag; nothing is ever adopted
//!   because its size or ETag matches.
//! - **Attempts.** Before a copier sends its first write for a shard it writes an attempt
//!   marker; the attempt is closed by the shard's fragment or a failure record naming it. An
//!   attempt never closed (its process died) is the only place recovery searches S3.
//! - **Commit point.** The run's outcome is one staging document, `outcome.json`, written
//!   once with `If-None-Match: *`: `committed` (with the top hash and timestamp) by the
//!   finalizer, `aborted` by rollback. Whichever lands first decides, so a rollback racing a
//!   finalizer (or a second process) can never undo a committed run, and a finalizer can never
//!   publish an aborted one. Nothing under the registry's `.quilt/` is written before the
//!   commit; after it, the manifest and the pointers are written (and retried, and resumable)
//!   and never deleted.
//! - **Rollback** deletes exactly the owned versions: by version id on a bucket with
//!   versioning enabled; on an unversioned or suspended bucket only while the key still holds
//!   the ETag the copy created (`If-Match`), so an object another writer put over ours stays.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::registry::WrittenObject;
use crate::retry::RetryPolicy;
use crate::staging::{
    FailureRecord, ManifestFragment, RunPlan, STAGING_ROOT, Shard, Staging, StagingError,
};
use crate::storage::{
    DELETE_BATCH_MAX, ObjectStore, StoreError, StoreErrorKind, VersionNotDeleted, Versioning,
    unix_now,
};

/// The tag every object a run writes outside staging carries: `s3quilt-run=<run id>`.
pub const RUN_TAG: &str = "s3quilt-run";

/// The tag set (URL-query form) for objects run `run_id` writes.
pub fn run_tagging(run_id: &str) -> String {
    format!("{RUN_TAG}={run_id}")
}

/// The run's decision: the content of `outcome.json`, written once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// The finalizer committed: the version with this top hash is published (or will be, by
    /// whoever resumes the run).
    Committed {
        /// Top hash of the version.
        top_hash: String,
        /// Timestamp planned for its pointer (the pointer may take a later free second).
        timestamp: u64,
    },
    /// Rollback won: the run is undone and can never be committed.
    Aborted {
        /// Why.
        reason: String,
    },
}

/// Why a transition of a run was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The journal could not be read or written.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// Rollback of a run past its commit point.
    #[error(
        "run {run_id} is committed (top hash {top_hash}): it is finished, never rolled back; `s3quilt runs resume {run_id}` writes what is missing"
    )]
    Committed {
        /// Run id.
        run_id: String,
        /// The committed top hash.
        top_hash: String,
    },
    /// Commit of a run that was rolled back.
    #[error("run {run_id} was aborted ({reason}); it cannot be committed")]
    Aborted {
        /// Run id.
        run_id: String,
        /// Why it was aborted.
        reason: String,
    },
    /// No such run in this registry.
    #[error("no run {run_id} in s3://{bucket} (nothing under {STAGING_ROOT}{run_id}/)")]
    NotFound {
        /// Registry bucket.
        bucket: String,
        /// Run id.
        run_id: String,
    },
}

/// Writes `wanted` as the run's outcome unless one is there, and returns the outcome that
/// stands. A refused write is read back: the document is the run's own, so what it says is
/// the decision (ours, when an earlier attempt of this write landed and its reply was lost).
pub async fn decide(staging: &Staging, wanted: Outcome) -> Result<Outcome, StagingError> {
    let key = staging.outcome_key();
    match staging.put_if_absent(&key, &wanted).await? {
        Some(_) => Ok(wanted),
        None => staging.require::<Outcome>(&key).await,
    }
}

/// Commits the run with `top_hash`: the commit point. Returns the committed timestamp (the one
/// given, or the one an earlier attempt of this run committed with).
pub async fn commit(
    staging: &Staging,
    top_hash: &str,
    timestamp: u64,
) -> Result<u64, TransactionError> {
    let wanted = Outcome::Committed {
        top_hash: top_hash.to_string(),
        timestamp,
    };
    match decide(staging, wanted).await? {
        Outcome::Committed {
            top_hash: committed,
            timestamp,
        } if committed == top_hash => Ok(timestamp),
        Outcome::Committed {
            top_hash: committed,
            ..
        } => Err(TransactionError::Committed {
            run_id: staging.run_id().to_string(),
            top_hash: committed,
        }),
        Outcome::Aborted { reason } => Err(TransactionError::Aborted {
            run_id: staging.run_id().to_string(),
            reason,
        }),
    }
}

/// A fresh attempt id (8 hex digits).
pub fn new_attempt_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The document that opens a copy attempt (`attempts/<shard>-<attempt>.json`).
#[derive(Debug, Serialize, serde::Deserialize)]
struct AttemptMarker {
    shard: u32,
    attempt: String,
    /// Unix seconds.
    started_at: u64,
}

/// `(shard, attempt)` of an attempt marker's key.
fn parse_attempt_key(attempts_prefix: &str, key: &str) -> Option<(u32, String)> {
    let (shard, attempt) = key
        .strip_prefix(attempts_prefix)?
        .strip_suffix(".json")?
        .split_once('-')?;
    Some((shard.parse().ok()?, attempt.to_string()))
}

/// Opens a copy attempt of `shard`: writes its marker (and, for the local engine, which keeps
/// shards in memory, the shard document itself, so recovery knows the attempt's keys) before
/// any write of the attempt is sent.
pub async fn open_attempt(
    staging: &Staging,
    shard: &Shard,
    attempt: &str,
    stage_shard: bool,
) -> Result<Vec<WrittenObject>, StoreError> {
    let marker = AttemptMarker {
        shard: shard.shard,
        attempt: attempt.to_string(),
        started_at: unix_now(),
    };
    let marker_key = staging.attempt_key(shard.shard, attempt);
    let shard_key = staging.shard_key(shard.shard);
    let (marker, document) = tokio::join!(staging.put(&marker_key, &marker), async {
        if stage_shard {
            staging.put(&shard_key, shard).await.map(Some)
        } else {
            Ok(None)
        }
    });
    let mut written = vec![marker?];
    written.extend(document?);
    Ok(written)
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollbackReport {
    /// Object versions deleted from the target.
    pub deleted: usize,
    /// Objects the run wrote that another writer has replaced since: left to that writer.
    pub replaced_by_others: Vec<String>,
    /// What could not be deleted or decided, with why: these need a person's attention.
    pub not_deleted: Vec<String>,
}

/// What rollback knows of the run's objects.
#[derive(Debug, Clone)]
pub enum RollbackScope {
    /// Every write the run sent has returned (the local engine after all its copiers
    /// stopped): `created` is what it created, and `in_doubt` the keys where a write whose
    /// answer was lost could not be searched yet. No staging is read.
    Known {
        /// Object versions created.
        created: Vec<WrittenObject>,
        /// Keys to search for this run's tag.
        in_doubt: Vec<String>,
    },
    /// Read the journal (fragments, failure records, attempts) and search S3, by this run's
    /// tag, for what attempts that never closed wrote; `also` adds what the caller knows.
    Journal {
        /// Objects known to the caller.
        also: Vec<WrittenObject>,
    },
}

/// Decides run `plan` `aborted`, or says it is committed (the first writer of the outcome won).
async fn decide_aborted(
    staging: &Staging,
    plan: &RunPlan,
    reason: &str,
) -> Result<(), TransactionError> {
    let outcome = decide(
        staging,
        Outcome::Aborted {
            reason: reason.to_string(),
        },
    )
    .await?;
    match outcome {
        Outcome::Committed { top_hash, .. } => Err(TransactionError::Committed {
            run_id: plan.run_id.clone(),
            top_hash,
        }),
        Outcome::Aborted { .. } => Ok(()),
    }
}

/// Rolls run `plan` back: decides `aborted` (refused when the run is committed), deletes
/// exactly what it owns, its write probes and its staging area. Never touches an object it
/// did not create; writes no pointer.
pub async fn roll_back(
    store: Arc<dyn ObjectStore>,
    plan: &RunPlan,
    scope: RollbackScope,
    reason: &str,
) -> Result<RollbackReport, TransactionError> {
    let staging = Staging::new(store.clone(), &plan.registry_bucket, &plan.run_id);
    decide_aborted(&staging, plan, reason).await?;
    let mut report = RollbackReport::default();
    let (mut owned, search) = match scope {
        RollbackScope::Known { created, in_doubt } => (created, in_doubt),
        RollbackScope::Journal { also } => {
            let journal = read_journal(&staging, plan, &mut report).await;
            let mut owned = also;
            owned.extend(journal.owned);
            (owned, journal.unclosed_keys)
        }
    };
    // Keys of attempts that never closed, that the record does not already account for.
    let recorded: HashSet<&str> = owned.iter().map(|o| o.key.as_str()).collect();
    let search: Vec<String> = search
        .into_iter()
        .filter(|k| !recorded.contains(k.as_str()))
        .collect();
    let found = find_owned(store.as_ref(), plan, &search, &mut report).await;
    owned.extend(found);
    owned.sort_by(|a, b| (&a.key, &a.version_id).cmp(&(&b.key, &b.version_id)));
    owned.dedup_by(|a, b| a.key == b.key && a.version_id == b.version_id);
    // A run writes only under its package's folder of the target: a journal naming anything
    // else is not believed (rollback holds delete rights on the whole bucket).
    let package_prefix = plan.package_prefix();
    let (owned, outside): (Vec<WrittenObject>, Vec<WrittenObject>) = owned
        .into_iter()
        .partition(|o| o.key.starts_with(&package_prefix));
    for object in outside {
        report.not_deleted.push(format!(
            "{} (refused: outside the package folder {package_prefix}; the journal is not to be trusted)",
            object_url(&plan.target_bucket, &object)
        ));
    }
    let retry = RetryPolicy::default();
    for (object, result) in delete_all_owned(store.as_ref(), plan, owned, &retry).await {
        let url = object_url(&plan.target_bucket, &object);
        match result {
            Ok(Deleted::Yes) => report.deleted += 1,
            Ok(Deleted::ReplacedByOther) => report.replaced_by_others.push(url),
            Err(e) => report.not_deleted.push(format!("{url} ({e})")),
        }
    }
    for probe in &plan.probes {
        if let Err(e) = retry
            .run(|_| store.delete(&plan.target_bucket, &probe.key, probe.version_id.as_deref()))
            .await
            && e.kind != StoreErrorKind::NotFound
        {
            report
                .not_deleted
                .push(format!("{} ({e})", object_url(&plan.target_bucket, probe)));
        }
    }
    // The journal stays until everything it names is gone, so `s3quilt runs abort` can finish
    // what this rollback could not.
    if report.not_deleted.is_empty() {
        for leftover in staging.remove_all().await {
            report.not_deleted.push(format!("staging {leftover}"));
        }
    }
    Ok(report)
}

fn object_url(bucket: &str, object: &WrittenObject) -> String {
    match &object.version_id {
        Some(v) => format!("s3://{bucket}/{}?versionId={v}", object.key),
        None => format!("s3://{bucket}/{}", object.key),
    }
}

/// Object versions named exactly are deleted with DeleteObjects from this many on: a big
/// rollback (a million copies) then takes a thousandth of the requests, while a small one
/// keeps one conditional request per object, in parallel.
const BATCH_DELETE_FROM: usize = 64;

/// One DeleteObjects batch and S3's answer to it.
type BatchAnswer = (
    Vec<WrittenObject>,
    Result<Vec<VersionNotDeleted>, StoreError>,
);

/// Deletes every object the run owns: versions named exactly in DeleteObjects batches (when
/// there are enough of them), the rest, and whatever a batch could not delete, one by one by
/// the target's versioning rule ([`delete_owned`]).
async fn delete_all_owned(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    owned: Vec<WrittenObject>,
    retry: &RetryPolicy,
) -> Vec<(WrittenObject, Result<Deleted, StoreError>)> {
    let exact = |o: &WrittenObject| o.version_id.as_deref().is_some_and(|v| v != "null");
    let (batched, mut single): (Vec<WrittenObject>, Vec<WrittenObject>) =
        if owned.iter().filter(|o| exact(o)).count() >= BATCH_DELETE_FROM {
            owned.into_iter().partition(exact)
        } else {
            (Vec::new(), owned)
        };
    let bucket = plan.target_bucket.as_str();
    let mut results = Vec::new();
    let batches: Vec<BatchAnswer> =
        futures::stream::iter(batched.chunks(DELETE_BATCH_MAX).map(|chunk| async move {
            let versions: Vec<(String, String)> = chunk
                .iter()
                .map(|o| (o.key.clone(), o.version_id.clone().unwrap_or_default()))
                .collect();
            let answer = retry
                .run(|_| store.delete_versions(bucket, &versions))
                .await;
            (chunk.to_vec(), answer)
        }))
        // A batch is up to 1,000 writes against the package's prefix: a few at a time.
        .buffer_unordered(4)
        .collect()
        .await;
    for (chunk, answer) in batches {
        match answer {
            Ok(refused) => {
                let refused: HashSet<(&str, &str)> = refused
                    .iter()
                    .map(|r| (r.key.as_str(), r.version_id.as_str()))
                    .collect();
                for object in chunk {
                    let version = object.version_id.as_deref().unwrap_or_default();
                    if refused.contains(&(object.key.as_str(), version)) {
                        single.push(object);
                    } else {
                        results.push((object, Ok(Deleted::Yes)));
                    }
                }
            }
            // The request itself failed for good: each version is tried on its own.
            Err(e) => {
                tracing::warn!(bucket, error = %e, "DeleteObjects failed; deleting one by one");
                single.extend(chunk);
            }
        }
    }
    let singles: Vec<(WrittenObject, Result<Deleted, StoreError>)> =
        futures::stream::iter(single.into_iter().map(|object| async move {
            let result = delete_owned(store, bucket, plan.target_versioning, &object, retry).await;
            (object, result)
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    results.extend(singles);
    results
}

/// How a delete of an owned object ended.
enum Deleted {
    /// Deleted (or already gone).
    Yes,
    /// The key now holds another writer's object: left.
    ReplacedByOther,
}

/// Deletes one object version the run owns, by the target's versioning rule (module docs).
async fn delete_owned(
    store: &dyn ObjectStore,
    bucket: &str,
    versioning: Versioning,
    object: &WrittenObject,
    retry: &RetryPolicy,
) -> Result<Deleted, StoreError> {
    let gone = |r: Result<(), StoreError>| match r {
        Ok(()) => Ok(Deleted::Yes),
        Err(e) if e.kind == StoreErrorKind::NotFound => Ok(Deleted::Yes),
        Err(e) if e.kind == StoreErrorKind::PreconditionFailed => Ok(Deleted::ReplacedByOther),
        Err(e) => Err(e),
    };
    let key = object.key.as_str();
    match (versioning, &object.version_id, &object.etag) {
        // A version is ours alone: delete exactly it. (A version id other than `null` in S3's
        // answer means the bucket keeps versions, whatever the plan could learn of it.)
        (_, Some(version), _) if version != "null" => gone(
            retry
                .run(|_| store.delete(bucket, key, Some(version)))
                .await,
        ),
        (_, _, Some(etag)) => {
            let deleted = match retry
                .run(|_| store.delete_if_match(bucket, key, None, etag))
                .await
            {
                // A server without conditional deletes: the ETag is compared just before an
                // unconditional delete (a writer in between goes unseen; S3 itself has
                // conditional deletes).
                Err(e) if e.kind == StoreErrorKind::Unsupported => {
                    match retry.run(|_| store.head(bucket, key, None)).await {
                        Ok(info) if info.etag.as_deref() == Some(etag.as_str()) => {
                            gone(retry.run(|_| store.delete(bucket, key, None)).await)?
                        }
                        Ok(_) => Deleted::ReplacedByOther,
                        Err(e) if e.kind == StoreErrorKind::NotFound => Deleted::Yes,
                        Err(e) => return Err(e),
                    }
                }
                other => gone(other)?,
            };
            if matches!(deleted, Deleted::Yes) && versioning == Versioning::Suspended {
                // Deleting the `null` version of a suspended bucket leaves a `null` delete
                // marker in its place; remove it too, so the key is as before the run.
                gone(retry.run(|_| store.delete(bucket, key, Some("null"))).await)?;
            }
            Ok(deleted)
        }
        // No ETag in S3's answer (servers that omit it): the key as named.
        (_, version, None) => gone(
            retry
                .run(|_| store.delete(bucket, key, version.as_deref()))
                .await,
        ),
    }
}

/// What the journal of a run says it owns.
struct JournalRead {
    owned: Vec<WrittenObject>,
    /// Destination keys of attempts that never closed.
    unclosed_keys: Vec<String>,
}

async fn read_journal(
    staging: &Staging,
    plan: &RunPlan,
    report: &mut RollbackReport,
) -> JournalRead {
    let mut owned = Vec::new();
    let mut in_doubt = Vec::new();
    let mut closed: BTreeSet<(u32, String)> = BTreeSet::new();
    let prefix = staging.prefix();
    let (fragments_prefix, failures_prefix, attempts_prefix) = (
        format!("{prefix}fragments/"),
        staging.failures_prefix(),
        staging.attempts_prefix(),
    );
    let (fragments, failures, attempts) = tokio::join!(
        staging.list_keys(&fragments_prefix),
        staging.list_keys(&failures_prefix),
        staging.list_keys(&attempts_prefix),
    );
    let mut listing_failed = |what: &str, e: StoreError| {
        report
            .not_deleted
            .push(format!("run {}: cannot list its {what} ({e})", plan.run_id));
    };
    let fragments = fragments.unwrap_or_else(|e| {
        listing_failed("fragments", e);
        Vec::new()
    });
    let failures = failures.unwrap_or_else(|e| {
        listing_failed("failure records", e);
        Vec::new()
    });
    let attempts = attempts.unwrap_or_else(|e| {
        listing_failed("attempts", e);
        Vec::new()
    });
    let fragment_docs: Vec<_> = futures::stream::iter(
        fragments
            .iter()
            .map(|key| async move { (key, staging.get::<ManifestFragment>(key).await) }),
    )
    .buffer_unordered(16)
    .collect()
    .await;
    for (key, doc) in fragment_docs {
        match doc {
            Ok(Some(fragment)) => {
                closed.insert((fragment.shard, fragment.attempt.clone()));
                owned.extend(fragment.created);
            }
            Ok(None) => {}
            Err(e) => report.not_deleted.push(format!("{key} unreadable: {e}")),
        }
    }
    let failure_docs: Vec<_> = futures::stream::iter(
        failures
            .iter()
            .map(|key| async move { (key, staging.get::<FailureRecord>(key).await) }),
    )
    .buffer_unordered(16)
    .collect()
    .await;
    for (key, doc) in failure_docs {
        match doc {
            Ok(Some(record)) => {
                closed.insert((record.shard, record.attempt.clone()));
                owned.extend(record.created);
                in_doubt.extend(record.in_doubt);
            }
            Ok(None) => {}
            Err(e) => report.not_deleted.push(format!("{key} unreadable: {e}")),
        }
    }
    // An attempt marker is `attempts/<shard>-<attempt>.json`.
    let mut unclosed_shards: BTreeMap<u32, ()> = BTreeMap::new();
    for key in &attempts {
        let Some((shard, attempt)) = parse_attempt_key(&attempts_prefix, key) else {
            continue;
        };
        if !closed.contains(&(shard, attempt)) {
            unclosed_shards.insert(shard, ());
        }
    }
    let mut unclosed_keys = in_doubt;
    for shard in unclosed_shards.keys() {
        match staging.get::<Shard>(&staging.shard_key(*shard)).await {
            Ok(Some(doc)) => {
                unclosed_keys.extend(doc.objects.iter().map(|o| plan.destination_of(o)))
            }
            // The shard document is written with the attempt marker, before any copy of the
            // attempt is sent: without it, the attempt sent nothing.
            Ok(None) => {}
            Err(e) => report
                .not_deleted
                .push(format!("shard {shard} document unreadable: {e}")),
        }
    }
    JournalRead {
        owned,
        unclosed_keys,
    }
}

/// Searches `keys` of the target for object versions that carry this run's tag (what attempts
/// that never closed wrote). Only S3's own answer (the tag on that very version) claims one.
async fn find_owned(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    keys: &[String],
    report: &mut RollbackReport,
) -> Vec<WrittenObject> {
    let retry = RetryPolicy::default();
    let results: Vec<(String, Result<Vec<WrittenObject>, StoreError>)> =
        futures::stream::iter(keys.iter().map(|key| {
            let retry = &retry;
            async move {
                let found = owned_at(store, plan, key, retry).await;
                // A dead attempt may have left an upload open on its key: abort it (it holds
                // no object version; only this package's runs write under its folder).
                if let Ok(open) = retry
                    .run(|_| store.open_uploads(&plan.target_bucket, key))
                    .await
                {
                    for upload in &open {
                        let _ = retry
                            .run(|_| store.abort_multipart(&plan.target_bucket, key, upload))
                            .await;
                    }
                }
                (key.clone(), found)
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
    let mut owned = Vec::new();
    for (key, result) in results {
        match result {
            Ok(found) => owned.extend(found),
            Err(e) => report.not_deleted.push(format!(
                "s3://{}/{key}: cannot tell whether run {} wrote it ({e})",
                plan.target_bucket, plan.run_id
            )),
        }
    }
    owned
}

/// Before a new attempt of `shard` (a copier the state machine retried): removes the object
/// versions earlier attempts of the shard wrote wherever S3 gave them a version id. The new
/// attempt writes versions of its own, so theirs would stay behind, tagged but in no
/// manifest, after the run publishes. (An object without a version id is the key's only
/// object, and the new attempt claims it by its tag.) S3's answers decide, not the plan's view
/// of the bucket, which may be inferred. Earlier attempts are known from their failure
/// records; one that never closed (its copier died) has its shard's keys searched for this
/// run's tag. Returns how many versions were removed.
pub async fn clear_earlier_attempts(
    store: &dyn ObjectStore,
    staging: &Staging,
    plan: &RunPlan,
    shard: &Shard,
) -> Result<usize, StagingError> {
    let attempts_prefix = staging.attempts_prefix();
    let failures_prefix = staging.failures_prefix();
    let of_shard = format!("{:06}-", shard.shard);
    let (shard_attempts, shard_failures) = (
        format!("{attempts_prefix}{of_shard}"),
        format!("{failures_prefix}{of_shard}"),
    );
    let (attempts, failures) = tokio::join!(
        staging.list_keys(&shard_attempts),
        staging.list_keys(&shard_failures),
    );
    let (attempts, failures) = (attempts?, failures?);
    if attempts.is_empty() {
        return Ok(0);
    }
    let mut earlier = Vec::new();
    let mut search = Vec::new();
    let mut closed = HashSet::new();
    for key in &failures {
        if let Some(record) = staging.get::<FailureRecord>(key).await? {
            closed.insert(record.attempt.clone());
            earlier.extend(record.created);
            search.extend(record.in_doubt);
        }
    }
    let died = attempts.iter().any(|key| {
        parse_attempt_key(&attempts_prefix, key).is_some_and(|(_, a)| !closed.contains(&a))
    });
    if died {
        search = shard
            .objects
            .iter()
            .map(|o| plan.destination_of(o))
            .collect();
    }
    let retry = RetryPolicy::default();
    let found: Vec<Result<Vec<WrittenObject>, StoreError>> =
        futures::stream::iter(search.iter().map(|key| owned_at(store, plan, key, &retry)))
            .buffer_unordered(32)
            .collect()
            .await;
    for found in found {
        earlier.extend(found?);
    }
    earlier.retain(|o| o.version_id.as_deref().is_some_and(|v| v != "null"));
    earlier.sort_by(|a, b| (&a.key, &a.version_id).cmp(&(&b.key, &b.version_id)));
    earlier.dedup_by(|a, b| a.key == b.key && a.version_id == b.version_id);
    let package_prefix = plan.package_prefix();
    earlier.retain(|o| o.key.starts_with(&package_prefix));
    let mut removed = 0;
    for (object, result) in delete_all_owned(store, plan, earlier, &retry).await {
        match result {
            Ok(_) => removed += 1,
            Err(e) => {
                tracing::warn!(key = %object.key, version = ?object.version_id, error = %e, "cannot remove an earlier attempt's copy");
                return Err(StagingError::from(e));
            }
        }
    }
    Ok(removed)
}

/// The versions at `key` that carry run `plan`'s tag.
pub async fn owned_at(
    store: &dyn ObjectStore,
    plan: &RunPlan,
    key: &str,
    retry: &RetryPolicy,
) -> Result<Vec<WrittenObject>, StoreError> {
    let bucket = plan.target_bucket.as_str();
    let is_ours = |tag: &Option<String>| tag.as_deref() == Some(plan.run_id.as_str());
    // Unversioned or suspended: only the current object can be ours. Its ETag, read before
    // its tag, guards the delete: if another writer replaces it in between, the tag read sees
    // theirs, or the conditional delete refuses.
    let current = if plan.target_versioning == Versioning::Enabled {
        None
    } else {
        match retry.run(|_| store.head(bucket, key, None)).await {
            Ok(info) => Some(info),
            Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    // A real version id in S3's answer means the bucket keeps versions, whatever the plan
    // could learn of it (some servers' versioning answers cannot be read).
    let keeps_versions = current
        .as_ref()
        .is_none_or(|info| info.version_id.as_deref().is_some_and(|v| v != "null"));
    if keeps_versions {
        let versions = retry.run(|_| store.list_versions(bucket, key)).await?;
        let mut owned = Vec::new();
        for v in versions
            .into_iter()
            .filter(|v| v.key == key && !v.is_delete_marker)
        {
            let tag = retry
                .run(|_| store.tag_value(bucket, key, v.version_id.as_deref(), RUN_TAG))
                .await;
            match tag {
                Ok(tag) if is_ours(&tag) => owned.push(WrittenObject {
                    key: key.to_string(),
                    version_id: v.version_id,
                    etag: None,
                }),
                Ok(_) => {}
                Err(e) if e.kind == StoreErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(owned);
    }
    let info = current.expect("read above when the bucket keeps no versions");
    match retry
        .run(|_| store.tag_value(bucket, key, None, RUN_TAG))
        .await
    {
        Ok(tag) if is_ours(&tag) => Ok(vec![WrittenObject {
            key: key.to_string(),
            version_id: info.version_id,
            etag: info.etag,
        }]),
        Ok(_) => Ok(Vec::new()),
        Err(e) if e.kind == StoreErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Where a run is, as its journal tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Planned or copying: not committed. A run in this state that no process is running
    /// any more is rolled back by `s3quilt runs abort`.
    Uncommitted,
    /// Committed; its pointers may still be missing (`s3quilt runs resume` writes them).
    Committed {
        /// Top hash.
        top_hash: String,
    },
    /// Rollback decided; its clean-up did not finish (`s3quilt runs abort` finishes it).
    Aborted {
        /// Why.
        reason: String,
    },
}

/// A run found in a registry's staging area.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// `namespace/name`.
    pub package: String,
    /// Unix seconds when planning started.
    pub started_at: u64,
    /// Where it is.
    #[serde(flatten)]
    pub state: RunState,
    /// Objects planned.
    pub objects: u64,
    /// Target bucket.
    pub target_bucket: String,
    /// The Step Functions execution (ARN) that made the run, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// The runs in `registry_bucket`'s staging area (runs in progress, and runs that died), oldest
/// first. A run whose plan document cannot be read is listed with what is known.
pub async fn list_runs(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
) -> Result<Vec<RunInfo>, StoreError> {
    let retry = RetryPolicy::default();
    let mut run_ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = retry
            .run(|_| {
                store.list_page(
                    registry_bucket,
                    STAGING_ROOT,
                    Some("/"),
                    token.clone(),
                    None,
                )
            })
            .await?;
        run_ids.extend(page.common_prefixes.iter().filter_map(|p| {
            p.strip_prefix(STAGING_ROOT)?
                .strip_suffix('/')
                .map(str::to_string)
        }));
        match page.next_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    let runs: Vec<Option<RunInfo>> = futures::stream::iter(run_ids.into_iter().map(|run_id| {
        let store = store.clone();
        async move { run_info(store, registry_bucket, &run_id).await.ok() }
    }))
    .buffered(16)
    .collect()
    .await;
    let mut runs: Vec<RunInfo> = runs.into_iter().flatten().collect();
    runs.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
    Ok(runs)
}

/// One run's plan and state.
pub async fn run_info(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
) -> Result<RunInfo, TransactionError> {
    let staging = Staging::new(store, registry_bucket, run_id);
    let (plan_key, outcome_key) = (staging.plan_key(), staging.outcome_key());
    let (plan, outcome) = tokio::join!(
        staging.get::<RunPlan>(&plan_key),
        staging.get::<Outcome>(&outcome_key)
    );
    let Some(plan) = plan? else {
        return Err(TransactionError::NotFound {
            bucket: registry_bucket.to_string(),
            run_id: run_id.to_string(),
        });
    };
    let state = match outcome? {
        None => RunState::Uncommitted,
        Some(Outcome::Committed { top_hash, .. }) => RunState::Committed { top_hash },
        Some(Outcome::Aborted { reason }) => RunState::Aborted { reason },
    };
    Ok(RunInfo {
        run_id: plan.run_id.clone(),
        package: plan.package_name.to_string(),
        started_at: plan.started_at,
        state,
        objects: plan.objects,
        target_bucket: plan.target_bucket.clone(),
        execution: plan.execution.clone(),
    })
}

/// Undoes run `run_id` of `registry_bucket` from its journal (`s3quilt runs abort`): for a run
/// whose process died, or one that failed and could not clean up. Refused for a committed run.
pub async fn abort_run(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
) -> Result<RollbackReport, TransactionError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    let Some(plan) = staging.get::<RunPlan>(&staging.plan_key()).await? else {
        // Without a plan document the run never copied (the plan is written before any copy):
        // only staging documents can be left.
        let present = staging
            .list_keys(&staging.prefix())
            .await
            .map_err(StagingError::from)?;
        if present.is_empty() {
            return Err(TransactionError::NotFound {
                bucket: registry_bucket.to_string(),
                run_id: run_id.to_string(),
            });
        }
        return Ok(RollbackReport {
            not_deleted: staging.remove_all().await,
            ..RollbackReport::default()
        });
    };
    roll_back(
        store,
        &plan,
        RollbackScope::Journal { also: Vec::new() },
        "aborted by `s3quilt runs abort`",
    )
    .await
}

/// Where an abort of a run that other processes may still be copying for stands.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortProgress {
    /// Rolled back.
    Done(RollbackReport),
    /// `aborted` is decided (copiers stop at their next look at the outcome), but attempts are
    /// open whose copier may still be writing: nothing is deleted yet; try again after `wait`.
    Waiting {
        /// Attempts still open and younger than the copier's time limit.
        open_attempts: usize,
        /// When to look again.
        wait: Duration,
    },
}

/// Aborts run `run_id` while copiers of it may still be running elsewhere (the AWS rollback:
/// Step Functions stops a failed Map's child executions, not their Lambda invocations). The
/// outcome is decided `aborted` first: a copier reads it every [`crate::copy::FENCE_POLL`] and
/// at the start of a shard, and then starts nothing more and closes its attempt. Objects are
/// deleted only once no attempt is open, or every open one is older than `copier_timeout`
/// (its process is gone): only then is the journal complete. Refused for a committed run.
pub async fn abort_fenced(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
    copier_timeout: Duration,
    reason: &str,
) -> Result<AbortProgress, TransactionError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    let Some(plan) = staging.get::<RunPlan>(&staging.plan_key()).await? else {
        return abort_run(store, registry_bucket, run_id)
            .await
            .map(AbortProgress::Done);
    };
    decide_aborted(&staging, &plan, reason).await?;
    let now = unix_now();
    let open: Vec<u64> = open_attempts(&staging)
        .await?
        .into_iter()
        .filter(|started| started.saturating_add(copier_timeout.as_secs()) > now)
        .collect();
    if let Some(youngest) = open.iter().max() {
        let left = youngest.saturating_add(copier_timeout.as_secs()) - now;
        return Ok(AbortProgress::Waiting {
            open_attempts: open.len(),
            wait: Duration::from_secs(left.clamp(1, ABORT_POLL_SECS)),
        });
    }
    roll_back(
        store,
        &plan,
        RollbackScope::Journal { also: Vec::new() },
        reason,
    )
    .await
    .map(AbortProgress::Done)
}

/// The longest an [`AbortProgress::Waiting`] asks to wait before looking again (copiers close
/// their attempts within seconds of the decision).
const ABORT_POLL_SECS: u64 = 10;

/// When each attempt of the run that is still open (no failure record of its own, no fragment
/// of its shard) started; an attempt whose marker cannot be read counts as just started.
async fn open_attempts(staging: &Staging) -> Result<Vec<u64>, StagingError> {
    let (attempts_prefix, failures_prefix) = (staging.attempts_prefix(), staging.failures_prefix());
    let fragments_prefix = format!("{}fragments/", staging.prefix());
    let (attempts, failures, fragments) = tokio::join!(
        staging.list_keys(&attempts_prefix),
        staging.list_keys(&failures_prefix),
        staging.list_keys(&fragments_prefix),
    );
    let (attempts, failures, fragments) = (attempts?, failures?, fragments?);
    let failed: HashSet<String> = failures
        .iter()
        .filter_map(|k| k.strip_prefix(&failures_prefix).map(str::to_string))
        .collect();
    let done: HashSet<u32> = fragments
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&fragments_prefix)?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    let open: Vec<String> = attempts
        .into_iter()
        .filter(|key| {
            parse_attempt_key(&attempts_prefix, key).is_some_and(|(shard, _)| {
                !done.contains(&shard) && !failed.contains(&key[attempts_prefix.len()..])
            })
        })
        .collect();
    Ok(
        futures::stream::iter(open.into_iter().map(|key| async move {
            match staging.get::<AttemptMarker>(&key).await {
                Ok(Some(marker)) => marker.started_at,
                _ => unix_now(),
            }
        }))
        .buffer_unordered(16)
        .collect()
        .await,
    )
}

/// Finishes committed run `run_id` (`s3quilt runs resume`): writes the manifest and pointers
/// that are missing, from the journal. Refused for a run that is not committed (nothing may be
/// published that did not reach the commit point: abort it instead).
pub async fn resume_run(
    store: Arc<dyn ObjectStore>,
    registry_bucket: &str,
    run_id: &str,
) -> Result<crate::finalize::PackageResult, crate::finalize::FinalizeError> {
    let staging = Staging::new(store.clone(), registry_bucket, run_id);
    if let Some(done) = staging
        .get::<crate::finalize::PackageResult>(&staging.result_key())
        .await?
    {
        return Ok(done);
    }
    match staging.get::<Outcome>(&staging.outcome_key()).await? {
        Some(Outcome::Committed { .. }) => {
            crate::finalize::finalize(store, registry_bucket, run_id).await
        }
        Some(Outcome::Aborted { reason }) => Err(TransactionError::Aborted {
            run_id: run_id.to_string(),
            reason,
        }
        .into()),
        None => Err(crate::finalize::FinalizeError::NotCommitted {
            run_id: run_id.to_string(),
        }),
    }
}
