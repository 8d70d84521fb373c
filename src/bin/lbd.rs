//! `lbd`, the xdplb daemon: loads and attaches the XDP program, applies the configured state, and
//! serves the gRPC API until SIGTERM or SIGINT; with --detach-on-exit it then detaches, removes
//! its pins and the VIP addresses' blackhole routes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};

use xdplb::api::listen::{self, ListenError, TlsFiles};
use xdplb::config::{self, Config};
use xdplb::controller::Controller;
use xdplb::dataplane::{Dataplane, LoadOptions};
use xdplb::hostports;
use xdplb::metrics::server::MetricsServer;
use xdplb::persist::StateStore;
use xdplb::reconcile::Reconciler;
use xdplb::routes::VipRoutes;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// lbd: the xdplb XDP load-balancer daemon.
#[derive(Debug, Parser)]
#[command(
    name = "lbd",
    version,
    about = "The xdplb daemon: attaches the XDP load balancer and serves its gRPC API",
    long_about = "The xdplb daemon: loads the XDP program, attaches it to the configured \
                  interfaces, applies the saved state (or the configuration's [[vip]] tables on a \
                  first start) and serves the gRPC API that lbctl uses. SIGTERM or SIGINT stops \
                  it; the program stays attached and the maps pinned for the next lbd to adopt \
                  (hot restart and upgrade without losing flows) unless --detach-on-exit is given."
)]
struct Args {
    /// Configuration file (TOML; see examples/lbd.toml).
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        required_unless_present = "man"
    )]
    config: Option<PathBuf>,
    /// Unix socket of the gRPC API (overrides [api] socket).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve gRPC over TCP on this address (overrides [api] grpc_listen). Without TLS only a
    /// loopback address is accepted.
    #[arg(long, value_name = "ADDR:PORT")]
    grpc_listen: Option<std::net::SocketAddr>,
    /// TLS for the TCP listener: PEM certificate chain of lbd (overrides [api] tls_cert). Needs
    /// --tls-key and --tls-client-ca too.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (overrides [api] tls_key).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate that clients' certificates must be signed by; clients without one are
    /// refused during the handshake (overrides [api] tls_client_ca).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, or "none" for no endpoint
    /// (overrides [metrics] listen, whose default is 127.0.0.1:9469).
    #[arg(long, value_name = "ADDR:PORT|none")]
    metrics_listen: Option<String>,
    /// Directory of the state file (everything set through the API, saved before each change is
    /// acknowledged and restored at start) and of `reserved-ports` (the SNAT ports lbd added to
    /// net.ipv4.ip_local_reserved_ports, see [nat] reserve_ports).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/xdplb")]
    state_dir: PathBuf,
    /// On exit, detach the program and remove every pin (tracked flows are lost) and the VIP
    /// addresses' blackhole routes. Without it, the program stays attached, the maps stay pinned
    /// and the routes stay, for the next lbd to adopt.
    #[arg(long)]
    detach_on_exit: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Print lbd's man page (roff, generated from these options) and exit; for packagers.
    #[arg(long, hide = true, exclusive = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return print_man();
    }
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lbd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: Args) -> Result<()> {
    let Some(config_path) = &args.config else {
        bail!("--config is required");
    };
    let config = Config::load(config_path).context("invalid configuration")?;
    // Where the API listens is checked (and the TLS files read) before the data plane is touched.
    let grpc_listen = args.grpc_listen.or(config.api.grpc_listen);
    let tls = TlsFiles::from_parts(
        args.tls_cert.clone().or(config.api.tls_cert.clone()),
        args.tls_key.clone().or(config.api.tls_key.clone()),
        args.tls_client_ca
            .clone()
            .or(config.api.tls_client_ca.clone()),
    )?;
    let tcp = match (grpc_listen, tls) {
        (None, None) => None,
        (None, Some(_)) => return Err(ListenError::TlsWithoutTcp.into()),
        (Some(addr), files) => {
            let tls = files.map(|f| f.load()).transpose()?;
            listen::check_tcp(addr, tls.as_ref())?;
            Some((addr, tls))
        }
    };
    let metrics_listen = match &args.metrics_listen {
        Some(s) => config::parse_metrics_listen(s).context("--metrics-listen")?,
        None => config
            .metrics
            .listen_addr()
            .context("invalid configuration")?,
    };
    // The state file, when there is one, wins over the config's [[vip]] tables: it holds every
    // change made through the API since the config seeded the first start.
    let store = StateStore::new(&args.state_dir);
    let saved = store.load().context("cannot start from the state file")?;
    let state = match &saved {
        Some(file) => {
            if !config.vips.is_empty() {
                tracing::warn!(
                    state_file = %store.path().display(),
                    "the state file wins: the [[vip]] tables of the config only seed a fresh state (move the state file away to start over from the config)"
                );
            }
            tracing::info!(state_file = %store.path().display(), vips = file.state.vips.len(), "restoring the saved state");
            file.state.clone()
        }
        None => config
            .initial_state()
            .and_then(|s| xdplb::reconcile::check_limits(&s).map(|()| s))
            .context("invalid [[vip]] in the configuration")?,
    };
    for (key, vip) in &state.vips {
        if vip.mode == xdplb_model::state::Mode::L2dsr {
            for be in vip.backends.keys() {
                if let Err(m) = xdplb::neighbor::check_on_link(*be.ip()).await {
                    bail!("vip {key}, backend {be}: {m}");
                }
            }
        }
    }

    // The SNAT range and the ports this host picks for its own connections are made disjoint
    // (or the overlap refused) before the data plane is touched.
    let ports = hostports::reserve(&config.nat, &args.state_dir)?;
    let dp = Dataplane::load(&LoadOptions {
        conntrack_size: config.tables.conntrack_size,
        embryonic_size: config.tables.embryonic_size,
        pin_dir: Some(config.dataplane.pin_path.clone()),
        firewall_capacity: config.firewall.capacity,
        firewall_scope: config.firewall.scope,
        ratelimit_clients: config.ratelimit.clients,
    })
    .context("loading the XDP program");
    let dp = match dp {
        Ok(dp) => dp,
        Err(e) => {
            settle_ports(ports, args.detach_on_exit);
            return Err(e);
        }
    };
    // Flows of an lbd with the v1 flow tables: copied while its program still runs...
    let v1 = dp
        .migrate_v1_flows()
        .context("copying the flows of the v1 flow tables")?;
    if let Some(m) = v1 {
        m.log("copied the flows of the previous release's flow tables (v1) into the v2 tables");
    }
    let adopted = dp.adopted();
    let mut reconciler = Reconciler::new(dp, config.tables.maglev_size);
    reconciler
        .set_runtime_config(&config.runtime())
        .context("writing the run-time configuration")?;
    match (&saved, adopted) {
        (Some(file), true) => reconciler.adopt_ids(&file.ids),
        (None, true) => {
            tracing::warn!("pinned maps found but no state file: starting from the configuration")
        }
        _ => {}
    }
    let attached = attach_all(reconciler.dataplane_mut(), &config).and_then(|()| {
        reconciler
            .dataplane()
            .detach_stale_links()
            .context("detaching stale links")
    });
    if let Err(e) = attached {
        let _ = reconciler.into_dataplane().shutdown(args.detach_on_exit);
        settle_ports(ports, args.detach_on_exit);
        return Err(e);
    }
    // Labs on veth: XDP_TX/XDP_REDIRECT into a veth whose peer has no XDP program stall.
    xdplb::check::warn_veth_peers(&config.dataplane.interfaces).await;
    if v1.is_some() {
        // ...and again now that it has been replaced (the flows it made meanwhile), then the
        // v1 pins go.
        let dp = reconciler.dataplane();
        let again = dp
            .migrate_v1_flows()
            .and_then(|m| dp.retire_v1_tables().map(|()| m))
            .context("finishing the copy of the v1 flow tables")?;
        if let Some(m) = again {
            m.log("flows of the v1 tables copied again after the program swap; v1 pins removed");
        }
    }
    // The VIP addresses' blackhole routes are in place before the VIPs go live (kept from
    // the previous lbd, whose program was attached until now, or added).
    let mut routes = VipRoutes::start(config.dataplane.blackhole_routes, &state).await;
    // The one owner of the trace switch (`lbctl trace`), made while lbd still holds the data
    // plane; the trace service gets it, never a map writer.
    let tracer = xdplb::trace::Tracer::new(
        reconciler
            .dataplane_mut()
            .trace_tap()
            .context("opening the trace switch")?,
    );
    let ctl = match Controller::new(state, reconciler) {
        Ok(c) => c,
        Err(e) => {
            if args.detach_on_exit {
                routes.remove_all().await;
            }
            bail!("applying the configured VIPs: {e}")
        }
    };
    ctl.manage_routes(routes).await;
    ctl.persist_to(store)
        .await
        .context("writing the state file")?;
    ctl.warm_next_hops().await;
    // Probes backends of VIPs with a health check, from this namespace, and marks them up or
    // down through the controller; stopped before the controller is taken apart.
    let health = xdplb::health::checker::HealthChecker::spawn(ctl.clone());
    let sweeper = tokio::spawn(sweep_flows(ctl.clone(), config.backend_down_grace()));

    let socket = args
        .socket
        .or(config.api.socket.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET));
    let served = match MetricsServer::start_for(&ctl, metrics_listen).await {
        Ok(metrics) => {
            let checks = listen_checks(&config);
            let served = serve(ctl.clone(), tracer.clone(), checks, &socket, tcp).await;
            if let Some(m) = metrics {
                m.shutdown().await;
            }
            served
        }
        Err(e) => Err(e).context("starting the metrics endpoint"),
    };
    health.shutdown().await;
    // A running trace sees the stop within 100 ms and switches the program's tracing off.
    tracer.wait_idle(std::time::Duration::from_secs(2)).await;
    sweeper.abort();
    // An aborted task drops its controller handle only once it has stopped: wait for it, or
    // into_reconciler below finds the API still in use and the data plane is never detached.
    let _ = sweeper.await;

    if args.detach_on_exit {
        tracing::info!("shutting down: detaching XDP and removing pins (--detach-on-exit)");
    } else {
        tracing::info!("shutting down: XDP stays attached and maps pinned for the next lbd");
    }
    let _ = std::fs::remove_file(&socket);
    // The routes follow the data plane: removed with it, kept for the next lbd otherwise.
    if args.detach_on_exit {
        ctl.remove_routes().await;
    }
    let cleaned = match ctl.into_reconciler() {
        Some(r) => r
            .into_dataplane()
            .shutdown(args.detach_on_exit)
            .context("cleaning up the data plane"),
        None => {
            tracing::warn!("API still in use at shutdown; the data plane is released on exit");
            Ok(())
        }
    };
    settle_ports(ports, args.detach_on_exit);
    cleaned?;
    served
}

/// The reservation of the SNAT ports follows the program: removed when lbd detaches it, kept for
/// the next lbd when it stays attached (handover). A reservation left behind (a crash, an error
/// before this) is harmless, and the next lbd takes it over from its record.
fn settle_ports(ports: hostports::Reservation, detached: bool) {
    if !detached {
        return ports.keep();
    }
    if let Err(e) = ports.release() {
        tracing::warn!("{e}");
    }
}

/// How often the flow tables are swept (`lb_flow_gc`): expired reply entries give their SNAT
/// ports back, flows of removed backends and of backends down past `[timeouts] backend_down` end.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Sweeps the flow tables every [`SWEEP_EVERY`], for the life of lbd.
async fn sweep_flows(ctl: Controller, grace: std::time::Duration) {
    let sweeper = match ctl.sweeper().await {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "no flow-table sweep: SNAT ports of expired flows are only reused by take-over");
            return;
        }
    };
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = ctl.end_dead_backends(grace).await {
            tracing::warn!(error = %e, "marking backends down past the grace");
        }
        let s = sweeper.clone();
        match tokio::task::spawn_blocking(move || s.run()).await {
            Ok(Ok(r)) if r.ended > 0 || r.rev_swept > 0 => tracing::debug!(
                ended = r.ended,
                ports_freed = r.rev_swept,
                seen = r.seen,
                "flow tables swept"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping the flow tables"),
            Err(e) => tracing::warn!(error = %e, "flow-table sweep task"),
        }
    }
}

/// `lbd --man`: the roff man page of lbd (clap_mangen, from the same definitions as `--help`).
fn print_man() -> ExitCode {
    use clap::CommandFactory as _;
    let page = clap_mangen::Man::new(Args::command())
        .source(concat!("xdplb ", env!("CARGO_PKG_VERSION")))
        .manual("xdplb manual")
        .section("8");
    let mut out = std::io::stdout().lock();
    match page.render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn attach_all(dp: &mut Dataplane, config: &Config) -> Result<()> {
    for ifname in &config.dataplane.interfaces {
        enable_forwarding(ifname)?;
        note_accept_local(ifname);
        let link = dp
            .attach(ifname, config.dataplane.xdp_mode.into())
            .with_context(|| format!("attaching to {ifname}"))?;
        tracing::info!(interface = %link.ifname, ifindex = link.ifindex, generic = link.generic, "XDP attached");
    }
    Ok(())
}

/// bpf_fib_lookup refuses to forward from an interface whose IPv4 forwarding is off, and the
/// kernel fallback (unresolved neighbour) needs it too.
fn enable_forwarding(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    let current = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (does {ifname} exist?)"))?;
    if current.trim() != "1" {
        std::fs::write(&path, "1")
            .with_context(|| format!("enabling IPv4 forwarding on {ifname}"))?;
        tracing::info!(
            interface = ifname,
            "enabled IPv4 forwarding (needed by bpf_fib_lookup)"
        );
    }
    Ok(())
}

/// An IPIP packet without DF that is too big once encapsulated is handed to the kernel to
/// fragment (`pass_ipip_too_big`). Its outer source is `[ipip] source`: if that is an address of
/// this host, the kernel drops it as a martian unless `accept_local` is on for the interface it
/// came in on. lbd does not turn it on (it would accept any frame from the wire that claims one
/// of this host's addresses); it says so, once per interface.
fn note_accept_local(ifname: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
        tracing::info!(
            interface = ifname,
            "net.ipv4.conf.{ifname}.accept_local is 0: IPIP packets without DF too big for the \
             backend's MTU once encapsulated (pass_ipip_too_big) are dropped by the kernel if \
             [ipip] source is an address of this host (see docs/ARCHITECTURE.md, IPIP and the MTU)"
        );
    }
}

/// What `lbctl backend check` takes from the configuration.
fn listen_checks(config: &Config) -> xdplb::api::check::CheckSettings {
    xdplb::api::check::CheckSettings {
        ipip_source: config.runtime().ipip_source,
    }
}

async fn serve(
    ctl: Controller,
    tracer: std::sync::Arc<xdplb::trace::Tracer>,
    checks: xdplb::api::check::CheckSettings,
    socket: &Path,
    tcp: Option<(std::net::SocketAddr, Option<ServerTlsConfig>)>,
) -> Result<()> {
    let listener = listen::bind_unix(socket)?;
    tracing::info!(socket = %socket.display(), mode = "0600", "gRPC API listening");

    // grpc.health.v1.Health: NOT_SERVING until here, where the data plane is attached.
    let mut health = listen::ApiHealth::new().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = |builder: Server| {
        let r = listen::router(builder, &ctl, stop_rx.clone(), &health);
        let r = listen::with_trace(r, &ctl, tracer.clone(), stop_rx.clone());
        listen::with_checks(r, &ctl, checks)
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The Unix socket takes any :authority (stock clients send their own for `unix:` targets);
    // the TCP listener is plain HTTP/2.
    let unix =
        tokio::spawn(router(Server::builder()).serve_with_incoming_shutdown(
            listen::unix_incoming(listener),
            stopped(stop_rx.clone()),
        ));
    let tcp = match tcp {
        Some((addr, tls)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding gRPC on {addr}"))?;
            let builder = match tls {
                Some(tls) => {
                    tracing::info!(%addr, "gRPC API listening on TCP with mutual TLS");
                    Server::builder()
                        .tls_config(tls)
                        .context("TLS configuration")?
                }
                None => {
                    tracing::info!(%addr, "gRPC API listening on TCP (loopback, no TLS)");
                    Server::builder()
                }
            };
            Some(tokio::spawn(router(builder).serve_with_incoming_shutdown(
                TcpListenerStream::new(l),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    health.set_serving(true).await;
    tracing::info!(
        services = health.names().len(),
        "grpc.health.v1.Health: SERVING"
    );
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    // NOT_SERVING first, and Health.Watch streams end, so the graceful shutdown below does
    // not wait for them.
    health.shut_down().await;
    let _ = stop_tx.send(true);
    unix.await
        .context("gRPC server task")?
        .context("gRPC server")?;
    if let Some(t) = tcp {
        t.await
            .context("gRPC TCP server task")?
            .context("gRPC TCP server")?;
    }
    Ok(())
}
