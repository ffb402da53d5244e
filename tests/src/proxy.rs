//! A fault-injecting HTTP proxy in front of an S3 server, for reliability tests: it forwards
//! every request to the upstream server and, by rule, answers some of them itself with
//! `503 SlowDown` / `500 InternalError`, resets the connection, or delays the answer past the
//! client's timeout. It binds 127.0.0.1 on a free port and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The S3 operation a request is, as far as the proxy can tell from the HTTP request.
pub fn classify(
    method: &hyper::Method,
    path: &str,
    query: &str,
    copy_source: bool,
) -> &'static str {
    let has = |name: &str| {
        query
            .split('&')
            .any(|p| p == name || p.starts_with(&format!("{name}=")))
    };
    let has_key = path.trim_start_matches('/').contains('/');
    match method.as_str() {
        "PUT" if copy_source && has("partNumber") => "UploadPartCopy",
        "PUT" if copy_source => "CopyObject",
        "PUT" if has("partNumber") => "UploadPart",
        "PUT" if has("versioning") => "PutBucketVersioning",
        "PUT" if has_key => "PutObject",
        "PUT" => "CreateBucket",
        "GET" if has("versioning") => "GetBucketVersioning",
        "GET" if has("versions") => "ListObjectVersions",
        "GET" if has_key => "GetObject",
        "GET" => "ListObjectsV2",
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

/// What to do to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and S3 error code, without forwarding.
    Status(u16, &'static str),
    /// Close the connection without an answer.
    Reset,
    /// Forward, but hold the answer this long first.
    Delay(Duration),
}

/// Which requests of an operation get the fault.
#[derive(Debug, Clone)]
pub enum Select {
    /// The calls numbered (1-based, per rule) in this range.
    Calls(std::ops::RangeInclusive<usize>),
    /// Every n-th call (n, 2n, 3n, …).
    EveryNth(usize),
}

/// A fault rule.
#[derive(Debug, Clone)]
pub struct ProxyRule {
    /// The operation (as `classify` names it); `"*"` matches all.
    pub operation: &'static str,
    /// Which calls.
    pub select: Select,
    /// What happens to them.
    pub fault: Fault,
}

struct State {
    upstream: String,
    rules: Vec<(ProxyRule, AtomicUsize)>,
    client: Client<HttpConnector, Full<Bytes>>,
    log: Mutex<Vec<(&'static str, Option<String>)>>,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`) with these rules, on its own thread
    /// and runtime so it outlives any one test's runtime.
    pub fn start(upstream: &str, rules: Vec<ProxyRule>) -> FaultProxy {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            rules: rules
                .into_iter()
                .map(|r| (r, AtomicUsize::new(0)))
                .collect(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            log: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let state = thread_state.clone();
                            tokio::spawn(async move {
                                let service = service_fn(move |req| handle(state.clone(), req));
                                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                            });
                        }
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        FaultProxy {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen, as (operation, injected fault), in order.
    pub fn requests(&self) -> Vec<(&'static str, Option<String>)> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many faults were injected.
    pub fn faults_injected(&self) -> usize {
        self.requests().iter().filter(|(_, f)| f.is_some()).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn s3_error(status: u16, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message><RequestId>proxy</RequestId></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let operation = classify(
        &parts.method,
        &path,
        &query,
        parts.headers.contains_key("x-amz-copy-source"),
    );
    let mut fault = None;
    for (rule, seen) in &state.rules {
        if rule.operation != "*" && rule.operation != operation {
            continue;
        }
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        let hit = match &rule.select {
            Select::Calls(range) => range.contains(&n),
            Select::EveryNth(k) => *k > 0 && n % k == 0,
        };
        if hit {
            fault = Some(rule.fault.clone());
            break;
        }
    }
    state
        .log
        .lock()
        .unwrap()
        .push((operation, fault.as_ref().map(|f| format!("{f:?}"))));
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match fault {
        Some(Fault::Status(status, code)) => return Ok(s3_error(status, code)),
        Some(Fault::Reset) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
        _ => {}
    }
    let uri = format!(
        "{}{}",
        state.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut upstream = Request::builder().method(parts.method.clone()).uri(uri);
    for (name, value) in &parts.headers {
        upstream = upstream.header(name, value);
    }
    let forwarded = state
        .client
        .request(upstream.body(Full::new(body)).unwrap())
        .await;
    if let Some(Fault::Delay(delay)) = fault {
        tokio::time::sleep(delay).await;
    }
    match forwarded {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok(Response::from_parts(parts, Full::new(bytes)))
        }
        Err(e) => Ok(s3_error(
            502,
            &format!("ProxyUpstreamError {e}").replace(['<', '>'], ""),
        )),
    }
}
