"""Loading historical event files: ``csv`` (``user_id,item_id,timestamp[,action]``, seconds)
and ``movielens`` (an ml-latest style folder; a movie's first listed genre is its category).

An :class:`EventLog` is columnar and sorted by timestamp, stable for ties (file order), which
is the order replay produces in. Timestamps are converted to milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError

Format = Literal["csv", "movielens"]


@dataclass(frozen=True)
class EventLog:
    user_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64
    ts_ms: np.ndarray  # int64
    actions: np.ndarray | None  # object (str) or None when the file has no action column

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def users(self) -> np.ndarray:
        return np.unique(self.user_ids)

    def per_user(self) -> Iterator[tuple[int, np.ndarray]]:
        """(user_id, row indices in file/time order) for every user, ascending user id."""
        order = np.argsort(self.user_ids, kind="stable")
        uids = self.user_ids[order]
        bounds = np.flatnonzero(np.diff(uids)) + 1
        for chunk in np.split(order, bounds):
            if chunk.size:
                yield int(self.user_ids[chunk[0]]), chunk


@dataclass(frozen=True)
class Dataset:
    name: str
    events: EventLog
    contexts: ContextTable
    titles: dict[int, str]


def _sorted_log(df: pd.DataFrame, has_action: bool) -> EventLog:
    df = df.sort_values("timestamp", kind="stable")
    actions = df["action"].astype(str).to_numpy(dtype=object) if has_action else None
    return EventLog(
        user_ids=df["user_id"].to_numpy(np.int64),
        item_ids=df["item_id"].to_numpy(np.int64),
        ts_ms=df["timestamp"].to_numpy(np.int64) * 1000,
        actions=actions,
    )


def load_csv_events(path: Path) -> EventLog:
    if path.is_dir():
        if (path / "ratings.csv").is_file():
            raise ConfigError(f"{path} is a MovieLens folder, not an events CSV (add --format movielens)")
        raise ConfigError(f"{path} is a folder, not an events CSV (give the CSV file: header "
                          "user_id,item_id,timestamp[,action])")
    if not path.is_file():
        raise ConfigError(f"events file not found: {path}")
    df = pd.read_csv(path)
    need = {"user_id", "item_id", "timestamp"}
    if not need <= set(df.columns):
        raise ConfigError(f"{path}: events CSV needs header user_id,item_id,timestamp[,action]")
    try:
        df = df.astype({"user_id": np.int64, "item_id": np.int64, "timestamp": np.int64})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: non-integer user_id/item_id/timestamp") from exc
    return _sorted_log(df, "action" in df.columns)


def load_movielens(folder: Path) -> Dataset:
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"
    if folder.is_file():
        raise ConfigError(f"{folder} is a file; --format movielens reads an ml-latest folder "
                          "(ratings.csv + movies.csv); for an events CSV use --format csv")
    if not ratings.is_file() or not movies.is_file():
        raise ConfigError(f"{folder}: not a MovieLens folder (needs ratings.csv and movies.csv)")
    df = pd.read_csv(ratings, usecols=["userId", "movieId", "timestamp"])
    df = df.rename(columns={"userId": "user_id", "movieId": "item_id"})
    mv = pd.read_csv(movies)
    first_genre = mv["genres"].astype(str).str.split("|").str[0]
    mapping = dict(zip(mv["movieId"].astype(np.int64).tolist(), first_genre.tolist()))
    titles = dict(zip(mv["movieId"].astype(np.int64).tolist(), mv["title"].astype(str).tolist()))
    return Dataset(folder.name, _sorted_log(df, False), ContextTable.from_mapping(mapping), titles)


def load_dataset(events: Path | str, items: Path | str | None = None, fmt: Format = "csv") -> Dataset:
    """Load events plus the item table. For ``movielens`` the folder carries both; an explicit
    ``items`` file overrides the genre table."""
    events = Path(events)
    if fmt == "movielens":
        ds = load_movielens(events)
        if items is not None:
            ds = Dataset(ds.name, ds.events, ContextTable.from_csv(items), ds.titles)
        return ds
    if fmt != "csv":
        raise ConfigError(f"unknown format {fmt!r}; use csv or movielens")
    return Dataset(events.stem, load_csv_events(events), ContextTable.from_csv(items), {})


def items_next_to(events: Path | str) -> Path:
    """Where an events file's item table lives by convention: ``events.csv`` ->
    ``events.items.csv`` in the same folder (what ``longretriever synth`` writes)."""
    events = Path(events)
    return events.with_name(f"{events.stem}.items.csv")


def load_titles(path: Path | str) -> dict[int, str]:
    """Item titles for display: a MovieLens folder (its movies.csv), a ``movies.csv`` itself, or
    an item CSV with a ``title`` column (``item_id,category,title``). Empty when the table has
    no titles."""
    path = Path(path)
    if path.is_dir():
        path = path / "movies.csv"
    if not path.is_file():
        raise ConfigError(f"items file not found: {path}")
    cols = list(pd.read_csv(path, nrows=0).columns)
    key = "item_id" if "item_id" in cols else "movieId" if "movieId" in cols else None
    if key is None:
        raise ConfigError(f"{path}: an item table needs an item_id (or movieId) column")
    if "title" not in cols:
        return {}
    df = pd.read_csv(path, usecols=[key, "title"])
    return dict(zip(df[key].astype(np.int64).tolist(), df["title"].astype(str).tolist()))


MIN_SPLIT_USERS = 10  # users with >= MIN_USER_EVENTS events a training split needs
MIN_USER_EVENTS = 3  # leave-last-out: the last event is the test, the one before validation


def check_trainable(ds: Dataset, multi_context: bool = True) -> None:
    """Refuse a dataset that cannot train a useful model (``ConfigError``, naming the fix):
    too few users with enough events for the leave-last-out split, an item table that matches
    none of the events' items, or -- when ``multi_context`` -- fewer than two contexts among
    the events' items."""
    ev = ds.events
    if len(ev) == 0:
        raise ConfigError(f"{ds.name}: no events")
    _, counts = np.unique(ev.user_ids, return_counts=True)
    usable = int((counts >= MIN_USER_EVENTS).sum())
    if usable < MIN_SPLIT_USERS:
        raise ConfigError(
            f"{ds.name}: {usable} of {counts.size} users have >= {MIN_USER_EVENTS} events; training "
            f"needs at least {MIN_SPLIT_USERS} (per user the last event is the test, the one before "
            f"validation, the rest training)")
    items = np.unique(ev.item_ids)
    ctx = ds.contexts.context_of(items)
    known = ds.contexts.item_ids.size > 0
    if known and not (ctx != 0).any():
        raise ConfigError(f"{ds.name}: the item table matches none of the {items.size:,} items in the "
                          "events (compare the item_id columns of the two files)")
    if multi_context:
        used = int(np.unique(ctx[ctx != 0]).size) if known else 0
        if not known:
            raise ConfigError(f"{ds.name}: no item table, so no contexts (pass --items ITEMS.csv "
                              "with item_id,category, --contexts K to learn K contexts, or "
                              "--single-context for a one-context model)")
        if used < 2:
            raise ConfigError(f"{ds.name}: the events' items fall into {used} context(s) of the item "
                              "table; a multi-context model needs >= 2 (pass --contexts K to learn "
                              "K contexts, or --single-context)")
