//! Health checks and draining: the `--health` flags of `vip add` and `vip set-health`, checked
//! before any RPC, and the `vip set-health`, `backend drain` and `backend undrain` commands.

use std::{io::Write, net::SocketAddrV4, time::Duration};

use xdplb_model::health::{
    default_payload, AllDown, HealthCheck, HealthKind, MAX_COUNT, MAX_INTERVAL, MAX_PROBE_BYTES,
    MIN_INTERVAL,
};

use crate::client::{call, Lbd, RpcError};
use crate::highargs::{invalid, parse_duration, ArgError, Globals, VipKey};
use crate::lowargs::{DrainArgs, HealthArgs};
use crate::output::{self, health_label, show_duration, BackendJson, VipJson};
use crate::pb;

/// Checks the health flags. Without `--health`, no other health flag may be given (`vip add`:
/// the VIP is not checked); `required` makes `--health` mandatory (`vip set-health`).
pub fn parse(args: &HealthArgs, required: bool) -> Result<HealthCheck, ArgError> {
    let Some(kind) = args.health.as_deref() else {
        let given = [
            ("--health-interval", &args.health_interval),
            ("--health-timeout", &args.health_timeout),
            ("--rise", &args.rise),
            ("--fall", &args.fall),
            ("--all-down", &args.all_down),
            ("--http-status", &args.http_status),
            ("--udp-payload", &args.udp_payload),
        ]
        .into_iter()
        .find_map(|(flag, v)| v.as_deref().map(|v| (flag, v)));
        if required {
            return Err(invalid("--health", "", "tcp, http:/PATH, udp or none"));
        }
        if let Some((flag, v)) = given {
            return Err(invalid(flag, v, "--health too (tcp, http:/PATH or udp)"));
        }
        return Ok(HealthCheck::default());
    };
    let d = HealthCheck::default();
    let interval = match &args.health_interval {
        Some(s) => parse_duration("--health-interval", s)?,
        None => d.interval,
    };
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        let s = args.health_interval.as_deref().unwrap_or_default();
        return Err(invalid("--health-interval", s, "a duration in 100ms..1h"));
    }
    let timeout = match &args.health_timeout {
        Some(s) => parse_duration("--health-timeout", s)?,
        // The default timeout, but always below a short interval.
        None => d.timeout.min(interval / 2),
    };
    if timeout >= interval {
        let s = args.health_timeout.as_deref().unwrap_or_default();
        return Err(invalid(
            "--health-timeout",
            s,
            format!(
                "a duration below the interval ({})",
                show_duration(interval)
            ),
        ));
    }
    let count = |what: &'static str, v: &Option<String>, default: u32| match v {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_COUNT).contains(&n) => Ok(n),
            _ => Err(invalid(what, s, format!("an integer in 1..{MAX_COUNT}"))),
        },
    };
    let rise = count("--rise", &args.rise, d.rise)?;
    let fall = count("--fall", &args.fall, d.fall)?;
    let all_down = match args
        .all_down
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("fail-open") => AllDown::FailOpen,
        Some("drop") => AllDown::Drop,
        Some(_) => {
            let s = args.all_down.as_deref().unwrap_or_default();
            return Err(invalid("--all-down", s, "fail-open or drop"));
        }
    };
    let kind = parse_kind(kind)?;
    let kind = match kind {
        HealthKind::Http { path, .. } => {
            let expect_status = match &args.http_status {
                None => 200,
                Some(s) => match s.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => c,
                    _ => return Err(invalid("--http-status", s, "an HTTP status in 100..599")),
                },
            };
            HealthKind::Http {
                path,
                expect_status,
            }
        }
        HealthKind::Udp { .. } => HealthKind::Udp {
            payload: match &args.udp_payload {
                None => default_payload(),
                Some(p) if !p.is_empty() && p.len() <= MAX_PROBE_BYTES => p.clone(),
                Some(p) => {
                    return Err(invalid(
                        "--udp-payload",
                        p,
                        format!("1..{MAX_PROBE_BYTES} bytes"),
                    ))
                }
            },
        },
        other => other,
    };
    let misplaced = match &kind {
        HealthKind::Http { .. } => args.udp_payload.as_ref().map(|v| ("--udp-payload", v)),
        HealthKind::Udp { .. } => args.http_status.as_ref().map(|v| ("--http-status", v)),
        _ => args
            .http_status
            .as_ref()
            .map(|v| ("--http-status", v))
            .or(args.udp_payload.as_ref().map(|v| ("--udp-payload", v))),
    };
    if let Some((flag, v)) = misplaced {
        return Err(invalid(
            flag,
            v,
            format!(
                "a check it applies to (not --health {kind_name})",
                kind_name = args.health.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        all_down,
    })
}

/// `tcp`, `http:/PATH`, `udp`, `none` (any case for the word).
fn parse_kind(s: &str) -> Result<HealthKind, ArgError> {
    let expected = "tcp, http:/PATH, udp or none";
    if let Some((word, path)) = s.split_once(':') {
        if !word.eq_ignore_ascii_case("http") {
            return Err(invalid("--health", s, expected));
        }
        let printable = path.bytes().all(|b| b.is_ascii_graphic());
        if !path.starts_with('/') || !printable || path.len() > MAX_PROBE_BYTES {
            return Err(invalid(
                "--health",
                s,
                "http:/PATH with a PATH that starts with '/' (no spaces)",
            ));
        }
        return Ok(HealthKind::Http {
            path: path.to_string(),
            expect_status: 200,
        });
    }
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(HealthKind::Tcp),
        "udp" => Ok(HealthKind::Udp {
            payload: String::new(),
        }),
        "none" => Ok(HealthKind::None),
        "http" => Ok(HealthKind::Http {
            path: "/".into(),
            expect_status: 200,
        }),
        _ => Err(invalid("--health", s, expected)),
    }
}

/// `vip set-health`, `backend drain` and `backend undrain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCommand {
    SetHealth {
        vip: VipKey,
        health: HealthCheck,
    },
    Drain {
        vip: VipKey,
        backend: SocketAddrV4,
        /// `--wait`: then watch the count until none is left.
        wait: Option<DrainWait>,
    },
    Undrain {
        vip: VipKey,
        backend: SocketAddrV4,
    },
}

/// `backend drain --wait [--wait-timeout D]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainWait {
    /// `--wait-timeout`: give up (exit 3) after this long; `None`: no limit.
    pub limit: Option<Duration>,
}

/// The `--wait` flags of `backend drain`.
pub fn parse_wait(args: &DrainArgs) -> Result<Option<DrainWait>, ArgError> {
    if !args.wait {
        return Ok(None);
    }
    let limit = args
        .wait_timeout
        .as_deref()
        .map(|d| parse_duration("--wait-timeout", d))
        .transpose()?;
    Ok(Some(DrainWait { limit }))
}

/// `backend drain --wait` gave up: the backend still had tracked flows when `--wait-timeout`
/// passed (lbctl exits with [`DrainTimedOut::EXIT_CODE`]).
#[derive(Debug)]
pub struct DrainTimedOut {
    pub vip: String,
    pub backend: SocketAddrV4,
    pub limit: Duration,
    pub flows: u64,
}

impl std::fmt::Display for DrainTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {} waiting for backend {} of {} to drain: {} tracked flows left",
            show_duration(self.limit),
            self.backend,
            self.vip,
            self.flows
        )
    }
}

impl std::error::Error for DrainTimedOut {}

impl DrainTimedOut {
    /// lbctl's exit status when a drain's wait times out (0 drained, 1 failed, 2 usage).
    pub const EXIT_CODE: u8 = 3;
}

/// What `backend drain --wait` prints with `--json`: the backend as drained, and whether its
/// flows were all gone before the limit.
#[derive(Debug, serde::Serialize)]
struct DrainWaitJson {
    #[serde(flatten)]
    backend: BackendJson,
    drained: bool,
    tracked_flows: u64,
    waited_seconds: f64,
}

/// Watches the live flows of a drained backend (WatchDrain) until none is left or `wait.limit`
/// passes; prints each new count (human output) and the outcome.
async fn wait_drained(
    lbd: &mut Lbd,
    args: &Globals,
    vip: &VipKey,
    backend: SocketAddrV4,
    drained: &pb::Backend,
    wait: DrainWait,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let req = pb::WatchDrainRequest {
        vip: Some(pb::VipKey::from(vip)),
        address: backend.ip().to_string(),
        port: u32::from(backend.port()),
        interval_ms: 0,
    };
    let deadline = wait.limit.map(|l| tokio::time::Instant::now() + l);
    let until_deadline = || async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    // Each count comes within lbd's interval (1 s) plus the walk; --timeout bounds the rest.
    let patience = Duration::from_secs(1) + args.timeout;
    let mut last: Option<u64> = None;
    let mut stream = call(args.timeout, lbd.backends.watch_drain(req)).await?;
    let outcome = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(patience, stream.message()) => n,
            () = until_deadline() => break None,
        };
        match next {
            Err(_) => anyhow::bail!("no drain count from lbd within {patience:?}"),
            Ok(Err(status)) => return Err(RpcError(status).into()),
            Ok(Ok(None)) => {
                anyhow::bail!("lbd ended the drain watch before backend {backend} of {vip} drained")
            }
            Ok(Ok(Some(count))) => {
                if !args.json && last != Some(count.tracked_flows) {
                    writeln!(
                        out,
                        "backend {backend} of {vip}: {} tracked flows",
                        count.tracked_flows
                    )?;
                    out.flush()?;
                }
                last = Some(count.tracked_flows);
                if count.tracked_flows == 0 {
                    break Some(());
                }
            }
        }
    };
    let waited = started.elapsed();
    let flows = last.unwrap_or_default();
    if args.json {
        output::write_json(
            out,
            &DrainWaitJson {
                backend: BackendJson::from(drained),
                drained: outcome.is_some(),
                tracked_flows: flows,
                waited_seconds: waited.as_secs_f64(),
            },
        )?;
    } else if outcome.is_some() {
        writeln!(
            out,
            "backend {backend} of {vip} is drained: no tracked flows left (waited {})",
            show_duration(Duration::from_millis(waited.as_millis() as u64))
        )?;
    }
    match outcome {
        Some(()) => Ok(()),
        None => Err(DrainTimedOut {
            vip: vip.to_string(),
            backend,
            limit: wait.limit.unwrap_or_default(),
            flows,
        }
        .into()),
    }
}

/// Connects to lbd, performs `cmd` and renders the reply.
pub async fn run(cmd: &HealthCommand, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let t = args.timeout;
    let written = match cmd {
        HealthCommand::SetHealth { vip, health } => {
            let req = pb::SetVipHealthRequest {
                vip: Some(pb::VipKey::from(vip)),
                health: Some(pb::HealthCheck::from(health)),
            };
            let resp = call(t, lbd.vips.set_vip_health(req)).await?;
            let set = resp.vip.unwrap_or_else(|| pb::Vip {
                key: Some(pb::VipKey::from(vip)),
                health: Some(pb::HealthCheck::from(health)),
                ..Default::default()
            });
            if args.json {
                output::write_json(out, &VipJson::from(&set))
            } else if health.is_checked() {
                writeln!(
                    out,
                    "vip {vip} health check: {}",
                    health_label(set.health.as_ref())
                )
            } else {
                writeln!(
                    out,
                    "vip {vip} health check: none (every backend counts as up)"
                )
            }
        }
        HealthCommand::Drain { vip, backend, .. } | HealthCommand::Undrain { vip, backend } => {
            let drain = matches!(cmd, HealthCommand::Drain { .. });
            let (key, address, port) = (
                Some(pb::VipKey::from(vip)),
                backend.ip().to_string(),
                u32::from(backend.port()),
            );
            let b = if drain {
                let req = pb::DrainBackendRequest {
                    vip: key,
                    address,
                    port,
                };
                call(t, lbd.backends.drain_backend(req)).await?.backend
            } else {
                let req = pb::UndrainBackendRequest {
                    vip: key,
                    address,
                    port,
                };
                call(t, lbd.backends.undrain_backend(req)).await?.backend
            }
            .unwrap_or_default();
            if let HealthCommand::Drain {
                wait: Some(wait), ..
            } = cmd
            {
                if !args.json {
                    writeln!(
                        out,
                        "drained backend {backend} of {vip}: no new flows; waiting for its \
                         tracked flows to end{}",
                        wait.limit.map_or(String::new(), |l| format!(
                            " (at most {})",
                            show_duration(l)
                        ))
                    )?;
                }
                return wait_drained(&mut lbd, args, vip, *backend, &b, *wait, out).await;
            }
            if args.json {
                output::write_json(out, &BackendJson::from(&b))
            } else if drain {
                writeln!(
                    out,
                    "drained backend {backend} of {vip}: no new flows, tracked flows go on \
                     (watch FLOWS in `lbctl backend list`); undrain restores weight {}",
                    b.drained_from
                )
            } else {
                writeln!(
                    out,
                    "undrained backend {backend} of {vip}: weight {}",
                    b.weight.unwrap_or_default()
                )
            }
        }
    };
    written.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::output::HealthJson;

    fn args(health: Option<&str>) -> HealthArgs {
        HealthArgs {
            health: health.map(str::to_string),
            ..HealthArgs::default()
        }
    }

    fn err(a: &HealthArgs, required: bool) -> String {
        parse(a, required).expect_err("invalid").to_string()
    }

    #[test]
    fn kinds_and_defaults() {
        assert_eq!(parse(&args(None), false), Ok(HealthCheck::default()));
        assert!(!parse(&args(Some("none")), false)
            .expect("none")
            .is_checked());
        let tcp = parse(&args(Some("TCP")), false).expect("tcp");
        assert_eq!(tcp.kind, HealthKind::Tcp);
        assert_eq!(
            (tcp.interval, tcp.timeout, tcp.rise, tcp.fall),
            (Duration::from_secs(1), Duration::from_millis(500), 2, 3)
        );
        assert_eq!(
            parse(&args(Some("http:/healthz?x=1")), false)
                .expect("http")
                .kind,
            HealthKind::Http {
                path: "/healthz?x=1".into(),
                expect_status: 200
            }
        );
        assert_eq!(
            parse(&args(Some("udp")), false).expect("udp").kind,
            HealthKind::Udp {
                payload: "ping".into()
            }
        );
        let full = HealthArgs {
            health: Some("http:/ready".into()),
            health_interval: Some("200ms".into()),
            health_timeout: Some("150ms".into()),
            rise: Some("1".into()),
            fall: Some("5".into()),
            all_down: Some("drop".into()),
            http_status: Some("204".into()),
            udp_payload: None,
        };
        let spec = parse(&full, true).expect("all flags");
        assert_eq!(
            spec,
            HealthCheck {
                kind: HealthKind::Http {
                    path: "/ready".into(),
                    expect_status: 204
                },
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(150),
                rise: 1,
                fall: 5,
                all_down: AllDown::Drop,
            }
        );
        let m = pb::HealthCheck::from(&spec);
        assert_eq!(
            (m.kind, m.interval_ms, m.timeout_ms, m.http_expect_status),
            (pb::HealthCheckKind::Http as i32, 200, 150, 204)
        );
        assert_eq!(m.all_down, pb::AllDownPolicy::Drop as i32);
        let short = HealthArgs {
            health_interval: Some("200ms".into()),
            ..args(Some("tcp"))
        };
        assert_eq!(
            parse(&short, false).expect("short interval").timeout,
            Duration::from_millis(100),
            "default timeout stays below a short interval"
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        assert_eq!(
            err(&args(Some("icmp")), false),
            "invalid --health 'icmp': expected tcp, http:/PATH, udp or none"
        );
        assert!(
            err(&args(Some("http:healthz")), false).starts_with("invalid --health 'http:healthz'")
        );
        assert!(err(&args(Some("http:/a b")), false).starts_with("invalid --health"));
        assert!(err(&args(None), true).starts_with("invalid --health ''"));
        let with = |f: &dyn Fn(&mut HealthArgs)| {
            let mut a = args(Some("tcp"));
            f(&mut a);
            err(&a, false)
        };
        assert!(with(&|a| a.health_interval = Some("50ms".into()))
            .starts_with("invalid --health-interval '50ms'"));
        assert!(with(&|a| a.health_interval = Some("2h".into()))
            .starts_with("invalid --health-interval"));
        assert!(with(&|a| a.health_timeout = Some("1s".into())).starts_with(
            "invalid --health-timeout '1s': expected a duration below the interval (1s)"
        ));
        assert!(with(&|a| a.rise = Some("0".into())).starts_with("invalid --rise '0'"));
        assert!(with(&|a| a.fall = Some("101".into())).starts_with("invalid --fall '101'"));
        assert!(
            with(&|a| a.all_down = Some("close".into())).starts_with("invalid --all-down 'close'")
        );
        assert!(
            with(&|a| a.http_status = Some("200".into())).starts_with("invalid --http-status"),
            "not an http check"
        );
        let mut a = args(Some("http:/"));
        a.http_status = Some("700".into());
        assert!(err(&a, false).starts_with("invalid --http-status '700'"));
        let mut a = args(Some("udp"));
        a.udp_payload = Some(String::new());
        assert!(err(&a, false).starts_with("invalid --udp-payload"));
        let mut a = args(None);
        a.fall = Some("2".into());
        assert_eq!(
            err(&a, false),
            "invalid --fall '2': expected --health too (tcp, http:/PATH or udp)"
        );
    }

    #[test]
    fn labels() {
        assert_eq!(health_label(None), "none");
        let spec = HealthCheck {
            kind: HealthKind::Tcp,
            ..HealthCheck::default()
        };
        assert_eq!(
            health_label(Some(&pb::HealthCheck::from(&spec))),
            "tcp 1s/500ms rise 2 fall 3 fail-open"
        );
        let spec = HealthCheck {
            kind: HealthKind::Http {
                path: "/h".into(),
                expect_status: 204,
            },
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            all_down: AllDown::Drop,
            ..HealthCheck::default()
        };
        assert_eq!(
            health_label(Some(&pb::HealthCheck::from(&spec))),
            "http:/h=204 200ms/100ms rise 2 fall 3 drop"
        );
        let j = HealthJson::from(&pb::HealthCheck::from(&spec));
        assert_eq!(
            (
                j.kind.as_str(),
                j.http_path.as_deref(),
                j.udp_payload.as_deref()
            ),
            ("http", Some("/h"), None)
        );
    }
}
