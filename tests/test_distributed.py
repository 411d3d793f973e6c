"""Distributed fitting on a real Dask LocalCluster of two worker processes equals the local fit."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

import openworld.distributed as owd  # noqa: E402
from openworld import OpenWorld  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=6000)
    X = rng.normal(size=(6000, 10)) + y[:, None]
    return X, np.array([f"k{v}" for v in y])


def test_cluster_fit_equals_local_fit(client, data):
    X, y = data
    Xd, yd = da.from_array(X, chunks=(700, 10)), da.from_array(y, chunks=700)
    model = owd.fit(Xd, yd, random_state=0)
    local = OpenWorld(random_state=0).fit_batches((X[i : i + 700], y[i : i + 700]) for i in range(0, 6000, 700))
    assert model.classes_.tolist() == local.classes_.tolist()
    np.testing.assert_allclose(model.statistics_.scatters.numpy(), local.statistics_.scatters.numpy(), rtol=1e-9)
    np.testing.assert_allclose(model.predict_proba(X), OpenWorld(random_state=0).fit(X, y).predict_proba(X), rtol=1e-8, atol=1e-12)
    # The working point comes from a sample of the same size drawn per partition, not the same rows.
    fresh = np.random.default_rng(1).normal(size=(20000, 10)) + np.random.default_rng(2).integers(0, 5, 20000)[:, None]
    kept = (model.predict(fresh) != "unknown").mean()
    assert abs(kept - (local.predict(fresh) != "unknown").mean()) < 0.02 and abs(kept - 0.95) < 0.02


def test_a_class_in_one_partition_only_and_an_empty_partition(client, data):
    X, y = data
    order = np.argsort(y, kind="stable")
    Xs, ys = X[order], y[order]
    Xd = da.concatenate([da.from_array(Xs, chunks=(1200, 10)), da.zeros((0, 10), chunks=(0, 10))])
    yd = da.concatenate([da.from_array(ys, chunks=1200), da.from_array(np.array([], dtype=ys.dtype), chunks=0)])
    model = owd.fit(Xd, yd, target_tpr=None)
    np.testing.assert_allclose(model.predict_proba(X), OpenWorld(target_tpr=None).fit(X, y).predict_proba(X), rtol=1e-8, atol=1e-12)


def test_a_partition_with_nan_rows_is_named(client, data):
    X, y = data
    X = X.copy()
    X[1500, 3] = np.nan
    with pytest.raises(ValueError, match="partition 2: .*NaN"):
        owd.fit(da.from_array(X, chunks=(700, 10)), da.from_array(y, chunks=700))


def test_scoring_by_blocks_equals_local_scoring(client, data):
    X, y = data
    model = OpenWorld(random_state=0).fit(X, y)
    Xd = da.from_array(X, chunks=(1000, 10))
    np.testing.assert_allclose(owd.score_samples(model, Xd).compute(), model.score_samples(X), rtol=1e-12)
    np.testing.assert_allclose(owd.predict_proba(model, Xd).compute(), model.predict_proba(X), rtol=1e-12)
    assert (owd.predict(model, Xd).compute() == model.predict(X)).all()


def test_mismatched_partitions_are_refused(client, data):
    X, y = data
    with pytest.raises(ValueError, match="partition them alike"):
        owd.fit(da.from_array(X, chunks=(700, 10)), da.from_array(y, chunks=900))


def test_kernel_density_fit_gathers_its_row_sample_from_the_partitions(client):
    """Under capacity the sample merged from the partitions holds every row, once."""
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0, 1, (400, 3)), rng.normal(6, 1, (400, 3))])
    model = owd.fit(da.from_array(X, chunks=(300, 3)), score="kernel_density", target_tpr=None, random_state=0)
    assert len(model.kernel_sample_.rows) == len(X)
    rows = np.asarray(model.kernel_sample_.rows)
    np.testing.assert_array_equal(rows[np.lexsort(rows.T)], X[np.lexsort(X.T)])
    assert np.isfinite(model.score_samples(X)).all()


def test_partitions_that_differ_in_label_type_weigh_nothing_or_are_not_dask_are_handled():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    mixed = da.from_array(np.array(["a", "b"] * 100 + [1, 2] * 100, dtype=object), chunks=200)
    with pytest.raises(ValueError, match="labels change type"):
        owd.fit(da.from_array(X, chunks=(200, 3)), mixed)
    y = np.repeat([0, 1], 200)
    w = np.r_[np.zeros(200), np.ones(200)]  # the first partition weighs nothing: as in one local fit
    local = OpenWorld(random_state=0).fit(X, y, sample_weight=w)
    spread = owd.fit(
        da.from_array(X, chunks=(200, 3)), da.from_array(y, chunks=200), sample_weight=da.from_array(w, chunks=200), random_state=0
    )
    np.testing.assert_allclose(spread.statistics_.weights.numpy(), local.statistics_.weights.numpy())
    with pytest.raises(ValueError, match="y must be a Dask array"):
        owd.fit(da.from_array(X, chunks=(200, 3)), y)
