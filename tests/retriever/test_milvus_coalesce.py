"""Coalescer (no Milvus): concurrent searches of one key travel together, each caller gets its
own hits cut to its own limit, errors reach every caller of a batch, keys do not mix, and no
caller's thread is held while a request is in flight (the next batch leaves from the previous
request's completion)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from longretriever.retriever.milvus_coalesce import Coalescer


class SlowBatch:
    """A batch search taking ``delay`` s: the hits of vector v are ids v[0]*1000 + 0..limit-1."""

    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.calls: list[tuple[int, int]] = []  # (nq, limit)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, vectors, limit, timeout):
        """Start the batch in a thread of its own; return it as a Pending (result + callback)."""
        fut: Future = Future()

        def work():
            try:
                fut.set_result(self.blocking(vectors, limit, timeout))
            except BaseException as exc:  # noqa: BLE001
                fut.set_exception(exc)

        threading.Thread(target=work, daemon=True).start()
        return Pending(fut)

    def blocking(self, vectors, limit, timeout):
        with self.lock:
            self.calls.append((len(vectors), limit))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        if self.fail:
            raise ConnectionError("down")
        return [(np.arange(limit, dtype=np.int64) + int(v[0]) * 1000, -np.arange(limit, dtype=np.float32))
                for v in vectors]


class Pending:
    def __init__(self, fut: Future) -> None:
        self.fut = fut

    def result(self):
        return self.fut.result()

    def add_done_callback(self, fn):
        self.fut.add_done_callback(lambda _f: fn())


def test_concurrent_searches_of_one_key_are_batched_and_split_back():
    co, run = Coalescer(), SlowBatch()
    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(lambda i: co.search("c1", np.array([i], np.float32), 5 + i % 3, 5.0, run),
                             range(32)))
    for i, (ids, scores) in enumerate(outs):
        assert ids.tolist() == [i * 1000 + j for j in range(5 + i % 3)]  # own hits, own limit
    assert sum(n for n, _ in run.calls) == 32 and co.vectors == 32
    assert len(run.calls) < 32 and co.requests == len(run.calls)
    assert run.max_in_flight == 1  # one request per key at a time
    assert all(lim == 7 for n, lim in run.calls if n >= 3)  # a batch asks for its largest limit


def test_an_idle_key_searches_at_once_and_keys_run_in_parallel():
    co, run = Coalescer(), SlowBatch(delay=0.2)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: co.search(k, np.array([1.0], np.float32), 3, 5.0, run), ["a", "b", "c", "d"]))
    assert time.perf_counter() - t0 < 0.5  # four keys side by side, not 4 x 0.2 s
    assert [n for n, _ in run.calls] == [1, 1, 1, 1]


def test_a_failed_batch_fails_every_caller_and_the_key_is_released():
    co, run = Coalescer(), SlowBatch(fail=True)
    errors = []

    def one(i):
        try:
            co.search("c", np.array([i], np.float32), 2, 5.0, run)
        except ConnectionError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    assert len(errors) == 8
    run.fail = False
    ids, _ = co.search("c", np.array([3.0], np.float32), 2, 5.0, run)
    assert ids.tolist() == [3000, 3001]


def test_a_queued_search_gives_up_at_its_deadline():
    co, run = Coalescer(), SlowBatch(delay=1.0)
    first = threading.Thread(target=lambda: co.search("c", np.array([1.0], np.float32), 2, 5.0, run))
    first.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        co.search("c", np.array([2.0], np.float32), 2, 0.2, run)
    assert time.perf_counter() - t0 < 0.6
    first.join()


def test_submit_returns_at_once_and_one_thread_collects_many_searches():
    co, run = Coalescer(), SlowBatch(delay=0.2)
    t0 = time.perf_counter()
    tickets = [co.submit(k, np.array([i], np.float32), 3, 5.0, run) for i, k in enumerate("aabbc")]
    assert time.perf_counter() - t0 < 0.1  # nothing waited for a request
    got = [t.result()[0].tolist() for t in tickets]
    assert got == [[i * 1000 + j for j in range(3)] for i in range(5)]
    assert time.perf_counter() - t0 < 0.7  # a, b, c side by side; the queued a and b next
    assert sorted(n for n, _ in run.calls) == [1, 1, 1, 1, 1] and co.requests == 5
