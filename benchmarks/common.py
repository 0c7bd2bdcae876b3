"""Helpers shared by every benchmark (one module, imported by the bench modules only):
percentiles, a small trained bundle, the serving environment (broker + bundle + Milvus Lite +
a ``longretriever serve`` subprocess), the load generator process and the /metrics scrape."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
import urllib.request
from typing import Iterator

from prometheus_client.parser import text_string_to_metric_families

from longretriever.core.ranking import ExactSearch
from longretriever.data.events import load_dataset
from longretriever.data.synth import write
from longretriever.infra.kafka import broker
from longretriever.retriever.bundle import load_bundle
from longretriever.retriever.client import RetrieverClient
from longretriever.stream.replay import ensure_topic, replay

#: exact per-context search, the floor every Milvus figure is read against
NumpyFloor = ExactSearch


def percentile(xs: list[float], q: float, ndigits: int = 2) -> float | None:
    """Nearest-rank percentile of ``xs`` (None when empty), rounded; shared by every bench."""
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], ndigits)


def train_small(events: Path, items: Path | None, out: Path, *, epochs: int = 1, budget: int = 8,
                k: int = 64, w: int = 16, extra: tuple[str, ...] = ()) -> Path:
    """A small bundle trained in a subprocess (own torch threads, own memory): a real encoder,
    not a good one."""
    cmd = [sys.executable, "-m", "longretriever.cli", "train", "--events", str(events), "--out", str(out),
           "--epochs", str(epochs), "--budget", str(budget), "--k", str(k), "--w", str(w), "--no-progress",
           *extra]
    if items is not None:
        cmd += ["--items", str(items)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def parse_watermark(wm: str) -> dict[int, int]:
    out = {}
    for part in filter(None, wm.split(",")):
        p, o = part.split(":")
        out[int(p)] = int(o)
    return out


@contextmanager
def serving_env(users: int = 200, events_per_user: int = 100,
                serve_args: tuple[str, ...] = ()) -> Iterator[tuple[dict, object]]:
    """A broker, a tiny trained bundle indexed in Milvus Lite, the history replayed, and a
    ``longretriever serve`` subprocess caught up on it. Yields (env dict, client)."""
    tmp = Path(tempfile.mkdtemp(prefix="lr-serving-"))
    info = broker.start(tmp / "kafka")
    proc = None
    try:
        ev, it = write(tmp / "syn.csv", users, events_per_user, items=5000, contexts=8, seed=3)
        train_small(ev, it, tmp / "bundle")
        bundle = load_bundle(tmp / "bundle")
        # indexed by `longretriever index` in its own process, as a deployment does: a Milvus
        # Lite server started here would keep the file locked, and `serve` refuses a Lite file
        # another process holds
        subprocess.run([sys.executable, "-m", "longretriever.cli", "index", "--bundle", str(tmp / "bundle"),
                        "--milvus-uri", str(tmp / "milvus.db"), "--collection", "items", "--index", "flat"],
                       check=True, capture_output=True)
        ds = load_dataset(ev, it, "csv")
        ensure_topic(info.bootstrap, "user-events", 4)
        rep = replay(ds.events, info.bootstrap, "user-events", progress=False)
        port, metrics_port = broker.free_port(), broker.free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "longretriever.cli", "serve", "--bundle", str(tmp / "bundle"),
             "--milvus-uri", str(tmp / "milvus.db"), "--collection", "items", "--bootstrap", info.bootstrap,
             "--state-dir", str(tmp / "state"), "--port", str(port), "--host", "127.0.0.1",
             "--group-id", "bench", "--metrics-port", str(metrics_port), *serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = RetrieverClient(f"127.0.0.1:{port}", timeout=10)
        wait_caught_up(client, rep.messages, users)
        env = {"bootstrap": info.bootstrap, "port": port, "pid": proc.pid, "item_ids": bundle.item_ids,
               "users": users, "metrics_port": metrics_port}
        try:
            yield env, client
        finally:
            client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop(tmp / "kafka")
        shutil.rmtree(tmp, ignore_errors=True)


def start_load(bootstrap: str, rate: float, seconds: float, users: int) -> subprocess.Popen:
    """The load generator (:mod:`longretriever.benchmarks.load`) as its own process, as real
    producers are; it prints the achieved events/s on its last line."""
    return subprocess.Popen([sys.executable, "-m", "longretriever.benchmarks.load", bootstrap, str(rate),
                             str(seconds), str(users)], stdout=subprocess.PIPE, text=True)


def wait_caught_up(client, messages: int, users: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = client.retrieve(users - 1, 10, 1)
            if sum(parse_watermark(r["watermark"]).values()) >= messages and not r["fallback"]:
                return
        except Exception:  # noqa: BLE001 - server still starting
            pass
        time.sleep(0.2)
    raise TimeoutError("serving process did not catch up")


def scrape_stages(port: int | None) -> dict[str, float]:
    """Mean server-side latency per query stage from the serving process's /metrics."""
    if not port:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    lag = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "longretriever_stream_consumer_lag":
            lag += sum(smp.value for smp in fam.samples)
        if fam.name != "longretriever_query_stage_seconds":
            continue
        for smp in fam.samples:
            if smp.name.endswith("_sum"):
                sums[smp.labels["stage"]] = smp.value
            elif smp.name.endswith("_count"):
                counts[smp.labels["stage"]] = smp.value
    out = {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}
    out["consumer_lag_messages"] = lag
    return out
