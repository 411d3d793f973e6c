"""CLINC150 loader: the vendored Full variant, external variants and error messages."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from openworld.datasets.clinc150 import OOS_LABEL, SPLITS, VARIANTS, load_clinc150

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clinc150"


@pytest.fixture(scope="module")
def full():
    return load_clinc150()


def test_full_split_sizes(full):
    assert tuple(full) == SPLITS
    sizes = {s: len(full[s][0]) for s in SPLITS}
    assert sizes == {
        "train": 15000,
        "val": 3000,
        "test": 4500,
        "oos_train": 100,
        "oos_val": 100,
        "oos_test": 1000,
    }
    for texts, labels in full.values():
        assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        assert isinstance(labels, np.ndarray) and labels.dtype.kind == "U"
        assert labels.shape == (len(texts),)


def test_full_intents(full):
    train_intents = set(full["train"][1].tolist())
    assert len(train_intents) == 150
    assert OOS_LABEL not in train_intents
    for split in ("val", "test"):
        assert set(full[split][1].tolist()) == train_intents
    # 100 / 20 / 30 examples per intent
    for split, per in (("train", 100), ("val", 20), ("test", 30)):
        _, counts = np.unique(full[split][1], return_counts=True)
        assert (counts == per).all()
    for split in ("oos_train", "oos_val", "oos_test"):
        assert (full[split][1] == OOS_LABEL).all()


def test_full_first_items(full):
    assert full["train"][0][0] == (
        "what expression would i use to say i love you if i were an italian"
    )
    assert full["train"][1][0] == "translate"
    assert full["oos_test"][0][0] == "how much has the dow changed today"


def test_vendored_file_is_unmodified():
    ref = resources.files("openworld.datasets").joinpath("data", "clinc150", "data_full.json")
    digest = hashlib.sha256(ref.read_bytes()).hexdigest()
    assert digest == "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"
    folder = resources.files("openworld.datasets").joinpath("data", "clinc150")
    assert folder.joinpath("LICENSE").read_text(encoding="utf-8").startswith(
        "Creative Commons Legal Code"
    )
    readme = folder.joinpath("README.md").read_text(encoding="utf-8")
    assert "828f8093932c8fe6ca7936c3d2e52903b1c523de" in readme and "CC BY 3.0" in readme


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError) as exc:
        load_clinc150("tiny")
    msg = str(exc.value)
    assert "'tiny'" in msg
    for v in VARIANTS:
        assert v in msg


def test_missing_external_variant_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        load_clinc150("small", root=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "data_small.json") in msg
    assert "OPENWORLD_DATA" in msg


def _tiny_file(path: Path) -> None:
    raw = {s: [["hello there", "greeting"], ["bye", "farewell"]] for s in SPLITS[:3]}
    raw.update({s: [["what is the dow", "oos"]] for s in SPLITS[3:]})
    path.write_text(json.dumps(raw), encoding="utf-8")


def test_external_variant_from_root_and_env(tmp_path, monkeypatch):
    _tiny_file(tmp_path / "data_imbalanced.json")
    d = load_clinc150("imbalanced", root=str(tmp_path))
    assert d["train"][0] == ["hello there", "bye"]
    assert d["train"][1].tolist() == ["greeting", "farewell"]
    assert d["oos_test"][1].tolist() == ["oos"]

    # $OPENWORLD_DATA may point at the folder itself or at a data root with clinc150/ in it.
    monkeypatch.setenv("OPENWORLD_DATA", str(tmp_path))
    assert load_clinc150("imbalanced")["val"][0] == ["hello there", "bye"]
    sub = tmp_path / "root"
    (sub / "clinc150").mkdir(parents=True)
    _tiny_file(sub / "clinc150" / "data_oos_plus.json")
    monkeypatch.setenv("OPENWORLD_DATA", str(sub))
    assert load_clinc150("oos_plus")["oos_val"][0] == ["what is the dow"]


def test_full_with_explicit_root_reads_that_file(tmp_path):
    _tiny_file(tmp_path / "data_full.json")
    assert len(load_clinc150("full", root=tmp_path)["train"][0]) == 2


def test_malformed_file(tmp_path):
    (tmp_path / "data_small.json").write_text(json.dumps({"train": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks splits"):
        load_clinc150("small", root=tmp_path)


@pytest.mark.skipif(not (SHARED / "data_small.json").is_file(), reason="shared data not present")
def test_real_external_variants():
    sizes = {
        "small": (7500, 100),
        "imbalanced": (10525, 100),
        "oos_plus": (15000, 250),
    }
    for variant, (n_train, n_oos_train) in sizes.items():
        d = load_clinc150(variant, root=SHARED)
        assert len(d["train"][0]) == n_train
        assert len(d["oos_train"][0]) == n_oos_train
        assert len(d["test"][0]) == 4500 and len(d["oos_test"][0]) == 1000
        assert len(set(d["train"][1].tolist())) == 150
