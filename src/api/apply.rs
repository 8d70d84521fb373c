//! The `Apply` gRPC service (`lbctl apply -f FILE`): the whole desired configuration as TOML text
//! in the configuration file's form ([`DesiredConfig`]), compared with the running state and,
//! unless a dry run, made the running state in one [`Controller::change`] (one reconcile, one
//! save: all or nothing).
//!
//! What is live stays: health status lives in the reconciler, not in the state, and is never
//! touched; a drained backend stays drained ([`keep_live`]), the file's weight becoming the one
//! `backend undrain` restores; an unchecked VIP keeps the probe values it had stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddrV4;
use std::path::PathBuf;

use tonic::{Request, Response, Status};

use super::ApiError;
use crate::config::DesiredConfig;
use crate::controller::Controller;
use xdplb_model::firewall::Action;
use xdplb_model::health::HealthCheck;
use xdplb_model::ratelimit::Policy;
use xdplb_model::state::{State, VipKey, VipState};
use xdplb_proto::pb::{self, apply_server};

/// Changes listed in one reply (the rest are only counted).
pub(crate) const MAX_LISTED: usize = 10_000;
/// Largest request accepted: big enough for a file with a million firewall prefixes.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 << 20;
/// The name errors give the file when the request names none.
const DEFAULT_NAME: &str = "apply.toml";

/// `+`, `-` or `~`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Remove,
    Change,
}

impl Op {
    fn sign(self) -> char {
        match self {
            Op::Add => '+',
            Op::Remove => '-',
            Op::Change => '~',
        }
    }
}

/// One difference between the running state and the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) op: Op,
    /// vip, mode, health, backend, weight, block, allow, rule, ratelimit.
    pub(crate) kind: &'static str,
    pub(crate) vip: Option<VipKey>,
    /// The backend, the prefix, or the rate-limit target ("default" or a prefix).
    pub(crate) target: String,
    pub(crate) from: String,
    pub(crate) to: String,
    /// Said after the values ("drained: ...").
    pub(crate) note: Option<&'static str>,
}

impl Change {
    fn new(op: Op, kind: &'static str) -> Change {
        Change {
            op,
            kind,
            vip: None,
            target: String::new(),
            from: String::new(),
            to: String::new(),
            note: None,
        }
    }

    fn vip(mut self, vip: &VipKey) -> Change {
        self.vip = Some(*vip);
        self
    }

    fn target(mut self, target: impl fmt::Display) -> Change {
        self.target = target.to_string();
        self
    }

    fn from(mut self, from: impl fmt::Display) -> Change {
        self.from = from.to_string();
        self
    }

    fn to(mut self, to: impl fmt::Display) -> Change {
        self.to = to.to_string();
        self
    }
}

/// The diff line: `+ vip 10.0.0.1:80/tcp nat`, `~ weight 10.0.0.1:80/tcp 10.0.2.1:80 100 -> 50`.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.sign(), self.kind)?;
        if let Some(v) = &self.vip {
            write!(f, " {v}")?;
        }
        if !self.target.is_empty() {
            write!(f, " {}", self.target)?;
        }
        match self.op {
            Op::Add if !self.to.is_empty() => write!(f, " {}", self.to)?,
            Op::Remove if !self.from.is_empty() => write!(f, " {}", self.from)?,
            Op::Change => write!(f, " {} -> {}", self.from, self.to)?,
            _ => {}
        }
        if let Some(note) = self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

impl From<&Change> for pb::ApplyChange {
    fn from(c: &Change) -> Self {
        pb::ApplyChange {
            op: match c.op {
                Op::Add => pb::ApplyOp::Add,
                Op::Remove => pb::ApplyOp::Remove,
                Op::Change => pb::ApplyOp::Change,
            } as i32,
            kind: c.kind.to_string(),
            vip: c.vip.map(|v| v.to_string()).unwrap_or_default(),
            target: c.target.clone(),
            from: c.from.clone(),
            to: c.to.clone(),
            line: c.to_string(),
        }
    }
}

/// The weight a backend is configured with: its weight, or the one a drain keeps for undrain.
fn configured_weight(v: &VipState, addr: &SocketAddrV4) -> u32 {
    v.drained
        .get(addr)
        .or_else(|| v.backends.get(addr))
        .copied()
        .unwrap_or(0)
}

/// "weight 100", with "drained" when it is kept for undrain.
fn backend_value(v: &VipState, addr: &SocketAddrV4) -> String {
    match v.drained.get(addr) {
        Some(w) => format!("weight {w}, drained"),
        None => format!("weight {}", configured_weight(v, addr)),
    }
}

fn health_text(h: &HealthCheck) -> String {
    h.to_string()
}

/// "no limit", or "1000/s burst 100 scope all".
fn policy_text(p: &Policy) -> String {
    if p.is_limited() {
        format!("{}/s burst {} scope {}", p.rate, p.burst, p.scope)
    } else if *p == Policy::UNLIMITED {
        "no limit".into()
    } else {
        format!("no limit (burst {} scope {})", p.burst, p.scope)
    }
}

/// Carries what is live from `current` into `desired` (built from a file, which has none of
/// it): a backend drained now and wanted with a weight stays drained, the file's weight kept
/// for undrain (a weight of 0 in the file ends the drain); a VIP unchecked in both keeps its
/// stored probe values; firewall rules equal to the running ones share them (the reconciler
/// then skips them entirely).
pub(crate) fn keep_live(current: &State, desired: &mut State) {
    for (key, want) in desired.vips.iter_mut() {
        let Some(now) = current.vips.get(key) else {
            continue;
        };
        if !now.health.is_checked() && !want.health.is_checked() {
            want.health = now.health.clone();
        }
        for addr in now.drained.keys() {
            if let Some(w) = want.backends.get_mut(addr) {
                if *w > 0 {
                    want.drained.insert(*addr, std::mem::take(w));
                }
            }
        }
    }
    if desired.firewall.rules() == current.firewall.rules() {
        desired.firewall = current.firewall.clone();
    }
}

/// Every difference between `current` and `desired` (after [`keep_live`]): VIPs in address
/// order (mode, health check, backends and weights), then firewall rules, then rate limits.
/// Empty exactly when the two states are equal.
pub(crate) fn diff(current: &State, desired: &State) -> Vec<Change> {
    let mut out = Vec::new();
    let keys: BTreeSet<&VipKey> = current.vips.keys().chain(desired.vips.keys()).collect();
    for key in keys {
        match (current.vips.get(key), desired.vips.get(key)) {
            (Some(now), None) => {
                out.push(Change::new(Op::Remove, "vip").vip(key).from(now.mode));
                for addr in now.backends.keys() {
                    out.push(
                        Change::new(Op::Remove, "backend")
                            .vip(key)
                            .target(addr)
                            .from(backend_value(now, addr)),
                    );
                }
            }
            (None, Some(want)) => {
                out.push(Change::new(Op::Add, "vip").vip(key).to(want.mode));
                if want.health.is_checked() {
                    out.push(
                        Change::new(Op::Add, "health")
                            .vip(key)
                            .to(health_text(&want.health)),
                    );
                }
                for addr in want.backends.keys() {
                    out.push(
                        Change::new(Op::Add, "backend")
                            .vip(key)
                            .target(addr)
                            .to(backend_value(want, addr)),
                    );
                }
            }
            (Some(now), Some(want)) => diff_vip(key, now, want, &mut out),
            (None, None) => {}
        }
    }
    diff_firewall(current, desired, &mut out);
    diff_rate_limits(current, desired, &mut out);
    out
}

fn diff_vip(key: &VipKey, now: &VipState, want: &VipState, out: &mut Vec<Change>) {
    if now.mode != want.mode {
        out.push(
            Change::new(Op::Change, "mode")
                .vip(key)
                .from(now.mode)
                .to(want.mode),
        );
    }
    if now.health != want.health {
        let c = match (now.health.is_checked(), want.health.is_checked()) {
            (false, true) => Change::new(Op::Add, "health"),
            (true, false) => Change::new(Op::Remove, "health"),
            _ => Change::new(Op::Change, "health"),
        };
        out.push(
            c.vip(key)
                .from(health_text(&now.health))
                .to(health_text(&want.health)),
        );
    }
    let addrs: BTreeSet<&SocketAddrV4> = now.backends.keys().chain(want.backends.keys()).collect();
    for addr in addrs {
        match (
            now.backends.contains_key(addr),
            want.backends.contains_key(addr),
        ) {
            (true, false) => out.push(
                Change::new(Op::Remove, "backend")
                    .vip(key)
                    .target(addr)
                    .from(backend_value(now, addr)),
            ),
            (false, true) => out.push(
                Change::new(Op::Add, "backend")
                    .vip(key)
                    .target(addr)
                    .to(backend_value(want, addr)),
            ),
            (true, true) => {
                let (from, to) = (configured_weight(now, addr), configured_weight(want, addr));
                let drained = (
                    now.drained.contains_key(addr),
                    want.drained.contains_key(addr),
                );
                if from != to || drained.0 != drained.1 {
                    let mut c = Change::new(Op::Change, "weight")
                        .vip(key)
                        .target(addr)
                        .from(from)
                        .to(to);
                    c.note = match drained {
                        (_, true) => Some("drained: 0 until undrain"),
                        (true, false) => Some("ends the drain"),
                        _ => None,
                    };
                    out.push(c);
                }
            }
            (false, false) => {}
        }
    }
}

fn diff_firewall(current: &State, desired: &State, out: &mut Vec<Change>) {
    let (now, want) = (current.firewall.rules(), desired.firewall.rules());
    if now == want {
        return;
    }
    let kind = |a: Action| match a {
        Action::Block => "block",
        Action::Allow => "allow",
    };
    let nets: BTreeSet<_> = now.keys().chain(want.keys()).collect();
    for net in nets {
        match (now.get(net), want.get(net)) {
            (Some(a), None) => out.push(Change::new(Op::Remove, kind(*a)).target(net)),
            (None, Some(a)) => out.push(Change::new(Op::Add, kind(*a)).target(net)),
            (Some(a), Some(b)) if a != b => {
                out.push(Change::new(Op::Change, "rule").target(net).from(a).to(b))
            }
            _ => {}
        }
    }
}

fn diff_rate_limits(current: &State, desired: &State, out: &mut Vec<Change>) {
    let (now, want) = (&current.ratelimit, &desired.ratelimit);
    if now.default != want.default {
        out.push(
            Change::new(Op::Change, "ratelimit")
                .target("default")
                .from(policy_text(&now.default))
                .to(policy_text(&want.default)),
        );
    }
    let nets: BTreeSet<_> = now.overrides.keys().chain(want.overrides.keys()).collect();
    for net in nets {
        let c = match (now.overrides.get(net), want.overrides.get(net)) {
            (Some(p), None) => Change::new(Op::Remove, "ratelimit").from(policy_text(p)),
            (None, Some(p)) => Change::new(Op::Add, "ratelimit").to(policy_text(p)),
            (Some(a), Some(b)) if a != b => Change::new(Op::Change, "ratelimit")
                .from(policy_text(a))
                .to(policy_text(b)),
            _ => continue,
        };
        out.push(c.target(net));
    }
}

/// Counts by op, for the log.
fn counts(changes: &[Change]) -> BTreeMap<char, usize> {
    let mut m = BTreeMap::new();
    for c in changes {
        *m.entry(c.op.sign()).or_insert(0) += 1;
    }
    m
}

pub(crate) struct ApplyService {
    ctl: Controller,
}

impl ApplyService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl }
    }

    /// The server, taking requests as large as [`MAX_REQUEST_BYTES`].
    pub(crate) fn server(ctl: Controller) -> apply_server::ApplyServer<ApplyService> {
        apply_server::ApplyServer::new(Self::new(ctl)).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

fn reply(changes: &[Change], applied: bool) -> pb::ApplyReply {
    pb::ApplyReply {
        changes: changes
            .iter()
            .take(MAX_LISTED)
            .map(pb::ApplyChange::from)
            .collect(),
        total: changes.len() as u64,
        applied,
    }
}

#[tonic::async_trait]
impl apply_server::Apply for ApplyService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let pb::ApplyRequest {
            config,
            dry_run,
            name,
        } = request.into_inner();
        let name = PathBuf::from(if name.is_empty() {
            DEFAULT_NAME
        } else {
            name.as_str()
        });
        let capacity = self.ctl.read(|_, r| r.firewall_capacity()).await;
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        // A file with a million prefixes takes a while to parse: off the async runtime.
        let desired = tokio::task::spawn_blocking(move || {
            DesiredConfig::state_from_text(&config, &name, capacity)
        })
        .await
        .map_err(|e| Status::internal(format!("parsing the configuration: {e}")))?
        .map_err(|e| Status::invalid_argument(e.to_string()))?;

        let changes = self
            .ctl
            .read(|current, _| {
                let mut want = desired.clone();
                keep_live(current, &mut want);
                diff(current, &want)
            })
            .await;
        if dry_run || changes.is_empty() {
            return Ok(Response::new(reply(&changes, false)));
        }
        // Computed again against the state the change runs on (another change may have come
        // in between), and made the state as one change.
        let changes = self
            .ctl
            .change(move |state| -> Result<Vec<Change>, ApiError> {
                let mut want = desired;
                keep_live(state, &mut want);
                let changes = diff(state, &want);
                *state = want;
                Ok(changes)
            })
            .await?;
        let n = counts(&changes);
        tracing::info!(
            added = n.get(&'+').copied().unwrap_or(0),
            removed = n.get(&'-').copied().unwrap_or(0),
            changed = n.get(&'~').copied().unwrap_or(0),
            "configuration applied"
        );
        Ok(Response::new(reply(&changes, true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CAPACITY: u32 = 1000;

    fn state(text: &str) -> State {
        DesiredConfig::state_from_text(text, Path::new("t.toml"), CAPACITY).expect("valid file")
    }

    fn err(text: &str) -> String {
        DesiredConfig::state_from_text(text, Path::new("t.toml"), CAPACITY)
            .expect_err("refused")
            .to_string()
    }

    /// The diff lines of going from `current` to the state of `text`.
    fn lines(current: &State, text: &str) -> Vec<String> {
        let mut want = state(text);
        keep_live(current, &mut want);
        diff(current, &want).iter().map(|c| c.to_string()).collect()
    }

    /// `current` after applying `text`, as the service does.
    fn applied(current: &State, text: &str) -> State {
        let mut want = state(text);
        keep_live(current, &mut want);
        want
    }

    const BASE: &str = r#"
[[vip]]
address = "10.0.0.1:80"
proto = "tcp"
[vip.health]
proto = "tcp"
interval = "200ms"
timeout = "100ms"
[[vip.backend]]
address = "10.0.2.1:80"
[[vip.backend]]
address = "10.0.2.2:80"
weight = 50

[[vip]]
address = "10.0.0.2:53"
proto = "udp"
mode = "ipip"
[[vip.backend]]
address = "10.0.2.1:53"

[firewall]
block = ["192.0.2.0/24", "198.51.100.7"]
allow = ["192.0.2.128/25"]

[ratelimit.default]
rate = 1000
burst = 100

[[ratelimit.override]]
cidr = "203.0.113.0/24"
rate = 10
burst = 5
scope = "new-flows"
"#;

    #[test]
    fn from_nothing_everything_is_added() {
        assert_eq!(
            lines(&State::default(), BASE),
            [
                "+ vip 10.0.0.1:80/tcp nat",
                "+ health 10.0.0.1:80/tcp tcp every 200ms, timeout 100ms, rise 2, fall 3, all down: fail-open",
                "+ backend 10.0.0.1:80/tcp 10.0.2.1:80 weight 100",
                "+ backend 10.0.0.1:80/tcp 10.0.2.2:80 weight 50",
                "+ vip 10.0.0.2:53/udp ipip",
                "+ backend 10.0.0.2:53/udp 10.0.2.1:53 weight 100",
                "+ block 192.0.2.0/24",
                "+ allow 192.0.2.128/25",
                "+ block 198.51.100.7/32",
                "~ ratelimit default no limit -> 1000/s burst 100 scope all",
                "+ ratelimit 203.0.113.0/24 10/s burst 5 scope new-flows",
            ]
        );
    }

    #[test]
    fn the_same_file_again_changes_nothing() {
        let now = applied(&State::default(), BASE);
        assert_eq!(now, state(BASE));
        assert!(lines(&now, BASE).is_empty());
        // And the empty file removes everything.
        let empty = lines(&now, "");
        assert_eq!(empty.len(), 10, "{empty:#?}");
        assert_eq!(empty[0], "- vip 10.0.0.1:80/tcp nat");
        assert!(empty.contains(&"- backend 10.0.0.1:80/tcp 10.0.2.2:80 weight 50".to_string()));
        assert!(empty.contains(&"- allow 192.0.2.128/25".to_string()));
        assert!(
            empty.contains(&"- ratelimit 203.0.113.0/24 10/s burst 5 scope new-flows".to_string())
        );
        assert_eq!(applied(&now, ""), State::default());
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let now = applied(&State::default(), BASE);
        let edited = BASE
            .replace("weight = 50", "weight = 20")
            .replace("mode = \"ipip\"", "mode = \"nat\"")
            .replace("interval = \"200ms\"", "interval = \"1s\"")
            .replace(
                "[[vip.backend]]\naddress = \"10.0.2.1:53\"",
                "[[vip.backend]]\naddress = \"10.0.2.3:5353\"",
            )
            .replace("allow = [\"192.0.2.128/25\"]", "allow = [\"198.51.100.7\"]")
            .replace(
                "block = [\"192.0.2.0/24\", \"198.51.100.7\"]",
                "block = [\"192.0.2.0/24\"]",
            )
            .replace("rate = 10\n", "rate = 20\n");
        assert_eq!(
            lines(&now, &edited),
            [
                "~ health 10.0.0.1:80/tcp tcp every 200ms, timeout 100ms, rise 2, fall 3, all down: fail-open -> tcp every 1s, timeout 100ms, rise 2, fall 3, all down: fail-open",
                "~ weight 10.0.0.1:80/tcp 10.0.2.2:80 50 -> 20",
                "~ mode 10.0.0.2:53/udp ipip -> nat",
                "- backend 10.0.0.2:53/udp 10.0.2.1:53 weight 100",
                "+ backend 10.0.0.2:53/udp 10.0.2.3:5353 weight 100",
                "- allow 192.0.2.128/25",
                "~ rule 198.51.100.7/32 block -> allow",
                "~ ratelimit 203.0.113.0/24 10/s burst 5 scope new-flows -> 20/s burst 5 scope new-flows",
            ]
        );
        let after = applied(&now, &edited);
        assert_eq!(after, state(&edited));
        assert!(lines(&after, &edited).is_empty());
        // A health check taken away, and put back.
        let unchecked = BASE.replace(
            "[vip.health]\nproto = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n",
            "",
        );
        let l = lines(&now, &unchecked);
        assert_eq!(l.len(), 1);
        assert!(
            l[0].starts_with("- health 10.0.0.1:80/tcp tcp every 200ms"),
            "{l:?}"
        );
    }

    #[test]
    fn drains_are_live_and_stay() {
        let mut now = applied(&State::default(), BASE);
        let vip = VipKey {
            addr: "10.0.0.1:80".parse().unwrap(),
            proto: xdplb_model::state::Protocol::Tcp,
        };
        let be: SocketAddrV4 = "10.0.2.2:80".parse().unwrap();
        now.drain(&vip, be).expect("drain");
        // The same file: still drained, nothing to do.
        assert!(lines(&now, BASE).is_empty());
        assert_eq!(applied(&now, BASE), now);
        // Another weight: kept for undrain, the backend stays at 0.
        let heavier = BASE.replace("weight = 50", "weight = 70");
        assert_eq!(
            lines(&now, &heavier),
            ["~ weight 10.0.0.1:80/tcp 10.0.2.2:80 50 -> 70 (drained: 0 until undrain)"]
        );
        let mut after = applied(&now, &heavier);
        assert_eq!(after.vips[&vip].backends[&be], 0);
        assert_eq!(after.undrain(&vip, be), Ok(70));
        // Weight 0 in the file ends the drain.
        let zero = BASE.replace("weight = 50", "weight = 0");
        assert_eq!(
            lines(&now, &zero),
            ["~ weight 10.0.0.1:80/tcp 10.0.2.2:80 50 -> 0 (ends the drain)"]
        );
        assert!(applied(&now, &zero).vips[&vip].drained.is_empty());
    }

    #[test]
    fn an_unchecked_vip_keeps_its_stored_probe_values() {
        let text = "[[vip]]\naddress = \"10.0.0.1:80\"\nproto = \"tcp\"\n";
        let mut now = state(text);
        let vip = *now.vips.keys().next().unwrap();
        now.vips.get_mut(&vip).unwrap().health.interval = std::time::Duration::from_secs(5);
        assert!(lines(&now, text).is_empty());
        assert_eq!(applied(&now, text), now);
    }

    #[test]
    fn equal_rules_are_shared_not_copied() {
        let now = applied(&State::default(), BASE);
        let again = applied(&now, BASE);
        assert!(std::sync::Arc::ptr_eq(
            now.firewall.shared(),
            again.firewall.shared()
        ));
    }

    #[test]
    fn the_readme_example_says_what_apply_prints() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\n# desired.toml\n")
            .expect("the example file");
        let text = &readme[start + "```toml\n".len()..];
        let text = &text[..text.find("```").expect("its end")];
        let out = lines(&State::default(), text);
        assert_eq!(out.len(), 9, "{out:#?}");
        for line in &out[..5] {
            assert!(
                readme.contains(&format!("\n{line}\n")),
                "{line:?} is not in the README"
            );
        }
        assert!(readme.contains(&format!(
            "\n{} changes (dry run: nothing changed)\n",
            out.len()
        )));
        let now = applied(&State::default(), text);
        let lighter = text.replace("weight = 50", "weight = 20");
        let out = lines(&now, &lighter);
        assert_eq!(out.len(), 1);
        assert!(
            readme.contains(&format!("\n{}\napplied 1 change\n", out[0])),
            "{out:?}"
        );
    }

    #[test]
    fn bad_files_name_line_column_and_key() {
        let bad_weight = BASE.replace("weight = 50", "weight = 2000000");
        assert_eq!(
            err(&bad_weight),
            "t.toml:13:10: vip[0].backend[1].weight: 2000000 is above the maximum 1000000"
        );
        let unknown = BASE.replace("weight = 50", "wieght = 50");
        let e = err(&unknown);
        assert!(
            e.starts_with("t.toml:13:1: vip[0].backend[1].wieght: unknown field `wieght`"),
            "{e}"
        );
        let e = err(&BASE.replace("\"198.51.100.7\"", "\"198.51.100.7/16\""));
        assert!(
            e.starts_with("t.toml:23:26: firewall.block[1]: 198.51.100.7/16 has host bits set"),
            "{e}"
        );
        let e = err(&BASE.replace("allow = [\"192.0.2.128/25\"]", "allow = [\"192.0.2.0/24\"]"));
        assert!(
            e.starts_with("t.toml:24:10: firewall.allow[0]: 192.0.2.0/24 is also firewall.block[0] with action block"),
            "{e}"
        );
        let e = err(&BASE.replace("burst = 5\n", "burst = 0\n"));
        assert!(
            e.starts_with("t.toml:33:9: ratelimit.override[0].burst: must be at least 1"),
            "{e}"
        );
        let e = err(&BASE.replace("203.0.113.0/24", "0.0.0.0/0"));
        assert!(
            e.contains("ratelimit.override[0].cidr: 0.0.0.0/0 is every client"),
            "{e}"
        );
        let e = err("[dataplane]\ninterfaces = [\"eth0\"]\n");
        assert!(
            e.starts_with("t.toml:1:2: dataplane: unknown field `dataplane`"),
            "{e}"
        );
        let e = err("[firewall]\nscope = \"all\"\n");
        assert!(e.contains("firewall.scope: unknown field `scope`"), "{e}");
        // Too many rules for the firewall.
        let many: Vec<String> = (0..=CAPACITY)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let e = err(&format!("[firewall]\nblock = [{}]\n", many.join(", ")));
        assert!(
            e.contains("firewall: the firewall would hold 1001 rules; it holds at most 1000"),
            "{e}"
        );
    }
}
