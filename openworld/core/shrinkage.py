"""Shrinkage intensities computed from sufficient statistics alone.

Both estimators are usually written over the rows; here they read the
scatter ``S`` (and, for Ledoit-Wolf, ``q4 = Σ w ‖r‖⁴``) so they stay exact
under ``partial_fit`` and distributed merges. ``Σ̂ = S / W`` is the maximum
likelihood covariance, as in scikit-learn.

>>> import numpy as np, torch
>>> from sklearn.covariance import ledoit_wolf_shrinkage
>>> R = np.random.default_rng(0).normal(size=(40, 5)); R -= R.mean(0)
>>> S = torch.from_numpy(R.T @ R); q4 = float(((R ** 2).sum(1) ** 2).sum())
>>> bool(abs(ledoit_wolf_intensity(S, q4, 40.0) - ledoit_wolf_shrinkage(R, assume_centered=True)) < 1e-12)
True
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def scaled_identity_target(covariance: Tensor) -> Tensor:
    """``μI`` with μ = tr(Σ)/d: the target that keeps the total variance."""
    d = covariance.shape[-1]
    mu = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1) / d
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    return mu[..., None, None] * eye


def ledoit_wolf_intensity(
    scatter: Tensor, fourth_moment: float | Tensor, weight: float | Tensor, target: Tensor | None = None
) -> float:
    """Ledoit & Wolf (2004) intensity λ for ``(1 − λ) Σ̂ + λ T``.

    λ = min(β, δ) / δ with δ = ‖Σ̂ − T‖²_F and β = (q4 / W − ‖Σ̂‖²_F) / W, the
    summed variance of the entries of Σ̂ (it does not depend on T). The default
    target ``T = μI`` reproduces ``sklearn.covariance.ledoit_wolf_shrinkage``;
    a class covariance shrunk toward the pooled one passes that as ``target``
    (Schäfer & Strimmer 2005 use the same β for general targets).
    """
    weight = float(weight)
    if weight <= 0:
        return 1.0
    covariance = scatter / weight
    if covariance.shape[-1] == 1:
        return 0.0  # one feature: every target is a multiple of the estimate
    if target is None:
        target = scaled_identity_target(covariance)
    delta = float(((covariance - target) ** 2).sum())
    beta = (float(fourth_moment) / weight - float((covariance**2).sum())) / weight
    beta = min(max(beta, 0.0), delta)
    return 0.0 if beta == 0.0 else beta / delta


def oas_intensity(scatter: Tensor, weight: float | Tensor) -> float:
    """Chen et al. (2010) oracle approximating shrinkage toward μI, as ``sklearn.covariance.OAS``.

    λ = min(1, (a + μ²) / ((W + 1)(a − μ²/d))) with a the mean squared entry of Σ̂.
    """
    weight = float(weight)
    if weight <= 0:
        return 1.0
    covariance = scatter / weight
    d = covariance.shape[-1]
    if d == 1:
        return 0.0
    alpha = float((covariance**2).mean())
    mu = float(torch.trace(covariance)) / d
    den = (weight + 1.0) * (alpha - mu * mu / d)
    return 1.0 if den == 0 else min((alpha + mu * mu) / den, 1.0)


def shrink(covariance: Tensor, intensity: float | Tensor, target: Tensor) -> Tensor:
    """``(1 − λ) Σ̂ + λ T``; λ may be a (C,) tensor for a (C, d, d) batch."""
    if isinstance(intensity, Tensor) and intensity.dim() == 1:
        intensity = intensity[:, None, None]
    return (1 - intensity) * covariance + intensity * target
