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
from typing import Any, Sequence

import msgpack

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


_INT = frozenset({int})
_STR = frozenset({str})
_NUM = frozenset({float, int})


def decode_columns(value: bytes | None, key: bytes | None, now_ms: int,
                   max_bytes: int = DEFAULT_MAX_BYTES,
                   max_batch: int = DEFAULT_MAX_BATCH) -> tuple[Columns, list[Rejection]]:
    """Like :func:`decode_message` but columnar, with a vectorised fast path for well-formed
    micro-batches; anything unusual falls back to the per-event path, so both agree exactly."""
    raw = value or b""
    if len(raw) <= max_bytes:
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=max_bytes,
                                  max_str_len=max_bytes, max_array_len=max_batch, max_map_len=16)
        except Exception:  # noqa: BLE001 - the slow path reports the exact reason
            obj = None
        fast = _fast_columns(obj, key, now_ms) if obj is not None else None
        if fast is not None:
            return fast, []
    events, rejected = decode_message(value, key, now_ms, max_bytes, max_batch)
    bad = {r.index for r in rejected}
    idx = [i for i in range(len(events) + len(rejected)) if i not in bad][:len(events)]
    return Columns([e.user_id for e in events], [e.item_id for e in events], [e.ts for e in events],
                   idx), rejected


def _fast_columns(obj: Any, key: bytes | None, now_ms: int) -> Columns | None:
    """Validation of a list of event maps with C-level builtins; None means "use the slow path"."""
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list) or not obj or key is None or not key.isdigit() or len(key) > 19:
        return None
    try:
        keys = set().union(*obj)
        if not keys <= _ALLOWED:
            return None
        users = [m["user_id"] for m in obj]
        items = [m["item_id"] for m in obj]
        ts = [m["ts"] for m in obj]
    except (TypeError, KeyError):
        return None
    if set(map(type, users)) != _INT or set(map(type, items)) != _INT or set(map(type, ts)) != _INT:
        return None
    if "action" in keys:
        actions = [m["action"] for m in obj if "action" in m]
        if set(map(type, actions)) != _STR:
            return None
        lens = list(map(len, map(str.encode, actions)))
        if min(lens) == 0 or max(lens) > MAX_ACTION_LEN:
            return None
    if "weight" in keys:
        weights = [m["weight"] for m in obj if "weight" in m]
        if not set(map(type, weights)) <= _NUM or not all(map(math.isfinite, weights)):
            return None
    # builtins only (C loops, no per-message numpy overhead: single-event messages are common)
    if (users.count(int(key)) != len(users) or max(users) > INT64_MAX
            or min(items) < 0 or max(items) > INT64_MAX
            or min(ts) < MIN_TS_MS or max(ts) > now_ms + FUTURE_SLACK_MS):
        return None
    return Columns(users, items, ts, list(range(len(users))))
