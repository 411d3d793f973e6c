"""Discovery of new classes: synthetic mixtures with a known answer, degenerate inputs, adoption."""

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

import openworld as ow


def _blobs(n_classes, per_class, d, seed, spread=1.0, separation=6.0):
    """Gaussian classes with a shared covariance (correlated features, unequal scales)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=separation / np.sqrt(2), size=(n_classes, d))
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    X = np.concatenate([means[k] + spread * rng.normal(size=(per_class, d)) @ mixing for k in range(n_classes)])
    y = np.repeat(np.array([f"c{k}" for k in range(n_classes)]), per_class)
    return X, y


def _split(X, y, known, labelled_share, seed):
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(y), bool)
    for c in known:
        rows = np.flatnonzero(y == c)
        labelled[rng.choice(rows, max(2, int(labelled_share * rows.size)), replace=False)] = True
    return labelled


def _accuracy(truth, predicted):
    """Clustering accuracy under the best one-to-one matching (Hungarian), by brute force on the counts."""
    t = np.unique(truth, return_inverse=True)[1]
    p = np.unique(predicted.astype(str), return_inverse=True)[1]
    counts = np.zeros((p.max() + 1, t.max() + 1))
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(-counts)
    return counts[rows, cols].sum() / t.size


# The protocol of the benchmark in miniature: 20 known classes, 10% of their rows labelled, 6 new classes.
N_CLASSES, N_KNOWN, PER_CLASS, DIMENSIONS = 26, 20, 100, 64


@pytest.fixture(scope="module")
def mixed():
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=0)
    known = np.array([f"c{k}" for k in range(N_KNOWN)])
    labelled = _split(X, y, known, 0.1, seed=0)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    return model, X[~labelled], y[~labelled], known


def test_finds_the_new_classes_and_their_number(mixed):
    model, X, y, known = mixed
    result = model.discover(X)
    assert result.n_new == N_CLASSES - N_KNOWN
    assert _accuracy(y, result.labels) > 0.95
    assert adjusted_rand_score(y, result.labels) > 0.9
    # rows of known classes keep their own label, rows of new classes get a new name
    new_rows = ~np.isin(y, known)
    assert np.mean(result.labels[~new_rows] == y[~new_rows]) > 0.95
    assert np.mean(result.is_new == new_rows) > 0.95


def test_clusters_describe_themselves(mixed):
    model, X, y, _ = mixed
    result = model.discover(X)
    sizes = [c.size for c in result.clusters]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == int(result.is_new.sum())
    for cluster in result.clusters:
        members = np.flatnonzero(result.labels == cluster.name)
        np.testing.assert_allclose(cluster.center, X[members].mean(0), rtol=1e-10, atol=1e-10)
        assert len(cluster.representatives) == 5
        assert set(cluster.representatives) <= set(members)
        # the representatives are of one true class: the one the cluster is mostly made of
        majority = np.unique(y[members], return_counts=True)
        assert set(y[cluster.representatives]) == {majority[0][majority[1].argmax()]}


def test_representatives_are_the_rows_nearest_the_center_by_the_models_distance():
    """Brute force: the members with the smallest (x − c)ᵀ Σ⁻¹ (x − c), Σ the shrunk pooled within-class covariance."""
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=3)
    known = np.array([f"c{k}" for k in range(N_KNOWN)])
    labelled = _split(X, y, known, 0.1, seed=3)
    model = ow.OpenWorld(shrinkage=0.3, random_state=0).fit(X[labelled], y[labelled])
    result = model.discover(X[~labelled], n_new=N_CLASSES - N_KNOWN)
    Xl, yl = X[labelled], y[labelled]
    R = Xl - np.stack([Xl[yl == c].mean(0) for c in yl])
    pooled = R.T @ R / len(Xl)
    precision = np.linalg.inv(0.7 * pooled + 0.3 * np.trace(pooled) / DIMENSIONS * np.eye(DIMENSIONS))
    rows = X[~labelled]
    for cluster in result.clusters:
        members = np.flatnonzero(result.labels == cluster.name)
        distances = [(rows[i] - cluster.center) @ precision @ (rows[i] - cluster.center) for i in members]
        assert cluster.representatives.tolist() == members[np.argsort(distances, kind="stable")[:5]].tolist()


def test_fixed_number_of_new_classes(mixed):
    model, X, y, _ = mixed
    result = model.discover(X, n_new=N_CLASSES - N_KNOWN)
    assert result.n_new == N_CLASSES - N_KNOWN
    assert _accuracy(y, result.labels) > 0.95
    assert model.discover(X, n_new=0).n_new == 0
    # more new clusters than there are: the count asked for is returned (extra ones split classes)
    assert model.discover(X, n_new=N_CLASSES - N_KNOWN + 2).n_new == N_CLASSES - N_KNOWN + 2


def test_all_known_rows_find_nothing_new():
    X, y = _blobs(n_classes=20, per_class=PER_CLASS, d=DIMENSIONS, seed=1)
    labelled = _split(X, y, np.unique(y), 0.1, seed=1)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    result = model.discover(X[~labelled])
    assert result.n_new == 0
    assert not result.is_new.any()
    assert np.mean(result.labels == y[~labelled]) > 0.95


def test_duplicate_rows_are_one_cluster_each():
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=2)
    known = np.array([f"c{k}" for k in range(N_KNOWN)])
    labelled = _split(X, y, known, 0.1, seed=2)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    X_u, y_u = X[~labelled], y[~labelled]
    doubled = model.discover(np.concatenate([X_u, X_u]))
    half = doubled.labels[: len(y_u)]
    np.testing.assert_array_equal(half, doubled.labels[len(y_u):])  # a row and its copy end up together
    assert _accuracy(y_u, half) > 0.95
    assert doubled.n_new == N_CLASSES - N_KNOWN
    # many copies of one new row are one distinct row: no evidence of a class
    copies = np.repeat(X_u[np.isin(y_u, [f"c{N_KNOWN}"])][:1], 50, axis=0)
    result = model.discover(np.concatenate([X_u[np.isin(y_u, known)], copies]))
    assert result.n_new == 0
    # representatives are distinct rows
    for cluster in doubled.clusters:
        assert len({tuple(row) for row in np.concatenate([X_u, X_u])[cluster.representatives]}) == 5


def test_fewer_rows_than_dimensions():
    X, y = _blobs(n_classes=4, per_class=30, d=200, seed=3, separation=12.0)
    known = np.array(["c0", "c1", "c2"])
    labelled = np.isin(y, known) & (np.arange(len(y)) % 30 < 10)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    X_u, y_u = X[~labelled], y[~labelled]
    assert X_u.shape[0] < X_u.shape[1]
    result = model.discover(X_u)
    assert result.n_new == 1
    assert _accuracy(y_u, result.labels) > 0.95


def test_adopt_equals_a_fit_with_those_rows_labelled(mixed):
    model, X, _, _ = mixed
    adopted = ow.OpenWorld(random_state=0).fit(*_fitted_rows(mixed))
    result = adopted.discover(X)
    names = [f"intent{i}" for i in range(result.n_new)]
    adopted.adopt(result, names=names)
    assert set(names) <= set(adopted.classes_.tolist())
    # The reference is one fit on every row, the adopted ones labelled from the start (not partial_fit, the
    # path adopt itself takes); classes are matched by name, since a fit sorts them and adopt appends.
    X_fitted, y_fitted = _fitted_rows(mixed)
    new_labels = np.array([names[int(n.split("-")[1])] for n in result.labels[result.is_new]])
    reference = ow.OpenWorld(random_state=0).fit(np.vstack([X_fitted, X[result.is_new]]),
                                                 np.concatenate([y_fitted, new_labels]))
    order = [reference.classes_.tolist().index(c) for c in adopted.classes_.tolist()]
    for field in ("weights", "means", "scatters"):
        np.testing.assert_allclose(getattr(adopted.statistics_, field).numpy(),
                                   getattr(reference.statistics_, field).numpy()[order], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(adopted.predict_proba(X), reference.predict_proba(X)[:, order], rtol=1e-7, atol=1e-10)
    # the model now names the new classes itself, and known rows were not absorbed
    assert np.mean(adopted.predict(X[result.is_new]) == np.array(
        [names[int(n.split("-")[1])] for n in result.labels[result.is_new]])) > 0.9
    assert adopted.statistics_.weights[:N_KNOWN].sum().item() == pytest.approx(model.statistics_.weights.sum().item())


def _fitted_rows(mixed):
    """The labelled rows the fixture's model was fitted on (rebuilt the same way)."""
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=0)
    labelled = _split(X, y, mixed[3], 0.1, seed=0)
    return X[labelled], y[labelled]


def test_one_class_model_discovers_the_other_classes():
    X, y = _blobs(n_classes=4, per_class=150, d=DIMENSIONS, seed=6)
    normal = y == "c0"
    model = ow.OpenWorld(random_state=0).fit(X[normal][:50])
    result = model.discover(X[50:])
    assert result.n_new == 3
    assert _accuracy(y[50:], result.labels) > 0.95


def test_a_mixture_model_does_not_hand_new_classes_to_its_components():
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=7)
    known = np.array([f"c{k}" for k in range(N_KNOWN)])
    labelled = _split(X, y, known, 0.1, seed=7)
    model = ow.OpenWorld(components=2, random_state=0).fit(X[labelled], y[labelled])
    result = model.discover(X[~labelled])
    new_rows = ~np.isin(y[~labelled], known)
    assert np.mean(result.is_new == new_rows) > 0.95
    assert abs(result.n_new - (N_CLASSES - N_KNOWN)) <= 1


def test_without_a_working_point_it_warns():
    X, y = _blobs(n_classes=N_KNOWN, per_class=PER_CLASS, d=DIMENSIONS, seed=8)
    labelled = _split(X, y, np.unique(y), 0.1, seed=8)
    model = ow.OpenWorld(target_tpr=None).fit(X[labelled], y[labelled])
    with pytest.warns(UserWarning, match="working point"):
        model.discover(X[~labelled])


def test_names_never_collide_with_classes(mixed):
    _, X, y, known = mixed
    twice = ow.OpenWorld(random_state=0).fit(*_fitted_rows(mixed))
    first = twice.discover(X[np.isin(y, known) | (y == f"c{N_KNOWN}")], adopt=True)
    assert first.names == ["new-0"]
    second = twice.discover(X)
    assert "new-0" not in second.names and second.n_new == N_CLASSES - N_KNOWN - 1
    assert set(second.labels[~second.is_new]) <= set(twice.classes_.tolist())
    twice.adopt(second)
    assert len(twice.classes_) == N_CLASSES


def test_discover_with_adopt_and_integer_classes():
    X, y = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=4)
    y_int = np.array([int(label[1:]) for label in y])
    labelled = _split(X, y, np.array([f"c{k}" for k in range(N_KNOWN)]), 0.1, seed=4)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y_int[labelled])
    result = model.discover(X[~labelled])
    assert result.labels.dtype.kind == "i"  # labels keep the classes' type; new ones continue the numbering
    assert result.names == list(range(N_KNOWN, N_CLASSES))
    with pytest.raises(ValueError, match="already classes"):
        model.adopt(result, names=[0] + list(range(100, 100 + result.n_new - 1)))
    model.adopt(result)
    np.testing.assert_array_equal(model.classes_, np.arange(N_CLASSES))


def test_bad_input_is_named():
    X, y = _blobs(n_classes=3, per_class=20, d=4, seed=5)
    model = ow.OpenWorld().fit(X, y)
    with pytest.raises(ValueError, match="n_new"):
        model.discover(X, n_new=-1)
    with pytest.raises(ValueError, match="features"):
        model.discover(X[:, :3])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.discover(bad)
    with pytest.raises(ValueError, match="names"):
        model.adopt(model.discover(X, n_new=2), names=["a", "b", "c"])
    with pytest.raises(ValueError, match="already classes"):
        model.adopt(model.discover(X, n_new=2), names=["c0", "z"])


def test_command_line_discover_writes_clusters_and_the_adopted_model(tmp_path, mixed):
    from typer.testing import CliRunner

    import pyarrow.parquet as pq

    from openworld.cli import app

    model, X, y, _ = mixed
    model.save(tmp_path / "m.safetensors")
    np.save(tmp_path / "unlabelled.npy", X)
    result = CliRunner().invoke(app, ["discover", str(tmp_path / "m.safetensors"), str(tmp_path / "unlabelled.npy"),
                                      "-o", str(tmp_path / "clusters.parquet"), "--adopt", str(tmp_path / "a.safetensors"),
                                      "--report", str(tmp_path / "d.html")])
    assert result.exit_code == 0, result.output
    expected = model.discover(X)
    table = pq.read_table(tmp_path / "clusters.parquet").to_pydict()
    np.testing.assert_array_equal(np.asarray(table["cluster"]), expected.labels.astype(str))
    assert int(np.sum(table["representative"])) == 5 * expected.n_new
    assert str(expected.settings) in result.output
    page = (tmp_path / "d.html").read_text()
    assert page.count("<circle") >= len(y) and all(name in page for name in expected.names)
    adopted = ow.OpenWorld.load(tmp_path / "a.safetensors")
    assert set(expected.names) <= set(adopted.classes_.tolist())
    bad = CliRunner().invoke(app, ["discover", str(tmp_path / "m.safetensors"), str(tmp_path / "unlabelled.npy"),
                                   "-o", str(tmp_path / "c.csv"), "--n-new", "many"])
    assert bad.exit_code != 0 and "--n-new" in bad.output


def test_best_cut_share_equals_brute_force():
    from openworld.discovery import _best_cut_share

    values = np.random.default_rng(3).standard_t(3, size=41)
    ordered = np.sort(values)
    total = ((ordered - ordered.mean()) ** 2).sum()
    within = min(((ordered[:i] - ordered[:i].mean()) ** 2).sum() + ((ordered[i:] - ordered[i:].mean()) ** 2).sum()
                 for i in range(1, ordered.size))
    assert _best_cut_share(torch.as_tensor(values)) == pytest.approx(1 - within / total, rel=1e-10)


def test_held_out_separation_ignores_width_and_sees_two_groups():
    from openworld.discovery import GAUSSIAN_SEPARATION, _held_out_separation

    rng = np.random.default_rng(4)
    one = torch.as_tensor(rng.normal(size=(2000, 20)))
    # one Gaussian: the variance share between the sides of a cut at the mean, 2/π, whatever the width
    assert _held_out_separation(one, np.random.default_rng(0)) == pytest.approx(GAUSSIAN_SEPARATION, abs=0.03)
    assert _held_out_separation(50 * one, np.random.default_rng(0)) == pytest.approx(
        _held_out_separation(one, np.random.default_rng(0)), rel=1e-9)
    two = one.clone()
    two[:1000, 0] += 8.0  # two groups 8 standard deviations apart
    assert _held_out_separation(two, np.random.default_rng(0)) > 0.9


def test_a_wide_new_class_is_one_class():
    """A new class wider than the known ones (an encoder not trained on it spreads it out) is not cut
    into pieces for being wide: splits are judged by how cleanly rows fall apart, not by variance gained."""
    X, y = _blobs(n_classes=N_KNOWN, per_class=PER_CLASS, d=DIMENSIONS, seed=5)
    rng = np.random.default_rng(50)  # not _blobs's seed: its first mean would be the wide class's
    wide = rng.normal(scale=6.0 / np.sqrt(2), size=DIMENSIONS) + 3.0 * rng.normal(size=(3 * PER_CLASS, DIMENSIONS))
    X, y = np.concatenate([X, wide]), np.concatenate([y, np.full(len(wide), "wide")])
    labelled = _split(X, y, np.unique(y[y != "wide"]), 0.1, seed=5)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    result = model.discover(X[~labelled])
    assert result.n_new == 1
    is_wide = y[~labelled] == "wide"
    assert np.mean(result.labels[is_wide] == result.clusters[0].name) > 0.95  # its rows together, as one class


def test_a_fresh_start_among_far_rows_finds_a_new_class_a_known_cluster_absorbed(monkeypatch):
    """Split/merge can end with one new class cut in two and another shared with a known cluster; k-means
    among the rows far from the anchors finds both whole, and the start with the lower objective is kept."""
    from openworld import discovery

    monkeypatch.setattr(discovery, "SWAP_ROUNDS", 0)  # no swap moves: the start alone decides
    rng = np.random.default_rng(7)
    d, per = 8, 200
    anchors = torch.as_tensor(np.eye(d)[:3] * 20.0, dtype=torch.float32)
    new_means = np.stack([-20.0 * np.eye(d)[3], 20.0 * np.eye(d)[0] + 7.0 * np.eye(d)[4]])  # the second near known 0
    means = np.concatenate([anchors.numpy(), new_means])
    truth = np.repeat(np.arange(5), per)
    Z = torch.as_tensor(means[truth] + rng.normal(size=(truth.size, d)), dtype=torch.float32)
    weights = torch.full((3,), 10.0)
    # the bad start: both new centroids inside the first new class, the second new class left to known 0
    cut = torch.as_tensor(new_means[:1] + np.array([[0.0, 0, 0, 0, 1, 0, 0, 0], [0.0, 0, 0, 0, -1, 0, 0, 0]]),
                          dtype=torch.float32)
    start = torch.cat([anchors, cut])
    bad_assignment, bad_objective, _ = discovery._kmeans(Z, anchors, weights, start)
    assert _accuracy(truth, bad_assignment.numpy()) < 0.9  # the start alone stays wrong

    assignment, objective, _ = discovery._restart_among_far_rows(Z, anchors, weights, start,
                                                                 np.random.default_rng(0), reseed=False)
    assert _accuracy(truth, assignment.numpy()) == 1.0
    assert (assignment[truth < 3].numpy() == truth[truth < 3]).all()  # known rows stay with their anchors
    assert float(objective) < float(bad_objective)


def test_settings_are_the_candidate_that_rediscovers_hidden_known_classes(mixed, monkeypatch):
    """Unless settings are given, discover hides a quarter of the known classes from a copy of the model and
    keeps the candidate that finds them again best: one that finds nothing new loses, in either order."""
    from openworld import discovery

    model, X, y, known = mixed
    good = discovery.CANDIDATE_SETTINGS[0]
    blind = discovery.Settings(split_quantile=0.999, noise_edge=1.0, fold_rejected_ratio=50.0)
    alone = model.discover(X, settings=blind)  # settings given: used as they are
    assert alone.settings == blind and alone.n_new == 0  # it is wrong on these rows
    classes, scatters, threshold, scores = (model.classes_.copy(), model.statistics_.scatters.clone(),
                                            model.threshold_, model.score_samples(X))
    for candidates in [(blind, good), (good, blind)]:
        monkeypatch.setattr(discovery, "CANDIDATE_SETTINGS", candidates)
        result = model.discover(X)
        assert result.settings == good
        assert result.n_new == N_CLASSES - N_KNOWN
        assert _accuracy(y, result.labels) > 0.95
    # the model that lent its classes is untouched by the copy that forgot some
    np.testing.assert_array_equal(model.classes_, classes)
    assert torch.equal(model.statistics_.scatters, scatters) and model.threshold_ == threshold
    np.testing.assert_array_equal(model.score_samples(X), scores)
    monkeypatch.setattr(discovery, "CANDIDATE_SETTINGS", (blind, good))
    few = ow.OpenWorld(random_state=0).fit(*_blobs(n_classes=3, per_class=30, d=DIMENSIONS, seed=9))
    assert few.discover(X).settings == blind  # 3 known classes: nothing to hide, the first candidate


def test_matched_share_is_the_best_one_to_one_matching():
    from openworld.discovery import _matched_share

    truth = np.array(["a", "a", "a", "b", "b", "c"])
    labels = np.array(["x", "x", "y", "y", "y", "y"])  # y would fit b and c: only one of them gets it
    assert _matched_share(truth, labels) == pytest.approx(4 / 6)
    assert _matched_share(truth, np.array(["p", "p", "p", "q", "q", "r"])) == 1.0  # names do not matter


def test_a_negative_number_of_representatives_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 3)), rng.normal(6, 1, (60, 3))])
    model = ow.OpenWorld(random_state=0).fit(X[:60], np.zeros(60, int))
    with pytest.raises(ValueError, match="representatives"):
        model.discover(X, representatives=-1)


def test_more_new_classes_than_the_rows_can_hold_is_a_clear_error():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    model = ow.OpenWorld(random_state=0).fit(X[:20], np.zeros(20, int))
    with pytest.raises(ValueError, match="n_new=11"):
        model.discover(X, n_new=11)  # 11 classes of at least 4 rows need 44 rows


def test_among_the_rows_the_model_rejects_every_new_class_is_found_whole():
    """Passing only the rows predict rejects leaves no known cluster of known rows: the fold's baseline rate
    must not come from known clusters that new classes took over (it read 1.0 and folded real classes back)."""
    X, y = _blobs(n_classes=8, per_class=60, d=32, seed=1, separation=8.0)
    labelled = np.isin(y, [f"c{k}" for k in range(5)]) & (np.arange(len(y)) % 60 < 15)
    model = ow.OpenWorld(random_state=0).fit(X[labelled], y[labelled])
    U, yu = X[~labelled], y[~labelled]
    rejected = model.predict(U) == "unknown"
    R, truth = U[rejected], yu[rejected]
    is_new = np.isin(truth, ["c5", "c6", "c7"])
    assert is_new.sum() >= 150  # nearly all rows of the 3 new classes, and a few known ones
    result = model.discover(R)
    assert result.n_new == 3
    assert result.is_new[is_new].all()
    assert adjusted_rand_score(truth[is_new], result.labels[is_new]) == 1.0


def test_a_model_with_per_class_priors_picks_its_settings_too(mixed):
    """Calibration forgets classes from a copy: per-class priors must shrink with them (it raised before)."""
    _, X, _, known = mixed
    model = ow.OpenWorld(priors=np.full(len(known), 1 / len(known)), random_state=0).fit(*_fitted_rows(mixed))
    result = model.discover(X)
    assert result.settings is not None and result.n_new == N_CLASSES - N_KNOWN


def test_a_fixed_number_counts_distinct_rows():
    rng = np.random.default_rng(2)
    model = ow.OpenWorld(random_state=0).fit(rng.normal(size=(30, 3)), np.zeros(30, int))
    twice = np.repeat(rng.normal(size=(10, 3)) + 20, 4, axis=0)  # 40 rows, 10 distinct
    with pytest.raises(ValueError, match="10 distinct rows"):
        model.discover(twice, n_new=3)  # 3 classes of at least 4 distinct rows need 12
    assert model.discover(twice, n_new=2).n_new == 2


def test_no_working_point_after_fitting_warns_once():
    X, y = _blobs(n_classes=6, per_class=60, d=8, seed=3)
    model = ow.OpenWorld(random_state=0).fit(X[:300], y[:300]).set_params(target_tpr=None)
    with pytest.warns(UserWarning, match="working point") as caught:
        model.discover(X[300:])
    assert sum("working point" in str(w.message) for w in caught) == 1


def test_adopt_refuses_what_it_cannot_do(mixed):
    model, X, _, _ = mixed
    result = model.discover(X)
    with pytest.raises(ValueError, match=r"\['new-O'\]"):
        copy.deepcopy(model).adopt(result, names={"new-O": "dog"})  # a letter O, not the cluster new-0
    copy.deepcopy(model).adopt(result)
    with pytest.raises(ValueError, match="adopted already"):
        copy.deepcopy(model).adopt(result)  # its rows went into the first model


def test_rows_too_far_to_cluster_and_bad_settings_are_clear_errors():
    from openworld.discovery import Settings

    rng = np.random.default_rng(4)
    model = ow.OpenWorld(random_state=0).fit(rng.normal(size=(40, 3)), np.repeat([0, 1], 20))
    with pytest.raises(ValueError, match="too far"):
        model.discover(rng.normal(size=(20, 3)) * 1e20, settings=Settings(0.9, 1.0, 2.0))
    for bad in [(1.5, 1.0, 2.0), (0.9, 0.0, 2.0), (0.9, 1.0, float("nan"))]:
        with pytest.raises(ValueError, match="Settings"):
            Settings(*bad)
    with pytest.raises(ValueError, match="settings must be"):
        model.discover(rng.normal(size=(20, 3)), settings=(0.9, 1.0, 2.0))


def test_adopt_refuses_two_clusters_under_one_name_and_a_string_of_names(mixed):
    model, X, _, _ = mixed
    result = model.discover(X)
    assert result.n_new >= 2
    first, second = result.names[:2]
    with pytest.raises(ValueError, match="more than one new cluster"):
        copy.deepcopy(model).adopt(result, names=["dog"] * result.n_new)
    with pytest.raises(ValueError, match="more than one new cluster"):
        copy.deepcopy(model).adopt(result, names={first: second})  # the second keeps its own name too
    with pytest.raises(ValueError, match="not the string"):
        copy.deepcopy(model).adopt(result, names="a" * result.n_new)
    assert result.rows is not None  # refusals adopt nothing


def test_a_trimmed_fit_discovers_as_the_untrimmed_statistics_do(mixed):
    """Picking the settings forgets hidden classes from a copy; a trimmed model refuses forget (not exact
    against a trimmed refit), and the copy forgets as an untrimmed one: the same result as a model of the
    same statistics without contamination."""
    _, X, y, known = mixed
    X_all, y_all = _blobs(n_classes=N_CLASSES, per_class=PER_CLASS, d=DIMENSIONS, seed=0)
    labelled = _split(X_all, y_all, known, 0.1, seed=0)
    trimmed = ow.OpenWorld(random_state=0, contamination=0.05).fit(X_all[labelled], y_all[labelled])
    result = trimmed.discover(X)
    plain = copy.deepcopy(trimmed)
    plain.contamination = 0.0  # the same statistics, heads and working point
    expected = plain.discover(X)
    assert result.n_new == expected.n_new == N_CLASSES - N_KNOWN
    np.testing.assert_array_equal(result.labels, expected.labels)


def test_command_line_adopt_that_cannot_be_done_writes_nothing(tmp_path):
    """discover --adopt: a refused adoption (per-class priors) and one that would leave a one-class model
    rejecting nothing exit 2 before any file is written."""
    from typer.testing import CliRunner

    from openworld.cli import app

    X, y = _blobs(n_classes=4, per_class=80, d=8, seed=1)
    np.save(tmp_path / "u.npy", X)
    known = np.isin(y, ["c0", "c1", "c2"])
    models = {
        "priors": ow.OpenWorld(random_state=0, priors=[0.2, 0.3, 0.5]).fit(X[known], y[known]),
        "one class": ow.OpenWorld(random_state=0).fit(X[y == "c0"]),
    }
    for what, model in models.items():
        model.save(tmp_path / "m.safetensors")
        outputs = [tmp_path / f"c-{what}.csv", tmp_path / f"a-{what}.safetensors", tmp_path / f"r-{what}.html"]
        result = CliRunner().invoke(app, ["discover", str(tmp_path / "m.safetensors"), str(tmp_path / "u.npy"), "-o",
                                          str(outputs[0]), "--adopt", str(outputs[1]), "--report", str(outputs[2]),
                                          "--no-progress"])
        words = " ".join(result.output.split())
        assert result.exit_code == 2 and ("priors" in words if what == "priors" else "reject nothing" in words), words
        assert not any(path.exists() for path in outputs), what


def test_a_far_group_of_rows_hides_no_other_new_class(mixed):
    """Rows 1000 units out (a batch of unscaled vectors, say) are one more new class; before, the known
    cluster that first absorbed them made every split look too cheap to pay for, and a new class stayed hidden."""
    model, X, y, known = mixed
    group = y == f"c{N_CLASSES - 1}"
    Xa = np.vstack([X, X[group] + 1000.0])
    ya = np.concatenate([y, np.full(int(group.sum()), "far")])
    result = model.discover(Xa)
    assert result.n_new == N_CLASSES - N_KNOWN + 1
    assert _accuracy(ya, result.labels) > 0.95
