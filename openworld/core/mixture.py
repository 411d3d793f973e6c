"""Gaussian mixtures inside a class, fitted by EM on the statistics code.

A class whose rows form several clusters (a product photographed from two
sides, normal traffic with two regimes) is one Gaussian badly. Each class
may hold M components ("Hierarchical Visual Categories Modeling", 2024); EM
alternates responsibilities (E-step, the Gaussian head) and component
statistics (M-step, :meth:`ClassStatistics.from_responsibilities`), so the
components are shrunk and scored exactly like classes. ``components="auto"``
picks M per class by BIC (Schwarz 1978).

Where exactness ends: a mixture depends on the rows it was fitted on.
``forget`` (drop a class's components) stays exact; ``partial_fit`` is one
step of online EM (new rows are assigned by the current responsibilities
and merged); ``unlearn`` is refused.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.cluster import KMeans

from openworld.core.covariance import estimate_covariance
from openworld.core.gaussian import GaussianHead
from openworld.core.statistics import ClassStatistics

Tensor = torch.Tensor
MAX_AUTO_COMPONENTS = 5
EM_ITERATIONS = 100
EM_TOLERANCE = 1e-6  # relative change of the mean log-likelihood per row


def segment_logsumexp(values: Tensor, segments: Tensor, n_segments: int) -> Tensor:
    """(n, S) log-sum-exp of the columns of ``values: (n, M)`` grouped by ``segments: (M,)``.

    Shifting by each segment's own maximum keeps every segment finite, even one
    far below the row's best (a plain max-shift would underflow it to −inf).
    """
    index = segments.to(values.device).expand_as(values)
    top = torch.full((values.shape[0], n_segments), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(1, index, values, reduce="amax", include_self=True)
    safe_top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.zeros_like(top).scatter_add(1, index, torch.exp(values - safe_top.gather(1, index)))
    return torch.log(sums) + safe_top


def component_head(stats: ClassStatistics, structure: str, shrinkage) -> GaussianHead:
    """Gaussian head of M components with mixture weights W_m / ΣW as log priors."""
    estimate = estimate_covariance(stats, structure, shrinkage)
    total = stats.weights.sum()
    center = (stats.weights @ stats.means) / total
    return GaussianHead.build(stats.means, estimate, torch.log(stats.weights / total), center, shrinkage is not None)


def mixture_log_likelihood(head: GaussianHead, X: Tensor) -> tuple[Tensor, Tensor]:
    """Total log-likelihood and the (n, M) responsibilities of ``X: (n, d)``."""
    joint = head.log_likelihoods(head.squared_mahalanobis(X)) + head.log_priors
    log_density = torch.logsumexp(joint, dim=1)
    return log_density.sum(), torch.exp(joint - log_density[:, None])


def fit_mixture(X: Tensor, n_components: int, structure: str, shrinkage, seed: int) -> tuple[ClassStatistics, float]:
    """EM for M components on the rows ``X: (n, d)`` of one class; returns their statistics and log-likelihood.

    Starts from k-means++ (scikit-learn, seeded); components left empty are dropped.
    """
    X = X.to(torch.float64)
    n_components = min(n_components, X.shape[0])
    if n_components == 1:
        stats = ClassStatistics.from_rows(X, torch.zeros(X.shape[0], dtype=torch.long), 1)
        log_likelihood, _ = mixture_log_likelihood(component_head(stats, structure, shrinkage), X)
        return stats, float(log_likelihood)
    labels = KMeans(n_components, n_init=3, random_state=seed).fit_predict(X.cpu().numpy())
    R = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.long), n_components).to(X)
    previous = -math.inf
    for _ in range(EM_ITERATIONS):
        stats = ClassStatistics.from_responsibilities(X, R)
        stats = stats.select((stats.weights > 1e-9 * X.shape[0]).nonzero().flatten().tolist())
        log_likelihood, R = mixture_log_likelihood(component_head(stats, structure, shrinkage), X)
        current = float(log_likelihood) / X.shape[0]
        if abs(current - previous) <= EM_TOLERANCE * max(1.0, abs(current)):
            break
        previous = current
    stats = ClassStatistics.from_responsibilities(X, R)
    return stats.select((stats.weights > 1e-9 * X.shape[0]).nonzero().flatten().tolist()), float(log_likelihood)


def free_parameters(n_components: int, d: int, structure: str) -> int:
    """Parameters of an M-component mixture: means, weights and covariances of ``structure``."""
    covariance = {"tied": d * (d + 1) // 2, "full": n_components * d * (d + 1) // 2, "diag": n_components * d}[structure]
    return n_components * d + (n_components - 1) + covariance


def fit_class_components(X: Tensor, components, structure: str, shrinkage, seed: int) -> ClassStatistics:
    """Component statistics of one class: ``components`` an int, or "auto" (lowest BIC up to MAX_AUTO_COMPONENTS)."""
    if components != "auto":
        return fit_mixture(X, int(components), structure, shrinkage, seed)[0]
    best, best_bic = None, math.inf
    n, d = X.shape
    for m in range(1, min(MAX_AUTO_COMPONENTS, n) + 1):
        stats, log_likelihood = fit_mixture(X, m, structure, shrinkage, seed)
        bic = -2 * log_likelihood + free_parameters(stats.n_classes, d, structure) * math.log(n)
        if bic < best_bic:
            best, best_bic = stats, bic
    return best


def validate_components(components) -> None:
    if components == "auto":
        return
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
        raise ValueError(f"components must be a positive int or 'auto', got {components!r}")
