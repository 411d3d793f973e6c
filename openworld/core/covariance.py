"""Covariance structures and their shrinkage, derived from class statistics.

- ``tied``: one covariance for every class, the pooled within-class scatter
  over the total weight (what LDA uses), shrunk toward ``μI``.
- ``full``: one covariance per class, shrunk toward the (shrunk) tied one —
  Friedman's regularized discriminant analysis — so a class with one row
  inherits the pooled shape instead of a singular matrix. With ``"auto"`` /
  ``"oas"`` the intensity is at least ``d / (W_k + d)``: the pooled
  covariance weighs as d prior rows.
- ``diag``: per-class variances (Gaussian naive Bayes), shrunk toward the
  tied covariance's diagonal with the same intensities as ``full``.

Shrinkage: ``"auto"`` (Ledoit-Wolf), ``"oas"``, a float in [0, 1], or None
(the raw maximum-likelihood estimate; singular estimates then raise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openworld.core.shrinkage import ledoit_wolf_intensity, oas_intensity, scaled_identity_target, shrink
from openworld.core.statistics import ClassStatistics, PooledStatistics

Tensor = torch.Tensor
STRUCTURES = ("tied", "full", "diag")
SHRINKAGE_METHODS = ("auto", "oas")


def validate_shrinkage(shrinkage) -> None:
    if shrinkage is None or shrinkage in SHRINKAGE_METHODS:
        return
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be 'auto', 'oas', a float in [0, 1] or None, got {shrinkage!r}")


def validate_structure(covariance: str) -> None:
    if covariance not in STRUCTURES:
        raise ValueError(f"covariance must be one of {STRUCTURES}, got {covariance!r}")


@dataclass(frozen=True)
class CovarianceEstimate:
    """Shrunk covariances: ``tied`` (d, d); ``full`` (C, d, d); ``diag`` (C, d) variances.

    ``pooled`` is the shrunk tied covariance (d, d) every structure starts from;
    ``intensities`` the shrinkage used: (1,) for tied, (C,) per class otherwise.
    ``raw``: for ``full``, the unshrunk class covariances (C, d, d), so that
    ``covariance = (1 − λ) raw + λ pooled``; a class with fewer rows than
    dimensions has a low-rank ``raw``, which the head exploits.
    """

    structure: str
    covariance: Tensor
    pooled: Tensor
    intensities: Tensor
    raw: Tensor | None = None


def numerically_constant(variances: Tensor, magnitude: Tensor) -> Tensor:
    """(…, d) flags: a variance no larger than the round-off of features of size ``magnitude: (d,)``.

    The mean of a constant 0.1 is not exactly 0.1 in binary, so its variance comes
    out near 1e-33 rather than 0; a fixed tolerance would also flag legitimately
    tiny features, so the test is relative to each feature's own size.
    """
    eps = torch.finfo(variances.dtype).eps
    return variances <= (1e3 * eps * magnitude) ** 2 + torch.finfo(variances.dtype).tiny


def _round_off_removed(scatter: Tensor, weight: Tensor, means: Tensor) -> Tensor | None:
    """(d, d) mask that zeroes the features whose pooled within-class variance is only round-off, or None.

    Such a feature is constant within every class. Left at ~1e-33, shrinkage takes that for the data's
    scale when every feature is so (each class one row repeated): the covariance becomes ~1e-33·I and
    a training row, a few ulps from its class mean, scores −1e18. Zeroed, it is exactly constant, as
    with one row per class, and shrinkage handles it.
    """
    variances = torch.diagonal(scatter) / torch.clamp(weight, min=torch.finfo(scatter.dtype).tiny)
    keep = ~numerically_constant(variances, means.abs().amax(0))
    return None if bool(keep.all()) else (keep[:, None] & keep[None, :]).to(scatter.dtype)


def single_covariance(scatter: Tensor, fourth: Tensor, weight: Tensor, shrinkage) -> tuple[Tensor, float]:
    """One covariance ``S / W`` shrunk toward ``μI``; returns it with the intensity used."""
    covariance = scatter / torch.clamp(weight, min=torch.finfo(scatter.dtype).tiny)
    if shrinkage is None:
        return covariance, 0.0
    if shrinkage == "auto":
        intensity = ledoit_wolf_intensity(scatter, fourth, weight)
    elif shrinkage == "oas":
        intensity = oas_intensity(scatter, weight)
    else:
        intensity = float(shrinkage)
    return shrink(covariance, intensity, scaled_identity_target(covariance)), intensity


def class_intensities(stats: ClassStatistics, shrinkage, target: Tensor, scatters: Tensor) -> Tensor:
    """Per-class intensities toward ``target`` (d, d) from the class ``scatters`` (C, d, d); classes weighing
    one row or less take 1."""
    C = stats.n_classes
    if shrinkage is None:
        intensities = torch.zeros(C, dtype=stats.means.dtype)
    elif isinstance(shrinkage, (int, float)):
        intensities = torch.full((C,), float(shrinkage), dtype=stats.means.dtype)
    else:
        values = []
        for k in range(C):  # C scalar formulas on (d, d) matrices: fitting cost, never scoring
            W = float(stats.weights[k])
            if W <= 1.0:
                values.append(1.0)
                continue
            if shrinkage == "auto":
                estimated = ledoit_wolf_intensity(scatters[k], stats.fourth_moments[k], W, target)
            else:
                estimated = oas_intensity(scatters[k], W)
            # Ledoit-Wolf and OAS minimise the error of the covariance, not of its inverse,
            # and a few rows cannot measure their own noise (two rows give a zero variance
            # estimate, so no shrinkage at all). The pooled covariance therefore counts as
            # d prior rows (an inverse-Wishart prior with d degrees of freedom): with 100
            # rows in 384 dimensions that is λ ≥ 0.79, where classification works, against
            # the λ ≈ 0.2 Ledoit-Wolf picks on CLINC150, where accuracy drops by 7 points.
            prior_rows = float(stats.n_features)
            values.append(max(estimated, prior_rows / (W + prior_rows)))
        intensities = torch.tensor(values, dtype=stats.means.dtype)
    return intensities.to(stats.device)


def estimate_covariance(stats: ClassStatistics | PooledStatistics, structure: str, shrinkage) -> CovarianceEstimate:
    """The covariance(s) of ``structure`` from ``stats``, shrunk as asked (pooled statistics suffice for tied)."""
    validate_structure(structure)
    validate_shrinkage(shrinkage)
    scatter, fourth, weight = stats.pooled_within()
    mask = _round_off_removed(scatter, weight, stats.means)
    if mask is not None:
        scatter = scatter * mask
    pooled, intensity = single_covariance(scatter, fourth, weight, shrinkage)
    if structure == "tied":
        return CovarianceEstimate("tied", pooled, pooled, torch.tensor([intensity], dtype=pooled.dtype))
    # S / W, whatever the scale of the weights (fractional weights sum below 1); a class of no weight: 0
    W = stats.weights[:, None, None]
    scatters = stats.scatters if mask is None else stats.scatters * mask
    raw = torch.where(W > 0, scatters / torch.where(W > 0, W, 1.0), 0.0)
    intensities = class_intensities(stats, shrinkage, pooled, scatters)
    if structure == "full":
        return CovarianceEstimate("full", shrink(raw, intensities, pooled), pooled, intensities, raw)
    variances = torch.diagonal(raw, dim1=-2, dim2=-1)
    pooled_variances = torch.diagonal(pooled)
    lam = intensities[:, None]
    return CovarianceEstimate("diag", (1 - lam) * variances + lam * pooled_variances, pooled, intensities)


def background_covariance(stats: ClassStatistics, pooled: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and covariance (d, d) of all rows as one Gaussian (Ren et al. 2021).

    The covariance is the (shrunk) pooled within-class covariance plus the
    between-class scatter over the total weight — the moments of the fitted
    class mixture. Without shrinkage this is the plain covariance of all rows;
    with it, the background is never tighter than a class in any direction
    (Σ₀ ⪰ Σ), so no direction makes far-away rows look closer to a class than
    to the background. Shrinking the two separately breaks that on constant
    features.
    """
    W = stats.weights.sum()
    mean = (stats.weights @ stats.means) / W
    offsets = stats.means - mean
    between = (offsets * stats.weights[:, None]).T @ offsets / W
    return mean, pooled + between


def low_variance_basis(covariance: Tensor, dropped_variance: float) -> tuple[Tensor, Tensor]:
    """Whitening basis (d, r) of the low-variance principal subspace, and its eigenvalues (r,).

    Rippel et al. (2020) found the anomaly signal of pretrained features in the
    principal components of *least* variance ("NPCA"): the leading components
    that together carry ``dropped_variance`` of the total are left out (at
    least one component is always kept).
    """
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    # A singular covariance (Ledoit-Wolf shrinks two distinct points by 0) gets the floor of the smallest ridge
    # the Cholesky whitener would add (1e-10 of the mean variance): not 1/√tiny ≈ 1e154 along its null space.
    scale = float(eigenvalues.clamp(min=0).mean())
    eigenvalues = torch.clamp(eigenvalues, min=max(1e-10 * scale, torch.finfo(covariance.dtype).tiny) if scale > 0 else 1.0)
    leading_share = torch.cumsum(eigenvalues.flip(0), 0) / eigenvalues.sum()
    n_dropped = min(int((leading_share <= dropped_variance).sum()), covariance.shape[0] - 1)
    kept = covariance.shape[0] - n_dropped  # eigh sorts ascending: the first `kept` are the smallest
    return vectors[:, :kept] / torch.sqrt(eigenvalues[:kept]), eigenvalues[:kept]
