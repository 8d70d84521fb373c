#!/usr/bin/env python3
"""Stock gRPC clients (Python grpcio) against a running lbd, for integration/tests/grpc_clients.rs.

    grpc_clients.py TARGET CHECK [ARGS...]

TARGET is what a user would type: `unix:/run/xdplb/lbd.sock` or `127.0.0.1:50051`; the channel is
made with the library's defaults (no authority override, no options). CHECK is one of:

  api VIP BACKEND      ListVips, AddVip VIP:80/TCP, AddBackend BACKEND:8080, ListBackends, with the
                       stubs generated from proto/*.proto at run time (grpc_tools.protoc);
  self-backend VIP     AddBackend whose address is the VIP's own: must be INVALID_ARGUMENT naming
                       backend.address, and the VIP's backends unchanged;
  health SERVICE...    grpc.health.v1.Health/Check for each SERVICE ("" is the server as a whole):
                       each must be SERVING;
  health-unknown NAME  Check of a service lbd does not have: NOT_FOUND;
  health-watch         Watch of "" until the stream ends (lbd stopping): prints each status,
                       which must be SERVING first and NOT_SERVING last; the stream must end OK;
  reflection VIP       server reflection only (no .proto, no stub): lists the services, fetches the
                       file descriptor of xdplb.v1.Vips with its dependencies, builds the message
                       classes from it and calls ListVips, which must show VIP.

Prints one line per step; exits 0 on success, 1 with the reason otherwise.
"""

import os
import subprocess
import sys
import tempfile

import grpc

TIMEOUT = 10  # seconds, per call
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def stubs():
    """Generates the Python stubs of proto/*.proto into a temporary directory and imports them."""
    proto_dir = os.path.join(REPO, "proto")
    out = tempfile.mkdtemp(prefix="xdplb-pystubs-")
    protos = sorted(p for p in os.listdir(proto_dir) if p.endswith(".proto"))
    from grpc_tools import protoc  # noqa: PLC0415 (only the stub-using checks need it)

    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + protos
    )
    if rc != 0:
        fail(f"grpc_tools.protoc exited with {rc}")
    sys.path.insert(0, out)
    import xdplb_pb2  # noqa: PLC0415
    import xdplb_pb2_grpc  # noqa: PLC0415

    return xdplb_pb2, xdplb_pb2_grpc


def api(channel, vip, backend):
    pb, rpc = stubs()
    vips = rpc.VipsStub(channel)
    backends = rpc.BackendsStub(channel)
    before = vips.ListVips(pb.ListVipsRequest(), timeout=TIMEOUT)
    print(f"ListVips: {len(before.vips)} vips", flush=True)
    key = pb.VipKey(address=vip, port=80, protocol=pb.PROTOCOL_TCP)
    added = vips.AddVip(pb.AddVipRequest(vip=key), timeout=TIMEOUT)
    if added.vip.key.address != vip or added.vip.key.port != 80:
        fail(f"AddVip answered {added}")
    print(f"AddVip: {vip}:80/tcp id {added.vip.id}", flush=True)
    be = backends.AddBackend(
        pb.AddBackendRequest(vip=key, backend=pb.Backend(address=backend, port=8080, weight=7)),
        timeout=TIMEOUT,
    )
    if be.backend.address != backend or be.backend.weight != 7:
        fail(f"AddBackend answered {be}")
    print(f"AddBackend: {backend}:8080 weight 7 id {be.backend.id}", flush=True)
    listed = backends.ListBackends(pb.ListBackendsRequest(vip=key), timeout=TIMEOUT)
    got = [(b.address, b.port, b.weight) for b in listed.backends]
    if got != [(backend, 8080, 7)]:
        fail(f"ListBackends: {got}")
    after = vips.ListVips(pb.ListVipsRequest(), timeout=TIMEOUT)
    mine = [v for v in after.vips if v.key.address == vip and v.key.port == 80]
    if len(after.vips) != len(before.vips) + 1 or len(mine) != 1 or mine[0].backends != 1:
        fail(f"ListVips after the adds: {after}")
    print(f"ListVips: {len(after.vips)} vips, {vip}:80 with 1 backend", flush=True)


def self_backend(channel, vip):
    pb, rpc = stubs()
    backends = rpc.BackendsStub(channel)
    key = pb.VipKey(address=vip, port=80, protocol=pb.PROTOCOL_TCP)
    before = backends.ListBackends(pb.ListBackendsRequest(vip=key), timeout=TIMEOUT)
    try:
        backends.AddBackend(
            pb.AddBackendRequest(vip=key, backend=pb.Backend(address=vip, port=8080)),
            timeout=TIMEOUT,
        )
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT or not e.details().startswith(
            "backend.address: "
        ):
            fail(f"AddBackend of the VIP's own address: {e.code()} {e.details()!r}")
        print(f"AddBackend {vip}:8080 refused: {e.code().name} {e.details()}", flush=True)
    else:
        fail("AddBackend of the VIP's own address was accepted")
    after = backends.ListBackends(pb.ListBackendsRequest(vip=key), timeout=TIMEOUT)
    strip = lambda r: [(b.address, b.port, b.weight) for b in r.backends]  # noqa: E731
    if strip(before) != strip(after):
        fail(f"backends changed: {strip(before)} -> {strip(after)}")


def health(channel, services):
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    stub = health_pb2_grpc.HealthStub(channel)
    for name in services:
        r = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        print(f"Health.Check({name!r}): {status}", flush=True)
        if r.status != health_pb2.HealthCheckResponse.SERVING:
            fail(f"{name!r} is {status}")


def health_unknown(channel, name):
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        r = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            fail(f"Health.Check({name!r}): {e.code()} {e.details()!r}")
        print(f"Health.Check({name!r}): {e.code().name}", flush=True)
    else:
        fail(f"Health.Check({name!r}) answered {r}")


def health_watch(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    stub = health_pb2_grpc.HealthStub(channel)
    seen = []
    # No deadline: lbd ends the stream when it stops (the test bounds the whole run).
    for r in stub.Watch(health_pb2.HealthCheckRequest(service="")):
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        seen.append(status)
        print(f"Health.Watch(''): {status}", flush=True)
    print("Health.Watch(''): stream ended", flush=True)
    if not seen or seen[0] != "SERVING" or seen[-1] != "NOT_SERVING":
        fail(f"Watch saw {seen}")


def reflection(channel, vip):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: PLC0415
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: PLC0415
        ProtoReflectionDescriptorDatabase,
    )

    # The v1 service by hand, then v1alpha through the package's descriptor database.
    services = reflection_v1(channel)
    print(f"reflection v1 services: {', '.join(services)}", flush=True)
    for want in (
        "xdplb.v1.Vips",
        "xdplb.v1.Backends",
        "xdplb.v1.Stats",
        "xdplb.v1.Firewall",
        "xdplb.v1.RateLimits",
        "grpc.health.v1.Health",
    ):
        if want not in services:
            fail(f"reflection does not list {want}: {services}")

    db = ProtoReflectionDescriptorDatabase(channel)
    listed = set(db.get_services())
    print(f"reflection v1alpha services: {', '.join(sorted(listed))}", flush=True)
    if "xdplb.v1.Vips" not in listed:
        fail(f"v1alpha does not list xdplb.v1.Vips: {listed}")
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("xdplb.v1.Vips")
    method = svc.FindMethodByName("ListVips")
    print(
        f"descriptor of {svc.full_name} from {svc.file.name}: {[m.name for m in svc.methods]}",
        flush=True,
    )
    fdp = descriptor_pb2.FileDescriptorProto()
    svc.file.CopyToProto(fdp)
    if fdp.package != "xdplb.v1":
        fail(f"file descriptor package {fdp.package!r}")
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{svc.full_name}/{method.name}",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    resp = call(req_cls(), timeout=TIMEOUT)
    addrs = [v.key.address for v in resp.vips]
    print(f"ListVips through reflection: {addrs}", flush=True)
    if vip not in addrs:
        fail(f"{vip} not in {addrs}")


def reflection_v1(channel):
    """ListServices over grpc.reflection.v1.ServerReflection, with messages from the package."""
    from grpc_reflection.v1alpha import reflection_pb2  # noqa: PLC0415

    # grpcio-reflection ships v1alpha messages only; v1 has the same wire format and another
    # service name, so the v1alpha messages serve for the v1 method path.
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(
        call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
    )
    if len(responses) != 1 or not responses[0].HasField("list_services_response"):
        fail(f"v1 ListServices answered {responses}")
    return sorted(s.name for s in responses[0].list_services_response.service)


def main():
    if len(sys.argv) < 3:
        fail(__doc__)
    target, check, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with grpc.insecure_channel(target) as channel:
        try:
            if check == "api":
                api(channel, *args)
            elif check == "self-backend":
                self_backend(channel, *args)
            elif check == "health":
                health(channel, args)
            elif check == "health-unknown":
                health_unknown(channel, *args)
            elif check == "health-watch":
                health_watch(channel)
            elif check == "reflection":
                reflection(channel, *args)
            else:
                fail(f"unknown check {check!r}")
        except grpc.RpcError as e:
            fail(f"{check}: {e.code()} {e.details()!r}")
    print(f"ok: {check}", flush=True)


if __name__ == "__main__":
    main()
