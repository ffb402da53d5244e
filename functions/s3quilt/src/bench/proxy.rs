//! The latency proxy: forwards every request to the S3 server after sleeping a fixed delay (a
//! stand-in for S3's round trip) and counts requests by operation.
//!
//! Each client connection gets its own upstream connection (HTTP/1.1 answers one request at a
//! time per connection, so a 1:1 mapping needs no pool), and bodies stream through untouched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::body::Incoming;
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Requests seen, by S3 operation.
pub type Counts = BTreeMap<&'static str, u64>;

/// One forwarded request: when it arrived, when its answer started, its operation.
pub type Logged = (Instant, Instant, &'static str);

#[derive(Default)]
struct Seen {
    counts: Counts,
    log: Vec<Logged>,
}

/// Counts requests by operation and logs when each arrived and was answered (shared by the
/// latency proxy and the in-memory S3).
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    /// A request of `op` arrived.
    pub fn arrived(&self, op: &'static str) {
        if let Ok(mut s) = self.0.lock() {
            *s.counts.entry(op).or_insert(0) += 1;
        }
    }

    /// The answer to a request of `op` that arrived at `arrived` starts now.
    pub fn answered(&self, arrived: Instant, op: &'static str) {
        if let Ok(mut s) = self.0.lock() {
            s.log.push((arrived, Instant::now(), op));
        }
    }

    /// Requests seen so far, by operation.
    pub fn counts(&self) -> Counts {
        self.0.lock().map(|s| s.counts.clone()).unwrap_or_default()
    }

    /// Requests that arrived at or after `since`, in arrival order.
    pub fn log_since(&self, since: Instant) -> Vec<Logged> {
        self.0
            .lock()
            .map(|s| s.log.iter().filter(|l| l.0 >= since).copied().collect())
            .unwrap_or_default()
    }
}

/// A running proxy; dropping it stops it.
pub struct LatencyProxy {
    addr: SocketAddr,
    seen: Recorder,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LatencyProxy {
    /// Binds 127.0.0.1 on a free port and forwards to `upstream` (`host:port`), on its own
    /// thread and runtime so it does not share worker threads with the measured client.
    pub fn start(upstream: SocketAddr, latency: Duration) -> anyhow::Result<LatencyProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the latency proxy on 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let seen = Recorder::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-proxy")
            .enable_all()
            .build()
            .context("starting the latency proxy's runtime")?;
        let thread_seen = seen.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let seen = thread_seen.clone();
                            tokio::spawn(serve(stream, upstream, latency, seen));
                        }
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Ok(LatencyProxy {
            addr,
            seen,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen so far, by operation.
    pub fn counts(&self) -> Counts {
        self.seen.counts()
    }

    /// Requests that arrived at or after `since`, in arrival order.
    pub fn log_since(&self, since: Instant) -> Vec<Logged> {
        self.seen.log_since(since)
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Requests in `after` that were not in `before`, by operation.
pub fn diff(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn serve(
    stream: tokio::net::TcpStream,
    upstream: SocketAddr,
    latency: Duration,
    seen: Recorder,
) {
    let _ = stream.set_nodelay(true);
    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = client_http1::handshake::<_, Incoming>(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |req: Request<Incoming>| {
        let (sender, seen) = (sender.clone(), seen.clone());
        async move {
            let arrived = Instant::now();
            let op = classify(&req);
            seen.arrived(op);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let mut sender = sender.lock().await;
            sender.ready().await?;
            let response: Response<Incoming> = sender.send_request(req).await?;
            seen.answered(arrived, op);
            Ok::<_, hyper::Error>(response)
        }
    });
    let _ = server_http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The S3 operation a request is, as far as the HTTP request tells (path-style addressing).
pub fn classify<B>(req: &Request<B>) -> &'static str {
    let query = req.uri().query().unwrap_or("");
    let has = |name: &str| {
        query
            .split('&')
            .any(|p| p == name || p.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
    };
    // `/bucket`, `/bucket/` (bucket operations) or `/bucket/key`.
    let has_key = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    let copy = req.headers().contains_key("x-amz-copy-source");
    match req.method().as_str() {
        "PUT" if copy && has("partNumber") => "UploadPartCopy",
        "PUT" if copy => "CopyObject",
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" if has_key => "PutObject",
        "PUT" => "PutBucket*",
        "GET" if has("versions") => "ListObjectVersions",
        "GET" if has("list-type") && !has_key => "ListObjectsV2",
        "GET" if !has_key && has("uploads") => "ListMultipartUploads",
        "GET" if has_key => "GetObject",
        "GET" => "GetBucket*",
        "HEAD" if has_key => "HeadObject",
        "HEAD" => "HeadBucket",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" => "DeleteObject",
        _ => "Other",
    }
}
