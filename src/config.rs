//! `lbd`'s TOML configuration file: parsing, defaults, and validation that names the offending key.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::maglev;
use xdplb_model::state::{Mode, Protocol, State, StateError, VipKey};

/// Where `lbd` keeps its gRPC socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/lbd.sock";
/// The bpffs directory for pinned maps unless told otherwise.
pub(crate) const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb";

/// A configuration error, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// Any of the above, placed in the file: `lbd.toml:12:11: vip[0].address: ...`. The key is
    /// absent only for a syntax error (no key could be read there).
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
}

/// Longest `timeouts.nexthop_cache`: a flow may send to a neighbour that left for this long.
const MAX_NEXTHOP_CACHE: Duration = Duration::from_secs(60);

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole file. Every table is optional except `[dataplane]` and `[nat]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub nat: NatConfig,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub(crate) timeouts: TimeoutsConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub(crate) ipip: IpipConfig,
    #[serde(default)]
    pub(crate) icmp: IcmpConfig,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub ratelimit: RateLimitConfig,
    /// VIPs to create at start.
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipConfig>,
}

/// How XDP is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver: fast; veth and most NICs support it.
    Native,
    /// In the generic (skb) path: works everywhere, slower.
    Generic,
    /// Native where the driver supports it, generic otherwise.
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Interfaces to attach the XDP program to.
    pub interfaces: Vec<String>,
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpMode,
    /// bpffs directory of this lbd's pinned maps.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// A blackhole /32 route in the main table for every VIP address (`crate::routes`), so that
    /// VIP-addressed packets the program passes to the kernel are dropped, not routed back
    /// upstream. false: none, and lbd's own left from earlier are removed at start.
    #[serde(default = "default_blackhole_routes")]
    pub blackhole_routes: bool,
}

impl From<XdpMode> for crate::dataplane::XdpMode {
    fn from(m: XdpMode) -> Self {
        match m {
            XdpMode::Native => Self::Native,
            XdpMode::Generic => Self::Generic,
            XdpMode::Auto => Self::Auto,
        }
    }
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Native
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}

fn default_blackhole_routes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Source address of NATed packets towards backends (an address of this host).
    pub(crate) snat_address: Ipv4Addr,
    /// Inclusive range of source ports used towards backends.
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
    /// Where `port_range` overlaps the kernel's `ip_local_port_range`, reserve it in
    /// `ip_local_reserved_ports` (see `crate::hostports`); with false such an overlap is refused.
    #[serde(default = "default_reserve_ports")]
    pub(crate) reserve_ports: bool,
}

/// Clear of Linux's default ephemeral range (`ip_local_port_range` 32768-60999), so that the
/// host's own connections never take an SNAT port.
fn default_port_range() -> [u16; 2] {
    [20000, 32767]
}

fn default_reserve_ports() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Established flows the balancer tracks: entries of the NAT established tables, and of the
    /// DSR established tables together (one per CPU, each this divided by the CPUs).
    pub conntrack_size: u32,
    /// Entries of the embryonic table: TCP flows whose handshake has not completed yet.
    pub embryonic_size: u32,
    /// The DSR new-flow guard: above this many new flows per second on one CPU, DSR VIPs stop
    /// inserting flows (Maglev still picks the same backend). 0 turns the guard off.
    pub new_flows_per_cpu: u32,
    /// Maglev table size per VIP (a prime).
    pub maglev_size: u32,
}

impl Default for TablesConfig {
    fn default() -> Self {
        Self {
            conntrack_size: 1 << 20,
            embryonic_size: 1 << 16,
            new_flows_per_cpu: 125_000,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TimeoutsConfig {
    /// Idle timeout of an established TCP flow.
    #[serde(with = "humantime_serde")]
    pub(crate) tcp: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    #[serde(with = "humantime_serde")]
    pub(crate) tcp_closing: Duration,
    /// Idle timeout of an embryonic TCP flow (SYN seen, handshake not completed).
    #[serde(with = "humantime_serde")]
    pub(crate) tcp_handshake: Duration,
    /// Idle timeout of a UDP flow.
    #[serde(with = "humantime_serde")]
    pub(crate) udp: Duration,
    /// How long a backend marked down by its health check keeps its flows: after that its DSR
    /// flows are chosen again by Maglev and its NAT flows are ended. Draining never ends flows.
    #[serde(with = "humantime_serde")]
    pub(crate) backend_down: Duration,
    /// How long a flow reuses the next hop (egress interface, MACs) it looked up before looking
    /// it up again; a neighbour or route change reaches established flows within this time.
    /// 0 turns the cache off (one FIB lookup per packet).
    #[serde(with = "humantime_serde")]
    pub(crate) nexthop_cache: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(300),
            tcp_closing: Duration::from_secs(10),
            tcp_handshake: Duration::from_secs(5),
            backend_down: Duration::from_secs(10),
            udp: Duration::from_secs(30),
            nexthop_cache: Duration::from_secs(1),
        }
    }
}

/// IPIP DSR settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpipConfig {
    /// Outer source of IPIP packets: an address of this host (`10.0.1.1/32`), or a prefix whose
    /// host bits vary per flow so that receivers spread flows across queues (`10.0.9.0/24`).
    /// Defaults to `nat.snat_address`/32.
    pub(crate) source: Option<ipnet::Ipv4Net>,
}

/// The ICMP the balancer sends and relays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct IcmpConfig {
    /// Source of the ICMP time exceeded the balancer sends when a packet's TTL runs out here (an
    /// address of this host). Defaults to `nat.snat_address`.
    pub(crate) source: Option<Ipv4Addr>,
    /// Most ICMP errors relayed to backends or clients per second and per VIP (and as many for
    /// errors to the SNAT address), in bursts of a tenth of that; 0: no limit.
    pub(crate) errors_per_second: u64,
    /// Most ICMP time exceeded the balancer sends per second, in bursts of a tenth of that; 0: no
    /// limit.
    pub(crate) time_exceeded_per_second: u64,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        Self {
            source: None,
            errors_per_second: 1000,
            time_exceeded_per_second: 1000,
        }
    }
}

/// The GCRA bucket of an ICMP budget of `rate` messages per second (bursts of a tenth of a
/// second's worth); `None` for 0, no limit.
fn icmp_bucket(rate: u64) -> Option<xdplb_model::ratelimit::Bucket> {
    (rate > 0).then(|| xdplb_model::ratelimit::Bucket::new(rate, (rate / 10).max(1)))
}

impl Config {
    /// The IPIP outer source prefix in force.
    pub(crate) fn ipip_source(&self) -> ipnet::Ipv4Net {
        self.ipip.source.unwrap_or_else(|| {
            ipnet::Ipv4Net::new(self.nat.snat_address, 32).expect("/32 is a valid prefix")
        })
    }

    /// How long a backend may be down before its flows end (`[timeouts] backend_down`).
    pub fn backend_down_grace(&self) -> Duration {
        self.timeouts.backend_down
    }

    /// The data plane's run-time settings (`lb_config`) this configuration asks for.
    pub fn runtime(&self) -> crate::dataplane::maps::RuntimeConfig {
        let [lo, hi] = self.nat.port_range;
        crate::dataplane::maps::RuntimeConfig {
            snat_addr: self.nat.snat_address,
            snat_ports: (lo, hi),
            tcp_timeout: self.timeouts.tcp,
            tcp_closing_timeout: self.timeouts.tcp_closing,
            tcp_handshake_timeout: self.timeouts.tcp_handshake,
            udp_timeout: self.timeouts.udp,
            ipip_source: self.ipip_source(),
            nexthop_cache: self.timeouts.nexthop_cache,
            new_flows_per_cpu: self.tables.new_flows_per_cpu,
            icmp_source: self.icmp.source.unwrap_or(self.nat.snat_address),
            icmp_errors: icmp_bucket(self.icmp.errors_per_second),
            time_exceeded: icmp_bucket(self.icmp.time_exceeded_per_second),
        }
    }
}

/// The CIDR firewall: which packets it sees and how many rules it can hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// `vips`: only packets addressed to a VIP; `all`: every IPv4 packet on lbd's interfaces.
    pub scope: xdplb_model::firewall::Scope,
    /// Most rules (also the per-CPU hit counters: 8 bytes per rule per CPU); 0 turns the
    /// firewall off and frees its tables (the /24 table alone is 64 MiB).
    pub capacity: u32,
    /// Source prefixes to drop (desired state, as in [`FirewallRulesConfig`]).
    pub(crate) block: Vec<String>,
    /// Source prefixes to let through, exempt from rate limits (desired state).
    pub(crate) allow: Vec<String>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            scope: xdplb_model::firewall::Scope::default(),
            capacity: xdplb_model::firewall::DEFAULT_CAPACITY,
            block: Vec::new(),
            allow: Vec::new(),
        }
    }
}

/// Per-client rate limiting: how many clients get a bucket of their own, and the policies to
/// start with (also set with `lbctl ratelimit set` and `lbctl apply`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Client buckets (an LRU table: when full, the least recently seen client is forgotten and
    /// starts again with a full burst). About 100 bytes each.
    pub clients: u32,
    /// `[ratelimit.default]`: the policy of every client no override matches (desired state).
    pub(crate) default: Option<PolicyConfig>,
    /// `[[ratelimit.override]]`: per-CIDR policies (desired state).
    #[serde(rename = "override")]
    pub(crate) overrides: Vec<OverrideConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            clients: xdplb_model::ratelimit::DEFAULT_CLIENTS,
            default: None,
            overrides: Vec::new(),
        }
    }
}

/// `[ratelimit.default]`: `rate` packets per second per client (0: no limit), bursts of up to
/// `burst` packets (at least 1 with a rate), counting the packets of `scope`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyConfig {
    pub(crate) rate: u64,
    #[serde(default)]
    pub(crate) burst: u64,
    /// `all` (every packet) or `new-flows` (only packets that start a flow).
    #[serde(default)]
    pub(crate) scope: xdplb_model::ratelimit::Scope,
}

/// `[[ratelimit.override]]`: the policy of the clients in `cidr` (longest prefix wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideConfig {
    /// An IPv4 prefix without host bits ("192.0.2.0/24"; a bare address is a /32), not /0.
    pub(crate) cidr: String,
    pub(crate) rate: u64,
    #[serde(default)]
    pub(crate) burst: u64,
    #[serde(default)]
    pub(crate) scope: xdplb_model::ratelimit::Scope,
}

impl PolicyConfig {
    fn policy(&self) -> xdplb_model::ratelimit::Policy {
        xdplb_model::ratelimit::Policy {
            rate: self.rate,
            burst: self.burst,
            scope: self.scope,
        }
    }
}

impl OverrideConfig {
    fn policy(&self) -> xdplb_model::ratelimit::Policy {
        xdplb_model::ratelimit::Policy {
            rate: self.rate,
            burst: self.burst,
            scope: self.scope,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket of the gRPC API (mode 0600).
    pub socket: Option<PathBuf>,
    /// Optional TCP listener of the gRPC API: loopback only, unless the three TLS keys below
    /// are set (mutual TLS: clients need a certificate signed by `tls_client_ca`).
    pub grpc_listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain of the TCP listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that every client certificate must be signed by.
    pub tls_client_ca: Option<PathBuf>,
}

/// Where lbd serves metrics unless told otherwise (loopback only).
pub(crate) const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9469";

/// A metrics listen value that is neither `ADDR:PORT` nor `none`.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not ADDR:PORT (or \"none\" to disable metrics)")]
pub struct BadListen(String);

/// Parses a `--metrics-listen` / `[metrics] listen` value: `ADDR:PORT`, or `none` / empty to
/// disable the endpoint.
pub fn parse_metrics_listen(s: &str) -> Result<Option<std::net::SocketAddr>, BadListen> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| BadListen(s.to_string()))
}

/// The Prometheus endpoint (`GET /metrics`, see `crate::metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ADDR:PORT` to serve `/metrics` on, or `"none"` (or empty) for no endpoint.
    pub(crate) listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_METRICS_LISTEN.to_string(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve metrics on; `None` when disabled.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        parse_metrics_listen(&self.listen).map_err(|e| invalid("metrics.listen", e.to_string()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// "ADDR:PORT"
    pub(crate) address: SocketAddrV4,
    pub(crate) proto: Protocol,
    #[serde(default)]
    pub(crate) mode: Mode,
    /// `[vip.health]`: the VIP's health check; none when absent.
    #[serde(default)]
    pub(crate) health: Option<HealthConfig>,
    #[serde(default, rename = "backend")]
    pub(crate) backends: Vec<BackendConfig>,
}

/// `[vip.health]`: the fields of `lbctl vip add --health ...`, each with lbctl's default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthConfig {
    /// The probe: `tcp` (connect), `http:/PATH` (GET, expect `http_status`), `udp` (send
    /// `udp_payload`, expect a reply) or `none`.
    pub(crate) proto: String,
    /// Time between two probes of one backend (100ms..=1h).
    #[serde(default, with = "humantime_serde")]
    pub(crate) interval: Option<Duration>,
    /// How long one probe may take (below the interval).
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
    /// Good probes in a row that bring a down backend back (1..=100).
    pub(crate) rise: Option<u32>,
    /// Failed probes in a row that take a backend out (1..=100).
    pub(crate) fall: Option<u32>,
    /// When every backend is down: `fail-open` (keep them all) or `drop`.
    pub(crate) all_down: Option<xdplb_model::health::AllDown>,
    /// The status an `http` check expects (default 200).
    pub(crate) http_status: Option<u16>,
    /// What a `udp` check sends (default "ping").
    pub(crate) udp_payload: Option<String>,
}

impl HealthConfig {
    /// The health check this table describes, validated; errors name the key below `key`
    /// (e.g. `vip[0].health.interval`).
    pub(crate) fn to_check(
        &self,
        key: &str,
    ) -> Result<xdplb_model::health::HealthCheck, ConfigError> {
        use xdplb_model::health::{HealthCheck, HealthKind};
        let d = HealthCheck::default();
        let proto = self.proto.trim();
        let kind = match proto.split_once(':') {
            Some((word, path)) if word.eq_ignore_ascii_case("http") => HealthKind::Http {
                path: path.to_string(),
                expect_status: self.http_status.unwrap_or(200),
            },
            Some(_) => {
                return Err(invalid(
                    format!("{key}.proto"),
                    format!("'{proto}' is not tcp, http:/PATH, udp or none"),
                ))
            }
            None => match proto.to_ascii_lowercase().as_str() {
                "tcp" => HealthKind::Tcp,
                "udp" => HealthKind::Udp {
                    payload: self.udp_payload.clone().unwrap_or_else(|| "ping".into()),
                },
                "http" => HealthKind::Http {
                    path: "/".into(),
                    expect_status: self.http_status.unwrap_or(200),
                },
                "none" => HealthKind::None,
                _ => {
                    return Err(invalid(
                        format!("{key}.proto"),
                        format!("'{proto}' is not tcp, http:/PATH, udp or none"),
                    ))
                }
            },
        };
        let misplaced = match &kind {
            HealthKind::Http { .. } => self.udp_payload.is_some().then_some("udp_payload"),
            HealthKind::Udp { .. } => self.http_status.is_some().then_some("http_status"),
            _ => (self.http_status.is_some().then_some("http_status"))
                .or(self.udp_payload.is_some().then_some("udp_payload")),
        };
        if let Some(field) = misplaced {
            return Err(invalid(
                format!("{key}.{field}"),
                format!("does not apply to a '{proto}' check"),
            ));
        }
        let check = HealthCheck {
            kind,
            interval: self.interval.unwrap_or(d.interval),
            timeout: self.timeout.unwrap_or(d.timeout),
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
            all_down: self.all_down.unwrap_or(d.all_down),
        };
        check.validate().map_err(|e| match e {
            xdplb_model::state::StateError::InvalidArgument { field, message } => {
                let name = match field {
                    "health.interval_ms" => "interval",
                    "health.timeout_ms" => "timeout",
                    "health.rise" => "rise",
                    "health.fall" => "fall",
                    "health.http_path" => "proto",
                    "health.http_expect_status" => "http_status",
                    "health.udp_payload" => "udp_payload",
                    other => other.trim_start_matches("health."),
                };
                invalid(format!("{key}.{name}"), message)
            }
            other => invalid(key, other.to_string()),
        })?;
        Ok(check)
    }
}

impl VipConfig {
    /// The VIP's health check (`[vip.health]`, already validated by [`Config::parse`]); the
    /// default, unchecked, when the table is absent.
    #[cfg(test)]
    pub(crate) fn health_check(&self) -> Result<xdplb_model::health::HealthCheck, ConfigError> {
        self.health.as_ref().map_or_else(
            || Ok(xdplb_model::health::HealthCheck::default()),
            |h| h.to_check("vip.health"),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendConfig {
    /// "ADDR:PORT"
    pub(crate) address: SocketAddrV4,
    #[serde(default = "default_weight")]
    pub(crate) weight: u32,
}

fn default_weight() -> u32 {
    xdplb_model::state::DEFAULT_WEIGHT
}

impl Config {
    /// The desired-state part of the file: the `[[vip]]` tables, `[firewall] block/allow` and
    /// the `[ratelimit]` policies, the same tables `lbctl apply` takes.
    pub(crate) fn desired(&self) -> DesiredConfig {
        DesiredConfig {
            vips: self.vips.clone(),
            firewall: FirewallRulesConfig {
                block: self.firewall.block.clone(),
                allow: self.firewall.allow.clone(),
            },
            ratelimit: RateLimitPoliciesConfig {
                default: self.ratelimit.default.clone(),
                overrides: self.ratelimit.overrides.clone(),
            },
        }
    }

    /// Builds the initial desired state from the `[[vip]]` tables, the firewall rules and the
    /// rate-limit policies (already validated by [`Config::load`]; the data plane's limits are
    /// checked by `reconcile::check_limits`).
    pub fn initial_state(&self) -> Result<State, StateError> {
        self.desired()
            .to_state(self.firewall.capacity)
            .map_err(|e| xdplb_model::state::invalid("config", e.to_string()))
    }

    /// Reads and validates a configuration file. Every error names the file, the line and
    /// column, and the key (`vip[1].backend[0].weight`); nothing else is touched on the way.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_located(&text, path)
    }

    /// Parses and validates configuration text (errors without a place in a file).
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::parse`] with every error placed at `path:line:column` and a key: a syntax or
    /// type error where toml found it (the key is the one whose key or value holds that
    /// place), a semantic error at the key it names (the line of its value; of the closest
    /// enclosing key when the key itself is not in the file, e.g. a missing default).
    pub(crate) fn parse_located(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse_located_with(text, path, |c: &Config| c.validate()).map(|(c, ())| c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.listen_addr()?;
        let dp = &self.dataplane;
        if dp.interfaces.is_empty() {
            return Err(invalid(
                "dataplane.interfaces",
                "at least one interface is needed",
            ));
        }
        for (i, name) in dp.interfaces.iter().enumerate() {
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.contains(char::is_whitespace)
            {
                return Err(invalid(
                    format!("dataplane.interfaces[{i}]"),
                    format!("'{name}' is not an interface name"),
                ));
            }
            if dp.interfaces[..i].contains(name) {
                return Err(invalid(
                    format!("dataplane.interfaces[{i}]"),
                    format!("'{name}' is listed twice"),
                ));
            }
        }
        if !dp.pin_path.is_absolute() {
            return Err(invalid(
                "dataplane.pin_path",
                "must be an absolute path on a bpffs",
            ));
        }
        let [lo, hi] = self.nat.port_range;
        if lo == 0 || lo > hi {
            return Err(invalid(
                "nat.port_range",
                format!("[{lo}, {hi}] is not a range of ports 1..=65535 with start <= end"),
            ));
        }
        if self.nat.snat_address.is_unspecified()
            || self.nat.snat_address.is_broadcast()
            || self.nat.snat_address.is_multicast()
        {
            return Err(invalid(
                "nat.snat_address",
                format!("{} is not a unicast address", self.nat.snat_address),
            ));
        }
        let t = &self.tables;
        if !(1024..=1 << 27).contains(&t.conntrack_size) {
            return Err(invalid(
                "tables.conntrack_size",
                format!("{} is outside 1024..=134217728", t.conntrack_size),
            ));
        }
        if !maglev::is_prime(t.maglev_size)
            || t.maglev_size < 251
            || t.maglev_size > maglev::MAX_TABLE_SIZE
        {
            return Err(invalid(
                "tables.maglev_size",
                format!(
                    "{} must be a prime between 251 and {} (65537 is a good default)",
                    t.maglev_size,
                    maglev::MAX_TABLE_SIZE
                ),
            ));
        }
        if let Some(src) = self.ipip.source {
            if src.prefix_len() < 16 {
                return Err(invalid(
                    "ipip.source",
                    format!("{src}: use a /16 or longer prefix"),
                ));
            }
            if src.addr() != src.network() && src.prefix_len() != 32 {
                return Err(invalid(
                    "ipip.source",
                    format!("{src} has host bits set; did you mean {}?", src.trunc()),
                ));
            }
        }
        if let Some(src) = self.icmp.source {
            if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
                return Err(invalid(
                    "icmp.source",
                    format!("{src} is not a unicast address"),
                ));
            }
        }
        for (key, rate) in [
            ("icmp.errors_per_second", self.icmp.errors_per_second),
            (
                "icmp.time_exceeded_per_second",
                self.icmp.time_exceeded_per_second,
            ),
        ] {
            if rate > xdplb_model::ratelimit::MAX_RATE {
                return Err(invalid(
                    key,
                    format!(
                        "{rate} is above the most a bucket can hold ({}); 0 means no limit",
                        xdplb_model::ratelimit::MAX_RATE
                    ),
                ));
            }
        }
        for (key, d) in [
            ("timeouts.tcp", self.timeouts.tcp),
            ("timeouts.tcp_closing", self.timeouts.tcp_closing),
            ("timeouts.udp", self.timeouts.udp),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(7 * 24 * 3600) {
                return Err(invalid(
                    key,
                    format!("{} is outside 1s..=7d", humantime::format_duration(d)),
                ));
            }
        }
        if self.timeouts.nexthop_cache > MAX_NEXTHOP_CACHE {
            return Err(invalid(
                "timeouts.nexthop_cache",
                format!(
                    "{} is outside 0s..=60s (0 turns the cache off)",
                    humantime::format_duration(self.timeouts.nexthop_cache)
                ),
            ));
        }
        let cap = self.firewall.capacity;
        if cap > xdplb_model::firewall::MAX_CAPACITY {
            return Err(invalid(
                "firewall.capacity",
                format!(
                    "{cap} is outside 0..={} (0 turns the firewall off)",
                    xdplb_model::firewall::MAX_CAPACITY
                ),
            ));
        }
        let clients = self.ratelimit.clients;
        if !(1024..=1 << 27).contains(&clients) {
            return Err(invalid(
                "ratelimit.clients",
                format!("{clients} is outside 1024..=134217728"),
            ));
        }
        self.desired().to_state(self.firewall.capacity).map(drop)
    }
}

/// The desired state in the configuration file's own form: the `[[vip]]` tables (with
/// `[vip.health]` and `[[vip.backend]]`), `[firewall] block = [...]` and `allow = [...]`, and
/// `[ratelimit.default]` and `[[ratelimit.override]]`. lbd's configuration seeds the first
/// start with it ([`Config::initial_state`]); `lbctl apply` sends a file of only these tables
/// (the `Apply` RPC), whose state replaces the running one. Start-up settings
/// (`[firewall] scope`, `[ratelimit] clients`, `[dataplane]`...) are not part of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredConfig {
    #[serde(default, rename = "vip")]
    pub(crate) vips: Vec<VipConfig>,
    #[serde(default)]
    pub(crate) firewall: FirewallRulesConfig,
    #[serde(default)]
    pub(crate) ratelimit: RateLimitPoliciesConfig,
}

/// `[firewall]` of a desired-state file: the rules only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirewallRulesConfig {
    /// Source prefixes to drop ("10.0.0.0/8"; a bare address is a /32; no host bits).
    #[serde(default)]
    pub(crate) block: Vec<String>,
    /// Source prefixes to let through, exempt from rate limits (the longest prefix wins).
    #[serde(default)]
    pub(crate) allow: Vec<String>,
}

/// `[ratelimit]` of a desired-state file: the policies only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitPoliciesConfig {
    #[serde(default)]
    pub(crate) default: Option<PolicyConfig>,
    #[serde(default, rename = "override")]
    pub(crate) overrides: Vec<OverrideConfig>,
}

impl DesiredConfig {
    /// Parses and validates a desired-state file (`lbctl apply`) into the state it describes,
    /// for a firewall holding at most `firewall_capacity` rules. Errors are placed as
    /// [`Config::parse_located`] places them: `apply.toml:7:10: vip[0].backend[1].weight: ...`.
    pub(crate) fn state_from_text(
        text: &str,
        path: &Path,
        firewall_capacity: u32,
    ) -> Result<State, ConfigError> {
        parse_located_with(text, path, |d: &DesiredConfig| {
            d.to_state(firewall_capacity)
        })
        .map(|(_, state)| state)
    }

    /// The state these tables describe, every value checked, every error naming its key
    /// (`vip[0].backend[1].weight`, `firewall.block[3]`, `ratelimit.override[0].burst`).
    /// Health status and drains are not part of it (they are live, see `api::apply`).
    pub(crate) fn to_state(&self, firewall_capacity: u32) -> Result<State, ConfigError> {
        self.validate_vips()?;
        let mut state = State::default();
        let name = |prefix: &str, e: StateError| match e {
            StateError::InvalidArgument { field, message } => {
                let leaf = match field {
                    "backend.address" | "backend.port" | "vip.address" => ".address",
                    "backend.weight" => ".weight",
                    "vip.mode" | "mode" => ".mode",
                    _ => "",
                };
                invalid(format!("{prefix}{leaf}"), message)
            }
            other => invalid(prefix, other.to_string()),
        };
        for (i, vip) in self.vips.iter().enumerate() {
            let key = VipKey {
                addr: vip.address,
                proto: vip.proto,
            };
            state
                .add_vip(key, vip.mode)
                .map_err(|e| name(&format!("vip[{i}]"), e))?;
            if let Some(h) = &vip.health {
                let check = h.to_check(&format!("vip[{i}].health"))?;
                state
                    .set_health(&key, check)
                    .map_err(|e| name(&format!("vip[{i}].health"), e))?;
            }
            for (j, be) in vip.backends.iter().enumerate() {
                state
                    .add_backend(&key, be.address, be.weight)
                    .map_err(|e| name(&format!("vip[{i}].backend[{j}]"), e))?;
            }
        }
        state.firewall = self.firewall.to_firewall(firewall_capacity)?;
        state.ratelimit = self.ratelimit.to_rate_limits()?;
        Ok(state)
    }

    /// What the state refuses only with a worse key or message: addresses, a VIP or backend
    /// given twice, the health table.
    fn validate_vips(&self) -> Result<(), ConfigError> {
        for (i, vip) in self.vips.iter().enumerate() {
            let key = format!("vip[{i}]");
            xdplb_model::state::validate_vip_addr(&vip.address)
                .map_err(|m| invalid(format!("{key}.address"), m))?;
            if self.vips[..i]
                .iter()
                .any(|v| v.address == vip.address && v.proto == vip.proto)
            {
                return Err(invalid(
                    format!("{key}.address"),
                    format!("{} {} is defined twice", vip.address, vip.proto),
                ));
            }
            if let Some(h) = &vip.health {
                h.to_check(&format!("{key}.health"))?;
            }
            for (j, be) in vip.backends.iter().enumerate() {
                xdplb_model::state::validate_backend_addr(&be.address)
                    .map_err(|m| invalid(format!("{key}.backend[{j}].address"), m))?;
                if vip.backends[..j].iter().any(|b| b.address == be.address) {
                    return Err(invalid(
                        format!("{key}.backend[{j}].address"),
                        format!("{} is listed twice", be.address),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl FirewallRulesConfig {
    /// The key of rule `index` of the batch [`FirewallRulesConfig::to_firewall`] builds:
    /// `block` first, then `allow`.
    fn key_of(&self, index: usize) -> String {
        match index.checked_sub(self.block.len()) {
            None => format!("firewall.block[{index}]"),
            Some(j) => format!("firewall.allow[{j}]"),
        }
    }

    /// `rules[N]` in a message of the firewall model, as the key in this file.
    fn rename_rules(&self, message: &str) -> String {
        let mut out = String::new();
        let mut rest = message;
        while let Some(at) = rest.find("rules[") {
            out.push_str(&rest[..at]);
            let after = &rest[at + "rules[".len()..];
            match after
                .split_once(']')
                .and_then(|(n, tail)| Some((n.parse().ok()?, tail)))
            {
                Some((n, tail)) => {
                    out.push_str(&self.key_of(n));
                    rest = tail;
                }
                None => {
                    out.push_str("rules[");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The rules, validated (strict prefixes, no prefix in both lists) and checked against the
    /// firewall's capacity.
    fn to_firewall(&self, capacity: u32) -> Result<xdplb_model::firewall::Firewall, ConfigError> {
        use xdplb_model::firewall::{parse_cidr, Action, Firewall, RuleBatch};
        let mut batch = RuleBatch::default();
        let rules = self
            .block
            .iter()
            .map(|p| (p, Action::Block))
            .chain(self.allow.iter().map(|p| (p, Action::Allow)));
        for (index, (prefix, action)) in rules.enumerate() {
            let net = parse_cidr(prefix).map_err(|e| invalid(self.key_of(index), e.to_string()))?;
            batch
                .push(index, net, action)
                .map_err(|e| invalid(self.key_of(e.index), self.rename_rules(&e.message)))?;
        }
        let mut firewall = Firewall::default();
        if batch.is_empty() {
            return Ok(firewall);
        }
        firewall
            .replace(None, &batch, capacity as usize)
            .map_err(|e| {
                let message = match e {
                    StateError::InvalidArgument { message, .. } => message,
                    other => other.to_string(),
                };
                invalid("firewall", self.rename_rules(&message))
            })?;
        Ok(firewall)
    }
}

impl RateLimitPoliciesConfig {
    /// The default policy (no limit when absent) and the overrides, validated.
    fn to_rate_limits(&self) -> Result<xdplb_model::ratelimit::RateLimits, ConfigError> {
        use xdplb_model::ratelimit::{parse_cidr, RateLimits};
        let named = |key: &str, e: StateError| match e {
            StateError::InvalidArgument { field, message } => {
                invalid(format!("{key}.{field}"), message)
            }
            other => invalid(key, other.to_string()),
        };
        let mut rl = RateLimits::default();
        if let Some(d) = &self.default {
            rl.set(None, d.policy())
                .map_err(|e| named("ratelimit.default", e))?;
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let key = format!("ratelimit.override[{i}]");
            let net =
                parse_cidr(&o.cidr).map_err(|e| invalid(format!("{key}.cidr"), e.to_string()))?;
            if rl.overrides.contains_key(&net) {
                return Err(invalid(
                    format!("{key}.cidr"),
                    format!("{net} is listed twice"),
                ));
            }
            rl.set(Some(net), o.policy()).map_err(|e| named(&key, e))?;
        }
        Ok(rl)
    }
}

/// Parses `text` as a `T` and runs `build` on it, every error placed at `path:line:column`
/// with its key (see [`Config::parse_located`]).
fn parse_located_with<T: serde::de::DeserializeOwned, R>(
    text: &str,
    path: &Path,
    build: impl FnOnce(&T) -> Result<R, ConfigError>,
) -> Result<(T, R), ConfigError> {
    let doc = toml::de::DeTable::parse(text).ok();
    let at = |offset: usize, key: Option<String>, message: String| {
        let (line, column) = line_col(text, offset);
        ConfigError::At {
            path: path.to_owned(),
            line,
            column,
            key,
            message,
        }
    };
    let parsed: T = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let key = doc
                .as_ref()
                .and_then(|d| key_at(d.get_ref(), offset))
                .filter(|k| !k.is_empty());
            return Err(at(offset, key, e.message().trim().replace('\n', " ")));
        }
    };
    let built = build(&parsed).map_err(|e| match e {
        ConfigError::Invalid { key, message } => {
            let offset = doc.as_ref().map_or(0, |d| span_of(d.get_ref(), &key).start);
            at(offset, Some(key), message)
        }
        other => other,
    })?;
    Ok((parsed, built))
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One step of a key path: a table key or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `vip[0].backend[1].address` -> Key(vip) Index(0) Key(backend) Index(1) Key(address).
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or("");
        }
    }
    out
}

/// The span of the value at `path` in the parsed document, or of the deepest part of the path
/// that is there (a key left to its default is reported at its table).
fn span_of(doc: &toml::de::DeTable<'_>, path: &str) -> std::ops::Range<usize> {
    use toml::de::DeValue;
    let mut span = 0..0;
    let mut table = Some(doc);
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    for step in steps(path) {
        let next = match (step, table, array) {
            (Step::Key(k), Some(t), _) => {
                t.iter()
                    .find(|(key, _)| key.get_ref() == k)
                    .map(|(key, v)| {
                        // A table's own span can be just its header; the key names the place better.
                        match v.get_ref() {
                            DeValue::Table(_) | DeValue::Array(_) => (key.span(), v),
                            _ => (v.span(), v),
                        }
                    })
            }
            (Step::Index(i), _, Some(a)) => a.get(i).map(|v| (v.span(), v)),
            _ => None,
        };
        let Some((s, v)) = next else { break };
        span = s;
        table = v.get_ref().as_table();
        array = v.get_ref().as_array();
    }
    span
}

/// The key path (`vip[0].backend[1].weight`) whose key or value covers byte `offset`.
fn key_at(doc: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    use toml::de::DeValue;
    fn walk(v: &DeValue<'_>, offset: usize, path: &str) -> Option<String> {
        match v {
            DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                let here = if path.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{path}.{}", k.get_ref())
                };
                walk(v.get_ref(), offset, &here).or_else(|| {
                    (k.span().contains(&offset) || v.span().contains(&offset)).then_some(here)
                })
            }),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                let here = format!("{path}[{i}]");
                walk(v.get_ref(), offset, &here).or_else(|| {
                    (!v.get_ref().is_table() && v.span().contains(&offset)).then_some(here)
                })
            }),
            _ => None,
        }
    }
    walk(&DeValue::Table(doc.clone()), offset, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[dataplane]\ninterfaces = [\"eth0\"]\n[nat]\nsnat_address = \"10.0.1.1\"\n";

    fn err(text: &str) -> String {
        Config::parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Native);
        assert_eq!(c.nat.port_range, [20000, 32767]);
        assert!(c.nat.reserve_ports);
        assert!(c.dataplane.blackhole_routes);
        assert_eq!(c.tables.maglev_size, 65537);
        assert_eq!(c.timeouts.tcp, Duration::from_secs(300));
        assert!(c.vips.is_empty());
    }

    #[test]
    fn example_config_in_repo_parses() {
        let text = include_str!("../examples/lbd.toml");
        let c = Config::parse(text).expect("examples/lbd.toml parses");
        assert_eq!(c.firewall.capacity, xdplb_model::firewall::DEFAULT_CAPACITY);
        assert_eq!(c.ratelimit.clients, xdplb_model::ratelimit::DEFAULT_CLIENTS);
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[0].backends.len(), 2);
        assert!(c.vips[0].health_check().expect("valid").is_checked());
        assert_eq!(
            c.metrics.listen_addr().expect("valid"),
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
    }

    #[test]
    fn listen_values() {
        assert_eq!(
            parse_metrics_listen("127.0.0.1:9469").expect("valid"),
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
        assert_eq!(parse_metrics_listen("none").expect("valid"), None);
        assert_eq!(parse_metrics_listen("").expect("valid"), None);
        assert_eq!(
            parse_metrics_listen("[::1]:9469").expect("valid"),
            Some("[::1]:9469".parse().expect("addr"))
        );
        assert!(parse_metrics_listen("localhost").is_err());
        assert!(parse_metrics_listen("9469").is_err());
    }

    #[test]
    fn metrics_listen() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        assert_eq!(c.metrics.listen, DEFAULT_METRICS_LISTEN);
        let with = |v: &str| format!("{MINIMAL}[metrics]\nlisten = \"{v}\"\n");
        let off = Config::parse(&with("none")).expect("none disables");
        assert_eq!(off.metrics.listen_addr().expect("valid"), None);
        let on = Config::parse(&with("0.0.0.0:9100")).expect("an address");
        assert_eq!(
            on.metrics.listen_addr().expect("valid"),
            Some("0.0.0.0:9100".parse().expect("addr"))
        );
        assert!(err(&with("localhost:9469")).starts_with("metrics.listen:"));
        assert!(err(&format!("{MINIMAL}[metrics]\nlisen = \"x\"\n")).contains("lisen"));
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
            [dataplane]
            interfaces = ["eth0", "eth1"]
            xdp_mode = "generic"
            pin_path = "/sys/fs/bpf/lb-test"
            [nat]
            snat_address = "10.0.1.1"
            port_range = [20000, 29999]
            [tables]
            conntrack_size = 65536
            maglev_size = 4099
            [timeouts]
            tcp = "1h"
            tcp_closing = "5s"
            udp = "20s"
            nexthop_cache = "0s"
            [api]
            socket = "/tmp/x.sock"
            grpc_listen = "127.0.0.1:50051"
            [[vip]]
            address = "10.0.0.10:80"
            proto = "tcp"
            [[vip.backend]]
            address = "10.0.2.1:8080"
            weight = 50
        "#;
        let c = Config::parse(text).expect("parses");
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Generic);
        assert_eq!(c.timeouts.tcp, Duration::from_secs(3600));
        assert_eq!(c.timeouts.nexthop_cache, Duration::ZERO);
        assert_eq!(c.vips[0].backends[0].weight, 50);
        assert_eq!(c.vips[0].mode, Mode::Nat);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err(&MINIMAL.replace("[nat]", "[nat]\nport_range = [30000, 20000]"))
                .starts_with("nat.port_range:")
        );
        assert!(err(&MINIMAL.replace("10.0.1.1", "0.0.0.0")).starts_with("nat.snat_address:"));
        assert!(err(&MINIMAL.replace("[\"eth0\"]", "[]")).starts_with("dataplane.interfaces:"));
        assert!(err(&MINIMAL.replace("[\"eth0\"]", "[\"eth0\", \"eth0\"]"))
            .starts_with("dataplane.interfaces[1]:"));
        assert!(err(&format!("{MINIMAL}[tables]\nmaglev_size = 65536\n"))
            .starts_with("tables.maglev_size:"));
        assert!(err(&format!("{MINIMAL}[timeouts]\nudp = \"0s\"\n")).starts_with("timeouts.udp:"));
        assert!(
            err(&format!("{MINIMAL}[timeouts]\nnexthop_cache = \"61s\"\n"))
                .starts_with("timeouts.nexthop_cache:")
        );
        let dup = format!("{MINIMAL}[[vip]]\naddress = \"10.0.0.1:80\"\nproto = \"tcp\"\n[[vip.backend]]\naddress = \"10.0.2.1:80\"\n[[vip.backend]]\naddress = \"10.0.2.1:80\"\n");
        assert!(
            err(&dup).starts_with("vip[0].backend[1].address:"),
            "{}",
            err(&dup)
        );
        let port0 = format!("{MINIMAL}[[vip]]\naddress = \"10.0.0.1:0\"\nproto = \"tcp\"\n");
        assert!(
            err(&port0).starts_with("vip[0].address:"),
            "{}",
            err(&port0)
        );
    }

    #[test]
    fn firewall_table_defaults_and_limits() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        assert_eq!(c.firewall.scope, xdplb_model::firewall::Scope::Vips);
        assert_eq!(c.firewall.capacity, 1_000_000);
        let c = Config::parse(&format!(
            "{MINIMAL}[firewall]\nscope = \"all\"\ncapacity = 4096\n"
        ))
        .expect("firewall table parses");
        assert_eq!(c.firewall.scope, xdplb_model::firewall::Scope::All);
        assert_eq!(c.firewall.capacity, 4096);
        let off = Config::parse(&format!("{MINIMAL}[firewall]\ncapacity = 0\n"))
            .expect("capacity 0 turns the firewall off");
        assert_eq!(off.firewall.capacity, 0);
        assert!(err(&format!("{MINIMAL}[firewall]\ncapacity = 16777217\n"))
            .starts_with("firewall.capacity:"));
        assert!(err(&format!("{MINIMAL}[firewall]\nscope = \"some\"\n")).contains("scope"));
        assert!(err(&format!("{MINIMAL}[firewall]\nsize = 10\n")).contains("size"));
    }

    #[test]
    fn parse_errors_mention_the_key() {
        // serde/toml name the unknown or ill-typed key themselves.
        assert!(
            err(&MINIMAL.replace("[nat]", "[nat]\nsnat_adress = \"1.2.3.4\""))
                .contains("snat_adress")
        );
        assert!(err(&MINIMAL.replace("\"10.0.1.1\"", "\"10.0.1\"")).contains("snat_address"));
        assert!(
            err(&MINIMAL.replace("interfaces", "xdp_mode = \"fast\"\ninterfaces"))
                .contains("xdp_mode")
        );
    }

    fn with_health(table: &str) -> String {
        format!(
            "{MINIMAL}[[vip]]\naddress = \"10.0.0.1:80\"\nproto = \"tcp\"\n[vip.health]\n{table}\n"
        )
    }

    #[test]
    fn vip_health_table() {
        use xdplb_model::health::{AllDown, HealthCheck, HealthKind};
        let c = Config::parse(&with_health(
            "proto = \"http:/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 4\nfall = 5\nall_down = \"drop\"\nhttp_status = 204",
        ))
        .expect("health table parses");
        assert_eq!(
            c.vips[0].health_check().expect("valid"),
            HealthCheck {
                kind: HealthKind::Http {
                    path: "/healthz".into(),
                    expect_status: 204
                },
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(100),
                rise: 4,
                fall: 5,
                all_down: AllDown::Drop,
            }
        );
        // lbctl's defaults for what is left out; the state built from it carries the check.
        let c = Config::parse(&with_health("proto = \"udp\"")).expect("parses");
        let h = c.vips[0].health_check().expect("valid");
        assert_eq!(
            h,
            HealthCheck {
                kind: HealthKind::Udp {
                    payload: "ping".into()
                },
                ..HealthCheck::default()
            }
        );
        let state = c.initial_state().expect("state");
        assert_eq!(
            state.vips.values().next().map(|v| v.health.clone()),
            Some(h)
        );
        let tcp = Config::parse(&with_health("proto = \"TCP\"\nall_down = \"fail-open\""))
            .expect("parses");
        assert_eq!(
            tcp.vips[0].health_check().expect("valid").kind,
            HealthKind::Tcp
        );
        let none = Config::parse(&with_health("proto = \"none\"")).expect("parses");
        assert!(!none.vips[0].health_check().expect("valid").is_checked());
        // No table: not checked.
        let plain = format!("{MINIMAL}[[vip]]\naddress = \"10.0.0.1:80\"\nproto = \"tcp\"\n");
        let c = Config::parse(&plain).expect("parses");
        assert_eq!(
            c.vips[0].health_check().expect("valid"),
            HealthCheck::default()
        );
    }

    #[test]
    fn vip_health_errors_name_the_key() {
        for (table, key) in [
            ("proto = \"icmp\"", "vip[0].health.proto:"),
            ("proto = \"http:healthz\"", "vip[0].health.proto:"),
            ("proto = \"ftp:/x\"", "vip[0].health.proto:"),
            (
                "proto = \"tcp\"\ninterval = \"10ms\"",
                "vip[0].health.interval:",
            ),
            (
                "proto = \"tcp\"\ninterval = \"2h\"",
                "vip[0].health.interval:",
            ),
            (
                "proto = \"tcp\"\ninterval = \"1s\"\ntimeout = \"1s\"",
                "vip[0].health.timeout:",
            ),
            ("proto = \"tcp\"\nrise = 0", "vip[0].health.rise:"),
            ("proto = \"tcp\"\nfall = 101", "vip[0].health.fall:"),
            (
                "proto = \"http:/\"\nhttp_status = 99",
                "vip[0].health.http_status:",
            ),
            (
                "proto = \"tcp\"\nhttp_status = 200",
                "vip[0].health.http_status:",
            ),
            (
                "proto = \"http:/\"\nudp_payload = \"x\"",
                "vip[0].health.udp_payload:",
            ),
            (
                "proto = \"udp\"\nudp_payload = \"\"",
                "vip[0].health.udp_payload:",
            ),
        ] {
            let e = err(&with_health(table));
            assert!(e.starts_with(key), "{table:?}: {e}");
        }
        // serde names unknown and ill-typed keys itself.
        for (table, word) in [
            ("proto = \"tcp\"\nintervall = \"1s\"", "intervall"),
            ("proto = \"tcp\"\nall_down = \"maybe\"", "all_down"),
            ("proto = \"tcp\"\ninterval = \"soon\"", "interval"),
            ("interval = \"1s\"", "proto"),
        ] {
            let e = err(&with_health(table));
            assert!(e.contains(word), "{table:?}: {e}");
        }
    }

    #[test]
    fn located_errors_give_file_line_and_key() {
        let path = Path::new("/etc/xdplb/lbd.toml");
        let located = |text: &str| {
            Config::parse_located(text, path)
                .expect_err("refused")
                .to_string()
        };
        // A type error: where toml saw it, with the key whose value it is.
        assert_eq!(
            located(&MINIMAL.replace("\"10.0.1.1\"", "\"10.0.1\"")),
            "/etc/xdplb/lbd.toml:4:16: nat.snat_address: invalid IPv4 address syntax"
        );
        // A semantic error: at the value of the key it names, array indices included.
        let text = format!(
            "{MINIMAL}[[vip]]\naddress = \"10.0.0.1:80\"\nproto = \"tcp\"\n[[vip.backend]]\naddress = \"10.0.2.1:80\"\nweight = 2000000\n"
        );
        assert_eq!(
            located(&text),
            "/etc/xdplb/lbd.toml:10:10: vip[0].backend[0].weight: 2000000 is above the maximum 1000000"
        );
        // A syntax error has no key.
        assert_eq!(
            located("[dataplane\n"),
            "/etc/xdplb/lbd.toml:1:11: unclosed table, expected `]`"
        );
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
    }

    #[test]
    fn ratelimit_clients_default_and_bounds() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        assert_eq!(c.ratelimit.clients, 1_000_000);
        let c = Config::parse(&format!("{MINIMAL}[ratelimit]\nclients = 4096\n")).expect("parses");
        assert_eq!(c.ratelimit.clients, 4096);
        assert!(
            err(&format!("{MINIMAL}[ratelimit]\nclients = 10\n")).starts_with("ratelimit.clients:")
        );
        assert!(err(&format!("{MINIMAL}[ratelimit]\nrate = 10\n")).contains("rate"));
    }

    #[test]
    fn firewall_rules_and_rate_limits_seed_the_state() {
        use xdplb_model::firewall::Action;
        use xdplb_model::ratelimit::{Policy, Scope};
        let text = format!(
            "{MINIMAL}[firewall]\ncapacity = 4096\nblock = [\"10.0.0.0/8\"]\nallow = [\"10.1.0.0/16\"]\n\
             [ratelimit]\nclients = 4096\n[ratelimit.default]\nrate = 100\nburst = 10\n\
             [[ratelimit.override]]\ncidr = \"192.0.2.0/24\"\nrate = 5\nburst = 1\nscope = \"new-flows\"\n"
        );
        let c = Config::parse(&text).expect("parses");
        let s = c.initial_state().expect("state");
        assert_eq!(
            s.firewall.get(&"10.0.0.0/8".parse().unwrap()),
            Some(Action::Block)
        );
        assert_eq!(
            s.firewall.get(&"10.1.0.0/16".parse().unwrap()),
            Some(Action::Allow)
        );
        assert_eq!(
            s.ratelimit.default,
            Policy {
                rate: 100,
                burst: 10,
                scope: Scope::All
            }
        );
        assert_eq!(
            s.ratelimit.overrides[&"192.0.2.0/24".parse().unwrap()].scope,
            Scope::NewFlows
        );
        // Errors name the key, also against the capacity of this file.
        let path = Path::new("lbd.toml");
        let located = |t: &str| {
            Config::parse_located(t, path)
                .expect_err("refused")
                .to_string()
        };
        let e = located(&text.replace("\"10.1.0.0/16\"", "\"10.1.0.1/16\""));
        assert!(
            e.starts_with("lbd.toml:8:10: firewall.allow[0]: 10.1.0.1/16 has host bits"),
            "{e}"
        );
        let e = located(&text.replace("capacity = 4096", "capacity = 1"));
        assert!(
            e.contains("firewall: the firewall would hold 2 rules"),
            "{e}"
        );
        let e = located(&text.replace("burst = 10", "burst = 0"));
        assert!(
            e.starts_with("lbd.toml:13:9: ratelimit.default.burst: "),
            "{e}"
        );
    }

    #[test]
    fn blackhole_routes_switch() {
        let off = MINIMAL.replace("[nat]", "blackhole_routes = false\n[nat]");
        let c = Config::parse(&off).expect("parses");
        assert!(!c.dataplane.blackhole_routes);
        let path = Path::new("lbd.toml");
        let bad = MINIMAL.replace("[nat]", "blackhole_routes = \"no\"\n[nat]");
        let e = Config::parse_located(&bad, path)
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with("lbd.toml:3:20: dataplane.blackhole_routes: "),
            "{e}"
        );
    }
}
