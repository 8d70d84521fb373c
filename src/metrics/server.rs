//! The HTTP/1.1 endpoint: answers `GET /metrics` (404 elsewhere, 405 for other methods) in the
//! Prometheus text format or OpenMetrics when asked, at most 16 connections at once, and drains
//! scrapes in progress at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::collector::registry;
use super::render::render;
use crate::controller::Controller;

/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for scrapes in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What can go wrong serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The running `/metrics` endpoint. [`MetricsServer::shutdown`] stops it and waits (briefly) for
/// scrapes in progress, which hold a [`Controller`] handle.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` there.
    pub(crate) async fn start(addr: SocketAddr, registry: Registry) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::new(registry), stopped));
        Ok(Self { addr, stop, task })
    }

    /// lbd's endpoint: serves [`registry`] on `ctl` at `addr`, or nothing when `addr` is `None`.
    pub async fn start_for(
        ctl: &Controller,
        addr: Option<SocketAddr>,
    ) -> Result<Option<Self>, MetricsError> {
        let Some(addr) = addr else {
            tracing::info!("metrics endpoint disabled");
            return Ok(None);
        };
        let server = Self::start(addr, registry(ctl.clone())).await?;
        tracing::info!(addr = %server.local_addr(), "metrics at http://{}/metrics", server.local_addr());
        Ok(Some(server))
    }

    /// The address actually bound (port 0 picks one).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits up to 5 s for scrapes in progress, then drops the rest.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "metrics server task");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            tokio::select! {
                _ = conns.join_next() => continue,
                _ = stopped(&mut stop) => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let registry = registry.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| handle(req, registry.clone()));
                        let served = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "metrics connection");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("metrics: scrapes still running at shutdown were cut off");
    }
    conns.shutdown().await;
}

/// Resolves once shutdown is asked for (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether the client asked for OpenMetrics (Prometheus does, with a fallback to 0.0.4).
fn wants_openmetrics(accept: Option<&HeaderValue>) -> bool {
    accept
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"))
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text_response(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ));
    }
    if req.method() != Method::GET {
        let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    let openmetrics = wants_openmetrics(req.headers().get(ACCEPT));
    let rendered = tokio::task::spawn_blocking(move || render(&registry, openmetrics)).await;
    Ok(match rendered {
        Ok(Ok(text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            let ct = if openmetrics {
                OPENMETRICS_TEXT
            } else {
                PROMETHEUS_TEXT
            };
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!("metrics: encoding failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_negotiation() {
        let prom = HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert!(wants_openmetrics(Some(&prom)));
        assert!(!wants_openmetrics(Some(&HeaderValue::from_static("*/*"))));
        assert!(!wants_openmetrics(None));
    }
}
