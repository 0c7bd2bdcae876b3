"""Online == offline: train a bundle, replay the events through real Kafka into the serving
process (stream worker + Milvus Lite FLAT + onnxruntime + gRPC), and compare every user's
gRPC answer with the offline multi-context reference computed from the file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

from export.reference import retrieve_offline
from longretriever.datasets import load_dataset
from retriever.assemble import open_serving
from retriever.client import RetrieverClient
from retriever.milvus_index import MilvusIndex
from retriever.server import build_server
from stream.codec import Event, encode_batch, encode_key
from stream.replay import ensure_topic, replay
from stream.synth import write as write_synth
from stream.worker import StreamWorker
from tests.support import expected_sequences, settings_for, wait_for

pytestmark = pytest.mark.integration
K = 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    ev, it = write_synth(d / "syn.csv", users=40, events_per_user=300, items=3000, contexts=8, seed=11)
    subprocess.run([sys.executable, "-m", "longretriever.cli", "train", "--events", str(ev), "--items",
                    str(it), "--out", str(d / "bundle"), "--epochs", "1", "--budget", "16", "--k", "64",
                    "--w", "16", "--no-progress"], check=True, capture_output=True)
    uri = str(d / "milvus.db")
    from export.bundle import load_bundle

    idx = MilvusIndex(uri, "items")
    idx.build(load_bundle(d / "bundle"), "flat", progress=False)
    idx.close()
    return d, ev, it, uri


def test_grpc_answers_equal_offline_reference_then_follow_new_events(trained, kafka_bootstrap,
                                                                     topic_name, tmp_path):
    d, ev, it, uri = trained
    ds = load_dataset(ev, it, "csv")
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    settings = settings_for(kafka_bootstrap, topic_name, tmp_path / "state", group="parity")
    sv = open_serving(d / "bundle", uri, "items", settings)
    truth = expected_sequences(ds.events, sv.store.contexts, 100_000)

    async def scenario():
        worker = StreamWorker(settings, sv.store, on_applied=sv.refresher.on_applied)
        task = asyncio.create_task(worker.run())
        total = await asyncio.to_thread(_total_messages, kafka_bootstrap, topic_name)
        await wait_for(lambda: sum(sv.store.watermark().values()) >= total, timeout=120)
        server, port, _ = build_server(sv.service)
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            mismatched = await asyncio.to_thread(_compare_all, target, sv.bundle, truth)
            # fresh events for a few users must change their answers
            changed = await asyncio.to_thread(_follow_new_events, target, kafka_bootstrap, topic_name,
                                              sv, truth)
        finally:
            await server.stop(1)
            worker.stop()
            await task
        return mismatched, changed

    try:
        mismatched, changed = asyncio.run(asyncio.wait_for(scenario(), 300))
    finally:
        sv.close()
    assert mismatched == [], f"{len(mismatched)} of {len(truth)} users differ: {mismatched[:3]}"
    assert changed == 5


def _compare_all(target, bundle, truth):
    mismatched = []
    with RetrieverClient(target, timeout=30) as client:
        for user, (items, ts, ctxs) in truth.items():
            online = client.retrieve(user, K, 8, True)
            assert not online["fallback"]
            ref = retrieve_offline(bundle, items, ts, ctxs, K, 8, True)
            if [c["item_id"] for c in online["candidates"]] != [c.item_id for c in ref]:
                mismatched.append(user)
    return mismatched


def _follow_new_events(target, bootstrap, topic, sv, truth):
    from kafka import KafkaProducer

    users = sorted(truth)[:5]
    with RetrieverClient(target, timeout=30) as client:
        before = {u: [c["item_id"] for c in client.retrieve(u, K)["candidates"]] for u in users}
        p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        now = int(time.time() * 1000)
        rng = np.random.default_rng(0)
        for u in users:
            # ten events on items the user has not seen: the window and the hard search change
            fresh = [int(i) for i in rng.permutation(sv.bundle.item_ids) if i not in set(truth[u][0])][:10]
            p.send(topic, key=encode_key(u), value=encode_batch([Event(u, i, now + j) for j, i in enumerate(fresh)]))
        p.flush()
        p.close()
        changed = 0
        deadline = time.monotonic() + 20
        pending = set(users)
        while pending and time.monotonic() < deadline:
            for u in list(pending):
                after = [c["item_id"] for c in client.retrieve(u, K)["candidates"]]
                if after != before[u]:
                    changed += 1
                    pending.discard(u)
            time.sleep(0.05)
    return changed


def _total_messages(bootstrap, topic):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    total = sum(c.end_offsets(tps).values())
    c.close()
    return total
