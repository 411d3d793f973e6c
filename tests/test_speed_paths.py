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


def test_cpu_class_products_equal_the_grouped_torch_products(monkeypatch):
    """The CPU path (block products per class piece, threads) and the grouped torch path give the same statistics."""
    from openworld.core import statistics

    rng = np.random.default_rng(4)
    X = torch.from_numpy(rng.normal(size=(700, 9)) * rng.uniform(0.1, 5, 9) + 30)
    y = torch.from_numpy(rng.integers(0, 7, 700))
    y[y == 5] = 6  # class 5 has no rows
    w = torch.from_numpy(rng.uniform(0, 2, 700))
    monkeypatch.setattr(statistics, "PIECE_BYTES", 9 * 8 * 40)  # classes cut into pieces of 40 rows, merged
    for weights in (None, w):
        cpu = ClassStatistics.from_rows(X, y, 7, weights)
        grouped = ClassStatistics._from_rows_grouped(X, y, 7, weights)
        for name, value in grouped.as_dict().items():
            np.testing.assert_allclose(getattr(cpu, name).numpy(), value.numpy(), rtol=1e-10, atol=1e-10 * float(value.abs().max()))
        pooled = grouped.scatters.sum(0)
        np.testing.assert_allclose(cpu.pooled_within()[0].numpy(), pooled.numpy(), rtol=1e-10, atol=1e-12 * float(pooled.abs().max()))


def test_fit_does_not_depend_on_the_thread_count_and_restores_thread_settings():
    from threadpoolctl import threadpool_info

    X, y = _data(6, 12, n=3000)
    before = torch.get_num_threads(), [lib["num_threads"] for lib in threadpool_info()]
    fits = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            fits.append(OpenWorld(random_state=0).fit(X, y))
        finally:
            torch.set_num_threads(before[0])
    assert (torch.get_num_threads(), [lib["num_threads"] for lib in threadpool_info()]) == before
    one, two = fits
    np.testing.assert_allclose(two.statistics_.scatters.numpy(), one.statistics_.scatters.numpy(), rtol=1e-12)
    np.testing.assert_allclose(two.held_out_scores_.values, one.held_out_scores_.values, rtol=1e-9, atol=1e-9)
    assert two.threshold_ == pytest.approx(one.threshold_, rel=1e-9)


def test_tasks_run_after_what_they_follow_and_errors_reach_the_caller():
    from openworld.core.statistics import one_torch_thread, run_tasks

    done = []

    def step(name, then=()):
        def task():
            done.append(name)
            return list(then)

        return task

    for workers in (1, 2, 3):
        done.clear()
        run_tasks([step("a", [step("a1", [step("a2")])]), step("b", [step("b1")])], workers)
        assert sorted(done) == ["a", "a1", "a2", "b", "b1"]
        assert done.index("a") < done.index("a1") < done.index("a2") and done.index("b") < done.index("b1")

        def fails():
            raise RuntimeError("task failed")

        with pytest.raises(RuntimeError, match="task failed"):
            run_tasks([step("c"), fails, step("d")], workers)
    threads = torch.get_num_threads()
    with one_torch_thread():
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("n_classes, d", [(5, 8), (12, 6)])
def test_background_factor_by_cholesky_equals_the_svd(n_classes, d):
    """P − P₀ from Cholesky factors (C×C by Woodbury with C ≤ d, d×d with C > d) equals the one from
    the SVD of the whitened means."""
    from openworld.core.gaussian import TiedRelativeScorer

    X, y = _data(n_classes, d)
    model = OpenWorld(target_tpr=None).fit(X, y)
    head, weights = model.head_, model.statistics_.weights
    F = TiedRelativeScorer.build(head, weights).factor
    M = torch.sqrt(weights / weights.sum())[:, None] * head.whitened_means
    _, s, Vh = torch.linalg.svd(M, full_matrices=False)
    reference = head.whitener @ Vh.T @ torch.diag(s**2 / (1 + s**2)) @ Vh @ head.whitener.T
    np.testing.assert_allclose((F @ F.T).numpy(), reference.numpy(), rtol=1e-10, atol=1e-12 * float(reference.abs().max()))
