//! A fault-injecting HTTP proxy in front of an S3 server, for reliability tests: it forwards
//! every request to the upstream server and, by rule, answers some of them itself with
//! `503 SlowDown` / `500 InternalError`, resets the connection (before or after the server
//! applied the request), or holds the answer past the client's timeout. It records every request
//! it received ([`FaultProxy::log`], [`FaultProxy::count`]), so tests can count what went on the
//! wire per operation. It binds 127.0.0.1 on a free port and stops when dropped.

use std::collections::BTreeMap;
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
        "PUT" if has("tagging") && has_key => "PutObjectTagging",
        "PUT" if has_key => "PutObject",
        "PUT" => "CreateBucket",
        "GET" if has("versioning") => "GetBucketVersioning",
        "GET" if has("versions") => "ListObjectVersions",
        "GET" if has("tagging") && has_key => "GetObjectTagging",
        "GET" if has("attributes") && has_key => "GetObjectAttributes",
        "GET" if has_key => "GetObject",
        "GET" => "ListObjectsV2",
        "HEAD" if has_key => "HeadObject",
        "HEAD" => "HeadBucket",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "DELETE" if has("tagging") && has_key => "DeleteObjectTagging",
        "DELETE" => "DeleteObject",
        _ => "Other",
    }
}

/// What to do to a matching request.
///
/// Whether the server applied the request, and what the client sees:
///
/// | fault | forwarded (applied by S3) | client sees |
/// | --- | --- | --- |
/// | `Status` | no | that S3 error |
/// | `Reset` | no | connection closed, no answer |
/// | `StallPastTimeout(d)` | no | nothing for `d` (its timeout), then the connection closes |
/// | `Delay(d)` | yes | the server's answer, `d` late (past a timeout shorter than `d`: lost) |
/// | `ApplyThenReset` | yes, answered | connection closed, no answer: the reply is lost |
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and S3 error code, without forwarding.
    Status(u16, &'static str),
    /// Close the connection without an answer, without forwarding.
    Reset,
    /// Forward, but hold the answer this long first.
    Delay(Duration),
    /// Forward, wait for the server's full answer (so S3 applied the request), then close the
    /// client's connection without answering: a success whose reply is lost.
    ApplyThenReset,
    /// Do not forward; hold the request this long (make it longer than the client's timeout),
    /// then close the connection without an answer. Unlike `Delay`, S3 never sees the request.
    StallPastTimeout(Duration),
}

/// One request the proxy received, in [`FaultProxy::log`].
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// The S3 operation, as [`classify`] names it.
    pub operation: &'static str,
    /// The HTTP method.
    pub method: String,
    /// The path (percent-encoded, as sent).
    pub path: String,
    /// The query string, without `?` (empty if none).
    pub query: String,
    /// The request headers (names lowercase), in order.
    pub headers: Vec<(String, String)>,
    /// The injected fault (its `Debug` form), `None` if the request was simply forwarded.
    pub fault: Option<String>,
    /// Whether the request reached the server.
    pub forwarded: bool,
    /// The status the client was answered with; `None` while in flight or when it got no answer.
    pub status: Option<u16>,
    /// Its number in arrival order (0-based; [`FaultProxy::clear_log`] does not reset it).
    pub seq: usize,
}

impl ProxyRequest {
    /// The value of request header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which requests of an operation get the fault.
#[derive(Debug, Clone)]
pub enum Select {
    /// The calls numbered (1-based, per rule) in this range. A rule numbers the calls of its
    /// operation that reach it: those an earlier rule faulted are not counted.
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
    log: Mutex<Vec<ProxyRequest>>,
    received: AtomicUsize,
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
            received: AtomicUsize::new(0),
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
        self.log()
            .into_iter()
            .map(|r| (r.operation, r.fault))
            .collect()
    }

    /// Every request received so far, in arrival order, with its headers and outcome.
    pub fn log(&self) -> Vec<ProxyRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many requests of `operation` (as [`classify`] names it; `"*"`: all) were received,
    /// faulted or not.
    pub fn count(&self, operation: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| operation == "*" || r.operation == operation)
            .count()
    }

    /// Requests received per operation.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for r in self.state.log.lock().unwrap().iter() {
            *counts.entry(r.operation).or_default() += 1;
        }
        counts
    }

    /// Forgets the log (the rules' call counters keep counting).
    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// How many faults were injected.
    pub fn faults_injected(&self) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.fault.is_some())
            .count()
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
    let reaches_server = !matches!(
        fault,
        Some(Fault::Status(..) | Fault::Reset | Fault::StallPastTimeout(_))
    );
    let seq = state.received.fetch_add(1, Ordering::SeqCst);
    {
        let mut log = state.log.lock().unwrap();
        log.push(ProxyRequest {
            operation,
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            fault: fault.as_ref().map(|f| format!("{f:?}")),
            forwarded: reaches_server,
            status: None,
            seq,
        });
    }
    // Records the status the client gets (`clear_log` may have dropped the entry).
    let answered = |status: u16| {
        let mut log = state.log.lock().unwrap();
        if let Some(r) = log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status);
        }
    };
    let reset = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("injected {why}"),
        ))
    };
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match fault {
        Some(Fault::Status(status, code)) => {
            answered(status);
            return Ok(s3_error(status, code));
        }
        Some(Fault::Reset) => return reset("reset"),
        Some(Fault::StallPastTimeout(stall)) => {
            tokio::time::sleep(stall).await;
            return reset("stall");
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
            if let Some(Fault::ApplyThenReset) = fault {
                return reset("reset after the server answered");
            }
            answered(parts.status.as_u16());
            Ok(Response::from_parts(parts, Full::new(bytes)))
        }
        Err(e) => {
            answered(502);
            Ok(s3_error(
                502,
                &format!("ProxyUpstreamError {e}").replace(['<', '>'], ""),
            ))
        }
    }
}
