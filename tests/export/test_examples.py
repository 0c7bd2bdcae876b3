"""Training rows gathered from flat arrays equal the rows serving builds from the same history."""

import numpy as np

from longretriever.core.features import build_encoder_inputs
from longretriever.core.planner import SequenceHistory, context_rows
from longretriever.export.examples import EventIndex, context_batches, training_events
from longretriever.export.train import make_split
from tests.fixtures.data import synthetic


def split_and_index(seed=8, n_users=40):
    split = make_split(synthetic(n_users=n_users, n_items=120, seed=seed))
    return split, EventIndex.of(split)


def test_training_rows_equal_the_serving_rows_of_the_same_history():
    split, index = split_and_index()
    rng = np.random.default_rng(0)
    ev = rng.choice(len(index), 200, replace=False)
    for k, w in ((8, 4), (0, 3), (50, 0)):
        got = index.encoder_inputs(ev, k, w)
        rows, recents, ctxs = [], [], []
        for e in ev.tolist():
            u_i = int(index.user_of[e])
            t = e - int(index.user_start[u_i])
            u = split.users[u_i]
            c = int(u.contexts[t])
            history = SequenceHistory(u.items[:t], u.ts[:t], u.contexts[:t])  # what serving holds before t
            r, rec = context_rows(history, [c], k, w)
            rows.append(r[0])
            recents.append(rec)
            ctxs.append(c)
        want = build_encoder_inputs(rows, recents, ctxs, split.vocab, k, w)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype, name
            assert np.array_equal(got[name], want[name]), (name, k, w)


def test_earlier_in_context_is_what_the_user_consumed_in_that_context():
    split, index = split_and_index()
    ev = np.arange(len(index))[::7]
    rows, items = index.earlier_in_context(ev)
    for r, e in enumerate(ev.tolist()):
        u_i = int(index.user_of[e])
        t = e - int(index.user_start[u_i])
        u = split.users[u_i]
        want = split.vocab.dense(u.items[:t][u.contexts[:t] == u.contexts[t]])
        assert items[rows == r].tolist() == want.tolist()


def test_training_events_budget_zero_is_every_training_position_once():
    split, index = split_and_index()
    rng = np.random.default_rng(1)
    ev = training_events(split, index, 0, rng)
    want = sorted(int(index.user_start[i] + t) for i, u in enumerate(split.users)
                  for t in range(*split.train_range(u)))
    assert sorted(ev.tolist()) == want
    capped = training_events(split, index, 5, rng)
    assert len(set(capped.tolist())) == capped.size and set(capped.tolist()) <= set(want)
    per_user = np.bincount(index.user_of[capped], minlength=len(split.users))
    full = np.array([max(0, hi - lo) for lo, hi in (split.train_range(u) for u in split.users)])
    assert per_user.tolist() == np.minimum(full, 5).tolist()
    assert full.max() > 5  # the budget really samples
    a = training_events(split, index, 5, np.random.default_rng(4))
    assert np.array_equal(a, training_events(split, index, 5, np.random.default_rng(4)))  # seeded
    assert not np.array_equal(np.sort(a), np.sort(training_events(split, index, 5, np.random.default_rng(9))))


def test_context_batches_hold_one_context_each_and_every_target_once():
    split, index = split_and_index(n_users=60)
    ev = training_events(split, index, 0, np.random.default_rng(2))
    plain = context_batches(index, ev, 16, 8, 0, np.random.default_rng(3))
    bucketed = context_batches(index, ev, 16, 8, 4, np.random.default_rng(3))
    for batches in (plain, bucketed):
        assert all(np.unique(index.contexts[b]).size == 1 and b.size >= 2 for b in batches)
        got = np.sort(np.concatenate(batches))
        assert np.unique(got).size == got.size
        # only batches of a single target are dropped (at most one per context and pool)
        assert ev.size - got.size <= split.table.num_contexts * (1 + ev.size // 64)
    assert sorted(np.concatenate(plain).tolist()) == sorted(np.concatenate(bucketed).tolist())

    def padded(batches):  # what the encoder pads to: the longest hard search of each batch
        return sum(int(index.search_lengths(b, 8).max()) * b.size for b in batches)

    assert padded(bucketed) < padded(plain)
    again = context_batches(index, ev, 16, 8, 4, np.random.default_rng(3))
    assert [b.tolist() for b in again] == [b.tolist() for b in bucketed]


def test_windows_are_the_baselines_left_padded_rows():
    import torch

    from longretriever.export.baselines import left_pad

    split, index = split_and_index()
    ev = np.arange(len(index))[::5]
    rows = []
    for e in ev.tolist():
        u_i = int(index.user_of[e])
        t = e - int(index.user_start[u_i])
        rows.append(split.vocab.dense(split.users[u_i].items[max(0, t - 6):t]))
    want, _ = left_pad(rows, 6)
    assert torch.equal(torch.as_tensor(index.windows(ev, 6)), want)
