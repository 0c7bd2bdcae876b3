"""Prometheus metrics of the stream worker (module-level, as prometheus_client intends)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("longretriever_stream_events_total", "Events taken from Kafka, by outcome",
                 ["outcome"])  # applied | duplicate | dlq | late | evicted
MESSAGES = Counter("longretriever_stream_messages_total", "Kafka messages consumed")
LAG = Gauge("longretriever_stream_consumer_lag", "End offset minus next offset", ["partition"])
BATCH_SECONDS = Histogram("longretriever_stream_batch_seconds", "Decode + apply + commit per batch",
                          buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3))
ASSIGNED = Gauge("longretriever_stream_assigned_partitions", "Partitions owned by this worker")
RESTORES = Counter("longretriever_stream_restores_total", "Partition restores on assignment, by how",
                   ["how"])  # changelog | delta | source_fallback
RESTORE_SECONDS = Histogram("longretriever_stream_restore_seconds", "Restore of one partition from the changelog",
                            buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100))
STANDBY_RECORDS = Counter("longretriever_stream_standby_records_total", "Changelog records applied by the standby")
