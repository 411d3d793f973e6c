"""Peer OOD detectors fitted on the same embeddings, for side-by-side comparison.

Each baseline is a small estimator: ``fit(X, y) -> self`` and
``score_samples(X) -> (n,)`` with higher = more in-distribution (the same
convention as :meth:`openworld.OpenWorld.score_samples`); those built on a
classifier also have ``predict`` and ``predict_proba``. The formula and the
paper are in each class's docstring; :data:`BASELINES` names them.

None of these is exact under ``partial_fit`` / ``forget`` (kNN keeps rows, the
logistic head is an iterative fit): refit them.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(0, 1, (50, 8)) + 3, rng.normal(0, 1, (50, 8)) - 3])
>>> y = np.repeat(["cat", "dog"], 50)
>>> near, far = X[:1] + 0.1, 30 * np.eye(8)[[3]]
>>> knn = BASELINES["knn"](k=5).fit(X, y)
>>> bool(knn.score_samples(near)[0] > knn.score_samples(far)[0])
True
>>> vim = BASELINES["vim"]().fit(X, y)
>>> vim.predict(near).tolist(), bool(vim.score_samples(near)[0] > vim.score_samples(far)[0])
(['cat'], True)
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression

from openworld.core.arrays import as_features, as_labels

__all__ = [
    "BASELINES",
    "CosineKNN",
    "Energy",
    "MaxLogit",
    "MaxSoftmax",
    "ViM",
    "logistic_logit_parameters",
    "vim_principal_dim",
]

_FAISS_HINT = 'the kNN baseline needs faiss; install the knn extra: pip install "openworld[knn]"'


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(_FAISS_HINT) from error
    return faiss


def _matrix(X, *, n_features: int | None = None, name: str, dtype=np.float64) -> np.ndarray:
    """Validated ``(n, d)`` NumPy features (any input kind ``OpenWorld`` accepts)."""
    T, _ = as_features(X, n_features=n_features, name=name)
    return np.ascontiguousarray(T.detach().cpu().numpy(), dtype=dtype)


def _check_fitted(estimator, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise ValueError(f"this {type(estimator).__name__} is not fitted yet; call fit(X, y) first")


# --------------------------------------------------------------------------- kNN


class CosineKNN(BaseEstimator):
    """Cosine similarity to the k-th nearest training row.

    Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors",
    ICML 2022. With ``ẑ = x / ‖x‖``::

        score(x) = ẑ · ẑ_(k)        (ẑ_(k): the k-th most similar normalised training row)

    The paper's score ``−‖ẑ − ẑ_(k)‖ = −√(2 − 2 ẑ·ẑ_(k))`` is a monotone
    function of it, so every ranking metric is the same. Labels are ignored.
    Exact search (faiss ``IndexFlatIP``) over all ``n`` fitted rows, kept as
    float32 ``(n, d)``. A fitted row scored again finds itself first (k = 1
    gives 1.0), so place thresholds on held-out rows. A zero row normalises
    to zero (similarity 0 to everything).
    """

    def __init__(self, k: int = 10):
        self.k = k

    def fit(self, X, y=None):
        """Index ``X: (n, d)``; ``y`` is accepted and ignored."""
        if not isinstance(self.k, (int, np.integer)) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k must be a positive int, got {self.k!r}")
        faiss = _import_faiss()
        Z = _normalised(_matrix(X, name=type(self).__name__, dtype=np.float32))
        if self.k > Z.shape[0]:
            raise ValueError(f"k={self.k} exceeds the {Z.shape[0]} fitted rows")
        index = faiss.IndexFlatIP(Z.shape[1])
        index.add(Z)
        self.index_ = index
        self.n_features_in_ = Z.shape[1]
        return self

    def score_samples(self, X) -> np.ndarray:
        """(n,) cosine similarity to the k-th nearest fitted row; higher = more in-distribution."""
        _check_fitted(self, "index_")
        Z = _normalised(_matrix(X, n_features=self.n_features_in_, name=type(self).__name__, dtype=np.float32))
        similarities, _ = self.index_.search(Z, int(self.k))
        return similarities[:, int(self.k) - 1].astype(np.float64)


def _normalised(Z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return np.ascontiguousarray(Z / np.maximum(norms, np.finfo(Z.dtype).tiny), dtype=Z.dtype)


# --------------------------------------------------------------------------- logistic head


def logistic_logit_parameters(head: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``l = x Wᵀ + b`` of a fitted logistic regression: ``W: (C, d)``, ``b: (C,)``.

    scikit-learn fits two classes as one binomial vector ``w``; it is returned
    as the symmetric softmax pair ``W = (−w/2, w/2)``, ``b = (−b/2, b/2)``,
    which gives the same probabilities and a 2-column logit like every other C.
    """
    W = np.asarray(head.coef_, dtype=np.float64)
    b = np.asarray(head.intercept_, dtype=np.float64)
    if W.shape[0] == 1 and len(head.classes_) == 2:
        W, b = np.vstack([-W / 2, W / 2]), np.r_[-b / 2, b / 2]
    return W, b


class _LogisticHead(BaseEstimator):
    """A multinomial logistic-regression head on the embeddings, and its logits.

    ``head``, when given and fitted, is reused as is (so several baselines
    share one fit; its classes are trusted to match ``y``); an unfitted
    ``head`` is cloned and fitted, with its own settings (so ``sklearn.clone``
    of a baseline, which unfits the head, still works). ``head=None`` fits
    ``LogisticRegression(C=C, max_iter=max_iter)`` (multinomial L-BFGS;
    ~20–35 iterations converge on CLINC150's 15,000 × 384 MiniLM embeddings).
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, head=None):
        self.C = C
        self.max_iter = max_iter
        self.head = head

    def fit(self, X, y):
        """Fit (or adopt) the head on ``X: (n, d)`` with labels ``y: (n,)``; returns self."""
        X = _matrix(X, name=type(self).__name__)
        labels = as_labels(y, X.shape[0])
        if self.head is not None and hasattr(self.head, "coef_"):
            head = self.head
            if head.coef_.shape[1] != X.shape[1]:
                raise ValueError(f"head expects {head.coef_.shape[1]} features, X has {X.shape[1]}")
        else:
            if np.unique(labels).size < 2:
                raise ValueError(f"{type(self).__name__} needs at least 2 classes to fit a classifier head")
            template = LogisticRegression(C=self.C, max_iter=self.max_iter) if self.head is None else clone(self.head)
            head = template.fit(X, labels)
        self.head_ = head
        self.classes_ = np.asarray(head.classes_)
        self.coef_, self.intercept_ = logistic_logit_parameters(head)
        self.n_features_in_ = X.shape[1]
        self._fit_extra(X)
        return self

    def _fit_extra(self, X: np.ndarray) -> None:
        """Hook for scores that need more than the head (ViM's subspace)."""

    def _features(self, X) -> np.ndarray:
        _check_fitted(self, "coef_")
        return _matrix(X, n_features=self.n_features_in_, name=type(self).__name__)

    def logits(self, X) -> np.ndarray:
        """(n, C) logits ``x Wᵀ + b``, columns in ``classes_`` order."""
        return self._features(X) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        """(n, C) softmax of the logits (equal to the head's ``predict_proba``)."""
        return softmax(self.logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """(n,) the most probable known class (closed set: never "unknown")."""
        return self.classes_[np.argmax(self.logits(X), axis=1)]


class MaxSoftmax(_LogisticHead):
    """Maximum softmax probability, ``score(x) = max_k softmax(l(x))_k``.

    Hendrycks and Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017. Blind to
    distance: a row far out along a class's direction gets a posterior near 1.
    """

    def score_samples(self, X) -> np.ndarray:
        """(n,) the largest class posterior; higher = more in-distribution."""
        return self.predict_proba(X).max(axis=1)


class Energy(_LogisticHead):
    """Negative free energy, ``score(x) = log Σ_k exp l_k(x)`` (temperature 1).

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    Unlike MSP it keeps the logits' scale, which separates far-away inputs.
    """

    def score_samples(self, X) -> np.ndarray:
        """(n,) logsumexp of the logits; higher = more in-distribution."""
        return logsumexp(self.logits(X), axis=1)


class MaxLogit(_LogisticHead):
    """Largest logit, ``score(x) = max_k l_k(x)``.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
    Settings", ICML 2022.
    """

    def score_samples(self, X) -> np.ndarray:
        """(n,) the largest logit; higher = more in-distribution."""
        return self.logits(X).max(axis=1)


# --------------------------------------------------------------------------- ViM


def vim_principal_dim(n_features: int) -> int:
    """ViM's principal-subspace dimension ``D`` for feature width ``d``.

    The official code (github.com/haoqiwang/vim, ``benchmark.py``) uses
    ``D = 1000`` for ``d ≥ 2048`` and ``D = 512`` otherwise (ViT, ``d = 768``);
    below 768 that leaves little or no residual, so we take ``D = d // 2``
    there (384-d MiniLM → 192), the same share of ``d`` as for ResNet-50.
    """
    if n_features >= 2048:
        return 1000
    if n_features >= 768:
        return 512
    return max(n_features // 2, 1)


class ViM(_LogisticHead):
    """Virtual-logit matching on the logistic head.

    Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching",
    CVPR 2022. With logits ``l = x Wᵀ + b``, the origin ``u = −W⁺ b`` (the
    point with zero logits), and ``R: (d, d − D)`` the eigenvectors of
    ``(1/n) Σ (x − u)(x − u)ᵀ`` beyond the ``D`` largest::

        α        = mean_train max_k l_k  /  mean_train ‖(x − u) R‖
        v(x)     = α ‖(x − u) R‖                         (the virtual logit)
        score(x) = log Σ_k exp l_k(x) − v(x)

    The paper's OOD probability is the virtual logit's softmax share,
    ``e^v / (e^v + Σ e^{l_k}) = σ(−score)``, so ``score`` ranks exactly as its
    negation; it is the official code's ``score_id``. ``dim`` is ``D``:
    ``"auto"`` = :func:`vim_principal_dim`.
    """

    def __init__(self, dim="auto", C: float = 1.0, max_iter: int = 1000, head=None):
        super().__init__(C=C, max_iter=max_iter, head=head)
        self.dim = dim

    def _fit_extra(self, X: np.ndarray) -> None:
        d = X.shape[1]
        D = vim_principal_dim(d) if self.dim == "auto" else self.dim
        if not isinstance(D, (int, np.integer)) or isinstance(D, bool) or not 0 < D < d:
            raise ValueError(f"dim must be 'auto' or an int in [1, {d - 1}] (the features are {d}-d), got {self.dim!r}")
        origin = -np.linalg.pinv(self.coef_) @ self.intercept_
        centred = X - origin
        second_moment = centred.T @ centred / X.shape[0]
        _, eigenvectors = np.linalg.eigh(second_moment)  # ascending: the first d − D span the residual
        self.principal_dim_ = int(D)
        self.origin_ = origin
        self.residual_basis_ = np.ascontiguousarray(eigenvectors[:, : d - D])
        residual_norms = np.linalg.norm(centred @ self.residual_basis_, axis=1)
        max_logits = (X @ self.coef_.T + self.intercept_).max(axis=1)
        self.alpha_ = float(max_logits.mean() / residual_norms.mean())

    def virtual_logit(self, X) -> np.ndarray:
        """(n,) ``α ‖(x − u) R‖``: the scaled norm of the part of ``x`` outside the principal subspace."""
        X = self._features(X)
        return self.alpha_ * np.linalg.norm((X - self.origin_) @ self.residual_basis_, axis=1)

    def score_samples(self, X) -> np.ndarray:
        """(n,) energy minus the virtual logit; higher = more in-distribution."""
        return logsumexp(self.logits(X), axis=1) - self.virtual_logit(X)


#: Baselines by name, as the evaluation harness and reports call them.
BASELINES: dict[str, type] = {
    "knn": CosineKNN,
    "vim": ViM,
    "msp": MaxSoftmax,
    "energy": Energy,
    "max_logit": MaxLogit,
}
