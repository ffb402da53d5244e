//! s3quilt's core: the Quilt package format, the storage port, and (as they land) selection,
//! planning, copying, finalizing and the local engine. Binaries hold no domain logic; everything
//! that decides something lives here, where one test can reach it.
#![warn(missing_docs)]

pub mod quilt;
pub mod registry;
pub mod storage;

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
