//! The MCP tools: thin adapters from tool arguments to core calls and back. Every failure is a
//! tool error (`isError: true`) whose text says what to fix; every success has structured
//! content matching the tool's output schema, a one-line summary and the same JSON as text.

use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use s3quilt_core::guard::{BucketGuard, GuardError};
use s3quilt_core::quilt::{Json, PackageName};
use s3quilt_core::registry::Registry;
use s3quilt_core::request::{PackageRequest, parse_bucket, workflow_field};
use s3quilt_core::storage::{ObjectStore, StoreErrorKind};
use serde::Serialize;

use super::ToolError;
use super::explicit;
use super::paging::{self, PAGE_BYTES, Resume};
use super::runs::{Notifier, RunRef, Runs, StartOptions, human_bytes, progress_text};
use super::types::{
    Args, BrowseParams, CreateFromS3Params, CreateParams, EntryView, InfoParams, ListParams,
    MAX_PAGE, MAX_WAIT_SECONDS, ObjectDetails, ObjectSummary, ObjectsPage, PackageContents,
    PackagesParams, PackagesView, RunStatus, RunView, RunsAction, RunsParams, RunsView,
    StagedRunView, StatusParams, VersionView, input_schema, output_schema, with_registry_argument,
};

const INSTRUCTIONS: &str = "s3quilt turns what sits in S3 into Quilt data packages with server-side copies (no bytes pass through this machine). \
Explore with bucket_objects_list and bucket_object_info; preview with package_create_from_s3 and dry_run=true (the preview shows exactly the logical keys the package gets); \
create with package_create_from_s3 (a folder, with include/exclude globs) or package_create (listed objects and folders). \
A creation returns within wait_seconds: when it returns status \"running\", follow it with package_create_status. \
Read packages with packages_list and package_browse. Failed runs are rolled back and reported as tool errors.";

/// The tools' registry arguments, which fall back to the server's default registry.
const REGISTRY_ARGUMENTS: [(&str, &str); 5] = [
    ("package_create_from_s3", "target_registry"),
    ("package_create", "target_registry"),
    ("packages_list", "registry"),
    ("package_runs", "registry"),
    ("package_browse", "registry"),
];

/// The s3quilt MCP server.
#[derive(Clone)]
pub struct S3QuiltServer {
    state: Arc<State>,
    tool_router: ToolRouter<S3QuiltServer>,
}

struct State {
    store: Arc<dyn ObjectStore>,
    default_registry: Option<String>,
    /// Which buckets calls may name, and whether they may write.
    guard: BucketGuard,
    runs: Runs,
}

fn refused(e: GuardError) -> ToolError {
    ToolError(e.to_string())
}

/// A result with structured content, a one-line summary, and the same JSON as text (for
/// clients that show only text).
fn structured<T: Serialize>(
    value: &T,
    summary: String,
    is_error: bool,
) -> Result<CallToolResult, McpError> {
    let json = serde_json::to_value(value)
        .map_err(|e| McpError::internal_error(format!("result not serializable: {e}"), None))?;
    let mut result = if is_error {
        CallToolResult::structured_error(json.clone())
    } else {
        CallToolResult::structured(json.clone())
    };
    result.content = vec![
        ContentBlock::text(summary),
        ContentBlock::text(json.to_string()),
    ];
    Ok(result)
}

/// A tool error: the message says what to fix.
fn failure(error: ToolError) -> Result<CallToolResult, McpError> {
    tracing::info!("tool error: {}", error.0);
    Ok(CallToolResult::error(vec![ContentBlock::text(error.0)]))
}

/// Builds and drives a future on a blocking-pool thread: rustc cannot prove `Send` for the
/// journal's futures (higher-ranked lifetimes in their stream closures), which a tool's future
/// must be; built on that thread, they never cross threads.
async fn off_runtime<T, F, Fut>(make: F) -> Result<T, ToolError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(make()))
        .await
        .map_err(|e| ToolError(format!("internal error: {e}")))
}

fn respond<T: Serialize>(
    outcome: Result<(T, String), ToolError>,
) -> Result<CallToolResult, McpError> {
    match outcome {
        Ok((value, summary)) => structured(&value, summary, false),
        Err(e) => failure(e),
    }
}

/// A run's result: success while running or succeeded; a tool error (still with the structured
/// run, so the run id and rollback report are there) when it failed.
fn run_result(view: RunView) -> Result<CallToolResult, McpError> {
    structured(&view, run_summary(&view), view.status == RunStatus::Failed)
}

fn run_summary(view: &RunView) -> String {
    let summary = run_outcome(view);
    match view.plan.as_ref().map(|p| &p.warnings) {
        Some(warnings) if !warnings.is_empty() => {
            format!("{summary} Warning: {}.", warnings.join("; "))
        }
        _ => summary,
    }
}

fn run_outcome(view: &RunView) -> String {
    match (&view.status, &view.package, &view.plan) {
        (RunStatus::Running, _, _) => format!(
            "Run {} is still going ({}). {}",
            view.run_id,
            progress_text(&view.progress),
            view.next_step
        ),
        (RunStatus::Succeeded, Some(p), _) => format!(
            "Created {} in {}: {} entries, {}, top hash {}.{}",
            p.package_name,
            p.registry,
            p.objects,
            human_bytes(p.bytes),
            p.top_hash,
            if p.manifest_replaced {
                " An earlier version had the same top hash with its entries elsewhere: its manifest was replaced, so this version's entries stand (that version now reads them too)."
            } else {
                ""
            }
        ),
        (RunStatus::Succeeded, None, Some(plan)) => format!(
            "Dry run: {} objects ({}) from {} would become {} in {}. First logical keys: {}.",
            plan.objects,
            human_bytes(plan.bytes),
            plan.source,
            plan.package_name,
            plan.registry,
            plan.sample_logical_keys.join(", ")
        ),
        (RunStatus::Succeeded, None, None) => format!("Run {} succeeded.", view.run_id),
        (RunStatus::Failed, _, _) => format!(
            "Run {} failed: {}. {}",
            view.run_id,
            view.error.as_deref().unwrap_or("unknown error"),
            view.next_step
        ),
    }
}

/// The request `package_create_from_s3`'s arguments describe, written to `registry`.
fn from_s3_request(p: CreateFromS3Params, registry: &str) -> PackageRequest {
    let mut request = PackageRequest::new(
        &p.source_bucket,
        &p.source_prefix,
        &p.package_name,
        registry,
    );
    request.target_bucket = p.target_bucket;
    request.description = p.description;
    request.include_patterns = p.include_patterns;
    request.exclude_patterns = p.exclude_patterns;
    request.preserve_structure = p.preserve_structure;
    request.metadata = p.metadata.map(serde_json::Value::Object);
    request.copy = p.copy;
    request.hash_type = p.hash_type.map(Into::into);
    request.overwrite_existing = p.overwrite_existing;
    request.object_metadata = p.object_metadata.map(Into::into).unwrap_or_default();
    request.incremental = p.incremental;
    request.base = p.base.clone();
    request.verify_base = p.verify_base;
    request.publish_unchanged = p.publish_unchanged;
    request.dry_run = p.dry_run;
    request
}

/// A page size argument, refused outside 1-[`MAX_PAGE`] rather than quietly changed.
fn page_size(field: &str, value: u32) -> Result<u32, ToolError> {
    if (1..=MAX_PAGE).contains(&value) {
        Ok(value)
    } else {
        Err(ToolError(format!(
            "{field}: {value} is out of range; give 1 to {MAX_PAGE}"
        )))
    }
}

/// A token that decoded but cannot be from this listing (its digest matched by chance, or an
/// older server's format).
fn not_a_listing_token() -> ToolError {
    ToolError(
        "continuation_token: not a token of this listing; pass the previous page's next_continuation_token unchanged, or omit it for the first page".into(),
    )
}

/// The end of a listing page's summary: whether the page was cut to fit the context (`limit`
/// names the page size argument it fell short of) and how to get the next one.
fn continuation_note(limit: &str, cut_for_size: bool, has_next: bool) -> String {
    let mut note = String::new();
    if cut_for_size {
        note += &format!(
            "; it ends before {limit} to stay under {} KiB",
            PAGE_BYTES / 1024
        );
    }
    if has_next {
        note += "; more: call again with next_continuation_token as continuation_token";
    }
    note
}

/// `bucket_object_info`'s key, also accepted as the object's URI `s3://bucket/key` (what
/// agents copy from a listing's `uri`): its bucket must be the `bucket` argument.
fn key_in_bucket(bucket: &str, key: String) -> Result<String, ToolError> {
    let Some(uri) = key.strip_prefix("s3://") else {
        return Ok(key);
    };
    match uri.split_once('/') {
        Some((in_uri, rest)) if in_uri == bucket => Ok(rest.to_string()),
        _ => Err(ToolError(format!(
            "key: {key:?} is a URI of another bucket than {bucket:?}; give the key inside {bucket} (e.g. \"data/file.csv\"), or that URI's bucket as bucket"
        ))),
    }
}

/// `package_create_from_s3`'s `source_bucket` given as `s3://bucket/folder/`: the folder is
/// the `source_prefix` when that is not given; both given is ambiguous and refused.
fn split_source(p: &mut CreateFromS3Params) -> Result<(), ToolError> {
    let without_scheme = p
        .source_bucket
        .strip_prefix("s3://")
        .unwrap_or(&p.source_bucket);
    let Some((bucket, folder)) = without_scheme.split_once('/') else {
        return Ok(());
    };
    if folder.is_empty() {
        return Ok(());
    }
    if !p.source_prefix.is_empty() {
        return Err(ToolError(format!(
            "source_bucket: {:?} has a path and source_prefix is {:?} too; give only the bucket name as source_bucket and the folder as source_prefix",
            p.source_bucket, p.source_prefix
        )));
    }
    (p.source_bucket, p.source_prefix) = (bucket.to_string(), folder.to_string());
    Ok(())
}

/// `tags` as the metadata's `"tags"` list: what quilt3 (`meta`) and the catalog show of a
/// version. A `tags` key in `metadata` as well is ambiguous and refused.
fn tags_into_metadata(p: &mut CreateFromS3Params) -> Result<(), ToolError> {
    if p.tags.is_empty() {
        return Ok(());
    }
    if let Some(i) = p.tags.iter().position(|t| t.trim().is_empty()) {
        return Err(ToolError(format!(
            "tags: tag {i} is empty; give each tag as a non-empty string (e.g. [\"churn\", \"2024-06\"])"
        )));
    }
    let metadata = p.metadata.get_or_insert_with(Default::default);
    if metadata.contains_key("tags") {
        return Err(ToolError(
            "tags: metadata already has a \"tags\" key; give the tags in one of them".into(),
        ));
    }
    let tags = std::mem::take(&mut p.tags);
    metadata.insert("tags".into(), serde_json::Value::from(tags));
    Ok(())
}

fn wait(seconds: u32) -> Duration {
    Duration::from_secs(seconds.min(MAX_WAIT_SECONDS).into())
}

fn notifier(ctx: &RequestContext<RoleServer>) -> Option<Notifier> {
    ctx.meta
        .get_progress_token()
        .map(|token| Notifier::new(ctx.peer.clone(), token))
}

impl S3QuiltServer {
    /// A server over `store`, with a default registry and runs started by `runs`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        default_registry: Option<String>,
        guard: BucketGuard,
        runs: Runs,
    ) -> Self {
        let mut tool_router = Self::tool_router();
        // The schemas say whether a registry argument may be left out here: required without
        // a default registry, and naming the default when there is one.
        let default = default_registry
            .as_deref()
            .map(|r| r.strip_prefix("s3://").unwrap_or(r).trim_end_matches('/'));
        for (tool, argument) in REGISTRY_ARGUMENTS {
            if let Some(route) = tool_router.map.get_mut(tool) {
                route.attr.input_schema =
                    with_registry_argument(&route.attr.input_schema, argument, default);
            }
        }
        S3QuiltServer {
            state: Arc::new(State {
                store,
                default_registry,
                guard,
                runs,
            }),
            tool_router,
        }
    }

    /// Waits until every local run has ended.
    pub async fn wait_for_runs(&self) {
        self.state.runs.wait_all().await;
    }

    fn registry_bucket(
        &self,
        field: &'static str,
        given: Option<&str>,
    ) -> Result<String, ToolError> {
        let value = given
            .filter(|r| !r.is_empty())
            .or(self.state.default_registry.as_deref())
            .ok_or_else(|| {
                ToolError(format!(
                    "{field}: no registry given and this server has no default; pass {field} (e.g. \"s3://my-quilt-registry\"), or start the server with --registry / S3QUILT_REGISTRY"
                ))
            })?;
        self.bucket(field, value)
    }

    /// A bucket argument: valid, and one this server may use.
    fn bucket(&self, field: &'static str, value: &str) -> Result<String, ToolError> {
        let bucket = parse_bucket(field, value).map_err(|e| ToolError(e.to_string()))?;
        self.state
            .guard
            .check_bucket(field, &bucket)
            .map_err(refused)?;
        Ok(bucket)
    }

    /// Validates, starts and follows a run: errors found by validation or planning come back
    /// from this call.
    async fn create(
        &self,
        request: PackageRequest,
        start: StartOptions,
        wait_seconds: u32,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let valid = match request.validate() {
            Ok(valid) => valid,
            Err(e) => return failure(ToolError(format!("invalid request: {e}"))),
        };
        // Before any request is sent for it: no listing of a bucket the server may not use.
        if let Err(e) = self.state.guard.check_request(&valid) {
            return failure(refused(e));
        }
        let run = match self.state.runs.start(request, start).await {
            Ok(run) => run,
            Err(e) => return failure(e),
        };
        self.follow(&run, wait_seconds, true, ctx).await
    }

    async fn follow(
        &self,
        run: &RunRef,
        wait_seconds: u32,
        until_planned: bool,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let ct = ctx.ct.clone();
        let followed = self
            .state
            .runs
            .follow(
                run,
                wait(wait_seconds),
                until_planned,
                notifier(&ctx),
                async move { ct.cancelled().await },
            )
            .await;
        match followed {
            Ok(view) => run_result(view),
            Err(e) => failure(e),
        }
    }

    async fn list(&self, p: ListParams) -> Result<(ObjectsPage, String), ToolError> {
        let bucket = self.bucket("bucket", &p.bucket)?;
        let delimiter = p.delimiter.filter(|d| !d.is_empty());
        let max_keys = page_size("max_keys", p.max_keys)?;
        let listing = paging::listing(&[
            "bucket_objects_list",
            &bucket,
            &p.prefix,
            delimiter.as_deref().unwrap_or_default(),
        ]);
        let (mut s3_token, mut served) = match p.continuation_token.filter(|t| !t.is_empty()) {
            None => (None, None),
            Some(token) => match paging::decode(&token, &listing, "bucket_objects_list")? {
                Resume::Objects { s3_token, served } => (s3_token, served),
                _ => return Err(not_a_listing_token()),
            },
        };
        if served
            .as_ref()
            .is_some_and(|s| !(1..=MAX_PAGE).contains(&s.max_keys))
        {
            return Err(not_a_listing_token());
        }
        // The S3 page being served and its items after what earlier calls returned. When
        // objects were added before that point meanwhile, the page may hold nothing after it:
        // go on to S3's next page.
        let (items, listed_with, s3_next) = loop {
            let listed_with = served.as_ref().map_or(max_keys, |s| s.max_keys);
            let page = self
                .state
                .store
                .list_page(
                    &bucket,
                    &p.prefix,
                    delimiter.as_deref(),
                    s3_token.clone(),
                    Some(listed_with as i32),
                )
                .await
                .map_err(ToolError::store)?;
            let objects = page
                .objects
                .into_iter()
                .map(|o| ObjectSummary {
                    uri: format!("s3://{bucket}/{}", o.key),
                    key: o.key,
                    size: o.size,
                    last_modified: o.last_modified,
                    storage_class: o.storage_class,
                    etag: o.etag,
                })
                .collect();
            let mut items = paging::merged(objects, page.common_prefixes);
            if let Some(done) = &served {
                items.retain(|i| i.name() > done.after.as_str());
                if items.is_empty() && page.next_token.is_some() {
                    s3_token = page.next_token;
                    served = None;
                    continue;
                }
            }
            break (items, listed_with, page.next_token);
        };
        let (page, next) = paging::serve_s3_page(items, s3_token, listed_with, s3_next, max_keys);
        let next_continuation_token = next.map(|at| paging::encode(&listing, at));
        let (objects, common_prefixes) = paging::split(page.items);
        let summary = format!(
            "s3://{bucket}/{}: {} objects and {} folders on this page{}.",
            p.prefix,
            objects.len(),
            common_prefixes.len(),
            continuation_note(
                "max_keys",
                page.cut_for_size,
                next_continuation_token.is_some()
            )
        );
        Ok((
            ObjectsPage {
                bucket,
                prefix: p.prefix,
                delimiter,
                objects,
                common_prefixes,
                next_continuation_token,
            },
            summary,
        ))
    }

    async fn info(&self, mut p: InfoParams) -> Result<(ObjectDetails, String), ToolError> {
        let bucket = self.bucket("bucket", &p.bucket)?;
        p.key = key_in_bucket(&bucket, p.key)?;
        if p.key.is_empty() {
            return Err(ToolError(
                "key: give the object's full key, e.g. \"data/file.csv\" (bucket_objects_list shows the keys)".into(),
            ));
        }
        let version = p.version_id.as_deref().filter(|v| !v.is_empty());
        let info = self
            .state
            .store
            .head(&bucket, &p.key, version)
            .await
            .map_err(|e| match e.kind {
                StoreErrorKind::NotFound => ToolError(format!(
                    "s3://{bucket}/{}{} does not exist; check the key with bucket_objects_list (keys are case-sensitive and match exactly)",
                    p.key,
                    version.map(|v| format!(" (version {v})")).unwrap_or_default()
                )),
                _ => ToolError::store(e),
            })?;
        let uri = format!("s3://{bucket}/{}", p.key);
        let summary = format!(
            "{uri}: {}, {}, {}.",
            human_bytes(info.size),
            info.content_type.as_deref().unwrap_or("no content type"),
            info.storage_class
        );
        Ok((
            ObjectDetails {
                bucket,
                key: p.key,
                uri,
                size: info.size,
                content_type: info.content_type,
                metadata: info.metadata,
                version_id: info.version_id,
                storage_class: info.storage_class,
                last_modified: info.last_modified,
                etag: info.etag,
                checksum_sha256: info.checksum_sha256,
                checksum_crc64nvme: info.checksum_crc64nvme,
                checksum_type: info.checksum_type,
                parts_count: info.parts_count,
                restore: info.restore,
            },
            summary,
        ))
    }

    async fn packages(&self, p: PackagesParams) -> Result<(PackagesView, String), ToolError> {
        let bucket = self.registry_bucket("registry", p.registry.as_deref())?;
        let registry = Registry::new(self.state.store.clone(), bucket);
        let max_items = page_size("max_items", p.max_items)? as usize;
        let token = p.continuation_token.filter(|t| !t.is_empty());
        if let Some(name) = p.package_name.filter(|n| !n.is_empty()) {
            let name: PackageName = name
                .parse()
                .map_err(|e| ToolError(format!("package_name: {e}")))?;
            let listing = paging::listing(&["versions", &registry.url(), name.as_str()]);
            let after = match token {
                None => None,
                Some(t) => match paging::decode(&t, &listing, "packages_list")? {
                    Resume::Versions { after } => Some(after),
                    _ => return Err(not_a_listing_token()),
                },
            };
            let versions = registry
                .versions(&name)
                .await
                .map_err(ToolError::registry)?;
            let total = versions.len();
            let latest = versions
                .last()
                .map(|v| v.top_hash.clone())
                .unwrap_or_default();
            // Resuming after a timestamp, not at an offset: versions pushed meanwhile (always
            // later) come at the end, none is skipped or repeated.
            let rest: Vec<VersionView> = versions
                .into_iter()
                .filter_map(|v| {
                    let stamp: u64 = v.timestamp.parse().ok()?;
                    after.is_none_or(|a| stamp > a).then_some(VersionView {
                        timestamp: v.timestamp,
                        top_hash: v.top_hash,
                    })
                })
                .collect();
            let page = paging::page(rest, max_items, PAGE_BYTES);
            let next_continuation_token = page
                .more
                .then(|| page.items.last())
                .flatten()
                .and_then(|v| v.timestamp.parse().ok())
                .map(|after| paging::encode(&listing, Resume::Versions { after }));
            let summary = format!(
                "{name} in {} has {total} versions; the latest is {latest}; this page has {}{}.",
                registry.url(),
                page.items.len(),
                continuation_note(
                    "max_items",
                    page.cut_for_size,
                    next_continuation_token.is_some()
                )
            );
            return Ok((
                PackagesView {
                    registry: registry.url(),
                    packages: Vec::new(),
                    versions: page.items,
                    total: total as u64,
                    next_continuation_token,
                },
                summary,
            ));
        }
        let prefix = p.prefix.unwrap_or_default();
        let listing = paging::listing(&["packages", &registry.url(), &prefix]);
        let after: Option<PackageName> = match token {
            None => None,
            Some(t) => match paging::decode(&t, &listing, "packages_list")? {
                Resume::Packages { after } => {
                    Some(after.parse().map_err(|_| not_a_listing_token())?)
                }
                _ => return Err(not_a_listing_token()),
            },
        };
        let matching: Vec<PackageName> = registry
            .packages()
            .await
            .map_err(ToolError::registry)?
            .into_iter()
            .filter(|n| n.as_str().starts_with(&prefix))
            .collect();
        let total = matching.len();
        // Names come sorted: resuming after the last name served stays right when packages
        // are added or deleted between calls.
        let rest: Vec<String> = matching
            .into_iter()
            .filter(|n| after.as_ref().is_none_or(|a| n > a))
            .map(|n| n.to_string())
            .collect();
        let page = paging::page(rest, max_items, PAGE_BYTES);
        let next_continuation_token = page.more.then(|| page.items.last()).flatten().map(|last| {
            paging::encode(
                &listing,
                Resume::Packages {
                    after: last.clone(),
                },
            )
        });
        let summary = format!(
            "{total} packages in {}{}; this page has {}{}.",
            registry.url(),
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" starting with {prefix:?}")
            },
            page.items.len(),
            continuation_note(
                "max_items",
                page.cut_for_size,
                next_continuation_token.is_some()
            )
        );
        Ok((
            PackagesView {
                registry: registry.url(),
                packages: page.items,
                versions: Vec::new(),
                total: total as u64,
                next_continuation_token,
            },
            summary,
        ))
    }

    async fn staged_runs(&self, p: RunsParams) -> Result<(RunsView, String), ToolError> {
        use s3quilt_core::transaction::{RunState, abort_run, list_runs, resume_run};
        let bucket = self.registry_bucket("registry", p.registry.as_deref())?;
        let store = self.state.store.clone();
        let action = p.action.unwrap_or(RunsAction::List);
        let run_id = || -> Result<String, ToolError> {
            match p.run_id.as_deref().map(str::trim) {
                Some(id) if s3quilt_core::staging::is_valid_run_id(id) => Ok(id.to_string()),
                Some(id) => Err(ToolError(format!(
                    "run_id: {id:?} is not a run id; package_runs with action \"list\" shows them"
                ))),
                None => Err(ToolError(
                    "run_id: required with action \"abort\" or \"resume\"; package_runs with action \"list\" shows the runs".into(),
                )),
            }
        };
        let done = match action {
            RunsAction::List => String::new(),
            RunsAction::Abort => {
                self.state
                    .guard
                    .check_write("action \"abort\"")
                    .map_err(refused)?;
                let id = run_id()?;
                let (store, bucket, run) = (store.clone(), bucket.clone(), id.clone());
                let report =
                    off_runtime(move || async move { abort_run(store, &bucket, &run).await })
                        .await?
                        .map_err(|e| ToolError(e.to_string()))?;
                let mut text = format!(
                    "Rolled back run {id}: {} object versions removed.",
                    report.deleted
                );
                if !report.not_deleted.is_empty() {
                    text.push_str(&format!(
                        " NOT removed (abort again): {}",
                        report.not_deleted.join(", ")
                    ));
                }
                text
            }
            RunsAction::Resume => {
                self.state
                    .guard
                    .check_write("action \"resume\"")
                    .map_err(refused)?;
                let id = run_id()?;
                let (store, bucket, run) = (store.clone(), bucket.clone(), id.clone());
                let package =
                    off_runtime(move || async move { resume_run(store, &bucket, &run).await })
                        .await?
                        .map_err(|e| ToolError(e.to_string()))?;
                format!(
                    "Finished run {id}: {} {} ({} objects).",
                    package.package_name, package.top_hash, package.objects
                )
            }
        };
        let listed = {
            let bucket = bucket.clone();
            off_runtime(move || async move { list_runs(store, &bucket).await }).await?
        };
        let runs: Vec<StagedRunView> = listed
            .map_err(ToolError::store)?
            .into_iter()
            .map(|r| StagedRunView {
                run_id: r.run_id,
                package: r.package,
                state: match r.state {
                    RunState::Uncommitted => "uncommitted",
                    RunState::Committed { .. } => "committed",
                    RunState::Aborted { .. } => "aborted",
                }
                .to_string(),
                started_at: r.started_at,
                objects: r.objects,
            })
            .collect();
        let summary = format!(
            "{}{} runs left in the staging of s3://{bucket}.",
            if done.is_empty() {
                String::new()
            } else {
                format!("{done} ")
            },
            runs.len()
        );
        Ok((
            RunsView {
                registry: format!("s3://{bucket}"),
                runs,
                done,
            },
            summary,
        ))
    }

    async fn browse(&self, p: BrowseParams) -> Result<(PackageContents, String), ToolError> {
        let bucket = self.registry_bucket("registry", p.registry.as_deref())?;
        let registry = Registry::new(self.state.store.clone(), bucket);
        let name: PackageName = p
            .package_name
            .parse()
            .map_err(|e| ToolError(format!("package_name: {e}")))?;
        let start: usize = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => c.parse().map_err(|_| {
                ToolError(format!(
                    "cursor: {c:?} is not a cursor from package_browse; pass the next_cursor of the previous page, or omit it for the first page"
                ))
            })?,
        };
        let (top_hash, manifest) = match p.top_hash.as_deref().filter(|h| !h.is_empty()) {
            Some(hash) => {
                let manifest = registry.manifest(hash).await.map_err(|e| {
                    ToolError(format!(
                        "{}; list the versions with packages_list and package_name {:?}",
                        ToolError::registry(e).0,
                        name.as_str()
                    ))
                })?;
                (hash.to_string(), manifest)
            }
            None => registry
                .latest_manifest(&name)
                .await
                .map_err(ToolError::registry)?,
        };
        let path_prefix = p.path_prefix.unwrap_or_default();
        let matching: Vec<_> = manifest
            .entries
            .iter()
            .filter(|e| e.logical_key.as_str().starts_with(&path_prefix))
            .collect();
        let page_size = page_size("max_entries", p.max_entries)? as usize;
        let end = (start + page_size).min(matching.len());
        let mut entries: Vec<EntryView> = matching
            .get(start.min(matching.len())..end)
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let hash = e.hash();
                EntryView {
                    logical_key: e.logical_key.to_string(),
                    physical_key: e.physical_keys.first().cloned().unwrap_or_default(),
                    size: e.size,
                    hash_type: hash.kind.as_str().to_string(),
                    hash: hash.value,
                    meta: Json::Object(e.meta.clone()).to_serde(),
                }
            })
            .collect();
        // An agent's context holds the page twice (structured and as text): entries with large
        // metadata end a page early rather than flood it.
        let cut = entries.len() - paging::fitting(&entries, PAGE_BYTES);
        entries.truncate(entries.len() - cut);
        let end = end - cut;
        let next_cursor = (end < matching.len()).then(|| end.to_string());
        let summary = format!(
            "{name}@{} in {}: {} entries ({}); showing {} from entry {}{}.",
            &top_hash[..top_hash.len().min(10)],
            registry.url(),
            manifest.entries.len(),
            human_bytes(manifest.entries.iter().map(|e| e.size).sum()),
            entries.len(),
            start,
            match (&next_cursor, cut) {
                (Some(c), 0) => format!("; more: call again with cursor {c:?}"),
                (Some(c), _) => format!(
                    "; the page ends early to stay under {} KiB; more: call again with cursor {c:?}",
                    PAGE_BYTES / 1024
                ),
                (None, _) => String::new(),
            }
        );
        Ok((
            PackageContents {
                package_name: name.to_string(),
                registry: registry.url(),
                top_hash,
                message: manifest.header.message().map(str::to_string),
                metadata: manifest
                    .header
                    .user_meta()
                    .map(Json::to_serde)
                    .unwrap_or(serde_json::Value::Null),
                total_entries: manifest.entries.len() as u64,
                total_bytes: manifest.entries.iter().map(|e| e.size).sum(),
                matching_entries: matching.len() as u64,
                entries,
                next_cursor,
            },
            summary,
        ))
    }
}

#[tool_router]
impl S3QuiltServer {
    /// Package an S3 folder (prefix) as a Quilt package version, copying objects server-side.
    /// Validates and plans first (errors name the argument to fix), then runs in the
    /// background: returns the new package when it finishes within `wait_seconds`, else a
    /// `run_id` to follow with `package_create_status`. Sends progress notifications (objects
    /// and bytes) when the request carries a progress token. A failed run is rolled back.
    #[tool(
        title = "Create a package from an S3 folder",
        input_schema = input_schema::<CreateFromS3Params>(),
        output_schema = output_schema::<RunView>(),
        annotations(
            title = "Create a package from an S3 folder",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn package_create_from_s3(
        &self,
        Args(mut p): Args<CreateFromS3Params>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        if let Err(e) = split_source(&mut p).and_then(|()| tags_into_metadata(&mut p)) {
            return failure(e);
        }
        let registry = match p.target_registry.as_deref() {
            Some(r) if !r.is_empty() => r.to_string(),
            _ => match self.registry_bucket("target_registry", None) {
                Ok(r) => r,
                Err(e) => return failure(e),
            },
        };
        let wait_seconds = p.wait_seconds;
        let start = match StartOptions::new(p.idempotency_key.clone(), p.max_concurrency) {
            Ok(start) => start,
            Err(e) => return failure(e),
        };
        let workflow = match workflow_field(p.workflow.clone(), p.no_workflow) {
            Ok(workflow) => workflow,
            Err(e) => return failure(ToolError(e.to_string())),
        };
        let mut request = from_s3_request(p, &registry);
        request.workflow = workflow;
        self.create(request, start, wait_seconds, ctx).await
    }

    /// Package listed S3 objects and folders (all in one bucket) as a Quilt package version,
    /// through the same engine as package_create_from_s3. Paths are kept, never flattened:
    /// same-named files in different folders stay separate entries. A logical key must be
    /// the end of its source's path; renaming is refused with the keys that are possible.
    #[tool(
        title = "Create a package from listed S3 objects",
        input_schema = input_schema::<CreateParams>(),
        output_schema = output_schema::<RunView>(),
        annotations(
            title = "Create a package from listed S3 objects",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn package_create(
        &self,
        Args(p): Args<CreateParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let registry = match self.registry_bucket("target_registry", p.target_registry.as_deref()) {
            Ok(r) => r,
            Err(e) => return failure(e),
        };
        // Each source's bucket before it is looked at (request_for reads the sources).
        for entry in &p.entries {
            if let Err(e) = self.state.guard.check_bucket("entries", &entry.source) {
                return failure(refused(e));
            }
        }
        match explicit::request_for(self.state.store.as_ref(), &p, registry).await {
            Ok(request) => {
                self.create(request, StartOptions::default(), p.wait_seconds, ctx)
                    .await
            }
            Err(e) => failure(e),
        }
    }

    /// Status of a package creation run: phase, objects and bytes copied, and the package (or
    /// the error and what rollback removed) once it has ended. Results of finished runs are
    /// kept. With `wait_seconds`, waits for the end while sending progress notifications.
    #[tool(
        title = "Package creation status",
        input_schema = input_schema::<StatusParams>(),
        output_schema = output_schema::<RunView>(),
        annotations(
            title = "Package creation status",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn package_create_status(
        &self,
        Args(p): Args<StatusParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        match self.state.runs.find(p.run_id.trim()) {
            Ok(run) => self.follow(&run, p.wait_seconds, false, ctx).await,
            Err(e) => failure(e),
        }
    }

    /// List one page of objects in an S3 bucket under a prefix, with folders grouped at `/`.
    /// Every key is returned exactly as stored, whatever characters it holds. A page holds at
    /// most max_keys objects and folders and about 40 KiB; pass its next_continuation_token
    /// back as continuation_token for the next one.
    #[tool(
        title = "List S3 objects",
        input_schema = input_schema::<ListParams>(),
        output_schema = output_schema::<ObjectsPage>(),
        annotations(
            title = "List S3 objects",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn bucket_objects_list(
        &self,
        Args(p): Args<ListParams>,
    ) -> Result<CallToolResult, McpError> {
        respond(self.list(p).await)
    }

    /// Metadata of one S3 object: size, content type, user metadata, version, storage class
    /// and stored checksums.
    #[tool(
        title = "S3 object metadata",
        input_schema = input_schema::<InfoParams>(),
        output_schema = output_schema::<ObjectDetails>(),
        annotations(
            title = "S3 object metadata",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn bucket_object_info(
        &self,
        Args(p): Args<InfoParams>,
    ) -> Result<CallToolResult, McpError> {
        respond(self.info(p).await)
    }

    /// List the packages in a Quilt registry (optionally by name prefix), or the versions of
    /// one package, a page at a time (max_items, about 40 KiB at most): pass the page's
    /// next_continuation_token back as continuation_token for the next one.
    #[tool(
        title = "List packages",
        input_schema = input_schema::<PackagesParams>(),
        output_schema = output_schema::<PackagesView>(),
        annotations(
            title = "List packages",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn packages_list(
        &self,
        Args(p): Args<PackagesParams>,
    ) -> Result<CallToolResult, McpError> {
        respond(self.packages(p).await)
    }

    /// Runs left in a registry's staging area by a process that stopped (killed, or unable to
    /// clean up), and what ends them: `abort` rolls back a run that is not committed (deletes
    /// exactly the object versions it created), `resume` finishes a committed one.
    #[tool(
        title = "Unfinished runs",
        input_schema = input_schema::<RunsParams>(),
        output_schema = output_schema::<RunsView>(),
        annotations(
            title = "Unfinished runs",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn package_runs(&self, Args(p): Args<RunsParams>) -> Result<CallToolResult, McpError> {
        respond(self.staged_runs(p).await)
    }

    /// Entries of a package version (latest by default): logical keys, physical keys, sizes,
    /// hashes and metadata, one page at a time, plus the package message and metadata.
    #[tool(
        title = "Browse a package",
        input_schema = input_schema::<BrowseParams>(),
        output_schema = output_schema::<PackageContents>(),
        annotations(
            title = "Browse a package",
            read_only_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn package_browse(
        &self,
        Args(p): Args<BrowseParams>,
    ) -> Result<CallToolResult, McpError> {
        respond(self.browse(p).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for S3QuiltServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("s3quilt", env!("CARGO_PKG_VERSION"))
                    .with_title("s3quilt")
                    .with_description(
                        "Turn S3 prefixes into Quilt data packages with server-side copies",
                    ),
            )
            .with_instructions(INSTRUCTIONS)
    }
}

#[cfg(test)]
mod tests {
    use s3quilt_core::quilt::HashType;
    use s3quilt_core::request::ObjectMetadata;
    use serde_json::json;

    use super::*;
    use crate::mcp::types::ObjectMetadataParam;

    fn params<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn from_s3_arguments_map_to_the_request() {
        let defaults: CreateFromS3Params =
            params(json!({"source_bucket": "src", "package_name": "team/pkg"}));
        assert_eq!(
            from_s3_request(defaults, "reg"),
            PackageRequest::new("src", "", "team/pkg", "reg")
        );
        let p: CreateFromS3Params = params(json!({
            "source_bucket": "s3://src", "source_prefix": "data/", "package_name": "team/pkg",
            "target_bucket": "copies", "description": "d", "include_patterns": ["*.csv"],
            "exclude_patterns": ["tmp/"], "preserve_structure": false, "metadata": {"k": 1},
            "copy": false, "hash_type": "CRC64NVME", "overwrite_existing": true,
            "object_metadata": "listing", "dry_run": true, "wait_seconds": 3
        }));
        let mut expected = PackageRequest::new("s3://src", "data/", "team/pkg", "reg");
        expected.target_bucket = Some("copies".into());
        expected.description = Some("d".into());
        expected.include_patterns = vec!["*.csv".into()];
        expected.exclude_patterns = vec!["tmp/".into()];
        expected.preserve_structure = false;
        expected.metadata = Some(json!({"k": 1}));
        expected.copy = false;
        expected.hash_type = Some(HashType::Crc64Nvme);
        expected.overwrite_existing = true;
        expected.object_metadata = ObjectMetadata::Listing;
        expected.dry_run = true;
        assert_eq!(from_s3_request(p, "reg"), expected);
        let full: CreateFromS3Params = params(json!({
            "source_bucket": "src", "package_name": "team/pkg", "object_metadata": "full"
        }));
        assert_eq!(full.object_metadata, Some(ObjectMetadataParam::Full));
        assert_eq!(
            from_s3_request(full, "reg").object_metadata,
            ObjectMetadata::Full
        );
        let bad = serde_json::from_value::<CreateFromS3Params>(json!({
            "source_bucket": "src", "package_name": "team/pkg", "object_metadata": "none"
        }))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("`full`") && bad.contains("`listing`"), "{bad}");
        let explicit: CreateParams = params(json!({
            "package_name": "team/pkg", "entries": [{"source": "s3://b/x.csv"}],
            "object_metadata": "listing"
        }));
        assert_eq!(explicit.object_metadata, Some(ObjectMetadataParam::Listing));
    }

    #[test]
    fn input_schemas_are_plain_and_output_schemas_have_no_integer_formats() {
        let schema = serde_json::Value::Object((*input_schema::<CreateFromS3Params>()).clone());
        let properties = &schema["properties"];
        assert_eq!(properties["metadata"]["type"], json!("object"), "{schema}");
        assert_eq!(properties["target_registry"]["type"], json!("string"));
        assert_eq!(properties["wait_seconds"]["type"], json!("integer"));
        let text = schema.to_string();
        for needle in ["\"null\"", "\"format\"", "anyOf"] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
        let hash_type = &properties["hash_type"];
        assert!(
            hash_type.get("$ref").is_some() || hash_type.get("enum").is_some(),
            "{hash_type}"
        );
        let output = serde_json::Value::Object((*output_schema::<ObjectDetails>()).clone());
        assert!(!output.to_string().contains("uint"), "{output}");
        assert_eq!(
            output["properties"]["size"]["type"],
            json!("integer"),
            "{output}"
        );
    }

    #[test]
    fn registry_arguments_are_required_without_a_default_and_name_it_otherwise() {
        let router = S3QuiltServer::tool_router();
        for (tool, argument) in REGISTRY_ARGUMENTS {
            let schema = &router.get(tool).expect(tool).input_schema;
            assert!(
                schema["properties"].get(argument).is_some(),
                "{tool}.{argument}"
            );
            let required = with_registry_argument(schema, argument, None);
            assert!(
                required["required"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(argument)),
                "{tool}: {required:?}"
            );
            let defaulted = with_registry_argument(schema, argument, Some("reg-bucket"));
            assert_eq!(defaulted.get("required"), schema.get("required"), "{tool}");
            let description = defaulted["properties"][argument]["description"]
                .as_str()
                .unwrap();
            assert!(
                description.ends_with(" Default on this server: s3://reg-bucket."),
                "{description}"
            );
        }
    }

    #[test]
    fn browse_pages_end_before_their_byte_budget() {
        let entry = |meta_bytes: usize| EntryView {
            logical_key: "a.csv".into(),
            physical_key: "s3://b/a.csv".into(),
            size: 1,
            hash_type: "SHA256".into(),
            hash: "00".into(),
            meta: json!({"note": "x".repeat(meta_bytes)}),
        };
        let small: Vec<EntryView> = (0..10).map(|_| entry(10)).collect();
        assert_eq!(paging::fitting(&small, PAGE_BYTES), 10);
        let large: Vec<EntryView> = (0..10).map(|_| entry(15_000)).collect();
        assert_eq!(paging::fitting(&large, PAGE_BYTES), 2);
        let huge = vec![entry(100_000), entry(10)];
        assert_eq!(paging::fitting(&huge, PAGE_BYTES), 1, "one entry at least");
        assert_eq!(paging::fitting::<EntryView>(&[], PAGE_BYTES), 0);
    }

    #[test]
    fn tags_go_into_the_metadata() {
        let mut p: CreateFromS3Params = params(json!({
            "source_bucket": "src", "package_name": "team/pkg", "metadata": {"k": 1},
            "tags": ["churn", "2024-06"]
        }));
        tags_into_metadata(&mut p).unwrap();
        assert_eq!(
            serde_json::Value::Object(p.metadata.clone().unwrap()),
            json!({"k": 1, "tags": ["churn", "2024-06"]})
        );
        let mut none: CreateFromS3Params =
            params(json!({"source_bucket": "src", "package_name": "team/pkg"}));
        tags_into_metadata(&mut none).unwrap();
        assert_eq!(none.metadata, None, "no tags, no metadata");
        let mut both: CreateFromS3Params = params(json!({
            "source_bucket": "src", "package_name": "team/pkg", "metadata": {"tags": []},
            "tags": ["a"]
        }));
        let error = tags_into_metadata(&mut both).unwrap_err();
        assert!(
            error.0.starts_with("tags: metadata already has"),
            "{error:?}"
        );
    }

    #[test]
    fn uris_in_bucket_and_key_arguments() {
        assert_eq!(key_in_bucket("b", "x/y.csv".into()).unwrap(), "x/y.csv");
        assert_eq!(
            key_in_bucket("b", "s3://b/x/y.csv".into()).unwrap(),
            "x/y.csv"
        );
        let other = key_in_bucket("b", "s3://c/x".into()).unwrap_err().0;
        assert!(
            other.starts_with("key: ") && other.contains("another bucket"),
            "{other}"
        );
        let mut p: CreateFromS3Params =
            params(json!({"source_bucket": "s3://src/data/", "package_name": "team/pkg"}));
        split_source(&mut p).unwrap();
        assert_eq!(
            (p.source_bucket.as_str(), p.source_prefix.as_str()),
            ("src", "data/")
        );
        let mut plain: CreateFromS3Params =
            params(json!({"source_bucket": "s3://src/", "package_name": "team/pkg"}));
        split_source(&mut plain).unwrap();
        assert_eq!(plain.source_bucket, "s3://src/");
        let mut both: CreateFromS3Params = params(json!({
            "source_bucket": "s3://src/data/", "source_prefix": "x/", "package_name": "team/pkg"
        }));
        let refused = split_source(&mut both).unwrap_err().0;
        assert!(refused.starts_with("source_bucket: ") && refused.contains("source_prefix"));
        assert!(
            page_size("max_keys", 0)
                .unwrap_err()
                .0
                .contains("max_keys: 0 is out of range; give 1 to 1000")
        );
        assert!(page_size("max_entries", 1001).is_err() && page_size("max_keys", 1000).is_ok());
    }

    #[test]
    fn object_metadata_is_in_both_create_schemas() {
        for schema in [
            input_schema::<CreateFromS3Params>(),
            input_schema::<CreateParams>(),
        ] {
            let schema = serde_json::Value::Object((*schema).clone());
            let property = &schema["properties"]["object_metadata"];
            let description = property["description"].as_str().unwrap_or_default();
            assert!(
                description.contains("`listing`") && description.contains("one S3 request"),
                "{property}"
            );
            let text = schema.to_string();
            assert!(
                text.contains("\"full\"") && text.contains("\"listing\""),
                "{text}"
            );
        }
    }
}
