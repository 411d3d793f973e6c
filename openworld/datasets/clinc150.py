"""CLINC150 (OOS-eval) intent data: 150 intents plus out-of-scope queries.

Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope
Prediction", EMNLP-IJCNLP 2019; CC BY 3.0 (see ``data/clinc150/README.md``).
The "full" variant ships with openworld so the demo and tests need no download; the
other variants are read from a local copy of the ``clinc/oos-eval`` ``data/`` folder.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any

import numpy as np

from openworld.datasets import DATA_ENV, data_folders

__all__ = ["SPLITS", "VARIANTS", "OOS_LABEL", "load_clinc150"]

#: Split names, in the order they appear in the original files.
SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
#: Dataset variants of the original repository.
VARIANTS = ("full", "imbalanced", "small", "oos_plus")
#: Label of every out-of-scope query.
OOS_LABEL = "oos"

def _read_external(variant: str, root: str | os.PathLike | None) -> Any:
    name = f"data_{variant}.json"
    candidates = [folder / name for folder in data_folders("clinc150", root)]
    for path in candidates:
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
    tried = ", ".join(str(p.absolute()) for p in candidates)
    raise FileNotFoundError(
        f"CLINC150 variant {variant!r} is not bundled with openworld and {name} was not found "
        f"(looked for: {tried}). Download it from https://github.com/clinc/oos-eval (folder data/) "
        f"and pass root=<that folder>, or set the environment variable {DATA_ENV}."
    )


def load_clinc150(
    variant: str = "full", root: str | os.PathLike | None = None
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Load CLINC150 as ``{split: (texts, labels)}`` for every name in :data:`SPLITS`.

    ``texts`` is a list of ``n`` strings and ``labels`` a NumPy array of ``n`` str
    (intent names; ``"oos"`` in the ``oos_*`` splits). ``variant`` is one of
    :data:`VARIANTS`. ``"full"`` with ``root=None`` reads the copy bundled with
    openworld; every other case reads ``data_<variant>.json`` from ``root`` (or its
    ``clinc150/`` subfolder). ``root`` defaults to ``$OPENWORLD_DATA`` if set, else
    ``../shared/data/clinc150`` relative to the current directory.

    Raises ``ValueError`` for an unknown variant and ``FileNotFoundError`` (naming the
    paths tried) when a non-bundled file is missing.
    """
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(
            f"unknown CLINC150 variant {variant!r}; valid variants: {', '.join(VARIANTS)}"
        )
    if variant == "full" and root is None:
        ref = resources.files(__package__).joinpath("data", "clinc150", "data_full.json")
        raw = json.loads(ref.read_text(encoding="utf-8"))
    else:
        raw = _read_external(variant, root)

    if not isinstance(raw, dict) or any(s not in raw for s in SPLITS):
        missing = [s for s in SPLITS if not isinstance(raw, dict) or s not in raw]
        raise ValueError(f"CLINC150 file for variant {variant!r} lacks splits: {missing}")

    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for split in SPLITS:
        pairs = raw[split]
        texts = [str(p[0]) for p in pairs]
        labels = np.array([str(p[1]) for p in pairs], dtype=str)
        out[split] = (texts, labels)
    return out
