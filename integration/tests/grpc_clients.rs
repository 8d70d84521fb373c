//! Stock gRPC clients against a real lbd: Python grpcio (the library's own defaults, no authority
//! override) over the Unix socket and over the loopback TCP listener calls the API with stubs
//! generated from `proto/*.proto`, asks `grpc.health.v1.Health`, and finds and calls a method
//! through server reflection alone (no .proto, no stub). The scripts are in
//! `integration/python/grpc_clients.py`.
//!
//! Needs the virtualenv `make test` creates (`make grpc-venv`: grpcio, grpcio-tools,
//! grpcio-health-checking, grpcio-reflection), or the python that `$XDPLB_GRPC_PYTHON` names.
//! Run as root: `cargo test -p xdplb-integration --test grpc_clients`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xdplb_integration::{Lbd, NetNs, Topology, VIP};
use xdplb_testkit::cmd::wait_bounded;

/// Longest one script run may take before it is killed.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The loopback TCP listener of lbd, inside the LB namespace.
const TCP_PORT: u16 = 50051;
/// The service names of lbd that `Health` answers for.
const SERVICES: [&str; 5] = [
    "xdplb.v1.Vips",
    "xdplb.v1.Backends",
    "xdplb.v1.Stats",
    "xdplb.v1.Firewall",
    "xdplb.v1.RateLimits",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn python() -> Result<PathBuf> {
    let path = std::env::var_os("XDPLB_GRPC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-grpc/bin/python3"));
    if !path.is_file() {
        bail!(
            "{} not found: `make grpc-venv` installs grpcio and its tools into .venv-grpc \
             (or set XDPLB_GRPC_PYTHON)",
            path.display()
        );
    }
    Ok(path)
}

/// `grpc_clients.py TARGET args...` inside `ns`, its output going to `log`.
fn spawn_script(ns: &NetNs, target: &str, args: &[&str], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).context("creating the script's log")?;
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(python()?)
        .arg(repo_root().join("integration/python/grpc_clients.py"))
        .arg(target)
        .args(args)
        // No proxy, no environment-chosen channel options: the library's defaults.
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("grpc_proxy")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning the grpcio script")
}

/// Runs `grpc_clients.py TARGET args...` inside `ns` (bounded by [`SCRIPT_TIMEOUT`]);
/// (success, its output).
fn script(ns: &NetNs, target: &str, args: &[&str]) -> Result<(bool, String)> {
    let dir = tempfile::Builder::new()
        .prefix("xdplb-grpc-py-")
        .tempdir()
        .context("tempdir")?;
    let log = dir.path().join("out");
    let mut child = spawn_script(ns, target, args, &log)?;
    let status = wait_bounded(&mut child, SCRIPT_TIMEOUT)?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => Ok((s.success(), text)),
        None => bail!("grpc_clients.py {args:?} ran longer than {SCRIPT_TIMEOUT:?}:\n{text}"),
    }
}

/// A script run that must succeed.
fn ok(lbd: &Lbd, ns: &NetNs, target: &str, args: &[&str]) -> String {
    let (success, text) = script(ns, target, args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
    assert!(
        success,
        "grpcio {target} {args:?} failed:\n{text}\n--- lbd log ---\n{}",
        lbd.log_text()
    );
    eprintln!("grpcio {target} {args:?}:\n{text}");
    text
}

fn lab(tcp: bool) -> (Lbd, Topology) {
    let topo = Topology::two_arm(2).expect("topology");
    let mut config = topo.lbd_config();
    if tcp {
        config.push_str(&format!(
            "\n[api]\ngrpc_listen = \"127.0.0.1:{TCP_PORT}\"\n"
        ));
    }
    let lbd = Lbd::start(topo.lb(), &config).expect("lbd starts");
    (lbd, topo)
}

#[test]
fn grpcio_over_the_unix_socket_with_its_default_authority() {
    let (lbd, topo) = lab(false);
    let target = format!("unix:{}", lbd.socket().display());
    let vip = VIP.to_string();
    let backend = topo.backend(1).addr.to_string();
    let out = ok(&lbd, topo.lb(), &target, &["api", &vip, &backend]);
    assert!(out.contains("ok: api"), "{out}");
    // What the Python client did is what lbd holds.
    let vips = lbd.ctl_json(&["vip", "list"]).expect("vip list");
    let text = vips.to_string();
    assert!(text.contains(&vip), "{text}");
    let backends = lbd
        .ctl(&[
            "backend",
            "list",
            "--vip",
            &format!("{vip}:80"),
            "--proto",
            "tcp",
        ])
        .expect("backend list");
    assert!(backends.contains(&backend), "{backends}");

    // The README's exec probe, as written there (YAML folds its lines into one).
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let probe = readme
        .split_once("command: [python3, -c, \"")
        .and_then(|(_, rest)| rest.split_once("\"]"))
        .map(|(code, _)| code.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .expect("the README has the exec probe");
    let probe = probe.replace("/run/xdplb/lbd.sock", &lbd.socket().display().to_string());
    let status = Command::new("nsenter")
        .arg(format!("--net={}", topo.lb().path().display()))
        .args(["timeout", "20"])
        .arg(python().expect("python"))
        .args(["-c", &probe])
        .status()
        .expect("running the README's probe");
    assert!(
        status.success(),
        "the README's probe failed ({status}): {probe}"
    );

    // `unix:///abs/path`, the other spelling of the same socket.
    let target3 = format!("unix://{}", lbd.socket().display());
    let out = ok(&lbd, topo.lb(), &target3, &["health", ""]);
    assert!(out.contains("SERVING"), "{out}");
}

#[test]
fn health_and_reflection_over_unix_and_tcp() {
    let (lbd, topo) = lab(true);
    let vip = VIP.to_string();
    let backend = topo.backend(2).addr.to_string();
    let unix = format!("unix:{}", lbd.socket().display());
    let tcp = format!("127.0.0.1:{TCP_PORT}");
    ok(&lbd, topo.lb(), &tcp, &["api", &vip, &backend]);
    for target in [&unix, &tcp] {
        let mut health = vec!["health", ""];
        health.extend(SERVICES);
        let out = ok(&lbd, topo.lb(), target, &health);
        assert_eq!(
            out.matches(": SERVING").count(),
            1 + SERVICES.len(),
            "{out}"
        );
        let out = ok(
            &lbd,
            topo.lb(),
            target,
            &["health-unknown", "xdplb.v1.Nope"],
        );
        assert!(out.contains("NOT_FOUND"), "{out}");
        let out = ok(&lbd, topo.lb(), target, &["reflection", &vip]);
        assert!(out.contains("ListVips through reflection"), "{out}");
    }
    // A backend at the VIP's own address is refused, naming the field; nothing changes.
    let out = ok(&lbd, topo.lb(), &unix, &["self-backend", &vip]);
    assert!(out.contains("INVALID_ARGUMENT backend.address"), "{out}");
}

/// A script running in the background, killed and reaped on drop (also when the test fails).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A `Health.Watch` stream sees SERVING, then NOT_SERVING when lbd stops, and then its end: it
/// does not hold up lbd's graceful shutdown (lbd exits 0 within its stop timeout).
#[test]
fn health_watch_ends_with_not_serving_when_lbd_stops() {
    let (mut lbd, topo) = lab(false);
    let target = format!("unix:{}", lbd.socket().display());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("watch");
    let mut watch =
        Reaped(spawn_script(topo.lb(), &target, &["health-watch"], &log).expect("spawn"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("SERVING")
    {
        if std::time::Instant::now() > deadline {
            panic!(
                "no SERVING from Watch: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lbd.stop()
        .expect("lbd stops cleanly with a Watch stream open");
    let status = wait_bounded(&mut watch.0, SCRIPT_TIMEOUT).expect("wait");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{text}\n{}",
        lbd.log_text()
    );
    assert!(
        text.contains("Health.Watch(''): NOT_SERVING\nHealth.Watch(''): stream ended"),
        "{text}"
    );
}
