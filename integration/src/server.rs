//! The servers' plumbing inside namespaces: [`Stoppable`], a thread that runs until its guard is
//! dropped, and [`tcp_server`], a TCP listener whose accept loop hands each connection to a
//! thread of its own (the name servers of `peers`, the line server of `dsr`, the echo server of
//! `transfer`).

use std::io::ErrorKind;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use xdplb_testkit::NetNs;

/// How often a server loop checks whether it should stop.
pub const STOP_POLL: Duration = Duration::from_millis(50);

/// A thread that runs until told to stop: dropping the guard raises the flag the thread polls
/// and joins it (a panic there is reported, not passed on).
pub struct Stoppable {
    name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stoppable {
    /// Spawns `run` on a thread named `name`; it must return soon after its flag is raised.
    pub fn spawn(
        name: &str,
        run: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> Result<Stoppable> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || run(stop))
                .with_context(|| format!("spawning the thread {name}"))?
        };
        Ok(Stoppable {
            name: name.to_string(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("warning: {} panicked", self.name);
            }
        }
    }
}

/// Listens on TCP `addr` inside `ns`; every accepted connection is served by `serve` (stream,
/// peer, the stop flag) on a thread of its own. Dropping the guard stops accepting and joins the
/// connection threads too, so `serve` must watch the flag or end by its sockets' timeouts.
pub fn tcp_server<F>(ns: &NetNs, addr: SocketAddrV4, name: &str, serve: F) -> Result<Stoppable>
where
    F: Fn(TcpStream, SocketAddr, &AtomicBool) -> Result<()> + Send + Sync + 'static,
{
    let listener = ns
        .run(|| TcpListener::bind(addr))?
        .with_context(|| format!("binding TCP {addr} in {} ({name})", ns.name()))?;
    listener.set_nonblocking(true)?;
    let owned = name.to_string();
    Stoppable::spawn(name, move |stop| {
        accept_loop(&listener, &owned, &stop, Arc::new(serve))
    })
}

fn accept_loop<F>(listener: &TcpListener, name: &str, stop: &Arc<AtomicBool>, serve: Arc<F>)
where
    F: Fn(TcpStream, SocketAddr, &AtomicBool) -> Result<()> + Send + Sync + 'static,
{
    let poll_ms = u16::try_from(STOP_POLL.as_millis()).unwrap_or(u16::MAX);
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(poll_ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("{name}: poll: {e}");
                std::thread::sleep(STOP_POLL);
                continue;
            }
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let (stop, serve, conn_name) = (stop.clone(), serve.clone(), name.to_string());
                let spawned = std::thread::Builder::new()
                    .name(format!("{name}-conn"))
                    .spawn(move || {
                        if let Err(e) = serve(stream, peer, &stop) {
                            eprintln!("{conn_name}: connection from {peer}: {e:#}");
                        }
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(e) => eprintln!("{name}: spawning a connection thread: {e}"),
                }
                conns.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                eprintln!("{name}: accept: {e}");
                std::thread::sleep(STOP_POLL);
            }
        }
    }
    for t in conns {
        let _ = t.join();
    }
}
