"""The event contract on the wire (msgpack), with strict validation. Never pickle, never eval.

A Kafka message value is either one event map or a non-empty array of event maps of the same
user (a micro-batch). The message key is the user id in decimal ASCII.

Event map: ``user_id`` int64 >= 0, ``item_id`` int64 >= 0, ``ts`` int64 milliseconds since the
epoch within [1990-01-01, now + 1 day], optional ``action`` (str, <= 32 bytes) and ``weight``
(finite float). Unknown keys are rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any, Sequence, Union

import msgpack
import msgspec
import numpy as np

INT64_MAX = 2**63 - 1
MIN_TS_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
FUTURE_SLACK_MS = 24 * 3600 * 1000
MAX_ACTION_LEN = 32
DEFAULT_MAX_BYTES = 1_048_576
DEFAULT_MAX_BATCH = 4096
_ALLOWED = frozenset({"user_id", "item_id", "ts", "action", "weight"})


@dataclass(frozen=True, slots=True)
class Event:
    user_id: int
    item_id: int
    ts: int
    action: str | None = None
    weight: float | None = None

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts}
        if self.action is not None:
            out["action"] = self.action
        if self.weight is not None:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True, slots=True)
class Rejection:
    """One malformed event (or whole message) with the bytes to dead-letter and why."""

    reason: str
    raw: bytes
    index: int | None = None  # position inside a micro-batch, None for the whole message


def encode_key(user_id: int) -> bytes:
    return str(int(user_id)).encode()


def encode_event(event: Event) -> bytes:
    return msgpack.packb(event.to_map(), use_bin_type=True)


def encode_batch(events: Sequence[Event]) -> bytes:
    """A micro-batch message: events of one user, in order."""
    return msgpack.packb([e.to_map() for e in events], use_bin_type=True)


def _int(m: dict, name: str, lo: int, hi: int) -> int:
    v = m.get(name)
    if type(v) is not int:  # noqa: E721 - bool is an int subclass and must be refused
        raise ValueError(f"{name} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} out of range [{lo}, {hi}]")
    return v


def validate_map(m: Any, now_ms: int) -> Event:
    """Check one decoded event map; raises ValueError with a human-readable reason."""
    if not isinstance(m, dict):
        raise ValueError(f"event must be a map, got {type(m).__name__}")
    extra = m.keys() - _ALLOWED
    if extra:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, extra)))}")
    user = _int(m, "user_id", 0, INT64_MAX)
    item = _int(m, "item_id", 0, INT64_MAX)
    ts = _int(m, "ts", MIN_TS_MS, now_ms + FUTURE_SLACK_MS)
    action = m.get("action")
    if action is not None and (not isinstance(action, str) or not 0 < len(action.encode()) <= MAX_ACTION_LEN):
        raise ValueError(f"action must be a non-empty string of <= {MAX_ACTION_LEN} bytes")
    weight = m.get("weight")
    if weight is not None:
        if type(weight) not in (float, int) or not math.isfinite(weight):
            raise ValueError("weight must be a finite number")
        weight = float(weight)
    return Event(user, item, ts, action, weight)


def decode_message(value: bytes | None, key: bytes | None, now_ms: int,
                   max_bytes: int = DEFAULT_MAX_BYTES,
                   max_batch: int = DEFAULT_MAX_BATCH) -> tuple[list[Event], list[Rejection]]:
    """Decode one Kafka message into valid events and rejections; never raises on bad input."""
    raw = value or b""
    if len(raw) > max_bytes:
        return [], [Rejection(f"payload of {len(raw)} bytes exceeds {max_bytes}", raw)]
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=max_bytes,
                              max_str_len=max_bytes, max_array_len=max_batch, max_map_len=16)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        return [], [Rejection(f"not msgpack: {type(exc).__name__}: {exc}"[:300], raw)]
    key_user = _parse_key(key)
    if isinstance(obj, dict):
        return _one(obj, raw, None, key_user, now_ms)
    if isinstance(obj, list):
        if not obj:
            return [], [Rejection("empty micro-batch", raw)]
        events: list[Event] = []
        rejected: list[Rejection] = []
        first_user: int | None = None
        for i, m in enumerate(obj):
            ok, bad = _one(m, None, i, key_user, now_ms)
            if ok and first_user is None:
                first_user = ok[0].user_id
            if ok and ok[0].user_id != first_user:
                bad = [Rejection(f"micro-batch mixes users {first_user} and {ok[0].user_id}",
                                 _repack(m), i)]
                ok = []
            events += ok
            rejected += bad
        return events, rejected
    return [], [Rejection(f"message must be a map or an array, got {type(obj).__name__}", raw)]


def _one(m: Any, raw: bytes | None, index: int | None, key_user: int | None | str,
         now_ms: int) -> tuple[list[Event], list[Rejection]]:
    try:
        ev = validate_map(m, now_ms)
    except ValueError as exc:
        where = f"event[{index}]: " if index is not None else ""
        return [], [Rejection(where + str(exc), raw if raw is not None else _repack(m), index)]
    if key_user != ev.user_id:
        reason = (f"message key {key_user!r} does not match user_id {ev.user_id}"
                  if key_user != "missing" else "message key (user id) is missing")
        return [], [Rejection(reason, raw if raw is not None else _repack(m), index)]
    return [ev], []


def _parse_key(key: bytes | None) -> int | str | None:
    if key is None:
        return "missing"
    try:
        text = key.decode("ascii")
        # an int64 user id has at most 19 digits; longer digit strings are not parsed (int() of
        # more than 4300 digits raises ValueError in Python >= 3.11: a poison message)
        return int(text) if text.isdigit() and len(text) <= 19 else text[:64]
    except UnicodeDecodeError:
        return repr(key[:32])


def _repack(m: Any) -> bytes:
    try:
        return msgpack.packb(m, use_bin_type=True)
    except Exception:  # noqa: BLE001
        return repr(m).encode()[:4096]


@dataclass(frozen=True, slots=True)
class Columns:
    """Valid events of one message in columnar form; ``index`` is each event's position in
    the micro-batch (0 for a single-event message)."""

    users: list[int]
    items: list[int]
    ts: list[int]
    index: list[int]


def decode_columns(value: bytes | None, key: bytes | None, now_ms: int,
                   max_bytes: int = DEFAULT_MAX_BYTES,
                   max_batch: int = DEFAULT_MAX_BATCH) -> tuple[Columns, list[Rejection]]:
    """Like :func:`decode_message` but columnar, with the typed fast path of
    :func:`decode_many`; anything unusual falls back to the per-event path, so both agree
    exactly."""
    fast = _fast_many([value], [key], now_ms, max_bytes, max_batch)
    if fast is not None:
        return Columns(fast.users.tolist(), fast.items.tolist(), fast.ts.tolist(), fast.index.tolist()), []
    events, rejected = decode_message(value, key, now_ms, max_bytes, max_batch)
    bad = {r.index for r in rejected}
    idx = [i for i in range(len(events) + len(rejected)) if i not in bad][:len(events)]
    return Columns([e.user_id for e in events], [e.item_id for e in events], [e.ts for e in events],
                   idx), rejected


@dataclass(frozen=True, slots=True)
class Decoded:
    """Valid events of many messages in columnar form (int64 arrays): ``message`` is the input
    position of each event's message, ``index`` its position in that message's micro-batch (0
    for a single-event message); ``rejected`` lists (message position, rejection)."""

    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    message: np.ndarray
    index: np.ndarray
    rejected: list[tuple[int, Rejection]]


_LEAF = 32  # below this many messages a failed fast path is resolved message by message
_EMPTY = np.zeros(0, np.int64)


def decode_many(values: Sequence[bytes | None], keys: Sequence[bytes | None], now_ms: int,
                max_bytes: int = DEFAULT_MAX_BYTES, max_batch: int = DEFAULT_MAX_BATCH) -> Decoded:
    """:func:`decode_columns` of every message of a fetch, concatenated, in one pass: msgspec
    decodes and type-checks every event in C into a typed struct, the remaining checks run
    once over all events with numpy, and no Python code runs per event -- which is what makes
    single-event messages cheap. A fetch that fails any check is split in halves until the bad
    messages are isolated; those go through the per-message path, so the result always
    equals :func:`decode_columns` message by message (a property test checks it)."""
    parts: list[Decoded] = []
    _decode_range(values, keys, 0, len(values), now_ms, max_bytes, max_batch, parts)
    if len(parts) == 1:
        return parts[0]
    cat = [np.concatenate([getattr(d, f) for d in parts]) if parts else _EMPTY
           for f in ("users", "items", "ts", "message", "index")]
    return Decoded(*cat, [r for d in parts for r in d.rejected])


def _decode_range(values, keys, lo: int, hi: int, now_ms: int, max_bytes: int, max_batch: int,
                  out: list) -> None:
    if lo >= hi:
        return
    fast = _fast_many(values[lo:hi], keys[lo:hi], now_ms, max_bytes, max_batch)
    if fast is not None:
        if lo:
            fast = Decoded(fast.users, fast.items, fast.ts, fast.message + lo, fast.index, [])
        out.append(fast)
        return
    if hi - lo > _LEAF:
        mid = (lo + hi) // 2
        _decode_range(values, keys, lo, mid, now_ms, max_bytes, max_batch, out)
        _decode_range(values, keys, mid, hi, now_ms, max_bytes, max_batch, out)
        return
    for m in range(lo, hi):
        c, bad = decode_columns(values[m], keys[m], now_ms, max_bytes, max_batch)
        n = len(c.users)
        out.append(Decoded(np.array(c.users, np.int64), np.array(c.items, np.int64),
                           np.array(c.ts, np.int64), np.full(n, m, np.int64),
                           np.array(c.index, np.int64), [(m, r) for r in bad]))


class _Ev(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The event map as msgspec decodes it: exact types (a bool is not an int, a float is not
    an int), unknown fields refused, ``None`` for an optional field = absent (as in
    :func:`validate_map`). Range, length and finiteness checks are done afterwards."""

    user_id: int
    item_id: int
    ts: int
    action: Union[str, None] = None
    weight: Union[float, None] = None


_DECODER = msgspec.msgpack.Decoder(Union[_Ev, list[_Ev]])
_USER, _ITEM, _TS = attrgetter("user_id"), attrgetter("item_id"), attrgetter("ts")
_ACTION, _WEIGHT = attrgetter("action"), attrgetter("weight")


def _fast_many(values, keys, now_ms: int, max_bytes: int, max_batch: int) -> Decoded | None:
    """Whole-fetch fast path; None means "some message needs the per-message path"."""
    n = len(values)
    try:
        if max(map(len, values)) > max_bytes:  # a None value raises TypeError: slow path
            return None
        if not all(map(bytes.isdigit, keys)) or max(map(len, keys)) > 19:
            return None
        objs = list(map(_DECODER.decode, values))
        key_users = np.array(list(map(int, keys)), np.int64)  # > int64: OverflowError
    except Exception:  # noqa: BLE001 - garbage, None keys, wrong types: the slow path says why
        return None
    lens = None
    if list not in set(map(type, objs)):
        flat = objs
    else:
        objs = [o if type(o) is list else [o] for o in objs]
        lens = list(map(len, objs))
        if min(lens) == 0 or max(lens) > max_batch:
            return None
        flat = list(chain.from_iterable(objs))
    m = len(flat)
    try:
        users = np.fromiter(map(_USER, flat), np.int64, m)
        items = np.fromiter(map(_ITEM, flat), np.int64, m)
        ts = np.fromiter(map(_TS, flat), np.int64, m)
    except OverflowError:  # msgpack carries uint64
        return None
    for a in set(map(_ACTION, flat)):  # each distinct value once
        if a is not None and not 0 < len(a.encode()) <= MAX_ACTION_LEN:
            return None
    for w in set(map(_WEIGHT, flat)):
        if w is not None and not math.isfinite(w):
            return None
    if items.min() < 0 or ts.min() < MIN_TS_MS or ts.max() > now_ms + FUTURE_SLACK_MS:
        return None
    if lens is None:
        message, index = np.arange(n, dtype=np.int64), np.zeros(n, np.int64)
    else:
        counts = np.array(lens, np.int64)
        message = np.repeat(np.arange(n, dtype=np.int64), counts)
        index = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    if not np.array_equal(users, key_users[message]):
        return None  # a key / user_id mismatch, or a micro-batch mixing users
    return Decoded(users, items, ts, message, index, [])
