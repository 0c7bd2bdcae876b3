"""Shared harness of the serving reliability tests: a tiny trained bundle, a state filled
straight from the event file, Milvus Lite, the grpc.aio server on a thread, and call helpers.
Timings are printed with the prefix ``[reliability]`` (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longretriever.datasets import load_dataset
from retriever.assemble import open_serving, state_contexts
from retriever.milvus_index import MilvusIndex
from retriever.proto import longretriever_pb2 as pb
from retriever.proto import longretriever_pb2_grpc as pb_grpc
from retriever.server import SERVICE_NAME, build_server, set_serving
from stream.state import StateStore
from tests.support import settings_for
from export.quick_train import train_small


DEADLINE = 2.0  # seconds, the client deadline of the outage queries
SC = grpc.StatusCode
TIMINGS: dict[str, object] = {}


def report(name: str, value: object) -> None:
    TIMINGS[name] = value
    print(f"[reliability] {name}: {value}", flush=True)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reliability_bundle(tmp_path_factory):
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
def reliability_server(reliability_bundle, tmp_path_factory):
    d, bundle, uri, state_dir, users = reliability_bundle
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
