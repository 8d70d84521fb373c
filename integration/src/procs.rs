//! The lbd daemon under test (started inside the LB namespace, stopped on drop) and lbctl calls.

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use xdplb_testkit::cmd::{terminate, wait_bounded};
use xdplb_testkit::pins::{ensure_bpffs, sweep_stale_pins};
use xdplb_testkit::NetNs;

/// How long lbd may take to come up (socket present and `lbctl vip list` answering).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long lbd may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one lbctl call may take before it is killed.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);

static CTL_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The directory holding `lbd` and `lbctl`: `$XDPLB_BIN_DIR`, or else the parent of the
/// directory of the running test binary (`target/debug/deps/..` = `target/debug`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDPLB_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no grandparent directory", exe.display()))
}

fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p xdplb -p lbctl`) or set XDPLB_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}

/// L4 protocol of a VIP: the model's, which displays as lbctl spells it (`tcp`, `udp`).
pub use xdplb_model::state::Protocol as Proto;

/// A running lbd. Dropping it sends SIGTERM, waits up to [`STOP_TIMEOUT`], then SIGKILLs; it
/// prints lbd's log if the test is panicking and removes a pin directory lbd left behind.
pub struct Lbd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    pin_path: Option<PathBuf>,
    lbctl: PathBuf,
    /// Started without --detach-on-exit: stopping it leaves the program attached and the pins
    /// in place, for the next lbd to adopt.
    keeps_pins: bool,
    // Last: removed after everything above is done with it.
    dir: TempDir,
}

/// The health checks of the suites: fast, so the tests are ([`health_flags`] spells them).
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(100);
pub const HEALTH_RISE: u32 = 2;
pub const HEALTH_FALL: u32 = 3;

/// `--health KIND` with [`HEALTH_INTERVAL`], [`HEALTH_TIMEOUT`], [`HEALTH_RISE`] and
/// [`HEALTH_FALL`], plus `extra`: flags of `lbctl vip add` and `vip set-health`.
pub fn health_flags<'a>(kind: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--health",
        kind,
        "--health-interval",
        "200ms",
        "--health-timeout",
        "100ms",
        "--rise",
        "2",
        "--fall",
        "3",
    ];
    v.extend_from_slice(extra);
    v
}

/// How [`Lbd::start_with`] runs lbd.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// State directory to use (shared by the lbds of a restart test); default: a private one.
    pub state_dir: Option<PathBuf>,
    /// Leave the program attached and the maps pinned on exit (no --detach-on-exit).
    pub keep_pins: bool,
}

impl StartOptions {
    /// lbd on the state directory `dir` (the lbds of a restart test share it), detaching and
    /// removing its pins on exit.
    pub fn state(dir: &Path) -> StartOptions {
        StartOptions {
            state_dir: Some(dir.to_owned()),
            keep_pins: false,
        }
    }

    /// [`StartOptions::state`], leaving the program attached and the maps pinned on exit.
    pub fn keep(dir: &Path) -> StartOptions {
        StartOptions {
            keep_pins: true,
            ..StartOptions::state(dir)
        }
    }
}

impl Lbd {
    /// Writes `config_toml` to a temporary directory and starts
    /// `nsenter --net=<lb ns> lbd --config <file> --socket <dir>/lbd.sock`, with stdout and
    /// stderr going to `<dir>/lbd.log`. Returns once `lbctl vip list` succeeds; on failure the
    /// error includes lbd's log.
    ///
    /// nsenter rather than `ip netns exec`: the latter remounts /sys, hiding /sys/fs/bpf.
    pub fn start(lb_ns: &NetNs, config_toml: &str) -> Result<Lbd> {
        Self::start_with(lb_ns, config_toml, &StartOptions::default())
    }

    /// [`Lbd::start`] with options (restart tests).
    pub fn start_with(lb_ns: &NetNs, config_toml: &str, opts: &StartOptions) -> Result<Lbd> {
        Self::start_binary(lb_ns, config_toml, opts, &binary("lbd")?)
    }

    /// [`Lbd::start_with`] running the lbd binary at `lbd_bin` (upgrade tests: another build).
    pub fn start_binary(
        lb_ns: &NetNs,
        config_toml: &str,
        opts: &StartOptions,
        lbd_bin: &Path,
    ) -> Result<Lbd> {
        let lbd_bin = lbd_bin.to_path_buf();
        let lbctl = binary("lbctl")?;
        ensure_bpffs()?;
        sweep_stale_pins();
        let pin_path = pin_path_of(config_toml)?;

        let dir = tempfile::Builder::new()
            .prefix("xdplb-test-")
            .tempdir()
            .context("creating lbd's temporary directory")?;
        let config = dir.path().join("lbd.toml");
        std::fs::write(&config, config_toml)
            .with_context(|| format!("writing {}", config.display()))?;
        let socket = dir.path().join("lbd.sock");
        let log = dir.path().join("lbd.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;

        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", lb_ns.path().display()))
            .arg(&lbd_bin)
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            // Each test has its own state file, and leaves nothing attached or pinned.
            .arg("--state-dir")
            .arg(
                opts.state_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("state")),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if !opts.keep_pins {
            cmd.arg("--detach-on-exit");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // The log is a file, read by people: no ANSI colours.
        cmd.env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {}", lbd_bin.display(), lb_ns.name()))?;

        // From here on Drop stops lbd, also when it never becomes ready.
        let mut lbd = Lbd {
            child: Some(child),
            socket,
            log,
            pin_path,
            lbctl,
            keeps_pins: opts.keep_pins,
            dir,
        };
        lbd.wait_ready()
            .with_context(|| format!("lbd did not start; its log:\n{}", lbd.log_text()))?;
        Ok(lbd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = anyhow!("socket {} never appeared", self.socket.display());
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling lbd")? {
                    bail!("lbd exited early with {status}");
                }
            }
            if self.socket.exists() {
                match self.ctl(&["vip", "list"]) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = e,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last_err.context(format!("not ready within {START_TIMEOUT:?}")))
    }

    /// lbd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pin directory from the configuration, if it named one.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin_path.as_deref()
    }

    /// lbd's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) if text.trim().is_empty() => "<empty>".to_string(),
            Ok(text) => text,
            Err(e) => format!("<cannot read {}: {e}>", self.log.display()),
        }
    }

    /// Runs `lbctl --socket <sock> args...` and returns its stdout; a non-zero exit (or a run
    /// longer than [`CTL_TIMEOUT`]) is an error carrying stdout and stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let n = CTL_COUNTER.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("lbctl-{n}.out"));
        let err_path = self.dir.path().join(format!("lbctl-{n}.err"));
        let out = File::create(&out_path).context("creating lbctl's stdout file")?;
        let err = File::create(&err_path).context("creating lbctl's stderr file")?;
        let mut child = Command::new(&self.lbctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {}", self.lbctl.display()))?;
        let status = wait_bounded(&mut child, CTL_TIMEOUT)?;
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        match status {
            Some(s) if s.success() => Ok(stdout),
            Some(s) => bail!(
                "`lbctl {}` failed ({s})\nstdout: {}\nstderr: {}",
                args.join(" "),
                stdout.trim(),
                stderr.trim()
            ),
            None => bail!(
                "`lbctl {}` did not finish within {CTL_TIMEOUT:?}\nstdout: {}\nstderr: {}",
                args.join(" "),
                stdout.trim(),
                stderr.trim()
            ),
        }
    }

    /// Runs `lbctl --socket <sock> --json args...` and parses its stdout.
    pub fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`lbctl --json {}` printed no JSON: {out}", args.join(" ")))
    }

    /// `lbctl --json backend list --vip <vip> --proto <proto>`, parsed.
    pub fn backend_list(&self, vip: SocketAddrV4, proto: Proto) -> Result<Value> {
        let (vip, proto) = (vip.to_string(), proto.to_string());
        self.ctl_json(&["backend", "list", "--vip", &vip, "--proto", &proto])
    }

    /// `lbctl vip add <vip> --proto <proto>`.
    pub fn add_vip(&self, vip: SocketAddrV4, proto: Proto) -> Result<String> {
        self.add_vip_with(vip, proto, &[])
    }

    /// `lbctl vip add <vip> --proto <proto> <flags>...` (a mode, a health check: see
    /// [`health_flags`]).
    pub fn add_vip_with(&self, vip: SocketAddrV4, proto: Proto, flags: &[&str]) -> Result<String> {
        let (vip, proto) = (vip.to_string(), proto.to_string());
        let mut args = vec!["vip", "add", &vip, "--proto", &proto];
        args.extend_from_slice(flags);
        self.ctl(&args)
    }

    /// `lbctl vip set-mode <vip> --proto <proto> --mode <mode>`.
    pub fn set_vip_mode(&self, vip: SocketAddrV4, proto: Proto, mode: &str) -> Result<String> {
        let (vip, proto) = (vip.to_string(), proto.to_string());
        self.ctl(&["vip", "set-mode", &vip, "--proto", &proto, "--mode", mode])
    }

    /// `lbctl add-backend --vip <vip> --proto <proto> <backend>`.
    pub fn add_backend(
        &self,
        vip: SocketAddrV4,
        proto: Proto,
        backend: SocketAddrV4,
    ) -> Result<String> {
        self.backend_ctl("add-backend", vip, proto, backend)
    }

    /// `lbctl remove-backend --vip <vip> --proto <proto> <backend>`.
    pub fn remove_backend(
        &self,
        vip: SocketAddrV4,
        proto: Proto,
        backend: SocketAddrV4,
    ) -> Result<String> {
        self.backend_ctl("remove-backend", vip, proto, backend)
    }

    /// `lbctl <verb> --vip <vip> --proto <proto> <backend>`.
    fn backend_ctl(
        &self,
        verb: &str,
        vip: SocketAddrV4,
        proto: Proto,
        backend: SocketAddrV4,
    ) -> Result<String> {
        let (vip, backend) = (vip.to_string(), backend.to_string());
        self.ctl(&[verb, "--vip", &vip, "--proto", &proto.to_string(), &backend])
    }

    /// Stops lbd (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and checks that it exited
    /// successfully and removed its pin directory; a leftover pin directory is removed and
    /// reported as an error. Idempotent; Drop calls it and only logs.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut problems = Vec::new();
        match terminate(&mut child, "lbd", STOP_TIMEOUT) {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!("lbd exited with {status}")),
            Err(e) => problems.push(format!("stopping lbd: {e:#}")),
        }
        if let Some(pins) = self.pin_path.as_ref().filter(|_| !self.keeps_pins) {
            if pins.exists() {
                let removal = match std::fs::remove_dir_all(pins) {
                    Ok(()) => "removed it".to_string(),
                    Err(e) => format!("removing it failed: {e}"),
                };
                problems.push(format!(
                    "lbd left its pin directory {} behind; {removal}",
                    pins.display()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
    }
}

impl Lbd {
    /// lbd's process id, while it runs (to signal it from another thread than the owner's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills lbd with SIGKILL (no clean-up code runs); its pins stay for the next lbd.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL lbd")?;
            child.wait().context("reaping lbd")?;
        }
        self.keeps_pins = true;
        Ok(())
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e:#}");
        }
        if std::thread::panicking() {
            eprintln!("----- lbd log ({}) -----", self.log.display());
            eprintln!("{}", self.log_text());
            eprintln!("----- end of lbd log -----");
        }
    }
}

/// The `[dataplane] pin_path` of a configuration, if present.
fn pin_path_of(config_toml: &str) -> Result<Option<PathBuf>> {
    let value: toml::Table = toml::from_str(config_toml).context("parsing the lbd config")?;
    Ok(value
        .get("dataplane")
        .and_then(|d| d.get("pin_path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from))
}

/// The `new_flows` counter of `vip` in the output of `lbctl --json stats`.
///
/// Tolerant of the exact layout: it takes the entries of the top-level `vips` array (or the
/// value itself if it is an array), ignores each entry's `backends`, picks the entry that
/// mentions the VIP's address and port, and returns the first `new_flows` number inside it.
pub fn vip_new_flows(stats: &Value, vip: SocketAddrV4) -> Option<u64> {
    let entries = match stats.get("vips") {
        Some(Value::Array(a)) => a,
        _ => stats.as_array()?,
    };
    let addr = vip.ip().to_string();
    let port = vip.port();
    entries.iter().find_map(|entry| {
        let mut own = entry.clone();
        if let Some(obj) = own.as_object_mut() {
            obj.remove("backends");
        }
        let text = own.to_string();
        let names_port =
            text.contains(&format!("{addr}:{port}")) || text.contains(&format!("\"port\":{port}"));
        if text.contains(&addr) && names_port {
            find_number(&own, "new_flows")
        } else {
            None
        }
    })
}

fn find_number(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|c| find_number(c, key))),
        Value::Array(items) => items.iter().find_map(|c| find_number(c, key)),
        _ => None,
    }
}
