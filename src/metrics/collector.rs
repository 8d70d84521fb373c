//! The collector: at every scrape it reads the counters through the controller (under its
//! lock) and walks the maps outside it, reusing a walk for a time in proportion to its cost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::render::{encode_sample, BackendSample, HealthSample, Sample, VipSample};
use crate::controller::{Controller, Reader};
use crate::dataplane::telemetry::{Telemetry, Walk};
use crate::dataplane::DataplaneError;
use crate::reconcile::ReconcileError;

/// The longest a map walk is reused.
pub(crate) const MAX_WALK_REUSE: Duration = Duration::from_secs(10);
/// A walk is reused for this many times as long as it took.
const WALK_REUSE_FACTOR: u32 = 50;

/// Ids of the VIPs and backends of a [`Sample`], to attach the walk's flow counts.
struct Ids {
    vips: Vec<(u32, Vec<u32>)>,
}

struct CachedWalk {
    at: Instant,
    walk: Walk,
}

/// Reads the data plane at every scrape (see the module docs).
pub(crate) struct LbCollector {
    ctl: Controller,
    walk: Mutex<Option<CachedWalk>>,
    read_errors: Counter,
}

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbCollector").finish_non_exhaustive()
    }
}

impl LbCollector {
    /// Reads the counters under the lock, then walks the maps (or reuses the last walk).
    fn sample(&self) -> Result<Sample, ReconcileError> {
        // The collector runs on a blocking thread (see `render`), where waiting is allowed.
        let (mut sample, ids, telemetry) =
            futures::executor::block_on(self.ctl.read(read_counters))?;
        sample.routes = futures::executor::block_on(self.ctl.route_counts());
        sample.walk = match self.walk(telemetry) {
            Ok(w) => Some(w),
            Err(e) => {
                self.read_errors.inc();
                tracing::warn!(error = %e, "metrics: walking the maps failed");
                None
            }
        };
        if let Some(walk) = &sample.walk {
            for (v, (vip_id, backend_ids)) in sample.vips.iter_mut().zip(&ids.vips) {
                v.tracked_flows = walk.flows.by_vip.get(vip_id).copied().unwrap_or(0);
                for (b, id) in v.backends.iter_mut().zip(backend_ids) {
                    b.tracked_flows = walk.flows.by_backend.get(id).copied().unwrap_or(0);
                }
            }
        }
        Ok(sample)
    }

    /// The last walk if it is recent enough for its cost, else a new one. Scrapes that arrive
    /// together wait for one walk.
    fn walk(&self, telemetry: Telemetry) -> Result<Walk, DataplaneError> {
        let mut cached = self.walk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.at.elapsed() < walk_reuse(c.walk.took) {
                return Ok(c.walk.clone());
            }
        }
        let walk = telemetry.walk()?;
        *cached = Some(CachedWalk {
            at: Instant::now(),
            walk: walk.clone(),
        });
        Ok(walk)
    }
}

/// How long a walk that took `took` is reused.
pub(crate) fn walk_reuse(took: Duration) -> Duration {
    took.saturating_mul(WALK_REUSE_FACTOR).min(MAX_WALK_REUSE)
}

/// The counters of every VIP and backend and the global ones (under the controller's lock).
fn read_counters(
    state: &xdplb_model::state::State,
    r: &Reader<'_>,
) -> Result<(Sample, Ids, Telemetry), ReconcileError> {
    let mut sample = Sample::default();
    let mut ids = Ids { vips: Vec::new() };
    for (key, v) in &state.vips {
        let Some(vip_id) = r.vip_id(key) else {
            continue;
        };
        let mut backends = Vec::new();
        let mut backend_ids = Vec::new();
        let health_stats = r.health().stats();
        for (addr, weight) in &v.backends {
            let Some(id) = r.backend_id(key, addr) else {
                continue;
            };
            let health = v.health.is_checked().then(|| HealthSample {
                up: !r.health().is_down(key, addr),
                counts: health_stats.get(key, addr),
            });
            backends.push(BackendSample {
                backend: addr.to_string(),
                weight: *weight,
                counters: r.backend_counters(id)?,
                tracked_flows: 0,
                health,
            });
            backend_ids.push(id);
        }
        sample.vips.push(VipSample {
            vip: key.addr.to_string(),
            proto: key.proto.to_string(),
            mode: v.mode.to_string(),
            counters: r.vip_counters(vip_id)?,
            tracked_flows: 0,
            backends,
        });
        ids.vips.push((vip_id, backend_ids));
    }
    let g = r.global_counts()?;
    sample.reasons = g.reasons;
    sample.flow_events = g.events;
    sample.verdicts = g
        .verdicts
        .into_iter()
        .map(|(v, n)| (v.to_string(), n))
        .collect();
    // The walk reads the hit counters of the rule ids in use only.
    let telemetry = r.telemetry()?;
    Ok((sample, ids, telemetry))
}

impl Collector for LbCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        match self.sample() {
            Ok(sample) => encode_sample(&sample, encoder),
            Err(e) => {
                // The endpoint still answers (build info, this error count); the log says why.
                self.read_errors.inc();
                tracing::warn!(error = %e, "metrics: reading the counters failed");
                Ok(())
            }
        }
    }
}

/// The registry lbd serves: build info, the read-error counter, and an [`LbCollector`] on `ctl`.
pub(crate) fn registry(ctl: Controller) -> Registry {
    let mut registry = Registry::with_prefix("xdplb");
    registry.register(
        "build",
        "The running lbd (value 1).",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let read_errors = Counter::default();
    registry.register(
        "metrics_read_errors",
        "Scrapes that could not read (part of) the data plane; lbd's log says why.",
        read_errors.clone(),
    );
    registry.register_collector(Box::new(LbCollector {
        ctl,
        walk: Mutex::new(None),
        read_errors,
    }));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_are_reused_in_proportion_to_their_cost() {
        assert_eq!(
            walk_reuse(Duration::from_millis(1)),
            Duration::from_millis(50)
        );
        assert_eq!(
            walk_reuse(Duration::from_millis(100)),
            Duration::from_secs(5)
        );
        assert_eq!(walk_reuse(Duration::from_secs(3)), MAX_WALK_REUSE);
    }
}
