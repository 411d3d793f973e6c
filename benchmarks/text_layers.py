"""Which hidden states the bundled text encoder pools: the choice behind ``TextEncoder``'s default ``layers``.

``make bench-text-layers`` regenerates ``docs/text-encoder.md``. One forward pass of
all-MiniLM-L6-v2 over CLINC150 (full) and HWU64 gives every hidden state's mean pool
(:meth:`TextEncoder.layer_pools`); each candidate choice of layers is their mean,
L2-normalised (what ``TextEncoder(layers=...)`` returns). For each candidate,
openworld's covariance ensemble (the configuration ``make bench-quality`` picks on
every text dataset) and ``OpenWorld()``'s default score are fitted and scored on the
validation splits (CLINC150's ``val``/``oos_val``; the open-set protocol's inner
validation, built from training rows only, as in ``benchmarks.quality``) and on the
test splits. The choice is the candidate with the best mean validation AUROC of the
ensemble over the three groups; test figures are only reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_WORK = Path(".cache") / "bench"
DEFAULT_OUT = Path("docs") / "text-encoder.md"
#: Candidate hidden states to pool (0 = token embeddings, 6 = last layer = sentence-transformers).
CANDIDATES = ((6,), (5, 6), (4, 5, 6), (3, 4, 5, 6), (1, 2, 3, 4, 5, 6))
SCORES = {"covariance_ensemble": {"score": "covariance_ensemble"}, "OpenWorld() default": {}}
SELECTING = "covariance_ensemble"
GROUP_NAMES = {"clinc-full": "CLINC150 full", "clinc-openset": "CLINC150 open-set (3 seeds)",
               "hwu64-openset": "HWU64 open-set (3 seeds)"}


def layer_pools(work: Path) -> tuple[dict[str, int], np.ndarray, float]:
    """(text → row, pools (7, n, 384), seconds) over the union of CLINC150 full's and HWU64's texts, cached."""
    from openworld.datasets.clinc150 import load_clinc150
    from openworld.datasets.hwu64 import load_hwu64
    from openworld.encoders.text import TextEncoder, cache_key

    clinc, hwu = load_clinc150("full"), load_hwu64()
    texts = {t for split in clinc.values() for t in split[0]} | {t for split in hwu.values() for t in split[0]}
    vocabulary = sorted(texts)
    path = work / f"layer-pools-{cache_key('layer-pools', vocabulary)[:16]}.npy"
    start = time.perf_counter()
    if path.is_file():
        pools = np.load(path, allow_pickle=False)
    else:
        pools = TextEncoder().layer_pools(vocabulary)
        work.mkdir(parents=True, exist_ok=True)
        np.save(path, pools, allow_pickle=False)
    return {t: i for i, t in enumerate(vocabulary)}, pools, time.perf_counter() - start


def tasks(row: dict[str, int], vectors: np.ndarray):
    """(group, {stage: (fit X, fit y, ID X, ID y, OOD X)}) for CLINC150 full and both open-set protocols."""
    from benchmarks.quality import OPEN_SET_SEEDS, open_set_task
    from openworld.datasets.clinc150 import load_clinc150
    from openworld.datasets.hwu64 import load_hwu64

    def embed(texts):
        return vectors[[row[t] for t in texts]]

    clinc = load_clinc150("full")
    fit = (embed(clinc["train"][0]), np.asarray(clinc["train"][1]))
    yield "clinc-full", {
        "val": fit + (embed(clinc["val"][0]), np.asarray(clinc["val"][1]), embed(clinc["oos_val"][0])),
        "test": fit + (embed(clinc["test"][0]), np.asarray(clinc["test"][1]), embed(clinc["oos_test"][0])),
    }
    for group, data in (("clinc-openset", clinc), ("hwu64-openset", load_hwu64())):
        for seed in OPEN_SET_SEEDS:
            arrays, _ = open_set_task(embed(data["train"][0]), np.asarray(data["train"][1]),
                                      embed(data["test"][0]), np.asarray(data["test"][1]), seed)
            yield group, {stage: (arrays[f"{fit_key}_X"], arrays[f"{fit_key}_y"], arrays[f"{stage}_in_X"],
                                  arrays[f"{stage}_in_y"], arrays[f"{stage}_out_X"])
                          for stage, fit_key in (("val", "vfit"), ("test", "fit"))}


def evaluate(layers: tuple[int, ...], row, pools) -> dict:
    """{(group, score, stage): [AUROC per task]} and {(group, stage): [closed-set accuracy]} for one candidate."""
    from openworld import OpenWorld
    from openworld.core.metrics import auroc

    pooled = pools[list(layers)].mean(0)
    vectors = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
    aurocs, accuracy = {}, {}
    for group, stages in tasks(row, vectors):
        for stage, (X, y, X_in, y_in, X_out) in stages.items():
            for name, params in SCORES.items():
                model = OpenWorld(random_state=0, **params).fit(X, y)
                aurocs.setdefault((group, name, stage), []).append(
                    auroc(model.score_samples(X_in), model.score_samples(X_out)))
                if name == "OpenWorld() default":
                    predicted = model.classes_[model.decision_function(X_in).argmax(1)]
                    accuracy.setdefault((group, stage), []).append(float((predicted == y_in).mean()))
    return {"auroc": aurocs, "accuracy": accuracy}


def render(results: dict, seconds: dict, argv: list[str]) -> str:
    import torch

    import openworld
    from openworld.encoders.text import DEFAULT_LAYERS

    def mean(values):
        return float(np.mean(values))

    selection = {layers: mean([mean(r["auroc"][(g, SELECTING, "val")]) for g in GROUP_NAMES])
                 for layers, r in results.items()}
    chosen = max(selection, key=selection.get)
    verdict = ("the same" if chosen == tuple(DEFAULT_LAYERS)
               else "not this run's choice: update DEFAULT_LAYERS in openworld/encoders/text.py")
    name = {layers: ", ".join(map(str, layers)) + (" (sentence-transformers)" if layers == (6,) else "")
            for layers in results}
    lines = [
        "# Text encoder: which hidden states to pool",
        "",
        "Generated by `make bench-text-layers` (`benchmarks/text_layers.py`); do not edit by hand. "
        "The bundled all-MiniLM-L6-v2 gives a vector per text as the mean, over its tokens and over the chosen "
        "hidden states (`TextEncoder(layers=...)`; 0 = token embeddings, 6 = last layer), L2-normalised. "
        "`layers=(6,)` is sentence-transformers' own vector. Each candidate is scored by openworld's covariance "
        "ensemble (what `make bench-quality` picks on every text dataset) and by `OpenWorld()`'s default score, "
        "on the **validation** splits (CLINC150's `val`/`oos_val`; for the open-set protocol, rows held out of "
        "the known classes' training rows with a nested 25% of those classes as pseudo-unknown, as in "
        "`benchmarks/quality.py`) and on the test splits. The choice is the best mean validation AUROC of the "
        f"ensemble over the three groups; test figures are only reported.",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; hidden-state pools "
        f"{seconds['pools']:.0f} s (0 when cached), evaluation {seconds['evaluate'] / 60:.1f} min",
        f"- Command: `make bench-text-layers`, i.e. `{' '.join(['.venv/bin/python -m benchmarks.text_layers'] + argv)}`",
        f"- Versions: openworld {openworld.__version__}, torch {torch.__version__}, Python {platform.python_version()}; "
        f"torch threads: {torch.get_num_threads()}",
        f"- **Chosen on validation: layers ({name[chosen]})**; `TextEncoder`'s default is layers {DEFAULT_LAYERS} "
        f"({verdict}).",
        "",
        "## AUROC (validation / test), in-distribution positive",
        "",
        "| layers | " + " | ".join(f"{GROUP_NAMES[g]} · {s}" for g in GROUP_NAMES for s in SCORES)
        + f" | mean val ({SELECTING}) |",
        "| --- | " + " | ".join("---" for _ in GROUP_NAMES for _ in SCORES) + " | --- |",
    ]
    for layers, r in results.items():
        cells = [f"{mean(r['auroc'][(g, s, 'val')]):.4f} / {mean(r['auroc'][(g, s, 'test')]):.4f}"
                 for g in GROUP_NAMES for s in SCORES]
        mark = "**" if layers == chosen else ""
        lines.append(f"| {mark}{name[layers]}{mark} | " + " | ".join(cells) + f" | {mark}{selection[layers]:.4f}{mark} |")
    lines += [
        "",
        "## Closed-set accuracy of `OpenWorld()` (validation / test)",
        "",
        "| layers | " + " | ".join(GROUP_NAMES.values()) + " |",
        "| --- | " + " | ".join("---" for _ in GROUP_NAMES) + " |",
    ]
    for layers, r in results.items():
        lines.append(f"| {name[layers]} | " + " | ".join(
            f"{mean(r['accuracy'][(g, 'val')]):.3f} / {mean(r['accuracy'][(g, 'test')]):.3f}" for g in GROUP_NAMES) + " |")
    lines += [
        "",
        "Open-set rows are means over seeds 0, 1, 2 (`open_set_split(labels, 0.25, seed)`). "
        "The full comparison with every other method, on the default encoder, is in [benchmarks.md](benchmarks.md).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache folder for the hidden-state pools")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    row, pools, pool_seconds = layer_pools(args.work)
    start = time.perf_counter()
    results = {}
    for layers in CANDIDATES:
        results[layers] = evaluate(layers, row, pools)
        print(f"layers {layers}: done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    seconds = {"pools": pool_seconds, "evaluate": time.perf_counter() - start}
    args.out.write_text(render(results, seconds, sys.argv[1:] if argv is None else list(argv)))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
