"""Fitting and scoring on Dask collections.

Each partition becomes class statistics plus a bottom-k sample of its rows
(:mod:`openworld.core.accumulator`); a tree reduction merges them, so only
C·d² numbers per partition cross the network, never the rows. The merged
result is the same model a local ``fit`` of all rows gives.

To use an existing cluster, connect a client first; Dask sends the work to
the active client::

    from dask.distributed import Client
    client = Client("tcp://scheduler-host:8786")
    model = openworld.distributed.fit(X, y, covariance="tied")   # X: dask array (n, d), y: (n,)
    scores = openworld.distributed.score_samples(model, X).compute()
"""

from __future__ import annotations

import numpy as np

from openworld.core.accumulator import LabelledStatistics, RowSample
from openworld.core.arrays import as_features, as_labels, as_weights
from openworld.estimator import WORKING_POINT_ROWS, OpenWorld


def _partitions(collection) -> list:
    """Row partitions of a Dask array (chunked along rows only) or DataFrame / Series, as delayed objects."""
    import dask.array as da

    if isinstance(collection, da.Array):
        if collection.ndim == 2 and collection.numblocks[1] != 1:
            collection = collection.rechunk({1: -1})  # statistics need whole rows
        return list(collection.to_delayed().ravel())
    return list(collection.to_delayed())


def _partition_state(number: int, X, y, weights, seed, need_sample: bool, name: str):
    """Statistics and row sample of one partition; None for an empty one."""
    X = getattr(X, "to_numpy", lambda: X)()
    if len(X) == 0:
        return None
    try:
        features, _ = as_features(X, name=name)
        labels = np.full(features.shape[0], "normal") if y is None else as_labels(y, features.shape[0])
        w = None if weights is None else as_weights(np.asarray(weights), features.shape[0], features.device, part_of_more=True)
    except ValueError as error:
        raise ValueError(f"partition {number}: {error}") from None
    state = LabelledStatistics.from_rows(features, labels, w)
    sample = RowSample(WORKING_POINT_ROWS)
    if need_sample:
        priorities = np.random.default_rng([seed, number]).random(features.shape[0])
        sample = sample.offer(features, labels, w, priorities)
    return state, sample


def _merge(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a[0].merge(b[0]), a[1].merge(b[1])


def _tree_reduce(parts: list):
    """Pairwise merges, log2(P) levels deep, as delayed tasks."""
    from dask import delayed

    merge = delayed(_merge, pure=True)
    while len(parts) > 1:
        parts = [merge(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def fit(X, y=None, *, sample_weight=None, **params) -> OpenWorld:
    """``OpenWorld(**params)`` fitted on a Dask array or DataFrame ``X`` (n, d) with labels ``y`` (n,).

    ``y`` and ``sample_weight`` must be partitioned like ``X``. Mixtures and
    trimming need all rows in one place and are refused, as in ``fit_batches``.
    """
    from dask import compute, delayed

    model = OpenWorld(**params)
    model._validate_params()
    if model._is_mixture() or model.contamination:
        raise ValueError("distributed fit needs components=1 and contamination=0 (mixtures and trimming revisit rows)")
    x_parts = _partitions(X)
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is not None and not hasattr(value, "to_delayed"):
            raise ValueError(f"{name} must be a Dask array or Series partitioned like X, got {type(value).__name__}")
    y_parts = [None] * len(x_parts) if y is None else _partitions(y)
    w_parts = [None] * len(x_parts) if sample_weight is None else _partitions(sample_weight)
    if not (len(x_parts) == len(y_parts) == len(w_parts)):
        raise ValueError(
            f"X has {len(x_parts)} partitions but y has {len(y_parts)} and sample_weight {len(w_parts)}: partition them alike"
        )
    seed = int(model._rng().integers(2**31))
    task = delayed(_partition_state, pure=True)
    states = [
        task(i, xp, yp, wp, seed, model._needs_row_sample(), type(model).__name__)
        for i, (xp, yp, wp) in enumerate(zip(x_parts, y_parts, w_parts))
    ]
    (merged,) = compute(_tree_reduce(states))
    if merged is None:
        raise ValueError("every partition is empty: nothing to fit")
    state, sample = merged
    with model._updating() as updated:  # as fit: a failure leaves the former model whole
        updated._name_features(None)  # partitions are read by position (a former fit's column names no longer hold)
        updated._fit_from_state(state.sorted(), sample)
    return model


def _map_rows(model: OpenWorld, X, method: str, width: int | None):
    import dask.array as da

    if not isinstance(X, da.Array):
        X = X.to_dask_array(lengths=True)
    X = X.rechunk({1: -1})
    if width is None:
        return X.map_blocks(lambda block: getattr(model, method)(block), drop_axis=1, dtype=float)
    return X.map_blocks(lambda block: getattr(model, method)(block), chunks=(X.chunks[0], (width,)), dtype=float)


def score_samples(model: OpenWorld, X):
    """Dask array (n,) of OOD scores, block by block."""
    return _map_rows(model, X, "score_samples", None)


def predict_proba(model: OpenWorld, X):
    """Dask array (n, C) of posteriors, block by block."""
    return _map_rows(model, X, "predict_proba", len(model.classes_))


def predict(model: OpenWorld, X):
    """Dask array (n,) of labels (``unknown_label`` where rejected), block by block."""
    import dask.array as da

    if not isinstance(X, da.Array):
        X = X.to_dask_array(lengths=True)
    X = X.rechunk({1: -1})
    return X.map_blocks(lambda block: model.predict(block).astype(object), drop_axis=1, dtype=object)
