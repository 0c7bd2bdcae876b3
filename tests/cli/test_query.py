"""``longretriever query`` against a real gRPC endpoint (a small in-test backend): titles from
an item table, ``--json`` in its documented shape, seen items excluded unless asked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longretriever.core.multicontext import Candidate
from longretriever.retriever.service import RetrieveResult
from tests.fixtures.serving import ServerThread


class Backend:
    names = ["unknown", "Comedy", "Drama"]

    def __init__(self) -> None:
        self.calls = []

    def context_name(self, c: int) -> str:
        return self.names[c]

    def context_id(self, name: str) -> int:
        return self.names.index(name)

    def retrieve(self, user_id, k, max_contexts, exclude_seen, timeout=None):
        self.calls.append((user_id, k, max_contexts, exclude_seen))
        return RetrieveResult(user_id, [Candidate(1, 0.9, 1), Candidate(2, 0.5, 2), Candidate(77, 0.1, 2)][:k],
                              "v7", "0:3", False)


@pytest.fixture(scope="module")
def endpoint():
    srv = ServerThread(Backend())
    yield srv
    srv.stop()


def _query(srv, *args):
    out = subprocess.run([sys.executable, "-m", "longretriever.cli", "query", "--target", srv.target, *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout


def test_query_prints_titles_from_the_item_table(endpoint, tmp_path):
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Heat, the (1995)",Drama\n')
    text = _query(endpoint, "--user", "5", "--k", "3", "--items", str(movies))
    lines = text.strip().splitlines()
    assert lines[0] == "user 5 model v7 watermark 0:3"
    assert lines[1].split()[:4] == ["1", "1", "+0.9000", "Comedy"] and lines[1].endswith("Toy Story (1995)")
    assert lines[2].endswith("Heat, the (1995)")
    assert lines[3].split() == ["3", "77", "+0.1000", "Drama"]  # no title known: the id alone
    assert _query(endpoint, "--user", "5", "--k", "3", "--items", str(tmp_path)) == text  # the folder works too
    assert endpoint.backend.calls[-1] == (5, 3, 8, True)  # seen items excluded by default


def test_query_json_shape_is_unchanged(endpoint):
    r = json.loads(_query(endpoint, "--user", "5", "--k", "2", "--json", "--include-seen"))
    assert r == {"user_id": 5, "model_version": "v7", "watermark": "0:3", "fallback": False,
                 "candidates": [{"item_id": 1, "score": pytest.approx(0.9), "context": "Comedy"},
                                {"item_id": 2, "score": pytest.approx(0.5), "context": "Drama"}]}
    assert endpoint.backend.calls[-1] == (5, 2, 8, False)
