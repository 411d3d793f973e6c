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

from dataclasses import dataclass, fields

import torch

Tensor = torch.Tensor
STAT_DTYPE = torch.float64


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
    def zeros(cls, n_classes: int, n_features: int, device=None) -> ClassStatistics:
        kw = dict(dtype=STAT_DTYPE, device=device)
        return cls(
            weights=torch.zeros(n_classes, **kw),
            means=torch.zeros(n_classes, n_features, **kw),
            scatters=torch.zeros(n_classes, n_features, n_features, **kw),
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

        Two passes per class (mean, then centered products) keep the scatter
        accurate; rows are grouped by one sort, so the cost is one pass of
        d×d products over all rows whatever C is. float64 input is computed in
        float64; other input computes the centered products in float32 (its own
        precision, and twice the speed) and sums them in float64.
        """
        compute = torch.float64 if X.dtype == torch.float64 else torch.float32
        n, d = X.shape
        class_index = class_index.to(X.device)
        stats = cls.zeros(n_classes, d, device=X.device)
        order = torch.argsort(class_index, stable=True)
        grouped = X[order].to(compute)
        weights = None if sample_weight is None else sample_weight.to(device=X.device, dtype=STAT_DTYPE)[order]
        counts = torch.bincount(class_index, minlength=n_classes).tolist()
        start = 0
        for k, count in enumerate(counts):
            if count == 0:
                continue
            Xk = grouped[start : start + count]
            wk = None if weights is None else weights[start : start + count]
            start += count
            total = torch.tensor(float(count), dtype=STAT_DTYPE, device=X.device) if wk is None else wk.sum()
            if total <= 0:
                continue
            column_sums = Xk.sum(0, dtype=STAT_DTYPE) if wk is None else wk @ Xk.to(STAT_DTYPE)
            mean = column_sums / total
            R = Xk - mean.to(compute)
            weighted = R if wk is None else R * wk.to(compute)[:, None]
            sq = torch.linalg.vector_norm(R, dim=1).to(STAT_DTYPE) ** 2
            wsq = sq if wk is None else wk * sq
            stats.weights[k] = total
            stats.means[k] = mean
            stats.scatters[k] = (weighted.T @ R).to(STAT_DTYPE)
            stats.third_moments[k] = (wsq.to(compute) @ R).to(STAT_DTYPE)
            stats.fourth_moments[k] = (wsq * sq).sum()
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
        W = self.weights
        trace = torch.diagonal(self.scatters, dim1=-2, dim2=-1).sum(-1)
        S_delta = torch.einsum("cij,cj->ci", self.scatters, delta)
        dd = (delta * delta).sum(-1)
        scatter = self.scatters + W[:, None, None] * delta[:, :, None] * delta[:, None, :]
        third = (
            self.third_moments
            + trace[:, None] * delta
            + 2 * S_delta
            + (W * dd)[:, None] * delta
        )
        fourth = (
            self.fourth_moments
            + 4 * (self.third_moments * delta).sum(-1)
            + 4 * (S_delta * delta).sum(-1)
            + 2 * dd * trace
            + W * dd * dd
        )
        return scatter, third, fourth

    def _combine(self, other: ClassStatistics, sign: float) -> ClassStatistics:
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
        s_a, t_a, q_a = self.about(means)
        s_b, t_b, q_b = other.about(means)
        empty = weights <= 0
        result = ClassStatistics(
            weights=weights,
            means=means,
            scatters=s_a + sign * s_b,
            third_moments=t_a + sign * t_b,
            fourth_moments=q_a + sign * q_b,
        )
        return result.where_empty_zero(empty) if bool(empty.any()) else result

    def merge(self, other: ClassStatistics) -> ClassStatistics:
        """Statistics of the union of both row sets (same classes, same order)."""
        return self._combine(other, 1.0)

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
