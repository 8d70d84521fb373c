//! `NetNs`: a uniquely named network namespace removed on drop, code run inside it, and veth wiring.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Prefix of every namespace this harness creates: `xlb-<pid>-<counter>-<role>`.
pub const NS_PREFIX: &str = "xlb-";

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// A network namespace named `xlb-<pid>-<counter>-<role>`, mounted under /run/netns.
///
/// Dropping it runs `ip netns del`; the kernel then destroys the namespace (and every veth end
/// inside it, which takes the peer end with it) once the last socket or process using it is gone.
/// Drop never panics: a failure is logged to stderr.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace and brings `lo` up.
    pub fn new(role: &str) -> Result<NetNs> {
        SWEEP.call_once(sweep_stale_namespaces);
        let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{role}", std::process::id());
        run_cmd(&["ip", "netns", "add", &name])
            .with_context(|| format!("creating network namespace {name}"))?;
        // From here on Drop removes the namespace, also when the next step fails.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as given to `ip netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, `/run/netns/<name>` (for `setns` or `nsenter --net=`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip netns exec <name> cmd...` and returns its stdout; the error carries its stderr.
    pub fn exec(&self, cmd: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        run_cmd(&full)
    }

    /// Runs `ip -n <name> args...` (cheaper than `exec` for iproute2 commands).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_cmd(&full)
    }

    /// Sets one sysctl inside the namespace (`sysctl -qw key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life, so they can be
    /// returned and used from any thread afterwards. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|s| {
            let worker = s.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {name}"))?;
                drop(file);
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-lived thread inside this namespace (e.g. a server loop).
    ///
    /// A helper thread joins the namespace and spawns the worker from there: a new thread
    /// inherits the network namespace of the thread that created it.
    pub fn spawn<T, F>(&self, thread_name: &str, f: F) -> Result<JoinHandle<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let builder = std::thread::Builder::new().name(thread_name.to_string());
        self.run(move || builder.spawn(f))?
            .with_context(|| format!("spawning thread {thread_name} in {}", self.name))
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: removing network namespace {}: {e:#}", self.name);
        }
    }
}

/// Creates a veth pair with `a_if` in namespace `a` and `b_if` in namespace `b`, turns TX
/// checksum offload and TSO off and GRO on at both ends, and sets both links up.
///
/// GRO gives each end NAPI, which the receiving peer of an XDP_TX / XDP_REDIRECT frame needs;
/// with TX offload off every packet carries a real checksum, as on a wire.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    if a_if.len() > 15 || b_if.len() > 15 {
        bail!("interface names must be at most 15 bytes: {a_if:?}, {b_if:?}");
    }
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("veth {}:{a_if} <-> {}:{b_if}", a.name(), b.name()))?;
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        // Up first: veth enables NAPI (needed to receive XDP_TX/XDP_REDIRECT frames) only for
        // GRO switched on while the link is up.
        ns.ip(&["link", "set", ifname, "up"])?;
        ns.exec(&[
            "ethtool", "-K", ifname, "tx", "off", "tso", "off", "gro", "on",
        ])
        .with_context(|| format!("ethtool on {}:{ifname}", ns.name()))?;
    }
    Ok(())
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error that
/// includes the command line, the status and stderr.
pub fn run_cmd(cmd: &[&str]) -> Result<String> {
    let (program, args) = cmd.split_first().context("empty command")?;
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes namespaces left behind by earlier test processes that were killed before their
/// guards could run (`xlb-<pid>-...` whose pid no longer exists). Touches nothing else.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner_pid(&name, NS_PREFIX) {
            eprintln!("note: removing stale namespace {name} of dead process {pid}");
            if let Err(e) = run_cmd(&["ip", "netns", "del", &name]) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// For a name `<prefix><pid>-...` whose pid is not a live process (and not ours), the pid.
pub(crate) fn stale_owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let pid: u32 = rest.split('-').next()?.parse().ok()?;
    if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
        return None;
    }
    Some(pid)
}
