//! The checker task: every round it re-reads the state through the controller, launches the
//! probes that are due, feeds their results into a rise/fall [`Tracker`] per backend and reports
//! transitions with [`Controller::set_health`]. It is an input like an operator: it never
//! touches maps.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::probe::{probe, ProbeError};
use super::view::HealthStats;
use crate::controller::Controller;
use xdplb_model::health::HealthCheck;
use xdplb_model::state::VipKey;

/// Probes in flight at once, over all backends of all VIPs.
pub(crate) const MAX_CONCURRENT_PROBES: usize = 64;
/// How often the checker looks for due probes and re-reads the state.
const TICK: Duration = Duration::from_millis(50);

/// A backend's status as its probes tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not decided yet (counts as up).
    Unknown,
    Up,
    Down,
}

/// Counts consecutive good and failed probes of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tracker {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    status: Status,
}

impl Tracker {
    pub(crate) fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
            status: Status::Unknown,
        }
    }

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    /// New counts (the check changed): the status stays, the counting starts over.
    pub(crate) fn reconfigure(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self.successes = 0;
        self.failures = 0;
    }

    /// Records one probe; returns the new status when it changes.
    pub(crate) fn record(&mut self, ok: bool) -> Option<Status> {
        let next = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= self.rise).then_some(Status::Up)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.fall).then_some(Status::Down)
        };
        match next {
            Some(s) if s != self.status => {
                self.status = s;
                Some(s)
            }
            _ => None,
        }
    }

    /// Probes in a row behind the current status (for the transition log).
    pub(crate) fn streak(&self) -> u32 {
        self.successes.max(self.failures)
    }
}

type TargetKey = (VipKey, SocketAddrV4);

/// One probed backend.
struct Target {
    check: HealthCheck,
    tracker: Tracker,
    next_due: Instant,
    in_flight: bool,
    /// Bumped when the check changes: answers of older probes are ignored.
    generation: u64,
}

/// What a finished probe task hands back.
struct Probed {
    key: TargetKey,
    generation: u64,
    result: Result<(), ProbeError>,
}

/// The running checker; [`HealthChecker::shutdown`] stops it.
pub struct HealthChecker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HealthChecker {
    /// Starts the checker task. It holds a handle on `ctl` until it is shut down.
    pub fn spawn(ctl: Controller) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Checker::new(ctl).run(stopped));
        Self { stop, task }
    }

    /// Stops probing and waits for the task (which then lets go of its controller handle).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "health checker task ended abnormally");
        }
    }
}

struct Checker {
    ctl: Controller,
    targets: HashMap<TargetKey, Target>,
    probes: JoinSet<Probed>,
    /// Which target a probe task belongs to (to free it if the task panics).
    tasks: HashMap<tokio::task::Id, TargetKey>,
    permits: Arc<Semaphore>,
    /// The live view's counters (taken from the controller when the task starts).
    stats: HealthStats,
}

impl Checker {
    fn new(ctl: Controller) -> Self {
        Self {
            stats: HealthStats::default(),
            ctl,
            targets: HashMap::new(),
            probes: JoinSet::new(),
            tasks: HashMap::new(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        }
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        self.stats = self.ctl.read(|_, r| r.health().stats()).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break;
                    }
                }
                Some(done) = self.probes.join_next_with_id(), if !self.probes.is_empty() => {
                    self.finished(done).await;
                }
                _ = tick.tick() => self.round().await,
            }
        }
        self.probes.abort_all();
        tracing::debug!("health checker stopped");
    }

    /// Re-reads the state, puts the live view back in line with the trackers, launches due probes.
    async fn round(&mut self) {
        let (wanted, marked_down) = self
            .ctl
            .read(|s, r| {
                let wanted: Vec<(TargetKey, HealthCheck)> = s
                    .vips
                    .iter()
                    .filter(|(_, v)| v.health.is_checked())
                    .flat_map(|(vip, v)| {
                        v.backends
                            .keys()
                            .map(move |a| ((*vip, *a), v.health.clone()))
                    })
                    .collect();
                (wanted, r.health().down())
            })
            .await;
        let now = Instant::now();
        let keep: std::collections::HashSet<TargetKey> = wanted.iter().map(|(k, _)| *k).collect();
        self.targets.retain(|k, _| keep.contains(k));
        for (key, check) in wanted {
            match self.targets.get_mut(&key) {
                Some(t) if t.check == check => {}
                Some(t) => {
                    t.tracker.reconfigure(check.rise, check.fall);
                    if t.check.kind != check.kind || t.check.interval != check.interval {
                        t.next_due = now;
                    }
                    t.check = check;
                    t.generation += 1;
                    t.in_flight = false;
                }
                None => {
                    self.targets.insert(
                        key,
                        Target {
                            tracker: Tracker::new(check.rise, check.fall),
                            check,
                            next_due: now,
                            in_flight: false,
                            generation: 0,
                        },
                    );
                }
            }
        }
        // The view follows the trackers, also after a rolled-back change dropped a mark.
        let mismatched: Vec<(TargetKey, bool)> = self
            .targets
            .iter()
            .filter_map(|(k, t)| {
                let down = t.tracker.status() == Status::Down;
                (down != marked_down.contains(k)).then_some((*k, !down))
            })
            .collect();
        for (key, up) in mismatched {
            self.apply(key, up).await;
        }
        for (key, t) in &mut self.targets {
            if t.in_flight || t.next_due > now {
                continue;
            }
            t.in_flight = true;
            t.next_due = now + t.check.interval;
            let (key, generation) = (*key, t.generation);
            let (kind, timeout) = (t.check.kind.clone(), t.check.timeout);
            let permits = self.permits.clone();
            let handle = self.probes.spawn(async move {
                let result = match permits.acquire_owned().await {
                    Ok(_permit) => probe(&kind, key.1, timeout).await,
                    Err(_) => Err(ProbeError::Timeout(timeout)),
                };
                Probed {
                    key,
                    generation,
                    result,
                }
            });
            self.tasks.insert(handle.id(), key);
        }
    }

    /// Counts a finished probe; reports a transition to the controller.
    async fn finished(&mut self, done: Result<(tokio::task::Id, Probed), tokio::task::JoinError>) {
        let probed = match done {
            Ok((id, probed)) => {
                self.tasks.remove(&id);
                probed
            }
            Err(e) => {
                if let Some(key) = self.tasks.remove(&e.id()) {
                    if let Some(t) = self.targets.get_mut(&key) {
                        t.in_flight = false;
                    }
                    tracing::error!(vip = %key.0, backend = %key.1, error = %e, "health probe task failed");
                }
                return;
            }
        };
        let Some(t) = self.targets.get_mut(&probed.key) else {
            return;
        };
        if t.generation != probed.generation {
            return;
        }
        t.in_flight = false;
        if probed.result.is_err() {
            self.stats.update(probed.key, |c| c.probe_failures += 1);
        }
        let before = t.tracker.status();
        let Some(now) = t.tracker.record(probed.result.is_ok()) else {
            if let Err(e) = &probed.result {
                tracing::debug!(vip = %probed.key.0, backend = %probed.key.1, error = %e, "health probe failed");
            }
            return;
        };
        let (vip, backend) = probed.key;
        let (check, probes) = (t.check.kind.to_string(), t.tracker.streak());
        match (before, now, &probed.result) {
            (_, Status::Down, Err(e)) => tracing::warn!(
                %vip, %backend, health = "down", %check, probes, error = %e,
                "backend health changed: out of the Maglev table for new flows"
            ),
            (Status::Down, Status::Up, _) => tracing::info!(
                %vip, %backend, health = "up", %check, probes,
                "backend health changed: back in the Maglev table"
            ),
            _ => {
                tracing::debug!(%vip, %backend, health = ?now, %check, "backend health established")
            }
        }
        match (before, now) {
            (Status::Down, Status::Down) => {}
            (_, Status::Down) => self.stats.update(probed.key, |c| c.went_down += 1),
            (Status::Down, _) => self.stats.update(probed.key, |c| c.came_up += 1),
            _ => {}
        }
        if before == Status::Down || now == Status::Down {
            self.apply(probed.key, now != Status::Down).await;
        }
    }

    async fn apply(&self, (vip, backend): TargetKey, up: bool) {
        if let Err(e) = self.ctl.set_health(&vip, backend, up).await {
            tracing::error!(%vip, %backend, up, error = %e, "applying a health change failed; retrying next round");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_goes_down_after_fall_and_up_after_rise() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.status(), Status::Unknown);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success resets the failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(
            t.record(false),
            Some(Status::Down),
            "third failure in a row"
        );
        assert_eq!(t.record(false), None, "already down: no second transition");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None, "a failure resets the successes");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Status::Up), "second success in a row");
        assert_eq!(t.record(true), None);
        // A new check keeps the status and counts afresh.
        t.reconfigure(1, 1);
        assert_eq!(t.status(), Status::Up);
        assert_eq!(t.record(false), Some(Status::Down));
        assert_eq!(t.record(true), Some(Status::Up));
        let mut fresh = Tracker::new(2, 3);
        assert_eq!(fresh.record(true), None);
        assert_eq!(
            fresh.record(true),
            Some(Status::Up),
            "unknown becomes up after rise"
        );
    }
}
