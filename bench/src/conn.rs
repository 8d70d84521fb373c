//! Section 4, connections: wrk against an nginx backend in namespaces. Requests per second and
//! p50/p99 latency direct to the backend (kernel forwarding in the LB namespace), through the
//! real lbd in each mode, through HAProxy in TCP mode and through nftables DNAT.
//!
//! Each path gets two bounded wrk runs: 32 keep-alive connections for requests/s, and one
//! connection for latency (at one connection the p50 is the path's own cost, not queueing).
//! nginx, HAProxy and wrk run with config files in a temporary directory and are stopped by
//! their guards; the namespaces are removed by theirs.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xdplb_integration::dsr::{backend_setup, LbCounters};
use xdplb_integration::{Lbd, NetNs, Proto, Topology, VIP};

use crate::e2e::procs::Daemon;
use crate::report::{Report, Section};

/// Port of nginx, HAProxy and the VIP (DSR cannot translate ports).
const PORT: u16 = 80;
/// The LB's modes and the VIP port each is measured on.
const MODES: [(&str, u16); 3] = [("nat", 80), ("l2dsr", 81), ("ipip", 82)];
/// Connections of the throughput run.
const CONNECTIONS: u32 = 32;
/// How long a daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long wrk may take beyond its own duration before it is killed.
const WRK_GRACE: Duration = Duration::from_secs(10);

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

/// One path's two runs.
#[derive(Debug, Clone)]
struct PathResult {
    name: String,
    /// 32 connections.
    load: Wrk,
    /// One connection.
    single: Wrk,
    /// What shows the path taken (LB counters), if anything.
    check: String,
}

/// Run lengths.
#[derive(Debug, Clone, Copy)]
struct Durations {
    load: Duration,
    /// Throughput runs per path; the best is reported.
    load_runs: usize,
    single: Duration,
}

/// Runs section 4 and adds it to `report`.
pub fn run(report: &mut Report, quick: bool) -> Result<()> {
    let durations = if quick {
        Durations {
            load: Duration::from_secs(1),
            load_runs: 1,
            single: Duration::from_secs(1),
        }
    } else {
        Durations {
            load: Duration::from_secs(2),
            load_runs: 2,
            single: Duration::from_secs(2),
        }
    };
    let results = measure_all(durations).context("connection measurements")?;
    report.sections.push(section(&results, durations));
    Ok(())
}

fn measure_all(d: Durations) -> Result<Vec<PathResult>> {
    let dir = tempfile::Builder::new()
        .prefix("xdplb-bench-conn-")
        .tempdir()
        .context("temporary directory for nginx and HAProxy")?;
    let topo = Topology::two_arm(1).context("building the two-arm topology")?;
    let b1 = topo.backend(1);
    // `lbctl backend-setup --mode ipip` attaches the decap program and refuses an interface that
    // has another XDP program; the LB reaches the backend by XDP_REDIRECT, which needs none.
    b1.ns.ip(&["link", "set", "dev", "eth0", "xdp", "off"])?;
    let backend = SocketAddrV4::new(b1.addr, PORT);
    let lb_addr = SocketAddrV4::new(topo.lb_addr(), PORT);
    let vip = SocketAddrV4::new(VIP, PORT);

    let mut nginx = start_nginx(&b1.ns, dir.path())?;
    nginx.wait_listening(&b1.ns, backend, START_TIMEOUT)?;
    let client = topo.client();
    let mut results = Vec::new();

    results.push(measure(
        client,
        "direct to the backend",
        backend,
        d,
        String::new(),
    )?);

    // nftables DNAT in the LB namespace (no XDP there).
    nft_apply(
        topo.lb(),
        &format!(
            "table ip xlb_bench_conn {{\n\
             \tchain pre {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\tip daddr {VIP} tcp dport {PORT} dnat to {}\n\
             \t}}\n\
             }}\n",
            b1.addr
        ),
        dir.path(),
    )?;
    let nft = measure(client, "nftables DNAT", vip, d, String::new());
    nft_apply(topo.lb(), "delete table ip xlb_bench_conn\n", dir.path())?;
    results.push(nft?);

    // HAProxy in TCP mode on the LB's own address.
    {
        let mut haproxy = start_haproxy(topo.lb(), dir.path(), lb_addr, backend)?;
        haproxy.wait_listening(topo.lb(), lb_addr, START_TIMEOUT)?;
        results.push(measure(
            client,
            "HAProxy (TCP mode)",
            lb_addr,
            d,
            String::new(),
        )?);
        haproxy.stop()?;
    }

    // The real lbd: one VIP port per mode (DSR cannot translate ports: nginx listens on each),
    // so no connection of one mode's run can follow a flow entry left by another's.
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).context("starting lbd")?;
    for (mode, port) in MODES {
        let vip = SocketAddrV4::new(VIP, port);
        let setup = match mode {
            // The backend prepared the project's way: VIP on lo, ARP settings, decap for IPIP.
            "l2dsr" | "ipip" => Some(backend_setup(&b1.ns, VIP, mode, "eth0", topo.snat_addr())?),
            _ => None,
        };
        lbd.ctl(&[
            "vip",
            "add",
            &vip.to_string(),
            "--proto",
            "tcp",
            "--mode",
            mode,
        ])?;
        lbd.add_backend(vip, Proto::Tcp, SocketAddrV4::new(b1.addr, port))?;
        let r = measure_lb(client, &lbd, &format!("xdplb {mode}"), vip, d);
        if let Some(setup) = setup {
            setup.undo()?;
        }
        results.push(r?);
    }
    drop(lbd);
    nginx.stop()?;
    Ok(results)
}

/// Measures through the LB and records how the LB forwarded the packets (its reasons).
fn measure_lb(
    client: &NetNs,
    lbd: &Lbd,
    name: &str,
    target: SocketAddrV4,
    d: Durations,
) -> Result<PathResult> {
    let before = LbCounters::read(lbd)?;
    let mut r = measure(client, name, target, d, String::new())?;
    let delta = LbCounters::read(lbd)?.since(&before);
    let forwarded = delta.forwarded();
    if forwarded == 0 {
        bail!("{name}: the LB forwarded nothing: {delta:?}");
    }
    let shares: Vec<String> = delta
        .reasons
        .iter()
        .filter(|(reason, n)| reason.starts_with("tx_") && **n > 0)
        .map(|(reason, n)| format!("{reason} {:.1}%", 100.0 * *n as f64 / forwarded as f64))
        .collect();
    r.check = format!("LB forwarded: {}", shares.join(", "));
    Ok(r)
}

fn measure(
    client: &NetNs,
    name: &str,
    target: SocketAddrV4,
    d: Durations,
    check: String,
) -> Result<PathResult> {
    let url = format!("http://{target}/");
    // Best of a few: the machine is shared, and other work only ever lowers a run.
    let mut load = Wrk::default();
    for _ in 0..d.load_runs {
        let run = wrk(client, &url, CONNECTIONS, d.load).with_context(|| format!("{name}: wrk"))?;
        if run.requests_per_sec > load.requests_per_sec {
            load = run;
        }
    }
    let single = wrk(client, &url, 1, d.single).with_context(|| format!("{name}: wrk -c1"))?;
    Ok(PathResult {
        name: name.to_string(),
        load,
        single,
        check,
    })
}

/// Runs `wrk -t1 -c<conns> -d<secs> --latency` in `client`, bounded, and parses its output.
fn wrk(client: &NetNs, url: &str, conns: u32, duration: Duration) -> Result<Wrk> {
    let dir = tempfile::Builder::new()
        .prefix("xdplb-bench-wrk-")
        .tempdir()
        .context("temporary directory for wrk's output")?;
    let log = dir.path().join("wrk.out");
    let secs = format!("{}s", duration.as_secs().max(1));
    let conns = conns.to_string();
    let mut proc = Daemon::spawn(
        client,
        "wrk",
        &[
            "wrk",
            "-t1",
            "-c",
            &conns,
            "-d",
            &secs,
            "--latency",
            "--timeout",
            "2s",
            url,
        ],
        &log,
    )?;
    let status = proc.wait_exit(duration + WRK_GRACE)?;
    let out = proc.log_text();
    if !status.success() {
        bail!("wrk failed ({status}):\n{out}");
    }
    parse_wrk(&out).with_context(|| format!("parsing wrk's output:\n{out}"))
}

/// Parses wrk's `--latency` report.
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    let mut in_dist = false;
    let (mut have_rps, mut have_p50, mut have_p99) = (false, false, false);
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if let Some(rest) = t.strip_prefix("Requests/sec:") {
            w.requests_per_sec = rest.trim().parse().context("Requests/sec")?;
            have_rps = true;
        } else if in_dist && t.starts_with("50%") {
            w.p50_us = parse_duration_us(t.trim_start_matches("50%").trim())?;
            have_p50 = true;
        } else if in_dist && t.starts_with("99%") {
            w.p99_us = parse_duration_us(t.trim_start_matches("99%").trim())?;
            have_p99 = true;
            in_dist = false;
        } else if t.contains(" requests in ") {
            w.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("the request count")?;
        } else if let Some(rest) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    w.errors += n.parse::<u64>().context("a socket error count")?;
                }
            }
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += rest.trim().parse::<u64>().context("non-2xx count")?;
        }
    }
    if !(have_rps && have_p50 && have_p99) {
        bail!("no Requests/sec or latency distribution");
    }
    Ok(w)
}

/// `412.33us`, `1.23ms`, `2.00s` in microseconds.
fn parse_duration_us(text: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("no unit in {text:?}")
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad duration {text:?}"))?;
    Ok(v * scale)
}

/// nginx answering `200 xdplb bench` on port 80 of every address of `ns`: one process, no
/// master, everything (config, pid, logs, temp paths) under `dir`.
fn start_nginx(ns: &NetNs, dir: &Path) -> Result<Daemon> {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \taccess_log off;\n\
             \tclient_body_temp_path {d}/body;\n\
             \tproxy_temp_path {d}/proxy;\n\
             \tfastcgi_temp_path {d}/fastcgi;\n\
             \tuwsgi_temp_path {d}/uwsgi;\n\
             \tscgi_temp_path {d}/scgi;\n\
             \tkeepalive_requests 1000000;\n\
             \tserver {{\n\
             \t\tlisten {} reuseport;\n\
             \t\tlisten {} reuseport;\n\
             \t\tlisten {} reuseport;\n\
             \t\tlocation / {{ return 200 \"xdplb bench\\n\"; }}\n\
             \t}}\n\
             }}\n",
            MODES[0].1, MODES[1].1, MODES[2].1
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let conf = conf.to_string_lossy().into_owned();
    let prefix = format!("{d}/");
    let errlog = format!("{d}/nginx-error.log");
    Daemon::spawn(
        ns,
        "nginx",
        &["nginx", "-c", &conf, "-p", &prefix, "-e", &errlog],
        &dir.join("nginx.out"),
    )
}

/// HAProxy in TCP mode: `listen` on `bind`, one server `backend`; foreground, config in `dir`.
fn start_haproxy(
    ns: &NetNs,
    dir: &Path,
    bind: SocketAddrV4,
    backend: SocketAddrV4,
) -> Result<Daemon> {
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n\
             \tmaxconn 4000\n\
             defaults\n\
             \tmode tcp\n\
             \ttimeout connect 2s\n\
             \ttimeout client 30s\n\
             \ttimeout server 30s\n\
             listen bench\n\
             \tbind {bind}\n\
             \tserver b1 {backend}\n"
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let conf = conf.to_string_lossy().into_owned();
    Daemon::spawn(
        ns,
        "haproxy",
        &["haproxy", "-db", "-f", &conf],
        &dir.join("haproxy.out"),
    )
}

/// Applies an nftables script inside `ns`.
fn nft_apply(ns: &NetNs, script: &str, dir: &Path) -> Result<()> {
    let path = dir.join("rules.nft");
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    let path = path.to_string_lossy().into_owned();
    ns.exec(&["nft", "-f", &path])
        .with_context(|| format!("nft -f in {}:\n{script}", ns.name()))?;
    Ok(())
}

fn section(results: &[PathResult], d: Durations) -> Section {
    let mut s = Section::new(
        "4. Connections (wrk -> nginx, namespaces)",
        &[
            "path",
            "req/s (32 conns)",
            "vs direct",
            "p50 / p99 us (32 conns)",
            "p50 / p99 us (1 conn)",
            "added p50 us (1 conn)",
            "path check",
        ],
    );
    let find = |prefix: &str| results.iter().find(|r| r.name.starts_with(prefix));
    let direct = find("direct");
    let haproxy = find("HAProxy");
    let mut misses = Vec::new();
    for r in results {
        let (vs_direct, added) = match direct {
            Some(dr) => (
                r.load.requests_per_sec / dr.load.requests_per_sec,
                r.single.p50_us - dr.single.p50_us,
            ),
            None => (f64::NAN, f64::NAN),
        };
        let target = if r.name.starts_with("xdplb") {
            let beats_haproxy =
                haproxy.is_none_or(|h| r.load.requests_per_sec > h.load.requests_per_sec);
            let met = vs_direct >= 0.95 && added <= 10.0 && beats_haproxy;
            if !met {
                misses.push(format!(
                    "{}: {:.0}% of direct req/s (target 95%), +{added:.1} us p50 (target 10), {} HAProxy",
                    r.name,
                    100.0 * vs_direct,
                    if beats_haproxy { "ahead of" } else { "behind" }
                ));
            }
            Some(met)
        } else {
            None
        };
        let errors = r.load.errors + r.single.errors;
        let mut check = r.check.clone();
        if errors > 0 {
            check = format!("{check} ({errors} wrk errors)");
        }
        s.row(
            vec![
                r.name.clone(),
                format!("{:.0}", r.load.requests_per_sec),
                format!("{vs_direct:.3}"),
                format!("{:.0} / {:.0}", r.load.p50_us, r.load.p99_us),
                format!("{:.1} / {:.1}", r.single.p50_us, r.single.p99_us),
                format!("{added:+.1}"),
                check,
            ],
            target,
        );
    }
    s.note(format!(
        "wrk -t1 --latency: {} connections for {:?}, best of {} (req/s and the 32-connection \
         latencies), then 1 connection for {:?} (latency: the path's own cost, no queueing). nginx: one process, keep-alive, \
         `return 200`. Direct = the client reaches the backend through the LB namespace's \
         kernel forwarding (no XDP loaded); HAProxy (default threads, TCP mode) and nftables \
         DNAT run in the LB namespace. DSR backends are prepared with `lbctl backend-setup` \
         (VIP on lo; IPIP decap program); their replies return through the LB namespace's \
         kernel (its default route), not through XDP.",
        CONNECTIONS, d.load, d.load_runs, d.single
    ));
    if misses.is_empty() {
        s.note("All connection targets met.");
    } else {
        s.note(format!(
            "Missed: {}. Why (read from the kernel's veth code, not profiled here): with an XDP program on a veth, every TCP \
             packet the kernel hands it (locally sent skbs are clones, kept for \
             retransmission) is copied into a fresh page to become an XDP frame \
             (veth_convert_skb_to_xdp_buff), a cost only veth has; the direct and nftables \
             paths skip it. NAT pays it both ways, DSR only towards the backend. The machine \
             has 2 CPUs shared by wrk, nginx, the softirqs and anything else running, and \
             single runs vary by 15-30%: read one row against the others of the same run. \
             What would close it: measuring on NICs (no skb-to-frame copy), or pinning wrk, \
             nginx and the LB's softirq to CPUs of their own on a larger machine.",
            misses.join("; ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 3s test @ http://10.200.11.2:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.33us  100.00us   3.00ms   90.00%
    Req/Sec    70.00k     2.00k   75.00k    80.00%
  Latency Distribution
     50%  400.50us
     75%  450.00us
     90%  500.00us
     99%    1.25ms
  210000 requests in 3.00s, 30.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  70000.50
Transfer/sec:     10.00MB
";

    #[test]
    fn parses_wrk_latency_report() {
        let w = parse_wrk(SAMPLE).expect("parses");
        assert_eq!(w.requests_per_sec, 70000.50);
        assert_eq!(w.p50_us, 400.5);
        assert_eq!(w.p99_us, 1250.0);
        assert_eq!(w.requests, 210000);
        assert_eq!(w.errors, 11);
    }

    #[test]
    fn refuses_output_without_figures() {
        assert!(parse_wrk("unable to connect to 10.200.11.2:80 Connection refused").is_err());
        assert!(parse_duration_us("12").is_err());
        assert_eq!(parse_duration_us("2.00s").expect("seconds"), 2e6);
    }
}
