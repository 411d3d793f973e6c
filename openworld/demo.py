"""The demo: the main job on the bundled default, CLINC150 intents with out-of-scope queries.

Fit on the 150 in-scope intents of the train split (all-MiniLM-L6-v2
embeddings, cached), then on the test split report in-scope accuracy,
out-of-scope AUROC and FPR@95, and what the default working point does:
the share of in-scope queries kept and of out-of-scope queries caught.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from openworld.core.metrics import auroc, fpr_at_tpr
from openworld.estimator import OpenWorld


@dataclass(frozen=True)
class DemoReport:
    n_train: int
    n_classes: int
    n_test_in_scope: int
    n_test_out_of_scope: int
    in_scope_accuracy: float
    oos_auroc: float
    oos_fpr_at_95: float
    target_tpr: float
    in_scope_kept: float
    oos_rejected: float
    embed_seconds: float
    fit_seconds: float
    score_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def run_demo(*, cache_dir=None, progress: bool = True, model_path=None) -> DemoReport:
    """Embed, fit and evaluate; optionally save the fitted model to ``model_path``."""
    from openworld.datasets.clinc150 import load_clinc150
    from openworld.encoders.text import embed_texts

    splits = load_clinc150("full")
    started = time.perf_counter()
    train_texts, train_labels = splits["train"]
    X_train = embed_texts(train_texts, cache_dir=cache_dir, progress=progress)
    X_test = embed_texts(splits["test"][0], cache_dir=cache_dir, progress=progress)
    X_oos = embed_texts(splits["oos_test"][0], cache_dir=cache_dir, progress=progress)
    embedded = time.perf_counter()

    model = OpenWorld(random_state=0).fit(X_train, train_labels)
    fitted = time.perf_counter()
    scores_in = model.score_samples(X_test)
    scores_out = model.score_samples(X_oos)
    predicted_in = model.predict(X_test)
    predicted_out = model.predict(X_oos)
    closed_set = model.classes_[model.decision_function(X_test).argmax(1)]
    scored = time.perf_counter()
    if model_path is not None:
        model.save(model_path)

    return DemoReport(
        n_train=len(train_texts),
        n_classes=len(model.classes_),
        n_test_in_scope=len(X_test),
        n_test_out_of_scope=len(X_oos),
        in_scope_accuracy=float(np.mean(closed_set == splits["test"][1])),
        oos_auroc=auroc(scores_in, scores_out),
        oos_fpr_at_95=fpr_at_tpr(scores_in, scores_out, 0.95),
        target_tpr=float(model.target_tpr),
        in_scope_kept=float(np.mean(predicted_in != model.unknown_label)),
        oos_rejected=float(np.mean(predicted_out == model.unknown_label)),
        embed_seconds=embedded - started,
        fit_seconds=fitted - embedded,
        score_seconds=scored - fitted,
    )
