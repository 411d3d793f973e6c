"""Fitting in chunks: equal to the in-memory fit, and constant memory on files larger than it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from openworld import OpenWorld
from openworld.io.tables import write_table


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=5000)
    X = rng.normal(size=(5000, 12)) + y[:, None] * 0.7
    return X, np.array([f"c{k}" for k in y])


@pytest.mark.parametrize("target_tpr", [None, 0.9])
def test_chunks_equal_one_fit_including_the_working_point(labelled, target_tpr):
    X, y = labelled
    whole = OpenWorld(target_tpr=target_tpr, random_state=3).fit(X, y)
    cuts = [0, 7, 1500, 1501, 4000, 5000]
    chunked = OpenWorld(target_tpr=target_tpr, random_state=3).fit_batches(
        (X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])
    )
    assert chunked.classes_.tolist() == whole.classes_.tolist()
    np.testing.assert_allclose(chunked.statistics_.scatters.numpy(), whole.statistics_.scatters.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(chunked.predict_proba(X), whole.predict_proba(X), rtol=1e-8, atol=1e-12)
    if target_tpr is not None:
        assert chunked.threshold_ == pytest.approx(whole.threshold_, rel=1e-9)
    assert (chunked.predict(X) == whole.predict(X)).all()


def test_a_class_met_only_in_a_later_chunk(labelled):
    X, y = labelled
    order = np.argsort(y, kind="stable")  # every chunk holds one or two classes only
    chunked = OpenWorld(target_tpr=None).fit_batches((X[order][i : i + 600], y[order][i : i + 600]) for i in range(0, 5000, 600))
    whole = OpenWorld(target_tpr=None).fit(X, y)
    np.testing.assert_allclose(chunked.predict_proba(X), whole.predict_proba(X), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    "second, message",
    [
        (np.zeros((5, 11)), "chunk 1: X has 11 features"),
        (np.full((5, 12), np.nan), "chunk 1: .*NaN"),
    ],
)
def test_a_bad_chunk_is_named(labelled, second, message):
    X, y = labelled
    with pytest.raises(ValueError, match=message):
        OpenWorld().fit_batches([(X[:100], y[:100]), (second, y[:5])])


def test_no_chunks_and_refused_settings_are_clear_errors(labelled):
    X, y = labelled
    with pytest.raises(ValueError, match="empty"):
        OpenWorld().fit_batches([])
    with pytest.raises(ValueError, match="components=1"):
        OpenWorld(components=2).fit_batches([(X, y)])


def test_cli_streams_parquet_and_equals_the_python_fit(tmp_path, labelled):
    from typer.testing import CliRunner

    from openworld.cli import app

    X, y = labelled
    write_table(tmp_path / "train.parquet", {"embedding": X, "label": y})
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    model = OpenWorld.load(tmp_path / "m.safetensors")
    reference = OpenWorld(random_state=0).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), rtol=1e-6, atol=1e-9)


# VmHWM is the peak resident set of this process image; ru_maxrss would survive exec and
# report the parent's (pytest's) peak instead.
PEAK_RSS_SCRIPT = """
import sys
from openworld.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(int(peak.split()[1]) * 1024)
"""


def write_npy(path, n_rows, d, seed):
    """A float32 .npy of n_rows × d written in pieces, so the test itself stays small in memory."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, d))
    rng = np.random.default_rng(seed)
    for start in range(0, n_rows, 262144):
        stop = min(n_rows, start + 262144)
        out[start:stop] = rng.normal(size=(stop - start, d)).astype(np.float32)
    out.flush()
    del out


def peak_rss_of_fit(data, model_path):
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, "fit", str(data), "-o", str(model_path), "--no-progress"],
        capture_output=True, text=True, check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    d = 128
    small, large = tmp_path / "small.npy", tmp_path / "large.npy"
    write_npy(small, (512 * 2**20) // (4 * d), d, seed=1)   # 0.5 GiB
    write_npy(large, (2048 * 2**20) // (4 * d), d, seed=2)  # 2 GiB
    rss_small = peak_rss_of_fit(small, tmp_path / "s.safetensors")
    rss_large = peak_rss_of_fit(large, tmp_path / "l.safetensors")
    print(json.dumps({"peak_rss_small_mb": rss_small / 2**20, "peak_rss_large_mb": rss_large / 2**20}))
    assert rss_large - rss_small < 64 * 2**20
    assert rss_large < 2**30
    # The streamed model equals the in-memory fit of the same rows (checked on the small file).
    X = np.load(small)
    streamed = OpenWorld.load(tmp_path / "s.safetensors")
    reference = OpenWorld(random_state=0).fit(X)
    np.testing.assert_allclose(
        streamed.statistics_.scatters.numpy(), reference.statistics_.scatters.numpy(), rtol=1e-7, atol=1e-6
    )
    np.testing.assert_allclose(streamed.score_samples(X[:1000]), reference.score_samples(X[:1000]), rtol=1e-5)


def test_chunks_of_no_rows_are_skipped_and_unlabelled_chunks_cannot_mix_with_labelled_ones(labelled):
    X, y = labelled
    whole = OpenWorld(random_state=0).fit(X, y)
    with_empty = OpenWorld(random_state=0).fit_batches([(X[:0], y[:0]), (X, y), (X[:0], y[:0])])
    np.testing.assert_allclose(with_empty.score_samples(X), whole.score_samples(X), rtol=1e-12)
    assert with_empty.threshold_ == whole.threshold_
    with pytest.raises(ValueError, match="chunk 1: labels change type"):
        OpenWorld().fit_batches([(X[:100], y[:100]), (X[100:200], np.arange(100))])
    with pytest.raises(ValueError, match="chunk 1: y is None in some chunks"):
        OpenWorld().fit_batches([(X[:100], y[:100]), (X[100:200], None)])
    with pytest.raises(ValueError, match=r"^Input contains NaN"):  # one fit names no chunk
        OpenWorld().fit(np.full((3, 2), np.nan))


def test_errors_name_the_chunk_and_the_row():
    rng = np.random.default_rng(0)
    X, y, w = rng.normal(size=(10, 3)), np.repeat([0.0, 1.0], 5), np.ones(10)
    bad_label, bad_weight = y.copy(), w.copy()
    bad_label[7], bad_weight[7] = np.nan, np.nan
    for chunks, message in [
        ([(X, y), (X, bad_label)], r"chunk 1: y contains NaN .*row 7"),
        ([(X, y, w), (X, y, bad_weight)], r"chunk 1: sample_weight .*row 7"),
        ([(X, y), (X, y, w, w)], r"chunk 1: expected \(X,\), \(X, y\) or \(X, y, sample_weight\), got tuple of 4"),
        ([(X, y), None], r"chunk 1: expected .* got NoneType"),
    ]:
        with pytest.raises(ValueError, match=message):
            OpenWorld().fit_batches(chunks)


@pytest.mark.parametrize("in_place", [False, True])
def test_merging_chunk_states_equals_the_statistics_of_all_rows(in_place):
    """LabelledStatistics.merge, in place or not, against from_rows of the union (float64 sums of every row):
    chunks holding every class, a few classes out of order, and classes new to the state; the chunk merged in
    is never written, nor is the state when not in place."""
    import torch

    from openworld.core.accumulator import LabelledStatistics

    rng = np.random.default_rng(4)
    X = torch.as_tensor(rng.normal(size=(400, 5)) * 3 + 1)
    y = rng.choice(np.array(["a", "b", "c", "d", "e"]), 400)
    y[:220] = rng.choice(np.array(["a", "b", "c"]), 220)  # d and e first appear in a later chunk
    chunks = [slice(0, 100), slice(100, 220), slice(220, 260), slice(260, 400)]
    chunks_labels = [LabelledStatistics.from_rows(X[c], y[c]) for c in chunks]
    last = LabelledStatistics.from_rows(X[260:400][y[260:400] == "b"], y[260:400][y[260:400] == "b"])
    states = [*chunks_labels, last]  # the last: one class, not first in the state's order
    reference = LabelledStatistics.from_rows(torch.cat([X, X[260:400][y[260:400] == "b"]]),
                                             np.concatenate([y, y[260:400][y[260:400] == "b"]])).sorted()
    state = states[0]
    for part in states[1:]:
        before_part = {k: v.clone() for k, v in part.statistics.as_dict().items()}
        before_state = {k: v.clone() for k, v in state.statistics.as_dict().items()}
        merged = state.merge(part, in_place=in_place)
        for key, value in part.statistics.as_dict().items():
            assert torch.equal(value, before_part[key]), key
        if not in_place:
            for key, value in state.statistics.as_dict().items():
                assert torch.equal(value, before_state[key]), key
        else:  # a state written over keeps no stale cached sum of its scatters
            torch.testing.assert_close(state.statistics.pooled_within()[0], state.statistics.scatters.sum(0))
        state = merged
    state = state.sorted()
    assert state.labels.tolist() == reference.labels.tolist()
    for key, value in reference.statistics.as_dict().items():
        torch.testing.assert_close(state.statistics.as_dict()[key], value, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(state.statistics.pooled_within()[0], reference.statistics.scatters.sum(0),
                               rtol=1e-10, atol=1e-9)  # no stale cached sum of the scatters
