//! Section "trace": what packet tracing (`bpf/trace.h`, `lbctl trace`) costs a packet. The same
//! program built without the hook (`bench/bpf/lb_notrace.bpf.c`, loaded on the real program's
//! maps, so both see the same VIPs and flows) is the baseline; the real program is measured with
//! the switch off, on with a filter no packet matches, and on with every packet matching (a
//! reader draining the perf buffer on the other CPU), all interleaved with the floor in one run.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, ProgramMut};
use xdplb::dataplane::trace::{TraceFilter, TraceTap};
use xdplb::skel::types::lb_reason as R;
use xdplb_model::state::Mode;

use crate::common::lab::{setup_net, Lb, CLIENT, XDP_PASS, XDP_TX};
use crate::paths::not_vip_frame;
use crate::report::{Report, Section};
use crate::setup::*;
use crate::testrun::{
    check_counters, floor_frame, program_maps, program_size, Expect, Floor, Spread,
};
use xdplb_testkit::{NetNs, Runner};

xdplb_testkit::skeleton!(
    /// The libbpf skeleton of `bench/bpf/lb_notrace.bpf.c`.
    mod notrace_skel = "lb_notrace.skel.rs"
);

/// Flows of the established-flow rows (cycled through).
const FLOWS: usize = 256;

/// The program without the hook, on the maps of `lb`'s program.
struct NoTrace {
    skel: notrace_skel::LbNotraceSkel<'static>,
}

impl NoTrace {
    fn load(lb: &Lb) -> Result<NoTrace> {
        let maps = program_maps(lb.rec.dataplane().program())?;
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = notrace_skel::LbNotraceSkelBuilder::default()
            .open(storage)
            .context("opening lb_notrace")?;
        for mut m in open.open_object_mut().maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if name.contains('.') {
                continue;
            }
            if let Some(h) = maps.get(&name) {
                m.reuse_fd(h.as_fd())
                    .with_context(|| format!("reusing {name}"))?;
            }
        }
        let skel = open.load().context("loading lb_notrace")?;
        Ok(NoTrace { skel })
    }

    fn program(&self) -> &ProgramMut<'static> {
        &self.skel.progs.xdplb
    }
}

/// A trace running for the length of a trial, its records read on another thread.
struct Reader<'a> {
    stop: &'a AtomicBool,
    done: mpsc::Receiver<Result<(u64, u64)>>,
}

fn start_reader<'s, 'a: 's>(
    scope: &'s std::thread::Scope<'s, '_>,
    tap: &'a TraceTap,
    filter: TraceFilter,
    stop: &'a AtomicBool,
) -> Result<Reader<'a>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    stop.store(false, Ordering::SeqCst);
    scope.spawn(move || {
        let run = || -> Result<(u64, u64)> {
            let mut s = tap.start(&filter, u32::MAX, Duration::from_secs(3600), 128)?;
            let _ = ready_tx.send(());
            let (mut n, mut lost) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                n += s.poll(Duration::from_millis(5))?.len() as u64;
                lost += s.take_lost();
            }
            s.stop()?;
            loop {
                let got = s.poll(Duration::from_millis(50))?.len() as u64;
                lost += s.take_lost();
                if got == 0 {
                    break;
                }
                n += got;
            }
            // What is left in buffers whose wakeup never came.
            n += s.drain()?.len() as u64;
            lost += s.take_lost();
            Ok((n, lost))
        };
        let r = run();
        if r.is_err() {
            let _ = ready_tx.send(());
        }
        let _ = done_tx.send(r);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the trace reader did not start")?;
    Ok(Reader {
        stop,
        done: done_rx,
    })
}

impl Reader<'_> {
    fn finish(self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.done
            .recv_timeout(Duration::from_secs(10))
            .context("the trace reader did not end")?
    }
}

/// Which trace runs during a row's trials.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracing {
    None,
    NoMatch,
    Match,
}

struct Row {
    name: &'static str,
    notrace: bool,
    tracing: Tracing,
    frames: Vec<Vec<u8>>,
    expect: Expect,
    figures: Vec<f64>,
    records: u64,
    lost: u64,
}

pub fn run(report: &mut Report, quick: bool) -> Result<()> {
    let (trials, packets) = if quick { (5, 2_000) } else { (9, 20_000) };
    NetNs::within("bench", |ns| {
        pin_to_this_cpu()?;
        let net = setup_net(ns)?;
        add_routes(ns)?;
        let floor = Floor::load()?;
        let mut runner = Runner::default();
        let nat_vip = sa(Ipv4Addr::new(10, 9, 9, 9), 80);
        let mut lb = load_lb(net, &opts(1 << 20))?;
        let tap = lb.rec.dataplane_mut().trace_tap()?;
        add_vip(&mut lb, nat_vip, Mode::Nat, &near_backends(8080))?;
        let clients: Vec<_> = (0..FLOWS).map(|i| sa(CLIENT, 30000 + i as u16)).collect();
        open_flows(&lb, &mut runner, nat_vip, &clients)?;
        let notrace = NoTrace::load(&lb)?;
        let est: Vec<Vec<u8>> = clients.iter().map(|c| data(*c, nat_vip).build()).collect();
        let not_vip = vec![not_vip_frame()];
        let nat = Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX);
        let pass = Expect::new(R::LB_REASON_PASS_NOT_VIP, XDP_PASS);
        let row = |name, notrace, tracing, frames: &Vec<Vec<u8>>, expect: &Expect| Row {
            name,
            notrace,
            tracing,
            frames: frames.clone(),
            expect: expect.clone(),
            figures: Vec::new(),
            records: 0,
            lost: 0,
        };
        let mut rows = vec![
            row(
                "non-VIP pass, build without the hook",
                true,
                Tracing::None,
                &not_vip,
                &pass,
            ),
            row(
                "non-VIP pass, trace off",
                false,
                Tracing::None,
                &not_vip,
                &pass,
            ),
            row(
                "NAT established, build without the hook",
                true,
                Tracing::None,
                &est,
                &nat,
            ),
            row(
                "NAT established, trace off",
                false,
                Tracing::None,
                &est,
                &nat,
            ),
            row(
                "NAT established, trace on, filter matching no packet",
                false,
                Tracing::NoMatch,
                &est,
                &nat,
            ),
            row(
                "NAT established, trace on, every packet traced (128 bytes)",
                false,
                Tracing::Match,
                &est,
                &nat,
            ),
        ];
        let no_match = TraceFilter {
            client: Some("203.0.113.0/24".parse()?),
            ..TraceFilter::default()
        };
        let matching = TraceFilter {
            vip: Some(*nat_vip.ip()),
            port: Some(nat_vip.port()),
            proto: Some(6),
            client: Some(ipnet::Ipv4Net::new(CLIENT, 24)?.trunc()),
        };
        let stop = AtomicBool::new(false);
        let ff = floor_frame();
        let mut floor_figures = Vec::new();
        for _ in 0..trials {
            let mut total = 0u64;
            for _ in 0..packets {
                total += runner.run(floor.program(), net.veth0, &ff)?.1;
            }
            floor_figures.push(total as f64 / packets as f64);
            for r in rows.iter_mut() {
                let prog = if r.notrace {
                    notrace.program()
                } else {
                    lb.rec.dataplane().program()
                };
                std::thread::scope(|scope| -> Result<()> {
                    let reader = match r.tracing {
                        Tracing::None => None,
                        Tracing::NoMatch => {
                            Some(start_reader(scope, &tap, no_match.clone(), &stop)?)
                        }
                        Tracing::Match => Some(start_reader(scope, &tap, matching.clone(), &stop)?),
                    };
                    let g0 = lb.global()?;
                    let mut total = 0u64;
                    for k in 0..packets {
                        let (action, ns) =
                            runner.run(prog, net.veth0, &r.frames[k % r.frames.len()])?;
                        ensure!(action == r.expect.verdict, "{}: verdict {action}", r.name);
                        total += ns;
                    }
                    let g1 = lb.global()?;
                    check_counters(r.name, &r.expect, &g0, &g1, packets as u64)?;
                    r.figures.push(total as f64 / packets as f64);
                    if let Some(reader) = reader {
                        let (n, lost) = reader.finish()?;
                        r.records += n;
                        r.lost += lost;
                    }
                    Ok(())
                })?;
                ensure!(!tap.is_on()?, "{}: the switch stayed on", r.name);
            }
        }
        let f = Spread::of(&floor_figures);
        let sizes = (
            program_size(notrace.program())?,
            program_size(lb.rec.dataplane().program())?,
        );
        let mut s = Section::new(
            "1c. Packet tracing: the cost of the hook (off and on)",
            &[
                "path",
                "min ns",
                "median ns",
                "above floor (min)",
                "vs. build without the hook (min)",
                "records read (lost)",
            ],
        );
        let base = |name: &str, rows: &[Row]| -> Option<Spread> {
            let prefix = name.split(',').next()?;
            rows.iter()
                .find(|r| r.notrace && r.name.starts_with(prefix))
                .map(|r| Spread::of(&r.figures))
        };
        for r in &rows {
            let c = Spread::of(&r.figures);
            let vs = if r.notrace {
                "baseline".to_string()
            } else {
                base(r.name, &rows)
                    .map(|b| format!("{:+.1} ({:.3}x)", c.min - b.min, c.min / b.min))
                    .unwrap_or_default()
            };
            let rec = match r.tracing {
                Tracing::None => String::new(),
                _ => format!("{} ({})", r.records, r.lost),
            };
            s.row(
                vec![
                    r.name.to_string(),
                    format!("{:.1}", c.min),
                    format!("{:.1}", c.median),
                    format!("{:+.1}", c.min - f.min),
                    vs,
                    rec,
                ],
                None,
            );
        }
        s.note(format!(
            "{trials} interleaved trials of {packets} packets per row (floor {:.1} ns min), one \
             BPF_PROG_TEST_RUN call per packet, each trial checked against the program's \
             counters (one reason and verdict per packet, nothing else). The rows \"build \
             without the hook\" run bench/bpf/lb_notrace.bpf.c (bpf/lb.bpf.c with \
             LB_TRACE_HOOK_OFF) on the same maps as the real program: same VIP, same 256 \
             established flows.",
            f.min
        ));
        s.note(format!(
            "Program size: without the hook {} bytes jited ({} instructions), with it {} bytes \
             ({} instructions): clang copies the exit (count_verdict and the switch's test) into \
             each of the 8 return paths of xdplb(), and trace_emit() is a subprogram of its own. \
             Switched off, a packet runs 3 more instructions (the switch's address, one load, \
             one branch): no helper call, no map lookup. The two builds' jited code differs \
             beyond that (register allocation, layout), which is what moves the NAT row by more \
             than 3 instructions can, either way.",
            sizes.0 .0, sizes.0 .1, sizes.1 .0, sizes.1 .1
        ));
        s.note(
            "Trace on: the filter (VIP address, port, protocol, client prefix) runs on every \
             packet; a matching packet also pays bpf_ktime_get_ns, an atomic decrement of the \
             records left and bpf_perf_event_output of a 48-byte record and 128 frame bytes, \
             read on the other CPU (records read + lost = packets: every packet was sent). Most of \
             it is the perf buffer's wakeup of the reader (one per record: an irq_work, a \
             self-IPI in this VM), paid only by the packets a trace sends, at most its count."
                .to_string(),
        );
        let traced = rows
            .iter()
            .find(|r| r.tracing == Tracing::Match)
            .map(|r| r.records + r.lost)
            .unwrap_or(0);
        ensure!(
            traced == (trials * packets) as u64,
            "the matching trace sent {traced} records for {} packets",
            trials * packets
        );
        let unmatched = rows
            .iter()
            .find(|r| r.tracing == Tracing::NoMatch)
            .map(|r| r.records + r.lost)
            .unwrap_or(0);
        ensure!(
            unmatched == 0,
            "a filter matching nothing sent {unmatched} records"
        );
        report.sections.push(s);
        Ok(())
    })
}
