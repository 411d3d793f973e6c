"""``make bench-speed``: openworld's fit and scoring against their matrix-product floors and peers.

Writes ``docs/performance.md`` (issue 5, CPU part). One run times, side by side on
the same float32 data and thread count: openworld ``fit`` / ``predict_proba`` /
``score_samples`` (tied covariance, Ledoit-Wolf; ``covariance="full"`` scoring
on a row sample), scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr",
shrinkage="auto")``, pytorch-ood's ``Mahalanobis`` and ``GMM`` detectors, and
the floors: float32 ``XᵀX`` (fit), ``X·W`` with W (d, d) (predict_proba) and
``X·[W W₀]`` with [W W₀] (d, 2d) (score_samples)::

    .venv/bin/python -m benchmarks.speed [--full] [--out docs/performance.md]

pytorch-ood does not import beside the package's torch, so its cases run in
``bench-env`` in a subprocess (``python -m benchmarks.speed peers``) that
regenerates the same data from the same seed. Each time is the best of a few
repeats (one at N = 10⁶); peak memory is the resident set's growth during the
call, sampled every 2 ms. The machine is shared: the load average is recorded
with every thread setting, and ratios are taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / "bench-env" / "bin" / "python"
SEED = 0
THREADS = (2, 1)
# (N, d, C). The default subset fits ~15 minutes on a 2-core CPU; --full runs the whole grid.
DEFAULT_CASES = [
    (10_000, 384, 10), (10_000, 384, 150), (10_000, 384, 1000),
    (100_000, 384, 10), (100_000, 384, 150), (100_000, 384, 1000),
    (100_000, 768, 150), (1_000_000, 384, 150),
]
FULL_CASES = [(n, d, c) for n in (10_000, 100_000, 1_000_000) for d in (384, 768) for c in (10, 150, 1000)]
HEADLINE = (100_000, 384, 150)
PEER_ROW_BUDGET = 200_000  # rows × classes scored by per-class (looping) methods; their time is scaled to N rows
SLOW_FIT_ROWS = 100_000  # scikit-learn LDA and the peers' fits run on at most this many rows per case by default


def make_data(n: int, d: int, n_classes: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Float32 rows ``(n, d)`` of ``n_classes`` Gaussian classes and their labels (every class present)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)).astype(np.float32)
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += means[y]
    return X, y


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall time of ``fn()`` over ``repeats`` calls (s) and its peak resident-memory growth (MB)."""
    best, peak = float("inf"), 0
    for _ in range(repeats):
        base, high, done = _rss_bytes(), [0], threading.Event()

        def sample():
            while not done.is_set():
                high[0] = max(high[0], _rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        done.set()
        sampler.join()
        peak = max(peak, max(high[0], _rss_bytes()) - base)
    return best, peak / 2**20


def set_threads(n: int):
    """Intra-op threads for torch and the BLAS scikit-learn uses; returns the BLAS limiter to keep alive."""
    torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)


def repeats_for(n: int) -> int:
    return 2 if n <= 100_000 else 1


def row_sample(n: int, n_classes: int) -> int:
    return max(100, min(n, PEER_ROW_BUDGET // n_classes))


# --------------------------------------------------------------------------- in .venv: openworld, floors, LDA


def run_case(n: int, d: int, n_classes: int, threads: int, full: bool) -> list[dict]:
    """Every method that runs in the package's environment, on one case."""
    import openworld as ow
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    X, y = make_data(n, d, n_classes)
    T = torch.from_numpy(X)
    reps = repeats_for(n)
    rows = []

    def record(method, call, seconds, rss, scored_rows=None):
        rows.append(dict(N=n, d=d, C=n_classes, threads=threads, method=method, call=call, seconds=seconds,
                         rss_mb=rss, scored_rows=scored_rows or n))

    gen = torch.Generator().manual_seed(SEED)
    W = torch.randn(d, d, generator=gen)
    W2 = torch.randn(d, 2 * d, generator=gen)
    record("floor", "fit", *timed(lambda: T.T @ T, reps))
    record("floor", "predict_proba", *timed(lambda: T @ W, reps))
    record("floor", "score_samples", *timed(lambda: T @ W2, reps))

    model = ow.OpenWorld(random_state=0)
    record("openworld", "fit", *timed(lambda: model.fit(X, y), reps))
    record("openworld (target_tpr=None)", "fit", *timed(lambda: ow.OpenWorld(target_tpr=None).fit(X, y), reps))
    record("openworld", "predict_proba", *timed(lambda: model.predict_proba(X), reps))
    record("openworld", "score_samples", *timed(lambda: model.score_samples(X), reps))
    model = None  # free its statistics before the next fits

    if n_classes * d * d * 8 * 3 < 6 * 2**30:  # full covariance: per-class matrices (statistics, covariances, whiteners)
        full_model = ow.OpenWorld(covariance="full", target_tpr=None).fit(X[: min(n, SLOW_FIT_ROWS)], y[: min(n, SLOW_FIT_ROWS)])
        m = row_sample(n, n_classes)
        seconds, rss = timed(lambda: full_model.score_samples(X[:m]), reps)
        record("openworld covariance='full'", "score_samples", seconds * n / m, rss, m)
        full_model = None

    if n <= SLOW_FIT_ROWS or full:
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        record("scikit-learn LDA", "fit", *timed(lambda: lda.fit(X, y), reps))
        record("scikit-learn LDA", "predict_proba", *timed(lambda: lda.predict_proba(X), reps))
    return rows


def accuracy_check() -> dict:
    """float32 fit and scores against a float64 computation on the same rows (headline case)."""
    import openworld as ow

    n, d, n_classes = HEADLINE
    X, y = make_data(n, d, n_classes)
    X_new = make_data(20_000, d, n_classes, seed=1)[0]
    X_new[::2] += np.random.default_rng(2).normal(size=(10_000, d)).astype(np.float32) * 2  # half shifted away
    single = ow.OpenWorld(target_tpr=None).fit(X, y)
    double = ow.OpenWorld(target_tpr=None).fit(X.astype(np.float64), y)
    s32, s64 = single.score_samples(X_new).astype(np.float64), double.score_samples(X_new.astype(np.float64))
    p32, p64 = single.predict_proba(X_new).astype(np.float64), double.predict_proba(X_new.astype(np.float64))
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
    from sklearn.metrics import roc_auc_score

    label = np.arange(20_000) % 2 == 1
    return {
        "scatters": rel(single.statistics_.scatters.numpy(), double.statistics_.scatters.numpy()),
        "means": rel(single.statistics_.means.numpy(), double.statistics_.means.numpy()),
        "fourth_moments": rel(single.statistics_.fourth_moments.numpy(), double.statistics_.fourth_moments.numpy()),
        "score_samples": rel(s32, s64),
        "predict_proba": float(np.abs(p32 - p64).max()),
        "auroc_difference": abs(roc_auc_score(label, s32) - roc_auc_score(label, s64)),
    }


# --------------------------------------------------------------------------- in bench-env: pytorch-ood


def run_peers(cases: list[tuple[int, int, int]], threads: int, full: bool) -> list[dict]:
    from pytorch_ood.detector import GMM, Mahalanobis

    set_threads(threads)
    rows = []
    for n, d, n_classes in cases:
        X, y = make_data(n, d, n_classes)
        T, labels = torch.from_numpy(X), torch.from_numpy(y)
        reps = repeats_for(n)
        m = row_sample(n, n_classes)
        fit_rows = n if full else min(n, SLOW_FIT_ROWS)
        detectors = [("pytorch-ood Mahalanobis", Mahalanobis(None))]
        if n_classes == 150:
            detectors.append(("pytorch-ood GMM", GMM(None)))
        for name, detector in detectors:
            seconds, rss = timed(lambda: detector.fit_features(T[:fit_rows], labels[:fit_rows]), 1 if name.endswith("GMM") else reps)
            rows.append(dict(N=n, d=d, C=n_classes, threads=threads, method=name, call="fit", seconds=seconds * n / fit_rows,
                             rss_mb=rss, scored_rows=fit_rows))
            with torch.no_grad():
                seconds, rss = timed(lambda: detector.predict_features(T[:m]), reps)
            rows.append(dict(N=n, d=d, C=n_classes, threads=threads, method=name, call="score_samples",
                             seconds=seconds * n / m, rss_mb=rss, scored_rows=m))
    return rows


# --------------------------------------------------------------------------- report


def _baseline(get, case, threads, method, call):
    """The openworld row a peer is compared with: per-class covariances (GMM scoring) against ``full``."""
    if method == "pytorch-ood GMM":
        return get(case, threads, "openworld covariance='full'", call) if call == "score_samples" else None
    return get(case, threads, "openworld", call)


def _targets(get) -> list[str]:
    """Issue 5's CPU targets at the headline case, met or missed, for each thread count."""
    checks = [  # (name, numerator (method, call), denominator (method, call), bound, at most?)
        ("fit ≤ 1.5× floor", ("openworld", "fit"), ("floor", "fit"), 1.5, True),
        ("predict_proba ≤ 2× floor", ("openworld", "predict_proba"), ("floor", "predict_proba"), 2, True),
        ("score_samples ≤ 2× floor", ("openworld", "score_samples"), ("floor", "score_samples"), 2, True),
        ("fit ≥ 6× faster than scikit-learn LDA", ("scikit-learn LDA", "fit"), ("openworld", "fit"), 6, False),
        # LDA places no OOD threshold: the like-for-like fit is the one without the working point.
        ("fit without working point ≤ 1.5× floor", ("openworld (target_tpr=None)", "fit"), ("floor", "fit"), 1.5, True),
        ("fit without working point ≥ 6× faster than LDA", ("scikit-learn LDA", "fit"), ("openworld (target_tpr=None)", "fit"),
         6, False),
        ("scoring ≥ 50× faster than pytorch-ood Mahalanobis", ("pytorch-ood Mahalanobis", "score_samples"),
         ("openworld", "score_samples"), 50, False),
        ("`full` scoring ≥ 10× faster than pytorch-ood GMM", ("pytorch-ood GMM", "score_samples"),
         ("openworld covariance='full'", "score_samples"), 10, False),
    ]
    lines = ["### Targets (issue 5, CPU) at the headline case", "", "| target | " + " | ".join(
        f"{t} thread(s)" for t in THREADS) + " |", "|---" * (len(THREADS) + 1) + "|"]
    for name, top, bottom, bound, at_most in checks:
        cells = []
        for threads in THREADS:
            a, b = get(HEADLINE, threads, *top), get(HEADLINE, threads, *bottom)
            if a is None or b is None:
                cells.append("not measured")
                continue
            ratio = a["seconds"] / b["seconds"]
            met = ratio <= bound if at_most else ratio >= bound
            cells.append(f"{ratio:.2f} — {'met' if met else 'missed'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def write_report(rows: list[dict], loads: dict, accuracy: dict, cases, full: bool, elapsed: float, out: Path) -> str:
    def get(case, threads, method, call):
        for r in rows:
            if (r["N"], r["d"], r["C"], r["threads"], r["method"], r["call"]) == (*case, threads, method, call):
                return r
        return None

    lines = [
        "# Performance (CPU)",
        "",
        f"Generated by `make bench-speed` (`benchmarks/speed.py{' --full' if full else ''}`) on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Float32 inputs; classes are Gaussian blobs (`make_data`, seed {SEED}).",
        "",
        "The machine is shared with other jobs: absolute times move with its load, so every ratio below is "
        "taken between calls of the same run, case and thread count. Load average (1, 5, 15 min) when each "
        "thread setting started: " + "; ".join(f"{t} thread(s): {', '.join(f'{v:.2f}' for v in loads[t])}" for t in loads) + ".",
        "",
        "**Floors** (the products a call cannot avoid, float32, torch): fit = `XᵀX` (n×d×d); "
        "predict_proba = `X·W`, W (d, d); score_samples = `X·[W W₀]` (n×d×2d, class and background whitening). "
        "Ratios: *ow/floor* = openworld ÷ floor (lower is better; targets ≤ 1.5 for fit, ≤ 2 for scoring); "
        "*peer/ow* = peer ÷ openworld (how many times faster openworld is; pytorch-ood's GMM, one covariance per "
        "class, is compared with openworld `covariance='full'`). For `full` the floor is its cost model, "
        "(C + 1)/2 times the score_samples floor (see the end).",
        "",
    ]
    n, d, c = HEADLINE
    if get(HEADLINE, 2, "openworld", "fit"):
        lines += [f"## Headline: N = {n:,}, d = {d}, C = {c}", ""]
        lines += ["| threads | call | floor (s) | openworld (s) | ow/floor | scikit-learn LDA (s) | LDA/ow | "
                  "pytorch-ood Mahalanobis (s) | Mahalanobis/ow | pytorch-ood GMM (s) | GMM/ow full |", "|---" * 11 + "|"]
        for threads in THREADS:
            for call in ("fit", "predict_proba", "score_samples"):
                ow = get(HEADLINE, threads, "openworld", call)
                floor = get(HEADLINE, threads, "floor", call)
                cells = [str(threads), call, _fmt(floor["seconds"]), _fmt(ow["seconds"]), f"{ow['seconds'] / floor['seconds']:.2f}"]
                for peer in ("scikit-learn LDA", "pytorch-ood Mahalanobis", "pytorch-ood GMM"):
                    p = get(HEADLINE, threads, peer, call)
                    base = _baseline(get, HEADLINE, threads, peer, call)
                    cells += [_fmt(p["seconds"]), f"{p['seconds'] / base['seconds']:.0f}×"] if p and base else ["–", "–"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _targets(get) + ["## All cases", "",
              "Times in seconds for all N rows; *rss* is the peak growth of resident memory during the call (MB). "
              "Methods that loop over classes (pytorch-ood; openworld `full`) score a sample of "
              f"max(100, {PEER_ROW_BUDGET:,} / C) rows and their time is scaled to N rows (marked *); "
              "scikit-learn LDA and the peers' fits run only up to N = 10⁵ by default.", ""]
    lines += ["| N | d | C | threads | method | call | seconds | rss (MB) | ow/floor | peer/ow |", "|---" * 10 + "|"]
    for case in cases:
        for threads in THREADS:
            for r in [r for r in rows if (r["N"], r["d"], r["C"], r["threads"]) == (*case, threads)]:
                floor = get(case, threads, "floor", r["call"])
                ow = _baseline(get, case, threads, r["method"], r["call"])
                if r["method"].endswith("'full'"):  # cost model: (C + 1) / 2 times the tied scoring floor
                    floor = dict(floor, seconds=floor["seconds"] * (r["C"] + 1) / 2)
                ratio = f"{r['seconds'] / floor['seconds']:.2f}" if r["method"].startswith("openworld") and floor else ""
                peer = f"{r['seconds'] / ow['seconds']:.1f}×" if not r["method"].startswith(("openworld", "floor")) and ow else ""
                star = "*" if r["scored_rows"] < r["N"] else ""
                lines.append(f"| {r['N']:,} | {r['d']} | {r['C']} | {threads} | {r['method']} | {r['call']} | "
                             f"{_fmt(r['seconds'])}{star} | {r['rss_mb']:.0f} | {ratio} | {peer} |")
    lines += [
        "",
        "## Accuracy of float32 against float64",
        "",
        f"Fitted on the headline case's rows as float32 and as float64, scored on 20,000 new rows (half shifted "
        "away from the classes): largest differences, relative to the largest float64 value (statistics, scores) "
        "or absolute (posteriors).",
        "",
        "| quantity | difference |",
        "|---|---|",
    ] + [f"| {k} | {v:.1e} |" for k, v in accuracy.items()]
    report = "\n".join(lines) + "\n" + METHOD_NOTES
    out.write_text(report)
    return report


METHOD_NOTES = """
## How openworld reaches the floor

- **Fit.** Rows are sorted by class once (a radix sort of the class numbers). Each class's rows are gathered
  (at most 16 MB at a time; a larger class is cut into pieces merged exactly by Chan's update), centered at
  the class mean (float64 sums) and multiplied as three products on the halves of d — the two diagonal blocks
  and one off-diagonal block of `RᵀR`, three quarters of its products (faster than BLAS `syrk` here) —
  mirrored into the float64 (C, d, d) scatters. All classes together are three quarters of an `XᵀX` of
  products, each row is read once, and the pooled
  within-class scatter is summed on the way. Products are float32 for float32 input and summed in float64;
  float64 input stays float64 throughout (`partial_fit == fit`, `forget`, `unlearn` hold to 1e-8 there).
- **Working point.** The default fit also scores up to 20,000 of its rows with 5 fold models. For a tied
  covariance a fold model needs only its *pooled* statistics, obtained from the fold's rows (one Gram matrix each)
  and one read of the per-class scatters for all folds (`ClassStatistics.pooled_without`), never a (C, d, d)
  difference per fold; the background factor of each fold model comes from a C×C Cholesky factor
  (Woodbury) instead of an SVD. Its cost is fixed, so it weighs most at small N (the `target_tpr=None` rows
  show the fit without it).
- **Threads.** Fit does not lean on torch's intra-op parallelism for its many small operations. Classes,
  folds and pieces of the scoring are tasks that `torch.get_num_threads()` Python threads pull in turn, each
  running single-threaded kernels that release the GIL (torch set to one thread and the BLAS libraries to one
  thread, through threadpoolctl, while the fit's own work runs). A thread that the operating system
  deschedules holds back only its current task, where a parallel region per operation would wait for it
  every time: before this, a 2-thread fit on a loaded machine took 28 times its floor (one SVD of a
  150 × 384 matrix alone took seconds).
- **predict_proba** (tied) is linear in x: one n×d×C product plus a softmax, less than the floor when C < d.
  With C > d the n×d×C product and the n×C softmax are more than `X·W`, so the ratio exceeds 1 there.
- **score_samples** (tied, relative Mahalanobis): `D₀ − min_k D_k = 2 max_k ℓ_k − ‖(x − c) F‖²` with ℓ_k the
  LDA logits and F F ᵀ = P − P₀ (Woodbury; rank min(C, d)): n·d·(C + min(C, d)) instead of the two whitening
  products, and no float32 cancellation between two large distances.
- **covariance="full"** scoring whitens with all C class matrices in one (n×d×Cd) product, chunked to
  256 MB: cost ≈ 2·d²·(C + 1) flops per row (C class whitenings and the background), memory C·d² for the
  whiteners. It is C/2 times the tied floor by construction (the *ow/floor* column's cost model); the table
  reports its rows/s as time for N rows. When every class has fewer rows than d/2 (here N/C < 192 at
  d = 384: N = 10⁴ with C ≥ 150, N = 10⁵ with C = 1000), each class covariance is the pooled one plus a
  scatter of rank r < d/2 and the distance is the pooled one less r squared projections (Woodbury, exact):
  ≈ 2·d·(d + C + C·r) flops per row and d·C·r numbers, which is why those rows fall below 1.
- **Two threads on a loaded machine.** When another job holds one of the two cores, a 2-thread product
  (the floor, scikit-learn's LDA) runs barely faster, or slower, than a 1-thread one; compare the load
  averages above. The 1-thread columns show the cost of the algorithms themselves.
- **Peers.** scikit-learn's LDA (lsqr, Ledoit-Wolf) computes its covariance in float64; pytorch-ood's
  Mahalanobis fits in a Python loop over classes and scores with one (n×d×d) product per class; its GMM
  detector keeps one covariance per class and scores class by class.
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "peers"))
    parser.add_argument("--full", action="store_true", help="the whole grid, every method at every N")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=str, default=None, help="peers mode: JSON list of [N, d, C]")
    args = parser.parse_args(argv)
    if args.mode == "peers":
        cases = [tuple(c) for c in json.loads(args.cases)]
        print(json.dumps(run_peers(cases, args.threads, args.full)))
        return
    started = time.perf_counter()
    cases = FULL_CASES if args.full else DEFAULT_CASES
    rows, loads = [], {}
    for threads in THREADS:
        loads[threads] = os.getloadavg()
        limiter = set_threads(threads)
        for case in cases:
            print(f"[speed] threads={threads} N={case[0]:,} d={case[1]} C={case[2]}", flush=True)
            rows += run_case(*case, threads, args.full)
        del limiter
        if BENCH_PYTHON.exists():
            peer_cases = [c for c in cases if args.full or c[0] <= SLOW_FIT_ROWS]
            print(f"[speed] threads={threads}: pytorch-ood in bench-env", flush=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
            done = subprocess.run(
                [str(BENCH_PYTHON), "-m", "benchmarks.speed", "peers", "--threads", str(threads),
                 "--cases", json.dumps(peer_cases)] + (["--full"] if args.full else []),
                cwd=ROOT, env=env, capture_output=True, text=True, check=True,
            )
            rows += json.loads(done.stdout.strip().splitlines()[-1])
    set_threads(2)
    accuracy = accuracy_check()
    raw = ROOT / ".cache" / "bench-speed.json"  # the run's numbers, unrounded
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"rows": rows, "loads": loads, "accuracy": accuracy}, indent=1))
    report = write_report(rows, loads, accuracy, cases, args.full, time.perf_counter() - started, args.out)
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
