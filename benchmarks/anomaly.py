"""One-class anomaly detection benchmark (issue 6): openworld against PyOD and scikit-learn.

Regenerates ``docs/anomaly.md``::

    .venv/bin/python benchmarks/anomaly.py            # or: make bench-anomaly

Data: the ADBench files in ``../shared/data/adbench`` (or ``$OPENWORLD_DATA``,
pointing at that folder or at a data root holding ``adbench/``), read for
evaluation only: MVTec-AD as ImageNet ResNet-18 embeddings (15 categories) and
20 classical tabular sets.

Protocol (the issue's): per dataset and seed 0-2, sets over 50,000 rows are
first subsampled to 50,000 rows (seeded); the model is fitted on a random 70 %
of the normal rows and tested on the other 30 % plus every anomaly. AUROC
(in-distribution positive with ``score_samples``, the same number as anomaly
positive with ``-score``), AUPR (anomaly positive), fit and score time. Every
method sees the same splits; every random method gets the seed.

Nothing here is tuned on the test anomalies: the openworld configurations and
the baselines' settings are fixed in ``openworld_methods`` / ``baseline_methods``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Threads: one per process unless OPENWORLD_BENCH_THREADS says otherwise, set before NumPy/torch load their
# thread pools. On a 2-core machine shared with other work, multi-threaded BLAS/LAPACK spin-waits on busy cores:
# torch.linalg.eigh of a 512 × 512 matrix took 5-7 s with 2 threads and 0.04 s with 1 here.
THREADS = int(os.environ.get("OPENWORLD_BENCH_THREADS", "1"))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MAX_ROWS = 50_000  # sets larger than this are subsampled first (seeded)
TRAIN_SHARE = 0.7  # share of the normal rows used for fitting
OCSVM_CAP = 10_000  # OCSVM (quadratic in the rows): at most this many training rows (seeded subsample)
LARGE_NORMALS = 5_000  # "larger tabular sets" for the working-point check: at least this many normal rows
TARGET_TPR = 0.95
TIMING_REPEATS = 3
# Mean AUROC quoted in issue 6 for this protocol on these files: a sanity check of the harness.
ISSUE_REFERENCES = {
    ("mvtec", "OW"): 0.836,  # "one Gaussian with Ledoit-Wolf shrinkage"
    ("mvtec", "KNN"): 0.796,
    ("mvtec", "IForest"): 0.759,
    ("tabular", "OW"): 0.848,
    ("tabular", "KNN"): 0.874,  # k = 5, standardised features
    ("tabular", "IForest"): 0.834,
}


# ---------------------------------------------------------------------- data


def data_root() -> Path:
    """The adbench folder: ``$OPENWORLD_DATA`` (the folder or a root holding ``adbench/``), else ../shared/data/adbench."""
    env = os.environ.get("OPENWORLD_DATA")
    candidates = [Path(env), Path(env) / "adbench"] if env else [ROOT.parent / "shared" / "data" / "adbench"]
    for folder in candidates:
        if (folder / "classical").is_dir() and (folder / "mvtec_resnet18").is_dir():
            return folder
    raise SystemExit(
        f"ADBench data not found in {', '.join(map(str, candidates))}: set OPENWORLD_DATA to the adbench folder "
        "(with classical/ and mvtec_resnet18/ in it)"
    )


@dataclass(frozen=True)
class Dataset:
    group: str  # "mvtec" | "tabular"
    name: str
    path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.path) as data:
            return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(int).ravel()


def datasets(root: Path) -> list[Dataset]:
    mvtec = sorted((root / "mvtec_resnet18").glob("*.npz"))
    # ADBench's files are named "<number>_<name>.npz": order by the number, show the name.
    tabular = sorted((root / "classical").glob("*.npz"), key=lambda p: int(p.stem.split("_", 1)[0]))
    return [Dataset("mvtec", p.stem, p) for p in mvtec] + [
        Dataset("tabular", p.stem.split("_", 1)[1], p) for p in tabular
    ]


@dataclass
class Split:
    X: np.ndarray  # all rows kept (after the 50k subsample), float64
    y: np.ndarray  # 1 = anomaly
    train: np.ndarray  # indices of the training normals
    test: np.ndarray  # indices of the test rows (held-out normals + every anomaly)


def make_split(X: np.ndarray, y: np.ndarray, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    if len(X) > MAX_ROWS:
        keep = np.sort(rng.choice(len(X), MAX_ROWS, replace=False))
        X, y = X[keep], y[keep]
    normals = rng.permutation(np.flatnonzero(y == 0))
    n_train = round(TRAIN_SHARE * normals.size)
    train = np.sort(normals[:n_train])
    test = np.setdiff1d(np.arange(len(X)), train)
    return Split(X, y, train, test)


# ---------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A detector in the harness: ``make(seed)`` returns an object with ``fit(X)``;
    ``normality(model, X)`` returns scores, higher = more normal."""

    name: str
    family: str  # "openworld" | "baseline"
    make: Callable[[int], object]
    normality: Callable[[object, np.ndarray], np.ndarray]
    standardise: bool  # on tabular data: fit a StandardScaler on the training normals first
    cap: int | None = None  # at most this many training rows
    max_features: int | None = None  # not run above this many features
    groups: tuple[str, ...] = ("mvtec", "tabular")
    note: str = ""


def openworld_methods() -> list[Method]:
    import openworld as ow

    configs = [
        ("OW", {}, "`OpenWorld()` defaults: one class → Mahalanobis, Ledoit-Wolf shrinkage, tied covariance"),
        ("OW-oas", {"shrinkage": "oas"}, '`shrinkage="oas"`'),
        (
            "OW-np50",
            {"score": "low_variance_mahalanobis", "dropped_variance": 0.5},
            '`score="low_variance_mahalanobis", dropped_variance=0.5` (NPCA, Rippel et al.)',
        ),
        (
            "OW-np90",
            {"score": "low_variance_mahalanobis", "dropped_variance": 0.9},
            '`score="low_variance_mahalanobis", dropped_variance=0.9`',
        ),
        (
            "OW-mix",
            {"components": "auto", "covariance": "full"},
            (
                '`components="auto", covariance="full"`: a Gaussian mixture, each component its own covariance '
                "(shrunk toward the pooled one), M ∈ {1, 2, 4, 8, 16} chosen by held-out log-likelihood on 20 % of "
                "the training normals (one-standard-error rule); scored by the mixture density"
            ),
        ),
        (
            "OW-mix-tied",
            {"components": "auto"},
            '`components="auto"` with the default tied covariance (the components share one covariance)',
        ),
        (
            "OW-kde",
            {"score": "kernel_density"},
            (
                '`score="kernel_density"`: a Gaussian kernel density over a sample of up to 4,096 training normals, '
                "features scaled by their standard deviation, bandwidth chosen by held-out log-likelihood on a fifth "
                "of that sample; the working point from up to 4,096 more training normals held out of the density "
                "(with fewer than 1,000 of them, joined by the density rows' leave-one-out densities)"
            ),
        ),
    ]

    def normality(model, X):
        return np.asarray(model.score_samples(X.astype(np.float32)), dtype=np.float64)

    def factory(kwargs):
        return lambda seed: _OpenWorldFloat32(ow.OpenWorld(random_state=seed, target_tpr=TARGET_TPR, **kwargs))

    # Tabular: standardised (scaler fitted on the training normals) and raw. MVTec: the embeddings as they are.
    standardised = [
        Method(name, "openworld", factory(kwargs), normality, True, note=note) for name, kwargs, note in configs
    ]
    raw = [
        Method(
            name + " raw",
            "openworld",
            factory(kwargs),
            normality,
            False,
            groups=("tabular",),
            note=note + ", raw tabular features",
        )
        for name, kwargs, note in configs
    ]
    return standardised + raw


class _OpenWorldFloat32:
    """OpenWorld fed float32 (its compute dtype; float64 input would switch it to float64)."""

    def __init__(self, model):
        self.model = model

    def fit(self, X):
        self.model.fit(X.astype(np.float32))
        return self

    def score_samples(self, X):
        return self.model.score_samples(X)

    @property
    def threshold_(self):
        return self.model.threshold_


PYOD_PIN = "pyod==3.6.7"


def baseline_methods() -> list[Method]:
    try:
        import pyod  # noqa: F401
    except ImportError:
        raise SystemExit(f"the baselines need PyOD: .venv/bin/pip install {PYOD_PIN}") from None
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    from pyod.models.mcd import MCD
    from pyod.models.ocsvm import OCSVM
    from pyod.models.pca import PCA
    from sklearn.covariance import EllipticEnvelope

    def pyod_normality(model, X):
        return -np.asarray(model.decision_function(X), dtype=np.float64)

    def sklearn_normality(model, X):
        return np.asarray(model.score_samples(X), dtype=np.float64)

    return [
        Method(
            "IForest",
            "baseline",
            lambda s: IForest(n_estimators=100, random_state=s),
            pyod_normality,
            True,
            note="PyOD `IForest(n_estimators=100, random_state=seed)`",
        ),
        Method(
            "KNN",
            "baseline",
            lambda s: KNN(n_neighbors=5, method="largest"),
            pyod_normality,
            True,
            note='PyOD `KNN(n_neighbors=5, method="largest")`',
        ),
        Method(
            "LOF", "baseline", lambda s: LOF(n_neighbors=20), pyod_normality, True, note="PyOD `LOF(n_neighbors=20)`"
        ),
        Method("ECOD", "baseline", lambda s: ECOD(), pyod_normality, True, note="PyOD `ECOD()`"),
        Method("COPOD", "baseline", lambda s: COPOD(), pyod_normality, True, note="PyOD `COPOD()`"),
        Method(
            "OCSVM",
            "baseline",
            lambda s: OCSVM(kernel="rbf", nu=0.5, gamma="auto"),
            pyod_normality,
            True,
            cap=OCSVM_CAP,
            note='PyOD `OCSVM(kernel="rbf", nu=0.5, gamma="auto")`',
        ),
        Method(
            "PCA",
            "baseline",
            lambda s: PCA(random_state=s),
            pyod_normality,
            True,
            note="PyOD `PCA(random_state=seed)` (all components, weighted, its own standardisation)",
        ),
        Method(
            "MCD", "baseline", lambda s: MCD(random_state=s), pyod_normality, True, note="PyOD `MCD(random_state=seed)`"
        ),
        Method(
            "EllEnv",
            "baseline",
            lambda s: EllipticEnvelope(random_state=s),
            sklearn_normality,
            True,
            note="scikit-learn `EllipticEnvelope(random_state=seed)`, `score_samples`",
        ),
    ]


# ---------------------------------------------------------------------- running


@dataclass
class Run:
    auroc: float
    aupr: float
    fit_s: float
    score_s: float
    far: float | None = None  # realised false-alarm rate on the held-out normals at target_tpr (openworld only)
    nonfinite: int = 0


@dataclass
class Results:
    runs: dict[tuple[str, str, str], list[Run]] = field(default_factory=dict)  # (group, dataset, method) -> runs
    normals: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, dataset) -> normal rows used
    rows: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)  # rows, features, anomalies
    skipped: dict[tuple[str, str, str], str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-minute load average, sampled per set


def evaluate(method: Method, split: Split, group: str, seed: int) -> Run | str:
    """Fit on the training normals, score the test rows; a string says why the method did not run."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    X, y = split.X, split.y
    if group == "tabular":  # columns constant on the training normals carry nothing (PyOD's PCA returned NaN)
        X = X[:, np.ptp(X[split.train], axis=0) > 0]
    if method.max_features is not None and X.shape[1] > method.max_features:
        return f"not run above {method.max_features} features"
    train = split.train
    if method.cap is not None and train.size > method.cap:
        train = np.sort(np.random.default_rng(seed).choice(train, method.cap, replace=False))
    X_train, X_test = X[train], X[split.test]
    if group == "tabular" and method.standardise:
        scaler = StandardScaler().fit(X[split.train])
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    model = method.make(seed)
    start = time.perf_counter()
    model.fit(X_train)
    fitted = time.perf_counter()
    scores = method.normality(model, X_test)
    scored = time.perf_counter()
    nonfinite = int((~np.isfinite(scores)).sum())
    if nonfinite:
        finite = scores[np.isfinite(scores)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        scores = np.nan_to_num(scores, nan=low, posinf=high, neginf=low)
    y_test = y[split.test]
    far = None
    threshold = getattr(model, "threshold_", None)
    if threshold is not None:
        far = float(np.mean(scores[y_test == 0] < threshold))
    return Run(
        auroc=float(roc_auc_score(y_test == 0, scores)),
        aupr=float(average_precision_score(y_test == 1, -scores)),
        fit_s=fitted - start,
        score_s=scored - fitted,
        far=far,
        nonfinite=nonfinite,
    )


def run_all(sets: list[Dataset], methods: list[Method], seeds, log) -> Results:
    results = Results()
    for number, data in enumerate(sets, 1):
        X_all, y_all = data.load()
        results.load.append(os.getloadavg()[0])
        group_methods = [m for m in methods if data.group in m.groups]
        for seed in seeds:
            split = make_split(X_all, y_all, seed)
            results.normals[(data.group, data.name)] = int((split.y == 0).sum())
            results.rows[(data.group, data.name)] = (len(split.X), split.X.shape[1], int(split.y.sum()))
            line = []
            for method in group_methods:
                key = (data.group, data.name, method.name)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        outcome = evaluate(method, split, data.group, seed)
                except Exception as error:  # noqa: BLE001 -- a baseline that breaks is reported, not hidden
                    outcome = f"failed: {type(error).__name__}: {str(error)[:120]}"
                    results.failures.append(f"{data.group}/{data.name} seed {seed} {method.name}: {outcome}")
                if isinstance(outcome, str):
                    results.skipped[key] = outcome
                    continue
                results.runs.setdefault(key, []).append(outcome)
                if outcome.nonfinite:
                    n_test = split.test.size
                    what = (
                        f"all {n_test} test scores non-finite (NaN/inf): every row ties, AUROC 0.5"
                        if outcome.nonfinite == n_test
                        else f"{outcome.nonfinite} of {n_test} test scores non-finite (replaced by the extreme finite score)"
                    )
                    results.failures.append(f"{data.group}/{data.name} seed {seed} {method.name}: {what}")
                line.append(f"{method.name} {outcome.auroc:.3f}")
            log(f"[{number:2d}/{len(sets)}] {data.group}/{data.name} seed {seed}: " + ", ".join(line))
    return results


def time_large_sets(sets: list[Dataset], log) -> list[dict]:
    """Fit + score of ``OpenWorld()`` on 50,000-row sets (all 50k rows fitted and scored), median of repeats."""
    import torch

    import openworld as ow

    rows = []
    for data in sets:
        X, _y = data.load()
        if data.group != "tabular" or len(X) < MAX_ROWS:
            continue
        keep = np.sort(np.random.default_rng(0).choice(len(X), MAX_ROWS, replace=False))
        X = X[keep].astype(np.float32)
        entry = {"name": data.name, "d": X.shape[1]}
        threads = torch.get_num_threads()
        for label, target, n_threads in (
            ("default", TARGET_TPR, threads),
            ("no_working_point", None, threads),
            ("two_threads", TARGET_TPR, 2),
        ):
            torch.set_num_threads(n_threads)
            fits, totals = [], []
            for _ in range(TIMING_REPEATS):
                start = time.perf_counter()
                model = ow.OpenWorld(random_state=0, target_tpr=target).fit(X)
                fitted = time.perf_counter()
                model.score_samples(X)
                totals.append(time.perf_counter() - start)
                fits.append(fitted - start)
            entry[label] = (float(np.median(fits)), float(np.median(totals)))
        torch.set_num_threads(threads)
        entry["load"] = os.getloadavg()[0]
        rows.append(entry)
        log(
            f"timing {data.name}: fit+score {entry['default'][1]:.3f} s (without working point "
            f"{entry['no_working_point'][1]:.3f} s; torch with 2 threads {entry['two_threads'][1]:.3f} s)"
        )
    return rows


# ---------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    import numpy
    import pyod
    import scipy
    import sklearn
    import torch

    import openworld

    return {
        "openworld": openworld.__version__,
        "pyod": pyod.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "openworld", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes to openworld/ or benchmarks/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def fmt_s(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


class Report:
    def __init__(self, results: Results, methods: list[Method], sets: list[Dataset], n_seeds: int):
        self.r = results
        self.methods = methods
        self.sets = sets
        self.n_seeds = n_seeds  # a mean needs every seed's run: one that failed leaves the cell empty

    def names(self, group: str) -> list[str]:
        return [d.name for d in self.sets if d.group == group]

    def columns(self, group: str) -> list[Method]:
        return [m for m in self.methods if group in m.groups]

    def mean(self, group: str, dataset: str, method: str, attr: str) -> float | None:
        runs = self.r.runs.get((group, dataset, method))
        if not runs or len(runs) < self.n_seeds:
            return None
        values = [getattr(run, attr) for run in runs]
        if any(v is None for v in values):
            return None
        return float(np.mean(values))

    def complete(self, group: str, method: str) -> bool:
        return all(self.mean(group, name, method, "auroc") is not None for name in self.names(group))

    def group_mean(self, group: str, method: str, attr: str, names=None) -> float | None:
        names = self.names(group) if names is None else names
        values = [self.mean(group, name, method, attr) for name in names]
        return None if not values or any(v is None for v in values) else float(np.mean(values))  # all sets or none

    def best_baseline(self, group: str, name: str, attr: str = "auroc") -> tuple[float, str]:
        best = (-np.inf, "")
        for m in self.columns(group):
            if m.family != "baseline":
                continue
            value = self.mean(group, name, m.name, attr)
            if value is not None and value > best[0]:
                best = (value, m.name)
        return best

    def metric_table(self, group: str, attr: str, with_gap: bool) -> list[str]:
        cols = self.columns(group)
        gap_of = [m for m in ("OW", "OW raw") if any(c.name == m for c in cols)]
        header = (
            ["set"]
            + [f"`{m.name}`" for m in cols]
            + (["best baseline"] + [f"{m} − best" for m in gap_of] if with_gap else [])
        )
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in self.names(group):
            values = {m.name: self.mean(group, name, m.name, attr) for m in cols}
            top = max((v for v in values.values() if v is not None), default=None)
            cells = [name]
            for m in cols:
                text = fmt(values[m.name])
                cells.append(
                    f"**{text}**"
                    if values[m.name] is not None and top is not None and values[m.name] >= top - 5e-4
                    else text
                )
            if with_gap:
                best, who = self.best_baseline(group, name, attr)
                cells.append(f"{fmt(best)} ({who})")
                for m in gap_of:
                    ours = values.get(m)
                    text = "—" if ours is None else f"{ours - best:+.3f}"
                    cells.append(f"**{text}**" if ours is not None and ours - best < -0.05 else text)
            lines.append("| " + " | ".join(cells) + " |")
        mean_cells = ["**mean**"]
        for m in cols:
            value = self.group_mean(group, m.name, attr)
            text = fmt(value)
            if not self.complete(group, m.name):
                covered = sum(self.mean(group, n, m.name, attr) is not None for n in self.names(group))
                text = f"({text}, {covered} sets)" if covered else "—"
            mean_cells.append(text)
        if with_gap:
            mean_cells += [""] * (1 + len(gap_of))
        lines.append("| " + " | ".join(mean_cells) + " |")
        return lines

    def time_table(self) -> list[str]:
        big = [n for n in self.names("tabular") if self.r.rows.get(("tabular", n), (0,))[0] >= MAX_ROWS]
        header = [
            "method",
            "MVTec fit s",
            "MVTec score s",
            "tabular fit s",
            "tabular score s",
            f"50k-row sets fit s ({len(big)})",
            "50k-row sets score s",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in self.methods:
            cells = [f"`{m.name}`"]
            for group, names in (("mvtec", None), ("tabular", None), ("tabular", big)):
                for attr in ("fit_s", "score_s"):
                    if group not in m.groups:
                        cells.append("—")
                        continue
                    cells.append(fmt_s(self.group_mean(group, m.name, attr, names)))
            lines.append("| " + " | ".join(cells) + " |")
        return lines


def target_lines(rep: Report, method: str) -> list[str]:
    """Met / missed for one openworld configuration against the issue's targets."""
    lines = []
    runs_on_mvtec = "mvtec" in next(m for m in rep.methods if m.name == method).groups
    mv = rep.group_mean("mvtec", method, "auroc") if runs_on_mvtec else None
    tab = rep.group_mean("tabular", method, "auroc")
    out = []
    if mv is not None:
        out.append(("MVTec-AD mean AUROC ≥ 0.88", mv, mv >= 0.88, f"{mv:.3f} ({mv - 0.88:+.3f})"))
    if tab is not None:  # a partial run (--only) may hold no tabular set
        complete_baselines = [m.name for m in rep.methods if m.family == "baseline" and rep.complete("tabular", m.name)]
        best_mean, best_who = max(
            ((rep.group_mean("tabular", b, "auroc"), b) for b in complete_baselines), default=(np.nan, "")
        )
        out.append(("tabular mean AUROC ≥ 0.89", tab, tab >= 0.89, f"{tab:.3f} ({tab - 0.89:+.3f})"))
        out.append(
            (
                "tabular mean is the best of every method",
                tab,
                tab >= best_mean,
                (
                    f"{tab:.3f} vs best baseline {best_mean:.3f} ({best_who}, over all {len(rep.names('tabular'))} sets) "
                    f"({tab - best_mean:+.3f})"
                ),
            )
        )
        gaps = []
        for name in rep.names("tabular"):
            best, who = rep.best_baseline("tabular", name)
            ours = rep.mean("tabular", name, method, "auroc")
            gaps.append((ours - best, name, who))
        worst = min(gaps)
        behind = [g for g in gaps if g[0] < -0.05]
        detail = f"worst {worst[0]:+.3f} on {worst[1]} (vs {worst[2]})"
        if behind:
            detail += "; more than 0.05 behind on " + ", ".join(f"{n} ({g:+.3f} vs {w})" for g, n, w in sorted(behind))
        out.append(("never > 0.05 below the best method on any tabular set", worst[0], not behind, detail))
    for label, _, ok, text in out:
        lines.append(f"| {label} | {'met' if ok else '**missed**'} | {text} |")
    return lines


def write_report(
    path: Path,
    results: Results,
    methods: list[Method],
    sets: list[Dataset],
    timing: list[dict],
    seeds,
    elapsed: float,
    command: str,
) -> None:
    rep = Report(results, methods, sets, len(seeds))
    load = (
        f"{min(results.load):.1f}–{max(results.load):.1f} (median {np.median(results.load):.1f}) on "
        f"{os.cpu_count()} cores"
        if results.load
        else "not sampled"
    )
    v = versions()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ow_names = [m.name for m in methods if m.family == "openworld"]
    L: list[str] = []
    add = L.append
    add("# One-class anomaly detection: openworld against PyOD (issue 6)")
    add("")
    add(
        f"Generated by `{command}` (`make bench-anomaly`) on {now}, in {elapsed / 60:.1f} min on a "
        f"{os.cpu_count()}-core CPU ({platform.machine()}, torch threads: {_torch_threads()}). Do not edit by hand."
    )
    add("")
    add("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f"; openworld commit {git_commit()}.")
    add(f"Seeds: {', '.join(map(str, seeds))}. Numbers are means over the seeds; the mean row is the mean over sets.")
    add("")
    add("## Protocol")
    add("")
    add(
        "- Data: ADBench (Han et al., NeurIPS 2022), read from `../shared/data/adbench` (or `$OPENWORLD_DATA`) for "
        "evaluation only: MVTec-AD as ImageNet ResNet-18 embeddings (512-d, 15 categories) and 20 classical tabular "
        "sets."
    )
    add(
        f"- Per set and seed: sets over {MAX_ROWS:,} rows are first subsampled to {MAX_ROWS:,} rows (seeded); "
        f"fit on a random {TRAIN_SHARE:.0%} of the normal rows; test on the other {1 - TRAIN_SHARE:.0%} of the normal "
        "rows plus every anomaly. Every method sees the same splits."
    )
    add(
        "- AUROC: in-distribution (normal) positive with the normality score — the same number as anomaly positive "
        "with its negation. AUPR: average precision with the anomalies positive (chance = the anomaly share of the "
        "test rows). Times: wall-clock seconds of `fit` on the training rows and of scoring the test rows, mean over "
        "sets and seeds."
    )
    add(
        "- Features: MVTec embeddings are used as they are by every method. On tabular sets, columns constant on "
        "the training normals are dropped for every method (PyOD's PCA scores NaN on them); every baseline sees "
        "standardised features (a `StandardScaler` fitted on the training normals only); openworld is run on both: "
        "the columns `OW…` are standardised, `OW… raw` are the raw features. openworld is fed float32 (its compute "
        "dtype; statistics accumulate in float64)."
    )
    add(
        f"- Caps, for the time budget: OCSVM is fitted on at most {OCSVM_CAP:,} training rows (a seeded "
        "subsample; all test rows are scored) — this touches only the four 50,000-row sets (cover, http, skin, "
        "celeba), whose training sets hold ~27,000–35,000 normal rows. Every other method uses every training row. "
        "On MVTec, MCD and EllipticEnvelope are fitted with fewer training rows (70–300) than features (512): "
        "their covariance is singular there (scikit-learn warns) and their numbers are reported as they come out."
    )
    add(
        f"- Threads: every method runs with {THREADS} thread(s) (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, "
        "`MKL_NUM_THREADS`, `torch.set_num_threads`; override with `OPENWORLD_BENCH_THREADS`). On this 2-core "
        "machine, shared with other work while the benchmark ran, multi-threaded LAPACK spin-waits on busy cores: "
        "`torch.linalg.eigh` of a 512 × 512 matrix took 5–7 s with 2 threads and 0.04 s with 1, which made "
        '`OpenWorld(score="low_variance_mahalanobis").fit` on 160 MVTec rows take 30–45 s instead of 0.2 s. '
        f"Load average while running: {load}."
    )
    add(
        "- Nothing was tuned on the test anomalies: each configuration below is fixed in advance; every random "
        "method gets the seed (`random_state=seed`, and the seeded subsamples)."
    )
    add("")
    add("| method | configuration |")
    add("|---|---|")
    for m in methods:
        if m.name.endswith(" raw"):
            continue
        add(f"| `{m.name}` | {m.note} |")
    add("")

    add("## Targets of issue 6")
    add("")
    add(
        "For `OpenWorld()` with its defaults (`OW`: standardised tabular features; `OW raw`: raw features). "
        "'Best method' compares with the baselines of this table (the openworld variants are not counted against "
        "each other); the mean-row comparison uses the baselines that ran on all 20 sets."
    )
    add("")
    add("| target | status | measured |")
    add("|---|---|---|")
    add("| *`OW` (standardised)* | | |")
    L.extend(target_lines(rep, "OW"))
    add("| *`OW raw`* | | |")
    L.extend(target_lines(rep, "OW raw"))
    # Not the defaults: these rows were added, and the kernel density's working point revised, after earlier
    # runs on these very sets were seen, so their verdicts are exploratory, not results.
    if any(m.name == "OW-mix" for m in methods):
        add('| *`OW-mix` (standardised): `components="auto", covariance="full"` — exploratory, not a result* | | |')
        L.extend(target_lines(rep, "OW-mix"))
    for name in ("OW-kde", "OW-kde raw"):
        if any(m.name == name for m in methods):
            add(f'| *`{name}`: `score="kernel_density"` — exploratory (added after earlier runs on these sets were seen), not a result* | | |')
            L.extend(target_lines(rep, name))
    add("| *working point* | | |")
    large = [n for n in rep.names("tabular") if results.normals[("tabular", n)] >= LARGE_NORMALS]
    for name in ("OW", "OW raw", "OW-kde"):
        if not any(m.name == name for m in methods):
            continue
        devs = [(abs(rep.mean("tabular", n, name, "far") - 0.05), n) for n in large]
        per_seed = [
            (abs(run.far - 0.05), n, seed)
            for n in large
            for seed, run in zip(seeds, results.runs.get(("tabular", n, name), []), strict=False)
        ]
        if devs:
            worst_dev = max(devs)
            worst_seed = max(per_seed)
            ok = worst_seed[0] <= 0.01
            add(
                f"| `{name}`: realised false-alarm rate within ±0.01 of 0.05 on the tabular sets with ≥ "
                f"{LARGE_NORMALS:,} normal rows ({len(large)}) | {'met' if ok else '**missed**'} | mean absolute "
                f"deviation from 0.05 {np.mean([d for d, _ in devs]):.4f} (seed-mean per set), largest "
                f"{worst_dev[0]:.4f} ({worst_dev[1]}); largest single seed {worst_seed[0]:.4f} "
                f"({worst_seed[1]}, seed {worst_seed[2]}) |"
            )
    if timing:
        add("| *speed* | | |")
        def slowest(key):
            """The set whose fit + score under ``key`` took longest, its seconds, and the < 1 s verdict."""
            entry = max(timing, key=lambda e: e[key][1])
            seconds = entry[key][1]
            return entry, seconds, "met" if seconds < 1.0 else "**missed**"

        worst, seconds, verdict = slowest("default")
        add(
            f"| fit + score of a 50,000-row set < 1 s (`OpenWorld()`, all 50k rows, {THREADS} thread(s), median of "
            f"{TIMING_REPEATS}) | "
            f"{verdict} | slowest: {worst['name']} (d = {worst['d']}) "
            f"{seconds:.3f} s ({seconds - 1:+.3f} s); see the timing table |"
        )
        worst2, seconds2, verdict2 = slowest("two_threads")
        add(
            f"| the same with torch's 2 intra-op threads (1-minute load average {worst2['load']:.1f} on "
            f"{os.cpu_count()} cores at the time) | "
            f"{verdict2} | slowest: {worst2['name']} {seconds2:.3f} s "
            f"({seconds2 - 1:+.3f} s)"
            + (
                ": with other work on the machine, each multi-threaded operation waits for a busy core"
                if worst2["load"] >= 1.0
                else ""
            )
            + " |"
        )
    add("")
    add(
        "Sanity check against the reference numbers in issue 6 (same files, same protocol): "
        + "; ".join(
            f"{group} {method} {ref:.3f} there, {fmt(rep.group_mean(group, method, 'auroc'))} here"
            for (group, method), ref in ISSUE_REFERENCES.items()
        )
        + " (the issue's kNN settings beyond k = 5 are not "
        "stated)."
    )
    add("")
    add("### Every openworld configuration at a glance")
    add("")
    add(
        "Choosing among these rows by their numbers would be tuning on the test anomalies; they are shown so the "
        "options can be judged, not to pick a winner after the fact."
    )
    add("")
    add(
        "| configuration | MVTec mean AUROC | tabular mean AUROC | tabular mean AUPR | worst gap to best baseline | "
        "sets > 0.05 behind | mean fit s (tabular) |"
    )
    add("|---|---|---|---|---|---|---|")
    for name in ow_names:
        method = next(m for m in methods if m.name == name)
        mv = rep.group_mean("mvtec", name, "auroc") if "mvtec" in method.groups else None
        gaps = [
            (rep.mean("tabular", n, name, "auroc") - rep.best_baseline("tabular", n)[0], n)
            for n in rep.names("tabular")
        ] or [(np.nan, "—")]
        worst = min(gaps)
        add(
            f"| `{name}` | {fmt(mv)} | {fmt(rep.group_mean('tabular', name, 'auroc'))} | "
            f"{fmt(rep.group_mean('tabular', name, 'aupr'))} | {worst[0]:+.3f} ({worst[1]}) | "
            f"{sum(g < -0.05 for g, _ in gaps)} | {fmt_s(rep.group_mean('tabular', name, 'fit_s'))} |"
        )
    add("")
    add(
        "Means of the baselines over all sets: MVTec "
        + ", ".join(
            f"{m.name} {fmt(rep.group_mean('mvtec', m.name, 'auroc'))}"
            for m in methods
            if m.family == "baseline" and rep.complete("mvtec", m.name)
        )
        + "; tabular "
        + ", ".join(
            f"{m.name} {fmt(rep.group_mean('tabular', m.name, 'auroc'))}"
            for m in methods
            if m.family == "baseline" and rep.complete("tabular", m.name)
        )
        + "."
    )
    mcd_sets = [n for n in rep.names("tabular") if rep.mean("tabular", n, "MCD", "auroc") is not None]
    if mcd_sets and len(mcd_sets) < len(rep.names("tabular")):
        add(
            f"On the {len(mcd_sets)} tabular sets where MCD and EllipticEnvelope ran: MCD "
            f"{fmt(rep.group_mean('tabular', 'MCD', 'auroc', mcd_sets))}, EllipticEnvelope "
            f"{fmt(rep.group_mean('tabular', 'EllEnv', 'auroc', mcd_sets))}, OW "
            f"{fmt(rep.group_mean('tabular', 'OW', 'auroc', mcd_sets))}, OW raw "
            f"{fmt(rep.group_mean('tabular', 'OW raw', 'auroc', mcd_sets))}."
        )
    add("")

    diffs = []
    for n in rep.names("tabular"):
        a, b = rep.mean("tabular", n, "OW", "auroc"), rep.mean("tabular", n, "OW raw", "auroc")
        if a is not None and b is not None and abs(a - b) > 0.02:
            diffs.append(f"{n} {a:.3f} standardised vs {b:.3f} raw")
    if diffs:
        add(
            "Standardising changes `OpenWorld()` by more than 0.02 AUROC on: " + "; ".join(diffs) + ". (The "
            "Mahalanobis distance is affine-invariant; only the shrinkage toward a scaled identity sees the scale.)"
        )
        add("")
    for group, title in (
        ("mvtec", "MVTec-AD (ResNet-18 embeddings)"),
        ("tabular", "Tabular (20 ADBench classical sets)"),
    ):
        add(f"## {title}: AUROC")
        add("")
        if group == "tabular":
            add("| set | rows used | features | anomalies | normal rows |")
            add("|---|---|---|---|---|")
            for name in rep.names(group):
                n, d, a = results.rows[(group, name)]
                add(f"| {name} | {n:,} | {d} | {a:,} ({a / n:.1%}) | {results.normals[(group, name)]:,} |")
            add("")
        add(
            "Bold in a method column: the best in the row (within 0.0005). 'OW − best' is `OW` minus the best baseline "
            "on that set (bold where more than 0.05 behind)."
        )
        add("")
        L.extend(rep.metric_table(group, "auroc", with_gap=True))
        add("")
    for group, title in (("mvtec", "MVTec-AD"), ("tabular", "Tabular")):
        add(f"## {title}: AUPR (anomaly positive)")
        add("")
        L.extend(rep.metric_table(group, "aupr", with_gap=False))
        add("")

    add("## Time")
    add("")
    add(
        "Mean seconds per fit and per scoring of the test rows (MVTec: ~100–350 training rows × 512; the 50k-row "
        "sets train on ~35,000 rows and score ~15,000–25,000). Capped baselines fit on their capped rows. "
        "openworld's fit includes placing the working point (5-fold cross-fitted scores of up to 20,000 training "
        "rows). The machine is shared, so single timings are noisy."
    )
    add("")
    L.extend(rep.time_table())
    add("")
    if timing:
        add(
            f"### `OpenWorld()` on whole 50,000-row sets (fit on all 50k rows, then score them; median of "
            f"{TIMING_REPEATS})"
        )
        add("")
        add(
            "| set | features | fit s | fit + score s | fit + score s without the working point "
            "(`target_tpr=None`) | fit + score s, torch with 2 threads | 1-minute load average then |"
        )
        add("|---|---|---|---|---|---|---|")
        for e in timing:
            add(
                f"| {e['name']} | {e['d']} | {e['default'][0]:.3f} | {e['default'][1]:.3f} | "
                f"{e['no_working_point'][1]:.3f} | {e['two_threads'][1]:.3f} | {e['load']:.1f} |"
            )
        add("")

    add("## Working point: realised false-alarm rate at `target_tpr=0.95`")
    add("")
    add(
        "`OpenWorld(target_tpr=0.95)` places its threshold from cross-fitted scores of the training rows (no "
        "held-out rows are given; `OW-kde` from the scores of up to 4,096 kept training normals held out of its "
        "density, see the configurations). The realised false-alarm rate is the share of the held-out normal test rows "
        "scored below that threshold; the promise is 1 − 0.95 = 0.05. Mean over seeds."
    )
    add("")
    large = [n for n in rep.names("tabular") if results.normals[("tabular", n)] >= LARGE_NORMALS]
    held_out = [
        results.normals[("mvtec", n)] - round(TRAIN_SHARE * results.normals[("mvtec", n)]) for n in rep.names("mvtec")
    ] or [0]
    mv_held = (min(held_out), max(held_out))
    header = ["set", "normal rows", "held-out normals"] + [f"`{n}`" for n in ow_names]
    add("| " + " | ".join(header) + " |")
    add("|" + "---|" * len(header))
    for group in ("tabular", "mvtec"):
        for name in rep.names(group):
            n_norm = results.normals[(group, name)]
            held = n_norm - round(TRAIN_SHARE * n_norm)
            mark = " ★" if group == "tabular" and name in large else ""
            cells = [f"{group}/{name}{mark}", f"{n_norm:,}", f"{held:,}"]
            for m in ow_names:
                method = next(x for x in methods if x.name == m)
                cells.append(fmt(rep.mean(group, name, m, "far")) if group in method.groups else "—")
            add("| " + " | ".join(cells) + " |")
    cells = [
        f"**mean absolute deviation from 0.05 on the ★ sets (≥ {LARGE_NORMALS:,} normal rows, {len(large)} sets)**",
        "",
        "",
    ]
    worst_cells = ["**largest absolute deviation from 0.05 on the ★ sets**", "", ""]
    for m in ow_names:
        devs = [
            (abs(rep.mean("tabular", n, m, "far") - 0.05), n)
            for n in large
            if rep.mean("tabular", n, m, "far") is not None
        ]
        cells.append(fmt(float(np.mean([d for d, _ in devs])), 4) if devs else "—")
        worst_cells.append(f"{max(devs)[0]:.4f} ({max(devs)[1]})" if devs else "—")
    add("| " + " | ".join(cells) + " |")
    add("| " + " | ".join(worst_cells) + " |")
    mv_cells = ["**mean FAR on MVTec (15 categories)**", "", ""]
    for m in ow_names:
        mv_cells.append(
            fmt(rep.group_mean("mvtec", m, "far")) if "mvtec" in next(x for x in methods if x.name == m).groups else "—"
        )
    add("| " + " | ".join(mv_cells) + " |")
    add("")
    add(
        "The issue's target: within ±1 point (0.01) of the promised 0.05 on the larger tabular sets (★). The "
        "false-alarm rate is averaged over the seeds per set first, then the absolute deviation from 0.05 is averaged over the ★ sets. "
        f"MVTec categories have {mv_held[0]}–{mv_held[1]} held-out normal rows each, so one row moves their rate by "
        f"{100 / max(mv_held[1], 1):.1f}–{100 / max(mv_held[0], 1):.1f} points."
    )
    add("")

    if results.failures or results.skipped:
        add("## Failures and skipped runs")
        add("")
        reasons: dict[str, list[str]] = {}
        for (group, name, method), why in sorted(results.skipped.items()):
            reasons.setdefault(f"`{method}`: {why}", []).append(f"{group}/{name}")
        for why, where in reasons.items():
            add(f"- {why}: {', '.join(sorted(set(where)))}")
        for failure in results.failures:
            add(f"- {failure}")
        add("")

    add("## Reproduce")
    add("")
    add("```bash")
    add("make bench-anomaly          # = .venv/bin/python benchmarks/anomaly.py --out docs/anomaly.md")
    add("```")
    add("")
    add(
        f"PyOD is needed only for this benchmark (`{PYOD_PIN}`). Options: `--seeds`, "
        "`--only NAME[,NAME]` (substring match on set names, for a quick look), `--out`."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "anomaly.md")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--only", default="", help="comma-separated substrings of set names (a quick partial run)")
    parser.add_argument("--no-timing", action="store_true", help="skip the dedicated 50k-row timing")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s != "")
    import torch

    torch.set_num_threads(THREADS)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)

    sets = datasets(data_root())
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        sets = [d for d in sets if any(w.lower() in d.name.lower() for w in wanted)]
    methods = openworld_methods() + baseline_methods()
    log(f"{len(sets)} sets × {len(seeds)} seeds × {len(methods)} methods (openworld variants and baselines)")
    results = run_all(sets, methods, seeds, log)
    timing = [] if args.no_timing else time_large_sets(sets, log)
    elapsed = time.perf_counter() - start
    command = "python benchmarks/anomaly.py" + (
        f" {' '.join(argv if argv is not None else sys.argv[1:])}"
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    write_report(args.out, results, methods, sets, timing, seeds, elapsed, command)
    log(f"wrote {args.out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
