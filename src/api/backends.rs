//! The `Backends` gRPC service: add, remove, re-weight, drain and list the backends of a VIP.

use std::net::SocketAddrV4;

use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::Controller;
use crate::controller::{ChangeError, Reader};
use crate::reconcile::ReconcileError;
use xdplb_model::state::{State, StateError, VipKey, DEFAULT_WEIGHT, MAX_WEIGHT};
use xdplb_proto::convert::{parse_ipv4, parse_port, parse_vip_key};
use xdplb_proto::pb::{self, backends_server::Backends};

pub(crate) struct BackendsService {
    ctl: Controller,
    /// Ends the `WatchDrain` streams at shutdown (see [`Self::with_shutdown`]).
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl BackendsService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl, stop: None }
    }

    /// Ends every `WatchDrain` stream (with `Unavailable`) once `stop` turns true, as
    /// `WatchStats` does, so that a graceful shutdown does not wait for drains.
    pub(crate) fn with_shutdown(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// A VIP that must exist; when it is an L2 DSR VIP, `addrs` must be on a directly connected
    /// subnet (naming `field(i)` for the first that is not).
    async fn check_l2dsr(
        &self,
        vip: &VipKey,
        field: impl Fn(usize) -> String,
        addrs: &[SocketAddrV4],
    ) -> Result<(), ApiError> {
        let mode = self.ctl.read(|s, _| s.vip(vip).map(|v| v.mode)).await?;
        if mode == xdplb_model::state::Mode::L2dsr {
            super::vips::check_l2dsr_backends(field, addrs).await?;
        }
        Ok(())
    }

    /// Makes the change `f` to backend `addr` of `vip`, then describes the backend as it is now.
    async fn change_backend<T: Send + 'static, E: Send + 'static>(
        &self,
        vip: VipKey,
        addr: SocketAddrV4,
        f: impl FnOnce(&mut State) -> Result<T, E> + Send + 'static,
    ) -> Result<(T, pb::Backend), ChangeError<E>> {
        // Described under the commit's lock, not after it behind the next group's.
        self.ctl
            .change_and_read(f, move |out, s, r| (out, pb_backend(s, r, &vip, addr)))
            .await
    }
}

/// A backend as the API shows it: weight, id, health and the weight a drain remembered (no flow
/// count: that takes a walk of the flow table, done by ListBackends only).
fn pb_backend(s: &State, r: &Reader<'_>, vip: &VipKey, addr: SocketAddrV4) -> pb::Backend {
    let v = s.vips.get(vip);
    pb::Backend {
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        weight: v.and_then(|v| v.backends.get(&addr)).copied(),
        id: r.backend_id(vip, &addr).unwrap_or_default(),
        health: v
            .map(|v| {
                r.health()
                    .status(vip, &v.health, &addr)
                    .as_str()
                    .to_string()
            })
            .unwrap_or_default(),
        tracked_flows: 0,
        drained_from: v.and_then(|v| v.drained.get(&addr)).copied().unwrap_or(0),
    }
}

fn parse_backend(field: &str, address: &str, port: u32) -> Result<SocketAddrV4, ApiError> {
    let ip = parse_ipv4(&format!("{field}address"), address)?;
    // What AddBackend would refuse is refused by every RPC naming a backend (not NotFound).
    xdplb_model::state::validate_backend_addr(&SocketAddrV4::new(ip, 1))
        .map_err(|m| invalid(format!("{field}address"), m))?;
    Ok(SocketAddrV4::new(
        ip,
        parse_port(&format!("{field}port"), port)?,
    ))
}

/// The VIP and backend a request names (`vip`, `address`, `port`).
fn parse_target(
    vip: Option<&pb::VipKey>,
    address: &str,
    port: u32,
) -> Result<(VipKey, SocketAddrV4), ApiError> {
    Ok((
        parse_vip_key("vip", vip)?,
        parse_backend("", address, port)?,
    ))
}

fn validate_weight(field: &str, w: u32) -> Result<u32, ApiError> {
    if w > MAX_WEIGHT {
        return Err(invalid(
            field,
            format!("{w} is above the maximum {MAX_WEIGHT}"),
        ));
    }
    Ok(w)
}

/// Most backends one AddBackends call takes (a request of this many is about 400 KB).
pub(crate) const MAX_BATCH: usize = 10_000;

/// Checks an AddBackends request as a whole before anything changes: the VIP key, then every
/// backend (address, port, weight), no backend twice. Errors name `backends[i].field`.
fn validate_add_many(
    req: &pb::AddBackendsRequest,
) -> Result<(VipKey, Vec<(SocketAddrV4, u32)>), ApiError> {
    let vip = parse_vip_key("vip", req.vip.as_ref())?;
    if req.backends.is_empty() {
        return Err(invalid("backends", "empty: give at least one backend"));
    }
    if req.backends.len() > MAX_BATCH {
        return Err(invalid(
            "backends",
            format!(
                "{} backends; at most {MAX_BATCH} per call",
                req.backends.len()
            ),
        ));
    }
    let mut seen = std::collections::HashMap::with_capacity(req.backends.len());
    let mut out = Vec::with_capacity(req.backends.len());
    for (i, be) in req.backends.iter().enumerate() {
        let addr = parse_backend(&format!("backends[{i}]."), &be.address, be.port)?;
        let weight = validate_weight(
            &format!("backends[{i}].weight"),
            be.weight.unwrap_or(DEFAULT_WEIGHT),
        )?;
        if let Some(j) = seen.insert(addr, i) {
            return Err(invalid(
                format!("backends[{i}]"),
                format!("{addr} is also backends[{j}]"),
            ));
        }
        out.push((addr, weight));
    }
    Ok((vip, out))
}

/// Adds `backends` to `vip` in `s`, stopping at the first refused one; a field-naming error
/// names the backend's index (`backend.port` -> `backends[3].port`).
fn add_many(s: &mut State, vip: &VipKey, backends: &[(SocketAddrV4, u32)]) -> Result<(), ApiError> {
    for (i, (addr, weight)) in backends.iter().enumerate() {
        s.add_backend(vip, *addr, *weight).map_err(|e| match e {
            StateError::InvalidArgument { field, message } => invalid(
                match field.strip_prefix("backend") {
                    Some(rest) => format!("backends[{i}]{rest}"),
                    None => format!("backends[{i}].{field}"),
                },
                message,
            ),
            StateError::AlreadyExists(m) => {
                ApiError::State(StateError::AlreadyExists(format!("backends[{i}]: {m}")))
            }
            other => ApiError::State(other),
        })?;
    }
    Ok(())
}

fn validate_add(req: &pb::AddBackendRequest) -> Result<(VipKey, SocketAddrV4, u32), ApiError> {
    let vip = parse_vip_key("vip", req.vip.as_ref())?;
    let be = req
        .backend
        .as_ref()
        .ok_or_else(|| invalid("backend", "missing"))?;
    let addr = parse_backend("backend.", &be.address, be.port)?;
    let weight = validate_weight("backend.weight", be.weight.unwrap_or(DEFAULT_WEIGHT))?;
    Ok((vip, addr, weight))
}

/// Default `WatchDrain` interval between two counts.
pub(crate) const DEFAULT_DRAIN_INTERVAL_MS: u32 = 1000;

/// The backend and interval of a `WatchDrain` request (`interval_ms` 0: the default).
fn validate_watch_drain(
    req: &pb::WatchDrainRequest,
) -> Result<(VipKey, SocketAddrV4, std::time::Duration), ApiError> {
    let (vip, addr) = parse_target(req.vip.as_ref(), &req.address, req.port)?;
    let ms = match req.interval_ms {
        0 => DEFAULT_DRAIN_INTERVAL_MS,
        ms => ms,
    };
    let range = super::stats::MIN_WATCH_INTERVAL_MS..=super::stats::MAX_WATCH_INTERVAL_MS;
    if !range.contains(&ms) {
        return Err(invalid(
            "interval_ms",
            format!(
                "{ms} is outside {}..={} (0: {DEFAULT_DRAIN_INTERVAL_MS})",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok((vip, addr, std::time::Duration::from_millis(u64::from(ms))))
}

/// The data-plane id of backend `addr` of `vip` while it is drained (weight 0): `NotFound` when
/// the VIP or the backend is not there, `FailedPrecondition` when the backend has a weight (it
/// takes new flows, so its count need not fall).
fn drained_backend_id(
    s: &State,
    r: &Reader<'_>,
    vip: &VipKey,
    addr: SocketAddrV4,
) -> Result<u32, ApiError> {
    let missing = || StateError::NotFound(format!("backend {addr} of vip {vip} does not exist"));
    let weight = *s.vip(vip)?.backends.get(&addr).ok_or_else(missing)?;
    if weight != 0 {
        return Err(StateError::FailedPrecondition(format!(
            "backend {addr} of vip {vip} is not drained (weight {weight}): it takes new flows; \
             drain it first (DrainBackend)"
        ))
        .into());
    }
    Ok(r.backend_id(vip, &addr).ok_or_else(missing)?)
}

type DrainStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchDrainResponse, Status>> + Send>,
>;

/// Counts the live flows of a drained backend at once and then every `interval` (each count a
/// walk of the flow tables on handles of its own, outside the controller's lock) and sends each
/// count, until one is 0 (then the stream ends), the backend is undrained or removed (an error
/// ends it), the client goes away, or `stop` turns true.
async fn watch_drain_loop(
    ctl: Controller,
    vip: VipKey,
    addr: SocketAddrV4,
    interval: std::time::Duration,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchDrainResponse, Status>>,
) {
    super::stats::every(interval, stop, tx, move || {
        let ctl = ctl.clone();
        async move {
            let count = count_drained(&ctl, &vip, addr).await;
            let done = !matches!(count, Ok(ref c) if c.tracked_flows > 0);
            (count, done)
        }
    })
    .await;
}

/// One count of a [`watch_drain_loop`]: the backend is checked (still there, still drained)
/// under the lock, the flows are counted outside it.
async fn count_drained(
    ctl: &Controller,
    vip: &VipKey,
    addr: SocketAddrV4,
) -> Result<pb::WatchDrainResponse, Status> {
    let (id, telemetry, monotonic_ns) = ctl
        .read(|s, r| -> Result<_, ApiError> {
            Ok((
                drained_backend_id(s, r, vip, addr)?,
                r.telemetry()?,
                r.monotonic_ns(),
            ))
        })
        .await?;
    // A failed walk fails the stream: a wrong zero would end the drain early.
    let flows = tokio::task::spawn_blocking(move || telemetry.live_flows())
        .await
        .map_err(|e| Status::internal(format!("walking the flow table: {e}")))?
        .map_err(|e| ApiError::from(ReconcileError::from(e)))?;
    Ok(pb::WatchDrainResponse {
        tracked_flows: flows.by_backend.get(&id).copied().unwrap_or(0),
        monotonic_ns,
    })
}

#[tonic::async_trait]
impl Backends for BackendsService {
    type WatchDrainStream = DrainStream;

    async fn watch_drain(
        &self,
        request: Request<pb::WatchDrainRequest>,
    ) -> Result<Response<Self::WatchDrainStream>, Status> {
        let (vip, addr, interval) = validate_watch_drain(request.get_ref())?;
        if self.stop.as_ref().is_some_and(|s| *s.borrow()) {
            return Err(Status::unavailable("lbd is shutting down"));
        }
        // Refused before the stream starts: a backend that is not there or not drained.
        self.ctl
            .read(|s, r| drained_backend_id(s, r, &vip, addr).map(drop))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(watch_drain_loop(
            self.ctl.clone(),
            vip,
            addr,
            interval,
            self.stop.clone(),
            tx,
        ));
        tracing::debug!(%vip, backend = %addr, "drain watch started");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn add_backend(
        &self,
        request: Request<pb::AddBackendRequest>,
    ) -> Result<Response<pb::AddBackendResponse>, Status> {
        let (vip, addr, weight) = validate_add(request.get_ref())?;
        self.check_l2dsr(&vip, |_| "backend.address".to_string(), &[addr])
            .await?;
        let ((), backend) = self
            .change_backend(vip, addr, move |s| s.add_backend(&vip, addr, weight))
            .await?;
        tracing::info!(%vip, backend = %addr, weight, id = backend.id, "backend added");
        Ok(Response::new(pb::AddBackendResponse {
            backend: Some(backend),
        }))
    }

    async fn add_backends(
        &self,
        request: Request<pb::AddBackendsRequest>,
    ) -> Result<Response<pb::AddBackendsResponse>, Status> {
        let (vip, backends) = validate_add_many(request.get_ref())?;
        let addrs: Vec<SocketAddrV4> = backends.iter().map(|(a, _)| *a).collect();
        self.check_l2dsr(&vip, |i| format!("backends[{i}].address"), &addrs)
            .await?;
        // One change: applied to a copy of the state, reconciled once (one Maglev rebuild, one
        // ring update), saved once; any refusal leaves state, maps and file as they were.
        self.ctl
            .change({
                let backends = backends.clone();
                move |s| add_many(s, &vip, &backends)
            })
            .await?;
        let added: Vec<pb::Backend> = self
            .ctl
            .read(|s, r| {
                backends
                    .iter()
                    .map(|(addr, _)| pb_backend(s, r, &vip, *addr))
                    .collect()
            })
            .await;
        tracing::info!(%vip, backends = added.len(), "backends added");
        Ok(Response::new(pb::AddBackendsResponse { backends: added }))
    }

    async fn remove_backend(
        &self,
        request: Request<pb::RemoveBackendRequest>,
    ) -> Result<Response<pb::RemoveBackendResponse>, Status> {
        let req = request.get_ref();
        let (vip, addr) = parse_target(req.vip.as_ref(), &req.address, req.port)?;
        let id = self.ctl.read(|_, r| r.backend_id(&vip, &addr)).await;
        self.ctl
            .change(move |s| s.remove_backend(&vip, addr))
            .await?;
        tracing::info!(%vip, backend = %addr, id = id.unwrap_or_default(), "backend removed");
        Ok(Response::new(pb::RemoveBackendResponse {}))
    }

    async fn set_backend_weight(
        &self,
        request: Request<pb::SetBackendWeightRequest>,
    ) -> Result<Response<pb::SetBackendWeightResponse>, Status> {
        let req = request.get_ref();
        let (vip, addr) = parse_target(req.vip.as_ref(), &req.address, req.port)?;
        let weight = validate_weight("weight", req.weight)?;
        let ((), backend) = self
            .change_backend(vip, addr, move |s| s.set_weight(&vip, addr, weight))
            .await?;
        tracing::info!(%vip, backend = %addr, weight, id = backend.id, "backend weight set");
        Ok(Response::new(pb::SetBackendWeightResponse {
            backend: Some(backend),
        }))
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let vip = parse_vip_key("vip", request.get_ref().vip.as_ref())?;
        let (mut backends, telemetry) = self
            .ctl
            .read(|s, r| -> Result<_, ApiError> {
                let backends: Vec<pb::Backend> = s
                    .vip(&vip)?
                    .backends
                    .keys()
                    .map(|addr| pb_backend(s, r, &vip, *addr))
                    .collect();
                let telemetry = r.telemetry()?;
                Ok((backends, telemetry))
            })
            .await?;
        // The walk runs on handles of its own, outside the lock (about a second per million
        // flows). A failed walk fails the call: a wrong zero would tell an operator that a
        // drained backend is idle.
        let flows = tokio::task::spawn_blocking(move || telemetry.live_flows())
            .await
            .map_err(|e| Status::internal(format!("walking the flow table: {e}")))?
            .map_err(|e| ApiError::from(ReconcileError::from(e)))?;
        for b in &mut backends {
            b.tracked_flows = flows.by_backend.get(&b.id).copied().unwrap_or(0);
        }
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn drain_backend(
        &self,
        request: Request<pb::DrainBackendRequest>,
    ) -> Result<Response<pb::DrainBackendResponse>, Status> {
        let req = request.get_ref();
        let (vip, addr) = parse_target(req.vip.as_ref(), &req.address, req.port)?;
        let (before, backend) = self
            .change_backend(vip, addr, move |s| s.drain(&vip, addr))
            .await?;
        tracing::info!(%vip, backend = %addr, weight_before = before, id = backend.id,
            "backend drained: no new flows, tracked flows go on until they end");
        Ok(Response::new(pb::DrainBackendResponse {
            backend: Some(backend),
        }))
    }

    async fn undrain_backend(
        &self,
        request: Request<pb::UndrainBackendRequest>,
    ) -> Result<Response<pb::UndrainBackendResponse>, Status> {
        let req = request.get_ref();
        let (vip, addr) = parse_target(req.vip.as_ref(), &req.address, req.port)?;
        let (weight, backend) = self
            .change_backend(vip, addr, move |s| s.undrain(&vip, addr))
            .await?;
        tracing::info!(%vip, backend = %addr, weight, id = backend.id, "backend undrained: weight restored");
        Ok(Response::new(pb::UndrainBackendResponse {
            backend: Some(backend),
        }))
    }
}
