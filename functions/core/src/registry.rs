//! A Quilt registry (an S3 bucket in quilt3's "V1" layout): manifests under
//! `.quilt/packages/<top_hash>`, named-package pointers under
//! `.quilt/named_packages/<namespace>/<name>/<timestamp>` and `.../latest`.
//!
//! The manifest is written first and the pointers last, so a version becomes visible only when
//! it is whole: readers find versions through the pointers.

pub mod workflow;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};

use crate::quilt::manifest::{Manifest, ManifestError};
use crate::quilt::names::PackageName;
use crate::retry::RetryPolicy;
use crate::storage::{
    CopiedPart, ObjectStore, PutOptions, StoreError, StoreErrorKind, WriteChecksum, WriteResult,
    get_bytes, list_all,
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
    /// Every second after the planned pointer timestamp is taken.
    #[error(
        "no free timestamped pointer for {package} in s3://{bucket} from {from} on: another writer holds every second"
    )]
    NoFreePointer {
        /// Registry bucket.
        bucket: String,
        /// Package.
        package: String,
        /// First second tried.
        from: u64,
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

/// What writing a version's manifest found (quilt3's rule: the last writer's manifest stands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestWrite {
    /// No manifest had this top hash: written.
    Written,
    /// The same bytes were there (an identical package, or this run's own earlier write).
    Unchanged,
    /// A manifest with this top hash but other bytes (other physical keys) was replaced.
    Replaced,
}

/// An object version a run created, as S3's answer to the write named it: the run's
/// ownership record is a list of these, and rollback deletes exactly them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenObject {
    /// Key written.
    pub key: String,
    /// Version id created (`null` on a bucket whose versioning is suspended).
    pub version_id: Option<String>,
    /// ETag S3 gave the new object: on a bucket that does not keep versions, rollback deletes
    /// only while the key still holds this ETag (`If-Match`), never another writer's object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl WrittenObject {
    /// What a write answered with.
    pub fn from_write(key: impl Into<String>, written: &WriteResult) -> Self {
        WrittenObject {
            key: key.into(),
            version_id: written.version_id.clone(),
            etag: written.etag.clone(),
        }
    }
}

/// Smallest part of a manifest written in parts: S3 wants at least 5 MiB in every part but
/// the last, and larger parts mean fewer requests; a manifest this size or smaller is one
/// PutObject.
pub const MANIFEST_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one manifest uploading at once (memory: this many parts plus the one being filled).
pub const MANIFEST_PARTS_IN_FLIGHT: usize = 4;
/// S3's most parts in one upload, less a margin for the lines that overfill a part.
const MANIFEST_MAX_PARTS: u64 = 9_000;

/// The part size for a manifest of `manifest_bytes`: [`MANIFEST_PART_BYTES`], grown (in MiB)
/// so the upload stays under S3's 10,000 parts.
fn manifest_part_bytes(manifest_bytes: u64) -> usize {
    const MIB: u64 = 1024 * 1024;
    let needed = manifest_bytes.div_ceil(MANIFEST_MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(MANIFEST_PART_BYTES as u64) as usize
}

type PartUpload = BoxFuture<'static, Result<CopiedPart, StoreError>>;

/// A manifest being written in pieces ([`Registry::manifest_writer`]). Dropping it without
/// [`ManifestWriter::finish`] leaves an open upload, which [`ManifestWriter::abort`] avoids.
pub struct ManifestWriter {
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
    bucket: String,
    key: String,
    if_none_match: bool,
    part_bytes: usize,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    next_part: u32,
    in_flight: FuturesUnordered<PartUpload>,
    parts: Vec<CopiedPart>,
}

impl ManifestWriter {
    /// Appends text (whole lines); sends a part once a part's worth is buffered.
    pub async fn write(&mut self, text: &str) -> Result<(), RegistryError> {
        self.buffer.extend_from_slice(text.as_bytes());
        if self.buffer.len() >= self.part_bytes {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), RegistryError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let no_metadata = BTreeMap::new();
                let id = self
                    .retry
                    .run(|_| {
                        self.store.create_multipart(
                            &self.bucket,
                            &self.key,
                            WriteChecksum::Sha256,
                            None,
                            &no_metadata,
                            None,
                        )
                    })
                    .await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= MANIFEST_PARTS_IN_FLIGHT {
            self.collect_one().await?;
        }
        let body = Bytes::from(std::mem::take(&mut self.buffer));
        let (store, retry) = (self.store.clone(), self.retry);
        let (bucket, key, number) = (self.bucket.clone(), self.key.clone(), self.next_part);
        self.next_part += 1;
        self.in_flight.push(Box::pin(async move {
            retry
                .run(|_| store.upload_part(&bucket, &key, &upload_id, number, body.clone()))
                .await
        }));
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), RegistryError> {
        if let Some(part) = self.in_flight.next().await {
            self.parts.push(part?);
        }
        Ok(())
    }

    /// Writes what is buffered and completes the manifest. On failure an open upload is
    /// aborted.
    pub async fn finish(mut self) -> Result<WrittenObject, RegistryError> {
        let result = self.complete().await;
        if result.is_err() {
            self.abort_upload().await;
        }
        result
    }

    async fn complete(&mut self) -> Result<WrittenObject, RegistryError> {
        let Some(upload_id) = self.upload_id.clone() else {
            // It fits in one part: one PutObject.
            let body = Bytes::from(std::mem::take(&mut self.buffer));
            let options = PutOptions {
                if_none_match: self.if_none_match,
                ..PutOptions::default()
            };
            let written = self
                .retry
                .run(|_| {
                    self.store
                        .put(&self.bucket, &self.key, body.clone(), options.clone())
                })
                .await?;
            return Ok(WrittenObject::from_write(self.key.clone(), &written));
        };
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        self.parts.sort_by_key(|p| p.part_number);
        let written = self
            .retry
            .run(|_| {
                self.store.complete_multipart(
                    &self.bucket,
                    &self.key,
                    &upload_id,
                    &self.parts,
                    self.if_none_match,
                )
            })
            .await?;
        self.upload_id = None;
        Ok(WrittenObject::from_write(self.key.clone(), &written))
    }

    /// Gives the manifest up: aborts an open upload (best effort; an upload left open is
    /// only litter, which a lifecycle rule on incomplete uploads removes).
    pub async fn abort(mut self) {
        self.abort_upload().await;
    }

    async fn abort_upload(&mut self) {
        self.in_flight.clear();
        if let Some(upload_id) = self.upload_id.take()
            && let Err(e) = self
                .store
                .abort_multipart(&self.bucket, &self.key, &upload_id)
                .await
        {
            tracing::warn!(key = %self.key, error = %e, "could not abort the manifest's upload");
        }
    }
}

/// How many seconds after the planned one a timestamped pointer may move when another version
/// of the package took that second.
const POINTER_SLOTS: u64 = 120;

/// A registry bucket.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    retry: RetryPolicy,
}

/// Whether `s` is a top hash: 64 lowercase hex digits.
pub fn is_top_hash(s: &str) -> bool {
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
            retry: RetryPolicy::default(),
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
        let body = Bytes::from(body);
        match self
            .retry
            .run(|_| {
                self.store
                    .put(&self.bucket, &key, body.clone(), options.clone())
            })
            .await
        {
            Ok(written) => Ok((top_hash, Some(WrittenObject::from_write(key, &written)))),
            // There already (a manifest of the same top hash, or our own earlier attempt whose
            // reply was lost): after the commit point either is the version's manifest.
            Err(e) if e.kind == StoreErrorKind::PreconditionFailed => Ok((top_hash, None)),
            Err(e) => Err(e.into()),
        }
    }

    /// SHA-256 of the bytes of the manifest stored as `top_hash`, read as a stream (a manifest
    /// of millions of entries is never held); `None` when there is none.
    pub async fn manifest_sha256(&self, top_hash: &str) -> Result<Option<[u8; 32]>, RegistryError> {
        let key = format!("{PACKAGES_PREFIX}{top_hash}");
        self.retry
            .run(|_| async {
                let mut chunks = match self.store.get(&self.bucket, &key, None, None).await {
                    Ok(chunks) => chunks,
                    Err(e) if e.kind == StoreErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mut sha = Sha256::new();
                while let Some(chunk) = chunks.next().await {
                    sha.update(chunk?);
                }
                Ok(Some(sha.finalize().into()))
            })
            .await
            .map_err(RegistryError::from)
    }

    /// Starts writing the manifest of `top_hash`, `manifest_bytes` long, in pieces: one
    /// PutObject when it fits in one part, else a multipart upload whose parts are sent while
    /// the next is written ([`MANIFEST_PARTS_IN_FLIGHT`] at a time), so memory stays a few
    /// parts whatever the manifest's size. With `if_none_match` the write (PutObject or
    /// CompleteMultipartUpload) is refused (`PreconditionFailed`) if a manifest of this top
    /// hash appeared meanwhile.
    pub fn manifest_writer(
        &self,
        top_hash: &str,
        manifest_bytes: u64,
        if_none_match: bool,
    ) -> ManifestWriter {
        ManifestWriter {
            store: self.store.clone(),
            retry: self.retry,
            bucket: self.bucket.clone(),
            key: format!("{PACKAGES_PREFIX}{top_hash}"),
            if_none_match,
            part_bytes: manifest_part_bytes(manifest_bytes),
            buffer: Vec::new(),
            upload_id: None,
            next_part: 1,
            in_flight: FuturesUnordered::new(),
            parts: Vec::new(),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<WrittenObject, RegistryError> {
        let written = self
            .retry
            .run(|_| {
                self.store
                    .put(&self.bucket, key, body.clone(), PutOptions::default())
            })
            .await?;
        Ok(WrittenObject::from_write(key, &written))
    }

    /// Writes the timestamped pointer of a version at `timestamp`, or the first free second
    /// after it: each write is conditional (`If-None-Match: *`), so two versions published in
    /// the same second never share a pointer. A pointer already naming `top_hash` is this
    /// version's (an earlier attempt whose reply was lost, or a resumed run): it is kept.
    /// Returns the timestamp used.
    pub async fn put_version_pointer(
        &self,
        name: &PackageName,
        top_hash: &str,
        timestamp: u64,
    ) -> Result<u64, RegistryError> {
        let prefix = Self::pointer_prefix(name);
        let body = Bytes::from(top_hash.to_string());
        let options = PutOptions {
            if_none_match: true,
            ..PutOptions::default()
        };
        for stamp in timestamp..timestamp + POINTER_SLOTS {
            let key = format!("{prefix}{stamp}");
            match self
                .retry
                .run(|_| {
                    self.store
                        .put(&self.bucket, &key, body.clone(), options.clone())
                })
                .await
            {
                Ok(_) => return Ok(stamp),
                Err(e) if e.kind == StoreErrorKind::PreconditionFailed => {
                    match self.read_pointer(&key, || key.clone()).await {
                        Ok(there) if there == top_hash => return Ok(stamp),
                        Ok(_) | Err(RegistryError::BadPointer { .. }) => continue,
                        // Deleted since: try the same second again on the next pass.
                        Err(RegistryError::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::NoFreePointer {
            bucket: self.bucket.clone(),
            package: name.to_string(),
            from: timestamp,
        })
    }

    /// Points `latest` at `top_hash` (last writer wins, as with quilt3).
    pub async fn put_latest(
        &self,
        name: &PackageName,
        top_hash: &str,
    ) -> Result<WrittenObject, RegistryError> {
        let key = format!("{}latest", Self::pointer_prefix(name));
        self.put(&key, Bytes::from(top_hash.to_string())).await
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
        let bytes = match self
            .retry
            .run(|_| get_bytes(self.store.as_ref(), &self.bucket, key, None))
            .await
        {
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

    /// The newest timestamped pointer of a package, from one listing (no pointer is read).
    pub async fn newest_timestamp(&self, name: &PackageName) -> Result<Option<u64>, RegistryError> {
        let prefix = Self::pointer_prefix(name);
        Ok(
            list_all(self.store.as_ref(), &self.bucket, &prefix, &self.retry)
                .await?
                .into_iter()
                .filter_map(|o| o.key[prefix.len()..].parse::<u64>().ok())
                .max(),
        )
    }

    /// Every version of a package, oldest first (by timestamp).
    pub async fn versions(&self, name: &PackageName) -> Result<Vec<PackageVersion>, RegistryError> {
        let prefix = Self::pointer_prefix(name);
        let mut stamps: Vec<(u64, String)> =
            list_all(self.store.as_ref(), &self.bucket, &prefix, &self.retry)
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
        let mut names: Vec<PackageName> = list_all(
            self.store.as_ref(),
            &self.bucket,
            NAMED_PACKAGES_PREFIX,
            &self.retry,
        )
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
        let bytes = match self
            .retry
            .run(|_| get_bytes(self.store.as_ref(), &self.bucket, &key, None))
            .await
        {
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
