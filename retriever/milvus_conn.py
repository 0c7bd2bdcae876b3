"""The Milvus connection under :class:`~longretriever.retriever.milvus_index.MilvusIndex`:
one pymilvus client that reconnects by itself, retries bounded by the caller's deadline,
connection failures as :class:`ServiceUnavailable`, and the raw search call that parses the
reply into arrays instead of a Python dict per hit.

The URI is a Milvus Lite file (``./milvus.db``) or a server (``http://host:19530``); pymilvus
picks the transport from it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np
from tenacity import (RetryError, Retrying, retry_if_exception, stop_after_attempt,
                      stop_before_delay, wait_exponential)

from longretriever.core.errors import ConfigError, LongRetrieverError, ServiceUnavailable
from longretriever.retriever import milvus_requests as mr

# milvus-lite 2.5.1 imports pkg_resources (pinned setuptools<81 keeps it) and warns on import
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

log = logging.getLogger(__name__)


def _is_transient(exc: BaseException) -> bool:
    """A connection / availability failure (here or anywhere in the exception's cause chain)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _is_transient_one(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ValueError) and "closed channel" in str(exc):
        return True  # grpc: the channel was closed under this call (another thread dropped the client)
    try:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            # CANCELLED: only closing the channel cancels our calls (a reconnect after another
            # search of the same query failed), so the search is retried on the new client
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED)
    except ImportError:  # pragma: no cover
        pass
    try:
        from pymilvus.exceptions import MilvusUnavailableException

        if isinstance(exc, MilvusUnavailableException):
            return True
    except ImportError:  # pragma: no cover
        pass
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, MilvusException):
        text = str(exc).lower()
        return any(s in text for s in ("unavailable", "fail connecting", "failed to connect",
                                      "connection", "timeout", "deadline", "not ready"))
    return False


def _release_dead_lite_server(uri: str) -> None:
    """If the embedded Milvus Lite server of ``uri`` has exited (killed, crashed), forget it so
    the next ``MilvusClient(uri)`` starts a fresh one instead of dialling a dead socket."""
    try:
        from milvus_lite.server_manager import server_manager_instance as mgr
    except ImportError:  # pragma: no cover - milvus-lite not installed
        return
    key = str(Path(uri).absolute().resolve())
    srv = getattr(mgr, "_servers", {}).get(key)
    proc = getattr(srv, "_p", None)
    if srv is not None and (proc is None or proc.poll() is not None):
        log.warning("Milvus Lite server for %s exited (code %s); it will be restarted",
                    key, None if proc is None else proc.returncode)
        mgr.release_server(key)


def _refuse_lite_file_in_use(uri: str) -> None:
    """ConfigError if another process holds the Milvus Lite file of ``uri``. milvus-lite logs an
    ERROR and pymilvus' next attempt then starts a second server on the same file (seen with
    milvus-lite 2.5.1): two writers on one file. Probes the lock milvus-lite itself takes."""
    import fcntl

    try:
        from milvus_lite.server_manager import server_manager_instance as mgr
    except ImportError:  # pragma: no cover - milvus-lite not installed
        return
    db = Path(uri).absolute().resolve()
    if str(db) in getattr(mgr, "_servers", {}):
        return  # this process runs the server already
    lock = db.parent / f".{db.name}.lock"
    if not lock.exists():
        return
    with open(lock, "a") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"Milvus Lite file {uri} is open in another process (a running "
                              "`serve`?): stop it first, or use a Milvus server (--milvus-uri "
                              "http://HOST:19530)") from None
        fcntl.lockf(fh, fcntl.LOCK_UN)


def _probe_tcp(uri: str, timeout: float) -> None:
    """ConnectionRefusedError / OSError at once if nothing accepts TCP connections at ``uri``."""
    u = urlparse(uri if "://" in uri else f"tcp://{uri}")
    if u.hostname:  # the same default ports as pymilvus
        port = u.port or (443 if u.scheme == "https" else 19530)
        with socket.create_connection((u.hostname, port), timeout=min(timeout, 2.0)):
            pass


class MilvusConnection:
    """A pymilvus client that reconnects by itself: a connection failure drops the client (:meth:`_reset`) and the next
    call creates a new one (bounded by the caller's timeout), reloading the opened collection;
    an exited embedded Milvus Lite server is restarted then."""

    def __init__(self, uri: str = mr.DEFAULT_URI, collection: str = mr.DEFAULT_COLLECTION, *,
                 token: str | None = None, timeout: float = 10.0, attempts: int = 3,
                 client_factory: Callable[..., Any] | None = None) -> None:
        self.uri = uri
        self.collection = mr.check_collection_name(collection)  # a collection name or an alias
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()  # guards (re)connecting
        self._connect_failed_at = float("-inf")  # monotonic time of the last failed connect
        self._load_on_connect: str | None = None  # a new client (server) must load this again
        self._search_kw: dict[str, Any] = {}
        self.real = False  # a pymilvus client (not a test fake): the raw search path is usable

    # ---- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], Any], attempts: int | None = None,
              timeout: float | None = None) -> Any:
        """Run ``fn`` with retries on transient errors, within ``timeout`` seconds in total if
        given; connection failures -> ServiceUnavailable. Every transient failure drops the
        client, so the next attempt (or call) reconnects."""
        stop = stop_after_attempt(attempts or self.attempts)
        if timeout is not None:
            stop = stop | stop_before_delay(timeout)
        try:
            for attempt in Retrying(stop=stop, wait=wait_exponential(multiplier=0.05, max=1.0),
                                    retry=retry_if_exception(_is_transient), reraise=True):
                with attempt:
                    used = self._client
                    try:
                        return fn()
                    except Exception as exc:
                        if _is_transient(exc):
                            self._reset(used)
                        raise
        except LongRetrieverError:
            raise
        except RetryError as exc:  # pragma: no cover - reraise=True makes this rare
            raise ServiceUnavailable(f"Milvus {what} failed at {self.uri}: {exc}") from exc
        except Exception as exc:
            from pymilvus.exceptions import MilvusException

            if _is_transient(exc) or isinstance(exc, MilvusException):
                # our requests are built from validated inputs: any other Milvus error is the
                # server's (e.g. a Lite server killed mid-call) -> UNAVAILABLE, reconnect next time
                if not _is_transient(exc):
                    self._reset(self._client)
                raise ServiceUnavailable(f"Milvus {what} failed at {self.uri}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            raise

    def _reset(self, used: Any) -> None:
        """Drop ``used`` if it is still the current client (another thread may have replaced it)."""
        with self._lock:
            if used is None or self._client is not used:
                return
            self._client = None
        try:
            used.close()  # removes pymilvus' shared connection for this URI, so a new one is made
        except Exception:  # noqa: BLE001 - the connection is already broken
            pass

    @property
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        return self._call("connect", lambda: self._connected(None))

    def _connected(self, timeout: float | None) -> Any:
        """The current client, (re)connecting first if needed within ``timeout`` seconds.
        Threads that queued behind a failed reconnect fail at once instead of retrying it."""
        c = self._client
        if c is not None:
            return c
        t0 = time.monotonic()
        wait = self.timeout if timeout is None else max(0.05, min(self.timeout, timeout))
        if not self._lock.acquire(timeout=wait):
            raise ServiceUnavailable(f"cannot connect to Milvus at {self.uri}: reconnect in progress")
        try:
            if self._client is not None:
                return self._client
            if self._connect_failed_at >= t0:  # failed while this thread waited for the lock
                raise ServiceUnavailable(f"cannot connect to Milvus at {self.uri}: reconnect just failed")
            wait = max(0.05, wait - (time.monotonic() - t0))

            def connect() -> Any:
                if self._factory is not None:
                    return self._factory(self.uri)
                from pymilvus import MilvusClient

                if mr.is_lite_uri(self.uri):
                    _release_dead_lite_server(self.uri)
                    _refuse_lite_file_in_use(self.uri)
                else:  # fail fast when nothing listens instead of waiting out the timeout
                    _probe_tcp(self.uri, wait)
                # a private pymilvus connection alias: by default clients of one URI share a
                # connection, and closing one (e.g. on reconnect) would break the others
                kw: dict[str, Any] = {"timeout": wait, "alias": f"longretriever-{uuid.uuid4().hex}"}
                if self.token:
                    kw["token"] = self.token
                return MilvusClient(self.uri, **kw)

            try:
                c = connect()
                real = type(c).__module__.startswith("pymilvus")
                if self._load_on_connect:  # a new server process may not have the collection loaded
                    c.load_collection(self._load_on_connect, **({"timeout": wait} if real else {}))
            except Exception as exc:  # pymilvus raises assorted types when nothing listens
                self._connect_failed_at = time.monotonic()
                if isinstance(exc, LongRetrieverError):
                    raise
                try:
                    if c is not None:
                        c.close()
                except Exception:  # noqa: BLE001
                    pass
                raise ServiceUnavailable(f"cannot connect to Milvus at {self.uri}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            # pymilvus retries UNAVAILABLE up to 75 times (minutes) unless told otherwise; the
            # retries here are bounded by the request deadline instead.
            self._search_kw = {"retry_times": 0} if real else {}
            self.real = real
            self._client = c
            return c
        finally:
            self._lock.release()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def __enter__(self) -> "MilvusConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- search -------------------------------------------------------------------------------
    def search_arrays(self, collection: str, vectors: Sequence[np.ndarray], limit: int, *,
                      partition: str | None, expr: str, params: dict[str, Any],
                      timeout: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """One search request for ``len(vectors)`` query vectors; per vector (ids int64, scores
        float32) in Milvus' order. A pymilvus client builds the request with pymilvus' own
        ``Prepare`` and reads the reply's flat id / score arrays (MilvusClient.search builds a
        dict per hit, ~10 us each, 1600 per 8-context query); anything else (the test fakes)
        goes through ``client.search``."""
        c = self._connected(timeout)
        if self._raw(c):
            req = self._raw_request(collection, vectors, limit, partition, expr, params)
            return self._raw_reply(c._get_connection()._stub.Search(req, timeout=timeout), len(vectors))
        parts = [partition] if partition else None
        kw = {"partition_names": parts} if parts else {}
        res = c.search(collection, data=[np.asarray(v, np.float32).tolist() for v in vectors],
                       anns_field=mr.VECTOR_FIELD, limit=limit, filter=expr, search_params=params,
                       output_fields=[], timeout=timeout, **kw, **self._search_kw)
        return [mr.hits_arrays(h) for h in res]

    def start_search(self, collection: str, vectors: Sequence[np.ndarray], limit: int, *,
                     partition: str | None, expr: str, params: dict[str, Any], timeout: float | None,
                     submit: Callable[[Callable[[], Any]], Any]) -> "SearchCall":
        """:meth:`search_arrays` without blocking: a pymilvus client sends the request as a
        gRPC future (no thread per search: measured here 5 ms of Python CPU per 7-context query
        instead of 9.4 with a thread pool, p50 13-15 ms instead of 18-19); otherwise (not
        connected yet, test fakes) ``submit`` runs the blocking call (a thread pool)."""
        def blocking(timeout: float | None = timeout) -> list[tuple[np.ndarray, np.ndarray]]:
            return self.search_arrays(collection, vectors, limit, partition=partition, expr=expr,
                                      params=params, timeout=timeout)

        first: Any = None
        finish: Callable[[Any], list[tuple[np.ndarray, np.ndarray]]] = lambda f: f.result()
        try:
            c = self._client
            if c is not None and self._raw(c):
                req = self._raw_request(collection, vectors, limit, partition, expr, params)
                first = c._get_connection()._stub.Search.future(req, timeout=timeout)
                finish = lambda f: self._raw_reply(f.result(), len(vectors))  # noqa: E731
            else:
                first = submit(blocking)
        except Exception:  # noqa: BLE001 - e.g. a channel closed under us: the retry path reports it
            first = None
        return SearchCall(self, first, finish, blocking, timeout)

    def _raw(self, c: Any) -> bool:
        return self.real and hasattr(c, "_get_connection")

    @staticmethod
    def _raw_request(collection: str, vectors: Sequence[np.ndarray], limit: int, partition: str | None,
                     expr: str, params: dict[str, Any]) -> Any:
        from pymilvus.client.prepare import Prepare

        data = [np.asarray(v, np.float32).tolist() for v in vectors]
        return Prepare.search_requests_with_expr(collection, data, mr.VECTOR_FIELD, params, limit, expr,
                                                 [partition] if partition else None, [], -1,
                                                 consistency_level=mr.CONSISTENCY)

    @staticmethod
    def _raw_reply(res: Any, nq: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from pymilvus.client.utils import check_status

        check_status(res.status)
        r = res.results
        return mr.split_flat(r.topks, r.ids.int_id.data, r.scores, nq)


class SearchCall:
    """A search request in flight (:meth:`MilvusConnection.start_search`). :meth:`result`
    goes through the connection's retry path: a first attempt that failed in transit is
    retried once (blocking, in the caller's thread) within what is left of the deadline,
    errors mapped as for every call."""

    def __init__(self, conn: MilvusConnection, first: Any, finish: Callable[[Any], Any],
                 blocking: Callable[[float | None], Any], timeout: float | None) -> None:
        self._conn, self._first, self._finish = conn, first, finish
        self._blocking, self._timeout = blocking, timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        if self._first is None:
            fn()
        else:
            self._first.add_done_callback(lambda _f: fn())

    def result(self) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._first is None:
            return self._conn._call("search", self._blocking, attempts=2, timeout=self._timeout)
        used = self._conn._client
        try:  # the common case, without building a retry loop per search
            return self._finish(self._first)
        except Exception as exc:  # noqa: BLE001 - below: retried, or mapped like any call
            first_error = exc
        left = None if self._deadline is None else self._deadline - time.monotonic()
        if not _is_transient(first_error) or (left is not None and left <= 0.01):
            def fail() -> Any:
                raise first_error
            return self._conn._call("search", fail, attempts=1)
        self._conn._reset(used)
        return self._conn._call("search", lambda: self._blocking(left), attempts=1, timeout=left)
