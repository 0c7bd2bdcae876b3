"""Careless inputs through the real CLI (subprocesses): every case exits 2 with at most three
stderr lines, one ``error: ...`` line naming the cause, no traceback, and nothing created on
disk -- neither in the fresh working directory each case runs in nor next to the inputs.

No broker or server runs: cases that need one fail before reaching it (or reach an address
nobody listens on). The cases run concurrently, a few at a time, to keep the suite fast."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from longretriever.core.contexts import ContextTable
from longretriever.data.synth import write as write_synth
from longretriever.stream.state import StateStore

# (id, argv with {placeholders} for the inputs, extra env, a substring the error line must have)
CASES = [
    ("replay-missing-file", "replay --events {inputs}/nope.csv --bootstrap 127.0.0.1:9092", {}, "events file not found"),
    ("replay-movielens-folder-as-csv", "replay --events {ml} --bootstrap 127.0.0.1:9092", {}, "--format movielens"),
    ("replay-csv-as-movielens", "replay --events {ok} --format movielens --bootstrap 127.0.0.1:9092", {}, "--format csv"),
    ("replay-unreachable-broker", "replay --events {ok} --bootstrap 127.0.0.1:1", {}, "kafka start"),
    ("stream-unreachable-broker", "stream --bootstrap 127.0.0.1:1 --state-dir st", {}, "Kafka not reachable"),
    ("stream-bad-bootstrap", "stream --bootstrap nohost --state-dir st", {}, "HOST:PORT"),
    ("stream-missing-items", "stream --bootstrap 127.0.0.1:1 --state-dir st --items {inputs}/nope.csv", {},
     "items file not found"),
    ("serve-config-file-missing", "serve --bundle {inputs}/bundle", {"LONGRETRIEVER_CONFIG": "typo.toml"}, "no such file"),
    ("serve-config-file-not-toml", "serve --bundle {inputs}/bundle", {"LONGRETRIEVER_CONFIG": "{inputs}/bad.toml"},
     "not valid TOML"),
    ("serve-config-unknown-key", "serve --bundle {inputs}/bundle", {"LONGRETRIEVER_CONFIG": "{inputs}/unknown.toml"},
     "unknown setting 'max_sequence_length'"),
    ("serve-env-out-of-range", "serve --bundle {inputs}/bundle", {"LONGRETRIEVER_MAX_SEQUENCE_LEN": "0"},
     "LONGRETRIEVER_MAX_SEQUENCE_LEN"),
    ("serve-missing-bundle", "serve --bundle {inputs}/nope --no-worker", {}, "nope"),
    ("serve-tls-cert-without-key", "serve --bundle {inputs}/nope --no-worker --tls-cert {ok}", {}, "go together"),
    ("index-missing-bundle", "index --bundle {inputs}/nope --milvus-uri m.db", {}, "nope"),
    ("synth-zero-users", "synth --users 0 --out out/x.csv", {}, "--users"),
    ("query-k-overflows-int32", "query --user 1 --k 2147483648", {}, "--k"),
    ("query-user-overflows-int64", "query --user 9223372036854775808 --target 127.0.0.1:1", {}, "out of range"),
    ("query-nobody-listening", "query --user 1 --target 127.0.0.1:1 --timeout 2", {}, "serve"),
    ("query-missing-titles-file", "query --user 1 --items {inputs}/nope.csv", {}, "items file not found"),
    ("kafka-start-busy-port", "kafka start --port {busy_port} --data-dir kd", {}, "not free"),
    ("sequence-missing-state", "sequence --state-dir nostate --user 1", {}, "no state at"),
    ("sequence-context-name-without-items", "sequence --state-dir {state} --user 1 --context Western", {}, "--items"),
    ("sequence-unknown-context", "sequence --state-dir {state} --user 1 --context Western --items {ok_items}", {},
     "known: unknown, c00"),
    ("sequence-unknown-user", "sequence --state-dir {state} --user 999", {}, "no events"),
    ("train-no-item-table", "train --events {nocat} --out bundle", {}, "--single-context"),
    ("train-items-match-no-event", "train --events {nocat} --items {wrong_items} --out bundle", {}, "matches none"),
    ("train-too-few-users", "train --events {tiny} --single-context --out bundle", {}, "at least 10"),
    ("train-unknown-format", "train --events {ok} --format xml --out bundle", {}, "--format"),
    ("train-unknown-context-choice", "train --events {ok} --context-choice best --out bundle", {}, "--context-choice"),
    ("train-unknown-pretrain", "train --events {ok} --pretrain word2vec --out bundle", {}, "--pretrain"),
    ("eval-no-item-table", "eval --events {nocat} --out report", {}, "--contexts K"),
    ("demo-missing-data", "demo --data {inputs}/nope --out demo", {}, "no such file"),
    ("bad-log-level", "synth --out out/x.csv", {"LONGRETRIEVER_LOG_LEVEL": "loud"}, "not a log level"),
    ("missing-required-option", "train --events {ok}", {}, "Missing option '--out'"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("careless-inputs")
    ok, ok_items = write_synth(d / "ok.csv", users=12, events_per_user=20, items=100, contexts=4, seed=1)
    (d / "nocat.csv").write_bytes(ok.read_bytes())
    (d / "wrong.items.csv").write_text("item_id,category\n1,a\n2,b\n")
    (d / "tiny.csv").write_text("user_id,item_id,timestamp\n1,10,100\n1,11,200\n2,10,300\n")
    (d / "ml").mkdir()
    (d / "ml" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,100\n")
    (d / "ml" / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n")
    (d / "bad.toml").write_text('bootstrap = "127.0.0.1:9092"\ntopic = \n')
    (d / "unknown.toml").write_text("max_sequence_length = 5\n")
    table = ContextTable.from_csv(ok_items)
    store = StateStore(d / "state", table)
    store.apply(np.array([1, 1, 2]), np.array([1000, 1007, 1014]), np.array([1000, 2000, 3000]), {0: 3})
    store.close()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {"inputs": d, "ok": ok, "ok_items": ok_items, "nocat": d / "nocat.csv", "tiny": d / "tiny.csv",
              "wrong_items": d / "wrong.items.csv", "ml": d / "ml", "state": d / "state",
              "busy_port": busy.getsockname()[1]}
    yield d, values
    busy.close()


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (a read-only RocksDB open rewrites
    rocksdict's config file with the same bytes: a new mtime, nothing created or changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    """Every case's (returncode, stderr, files left in its cwd), run a few at a time."""
    d, values = inputs
    before = _snapshot(d)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRETRIEVER_")}
    env.update(COLUMNS="100", NO_COLOR="1")

    def run(case):
        name, argv, extra, _ = case
        cwd = tmp_path_factory.mktemp(name)
        args = [a.format(**values) for a in argv.split()]
        out = subprocess.run([sys.executable, "-m", "longretriever.cli", *args], cwd=cwd, capture_output=True,
                             text=True, timeout=120,
                             env={**env, **{k: v.format(**values) for k, v in extra.items()}})
        return name, (out.returncode, out.stderr, sorted(p.name for p in cwd.iterdir()))

    with ThreadPoolExecutor(4) as pool:
        got = dict(pool.map(run, CASES))
    return got, before, _snapshot(d)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_careless_input_gives_one_clear_line(case, results):
    got, _, _ = results
    rc, stderr, left = got[case[0]]
    lines = stderr.strip().splitlines()
    assert rc == 2, (rc, stderr)
    assert 1 <= len(lines) <= 3, stderr
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert case[3] in errors[0], errors[0]
    assert left == [], f"left behind in the working directory: {left}"


def test_careless_inputs_leave_the_inputs_untouched(results):
    _, before, after = results
    assert after == before


def test_debug_shows_the_traceback(inputs, tmp_path):
    _, values = inputs
    out = subprocess.run([sys.executable, "-m", "longretriever.cli", "--debug", "replay", "--events",
                          str(values["inputs"] / "nope.csv"), "--bootstrap", "127.0.0.1:9092"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" in out.stderr and "ConfigError" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: events file not found")
