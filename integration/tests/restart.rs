//! Restarts without losing flows: a TCP transfer keeps going, without a reset or a lost byte,
//! across an lbd restart (SIGTERM, start), a `kill -9` and start (the new lbd replaces the
//! program through the pinned link: the upgrade path), and the state comes back as it was.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xdplb_integration::{Lbd, NetNs, StartOptions, Topology, VIP};

const CHUNK: usize = 1024;
const PORT: u16 = 8080;

/// An echo server on the backend: everything read is written back.
fn echo_server(
    ns: &NetNs,
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let listener = ns
        .run(move || TcpListener::bind(addr))
        .expect("into the backend netns")
        .expect("bind echo server");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).ok();
                        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                        let mut buf = [0u8; 4096];
                        while !stop.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// Sends numbered 1 KiB chunks for `duration` and checks each comes back intact.
/// Returns the bytes verified, or the first error.
fn transfer(stream: &mut TcpStream, duration: Duration) -> Result<usize, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut total = 0;
    let mut seq: u32 = 0;
    while start.elapsed() < duration {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (seq as usize * 7 + i) as u8).collect();
        stream
            .write_all(&chunk)
            .map_err(|e| format!("write of chunk {seq}: {e}"))?;
        let mut back = vec![0u8; CHUNK];
        stream
            .read_exact(&mut back)
            .map_err(|e| format!("read of chunk {seq}: {e}"))?;
        if back != chunk {
            return Err(format!("chunk {seq} came back altered"));
        }
        total += CHUNK;
        seq += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(total)
}

/// `backend list` without its last column, FLOWS: live, not state (the transfer is one flow).
fn without_flows(list: &str) -> String {
    list.lines()
        .map(|l| {
            l.trim_end()
                .rsplit_once(' ')
                .map_or(l, |(rest, _)| rest)
                .trim_end()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn tcp_transfer_survives_restart_and_kill9() {
    let topo = Topology::two_arm(1).expect("topology");
    let backend = SocketAddrV4::new(topo.backend(1).addr, PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&topo.backend(1).ns, backend, stop.clone());
    let state = tempfile::tempdir().expect("state dir");
    let keep = StartOptions {
        state_dir: Some(state.path().to_owned()),
        keep_pins: true,
    };
    let config = topo.lbd_config();

    let mut first = Lbd::start_with(topo.lb(), &config, &keep).expect("first lbd");
    first
        .ctl(&["vip", "add", "10.200.100.1:80", "--proto", "tcp"])
        .expect("vip add");
    first
        .ctl(&[
            "backend",
            "add",
            "--vip",
            "10.200.100.1:80",
            "--proto",
            "tcp",
            &backend.to_string(),
            "--weight",
            "7",
        ])
        .expect("backend add");
    let before_vips = first.ctl(&["vip", "list"]).expect("vip list");
    let before_backends = without_flows(
        &first
            .ctl(&[
                "backend",
                "list",
                "--vip",
                "10.200.100.1:80",
                "--proto",
                "tcp",
            ])
            .expect("backend list"),
    );

    let vip = SocketAddrV4::new(VIP, 80);
    let client = topo
        .client()
        .spawn("transfer", move || -> Result<usize, String> {
            let mut s = TcpStream::connect_timeout(&vip.into(), Duration::from_secs(2))
                .map_err(|e| format!("connect: {e}"))?;
            transfer(&mut s, Duration::from_secs(7))
        })
        .expect("client thread");

    // Restart 1: SIGTERM, then a new lbd that adopts the pinned maps and link.
    std::thread::sleep(Duration::from_millis(1500));
    first.stop().expect("first lbd stops cleanly");
    let mut second = Lbd::start_with(topo.lb(), &config, &keep).expect("second lbd");
    assert_eq!(
        second.ctl(&["vip", "list"]).expect("vip list"),
        before_vips,
        "VIPs after a restart"
    );
    assert_eq!(
        without_flows(
            &second
                .ctl(&[
                    "backend",
                    "list",
                    "--vip",
                    "10.200.100.1:80",
                    "--proto",
                    "tcp"
                ])
                .expect("backend list")
        ),
        before_backends,
        "backends after a restart"
    );

    // Restart 2: kill -9, then a new lbd (which detaches and cleans up when the test ends).
    std::thread::sleep(Duration::from_millis(1500));
    second.kill9().expect("kill -9");
    let third = Lbd::start_with(
        topo.lb(),
        &config,
        &StartOptions {
            state_dir: Some(state.path().to_owned()),
            keep_pins: false,
        },
    )
    .expect("third lbd");
    assert_eq!(
        third.ctl(&["vip", "list"]).expect("vip list"),
        before_vips,
        "VIPs after kill -9"
    );

    let moved = client
        .join()
        .expect("client thread")
        .expect("the transfer never broke");
    assert!(moved >= 100 * CHUNK, "only {moved} bytes moved in 7 s");
    let log = third.log_text();
    assert!(
        log.contains("reusing the pinned maps"),
        "the third lbd did not adopt the maps:\n{log}"
    );
    assert!(
        log.contains("took over the pinned XDP link"),
        "the third lbd did not take over the link:\n{log}"
    );

    stop.store(true, Ordering::Relaxed);
    drop(third);
    server.join().expect("echo server");
    drop(second);
    drop(first);
}

#[test]
fn corrupt_state_file_refuses_to_start() {
    let topo = Topology::two_arm(1).expect("topology");
    let state = tempfile::tempdir().expect("state dir");
    std::fs::write(
        state.path().join("state.json"),
        b"{\"version\": 1, \"state\": {\"vips\": [",
    )
    .expect("write");
    let opts = StartOptions {
        state_dir: Some(state.path().to_owned()),
        keep_pins: false,
    };
    let err = match Lbd::start_with(topo.lb(), &topo.lbd_config(), &opts) {
        Ok(_) => panic!("lbd started from a corrupt state file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("corrupt or truncated"), "unclear error: {err}");
}
