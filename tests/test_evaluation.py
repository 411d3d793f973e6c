"""The evaluation report against brute-force computations; JSON and HTML output; `openworld eval` end to end."""

import itertools
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from openworld import OpenWorld
from openworld.cli import app
from openworld.evaluation.report import (
    NO_OOD_MESSAGE,
    EvaluationReport,
    evaluate,
    read_json,
    render_html,
    write_html,
    write_json,
)
from openworld.io.tables import write_table

runner = CliRunner()
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0, 0], [2.5, 0, 0, 0, 0], [0, 2.5, 0, 0, 0]], float)
    X = np.vstack([rng.normal(c, 1.0, (200, 5)) for c in centers])
    y = np.repeat(CLASSES, 200)
    model = OpenWorld(random_state=0).fit(X, y)
    # Test: 40 rows per class, 30 OOD rows of "zz" (near, overlapping) and 20 of "yy" (far).
    test_in = np.vstack([rng.normal(c, 1.0, (40, 5)) for c in centers])
    near = rng.normal([1, 1, 3, 0, 0], 1.0, (30, 5))
    far = rng.normal([-8, -8, 0, 0, 0], 1.0, (20, 5))
    X_test = np.vstack([test_in, near, far])
    y_test = np.r_[np.repeat(CLASSES, 40), ["zz"] * 30, ["yy"] * 20]
    return model, X_test, y_test


def brute_auroc(s_in, s_out):
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s_in, s_out)]
    return sum(pairs) / len(pairs)


def brute_fpr95(s_in, s_out):
    ok = [sum(s_out >= t) / len(s_out) for t in np.r_[s_in, s_out, np.inf] if sum(s_in >= t) / len(s_in) >= 0.95]
    return min(ok)


def brute_ece(confidence, correct, n_bins=15):
    total = 0.0
    for m in range(n_bins):
        members = [i for i, c in enumerate(confidence) if m / n_bins < c <= (m + 1) / n_bins or (m == 0 and c == 0)]
        if members:
            gap = abs(np.mean([correct[i] for i in members]) - np.mean([confidence[i] for i in members]))
            total += len(members) / len(confidence) * gap
    return total


def test_report_fields_match_brute_force(data):
    model, X, y = data
    report = evaluate(model, X, y)
    is_ood = np.array([label not in CLASSES for label in y])
    scores = model.score_samples(X)
    proba = model.predict_proba(X)
    s_in, s_out = scores[~is_ood], scores[is_ood]

    assert (report.n_rows, report.n_in_distribution, report.n_out_of_distribution, report.n_classes) == (170, 120, 50, 3)
    assert report.score_name == "relative_mahalanobis" and report.notes == []
    predicted = [CLASSES[int(np.argmax(p))] for p in proba]
    hits = [predicted[i] == y[i] for i in range(len(y)) if not is_ood[i]]
    assert report.accuracy == pytest.approx(sum(hits) / len(hits))
    assert report.auroc == pytest.approx(brute_auroc(s_in, s_out))
    assert 0.6 < report.auroc < 1.0  # the near OOD rows overlap: a test that can fail
    assert report.fpr_at_95 == pytest.approx(brute_fpr95(s_in, s_out))
    assert 0 < report.aupr_out <= 1 and 0 < report.aupr_in <= 1
    confidence = proba.max(1)[~is_ood]
    assert report.ece == pytest.approx(brute_ece(confidence, hits))
    np.testing.assert_allclose(report.scores_in, s_in)
    np.testing.assert_allclose(report.scores_out, s_out)
    np.testing.assert_allclose(report.confidence_in, confidence)
    assert report.correct_in.tolist() == hits
    assert report.reliability.count.sum() == 120

    # The working point is what predict() does.
    wp = report.working_point
    rejected = model.predict(X) == "unknown"
    assert 0 < rejected.sum() < len(y)
    assert wp.threshold == model.threshold_ and wp.target_tpr == 0.95
    assert wp.rejected_share == pytest.approx(rejected.mean())
    assert wp.ood_recall == pytest.approx(rejected[is_ood].sum() / is_ood.sum())
    assert wp.ood_precision == pytest.approx(is_ood[rejected].sum() / rejected.sum())
    assert wp.in_distribution_kept == pytest.approx((~rejected[~is_ood]).sum() / (~is_ood).sum())

    # Per-class table: one row per label, counted by hand.
    rows = {row.label: row for row in report.per_class}
    assert sorted(rows) == ["a", "b", "c", "yy", "zz"]
    for label, row in rows.items():
        members = [i for i in range(len(y)) if y[i] == label]
        assert row.n == len(members) and row.in_distribution == (label in CLASSES)
        assert row.kept == pytest.approx(np.mean([not rejected[i] for i in members]))
        assert row.mean_confidence == pytest.approx(np.mean([proba[i].max() for i in members]))
        if label in CLASSES:
            assert row.accuracy == pytest.approx(np.mean([predicted[i] == label for i in members]))
        else:
            assert row.accuracy is None
    assert rows["yy"].kept == 0.0  # the far cluster is rejected entirely


def test_without_ood_rows_detection_metrics_are_none_and_the_report_says_so(data, tmp_path):
    model, X, y = data
    known = np.isin(y, CLASSES)
    report = evaluate(model, X[known], y[known])
    assert report.n_out_of_distribution == 0
    assert (report.auroc, report.aupr_in, report.aupr_out, report.fpr_at_95) == (None, None, None, None)
    assert NO_OOD_MESSAGE in report.notes
    assert report.accuracy is not None and report.ece is not None
    assert report.working_point.ood_recall is None and report.working_point.ood_precision is None
    assert report.working_point.in_distribution_kept == pytest.approx(np.mean(model.predict(X[known]) != "unknown"))
    page = render_html(report)
    assert NO_OOD_MESSAGE in page and "ROC curve" not in page and "AUROC" in page  # the row, shown as —
    write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["auroc"] is None


def test_explicit_is_ood_mask(data):
    model, X, y = data
    is_ood = ~np.isin(y, CLASSES)
    by_labels = evaluate(model, X, y)
    by_mask = evaluate(model, X, y, is_ood=is_ood)
    assert by_mask.to_dict() == by_labels.to_dict()
    # A mask without labels: detection and the working point, no accuracy or calibration.
    unlabelled = evaluate(model, X, is_ood=is_ood)
    assert unlabelled.auroc == pytest.approx(by_labels.auroc)
    assert unlabelled.accuracy is None and unlabelled.ece is None and unlabelled.reliability is None
    assert [row.label for row in unlabelled.per_class] == ["(out-of-distribution)"]
    # Known-class rows may be declared OOD; ID rows of an unknown label are an error.
    assert evaluate(model, X, y, is_ood=is_ood | (y == "a")).n_out_of_distribution == 90
    with pytest.raises(ValueError, match="not classes of the model"):
        evaluate(model, X, y, is_ood=np.zeros(len(y), bool))


def test_bad_arguments_are_clear_errors(data):
    model, X, y = data
    with pytest.raises(ValueError, match="labels .* or an is_ood"):
        evaluate(model, X)
    with pytest.raises(ValueError, match="rows"):
        evaluate(model, X, y[:-1])
    with pytest.raises(ValueError, match="boolean"):
        evaluate(model, X, y, is_ood=np.zeros(len(y)))
    with pytest.raises(ValueError, match="label type"):
        evaluate(model, X, np.arange(len(y)))


def test_a_model_without_working_point(data):
    model, X, y = data
    never = OpenWorld(target_tpr=None).fit(X[:120], y[:120])
    report = evaluate(never, X, y)
    assert report.working_point is None and any("no working point" in note for note in report.notes)
    assert all(row.kept is None for row in report.per_class)
    assert report.auroc is not None
    assert "ROC curve" in render_html(report)


def test_torch_input_gives_the_same_report(data):
    torch = pytest.importorskip("torch")
    model, X, y = data
    a, b = evaluate(model, X, y), evaluate(model, torch.from_numpy(X), y)
    assert b.auroc == pytest.approx(a.auroc) and b.accuracy == a.accuracy


def test_json_round_trip(data, tmp_path):
    model, X, y = data
    report = evaluate(model, X, y, title="synthetic")
    write_json(report, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON, readable by browsers
    back = read_json(tmp_path / "r.json")
    assert isinstance(back, EvaluationReport)
    assert back.to_dict() == report.to_dict()
    np.testing.assert_array_equal(back.scores_in, report.scores_in)
    assert back.working_point.threshold == report.working_point.threshold
    np.testing.assert_array_equal(back.reliability.count, report.reliability.count)


def test_html_is_one_self_contained_file_with_the_figures(data, tmp_path):
    model, X, y = data
    report = evaluate(model, X, y, title="synthetic <test>")
    write_html(report, tmp_path / "r.html")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page and "https://" not in page and "url(" not in page
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith(("#", "data:")), attribute
    assert "<link" not in page and "<script" not in page
    assert page.count("<svg") == 3  # ROC, histograms, reliability
    for text in ("ROC curve", "Score histograms", "Reliability diagram", "threshold", "Per class",
                 f"{report.auroc:.4f}", "synthetic &lt;test&gt;", "zz", "yy"):
        assert text in page, text


@pytest.fixture
def cli_tables(data, tmp_path):
    model, X, y = data
    model.save(tmp_path / "m.safetensors")
    write_table(tmp_path / "test.parquet", {"embedding": X, "label": y})
    known = np.isin(y, CLASSES)
    write_table(tmp_path / "in.parquet", {"embedding": X[known], "label": y[known]})
    return tmp_path, model, X, y


def test_cli_eval_end_to_end(cli_tables):
    tmp, model, X, y = cli_tables
    result = runner.invoke(
        app,
        ["eval", str(tmp / "m.safetensors"), str(tmp / "test.parquet"), "--report", str(tmp / "r.html"),
         "--json", str(tmp / "r.json"), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "OOD recall" in result.output
    expected = evaluate(model, X, y)
    saved = json.loads((tmp / "r.json").read_text())
    assert saved["auroc"] == pytest.approx(expected.auroc)
    assert saved["accuracy"] == pytest.approx(expected.accuracy)
    assert saved["working_point"]["ood_recall"] == pytest.approx(expected.working_point.ood_recall)
    assert f"{expected.auroc:.4f}" in result.output
    assert (tmp / "r.html").read_text().count("<svg") == 3


def test_cli_eval_says_when_there_are_no_ood_rows(cli_tables):
    tmp, *_ = cli_tables
    result = runner.invoke(app, ["eval", str(tmp / "m.safetensors"), str(tmp / "in.parquet"), "--json", str(tmp / "r.json")])
    assert result.exit_code == 0, result.output
    assert NO_OOD_MESSAGE in " ".join(result.output.split())
    assert json.loads((tmp / "r.json").read_text())["auroc"] is None


def test_cli_eval_ood_label(cli_tables):
    tmp, model, X, y = cli_tables
    args = ["eval", str(tmp / "m.safetensors"), str(tmp / "test.parquet"), "--json", str(tmp / "r.json")]
    result = runner.invoke(app, [*args, "--ood-label", "zz", "--ood-label", "yy"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp / "r.json").read_text())["n_out_of_distribution"] == 50
    # A label that is neither known nor named as OOD is refused rather than guessed.
    result = runner.invoke(app, [*args, "--ood-label", "zz"])
    assert result.exit_code == 2 and "'yy'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--ood-label", "a"])
    assert result.exit_code == 2 and "fitted on" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "m.safetensors", "missing.parquet"], "missing.parquet"),
        (["eval", "missing.safetensors", "test.parquet"], "missing.safetensors"),
        (["eval", "test.parquet", "test.parquet"], "not a readable model file"),
        (["eval", "m.safetensors", "test.parquet", "--labels", "nope"], "nope"),
        (["eval", "m.safetensors", "test.parquet", "--report", "no/such/folder/r.html"], "does not exist"),
    ],
)
def test_cli_eval_bad_input_is_a_clear_error(cli_tables, monkeypatch, args, message):
    tmp, *_ = cli_tables
    monkeypatch.chdir(tmp)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cli_eval_needs_labels(cli_tables):
    tmp, model, X, y = cli_tables
    np.save(tmp / "plain.npy", X)
    result = runner.invoke(app, ["eval", str(tmp / "m.safetensors"), str(tmp / "plain.npy")])
    assert result.exit_code == 2 and "no label column" in " ".join(result.output.split())  # rich wraps long paths


def test_labels_as_a_python_list_or_pandas(data):
    pd = pytest.importorskip("pandas")
    model, X, y = data
    reference = evaluate(model, X, y).to_dict()
    assert evaluate(model, X, y.tolist()).to_dict() == reference
    assert evaluate(model, X, pd.Series(y, dtype=object)).to_dict() == reference


def test_cli_fits_and_evaluates_the_covariance_ensemble(cli_tables):
    tmp, _, X, y = cli_tables
    fitted = runner.invoke(app, ["fit", str(tmp / "in.parquet"), "-o", str(tmp / "e.safetensors"),
                                 "--score", "covariance_ensemble", "--no-progress"])
    assert fitted.exit_code == 0, fitted.output
    model = OpenWorld.load(tmp / "e.safetensors")
    assert model.score_ == "covariance_ensemble"
    result = runner.invoke(app, ["eval", str(tmp / "e.safetensors"), str(tmp / "test.parquet"),
                                 "--json", str(tmp / "e.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp / "e.json").read_text())["auroc"] == pytest.approx(evaluate(model, X, y).auroc)


def test_text_labels_meet_integer_classes_as_the_integers_they_spell():
    from openworld.core.arrays import common_label_type

    labels = np.array(["7", "07", "+3", "-2", " 5 ", "oos", "3.0", "", "x1"])

    def spelled(value: str) -> str:  # reference: what int() reads, else the text itself
        try:
            return str(int(value))
        except ValueError:
            return value

    text, classes = common_label_type(labels, np.array([3, 7, -2], dtype=np.int64))
    assert text.tolist() == [spelled(v) for v in labels.tolist()]
    assert classes.tolist() == ["3", "7", "-2"]
    same = np.array(["a", "b"])
    assert common_label_type(same, np.array(["b"]))[0] is same  # one kind already: untouched


def test_axis_ticks_of_scores_equal_but_for_round_off_end():
    import math

    from openworld.evaluation.report import _nice_ticks

    assert _nice_ticks(1.0, math.nextafter(1.0, 2.0)) == [1.0]  # used to loop forever, growing a list
    assert _nice_ticks(-20.69, -20.69 + 3.6e-15) == [-20.69]
    ticks = _nice_ticks(-3.2, 7.9)
    assert ticks[0] >= -3.2 and ticks[-1] <= 7.9 and len(ticks) >= 3
    np.testing.assert_allclose(np.diff(ticks), ticks[1] - ticks[0])


def test_only_ascii_digits_spell_integer_classes():
    from openworld.core.arrays import common_label_type

    labels, classes = common_label_type(np.array(["3", "03", "+7", "²", "①", "٣", "oos"]), np.array([3, 7]))
    assert labels.tolist() == ["3", "3", "7", "²", "①", "٣", "oos"] and classes.tolist() == ["3", "7"]
