import numpy as np
import pytest
import torch

from longretriever.core.features import INPUT_NAMES, ItemVocab, build_encoder_inputs
from longretriever.export.model import ContextNegativeSampler, LongRetrieverModel, ModelConfig, sampled_softmax_loss

N, C = 300, 5


def make_model(seed=0, dim=16):
    torch.manual_seed(seed)
    ctx = np.arange(N) % C
    return LongRetrieverModel(ModelConfig(num_items=N, num_contexts=C, dim=dim, heads=2, hidden=32,
                                          n_ctx_neg=8), ctx), ctx


def batch(rng, lengths, k, w=4):
    v = ItemVocab.from_ids(np.arange(N))
    rows = [rng.integers(0, N, n) for n in lengths]
    rec = [rng.integers(0, N, rng.integers(0, w + 1)) for _ in lengths]
    return build_encoder_inputs(rows, rec, rng.integers(0, C, len(lengths)), v, k, w)


def tensors(inp):
    return [torch.as_tensor(inp[n]) for n in INPUT_NAMES]


def test_empty_rows_are_finite_forward_and_backward():
    m, ctx = make_model()
    rng = np.random.default_rng(1)
    v = ItemVocab.from_ids(np.arange(N))
    inp = build_encoder_inputs([np.zeros(0, np.int64)] * 3 + [np.arange(5)], [np.zeros(0, np.int64)] * 4,
                               [0, 1, 2, 3], v, 8, 4)
    u = m(*tensors(inp))
    assert torch.isfinite(u).all()
    assert torch.allclose(u.norm(dim=-1), torch.ones(4), atol=1e-5)
    sampler = ContextNegativeSampler(ctx, rng.integers(0, 10, N), C)
    pos = torch.tensor([1, 2, 3, 3])
    loss = sampled_softmax_loss(m, u, pos, torch.full((N,), -np.log(N)), sampler,
                                torch.as_tensor(ctx[pos.numpy()]), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_padding_length_does_not_change_output():
    m, _ = make_model()
    m.eval()
    rng = np.random.default_rng(2)
    inp = batch(rng, [3, 5], k=8)
    a = m.encode_np(inp)
    wide = {k: v.copy() for k, v in inp.items()}
    for n in ("ctx_items", "ctx_age", "ctx_mask", "recent_items", "recent_age", "recent_mask"):
        x = wide[n]
        wide[n] = np.concatenate([x, np.zeros((x.shape[0], 7), x.dtype)], axis=1)
    assert np.abs(m.encode_np(wide) - a).max() < 1e-5


def test_deterministic_with_seed():
    a, _ = make_model(seed=3)
    b, _ = make_model(seed=3)
    inp = batch(np.random.default_rng(0), [0, 4, 9], k=16)
    a.eval(), b.eval()
    assert np.array_equal(a.encode_np(inp), b.encode_np(inp))


def test_context_sampler_stays_in_context():
    ctx = np.arange(N) % C
    s = ContextNegativeSampler(ctx, np.ones(N), C)
    want = torch.tensor([0, 3, 4])
    got = s.sample(want, 50, torch.Generator().manual_seed(0))
    assert (torch.as_tensor(ctx)[got] == want.unsqueeze(1)).all()
    assert torch.allclose(s.prob[torch.arange(C)], torch.full((C,), 1.0 / (N // C)))


@pytest.mark.parametrize("k", [32])
def test_torch_onnxruntime_parity_all_lengths(tmp_path, k):
    import onnxruntime as ort

    from longretriever.core.bundle import OUTPUT_NAME

    from longretriever.export.bundle_writer import export_onnx

    m, _ = make_model(dim=32)
    m.eval()
    v = ItemVocab.from_ids(np.arange(N))
    export_onnx(m, tmp_path / "enc.onnx", v, k, 4)
    sess = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    worst = 0.0
    for rep in range(3):
        lengths = rng.permutation(np.arange(k + 1))  # every length 0..K, random order
        inp = batch(rng, lengths, k)
        got = sess.run([OUTPUT_NAME], inp)[0]
        assert np.isfinite(got).all()
        worst = max(worst, float(np.abs(got - m.encode_np(inp)).max()))
    single = batch(rng, [0], k)  # batch 1, fully padded
    worst = max(worst, float(np.abs(sess.run([OUTPUT_NAME], single)[0] - m.encode_np(single)).max()))
    assert worst < 1e-4


def test_sample_examples_budget_zero_means_all_positions():
    from longretriever.export.train import Split, sample_examples

    class Stub:
        users = [np.zeros(n) for n in (2, 5, 40)]  # training positions [1, n-2) for n >= 3
        train_range = Split.train_range

    rng = np.random.default_rng(0)
    u, t = sample_examples(Stub(), 0, rng)
    assert u.size == (1 + 2 + 37)  # n=2 trains on [1, 2); n=5 on [1, 3); n=40 on [1, 38)
    assert sorted(zip(u.tolist(), t.tolist())) == sorted(
        [(0, 1)] + [(1, p) for p in (1, 2)] + [(2, p) for p in range(1, 38)])
    u8, _ = sample_examples(Stub(), 8, np.random.default_rng(0))
    assert np.bincount(u8, minlength=3).tolist() == [1, 2, 8]


def test_length_bucketing_keeps_every_example_once_and_groups_lengths():
    from longretriever.export.train import TrainConfig, context_lengths, example_batches, make_split
    from tests.fixtures.data import synthetic

    split = make_split(synthetic(n_users=40, n_items=120, seed=8))
    lengths = context_lengths(split, 8)
    plain = list(example_batches(split, TrainConfig(batch=16, bucket=0), np.random.default_rng(3), lengths))
    bucketed = list(example_batches(split, TrainConfig(batch=16, bucket=4), np.random.default_rng(3), lengths))

    def pairs(batches):
        return sorted((int(u), int(t)) for ub, tb in batches for u, t in zip(ub, tb))

    assert pairs(bucketed) == pairs(plain)  # same examples, each once
    # lengths are min(k, earlier events of the target's context), checked by hand for one case
    u = split.users[0]
    t = len(u) - 3
    assert lengths(np.array([0]), np.array([t]))[0] == min(8, int(np.sum(u.contexts[:t] == u.contexts[t])))

    def pad(batches):  # what the encoder pads to: the longest row of each batch
        return sum(int(lengths(ub, tb).max()) * ub.size for ub, tb in batches)

    assert pad(bucketed) < pad(plain)
    again = list(example_batches(split, TrainConfig(batch=16, bucket=4), np.random.default_rng(3), lengths))
    assert [(ub.tolist(), tb.tolist()) for ub, tb in again] == [(ub.tolist(), tb.tolist()) for ub, tb in bucketed]
