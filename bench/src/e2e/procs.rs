//! Processes the bench runs inside its namespaces (nginx, HAProxy, wrk): started with
//! `nsenter --net=`, their output in a file, and a guard that stops them (SIGTERM, then
//! SIGKILL) when it drops, also on error or panic. A network namespace does not end its
//! processes when it is removed, so every daemon must be stopped by its guard.

use std::fs::File;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xdplb_testkit::cmd::{terminate, wait_bounded};
use xdplb_testkit::NetNs;

/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A process running inside a namespace; stopped on drop.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `argv` inside `ns` (`nsenter --net=<ns> argv...`), stdout and stderr to `log`.
    pub fn spawn(ns: &NetNs, name: &str, argv: &[&str], log: &Path) -> Result<Daemon> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file")?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name} ({}) in {}", argv.join(" "), ns.name()))?;
        Ok(Daemon {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// What the process printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<{e}>"))
    }

    /// Waits until a TCP connection to `addr` from inside `ns` succeeds (the daemon listens),
    /// failing early if the process exits. Bounded by `timeout`.
    pub fn wait_listening(
        &mut self,
        ns: &NetNs,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling the daemon")? {
                    bail!(
                        "{} exited early ({status}); its output:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
            let up =
                ns.run(|| TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)))?;
            if up.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {timeout:?}; its output:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself within `timeout`; kills it otherwise (an error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the process was already reaped")?;
        match wait_bounded(&mut child, timeout)? {
            Some(status) => Ok(status),
            None => bail!("{} did not finish within {timeout:?}; killed it", self.name),
        }
    }

    /// Stops the process (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&mut child, &self.name, STOP_TIMEOUT)?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e:#}", self.name);
        }
    }
}
