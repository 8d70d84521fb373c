//! Cost probes (`bench/bpf/probes.bpf.c`): the price of single operations the `lb` program
//! performs (FIB lookup, hash and LRU lookups, LRU insert, LPM lookup, coarse clock, per-CPU
//! counter), each measured like the floor and reported above it. They say where the time of a
//! path goes without touching the data plane.
//!
//! [`page_reads`] is the memory baseline of the firewall's scaling points: chains of dependent
//! reads in a 128 MiB array of 4 KiB pages, each frame naming its cache lines, so that the same
//! number of distinct pages and lines as a firewall workload can be measured without any lookup.

use std::mem::MaybeUninit;

use anyhow::{ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject, ProgramMut};

use crate::common::lab::{Net, BACKEND1, LB_ADDR};
use crate::setup::{new_source, syn};
use crate::testrun::{floor_frame, Floor, Measured, Runner, Spread};

xdplb_testkit::skeleton!(
    /// The libbpf skeleton generated from `bench/bpf/probes.bpf.c`.
    mod probes_skel = "probes.skel.rs"
);

/// One operation's cost above the floor (min and median of the trials).
#[derive(Debug, Clone)]
pub struct OpCost {
    pub name: &'static str,
    pub above: Spread,
}

/// The flow-table key of `frame` as `probe_lru_*` builds it (source address, destination
/// address, ports, protocol word), as 40 bytes.
fn lru_key(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let mut key = vec![0u8; 40];
    key[0..4].copy_from_slice(&ip[12..16]);
    key[16..20].copy_from_slice(&ip[16..20]);
    key[32..36].copy_from_slice(&ip[20..24]);
    key[36..40].copy_from_slice(&0x0406u32.to_ne_bytes());
    key
}

fn trial(
    runner: &mut Runner,
    prog: &ProgramMut<'_>,
    ifindex: u32,
    frames: &[Vec<u8>],
    packets: usize,
) -> Result<f64> {
    let mut total = 0u64;
    for k in 0..packets {
        let (action, ns) = runner.run(prog, ifindex, &frames[k % frames.len()])?;
        ensure!(
            action == libbpf_sys::XDP_TX,
            "probe {} did not do its work (verdict {action})",
            prog.name().to_string_lossy()
        );
        total += ns;
    }
    Ok(total as f64 / packets as f64)
}

/// One trial of the floor program on its fixed frame: what every probe is measured against.
fn floor_trial(runner: &mut Runner, floor: &Floor, ifindex: u32, packets: usize) -> Result<f64> {
    trial(runner, floor.program(), ifindex, &[floor_frame()], packets)
}

/// Measures every probe against the floor, interleaved, in the bench namespace of `net`.
pub fn measure(net: Net, floor: &Floor, trials: usize, packets: usize) -> Result<Vec<OpCost>> {
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = probes_skel::ProbesSkelBuilder::default()
        .open(storage)
        .context("opening the probes")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the probes' read-only data is not memory-mapped")?;
    rodata.fib_src_be = u32::from_ne_bytes(LB_ADDR.octets());
    rodata.fib_dst_be = u32::from_ne_bytes(BACKEND1.octets());
    // Only page_reads needs the 128 MiB array.
    open.maps
        .probe_pages
        .set_max_entries(1)
        .context("sizing probe_pages")?;
    let skel = open.load().context("loading the probes")?;

    let vip_key: Vec<u8> = [1u32, 2, 3, 4, 5]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    skel.maps
        .probe_hash
        .update(&vip_key, &1u64.to_ne_bytes(), MapFlags::ANY)
        .context("filling probe_hash")?;
    let vip = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 9, 9, 9), 80);
    let known: Vec<Vec<u8>> = (0..256).map(|i| syn(new_source(63, i), vip)).collect();
    for f in &known {
        skel.maps
            .probe_lru
            .update(&lru_key(f), &[0u8; 64], MapFlags::ANY)
            .context("filling probe_lru")?;
    }
    let p = &skel.progs;
    let fixed = vec![floor_frame()];
    let progs: [(&'static str, &ProgramMut<'_>, bool); 7] = [
        ("bpf_fib_lookup (hit)", &p.probe_fib, false),
        (
            "HASH lookup, 20-byte key (hit)",
            &p.probe_hash_lookup,
            false,
        ),
        (
            "LRU_HASH lookup, 40-byte key (hit)",
            &p.probe_lru_lookup,
            false,
        ),
        (
            "LRU_HASH insert, 40-byte key (new key)",
            &p.probe_lru_insert,
            true,
        ),
        ("LPM_TRIE lookup, empty trie", &p.probe_lpm_miss, false),
        ("bpf_ktime_get_coarse_ns", &p.probe_clock, false),
        ("PERCPU_ARRAY lookup + increment", &p.probe_percpu, false),
    ];
    let mut runner = Runner::default();
    let mut floor_t = Vec::new();
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); progs.len()];
    for t in 0..trials {
        floor_t.push(floor_trial(&mut runner, floor, net.veth0, packets)?);
        for (i, (_, prog, fresh)) in progs.iter().enumerate() {
            let frames: Vec<Vec<u8>> = if *fresh {
                (0..packets).map(|k| syn(new_source(t, k), vip)).collect()
            } else if i == 2 {
                known.clone()
            } else {
                fixed.clone()
            };
            per[i].push(trial(&mut runner, prog, net.veth0, &frames, packets)?);
        }
    }
    let f = Spread::of(&floor_t);
    Ok(progs
        .iter()
        .zip(per)
        .map(|((name, _, _), v)| {
            let s = Spread::of(&v);
            OpCost {
                name,
                above: Spread {
                    min: s.min - f.min,
                    median: s.median - f.median,
                },
            }
        })
        .collect())
}

/// Pages of `probe_page_reads`'s array (4 KiB each): `PROBE_PAGES` of the C side (an enum
/// that BTF does not carry; checked against the loaded map).
pub const PAGES: u32 = 32768;
/// Cache lines per page (`PROBE_LINES`).
pub const LINES: u32 = 64;
/// Reads per frame at most (`PROBE_READS`; a frame is checked to be long enough by the probe,
/// which returns XDP_PASS otherwise).
pub const READS: usize = 6;

/// One memory baseline: frames (cycled), each the cache lines it reads in order, as
/// `page * LINES + line` with `page < PAGES`, at most [`READS`] of them.
pub struct PageReads {
    pub name: String,
    pub frames: Vec<Vec<u32>>,
}

impl PageReads {
    /// Distinct 4 KiB pages the frames read.
    pub fn pages(&self) -> usize {
        let mut p: Vec<u32> = self.frames.iter().flatten().map(|l| l / LINES).collect();
        p.sort_unstable();
        p.dedup();
        p.len()
    }
}

/// The frame of `probe_page_reads` for `lines`: an Ethernet header, the count, the line indices.
fn page_frame(lines: &[u32]) -> Result<Vec<u8>> {
    ensure!(
        lines.len() <= READS,
        "a page-reads frame names at most {READS} lines, not {}",
        lines.len()
    );
    ensure!(
        lines.iter().all(|l| *l < PAGES * LINES),
        "a page-reads line index is outside the {PAGES} pages"
    );
    let mut f = floor_frame()[..14].to_vec();
    f.extend_from_slice(&(lines.len() as u32).to_ne_bytes());
    for i in 0..READS {
        f.extend_from_slice(&lines.get(i).copied().unwrap_or(0).to_ne_bytes());
    }
    f.resize(64, 0);
    Ok(f)
}

/// Measures every set of `sets` against the floor, interleaved as in `testrun::measure`
/// (`packets` calls per trial, one frame per call), in the bench namespace of `net`. The result
/// is named like the sets.
pub fn page_reads(
    net: Net,
    floor: &Floor,
    sets: &[PageReads],
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let open = probes_skel::ProbesSkelBuilder::default()
        .open(storage)
        .context("opening the probes")?;
    let skel = open.load().context("loading the probes")?;
    let map = &skel.maps.probe_pages;
    ensure!(
        map.max_entries() == PAGES && map.value_size() == LINES * 64,
        "probe_pages holds {} values of {} bytes, not {PAGES} pages",
        map.max_entries(),
        map.value_size()
    );
    let frames: Vec<Vec<Vec<u8>>> = sets
        .iter()
        .map(|s| s.frames.iter().map(|l| page_frame(l)).collect())
        .collect::<Result<_>>()?;
    for (s, f) in sets.iter().zip(&frames) {
        ensure!(!f.is_empty(), "page reads {}: no frames", s.name);
    }
    let prog = &skel.progs.probe_page_reads;
    let mut runner = Runner::default();
    // Untimed: one pass over every set first (the trials then start from the same state).
    for f in &frames {
        trial(&mut runner, prog, net.veth0, f, f.len())?;
    }
    let mut m = Measured {
        floor: Vec::new(),
        cases: sets.iter().map(|s| (s.name.clone(), Vec::new())).collect(),
    };
    for _ in 0..trials {
        m.floor
            .push(floor_trial(&mut runner, floor, net.veth0, packets)?);
        for (i, f) in frames.iter().enumerate() {
            m.cases[i]
                .1
                .push(trial(&mut runner, prog, net.veth0, f, packets)?);
        }
    }
    Ok(m)
}
