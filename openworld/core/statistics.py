"""Per-class sufficient statistics: the whole memory of a fitted model.

A class is summarised by its total sample weight ``W``, its mean ``μ``, the
centered scatter ``S = Σ w (x − μ)(x − μ)ᵀ`` and two higher moments that
Ledoit-Wolf shrinkage needs and the scatter does not carry:
``q4 = Σ w ‖x − μ‖⁴`` and ``t3 = Σ w ‖x − μ‖² (x − μ)``.

Every moment is a sum over rows *about a center*; moving the center has a
closed form (:meth:`ClassStatistics.about`), so two summaries merge by moving
both to the merged mean and adding (Chan, Golub & LeVeque 1979), and a subset
is removed by moving both to the remainder's mean and subtracting. That makes
``partial_fit``, ``forget``, ``unlearn`` and distributed fitting exact.
Everything is float64: the moments are sums of many rows and cancel when
subtracted.

>>> import torch
>>> X = torch.randn(10, 3, dtype=torch.float64)
>>> y = torch.tensor([0, 1] * 5)
>>> whole = ClassStatistics.from_rows(X, y, n_classes=2)
>>> halves = ClassStatistics.from_rows(X[:4], y[:4], 2).merge(
...     ClassStatistics.from_rows(X[4:], y[4:], 2))
>>> bool(torch.allclose(whole.scatters, halves.scatters))
True
>>> bool(torch.allclose(halves.subtract(ClassStatistics.from_rows(X[4:], y[4:], 2)).means,
...                     ClassStatistics.from_rows(X[:4], y[:4], 2).means))
True
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch

from openworld.core.precision import tf32_products

Tensor = torch.Tensor
STAT_DTYPE = torch.float64
GROUP_ROWS = 65536  # rows gathered per group of classes (a float32 group at d = 768 is 192 MB)
GROUP_PRODUCTS = 2**26  # d×d products held per group before they are cast to float64 (256 MB in float32)
PIECE_BYTES = 16 * 2**20  # CPU: rows of one class gathered at a time by one worker (at most GROUP_ROWS rows)
CUDA_GROUP_BYTES = 2**31  # CUDA: one group of gathered rows in the product dtype (fewer, larger products)
# CUDA devices whose float64 matrix products run on tensor cores, as fast as float32 without them
# (A100/A30, H100/H200, B200): there the statistics are accumulated exactly, in float64.
FLOAT64_TENSOR_CORES = {(8, 0), (9, 0), (10, 0)}


@dataclass(frozen=True)
class ClassStatistics:
    """Moments of C classes in d dimensions; class ``k`` is row ``k`` of each field.

    weights: (C,) total sample weight; 0 marks a class with no rows.
    means: (C, d); scatters: (C, d, d); third_moments: (C, d); fourth_moments: (C,).
    """

    weights: Tensor
    means: Tensor
    scatters: Tensor
    third_moments: Tensor
    fourth_moments: Tensor

    @property
    def n_classes(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @classmethod
    def zeros(cls, n_classes: int, n_features: int, device=None, scatters: bool = True) -> ClassStatistics:
        """Empty statistics; ``scatters=False`` leaves the (C, d, d) scatters uninitialised for the caller to fill."""
        kw = dict(dtype=STAT_DTYPE, device=device)
        return cls(
            weights=torch.zeros(n_classes, **kw),
            means=torch.zeros(n_classes, n_features, **kw),
            scatters=(torch.zeros if scatters else torch.empty)(n_classes, n_features, n_features, **kw),
            third_moments=torch.zeros(n_classes, n_features, **kw),
            fourth_moments=torch.zeros(n_classes, **kw),
        )

    @classmethod
    def from_rows(
        cls,
        X: Tensor,
        class_index: Tensor,
        n_classes: int,
        sample_weight: Tensor | None = None,
    ) -> ClassStatistics:
        """Statistics of rows ``X: (n, d)`` with integer classes ``class_index: (n,)`` in [0, C).

        Rows are sorted by class; the mean and the centered products are two
        passes over each class's rows (accurate scatters), and all classes
        together cost half an XᵀX. float64 input is computed in float64; other
        input computes the centered products in float32 (its own precision,
        and twice the speed) and sums them in float64.

        On CPU each class's rows are gathered (a piece of at most PIECE_BYTES
        at a time; a larger class is cut into pieces merged exactly) and its
        scatter is three products on the halves of d (:func:`_gram_into`: three
        quarters of the products of ``RᵀR``). Classes are shared out to
        ``torch.get_num_threads()`` Python threads pulling work as they go,
        each calling single-threaded BLAS without the GIL: a thread that the
        operating system deschedules delays nobody (no parallel region per
        class to wait at). The pooled within-class scatter is summed on the
        way, in a fixed order. On a GPU, classes of similar size are batched
        (:func:`_from_rows_padded`); elsewhere they are gathered a group at a
        time and multiplied with torch.
        """
        if X.device.type == "cpu":
            return _from_rows_cpu(X, class_index, n_classes, sample_weight)
        if X.device.type == "cuda":
            compute = cuda_product_dtype(X)
            rows = max(GROUP_ROWS, CUDA_GROUP_BYTES // (X.shape[1] * compute.itemsize))
            with tf32_products(False, X.device):  # a float32 fallback stays float32, whatever the user set
                class_index = class_index.to(X.device)
                counts = torch.bincount(class_index, minlength=n_classes)
                if sample_weight is None and X.shape[0] and int(counts.max()) <= rows:
                    return _from_rows_padded(X, class_index, counts, compute, rows)
                return cls._from_rows_grouped(X, class_index, n_classes, sample_weight, compute, rows)
        return cls._from_rows_grouped(X, class_index, n_classes, sample_weight)

    @classmethod
    def _from_rows_grouped(
        cls, X: Tensor, class_index: Tensor, n_classes: int, sample_weight: Tensor | None,
        compute: torch.dtype | None = None, group_rows: int | None = None,
    ) -> ClassStatistics:
        """:meth:`from_rows` with torch products in ``compute`` (default: float64 for float64 rows, else
        float32), a group of whole classes (≤ ``group_rows``, default GROUP_ROWS, rows) at a time."""
        if compute is None:
            compute = torch.float64 if X.dtype == torch.float64 else torch.float32
        group_rows = GROUP_ROWS if group_rows is None else group_rows
        d = X.shape[1]
        class_index = class_index.to(X.device)
        weights = None if sample_weight is None else sample_weight.to(device=X.device, dtype=STAT_DTYPE)
        order = torch.argsort(class_index, stable=True)
        counts = torch.bincount(class_index, minlength=n_classes).tolist()
        pieces = [(k, min(group_rows, count - s)) for k, count in enumerate(counts) for s in range(0, count, group_rows)]
        stats = cls.zeros(n_classes, d, device=X.device, scatters=False)
        stats.scatters[torch.as_tensor(counts) == 0] = 0
        start, i = 0, 0
        while i < len(pieces):
            j, rows = i + 1, pieces[i][1]  # extend the group while it stays within both budgets
            while j < len(pieces) and rows + pieces[j][1] <= group_rows and (j + 1 - i) * d * d <= GROUP_PRODUCTS:
                rows += pieces[j][1]
                j += 1
            index = order[start : start + rows]
            part = _consecutive_moments(
                X.index_select(0, index),
                [length for _, length in pieces[i:j]],
                None if weights is None else weights[index],
                compute,
            )
            classes = [k for k, _ in pieces[i:j]]
            first = [p for p, k in enumerate(classes) if p > 0 or i == 0 or pieces[i - 1][0] != k]
            if first:
                lo, hi = classes[first[0]], classes[first[-1]]
                # Classes met for the first time are written by one converting copy per field (slices if consecutive).
                target = slice(lo, hi + 1) if hi - lo + 1 == len(first) else [classes[p] for p in first]
                source = slice(first[0], first[-1] + 1) if first[-1] - first[0] + 1 == len(first) else first
                for name, value in part.as_dict().items():
                    getattr(stats, name)[target] = value[source].to(STAT_DTYPE)
            if not first or first[0] != 0:  # the group starts with a later piece of a class larger than a group
                piece = ClassStatistics(**{name: v[:1].to(STAT_DTYPE) for name, v in part.as_dict().items()})
                for name, value in stats.select([classes[0]]).merge(piece).as_dict().items():
                    getattr(stats, name)[classes[0]] = value[0]
            start += rows
            i = j
        return stats

    @classmethod
    def from_responsibilities(cls, X: Tensor, responsibilities: Tensor) -> ClassStatistics:
        """Statistics of M soft components: row i counts with weight ``responsibilities[i, m]: (n, M)``.

        This is the M-step of EM (Dempster et al. 1977) in statistics form, so a
        mixture component is summarised, merged and shrunk like any class.
        """
        X = X.to(STAT_DTYPE)
        R = responsibilities.to(device=X.device, dtype=STAT_DTYPE)
        M, d = R.shape[1], X.shape[1]
        stats = cls.zeros(M, d, device=X.device)
        for m in range(M):  # M is a handful of components per class: fitting cost only
            w = R[:, m]
            total = w.sum()
            if total <= 0:
                continue
            mean = (w @ X) / total
            centered = X - mean
            sq = (centered * centered).sum(1)
            stats.weights[m] = total
            stats.means[m] = mean
            stats.scatters[m] = (centered * w[:, None]).T @ centered
            stats.third_moments[m] = (w * sq) @ centered
            stats.fourth_moments[m] = (w * sq * sq).sum()
        return stats

    def about(self, centers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Scatter, third and fourth moments taken about ``centers: (C, d)`` instead of the means.

        With δ = μ − c and r = x − μ (so Σ w r = 0):
        S_c = S + W δδᵀ; t3_c = t3 + tr(S) δ + 2 S δ + W ‖δ‖² δ;
        q4_c = q4 + 4 t3·δ + 4 δᵀSδ + 2 ‖δ‖² tr(S) + W ‖δ‖⁴.
        """
        delta = self.means - centers
        third, fourth = self._higher_moments_about(delta)
        return torch.baddbmm(self.scatters, (self.weights[:, None] * delta)[:, :, None], delta[:, None, :]), third, fourth

    def _higher_moments_about(self, delta: Tensor) -> tuple[Tensor, Tensor]:
        """``t3`` (C, d) and ``q4`` (C,) about ``means − delta``: one read of the scatters, no (C, d, d) result."""
        W = self.weights
        trace = torch.diagonal(self.scatters, dim1=-2, dim2=-1).sum(-1)
        S_delta = torch.bmm(self.scatters, delta[:, :, None])[:, :, 0]
        dd = (delta * delta).sum(-1)
        third = self.third_moments + trace[:, None] * delta + 2 * S_delta + (W * dd)[:, None] * delta
        fourth = (
            self.fourth_moments
            + 4 * (self.third_moments * delta).sum(-1)
            + 4 * (S_delta * delta).sum(-1)
            + 2 * dd * trace
            + W * dd * dd
        )
        return third, fourth

    def _combine(self, other: ClassStatistics, sign: float, in_place: bool = False) -> ClassStatistics:
        if other.means.shape != self.means.shape:
            raise ValueError(
                f"cannot combine statistics of shape {tuple(other.means.shape)} "
                f"with {tuple(self.means.shape)} (classes, features)"
            )
        other = other.to(self.device)
        weights = self.weights + sign * other.weights
        if sign < 0:
            # Removing more weight than a class holds means the rows were never fitted.
            tolerance = 1e-9 * torch.clamp(self.weights, min=1.0)
            if bool((weights < -tolerance).any()):
                raise ValueError("cannot remove more rows from a class than were fitted to it")
            weights = torch.where(weights.abs() <= tolerance, torch.zeros_like(weights), weights)
        safe = torch.where(weights > 0, weights, torch.ones_like(weights))
        means = (self.weights[:, None] * self.means + sign * other.weights[:, None] * other.means) / safe[:, None]
        means = torch.where((weights > 0)[:, None], means, torch.zeros_like(means))
        delta_a, delta_b = self.means - means, other.means - means
        t_a, q_a = self._higher_moments_about(delta_a)
        t_b, q_b = other._higher_moments_about(delta_b)
        # S_a + W_a δ_a δ_aᵀ ± (S_b + W_b δ_b δ_bᵀ): one pass for the sum, one rank-2 update in place
        # (C·d² memory traffic dominates merging; no (C, d, d) temporaries beyond the result).
        left = torch.stack([self.weights[:, None] * delta_a, sign * other.weights[:, None] * delta_b], dim=2)
        if in_place:  # into these scatters (read above for the higher moments, not after): no (C, d, d) result
            self.__dict__.pop("_pooled", None)  # their cached sum would go stale
            scatters = self.scatters.add_(other.scatters, alpha=sign)
        else:
            scatters = torch.add(self.scatters, other.scatters, alpha=sign)
        scatters.baddbmm_(left, torch.stack([delta_a, delta_b], 1))
        empty = weights <= 0
        result = ClassStatistics(
            weights=weights,
            means=means,
            scatters=scatters,
            third_moments=t_a + sign * t_b,
            fourth_moments=q_a + sign * q_b,
        )
        return result.where_empty_zero(empty) if bool(empty.any()) else result

    def pooled_without(self, parts: list[tuple[Tensor, Tensor, Tensor]], workers: int | None = None) -> list[PooledStatistics]:
        """For each part ``(X (m, d), class_index (m,), weights (m,))`` of fitted rows: the statistics without it, pooled.

        This is what a tied covariance needs of ``self.subtract(from_rows(part))``
        (cross-fitting scores rows with a model that excludes them), computed from
        the part's rows and one read of the (C, d, d) scatters for all parts,
        without forming a (C, d, d) result per part. Moments of the remainder
        about its means μ_r: the whole class's via :meth:`about`, minus the
        part's rows about μ_r directly; a class the part empties drops out.
        Independent products run on ``workers`` threads (:func:`run_tasks`).
        """
        out = [None] * len(parts)

        def keep(f, pooled):
            out[f] = pooled
            return []

        run_tasks(self.pooled_without_tasks(parts, keep), workers)
        return out

    def pooled_without_tasks(self, parts: list[tuple[Tensor, Tensor, Tensor]], then) -> list:
        """:meth:`pooled_without` as tasks for :func:`run_tasks`: ``then(f, pooled)`` is called as soon as part
        ``f`` is done and returns the tasks that follow it (a fold model, its scoring)."""
        if not parts:
            return []
        trace = torch.diagonal(self.scatters, dim1=-2, dim2=-1).sum(-1)
        total_scatter = self._pooled_scatter()
        units = [bool((w == 1).all()) for _, _, w in parts]  # unweighted rows (the usual sample): no products by w
        remainders = [None] * len(parts)
        bounds = np.linspace(0, self.n_classes, max(1, min(self.n_classes, 8)) + 1).round().astype(int).tolist()
        blocks = [None] * (len(bounds) - 1)
        lock, waiting = threading.Lock(), [len(parts), len(blocks)]

        def remainder(f):
            """The remainder's class weights, means and shift δ = μ − μ_r (C, d); the last one starts the S δ blocks."""
            removed, sums = _removal(*parts[f], self.n_classes)
            remaining = self.weights - removed
            keep = remaining > 1e-9 * torch.clamp(self.weights, min=1.0)
            safe = torch.where(keep, remaining, 1.0)[:, None]
            mean = torch.where(keep[:, None], (self.weights[:, None] * self.means - sums) / safe, 0.0)
            delta = torch.where(keep[:, None], self.means - mean, 0.0)
            remainders[f] = keep, torch.where(keep, remaining, 0.0), mean, delta
            with lock:
                waiting[0] -= 1
                if waiting[0]:
                    return []
            stacked = torch.stack([r[3] for r in remainders], dim=2)
            return [lambda b=b: block(b, stacked) for b in range(len(blocks))]

        def block(b, stacked):
            """S δ for a block of classes and every part: (c, d, d) @ (c, d, parts); the last one starts the parts."""
            blocks[b] = torch.bmm(self.scatters[bounds[b] : bounds[b + 1]], stacked[bounds[b] : bounds[b + 1]])
            with lock:
                waiting[1] -= 1
                if waiting[1]:
                    return []
            S_delta = torch.cat(blocks)
            return [lambda f=f: finish(f, S_delta) for f in range(len(parts))]

        def finish(f, S_delta):
            """The part's rows about the remainder's means (their Gram matrix), and the remainder's pooled moments."""
            X, class_index, w = parts[f]
            keep, remaining, mean, delta = remainders[f]
            rows = keep[class_index]
            if bool(rows.all()):  # no class emptied: no gather
                R = X - mean.to(X.dtype).index_select(0, class_index)
            else:
                R, class_index, w = X[rows] - mean[class_index[rows]].to(X.dtype), class_index[rows], w[rows]
            gram = weighted_grams([(R, None if units[f] else w)], 1)[0]
            dd = (delta * delta).sum(-1)
            fourth = (
                self.fourth_moments
                + 4 * (self.third_moments * delta).sum(-1)
                + 4 * (S_delta[:, :, f] * delta).sum(-1)
                + 2 * dd * trace
                + self.weights * dd * dd
            )
            emptied = (~keep & (self.weights > 0)).nonzero().flatten()
            scatter = total_scatter - self.scatters[emptied].sum(0) + (delta * self.weights[:, None]).T @ delta
            sq = torch.linalg.vector_norm(R, dim=1).to(STAT_DTYPE) ** 2
            pooled = PooledStatistics(
                weights=remaining, means=mean, scatter=scatter - gram, fourth_moment=fourth[keep].sum() - (w * sq * sq).sum()
            )
            return then(f, pooled)

        return [lambda f=f: remainder(f) for f in range(len(parts))]

    def pooled_within(self) -> tuple[Tensor, Tensor, Tensor]:
        """Within-class scatter summed over classes (d, d), its ``q4`` and the total weight."""
        return self._pooled_scatter(), self.fourth_moments.sum(), self.weights.sum()

    def _pooled_scatter(self) -> Tensor:
        """Σ_k S_k (d, d): summed by :meth:`from_rows` as it went (no second read of the C·d² scatters), else now.

        Every other constructor returns a new object, and the only write after
        construction (an in-place merge) drops the cached sum first.
        """
        cached = self.__dict__.get("_pooled")
        return cached if cached is not None else self.scatters.sum(0)

    def merge(self, other: ClassStatistics, in_place: bool = False) -> ClassStatistics:
        """Statistics of the union of both row sets (same classes, same order).

        ``in_place`` writes the scatters into these statistics' own tensor (the
        largest, C·d²), for statistics no one else holds or reads: a stream's
        running total; a fitted model's are never merged in place (scoring may
        read them meanwhile).
        """
        return self._combine(other, 1.0, in_place)

    def subtract(self, other: ClassStatistics) -> ClassStatistics:
        """Statistics of these rows without ``other``'s rows, which must be a subset of them."""
        return self._combine(other, -1.0)

    def where_empty_zero(self, empty: Tensor) -> ClassStatistics:
        """Zero every moment of the classes flagged in ``empty: (C,)`` (round-off left by removal)."""
        return ClassStatistics(
            **{
                f.name: torch.where(
                    empty.view(-1, *([1] * (getattr(self, f.name).dim() - 1))),
                    torch.zeros_like(getattr(self, f.name)),
                    getattr(self, f.name),
                )
                for f in fields(self)
            }
        )

    def select(self, index: Tensor | list[int]) -> ClassStatistics:
        """The classes at ``index``, in that order (drops the others exactly)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return ClassStatistics(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def replaced(self, index: list[int], part: ClassStatistics, in_place: bool = False) -> ClassStatistics:
        """These statistics with the classes at ``index`` replaced by ``part``'s, in that order; ``in_place``
        writes into these tensors (only for statistics no one else holds, e.g. a fresh ``padded`` copy)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        copy = (lambda name: getattr(self, name)) if in_place else (lambda name: getattr(self, name).clone())
        return ClassStatistics(**{f.name: copy(f.name).index_copy_(0, index, getattr(part, f.name)) for f in fields(self)})

    def padded(self, n_classes: int) -> ClassStatistics:
        """The same classes followed by empty ones up to ``n_classes`` (for classes new to a model)."""
        extra = ClassStatistics.zeros(n_classes - self.n_classes, self.n_features, self.device)
        return ClassStatistics(
            **{f.name: torch.cat([getattr(self, f.name), getattr(extra, f.name)]) for f in fields(self)}
        )

    @staticmethod
    def concat(parts: list[ClassStatistics]) -> ClassStatistics:
        """The classes of every part, in order."""
        return ClassStatistics(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])})

    def pooled(self) -> ClassStatistics:
        """One class holding every row: the background (class-agnostic) Gaussian's statistics."""
        W = self.weights.sum()
        safe = W if W > 0 else torch.ones_like(W)
        mean = (self.weights @ self.means) / safe
        scatter, third, fourth = self.about(mean.expand_as(self.means))
        return ClassStatistics(
            weights=W.reshape(1),
            means=mean.reshape(1, -1),
            scatters=scatter.sum(0, keepdim=True),
            third_moments=third.sum(0, keepdim=True),
            fourth_moments=fourth.sum().reshape(1),
        )

    def to(self, device) -> ClassStatistics:
        if torch.device(device) == self.device:
            return self
        return ClassStatistics(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def cuda_product_dtype(X: Tensor) -> torch.dtype:
    """The dtype of the centered products of CUDA rows ``X``: float64 where the device has float64 tensor cores.

    Measured on an H100 (docs/performance-gpu.md): float64 products cost what float32
    ones do without TF32 and match a float64 reference to 1e-13, where float32
    leaves 3e-7 in the scatters and 8e-5 in the third moments, and TF32 6e-5 in
    the scatters. Elsewhere float64 runs at a small fraction of float32's rate.
    """
    if X.dtype == torch.float64 or torch.cuda.get_device_capability(X.device) in FLOAT64_TENSOR_CORES:
        return torch.float64
    return torch.float32


def _from_rows_padded(X: Tensor, class_index: Tensor, counts: Tensor, compute: torch.dtype, group_rows: int) -> ClassStatistics:
    """:meth:`ClassStatistics.from_rows` of unweighted rows on a GPU: classes of similar size batched.

    Classes taken in order of size form groups of at most ``group_rows``
    padded rows; each group is gathered into an (S, L, d) block (L its largest
    class), centered in the compute dtype with zeros in the padding (which
    adds nothing to any moment), and its S scatters are three batched products
    on the halves of d (the fourth block is the transpose of one of them):
    one kernel fills the device where a class alone would leave most of it
    idle. Each block's padding is at most the spread of class sizes within it.
    """
    C, d = counts.numel(), X.shape[1]
    order = torch.argsort(class_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    by_size = torch.argsort(counts, stable=True)
    sizes = counts[by_size].tolist()
    stats = ClassStatistics.zeros(C, d, device=X.device, scatters=False)
    stats.weights.copy_(counts)
    h = d // 2
    k = 0
    while k < C:
        j = k + 1
        while j < C and (j + 1 - k) * sizes[j] <= group_rows:
            j += 1
        classes, length = by_size[k:j], max(sizes[j - 1], 1)
        n = counts[classes]
        steps = torch.arange(length, device=X.device)
        # Padding repeats a class's last row (index clamped), then is zeroed once centered.
        positions = starts[classes, None] + torch.minimum(steps[None, :], (n - 1).clamp_min(0)[:, None])
        positions.clamp_(max=X.shape[0] - 1)  # an empty class may start past the last row
        block = X.index_select(0, order[positions.reshape(-1)]).view(j - k, length, d)
        real = (steps[None, :] < n[:, None])[:, :, None]
        block.masked_fill_(~real, 0)  # padding adds nothing to the sums (subtracting it after cost small classes digits)
        sums = block.sum(1, dtype=STAT_DTYPE)
        means = torch.where((n > 0)[:, None], sums / n.clamp_min(1).to(STAT_DTYPE)[:, None], 0.0)
        R = torch.where(real, block - means[:, None, :].to(compute), 0.0)  # the subtraction in the compute dtype
        del block
        a, b = R[:, :, :h], R[:, :, h:]
        scatters = torch.empty(j - k, d, d, dtype=compute, device=X.device)
        scatters[:, :h] = torch.cat([torch.bmm(a.transpose(1, 2), a), torch.bmm(a.transpose(1, 2), b)], 2)
        scatters[:, h:, :h] = scatters[:, :h, h:].transpose(1, 2)
        scatters[:, h:, h:] = torch.bmm(b.transpose(1, 2), b)
        squares = torch.linalg.vector_norm(R, dim=2).square()
        scale = _power_of_two_above(float(squares.max()) if squares.numel() else 0.0)
        stats.scatters.index_copy_(0, classes, scatters.to(STAT_DTYPE))
        stats.third_moments.index_copy_(
            0, classes, torch.bmm((squares / scale)[:, None, :], R)[:, 0, :].to(STAT_DTYPE) * scale)
        stats.fourth_moments.index_copy_(0, classes, (squares.to(STAT_DTYPE) ** 2).sum(1))
        stats.means.index_copy_(0, classes, means)
        k = j
    return stats


def _power_of_two_above(top: float) -> float:
    """A power of two ≥ ``top`` (1 for 0 or non-finite): dividing by it is exact and keeps Σ w‖r‖² r in range."""
    return 2.0 ** math.ceil(math.log2(top)) if 0.0 < top < math.inf else 1.0


def _consecutive_moments(
    rows: Tensor, lengths: list[int], weights: Tensor | None, compute: torch.dtype | None = None
) -> ClassStatistics:
    """Moments of consecutive runs of rows ``rows: (m, d)`` (lengths (S,) summing to m), products in
    ``compute`` (default: the rows' dtype).

    ``rows`` is a gathered copy: centered in place when it has the compute
    dtype, else centered into a new array of that dtype (one pass converts and
    centers). A run whose weights sum to zero gets zero moments.
    """
    S, compute = len(lengths), rows.dtype if compute is None else compute
    R = rows if rows.dtype == compute else torch.empty(rows.shape, dtype=compute, device=rows.device)
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    runs = list(zip(bounds, bounds[1:]))
    if weights is None:
        totals = torch.tensor(lengths, dtype=STAT_DTYPE, device=R.device)
        sums = torch.stack([rows[a:b].sum(0, dtype=STAT_DTYPE) for a, b in runs])
    else:
        totals = torch.stack([weights[a:b].sum() for a, b in runs])
        sums = torch.stack([weights[a:b] @ rows[a:b].to(STAT_DTYPE) for a, b in runs])
    present = totals > 0
    means = torch.where(present[:, None], sums / torch.where(present, totals, 1.0)[:, None], 0.0)
    d = R.shape[1]
    scatters = torch.empty(S, d, d, dtype=compute, device=R.device)
    third = torch.empty(S, d, dtype=compute, device=R.device)
    centers = means.to(compute)
    for s, (a, b) in enumerate(runs):  # per run: in place (or converting), no (m, d) temporaries
        torch.sub(rows[a:b], centers[s], out=R[a:b])
    sq = torch.linalg.vector_norm(R, dim=1).to(STAT_DTYPE) ** 2
    wsq = sq if weights is None else weights * sq
    weighted = R if weights is None else R * weights.to(compute)[:, None]
    # Σ w‖r‖² r grows as the cube of the rows' scale and overflows float32 long before the scatters do:
    # the weights ‖r‖² enter scaled by a power of two (exact), which the float64 result takes back.
    scale = _power_of_two_above(float(wsq.abs().max()) if wsq.numel() else 0.0)
    wsq_c = (wsq / scale).to(compute)
    for s, (a, b) in enumerate(runs):
        torch.mm(weighted[a:b].T, R[a:b], out=scatters[s])
        torch.mv(R[a:b].T, wsq_c[a:b], out=third[s])
    moments = ClassStatistics(
        weights=totals,
        means=means,
        scatters=scatters,
        third_moments=third.to(STAT_DTYPE) * scale,
        fourth_moments=torch.stack([(wsq[a:b] * sq[a:b]).sum() for a, b in runs]),
    )
    return moments if bool(present.all()) else moments.where_empty_zero(~present)


# --------------------------------------------------------------------------- CPU: symmetric products, threads


_CONTROLLER: list = []
_BLAS_LOCK = threading.Lock()
_BLAS_USERS: list = [0, None]  # contexts open, the limiter that restores the original settings


@contextmanager
def _single_threaded_blas():
    """BLAS libraries limited to one thread (threadpoolctl) while Python threads share the work.

    OpenBLAS's own threads, called from several threads at once or on a busy
    machine, wait for each other (a fit took seconds instead of a quarter).
    Re-entrant and thread-safe: the last context to close restores the limits.
    """
    with _BLAS_LOCK:
        if _BLAS_USERS[0] == 0:
            if not _CONTROLLER:
                try:
                    from threadpoolctl import ThreadpoolController

                    _CONTROLLER.append(ThreadpoolController())
                except Exception:  # threadpoolctl comes with scikit-learn; without it, no limit
                    _CONTROLLER.append(None)
            _BLAS_USERS[1] = None if _CONTROLLER[0] is None else _CONTROLLER[0].limit(limits=1, user_api="blas")
        _BLAS_USERS[0] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0 and _BLAS_USERS[1] is not None:
                _BLAS_USERS[1].restore_original_limits()
                _BLAS_USERS[1] = None


def _gram_into(R: np.ndarray, target: np.ndarray) -> None:
    """``target (d, d) = RᵀR`` for ``R: (m, d)``: three products on the halves of d, mirrored.

    The two diagonal blocks and one off-diagonal block are three quarters of
    the products of ``RᵀR``; on a 2-core OpenBLAS this was 6–37 % faster than a
    symmetric rank-k update (``syrk``) across the benchmark's shapes. NumPy
    releases the GIL inside the products, so Python threads run them in
    parallel. The diagonal blocks are symmetrised and the off-diagonal one
    mirrored, so ``target`` is exactly symmetric; ``target`` may have any float
    dtype (the products keep R's).
    """
    h = R.shape[1] // 2
    first, second = np.ascontiguousarray(R[:, :h]), np.ascontiguousarray(R[:, h:])
    for rows, block in ((first, slice(None, h)), (second, slice(h, None))):
        product = rows.T @ rows
        np.add(product, product.T, out=target[block, block])
        target[block, block] *= 0.5
    target[:h, h:] = first.T @ second
    target[h:, :h] = target[:h, h:].T


_TORCH_LOCK = threading.Lock()
_TORCH_USERS = [0, 1]  # contexts open, torch's thread count when the first opened


@contextmanager
def one_torch_thread():
    """torch runs single-threaded inside (restored when the last such context in the process closes).

    Every torch operation above a few thousand elements is an OpenMP parallel
    region that waits for all its threads; on a machine where another job
    holds a core, each can wait a scheduler tick for a descheduled thread
    (an SVD of a 150 × 384 matrix, thousands of regions, took seconds). The
    fit path instead shares independent tasks (classes, folds) out to Python
    threads (:func:`parallel`), each running single-threaded kernels. The
    setting is process-wide: torch work in other threads also runs on one
    thread meanwhile.
    """
    with _TORCH_LOCK:
        if _TORCH_USERS[0] == 0:
            _TORCH_USERS[1] = torch.get_num_threads()
            if _TORCH_USERS[1] != 1:
                torch.set_num_threads(1)
        _TORCH_USERS[0] += 1
    try:
        yield
    finally:
        with _TORCH_LOCK:
            _TORCH_USERS[0] -= 1
            if _TORCH_USERS[0] == 0 and _TORCH_USERS[1] != 1:
                torch.set_num_threads(_TORCH_USERS[1])


def parallel(work, n_tasks: int, workers: int | None = None) -> list:
    """``[work(i) for i in range(n_tasks)]`` on up to ``workers`` threads (default ``torch.get_num_threads()``),
    as independent tasks of :func:`run_tasks` (threads pull the next one as they finish one)."""
    results = [None] * n_tasks

    def task(i):
        results[i] = work(i)

    workers = torch.get_num_threads() if workers is None else workers
    run_tasks([lambda i=i: task(i) for i in range(n_tasks)], min(workers, n_tasks))
    return results


def run_tasks(tasks: list, workers: int | None = None) -> None:
    """Run callables on up to ``workers`` threads (default ``torch.get_num_threads()``); each returns the
    callables that may run after it (or None). Threads take tasks as they free up, follow-ups first, so
    a chain of dependent steps (fold statistics → fold model → its scoring) never waits at a barrier
    for unrelated tasks. The first error is raised once the running tasks end.
    """
    queue = deque(tasks)
    workers = torch.get_num_threads() if workers is None else workers
    if workers <= 1:
        while queue:
            queue.extendleft(reversed(queue.popleft()() or []))
        return
    ready, state, errors = threading.Condition(), [0], []  # state: tasks running

    def run():
        while True:
            with ready:
                while not queue and state[0] and not errors:
                    ready.wait()
                if not queue or errors:
                    ready.notify_all()
                    return
                task = queue.popleft()
                state[0] += 1
            follow = []
            try:
                follow = task() or []
            except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
                with ready:
                    errors.append(error)
            with ready:
                queue.extendleft(reversed(follow))
                state[0] -= 1
                ready.notify_all()

    with _single_threaded_blas(), ThreadPoolExecutor(workers) as pool:  # BLAS threads would fight the workers
        for future in [pool.submit(run) for _ in range(workers)]:
            future.result()
    if errors:
        raise errors[0]


def weighted_grams(parts: list[tuple[Tensor, Tensor | None]], workers: int | None = None) -> list[Tensor]:
    """``Σ_i w_i r_i r_iᵀ`` (d, d) in float64 for each part ``(R (m, d), w (m,) float64 or None)``.

    On CPU with non-negative weights: :func:`_gram_into` of ``√w · R`` per part,
    parts shared out to threads; otherwise a torch product.
    """
    def fallback(R, w):
        weighted = R if w is None else R * w.to(R.dtype)[:, None]
        return (weighted.T @ R).to(STAT_DTYPE)

    usable = [
        R.device.type == "cpu" and R.dtype in (torch.float32, torch.float64) and (w is None or bool((w >= 0).all()))
        for R, w in parts
    ]

    def work(i):
        R, w = parts[i]
        if not usable[i]:
            return fallback(R, w)
        rows = R.detach().numpy()
        if w is not None:
            rows = rows * np.sqrt(w.detach().cpu().numpy()).astype(rows.dtype)[:, None]
        d = rows.shape[1]
        target = np.empty((d, d))
        _gram_into(rows, target)
        return torch.from_numpy(target)

    with _single_threaded_blas():
        return parallel(work, len(parts), workers)


def _piece_moments(R: np.ndarray, w: np.ndarray | None, scatter: np.ndarray):
    """Moments of one class's rows ``R: (m, d)`` (a gathered copy, centered in place); the scatter goes to ``scatter``.

    Returns (weight, mean (d,), third moment (d,), fourth moment), float64.
    """
    d = R.shape[1]
    total = float(R.shape[0]) if w is None else float(w.sum())
    if total <= 0:
        scatter.fill(0)
        return 0.0, np.zeros(d), np.zeros(d), 0.0
    mean = (R.sum(0, dtype=np.float64) if w is None else w @ R.astype(np.float64)) / total
    R -= mean.astype(R.dtype)
    sq = np.einsum("ij,ij->i", R, R).astype(np.float64)
    wsq = sq if w is None else w * sq
    scale = _power_of_two_above(float(np.abs(wsq).max()))  # Σ w‖r‖² r would overflow float32 first
    third = (R.T @ (wsq / scale).astype(R.dtype)).astype(np.float64) * scale
    if w is None:
        _gram_into(R, scatter)
    elif bool((w >= 0).all()):
        R *= np.sqrt(w).astype(R.dtype)[:, None]
        _gram_into(R, scatter)
    else:
        scatter[...] = (R * w.astype(R.dtype)[:, None]).T @ R
    return total, mean, third, float(wsq @ sq)


def _removal(X: Tensor, class_index: Tensor, w: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Weight (C,) and weighted sum (C, d) of a part's rows by class, float64.

    Summed in float64 whatever the rows' precision: float32 sums of thousands of rows far from zero
    (features near 1e6) drifted the fold models' means by a quarter of a standard deviation.
    """
    removed = torch.zeros(n_classes, dtype=STAT_DTYPE, device=X.device).index_add_(0, class_index, w)
    sums = torch.zeros((n_classes, X.shape[1]), dtype=STAT_DTYPE, device=X.device)
    return removed, sums.index_add_(0, class_index, X.to(STAT_DTYPE) * w[:, None])


def _from_rows_cpu(X: Tensor, class_index: Tensor, n_classes: int, sample_weight: Tensor | None) -> ClassStatistics:
    """:meth:`ClassStatistics.from_rows` on CPU: one class piece at a time per thread, symmetric products."""
    workers = torch.get_num_threads()  # threads for the classes; torch itself runs single-threaded meanwhile
    with one_torch_thread():
        return _from_rows_cpu_body(X, class_index, n_classes, sample_weight, workers)


def _from_rows_cpu_body(X, class_index, n_classes, sample_weight, workers) -> ClassStatistics:
    X = X.detach()
    if X.dtype not in (torch.float32, torch.float64):
        X = X.to(torch.float32)
    values = X.numpy()
    d = values.shape[1]
    labels = class_index.detach().cpu().numpy().astype(np.int64, copy=False)
    weights = None if sample_weight is None else sample_weight.detach().to(device="cpu", dtype=STAT_DTYPE).numpy()
    # A stable argsort of 16-bit keys is a radix sort: ten times faster than of 64-bit ones.
    order = np.argsort(labels.astype(np.uint16) if n_classes <= 2**16 else labels, kind="stable")
    counts = np.bincount(labels, minlength=n_classes)
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    piece_rows = max(1, min(GROUP_ROWS, PIECE_BYTES // (d * values.itemsize)))
    pieces = [(k, a, min(a + piece_rows, starts[k + 1])) for k in range(n_classes) for a in range(starts[k], starts[k + 1], piece_rows)]
    stats = ClassStatistics.zeros(n_classes, d, scatters=False)
    out = {name: value.numpy() for name, value in stats.as_dict().items()}
    out["scatters"][counts == 0] = 0
    single_pieces = len(pieces) == int((counts > 0).sum())
    # Chunks of consecutive pieces, a fixed number whatever the thread count: each sums its classes'
    # scatters, and the chunks are added in order, so the pooled scatter does not depend on scheduling.
    n_chunks = min(len(pieces), 16)
    bounds = np.linspace(0, len(pieces), n_chunks + 1).round().astype(int).tolist()
    later = {}  # (class, first row) -> moments of a later piece of a class larger than a piece
    def work(c):
        pooled = np.zeros((d, d)) if single_pieces else None
        for k, a, b in pieces[bounds[c] : bounds[c + 1]]:
            index = order[a:b]
            first = a == starts[k]
            scatter = out["scatters"][k] if first else np.empty((d, d))
            moments = _piece_moments(values[index], None if weights is None else weights[index], scatter)
            if first:
                for name, value in zip(("weights", "means", "third_moments", "fourth_moments"), moments):
                    out[name][k] = value
            else:
                total, mean, third, fourth = moments
                later[(k, a)] = ClassStatistics(
                    torch.tensor([total], dtype=STAT_DTYPE), torch.from_numpy(mean)[None], torch.from_numpy(scatter)[None],
                    torch.from_numpy(third)[None], torch.tensor([fourth], dtype=STAT_DTYPE),
                )
            if pooled is not None:
                pooled += scatter
        return pooled

    with _single_threaded_blas():
        pooled = parallel(work, n_chunks, workers)
    for k, a in sorted(later):
        merged = stats.select([k]).merge(later[(k, a)])
        for name, value in merged.as_dict().items():
            getattr(stats, name)[k] = value[0]
    if single_pieces and pooled:
        total = pooled[0]
        for part in pooled[1:]:
            total += part
        object.__setattr__(stats, "_pooled", torch.from_numpy(total))
    return stats


@dataclass(frozen=True)
class PooledStatistics:
    """What a tied covariance needs of C classes: weights (C,), means (C, d), and summed over the
    classes the within-class scatter (d, d) and its fourth moment ``q4`` (a scalar)."""

    weights: Tensor
    means: Tensor
    scatter: Tensor
    fourth_moment: Tensor

    @property
    def device(self) -> torch.device:
        return self.means.device

    def pooled_within(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.scatter, self.fourth_moment, self.weights.sum()
