"""Milvus I/O: build / upsert the item collection from a bundle and run per-context searches.

The URI defaults to a Milvus Lite file (``./milvus.db``); ``http://host:19530`` talks to a
Milvus server with no code change (pymilvus picks the transport from the URI). Request
building and result parsing live in :mod:`retriever.milvus_requests` (pure).

Notes measured on Milvus Lite 2.5.1 (docs/milvus.md): partitions and collection properties
are UNIMPLEMENTED, filters on a partition-key field fail, HNSW is refused ("local mode only
supports FLAT IVF_FLAT AUTOINDEX"). So: one collection + ``context == c`` filter, version in
the collection description, ``--index hnsw`` only against a Milvus server.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import numpy as np
from tenacity import (RetryError, Retrying, retry_if_exception, stop_after_attempt,
                      wait_exponential)

from longretriever.errors import BundleError, ConfigError, LongRetrieverError, ServiceUnavailable
from longretriever.multicontext import Candidate
from retriever import milvus_requests as mr

log = logging.getLogger(__name__)


def _is_transient(exc: BaseException) -> bool:
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
        return any(s in text for s in ("unavailable", "fail connecting", "connection", "timeout",
                                      "deadline", "not ready"))
    return False


class MilvusIndex:
    """Item vectors of one bundle in one Milvus collection."""

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

    # ---- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], Any], attempts: int | None = None) -> Any:
        """Run ``fn`` with retries on transient errors; connection failures -> ServiceUnavailable."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(attempts or self.attempts),
                                    wait=wait_exponential(multiplier=0.05, max=1.0),
                                    retry=retry_if_exception(_is_transient), reraise=True):
                with attempt:
                    return fn()
        except LongRetrieverError:
            raise
        except RetryError as exc:  # pragma: no cover - reraise=True makes this rare
            raise ServiceUnavailable(f"Milvus {what} failed at {self.uri}: {exc}") from exc
        except Exception as exc:
            if _is_transient(exc):
                raise ServiceUnavailable(f"Milvus {what} failed at {self.uri}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            raise

    @property
    def client(self) -> Any:
        if self._client is None:
            def connect() -> Any:
                if self._factory is not None:
                    return self._factory(self.uri)
                from pymilvus import MilvusClient

                kw: dict[str, Any] = {"timeout": self.timeout}
                if self.token:
                    kw["token"] = self.token
                return MilvusClient(self.uri, **kw)

            try:
                self._client = self._call("connect", connect)
            except ServiceUnavailable:
                raise
            except Exception as exc:  # pymilvus raises assorted types when nothing listens
                raise ServiceUnavailable(f"cannot connect to Milvus at {self.uri}: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        return self._client

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

    def _search_one(self, s: mr.ContextSearch, timeout: float | None) -> list[Candidate]:
        sp = mr.search_params(self._index_type, s.limit)
        res = self._call("search", lambda: self.client.search(
            self.collection, data=[s.vector.tolist()], anns_field=mr.VECTOR_FIELD, limit=s.limit,
            filter=s.filter, search_params=sp, output_fields=[], timeout=timeout), attempts=2)
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
