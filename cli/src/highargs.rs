//! "High" arguments: the validated, typed values that every command group shares (where lbd
//! is, VIPs, backends, modes, durations), built from `lowargs` before any RPC is made. A value
//! that does not validate becomes an [`ArgError`] (printed as one line, exit 2). The command
//! tree itself is checked in `command`.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

// The VIP types are the model's (their pb messages come from xdplb-proto's conversions).
use xdplb_model::ifname::is_interface_name;
pub use xdplb_model::state::{Mode, Protocol, VipKey};

use crate::lowargs::{BackendRefArgs, LowArgs, VipFlag, VipPositional};

/// Where lbd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// gRPC over a Unix stream socket at this path.
    Unix(PathBuf),
    /// gRPC over TCP at this `http://` URL.
    Tcp(String),
    /// gRPC over TCP with TLS at this `https://` URL.
    Tls { url: String, tls: TlsFiles },
}

/// The PEM files of a TLS connection to lbd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that lbd's certificate must be signed by.
    pub ca: PathBuf,
    /// Client certificate and key (lbd refuses a client without them).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Tcp(url) | Target::Tls { url, .. } => f.write_str(url),
        }
    }
}

/// The global options, checked: where lbd is, output format, timeout. Every command group
/// takes these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    pub target: Target,
    pub json: bool,
    pub timeout: Duration,
}

impl TryFrom<&LowArgs> for Globals {
    type Error = ArgError;

    fn try_from(low: &LowArgs) -> Result<Self, ArgError> {
        Ok(Globals {
            target: target(
                low.addr.clone(),
                low.socket.clone(),
                low.tls_ca.clone(),
                low.tls_cert.clone(),
                low.tls_key.clone(),
            )?,
            json: low.json,
            timeout: parse_duration("--timeout", &low.timeout)?,
        })
    }
}

/// A value that failed validation: `invalid --vip '10.0.0.1': expected ADDR:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The flag (`--vip`) or positional name (`BACKEND`) the value came from.
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} '{}': expected {}",
            self.what, self.value, self.expected
        )
    }
}

impl std::error::Error for ArgError {}

pub fn invalid(what: &'static str, value: &str, expected: impl Into<String>) -> ArgError {
    ArgError {
        what,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

pub fn vip_positional(args: &VipPositional) -> Result<VipKey, ArgError> {
    Ok(VipKey {
        addr: parse_addr_port("VIP", &args.vip)?,
        proto: parse_proto("--proto", &args.proto)?,
    })
}

pub fn vip_flag(args: &VipFlag) -> Result<VipKey, ArgError> {
    Ok(VipKey {
        addr: parse_addr_port("--vip", &args.vip)?,
        proto: parse_proto("--proto", &args.proto)?,
    })
}

pub fn backend_ref(args: &BackendRefArgs) -> Result<(VipKey, SocketAddrV4), ArgError> {
    Ok((
        vip_flag(&args.vip)?,
        parse_addr_port("BACKEND", &args.backend)?,
    ))
}

/// The first backend that appears twice in `backends`.
pub fn first_repeat(backends: &[SocketAddrV4]) -> Option<SocketAddrV4> {
    let mut seen = std::collections::HashSet::with_capacity(backends.len());
    backends.iter().find(|b| !seen.insert(**b)).copied()
}

/// Parses a backend list: one `ADDR:PORT [WEIGHT]` per line, `#` starts a comment, blank lines
/// are skipped; a line without a weight gets `weight`. Errors name the line (1-based).
pub fn parse_backend_list(
    text: &str,
    weight: u32,
) -> Result<Vec<(SocketAddrV4, u32)>, (usize, ArgError)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let parsed = (|| {
            let addr = parse_addr_port("BACKEND", words.next().unwrap_or(""))?;
            let w = match words.next() {
                Some(w) => parse_weight("WEIGHT", w)?,
                None => weight,
            };
            if words.next().is_some() {
                return Err(invalid("line", line, "ADDR:PORT [WEIGHT]"));
            }
            Ok((addr, w))
        })();
        out.push(parsed.map_err(|e| (n + 1, e))?);
    }
    Ok(out)
}

/// `10.0.0.10` -> Ipv4Addr (no port).
pub fn parse_ipv4(what: &'static str, s: &str) -> Result<Ipv4Addr, ArgError> {
    s.parse().map_err(|_| {
        if parse_addr_port(what, s).is_ok() {
            invalid(what, s, "an IPv4 address without a port, like 10.0.0.10")
        } else {
            invalid(what, s, "an IPv4 address like 10.0.0.10")
        }
    })
}

/// `l2dsr` / `ipip`, any case: the modes whose backends need preparing.
pub fn parse_dsr_mode(what: &'static str, s: &str) -> Result<Mode, ArgError> {
    match parse_mode(what, s) {
        Ok(mode @ (Mode::L2dsr | Mode::Ipip)) => Ok(mode),
        Ok(Mode::Nat) => Err(invalid(
            what,
            s,
            "l2dsr or ipip (a NAT backend needs no preparation)",
        )),
        Err(_) => Err(invalid(what, s, "l2dsr or ipip")),
    }
}

/// An interface name as Linux allows it: 1..15 bytes, no '/', ':' or white space, not lo.
pub fn parse_ifname(what: &'static str, s: &str) -> Result<String, ArgError> {
    if s == "lo" {
        return Err(invalid(
            what,
            s,
            "the interface the VIP's traffic arrives on (the VIP itself goes on lo)",
        ));
    }
    if is_interface_name(s) {
        Ok(s.to_owned())
    } else {
        Err(invalid(
            what,
            s,
            "an interface name (1-15 bytes, no '/', ':' or spaces)",
        ))
    }
}

/// `10.0.0.10:80` -> SocketAddrV4, IPv4 only, port 1..65535.
pub fn parse_addr_port(what: &'static str, s: &str) -> Result<SocketAddrV4, ArgError> {
    let Some((ip, port)) = s.rsplit_once(':') else {
        return Err(invalid(what, s, "ADDR:PORT"));
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| {
        if ip.contains(':') || ip.starts_with('[') {
            invalid(
                what,
                s,
                "ADDR:PORT with an IPv4 ADDR (IPv6 is not supported yet)",
            )
        } else {
            invalid(what, s, "ADDR:PORT with an IPv4 ADDR")
        }
    })?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(SocketAddrV4::new(ip, port)),
        _ => Err(invalid(what, s, "ADDR:PORT with PORT in 1..65535")),
    }
}

/// `tcp` / `udp`, any case.
pub fn parse_proto(what: &'static str, s: &str) -> Result<Protocol, ArgError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(invalid(what, s, "tcp or udp")),
    }
}

/// `nat` / `l2dsr` / `ipip`, any case.
pub fn parse_mode(what: &'static str, s: &str) -> Result<Mode, ArgError> {
    match s.to_ascii_lowercase().as_str() {
        "nat" => Ok(Mode::Nat),
        "l2dsr" => Ok(Mode::L2dsr),
        "ipip" => Ok(Mode::Ipip),
        _ => Err(invalid(what, s, "nat, l2dsr or ipip")),
    }
}

/// A u32 weight (0 = drained).
pub fn parse_weight(what: &'static str, s: &str) -> Result<u32, ArgError> {
    s.parse::<u32>()
        .map_err(|_| invalid(what, s, format!("an integer in 0..{}", u32::MAX)))
}

/// `5s`, `500ms`, `1m`, or a bare number of seconds; must be positive.
pub fn parse_duration(what: &'static str, s: &str) -> Result<Duration, ArgError> {
    let err = || invalid(what, s, "a positive duration like 5s, 500ms or 1m");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
        _ => return Err(err()),
    };
    if d.is_zero() {
        return Err(err());
    }
    Ok(d)
}

/// lbd URL for TCP: `http://HOST:PORT`; a bare `HOST:PORT` gets `http://` prepended.
/// Where to connect: the Unix socket, or `--addr` over TCP, with TLS when `--tls-ca` is given
/// or the URL is `https://`.
fn target(
    addr: Option<String>,
    socket: PathBuf,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Target, ArgError> {
    let shown = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (c, None) => return Err(invalid("--tls-cert", &shown(&c), "--tls-key with it")),
        (None, k) => return Err(invalid("--tls-key", &shown(&k), "--tls-cert with it")),
    };
    let Some(addr) = addr else {
        if let Some(ca) = ca {
            return Err(invalid(
                "--tls-ca",
                &ca.display().to_string(),
                "--addr too (the Unix socket never uses TLS)",
            ));
        }
        if let Some((c, _)) = identity {
            return Err(invalid(
                "--tls-cert",
                &c.display().to_string(),
                "--addr and --tls-ca too (the Unix socket never uses TLS)",
            ));
        }
        return Ok(Target::Unix(socket));
    };
    let https = addr.starts_with("https://");
    match ca {
        Some(ca) => {
            let rest = addr
                .strip_prefix("https://")
                .or_else(|| addr.strip_prefix("http://"))
                .unwrap_or(&addr);
            let url = parse_url("--addr", rest)?.replacen("http://", "https://", 1);
            Ok(Target::Tls {
                url,
                tls: TlsFiles { ca, identity },
            })
        }
        None if https => Err(invalid(
            "--addr",
            &addr,
            "--tls-ca with an https:// URL (and --tls-cert/--tls-key for lbd's client check)",
        )),
        None if identity.is_some() => Err(invalid(
            "--tls-cert",
            &shown(&identity.map(|(c, _)| c)),
            "--tls-ca too (the CA that signed lbd's certificate)",
        )),
        None => Ok(Target::Tcp(parse_url("--addr", &addr)?)),
    }
}

pub fn parse_url(what: &'static str, s: &str) -> Result<String, ArgError> {
    let url = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let ok = url.starts_with("http://")
        && tonic::transport::Endpoint::from_shared(url.clone()).is_ok()
        && url.len() > "http://".len();
    if ok {
        Ok(url)
    } else {
        Err(invalid(
            what,
            s,
            "a URL like http://127.0.0.1:50051 (https:// with --tls-ca for TLS)",
        ))
    }
}
