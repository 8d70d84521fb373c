//! The live view of backend health that the reconciler consults when it builds Maglev tables
//! (which backends the checker marked down; never persisted), the checker's per-backend counters
//! that the metrics read, and how a VIP's ring members follow from them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

use xdplb_model::health::{AllDown, HealthCheck};
use xdplb_model::state::{State, VipKey};

/// A backend's health as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendHealth {
    /// Checked and not marked down (also: not probed yet).
    Up,
    /// Marked down by the checker: not in the Maglev table (unless every backend is down and the
    /// VIP fails open).
    Down,
    /// The VIP has no health check.
    Unchecked,
}

impl BackendHealth {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
            BackendHealth::Unchecked => "unchecked",
        }
    }
}

/// The live view the reconciler consults when it builds Maglev tables: which backends the checker
/// marked down. Never persisted: a restarted lbd counts every backend as up until probed.
#[derive(Debug, Default)]
pub(crate) struct HealthView {
    down: BTreeMap<VipKey, BTreeSet<SocketAddrV4>>,
    went_down: u64,
    came_up: u64,
    stats: HealthStats,
}

/// What the checker counted for one backend of a VIP since lbd started (or since the backend
/// was added or its VIP got a check): the metrics export these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HealthCounts {
    /// Transitions to down (the first verdict of a backend that never answered included).
    pub(crate) went_down: u64,
    /// Transitions from down back to up.
    pub(crate) came_up: u64,
    /// Probes that failed (refused, timed out, wrong status, no reply).
    pub(crate) probe_failures: u64,
}

/// The checker's per-backend counters, shared between the checker (which writes them without
/// the controller's lock) and the [`HealthView`] (through which the metrics read them).
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthStats(Arc<Mutex<BTreeMap<(VipKey, SocketAddrV4), HealthCounts>>>);

impl HealthStats {
    pub(crate) fn update(&self, key: (VipKey, SocketAddrV4), f: impl FnOnce(&mut HealthCounts)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(key).or_default());
    }

    /// The counters of one backend (zero if nothing was counted).
    pub(crate) fn get(&self, vip: &VipKey, addr: &SocketAddrV4) -> HealthCounts {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(*vip, *addr)).copied().unwrap_or_default()
    }

    fn retain(&self, desired: &State) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(vip, addr), _| {
            desired
                .vips
                .get(vip)
                .is_some_and(|v| v.health.is_checked() && v.backends.contains_key(addr))
        });
    }
}

impl HealthView {
    /// Marks a backend up or down; returns whether that changed anything.
    pub(crate) fn set(&mut self, vip: VipKey, addr: SocketAddrV4, up: bool) -> bool {
        let changed = if up {
            let removed = self.down.get_mut(&vip).is_some_and(|s| s.remove(&addr));
            if self.down.get(&vip).is_some_and(BTreeSet::is_empty) {
                self.down.remove(&vip);
            }
            removed
        } else {
            self.down.entry(vip).or_default().insert(addr)
        };
        if changed {
            if up {
                self.came_up += 1;
            } else {
                self.went_down += 1;
            }
        }
        changed
    }

    pub(crate) fn is_down(&self, vip: &VipKey, addr: &SocketAddrV4) -> bool {
        self.down.get(vip).is_some_and(|s| s.contains(addr))
    }

    /// Every backend marked down.
    pub(crate) fn down(&self) -> BTreeSet<(VipKey, SocketAddrV4)> {
        self.down
            .iter()
            .flat_map(|(vip, s)| s.iter().map(|a| (*vip, *a)))
            .collect()
    }

    /// Forgets marks (and counters) of VIPs and backends `desired` no longer has, or no longer
    /// checks.
    pub(crate) fn retain(&mut self, desired: &State) {
        self.stats.retain(desired);
        self.down.retain(|vip, set| match desired.vips.get(vip) {
            Some(v) if v.health.is_checked() => {
                set.retain(|a| v.backends.contains_key(a));
                !set.is_empty()
            }
            _ => false,
        });
    }

    /// How a backend of a VIP with health check `check` shows.
    pub(crate) fn status(
        &self,
        vip: &VipKey,
        check: &HealthCheck,
        addr: &SocketAddrV4,
    ) -> BackendHealth {
        if !check.is_checked() {
            BackendHealth::Unchecked
        } else if self.is_down(vip, addr) {
            BackendHealth::Down
        } else {
            BackendHealth::Up
        }
    }

    /// The checker's per-backend counters (a shared handle).
    pub(crate) fn stats(&self) -> HealthStats {
        self.stats.clone()
    }

    /// How many times a backend was marked down, and up again, since lbd started.
    #[cfg(test)]
    pub(crate) fn transitions(&self) -> (u64, u64) {
        (self.went_down, self.came_up)
    }
}

/// The backends that go into a VIP's Maglev table, from those with a weight: the ones not marked
/// down; when every one is down, all of them (fail-open) or none (drop).
pub(crate) fn ring_members<T: Copy>(
    weighted: &[(SocketAddrV4, T)],
    is_down: impl Fn(&SocketAddrV4) -> bool,
    all_down: AllDown,
) -> Vec<(SocketAddrV4, T)> {
    let up: Vec<(SocketAddrV4, T)> = weighted
        .iter()
        .filter(|(a, _)| !is_down(a))
        .copied()
        .collect();
    if up.is_empty() && all_down == AllDown::FailOpen {
        return weighted.to_vec();
    }
    up
}

/// What happens to a VIP whose every weighted backend is down, for the log.
pub(crate) fn all_down_note(all_down: AllDown) -> &'static str {
    match all_down {
        AllDown::FailOpen => {
            "every backend of the vip is down: failing open, all stay in the Maglev table"
        }
        AllDown::Drop => "every backend of the vip is down: no Maglev table, new flows are dropped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb_model::health::HealthKind;
    use xdplb_model::state::{Mode, Protocol};

    fn vip() -> VipKey {
        VipKey {
            addr: "10.0.0.10:80".parse().expect("addr"),
            proto: Protocol::Tcp,
        }
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().expect("addr")
    }

    #[test]
    fn ring_excludes_down_backends_and_follows_the_all_down_policy() {
        let weighted = [
            (addr("10.0.2.1:80"), 1u32),
            (addr("10.0.2.2:80"), 2),
            (addr("10.0.2.3:80"), 3),
        ];
        let none_down = |_: &SocketAddrV4| false;
        assert_eq!(
            ring_members(&weighted, none_down, AllDown::Drop),
            weighted.to_vec()
        );
        let two_down = |a: &SocketAddrV4| *a != addr("10.0.2.3:80");
        assert_eq!(
            ring_members(&weighted, two_down, AllDown::FailOpen),
            vec![(addr("10.0.2.3:80"), 3)]
        );
        let all_down = |_: &SocketAddrV4| true;
        assert_eq!(
            ring_members(&weighted, all_down, AllDown::FailOpen),
            weighted.to_vec()
        );
        assert!(ring_members(&weighted, all_down, AllDown::Drop).is_empty());
        assert!(ring_members::<u32>(&[], none_down, AllDown::FailOpen).is_empty());
    }

    #[test]
    fn view_marks_count_and_follow_the_state() {
        let mut view = HealthView::default();
        let (a, b) = (addr("10.0.2.1:80"), addr("10.0.2.2:80"));
        assert!(view.set(vip(), a, false));
        assert!(!view.set(vip(), a, false), "already down");
        assert!(view.set(vip(), b, false));
        assert!(view.set(vip(), b, true));
        assert!(!view.set(vip(), b, true), "already up");
        assert_eq!(view.transitions(), (2, 1));
        assert!(view.is_down(&vip(), &a) && !view.is_down(&vip(), &b));

        let mut state = State::default();
        state.add_vip(vip(), Mode::Nat).expect("vip");
        state.add_backend(&vip(), a, 1).expect("backend");
        let checked = HealthCheck {
            kind: HealthKind::Tcp,
            ..HealthCheck::default()
        };
        assert_eq!(view.status(&vip(), &checked, &a), BackendHealth::Down);
        assert_eq!(view.status(&vip(), &checked, &b), BackendHealth::Up);
        assert_eq!(
            view.status(&vip(), &HealthCheck::default(), &a),
            BackendHealth::Unchecked
        );

        view.retain(&state);
        assert!(view.down().is_empty(), "the vip is not checked: marks go");
        view.set(vip(), a, false);
        view.set(vip(), b, false);
        state.set_health(&vip(), checked).expect("set health");
        view.retain(&state);
        assert_eq!(
            view.down(),
            BTreeSet::from([(vip(), a)]),
            "b is no backend of the vip"
        );
        state.remove_vip(&vip()).expect("remove");
        view.retain(&state);
        assert!(view.down().is_empty());
    }

    #[test]
    fn stats_count_per_backend_and_follow_the_state() {
        let (v, a, b) = (vip(), addr("10.0.2.1:80"), addr("10.0.2.2:80"));
        let view = HealthView::default();
        let stats = view.stats();
        stats.update((v, a), |c| c.probe_failures += 3);
        stats.update((v, a), |c| c.went_down += 1);
        stats.update((v, b), |c| c.came_up += 1);
        // The view hands out the same counters.
        assert_eq!(
            view.stats().get(&v, &a),
            HealthCounts {
                went_down: 1,
                came_up: 0,
                probe_failures: 3
            }
        );
        let mut state = State::default();
        state
            .add_vip(v, xdplb_model::state::Mode::Nat)
            .expect("vip");
        state.add_backend(&v, a, 100).expect("backend");
        state
            .set_health(
                &v,
                HealthCheck {
                    kind: HealthKind::Tcp,
                    ..HealthCheck::default()
                },
            )
            .expect("check");
        let mut view = view;
        view.retain(&state);
        assert_eq!(stats.get(&v, &a).probe_failures, 3, "kept: still checked");
        assert_eq!(
            stats.get(&v, &b),
            HealthCounts::default(),
            "gone: not a backend"
        );
        state
            .set_health(&v, HealthCheck::default())
            .expect("unchecked");
        view.retain(&state);
        assert_eq!(
            stats.get(&v, &a),
            HealthCounts::default(),
            "gone: not checked"
        );
    }
}
