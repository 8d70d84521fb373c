//! Where the gRPC API listens: the Unix socket (mode 0600, owned by root, never reachable by
//! another user even for a moment) and the optional TCP listener, which must use TLS with client
//! certificates (mutual TLS) unless it listens on a loopback address. Both serve the same
//! router: lbd's services, `grpc.health.v1.Health` and server reflection (v1 and v1alpha).

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use super::authority::AnyAuthority;
use super::{
    backends::BackendsService, firewall::FirewallService, ratelimit::RateLimitsService,
    stats::StatsService, vips::VipsService,
};
use crate::controller::Controller;
use xdplb_proto::pb::{
    backends_server::BackendsServer, firewall_server::FirewallServer,
    rate_limits_server::RateLimitsServer, stats_server::StatsServer, vips_server::VipsServer,
};

/// A client that connects but does not finish the TLS handshake is dropped after this long.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every gRPC service of lbd on `builder` (plain, or with TLS), sharing one controller, with
/// `health` and server reflection. `WatchStats` streams end when `stop` turns true, so a
/// graceful shutdown does not wait for them.
pub fn router(
    mut builder: Server,
    ctl: &Controller,
    stop: tokio::sync::watch::Receiver<bool>,
    health: &ApiHealth,
) -> Router {
    // The descriptor sets are built in (proto/build.rs, tonic-health's, tonic-reflection's
    // own): a unit test builds both services.
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the built-in descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the built-in descriptor sets are valid");
    builder
        .add_service(health.server.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(VipsServer::new(VipsService::new(ctl.clone())))
        .add_service(BackendsServer::new(
            BackendsService::new(ctl.clone()).with_shutdown(stop.clone()),
        ))
        .add_service(StatsServer::new(
            StatsService::new(ctl.clone()).with_shutdown(stop),
        ))
        .add_service(FirewallServer::new(FirewallService::new(ctl.clone())))
        .add_service(RateLimitsServer::new(RateLimitsService::new(ctl.clone())))
        .add_service(xdplb_proto::pb::explain_server::ExplainServer::new(
            super::explain::ExplainService::new(ctl.clone()),
        ))
        .add_service(super::apply::ApplyService::server(ctl.clone()))
}

/// Server reflection of lbd's services (`proto/*.proto`), of `grpc.health.v1.Health` and of
/// itself, so that grpcurl and similar clients work without the .proto files.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(xdplb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// `grpc.health.v1.Health` of lbd (tonic-health), for Kubernetes gRPC probes and load
/// balancers in front of the API: the server as a whole (`""`) and each of lbd's services
/// (`xdplb.v1.Vips`, ...) are SERVING while the data plane is attached and the API serves,
/// NOT_SERVING otherwise. Any other name is NOT_FOUND. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ApiHealth {
    reporter: HealthReporter,
    server: tonic_health::pb::health_server::HealthServer<HealthService>,
    names: std::sync::Arc<Vec<String>>,
}

impl ApiHealth {
    /// Everything NOT_SERVING: lbd marks it SERVING once the data plane is attached.
    pub async fn new() -> ApiHealth {
        let reporter = HealthReporter::new();
        let server = tonic_health::pb::health_server::HealthServer::new(
            HealthService::from_health_reporter(reporter.clone()),
        );
        let mut names = vec![String::new()];
        names.extend(xdplb_proto::service_names());
        let health = ApiHealth {
            reporter,
            server,
            names: std::sync::Arc::new(names),
        };
        health.set_serving(false).await;
        health
    }

    /// The names answered: `""` (the whole server) and each service of `proto/*.proto`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// SERVING (the data plane is attached) or NOT_SERVING, for every name.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Shutdown: NOT_SERVING for every name (what `Watch` streams report last), then the names
    /// are forgotten, which ends the `Watch` streams so that a graceful shutdown does not wait
    /// for them.
    pub async fn shut_down(&mut self) {
        self.set_serving(false).await;
        for name in self.names.iter() {
            self.reporter.clear_service_status(name).await;
        }
    }
}

/// The connections accepted on the API's Unix socket, each taking any `:authority` (see
/// [`super::authority`]).
pub fn unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<AnyAuthority<UnixStream>>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|c| c.map(AnyAuthority::new))
}

/// Adds the `Trace` service (packet tracing through `tracer`, the one trace owner lbd makes at
/// start) to a router of [`router`]; its streams end with `Unavailable` once `stop` turns true.
pub fn with_trace(
    router: Router,
    ctl: &Controller,
    tracer: std::sync::Arc<crate::trace::Tracer>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Router {
    router.add_service(xdplb_proto::pb::trace_server::TraceServer::new(
        super::trace::TraceService::new(ctl.clone(), tracer, stop),
    ))
}

/// Adds the `Checks` service (`lbctl backend check`: probes of a backend from lbd's namespace)
/// to a router of [`router`].
pub fn with_checks(
    router: Router,
    ctl: &Controller,
    settings: super::check::CheckSettings,
) -> Router {
    router.add_service(xdplb_proto::pb::checks_server::ChecksServer::new(
        super::check::ChecksService::new(ctl.clone(), settings),
    ))
}

/// Why the API cannot listen where it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "refusing to serve the gRPC API on {addr} without TLS client authentication: anyone who \
         can reach it could reconfigure the load balancer; give --tls-cert, --tls-key and \
         --tls-client-ca (mutual TLS), or listen on a loopback address such as 127.0.0.1"
    )]
    InsecureTcp { addr: SocketAddr },
    #[error(
        "TLS needs --tls-cert, --tls-key and --tls-client-ca together (missing {missing}); \
         clients must present a certificate signed by the client CA"
    )]
    IncompleteTls { missing: String },
    #[error("TLS is configured but there is no TCP listener (--grpc-listen): the Unix socket never uses TLS")]
    TlsWithoutTcp,
    #[error("reading the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("invalid TLS configuration (--tls-cert {cert}, --tls-key {key}, --tls-client-ca {ca}): {message}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        message: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another lbd already serves {0}; stop it first (or give this one another --socket)")]
    InUse(PathBuf),
}

/// The PEM files of the TCP listener's TLS: the server's certificate chain and key, and the CA
/// that client certificates must be signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) client_ca: PathBuf,
}

impl TlsFiles {
    /// All three paths or none; anything in between is refused (TLS without client
    /// authentication is not offered).
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, ListenError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-client-ca"),
                ]
                .into_iter()
                .filter_map(|(m, name)| m.then_some(name))
                .collect();
                Err(ListenError::IncompleteTls {
                    missing: missing.join(", "),
                })
            }
        }
    }

    /// Reads the files and checks that rustls accepts them (certificate and key match, the CA
    /// parses), so that a bad file stops lbd at start, before the data plane is touched.
    pub fn load(&self) -> Result<ServerTlsConfig, ListenError> {
        let cert = read_pem("certificate (--tls-cert)", &self.cert, "CERTIFICATE")?;
        let key = read_pem("private key (--tls-key)", &self.key, "PRIVATE KEY")?;
        let ca = read_pem(
            "client CA (--tls-client-ca)",
            &self.client_ca,
            "CERTIFICATE",
        )?;
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        // Building the acceptor parses everything; the builder is thrown away.
        Server::builder()
            .tls_config(config.clone())
            .map_err(|e| ListenError::Tls {
                cert: self.cert.clone(),
                key: self.key.clone(),
                ca: self.client_ca.clone(),
                message: error_chain(&e),
            })?;
        Ok(config)
    }
}

fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, ListenError> {
    let bytes = std::fs::read(path).map_err(|source| ListenError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    // "-----BEGIN PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----".
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(ListenError::NotPem {
            what,
            path: path.to_owned(),
            expected: label,
        });
    }
    Ok(bytes)
}

/// The effective user id of lbd.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !parts.iter().any(|p| p == &s_text) {
            parts.push(s_text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Whether the TCP listener may start: on a loopback address always, elsewhere only with TLS
/// client authentication (`tls` is the loaded configuration, which always requires a client
/// certificate).
pub fn check_tcp(addr: SocketAddr, tls: Option<&ServerTlsConfig>) -> Result<(), ListenError> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(ListenError::InsecureTcp { addr });
    }
    Ok(())
}

/// Binds the API's Unix socket at `path` with mode 0600, owned by root when lbd runs as root.
///
/// The socket is bound inside a fresh directory of mode 0700 next to `path`, given its mode
/// there, and renamed into place: at no moment can another user connect, whatever the umask
/// (binding in place and chmod-ing afterwards would leave a window; changing the process umask
/// would race with other threads). A socket left by a dead lbd is replaced; one that still
/// answers is not.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| ListenError::Io {
            what,
            path: p,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io("creating the socket's directory", &dir))?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ListenError::InUse(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::warn!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the stale socket", path)(e)),
    }
    // Short, so that the staging path stays within sun_path's 108 bytes when `path` does.
    let staging = dir.join(format!(".lbd{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io("creating a private directory", &staging))?;
    let bound = (|| {
        let tmp = staging.join("s");
        let listener = UnixListener::bind(&tmp).map_err(io("binding", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod 0600", &tmp))?;
        if euid() == 0 {
            std::os::unix::fs::chown(&tmp, Some(0), Some(0)).map_err(io("chown root", &tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io("moving the socket into place at", path))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn tcp_needs_tls_off_loopback() {
        for ok in ["127.0.0.1:50051", "127.9.9.9:1", "[::1]:50051"] {
            check_tcp(ok.parse().expect("addr"), None).expect("loopback without TLS");
        }
        for bad in ["0.0.0.0:50051", "10.0.0.1:50051", "[::]:50051"] {
            let e = check_tcp(bad.parse().expect("addr"), None).expect_err("refused");
            assert!(
                e.to_string().starts_with(&format!(
                    "refusing to serve the gRPC API on {bad} without TLS client authentication"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn tls_flags_come_together() {
        assert_eq!(TlsFiles::from_parts(None, None, None).expect("none"), None);
        let e = TlsFiles::from_parts(Some("c".into()), None, Some("ca".into()))
            .expect_err("key missing");
        assert!(e.to_string().contains("(missing --tls-key)"), "{e}");
        let e = TlsFiles::from_parts(Some("c".into()), None, None).expect_err("two missing");
        assert!(
            e.to_string()
                .contains("(missing --tls-key, --tls-client-ca)"),
            "{e}"
        );
    }

    #[test]
    fn garbage_pem_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            client_ca: junk.clone(),
        };
        let e = files.load().expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "certificate (--tls-cert) {} holds no PEM CERTIFICATE",
                junk.display()
            )
        );
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..files
        };
        assert!(missing
            .load()
            .expect_err("missing")
            .to_string()
            .starts_with("reading the certificate (--tls-cert)"));
    }

    #[tokio::test]
    async fn health_starts_not_serving_and_reflection_builds() {
        use tonic_health::pb::health_server::Health as _;
        use tonic_health::pb::HealthCheckRequest;
        let mut health = ApiHealth::new().await;
        let names = health.names().to_vec();
        assert_eq!(names[0], "");
        assert!(names.iter().any(|n| n == "xdplb.v1.Backends"), "{names:?}");
        let service = HealthService::from_health_reporter(health.reporter.clone());
        let check = |name: &str| {
            let req = tonic::Request::new(HealthCheckRequest {
                service: name.to_string(),
            });
            let service = &service;
            async move { service.check(req).await.map(|r| r.into_inner().status) }
        };
        use tonic_health::pb::health_check_response::ServingStatus as S;
        for name in &names {
            assert_eq!(
                check(name).await.expect("known"),
                S::NotServing as i32,
                "{name:?}"
            );
        }
        health.set_serving(true).await;
        for name in &names {
            assert_eq!(
                check(name).await.expect("known"),
                S::Serving as i32,
                "{name:?}"
            );
        }
        assert_eq!(
            check("xdplb.v1.Nope").await.expect_err("unknown").code(),
            tonic::Code::NotFound
        );
        health.shut_down().await;
        assert_eq!(
            check("").await.expect_err("forgotten").code(),
            tonic::Code::NotFound
        );
        reflection().build_v1().expect("v1");
        reflection().build_v1alpha().expect("v1alpha");
    }

    /// The bytes grpcio sent for two Health/Check calls over `unix:` (the capture of
    /// `authority::tests`), written to a real tonic server on a Unix socket: h2 resets both
    /// streams with PROTOCOL_ERROR over a plain socket, and answers both (SERVING) over
    /// [`unix_incoming`].
    #[tokio::test]
    async fn h2_takes_grpcios_unix_authority_only_through_unix_incoming() {
        use super::super::authority::tests::{capture, decode, frames};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut results = Vec::new();
        for rewrite in [false, true] {
            let socket = dir.path().join(format!("h2-{rewrite}.sock"));
            let listener = bind_unix(&socket).expect("bind");
            let health = ApiHealth::new().await;
            health.set_serving(true).await;
            let router = Server::builder().add_service(health.server.clone());
            let server = if rewrite {
                tokio::spawn(async move {
                    let _ = router.serve_with_incoming(unix_incoming(listener)).await;
                })
            } else {
                tokio::spawn(async move {
                    let _ = router
                        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(
                            listener,
                        ))
                        .await;
                })
            };
            let mut conn = UnixStream::connect(&socket).await.expect("connect");
            conn.write_all(&capture()).await.expect("write");
            // Read until both streams have ended (END_STREAM or RST_STREAM), for at most 10 s.
            let mut got = Vec::new();
            let ended = |got: &[u8]| {
                let fs = frames(got, false);
                [1u32, 3].iter().all(|s| {
                    fs.iter().any(|f| {
                        f.stream == *s && (f.kind == 0x3 || (f.flags & 0x1 != 0 && f.kind != 0x4))
                    })
                })
            };
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                let mut buf = [0u8; 4096];
                while !ended(&got) {
                    let n = conn.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the server closed the connection");
                    got.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            assert!(
                read.is_ok(),
                "no answer to both calls (rewrite: {rewrite}): {got:?}"
            );
            server.abort();
            results.push(frames(&got, false));
        }
        // A plain socket: RST_STREAM(PROTOCOL_ERROR = 1) for both calls, nothing else for them.
        let plain = &results[0];
        for s in [1u32, 3] {
            let mine: Vec<_> = plain.iter().filter(|f| f.stream == s).collect();
            assert!(
                mine.iter()
                    .all(|f| f.kind == 0x3 && f.payload == [0, 0, 0, 1]),
                "stream {s}: {mine:?}"
            );
            assert!(!mine.is_empty());
        }
        // Through unix_incoming: 200, a SERVING response, grpc-status 0, for both.
        let (lists, others) = decode(&results[1]);
        for s in [1u32, 3] {
            let fields: Vec<(String, String)> = lists
                .iter()
                .filter(|(st, _)| *st == s)
                .flat_map(|(_, f)| f.clone())
                .collect();
            let has = |n: &str, v: &str| fields.iter().any(|(a, b)| a == n && b == v);
            assert!(
                has(":status", "200") && has("grpc-status", "0"),
                "stream {s}: {fields:?}"
            );
            // HealthCheckResponse { status: SERVING (1) }, length-prefixed.
            assert!(
                others
                    .iter()
                    .any(|f| f.stream == s && f.kind == 0x0 && f.payload == [0, 0, 0, 0, 2, 8, 1]),
                "stream {s}: {others:?}"
            );
        }
    }

    #[tokio::test]
    async fn unix_socket_is_private_and_replaces_only_dead_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A permissive directory, as /run is.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = dir.path().join("sub/lbd.sock");
        let listener = bind_unix(&path).expect("bind");
        let meta = std::fs::metadata(&path).expect("stat socket");
        assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
        assert_eq!(meta.uid(), euid(), "owner");
        if euid() == 0 {
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "owned by root");
        }
        // Nothing left behind but the socket.
        let names: Vec<String> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["lbd.sock".to_string()]);
        // A live socket is not taken over.
        let e = bind_unix(&path).expect_err("in use");
        assert!(matches!(e, ListenError::InUse(_)), "{e}");
        // A dead one is.
        drop(listener);
        let _again = bind_unix(&path).expect("stale socket replaced");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").mode() & 0o7777,
            0o600
        );
    }
}
