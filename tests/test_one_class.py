"""One-class anomaly detection: a model of normal rows only (Rippel et al. 2020)."""

import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.covariance import MinCovDet
from typer.testing import CliRunner

from openworld import OpenWorld
from openworld.cli import app
from openworld.io.tables import write_table


def contaminated(rng, n_normal=1900, n_anomalies=100, d=6):
    normal = rng.normal(size=(n_normal, d)) @ np.diag(np.linspace(0.5, 2.0, d))
    anomalies = rng.normal(size=(n_anomalies, d)) + 5.0
    return np.vstack([normal, anomalies]), np.r_[np.zeros(n_normal, bool), np.ones(n_anomalies, bool)]


def test_trimming_recovers_the_clean_fit_like_minimum_covariance_determinant():
    rng = np.random.default_rng(0)
    X, is_anomaly = contaminated(rng)
    robust = OpenWorld(contamination=0.06, shrinkage=None, target_tpr=None).fit(X)
    naive = OpenWorld(shrinkage=None, target_tpr=None).fit(X)
    clean_mean = X[~is_anomaly].mean(0)
    mcd = MinCovDet(random_state=0).fit(X)
    robust_mean = robust.statistics_.means.numpy()[0]
    assert np.abs(robust_mean - clean_mean).max() < 0.05
    assert np.abs(naive.statistics_.means.numpy()[0] - clean_mean).max() > 0.2
    assert np.abs(robust_mean - mcd.location_).max() < 0.1
    assert float(robust.statistics_.weights[0]) == len(X) - int(0.06 * len(X))


def test_trimming_improves_detection_when_training_data_hides_anomalies():
    rng = np.random.default_rng(1)
    X, _ = contaminated(rng)
    test_normal = rng.normal(size=(2000, 6)) @ np.diag(np.linspace(0.5, 2.0, 6))
    test_anomaly = rng.normal(size=(200, 6)) + 5.0
    from openworld.core.metrics import auroc

    naive = OpenWorld(target_tpr=None).fit(X)
    robust = OpenWorld(contamination=0.05, target_tpr=None).fit(X)
    assert auroc(robust.score_samples(test_normal), robust.score_samples(test_anomaly)) > auroc(
        naive.score_samples(test_normal), naive.score_samples(test_anomaly)
    )


@pytest.mark.parametrize("working_point", ["held_out", "gaussian"])
def test_false_alarm_rate_on_unseen_normal_rows_matches_the_target(working_point):
    rng = np.random.default_rng(2)
    d, n = 10, 150  # few rows per dimension: where the chi-square quantile is wrong
    X = rng.normal(size=(n, d))
    fresh = rng.normal(size=(200_000, d))
    model = OpenWorld(shrinkage=None, working_point=working_point, target_tpr=0.9, random_state=0).fit(X)
    kept = (model.predict(fresh) == "normal").mean()
    # One fit's threshold varies with the sample; the F (Hotelling) quantile is exact on average,
    # the held-out one within its few-row spread.
    assert abs(kept - 0.9) < (0.03 if working_point == "gaussian" else 0.06)


def test_the_gaussian_working_point_is_exact_on_average_where_chi_square_is_not():
    d, n, target = 10, 60, 0.95
    kept_f, kept_chi2 = [], []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        X = rng.normal(size=(n, d))
        fresh = rng.normal(size=(5000, d))
        model = OpenWorld(shrinkage=None, working_point="gaussian", target_tpr=target).fit(X)
        scores = model.score_samples(fresh)
        kept_f.append((scores >= model.threshold_).mean())
        kept_chi2.append((scores >= -chi2.ppf(target, d)).mean())
    assert abs(np.mean(kept_f) - target) < 0.01
    assert np.mean(kept_chi2) < target - 0.05  # chi-square ignores the estimation error of μ and Σ


@pytest.mark.parametrize(
    "kwargs, fit_y, message",
    [
        ({"working_point": "gaussian"}, None, "exact only"),
        ({"working_point": "gaussian", "shrinkage": None}, np.repeat([0, 1], 50), "one-class"),
        ({"working_point": "gaussian", "shrinkage": None, "score": "likelihood"}, None, "exact only"),
        ({"contamination": 0.7}, None, "contamination"),
        ({"working_point": "chi2"}, None, "working_point"),
    ],
)
def test_what_the_gaussian_working_point_cannot_do_is_a_clear_error(kwargs, fit_y, message):
    X = np.random.default_rng(3).normal(size=(100, 4))
    with pytest.raises(ValueError, match=message):
        OpenWorld(**kwargs).fit(X, fit_y)


def test_gaussian_working_point_needs_more_rows_than_features():
    X = np.random.default_rng(4).normal(size=(11, 10))  # a full-rank covariance, but F(d, n − d) needs n > d + 1
    with pytest.raises(ValueError, match="more rows than features"):
        OpenWorld(shrinkage=None, working_point="gaussian").fit(X)


@pytest.mark.parametrize(
    "X",
    [
        np.ones((1, 5)),                                                    # one row of normal data
        np.c_[np.random.default_rng(5).normal(size=(50, 3)), np.full((50, 2), 7.0)],  # constant columns
        np.random.default_rng(6).normal(size=(20, 80)),                    # more columns than rows
    ],
)
def test_degenerate_normal_data_gives_finite_scores_through_shrinkage(X):
    model = OpenWorld(random_state=0).fit(X)
    probe = np.vstack([X[:1], X[:1] + 3.0])
    assert np.isfinite(model.score_samples(probe)).all()
    assert set(model.predict(probe).tolist()) <= {"normal", "unknown"}


def test_nan_in_a_column_is_a_clear_error():
    X = np.random.default_rng(7).normal(size=(30, 4))
    X[12, 2] = np.nan
    with pytest.raises(ValueError, match="NaN.*row 12"):
        OpenWorld().fit(X)


def test_cli_evaluates_a_one_class_model_on_an_anomaly_column(tmp_path):
    rng = np.random.default_rng(8)
    write_table(tmp_path / "normal.parquet", {"embedding": rng.normal(size=(800, 5))})
    test = np.vstack([rng.normal(size=(300, 5)), rng.normal(size=(30, 5)) + 6])
    write_table(tmp_path / "test.parquet", {"embedding": test, "y": np.r_[np.zeros(300, int), np.ones(30, int)]})
    runner = CliRunner()
    result = runner.invoke(app, ["fit", str(tmp_path / "normal.parquet"), "-o", str(tmp_path / "m.safetensors"),
                                 "--contamination", "0.01"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "m.safetensors"), str(tmp_path / "test.parquet"),
                                 "--anomaly-column", "y", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    from openworld.core.metrics import auroc

    model = OpenWorld.load(tmp_path / "m.safetensors")
    scores = model.score_samples(test)
    assert report["auroc"] == pytest.approx(auroc(scores[:300], scores[300:]))
    result = runner.invoke(app, ["eval", str(tmp_path / "m.safetensors"), str(tmp_path / "test.parquet"),
                                 "--anomaly-column", "embedding"])
    assert result.exit_code == 2


def test_one_class_mixture_scores_by_the_mixture_density_of_its_components():
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(11)
    side = rng.integers(0, 2, size=800)
    X = rng.normal(size=(800, 3)) + np.where(side[:, None] == 1, 4.0, -4.0) * [1.0, 0.0, 0.0]
    model = OpenWorld(components=2, covariance="full", shrinkage=None, target_tpr=None, random_state=0).fit(X)
    assert model.score_ == "likelihood"
    stats = model.statistics_
    W = stats.weights.numpy()
    reference = logsumexp(
        [
            np.log(W[m] / W.sum())
            + multivariate_normal(stats.means[m].numpy(), stats.scatters[m].numpy() / W[m]).logpdf(X[:100])
            for m in range(2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(model.score_samples(X[:100]), reference, rtol=1e-4)
    # The empty middle between the two modes is anomalous to the mixture, normal to one Gaussian.
    middle = rng.normal(size=(300, 3)) * 0.5
    held_out = rng.normal(size=(300, 3)) + np.where(rng.integers(0, 2, 300)[:, None] == 1, 4.0, -4.0) * [1, 0, 0]
    auto = OpenWorld(components="auto", covariance="full", random_state=0).fit(X)
    single = OpenWorld(random_state=0).fit(X)
    assert auto.statistics_.n_classes == 2
    assert np.mean(auto.predict(middle) == "unknown") > 0.95
    assert np.mean(single.predict(middle) == "unknown") < 0.1
    assert np.mean(auto.predict(held_out) == "unknown") < 0.15


@pytest.mark.parametrize("params", [
    {"components": "auto", "covariance": "full"},  # resolves to the mixture density, not a distance
    {"components": 2, "score": "mahalanobis"},
    {"covariance": "diag"},  # a diagonal distance of correlated features is not Hotelling-distributed
    {"contamination": 0.05},  # a trimmed covariance is too narrow for the whole distribution
])
def test_the_gaussian_working_point_is_refused_where_its_distribution_does_not_hold(params):
    X = np.random.default_rng(0).normal(size=(500, 3))
    with pytest.raises(ValueError, match="working_point='gaussian' is exact only"):
        OpenWorld(shrinkage=None, working_point="gaussian", **params).fit(X)


@pytest.mark.parametrize("params", [{}, {"score": "low_variance_mahalanobis"}, {"contamination": 0.1}])
def test_a_model_of_one_row_saves_and_loads(tmp_path, params):
    row = np.array([[1.0, 2.0, 3.0]])
    model = OpenWorld(random_state=0, **params).fit(row)
    model.save(tmp_path / "one.safetensors")
    loaded = OpenWorld.load(tmp_path / "one.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(row + 1), model.score_samples(row + 1))
    assert loaded.threshold_ == model.threshold_


def test_rows_of_zero_weight_take_no_part_in_trimming():
    rng = np.random.default_rng(0)
    clean, switched_off = rng.normal(size=(1900, 4)), rng.normal(8, 1, size=(100, 4))  # known anomalies, weight 0
    X, w = np.vstack([clean, switched_off]), np.r_[np.ones(1900), np.zeros(100)]
    with_rows = OpenWorld(contamination=0.05, random_state=0).fit(X, sample_weight=w)
    without = OpenWorld(contamination=0.05, random_state=0).fit(clean)
    np.testing.assert_allclose(with_rows.statistics_.means.numpy(), without.statistics_.means.numpy(), atol=1e-10)


def test_each_update_draws_its_own_priorities():
    # The kept-row sample after partial_fit must be a uniform sample of all rows: which rows of the second
    # batch it keeps must not mirror the first batch's (expected overlap of two independent samples: m²/n).
    rng = np.random.default_rng(0)
    n = 10_000
    first, second = np.c_[np.arange(n), rng.normal(size=(n, 2))], np.c_[np.arange(n) + 0.5, rng.normal(size=(n, 2))]
    model = OpenWorld(score="kernel_density", random_state=0).fit(first).partial_fit(second)
    tag = model.kernel_sample_.rows[:, 0].numpy()
    a, b = set(tag[tag % 1 == 0].astype(int)), set((tag[tag % 1 == 0.5] - 0.5).astype(int))
    expected = len(a) * len(b) / n  # hypergeometric mean; its standard deviation here is about 30
    assert abs(len(a & b) - expected) < 150, (len(a & b), expected)


def test_float32_rows_of_large_spread_fit_as_in_float64():
    from sklearn.covariance import LedoitWolf

    X = np.random.default_rng(0).normal(size=(5000, 8)) * 1e12  # Σ‖r‖² r overflowed float32 at this scale
    lw = LedoitWolf().fit(X)
    diff = X[:20] - X.mean(0)
    reference = -np.einsum("ij,jk,ik->i", diff, np.linalg.inv(lw.covariance_), diff)
    scores = OpenWorld(random_state=0).fit(X.astype(np.float32)).score_samples(X[:20].astype(np.float32))
    np.testing.assert_allclose(scores, reference, rtol=1e-3)
    with pytest.raises(ValueError, match="overflow"):  # beyond float32's range: a clear error
        OpenWorld(random_state=0).fit((np.random.default_rng(1).normal(size=(500, 4)) * 1e18).astype(np.float32))


def test_a_trimmed_fit_places_its_working_point_on_the_kept_rows_as_documented():
    # The README's statement, measured: trimming clean data narrows the held-out scores, so fewer fresh rows
    # are kept than the target; without trimming, or after set_working_point on clean rows, the target holds.
    rng = np.random.default_rng(0)
    X, fresh = rng.normal(size=(4000, 4)), rng.normal(size=(200_000, 4))
    kept = lambda model: float((model.predict(fresh) == "normal").mean())  # noqa: E731
    trimmed = OpenWorld(contamination=0.05, random_state=0).fit(X)
    assert 0.87 < kept(trimmed) < 0.93
    assert abs(kept(OpenWorld(random_state=0).fit(X)) - 0.95) < 0.01
    assert abs(kept(trimmed.set_working_point(rng.normal(size=(4000, 4)))) - 0.95) < 0.01


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_low_variance_components_of_two_repeated_points_score_as_the_distance_does(dtype):
    # Ledoit-Wolf shrinks two distinct points by 0 (scikit-learn agrees): the covariance is singular, and
    # its null space must not be whitened by 1/√tiny (training rows scored −1e276).
    from sklearn.covariance import ledoit_wolf_shrinkage

    X = np.repeat(np.random.default_rng(0).normal(size=(2, 5)), 30, axis=0)
    assert ledoit_wolf_shrinkage(X) < 1e-12
    low = OpenWorld(score="low_variance_mahalanobis", random_state=0).fit(X.astype(dtype)).score_samples(X[:3].astype(dtype))
    plain = OpenWorld(score="mahalanobis", random_state=0).fit(X).score_samples(X[:3])
    np.testing.assert_allclose(low, plain, rtol=1e-3)
