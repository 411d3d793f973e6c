"""Shrinkage intensities and covariance structures against scikit-learn and the definitions."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.covariance import OAS, ledoit_wolf_shrinkage
from sklearn.datasets import load_digits, load_wine
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB

from openworld.core.covariance import CovarianceEstimate, estimate_covariance
from openworld.core.gaussian import GaussianHead
from openworld.core.statistics import ClassStatistics


def residuals(X, y):
    R = X.astype(float).copy()
    for k in np.unique(y):
        R[y == k] -= R[y == k].mean(0)
    return R


def stats_of(X, y):
    return ClassStatistics.from_rows(torch.from_numpy(X.astype(float)), torch.from_numpy(y), int(y.max()) + 1)


@pytest.mark.parametrize("loader", [load_wine, load_digits])
def test_ledoit_wolf_matches_sklearn_on_pooled_residuals(loader):
    X, y = loader(return_X_y=True)
    estimate = estimate_covariance(stats_of(X, y), "tied", "auto")
    expected = ledoit_wolf_shrinkage(residuals(X, y), assume_centered=True)
    assert float(estimate.intensities[0]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("loader", [load_wine, load_digits])
def test_oas_matches_sklearn_on_pooled_residuals(loader):
    X, y = loader(return_X_y=True)
    estimate = estimate_covariance(stats_of(X, y), "tied", "oas")
    reference = OAS(assume_centered=True).fit(residuals(X, y))
    assert float(estimate.intensities[0]) == pytest.approx(reference.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(estimate.covariance.numpy(), reference.covariance_, rtol=1e-9, atol=1e-12)


def test_fixed_shrinkage_is_the_convex_combination_with_scaled_identity():
    X, y = load_wine(return_X_y=True)
    R = residuals(X, y)
    empirical = R.T @ R / len(R)
    expected = 0.3 * empirical + 0.7 * np.trace(empirical) / 13 * np.eye(13)
    got = estimate_covariance(stats_of(X, y), "tied", 0.7).covariance.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_full_covariance_shrinks_each_class_toward_the_pooled_one():
    X, y = load_wine(return_X_y=True)
    estimate = estimate_covariance(stats_of(X, y), "full", 0.25)
    for k in range(3):
        own = np.cov(X[y == k].T, bias=True)
        np.testing.assert_allclose(
            estimate.covariance[k].numpy(), 0.75 * own + 0.25 * estimate.pooled.numpy(), rtol=1e-10
        )


def test_unshrunk_structures_are_the_maximum_likelihood_estimates():
    X, y = load_wine(return_X_y=True)
    stats = stats_of(X, y)
    full = estimate_covariance(stats, "full", None).covariance.numpy()
    diag = estimate_covariance(stats, "diag", None).covariance.numpy()
    for k in range(3):
        np.testing.assert_allclose(full[k], np.cov(X[y == k].T, bias=True), rtol=1e-10)
        np.testing.assert_allclose(diag[k], X[y == k].var(0), rtol=1e-10)


def test_a_class_with_one_row_takes_the_pooled_covariance():
    X, y = load_wine(return_X_y=True)
    X = np.vstack([X, X[:1] + 1.0])
    y = np.append(y, 3)
    estimate = estimate_covariance(stats_of(X, y), "full", "auto")
    np.testing.assert_allclose(estimate.covariance[3].numpy(), estimate.pooled.numpy())
    assert bool(torch.linalg.cholesky_ex(estimate.covariance)[1].eq(0).all())


def head_from(means, covariance, structure, priors):
    estimate = CovarianceEstimate(structure, torch.from_numpy(covariance), None, None)
    means = torch.from_numpy(means)
    return GaussianHead.build(
        means, estimate, torch.log(torch.from_numpy(priors)), means.mean(0), shrinkage_on=False
    )


def posteriors(head, X):
    X = torch.from_numpy(X.astype(float))
    return torch.softmax(head.log_likelihoods(head.squared_mahalanobis(X)) + head.log_priors, 1).numpy()


def test_tied_distances_match_scipy_mahalanobis():
    X, y = load_wine(return_X_y=True)
    cov = np.cov(residuals(X, y).T)
    means = np.array([X[y == k].mean(0) for k in range(3)])
    head = head_from(means, cov, "tied", np.full(3, 1 / 3))
    D = head.squared_mahalanobis(torch.from_numpy(X)).numpy()
    VI = np.linalg.inv(cov)
    for i in range(0, len(X), 17):
        for k in range(3):
            assert D[i, k] == pytest.approx(scipy_mahalanobis(X[i], means[k], VI) ** 2, rel=1e-9)


def test_full_head_reproduces_quadratic_discriminant_analysis():
    X, y = load_wine(return_X_y=True)
    qda = QuadraticDiscriminantAnalysis(store_covariance=True, reg_param=0.1).fit(X, y)
    head = head_from(qda.means_, np.array(qda.covariance_), "full", qda.priors_)
    np.testing.assert_allclose(posteriors(head, X), qda.predict_proba(X), atol=1e-8)


def test_diag_head_reproduces_gaussian_naive_bayes():
    X, y = load_digits(return_X_y=True)
    nb = GaussianNB().fit(X, y)
    head = head_from(nb.theta_, nb.var_, "diag", nb.class_prior_)
    np.testing.assert_allclose(posteriors(head, X), nb.predict_proba(X), atol=1e-8)


def test_full_distances_match_a_loop_over_classes():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 5, 5))
    covs = A @ A.transpose(0, 2, 1) + np.eye(5)
    means = rng.normal(size=(4, 5))
    head = head_from(means, covs, "full", np.full(4, 0.25))
    X = rng.normal(size=(50, 5))
    D = head.squared_mahalanobis(torch.from_numpy(X)).numpy()
    for k in range(4):
        VI = np.linalg.inv(covs[k])
        expected = [scipy_mahalanobis(x, means[k], VI) ** 2 for x in X]
        np.testing.assert_allclose(D[:, k], expected, rtol=1e-9)


def few_row_classes(d=40, rows=(1, 2, 4, 12, 20), seed=0):
    """Classes with fewer rows than dimensions (ranks 0, 1, 3, 11, 19 ≤ d/2), each its own shape."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 2 * rng.normal(size=d) for n in rows])
    return X, np.repeat(np.arange(len(rows)), rows)


@pytest.mark.parametrize("shrinkage", ["auto", "oas", 0.3])
def test_low_rank_full_head_matches_brute_force_inverse_and_determinant(shrinkage):
    X, y = few_row_classes()
    estimate = estimate_covariance(stats_of(X, y), "full", shrinkage)
    means = stats_of(X, y).means
    head = GaussianHead.build(means, estimate, torch.log(torch.full((5,), 0.2, dtype=torch.float64)), means.mean(0), True)
    assert head.factors is not None  # the per-class factors, not C whitening matrices
    covs, mu = estimate.covariance.numpy(), means.numpy()
    Xt = np.random.default_rng(1).normal(size=(30, X.shape[1])) * 3
    D = head.squared_mahalanobis(torch.from_numpy(Xt)).numpy()
    for k in range(5):
        expected = np.einsum("ni,ni->n", Xt - mu[k], np.linalg.solve(covs[k], (Xt - mu[k]).T).T)
        np.testing.assert_allclose(D[:, k], expected, rtol=1e-9)
    np.testing.assert_allclose(head.log_dets.numpy(), [np.linalg.slogdet(c)[1] for c in covs], rtol=1e-10)


def test_low_rank_full_head_falls_back_to_whiteners_when_a_class_has_many_rows():
    X, y = few_row_classes(d=20, rows=(3, 15))  # rank 14 > d/2: no saving from factors
    estimate = estimate_covariance(stats_of(X, y), "full", 0.3)
    means = stats_of(X, y).means
    head = GaussianHead.build(means, estimate, torch.zeros(2, dtype=torch.float64), means.mean(0), True)
    assert head.factors is None and head.whitener.shape == (2, 20, 20)
