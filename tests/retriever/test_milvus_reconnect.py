"""MilvusIndex reconnect behaviour against a fake client: drop the client on a connection
failure, reconnect on the next call, bound a hung call by the timeout, fail queued callers fast."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from longretriever.core.errors import ServiceUnavailable
from tests.fixtures.fakes import MilvusWorld


# ---- MilvusIndex reconnect (fake client) ------------------------------------------------------
def _index(world, **kw):
    from longretriever.retriever.milvus_index import MilvusIndex

    ix = MilvusIndex("fake.db", "c1", client_factory=world.factory, **kw)
    ix.open("v1", expected_items=10, context_sizes={1: 5, 2: 5})
    return ix


VEC = {1: np.ones(4, np.float32), 2: np.ones(4, np.float32)}


def test_connection_failure_drops_client_and_next_call_reconnects():
    w = MilvusWorld()
    ix = _index(w)
    assert len(ix.search_contexts(VEC, {1: 2, 2: 2})[1]) == 2
    loads = w.loads
    w.down, w.refuse_connect = True, True
    with pytest.raises(ServiceUnavailable):
        ix.search_contexts(VEC, {1: 2, 2: 2}, timeout=1.0)
    assert ix._client is None and w.clients[0].closed
    with pytest.raises(ServiceUnavailable):  # still down: the reconnect fails cleanly
        ix.search_contexts(VEC, {1: 2}, timeout=1.0)
    w.down, w.refuse_connect = False, False
    assert len(ix.search_contexts(VEC, {1: 3})[1]) == 3  # recovered, same index object
    assert len(w.clients) == 2 and w.loads == loads + 1  # the new client reloaded the collection


def test_non_transient_error_keeps_the_client():
    w = MilvusWorld()
    ix = _index(w)
    w.bad_query = True
    with pytest.raises(ValueError):
        ix.search_contexts(VEC, {1: 2})
    assert ix._client is w.clients[0] and len(w.clients) == 1


def test_hung_milvus_is_bounded_by_the_timeout():
    w = MilvusWorld()
    ix = _index(w)
    w.hang = True
    t0 = time.perf_counter()
    with pytest.raises(ServiceUnavailable):
        ix.search_contexts(VEC, {1: 2, 2: 2}, timeout=0.4)
    took = time.perf_counter() - t0
    assert took < 0.8, took  # no second attempt after the budget is spent


def test_queued_callers_fail_fast_after_a_failed_reconnect():
    w = MilvusWorld()
    ix = _index(w, max_workers=8)
    w.down = True
    with pytest.raises(ServiceUnavailable):
        ix.search_contexts(VEC, {1: 2}, timeout=1.0)
    w.refuse_connect, w.connect_delay = True, 0.3
    errors, took = [], []

    def one():
        t0 = time.perf_counter()
        try:
            ix.search_contexts(VEC, {1: 2}, timeout=2.0)
        except ServiceUnavailable as exc:
            errors.append(exc)
        took.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6
    # one reconnect attempt at a time; the waiters see it fail instead of each waiting 0.3 s
    # (serialised they would take about 6 x 2 x 0.3 s)
    assert max(took) < 1.5, took


def test_transient_detection_follows_the_cause_chain():
    from longretriever.retriever.milvus_index import _is_transient

    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert _is_transient(outer)
    assert not _is_transient(ValueError("bad"))
    # a killed Lite server: another thread's reconnect closed the channel under a search
    assert _is_transient(ValueError("Cannot invoke RPC on closed channel!"))


def test_refused_tcp_connect_fails_fast():
    from longretriever.retriever.milvus_index import MilvusIndex, _probe_tcp

    with pytest.raises(OSError):
        _probe_tcp("http://127.0.0.1:1", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(ServiceUnavailable):
        with MilvusIndex("http://127.0.0.1:1", "c1", timeout=5.0) as ix:
            ix.search_contexts({1: np.ones(4, np.float32)}, {1: 2}, timeout=3.0)
    assert time.perf_counter() - t0 < 1.0  # not the 3 s budget nor the 5 s connect timeout


# ---- a search sent without blocking (SearchCall) ----------------------------------------------
def _call(first_error, blocking):
    from concurrent.futures import Future

    from longretriever.retriever.milvus_conn import MilvusConnection, SearchCall

    conn = MilvusConnection("fake.db", "c1", client_factory=MilvusWorld().factory)
    client = conn.client
    first: Future = Future()
    first.set_exception(first_error)
    return conn, client, SearchCall(conn, first, lambda f: f.result(), blocking, timeout=2.0)


def test_a_sent_search_that_failed_in_transit_is_retried_once_on_a_new_client():
    tries = []
    conn, client, call = _call(ConnectionError("reset by peer"), lambda t: tries.append(t) or ["hits"])
    assert call.result() == ["hits"] and len(tries) == 1 and 0 < tries[0] <= 2.0  # what was left of the deadline
    assert client.closed and conn._client is None  # dropped: the retry's call reconnects


def test_a_sent_search_refused_by_milvus_is_not_retried():
    tries = []
    conn, client, call = _call(ValueError("bad request"), lambda t: tries.append(t) or ["hits"])
    with pytest.raises(ValueError):
        call.result()
    assert tries == [] and conn._client is client and not client.closed


def test_a_sent_search_failing_twice_is_unavailable():
    def down(t):
        raise ConnectionError("still down")

    _, _, call = _call(ConnectionError("reset by peer"), down)
    with pytest.raises(ServiceUnavailable):
        call.result()
