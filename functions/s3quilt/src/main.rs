//! `s3quilt`: package what sits in S3 as a Quilt data package, with server-side copies.
//!
//! A thin binary: arguments → [`s3quilt_core::request::PackageRequest`] → the local engine,
//! with a progress bar, text or JSON output, and exit codes that say what kind of failure
//! happened (see `s3quilt --help`).

mod bench;
mod cli;
mod demo;
mod demo_server;
mod failure;
mod mcp;
mod report;
mod runs;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use s3quilt_core::storage::{S3Settings, S3Store};

use crate::cli::{Cli, Command, PackageArgs};
use crate::failure::{Failure, classify};
use crate::report::{print_outcome, run_with_progress};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing();
    let json = match &cli.command {
        Command::Create(a) | Command::Plan(a) => a.json,
        Command::Demo(a) => a.json,
        Command::Mcp(_) => false,
        Command::Bench(a) => a.json,
        Command::Runs(r) => r.args().json,
        Command::DemoServer(_) => false,
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let failure = classify(&err);
            report_failure(&failure, json);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => package(&args, false).await,
        Command::Plan(args) => package(&args, true).await,
        Command::Demo(args) => demo::run(&args).await,
        Command::Mcp(args) => mcp::run(args).await,
        Command::Bench(args) => bench::run(&args).await,
        Command::Runs(command) => runs::run(&command).await,
        Command::DemoServer(args) => demo_server::serve_until_signal(&args).await,
    }
}

async fn package(args: &PackageArgs, dry_run: bool) -> anyhow::Result<()> {
    let request = args.to_request(dry_run)?;
    let client = args.s3.settings(S3Settings::from_env()).client().await;
    let mut options = args.engine_options();
    options.interrupt = runs::interrupt_on_signals();
    let outcome = run_with_progress(S3Store::shared(client), &request, &options).await?;
    print_outcome(&outcome, args.json)
}

/// Logs to stderr; `RUST_LOG` sets the filter (default `warn`).
fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Clap's errors (and `--help`/`--version`, which clap reports as errors): clap's text on
/// stderr/stdout as usual, plus the JSON document when `--json` was given.
fn usage_error(e: clap::Error) -> ExitCode {
    let code = e.exit_code();
    if code != 0 && std::env::args().any(|a| a == "--json") {
        let rendered = e.render().to_string();
        let message = rendered.trim_end();
        let message = message.strip_prefix("error: ").unwrap_or(message);
        println!("{:#}", Failure::usage(message.to_string()).to_json());
    }
    let _ = e.print();
    ExitCode::from(u8::try_from(code).unwrap_or(failure::EXIT_BAD_INPUT))
}

fn report_failure(failure: &Failure, json: bool) {
    if json {
        println!("{:#}", failure.to_json());
    }
    eprintln!("error: {}", failure.message);
}
