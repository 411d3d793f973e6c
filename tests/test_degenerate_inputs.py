"""Degenerate but legal input works through shrinkage; with shrinkage off it is a clear error.

DESIGN.md, Errors: "Degenerate but legal input (d > n per class, constant
features, duplicate rows, a class with one example) works, through
shrinkage", and bad input gets "a clear, specific error ... never a stack
trace from deep inside linear algebra, and never a silently wrong number".
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from openworld import OpenWorld

STRUCTURES = ["tied", "full", "diag"]
SHRINKAGES = ["auto", "oas", 0.3]
UNKNOWN = "unknown"


@st.composite
def degenerate_problems(draw):
    """A small labelled problem with the degeneracies of DESIGN.md, and rows to score."""
    n_classes = draw(st.integers(2, 4))
    d = draw(st.integers(1, 24))
    rows_per_class = draw(st.lists(st.integers(1, 6), min_size=n_classes, max_size=n_classes))
    n_constant = draw(st.integers(0, d))
    duplicates = draw(st.sampled_from(["none", "some rows twice", "one class is one row repeated"]))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    int_labels = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 3.0, size=(n_classes, d))
    blocks, labels = [], []
    for k, n_k in enumerate(rows_per_class):
        block = centers[k] + rng.normal(size=(n_k, d))
        if duplicates == "one class is one row repeated" and k == 0:
            block = np.repeat(block[:1], max(n_k, 3), axis=0)
        elif duplicates == "some rows twice":
            block = np.vstack([block, block[: max(1, n_k // 2)]])
        blocks.append(block)
        labels += [k] * block.shape[0]
    X = np.vstack(blocks)
    y = np.array(labels)
    constant_columns = rng.choice(d, n_constant, replace=False)
    # values such as 0.1 are not exact in binary: the mean of a constant column may not be either
    X[:, constant_columns] = rng.choice([0.0, 0.1, -7.7, 1 / 3], size=n_constant)

    fresh = centers[y] + rng.normal(size=X.shape)
    fresh[:, constant_columns] = X[:, constant_columns]
    queries = np.vstack([X, fresh, centers]) * scale
    if not int_labels:
        y = np.array(["class-%d" % k for k in y])
    return {
        "X": (X * scale).astype(dtype),
        "y": y,
        "queries": queries.astype(dtype),
        "covariance": draw(st.sampled_from(STRUCTURES)),
        "shrinkage": draw(st.sampled_from(SHRINKAGES)),
        "target_tpr": draw(st.sampled_from([None, 0.9])),
    }


def _explicit_problem(covariance, shrinkage, X, y, dtype=np.float64):
    X = np.asarray(X, dtype=dtype)
    queries = np.vstack([X, X + 0.25 * np.std(X) + 0.5])
    return {"X": X, "y": np.asarray(y), "queries": queries.astype(dtype),
            "covariance": covariance, "shrinkage": shrinkage, "target_tpr": None}


_ROWS = np.random.default_rng(3).normal(size=(8, 4))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(problem=degenerate_problems())
# every class is one example: no within-class spread at all
@example(problem=_explicit_problem("diag", "oas", _ROWS[:3], ["a", "b", "c"]))
@example(problem=_explicit_problem("tied", "auto", _ROWS[:3], ["a", "b", "c"]))
# a class made of one row repeated, next to a class with spread
@example(problem=_explicit_problem("diag", "auto", np.vstack([np.repeat(_ROWS[:1], 3, 0), _ROWS[1:]]), [0] * 3 + [1] * 7))
@example(problem=_explicit_problem("full", "auto", np.vstack([np.repeat(_ROWS[:1], 3, 0), _ROWS[1:]]), [0] * 3 + [1] * 7))
def test_degenerate_inputs_give_finite_normalised_outputs(problem):
    model = OpenWorld(
        covariance=problem["covariance"],
        shrinkage=problem["shrinkage"],
        target_tpr=problem["target_tpr"],
        unknown_label=UNKNOWN,
        random_state=0,
    ).fit(problem["X"], problem["y"])
    Q = problem["queries"]

    np.testing.assert_array_equal(model.classes_, np.unique(problem["y"]))
    proba = model.predict_proba(Q)
    decision = model.decision_function(Q)
    scores = model.score_samples(Q)
    assert proba.shape == decision.shape == (Q.shape[0], len(model.classes_))
    assert scores.shape == (Q.shape[0],)
    assert np.isfinite(proba).all(), "predict_proba has NaN/Inf"
    assert np.isfinite(decision).all(), "decision_function has NaN/Inf"
    assert np.isfinite(scores).all(), "score_samples has NaN/Inf"
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)

    predicted = model.predict(Q)
    assert predicted.shape == (Q.shape[0],)
    allowed = set(model.classes_.tolist()) | ({UNKNOWN} if problem["target_tpr"] is not None else set())
    assert set(predicted.tolist()) <= allowed


# --------------------------------------------------------------------------
# A class with almost no information still gets a usable covariance.
# --------------------------------------------------------------------------


def _few_row_class_problem(layout: str, d: int = 10, seed: int = 0):
    """200 rows of class "many" around 0 and a class "few" around 6·1 (about 19 σ away)."""
    rng = np.random.default_rng(seed)
    many = rng.normal(0.0, 1.0, size=(200, d))
    if layout == "one row":
        few = rng.normal(6.0, 1.0, size=(1, d))
    elif layout == "two rows":
        few = rng.normal(6.0, 1.0, size=(2, d))
    else:  # "one row repeated": duplicates carry no more shape information than one row
        few = np.repeat(rng.normal(6.0, 1.0, size=(1, d)), 4, axis=0)
    X = np.vstack([many, few])
    y = np.array(["many"] * 200 + ["few"] * len(few))
    fresh_few = few.mean(0) + rng.normal(0.0, 0.5, size=(100, d))
    return X, y, fresh_few


@pytest.mark.parametrize("layout", ["one row", "two rows", "one row repeated"])
@pytest.mark.parametrize("shrinkage", SHRINKAGES)
@pytest.mark.parametrize("covariance", STRUCTURES)
def test_class_with_few_distinct_rows_is_usable(covariance, shrinkage, layout):
    """Fresh rows next to a tiny class, 19 σ from the other one, are that class (as LDA says)."""
    X, y, fresh_few = _few_row_class_problem(layout)
    reference = OpenWorld(covariance="tied", shrinkage=shrinkage, target_tpr=None).fit(X, y)
    assert np.mean(reference.predict(fresh_few) == "few") == 1.0  # the problem is easy

    model = OpenWorld(covariance=covariance, shrinkage=shrinkage, target_tpr=None).fit(X, y)
    decision = model.decision_function(fresh_few)
    assert np.isfinite(decision).all(), "decision_function has NaN/Inf"
    assert np.mean(model.predict(fresh_few) == "few") >= 0.9


@pytest.mark.parametrize("score", ["relative_mahalanobis", "mahalanobis"])
@pytest.mark.parametrize("shrinkage", SHRINKAGES)
@pytest.mark.parametrize("covariance", STRUCTURES)
def test_classes_of_one_repeated_row_score_as_if_their_scatter_were_exactly_zero(covariance, shrinkage, score):
    """Scores do not depend on where the data sit: rows on a binary grid repeat into an exactly zero scatter;
    shifted by 0.1 their class means are off by round-off, and the scatter is ~1e-33, not zero. Shrinkage
    must not take that round-off for the data's scale (it gave scores of −1e18 at the training rows)."""
    prototypes = np.round(np.random.default_rng(0).normal(size=(3, 5)) * 16) / 16
    X, y = np.repeat(prototypes, 3, axis=0), np.repeat([0, 1, 2], 3)
    shifted = OpenWorld(covariance=covariance, shrinkage=shrinkage, score=score, target_tpr=None).fit(X + 0.1, y)
    assert shifted.statistics_.scatters.abs().max() > 0  # the round-off this test is about
    exact = OpenWorld(covariance=covariance, shrinkage=shrinkage, score=score, target_tpr=None).fit(X, y)
    assert exact.statistics_.scatters.abs().max() == 0
    probes = np.vstack([prototypes, prototypes.mean(0), prototypes[0] + 0.3])
    reference = exact.score_samples(probes)  # distances are in units of a tiny ridge: compare on their scale
    assert np.allclose(shifted.score_samples(probes + 0.1), reference, rtol=1e-4, atol=1e-9 * np.abs(reference).max())
    assert np.allclose(shifted.predict_proba(probes + 0.1), exact.predict_proba(probes), atol=1e-6)


# --------------------------------------------------------------------------
# Shrinkage off: singular estimates are a clear error, never a LinAlgError.
# --------------------------------------------------------------------------

SINGULAR_MESSAGE = r"(?i)singular|too few rows|zero variance"


def _fit_expecting_clear_error(model, X, y):
    try:
        model.fit(X, y)
        model.decision_function(X)
    except torch.linalg.LinAlgError as error:  # a subclass of RuntimeError, not ValueError
        pytest.fail(f"linear-algebra error leaked to the user: {error}")
    except ValueError as error:
        assert re.search(SINGULAR_MESSAGE, str(error)), str(error)
        return
    pytest.fail(
        f"no error for a singular {model.covariance!r} covariance with shrinkage=None; "
        f"decision_function(X[:2]) = {model.decision_function(X[:2]).tolist()}"
    )


@pytest.mark.parametrize(
    ("covariance", "d", "rows_per_class"),
    [
        ("tied", 10, 4),  # pooled scatter has rank 2·(4 − 1) = 6 < 10
        ("tied", 30, 5),
        ("full", 10, 4),  # each class scatter has rank 3 < 10
        ("full", 30, 5),
        ("full", 6, 6),  # rank 5 < 6: one row short
    ],
)
def test_no_shrinkage_with_more_features_than_rows_raises(covariance, d, rows_per_class):
    rng = np.random.default_rng(d)
    X = rng.normal(size=(2 * rows_per_class, d))
    y = np.repeat(["a", "b"], rows_per_class)
    _fit_expecting_clear_error(OpenWorld(covariance=covariance, shrinkage=None, target_tpr=None), X, y)


@pytest.mark.parametrize("covariance", ["diag", "tied", "full"])
@pytest.mark.parametrize("constant", [0.0, 0.1, -7.7, 1 / 3])
def test_no_shrinkage_with_a_constant_feature_raises(covariance, constant):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    X[:, 1] = constant
    y = np.repeat(["a", "b"], 20)
    _fit_expecting_clear_error(OpenWorld(covariance=covariance, shrinkage=None, target_tpr=None), X, y)


@pytest.mark.parametrize("covariance", STRUCTURES)
def test_no_shrinkage_is_fine_when_the_estimate_is_regular(covariance):
    """The error above is about the data, not about shrinkage=None itself."""
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(0, 1, size=(60, 3)), rng.normal(5, 1, size=(60, 3))])
    y = np.repeat(["a", "b"], 60)
    model = OpenWorld(covariance=covariance, shrinkage=None, target_tpr=None).fit(X, y)
    assert np.isfinite(model.decision_function(X)).all()
    assert np.mean(model.predict(X) == y) > 0.95


@pytest.mark.parametrize("covariance", STRUCTURES)
def test_a_row_too_far_to_score_in_float32_is_an_error_or_rejected_never_nan(covariance):
    """|x| = 1e20 is finite in float32, but its squared distances are not: a per-class head got ∞ − ∞ = NaN,
    and NaN, never below the threshold, was accepted as a known class."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (50, 8)), rng.normal(3, 1, (50, 8))]).astype(np.float32)
    y = np.repeat(["a", "b"], 50)
    model = OpenWorld(covariance=covariance, random_state=0).fit(X, y)
    far = np.full((2, 8), 1e20, dtype=np.float32)
    far[0, 0] = -1e20
    far[1] = X[0]  # an ordinary row beside it
    for method in (model.predict, model.score_samples, model.predict_proba, model.decision_function):
        try:
            out = method(far)
        except ValueError as error:
            assert "row(s) [0] lie too far" in str(error) and "float64" in str(error)
            continue
        if method == model.predict:
            assert out[0] == model.unknown_label and out[1] == "a"
        else:
            assert not np.isnan(out).any()
    # In float64 the same rows are scored, and the far one is rejected.
    assert (model.predict(far.astype(np.float64)) == [model.unknown_label, "a"]).all()
