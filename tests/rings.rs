//! The Reconciler's Maglev rings in a loaded program: after every change the ring the kernel
//! holds (read slot by slot through the outer map) is the Maglev table of the VIP's members;
//! changes that only give slots to backends are written in place, changes in which a backend
//! leaves the ring swap a new ring in.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::Dataplane;
use xdplb::maglev::{self, MaglevBackend};
use xdplb::reconcile::Reconciler;
use xdplb_model::state::{Mode, Protocol, State, VipKey};

// RING_SIZE: a prime ring size smaller than the default, so that the checks read fewer slots.
use common::lab::{Lb, RING_SIZE};

fn backend(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, i), 8080)
}

/// The table the kernel's ring of `vip` must hold: Maglev over the backends with a weight.
fn expected(rec: &Reconciler, state: &State, vip: &VipKey) -> Result<Option<Vec<u32>>> {
    let mut members = Vec::new();
    for (addr, weight) in &state.vip(vip)?.backends {
        if *weight > 0 {
            members.push(MaglevBackend {
                id: rec.backend_id(vip, addr).context("backend without an id")?,
                key: addr.to_string().into_bytes(),
                weight: *weight,
            });
        }
    }
    if members.is_empty() {
        return Ok(None);
    }
    Ok(Some(maglev::build_table(&members, RING_SIZE)?))
}

/// Reconciles `state` and checks the kernel's ring and how it was written: the reconciler's
/// running counts of rings updated in place and swapped.
fn apply(
    rec: &mut Reconciler,
    state: &State,
    vip: &VipKey,
    (in_place, swapped): (u64, u64),
    what: &str,
) -> Result<()> {
    rec.reconcile(state).with_context(|| what.to_string())?;
    let id = rec.vip_id(vip).context("vip without an id")?;
    let ring = rec.dataplane().maps().read_ring(id)?;
    let exp = expected(rec, state, vip)?;
    ensure!(
        ring == exp,
        "{what}: the kernel's ring differs from the Maglev table ({} of {} slots)",
        match (&ring, &exp) {
            (Some(r), Some(e)) => r.iter().zip(e).filter(|(a, b)| a != b).count(),
            _ => RING_SIZE as usize,
        },
        RING_SIZE
    );
    let got = rec.ring_updates();
    ensure!(
        (got.in_place, got.swapped) == (in_place, swapped),
        "{what}: ring updates {got:?}, expected in place {in_place} and swapped {swapped}"
    );
    Ok(())
}

#[test]
fn rings_follow_backend_changes_in_place_and_by_swap() -> Result<()> {
    let dp = Dataplane::load(&Lb::options()).context("loading the XDP program (needs root)")?;
    let mut rec = Reconciler::new(dp, RING_SIZE);
    let mut state = State::default();
    let vip = VipKey {
        addr: "10.9.0.1:80".parse()?,
        proto: Protocol::Tcp,
    };
    state.add_vip(vip, Mode::Nat)?;
    apply(&mut rec, &state, &vip, (0, 0), "a VIP without backends")?;

    // The first ring is swapped in; every further backend only takes slots: in place.
    state.add_backend(&vip, backend(1), 100)?;
    apply(&mut rec, &state, &vip, (0, 1), "first backend")?;
    for i in 2..=20 {
        state.add_backend(&vip, backend(i), 100)?;
        let what = format!("backend {i} added");
        apply(&mut rec, &state, &vip, (u64::from(i) - 1, 1), &what)?;
    }
    let written = rec.ring_updates().slots_written;
    // Each addition moves about RING_SIZE / n slots, far fewer than the ring.
    ensure!(
        written > 0 && written < 19 * u64::from(RING_SIZE) / 2,
        "{written} slots written for 19 additions"
    );

    // A new weight moves slots between members: in place.
    state.set_weight(&vip, backend(3), 300)?;
    apply(&mut rec, &state, &vip, (20, 1), "weight raised")?;
    state.set_weight(&vip, backend(3), 50)?;
    apply(&mut rec, &state, &vip, (21, 1), "weight lowered")?;

    // A backend leaving the ring (drained, removed) swaps: when reconcile returns, no packet
    // can still pick it.
    state.drain(&vip, backend(4))?;
    apply(&mut rec, &state, &vip, (21, 2), "backend drained")?;
    state.undrain(&vip, backend(4))?;
    apply(&mut rec, &state, &vip, (22, 2), "backend undrained")?;
    state.remove_backend(&vip, backend(5))?;
    apply(&mut rec, &state, &vip, (22, 3), "backend removed")?;
    // Removed and added in one change: swapped.
    state.remove_backend(&vip, backend(6))?;
    state.add_backend(&vip, backend(60), 100)?;
    apply(&mut rec, &state, &vip, (22, 4), "one out, one in")?;

    // No members: no ring; the next member brings a new ring (swapped), then in place again.
    let all: Vec<SocketAddrV4> = state.vip(&vip)?.backends.keys().copied().collect();
    for addr in all {
        state.remove_backend(&vip, addr)?;
    }
    apply(&mut rec, &state, &vip, (22, 4), "every backend removed")?;
    state.add_backend(&vip, backend(7), 100)?;
    apply(&mut rec, &state, &vip, (22, 5), "a backend again")?;
    state.add_backend(&vip, backend(8), 100)?;
    apply(&mut rec, &state, &vip, (23, 5), "and another")?;

    // A VIP removed and added again (its id may come back): a fresh ring, swapped.
    state.remove_vip(&vip)?;
    rec.reconcile(&state)?;
    state.add_vip(vip, Mode::Nat)?;
    state.add_backend(&vip, backend(9), 100)?;
    apply(&mut rec, &state, &vip, (23, 6), "VIP added again")?;
    state.add_backend(&vip, backend(10), 100)?;
    apply(&mut rec, &state, &vip, (24, 6), "its second backend")?;
    Ok(())
}
