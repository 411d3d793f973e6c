"""Class statistics: merging any partition equals one pass; removal undoes merging."""

import numpy as np
import pytest
import torch

from openworld.core.statistics import ClassStatistics


def brute_force(X, y, C, w=None):
    """Moments by the definitions, one class at a time, in NumPy."""
    w = np.ones(len(X)) if w is None else w
    out = {k: [] for k in ("weights", "means", "scatters", "third_moments", "fourth_moments")}
    for k in range(C):
        Xk, wk = X[y == k], w[y == k]
        W = wk.sum()
        mean = (wk @ Xk) / W if W > 0 else np.zeros(X.shape[1])
        R = Xk - mean
        sq = (R**2).sum(1)
        out["weights"].append(W)
        out["means"].append(mean)
        out["scatters"].append((R * wk[:, None]).T @ R)
        out["third_moments"].append((wk * sq) @ R)
        out["fourth_moments"].append((wk * sq**2).sum())
    return {k: np.array(v) for k, v in out.items()}


def assert_stats_close(stats, reference, rtol=1e-8):
    for name, expected in reference.items():
        got = getattr(stats, name).numpy()
        scale = max(np.abs(expected).max(), 1e-300)
        assert np.abs(got - expected).max() <= rtol * scale, name


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    # Offset far from the origin: naive (uncentered) sums would lose digits here.
    X = rng.normal(size=(300, 6)) * rng.uniform(0.1, 10, size=6) + 1e3
    y = rng.integers(0, 4, size=300)
    w = rng.uniform(0.1, 3.0, size=300)
    return X, y, w


def test_from_rows_matches_definitions(data):
    X, y, w = data
    stats = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4, torch.from_numpy(w))
    assert_stats_close(stats, brute_force(X, y, 4, w))


@pytest.mark.parametrize("seed", range(5))
def test_any_partition_in_any_order_merges_to_one_pass(data, seed):
    X, y, w = data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    cuts = np.sort(rng.choice(np.arange(1, len(X)), size=rng.integers(1, 12), replace=False))
    merged = None
    for part in np.split(order, cuts):
        s = ClassStatistics.from_rows(torch.from_numpy(X[part]), torch.from_numpy(y[part]), 4, torch.from_numpy(w[part]))
        merged = s if merged is None else merged.merge(s)
    assert_stats_close(merged, brute_force(X, y, 4, w))


def test_subtract_undoes_merge(data):
    X, y, w = data
    keep, drop = np.arange(200), np.arange(200, 300)
    whole = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4, torch.from_numpy(w))
    removed = ClassStatistics.from_rows(torch.from_numpy(X[drop]), torch.from_numpy(y[drop]), 4, torch.from_numpy(w[drop]))
    assert_stats_close(whole.subtract(removed), brute_force(X[keep], y[keep], 4, w[keep]))


def test_removing_every_row_of_a_class_leaves_it_empty(data):
    X, y, _ = data
    whole = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4)
    rows = y == 2
    rest = whole.subtract(ClassStatistics.from_rows(torch.from_numpy(X[rows]), torch.from_numpy(y[rows]), 4))
    assert float(rest.weights[2]) == 0.0
    assert float(rest.scatters[2].abs().max()) == 0.0
    assert_stats_close(rest.select([0, 1, 3]), {k: v[[0, 1, 3]] for k, v in brute_force(X, y, 4).items()})


def test_removing_rows_never_fitted_is_an_error(data):
    X, y, _ = data
    small = ClassStatistics.from_rows(torch.from_numpy(X[:10]), torch.from_numpy(y[:10]), 4)
    big = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4)
    with pytest.raises(ValueError, match="more rows"):
        small.subtract(big)


def test_pooled_is_the_statistics_of_all_rows_as_one_class(data):
    X, y, w = data
    stats = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4, torch.from_numpy(w))
    assert_stats_close(stats.pooled(), brute_force(X, np.zeros(len(X), dtype=int), 1, w))


def test_moments_about_another_center_match_definitions(data):
    X, y, _ = data
    stats = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4)
    centers = np.random.default_rng(3).normal(size=(4, 6)) + 1e3
    scatter, third, fourth = stats.about(torch.from_numpy(centers))
    for k in range(4):
        R = X[y == k] - centers[k]
        sq = (R**2).sum(1)
        np.testing.assert_allclose(scatter[k].numpy(), R.T @ R, rtol=1e-9, atol=1e-9 * np.abs(R.T @ R).max())
        np.testing.assert_allclose(third[k].numpy(), sq @ R, rtol=1e-8)
        np.testing.assert_allclose(float(fourth[k]), (sq**2).sum(), rtol=1e-9)


def test_padding_and_selection_reorder_classes(data):
    X, y, _ = data
    stats = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 4)
    padded = stats.padded(6)
    assert padded.n_classes == 6 and float(padded.weights[4:].sum()) == 0.0
    reordered = padded.select([5, 2, 0])
    assert torch.equal(reordered.means[1], stats.means[2])
    assert float(reordered.weights[0]) == 0.0


@pytest.mark.parametrize("group_rows, group_products", [(7, 10**6), (64, 36), (1000, 72)])
def test_any_grouping_of_classes_gives_the_definitions(data, monkeypatch, group_rows, group_products):
    """Classes gathered a group at a time (and large classes cut into pieces, merged) equal one pass."""
    from openworld.core import statistics

    monkeypatch.setattr(statistics, "GROUP_ROWS", group_rows)
    monkeypatch.setattr(statistics, "GROUP_PRODUCTS", group_products)
    X, y, w = data
    y = np.where(y == 1, 5, y)  # classes 1 and 4 have no rows
    w = np.where(y == 3, 0.0, w)  # class 3 has rows of zero weight
    stats = ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 6, torch.from_numpy(w))
    assert_stats_close(stats, brute_force(X, y, 6, w))
    assert_stats_close(ClassStatistics.from_rows(torch.from_numpy(X), torch.from_numpy(y), 6), brute_force(X, y, 6))


def test_float32_rows_give_the_float64_moments_to_float32_precision(data):
    X, y, _ = data
    X = X - X.mean(0)  # float32 keeps ~7 digits of the values themselves; compare on centered data
    stats = ClassStatistics.from_rows(torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y), 4)
    assert stats.scatters.dtype == torch.float64
    assert_stats_close(stats, brute_force(X.astype(np.float32).astype(np.float64), y, 4), rtol=1e-5)


def test_padded_statistics_of_a_small_class_beside_a_large_one_are_exact():
    # The padded (GPU) path repeats a class's last row up to the group's longest class; summing the padding
    # and subtracting it again cost a one-row class ~n·eps of its mean. Run here on CPU tensors.
    from openworld.core.statistics import _from_rows_padded

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1, int), np.ones(3, int), np.full(60_000, 2)]
    rng.shuffle(y)
    X, labels = torch.from_numpy(rng.normal(size=(y.size, 4)) + 1e3), torch.from_numpy(y)
    padded = _from_rows_padded(X, labels, torch.bincount(labels), torch.float64, 10**6)
    reference = ClassStatistics.from_rows(X, labels, 3)
    np.testing.assert_array_equal(padded.means[0].numpy(), X[labels == 0][0].numpy())
    np.testing.assert_allclose(padded.means.numpy(), reference.means.numpy(), rtol=1e-14)
    np.testing.assert_allclose(padded.scatters.numpy(), reference.scatters.numpy(), rtol=1e-9, atol=1e-9)
