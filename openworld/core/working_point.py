"""Working points: the score threshold that keeps a chosen share of normal traffic.

A threshold set on the scores of the very rows a model was fitted on keeps
fewer unseen rows than promised (the model is closer to its own rows). The
scores used here are *held out*: each row is scored by a model whose
statistics exclude it (cross-fitting by subtraction, exact and cheap), or
they come from rows the user held back (``set_working_point``).

The threshold is the split-conformal quantile: with m held-out scores sorted
ascending, ``τ = s_(⌊(m + 1)(1 − t)⌋)``, so that an exchangeable new row is
kept with probability at least ``t`` (Vovk et al. 2005; Lei et al. 2018).

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


def conformal_threshold(scores: np.ndarray, target_tpr: float) -> float:
    """Score threshold keeping ≥ ``target_tpr`` of rows exchangeable with ``scores: (m,)``.

    Too few scores to promise that share (m < 1/(1 − t) − 1) give −inf: keep everything.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.floor((scores.size + 1) * (1.0 - target_tpr))
    return -math.inf if rank < 1 else float(scores[rank - 1])


@dataclass(frozen=True)
class HeldOutScores:
    """Held-out scores (m,) with the class index (m,) of the row each came from.

    ``represents`` is the sample weight of the rows these scores stand for, so
    that scores from a later ``partial_fit`` are mixed in proportion to data.
    Only scores and class indices are kept, never rows.
    """

    values: np.ndarray
    class_index: np.ndarray
    represents: float

    def combined(self, other: HeldOutScores, capacity: int, rng: np.random.Generator) -> HeldOutScores:
        """Both sets mixed in proportion to the rows they stand for, at most ``capacity`` scores."""
        total = self.represents + other.represents
        size = min(capacity, self.values.size + other.values.size)
        take_self = min(self.values.size, round(size * self.represents / total)) if total > 0 else 0
        take_other = min(other.values.size, size - take_self)
        take_self = min(self.values.size, size - take_other)
        keep_self = rng.choice(self.values.size, take_self, replace=False)
        keep_other = rng.choice(other.values.size, take_other, replace=False)
        return HeldOutScores(
            np.concatenate([self.values[keep_self], other.values[keep_other]]),
            np.concatenate([self.class_index[keep_self], other.class_index[keep_other]]),
            total,
        )

    def remapped(self, new_index: np.ndarray) -> HeldOutScores:
        """Class indices renumbered by ``new_index`` (old → new, −1 = forgotten: its scores dropped)."""
        mapped = new_index[self.class_index]
        keep = mapped >= 0
        share = keep.mean() if keep.size else 1.0
        return HeldOutScores(self.values[keep], mapped[keep], self.represents * float(share))
