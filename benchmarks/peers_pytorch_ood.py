"""Step 2 of ``make bench-quality``: pytorch-ood's detectors on the embeddings step 1 wrote.

Runs in ``bench-env`` (torch + pytorch-ood + scikit-learn; openworld is not
installed there)::

    bench-env/bin/python -m benchmarks.peers_pytorch_ood [--work .cache/bench]

For every task in the work folder it fits each detector on the stage's fit set
and scores its rows, for every hyper-parameter setting of the grids below, and
writes ``scores/pytorch-ood/<task>.*`` (see :mod:`benchmarks.store`). The report
(step 3) picks the setting with the best validation AUROC.

Detectors used: those of ``pytorch_ood.detector`` that work on fixed features
(``fit_features``/``predict_features``) and, given the logistic-regression heads
step 1 fitted (the same ones openworld's logit baselines use), the logit-based
ones (``predict_logits``). pytorch-ood returns *outlier* scores; they are
negated here so that higher = more in-distribution, as everywhere else.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # single-threaded, as benchmarks/quality.py (before NumPy and torch load)

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import DEFAULT_WORK, FAMILY_PYTORCH_OOD, KNN_K_GRID, VIM_DIM_SHARES
from benchmarks.store import STAGES, Clock, ScoreWriter, load_task, task_names, update_manifest

BATCH = 512  # rows per predict call (GMM: see below); keeps (batch × classes × d) buffers small
BATCH_PROBE_ROWS = 64  # in-distribution rows scored both in one batch and one by one (see _depends_on_batch)

GMM_REG_GRID = (1e-4, 1e-3, 1e-2)
DICE_P_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)  # DICE.hyperparameter_space
NCI_ALPHA_GRID = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)  # NCI.hyperparameter_space
NNGUIDE_K_GRID = (10, 100)
LTS_P_GRID = (0.05, 0.1, 0.25)
GEN_GAMMA_GRID = (0.01, 0.1, 1.0)
GEN_M_GRID = (10, None)  # None = all classes

#: Detectors of pytorch_ood.detector not run, and why (written into the report).
NOT_APPLICABLE = {
    "MCM": "needs class-name text embeddings from a vision-language model (CLIP) in the same space as the features",
    "ODIN, MahalanobisODIN, GradNorm, GradUncertainty, NACUE": "need gradients through the network's input",
    "ASH, ReAct, SCALE, RankFeat, VRA": "work on convolutional feature maps (B × C × H × W), not embeddings",
    "Gram, MultiMahalanobis": "need several intermediate layers of the network",
    "MCD": "needs a network with dropout to sample",
    "TemperatureScaling": "a calibration of MaxSoftmax (same ranking as MSP at its temperature)",
    "WeightedEBO": "needs class weights learned with VOS training",
}


def _linear(W: np.ndarray, b: np.ndarray) -> torch.nn.Linear:
    layer = torch.nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(W, np.float32)))
        layer.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
    return layer.eval()


def detector_specs(dim: int, n_classes: int):
    """``[(method, settings, needs_head, kind, make)]``; ``make(setting, W, b, head) -> detector``."""
    from pytorch_ood import detector as D

    vim_dims = sorted({max(1, int(round(s * dim))) for s in VIM_DIM_SHARES})
    return [
        ("Mahalanobis", [{}], False, "features", lambda s, W, b, h: D.Mahalanobis(None)),
        ("RMD", [{}], False, "features", lambda s, W, b, h: D.RMD(None)),
        ("KNN", [{"k": k} for k in KNN_K_GRID], False, "features", lambda s, W, b, h: D.KNN(None, k=s["k"])),
        ("GMM", [{"reg": r} for r in GMM_REG_GRID], False, "features", lambda s, W, b, h: D.GMM(None, reg=s["reg"])),
        ("ViM", [{"d": d} for d in vim_dims], True, "features",
         lambda s, W, b, h: D.ViM(None, d=s["d"], w=torch.from_numpy(W), b=torch.from_numpy(b))),
        ("DICE", [{"p": p} for p in DICE_P_GRID], True, "features",
         lambda s, W, b, h: D.DICE(None, w=torch.from_numpy(W), b=torch.from_numpy(b), p=s["p"])),
        ("fDBD", [{}], True, "features", lambda s, W, b, h: D.fDBD(None, head=h)),
        ("NCI", [{"alpha": a} for a in NCI_ALPHA_GRID], True, "features",
         lambda s, W, b, h: D.NCI(None, head=h, alpha=s["alpha"])),
        ("SHE", [{}], True, "features", lambda s, W, b, h: D.SHE(None, head=h)),
        ("NNGuide", [{"k": k} for k in NNGUIDE_K_GRID], True, "features", lambda s, W, b, h: D.NNGuide(None, head=h, k=s["k"])),
        ("LTS", [{"p": p} for p in LTS_P_GRID], True, "features", lambda s, W, b, h: D.LTS(None, head=h, p=s["p"])),
        ("PNML", [{}], True, "features", lambda s, W, b, h: D.PNML(None, head=h)),
        ("MaxSoftmax", [{}], True, "logits", lambda s, W, b, h: D.MaxSoftmax(None)),
        ("EnergyBased", [{}], True, "logits", lambda s, W, b, h: D.EnergyBased(None)),
        ("MaxLogit", [{}], True, "logits", lambda s, W, b, h: D.MaxLogit(None)),
        ("Entropy", [{}], True, "logits", lambda s, W, b, h: D.Entropy(None)),
        ("GEN", [{"gamma": g, "M": m} for g in GEN_GAMMA_GRID for m in GEN_M_GRID if m is None or m < n_classes],
         True, "logits",
         lambda s, W, b, h: D.GEN(None, gamma=s["gamma"], M=s["M"])),
        ("KLMatching", [{}], True, "logits", lambda s, W, b, h: D.KLMatching(None)),
        ("OpenMax", [{}], True, "logits", lambda s, W, b, h: D.OpenMax(None)),
    ]


def _fit(detector, kind: str, z: torch.Tensor, y: torch.Tensor, head) -> None:
    if kind == "features":
        if getattr(detector, "requires_fit", True):
            detector.fit_features(z, y)
    elif hasattr(detector, "fit_logits"):
        with torch.no_grad():
            detector.fit_logits(head(z), y)


def _predict(detector, kind: str, z: torch.Tensor, head, batch: int) -> np.ndarray:
    parts = []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch):
            chunk = z[start : start + batch]
            out = detector.predict_features(chunk) if kind == "features" else detector.predict_logits(head(chunk))
            parts.append(out.detach().double().cpu().numpy().reshape(-1))
    scores = -np.concatenate(parts)  # outlier score -> higher = in-distribution
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{int((~np.isfinite(scores)).sum())} of {scores.size} scores are NaN or infinite")
    return scores


def _depends_on_batch(detector, kind: str, z: torch.Tensor, head) -> bool:
    """Whether a row's score changes with the rows scored beside it.

    Such a detector, scored in batches of in-distribution rows and then of OOD rows
    as the harness does, would see which rows are which: pytorch-ood 0.4.0's OpenMax
    measures distances only to the classes some row of the batch predicts. Those
    detectors are scored one row at a time, as a deployed detector sees its queries.
    """
    probe = z[:BATCH_PROBE_ROWS]
    together = _predict(detector, kind, probe, head, probe.shape[0])
    alone = _predict(detector, kind, probe, head, 1)
    # Float32 products of a batch and of one row round differently (ViM's scores differ by ~1e-6 of their range).
    return not np.allclose(together, alone, rtol=0, atol=1e-4 * max(1.0, float(np.abs(alone).max())))


def run_task(work: Path, name: str, clock: Clock, row_by_row: set) -> None:
    task = load_task(work, name)
    writer = ScoreWriter(work, "pytorch-ood", name)
    dim, n_classes = task.meta["dim"], task.meta["n_classes"]
    fit_stages = ("test",) if task.same_fit else STAGES
    tensors = {}
    for stage in STAGES:
        X, y = task.fit_set(stage)
        X_in, _, X_out = task.scored(stage)
        tensors[stage] = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (X, y, X_in, X_out))
    for method, settings, needs_head, kind, make in detector_specs(dim, n_classes):
        start = time.perf_counter()
        head_indices = range(len(task.heads)) if needs_head else [None]
        failed = None
        for h in head_indices:
            for setting in settings:
                full_setting = {**setting, **({"head": task.heads[h]["name"]} if h is not None else {})}
                try:
                    for fit_stage in fit_stages:
                        z, y, _, _ = tensors[fit_stage]
                        W, b = task.head(h, fit_stage) if h is not None else (None, None)
                        head = _linear(W, b) if h is not None else None
                        head_s = task.head_fit_seconds(h, fit_stage) if h is not None else 0.0
                        t0 = time.perf_counter()
                        detector = make(setting, W, b, head)
                        _fit(detector, kind, z, y, head)
                        fit_s = time.perf_counter() - t0 + head_s
                        batch = 128 if method == "GMM" else BATCH
                        # probed on validation rows (in-distribution only): a test row never steers a choice
                        if _depends_on_batch(detector, kind, tensors["val"][2], head):
                            batch = 1
                            row_by_row.add(method)
                        for stage in (STAGES if task.same_fit else (fit_stage,)):
                            _, _, z_in, z_out = tensors[stage]
                            t0 = time.perf_counter()
                            s_in = _predict(detector, kind, z_in, head, batch)
                            s_out = _predict(detector, kind, z_out, head, batch)
                            score_s = time.perf_counter() - t0
                            writer.add(method=method, family=FAMILY_PYTORCH_OOD, setting=full_setting, stage=stage,
                                       scores_in=s_in, scores_out=s_out, fit_s=fit_s, score_s=score_s)
                except Exception as error:  # reported in the document, not fatal
                    failed = f"{type(error).__name__}: {error}".strip()
                    writer.error(method=method, family=FAMILY_PYTORCH_OOD, setting=full_setting, message=failed)
        elapsed = time.perf_counter() - start
        if elapsed > 15 or failed:
            clock.log(f"  {name} · {method}: {elapsed:.0f} s" + (f" (failed: {failed[:120]})" if failed else ""))
    writer.save()


def main(argv=None) -> None:
    import pytorch_ood
    import sklearn

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_pytorch_ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    clock = Clock()
    torch.manual_seed(0)
    names = task_names(args.work)
    row_by_row = set()  # detectors whose scores depend on the batch: scored one row at a time
    for stale in (args.work / "scores" / "pytorch-ood").glob("*"):
        stale.unlink()
    for i, name in enumerate(names, 1):
        clock.log(f"pytorch-ood on {name} ({i}/{len(names)})")
        run_task(args.work, name, clock, row_by_row)
    update_manifest(
        args.work,
        bench_env={"python": platform.python_version(), "pytorch-ood": pytorch_ood.__version__, "torch": torch.__version__,
                   "scikit-learn": sklearn.__version__, "numpy": np.__version__, "threads": torch.get_num_threads()},
        not_applicable=NOT_APPLICABLE,
        row_by_row=sorted(row_by_row),
        steps={"peers": {"seconds": time.perf_counter() - clock.start, "load": os.getloadavg()[1],
                         "command": " ".join([os.path.relpath(sys.executable), "-m", "benchmarks.peers_pytorch_ood", *sys.argv[1:]])}},
    )
    clock.log(f"step 2 done: {len(names)} tasks")


if __name__ == "__main__":
    main()
