//! `TestNetns`: runs a test body on a dedicated thread inside a fresh, private network namespace.
//!
//! The thread unshares `CLONE_NEWNET`, so only that thread (and the `ip`/`sysctl` processes it
//! starts, which inherit its namespace) ever sees the namespace: the test process's other threads,
//! and the host, are never switched. Nothing is mounted or named, so there is nothing to clean up:
//! the kernel frees the namespace, with every device in it, when its last user (the thread) exits.
//! [`TestNetns::run`] checks afterwards that no thread or fd of the process still refers to it.

use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sched::{unshare, CloneFlags};

/// The inode of the network namespace of the calling thread (its identity).
pub fn current_netns() -> Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")
        .context("stat /proc/thread-self/ns/net")?
        .ino())
}

/// Threads and fds of this process that refer to the network namespace `inode`.
fn users_of(inode: u64) -> Vec<String> {
    let mut users = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let ns = task.path().join("ns/net");
            if std::fs::metadata(&ns)
                .map(|m| m.ino() == inode)
                .unwrap_or(false)
            {
                users.push(ns.display().to_string());
            }
        }
    }
    let wanted = format!("net:[{inode}]");
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .map(|l| l.to_string_lossy() == wanted)
                .unwrap_or(false)
            {
                users.push(fd.path().display().to_string());
            }
        }
    }
    users
}

/// A private network namespace, alive for the duration of one [`TestNetns::run`] body.
///
/// Only handed out by reference on the thread that owns the namespace, and not `Send`: its
/// helpers must run on that thread.
#[derive(Debug)]
pub struct TestNetns {
    inode: u64,
    _not_send: PhantomData<*const ()>,
}

impl TestNetns {
    /// Runs `body` on a new thread inside a new network namespace (with `lo` up) and returns its
    /// result. A panic in `body` is re-raised on the calling thread (after the checks below).
    ///
    /// Checks that the calling thread's namespace did not change and that, once the thread has
    /// exited, nothing in this process refers to the test namespace any more (the kernel then
    /// destroys it and its devices).
    pub fn run<T, F>(body: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&TestNetns) -> Result<T> + Send + 'static,
    {
        let host = current_netns()?;
        let seen = Arc::new(AtomicU64::new(0));
        let seen_in_thread = Arc::clone(&seen);
        let handle = std::thread::Builder::new()
            .name("dataplane-netns".into())
            .spawn(move || -> Result<T> {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) (needs root)")?;
                let ns = TestNetns {
                    inode: current_netns()?,
                    _not_send: PhantomData,
                };
                seen_in_thread.store(ns.inode, Ordering::SeqCst);
                ensure!(
                    ns.inode != host,
                    "unshare did not give the thread a new network namespace"
                );
                ns.ip(&["link", "set", "lo", "up"])?;
                body(&ns)
            })
            .context("spawning the namespace thread")?;
        let joined = handle.join();

        ensure!(
            current_netns()? == host,
            "the calling thread's network namespace changed"
        );
        let inode = seen.load(Ordering::SeqCst);
        if inode != 0 {
            // The thread's exit drops its namespace reference just after pthread_join returns.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let users = users_of(inode);
                if users.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("test network namespace net:[{inode}] is still referenced by {users:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The namespace's inode number.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    fn on_own_thread(&self) -> Result<()> {
        ensure!(
            current_netns()? == self.inode,
            "TestNetns used outside of its namespace thread"
        );
        Ok(())
    }

    /// Runs a command (inheriting this thread's namespace) and returns its stdout.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Result<String> {
        self.on_own_thread()?;
        let out = Command::new(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip args...` in the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.cmd("ip", args)
    }

    /// Sets a sysctl of the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.cmd("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// The ifindex of `name` in the namespace.
    pub fn ifindex(&self, name: &str) -> Result<u32> {
        self.on_own_thread()?;
        nix::net::if_::if_nametoindex(name)
            .with_context(|| format!("no interface {name} in the test namespace"))
    }
}
