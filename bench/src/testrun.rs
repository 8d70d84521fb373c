//! Timing XDP programs with BPF_PROG_TEST_RUN: one call per packet, the floor program, trials
//! whose path is proven by the load balancer's own counters.
//!
//! Why one call per packet: with `repeat > 1` the kernel runs the program again on the frame it
//! has already rewritten (a NATed packet is no longer addressed to the VIP), so from the second
//! iteration on it measures another path. Each call is timed by the kernel around the program
//! alone (two `ktime_get_ns` reads and the XDP dispatch included); the floor program pays the
//! same fixed cost, so "ns above the floor" is the cost of the path itself.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject, ProgramMut};
use xdplb::dataplane::maps::{reason_name, verdict_name};
use xdplb::dataplane::GlobalCounters;
use xdplb::skel::types;
use xdplb::state::VipKey;
pub use xdplb_testkit::Runner;

use crate::common::lab::Lb;

mod floor_skel {
    //! The libbpf skeleton generated from `bench/bpf/floor.bpf.c`.
    #![allow(
        clippy::all,
        missing_docs,
        non_camel_case_types,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

/// The floor program (swap MACs, XDP_TX), loaded once per run.
pub struct Floor {
    skel: floor_skel::FloorSkel<'static>,
}

impl Floor {
    pub fn load() -> Result<Floor> {
        // The skeleton borrows its object storage for its whole life; one per run, leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = floor_skel::FloorSkelBuilder::default()
            .open(storage)
            .context("opening the floor program")?;
        let skel = open.load().context("loading the floor program")?;
        Ok(Floor { skel })
    }

    pub fn program(&self) -> &ProgramMut<'static> {
        &self.skel.progs.floor_tx
    }
}

/// Min and median of a set of trial figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return Spread::default();
        }
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Spread { min: v[0], median }
    }
}

/// What a trial of a case must leave in the program's counters: exactly `packets` x `reason`
/// and `verdict`, nothing else, and (if `vip` is set) `new_flows_per_packet` x packets new flows.
#[derive(Debug, Clone)]
pub struct Expect {
    pub reason: types::lb_reason,
    pub verdict: u32,
    pub vip: Option<VipKey>,
    pub new_flows_per_packet: u64,
}

impl Expect {
    pub fn new(reason: types::lb_reason, verdict: u32) -> Expect {
        Expect {
            reason,
            verdict,
            vip: None,
            new_flows_per_packet: 0,
        }
    }

    /// Also checks the VIP's new-flow counter: `new` packets all new flows, else none.
    pub fn flows(mut self, vip: VipKey, new: bool) -> Expect {
        self.vip = Some(vip);
        self.new_flows_per_packet = u64::from(new);
        self
    }
}

/// Untimed work before a trial of a [`Case`].
pub type Before<'a> = Box<dyn FnMut(&Lb, &mut Runner) -> Result<()> + 'a>;

/// One measured path: frames run through a loaded load balancer.
pub struct Case<'a> {
    pub name: String,
    pub lb: &'a Lb,
    pub ifindex: u32,
    /// The frames of trial `t` (cycled to the trial's packet count). New-flow cases return one
    /// frame per packet, each a flow never seen before.
    pub frames: Box<dyn FnMut(usize, usize) -> Vec<Vec<u8>> + 'a>,
    /// Run before each trial, untimed (emptying the flow table, priming buckets).
    pub before: Option<Before<'a>>,
    pub expect: Expect,
}

/// Trial figures (mean ns per packet of each trial) of the floor and of every case.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub floor: Vec<f64>,
    pub cases: Vec<(String, Vec<f64>)>,
}

impl Measured {
    pub fn floor(&self) -> Spread {
        Spread::of(&self.floor)
    }

    pub fn case(&self, name: &str) -> Option<Spread> {
        self.cases
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Spread::of(v))
    }

    /// (min, median) above the floor's (min, median).
    pub fn above_floor(&self, name: &str) -> Option<Spread> {
        let c = self.case(name)?;
        let f = self.floor();
        Some(Spread {
            min: c.min - f.min,
            median: c.median - f.median,
        })
    }
}

/// A frame the floor runs on: any Ethernet frame of a common size.
pub fn floor_frame() -> Vec<u8> {
    use crate::common::lab::{CLIENT, CLIENT_MAC, VETH0_MAC};
    use xdplb_testkit::packet::{Packet, TCP_ACK};
    Packet::tcp(
        CLIENT_MAC,
        VETH0_MAC,
        std::net::SocketAddrV4::new(CLIENT, 40000),
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 9, 9, 9), 80),
        TCP_ACK,
    )
    .with_payload(b"GET /x HTTP/1.0\r\n\r\n")
    .build()
}

/// Runs `trials` rounds; in each, a floor trial and then one trial of every case, `packets`
/// calls each (interleaved, so that a slow drift of the machine affects all alike).
pub fn measure(
    floor: &Floor,
    floor_ifindex: u32,
    cases: &mut [Case<'_>],
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let mut runner = Runner::default();
    let mut m = Measured {
        floor: Vec::new(),
        cases: cases.iter().map(|c| (c.name.clone(), Vec::new())).collect(),
    };
    let ff = floor_frame();
    for t in 0..trials {
        let mut total = 0u64;
        for _ in 0..packets {
            let (action, ns) = runner.run(floor.program(), floor_ifindex, &ff)?;
            ensure!(
                action == libbpf_sys::XDP_TX,
                "the floor program returned {}",
                verdict_name(action as usize)
            );
            total += ns;
        }
        m.floor.push(total as f64 / packets as f64);
        for (i, case) in cases.iter_mut().enumerate() {
            if let Some(before) = case.before.as_mut() {
                before(case.lb, &mut runner).with_context(|| format!("preparing {}", case.name))?;
            }
            let frames = (case.frames)(t, packets);
            ensure!(!frames.is_empty(), "{}: no frames", case.name);
            let g0 = case.lb.global()?;
            let v0 = vip_new_flows(case.lb, case.expect.vip.as_ref())?;
            let prog = case.lb.rec.dataplane().program();
            let mut total = 0u64;
            for k in 0..packets {
                let frame = &frames[k % frames.len()];
                let (action, ns) = runner.run(prog, case.ifindex, frame)?;
                if action != case.expect.verdict {
                    let g1 = case.lb.global()?;
                    bail!(
                        "{}: packet {k} of trial {t} got {}, expected {}; reasons so far {}",
                        case.name,
                        verdict_name(action as usize),
                        verdict_name(case.expect.verdict as usize),
                        delta_text(&g0, &g1)
                    );
                }
                total += ns;
            }
            let g1 = case.lb.global()?;
            let v1 = vip_new_flows(case.lb, case.expect.vip.as_ref())?;
            check_counters(&case.name, &case.expect, &g0, &g1, packets as u64)?;
            if case.expect.vip.is_some() {
                let want = case.expect.new_flows_per_packet * packets as u64;
                ensure!(
                    v1 - v0 == want,
                    "{}: the VIP counted {} new flows in a trial of {packets} packets, expected {want}",
                    case.name,
                    v1 - v0
                );
            }
            m.cases[i].1.push(total as f64 / packets as f64);
        }
    }
    Ok(m)
}

fn vip_new_flows(lb: &Lb, vip: Option<&VipKey>) -> Result<u64> {
    match vip {
        Some(v) => Ok(lb.vip_counters(v)?.new_flows),
        None => Ok(0),
    }
}

/// The non-zero differences of two counter readings, as `name=count` text.
pub fn delta_text(a: &GlobalCounters, b: &GlobalCounters) -> String {
    let mut parts = Vec::new();
    for (i, (x, y)) in a.reasons.iter().zip(&b.reasons).enumerate() {
        if y != x {
            parts.push(format!("{}={}", reason_name(i), y - x));
        }
    }
    for (i, (x, y)) in a.verdicts.iter().zip(&b.verdicts).enumerate() {
        if y != x {
            parts.push(format!("{}={}", verdict_name(i), y - x));
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// Proves the path: the trial added exactly `packets` to the expected reason and verdict and
/// nothing to any other counter.
pub fn check_counters(
    name: &str,
    expect: &Expect,
    a: &GlobalCounters,
    b: &GlobalCounters,
    packets: u64,
) -> Result<()> {
    let mut ok = true;
    for (i, (x, y)) in a.reasons.iter().zip(&b.reasons).enumerate() {
        let want = if i == expect.reason.0 as usize {
            packets
        } else {
            0
        };
        ok &= y - x == want;
    }
    for (i, (x, y)) in a.verdicts.iter().zip(&b.verdicts).enumerate() {
        let want = if i == expect.verdict as usize {
            packets
        } else {
            0
        };
        ok &= y - x == want;
    }
    ensure!(
        ok,
        "{name}: a trial of {packets} packets counted {}, expected {}={packets} and {}={packets} only",
        delta_text(a, b),
        reason_name(expect.reason.0 as usize),
        verdict_name(expect.verdict as usize)
    );
    Ok(())
}

/// Handles of every map of a loaded program, by name (found through the program's map ids).
pub fn program_maps(prog: &ProgramMut<'_>) -> Result<BTreeMap<String, MapHandle>> {
    Ok(xdplb::dataplane::program_maps(prog.as_fd())?)
}

/// Jited and translated size of a loaded program (bytes, instructions).
pub fn program_size(prog: &ProgramMut<'_>) -> Result<(u32, u32)> {
    let fd = prog.as_fd().as_raw_fd();
    // SAFETY: an all-zero bpf_prog_info is a valid "ask for nothing" request.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` outlives the call.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    ensure!(
        rc == 0,
        "bpf_prog_get_info_by_fd: {}",
        std::io::Error::last_os_error()
    );
    Ok((info.jited_prog_len, info.xlated_prog_len / 8))
}

/// Empties a hash map (the flow tables between trials of new-flow cases).
pub fn clear_map(map: &MapHandle) -> Result<()> {
    let keys: Vec<Vec<u8>> = map.keys().collect();
    if keys.is_empty() {
        return Ok(());
    }
    let flat: Vec<u8> = keys.concat();
    if map
        .delete_batch(&flat, keys.len() as u32, MapFlags::ANY, MapFlags::ANY)
        .is_err()
    {
        for k in &keys {
            let _ = map.delete(k);
        }
    }
    ensure!(
        map.keys().next().is_none(),
        "map {} is not empty after clearing",
        map.name().to_string_lossy()
    );
    Ok(())
}

/// Views a skeleton type (repr(C), integer fields, explicit padding) as bytes.
pub fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: only used with the plain-old-data structs of bpf/xdplb.h from the skeleton.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}
