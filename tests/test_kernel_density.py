"""score="kernel_density": the one score that keeps rows, checked against brute force and scikit-learn."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KernelDensity as SklearnKernelDensity

from openworld import OpenWorld
from openworld.core.accumulator import RowSample
from openworld.core.kernel_density import (
    BANDWIDTH_FACTORS,
    CALIBRATION_ROWS,
    KERNEL_DENSITY_ROWS,
    MIN_CALIBRATION_ROWS,
    VALIDATION_EVERY,
    KernelDensity,
    feature_moments,
    scott_bandwidth,
)


def ring(rng, n, radius=5.0, noise=0.3, offset=0.0):
    """Normal rows on a circle: their mean, the ring's centre, is where no normal row lies."""
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.c_[radius * np.cos(angle), radius * np.sin(angle)] + rng.normal(0, noise, (n, 2)) + offset


def brute_log_density(rows, weights, center, scale, bandwidth, X):
    """log Σ_i w_i N(x; r_i, (h·scale)²) by a plain loop-free NumPy sum, in the units of the raw features."""
    R, Q = (rows - center) / scale, (X - center) / scale
    d2 = ((Q[:, None, :] - R[None, :, :]) ** 2).sum(-1)
    w = weights / weights.sum()
    d = rows.shape[1]
    return (logsumexp(-d2 / (2 * bandwidth**2), b=w[None, :], axis=1)
            - d * np.log(bandwidth) - 0.5 * d * np.log(2 * np.pi) - np.log(scale).sum())


def test_log_density_equals_brute_force_and_scikit_learn_far_from_zero():
    rng = np.random.default_rng(0)
    # Columns of very different scales, sitting far from the origin: the scaling and centering are exercised.
    rows = rng.normal(0, 1, (200, 3)) * np.array([1.0, 50.0, 0.01]) + np.array([1e4, -3e3, 7.0])
    weights = rng.uniform(0.5, 2.0, 200)
    center, scale = rows.mean(0), rows.std(0)
    density = KernelDensity.build(torch.from_numpy(rows), torch.from_numpy(weights), torch.from_numpy(center),
                                  torch.from_numpy(scale), bandwidth=0.4)
    X = rows[:20] + rng.normal(0, 0.5, (20, 3)) * scale
    ours = density.log_density(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(ours, brute_log_density(rows, weights, center, scale, 0.4, X), rtol=1e-10)
    reference = SklearnKernelDensity(bandwidth=0.4).fit((rows - center) / scale, sample_weight=weights)
    np.testing.assert_allclose(ours, reference.score_samples((X - center) / scale) - np.log(scale).sum(), rtol=1e-8)


def test_leave_one_out_scores_each_row_by_the_density_of_the_others():
    rng = np.random.default_rng(1)
    rows, weights = rng.normal(0, 1, (40, 4)), rng.uniform(0.5, 2.0, 40)
    center, scale = np.zeros(4), np.ones(4)
    density = KernelDensity.build(*map(torch.from_numpy, (rows, weights, center, scale)), bandwidth=0.7)
    ours = density.log_density(torch.from_numpy(rows), leave_one_out=True).numpy()
    others = [
        brute_log_density(np.delete(rows, i, 0), np.delete(weights, i), center, scale, 0.7, rows[i : i + 1])[0]
        for i in range(len(rows))
    ]
    np.testing.assert_allclose(ours, others, rtol=1e-10)


def test_bandwidth_is_the_grid_point_with_the_best_held_out_likelihood():
    """The same choice as a loop over the grid with scikit-learn's KernelDensity on the same split."""
    rng = np.random.default_rng(2)
    rows = np.vstack([ring(rng, 300), rng.normal(0, 0.2, (100, 2))])
    rows = rows[rng.permutation(len(rows))]
    weights = np.ones(len(rows))
    density = KernelDensity.build(torch.from_numpy(rows), torch.from_numpy(weights), torch.zeros(2), torch.ones(2))
    held_out = np.arange(len(rows)) % VALIDATION_EVERY == 0
    base = scott_bandwidth(int((~held_out).sum()), 2)
    likelihoods = [
        SklearnKernelDensity(bandwidth=f * base).fit(rows[~held_out]).score_samples(rows[held_out]).mean()
        for f in BANDWIDTH_FACTORS
    ]
    best = BANDWIDTH_FACTORS[int(np.argmax(likelihoods))]
    assert 0 < np.argmax(likelihoods) < len(BANDWIDTH_FACTORS) - 1  # an interior optimum: the grid is wide enough
    assert density.bandwidth == pytest.approx(best * scott_bandwidth(len(rows), 2), rel=1e-12)


def test_feature_moments_match_numpy_over_all_classes():
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(5, 2, (70, 3))])
    X[:, 2] = 4.0  # a constant column gets a floor, not a zero scale
    model = OpenWorld(score="kernel_density").fit(X, np.repeat([0, 1], [50, 70]))
    stats = model.statistics_
    mean, std = feature_moments(stats.weights, stats.means, stats.scatters)
    np.testing.assert_allclose(mean.numpy(), X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std.numpy()[:2], X.std(0)[:2], rtol=1e-10)
    assert 0 < std[2] < 1e-5 * std.max()


def test_kernel_density_sees_a_ring_that_mahalanobis_cannot():
    """Anomalies at the ring's centre sit at the mean of the normal rows: a single Gaussian calls them typical."""
    rng = np.random.default_rng(4)
    train, normal_test = ring(rng, 2000), ring(rng, 500)
    anomalies = rng.normal(0, 0.5, (200, 2))
    X, is_normal = np.vstack([normal_test, anomalies]), np.r_[np.ones(500), np.zeros(200)]
    gaussian = roc_auc_score(is_normal, OpenWorld().fit(train).score_samples(X))
    kde = roc_auc_score(is_normal, OpenWorld(score="kernel_density").fit(train).score_samples(X))
    assert gaussian < 0.5 < 0.95 < kde


def test_false_alarm_rate_on_unseen_normal_rows_matches_the_target():
    rng = np.random.default_rng(5)
    model = OpenWorld(score="kernel_density", target_tpr=0.95, random_state=0).fit(ring(rng, 20_000))
    assert len(model.kernel_sample_.rows) == KERNEL_DENSITY_ROWS + CALIBRATION_ROWS  # a sample, not every row
    kept = (model.predict(ring(rng, 20_000)) != "unknown").mean()
    assert abs(kept - 0.95) < 0.015


@pytest.mark.parametrize("n_rows", [KERNEL_DENSITY_ROWS + MIN_CALIBRATION_ROWS + 500, KERNEL_DENSITY_ROWS + 300])
def test_the_working_point_comes_from_kept_rows_held_out_of_the_density(n_rows):
    """Rows past the density's 4,096 score it as unseen rows; with fewer than MIN_CALIBRATION_ROWS of them,
    the density rows' leave-one-out scores join them."""
    rng = np.random.default_rng(13)
    model = OpenWorld(score="kernel_density", target_tpr=0.9, random_state=0).fit(ring(rng, n_rows))
    sample = model.kernel_sample_
    order = np.argsort(sample.priorities, kind="stable")
    density, held_out = order[:KERNEL_DENSITY_ROWS], order[KERNEL_DENSITY_ROWS:]
    rows, weights = sample.rows.numpy(), sample.weights.numpy()
    center, scale = (t.numpy() for t in feature_moments(model.statistics_.weights, model.statistics_.means,
                                                       model.statistics_.scatters))
    bandwidth = model.kernel_density_.bandwidth
    # The density is built on the first rows only: the held-out rows are not in it.
    Q = ring(rng, 20, noise=1.0)
    np.testing.assert_allclose(
        model.score_samples(Q), brute_log_density(rows[density], weights[density], center, scale, bandwidth, Q), rtol=1e-10
    )
    values = list(brute_log_density(rows[density], weights[density], center, scale, bandwidth, rows[held_out]))
    if len(held_out) < MIN_CALIBRATION_ROWS:
        for i in density:  # leave-one-out: the density without row i
            others = density[density != i]
            values.append(brute_log_density(rows[others], weights[others], center, scale, bandwidth, rows[i : i + 1])[0])
    assert len(model.held_out_scores_.values) == len(values)
    sorted_values = np.sort(values)
    expected = sorted_values[int(np.floor((len(values) + 1) * 0.1)) - 1]  # conformal: the ⌊(m + 1)(1 − t)⌋-th smallest
    assert model.threshold_ == pytest.approx(expected, rel=1e-10)


def test_save_and_load_keep_the_sample_scores_and_threshold(tmp_path):
    rng = np.random.default_rng(6)
    model = OpenWorld(score="kernel_density", random_state=0).fit(ring(rng, 500), rng.integers(0, 2, 500))
    model.save(tmp_path / "m.safetensors")
    loaded = OpenWorld.load(tmp_path / "m.safetensors")
    X = ring(rng, 50, noise=1.0)
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.threshold_ == model.threshold_


def test_partial_fit_merges_new_rows_into_the_sample():
    rng = np.random.default_rng(7)
    first, second = ring(rng, 300), ring(rng, 300, offset=20.0)  # a second mode, far away
    model = OpenWorld(score="kernel_density", random_state=0).fit(first)
    assert (model.predict(ring(rng, 100, offset=20.0)) == "unknown").all()
    model.partial_fit(second)
    assert len(model.kernel_sample_.rows) == 600  # under capacity: every row is kept
    assert (model.predict(ring(rng, 1000, offset=20.0)) != "unknown").mean() > 0.9
    # The scores are those of a kernel density built on the merged sample with the merged statistics.
    center, scale = feature_moments(model.statistics_.weights, model.statistics_.means, model.statistics_.scatters)
    rebuilt = KernelDensity.build(model.kernel_sample_.rows, model.kernel_sample_.weights, center, scale)
    X = torch.from_numpy(ring(rng, 50, offset=10.0))
    np.testing.assert_allclose(model.score_samples(X), rebuilt.log_density(X), rtol=1e-12)


def test_partial_fit_over_capacity_keeps_a_uniform_sample_of_all_rows():
    rng = np.random.default_rng(8)
    model = OpenWorld(score="kernel_density", random_state=0).fit(rng.normal(0, 1, (6000, 2)), np.zeros(6000, int))
    model.partial_fit(rng.normal(0, 1, (3000, 2)), np.ones(3000, int))
    labels = model.kernel_sample_.labels
    assert len(labels) == KERNEL_DENSITY_ROWS + CALIBRATION_ROWS
    share = (labels == 1).mean()  # a third of all rows; binomial spread ±0.007
    assert abs(share - 1 / 3) < 0.03


def test_forget_drops_the_class_rows_from_the_sample_like_a_fit_without_them():
    """With the same random_state and the kept class's rows first, a fit on them draws the same priorities."""
    rng = np.random.default_rng(9)
    X = np.vstack([ring(rng, 300), rng.normal(0, 0.3, (200, 2))])
    y = np.repeat([0, 1], [300, 200])
    model = OpenWorld(score="kernel_density", random_state=0).fit(X, y).forget([1])
    alone = OpenWorld(score="kernel_density", random_state=0).fit(X[:300], y[:300])
    assert set(model.kernel_sample_.labels.tolist()) == {0}
    Q = rng.normal(0, 3, (100, 2))
    np.testing.assert_allclose(model.score_samples(Q), alone.score_samples(Q), rtol=1e-6)
    assert model.threshold_ == pytest.approx(alone.threshold_, rel=1e-6)


def test_one_row_and_constant_columns_give_finite_scores():
    one = OpenWorld(score="kernel_density").fit(np.array([[1.0, 2.0, 3.0]]))
    assert np.isfinite(one.score_samples(np.array([[1.0, 2.0, 3.5]]))).all()
    rng = np.random.default_rng(10)
    X = np.c_[rng.normal(0, 1, (100, 2)), np.full(100, 7.0)]
    model = OpenWorld(score="kernel_density").fit(X)
    scores = model.score_samples(np.c_[rng.normal(0, 1, (10, 2)), np.full(10, 7.0)])
    assert np.isfinite(scores).all()
    # Off the constant column is far less typical than any row on it.
    assert model.score_samples(np.array([[0.0, 0.0, 7.5]]))[0] < scores.min()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, X, y: m.unlearn(X[:5], y[:5]), "unlearn is exact only"),
        (lambda m, X, y: m.forget([0]), "no sampled row"),
        (lambda m, X, y: OpenWorld(score="kernel_density", components="auto").fit(X, y), "components=1"),
    ],
)
def test_what_a_row_sample_cannot_do_is_a_clear_error(call, message):
    rng = np.random.default_rng(11)
    X, y = rng.normal(0, 1, (50_000, 2)), np.r_[np.zeros(49_999, int), 1]
    model = OpenWorld(score="kernel_density", random_state=0).fit(X, y)
    assert not (model.kernel_sample_.labels == 1).any()  # the lone row of class 1 was not sampled (8,192 of 50,000)
    with pytest.raises(ValueError, match=message):
        call(model, X, y)
    assert set(model.classes_.tolist()) == {0, 1}  # a refused call leaves the model as it was


def test_rows_of_zero_weight_are_not_kept_and_the_scores_stay_finite():
    rng = np.random.default_rng(12)
    X, weights = rng.normal(0, 1, (20_000, 2)), np.zeros(20_000)
    weights[:50] = 1.0  # a uniform sample of 8,192 of all 20,000 rows would hold about twenty of them
    model = OpenWorld(score="kernel_density", random_state=0).fit(X, sample_weight=weights)
    assert len(model.kernel_sample_.rows) == 50
    assert np.isfinite(model.score_samples(X[:10])).all() and np.isfinite(model.threshold_)


def test_switching_to_or_from_kernel_density_after_fitting_asks_for_a_refit(tmp_path):
    rng = np.random.default_rng(13)
    X = rng.normal(0, 1, (200, 2))
    model = OpenWorld().fit(X).set_params(score="kernel_density")
    with pytest.raises(ValueError, match="refit"):
        model.partial_fit(X[:10])
    assert float(model.statistics_.weights.sum()) == 200  # refused before anything changed
    kde = OpenWorld(score="kernel_density").fit(X).set_params(score="auto")
    with pytest.raises(ValueError, match="refit"):
        kde.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="refit"):
        kde.predict(X[:3])


def test_load_uses_the_saved_bandwidth(tmp_path, monkeypatch):
    rng = np.random.default_rng(14)
    model = OpenWorld(score="kernel_density").fit(ring(rng, 300))
    model.save(tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("load chose the bandwidth again instead of reading it")

    monkeypatch.setattr("openworld.core.kernel_density.select_bandwidth", refuse)
    loaded = OpenWorld.load(tmp_path / "m.safetensors")
    assert loaded.kernel_density_.bandwidth == model.kernel_density_.bandwidth


def test_float32_rows_and_trimming_work_with_the_kernel_density():
    """Trimming is by the Gaussian distance: hidden anomalies far out are trimmed and never sampled."""
    rng = np.random.default_rng(15)
    hidden = rng.normal(15, 0.3, (60, 2))  # 2% of the training rows
    train = np.vstack([ring(rng, 3000), hidden]).astype(np.float32)
    far_out = lambda rows: int((np.asarray(rows) > 10).all(1).sum())  # noqa: E731
    trimmed = OpenWorld(score="kernel_density", contamination=0.02, random_state=0).fit(train)
    untrimmed = OpenWorld(score="kernel_density", random_state=0).fit(train)
    assert trimmed.kernel_sample_.rows.dtype == torch.float32
    assert far_out(untrimmed.kernel_sample_.rows) == 60 and far_out(trimmed.kernel_sample_.rows) == 0
    X = np.vstack([ring(rng, 500), rng.normal(15, 0.3, (100, 2))]).astype(np.float32)
    is_normal = np.r_[np.ones(500), np.zeros(100)]
    assert roc_auc_score(is_normal, trimmed.score_samples(X)) > 0.99 > roc_auc_score(is_normal, untrimmed.score_samples(X))


def test_a_row_sample_is_the_smallest_priorities_of_what_remains_even_after_dropping_a_class():
    """Bottom-k sampling against a brute force over the priorities: rows of zero weight never take a place, and
    after a class is dropped, new rows are kept only below the priority the sample was complete to — else they
    would fill the freed places and be over-represented."""
    rng = np.random.default_rng(14)
    X, labels, priorities = rng.normal(size=(1000, 2)), rng.integers(0, 3, 1000), rng.random(1000)
    weights = torch.from_numpy(np.where(rng.random(1000) < 0.2, 0.0, 1.0))
    sample = RowSample(100).offer(torch.from_numpy(X[:600]), labels[:600], weights[:600], priorities[:600])
    sample = sample.offer(torch.from_numpy(X[600:]), labels[600:], weights[600:], priorities[600:])
    positive = np.flatnonzero(weights.numpy() > 0)
    by_priority = positive[np.argsort(priorities[positive])]
    np.testing.assert_array_equal(sample.priorities, priorities[by_priority[:100]])
    np.testing.assert_array_equal(sample.rows.numpy(), X[by_priority[:100]])
    limit = priorities[by_priority[100]]  # the smallest priority left out
    kept = sample.subset(np.flatnonzero(sample.labels != 1))
    new_X, new_priorities = rng.normal(size=(200, 2)), rng.random(200)
    merged = kept.offer(torch.from_numpy(new_X), np.full(200, 3), None, new_priorities)
    old = by_priority[(labels[by_priority] != 1) & (priorities[by_priority] < limit)]
    expected = np.sort(np.r_[priorities[old], new_priorities[new_priorities < limit]])[:100]
    np.testing.assert_array_equal(merged.priorities, expected)
    assert len(merged.priorities) < 100  # a uniform sample of what remains at the same rate, not a full one


def test_forget_then_partial_fit_keeps_the_sample_uniform_and_the_false_alarm_rate():
    # One seed's false-alarm rate varies by about ±0.01 (a density and a threshold from 4,096-row samples):
    # the mean over three seeds is held to 0.01.
    rates = []
    for seed in range(3):
        rng = np.random.default_rng(15)
        X = np.vstack([rng.normal(0, 1, (20_000, 2)), rng.normal(8, 1, (20_000, 2))])
        model = OpenWorld(score="kernel_density", random_state=seed).fit(X, np.repeat([0, 1], 20_000)).forget([1])
        model.partial_fit(rng.normal(-8, 1, (10_000, 2)), np.full(10_000, 2))
        share = (model.kernel_sample_.labels == 2).mean()  # a third of the remaining rows are class 2
        assert abs(share - 1 / 3) < 0.03
        fresh = np.vstack([rng.normal(0, 1, (20_000, 2)), rng.normal(-8, 1, (10_000, 2))])
        rates.append((model.predict(fresh) == "unknown").mean())
    assert abs(np.mean(rates) - 0.05) < 0.01, rates


def test_rows_of_zero_weight_do_not_take_the_places_of_weighted_rows():
    rng = np.random.default_rng(16)
    model = OpenWorld(score="kernel_density", random_state=0).fit(rng.normal(0, 1, (20_000, 2)))
    weights = np.zeros(100_000)
    weights[:5000] = 1.0
    model.partial_fit(rng.normal(0, 1, (100_000, 2)), sample_weight=weights)
    assert len(model.kernel_sample_.rows) == KERNEL_DENSITY_ROWS + CALIBRATION_ROWS  # 25,000 rows of positive weight
    assert (model.kernel_sample_.weights > 0).all()


def test_each_feature_is_scaled_by_its_own_spread_however_small_beside_another():
    from openworld.core.kernel_density import feature_moments

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4)) * [1e9, 1.0, 1.0, 1.0]
    X[:, 3] = 0.1  # constant: the only feature floored
    stats = OpenWorld(target_tpr=None).fit(X).statistics_
    mean, std = feature_moments(stats.weights, stats.means, stats.scatters)
    np.testing.assert_allclose(std.numpy()[:3], X[:, :3].std(0), rtol=1e-9)
    assert 0 < std[3] < np.inf  # a constant feature gets a floor, not a zero to divide by
    # Free of units: raw and standardised features give the same ranking of fresh rows.
    normal, odd = rng.normal(size=(500, 4)) * [1e9, 1, 1, 0], rng.normal(size=(500, 4)) * [1e9, 1, 1, 0] + [0, 4, 4, 0]
    normal[:, 3] = odd[:, 3] = 0.1
    fresh = np.vstack([normal, odd])
    scale = np.where(X.std(0) > 0, X.std(0), 1.0)
    raw = OpenWorld(score="kernel_density", random_state=0).fit(X).score_samples(fresh)
    standard = OpenWorld(score="kernel_density", random_state=0).fit(X / scale).score_samples(fresh / scale)
    auroc_raw = roc_auc_score(np.r_[np.ones(500), np.zeros(500)], raw)
    assert auroc_raw > 0.95 and abs(auroc_raw - roc_auc_score(np.r_[np.ones(500), np.zeros(500)], standard)) < 0.01
