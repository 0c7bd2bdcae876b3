"""Reliability harness for the stream worker: kill -9 loops, topic read-back, prefix ground
truth and a seeded corpus of malformed messages. Used by tests/integration/test_reliability_*.py
(see docs/reliability.md); nothing here is on the worker's hot path.

Everything is seeded (``random.Random``) so a failing run can be reproduced from its seed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import msgpack
import numpy as np

from stream.codec import DEFAULT_MAX_BATCH, MIN_TS_MS, Event, decode_columns, encode_batch, encode_event

# ---------------------------------------------------------------------------------------------
# Kafka helpers (kafka-python, blocking)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        return {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0, expect: int | None = None) -> list:
    """Every record of ``topic`` from the beginning up to its current end offsets (or until
    ``expect`` records have been read), ordered by (partition, offset)."""
    from kafka import KafkaConsumer, TopicPartition

    ends = end_offsets(bootstrap, topic)
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      max_partition_fetch_bytes=16 * 1_048_576, fetch_max_bytes=64 * 1_048_576)
    tps = [TopicPartition(topic, p) for p in ends]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(c.position(tp) >= ends[tp.partition] for tp in tps) and (
                    expect is None or len(out) >= expect):
                break
            for recs in c.poll(timeout_ms=500, max_records=10_000).values():
                out.extend(recs)
        else:
            raise TimeoutError(f"read {len(out)} records of {topic}; ends {ends}")
    finally:
        c.close()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


# ---------------------------------------------------------------------------------------------
# Ground truth of a log prefix


def prefix_events(records: list, watermark: dict[int, int] | None, now_ms: int) -> dict[int, set]:
    """user -> {(ts, item)} of every valid event in messages below ``watermark`` (partition ->
    next offset; None = all records). Valid per the codec; no late-event filtering (use this on
    logs that are in time order per user)."""
    users: dict[int, set] = {}
    for r in records:
        if watermark is not None and r.offset >= watermark.get(r.partition, 0):
            continue
        cols, _ = decode_columns(r.value, r.key, now_ms)
        for u, i, t in zip(cols.users, cols.items, cols.ts):
            users.setdefault(u, set()).add((t, i))
    return users


# ---------------------------------------------------------------------------------------------
# kill -9 loop around the real CLI worker


@dataclass
class KillPoint:
    delay_s: float  # time between the worker's "assigned" log line and SIGKILL
    start_to_assigned_s: float
    watermark: dict[int, int]
    counts: dict[int, int]  # user -> stored events right after the kill
    returncode: int | None
    kafka_committed: dict[int, int] = field(default_factory=dict)  # the group's informational commit


@dataclass
class KillSoak:
    """Start the worker as a subprocess, SIGKILL it after a random delay, repeat."""

    bootstrap: str
    topic: str
    state_dir: Path
    items: Path | None
    group: str
    seed: int = 0
    fresh_group_per_run: bool = False  # Kafka group offsets must not matter (see design doc)
    env: dict[str, str] = field(default_factory=dict)
    points: list[KillPoint] = field(default_factory=list)

    def command(self, run: int, until_caught_up: bool = False) -> list[str]:
        group = f"{self.group}-{run}" if self.fresh_group_per_run else self.group
        cmd = [sys.executable, "-m", "longretriever.cli", "stream", "--bootstrap", self.bootstrap,
               "--state-dir", str(self.state_dir), "--topic", self.topic, "--group-id", group]
        if self.items is not None:
            cmd += ["--items", str(self.items)]
        if until_caught_up:
            cmd.append("--until-caught-up")
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"LONGRETRIEVER_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        return env

    def kill_once(self, run: int, delay_s: float, assign_timeout: float = 90.0) -> KillPoint:
        t0 = time.monotonic()
        proc = subprocess.Popen(self.command(run), env=self._env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        assigned = threading.Event()
        tail: list[str] = []

        def pump() -> None:
            for raw in proc.stderr:  # type: ignore[union-attr]
                line = raw.decode(errors="replace")
                tail.append(line)
                del tail[:-40]
                if "stream.worker: assigned" in line:
                    assigned.set()

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            if not assigned.wait(assign_timeout):
                raise RuntimeError(f"worker never got partitions (rc={proc.poll()}):\n" + "".join(tail))
            t_assigned = time.monotonic() - t0
            time.sleep(delay_s)
            rc_before = proc.poll()
            if rc_before is None:
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None and not assigned.is_set():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            th.join(10)
        if rc_before is not None:
            raise RuntimeError(f"worker exited by itself with {rc_before}:\n" + "".join(tail))
        point = KillPoint(delay_s, t_assigned, *self._snapshot(), proc.returncode,
                          self._kafka_committed(run))
        self.points.append(point)
        return point

    def _kafka_committed(self, run: int) -> dict[int, int]:
        from kafka import KafkaAdminClient

        group = f"{self.group}-{run}" if self.fresh_group_per_run else self.group
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            got = admin.list_consumer_group_offsets(group)
            return {tp.partition: m.offset for tp, m in got.items() if tp.topic == self.topic}
        finally:
            admin.close()

    def _snapshot(self) -> tuple[dict[int, int], dict[int, int]]:
        from stream.state import StateStore

        # read-only: leave the crashed DB (and its WAL) exactly as the next run will find it
        store = StateStore(self.state_dir, read_only=True)
        try:
            counts = {u: sum(store.context_counts(u).values()) for u in store.users()}
            return store.watermark(), counts
        finally:
            store.close()

    def finish(self, run: int, timeout: float = 300.0) -> tuple[float, str]:
        """Run ``--until-caught-up`` to completion; returns (seconds, stdout)."""
        t0 = time.monotonic()
        out = subprocess.run(self.command(run, until_caught_up=True), env=self._env(),
                             capture_output=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"final run failed rc={out.returncode}: {out.stderr.decode()[-3000:]}")
        return time.monotonic() - t0, out.stdout.decode()


# ---------------------------------------------------------------------------------------------
# Malformed-message corpus


@dataclass
class Msg:
    key: bytes | None
    value: bytes
    kind: str
    bad: int  # DLQ records this message must produce (1 per bad message / bad element)
    valid: list[Event] = field(default_factory=list)  # events of it that must reach the state


def _m(user: Any, item: Any, ts: Any, **extra: Any) -> dict:
    d = {"user_id": user, "item_id": item, "ts": ts}
    d.update(extra)
    return d


class Corpus:
    """Seeded interleaving of valid events and malformed messages of many kinds.

    Valid events of a user have strictly increasing timestamps in production order, so none of
    them is late and none is a duplicate: every one must be in the state."""

    KINDS = ("truncated", "garbage", "wrong_type", "negative_id", "huge_id", "future_ts",
             "ancient_ts", "unknown_field", "bad_action", "bad_weight", "key_mismatch",
             "key_missing", "key_not_ascii", "key_huge_digits", "mixed_users", "empty_array",
             "not_map", "nested_array", "too_many_keys", "too_many_elements", "partial_batch",
             "oversize")

    def __init__(self, seed: int, users: int, now_ms: int, oversize_every: int = 700) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.now_ms = now_ms
        self.next_ts = {u: now_ms - 3 * 3600 * 1000 + u for u in range(users)}
        self.oversize_every = oversize_every
        self.n = 0

    def _valid(self, user: int) -> Event:
        self.next_ts[user] += self.rng.randint(1, 50)
        return Event(user, self.rng.randrange(1, 10_000), self.next_ts[user],
                     self.rng.choice([None, "click", "like"]))

    def valid_message(self) -> Msg:
        u = self.rng.randrange(self.users)
        if self.rng.random() < 0.5:
            e = self._valid(u)
            return Msg(str(u).encode(), encode_event(e), "valid", 0, [e])
        evs = [self._valid(u) for _ in range(self.rng.randint(1, 20))]
        return Msg(str(u).encode(), encode_batch(evs), "valid_batch", 0, evs)

    def malformed(self) -> Msg:
        self.n += 1
        if self.oversize_every and self.n % self.oversize_every == 0:
            return self._make("oversize")
        kind = self.rng.choice([k for k in self.KINDS if k != "oversize"])
        return self._make(kind)

    def _make(self, kind: str) -> Msg:
        r, u = self.rng, self.rng.randrange(self.users)
        key = str(u).encode()
        ts = self.now_ms - r.randrange(1, 10**7)
        packb = lambda o: msgpack.packb(o, use_bin_type=True)  # noqa: E731
        if kind == "truncated":
            full = encode_batch([Event(u, r.randrange(1, 10**6), ts + i) for i in range(r.randint(1, 5))])
            return Msg(key, full[:r.randrange(0, len(full))], kind, 1)
        if kind == "garbage":  # 0xc1 is never used by msgpack: always undecodable
            return Msg(key, b"\xc1" + r.randbytes(r.randrange(0, 200)), kind, 1)
        if kind == "wrong_type":
            field_, bad = r.choice([("item_id", "x"), ("item_id", 1.5), ("item_id", True),
                                    ("item_id", None), ("ts", str(ts)), ("ts", float(ts)),
                                    ("user_id", str(u)), ("user_id", False), ("item_id", [1]),
                                    ("ts", {"a": 1}), ("item_id", b"\x01")])
            m = _m(u, 1, ts)
            m[field_] = bad
            return Msg(key, packb(m), kind, 1)
        if kind == "negative_id":
            if r.random() < 0.5:
                return Msg(b"-" + key, packb(_m(-u - 1, 5, ts)), kind, 1)
            return Msg(key, packb(_m(u, -r.randrange(1, 2**63), ts)), kind, 1)
        if kind == "huge_id":
            big = r.choice([2**63, 2**64 - 1, 2**63 + r.randrange(1, 2**62)])
            if r.random() < 0.5:
                return Msg(str(big).encode(), packb(_m(big, 5, ts)), kind, 1)
            return Msg(key, packb(_m(u, big, ts)), kind, 1)
        if kind == "future_ts":
            return Msg(key, packb(_m(u, 5, self.now_ms + r.randrange(2, 10**4) * 86_400_000)), kind, 1)
        if kind == "ancient_ts":
            return Msg(key, packb(_m(u, 5, r.choice([0, -1, -2**63, MIN_TS_MS - 1, 10**9]))), kind, 1)
        if kind == "unknown_field":
            return Msg(key, packb(_m(u, 5, ts, **{r.choice(["x", "userid", "TS", "__class__"]): 1})), kind, 1)
        if kind == "bad_action":
            return Msg(key, packb(_m(u, 5, ts, action=r.choice(["", "a" * 33, 7, b"bin"]))), kind, 1)
        if kind == "bad_weight":
            return Msg(key, packb(_m(u, 5, ts, weight=r.choice([float("nan"), float("inf"), "1.0"]))), kind, 1)
        if kind == "key_mismatch":
            return Msg(str((u + 1) % self.users).encode(), packb(_m(u, 5, ts)), kind, 1)
        if kind == "key_missing":
            return Msg(None, packb(_m(u, 5, ts)), kind, 1)
        if kind == "key_not_ascii":
            return Msg(r.choice([b"\xff\xfe", "٣".encode(), b"user-1", b""]), packb(_m(u, 5, ts)), kind, 1)
        if kind == "key_huge_digits":  # beyond Python's int-from-str digit limit
            return Msg(b"1" * r.randrange(4301, 6000), packb(_m(u, 5, ts)), kind, 1)
        if kind == "mixed_users":  # key u, element of another user in the middle
            a, c = self._valid(u), self._valid(u)
            v = (u + 1 + r.randrange(self.users - 1)) % self.users
            return Msg(key, packb([a.to_map(), _m(v, 5, ts), c.to_map()]), kind, 1, [a, c])
        if kind == "empty_array":
            return Msg(key, packb([]), kind, 1)
        if kind == "not_map":
            return Msg(key, packb(r.choice([7, "event", None, 1.5, True, b"raw"])), kind, 1)
        if kind == "nested_array":
            return Msg(key, packb([[_m(u, 5, ts)]]), kind, 1)
        if kind == "too_many_keys":
            return Msg(key, packb({f"k{i}": i for i in range(17)}), kind, 1)
        if kind == "too_many_elements":
            return Msg(key, packb([_m(u, 5, ts)] * (DEFAULT_MAX_BATCH + 1)), kind, 1)
        if kind == "partial_batch":  # valid and bad elements mixed, k bad ones
            evs = [self._valid(u) for _ in range(r.randint(0, 6))]
            bad = [r.choice([_m(u, "x", ts), 5, _m(u, 1, 0), {"user_id": u}, [], _m(u + 10**6, 1, ts)])
                   for _ in range(r.randint(1, 4))]
            items = [e.to_map() for e in evs] + bad
            # keep the valid events in their (timestamp) order, scatter the bad ones
            order = sorted(range(len(items)), key=lambda i: (i, r.random()) if i < len(evs) else (r.uniform(-1, len(evs)), 0))
            return Msg(key, packb([items[i] for i in order]), kind, len(bad), evs)
        if kind == "oversize":  # > 1 MiB: rejected whole before decoding
            n = 1_048_576 // 30 + r.randrange(1000, 5000)
            value = packb([_m(u, 5, ts)] * n)
            assert len(value) > 1_048_576
            return Msg(key, value, kind, 1)
        raise ValueError(kind)

    def stream(self, n_malformed: int, valid_per_malformed: float = 1.0) -> Iterable[Msg]:
        for _ in range(n_malformed):
            while self.rng.random() < valid_per_malformed / (1 + valid_per_malformed):
                yield self.valid_message()
            yield self.malformed()


def produce(bootstrap: str, topic: str, msgs: Iterable[Msg]) -> list[tuple[Msg, int, int]]:
    """Send in order (one partition per key, acks=all, 1 in flight); returns (msg, partition,
    offset) for every message."""
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_in_flight_requests_per_connection=1,
                      max_request_size=4 * 1_048_576, linger_ms=5, batch_size=256 * 1024)
    sent = []
    try:
        for m in msgs:
            sent.append((m, p.send(topic, key=m.key, value=m.value)))
        p.flush()
        meta = [(m, f.get(60)) for m, f in sent]
        return [(m, md.partition, md.offset) for m, md in meta]
    finally:
        p.close(timeout=10)


def truth_of(msgs: Iterable[Msg]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    per: dict[int, set] = {}
    for m in msgs:
        for e in m.valid:
            per.setdefault(e.user_id, set()).add((e.ts, e.item_id))
    out = {}
    for u, s in per.items():
        arr = np.array(sorted(s), np.int64)
        out[u] = (arr[:, 1], arr[:, 0])
    return out
