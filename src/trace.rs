//! Packet tracing in lbd (`lbctl trace`): the one owner of the program's trace switch.
//!
//! lbd makes the [`Tracer`] at start from the data plane's [`TraceTap`] (which only the owner of
//! the data plane can make, and which can switch tracing on and off and read the perf buffer,
//! nothing else), before the reconciler goes into the controller; the trace service holds it.
//! One trace runs at a time ([`Tracer::begin`] refuses a second); it runs on a thread of its own
//! (the perf buffer is polled, blocking, every 100 ms at most) and ends, switching the program's
//! tracing off, when its count or time is reached, when its consumer goes away or when lbd
//! shuts down. The program keeps the count and the deadline itself too, so a trace whose lbd
//! was killed stops on its own.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::dataplane::maps::{reason_name, verdict_name};
use crate::dataplane::trace::{self as dp, TraceFilter, TraceRecord, TraceTap};
use crate::dataplane::DataplaneError;
use crate::skel::types::lb_reason as R;
use xdplb_model::state::{Mode, State};

/// Default and bounds of a trace (what the API validates).
pub const DEFAULT_COUNT: u32 = 100;
pub const MAX_COUNT: u32 = 100_000;
pub const DEFAULT_SECONDS: u32 = 10;
pub const MAX_SECONDS: u32 = 3600;
pub const DEFAULT_SNAPLEN: u32 = 1518;
pub const MIN_SNAPLEN: u32 = 64;
pub const MAX_SNAPLEN: u32 = dp::SNAPLEN_MAX;

/// How often a running trace looks at its stop conditions (at most).
const POLL: Duration = Duration::from_millis(100);

/// What to trace (validated by the API).
#[derive(Debug, Clone)]
pub struct TraceSpec {
    pub vip: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub proto: Option<u8>,
    pub client: Option<Ipv4Net>,
    pub count: u32,
    pub duration: Duration,
    pub snaplen: u32,
}

/// One traced packet, named.
#[derive(Debug, Clone)]
pub struct TracedPacket {
    /// Wall-clock time the program saw it, ns since the Unix epoch.
    pub time_unix_ns: u64,
    pub record: TraceRecord,
    pub reason: String,
    pub verdict: &'static str,
    /// The backend the frame names (see [`Backends::resolve`]).
    pub backend: Option<SocketAddrV4>,
    /// Records lost (the reader fell behind) since the previous packet.
    pub lost: u64,
}

/// Why a trace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceEnd {
    /// `count` packets were handed over.
    Count,
    /// The time was up.
    Time,
    /// The consumer refused a packet (the client went away).
    Consumer,
    /// lbd is shutting down.
    Shutdown,
}

/// The trace owner (see the module docs).
pub struct Tracer {
    tap: TraceTap,
    busy: AtomicBool,
}

/// The right to run the one trace (see [`Tracer::begin`]); released when dropped.
pub struct TraceSlot {
    tracer: Arc<Tracer>,
}

impl Drop for TraceSlot {
    fn drop(&mut self) {
        self.tracer.busy.store(false, Ordering::Release);
    }
}

impl Tracer {
    pub fn new(tap: TraceTap) -> Arc<Self> {
        Arc::new(Self {
            tap,
            busy: AtomicBool::new(false),
        })
    }

    /// The slot of the one trace, or None while another trace runs.
    pub fn begin(self: &Arc<Self>) -> Option<TraceSlot> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| TraceSlot {
                tracer: self.clone(),
            })
    }

    /// Waits (at most `timeout`) for a running trace to end (lbd's shutdown).
    pub async fn wait_idle(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.busy.load(Ordering::Acquire) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.busy.load(Ordering::Acquire) {
            tracing::warn!("a trace was still running at shutdown");
        }
    }

    /// Whether the program's trace switch is on.
    pub fn is_on(&self) -> Result<bool, DataplaneError> {
        self.tap.is_on()
    }
}

impl TraceSlot {
    /// Runs the trace on the calling (blocking) thread: hands each packet to `deliver` (which
    /// returns false when its consumer is gone) until the count or the time is reached,
    /// `stopping()` turns true or `deliver` refuses; the program's switch is off when it returns.
    pub fn run(
        &self,
        spec: &TraceSpec,
        backends: &Backends,
        stopping: impl Fn() -> bool,
        mut deliver: impl FnMut(TracedPacket) -> bool,
    ) -> Result<TraceEnd, DataplaneError> {
        let filter = TraceFilter {
            vip: spec.vip,
            port: spec.port,
            proto: spec.proto,
            client: spec.client,
        };
        let mut session =
            self.tracer
                .tap
                .start(&filter, spec.count, spec.duration, spec.snaplen)?;
        let until = Instant::now() + spec.duration;
        // bpf_ktime_get_ns() is CLOCK_MONOTONIC: one offset to the wall clock for the trace.
        let wall = dp::realtime_ns().wrapping_sub(dp::monotonic_ns());
        let mut sent = 0u32;
        let end = loop {
            if stopping() {
                break TraceEnd::Shutdown;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break TraceEnd::Time;
            }
            let records = session.poll(left.min(POLL))?;
            let mut lost = session.take_lost();
            let mut refused = false;
            for record in records {
                let p = TracedPacket {
                    time_unix_ns: record.ts_ns.wrapping_add(wall),
                    reason: reason_name(record.reason as usize),
                    verdict: verdict_name(record.verdict as usize),
                    backend: backends.resolve(&record),
                    lost: std::mem::take(&mut lost),
                    record,
                };
                if !deliver(p) {
                    refused = true;
                    break;
                }
                sent += 1;
                if sent >= spec.count {
                    break;
                }
            }
            if refused {
                break TraceEnd::Consumer;
            }
            if sent >= spec.count {
                break TraceEnd::Count;
            }
        };
        session.stop()?;
        Ok(end)
    }
}

/// The VIPs' backends when the trace started, to name the backend a frame was sent to.
#[derive(Debug, Default)]
pub struct Backends {
    /// (VIP address, VIP port, protocol) -> (mode, backends).
    vips: HashMap<(Ipv4Addr, u16, u8), (Mode, Vec<SocketAddrV4>)>,
    /// Every backend of every VIP (NAT replies arrive from them).
    all: Vec<SocketAddrV4>,
    /// The IPv4 neighbour table: MAC -> address (L2 DSR frames name their backend by MAC).
    neighbours: HashMap<[u8; 6], Ipv4Addr>,
}

impl Backends {
    /// From the desired state, and the neighbour table of lbd's namespace (`/proc/net/arp`).
    pub fn of(state: &State) -> Self {
        let mut b = Backends::default();
        for (key, v) in &state.vips {
            let list: Vec<SocketAddrV4> = v.backends.keys().copied().collect();
            b.all.extend(&list);
            b.vips.insert(
                (*key.addr.ip(), key.addr.port(), key.proto.number()),
                (v.mode, list),
            );
        }
        if state.vips.values().any(|v| v.mode == Mode::L2dsr) {
            b.neighbours = std::fs::read_to_string("/proc/net/arp")
                .map(|t| parse_arp(&t))
                .unwrap_or_default();
        }
        b
    }

    /// The backend `r`'s frame was sent to (NAT forward: the frame's destination; IPIP: the
    /// outer destination; L2 DSR: the destination MAC's neighbour), or the backend a NAT reply
    /// came from; None for anything else.
    pub fn resolve(&self, r: &TraceRecord) -> Option<SocketAddrV4> {
        let reason = u32::from(r.reason);
        if reason == R::LB_REASON_TX_NAT_REPLY.0 {
            return self.all.iter().copied().find(|b| *b == r.src);
        }
        let (_, list) = self.vips.get(&(*r.dst.ip(), r.dst.port(), r.proto))?;
        let f = &r.frame;
        let ip_dst = || -> Option<Ipv4Addr> {
            let b: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        if reason == R::LB_REASON_TX_NAT_FORWARD.0 {
            let ihl = usize::from(*f.get(14)? & 0x0f) * 4;
            let port = u16::from_be_bytes(f.get(14 + ihl + 2..14 + ihl + 4)?.try_into().ok()?);
            let to = SocketAddrV4::new(ip_dst()?, port);
            return list.iter().copied().find(|b| *b == to);
        }
        let addr = if reason == R::LB_REASON_TX_IPIP.0 {
            ip_dst()?
        } else if reason == R::LB_REASON_TX_L2DSR.0 {
            let mac: [u8; 6] = f.get(0..6)?.try_into().ok()?;
            *self.neighbours.get(&mac)?
        } else {
            return None;
        };
        list.iter().copied().find(|b| *b.ip() == addr)
    }
}

/// MAC -> address of `/proc/net/arp` (complete entries only).
fn parse_arp(text: &str) -> HashMap<[u8; 6], Ipv4Addr> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(flags), Some(mac)) = (cols.first(), cols.get(2), cols.get(3)) else {
            continue;
        };
        if *flags == "0x0" {
            continue;
        }
        let bytes: Vec<u8> = mac
            .split(':')
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        if let (Ok(ip), Ok(mac)) = (ip.parse::<Ipv4Addr>(), <[u8; 6]>::try_from(bytes)) {
            out.insert(mac, ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_table() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.1.0.2         0x1         0x2         02:00:00:00:00:02     *        veth0\n\
                 10.1.0.9         0x1         0x0         00:00:00:00:00:00     *        veth0\n";
        let m = parse_arp(t);
        assert_eq!(m.len(), 1);
        assert_eq!(m[&[2, 0, 0, 0, 0, 2]], Ipv4Addr::new(10, 1, 0, 2));
    }
}
