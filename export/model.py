"""The LongRetriever two-tower model (torch) and its sampled-softmax loss.

Item tower: ``normalize(id_emb[i] + ctx_emb[context(i)])``.

User tower (one vector per (user, context)), built for cost -- O(L * H * d) per vector:

* ``c`` = user-side context embedding, ``r`` = short-term summary of the recent
  cross-context window (``recent_heads`` context-queried attention heads over item +
  recency-bucket embeddings, plus the masked mean, projected to ``d``; W is small);
* ``H`` queries ``q_h = MLP_q([c, r])`` live directly in item-embedding space, so target
  attention over the ``L <= K`` hard-searched items needs no key/value projection of the
  sequence: ``a_h = softmax_masked(E q_h / sqrt(d) + bias[age])``, ``p_h = a_h^T E``
  (E = item id embeddings, bias = learned recency-bucket bias);
* ``u = normalize(MLP([p_1..p_H, mean(E), c, r]) + c)``.

Masked softmax adds ``(mask - 1) * 1e4`` (finite) and multiplies by the mask afterwards, so an
empty or fully padded row attends to nothing and gives a finite vector.

The loss is a sampled softmax over in-batch positives plus ``n_ctx_neg`` negatives drawn from
the positive's own context, each logit corrected by ``log`` of its expected sample count
(logQ), divided by the temperature ``tau``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longretriever.core.features import AGE_BUCKETS, INPUT_NAMES

MASK_NEG = 1e4


@dataclass
class ModelConfig:
    num_items: int
    num_contexts: int
    dim: int = 64
    heads: int = 4
    recent_heads: int = 2
    hidden: int = 128
    tau: float = 0.07
    n_ctx_neg: int = 64
    ctx_neg_alpha: float = 0.75  # in-context negatives ~ freq ** alpha
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class LongRetrieverModel(nn.Module):
    def __init__(self, cfg: ModelConfig, item_contexts: np.ndarray):
        super().__init__()
        self.cfg = cfg
        d, h = cfg.dim, cfg.heads
        self.item_emb = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.item_ctx_emb = nn.Embedding(cfg.num_contexts, d)
        self.user_ctx_emb = nn.Embedding(cfg.num_contexts, d)
        self.age_bias = nn.Embedding(AGE_BUCKETS, 1)  # recency-bucket bias on attention scores
        hr = cfg.recent_heads
        self.rec_pos = nn.Embedding(AGE_BUCKETS, d, padding_idx=0)  # recency bucket, recent window
        self.rec_query = nn.Linear(d, hr * d)
        self.rec_proj = nn.Linear((hr + 1) * d, d)
        self.query = nn.Sequential(nn.Linear(2 * d, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, h * d))
        self.out = nn.Sequential(nn.Linear(h * d + 3 * d, cfg.hidden), nn.GELU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, d))
        ic = torch.as_tensor(np.asarray(item_contexts, dtype=np.int64))
        self.register_buffer("item_ctx", torch.cat([torch.zeros(1, dtype=torch.long), ic]), persistent=True)
        for emb in (self.item_emb, self.item_ctx_emb, self.user_ctx_emb, self.rec_pos):
            nn.init.normal_(emb.weight, std=0.05)
        nn.init.zeros_(self.age_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()  # padding row stays zero (padding_idx: no grad)
            self.rec_pos.weight[0].zero_()

    # ---- item tower -------------------------------------------------------------------
    def item_vectors(self, idx1: torch.Tensor) -> torch.Tensor:
        """``idx1`` = dense index + 1 (embedding row)."""
        v = self.item_emb(idx1) + self.item_ctx_emb(self.item_ctx[idx1])
        return F.normalize(v, dim=-1, eps=1e-6)

    def all_item_vectors(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(1, self.cfg.num_items + 1, device=self.item_ctx.device))

    # ---- user tower -------------------------------------------------------------------
    def forward(self, ctx_items: torch.Tensor, ctx_age: torch.Tensor, ctx_mask: torch.Tensor,
                recent_items: torch.Tensor, recent_age: torch.Tensor, recent_mask: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        d, h = self.cfg.dim, self.cfg.heads
        b = context.shape[0]
        e = self.item_emb(ctx_items)  # B,L,d; padding rows are exactly zero
        c = self.user_ctx_emb(context)
        r = self.recent(recent_items, recent_age, recent_mask, c)
        q = self.query(torch.cat([c, r], dim=-1)).reshape(b, h, d)
        scores = torch.matmul(q, e.transpose(1, 2)) * (1.0 / d ** 0.5)  # B,H,L
        mask = ctx_mask.unsqueeze(1)  # B,1,L
        scores = scores + (self.age_bias(ctx_age).squeeze(-1).unsqueeze(1) + (mask - 1.0) * MASK_NEG)
        att = torch.softmax(scores, dim=-1) * mask
        mean_w = mask / mask.sum(-1, keepdim=True).clamp(min=1.0)  # masked mean as one more head
        pooled = torch.matmul(torch.cat([att, mean_w], dim=1), e).reshape(b, (h + 1) * d)
        u = self.out(torch.cat([pooled, c, r], dim=-1)) + c
        return F.normalize(u, dim=-1, eps=1e-6)

    def recent(self, items: torch.Tensor, age: torch.Tensor, mask: torch.Tensor,
               c: torch.Tensor) -> torch.Tensor:
        """Short-term summary: context-queried attention over the recent cross-context window
        (item + recency-bucket embeddings; padding rows are zero) plus its masked mean."""
        d, hr = self.cfg.dim, self.cfg.recent_heads
        b = c.shape[0]
        er = self.item_emb(items) + self.rec_pos(age)  # B,R,d
        m = mask.unsqueeze(1)  # B,1,R
        qr = self.rec_query(c).reshape(b, hr, d)
        sr = torch.matmul(qr, er.transpose(1, 2)) * (1.0 / d ** 0.5) + (m - 1.0) * MASK_NEG
        ar = torch.softmax(sr, dim=-1) * m
        mean_w = m / m.sum(-1, keepdim=True).clamp(min=1.0)
        pooled = torch.matmul(torch.cat([ar, mean_w], dim=1), er).reshape(b, (hr + 1) * d)
        return self.rec_proj(pooled)

    def encode_np(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self(*[torch.as_tensor(inputs[n]) for n in INPUT_NAMES]).numpy()


class ContextNegativeSampler:
    """Samples negatives from a given context with probability ~ freq ** alpha (vectorised
    over rows via one global cumulative sum ordered by context)."""

    def __init__(self, item_contexts: np.ndarray, freq: np.ndarray, num_contexts: int,
                 alpha: float = 0.75):
        ctx = np.asarray(item_contexts, dtype=np.int64)
        order = np.argsort(ctx, kind="stable")
        w = (np.asarray(freq, dtype=np.float64) + 1.0) ** alpha
        ws = w[order]
        cum = np.cumsum(ws)
        totals = np.bincount(ctx, weights=w, minlength=num_contexts)
        starts = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
        self.order = torch.as_tensor(order, dtype=torch.long)
        self.cum = torch.as_tensor(cum, dtype=torch.float64)
        self.starts = torch.as_tensor(starts, dtype=torch.float64)
        self.totals = torch.as_tensor(totals, dtype=torch.float64)
        self.prob = torch.as_tensor(w / np.maximum(totals[ctx], 1e-12), dtype=torch.float32)

    def to(self, device: torch.device) -> "ContextNegativeSampler":
        for name in ("order", "cum", "starts", "totals", "prob"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def sample(self, contexts: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
        """Dense indices [B, n] drawn from each row's context (rows of empty contexts get
        arbitrary items that the caller masks via ``prob``)."""
        u = torch.rand(contexts.shape[0], n, generator=gen, dtype=torch.float64, device=self.cum.device)
        target = self.starts[contexts].unsqueeze(1) + u * self.totals[contexts].unsqueeze(1)
        pos = torch.searchsorted(self.cum, target, right=True).clamp(max=self.cum.numel() - 1)
        return self.order[pos]


def sampled_softmax_loss(model: LongRetrieverModel, user: torch.Tensor, pos: torch.Tensor,
                         log_q: torch.Tensor, sampler: ContextNegativeSampler | None,
                         pos_ctx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``user`` [B,d] normalised, ``pos`` [B] dense indices, ``log_q`` [N] log probability of
    each item being a training positive (its frequency share)."""
    cfg = model.cfg
    b = pos.shape[0]
    v_pos = model.item_vectors(pos + 1)
    logits = user @ v_pos.T / cfg.tau - (log_q[pos] + float(np.log(b))).unsqueeze(0)
    dup = (pos.unsqueeze(0) == pos.unsqueeze(1)) & ~torch.eye(b, dtype=torch.bool, device=pos.device)
    logits = logits.masked_fill(dup, -MASK_NEG)
    parts = [logits]
    if sampler is not None and cfg.n_ctx_neg > 0:
        neg = sampler.sample(pos_ctx, cfg.n_ctx_neg, gen)  # B,n
        v_neg = model.item_vectors(neg + 1)
        nl = torch.einsum("bd,bnd->bn", user, v_neg) / cfg.tau
        nl = nl - torch.log(sampler.prob[neg] * cfg.n_ctx_neg)
        nl = nl.masked_fill(neg == pos.unsqueeze(1), -MASK_NEG)
        parts.append(nl)
    full = torch.cat(parts, dim=1)
    return F.cross_entropy(full, torch.arange(b, device=full.device))


def eager_encoder(state_path, model_config: dict, item_contexts: np.ndarray, threads: int = 1):
    """The bundle's eager torch model (``model.pt``) as ``feeds -> vectors`` with the inputs
    already built (for the encoder benchmark), or None when the bundle has no ``model.pt``."""
    from pathlib import Path

    if not Path(state_path).is_file():
        return None
    model = LongRetrieverModel(ModelConfig(**model_config), item_contexts)
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    torch.set_num_threads(max(1, threads))

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(*[torch.as_tensor(feeds[n]) for n in INPUT_NAMES]).numpy()
    return run
