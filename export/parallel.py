"""Run independent, deterministic training jobs (seeds, ablation variants) in parallel
processes. Each job sets its own torch thread count; results come back in input order."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def parallel_map(fn: Callable[[Any], Any], jobs_args: Sequence[Any], jobs: int = 1) -> list[Any]:
    """``[fn(a) for a in jobs_args]``, in up to ``jobs`` spawned processes when ``jobs > 1``
    (``fn`` must be a module-level function; arguments and results are pickled)."""
    if jobs <= 1 or len(jobs_args) <= 1:
        return [fn(a) for a in jobs_args]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(jobs_args)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs_args))
