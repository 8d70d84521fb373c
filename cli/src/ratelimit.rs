//! lbctl's rate-limit commands: `ratelimit set`, `remove`, `list` and `top`. Values are checked
//! here before anything reaches lbd; lbd checks them again (and the maxima) with the field named.

use std::io::Write;

use anyhow::Context as _;
use ipnet::Ipv4Net;
use xdplb_model::cidr::{parse_cidr, CidrError};
use xdplb_model::ratelimit::{CidrPolicy, Policy, Scope};

use crate::client::{call, Lbd};
use crate::highargs::{invalid, ArgError, Globals};
use crate::lowargs::{CidrFlag, RateLimitCommand};
use crate::output::{self, scope_name, RateLimitJson, RateLimitListJson, TopJson};
use crate::pb;

// ---------------------------------------------------------------------------------------
// High arguments

/// One validated rate-limit command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimit {
    Set {
        cidr: Option<Ipv4Net>,
        rate: u64,
        burst: u64,
        scope: Scope,
    },
    Remove {
        cidr: Option<Ipv4Net>,
    },
    List,
    Top {
        count: u32,
    },
}

/// `192.0.2.0/24` or a bare address (a /32); no host bits, not /0.
pub fn parse_prefix(what: &'static str, s: &str) -> Result<Ipv4Net, ArgError> {
    let expected = "an IPv4 prefix like 192.0.2.0/24 without host bits (not /0: omit --cidr)";
    match parse_cidr(s) {
        Ok(p) if p.prefix_len() > 0 => Ok(p),
        Err(CidrError::HostBits { normalised: p, .. }) if p.prefix_len() > 0 => Err(invalid(
            what,
            s,
            format!("a prefix without host bits (did you mean {p}?)"),
        )),
        _ => Err(invalid(what, s, expected)),
    }
}

fn parse_count(what: &'static str, s: &str) -> Result<u64, ArgError> {
    s.parse::<u64>()
        .map_err(|_| invalid(what, s, "a non-negative integer"))
}

fn parse_scope(what: &'static str, s: &str) -> Result<Scope, ArgError> {
    match s.to_ascii_lowercase().as_str() {
        "all" => Ok(Scope::All),
        "new-flows" | "new_flows" => Ok(Scope::NewFlows),
        _ => Err(invalid(what, s, "all or new-flows")),
    }
}

impl TryFrom<RateLimitCommand> for RateLimit {
    type Error = ArgError;

    fn try_from(low: RateLimitCommand) -> Result<Self, ArgError> {
        let cidr = |c: &CidrFlag| {
            c.cidr
                .as_deref()
                .map(|s| parse_prefix("--cidr", s))
                .transpose()
        };
        Ok(match low {
            RateLimitCommand::Set(a) => {
                let rate = parse_count("--rate", &a.rate)?;
                let burst = match &a.burst {
                    Some(b) => parse_count("--burst", b)?,
                    None => 0,
                };
                if rate > 0 && burst < 1 {
                    let given = a.burst.as_deref().unwrap_or("");
                    return Err(invalid(
                        "--burst",
                        given,
                        "an integer of at least 1 when --rate > 0",
                    ));
                }
                RateLimit::Set {
                    cidr: cidr(&a.cidr)?,
                    rate,
                    burst,
                    scope: parse_scope("--scope", &a.scope)?,
                }
            }
            RateLimitCommand::Remove(c) => RateLimit::Remove { cidr: cidr(&c)? },
            RateLimitCommand::List => RateLimit::List,
            RateLimitCommand::Top { count } => RateLimit::Top {
                count: match count.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(invalid("-n", &count, "a positive integer")),
                },
            },
        })
    }
}

/// "the default policy" or "the override of 192.0.2.0/24".
fn target(cidr: &Option<Ipv4Net>) -> String {
    match cidr {
        None => "the default policy".into(),
        Some(p) => format!("the override of {p}"),
    }
}

// ---------------------------------------------------------------------------------------
// Running

/// Performs one rate-limit command against lbd and renders the reply.
pub async fn run(cmd: &RateLimit, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let t = args.timeout;
    let json = args.json;
    let written = match cmd {
        RateLimit::Set {
            cidr,
            rate,
            burst,
            scope,
        } => {
            let policy = CidrPolicy {
                cidr: *cidr,
                policy: Policy {
                    rate: *rate,
                    burst: *burst,
                    scope: *scope,
                },
            };
            let req = pb::SetRateLimitRequest {
                policy: Some(pb::RateLimitPolicy::from(&policy)),
            };
            let r = call(t, lbd.ratelimits.set_rate_limit(req)).await?;
            match (json, r.rate_limit) {
                (true, Some(rl)) => output::write_json(out, &RateLimitJson::from(&rl)),
                (true, None) => output::write_json(out, &serde_json::json!({})),
                (false, _) if *rate == 0 => {
                    writeln!(out, "set {}: no limit", target(cidr))
                }
                (false, _) => writeln!(
                    out,
                    "set {}: {rate} packets/s per client, burst {burst}, scope {}",
                    target(cidr),
                    scope_name(pb::RateLimitScope::from(*scope) as i32)
                ),
            }
        }
        RateLimit::Remove { cidr } => {
            let req = pb::RemoveRateLimitRequest {
                cidr: cidr.map(|p| p.to_string()).unwrap_or_default(),
            };
            call(t, lbd.ratelimits.remove_rate_limit(req)).await?;
            if json {
                output::write_json(out, &serde_json::json!({}))
            } else if cidr.is_none() {
                writeln!(out, "reset the default policy to no limit")
            } else {
                writeln!(out, "removed {}", target(cidr))
            }
        }
        RateLimit::List => {
            let r = call(
                t,
                lbd.ratelimits
                    .list_rate_limits(pb::ListRateLimitsRequest {}),
            )
            .await?;
            if json {
                let rate_limits = r.rate_limits.iter().map(RateLimitJson::from).collect();
                output::write_json(out, &RateLimitListJson { rate_limits })
            } else {
                output::rate_limits(out, &r.rate_limits, scope_name)
            }
        }
        RateLimit::Top { count } => {
            let req = pb::TopLimitedClientsRequest { limit: *count };
            let r = call(t, lbd.ratelimits.top_limited_clients(req)).await?;
            if json {
                output::write_json(out, &TopJson::from(&r))
            } else {
                output::limited_clients(out, &r)
            }
        }
    };
    written.context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::lowargs::{LowArgs, LowCommand};

    fn parse(args: &[&str]) -> Result<RateLimit, String> {
        let mut argv = vec!["lbctl", "ratelimit"];
        argv.extend_from_slice(args);
        let low = LowArgs::try_parse_from(argv).map_err(|e| format!("clap: {e}"))?;
        match low.command {
            LowCommand::RateLimit(c) => RateLimit::try_from(c).map_err(|e| e.to_string()),
            other => Err(format!("not a rate-limit command: {other:?}")),
        }
    }

    fn prefix(s: &str) -> Option<Ipv4Net> {
        Some(parse_prefix("--cidr", s).expect("test prefix"))
    }

    #[test]
    fn set_commands() {
        assert_eq!(
            parse(&["set", "--rate", "1000", "--burst", "200"]),
            Ok(RateLimit::Set {
                cidr: None,
                rate: 1000,
                burst: 200,
                scope: Scope::All
            })
        );
        assert_eq!(
            parse(&[
                "set",
                "--rate",
                "20",
                "--burst",
                "5",
                "--scope",
                "new-flows",
                "--cidr",
                "192.0.2.0/24"
            ]),
            Ok(RateLimit::Set {
                cidr: prefix("192.0.2.0/24"),
                rate: 20,
                burst: 5,
                scope: Scope::NewFlows
            })
        );
        assert_eq!(
            parse(&["set", "--rate", "0", "--cidr", "10.1.2.3"]),
            Ok(RateLimit::Set {
                cidr: prefix("10.1.2.3/32"),
                rate: 0,
                burst: 0,
                scope: Scope::All
            })
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, want) in [
            (
                &["set", "--rate", "-5", "--burst", "1"][..],
                "invalid --rate '-5': expected a non-negative integer",
            ),
            (
                &["set", "--rate", "10", "--burst", "-1"][..],
                "invalid --burst '-1': expected a non-negative integer",
            ),
            (
                &["set", "--rate", "10", "--burst", "0"][..],
                "invalid --burst '0': expected an integer of at least 1 when --rate > 0",
            ),
            (
                &["set", "--rate", "10"][..],
                "invalid --burst '': expected an integer of at least 1 when --rate > 0",
            ),
            (
                &["set", "--rate", "10", "--burst", "1", "--scope", "syn"][..],
                "invalid --scope 'syn': expected all or new-flows",
            ),
            (
                &["set", "--rate", "1", "--burst", "1", "--cidr", "10.0.0.1/8"][..],
                "invalid --cidr '10.0.0.1/8': expected a prefix without host bits (did you mean 10.0.0.0/8?)",
            ),
            (&["top", "-n", "0"][..], "invalid -n '0': expected a positive integer"),
        ] {
            assert_eq!(parse(args).err().as_deref(), Some(want), "{args:?}");
        }
        for bad in [
            "0.0.0.0/0",
            "10.0.0.0/33",
            "10.0.0/8",
            "::1/128",
            "10.0.0.0/+8",
        ] {
            assert!(parse_prefix("--cidr", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remove_list_top() {
        assert_eq!(parse(&["remove"]), Ok(RateLimit::Remove { cidr: None }));
        assert_eq!(
            parse(&["remove", "--cidr", "10.0.0.0/8"]),
            Ok(RateLimit::Remove {
                cidr: prefix("10.0.0.0/8")
            })
        );
        assert_eq!(parse(&["list"]), Ok(RateLimit::List));
        assert_eq!(parse(&["top"]), Ok(RateLimit::Top { count: 20 }));
        assert_eq!(parse(&["top", "-n", "5"]), Ok(RateLimit::Top { count: 5 }));
    }

    fn policy(cidr: &str, rate: i64, burst: i64, scope: pb::RateLimitScope) -> pb::RateLimitPolicy {
        pb::RateLimitPolicy {
            cidr: cidr.into(),
            rate,
            burst,
            scope: scope as i32,
        }
    }

    #[test]
    fn human_tables() {
        let list = [
            pb::RateLimit {
                policy: Some(policy("", 1000, 200, pb::RateLimitScope::All)),
                id: 0,
                allowed: 912345,
                dropped: 1200,
            },
            pb::RateLimit {
                policy: Some(policy("10.0.0.0/8", 0, 0, pb::RateLimitScope::All)),
                id: 2,
                allowed: 0,
                dropped: 0,
            },
            pb::RateLimit {
                policy: Some(policy("192.0.2.0/24", 20, 5, pb::RateLimitScope::NewFlows)),
                id: 1,
                allowed: 310,
                dropped: 48211,
            },
        ];
        let mut buf = Vec::new();
        output::rate_limits(&mut buf, &list, scope_name).expect("render");
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            "POLICY          RATE/S  BURST  SCOPE      ALLOWED  DROPPED  ID\n\
             default           1000    200  all         912345     1200   0\n\
             10.0.0.0/8    no limit      -  -                0        0   2\n\
             192.0.2.0/24        20      5  new-flows      310    48211   1\n"
        );
        let top = pb::TopLimitedClientsResponse {
            clients: vec![
                pb::LimitedClient {
                    address: "192.0.2.66".into(),
                    dropped: 48017,
                    cidr: "192.0.2.0/24".into(),
                },
                pb::LimitedClient {
                    address: "198.51.100.9".into(),
                    dropped: 1200,
                    cidr: String::new(),
                },
            ],
            tracked: 5841,
        };
        let mut buf = Vec::new();
        output::limited_clients(&mut buf, &top).expect("render");
        assert_eq!(
            String::from_utf8(buf).expect("utf8"),
            "CLIENT        DROPPED  POLICY\n\
             192.0.2.66      48017  192.0.2.0/24\n\
             198.51.100.9     1200  default\n\
             5841 client buckets\n"
        );
    }

    #[test]
    fn json_views() {
        let rl = pb::RateLimit {
            policy: Some(pb::RateLimitPolicy {
                cidr: String::new(),
                rate: 100,
                burst: 10,
                scope: pb::RateLimitScope::NewFlows as i32,
            }),
            id: 0,
            allowed: 7,
            dropped: 3,
        };
        let v = serde_json::to_value(RateLimitJson::from(&rl)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"cidr": null, "rate": 100, "burst": 10, "scope": "new-flows",
                               "id": 0, "allowed": 7, "dropped": 3})
        );
    }
}
