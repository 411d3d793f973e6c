"""fine_tune_text_encoder: supervision on known classes, determinism, persistence, and the cache's names.

That fine-tuning helps is checked against a brute-force criterion on texts it never
saw: the share of held-out queries whose nearest class mean (of the training texts'
vectors) is their own intent, before and after. Tests skip when ``transformers`` or
the bundled model package are missing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from openworld.datasets.clinc150 import load_clinc150
from openworld.encoders.text import TextEncoder, embed_texts, fine_tune_text_encoder


@pytest.fixture(scope="module")
def intents():
    """Training and test queries of 8 CLINC150 intents (24 training queries each)."""
    d = load_clinc150()
    train_texts, train_labels = np.asarray(d["train"][0], dtype=object), np.asarray(d["train"][1])
    test_texts, test_labels = np.asarray(d["test"][0], dtype=object), np.asarray(d["test"][1])
    chosen = np.unique(train_labels)[::19][:8]
    rows = np.concatenate([np.flatnonzero(train_labels == c)[:24] for c in chosen])
    held = np.isin(test_labels, chosen)
    return list(train_texts[rows]), train_labels[rows], list(test_texts[held]), test_labels[held]


@pytest.fixture(scope="module")
def tuned(model_deps, intents):
    texts, labels, _, _ = intents
    return fine_tune_text_encoder(texts, labels, epochs=3, seed=0, num_threads=1, progress=False)


def _nearest_mean_accuracy(train_X, train_y, test_X, test_y):
    classes = np.unique(train_y)
    means = np.stack([train_X[train_y == c].mean(0) for c in classes])
    distances = ((test_X[:, None, :] - means[None]) ** 2).sum(-1)  # brute force, every pair
    return float((classes[distances.argmin(1)] == test_y).mean())


def test_fine_tuning_separates_the_known_intents_on_queries_it_never_saw(tuned, intents):
    texts, labels, test_texts, test_labels = intents
    frozen = TextEncoder(progress=False)
    before = _nearest_mean_accuracy(frozen.encode(texts), labels, frozen.encode(test_texts), test_labels)
    after = _nearest_mean_accuracy(tuned.encode(texts), labels, tuned.encode(test_texts), test_labels)
    assert after > before, (before, after)
    vectors = tuned.encode(test_texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)  # still unit vectors


def test_same_seed_same_weights_other_seed_other_weights_and_global_state_untouched(model_deps, intents):
    import torch

    texts, labels = intents[0][18:30], intents[1][18:30]  # 2 intents, 6 queries each: one step
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    first = fine_tune_text_encoder(texts, labels, epochs=1, seed=3, num_threads=1, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    again = fine_tune_text_encoder(texts, labels, epochs=1, seed=3, num_threads=1, progress=False)
    other = fine_tune_text_encoder(texts, labels, epochs=1, seed=4, num_threads=1, progress=False)
    assert first.name == again.name != other.name
    np.testing.assert_array_equal(first.encode(texts), again.encode(texts))
    assert first.name.startswith(TextEncoder().name + ":fine-tuned=")


def test_save_and_load_give_the_same_vectors_and_name(tuned, intents, tmp_path):
    path = tmp_path / "encoder.safetensors"
    previous = os.umask(0o027)
    try:
        tuned.save(path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640  # the umask, as for model files and tables
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.safetensors"]  # no temporary file left behind
    loaded = TextEncoder.load(path, progress=False)
    assert loaded.name == tuned.name and loaded.layers == tuned.layers
    np.testing.assert_array_equal(loaded.encode(intents[2]), tuned.encode(intents[2]))


def test_a_damaged_or_foreign_file_is_refused(tuned, tmp_path, model_deps):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "encoder.safetensors"
    tuned.save(path)
    state = load_file(path)
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key] + 1e-3  # edited weights, recorded digest unchanged
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(state, tmp_path / "edited.safetensors", metadata=metadata)
    with pytest.raises(ValueError, match="digest"):
        TextEncoder.load(tmp_path / "edited.safetensors")
    save_file({"x": state[key]}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not an openworld text encoder"):
        TextEncoder.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TextEncoder.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="only a fine-tuned encoder"):
        TextEncoder().save(tmp_path / "bundled.safetensors")


def test_fine_tuned_names_never_share_the_cache_and_cannot_be_rebuilt_by_name(tuned, intents, tmp_path):
    texts = intents[2][:5]
    bundled = embed_texts(texts, encoder=TextEncoder(progress=False), cache_dir=tmp_path, progress=False)
    fine = embed_texts(texts, encoder=tuned, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not np.allclose(bundled, fine)
    np.testing.assert_array_equal(fine, tuned.encode(texts))
    with pytest.raises(ValueError, match="TextEncoder.load"):
        TextEncoder.from_name(tuned.name)


@pytest.mark.parametrize("labels, epochs, match", [
    (["a", "b"], 1, "one per text"),
    (["a", "a", "a"], 1, "at least 2 classes"),
    (["a", None, "b"], 1, "None"),
    (["a", "b", "a"], 0, "epochs"),
])
def test_bad_arguments_are_named(labels, epochs, match):
    with pytest.raises(ValueError, match=match):
        fine_tune_text_encoder(["x", "y", "z"], labels, epochs=epochs, progress=False)
