"""Coalescing of concurrent searches on the same partition into one multi-vector request.

Milvus charges a fixed cost per search request (~4 ms on the 2.3.5 server here, most of it
proxy / query-node scheduling) that does not grow much with the number of query vectors in
it. So while a search of context ``c`` is in flight, further searches of ``c`` from other
requests wait, and when it returns they go out together as one request (``nq`` = their
number, ``limit`` = the largest of theirs; each caller keeps its own first ``limit`` hits).
Nothing waits for a timer: an idle service sends every search at once, batches form only
under concurrency ("natural batching"), so coalescing never adds latency at low load.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

#: one multi-vector search: (vectors, limit, timeout) -> per vector (ids, scores)
BatchSearch = Callable[[Sequence[np.ndarray], int, float | None], list[tuple[np.ndarray, np.ndarray]]]


@dataclass
class _Waiter:
    vector: np.ndarray
    limit: int
    deadline: float | None
    future: Future = field(default_factory=Future)
    lead: threading.Event = field(default_factory=threading.Event)


class Coalescer:
    """Per key (a context / partition), at most one request in flight; searches arriving
    meanwhile join the next one. ``max_batch`` bounds ``nq`` per request."""

    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max(1, max_batch)
        self._lock = threading.Lock()
        self._busy: set[Hashable] = set()
        self._queues: dict[Hashable, list[_Waiter]] = {}
        self.requests = 0  # search requests sent
        self.vectors = 0  # query vectors they carried

    def search(self, key: Hashable, vector: np.ndarray, limit: int, timeout: float | None,
               run: BatchSearch) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of ``vector``'s best ``limit`` hits (Milvus' order), searched alone or
        together with other callers' vectors of the same ``key``."""
        me = _Waiter(vector, limit, None if timeout is None else time.monotonic() + timeout)
        with self._lock:
            if key in self._busy:
                self._queues.setdefault(key, []).append(me)
            else:
                self._busy.add(key)
                me.lead.set()
        if not me.lead.is_set():
            self._wait_turn(me, key)
        if not me.future.done():
            self._lead(key, me, run)
        return me.future.result()

    def _wait_turn(self, me: _Waiter, key: Hashable) -> None:
        """Wait until our batch has been answered, or until we are made the next leader."""
        while True:
            left = None if me.deadline is None else me.deadline - time.monotonic()
            if me.lead.wait(timeout=None if left is None else max(0.0, left)) or me.future.done():
                return
            with self._lock:  # deadline passed while queued: leave the queue
                q = self._queues.get(key, [])
                if me in q:
                    q.remove(me)
                    me.future.set_exception(TimeoutError("search deadline passed while queued"))
                    return

    def _lead(self, key: Hashable, me: _Waiter, run: BatchSearch) -> None:
        """Send our vector with everything queued for ``key``; then hand the key to the next
        waiter (or release it)."""
        with self._lock:
            q = self._queues.get(key, [])
            batch = [me, *q[: self.max_batch - 1]]
            del q[: self.max_batch - 1]
        limit = max(w.limit for w in batch)
        deadlines = [w.deadline for w in batch if w.deadline is not None]
        timeout = None if not deadlines else max(0.01, min(deadlines) - time.monotonic())
        try:
            out = run([w.vector for w in batch], limit, timeout)
            if len(out) != len(batch):
                raise ValueError(f"batch search returned {len(out)} results for {len(batch)} vectors")
            for w, (ids, scores) in zip(batch, out):
                w.future.set_result((ids[: w.limit], scores[: w.limit]))
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch sees the error
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            for w in batch[1:]:
                w.lead.set()  # wakes them: their future is done, they return it
            with self._lock:
                self.requests += 1
                self.vectors += len(batch)
                q = self._queues.get(key, [])
                if q:
                    nxt = q.pop(0)  # stays busy: the next leader sends the next batch
                    nxt.lead.set()
                else:
                    self._busy.discard(key)
                    self._queues.pop(key, None)
