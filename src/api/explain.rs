//! The `Explain` gRPC service: what the loaded data plane would do with one packet, now
//! ([`crate::dataplane::explain`]: `lb_explain`, the pipeline without its map writes, run by
//! BPF_PROG_TEST_RUN against the live maps). The request is validated whole (InvalidArgument
//! naming the field); the packet arrives on the interface the route back to the client leaves
//! through, unless the request names one; the reply names every stage's decision, with the
//! control plane's names for what the program knows by id (rules, policies, VIPs, backends).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::Controller;
use crate::dataplane::explain::{Explanation, FlowStep, Probe, Proto, Segment};
use crate::dataplane::maps::reason_name;
use crate::reconcile::Reader;
use crate::skel::types;
use xdplb_model::state::{Protocol, State, VipKey};
use xdplb_proto::pb::{self, explain_server};

pub(crate) struct ExplainService {
    ctl: Controller,
}

impl ExplainService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) client: SocketAddrV4,
    pub(crate) vip: SocketAddrV4,
    pub(crate) proto: Protocol,
    pub(crate) established: bool,
    pub(crate) ingress: Option<String>,
}

fn address(field: &str, s: &str) -> Result<Ipv4Addr, ApiError> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IPv4 address")))
}

fn port(field: &str, p: u32) -> Result<u16, ApiError> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(field, format!("{p} is outside 1..=65535"))),
    }
}

pub(crate) fn validate(req: &pb::ExplainRequest) -> Result<Spec, ApiError> {
    let client = SocketAddrV4::new(
        address("client_address", &req.client_address)?,
        port("client_port", req.client_port)?,
    );
    let vip = SocketAddrV4::new(
        address("vip_address", &req.vip_address)?,
        port("vip_port", req.vip_port)?,
    );
    let proto = match pb::Protocol::try_from(req.protocol) {
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        _ => return Err(invalid("protocol", "must be TCP or UDP")),
    };
    let ingress = match req.ingress.as_str() {
        "" => None,
        s => Some(s.to_string()),
    };
    Ok(Spec {
        client,
        vip,
        proto,
        established: req.established && proto == Protocol::Tcp,
        ingress,
    })
}

/// The source MAC of explained frames: locally administered, never a real host's.
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0xe8, 0x91, 0x01];

/// The attached interface the client's packets arrive on: the one named, else the one the
/// route back to the client leaves through, else the only one.
async fn ingress(spec: &Spec, attached: &[(String, u32)]) -> Result<(String, u32), Status> {
    let names = || {
        attached
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = &spec.ingress {
        return attached
            .iter()
            .find(|(n, _)| n == name)
            .cloned()
            .ok_or_else(|| {
                Status::from(invalid(
                    "ingress",
                    format!(
                        "{name} is not an interface lbd is attached to (attached: {})",
                        names()
                    ),
                ))
            });
    }
    let routed = crate::neighbor::route_to(*spec.client.ip()).await;
    if let Ok((oif, _)) = &routed {
        if let Some(l) = attached.iter().find(|(_, i)| i == oif) {
            return Ok(l.clone());
        }
    }
    match attached {
        [only] => Ok(only.clone()),
        [] => Err(Status::failed_precondition(
            "the data plane is attached to no interface",
        )),
        _ => Err(Status::failed_precondition(format!(
            "the route back to {} ({}) does not leave through an interface lbd is attached to: \
             name the one its packets arrive on with ingress ({})",
            spec.client.ip(),
            match routed {
                Ok((oif, _)) => format!("ifindex {oif}"),
                Err(e) => e.to_string(),
            },
            names()
        ))),
    }
}

#[tonic::async_trait]
impl explain_server::Explain for ExplainService {
    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainReply>, Status> {
        let spec = validate(request.get_ref())?;
        let attached = self.ctl.read(|_, r| r.attached()).await;
        let (ingress_name, ingress_ifindex) = ingress(&spec, &attached).await?;
        let links = crate::neighbor::link_names()
            .await
            .map_err(|e| Status::internal(format!("listing the interfaces: {e}")))?;
        let probe = Probe {
            client: spec.client,
            vip: spec.vip,
            proto: match spec.proto {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
            },
            segment: if spec.established {
                Segment::Ack
            } else {
                Segment::Syn
            },
            ingress_ifindex,
            eth_dst: links.get(&ingress_ifindex).map(|l| l.1).unwrap_or_default(),
            eth_src: CLIENT_MAC,
        };
        let explainer = self.ctl.explainer().await.map_err(ApiError::from)?;
        let ex = tokio::task::spawn_blocking(move || explainer.explain(&probe))
            .await
            .map_err(|e| Status::internal(format!("explain task: {e}")))?
            .map_err(|e| Status::internal(format!("explain: {e}")))?;
        let reply = self
            .ctl
            .read(|state, reader| render(&spec, &ex, state, reader, &links, &ingress_name))
            .await;
        Ok(Response::new(reply))
    }
}

fn verdict_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_UNKNOWN",
    }
}

fn fib_name(rc: i32) -> String {
    match rc {
        0 => "success".into(),
        1 => "blackhole".into(),
        2 => "unreachable".into(),
        3 => "prohibit".into(),
        4 => "not_fwded".into(),
        5 => "fwd_disabled".into(),
        6 => "unsupp_lwt".into(),
        7 => "no_neigh".into(),
        8 => "frag_needed".into(),
        9 => "no_src_addr".into(),
        n => format!("rc_{n}"),
    }
}

fn mode_name(mode: u8) -> &'static str {
    match u32::from(mode) {
        m if m == types::lb_mode::LB_MODE_NAT.0 => "nat",
        m if m == types::lb_mode::LB_MODE_L2DSR.0 => "l2dsr",
        m if m == types::lb_mode::LB_MODE_IPIP.0 => "ipip",
        _ => "",
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn duration(ns: u64) -> String {
    match ns {
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n => format!("{:.1} s", n as f64 / 1e9),
    }
}

/// The reply: the program's record with the control plane's names.
fn render(
    spec: &Spec,
    ex: &Explanation,
    state: &State,
    reader: &Reader<'_>,
    links: &BTreeMap<u32, (String, [u8; 6])>,
    ingress: &str,
) -> pb::ExplainReply {
    let dev = |i: u32| {
        links
            .get(&i)
            .map(|l| l.0.clone())
            .unwrap_or_else(|| format!("ifindex {i}"))
    };
    let firewall = ex.firewall.map(|f| pb::ExplainFirewall {
        action: match f.action {
            1 => "block",
            2 => "allow",
            _ => "none",
        }
        .into(),
        rule: if f.action == 0 {
            String::new()
        } else {
            state
                .firewall
                .rules()
                .keys()
                .find(|net| reader.firewall_rule_id(net) == Some(f.rule_id))
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("rule id {}", f.rule_id))
        },
    });
    let (policy_cidr, policy) = state.ratelimit.policy_for(*spec.client.ip());
    let ratelimit = if ex.ratelimit_exempt {
        Some(pb::ExplainRateLimit {
            exempt: true,
            ..Default::default()
        })
    } else {
        ex.ratelimit.map(|r| pb::ExplainRateLimit {
            exempt: false,
            policy: policy_cidr.map_or("default".into(), |c| c.to_string()),
            rate: policy.rate,
            burst: policy.burst,
            scope: if r.new_flows { "new-flows" } else { "all" }.into(),
            result: match r.allowed {
                Some(true) => "allowed",
                Some(false) => "limited",
                None => "not charged",
            }
            .into(),
            tokens: r.tokens.unwrap_or(0),
            wait_ns: r.wait_ns.unwrap_or(0),
        })
    };
    let vip_key = ex.vip_id.and_then(|id| {
        state
            .vips
            .keys()
            .find(|k| reader.vip_id(k) == Some(id))
            .copied()
    });
    let flow = ex.flow.map(|f| match f {
        FlowStep::Tracked {
            table,
            cpu,
            idle_ns,
            ..
        } => pb::ExplainFlow {
            table: table.into(),
            cpu,
            idle_ns,
            restarted: ex.restarted,
            port_lost: ex.port_lost,
            ..Default::default()
        },
        FlowStep::New {
            hash,
            slot,
            recorded,
        } => pb::ExplainFlow {
            hash,
            slot,
            recorded,
            restarted: ex.restarted,
            port_lost: ex.port_lost,
            ..Default::default()
        },
    });
    let backend = ex.backend.map(|(_, addr)| {
        let v = vip_key.and_then(|k| state.vips.get(&k));
        pb::ExplainBackend {
            address: addr.to_string(),
            weight: v.and_then(|v| v.backends.get(&addr)).copied().unwrap_or(0),
            health: match (v, vip_key) {
                (Some(v), Some(k)) if v.health.is_checked() => {
                    if reader.health().is_down(&k, &addr) {
                        "down"
                    } else {
                        "up"
                    }
                }
                _ => "unchecked",
            }
            .into(),
        }
    });
    let next_hop = ex.next_hop.map(|n| pb::ExplainNextHop {
        cached: n.cached,
        lookup: n.fib_rc.map(fib_name).unwrap_or_default(),
        gateway: n.gateway.to_string(),
        device: if n.ifindex == 0 {
            String::new()
        } else {
            dev(n.ifindex)
        },
        ifindex: n.ifindex,
        dmac: mac(&n.dmac),
        smac: mac(&n.smac),
        mtu: n.mtu,
        egress_attached: n.egress_attached,
    });
    let mut reply = pb::ExplainReply {
        verdict: verdict_name(ex.action).into(),
        reason: reason_name(ex.reason),
        summary: String::new(),
        ingress: ingress.into(),
        firewall,
        ratelimit,
        vip: vip_key.map(|k| k.to_string()).unwrap_or_default(),
        mode: if vip_key.is_some() {
            mode_name(ex.mode).into()
        } else {
            String::new()
        },
        flow,
        backend,
        snat_port: ex.snat_port.map(u32::from).unwrap_or(0),
        next_hop,
    };
    reply.summary = summary(
        spec,
        &reply,
        vip_key.and_then(|k| state.vips.get(&k).map(|v| (k, v))),
        reader,
    );
    reply
}

/// One line for the operator: what happens and why, and the fix for what usually breaks.
fn summary(
    spec: &Spec,
    r: &pb::ExplainReply,
    vip: Option<(VipKey, &xdplb_model::state::VipState)>,
    reader: &Reader<'_>,
) -> String {
    let client = spec.client.ip();
    let nh = r.next_hop.clone().unwrap_or_default();
    let be = r.backend.clone().unwrap_or_default();
    let target = format!("{}/{}", spec.vip, spec.proto);
    match r.reason.as_str() {
        "drop_firewall" => {
            let rule = r.firewall.as_ref().map(|f| f.rule.clone()).unwrap_or_default();
            format!(
                "dropped: {client} is blocked by firewall rule {rule} (remove it: lbctl block remove {rule}, \
                 or make a hole: lbctl allow add {client})"
            )
        }
        "drop_ratelimit" => {
            let rl = r.ratelimit.clone().unwrap_or_default();
            format!(
                "dropped: {client} is over its rate limit (policy {}: {} packets/s, burst {}, scope {}); \
                 its next packet gets through in {}",
                rl.policy,
                rl.rate,
                rl.burst,
                rl.scope,
                duration(rl.wait_ns)
            )
        }
        "drop_no_backend" => {
            let detail = match vip {
                Some((k, v)) if !v.backends.is_empty() => v
                    .backends
                    .iter()
                    .map(|(a, w)| {
                        let why = if *w == 0 {
                            "weight 0"
                        } else if v.health.is_checked() && reader.health().is_down(&k, a) {
                            "down (health check)"
                        } else {
                            "up"
                        };
                        format!("{a} {why}")
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "it has no backends".into(),
            };
            format!("dropped: VIP {target} has no backend to send it to ({detail})")
        }
        "drop_fib_no_neigh" | "pass_fib_no_neigh" | "drop_dsr_no_nexthop" => format!(
            "{}: no neighbour entry for the next hop {} on {}: the kernel has no MAC address for it \
             (is it up? ip neigh show {}; arping -I {} {})",
            if r.verdict == "XDP_PASS" { "passed to the kernel" } else { "dropped" },
            nh.gateway,
            nh.device,
            nh.gateway,
            nh.device,
            nh.gateway
        ),
        "drop_fib_failed" | "pass_fib_failed" | "drop_fib_blackhole" => format!(
            "{}: the route lookup towards backend {} failed ({}): check ip route get {}",
            if r.verdict == "XDP_PASS" { "passed to the kernel" } else { "dropped" },
            be.address,
            nh.lookup,
            be.address.split(':').next().unwrap_or_default()
        ),
        "pass_egress_not_attached" | "drop_egress_not_attached" => format!(
            "not sent by XDP: the way to backend {} leaves through {}, which lbd is not attached to: \
             add it to dataplane.interfaces",
            be.address, nh.device
        ),
        "drop_port_exhausted" => format!(
            "dropped: no free SNAT port towards backend {}: the SNAT port range is exhausted \
             (widen [nat] ports or add SNAT capacity)",
            be.address
        ),
        "drop_too_big" | "tx_icmp_frag_needed" | "pass_ipip_too_big" => format!(
            "{} ({}): the packet does not fit the MTU {} towards backend {}",
            r.verdict, r.reason, nh.mtu, be.address
        ),
        "pass_not_vip" => format!("passed to the kernel: {target} is not a VIP"),
        "tx_nat_forward" | "tx_l2dsr" | "tx_ipip" => {
            let flow = match &r.flow {
                Some(f) if !f.table.is_empty() => format!("tracked flow ({} table)", f.table),
                Some(f) => format!("new flow, Maglev slot {}", f.slot),
                None => "flow".into(),
            };
            let port = if r.snat_port != 0 {
                format!(", SNAT port {}", r.snat_port)
            } else {
                String::new()
            };
            let down = if be.health == "down" {
                " (the backend is down: every backend of the VIP is, and it fails open)"
            } else {
                ""
            };
            format!(
                "sent ({}) to backend {}{down} in {}{}: {}, via {} to {}",
                r.verdict, be.address, r.mode, port, flow, nh.device, nh.dmac
            )
        }
        _ => format!("{} ({})", r.verdict, r.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(req: pb::ExplainRequest) -> String {
        let e = validate(&req).expect_err("refused");
        let s = e.to_string();
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        s.split(':').next().unwrap_or_default().to_string()
    }

    fn good() -> pb::ExplainRequest {
        pb::ExplainRequest {
            client_address: "192.0.2.7".into(),
            client_port: 40000,
            vip_address: "10.0.0.10".into(),
            vip_port: 80,
            protocol: pb::Protocol::Tcp as i32,
            established: false,
            ingress: String::new(),
        }
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let ok = validate(&good()).expect("valid");
        assert_eq!(ok.client, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(ok.vip, "10.0.0.10:80".parse().unwrap());
        let udp = validate(&pb::ExplainRequest {
            protocol: pb::Protocol::Udp as i32,
            established: true,
            ..good()
        })
        .expect("udp");
        assert!(!udp.established, "UDP has no established segment");
        for (req, field) in [
            (
                pb::ExplainRequest {
                    client_address: "192.0.2".into(),
                    ..good()
                },
                "client_address",
            ),
            (
                pb::ExplainRequest {
                    client_port: 0,
                    ..good()
                },
                "client_port",
            ),
            (
                pb::ExplainRequest {
                    vip_address: String::new(),
                    ..good()
                },
                "vip_address",
            ),
            (
                pb::ExplainRequest {
                    vip_port: 65536,
                    ..good()
                },
                "vip_port",
            ),
            (
                pb::ExplainRequest {
                    protocol: 0,
                    ..good()
                },
                "protocol",
            ),
        ] {
            assert_eq!(field_of(req), field);
        }
    }
}
