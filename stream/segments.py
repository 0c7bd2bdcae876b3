"""Compact columnar encoding of one segment of a user's per-context sequence. Pure.

Layout (little endian): ``flags:u8 | n:u32 | base_ts:i64`` then ``n`` item ids (int32, or
int64 when flag bit 0 is set) then ``n`` timestamp deltas to the previous event (uint32 ms,
or absolute int64 when flag bit 1 is set). Typical cost: 8 bytes per event + 13 bytes per
segment.
"""

from __future__ import annotations

import math
import struct

import numpy as np

_HEADER = struct.Struct("<BIq")
_ITEMS64 = 1
_TS64 = 2
_I32 = np.iinfo(np.int32)
_U32_MAX = np.iinfo(np.uint32).max
_DT_I4, _DT_I8, _DT_U4 = np.dtype("<i4"), np.dtype("<i8"), np.dtype("<u4")


def encode_segment(items: np.ndarray, ts: np.ndarray) -> bytes:
    """Encode events already in canonical (ts, item_id) order."""
    items = np.asarray(items, np.int64)
    ts = np.asarray(ts, np.int64)
    n = int(items.size)
    flags = 0
    if n and (items.min() < _I32.min or items.max() > _I32.max):
        flags |= _ITEMS64
    base = int(ts[0]) if n else 0
    deltas = np.empty(n, np.int64)
    if n:
        deltas[0] = 0
        np.subtract(ts[1:], ts[:-1], out=deltas[1:])
        if deltas.min() < 0 or deltas.max() > _U32_MAX:
            flags |= _TS64
    item_bytes = items.tobytes() if flags & _ITEMS64 else items.astype("<i4").tobytes()
    ts_bytes = ts.astype("<i8").tobytes() if flags & _TS64 else deltas.astype("<u4").tobytes()
    return _HEADER.pack(flags, n, base) + item_bytes + ts_bytes


def decode_segment(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_segment`: (items int64, ts int64). On the query path (every
    read of a user's window decodes its tail segments): no per-call dtype parsing, the
    running sum in place."""
    flags, n, base = _HEADER.unpack_from(buf, 0)
    off = _HEADER.size
    idt = _DT_I8 if flags & _ITEMS64 else _DT_I4
    items = np.frombuffer(buf, idt, n, off).astype(np.int64)
    off += n * idt.itemsize
    if flags & _TS64:
        ts = np.frombuffer(buf, _DT_I8, n, off).astype(np.int64)
    else:
        ts = np.frombuffer(buf, _DT_U4, n, off).astype(np.int64)
        ts.cumsum(out=ts)
        ts += base
    return items, ts


def segments_behind(oldest: int | None, newest: int, loaded: int, cut: int | None, n: int, seg: int) -> int:
    """How many segments further back the cut (the ``n``-th newest event loaded so far) lies
    in a context whose ``loaded`` events, ``oldest`` .. ``newest``, are all at or after it:
    estimated from their rate once a segment's worth is loaded (a partial tail says little),
    never more than the window could still take from the context; at least 1."""
    if cut is None or oldest is None or loaded < seg or newest <= oldest:
        return 1
    behind = (oldest - cut) * (loaded - 1) / (newest - oldest)  # events between cut and oldest
    cap = -(-(n - loaded) // seg)
    return max(1, min(cap, math.ceil(behind / seg)))


def merge_sorted(items_a: np.ndarray, ts_a: np.ndarray, items_b: np.ndarray,
                 ts_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Union of two event sets in canonical order without duplicates of (ts, item_id).
    Returns (items, ts, number of events of ``b`` that were duplicates)."""
    items = np.concatenate([items_a, items_b])
    ts = np.concatenate([ts_a, ts_b])
    order = np.lexsort((items, ts))
    items, ts = items[order], ts[order]
    keep = np.ones(items.size, bool)
    keep[1:] = (ts[1:] != ts[:-1]) | (items[1:] != items[:-1])
    dups = int(items.size - keep.sum()) - _self_dups(items_a, ts_a)
    return items[keep], ts[keep], dups


def _self_dups(items: np.ndarray, ts: np.ndarray) -> int:
    if items.size < 2:
        return 0
    return int(((ts[1:] == ts[:-1]) & (items[1:] == items[:-1])).sum())


def first_key(buf: bytes, skip: int = 0) -> tuple[int, int]:
    """(ts, item_id) of event ``skip`` of an encoded segment without decoding all of it."""
    if skip == 0:
        flags, n, base = _HEADER.unpack_from(buf, 0)
        idt = "<q" if flags & _ITEMS64 else "<i"
        return base, struct.unpack_from(idt, buf, _HEADER.size)[0]
    items, ts = decode_segment(buf)
    return int(ts[skip]), int(items[skip])


def stored_mask(items: np.ndarray, ts: np.ndarray, q_items: np.ndarray, q_ts: np.ndarray) -> np.ndarray:
    """For each query event (unique keys): is ``(q_ts, q_item)`` among the stored events
    ``(ts, items)`` (unique keys)? Vectorised: one sort of both sets, stored before query."""
    n = items.size
    all_t = np.concatenate([ts, q_ts])
    all_i = np.concatenate([items, q_items])
    src = np.concatenate([np.zeros(n, np.int8), np.ones(q_items.size, np.int8)])
    order = np.lexsort((src, all_i, all_t))
    t, i, s = all_t[order], all_i[order], src[order]
    hit = np.zeros(order.size, bool)
    hit[1:] = (s[1:] == 1) & (s[:-1] == 0) & (t[1:] == t[:-1]) & (i[1:] == i[:-1])
    out = np.empty(q_items.size, bool)
    out[order[s == 1] - n] = hit[s == 1]
    return out
