//! The Quilt package format, byte-compatible with quilt3 8.0.0 (see `shared/quilt-format.md`).

pub mod checksum;
pub mod json;
pub mod manifest;
pub mod names;
pub mod physical_key;

pub use checksum::{ChunkedSha256, HashType, ObjectHasher, QuiltHash};
pub use json::{Json, JsonObject};
pub use manifest::{Manifest, ManifestEntry, PackageHeader};
pub use names::{LogicalKey, PackageName};
pub use physical_key::PhysicalKey;
