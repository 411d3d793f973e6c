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


def test_validation_picks_by_auroc_and_breaks_exact_ties_by_validation_accuracy():
    # Imported here: the module sets single-thread variables for the benchmark's own processes.
    from benchmarks.quality import select_per_seed

    def result(val_auroc, val_accuracy, accuracy):
        return {"val_auroc": val_auroc, "val_accuracy": val_accuracy, "auroc": val_auroc, "accuracy": accuracy,
                "setting_dict": {}}

    # Keys are visited in sorted order and max keeps the first of equals, so without the tie-break "· full"
    # (sorted first) would win seed 0.
    seed_0 = {("openworld", "ensemble · full"): result(0.95, 0.90, 0.91),
              ("openworld", "ensemble · tied"): result(0.95, 0.93, 0.94),  # same score, better posteriors
              ("openworld", "other"): result(0.94, 0.99, 0.99)}  # better posteriors, worse AUROC: not picked
    seed_1 = {("openworld", "ensemble · full"): result(0.96, 0.90, 0.90),  # AUROC first, accuracy only on ties
              ("openworld", "ensemble · tied"): result(0.95, 0.97, 0.97),
              ("openworld", "other"): result(0.90, 0.99, 0.99)}
    picked = select_per_seed([seed_0, seed_1], "openworld")
    assert picked["name"] == "ensemble · tied / ensemble · full (per seed)"
    assert picked["accuracy"] == (0.94 + 0.90) / 2
    assert picked["val_accuracy"] == (0.93 + 0.90) / 2
