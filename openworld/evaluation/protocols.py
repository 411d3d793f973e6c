"""Seeded splits for evaluation protocols, reproducible from ``(labels, share, seed)`` alone.

The open-set protocol (Shu et al. 2017; Zhang et al. 2021, "Deep Open Intent
Classification with Adaptive Decision Boundary") hides a share of the
classes: train on the known ones, test on all, and call every test row of a
hidden class out-of-distribution. Hyper-parameters are then chosen on a
validation fold of the *training* rows (:func:`holdout_split`), never on
test.

>>> import numpy as np
>>> labels = np.repeat([f"intent{i:03d}" for i in range(150)], 4)
>>> known, unknown = open_set_split(labels, unknown_share=0.25, seed=0)
>>> len(known), len(unknown)
(112, 38)
>>> train, val = holdout_split(labels, share=0.25, seed=0)
>>> len(train), len(val)
(450, 150)
"""

from __future__ import annotations

import numpy as np

from openworld.core.arrays import as_labels

__all__ = ["holdout_split", "open_set_split", "round_half_up"]


def round_half_up(value: float) -> int:
    """``⌊value + ½⌋``: halves round up (36.5 → 37, where Python's ``round`` gives 36).

    A 1e-9 slack absorbs binary noise such as ``0.35 * 10 = 3.4999999999999996``.
    """
    return int(np.floor(value + 0.5 + 1e-9))


def _check_share(share, name: str) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float, np.floating)) or not 0 < share < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {share!r}")
    return float(share)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int (splits are reproducible from it), got {seed!r}")
    return np.random.default_rng(int(seed))


def open_set_split(labels, unknown_share: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the classes of ``labels: (n,)`` into ``(known_classes, unknown_classes)``, both sorted.

    The ``C`` distinct classes are sorted, permuted with
    ``np.random.default_rng(seed).permutation(C)``, and the first
    ``round_half_up(unknown_share · C)`` of the permutation are unknown:
    150 intents at 25% → 38 unknown (37.5 rounds up), 64 → 16. The same
    (classes, share, seed) always gives the same split, whatever the row order.
    At least one class stays on each side; otherwise it is a ``ValueError``.
    """
    share = _check_share(unknown_share, "unknown_share")
    rng = _rng(seed)
    labels = as_labels(labels, len(labels))
    classes = np.unique(labels)
    n_unknown = round_half_up(share * classes.size)
    if not 0 < n_unknown < classes.size:
        raise ValueError(
            f"unknown_share={share} of {classes.size} classes leaves {n_unknown} unknown and "
            f"{classes.size - n_unknown} known; both sides need at least one class"
        )
    order = rng.permutation(classes.size)
    unknown = np.sort(classes[order[:n_unknown]])
    known = np.sort(classes[order[n_unknown:]])
    return known, unknown


def holdout_split(labels, share: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified validation fold: ``(train_index, val_index)`` into ``labels: (n,)``, both sorted.

    Each class with ``n_k`` rows gives ``min(round_half_up(share · n_k), n_k − 1)``
    rows to validation, drawn by one ``default_rng(seed)`` over the classes in
    sorted order, so every class keeps at least one training row (a class with
    one row stays wholly in training) and the fold is reproducible.
    """
    share = _check_share(share, "share")
    rng = _rng(seed)
    labels = as_labels(labels, len(labels))
    classes, inverse = np.unique(labels, return_inverse=True)
    by_class = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=classes.size))[:-1]
    val_parts = []
    for rows in np.split(by_class, bounds):
        n_val = min(round_half_up(share * rows.size), rows.size - 1)
        val_parts.append(rng.permutation(rows)[:n_val])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(labels.size), val, assume_unique=True)
    return train, val
