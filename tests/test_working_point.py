"""The conformal threshold, unweighted and weighted, and the working point of models fitted with weights."""

import math

import numpy as np
import pytest

from openworld import OpenWorld
from openworld.core.working_point import HeldOutScores, conformal_threshold


def brute_force_threshold(scores, target_tpr, weights):
    """The largest score whose cumulative weight (ascending) is at most (1 − t)(W + W/m), summed in exact
    fractions of the integer weights; −inf when none."""
    order = np.argsort(scores, kind="stable")
    total, m = int(np.sum(weights)), len(scores)
    allowed_times_m = (1 - target_tpr) * (total * m + total)  # compare m·cumulative with (1 − t)(W·m + W)
    best, cumulative = -math.inf, 0
    for i in order:
        cumulative += int(weights[i])
        if cumulative * m <= allowed_times_m + 1e-9:
            best = float(scores[i])
    return best


@pytest.mark.parametrize("seed", range(6))
def test_weighted_threshold_matches_a_brute_force_walk(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 300))
    scores, weights = rng.normal(size=m), rng.integers(1, 6, size=m)
    for target in (0.5, 0.8, 0.9, 0.95, 0.99):
        assert conformal_threshold(scores, target, weights) == brute_force_threshold(scores, target, weights)


@pytest.mark.parametrize("m", [9, 19, 99, 100, 1000])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_unit_and_equal_weights_give_the_textbook_rank(m, target):
    """⌊(m + 1)(1 − t)⌋ in exact arithmetic (fractions), also where float rounding puts the product just
    below a whole number (0.1 × 10 = 0.999…), and whatever the common weight."""
    scores = np.random.default_rng(m).normal(size=m)
    rank = (m + 1) * round((1 - target) * 100) // 100  # exact: 1 − t is a whole number of hundredths here
    expected = -math.inf if rank < 1 else float(np.sort(scores)[rank - 1])
    assert conformal_threshold(scores, target) == expected
    assert conformal_threshold(scores, target, np.full(m, 0.37)) == expected


def test_a_heavy_score_moves_the_threshold_as_its_repeats_would():
    scores = np.arange(1.0, 21.0)  # 20 scores, t = 0.8: (1 − t)(W + W/m) with W = 20 allows weight 4.2
    assert conformal_threshold(scores, 0.8) == 4.0
    weights = np.ones(20)
    weights[0] = 4.0  # the lowest score counts 4 times: W = 23, allowed 0.2 · (23 + 1.15) = 4.83, so the
    assert conformal_threshold(scores, 0.8, weights) == 1.0  # next score (cumulative 5) no longer fits


def test_combined_scores_count_each_set_by_the_rows_it_stands_for():
    rng = np.random.default_rng(0)
    low = HeldOutScores(rng.normal(0, 1, 500), np.zeros(500, int), represents=1000.0, weights=np.ones(500))
    high = HeldOutScores(rng.normal(5, 1, 100), np.ones(100, int), represents=3000.0, weights=rng.uniform(1, 3, 100))
    mixed = low.combined(high, capacity=400, rng=rng)
    assert mixed.values.size == 400 and mixed.represents == 4000.0
    share_high = mixed.weights[mixed.class_index == 1].sum() / mixed.weights.sum()
    assert share_high == pytest.approx(0.75)
    forgotten = mixed.remapped(np.array([0, -1]))
    assert forgotten.represents == pytest.approx(1000.0) and (forgotten.class_index == 0).all()


def weighted_normal_rows(rng, n, d=5):
    """Standard normal rows; those beyond the median radius weigh 4, so the weighted distribution has heavier
    tails than the rows themselves."""
    X = rng.standard_normal((n, d))
    return X, np.where(np.linalg.norm(X, axis=1) > np.sqrt(d), 4.0, 1.0)


def draw_weighted(rng, n):
    """Rows of the weighted distribution: a large pool resampled in proportion to the weights."""
    pool, weights = weighted_normal_rows(rng, 40 * n)
    return pool[rng.choice(len(pool), n, p=weights / weights.sum())]


@pytest.mark.parametrize("score", ["auto", "kernel_density"])
def test_the_working_point_keeps_the_promised_share_of_the_weighted_traffic(score):
    """Fitted with weights, the model promises target_tpr of traffic drawn from the weighted distribution;
    counting every held-out score once (the rows as drawn) keeps about 0.91 here, not 0.95."""
    rng = np.random.default_rng(0)
    kept, kept_counting_once = [], []
    for seed in range(4):
        X, w = weighted_normal_rows(rng, 6000)
        model = OpenWorld(score=score, target_tpr=0.95, random_state=seed).fit(X, sample_weight=w)
        traffic = draw_weighted(rng, 20000)
        kept.append(np.mean(model.predict(traffic) != model.unknown_label))
        once = conformal_threshold(model.held_out_scores_.values, 0.95)
        kept_counting_once.append(np.mean(model.score_samples(traffic) >= once))
    assert abs(np.mean(kept) - 0.95) < 0.01
    assert np.mean(kept_counting_once) < 0.93


def test_set_working_point_counts_the_rows_by_their_weights():
    rng = np.random.default_rng(1)
    X, w = weighted_normal_rows(rng, 3000)
    val, val_w = weighted_normal_rows(rng, 20000)
    model = OpenWorld(target_tpr=None).fit(X, sample_weight=w).set_working_point(val, 0.9, sample_weight=val_w)
    kept = np.mean(model.predict(draw_weighted(rng, 40000)) != model.unknown_label)
    assert abs(kept - 0.9) < 0.01
    scores = model.score_samples(val)
    assert model.threshold_ == conformal_threshold(scores, 0.9, val_w)
    unweighted = OpenWorld(target_tpr=None).fit(X, sample_weight=w).set_working_point(val, 0.9)
    assert unweighted.threshold_ == conformal_threshold(scores, 0.9)


def test_weighted_held_out_scores_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(2)
    X, w = weighted_normal_rows(rng, 2000)
    model = OpenWorld(random_state=0).fit(X, sample_weight=w)
    model.save(tmp_path / "m.safetensors")
    back = OpenWorld.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back.held_out_scores_.weights, model.held_out_scores_.weights)
    assert set(np.unique(back.held_out_scores_.weights)) == {1.0, 4.0}
    more, more_w = weighted_normal_rows(rng, 10)
    back.partial_fit(more, sample_weight=more_w)  # the loaded scores mix with new ones as before
    assert back.held_out_scores_.weights.size == back.held_out_scores_.values.size


def test_files_saved_before_weighted_scores_load_with_every_score_counted_once(tmp_path):
    from openworld.io.persistence import read_model_file, write_model_file

    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 4))
    model = OpenWorld(random_state=0).fit(X)
    model.save(tmp_path / "new.safetensors")
    tensors, manifest = read_model_file(tmp_path / "new.safetensors")
    del tensors["held_out.weights"]  # what a file written before weights were saved holds
    write_model_file(tmp_path / "old.safetensors", tensors, manifest)
    old = OpenWorld.load(tmp_path / "old.safetensors")
    np.testing.assert_array_equal(old.held_out_scores_.weights, np.ones(old.held_out_scores_.values.size))
    assert old.held_out_scores_.threshold(model.target_tpr) == old.threshold_ == model.threshold_


def test_float32_rows_far_from_zero_place_the_working_point_as_float64_rows_do():
    """The fold models subtract their rows' sums; summed in float32, thousands of rows near 8e5 drifted the
    folds' means by a quarter of a standard deviation and the threshold kept 0.973 for 0.95."""
    rng = np.random.default_rng(4)
    X = 8e5 + rng.normal(size=(6000, 6)).astype(np.float32).astype(np.float64)
    X = X.astype(np.float32).astype(np.float64)  # values a float32 holds exactly: the same rows both ways
    y = rng.integers(0, 3, 6000)
    double = OpenWorld(random_state=0).fit(X, y)
    single = OpenWorld(random_state=0).fit(X.astype(np.float32), y)
    assert single.threshold_ == pytest.approx(double.threshold_, rel=0.01)
