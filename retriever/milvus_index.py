"""Milvus I/O: build / upsert the item collection from a bundle and run per-context searches.

The URI defaults to a Milvus Lite file (``./milvus.db``); ``http://host:19530`` talks to a
Milvus server with no code change (pymilvus picks the transport from the URI). Request
building and result parsing live in :mod:`longretriever.retriever.milvus_requests` (pure).

Notes measured on Milvus Lite 2.5.1 (docs/milvus.md): partitions and collection properties
are UNIMPLEMENTED, filters on a partition-key field fail, HNSW is refused ("local mode only
supports FLAT IVF_FLAT AUTOINDEX"). So: one collection + ``context == c`` filter, version in
the collection description, ``--index hnsw`` only against a Milvus server.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np
from tenacity import (RetryError, Retrying, retry_if_exception, stop_after_attempt,
                      stop_before_delay, wait_exponential)

from longretriever.core.errors import BundleError, ConfigError, LongRetrieverError, ServiceUnavailable
from longretriever.core.multicontext import Candidate
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
    try:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
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


class MilvusIndex:
    """Item vectors of one bundle in one Milvus collection.

    Reconnects by itself: a connection failure drops the client (:meth:`_reset`) and the next
    call creates a new one (bounded by the caller's timeout), reloading the opened collection;
    an exited embedded Milvus Lite server is restarted then."""

    def __init__(self, uri: str = mr.DEFAULT_URI, collection: str = mr.DEFAULT_COLLECTION, *,
                 token: str | None = None, timeout: float = 10.0, max_workers: int = 8,
                 attempts: int = 3, client_factory: Callable[..., Any] | None = None) -> None:
        self.uri = uri
        self.collection = mr.check_collection_name(collection)
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self._factory = client_factory
        self._client: Any = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="milvus")
        self._index_type = "FLAT"
        self._sizes: dict[int, int] | None = None
        self._lock = threading.Lock()  # guards (re)connecting
        self._connect_failed_at = float("-inf")  # monotonic time of the last failed connect
        self._opened = False  # open() succeeded: a new client must load the collection again
        self._search_kw: dict[str, Any] = {}

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
                if self._opened:  # a new server process may not have the collection loaded
                    c.load_collection(self.collection, **({"timeout": wait} if real else {}))
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
            self._client = c
            return c
        finally:
            self._lock.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def __enter__(self) -> "MilvusIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- metadata -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self._call("has_collection", lambda: self.client.has_collection(self.collection)))

    def stored_version(self) -> str | None:
        if not self.exists():
            return None
        desc = self._call("describe", lambda: self.client.describe_collection(self.collection))
        return mr.version_from_description(desc.get("description"))

    def count(self) -> int:
        res = self._call("count", lambda: self.client.query(self.collection, filter="",
                                                            output_fields=["count(*)"]))
        return int(res[0]["count(*)"]) if res else 0

    def index_type(self) -> str:
        try:
            info = self._call("describe_index", lambda: self.client.describe_index(
                self.collection, mr.VECTOR_FIELD))
            return str((info or {}).get("index_type") or "FLAT").upper()
        except ServiceUnavailable:
            raise
        except Exception:  # noqa: BLE001 - no index yet
            return "FLAT"

    # ---- build --------------------------------------------------------------------------------
    def build(self, bundle: Any, index: str = "flat", batch: int = 5000, progress: bool = True) -> dict[str, Any]:
        """Create (or reuse) the collection and upsert every item of ``bundle`` in batches.

        Idempotent: rows are upserted by primary key = raw item id, so re-running with the same
        bundle leaves the same rows. A collection holding another bundle version (or another
        dimension) is dropped and rebuilt, so no stale items survive."""
        from pymilvus import DataType, MilvusClient

        spec = mr.index_spec(index, len(bundle.item_ids))
        ids = np.asarray(bundle.item_ids, np.int64)
        ctx = np.asarray(bundle.item_contexts)
        vec = np.asarray(bundle.item_embeddings, np.float32)
        if vec.ndim != 2 or vec.shape[0] != ids.size or ctx.size != ids.size:
            raise BundleError(f"bundle arrays disagree: ids {ids.shape}, contexts {ctx.shape}, vectors {vec.shape}")
        if np.unique(ids).size != ids.size:
            raise BundleError("bundle item ids are not unique")
        dim = int(vec.shape[1])
        c = self.client
        t0 = time.perf_counter()
        recreated = False
        if self.exists():
            desc = self._call("describe", lambda: c.describe_collection(self.collection))
            old = mr.version_from_description(desc.get("description"))
            old_dim = next((int(f.get("params", {}).get("dim", 0)) for f in desc.get("fields", [])
                            if f.get("name") == mr.VECTOR_FIELD), 0)
            if old != bundle.version or old_dim != dim:
                log.warning("collection %s holds bundle %r dim %s; rebuilding for %r dim %s",
                            self.collection, old, old_dim, bundle.version, dim)
                self._call("drop", lambda: c.drop_collection(self.collection))
            elif self.index_type() != spec["index_type"]:
                log.warning("collection %s has index %s; switching to %s", self.collection,
                            self.index_type(), spec["index_type"])
                self._call("release", lambda: c.release_collection(self.collection))
                self._call("drop_index", lambda: c.drop_index(self.collection, mr.VECTOR_FIELD))
                ip = c.prepare_index_params()
                ip.add_index(mr.VECTOR_FIELD, index_name=mr.VECTOR_FIELD, **spec)
                self._call("create_index", lambda: c.create_index(self.collection, ip))
        if not self.exists():
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description=mr.description_for(bundle.version))
            schema.add_field(mr.PK_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(mr.CONTEXT_FIELD, DataType.INT64)
            schema.add_field(mr.VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
            ip = c.prepare_index_params()
            ip.add_index(mr.VECTOR_FIELD, index_name=mr.VECTOR_FIELD, **spec)
            try:
                self._call("create_collection", lambda: c.create_collection(
                    self.collection, schema=schema, index_params=ip))
            except ServiceUnavailable:
                raise
            except Exception as exc:
                if "index type" in str(exc).lower():
                    raise ConfigError(f"index {index!r} is not supported by this Milvus "
                                      f"({self.uri}): {str(exc)[:200]}") from exc
                raise
            recreated = True
        from tqdm import tqdm

        bar = tqdm(total=ids.size, desc=f"upsert {self.collection}", unit="item", disable=not progress)
        for lo, hi in mr.iter_batches(ids.size, batch):
            data = mr.rows(ids[lo:hi], ctx[lo:hi], vec[lo:hi])
            self._call("upsert", lambda data=data: c.upsert(self.collection, data))
            bar.update(hi - lo)
        bar.close()
        self._call("flush", lambda: c.flush(self.collection))
        self._call("load", lambda: c.load_collection(self.collection))
        n = self.count()
        return {"collection": self.collection, "uri": self.uri, "version": bundle.version, "items": n,
                "dim": dim, "index": spec["index_type"], "created": recreated,
                "seconds": round(time.perf_counter() - t0, 2)}

    # ---- serve --------------------------------------------------------------------------------
    def open(self, expected_version: str, expected_items: int | None = None,
             context_sizes: Mapping[int, int] | None = None) -> None:
        """Check the collection matches the serving bundle (BundleError if not) and load it."""
        if not self.exists():
            raise BundleError(f"collection {self.collection!r} not found at {self.uri}; "
                              f"run `longretriever index` first")
        desc = self._call("describe", lambda: self.client.describe_collection(self.collection))
        mr.check_version(desc.get("description"), expected_version, self.collection)
        self._call("load", lambda: self.client.load_collection(self.collection))
        if expected_items is not None:
            n = self.count()
            if n != expected_items:
                raise BundleError(f"collection {self.collection!r} has {n} items, the bundle "
                                  f"{expected_items}: indexing did not finish; re-run `longretriever index`")
        self._index_type = self.index_type()
        self._sizes = dict(context_sizes) if context_sizes is not None else None
        self._opened = True

    def _search_one(self, s: mr.ContextSearch, timeout: float | None) -> list[Candidate]:
        sp = mr.search_params(self._index_type, s.limit)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.01, deadline - time.monotonic())

        def search() -> Any:
            c = self._connected(left())
            return c.search(self.collection, data=[s.vector.tolist()], anns_field=mr.VECTOR_FIELD,
                            limit=s.limit, filter=s.filter, search_params=sp, output_fields=[],
                            timeout=left(), **self._search_kw)

        res = self._call("search", search, attempts=2, timeout=timeout)
        return mr.parse_hits(res[0] if res else [], s.context)

    def search_contexts(self, vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                        timeout: float | None = None) -> dict[int, list[Candidate]]:
        """Per-context exact(-enough) top-k, the per-context searches issued concurrently.
        Contexts with topk 0 (or no items) map to an empty list."""
        searches = mr.build_context_searches(vectors, topk, self._sizes)
        out: dict[int, list[Candidate]] = {int(c): [] for c in topk}
        if not searches:
            return out
        if len(searches) == 1:
            out[searches[0].context] = self._search_one(searches[0], timeout)
            return out
        futs = [(s.context, self._pool.submit(self._search_one, s, timeout)) for s in searches]
        for c, f in futs:
            out[c] = f.result()
        return out
