//! s3quilt's core: the Quilt package format, the storage port, and the steps a packaging run
//! takes, in the order its data flows: select → plan → copy → finalize (→ registry), with the
//! local engine that runs them in one process. Binaries hold no domain logic: everything that
//! decides something lives here, where one test can reach it.
#![warn(missing_docs)]

pub mod aws;
pub mod copy;
pub mod engine;
pub mod finalize;
pub mod guard;
pub mod plan;
pub mod quilt;
pub mod registry;
pub mod request;
pub mod retry;
pub mod reuse;
pub mod select;
pub mod staging;
pub mod storage;
pub mod transaction;

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
