import numpy as np
import pytest

from longretriever.core.features import AGE_BUCKETS, INPUT_NAMES, ItemVocab, age_buckets, build_encoder_inputs


def vocab():
    return ItemVocab.from_ids([50, 10, 30, 20, 40])  # dense: 10->0, 20->1, 30->2, 40->3, 50->4


def test_vocab_roundtrip_and_unknown():
    v = vocab()
    assert v.dense([10, 50, 99, -1]).tolist() == [0, 4, -1, -1]
    assert v.raw([0, 4]).tolist() == [10, 50]
    assert ItemVocab.from_ids([]).dense([1]).tolist() == [-1]


def test_padding_masks_unknown_and_truncation():
    v = vocab()
    out = build_encoder_inputs(
        [np.array([10, 99, 20, 30]), np.array([], np.int64), np.array([40, 50, 10, 20, 30])],
        [np.array([50]), np.array([77, 88]), np.array([10, 20])],
        [1, 0, 2], v, k=3, w=4)
    assert list(out) == list(INPUT_NAMES)
    # unknown 99 dropped; row 2 keeps the newest 3 of 5
    assert out["ctx_items"].tolist() == [[1, 2, 3], [0, 0, 0], [1, 2, 3]]
    assert out["ctx_mask"].tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 1]]
    assert out["ctx_age"].tolist() == [[2, 2, 1], [0, 0, 0], [2, 2, 1]]
    assert out["recent_items"].tolist() == [[5, 0], [0, 0], [1, 2]]
    assert out["recent_mask"].tolist() == [[1, 0], [0, 0], [1, 1]]
    assert out["recent_age"].tolist() == [[1, 0], [0, 0], [2, 1]]
    assert out["context"].tolist() == [1, 0, 2]
    assert out["ctx_items"].dtype == np.int64 and out["ctx_mask"].dtype == np.float32
    assert out["context"].dtype == np.int64


def test_all_empty_batch_has_width_one():
    out = build_encoder_inputs([np.array([99])], [np.array([], np.int64)], [0], vocab(), 8, 8)
    assert out["ctx_items"].shape == (1, 1) and out["ctx_mask"].sum() == 0
    assert out["recent_items"].shape == (1, 1) and out["recent_mask"].sum() == 0


def test_age_buckets_match_reference_and_cap():
    rng = np.random.default_rng(0)
    v = ItemVocab.from_ids(np.arange(5000))
    rows = [rng.integers(0, 5000, n) for n in (0, 1, 7, 300)]
    out = build_encoder_inputs(rows, rows, [0, 0, 0, 0], v, k=300, w=2)
    for i, r in enumerate(rows):
        assert out["ctx_age"][i, :r.size].tolist() == age_buckets(r.size).tolist()
        assert out["ctx_items"][i, :r.size].tolist() == (r + 1).tolist()
    assert out["ctx_age"].max() < AGE_BUCKETS
    assert age_buckets(3).tolist() == [2, 2, 1]


def test_row_count_mismatch():
    with pytest.raises(ValueError):
        build_encoder_inputs([np.array([10])], [], [0], vocab(), 2, 2)
