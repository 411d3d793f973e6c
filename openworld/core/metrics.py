"""Detection metrics with in-distribution as the positive class (DESIGN.md's convention).

Thin wrappers over ``sklearn.metrics`` so every report names the same
quantities the same way.

>>> import numpy as np
>>> scores_in, scores_out = np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 3.5])
>>> auroc(scores_in, scores_out)
0.888...
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _stack(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    scores_in, scores_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if scores_in.size == 0 or scores_out.size == 0:
        raise ValueError("AUROC needs both in-distribution and out-of-distribution scores; one set is empty")
    return np.r_[np.ones(scores_in.size), np.zeros(scores_out.size)], np.r_[scores_in, scores_out]


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve; scores higher = more in-distribution."""
    return float(roc_auc_score(*_stack(scores_in, scores_out)))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """Share of OOD rows accepted when ``tpr`` of in-distribution rows are kept (FPR@95 by default)."""
    fpr, tpr_curve, _ = roc_curve(*_stack(scores_in, scores_out))
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])
