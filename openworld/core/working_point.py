"""Working points: the score threshold that keeps a chosen share of normal traffic.

A threshold set on the scores of the very rows a model was fitted on keeps
fewer unseen rows than promised (the model is closer to its own rows). The
scores used here are *held out*: each row is scored by a model whose
statistics exclude it (cross-fitting by subtraction, exact and cheap), or
they come from rows the user held back (``set_working_point``).

The threshold is the split-conformal quantile: with m held-out scores sorted
ascending, ``τ = s_(⌊(m + 1)(1 − t)⌋)``, so that an exchangeable new row is
kept with probability at least ``t`` (Vovk et al. 2005; Lei et al. 2018).
Rows fitted with sample weights stand for that many rows: their scores carry
the weights, and ``τ`` is the largest score whose cumulative weight is at most
``(1 − t)(W + w̄)`` (total weight ``W``, the new row weighing the mean ``w̄``),
which is the formula above when every weight is 1.

>>> import numpy as np
>>> scores = np.arange(1.0, 101.0)       # 100 held-out scores 1..100
>>> conformal_threshold(scores, 0.95)    # keeps 96 of 100
5.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def validate_target_tpr(target_tpr) -> None:
    if target_tpr is None:
        return
    if isinstance(target_tpr, bool) or not isinstance(target_tpr, (int, float)) or not 0.0 < target_tpr < 1.0:
        raise ValueError(f"target_tpr must be a float in (0, 1) or None, got {target_tpr!r}")


def conformal_threshold(scores: np.ndarray, target_tpr: float, weights: np.ndarray | None = None) -> float:
    """Score threshold keeping ≥ ``target_tpr`` of the weight of rows exchangeable with ``scores: (m,)``
    (``weights: (m,)``, positive; None: all 1).

    Too few scores to promise that share (no score's weight fits under ``(1 − t)(W + w̄)``; unweighted:
    m < 1/(1 − t) − 1) give −inf: keep everything.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.ones(scores.size) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    cumulative = np.cumsum(weights[order])
    total = float(cumulative[-1]) if scores.size else 0.0
    allowed = (1.0 - target_tpr) * (total + total / max(scores.size, 1))
    # how many scores fit under the allowed weight; the relative slack absorbs rounding where (m + 1)(1 − t)
    # is a whole number (0.1 · 10 computes to 0.99999…, which would drop a rank)
    rank = int(np.searchsorted(cumulative, allowed * (1 + 1e-12), side="right"))
    return -math.inf if rank < 1 else float(scores[order[rank - 1]])


@dataclass(frozen=True)
class HeldOutScores:
    """Held-out scores (m,) with the class index (m,) and the sample weight (m,) of the row each came from.

    ``represents`` is the sample weight of the rows these scores stand for, so
    that scores from a later ``partial_fit`` are mixed in proportion to data.
    Only scores, class indices and weights are kept, never rows.
    """

    values: np.ndarray
    class_index: np.ndarray
    represents: float
    weights: np.ndarray

    def threshold(self, target_tpr: float) -> float:
        """The conformal threshold of these scores, each counted by its weight."""
        return conformal_threshold(self.values, target_tpr, self.weights)

    def combined(self, other: HeldOutScores, capacity: int, rng: np.random.Generator) -> HeldOutScores:
        """Both sets mixed in proportion to the rows they stand for, at most ``capacity`` scores: each set's
        kept weights are rescaled to sum to what it represents."""
        total = self.represents + other.represents
        size = min(capacity, self.values.size + other.values.size)
        take_self = min(self.values.size, round(size * self.represents / total)) if total > 0 else 0
        take_other = min(other.values.size, size - take_self)
        take_self = min(self.values.size, size - take_other)
        parts = [part.kept(rng.choice(part.values.size, take, replace=False)) for part, take in ((self, take_self), (other, take_other))]
        return HeldOutScores(
            np.concatenate([part.values for part in parts]),
            np.concatenate([part.class_index for part in parts]),
            total,
            np.concatenate([np.empty(0)] + [part.weights * (part.represents / part.weights.sum()) for part in parts if part.values.size]),
        )

    def kept(self, keep: np.ndarray) -> HeldOutScores:
        """The scores at positions ``keep``, still representing the same rows."""
        return HeldOutScores(self.values[keep], self.class_index[keep], self.represents, self.weights[keep])

    def remapped(self, new_index: np.ndarray) -> HeldOutScores:
        """Class indices renumbered by ``new_index`` (old → new, −1 = forgotten: its scores dropped)."""
        mapped = new_index[self.class_index]
        keep = mapped >= 0
        share = self.weights[keep].sum() / self.weights.sum() if keep.size else 1.0
        return HeldOutScores(self.values[keep], mapped[keep], self.represents * float(share), self.weights[keep])
