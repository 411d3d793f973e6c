"""The Gaussian head: whitening once, then matrix products over all classes.

With ``Σ = L Lᵀ`` (Cholesky) and ``W = L⁻ᵀ``, ``z = (x − c) W`` gives
``(x − μ_k)ᵀ Σ⁻¹ (x − μ_k) = ‖z‖² − 2 z·m_k + ‖m_k‖²`` with ``m_k = (μ_k − c) W``:
one (n×d×d) product and one (n×d×C) product score every class at once.
Per-class covariances whiten with all C matrices in one (n×d×Cd) product,
or, when every class has fewer rows than half the dimensions (the few-shot
case), take the pooled distance less each class's low-rank correction: one
(n×d×Cr) product, r the largest class rank.
The center ``c`` (the overall mean) keeps ‖z‖² small so float32 does not
cancel away the distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import scipy.linalg.lapack as scipy_lapack
import torch

from openworld.core.covariance import CovarianceEstimate, numerically_constant
from openworld.core.scores import relative_mahalanobis

Tensor = torch.Tensor

# Rows per scoring chunk are chosen so the widest intermediate stays near this size.
CHUNK_BYTES = 256 * 2**20
CUDA_CHUNK_BYTES = 2**30
LOW_RANK_SHARE = 0.5  # per-class factors are used when every class's rank is at most this share of d
FAR_CENTER = 8.0  # ‖c‖² / tr Σ above which tied products center the rows first (round-off grown 3-fold)


class SingularCovarianceError(ValueError):
    """A covariance is not positive definite and shrinkage is off."""


def _singular_error(indices: list[int], names: list | None) -> SingularCovarianceError:
    which = f"class(es) {[names[i] for i in indices][:10]!r}" if names is not None else "the pooled data"
    return SingularCovarianceError(
        f"covariance is singular for {which}: too few rows for the chosen covariance, or constant / "
        "collinear features. Use shrinkage ('auto', 'oas' or a float above 0)."
    )


def cholesky_whitener(
    covariance: Tensor, shrinkage_on: bool, magnitude: Tensor, names: list | None = None
) -> tuple[Tensor, Tensor]:
    """Whitening matrices ``W = L⁻ᵀ`` (…, d, d) and ``log det Σ`` (…) for a (…, d, d) batch.

    With shrinkage on, a matrix that is still not positive definite (every
    feature constant, so the target is zero) gets the smallest ridge that
    makes it so; with shrinkage off that is the user's data speaking: a
    singular matrix (Cholesky fails, a feature is constant, or a feature's
    variance given the others is below 1e-12 of its own) is an error naming
    the classes concerned.
    """
    batch = covariance.reshape(-1, *covariance.shape[-2:])
    L, info = torch.linalg.cholesky_ex(batch)
    failed = (info > 0).nonzero().flatten().tolist()
    if not shrinkage_on:
        variances = torch.diagonal(batch, dim1=-2, dim2=-1)
        conditional = torch.diagonal(L, dim1=-2, dim2=-1) ** 2
        degenerate = numerically_constant(variances, magnitude) | (conditional <= 1e-12 * variances)
        failed = sorted(set(failed) | set(degenerate.any(-1).nonzero().flatten().tolist()))
        if failed:
            raise _singular_error(failed, names)
    d = batch.shape[-1]
    eye = torch.eye(d, dtype=batch.dtype, device=batch.device)
    for i in failed:
        scale = float(torch.diagonal(batch[i]).mean())
        scale = scale if scale > 0 else 1.0
        for exponent in range(-10, 1):
            Li, bad = torch.linalg.cholesky_ex(batch[i] + (10.0**exponent) * scale * eye)
            if int(bad) == 0:
                L[i] = Li
                break
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    log_det = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return L_inv.transpose(-2, -1).reshape(covariance.shape), log_det.reshape(covariance.shape[:-2])


@dataclass(frozen=True)
class GaussianHead:
    """Precomputed scoring parameters of C Gaussians in d dimensions.

    center: (d,); log_dets: (C,); log_priors: (C,), −inf for a class with no rows or of prior 0: such a
    class is switched off, neither predicted nor a candidate of the distance scores (+inf distance).
    ``tied``: whitener (d, d), whitened_means (C, d).
    ``full``: whitener (C, d, d), whitened_means (C, d) (class k by its own W_k).
    ``diag``: whitener (C, d) holds precisions 1/σ², whitened_means (C, d) holds μ/σ².
    ``full`` with low-rank classes (``factors`` set): whitener (d, d) and
    whitened_means (C, d) are the pooled covariance's, as for ``tied``, and
    ``D_k = s_k (T_k − ‖(x − c) F_k − o_k‖²)`` with T_k the pooled distance,
    ``factors`` (d, C·r) holding F_k (d, r) class by class, ``factor_offsets`` o_k
    (C, r) and ``scales`` s_k = 1/λ_k (C,); see :meth:`build_low_rank`.
    ``center_rows``: the tied products take ``x − c`` rather than ``x`` (with ``c``
    folded into the bias). Round-off in a product of ``x`` grows with ``‖x‖``, by
    ``√(1 + ‖c‖² / tr Σ)`` over centered rows; the rows are centered when that
    factor would exceed 3 (FAR_CENTER), and otherwise a pass over them is saved.
    """

    structure: str
    center: Tensor
    whitener: Tensor
    whitened_means: Tensor
    mean_norms: Tensor
    log_dets: Tensor
    log_priors: Tensor
    center_rows: bool = True
    factors: Tensor | None = None
    factor_offsets: Tensor | None = None
    scales: Tensor | None = None

    def _cached(self, name: str, compute):
        """A value derived from the fields, computed once (the fields are never written, so it cannot go
        stale; two threads may both compute it, with the same result)."""
        value = self.__dict__.get(name)
        if value is None:
            value = compute()
            object.__setattr__(self, name, value)
        return value

    @property
    def tied_linear(self) -> Tensor:
        """(d, C) ``W m_kᵀ``: for a tied covariance, ``z·m_k = (x − c) · (W m_k)``, linear in x."""
        return self._cached("_tied_linear", lambda: (self.whitener @ self.whitened_means.T).contiguous())

    @property
    def uniform_priors(self) -> bool:
        """Every class that can be predicted has the same prior: adding the priors shifts each row by a constant."""
        def compute():
            finite = self.log_priors[torch.isfinite(self.log_priors)]
            return bool(finite.numel() == 0 or (finite == finite[0]).all())
        return self._cached("_uniform_priors", compute)

    def tied_bias(self, with_priors: bool) -> Tensor:
        """(C,) bias of the tied logits: ``−½‖m_k‖²`` (+ ``log π_k``), −inf for a class that cannot be
        predicted, and ``−c·W m_k`` when the rows are not centered first."""
        def compute():
            bias = -0.5 * self.mean_norms + (self.log_priors if with_priors else 0.0)
            bias = torch.where(torch.isfinite(self.log_priors), bias, -math.inf)
            return bias if self.center_rows else bias - self.center @ self.tied_linear
        return self._cached(f"_tied_bias_{with_priors}", compute)

    def tied_rows(self, X: Tensor) -> Tensor:
        """The rows as the tied products take them: ``x − c`` or ``x`` (see ``center_rows``)."""
        return X - self.center if self.center_rows else X

    def tied_logits(self, X: Tensor, out: Tensor | None = None) -> Tensor:
        """(n, C) log joints of a tied head up to a term shared by every class (−½‖z‖² and constants).

        Posteriors need only these: one (n×d×C) product, bias fused, instead of
        the (n×d×d) whitening, as in linear discriminant analysis.
        """
        return torch.addmm(self.tied_bias(True), self.tied_rows(X), self.tied_linear, out=out)

    @classmethod
    def build(
        cls,
        means: Tensor,
        estimate: CovarianceEstimate,
        log_priors: Tensor,
        center: Tensor,
        shrinkage_on: bool,
        names: list | None = None,
    ) -> GaussianHead:
        """From class means (C, d), a covariance estimate and log priors (C,)."""
        offsets = means - center
        magnitude = torch.maximum(means.abs().amax(0), center.abs())
        if estimate.structure == "diag":
            variances = estimate.covariance
            if not shrinkage_on:
                bad = numerically_constant(variances, magnitude).any(-1).nonzero().flatten().tolist()
                if bad:
                    raise _singular_error(bad, names)
            # Shrunk variances are positive unless every feature is constant everywhere;
            # the floor keeps precisions finite then (inf · 0 would be NaN).
            scale = float(estimate.pooled.diagonal().mean()) if estimate.pooled is not None else 0.0
            floor = torch.finfo(variances.dtype).eps * (scale if scale > 0 else 1.0)
            variances = torch.clamp(variances, min=floor)
            precisions = 1.0 / variances
            scaled = offsets * precisions
            return cls("diag", center, precisions, scaled, (offsets * scaled).sum(-1),
                       torch.log(variances).sum(-1), log_priors)
        if estimate.structure == "tied":
            W, log_det = cholesky_whitener(estimate.covariance, shrinkage_on, magnitude)
            whitened = offsets @ W
            log_dets = log_det.expand(means.shape[0])
            far = bool(center @ center > FAR_CENTER * torch.diagonal(estimate.covariance).sum())
            return cls("tied", center, W, whitened, (whitened**2).sum(-1), log_dets, log_priors, center_rows=far)
        if shrinkage_on and estimate.raw is not None:
            low_rank = cls.build_low_rank(means, estimate, log_priors, center, magnitude)
            if low_rank is not None:
                return low_rank
        W, log_dets = cholesky_whitener(estimate.covariance, shrinkage_on, magnitude, names)
        whitened = torch.einsum("ci,cij->cj", offsets, W)
        return cls(estimate.structure, center, W, whitened, (whitened**2).sum(-1), log_dets, log_priors)

    @classmethod
    def build_low_rank(
        cls, means: Tensor, estimate: CovarianceEstimate, log_priors: Tensor, center: Tensor, magnitude: Tensor
    ) -> GaussianHead | None:
        """A ``full`` head for classes with fewer rows than dimensions, or None where it would not pay.

        ``Σ_k = λ_k Σ + (1 − λ_k) L_k L_kᵀ``: the pooled covariance plus a class
        scatter of rank r_k ≤ (rows − 1), factored by a pivoted Cholesky. In the
        pooled whitening z, with M = Wᵀ L_k and ``K Kᵀ = λ/(1 − λ) I + MᵀM`` (r × r),
        Woodbury gives ``Σ_k⁻¹ = (W Wᵀ − W G Gᵀ Wᵀ) / λ``, G = M K⁻ᵀ: the distance
        is the pooled one less r squared projections, n·d·(d + C + C·r) per batch
        instead of n·C·d². Used when every r_k ≤ d/2 (LOW_RANK_SHARE) and λ_k > 0.
        Round-off: D is s·(T − ‖·‖²) with T/D at most the class's largest whitened
        variance over λ: a few tens with automatic shrinkage (λ ≥ d/(W + d)), but 1/λ
        for a small fixed one: float32 relative errors 1e-3 at λ = 0.05 and 2e-2 at
        0.01 (the dense path: 5e-5 and 1e-3); pass float64 rows there.
        """
        lam = estimate.intensities
        d = means.shape[1]
        if not bool((lam > 0).all()):
            return None
        shrunk_only = (lam >= 1).cpu().numpy()
        factors_k = [np.zeros((d, 0))] * means.shape[0]
        # C pivoted Choleskys, O(d r²) each: fitting cost, never scoring. One class at a time, least shrunk
        # (most rows) first, so that a class of full rank stops the loop before the others are factored.
        for k in torch.argsort(lam).tolist():
            raw = estimate.raw[k].detach().cpu().numpy()
            if shrunk_only[k] or not raw.trace() > 0:
                continue
            c, piv, rank, _ = scipy_lapack.dpstrf(raw, lower=1)
            if rank > LOW_RANK_SHARE * d:
                return None
            L = np.zeros((d, rank))
            L[piv[:rank] - 1] = np.tril(c)[:rank, :rank]
            L[piv[rank:] - 1] = np.tril(c)[rank:, :rank]
            factors_k[k] = L
        r = max(1, max(f.shape[1] for f in factors_k))
        dtype, device = estimate.pooled.dtype, estimate.pooled.device
        L = torch.zeros(len(factors_k), d, r, dtype=dtype)
        for k, f in enumerate(factors_k):
            L[k, :, : f.shape[1]] = torch.from_numpy(f)
        L = L.to(device)
        W, log_det_pooled = cholesky_whitener(estimate.pooled, True, magnitude)
        M = torch.einsum("ij,cir->cjr", W, L)  # Wᵀ L_k
        ratio = (lam / torch.where(lam < 1, 1 - lam, 1.0))[:, None, None]
        eye = torch.eye(r, dtype=dtype, device=device)
        K = torch.linalg.cholesky(ratio * eye + M.transpose(1, 2) @ M)
        G = torch.linalg.solve_triangular(K, M.transpose(1, 2), upper=False).transpose(1, 2)  # M K⁻ᵀ
        # log det Σ_k = log det Σ + d log λ + log det(ratio·I + MᵀM) − r log ratio (zero columns add nothing)
        log_dets = (log_det_pooled + d * torch.log(lam) + 2 * torch.log(torch.diagonal(K, dim1=-2, dim2=-1)).sum(-1)
                    - r * torch.log(ratio[:, 0, 0]))
        whitened = (means - center) @ W
        factors = torch.einsum("ij,cjr->icr", W, G).reshape(d, -1)  # F_k = W G_k, class by class
        factor_offsets = torch.einsum("cj,cjr->cr", whitened, G)
        return cls("full", center, W, whitened, (whitened**2).sum(-1), log_dets, log_priors,
                   factors=factors, factor_offsets=factor_offsets, scales=1.0 / lam)

    @classmethod
    def build_subspace(
        cls, means: Tensor, basis: tuple[Tensor, Tensor], log_priors: Tensor, center: Tensor
    ) -> GaussianHead:
        """A tied head that measures distance only in a whitened subspace ``basis = (W (d, r), eigenvalues (r,))``."""
        W, eigenvalues = basis
        whitened = (means - center) @ W
        log_det = torch.log(eigenvalues).sum().expand(means.shape[0])
        return cls("tied", center, W, whitened, (whitened**2).sum(-1), log_det, log_priors)

    @property
    def n_classes(self) -> int:
        return self.whitened_means.shape[0]

    @property
    def n_features(self) -> int:
        return self.center.shape[0]

    def to(self, dtype: torch.dtype, device) -> GaussianHead:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(dtype=dtype, device=device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def chunk_rows(self) -> int:
        """Rows per chunk so that the widest (rows × C × d or rows × C) block fits CHUNK_BYTES
        (CUDA_CHUNK_BYTES on a GPU, where larger products run nearer the device's rate)."""
        per_class = 1
        if self.structure == "full":
            per_class = self.n_features if self.factors is None else self.factor_offsets.shape[1]
        width = self.n_classes * per_class + self.n_features
        budget = CUDA_CHUNK_BYTES if self.center.device.type == "cuda" else CHUNK_BYTES
        return max(1, budget // (8 * width))

    def squared_mahalanobis(self, X: Tensor) -> Tensor:
        """(n, C) squared Mahalanobis distances of ``X: (n, d)``; +inf for classes switched off (no rows or
        prior 0)."""
        Xc = X - self.center
        if self.structure == "tied" or self.factors is not None:
            Z = Xc @ self.whitener
            D = (Z * Z).sum(1, keepdim=True) - 2 * Z @ self.whitened_means.T + self.mean_norms
            if self.factors is not None:
                Y = (Xc @ self.factors).view(X.shape[0], *self.factor_offsets.shape) - self.factor_offsets
                D = self.scales * (D - (Y * Y).sum(-1))
        elif self.structure == "full":
            C, d = self.whitened_means.shape
            Z = (Xc @ self.whitener.permute(1, 0, 2).reshape(d, C * d)).view(-1, C, d)
            D = ((Z - self.whitened_means) ** 2).sum(-1)
        else:
            D = (Xc * Xc) @ self.whitener.T - 2 * Xc @ self.whitened_means.T + self.mean_norms
        D = torch.clamp(D, min=0)  # round-off can push a distance a hair below zero
        return torch.where(torch.isfinite(self.log_priors), D, torch.full_like(D, math.inf))

    def log_likelihoods(self, distances: Tensor) -> Tensor:
        """(n, C) Gaussian log densities ``−½ (D + log det Σ_k + r log 2π)`` from distances (r = rank)."""
        rank = self.whitened_means.shape[1]
        return -0.5 * (distances + self.log_dets + rank * math.log(2 * math.pi))


@dataclass(frozen=True)
class TiedRelativeScorer:
    """Relative Mahalanobis of a tied head without whitening the rows (no n×d×d product).

    With P = Σ⁻¹ and the background precision P₀ = (Σ + B)⁻¹ (B the between-class
    scatter, rank < C), ``D₀ − D_k = 2 ℓ_k − (x − c)ᵀ (P − P₀) (x − c)`` where
    ``ℓ_k = (x − c)·P a_k − ½ a_kᵀ P a_k`` (a_k = μ_k − c) are the LDA logits
    without priors. In whitened coordinates B is MᵀM, M (C, d) the whitened means
    scaled by √(w_k / W); by Woodbury, ``P − P₀ = W Mᵀ (I + M Mᵀ)⁻¹ M Wᵀ = F Fᵀ`` with
    ``F = W Mᵀ L⁻ᵀ``, ``L Lᵀ = I + M Mᵀ`` (C × C, eigenvalues ≥ 1: a well-conditioned Cholesky,
    no SVD). With C > d the same is ``F = W chol(I − (I + MᵀM)⁻¹)`` (d × d Choleskys),
    or, if that matrix is singular, ``W V diag(s / √(1 + s²))`` from the eigenvectors V
    and eigenvalues s² of MᵀM. With C ≤ d but means thousands of standard deviations
    apart, F comes from the SVD M = U S Vᵀ the same way (rank at most d). The score
    ``2 max_k ℓ_k − ‖(x − c) F‖²`` costs n·d·(C + rank F) instead of n·d·(2d + C).
    Its two terms grow as the squared separation of the means (in within-class standard
    deviations) while their difference does not: in float32, means 1,000 standard deviations
    apart leave errors near 0.5 in the score, so such data are scored in float64.
    """

    factor: Tensor

    @classmethod
    def build(cls, head: GaussianHead, weights: Tensor) -> TiedRelativeScorer:
        """From a tied head and the class weights (C,) that define the background's between-class scatter."""
        M = torch.sqrt(weights / weights.sum())[:, None] * head.whitened_means
        if M.shape[0] <= M.shape[1]:
            gram = M @ M.T
            # Class means within a thousand standard deviations: the Cholesky factor is accurate. Beyond (and
            # in degenerate fits, where shrinkage had to add a ridge), the SVD keeps each direction exact.
            if float(torch.diagonal(gram).max()) < 1e6:
                L, info = torch.linalg.cholesky_ex(gram + torch.eye(M.shape[0], dtype=M.dtype, device=M.device))
                if int(info) == 0:
                    return cls(head.whitener @ torch.linalg.solve_triangular(L, M, upper=False).T)
        if M.shape[0] > M.shape[1]:  # C > d: d × d problems instead of the SVD of the C × d matrix
            eye = torch.eye(M.shape[1], dtype=M.dtype, device=M.device)
            gram = M.T @ M
            # MᵀM (I + MᵀM)⁻¹ = I − (I + MᵀM)⁻¹: two Choleskys (a fraction of an eigh on a GPU). Its
            # eigenvalues s²/(1 + s²) lie in [0, 1); if the classes leave a direction unspanned the second
            # Cholesky fails and the eigenvectors below drop that direction.
            L, info = torch.linalg.cholesky_ex(gram + eye)
            if int(info) == 0:
                inverse = torch.cholesky_inverse(L)
                factor, info = torch.linalg.cholesky_ex(eye - 0.5 * (inverse + inverse.T))
                if int(info) == 0:
                    return cls(head.whitener @ factor)
            squares, V = torch.linalg.eigh(gram)
            squares = torch.clamp(squares, min=0)
            keep = squares > torch.finfo(squares.dtype).eps * squares.max()  # directions the classes do not span
            return cls(head.whitener @ (V[:, keep] * torch.sqrt(squares[keep] / (1 + squares[keep]))))
        _, s, Vh = torch.linalg.svd(M, full_matrices=False)
        keep = s > torch.finfo(s.dtype).eps * s.max()  # directions the classes do not span carry nothing
        return cls(head.whitener @ (Vh[keep].T * (s[keep] / torch.hypot(torch.ones_like(s[keep]), s[keep]))))

    def to(self, dtype: torch.dtype, device) -> TiedRelativeScorer:
        return TiedRelativeScorer(self.factor.to(dtype=dtype, device=device).contiguous())

    def scores(
        self, X: Tensor, head: GaussianHead, with_logits: bool = False, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(n,) relative Mahalanobis scores of ``X: (n, d)`` and, ``with_logits``, the (n, C) log joints
        up to a per-row constant (in ``out`` if given): two products with their biases fused."""
        rows = head.tied_rows(X)
        logits = torch.addmm(head.tied_bias(False), rows, head.tied_linear, out=out)
        if head.center_rows:
            projected = rows @ self.factor
        else:
            projected = torch.addmm(-(head.center @ self.factor), rows, self.factor)
        scores = 2 * logits.amax(dim=1) - torch.linalg.vector_norm(projected, dim=1).square()
        if not with_logits:
            return scores, None
        if not head.uniform_priors:  # equal priors shift every logit of a row alike: nothing to add
            logits.add_(head.log_priors)
        return scores, logits


@dataclass(frozen=True)
class RelativeEnsemble:
    """Sum of relative Mahalanobis scores under several covariance structures of the same statistics.

    ``members`` holds, per structure, its class head and background: a
    :class:`TiedRelativeScorer` for the tied head, a one-component
    :class:`GaussianHead` otherwise. Rows go through every member chunk by chunk,
    so the widest member (the per-class one: rows × C × d) sets the chunk size.
    """

    members: tuple[tuple[GaussianHead, GaussianHead | TiedRelativeScorer], ...]

    def to(self, dtype: torch.dtype, device) -> RelativeEnsemble:
        return RelativeEnsemble(tuple((head.to(dtype, device), bg.to(dtype, device)) for head, bg in self.members))

    def chunk_rows(self) -> int:
        return min(head.chunk_rows() for head, _ in self.members)

    def scores(self, X: Tensor, known: tuple[str, Tensor] | None = None) -> Tensor:
        """(n,) sum over members of ``D₀ − min_k D_k`` for ``X: (n, d)``; ``known = (structure, distances)``:
        the (n, C) class distances of that structure's member, already computed by the caller."""
        total = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
        for head, background in self.members:
            if isinstance(background, TiedRelativeScorer):
                total += background.scores(X, head)[0]
                continue
            distances = known[1] if known is not None and known[0] == head.structure else head.squared_mahalanobis(X)
            total += relative_mahalanobis(distances, background.squared_mahalanobis(X)[:, 0])
        return total
