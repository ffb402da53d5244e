//! `s3quilt_tests`: the reusable test harness for s3quilt.
//!
//! - [`S3Server`]: a local S3 server (moto, LocalStack or SeaweedFS) on a free 127.0.0.1 port,
//!   stopped on drop and by an external watchdog when the test process goes away.
//! - [`moto`], [`localstack`], [`seaweedfs`]: one shared server of each kind per test binary.
//! - [`server_tests!`]: one test per server kind from one `async fn(&'static S3Server)`;
//!   [`servers`] and [`selected_kinds`] (env `S3QUILT_SERVERS`, default every server).
//! - [`ServerKind`]'s capability methods: each server's known gaps, stated once.
//! - S3 helpers: [`create_bucket`], [`seed`], [`list_all_versions`], [`get_bytes`].
//! - [`InstrumentedStore`]: counts store calls and injects failures by rule.
//! - [`FaultProxy`]: an HTTP proxy in front of a server that injects 5xx, resets (before or
//!   after the server applied the request), stalls and delays, and logs every request.
//! - [`run_oracle`]: quilt3 8.0.0 (`tests/py/quilt_oracle.py`) as the format oracle.
//! - Paths and vectors: [`repo_root`], [`vectors_dir`], [`load_vector`], [`venv_bin`].
//! - [`s3quilt_bin`]: the `s3quilt` binary, built once per test process.
//!
//! Tools come from the project's Python venvs (`bash .ci/run` creates them). A missing tool makes
//! a test fail with a message saying how to install it; nothing is ever skipped.

mod bin;
mod faults;
mod oracle;
mod paths;
mod proxy;
mod s3;
mod server;
mod sfn_env;
mod sfn_router;

pub use bin::{ChildOutput, run_child, s3quilt_bin};
pub use faults::{FaultRule, InstrumentedStore};
pub use oracle::{OracleOutput, run_oracle, run_oracle_output};
pub use paths::{load_vector, repo_root, vectors_dir, venv_bin};
pub use proxy::{Fault, FaultProxy, ProxyRequest, ProxyRule, Select, classify};
pub use s3::{
    SeedObject, create_bucket, get_bytes, list_all_versions, manifest_header, seed,
    suspend_versioning, upload_sha256_parts,
};
#[doc(hidden)]
pub use server::selected_server;
pub use server::{
    S3Server, ServerKind, demo, localstack, localstack_python, moto, seaweedfs, selected_kinds,
    servers,
};
pub use sfn_env::{FUNCTIONS, SfnStack, substituted_definition};
pub use sfn_router::{HookAction, InvokeCall, InvokeHook, LambdaRouter, bare_function_name};

#[cfg(test)]
mod self_tests;
