"""Out-of-distribution scores over a fitted Gaussian head; higher = more in-distribution.

Every score reads the (n, C) squared Mahalanobis distances the classifier
computes anyway, so scoring adds no second pass over the classes.

- ``mahalanobis`` (Lee et al. 2018): ``−min_k D_k(x)``.
- ``relative_mahalanobis`` (Ren et al. 2021, "A Simple Fix to Mahalanobis
  Distance for Improving Near-OOD Detection"): ``−min_k (D_k(x) − D_0(x))``
  with ``D_0`` the distance to one background Gaussian fitted on every row;
  it removes the directions every class shares, which dominate ``D_k``.
- ``likelihood``: ``log Σ_k π_k N(x; μ_k, Σ_k)``, the class-mixture density.
- ``low_variance_mahalanobis`` (Rippel et al. 2020, "Modeling the Distribution
  of Normal Data in Pre-Trained Deep Features for Anomaly Detection"):
  ``−min_k D_k`` measured only along the principal components of least
  variance of the pooled covariance, where they found the anomaly signal.
- ``covariance_ensemble``: the sum of the relative Mahalanobis scores under the
  tied, diagonal and per-class covariances, all from the same statistics. Each
  is twice a log likelihood ratio (class against background) up to a constant,
  so the sum is the log of their product: a product of experts that agree on
  typical rows and disagree on atypical ones in different directions. It costs
  the three scorings together, the per-class one dominating (n·C·d² for C classes).
  ``covariance`` sets only its posteriors; it keeps every class's scatter anyway,
  so ``covariance="full"`` costs no extra memory (and gave the most accurate
  posteriors on docs/benchmarks.md's datasets).

- ``kernel_density``: the log density of a Gaussian kernel density estimate over
  a sample of the fitted rows (:mod:`openworld.core.kernel_density`), for normal
  data of many modes that no single Gaussian per class follows. It keeps rows.

``"auto"`` is relative Mahalanobis with two classes or more and Mahalanobis
with one, where a class compared with itself carries no signal.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
SCORES = (
    "mahalanobis", "relative_mahalanobis", "likelihood", "low_variance_mahalanobis", "covariance_ensemble",
    "kernel_density",
)
#: The covariance structures whose relative Mahalanobis scores ``covariance_ensemble`` sums.
ENSEMBLE_STRUCTURES = ("tied", "diag", "full")


#: Scores that compare a class with the background of all classes: with one class they are zero everywhere.
NEEDS_TWO_CLASSES = ("relative_mahalanobis", "covariance_ensemble")


def resolve_score(score: str, n_classes: int) -> str:
    if score == "auto":
        return "relative_mahalanobis" if n_classes >= 2 else "mahalanobis"
    if score not in SCORES:
        raise ValueError(f"score must be 'auto' or one of {SCORES}, got {score!r}")
    if score in NEEDS_TWO_CLASSES and n_classes < 2:
        raise ValueError(one_class_message(score))
    return score


def one_class_message(score: str) -> str:
    return (f"score={score!r} compares each class with the background of all classes, which with one class is "
            "the class itself: every score would be 0. Use score='auto' or 'mahalanobis' for a one-class model")


def mahalanobis(distances: Tensor) -> Tensor:
    """``−min_k D_k``: distances (n, C) → (n,)."""
    return -distances.min(dim=1).values


def relative_mahalanobis(distances: Tensor, background_distances: Tensor) -> Tensor:
    """``D_0 − min_k D_k``: distances (n, C), background (n,) → (n,)."""
    return background_distances - distances.min(dim=1).values


def likelihood(log_joint: Tensor) -> Tensor:
    """``logsumexp_k (log π_k + log N_k)``: log joint densities (n, C) → (n,)."""
    return torch.logsumexp(log_joint, dim=1)
