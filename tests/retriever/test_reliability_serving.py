"""Serving reliability on real components (setup in tests/fixtures/serving.py):

- gRPC input fuzz (hypothesis) on the real RetrieverService: only OK / INVALID_ARGUMENT /
  DEADLINE_EXCEEDED (/ RESOURCE_EXHAUSTED for oversized messages), never INTERNAL or UNKNOWN,
  never a traceback, and the server answers a valid request afterwards. Health + reflection.
- A bundle whose version differs from the one the Milvus collection records is refused.

The Milvus outage tests are in test_reliability_milvus_outage.py.
"""

from __future__ import annotations

import json
import os
import shutil

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longretriever.core.errors import BundleError
from longretriever.core import planner as q
from longretriever.retriever.assemble import open_serving
from longretriever.core.planner import context_sizes
from longretriever.retriever.proto import longretriever_pb2 as pb
from longretriever.retriever.server import MAX_RECEIVE_MESSAGE_BYTES, SERVICE_NAME
from tests.fixtures.support import settings_for
from tests.fixtures.serving import (SC, assert_clean, assert_valid_answer, call)

pytestmark = pytest.mark.integration


# ---- 2. gRPC input fuzz -----------------------------------------------------------------------
INT64 = st.integers(-2**63, 2**63 - 1)
INT32 = st.integers(-2**31, 2**31 - 1)
EDGE_K = st.sampled_from([0, -1, 1, q.MAX_K, q.MAX_K + 1, 2**31 - 1, -2**31])
EDGE_MC = st.sampled_from([0, -1, 1, q.MAX_CONTEXTS, q.MAX_CONTEXTS + 1, 2**31 - 1, -2**31])
TIMEOUTS = st.sampled_from([0.001, 0.001, 0.01, 5.0, 5.0, 5.0])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
FUZZ = settings(max_examples=int(os.environ.get("LR_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _retrieve_allowed(user: int, k: int, mc: int, timeout: float) -> set:
    valid = user >= 0 and 1 <= k <= q.MAX_K and 1 <= (mc or 8) <= q.MAX_CONTEXTS
    allowed = {SC.OK} if valid else {SC.INVALID_ARGUMENT}
    if timeout < 0.1:
        allowed.add(SC.DEADLINE_EXCEEDED)
    return allowed


@FUZZ
@given(data=st.data())
def test_fuzz_retrieve(reliability_server, data):
    sv, srv, users = reliability_server
    user = data.draw(st.one_of(st.sampled_from(users), INT64, st.sampled_from([0, -1, 2**63 - 1, -2**63])))
    k = data.draw(st.one_of(EDGE_K, INT32, st.integers(1, 200)))
    mc = data.draw(st.one_of(EDGE_MC, INT32, st.integers(0, 8)))
    timeout = data.draw(TIMEOUTS)
    req = pb.RetrieveRequest(user_id=user, k=k, max_contexts=mc, include_seen=data.draw(st.booleans()))
    code, details, res, took = call(srv.stub.Retrieve, req, timeout)
    assert_clean(code, details)
    assert code in _retrieve_allowed(user, k, mc, timeout), (user, k, mc, timeout, code, details)
    assert took < timeout + 1.0
    if code == SC.OK:
        assert len(res.candidates) <= k
        assert res.model_version == sv.bundle.version
        ids = [c.item_id for c in res.candidates]
        assert len(set(ids)) == len(ids)


@FUZZ
@given(data=st.data())
def test_fuzz_get_user_sequence(reliability_server, data):
    sv, srv, users = reliability_server
    names = list(sv.bundle.context_names)
    user = data.draw(st.one_of(st.sampled_from(users), INT64))
    ctx = data.draw(st.one_of(
        st.none(), st.sampled_from(names), TEXT,
        st.sampled_from(["", "0", "1", str(len(names) - 1), str(len(names)), "99", "-1", "1" * 30,
                         "9" * 5000, "\u00b2", "\u0663", " 1", "1 ", "+1", "0x1", "c00\x00"])))
    timeout = data.draw(TIMEOUTS)
    limit = data.draw(st.one_of(st.just(0), st.integers(1, 50), INT32, st.sampled_from([-1, 100_000, 100_001])))
    req = pb.GetUserSequenceRequest(user_id=user, limit=limit)
    if ctx is not None:
        req.context = ctx
    code, details, res, _ = call(srv.stub.GetUserSequence, req, timeout)
    assert_clean(code, details)
    known = ctx is None or ctx in names or (ctx.isascii() and ctx.isdigit() and len(ctx) < 7
                                            and int(ctx) < len(names))
    allowed = {SC.OK} if user >= 0 and known and 0 <= limit <= 100_000 else {SC.INVALID_ARGUMENT}
    if timeout < 0.1:
        allowed.add(SC.DEADLINE_EXCEEDED)
    assert code in allowed, (user, ctx, timeout, code, details)
    if code == SC.OK:
        assert len(res.events) <= (limit or 1000) and res.total >= len(res.events)
        ts = [e.ts for e in res.events]
        assert ts == sorted(ts)  # oldest first
    if code == SC.OK and user not in users:
        assert len(res.events) == 0 and res.total == 0


@FUZZ
@given(raw=st.binary(max_size=120), method=st.sampled_from(["Retrieve", "GetUserSequence"]))
def test_fuzz_raw_bytes(reliability_server, raw, method):
    """Arbitrary bytes as the request message: never INTERNAL / UNKNOWN (undecodable bytes are
    INVALID_ARGUMENT; bytes that happen to parse are judged like any request)."""
    sv, srv, users = reliability_server
    fn = srv.channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    code, details, _, _ = call(fn, raw, 5.0)
    assert_clean(code, details)
    assert code in (SC.OK, SC.INVALID_ARGUMENT), (raw, code, details)


def test_missing_fields_and_limits(reliability_server):
    sv, srv, users = reliability_server
    code, details, _, _ = call(srv.stub.Retrieve, pb.RetrieveRequest())  # k missing -> 0
    assert code == SC.INVALID_ARGUMENT and "k must be" in details
    code, _, res, _ = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=users[0], k=3))  # max_contexts default
    assert code == SC.OK and len(res.candidates) == 3
    code, _, res, _ = call(srv.stub.GetUserSequence, pb.GetUserSequenceRequest())  # user 0, all contexts
    assert code == SC.OK and res.user_id == 0
    code, _, res, _ = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=users[0], k=q.MAX_K, max_contexts=q.MAX_CONTEXTS))
    assert code == SC.OK and 0 < len(res.candidates) <= len(sv.bundle.item_ids)
    # gRPC message size limit: a 100 kB context name never reaches the handler
    big = pb.GetUserSequenceRequest(user_id=1, context="x" * (MAX_RECEIVE_MESSAGE_BYTES + 1000))
    code, details, _, _ = call(srv.stub.GetUserSequence, big)
    assert code == SC.RESOURCE_EXHAUSTED, (code, details)
    # just under the limit: parsed, refused as unknown, the echo in the message is truncated
    near = pb.GetUserSequenceRequest(user_id=1, context="x" * (MAX_RECEIVE_MESSAGE_BYTES - 100))
    code, details, _, _ = call(srv.stub.GetUserSequence, near)
    assert code == SC.INVALID_ARGUMENT and len(details) < 600
    assert_valid_answer(srv, users[0])


def test_burst_of_expiring_and_invalid_calls_then_valid(reliability_server):
    """200 concurrent calls (1 ms deadlines, invalid arguments, valid ones) do not wedge it."""
    sv, srv, users = reliability_server
    rng = np.random.default_rng(3)
    futs = []
    for i in range(200):
        kind = i % 4
        if kind == 0:
            futs.append((kind, srv.stub.Retrieve.future(pb.RetrieveRequest(user_id=users[i % len(users)], k=50), timeout=0.001)))
        elif kind == 1:
            futs.append((kind, srv.stub.Retrieve.future(pb.RetrieveRequest(user_id=-int(rng.integers(1, 2**62)), k=5), timeout=5)))
        elif kind == 2:
            futs.append((kind, srv.stub.GetUserSequence.future(pb.GetUserSequenceRequest(user_id=users[i % len(users)], context="nope"), timeout=5)))
        else:
            futs.append((kind, srv.stub.Retrieve.future(pb.RetrieveRequest(user_id=users[i % len(users)], k=10), timeout=30)))
    want = {0: {SC.DEADLINE_EXCEEDED, SC.OK}, 1: {SC.INVALID_ARGUMENT}, 2: {SC.INVALID_ARGUMENT}, 3: {SC.OK}}
    for kind, f in futs:
        try:
            f.result()
            code, details = SC.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        assert_clean(code, details)
        assert code in want[kind], (kind, code, details)
    assert_valid_answer(srv, users[0])
    assert srv.check_health() == health_pb2.HealthCheckResponse.SERVING


def test_health_and_reflection_on_real_server(reliability_server):
    sv, srv, users = reliability_server
    for name in ("", SERVICE_NAME):
        r = srv.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as ei:
        srv.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert ei.value.code() == SC.NOT_FOUND
    refl = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
    resp = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in resp[0].list_services_response.service}
    assert "longretriever.v1.Retriever" in names and "grpc.health.v1.Health" in names
    resp = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="longretriever.v1.Retriever")]), timeout=5))
    assert resp[0].file_descriptor_response.file_descriptor_proto


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_retrieve_long(reliability_server, data):
    test_fuzz_retrieve.hypothesis.inner_test(reliability_server, data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_get_user_sequence_long(reliability_server, data):
    test_fuzz_get_user_sequence.hypothesis.inner_test(reliability_server, data)


# ---- 3. bundle / collection version -----------------------------------------------------------
def test_bundle_version_differs_from_collection_is_refused(reliability_bundle, reliability_server, tmp_path):
    d, bundle, uri, state_dir, users = reliability_bundle
    sv, srv, _ = reliability_server
    # the serving index (Milvus Lite is single-process per file: reuse the open connection)
    with pytest.raises(BundleError, match="holds bundle version"):
        sv.index.open("20990101T000000Z-000000000000")
    sv.index.open(bundle.version, len(bundle.item_ids), context_sizes(bundle.item_contexts))
    # a bundle that verifies but is not the one that was indexed: open_serving refuses it
    other = tmp_path / "bundle-other"
    shutil.copytree(d / "bundle", other)
    man = json.loads((other / "manifest.json").read_text())
    man["version"] = "20990101T000000Z-" + man["version"].rsplit("-", 1)[1]  # valid, but not indexed
    (other / "manifest.json").write_text(json.dumps(man))
    from longretriever.retriever.bundle import load_bundle

    assert load_bundle(other, intra_op_threads=1).version == man["version"]
    settings = settings_for("127.0.0.1:9", "unused", tmp_path / "state2")
    with pytest.raises(BundleError) as ei:
        open_serving(other, uri, "items", settings, cache_entries=0)
    msg = str(ei.value)
    assert bundle.version in msg and man["version"] in msg and "re-run `longretriever index`" in msg
    assert_valid_answer(srv, users[0])  # the running server is unaffected
