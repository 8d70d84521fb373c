//! `lb_explain` from user space: what the loaded data plane would do with one packet, now.
//!
//! `bpf/explain.bpf.c` is the pipeline of `bpf/lb.bpf.c` built a second time with every map
//! write compiled out (`bpf/explain.h`); its stages record their decisions in the object's own
//! `.bss` (`struct lb_explain` of `bpf/xdplb.h`). The object is loaded on the first explain, with
//! every map reused by fd from the loaded data plane (the live tables; its `.bss`, `.rodata` and
//! `.kconfig` are its own, the firewall scope copied), then kept. A run is one
//! BPF_PROG_TEST_RUN of a frame built here, received on the interface the client's packets
//! arrive on (its ifindex: `bpf_fib_lookup` routes from it, `XDP_TX` vs redirect compares with
//! it); runs are serialised (one record).

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapHandle, OpenObject};

use super::{bpf_err, DataplaneError};
use crate::explain_skel::types as et;
use crate::explain_skel::{ExplainSkel, ExplainSkelBuilder};
use crate::skel::types;

/// The loaded explain program, shared by the [`Explainer`]s of one data plane.
pub(crate) type Slot = Arc<Mutex<Option<ExplainSkel<'static>>>>;

/// The protocol of an explained packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Which TCP segment to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// A SYN: a new connection.
    Syn,
    /// An ACK: the next packet of a connection.
    Ack,
}

/// The packet to explain and where it arrives.
#[derive(Debug, Clone)]
pub struct Probe {
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub proto: Proto,
    /// TCP only.
    pub segment: Segment,
    /// The interface it arrives on (an interface lbd attached to).
    pub ingress_ifindex: u32,
    /// Destination MAC of the frame (the ingress interface's), source MAC (the sender's).
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
}

/// The firewall's judgement of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallStep {
    /// 0: no rule, else `enum fw_action` (1 block, 2 allow).
    pub action: u32,
    /// The deciding rule's id (with an action).
    pub rule_id: u32,
}

/// The rate limiter's judgement of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStep {
    pub policy_id: u32,
    /// true: scope new-flows; false: all.
    pub new_flows: bool,
    /// None: not charged (no live bucket change would happen: new-flows and a live flow).
    pub allowed: Option<bool>,
    /// Packets the client could send at once now (with a charge recorded).
    pub tokens: Option<u64>,
    /// Nanoseconds until the client gets a packet through again (limited only).
    pub wait_ns: Option<u64>,
}

/// Where the flow was found, or how a new one would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStep {
    /// A live entry: `table` "dsr" (of CPU `cpu`), "nat" or "embryonic".
    Tracked {
        table: &'static str,
        cpu: u32,
        flags: u8,
        idle_ns: u64,
    },
    /// A new flow on the Maglev ring.
    New {
        hash: u32,
        slot: u32,
        /// It would be recorded in a flow table (DSR: not past the new-flow guard; not FIN/RST).
        recorded: bool,
    },
}

/// The next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHopStep {
    /// From the flow's cache (no lookup).
    pub cached: bool,
    /// `bpf_fib_lookup`'s answer (`BPF_FIB_LKUP_RET_*`), None when cached.
    pub fib_rc: Option<i32>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The neighbour the packet goes to (the gateway, or `dst` on the link).
    pub gateway: Ipv4Addr,
    pub ifindex: u32,
    /// With FRAG_NEEDED: the egress MTU.
    pub mtu: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The egress is the ingress or an interface lbd attached to.
    pub egress_attached: bool,
}

/// What the data plane would do with the packet (decoded `struct lb_explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// XDP action (`XDP_DROP`...), as a number.
    pub action: u32,
    /// `enum lb_reason` index.
    pub reason: usize,
    pub firewall: Option<FirewallStep>,
    /// The firewall allow-listed the source: no rate limit.
    pub ratelimit_exempt: bool,
    pub ratelimit: Option<RateLimitStep>,
    pub vip_id: Option<u32>,
    pub flow: Option<FlowStep>,
    /// A SYN on a closing entry: the old flow would end and a fresh one start.
    pub restarted: bool,
    /// An embryonic NAT flow whose SNAT port another flow holds now.
    pub port_lost: bool,
    /// (id, address) of the backend.
    pub backend: Option<(u32, SocketAddrV4)>,
    /// `enum lb_mode` the packet is sent in.
    pub mode: u8,
    /// NAT: the SNAT port (a new flow: the first candidate free now).
    pub snat_port: Option<u16>,
    pub next_hop: Option<NextHopStep>,
}

/// A handle to run explains with: duplicated handles of every map of the data plane (cheap to
/// make), and the shared slot of the loaded program. No map writer: the program it runs writes
/// only its own record.
pub struct Explainer {
    maps: BTreeMap<String, MapHandle>,
    firewall_scope: types::fw_scope,
    slot: Slot,
}

impl super::Dataplane {
    /// An [`Explainer`] on this data plane's maps.
    pub fn explainer(&self) -> Result<Explainer, DataplaneError> {
        let maps = self.table_handles()?;
        let firewall_scope = self
            .skel
            .maps
            .rodata_data
            .as_ref()
            .map(|r| r.firewall_scope)
            .unwrap_or(types::fw_scope::FW_SCOPE_VIPS);
        Ok(Explainer {
            maps,
            firewall_scope,
            slot: self.explain.clone(),
        })
    }
}

impl Explainer {
    /// Loads `lb_explain` with the live maps (once per data plane).
    fn load(&self) -> Result<ExplainSkel<'static>, DataplaneError> {
        // As for the main program: one small leak per data plane, which keeps the skeleton.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = ExplainSkelBuilder::default()
            .open(storage)
            .map_err(bpf_err("opening the explain object"))?;
        if let Some(r) = open.maps.rodata_data.as_deref_mut() {
            r.firewall_scope = et::fw_scope(self.firewall_scope.0);
        }
        for mut map in open.open_object_mut().maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if name.contains('.') {
                continue; // its own .bss (the record), .rodata, .kconfig
            }
            let live = self.maps.get(&name).ok_or_else(|| DataplaneError::Io {
                what: format!("loading lb_explain: the data plane has no map {name}"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            map.reuse_fd(live.as_fd())
                .map_err(bpf_err(format!("reusing map {name} for lb_explain")))?;
        }
        open.load()
            .map_err(bpf_err("loading lb_explain (verifier log above)"))
    }

    /// Runs the packet of `probe` through `lb_explain` and decodes what the stages recorded.
    pub fn explain(&self, probe: &Probe) -> Result<Explanation, DataplaneError> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.load()?);
        }
        let skel = slot.as_ref().expect("loaded above");
        let frame = build_frame(probe);
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx = libbpf_sys::xdp_md {
            data: 0,
            data_end: frame.len() as u32,
            data_meta: 0,
            ingress_ifindex: probe.ingress_ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: frame.len() as u32,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            ctx_in: (&mut ctx as *mut libbpf_sys::xdp_md).cast(),
            ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
            repeat: 1,
            ..Default::default()
        };
        let fd = skel.progs.lb_explain.as_fd();
        // SAFETY: every pointer in opts refers to a live buffer of the stated size.
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd.as_raw_fd(), &mut opts) };
        if rc != 0 {
            return Err(DataplaneError::Io {
                what: format!(
                    "running lb_explain (BPF_PROG_TEST_RUN, ingress ifindex {})",
                    probe.ingress_ifindex
                ),
                source: std::io::Error::from_raw_os_error(-rc),
            });
        }
        let bss = skel
            .maps
            .bss_data
            .as_deref()
            .ok_or_else(|| DataplaneError::Io {
                what: "reading lb_explain's record".into(),
                source: std::io::Error::other("the program's .bss is not memory-mapped"),
            })?;
        // SAFETY: the record is plain data in the mapping the kernel wrote during the run
        // (which is over: runs are serialised by the slot's lock).
        let rec: et::lb_explain = unsafe { std::ptr::read_volatile(&bss.lb_explain_out) };
        Ok(decode(&rec, opts.retval))
    }
}

fn has(rec: &et::lb_explain, stage: et::lb_explain_stages) -> bool {
    rec.stages & stage.0 != 0
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

/// Decodes the record of one run.
fn decode(rec: &et::lb_explain, retval: u32) -> Explanation {
    use et::lb_explain_stages as S;
    let firewall = has(rec, S::LB_EX_FIREWALL).then_some(FirewallStep {
        action: rec.fw_word >> types::fw_verdict_bits::FW_VERDICT_ACTION_SHIFT.0,
        rule_id: rec.fw_word & types::fw_verdict_bits::FW_VERDICT_ID_MASK.0,
    });
    let ratelimit = has(rec, S::LB_EX_RATELIMIT).then(|| {
        let allowed = match et::lb_explain_rl_result(rec.rl_result) {
            et::lb_explain_rl_result::LB_EX_RL_ALLOWED => Some(true),
            et::lb_explain_rl_result::LB_EX_RL_LIMITED => Some(false),
            _ => None,
        };
        // GCRA (bpf/ratelimit.h): the client is ahead of now by max(TAT - now, 0); each packet
        // costs one interval, up to burst_time ahead.
        let ahead = rec.rl_tat.saturating_sub(rec.rl_now);
        let tokens = (allowed.is_some() && rec.rl_interval > 0)
            .then(|| rec.rl_burst_time.saturating_sub(ahead) / rec.rl_interval);
        let wait_ns = (allowed == Some(false)).then(|| {
            (ahead + rec.rl_interval).saturating_sub(rec.rl_burst_time)
                >> types::rl_limits::RL_TIME_SHIFT.0
        });
        RateLimitStep {
            policy_id: rec.rl_policy,
            new_flows: rec.rl_scope == types::rl_scope::RL_SCOPE_NEW_FLOWS.0,
            allowed,
            tokens,
            wait_ns,
        }
    });
    let flow = if has(rec, S::LB_EX_FLOW) {
        let table = match et::flow_table(u32::from(rec.flow_table)) {
            et::flow_table::FT_DSR => "dsr",
            et::flow_table::FT_NAT => "nat",
            et::flow_table::FT_SYN => "embryonic",
            _ => "none",
        };
        Some(FlowStep::Tracked {
            table,
            cpu: rec.flow_cpu,
            flags: rec.flow_flags,
            idle_ns: rec.flow_idle_ns,
        })
    } else if has(rec, S::LB_EX_MAGLEV) {
        Some(FlowStep::New {
            hash: rec.hash,
            slot: rec.slot,
            recorded: has(rec, S::LB_EX_RECORD),
        })
    } else {
        None
    };
    let next_hop = has(rec, S::LB_EX_NEXTHOP).then(|| {
        let cached = has(rec, S::LB_EX_NH_CACHED);
        NextHopStep {
            cached,
            fib_rc: (!cached).then_some(rec.fib_rc),
            src: addr(rec.nh_src_be),
            dst: addr(rec.nh_dst_be),
            gateway: addr(rec.nh_gateway_be),
            ifindex: rec.nh_ifindex,
            mtu: rec.nh_mtu,
            dmac: rec.nh_dmac,
            smac: rec.nh_smac,
            egress_attached: has(rec, S::LB_EX_EGRESS_ATTACHED),
        }
    });
    let backend = has(rec, S::LB_EX_BACKEND).then(|| {
        (
            rec.backend_id,
            SocketAddrV4::new(addr(rec.backend_be), u16::from_be(rec.backend_port_be)),
        )
    });
    let nat = rec.mode == types::lb_mode::LB_MODE_NAT.0 as u8;
    Explanation {
        action: retval,
        reason: rec.reason as usize,
        firewall,
        ratelimit_exempt: has(rec, S::LB_EX_RL_EXEMPT),
        ratelimit,
        vip_id: has(rec, S::LB_EX_VIP).then_some(rec.vip_id),
        flow,
        restarted: has(rec, S::LB_EX_FLOW_RESTART),
        port_lost: has(rec, S::LB_EX_PORT_LOST),
        backend,
        mode: rec.mode,
        snat_port: (nat && rec.snat_port_be != 0).then(|| u16::from_be(rec.snat_port_be)),
        next_hop,
    }
}

/// The Internet checksum (RFC 1071) of `parts` taken as one run of bytes: the one's-complement
/// sum of its 16-bit big-endian words, folded, complemented. Also the backend check's.
pub(crate) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame of `probe`: Ethernet, IPv4 (TTL 64, DF), TCP (SYN or ACK, window 64240) or UDP,
/// with 8 bytes of payload, every checksum right.
pub fn build_frame(probe: &Probe) -> Vec<u8> {
    let payload = *b"explain\n";
    let (proto, l4_len) = match probe.proto {
        Proto::Tcp => (6u8, 20usize),
        Proto::Udp => (17u8, 8usize),
    };
    let tot_len = 20 + l4_len + payload.len();
    let (src, dst) = (probe.client.ip().octets(), probe.vip.ip().octets());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(tot_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::with_capacity(l4_len);
    l4.extend_from_slice(&probe.client.port().to_be_bytes());
    l4.extend_from_slice(&probe.vip.port().to_be_bytes());
    let check_at = match probe.proto {
        Proto::Tcp => {
            let (flags, ack) = match probe.segment {
                Segment::Syn => (0x02u8, 0u32),
                Segment::Ack => (0x10, 1),
            };
            l4.extend_from_slice(&0x1000_0000u32.to_be_bytes());
            l4.extend_from_slice(&ack.to_be_bytes());
            l4.extend_from_slice(&[0x50, flags]);
            l4.extend_from_slice(&64240u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0]);
            16
        }
        Proto::Udp => {
            l4.extend_from_slice(&((l4_len + payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            6
        }
    };
    let l4_total = (l4_len + payload.len()) as u16;
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&l4_total.to_be_bytes());
    let mut c = checksum(&[&pseudo, &l4, &payload]);
    if c == 0 && probe.proto == Proto::Udp {
        c = 0xffff;
    }
    l4[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + tot_len);
    frame.extend_from_slice(&probe.eth_dst);
    frame.extend_from_slice(&probe.eth_src);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&l4);
    frame.extend_from_slice(&payload);
    frame
}
