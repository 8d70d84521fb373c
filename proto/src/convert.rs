//! The one place the model and protobuf meet: `TryFrom<pb::X>` for model types (every field
//! destructured, so a new proto field fails to compile until it is handled here) and
//! `From<model>` for pb messages. Errors name the field of the request they are found in.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ipnet::Ipv4Net;
use xdplb_model::firewall::{Action, Rule};
use xdplb_model::health::{default_payload, AllDown, HealthCheck, HealthKind};
use xdplb_model::ratelimit::{CidrPolicy, Policy, Scope, MAX_BURST, MAX_RATE};
use xdplb_model::state::{invalid, Mode, Protocol, StateError, VipKey};

use crate::pb;

/// A request field that does not hold what it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

impl FieldError {
    /// The same error one message further out: `cidr` within `rules[3]` is `rules[3].cidr`.
    pub fn within(self, outer: &str) -> FieldError {
        FieldError {
            field: format!("{outer}.{}", self.field),
            message: self.message,
        }
    }
}

/// A [`FieldError`] naming `field`.
pub fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses an IPv4 address field.
pub fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, FieldError> {
    s.parse()
        .map_err(|_| field_error(field, format!("'{s}' is not an IPv4 address")))
}

/// Parses a port field (1..=65535).
pub fn parse_port(field: &str, p: u32) -> Result<u16, FieldError> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(field_error(field, format!("{p} is not a port (1..=65535)"))),
    }
}

/// Parses the `VipKey` message found in field `field`.
pub fn parse_vip_key(field: &str, key: Option<&pb::VipKey>) -> Result<VipKey, FieldError> {
    let pb::VipKey {
        address,
        port,
        protocol,
    } = key.ok_or_else(|| field_error(field, "missing"))?;
    let ip = parse_ipv4(&format!("{field}.address"), address)?;
    // Every RPC refuses what AddVip would refuse, so a remove or a list of a VIP that could
    // never exist is InvalidArgument rather than NotFound.
    xdplb_model::state::validate_vip_addr(&SocketAddrV4::new(ip, 1))
        .map_err(|m| field_error(format!("{field}.address"), m))?;
    let port = parse_port(&format!("{field}.port"), *port)?;
    let proto = match pb::Protocol::try_from(*protocol) {
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        _ => {
            return Err(field_error(
                format!("{field}.protocol"),
                "must be TCP or UDP",
            ))
        }
    };
    Ok(VipKey {
        addr: SocketAddrV4::new(ip, port),
        proto,
    })
}

impl TryFrom<&pb::VipKey> for VipKey {
    type Error = FieldError;
    /// A VIP key read from a message in field `vip`.
    fn try_from(key: &pb::VipKey) -> Result<Self, FieldError> {
        parse_vip_key("vip", Some(key))
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
        }
    }
}

impl From<&VipKey> for pb::VipKey {
    fn from(k: &VipKey) -> Self {
        pb::VipKey {
            address: k.addr.ip().to_string(),
            port: u32::from(k.addr.port()),
            protocol: pb::Protocol::from(k.proto) as i32,
        }
    }
}

/// The forwarding mode of field `mode` (UNSPECIFIED: NAT).
pub fn parse_mode(m: i32) -> Result<Mode, FieldError> {
    match pb::ForwardingMode::try_from(m) {
        Ok(pb::ForwardingMode::Unspecified | pb::ForwardingMode::Nat) => Ok(Mode::Nat),
        Ok(pb::ForwardingMode::L2dsr) => Ok(Mode::L2dsr),
        Ok(pb::ForwardingMode::Ipip) => Ok(Mode::Ipip),
        Err(_) => Err(field_error("mode", format!("unknown forwarding mode {m}"))),
    }
}

impl From<Mode> for pb::ForwardingMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Nat => pb::ForwardingMode::Nat,
            Mode::L2dsr => pb::ForwardingMode::L2dsr,
            Mode::Ipip => pb::ForwardingMode::Ipip,
        }
    }
}

/// The action of a firewall rule; UNSPECIFIED is refused.
pub fn parse_action(field: impl Into<String>, raw: i32) -> Result<Action, FieldError> {
    match pb::FirewallAction::try_from(raw) {
        Ok(pb::FirewallAction::Block) => Ok(Action::Block),
        Ok(pb::FirewallAction::Allow) => Ok(Action::Allow),
        _ => Err(field_error(field, "must be BLOCK or ALLOW")),
    }
}

impl From<Action> for pb::FirewallAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Block => pb::FirewallAction::Block,
            Action::Allow => pb::FirewallAction::Allow,
        }
    }
}

/// The scope of a rate-limit policy (UNSPECIFIED: ALL).
pub fn parse_scope(field: &str, raw: i32) -> Result<Scope, FieldError> {
    match pb::RateLimitScope::try_from(raw) {
        Ok(pb::RateLimitScope::Unspecified | pb::RateLimitScope::All) => Ok(Scope::All),
        Ok(pb::RateLimitScope::NewFlows) => Ok(Scope::NewFlows),
        Err(_) => Err(field_error(
            field,
            format!("unknown scope {raw} (ALL or NEW_FLOWS)"),
        )),
    }
}

impl From<Scope> for pb::RateLimitScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::All => pb::RateLimitScope::All,
            Scope::NewFlows => pb::RateLimitScope::NewFlows,
        }
    }
}

/// A prefix field, read with the model's strict parser ([`xdplb_model::cidr::parse_cidr`]); a
/// refusal names `field` (`rules[3].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?`).
pub fn parse_cidr(field: impl Into<String>, s: &str) -> Result<Ipv4Net, FieldError> {
    xdplb_model::cidr::parse_cidr(s).map_err(|e| field_error(field, e.to_string()))
}

/// The clients field of a rate-limit policy: `""` is the default policy, anything else an
/// override's prefix ([`xdplb_model::ratelimit::parse_cidr`]: not /0).
pub fn parse_rate_limit_cidr(field: &str, s: &str) -> Result<Option<Ipv4Net>, FieldError> {
    if s.is_empty() {
        return Ok(None);
    }
    xdplb_model::ratelimit::parse_cidr(s)
        .map(Some)
        .map_err(|e| field_error(field, e.to_string()))
}

/// A packet count field: not negative, at most `max` (in `unit`).
fn parse_count(field: &str, v: i64, max: u64, unit: &str) -> Result<u64, FieldError> {
    let n = u64::try_from(v).map_err(|_| field_error(field, format!("{v} is negative")))?;
    if n > max {
        return Err(field_error(
            field,
            format!("{n} is above the maximum {max} {unit}"),
        ));
    }
    Ok(n)
}

impl TryFrom<&pb::FirewallRule> for Rule {
    type Error = FieldError;

    /// A rule of a request; `id` and `hits` are for replies and ignored. Errors name `cidr` or
    /// `action`: place them in the request with [`FieldError::within`] (`rules[3]`).
    fn try_from(r: &pb::FirewallRule) -> Result<Self, FieldError> {
        let pb::FirewallRule {
            cidr,
            action,
            id: _,
            hits: _,
        } = r;
        Ok(Rule {
            net: parse_cidr("cidr", cidr)?,
            action: parse_action("action", *action)?,
        })
    }
}

impl TryFrom<&pb::RateLimitPolicy> for CidrPolicy {
    type Error = FieldError;

    /// A policy as SetRateLimit sends it, checked whole (UNSPECIFIED scope: ALL). Errors name the
    /// field of the message: place them with [`FieldError::within`] (`policy`).
    fn try_from(p: &pb::RateLimitPolicy) -> Result<Self, FieldError> {
        let pb::RateLimitPolicy {
            cidr,
            rate,
            burst,
            scope,
        } = p;
        let cidr = parse_rate_limit_cidr("cidr", cidr)?;
        let rate = parse_count("rate", *rate, MAX_RATE, "packets/s")?;
        let burst = parse_count("burst", *burst, MAX_BURST, "packets")?;
        if rate > 0 && burst < 1 {
            return Err(field_error("burst", "must be at least 1 when rate > 0"));
        }
        let scope = parse_scope("scope", *scope)?;
        Ok(CidrPolicy {
            cidr,
            policy: Policy { rate, burst, scope },
        })
    }
}

impl TryFrom<&pb::SetRateLimitRequest> for CidrPolicy {
    type Error = FieldError;

    /// The policy of a SetRateLimit request, checked whole before anything changes.
    fn try_from(req: &pb::SetRateLimitRequest) -> Result<Self, FieldError> {
        let pb::SetRateLimitRequest { policy } = req;
        let p = policy
            .as_ref()
            .ok_or_else(|| field_error("policy", "missing"))?;
        CidrPolicy::try_from(p).map_err(|e| e.within("policy"))
    }
}

impl From<&CidrPolicy> for pb::RateLimitPolicy {
    /// The API message of a policy (counts above `i64::MAX` cannot be set, so cannot occur).
    fn from(c: &CidrPolicy) -> Self {
        let CidrPolicy {
            cidr,
            policy: Policy { rate, burst, scope },
        } = c;
        pb::RateLimitPolicy {
            cidr: cidr.map(|n| n.to_string()).unwrap_or_default(),
            rate: i64::try_from(*rate).unwrap_or(i64::MAX),
            burst: i64::try_from(*burst).unwrap_or(i64::MAX),
            scope: pb::RateLimitScope::from(*scope) as i32,
        }
    }
}

impl TryFrom<&pb::HealthCheck> for HealthCheck {
    type Error = StateError;

    /// Reads the API message (zero values are the defaults); validates the result.
    fn try_from(m: &pb::HealthCheck) -> Result<Self, StateError> {
        let pb::HealthCheck {
            kind: raw_kind,
            interval_ms,
            timeout_ms,
            rise,
            fall,
            http_path,
            http_expect_status,
            udp_payload,
            all_down: raw_all_down,
        } = m;
        let d = HealthCheck::default();
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        // A field of another kind of check is a mistake (a typo'd kind, a half-edited
        // request), not something to ignore silently.
        let kind_name = pb::HealthCheckKind::try_from(*raw_kind)
            .map(|k| k.as_str_name())
            .unwrap_or("unknown");
        let stray = [
            (
                "health.http_path",
                !http_path.is_empty(),
                pb::HealthCheckKind::Http,
            ),
            (
                "health.http_expect_status",
                *http_expect_status != 0,
                pb::HealthCheckKind::Http,
            ),
            (
                "health.udp_payload",
                !udp_payload.is_empty(),
                pb::HealthCheckKind::Udp,
            ),
        ];
        for (field, set, owner) in stray {
            if set && *raw_kind != owner as i32 {
                return Err(invalid(
                    field,
                    format!(
                        "only applies to {} checks, not to kind {kind_name}",
                        owner.as_str_name()
                    ),
                ));
            }
        }
        let kind = match pb::HealthCheckKind::try_from(*raw_kind) {
            Ok(pb::HealthCheckKind::None) => HealthKind::None,
            Ok(pb::HealthCheckKind::Tcp) => HealthKind::Tcp,
            Ok(pb::HealthCheckKind::Http) => HealthKind::Http {
                path: if http_path.is_empty() {
                    "/".to_string()
                } else {
                    http_path.clone()
                },
                expect_status: u16::try_from(or(*http_expect_status, 200)).map_err(|_| {
                    invalid(
                        "health.http_expect_status",
                        format!("{http_expect_status} is not an HTTP status"),
                    )
                })?,
            },
            Ok(pb::HealthCheckKind::Udp) => HealthKind::Udp {
                payload: if udp_payload.is_empty() {
                    default_payload()
                } else {
                    udp_payload.clone()
                },
            },
            Err(_) => {
                return Err(invalid(
                    "health.kind",
                    format!("unknown health check kind {raw_kind}"),
                ))
            }
        };
        let all_down = match pb::AllDownPolicy::try_from(*raw_all_down) {
            Ok(pb::AllDownPolicy::FailOpen) => AllDown::FailOpen,
            Ok(pb::AllDownPolicy::Drop) => AllDown::Drop,
            Err(_) => {
                return Err(invalid(
                    "health.all_down",
                    format!("unknown all-down policy {raw_all_down}"),
                ))
            }
        };
        let millis = |v: u32, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_millis(u64::from(v))
            }
        };
        let check = HealthCheck {
            kind,
            interval: millis(*interval_ms, d.interval),
            timeout: millis(*timeout_ms, d.timeout),
            rise: or(*rise, d.rise),
            fall: or(*fall, d.fall),
            all_down,
        };
        check.validate()?;
        Ok(check)
    }
}

impl From<&HealthCheck> for pb::HealthCheck {
    /// The API message of a check.
    fn from(c: &HealthCheck) -> Self {
        let HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
            all_down,
        } = c;
        let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let mut m = pb::HealthCheck {
            kind: pb::HealthCheckKind::None as i32,
            interval_ms: ms(interval),
            timeout_ms: ms(timeout),
            rise: *rise,
            fall: *fall,
            all_down: match all_down {
                AllDown::FailOpen => pb::AllDownPolicy::FailOpen,
                AllDown::Drop => pb::AllDownPolicy::Drop,
            } as i32,
            ..Default::default()
        };
        match kind {
            HealthKind::None => {}
            HealthKind::Tcp => m.kind = pb::HealthCheckKind::Tcp as i32,
            HealthKind::Http {
                path,
                expect_status,
            } => {
                m.kind = pb::HealthCheckKind::Http as i32;
                m.http_path = path.clone();
                m.http_expect_status = u32::from(*expect_status);
            }
            HealthKind::Udp { payload } => {
                m.kind = pb::HealthCheckKind::Udp as i32;
                m.udp_payload = payload.clone();
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_message_defaults_and_round_trip() {
        let c = HealthCheck::try_from(&pb::HealthCheck {
            kind: pb::HealthCheckKind::Http as i32,
            ..Default::default()
        })
        .expect("zero values are defaults");
        assert_eq!(
            c,
            HealthCheck {
                kind: HealthKind::Http {
                    path: "/".into(),
                    expect_status: 200
                },
                ..HealthCheck::default()
            }
        );
        let udp = HealthCheck::try_from(&pb::HealthCheck {
            kind: pb::HealthCheckKind::Udp as i32,
            interval_ms: 200,
            timeout_ms: 100,
            rise: 1,
            fall: 5,
            all_down: pb::AllDownPolicy::Drop as i32,
            ..Default::default()
        })
        .expect("udp");
        assert_eq!(
            udp.kind,
            HealthKind::Udp {
                payload: "ping".into()
            }
        );
        assert_eq!(
            HealthCheck::try_from(&pb::HealthCheck::from(&udp)).expect("round trip"),
            udp
        );
        let e = HealthCheck::try_from(&pb::HealthCheck {
            kind: pb::HealthCheckKind::Tcp as i32,
            interval_ms: 200,
            timeout_ms: 300,
            ..Default::default()
        })
        .expect_err("timeout above interval");
        assert!(
            matches!(
                e,
                StateError::InvalidArgument {
                    field: "health.timeout_ms",
                    ..
                }
            ),
            "{e}"
        );
        assert!(HealthCheck::try_from(&pb::HealthCheck {
            kind: 9,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn fields_of_another_kind_are_refused_by_name() {
        let stray = |m: pb::HealthCheck| match HealthCheck::try_from(&m) {
            Err(StateError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let tcp = pb::HealthCheckKind::Tcp as i32;
        let http = pb::HealthCheckKind::Http as i32;
        let udp = pb::HealthCheckKind::Udp as i32;
        let with = |kind: i32| pb::HealthCheck {
            kind,
            ..Default::default()
        };
        assert_eq!(
            stray(pb::HealthCheck {
                http_path: "/healthz".into(),
                ..with(tcp)
            }),
            "health.http_path"
        );
        assert_eq!(
            stray(pb::HealthCheck {
                http_expect_status: 204,
                ..with(udp)
            }),
            "health.http_expect_status"
        );
        assert_eq!(
            stray(pb::HealthCheck {
                udp_payload: "ping".into(),
                ..with(http)
            }),
            "health.udp_payload"
        );
        assert_eq!(
            stray(pb::HealthCheck {
                http_path: "/".into(),
                ..with(pb::HealthCheckKind::None as i32)
            }),
            "health.http_path"
        );
        // Each kind still takes its own fields.
        HealthCheck::try_from(&pb::HealthCheck {
            http_path: "/healthz".into(),
            http_expect_status: 204,
            ..with(http)
        })
        .expect("http fields on an http check");
        HealthCheck::try_from(&pb::HealthCheck {
            udp_payload: "ping".into(),
            ..with(udp)
        })
        .expect("udp payload on a udp check");
    }

    fn rule(cidr: &str, action: pb::FirewallAction) -> pb::FirewallRule {
        pb::FirewallRule {
            cidr: cidr.into(),
            action: action as i32,
            id: 7,
            hits: 9,
        }
    }

    #[test]
    fn firewall_rules_read_and_refusals_name_the_field() {
        assert_eq!(
            Rule::try_from(&rule("10.0.0.0/8", pb::FirewallAction::Block)),
            Ok(Rule {
                net: "10.0.0.0/8".parse().expect("prefix"),
                action: Action::Block
            })
        );
        assert_eq!(
            Rule::try_from(&rule("192.0.2.7", pb::FirewallAction::Allow)).map(|r| r.net),
            Ok("192.0.2.7/32".parse().expect("prefix"))
        );
        let refusal = |r: pb::FirewallRule| {
            Rule::try_from(&r)
                .expect_err("refused")
                .within("rules[3]")
                .to_string()
        };
        assert_eq!(
            refusal(rule("10.0.0.1/8", pb::FirewallAction::Block)),
            "rules[3].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            refusal(rule("10.0.0.0/8", pb::FirewallAction::Unspecified)),
            "rules[3].action: must be BLOCK or ALLOW"
        );
        assert_eq!(
            refusal(rule("nonsense", pb::FirewallAction::Unspecified)),
            "rules[3].cidr: 'nonsense' is not an IPv4 prefix (expected A.B.C.D/LEN or A.B.C.D)",
            "the prefix is checked first"
        );
    }

    fn set(cidr: &str, rate: i64, burst: i64, scope: i32) -> pb::SetRateLimitRequest {
        pb::SetRateLimitRequest {
            policy: Some(pb::RateLimitPolicy {
                cidr: cidr.into(),
                rate,
                burst,
                scope,
            }),
        }
    }

    #[test]
    fn rate_limit_policies_read_and_round_trip() {
        let all = pb::RateLimitScope::All as i32;
        let c = CidrPolicy::try_from(&set("", 100, 10, all)).expect("default");
        assert_eq!(
            c,
            CidrPolicy {
                cidr: None,
                policy: Policy {
                    rate: 100,
                    burst: 10,
                    scope: Scope::All
                }
            }
        );
        let c = CidrPolicy::try_from(&set(
            "10.1.0.0/16",
            5,
            1,
            pb::RateLimitScope::NewFlows as i32,
        ))
        .expect("override");
        assert_eq!(c.cidr, Some("10.1.0.0/16".parse().expect("prefix")));
        assert_eq!(c.policy.scope, Scope::NewFlows);
        assert_eq!(
            CidrPolicy::try_from(&pb::RateLimitPolicy::from(&c)),
            Ok(c),
            "round trip"
        );
        // Unspecified scope is "all"; rate 0 needs no burst.
        let c = CidrPolicy::try_from(&set("10.2.0.0/16", 0, 0, 0)).expect("no limit");
        assert_eq!((c.policy.rate, c.policy.scope), (0, Scope::All));
    }

    #[test]
    fn rate_limit_refusals_name_the_field_as_lbd_did() {
        let all = pb::RateLimitScope::All as i32;
        for (req, field) in [
            (set("", -1, 10, all), "policy.rate"),
            (set("", 10, -5, all), "policy.burst"),
            (set("", 10, 0, all), "policy.burst"),
            (set("", 10_000_001, 10, all), "policy.rate"),
            (set("", 10, 1_000_001, all), "policy.burst"),
            (set("", 10, 1, 9), "policy.scope"),
            (set("10.0.0.1/8", 10, 1, all), "policy.cidr"),
            (set("0.0.0.0/0", 10, 1, all), "policy.cidr"),
            (set("nonsense", 10, 1, all), "policy.cidr"),
            (pb::SetRateLimitRequest { policy: None }, "policy"),
        ] {
            let e = CidrPolicy::try_from(&req).expect_err("refused");
            assert_eq!(e.field, field, "{req:?}");
        }
        let message = |req: pb::SetRateLimitRequest| {
            CidrPolicy::try_from(&req).expect_err("refused").to_string()
        };
        for (req, want) in [
            (
                set("10.0.0.1/8", 10, 1, all),
                "policy.cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
            ),
            (
                set("0.0.0.0/0", 10, 1, all),
                "policy.cidr: 0.0.0.0/0 is every client: set the default policy instead (no cidr)",
            ),
            (set("", -1, 10, all), "policy.rate: -1 is negative"),
            (
                set("", 10_000_001, 10, all),
                "policy.rate: 10000001 is above the maximum 10000000 packets/s",
            ),
            (
                set("", 10, 1_000_001, all),
                "policy.burst: 1000001 is above the maximum 1000000 packets",
            ),
            (
                set("", 10, 0, all),
                "policy.burst: must be at least 1 when rate > 0",
            ),
            (
                set("", 10, 1, 9),
                "policy.scope: unknown scope 9 (ALL or NEW_FLOWS)",
            ),
            (pb::SetRateLimitRequest { policy: None }, "policy: missing"),
        ] {
            assert_eq!(message(req), want);
        }
        assert_eq!(
            parse_rate_limit_cidr("cidr", "10.0.0.1/8")
                .expect_err("host bits")
                .field,
            "cidr"
        );
        assert_eq!(parse_rate_limit_cidr("cidr", ""), Ok(None));
    }
}
