//! Restarts without losing flows, in each forwarding mode: a TCP transfer keeps going, without a
//! reset or a lost byte, across an lbd restart (SIGTERM, start) and a `kill -9` and start, also
//! while no lbd runs at all (the program stays attached through its pinned link, the flow table
//! stays pinned, the new lbd takes both over); `vip list`, `backend list`, `fw list` and
//! `ratelimit list` show byte for byte what they showed before. A truncated or corrupted state
//! file makes lbd refuse to start, with a clear error, while the data plane keeps forwarding.
//! Program upgrades (another build) are in `upgrade.rs`.
//! Run as root: `cargo test -p xdplb-integration --test restart -- --test-threads=1`.

use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use xdplb_integration::transfer::{nat_handover, Transfer, TransferLab, CHUNK};
use xdplb_integration::{Lbd, StartOptions, VIP};

/// How long each transfer runs: long enough for two restarts and the gaps between them.
const TRANSFER: Duration = Duration::from_secs(9);
/// Progress the transfer must make in each phase (20 chunks: a few hundred ms of traffic).
const PROGRESS: usize = 20 * CHUNK;
/// Bound on making that progress.
const PROGRESS_LIMIT: Duration = Duration::from_secs(3);

/// The transfer VIP (TCP, port 80).
fn vip80() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// Everything an operator can set, through lbctl: the transfer VIP in `mode` with a TCP health
/// check and its backend at weight 7; a second VIP (UDP, NAT) with one backend and one drained;
/// two firewall rules and two rate-limit overrides for prefixes the test traffic never uses.
fn configure(lbd: &Lbd, lab: &TransferLab) {
    let (vip, mode, backend) = (vip80(), lab.mode(), lab.backend());
    let udp_vip = "10.200.100.1:53";
    // One lbctl command a line, as an operator types it (no argument has a space).
    let commands = format!(
        "vip add {vip} --proto tcp --mode {mode} --health tcp --health-interval 300ms --health-timeout 200ms
backend add --vip {vip} --proto tcp {backend} --weight 7
vip add {udp_vip} --proto udp
backend add --vip {udp_vip} --proto udp 10.200.99.1:5353 --weight 3
backend add --vip {udp_vip} --proto udp 10.200.99.2:5353
backend drain --vip {udp_vip} --proto udp 10.200.99.2:5353
block add 192.0.2.0/24
allow add 192.0.2.128/25
ratelimit set --rate 500 --burst 50 --cidr 198.51.100.0/24
ratelimit set --rate 20 --burst 5 --scope new-flows --cidr 203.0.113.7"
    );
    for line in commands.lines() {
        let args: Vec<&str> = line.split_whitespace().collect();
        lbd.ctl(&args)
            .unwrap_or_else(|e| panic!("lbctl {line}: {e:#}"));
    }
}

/// What the operator sees: the four listings, as printed, one after the other.
fn listings(lbd: &Lbd) -> String {
    let mut out = String::new();
    for line in [
        "vip list",
        "backend list --vip 10.200.100.1:80 --proto tcp",
        "backend list --vip 10.200.100.1:53 --proto udp",
        "fw list",
        "ratelimit list",
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let text = lbd
            .ctl(&args)
            .unwrap_or_else(|e| panic!("lbctl {}: {e:#}", args.join(" ")));
        out.push_str(&format!("$ lbctl {}\n{text}", args.join(" ")));
    }
    out
}

/// The test of one mode: configure, start a transfer, SIGTERM + start, kill -9 + start; the
/// transfer progresses while no lbd runs and after each start, ends without an error, and the
/// listings never change.
fn transfer_across_restarts(mode: &'static str) {
    let lab = TransferLab::build(mode).expect("topology");
    let (lb, config) = (lab.lb(), lab.config());
    let state = tempfile::tempdir().expect("state dir");
    let mut first =
        Lbd::start_with(lb, config, &StartOptions::keep(state.path())).expect("first lbd");
    configure(&first, &lab);
    let transfer = Transfer::start(lab.client(), vip80(), TRANSFER).expect("transfer starts");
    // Taken with the transfer running: its one tracked flow is part of the picture.
    let before = listings(&first);
    eprintln!("{before}");
    assert!(
        before.contains("0 (drained from 100)") && before.contains("192.0.2.128/25"),
        "{before}"
    );

    // Restart 1: SIGTERM; traffic flows with no lbd at all; a new lbd adopts everything.
    transfer
        .wait_progress(PROGRESS, PROGRESS_LIMIT)
        .expect("transfer before the restart");
    first.stop().expect("first lbd stops cleanly");
    transfer
        .wait_progress(PROGRESS, PROGRESS_LIMIT)
        .expect("transfer with no lbd running");
    let mut second =
        Lbd::start_with(lb, config, &StartOptions::keep(state.path())).expect("second lbd");
    assert_eq!(listings(&second), before, "after SIGTERM and a restart");
    transfer
        .wait_progress(PROGRESS, PROGRESS_LIMIT)
        .expect("transfer after the restart");

    // Restart 2: kill -9 (no clean-up code runs), then a new lbd that detaches at the end.
    second.kill9().expect("kill -9");
    transfer
        .wait_progress(PROGRESS, PROGRESS_LIMIT)
        .expect("transfer after kill -9");
    let third = Lbd::start_with(lb, config, &StartOptions::state(state.path())).expect("third lbd");
    assert_eq!(listings(&third), before, "after kill -9 and a restart");

    let moved = transfer.finish().expect("the transfer never broke");
    eprintln!("{mode}: {moved} bytes verified");
    assert!(
        moved >= 6 * PROGRESS,
        "only {moved} bytes moved in {TRANSFER:?}"
    );
    let log = third.log_text();
    for want in [
        "reusing the pinned maps",
        "took over the pinned XDP link",
        "restoring the saved state",
    ] {
        assert!(
            log.contains(want),
            "the third lbd's log lacks {want:?}:\n{log}"
        );
    }
    // New connections work too, with the third lbd's program.
    Transfer::start(lab.client(), vip80(), Duration::from_millis(300))
        .and_then(Transfer::finish)
        .expect("a new connection after the restarts");
    drop(third);
    drop(second);
    drop(first);
}

#[test]
fn nat_transfer_survives_restart_and_kill9() {
    transfer_across_restarts("nat");
}

/// The DSR modes: the flow table (not conntrack) carries the transfer over; the backend answers
/// the client directly.
#[test]
fn l2dsr_transfer_survives_restart_and_kill9() {
    transfer_across_restarts("l2dsr");
}

#[test]
fn ipip_transfer_survives_restart_and_kill9() {
    transfer_across_restarts("ipip");
}

/// A state file damaged on disk (`damage` gets its bytes, returns what to write back): the next
/// lbd refuses to start and says which file and why, while the program it would have replaced
/// keeps forwarding the open transfer and new connections.
fn damaged_state_file_refuses_to_start(damage: impl Fn(Vec<u8>) -> Vec<u8>) {
    let (lab, state, mut first, transfer) = nat_handover().expect("first lbd under a transfer");
    let (lb, config) = (lab.lb(), lab.config());
    first.stop().expect("first lbd stops");

    let file = state.path().join("state.json");
    let good = std::fs::read(&file).expect("state file written");
    std::fs::write(&file, damage(good.clone())).expect("damage the state file");
    let err = match Lbd::start_with(lb, config, &StartOptions::keep(state.path())) {
        Ok(_) => panic!("lbd started from a damaged state file"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("corrupt or truncated") && err.contains(&file.display().to_string()),
        "unclear error: {err}"
    );
    assert_eq!(
        std::fs::read(&file).expect("state file"),
        damage(good.clone()),
        "lbd changed the damaged file"
    );

    // The data plane did not notice.
    transfer
        .wait_progress(PROGRESS, PROGRESS_LIMIT)
        .expect("transfer after the refused start");
    let moved = transfer.finish().expect("the transfer never broke");
    assert!(moved >= 2 * PROGRESS, "{moved}");
    lab.client()
        .run(|| TcpStream::connect_timeout(&vip80().into(), Duration::from_secs(2)))
        .expect("into the client netns")
        .expect("a new connection while no lbd runs");

    // Put back, a new lbd adopts (and detaches at the end).
    std::fs::write(&file, &good).expect("restore the state file");
    let last = Lbd::start_with(lb, config, &StartOptions::state(state.path()))
        .expect("lbd starts from the restored file");
    assert!(last
        .ctl(&["vip", "list"])
        .expect("vip list")
        .contains("10.200.100.1:80"));
    drop(last);
    drop(first);
}

#[test]
fn truncated_state_file_refuses_to_start() {
    damaged_state_file_refuses_to_start(|mut bytes| {
        bytes.truncate(bytes.len() / 2);
        bytes
    });
}

#[test]
fn corrupted_state_file_refuses_to_start() {
    damaged_state_file_refuses_to_start(|mut bytes| {
        let mid = bytes.len() / 2;
        bytes[mid..mid + 8].copy_from_slice(&[0xff; 8]);
        bytes
    });
}
