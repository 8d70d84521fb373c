//! The `RateLimits` gRPC service: set, remove and list per-client rate-limit policies (the default
//! and per-CIDR overrides) with their counters, and list the clients with the most drops.

use ipnet::Ipv4Net;
use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::{Controller, PolicyCounters};
use crate::reconcile::ReconcileError;
use xdplb_model::ratelimit::{CidrPolicy, Policy};
use xdplb_proto::convert::parse_rate_limit_cidr;
use xdplb_proto::pb::{self, rate_limits_server::RateLimits};

/// Clients TopLimitedClients returns when the request says 0.
pub(crate) const DEFAULT_TOP: usize = 20;
/// Most clients TopLimitedClients returns.
pub(crate) const MAX_TOP: usize = 10_000;

pub(crate) struct RateLimitsService {
    ctl: Controller,
}

impl RateLimitsService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl }
    }
}

fn pb_rate_limit(cidr: Option<&Ipv4Net>, p: &Policy, id: u32, c: PolicyCounters) -> pb::RateLimit {
    pb::RateLimit {
        policy: Some(pb::RateLimitPolicy::from(&CidrPolicy {
            cidr: cidr.copied(),
            policy: *p,
        })),
        id,
        allowed: c.allowed,
        dropped: c.dropped,
    }
}

impl RateLimitsService {
    /// The policy of `cidr` with its id and counters, as they are now.
    async fn describe(&self, cidr: Option<Ipv4Net>) -> Result<Option<pb::RateLimit>, ApiError> {
        self.ctl
            .read(|state, r| -> Result<Option<pb::RateLimit>, ApiError> {
                let (Some(p), Some(id)) = (
                    state.ratelimit.get(cidr.as_ref()),
                    r.ratelimit_id(cidr.as_ref()),
                ) else {
                    return Ok(None);
                };
                let c = r.ratelimit_counters(id)?;
                Ok(Some(pb_rate_limit(cidr.as_ref(), p, id, c)))
            })
            .await
    }
}

#[tonic::async_trait]
impl RateLimits for RateLimitsService {
    async fn set_rate_limit(
        &self,
        request: Request<pb::SetRateLimitRequest>,
    ) -> Result<Response<pb::SetRateLimitResponse>, Status> {
        let CidrPolicy { cidr, policy } = CidrPolicy::try_from(request.get_ref())?;
        self.ctl
            .change(move |s| s.ratelimit.set(cidr, policy))
            .await?;
        match cidr {
            Some(net) => tracing::info!(cidr = %net, %policy, "rate-limit override set"),
            None => tracing::info!(%policy, "rate-limit default policy set"),
        }
        Ok(Response::new(pb::SetRateLimitResponse {
            rate_limit: self.describe(cidr).await?,
        }))
    }

    async fn remove_rate_limit(
        &self,
        request: Request<pb::RemoveRateLimitRequest>,
    ) -> Result<Response<pb::RemoveRateLimitResponse>, Status> {
        let cidr = parse_rate_limit_cidr("cidr", &request.get_ref().cidr)?;
        self.ctl.change(move |s| s.ratelimit.remove(cidr)).await?;
        match cidr {
            Some(net) => tracing::info!(cidr = %net, "rate-limit override removed"),
            None => tracing::info!("rate-limit default policy reset to no limit"),
        }
        Ok(Response::new(pb::RemoveRateLimitResponse {}))
    }

    async fn list_rate_limits(
        &self,
        _request: Request<pb::ListRateLimitsRequest>,
    ) -> Result<Response<pb::ListRateLimitsResponse>, Status> {
        let rate_limits = self
            .ctl
            .read(|state, r| -> Result<Vec<pb::RateLimit>, ApiError> {
                let rl = &state.ratelimit;
                let targets = std::iter::once((None, &rl.default))
                    .chain(rl.overrides.iter().map(|(n, p)| (Some(n), p)));
                let mut out = Vec::new();
                for (cidr, p) in targets {
                    let Some(id) = r.ratelimit_id(cidr) else {
                        continue;
                    };
                    let c = r.ratelimit_counters(id)?;
                    out.push(pb_rate_limit(cidr, p, id, c));
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::ListRateLimitsResponse { rate_limits }))
    }

    async fn top_limited_clients(
        &self,
        request: Request<pb::TopLimitedClientsRequest>,
    ) -> Result<Response<pb::TopLimitedClientsResponse>, Status> {
        let n = match request.get_ref().limit as usize {
            0 => DEFAULT_TOP,
            n if n > MAX_TOP => {
                return Err(invalid("limit", format!("{n} is above the maximum {MAX_TOP}")).into())
            }
            n => n,
        };
        // Take a handle of our own, then walk (up to a million buckets) off the async runtime
        // and without the controller's lock.
        let buckets = self
            .ctl
            .read(|_, r| r.ratelimit_clients())
            .await
            .map_err(ApiError::from)?;
        let top = tokio::task::spawn_blocking(move || buckets.top(n))
            .await
            .map_err(|e| Status::internal(format!("walking the client buckets: {e}")))?
            .map_err(|e| ApiError::from(ReconcileError::from(e)))?;
        let clients = self
            .ctl
            .read(|state, _| {
                top.clients
                    .iter()
                    .map(|c| pb::LimitedClient {
                        address: c.addr.to_string(),
                        dropped: c.dropped,
                        cidr: state
                            .ratelimit
                            .policy_for(c.addr)
                            .0
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .await;
        Ok(Response::new(pb::TopLimitedClientsResponse {
            clients,
            tracked: top.tracked as u64,
        }))
    }
}
