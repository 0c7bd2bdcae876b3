"""Online == offline: train a bundle, replay the events through real Kafka into the serving
process (stream worker + Milvus Lite FLAT + onnxruntime + gRPC), and compare every user's
gRPC answer with the offline multi-context reference computed from the file. The bundle uses
the learned next-context predictor; the frequency choice is compared too, on the same state and
Milvus collection. The same state is then served from a real Milvus server (per-context
partitions): FLAT must give identical answers for every user, HNSW overlap@100 >= 0.98."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from longretriever.core.planner import retrieve_offline
from longretriever.data.events import load_dataset
from longretriever.retriever.assemble import open_serving
from longretriever.retriever.client import RetrieverClient
from longretriever.retriever.milvus_index import MilvusIndex
from longretriever.retriever.server import build_server
from longretriever.core.codec import Event, encode_batch, encode_key
from longretriever.stream.replay import ensure_topic, replay
from longretriever.data.synth import write as write_synth
from longretriever.stream.worker import StreamWorker
from tests.fixtures.support import expected_sequences, settings_for, wait_for
from longretriever.benchmarks.common import train_small

pytestmark = pytest.mark.integration
K = 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    ev, it = write_synth(d / "syn.csv", users=40, events_per_user=300, items=3000, contexts=8, seed=11)
    train_small(ev, it, d / "bundle", budget=16, extra=("--context-choice", "learned"))
    uri = str(d / "milvus.db")
    from longretriever.retriever.bundle import load_bundle

    idx = MilvusIndex(uri, "items")
    idx.build(load_bundle(d / "bundle"), "flat", progress=False)
    idx.close()
    return d, ev, it, uri


def test_grpc_answers_equal_offline_reference_then_follow_new_events(trained, kafka_bootstrap,
                                                                     topic_name, tmp_path, request):
    d, ev, it, uri = trained
    ds = load_dataset(ev, it, "csv")
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    settings = settings_for(kafka_bootstrap, topic_name, tmp_path / "state", group="parity")
    sv = open_serving(d / "bundle", uri, "items", settings)
    truth = expected_sequences(ds.events, sv.store.contexts, 100_000)

    async def scenario():
        worker = StreamWorker(settings, sv.store, on_applied=sv.on_applied)
        task = asyncio.create_task(worker.run())
        total = await asyncio.to_thread(_total_messages, kafka_bootstrap, topic_name)
        await wait_for(lambda: sum(sv.store.watermark().values()) >= total, timeout=120)
        server, port, _ = build_server(sv.service)
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            mismatched = await asyncio.to_thread(_compare_all, target, sv.bundle, truth)
            freq = await asyncio.to_thread(_compare_frequency_choice, sv, truth)
            # fresh events for a few users must change their answers
            changed = await asyncio.to_thread(_follow_new_events, target, kafka_bootstrap, topic_name,
                                              sv, truth)
            # the state now holds the new events too: compare against sequences read from it
            on_server = await asyncio.to_thread(_compare_on_server, request, sv)
        finally:
            await server.stop(1)
            worker.stop()
            await task
        return mismatched, changed, freq, on_server

    try:
        mismatched, changed, (freq_mismatched, choices_differ), server = asyncio.run(
            asyncio.wait_for(scenario(), 400))
    finally:
        sv.close()
    flat_mismatched, hnsw_overlap, users = server
    print(f"[parity] Milvus server: FLAT {users - len(flat_mismatched)}/{users} users identical, "
          f"HNSW overlap@100 {hnsw_overlap:.4f}")
    assert users == len(truth)
    assert flat_mismatched == [], f"Milvus server FLAT: {len(flat_mismatched)} of {users} users differ"
    assert hnsw_overlap >= 0.98, f"Milvus server HNSW overlap@100 {hnsw_overlap:.4f}"
    assert sv.bundle.context_choice == "learned"
    assert mismatched == [], f"{len(mismatched)} of {len(truth)} users differ: {mismatched[:3]}"
    assert freq_mismatched == [], f"frequency choice: {len(freq_mismatched)} users differ"
    assert choices_differ > 0  # the learned choice is not the frequency choice in disguise
    assert changed == 5
    _scrape_metrics_endpoint(len(truth), len(ds.events))


def _scrape_metrics_endpoint(queries: int, events: int) -> None:
    """The Prometheus endpoint (what ``serve --metrics-port`` starts) exposes what ran above."""
    import urllib.request

    from prometheus_client import start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    from longretriever.infra.kafka.broker import free_port

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("longretriever_rpc_total", (("code", "OK"), ("method", "Retrieve")))] >= queries
    assert samples[("longretriever_stream_events_total", (("outcome", "applied"),))] >= events
    assert samples[("longretriever_query_stage_seconds_count", (("stage", "milvus"),))] >= queries
    lags = [v for k, v in samples.items() if k[0] == "longretriever_stream_consumer_lag"]
    assert lags and min(lags) >= 0


def _compare_all(target, bundle, truth):
    """Users whose gRPC answer differs from the offline reference. Through the same real path:
    a plain request (the wire default) excludes every seen item, and smaller k are prefixes."""
    mismatched = []
    with RetrieverClient(target, timeout=30) as client:
        for n, (user, (items, ts, ctxs)) in enumerate(truth.items()):
            online = client.retrieve(user, K, 8)
            assert not online["fallback"]
            ids = [c["item_id"] for c in online["candidates"]]
            ref = retrieve_offline(bundle, items, ts, ctxs, K, 8, True)
            if ids != [c.item_id for c in ref]:
                mismatched.append(user)
            assert not set(ids) & set(items.tolist()), f"user {user}: seen items returned by default"
            if n < 10:
                for k in (1, 7, 20):
                    assert [c["item_id"] for c in client.retrieve(user, k, 8)["candidates"]] == ids[:k], (user, k)
    return mismatched


def _compare_on_server(request, sv):
    """The serving state + bundle on a real Milvus server: (users whose FLAT answer differs from
    the offline reference, mean HNSW overlap@100 with it, users compared)."""
    import uuid

    from longretriever.core.planner import context_sizes
    from longretriever.retriever.service import RetrieverService

    uri = request.getfixturevalue("milvus_server")  # skips (fails in CI) without a server
    b = sv.bundle
    users = sorted(sv.store.users())
    seqs = {u: sv.store.sequence(u) for u in users}
    out = {}
    for kind in ("flat", "hnsw"):
        with MilvusIndex(uri, f"parity_{kind}_{uuid.uuid4().hex[:6]}") as ix:
            st = ix.build(b, kind, progress=False)
            assert st["layout"] == "partition" and st["index"] == kind.upper()
            view = ix.open(b.version, len(b.item_ids), context_sizes(b.item_contexts))
            service = RetrieverService(b, ix.pinned(view), sv.store)
            n = K if kind == "flat" else 100
            res = []
            for u in users:
                online = [c.item_id for c in service.retrieve(u, n, 8, True).candidates]
                s = seqs[u]
                ref = [c.item_id for c in retrieve_offline(b, s.items, s.ts, s.contexts, n, 8, True)]
                res.append(online == ref if kind == "flat" else len(set(online) & set(ref)) / max(1, len(ref)))
            out[kind] = res
    return ([u for u, ok in zip(users, out["flat"]) if not ok], float(np.mean(out["hnsw"])), len(users))


def _compare_frequency_choice(sv, truth):
    """The same state and collection served with ``context_choice="frequency"`` equals the
    frequency reference; returns (mismatched users, users whose answer differs by choice)."""
    from longretriever.retriever.service import RetrieverService

    service = RetrieverService(sv.bundle, sv.index, sv.store, context_choice="frequency")
    mismatched, differ = [], 0
    for user, (items, ts, ctxs) in truth.items():
        online = [c.item_id for c in service.retrieve(user, K, 8, True).candidates]
        ref = retrieve_offline(sv.bundle, items, ts, ctxs, K, 8, True, context_choice="frequency")
        learned = retrieve_offline(sv.bundle, items, ts, ctxs, K, 8, True)
        if online != [c.item_id for c in ref]:
            mismatched.append(user)
        differ += [c.item_id for c in learned] != online
    return mismatched, differ


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


def test_two_serving_workers_route_each_user_to_its_owner(trained, kafka_bootstrap, topic_name, tmp_path):
    """Two serving processes in one consumer group (here: two workers, two states, two gRPC
    endpoints in one process). Asking either endpoint about any user gives the owner's answer,
    which equals the offline reference."""
    from longretriever.retriever.routing import Router, client_id_for
    from longretriever.retriever.service import RetrieverService

    d, ev, it, uri = trained
    ds = load_dataset(ev, it, "csv")
    ensure_topic(kafka_bootstrap, topic_name, 4)
    replay(ds.events, kafka_bootstrap, topic_name, progress=False)
    sa = settings_for(kafka_bootstrap, topic_name, tmp_path / "a", group="route")
    sb = settings_for(kafka_bootstrap, topic_name, tmp_path / "b", group="route")
    sv = open_serving(d / "bundle", uri, "items", sa, cache_entries=0)
    from longretriever.retriever.assemble import state_contexts
    from longretriever.stream.state import StateStore

    store_b = StateStore(tmp_path / "b", state_contexts(sv.bundle, None))
    service_b = RetrieverService(sv.bundle, sv.index, store_b)
    truth = expected_sequences(ds.events, sv.store.contexts, 100_000)

    async def scenario():
        from longretriever.infra.kafka.broker import free_port

        addr_a, addr_b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        routers = [Router(kafka_bootstrap, "route", topic_name, a, interval=0.3).start() for a in (addr_a, addr_b)]
        server_a, _, _ = build_server(sv.service, port=int(addr_a.split(":")[1]), router=routers[0])
        server_b, _, _ = build_server(service_b, port=int(addr_b.split(":")[1]), router=routers[1])
        await server_a.start()
        await server_b.start()
        wa = StreamWorker(sa, sv.store, client_id=client_id_for(addr_a))
        wb = StreamWorker(sb, store_b, client_id=client_id_for(addr_b))
        tasks = [asyncio.create_task(wa.run()), asyncio.create_task(wb.run())]
        total = await asyncio.to_thread(_total_messages, kafka_bootstrap, topic_name)
        try:
            await wait_for(lambda: wa.stats.assigned and wb.stats.assigned
                           and sum(sv.store.next_offset(p) or 0 for p in wa.stats.assigned)
                           + sum(store_b.next_offset(p) or 0 for p in wb.stats.assigned) >= total
                           and all(len(r.map.owners) == 4 for r in routers)
                           # the routers' maps agree with what each worker owns (not a map of
                           # a generation a busy box has already rebalanced away from)
                           and all(r.map.owners.get(p) == addr for r in routers
                                   for w, addr in ((wa, addr_a), (wb, addr_b)) for p in w.stats.assigned),
                           timeout=120)
            owned_by_b = [u for u in truth if routers[0].remote_owner(u) == addr_b]
            results = await asyncio.to_thread(_compare_all, addr_a, sv.bundle, truth)
            results_b = await asyncio.to_thread(_compare_all, addr_b, sv.bundle, truth)
        finally:
            wa.stop()
            wb.stop()
            await asyncio.gather(*tasks)
            for r in routers:
                r.stop()
            await server_a.stop(1)
            await server_b.stop(1)
        return owned_by_b, results, results_b

    try:
        owned_by_b, mismatched_a, mismatched_b = asyncio.run(asyncio.wait_for(scenario(), 300))
    finally:
        store_b.close()
        sv.close()
    assert 0 < len(owned_by_b) < len(truth)  # both processes own users: routing was exercised
    assert mismatched_a == [] and mismatched_b == []


def test_endpoint_answers_from_local_state_while_the_broker_is_down(trained, tmp_path):
    """Broker outage: Retrieve keeps answering from the last applied state (same answers,
    same watermark) within the deadline; after the broker is back, new events flow again."""
    from longretriever.infra.kafka import broker

    d, ev, it, uri = trained
    ds = load_dataset(ev, it, "csv")
    bdir = tmp_path / "kafka"
    info = broker.start(bdir)
    try:
        ensure_topic(info.bootstrap, "user-events", 4)
        replay(ds.events, info.bootstrap, "user-events", progress=False)
        settings = settings_for(info.bootstrap, "user-events", tmp_path / "state", group="outage")
        sv = open_serving(d / "bundle", uri, "items", settings, cache_entries=0)
        users = sorted(set(ds.events.user_ids.tolist()))[:10]

        async def scenario():
            worker = StreamWorker(settings, sv.store)
            task = asyncio.create_task(worker.run())
            total = await asyncio.to_thread(_total_messages, info.bootstrap, "user-events")
            await wait_for(lambda: sum(sv.store.watermark().values()) >= total, timeout=120)
            server, port, _ = build_server(sv.service)
            await server.start()
            target = f"127.0.0.1:{port}"

            def ask():
                with RetrieverClient(target, timeout=3) as c:
                    t0 = time.perf_counter()
                    out = [c.retrieve(u, 20) for u in users]
                    return out, time.perf_counter() - t0

            try:
                before, _ = await asyncio.to_thread(ask)
                await asyncio.to_thread(broker.stop, bdir)
                during, took = await asyncio.to_thread(ask)
                await asyncio.to_thread(broker.start, bdir, info.port)
                from kafka import KafkaProducer

                def produce():
                    p = KafkaProducer(bootstrap_servers=info.bootstrap, acks="all")
                    p.send("user-events", key=encode_key(users[0]),
                           value=encode_batch([Event(users[0], int(i), int(time.time() * 1000) + j)
                                               for j, i in enumerate(sv.bundle.item_ids[:5])]))
                    p.flush()
                    p.close()
                await asyncio.to_thread(produce)
                await wait_for(lambda: sum(sv.store.watermark().values()) > total, timeout=120)
            finally:
                await server.stop(1)
                worker.stop()
                await task
            return before, during, took

        try:
            before, during, took = asyncio.run(asyncio.wait_for(scenario(), 300))
        finally:
            sv.close()
    finally:
        broker.stop(bdir)
    assert [r["candidates"] for r in during] == [r["candidates"] for r in before]
    assert [r["watermark"] for r in during] == [r["watermark"] for r in before]
    assert not any(r["fallback"] for r in during)
    assert took < 3 * len(users)  # every call inside its 3 s deadline
