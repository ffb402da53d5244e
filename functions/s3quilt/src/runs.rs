//! `s3quilt runs list|resume|abort`, and the signal handling that makes an interrupted
//! `create` end in a rolled-back or finished run.

use anyhow::Context;
use s3quilt_core::engine::Interrupt;
use s3quilt_core::finalize::finalize;
use s3quilt_core::request::parse_bucket;
use s3quilt_core::staging::is_valid_run_id;
use s3quilt_core::storage::{S3Settings, S3Store};
use s3quilt_core::transaction::{RunState, abort_run, list_runs, resume_run};

use crate::cli::{ArgError, RunsCommand};

/// An [`Interrupt`] fired by the first SIGINT or SIGTERM: the run stops starting objects and
/// rolls back (or, past its commit point, finishes). A second signal exits at once; the run's
/// journal lets `s3quilt runs abort|resume` finish it later.
pub fn interrupt_on_signals() -> Interrupt {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = Interrupt::new();
    // Registered before returning, so a signal that comes at once is already ours.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return interrupt;
    };
    let fired = interrupt.clone();
    tokio::spawn(async move {
        for n in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                eprintln!(
                    "interrupted: no new object starts; the run is rolled back (or, if already committed, finished). Interrupt again to exit now (`s3quilt runs list` then shows the run)."
                );
                fired.fire();
            } else {
                std::process::exit(130);
            }
        }
    });
    interrupt
}

/// Runs a `runs` subcommand.
pub async fn run(command: &RunsCommand) -> anyhow::Result<()> {
    let args = command.args();
    let registry = parse_bucket("target_registry", &args.registry).map_err(|e| ArgError {
        arg: "--registry",
        problem: e.to_string(),
    })?;
    let client = args.s3.settings(S3Settings::from_env()).client().await;
    let store = S3Store::shared(client);
    let check_id = |run_id: &str| {
        if is_valid_run_id(run_id) {
            Ok(())
        } else {
            Err(ArgError {
                arg: "RUN_ID",
                problem: format!(
                    "{run_id:?} is not a run id (letters, digits and `-`, as `s3quilt runs list` shows)"
                ),
            })
        }
    };
    match command {
        RunsCommand::List(_) => {
            let runs = list_runs(store, &registry)
                .await
                .with_context(|| format!("listing the runs in s3://{registry}"))?;
            if args.json {
                println!("{:#}", serde_json::json!({ "runs": runs }));
            } else if runs.is_empty() {
                println!("no runs in s3://{registry}");
            } else {
                for r in &runs {
                    let (state, next) = match &r.state {
                        RunState::Uncommitted => ("not committed", "abort"),
                        RunState::Committed { .. } => ("committed", "resume"),
                        RunState::Aborted { .. } => ("aborted", "abort"),
                    };
                    println!(
                        "{}  {}  {state}  {} objects  started {}  →  s3quilt runs {next} {} --registry s3://{registry}",
                        r.run_id, r.package, r.objects, r.started_at, r.run_id
                    );
                }
            }
        }
        RunsCommand::Resume(a) | RunsCommand::Finalize(a) => {
            check_id(&a.run_id)?;
            let package = if matches!(command, RunsCommand::Finalize(_)) {
                finalize(store, &registry, &a.run_id).await?
            } else {
                resume_run(store, &registry, &a.run_id).await?
            };
            if args.json {
                println!(
                    "{:#}",
                    serde_json::json!({ "status": "created", "package": package })
                );
            } else {
                println!(
                    "Finished run {}: {} {} ({} objects)",
                    a.run_id, package.package_name, package.top_hash, package.objects
                );
            }
        }
        RunsCommand::Abort(a) => {
            check_id(&a.run_id)?;
            let report = abort_run(store, &registry, &a.run_id).await?;
            if args.json {
                println!(
                    "{:#}",
                    serde_json::json!({ "status": "rolled_back", "rollback": report })
                );
            } else {
                println!(
                    "Rolled back run {}: {} object versions removed",
                    a.run_id, report.deleted
                );
                for other in &report.replaced_by_others {
                    println!("  left (replaced by another writer since): {other}");
                }
                for left in &report.not_deleted {
                    println!("  NOT removed: {left}");
                }
            }
            if !report.not_deleted.is_empty() {
                anyhow::bail!(
                    "{} objects could not be removed; run `s3quilt runs abort {}` again",
                    report.not_deleted.len(),
                    a.run_id
                );
            }
        }
    }
    Ok(())
}
