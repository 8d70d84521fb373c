//! Commands and child processes of a test: run to completion with the error carrying stderr,
//! and bounded waits for processes that must stop.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// Polls `child` until it exits or `timeout` passes; on timeout kills and reaps it and
/// returns `None`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("polling child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `child`: SIGTERM, up to `timeout` for it to exit, then SIGKILL; reaps it either way.
/// `name` is for the messages.
pub fn terminate(child: &mut Child, name: &str, timeout: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait().context("polling child")? {
        return Ok(status);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    kill(pid, Signal::SIGTERM).with_context(|| format!("sending SIGTERM to {name}"))?;
    if let Some(status) = wait_bounded(child, timeout)? {
        return Ok(status);
    }
    eprintln!("warning: {name} ignored SIGTERM for {timeout:?}; killed it");
    child.wait().with_context(|| format!("reaping {name}"))
}
