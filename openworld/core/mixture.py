"""Gaussian mixtures inside a class, fitted by EM on the statistics code.

A class whose rows form several clusters (a product photographed from two
sides, normal traffic with two regimes) is one Gaussian badly. Each class
may hold M components ("Hierarchical Visual Categories Modeling", 2024); EM
alternates responsibilities (E-step, the Gaussian head) and component
statistics (M-step, :meth:`ClassStatistics.from_responsibilities`), so the
components are shrunk and scored exactly like classes. ``components="auto"``
picks M per class by held-out log-likelihood: EM on a seeded 80 % of the
class's rows for M = 1, 2, 4, 8, 16 (stopping at the first M that does not
improve), scored on the other 20 %, then a refit with the chosen M on every
row. Held-out likelihood judges the shrunk model actually used; BIC counts
parameters that shrinkage does not leave free, and it is asymptotic.

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
AUTO_COMPONENTS = (1, 2, 4, 8, 16)  # candidates of components="auto", in order
AUTO_VALIDATION_SHARE = 0.2  # share of a class's rows held out to choose M
MIN_ROWS_PER_COMPONENT = 4  # a candidate M needs at least this many fitting rows per component
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


def held_out_log_likelihoods(stats: ClassStatistics, structure: str, shrinkage, X: Tensor) -> Tensor:
    """(n,) log-density of each row of ``X: (n, d)`` under the mixture of ``stats``, in float64."""
    head = component_head(stats, structure, shrinkage)
    X = X.to(torch.float64)
    return torch.logsumexp(head.log_likelihoods(head.squared_mahalanobis(X)) + head.log_priors, dim=1)


def select_components(X: Tensor, structure: str, shrinkage, seed: int) -> int:
    """The number of components, from ``AUTO_COMPONENTS``, by held-out log-likelihood on a seeded split of ``X``.

    Candidates are tried in increasing order; a larger M replaces the current
    choice only if it raises the mean held-out log-density by more than one
    standard error of the paired per-row differences (the one-standard-error
    rule of cross-validation: a gain within the noise of the split is not taken),
    and the search stops at the first M that does not, or that would leave
    fewer than ``MIN_ROWS_PER_COMPONENT`` fitting rows per component. Too few
    rows to hold any out: 1.
    """
    n = X.shape[0]
    n_held_out = round(AUTO_VALIDATION_SHARE * n)
    if n_held_out < 2 or n - n_held_out < 2 * MIN_ROWS_PER_COMPONENT:
        return 1
    order = torch.as_tensor(np.random.default_rng(seed).permutation(n), device=X.device)
    held_out, fitting = X[order[:n_held_out]], X[order[n_held_out:]]
    best_m, best = 1, None
    for m in AUTO_COMPONENTS:
        if m > 1 and m * MIN_ROWS_PER_COMPONENT > fitting.shape[0]:
            break
        stats, _ = fit_mixture(fitting, m, structure, shrinkage, seed)
        values = held_out_log_likelihoods(stats, structure, shrinkage, held_out)
        if best is None:
            best = values
            continue
        gain = values - best
        if not bool(torch.isfinite(gain).all()) or float(gain.mean()) <= float(gain.std()) / math.sqrt(n_held_out):
            break
        best_m, best = m, values
    return best_m


def fit_class_components(X: Tensor, components, structure: str, shrinkage, seed: int) -> ClassStatistics:
    """Component statistics of one class: ``components`` an int, or "auto" (:func:`select_components`)."""
    if components == "auto":
        components = select_components(X, structure, shrinkage, seed)
    return fit_mixture(X, int(components), structure, shrinkage, seed)[0]


def validate_components(components) -> None:
    if components == "auto":
        return
    if isinstance(components, bool) or not isinstance(components, (int, np.integer)) or components < 1:
        raise ValueError(f"components must be a positive int or 'auto', got {components!r}")
