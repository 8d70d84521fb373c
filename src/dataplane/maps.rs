//! Typed access to the program's maps: Rust values in, skeleton `types` (from `bpf/xdplb.h`) out.
//! The only place where map keys and values are turned into bytes.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::{bpf_err, DataplaneError};
use crate::skel::types;
use crate::skel::LbMaps;
use xdplb_model::state::{Mode, Protocol};

/// Views a map key or value as bytes.
///
/// Only used with the `#[repr(C)]` structs of `bpf/xdplb.h`, which have explicit padding fields
/// and are built from `Default` (all bytes initialised).
pub(crate) fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain-old-data repr(C) type without implicit padding (see above).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Reads a plain-old-data value from map bytes (which may be shorter than T only on a bug).
pub(crate) fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: copies at most size_of::<T>() bytes into a valid T; every bit pattern is valid for
    // these integer-only structs.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

/// One of the client-side flow tables (`bpf/maps.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowTable {
    /// `flows_syn_v2`: TCP flows whose handshake has not completed.
    Embryonic,
    /// `nat_fwd_v2`.
    NatEstablished,
    /// `dsr_v2`'s table of this CPU.
    Dsr(usize),
}

/// The flow-table key of `src` -> `dst` (`struct flow_key4`).
pub fn flow_key4(src: SocketAddrV4, dst: SocketAddrV4, proto: Protocol) -> types::flow_key4 {
    types::flow_key4 {
        saddr_be: u32::from(*src.ip()).to_be(),
        daddr_be: u32::from(*dst.ip()).to_be(),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto: proto.number(),
        ..Default::default()
    }
}

/// An IPv4 address in the 16-byte form of the maps.
pub fn addr_v4(ip: Ipv4Addr) -> types::lb_addr {
    let mut a = types::lb_addr::default();
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&ip.octets());
    a.bytes = bytes;
    a
}

/// The IPv4 address held in a map address.
pub(crate) fn v4_of(a: &types::lb_addr) -> Ipv4Addr {
    // SAFETY: every variant of the union is plain bytes.
    let b = unsafe { a.bytes };
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The `vips` map key of a VIP.
pub(crate) fn vip_key(addr: SocketAddrV4, proto: Protocol) -> types::vip_key {
    types::vip_key {
        addr: addr_v4(*addr.ip()),
        port_be: addr.port().to_be(),
        proto: proto.number(),
        family: types::lb_family::LB_AF_INET.0 as u8,
    }
}

/// The prefilter bit of a destination address (`vip_filter_bit()` of `bpf/vip.h`).
pub fn vip_filter_bit(ip: Ipv4Addr) -> u32 {
    use types::lb_vip_filter_params as P;
    u32::from(ip).wrapping_mul(P::LB_VIP_FILTER_MULT.0) >> (32 - P::LB_VIP_FILTER_BITS_LOG2.0)
}

/// Words of `struct lb_vip_filter`.
const FILTER_WORDS: usize = types::lb_vip_filter_params::LB_VIP_FILTER_WORDS.0 as usize;
/// Entries of `vips` and `vip_ids`.
const VIP_SLOTS: usize = types::lb_limits::LB_MAX_VIPS.0 as usize;

/// Sets the prefilter bit of `ip` in `words`.
fn set_filter_bit(words: &mut [u64], ip: Ipv4Addr) {
    let bit = vip_filter_bit(ip) as usize;
    if let Some(w) = words.get_mut(bit / 64) {
        *w |= 1u64 << (bit % 64);
    }
}

/// The `enum lb_mode` value of `mode`, as flow entries and `vip_meta` hold it.
pub fn mode_value(mode: Mode) -> u8 {
    let m = match mode {
        Mode::Nat => types::lb_mode::LB_MODE_NAT,
        Mode::L2dsr => types::lb_mode::LB_MODE_L2DSR,
        Mode::Ipip => types::lb_mode::LB_MODE_IPIP,
    };
    m.0 as u8
}

/// Run-time settings for `lb_config`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub snat_addr: Ipv4Addr,
    pub snat_ports: (u16, u16),
    pub tcp_timeout: Duration,
    pub tcp_closing_timeout: Duration,
    /// Idle timeout of an embryonic TCP flow (`[timeouts] tcp_handshake`).
    pub tcp_handshake_timeout: Duration,
    pub udp_timeout: Duration,
    /// Outer source of IPIP packets: host bits vary per flow (a /32 is one fixed address).
    pub ipip_source: ipnet::Ipv4Net,
    /// How long a flow reuses its cached next hop (`[timeouts] nexthop_cache`); zero: no cache.
    pub nexthop_cache: Duration,
    /// The DSR new-flow guard (`[tables] new_flows_per_cpu`); 0: off.
    pub new_flows_per_cpu: u32,
    /// Source of the time exceeded the balancer sends (`[icmp] source`).
    pub icmp_source: Ipv4Addr,
    /// Budget of relayed ICMP errors per VIP (`[icmp] errors_per_second`); `None`: no limit.
    pub icmp_errors: Option<xdplb_model::ratelimit::Bucket>,
    /// Budget of time exceeded sent (`[icmp] time_exceeded_per_second`); `None`: no limit.
    pub time_exceeded: Option<xdplb_model::ratelimit::Bucket>,
}

impl Default for RuntimeConfig {
    /// lbd's defaults (`examples/lbd.toml`) with the given SNAT address and ports left unset.
    fn default() -> Self {
        Self {
            snat_addr: Ipv4Addr::UNSPECIFIED,
            snat_ports: (0, 0),
            tcp_timeout: Duration::from_secs(300),
            tcp_closing_timeout: Duration::from_secs(10),
            tcp_handshake_timeout: Duration::from_secs(5),
            udp_timeout: Duration::from_secs(30),
            ipip_source: ipnet::Ipv4Net::default(),
            nexthop_cache: Duration::from_secs(1),
            new_flows_per_cpu: 0,
            icmp_source: Ipv4Addr::UNSPECIFIED,
            icmp_errors: Some(xdplb_model::ratelimit::Bucket::new(1000, 100)),
            time_exceeded: Some(xdplb_model::ratelimit::Bucket::new(1000, 100)),
        }
    }
}

/// Counters of one VIP or backend, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// The global counters: packets per reason and per XDP verdict, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    /// Indexed by `enum lb_reason`.
    pub reasons: Vec<u64>,
    /// Indexed by XDP action.
    pub verdicts: Vec<u64>,
    /// Flow-table events, indexed by `enum lb_event` ([`event_name`]).
    pub events: Vec<u64>,
}

/// Name of a reason as operators see it: `LB_REASON_PASS_NOT_VIP` -> `pass_not_vip`.
pub fn reason_name(index: usize) -> String {
    // The names come from the C enum through the skeleton; this table is only the Rust spelling.
    use types::lb_reason as R;
    let all = [
        (R::LB_REASON_PASS_NOT_IP, "pass_not_ip"),
        (R::LB_REASON_PASS_NOT_VIP, "pass_not_vip"),
        (R::LB_REASON_PASS_FRAGMENT, "pass_fragment"),
        (R::LB_REASON_PASS_MALFORMED, "pass_malformed"),
        (R::LB_REASON_DROP_MALFORMED, "drop_malformed"),
        (R::LB_REASON_DROP_NO_BACKEND, "drop_no_backend"),
        (R::LB_REASON_DROP_PORT_EXHAUSTED, "drop_port_exhausted"),
        (R::LB_REASON_DROP_CT_FULL, "drop_ct_full"),
        (R::LB_REASON_DROP_NO_CONFIG, "drop_no_config"),
        (R::LB_REASON_PASS_FIB_NO_NEIGH, "pass_fib_no_neigh"),
        (R::LB_REASON_PASS_FIB_FAILED, "pass_fib_failed"),
        (R::LB_REASON_DROP_FIB_BLACKHOLE, "drop_fib_blackhole"),
        (R::LB_REASON_TX_NAT_FORWARD, "tx_nat_forward"),
        (R::LB_REASON_TX_NAT_REPLY, "tx_nat_reply"),
        (R::LB_REASON_PASS_NOT_TRACKED, "pass_not_tracked"),
        (
            R::LB_REASON_PASS_EGRESS_NOT_ATTACHED,
            "pass_egress_not_attached",
        ),
        (R::LB_REASON_TX_L2DSR, "tx_l2dsr"),
        (R::LB_REASON_TX_IPIP, "tx_ipip"),
        (R::LB_REASON_TX_ICMP_FRAG_NEEDED, "tx_icmp_frag_needed"),
        (R::LB_REASON_DROP_TOO_BIG, "drop_too_big"),
        (R::LB_REASON_DROP_ENCAP_FAILED, "drop_encap_failed"),
        (R::LB_REASON_DROP_DSR_NO_NEXTHOP, "drop_dsr_no_nexthop"),
        (R::LB_REASON_DROP_RATELIMIT, "drop_ratelimit"),
        (R::LB_REASON_DROP_FIREWALL, "drop_firewall"),
        (R::LB_REASON_DROP_FRAGMENT, "drop_fragment"),
        (R::LB_REASON_DROP_LAND, "drop_land"),
        (R::LB_REASON_TX_ICMP_ERROR, "tx_icmp_error"),
        (R::LB_REASON_DROP_ICMP_NO_FLOW, "drop_icmp_no_flow"),
        (R::LB_REASON_DROP_NAT_NO_FLOW, "drop_nat_no_flow"),
        // hardening
        (R::LB_REASON_TX_ICMP_TIME_EXCEEDED, "tx_icmp_time_exceeded"),
        (R::LB_REASON_DROP_TTL_EXCEEDED, "drop_ttl_exceeded"),
        (R::LB_REASON_DROP_ICMP_BUDGET, "drop_icmp_budget"),
        (R::LB_REASON_DROP_DSR_NOT_ONLINK, "drop_dsr_not_onlink"),
        (R::LB_REASON_DROP_FIB_NO_NEIGH, "drop_fib_no_neigh"),
        (R::LB_REASON_DROP_FIB_FAILED, "drop_fib_failed"),
        (
            R::LB_REASON_DROP_EGRESS_NOT_ATTACHED,
            "drop_egress_not_attached",
        ),
        // tunnel
        (R::LB_REASON_PASS_VLAN, "pass_vlan"),
        (R::LB_REASON_PASS_IPIP_TOO_BIG, "pass_ipip_too_big"),
    ];
    all.iter()
        .find(|(r, _)| r.0 as usize == index)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("reason_{index}"))
}

/// Name of a flow-table event (`enum lb_event`): `LB_EV_PORT_TAKEOVER` -> `port_takeover`.
pub fn event_name(index: usize) -> String {
    use types::lb_event as E;
    let all = [
        (E::LB_EV_EMBRYONIC, "embryonic"),
        (E::LB_EV_PROMOTED, "promoted"),
        (E::LB_EV_DSR_RECHOSEN, "dsr_rechosen"),
        (E::LB_EV_GUARD_SKIPPED, "guard_skipped"),
        (E::LB_EV_PORT_TAKEOVER, "port_takeover"),
        (E::LB_EV_PORT_RACE_LOST, "port_race_lost"),
        (E::LB_EV_REV_FULL, "rev_full"),
        (E::LB_EV_PROMOTE_FAILED, "promote_failed"),
        (E::LB_EV_SYN_BAD_ACK, "syn_bad_ack"),
        (E::LB_EV_RESTARTED, "restarted"),
        (E::LB_EV_PORT_LOST, "port_lost"),
    ];
    all.iter()
        .find(|(e, _)| e.0 as usize == index)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("event_{index}"))
}

/// Number of flow-table events the program counts.
pub(crate) const EVENT_COUNT: usize = types::lb_event::LB_EV_MAX.0 as usize;

/// Number of reasons the program counts.
pub(crate) const REASON_COUNT: usize = types::lb_reason::LB_REASON_MAX.0 as usize;

/// Name of an XDP verdict.
pub fn verdict_name(index: usize) -> &'static str {
    [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ]
    .get(index)
    .copied()
    .unwrap_or("XDP_UNKNOWN")
}

/// Typed view of the maps of a loaded program.
pub struct Maps<'a> {
    m: &'a LbMaps<'static>,
}

impl<'a> Maps<'a> {
    pub(super) fn new(m: &'a LbMaps<'static>) -> Self {
        Self { m }
    }

    /// The VIP (address, IP protocol number) that `vip_ids` names for `id`; `None`: no VIP.
    pub fn vip_of_id(&self, id: u32) -> Result<Option<(SocketAddrV4, u8)>, DataplaneError> {
        let Some(v) = self
            .m
            .vip_ids
            .lookup(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading vip_ids"))?
        else {
            return Ok(None);
        };
        let k: types::vip_key = from_bytes(&v);
        if k.family == 0 {
            return Ok(None);
        }
        let addr = SocketAddrV4::new(v4_of(&k.addr), u16::from_be(k.port_be));
        Ok(Some((addr, k.proto)))
    }

    /// The prefilter (`vip_filter`) as the program reads it: one word per 64 bits.
    pub fn read_vip_filter(&self) -> Result<Vec<u64>, DataplaneError> {
        let v = self
            .m
            .vip_filter
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading vip_filter"))?
            .unwrap_or_default();
        let mut words: Vec<u64> = v
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        words.resize(FILTER_WORDS, 0);
        Ok(words)
    }

    /// The VIPs of `vips`: (key, id).
    fn vips(&self) -> Result<Vec<(types::vip_key, u32)>, DataplaneError> {
        let mut out = Vec::new();
        super::telemetry::for_each_batch(&self.m.vips, VIP_SLOTS, |k, v| {
            let meta: types::vip_meta = from_bytes(v);
            out.push((from_bytes(k), meta.vip_id));
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// The backend ids of a VIP's ring as the data plane sees them (tests, diagnostics).
    pub fn read_ring(&self, vip_id: u32) -> Result<Option<Vec<u32>>, DataplaneError> {
        let Some(v) = self
            .m
            .maglev_rings
            .lookup(&vip_id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading maglev_rings"))?
        else {
            return Ok(None);
        };
        let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        let ring = MapHandle::from_map_id(id).map_err(bpf_err("opening a Maglev ring"))?;
        let mut out = Vec::with_capacity(ring.max_entries() as usize);
        for k in 0..ring.max_entries() {
            let v = ring
                .lookup(&k.to_ne_bytes(), MapFlags::ANY)
                .map_err(bpf_err("reading a Maglev ring"))?
                .unwrap_or_default();
            out.push(from_bytes::<u32>(&v));
        }
        Ok(Some(out))
    }

    pub fn vip_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        sum_counters(&self.m.vip_stats, id)
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        sum_counters(&self.m.backend_stats, id)
    }

    pub fn global_counters(&self) -> Result<GlobalCounters, DataplaneError> {
        let per_cpu = self
            .m
            .global_stats
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading global_stats"))?
            .unwrap_or_default();
        let mut g = GlobalCounters {
            reasons: vec![0; REASON_COUNT],
            verdicts: vec![0; 5],
            events: vec![0; EVENT_COUNT],
        };
        for cpu in per_cpu {
            let s: types::lb_global_stats = from_bytes(&cpu);
            for (acc, v) in g.reasons.iter_mut().zip(s.reasons) {
                *acc += v;
            }
            for (acc, v) in g.verdicts.iter_mut().zip(s.verdicts) {
                *acc += v;
            }
            for (acc, v) in g.events.iter_mut().zip(s.events) {
                *acc += v;
            }
        }
        Ok(g)
    }

    /// Entries of the client-side flow tables: embryonic, NAT established and every CPU's DSR
    /// table (walks the keys).
    pub fn conntrack_entries(&self) -> usize {
        let dsr: usize = super::flows::dsr_tables(&self.m.dsr_v2)
            .map(|t| t.iter().map(|m| m.keys().count()).sum())
            .unwrap_or(0);
        self.m.flows_syn_v2.keys().count() + self.m.nat_fwd_v2.keys().count() + dsr
    }

    /// The entry of client flow `client` -> `vip` in one client-side flow table, if any.
    pub fn flow_entry(
        &self,
        table: FlowTable,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        proto: Protocol,
    ) -> Result<Option<types::flow4>, DataplaneError> {
        let key = flow_key4(client, vip, proto);
        let found = match table {
            FlowTable::Embryonic => self.m.flows_syn_v2.lookup(bytes_of(&key), MapFlags::ANY),
            FlowTable::NatEstablished => self.m.nat_fwd_v2.lookup(bytes_of(&key), MapFlags::ANY),
            FlowTable::Dsr(cpu) => match super::flows::dsr_tables(&self.m.dsr_v2)?.get(cpu) {
                Some(t) => t.lookup(bytes_of(&key), MapFlags::ANY),
                None => Ok(None),
            },
        }
        .map_err(bpf_err("reading a flow table"))?;
        Ok(found.map(|v| from_bytes(&v)))
    }

    /// The NAT reply entry of backend `backend` -> SNAT address and port `snat`, if any
    /// (established first, then embryonic).
    pub fn nat_reply_entry(
        &self,
        backend: SocketAddrV4,
        snat: SocketAddrV4,
        proto: Protocol,
    ) -> Result<Option<types::nat4_rev>, DataplaneError> {
        let key = flow_key4(backend, snat, proto);
        let mut found = None;
        for table in [&self.m.nat_rev_v2, &self.m.nat_rev_syn_v2] {
            found = table
                .lookup(bytes_of(&key), MapFlags::ANY)
                .map_err(bpf_err("reading the NAT reply tables"))?;
            if found.is_some() {
                break;
            }
        }
        Ok(found.map(|v| from_bytes(&v)))
    }

    /// Handles of every flow table (embryonic, NAT both ways, every CPU's DSR table): for walks
    /// and for benches that empty them between trials.
    pub fn flow_tables(&self) -> Result<Vec<libbpf_rs::MapHandle>, DataplaneError> {
        let mut out = Vec::new();
        for map in [
            &self.m.flows_syn_v2,
            &self.m.nat_fwd_v2,
            &self.m.nat_rev_v2,
            &self.m.nat_rev_syn_v2,
        ] {
            out.push(libbpf_rs::MapHandle::try_from(map).map_err(bpf_err("a flow table handle"))?);
        }
        out.extend(super::flows::dsr_tables(&self.m.dsr_v2)?);
        Ok(out)
    }

    /// Entries of the NAT reply tables (each owns one SNAT port), established and embryonic.
    pub fn nat_rev_entries(&self) -> usize {
        self.m.nat_rev_v2.keys().count() + self.m.nat_rev_syn_v2.keys().count()
    }
}

super::map_writer! {
    /// Writes to the maps: only from `&mut Dataplane` ([`super::Dataplane::maps_mut`]), so only the
    /// owner of the data plane (the reconciler; lbd before it starts) can change what the program sees.
    pub struct MapWriter => Maps
}

impl<'a> MapWriter<'a> {
    pub(super) fn new(m: &'a LbMaps<'static>) -> Self {
        Self { r: Maps::new(m) }
    }

    pub fn write_config(&self, c: &RuntimeConfig) -> Result<(), DataplaneError> {
        let v = types::lb_config {
            snat_addr: addr_v4(c.snat_addr),
            snat_port_min: c.snat_ports.0,
            snat_port_max: c.snat_ports.1,
            pad: 0,
            tcp_timeout_ns: c.tcp_timeout.as_nanos() as u64,
            tcp_closing_timeout_ns: c.tcp_closing_timeout.as_nanos() as u64,
            udp_timeout_ns: c.udp_timeout.as_nanos() as u64,
            ipip_src: addr_v4(c.ipip_source.network()),
            ipip_src_hostmask: u32::from(c.ipip_source.hostmask()),
            pad2: 0,
            nexthop_ttl_ns: c.nexthop_cache.as_nanos() as u64,
            tcp_handshake_timeout_ns: c.tcp_handshake_timeout.as_nanos() as u64,
            new_flows_per_cpu: c.new_flows_per_cpu,
            icmp_src_be: u32::from_ne_bytes(c.icmp_source.octets()),
            icmp_error_interval: c.icmp_errors.map_or(0, |b| b.interval),
            icmp_error_burst_time: c.icmp_errors.map_or(0, |b| b.burst_time),
            time_exceeded_interval: c.time_exceeded.map_or(0, |b| b.interval),
            time_exceeded_burst_time: c.time_exceeded.map_or(0, |b| b.burst_time),
        };
        self.m
            .lb_config_v2
            .update(&0u32.to_ne_bytes(), bytes_of(&v), MapFlags::ANY)
            .map_err(bpf_err("writing lb_config_v2"))
    }

    pub fn put_vip(
        &self,
        addr: SocketAddrV4,
        proto: Protocol,
        id: u32,
        mode: Mode,
        ring_size: u32,
    ) -> Result<(), DataplaneError> {
        let meta = types::vip_meta {
            vip_id: id,
            ring_size,
            mode: mode_value(mode),
            flags: 0,
            pad: 0,
        };
        let key = vip_key(addr, proto);
        // The prefilter before the VIP (a packet that would find the VIP must not be filtered
        // out), the id's slot after it (a flow's packet may skip the lookup only of a VIP that
        // is there).
        self.vip_filter_add(*addr.ip())?;
        self.vip_addr_add(*addr.ip())?;
        self.m
            .vips
            .update(bytes_of(&key), bytes_of(&meta), MapFlags::ANY)
            .map_err(bpf_err(format!("writing vip {addr}/{proto}")))?;
        self.set_vip_id(id, &key)
    }

    /// Removes a VIP: its id's slot first (its flows' packets go back to the vips lookup), then
    /// the VIP, then its address from the prefilter.
    pub fn delete_vip(&self, addr: SocketAddrV4, proto: Protocol) -> Result<(), DataplaneError> {
        let key = vip_key(addr, proto);
        // Every slot that names the VIP (one, unless an id changed without a removal).
        let mut ids = Vec::new();
        super::telemetry::for_each_batch(&self.m.vip_ids, VIP_SLOTS, |k, v| {
            if v == bytes_of(&key) {
                ids.push(from_bytes::<u32>(k));
            }
            std::ops::ControlFlow::Continue(())
        })?;
        for id in ids {
            self.set_vip_id(id, &types::vip_key::default())?;
        }
        delete_if_present(&self.m.vips, bytes_of(&key), "vips")?;
        self.rebuild_vip_filter()
    }

    fn set_vip_id(&self, id: u32, key: &types::vip_key) -> Result<(), DataplaneError> {
        self.m
            .vip_ids
            .update(&id.to_ne_bytes(), bytes_of(key), MapFlags::ANY)
            .map_err(bpf_err(format!("writing vip_ids[{id}]")))
    }

    fn write_vip_filter(&self, words: &[u64]) -> Result<(), DataplaneError> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.m
            .vip_filter
            .update(&0u32.to_ne_bytes(), &bytes, MapFlags::ANY)
            .map_err(bpf_err("writing vip_filter"))
    }

    /// Sets the prefilter bit of `ip` (nothing is written when it is set already). Bits only go
    /// from clear to set here, so a packet reading the filter while it is rewritten sees every
    /// bit that was set before, whichever part of the new value it reads.
    fn vip_filter_add(&self, ip: Ipv4Addr) -> Result<(), DataplaneError> {
        let mut words = self.read_vip_filter()?;
        let before = words.clone();
        set_filter_bit(&mut words, ip);
        if words == before {
            return Ok(());
        }
        self.write_vip_filter(&words)
    }

    /// Puts `ip` in `vip_addrs` (the exact set of VIP addresses, `bpf/maps.h`).
    fn vip_addr_add(&self, ip: Ipv4Addr) -> Result<(), DataplaneError> {
        self.m
            .vip_addrs
            .update(&ip.octets(), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!("writing vip_addrs[{ip}]")))
    }

    /// Recomputes the prefilter and `vip_addrs` from the addresses in `vips` (after a VIP left).
    pub(crate) fn rebuild_vip_filter(&self) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; FILTER_WORDS];
        let mut addrs = std::collections::BTreeSet::new();
        for (key, _) in self.vips()? {
            set_filter_bit(&mut words, v4_of(&key.addr));
            addrs.insert(v4_of(&key.addr));
        }
        for ip in &addrs {
            self.vip_addr_add(*ip)?;
        }
        let stale: Vec<Vec<u8>> = self
            .m
            .vip_addrs
            .keys()
            .filter(|k| k.len() == 4 && !addrs.contains(&Ipv4Addr::new(k[0], k[1], k[2], k[3])))
            .collect();
        for k in stale {
            delete_if_present(&self.m.vip_addrs, &k, "vip_addrs")?;
        }
        if words == self.read_vip_filter()? {
            return Ok(());
        }
        self.write_vip_filter(&words)
    }

    /// Rewrites the prefilter and every slot of `vip_ids` from `vips`, before the program is
    /// attached: the maps pinned by an earlier lbd (maybe of a build without them) must not
    /// filter out an adopted VIP, nor name a VIP that is gone.
    pub(super) fn rebuild_vip_index(&self) -> Result<(), DataplaneError> {
        let vips = self.vips()?;
        let mut slots = vec![types::vip_key::default(); VIP_SLOTS];
        for (key, id) in &vips {
            if let Some(slot) = slots.get_mut(*id as usize) {
                *slot = *key;
            }
        }
        let keys: Vec<u8> = (0..VIP_SLOTS as u32)
            .flat_map(|i| i.to_ne_bytes())
            .collect();
        let values: Vec<u8> = slots.iter().flat_map(|k| bytes_of(k).to_vec()).collect();
        self.m
            .vip_ids
            .update_batch(
                &keys,
                &values,
                VIP_SLOTS as u32,
                MapFlags::ANY,
                MapFlags::ANY,
            )
            .map_err(bpf_err("writing vip_ids"))?;
        self.rebuild_vip_filter()
    }

    pub(crate) fn put_backend(&self, id: u32, addr: SocketAddrV4) -> Result<(), DataplaneError> {
        let be = types::backend {
            addr: addr_v4(*addr.ip()),
            port_be: addr.port().to_be(),
            family: types::lb_family::LB_AF_INET.0 as u8,
            flags: 0,
        };
        self.m
            .backends
            .update(&id.to_ne_bytes(), bytes_of(&be), MapFlags::ANY)
            .map_err(bpf_err(format!("writing backend {id}")))
    }

    /// Marks backend `id`'s flows for ending by the next sweep (`LB_BACKEND_F_ENDED`: removed,
    /// or down past the grace), or unmarks it. Read by the sweep only, never per packet.
    pub(crate) fn set_backend_ended(&self, id: u32, ended: bool) -> Result<(), DataplaneError> {
        let key = id.to_ne_bytes();
        let Some(v) = self
            .m
            .backends
            .lookup(&key, MapFlags::ANY)
            .map_err(bpf_err(format!("reading backend {id}")))?
        else {
            return Ok(());
        };
        let mut be: types::backend = from_bytes(&v);
        let flag = types::backend_flags::LB_BACKEND_F_ENDED.0 as u8;
        be.flags = if ended {
            be.flags | flag
        } else {
            be.flags & !flag
        };
        self.m
            .backends
            .update(&key, bytes_of(&be), MapFlags::ANY)
            .map_err(bpf_err(format!("writing backend {id}")))
    }

    /// Builds a new ring map from `table` and swaps it in for `vip_id` in one update of the
    /// outer map, so the XDP program sees the old table or the new one, never a mix. The kernel
    /// waits for an RCU grace period inside that update (map-in-map), so when this returns no
    /// packet is still reading the old ring.
    pub(crate) fn set_ring(&self, vip_id: u32, table: &[u32]) -> Result<(), DataplaneError> {
        let ring = mmapped_ring(table)?;
        let swapped = match self.swap_ring(vip_id, &ring) {
            // Rings pinned by an lbd whose inner-map template was not mmapable refuse an
            // mmapable ring (the flags must match): fill one the slow way for them.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::InvalidInput => {
                tracing::debug!(
                    vip_id,
                    "pinned maglev_rings takes no mmapable ring: batch update"
                );
                batch_ring(table).and_then(|ring| self.swap_ring(vip_id, &ring))
            }
            r => r,
        };
        swapped.map_err(bpf_err(format!(
            "swapping in the Maglev ring of vip {vip_id}"
        )))
        // `ring` is closed here; the outer map holds its own reference.
    }

    fn swap_ring(&self, vip_id: u32, ring: &MapHandle) -> Result<(), libbpf_rs::Error> {
        let fd = ring.as_fd().as_raw_fd() as u32;
        self.m
            .maglev_rings
            .update(&vip_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
    }

    pub(crate) fn delete_ring(&self, vip_id: u32) -> Result<(), DataplaneError> {
        delete_if_present(&self.m.maglev_rings, &vip_id.to_ne_bytes(), "maglev_rings")
    }

    pub fn add_tx_port(&self, ifindex: u32) -> Result<(), DataplaneError> {
        self.m
            .tx_ports
            .update(
                &ifindex.to_ne_bytes(),
                &ifindex.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(bpf_err(format!("adding ifindex {ifindex} to tx_ports")))
    }

    /// Zeroes a VIP's counters (when its id is handed out again).
    pub(crate) fn reset_vip_counters(&self, id: u32) -> Result<(), DataplaneError> {
        zero_percpu(&self.m.vip_stats, id)
    }

    /// Zeroes a backend's counters (when its id is handed out again).
    pub(crate) fn reset_backend_counters(&self, id: u32) -> Result<(), DataplaneError> {
        zero_percpu(&self.m.backend_stats, id)
    }
}

fn delete_if_present(
    map: &libbpf_rs::MapMut<'static>,
    key: &[u8],
    name: &str,
) -> Result<(), DataplaneError> {
    match map.delete(key) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(bpf_err(format!("deleting from {name}"))(e)),
    }
}

/// A new, unreferenced ring map of `len` slots with `extra` map flags.
fn new_ring(len: u32, extra: u32) -> Result<MapHandle, libbpf_rs::Error> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_sys::BPF_F_INNER_MAP | extra,
        ..Default::default()
    };
    MapHandle::create(MapType::Array, Some("xdplb_ring"), 4, 4, len, &opts)
}

/// A ring filled through a shared memory mapping: one copy of the table, no syscall per slot.
/// Nothing reads the map before it is swapped in, so there is no reader to race with.
fn mmapped_ring(table: &[u32]) -> Result<MapHandle, DataplaneError> {
    let len = table.len() as u32;
    let ring = new_ring(len, libbpf_sys::BPF_F_MMAPABLE)
        .map_err(bpf_err(format!("creating a Maglev ring of {len} slots")))?;
    let (p, size) = mmap_ring(ring.as_fd(), table.len())?;
    // SAFETY: the mapping is `size >= table.len() * RING_ELEM` bytes, page-aligned (so
    // u32-aligned), writable and private to this function until munmap.
    unsafe {
        let slots = p.as_ptr().cast::<u32>();
        for (i, id) in table.iter().enumerate() {
            slots.add(i * (RING_ELEM / 4)).write(*id);
        }
        libc::munmap(p.as_ptr().cast(), size);
    }
    Ok(ring)
}

/// Bytes per slot of a ring map: an array map stores each value in round_up(value_size, 8)
/// bytes, so slot i is the first 4 bytes of the 8 at offset 8 * i (the other 4 stay zero).
pub(crate) const RING_ELEM: usize = 8;

/// Maps the whole value area of the mmapable ring map `fd` of `slots` slots, read-write and
/// shared; returns the mapping and its length (page-rounded, as the kernel requires), for the
/// caller to `munmap`.
pub(crate) fn mmap_ring(
    fd: BorrowedFd<'_>,
    slots: usize,
) -> Result<(NonNull<u8>, usize), DataplaneError> {
    let failed = |source| DataplaneError::Io {
        what: "mapping a Maglev ring into memory".into(),
        source,
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let len = (slots * RING_ELEM).div_ceil(page) * page;
    // SAFETY: maps `len` bytes (the map's whole value area, page-rounded) of a valid map fd;
    // checked for MAP_FAILED below; the caller unmaps it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(failed(std::io::Error::last_os_error()));
    }
    let base = NonNull::new(p.cast::<u8>())
        .ok_or_else(|| failed(std::io::Error::other("mmap returned a null pointer")))?;
    Ok((base, len))
}

/// A ring filled by one batch update (the kernel still updates slot by slot: ~28 ms for 65,537
/// slots); for rings pinned by an lbd whose inner maps were not mmapable.
fn batch_ring(table: &[u32]) -> Result<MapHandle, libbpf_rs::Error> {
    let len = table.len() as u32;
    let ring = new_ring(len, 0)?;
    let keys: Vec<u8> = (0..len).flat_map(|k| k.to_ne_bytes()).collect();
    let values: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
    ring.update_batch(&keys, &values, len, MapFlags::ANY, MapFlags::ANY)?;
    Ok(ring)
}

fn sum_counters(map: &libbpf_rs::MapMut<'static>, id: u32) -> Result<Counters, DataplaneError> {
    let per_cpu = map
        .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
        .map_err(bpf_err("reading counters"))?
        .unwrap_or_default();
    let mut sum = Counters::default();
    for cpu in per_cpu {
        let c: types::lb_counters = from_bytes(&cpu);
        sum.packets += c.packets;
        sum.bytes += c.bytes;
        sum.new_flows += c.new_flows;
    }
    Ok(sum)
}

fn zero_percpu(map: &libbpf_rs::MapMut<'static>, id: u32) -> Result<(), DataplaneError> {
    let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
    let zero = vec![vec![0u8; map.value_size() as usize]; cpus];
    map.update_percpu(&id.to_ne_bytes(), &zero, MapFlags::ANY)
        .map_err(bpf_err("zeroing counters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_of_the_c_enum_has_a_name() {
        for i in 0..REASON_COUNT {
            assert!(
                !reason_name(i).starts_with("reason_"),
                "enum lb_reason value {i} has no name in reason_name()"
            );
        }
        for i in 0..EVENT_COUNT {
            assert!(
                !event_name(i).starts_with("event_"),
                "enum lb_event value {i} has no name in event_name()"
            );
        }
    }
}
