//! The demo's embedded S3 server: `s3s-fs` serving a local directory on 127.0.0.1, behind the
//! demo's fixed keys.
//!
//! s3s-fs 0.14.1 has no versioning and does not answer GetBucketVersioning or
//! ListObjectVersions (`NotImplemented`). [`DemoS3`] passes every operation s3s-fs implements
//! through and answers those two the way S3 does for a bucket that was never versioned: no
//! status, and each object listed as its single `null` version.
//!
//! A run's guarantees rest on S3 rules s3s-fs does not keep, which [`DemoS3`] adds so that the
//! demo behaves as S3 does: CopyObject `If-None-Match: *` (s3s 0.14 does not parse the header;
//! it is read from the request), DeleteObject `If-Match`, object tags (`x-amz-tagging` on
//! PutObject, CopyObject and CreateMultipartUpload; GetObjectTagging) and ListMultipartUploads.
//! Conditional writes are checked and applied under a lock per key, so two writers of one key
//! cannot both pass the check. Tags and the list of open uploads live in memory: after the
//! server restarts, objects read as untagged and earlier uploads are not listed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The demo server's access key (a fixed test key for the loopback server, not an AWS key).
pub const DEMO_ACCESS_KEY: &str = "s3quilt-demo";
/// The demo server's secret key (fixed, public, good only for the demo server).
pub const DEMO_SECRET_KEY: &str = "s3quilt-demo-secret";

/// s3s-fs with GetBucketVersioning and ListObjectVersions answered for unversioned buckets,
/// ETags in listings, and the conditions, tags and upload listing of the module's notes.
#[derive(Debug)]
pub struct DemoS3 {
    fs: FileSystem,
    /// Writes of one key hold one of these (chosen by the key's hash) from their condition
    /// check to their answer.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
    /// Each object's tag set as its `x-amz-tagging` text, by (bucket, key).
    tags: Mutex<HashMap<(String, String), String>>,
    /// Open multipart uploads by upload id.
    uploads: Mutex<HashMap<String, OpenUpload>>,
}

/// A multipart upload created and neither completed nor aborted.
#[derive(Debug, Clone)]
struct OpenUpload {
    bucket: String,
    key: String,
    initiated: SystemTime,
    tagging: Option<String>,
}

const KEY_LOCKS: usize = 64;

impl DemoS3 {
    fn new(fs: FileSystem) -> DemoS3 {
        DemoS3 {
            fs,
            key_locks: (0..KEY_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: RandomState::new(),
            tags: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
        }
    }

    async fn lock_key(&self, bucket: &str, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let slot = self.hasher.hash_one((bucket, key)) as usize % KEY_LOCKS;
        self.key_locks[slot].lock().await
    }

    /// The object's ETag, or `None` if it does not exist.
    async fn etag_of<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
    ) -> S3Result<Option<ETag>> {
        let head = HeadObjectInput::builder()
            .bucket(bucket.to_string())
            .key(key.to_string())
            .build()
            .map_err(|e| s3_error!(InvalidRequest, "{e}"))?;
        let probe = S3Request {
            input: head,
            method: req.method.clone(),
            uri: req.uri.clone(),
            headers: req.headers.clone(),
            extensions: Default::default(),
            credentials: req.credentials.clone(),
            region: req.region.clone(),
            service: req.service.clone(),
            trailing_headers: None,
        };
        match self.fs.head_object(probe).await {
            Ok(found) => Ok(Some(
                found.output.e_tag.unwrap_or(ETag::Strong(String::new())),
            )),
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_tags(&self, bucket: &str, key: &str, tagging: Option<String>) {
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        let id = (bucket.to_string(), key.to_string());
        match tagging.filter(|t| !t.is_empty()) {
            Some(t) => tags.insert(id, t),
            None => tags.remove(&id),
        };
    }

    fn tags_of(&self, bucket: &str, key: &str) -> Option<String> {
        let tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.get(&(bucket.to_string(), key.to_string())).cloned()
    }
}

/// Implements [`S3`] for [`DemoS3`]: the listed operations go to s3s-fs as they are; the items
/// after `;` are the demo's own. (One macro for the whole impl, so `async_trait` sees the
/// expanded methods.)
macro_rules! demo_s3 {
    ($($op:ident: $input:ident => $output:ident),* $(,)?; $($own:item)*) => {
        #[async_trait::async_trait]
        impl S3 for DemoS3 {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*
            $($own)*
        }
    };
}

demo_s3! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    get_object: GetObjectInput => GetObjectOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    list_parts: ListPartsInput => ListPartsOutput;

    // s3s-fs checks `If-None-Match`/`If-Match` itself; the key's lock makes check and write one
    // step.
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let tagging = req.input.tagging.clone();
        let _key = self.lock_key(&bucket, &key).await;
        let put = self.fs.put_object(req).await?;
        self.set_tags(&bucket, &key, tagging);
        Ok(put)
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let tagging = match (&req.input.tagging_directive, &req.input.copy_source) {
            (Some(d), _) if d.as_str() == TaggingDirective::REPLACE => req.input.tagging.clone(),
            (_, CopySource::Bucket { bucket, key, .. }) => self.tags_of(bucket, key),
            _ => None,
        };
        let only_if_absent = req
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == b"*");
        let _key = self.lock_key(&bucket, &key).await;
        if only_if_absent && self.etag_of(&req, &bucket, &key).await?.is_some() {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        let copied = self.fs.copy_object(req).await?;
        self.set_tags(&bucket, &key, tagging);
        Ok(copied)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let _key = self.lock_key(&bucket, &key).await;
        if let Some(condition) = req.input.if_match.clone() {
            let Some(etag) = self.etag_of(&req, &bucket, &key).await? else {
                return Err(s3_error!(NoSuchKey));
            };
            let holds = match &condition {
                ETagCondition::Any => true,
                ETagCondition::ETag(wanted) => etag.strong_cmp(wanted),
            };
            if !holds {
                return Err(s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                ));
            }
        }
        let deleted = self.fs.delete_object(req).await?;
        self.set_tags(&bucket, &key, None);
        Ok(deleted)
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let deleted = self.fs.delete_objects(req).await?;
        for object in deleted.output.deleted.iter().flatten() {
            if let Some(key) = &object.key {
                self.set_tags(&bucket, key, None);
            }
        }
        Ok(deleted)
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        if self.etag_of(&req, &bucket, &key).await?.is_none() {
            return Err(s3_error!(NoSuchKey));
        }
        let tags = self.tags_of(&bucket, &key);
        Ok(S3Response::new(tagging_output(tags.as_deref())))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let upload = OpenUpload {
            bucket: req.input.bucket.clone(),
            key: req.input.key.clone(),
            initiated: SystemTime::now(),
            tagging: req.input.tagging.clone(),
        };
        let created = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &created.output.upload_id {
            let mut uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
            uploads.insert(id.clone(), upload);
        }
        Ok(created)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let id = req.input.upload_id.clone();
        let _key = self.lock_key(&bucket, &key).await;
        let completed = self.fs.complete_multipart_upload(req).await?;
        let upload = self.uploads.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.set_tags(&bucket, &key, upload.and_then(|u| u.tagging));
        Ok(completed)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let id = req.input.upload_id.clone();
        let aborted = self.fs.abort_multipart_upload(req).await?;
        self.uploads.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        Ok(aborted)
    }

    // One page of every open upload (the demo holds few).
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let open = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, u)| u.bucket == input.bucket)
            .map(|(id, u)| (u.key.clone(), id.clone(), u.initiated))
            .collect();
        Ok(S3Response::new(uploads_output(input, open)))
    }

    // s3s-fs lists objects without their ETags; S3 always lists them, and an incremental run
    // needs them to tell an unchanged object (docs/incremental.md). Filled in from a HEAD each.
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let mut listed = self.fs.list_objects_v2(req.clone()).await?;
        for object in listed.output.contents.iter_mut().flatten() {
            let (Some(key), None) = (object.key.clone(), &object.e_tag) else {
                continue;
            };
            let head = HeadObjectInput::builder()
                .bucket(bucket.clone())
                .key(key)
                .build()
                .map_err(|e| s3_error!(InvalidRequest, "{e}"))?;
            let found = self.fs.head_object(req.clone().map_input(|_| head)).await?;
            object.e_tag = found.output.e_tag;
        }
        Ok(listed)
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let bucket = req.input.bucket.clone();
        let head = HeadBucketInput::builder().bucket(bucket).build().map_err(|e| s3_error!(InvalidRequest, "{e}"))?;
        self.fs.head_bucket(req.map_input(|_| head)).await?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input.clone();
        let list = ListObjectsV2Input::builder()
            .bucket(input.bucket.clone())
            .prefix(input.prefix.clone())
            .delimiter(input.delimiter.clone())
            .max_keys(input.max_keys)
            .start_after(input.key_marker.clone())
            .build()
            .map_err(|e| s3_error!(InvalidRequest, "{e}"))?;
        let listed = self.fs.list_objects_v2(req.map_input(|_| list)).await?.output;
        let versions: Vec<ObjectVersion> = listed
            .contents
            .unwrap_or_default()
            .into_iter()
            .map(|o| ObjectVersion {
                e_tag: o.e_tag,
                is_latest: Some(true),
                key: o.key,
                last_modified: o.last_modified,
                size: o.size,
                version_id: Some("null".to_string()),
                ..Default::default()
            })
            .collect();
        let truncated = listed.is_truncated == Some(true);
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            max_keys: listed.max_keys,
            is_truncated: Some(truncated),
            next_key_marker: if truncated { listed.next_continuation_token } else { None },
            common_prefixes: listed.common_prefixes,
            versions: Some(versions),
            ..Default::default()
        }))
    }
}

/// The tags of an `x-amz-tagging` value (`k=v&k2=v2`, form-encoded), in order. (The bench's
/// in-memory S3 uses it too.)
pub(crate) fn parse_tagging(tagging: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    tagging
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// GetObjectTagging's answer for an object whose `x-amz-tagging` was `tagging`.
pub(crate) fn tagging_output(tagging: Option<&str>) -> GetObjectTaggingOutput {
    let tag_set = tagging
        .map(parse_tagging)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| Tag {
            key: Some(k),
            value: Some(v),
        })
        .collect();
    GetObjectTaggingOutput {
        tag_set,
        version_id: None,
    }
}

/// ListMultipartUploads' answer (one page, every upload) for the open uploads of the bucket
/// `input` names, as (key, upload id, initiated): those under its prefix, by key and initiation.
pub(crate) fn uploads_output(
    input: ListMultipartUploadsInput,
    mut open: Vec<(String, String, SystemTime)>,
) -> ListMultipartUploadsOutput {
    let prefix = input.prefix.clone().unwrap_or_default();
    open.retain(|(key, ..)| key.starts_with(&prefix));
    open.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    let uploads: Vec<MultipartUpload> = open
        .into_iter()
        .map(|(key, id, initiated)| MultipartUpload {
            key: Some(key),
            upload_id: Some(id),
            initiated: Some(Timestamp::from(initiated)),
            ..Default::default()
        })
        .collect();
    ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        is_truncated: Some(false),
        uploads: (!uploads.is_empty()).then_some(uploads),
        ..Default::default()
    }
}

/// A running demo server.
pub struct DemoServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DemoServer {
    /// Serves `root` (each sub-directory is a bucket) on a free port of 127.0.0.1.
    pub async fn start(root: &Path) -> anyhow::Result<DemoServer> {
        Self::start_on(root, 0).await
    }

    /// Serves `root` on 127.0.0.1:`port` (0: a free port).
    pub async fn start_on(root: &Path, port: u16) -> anyhow::Result<DemoServer> {
        let fs =
            FileSystem::new(root).map_err(|e| anyhow!("cannot serve {}: {e:?}", root.display()))?;
        let mut builder = S3ServiceBuilder::new(DemoS3::new(fs));
        builder.set_auth(SimpleAuth::from_single(DEMO_ACCESS_KEY, DEMO_SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        let addr = listener.local_addr()?;
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            let graceful = GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => {
                            let conn = graceful.watch(http.serve_connection(TokioIo::new(socket), service.clone()).into_owned());
                            tokio::spawn(async move {
                                if let Err(e) = conn.await {
                                    tracing::debug!(error = %e, "demo server connection ended with an error");
                                }
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "demo server could not accept a connection"),
                    },
                    _ = &mut stop => break,
                }
            }
            if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("demo server connections still open after 5 s; closing them");
            }
        });
        tracing::info!(%addr, "demo S3 server listening");
        Ok(DemoServer {
            endpoint: format!("http://{addr}"),
            shutdown,
            task,
        })
    }

    /// Stops accepting, lets open requests finish (5 s at most) and returns.
    pub async fn stop(self) {
        tracing::debug!(endpoint = %self.endpoint, "stopping the demo S3 server");
        let _ = self.shutdown.send(());
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "demo server task failed");
        }
        tracing::debug!("demo S3 server stopped");
    }
}

/// `s3quilt demo-server`: the demo's server on its own, until SIGINT or SIGTERM. Prints
/// `listening <endpoint>` on stdout once it accepts connections.
pub async fn serve_until_signal(args: &crate::cli::DemoServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("cannot create {}", args.root.display()))?;
    let server = DemoServer::start_on(&args.root, args.port).await?;
    println!("listening {}", server.endpoint);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.stop().await;
    Ok(())
}
