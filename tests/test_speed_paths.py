"""The fast paths equal the direct computations they replace (float64, independent references)."""

import numpy as np
import pytest
import torch

from openworld import OpenWorld
from openworld.core.covariance import background_covariance, estimate_covariance
from openworld.core.gaussian import GaussianHead
from openworld.core.statistics import ClassStatistics


def _data(n_classes, d, n=600, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * 2
    y = rng.integers(0, n_classes, n)
    X = centers[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d) + 50.0
    return X, y


def _direct_relative_mahalanobis(model, X):
    """D₀ − min_k D_k with both Gaussians whitened explicitly (what the fast path replaces)."""
    stats = model.statistics_
    estimate = estimate_covariance(stats, "tied", model.shrinkage)
    center = (stats.weights @ stats.means) / stats.weights.sum()
    head = GaussianHead.build(stats.means, estimate, model.head_.log_priors, center, True)
    mean, cov = background_covariance(stats, estimate.pooled)
    from openworld.core.covariance import CovarianceEstimate

    background = GaussianHead.build(
        mean[None], CovarianceEstimate("tied", cov, cov, torch.zeros(1, dtype=cov.dtype)), torch.zeros(1, dtype=cov.dtype), center, True
    )
    T = torch.from_numpy(X)
    return (background.squared_mahalanobis(T)[:, 0] - head.squared_mahalanobis(T).min(1).values).numpy()


@pytest.mark.parametrize(
    "n_classes, d, params",
    [
        (5, 8, {}),  # fewer classes than features: a rank C factor
        (12, 6, {}),  # more classes than features: a rank d factor
        (5, 8, {"priors": "empirical", "shrinkage": "oas"}),
        (5, 8, {"priors": [0.5, 0.5, 0.0, 0.0, 0.0]}),  # classes without prior mass are not candidates
        (3, 8, {"components": 2, "random_state": 0}),
    ],
)
def test_tied_relative_mahalanobis_equals_the_two_whitened_distances(n_classes, d, params):
    X, y = _data(n_classes, d)
    model = OpenWorld(target_tpr=None, **params).fit(X, y)
    X_new = _data(n_classes, d, n=200, seed=1)[0] + np.random.default_rng(2).normal(size=(200, d)) * 3
    expected = _direct_relative_mahalanobis(model, X_new)
    np.testing.assert_allclose(model.score_samples(X_new), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    # The argmax read from the same logits is the class of the log joints.
    assert np.array_equal(model.predict(X_new), model.classes_[model.decision_function(X_new).argmax(1)])


def test_fold_models_of_the_working_point_equal_subtracting_each_fold():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(500, 6)) * 3 + 100)
    y = torch.from_numpy(rng.integers(0, 5, 500))
    y[y == 4] = 3
    y[:3] = 4  # the third part removes every row of class 4
    w = torch.from_numpy(rng.uniform(0.1, 2, 500))
    whole = ClassStatistics.from_rows(X, y, 5, w)
    parts = [torch.arange(0, 100), torch.arange(100, 500, 3), torch.arange(0, 3)]
    for rows, pooled in zip(parts, whole.pooled_without([(X[r], y[r], w[r]) for r in parts])):
        reference = whole.subtract(ClassStatistics.from_rows(X[rows], y[rows], 5, w[rows]))
        scatter, fourth, weight = reference.pooled_within()
        np.testing.assert_allclose(pooled.scatter.numpy(), scatter.numpy(), rtol=1e-10, atol=1e-12 * float(scatter.abs().max()))
        np.testing.assert_allclose(float(pooled.fourth_moment), float(fourth), rtol=1e-10)
        np.testing.assert_allclose(pooled.means.numpy(), reference.means.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pooled.weights.numpy(), reference.weights.numpy(), rtol=1e-12)
        assert float(pooled.weights.sum()) == pytest.approx(float(weight))
