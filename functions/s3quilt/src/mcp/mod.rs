//! `s3quilt mcp`: the MCP server (stdio) that Claude Desktop, Claude Code and other agents
//! launch. Tools: `package_create_from_s3`, `package_create`, `package_create_status`,
//! `bucket_objects_list`, `bucket_object_info`, `packages_list`, `package_browse`.
//!
//! - [`types`]: tool arguments and results (their JSON Schemas are what clients see);
//! - [`runs`]: runs in the background (local engine or Step Functions) and following them;
//! - [`explicit`]: `package_create`'s list of sources as one packaging request;
//! - [`server`]: the tools themselves;
//! - [`paging`]: listing pages small enough for an agent's context, and their continuation
//!   tokens;
//! - [`transport`]: stdio, answering every request (also those rmcp cannot read);
//! - [`http`]: Streamable HTTP (`--http`), with a bearer token off loopback.
//!
//! stdout carries the protocol; logs go to stderr.

mod explicit;
mod http;
mod paging;
mod runs;
mod server;
mod transport;
mod types;

use clap::Args;
use rmcp::ServiceExt;
use s3quilt_core::engine::EngineOptions;
use s3quilt_core::guard::BucketGuard;
use s3quilt_core::registry::RegistryError;
use s3quilt_core::storage::{S3Settings, S3Store, StoreError, StoreErrorKind};

use crate::cli::S3Args;
use runs::{Runs, SfnEngine};
use server::S3QuiltServer;

/// `s3quilt mcp` options. Each flag can also be set by the environment variable shown.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// Registry used when a tool call names none (s3://BUCKET).
    #[arg(long, value_name = "s3://BUCKET", env = "S3QUILT_REGISTRY")]
    pub registry: Option<String>,
    /// Run package creations as executions of this Step Functions state machine instead of
    /// inside the server (its endpoint: $AWS_ENDPOINT_URL_SFN or $AWS_ENDPOINT_URL).
    #[arg(long, value_name = "ARN", env = "S3QUILT_STATE_MACHINE_ARN")]
    pub state_machine_arn: Option<String>,
    /// S3 requests in flight at once in a local run (a copy and the HEAD beside it are two).
    #[arg(long, value_name = "N", default_value_t = default_concurrency(), env = "S3QUILT_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Only these buckets may be named by tool calls, as sources, registries or copy targets
    /// (repeat the flag; the variable takes a comma-separated list). Default: every bucket the
    /// server's credentials reach.
    #[arg(
        long = "allow-bucket",
        value_name = "BUCKET",
        env = "S3QUILT_ALLOW_BUCKETS",
        value_delimiter = ','
    )]
    pub allow_buckets: Vec<String>,
    /// Refuse every tool call that writes: package creations other than dry runs, and
    /// aborting or resuming runs. Default: off.
    #[arg(long, env = "S3QUILT_READ_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
    pub read_only: bool,
    /// Serve MCP over Streamable HTTP at http://ADDR/mcp instead of stdio (e.g.
    /// 127.0.0.1:8765; port 0 picks a free one, printed on stdout). An address other than
    /// loopback needs S3QUILT_MCP_TOKEN.
    #[arg(long, value_name = "ADDR", env = "S3QUILT_MCP_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// With --http: the bearer token every request must carry (`Authorization: Bearer
    /// <token>`), at least 16 characters. Environment only, so it is not in the process list.
    #[arg(skip = std::env::var("S3QUILT_MCP_TOKEN").ok().filter(|t| !t.is_empty()))]
    pub http_token: Option<String>,
    /// With --http on an address other than loopback: the `Host` values to accept
    /// (repeatable; default: any, the token being the check).
    #[arg(long = "http-allowed-host", value_name = "HOST", requires = "http")]
    pub http_allowed_hosts: Vec<String>,
}

fn default_concurrency() -> u16 {
    u16::try_from(EngineOptions::default().concurrency).unwrap_or(u16::MAX)
}

/// What usually fixes an S3 failure of this kind, said to the agent (and its user).
pub fn store_hint(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::NotFound => {
            "check the bucket and key names (bucket_objects_list shows what exists)"
        }
        StoreErrorKind::AccessDenied => {
            "the server's AWS credentials lack permission for this; use a bucket they can reach or start the server with another --profile"
        }
        StoreErrorKind::Throttled | StoreErrorKind::Transient => {
            "S3 did not answer in time or asked to slow down; try again"
        }
        // Configuration, not the request: retrying the call cannot help.
        StoreErrorKind::NoCredentials => {
            "this MCP server has no AWS credentials: give it AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) in the \"env\" of its entry in the MCP host's configuration (e.g. claude_desktop_config.json), or start it with --profile, then restart it"
        }
        StoreErrorKind::Unreachable => {
            "check the S3 endpoint this MCP server was started with (--endpoint-url, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL; without them it uses AWS S3), then restart it"
        }
        StoreErrorKind::InvalidObjectState => "restore the archived object first",
        StoreErrorKind::PreconditionFailed
        | StoreErrorKind::Permanent
        | StoreErrorKind::Unsupported => "S3 refused the request",
    }
}

/// A tool error: the message says what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError(pub String);

impl ToolError {
    /// An S3 failure, with what usually fixes it.
    pub fn store(e: StoreError) -> Self {
        ToolError(format!("{e} ({})", store_hint(e.kind)))
    }

    /// A registry failure.
    pub fn registry(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(e) => ToolError::store(e),
            RegistryError::NotFound { .. } => ToolError(format!(
                "{e}; packages_list shows the packages (and with package_name, their versions)"
            )),
            other => ToolError(other.to_string()),
        }
    }
}

/// Serves MCP on stdin/stdout until the client closes the connection (or SIGINT/SIGTERM), then
/// interrupts the local runs still going and waits while they roll back (or, past their commit
/// point, finish): none is cut off half-made. A second signal exits at once; `s3quilt runs`
/// then finishes what is left.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let guard = BucketGuard::new(&args.allow_buckets, args.read_only)?;
    if let Some(registry) = args.registry.as_deref() {
        // A default registry the guard would refuse is a configuration error, said at start.
        guard
            .check_bucket("--registry", registry)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let settings = args.s3.settings(S3Settings::from_env());
    let store = S3Store::shared(settings.client().await);
    let sfn = match args.state_machine_arn.filter(|a| !a.is_empty()) {
        Some(state_machine_arn) => {
            // The S3 endpoint flag is for S3: Step Functions takes the SDK's own endpoint
            // settings (AWS_ENDPOINT_URL_SFN / AWS_ENDPOINT_URL).
            let sfn_settings = S3Settings {
                endpoint_url: None,
                ..settings.clone()
            };
            let client = aws_sdk_sfn::Client::new(&sfn_settings.sdk_config().await);
            Some(SfnEngine {
                client,
                state_machine_arn,
            })
        }
        None => None,
    };
    // One interrupt for every local run of this server: fired by SIGINT/SIGTERM or when the
    // client goes away (hosts close stdin, then send SIGTERM), so each run stops starting
    // objects and rolls back (or, past its commit point, finishes) instead of being cut off.
    let interrupt = crate::runs::interrupt_on_signals();
    let engine = EngineOptions {
        concurrency: usize::from(args.concurrency),
        interrupt: interrupt.clone(),
        ..EngineOptions::default()
    };
    tracing::info!(
        "s3quilt MCP server {}; buckets: {guard}{}",
        env!("CARGO_PKG_VERSION"),
        if guard.is_read_only() {
            ", read-only"
        } else {
            ""
        }
    );
    let server = S3QuiltServer::new(
        store.clone(),
        args.registry,
        guard,
        Runs::new(store, engine, sfn),
    );
    if let Some(addr) = args.http {
        let options = http::HttpOptions {
            addr,
            token: args.http_token,
            allowed_hosts: args.http_allowed_hosts,
        };
        http::serve(server.clone(), options, interrupt.clone()).await?;
        interrupt.fire();
        server.wait_for_runs().await;
        return Ok(());
    }
    let service = server
        .clone()
        .serve(transport::GuardedTransport::new(
            tokio::io::stdin(),
            tokio::io::stdout(),
        ))
        .await
        .map_err(|e| anyhow::anyhow!("MCP initialization failed: {e}"))?;
    tokio::select! {
        reason = service.waiting() => tracing::info!("client disconnected ({:?})", reason?),
        () = interrupt.fired() => tracing::info!("interrupted"),
    }
    interrupt.fire();
    server.wait_for_runs().await;
    Ok(())
}
