"""The LongRetriever two-tower model (torch) and its in-context loss.

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

The loss (:func:`in_context_loss`) is the exact softmax, at temperature ``tau``, over every item
of the target's context except those the user consumed before the target: a context vector
only ever ranks its own context's items, and serving removes what the user has seen, so
training ranks exactly that candidate set. (The earlier sampled softmax -- in-batch positives
from every context plus frequency-sampled in-context negatives -- treated the user's own past
items as negatives, pushing each context vector away from the history it summarises;
docs/model.md has the measurements.)
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


def in_context_loss(model: LongRetrieverModel, user: torch.Tensor, pos: torch.Tensor, block: torch.Tensor,
                    excluded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact softmax over one context's items: the in-context ranking serving does.

    ``user`` [B, d] are the rows' vectors for the batch's context, ``block`` [S] the dense ids of
    every item of that context, ``pos`` [B] the position of each row's target inside ``block``.
    ``excluded`` = (rows, positions in ``block``) of what serving would exclude for the row --
    the items the user consumed before the target -- masked out of that row's softmax (a row's
    own target is never masked, so a repeat stays trainable)."""
    logits = user @ model.item_vectors(block + 1).T / model.cfg.tau  # B, S
    if excluded is not None and excluded[0].numel():
        rows, cols = excluded
        keep = cols != pos[rows]
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[rows[keep], cols[keep]] = True
        logits = logits.masked_fill(mask, -MASK_NEG)
    return F.cross_entropy(logits, pos)


def eager_encoder(state_path, model_config: dict, item_contexts: np.ndarray, threads: int = 1):
    """The bundle's eager torch model (``model.pt``) as ``feeds -> vectors`` with the inputs
    already built (for the encoder benchmark), or None when the bundle has no ``model.pt``."""
    from pathlib import Path

    if not Path(state_path).is_file():
        return None
    known = {k: v for k, v in model_config.items() if k in ModelConfig.__dataclass_fields__}
    model = LongRetrieverModel(ModelConfig(**known), item_contexts)
    model.load_state_dict(torch.load(state_path, weights_only=True))
    model.eval()
    torch.set_num_threads(max(1, threads))

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return model(*[torch.as_tensor(feeds[n]) for n in INPUT_NAMES]).numpy()
    return run
