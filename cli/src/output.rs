//! Rendering of lbd replies: aligned human tables and the `--json` documents (serde views
//! of the protobuf messages, with enums spelled as lbctl accepts them: "tcp", "nat", ...).

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::pb;

/// Protocol as a word: "tcp", "udp", "unspecified" or "unknown(N)".
pub fn proto_name(raw: i32) -> String {
    match pb::Protocol::try_from(raw) {
        Ok(pb::Protocol::Tcp) => "tcp".into(),
        Ok(pb::Protocol::Udp) => "udp".into(),
        Ok(pb::Protocol::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// Forwarding mode as a word: "nat", "l2dsr", "ipip", "unspecified" or "unknown(N)".
pub fn mode_name(raw: i32) -> String {
    match pb::ForwardingMode::try_from(raw) {
        Ok(pb::ForwardingMode::Nat) => "nat".into(),
        Ok(pb::ForwardingMode::L2dsr) => "l2dsr".into(),
        Ok(pb::ForwardingMode::Ipip) => "ipip".into(),
        Ok(pb::ForwardingMode::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// `10.0.0.10:80/tcp`
pub fn vip_label(key: &pb::VipKey) -> String {
    format!("{}:{}/{}", key.address, key.port, proto_name(key.protocol))
}

fn weight_label(weight: u32) -> String {
    if weight == 0 {
        "0 (drained)".into()
    } else {
        weight.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// JSON views

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VipKeyJson {
    pub address: String,
    pub port: u32,
    pub protocol: String,
}

impl From<&pb::VipKey> for VipKeyJson {
    fn from(k: &pb::VipKey) -> Self {
        VipKeyJson {
            address: k.address.clone(),
            port: k.port,
            protocol: proto_name(k.protocol),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VipJson {
    pub address: String,
    pub port: u32,
    pub protocol: String,
    pub mode: String,
    pub id: u32,
    pub backends: u32,
    pub health: HealthJson,
}

impl From<&pb::Vip> for VipJson {
    fn from(v: &pb::Vip) -> Self {
        let key = VipKeyJson::from(&v.key.clone().unwrap_or_default());
        VipJson {
            address: key.address,
            port: key.port,
            protocol: key.protocol,
            mode: mode_name(v.mode),
            id: v.id,
            backends: v.backends,
            health: HealthJson::from(&v.health.clone().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BackendJson {
    pub address: String,
    pub port: u32,
    pub weight: u32,
    pub id: u32,
    /// `up`, `down` or `unchecked` (when lbd says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Live flows to the backend (`backend list` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked_flows: Option<u64>,
    /// The weight `backend undrain` restores (drained backends only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained_from: Option<u32>,
}

impl From<&pb::Backend> for BackendJson {
    fn from(b: &pb::Backend) -> Self {
        BackendJson {
            address: b.address.clone(),
            port: b.port,
            weight: b.weight.unwrap_or_default(),
            id: b.id,
            health: (!b.health.is_empty()).then(|| b.health.clone()),
            tracked_flows: None,
            drained_from: (b.drained_from > 0).then_some(b.drained_from),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VipListJson {
    pub vips: Vec<VipJson>,
}

#[derive(Debug, Serialize)]
pub struct BackendListJson {
    pub vip: VipKeyJson,
    pub backends: Vec<BackendJson>,
}

#[derive(Debug, Serialize)]
pub struct CountersJson {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<Option<&pb::Counters>> for CountersJson {
    fn from(c: Option<&pb::Counters>) -> Self {
        let c = c.copied().unwrap_or_default();
        CountersJson {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BackendStatsJson {
    #[serde(flatten)]
    pub backend: BackendJson,
    #[serde(flatten)]
    pub counters: CountersJson,
}

#[derive(Debug, Serialize)]
pub struct VipStatsJson {
    #[serde(flatten)]
    pub vip: VipKeyJson,
    #[serde(flatten)]
    pub counters: CountersJson,
    pub backends: Vec<BackendStatsJson>,
}

#[derive(Debug, Serialize)]
pub struct ReasonJson {
    pub reason: String,
    pub packets: u64,
}

#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub vips: Vec<VipStatsJson>,
    pub reasons: Vec<ReasonJson>,
    pub verdicts: Vec<ReasonJson>,
}

impl From<&pb::GetStatsResponse> for StatsJson {
    fn from(s: &pb::GetStatsResponse) -> Self {
        let reasons = |v: &[pb::ReasonCount]| {
            v.iter()
                .map(|r| ReasonJson {
                    reason: r.reason.clone(),
                    packets: r.packets,
                })
                .collect()
        };
        StatsJson {
            vips: s
                .vips
                .iter()
                .map(|v| VipStatsJson {
                    vip: VipKeyJson::from(&v.vip.clone().unwrap_or_default()),
                    counters: v.counters.as_ref().into(),
                    backends: v
                        .backends
                        .iter()
                        .map(|b| BackendStatsJson {
                            backend: BackendJson::from(&b.backend.clone().unwrap_or_default()),
                            counters: b.counters.as_ref().into(),
                        })
                        .collect(),
                })
                .collect(),
            reasons: reasons(&s.reasons),
            verdicts: reasons(&s.verdicts),
        }
    }
}

/// One JSON document on one line.
pub fn write_json<T: Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// `doc` as one line of JSON (`--json`), else the line `text`.
pub(crate) fn json_or_text<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    doc: &T,
    text: &str,
) -> io::Result<()> {
    if json {
        write_json(out, doc)
    } else {
        writeln!(out, "{text}")
    }
}

// ---------------------------------------------------------------------------------------
// Health checks

/// A duration as typed: `1s`, `500ms`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A health check in one short line: `tcp 1s/500ms 2/3 fail-open`, or `none`.
pub fn health_label(h: Option<&pb::HealthCheck>) -> String {
    let Some(h) = h else {
        return "none".into();
    };
    let kind = match pb::HealthCheckKind::try_from(h.kind) {
        Ok(pb::HealthCheckKind::None) => return "none".into(),
        Ok(pb::HealthCheckKind::Tcp) => "tcp".to_string(),
        Ok(pb::HealthCheckKind::Http) if h.http_expect_status == 200 => {
            format!("http:{}", h.http_path)
        }
        Ok(pb::HealthCheckKind::Http) => format!("http:{}={}", h.http_path, h.http_expect_status),
        Ok(pb::HealthCheckKind::Udp) => "udp".to_string(),
        Err(_) => format!("unknown({})", h.kind),
    };
    let all_down = match pb::AllDownPolicy::try_from(h.all_down) {
        Ok(pb::AllDownPolicy::Drop) => "drop",
        _ => "fail-open",
    };
    format!(
        "{kind} {}/{} rise {} fall {} {all_down}",
        show_duration(Duration::from_millis(u64::from(h.interval_ms))),
        show_duration(Duration::from_millis(u64::from(h.timeout_ms))),
        h.rise,
        h.fall
    )
}

/// The JSON view of a health check.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HealthJson {
    /// `none`, `tcp`, `http` or `udp`.
    pub kind: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
    /// `fail-open` or `drop`.
    pub all_down: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_expect_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_payload: Option<String>,
}

impl From<&pb::HealthCheck> for HealthJson {
    fn from(h: &pb::HealthCheck) -> Self {
        let kind = pb::HealthCheckKind::try_from(h.kind);
        HealthJson {
            kind: match kind {
                Ok(pb::HealthCheckKind::None) => "none".into(),
                Ok(pb::HealthCheckKind::Tcp) => "tcp".into(),
                Ok(pb::HealthCheckKind::Http) => "http".into(),
                Ok(pb::HealthCheckKind::Udp) => "udp".into(),
                Err(_) => format!("unknown({})", h.kind),
            },
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            rise: h.rise,
            fall: h.fall,
            all_down: match pb::AllDownPolicy::try_from(h.all_down) {
                Ok(pb::AllDownPolicy::Drop) => "drop".into(),
                _ => "fail-open".into(),
            },
            http_path: (kind == Ok(pb::HealthCheckKind::Http)).then(|| h.http_path.clone()),
            http_expect_status: (kind == Ok(pb::HealthCheckKind::Http))
                .then_some(h.http_expect_status),
            udp_payload: (kind == Ok(pb::HealthCheckKind::Udp)).then(|| h.udp_payload.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Firewall

#[derive(Debug, Serialize)]
pub struct RuleJson {
    pub action: String,
    pub cidr: String,
    pub hits: u64,
    pub id: u32,
}

#[derive(Debug, Serialize)]
pub struct RuleListJson {
    pub rules: Vec<RuleJson>,
}

pub fn action_name(raw: i32) -> String {
    match pb::FirewallAction::try_from(raw) {
        Ok(pb::FirewallAction::Block) => "block".into(),
        Ok(pb::FirewallAction::Allow) => "allow".into(),
        Ok(pb::FirewallAction::Unspecified) => "unspecified".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

/// "prefix" / "prefixes"
pub fn n_prefixes(n: u32) -> String {
    if n == 1 {
        "1 prefix".into()
    } else {
        format!("{n} prefixes")
    }
}

// ---------------------------------------------------------------------------------------
// Rate limits

/// A policy as `--json` shows it (scope spelled as lbctl accepts it).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RateLimitJson {
    /// `null` for the default policy.
    pub cidr: Option<String>,
    pub rate: i64,
    pub burst: i64,
    pub scope: String,
    pub id: u32,
    pub allowed: u64,
    pub dropped: u64,
}

impl From<&pb::RateLimit> for RateLimitJson {
    fn from(r: &pb::RateLimit) -> Self {
        let p = r.policy.clone().unwrap_or_default();
        RateLimitJson {
            cidr: (!p.cidr.is_empty()).then_some(p.cidr),
            rate: p.rate,
            burst: p.burst,
            scope: scope_name(p.scope),
            id: r.id,
            allowed: r.allowed,
            dropped: r.dropped,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RateLimitListJson {
    pub rate_limits: Vec<RateLimitJson>,
}

#[derive(Debug, Serialize)]
pub struct LimitedClientJson {
    pub address: String,
    pub dropped: u64,
    /// The override the client falls under; `null` for the default policy.
    pub cidr: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TopJson {
    pub clients: Vec<LimitedClientJson>,
    pub tracked: u64,
}

impl From<&pb::TopLimitedClientsResponse> for TopJson {
    fn from(r: &pb::TopLimitedClientsResponse) -> Self {
        TopJson {
            clients: r
                .clients
                .iter()
                .map(|c| LimitedClientJson {
                    address: c.address.clone(),
                    dropped: c.dropped,
                    cidr: (!c.cidr.is_empty()).then(|| c.cidr.clone()),
                })
                .collect(),
            tracked: r.tracked,
        }
    }
}

/// Scope as a word: "all", "new-flows", or "unknown(N)".
pub fn scope_name(raw: i32) -> String {
    match pb::RateLimitScope::try_from(raw) {
        Ok(pb::RateLimitScope::All | pb::RateLimitScope::Unspecified) => "all".into(),
        Ok(pb::RateLimitScope::NewFlows) => "new-flows".into(),
        Err(_) => format!("unknown({raw})"),
    }
}

// ---------------------------------------------------------------------------------------
// Human tables

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// Columns separated by two spaces, padded to the widest cell; no trailing blanks.
struct Table {
    header: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                let last = i + 1 == cells.len();
                if i > 0 {
                    line.push_str("  ");
                }
                match self.align.get(i).copied().unwrap_or(Align::Left) {
                    Align::Right => line.push_str(&format!("{cell:>width$}")),
                    Align::Left if last => line.push_str(cell),
                    Align::Left => line.push_str(&format!("{cell:<width$}")),
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

pub fn vip_list(out: &mut dyn Write, vips: &[pb::Vip]) -> io::Result<()> {
    if vips.is_empty() {
        return writeln!(out, "no VIPs configured");
    }
    let mut t = Table::new(&[
        ("VIP", Align::Left),
        ("PROTO", Align::Left),
        ("MODE", Align::Left),
        ("BACKENDS", Align::Right),
        ("ID", Align::Right),
        ("HEALTH", Align::Left),
    ]);
    for v in vips {
        let key = v.key.clone().unwrap_or_default();
        t.row(vec![
            format!("{}:{}", key.address, key.port),
            proto_name(key.protocol),
            mode_name(v.mode),
            v.backends.to_string(),
            v.id.to_string(),
            health_label(v.health.as_ref()),
        ]);
    }
    t.write(out)
}

pub fn backend_list(out: &mut dyn Write, vip: &str, backends: &[pb::Backend]) -> io::Result<()> {
    if backends.is_empty() {
        return writeln!(out, "no backends on {vip}");
    }
    let mut t = Table::new(&[
        ("BACKEND", Align::Left),
        ("WEIGHT", Align::Left),
        ("ID", Align::Right),
        ("HEALTH", Align::Left),
        ("FLOWS", Align::Right),
    ]);
    for b in backends {
        let weight = b.weight.unwrap_or_default();
        t.row(vec![
            format!("{}:{}", b.address, b.port),
            if weight == 0 && b.drained_from > 0 {
                format!("0 (drained from {})", b.drained_from)
            } else {
                weight_label(weight)
            },
            b.id.to_string(),
            if b.health.is_empty() {
                "-".to_string()
            } else {
                b.health.clone()
            },
            b.tracked_flows.to_string(),
        ]);
    }
    t.write(out)
}

/// Per VIP with its backends indented under it, then reasons (non-zero only) and verdicts.
pub fn stats(out: &mut dyn Write, s: &pb::GetStatsResponse) -> io::Result<()> {
    if s.vips.is_empty() {
        writeln!(out, "no VIPs configured")?;
    } else {
        let mut t = Table::new(&[
            ("VIP / BACKEND", Align::Left),
            ("WEIGHT", Align::Left),
            ("PACKETS", Align::Right),
            ("BYTES", Align::Right),
            ("NEW FLOWS", Align::Right),
        ]);
        for v in &s.vips {
            let c = v.counters.unwrap_or_default();
            t.row(vec![
                vip_label(&v.vip.clone().unwrap_or_default()),
                String::new(),
                c.packets.to_string(),
                c.bytes.to_string(),
                c.new_flows.to_string(),
            ]);
            for b in &v.backends {
                let be = b.backend.clone().unwrap_or_default();
                let c = b.counters.unwrap_or_default();
                t.row(vec![
                    format!("  {}:{}", be.address, be.port),
                    weight_label(be.weight.unwrap_or_default()),
                    c.packets.to_string(),
                    c.bytes.to_string(),
                    c.new_flows.to_string(),
                ]);
            }
        }
        t.write(out)?;
    }

    let nonzero: Vec<&pb::ReasonCount> = s.reasons.iter().filter(|r| r.packets != 0).collect();
    if !nonzero.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&[("REASON", Align::Left), ("PACKETS", Align::Right)]);
        for r in nonzero {
            t.row(vec![r.reason.clone(), r.packets.to_string()]);
        }
        t.write(out)?;
    }

    if !s.verdicts.is_empty() {
        writeln!(out)?;
        let mut t = Table::new(&[("VERDICT", Align::Left), ("PACKETS", Align::Right)]);
        for r in &s.verdicts {
            t.row(vec![r.reason.clone(), r.packets.to_string()]);
        }
        t.write(out)?;
    }
    Ok(())
}

/// Firewall rules with their hits (`lbctl fw list`); `action` names a rule's action.
pub fn firewall_rules(
    out: &mut dyn Write,
    rules: &[pb::FirewallRule],
    action: impl Fn(i32) -> String,
) -> io::Result<()> {
    if rules.is_empty() {
        return writeln!(out, "no firewall rules");
    }
    let mut t = Table::new(&[
        ("ACTION", Align::Left),
        ("PREFIX", Align::Left),
        ("HITS", Align::Right),
        ("ID", Align::Right),
    ]);
    for r in rules {
        t.row(vec![
            action(r.action),
            r.cidr.clone(),
            r.hits.to_string(),
            r.id.to_string(),
        ]);
    }
    t.write(out)
}

/// Rate-limit policies with their counters (`lbctl ratelimit list`); `scope` names a scope.
pub fn rate_limits(
    out: &mut dyn Write,
    policies: &[pb::RateLimit],
    scope: impl Fn(i32) -> String,
) -> io::Result<()> {
    let mut t = Table::new(&[
        ("POLICY", Align::Left),
        ("RATE/S", Align::Right),
        ("BURST", Align::Right),
        ("SCOPE", Align::Left),
        ("ALLOWED", Align::Right),
        ("DROPPED", Align::Right),
        ("ID", Align::Right),
    ]);
    for r in policies {
        let p = r.policy.clone().unwrap_or_default();
        let limited = p.rate > 0;
        t.row(vec![
            if p.cidr.is_empty() {
                "default".into()
            } else {
                p.cidr
            },
            if limited {
                p.rate.to_string()
            } else {
                "no limit".into()
            },
            if limited {
                p.burst.to_string()
            } else {
                "-".into()
            },
            if limited { scope(p.scope) } else { "-".into() },
            r.allowed.to_string(),
            r.dropped.to_string(),
            r.id.to_string(),
        ]);
    }
    t.write(out)
}

/// The clients with the most drops (`lbctl ratelimit top`).
pub fn limited_clients(out: &mut dyn Write, r: &pb::TopLimitedClientsResponse) -> io::Result<()> {
    if r.clients.is_empty() {
        return writeln!(
            out,
            "no client has been rate limited ({} client buckets)",
            r.tracked
        );
    }
    let mut t = Table::new(&[
        ("CLIENT", Align::Left),
        ("DROPPED", Align::Right),
        ("POLICY", Align::Left),
    ]);
    for c in &r.clients {
        t.row(vec![
            c.address.clone(),
            c.dropped.to_string(),
            if c.cidr.is_empty() {
                "default".into()
            } else {
                c.cidr.clone()
            },
        ]);
    }
    t.write(out)?;
    writeln!(out, "{} client buckets", r.tracked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).expect("render");
        String::from_utf8(buf).expect("utf8")
    }

    fn key(addr: &str, port: u32, proto: pb::Protocol) -> pb::VipKey {
        pb::VipKey {
            address: addr.into(),
            port,
            protocol: proto as i32,
        }
    }

    fn backend(addr: &str, port: u32, weight: u32, id: u32) -> pb::Backend {
        pb::Backend {
            address: addr.into(),
            port,
            weight: Some(weight),
            id,
            ..Default::default()
        }
    }

    #[test]
    fn backend_table_is_aligned() {
        let s = render(|o| {
            backend_list(
                o,
                "10.0.0.10:80/tcp",
                &[
                    backend("10.0.2.1", 8080, 100, 3),
                    backend("10.0.2.22", 80, 0, 14),
                    pb::Backend {
                        health: "down".into(),
                        tracked_flows: 1234,
                        drained_from: 50,
                        ..backend("10.0.2.3", 80, 0, 15)
                    },
                ],
            )
        });
        assert_eq!(
            s,
            "BACKEND        WEIGHT               ID  HEALTH  FLOWS\n\
             10.0.2.1:8080  100                   3  -           0\n\
             10.0.2.22:80   0 (drained)          14  -           0\n\
             10.0.2.3:80    0 (drained from 50)  15  down     1234\n"
        );
        let j = serde_json::to_value(BackendJson::from(&pb::Backend {
            health: "up".into(),
            ..backend("10.0.2.1", 80, 7, 1)
        }))
        .expect("json");
        assert_eq!(j["health"], "up");
        assert!(
            j.get("tracked_flows").is_none() && j.get("drained_from").is_none(),
            "{j}"
        );
    }

    #[test]
    fn stats_human_skips_zero_reasons_json_keeps_them() {
        let resp = pb::GetStatsResponse {
            vips: vec![pb::VipStats {
                vip: Some(key("10.0.0.10", 80, pb::Protocol::Tcp)),
                counters: Some(pb::Counters {
                    packets: 10,
                    bytes: 1000,
                    new_flows: 2,
                }),
                backends: vec![pb::BackendStats {
                    backend: Some(backend("10.0.2.1", 8080, 100, 1)),
                    counters: Some(pb::Counters {
                        packets: 10,
                        bytes: 1000,
                        new_flows: 2,
                    }),
                }],
            }],
            reasons: vec![
                pb::ReasonCount {
                    reason: "FORWARDED".into(),
                    packets: 10,
                },
                pb::ReasonCount {
                    reason: "NO_BACKEND".into(),
                    packets: 0,
                },
            ],
            verdicts: vec![
                pb::ReasonCount {
                    reason: "XDP_TX".into(),
                    packets: 10,
                },
                pb::ReasonCount {
                    reason: "XDP_DROP".into(),
                    packets: 0,
                },
            ],
            monotonic_ns: 0,
        };
        let human = render(|o| stats(o, &resp));
        assert!(human.contains("10.0.0.10:80/tcp"), "{human}");
        assert!(human.contains("  10.0.2.1:8080"), "{human}");
        assert!(human.contains("FORWARDED"), "{human}");
        assert!(!human.contains("NO_BACKEND"), "{human}");
        assert!(
            human.contains("XDP_DROP"),
            "verdicts are all shown: {human}"
        );

        let json = render(|o| write_json(o, &StatsJson::from(&resp)));
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["vips"][0]["address"], "10.0.0.10");
        assert_eq!(v["vips"][0]["protocol"], "tcp");
        assert_eq!(v["vips"][0]["new_flows"], 2);
        assert_eq!(v["vips"][0]["backends"][0]["port"], 8080);
        assert_eq!(v["vips"][0]["backends"][0]["bytes"], 1000);
        assert_eq!(v["reasons"][1]["reason"], "NO_BACKEND");
        assert_eq!(v["verdicts"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn enum_names() {
        assert_eq!(proto_name(pb::Protocol::Udp as i32), "udp");
        assert_eq!(proto_name(42), "unknown(42)");
        assert_eq!(mode_name(pb::ForwardingMode::L2dsr as i32), "l2dsr");
        assert_eq!(mode_name(0), "unspecified");
    }
}
