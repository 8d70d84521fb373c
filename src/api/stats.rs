//! The `Stats` gRPC service: per-VIP, per-backend, per-reason and per-verdict counters, summed over CPUs.

use tonic::{Request, Response, Status};

use super::pb::{self, stats_server::Stats};
use super::{pb_vip_key, ApiError, Controller};
use crate::dataplane::maps::{reason_name, verdict_name};
use crate::dataplane::Counters;

pub struct StatsService {
    ctl: Controller,
}

impl StatsService {
    pub fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

fn pb_counters(c: Counters) -> pb::Counters {
    pb::Counters {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
    }
}

#[tonic::async_trait]
impl Stats for StatsService {
    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let resp = self
            .ctl
            .read(|state, r| -> Result<pb::GetStatsResponse, ApiError> {
                let maps = r.dataplane().maps();
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
                            }),
                            counters: Some(pb_counters(
                                maps.backend_counters(bid)
                                    .map_err(crate::reconcile::ReconcileError::from)?,
                            )),
                        });
                    }
                    vips.push(pb::VipStats {
                        vip: Some(pb_vip_key(key)),
                        counters: Some(pb_counters(
                            maps.vip_counters(id)
                                .map_err(crate::reconcile::ReconcileError::from)?,
                        )),
                        backends,
                    });
                }
                let g = maps
                    .global_counters()
                    .map_err(crate::reconcile::ReconcileError::from)?;
                let reasons = g
                    .reasons
                    .iter()
                    .enumerate()
                    .map(|(i, n)| pb::ReasonCount {
                        reason: reason_name(i),
                        packets: *n,
                    })
                    .collect();
                let verdicts = g
                    .verdicts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| pb::ReasonCount {
                        reason: verdict_name(i).to_string(),
                        packets: *n,
                    })
                    .collect();
                Ok(pb::GetStatsResponse {
                    vips,
                    reasons,
                    verdicts,
                })
            })
            .await?;
        Ok(Response::new(resp))
    }
}
