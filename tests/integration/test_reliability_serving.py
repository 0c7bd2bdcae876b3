"""Serving reliability against real components: a tiny trained bundle, a RocksDB state, Milvus
Lite and the grpc.aio server on 127.0.0.1.

1. Milvus outage during queries. (a) The embedded Milvus Lite server of a file URI is killed:
   the next query restarts it by itself. (b) It is killed *and* its directory is moved away, so
   it cannot come back: Retrieve answers UNAVAILABLE well within the deadline, health keeps
   answering SERVING, cold users are still served (popular fallback), and once the directory
   is back queries recover without touching the gRPC server. (c) A standalone Milvus Lite
   *server* on TCP (``http://127.0.0.1:port``, the production code path) is frozen (SIGSTOP),
   then killed, then restarted on the same port and data.
2. gRPC input fuzz (hypothesis) on the real RetrieverService: only OK / INVALID_ARGUMENT /
   DEADLINE_EXCEEDED (/ RESOURCE_EXHAUSTED for oversized messages), never INTERNAL or UNKNOWN,
   never a traceback, and the server answers a valid request afterwards. Health + reflection.
3. A bundle whose version differs from the one the Milvus collection records is refused.

The state is filled with ``StateStore.apply`` straight from the event file (no Kafka needed):
what is under test here is the serving path. Timings are printed with the prefix
``[reliability]`` (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longretriever.datasets import load_dataset
from longretriever.errors import BundleError
from retriever import query as q
from retriever.assemble import open_serving, state_contexts
from retriever.milvus_index import MilvusIndex
from retriever.milvus_requests import context_sizes
from retriever.proto import longretriever_pb2 as pb
from retriever.proto import longretriever_pb2_grpc as pb_grpc
from retriever.server import MAX_RECEIVE_MESSAGE_BYTES, SERVICE_NAME, build_server, set_serving
from retriever.service import RetrieverService
from stream.state import StateStore
from tests.support import settings_for
from export.quick_train import train_small

pytestmark = pytest.mark.integration

DEADLINE = 2.0  # seconds, the client deadline of the outage queries
SC = grpc.StatusCode
TIMINGS: dict[str, object] = {}


def report(name: str, value: object) -> None:
    TIMINGS[name] = value
    print(f"[reliability] {name}: {value}", flush=True)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from stream.synth import write as write_synth

    d = tmp_path_factory.mktemp("relserve")
    ev, it = write_synth(d / "syn.csv", users=30, events_per_user=150, items=600, contexts=4, seed=5)
    train_small(ev, it, d / "bundle", budget=16)
    from export.bundle import load_bundle

    bundle = load_bundle(d / "bundle", intra_op_threads=1)
    (d / "milvus").mkdir()
    uri = str(d / "milvus" / "items.db")
    with MilvusIndex(uri, "items") as ix:
        ix.build(bundle, "flat", progress=False)
    # the state, straight from the file (time order), with a watermark
    ds = load_dataset(ev, it, "csv")
    state_dir = d / "state"
    store = StateStore(state_dir, state_contexts(bundle, None))
    order = np.argsort(ds.events.ts_ms, kind="stable")
    store.apply(ds.events.user_ids[order], ds.events.item_ids[order], ds.events.ts_ms[order],
                {0: int(order.size)})
    users = sorted(int(u) for u in store.users())
    store.close()
    return d, bundle, uri, state_dir, users


class ServerThread:
    """The real grpc.aio server on its own event loop in a background thread, so tests (and
    hypothesis) can drive it with plain synchronous stubs."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "server did not start"
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.RetrieverStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server, self.port, self.hs = build_server(self.backend, "127.0.0.1", 0)
            await self.server.start()
            set_serving(self.hs, True)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def check_health(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2).status


@pytest.fixture(scope="module")
def serving(trained, tmp_path_factory):
    d, bundle, uri, state_dir, users = trained
    settings = settings_for("127.0.0.1:9", "unused", state_dir)  # no Kafka: the state is pre-filled
    sv = open_serving(d / "bundle", uri, "items", settings, cache_entries=0)
    srv = ServerThread(sv.service)
    yield sv, srv, users
    srv.stop()
    sv.close()


def call(fn, req, timeout=5.0):
    """(status code, details, response, seconds) of one unary call."""
    t0 = time.perf_counter()
    try:
        res = fn(req, timeout=timeout)
        return SC.OK, "", res, time.perf_counter() - t0
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None, time.perf_counter() - t0


def assert_clean(code, details) -> None:
    assert code not in (SC.INTERNAL, SC.UNKNOWN), (code, details)
    assert "Traceback" not in details and 'File "' not in details, details
    assert len(details) <= 600, len(details)


def assert_valid_answer(srv: ServerThread, user: int) -> None:
    code, details, res, _ = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=user, k=20, exclude_seen=True))
    assert code == SC.OK, (code, details)
    assert not res.fallback and len(res.candidates) == 20


# ---- 1. Milvus outage -------------------------------------------------------------------------
def _milvus_children(db_path: str) -> list[psutil.Process]:
    """The embedded Milvus Lite server processes started by this test process for ``db_path``."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: not a server
                continue
        except psutil.Error:
            continue
        if "milvus" in cmd and db_path in cmd:
            out.append(p)
    return out


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=10)


def _outage_backend(trained, tmp_path, uri):
    d, bundle, _, state_dir, users = trained
    store = StateStore(state_dir, state_contexts(bundle, None), read_only=True)
    index = MilvusIndex(uri, "items", timeout=5.0)
    index.open(bundle.version, len(bundle.item_ids), context_sizes(bundle.item_contexts))
    return RetrieverService(bundle, index, store, cache=None), index, store


def _until_ok(srv, user, limit=30.0):
    """Poll Retrieve until OK; (seconds until the first OK, codes seen before)."""
    t0 = time.perf_counter()
    seen = []
    while time.perf_counter() - t0 < limit:
        code, details, res, took = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=user, k=20), DEADLINE)
        assert_clean(code, details)
        assert took < DEADLINE + 0.5
        if code == SC.OK:
            assert not res.fallback
            return time.perf_counter() - t0, seen
        seen.append(code.name)
        time.sleep(0.05)
    raise AssertionError(f"no recovery within {limit}s: {seen[-5:]}")


def _unavailable_phase(srv, users, n=6, min_seconds=0.0):
    """At least n queries (and min_seconds) during the outage: each UNAVAILABLE within the
    deadline; health and the fallback path keep working. Returns the per-query seconds."""
    took_all = []
    t0 = time.perf_counter()
    i = -1
    while (i := i + 1) < n or time.perf_counter() - t0 < min_seconds:
        code, details, _, took = call(srv.stub.Retrieve,
                                      pb.RetrieveRequest(user_id=users[i % len(users)], k=20), DEADLINE)
        assert code == SC.UNAVAILABLE, (code, details)
        assert_clean(code, details)
        assert took < DEADLINE, took
        took_all.append(took)
        assert srv.check_health() == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.1)
    # cold users never touch Milvus: popular fallback still answers
    code, _, res, _ = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=10**12, k=10), DEADLINE)
    assert code == SC.OK and res.fallback and len(res.candidates) == 10
    code, _, res, _ = call(srv.stub.GetUserSequence, pb.GetUserSequenceRequest(user_id=users[0]), DEADLINE)
    assert code == SC.OK and len(res.events) > 0
    return took_all


def test_milvus_lite_file_uri_outage_and_recovery(trained, tmp_path):
    d, bundle, _, _, users = trained
    # a private Milvus Lite database: this test kills its server and moves its directory
    mdir = tmp_path / "mv"
    mdir.mkdir()
    uri = str(mdir / "items.db")
    with MilvusIndex(uri, "items") as ix:
        ix.build(bundle, "flat", progress=False)
    service, index, store = _outage_backend(trained, tmp_path, uri)
    srv = ServerThread(service)
    try:
        assert_valid_answer(srv, users[0])
        server_obj = srv.server

        # (a) kill the embedded server: the next query restarts it and succeeds
        victims = _milvus_children(uri)
        assert len(victims) == 1, [p.cmdline() for p in victims]
        _kill(victims)
        t_kill = time.perf_counter()
        for _ in range(20):  # usually the first query already succeeds; under load it may not
            code, details, res, took = call(srv.stub.Retrieve, pb.RetrieveRequest(user_id=users[1], k=20),
                                            DEADLINE)
            if code == SC.OK:
                break
            assert code == SC.UNAVAILABLE, (code, details)  # never INTERNAL, never a hang
        assert code == SC.OK and not res.fallback, (code, details)
        took = time.perf_counter() - t_kill
        assert len(_milvus_children(uri)) == 1 and _milvus_children(uri)[0].pid != victims[0].pid
        report("file-uri: kill -> first query (self-restart of Milvus Lite) s", round(took, 3))

        # (b) kill it and move its directory away: it cannot come back
        _kill(_milvus_children(uri))
        away = tmp_path / "mv-away"
        os.rename(mdir, away)
        try:
            took_all = _unavailable_phase(srv, users, n=6, min_seconds=3.0)
        finally:
            os.rename(away, mdir)
        t_back = time.perf_counter()
        recovery, seen = _until_ok(srv, users[2])
        assert srv.server is server_obj  # the same gRPC server object all along
        report("file-uri: time to UNAVAILABLE s (max / median)",
               (round(max(took_all), 3), round(statistics.median(took_all), 3)))
        report("file-uri: queries during the outage", len(took_all))
        report("file-uri: restore -> first OK s", round(recovery, 3))
        report("file-uri: codes before recovery", seen)
        assert time.perf_counter() - t_back < 10
        for u in users[:5]:
            assert_valid_answer(srv, u)
    finally:
        srv.stop()
        index.close()
        store.close()
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)  # stop the (restarted) embedded server


class LiteServer:
    """A standalone Milvus Lite server process on TCP (the same gRPC API as a Milvus server)."""

    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.srv = None

    def start(self) -> float:
        from milvus_lite.server import Server

        t0 = time.perf_counter()
        self.srv = Server(str(self.db), f"127.0.0.1:{self.port}")
        assert self.srv.init() and self.srv.start(), "milvus lite did not start"
        return time.perf_counter() - t0

    @property
    def proc(self):
        return self.srv._p

    def kill(self) -> None:
        if self.srv is not None:
            if self.srv._p is not None and self.srv._p.poll() is None:
                self.srv._p.send_signal(signal.SIGCONT)
                self.srv._p.kill()
                self.srv._p.wait(10)
            self.srv.stop()
            self.srv = None


def test_milvus_server_outage_tcp_hang_kill_restart(trained, tmp_path):
    from infra.kafka.broker import free_port

    d, bundle, _, _, users = trained
    lite = LiteServer(tmp_path / "tcp.db", free_port())
    lite.start()
    uri = f"http://127.0.0.1:{lite.port}"
    try:
        with MilvusIndex(uri, "items") as ix:
            ix.build(bundle, "flat", progress=False)
        service, index, store = _outage_backend(trained, tmp_path, uri)
        srv = ServerThread(service)
        try:
            assert_valid_answer(srv, users[0])

            # frozen server (accepts TCP, never answers): UNAVAILABLE before the deadline
            lite.proc.send_signal(signal.SIGSTOP)
            try:
                hang = _unavailable_phase(srv, users, n=3)
            finally:
                lite.proc.send_signal(signal.SIGCONT)
            thaw, _ = _until_ok(srv, users[1])
            report("tcp: frozen -> UNAVAILABLE s (max)", round(max(hang), 3))
            report("tcp: SIGCONT -> first OK s", round(thaw, 3))

            # killed server (connection refused): UNAVAILABLE at once
            lite.kill()
            t_down = time.perf_counter()
            dead = _unavailable_phase(srv, users, n=6, min_seconds=3.0)
            report("tcp: killed -> UNAVAILABLE s (max / median)",
                   (round(max(dead), 3), round(statistics.median(dead), 3)))
            report("tcp: outage length s / queries", (round(time.perf_counter() - t_down, 2), len(dead)))
            started = lite.start()
            recovery, seen = _until_ok(srv, users[2])
            report("tcp: Milvus Lite restart s", round(started, 3))
            report("tcp: restart -> first OK s", round(recovery, 3))
            for u in users[:5]:
                assert_valid_answer(srv, u)
        finally:
            srv.stop()
            index.close()
            store.close()
    finally:
        lite.kill()


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
def test_fuzz_retrieve(serving, data):
    sv, srv, users = serving
    user = data.draw(st.one_of(st.sampled_from(users), INT64, st.sampled_from([0, -1, 2**63 - 1, -2**63])))
    k = data.draw(st.one_of(EDGE_K, INT32, st.integers(1, 200)))
    mc = data.draw(st.one_of(EDGE_MC, INT32, st.integers(0, 8)))
    timeout = data.draw(TIMEOUTS)
    req = pb.RetrieveRequest(user_id=user, k=k, max_contexts=mc, exclude_seen=data.draw(st.booleans()))
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
def test_fuzz_get_user_sequence(serving, data):
    sv, srv, users = serving
    names = list(sv.bundle.context_names)
    user = data.draw(st.one_of(st.sampled_from(users), INT64))
    ctx = data.draw(st.one_of(
        st.none(), st.sampled_from(names), TEXT,
        st.sampled_from(["", "0", "1", str(len(names) - 1), str(len(names)), "99", "-1", "1" * 30,
                         "9" * 5000, "\u00b2", "\u0663", " 1", "1 ", "+1", "0x1", "c00\x00"])))
    timeout = data.draw(TIMEOUTS)
    req = pb.GetUserSequenceRequest(user_id=user) if ctx is None else pb.GetUserSequenceRequest(user_id=user, context=ctx)
    code, details, res, _ = call(srv.stub.GetUserSequence, req, timeout)
    assert_clean(code, details)
    known = ctx is None or ctx in names or (ctx.isascii() and ctx.isdigit() and len(ctx) < 7
                                            and int(ctx) < len(names))
    allowed = {SC.OK} if user >= 0 and known else {SC.INVALID_ARGUMENT}
    if timeout < 0.1:
        allowed.add(SC.DEADLINE_EXCEEDED)
    assert code in allowed, (user, ctx, timeout, code, details)
    if code == SC.OK and user not in users:
        assert len(res.events) == 0


@FUZZ
@given(raw=st.binary(max_size=120), method=st.sampled_from(["Retrieve", "GetUserSequence"]))
def test_fuzz_raw_bytes(serving, raw, method):
    """Arbitrary bytes as the request message: never INTERNAL / UNKNOWN (undecodable bytes are
    INVALID_ARGUMENT; bytes that happen to parse are judged like any request)."""
    sv, srv, users = serving
    fn = srv.channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    code, details, _, _ = call(fn, raw, 5.0)
    assert_clean(code, details)
    assert code in (SC.OK, SC.INVALID_ARGUMENT), (raw, code, details)


def test_missing_fields_and_limits(serving):
    sv, srv, users = serving
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


def test_burst_of_expiring_and_invalid_calls_then_valid(serving):
    """200 concurrent calls (1 ms deadlines, invalid arguments, valid ones) do not wedge it."""
    sv, srv, users = serving
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


def test_health_and_reflection_on_real_server(serving):
    sv, srv, users = serving
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
def test_fuzz_retrieve_long(serving, data):
    test_fuzz_retrieve.hypothesis.inner_test(serving, data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_get_user_sequence_long(serving, data):
    test_fuzz_get_user_sequence.hypothesis.inner_test(serving, data)


# ---- 3. bundle / collection version -----------------------------------------------------------
def test_bundle_version_differs_from_collection_is_refused(trained, serving, tmp_path):
    d, bundle, uri, state_dir, users = trained
    sv, srv, _ = serving
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
    from export.bundle import load_bundle

    assert load_bundle(other, intra_op_threads=1).version == man["version"]
    settings = settings_for("127.0.0.1:9", "unused", tmp_path / "state2")
    with pytest.raises(BundleError) as ei:
        open_serving(other, uri, "items", settings, cache_entries=0)
    msg = str(ei.value)
    assert bundle.version in msg and man["version"] in msg and "re-run `longretriever index`" in msg
    assert_valid_answer(srv, users[0])  # the running server is unaffected
