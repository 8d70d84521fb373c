//! Prometheus metrics of lbd: a [`Collector`] that reads the data plane at every scrape, and a
//! small HTTP/1.1 server answering `GET /metrics` (`lbd --metrics-listen`, `[metrics] listen`).
//!
//! Nothing is copied in the background. A scrape
//! 1. reads the per-VIP, per-backend and global counters through [`Controller::read`], summing
//!    the per-CPU maps (a few syscalls per VIP and backend, under the controller's lock);
//! 2. walks the hash, LRU and trie maps (occupancy, live flows per VIP and backend, firewall hits,
//!    rate-limit counters) on handles of its own, outside the lock. A walk costs about a second
//!    per million entries, so its result is reused for 50 times as long as it took, at most
//!    [`MAX_WALK_REUSE`]: small tables are walked at every scrape, a full million-entry conntrack
//!    table at most every 10 s (so walking costs at most 2 % of one CPU). The time the last walk
//!    took is exported as `xdplb_map_walk_duration_seconds`.
//!
//! The encoding runs on a blocking thread (`spawn_blocking`): the collector waits for the lock
//! and walks maps synchronously.
//!
//! Names follow the Prometheus conventions: counters end in `_total`, bytes in `_bytes_total`;
//! label values are the operator's spelling (`vip="10.0.0.10:80"`, `proto="tcp"`,
//! `backend="10.0.2.1:8080"`, `reason="pass_not_vip"`, `verdict="XDP_TX"`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::Controller;
use crate::dataplane::maps::{reason_name, verdict_name};
use crate::dataplane::telemetry::{Telemetry, Walk};
use crate::dataplane::{Counters, DataplaneError};

/// Where lbd serves metrics unless told otherwise (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";
/// The longest a map walk is reused.
pub const MAX_WALK_REUSE: Duration = Duration::from_secs(10);
/// A walk is reused for this many times as long as it took.
const WALK_REUSE_FACTOR: u32 = 50;
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
    #[error("'{0}' is not ADDR:PORT (or \"none\" to disable metrics)")]
    BadListen(String),
}

/// Parses a `--metrics-listen` / `[metrics] listen` value: `ADDR:PORT`, or `none` / empty to
/// disable the endpoint.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| MetricsError::BadListen(s.to_string()))
}

// ---------------------------------------------------------------------------------------------
// What a scrape exports

/// Counters of one backend of a VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendSample {
    /// `ADDR:PORT`.
    pub backend: String,
    pub weight: u32,
    pub counters: Counters,
    /// Live flows to this backend (from the last walk).
    pub tracked_flows: u64,
    /// Its health, when the VIP has a health check.
    pub health: Option<HealthSample>,
}

/// A checked backend's health: whether it is marked down, and the checker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSample {
    pub up: bool,
    pub counts: crate::health::HealthCounts,
}

/// Counters of one VIP and its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipSample {
    /// `ADDR:PORT`.
    pub vip: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// `nat`, `l2dsr` or `ipip`.
    pub mode: String,
    pub counters: Counters,
    /// Live flows of this VIP (from the last walk).
    pub tracked_flows: u64,
    pub backends: Vec<BackendSample>,
}

/// Everything one scrape exports, as plain data (so that naming and formatting are testable
/// without a data plane).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub vips: Vec<VipSample>,
    /// Packets per `enum lb_reason`, by name.
    pub reasons: Vec<(String, u64)>,
    /// Packets per XDP verdict, by name.
    pub verdicts: Vec<(String, u64)>,
    /// The last map walk; `None` if it failed.
    pub walk: Option<Walk>,
}

/// Ids of the VIPs and backends of a [`Sample`], to attach the walk's flow counts.
struct Ids {
    vips: Vec<(u32, Vec<u32>)>,
}

// ---------------------------------------------------------------------------------------------
// The collector

struct CachedWalk {
    at: Instant,
    walk: Walk,
}

/// Reads the data plane at every scrape (see the module docs).
pub struct LbCollector {
    ctl: Controller,
    walk: Mutex<Option<CachedWalk>>,
    read_errors: Counter,
}

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbCollector").finish_non_exhaustive()
    }
}

impl LbCollector {
    /// Reads the counters under the lock, then walks the maps (or reuses the last walk).
    fn sample(&self) -> Result<Sample, DataplaneError> {
        // The collector runs on a blocking thread (see `render`), where waiting is allowed.
        let (mut sample, ids, telemetry) =
            futures::executor::block_on(self.ctl.read(read_counters))?;
        sample.walk = match self.walk(telemetry) {
            Ok(w) => Some(w),
            Err(e) => {
                self.read_errors.inc();
                tracing::warn!(error = %e, "metrics: walking the maps failed");
                None
            }
        };
        if let Some(walk) = &sample.walk {
            for (v, (vip_id, backend_ids)) in sample.vips.iter_mut().zip(&ids.vips) {
                v.tracked_flows = walk.flows.by_vip.get(vip_id).copied().unwrap_or(0);
                for (b, id) in v.backends.iter_mut().zip(backend_ids) {
                    b.tracked_flows = walk.flows.by_backend.get(id).copied().unwrap_or(0);
                }
            }
        }
        Ok(sample)
    }

    /// The last walk if it is recent enough for its cost, else a new one. Scrapes that arrive
    /// together wait for one walk.
    fn walk(&self, telemetry: Telemetry) -> Result<Walk, DataplaneError> {
        let mut cached = self.walk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.at.elapsed() < walk_reuse(c.walk.took) {
                return Ok(c.walk.clone());
            }
        }
        let walk = telemetry.walk()?;
        *cached = Some(CachedWalk {
            at: Instant::now(),
            walk: walk.clone(),
        });
        Ok(walk)
    }
}

/// How long a walk that took `took` is reused.
pub fn walk_reuse(took: Duration) -> Duration {
    took.saturating_mul(WALK_REUSE_FACTOR).min(MAX_WALK_REUSE)
}

/// The counters of every VIP and backend and the global ones (under the controller's lock).
fn read_counters(
    state: &xdplb_model::state::State,
    r: &crate::reconcile::Reconciler,
) -> Result<(Sample, Ids, Telemetry), DataplaneError> {
    let dp = r.dataplane();
    let maps = dp.maps();
    let mut sample = Sample::default();
    let mut ids = Ids { vips: Vec::new() };
    for (key, v) in &state.vips {
        let Some(vip_id) = r.vip_id(key) else {
            continue;
        };
        let mut backends = Vec::new();
        let mut backend_ids = Vec::new();
        let health_stats = r.health().stats();
        for (addr, weight) in &v.backends {
            let Some(id) = r.backend_id(key, addr) else {
                continue;
            };
            let health = v.health.is_checked().then(|| HealthSample {
                up: !r.health().is_down(key, addr),
                counts: health_stats.get(key, addr),
            });
            backends.push(BackendSample {
                backend: addr.to_string(),
                weight: *weight,
                counters: maps.backend_counters(id)?,
                tracked_flows: 0,
                health,
            });
            backend_ids.push(id);
        }
        sample.vips.push(VipSample {
            vip: key.addr.to_string(),
            proto: key.proto.to_string(),
            mode: v.mode.to_string(),
            counters: maps.vip_counters(vip_id)?,
            tracked_flows: 0,
            backends,
        });
        ids.vips.push((vip_id, backend_ids));
    }
    let g = maps.global_counters()?;
    sample.reasons = g
        .reasons
        .iter()
        .enumerate()
        .map(|(i, n)| (reason_name(i), *n))
        .collect();
    sample.verdicts = g
        .verdicts
        .iter()
        .enumerate()
        .map(|(i, n)| (verdict_name(i).to_string(), *n))
        .collect();
    // The walk reads the hit counters of the rule ids in use only.
    let telemetry = dp.telemetry()?.with_firewall_ids(r.firewall().id_bound());
    Ok((sample, ids, telemetry))
}

impl Collector for LbCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.sample() {
            Ok(sample) => encode_sample(&sample, encoder),
            Err(e) => {
                // The endpoint still answers (build info, this error count); the log says why.
                self.read_errors.inc();
                tracing::warn!(error = %e, "metrics: reading the counters failed");
                Ok(())
            }
        }
    }
}

/// Label sets, in the order they are written.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family: its descriptor, then one sample per label set.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<u64> {
    ConstGauge::new(v)
}

/// Writes every metric of `s` (names get the registry's `xdplb_` prefix).
pub fn encode_sample(s: &Sample, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let bytes = Unit::Bytes;
    fn vip(v: &VipSample) -> Labels<'_> {
        vec![("vip", &v.vip), ("proto", &v.proto)]
    }
    fn backend(v: &VipSample) -> impl Iterator<Item = (Labels<'_>, &BackendSample)> {
        v.backends.iter().map(move |b| {
            (
                vec![
                    ("vip", v.vip.as_str()),
                    ("proto", v.proto.as_str()),
                    ("backend", b.backend.as_str()),
                ],
                b,
            )
        })
    }

    family(
        &mut e,
        "vip_info",
        "Configured VIPs (value 1) and their forwarding mode.",
        None,
        MetricType::Gauge,
        s.vips.iter().map(|v| {
            let mut l = vip(v);
            l.push(("mode", &v.mode));
            (l, gauge(1))
        }),
    )?;
    family(
        &mut e,
        "vip_packets",
        "Packets from clients to a VIP that the data plane gave a backend (counted before forwarding).",
        None,
        MetricType::Counter,
        s.vips.iter().map(|v| (vip(v), counter(v.counters.packets))),
    )?;
    family(
        &mut e,
        "vip",
        "Bytes (frame lengths as received, Ethernet header included) from clients to a VIP.",
        Some(&bytes),
        MetricType::Counter,
        s.vips.iter().map(|v| (vip(v), counter(v.counters.bytes))),
    )?;
    family(
        &mut e,
        "vip_new_flows",
        "Flows to a VIP that got a backend (new flow-table entries).",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .map(|v| (vip(v), counter(v.counters.new_flows))),
    )?;
    family(
        &mut e,
        "vip_tracked_flows",
        "Live flows of a VIP in the flow table (not idle past their timeout), from the last map walk.",
        None,
        MetricType::Gauge,
        s.vips.iter().map(|v| (vip(v), gauge(v.tracked_flows))),
    )?;
    family(
        &mut e,
        "backend_weight",
        "Maglev weight of a backend (0: drained, no new flows).",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, gauge(u64::from(b.weight)))),
    )?;
    family(
        &mut e,
        "backend_packets",
        "Packets of the flows of a backend: client to backend and, in NAT mode, the backend's replies.",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.packets))),
    )?;
    family(
        &mut e,
        "backend",
        "Bytes (frame lengths as received) of the flows of a backend, both directions in NAT mode.",
        Some(&bytes),
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.bytes))),
    )?;
    family(
        &mut e,
        "backend_new_flows",
        "New flows the data plane gave to a backend of a VIP.",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.new_flows))),
    )?;
    family(
        &mut e,
        "backend_tracked_flows",
        "Live flows to a backend in the flow table, from the last map walk.",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, gauge(b.tracked_flows))),
    )?;
    fn checked(v: &VipSample) -> impl Iterator<Item = (Labels<'_>, &HealthSample)> {
        backend(v).filter_map(|(l, b)| b.health.as_ref().map(|h| (l, h)))
    }
    family(
        &mut e,
        "backend_up",
        "Health of a backend of a VIP with a health check: 1 up (or not probed yet), 0 marked down (out of the Maglev table for new flows).",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(checked)
            .map(|(l, h)| (l, gauge(u64::from(h.up)))),
    )?;
    family(
        &mut e,
        "backend_health_transitions",
        "Health transitions of a backend: to=\"down\" (taken out after `fall` failed probes) and to=\"up\" (back after `rise` good ones).",
        None,
        MetricType::Counter,
        s.vips.iter().flat_map(checked).flat_map(|(l, h)| {
            let mut down = l.clone();
            down.push(("to", "down"));
            let mut up = l;
            up.push(("to", "up"));
            [
                (down, counter(h.counts.went_down)),
                (up, counter(h.counts.came_up)),
            ]
        }),
    )?;
    family(
        &mut e,
        "backend_probe_failures",
        "Health probes of a backend that failed (refused, timed out, wrong HTTP status, no UDP reply).",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(checked)
            .map(|(l, h)| (l, counter(h.counts.probe_failures))),
    )?;
    family(
        &mut e,
        "packets",
        "Packets the XDP program handled, by why they got their verdict (enum lb_reason).",
        None,
        MetricType::Counter,
        s.reasons
            .iter()
            .map(|(r, n)| (vec![("reason", r.as_str())], counter(*n))),
    )?;
    family(
        &mut e,
        "verdicts",
        "Packets the XDP program handled, by XDP verdict.",
        None,
        MetricType::Counter,
        s.verdicts
            .iter()
            .map(|(v, n)| (vec![("verdict", v.as_str())], counter(*n))),
    )?;

    let Some(walk) = &s.walk else {
        return Ok(());
    };
    family(
        &mut e,
        "map_entries",
        "Entries in a hash, LRU or LPM-trie map of the data plane, from the last map walk.",
        None,
        MetricType::Gauge,
        walk.maps.iter().map(|m| {
            (
                vec![("map", m.map.as_str()), ("type", m.kind)],
                gauge(m.entries),
            )
        }),
    )?;
    family(
        &mut e,
        "map_capacity",
        "Most entries a hash, LRU or LPM-trie map of the data plane holds (max_entries).",
        None,
        MetricType::Gauge,
        walk.maps.iter().map(|m| {
            (
                vec![("map", m.map.as_str()), ("type", m.kind)],
                gauge(m.capacity),
            )
        }),
    )?;
    family(
        &mut e,
        "map_walk_duration",
        "How long the last walk of the maps took (it is reused for 50 times as long, at most 10 s).",
        Some(&Unit::Seconds),
        MetricType::Gauge,
        [(Vec::new(), ConstGauge::new(walk.took.as_secs_f64()))],
    )?;
    family(
        &mut e,
        "flows_expired",
        "Flow-table entries idle past their timeout and not evicted yet, from the last map walk.",
        None,
        MetricType::Gauge,
        [(Vec::new(), gauge(walk.flows.expired))],
    )?;
    if let Some(rules) = &walk.firewall {
        let nets: Vec<String> = rules.iter().map(|r| r.net.to_string()).collect();
        family(
            &mut e,
            "firewall_rule_hits",
            "Packets whose verdict a firewall rule decided: the 20 rules with the most hits only.",
            None,
            MetricType::Counter,
            rules.iter().zip(&nets).map(|(r, net)| {
                (
                    vec![("rule", net.as_str()), ("action", r.action)],
                    counter(r.packets),
                )
            }),
        )?;
    }
    if let Some(policies) = &walk.ratelimit {
        let names: Vec<String> = policies
            .iter()
            .map(|p| {
                p.net
                    .map_or_else(|| "default".to_string(), |n| n.to_string())
            })
            .collect();
        family(
            &mut e,
            "ratelimit_packets",
            "Packets a rate-limit policy checked, by result (allowed or dropped).",
            None,
            MetricType::Counter,
            policies.iter().zip(&names).flat_map(|(p, name)| {
                [
                    (
                        vec![("policy", name.as_str()), ("result", "allowed")],
                        counter(p.allowed),
                    ),
                    (
                        vec![("policy", name.as_str()), ("result", "dropped")],
                        counter(p.dropped),
                    ),
                ]
            }),
        )?;
    }
    Ok(())
}

/// The registry lbd serves: build info, the read-error counter, and an [`LbCollector`] on `ctl`.
pub fn registry(ctl: Controller) -> Registry {
    let mut registry = Registry::with_prefix("xdplb");
    registry.register(
        "build",
        "The running lbd (value 1).",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let read_errors = Counter::default();
    registry.register(
        "metrics_read_errors",
        "Scrapes that could not read (part of) the data plane; lbd's log says why.",
        read_errors.clone(),
    );
    registry.register_collector(Box::new(LbCollector {
        ctl,
        walk: Mutex::new(None),
        read_errors,
    }));
    registry
}

/// The registry as text: OpenMetrics, or else the Prometheus text format 0.0.4.
pub fn render(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint

/// The running `/metrics` endpoint. [`MetricsServer::shutdown`] stops it and waits (briefly) for
/// scrapes in progress, which hold a [`Controller`] handle.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` there.
    pub async fn start(addr: SocketAddr, registry: Registry) -> Result<Self, MetricsError> {
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
    pub fn local_addr(&self) -> SocketAddr {
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
    use crate::dataplane::telemetry::{Flows, Occupancy, PolicyCounts, RuleHits};

    /// A collector that exports a fixed sample.
    #[derive(Debug)]
    struct Fixed(Sample);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_sample(&self.0, encoder)
        }
    }

    fn sample() -> Sample {
        let c = |p, b, f| Counters {
            packets: p,
            bytes: b,
            new_flows: f,
        };
        Sample {
            vips: vec![VipSample {
                vip: "10.0.0.10:80".into(),
                proto: "tcp".into(),
                mode: "nat".into(),
                counters: c(10, 1000, 2),
                tracked_flows: 2,
                backends: vec![BackendSample {
                    backend: "10.0.2.1:8080".into(),
                    weight: 100,
                    counters: c(7, 700, 1),
                    tracked_flows: 1,
                    health: Some(HealthSample {
                        up: false,
                        counts: crate::health::HealthCounts {
                            went_down: 2,
                            came_up: 1,
                            probe_failures: 9,
                        },
                    }),
                }],
            }],
            reasons: vec![("pass_not_vip".into(), 3), ("tx_nat_forward".into(), 10)],
            verdicts: vec![("XDP_PASS".into(), 3), ("XDP_TX".into(), 10)],
            walk: Some(Walk {
                maps: vec![Occupancy {
                    map: "ct_fwd".into(),
                    kind: "lru_hash",
                    entries: 2,
                    capacity: 1024,
                }],
                flows: Flows::default(),
                firewall: Some(vec![RuleHits {
                    net: "192.0.2.0/24".parse().expect("prefix"),
                    action: "block",
                    packets: 5,
                }]),
                ratelimit: Some(vec![PolicyCounts {
                    net: None,
                    allowed: 8,
                    dropped: 1,
                }]),
                took: Duration::from_millis(2),
            }),
        }
    }

    fn fixed_registry(s: Sample) -> Registry {
        let mut r = Registry::with_prefix("xdplb");
        r.register(
            "build",
            "The running lbd (value 1).",
            Info::new(vec![("version", "1.2.3")]),
        );
        r.register_collector(Box::new(Fixed(s)));
        r
    }

    #[test]
    fn prometheus_text_names_and_labels() {
        let text = render(&fixed_registry(sample()), false).expect("renders");
        for line in [
            "xdplb_build_info{version=\"1.2.3\"} 1",
            "# TYPE xdplb_vip_packets_total counter",
            "xdplb_vip_packets_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 10",
            "xdplb_vip_bytes_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 1000",
            "xdplb_vip_new_flows_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 2",
            "xdplb_vip_tracked_flows{vip=\"10.0.0.10:80\",proto=\"tcp\"} 2",
            "xdplb_vip_info{vip=\"10.0.0.10:80\",proto=\"tcp\",mode=\"nat\"} 1",
            "xdplb_backend_packets_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 7",
            "xdplb_backend_bytes_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 700",
            "xdplb_backend_weight{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 100",
            "xdplb_backend_tracked_flows{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 1",
            "xdplb_backend_up{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 0",
            "xdplb_backend_health_transitions_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\",to=\"down\"} 2",
            "xdplb_backend_health_transitions_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\",to=\"up\"} 1",
            "xdplb_backend_probe_failures_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 9",
            "xdplb_packets_total{reason=\"pass_not_vip\"} 3",
            "xdplb_verdicts_total{verdict=\"XDP_TX\"} 10",
            "xdplb_map_entries{map=\"ct_fwd\",type=\"lru_hash\"} 2",
            "xdplb_map_capacity{map=\"ct_fwd\",type=\"lru_hash\"} 1024",
            "xdplb_firewall_rule_hits_total{rule=\"192.0.2.0/24\",action=\"block\"} 5",
            "xdplb_ratelimit_packets_total{policy=\"default\",result=\"dropped\"} 1",
            "# TYPE xdplb_map_walk_duration_seconds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
        // Every family has HELP and TYPE.
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
    }

    #[test]
    fn openmetrics_has_units_and_eof() {
        let text = render(&fixed_registry(sample()), true).expect("renders");
        assert!(text.contains("# UNIT xdplb_vip_bytes bytes"), "{text}");
        assert!(text.contains("# TYPE xdplb_build info"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn empty_families_are_left_out() {
        let text = render(
            &fixed_registry(Sample {
                walk: None,
                ..Sample::default()
            }),
            false,
        )
        .expect("renders");
        assert!(!text.contains("xdplb_vip_packets"), "{text}");
        assert!(!text.contains("xdplb_map_entries"), "{text}");
        assert!(text.contains("xdplb_build_info"), "{text}");
    }

    #[test]
    fn health_families_only_for_checked_backends() {
        let mut s = sample();
        s.vips[0].backends[0].health = None;
        let text = render(&fixed_registry(s), false).expect("renders");
        for name in [
            "xdplb_backend_up",
            "xdplb_backend_health_transitions",
            "xdplb_backend_probe_failures",
        ] {
            assert!(
                !text.contains(name),
                "{name} for an unchecked backend:\n{text}"
            );
        }
        assert!(text.contains("xdplb_backend_weight{"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = sample();
        s.reasons = vec![("we\"ird\\name\n".into(), 1)];
        let text = render(&fixed_registry(s), false).expect("renders");
        assert!(
            text.contains(r#"xdplb_packets_total{reason="we\"ird\\name\n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn walks_are_reused_in_proportion_to_their_cost() {
        assert_eq!(
            walk_reuse(Duration::from_millis(1)),
            Duration::from_millis(50)
        );
        assert_eq!(
            walk_reuse(Duration::from_millis(100)),
            Duration::from_secs(5)
        );
        assert_eq!(walk_reuse(Duration::from_secs(3)), MAX_WALK_REUSE);
    }

    #[test]
    fn listen_values() {
        assert_eq!(
            parse_listen("127.0.0.1:9469").expect("valid"),
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
        assert_eq!(parse_listen("none").expect("valid"), None);
        assert_eq!(parse_listen("").expect("valid"), None);
        assert_eq!(
            parse_listen("[::1]:9469").expect("valid"),
            Some("[::1]:9469".parse().expect("addr"))
        );
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("9469").is_err());
    }

    #[test]
    fn openmetrics_negotiation() {
        let prom = HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert!(wants_openmetrics(Some(&prom)));
        assert!(!wants_openmetrics(Some(&HeaderValue::from_static("*/*"))));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn promtool_finds_no_problems() {
        // promtool comes with Debian's `prometheus` package (make deps); skip quietly without it.
        let text = render(&fixed_registry(sample()), false).expect("renders");
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: skipping");
            return;
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
