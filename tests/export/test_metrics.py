import numpy as np
import pytest

from longretriever.export.evaluate import MISS, mean_metrics, metrics_from_lists, metrics_from_rank
from longretriever.core.ranking import top_n


def test_metrics_from_rank_hand_checked():
    m = metrics_from_rank(0)
    assert m == {"hr@10": 1.0, "ndcg@10": 1.0, "recall@50": 1.0, "recall@100": 1.0, "recall@200": 1.0}
    assert metrics_from_rank(2)["ndcg@10"] == pytest.approx(0.5)  # 1/log2(4)
    assert metrics_from_rank(9)["ndcg@10"] == pytest.approx(1 / np.log2(11))
    m = metrics_from_rank(10)
    assert m["hr@10"] == 0 and m["ndcg@10"] == 0 and m["recall@50"] == 1
    m = metrics_from_rank(99)
    assert (m["recall@50"], m["recall@100"], m["recall@200"]) == (0, 1, 1)
    assert metrics_from_rank(MISS)["recall@200"] == 0


def test_metrics_from_lists_hand_checked():
    lists = {10: [5, 6, 7], 50: [1, 2, 7], 100: list(range(100, 200)) + [7], 200: [7]}
    m = metrics_from_lists(lists, 7)
    assert m["hr@10"] == 1 and m["ndcg@10"] == pytest.approx(0.5)
    assert m["recall@50"] == 1 and m["recall@100"] == 0 and m["recall@200"] == 1  # 101st of 100-list


def test_mean_metrics():
    rows = [metrics_from_rank(0), metrics_from_rank(MISS)]
    assert mean_metrics(rows)["hr@10"] == 0.5
    assert mean_metrics([])["recall@100"] == 0.0


def test_top_n_total_order_with_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5], np.float32)
    raw = np.array([40, 10, 30, 20, 5])
    assert raw[top_n(scores, raw, 3)].tolist() == [10, 5, 30]
    assert raw[top_n(scores, raw, 10)].tolist() == [10, 5, 30, 40, 20]
    assert top_n(scores, raw, 0).size == 0
