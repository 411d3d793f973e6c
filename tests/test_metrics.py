"""Metrics against independent references: brute-force loops over pairs, thresholds and bins, and closed forms."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openworld.core import metrics

# ---------------------------------------------------------------------- brute-force references


def brute_auroc(s_in, s_out):
    """Mann–Whitney: share of (in, out) pairs ranked right, ties count one half."""
    total = 0.0
    for a, b in itertools.product(s_in, s_out):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(s_in) * len(s_out))


def brute_average_precision(positives, negatives):
    """Σ_k (R_k − R_{k−1}) P_k over thresholds at each distinct score, descending; predicted positive when score ≥ τ."""
    ap, previous_recall = 0.0, 0.0
    for tau in sorted(set(positives) | set(negatives), reverse=True):
        tp = sum(1 for s in positives if s >= tau)
        fp = sum(1 for s in negatives if s >= tau)
        recall, precision = tp / len(positives), tp / (tp + fp)
        ap += (recall - previous_recall) * precision
        previous_recall = recall
    return ap


def brute_fpr_at_tpr(s_in, s_out, target):
    best = 1.0
    for tau in list(s_in) + list(s_out) + [math.inf]:
        tpr = sum(1 for s in s_in if s >= tau) / len(s_in)
        fpr = sum(1 for s in s_out if s >= tau) / len(s_out)
        if tpr >= target:
            best = min(best, fpr)
    return best


def brute_bins(confidence, correct, n_bins):
    """Per-bin (count, mean confidence, accuracy) with bins (m/B, (m+1)/B]; 0 belongs to the first bin."""
    out = []
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (m == 0 and c == 0.0)]
        if members:
            out.append((len(members), sum(confidence[i] for i in members) / len(members),
                        sum(correct[i] for i in members) / len(members)))
        else:
            out.append((0, None, None))
    return out


def brute_ece(confidence, correct, n_bins=15):
    n = len(confidence)
    return sum(count / n * abs(acc - conf) for count, conf, acc in brute_bins(confidence, correct, n_bins) if count)


scores = st.lists(st.integers(-5, 5), min_size=1, max_size=25)  # small integers: many ties


# ---------------------------------------------------------------------- detection


@settings(max_examples=60, deadline=None)
@given(scores, scores)
def test_auroc_is_the_mann_whitney_pair_count(s_in, s_out):
    assert metrics.auroc(s_in, s_out) == pytest.approx(brute_auroc(s_in, s_out), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(scores, scores)
def test_aupr_in_and_out_are_average_precision_with_each_side_positive(s_in, s_out):
    assert metrics.aupr_in(s_in, s_out) == pytest.approx(brute_average_precision(s_in, s_out), abs=1e-12)
    negated_in, negated_out = [-s for s in s_in], [-s for s in s_out]
    assert metrics.aupr_out(s_in, s_out) == pytest.approx(brute_average_precision(negated_out, negated_in), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(scores, scores, st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]))
def test_fpr_at_tpr_is_the_lowest_fpr_keeping_the_target(s_in, s_out, target):
    assert metrics.fpr_at_tpr(s_in, s_out, target) == pytest.approx(brute_fpr_at_tpr(s_in, s_out, target), abs=1e-12)


def test_fpr_at_tpr_on_long_collinear_runs():
    """Runs of tied (in, out) pairs make collinear ROC points; none of them may be skipped."""
    s_in = np.r_[np.arange(100.0), np.arange(100.0)[:5]]
    s_out = np.r_[np.arange(100.0), -np.ones(50)]
    for target in (0.9, 0.95, 0.97):
        assert metrics.fpr_at_tpr(s_in, s_out, target) == pytest.approx(brute_fpr_at_tpr(s_in, s_out, target))


def test_closed_forms():
    separated_in, separated_out = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    assert metrics.auroc(separated_in, separated_out) == 1.0
    assert metrics.aupr_in(separated_in, separated_out) == pytest.approx(1.0)
    assert metrics.aupr_out(separated_in, separated_out) == pytest.approx(1.0)
    assert metrics.fpr_at_tpr(separated_in, separated_out) == 0.0
    assert metrics.auroc(separated_out, separated_in) == 0.0
    # All scores equal: chance AUROC, AUPR = the positive share, and every OOD row is accepted.
    same_in, same_out = np.zeros(30), np.zeros(10)
    assert metrics.auroc(same_in, same_out) == 0.5
    assert metrics.aupr_in(same_in, same_out) == pytest.approx(0.75)
    assert metrics.aupr_out(same_in, same_out) == pytest.approx(0.25)
    assert metrics.fpr_at_tpr(same_in, same_out) == 1.0
    # 95 of 100 ID rows above every OOD row, 5 below all: FPR@95 = 0 exactly at the boundary.
    s_in = np.r_[np.full(95, 10.0), np.full(5, -10.0)]
    assert metrics.fpr_at_tpr(s_in, np.zeros(7), 0.95) == 0.0
    assert metrics.fpr_at_tpr(s_in, np.zeros(7), 0.96) == 1.0


def test_roc_curve_is_monotone_and_matches_thresholds():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    fpr, tpr, thresholds = metrics.roc(s_in, s_out)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    for k in (1, 57, 200, len(thresholds) - 1):
        assert tpr[k] == pytest.approx(np.mean(s_in >= thresholds[k]))
        assert fpr[k] == pytest.approx(np.mean(s_out >= thresholds[k]))
    thin = metrics.roc(s_in, s_out, drop_intermediate=True)
    assert len(thin[0]) <= len(fpr)


@pytest.mark.parametrize("function", [metrics.auroc, metrics.aupr_in, metrics.aupr_out, metrics.fpr_at_tpr])
def test_detection_metrics_refuse_an_empty_side_or_nan(function):
    with pytest.raises(ValueError, match="out-of-distribution"):
        function([1.0, 2.0], [])
    with pytest.raises(ValueError, match="in-distribution"):
        function([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        function([1.0, np.nan], [0.0])


# ---------------------------------------------------------------------- calibration


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.booleans()), min_size=1, max_size=40), st.sampled_from([1, 3, 10, 15]))
def test_ece_and_reliability_bins_match_a_loop_over_bins(rows, n_bins):
    # Confidences k/60 land on bin edges often (60 is a multiple of 1, 3, 10, 15).
    confidence = [k / 60 for k, _ in rows]
    correct = [c for _, c in rows]
    diagram = metrics.reliability_diagram(confidence, correct, n_bins)
    for m, (count, conf, acc) in enumerate(brute_bins(confidence, correct, n_bins)):
        assert diagram.count[m] == count
        if count:
            assert diagram.confidence[m] == pytest.approx(conf) and diagram.accuracy[m] == pytest.approx(acc)
        else:
            assert np.isnan(diagram.confidence[m]) and np.isnan(diagram.accuracy[m])
    assert metrics.expected_calibration_error(confidence, correct, n_bins) == pytest.approx(
        brute_ece(confidence, correct, n_bins), abs=1e-12
    )
    np.testing.assert_allclose(diagram.edges, [m / n_bins for m in range(n_bins + 1)])


def test_ece_closed_forms():
    # One bin: |accuracy − confidence|.
    assert metrics.expected_calibration_error([0.8] * 4, [True, True, False, False]) == pytest.approx(0.3)
    # Perfectly calibrated: a bin of confidence 0.75 right 3 times in 4, and a bin of 1.0 always right.
    assert metrics.expected_calibration_error([0.75] * 4 + [1.0] * 2, [True, True, True, False, True, True]) == pytest.approx(0.0)
    # Two bins weighted by their counts: 3/5 · |1 − 0.9| + 2/5 · |0 − 0.3|.
    ece = metrics.expected_calibration_error([0.9, 0.9, 0.9, 0.3, 0.3], [True, True, True, False, False])
    assert ece == pytest.approx(0.6 * 0.1 + 0.4 * 0.3)
    # Edges: 1/15 closes the first bin, 1.0 the last, 0 goes to the first.
    diagram = metrics.reliability_diagram([0.0, 1 / 15, 1.0], [True, True, True])
    assert diagram.count[0] == 2 and diagram.count[-1] == 1 and diagram.count.sum() == 3


def test_top_label():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.5, 0.1]])
    confidence, correct = metrics.top_label(proba, np.array(["a", "c", "a"]), np.array(["a", "b", "c"]))
    np.testing.assert_allclose(confidence, [0.7, 0.6, 0.5])
    assert correct.tolist() == [True, True, False]


def test_calibration_refuses_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.expected_calibration_error([0.5, 0.5], [True])
    with pytest.raises(ValueError, match="at least one row"):
        metrics.expected_calibration_error([], [])


# ---------------------------------------------------------------------- working point


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_working_point_metrics_match_counts(rows):
    rejected = np.array([r for r, _ in rows])
    is_ood = np.array([o for _, o in rows])
    both = sum(1 for r, o in rows if r and o)
    n_ood = sum(1 for _, o in rows if o)
    n_rejected = sum(1 for r, _ in rows if r)
    n_in_kept = sum(1 for r, o in rows if not r and not o)
    n_in = len(rows) - n_ood

    def check(value, numerator, denominator):
        if denominator == 0:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(numerator / denominator)

    check(metrics.ood_recall(rejected, is_ood), both, n_ood)
    check(metrics.ood_precision(rejected, is_ood), both, n_rejected)
    check(metrics.in_distribution_kept(rejected, is_ood), n_in_kept, n_in)


def test_working_point_metrics_want_boolean_masks_of_one_length():
    with pytest.raises(ValueError, match="boolean"):
        metrics.ood_recall(np.array([1, 0]), np.array([True, False]))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.ood_precision(np.array([True]), np.array([True, False]))
