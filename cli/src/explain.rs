//! `lbctl explain CLIENT:PORT VIP:PORT --proto P`: what the balancer would do with that packet
//! now (the `Explain` RPC: lbd runs the loaded pipeline, without its map writes, on a packet it
//! builds), as a short report, the summary line last, or the reply as one JSON object with
//! `--json`.

use std::io::Write;
use std::net::SocketAddrV4;

use serde_json::json;

use crate::client::{call, Lbd};
use crate::highargs::{parse_addr_port, parse_proto, ArgError, Globals, Protocol};
use crate::lowargs::ExplainArgs;
use crate::pb;

/// `lbctl explain`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explain {
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub proto: Protocol,
    pub established: bool,
    pub ingress: Option<String>,
}

impl TryFrom<ExplainArgs> for Explain {
    type Error = ArgError;

    fn try_from(low: ExplainArgs) -> Result<Self, ArgError> {
        Ok(Explain {
            client: parse_addr_port("CLIENT", &low.client)?,
            vip: parse_addr_port("VIP", &low.vip)?,
            proto: parse_proto("--proto", &low.proto)?,
            established: low.established,
            ingress: low.ingress,
        })
    }
}

impl Explain {
    fn request(&self) -> pb::ExplainRequest {
        pb::ExplainRequest {
            client_address: self.client.ip().to_string(),
            client_port: u32::from(self.client.port()),
            vip_address: self.vip.ip().to_string(),
            vip_port: u32::from(self.vip.port()),
            protocol: match self.proto {
                Protocol::Tcp => pb::Protocol::Tcp,
                Protocol::Udp => pb::Protocol::Udp,
            } as i32,
            established: self.established,
            ingress: self.ingress.clone().unwrap_or_default(),
        }
    }
}

fn duration(ns: u64) -> String {
    match ns {
        n if n < 1_000_000 => format!("{:.1}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        n => format!("{:.1}s", n as f64 / 1e9),
    }
}

/// The report: one line per stage the packet reached, the summary last.
pub fn report(cmd: &Explain, r: &pb::ExplainReply) -> String {
    let mut lines = vec![format!(
        "{} -> {}/{} ({}) arriving on {}",
        cmd.client,
        cmd.vip,
        cmd.proto,
        match (cmd.proto, cmd.established) {
            (Protocol::Tcp, false) => "SYN",
            (Protocol::Tcp, true) => "ACK",
            (Protocol::Udp, _) => "datagram",
        },
        r.ingress
    )];
    let mut row = |k: &str, v: String| lines.push(format!("  {k:<10} {v}"));
    if let Some(f) = &r.firewall {
        row(
            "firewall",
            match f.action.as_str() {
                "none" => "no rule".into(),
                a => format!("{a} (rule {})", f.rule),
            },
        );
    }
    if let Some(rl) = &r.ratelimit {
        row(
            "ratelimit",
            if rl.exempt {
                "exempt (allow-listed)".into()
            } else {
                let mut s = format!(
                    "{}: policy {} ({}/s, burst {}, scope {})",
                    rl.result, rl.policy, rl.rate, rl.burst, rl.scope
                );
                if rl.result == "allowed" {
                    s += &format!(", {} packets left", rl.tokens);
                } else if rl.result == "limited" {
                    s += &format!(", next in {}", duration(rl.wait_ns));
                }
                s
            },
        );
    }
    if !r.vip.is_empty() {
        row("vip", format!("{} ({})", r.vip, r.mode));
    }
    if let Some(f) = &r.flow {
        let mut s = if f.table.is_empty() {
            format!(
                "new: hash {:#010x}, Maglev slot {}{}",
                f.hash,
                f.slot,
                if f.recorded { "" } else { " (not recorded)" }
            )
        } else {
            let cpu = if f.table == "dsr" {
                format!(" of CPU {}", f.cpu)
            } else {
                String::new()
            };
            format!(
                "tracked in the {} table{cpu}, idle {}",
                f.table,
                duration(f.idle_ns)
            )
        };
        if f.restarted {
            s += "; a SYN on a closing flow: a new one starts";
        }
        if f.port_lost {
            s += "; its SNAT port is held by another flow now";
        }
        row("flow", s);
    }
    if let Some(b) = &r.backend {
        let mut s = format!("{} weight {}, health {}", b.address, b.weight, b.health);
        if r.snat_port != 0 {
            s += &format!(", SNAT port {}", r.snat_port);
        }
        row("backend", s);
    }
    if let Some(n) = &r.next_hop {
        let how = if n.cached {
            "cached".to_string()
        } else {
            format!("fib {}", n.lookup)
        };
        let mut s = format!(
            "{how}: {} on {} ({} -> {})",
            n.gateway, n.device, n.smac, n.dmac
        );
        if n.mtu != 0 {
            s += &format!(", mtu {}", n.mtu);
        }
        if !n.egress_attached && !n.device.is_empty() {
            s += ", not an interface lbd is attached to";
        }
        row("next hop", s);
    }
    row("verdict", format!("{} ({})", r.verdict, r.reason));
    lines.push(format!("=> {}", r.summary));
    lines.join("\n")
}

/// The reply as JSON (every field, absent stages as null).
pub fn to_json(r: &pb::ExplainReply) -> serde_json::Value {
    json!({
        "verdict": r.verdict,
        "reason": r.reason,
        "summary": r.summary,
        "ingress": r.ingress,
        "firewall": r.firewall.as_ref().map(|f| json!({"action": f.action, "rule": f.rule})),
        "ratelimit": r.ratelimit.as_ref().map(|l| json!({
            "exempt": l.exempt, "policy": l.policy, "rate": l.rate, "burst": l.burst,
            "scope": l.scope, "result": l.result, "tokens": l.tokens, "wait_ns": l.wait_ns,
        })),
        "vip": (!r.vip.is_empty()).then_some(&r.vip),
        "mode": (!r.mode.is_empty()).then_some(&r.mode),
        "flow": r.flow.as_ref().map(|f| json!({
            "table": (!f.table.is_empty()).then_some(&f.table), "cpu": f.cpu,
            "idle_ns": f.idle_ns, "hash": f.hash, "slot": f.slot, "recorded": f.recorded,
            "restarted": f.restarted, "port_lost": f.port_lost,
        })),
        "backend": r.backend.as_ref().map(|b| json!({
            "address": b.address, "weight": b.weight, "health": b.health,
        })),
        "snat_port": (r.snat_port != 0).then_some(r.snat_port),
        "next_hop": r.next_hop.as_ref().map(|n| json!({
            "cached": n.cached, "lookup": n.lookup, "gateway": n.gateway, "device": n.device,
            "ifindex": n.ifindex, "dmac": n.dmac, "smac": n.smac, "mtu": n.mtu,
            "egress_attached": n.egress_attached,
        })),
    })
}

pub async fn run(cmd: &Explain, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let reply = call(args.timeout, lbd.explain.explain(cmd.request())).await?;
    if args.json {
        crate::output::write_json(out, &to_json(&reply))?;
    } else {
        writeln!(out, "{}", report(cmd, &reply))?;
    }
    Ok(())
}
