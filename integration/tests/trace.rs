//! `lbctl trace` end to end: a real lbd in namespaces, real clients through the real XDP program.
//! A trace shows exactly `--count` packets with the reasons they got (a blocked client's drops,
//! an allowed client's forwards with the backend), `--pcap` writes a file `tcpdump -r` reads with
//! as many packets (rewritten as they left), `--seconds` ends a trace nothing matches, one trace
//! runs at a time, SIGTERM ends a running trace without hanging lbd, and after every trace the
//! program's switch (`lb_trace.on` in its `.data.trace` map, read with bpftool) is off again.
//! Run as root: `cargo test -p xdplb-integration --test trace`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xdplb_integration::lab::{vip_tcp, OneBackend, BACKEND_PORT};
use xdplb_integration::procs::bin_dir;
use xdplb_integration::upgrade::link_program;
use xdplb_integration::{tcp_request, Lbd, VIP};
use xdplb_testkit::cmd::{terminate, wait_bounded};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The one-backend lab and a directory for pcap files.
struct Lab {
    base: OneBackend,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Lab {
    type Target = OneBackend;
    fn deref(&self) -> &OneBackend {
        &self.base
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut OneBackend {
        &mut self.base
    }
}

impl Lab {
    fn start() -> Lab {
        Lab {
            base: OneBackend::start("").expect("lab"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The program's trace switch, as the kernel holds it (the first u32 of `.data.trace`).
    fn switch_on(&self) -> bool {
        let pin = self
            .lbd
            .pin_path()
            .expect("the harness pins")
            .join("link_eth0");
        let prog = link_program(&pin).expect("the program of the pinned link");
        let id = prog
            .maps
            .get(".data.trace")
            .unwrap_or_else(|| panic!("no .data.trace map among {:?}", prog.maps));
        let out = Command::new("bpftool")
            .args([
                "-j",
                "map",
                "lookup",
                "id",
                &id.to_string(),
                "key",
                "0",
                "0",
                "0",
                "0",
            ])
            .output()
            .expect("running bpftool");
        assert!(out.status.success(), "bpftool map lookup: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        let bytes: Vec<u8> = v["value"]
            .as_array()
            .unwrap_or_else(|| panic!("no value bytes in {v}"))
            .iter()
            .map(|b| {
                let s = b.as_str().expect("a byte string");
                u8::from_str_radix(s.trim_start_matches("0x"), 16).expect("a hex byte")
            })
            .collect();
        u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) != 0
    }

    /// Starts `lbctl trace args...` in the background; returns once lbd's program traces.
    fn trace(&self, args: &[&str]) -> BgTrace {
        let t = BgTrace::spawn(&self.lbd, &self.dir, args).expect("spawning lbctl trace");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.switch_on() {
            assert!(
                Instant::now() < deadline,
                "the trace switch did not go on; lbctl: {}",
                t.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    fn request(&self, from: Ipv4Addr) -> Result<xdplb_integration::Reply> {
        tcp_request(
            self.topo.client(),
            Some(SocketAddrV4::new(from, 0)),
            vip_tcp(),
            TIMEOUT,
        )
    }
}

/// `lbctl trace` running in the background (killed if the test ends first).
struct BgTrace {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl BgTrace {
    fn spawn(lbd: &Lbd, dir: &tempfile::TempDir, args: &[&str]) -> Result<BgTrace> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let out = dir.path().join(format!("trace-{n}.out"));
        let err = dir.path().join(format!("trace-{n}.err"));
        let child = Command::new(bin_dir()?.join("lbctl"))
            .arg("--socket")
            .arg(lbd.socket())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .context("spawning lbctl")?;
        Ok(BgTrace {
            child: Some(child),
            out,
            err,
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for lbctl to exit (at most `limit`); its status.
    fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already waited")?;
        match wait_bounded(&mut child, limit)? {
            Some(s) => Ok(s),
            None => {
                let _ = terminate(&mut child, "lbctl trace", Duration::from_secs(1));
                bail!(
                    "lbctl trace still running after {limit:?}; stdout: {}; stderr: {}",
                    self.stdout(),
                    self.stderr()
                )
            }
        }
    }
}

impl Drop for BgTrace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = terminate(&mut c, "lbctl trace", Duration::from_secs(1));
        }
    }
}

/// `tcpdump -nr FILE`: one line per packet.
fn tcpdump(path: &Path) -> Vec<String> {
    let out = Command::new("tcpdump")
        .arg("-nr")
        .arg(path)
        .output()
        .expect("running tcpdump (apt package tcpdump)");
    assert!(
        out.status.success(),
        "tcpdump -r {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_trace_shows_count_packets_with_their_reasons_and_writes_a_pcap() {
    let lab = Lab::start();
    let [a, b] = lab.topo.client_addrs();
    lab.lbd
        .ctl(&["block", "add", &b.to_string()])
        .expect("lbctl block add");
    assert!(!lab.switch_on(), "the switch is on before any trace");

    const N: usize = 12;
    let pcap = lab.dir.path().join("trace.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let vip = vip_tcp().to_string();
    let mut t = lab.trace(&[
        "--vip",
        &vip,
        "--proto",
        "tcp",
        "--count",
        &N.to_string(),
        "--seconds",
        "60",
        "--pcap",
        &pcap_s,
    ]);
    // The blocked client first (its SYN and a retransmission: drops), then the allowed one
    // (a whole connection: forwards) until the trace has its packets.
    assert!(lab.request(b).is_err(), "the blocked client got through");
    for _ in 0..10 {
        lab.request(a).expect("the allowed client reaches the VIP");
        if t.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        {
            break;
        }
    }
    let status = t.wait(Duration::from_secs(10)).expect("lbctl trace ends");
    assert!(status.success(), "lbctl trace: {status}; {}", t.stderr());
    let out = t.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), N, "lines:\n{out}");
    let (mut drops, mut forwards) = (0, 0);
    for l in &lines {
        assert!(l.contains(&format!("-> {vip} ")), "not to the VIP: {l}");
        if l.contains(&format!(" {b}:")) {
            assert!(l.ends_with("XDP_DROP drop_firewall"), "blocked client: {l}");
            assert!(l.contains("backend -"), "a drop names a backend: {l}");
            drops += 1;
        } else if l.contains(&format!(" {a}:")) {
            assert!(
                l.contains(&format!("backend {}", lab.backend)) && (l.ends_with("tx_nat_forward")),
                "allowed client: {l}"
            );
            forwards += 1;
        } else {
            panic!("a packet of neither client: {l}");
        }
    }
    assert!(
        drops >= 1 && forwards >= 1,
        "{drops} drops, {forwards} forwards:\n{out}"
    );
    assert!(!lab.switch_on(), "the switch is still on after the trace");

    // The pcap: as many packets, the drops as they came (to the VIP), the forwards as they left
    // (NAT: to the backend).
    let dump = tcpdump(&pcap);
    assert_eq!(dump.len(), N, "tcpdump -r:\n{}", dump.join("\n"));
    let to_vip = dump
        .iter()
        .filter(|l| l.contains(&format!("{b}.")) && l.contains(&format!("> {}.80:", VIP)))
        .count();
    let to_backend = dump
        .iter()
        .filter(|l| l.contains(&format!("> {}.{BACKEND_PORT}:", lab.backend.ip())))
        .count();
    assert_eq!(
        (to_vip, to_backend),
        (drops, forwards),
        "tcpdump -r:\n{}",
        dump.join("\n")
    );
}

#[test]
fn seconds_bound_a_trace_and_one_runs_at_a_time() {
    let mut lab = Lab::start();
    // Nothing matches: the trace ends by its time, with no line.
    let started = Instant::now();
    let mut t = lab.trace(&["--client", "203.0.113.0/24", "--seconds", "2"]);
    // A second trace while it runs is refused.
    let second = lab
        .lbd
        .ctl(&["trace", "--seconds", "1"])
        .expect_err("a second trace must be refused");
    assert!(
        format!("{second:#}").contains("already running"),
        "{second:#}"
    );
    lab.request(lab.topo.client_addrs()[0])
        .expect("a client reaches the VIP");
    let status = t.wait(Duration::from_secs(15)).expect("lbctl trace ends");
    let took = started.elapsed();
    assert!(status.success(), "lbctl trace: {status}; {}", t.stderr());
    assert!(
        took >= Duration::from_millis(1900),
        "the trace ended after {took:?}, before its 2 s"
    );
    assert_eq!(t.stdout(), "", "a trace nothing matched printed lines");
    assert!(!lab.switch_on(), "the switch is still on after the trace");
    // Bad input is refused before any trace (by lbctl; lbd refuses the same, unit-tested).
    let bad = lab
        .lbd
        .ctl(&["trace", "--client", "10.0.0.1/8"])
        .expect_err("host bits refused");
    assert!(format!("{bad:#}").contains("--client"), "{bad:#}");

    // SIGTERM while a trace runs: lbctl hears that lbd is shutting down, lbd exits cleanly.
    let mut t = lab.trace(&["--seconds", "600", "--count", "100000"]);
    let stopping = Instant::now();
    lab.lbd
        .stop()
        .expect("lbd stops cleanly while a trace runs");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "lbd took {:?} to stop",
        stopping.elapsed()
    );
    let status = t.wait(Duration::from_secs(10)).expect("lbctl trace ends");
    assert!(
        !status.success(),
        "lbctl trace succeeded through a shutdown"
    );
    assert!(t.stderr().contains("shutting down"), "{}", t.stderr());
}
