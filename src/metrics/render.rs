//! What a scrape exports, as plain data ([`Sample`]), and its naming and formatting: metric
//! families, labels, and the Prometheus 0.0.4 / OpenMetrics text.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::dataplane::telemetry::Walk;
use crate::dataplane::Counters;

/// Counters of one backend of a VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BackendSample {
    /// `ADDR:PORT`.
    pub(crate) backend: String,
    pub(crate) weight: u32,
    pub(crate) counters: Counters,
    /// Live flows to this backend (from the last walk).
    pub(crate) tracked_flows: u64,
    /// Its health, when the VIP has a health check.
    pub(crate) health: Option<HealthSample>,
}

/// A checked backend's health: whether it is marked down, and the checker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HealthSample {
    pub(crate) up: bool,
    pub(crate) counts: crate::health::view::HealthCounts,
}

/// Counters of one VIP and its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VipSample {
    /// `ADDR:PORT`.
    pub(crate) vip: String,
    /// `tcp` or `udp`.
    pub(crate) proto: String,
    /// `nat`, `l2dsr` or `ipip`.
    pub(crate) mode: String,
    pub(crate) counters: Counters,
    /// Live flows of this VIP (from the last walk).
    pub(crate) tracked_flows: u64,
    pub(crate) backends: Vec<BackendSample>,
}

/// Everything one scrape exports, as plain data (so that naming and formatting are testable
/// without a data plane).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) vips: Vec<VipSample>,
    /// Packets per `enum lb_reason`, by name.
    pub(crate) reasons: Vec<(String, u64)>,
    /// Packets per XDP verdict, by name.
    pub(crate) verdicts: Vec<(String, u64)>,
    /// Flow-table events (`enum lb_event`), by name.
    pub(crate) flow_events: Vec<(String, u64)>,
    /// The last map walk; `None` if it failed.
    pub(crate) walk: Option<Walk>,
    /// The VIP addresses' blackhole routes; `None` when lbd keeps none.
    pub(crate) routes: Option<crate::routes::RouteCounts>,
}

/// Label sets, in the order they are written.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family: its descriptor, then one sample per label set.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut m = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<u64> {
    ConstGauge::new(v)
}

/// Writes every metric of `s` (names get the registry's `xdplb_` prefix).
pub(crate) fn encode_sample(s: &Sample, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let bytes = Unit::Bytes;
    fn vip(v: &VipSample) -> Labels<'_> {
        vec![("vip", &v.vip), ("proto", &v.proto)]
    }
    fn backend(v: &VipSample) -> impl Iterator<Item = (Labels<'_>, &BackendSample)> {
        v.backends.iter().map(move |b| {
            (
                vec![
                    ("vip", v.vip.as_str()),
                    ("proto", v.proto.as_str()),
                    ("backend", b.backend.as_str()),
                ],
                b,
            )
        })
    }

    family(
        &mut e,
        "vip_info",
        "Configured VIPs (value 1) and their forwarding mode.",
        None,
        MetricType::Gauge,
        s.vips.iter().map(|v| {
            let mut l = vip(v);
            l.push(("mode", &v.mode));
            (l, gauge(1))
        }),
    )?;
    family(
        &mut e,
        "vip_packets",
        "Packets from clients to a VIP that the data plane gave a backend (counted before forwarding).",
        None,
        MetricType::Counter,
        s.vips.iter().map(|v| (vip(v), counter(v.counters.packets))),
    )?;
    family(
        &mut e,
        "vip",
        "Bytes (frame lengths as received, Ethernet header included) from clients to a VIP.",
        Some(&bytes),
        MetricType::Counter,
        s.vips.iter().map(|v| (vip(v), counter(v.counters.bytes))),
    )?;
    family(
        &mut e,
        "vip_new_flows",
        "Flows to a VIP that got a backend (new flow-table entries).",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .map(|v| (vip(v), counter(v.counters.new_flows))),
    )?;
    family(
        &mut e,
        "vip_tracked_flows",
        "Live flows of a VIP in the flow table (not idle past their timeout), from the last map walk.",
        None,
        MetricType::Gauge,
        s.vips.iter().map(|v| (vip(v), gauge(v.tracked_flows))),
    )?;
    family(
        &mut e,
        "backend_weight",
        "Maglev weight of a backend (0: drained, no new flows).",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, gauge(u64::from(b.weight)))),
    )?;
    family(
        &mut e,
        "backend_packets",
        "Packets of the flows of a backend: client to backend and, in NAT mode, the backend's replies.",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.packets))),
    )?;
    family(
        &mut e,
        "backend",
        "Bytes (frame lengths as received) of the flows of a backend, both directions in NAT mode.",
        Some(&bytes),
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.bytes))),
    )?;
    family(
        &mut e,
        "backend_new_flows",
        "New flows the data plane gave to a backend of a VIP.",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, counter(b.counters.new_flows))),
    )?;
    family(
        &mut e,
        "backend_tracked_flows",
        "Live flows to a backend in the flow table, from the last map walk.",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(backend)
            .map(|(l, b)| (l, gauge(b.tracked_flows))),
    )?;
    fn checked(v: &VipSample) -> impl Iterator<Item = (Labels<'_>, &HealthSample)> {
        backend(v).filter_map(|(l, b)| b.health.as_ref().map(|h| (l, h)))
    }
    family(
        &mut e,
        "backend_up",
        "Health of a backend of a VIP with a health check: 1 up (or not probed yet), 0 marked down (out of the Maglev table for new flows).",
        None,
        MetricType::Gauge,
        s.vips
            .iter()
            .flat_map(checked)
            .map(|(l, h)| (l, gauge(u64::from(h.up)))),
    )?;
    family(
        &mut e,
        "backend_health_transitions",
        "Health transitions of a backend: to=\"down\" (taken out after `fall` failed probes) and to=\"up\" (back after `rise` good ones).",
        None,
        MetricType::Counter,
        s.vips.iter().flat_map(checked).flat_map(|(l, h)| {
            let mut down = l.clone();
            down.push(("to", "down"));
            let mut up = l;
            up.push(("to", "up"));
            [
                (down, counter(h.counts.went_down)),
                (up, counter(h.counts.came_up)),
            ]
        }),
    )?;
    family(
        &mut e,
        "backend_probe_failures",
        "Health probes of a backend that failed (refused, timed out, wrong HTTP status, no UDP reply).",
        None,
        MetricType::Counter,
        s.vips
            .iter()
            .flat_map(checked)
            .map(|(l, h)| (l, counter(h.counts.probe_failures))),
    )?;
    family(
        &mut e,
        "packets",
        "Packets the XDP program handled, by why they got their verdict (enum lb_reason).",
        None,
        MetricType::Counter,
        s.reasons
            .iter()
            .map(|(r, n)| (vec![("reason", r.as_str())], counter(*n))),
    )?;
    family(
        &mut e,
        "verdicts",
        "Packets the XDP program handled, by XDP verdict.",
        None,
        MetricType::Counter,
        s.verdicts
            .iter()
            .map(|(v, n)| (vec![("verdict", v.as_str())], counter(*n))),
    )?;
    family(
        &mut e,
        "flow_events",
        "Flow-table events (enum lb_event): embryonic flows, promotions, DSR flows chosen again \
         by Maglev, new flows the DSR guard left unrecorded, SNAT port take-overs and races.",
        None,
        MetricType::Counter,
        s.flow_events
            .iter()
            .map(|(v, n)| (vec![("event", v.as_str())], counter(*n))),
    )?;
    family(
        &mut e,
        "blackhole_routes",
        "Blackhole routes lbd holds for the VIP addresses (one per address some VIP has).",
        None,
        MetricType::Gauge,
        s.routes.map(|r| (vec![], gauge(r.installed))),
    )?;
    family(
        &mut e,
        "blackhole_route_errors",
        "Blackhole routes of VIP addresses that lbd could not add or remove; lbd's log says why.",
        None,
        MetricType::Counter,
        s.routes.map(|r| (vec![], counter(r.errors))),
    )?;

    let Some(walk) = &s.walk else {
        return Ok(());
    };
    family(
        &mut e,
        "map_entries",
        "Entries in a hash, LRU or LPM-trie map of the data plane, from the last map walk.",
        None,
        MetricType::Gauge,
        walk.maps.iter().map(|m| {
            (
                vec![("map", m.map.as_str()), ("type", m.kind)],
                gauge(m.entries),
            )
        }),
    )?;
    family(
        &mut e,
        "map_capacity",
        "Most entries a hash, LRU or LPM-trie map of the data plane holds (max_entries).",
        None,
        MetricType::Gauge,
        walk.maps.iter().map(|m| {
            (
                vec![("map", m.map.as_str()), ("type", m.kind)],
                gauge(m.capacity),
            )
        }),
    )?;
    family(
        &mut e,
        "map_walk_duration",
        "How long the last walk of the maps took (it is reused for 50 times as long, at most 10 s).",
        Some(&Unit::Seconds),
        MetricType::Gauge,
        [(Vec::new(), ConstGauge::new(walk.took.as_secs_f64()))],
    )?;
    family(
        &mut e,
        "flows_expired",
        "Flow-table entries idle past their timeout and not evicted yet, from the last map walk.",
        None,
        MetricType::Gauge,
        [(Vec::new(), gauge(walk.flows.expired))],
    )?;
    if let Some(rules) = &walk.firewall {
        let nets: Vec<String> = rules.iter().map(|r| r.net.to_string()).collect();
        family(
            &mut e,
            "firewall_rule_hits",
            "Packets whose verdict a firewall rule decided: the 20 rules with the most hits only.",
            None,
            MetricType::Counter,
            rules.iter().zip(&nets).map(|(r, net)| {
                (
                    vec![("rule", net.as_str()), ("action", r.action)],
                    counter(r.packets),
                )
            }),
        )?;
    }
    if let Some(policies) = &walk.ratelimit {
        let names: Vec<String> = policies
            .iter()
            .map(|p| {
                p.net
                    .map_or_else(|| "default".to_string(), |n| n.to_string())
            })
            .collect();
        family(
            &mut e,
            "ratelimit_packets",
            "Packets a rate-limit policy checked, by result (allowed or dropped).",
            None,
            MetricType::Counter,
            policies.iter().zip(&names).flat_map(|(p, name)| {
                [
                    (
                        vec![("policy", name.as_str()), ("result", "allowed")],
                        counter(p.allowed),
                    ),
                    (
                        vec![("policy", name.as_str()), ("result", "dropped")],
                        counter(p.dropped),
                    ),
                ]
            }),
        )?;
    }
    Ok(())
}

/// The registry as text: OpenMetrics, or else the Prometheus text format 0.0.4.
pub(crate) fn render(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::telemetry::{Flows, Occupancy, PolicyCounts, RuleHits};
    use prometheus_client::collector::Collector;
    use prometheus_client::metrics::info::Info;
    use std::time::Duration;

    /// A collector that exports a fixed sample.
    #[derive(Debug)]
    struct Fixed(Sample);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_sample(&self.0, encoder)
        }
    }

    fn sample() -> Sample {
        let c = |p, b, f| Counters {
            packets: p,
            bytes: b,
            new_flows: f,
        };
        Sample {
            vips: vec![VipSample {
                vip: "10.0.0.10:80".into(),
                proto: "tcp".into(),
                mode: "nat".into(),
                counters: c(10, 1000, 2),
                tracked_flows: 2,
                backends: vec![BackendSample {
                    backend: "10.0.2.1:8080".into(),
                    weight: 100,
                    counters: c(7, 700, 1),
                    tracked_flows: 1,
                    health: Some(HealthSample {
                        up: false,
                        counts: crate::health::view::HealthCounts {
                            went_down: 2,
                            came_up: 1,
                            probe_failures: 9,
                        },
                    }),
                }],
            }],
            reasons: vec![("pass_not_vip".into(), 3), ("tx_nat_forward".into(), 10)],
            verdicts: vec![("XDP_PASS".into(), 3), ("XDP_TX".into(), 10)],
            flow_events: vec![("promoted".into(), 4)],
            routes: Some(crate::routes::RouteCounts {
                installed: 2,
                errors: 1,
            }),
            walk: Some(Walk {
                maps: vec![Occupancy {
                    map: "nat_fwd_v2".into(),
                    kind: "lru_hash",
                    entries: 2,
                    capacity: 1024,
                }],
                flows: Flows::default(),
                firewall: Some(vec![RuleHits {
                    net: "192.0.2.0/24".parse().expect("prefix"),
                    action: "block",
                    packets: 5,
                }]),
                ratelimit: Some(vec![PolicyCounts {
                    net: None,
                    allowed: 8,
                    dropped: 1,
                }]),
                took: Duration::from_millis(2),
            }),
        }
    }

    fn fixed_registry(s: Sample) -> Registry {
        let mut r = Registry::with_prefix("xdplb");
        r.register(
            "build",
            "The running lbd (value 1).",
            Info::new(vec![("version", "1.2.3")]),
        );
        r.register_collector(Box::new(Fixed(s)));
        r
    }

    #[test]
    fn prometheus_text_names_and_labels() {
        let text = render(&fixed_registry(sample()), false).expect("renders");
        for line in [
            "xdplb_build_info{version=\"1.2.3\"} 1",
            "# TYPE xdplb_vip_packets_total counter",
            "xdplb_vip_packets_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 10",
            "xdplb_vip_bytes_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 1000",
            "xdplb_vip_new_flows_total{vip=\"10.0.0.10:80\",proto=\"tcp\"} 2",
            "xdplb_vip_tracked_flows{vip=\"10.0.0.10:80\",proto=\"tcp\"} 2",
            "xdplb_vip_info{vip=\"10.0.0.10:80\",proto=\"tcp\",mode=\"nat\"} 1",
            "xdplb_backend_packets_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 7",
            "xdplb_backend_bytes_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 700",
            "xdplb_backend_weight{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 100",
            "xdplb_backend_tracked_flows{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 1",
            "xdplb_backend_up{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 0",
            "xdplb_backend_health_transitions_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\",to=\"down\"} 2",
            "xdplb_backend_health_transitions_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\",to=\"up\"} 1",
            "xdplb_backend_probe_failures_total{vip=\"10.0.0.10:80\",proto=\"tcp\",backend=\"10.0.2.1:8080\"} 9",
            "xdplb_packets_total{reason=\"pass_not_vip\"} 3",
            "xdplb_verdicts_total{verdict=\"XDP_TX\"} 10",
            "xdplb_map_entries{map=\"nat_fwd_v2\",type=\"lru_hash\"} 2",
            "xdplb_map_capacity{map=\"nat_fwd_v2\",type=\"lru_hash\"} 1024",
            "xdplb_flow_events_total{event=\"promoted\"} 4",
            "xdplb_blackhole_routes 2",
            "xdplb_blackhole_route_errors_total 1",
            "xdplb_firewall_rule_hits_total{rule=\"192.0.2.0/24\",action=\"block\"} 5",
            "xdplb_ratelimit_packets_total{policy=\"default\",result=\"dropped\"} 1",
            "# TYPE xdplb_map_walk_duration_seconds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "0.0.4 has no EOF marker");
        // Every family has HELP and TYPE.
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
    }

    #[test]
    fn openmetrics_has_units_and_eof() {
        let text = render(&fixed_registry(sample()), true).expect("renders");
        assert!(text.contains("# UNIT xdplb_vip_bytes bytes"), "{text}");
        assert!(text.contains("# TYPE xdplb_build info"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn empty_families_are_left_out() {
        let text = render(
            &fixed_registry(Sample {
                walk: None,
                ..Sample::default()
            }),
            false,
        )
        .expect("renders");
        assert!(!text.contains("xdplb_vip_packets"), "{text}");
        assert!(!text.contains("xdplb_map_entries"), "{text}");
        assert!(!text.contains("xdplb_blackhole_routes"), "{text}");
        assert!(text.contains("xdplb_build_info"), "{text}");
    }

    #[test]
    fn health_families_only_for_checked_backends() {
        let mut s = sample();
        s.vips[0].backends[0].health = None;
        let text = render(&fixed_registry(s), false).expect("renders");
        for name in [
            "xdplb_backend_up",
            "xdplb_backend_health_transitions",
            "xdplb_backend_probe_failures",
        ] {
            assert!(
                !text.contains(name),
                "{name} for an unchecked backend:\n{text}"
            );
        }
        assert!(text.contains("xdplb_backend_weight{"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = sample();
        s.reasons = vec![("we\"ird\\name\n".into(), 1)];
        let text = render(&fixed_registry(s), false).expect("renders");
        assert!(
            text.contains(r#"xdplb_packets_total{reason="we\"ird\\name\n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn promtool_finds_no_problems() {
        // promtool comes with Debian's `prometheus` package (make deps); skip quietly without it.
        let text = render(&fixed_registry(sample()), false).expect("renders");
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: skipping");
            return;
        };
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
