"""Item -> context table. A context is a mutually exclusive group of items (a category).

Context id 0 is reserved: ``"unknown"`` for items missing from the table, or ``"all"`` when
no table is given at all (then every item is in context 0). Categories get ids 1..C in
sorted-name order, so the same items file always yields the same ids.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from longretriever.core.errors import ConfigError

UNKNOWN_CONTEXT = 0


DENSE_MAX_ID = 1 << 26  # a dense id -> context array up to this id (int16: <= 128 MiB) ...
DENSE_SPARSITY = 16  # ... and at most this many slots per item (else: binary search)


@dataclass(frozen=True)
class ContextTable:
    names: tuple[str, ...]
    item_ids: np.ndarray  # int64, sorted ascending
    item_contexts: np.ndarray  # int32, aligned with item_ids

    @cached_property
    def _dense(self) -> np.ndarray | None:
        """id -> context for ids in [0, len): one gather per event on the ingest path instead of
        a binary search (catalogues with small non-negative ids, the usual case); None
        otherwise. Built on the first lookup, so processes that never look up do not pay it."""
        ids = self.item_ids
        if not (ids.size and ids[0] >= 0 and ids[-1] < DENSE_MAX_ID and ids[-1] < DENSE_SPARSITY * ids.size + 65_536):
            return None
        dense = np.zeros(int(ids[-1]) + 1, np.int16 if len(self.names) <= np.iinfo(np.int16).max else np.int32)
        dense[ids] = self.item_contexts
        return dense

    @classmethod
    def single(cls) -> "ContextTable":
        return cls(("all",), np.zeros(0, np.int64), np.zeros(0, np.int32))

    @classmethod
    def from_mapping(cls, mapping: dict[int, str]) -> "ContextTable":
        if not mapping:
            return cls.single()
        cats = sorted(set(mapping.values()))
        cid = {c: i + 1 for i, c in enumerate(cats)}
        ids = np.fromiter(mapping.keys(), np.int64, len(mapping))
        ctx = np.fromiter((cid[mapping[int(i)]] for i in ids), np.int32, len(ids))
        order = np.argsort(ids, kind="stable")
        return cls(("unknown", *cats), ids[order], ctx[order])

    @classmethod
    def from_csv(cls, path: Path | str | None) -> "ContextTable":
        """Read ``item_id,category``; ``None`` means one context for everything."""
        if path is None:
            return cls.single()
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"items file not found: {path}")
        mapping: dict[int, str] = {}
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"item_id", "category"} <= set(reader.fieldnames):
                raise ConfigError(f"{path}: items CSV needs header item_id,category")
            for line, row in enumerate(reader, start=2):
                try:
                    mapping[int(row["item_id"])] = row["category"].strip() or "unknown"
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}:{line}: bad item row {row!r}") from exc
        return cls.from_mapping(mapping)

    @property
    def num_contexts(self) -> int:
        return len(self.names)

    def context_of(self, items: np.ndarray) -> np.ndarray:
        """Vectorised item id -> context id; unknown items map to context 0."""
        items = np.asarray(items, dtype=np.int64)
        if self.item_ids.size == 0:
            return np.zeros(items.shape, np.int32)
        dense = self._dense
        if dense is not None:
            inside = (items >= 0) & (items < dense.size)
            if inside.all():
                return dense[items].astype(np.int32)
            return np.where(inside, dense[np.where(inside, items, 0)], UNKNOWN_CONTEXT).astype(np.int32)
        pos = np.searchsorted(self.item_ids, items)
        pos_c = np.minimum(pos, self.item_ids.size - 1)
        hit = self.item_ids[pos_c] == items
        return np.where(hit, self.item_contexts[pos_c], UNKNOWN_CONTEXT).astype(np.int32)

    def id_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError as exc:
            raise ConfigError(f"unknown context {name!r}; known: {', '.join(self.names)}") from exc

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update("\x1f".join(self.names).encode())
        h.update(self.item_ids.tobytes())
        h.update(self.item_contexts.astype(np.int32).tobytes())
        return h.hexdigest()[:16]

    def to_csv(self, path: Path) -> None:
        with Path(path).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["item_id", "category"])
            for i, c in zip(self.item_ids.tolist(), self.item_contexts.tolist()):
                w.writerow([i, self.names[c]])
