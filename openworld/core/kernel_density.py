"""A Gaussian kernel density over a fixed-size sample of the fitted rows.

One Gaussian per class cannot follow normal data made of many modes (tabular
sets such as landsat or optdigits, where a 5-nearest-neighbour distance beats it
by 0.15–0.28 AUROC in docs/anomaly.md). A kernel density estimate follows any
shape; it is the limit of a mixture with one component per row. It keeps rows,
so it is the one score that does not derive from the statistics: the model holds
up to ``KERNEL_DENSITY_ROWS`` rows for the density and up to ``CALIBRATION_ROWS``
more for the working point (one uniform sample by random priority, which
``partial_fit`` merges like the working point's; the smallest priorities form the
density), and ``unlearn`` is refused.

The kernel is isotropic in features centered and scaled by their mean and
standard deviation (from the statistics): the scale of raw columns does not
decide the neighbourhoods, and centering keeps the float32 distances exact
where raw columns sit far from zero.
The bandwidth is chosen without anomalies, by the mean log density of held-out
sampled rows (every ``VALIDATION_EVERY``-th by priority) over a grid of factors
of Scott's rule ``n^(-1/(d+4))``. Scoring is matrix multiplication: a chunk of rows against all sampled rows
in one GEMM (the expanded squared distance ``‖x‖² − 2 x·rᵀ + ‖r‖²``, its row
terms folded into the product), then a log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from openworld.core.covariance import numerically_constant

Tensor = torch.Tensor

KERNEL_DENSITY_ROWS = 4096  # rows in the density; on docs/anomaly.md's tabular sets, 4,096 and 20,000 gave the same mean AUROC
CALIBRATION_ROWS = 4096  # rows kept beside them, held out of the density, that place the working point
MIN_CALIBRATION_ROWS = 1000  # fewer held-out rows: the density rows' leave-one-out scores join them
KEPT_ROWS = KERNEL_DENSITY_ROWS + CALIBRATION_ROWS  # the sample a kernel-density model holds
BANDWIDTH_FACTORS = tuple(2.0 ** (e / 2) for e in range(-8, 5))  # × Scott's rule: 1/16 … 4
VALIDATION_EVERY = 5  # every 5th sampled row (by priority) scores the candidate bandwidths
CHUNK_ELEMENTS = 1 << 24  # query rows × sampled rows per distance block (128 MiB in float64)


def scott_bandwidth(n_rows: int, n_features: int) -> float:
    """Scott's rule for standardised features: ``n^(-1/(d+4))``."""
    return max(n_rows, 1) ** (-1.0 / (n_features + 4))


@dataclass(frozen=True)
class KernelDensity:
    rows: Tensor  # (m, d) sampled rows, centered by ``center`` and divided by ``scale``
    log_weights: Tensor  # (m,) log of the rows' weights, normalised to sum to 1
    center: Tensor  # (d,) feature means
    scale: Tensor  # (d,) feature standard deviations
    bandwidth: float  # kernel standard deviation, in scaled units

    @classmethod
    def build(cls, rows: Tensor, weights: Tensor, center: Tensor, scale: Tensor, bandwidth: float | None = None) -> KernelDensity:
        """The density of ``rows`` (m, d) weighted by ``weights`` (m,); ``bandwidth`` None: chosen on held-out rows."""
        center, scale = center.to(device=rows.device, dtype=rows.dtype), scale.to(device=rows.device, dtype=rows.dtype)
        scaled = (rows - center) / scale
        if bandwidth is None:
            bandwidth = select_bandwidth(scaled, weights)
        return cls(scaled, _log_normalised(weights.to(rows.dtype)), center, scale, float(bandwidth))

    def log_density(self, X: Tensor, leave_one_out: bool = False) -> Tensor:
        """(n,) log density at ``X`` (n, d), in the units of the unscaled features.

        ``leave_one_out``: ``X`` are the sampled rows themselves (same order),
        each scored without its own kernel — how held-out rows would score.
        """
        rows = self.rows.to(device=X.device, dtype=X.dtype)
        log_weights = self.log_weights.to(device=X.device, dtype=X.dtype)
        center = self.center.to(device=X.device, dtype=X.dtype)
        scale = self.scale.to(device=X.device, dtype=X.dtype)
        constant = -rows.shape[1] * (math.log(self.bandwidth) + 0.5 * math.log(2 * math.pi)) - float(torch.log(scale).sum())
        out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
        step = max(1, CHUNK_ELEMENTS // max(rows.shape[0], 1))
        # −‖x − r‖²/(2h²) + log w = x·r/h² + (log w − ‖r‖²/(2h²)) − ‖x‖²/(2h²): the row terms ride in the GEMM
        # (addmm), and the query's own term, the same for every kernel, comes out of the log-sum-exp.
        precision = 1.0 / self.bandwidth**2
        row_terms = log_weights - 0.5 * precision * (rows * rows).sum(1)
        for start in range(0, X.shape[0], step):
            chunk = (X[start : start + step] - center) / scale
            logits = torch.addmm(row_terms, chunk, rows.T, alpha=precision)
            if leave_one_out:
                own = torch.arange(start, start + chunk.shape[0], device=X.device)
                logits[torch.arange(chunk.shape[0], device=X.device), own] = -math.inf
                # the others' weights renormalised without the row's own
                logits -= torch.log1p(-log_weights[own].exp().clamp(max=1 - 1e-12))[:, None]
            out[start : start + step] = torch.logsumexp(logits, dim=1) - 0.5 * precision * (chunk * chunk).sum(1) + constant
        return out


def feature_moments(weights: Tensor, means: Tensor, scatters: Tensor) -> tuple[Tensor, Tensor]:
    """(d,) mean and standard deviation of every feature over all fitted rows, from class statistics
    (weights (C,), means (C, d), scatters (C, d, d)); constant features get a small floor."""
    total = weights.sum()
    mean = (weights @ means) / total
    within = torch.diagonal(scatters, dim1=1, dim2=2).sum(0)
    between = (weights[:, None] * (means - mean) ** 2).sum(0)
    variance = (within + between).clamp_min(0) / total
    std = torch.sqrt(variance)
    top = float(std.max()) if std.numel() else 0.0
    # Only features constant up to their own round-off get the floor: a feature a million times narrower
    # than another is still scaled by its own spread (the density is meant to be free of units).
    constant = numerically_constant(variance, mean.abs())
    return mean, torch.where(constant, torch.full_like(std, 1e-6 * top if top > 0 else 1.0), std)


def select_bandwidth(scaled: Tensor, weights: Tensor) -> float:
    """The factor of Scott's rule whose density, fitted on 4/5 of the rows, gives the other 1/5 the highest
    mean log density; the bandwidth is that factor times Scott's rule for all ``m`` rows.

    The held-out rows' distances to the others are one GEMM, shared by every candidate factor.
    """
    m, d = scaled.shape
    held_out = torch.arange(m, device=scaled.device) % VALIDATION_EVERY == 0
    if m < 2 * VALIDATION_EVERY:  # too few rows to hold any out: Scott's rule itself
        return scott_bandwidth(m, d)
    fit_rows, fit_log_weights = scaled[~held_out], _log_normalised(weights[~held_out].to(scaled.dtype))
    val_rows, val_weights = scaled[held_out], weights[held_out].to(scaled.dtype)
    distances = _squared_distances(val_rows, fit_rows, (fit_rows * fit_rows).sum(1))  # (m/5, 4m/5)
    base = scott_bandwidth(fit_rows.shape[0], d)
    best, best_factor = -math.inf, 1.0
    for factor in BANDWIDTH_FACTORS:
        bandwidth = factor * base
        log_density = torch.logsumexp(distances * (-0.5 / bandwidth**2) + fit_log_weights, dim=1)
        log_density -= d * (math.log(bandwidth) + 0.5 * math.log(2 * math.pi))
        value = float((log_density * val_weights).sum() / val_weights.sum())
        if value > best:
            best, best_factor = value, factor
    return best_factor * scott_bandwidth(m, d)


def _squared_distances(queries: Tensor, rows: Tensor, squared_rows: Tensor) -> Tensor:
    """(q, m) squared Euclidean distances ``‖x‖² − 2 x·rᵀ + ‖r‖²``: one GEMM (``squared_rows``: ‖r‖², (m,))."""
    return ((queries * queries).sum(1, keepdim=True) - 2 * queries @ rows.T + squared_rows).clamp_min_(0)


def _log_normalised(weights: Tensor) -> Tensor:
    return torch.log(weights / weights.sum())
