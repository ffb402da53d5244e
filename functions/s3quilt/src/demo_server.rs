//! The demo's embedded S3 server: `s3s-fs` serving a local directory on 127.0.0.1, behind the
//! demo's fixed keys.
//!
//! s3s-fs 0.14.1 has no versioning and does not answer GetBucketVersioning or
//! ListObjectVersions (`NotImplemented`). [`DemoS3`] passes every operation s3s-fs implements
//! through and answers those two the way S3 does for a bucket that was never versioned: no
//! status, and each object listed as its single `null` version.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The demo server's access key (a fixed test key for the loopback server, not an AWS key).
pub const DEMO_ACCESS_KEY: &str = "s3quilt-demo";
/// The demo server's secret key (fixed, public, good only for the demo server).
pub const DEMO_SECRET_KEY: &str = "s3quilt-demo-secret";

/// s3s-fs with GetBucketVersioning and ListObjectVersions answered for unversioned buckets,
/// and ETags in listings.
#[derive(Debug)]
pub struct DemoS3(FileSystem);

/// Implements [`S3`] for [`DemoS3`]: the listed operations go to s3s-fs as they are; the items
/// after `;` are the demo's own. (One macro for the whole impl, so `async_trait` sees the
/// expanded methods.)
macro_rules! demo_s3 {
    ($($op:ident: $input:ident => $output:ident),* $(,)?; $($own:item)*) => {
        #[async_trait::async_trait]
        impl S3 for DemoS3 {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.0.$op(req).await
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
    put_object: PutObjectInput => PutObjectOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;

    // s3s-fs lists objects without their ETags; S3 always lists them, and an incremental run
    // needs them to tell an unchanged object (docs/incremental.md). Filled in from a HEAD each.
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let mut listed = self.0.list_objects_v2(req.clone()).await?;
        for object in listed.output.contents.iter_mut().flatten() {
            let (Some(key), None) = (object.key.clone(), &object.e_tag) else {
                continue;
            };
            let head = HeadObjectInput::builder()
                .bucket(bucket.clone())
                .key(key)
                .build()
                .map_err(|e| s3_error!(InvalidRequest, "{e}"))?;
            let found = self.0.head_object(req.clone().map_input(|_| head)).await?;
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
        self.0.head_bucket(req.map_input(|_| head)).await?;
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
        let listed = self.0.list_objects_v2(req.map_input(|_| list)).await?.output;
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
        let mut builder = S3ServiceBuilder::new(DemoS3(fs));
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
