"""``longretriever bench soak --minutes N``: steady ingest + steady queries against a real
``longretriever serve`` process; reports RSS growth, p99 drift and error counts.

Bounded by construction: the load generator stops after ``minutes``, the query loop runs a
fixed number of requests per second on loopback and ends with it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import psutil

from longretriever.benchmarks.common import percentile, scrape_stages, serving_env, start_load


def run_soak(minutes: float = 10.0, rate: float = 2000.0, qps: float = 20.0, users: int = 200,
             serve_args: tuple[str, ...] = ()) -> dict[str, Any]:
    seconds = minutes * 60
    with serving_env(users, serve_args=serve_args) as (env, client):
        proc = psutil.Process(env["pid"])
        load = start_load(env["bootstrap"], rate, seconds, users)
        rng = np.random.default_rng(7)
        windows: list[dict[str, Any]] = []
        errors: dict[str, int] = {}
        t0 = time.monotonic()
        win_start, lat = t0, []
        rss0 = proc.memory_info().rss
        n = 0
        while time.monotonic() - t0 < seconds:
            u = int(rng.integers(0, users))
            t = time.perf_counter()
            try:
                client.retrieve(u, 100, 8)
                lat.append((time.perf_counter() - t) * 1000)
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            n += 1
            ahead = n / qps - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() - win_start >= 60 or time.monotonic() - t0 >= seconds:
                windows.append({"minute": len(windows) + 1, "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
                                "queries": len(lat), "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
                win_start, lat = time.monotonic(), []
        out, _ = load.communicate(timeout=120)
        rss1 = proc.memory_info().rss
        stages = scrape_stages(env.get("metrics_port"))
    p99s = [w["p99_ms"] for w in windows if w["p99_ms"] is not None]
    return {
        "minutes": minutes, "ingest_rate_target": rate,
        "ingest_eps": round(float(out.strip().splitlines()[-1])) if out.strip() else None,
        "qps_target": qps, "queries": n, "errors": errors,
        "rss_start_mb": round(rss0 / 2**20, 1), "rss_end_mb": round(rss1 / 2**20, 1),
        "rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
        "p99_first_min_ms": p99s[0] if p99s else None, "p99_last_min_ms": p99s[-1] if p99s else None,
        "server_stage_mean_ms": stages,
        "windows": windows,
    }
