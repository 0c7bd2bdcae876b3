import numpy as np
import pytest
import torch

from longretriever.core.features import INPUT_NAMES, ItemVocab, build_encoder_inputs
from longretriever.export.model import LongRetrieverModel, ModelConfig, in_context_loss

N, C = 300, 5


def make_model(seed=0, dim=16):
    torch.manual_seed(seed)
    ctx = np.arange(N) % C
    return LongRetrieverModel(ModelConfig(num_items=N, num_contexts=C, dim=dim, heads=2, hidden=32), ctx), ctx


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
    block = torch.as_tensor(np.flatnonzero(ctx == 1))  # every row ranks context 1
    pos = torch.tensor([0, 1, 2, 2])
    excluded = (torch.tensor([0, 1, 1, 3]), torch.tensor([3, 4, 1, 2]))  # row 1 excludes its own target
    loss = in_context_loss(m, u, pos, block, excluded)
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


def test_in_context_loss_is_the_exact_softmax_without_the_excluded_items():
    m, ctx = make_model()
    m.eval()
    rng = np.random.default_rng(5)
    u = m(*tensors(batch(rng, [3, 6, 0], k=8))).detach()
    block = torch.as_tensor(np.flatnonzero(ctx == 2))
    pos = torch.tensor([4, 0, 7])
    excluded = (torch.tensor([0, 0, 1, 2]), torch.tensor([1, 4, 3, 5]))  # (0, 4) is row 0's target: kept
    got = in_context_loss(m, u, pos, block, excluded)
    logits = (u @ m.item_vectors(block + 1).T / m.cfg.tau).detach().numpy().astype(np.float64)
    want = []
    for r, dropped in enumerate(({1}, {3}, {5})):
        keep = [j for j in range(block.numel()) if j not in dropped]
        row = logits[r, keep]
        want.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[r, int(pos[r])])
    assert abs(float(got) - float(np.mean(want))) < 1e-4
    # excluding an item changes only the rows it is excluded from
    assert abs(float(in_context_loss(m, u, pos, block)) - float(got)) > 1e-6


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
