"""Milvus outage during queries (see tests/fixtures/serving.py for the setup).

(a) The embedded Milvus Lite server of a file URI is killed: the next queries restart it.
(b) It is killed *and* its directory moved away: Retrieve answers UNAVAILABLE well within the
    deadline, health keeps answering, cold users still get the fallback, and once the directory
    is back queries recover without touching the gRPC server. (c) A standalone Milvus Lite
    *server* on TCP (the production code path) is frozen, killed and restarted.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import psutil
import pytest
from grpc_health.v1 import health_pb2

from longretriever.retriever.assemble import state_contexts
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.core.planner import context_sizes
from longretriever.retriever.proto import longretriever_pb2 as pb
from longretriever.retriever.service import RetrieverService
from longretriever.stream.state import StateStore
from tests.fixtures.serving import (DEADLINE, SC, ServerThread, assert_clean,
                                               assert_valid_answer, call, report)

pytestmark = pytest.mark.integration


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


def _outage_backend(reliability_bundle, tmp_path, uri):
    d, bundle, _, state_dir, users = reliability_bundle
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


def test_milvus_lite_file_uri_outage_and_recovery(reliability_bundle, tmp_path):
    d, bundle, _, _, users = reliability_bundle
    # a private Milvus Lite database: this test kills its server and moves its directory
    mdir = tmp_path / "mv"
    mdir.mkdir()
    uri = str(mdir / "items.db")
    with MilvusIndex(uri, "items") as ix:
        ix.build(bundle, "flat", progress=False)
    service, index, store = _outage_backend(reliability_bundle, tmp_path, uri)
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


def test_milvus_server_outage_tcp_hang_kill_restart(reliability_bundle, tmp_path):
    from longretriever.infra.kafka.broker import free_port

    d, bundle, _, _, users = reliability_bundle
    lite = LiteServer(tmp_path / "tcp.db", free_port())
    lite.start()
    uri = f"http://127.0.0.1:{lite.port}"
    try:
        with MilvusIndex(uri, "items") as ix:
            ix.build(bundle, "flat", progress=False)
        service, index, store = _outage_backend(reliability_bundle, tmp_path, uri)
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


def test_milvus_standalone_server_killed_mid_load_and_restarted(reliability_bundle, tmp_path, milvus_server):
    """The server tier: a private Milvus standalone server (the session one stays up) is
    SIGKILLed while queries run: UNAVAILABLE within the deadline, never INTERNAL; restarted on
    the same data directory and port, queries recover by themselves (the collection is loaded
    again by the reconnect)."""
    from longretriever.infra.milvus import server as milvus_server_mgr

    d, bundle, _, _, users = reliability_bundle
    data = tmp_path / "milvus-private"
    info = milvus_server_mgr.start(data)
    try:
        with MilvusIndex(info.uri, "items") as ix:
            assert ix.build(bundle, "flat", progress=False)["layout"] == "partition"
        service, index, store = _outage_backend(reliability_bundle, tmp_path, info.uri)
        srv = ServerThread(service)
        try:
            assert_valid_answer(srv, users[0])
            milvus_server_mgr.kill(data)
            t_down = time.perf_counter()
            dead = _unavailable_phase(srv, users, n=6, min_seconds=2.0)
            report("server: killed -> UNAVAILABLE s (max / median)",
                   (round(max(dead), 3), round(statistics.median(dead), 3)))
            report("server: outage length s / queries", (round(time.perf_counter() - t_down, 2), len(dead)))
            t0 = time.perf_counter()
            again = milvus_server_mgr.start(data, info.port)
            assert again.port == info.port
            report("server: restart s", round(time.perf_counter() - t0, 3))
            recovery, seen = _until_ok(srv, users[2], limit=60.0)
            report("server: restart -> first OK s", round(recovery, 3))
            for u in users[:5]:
                assert_valid_answer(srv, u)
        finally:
            srv.stop()
            index.close()
            store.close()
    finally:
        milvus_server_mgr.stop(data)
