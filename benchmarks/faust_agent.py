"""Measure the faust-streaming agent path (``stream.take``) on a topic of msgpack messages.

``python -m longretriever.benchmarks.faust_agent BOOTSTRAP TOPIC EVENTS`` prints events/s on its last line.
Used only by ``bench ingest`` to compare with the bulk aiokafka path of the stream worker.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid

import faust
import msgpack


def main(bootstrap: str, topic: str, total: int) -> None:
    app = faust.App(f"lr-bench-faust-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}",
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    store="memory://", datadir=tempfile.mkdtemp(), consumer_auto_offset_reset="earliest",
                    topic_disable_leader=True, stream_buffer_maxsize=65536)
    src = app.topic(topic, key_type=bytes, value_type=bytes)
    state = {"n": 0, "t0": None}

    @app.agent(src)
    async def count(stream):
        async for values in stream.take(10_000, within=0.05):
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            for v in values:
                obj = msgpack.unpackb(v)
                state["n"] += len(obj) if isinstance(obj, list) else 1
            if state["n"] >= total:
                eps = state["n"] / (time.perf_counter() - state["t0"])
                print(f"EPS {eps:.1f}", flush=True)  # faust redirects stdout into its logger
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
