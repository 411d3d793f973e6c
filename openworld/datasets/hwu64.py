"""HWU64 intent data: 64 intents of a home assistant across 18 scenarios.

Liu, Eshghi, Swietojanski and Rieser, "Benchmarking Natural Language
Understanding Services for building Conversational Agents", IWSDS 2019;
CC BY 4.0 (github.com/xliuhw/NLU-Evaluation-Data). Not vendored: read from a
local copy holding ``train.tsv`` and ``test.tsv`` (fold 1 of the authors'
10-fold cross-validation, merged; header ``text, label, scenario, answerid``).
There is no validation split: hold one out of ``train``
(:func:`openworld.evaluation.protocols.holdout_split`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from openworld.datasets import DATA_ENV, data_folders

__all__ = ["SPLITS", "load_hwu64"]

#: Split names, as in the local copy.
SPLITS = ("train", "test")

_HEADER = ["text", "label", "scenario", "answerid"]


def _read_split(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows or rows[0][: len(_HEADER)] != _HEADER:
        raise ValueError(f"{path} does not start with the header {'<TAB>'.join(_HEADER)!r}")
    body = rows[1:]
    bad = [i + 2 for i, row in enumerate(body) if len(row) < 2]
    if bad:
        raise ValueError(f"{path} has rows without a text and a label (first: line {bad[0]})")
    texts = [row[0] for row in body]
    labels = np.array([row[1] for row in body], dtype=str)
    return texts, labels


def load_hwu64(root: str | os.PathLike | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
    """Load HWU64 as ``{split: (texts, labels)}`` for ``"train"`` (9,960 rows) and ``"test"`` (1,076).

    ``texts`` is a list of ``n`` lowercase strings (the annotators' normalised
    text) and ``labels`` a NumPy array of ``n`` str ``<scenario>_<intent>``,
    e.g. ``"alarm_query"``. Rows come sorted by intent: shuffle before use.
    ``root`` is the folder with ``train.tsv`` / ``test.tsv`` or a data root
    with an ``hwu64/`` subfolder; it defaults to ``$OPENWORLD_DATA`` if set,
    else ``../shared/data/hwu64`` relative to the current directory.

    Raises ``FileNotFoundError`` naming the paths tried when the files are absent.
    """
    for folder in data_folders("hwu64", root):
        if all((folder / f"{split}.tsv").is_file() for split in SPLITS):
            return {split: _read_split(folder / f"{split}.tsv") for split in SPLITS}
    tried = ", ".join(str((folder / "train.tsv").absolute()) for folder in data_folders("hwu64", root))
    raise FileNotFoundError(
        f"HWU64 is not bundled with openworld and train.tsv/test.tsv were not found (looked for: {tried}). "
        "Make them from github.com/xliuhw/NLU-Evaluation-Data (CrossValidation KFold_1, one row per "
        f"utterance: text, label, scenario, answerid) and pass root=<that folder>, or set {DATA_ENV}."
    )
