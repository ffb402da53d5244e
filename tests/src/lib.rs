//! `s3quilt_tests`: the reusable test harness for s3quilt.
//!
//! - [`S3Server`]: a local S3 server (moto, optionally SeaweedFS) on a free 127.0.0.1 port,
//!   stopped on drop and by an external watchdog when the test process goes away.
//! - [`moto`]: one shared moto server per test binary.
//! - S3 helpers: [`create_bucket`], [`seed`], [`list_all_versions`], [`get_bytes`].
//! - [`InstrumentedStore`]: counts store calls and injects failures by rule.
//! - [`FaultProxy`]: an HTTP proxy in front of a server that injects 5xx, resets and delays.
//! - [`run_oracle`]: quilt3 8.0.0 (`tests/py/quilt_oracle.py`) as the format oracle.
//! - Paths and vectors: [`repo_root`], [`vectors_dir`], [`load_vector`], [`venv_bin`].
//! - [`s3quilt_bin`]: the `s3quilt` binary, built once per test process.
//!
//! Tools come from the project's Python venv (`bash .ci/run` creates it). A missing tool makes
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
pub use proxy::{Fault, FaultProxy, ProxyRule, Select};
pub use s3::{SeedObject, create_bucket, get_bytes, list_all_versions, seed};
pub use server::{S3Server, ServerKind, moto, seaweedfs};
pub use sfn_env::{FUNCTIONS, SfnStack, substituted_definition};
pub use sfn_router::{HookAction, InvokeCall, InvokeHook, LambdaRouter, bare_function_name};

#[cfg(test)]
mod self_tests;
