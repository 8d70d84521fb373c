//! A bad configuration file stops `lbd` before it touches anything: the real binary is run on a
//! table of bad files, in a private network namespace whose interfaces it would attach to; each
//! must exit with status 1 and a message naming the file, the line and the key, with no XDP
//! program attached, no pins, no socket and no state file left. A good file, run the same way,
//! does attach and pin (so the checks can see it when it happens).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use xdplb_testkit::netns::NetNs;

/// Marks the line a case expects its error on.
const HERE: &str = "# <- error";

struct Case {
    what: &'static str,
    /// The file after the common head; the error's line is the one ending in [`HERE`].
    body: &'static str,
    /// The key the message must name (None: a syntax error, where there is no key).
    key: Option<&'static str>,
    /// Words the message must contain.
    says: &'static str,
    /// The message gives the file and line (all but the listener check, which is not the
    /// parser's).
    placed: bool,
}

fn head(pin: &str) -> String {
    format!(
        "# lbd configuration under test\n[dataplane]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\npin_path = \"{pin}\"\n"
    )
}

const NAT: &str = "[nat]\nsnat_address = \"10.77.0.1\"\n";

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "syntax error",
            body: "[nat]\nsnat_address = \"10.77.0.1 # <- error\n",
            key: None,
            says: "invalid basic string",
            placed: true,
        },
        Case {
            what: "ICMP source not unicast",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[icmp]\nsource = \"224.0.0.1\" # <- error\n",
            key: Some("icmp.source"),
            says: "not a unicast address",
            placed: true,
        },
        Case {
            what: "ICMP budget above the most a bucket holds",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[icmp]\nerrors_per_second = 20000000 # <- error\n",
            key: Some("icmp.errors_per_second"),
            says: "above the most",
            placed: true,
        },
        Case {
            what: "unknown key",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\nsnat_adress = \"10.77.0.2\" # <- error\n",
            key: Some("nat.snat_adress"),
            says: "unknown field `snat_adress`",
            placed: true,
        },
        Case {
            what: "ill-typed value",
            body: "[nat]\nsnat_address = \"10.77.0\" # <- error\n",
            key: Some("nat.snat_address"),
            says: "invalid IPv4 address",
            placed: true,
        },
        Case {
            what: "port range backwards",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\nport_range = [30000, 20000] # <- error\n",
            key: Some("nat.port_range"),
            says: "start <= end",
            placed: true,
        },
        Case {
            what: "not a prime Maglev size",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[tables]\nconntrack_size = 4096\nmaglev_size = 65536 # <- error\n",
            key: Some("tables.maglev_size"),
            says: "must be a prime",
            placed: true,
        },
        Case {
            what: "zero timeout",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[timeouts]\nudp = \"0s\" # <- error\n",
            key: Some("timeouts.udp"),
            says: "outside 1s..=7d",
            placed: true,
        },
        Case {
            what: "bad metrics address",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[metrics]\nlisten = \"localhost:9469\" # <- error\n",
            key: Some("metrics.listen"),
            says: "localhost",
            placed: true,
        },
        Case {
            what: "backend listed twice",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"tcp\"\n[[vip.backend]]\naddress = \"10.77.1.2:80\"\n[[vip.backend]]\naddress = \"10.77.1.2:80\" # <- error\n",
            key: Some("vip[0].backend[1].address"),
            says: "listed twice",
            placed: true,
        },
        Case {
            what: "VIP defined twice",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"tcp\"\n[[vip]]\naddress = \"10.77.100.1:80\" # <- error\nproto = \"tcp\"\n",
            key: Some("vip[1].address"),
            says: "defined twice",
            placed: true,
        },
        Case {
            what: "DSR backend on another port",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"tcp\"\nmode = \"ipip\"\n[[vip.backend]]\naddress = \"10.77.1.2:8080\" # <- error\n",
            key: Some("vip[0].backend[0].address"),
            says: "cannot translate ports",
            placed: true,
        },
        Case {
            what: "backend at the VIP's own address",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"tcp\"\n[[vip.backend]]\naddress = \"10.77.1.2:80\"\n[[vip.backend]]\naddress = \"10.77.100.1:8080\" # <- error\n",
            key: Some("vip[0].backend[1].address"),
            says: "is the address of vip 10.77.100.1:80/tcp itself",
            placed: true,
        },
        Case {
            what: "weight too large",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"tcp\"\n[[vip.backend]]\naddress = \"10.77.1.2:80\"\nweight = 5000000 # <- error\n",
            key: Some("vip[0].backend[0].weight"),
            says: "above the maximum",
            placed: true,
        },
        Case {
            what: "unknown protocol",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[[vip]]\naddress = \"10.77.100.1:80\"\nproto = \"sctp\" # <- error\n",
            key: Some("vip[0].proto"),
            says: "sctp",
            placed: true,
        },
        Case {
            what: "non-loopback TCP API without TLS",
            body: "[nat]\nsnat_address = \"10.77.0.1\"\n[api]\ngrpc_listen = \"0.0.0.0:50051\" # <- error\n",
            // Refused by lbd's listener check (also before the data plane), not the parser.
            key: None,
            says: "refusing to serve the gRPC API on 0.0.0.0:50051 without TLS client authentication",
            placed: false,
        },
    ]
}

/// `ip -d link show DEV` mentions "xdp" once a program is attached.
fn xdp_attached(ns: &NetNs, dev: &str) -> Result<bool> {
    Ok(ns.ip(&["-d", "link", "show", dev])?.contains("xdp"))
}

/// lbd on `config` (written to `dir/lbd.toml`), its socket and state in `dir`, no metrics
/// endpoint, detaching on exit.
fn lbd_command(dir: &Path, config: &str) -> Result<Command> {
    let file = dir.join("lbd.toml");
    std::fs::write(&file, config).context("writing the config")?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbd"));
    cmd.arg("--config")
        .arg(&file)
        .arg("--socket")
        .arg(dir.join("lbd.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--detach-on-exit")
        .arg("--metrics-listen")
        .arg("none");
    Ok(cmd)
}

/// Runs lbd on `config` (inheriting the thread's namespace); Ok(stderr) if it exits within
/// 20 s, with its status.
fn run_lbd(dir: &Path, config: &str) -> Result<(std::process::ExitStatus, String)> {
    let mut child = lbd_command(dir, config)?
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning lbd")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok((status, err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lbd did not exit within 20 s on a bad config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_config_files_stop_lbd_before_the_data_plane() -> Result<()> {
    NetNs::within("configer", |ns| {
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["link", "set", "eth1", "up"])?;
        let pin = format!("/sys/fs/bpf/xdplb-cfgtest-{}", std::process::id());
        for (i, case) in cases().iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let text = format!("{}{}", head(&pin), case.body);
            let line = text
                .lines()
                .position(|l| l.ends_with(HERE))
                .map(|n| n + 1)
                .context("case without a marked line")?;
            let (status, stderr) = run_lbd(dir.path(), &text)?;
            let msg = stderr.lines().last().unwrap_or_default().to_string();
            eprintln!("case {i} ({}): {msg}", case.what);
            ensure!(
                status.code() == Some(1),
                "{}: lbd exited with {status}: {stderr}",
                case.what
            );
            let file = dir.path().join("lbd.toml");
            if case.placed {
                let place = format!("{}:{line}:", file.display());
                ensure!(
                    msg.contains(&place),
                    "{}: expected the place {place} in: {msg}",
                    case.what
                );
            }
            if let Some(key) = case.key {
                ensure!(
                    msg.contains(&format!(": {key}: ")),
                    "{}: expected the key {key} in: {msg}",
                    case.what
                );
            }
            ensure!(
                msg.contains(case.says),
                "{}: expected «{}» in: {msg}",
                case.what,
                case.says
            );
            ensure!(!xdp_attached(ns, "eth0")?, "{}: XDP attached", case.what);
            ensure!(!Path::new(&pin).exists(), "{}: {pin} created", case.what);
            ensure!(
                !dir.path().join("lbd.sock").exists(),
                "{}: socket created",
                case.what
            );
            ensure!(
                !dir.path().join("state").exists(),
                "{}: state directory created",
                case.what
            );
        }

        // The same file, made good, does attach and pin: the checks above can see it.
        let dir = tempfile::tempdir()?;
        let mut child = lbd_command(dir.path(), &format!("{}{NAT}", head(&pin)))?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut up = false;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            if dir.path().join("lbd.sock").exists() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let attached = xdp_attached(ns, "eth0")?;
        let pinned = Path::new(&pin).exists();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let stop = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() && Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if Path::new(&pin).exists() {
            let _ = xdplb::dataplane::remove_pins(Path::new(&pin));
        }
        ensure!(up, "the good config did not start lbd");
        ensure!(attached, "the good config did not attach XDP");
        ensure!(pinned, "the good config did not pin maps");
        Ok(())
    })
}
