//! [`NetNs`]: one network namespace of a test, uniquely named and removed on drop; a thread
//! enters it with the `!Send` guard [`Inside`] (aya's `NetNsGuard`) or runs code in it with
//! [`NetNs::run`]; veth pairs between namespaces.

use std::fs::File;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd::run_cmd;

/// Prefix of every namespace the kit creates: `xlb-<pid>-<counter>-<role>`.
pub const NS_PREFIX: &str = "xlb-";

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// A network namespace named `xlb-<pid>-<counter>-<role>`, mounted under /run/netns.
///
/// Dropping it runs `ip netns del`; the kernel then destroys the namespace (and every veth end
/// inside it, which takes the peer end with it) once the last socket, process or thread using
/// it is gone. Drop never panics: a failure is logged to stderr.
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

    /// Runs `body` on the calling thread inside a new namespace `role`: the thread enters it
    /// ([`NetNs::enter`]) for the body and comes back, and the namespace is removed, whether
    /// the body succeeded, failed or panicked.
    pub fn within<T>(role: &str, body: impl FnOnce(&NetNs) -> Result<T>) -> Result<T> {
        let ns = NetNs::new(role)?;
        let inside = ns.enter()?;
        let result = body(&ns);
        drop(inside);
        result
    }

    /// The namespace's inode number (its identity, as [`current_netns`] reports it).
    pub fn inode(&self) -> Result<u64> {
        Ok(std::fs::metadata(self.path())
            .with_context(|| format!("stat {}", self.path().display()))?
            .ino())
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

    /// The ifindex of `ifname` in the namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let name = ifname.to_string();
        self.run(move || nix::net::if_::if_nametoindex(name.as_str()))?
            .with_context(|| format!("no interface {ifname} in {}", self.name))
    }

    /// Moves the calling thread into this namespace until the returned guard drops.
    ///
    /// The guard is `!Send`: a namespace belongs to a thread, and the guard must restore the
    /// thread it changed. Whatever the thread creates meanwhile (sockets, child processes,
    /// devices it looks up by index, BPF_PROG_TEST_RUN's ingress interface) is in this
    /// namespace.
    pub fn enter(&self) -> Result<Inside<'_>> {
        let home = File::open("/proc/thread-self/ns/net").context("opening the thread's netns")?;
        setns(self.open()?, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {}", self.name))?;
        Ok(Inside {
            ns: self,
            home,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life, so they can be
    /// returned and used from any thread afterwards. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            let worker = s.spawn(move || -> Result<T> {
                let _inside = self.enter()?;
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

/// The calling thread inside a [`NetNs`] (from [`NetNs::enter`]); dropping it moves the thread
/// back to the namespace it came from.
///
/// If that fails the thread is in the wrong namespace for good: Drop panics, unless the thread
/// is already panicking (then it only reports it: a panic while unwinding would abort).
#[derive(Debug)]
pub struct Inside<'a> {
    ns: &'a NetNs,
    home: File,
    _not_send: PhantomData<*const ()>,
}

impl Inside<'_> {
    /// The namespace the thread is in.
    pub fn ns(&self) -> &NetNs {
        self.ns
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home, CloneFlags::CLONE_NEWNET) {
            let msg = format!("leaving network namespace {}: setns: {e}", self.ns.name);
            if std::thread::panicking() {
                eprintln!("error: {msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// The inode of the network namespace of the calling thread (its identity).
pub fn current_netns() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat /proc/thread-self/ns/net")?
        .ino())
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
pub fn stale_owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let pid: u32 = rest.split('-').next()?.parse().ok()?;
    if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
        return None;
    }
    Some(pid)
}
