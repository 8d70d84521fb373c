//! Health checks: the per-VIP probe configuration (part of the desired state), the live view of
//! which backends are down (kept by the reconciler, never persisted), the rise/fall counter of
//! each backend, and the checker task that probes backends from the LB and reports transitions.
//!
//! The checker is an input like an operator: it never touches maps. When a backend's status
//! changes it calls [`Controller::set_health`], which updates the [`HealthView`] and reconciles,
//! so the affected Maglev tables are rebuilt without the backend (or with it again). Established
//! flows are never cut: the flow table keeps sending them where they started.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::api::Controller;
use xdplb_model::health::{AllDown, HealthCheck, HealthKind};
use xdplb_model::state::{State, VipKey};

/// Probes in flight at once, over all backends of all VIPs.
pub const MAX_CONCURRENT_PROBES: usize = 64;
/// How often the checker looks for due probes and re-reads the state.
const TICK: Duration = Duration::from_millis(50);
/// Most bytes read looking for an HTTP status line.
const MAX_STATUS_LINE: usize = 512;

/// A backend's health as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendHealth {
    /// Checked and not marked down (also: not probed yet).
    Up,
    /// Marked down by the checker: not in the Maglev table (unless every backend is down and the
    /// VIP fails open).
    Down,
    /// The VIP has no health check.
    Unchecked,
}

impl BackendHealth {
    pub fn as_str(self) -> &'static str {
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
pub struct HealthView {
    down: BTreeMap<VipKey, BTreeSet<SocketAddrV4>>,
    went_down: u64,
    came_up: u64,
    stats: HealthStats,
}

/// What the checker counted for one backend of a VIP since lbd started (or since the backend
/// was added or its VIP got a check): the metrics export these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// Transitions to down (the first verdict of a backend that never answered included).
    pub went_down: u64,
    /// Transitions from down back to up.
    pub came_up: u64,
    /// Probes that failed (refused, timed out, wrong status, no reply).
    pub probe_failures: u64,
}

/// The checker's per-backend counters, shared between the checker (which writes them without
/// the controller's lock) and the [`HealthView`] (through which the metrics read them).
#[derive(Debug, Clone, Default)]
pub struct HealthStats(Arc<Mutex<BTreeMap<(VipKey, SocketAddrV4), HealthCounts>>>);

impl HealthStats {
    fn update(&self, key: (VipKey, SocketAddrV4), f: impl FnOnce(&mut HealthCounts)) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(key).or_default());
    }

    /// The counters of one backend (zero if nothing was counted).
    pub fn get(&self, vip: &VipKey, addr: &SocketAddrV4) -> HealthCounts {
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
    pub fn set(&mut self, vip: VipKey, addr: SocketAddrV4, up: bool) -> bool {
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

    pub fn is_down(&self, vip: &VipKey, addr: &SocketAddrV4) -> bool {
        self.down.get(vip).is_some_and(|s| s.contains(addr))
    }

    /// Every backend marked down.
    pub fn down(&self) -> BTreeSet<(VipKey, SocketAddrV4)> {
        self.down
            .iter()
            .flat_map(|(vip, s)| s.iter().map(|a| (*vip, *a)))
            .collect()
    }

    /// Forgets marks (and counters) of VIPs and backends `desired` no longer has, or no longer
    /// checks.
    pub fn retain(&mut self, desired: &State) {
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
    pub fn status(&self, vip: &VipKey, check: &HealthCheck, addr: &SocketAddrV4) -> BackendHealth {
        if !check.is_checked() {
            BackendHealth::Unchecked
        } else if self.is_down(vip, addr) {
            BackendHealth::Down
        } else {
            BackendHealth::Up
        }
    }

    /// The checker's per-backend counters (a shared handle).
    pub fn stats(&self) -> HealthStats {
        self.stats.clone()
    }

    /// How many times a backend was marked down, and up again, since lbd started.
    pub fn transitions(&self) -> (u64, u64) {
        (self.went_down, self.came_up)
    }
}

/// The backends that go into a VIP's Maglev table, from those with a weight: the ones not marked
/// down; when every one is down, all of them (fail-open) or none (drop).
pub fn ring_members<T: Copy>(
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

/// A backend's status as its probes tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not decided yet (counts as up).
    Unknown,
    Up,
    Down,
}

/// Counts consecutive good and failed probes of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    status: Status,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
            status: Status::Unknown,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// New counts (the check changed): the status stays, the counting starts over.
    pub fn reconfigure(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
        self.successes = 0;
        self.failures = 0;
    }

    /// Records one probe; returns the new status when it changes.
    pub fn record(&mut self, ok: bool) -> Option<Status> {
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
    pub fn streak(&self) -> u32 {
        self.successes.max(self.failures)
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("HTTP status {got}, expected {want}")]
    Status { got: u16, want: u16 },
    #[error("not an HTTP response: {0}")]
    NotHttp(String),
}

/// Probes `addr` once as `kind` says, within `timeout`.
pub async fn probe(
    kind: &HealthKind,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let run = async {
        match kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => probe_tcp(addr).await,
            HealthKind::Http {
                path,
                expect_status,
            } => probe_http(addr, path, *expect_status).await,
            HealthKind::Udp { payload } => probe_udp(addr, payload.as_bytes()).await,
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

async fn probe_tcp(addr: SocketAddrV4) -> Result<(), ProbeError> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(ProbeError::Connect)
}

async fn probe_http(addr: SocketAddrV4, path: &str, expect: u16) -> Result<(), ProbeError> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: xdplb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    let mut head = Vec::with_capacity(MAX_STATUS_LINE);
    let mut chunk = [0u8; 256];
    while head.len() < MAX_STATUS_LINE && !head.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let got = parse_status_line(&head)?;
    if got != expect {
        return Err(ProbeError::Status { got, want: expect });
    }
    Ok(())
}

/// The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(head: &[u8]) -> Result<u16, ProbeError> {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let line = line.trim_end();
    let shown = || line.chars().take(60).collect::<String>();
    let mut words = line.split(' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ProbeError::NotHttp(format!("{:?}", shown())));
    }
    let code = words.next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=599).contains(&c) => Ok(c),
        _ => Err(ProbeError::NotHttp(format!("{:?}", shown()))),
    }
}

async fn probe_udp(addr: SocketAddrV4, payload: &[u8]) -> Result<(), ProbeError> {
    let socket = tokio::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(ProbeError::Io)?;
    socket.connect(addr).await.map_err(ProbeError::Io)?;
    socket.send(payload).await.map_err(ProbeError::Io)?;
    let mut buf = [0u8; 2048];
    // An ICMP port unreachable comes back as ConnectionRefused.
    socket
        .recv(&mut buf)
        .await
        .map(drop)
        .map_err(ProbeError::Io)
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

/// What happens to a VIP whose every weighted backend is down, for the log.
pub fn all_down_note(all_down: AllDown) -> &'static str {
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
    use xdplb_model::state::{Mode, Protocol};

    fn vip() -> VipKey {
        VipKey {
            addr: "10.0.0.10:80".parse().expect("addr"),
            proto: Protocol::Tcp,
        }
    }

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

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\nServer: x\r\n").expect("200"),
            200
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n").expect("503"),
            503
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 204").expect("no reason, no newline"),
            204
        );
        for bad in [
            &b"b1 10.0.0.1:4000\n"[..],
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/2 200\r\n",
            b"",
            b"HTTP/1.1 abc\r\n",
        ] {
            assert!(
                parse_status_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
