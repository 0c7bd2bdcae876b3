"""Pure Milvus request building and result parsing (no I/O, unit-testable).

Schema: primary key = raw item id, an int64 ``context`` scalar field, a float vector ``vec``
(inner product; item vectors are L2-normalised). The bundle version is stored in the
collection description (Milvus Lite 2.5.1 does not implement collection properties).

Layouts (chosen by measurement, docs/milvus.md):

* ``partition`` (a Milvus server): one partition ``c<id>`` per context, a per-context search
  names its partition; each partition has its own index, so HNSW keeps its recall (a filter
  on a shared HNSW graph does not). Collections are versioned (``<alias>__<digest>``) and
  served through an alias, so a new bundle is switched in atomically.
* ``filter`` (Milvus Lite, which has no partitions nor aliases): one collection,
  ``filter="context == c"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from longretriever.core.errors import BundleError, ConfigError
from longretriever.core.multicontext import Candidate, candidates

DEFAULT_COLLECTION = "longretriever_items"
DEFAULT_URI = "./milvus.db"
PK_FIELD = "id"
CONTEXT_FIELD = "context"
VECTOR_FIELD = "vec"
METRIC = "IP"
MAX_TOPK = 16_384  # Milvus limit on `limit` (topk) per search
INDEX_KINDS = ("flat", "hnsw", "ivf")
LAYOUTS = ("partition", "filter")
# Serving reads a collection that was fully written, flushed, indexed and loaded before it
# became visible (build-before-return, then the alias switch), so no search needs to wait for
# newer writes: Strong costs a time tick (~200 ms on 2.3.5) per search, Bounded up to 5 s of
# staleness that cannot occur here. Checks right after writing use Strong explicitly.
CONSISTENCY = "Eventually"
BUNDLE_PATH_PROPERTY = "longretriever.bundle_path"  # collection property: where its bundle was read from
HNSW_M = 32  # graph degree (docs/milvus.md: M=16 vs 32 at 1M items)
HNSW_ROWS_PER_EF = 160  # default ef = rows of the partition / 160 (1M items in 8 contexts: 782)
MAX_HNSW_EF = 32_768  # Milvus' upper bound for ef
DEFAULT_HNSW_EF = 400  # recall@200 0.976 per partition on the measurement; see docs/milvus.md
_DESC_PREFIX = "longretriever items; bundle_version="
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True, slots=True)
class ContextSearch:
    """One per-context search: the query vector, the filter and how many hits to fetch."""

    context: int
    vector: np.ndarray  # float32 [d]
    limit: int
    filter: str


def check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ConfigError(f"invalid Milvus collection name {name!r} (letters, digits, _; not starting with a digit)")
    return name


def is_lite_uri(uri: str) -> bool:
    """A Milvus Lite database file (pymilvus starts an embedded server process for it); a URI
    with a scheme (``http://host:19530``, ...) or a ``unix:`` socket is a server."""
    return "://" not in uri and not uri.startswith("unix:")


def description_for(version: str) -> str:
    if not version:
        raise BundleError("bundle version is empty")
    return _DESC_PREFIX + version


def version_from_description(desc: str | None) -> str | None:
    if desc and desc.startswith(_DESC_PREFIX):
        return desc[len(_DESC_PREFIX):]
    return None


def check_version(desc: str | None, expected: str, collection: str) -> None:
    """Refuse to serve a collection indexed from another bundle."""
    check_found_version(version_from_description(desc), expected, collection, desc)


def check_found_version(found: str | None, expected: str, collection: str, desc: str | None = None) -> None:
    if found is None:
        raise BundleError(f"collection {collection!r} carries no bundle version (description {desc!r}); "
                          f"re-run `longretriever index`")
    if found != expected:
        raise BundleError(f"collection {collection!r} holds bundle version {found!r}, the loaded bundle is "
                          f"{expected!r}; re-run `longretriever index` with this bundle")


def index_spec(kind: str, n_items: int = 0) -> dict[str, Any]:
    """``add_index`` keyword arguments for ``flat`` | ``hnsw`` | ``ivf``."""
    kind = kind.lower()
    if kind == "flat":
        return {"index_type": "FLAT", "metric_type": METRIC, "params": {}}
    if kind == "hnsw":
        # M=32: at 1M items (125k per partition) M=16 needed ef ~1,570 for recall 0.99, M=32
        # reaches 0.997 at ef 800 with a lower p99, builds as fast here, +130 MB server RSS
        return {"index_type": "HNSW", "metric_type": METRIC, "params": {"M": HNSW_M, "efConstruction": 200}}
    if kind == "ivf":
        nlist = int(min(4096, max(16, 4 * np.sqrt(max(n_items, 1)))))
        return {"index_type": "IVF_FLAT", "metric_type": METRIC, "params": {"nlist": nlist}}
    raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")


def default_ef(rows: int = 0) -> int:
    """HNSW ``ef`` when none is given: at a fixed ``ef`` recall falls as a partition grows
    (measured, top-200 per context of 8: M=16, ef 400 gives recall 0.99 at 12.5k rows per
    partition but 0.84 at 125k; M=32 gives 0.97 at ef 400 and 0.997 at ef 800 there), so it
    grows with the partition's rows -- ``max(DEFAULT_HNSW_EF, rows / HNSW_ROWS_PER_EF)`` --
    up to Milvus' ceiling."""
    return int(min(MAX_HNSW_EF, max(DEFAULT_HNSW_EF, -(-int(rows) // HNSW_ROWS_PER_EF))))


def search_params(index_type: str, limit: int, ef: int | None = None, rows: int = 0) -> dict[str, Any]:
    """Search parameters for the index type found on the collection (HNSW: ``ef`` -- given,
    else :func:`default_ef` of the searched partition's ``rows`` -- and at least the limit,
    which Milvus requires)."""
    t = (index_type or "FLAT").upper()
    if t == "HNSW":
        return {"metric_type": METRIC, "params": {"ef": max(limit, ef or default_ef(rows))}}
    if t == "IVF_FLAT":
        return {"metric_type": METRIC, "params": {"nprobe": 32}}
    return {"metric_type": METRIC, "params": {}}


def context_filter(context: int) -> str:
    c = int(context)
    if c < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    return f"{CONTEXT_FIELD} == {c}"


def partition_name(context: int) -> str:
    c = int(context)
    if c < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    return f"c{c}"


def context_of_partition(name: str) -> int | None:
    return int(name[1:]) if name.startswith("c") and name[1:].isdigit() else None


def versioned_name(alias: str, version: str) -> str:
    """The collection that holds bundle ``version`` behind ``alias`` (names allow [A-Za-z0-9_])."""
    import hashlib

    return f"{check_collection_name(alias)}__{hashlib.sha1(version.encode()).hexdigest()[:12]}"


def is_versioned_of(name: str, alias: str) -> bool:
    head, sep, tail = name.rpartition("__")
    return bool(sep) and head == alias and len(tail) == 12


def build_context_searches(vectors: Mapping[int, np.ndarray], topk: Mapping[int, int],
                           context_sizes: Mapping[int, int] | None = None) -> list[ContextSearch]:
    """One search per context with topk > 0, in ascending context order. ``limit`` is capped by
    the Milvus maximum and (when known) by the number of items in that context."""
    out = []
    for c in sorted(topk):
        n = int(topk[c])
        if context_sizes is not None:
            n = min(n, int(context_sizes.get(c, 0)))
        if n <= 0:
            continue
        if c not in vectors:
            raise KeyError(f"no query vector for context {c}")
        v = np.asarray(vectors[c], dtype=np.float32).reshape(-1)
        out.append(ContextSearch(int(c), v, min(n, MAX_TOPK), context_filter(c)))
    return out


def split_flat(topks: Sequence[int], ids: Sequence[int], scores: Sequence[float], nq: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """A search reply's flat arrays (``topks[q]`` hits for query ``q``, concatenated) -> per
    query (ids int64, scores float32)."""
    ids_a = np.asarray(ids, np.int64)
    sc_a = np.asarray(scores, np.float32)
    counts = np.asarray(topks, np.int64) if len(topks) else np.zeros(nq, np.int64)
    if counts.size != nq or int(counts.sum()) != ids_a.size or ids_a.size != sc_a.size:
        raise ValueError(f"malformed search reply: {counts.size} topks for {nq} queries, "
                         f"{ids_a.size} ids, {sc_a.size} scores")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [(ids_a[bounds[q]:bounds[q + 1]], sc_a[bounds[q]:bounds[q + 1]]) for q in range(nq)]


def hits_arrays(hits: Any) -> tuple[np.ndarray, np.ndarray]:
    """One query's hits from ``client.search`` -> (ids, scores): pymilvus' ``Hits`` carry flat
    ``ids`` / ``distances``; a plain list of dicts (the test fakes) is read hit by hit."""
    if hasattr(hits, "ids") and hasattr(hits, "distances"):
        return np.asarray(hits.ids, np.int64), np.asarray(hits.distances, np.float32)
    ids = [h["id"] if isinstance(h, Mapping) else h.id for h in hits]
    sc = [h["distance"] if isinstance(h, Mapping) else h.distance for h in hits]
    return np.asarray(ids, np.int64), np.asarray(sc, np.float32)


def to_candidates(ids: np.ndarray, scores: np.ndarray, context: int, limit: int | None = None
                  ) -> list[Candidate]:
    """Candidates best first (score descending, item id ascending on ties; IP distance is a
    similarity), at most ``limit`` (a coalesced search may have asked for more)."""
    order = np.lexsort((ids, -scores.astype(np.float64)))
    if limit is not None:
        order = order[:limit]
    return candidates(ids[order], scores[order], context)


def parse_hits(hits: Iterable[Any], context: int) -> list[Candidate]:
    """Milvus hits (dicts with ``id`` and ``distance``, or Hit objects) -> Candidates, best first
    (score descending, item id ascending on ties; IP distance is a similarity)."""
    out = []
    for h in hits:
        if isinstance(h, Mapping):
            item, score = h["id"], h["distance"]
        else:
            item, score = h.id, h.distance
        out.append(Candidate(int(item), float(score), int(context)))
    out.sort(key=lambda c: (-c.score, c.item_id))
    return out


def iter_batches(n: int, batch: int) -> Iterator[tuple[int, int]]:
    if batch <= 0:
        raise ValueError("batch must be > 0")
    for lo in range(0, n, batch):
        yield lo, min(n, lo + batch)


def rows(ids: np.ndarray, contexts: np.ndarray, vectors: np.ndarray) -> list[dict[str, Any]]:
    """Upsert rows for one batch: primary key = raw item id (so re-indexing is idempotent)."""
    ids = np.asarray(ids, np.int64)
    contexts = np.asarray(contexts)
    vectors = np.asarray(vectors, np.float32)
    if not (ids.shape[0] == contexts.shape[0] == vectors.shape[0]):
        raise ValueError("ids, contexts and vectors must have the same length")
    return [{PK_FIELD: int(i), CONTEXT_FIELD: int(c), VECTOR_FIELD: v}
            for i, c, v in zip(ids.tolist(), contexts.tolist(), vectors)]
