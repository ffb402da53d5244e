//! `s3quilt mcp --http ADDR`: the same tools over MCP's Streamable HTTP transport (rmcp's
//! `StreamableHttpService` at `/mcp`), so the server can run beside the data (a container, an
//! instance role) instead of on each user's laptop.
//!
//! - Bound to loopback unless told otherwise; any other address needs a bearer token
//!   (`S3QUILT_MCP_TOKEN`), because anyone who reaches the port would otherwise act with the
//!   server's AWS credentials.
//! - With a token, every request must carry `Authorization: Bearer <token>`; others get 401
//!   before rmcp reads them.
//! - On loopback, rmcp's `Host` check (DNS rebinding) stays on; elsewhere the hosts given with
//!   `--http-allowed-host` are checked, or none.
//! - Runs are the server's, not a session's: a client that goes away does not stop its run
//!   (another session may follow it with `package_create_status`). SIGINT/SIGTERM stops
//!   accepting, interrupts the local runs and waits while they roll back or finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::server::S3QuiltServer;
use s3quilt_core::engine::Interrupt;

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// Where and how the HTTP transport listens.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to bind (port 0: a free port).
    pub addr: SocketAddr,
    /// Bearer token every request must carry (none: no check, loopback only).
    pub token: Option<String>,
    /// `Host` values accepted on a non-loopback address (empty: not checked).
    pub allowed_hosts: Vec<String>,
}

/// A configuration the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpConfigError {
    /// A non-loopback address without a token.
    #[error(
        "--http {0}: not a loopback address, so anyone who reaches it would act with this server's AWS credentials; set a bearer token in S3QUILT_MCP_TOKEN (clients send `Authorization: Bearer <token>`), or bind 127.0.0.1"
    )]
    OpenWithoutToken(SocketAddr),
    /// A token too short to resist guessing.
    #[error("S3QUILT_MCP_TOKEN: {0} characters; give at least 16 (e.g. `openssl rand -hex 32`)")]
    ShortToken(usize),
}

impl HttpOptions {
    /// Checks the combination before anything listens.
    pub fn validate(&self) -> Result<(), HttpConfigError> {
        if let Some(token) = &self.token
            && token.chars().count() < 16
        {
            return Err(HttpConfigError::ShortToken(token.chars().count()));
        }
        if !self.addr.ip().is_loopback() && self.token.is_none() {
            return Err(HttpConfigError::OpenWithoutToken(self.addr));
        }
        Ok(())
    }

    fn config(&self, cancel: CancellationToken) -> StreamableHttpServerConfig {
        let config = StreamableHttpServerConfig::default().with_cancellation_token(cancel);
        if self.addr.ip().is_loopback() {
            config
        } else if self.allowed_hosts.is_empty() {
            config.disable_allowed_hosts()
        } else {
            config.with_allowed_hosts(self.allowed_hosts.clone())
        }
    }
}

/// Compares in time independent of where the values differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `request` carries the bearer token (always, without one).
fn authorized<B>(request: &Request<B>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
}

fn plain(status: StatusCode, text: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves `server` over Streamable HTTP until `interrupt` fires (SIGINT/SIGTERM), then stops
/// accepting, lets open requests end (5 s at most) and returns; the caller waits for runs.
/// Prints `listening http://ADDR/mcp` on stdout once it accepts connections.
pub async fn serve(
    server: S3QuiltServer,
    options: HttpOptions,
    interrupt: Interrupt,
) -> anyhow::Result<()> {
    options.validate()?;
    let listener = TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("--http {}: cannot listen there", options.addr))?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let mcp = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        options.config(cancel.child_token()),
    );
    let token: Option<Arc<str>> = options.token.as_deref().map(Arc::from);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (mut mcp, token) = (mcp.clone(), token.clone());
        async move {
            if request.uri().path() != MCP_PATH {
                return Ok::<_, Infallible>(plain(
                    StatusCode::NOT_FOUND,
                    "the MCP endpoint is /mcp\n",
                ));
            }
            if !authorized(&request, token.as_deref()) {
                let mut response = plain(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <the server's S3QUILT_MCP_TOKEN>\n",
                );
                response.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer realm=\"s3quilt\""),
                );
                return Ok(response);
            }
            tower_service::Service::call(&mut mcp, request).await
        }
    });
    println!("listening http://{addr}{MCP_PATH}");
    tracing::info!(
        "s3quilt MCP server {} on http://{addr}{MCP_PATH}{}",
        env!("CARGO_PKG_VERSION"),
        if options.token.is_some() {
            " (bearer token required)"
        } else {
            ""
        }
    );
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let conn = graceful.watch(
                        http.serve_connection_with_upgrades(TokioIo::new(socket), service.clone())
                            .into_owned(),
                    );
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "MCP HTTP connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "could not accept a connection"),
            },
            () = interrupt.fired() => break,
        }
    }
    tracing::info!("interrupted: closing MCP sessions");
    cancel.cancel();
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("MCP HTTP connections still open after 5 s; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(addr: &str, token: Option<&str>) -> HttpOptions {
        HttpOptions {
            addr: addr.parse().unwrap(),
            token: token.map(str::to_string),
            allowed_hosts: Vec::new(),
        }
    }

    #[test]
    fn an_open_address_needs_a_long_enough_token() {
        assert_eq!(options("127.0.0.1:0", None).validate(), Ok(()));
        assert_eq!(options("[::1]:8080", None).validate(), Ok(()));
        let open = options("0.0.0.0:8080", None).validate().unwrap_err();
        assert!(open.to_string().contains("S3QUILT_MCP_TOKEN"), "{open}");
        assert_eq!(
            options("0.0.0.0:8080", Some("0123456789abcdef")).validate(),
            Ok(())
        );
        assert_eq!(
            options("127.0.0.1:0", Some("short")).validate(),
            Err(HttpConfigError::ShortToken(5))
        );
    }

    #[test]
    fn requests_must_carry_the_token() {
        let request = |header: Option<&str>| {
            let mut builder = Request::builder().uri("/mcp");
            if let Some(h) = header {
                builder = builder.header("authorization", h);
            }
            builder.body(()).unwrap()
        };
        let token = Some("0123456789abcdef");
        assert!(authorized(&request(None), None));
        assert!(!authorized(&request(None), token));
        assert!(!authorized(
            &request(Some("Bearer 0123456789abcdeX")),
            token
        ));
        assert!(!authorized(&request(Some("Basic 0123456789abcdef")), token));
        assert!(!authorized(&request(Some("Bearer 0123456789abcde")), token));
        assert!(authorized(&request(Some("Bearer 0123456789abcdef")), token));
    }
}
