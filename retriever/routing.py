"""Which serving process owns a user: Kafka's consumer group is the source of truth.

Each serving process joins the stream consumer group with ``client_id = "lr@<grpc address>"``.
A user's events live in partition ``murmur2(key) % partitions`` (Kafka's default partitioner,
the same in kafka-python, aiokafka and the Java client), and the group's current assignment
says which member consumes that partition, hence which process holds that user's state. No
registry of our own: membership, rebalance and liveness are Kafka's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from kafka.partitioner.default import murmur2

from longretriever.core.codec import encode_key

log = logging.getLogger(__name__)
PREFIX = "lr@"
WARN_AFTER_S = 10.0  # refresh failures this long are worth a warning
STARTUP_S = 60.0  # ... and this long before the first success (group and topic being created)


def client_id_for(address: str) -> str:
    return PREFIX + address


def partition_for(user_id: int, partitions: int) -> int:
    """Kafka's default partitioner on our message key (toPositive(murmur2(key)) % n)."""
    return (murmur2(encode_key(user_id)) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class OwnershipMap:
    partitions: int
    owners: dict[int, str]  # partition -> gRPC address of the member that consumes it

    def owner_of(self, user_id: int) -> str | None:
        if self.partitions <= 0:
            return None
        return self.owners.get(partition_for(user_id, self.partitions))


def ownership_from_group(description, topic: str, partitions: int) -> OwnershipMap:
    """Pure: build the map from a kafka-python ``GroupInformation``."""
    owners: dict[int, str] = {}
    for m in getattr(description, "members", []) or []:
        if not m.client_id.startswith(PREFIX) or m.member_assignment is None:
            continue
        for t, parts in m.member_assignment.assignment:
            if t == topic:
                for p in parts:
                    owners[int(p)] = m.client_id[len(PREFIX):]
    return OwnershipMap(partitions, owners)


class Router:
    """Keeps an :class:`OwnershipMap` fresh (background thread, ``interval`` seconds)."""

    def __init__(self, bootstrap: str, group: str, topic: str, self_address: str,
                 interval: float = 1.0, security: dict | None = None) -> None:
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.self_address = self_address
        self.interval = interval
        self.security = security or {}
        self.map = OwnershipMap(0, {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin = None

    def start(self) -> "Router":
        self._thread = threading.Thread(target=self._loop, name="ownership", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._admin is not None:
            self._admin.close()

    def remote_owner(self, user_id: int) -> str | None:
        """The address to forward to, or None when this process owns the user (or nobody
        is known to: then this process answers from what it has)."""
        owner = self.map.owner_of(user_id)
        return owner if owner and owner != self.self_address else None

    def refresh(self) -> OwnershipMap:
        from kafka import KafkaAdminClient

        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security)
        desc = self._admin.describe_consumer_groups([self.group])[0]
        topics = self._admin.describe_topics([self.topic])
        parts = len(topics[0]["partitions"]) if topics else 0
        self.map = ownership_from_group(desc, self.topic, parts)
        return self.map

    def _loop(self) -> None:
        """Refresh every ``interval`` s, keeping the last known map on failure. Failures are
        retried quietly (DEBUG): at start-up the group and the topic may not exist yet, and a
        broker blip passes. One WARNING once they have lasted ``WARN_AFTER_S`` (``STARTUP_S``
        before the first success), and one line when refreshing works again."""
        ok_once, failing_since, warned = False, None, False
        while not self._stop.is_set():
            try:
                self.refresh()
                if warned:
                    log.warning("ownership refresh works again")
                ok_once, failing_since, warned = True, None, False
            except Exception as exc:  # noqa: BLE001 - keep the last known map
                now = time.monotonic()
                failing_since = failing_since or now
                if not warned and now - failing_since >= (WARN_AFTER_S if ok_once else STARTUP_S):
                    log.warning("ownership refresh failing for %.0f s (keeping the last known "
                                "owners, retrying): %s", now - failing_since, exc)
                    warned = True
                else:
                    log.debug("ownership refresh failed: %s", exc)
                self._close_admin()
            self._stop.wait(self.interval)

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001 - it is being dropped because it failed
                pass
