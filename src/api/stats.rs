//! The `Stats` gRPC service: per-VIP, per-backend, per-reason and per-verdict counters, summed
//! over CPUs, as one snapshot (`GetStats`) or as a stream of snapshots (`WatchStats`).

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::{Controller, Counters};
use xdplb_proto::pb::{self, stats_server::Stats};

/// Shortest `WatchStats` interval: each snapshot takes the controller's lock briefly.
pub(crate) const MIN_WATCH_INTERVAL_MS: u32 = 100;
/// Longest `WatchStats` interval.
pub(crate) const MAX_WATCH_INTERVAL_MS: u32 = 60_000;

pub(crate) struct StatsService {
    ctl: Controller,
    stop: Option<watch::Receiver<bool>>,
}

impl StatsService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl, stop: None }
    }

    /// Ends every `WatchStats` stream (with `Unavailable`) once `stop` turns true, so that a
    /// graceful shutdown of the gRPC server does not wait for clients that watch forever.
    pub(crate) fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

fn pb_counters(c: Counters) -> pb::Counters {
    pb::Counters {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
    }
}

/// One snapshot of every counter (what `GetStats` answers and `WatchStats` streams).
pub(crate) async fn snapshot(ctl: &Controller) -> Result<pb::GetStatsResponse, ApiError> {
    ctl.read(|state, r| -> Result<pb::GetStatsResponse, ApiError> {
        let mut vips = Vec::new();
        for (key, v) in &state.vips {
            let Some(id) = r.vip_id(key) else { continue };
            let mut backends = Vec::new();
            for (addr, w) in &v.backends {
                let Some(bid) = r.backend_id(key, addr) else {
                    continue;
                };
                backends.push(pb::BackendStats {
                    backend: Some(pb::Backend {
                        address: addr.ip().to_string(),
                        port: u32::from(addr.port()),
                        weight: Some(*w),
                        id: bid,
                        ..Default::default()
                    }),
                    counters: Some(pb_counters(r.backend_counters(bid)?)),
                });
            }
            vips.push(pb::VipStats {
                vip: Some(pb::VipKey::from(key)),
                counters: Some(pb_counters(r.vip_counters(id)?)),
                backends,
            });
        }
        let g = r.global_counts()?;
        let monotonic_ns = r.monotonic_ns();
        let reasons = g
            .reasons
            .into_iter()
            .map(|(reason, packets)| pb::ReasonCount { reason, packets })
            .collect();
        let verdicts = g
            .verdicts
            .into_iter()
            .map(|(v, packets)| pb::ReasonCount {
                reason: v.to_string(),
                packets,
            })
            .collect();
        Ok(pb::GetStatsResponse {
            vips,
            reasons,
            verdicts,
            monotonic_ns,
        })
    })
    .await
}

/// The interval of a `WatchStats` request.
pub(crate) fn validate_watch(req: &pb::WatchStatsRequest) -> Result<Duration, ApiError> {
    let ms = req.interval_ms;
    if !(MIN_WATCH_INTERVAL_MS..=MAX_WATCH_INTERVAL_MS).contains(&ms) {
        return Err(invalid(
            "interval_ms",
            format!("{ms} is outside {MIN_WATCH_INTERVAL_MS}..={MAX_WATCH_INTERVAL_MS}"),
        ));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Sends a snapshot at once and then every `interval` until the client goes away, a snapshot
/// fails, or `stop` turns true.
async fn watch_loop(
    ctl: Controller,
    interval: Duration,
    stop: Option<watch::Receiver<bool>>,
    tx: mpsc::Sender<Result<pb::GetStatsResponse, Status>>,
) {
    every(interval, stop, tx, move || {
        let ctl = ctl.clone();
        async move {
            let snap = snapshot(&ctl).await.map_err(Status::from);
            let last = snap.is_err();
            (snap, last)
        }
    })
    .await;
}

/// The loop of a watch stream: sends `next()` at once and then every `interval` until `next`
/// says its answer was the last, the client goes away, or `stop` turns true (then the stream
/// ends with `Unavailable`). A slow client gets fewer answers, not a burst of late ones.
pub(crate) async fn every<T, F, Fut>(
    interval: Duration,
    mut stop: Option<watch::Receiver<bool>>,
    tx: mpsc::Sender<Result<T, Status>>,
    mut next: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Result<T, Status>, bool)>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tx.closed() => return,
            _ = stopped(&mut stop) => {
                let _ = tx.send(Err(Status::unavailable("lbd is shutting down"))).await;
                return;
            }
        }
        let (answer, last) = next().await;
        if tx.send(answer).await.is_err() || last {
            return;
        }
    }
}

/// Resolves once `stop` turns true (never without a stop signal; at once if its sender is gone).
pub(crate) async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

type SnapshotStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GetStatsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Stats for StatsService {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        Ok(Response::new(snapshot(&self.ctl).await?))
    }

    type WatchStatsStream = SnapshotStream;

    async fn watch_stats(
        &self,
        request: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval = validate_watch(request.get_ref())?;
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            return Err(Status::unavailable("lbd is shutting down"));
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(watch_loop(
            self.ctl.clone(),
            interval,
            self.stop.clone(),
            tx,
        ));
        tracing::debug!(
            interval_ms = request.get_ref().interval_ms,
            "stats watch started"
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_interval_bounds() {
        let req = |ms| pb::WatchStatsRequest { interval_ms: ms };
        assert_eq!(
            validate_watch(&req(100)).expect("lowest"),
            Duration::from_millis(100)
        );
        assert_eq!(
            validate_watch(&req(60_000)).expect("highest"),
            Duration::from_secs(60)
        );
        for bad in [0, 99, 60_001, u32::MAX] {
            let e = validate_watch(&req(bad)).expect_err("out of range");
            assert!(e.to_string().starts_with("interval_ms: "), "{e}");
            assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        }
    }
}
