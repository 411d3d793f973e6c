"""The GPU code paths: statistics in float64 products, TF32 scoring, labels kept on the device.

What can be checked without a GPU runs everywhere (the shared tied products,
the scoped TF32 switch, the sample selection); what needs CUDA skips cleanly
without it.
"""

import threading
import time

import numpy as np
import pytest
import torch

from openworld import OpenWorld
from openworld.core.accumulator import _smallest
from openworld.core.metrics import auroc
from openworld.core.precision import tf32_products
from openworld.core.statistics import ClassStatistics

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def classes(n=3000, d=16, C=6, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, d)) * 1.5
    y = rng.integers(0, C, n)
    return rng.normal(size=(n, d)) + means[y] + offset, y


@pytest.mark.parametrize(
    "params", [dict(), dict(priors="empirical"), dict(covariance="full"), dict(covariance="diag"),
               dict(score="mahalanobis"), dict(components=2)],
)
def test_posteriors_and_scores_in_one_pass_equal_the_two_calls(params):
    X, y = classes()
    y = np.where(y == 5, 4, y)  # unequal class sizes: empirical priors differ
    model = OpenWorld(target_tpr=None, random_state=0, **params).fit(X, y)
    Q = classes(seed=1)[0][:500]
    proba, scores = model.predict_proba_and_score(Q)
    np.testing.assert_allclose(proba, model.predict_proba(Q), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scores, model.score_samples(Q), rtol=1e-9, atol=1e-9)
    assert np.array_equal(np.argmax(proba, 1), np.searchsorted(model.classes_, model.predict(Q)))


@pytest.mark.parametrize("offset", [0.0, 300.0])
def test_tied_products_with_and_without_centering_give_the_float64_distances(offset):
    """Uncentered products fold the center into the bias; a far center makes the head center the rows."""
    X, y = classes(offset=offset)
    model = OpenWorld(target_tpr=None, random_state=0).fit(X, y)
    assert model.head_.center_rows == (offset > 0)  # 16·300² against a spread of about 16
    Q = classes(seed=2, offset=offset)[0][:400]
    # Reference: posteriors and relative Mahalanobis from the (float64) distances, by their definitions.
    head = model.head_
    D = head.squared_mahalanobis(torch.from_numpy(Q))
    logits = (-0.5 * D + head.log_priors).numpy()
    reference = np.exp(logits - logits.max(1, keepdims=True))
    reference /= reference.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(Q), reference, atol=1e-9)
    Q32 = torch.from_numpy(Q.astype(np.float32))
    np.testing.assert_allclose(model.predict_proba(Q32).numpy(), reference, atol=2e-3)
    scores = model.score_samples(Q)
    np.testing.assert_allclose(model.score_samples(Q32).numpy(), scores, rtol=1e-3, atol=1e-3 * np.abs(scores).max())


def test_tf32_switch_is_scoped_restored_and_never_mixed():
    flag = torch.backends.cuda.matmul
    before = flag.allow_tf32
    try:
        flag.allow_tf32 = False
        with tf32_products(True, "cpu"):
            assert flag.allow_tf32 is False  # off CUDA nothing changes
        with tf32_products(True, "cuda"):
            assert flag.allow_tf32 is True
            with tf32_products(False, "cuda"):
                assert flag.allow_tf32 is True  # nested on one thread: the outer setting holds
        assert flag.allow_tf32 is False
        seen, started = [], threading.Event()

        def other():
            started.set()
            with tf32_products(False, "cuda"):  # waits until the TF32 call has ended
                seen.append(flag.allow_tf32)

        with tf32_products(True, "cuda"):
            thread = threading.Thread(target=other)
            thread.start()
            started.wait()
            time.sleep(0.05)
            assert seen == [] and flag.allow_tf32 is True
        thread.join()
        assert seen == [False] and flag.allow_tf32 is False
    finally:
        flag.allow_tf32 = before


@pytest.mark.parametrize("n, k", [(10, 20), (10_000, 50), (200_000, 1000)])
def test_sample_selection_is_a_stable_argsort_prefix(n, k):
    rng = np.random.default_rng(n)
    priorities = rng.random(n)
    priorities[::7] = priorities[3]  # ties are broken by position
    np.testing.assert_array_equal(_smallest(priorities, k), np.argsort(priorities, kind="stable")[:k])
    skewed = priorities**8  # not uniform: the quick pre-selection finds too few and falls back
    np.testing.assert_array_equal(_smallest(skewed, k), np.argsort(skewed, kind="stable")[:k])


# ---------------------------------------------------------------- CUDA only


@cuda
def test_cuda_statistics_equal_a_float64_cpu_reference():
    X, y = classes(n=20_000, d=48, C=30, offset=5.0)
    X32 = torch.from_numpy(X.astype(np.float32))
    reference = ClassStatistics.from_rows(X32.double(), torch.from_numpy(y), 30)
    on_gpu = ClassStatistics.from_rows(X32.cuda(), torch.from_numpy(y).cuda(), 30).to("cpu")
    for name, value in reference.as_dict().items():
        error = (getattr(on_gpu, name) - value).norm() / value.norm()
        assert float(error) < 1e-6, name


@cuda
def test_cuda_fit_with_labels_on_the_device_equals_the_cpu_fit():
    X, y = classes(n=5000, d=24, C=8)
    cpu = OpenWorld(random_state=0).fit(X, y)
    gpu = OpenWorld(random_state=0).fit(torch.from_numpy(X).cuda(), torch.from_numpy(y).cuda())
    np.testing.assert_array_equal(gpu.classes_, cpu.classes_)
    torch.testing.assert_close(gpu.statistics_.to("cpu").scatters, cpu.statistics_.scatters, rtol=1e-10, atol=1e-10)
    assert gpu.threshold_ == pytest.approx(cpu.threshold_, rel=1e-6)
    with pytest.raises(ValueError, match="rows but y has"):
        OpenWorld().fit(torch.from_numpy(X).cuda(), torch.from_numpy(y[:-1]).cuda())


@cuda
def test_cuda_low_rank_full_head_equals_the_cpu_one():
    """Classes of 6-20 rows in 64 dimensions: the per-class factors (pivoted Cholesky on the CPU) serve CUDA rows."""
    X, y = classes(n=100, d=64, C=8)
    cpu = OpenWorld(covariance="full", target_tpr=None).fit(X, y)
    gpu = OpenWorld(covariance="full", target_tpr=None).fit(torch.from_numpy(X).cuda(), y)
    assert cpu.head_.factors is not None and gpu.head_.factors is not None
    Q = classes(seed=3, n=300, d=64, C=8)[0]
    on_gpu = gpu.score_samples(torch.from_numpy(Q).cuda()).cpu().numpy()
    np.testing.assert_allclose(on_gpu, cpu.score_samples(Q), rtol=1e-7, atol=1e-7)


@cuda
def test_cuda_tf32_scoring_keeps_the_float64_auroc():
    X, y = classes(n=20_000, d=64, C=20, seed=3)
    model = OpenWorld(target_tpr=None, random_state=0).fit(X, y)
    inside = classes(n=4000, d=64, C=20, seed=3)[0]
    outside = classes(n=2000, d=64, C=20, seed=4)[0]  # other class means: out of distribution
    ref = auroc(model.score_samples(inside), model.score_samples(outside))
    to_gpu = lambda A: torch.from_numpy(A.astype(np.float32)).cuda()  # noqa: E731
    before = torch.backends.cuda.matmul.allow_tf32
    proba, scores = model.predict_proba_and_score(to_gpu(inside))
    assert torch.backends.cuda.matmul.allow_tf32 == before  # restored after the call
    got = auroc(scores.cpu().numpy(), model.score_samples(to_gpu(outside)).cpu().numpy())
    assert abs(got - ref) < 1e-4
    np.testing.assert_allclose(proba.cpu().numpy(), model.predict_proba(inside), atol=1e-2)


@pytest.mark.parametrize("group_rows", [40, 1000])
def test_padded_class_blocks_give_the_moments_of_their_definitions(group_rows):
    """The GPU path (device-agnostic torch code): classes of unequal sizes, empty ones first and last."""
    from openworld.core.statistics import _from_rows_padded

    rng = np.random.default_rng(5)
    y = np.concatenate([np.full(3, 1), np.full(37, 2), np.full(12, 4), np.full(1, 5)])
    rng.shuffle(y)
    X = rng.normal(size=(y.size, 7)) * 3 + 10
    C = 7  # classes 0, 3 and 6 have no rows
    got = _from_rows_padded(torch.from_numpy(X).float(), torch.from_numpy(y), torch.bincount(torch.from_numpy(y), minlength=C),
                            torch.float64, group_rows)
    X32 = X.astype(np.float32).astype(np.float64)
    for k in range(C):
        rows = X32[y == k]
        assert float(got.weights[k]) == len(rows)
        if not len(rows):
            assert float(got.scatters[k].abs().sum() + got.means[k].abs().sum() + got.third_moments[k].abs().sum()) == 0
            continue
        r = rows - rows.mean(0)
        sq = (r * r).sum(1)
        np.testing.assert_allclose(got.means[k].numpy(), rows.mean(0), rtol=1e-13)
        np.testing.assert_allclose(got.scatters[k].numpy(), r.T @ r, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(got.third_moments[k].numpy(), r.T @ sq, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(float(got.fourth_moments[k]), (sq * sq).sum(), rtol=1e-12)


# ---------------------------------------------------------------- the device parameter


def test_device_parameter_is_validated_and_a_saved_device_can_be_replaced(tmp_path):
    X, y = classes(n=400, d=5, C=3)
    with pytest.raises(ValueError, match="device must be"):
        OpenWorld(device="gpu").fit(X, y)
    model = OpenWorld(device="cpu", random_state=0).fit(X, y)
    model.save(tmp_path / "m.safetensors")
    assert OpenWorld.load(tmp_path / "m.safetensors").device == "cpu"
    assert OpenWorld.load(tmp_path / "m.safetensors", device=None).device is None
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            OpenWorld(device="cuda").fit(X, y)
        model.set_params(device="cuda")  # as if saved on a GPU machine
        model.save(tmp_path / "gpu.safetensors")
        with pytest.raises(ValueError, match="device=None"):
            OpenWorld.load(tmp_path / "gpu.safetensors")
        loaded = OpenWorld.load(tmp_path / "gpu.safetensors", device=None)
        np.testing.assert_array_equal(loaded.predict(X), model.set_params(device=None).predict(X))


def test_cli_device_option(tmp_path):
    from typer.testing import CliRunner

    from openworld.cli import app
    from openworld.io.tables import write_table

    X, y = classes(n=600, d=6, C=3)
    write_table(tmp_path / "train.parquet", {"embedding": X.astype(np.float32), "label": y})
    runner = CliRunner()
    fit = ["fit", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "m.safetensors"), "--no-progress"]
    score = ["score", str(tmp_path / "m.safetensors"), str(tmp_path / "train.parquet"), "-o", str(tmp_path / "out.parquet")]
    if not torch.cuda.is_available():
        result = runner.invoke(app, fit + ["--device", "cuda"])
        assert result.exit_code == 2 and "no CUDA device" in " ".join(result.output.split())  # rich wraps lines
        return
    assert runner.invoke(app, fit + ["--device", "cuda"]).exit_code == 0
    assert OpenWorld.load(tmp_path / "m.safetensors").device is None  # the file is portable
    assert runner.invoke(app, score + ["--device", "cuda"]).exit_code == 0
    import pyarrow.parquet as pq

    on_gpu = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert runner.invoke(app, score).exit_code == 0
    on_cpu = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert on_gpu["prediction"] == on_cpu["prediction"]
    np.testing.assert_allclose(on_gpu["score"], on_cpu["score"], rtol=1e-2, atol=1e-2 * np.abs(on_cpu["score"]).max())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_the_whole_lifecycle_on_tensors_of_a_device_equals_numpy(device):
    """fit, partial_fit with a new class, forget, unlearn and discover on torch tensors of ``device``."""
    from sklearn.metrics import adjusted_rand_score

    X, y = classes(n=4000, d=12, C=8, seed=7)
    on = lambda A: torch.from_numpy(A).to(device)  # noqa: E731
    first, added = y < 6, y == 6
    ref = OpenWorld(random_state=0).fit(X[first], y[first])
    dev = OpenWorld(random_state=0).fit(on(X[first]), y[first])
    ref.partial_fit(X[added], y[added])
    dev.partial_fit(on(X[added]), y[added])
    ref.forget([0])
    dev.forget([0])
    ref.unlearn(X[first][:40][y[first][:40] != 0], y[first][:40][y[first][:40] != 0])
    dev.unlearn(on(X[first][:40][y[first][:40] != 0]), y[first][:40][y[first][:40] != 0])
    np.testing.assert_array_equal(dev.classes_, ref.classes_)
    for name, value in ref.statistics_.as_dict().items():
        torch.testing.assert_close(getattr(dev.statistics_, name).cpu(), value, rtol=1e-9, atol=1e-9)
    unlabelled = np.vstack([X[added], X[y == 7], X[y == 1][:100]])  # a known class, an adopted one and a new one
    expected, got = ref.discover(unlabelled), dev.discover(on(unlabelled))
    assert got.n_new == expected.n_new >= 1
    assert adjusted_rand_score(expected.labels.astype(str), got.labels.astype(str)) > 0.95
    np.testing.assert_array_equal(dev.predict(on(X[:200])), ref.predict(X[:200]))

