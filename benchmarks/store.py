"""The work folder shared by the benchmark's steps: tasks in, scores out (NumPy + JSON only).

Step 1 (``.venv``) writes one *task* per (dataset, protocol, seed): the
embeddings and splits as ``tasks/<task>.npz`` plus ``tasks/<task>.json``.
Every producer of scores (openworld and its baselines, scikit-learn, pytorch-ood)
then writes ``scores/<producer>/<task>.npz`` + ``.json``: one record per
(method, hyper-parameter setting, stage) with its scores, and the report reads
them all. No pickle anywhere; this module imports nothing but NumPy, so the
pytorch-ood environment can use it without openworld.

A task has two *stages*, each a fit set and rows to score:

- ``val``: fit on ``vfit_X, vfit_y``; score ``val_in_X`` (in-distribution, labels
  ``val_in_y``) and ``val_out_X`` (out-of-distribution). Hyper-parameters are
  chosen here and only here.
- ``test``: fit on ``fit_X, fit_y``; score ``test_in_X`` (labels ``test_in_y``)
  and ``test_out_X``. Only reported.

Where the validation model is the test model (CLINC150 and MNIST-5k: same
training rows, a separate validation split), ``same_fit`` is true and the
``vfit_*`` arrays are not stored. Labels are ints ``0..K-1`` in each stage's
own class order. Scores follow openworld's convention: higher = more
in-distribution.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STAGES = ("val", "test")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


@dataclass
class Task:
    """One benchmark task: embeddings, splits and classifier heads (see the module docstring)."""

    name: str
    meta: dict
    arrays: dict = field(repr=False)

    @property
    def same_fit(self) -> bool:
        return bool(self.meta["same_fit"])

    def fit_set(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` the model of ``stage`` is fitted on."""
        if stage == "val" and not self.same_fit:
            return self.arrays["vfit_X"], self.arrays["vfit_y"]
        return self.arrays["fit_X"], self.arrays["fit_y"]

    def scored(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X_in, y_in, X_out)`` scored at ``stage``."""
        prefix = "val" if stage == "val" else "test"
        return self.arrays[f"{prefix}_in_X"], self.arrays[f"{prefix}_in_y"], self.arrays[f"{prefix}_out_X"]

    @property
    def heads(self) -> list[dict]:
        """Linear classifier heads on the embeddings (logistic regressions, or a network's own layer)."""
        return self.meta["heads"]

    def head(self, index: int, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """``(W: (K, d), b: (K,))`` of head ``index`` fitted on ``stage``'s fit set."""
        stage = "test" if self.same_fit else stage
        return self.arrays[f"head.{index}.{stage}.W"], self.arrays[f"head.{index}.{stage}.b"]

    def head_fit_seconds(self, index: int, stage: str) -> float:
        stage = "test" if self.same_fit else stage
        return float(self.heads[index]["fit_s"][stage])


def task_dir(work: Path) -> Path:
    return Path(work) / "tasks"


def save_task(work: Path, name: str, meta: dict, arrays: dict) -> None:
    folder = task_dir(work)
    folder.mkdir(parents=True, exist_ok=True)
    _write_npz(folder / f"{name}.npz", arrays)
    _write_json(folder / f"{name}.json", {"name": name, **meta})


def task_names(work: Path) -> list[str]:
    """Tasks in the order step 1 listed them (``manifest.json``)."""
    return list(read_manifest(work)["tasks"])


def load_task(work: Path, name: str) -> Task:
    folder = task_dir(work)
    meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    with np.load(folder / f"{name}.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return Task(name=name, meta=meta, arrays=arrays)


def read_manifest(work: Path) -> dict:
    return json.loads((Path(work) / "manifest.json").read_text(encoding="utf-8"))


def update_manifest(work: Path, **entries) -> dict:
    """Merge ``entries`` into ``<work>/manifest.json`` (created if missing) and return it."""
    path = Path(work) / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key, value in entries.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    Path(work).mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)
    return manifest


class ScoreWriter:
    """Collects one producer's scores on one task; :meth:`save` writes ``scores/<producer>/<task>.*``.

    A record is one (method, setting, stage): ``scores_in``/``scores_out`` (higher =
    in-distribution), optional ``pred`` (class index per in-distribution row) and
    ``conf`` (its top posterior), fit and score seconds. :meth:`error` records a
    method that could not run, with the reason.
    """

    def __init__(self, work: Path, producer: str, task: str):
        self.path = Path(work) / "scores" / producer / task
        self.producer = producer
        self.records: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, *, method: str, family: str, setting: dict, stage: str, scores_in, scores_out,
            fit_s: float, score_s: float, pred=None, conf=None, extra: dict | None = None) -> None:
        key = f"r{len(self.records)}"
        arrays = {"in": scores_in, "out": scores_out, "pred": pred, "conf": conf, **(extra or {})}
        stored = []
        for part, value in arrays.items():
            if value is None:
                continue
            self.arrays[f"{key}.{part}"] = np.asarray(value)
            stored.append(part)
        self.records.append({
            "key": key, "method": method, "family": family, "setting": setting, "stage": stage,
            "fit_s": float(fit_s), "score_s": float(score_s), "parts": stored,
        })

    def error(self, *, method: str, family: str, setting: dict, message: str) -> None:
        self.records.append({"key": None, "method": method, "family": family, "setting": setting,
                             "stage": None, "error": message})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_npz(self.path.with_suffix(".npz"), self.arrays)
        _write_json(self.path.with_suffix(".json"), {"producer": self.producer, "records": self.records})


def load_scores(work: Path) -> dict[tuple[str, str], tuple[list[dict], dict]]:
    """``{(producer, task): (records, arrays)}`` for every score file in the work folder."""
    out = {}
    root = Path(work) / "scores"
    for meta_path in sorted(root.glob("*/*.json")):
        producer, task = meta_path.parent.name, meta_path.stem
        records = json.loads(meta_path.read_text(encoding="utf-8"))["records"]
        with np.load(meta_path.with_suffix(".npz"), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        out[(producer, task)] = (records, arrays)
    return out


class Clock:
    """Elapsed-time prefix for progress lines: ``[02:31]``."""

    def __init__(self):
        self.start = time.perf_counter()

    def __str__(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"[{seconds // 60:02d}:{seconds % 60:02d}]"

    def log(self, message: str) -> None:
        print(f"{self} {message}", flush=True)


def setting_label(setting: dict) -> str:
    """``{"k": 10, "head": "LR(C=1)"}`` → ``"k=10, head=LR(C=1)"`` (empty for no setting)."""
    return ", ".join(f"{k}={v}" for k, v in setting.items())
