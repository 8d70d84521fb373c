//! Per-client rate limiting's part of the desired state: a default policy and per-CIDR overrides
//! (rate, burst, scope), their validation, and the GCRA bucket arithmetic the data plane runs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names::named_enum;
use crate::state::{invalid, StateError};

/// Highest rate accepted, in packets per second per client.
pub const MAX_RATE: u64 = 10_000_000;
/// Largest burst accepted, in packets.
pub const MAX_BURST: u64 = 1_000_000;
/// (`MAX_POLICIES`, `DEFAULT_CLIENTS` and `TIME_SHIFT` are `bpf/xdplb.h`'s `RL_*` limits; the
/// data plane asserts they agree.)
///
/// Policy ids the data plane has; id 0 is the default policy, the rest are overrides.
pub const MAX_POLICIES: usize = 4096;
/// Most per-CIDR overrides.
pub const MAX_OVERRIDES: usize = MAX_POLICIES - 1;
/// Client buckets the data plane keeps unless `[ratelimit] clients` says otherwise.
pub const DEFAULT_CLIENTS: u32 = 1_000_000;
/// The bucket clock runs `1 << TIME_SHIFT` units per nanosecond of `bpf_ktime_get_ns()`.
pub const TIME_SHIFT: u32 = 4;
/// Bucket clock units per second.
pub const UNITS_PER_SEC: u64 = 1_000_000_000 << TIME_SHIFT;

/// Which packets of a client a policy charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every packet the client sends to a VIP.
    #[default]
    All,
    /// Only packets that start a flow (a TCP SYN, a UDP packet of an unknown flow, and any other
    /// packet that finds no live flow); packets of established flows always pass.
    NewFlows,
}

named_enum!(Scope, "scope", { All => "all", NewFlows => "new-flows" | "new_flows" });

/// How the clients of one policy are limited, each on its own: `rate` packets per second with
/// bursts of up to `burst` packets. Rate 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    pub rate: u64,
    pub burst: u64,
    pub scope: Scope,
}

/// A policy and the clients it is for: an override's prefix, or `None` for the default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrPolicy {
    pub cidr: Option<Ipv4Net>,
    pub policy: Policy,
}

impl Policy {
    /// No limit.
    pub const UNLIMITED: Policy = Policy {
        rate: 0,
        burst: 0,
        scope: Scope::All,
    };

    /// Whether the policy limits anything.
    pub fn is_limited(&self) -> bool {
        self.rate > 0
    }

    /// Checks the bounds the data plane's arithmetic relies on (see `bpf/ratelimit.h`).
    pub fn validate(&self) -> Result<(), StateError> {
        if self.rate > MAX_RATE {
            return Err(invalid(
                "rate",
                format!("{} is above the maximum {MAX_RATE} packets/s", self.rate),
            ));
        }
        if self.burst > MAX_BURST {
            return Err(invalid(
                "burst",
                format!("{} is above the maximum {MAX_BURST} packets", self.burst),
            ));
        }
        if self.rate > 0 && self.burst < 1 {
            return Err(invalid("burst", "must be at least 1 when rate > 0"));
        }
        Ok(())
    }

    /// The bucket parameters of a limited policy, `None` for no limit.
    pub fn bucket(&self) -> Option<Bucket> {
        (self.rate > 0).then(|| Bucket::new(self.rate, self.burst.max(1)))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_limited() {
            write!(
                f,
                "{} packets/s, burst {}, scope {}",
                self.rate, self.burst, self.scope
            )
        } else {
            f.write_str("no limit")
        }
    }
}

/// GCRA parameters of a policy, in bucket clock units (1/16 ns), as `rl_policies` holds them.
///
/// A packet at `now` is allowed when `max(tat, now) + interval - now <= burst_time`, and then
/// `tat` becomes `max(tat, now) + interval`; a refused packet changes nothing. The interval is
/// rounded up, so the long-run rate never exceeds the configured one; with rate <= 1e7 it is at
/// most 1/1600 (0.07 %) below it. Mirrors `rl_charge()` in `bpf/ratelimit.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// What one packet costs: `ceil(UNITS_PER_SEC / rate)`.
    pub interval: u64,
    /// `burst * interval`: how far ahead of now a client's TAT may run.
    pub burst_time: u64,
}

impl Bucket {
    /// Parameters for `rate` (1..=MAX_RATE) packets/s and bursts of `burst` (1..=MAX_BURST).
    /// Out-of-range values are clamped (validation refuses them before they get here).
    pub fn new(rate: u64, burst: u64) -> Bucket {
        let rate = rate.clamp(1, MAX_RATE);
        let burst = burst.clamp(1, MAX_BURST);
        let interval = UNITS_PER_SEC.div_ceil(rate);
        Bucket {
            interval,
            burst_time: burst * interval,
        }
    }

    /// One packet at `now` (clock units) against the client's `tat` (`None`: a client without
    /// a bucket yet). Returns the new TAT if the packet is allowed, `None` if it is dropped.
    pub fn charge(&self, tat: Option<u64>, now: u64) -> Option<u64> {
        let Some(tat) = tat else {
            return Some(now + self.interval);
        };
        let next = tat.max(now) + self.interval;
        (next - now <= self.burst_time).then_some(next)
    }
}

/// A client's bucket clock value for `ns` nanoseconds of `bpf_ktime_get_ns()`.
pub fn clock_units(ns: u64) -> u64 {
    ns << TIME_SHIFT
}

/// Why a string is not a prefix an override can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(transparent)]
    Prefix(#[from] crate::cidr::CidrError),
    #[error("0.0.0.0/0 is every client: set the default policy instead (no cidr)")]
    Everything,
}

/// Parses an override's prefix with the shared strict parser ([`crate::cidr::parse_cidr`]).
/// `/0` is refused: the default policy is the policy of every client no override matches.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, CidrError> {
    let net = crate::cidr::parse_cidr(s)?;
    check_cidr(net)?;
    Ok(net)
}

/// Checks an already parsed prefix (no host bits, not /0).
pub fn check_cidr(net: Ipv4Net) -> Result<(), CidrError> {
    if net.prefix_len() == 0 {
        return Err(CidrError::Everything);
    }
    if net.trunc() != net {
        return Err(crate::cidr::CidrError::HostBits {
            given: net.to_string(),
            normalised: net.trunc(),
        }
        .into());
    }
    Ok(())
}

/// Every rate-limit policy an operator set: the default (no limit unless set) and the
/// per-CIDR overrides; a client falls under the longest prefix that contains it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    #[serde(default)]
    pub default: Policy,
    #[serde(default)]
    pub overrides: BTreeMap<Ipv4Net, Policy>,
}

impl RateLimits {
    /// Sets the policy of `cidr` (`None`: the default policy). Validates first; a refusal
    /// changes nothing.
    pub fn set(&mut self, cidr: Option<Ipv4Net>, policy: Policy) -> Result<(), StateError> {
        policy.validate()?;
        match cidr {
            None => self.default = policy,
            Some(net) => {
                check_cidr(net).map_err(|e| invalid("cidr", e.to_string()))?;
                if !self.overrides.contains_key(&net) && self.overrides.len() >= MAX_OVERRIDES {
                    return Err(invalid(
                        "cidr",
                        format!("at most {MAX_OVERRIDES} per-CIDR overrides"),
                    ));
                }
                self.overrides.insert(net, policy);
            }
        }
        Ok(())
    }

    /// Removes the override of `cidr`, or (`None`) resets the default policy to no limit.
    pub fn remove(&mut self, cidr: Option<Ipv4Net>) -> Result<(), StateError> {
        match cidr {
            None => {
                self.default = Policy::UNLIMITED;
                Ok(())
            }
            Some(net) => {
                self.overrides.remove(&net).map(|_| ()).ok_or_else(|| {
                    StateError::NotFound(format!("no rate-limit override for {net}"))
                })
            }
        }
    }

    /// The policy of `cidr` (`None`: the default).
    pub fn get(&self, cidr: Option<&Ipv4Net>) -> Option<&Policy> {
        match cidr {
            None => Some(&self.default),
            Some(net) => self.overrides.get(net),
        }
    }

    /// The policy a client falls under and the override it comes from (`None`: the default),
    /// as the data plane decides it: the longest matching prefix.
    pub fn policy_for(&self, addr: Ipv4Addr) -> (Option<Ipv4Net>, &Policy) {
        self.overrides
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or((None, &self.default), |(net, p)| (Some(*net), p))
    }

    /// Whether any policy limits anything.
    pub fn is_active(&self) -> bool {
        self.default.is_limited() || self.overrides.values().any(Policy::is_limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn limited(rate: u64, burst: u64, scope: Scope) -> Policy {
        Policy { rate, burst, scope }
    }

    /// Rate limits with the default policy `default` and then `overrides` set, in order.
    fn rate_limits(default: Policy, overrides: &[(&str, Policy)]) -> RateLimits {
        let mut rl = RateLimits::default();
        rl.set(None, default).expect("default");
        for (cidr, policy) in overrides {
            rl.set(Some(net(cidr)), *policy).expect(cidr);
        }
        rl
    }

    fn field_of(e: StateError) -> &'static str {
        match e {
            StateError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other}"),
        }
    }

    #[test]
    fn validation_names_the_field_and_refusals_change_nothing() {
        let mut rl = rate_limits(limited(100, 10, Scope::All), &[]);
        let before = rl.clone();
        for (policy, field) in [
            (limited(MAX_RATE + 1, 10, Scope::All), "rate"),
            (limited(100, 0, Scope::All), "burst"),
            (limited(100, MAX_BURST + 1, Scope::NewFlows), "burst"),
        ] {
            assert_eq!(field_of(rl.set(None, policy).expect_err("refused")), field);
            assert_eq!(
                field_of(
                    rl.set(Some(net("10.0.0.0/8")), policy)
                        .expect_err("refused")
                ),
                field
            );
        }
        for bad in ["10.0.0.1/8", "0.0.0.0/0"] {
            let e = rl
                .set(
                    Some(bad.parse().expect("parses")),
                    limited(1, 1, Scope::All),
                )
                .expect_err("refused");
            assert_eq!(field_of(e), "cidr");
        }
        assert!(matches!(
            rl.remove(Some(net("10.9.0.0/16"))),
            Err(StateError::NotFound(_))
        ));
        assert_eq!(rl, before);
        // Rate 0 is "no limit", whatever the burst.
        rl.set(Some(net("10.1.0.0/16")), limited(0, 0, Scope::All))
            .expect("an exempt prefix");
        assert!(!rl.overrides[&net("10.1.0.0/16")].is_limited());
    }

    #[test]
    fn overrides_are_bounded() {
        let mut rl = RateLimits::default();
        for i in 0..MAX_OVERRIDES as u32 {
            let n = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("prefix");
            rl.set(Some(n), limited(1, 1, Scope::All)).expect("room");
        }
        let e = rl
            .set(Some(net("11.0.0.0/8")), limited(1, 1, Scope::All))
            .expect_err("full");
        assert_eq!(field_of(e), "cidr");
        // Changing an existing override is still fine when full.
        rl.set(Some(net("10.0.0.0/24")), limited(5, 5, Scope::All))
            .expect("replace");
    }

    #[test]
    fn longest_prefix_wins_and_remove_resets() {
        let mut rl = rate_limits(
            limited(10, 1, Scope::All),
            &[
                ("10.1.0.0/16", limited(20, 2, Scope::All)),
                ("10.1.2.0/24", limited(30, 3, Scope::NewFlows)),
            ],
        );
        let rate_of = |rl: &RateLimits, a: &str| rl.policy_for(a.parse().expect("addr")).1.rate;
        assert_eq!(rate_of(&rl, "10.1.2.3"), 30);
        assert_eq!(rate_of(&rl, "10.1.9.9"), 20);
        assert_eq!(rate_of(&rl, "10.2.0.1"), 10);
        assert_eq!(
            rl.policy_for("10.1.2.3".parse().expect("addr")).0,
            Some(net("10.1.2.0/24"))
        );
        rl.remove(Some(net("10.1.2.0/24"))).expect("remove");
        assert_eq!(rate_of(&rl, "10.1.2.3"), 20);
        rl.remove(None).expect("reset default");
        assert_eq!(rl.default, Policy::UNLIMITED);
        assert!(rl.is_active(), "the /16 still limits");
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(parse_cidr("10.1.2.3"), Ok(net("10.1.2.3/32")));
        assert_eq!(
            parse_cidr("10.0.0.1/8").expect_err("host bits").to_string(),
            "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(parse_cidr("0.0.0.0/0"), Err(CidrError::Everything));
        for bad in ["", "10.0.0.0/33", "10.0.0/8", "fe80::/10", "10.0.0.0/x"] {
            assert!(
                matches!(parse_cidr(bad), Err(CidrError::Prefix(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn scope_names_round_trip() {
        for s in [Scope::All, Scope::NewFlows] {
            assert_eq!(s.to_string().parse::<Scope>(), Ok(s));
        }
        assert_eq!("NEW_FLOWS".parse::<Scope>(), Ok(Scope::NewFlows));
        assert!("syn".parse::<Scope>().is_err());
        let json = serde_json::to_string(&limited(1, 2, Scope::NewFlows)).expect("json");
        assert_eq!(json, r#"{"rate":1,"burst":2,"scope":"new-flows"}"#);
    }

    #[test]
    fn state_round_trips_through_json() {
        let rl = rate_limits(
            limited(100, 10, Scope::All),
            &[("192.0.2.0/24", limited(5, 1, Scope::NewFlows))],
        );
        let json = serde_json::to_string(&rl).expect("json");
        let back: RateLimits = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, rl);
        let empty: RateLimits = serde_json::from_str("{}").expect("defaults");
        assert_eq!(empty, RateLimits::default());
    }

    #[test]
    fn bucket_parameters() {
        let b = Bucket::new(1, 1);
        assert_eq!(b.interval, 16_000_000_000);
        assert_eq!(b.burst_time, 16_000_000_000);
        // 3 packets/s: 5333333333.33 units, rounded up.
        assert_eq!(Bucket::new(3, 1).interval, 5_333_333_334);
        // The extremes stay far from overflow.
        let b = Bucket::new(1, MAX_BURST);
        assert_eq!(b.burst_time, 16_000_000_000 * MAX_BURST);
        assert_eq!(Bucket::new(MAX_RATE, 1).interval, 1600);
        assert_eq!(Policy::UNLIMITED.bucket(), None);
    }

    #[test]
    fn burst_then_one_per_interval() {
        let b = Bucket::new(10, 5);
        let t0 = clock_units(1_000_000_000);
        let mut tat = None;
        for i in 0..5 {
            tat = Some(
                b.charge(tat, t0)
                    .unwrap_or_else(|| panic!("packet {i} of the burst")),
            );
        }
        assert_eq!(
            b.charge(tat, t0),
            None,
            "the sixth packet at once is dropped"
        );
        // 100 ms later exactly one more packet has been earned.
        let t1 = t0 + clock_units(100_000_000);
        tat = b.charge(tat, t1);
        assert!(tat.is_some());
        assert_eq!(b.charge(tat, t1), None);
    }

    /// Allowed packets of a client that sends at `arrivals` (ns, sorted).
    fn run(b: &Bucket, arrivals: &[u64]) -> Vec<u64> {
        let mut tat = None;
        let mut allowed = Vec::new();
        for &t in arrivals {
            if let Some(next) = b.charge(tat, clock_units(t)) {
                tat = Some(next);
                allowed.push(t);
            }
        }
        allowed
    }

    /// A bucket of any rate and a burst up to `max_burst`, with its rate and burst.
    fn buckets(max_burst: u64) -> impl Strategy<Value = (Bucket, u64, u64)> {
        (1u64..=MAX_RATE, 1u64..=max_burst).prop_map(|(r, b)| (Bucket::new(r, b), r, b))
    }

    /// Arrival times from `start`, each `step` after the one before.
    fn arrivals(start: u64, steps: impl Iterator<Item = u64>) -> Vec<u64> {
        steps
            .scan(start, |t, step| {
                *t += step;
                Some(*t)
            })
            .collect()
    }

    proptest! {
        /// In any window, at most burst + rate * window packets pass.
        #[test]
        fn never_above_rate_plus_burst(
            (b, rate, burst) in buckets(1000),
            start in 0u64..(1u64 << 50),
            gaps in proptest::collection::vec(0u64..2_000_000, 1..400),
        ) {
            let allowed = run(&b, &arrivals(start, gaps.into_iter()));
            for (i, &from) in allowed.iter().enumerate() {
                for (j, &to) in allowed.iter().enumerate().skip(i) {
                    let window = u128::from(to - from);
                    let passed = (j - i + 1) as u128;
                    // passed <= burst + window * rate / 1e9, in integers.
                    prop_assert!(
                        passed * 1_000_000_000 <= u128::from(burst) * 1_000_000_000 + window * u128::from(rate),
                        "{passed} packets in {window} ns at {rate}/s burst {burst}"
                    );
                }
            }
        }

        /// A client that never sends faster than the rate (in whole ns) is never dropped.
        #[test]
        fn within_the_rate_never_dropped(
            (b, rate, _) in buckets(1000),
            start in 0u64..(1u64 << 50),
            extra in proptest::collection::vec(0u64..1_000_000, 1..300),
        ) {
            let spacing = 1_000_000_000u64.div_ceil(rate);
            let arrivals = arrivals(start, extra.into_iter().map(|e| spacing + e));
            prop_assert_eq!(run(&b, &arrivals).len(), arrivals.len());
        }

        /// A saturating client gets burst + rate * time, exactly up to the rounding of interval.
        #[test]
        fn saturating_client_gets_the_rate(
            (b, rate, burst) in buckets(MAX_BURST),
            start in 0u64..(1u64 << 59),
            millis in 1u64..5_000,
        ) {
            let t0 = clock_units(start);
            let t1 = t0 + clock_units(millis * 1_000_000);
            // Count analytically: at t0 a full bucket gives `burst`, then one per interval
            // until t1 (what a client sending continuously gets).
            let mut tat = None;
            let mut passed = 0u64;
            while passed < burst {
                tat = b.charge(tat, t0);
                prop_assert!(tat.is_some());
                passed += 1;
            }
            prop_assert_eq!(b.charge(tat, t0), None);
            let tat = tat.unwrap_or_default();
            // Packets allowed in (t0, t1]: those whose start slot max(tat, now) is <= t1 - ...
            let later = (t1 + b.burst_time - tat) / b.interval;
            let total = passed + later;
            let exact = u128::from(burst) + u128::from(millis) * u128::from(rate) / 1000;
            let total = u128::from(total);
            prop_assert!(total <= exact + 1, "{total} > {exact}");
            // Rounding the interval up costs at most 1/1600 of the rate (plus one packet).
            prop_assert!(total * 1600 + 1600 >= exact * 1599, "{total} << {exact}");
        }

        /// Nothing overflows at the extremes (36 years of uptime, the largest burst).
        #[test]
        fn no_overflow(
            (b, _, _) in buckets(MAX_BURST),
            now_ns in 0u64..(1u64 << 60),
            ahead in 0u64..=1_000_000,
        ) {
            let now = clock_units(now_ns);
            // The largest TAT a client can have: now + burst_time.
            let tat = now.checked_add(b.burst_time.min(ahead * b.interval));
            prop_assert!(tat.is_some());
            let next = tat.and_then(|t| t.max(now).checked_add(b.interval));
            prop_assert!(next.is_some());
        }
    }
}
