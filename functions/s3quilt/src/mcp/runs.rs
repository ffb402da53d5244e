//! Package creation runs started by this server, and following them.
//!
//! A run is either local (the core engine in this process, in the background) or a Step
//! Functions execution. Either way a create call starts it, then [`Runs::follow`] waits a
//! bounded time, sending progress notifications, and returns a [`RunView`]: the finished
//! result, or the run id and progress so far. A local run's outcome is kept for later status
//! calls (for as long as the server runs), whether or not anyone was waiting when it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::{Peer, RoleServer};
use s3quilt_core::aws::{ExecutionInput, ExecutionReport, execution_report, start_execution};
use s3quilt_core::engine::{EngineError, EngineOptions, Progress, RunOutcome, run_local};
use s3quilt_core::plan::PlanError;
use s3quilt_core::request::PackageRequest;
use s3quilt_core::storage::ObjectStore;
use s3quilt_core::storage::StoreErrorKind;
use tokio::sync::watch;

use super::ToolError;
use super::types::{
    EngineKind, MAX_WAIT_SECONDS, PackageView, PlanView, RunPhase, RunProgress, RunStatus, RunView,
};

/// How often a waiting call looks at a local run.
const LOCAL_POLL: Duration = Duration::from_millis(200);
/// How often a waiting call asks Step Functions.
const SFN_POLL: Duration = Duration::from_secs(1);

/// The outcome of a finished local run: the engine's result, or its error message.
type LocalOutcome = Arc<Result<RunOutcome, String>>;

/// A run of the local engine.
pub struct LocalRun {
    id: String,
    dry_run: bool,
    started: Instant,
    progress: Arc<Progress>,
    outcome: watch::Receiver<Option<LocalOutcome>>,
}

/// Step Functions settings: the client and the state machine to start.
pub struct SfnEngine {
    /// Step Functions client.
    pub client: aws_sdk_sfn::Client,
    /// The packaging state machine.
    pub state_machine_arn: String,
}

/// A run to report on.
pub enum RunRef {
    /// A local run.
    Local(Arc<LocalRun>),
    /// A Step Functions execution ARN.
    Execution(String),
}

/// Every run this server started.
pub struct Runs {
    store: Arc<dyn ObjectStore>,
    engine: EngineOptions,
    sfn: Option<SfnEngine>,
    local: Mutex<HashMap<String, Arc<LocalRun>>>,
    /// When this server started each execution (and whether it was a dry run).
    executions: Mutex<HashMap<String, (Instant, bool)>>,
    /// Local runs by the idempotency key they were started with, with their request.
    by_key: Mutex<HashMap<String, (serde_json::Value, Arc<LocalRun>)>>,
}

/// How a caller starts a run, beside the request.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// A retried call with this key returns the run the first one started.
    pub idempotency_key: Option<String>,
    /// Step Functions: shards copied at once.
    pub max_concurrency: Option<u32>,
}

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

impl StartOptions {
    /// Checks the arguments, naming the one that is wrong.
    pub fn new(
        idempotency_key: Option<String>,
        max_concurrency: Option<u32>,
    ) -> Result<Self, ToolError> {
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY)
        {
            return Err(ToolError(format!(
                "idempotency_key: {} characters; give 1 to {MAX_IDEMPOTENCY_KEY}",
                key.chars().count()
            )));
        }
        let input = ExecutionInput {
            request: PackageRequest::new("", "", "", ""),
            max_concurrency,
        };
        input
            .effective_max_concurrency()
            .map_err(|e| ToolError(e.message))?;
        Ok(StartOptions {
            idempotency_key,
            max_concurrency,
        })
    }
}

/// Sends `notifications/progress` for one request, when its client gave a progress token.
pub struct Notifier {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    /// The progress value last sent.
    last: Option<u64>,
}

impl Notifier {
    /// A notifier for a request with `token`.
    pub fn new(peer: Peer<RoleServer>, token: ProgressToken) -> Self {
        Notifier {
            peer,
            token,
            last: None,
        }
    }

    /// Notifies when more objects are done than at the last notification (and once at the
    /// start): MCP requires each notification's progress to be greater than the last one's,
    /// so a phase change without a new object done waits for the next count (its message
    /// names the phase).
    async fn update(&mut self, progress: &RunProgress) {
        if self.last.is_some_and(|last| progress.objects_done <= last) {
            return;
        }
        self.last = Some(progress.objects_done);
        let mut param =
            ProgressNotificationParam::new(self.token.clone(), progress.objects_done as f64)
                .with_message(progress_text(progress));
        if progress.objects_total > 0 {
            param = param.with_total(progress.objects_total as f64);
        }
        if let Err(e) = self.peer.notify_progress(param).await {
            tracing::debug!("progress notification not sent: {e}");
        }
    }
}

/// `copying: 3/10 objects, 1.2 MiB of 4.0 MiB`.
pub fn progress_text(p: &RunProgress) -> String {
    let phase = serde_json::to_value(p.phase)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default();
    if p.objects_total == 0 {
        return phase;
    }
    format!(
        "{phase}: {}/{} objects, {} of {}",
        p.objects_done,
        p.objects_total,
        human_bytes(p.bytes_done),
        human_bytes(p.bytes_total)
    )
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The engine's error, with a hint where the fix is not obvious from it.
fn explain(error: &EngineError) -> String {
    match error {
        EngineError::Plan(PlanError::EmptySelection { not_included, .. }) if *not_included > 0 => {
            format!(
                "{error}. include_patterns are matched against each key relative to source_prefix, not the full key: for s3://bucket/data/tables/a.csv with source_prefix \"data/\", `tables/*.csv` or `*.csv` select it, `data/tables/*.csv` does not"
            )
        }
        // Missing credentials or a wrong endpoint: say which setting of the server to change.
        EngineError::Plan(
            PlanError::SourceAccess { source, .. }
            | PlanError::TargetAccess { source, .. }
            | PlanError::Store(source),
        ) if matches!(
            source.kind,
            StoreErrorKind::NoCredentials | StoreErrorKind::Unreachable
        ) =>
        {
            format!("{error} ({})", super::store_hint(source.kind))
        }
        _ => error.to_string(),
    }
}

/// A core result (plan summary, package result) as its output view: the views read the same
/// JSON the core types write, which is also what Step Functions executions return.
fn convert<T: serde::de::DeserializeOwned>(value: &impl serde::Serialize) -> Option<T> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

fn next_step(view: &RunView) -> String {
    match (&view.status, &view.package) {
        (RunStatus::Running, _) => format!(
            "The run continues in the background: call package_create_status with run_id {:?} (and wait_seconds up to {MAX_WAIT_SECONDS}) to follow it.",
            view.run_id
        ),
        (RunStatus::Succeeded, Some(p)) => format!(
            "Browse it with package_browse (package_name {:?}, registry {:?}, top_hash {:?}), or in Python: {}",
            p.package_name, p.registry, p.top_hash, p.browse
        ),
        (RunStatus::Succeeded, None) => match view
            .plan
            .as_ref()
            .and_then(|p| p.incremental.as_ref())
            .filter(|i| i.up_to_date && !view.dry_run)
        {
            Some(i) => format!(
                "Nothing changed since version {} (the package's base): no version was written. Pass publish_unchanged: true to write one anyway, or incremental: false to package everything again.",
                i.base
            ),
            None => "Nothing was written. Call again without dry_run to create the package.".into(),
        },
        // The engine's message lists what rollback could not remove.
        (RunStatus::Failed, _) if view.error.as_deref().is_some_and(|e| e.contains("NOT removed")) => {
            "Rollback could not remove some objects (listed above): delete them by hand, fix the cause and start a new run.".into()
        }
        (RunStatus::Failed, _) => {
            "What the run wrote was rolled back. Fix the cause above and start a new run.".into()
        }
    }
}

impl LocalRun {
    fn view(&self) -> RunView {
        let outcome = self.outcome.borrow().clone();
        let progress: RunProgress = self.progress.snapshot().into();
        let (status, plan, package, error) = match outcome.as_deref() {
            // Past planning, the plan is known: what the run copies, while it copies.
            None => (
                RunStatus::Running,
                self.progress.plan().and_then(convert),
                None,
                None,
            ),
            Some(Ok(RunOutcome::Planned(plan) | RunOutcome::UpToDate(plan))) => {
                (RunStatus::Succeeded, convert(plan), None, None)
            }
            Some(Ok(RunOutcome::Created { plan, package })) => {
                (RunStatus::Succeeded, convert(plan), convert(package), None)
            }
            Some(Err(message)) => (RunStatus::Failed, None, None, Some(message.clone())),
        };
        finish(RunView {
            run_id: self.id.clone(),
            engine: EngineKind::Local,
            status,
            dry_run: self.dry_run,
            progress,
            elapsed_seconds: self.started.elapsed().as_secs(),
            plan,
            package,
            error,
            next_step: String::new(),
        })
    }
}

fn finish(mut view: RunView) -> RunView {
    view.next_step = next_step(&view);
    view
}

fn execution_view(report: ExecutionReport, started: Option<(Instant, bool)>) -> RunView {
    let status = match report.status.as_str() {
        "SUCCEEDED" => RunStatus::Succeeded,
        "RUNNING" | "PENDING_REDRIVE" => RunStatus::Running,
        _ => RunStatus::Failed,
    };
    let output = report.output.as_ref();
    // The planner's summary is in the history as soon as planning ends, so a running view has
    // it too; the output's (the same summary) once the execution has ended.
    let plan: Option<PlanView> = output
        .and_then(|o| convert(&o.plan))
        .or_else(|| report.plan_summary.as_ref().and_then(convert));
    let package: Option<PackageView> = output.and_then(|o| o.package.as_ref()).and_then(convert);
    let dry_run = plan
        .as_ref()
        .map(|p| p.dry_run)
        .or(started.map(|(_, dry)| dry))
        .unwrap_or(false);
    let error = (status == RunStatus::Failed).then(|| {
        format!(
            "execution {}: {}{}",
            report.status,
            report.error.as_deref().unwrap_or("no error name"),
            report
                .cause
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )
    });
    finish(RunView {
        run_id: report.execution_arn,
        engine: EngineKind::StepFunctions,
        status,
        dry_run,
        progress: report.progress.into(),
        elapsed_seconds: started.map_or(0, |(at, _)| at.elapsed().as_secs()),
        plan,
        package,
        error,
        next_step: String::new(),
    })
}

impl Runs {
    /// No runs yet.
    pub fn new(store: Arc<dyn ObjectStore>, engine: EngineOptions, sfn: Option<SfnEngine>) -> Self {
        Runs {
            store,
            engine,
            sfn,
            local: Mutex::new(HashMap::new()),
            executions: Mutex::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a run of `request` (already validated) in the background.
    pub async fn start(
        &self,
        request: PackageRequest,
        options: StartOptions,
    ) -> Result<RunRef, ToolError> {
        match &self.sfn {
            Some(sfn) => {
                // The execution name is made from the token and the input: with the caller's
                // key a retried call finds the execution the first one started; without one,
                // every call is a new run, even of the same request.
                let token = match &options.idempotency_key {
                    Some(key) => format!("mcp-key-{key}"),
                    None => format!("mcp-{:016x}", rand::random::<u64>()),
                };
                let dry_run = request.dry_run;
                let input = ExecutionInput {
                    request,
                    max_concurrency: options.max_concurrency,
                };
                let started = start_execution(
                    &sfn.client,
                    &sfn.state_machine_arn,
                    &input,
                    &token,
                )
                .await
                .map_err(|e| {
                    ToolError(format!(
                        "{e}. Check --state-machine-arn / S3QUILT_STATE_MACHINE_ARN and that the server's credentials may start executions."
                    ))
                })?;
                self.executions
                    .lock()
                    .expect("executions lock")
                    .insert(started.execution_arn.clone(), (Instant::now(), dry_run));
                Ok(RunRef::Execution(started.execution_arn))
            }
            None => {
                let asked = serde_json::to_value(&request).unwrap_or_default();
                if let Some(key) = &options.idempotency_key
                    && let Some((earlier, run)) =
                        self.by_key.lock().expect("runs lock").get(key).cloned()
                {
                    return if earlier == asked {
                        Ok(RunRef::Local(run))
                    } else {
                        Err(ToolError(format!(
                            "idempotency_key: {key:?} already started run {} with other arguments; use a new key for a new request",
                            run.id
                        )))
                    };
                }
                let id = format!("local-{}", s3quilt_core::staging::new_run_id());
                let progress = Progress::new();
                let (tx, rx) = watch::channel(None);
                let run = Arc::new(LocalRun {
                    id: id.clone(),
                    dry_run: request.dry_run,
                    started: Instant::now(),
                    progress: progress.clone(),
                    outcome: rx,
                });
                self.local
                    .lock()
                    .expect("runs lock")
                    .insert(id.clone(), run.clone());
                if let Some(key) = options.idempotency_key {
                    self.by_key
                        .lock()
                        .expect("runs lock")
                        .insert(key, (asked, run.clone()));
                }
                let (store, options) = (self.store.clone(), self.engine.clone());
                // Driven by a blocking-pool thread: rustc cannot prove `run_local`'s future
                // `Send` (higher-ranked lifetimes in its stream closures), which `spawn` needs.
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let result = runtime
                        .block_on(run_local(store, &request, &options, progress))
                        .map_err(|e| explain(&e));
                    match &result {
                        Ok(_) => tracing::info!(run_id = id, "run finished"),
                        Err(e) => tracing::warn!(run_id = id, "run failed: {e}"),
                    }
                    let _ = tx.send(Some(Arc::new(result)));
                });
                Ok(RunRef::Local(run))
            }
        }
    }

    /// The run `run_id` names: a local run of this server, or an execution ARN.
    pub fn find(&self, run_id: &str) -> Result<RunRef, ToolError> {
        if run_id.is_empty() {
            return self.only_run();
        }
        if run_id.starts_with("arn:") {
            if self.sfn.is_none() {
                return Err(ToolError(format!(
                    "run_id {run_id:?} is a Step Functions execution, but this server has no state machine configured (start it with --state-machine-arn or S3QUILT_STATE_MACHINE_ARN)"
                )));
            }
            return Ok(RunRef::Execution(run_id.to_string()));
        }
        let local = self.local.lock().expect("runs lock");
        match local.get(run_id) {
            Some(run) => Ok(RunRef::Local(run.clone())),
            None => {
                // Run ids sort by start time: show the latest few.
                let mut known: Vec<&String> = local.keys().collect();
                known.sort();
                let latest: Vec<String> = known
                    .iter()
                    .rev()
                    .take(5)
                    .map(|k| format!("{k:?}"))
                    .collect();
                Err(ToolError(format!(
                    "run_id {run_id:?} is not a run of this server. Give the run_id a create call returned (runs are kept while the server runs; latest: {})",
                    if latest.is_empty() {
                        "none".to_string()
                    } else {
                        latest.join(", ")
                    }
                )))
            }
        }
    }

    /// With no run id: this server's one run, or an error listing its runs (latest first,
    /// with their status) to choose from.
    fn only_run(&self) -> Result<RunRef, ToolError> {
        let mut runs: Vec<(String, String, RunRef)> = self
            .local
            .lock()
            .expect("runs lock")
            .values()
            .map(|run| {
                let view = run.view();
                let status = serde_json::to_value(view.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let shown = format!("{status}, {}", progress_text(&view.progress));
                (run.id.clone(), shown, RunRef::Local(run.clone()))
            })
            .collect();
        runs.extend(
            self.executions
                .lock()
                .expect("executions lock")
                .keys()
                .map(|arn| {
                    let shown = "a Step Functions execution".to_string();
                    (arn.clone(), shown, RunRef::Execution(arn.clone()))
                }),
        );
        if runs.len() == 1 {
            return Ok(runs.pop().expect("one run").2);
        }
        // Local run ids sort by start time.
        runs.sort_by(|a, b| b.0.cmp(&a.0));
        let listed: Vec<String> = runs
            .iter()
            .take(10)
            .map(|(id, shown, _)| format!("{id:?} ({shown})"))
            .collect();
        Err(ToolError(if listed.is_empty() {
            "run_id: this server has started no run yet; package_create_from_s3 starts one and returns its run_id".into()
        } else {
            format!(
                "run_id: this server has {} runs; give one of them (latest first): {}",
                runs.len(),
                listed.join(", ")
            )
        }))
    }

    /// The run's state now.
    pub async fn view(&self, run: &RunRef) -> Result<RunView, ToolError> {
        match run {
            RunRef::Local(run) => Ok(run.view()),
            RunRef::Execution(arn) => {
                let sfn = self.sfn.as_ref().ok_or_else(|| {
                    ToolError("this server has no state machine configured".into())
                })?;
                let report = execution_report(&sfn.client, Some(self.store.clone()), arn)
                    .await
                    .map_err(|e| ToolError(format!("cannot read execution {arn}: {e}")))?;
                let started = self
                    .executions
                    .lock()
                    .expect("executions lock")
                    .get(arn)
                    .copied();
                Ok(execution_view(report, started))
            }
        }
    }

    /// Waits for `run`: until it finishes, or `wait` has passed (and, with `until_planned`, it
    /// is past planning, so planning errors reach the caller), but never past
    /// [`MAX_WAIT_SECONDS`] or the caller's cancellation. Sends progress on the way.
    pub async fn follow(
        &self,
        run: &RunRef,
        wait: Duration,
        until_planned: bool,
        mut notifier: Option<Notifier>,
        cancelled: impl Future<Output = ()>,
    ) -> Result<RunView, ToolError> {
        tokio::pin!(cancelled);
        let start = Instant::now();
        let cap = Duration::from_secs(MAX_WAIT_SECONDS.into());
        let poll = match run {
            RunRef::Local(_) => LOCAL_POLL,
            RunRef::Execution(_) => SFN_POLL,
        };
        loop {
            let view = self.view(run).await?;
            if let Some(n) = notifier.as_mut() {
                n.update(&view.progress).await;
            }
            let elapsed = start.elapsed();
            let planning = view.progress.phase == RunPhase::Planning;
            if view.status != RunStatus::Running
                || elapsed >= cap
                || (elapsed >= wait && !(until_planned && planning))
            {
                return Ok(view);
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = &mut cancelled => return Ok(view),
            }
        }
    }

    /// Waits until every local run has ended (on shutdown: a run cut off mid-copy could not
    /// roll back).
    pub async fn wait_all(&self) {
        let runs: Vec<Arc<LocalRun>> = self
            .local
            .lock()
            .expect("runs lock")
            .values()
            .cloned()
            .collect();
        for run in runs {
            let mut rx = run.outcome.clone();
            if rx.borrow().is_none() {
                tracing::warn!(run_id = run.id, "waiting for the run to end before exiting");
                let _ = rx.wait_for(|o| o.is_some()).await;
            }
        }
    }
}
