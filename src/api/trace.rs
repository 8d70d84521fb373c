//! The `Trace` gRPC service: a live, bounded, filtered sample of the packets the program handles
//! (`crate::trace`). The request is validated whole (InvalidArgument naming the field); one
//! trace runs at a time (a second gets ResourceExhausted); on shutdown the stream ends with
//! Unavailable.

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::Controller;
use crate::trace::{self, Backends, TraceEnd, TraceSpec, TracedPacket, Tracer};
use xdplb_model::cidr::parse_cidr;
use xdplb_proto::pb::{self, trace_server};

pub(crate) struct TraceService {
    ctl: Controller,
    tracer: Arc<Tracer>,
    stop: watch::Receiver<bool>,
}

impl TraceService {
    pub(crate) fn new(ctl: Controller, tracer: Arc<Tracer>, stop: watch::Receiver<bool>) -> Self {
        Self { ctl, tracer, stop }
    }
}

/// The trace a request asks for.
pub(crate) fn validate(req: &pb::TraceRequest) -> Result<TraceSpec, ApiError> {
    let vip = match req.vip_address.as_str() {
        "" => None,
        s => Some(s.parse::<Ipv4Addr>().map_err(|_| {
            invalid(
                "vip_address",
                format!("{s:?} is not an IPv4 address (e.g. 10.0.0.10)"),
            )
        })?),
    };
    let port = match req.vip_port {
        0 => None,
        p if p > u32::from(u16::MAX) => {
            return Err(invalid(
                "vip_port",
                format!("{p} is outside 1..=65535 (0: any)"),
            ))
        }
        _ if vip.is_none() => {
            return Err(invalid(
                "vip_port",
                "a port needs vip_address (the VIP's address)",
            ))
        }
        p => Some(p as u16),
    };
    let proto = match pb::Protocol::try_from(req.protocol) {
        Ok(pb::Protocol::Unspecified) => None,
        Ok(pb::Protocol::Tcp) => Some(6),
        Ok(pb::Protocol::Udp) => Some(17),
        Err(_) => {
            return Err(invalid(
                "protocol",
                format!("{} is not a protocol", req.protocol),
            ))
        }
    };
    let client = match req.client.as_str() {
        "" => None,
        s => Some(parse_cidr(s).map_err(|e| invalid("client", e.to_string()))?),
    };
    let bounded = |field: &str, v: u32, default: u32, lo: u32, hi: u32| match v {
        0 => Ok(default),
        v if (lo..=hi).contains(&v) => Ok(v),
        v => Err(invalid(
            field,
            format!("{v} is outside {lo}..={hi} (0: {default})"),
        )),
    };
    let count = bounded(
        "count",
        req.count,
        trace::DEFAULT_COUNT,
        1,
        trace::MAX_COUNT,
    )?;
    let seconds = bounded(
        "seconds",
        req.seconds,
        trace::DEFAULT_SECONDS,
        1,
        trace::MAX_SECONDS,
    )?;
    let snaplen = bounded(
        "snaplen",
        req.snaplen,
        trace::DEFAULT_SNAPLEN,
        trace::MIN_SNAPLEN,
        trace::MAX_SNAPLEN,
    )?;
    Ok(TraceSpec {
        vip,
        port,
        proto,
        client,
        count,
        duration: Duration::from_secs(u64::from(seconds)),
        snaplen,
    })
}

fn to_pb(p: TracedPacket) -> pb::TraceEvent {
    let r = p.record;
    let ipv4 = r.proto != 0;
    let addr = |a: std::net::SocketAddrV4| {
        if ipv4 {
            a.ip().to_string()
        } else {
            String::new()
        }
    };
    pb::TraceEvent {
        time_unix_ns: p.time_unix_ns,
        source: addr(r.src),
        source_port: u32::from(r.src.port()),
        destination: addr(r.dst),
        destination_port: u32::from(r.dst.port()),
        protocol: u32::from(r.proto),
        tcp_flags: u32::from(r.tcp_flags),
        verdict: p.verdict.to_string(),
        reason: p.reason,
        backend: p.backend.map(|b| b.to_string()).unwrap_or_default(),
        ifindex: r.ifindex,
        rx_queue: r.rx_queue,
        frame: r.frame,
        frame_len: r.frame_len,
        lost: p.lost,
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TraceEvent, Status>> + Send>>;

/// Hands `item` to the stream without blocking forever: a client that stops reading must not
/// hold the trace (nor lbd's shutdown). False when the stream is gone or lbd stops.
fn hand_over(
    tx: &mpsc::Sender<Result<pb::TraceEvent, Status>>,
    stop: &watch::Receiver<bool>,
    mut item: Result<pb::TraceEvent, Status>,
) -> bool {
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(i)) => {
                if *stop.borrow() {
                    return false;
                }
                item = i;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[tonic::async_trait]
impl trace_server::Trace for TraceService {
    type TraceStream = EventStream;

    async fn trace(
        &self,
        request: Request<pb::TraceRequest>,
    ) -> Result<Response<Self::TraceStream>, Status> {
        let spec = validate(request.get_ref())?;
        if *self.stop.borrow() {
            return Err(Status::unavailable("lbd is shutting down"));
        }
        let slot = self.tracer.begin().ok_or_else(|| {
            Status::resource_exhausted(
                "a trace is already running (one at a time): wait for it to end or stop it",
            )
        })?;
        let backends = self.ctl.read(|state, _| Backends::of(state)).await;
        let (tx, rx) = mpsc::channel(1024);
        let stop = self.stop.clone();
        tracing::info!(
            vip = ?spec.vip, port = ?spec.port, proto = ?spec.proto,
            client = ?spec.client.map(|c| c.to_string()), count = spec.count,
            seconds = spec.duration.as_secs(), "trace started"
        );
        std::thread::Builder::new()
            .name("trace".into())
            .spawn(move || {
                let mut sent = 0u64;
                let ended = slot.run(
                    &spec,
                    &backends,
                    || *stop.borrow(),
                    |p| {
                        sent += 1;
                        hand_over(&tx, &stop, Ok(to_pb(p)))
                    },
                );
                let ended = match ended {
                    Ok(TraceEnd::Consumer) if *stop.borrow() => Ok(TraceEnd::Shutdown),
                    e => e,
                };
                match &ended {
                    Ok(TraceEnd::Shutdown) => {
                        let _ = tx.try_send(Err(Status::unavailable("lbd is shutting down")));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "trace failed");
                        let _ = tx.try_send(Err(Status::internal(format!("trace: {e}"))));
                    }
                    Ok(_) => {}
                }
                tracing::info!(packets = sent, ended = ?ended.ok(), "trace ended");
                drop(slot);
            })
            .map_err(|e| Status::internal(format!("starting the trace thread: {e}")))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(req: pb::TraceRequest) -> String {
        let e = validate(&req).expect_err("refused");
        let s = e.to_string();
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        s.split(':').next().unwrap_or_default().to_string()
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let ok = validate(&pb::TraceRequest::default()).expect("all defaults");
        assert_eq!(
            (ok.count, ok.duration, ok.snaplen),
            (100, Duration::from_secs(10), 1518)
        );
        assert!(ok.vip.is_none() && ok.client.is_none() && ok.proto.is_none());
        let full = validate(&pb::TraceRequest {
            vip_address: "10.0.0.10".into(),
            vip_port: 80,
            protocol: pb::Protocol::Tcp as i32,
            client: "192.0.2.0/24".into(),
            count: 100_000,
            seconds: 3600,
            snaplen: 64,
        })
        .expect("bounds");
        assert_eq!(full.port, Some(80));
        assert_eq!(full.proto, Some(6));
        for (req, field) in [
            (
                pb::TraceRequest {
                    vip_address: "10.0.0".into(),
                    ..Default::default()
                },
                "vip_address",
            ),
            (
                pb::TraceRequest {
                    vip_port: 80,
                    ..Default::default()
                },
                "vip_port",
            ),
            (
                pb::TraceRequest {
                    vip_address: "10.0.0.10".into(),
                    vip_port: 65536,
                    ..Default::default()
                },
                "vip_port",
            ),
            (
                pb::TraceRequest {
                    protocol: 9,
                    ..Default::default()
                },
                "protocol",
            ),
            (
                pb::TraceRequest {
                    client: "192.0.2.1/24".into(),
                    ..Default::default()
                },
                "client",
            ),
            (
                pb::TraceRequest {
                    count: 100_001,
                    ..Default::default()
                },
                "count",
            ),
            (
                pb::TraceRequest {
                    seconds: 3601,
                    ..Default::default()
                },
                "seconds",
            ),
            (
                pb::TraceRequest {
                    snaplen: 63,
                    ..Default::default()
                },
                "snaplen",
            ),
        ] {
            assert_eq!(field_of(req), field);
        }
    }
}
