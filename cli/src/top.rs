//! `lbctl top`: a live table of packets/s, bits/s and new flows/s per VIP and per backend, from
//! successive `WatchStats` snapshots, redrawn in place like `top` (Ctrl-C quits). Rates divide
//! by the difference of lbd's own snapshot clock, so network delays do not skew them. Without a
//! terminal the frames follow each other without escape codes; with `--json`, each update is one
//! JSON line.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::client::{Lbd, RpcError};
use crate::highargs::{invalid, parse_duration, ArgError, Globals};
use crate::lowargs::TopArgs;
use crate::output::{proto_name, vip_label};
use crate::pb;

/// Shortest and longest refresh interval (lbd enforces the same bounds).
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// ANSI: cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// `lbctl top`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Top {
    pub interval: Duration,
    /// `None`: until Ctrl-C.
    pub iterations: Option<u64>,
}

impl TryFrom<TopArgs> for Top {
    type Error = ArgError;

    fn try_from(low: TopArgs) -> Result<Self, ArgError> {
        let interval = parse_duration("--interval", &low.interval)?;
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(invalid(
                "--interval",
                &low.interval,
                "a duration from 100ms to 1m",
            ));
        }
        let iterations = match low.iterations {
            None => None,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(invalid("--iterations", &s, "a positive integer")),
            },
        };
        Ok(Top {
            interval,
            iterations,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Rates between two snapshots

/// Per-second rates of one VIP or backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    pub packets_per_second: f64,
    pub bits_per_second: f64,
    pub new_flows_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendRate {
    pub address: String,
    pub port: u32,
    pub weight: u32,
    #[serde(flatten)]
    pub rate: Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipRate {
    pub address: String,
    pub port: u32,
    pub protocol: String,
    #[serde(flatten)]
    pub rate: Rate,
    pub backends: Vec<BackendRate>,
}

/// One update: the rates over `seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    pub seconds: f64,
    pub vips: Vec<VipRate>,
    /// Packets/s per XDP verdict.
    pub verdicts: Vec<(String, f64)>,
    /// Packets/s per reason, non-zero only, most first.
    pub reasons: Vec<(String, f64)>,
}

/// `cur - prev` per second; a counter that went down was reset (its id reused, lbd restarted
/// without its pins): count from zero.
fn per_second(prev: u64, cur: u64, seconds: f64) -> f64 {
    let delta = if cur >= prev { cur - prev } else { cur };
    delta as f64 / seconds
}

fn rate(prev: Option<&pb::Counters>, cur: Option<&pb::Counters>, seconds: f64) -> Rate {
    let p = prev.copied().unwrap_or_default();
    let c = cur.copied().unwrap_or_default();
    Rate {
        packets_per_second: per_second(p.packets, c.packets, seconds),
        bits_per_second: per_second(p.bytes, c.bytes, seconds) * 8.0,
        new_flows_per_second: per_second(p.new_flows, c.new_flows, seconds),
    }
}

fn vip_id(k: &pb::VipKey) -> (String, u32, i32) {
    (k.address.clone(), k.port, k.protocol)
}

/// The rates between two snapshots `seconds` apart. VIPs and backends new in `cur` count from
/// zero.
pub fn frame(prev: &pb::GetStatsResponse, cur: &pb::GetStatsResponse, seconds: f64) -> Frame {
    let seconds = if seconds > 0.0 { seconds } else { 1e-9 };
    let before: HashMap<_, _> = prev
        .vips
        .iter()
        .map(|v| (vip_id(&v.vip.clone().unwrap_or_default()), v))
        .collect();
    let vips = cur
        .vips
        .iter()
        .map(|v| {
            let key = v.vip.clone().unwrap_or_default();
            let old = before.get(&vip_id(&key));
            let old_backends: HashMap<(String, u32), &pb::BackendStats> = old
                .map(|o| {
                    o.backends
                        .iter()
                        .map(|b| {
                            let be = b.backend.clone().unwrap_or_default();
                            ((be.address, be.port), b)
                        })
                        .collect()
                })
                .unwrap_or_default();
            VipRate {
                address: key.address.clone(),
                port: key.port,
                protocol: proto_name(key.protocol),
                rate: rate(
                    old.and_then(|o| o.counters.as_ref()),
                    v.counters.as_ref(),
                    seconds,
                ),
                backends: v
                    .backends
                    .iter()
                    .map(|b| {
                        let be = b.backend.clone().unwrap_or_default();
                        let old = old_backends.get(&(be.address.clone(), be.port));
                        BackendRate {
                            rate: rate(
                                old.and_then(|o| o.counters.as_ref()),
                                b.counters.as_ref(),
                                seconds,
                            ),
                            address: be.address,
                            port: be.port,
                            weight: be.weight.unwrap_or_default(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let counts = |p: &[pb::ReasonCount], c: &[pb::ReasonCount]| -> Vec<(String, f64)> {
        let before: HashMap<&str, u64> = p.iter().map(|r| (r.reason.as_str(), r.packets)).collect();
        c.iter()
            .map(|r| {
                let old = before.get(r.reason.as_str()).copied().unwrap_or(0);
                (r.reason.clone(), per_second(old, r.packets, seconds))
            })
            .collect()
    };
    let mut reasons: Vec<(String, f64)> = counts(&prev.reasons, &cur.reasons)
        .into_iter()
        .filter(|(_, r)| *r > 0.0)
        .collect();
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Frame {
        seconds,
        vips,
        verdicts: counts(&prev.verdicts, &cur.verdicts),
        reasons,
    }
}

/// Seconds between two snapshots: lbd's clock when both carry it, else when they arrived.
fn seconds_between(
    prev: &pb::GetStatsResponse,
    cur: &pb::GetStatsResponse,
    prev_at: Instant,
    cur_at: Instant,
) -> f64 {
    if prev.monotonic_ns != 0 && cur.monotonic_ns > prev.monotonic_ns {
        (cur.monotonic_ns - prev.monotonic_ns) as f64 / 1e9
    } else {
        cur_at.duration_since(prev_at).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

/// `1234567` -> `1.23M`; below 1000 as is (one decimal below 10).
pub fn si(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        return "-".into();
    }
    if v < 10.0 {
        return if v == v.trunc() {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        };
    }
    if v < 1000.0 {
        return format!("{v:.0}");
    }
    let mut v = v;
    for unit in ["k", "M", "G", "T", "P"] {
        v /= 1000.0;
        if v < 999.5 {
            return if v < 9.995 {
                format!("{v:.2}{unit}")
            } else if v < 99.95 {
                format!("{v:.1}{unit}")
            } else {
                format!("{v:.0}{unit}")
            };
        }
    }
    format!("{v:.0}P")
}

/// The table of one frame (no escape codes).
pub fn render(out: &mut dyn Write, title: &str, f: &Frame) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    writeln!(out)?;
    let mut rows: Vec<[String; 5]> = vec![[
        "VIP / BACKEND".into(),
        "WEIGHT".into(),
        "PKT/S".into(),
        "BIT/S".into(),
        "NEW FLOWS/S".into(),
    ]];
    for v in &f.vips {
        let key = pb::VipKey {
            address: v.address.clone(),
            port: v.port,
            protocol: match v.protocol.as_str() {
                "tcp" => pb::Protocol::Tcp as i32,
                "udp" => pb::Protocol::Udp as i32,
                _ => 0,
            },
        };
        rows.push([
            vip_label(&key),
            String::new(),
            si(v.rate.packets_per_second),
            si(v.rate.bits_per_second),
            si(v.rate.new_flows_per_second),
        ]);
        for b in &v.backends {
            rows.push([
                format!("  {}:{}", b.address, b.port),
                b.weight.to_string(),
                si(b.rate.packets_per_second),
                si(b.rate.bits_per_second),
                si(b.rate.new_flows_per_second),
            ]);
        }
    }
    if f.vips.is_empty() {
        rows.push([
            "no VIPs configured".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:>w4$}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    let verdicts: Vec<String> = f
        .verdicts
        .iter()
        .map(|(v, r)| format!("{} {}", v.trim_start_matches("XDP_"), si(*r)))
        .collect();
    writeln!(out, "verdicts/s: {}", verdicts.join("  "))?;
    if !f.reasons.is_empty() {
        let reasons: Vec<String> = f
            .reasons
            .iter()
            .take(6)
            .map(|(n, r)| format!("{n} {}", si(*r)))
            .collect();
        writeln!(out, "reasons/s:  {}", reasons.join("  "))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The loop

/// Watches lbd's stats and redraws until Ctrl-C, the last iteration, or an error.
pub async fn run(cmd: &Top, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let interval_ms = u32::try_from(cmd.interval.as_millis()).unwrap_or(u32::MAX);
    let req = pb::WatchStatsRequest { interval_ms };
    let mut stream = match tokio::time::timeout(args.timeout, lbd.stats.watch_stats(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => return Err(RpcError(status).into()),
        Err(_) => bail!("no reply from lbd within {:?}", args.timeout),
    };
    let tty = !args.json && std::io::stdout().is_terminal();
    let title = |f: &Frame, n: u64| {
        format!(
            "lbctl top - lbd at {} - every {} - update {n}{} (Ctrl-C quits)",
            args.target,
            humanize(cmd.interval),
            match cmd.iterations {
                Some(total) => format!(" of {total}"),
                None => String::new(),
            },
        ) + &format!(" - over {:.2}s", f.seconds)
    };
    if tty {
        writeln!(
            out,
            "{CLEAR}lbctl top - waiting for the first interval ({})...",
            humanize(cmd.interval)
        )?;
        out.flush()?;
    }
    // A snapshot may come late by one interval plus the request timeout, no more.
    let patience = cmd.interval + args.timeout;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut prev: Option<(pb::GetStatsResponse, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = tokio::time::timeout(patience, stream.message()) => next,
        };
        let snap = match next {
            Err(_) => bail!("no snapshot from lbd within {patience:?}"),
            Ok(Err(status)) => return Err(RpcError(status).into()),
            Ok(Ok(None)) => bail!("lbd ended the stats stream"),
            Ok(Ok(Some(s))) => s,
        };
        let at = Instant::now();
        if let Some((p, p_at)) = &prev {
            shown += 1;
            let f = frame(p, &snap, seconds_between(p, &snap, *p_at, at));
            if args.json {
                crate::output::write_json(out, &f)?;
            } else {
                if tty {
                    write!(out, "{CLEAR}")?;
                } else if shown > 1 {
                    writeln!(out)?;
                }
                render(out, &title(&f, shown), &f)?;
            }
            out.flush().context("cannot write to stdout")?;
            if cmd.iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
        prev = Some((snap, at));
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ns: u64, vip: (u64, u64, u64), b1: (u64, u64, u64), tx: u64) -> pb::GetStatsResponse {
        let c = |(packets, bytes, new_flows)| pb::Counters {
            packets,
            bytes,
            new_flows,
        };
        pb::GetStatsResponse {
            vips: vec![pb::VipStats {
                vip: Some(pb::VipKey {
                    address: "10.0.0.10".into(),
                    port: 80,
                    protocol: pb::Protocol::Tcp as i32,
                }),
                counters: Some(c(vip)),
                backends: vec![pb::BackendStats {
                    backend: Some(pb::Backend {
                        address: "10.0.2.1".into(),
                        port: 8080,
                        weight: Some(100),
                        ..Default::default()
                    }),
                    counters: Some(c(b1)),
                }],
            }],
            reasons: vec![pb::ReasonCount {
                reason: "tx_nat_forward".into(),
                packets: tx,
            }],
            verdicts: vec![pb::ReasonCount {
                reason: "XDP_TX".into(),
                packets: tx,
            }],
            monotonic_ns: ns,
        }
    }

    #[test]
    fn rates_divide_by_lbds_clock() {
        let a = snap(1_000_000_000, (100, 10_000, 10), (50, 5_000, 5), 100);
        let b = snap(3_000_000_000, (300, 60_000, 30), (150, 30_000, 15), 300);
        let now = Instant::now();
        // Arrival times disagree with lbd's clock: lbd's wins.
        let s = seconds_between(&a, &b, now, now + Duration::from_millis(2500));
        assert!((s - 2.0).abs() < 1e-9, "{s}");
        let f = frame(&a, &b, s);
        let v = &f.vips[0];
        assert_eq!(v.rate.packets_per_second, 100.0);
        assert_eq!(v.rate.bits_per_second, 200_000.0);
        assert_eq!(v.rate.new_flows_per_second, 10.0);
        assert_eq!(v.backends[0].rate.packets_per_second, 50.0);
        assert_eq!(f.verdicts, vec![("XDP_TX".to_string(), 100.0)]);
        assert_eq!(f.reasons, vec![("tx_nat_forward".to_string(), 100.0)]);
        // Without lbd's clock, arrival times are used.
        let mut a0 = a.clone();
        a0.monotonic_ns = 0;
        let s = seconds_between(&a0, &b, now, now + Duration::from_millis(2500));
        assert!((s - 2.5).abs() < 1e-6, "{s}");
    }

    #[test]
    fn reset_counters_and_new_entries_count_from_zero() {
        let a = snap(1_000_000_000, (1000, 0, 0), (1000, 0, 0), 0);
        let b = snap(2_000_000_000, (10, 0, 0), (10, 0, 0), 0);
        assert_eq!(frame(&a, &b, 1.0).vips[0].rate.packets_per_second, 10.0);
        let empty = pb::GetStatsResponse::default();
        assert_eq!(
            frame(&empty, &b, 1.0).vips[0].backends[0]
                .rate
                .packets_per_second,
            10.0
        );
    }

    #[test]
    fn si_units() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1234.0), "1.23k");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(123_456.0), "123k");
        assert_eq!(si(9_800_000.0), "9.80M");
        assert_eq!(si(999_999.0), "1.00M");
        assert_eq!(si(f64::NAN), "-");
    }

    #[test]
    fn table() {
        let a = snap(1_000_000_000, (0, 0, 0), (0, 0, 0), 0);
        let b = snap(
            2_000_000_000,
            (1500, 1_500_000, 100),
            (700, 700_000, 40),
            1500,
        );
        let f = frame(&a, &b, 1.0);
        let mut buf = Vec::new();
        render(&mut buf, "title", &f).expect("render");
        let text = String::from_utf8(buf).expect("utf-8");
        assert_eq!(
            text,
            "title\n\
             \n\
             VIP / BACKEND     WEIGHT  PKT/S  BIT/S  NEW FLOWS/S\n\
             10.0.0.10:80/tcp          1.50k  12.0M          100\n\
             \x20 10.0.2.1:8080      100    700  5.60M           40\n\
             \n\
             verdicts/s: TX 1.50k\n\
             reasons/s:  tx_nat_forward 1.50k\n"
        );
        let json = serde_json::to_value(&f).expect("json");
        assert_eq!(json["vips"][0]["packets_per_second"], 1500.0);
        assert_eq!(
            json["vips"][0]["backends"][0]["bits_per_second"],
            5_600_000.0
        );
    }

    #[test]
    fn arguments() {
        let top = |i: &str, n: Option<&str>| {
            Top::try_from(TopArgs {
                interval: i.into(),
                iterations: n.map(Into::into),
            })
        };
        assert_eq!(
            top("1s", None).expect("default"),
            Top {
                interval: Duration::from_secs(1),
                iterations: None
            }
        );
        assert_eq!(top("500ms", Some("3")).expect("valid").iterations, Some(3));
        assert!(top("50ms", None).is_err());
        assert!(top("2m", None).is_err());
        let e = top("1s", Some("0")).expect_err("zero iterations");
        assert_eq!(
            e.to_string(),
            "invalid --iterations '0': expected a positive integer"
        );
    }
}
