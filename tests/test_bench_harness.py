"""The quality benchmark's harness: a detector whose score depends on the rows beside it is caught."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.peers_pytorch_ood import _depends_on_batch, _predict


class RowWise:
    """A score of each row alone."""

    def predict_features(self, x):
        return (x**2).sum(1)


class BatchCentred:
    """A score that subtracts the batch's mean row: it changes with the rows scored beside it."""

    def predict_features(self, x):
        return ((x - x.mean(0)) ** 2).sum(1)


def test_batch_dependence_is_detected_and_row_by_row_scores_are_each_rows_own():
    z = torch.from_numpy(np.random.default_rng(0).normal(size=(100, 5)))
    assert not _depends_on_batch(RowWise(), "features", z, None)
    assert _depends_on_batch(BatchCentred(), "features", z, None)
    # Round-off of the order of float32's is not dependence on the batch.
    jitter = RowWise()
    jitter.predict_features = lambda x: (x**2).sum(1) * (1 + 1e-7 * x.shape[0])
    assert not _depends_on_batch(jitter, "features", z, None)
    # One row at a time, the batch-centred score of a row no longer depends on the others: it is zero.
    assert np.allclose(_predict(BatchCentred(), "features", z, None, 1), 0)
    assert np.allclose(_predict(RowWise(), "features", z, None, 7), -(z.numpy() ** 2).sum(1))
