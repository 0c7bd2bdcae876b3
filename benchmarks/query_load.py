"""Closed-loop gRPC load for ``bench query``, run as its own process (as real callers are, so
the load generator does not share the serving process's interpreter): ``concurrency``
outstanding Retrieve calls on one grpc.aio channel for ``seconds``; prints one JSON line
(qps, p50/p99 ms, errors).

``python -m longretriever.benchmarks.query_load TARGET USERS K CONCURRENCY SECONDS``
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc


async def run(target: str, users: int, k: int, concurrency: int, seconds: float) -> dict:
    from longretriever.retriever.proto import longretriever_pb2 as pb
    from longretriever.retriever.proto import longretriever_pb2_grpc as pb_grpc

    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.RetrieverStub(ch)
        await stub.Retrieve(pb.RetrieveRequest(user_id=0, k=k, max_contexts=8, exclude_seen=True), timeout=30)
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            u = w
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    await stub.Retrieve(pb.RetrieveRequest(user_id=u % users, k=k, max_contexts=8,
                                                           exclude_seen=True), timeout=10)
                    lat.append((time.perf_counter() - t) * 1000)
                except grpc.aio.AioRpcError:
                    errors += 1
                u += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        took = time.perf_counter() - t0
    s = sorted(lat)

    def pct(q: float) -> float | None:
        return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 2) if s else None

    return {"concurrency": concurrency, "qps": round(len(s) / took, 1), "p50_ms": pct(.5), "p99_ms": pct(.99),
            "calls": len(s), "errors": errors}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(asyncio.run(run(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4])))))
