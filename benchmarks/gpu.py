"""``make bench-gpu``: openworld's fit and scoring on one CUDA device, against its GEMM rates.

Writes ``docs/performance-gpu.md`` (issue 5, GPU part) and the raw numbers as JSON. One run
measures the device's matrix-product rates (fp32, TF32, fp64, bf16), then (a) the fit on
N = 10⁷ float32 rows, d = 768, C = 1000 generated on the device: the ``XᵀX`` floors, the class
statistics in three product precisions against a float64 CPU reference, the public
``ClassStatistics.from_rows`` and two estimator fits (a cProfile of the default fit goes to
``fit_profile.txt`` beside the JSON); and (b) scoring of 2·10⁶ rows: rows/s of the library's
calls, of a naive two-GEMM implementation and of the floor GEMMs in TF32, and their accuracy
(AUROC against 5·10⁵ out-of-distribution rows, posteriors) against the same model in float64::

    PYTHONPATH=. python3 -m benchmarks.gpu [--quick] [--out docs/performance-gpu.md] [--json PATH]

``--quick`` runs tiny sizes (on the CPU where there is no CUDA device) to debug the script; its
numbers mean nothing. Times are the best of a few synchronised calls after a warm-up (GEMM rates:
the mean of 5 after 2). "As shipped" calls run with torch's TF32 setting untouched.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import shlex
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from openworld import OpenWorld
from openworld.core import statistics as st
from openworld.core.metrics import auroc
from openworld.core.statistics import ClassStatistics

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("weights", "means", "scatters", "third_moments", "fourth_moments")
FIT_TARGET_S = 0.5
RATE_TARGETS = {"posteriors": 80e6, "posteriors+score": 55e6}  # rows/s (issue 5)
AUROC_TARGET = 1e-4
PROBA_ROWS = 200_000  # rows on which posteriors are compared with float64
res: dict = {}
JSON_PATH = ROOT / ".cache" / "bench-gpu.json"


def log(key, value):
    res[key] = value
    print(f"[gpu] {key}: {value}", flush=True)
    JSON_PATH.write_text(json.dumps(res, indent=1, default=str))  # kept up to date: a killed run leaves its numbers


@contextmanager
def tf32(on: bool):
    """``torch.backends.cuda.matmul.allow_tf32 = on`` inside, the previous value restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(f, reps=2, warm=1):
    """Best synchronised wall time of ``f()`` over ``reps`` calls after ``warm`` calls, and its last result."""
    out = None
    for _ in range(warm):
        out = f()
    best = math.inf
    for _ in range(reps):
        del out  # the previous result is freed before the next call (large outputs)
        sync()
        t = time.perf_counter()
        out = f()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def mean_time(f, reps=5, warm=2):
    for _ in range(warm):
        f()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    sync()
    return (time.perf_counter() - t) / reps


def attempt(key, f):
    """``f()``, or None with the error logged under ``key`` (one broken call does not end the run)."""
    try:
        return f()
    except Exception as e:  # noqa: BLE001
        log(key + "_error", repr(e))
        return None


def sampler(dev, d, n_classes):
    """The probe's generator: class means (scale 0.05, 100 spare ones for OOD), a rotation with a decaying spectrum, an offset."""
    g = torch.Generator(device=dev).manual_seed(0)
    means = torch.randn(n_classes + 100, d, device=dev, generator=g) * 0.05
    spectrum = torch.logspace(0, -1.5, d, device=dev)
    A = torch.linalg.qr(torch.randn(d, d, device=dev, generator=g))[0] * spectrum.sqrt()
    offset = torch.randn(d, device=dev, generator=g)

    def sample(n, seed, classes=(0, n_classes)):
        gg = torch.Generator(device=dev).manual_seed(seed)
        y = torch.randint(*classes, (n,), device=dev, generator=gg)
        X = torch.empty(n, d, device=dev)
        with tf32(False):
            for s in range(0, n, 1_000_000):
                e = min(n, s + 1_000_000)
                X[s:e] = torch.randn(e - s, d, device=dev, generator=gg) @ A.T + means[y[s:e]] + offset
        return X, y

    return sample


def gemm_rates(dev, m):
    rates = {}
    for name, dtype, t32 in [("fp32", torch.float32, False), ("tf32", torch.float32, True),
                             ("fp64", torch.float64, False), ("bf16", torch.bfloat16, False)]:
        a, b = (torch.randn(m, m, device=dev, dtype=dtype) for _ in range(2))
        with tf32(t32):
            rates[name] = 2 * m**3 / mean_time(lambda: a @ b) / 1e12
        log(f"gemm_{name}_tflops", rates[name])
    return rates


def reference(X, y, n_classes):
    """float64 statistics on the CPU, 100 classes at a time (rows gathered on the device)."""
    order = torch.argsort(y)
    starts = np.concatenate([[0], np.cumsum(torch.bincount(y, minlength=n_classes).cpu().numpy())])
    parts = []
    for k0 in range(0, n_classes, 100):
        k1 = min(n_classes, k0 + 100)
        idx = order[starts[k0] : starts[k1]]
        parts.append(ClassStatistics.from_rows(X.index_select(0, idx).cpu().double(), (y.index_select(0, idx) - k0).cpu(), k1 - k0))
    return ClassStatistics.concat(parts)


def errors(stats, ref):
    """Per field: max over classes of ‖a − b‖_F / ‖b‖_F; pooled: of the summed scatters."""
    s, C = stats.to("cpu"), ref.n_classes
    out = {}
    for name in FIELDS:
        a, b = getattr(s, name).double().reshape(C, -1), getattr(ref, name).reshape(C, -1)
        out[name] = float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())
    pr = ref.scatters.sum(0)
    out["pooled"] = float((s.scatters.double().sum(0) - pr).norm() / pr.norm())
    return out


def fit_case(dev, N, d, C, profile_path):
    X, y = sampler(dev, d, C)(N, 1)
    sync()
    log("fit_data_gb", X.numel() * 4 / 1e9)
    for name, t32 in [("fp32", False), ("tf32", True)]:
        with tf32(t32):
            log(f"floor_xtx_{name}_s", timed(lambda: X.T @ X)[0])

    def xtx64():
        out = torch.zeros(d, d, device=dev, dtype=torch.float64)
        for s in range(0, N, 1 << 20):
            Z = X[s : s + (1 << 20)].double()
            out.addmm_(Z.T, Z)
        return out

    log("floor_xtx_fp64_s", timed(xtx64)[0])
    t = time.perf_counter()
    ref = attempt("reference", lambda: reference(X, y, C))
    log("reference_cpu_s", time.perf_counter() - t)

    def statistics(tag, call, **extra):
        out = attempt(f"stats_{tag}", lambda: timed(call))
        if out is not None:
            log(f"stats_{tag}", dict(seconds=out[0], errors=ref and errors(out[1], ref), **extra))

    for tag, compute, t32 in [("float32", torch.float32, False), ("tf32", torch.float32, True), ("float64", torch.float64, False)]:
        rows = 2**31 // (d * compute.itemsize)
        with tf32(t32):
            statistics(tag, lambda: ClassStatistics._from_rows_grouped(X, y, C, None, compute=compute, group_rows=rows),
                       group_rows=rows)
    log("public_dtype", str(st.cuda_product_dtype(X)) if dev.type == "cuda" else "n/a (no CUDA)")
    statistics("public", lambda: ClassStatistics.from_rows(X, y, C))
    ref = None  # frees the reference (a cell of the closures above)
    for tag, kw in [("target_tpr_none", dict(target_tpr=None)), ("default", {})]:
        t = attempt(f"fit_{tag}", lambda: timed(lambda: OpenWorld(random_state=0, **kw).fit(X, y))[0])
        if t is not None:
            log(f"fit_{tag}_s", t)
    profiler = cProfile.Profile()
    profiler.enable()
    attempt("fit_profile", lambda: (OpenWorld(random_state=0).fit(X, y), sync()))
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
    profile_path.write_text(text.getvalue())
    X = y = None  # frees the rows before the scoring case
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        log("fit_max_memory_allocated_gb", torch.cuda.max_memory_allocated() / 1e9)
        torch.cuda.reset_peak_memory_stats()


def naive_posteriors(head, device, chunk=1 << 18):
    """The issue's naive version: Z = (X − c) W, distances from Z Mᵀ, softmax (two plain GEMMs, float32)."""
    fields = (head.whitener, head.whitened_means, head.center, head.mean_norms, head.log_priors)
    W, M, c, norms, priors = (t.to(device, torch.float32) for t in fields)
    Mt = M.T.contiguous()

    def run(X):
        P = torch.empty(X.shape[0], M.shape[0], device=X.device)
        for s in range(0, X.shape[0], chunk):
            Z = (X[s : s + chunk] - c) @ W
            D = (Z * Z).sum(1, keepdim=True) - 2 * Z @ Mt + norms
            P[s : s + chunk] = torch.softmax(-0.5 * D + priors, 1)
        return P

    return run


def scoring_case(dev, NS, d, C, rates):
    sample = sampler(dev, d, C)
    model = attempt("scoring_fit", lambda: OpenWorld(target_tpr=None, random_state=0).fit(*sample(NS, 2)))
    if model is None:
        return []
    Xin, yin = sample(NS, 3)
    Xout = sample(NS // 4, 4, classes=(C, C + 100))[0]

    def float64_reference():
        with torch.no_grad():
            return (model.score_samples(Xin.double()).cpu().numpy(), model.score_samples(Xout.double()).cpu().numpy(),
                    model.predict_proba(Xin[:PROBA_ROWS].double()))

    ref = attempt("float64_reference", float64_reference)
    if ref is not None:
        s64_in, s64_out, p64 = ref
        auroc64 = auroc(s64_in, s64_out)
        log("auroc_float64", auroc64)
        log("class_accuracy_float64", float((p64.argmax(1).cpu() == yin[:PROBA_ROWS].cpu()).float().mean()))

    def accuracy(post, score):
        out = {}
        if post is not None:
            p = post(Xin[:PROBA_ROWS])
            out.update(proba_maxabs=float((p.double() - p64).abs().max()), argmax_agree=float((p.argmax(1) == p64.argmax(1)).float().mean()))
        if score is not None:
            s_in, s_out = score(Xin).double().cpu().numpy(), score(Xout).double().cpu().numpy()
            a = auroc(s_in, s_out)
            out.update(auroc=a, auroc_diff=abs(a - auroc64), score_relerr=float(np.abs(s_in - s64_in).max() / np.abs(s64_in).max()))
        return out

    head = model.head_
    W, Mt = head.whitener.to(dev, torch.float32), head.whitened_means.to(dev, torch.float32).T.contiguous()
    W2 = torch.cat([W, W], 1)  # stands in for [W W₀] (same shape, same cost)
    flops = {"posteriors": 2 * d * (d + C), "posteriors+score": 2 * d * (2 * d + C)}  # per row
    calls = [  # (name, work, mode, function (X) -> result, posteriors from result, scores from result)
        ("floor: (X·W)·Mᵀ", "posteriors", "tf32", lambda X: (X @ W) @ Mt, None, None),
        ("floor: (X·[W W₀])[:, :d]·Mᵀ", "posteriors+score", "tf32", lambda X: (X @ W2)[:, :d] @ Mt, None, None),
        ("naive two-GEMM posteriors", "posteriors", "tf32", naive_posteriors(head, dev), lambda r: r, None),
    ]
    calls += [("predict_proba", "posteriors", "shipped", model.predict_proba, lambda r: r, None),
              ("score_samples", "posteriors+score", "shipped", model.score_samples, None, lambda r: r),
              ("predict_proba_and_score", "posteriors+score", "shipped", model.predict_proba_and_score,
               lambda r: r[0], lambda r: r[1])]
    rows = []
    for name, work, mode, fn, get_p, get_s in calls:
        with torch.no_grad(), (tf32(True) if mode == "tf32" else nullcontext()):
            t = attempt(f"{name}_{mode}", lambda: timed(lambda: fn(Xin), reps=3)[0])
            if t is None:
                continue
            rate = NS / t
            row = dict(call=name, work=work, mode=mode, rows_per_s=rate, pct_tf32=100 * flops[work] * rate / (rates["tf32"] * 1e12))
            if name in ("predict_proba", "predict_proba_and_score"):
                row["target_met"] = rate >= RATE_TARGETS[work]
            if (get_p or get_s) and ref is not None:
                row["accuracy"] = attempt(f"{name}_{mode}_accuracy", lambda: accuracy(
                    get_p and (lambda X: get_p(fn(X))), get_s and (lambda X: get_s(fn(X)))))
        log(f"scoring {name} [{mode}]", row)
        rows.append(row)
    floors = {row["work"]: row["rows_per_s"] for row in rows if row["call"].startswith("floor")}
    for row in rows:  # the same work's floor GEMMs, at this shape, as the yardstick
        if row["work"] in floors:
            row["pct_floor"] = 100 * row["rows_per_s"] / floors[row["work"]]
    res["scoring"] = rows
    if dev.type == "cuda":
        log("scoring_max_memory_allocated_gb", torch.cuda.max_memory_allocated() / 1e9)
    return rows


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def report(command, quick):
    e = lambda x: f"{x:.1e}" if isinstance(x, float) else "–"
    met = lambda ok: "met" if ok else "missed"
    r = res
    lines = ["# Performance (GPU)", "",
             "Re-run: `make bench-gpu` on a machine with a CUDA device; on the lent device, "
             "`PYTHONPATH=. python3 -m benchmarks.gpu` (script: `benchmarks/gpu.py`, raw numbers in its `--json`).", "",
             f"Device **{r['device']}**" + (" (no CUDA device: a debugging run, the numbers mean nothing)" if r["device"] == "cpu" else "")
             + f", torch {r['torch']}, {r['date']}, command `{command}`" + (" (quick sizes)" if quick else "") + ".", ""]
    errors_logged = [f"`{k}`: {v}" for k, v in r.items() if k.endswith("_error")]
    if errors_logged:
        lines += ["**Errors in this run:** " + "; ".join(errors_logged), ""]

    def gemm():
        return ["## GEMM rates", "", f"{r['gemm_m']}³ products, mean of 5 after 2 warm-ups.", ""] + table(
            ["fp32", "TF32", "fp64", "bf16"], [[f"{r[f'gemm_{k}_tflops']:.1f} TFLOP/s" for k in ("fp32", "tf32", "fp64", "bf16")]])

    def fit():
        N, d, C = r["fit_shape"]
        out = [f"## Fit: N = {N:,}, d = {d}, C = {C} (float32 rows on the device)", "",
               f"Floors `XᵀX`: fp32 {r['floor_xtx_fp32_s']:.3g} s, TF32 {r['floor_xtx_tf32_s']:.3g} s, "
               f"fp64 (chunked conversion) {r['floor_xtx_fp64_s']:.3g} s. float64 CPU reference: {r['reference_cpu_s']:.1f} s.", "",
               "Class statistics (`_from_rows_grouped`, 2³¹ bytes of rows per group; best of 2 after a warm-up) and "
               "their largest relative error against the float64 reference (per class ‖a − b‖_F / ‖b‖_F, max over classes):", ""]
        prec = [(k, r.get(f"stats_{k}")) for k in ("float32", "tf32", "float64")]
        prec.append((f"public `from_rows` ({r['public_dtype']})", r.get("stats_public")))
        out += table(["products", "seconds", "× fp32 floor", *FIELDS, "pooled scatter"],
                     [[k, f"{v['seconds']:.3g}", f"{v['seconds'] / r['floor_xtx_fp32_s']:.2f}",
                       *(e((v["errors"] or {}).get(f)) for f in (*FIELDS, "pooled"))] for k, v in prec if v])
        out += ["", f"Estimator fits (best of 2 after a warm-up fit), target ≤ {FIT_TARGET_S} s:", ""]
        fits = [("`OpenWorld(target_tpr=None)`", "target_tpr_none"), ("`OpenWorld()` (default)", "default")]
        out += table(["fit", "seconds", "target"],
                     [[k, f"{r[f'fit_{t}_s']:.3g}", met(r[f"fit_{t}_s"] <= FIT_TARGET_S)] for k, t in fits if f"fit_{t}_s" in r])
        if "fit_max_memory_allocated_gb" in r:
            out += ["", f"Peak device memory in the fit case: {r['fit_max_memory_allocated_gb']:.1f} GB."]
        return out + ["", "A cProfile of one default fit is in `fit_profile.txt` beside the JSON."]

    def scoring():
        (_, d, C), ns = r["fit_shape"], r["scoring_rows"]
        out = [f"## Scoring: {ns:,} in-distribution rows, {ns // 4:,} OOD rows (100 unseen class means), d = {d}, C = {C}", "",
               "Rows/s best of 3 after a warm-up. *% of TF32* = the FLOPs the work needs (posteriors 2·d·(d + C) per row, "
               "posteriors + score 2·d·(2d + C)) per second ÷ the measured 8192³ TF32 GEMM rate; *% of floor* = rows/s ÷ the floor "
               "GEMMs' rows/s for the same work at this shape (the issue asks ≥ 75 % of the TF32 rate of the GEMMs posteriors need, "
               "and states it as ≥ 80 M rows/s). *shipped* = the library as it is "
               "(its own precision choices; TF32 setting untouched by the script); *tf32* = `allow_tf32=True` set around the call "
               "(floors, naive version). Accuracy against the same model "
               f"in float64: AUROC difference (target ≤ {AUROC_TARGET:.0e}), max |Δ posterior| on {PROBA_ROWS:,} rows, "
               "argmax agreement, max relative score error" + (f"; float64 AUROC {r['auroc_float64']:.6f}." if "auroc_float64" in r else "."), ""]
        body = []
        for row in r.get("scoring", []):
            a = row.get("accuracy") or {}
            target = f"≥ {RATE_TARGETS[row['work']] / 1e6:.0f} M: {met(row['target_met'])}" if "target_met" in row else ""
            body.append([row["call"], row["mode"], row["work"], f"{row['rows_per_s'] / 1e6:.1f}", f"{row['pct_tf32']:.0f} %",
                         f"{row['pct_floor']:.0f} %" if "pct_floor" in row else "–", target,
                         e(a.get("auroc_diff")), e(a.get("proba_maxabs")), f"{a['argmax_agree']:.6f}" if "argmax_agree" in a else "–",
                         e(a.get("score_relerr"))])
        return out + table(["call", "mode", "work", "M rows/s", "% of TF32", "% of floor", "target", "ΔAUROC", "max Δp", "argmax agree", "score rel. err"], body)

    for section in (gemm, fit, scoring, lambda: ["## What ships and why", "", *why(r)]):
        try:
            lines += section() + [""]
        except (KeyError, TypeError, ZeroDivisionError) as error:  # a part that failed in this run
            lines += [f"(section not written: {error!r}; see the JSON)", ""]
    return "\n".join(lines)


def why(r):
    out = []
    pub, f32, f64 = r.get("stats_public"), r.get("stats_float32"), r.get("stats_float64")
    if pub and f32 and f64 and "stats_tf32" in r:
        worst = lambda s: max((s["errors"] or {"n/a": math.nan}).values())
        out.append(f"- **Statistics.** The public `from_rows` (products in {r['public_dtype']}) took {pub['seconds']:.3g} s "
                   f"({pub['seconds'] / r['floor_xtx_fp32_s']:.2f}× the fp32 `XᵀX` floor), largest relative error {worst(pub):.1e}. "
                   f"float64 products took {f64['seconds'] / f32['seconds']:.2f}× the float32 time for errors of {worst(f64):.1e} "
                   f"instead of {worst(f32):.1e} (TF32: {worst(r['stats_tf32']):.1e}).")
    if "fit_default_s" in r:
        out.append(f"- **Fit.** The default fit took {r['fit_default_s']:.3g} s: target ≤ {FIT_TARGET_S} s "
                   f"{'met' if r['fit_default_s'] <= FIT_TARGET_S else 'missed'}.")
    rows = {row["call"]: row for row in r.get("scoring", [])}
    for call in ("predict_proba_and_score", "score_samples"):
        a = (rows.get(call) or {}).get("accuracy") or {}
        if "auroc_diff" in a:
            row, ok = rows[call], a["auroc_diff"] <= AUROC_TARGET
            out.append(f"- **Scoring.** As shipped (the library picks the precision of its products), `{call}` runs at "
                       f"{row['rows_per_s'] / 1e6:.1f} M rows/s ({row['pct_tf32']:.0f} % of the TF32 GEMM rate); its AUROC differs "
                       f"from float64's by {a['auroc_diff']:.1e}: " + ("within the 1e-4 target, so the precision it ships with costs "
                       "no detection quality here." if ok else "outside the 1e-4 target: its products need more precision."))
            break
    naive = (rows.get("naive two-GEMM posteriors") or {}).get("accuracy")
    if naive:
        out.append(f"- **TF32 posteriors** (the naive two-GEMM version, for comparison): max |Δp| {naive['proba_maxabs']:.1e}, "
                   f"argmax agreement {naive['argmax_agree']:.6f} with float64.")
    return out or ["- (not enough numbers in this run to say.)"]


def main(argv=None) -> None:
    global JSON_PATH
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to debug the script (CPU where there is no CUDA)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance-gpu.md")
    parser.add_argument("--json", type=Path, default=JSON_PATH)
    args = parser.parse_args(argv)
    JSON_PATH = args.json
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable)
    exe = exe.relative_to(Path.cwd()) if exe.is_relative_to(Path.cwd()) else exe
    command = ("PYTHONPATH=" + shlex.quote(os.environ["PYTHONPATH"]) + " " if "PYTHONPATH" in os.environ else "") + shlex.join(
        [str(exe), "-m", "benchmarks.gpu", *(sys.argv[1:] if argv is None else argv)])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    N, NS, d, C, m = (20_000, 20_000, 64, 20, 1024) if args.quick else (10_000_000, 2_000_000, 768, 1000, 8192)
    log("device", torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
    log("torch", torch.__version__)
    log("date", f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    log("command", command)
    log("allow_tf32_default", torch.backends.cuda.matmul.allow_tf32)
    log("gemm_m", m)
    rates = gemm_rates(dev, m)
    log("fit_shape", [N, d, C])
    attempt("fit_case", lambda: fit_case(dev, N, d, C, JSON_PATH.parent / "fit_profile.txt"))
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    log("scoring_rows", NS)
    attempt("scoring_case", lambda: scoring_case(dev, NS, d, C, rates))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(command, args.quick))
    JSON_PATH.write_text(json.dumps(res, indent=1, default=str))
    print(f"[gpu] wrote {args.out}, {JSON_PATH}, {JSON_PATH.parent / 'fit_profile.txt'}", flush=True)


if __name__ == "__main__":
    main()
