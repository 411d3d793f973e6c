"""Saving and loading models: safetensors + JSON manifest, exact, atomic, never pickle.

DESIGN.md: ``model.save(path); ow.OpenWorld.load(path)   # safetensors + JSON, never pickle``;
a damaged or foreign file is a clear error, not wrong numbers.
"""

from __future__ import annotations

import ast
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import openworld
from openworld import OpenWorld
from openworld.io.persistence import ModelFileError

STRUCTURES = ["tied", "full", "diag"]
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32}


def _data(label_kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 1.0, 0.0], [0.0, 4.0, 0.0, -2.0]])
    X = np.vstack([c + rng.normal(size=(60, 4)) for c in centers])
    index = np.repeat(np.arange(3), 60)
    y = np.array(["cat", "dog", "emu"])[index] if label_kind == "str" else np.array([3, 11, 27])[index]
    queries = np.vstack([X[::7], rng.normal(0.0, 8.0, size=(30, 4))])  # in- and out-of-distribution
    return X, y, queries


def _assert_same_behaviour(loaded: OpenWorld, original: OpenWorld, queries) -> None:
    """Bit-for-bit: same classes (values and dtype), threshold and outputs."""
    np.testing.assert_array_equal(loaded.classes_, original.classes_)
    assert loaded.classes_.dtype == original.classes_.dtype
    assert loaded.n_features_in_ == original.n_features_in_
    assert loaded.get_params() == original.get_params()
    assert (loaded.threshold_ is None) == (original.threshold_ is None)
    if original.threshold_ is not None:
        assert loaded.threshold_ == original.threshold_
    for method in ("predict_proba", "decision_function", "score_samples"):
        np.testing.assert_array_equal(getattr(loaded, method)(queries), getattr(original, method)(queries))
    predicted = original.predict(queries)
    np.testing.assert_array_equal(loaded.predict(queries), predicted)
    assert loaded.predict(queries).dtype == predicted.dtype


# --------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("target_tpr", [None, 0.9])
@pytest.mark.parametrize("label_kind", ["str", "int"])
@pytest.mark.parametrize("covariance", STRUCTURES)
def test_round_trip_is_exact(tmp_path, covariance, label_kind, target_tpr):
    X, y, queries = _data(label_kind)
    model = OpenWorld(covariance=covariance, target_tpr=target_tpr, random_state=0).fit(X, y)
    if target_tpr is not None:
        # the queries include far-away rows, so the working point actually rejects some
        assert (model.predict(queries) == "unknown").any()
    path = tmp_path / "model.safetensors"
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"], "leftover temporary files"
    _assert_same_behaviour(OpenWorld.load(path), model, queries)


def test_save_overwrites_in_place_and_leaves_nothing_else(tmp_path):
    X, y, queries = _data("str")
    path = tmp_path / "model.safetensors"
    OpenWorld(random_state=0).fit(X[:120], y[:120]).save(path)
    model = OpenWorld(covariance="full", random_state=0).fit(X, y)
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    _assert_same_behaviour(OpenWorld.load(path), model, queries)


def test_load_accepts_str_and_path(tmp_path):
    X, y, queries = _data("int")
    model = OpenWorld(random_state=0).fit(X, y)
    model.save(str(tmp_path / "m.safetensors"))
    _assert_same_behaviour(OpenWorld.load(str(tmp_path / "m.safetensors")), model, queries)
    _assert_same_behaviour(OpenWorld.load(Path(tmp_path / "m.safetensors")), model, queries)


@pytest.mark.parametrize("covariance", STRUCTURES)
def test_round_trip_after_partial_fit_and_forget(tmp_path, covariance):
    X, y, queries = _data("str")
    rng = np.random.default_rng(5)
    X_new = np.array([-4.0, -4.0, 0.0, 3.0]) + rng.normal(size=(50, 4))
    model = OpenWorld(covariance=covariance, target_tpr=0.9, random_state=0).fit(X[y != "emu"], y[y != "emu"])
    model.partial_fit(X[y == "emu"], y[y == "emu"])
    model.partial_fit(X_new, np.repeat("fox", 50))
    model.forget(["dog"])
    np.testing.assert_array_equal(model.classes_, ["cat", "emu", "fox"])
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = OpenWorld.load(path)
    _assert_same_behaviour(loaded, model, np.vstack([queries, X_new[:5]]))

    # and the loaded model keeps learning and forgetting exactly like the original
    more = np.array([4.0, 0.0, 1.0, 0.0]) + rng.normal(size=(40, 4))
    for m in (model, loaded):
        m.partial_fit(more, np.repeat("dog", 40))
        m.forget(["cat"])
    _assert_same_behaviour(loaded, model, queries)


# --------------------------------------------------------------------------
# The file itself, read without the library
# --------------------------------------------------------------------------


def _parse_safetensors(path: Path) -> tuple[dict, bytes]:
    """The JSON header and the byte buffer of a safetensors file, by the format's spec."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    return header, raw[8 + header_len :]


@pytest.mark.parametrize("target_tpr", [None, 0.9])
def test_written_file_is_plain_safetensors_with_a_json_manifest(tmp_path, target_tpr):
    X, y, _ = _data("str")
    model = OpenWorld(covariance="full", target_tpr=target_tpr, random_state=0).fit(X, y)
    path = tmp_path / "model.safetensors"
    model.save(path)
    header, buffer = _parse_safetensors(path)

    metadata = header.pop("__metadata__")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    manifests = [json.loads(v) for v in metadata.values()]
    manifest = next(m for m in manifests if isinstance(m, dict) and "format_version" in m)
    assert isinstance(manifest["format_version"], int)
    assert manifest["classes"] == ["cat", "dog", "emu"]

    # the tensors tile the byte buffer exactly, in offset order
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(buffer)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for name, entry in header.items():
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        start, end = entry["data_offsets"]
        assert end - start == int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(dtype).itemsize, name

    # the stored class means are the fitted ones, as float64
    means_entries = [(n, e) for n, e in header.items() if n.endswith("means")]
    assert len(means_entries) == 1
    name, entry = means_entries[0]
    assert entry["dtype"] == "F64" and entry["shape"] == [3, 4]
    start, end = entry["data_offsets"]
    stored = np.frombuffer(buffer[start:end], dtype="<f8").reshape(3, 4)
    expected = np.vstack([X[y == label].mean(0) for label in ["cat", "dog", "emu"]])
    np.testing.assert_allclose(stored, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Damaged and foreign files
# --------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    X, y, _ = _data("str")
    path = tmp_path / "model.safetensors"
    OpenWorld(random_state=0).fit(X, y).save(path)
    return path


def _load_error(path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        OpenWorld.load(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) or Path(path).name in str(info.value)
    return info.value


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


@pytest.mark.parametrize("keep", ["half", "header only", "all but the last byte", "4 bytes"])
def test_truncated_file_is_a_clear_error(saved, keep):
    raw = saved.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    cut = {"half": len(raw) // 2, "header only": 8 + header_len, "all but the last byte": len(raw) - 1, "4 bytes": 4}[keep]
    saved.write_bytes(raw[:cut])
    error = _load_error(saved)
    assert "truncated" in str(error) or "not a readable" in str(error)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_in_the_tensor_data_is_detected(saved, where):
    raw = bytearray(saved.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    data_start = 8 + header_len
    position = {"first": data_start, "middle": (data_start + len(raw)) // 2, "last": len(raw) - 1}[where]
    raw[position] ^= 0x01
    saved.write_bytes(bytes(raw))
    error = _load_error(saved)
    assert "damaged" in str(error) and "checksum" in str(error)


def _flip_low_bit_in_manifest(path: Path, anchor: str, then: str) -> str:
    """Flip the lowest bit of the byte after ``anchor`` and then ``then`` in the header; returns old->new."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    position = raw.index(anchor.encode(), 8, 8 + header_len) + len(anchor)
    position = raw.index(then.encode(), position, 8 + header_len) + len(then)
    before = raw[position : position + 1].decode()
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))
    return f"{before}->{raw[position:position + 1].decode()}"


@pytest.mark.parametrize(
    ("anchor", "then", "what"),
    [
        ('\\"threshold\\": ', ".", "the first decimal of the working-point threshold"),  # a digit stays a digit
        ('\\"classes\\": [\\"', "", "the first letter of a class name"),  # "cat" → "bat"
    ],
    ids=["threshold digit", "class name letter"],
)
def test_one_flipped_bit_in_the_manifest_is_detected(tmp_path, anchor, then, what):
    """A garbled file fails loudly instead of giving wrong numbers (persistence.py's promise) — the manifest too."""
    X, y, queries = _data("str")
    model = OpenWorld(target_tpr=0.9, random_state=0).fit(X, y)
    path = tmp_path / "model.safetensors"
    model.save(path)
    change = _flip_low_bit_in_manifest(path, anchor, then)
    try:
        loaded = OpenWorld.load(path)
    except ModelFileError as error:
        assert "damaged" in str(error) or "checksum" in str(error)
        return
    pytest.fail(
        f"flipping {what} ({change}) went unnoticed: classes_ {loaded.classes_.tolist()} "
        f"(saved {model.classes_.tolist()}), threshold_ {loaded.threshold_!r} (saved {model.threshold_!r})"
    )


def _rewrite_manifest(path: Path, edit) -> None:
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    (key,) = [k for k, v in metadata.items() if "format_version" in v]
    manifest = json.loads(metadata[key])
    edit(manifest)
    metadata[key] = json.dumps(manifest)
    save_file(tensors, str(path), metadata=metadata)


def test_unsupported_format_version_is_a_clear_error(saved):
    _rewrite_manifest(saved, lambda manifest: manifest.update(format_version=999))
    error = _load_error(saved)
    assert "999" in str(error) and "version" in str(error)


def test_rewritten_but_unchanged_manifest_still_loads(saved):
    """The control for the test above: the rewrite itself is not what breaks the file."""
    _, _, queries = _data("str")
    before = OpenWorld.load(saved)
    _rewrite_manifest(saved, lambda manifest: None)
    _assert_same_behaviour(OpenWorld.load(saved), before, queries)


def test_plain_safetensors_file_without_manifest_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3, 4)}, str(path))
    error = _load_error(path)
    assert "not an openworld model" in str(error)


def test_plain_safetensors_file_with_foreign_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3, 4)}, str(path), metadata={"format": "pt"})
    _load_error(path)


def test_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        OpenWorld.load(path)


def test_saving_an_unfitted_model_is_an_error(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        OpenWorld().save(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Never pickle
# --------------------------------------------------------------------------

PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve"}


def _pickle_uses(source: str) -> list[str]:
    """Imports of pickling modules, torch.load calls, and np.load(..., allow_pickle=True) calls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            keywords = {k.arg: k.value for k in node.keywords}
            if node.func.attr == "load" and owner == "torch":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append("torch.load without weights_only=True")
            if node.func.attr == "load" and owner in ("np", "numpy"):
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append("np.load with allow_pickle")
            if node.func.attr in ("read_pickle", "to_pickle"):
                found.append(node.func.attr)
    return found


def test_the_pickle_detector_detects():
    snippets = [
        "import pickle",
        "from pickle import loads",
        "import torch\ntorch.load('m.pt')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import pandas as pd\npd.read_pickle('a.pkl')",
    ]
    assert all(_pickle_uses(s) for s in snippets)
    clean = "import numpy as np\nnp.load('a.npy', allow_pickle=False)\nimport torch\ntorch.load('w.pt', weights_only=True)"
    assert _pickle_uses(clean) == []


def test_no_module_of_the_package_uses_pickle():
    root = Path(openworld.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 5
    offenders = {
        str(p.relative_to(root)): uses
        for p in sources
        if (uses := _pickle_uses(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_model_files_honour_the_umask_like_tables(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 3))
    previous = os.umask(0o027)
    try:
        OpenWorld().fit(X).save(tmp_path / "m.safetensors")
    finally:
        os.umask(previous)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind
