//! The `RateLimits` gRPC service: set, remove and list per-client rate-limit policies (the default
//! and per-CIDR overrides) with their counters, and list the clients with the most drops.

use ipnet::Ipv4Net;
use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::{Controller, PolicyCounters};
use crate::reconcile::ReconcileError;
use xdplb_model::ratelimit::{parse_cidr, Policy, MAX_BURST, MAX_RATE};
use xdplb_proto::convert::parse_scope;
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

/// `""` is the default policy; anything else must be a prefix an override can use.
fn parse_target(field: &str, cidr: &str) -> Result<Option<Ipv4Net>, ApiError> {
    if cidr.is_empty() {
        return Ok(None);
    }
    parse_cidr(cidr)
        .map(Some)
        .map_err(|e| invalid(field, e.to_string()))
}

fn parse_count(field: &str, v: i64, max: u64, unit: &str) -> Result<u64, ApiError> {
    let n = u64::try_from(v).map_err(|_| invalid(field, format!("{v} is negative")))?;
    if n > max {
        return Err(invalid(
            field,
            format!("{n} is above the maximum {max} {unit}"),
        ));
    }
    Ok(n)
}

/// Checks the whole request before anything changes.
fn validate_set(req: &pb::SetRateLimitRequest) -> Result<(Option<Ipv4Net>, Policy), ApiError> {
    let p = req
        .policy
        .as_ref()
        .ok_or_else(|| invalid("policy", "missing"))?;
    let cidr = parse_target("policy.cidr", &p.cidr)?;
    let rate = parse_count("policy.rate", p.rate, MAX_RATE, "packets/s")?;
    let burst = parse_count("policy.burst", p.burst, MAX_BURST, "packets")?;
    if rate > 0 && burst < 1 {
        return Err(invalid("policy.burst", "must be at least 1 when rate > 0"));
    }
    let scope = parse_scope("policy.scope", p.scope)?;
    Ok((cidr, Policy { rate, burst, scope }))
}

fn pb_rate_limit(cidr: Option<&Ipv4Net>, p: &Policy, id: u32, c: PolicyCounters) -> pb::RateLimit {
    pb::RateLimit {
        policy: Some(pb::RateLimitPolicy {
            cidr: cidr.map(ToString::to_string).unwrap_or_default(),
            rate: i64::try_from(p.rate).unwrap_or(i64::MAX),
            burst: i64::try_from(p.burst).unwrap_or(i64::MAX),
            scope: pb::RateLimitScope::from(p.scope) as i32,
        }),
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
        let (cidr, policy) = validate_set(request.get_ref())?;
        self.ctl.change(|s| s.ratelimit.set(cidr, policy)).await?;
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
        let cidr = parse_target("cidr", &request.get_ref().cidr)?;
        self.ctl.change(|s| s.ratelimit.remove(cidr)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb_model::ratelimit::Scope;

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

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other}"),
        }
    }

    #[test]
    fn good_requests() {
        let all = pb::RateLimitScope::All as i32;
        let (cidr, p) = validate_set(&set("", 100, 10, all)).expect("default");
        assert_eq!(cidr, None);
        assert_eq!(
            p,
            Policy {
                rate: 100,
                burst: 10,
                scope: Scope::All
            }
        );
        let (cidr, p) = validate_set(&set(
            "10.1.0.0/16",
            5,
            1,
            pb::RateLimitScope::NewFlows as i32,
        ))
        .expect("override");
        assert_eq!(cidr, Some("10.1.0.0/16".parse().expect("prefix")));
        assert_eq!(p.scope, Scope::NewFlows);
        // Unspecified scope is "all"; rate 0 needs no burst.
        let (_, p) = validate_set(&set("10.2.0.0/16", 0, 0, 0)).expect("no limit");
        assert_eq!((p.rate, p.scope), (0, Scope::All));
    }

    #[test]
    fn bad_requests_name_the_field() {
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
            let e = validate_set(&req).expect_err("refused");
            assert_eq!(field_of(e), field, "{req:?}");
        }
        let e = validate_set(&set("10.0.0.1/8", 10, 1, all)).expect_err("host bits");
        assert_eq!(
            e.to_string(),
            "policy.cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            field_of(parse_target("cidr", "10.0.0.1/8").expect_err("host bits")),
            "cidr"
        );
    }
}
