"""Tiny end-to-end: synthetic events -> train -> save_bundle -> load_bundle -> retrieve_offline."""

import json

import numpy as np
import pytest
import torch

from longretriever.retriever.bundle import load_bundle

from longretriever.export.bundle_writer import save_bundle
from longretriever.core.planner import retrieve_offline
from longretriever.export.train import TrainConfig, make_split, train_longretriever
from longretriever.core.errors import BundleError, InputError
from longretriever.core.multicontext import Candidate
from tests.fixtures.data import synthetic


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    split = make_split(synthetic())
    cfg = TrainConfig(epochs=1, batch=32, dim=16, k=8, w=4, heads=2, hidden=32, seed=1)
    res = train_longretriever(split, cfg, progress=False)
    out = tmp_path_factory.mktemp("b") / "bundle"
    save_bundle(out, res.model, split.vocab, split.item_contexts, split.table.names, split.train_freq,
                {"k": cfg.k, "w": cfg.w, "train": cfg.to_dict()}, {"loss": res.losses})
    return out, split, res


def test_bundle_files_and_manifest(bundle_dir):
    out, split, res = bundle_dir
    man = json.loads((out / "manifest.json").read_text())
    for f in ("encoder.onnx", "item_embeddings.npy", "item_ids.npy", "item_contexts.npy",
              "contexts.json", "popularity.npy", "config.json", "metrics.json"):
        assert f in man["files"] and len(man["files"][f]) == 64
    b = load_bundle(out, intra_op_threads=1)
    assert b.version == man["version"]
    assert b.item_ids.tolist() == split.vocab.item_ids.tolist()
    assert b.item_embeddings.dtype == np.float32 and b.item_embeddings.shape == (len(split.vocab), 16)
    assert b.context_names == split.table.names and b.config["k"] == 8 and b.config["w"] == 4
    assert res.losses and all(np.isfinite(res.losses))


def test_encode_matches_torch(bundle_dir):
    out, split, res = bundle_dir
    b = load_bundle(out, intra_op_threads=1)
    u = split.users[0]
    rows = [u.items[:5], u.items[:0], np.array([424242])]
    rec = [u.items[-4:], u.items[:0], u.items[:2]]
    got = b.encode(rows, rec, [1, 2, 0])
    want = res.model.encode_np(b.inputs(rows, rec, [1, 2, 0]))
    assert got.shape == (3, 16) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    with torch.no_grad():
        assert np.abs(b.item_embeddings - res.model.all_item_vectors().numpy()).max() < 1e-6


def test_tamper_and_missing_files_raise(bundle_dir, tmp_path):
    import shutil

    out, _, _ = bundle_dir
    for victim in ("item_embeddings.npy", "encoder.onnx", "config.json"):
        copy = tmp_path / victim
        shutil.copytree(out, copy)
        data = bytearray((copy / victim).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / victim).write_bytes(bytes(data))
        with pytest.raises(BundleError, match="sha256 mismatch"):
            load_bundle(copy)
    gone = tmp_path / "gone"
    shutil.copytree(out, gone)
    (gone / "popularity.npy").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(gone)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_retrieve_offline_contract(bundle_dir):
    out, split, _ = bundle_dir
    b = load_bundle(out, intra_op_threads=1)
    for u in split.users[:5]:
        got = retrieve_offline(b, u.items, u.ts, u.contexts, 10)
        assert all(isinstance(c, Candidate) for c in got)
        ids = [c.item_id for c in got]
        assert len(ids) == len(set(ids)) == min(10, len(b.item_ids) - len(set(u.items.tolist())))
        assert not set(ids) & set(u.items.tolist())  # seen excluded
        assert set(ids) <= set(b.item_ids.tolist())  # raw ids
        for c in {x.context for x in got}:  # slot order: each context's items best first
            scores = [x.score for x in got if x.context == c]
            assert scores == sorted(scores, reverse=True)
        longer = retrieve_offline(b, u.items, u.ts, u.contexts, 30)
        assert [c.item_id for c in longer[:10]] == ids  # prefix-consistent
        # shuffled input gives the same answer (canonical order is re-applied)
        p = np.random.default_rng(0).permutation(len(u))
        again = retrieve_offline(b, u.items[p], u.ts[p], u.contexts[p], 10)
        assert [c.item_id for c in again] == ids
        with_seen = retrieve_offline(b, u.items, u.ts, u.contexts, 10, exclude_seen=False)
        assert len(with_seen) == 10
    assert retrieve_offline(b, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 10) == []


def test_popular(bundle_dir):
    out, split, _ = bundle_dir
    b = load_bundle(out)
    top = b.popular(None, 3)
    assert b.popularity[b.vocab.dense(top)].tolist() == sorted(b.popularity, reverse=True)[:3]
    c1 = b.popular(1, 100)
    assert (b.item_contexts[b.vocab.dense(c1)] == 1).all()
    assert b.popular(99, 5).size == 0


def test_quantized_bundle(bundle_dir, tmp_path):
    out, split, res = bundle_dir
    q = save_bundle(tmp_path / "q", res.model, split.vocab, split.item_contexts, split.table.names,
                    split.train_freq, {"k": 8, "w": 4}, {}, quantize="int8")
    b = load_bundle(q, int8=True)
    v = b.encode([split.users[0].items[:6]], [split.users[0].items[:2]], [1])
    assert np.isfinite(v).all() and v.shape == (1, 16)


def test_encode_rejects_unknown_context(bundle_dir):
    out, split, _ = bundle_dir
    b = load_bundle(out)
    with pytest.raises(InputError):
        b.encode([split.users[0].items[:3]], [split.users[0].items[:1]], [len(b.context_names)])


def test_training_is_deterministic():
    split = make_split(synthetic(n_users=12, seed=5))
    cfg = TrainConfig(epochs=1, batch=16, dim=8, k=8, w=4, heads=2, hidden=16, seed=7)
    a = train_longretriever(split, cfg, progress=False)
    b = train_longretriever(split, cfg, progress=False)
    assert a.step_losses == b.step_losses
    for (_, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y)


def test_learned_context_choice_travels_in_the_bundle(bundle_dir, tmp_path):
    from longretriever.core.context_predictor import ContextPredictor, num_features

    out, split, res = bundle_dir
    c = len(split.table.names)
    # a predictor that always puts context 2 first: with one context per query, every
    # learned-choice candidate comes from context 2, whatever the user's own habits
    bias = np.zeros(c)
    bias[2] = 50.0
    pred = ContextPredictor(np.zeros((num_features(c), c)), bias)
    args = (res.model, split.vocab, split.item_contexts, split.table.names, split.train_freq)
    with pytest.raises(BundleError, match="needs a context predictor"):
        save_bundle(tmp_path / "x", *args, {"k": 8, "w": 4, "context_choice": "learned"})
    lb = save_bundle(tmp_path / "l", *args, {"k": 8, "w": 4, "context_choice": "learned"}, {},
                     predictor=pred)
    b = load_bundle(lb, intra_op_threads=1)
    assert b.context_choice == "learned" and "context_predictor.json" in json.loads(
        (lb / "manifest.json").read_text())["files"]
    assert b.predictor.bias.tolist() == bias.tolist()
    differs = 0
    for u in split.users[:10]:
        default = retrieve_offline(b, u.items, u.ts, u.contexts, 10, max_contexts=1)
        assert default == retrieve_offline(b, u.items, u.ts, u.contexts, 10, max_contexts=1,
                                           context_choice="learned")
        assert {cd.context for cd in default} == {2}
        freq = retrieve_offline(b, u.items, u.ts, u.contexts, 10, max_contexts=1, context_choice="frequency")
        differs += [cd.item_id for cd in freq] != [cd.item_id for cd in default]
    assert differs > 0
    # a bundle without a predictor refuses the learned choice; an unknown choice is an input error
    plain = load_bundle(out, intra_op_threads=1)
    assert plain.context_choice == "frequency" and plain.context_scorer() is None
    with pytest.raises(BundleError, match="no context_predictor.json"):
        plain.context_scorer("learned")
    with pytest.raises(InputError, match="context choice"):
        b.context_scorer("magic")
