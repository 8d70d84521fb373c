//! Program upgrades, in each forwarding mode: an lbd of another build (`XDPLB_BPF_VARIANT`, see
//! `xdplb_integration::upgrade`) replaces the running program through `bpf_link` update — the
//! same link, a program with another tag, the very same pinned maps (by kernel map id) — while a
//! TCP transfer keeps going without a reset or a lost byte; going back to the first build with
//! `kill -9` and start works the same way. A pinned map whose layout changed (here: a new
//! conntrack size) makes the new lbd refuse to start, naming the map, while the running program
//! keeps forwarding.
//! Run as root: `cargo test -p xdplb-integration --test upgrade -- --test-threads=1`. The first
//! run builds the variant lbd into `target/upgrade-variant` (minutes); later runs reuse it.

use std::net::SocketAddrV4;
use std::time::Duration;

use xdplb_integration::transfer::{nat_handover, Transfer, TransferLab, CHUNK};
use xdplb_integration::upgrade::{link_program, previous_lbd, variant_lbd, LinkProgram};
use xdplb_integration::{Lbd, Proto, StartOptions, VIP};

const TRANSFER: Duration = Duration::from_secs(8);
const PROGRESS: usize = 20 * CHUNK;
const PROGRESS_LIMIT: Duration = Duration::from_secs(3);

fn vip80() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// The programs the lab's links run, one per interface.
fn programs(lab: &TransferLab) -> Vec<LinkProgram> {
    lab.link_pins()
        .iter()
        .map(|p| link_program(p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display())))
        .collect()
}

/// `after` is the same links as `before`, running another program that uses the same maps.
fn assert_replaced(before: &[LinkProgram], after: &[LinkProgram], what: &str) {
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(after) {
        assert_eq!(
            a.link_id, b.link_id,
            "{what}: the link was replaced, not updated"
        );
        assert_ne!(a.prog_id, b.prog_id, "{what}: the program was not replaced");
        let (mb, ma) = (b.shared_maps(), a.shared_maps());
        assert!(mb.contains_key("nat_fwd_v2"), "{mb:?}");
        assert_eq!(
            ma, mb,
            "{what}: the new program does not use the pinned maps"
        );
    }
}

/// The transfer moves [`PROGRESS`] more verified bytes within [`PROGRESS_LIMIT`] (`when`: before
/// or after what).
fn keeps_moving(transfer: &Transfer, when: &str) {
    if let Err(e) = transfer.wait_progress(PROGRESS, PROGRESS_LIMIT) {
        panic!("transfer {when}: {e:?}");
    }
}

/// `lbd` with the VIP on port 80 in `mode` and the lab's backend.
fn serving(lab: &TransferLab, lbd: Lbd, mode: &str) -> Lbd {
    lbd.add_vip_with(vip80(), Proto::Tcp, &["--mode", mode])
        .expect("vip add");
    lbd.add_backend(vip80(), Proto::Tcp, lab.backend())
        .expect("backend add");
    lbd
}

fn upgrade_under_transfer(mode: &'static str) {
    let variant = variant_lbd().expect("the variant lbd builds");
    let lab = TransferLab::build(mode).expect("topology");
    let (lb, config) = (lab.lb(), lab.config());
    let state = tempfile::tempdir().expect("state dir");

    let mut first = serving(
        &lab,
        Lbd::start_with(lb, config, &StartOptions::keep(state.path())).expect("first lbd"),
        mode,
    );
    let original = programs(&lab);
    let transfer = Transfer::start(lab.client(), vip80(), TRANSFER).expect("transfer starts");
    keeps_moving(&transfer, "before the upgrade");

    // Upgrade: SIGTERM, then the variant build.
    first.stop().expect("first lbd stops");
    let mut second = Lbd::start_binary(lb, config, &StartOptions::keep(state.path()), &variant)
        .expect("the variant lbd starts");
    let upgraded = programs(&lab);
    eprintln!("{mode}: {original:?}\n -> {upgraded:?}");
    assert_replaced(&original, &upgraded, "upgrade");
    for (o, u) in original.iter().zip(&upgraded) {
        assert_ne!(
            u.tag, o.tag,
            "the variant build's program is the same program"
        );
    }
    let log = second.log_text();
    for want in ["reusing the pinned maps", "took over the pinned XDP link"] {
        assert!(
            log.contains(want),
            "the variant lbd's log lacks {want:?}:\n{log}"
        );
    }
    assert!(
        second
            .ctl(&["vip", "list"])
            .expect("vip list")
            .contains(mode),
        "the state came back"
    );
    keeps_moving(&transfer, "after the upgrade");

    // Back to the first build, after kill -9.
    second.kill9().expect("kill -9");
    let third = Lbd::start_with(lb, config, &StartOptions::state(state.path()))
        .expect("the first build starts again");
    let back = programs(&lab);
    assert_replaced(&upgraded, &back, "downgrade");
    for (o, b) in original.iter().zip(&back) {
        assert_eq!(b.tag, o.tag, "the first build's program is back");
        assert_eq!(
            b.shared_maps(),
            o.shared_maps(),
            "still the first lbd's maps"
        );
    }
    let moved = transfer.finish().expect("the transfer never broke");
    eprintln!("{mode}: {moved} bytes verified across the upgrade and back");
    assert!(moved >= 4 * PROGRESS, "only {moved} bytes in {TRANSFER:?}");
    assert_eq!(lab.server().accepted(), 1);
    drop(third);
    drop(first);
}

/// From the previous release (v1 flow tables, `make previous-release`) to this build: the new
/// lbd copies the v1 flows into the v2 tables, swaps the program in, and the transfer (an
/// established flow) never notices; the v1 tables are retired.
fn upgrade_from_v1_tables(mode: &'static str) {
    let previous = previous_lbd().expect("the previous release's lbd builds");
    let lab = TransferLab::build(mode).expect("topology");
    let (lb, config) = (lab.lb(), lab.config());
    let state = tempfile::tempdir().expect("state dir");
    let mut first = serving(
        &lab,
        Lbd::start_binary(lb, config, &StartOptions::keep(state.path()), &previous)
            .expect("the previous release's lbd starts"),
        mode,
    );
    let original = programs(&lab);
    assert!(
        original
            .iter()
            .all(|p| p.shared_maps().contains_key("ct_fwd")),
        "the previous release does not use the v1 tables: {original:?}"
    );
    let transfer = Transfer::start(lab.client(), vip80(), TRANSFER).expect("transfer starts");
    keeps_moving(&transfer, "before the upgrade");

    first.stop().expect("the previous lbd stops");
    // The last lbd of the test: it detaches and removes its pins when it stops.
    let second = Lbd::start_with(lb, config, &StartOptions::state(state.path()))
        .expect("this build's lbd starts");
    let upgraded = programs(&lab);
    eprintln!("{mode}: {original:?}\n -> {upgraded:?}");
    for (o, u) in original.iter().zip(&upgraded) {
        assert_eq!(u.link_id, o.link_id, "the link was replaced, not updated");
        let maps = u.shared_maps();
        assert!(
            maps.contains_key("nat_fwd_v2") && !maps.contains_key("ct_fwd"),
            "the new program's maps: {maps:?}"
        );
    }
    keeps_moving(&transfer, "after the upgrade");
    let moved = transfer.finish().expect("the transfer never broke");
    eprintln!("{mode}: {moved} bytes verified across the upgrade from the v1 tables");
    let log = second.log_text();
    for want in [
        "copied the flows of the previous release's flow tables",
        "v1 pins removed",
        "took over the pinned XDP link",
    ] {
        assert!(
            log.contains(want),
            "the new lbd's log lacks {want:?}:\n{log}"
        );
    }

    assert!(moved >= 3 * PROGRESS, "only {moved} bytes in {TRANSFER:?}");
    assert_eq!(lab.server().accepted(), 1, "the client had to reconnect");
    drop(second);
    drop(first);
}

#[test]
fn nat_upgrade_from_the_v1_tables_keeps_a_transfer() {
    upgrade_from_v1_tables("nat");
}

#[test]
fn l2dsr_upgrade_from_the_v1_tables_keeps_a_transfer() {
    upgrade_from_v1_tables("l2dsr");
}

#[test]
fn ipip_upgrade_from_the_v1_tables_keeps_a_transfer() {
    upgrade_from_v1_tables("ipip");
}

#[test]
fn nat_upgrade_keeps_a_transfer() {
    upgrade_under_transfer("nat");
}

#[test]
fn l2dsr_upgrade_keeps_a_transfer() {
    upgrade_under_transfer("l2dsr");
}

#[test]
fn ipip_upgrade_keeps_a_transfer() {
    upgrade_under_transfer("ipip");
}

/// A new lbd whose flow tables have another size cannot reuse the pinned ones without
/// losing the flows in them: it refuses to start and says which map, how it differs and what to
/// do; the running program and its flows are untouched, and the old configuration adopts them.
#[test]
fn changed_map_layout_is_refused() {
    let (lab, state, mut first, transfer) = nat_handover().expect("first lbd under a transfer");
    let (lb, config) = (lab.lb(), lab.config());
    let original = programs(&lab);
    first.stop().expect("first lbd stops");

    assert!(!config.contains("conntrack_size"), "{config}");
    let resized = format!("{config}\n[tables]\nconntrack_size = 131072\n");
    let err = match Lbd::start_with(lb, &resized, &StartOptions::keep(state.path())) {
        Ok(_) => panic!("lbd reused pinned conntrack tables of another size"),
        Err(e) => format!("{e:#}"),
    };
    for want in [
        "pinned map nat_",
        "does not fit this build",
        "131072",
        "--detach-on-exit",
    ] {
        assert!(err.contains(want), "the refusal lacks {want:?}: {err}");
    }
    assert_eq!(
        programs(&lab),
        original,
        "the refused lbd changed the links"
    );
    keeps_moving(&transfer, "after the refusal");
    transfer.finish().expect("the transfer never broke");

    let last = Lbd::start_with(lb, config, &StartOptions::state(state.path()))
        .expect("the old configuration adopts the maps");
    assert!(last.log_text().contains("reusing the pinned maps"));
    drop(last);
    drop(first);
}
