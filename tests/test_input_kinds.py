"""Every input kind gives the NumPy float64 answer; bad input is a ValueError naming the problem.

DESIGN.md: "accepts NumPy, torch (any device — results stay on it), pandas,
Arrow"; "label outputs are NumPy arrays; numeric outputs follow the input
(NumPy in, NumPy out; torch in, torch out on the same device)"; "Bad input
gets a clear, specific error naming the problem (wrong dimension, NaN/Inf
rows, unknown label type, ...)".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from openworld import OpenWorld

STRUCTURES = ["tied", "full", "diag"]
D = 6
NUMERIC_METHODS = ("predict_proba", "decision_function", "score_samples")
# float32 scoring of float64 statistics: log densities of magnitude ~10–100 agree to ~1e-5 relative
FLOAT32 = {"rtol": 1e-5, "atol": 1e-4}
FLOAT64 = {"rtol": 1e-12, "atol": 1e-12}


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(3, D))
    X = np.vstack([c + rng.normal(size=(80, D)) for c in centers])
    y = np.repeat(["a", "b", "c"], 80)
    queries = np.vstack([X[::5], rng.normal(0.0, 4.0, size=(20, D))])
    return X, y, queries


@pytest.fixture(scope="module", params=STRUCTURES)
def fitted(request):
    X, y, queries = _problem()
    model = OpenWorld(covariance=request.param, target_tpr=0.9, random_state=0).fit(X, y)
    reference = {m: getattr(model, m)(queries) for m in NUMERIC_METHODS}
    reference["predict"] = model.predict(queries)
    return model, queries, reference


def _columns(Q):
    return {f"f{i}": Q[:, i] for i in range(Q.shape[1])}


HOST_KINDS = {
    "numpy float64": (lambda Q: Q, FLOAT64),
    "numpy float32": (lambda Q: Q.astype(np.float32), FLOAT32),
    "numpy float64 Fortran order": (lambda Q: np.asfortranarray(Q), FLOAT64),
    "list of lists": (lambda Q: Q.tolist(), FLOAT64),
    "pandas DataFrame": (lambda Q: pd.DataFrame(_columns(Q)), FLOAT64),
    "pandas DataFrame float32": (lambda Q: pd.DataFrame(_columns(Q.astype(np.float32))), FLOAT32),
    "pyarrow Table": (lambda Q: pa.table(_columns(Q)), FLOAT64),
    "pyarrow Table float32": (lambda Q: pa.table(_columns(Q.astype(np.float32))), FLOAT32),
    "pyarrow fixed-size-list array": (lambda Q: pa.FixedSizeListArray.from_arrays(pa.array(Q.ravel()), Q.shape[1]), FLOAT64),
    "pyarrow Table of one fixed-size-list column": (
        lambda Q: pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(Q.ravel()), Q.shape[1])}),
        FLOAT64,
    ),
}


@pytest.mark.parametrize("kind", list(HOST_KINDS))
def test_host_kinds_give_the_numpy_float64_answer(fitted, kind):
    model, queries, reference = fitted
    convert, tolerance = HOST_KINDS[kind]
    X = convert(queries)
    for method in NUMERIC_METHODS:
        out = getattr(model, method)(X)
        assert isinstance(out, np.ndarray), f"{method} returned {type(out)}"
        np.testing.assert_allclose(out, reference[method], **tolerance, err_msg=method)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    predicted = model.predict(X)
    assert isinstance(predicted, np.ndarray)
    if tolerance is FLOAT64:
        np.testing.assert_array_equal(predicted, reference["predict"])
    else:  # a float32 score may land on the other side of the threshold only if it sits on it
        agree = np.mean(predicted == reference["predict"])
        assert agree >= 0.95


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_cpu_in_torch_out(fitted, dtype):
    model, queries, reference = fitted
    X = torch.from_numpy(queries).to(dtype)
    tolerance = FLOAT64 if dtype == torch.float64 else FLOAT32
    for method in NUMERIC_METHODS:
        out = getattr(model, method)(X)
        assert isinstance(out, torch.Tensor), f"{method} returned {type(out)}"
        assert out.device == X.device
        assert out.dtype.is_floating_point
        np.testing.assert_allclose(out.numpy(), reference[method], **tolerance, err_msg=method)
    predicted = model.predict(X)
    assert isinstance(predicted, np.ndarray), "labels are NumPy whatever the input"
    if dtype == torch.float64:
        np.testing.assert_array_equal(predicted, reference["predict"])


@pytest.mark.parametrize(
    "kind",
    ["numpy float32", "torch float64", "torch float32", "pandas", "pyarrow", "fixed-size list + pyarrow labels"],
)
def test_fitting_from_any_kind_matches_numpy(kind):
    X, y, queries = _problem(1)
    reference = OpenWorld(covariance="full", target_tpr=None).fit(X, y).predict_proba(queries)
    if kind == "numpy float32":
        Xk, yk, tol = X.astype(np.float32), y, FLOAT32
    elif kind == "torch float64":
        Xk, yk, tol = torch.from_numpy(X), y, FLOAT64
    elif kind == "torch float32":
        Xk, yk, tol = torch.from_numpy(X).float(), y, FLOAT32
    elif kind == "pandas":
        Xk, yk, tol = pd.DataFrame(_columns(X)), pd.Series(y, name="label"), FLOAT64
    elif kind == "pyarrow":
        Xk, yk, tol = pa.table(_columns(X)), y, FLOAT64
    else:
        Xk, yk, tol = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), D), pa.array(y), FLOAT64
    model = OpenWorld(covariance="full", target_tpr=None).fit(Xk, yk)
    np.testing.assert_array_equal(model.classes_, ["a", "b", "c"])
    assert isinstance(model.classes_, np.ndarray)
    np.testing.assert_allclose(model.predict_proba(queries), reference, **tol)


def test_torch_integer_labels_come_back_as_numpy():
    X, y, queries = _problem(2)
    codes = np.searchsorted(["a", "b", "c"], y)
    model = OpenWorld(target_tpr=None).fit(torch.from_numpy(X), torch.from_numpy(codes))
    assert isinstance(model.classes_, np.ndarray)
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    predicted = model.predict(torch.from_numpy(queries))
    assert isinstance(predicted, np.ndarray) and predicted.dtype.kind in "iu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_in_cuda_out(dtype):
    X, y, queries = _problem(3)
    cpu_model = OpenWorld(covariance="full", target_tpr=0.9, random_state=0).fit(X, y)
    gpu_model = OpenWorld(covariance="full", target_tpr=0.9, random_state=0).fit(torch.from_numpy(X).cuda(), y)
    Q = torch.from_numpy(queries).to(dtype)
    for method in NUMERIC_METHODS:
        out = getattr(gpu_model, method)(Q.cuda())
        assert isinstance(out, torch.Tensor) and out.is_cuda, method
        expected = getattr(cpu_model, method)(Q)
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
        # a CPU-fitted model scores CUDA input on CUDA too
        out = getattr(cpu_model, method)(Q.cuda())
        assert out.is_cuda, method
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert isinstance(gpu_model.predict(Q.cuda()), np.ndarray)


# --------------------------------------------------------------------------
# Errors: a ValueError whose message names the problem
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    X, y, _ = _problem(4)
    return OpenWorld(target_tpr=None).fit(X, y)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score_samples", "partial_fit"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_wrong_number_of_features(model, method, as_torch):
    X = np.zeros((3, D + 1))
    X = torch.from_numpy(X) if as_torch else X
    args = (X, np.array(["a", "b", "c"])) if method == "partial_fit" else (X,)
    with pytest.raises(ValueError, match=f"{D + 1} features.*expecting {D}"):
        getattr(model, method)(*args)


@pytest.mark.parametrize("as_torch", [False, True])
def test_one_dimensional_x(model, as_torch):
    x = np.zeros(D)
    with pytest.raises(ValueError, match="(?i)2D|2-D"):
        model.predict(torch.from_numpy(x) if as_torch else x)
    with pytest.raises(ValueError, match="(?i)2D|2-D"):
        OpenWorld().fit(torch.from_numpy(x) if as_torch else x, ["a"] * D)


BAD_ROWS_KINDS = {
    "numpy": lambda X: X,
    "torch": lambda X: torch.from_numpy(X),
    "torch float32": lambda X: torch.from_numpy(X).float(),
    "pandas": lambda X: pd.DataFrame(_columns(X)),
    "pyarrow": lambda X: pa.table(_columns(X)),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS_KINDS))
@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_non_finite_rows_are_named(model, kind, value, word):
    X = np.ones((10, D))
    X[7, 2] = value
    X[9, 0] = value
    X = BAD_ROWS_KINDS[kind](X)
    for call in (model.predict, model.predict_proba, lambda X: OpenWorld().fit(X, ["a", "b"] * 5)):
        with pytest.raises(ValueError) as info:
            call(X)
        message = str(info.value)
        assert word in message, message
        assert "row 7" in message, f"first bad row not named: {message}"


@pytest.mark.parametrize("as_torch", [False, True])
def test_empty_x(model, as_torch):
    X = np.empty((0, D))
    X = torch.from_numpy(X) if as_torch else X
    with pytest.raises(ValueError, match="0 sample"):
        model.predict(X)
    with pytest.raises(ValueError, match="0 sample"):
        OpenWorld().fit(X, np.array([], dtype=str))


def test_y_of_wrong_length():
    X, y, _ = _problem(5)
    with pytest.raises(ValueError, match=f"{len(X)} rows.*{len(X) - 1} labels"):
        OpenWorld().fit(X, y[:-1])
    with pytest.raises(ValueError, match=f"{len(X)} rows.*{len(X) + 1} labels"):
        OpenWorld().fit(X, np.append(y, "a"))


@pytest.mark.parametrize("as_kind", ["numpy", "list", "pandas", "torch"])
def test_continuous_labels(as_kind):
    X, _, _ = _problem(6)
    y = np.random.default_rng(0).normal(size=len(X))
    y = {"numpy": y, "list": y.tolist(), "pandas": pd.Series(y), "torch": torch.from_numpy(y)}[as_kind]
    with pytest.raises(ValueError, match="Unknown label type"):
        OpenWorld().fit(X, y)


def test_integral_float_labels_are_class_ids():
    """The counterpart of the test above: 0.0/1.0/2.0 are class ids, not a regression target."""
    X, y, _ = _problem(6)
    codes = np.searchsorted(["a", "b", "c"], y).astype(float)
    np.testing.assert_array_equal(OpenWorld(target_tpr=None).fit(X, codes).classes_, [0, 1, 2])


@pytest.mark.parametrize("as_kind", ["object array", "pandas", "list"])
def test_mixed_str_and_int_labels(as_kind):
    X, _, _ = _problem(7)
    mixed = ["cat", 1] * (len(X) // 2)
    y = {"object array": np.array(mixed, dtype=object), "pandas": pd.Series(mixed), "list": mixed}[as_kind]
    with pytest.raises(ValueError, match="(?i)label"):
        model = OpenWorld().fit(X, y)
        pytest.fail(f"mixed str/int labels accepted silently as classes_ = {model.classes_.tolist()!r}")


@pytest.mark.parametrize(("fitted_labels", "new_labels"), [(["a", "b"], [0, 1]), ([0, 1], ["a", "b"])])
def test_partial_fit_with_the_other_label_type(fitted_labels, new_labels):
    X, _, _ = _problem(8)
    half = len(X) // 2
    m = OpenWorld(target_tpr=None).fit(X, np.repeat(fitted_labels, [half, len(X) - half]))
    with pytest.raises(ValueError, match="label"):
        m.partial_fit(X[:4], np.array(new_labels * 2))
    np.testing.assert_array_equal(m.classes_, fitted_labels)  # nothing was added


def test_forget_unknown_label(model):
    before = model.predict_proba(np.zeros((2, D)))
    with pytest.raises(ValueError, match="unknown class.*'zebra'"):
        model.forget(["zebra"])
    with pytest.raises(ValueError, match="unknown class"):
        model.forget(["a", "zebra"])
    np.testing.assert_array_equal(model.classes_, ["a", "b", "c"])  # nothing was forgotten
    np.testing.assert_array_equal(model.predict_proba(np.zeros((2, D))), before)


def test_forget_every_class():
    X, y, _ = _problem(9)
    m = OpenWorld(target_tpr=None).fit(X, y)
    with pytest.raises(ValueError, match="every class"):
        m.forget(["a", "b", "c"])
    np.testing.assert_array_equal(m.classes_, ["a", "b", "c"])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_invalid_sample_weight(bad):
    X, y, _ = _problem(10)
    weights = np.ones(len(X))
    weights[3] = bad
    with pytest.raises(ValueError, match="sample_weight"):
        OpenWorld().fit(X, y, sample_weight=weights)
    with pytest.raises(ValueError, match="sample_weight"):
        OpenWorld().fit(X, y, sample_weight=np.ones(len(X) - 1))


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("covariance", "spherical"),
        ("covariance", None),
        ("shrinkage", 1.5),
        ("shrinkage", -0.1),
        ("shrinkage", "ledoit-wolf"),
        ("shrinkage", True),
        ("target_tpr", 0.0),
        ("target_tpr", 1.0),
        ("target_tpr", 95),
        ("target_tpr", "high"),
        ("score", "energy"),
        ("score", None),
        ("priors", "balanced"),
        ("priors", [0.5, 0.3, 0.2, 0.0]),  # four priors for three classes
        ("priors", [0.5, -0.1, 0.6]),
        ("priors", [0.0, 0.0, 0.0]),
    ],
)
def test_invalid_parameters_name_themselves(param, value):
    X, y, _ = _problem(11)
    with pytest.raises(ValueError, match=param):
        OpenWorld(**{param: value}).fit(X, y)


def test_a_tensor_that_requires_grad_is_data():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 4)), np.repeat([0, 1], 100)
    graph = torch.from_numpy(X).requires_grad_(True) * 1.0  # a backbone's output called without no_grad
    model = OpenWorld(random_state=0).fit(graph, y)
    reference = OpenWorld(random_state=0).fit(X, y)
    assert model.threshold_ == reference.threshold_
    np.testing.assert_array_equal(model.decision_function(graph).detach().numpy(), reference.decision_function(X))


def test_dataframe_columns_are_read_by_name_in_fit_batches_scoring_updates_and_files(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 3)) * [1.0, 10.0, 100.0] + np.repeat([[0, 0, 0], [1, 20, -300]], 150, 0), np.repeat([0, 1], 150)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    shuffled = frame[["c", "a", "b"]]
    reference = OpenWorld(random_state=0).fit(X, y)
    # Chunks whose columns come in another order: the truth is fit(pd.concat(chunks)), which aligns by name.
    chunked = OpenWorld(random_state=0).fit_batches([(frame.iloc[:100], y[:100]), (shuffled.iloc[100:], y[100:])])
    np.testing.assert_allclose(chunked.statistics_.means.numpy(), reference.statistics_.means.numpy(), rtol=1e-12)
    model = OpenWorld(random_state=0).fit(frame, y)
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b", "c"])
    np.testing.assert_allclose(model.decision_function(shuffled), reference.decision_function(X), rtol=1e-12)
    np.testing.assert_allclose(model.decision_function(X), reference.decision_function(X), rtol=1e-12)  # unnamed: by position
    updated = OpenWorld(random_state=0).fit(frame.iloc[:200], y[:200]).partial_fit(shuffled.iloc[200:], y[200:])
    np.testing.assert_allclose(updated.statistics_.means.numpy(), reference.statistics_.means.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"lacks 1 feature column.*'c'"):
        model.predict(frame[["a", "b"]].assign(d=0.0))
    model.save(tmp_path / "m.safetensors")
    loaded = OpenWorld.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.feature_names_in_, ["a", "b", "c"])
    np.testing.assert_array_equal(loaded.decision_function(shuffled), model.decision_function(shuffled))
    assert not hasattr(OpenWorld(random_state=0).fit(frame, y).fit(X, y), "feature_names_in_")  # a refit on arrays


def test_class_ids_int64_cannot_hold_are_an_error_not_another_id(tmp_path):
    """A 64-bit hash id in uint64 wrapped to a negative class (2**64 − 59 became −59) in fit and in Parquet
    label columns; ids within int64 stay exact, the largest included."""
    import pyarrow.parquet as pq

    from openworld.io.tables import read_table

    X = np.random.default_rng(0).normal(size=(20, 3))
    too_big = 2**64 - 59
    for labels in (np.array([too_big, 42] * 10, dtype=np.uint64), np.array([too_big, 42] * 10, dtype=object)):
        with pytest.raises(ValueError, match=f"class id {too_big} does not fit in int64"):
            OpenWorld().fit(X, labels)
    largest = np.array([2**63 - 1, 0] * 10, dtype=np.uint64)
    assert OpenWorld(target_tpr=None).fit(X, largest).classes_.tolist() == [0, 2**63 - 1]
    pq.write_table(pa.table({"embedding": [list(row) for row in X],
                             "label": pa.array([too_big, 42] * 10, type=pa.uint64())}), tmp_path / "ids.parquet")
    with pytest.raises(ValueError, match="does not fit in int64"):
        read_table(tmp_path / "ids.parquet")
