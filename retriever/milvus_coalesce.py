"""Coalescing of concurrent searches on the same partition into one multi-vector request.

Milvus charges a fixed cost per search request (~4 ms on the 2.3.5 server here, most of it
proxy / query-node scheduling) that does not grow much with the number of query vectors in
it. So while a search of context ``c`` is in flight, further searches of ``c`` from other
requests queue, and when it returns they go out together as one request (``nq`` = their
number, ``limit`` = the largest of theirs; each caller keeps its own first ``limit`` hits).
Nothing waits for a timer: an idle service sends every search at once, batches form only
under concurrency ("natural batching"), so coalescing never adds latency at low load.

Nothing here blocks a thread while a request is in flight: :meth:`Coalescer.submit` returns a
:class:`Ticket` at once, the next batch of a key is sent from the completion callback of the
previous request, and a caller blocks only in :meth:`Ticket.result`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable, Protocol, Sequence

import numpy as np

Hits = tuple[np.ndarray, np.ndarray]  # (ids, scores) of one query vector, Milvus' order


class Pending(Protocol):
    """A search request in flight."""

    def result(self) -> list[Hits]:
        """Per query vector its hits (blocks until the request is answered; raises its error)."""

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once the request is answered or failed (at once if it already is)."""


#: send one multi-vector search: (vectors, limit, timeout) -> the request in flight
StartBatch = Callable[[Sequence[np.ndarray], int, float | None], Pending]


class _Failed:
    """A request that could not be sent."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self) -> list[Hits]:
        raise self.exc

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        fn()


class _Batch:
    """The answer of one request, read once for all its tickets."""

    def __init__(self, pending: Pending, size: int) -> None:
        self.pending, self.size = pending, size
        self._lock = threading.Lock()
        self._read = False
        self._out: list[Hits] = []
        self._exc: BaseException | None = None

    def result(self) -> list[Hits]:
        with self._lock:
            if not self._read:
                try:
                    out = self.pending.result()
                    if len(out) != self.size:
                        raise ValueError(f"batch search returned {len(out)} results for {self.size} vectors")
                    self._out = out
                except BaseException as exc:  # noqa: BLE001 - every ticket of the batch sees the error
                    self._exc = exc
                self._read = True
        if self._exc is not None:
            raise self._exc
        return self._out


class Ticket:
    """One caller's search: queued, or a place in a sent batch."""

    def __init__(self, vector: np.ndarray, limit: int, deadline: float | None) -> None:
        self.vector, self.limit, self.deadline = vector, limit, deadline
        self._sent = threading.Event()
        self._batch: _Batch | None = None
        self._pos = 0
        self._leave: Callable[[], bool] = lambda: False

    def _assign(self, batch: _Batch, pos: int) -> None:
        self._batch, self._pos = batch, pos
        self._sent.set()

    def result(self) -> Hits:
        """(ids, scores) of this vector's best ``limit`` hits (Milvus' order)."""
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        if not self._sent.wait(left):
            if self._leave():  # still queued at the deadline: leave the queue
                raise TimeoutError("search deadline passed while queued")
            self._sent.wait()  # sent meanwhile: its request carries the deadline
        assert self._batch is not None
        ids, scores = self._batch.result()[self._pos]
        return ids[: self.limit], scores[: self.limit]


class Coalescer:
    """Per key (a context / partition), at most one request in flight; searches arriving
    meanwhile join the next one. ``max_batch`` bounds ``nq`` per request."""

    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max(1, max_batch)
        self._lock = threading.Lock()
        self._busy: set[Hashable] = set()
        self._queues: dict[Hashable, list[tuple[Ticket, StartBatch]]] = {}
        self.requests = 0  # search requests sent
        self.vectors = 0  # query vectors they carried

    def submit(self, key: Hashable, vector: np.ndarray, limit: int, timeout: float | None,
               start: StartBatch) -> Ticket:
        """Send ``vector``'s search now if ``key`` is idle, else queue it for the next request
        of ``key``; returns at once."""
        me = Ticket(vector, limit, None if timeout is None else time.monotonic() + timeout)
        me._leave = lambda: self._leave(key, me)
        with self._lock:
            if key in self._busy:
                self._queues.setdefault(key, []).append((me, start))
                return me
            self._busy.add(key)
        self._send(key, [(me, start)])
        return me

    def search(self, key: Hashable, vector: np.ndarray, limit: int, timeout: float | None,
               start: StartBatch) -> Hits:
        """:meth:`submit`, then wait for the hits."""
        return self.submit(key, vector, limit, timeout, start).result()

    def _send(self, key: Hashable, batch: list[tuple[Ticket, StartBatch]]) -> None:
        tickets = [t for t, _ in batch]
        deadlines = [t.deadline for t in tickets if t.deadline is not None]
        timeout = None if not deadlines else max(0.01, min(deadlines) - time.monotonic())
        with self._lock:
            self.requests += 1
            self.vectors += len(tickets)
        try:
            pending: Pending = batch[0][1]([t.vector for t in tickets], max(t.limit for t in tickets), timeout)
        except BaseException as exc:  # noqa: BLE001 - the tickets report it
            pending = _Failed(exc)
        answer = _Batch(pending, len(tickets))
        for i, t in enumerate(tickets):
            t._assign(answer, i)
        pending.add_done_callback(lambda: self._next(key))

    def _next(self, key: Hashable) -> None:
        """The request of ``key`` is answered: send what queued meanwhile, or free the key."""
        with self._lock:
            q = self._queues.get(key)
            if not q:
                self._busy.discard(key)
                self._queues.pop(key, None)
                return
            batch = q[: self.max_batch]
            del q[: self.max_batch]
        self._send(key, batch)

    def _leave(self, key: Hashable, t: Ticket) -> bool:
        with self._lock:
            q = self._queues.get(key, [])
            for i, (queued, _) in enumerate(q):
                if queued is t:
                    del q[i]
                    return True
        return False
