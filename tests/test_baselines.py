"""OOD baselines against independent references.

kNN against a brute-force NumPy cosine loop; MSP / energy / max-logit against
scikit-learn's own ``predict_proba`` / ``decision_function``; ViM against a
line-by-line NumPy transcription of the paper's equations (as in the official
code: ``np.linalg.eig`` of the uncentred second moment around ``u``).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from openworld.evaluation.baselines import (
    BASELINES,
    CosineKNN,
    Energy,
    MaxLogit,
    MaxSoftmax,
    ViM,
    logistic_logit_parameters,
    vim_principal_dim,
)


@pytest.fixture(scope="module")
def problem():
    """4 Gaussian classes in 16-d (plus an offset so the origin is not the data's centre), and queries."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 2, (4, 16)) + 1.0
    y = np.repeat(np.arange(4), 60)
    X = means[y] + rng.normal(0, 1, (y.size, 16))
    queries = np.vstack([means[rng.integers(0, 4, 30)] + rng.normal(0, 1, (30, 16)), rng.normal(0, 6, (20, 16))])
    return X, y, queries


# --------------------------------------------------------------------------- kNN


def brute_force_knn(train, queries, k):
    scores = []
    for q in queries:
        sims = [q @ t / (np.linalg.norm(q) * np.linalg.norm(t)) for t in train]
        scores.append(sorted(sims, reverse=True)[k - 1])
    return np.array(scores)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_knn_matches_brute_force_cosine(problem, k):
    X, y, queries = problem
    got = CosineKNN(k=k).fit(X, y).score_samples(queries)
    np.testing.assert_allclose(got, brute_force_knn(X, queries, k), atol=1e-5)
    assert got.shape == (queries.shape[0],) and got.dtype == np.float64


def test_knn_is_scale_invariant_and_ignores_labels(problem):
    X, y, queries = problem
    a = CosineKNN(k=3).fit(X).score_samples(queries)
    b = CosineKNN(k=3).fit(5 * X, y).score_samples(0.1 * queries)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_knn_training_row_finds_itself_first(problem):
    X, _, _ = problem
    np.testing.assert_allclose(CosineKNN(k=1).fit(X).score_samples(X), 1.0, atol=1e-5)


def test_knn_bad_k_and_input(problem):
    X, _, _ = problem
    with pytest.raises(ValueError, match="exceeds the 240 fitted rows"):
        CosineKNN(k=241).fit(X)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive int"):
            CosineKNN(k=k).fit(X)
    knn = CosineKNN(k=2).fit(X)
    with pytest.raises(ValueError, match="16 features"):
        knn.score_samples(X[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        knn.score_samples(np.full((2, 16), np.nan))
    with pytest.raises(ValueError, match="not fitted"):
        CosineKNN().score_samples(X)


def test_knn_without_faiss_says_how_to_install(problem, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "openworld\[knn\]"'):
        CosineKNN().fit(problem[0])


# --------------------------------------------------------------------------- logistic head scores


@pytest.fixture(scope="module")
def head(problem):
    X, y, _ = problem
    return LogisticRegression(C=1.0, max_iter=1000).fit(X, y)


def test_logit_scores_match_scikit_learn(problem, head):
    X, y, queries = problem
    logits = head.decision_function(queries)
    np.testing.assert_allclose(Energy().fit(X, y).score_samples(queries), logsumexp(logits, axis=1), rtol=1e-6)
    np.testing.assert_allclose(MaxLogit().fit(X, y).score_samples(queries), logits.max(axis=1), rtol=1e-6)
    msp = MaxSoftmax().fit(X, y)
    np.testing.assert_allclose(msp.score_samples(queries), head.predict_proba(queries).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(msp.predict_proba(queries), head.predict_proba(queries), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(msp.predict(queries), head.predict(queries))
    np.testing.assert_array_equal(msp.classes_, head.classes_)


def test_shared_head_is_reused_not_refitted(problem, head):
    X, y, queries = problem
    energy = Energy(head=head).fit(X, y)
    assert energy.head_ is head
    np.testing.assert_array_equal(energy.score_samples(queries), Energy().fit(X, y).score_samples(queries))
    template = Energy(head=LogisticRegression(C=0.01, max_iter=500)).fit(X, y)  # unfitted: cloned, then fitted
    assert template.head_ is not template.head and template.head_.C == 0.01
    refitted = clone(energy).fit(X, y)  # clone() unfits the head; fit fits it again
    np.testing.assert_allclose(refitted.score_samples(queries), energy.score_samples(queries), rtol=1e-6)
    with pytest.raises(ValueError, match="head expects 16 features"):
        Energy(head=head).fit(X[:, :4], y)


def test_C_is_passed_to_the_head(problem):
    X, y, queries = problem
    strong = Energy(C=1e-3).fit(X, y)
    assert strong.head_.C == 1e-3
    np.testing.assert_allclose(
        strong.score_samples(queries),
        logsumexp(LogisticRegression(C=1e-3, max_iter=1000).fit(X, y).decision_function(queries), axis=1),
        rtol=1e-6,
    )


def test_two_classes_give_symmetric_softmax_logits(problem):
    X, y, queries = problem
    keep = y < 2
    head = LogisticRegression(max_iter=1000).fit(X[keep], np.where(y[keep] == 0, "a", "b"))
    W, b = logistic_logit_parameters(head)
    assert W.shape == (2, 16) and b.shape == (2,)
    msp = MaxSoftmax(head=head).fit(X[keep], np.where(y[keep] == 0, "a", "b"))
    np.testing.assert_allclose(msp.predict_proba(queries), head.predict_proba(queries), rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(msp.predict(queries), head.predict(queries))


def test_head_needs_two_classes(problem):
    X, _, _ = problem
    with pytest.raises(ValueError, match="at least 2 classes"):
        Energy().fit(X, np.zeros(len(X), dtype=int))


# --------------------------------------------------------------------------- ViM


def vim_reference(train, logits_train, queries, logits_queries, W, b, D):
    """The paper's equations, transcribed as the official code writes them."""
    u = -np.linalg.pinv(W) @ b
    centred = train - u
    covariance = centred.T @ centred / len(train)
    eig_vals, eigen_vectors = np.linalg.eig(covariance)
    NS = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[D:]]).T).real
    vlogit_train = np.linalg.norm((train - u) @ NS, axis=-1)
    alpha = logits_train.max(axis=-1).mean() / vlogit_train.mean()
    vlogit = np.linalg.norm((queries - u) @ NS, axis=-1) * alpha
    energy = logsumexp(logits_queries, axis=-1)
    # The OOD probability: softmax share of the virtual logit among [logits, vlogit].
    p_virtual = np.exp(vlogit) / (np.exp(vlogit) + np.exp(logits_queries).sum(axis=-1))
    return -vlogit + energy, p_virtual, alpha


@pytest.mark.parametrize("D", [4, 8, 12])
def test_vim_matches_the_paper(problem, head, D):
    X, y, queries = problem
    W, b = head.coef_, head.intercept_
    expected, p_virtual, alpha = vim_reference(
        X, head.decision_function(X), queries, head.decision_function(queries), W, b, D
    )
    vim = ViM(dim=D).fit(X, y)
    assert vim.principal_dim_ == D and vim.residual_basis_.shape == (16, 16 - D)
    np.testing.assert_allclose(vim.alpha_, alpha, rtol=1e-6)
    got = vim.score_samples(queries)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    # The score is the log-odds of "not the virtual class": sigmoid(-score) is the paper's OOD probability.
    np.testing.assert_allclose(1 / (1 + np.exp(got)), p_virtual, rtol=1e-6, atol=1e-12)


def test_vim_principal_dim_rule():
    assert [vim_principal_dim(d) for d in (4096, 2048, 1024, 768, 512, 384, 64, 1)] == [1000, 1000, 512, 512, 256, 192, 32, 1]
    X = np.random.default_rng(1).normal(size=(100, 10))
    y = np.arange(100) % 3
    assert ViM().fit(X, y).principal_dim_ == 5
    for bad in (0, 10, 11, 2.5, "half"):
        with pytest.raises(ValueError, match="dim must be"):
            ViM(dim=bad).fit(X, y)


def test_vim_sees_directions_the_classifier_ignores(problem):
    """A row pushed far along a residual direction keeps its logits but loses its ViM score."""
    X, y, queries = problem
    vim = ViM(dim=8).fit(X, y)
    residual_direction = vim.residual_basis_[:, 0]
    row = X[:1]
    pushed = row + 50 * residual_direction
    assert vim.virtual_logit(pushed)[0] > vim.virtual_logit(row)[0] + 10
    assert vim.score_samples(pushed)[0] < vim.score_samples(row)[0]


# --------------------------------------------------------------------------- registry


def test_registry_contract(problem):
    X, y, queries = problem
    assert sorted(BASELINES) == ["energy", "knn", "max_logit", "msp", "vim"]
    far = 40 * np.eye(16)[[3, 7]]
    for name, cls in BASELINES.items():
        model = cls().fit(X, y)
        assert model.fit(X, y) is model
        scores = model.score_samples(queries)
        assert scores.shape == (len(queries),) and np.isfinite(scores).all(), name
        if name in ("knn", "vim"):  # the scores that see distance; MSP can be most confident far away
            assert np.median(model.score_samples(X)) > model.score_samples(far).max(), name
        assert "Paper" in cls.__doc__ or "20" in cls.__doc__, name  # a citation with a year
        if name != "knn":
            assert model.predict_proba(queries).shape == (len(queries), 4)
        with pytest.raises(ValueError, match="16 features"):
            model.score_samples(queries[:, :3])
        with pytest.raises(ValueError, match="not fitted"):
            cls().score_samples(queries)
