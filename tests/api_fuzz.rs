//! Every RPC field is validated: a property test sends thousands of random requests, valid and
//! invalid, over every service (Vips with modes and health checks, Backends, Firewall,
//! RateLimits, Stats) to lbd's real gRPC services, served in-process on a Unix socket in front
//! of a real `Controller`, `Reconciler` and loaded XDP program (not attached; in a private
//! network namespace, since backends' next hops are looked up and made managed neighbours).
//!
//! The generator builds each field either valid or invalid, and knows which fields it spoiled.
//! For every request:
//! - a request with a spoiled field is refused with `InvalidArgument` whose message starts with
//!   the name of one of those fields (`backend.weight: ...`, `rules[3].cidr: ...`);
//! - a refused request (any code) leaves the listed state, every List RPC encoded with prost,
//!   byte for byte as it was;
//! - a request with every field valid is never refused with `InvalidArgument` unless a rule
//!   that depends on the state or on several fields applies (counted, and the message must still
//!   name a field).
//!
//! `API_FUZZ_CASES` sets the number of sequences (default 40, of 60..=100 requests each).

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

use xdplb_proto::pb;
use xdplb_proto::pb::{
    backends_client::BackendsClient, firewall_client::FirewallClient,
    rate_limits_client::RateLimitsClient, stats_client::StatsClient, vips_client::VipsClient,
};
use xdplb_testkit::grpc::unix_channel;

use common::served::Served;
use xdplb_testkit::netns::NetNs;

// ---------------------------------------------------------------------------------------------
// Fields: each strategy yields (value, spoiled?) so a request knows its bad fields.

/// A field value and whether the generator made it invalid.
type F<T> = (T, bool);

/// Valid nine times out of ten (a request has several fields: about a third of them end up
/// with at least one invalid field).
fn field<T: std::fmt::Debug + Clone + 'static>(
    valid: impl Strategy<Value = T> + 'static,
    invalid: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<F<T>> {
    prop_oneof![
        9 => valid.prop_map(|v| (v, false)),
        1 => invalid.prop_map(|v| (v, true)),
    ]
    .boxed()
}

fn not_unicast() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0.0.0.0".to_string()),
        Just("255.255.255.255".to_string()),
        Just("224.0.0.1".to_string()),
        Just("239.1.2.3".to_string()),
        Just("127.0.0.1".to_string()),
        Just("127.9.9.9".to_string()),
    ]
}

/// Strings that are not an IPv4 address by any reading.
fn not_ipv4() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("10.0.0".to_string()),
        Just("10.0.0.256".to_string()),
        Just("10.0.0.1.2".to_string()),
        Just("::1".to_string()),
        Just(" 10.0.0.1".to_string()),
        Just("10.0.0.1 ".to_string()),
        Just("10.0.0.1/32".to_string()),
        Just("10.0.0.1:80".to_string()),
        "[g-z]{1,10}",
        "[g-z][0-9.]{0,15}",
    ]
}

fn vip_ip() -> BoxedStrategy<F<String>> {
    field(
        prop_oneof![Just("10.0.0.1"), Just("10.0.0.2"), Just("192.0.2.10")].prop_map(String::from),
        prop_oneof![not_ipv4(), not_unicast()],
    )
}

fn backend_ip() -> BoxedStrategy<F<String>> {
    field(
        prop_oneof![Just("10.1.0.1"), Just("10.1.0.2"), Just("10.1.0.3")].prop_map(String::from),
        prop_oneof![not_ipv4(), not_unicast()],
    )
}

fn port() -> BoxedStrategy<F<u32>> {
    field(
        prop_oneof![Just(80u32), Just(8080), Just(53), 1u32..=65535],
        prop_oneof![Just(0u32), 65536u32..=u32::MAX],
    )
}

/// An enum field: `valid` values, or anything outside them.
fn enum_field(valid: &'static [i32]) -> BoxedStrategy<F<i32>> {
    field(
        proptest::sample::select(valid),
        prop_oneof![any::<i32>(), -3i32..=8]
            .prop_filter("outside the valid set", move |v| !valid.contains(v)),
    )
}

/// A generated VipKey: address, port, protocol (None: the key is missing) and whether the
/// key itself is missing.
type GenKey = (Option<(F<String>, F<u32>, F<i32>)>, bool);
/// A generated firewall rule: cidr and action.
type GenRule = (F<String>, F<i32>);

/// A request and the names of the fields the generator spoiled.
#[derive(Debug, Clone)]
struct Case {
    req: Req,
    bad: Vec<String>,
}

#[derive(Debug, Clone)]
enum Req {
    AddVip(pb::AddVipRequest),
    RemoveVip(pb::RemoveVipRequest),
    SetVipMode(pb::SetVipModeRequest),
    SetVipHealth(pb::SetVipHealthRequest),
    ListVips,
    AddBackend(pb::AddBackendRequest),
    AddBackends(pb::AddBackendsRequest),
    RemoveBackend(pb::RemoveBackendRequest),
    SetBackendWeight(pb::SetBackendWeightRequest),
    DrainBackend(pb::DrainBackendRequest),
    UndrainBackend(pb::UndrainBackendRequest),
    ListBackends(pb::ListBackendsRequest),
    AddRules(Vec<pb::AddFirewallRulesRequest>),
    RemoveRules(Vec<pb::RemoveFirewallRulesRequest>),
    ReplaceRules(Vec<pb::ReplaceFirewallRulesRequest>),
    ListRules(pb::ListFirewallRulesRequest),
    SetRateLimit(pb::SetRateLimitRequest),
    RemoveRateLimit(pb::RemoveRateLimitRequest),
    ListRateLimits,
    TopLimitedClients(pb::TopLimitedClientsRequest),
    GetStats,
    WatchStats(pb::WatchStatsRequest),
}

impl Req {
    fn name(&self) -> &'static str {
        match self {
            Req::AddVip(_) => "AddVip",
            Req::RemoveVip(_) => "RemoveVip",
            Req::SetVipMode(_) => "SetVipMode",
            Req::SetVipHealth(_) => "SetVipHealth",
            Req::ListVips => "ListVips",
            Req::AddBackend(_) => "AddBackend",
            Req::AddBackends(_) => "AddBackends",
            Req::RemoveBackend(_) => "RemoveBackend",
            Req::SetBackendWeight(_) => "SetBackendWeight",
            Req::DrainBackend(_) => "DrainBackend",
            Req::UndrainBackend(_) => "UndrainBackend",
            Req::ListBackends(_) => "ListBackends",
            Req::AddRules(_) => "AddRules",
            Req::RemoveRules(_) => "RemoveRules",
            Req::ReplaceRules(_) => "ReplaceRules",
            Req::ListRules(_) => "ListRules",
            Req::SetRateLimit(_) => "SetRateLimit",
            Req::RemoveRateLimit(_) => "RemoveRateLimit",
            Req::ListRateLimits => "ListRateLimits",
            Req::TopLimitedClients(_) => "TopLimitedClients",
            Req::GetStats => "GetStats",
            Req::WatchStats(_) => "WatchStats",
        }
    }
}

/// Collects spoiled field names.
#[derive(Default)]
struct Bad(Vec<String>);

impl Bad {
    fn check<T>(&mut self, name: impl Into<String>, f: F<T>) -> T {
        if f.1 {
            self.0.push(name.into());
        }
        f.0
    }
}

/// A VipKey message (or none: then `field` itself is spoiled).
fn vip_key() -> BoxedStrategy<GenKey> {
    prop_oneof![
        12 => (vip_ip(), port(), enum_field(&[1, 2])).prop_map(|k| (Some(k), false)),
        1 => Just((None, true)),
    ]
    .boxed()
}

fn build_key(bad: &mut Bad, field: &str, k: GenKey) -> Option<pb::VipKey> {
    let (key, missing) = k;
    if missing {
        bad.0.push(field.to_string());
    }
    key.map(|(a, p, proto)| pb::VipKey {
        address: bad.check(format!("{field}.address"), a),
        port: bad.check(format!("{field}.port"), p),
        protocol: bad.check(format!("{field}.protocol"), proto),
    })
}

/// A HealthCheck: each field valid or not, with the rules that tie fields together (the
/// timeout must be below the interval, zero meaning the default) worked out here.
fn health() -> BoxedStrategy<(pb::HealthCheck, Vec<String>)> {
    (
        enum_field(&[0, 1, 2, 3]),
        prop_oneof![Just(0u32), 100u32..=3_600_000, 1u32..100, 3_600_001u32..=u32::MAX],
        prop_oneof![Just(0u32), Just(1), Just(50), Just(499), Just(500), Just(999), Just(1000), Just(5000), any::<u32>()],
        field(0u32..=100, 101u32..=u32::MAX),
        field(0u32..=100, 101u32..=u32::MAX),
        prop_oneof![
            3 => prop_oneof![Just(String::new()), Just("/".to_string()), Just("/healthz".to_string()), "/[a-z0-9_/?=.-]{0,40}"].prop_map(|p| (p, false)),
            1 => prop_oneof![Just("healthz".to_string()), Just("/a b".to_string()), Just(format!("/{}", "x".repeat(1100))), Just("/é".to_string())].prop_map(|p| (p, true)),
        ],
        field(prop_oneof![Just(0u32), 100u32..=599], prop_oneof![1u32..100, 600u32..=u32::MAX]),
        field(
            prop_oneof![Just(String::new()), Just("ping".to_string()), Just("x".repeat(1024))],
            Just("x".repeat(1025)),
        ),
        enum_field(&[0, 1]),
        // Whether the fields of the other kinds are sent too (then refused); mostly not.
        prop::bool::weighted(0.15),
    )
        .prop_map(|(kind, interval, timeout, rise, fall, path, status, payload, all_down, stray)| {
            let mut bad = Bad::default();
            let other = |v: F<String>| if stray { v.0 } else { String::new() };
            let (path_other, payload_other) = (other(path.clone()), other(payload.clone()));
            let status_other = if stray { status.0 } else { 0 };
            let kind_v = bad.check("health.kind", kind);
            let interval_bad = interval != 0 && !(100..=3_600_000).contains(&interval);
            if interval_bad {
                bad.0.push("health.interval_ms".into());
            }
            let eff_interval = if interval == 0 { 1000 } else { interval };
            let eff_timeout = if timeout == 0 { 500 } else { timeout };
            if eff_timeout >= eff_interval {
                bad.0.push("health.timeout_ms".into());
            }
            let m = pb::HealthCheck {
                kind: kind_v,
                interval_ms: interval,
                timeout_ms: timeout,
                rise: bad.check("health.rise", rise),
                fall: bad.check("health.fall", fall),
                // Checked for their own kind; set at all on another kind, they are refused.
                http_path: if kind_v == 2 {
                    bad.check("health.http_path", path)
                } else {
                    bad.check("health.http_path", (path_other.clone(), !path_other.is_empty()))
                },
                http_expect_status: if kind_v == 2 {
                    bad.check("health.http_expect_status", status)
                } else {
                    bad.check("health.http_expect_status", (status_other, status_other != 0))
                },
                udp_payload: if kind_v == 3 {
                    bad.check("health.udp_payload", payload)
                } else {
                    bad.check("health.udp_payload", (payload_other.clone(), !payload_other.is_empty()))
                },
                all_down: bad.check("health.all_down", all_down),
            };
            (m, bad.0)
        })
        .boxed()
}

fn fw_rule() -> BoxedStrategy<GenRule> {
    (
        field(
            prop_oneof![
                Just("10.0.0.0/8"),
                Just("10.1.2.0/24"),
                Just("192.0.2.7/32"),
                Just("192.0.2.7"),
                Just("198.51.100.0/24"),
                Just("0.0.0.0/0")
            ]
            .prop_map(String::from),
            prop_oneof![
                Just("10.0.0.1/8".to_string()),
                Just("10.0.0.0/33".to_string()),
                Just("10.0.0.0/".to_string()),
                Just("/8".to_string()),
                Just("10.0.0.0/-1".to_string()),
                Just("10.0.0.0/8 ".to_string()),
                Just(" 10.0.0.0/8".to_string()),
                Just("10.0.0.0/08x".to_string()),
                Just("::/0".to_string()),
                Just(String::new()),
                "[g-z]{1,10}(/[0-9]{1,2})?",
            ],
        ),
        enum_field(&[1, 2]),
    )
        .boxed()
}

/// 1..=3 messages of 0..=3 rules; `rules[i]` counts across messages.
fn fw_stream() -> BoxedStrategy<Vec<Vec<GenRule>>> {
    proptest::collection::vec(proptest::collection::vec(fw_rule(), 0..=3), 1..=3).boxed()
}

/// The rules of one message. `seen` carries the prefixes of the stream so far (a bare address
/// is its /32): a prefix given again with the other action spoils that later rule's action.
fn rules_of(
    bad: &mut Bad,
    start: &mut usize,
    seen: &mut std::collections::HashMap<String, i32>,
    rules: Vec<GenRule>,
) -> Vec<pb::FirewallRule> {
    rules
        .into_iter()
        .map(|(cidr, action)| {
            let i = *start;
            *start += 1;
            let (c_bad, a_bad) = (cidr.1, action.1);
            let rule = pb::FirewallRule {
                cidr: bad.check(format!("rules[{i}].cidr"), cidr),
                action: bad.check(format!("rules[{i}].action"), action),
                ..Default::default()
            };
            if !c_bad && !a_bad {
                let prefix = if rule.cidr.contains('/') {
                    rule.cidr.clone()
                } else {
                    format!("{}/32", rule.cidr)
                };
                match seen.get(&prefix) {
                    Some(a) if *a != rule.action => bad.0.push(format!("rules[{i}].action")),
                    Some(_) => {}
                    None => {
                        seen.insert(prefix, rule.action);
                    }
                }
            }
            rule
        })
        .collect()
}

fn rl_cidr() -> BoxedStrategy<F<String>> {
    field(
        prop_oneof![
            Just(""),
            Just("10.1.0.0/16"),
            Just("192.0.2.0/24"),
            Just("192.0.2.7")
        ]
        .prop_map(String::from),
        prop_oneof![
            Just("10.0.0.1/8".to_string()),
            Just("0.0.0.0/0".to_string()),
            Just("10.0.0.0/33".to_string()),
            Just("nonsense".to_string()),
            Just(" 10.1.0.0/16".to_string()),
        ],
    )
}

fn case() -> BoxedStrategy<Case> {
    let add_vip = (
        vip_key(),
        enum_field(&[0, 1, 2, 3]),
        proptest::option::weighted(0.3, health()),
    )
        .prop_map(|(k, mode, h)| {
            let mut bad = Bad::default();
            let vip = build_key(&mut bad, "vip", k);
            let mode = bad.check("mode", mode);
            let health = h.map(|(m, b)| {
                bad.0.extend(b);
                m
            });
            Case {
                req: Req::AddVip(pb::AddVipRequest { vip, mode, health }),
                bad: bad.0,
            }
        });
    let remove_vip = vip_key().prop_map(|k| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        Case {
            req: Req::RemoveVip(pb::RemoveVipRequest { vip }),
            bad: bad.0,
        }
    });
    let set_mode = (vip_key(), enum_field(&[1, 2, 3])).prop_map(|(k, mode)| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        let mode = bad.check("mode", mode);
        Case {
            req: Req::SetVipMode(pb::SetVipModeRequest { vip, mode }),
            bad: bad.0,
        }
    });
    let set_health = (vip_key(), proptest::option::weighted(0.95, health())).prop_map(|(k, h)| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        let health = match h {
            Some((m, b)) => {
                bad.0.extend(b);
                Some(m)
            }
            None => {
                bad.0.push("health".into());
                None
            }
        };
        Case {
            req: Req::SetVipHealth(pb::SetVipHealthRequest { vip, health }),
            bad: bad.0,
        }
    });
    let weight_opt = prop_oneof![
        2 => Just((None, false)),
        6 => (0u32..=1_000_000).prop_map(|w| (Some(w), false)),
        1 => (1_000_001u32..=u32::MAX).prop_map(|w| (Some(w), true)),
    ];
    let add_backend = (
        vip_key(),
        proptest::option::weighted(0.95, (backend_ip(), port(), weight_opt.clone())),
    )
        .prop_map(|(k, be)| {
            let mut bad = Bad::default();
            let vip = build_key(&mut bad, "vip", k);
            let backend = match be {
                Some((a, p, (w, wbad))) => {
                    if wbad {
                        bad.0.push("backend.weight".into());
                    }
                    Some(pb::Backend {
                        address: bad.check("backend.address", a),
                        port: bad.check("backend.port", p),
                        weight: w,
                        ..Default::default()
                    })
                }
                None => {
                    bad.0.push("backend".into());
                    None
                }
            };
            Case {
                req: Req::AddBackend(pb::AddBackendRequest { vip, backend }),
                bad: bad.0,
            }
        });
    let add_backends = (
        vip_key(),
        proptest::collection::vec((backend_ip(), port(), weight_opt.clone()), 0..=4),
    )
        .prop_map(|(k, list)| {
            let mut bad = Bad::default();
            let vip = build_key(&mut bad, "vip", k);
            if list.is_empty() {
                bad.0.push("backends".into());
            }
            let mut seen = std::collections::HashMap::new();
            let mut backends = Vec::new();
            for (i, (a, p, (w, wbad))) in list.into_iter().enumerate() {
                if wbad {
                    bad.0.push(format!("backends[{i}].weight"));
                }
                // Two valid entries naming the same backend: the later one is refused.
                if let (Ok(ip), Ok(port)) = (a.0.parse::<std::net::Ipv4Addr>(), u16::try_from(p.0))
                {
                    if seen.insert((ip, port), i).is_some() {
                        bad.0.push(format!("backends[{i}]"));
                    }
                }
                backends.push(pb::Backend {
                    address: bad.check(format!("backends[{i}].address"), a),
                    port: bad.check(format!("backends[{i}].port"), p),
                    weight: w,
                    ..Default::default()
                });
            }
            Case {
                req: Req::AddBackends(pb::AddBackendsRequest { vip, backends }),
                bad: bad.0,
            }
        });
    let backend_ref = (vip_key(), backend_ip(), port());
    let remove_backend = backend_ref.clone().prop_map(|(k, a, p)| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        let req = pb::RemoveBackendRequest {
            vip,
            address: bad.check("address", a),
            port: bad.check("port", p),
        };
        Case {
            req: Req::RemoveBackend(req),
            bad: bad.0,
        }
    });
    let set_weight = (
        backend_ref.clone(),
        field(0u32..=1_000_000, 1_000_001u32..=u32::MAX),
    )
        .prop_map(|((k, a, p), w)| {
            let mut bad = Bad::default();
            let vip = build_key(&mut bad, "vip", k);
            let req = pb::SetBackendWeightRequest {
                vip,
                address: bad.check("address", a),
                port: bad.check("port", p),
                weight: bad.check("weight", w),
            };
            Case {
                req: Req::SetBackendWeight(req),
                bad: bad.0,
            }
        });
    let drain = (backend_ref.clone(), any::<bool>()).prop_map(|((k, a, p), undrain)| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        let (address, port) = (bad.check("address", a), bad.check("port", p));
        let req = if undrain {
            Req::UndrainBackend(pb::UndrainBackendRequest { vip, address, port })
        } else {
            Req::DrainBackend(pb::DrainBackendRequest { vip, address, port })
        };
        Case { req, bad: bad.0 }
    });
    let list_backends = vip_key().prop_map(|k| {
        let mut bad = Bad::default();
        let vip = build_key(&mut bad, "vip", k);
        Case {
            req: Req::ListBackends(pb::ListBackendsRequest { vip }),
            bad: bad.0,
        }
    });
    let fw_add_remove = (fw_stream(), any::<bool>()).prop_map(|(msgs, remove)| {
        let mut bad = Bad::default();
        let (mut i, mut seen) = (0, Default::default());
        let msgs: Vec<Vec<pb::FirewallRule>> = msgs
            .into_iter()
            .map(|m| rules_of(&mut bad, &mut i, &mut seen, m))
            .collect();
        let req = if remove {
            Req::RemoveRules(
                msgs.into_iter()
                    .map(|rules| pb::RemoveFirewallRulesRequest { rules })
                    .collect(),
            )
        } else {
            Req::AddRules(
                msgs.into_iter()
                    .map(|rules| pb::AddFirewallRulesRequest { rules })
                    .collect(),
            )
        };
        Case { req, bad: bad.0 }
    });
    let fw_replace = (
        fw_stream(),
        enum_field(&[0, 1, 2]),
        proptest::collection::vec(enum_field(&[0, 1, 2]), 3),
    )
        .prop_map(|(msgs, first, later)| {
            let mut bad = Bad::default();
            let only = bad.check("only", first);
            let (mut i, mut seen) = (0, Default::default());
            let mut out = Vec::new();
            for (n, m) in msgs.into_iter().enumerate() {
                let rules = rules_of(&mut bad, &mut i, &mut seen, m);
                let this = if n == 0 {
                    only
                } else {
                    let (v, spoiled) = later[n - 1];
                    // Later messages may leave it unset or repeat it; another action is refused.
                    if spoiled || (v != 0 && v != only) {
                        bad.0.push("only".into());
                    }
                    v
                };
                out.push(pb::ReplaceFirewallRulesRequest { only: this, rules });
            }
            // Replacing one list: every valid rule must have that action.
            if only == 1 || only == 2 {
                let mut i = 0;
                for m in &out {
                    for r in &m.rules {
                        if (r.action == 1 || r.action == 2) && r.action != only {
                            bad.0.push(format!("rules[{i}].action"));
                        }
                        i += 1;
                    }
                }
            }
            Case {
                req: Req::ReplaceRules(out),
                bad: bad.0,
            }
        });
    let fw_list = enum_field(&[0, 1, 2]).prop_map(|a| {
        let mut bad = Bad::default();
        let action = bad.check("action", a);
        Case {
            req: Req::ListRules(pb::ListFirewallRulesRequest { action }),
            bad: bad.0,
        }
    });
    let rl_set = proptest::option::weighted(
        0.95,
        (
            rl_cidr(),
            field(
                prop_oneof![Just(0i64), 1i64..=10_000_000],
                prop_oneof![i64::MIN..0, 10_000_001i64..=i64::MAX],
            ),
            field(
                prop_oneof![Just(0i64), 1i64..=1_000_000],
                prop_oneof![i64::MIN..0, 1_000_001i64..=i64::MAX],
            ),
            enum_field(&[0, 1, 2]),
        ),
    )
    .prop_map(|p| {
        let mut bad = Bad::default();
        let policy = match p {
            Some((cidr, rate, burst, scope)) => {
                let (r, b) = (rate.0, burst.0);
                let m = pb::RateLimitPolicy {
                    cidr: bad.check("policy.cidr", cidr),
                    rate: bad.check("policy.rate", rate),
                    burst: bad.check("policy.burst", burst),
                    scope: bad.check("policy.scope", scope),
                };
                if r > 0 && b == 0 {
                    bad.0.push("policy.burst".into());
                }
                Some(m)
            }
            None => {
                bad.0.push("policy".into());
                None
            }
        };
        Case {
            req: Req::SetRateLimit(pb::SetRateLimitRequest { policy }),
            bad: bad.0,
        }
    });
    let rl_remove = rl_cidr().prop_map(|c| {
        let mut bad = Bad::default();
        let cidr = bad.check("cidr", c);
        Case {
            req: Req::RemoveRateLimit(pb::RemoveRateLimitRequest { cidr }),
            bad: bad.0,
        }
    });
    let rl_top = field(0u32..=10_000, 10_001u32..=u32::MAX).prop_map(|l| {
        let mut bad = Bad::default();
        let limit = bad.check("limit", l);
        Case {
            req: Req::TopLimitedClients(pb::TopLimitedClientsRequest { limit }),
            bad: bad.0,
        }
    });
    let watch = field(
        100u32..=60_000,
        prop_oneof![0u32..100, 60_001u32..=u32::MAX],
    )
    .prop_map(|i| {
        let mut bad = Bad::default();
        let interval_ms = bad.check("interval_ms", i);
        Case {
            req: Req::WatchStats(pb::WatchStatsRequest { interval_ms }),
            bad: bad.0,
        }
    });
    let lists = prop_oneof![
        Just(Case {
            req: Req::ListVips,
            bad: vec![]
        }),
        Just(Case {
            req: Req::ListRateLimits,
            bad: vec![]
        }),
        Just(Case {
            req: Req::GetStats,
            bad: vec![]
        }),
    ];
    prop_oneof![
        4 => add_vip,
        2 => remove_vip,
        2 => set_mode,
        2 => set_health,
        5 => add_backend,
        3 => add_backends,
        2 => remove_backend,
        2 => set_weight,
        2 => drain,
        1 => list_backends,
        3 => fw_add_remove,
        2 => fw_replace,
        1 => fw_list,
        3 => rl_set,
        1 => rl_remove,
        1 => rl_top,
        1 => watch,
        1 => lists,
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// The server and the client.

#[derive(Clone)]
struct Clients {
    vips: VipsClient<Channel>,
    backends: BackendsClient<Channel>,
    firewall: FirewallClient<Channel>,
    ratelimits: RateLimitsClient<Channel>,
    stats: StatsClient<Channel>,
}

async fn connect(socket: &Path) -> Result<Clients> {
    let channel = unix_channel(socket)
        .await
        .context("connecting to the in-process server")?;
    Ok(Clients {
        vips: VipsClient::new(channel.clone()),
        backends: BackendsClient::new(channel.clone()),
        firewall: FirewallClient::new(channel.clone()),
        ratelimits: RateLimitsClient::new(channel.clone()),
        stats: StatsClient::new(channel),
    })
}

/// Every List RPC, encoded: what "the listed state" is, byte for byte.
async fn listed(c: &mut Clients) -> Result<Vec<u8>, tonic::Status> {
    let mut out = Vec::new();
    let vips = c.vips.list_vips(pb::ListVipsRequest {}).await?.into_inner();
    vips.encode(&mut out)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    for v in &vips.vips {
        let b = c
            .backends
            .list_backends(pb::ListBackendsRequest { vip: v.key.clone() })
            .await?
            .into_inner();
        b.encode_length_delimited(&mut out)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    let mut rules = c
        .firewall
        .list_rules(pb::ListFirewallRulesRequest { action: 0 })
        .await?
        .into_inner();
    while let Some(chunk) = rules.message().await? {
        chunk
            .encode_length_delimited(&mut out)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
    }
    let rl = c
        .ratelimits
        .list_rate_limits(pb::ListRateLimitsRequest {})
        .await?
        .into_inner();
    rl.encode_length_delimited(&mut out)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(out)
}

/// Sends one request; Ok(()) or the refusal.
async fn send(c: &mut Clients, req: Req) -> Result<(), tonic::Status> {
    match req {
        Req::AddVip(r) => c.vips.add_vip(r).await.map(drop),
        Req::RemoveVip(r) => c.vips.remove_vip(r).await.map(drop),
        Req::SetVipMode(r) => c.vips.set_vip_mode(r).await.map(drop),
        Req::SetVipHealth(r) => c.vips.set_vip_health(r).await.map(drop),
        Req::ListVips => c.vips.list_vips(pb::ListVipsRequest {}).await.map(drop),
        Req::AddBackend(r) => c.backends.add_backend(r).await.map(drop),
        Req::AddBackends(r) => c.backends.add_backends(r).await.map(drop),
        Req::RemoveBackend(r) => c.backends.remove_backend(r).await.map(drop),
        Req::SetBackendWeight(r) => c.backends.set_backend_weight(r).await.map(drop),
        Req::DrainBackend(r) => c.backends.drain_backend(r).await.map(drop),
        Req::UndrainBackend(r) => c.backends.undrain_backend(r).await.map(drop),
        Req::ListBackends(r) => c.backends.list_backends(r).await.map(drop),
        Req::AddRules(m) => c
            .firewall
            .add_rules(futures::stream::iter(m))
            .await
            .map(drop),
        Req::RemoveRules(m) => c
            .firewall
            .remove_rules(futures::stream::iter(m))
            .await
            .map(drop),
        Req::ReplaceRules(m) => c
            .firewall
            .replace_rules(futures::stream::iter(m))
            .await
            .map(drop),
        Req::ListRules(r) => {
            let mut s = c.firewall.list_rules(r).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        Req::SetRateLimit(r) => c.ratelimits.set_rate_limit(r).await.map(drop),
        Req::RemoveRateLimit(r) => c.ratelimits.remove_rate_limit(r).await.map(drop),
        Req::ListRateLimits => c
            .ratelimits
            .list_rate_limits(pb::ListRateLimitsRequest {})
            .await
            .map(drop),
        Req::TopLimitedClients(r) => c.ratelimits.top_limited_clients(r).await.map(drop),
        Req::GetStats => c.stats.get_stats(pb::GetStatsRequest {}).await.map(drop),
        Req::WatchStats(r) => {
            // The first snapshot comes at once; then the stream is dropped.
            let mut s = c.stats.watch_stats(r).await?.into_inner();
            s.message().await?;
            Ok(())
        }
    }
}

/// Removes everything, through the API, so that each sequence starts from an empty state.
async fn reset(c: &mut Clients) -> Result<(), tonic::Status> {
    let vips = c.vips.list_vips(pb::ListVipsRequest {}).await?.into_inner();
    for v in vips.vips {
        c.vips
            .remove_vip(pb::RemoveVipRequest { vip: v.key })
            .await?;
    }
    c.firewall
        .replace_rules(futures::stream::iter(vec![
            pb::ReplaceFirewallRulesRequest::default(),
        ]))
        .await?;
    let rl = c
        .ratelimits
        .list_rate_limits(pb::ListRateLimitsRequest {})
        .await?
        .into_inner();
    for r in rl.rate_limits {
        let cidr = r.policy.map(|p| p.cidr).unwrap_or_default();
        c.ratelimits
            .remove_rate_limit(pb::RemoveRateLimitRequest { cidr })
            .await?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    spoiled: usize,
    ok: usize,
    refused_other: usize,
    state_dependent_invalid: usize,
    send_time: Duration,
    list_time: Duration,
    per_rpc: std::collections::BTreeMap<&'static str, (usize, usize)>,
}

/// Fields that a refusal of a request with every field valid may name: rules that depend on
/// the state (an L2 DSR backend must be on a connected subnet; a DSR backend keeps the VIP's
/// port). Rules that tie fields of one request together are worked out by the generator.
fn state_dependent(req: &Req, msg: &str) -> bool {
    match req {
        Req::AddBackend(_) => {
            msg.starts_with("backend.address: ") || msg.starts_with("backend.port: ")
        }
        // The same rules, for backends[i] of a batch.
        Req::AddBackends(_) => {
            msg.starts_with("backends[")
                && msg
                    .split_once(": ")
                    .is_some_and(|(f, _)| f.ends_with("].address") || f.ends_with("].port"))
        }
        Req::SetVipMode(_) => msg.starts_with("mode: "),
        _ => false,
    }
}

fn check(
    c: &std::cell::RefCell<Clients>,
    rt: &tokio::runtime::Runtime,
    seq: Vec<Case>,
    tally: &mut Tally,
) -> Result<(), TestCaseError> {
    let fail = |m: String| TestCaseError::fail(m);
    let c = &mut *c.borrow_mut();
    rt.block_on(reset(c))
        .map_err(|s| fail(format!("reset: {s}")))?;
    for (n, case) in seq.into_iter().enumerate() {
        let t0 = std::time::Instant::now();
        let before = rt
            .block_on(listed(c))
            .map_err(|s| fail(format!("listing: {s}")))?;
        tally.list_time += t0.elapsed();
        let name = case.req.name();
        let t0 = std::time::Instant::now();
        let res = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), send(c, case.req.clone())).await
        });
        tally.send_time += t0.elapsed();
        let res = res.map_err(|_| fail(format!("#{n} {name} took over 10 s")))?;
        tally.requests += 1;
        let e = tally.per_rpc.entry(name).or_default();
        e.0 += 1;
        if !case.bad.is_empty() {
            tally.spoiled += 1;
            e.1 += 1;
        }
        match res {
            Ok(()) => {
                tally.ok += 1;
                if !case.bad.is_empty() {
                    return Err(fail(format!(
                        "#{n} accepted although {:?} are invalid: {:?}",
                        case.bad, case.req
                    )));
                }
            }
            Err(status) => {
                let after = rt
                    .block_on(listed(c))
                    .map_err(|s| fail(format!("listing: {s}")))?;
                if after != before {
                    return Err(fail(format!(
                        "#{n} {name} was refused ({:?}: {}) but the listed state changed: {:?}",
                        status.code(),
                        status.message(),
                        case.req
                    )));
                }
                let msg = status.message();
                if !case.bad.is_empty() {
                    if status.code() != Code::InvalidArgument {
                        return Err(fail(format!(
                            "#{n} {name} with invalid {:?} got {:?} ({msg}), not InvalidArgument: {:?}",
                            case.bad,
                            status.code(),
                            case.req
                        )));
                    }
                    if !case.bad.iter().any(|f| msg.starts_with(&format!("{f}: "))) {
                        return Err(fail(format!(
                            "#{n} {name}: '{msg}' names none of the invalid fields {:?}: {:?}",
                            case.bad, case.req
                        )));
                    }
                } else if status.code() == Code::InvalidArgument {
                    if !state_dependent(&case.req, msg) {
                        return Err(fail(format!(
                            "#{n} {name} with every field valid was refused as invalid: '{msg}': {:?}",
                            case.req
                        )));
                    }
                    tally.state_dependent_invalid += 1;
                } else {
                    tally.refused_other += 1;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_invalid_field_is_refused_and_changes_nothing() -> Result<()> {
    let cases: u32 = std::env::var("API_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    NetNs::within("apifuzz", move |_ns| {
        let api = Served::start()?;
        let (rt, socket) = (&api.rt, api.socket.clone());
        let clients = std::cell::RefCell::new(rt.block_on(connect(&socket))?);

        let mut runner = TestRunner::new(PtConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..PtConfig::default()
        });
        let tally = std::cell::RefCell::new(Tally::default());
        let seqs = proptest::collection::vec(case(), 60..=100);
        let outcome = runner.run(&seqs, |seq| {
            check(&clients, rt, seq, &mut tally.borrow_mut())
        });
        drop(clients);
        api.stop();
        let t = tally.into_inner();
        eprintln!(
            "api fuzz: {} requests ({} with an invalid field), {} accepted, {} refused by state (not found, exists, precondition), {} refused as invalid by state- or cross-field rules",
            t.requests, t.spoiled, t.ok, t.refused_other, t.state_dependent_invalid
        );
        eprintln!(
            "  mean time per request {:?}, per listing of the whole state {:?}",
            t.send_time / t.requests.max(1) as u32,
            t.list_time / t.requests.max(1) as u32
        );
        for (rpc, (n, bad)) in &t.per_rpc {
            eprintln!("  {rpc:<18} {n:>5} requests, {bad:>5} invalid");
        }
        outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            t.requests >= 1000 || cases < 20,
            "only {} requests",
            t.requests
        );
        anyhow::ensure!(
            t.spoiled * 10 >= t.requests,
            "too few invalid requests: {t:?}"
        );
        anyhow::ensure!(t.ok * 10 >= t.requests, "too few accepted requests: {t:?}");
        Ok(())
    })
}

/// AddBackends is all or nothing: one bad backend in a batch (or one that the VIP already has,
/// or one at the VIP's own address) refuses the whole call, naming its index, and nothing of the
/// batch is added; a good batch is added whole, in one change. AddBackend of the VIP's own
/// address is refused too, naming `backend.address`.
#[test]
fn a_batch_with_one_bad_backend_is_refused_whole() -> Result<()> {
    NetNs::within("apifuzz", move |_ns| {
        let api = Served::start()?;
        let (rt, socket) = (&api.rt, api.socket.clone());
        let result = rt.block_on(async {
            let mut c = connect(&socket).await?;
            let vip = pb::VipKey {
                address: "10.0.0.1".into(),
                port: 80,
                protocol: pb::Protocol::Tcp as i32,
            };
            c.vips
                .add_vip(pb::AddVipRequest {
                    vip: Some(vip.clone()),
                    mode: pb::ForwardingMode::Nat as i32,
                    health: None,
                })
                .await?;
            let be = |last: u8, port: u32| pb::Backend {
                address: format!("10.1.0.{last}"),
                port,
                weight: Some(100),
                ..Default::default()
            };
            c.backends
                .add_backend(pb::AddBackendRequest {
                    vip: Some(vip.clone()),
                    backend: Some(be(9, 8080)),
                })
                .await?;
            let before = listed(&mut c).await?;
            let batch = |backends: Vec<pb::Backend>| pb::AddBackendsRequest {
                vip: Some(vip.clone()),
                backends,
            };
            let refused = [
                // Index 2 has port 0.
                (
                    batch(vec![be(1, 8080), be(2, 8080), be(3, 0), be(4, 8080)]),
                    Code::InvalidArgument,
                    "backends[2].port: ",
                ),
                // Index 1 is not an address.
                (
                    batch(vec![
                        be(1, 8080),
                        pb::Backend {
                            address: "10.1.0".into(),
                            ..be(2, 80)
                        },
                    ]),
                    Code::InvalidArgument,
                    "backends[1].address: ",
                ),
                // Index 3 repeats index 0.
                (
                    batch(vec![be(1, 8080), be(2, 8080), be(3, 8080), be(1, 8080)]),
                    Code::InvalidArgument,
                    "backends[3]: ",
                ),
                // Index 1 is the VIP's own address (any port).
                (
                    batch(vec![
                        be(1, 8080),
                        pb::Backend {
                            address: "10.0.0.1".into(),
                            ..be(2, 80)
                        },
                    ]),
                    Code::InvalidArgument,
                    "backends[1].address: 10.0.0.1 is the address of vip 10.0.0.1:80/tcp itself",
                ),
                // Index 1 is on the VIP already: valid, but the batch still adds nothing.
                (
                    batch(vec![be(1, 8080), be(9, 8080), be(3, 8080)]),
                    Code::AlreadyExists,
                    "backends[1]: ",
                ),
                (batch(vec![]), Code::InvalidArgument, "backends: "),
            ];
            // AddBackend of the VIP's own address, likewise.
            let status = c
                .backends
                .add_backend(pb::AddBackendRequest {
                    vip: Some(vip.clone()),
                    backend: Some(pb::Backend {
                        address: "10.0.0.1".into(),
                        ..be(1, 8080)
                    }),
                })
                .await
                .expect_err("the VIP's own address must be refused");
            anyhow::ensure!(
                status.code() == Code::InvalidArgument
                    && status
                        .message()
                        .starts_with("backend.address: 10.0.0.1 is the address of vip"),
                "AddBackend of the VIP's address: {status:?}"
            );
            anyhow::ensure!(
                listed(&mut c).await? == before,
                "the refused AddBackend changed the listed state"
            );
            for (req, code, prefix) in refused {
                let status = c
                    .backends
                    .add_backends(req.clone())
                    .await
                    .expect_err("a batch with a bad backend must be refused");
                anyhow::ensure!(
                    status.code() == code && status.message().starts_with(prefix),
                    "expected {code:?} '{prefix}...', got {:?} '{}' for {req:?}",
                    status.code(),
                    status.message()
                );
                anyhow::ensure!(
                    listed(&mut c).await? == before,
                    "the refused batch {req:?} changed the listed state"
                );
            }
            let added = c
                .backends
                .add_backends(batch(vec![be(1, 8080), be(2, 8080), be(3, 8081)]))
                .await?
                .into_inner()
                .backends;
            let got: Vec<(String, u32)> =
                added.iter().map(|b| (b.address.clone(), b.port)).collect();
            anyhow::ensure!(
                got == [
                    ("10.1.0.1".to_string(), 8080),
                    ("10.1.0.2".to_string(), 8080),
                    ("10.1.0.3".to_string(), 8081)
                ],
                "AddBackends answered {got:?}"
            );
            let listed_now = c
                .backends
                .list_backends(pb::ListBackendsRequest { vip: Some(vip) })
                .await?
                .into_inner()
                .backends;
            anyhow::ensure!(listed_now.len() == 4, "listed {listed_now:?}");
            let mut ids: Vec<u32> = listed_now.iter().map(|b| b.id).collect();
            ids.sort_unstable();
            ids.dedup();
            anyhow::ensure!(
                ids.len() == 4,
                "backend ids are not distinct: {listed_now:?}"
            );
            anyhow::Ok(())
        });
        api.stop();
        result
    })
}
