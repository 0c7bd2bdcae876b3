"""Precomputed per-(user, context) query vectors, refreshed by the stream worker's hook.

A query vector of user ``u`` for context ``c`` depends on (a) the newest ``K`` events of ``c``
and (b) the newest ``W`` events of ``u`` overall. Every new event of ``u`` changes (b), so when
the worker reports ``touched = {u: {c, ...}}`` after a durable batch, every cached vector of
``u`` is stale, whatever context the event was in. The refresher recomputes exactly those: the
contexts of ``u`` that are in the cache (i.e. that a query asked for). A touched context nobody
queried has no vector to refresh, and computing one speculatively for every active user would
spend the encoder on answers nobody reads (measured: at 1k events/s it multiplied query p99
several times). Work is batched across users into a few ``Bundle.encode`` calls, and cycles are
at least ``min_interval`` apart so bursts of events for one user coalesce into one refresh.

Refreshes follow demand. An entry a query read (or computed) is *wanted*; a refresh clears the
flag, a query that reads the entry sets it again. The refresher recomputes wanted entries only,
so it never does more encoder work than the queries it saves: a user whose events arrive faster
than she is queried costs one refresh per query, not one per batch. Measured before this rule
(`bench freshness`, 5k single-event messages/s, 200 users each queried every ~10 s): the
refresher recomputed every user about once a second, hit almost never (each user had ~25 new
events/s), took a quarter of the process's wall time under the GIL and doubled the stream
worker's batch time.

Each entry carries a stamp of the user's recent window (digest of the newest events'
items and timestamps). The service only uses an entry whose stamp equals the stamp of the
state it just read, so a stale entry (a batch applied after the refresh, or a refresh still
queued) is never served: it is recomputed inline instead.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Iterable, Mapping

import numpy as np

from longretriever.core.bundle import Bundle
from longretriever.core.planner import context_rows
from longretriever.retriever import metrics
from longretriever.retriever.history import StateHistory, StateReader

log = logging.getLogger(__name__)


def window_stamp(items: np.ndarray, ts: np.ndarray) -> bytes:
    """Digest of a user's recent window; changes whenever any event enters it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(items, np.int64).tobytes())
    h.update(np.ascontiguousarray(ts, np.int64).tobytes())
    return h.digest()


class VectorCache:
    """Thread-safe LRU of (user, context) -> (stamp, vector, wanted)."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[tuple[int, int], list] = OrderedDict()  # [stamp, vector, wanted]
        self._by_user: dict[int, set[int]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, user: int, context: int, stamp: bytes) -> np.ndarray | None:
        with self._lock:
            e = self._d.get((user, context))
            if e is None or e[0] != stamp:
                self.misses += 1
                metrics.CACHE.labels("miss").inc()
                return None
            self._d.move_to_end((user, context))
            e[2] = True  # read: worth refreshing after the user's next events
            self.hits += 1
            metrics.CACHE.labels("hit").inc()
            return e[1]

    def put(self, user: int, context: int, stamp: bytes, vector: np.ndarray, wanted: bool = True) -> None:
        """``wanted``: a query needs this vector (True), or a refresh computed it ahead (False)."""
        with self._lock:
            self._d[(user, context)] = [stamp, vector, wanted]
            self._d.move_to_end((user, context))
            self._by_user.setdefault(user, set()).add(context)
            while len(self._d) > self.max_entries:
                (u, c), _ = self._d.popitem(last=False)
                s = self._by_user.get(u)
                if s is not None:
                    s.discard(c)
                    if not s:
                        del self._by_user[u]

    def contexts_of(self, user: int) -> set[int]:
        """The user's cached contexts that a query read since they were last refreshed."""
        with self._lock:
            return {c for c in self._by_user.get(user, ()) if self._d[(user, c)][2]}

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._by_user.clear()


class Refresher:
    """Consumes ``on_applied(touched)`` callbacks; recomputes vectors in a background thread
    (coalescing bursts), or synchronously via :meth:`refresh`."""

    def __init__(self, bundle: Bundle, state: StateReader, cache: VectorCache, *, batch_rows: int = 512,
                 window: int = 1000, allowed: set[int] | None = None, min_interval: float = 0.05,
                 speculative: bool = False, duty: float = 0.25) -> None:
        self.min_interval = min_interval
        # at most this share of wall time goes to refreshing: the refresh runs Python (state
        # reads) under the GIL, and at thousands of events/s with every user cached it would
        # otherwise take the stream worker's CPU (measured: the worker fell behind at 5k
        # single-event messages/s). Skipped refreshes only cost cache misses: the service
        # checks the stamp and encodes inline.
        self.duty = duty
        self.speculative = speculative  # also compute touched contexts that are not cached
        self.bundle = bundle
        self.state = state
        self.cache = cache
        self.batch_rows = batch_rows
        self.window = window
        self.hard_k = int(bundle.k)
        self.w = int(bundle.w)
        self.allowed = allowed
        self._pending: dict[int, set[int]] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.refreshed_rows = 0

    # called by stream.worker after each durable batch (any thread / the event loop): cheap.
    def on_applied(self, touched: Mapping[int, Iterable[int]]) -> None:
        with self._cv:
            for u, cs in touched.items():
                self._pending.setdefault(int(u), set()).update(int(c) for c in cs)
            self._cv.notify_all()

    def start(self) -> "Refresher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vector-refresh", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        last, spent = 0.0, 0.0
        while True:
            with self._cv:
                while not self._pending and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
            # let a burst of batches coalesce into one cycle, and keep the duty cycle
            pause = max(self.min_interval, spent / self.duty) - (time.monotonic() - last)
            if pause > 0:
                time.sleep(pause)
            last = time.monotonic()
            with self._cv:
                work, self._pending = self._pending, {}
                self._busy = True
            try:
                t0 = time.perf_counter()
                self.refresh(work)
                spent = time.perf_counter() - t0
                metrics.REFRESH_SECONDS.observe(spent)
            except Exception:  # noqa: BLE001 - a failed refresh only costs cache misses
                log.exception("vector refresh failed for %d users", len(work))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every reported change has been refreshed; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)

    def refresh(self, touched: Mapping[int, Iterable[int]]) -> int:
        """Recompute the wanted cached contexts of each touched user (plus, when speculative,
        the touched contexts); returns the number of rows encoded."""
        rows: list[tuple[int, int, bytes]] = []
        ctx_items: list[np.ndarray] = []
        recent_items: list[np.ndarray] = []
        contexts: list[int] = []
        n = 0
        for u, cs in touched.items():
            u = int(u)
            want = set(self.cache.contexts_of(u))
            if self.speculative:
                want |= {int(c) for c in cs}
            if self.allowed is not None:
                want &= self.allowed
            if not want:
                continue
            history = StateHistory(self.state, u)
            seq = history.recent(self.window)
            if seq is None or len(seq) == 0:
                continue
            stamp = window_stamp(seq.items, seq.ts)
            order = sorted(want)
            tails, recent = context_rows(history, order, self.hard_k, self.w)  # the planner's rows
            for c, tail in zip(order, tails):
                rows.append((u, c, stamp))
                ctx_items.append(tail)
                recent_items.append(recent)
                contexts.append(c)
                if len(rows) >= self.batch_rows:
                    n += self._flush(rows, ctx_items, recent_items, contexts)
                    rows, ctx_items, recent_items, contexts = [], [], [], []
        if rows:
            n += self._flush(rows, ctx_items, recent_items, contexts)
        self.refreshed_rows += n
        return n

    def _flush(self, rows, ctx_items, recent_items, contexts) -> int:
        vecs = np.asarray(self.bundle.encode(ctx_items, recent_items, contexts), np.float32)
        for (u, c, stamp), v in zip(rows, vecs):
            self.cache.put(u, c, stamp, v.copy(), wanted=False)
        metrics.REFRESHED.inc(len(rows))
        return len(rows)
