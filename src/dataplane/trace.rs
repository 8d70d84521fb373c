//! Packet tracing, the data-plane side (`bpf/trace.h`): the switch and filter (`lb_trace`, the
//! program's `.data.trace` global) and the perf buffer of `trace_events`.
//!
//! A [`TraceTap`] is made once, by the owner of the data plane ([`super::Dataplane::trace_tap`]);
//! it can only switch tracing on with a filter and bounds, read what the program sends, and
//! switch it off: it writes no other map. A [`TraceSession`] is one running trace: the perf
//! buffer is opened before the switch goes on, and dropping the session switches it off before
//! the buffer is closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

use ipnet::Ipv4Net;
use libbpf_rs::{MapCore, MapFlags, MapHandle, PerfBuffer, PerfBufferBuilder};

use super::maps::{bytes_of, from_bytes};
use super::{bpf_err, DataplaneError};
use crate::skel::types;

/// Most frame bytes a record carries (`LB_TRACE_SNAPLEN_MAX`).
pub const SNAPLEN_MAX: u32 = types::lb_trace_limits::LB_TRACE_SNAPLEN_MAX.0;

/// Perf buffer pages per CPU (256 KiB with 4 KiB pages).
const PERF_PAGES: usize = 64;

/// Which packets a trace takes (each `Some` must match the packet as it arrived).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Destination address.
    pub vip: Option<Ipv4Addr>,
    /// Destination port.
    pub port: Option<u16>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Source prefix.
    pub client: Option<Ipv4Net>,
}

/// One traced packet, as the program sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the program saw it.
    pub ts_ns: u64,
    /// Source and destination as it arrived (0.0.0.0:0 when not IPv4 TCP/UDP/ICMP).
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// IP protocol number (0: not parsed as IPv4).
    pub proto: u8,
    pub tcp_flags: u8,
    /// `enum lb_reason`.
    pub reason: u8,
    /// The XDP action.
    pub verdict: u8,
    pub ifindex: u32,
    pub rx_queue: u32,
    /// The frame's length at the exit.
    pub frame_len: u32,
    /// Its first bytes (the snap length), as the program left it.
    pub frame: Vec<u8>,
}

impl TraceRecord {
    /// Decodes a perf sample (`struct lb_trace_rec` then `cap_len` frame bytes); None if short.
    fn decode(sample: &[u8]) -> Option<Self> {
        let head = std::mem::size_of::<types::lb_trace_rec>();
        if sample.len() < head {
            return None;
        }
        let r: types::lb_trace_rec = from_bytes(&sample[..head]);
        let frame = sample.get(head..head + r.cap_len as usize)?.to_vec();
        let k = r.key;
        let (sport, dport) = (u16::from_be(k.sport_be), u16::from_be(k.dport_be));
        Some(Self {
            ts_ns: r.ts_ns,
            src: SocketAddrV4::new(Ipv4Addr::from(u32::from_be(k.saddr_be)), sport),
            dst: SocketAddrV4::new(Ipv4Addr::from(u32::from_be(k.daddr_be)), dport),
            proto: k.proto,
            tcp_flags: r.tcp_flags,
            reason: r.reason,
            verdict: r.verdict,
            ifindex: r.ifindex,
            rx_queue: r.rx_queue,
            frame_len: r.frame_len,
            frame,
        })
    }
}

/// The trace switch and the perf buffer map, duplicated from the loaded program.
pub struct TraceTap {
    cfg: MapHandle,
    events: MapHandle,
}

impl std::fmt::Debug for TraceTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceTap").finish_non_exhaustive()
    }
}

/// Sizes `trace_events` (one slot per possible CPU) before load: libbpf would do it at creation,
/// but the pinned map is compared with the open one first.
pub(super) fn prepare(open: &mut crate::skel::OpenLbSkel<'_>) -> Result<(), DataplaneError> {
    let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting the possible CPUs"))?;
    super::size_map(&mut open.maps.trace_events, cpus as u32, "trace_events")
}

impl super::Dataplane {
    /// The trace tap of this program (only the owner of the data plane makes one; lbd makes
    /// one at start and hands it to the trace service).
    pub fn trace_tap(&mut self) -> Result<TraceTap, DataplaneError> {
        let cfg = MapHandle::try_from(&self.skel.maps.data_trace)
            .map_err(bpf_err("duplicating the .data.trace handle"))?;
        let events = MapHandle::try_from(&self.skel.maps.trace_events)
            .map_err(bpf_err("duplicating the trace_events handle"))?;
        let want = std::mem::size_of::<types::data_trace>();
        if cfg.value_size() as usize != want {
            return Err(DataplaneError::Io {
                what: "the .data.trace map".into(),
                source: std::io::Error::other(format!(
                    "value size {} where struct lb_trace_cfg is {want}",
                    cfg.value_size()
                )),
            });
        }
        Ok(TraceTap { cfg, events })
    }
}

impl TraceTap {
    fn write(&self, c: &types::lb_trace_cfg) -> Result<(), DataplaneError> {
        let v = types::data_trace { lb_trace: *c };
        self.cfg
            .update(&0u32.to_ne_bytes(), bytes_of(&v), MapFlags::ANY)
            .map_err(bpf_err("writing the trace switch"))
    }

    /// The switch and filter as the program reads them now.
    pub fn read(&self) -> Result<types::lb_trace_cfg, DataplaneError> {
        let v = self
            .cfg
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading the trace switch"))?
            .unwrap_or_default();
        Ok(from_bytes::<types::lb_trace_cfg>(&v))
    }

    /// Whether the program is tracing.
    pub fn is_on(&self) -> Result<bool, DataplaneError> {
        Ok(self.read()?.on != 0)
    }

    /// Switches tracing off (also what dropping a session does).
    pub fn switch_off(&self) -> Result<(), DataplaneError> {
        let mut c = self.read()?;
        c.on = 0;
        self.write(&c)
    }

    /// Opens the perf buffer, then switches tracing on: the program sends at most `count`
    /// records, for at most `duration` (bounds it keeps by itself, should this process die),
    /// each with `snaplen` frame bytes at most. The session is not `Send`: poll it on the thread
    /// that started it.
    pub fn start(
        &self,
        filter: &TraceFilter,
        count: u32,
        duration: Duration,
        snaplen: u32,
    ) -> Result<TraceSession<'_>, DataplaneError> {
        let queue: Rc<RefCell<VecDeque<TraceRecord>>> = Rc::default();
        let lost: Rc<RefCell<u64>> = Rc::default();
        let (q, l) = (queue.clone(), lost.clone());
        let bad: Rc<RefCell<u64>> = Rc::default();
        let bad2 = bad.clone();
        let perf = PerfBufferBuilder::new(&self.events)
            .pages(PERF_PAGES)
            .sample_cb(move |_cpu, data: &[u8]| match TraceRecord::decode(data) {
                Some(r) => q.borrow_mut().push_back(r),
                None => *bad2.borrow_mut() += 1,
            })
            .lost_cb(move |_cpu, n| *l.borrow_mut() += n)
            .build()
            .map_err(bpf_err("opening the trace perf buffer"))?;
        let now = monotonic_ns();
        let mut c = types::lb_trace_cfg {
            snaplen: snaplen.min(SNAPLEN_MAX),
            left: i64::from(count),
            until_ns: now.saturating_add(duration.as_nanos().min(u128::from(u64::MAX)) as u64),
            ..Default::default()
        };
        if let Some(v) = filter.vip {
            c.match_bits |= types::lb_trace_match::LB_TRACE_M_VIP_ADDR.0;
            c.vip_be = u32::from(v).to_be();
        }
        if let Some(p) = filter.port {
            c.match_bits |= types::lb_trace_match::LB_TRACE_M_VIP_PORT.0;
            c.vport_be = p.to_be();
        }
        if let Some(p) = filter.proto {
            c.match_bits |= types::lb_trace_match::LB_TRACE_M_PROTO.0;
            c.proto = p;
        }
        if let Some(n) = filter.client.filter(|n| n.prefix_len() > 0) {
            c.match_bits |= types::lb_trace_match::LB_TRACE_M_CLIENT.0;
            c.client_be = u32::from(n.network()).to_be();
            c.client_mask_be = u32::from(n.netmask()).to_be();
        }
        // Filter first with the switch off, then the same values with it on: a packet reads
        // either "off" or the whole new filter.
        self.write(&c)?;
        c.on = 1;
        let session = TraceSession {
            tap: self,
            perf,
            queue,
            lost,
            malformed: bad,
        };
        self.write(&c)?;
        Ok(session)
    }
}

/// A running trace (see [`TraceTap::start`]); dropping it switches tracing off.
pub struct TraceSession<'a> {
    tap: &'a TraceTap,
    perf: PerfBuffer<'static>,
    queue: Rc<RefCell<VecDeque<TraceRecord>>>,
    lost: Rc<RefCell<u64>>,
    malformed: Rc<RefCell<u64>>,
}

impl TraceSession<'_> {
    /// Waits up to `timeout` for records and returns those that came (possibly none).
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<TraceRecord>, DataplaneError> {
        if self.queue.borrow().is_empty() {
            self.perf
                .poll(timeout)
                .map_err(bpf_err("reading the trace perf buffer"))?;
        }
        // One buffer per CPU: merge what came by time.
        let mut got: Vec<TraceRecord> = self.queue.borrow_mut().drain(..).collect();
        got.sort_by_key(|r| r.ts_ns);
        Ok(got)
    }

    /// Everything the per-CPU buffers hold now, read whether or not their wakeup came (a
    /// wakeup still pending on a busy CPU would leave records behind a `poll`); for the last
    /// read after [`TraceSession::stop`].
    pub fn drain(&mut self) -> Result<Vec<TraceRecord>, DataplaneError> {
        self.perf
            .consume()
            .map_err(bpf_err("reading the trace perf buffer"))?;
        let mut got: Vec<TraceRecord> = self.queue.borrow_mut().drain(..).collect();
        got.sort_by_key(|r| r.ts_ns);
        Ok(got)
    }

    /// Records the kernel dropped because the buffer was full, since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut *self.lost.borrow_mut())
    }

    /// Samples too short to decode (never seen unless layouts disagree).
    pub fn malformed(&self) -> u64 {
        *self.malformed.borrow()
    }

    /// Switches tracing off now (dropping does too); records already sent can still be read.
    pub fn stop(&self) -> Result<(), DataplaneError> {
        self.tap.switch_off()
    }
}

impl Drop for TraceSession<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.tap.switch_off() {
            tracing::error!(error = %e, "switching tracing off");
        }
    }
}

/// CLOCK_MONOTONIC in ns (what `bpf_ktime_get_ns()` reads).
pub fn monotonic_ns() -> u64 {
    super::telemetry::clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns (to stamp records with wall-clock time).
pub fn realtime_ns() -> u64 {
    super::telemetry::clock_ns(libc::CLOCK_REALTIME)
}
