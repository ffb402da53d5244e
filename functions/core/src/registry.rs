//! A Quilt registry (an S3 bucket in quilt3's "V1" layout): manifests under
//! `.quilt/packages/<top_hash>`, named-package pointers under
//! `.quilt/named_packages/<namespace>/<name>/<timestamp>` and `.../latest`.
//!
//! The manifest is written first and the pointers last, so a version becomes visible only when
//! it is whole: readers find versions through the pointers.

use std::sync::Arc;

use bytes::Bytes;

use crate::quilt::manifest::{Manifest, ManifestError};
use crate::quilt::names::PackageName;
use crate::storage::{
    ObjectStore, PutOptions, StoreError, StoreErrorKind, WriteResult, get_bytes, list_all,
};

/// Prefix of manifests.
pub const PACKAGES_PREFIX: &str = ".quilt/packages/";
/// Prefix of named-package pointers.
pub const NAMED_PACKAGES_PREFIX: &str = ".quilt/named_packages/";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// S3 failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored manifest is not valid.
    #[error("manifest {top_hash} in s3://{bucket}: {source}")]
    Manifest {
        /// Registry bucket.
        bucket: String,
        /// Which manifest.
        top_hash: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The package or version does not exist.
    #[error("{what} not found in registry s3://{bucket}")]
    NotFound {
        /// Registry bucket.
        bucket: String,
        /// What was looked for.
        what: String,
    },
    /// A pointer does not hold a top hash.
    #[error("pointer s3://{bucket}/{key} does not hold a 64-hex top hash")]
    BadPointer {
        /// Registry bucket.
        bucket: String,
        /// Pointer key.
        key: String,
    },
    /// A manifest's bytes do not hash to the name it is stored under.
    #[error("manifest s3://{bucket}/.quilt/packages/{stored_as} hashes to {computed}")]
    HashMismatch {
        /// Registry bucket.
        bucket: String,
        /// Its key's hash.
        stored_as: String,
        /// The hash of its content.
        computed: String,
    },
}

/// One version of a named package.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageVersion {
    /// The pointer's timestamp (Unix seconds, as text).
    pub timestamp: String,
    /// The top hash it points to.
    pub top_hash: String,
}

/// What writing a package version created, so a rollback can undo exactly that.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenObject {
    /// Key written.
    pub key: String,
    /// Version id created, on a versioned bucket.
    pub version_id: Option<String>,
}

/// A registry bucket.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    bucket: String,
}

fn is_top_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Registry {
    /// The registry in `bucket`.
    pub fn new(store: Arc<dyn ObjectStore>, bucket: impl Into<String>) -> Self {
        Registry {
            store,
            bucket: bucket.into(),
        }
    }

    /// The store the registry is in.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The registry bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket`.
    pub fn url(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    fn pointer_prefix(name: &PackageName) -> String {
        format!(
            "{NAMED_PACKAGES_PREFIX}{}/{}/",
            name.namespace(),
            name.name()
        )
    }

    /// Writes the manifest under its top hash; returns the top hash and what was written.
    pub async fn put_manifest(
        &self,
        manifest: &Manifest,
    ) -> Result<(String, WrittenObject), RegistryError> {
        let top_hash = manifest.top_hash();
        let body = manifest
            .to_jsonl()
            .map_err(|source| RegistryError::Manifest {
                bucket: self.bucket.clone(),
                top_hash: top_hash.clone(),
                source,
            })?;
        let key = format!("{PACKAGES_PREFIX}{top_hash}");
        let written = self.put(&key, Bytes::from(body)).await?;
        Ok((top_hash, written))
    }

    /// Writes a manifest unless one with its top hash is already there (`If-None-Match: *`);
    /// returns the top hash and the object written, `None` when it existed (same top hash,
    /// same content: not this run's to remove).
    pub async fn put_manifest_if_absent(
        &self,
        manifest: &Manifest,
    ) -> Result<(String, Option<WrittenObject>), RegistryError> {
        let top_hash = manifest.top_hash();
        let body = manifest
            .to_jsonl()
            .map_err(|source| RegistryError::Manifest {
                bucket: self.bucket.clone(),
                top_hash: top_hash.clone(),
                source,
            })?;
        let key = format!("{PACKAGES_PREFIX}{top_hash}");
        let options = PutOptions {
            if_none_match: true,
            ..PutOptions::default()
        };
        match self
            .store
            .put(&self.bucket, &key, Bytes::from(body), options)
            .await
        {
            Ok(WriteResult { version_id, .. }) => {
                Ok((top_hash, Some(WrittenObject { key, version_id })))
            }
            Err(e) if e.kind == StoreErrorKind::PreconditionFailed => Ok((top_hash, None)),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<WrittenObject, RegistryError> {
        let WriteResult { version_id, .. } = self
            .store
            .put(&self.bucket, key, body, PutOptions::default())
            .await?;
        Ok(WrittenObject {
            key: key.to_string(),
            version_id,
        })
    }

    /// Writes the named-package pointers: the timestamped one, then `latest` (last, so a
    /// version appears only when everything else is in place).
    pub async fn put_pointers(
        &self,
        name: &PackageName,
        top_hash: &str,
        timestamp: u64,
    ) -> Result<Vec<WrittenObject>, RegistryError> {
        let prefix = Self::pointer_prefix(name);
        let body = Bytes::from(top_hash.to_string());
        let stamped = self
            .put(&format!("{prefix}{timestamp}"), body.clone())
            .await?;
        let latest = self.put(&format!("{prefix}latest"), body).await?;
        Ok(vec![stamped, latest])
    }

    /// Writes a manifest and its pointers (manifest first); returns the top hash and every
    /// object written, in order.
    pub async fn push(
        &self,
        name: &PackageName,
        manifest: &Manifest,
        timestamp: u64,
    ) -> Result<(String, Vec<WrittenObject>), RegistryError> {
        let (top_hash, manifest_object) = self.put_manifest(manifest).await?;
        let mut written = vec![manifest_object];
        written.extend(self.put_pointers(name, &top_hash, timestamp).await?);
        Ok((top_hash, written))
    }

    async fn read_pointer(
        &self,
        key: &str,
        what: impl FnOnce() -> String,
    ) -> Result<String, RegistryError> {
        let bytes = match get_bytes(self.store.as_ref(), &self.bucket, key, None).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(RegistryError::NotFound {
                    bucket: self.bucket.clone(),
                    what: what(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if !is_top_hash(&text) {
            return Err(RegistryError::BadPointer {
                bucket: self.bucket.clone(),
                key: key.to_string(),
            });
        }
        Ok(text)
    }

    /// The top hash `latest` points to.
    pub async fn latest(&self, name: &PackageName) -> Result<String, RegistryError> {
        let key = format!("{}latest", Self::pointer_prefix(name));
        self.read_pointer(&key, || format!("package {name}")).await
    }

    /// Every version of a package, oldest first (by timestamp).
    pub async fn versions(&self, name: &PackageName) -> Result<Vec<PackageVersion>, RegistryError> {
        let prefix = Self::pointer_prefix(name);
        let mut stamps: Vec<(u64, String)> = list_all(self.store.as_ref(), &self.bucket, &prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let stamp = o.key[prefix.len()..].to_string();
                stamp.parse::<u64>().ok().map(|n| (n, stamp))
            })
            .collect();
        if stamps.is_empty() {
            return Err(RegistryError::NotFound {
                bucket: self.bucket.clone(),
                what: format!("package {name}"),
            });
        }
        stamps.sort();
        let mut versions = Vec::with_capacity(stamps.len());
        for (_, stamp) in stamps {
            let key = format!("{prefix}{stamp}");
            let top_hash = self
                .read_pointer(&key, || format!("version {stamp} of {name}"))
                .await?;
            versions.push(PackageVersion {
                timestamp: stamp,
                top_hash,
            });
        }
        Ok(versions)
    }

    /// The packages in this registry (those with a `latest` pointer), sorted.
    pub async fn packages(&self) -> Result<Vec<PackageName>, RegistryError> {
        let mut names: Vec<PackageName> =
            list_all(self.store.as_ref(), &self.bucket, NAMED_PACKAGES_PREFIX)
                .await?
                .into_iter()
                .filter_map(|o| {
                    let rest = o.key.strip_prefix(NAMED_PACKAGES_PREFIX)?;
                    let name = rest.strip_suffix("/latest")?;
                    name.parse().ok()
                })
                .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Reads the manifest stored under `top_hash`, checking that its content hashes to it.
    pub async fn manifest(&self, top_hash: &str) -> Result<Manifest, RegistryError> {
        if !is_top_hash(top_hash) {
            return Err(RegistryError::NotFound {
                bucket: self.bucket.clone(),
                what: format!("top hash {top_hash:?}"),
            });
        }
        let key = format!("{PACKAGES_PREFIX}{top_hash}");
        let bytes = match get_bytes(self.store.as_ref(), &self.bucket, &key, None).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(RegistryError::NotFound {
                    bucket: self.bucket.clone(),
                    what: format!("manifest {top_hash}"),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let manifest_error = |source| RegistryError::Manifest {
            bucket: self.bucket.clone(),
            top_hash: top_hash.to_string(),
            source,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            manifest_error(ManifestError::Shape {
                line: 0,
                reason: "the manifest is not UTF-8".into(),
            })
        })?;
        let manifest = Manifest::parse(text).map_err(manifest_error)?;
        let computed = manifest.top_hash();
        if computed != top_hash {
            return Err(RegistryError::HashMismatch {
                bucket: self.bucket.clone(),
                stored_as: top_hash.to_string(),
                computed,
            });
        }
        Ok(manifest)
    }

    /// The manifest `latest` points to, with its top hash.
    pub async fn latest_manifest(
        &self,
        name: &PackageName,
    ) -> Result<(String, Manifest), RegistryError> {
        let top_hash = self.latest(name).await?;
        let manifest = self.manifest(&top_hash).await?;
        Ok((top_hash, manifest))
    }
}
