"""Detection, calibration and working-point metrics, in-distribution as the positive class.

Conventions (DESIGN.md): scores are higher = more in-distribution; the
in-distribution (ID) rows are the positives, so "TPR" is the share of ID rows
kept and "FPR" the share of out-of-distribution (OOD) rows accepted. The
detection metrics are thin wrappers over ``sklearn.metrics`` so every report
names the same quantities the same way; calibration is computed here (top-label
ECE is not in scikit-learn).

>>> import numpy as np
>>> scores_in, scores_out = np.array([3.0, 4.0, 5.0]), np.array([1.0, 2.0, 3.5])
>>> auroc(scores_in, scores_out)
0.888...
>>> fpr_at_tpr(scores_in, scores_out, 0.95)      # keep all 3 ID rows: threshold 3.0 lets 3.5 in
0.333...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score, roc_curve

ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width bins


def _stack(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    """(y, s): y = 1 for ID rows, 0 for OOD rows; s = the scores in that order."""
    scores_in = np.asarray(scores_in, float).reshape(-1)
    scores_out = np.asarray(scores_out, float).reshape(-1)
    if scores_in.size == 0 or scores_out.size == 0:
        raise ValueError(
            "detection metrics need both in-distribution and out-of-distribution scores; "
            f"got {scores_in.size} in-distribution and {scores_out.size} out-of-distribution"
        )
    scores = np.r_[scores_in, scores_out]
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return np.r_[np.ones(scores_in.size), np.zeros(scores_out.size)], scores


# ---------------------------------------------------------------------- detection


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve, ID positive: ``P(s_in > s_out) + ½ P(s_in = s_out)``.

    The Mann–Whitney form of the AUC (Hanley & McNeil 1982); 0.5 is chance,
    1.0 separates every ID row from every OOD row.
    """
    return float(roc_auc_score(*_stack(scores_in, scores_out)))


def aupr_in(scores_in, scores_out) -> float:
    """Area under the precision–recall curve with ID rows as positives (AUPR-In).

    Average precision ``Σ_k (R_k − R_{k−1}) P_k`` over thresholds at each
    distinct score, ``P_k``/``R_k`` the precision/recall of "score ≥ τ_k is
    in-distribution" (sklearn's ``average_precision_score``; the AUPR-In of
    Hendrycks & Gimpel 2017). Chance level is the ID share of the rows.
    """
    y, s = _stack(scores_in, scores_out)
    return float(average_precision_score(y, s))


def aupr_out(scores_in, scores_out) -> float:
    """Area under the precision–recall curve with OOD rows as positives, ``−score`` ranking (AUPR-Out).

    As :func:`aupr_in` with the roles swapped (Hendrycks & Gimpel 2017).
    Chance level is the OOD share of the rows.
    """
    y, s = _stack(scores_in, scores_out)
    return float(average_precision_score(1.0 - y, -s))


def roc(scores_in, scores_out, *, drop_intermediate: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, ID positive: a row is kept when ``score ≥ threshold``.

    By default every distinct score is a threshold, so ``fpr``/``tpr`` are
    non-decreasing and start at (0, 0); ``drop_intermediate=True`` drops the
    points on straight segments (same curve, fewer points: for plotting).
    """
    fpr, tpr, thresholds = roc_curve(*_stack(scores_in, scores_out), drop_intermediate=drop_intermediate)
    return fpr, tpr, thresholds


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """Share of OOD rows accepted at the strictest threshold keeping ≥ ``tpr`` of ID rows (FPR@95 by default).

    ``FPR@t = min { FPR(τ) : TPR(τ) ≥ t }`` with ``TPR(τ) = #{s_in ≥ τ}/n_in``,
    ``FPR(τ) = #{s_out ≥ τ}/n_out`` (the FPR at 95 % TPR of Liang et al. 2018).
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    fpr_curve, tpr_curve, _ = roc(scores_in, scores_out)
    # A float tolerance so that e.g. 95 of 100 counts as 0.95.
    return float(fpr_curve[np.searchsorted(tpr_curve, tpr - 1e-12, side="left")])


# ---------------------------------------------------------------------- calibration


@dataclass(frozen=True, eq=False)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (Guo et al. 2017, fig. 1).

    ``edges``: (B + 1,) bin edges, bin m = (edges[m], edges[m + 1]] (the first
    bin also holds confidence 0); ``confidence``/``accuracy``: (B,) mean
    top-label confidence and accuracy of the rows in each bin (NaN where a
    bin is empty); ``count``: (B,) rows per bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """``Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|`` over non-empty bins."""
        n = self.count.sum()
        if n == 0:
            return float("nan")
        used = self.count > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.count[used] / n * gaps))


def _confidences(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    confidence = np.asarray(confidence, float).reshape(-1)
    correct = np.asarray(correct).reshape(-1)
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence ({confidence.size}) and correct ({correct.size}) differ in length")
    if confidence.size == 0:
        raise ValueError("calibration needs at least one row")
    if not np.isfinite(confidence).all() or (confidence < 0).any() or (confidence > 1).any():
        raise ValueError("confidences must be probabilities in [0, 1]")
    return confidence, correct.astype(bool)


def reliability_diagram(confidence, correct, n_bins: int = ECE_BINS) -> ReliabilityDiagram:
    """Bin ``confidence: (n,)`` (top-label probabilities) into ``n_bins`` equal-width bins of [0, 1].

    ``correct: (n,)`` says whether each row's top label was right. Bin m holds
    confidences in ``(m/B, (m+1)/B]``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence, correct = _confidences(confidence, correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / count
    return ReliabilityDiagram(edges=edges, confidence=mean_confidence, accuracy=accuracy, count=count)


def expected_calibration_error(confidence, correct, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    ``ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|`` over ``n_bins`` equal-width
    confidence bins; ``confidence: (n,)`` is the highest posterior of each row and
    ``correct: (n,)`` whether that class was the true one.

    >>> expected_calibration_error([0.8, 0.8, 0.8, 0.8], [True, True, False, False])
    0.3...
    """
    return reliability_diagram(confidence, correct, n_bins).ece


def top_label(proba, labels, classes) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)`` from posteriors ``proba: (n, C)`` in ``classes`` order and true ``labels: (n,)``."""
    proba = np.asarray(proba, float)
    classes = np.asarray(classes)
    best = proba.argmax(1)
    return proba[np.arange(len(proba)), best], classes[best] == np.asarray(labels)


# ---------------------------------------------------------------------- working point


def _decisions(rejected, is_ood) -> tuple[np.ndarray, np.ndarray]:
    rejected = np.asarray(rejected).reshape(-1)
    is_ood = np.asarray(is_ood).reshape(-1)
    if rejected.dtype != bool or is_ood.dtype != bool:
        raise ValueError("rejected and is_ood must be boolean arrays")
    if rejected.shape != is_ood.shape:
        raise ValueError(f"rejected ({rejected.size}) and is_ood ({is_ood.size}) differ in length")
    return rejected, is_ood


def ood_recall(rejected, is_ood) -> float:
    """Share of OOD rows rejected: ``#(rejected ∧ ood) / #ood`` (NaN without OOD rows)."""
    rejected, is_ood = _decisions(rejected, is_ood)
    if not is_ood.any():
        return float("nan")
    return float(recall_score(is_ood, rejected))


def ood_precision(rejected, is_ood) -> float:
    """Share of rejected rows that are OOD: ``#(rejected ∧ ood) / #rejected`` (NaN when nothing is rejected)."""
    rejected, is_ood = _decisions(rejected, is_ood)
    if not rejected.any():
        return float("nan")
    return float(precision_score(is_ood, rejected))


def in_distribution_kept(rejected, is_ood) -> float:
    """Share of ID rows kept (the realised TPR): ``#(¬rejected ∧ ¬ood) / #¬ood`` (NaN without ID rows)."""
    rejected, is_ood = _decisions(rejected, is_ood)
    if is_ood.all():
        return float("nan")
    return float(recall_score(~is_ood, ~rejected))
