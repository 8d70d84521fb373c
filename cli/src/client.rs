//! Connection to lbd (Unix socket, TCP, or TCP with mutual TLS) and the one-line errors for failed connects and
//! failed RPCs. Everything else talks to lbd through the [`Lbd`] handle built here.

use std::{error::Error as StdError, fmt, future::Future, io, path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::highargs::{Target, TlsFiles};
use crate::pb::{
    backends_client::BackendsClient, firewall_client::FirewallClient,
    rate_limits_client::RateLimitsClient, stats_client::StatsClient, vips_client::VipsClient,
};

/// Typed clients for every lbd service, sharing one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Lbd {
    pub vips: VipsClient<Channel>,
    pub backends: BackendsClient<Channel>,
    pub stats: StatsClient<Channel>,
    pub firewall: FirewallClient<Channel>,
    pub ratelimits: RateLimitsClient<Channel>,
    pub trace: crate::pb::trace_client::TraceClient<Channel>,
    pub explain: crate::pb::explain_client::ExplainClient<Channel>,
    pub checks: crate::pb::checks_client::ChecksClient<Channel>,
    pub apply: crate::pb::apply_client::ApplyClient<Channel>,
}

impl Lbd {
    /// Connect eagerly, so an absent lbd is reported before any request is built.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Self, ConnectError> {
        let fail = |reason: String, kind: Option<io::ErrorKind>| ConnectError {
            target: target.clone(),
            reason,
            kind,
        };
        let connecting = async {
            Ok::<_, ConnectError>(match target {
                Target::Unix(path) => {
                    // The URI is a placeholder: the connector ignores it and dials the socket.
                    let endpoint = Endpoint::from_static("http://[::]:50051");
                    let path: PathBuf = path.clone();
                    configure(endpoint, timeout)
                        .connect_with_connector(tower::service_fn(move |_| {
                            let path = path.clone();
                            async move {
                                let stream = tokio::net::UnixStream::connect(path).await?;
                                Ok::<_, io::Error>(TokioIo::new(stream))
                            }
                        }))
                        .await
                }
                Target::Tcp(url) => match Endpoint::from_shared(url.clone()) {
                    Ok(endpoint) => configure(endpoint, timeout).connect().await,
                    Err(e) => Err(e),
                },
                Target::Tls { url, tls } => {
                    let config = client_tls(tls).map_err(|reason| fail(reason, None))?;
                    match Endpoint::from_shared(url.clone()).and_then(|e| e.tls_config(config)) {
                        Ok(endpoint) => configure(endpoint, timeout).connect().await,
                        Err(e) => Err(e),
                    }
                }
            })
        };
        let channel = match tokio::time::timeout(timeout, connecting).await {
            Err(_elapsed) => {
                return Err(fail(
                    format!("timed out after {timeout:?}"),
                    Some(io::ErrorKind::TimedOut),
                ))
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Err(e))) => {
                let (reason, kind) = describe_transport_error(&e);
                return Err(fail(reason, kind));
            }
            Ok(Ok(Ok(channel))) => channel,
        };
        if let Target::Tls { tls, .. } = target {
            // With TLS 1.3 the server checks the client's certificate after the client has
            // finished its side of the handshake: a refusal only shows on the first read. One
            // cheap call now turns it into a connect error that says so, rather than a
            // "cancelled" on whatever request comes first.
            let mut vips = VipsClient::new(channel.clone());
            let probe = vips.list_vips(crate::pb::ListVipsRequest {});
            if let Ok(Err(status)) = tokio::time::timeout(timeout, probe).await {
                if !matches!(
                    status.code(),
                    tonic::Code::Ok | tonic::Code::InvalidArgument | tonic::Code::NotFound
                ) {
                    let mut reason = match std::error::Error::source(&status) {
                        Some(src) => chain(src),
                        None => status.message().to_string(),
                    };
                    reason.push_str(if tls.identity.is_some() {
                        "; lbd refused the TLS session: is --tls-cert signed by lbd's --tls-client-ca?"
                    } else {
                        "; lbd refused the TLS session: it requires a client certificate (--tls-cert and --tls-key)"
                    });
                    return Err(fail(reason, Some(io::ErrorKind::PermissionDenied)));
                }
            }
        }
        Ok(Lbd {
            vips: VipsClient::new(channel.clone()),
            backends: BackendsClient::new(channel.clone()),
            stats: StatsClient::new(channel.clone()),
            firewall: FirewallClient::new(channel.clone()),
            ratelimits: RateLimitsClient::new(channel.clone()),
            explain: crate::pb::explain_client::ExplainClient::new(channel.clone()),
            checks: crate::pb::checks_client::ChecksClient::new(channel.clone()),
            apply: crate::pb::apply_client::ApplyClient::new(channel.clone())
                .max_encoding_message_size(crate::apply::MAX_FILE_BYTES),
            trace: crate::pb::trace_client::TraceClient::new(channel),
        })
    }
}

/// The TLS settings of a connection: lbd's CA, and the client certificate lbd asks for.
fn client_tls(files: &TlsFiles) -> Result<ClientTlsConfig, String> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            format!(
                "reading the {what} {}: {}",
                p.display(),
                strip_os_error(&e.to_string())
            )
        })
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("CA (--tls-ca)", &files.ca)?));
    if let Some((cert, key)) = &files.identity {
        config = config.identity(Identity::from_pem(
            read("certificate (--tls-cert)", cert)?,
            read("key (--tls-key)", key)?,
        ));
    }
    Ok(config)
}

fn configure(endpoint: Endpoint, timeout: Duration) -> Endpoint {
    // Request deadlines are applied per call by [`call`], with a clearer message than
    // the transport's own "cancelled: Timeout expired".
    endpoint.connect_timeout(timeout)
}

/// Await one RPC for at most `timeout`; the reply body or a one-line [`RpcError`].
pub async fn call<T>(
    timeout: Duration,
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(timeout, rpc).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(RpcError(status)),
        Err(_elapsed) => Err(RpcError(tonic::Status::deadline_exceeded(format!(
            "no reply from lbd within {timeout:?}"
        )))),
    }
}

/// The innermost io::Error if there is one (that is what users need to see), else the chain.
fn describe_transport_error(e: &tonic::transport::Error) -> (String, Option<io::ErrorKind>) {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return (strip_os_error(&io.to_string()), Some(io.kind()));
        }
        cur = err.source();
    }
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    (parts.join(": "), None)
}

/// An error and its sources, deduplicated, joined with ": ".
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = strip_os_error(&err.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// "No such file or directory (os error 2)" -> "No such file or directory".
fn strip_os_error(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s.to_owned(),
    }
}

/// lbd could not be reached at all.
#[derive(Debug)]
pub struct ConnectError {
    pub target: Target,
    pub reason: String,
    pub kind: Option<io::ErrorKind>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot connect to lbd at {}: {}",
            self.target, self.reason
        )?;
        match (self.kind, &self.target) {
            (Some(io::ErrorKind::PermissionDenied), Target::Tls { .. }) => Ok(()),
            (Some(io::ErrorKind::PermissionDenied), _) => {
                f.write_str(" (run as root: the socket is 0600, owned by root)")
            }
            (_, Target::Tls { .. }) if self.reason.contains("certificate") => Ok(()),
            _ => f.write_str(" (is lbd running?)"),
        }
    }
}

impl StdError for ConnectError {}

/// A failed RPC, shown as `<code>: <message>` (just `<message>` for InvalidArgument, whose
/// message already names the offending field).
#[derive(Debug)]
pub struct RpcError(pub tonic::Status);

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        RpcError(status)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0.code();
        // One line, whatever the server put in the message.
        let msg = self
            .0
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        match (code, msg.is_empty()) {
            (tonic::Code::InvalidArgument, false) => f.write_str(&msg),
            (_, true) => f.write_str(&code_name(code)),
            (_, false) => write!(f, "{}: {msg}", code_name(code)),
        }
    }
}

impl StdError for RpcError {}

/// `NotFound` -> "not found", `DeadlineExceeded` -> "deadline exceeded".
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push(' ');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let nf = tonic::Status::not_found("vip 10.0.0.1:80/tcp does not exist");
        assert_eq!(
            RpcError(nf).to_string(),
            "not found: vip 10.0.0.1:80/tcp does not exist"
        );
        let ia = tonic::Status::invalid_argument("backend.port: must be 1..65535");
        assert_eq!(RpcError(ia).to_string(), "backend.port: must be 1..65535");
        let multi = tonic::Status::internal("map update\nfailed");
        assert_eq!(RpcError(multi).to_string(), "internal: map update failed");
        let empty = tonic::Status::new(tonic::Code::DeadlineExceeded, "");
        assert_eq!(RpcError(empty).to_string(), "deadline exceeded");
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(strip_os_error(&e.to_string()), "No such file or directory");
    }

    #[tokio::test]
    async fn missing_socket_is_one_clear_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.sock");
        let target = Target::Unix(path.clone());
        let err = Lbd::connect(&target, Duration::from_secs(5))
            .await
            .expect_err("nothing listens there");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to lbd at {}: No such file or directory (is lbd running?)",
                path.display()
            )
        );
    }
}
