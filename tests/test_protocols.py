"""Evaluation splits: reproducible from (labels, share, seed), disjoint, of the stated sizes."""

from __future__ import annotations

import numpy as np
import pytest

from openworld.evaluation.protocols import holdout_split, open_set_split, round_half_up

INTENTS = np.array([f"intent{i:03d}" for i in range(150)])


def rows_of(classes, per_class=3, seed=0):
    """Labels with ``per_class`` rows each, in a shuffled order."""
    labels = np.repeat(classes, per_class)
    return labels[np.random.default_rng(seed).permutation(labels.size)]


# --------------------------------------------------------------------------- open set


def test_rounding_rule():
    assert [round_half_up(v) for v in (37.5, 36.5, 16.0, 0.49, 0.5, 2.5)] == [38, 37, 16, 0, 1, 3]
    assert round_half_up(0.35 * 10) == 4  # 3.4999999999999996 in binary


@pytest.mark.parametrize("n_classes, expected_unknown", [(150, 38), (64, 16), (10, 3), (4, 1)])
def test_open_set_sizes(n_classes, expected_unknown):
    """25% of C classes are unknown, halves rounding up: 150 → 38 (37.5), 64 → 16, 10 → 3 (2.5)."""
    known, unknown = open_set_split(rows_of(INTENTS[:n_classes]), unknown_share=0.25, seed=0)
    assert len(unknown) == expected_unknown
    assert len(known) == n_classes - expected_unknown


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_set_disjoint_sorted_and_complete(seed):
    known, unknown = open_set_split(rows_of(INTENTS), seed=seed)
    assert not set(known) & set(unknown)
    assert set(known) | set(unknown) == set(INTENTS)
    assert (np.sort(known) == known).all() and (np.sort(unknown) == unknown).all()
    assert known.dtype.kind == "U"


def test_open_set_reproducible_and_independent_of_row_order():
    a = open_set_split(rows_of(INTENTS, seed=0), seed=7)
    b = open_set_split(rows_of(INTENTS, per_class=5, seed=1)[::-1], seed=7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = open_set_split(rows_of(INTENTS), seed=8)
    assert not np.array_equal(a[1], c[1])


def test_open_set_is_the_documented_permutation():
    """Sorted classes, permuted by default_rng(seed); the first round_half_up(share·C) are unknown."""
    labels = rows_of(INTENTS)
    order = np.random.default_rng(3).permutation(150)
    known, unknown = open_set_split(labels, unknown_share=0.25, seed=3)
    np.testing.assert_array_equal(unknown, np.sort(INTENTS[order[:38]]))
    np.testing.assert_array_equal(known, np.sort(INTENTS[order[38:]]))


def test_open_set_pinned_values():
    """Pinned so that a change in NumPy's random stream cannot silently change published benchmarks."""
    known, unknown = open_set_split(np.arange(8), unknown_share=0.25, seed=0)
    assert unknown.tolist() == [2, 4]  # default_rng(0).permutation(8) = [2, 4, 3, 6, 5, 0, 1, 7]
    assert known.tolist() == [0, 1, 3, 5, 6, 7]
    _, unknown = open_set_split(INTENTS, unknown_share=0.25, seed=0)
    assert unknown[:5].tolist() == ["intent001", "intent002", "intent005", "intent011", "intent013"]


def test_open_set_int_labels_and_bad_arguments():
    known, unknown = open_set_split(np.arange(20) % 4, unknown_share=0.5, seed=0)
    assert known.dtype == np.int64 and len(known) == len(unknown) == 2
    for share in (0, 1, 1.5, -0.1, True, "a"):
        with pytest.raises(ValueError, match="unknown_share"):
            open_set_split(INTENTS, unknown_share=share)
    with pytest.raises(ValueError, match="both sides need at least one class"):
        open_set_split(INTENTS[:3], unknown_share=0.1)  # 0.3 → 0 unknown
    with pytest.raises(ValueError, match="seed"):
        open_set_split(INTENTS, seed=None)


# --------------------------------------------------------------------------- holdout


def test_holdout_stratified_sizes():
    counts = {"a": 100, "b": 21, "c": 5, "d": 2, "e": 1}
    labels = np.concatenate([[k] * n for k, n in counts.items()])
    labels = labels[np.random.default_rng(0).permutation(labels.size)]
    train, val = holdout_split(labels, share=0.2, seed=0)
    # min(round_half_up(0.2 · n_k), n_k − 1): 20, 4 (4.2), 1, 0 (0.4), 0 (one row stays in training)
    expected = {"a": 20, "b": 4, "c": 1, "d": 0, "e": 0}
    got = {k: int((labels[val] == k).sum()) for k in counts}
    assert got == expected
    assert {k: int((labels[train] == k).sum()) for k in counts} == {k: counts[k] - expected[k] for k in counts}


def test_holdout_every_class_keeps_a_training_row():
    labels = np.repeat(["x", "y"], [2, 3])
    train, val = holdout_split(labels, share=0.9, seed=0)
    assert set(labels[train]) == {"x", "y"}
    assert len(val) == 1 + 2


@pytest.mark.parametrize("seed", [0, 1])
def test_holdout_partition_and_reproducibility(seed):
    labels = rows_of(INTENTS[:20], per_class=10, seed=seed)
    train, val = holdout_split(labels, share=0.3, seed=seed)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[train, val]), np.arange(labels.size))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    again = holdout_split(labels, share=0.3, seed=seed)
    np.testing.assert_array_equal(again[1], val)
    other = holdout_split(labels, share=0.3, seed=seed + 10)
    assert not np.array_equal(other[1], val)
    assert len(val) == 20 * 3


def test_holdout_bad_arguments():
    with pytest.raises(ValueError, match="share"):
        holdout_split(INTENTS, share=0)
    with pytest.raises(ValueError, match="seed"):
        holdout_split(INTENTS, share=0.2, seed=1.5)
