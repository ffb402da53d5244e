//! A store wrapper for tests: counts every call by operation and injects failures by rule, so a
//! test can prove "no GetObject happened" (hashes came from S3's checksums) or "the 5th
//! CopyObject failed and the run rolled back".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use s3quilt_core::storage::{
    ByteChunks, CopiedPart, CopyRequest, ListPage, ObjectInfo, ObjectStore, ObjectVersion,
    PartCopyRequest, PutOptions, StoreError, StoreErrorKind, VersionNotDeleted, Versioning,
    WriteChecksum, WriteResult,
};

/// Fail calls of one operation.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Operation name as in [`StoreError::operation`], e.g. `"CopyObject"`.
    pub operation: &'static str,
    /// Fail the calls numbered (1-based, per operation) in this range.
    pub calls: std::ops::RangeInclusive<usize>,
    /// The error kind to return.
    pub kind: StoreErrorKind,
}

/// Counts calls and injects the configured failures.
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    counts: Mutex<HashMap<&'static str, usize>>,
    log: Mutex<Vec<(&'static str, String, String)>>,
    rules: Vec<FaultRule>,
    /// How long each HEAD, copy and part copy is held before it goes to `inner` (so that
    /// requests overlap and a test can see how many run at once).
    hold: std::time::Duration,
    /// Of those three operations: (in flight now, most ever in flight), by operation and
    /// (under `"*"`) all together.
    flights: Mutex<HashMap<&'static str, (usize, usize)>>,
}

/// One request in flight (see [`InstrumentedStore::max_in_flight`]); landing on drop.
struct Flight<'a>(&'a InstrumentedStore, &'static str);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self.0.flights.lock().unwrap();
        for op in [self.1, "*"] {
            if let Some(f) = flights.get_mut(op) {
                f.0 -= 1;
            }
        }
    }
}

impl InstrumentedStore {
    /// Wraps `inner` with failure rules (none: only counting).
    pub fn new(inner: Arc<dyn ObjectStore>, rules: Vec<FaultRule>) -> Arc<Self> {
        Arc::new(InstrumentedStore {
            inner,
            counts: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            rules,
            hold: std::time::Duration::ZERO,
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// [`InstrumentedStore::new`] holding each HeadObject, CopyObject and UploadPartCopy for
    /// `hold` before it is sent.
    pub fn holding(
        inner: Arc<dyn ObjectStore>,
        rules: Vec<FaultRule>,
        hold: std::time::Duration,
    ) -> Arc<Self> {
        let mut store = Arc::into_inner(Self::new(inner, rules)).expect("just made");
        store.hold = hold;
        Arc::new(store)
    }

    /// The most HeadObject, CopyObject or UploadPartCopy requests (`operation`), or of the
    /// three together (`"*"`), that were in flight at once.
    pub fn max_in_flight(&self, operation: &str) -> usize {
        self.flights
            .lock()
            .unwrap()
            .get(operation)
            .map_or(0, |f| f.1)
    }

    async fn fly(&self, operation: &'static str) -> Flight<'_> {
        {
            let mut flights = self.flights.lock().unwrap();
            for op in [operation, "*"] {
                let f = flights.entry(op).or_insert((0, 0));
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
        }
        let flight = Flight(self, operation);
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        flight
    }

    /// Calls made so far, by operation.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Calls made so far of one operation.
    pub fn count(&self, operation: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Every call so far as (operation, bucket, key or prefix), in order.
    pub fn calls(&self) -> Vec<(&'static str, String, String)> {
        self.log.lock().unwrap().clone()
    }

    fn enter(&self, operation: &'static str, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.log
            .lock()
            .unwrap()
            .push((operation, bucket.to_string(), key.to_string()));
        let n = {
            let mut counts = self.counts.lock().unwrap();
            let n = counts.entry(operation).or_insert(0);
            *n += 1;
            *n
        };
        match self
            .rules
            .iter()
            .find(|r| r.operation == operation && r.calls.contains(&n))
        {
            Some(rule) => Err(StoreError::new(
                rule.kind,
                operation,
                bucket,
                key,
                format!("injected failure of call {n}"),
            )),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn list_page(
        &self,
        b: &str,
        p: &str,
        d: Option<&str>,
        t: Option<String>,
        m: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.enter("ListObjectsV2", b, p)?;
        self.inner.list_page(b, p, d, t, m).await
    }
    async fn head(&self, b: &str, k: &str, v: Option<&str>) -> Result<ObjectInfo, StoreError> {
        self.enter("HeadObject", b, k)?;
        let _flight = self.fly("HeadObject").await;
        self.inner.head(b, k, v).await
    }
    async fn get(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        r: Option<(u64, u64)>,
    ) -> Result<ByteChunks, StoreError> {
        self.enter("GetObject", b, k)?;
        self.inner.get(b, k, v, r).await
    }
    async fn put(
        &self,
        b: &str,
        k: &str,
        body: Bytes,
        o: PutOptions,
    ) -> Result<WriteResult, StoreError> {
        self.enter("PutObject", b, k)?;
        self.inner.put(b, k, body, o).await
    }
    async fn copy(&self, r: CopyRequest<'_>) -> Result<WriteResult, StoreError> {
        self.enter("CopyObject", r.dst_bucket, r.dst_key)?;
        let _flight = self.fly("CopyObject").await;
        self.inner.copy(r).await
    }
    async fn create_multipart(
        &self,
        b: &str,
        k: &str,
        c: WriteChecksum,
        ct: Option<&str>,
        m: &BTreeMap<String, String>,
        t: Option<&str>,
    ) -> Result<String, StoreError> {
        self.enter("CreateMultipartUpload", b, k)?;
        self.inner.create_multipart(b, k, c, ct, m, t).await
    }
    async fn upload_part_copy(&self, r: PartCopyRequest<'_>) -> Result<CopiedPart, StoreError> {
        self.enter("UploadPartCopy", r.dst_bucket, r.dst_key)?;
        let _flight = self.fly("UploadPartCopy").await;
        self.inner.upload_part_copy(r).await
    }
    async fn upload_part(
        &self,
        b: &str,
        k: &str,
        u: &str,
        n: u32,
        body: Bytes,
    ) -> Result<CopiedPart, StoreError> {
        self.enter("UploadPart", b, k)?;
        let _flight = self.fly("UploadPart").await;
        self.inner.upload_part(b, k, u, n, body).await
    }
    async fn complete_multipart(
        &self,
        b: &str,
        k: &str,
        u: &str,
        p: &[CopiedPart],
        n: bool,
    ) -> Result<WriteResult, StoreError> {
        self.enter("CompleteMultipartUpload", b, k)?;
        self.inner.complete_multipart(b, k, u, p, n).await
    }
    async fn abort_multipart(&self, b: &str, k: &str, u: &str) -> Result<(), StoreError> {
        self.enter("AbortMultipartUpload", b, k)?;
        self.inner.abort_multipart(b, k, u).await
    }
    async fn open_uploads(&self, b: &str, k: &str) -> Result<Vec<String>, StoreError> {
        self.enter("ListMultipartUploads", b, k)?;
        self.inner.open_uploads(b, k).await
    }
    async fn delete(&self, b: &str, k: &str, v: Option<&str>) -> Result<(), StoreError> {
        self.enter("DeleteObject", b, k)?;
        self.inner.delete(b, k, v).await
    }
    async fn list_versions(&self, b: &str, p: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        self.enter("ListObjectVersions", b, p)?;
        self.inner.list_versions(b, p).await
    }
    async fn delete_versions(
        &self,
        b: &str,
        versions: &[(String, String)],
    ) -> Result<Vec<VersionNotDeleted>, StoreError> {
        self.enter("DeleteObjects", b, "")?;
        self.inner.delete_versions(b, versions).await
    }
    async fn delete_if_match(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        e: &str,
    ) -> Result<(), StoreError> {
        self.enter("DeleteObject", b, k)?;
        self.inner.delete_if_match(b, k, v, e).await
    }
    async fn tag_value(
        &self,
        b: &str,
        k: &str,
        v: Option<&str>,
        t: &str,
    ) -> Result<Option<String>, StoreError> {
        self.enter("GetObjectTagging", b, k)?;
        self.inner.tag_value(b, k, v, t).await
    }
    async fn versioning(&self, b: &str) -> Result<Option<Versioning>, StoreError> {
        self.enter("GetBucketVersioning", b, "")?;
        self.inner.versioning(b).await
    }
}
