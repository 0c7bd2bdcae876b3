"""Real grpc.aio server on 127.0.0.1 with a fake backend: status mapping, health, reflection."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from longretriever.core.errors import BundleError, ServiceUnavailable
from longretriever.core.multicontext import Candidate
from longretriever.retriever.proto import longretriever_pb2 as pb
from longretriever.retriever.proto import longretriever_pb2_grpc as pb_grpc
from longretriever.retriever.server import SERVICE_NAME, build_server, set_serving
from longretriever.retriever.service import RetrieveResult, SequenceResult


class FakeBackend:
    def __init__(self) -> None:
        self.calls = []

    def context_name(self, c: int) -> str:
        return ["unknown", "books", "games"][c]

    def context_id(self, name: str) -> int:
        return ["unknown", "books", "games"].index(name)

    def retrieve(self, user_id, k, max_contexts, exclude_seen, timeout=None):
        self.calls.append((user_id, k, max_contexts, exclude_seen))
        if user_id == 13:
            raise ServiceUnavailable("milvus down")
        if user_id == 14:
            raise BundleError("collection holds another bundle version")
        if user_id == 15:
            raise ZeroDivisionError("secret internal detail")
        if user_id == 16:
            import time
            time.sleep(1.0)
        return RetrieveResult(user_id, [Candidate(7, 0.5, 1), Candidate(9, 0.25, 2)][:k], "v1", "0:10", user_id == 0)

    def user_sequence(self, user_id, context=None, limit=None):
        self.calls.append(("sequence", user_id, context, limit))
        items = np.array([1, 2, 3], np.int64)
        cs = np.array([1, 2, 1], np.int32)
        m = np.ones(3, bool) if context is None else cs == context
        keep = slice(-limit, None) if limit else slice(None)
        return SequenceResult(user_id, items[m][keep], np.array([10, 20, 30], np.int64)[m][keep], cs[m][keep],
                              "0:10", int(m.sum()))


async def _with_server(fn):
    backend = FakeBackend()
    server, port, hs = build_server(backend, "127.0.0.1", 0)
    await server.start()
    set_serving(hs, True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await fn(ch, backend)
    finally:
        await server.stop(None)


def run(fn):
    asyncio.run(_with_server(fn))


def test_retrieve_ok_and_defaults():
    async def body(ch, backend):
        stub = pb_grpc.RetrieverStub(ch)
        r = await stub.Retrieve(pb.RetrieveRequest(user_id=5, k=2), timeout=5)
        assert [c.item_id for c in r.candidates] == [7, 9]
        assert [c.context for c in r.candidates] == ["books", "games"]
        assert r.model_version == "v1" and r.watermark == "0:10" and not r.fallback
        assert backend.calls[-1] == (5, 2, 8, True)  # max_contexts 0 -> default 8
        r = await stub.Retrieve(pb.RetrieveRequest(user_id=0, k=1, max_contexts=3), timeout=5)
        assert r.fallback
    run(body)


@pytest.mark.parametrize("req", [
    dict(user_id=1, k=0), dict(user_id=1, k=10001), dict(user_id=-1, k=10),
    dict(user_id=1, k=10, max_contexts=65), dict(user_id=1, k=10, max_contexts=-1),
])
def test_invalid_argument(req):
    async def body(ch, backend):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await pb_grpc.RetrieverStub(ch).Retrieve(pb.RetrieveRequest(**req), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert backend.calls == []
    run(body)


@pytest.mark.parametrize("user,code", [
    (13, grpc.StatusCode.UNAVAILABLE), (14, grpc.StatusCode.INVALID_ARGUMENT),
    (15, grpc.StatusCode.INTERNAL), (16, grpc.StatusCode.DEADLINE_EXCEEDED),
])
def test_error_mapping(user, code):
    async def body(ch, backend):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await pb_grpc.RetrieverStub(ch).Retrieve(pb.RetrieveRequest(user_id=user, k=5), timeout=0.3)
        assert ei.value.code() == code
        details = ei.value.details() or ""
        assert "Traceback" not in details and "secret internal detail" not in details
    run(body)


def test_seen_items_are_excluded_unless_the_request_includes_them():
    async def body(ch, backend):
        stub = pb_grpc.RetrieverStub(ch)
        await stub.Retrieve(pb.RetrieveRequest(user_id=5, k=2), timeout=5)  # a plain request
        assert backend.calls[-1][3] is True  # exclude_seen reaches the backend as True
        await stub.Retrieve(pb.RetrieveRequest(user_id=5, k=2, include_seen=True), timeout=5)
        assert backend.calls[-1][3] is False
        # an old client setting the deprecated field 4 gets what it asked for
        await stub.Retrieve(pb.RetrieveRequest(user_id=5, k=2, exclude_seen=True), timeout=5)
        assert backend.calls[-1][3] is True
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Retrieve(pb.RetrieveRequest(user_id=5, k=2, exclude_seen=True, include_seen=True), timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "include_seen" in ei.value.details()
        assert len(backend.calls) == 3
    run(body)


def test_old_wire_format_request_is_understood():
    """Bytes an old client sends: fields 1-4 only (exclude_seen=true as field 4)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="old_lr.proto", package="old.v1", syntax="proto3")
    m = fdp.message_type.add(name="RetrieveRequest")
    for number, (name, kind) in enumerate([("user_id", "TYPE_INT64"), ("k", "TYPE_INT32"),
                                           ("max_contexts", "TYPE_INT32"), ("exclude_seen", "TYPE_BOOL")], 1):
        m.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Old = message_factory.GetMessageClass(pool.FindMessageTypeByName("old.v1.RetrieveRequest"))

    async def body(ch, backend):
        call = ch.unary_unary(f"/{SERVICE_NAME}/Retrieve", request_serializer=Old.SerializeToString,
                              response_deserializer=pb.RetrieveResponse.FromString)
        for old_flag in (True, False):
            r = await call(Old(user_id=5, k=2, exclude_seen=old_flag), timeout=5)
            assert [c.item_id for c in r.candidates] == [7, 9]
            assert backend.calls[-1] == (5, 2, 8, True)  # both: seen items excluded (the new default)
    run(body)


def test_get_user_sequence():
    async def body(ch, backend):
        stub = pb_grpc.RetrieverStub(ch)
        r = await stub.GetUserSequence(pb.GetUserSequenceRequest(user_id=3), timeout=5)
        assert [(e.item_id, e.ts, e.context) for e in r.events] == [(1, 10, "books"), (2, 20, "games"), (3, 30, "books")]
        assert r.total == 3 and backend.calls[-1] == ("sequence", 3, None, 1000)  # limit 0 -> 1000
        r = await stub.GetUserSequence(pb.GetUserSequenceRequest(user_id=3, context="games"), timeout=5)
        assert [e.item_id for e in r.events] == [2]
        r = await stub.GetUserSequence(pb.GetUserSequenceRequest(user_id=3, limit=2), timeout=5)
        assert [e.item_id for e in r.events] == [2, 3] and r.total == 3  # the newest 2, oldest first
        for bad in (dict(user_id=-2), dict(user_id=1, limit=-1), dict(user_id=1, limit=100_001)):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.GetUserSequence(pb.GetUserSequenceRequest(**bad), timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    run(body)


def test_health_and_reflection():
    async def body(ch, backend):
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE_NAME):
            r = await h.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = set()
        async for resp in call:
            names |= {s.name for s in resp.list_services_response.service}
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
        assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    run(body)


def test_reflection_v1():
    """The v1 protocol (grpcurl's first choice), with message classes built from the v1
    descriptor the server registers: list the services, then describe ours."""
    from google.protobuf import descriptor_pool, message_factory

    from longretriever.retriever.reflection import V1_SERVICE

    async def body(ch, backend):
        pool = descriptor_pool.Default()
        Req = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
        Resp = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
        info = ch.stream_stream(f"/{V1_SERVICE}/ServerReflectionInfo", request_serializer=Req.SerializeToString,
                                response_deserializer=Resp.FromString)
        out = [r async for r in info(iter([Req(list_services=""), Req(file_containing_symbol=SERVICE_NAME),
                                           Req(file_containing_symbol=V1_SERVICE)]), timeout=5)]
        names = {s.name for s in out[0].list_services_response.service}
        assert SERVICE_NAME in names and V1_SERVICE in names
        from google.protobuf import descriptor_pb2

        ours = descriptor_pb2.FileDescriptorProto.FromString(out[1].file_descriptor_response.file_descriptor_proto[0])
        assert ours.package == "longretriever.v1" and "RetrieveRequest" in {m.name for m in ours.message_type}
        fields = {f.name: f.number for m in ours.message_type if m.name == "RetrieveRequest" for f in m.field}
        assert fields["include_seen"] == 5 and fields["exclude_seen"] == 4
        v1 = descriptor_pb2.FileDescriptorProto.FromString(out[2].file_descriptor_response.file_descriptor_proto[0])
        assert v1.package == "grpc.reflection.v1"
    run(body)


def test_tls_endpoint_serves_tls_only(tmp_path):
    import subprocess

    from longretriever.retriever.client import RetrieverClient

    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(crt), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)

    async def body():
        server, port, _ = build_server(FakeBackend(), "127.0.0.1", 0, tls=(crt.read_bytes(), key.read_bytes()))
        await server.start()
        try:
            def calls():
                with RetrieverClient(f"localhost:{port}", 5, tls_ca=crt.read_bytes()) as c:
                    ok = c.retrieve(5, 2)
                with RetrieverClient(f"localhost:{port}", 2) as plain:
                    try:
                        plain.retrieve(5, 2)
                        refused = False
                    except ServiceUnavailable:
                        refused = True
                return ok, refused
            ok, refused = await asyncio.to_thread(calls)
        finally:
            await server.stop(None)
        assert [c["item_id"] for c in ok["candidates"]] == [7, 9]
        assert refused

    asyncio.run(body())
