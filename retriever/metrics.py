"""Prometheus metrics of the query path (module-level, as prometheus_client intends)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
STAGE_SECONDS = Histogram("longretriever_query_stage_seconds", "Retrieve latency by stage",
                          ["stage"], buckets=_BUCKETS)  # state | encode | milvus | merge | total
RPCS = Counter("longretriever_rpc_total", "RPCs by method and status code", ["method", "code"])
FALLBACKS = Counter("longretriever_query_fallback_total", "Retrieve answered with popular items")
REFRESH_SECONDS = Histogram("longretriever_refresh_seconds", "Event-driven vector refresh per batch",
                            buckets=_BUCKETS)
CACHE = Counter("longretriever_vector_cache_total", "Query vector cache lookups by outcome", ["outcome"])
REFRESHED = Counter("longretriever_refresh_rows_total", "Query vectors recomputed by the refresher")


def observe_timings(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000.0)
