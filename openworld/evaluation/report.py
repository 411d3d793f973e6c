"""An evaluation report: accuracy, OOD detection, calibration and the working point of one model on one data set.

In-distribution (ID) rows are those whose label is one of ``model.classes_``;
out-of-distribution (OOD) rows are all others (CLINC150's ``"oos"``, or the held-out
classes of the open-set protocol), unless an explicit boolean ``is_ood`` says
which is which. Scores follow DESIGN.md: higher = more in-distribution, ID is
the positive class; a row is rejected at the working point when its score is
below the model's ``threshold_`` (what ``predict`` does).

>>> import numpy as np
>>> from openworld import OpenWorld
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(0, 1, (300, 4)), rng.normal(4, 1, (300, 4))])
>>> model = OpenWorld(random_state=0).fit(X, np.repeat(["a", "b"], 300))
>>> test = np.vstack([rng.normal(0, 1, (50, 4)), rng.normal(-8, 1, (50, 4))])
>>> report = evaluate(model, test, np.repeat(["a", "zz"], 50))
>>> report.n_in_distribution, report.n_out_of_distribution, report.auroc
(50, 50, 1.0)
>>> evaluate(model, test[:50], np.repeat("a", 50)).notes
['no out-of-distribution rows: detection metrics not computed']

The report writes itself as JSON (:func:`write_json`, :func:`read_json`) and as
one HTML file with inline SVG figures and no external resources (:func:`write_html`).
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from openworld.core import metrics
from openworld.core.arrays import as_labels, common_label_type
from openworld.io.atomic import write_text_atomically

__all__ = [
    "NO_ID_MESSAGE",
    "NO_LABELS_MESSAGE",
    "NO_OOD_MESSAGE",
    "ClassRow",
    "EvaluationReport",
    "WorkingPoint",
    "evaluate",
    "read_json",
    "render_html",
    "write_html",
    "write_json",
]

NO_OOD_MESSAGE = "no out-of-distribution rows: detection metrics not computed"
NO_ID_MESSAGE = "no in-distribution rows: accuracy, calibration and detection metrics not computed"
NO_LABELS_MESSAGE = "no labels: accuracy, calibration and the per-class table not computed"
REPORT_VERSION = 1


@dataclass(eq=False)
class ClassRow:
    """One line of the per-class table.

    ``kept``: share of the rows not rejected at the working point (for an OOD
    label, the share that leaked through); ``accuracy``: closed-set accuracy
    (ID labels only); ``mean_confidence``: mean highest posterior.
    """

    label: str | int
    in_distribution: bool
    n: int
    accuracy: float | None
    kept: float | None
    mean_confidence: float | None


@dataclass(eq=False)
class WorkingPoint:
    """What the model's threshold does on these rows.

    ``threshold`` is None when the model's working point rejects nothing
    (a threshold of −∞: too few held-out scores to promise ``target_tpr``).
    """

    threshold: float | None
    target_tpr: float | None
    rejected_share: float
    in_distribution_kept: float | None
    ood_recall: float | None
    ood_precision: float | None


@dataclass(eq=False)
class EvaluationReport:
    """Metrics of one model on one data set; ``None`` where a metric cannot be computed (see ``notes``).

    The arrays at the end are what the figures are drawn from: the scores of
    ID and OOD rows, and the top-label confidence and correctness of ID rows.
    """

    title: str | None
    model: str
    score_name: str
    n_rows: int
    n_in_distribution: int
    n_out_of_distribution: int
    n_classes: int
    accuracy: float | None
    auroc: float | None
    aupr_in: float | None
    aupr_out: float | None
    fpr_at_95: float | None
    ece: float | None
    working_point: WorkingPoint | None
    per_class: list[ClassRow]
    notes: list[str]
    reliability: metrics.ReliabilityDiagram | None
    scores_in: np.ndarray
    scores_out: np.ndarray
    confidence_in: np.ndarray
    correct_in: np.ndarray
    openworld_version: str = ""
    report_version: int = REPORT_VERSION

    @property
    def has_ood(self) -> bool:
        return self.n_out_of_distribution > 0

    def summary(self) -> dict:
        """The headline metrics as a flat dict (None where not computed)."""
        rows = {
            "rows": self.n_rows,
            "in-distribution rows": self.n_in_distribution,
            "out-of-distribution rows": self.n_out_of_distribution,
            "known classes": self.n_classes,
            "score": self.score_name,
            "accuracy (in-distribution, closed set)": self.accuracy,
            "AUROC": self.auroc,
            "AUPR-in": self.aupr_in,
            "AUPR-out": self.aupr_out,
            "FPR at 95% TPR": self.fpr_at_95,
            "ECE (15 bins)": self.ece,
        }
        wp = self.working_point
        if wp is not None:
            rows.update(
                {
                    "threshold": wp.threshold,
                    "target TPR": wp.target_tpr,
                    "in-distribution kept": wp.in_distribution_kept,
                    "OOD recall (rejected)": wp.ood_recall,
                    "OOD precision": wp.ood_precision,
                }
            )
        return rows

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists, not arrays; no NaN or infinity)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "reliability" and value is not None:
                value = {
                    "edges": value.edges,
                    "confidence": value.confidence,
                    "accuracy": value.accuracy,
                    "count": value.count,
                }
            elif f.name == "working_point" and value is not None:
                value = asdict(value)
            elif f.name == "per_class":
                value = [asdict(row) for row in value]
            out[f.name] = _jsonable(value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationReport:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if data.get("report_version", REPORT_VERSION) > REPORT_VERSION:
            raise ValueError(f"report version {data['report_version']} is newer than this openworld reads")
        if data.get("reliability") is not None:
            r = data["reliability"]
            data["reliability"] = metrics.ReliabilityDiagram(
                edges=np.asarray(r["edges"], float),
                confidence=np.asarray([np.nan if v is None else v for v in r["confidence"]], float),
                accuracy=np.asarray([np.nan if v is None else v for v in r["accuracy"]], float),
                count=np.asarray(r["count"], np.int64),
            )
        if data.get("working_point") is not None:
            data["working_point"] = WorkingPoint(**data["working_point"])
        data["per_class"] = [ClassRow(**row) for row in data.get("per_class", [])]
        for name in ("scores_in", "scores_out", "confidence_in"):
            data[name] = np.asarray(data[name], float)
        data["correct_in"] = np.asarray(data["correct_in"], bool)
        return cls(**data)


# ---------------------------------------------------------------------- evaluate


def evaluate(model, X, labels=None, *, is_ood=None, score_name: str | None = None, title: str | None = None) -> EvaluationReport:
    """Evaluate a fitted model on ``X: (n, d)`` with true ``labels: (n,)`` and/or a boolean ``is_ood: (n,)``.

    ``model`` needs ``classes_``, ``predict_proba`` and ``score_samples``
    (higher = more in-distribution); its working point is ``threshold_`` with
    ``target_tpr`` (a row is rejected when its score is below the threshold),
    reported only when both are set. Without ``is_ood``, rows whose label is
    not in ``model.classes_`` are the OOD rows. With ``is_ood``, the ID rows'
    labels (if given) must be classes of the model. Text labels meet integer
    classes as the integers they spell (:func:`~openworld.core.arrays.common_label_type`).

    Accuracy is closed-set (the argmax of ``predict_proba``, rejection
    ignored) on ID rows; ECE is top-label on ID rows. Without OOD rows the
    detection metrics are None and ``notes`` says so.
    """
    classes = np.asarray(model.classes_)
    n_rows = _n_rows(X)
    if labels is None and is_ood is None:
        raise ValueError("evaluate needs labels (rows of unknown labels are OOD) or an is_ood mask")
    if labels is not None:
        labels = as_labels(labels, n_rows)  # str or int, as the estimator reads them
        kinds = _kind(labels), _kind(classes)
        labels, classes = common_label_type(labels, classes)  # "3" from a text column is class 3
        if kinds[0] != kinds[1] and not np.isin(labels, classes).any():
            raise ValueError(
                f"labels are {kinds[0]} but the model's classes are {kinds[1]}, and no label is one of the "
                "classes: convert the labels to the model's label type"
            )
    known = None if labels is None else np.isin(labels, classes)
    if is_ood is None:
        is_ood = ~known
    else:
        is_ood = _numpy(is_ood).reshape(-1)
        if is_ood.dtype != bool:
            raise ValueError(f"is_ood must be a boolean mask, got dtype {is_ood.dtype}")
        if is_ood.shape[0] != n_rows:
            raise ValueError(f"is_ood has {is_ood.shape[0]} rows but X has {n_rows}")
        if known is not None and not known[~is_ood].all():
            strangers = np.unique(labels[~is_ood & ~known])
            raise ValueError(
                f"{strangers.size} label(s) of in-distribution rows are not classes of the model: "
                f"{strangers[:10].tolist()!r}; mark those rows as OOD or drop them"
            )
    is_in = ~is_ood

    raw_scores = _numpy(model.score_samples(X)).reshape(-1)
    proba = _numpy(model.predict_proba(X)).astype(np.float64)
    scores = raw_scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"the model gave {int((~np.isfinite(scores)).sum())} non-finite scores")
    scores_in, scores_out = scores[is_in], scores[is_ood]
    confidence = proba.max(1)
    predicted = classes[proba.argmax(1)]
    notes: list[str] = []

    # Closed-set accuracy and calibration on ID rows.
    accuracy = ece = reliability = None
    correct = np.zeros(n_rows, bool)
    if labels is not None:
        correct = predicted == labels
    if not is_in.any():
        notes.append(NO_ID_MESSAGE)
    elif labels is None:
        notes.append(NO_LABELS_MESSAGE)
    else:
        accuracy = float(correct[is_in].mean())
        reliability = metrics.reliability_diagram(confidence[is_in], correct[is_in])
        ece = reliability.ece

    # Detection.
    auroc = aupr_in = aupr_out = fpr95 = None
    if is_in.any() and is_ood.any():
        auroc = metrics.auroc(scores_in, scores_out)
        aupr_in = metrics.aupr_in(scores_in, scores_out)
        aupr_out = metrics.aupr_out(scores_in, scores_out)
        fpr95 = metrics.fpr_at_tpr(scores_in, scores_out, 0.95)
    elif not is_ood.any():
        notes.append(NO_OOD_MESSAGE)

    # The working point, as predict() applies it.
    working_point = None
    threshold = getattr(model, "threshold_", None)
    target_tpr = getattr(model, "target_tpr", None)
    rejected = np.zeros(n_rows, bool)
    if threshold is None or target_tpr is None:
        notes.append("the model has no working point (no threshold): working-point metrics not computed")
    else:
        threshold = float(threshold)
        if math.isfinite(threshold):
            rejected = np.asarray(raw_scores < threshold)  # in the scores' own dtype, as predict compares
        else:
            notes.append("the model's working point rejects nothing (threshold −∞: too few held-out scores)")
        working_point = WorkingPoint(
            threshold=threshold if math.isfinite(threshold) else None,
            target_tpr=float(target_tpr),
            rejected_share=float(rejected.mean()),
            in_distribution_kept=_maybe(metrics.in_distribution_kept(rejected, is_ood)),
            ood_recall=_maybe(metrics.ood_recall(rejected, is_ood)),
            ood_precision=_maybe(metrics.ood_precision(rejected, is_ood)) if is_ood.any() else None,
        )

    per_class = _per_class(labels, is_ood, correct, rejected, confidence, working_point is not None)
    if score_name is None:
        score_name = _score_name(model)
    from openworld import __version__

    return EvaluationReport(
        title=title,
        model=_describe(model),
        score_name=score_name,
        n_rows=n_rows,
        n_in_distribution=int(is_in.sum()),
        n_out_of_distribution=int(is_ood.sum()),
        n_classes=len(classes),
        accuracy=accuracy,
        auroc=auroc,
        aupr_in=aupr_in,
        aupr_out=aupr_out,
        fpr_at_95=fpr95,
        ece=ece,
        working_point=working_point,
        per_class=per_class,
        notes=notes,
        reliability=reliability,
        scores_in=scores_in,
        scores_out=scores_out,
        confidence_in=confidence[is_in] if labels is not None else np.zeros(0),
        correct_in=correct[is_in] if labels is not None else np.zeros(0, bool),
        openworld_version=__version__,
    )


def _per_class(labels, is_ood, correct, rejected, confidence, has_working_point: bool) -> list[ClassRow]:
    rows: list[ClassRow] = []
    if labels is None:
        if is_ood.any():
            rows.append(
                ClassRow(
                    label="(out-of-distribution)",
                    in_distribution=False,
                    n=int(is_ood.sum()),
                    accuracy=None,
                    kept=float(np.mean(~rejected[is_ood])) if has_working_point else None,
                    mean_confidence=float(confidence[is_ood].mean()),
                )
            )
        return rows
    for ood in (False, True):
        group = is_ood == ood
        if not group.any():
            continue
        values, index = np.unique(labels[group], return_inverse=True)
        counts = np.bincount(index, minlength=values.size)
        hits = np.bincount(index, weights=correct[group].astype(float), minlength=values.size)
        kept = np.bincount(index, weights=(~rejected[group]).astype(float), minlength=values.size)
        conf = np.bincount(index, weights=confidence[group], minlength=values.size)
        for k, value in enumerate(values.tolist()):
            rows.append(
                ClassRow(
                    label=value,
                    in_distribution=not ood,
                    n=int(counts[k]),
                    accuracy=None if ood else float(hits[k] / counts[k]),
                    kept=float(kept[k] / counts[k]) if has_working_point else None,
                    mean_confidence=float(conf[k] / counts[k]),
                )
            )
    return rows


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # torch, on any device
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _n_rows(X) -> int:
    shape = getattr(X, "shape", None)
    if shape is not None:
        return int(shape[0])
    return len(X)


def _kind(values: np.ndarray) -> str:
    return "strings" if values.dtype.kind in "US" else f"{values.dtype}"


def _maybe(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _score_name(model) -> str:
    for attribute in ("score_", "score"):
        value = getattr(model, attribute, None)
        if isinstance(value, str) and value != "auto":
            return value
    return type(model).__name__


def _describe(model) -> str:
    try:
        return " ".join(repr(model).split())
    except Exception:  # a repr must never stop a report
        return type(model).__name__


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------- JSON


def write_json(report: EvaluationReport, path: str | os.PathLike[str]) -> None:
    """Write the report as JSON (strict: no NaN or infinity)."""
    write_text_atomically(path, json.dumps(report.to_dict(), indent=1, allow_nan=False))


def read_json(path: str | os.PathLike[str]) -> EvaluationReport:
    """Read a report written by :func:`write_json`."""
    return EvaluationReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------- HTML

BLUE, ORANGE, RED, GREY = "#1f77b4", "#e6730f", "#c0392b", "#888888"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;margin:24px auto;max-width:1160px;padding:0 16px;line-height:1.4}
h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 16px;font-size:.92em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
th{background:#f4f4f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.metrics td:first-child{color:#444}.metrics td.n{font-weight:600}
.note{background:#fff6e0;border:1px solid #f0c36d;padding:8px 12px;margin:12px 0;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:16px}.fig{border:1px solid #e4e4e4;border-radius:4px;padding:6px;background:#fff}
.fig p{margin:4px 6px;font-size:.85em;color:#555;max-width:530px}
.bad{color:#c0392b}.cols{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
"""


def write_html(report: EvaluationReport, path: str | os.PathLike[str]) -> None:
    """Write one self-contained HTML file: metrics, ROC curve, score histograms, reliability diagram, per-class table.

    Figures are inline SVG and the style sheet is inline: the file needs no
    network and no other file.
    """
    write_text_atomically(path, render_html(report))


def render_html(report: EvaluationReport) -> str:
    """The HTML page of :func:`write_html` as a string."""
    e = html.escape
    title = "openworld evaluation" + (f" — {report.title}" if report.title else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="sub">model: <code>{e(report.model)}</code> · OOD score: <code>{e(report.score_name)}</code> · '
        f"openworld {e(report.openworld_version)} · in-distribution = positive class, higher score = more in-distribution</p>",
    ]
    for note in report.notes:
        parts.append(f'<div class="note">{e(note)}</div>')
    parts.append("<h2>Metrics</h2>")
    parts.append('<div class="cols">' + _metrics_table(report) + _working_point_table(report) + "</div>")

    parts.append("<h2>Figures</h2><div class=\"grid\">")
    if report.has_ood and report.n_in_distribution:
        parts.append(_figure(_svg_roc(report), _roc_caption(report)))
    if report.scores_in.size or report.scores_out.size:
        parts.append(_figure(*_svg_histogram(report)))
    if report.reliability is not None:
        parts.append(
            _figure(
                _svg_reliability(report.reliability, report.ece),
                "Reliability diagram of the closed-set posteriors on in-distribution rows: bars are the accuracy "
                "in each confidence bin (15 equal-width bins), the dashed diagonal is perfect calibration, red is "
                "the gap. The lower panel shows how many rows fall in each bin.",
            )
        )
    parts.append("</div>")
    parts.append(_class_tables(report))
    parts.append("</body></html>")
    return "\n".join(parts)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return str(value)


def _rows(pairs) -> str:
    return "".join(f"<tr><td>{html.escape(k)}</td><td class=\"n\">{html.escape(_fmt(v))}</td></tr>" for k, v in pairs)


def _metrics_table(report: EvaluationReport) -> str:
    pairs = [
        ("rows", report.n_rows),
        ("in-distribution rows", report.n_in_distribution),
        ("out-of-distribution rows", report.n_out_of_distribution),
        ("known classes", report.n_classes),
        ("accuracy, in-distribution (closed set)", report.accuracy),
        ("AUROC", report.auroc),
        ("AUPR-in", report.aupr_in),
        ("AUPR-out", report.aupr_out),
        ("FPR at 95% TPR", report.fpr_at_95),
        ("ECE (top label, 15 bins)", report.ece),
    ]
    return f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>{_rows(pairs)}</table>'


def _working_point_table(report: EvaluationReport) -> str:
    wp = report.working_point
    if wp is None:
        return '<table class="metrics"><tr><th>working point</th><th></th></tr><tr><td>none (the model never rejects)</td><td></td></tr></table>'
    pairs = [
        ("threshold τ (reject if score < τ)", wp.threshold if wp.threshold is not None else "−∞"),
        ("target TPR (in-distribution kept)", wp.target_tpr),
        ("in-distribution kept", wp.in_distribution_kept),
        ("OOD recall (share of OOD rejected)", wp.ood_recall),
        ("OOD precision (share of rejected that are OOD)", wp.ood_precision),
        ("all rows rejected", wp.rejected_share),
    ]
    return f'<table class="metrics"><tr><th>at the working point</th><th>value</th></tr>{_rows(pairs)}</table>'


def _class_tables(report: EvaluationReport) -> str:
    e = html.escape
    known = sorted(
        (row for row in report.per_class if row.in_distribution),
        key=lambda row: (row.accuracy if row.accuracy is not None else 2.0, str(row.label)),
    )
    other = sorted((row for row in report.per_class if not row.in_distribution), key=lambda row: -row.n)
    out = []
    if other:
        body = "".join(
            f"<tr><td>{e(str(r.label))}</td><td class=\"n\">{_fmt(r.n)}</td>"
            f"<td class=\"n\">{_fmt(None if r.kept is None else 1.0 - r.kept, 3)}</td>"
            f"<td class=\"n\">{_fmt(r.mean_confidence, 3)}</td></tr>"
            for r in other
        )
        out.append(
            "<h2>Out-of-distribution labels</h2><table><tr><th>label</th><th>rows</th>"
            f"<th>rejected</th><th>mean confidence</th></tr>{body}</table>"
        )
    if known:
        body = "".join(
            f"<tr><td>{e(str(r.label))}</td><td class=\"n\">{_fmt(r.n)}</td>"
            f"<td class=\"n{' bad' if r.accuracy is not None and r.accuracy < 0.8 else ''}\">{_fmt(r.accuracy, 3)}</td>"
            f"<td class=\"n\">{_fmt(r.kept, 3)}</td><td class=\"n\">{_fmt(r.mean_confidence, 3)}</td></tr>"
            for r in known
        )
        out.append(
            f"<h2>Per class ({len(known)} in-distribution classes, lowest accuracy first)</h2>"
            "<table><tr><th>class</th><th>rows</th><th>accuracy</th><th>kept at the working point</th>"
            f"<th>mean confidence</th></tr>{body}</table>"
        )
    return "\n".join(out)


def _figure(svg: str, caption: str) -> str:
    return f'<div class="fig">{svg}<p>{html.escape(caption)}</p></div>'


def _roc_caption(report: EvaluationReport) -> str:
    text = (
        f"ROC curve with in-distribution as positive (AUROC {_fmt(report.auroc)}). The dotted line marks "
        f"95% TPR (FPR {_fmt(report.fpr_at_95, 3)} there)."
    )
    if report.working_point is not None:
        text += " The red dot is the model's working point."
    return text


# --- minimal SVG plotting ---------------------------------------------------------


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    # A span of a few float64 steps (scores equal but for round-off) is one point: a step below the
    # spacing of floats at lo would never move the value.
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        return [lo]
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [0.0 if abs(first + i * step) < step * 1e-9 else first + i * step for i in range(max(count, 0))]


def _tick_label(value: float) -> str:
    text = f"{value:.6g}"
    return text if "e" in text else f"{float(text):g}"


class _Plot:
    """One set of axes in an SVG of ``width`` × ``height`` pixels."""

    def __init__(self, width, height, xlim, ylim, box=(58, 34, 18, 46)):
        self.width, self.height = width, height
        self.left, self.top, self.right, self.bottom = box[0], box[1], width - box[2], height - box[3]
        self.xlim, self.ylim = xlim, ylim
        self.items: list[str] = []

    def x(self, value: float) -> float:
        lo, hi = self.xlim
        return self.left + (value - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: float) -> float:
        lo, hi = self.ylim
        return self.bottom - (value - lo) / (hi - lo) * (self.bottom - self.top)

    def add(self, item: str) -> None:
        self.items.append(item)

    def text(self, x, y, text, size=12, anchor="start", color="#222", weight="normal", rotate=None) -> None:
        transform = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight}"{transform}>{html.escape(text)}</text>'
        )

    def line(self, x0, y0, x1, y1, color="#222", width=1.0, dash=None) -> None:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="{color}" stroke-width="{width}"{dashed}/>'
        )

    def polyline(self, xs, ys, color, width=2.0, fill="none", opacity=1.0) -> None:
        points = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in zip(xs, ys))
        tag = "polygon" if fill != "none" else "polyline"
        self.add(
            f'<{tag} points="{points}" fill="{fill}" fill-opacity="{opacity}" stroke="{color}" '
            f'stroke-width="{width}" stroke-linejoin="round"/>'
        )

    def rect(self, x0, y0, x1, y1, fill, opacity=1.0, stroke="none") -> None:
        left, right = sorted((self.x(x0), self.x(x1)))
        top, bottom = sorted((self.y(y0), self.y(y1)))
        self.add(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left, 0.0):.1f}" height="{max(bottom - top, 0.0):.1f}" '
            f'fill="{fill}" fill-opacity="{opacity}" stroke="{stroke}"/>'
        )

    def axes(self, xlabel: str, ylabel: str, title: str, xticks=None, yticks=None, grid=True) -> None:
        xticks = _nice_ticks(*self.xlim) if xticks is None else xticks
        yticks = _nice_ticks(*self.ylim) if yticks is None else yticks
        for t in xticks:
            if grid:
                self.line(self.x(t), self.top, self.x(t), self.bottom, "#eee")
            self.line(self.x(t), self.bottom, self.x(t), self.bottom + 4, "#444")
            self.text(self.x(t), self.bottom + 17, _tick_label(t), 11, "middle", "#444")
        for t in yticks:
            if grid:
                self.line(self.left, self.y(t), self.right, self.y(t), "#eee")
            self.line(self.left - 4, self.y(t), self.left, self.y(t), "#444")
            self.text(self.left - 7, self.y(t) + 4, _tick_label(t), 11, "end", "#444")
        self.add(
            f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" height="{self.bottom - self.top}" '
            'fill="none" stroke="#444"/>'
        )
        self.text((self.left + self.right) / 2, self.height - 10, xlabel, 12, "middle")
        self.text(15, (self.top + self.bottom) / 2, ylabel, 12, "middle", rotate=-90)
        self.text(self.left, 20, title, 13, "start", weight="bold")

    def svg(self) -> str:
        body = "".join(self.items)
        return (
            f'<svg width="{self.width}" height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
            f'role="img" style="{FONT}">{body}</svg>'
        )


def _legend(plot: _Plot, entries, x: float, y: float) -> None:
    """Legend entries (label, colour, kind: box | dot | ring | line | dash) on a white box at (x, y)."""
    width = 30 + 6.3 * max(len(label) for label, _, _ in entries)
    plot.add(
        f'<rect x="{x - 6:.1f}" y="{y - 14:.1f}" width="{width:.1f}" height="{17 * len(entries) + 6}" '
        'fill="#fff" fill-opacity="0.88" stroke="#ddd"/>'
    )
    for i, (label, color, kind) in enumerate(entries):
        yy = y + i * 17
        if kind == "box":
            plot.add(f'<rect x="{x:.1f}" y="{yy - 9:.1f}" width="14" height="10" fill="{color}" fill-opacity="0.45" stroke="{color}"/>')
        elif kind == "dot":
            plot.add(f'<circle cx="{x + 7:.1f}" cy="{yy - 4:.1f}" r="4.5" fill="{color}"/>')
        elif kind == "ring":
            plot.add(f'<circle cx="{x + 7:.1f}" cy="{yy - 4:.1f}" r="3.5" fill="none" stroke="{color}"/>')
        else:
            dash = ' stroke-dasharray="5,3"' if kind == "dash" else ""
            plot.add(f'<line x1="{x:.1f}" y1="{yy - 4:.1f}" x2="{x + 14:.1f}" y2="{yy - 4:.1f}" stroke="{color}" stroke-width="2"{dash}/>')
        plot.text(x + 20, yy, label, 11, color="#333")


def _svg_roc(report: EvaluationReport) -> str:
    fpr, tpr, _ = metrics.roc(report.scores_in, report.scores_out, drop_intermediate=True)
    plot = _Plot(540, 400, (0.0, 1.0), (0.0, 1.0))
    plot.axes("false positive rate (OOD accepted)", "true positive rate (in-distribution kept)", "ROC curve")
    plot.line(plot.x(0), plot.y(0), plot.x(1), plot.y(1), GREY, 1, "4,4")
    plot.line(plot.x(0), plot.y(0.95), plot.x(1), plot.y(0.95), GREY, 1, "2,3")
    plot.polyline(fpr, tpr, BLUE, 2.2)
    entries = [(f"{report.score_name} (AUROC {_fmt(report.auroc)})", BLUE, "line"), ("chance", GREY, "dash")]
    if report.fpr_at_95 is not None:
        plot.add(f'<circle cx="{plot.x(report.fpr_at_95):.1f}" cy="{plot.y(0.95):.1f}" r="3.5" fill="none" stroke="#333"/>')
        entries.append((f"95% TPR: FPR {_fmt(report.fpr_at_95, 3)}", "#333", "ring"))
    wp = report.working_point
    if wp is not None and wp.in_distribution_kept is not None and wp.ood_recall is not None:
        x, y = 1.0 - wp.ood_recall, wp.in_distribution_kept
        plot.add(f'<circle cx="{plot.x(x):.1f}" cy="{plot.y(y):.1f}" r="5" fill="{RED}"/>')
        entries.append((f"working point: TPR {y:.3f}, FPR {x:.3f}", RED, "dot"))
    _legend(plot, entries, plot.x(0.36), plot.y(0.36))
    return plot.svg()


def _svg_histogram(report: EvaluationReport) -> tuple[str, str]:
    scores_in, scores_out = report.scores_in, report.scores_out
    everything = np.r_[scores_in, scores_out]
    lo, hi = np.quantile(everything, [0.005, 0.995]) if everything.size > 1 else (everything[0] - 1, everything[0] + 1)
    threshold = report.working_point.threshold if report.working_point is not None else None
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.02 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, 51)
    clipped = int(((everything < lo) | (everything > hi)).sum())

    def shares(values):
        if values.size == 0:
            return np.zeros(edges.size - 1)
        counts, _ = np.histogram(np.clip(values, lo, hi), edges)
        return counts / values.size

    share_in, share_out = shares(scores_in), shares(scores_out)
    top = max(share_in.max(), share_out.max(), 1e-9) * 1.4
    plot = _Plot(540, 400, (lo, hi), (0.0, top))
    plot.axes("OOD score (higher = more in-distribution)", "share of the group's rows", "Score histograms")
    steps = [(values, color) for values, color in ((share_out, ORANGE), (share_in, BLUE)) if values.any()]
    xs = np.r_[edges[0], np.repeat(edges, 2)[1:-1], edges[-1]]
    for values, color in steps:  # fills first, then outlines, so both outlines show where they overlap
        plot.polyline(xs, np.r_[0.0, np.repeat(values, 2), 0.0], "none", 0, fill=color, opacity=0.35)
    for values, color in steps:
        plot.polyline(xs, np.r_[0.0, np.repeat(values, 2), 0.0], color, 1.3)
    entries = []
    if scores_in.size:
        entries.append((f"in-distribution ({scores_in.size:,})", BLUE, "box"))
    if scores_out.size:
        entries.append((f"out-of-distribution ({scores_out.size:,})", ORANGE, "box"))
    if threshold is not None:
        plot.line(plot.x(threshold), plot.top, plot.x(threshold), plot.bottom, RED, 2, "6,3")
        entries.append((f"threshold τ = {threshold:.4g}", RED, "line"))
    _legend(plot, entries, plot.left + 10, plot.top + 16)
    groups = " and ".join(
        name for name, values in (("in-distribution", scores_in), ("out-of-distribution", scores_out)) if values.size
    )
    caption = f"Scores of {groups} rows, each group normalised to its own row count (50 bins)."
    if threshold is not None:
        caption += " Rows left of the red threshold are rejected as unknown."
    if clipped:
        caption += f" {clipped:,} rows beyond the axis range (outside the 0.5–99.5% quantiles) are counted in the edge bins."
    return plot.svg(), caption


def _svg_reliability(diagram: metrics.ReliabilityDiagram, ece: float | None) -> str:
    width, height = 540, 470
    plot = _Plot(width, height, (0.0, 1.0), (0.0, 1.0), box=(58, 34, 18, 150))
    plot.axes("", "accuracy", f"Reliability diagram (ECE {_fmt(ece)})", xticks=[])
    plot.line(plot.x(0), plot.y(0), plot.x(1), plot.y(1), GREY, 1.2, "5,4")
    edges = diagram.edges
    for m in range(edges.size - 1):
        if diagram.count[m] == 0:
            continue
        acc, conf = float(diagram.accuracy[m]), float(diagram.confidence[m])
        plot.rect(edges[m], 0.0, edges[m + 1], acc, BLUE, 0.75, stroke="#fff")
        plot.rect(edges[m], min(acc, conf), edges[m + 1], max(acc, conf), RED, 0.3)
        plot.add(
            f'<line x1="{plot.x(edges[m]):.1f}" y1="{plot.y(conf):.1f}" x2="{plot.x(edges[m + 1]):.1f}" '
            f'y2="{plot.y(conf):.1f}" stroke="{RED}" stroke-width="1.5"/>'
        )
    _legend(plot, [("accuracy", BLUE, "box"), ("gap to mean confidence", RED, "box"), ("perfect calibration", GREY, "dash")],
            plot.x(0.04), plot.y(0.93))
    # Lower panel: rows per bin.
    counts = diagram.count.astype(float)
    panel = _Plot(width, height, (0.0, 1.0), (0.0, max(counts.max(), 1.0) * 1.3), box=(58, height - 128, 18, 46))
    panel.axes("top-label confidence", "rows", "", yticks=_nice_ticks(0, max(counts.max(), 1.0), 2))
    for m in range(edges.size - 1):
        if counts[m]:
            panel.rect(edges[m], 0, edges[m + 1], counts[m], GREY, 0.7, stroke="#fff")
            panel.text(panel.x((edges[m] + edges[m + 1]) / 2), panel.y(counts[m]) - 3, f"{int(counts[m]):,}", 9, "middle", "#555")
    plot.items.extend(panel.items)  # both panels in one SVG
    return plot.svg()


# --------------------------------------------------------------------------------- discovery report

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f")
DISCOVERY_POINTS = 4000  # at most this many rows drawn (a seeded sample), so the page stays small


def write_discovery_html(discovery, X, path: str | os.PathLike[str], *, title: str | None = None, seed: int = 0) -> None:
    """Write one self-contained HTML page for :meth:`openworld.OpenWorld.discover`: a 2-D projection of the
    unlabelled rows coloured by cluster (known rows grey, each new cluster its colour) and a table of the new
    clusters with their representative rows."""
    write_text_atomically(path, render_discovery_html(discovery, X, title=title, seed=seed))


def render_discovery_html(discovery, X, *, title: str | None = None, seed: int = 0) -> str:
    from openworld import __version__

    e = html.escape
    X = _numpy(X).astype(np.float64)
    heading = "openworld discovery" + (f" — {title}" if title else "")
    rows = "".join(
        f"<tr><td>{e(str(c.name))}</td><td class=\"n\">{c.size}</td><td>{e(', '.join(str(i) for i in c.representatives))}</td></tr>"
        for c in discovery.clusters
    )
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(heading)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(heading)}</h1>",
        f'<p class="sub">{len(discovery.labels):,} rows · {int((~discovery.is_new).sum()):,} assigned to known classes · '
        f"{discovery.n_new} new classes · openworld {e(__version__)}</p>",
        "<h2>Projection</h2>",
        _figure(_svg_projection(discovery, X, seed),
                "The rows projected on their first two principal axes; known-class rows grey, each new cluster in "
                "its colour (the ten largest; others dark). Ringed points are each cluster's representative rows."),
        "<h2>New clusters</h2>",
        "<table><tr><th>cluster</th><th>rows</th><th>representative rows (row numbers, nearest the center first)</th></tr>"
        + rows + "</table>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _svg_projection(discovery, X: np.ndarray, seed: int) -> str:
    centered = X - X.mean(0)
    _, _, axes = np.linalg.svd(centered[: min(len(X), 20_000)], full_matrices=False)
    points = centered @ axes[:2].T if axes.shape[0] >= 2 else np.c_[centered @ axes[:1].T, np.zeros(len(X))]
    shown = np.arange(len(X))
    if len(X) > DISCOVERY_POINTS:
        shown = np.sort(np.random.default_rng(seed).choice(len(X), DISCOVERY_POINTS, replace=False))
    representatives = {int(i) for c in discovery.clusters for i in c.representatives}
    shown = np.union1d(shown, np.fromiter(representatives, dtype=np.int64, count=len(representatives)))
    lo, hi = points[shown].min(0), points[shown].max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-12)
    plot = _Plot(720, 520, (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    plot.axes("first principal axis", "second principal axis", "Unlabelled rows by cluster")
    colour = {c.name: (_PALETTE[i] if i < len(_PALETTE) else "#333") for i, c in enumerate(discovery.clusters)}
    order = sorted(shown, key=lambda i: bool(discovery.is_new[i]))  # known rows underneath
    for i in order:
        fill = colour[discovery.labels[i]] if discovery.is_new[i] else "#c8c8c8"
        plot.add(f'<circle cx="{plot.x(points[i, 0]):.1f}" cy="{plot.y(points[i, 1]):.1f}" r="2.2" fill="{fill}" '
                 'fill-opacity="0.8"/>')
    for i in sorted(representatives):
        plot.add(f'<circle cx="{plot.x(points[i, 0]):.1f}" cy="{plot.y(points[i, 1]):.1f}" r="5" fill="none" '
                 f'stroke="{colour[discovery.labels[i]]}" stroke-width="1.6"/>')
    entries = [("known classes", "#c8c8c8", "dot")] + [(str(c.name), colour[c.name], "dot") for c in discovery.clusters[:10]]
    _legend(plot, entries, plot.right - 130, plot.top + 20)
    return plot.svg()
