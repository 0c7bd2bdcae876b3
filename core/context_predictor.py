"""The learned next-context predictor: the second way to choose a user's contexts.

The default choice (:func:`longretriever.core.multicontext.context_weights`) ranks contexts by
recency-weighted frequency. The predictor instead estimates ``P(next event's context | the
contexts of the newest events)`` with a multinomial logistic regression over a few fixed
features of that context sequence, so it can learn e.g. that a burst in one context is short
lived, that some contexts follow others, or that a dormant interest comes back:

* for each decay length ``tau`` in ``taus`` (in events): the recency-weighted context
  histogram ``h_tau`` (newest event weighs 1, the one before ``exp(-1/tau)``, ...) normalised
  to sum 1, and ``log(h_tau + EPS)``;
* logits = ``features @ weight + bias``; weights for a user = softmax over the contexts.

Only the newest ``window`` contexts are read (the same window the serving state reads for the
frequency choice), and the arithmetic is plain float64 numpy, so offline evaluation and online
serving compute bit-identical weights from the same history. Pure: no I/O. The weights live in
the model bundle as ``context_predictor.json`` (:meth:`ContextPredictor.to_json`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from longretriever.core.errors import BundleError
from longretriever.core.multicontext import DEFAULT_WINDOW

DEFAULT_TAUS = (2.0, 20.0, 200.0)
EPS = 1e-3


def num_features(num_contexts: int, taus: tuple[float, ...] = DEFAULT_TAUS) -> int:
    return 2 * len(taus) * num_contexts


def predictor_features(recent_contexts: np.ndarray, num_contexts: int,
                       taus: tuple[float, ...] = DEFAULT_TAUS,
                       window: int = DEFAULT_WINDOW) -> np.ndarray:
    """float64 [F] features of a context sequence given oldest first (only the newest
    ``window`` count; contexts outside ``[0, num_contexts)`` are ignored). An empty sequence
    gives all-zero histograms."""
    ctx = np.asarray(recent_contexts, dtype=np.int64)
    ctx = ctx[-window:] if window > 0 else ctx[:0]
    keep = (ctx >= 0) & (ctx < num_contexts)
    every = bool(keep.all())
    ctx = ctx if every else ctx[keep]
    parts = []
    for tau in taus:
        w = _decay(float(tau), keep.size)  # newest last: exp(-age / tau), age = events after it
        w = w if every else w[keep]
        h = np.bincount(ctx, weights=w, minlength=num_contexts).astype(np.float64)
        total = h.sum()
        if total > 0:
            h = h / total
        parts.append(h)
        parts.append(np.log(h + EPS))
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


@functools.lru_cache(maxsize=64)
def _decay_table(tau: float, n: int) -> np.ndarray:
    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    out = np.exp(-age / tau)
    out.flags.writeable = False
    return out


def _decay(tau: float, n: int) -> np.ndarray:
    """``exp(-age / tau)`` for ages n-1 .. 0 (oldest first): the same arithmetic every call,
    computed once per (tau, power-of-two length) and sliced."""
    size = 1 << max(0, n - 1).bit_length()
    return _decay_table(tau, size)[size - n:]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ContextPredictor:
    weight: np.ndarray  # float64 [F, C]
    bias: np.ndarray  # float64 [C]
    taus: tuple[float, ...] = DEFAULT_TAUS
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        c = self.bias.shape[0] if self.bias.ndim == 1 else -1
        if self.weight.ndim != 2 or self.weight.shape != (num_features(c, self.taus), c):
            raise BundleError(f"context predictor: weight shape {self.weight.shape} does not fit "
                              f"{c} contexts and taus {self.taus}")
        if not (np.all(np.isfinite(self.weight)) and np.all(np.isfinite(self.bias))):
            raise BundleError("context predictor: non-finite weights")
        if self.window <= 0:
            raise BundleError(f"context predictor: window must be > 0, got {self.window}")

    @property
    def num_contexts(self) -> int:
        return int(self.bias.shape[0])

    def features(self, recent_contexts: np.ndarray) -> np.ndarray:
        return predictor_features(recent_contexts, self.num_contexts, self.taus, self.window)

    def probabilities(self, recent_contexts: np.ndarray) -> np.ndarray:
        """float64 [C]: the predicted distribution of the next event's context."""
        return softmax(self.features(recent_contexts) @ self.weight + self.bias)

    def weights(self, recent_contexts: np.ndarray) -> dict[int, float]:
        """Context -> probability for every context, or ``{}`` for an empty history (the
        caller's cold-start path, exactly as with the frequency choice)."""
        if np.asarray(recent_contexts).size == 0:
            return {}
        p = self.probabilities(recent_contexts)
        return {int(c): float(p[c]) for c in range(p.size)}

    # ---- bundle file ------------------------------------------------------------------
    def to_json(self, extra: dict[str, Any] | None = None) -> str:
        """Exact round trip: Python floats serialise to the shortest repr that parses back."""
        doc = {"kind": "logistic", "taus": list(self.taus), "window": self.window, "eps": EPS,
               "num_contexts": self.num_contexts, "weight": self.weight.tolist(),
               "bias": self.bias.tolist(), **(extra or {})}
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "ContextPredictor":
        try:
            doc = json.loads(text)
            if doc.get("kind") != "logistic" or float(doc.get("eps", EPS)) != EPS:
                raise ValueError(f"unsupported predictor kind/eps {doc.get('kind')!r}/{doc.get('eps')!r}")
            return cls(np.asarray(doc["weight"], np.float64), np.asarray(doc["bias"], np.float64),
                       tuple(float(t) for t in doc["taus"]), int(doc["window"]))
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"context_predictor.json is not a valid predictor: {exc}") from exc
