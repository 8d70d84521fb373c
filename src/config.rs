//! `lbd`'s TOML configuration file: parsing, defaults, and validation that names the offending key.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::maglev;
use crate::state::{Mode, Protocol};

/// Where `lbd` keeps its gRPC socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/lbd.sock";
/// The bpffs directory for pinned maps unless told otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xdplb";

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
}

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
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub ipip: IpipConfig,
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
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Native
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatConfig {
    /// Source address of NATed packets towards backends (an address of this host).
    pub snat_address: Ipv4Addr,
    /// Inclusive range of source ports used towards backends.
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
}

fn default_port_range() -> [u16; 2] {
    [20000, 60999]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// Entries of each NAT conntrack table (forward and reverse).
    pub conntrack_size: u32,
    /// Maglev table size per VIP (a prime).
    pub maglev_size: u32,
}

impl Default for TablesConfig {
    fn default() -> Self {
        Self {
            conntrack_size: 1 << 20,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Idle timeout of an established TCP flow.
    #[serde(with = "humantime_serde")]
    pub tcp: Duration,
    /// Idle timeout of a TCP flow after FIN or RST.
    #[serde(with = "humantime_serde")]
    pub tcp_closing: Duration,
    /// Idle timeout of a UDP flow.
    #[serde(with = "humantime_serde")]
    pub udp: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(300),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }
}

/// IPIP DSR settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpipConfig {
    /// Outer source of IPIP packets: an address of this host (`10.0.1.1/32`), or a prefix whose
    /// host bits vary per flow so that receivers spread flows across queues (`10.0.9.0/24`).
    /// Defaults to `nat.snat_address`/32.
    pub source: Option<ipnet::Ipv4Net>,
}

impl Config {
    /// The IPIP outer source prefix in force.
    pub fn ipip_source(&self) -> ipnet::Ipv4Net {
        self.ipip.source.unwrap_or_else(|| {
            ipnet::Ipv4Net::new(self.nat.snat_address, 32).expect("/32 is a valid prefix")
        })
    }
}

/// The CIDR firewall: which packets it sees and how many rules it can hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// `vips`: only packets addressed to a VIP; `all`: every IPv4 packet on lbd's interfaces.
    pub scope: crate::firewall::Scope,
    /// Most rules (LPM trie entries; also the per-CPU hit counters: 8 bytes per rule per CPU).
    pub capacity: u32,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            scope: crate::firewall::Scope::default(),
            capacity: crate::firewall::DEFAULT_CAPACITY,
        }
    }
}

/// Per-client rate limiting: how many clients get a bucket of their own. Policies are set with
/// lbctl (`lbctl ratelimit set`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Client buckets (an LRU table: when full, the least recently seen client is forgotten and
    /// starts again with a full burst). About 100 bytes each.
    pub clients: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            clients: crate::ratelimit::DEFAULT_CLIENTS,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket of the gRPC API (mode 0600).
    pub socket: Option<PathBuf>,
    /// Optional TCP listener of the gRPC API.
    pub grpc_listen: Option<std::net::SocketAddr>,
}

/// The Prometheus endpoint (`GET /metrics`, see `crate::metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `ADDR:PORT` to serve `/metrics` on, or `"none"` (or empty) for no endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: crate::metrics::DEFAULT_LISTEN.to_string(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve metrics on; `None` when disabled.
    pub fn listen_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        crate::metrics::parse_listen(&self.listen)
            .map_err(|e| invalid("metrics.listen", e.to_string()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// "ADDR:PORT"
    pub address: SocketAddrV4,
    pub proto: Protocol,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// "ADDR:PORT"
    pub address: SocketAddrV4,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    crate::state::DEFAULT_WEIGHT
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
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
        let cap = self.firewall.capacity;
        if !(1..=crate::firewall::MAX_CAPACITY).contains(&cap) {
            return Err(invalid(
                "firewall.capacity",
                format!("{cap} is outside 1..={}", crate::firewall::MAX_CAPACITY),
            ));
        }
        let clients = self.ratelimit.clients;
        if !(1024..=1 << 27).contains(&clients) {
            return Err(invalid(
                "ratelimit.clients",
                format!("{clients} is outside 1024..=134217728"),
            ));
        }
        for (i, vip) in self.vips.iter().enumerate() {
            let key = format!("vip[{i}]");
            crate::state::validate_vip_addr(&vip.address)
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
            for (j, be) in vip.backends.iter().enumerate() {
                crate::state::validate_backend_addr(&be.address)
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
        assert_eq!(c.nat.port_range, [20000, 60999]);
        assert_eq!(c.tables.maglev_size, 65537);
        assert_eq!(c.timeouts.tcp, Duration::from_secs(300));
        assert!(c.vips.is_empty());
    }

    #[test]
    fn example_config_in_repo_parses() {
        let text = include_str!("../examples/lbd.toml");
        let c = Config::parse(text).expect("examples/lbd.toml parses");
        assert_eq!(c.firewall.capacity, crate::firewall::DEFAULT_CAPACITY);
        assert_eq!(c.ratelimit.clients, crate::ratelimit::DEFAULT_CLIENTS);
        assert_eq!(c.vips.len(), 2);
        assert_eq!(c.vips[0].backends.len(), 2);
        assert_eq!(
            c.metrics.listen_addr().expect("valid"),
            Some("127.0.0.1:9469".parse().expect("addr"))
        );
    }

    #[test]
    fn metrics_listen() {
        let c = Config::parse(MINIMAL).expect("minimal config parses");
        assert_eq!(c.metrics.listen, crate::metrics::DEFAULT_LISTEN);
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
        assert_eq!(c.firewall.scope, crate::firewall::Scope::Vips);
        assert_eq!(c.firewall.capacity, 1_000_000);
        let c = Config::parse(&format!(
            "{MINIMAL}[firewall]\nscope = \"all\"\ncapacity = 4096\n"
        ))
        .expect("firewall table parses");
        assert_eq!(c.firewall.scope, crate::firewall::Scope::All);
        assert_eq!(c.firewall.capacity, 4096);
        assert!(
            err(&format!("{MINIMAL}[firewall]\ncapacity = 0\n")).starts_with("firewall.capacity:")
        );
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
}
