"""Detection quality of openworld against its baselines and peer libraries, on the same embeddings.

``make bench-quality`` runs three steps and regenerates ``docs/benchmarks.md``::

    .venv/bin/python -m benchmarks.quality prepare          # step 1, this environment
    bench-env/bin/python -m benchmarks.peers_pytorch_ood    # step 2, pytorch-ood's environment
    .venv/bin/python -m benchmarks.quality report           # step 3, metrics and the document

Step 1 embeds every dataset (cached by :func:`openworld.encoders.text.embed_texts`),
builds every split, fits the logistic-regression heads the logit baselines share,
and scores openworld's configurations, :mod:`openworld.evaluation.baselines` and
scikit-learn's LDA/QDA; it writes the embeddings and splits as ``.npz`` into the
work folder (``.cache/bench`` by default) for step 2, which runs pytorch-ood's
detectors on exactly those arrays. Step 3 computes every metric with
:mod:`openworld.core.metrics` and writes the document.

Hyper-parameters are chosen on validation only: each method's grid is scored on
the ``val`` stage (CLINC150's ``val``/``oos_val``; for the open-set protocol, rows
held out of the known classes' training rows, with a nested 25% of the known
classes as pseudo-unknown; MNIST-5k's own validation rows), and the setting with
the best validation AUROC is the one whose test figures are reported.
"""

from __future__ import annotations

import os

# Every step runs single-threaded (torch, MKL, OpenBLAS, faiss's OpenMP), set before NumPy and torch
# load; export the variables to override. Times then compare like with like and do not depend on what
# else runs on the machine: on a shared 2-core CPU, two threads made scikit-learn's QDA fit take 340 s
# instead of 3 s (OpenBLAS eigh), a logistic regression 23 s instead of 1.7 s, and openworld's
# mixture fit 42 s instead of 15 s, while large GEMMs gained at most 2×.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
for _variable in THREAD_VARIABLES:
    os.environ.setdefault(_variable, "1")

import argparse
import datetime as dt
import itertools
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.store import (
    STAGES,
    Clock,
    ScoreWriter,
    load_scores,
    load_task,
    read_manifest,
    save_task,
    setting_label,
    update_manifest,
)

DEFAULT_WORK = Path(".cache") / "bench"
DEFAULT_OUT = Path("docs") / "benchmarks.md"

OPEN_SET_SEEDS = (0, 1, 2)
MNIST_SEEDS = (0, 1, 2)
UNKNOWN_SHARE = 0.25  # of the classes, in the open-set protocol (and again, nested, for its validation)
HOLDOUT_SHARE = 0.2  # of the known classes' training rows, held out as open-set validation
MNIST_KNOWN = 6  # digits 0..5 known, 6..9 unknown
MNIST_TEST_SHARE, MNIST_VAL_SHARE = 0.2, 0.25  # 20% test, then 25% of the rest (20% of all) validation
CNN_EPOCHS = 8

COVARIANCES = ("tied", "full", "diag")
#: Scores whose OOD score ignores ``covariance`` (it only changes their accuracy), and the structures they run with.
SCORE_COVARIANCES = {
    "low_variance_mahalanobis": ("tied",),  # whitens with the pooled covariance whatever the structure
    # Sums every structure's score whatever `covariance` is, which sets only its posteriors: the structures tie on
    # validation AUROC and validation accuracy decides between them (see `validation_rank`).
    "covariance_ensemble": COVARIANCES,
}
#: Hyper-parameters of openworld scores, chosen on validation like every other.
SCORE_GRIDS = {"low_variance_mahalanobis": {"dropped_variance": (0.1, 0.25, 0.5, 0.75, 0.9)},
               # A fixed intensity shrinks the tied covariance toward μI and each class's toward the tied one.
               "covariance_ensemble": {"shrinkage": ("auto", 0.45, 0.6, 0.75)}}
LR_C_GRID = (1.0, 10.0, 100.0)
KNN_K_GRID = (1, 5, 10, 20, 50, 100, 200)
VIM_DIM_SHARES = (0.125, 0.25, 0.5, 0.75)  # principal-subspace dimension D as a share of d (ViM's "auto" = 0.5 below 768)
QDA_SHRINKAGE_GRID = (0.5, 0.8, 0.95, 0.99)
MIXTURES = True  # components="auto" rows (EM per class; the slowest openworld fits)

FAMILY_OPENWORLD = "openworld"
FAMILY_BASELINES = "openworld baselines"
FAMILY_SKLEARN = "scikit-learn"
FAMILY_PYTORCH_OOD = "pytorch-ood"

# ---------------------------------------------------------------------------------------------- groups

#: Report groups: name → (description, task name prefix). Tasks of one group (seeds) are averaged.
GROUPS = {
    "clinc-full": ("CLINC150 full", "in-scope `train` (150 intents) · ID test `test` · OOD `oos_test` · val `val`/`oos_val`"),
    "clinc-imbalanced": ("CLINC150 imbalanced", "as full, on `data_imbalanced.json`"),
    "clinc-small": ("CLINC150 small", "as full, on `data_small.json` (50 training queries per intent)"),
    "clinc-openset": ("CLINC150 open-set", "25% of the 150 in-scope intents unknown (seeds 0, 1, 2); test = all in-scope `test` rows"),
    "hwu64-openset": ("HWU64 open-set", "25% of the 64 intents unknown (seeds 0, 1, 2); test = all `test` rows"),
    "mnist5k": ("MNIST-5k", "digits 0–5 known, 6–9 unknown; SmallCNN trained on known training rows only (seeds 0, 1, 2)"),
}


# ================================================================================== step 1: prepare


def _encode(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Labels → ints 0..K-1 in the (sorted) order of ``classes``."""
    index = np.searchsorted(classes, labels)
    if not np.array_equal(classes[np.minimum(index, classes.size - 1)], labels):
        raise ValueError("labels outside the classes")
    return index.astype(np.int64)


def _stage_arrays(fit_X, fit_labels, in_X, in_labels, out_X, prefix: str, fit_prefix: str) -> dict:
    classes = np.unique(fit_labels)
    return {
        f"{fit_prefix}_X": np.ascontiguousarray(fit_X, dtype=np.float32),
        f"{fit_prefix}_y": _encode(fit_labels, classes),
        f"{prefix}_in_X": np.ascontiguousarray(in_X, dtype=np.float32),
        f"{prefix}_in_y": _encode(in_labels, classes),
        f"{prefix}_out_X": np.ascontiguousarray(out_X, dtype=np.float32),
    }


EMBED_SECONDS: dict[str, float] = {}  # wall seconds of each embedding call (near 0 when cached)
FINE_TUNE_SECONDS: dict[str, float] = {}  # wall seconds of each encoder fine-tuning (absent when its weights were kept)
FINE_TUNE_EPOCHS = 2  # fine_tune_text_encoder's default recipe, fixed before any run (not tuned on these sets)
# Fine-tuning and embedding use both cores (their time is not compared with anything); with other work on
# the machine, one thread each wastes less (OPENWORLD_FINE_TUNE_THREADS).
FINE_TUNE_THREADS = int(os.environ.get("OPENWORLD_FINE_TUNE_THREADS", "2"))


def _embed_all(texts_by_key: dict[str, list[str]], clock: Clock, what: str) -> dict[str, np.ndarray]:
    """Embed the union of all texts once (cached), then index each list into it."""
    from openworld.encoders.text import embed_texts

    vocabulary = sorted({t for texts in texts_by_key.values() for t in texts})
    clock.log(f"embedding {what}: {len(vocabulary):,} distinct texts (cached after the first run)")
    start = time.perf_counter()
    vectors = embed_texts(vocabulary)
    EMBED_SECONDS[what] = time.perf_counter() - start
    position = {t: i for i, t in enumerate(vocabulary)}
    return {key: vectors[[position[t] for t in texts]] for key, texts in texts_by_key.items()}


def clinc_tasks(clock: Clock):
    """CLINC150 full / imbalanced / small with its own validation split, then the open-set protocol."""
    from openworld.datasets.clinc150 import load_clinc150

    # "full" is the copy bundled with openworld; the others are read from ../shared/data/clinc150.
    variants = {variant: load_clinc150(variant) for variant in ("full", "imbalanced", "small")}
    splits = ("train", "val", "test", "oos_val", "oos_test")
    texts = {f"{v}/{s}": data[s][0] for v, data in variants.items() for s in splits}
    emb = _embed_all(texts, clock, "CLINC150 (full, imbalanced, small)")
    for variant, data in variants.items():
        lab = {s: data[s][1] for s in splits}
        arrays = _stage_arrays(emb[f"{variant}/train"], lab["train"], emb[f"{variant}/test"], lab["test"],
                               emb[f"{variant}/oos_test"], "test", "fit")
        arrays.update({
            "val_in_X": emb[f"{variant}/val"].astype(np.float32),
            "val_in_y": _encode(lab["val"], np.unique(lab["train"])),
            "val_out_X": emb[f"{variant}/oos_val"].astype(np.float32),
        })
        meta = {"group": f"clinc-{variant}", "dataset": f"CLINC150 {variant}", "seed": None, "same_fit": True}
        yield f"clinc-{variant}", meta, arrays, None
    full = variants["full"]
    for seed in OPEN_SET_SEEDS:
        arrays, meta = open_set_task(emb["full/train"], full["train"][1], emb["full/test"], full["test"][1], seed)
        yield f"clinc-openset-s{seed}", {"group": "clinc-openset", "dataset": "CLINC150 open-set", **meta}, arrays, None


def hwu64_tasks(clock: Clock):
    from openworld.datasets.hwu64 import load_hwu64

    data = load_hwu64()
    emb = _embed_all({s: data[s][0] for s in ("train", "test")}, clock, "HWU64")
    for seed in OPEN_SET_SEEDS:
        arrays, meta = open_set_task(emb["train"], data["train"][1], emb["test"], data["test"][1], seed)
        yield f"hwu64-openset-s{seed}", {"group": "hwu64-openset", "dataset": "HWU64 open-set", **meta}, arrays, None


def open_set_rows(y_train, y_test, seed: int) -> tuple[dict, dict]:
    """The open-set protocol's rows: a seeded 25% of the classes unknown; validation from training rows only.

    Test: fit on the known classes' training rows (``known``); every test row of
    another class is OOD (``test_known`` marks the others). Validation: hold
    ``HOLDOUT_SHARE`` of the known classes' training rows out (stratified), split
    the known classes again (nested 25% pseudo-unknown), fit on the remaining
    training rows of the pseudo-known classes (``vfit``), and score the held-out
    rows: pseudo-known ones (``val_in``) are ID, pseudo-unknown ones (``val_out``)
    OOD. ``vfit`` / ``val_in`` / ``val_out`` index the known rows.
    """
    from openworld.evaluation.protocols import holdout_split, open_set_split

    known, unknown = open_set_split(y_train, UNKNOWN_SHARE, seed)
    k_rows = np.flatnonzero(np.isin(y_train, known))
    yk = np.asarray(y_train)[k_rows]
    inner, held = holdout_split(yk, HOLDOUT_SHARE, seed)
    pseudo_known, pseudo_unknown = open_set_split(known, UNKNOWN_SHARE, seed)
    rows = {"known": k_rows, "test_known": np.isin(y_test, known),
            "vfit": inner[np.isin(yk[inner], pseudo_known)], "val_in": held[np.isin(yk[held], pseudo_known)],
            "val_out": held[np.isin(yk[held], pseudo_unknown)]}
    meta = {"seed": seed, "same_fit": False, "n_known": int(known.size),
            "n_unknown": int(unknown.size), "n_pseudo_known": int(pseudo_known.size),
            "n_pseudo_unknown": int(pseudo_unknown.size)}
    return rows, meta


def open_set_task(X_train, y_train, X_test, y_test, seed: int, X_known_val=None) -> tuple[dict, dict]:
    """Arrays of the open-set protocol (:func:`open_set_rows`). ``X_known_val``: the known training rows as
    the validation stage sees them (a fine-tuned run embeds them with an encoder tuned on ``vfit`` only)."""
    rows, meta = open_set_rows(y_train, y_test, seed)
    Xk, yk = X_train[rows["known"]], np.asarray(y_train)[rows["known"]]
    tk = rows["test_known"]
    arrays = _stage_arrays(Xk, yk, X_test[tk], y_test[tk], X_test[~tk], "test", "fit")
    Xv = Xk if X_known_val is None else X_known_val
    fit, held_in, held_out = rows["vfit"], rows["val_in"], rows["val_out"]
    arrays.update(_stage_arrays(Xv[fit], yk[fit], Xv[held_in], yk[held_in], Xv[held_out], "val", "vfit"))
    return arrays, meta


# ------------------------------------------------------------------------------ fine-tuned encoders


def _fine_tuned(work: Path, key: str, texts, labels, seed: int, clock: Clock):
    """The bundled encoder fine-tuned on (texts, labels) (the fit rows of one stage); weights kept under
    ``work/encoders`` by a digest of the rows, labels and recipe, so a re-run skips the training."""
    from openworld.encoders.text import TextEncoder, cache_key, fine_tune_text_encoder

    recipe = {"epochs": FINE_TUNE_EPOCHS, "seed": seed}
    digest = cache_key(f"fine-tune {sorted(recipe.items())}", [*texts, *map(str, labels)])[:16]
    path = work / "encoders" / f"{key}-{digest}.safetensors"
    if path.is_file():
        return TextEncoder.load(path, progress=False)
    start = time.perf_counter()
    encoder = fine_tune_text_encoder(texts, labels, epochs=FINE_TUNE_EPOCHS, seed=seed,
                                     num_threads=FINE_TUNE_THREADS, progress=False)
    seconds = time.perf_counter() - start
    FINE_TUNE_SECONDS[key] = seconds
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.save(path)
    clock.log(f"{key}: encoder fine-tuned on {len(texts):,} texts in {seconds:.0f} s")
    return encoder


def _embed_with(encoder, texts, threads=FINE_TUNE_THREADS) -> np.ndarray:
    import torch

    from openworld.encoders.text import embed_texts

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return embed_texts(list(texts), encoder=encoder, progress=False)
    finally:
        torch.set_num_threads(before)


def fine_tuned_clinc_tasks(clock: Clock, work: Path):
    """CLINC150 full and its open-set protocol, each stage embedded by an encoder fine-tuned on its fit rows."""
    from openworld.datasets.clinc150 import load_clinc150

    data = load_clinc150("full")
    splits = ("train", "val", "test", "oos_val", "oos_test")
    encoder = _fine_tuned(work, "clinc-full", data["train"][0], data["train"][1], 0, clock)
    emb = {s: _embed_with(encoder, data[s][0]) for s in splits}
    lab = {s: np.asarray(data[s][1]) for s in splits}
    arrays = _stage_arrays(emb["train"], lab["train"], emb["test"], lab["test"], emb["oos_test"], "test", "fit")
    arrays.update({"val_in_X": emb["val"], "val_in_y": _encode(lab["val"], np.unique(lab["train"])),
                   "val_out_X": emb["oos_val"]})
    yield "clinc-full", {"group": "clinc-full", "dataset": "CLINC150 full", "seed": None, "same_fit": True}, arrays, None
    yield from _fine_tuned_open_set("clinc", "clinc-openset", "CLINC150 open-set", data["train"], data["test"], clock, work)


def fine_tuned_hwu64_tasks(clock: Clock, work: Path):
    from openworld.datasets.hwu64 import load_hwu64

    data = load_hwu64()
    yield from _fine_tuned_open_set("hwu64", "hwu64-openset", "HWU64 open-set", data["train"], data["test"], clock, work)


def _fine_tuned_open_set(source, group, dataset, train, test, clock, work):
    """Per seed: a test encoder fine-tuned on the known classes' training rows, and a validation encoder
    fine-tuned on the validation stage's fit rows only (its pseudo-unknown classes stay unseen)."""
    train_texts, y_train = np.asarray(train[0], dtype=object), np.asarray(train[1])
    test_texts, y_test = list(test[0]), np.asarray(test[1])
    for seed in OPEN_SET_SEEDS:
        rows, _ = open_set_rows(y_train, y_test, seed)
        known_texts, known_labels = train_texts[rows["known"]], y_train[rows["known"]]
        test_encoder = _fine_tuned(work, f"{source}-openset-s{seed}-test", list(known_texts), known_labels, seed, clock)
        val_encoder = _fine_tuned(work, f"{source}-openset-s{seed}-val", list(known_texts[rows["vfit"]]),
                                  known_labels[rows["vfit"]], seed, clock)
        X_train = np.zeros((len(train_texts), test_encoder.dimension), np.float32)
        X_train[rows["known"]] = _embed_with(test_encoder, known_texts)
        arrays, meta = open_set_task(X_train, y_train, _embed_with(test_encoder, test_texts), y_test, seed,
                                     X_known_val=_embed_with(val_encoder, known_texts))
        yield f"{group}-s{seed}", {"group": group, "dataset": dataset, **meta}, arrays, None


def mnist_tasks(clock: Clock):
    """MNIST-5k: stratified train/val/test rows; a SmallCNN trained on the known digits' training rows."""
    import torch

    from openworld.datasets.mnist5k import load_mnist5k
    from openworld.encoders.image import TorchEncoder, train_small_cnn
    from openworld.evaluation.protocols import holdout_split

    images, labels = load_mnist5k()
    for seed in MNIST_SEEDS:
        rest, test = holdout_split(labels, MNIST_TEST_SHARE, seed)
        inner, val = holdout_split(labels[rest], MNIST_VAL_SHARE, seed)
        train, val = rest[inner], rest[val]
        known = labels < MNIST_KNOWN
        fit_rows = train[known[train]]
        start = time.perf_counter()
        cnn = train_small_cnn(images[fit_rows], labels[fit_rows], epochs=CNN_EPOCHS, seed=seed)
        cnn_s = time.perf_counter() - start
        encoder = TorchEncoder(cnn.backbone, progress=False, name=f"mnist5k-smallcnn-seed{seed}")
        Z = encoder.encode(images)
        clock.log(f"MNIST-5k seed {seed}: SmallCNN trained on {fit_rows.size} images in {cnn_s:.1f} s, "
                  f"features {Z.shape[1]}-d")
        arrays = _stage_arrays(Z[fit_rows], labels[fit_rows], Z[test[known[test]]], labels[test[known[test]]],
                               Z[test[~known[test]]], "test", "fit")
        arrays.update({
            "val_in_X": Z[val[known[val]]],
            "val_in_y": _encode(labels[val[known[val]]], np.arange(MNIST_KNOWN)),
            "val_out_X": Z[val[~known[val]]],
        })
        with torch.no_grad():
            cnn_head = (cnn.head.weight.detach().double().numpy(), cnn.head.bias.detach().double().numpy())
        meta = {"group": "mnist5k", "dataset": "MNIST-5k", "seed": seed, "same_fit": True,
                "cnn_train_s": cnn_s, "cnn_epochs": CNN_EPOCHS}
        yield f"mnist5k-s{seed}", meta, arrays, cnn_head


# ---------------------------------------------------------------------------------------------- heads


class _FittedHead:
    """A fitted logistic regression, or a network's own linear layer dressed as one (coef_, intercept_, classes_)."""

    def __init__(self, W, b, n_classes):
        self.coef_, self.intercept_ = np.asarray(W, float), np.asarray(b, float)
        self.classes_ = np.arange(n_classes)


def fit_heads(X, y, cnn_head=None) -> list[tuple[str, object, float]]:
    """``[(name, head, fit seconds)]``: one multinomial logistic regression per C, plus the CNN's own head."""
    from sklearn.linear_model import LogisticRegression

    heads = []
    for C in LR_C_GRID:
        start = time.perf_counter()
        head = LogisticRegression(C=C, max_iter=1000).fit(X, y)
        heads.append((f"LR(C={C:g})", head, time.perf_counter() - start))
    if cnn_head is not None:
        heads.append(("CNN", _FittedHead(*cnn_head, n_classes=int(y.max()) + 1), 0.0))
    return heads


# ---------------------------------------------------------------------------------------------- scoring


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _score_both(score, X_in, X_out):
    s_in, t_in = _timed(score, X_in)
    s_out, t_out = _timed(score, X_out)
    return np.asarray(s_in, float), np.asarray(s_out, float), t_in + t_out


def _classify(proba) -> tuple[np.ndarray, np.ndarray]:
    proba = np.asarray(proba, float)
    return proba.argmax(1), proba.max(1)


def openworld_configs(task) -> list[tuple[str, dict, dict]]:
    """``[(method, setting, OpenWorld kwargs)]``: every score × covariance (× its grid), mixtures, the default."""
    from openworld.core.scores import SCORES

    configs = []
    for score in SCORES:
        grid = SCORE_GRIDS.get(score, {})
        settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
        for covariance in SCORE_COVARIANCES.get(score, COVARIANCES):
            for setting in settings:
                configs.append((f"{score} · {covariance}", setting,
                                dict(score=score, covariance=covariance, target_tpr=None, **setting)))
    if MIXTURES:
        for score in ("likelihood", "mahalanobis"):
            if score in SCORES:
                configs.append((f"{score} · tied · components=auto", {},
                                dict(score=score, covariance="tied", components="auto", target_tpr=None, random_state=0)))
    configs.append(("OpenWorld() default", {}, dict(random_state=0)))
    return configs


def stage_models(task, stage, fit, writer, *, method, family, setting, make, score_fn, classify_fn=None,
                 extra_fn=None, fit_extra_s=0.0, proba_fn=None):
    """Fit ``make()`` on ``stage``'s fit set and record its scores (both stages when the fit is shared).

    Classification (``classify_fn``) runs on both stages: validation accuracy breaks ties in
    validation AUROC (scores that differ only in their posteriors); ``extra_fn`` runs on test rows
    only. With ``proba_fn`` the score is the highest posterior, and one ``predict_proba`` pass
    gives score and class alike.
    """
    X, y = task.fit_set(stage)
    model, fit_s = _timed(lambda: fit(make(), X, y))
    stages = STAGES if task.same_fit else (stage,)
    for st in stages:
        X_in, _, X_out = task.scored(st)
        pred = conf = extra = None
        if proba_fn is not None:
            proba_in, t_in = _timed(proba_fn, model, X_in)
            proba_out, t_out = _timed(proba_fn, model, X_out)
            s_in, s_out, score_s = proba_in.max(1), proba_out.max(1), t_in + t_out
            pred, conf = _classify(proba_in)
        else:
            s_in, s_out, score_s = _score_both(lambda Z: score_fn(model, Z), X_in, X_out)
            if classify_fn is not None:
                pred, conf = classify_fn(model, X_in)
        if extra_fn is not None and st == "test":
            extra = extra_fn(model, X_in, X_out)
        writer.add(method=method, family=family, setting=setting, stage=st, scores_in=s_in, scores_out=s_out,
                   fit_s=fit_s + fit_extra_s, score_s=score_s, pred=pred, conf=conf, extra=extra)
    return model


def run_openworld(task, writer: ScoreWriter, clock: Clock) -> None:
    from openworld import OpenWorld

    def classify(model, X):
        return _classify(model.predict_proba(X))

    def working_point(model, X_in, X_out):
        unknown = model.unknown_label
        return {"rejected_in": np.asarray(model.predict(X_in) == unknown, bool),
                "rejected_out": np.asarray(model.predict(X_out) == unknown, bool)}

    for method, setting, kwargs in openworld_configs(task):
        start = time.perf_counter()
        for stage in STAGES if not task.same_fit else ("test",):
            try:
                stage_models(task, stage, lambda m, X, y: m.fit(X, y), writer, method=method, family=FAMILY_OPENWORLD,
                             setting=setting, make=lambda: OpenWorld(**kwargs),
                             score_fn=lambda m, Z: m.score_samples(Z), classify_fn=classify,
                             extra_fn=working_point if "target_tpr" not in kwargs else None)
            except Exception as error:  # a configuration that fails is reported, not fatal
                writer.error(method=method, family=FAMILY_OPENWORLD, setting=setting,
                             message=f"{type(error).__name__}: {error}")
                break
        if time.perf_counter() - start > 20:
            clock.log(f"  {method}: {time.perf_counter() - start:.0f} s")


def run_baselines(task, writer: ScoreWriter, heads_by_stage: dict) -> None:
    from openworld.evaluation.baselines import BASELINES

    d = task.fit_set("test")[0].shape[1]
    for stage in STAGES if not task.same_fit else ("test",):
        X, y = task.fit_set(stage)
        stages = STAGES if task.same_fit else (stage,)
        # kNN: one index, every k (k only matters at query time).
        knn, index_s = _timed(lambda: BASELINES["knn"](k=1).fit(X))
        for k in KNN_K_GRID:
            if k > X.shape[0]:
                continue
            knn.set_params(k=k)
            for st in stages:
                X_in, _, X_out = task.scored(st)
                s_in, s_out, score_s = _score_both(knn.score_samples, X_in, X_out)
                writer.add(method="CosineKNN", family=FAMILY_BASELINES, setting={"k": k}, stage=st,
                           scores_in=s_in, scores_out=s_out, fit_s=index_s, score_s=score_s)
        # Logit baselines on each shared head.
        for head_name, head, head_s in heads_by_stage[stage]:
            for name in ("msp", "energy", "max_logit"):
                cls = BASELINES[name]
                stage_models(task, stage, lambda m, X_, y_: m.fit(X_, y_), writer, method=cls.__name__,
                             family=FAMILY_BASELINES, setting={"head": head_name}, make=lambda: cls(head=head),
                             score_fn=lambda m, Z: m.score_samples(Z),
                             classify_fn=lambda m, Z: _classify(m.predict_proba(Z)), fit_extra_s=head_s)
            for share in VIM_DIM_SHARES:
                dim = max(1, int(round(share * d)))
                stage_models(task, stage, lambda m, X_, y_: m.fit(X_, y_), writer, method="ViM",
                             family=FAMILY_BASELINES, setting={"D": dim, "head": head_name},
                             make=lambda: BASELINES["vim"](dim=dim, head=head),
                             score_fn=lambda m, Z: m.score_samples(Z),
                             classify_fn=lambda m, Z: _classify(m.predict_proba(Z)), fit_extra_s=head_s)


def run_sklearn(task, writer: ScoreWriter) -> None:
    import warnings

    from sklearn.discriminant_analysis import (
        LinearDiscriminantAnalysis,
        QuadraticDiscriminantAnalysis,
    )

    def proba(m, Z):
        return np.asarray(m.predict_proba(Z), float)

    grids = [("LDA", {"solver": "lsqr", "shrinkage": "auto"},
              lambda s: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"), [None])]
    grids.append(("QDA", None, lambda s: QuadraticDiscriminantAnalysis(solver="eigen", shrinkage=s, tol=1e-12),
                  list(QDA_SHRINKAGE_GRID)))
    for method, fixed, make, grid in grids:
        for value in grid:
            setting = dict(fixed) if fixed is not None else {"solver": "eigen", "shrinkage": value}
            for stage in STAGES if not task.same_fit else ("test",):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        stage_models(task, stage, lambda m, X, y: m.fit(X, y), writer, method=method,
                                     family=FAMILY_SKLEARN, setting=setting, make=lambda: make(value),
                                     score_fn=None, proba_fn=proba)
                except Exception as error:
                    writer.error(method=method, family=FAMILY_SKLEARN, setting=setting,
                                 message=f"{type(error).__name__}: {error}")
                    break


def _versions_here() -> dict:
    import faiss
    import scipy
    import sklearn
    import torch

    import openworld

    return {"python": platform.python_version(), "openworld": openworld.__version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "faiss-cpu": getattr(faiss, "__version__", "?")}


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare(work: Path, only: set[str] | None = None, fine_tune: bool = False) -> None:
    import torch

    from openworld.encoders.text import TextEncoder

    clock = Clock()
    started = dt.datetime.now(dt.UTC)
    for stale in (work / "scores").glob("*/*") if (work / "scores").is_dir() else []:
        stale.unlink()
    (work / "manifest.json").unlink(missing_ok=True)
    update_manifest(work, started=started.isoformat(timespec="seconds"), tasks=[], steps={},
                    venv={**_versions_here(), "threads": torch.get_num_threads(),
                          "thread_variables": {v: os.environ.get(v) for v in THREAD_VARIABLES}},
                    machine={"platform": platform.platform(), "cpus": os.cpu_count(), "load_start": os.getloadavg()[1]},
                    git=_git_revision(), encoder=TextEncoder().name,
                    settings={"open_set_seeds": list(OPEN_SET_SEEDS), "mnist_seeds": list(MNIST_SEEDS),
                              "unknown_share": UNKNOWN_SHARE, "holdout_share": HOLDOUT_SHARE,
                              "lr_c_grid": list(LR_C_GRID), "knn_k_grid": list(KNN_K_GRID),
                              "vim_dim_shares": list(VIM_DIM_SHARES), "qda_shrinkage_grid": list(QDA_SHRINKAGE_GRID),
                              "covariances": list(COVARIANCES), "cnn_epochs": CNN_EPOCHS})
    if fine_tune:
        update_manifest(work, fine_tune={"epochs": FINE_TUNE_EPOCHS, "threads": FINE_TUNE_THREADS})
    names = []
    if fine_tune:
        sources = [("clinc", lambda c: fine_tuned_clinc_tasks(c, work)), ("hwu64", lambda c: fine_tuned_hwu64_tasks(c, work))]
    else:
        sources = [("clinc", clinc_tasks), ("hwu64", hwu64_tasks), ("mnist5k", mnist_tasks)]
    for source, make_tasks in sources:
        if only and source not in only:
            continue
        for name, meta, arrays, cnn_head in make_tasks(clock):
            task_start = time.perf_counter()
            heads_by_stage, head_meta = {}, []
            for stage in ("val", "test") if not meta["same_fit"] else ("test",):
                X, y = (arrays["fit_X"], arrays["fit_y"]) if stage == "test" else (arrays["vfit_X"], arrays["vfit_y"])
                heads_by_stage[stage] = fit_heads(X, y, cnn_head)
                for i, (head_name, head, seconds) in enumerate(heads_by_stage[stage]):
                    arrays[f"head.{i}.{stage}.W"] = np.asarray(head.coef_, np.float32)
                    arrays[f"head.{i}.{stage}.b"] = np.asarray(head.intercept_, np.float32)
                    if stage == ("test" if meta["same_fit"] else "val"):
                        head_meta.append({"name": head_name, "fit_s": {}})
                    head_meta[i]["fit_s"][stage] = seconds
            if meta["same_fit"]:
                heads_by_stage["val"] = heads_by_stage["test"]
            meta = {**meta, "heads": head_meta, "dim": int(arrays["fit_X"].shape[1]),
                    "n_classes": int(arrays["fit_y"].max()) + 1,
                    "sizes": {k: int(v.shape[0]) for k, v in arrays.items() if k.endswith("_X")}}
            save_task(work, name, meta, arrays)
            task = load_task(work, name)
            clock.log(f"{name}: fit {meta['sizes']['fit_X']:,} rows × {meta['dim']}, {meta['n_classes']} classes; "
                      f"test {meta['sizes']['test_in_X']:,} ID + {meta['sizes']['test_out_X']:,} OOD; heads fitted")
            writer = ScoreWriter(work, "venv", name)
            run_openworld(task, writer, clock)
            clock.log(f"{name}: openworld done")
            run_baselines(task, writer, heads_by_stage)
            clock.log(f"{name}: baselines done")
            run_sklearn(task, writer)
            writer.save()
            names.append(name)
            update_manifest(work, tasks=names)
            clock.log(f"{name}: done in {time.perf_counter() - task_start:.0f} s")
    update_manifest(work, steps={"prepare": {"seconds": time.perf_counter() - clock.start, "load": os.getloadavg()[1],
                                             "embed_seconds": sum(EMBED_SECONDS.values()) if EMBED_SECONDS else None,
                                             "fine_tune_seconds": dict(FINE_TUNE_SECONDS),
                                             "command": " ".join([os.path.relpath(sys.executable), "-m", "benchmarks.quality", *sys.argv[1:]])}})
    clock.log(f"step 1 done: {len(names)} tasks in {work}")


# ================================================================================== step 3: report


def _metrics(scores_in, scores_out) -> dict:
    from openworld.core import metrics

    return {"auroc": metrics.auroc(scores_in, scores_out), "fpr95": metrics.fpr_at_tpr(scores_in, scores_out, 0.95),
            "aupr_in": metrics.aupr_in(scores_in, scores_out), "aupr_out": metrics.aupr_out(scores_in, scores_out)}


def evaluate_task(task, records: list[dict], arrays: dict) -> tuple[dict, list[dict]]:
    """``{(family, method): result}`` with the setting chosen on validation, and the errors."""
    from openworld.core import metrics

    by_method: dict[tuple, dict[str, dict]] = {}
    errors = []
    for rec in records:
        if rec.get("error"):
            errors.append({**rec, "task": task.name})
            continue
        key = (rec["family"], rec["method"])
        label = setting_label(rec["setting"])
        by_method.setdefault(key, {}).setdefault(label, {"setting": rec["setting"]})[rec["stage"]] = rec
    _, y_test, _ = task.scored("test")
    _, y_val, _ = task.scored("val")
    results = {}
    for key, settings in by_method.items():
        candidates = []
        for label, entry in settings.items():
            if "val" not in entry or "test" not in entry:
                continue
            val = entry["val"]
            try:
                val_auroc = metrics.auroc(arrays[f"{val['key']}.in"], arrays[f"{val['key']}.out"])
            except ValueError:
                continue
            candidates.append((val_auroc, label, entry))
        if not candidates:
            continue
        best = max(candidates, key=lambda c: c[0])  # max keeps the first of ties: grid order
        val_auroc, label, entry = best
        test = entry["test"]
        k = test["key"]
        try:
            result = _metrics(arrays[f"{k}.in"], arrays[f"{k}.out"])
        except ValueError as error:
            errors.append({"task": task.name, "family": key[0], "method": key[1], "setting": entry["setting"],
                           "error": f"{error}"})
            continue
        result.update({"val_auroc": val_auroc, "setting": label, "setting_dict": entry["setting"],
                       "n_settings": len(candidates),
                       "fit_s": test["fit_s"], "score_s": test["score_s"],
                       "n_scored": int(arrays[f"{k}.in"].size + arrays[f"{k}.out"].size)})
        if "pred" in entry["val"]["parts"]:
            result["val_accuracy"] = float((arrays[f"{entry['val']['key']}.pred"] == y_val).mean())
        if "pred" in test["parts"]:
            correct = arrays[f"{k}.pred"] == y_test
            result["accuracy"] = float(correct.mean())
            if "conf" in test["parts"]:
                result["ece"] = metrics.expected_calibration_error(arrays[f"{k}.conf"], correct)
        if "rejected_in" in test["parts"]:
            r_in, r_out = arrays[f"{k}.rejected_in"], arrays[f"{k}.rejected_out"]
            rejected, is_ood = np.r_[r_in, r_out], np.r_[np.zeros(r_in.size, bool), np.ones(r_out.size, bool)]
            result["working_point"] = {"kept": metrics.in_distribution_kept(rejected, is_ood),
                                       "ood_recall": metrics.ood_recall(rejected, is_ood),
                                       "ood_precision": metrics.ood_precision(rejected, is_ood)}
        results[key] = result
    return results, errors


NUMERIC = ("auroc", "fpr95", "aupr_in", "aupr_out", "accuracy", "ece", "val_auroc", "val_accuracy", "fit_s", "score_s")


def validation_rank(result: dict) -> tuple[float, float]:
    """How validation orders methods: AUROC, then (for exact ties, e.g. one score with other posteriors) accuracy."""
    return result["val_auroc"], result.get("val_accuracy", -1.0)


def aggregate(per_task: list[dict]) -> dict:
    """Mean over a group's tasks (seeds) of every method present in all of them."""
    keys = set(per_task[0])
    for results in per_task[1:]:
        keys &= set(results)
    out = {}
    for key in sorted(keys):  # a set's order changes with the hash seed; the report must not
        rows = [results[key] for results in per_task]
        agg = {}
        for field in NUMERIC:
            values = [r[field] for r in rows if field in r]
            if len(values) == len(rows):
                agg[field] = float(np.mean(values))
        agg["setting"] = compress_settings([r["setting_dict"] for r in rows])
        agg["seeds"] = len(rows)
        agg["auroc_sd"] = float(np.std([r["auroc"] for r in rows], ddof=1)) if len(rows) > 1 else None
        if all("working_point" in r for r in rows):
            agg["working_point"] = {f: float(np.mean([r["working_point"][f] for r in rows])) for f in rows[0]["working_point"]}
        out[key] = agg
    return out


def compress_settings(settings: list[dict]) -> str:
    """Per-seed settings in one label: ``k=10/20/10, head=LR(C=1)`` (a value once when all seeds agree)."""
    keys = list(dict.fromkeys(k for setting in settings for k in setting))
    parts = []
    for key in keys:
        values = [str(setting.get(key, "–")) for setting in settings]
        parts.append(f"{key}={values[0]}" if len(set(values)) == 1 else f"{key}={'/'.join(values)}")
    return ", ".join(parts)


#: (openworld side, pytorch-ood side) computing the same score.
CROSS_CHECKS = [
    ((FAMILY_OPENWORLD, "mahalanobis · tied"), (FAMILY_PYTORCH_OOD, "Mahalanobis")),
    ((FAMILY_OPENWORLD, "relative_mahalanobis · tied"), (FAMILY_PYTORCH_OOD, "RMD")),
    ((FAMILY_OPENWORLD, "likelihood · full"), (FAMILY_PYTORCH_OOD, "GMM")),
    ((FAMILY_BASELINES, "CosineKNN"), (FAMILY_PYTORCH_OOD, "KNN")),
    ((FAMILY_BASELINES, "ViM"), (FAMILY_PYTORCH_OOD, "ViM")),
    ((FAMILY_BASELINES, "MaxSoftmax"), (FAMILY_PYTORCH_OOD, "MaxSoftmax")),
    ((FAMILY_BASELINES, "Energy"), (FAMILY_PYTORCH_OOD, "EnergyBased")),
    ((FAMILY_BASELINES, "MaxLogit"), (FAMILY_PYTORCH_OOD, "MaxLogit")),
]
DEFAULT_METHOD = "OpenWorld() default"  # same scores as relative_mahalanobis · tied: shown, never "chosen"


def selectable(key: tuple) -> bool:
    return key[1] != DEFAULT_METHOD


def select_per_seed(per_task: list[dict], family: str | None, exclude_family: str | None = None) -> dict:
    """Per seed, the method (of ``family``) with the best validation AUROC; mean of their test figures."""
    picks = []
    for results in per_task:
        pool = {k: v for k, v in results.items() if selectable(k)
                and (family is None or k[0] == family) and (exclude_family is None or k[0] != exclude_family)}
        if not pool:
            return {}
        key = max(sorted(pool), key=lambda k: validation_rank(pool[k]))
        picks.append((key, pool[key]))
    out = {field: float(np.mean([p[field] for _, p in picks])) for field in NUMERIC
           if all(field in p for _, p in picks)}
    methods = [k[1] for k, _ in picks]
    if len(set(methods)) == 1:
        setting = compress_settings([p["setting_dict"] for _, p in picks])
        out["name"] = f"{methods[0]} ({setting})" if setting else methods[0]
    else:
        out["name"] = " / ".join(methods) + " (per seed)"
    out["family"] = sorted({k[0] for k, _ in picks})
    return out


def _f(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _secs(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def method_order(key: tuple) -> tuple:
    families = [FAMILY_OPENWORLD, FAMILY_BASELINES, FAMILY_SKLEARN, FAMILY_PYTORCH_OOD]
    return (families.index(key[0]) if key[0] in families else 99,)


def render(work: Path, out: Path, argv: list[str] | None = None) -> str:
    report_start = time.perf_counter()
    manifest = read_manifest(work)
    scores = load_scores(work)
    tasks = {name: load_task(work, name) for name in manifest["tasks"]}
    per_group: dict[str, list[dict]] = {}
    errors: list[dict] = []
    for name, task in tasks.items():
        merged = {}
        for (producer, task_name), (records, arrays) in scores.items():
            if task_name != name:
                continue
            results, errs = evaluate_task(task, records, arrays)
            merged.update(results)
            errors.extend(errs)
        per_group.setdefault(task.meta["group"], []).append(merged)

    finished = dt.datetime.now(dt.UTC)
    # The steps' own durations plus this one's so far (not wall time since step 1 began: a report
    # regenerated later would count the wait).
    total_s = sum(v["seconds"] for v in manifest.get("steps", {}).values()) + (time.perf_counter() - report_start)
    lines: list[str] = []
    w = lines.append
    fine_tune = manifest.get("fine_tune")
    make = "make bench-quality-fine-tuned" if fine_tune else "make bench-quality"
    w("# Benchmarks: out-of-distribution detection quality" + (", text encoder fine-tuned on the known classes" if fine_tune else ""))
    w("")
    if fine_tune:
        w("The same harness as [benchmarks.md](benchmarks.md) (frozen embeddings, every dataset), on embeddings of the "
          "bundled encoder **fine-tuned on each stage's fit rows** with `openworld.encoders.text.fine_tune_text_encoder`: "
          + ", ".join(GROUPS[group][0] for group in per_group) + ". Every method below sees the same fine-tuned vectors.")
    else:
        w("The same harness on embeddings of the bundled encoder fine-tuned on the known classes: "
          "[benchmarks-fine-tuned.md](benchmarks-fine-tuned.md) (`make bench-quality-fine-tuned`).")
    w("")
    w("Other benchmarks, each regenerated by its own command: discovery of new classes in "
      "[discovery.md](discovery.md) (`make bench-discovery`), one-class anomaly detection in "
      "[anomaly.md](anomaly.md) (`make bench-anomaly`), speed in [performance.md](performance.md) "
      "(`make bench-speed`), the text encoder's choice of layers in [text-encoder.md](text-encoder.md) "
      "(`make bench-text-layers`).")
    w("")
    w(f"Generated by `{make}` (`benchmarks/quality.py`); do not edit by hand. Every method below "
      "runs on the **same embeddings and splits in the same run**: openworld's configurations, its baselines "
      "(`openworld.evaluation.baselines`), scikit-learn's LDA/QDA, and pytorch-ood's detectors (in a separate "
      "environment, on the `.npz` files step 1 wrote). Hyper-parameters (and, for the *selected* rows, the "
      "configuration itself) are chosen by **validation AUROC only** (exact ties: validation accuracy); test splits are only reported.")
    w("")
    embed_s = manifest.get("steps", {}).get("prepare", {}).get("embed_seconds")
    started = dt.datetime.fromisoformat(manifest["started"]).strftime("%Y-%m-%d %H:%M UTC")
    w(f"- Date: measured in a run started {started}, page rendered {finished.strftime('%Y-%m-%d %H:%M UTC')} "
      f"(`report` renders it again from the saved scores); total run time {total_s / 60:.1f} min "
      + "(" + ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in manifest.get("steps", {}).items()) + ")"
      + (f"; text embedding took {embed_s:.0f} s of it ({'from the cache' if embed_s < 30 else 'not cached yet'})"
         if embed_s is not None else ""))
    w(f"- Command: `{make}`, i.e. " + "; ".join(f"`{v['command']}`" for v in manifest.get("steps", {}).values())
      + f"; `{' '.join([os.path.relpath(sys.executable), '-m', 'benchmarks.quality', *(argv or ['report'])])}`")
    venv, peers = manifest["venv"], manifest.get("bench_env", {})
    if fine_tune:
        tuned_s = manifest.get("steps", {}).get("prepare", {}).get("fine_tune_seconds") or {}
        n_encoders = sum(1 if t.meta.get("same_fit") else 2 for t in tasks.values())
        minutes = (f"{fine_tune['threads']} thread(s), {sum(tuned_s.values()) / 60:.1f} min: "
                   + ", ".join(f"{key} {seconds:.0f} s" for key, seconds in tuned_s.items()))
        if len(tuned_s) >= n_encoders:
            provenance = f"All {n_encoders} encoders were fine-tuned in this run ({minutes})."
        else:
            provenance = ((f"{len(tuned_s)} of the {n_encoders} encoders were fine-tuned in this run ({minutes}); "
                           "the others were " if tuned_s else f"All {n_encoders} encoders were ")
                          + "loaded from the work folder, trained by the same function and recipe earlier or by "
                          "a parallel process (each is kept under a digest of its rows, labels and recipe, so only "
                          "the same training is ever reused).")
        w(f"- Text encoder: `{manifest['encoder']}` (the bundled MiniLM, layers 5 and 6 pooled) fine-tuned "
          f"with `fine_tune_text_encoder(texts, labels, epochs={fine_tune['epochs']}, seed=s)` on each stage's fit rows "
          "only, one encoder per stage: CLINC150 full on its `train` rows (seed 0); open-set, per split seed s, the test "
          "stage's on the known intents' training rows and the validation stage's on the held-in rows of the pseudo-known "
          "intents, so no encoder sees a row or an intent its stage treats as unknown. The recipe (cosine-softmax head, "
          "2 epochs, AdamW 5e-5) was fixed before any run, not tuned on these sets. " + provenance)
    else:
        w(f"- Text encoder: `{manifest['encoder']}` (openworld's bundled MiniLM, 384-d, unit norm: the mean "
          "pool of the hidden states after `:layers=`, chosen on validation in [text-encoder.md](text-encoder.md); the "
          "issue's reference figures are on sentence-transformers' vectors, layer 6 alone); MNIST-5k: "
          f"`openworld.encoders.image.SmallCNN` (64-d penultimate layer) trained {manifest['settings']['cnn_epochs']} "
          "epochs with `train_small_cnn` on the known digits' training rows, embedded with `TorchEncoder`")
    w(f"- Seeds: open-set splits {manifest['settings']['open_set_seeds']} (`open_set_split(labels, 0.25, seed)`), "
      + ("and the fine-tuning of their encoders; CLINC150 full's encoder seed 0" if fine_tune else
         f"MNIST-5k splits and CNN {manifest['settings']['mnist_seeds']}") + "; OpenWorld `random_state=0` where used")
    w(f"- Versions (`.venv`, Python {venv['python']}): openworld {venv['openworld']} (git {manifest.get('git', '?')}), "
      f"torch {venv['torch']}, scikit-learn {venv['scikit-learn']}, numpy {venv['numpy']}, scipy {venv['scipy']}, "
      f"faiss-cpu {venv['faiss-cpu']}")
    if peers:
        w(f"- Versions (`bench-env`, Python {peers.get('python', '?')}): pytorch-ood {peers.get('pytorch-ood', '?')}, "
          f"torch {peers.get('torch', '?')}, scikit-learn {peers.get('scikit-learn', '?')}, numpy {peers.get('numpy', '?')}")
    loads = [manifest["machine"].get("load_start")] + [v.get("load") for v in manifest.get("steps", {}).values()]
    loads = [f"{x:.1f}" for x in loads if x is not None]
    variables = ", ".join(f"{k}={v}" for k, v in venv.get("thread_variables", {}).items())
    w(f"- Machine: {manifest['machine']['cpus']} CPUs, {manifest['machine']['platform']}; torch threads "
      f"{venv.get('threads', '?')} (`.venv`) and {peers.get('threads', '?')} (`bench-env`), {variables}: every step "
      "runs single-threaded unless these are exported (see `benchmarks/quality.py`); no GPU used. Times are wall seconds of one fit and of scoring the test rows; "
      f"the 5-minute load average was {' → '.join(loads)} at the start and the end of each step (above "
      f"{manifest['machine']['cpus']} means other processes shared the CPUs, and every time is inflated by it).")
    w("")

    # ------------------------------------------------------------------ headline
    w("## Headline")
    w("")
    w("Per dataset, the configuration each family would pick **on validation** (open-set rows and MNIST-5k: "
      "picked per seed, mean of 3 seeds), and its test figures. The last column is the best *test* AUROC of any "
      "row, for reference only: picking it would be tuning on test. Δ AUROC = openworld − best peer.")
    w("")
    w("| dataset | openworld, chosen on val | AUROC | FPR@95 | acc. | best peer, chosen on val | AUROC | FPR@95 | acc. | Δ AUROC | best test AUROC of any row |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    headline = {}
    for group, per_task in per_group.items():
        ow = select_per_seed(per_task, FAMILY_OPENWORLD)
        peer = select_per_seed(per_task, None, exclude_family=FAMILY_OPENWORLD)
        agg = aggregate(per_task)
        # Exact ties (one score, other posteriors) name the row validation ranks first.
        best_key = max(sorted(agg), key=lambda k: (agg[k]["auroc"], validation_rank(agg[k])))
        headline[group] = (ow, peer, agg)
        w(f"| {GROUPS[group][0]} | {ow.get('name', '–')} | **{_f(ow.get('auroc'))}** | {_f(ow.get('fpr95'))} | "
          f"{_f(ow.get('accuracy'))} | {peer.get('name', '–')} [{', '.join(peer.get('family', []))}] | "
          f"{_f(peer.get('auroc'))} | {_f(peer.get('fpr95'))} | {_f(peer.get('accuracy'))} | "
          f"{ow['auroc'] - peer['auroc']:+.3f} | {_f(agg[best_key]['auroc'])} ({best_key[1]}, {best_key[0]}) |")
    w("")

    # ------------------------------------------------------------------ targets
    w("## Targets (issue 3)")
    w("")
    w("Measured on the openworld configuration chosen on validation (above), not the best on test.")
    w("")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")

    def verdict(value, goal, higher=True):
        if value is None:
            return "not measured"
        gap = value - goal if higher else goal - value
        return f"met (by {gap:+.3f})" if gap >= 0 else f"**missed by {-gap:.3f}**"

    if "clinc-full" in headline:
        ow = headline["clinc-full"][0]
        w(f"| CLINC150 full: OOD AUROC ≥ 0.985 | {_f(ow.get('auroc'))} | {verdict(ow.get('auroc'), 0.985)} |")
        w(f"| CLINC150 full: FPR@95 ≤ 0.07 | {_f(ow.get('fpr95'))} | {verdict(ow.get('fpr95'), 0.07, higher=False)} |")
        w(f"| CLINC150 full: in-scope accuracy ≥ 0.96 (same model) | {_f(ow.get('accuracy'))} | {verdict(ow.get('accuracy'), 0.96)} |")
    for group, goal in (("clinc-openset", 0.94), ("hwu64-openset", 0.88)):
        if group in headline:
            ow = headline[group][0]
            w(f"| {GROUPS[group][0]}: mean AUROC ≥ {goal} | {_f(ow.get('auroc'))} | {verdict(ow.get('auroc'), goal)} |")
    w("")
    w(f"References from the issue, on {'the frozen' if fine_tune else 'these'} embeddings: CLINC150 full relative Mahalanobis 0.972 AUROC / 0.116 FPR@95 / "
      "0.930 accuracy, logistic-regression energy 0.972 / 0.133 / 0.955; open-set mean AUROC (CLINC150 / HWU64): "
      "relative Mahalanobis 0.911 / 0.832, cosine kNN 0.863 / 0.787, LR energy 0.911 / 0.812, rank average 0.919 / 0.846.")
    w("")

    # ------------------------------------------------------------------ per dataset
    w("## Every method on every dataset")
    w("")
    w("AUROC, AUPR-in/out and FPR@95 take in-distribution as the positive class (openworld's convention). "
      "Accuracy (closed set, on the ID test rows) and top-label ECE (15 bins) where the method classifies. "
      "*setting* is the hyper-parameter value chosen on validation (open-set / MNIST: per seed). *val* is the "
      "validation AUROC that chose it. **Bold**: each family's best mean validation AUROC, exact ties broken by "
      f"validation accuracy (multi-seed groups pick per seed, see the headline). `{DEFAULT_METHOD}` has the "
      "scores of `relative_mahalanobis · tied` (its "
      "defaults) and is never the pick.")
    w("")
    for group, per_task in per_group.items():
        title, protocol = GROUPS[group]
        sizes = next(t.meta["sizes"] for t in tasks.values() if t.meta["group"] == group)
        w(f"### {title}")
        w("")
        w(f"{protocol}. {'Seed-0 sizes' if len(per_task) > 1 else 'Sizes'}: fit {sizes.get('fit_X', 0):,}, test {sizes.get('test_in_X', 0):,} ID + "
          f"{sizes.get('test_out_X', 0):,} OOD, validation {sizes.get('val_in_X', 0):,} ID + {sizes.get('val_out_X', 0):,} OOD"
          + (f" (fit on {sizes['vfit_X']:,})" if "vfit_X" in sizes else "") + ".")
        w("")
        agg = headline[group][2]
        picked = {}
        for family in (FAMILY_OPENWORLD, FAMILY_BASELINES, FAMILY_SKLEARN, FAMILY_PYTORCH_OOD):
            pool = {k: v for k, v in agg.items() if k[0] == family and selectable(k)}
            if pool:
                picked[family] = max(sorted(pool), key=lambda k: validation_rank(pool[k]))
        seeds = len(per_task) > 1
        w("| family | method | setting | val | AUROC |" + (" sd |" if seeds else "")
          + " FPR@95 | AUPR-in | AUPR-out | acc. | ECE | fit s | score s |")
        w("|" + " --- |" * (13 if seeds else 12))
        for key in sorted(agg, key=lambda k: (method_order(k), not k[1].startswith("OpenWorld()"), k[1].lower())):
            r = agg[key]
            bold = picked.get(key[0]) == key
            name = f"**{key[1]}**" if bold else key[1]
            w(f"| {key[0]} | {name} | {r['setting'] or '–'} | {_f(r.get('val_auroc'))} | {_f(r['auroc'])} |"
              + (f" {_f(r.get('auroc_sd'))} |" if seeds else "")
              + f" {_f(r['fpr95'])} | {_f(r['aupr_in'])} | {_f(r['aupr_out'])} | {_f(r.get('accuracy'))} | "
              f"{_f(r.get('ece'))} | {_secs(r.get('fit_s'))} | {_secs(r.get('score_s'))} |")
        w("")
        wp = [(k, v["working_point"]) for k, v in agg.items() if "working_point" in v]
        for key, point in wp:
            w(f"Working point of `{key[1]}` (target_tpr=0.95, cross-fitted threshold): ID kept {_f(point['kept'])}, "
              f"OOD recall {_f(point['ood_recall'])}, OOD precision {_f(point['ood_precision'])}.")
            w("")

    # ------------------------------------------------------------------ cross-checks
    w("## Cross-checks: the same detector in two libraries")
    w("")
    w("Pairs that compute the same score (up to shrinkage or a ridge) should agree; the largest AUROC gap over the "
      "datasets above tells whether the harness feeds both sides the same data. Scoring times (test rows, CLINC150 "
      "full) compare the implementations.")
    w("")
    w("| openworld side | pytorch-ood side | max \\|Δ AUROC\\| | score s, CLINC150 full (openworld / pytorch-ood) |")
    w("| --- | --- | --- | --- |")
    for (fam_a, a), (fam_b, b) in CROSS_CHECKS:
        gaps = [abs(agg[(fam_a, a)]["auroc"] - agg[(fam_b, b)]["auroc"])
                for _, _, agg in headline.values() if (fam_a, a) in agg and (fam_b, b) in agg]
        full = headline.get("clinc-full", ({}, {}, {}))[2]
        times = (f"{_secs(full[(fam_a, a)].get('score_s'))} / {_secs(full[(fam_b, b)].get('score_s'))}"
                 if (fam_a, a) in full and (fam_b, b) in full else "–")
        if gaps:
            w(f"| {a} ({fam_a}) | {b} | {max(gaps):.3f} | {times} |")
    w("")

    # ------------------------------------------------------------------ notes
    w("## What each row is")
    w("")
    s = manifest["settings"]
    w(f"- **openworld**: `OpenWorld(score=…, covariance=…, shrinkage=\"auto\", target_tpr=None)` for every score in "
      f"`openworld.core.scores.SCORES` and covariance in {', '.join(s['covariances'])}; `components=\"auto\"` "
      "(per-class Gaussian mixtures, the number of components by held-out log-likelihood, `random_state=0`) for the tied likelihood and Mahalanobis scores; "
      "`low_variance_mahalanobis` only with `covariance=\"tied\"`, since it whitens with the pooled "
      f"covariance whatever the structure, and its `dropped_variance` in {SCORE_GRIDS.get('low_variance_mahalanobis', {}).get('dropped_variance')} "
      "chosen on validation; `covariance_ensemble` (the sum of the tied, diagonal and per-class relative Mahalanobis "
      "scores) with each covariance, which sets its posteriors and not its score (the three tie on validation AUROC; "
      f"validation accuracy picks one), and its `shrinkage` in {SCORE_GRIDS.get('covariance_ensemble', {}).get('shrinkage')} "
      "chosen on validation (a number is a fixed intensity: the tied covariance toward a multiple of the identity, "
      "each class's toward the tied one); and the default `OpenWorld(random_state=0)` (relative Mahalanobis, tied, with "
      "its cross-fitted working point, hence a longer fit). Accuracy is the argmax of `predict_proba`.")
    w(f"- **openworld baselines**: `CosineKNN(k)` for k in {s['knn_k_grid']}; `MaxSoftmax`, `Energy`, `MaxLogit` and "
      f"`ViM(dim=D)` (D = {', '.join(str(x) for x in s['vim_dim_shares'])} × d) on a shared multinomial "
      f"`LogisticRegression(C)` head, C in {s['lr_c_grid']} (MNIST-5k: also `head=CNN`, the network's own last layer); the head's fit "
      "time is included in theirs.")
    w(f"- **scikit-learn**: `LinearDiscriminantAnalysis(solver=\"lsqr\", shrinkage=\"auto\")` and "
      f"`QuadraticDiscriminantAnalysis(solver=\"eigen\", shrinkage=s)`, s in {s['qda_shrinkage_grid']}; OOD score = "
      "the highest `predict_proba` (their natural confidence). QDA's `reg_param` cannot be used here: scikit-learn's "
      "`svd` solver (the only one that reads it) refuses a class with no more rows than features (CLINC150: 100 rows, "
      "384 features), so the per-class covariance is regularised by the `eigen` solver's shrinkage instead, chosen "
      "on validation like every other hyper-parameter.")
    w("- **pytorch-ood**: its detectors that work from features (`fit_features`/`predict_features`) or, given a "
      "linear head, from logits, fed the same arrays as `torch` tensors; their outlier scores are negated. Head-based "
      "detectors use the same logistic-regression heads as openworld's baselines (C chosen on validation). "
      "Hyper-parameter grids are in `benchmarks/peers_pytorch_ood.py`.")
    if manifest.get("row_by_row"):
        w(f"- **Scored one row at a time**: {', '.join(manifest['row_by_row'])} (pytorch-ood). A row's score from "
          "these detectors changed with the rows scored beside it (64 in-distribution rows, scored in one batch and "
          "one by one, differed). Scored in batches of in-distribution rows and then of OOD rows, they would see "
          "which rows are which: pytorch-ood 0.4.0's OpenMax measures distances only to the classes that some row "
          "of the batch predicts, and in batches of 512 it scored far above what it scores row by row. One row at a time is how a deployed detector sees its queries.")
    w(f"- **Open-set validation**: {int(s['holdout_share'] * 100)}% of the known classes' training rows are held out "
      f"(`holdout_split`); a nested {int(s['unknown_share'] * 100)}% of the known classes (`open_set_split(known, 0.25, seed)`) "
      "are pseudo-unknown: validation models are fitted on the other held-in rows, and score the held-out rows "
      "(pseudo-known = ID, pseudo-unknown = OOD). The test model is then refitted on all known training rows."
      + (" Each stage embeds its rows with its own fine-tuned encoder (above)." if fine_tune else ""))
    if "mnist5k" in per_group:
        w("- **MNIST-5k**: stratified 20% test, 20% validation, 60% training rows (`holdout_split`); ID = known digits, "
          "OOD = unknown digits, in validation and test alike.")
    w("")
    not_applicable = manifest.get("not_applicable", {})
    if errors or not_applicable:
        w("## What did not run")
        w("")
        for names, reason in not_applicable.items():
            w(f"- pytorch-ood · {names}: not run, {reason}.")
        seen = set()
        for e in errors:
            key = (e["family"], e["method"], setting_label(e.get("setting") or {}), e["error"][:200])
            if key in seen:
                continue
            seen.add(key)
            w(f"- {e['family']} · {e['method']} ({setting_label(e.get('setting') or {}) or 'default'}), task "
              f"{e['task']}: {e['error'][:300]}")
        w("")
    text = "\n".join(lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


# ================================================================================== command line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="step 1: embed, split, score openworld, its baselines and scikit-learn")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--only", nargs="*", choices=["clinc", "hwu64", "mnist5k"], help="a subset of datasets (for trials)")
    p.add_argument("--fine-tune", action="store_true",
                   help="embed with the bundled encoder fine-tuned on each stage's fit rows (CLINC150 full and "
                        "open-set, HWU64 open-set; docs/benchmarks-fine-tuned.md)")
    r = sub.add_parser("report", help="step 3: metrics and docs/benchmarks.md")
    r.add_argument("--work", type=Path, default=DEFAULT_WORK)
    r.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.work, set(args.only) if args.only else None, fine_tune=args.fine_tune)
    else:
        render(args.work, args.out, argv if argv is not None else sys.argv[1:])
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
