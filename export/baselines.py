"""Baselines for the evaluator: popularity, SASRec (single vector over the newest N events)
and a ComiRec-SA style multi-interest model. They share the item tower form
(``normalize(id_emb + ctx_emb)``), the sampled-softmax + logQ loss (in-batch negatives only)
and :func:`longretriever.export.train.fit` (same optimiser, epochs and validation model selection)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longretriever.export.device import resolve_device
from longretriever.export.examples import EventIndex, training_events
from longretriever.export.train import FitResult, Split, TrainConfig, fit, item_log_q, seed_everything

NEG = 1e4


class ItemTower(nn.Module):
    def __init__(self, num_items: int, num_contexts: int, dim: int, item_contexts: np.ndarray):
        super().__init__()
        self.emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.ctx = nn.Embedding(num_contexts, dim)
        nn.init.normal_(self.emb.weight, std=0.05)
        nn.init.normal_(self.ctx.weight, std=0.05)
        with torch.no_grad():
            self.emb.weight[0].zero_()
        ic = torch.as_tensor(np.asarray(item_contexts, np.int64))
        self.register_buffer("item_ctx", torch.cat([torch.zeros(1, dtype=torch.long), ic]))
        self.num_items = num_items

    def forward(self, idx1: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.emb(idx1) + self.ctx(self.item_ctx[idx1]), dim=-1, eps=1e-6)

    def all(self) -> torch.Tensor:
        return self(torch.arange(1, self.num_items + 1, device=self.item_ctx.device))


def inbatch_loss(user: torch.Tensor, pos: torch.Tensor, items: ItemTower, log_q: torch.Tensor,
                 tau: float) -> torch.Tensor:
    """Sampled softmax over in-batch positives with logQ correction (``pos`` dense ids)."""
    b = pos.shape[0]
    logits = user @ items(pos + 1).T / tau - (log_q[pos] + float(np.log(b))).unsqueeze(0)
    dup = (pos.unsqueeze(0) == pos.unsqueeze(1)) & ~torch.eye(b, dtype=torch.bool, device=pos.device)
    return F.cross_entropy(logits.masked_fill(dup, -NEG), torch.arange(b, device=pos.device))


def left_pad(rows: list[np.ndarray], n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Dense+1 ids, newest ``n`` per row, right-aligned (newest in the last column)."""
    out = np.zeros((len(rows), n), np.int64)
    for i, r in enumerate(rows):
        r = r[-n:]
        if r.size:
            out[i, n - r.size:] = r + 1
    x = torch.as_tensor(out, device=device)
    return x, (x > 0).float()


_KEEP16 = 65536  # dropout draws 16-bit uniforms


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` with a cheaper mask: one 64-bit random draw gives four 16-bit uniforms,
    so the mask costs a third of ``bernoulli_``'s per-entry draw (it was 15-20% of a SASRec
    step). Keeps an entry with probability ``1 - p`` (to 1/65536) and scales by ``1 / (1 - p)``."""
    if not training or p <= 0.0:
        return x
    n = x.numel()
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= int(-32768 + round(p * _KEEP16))
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class CausalBlock(nn.Module):
    """One pre-norm transformer layer (``nn.TransformerEncoderLayer(norm_first=True,
    activation="gelu")``'s computation and initialisation) through
    :func:`torch.nn.functional.scaled_dot_product_attention`. Dropout sits on the two residual
    branches and inside the feed-forward, not on the attention weights: dropping ``B x H x n x n``
    attention weights drew a random number per entry and was half of SASRec's training time
    at N = 200, for no validation recall (docs/model.md)."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        nn.init.xavier_uniform_(self.qkv.weight)  # as nn.MultiheadAttention
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        p, train = self.dropout, self.training
        x = x + dropout(self.out(a.transpose(1, 2).reshape(b, n, d)), p, train)
        h = self.ff2(dropout(F.gelu(self.ff1(self.norm2(x))), p, train))
        return x + dropout(h, p, train)


class SASRec(nn.Module):
    """Causal self-attention over the newest ``n`` items; user vector = last position."""

    def __init__(self, split: Split, cfg: TrainConfig, n: int, layers: int = 2, heads: int = 2):
        super().__init__()
        d = cfg.dim
        self.n = n
        self.items = ItemTower(len(split.vocab), split.table.num_contexts, d, split.item_contexts)
        self.pos = nn.Embedding(n, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(CausalBlock(d, heads, 2 * d, cfg.dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.register_buffer("causal", torch.triu(torch.full((n, n), -NEG), 1))  # finite: no NaN

    def seq_states(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.items.emb(x) + self.pos.weight.unsqueeze(0)
        # left padding; finite masks so fully padded query rows stay finite
        attn = self.causal.unsqueeze(0).unsqueeze(0) + ((mask - 1.0) * NEG)[:, None, None, :]
        for block in self.blocks:
            h = block(h, attn)
        return F.normalize(self.norm(h), dim=-1, eps=1e-6)

    def user_vectors(self, rows: list[np.ndarray]) -> torch.Tensor:
        x, m = left_pad(rows, self.n, self.causal.device)
        return self.seq_states(x, m)[:, -1]


class MultiInterest(nn.Module):
    """ComiRec-SA: ``n_int`` self-attentive interest vectors over the newest ``n`` items."""

    def __init__(self, split: Split, cfg: TrainConfig, n: int = 50, n_int: int = 4):
        super().__init__()
        d = cfg.dim
        self.n, self.n_int = n, n_int
        self.items = ItemTower(len(split.vocab), split.table.num_contexts, d, split.item_contexts)
        self.pos = nn.Embedding(n, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.att = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, n_int))
        self.proj = nn.Linear(d, d)

    def interests(self, rows: list[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """``rows``: dense-id rows (oldest first), or their :func:`left_pad` matrix."""
        if isinstance(rows, torch.Tensor):
            x, m = rows, (rows > 0).float()
        else:
            x, m = left_pad(rows, self.n, self.pos.weight.device)
        e = self.items.emb(x)
        a = self.att(e + self.pos.weight.unsqueeze(0)).transpose(1, 2)  # B,K,n
        a = torch.softmax(a + (m.unsqueeze(1) - 1.0) * NEG, dim=-1) * m.unsqueeze(1)
        return F.normalize(self.proj(a @ e), dim=-1, eps=1e-6)  # B,K,d


def train_sasrec(split: Split, cfg: TrainConfig, n: int, val_fn=None, progress=True,
                 max_targets: int = 1024) -> FitResult:
    """Each epoch covers every training target once: each user's training prefix is cut
    into windows of ``n`` (newest first); the loss uses up to ``max_targets`` random
    positions of the batch (in-batch negatives)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.threads, device)
    rng = np.random.default_rng(cfg.seed)
    model = SASRec(split, cfg, n).to(device)
    log_q = item_log_q(split).to(device)
    seqs = []
    for u in split.users:
        lo, hi = split.train_range(u)
        d = split.vocab.dense(u.items[:hi])
        for end in range(hi, lo, -n):
            s = max(0, end - n - 1)
            seqs.append(d[s:end])  # inputs d[s:end-1], targets d[s+1:end]
    win_batch = max(2, cfg.batch // 8)

    def batches(epoch: int):
        perm = rng.permutation(len(seqs))
        for s in range(0, perm.size, win_batch):
            chunk = [seqs[i] for i in perm[s:s + win_batch]]

            def closure(chunk=chunk):
                x, m = left_pad([c[:-1] for c in chunk], n, device)
                y, _ = left_pad([c[1:] for c in chunk], n, device)
                h = model.seq_states(x, m)
                valid = (y > 0).reshape(-1).nonzero().squeeze(1)
                if valid.numel() > max_targets:
                    valid = valid[torch.as_tensor(rng.choice(valid.numel(), max_targets, replace=False), device=device)]
                user = h.reshape(-1, h.shape[-1])[valid]
                return inbatch_loss(user, y.reshape(-1)[valid] - 1, model.items, log_q, cfg.tau)
            targets = sum(max(0, len(c) - 1) for c in chunk)
            yield closure, min(targets, max_targets)

    return fit(model, batches, cfg.epochs, cfg.lr, cfg.weight_decay, val_fn, f"sasrec{n}", progress)


def train_multi_interest(split: Split, cfg: TrainConfig, n: int = 50, n_int: int = 4,
                         val_fn=None, progress=True) -> FitResult:
    """Same sampled (user, t) examples as LongRetriever; the interest closest to the target
    is trained (ComiRec's hard selection)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, cfg.threads, device)
    rng = np.random.default_rng(cfg.seed)
    model = MultiInterest(split, cfg, n, n_int).to(device)
    log_q = item_log_q(split).to(device)
    index = EventIndex.of(split)

    def batches(epoch: int):
        ev = training_events(split, index, cfg.budget, rng)
        for s in range(0, ev.size, cfg.batch):
            b = ev[s:s + cfg.batch]
            if b.size < 2:
                continue

            def closure(b=b):
                rows = torch.as_tensor(index.windows(b, n), device=device)
                pos = torch.as_tensor(index.items[b], device=device)
                ints = model.interests(rows)
                with torch.no_grad():
                    pick = (ints @ model.items(pos + 1).unsqueeze(-1)).squeeze(-1).argmax(1)
                user = ints[torch.arange(ints.shape[0], device=device), pick]
                return inbatch_loss(user, pos, model.items, log_q, cfg.tau)
            yield closure, b.size

    return fit(model, batches, cfg.epochs, cfg.lr, cfg.weight_decay, val_fn, "multi_interest", progress)
