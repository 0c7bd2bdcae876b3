"""Event-file helpers: the item table found next to its events, titles for display, and the
checks that refuse a dataset no useful model can be trained on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.core.errors import ConfigError
from longretriever.data.events import (MIN_SPLIT_USERS, Dataset, EventLog, check_trainable, items_next_to,
                                       load_dataset, load_titles)
from longretriever.data.synth import items_path_for


def _ds(users, items, table=None):
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    log = EventLog(users, items, np.arange(users.size, dtype=np.int64) * 1000, None)
    return Dataset("t", log, table or ContextTable.single(), {})


def test_items_next_to_is_synths_convention(tmp_path):
    assert items_next_to(tmp_path / "ev.csv") == tmp_path / "ev.items.csv" == items_path_for(tmp_path / "ev.csv")


def test_load_titles(tmp_path):
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"A, the (1990)",Drama\n2,B (1991),Comedy\n')
    assert load_titles(tmp_path) == load_titles(tmp_path / "movies.csv") == {1: "A, the (1990)", 2: "B (1991)"}
    (tmp_path / "it.csv").write_text("item_id,category,title\n7,x,Seven\n")
    assert load_titles(tmp_path / "it.csv") == {7: "Seven"}
    (tmp_path / "plain.csv").write_text("item_id,category\n7,x\n")
    assert load_titles(tmp_path / "plain.csv") == {}
    (tmp_path / "odd.csv").write_text("id,title\n7,x\n")
    with pytest.raises(ConfigError, match="item_id"):
        load_titles(tmp_path / "odd.csv")
    with pytest.raises(ConfigError, match="not found"):
        load_titles(tmp_path / "nope.csv")


def test_folder_given_as_csv_names_the_format(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(ConfigError, match="--format movielens"):
        load_dataset(tmp_path)
    with pytest.raises(ConfigError, match="--format csv"):
        load_dataset(tmp_path / "ratings.csv", fmt="movielens")


def test_check_trainable():
    n = MIN_SPLIT_USERS
    users = np.repeat(np.arange(n), 3)
    items = np.tile([10, 11, 12], n)
    table = ContextTable.from_mapping({10: "a", 11: "b", 12: "a"})
    check_trainable(_ds(users, items, table))  # enough users, two contexts: fine
    check_trainable(_ds(users, items), multi_context=False)  # one context, asked for
    with pytest.raises(ConfigError, match="no item table"):
        check_trainable(_ds(users, items))
    with pytest.raises(ConfigError, match="matches none"):
        check_trainable(_ds(users, items, ContextTable.from_mapping({1: "a", 2: "b"})))
    with pytest.raises(ConfigError, match="1 context"):
        check_trainable(_ds(users, items, ContextTable.from_mapping({10: "a", 11: "a"})))
    with pytest.raises(ConfigError, match=f"{n - 1} of {n} users"):
        check_trainable(_ds(users[:-1], items[:-1], table))  # the last user has 2 events only
    with pytest.raises(ConfigError, match="no events"):
        check_trainable(replace(_ds([], [], table)))
