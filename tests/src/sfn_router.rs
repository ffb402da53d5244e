//! The router on moto's `MOTO_PORT`: moto's Step Functions engine sends every AWS call it makes
//! (Lambda Invoke for Task states, S3 GetObject for the Map's ItemReader) to
//! `http://localhost:$MOTO_PORT`. This small HTTP/1.1 forwarder, bound to 127.0.0.1, sends
//! Lambda Invoke calls to `cargo lambda watch` (our real handlers) and everything else to moto.
//!
//! It also bridges two differences between `cargo lambda watch` and the Lambda API:
//! - function ARNs are turned into bare function names (watch only knows binary names);
//! - a handler error comes back from watch as HTTP 500 with `{"errorType", "errorMessage"}`;
//!   Lambda answers 200 with `X-Amz-Function-Error: Unhandled` and that body, which is what
//!   moto's engine turns into the state's error name (so `Retry`/`Catch` can match it).
//!
//! A test may install an [`InvokeHook`] that sees each Invoke before it is forwarded and may act
//! on the world first (delete a source object after planning) or answer in the function's
//! place (a copier that never ran).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One Lambda Invoke seen by the router.
#[derive(Debug, Clone)]
pub struct InvokeCall {
    /// Bare function name (the binary), e.g. `copier`.
    pub function: String,
    /// The event.
    pub payload: serde_json::Value,
}

/// What to do with an Invoke.
#[derive(Debug, Clone)]
pub enum HookAction {
    /// Send it to `cargo lambda watch`.
    Forward,
    /// Answer 200 with this payload without running the function.
    Respond(serde_json::Value),
    /// Answer as Lambda does for a function error (`errorType`, e.g. `Sandbox.Timedout` for a
    /// function that hit its timeout), without running the function.
    Fail(String),
    /// Run the function, then answer as [`HookAction::Fail`]: the work is done, the answer is
    /// lost (a function that died after its last write).
    ForwardThenFail(String),
}

/// A test's hook on Lambda Invokes.
pub type InvokeHook =
    Arc<dyn Fn(InvokeCall) -> Pin<Box<dyn Future<Output = HookAction> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    moto_port: u16,
    lambda_port: u16,
    client: Client<HttpConnector, Full<Bytes>>,
    hook: Arc<Mutex<Option<InvokeHook>>>,
    invocations: Arc<Mutex<Vec<InvokeCall>>>,
}

/// The router: runs on its own thread and runtime; stopped on drop.
pub struct LambdaRouter {
    port: u16,
    hook: Arc<Mutex<Option<InvokeHook>>>,
    invocations: Arc<Mutex<Vec<InvokeCall>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LambdaRouter {
    /// Binds 127.0.0.1:0 now (so moto can be told the port) and serves on it, forwarding to moto
    /// on `moto_port` and to `cargo lambda watch` on `lambda_port`.
    pub fn start(moto_port: u16, lambda_port: u16) -> LambdaRouter {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("router: cannot bind 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .expect("router: set_nonblocking");
        let port = listener.local_addr().expect("router: local_addr").port();
        let hook: Arc<Mutex<Option<InvokeHook>>> = Arc::new(Mutex::new(None));
        let invocations = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = Shared {
            moto_port,
            lambda_port,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build_http(),
            hook: hook.clone(),
            invocations: invocations.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sfn-router".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("router runtime");
                runtime.block_on(serve(listener, shared, stopped));
            })
            .expect("spawn router thread");
        LambdaRouter {
            port,
            hook,
            invocations,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The port moto's engine must call (`MOTO_PORT`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Installs (or with `None` removes) the Invoke hook.
    pub fn set_hook(&self, hook: Option<InvokeHook>) {
        *self.hook.lock().expect("hook lock") = hook;
    }

    /// Every Invoke seen so far, in arrival order.
    pub fn invocations(&self) -> Vec<InvokeCall> {
        self.invocations.lock().expect("invocations lock").clone()
    }
}

impl Drop for LambdaRouter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: StdListener,
    shared: Shared,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("router: tokio listener");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

/// The function name of a Lambda Invoke request (`POST /2015-03-31/functions/<name>/invocations`
/// signed for the `lambda` service), as a bare name.
fn invoked_function(req: &Request<Incoming>) -> Option<String> {
    if req.method() != hyper::Method::POST {
        return None;
    }
    let signed_for_lambda = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("/lambda/aws4_request"));
    if !signed_for_lambda {
        return None;
    }
    let name = req
        .uri()
        .path()
        .strip_prefix("/2015-03-31/functions/")?
        .strip_suffix("/invocations")?;
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    Some(bare_function_name(&name))
}

/// `arn:aws:lambda:r:a:function:NAME[:qualifier]` or `NAME[:qualifier]` → `NAME`.
pub fn bare_function_name(name: &str) -> String {
    let name = name
        .split_once(":function:")
        .map(|(_, rest)| rest)
        .unwrap_or(name);
    name.split(':').next().unwrap_or(name).to_string()
}

async fn route(shared: Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match invoked_function(&req) {
        Some(function) => invoke(shared, function, req).await,
        None => forward_to_moto(shared, req).await,
    }
}

async fn invoke(shared: Shared, function: String, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("router: {e}")),
    };
    let payload: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let call = InvokeCall {
        function: function.clone(),
        payload,
    };
    shared
        .invocations
        .lock()
        .expect("invocations lock")
        .push(call.clone());
    let hook = shared.hook.lock().expect("hook lock").clone();
    let action = match hook {
        Some(hook) => hook(call).await,
        None => HookAction::Forward,
    };
    let fail_after = match action {
        HookAction::Forward => None,
        HookAction::Respond(value) => {
            let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return response;
        }
        HookAction::Fail(error_type) => return function_error(&error_type),
        HookAction::ForwardThenFail(error_type) => Some(error_type),
    };
    let uri = format!(
        "http://127.0.0.1:{}/2015-03-31/functions/{function}/invocations",
        shared.lambda_port
    );
    let request = Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("invoke request");
    let response = match shared.client.request(request).await {
        Ok(r) => r,
        Err(e) => {
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!(
                    "router: cargo lambda watch on port {} failed: {e}",
                    shared.lambda_port
                ),
            );
        }
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(error_type) = fail_after {
        return function_error(&error_type);
    }
    let handler_error = !status.is_success()
        && serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v.get("errorType").is_some());
    let mut out = Response::new(Full::new(body));
    out.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if handler_error {
        // What Lambda does: 200, with the error in the payload and this header.
        out.headers_mut().insert(
            HeaderName::from_static("x-amz-function-error"),
            HeaderValue::from_static("Unhandled"),
        );
    } else {
        *out.status_mut() = status;
    }
    out
}

/// Lambda's answer for a function error of type `error_type`.
fn function_error(error_type: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "errorType": error_type,
        "errorMessage": format!("{error_type} (injected by the test's hook)"),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        HeaderName::from_static("x-amz-function-error"),
        HeaderValue::from_static("Unhandled"),
    );
    response
}

async fn forward_to_moto(shared: Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("router: {e}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://127.0.0.1:{}{path}", shared.moto_port));
    for (name, value) in &parts.headers {
        // The body is whole now: its length is set again; `Expect: 100-continue` is not passed on.
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "expect" | "connection"
        ) {
            continue;
        }
        request = request.header(name, value);
    }
    let length = body.len();
    let mut request = request.body(Full::new(body)).expect("forwarded request");
    if length > 0 || parts.method == hyper::Method::PUT || parts.method == hyper::Method::POST {
        request.headers_mut().insert(
            hyper::header::CONTENT_LENGTH,
            HeaderValue::from(length as u64),
        );
    }
    let response = match shared.client.request(request).await {
        Ok(r) => r,
        Err(e) => {
            return text_response(
                StatusCode::BAD_GATEWAY,
                format!("router: moto on port {} failed: {e}", shared.moto_port),
            );
        }
    };
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Response::new(Full::new(body));
    *out.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "transfer-encoding" | "connection") {
            continue;
        }
        out.headers_mut().append(name, value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::bare_function_name;

    #[test]
    fn function_names_lose_arn_and_qualifier() {
        assert_eq!(
            bare_function_name("arn:aws:lambda:us-east-1:123456789012:function:copier"),
            "copier"
        );
        assert_eq!(
            bare_function_name("arn:aws:lambda:us-east-1:123456789012:function:copier:$LATEST"),
            "copier"
        );
        assert_eq!(bare_function_name("planner"), "planner");
    }
}
