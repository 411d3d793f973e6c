"""Mergeable fitting state: statistics keyed by label, and a fixed-size sample of rows.

A fit that streams chunks of a file, or that runs one task per partition of a
Dask collection, needs state that (a) grows with classes, not rows, and
(b) merges in any order to the same result. :class:`LabelledStatistics`
holds the class statistics under their labels (classes appear as they are
met); :class:`RowSample` keeps the rows with the smallest random priorities
(bottom-k sampling, Cohen & Kaplan 2007) for placing the working point, so
the sample of a stream equals the sample of the whole, whatever the chunking.

>>> import numpy as np, torch
>>> X = torch.randn(30, 3, dtype=torch.float64); y = np.array(["a", "b", "c"] * 10)
>>> whole = LabelledStatistics.from_rows(X, y)
>>> parts = LabelledStatistics.from_rows(X[:7], y[:7]).merge(LabelledStatistics.from_rows(X[7:], y[7:]))
>>> bool(torch.allclose(whole.sorted().statistics.scatters, parts.sorted().statistics.scatters))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from openworld.core.statistics import ClassStatistics

Tensor = torch.Tensor


@dataclass(frozen=True)
class LabelledStatistics:
    """Class statistics (C classes) with their labels (C,), in the order classes were met."""

    labels: np.ndarray
    statistics: ClassStatistics

    @classmethod
    def from_rows(cls, X: Tensor, labels: np.ndarray | Tensor, sample_weight: Tensor | None = None) -> LabelledStatistics:
        """Statistics of ``X: (n, d)`` by label (NumPy, or integer labels in a tensor on X's device)."""
        if isinstance(labels, Tensor) or (labels.dtype.kind in "iu" and X.device.type != "cpu"):
            # Integer labels sorted where the rows are.
            classes, index = torch.unique(torch.as_tensor(labels, device=X.device), return_inverse=True)
            classes = classes.cpu().numpy()
        else:
            classes, index = np.unique(labels, return_inverse=True)
            index = torch.as_tensor(index, device=X.device)
        return cls(classes, ClassStatistics.from_rows(X, index, classes.size, sample_weight))

    def merge(self, other: LabelledStatistics, in_place: bool = False) -> LabelledStatistics:
        """Both row sets' statistics; labels of ``other`` not seen yet are appended.

        ``in_place``: this state's tensors are written over (a stream's running
        state that no one else holds), which keeps a streamed fit's peak near one
        copy of the statistics plus the chunk's.
        """
        if other.statistics.n_features != self.statistics.n_features:
            raise ValueError(
                f"cannot merge statistics of {other.statistics.n_features} features into {self.statistics.n_features}"
            )
        if (self.labels.dtype.kind == "U") != (other.labels.dtype.kind == "U"):
            raise ValueError("labels change type (str / int) between chunks or partitions; use one label type throughout")
        known = set(self.labels.tolist())  # once, not once per label
        new = np.array([label for label in other.labels.tolist() if label not in known])
        labels = np.concatenate([self.labels, new]) if new.size else self.labels
        position = {label: i for i, label in enumerate(labels.tolist())}
        mine = self.statistics.padded(labels.size) if new.size else self.statistics
        fresh = in_place or bool(new.size)  # ``mine`` may be written over
        index = [position[label] for label in other.labels.tolist()]
        theirs = other.statistics.to(mine.device)
        if fresh and index == list(range(labels.size)):  # the chunk holds every class, in order: merge straight in
            return LabelledStatistics(labels, mine.merge(theirs, in_place=True))
        # Only the classes ``other`` holds are combined (c of them, not all C: a chunk of a few classes
        # costs no (C, d, d) temporaries), then written over ``mine`` (or over one copy of it).
        combined = mine.select(index).merge(theirs, in_place=True)  # the selection is a fresh copy
        return LabelledStatistics(labels, mine.replaced(index, combined, in_place=fresh))

    def sorted(self) -> LabelledStatistics:
        """Classes in sorted label order (the order of ``classes_``)."""
        order = np.argsort(self.labels, kind="stable")
        if np.array_equal(order, np.arange(order.size)):
            return self  # one chunk's labels come sorted from np.unique: no (C, d, d) copy
        return LabelledStatistics(self.labels[order], self.statistics.select(order.tolist()))


@dataclass(frozen=True)
class RowSample:
    """Up to ``capacity`` rows (m, d) of positive weight, with labels, weights and their priorities (m,): the
    smallest seen (a bottom-k sample, uniform over the rows offered).

    ``limit``: every offered row of positive weight whose priority is below it is in the sample (those at or
    above it may have been dropped). Merging keeps only rows below both samples' limits, so a sample that
    lost rows (``subset``: a forgotten class) merges with new rows without over-representing them.
    """

    capacity: int
    rows: Tensor | None = None
    labels: np.ndarray | None = None
    weights: Tensor | None = None
    priorities: np.ndarray | None = None
    limit: float = math.inf

    def offer(self, X: Tensor, labels: np.ndarray | Tensor, weights: Tensor | None, priorities: np.ndarray) -> RowSample:
        """This sample and the rows of a new chunk, keeping the ``capacity`` smallest priorities (rows of
        zero weight are not data: never kept)."""
        candidates = None if weights is None else np.flatnonzero(weights.cpu().numpy() > 0)
        chosen = _smallest(priorities if candidates is None else priorities[candidates], self.capacity + 1)
        keep = chosen if candidates is None else candidates[chosen]
        limit = math.inf
        if keep.size > self.capacity:  # the smallest priority left out: every row below it is kept
            limit, keep = float(priorities[keep[-1]]), keep[: self.capacity]
        index = torch.as_tensor(keep, device=X.device)
        w = torch.ones(keep.size, dtype=torch.float64, device=X.device) if weights is None else weights.index_select(0, index)
        labels = labels.index_select(0, index).cpu().numpy() if isinstance(labels, Tensor) else labels[keep]
        # index_select: several times faster than X[index] on CPU for a gather of whole rows
        chunk = RowSample(self.capacity, X.index_select(0, index), labels, w, priorities[keep], limit)
        return chunk if self.rows is None and self.limit == math.inf else self.merge(chunk)

    def merge(self, other: RowSample) -> RowSample:
        limit = min(self.limit, other.limit)
        if other.rows is None or self.rows is None:
            present = self if other.rows is None else other
            return present.below(limit).capped(self.capacity)
        rows = torch.cat([self.rows, other.rows.to(self.rows.device, self.rows.dtype)])
        labels = np.concatenate([self.labels, other.labels])
        weights = torch.cat([self.weights, other.weights.to(self.weights.device)])
        priorities = np.concatenate([self.priorities, other.priorities])
        return RowSample(self.capacity, rows, labels, weights, priorities, limit).below(limit).capped(self.capacity)

    def below(self, limit: float) -> RowSample:
        """The rows of priority below ``limit``, which becomes the sample's limit if lower."""
        limit = min(limit, self.limit)
        if self.rows is None:
            return RowSample(self.capacity, limit=limit)
        if bool((self.priorities < limit).all()):
            return replace(self, limit=limit)
        return replace(self.subset(np.flatnonzero(self.priorities < limit)), limit=limit)

    def capped(self, capacity: int) -> RowSample:
        """The rows of the ``capacity`` smallest priorities: the sample a smaller capacity would have kept."""
        if self.rows is None:
            return RowSample(capacity, limit=self.limit)
        if self.priorities.size <= capacity:
            return self.subset(_smallest(self.priorities, capacity), capacity)
        keep = _smallest(self.priorities, capacity + 1)
        limit = min(self.limit, float(self.priorities[keep[-1]]))
        return replace(self.subset(keep[:capacity], capacity), limit=limit)

    def beyond(self, count: int) -> RowSample:
        """The rows after the ``count`` smallest priorities, in priority order: what ``capped(count)`` leaves out."""
        if self.rows is None:
            return RowSample(self.capacity, limit=self.limit)
        return self.subset(_smallest(self.priorities, self.priorities.size)[count:])

    def subset(self, keep: np.ndarray, capacity: int | None = None) -> RowSample:
        """The rows at positions ``keep`` (in their order); the limit stays (rows dropped here were chosen, not
        outranked)."""
        index = torch.as_tensor(keep, dtype=torch.long, device=self.rows.device)
        return RowSample(
            self.capacity if capacity is None else capacity, self.rows.index_select(0, index), self.labels[keep],
            self.weights.index_select(0, index), self.priorities[keep], self.limit,
        )

    def folds(self, n_folds: int) -> np.ndarray:
        """Fold of each sampled row (m,): by rank of priority, so the split is fixed by the priorities."""
        if self.priorities.size and bool((np.diff(self.priorities) >= 0).all()):
            rank = np.arange(self.priorities.size)  # offer and merge keep the rows in priority order
        else:
            rank = np.argsort(np.argsort(self.priorities, kind="stable"), kind="stable")
        return rank % max(1, min(n_folds, rank.size))


    def fold_selections(self, n_folds: int) -> list:
        """Rows of each fold (:meth:`folds`): slices (views of the rows) when they are in priority order, else indices."""
        fold_of_row = self.folds(n_folds)
        count = int(fold_of_row.max()) + 1 if fold_of_row.size else 0
        if np.array_equal(fold_of_row, np.arange(fold_of_row.size) % max(count, 1)):
            return [slice(f, None, count) for f in range(count)]
        return [np.flatnonzero(fold_of_row == f) for f in np.unique(fold_of_row)]


def _smallest(priorities: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest priorities in ascending order (ties by position): a stable argsort's first k.

    Priorities are uniform on [0, 1): the k smallest of n lie below ``(k + 8√k + 8) / n``
    but for odds of about e⁻³², so the rows below it are picked in one pass and only
    they are partitioned (if fewer than k are, every row is).
    """
    if priorities.size <= k:
        return np.argsort(priorities, kind="stable")
    candidates = np.flatnonzero(priorities < (k + 8 * np.sqrt(k) + 8) / priorities.size)
    if candidates.size < k:
        candidates = np.arange(priorities.size)
    index = candidates[np.argpartition(priorities[candidates], k - 1)[:k]]
    return index[np.lexsort((index, priorities[index]))]
