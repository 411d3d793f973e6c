"""OpenWorld against scikit-learn, and learning / forgetting against a refit."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_wine
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from openworld import OpenWorld


def relative_error(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float64), y


@pytest.mark.parametrize("loader", [load_wine, load_digits])
@pytest.mark.parametrize("shrinkage", [0.1, 0.5])
def test_tied_posteriors_match_linear_discriminant_analysis(loader, shrinkage):
    X, y = loader(return_X_y=True)
    X = X.astype(np.float64)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(X, y)
    model = OpenWorld(shrinkage=shrinkage, priors="empirical", target_tpr=None).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), lda.predict_proba(X), atol=1e-7)
    assert (model.predict(X) == lda.predict(X)).all()


def test_decision_function_is_log_joint_density(digits):
    X, y = digits
    model = OpenWorld(priors="empirical", target_tpr=None).fit(X, y)
    log_joint = model.decision_function(X[:50])
    np.testing.assert_allclose(np.exp(log_joint - log_joint.max(1, keepdims=True)).sum(1)[:, None] * model.predict_proba(X[:50]),
                               np.exp(log_joint - log_joint.max(1, keepdims=True)), rtol=1e-9)
    assert (model.classes_[log_joint.argmax(1)] == model.predict(X[:50])).all()


def fitted_state(model, X):
    return {
        "means": model.statistics_.means.numpy(),
        "scatters": model.statistics_.scatters.numpy(),
        "proba": model.predict_proba(X),
        "scores": model.score_samples(X),
    }


def assert_same_model(a, b, X, rtol=1e-8):
    assert a.classes_.tolist() == b.classes_.tolist()
    sa, sb = fitted_state(a, X), fitted_state(b, X)
    for name in sa:
        assert relative_error(sa[name], sb[name]) <= rtol, name


@pytest.mark.parametrize("covariance", ["tied", "full", "diag"])
@pytest.mark.parametrize("shrinkage", ["auto", "oas", 0.2])
def test_chunked_shuffled_partial_fit_equals_fit(digits, covariance, shrinkage):
    X, y = digits
    order = np.random.default_rng(0).permutation(len(X))
    whole = OpenWorld(covariance=covariance, shrinkage=shrinkage, target_tpr=None).fit(X, y)
    stream = OpenWorld(covariance=covariance, shrinkage=shrinkage, target_tpr=None)
    for chunk in np.array_split(order, 7):
        stream.partial_fit(X[chunk], y[chunk])
    assert_same_model(stream, whole, X)


def test_adding_a_class_later_equals_having_it_from_the_start(digits):
    X, y = digits
    first = y != 7
    model = OpenWorld(covariance="full", target_tpr=None).fit(X[first], y[first])
    assert 7 not in model.classes_
    model.partial_fit(X[~first], y[~first])
    assert_same_model(model, OpenWorld(covariance="full", target_tpr=None).fit(X, y), X)


@pytest.mark.parametrize("covariance", ["tied", "full", "diag"])
def test_forget_equals_fit_without_the_class(digits, covariance):
    X, y = digits
    model = OpenWorld(covariance=covariance, target_tpr=None).fit(X, y).forget([3, 8])
    keep = ~np.isin(y, [3, 8])
    assert_same_model(model, OpenWorld(covariance=covariance, target_tpr=None).fit(X[keep], y[keep]), X)


def test_unlearn_rows_equals_fit_without_them(digits):
    X, y = digits
    drop = np.random.default_rng(1).random(len(X)) < 0.3
    model = OpenWorld(target_tpr=None).fit(X, y).unlearn(X[drop], y[drop])
    assert_same_model(model, OpenWorld(target_tpr=None).fit(X[~drop], y[~drop]), X)


def test_unlearning_every_row_of_a_class_drops_it(digits):
    X, y = digits
    rows = y == 5
    model = OpenWorld(target_tpr=None).fit(X, y).unlearn(X[rows], y[rows])
    assert 5 not in model.classes_
    assert_same_model(model, OpenWorld(target_tpr=None).fit(X[~rows], y[~rows]), X)


def test_integer_sample_weights_equal_repeated_rows(digits):
    X, y = digits
    w = np.random.default_rng(2).integers(1, 4, size=len(X))
    weighted = OpenWorld(target_tpr=None).fit(X, y, sample_weight=w)
    repeated = OpenWorld(target_tpr=None).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    assert_same_model(weighted, repeated, X)


def three_blobs(rng, n, d=8):
    centers = np.stack([np.zeros(d), np.full(d, 3.0), np.r_[np.full(d // 2, 3.0), np.zeros(d - d // 2)]])
    y = rng.integers(0, 3, size=n)
    scale = np.linspace(0.5, 2.0, d)
    return centers[y] + rng.normal(size=(n, d)) * scale, y


@pytest.mark.parametrize("covariance", ["tied", "full"])
def test_working_point_keeps_the_promised_share_of_unseen_rows(covariance):
    rng = np.random.default_rng(0)
    X, y = three_blobs(rng, 3000)
    fresh, _ = three_blobs(np.random.default_rng(1), 40000)
    model = OpenWorld(covariance=covariance, target_tpr=0.95, random_state=0).fit(X, y)
    kept = (model.predict(fresh) != "unknown").mean()
    # The conformal threshold's realised rate over a 3000-row calibration has sd ≈ 0.4 point.
    assert abs(kept - 0.95) < 0.015
    # An in-sample quantile of the fitted rows keeps fewer unseen rows than promised:
    in_sample = np.quantile(model.score_samples(X), 0.05)
    kept_in_sample = (model.score_samples(fresh) >= in_sample).mean()
    assert kept_in_sample < kept


def test_set_working_point_on_held_out_rows():
    rng = np.random.default_rng(3)
    X, y = three_blobs(rng, 2000)
    val, _ = three_blobs(rng, 5000)
    fresh, _ = three_blobs(rng, 40000)
    model = OpenWorld(target_tpr=None).fit(X, y).set_working_point(val, target_tpr=0.9)
    kept = (model.predict(fresh) != "unknown").mean()
    assert abs(kept - 0.9) < 0.015
    assert model.target_tpr == 0.9


def test_working_point_survives_partial_fit_and_forget():
    rng = np.random.default_rng(4)
    X, y = three_blobs(rng, 6000)
    fresh, fresh_y = three_blobs(np.random.default_rng(5), 30000)
    model = OpenWorld(random_state=0).fit(X[y != 2], y[y != 2])
    model.partial_fit(X[y == 2], y[y == 2])
    assert abs((model.predict(fresh) != "unknown").mean() - 0.95) < 0.02
    model.forget([1])
    kept = (model.predict(fresh[fresh_y != 1]) != "unknown").mean()
    assert abs(kept - 0.95) < 0.02


def test_far_away_rows_are_unknown_and_known_rows_are_classified():
    rng = np.random.default_rng(6)
    X, y = three_blobs(rng, 3000)
    labels = np.array(["a", "b", "c"])[y]
    model = OpenWorld(random_state=0).fit(X, labels)
    far = rng.normal(size=(200, 8)) + 40
    assert (model.predict(far) == "unknown").all()
    test, test_y = three_blobs(rng, 2000)
    predicted = model.predict(test)
    accepted = predicted != "unknown"
    assert (predicted[accepted] == np.array(["a", "b", "c"])[test_y][accepted]).mean() > 0.95


def test_one_class_model_scores_by_mahalanobis():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2000, 5))
    model = OpenWorld(random_state=0).fit(X)
    assert model.score_ == "mahalanobis" and model.classes_.tolist() == ["normal"]
    fresh = rng.normal(size=(20000, 5))
    expected = -((fresh - X.mean(0)) @ np.linalg.inv(np.cov(X.T, bias=True)) * (fresh - X.mean(0))).sum(1)
    np.testing.assert_allclose(
        OpenWorld(shrinkage=None).fit(X).score_samples(fresh), expected, rtol=1e-8
    )
    assert abs((model.predict(fresh) == "normal").mean() - 0.95) < 0.015


def test_relative_mahalanobis_is_class_minus_background_distance(digits):
    X, y = digits
    model = OpenWorld(shrinkage=0.3, target_tpr=None).fit(X, y)
    assert model.score_ == "relative_mahalanobis"
    means = np.stack([X[y == k].mean(0) for k in range(10)])
    R = X - means[y]
    pooled = R.T @ R / len(X)
    pooled = 0.7 * pooled + 0.3 * np.trace(pooled) / X.shape[1] * np.eye(X.shape[1])
    # Background: the moment-matched Gaussian of the class mixture (shrunk within + between).
    counts = np.bincount(y)
    between = ((means - X.mean(0)).T * counts) @ (means - X.mean(0)) / len(X)
    Xc = X - X.mean(0)
    d0 = (Xc @ np.linalg.inv(pooled + between) * Xc).sum(1)
    P = np.linalg.inv(pooled)
    dk = np.stack([((X - m) @ P * (X - m)).sum(1) for m in means], 1)
    np.testing.assert_allclose(model.score_samples(X), d0 - dk.min(1), rtol=1e-7, atol=1e-7)


def test_without_shrinkage_the_background_is_the_covariance_of_all_rows(digits):
    X, y = digits
    X = X[:, X.std(0) > 0]
    model = OpenWorld(shrinkage=None, target_tpr=None).fit(X, y)
    Xc = X - X.mean(0)
    d0 = (Xc @ np.linalg.inv(np.cov(X.T, bias=True)) * Xc).sum(1)
    means = np.stack([X[y == k].mean(0) for k in np.unique(y)])
    within = np.linalg.inv(sum((X[y == k] - m).T @ (X[y == k] - m) for k, m in zip(np.unique(y), means)) / len(X))
    distances = np.stack([((X - m) @ within * (X - m)).sum(1) for m in means], 1)
    expected = d0 - distances.min(1)  # relative Mahalanobis: D₀ − min_k D_k
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_likelihood_score_is_the_mixture_log_density(digits):
    X, y = digits
    model = OpenWorld(score="likelihood", priors="empirical", target_tpr=None).fit(X, y)
    joint = model.decision_function(X)
    top = joint.max(1)
    np.testing.assert_allclose(model.score_samples(X), top + np.log(np.exp(joint - top[:, None]).sum(1)), rtol=1e-10)


def test_string_labels_and_unknown_label_type(digits):
    X, y = digits
    names = np.array([f"digit-{k}" for k in y])
    model = OpenWorld(random_state=0, unknown_label="??").fit(X, names)
    far = np.full((3, X.shape[1]), 1e3)
    assert model.predict(far).tolist() == ["??"] * 3
    int_model = OpenWorld(random_state=0, unknown_label=-1).fit(X, y)
    out = int_model.predict(np.vstack([far, X[:2]]))
    assert out.dtype.kind == "i" and out[:3].tolist() == [-1] * 3


def test_low_variance_mahalanobis_keeps_the_least_variance_components(digits):
    X, y = digits
    model = OpenWorld(score="low_variance_mahalanobis", shrinkage=0.2, dropped_variance=0.6, target_tpr=None).fit(X, y)
    means = np.stack([X[y == k].mean(0) for k in range(10)])
    R = X - means[y]
    pooled = R.T @ R / len(X)
    pooled = 0.8 * pooled + 0.2 * np.trace(pooled) / X.shape[1] * np.eye(X.shape[1])
    values, vectors = np.linalg.eigh(pooled)
    leading = np.cumsum(values[::-1]) / values.sum()
    kept = len(values) - int((leading <= 0.6).sum())
    basis = vectors[:, :kept] / np.sqrt(values[:kept])
    Z, M = X @ basis, means @ basis
    expected = -(((Z[:, None, :] - M[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-7)


def test_low_variance_mahalanobis_dropping_nothing_is_mahalanobis(digits):
    X, y = digits
    full = OpenWorld(score="mahalanobis", target_tpr=None).fit(X, y)
    low = OpenWorld(score="low_variance_mahalanobis", dropped_variance=0.0, target_tpr=None).fit(X, y)
    np.testing.assert_allclose(low.score_samples(X), full.score_samples(X), rtol=1e-7)


@pytest.mark.parametrize("covariance", ["tied", "full"])
def test_concurrent_scoring_equals_sequential(covariance):
    """Many threads scoring one fitted model at once (as a service does), heads built on first use by
    whichever thread comes first, give what one thread gives."""
    from concurrent.futures import ThreadPoolExecutor

    X, y = three_blobs(np.random.default_rng(11), 2000, d=10)
    model = OpenWorld(covariance=covariance, random_state=0).fit(X, y)
    batches = [three_blobs(np.random.default_rng(20 + i), 300, d=10)[0] for i in range(16)]
    inputs = [b if i % 2 else torch.from_numpy(b.astype(np.float32)) for i, b in enumerate(batches)]

    def answer(Q):
        proba, scores = model.predict_proba_and_score(Q)
        as_numpy = lambda A: A.numpy() if isinstance(A, torch.Tensor) else A  # noqa: E731
        return as_numpy(proba), as_numpy(scores), model.predict(Q)

    with ThreadPoolExecutor(8) as pool:  # first: the float32 heads are built while threads race
        together = list(pool.map(answer, inputs))
    alone = [answer(Q) for Q in inputs]
    for (p1, s1, l1), (p2, s2, l2) in zip(together, alone):
        np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-9)  # kernels may split work differently per call
        np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(l1, l2)


def test_covariance_ensemble_sums_relative_mahalanobis_under_three_structures(digits):
    """Brute force: tied, per-class (shrunk toward the pooled) and diagonal covariances, each against its background."""
    X, y = digits
    X = X[:, X.std(0) > 0]
    lam = 0.3
    model = OpenWorld(score="covariance_ensemble", shrinkage=lam, target_tpr=None).fit(X, y)
    classes = np.unique(y)
    means = np.stack([X[y == k].mean(0) for k in classes])
    scatters = np.stack([(X[y == k] - m).T @ (X[y == k] - m) / (y == k).sum() for k, m in zip(classes, means)])
    pooled = sum((X[y == k] - m).T @ (X[y == k] - m) for k, m in zip(classes, means)) / len(X)
    pooled = (1 - lam) * pooled + lam * np.trace(pooled) / X.shape[1] * np.eye(X.shape[1])
    counts = np.bincount(y)
    between = ((means - X.mean(0)).T * counts) @ (means - X.mean(0)) / len(X)
    background = pooled + between
    Xc = X - X.mean(0)

    def distance(rows, mean, cov):
        return ((rows - mean) @ np.linalg.inv(cov) * (rows - mean)).sum(1)

    tied = distance(X, X.mean(0), background) - np.stack([distance(X, m, pooled) for m in means], 1).min(1)
    per_class = [(1 - lam) * S + lam * pooled for S in scatters]
    full = distance(X, X.mean(0), background) - np.stack([distance(X, m, S) for m, S in zip(means, per_class)], 1).min(1)
    diag_bg = (Xc**2 / np.diag(background)).sum(1)
    diag = diag_bg - np.stack([((X - m) ** 2 / np.diag(S)).sum(1) for m, S in zip(means, per_class)], 1).min(1)
    expected = tied + full + diag
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())
    # The posteriors stay those of the model's own covariance structure.
    plain = OpenWorld(shrinkage=lam, target_tpr=None).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X[:100]), plain.predict_proba(X[:100]), atol=1e-10)


@pytest.mark.parametrize("covariance", ["tied", "full"])
def test_covariance_ensemble_learns_and_forgets_like_a_refit(digits, covariance):
    X, y = digits
    order = np.random.default_rng(1).permutation(len(X))
    whole = OpenWorld(score="covariance_ensemble", covariance=covariance, random_state=0).fit(X[y != 9], y[y != 9])
    stream = OpenWorld(score="covariance_ensemble", covariance=covariance, random_state=0)
    for chunk in np.array_split(order, 3):
        stream.partial_fit(X[chunk], y[chunk])
    stream.forget([9])
    assert_same_model(stream, whole, X, rtol=1e-7)
    # Posteriors and scores in one pass reuse the class head's distances for its own ensemble member.
    proba, scores = whole.predict_proba_and_score(X[:300])
    np.testing.assert_allclose(scores, whole.score_samples(X[:300]), rtol=1e-12)
    np.testing.assert_allclose(proba, whole.predict_proba(X[:300]), rtol=1e-12)
    # The cross-fitted working point keeps about 95% of unseen rows of the known classes.
    held_out = OpenWorld(score="covariance_ensemble", random_state=0).fit(X[order[:1200]], y[order[:1200]])
    rest = order[1200:]
    kept = held_out.score_samples(X[rest]) >= held_out.threshold_
    assert 0.88 <= kept.mean() <= 0.99


@pytest.mark.parametrize("score", ["relative_mahalanobis", "covariance_ensemble"])
def test_scores_against_the_background_refuse_one_class_instead_of_scoring_zero(digits, score):
    X, y = digits
    with pytest.raises(ValueError, match="one-class model"):
        OpenWorld(score=score).fit(X[y == 0])
    model = OpenWorld(score=score, target_tpr=None).fit(X[y < 2], y[y < 2])
    before = model.score_samples(X[:20])
    with pytest.raises(ValueError, match="every score would be 0"):
        model.forget([1])
    np.testing.assert_array_equal(model.score_samples(X[:20]), before)  # the refused forget changed nothing
    with pytest.raises(ValueError, match="every score would be 0"):
        model.unlearn(X[y == 1], y[y == 1])  # every row of class 1: one class would be left
    np.testing.assert_array_equal(model.score_samples(X[:20]), before)  # nor did the refused unlearn
    np.testing.assert_array_equal(model.classes_, [0, 1])
    assert OpenWorld(target_tpr=None).fit(X[y == 0]).score_ == "mahalanobis"  # "auto" adapts instead


def test_unknown_label_is_written_as_given_and_never_coerced_into_a_class(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (50, 4)), rng.normal(4, 1, (50, 4))])
    y = np.repeat([0, 1], 50)
    rows = np.array([[4.0, 4, 4, 4], [40, 40, 40, 40]])  # class 1, then far from both
    flagged = OpenWorld(unknown_label=True, random_state=0).fit(X, y).predict(rows)
    assert flagged[0] == 1 and flagged[1] is True  # not 1, which is a class
    huge = OpenWorld(unknown_label=2**63, random_state=0).fit(X, y).predict(rows)
    assert huge[1] == 2**63  # beyond int64: kept exactly, not an OverflowError
    model = OpenWorld(unknown_label=np.int64(-1), random_state=0).fit(X, y)
    model.save(tmp_path / "m.safetensors")
    for m in (model, OpenWorld.load(tmp_path / "m.safetensors")):
        out = m.predict(rows)
        assert out.dtype == np.int64 and out.tolist() == [1, -1]  # the same before and after a round trip
