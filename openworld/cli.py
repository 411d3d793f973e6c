"""The ``openworld`` command line: demo, fine-tune, embed, fit, score, discover, eval.

Tables are .npy/.npz, Parquet or CSV holding a vector column, numeric
feature columns, or a text column (embedded with the bundled sentence model,
or with a fine-tuned one given by ``--encoder FILE``; the model remembers
which, so ``score`` embeds text the same way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table as RichTable

from openworld.core.arrays import common_label_type
from openworld.encoders.text import DEFAULT_LAYERS

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _parse_shrinkage(value: str):
    if value.lower() in ("auto", "oas"):
        return value.lower()
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        _fail(f"--shrinkage must be auto, oas, none or a number in [0, 1], got {value!r}")


def _text_encoder(encoder_file: Optional[Path], encoder_name: Optional[str], progress: bool):
    """The encoder that embeds text: the fine-tuned one saved in ``encoder_file``, else the one named
    ``encoder_name`` (a saved model's ``embedding_model_``), else the bundled default."""
    from openworld.encoders.text import TextEncoder, is_fine_tuned_name

    if encoder_file is not None:
        return TextEncoder.load(encoder_file, progress=progress)
    if encoder_name is None:
        return TextEncoder(progress=progress)
    if is_fine_tuned_name(encoder_name):
        raise ValueError(f"the model was fitted on text embedded by the fine-tuned encoder {encoder_name!r}: "
                         "give its file with --encoder FILE (or score vectors)")
    return TextEncoder.from_name(encoder_name, progress=progress)


def _features(path: Path, vectors: Optional[str], text: Optional[str], labels: Optional[str], progress: bool,
              encoder_name: Optional[str] = None, columns=None, encoder_file: Optional[Path] = None):
    """(X, labels, encoder name or None) from a table; text is embedded (cached) by the encoder of
    ``_text_encoder``. ``columns``: the feature columns a saved model was fitted on, taken by name."""
    from openworld.io.tables import read_table

    table = read_table(path, vector_column=vectors, text_column=text, label_column=labels, feature_columns=columns)
    if table.vectors is not None:
        if encoder_file is not None:
            raise ValueError(f"--encoder embeds text, but {path} holds vectors")
        return table.vectors, table.labels, None
    from openworld.encoders.text import embed_texts

    encoder = _text_encoder(encoder_file, encoder_name, progress)
    return embed_texts(table.texts, encoder=encoder, progress=progress), table.labels, encoder.name


def _text_table(data: Path, text: Optional[str], labels: Optional[str], purpose: str):
    """The table of ``data`` that must hold a text column (to ``purpose``); failures exit."""
    from openworld.io.tables import read_table

    try:
        table = read_table(data, text_column=text, label_column=labels)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(str(error))
    if table.texts is None:
        _fail(f"{data} has no text column to {purpose} (name it with --text)")
    return table


def _model_and_features(model_path: Path, data: Path, vectors, text, labels, progress: bool, device=None,
                        encoder_file: Optional[Path] = None):
    """(model, X, labels) for a saved model and a table, text embedded as the model's was; failures exit.

    The model computes on ``device`` (None: the CPU).
    """
    from openworld.estimator import OpenWorld

    try:
        model = OpenWorld.load(model_path, device=device)
        X, y, encoder = _features(data, vectors, text, labels, progress, model.embedding_model_, model.feature_columns_,
                                  encoder_file)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(str(error))
    if encoder is not None and model.embedding_model_ != encoder:
        _fail(f"{model_path} was fitted on {model.embedding_model_ or 'vectors'}, not on text embedded with {encoder}")
    return model, X, y


def _encoder_option():
    """``--encoder FILE``, as every command that embeds text takes it."""
    return typer.Option(None, "--encoder", help="Fine-tuned text encoder file (from `openworld fine-tune`) that embeds the text.")


def _check_output(path: Optional[Path], table: bool = False) -> None:
    """Fail before any work if ``path`` cannot be written: its folder must exist, it must not be a folder
    itself and, for a table (``table``), its suffix must be one ``write_table`` writes."""
    from openworld.io.tables import WRITE_SUFFIXES

    if path is None:
        return
    if not path.parent.is_dir():
        _fail(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        _fail(f"cannot write {path}: it is a folder")
    if table and path.suffix.lower() not in WRITE_SUFFIXES:
        _fail(f"cannot write {path}: unsupported file type {path.suffix or '(no suffix)'!r}; supported: {', '.join(WRITE_SUFFIXES)}")


def _vector_batches(path: Path, vectors: Optional[str], labels: Optional[str]):
    """Chunks of (X, y) streamed from a .npy or Parquet file of vectors; None when it must be read whole."""
    from openworld.io.tables import iter_vector_batches

    if path.suffix.lower() not in (".npy", ".parquet"):
        return None
    try:
        batches = iter_vector_batches(path, vector_column=vectors, label_column=labels)
    except ValueError as error:
        if "text" in str(error).lower() or "no vector" in str(error).lower():
            return None  # a text table: embedded whole
        raise
    return ((table.vectors, table.labels) for table in batches)


def _with_progress(batches, progress: bool):
    """Pass chunks through, counting rows on a progress line."""
    if not progress:
        yield from batches
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("fitting: {task.completed:,} rows"), console=console) as bar:
        task = bar.add_task("fit", total=None)
        for X, y in batches:
            yield X, y
            bar.advance(task, X.shape[0])


def _print_summary(title: str, rows: dict) -> None:
    table = RichTable(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def demo(
    cache_dir: Optional[Path] = typer.Option(None, help="Where embeddings are cached (default ~/.cache/openworld)."),
    save: Optional[Path] = typer.Option(None, help="Also save the fitted model here (.safetensors)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Fit on CLINC150's 150 intents and report accuracy and out-of-scope detection on its test split."""
    from openworld.demo import run_demo
    from openworld.io.atomic import write_text_atomically

    _check_output(save)
    _check_output(json_out)
    report = run_demo(cache_dir=cache_dir, progress=progress, model_path=save)
    _print_summary("openworld demo: CLINC150 (all-MiniLM-L6-v2 embeddings)", report.as_dict())
    if json_out is not None:
        write_text_atomically(json_out, json.dumps(report.as_dict(), indent=2))


@app.command("fine-tune")
def fine_tune(
    data: Path = typer.Argument(..., help="Labelled table with a text column (.parquet, .csv, .npz): the known classes."),
    output: Path = typer.Option(..., "-o", "--output", help="Encoder file to write (.safetensors)."),
    text: Optional[str] = typer.Option(None, help="Text column (default: text/sentence/utterance)."),
    labels: Optional[str] = typer.Option(None, help="Label column (default: label/y)."),
    epochs: int = typer.Option(2, help="Passes over the rows."),
    batch_size: int = typer.Option(32, help="Texts per training step."),
    learning_rate: float = typer.Option(5e-5, help="AdamW's learning rate for the encoder."),
    seed: int = typer.Option(0, help="Seed of the head's start, the shuffling and dropout."),
    threads: Optional[int] = typer.Option(None, help="torch threads while training (default: torch's)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Fine-tune the bundled text encoder on labelled texts and save it; pass it to the other commands with --encoder."""
    from openworld.encoders.text import fine_tune_text_encoder

    _check_output(output)
    if threads is not None and threads < 1:
        _fail(f"--threads must be a positive integer, got {threads}")
    table = _text_table(data, text, labels, "fine-tune on")
    if table.labels is None:
        _fail(f"{data} has no label column (name it with --labels): fine-tuning learns the labelled classes")
    try:
        encoder = fine_tune_text_encoder(table.texts, table.labels, epochs=epochs, batch_size=batch_size,
                                         learning_rate=learning_rate, seed=seed, num_threads=threads, progress=progress)
    except (ValueError, TypeError) as error:
        _fail(str(error))
    try:
        encoder.save(output)
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror or error}")
    console.print(f"fine-tuned on {len(table.texts)} texts of {np.unique(table.labels).size} classes; wrote {output} "
                  f"({encoder.name})")


@app.command()
def embed(
    data: Path = typer.Argument(..., help="Table with a text column (.parquet, .csv, .npz)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write vectors (.parquet, .csv, .npz)."),
    text: Optional[str] = typer.Option(None, help="Text column (default: text/sentence/utterance)."),
    labels: Optional[str] = typer.Option(None, help="Label column to carry over (default: label/y if present)."),
    batch_size: int = typer.Option(64, help="Sentences per forward pass."),
    layers: Optional[str] = typer.Option(
        None, help="Hidden states to pool, comma-separated (0 = token embeddings, 6 = last; 6 alone = sentence-transformers' "
        f"vectors; default {','.join(map(str, DEFAULT_LAYERS))}; a fine-tuned encoder keeps its own)."
    ),
    encoder_file: Optional[Path] = _encoder_option(),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Embed a text column with all-MiniLM-L6-v2 (offline, cached), or a fine-tuned copy, and write an `embedding` column."""
    from openworld.encoders.text import TextEncoder, embed_texts
    from openworld.io.tables import write_table

    _check_output(output, table=True)

    if batch_size < 1:
        _fail(f"--batch-size must be a positive number of sentences, got {batch_size}")
    if encoder_file is not None:
        if layers is not None:
            _fail("--layers is fixed by the fine-tuned encoder given with --encoder: give one or the other")
        try:
            encoder = TextEncoder.load(encoder_file, batch_size=batch_size, progress=progress)
        except (ValueError, FileNotFoundError) as error:
            _fail(str(error))
    else:
        spelled = layers or ",".join(map(str, DEFAULT_LAYERS))
        try:
            encoder = TextEncoder(batch_size=batch_size, progress=progress, layers=[int(part) for part in spelled.split(",")])
        except ValueError:
            _fail(f"--layers must be comma-separated distinct hidden states in 0..6 (e.g. 5,6 or 6), got {layers!r}")
    table = _text_table(data, text, labels, "embed")
    vectors = embed_texts(table.texts, encoder=encoder, progress=progress)
    columns = {"embedding": vectors}
    if table.labels is not None:
        columns["label"] = table.labels
    write_table(output, columns)
    console.print(f"wrote {vectors.shape[0]} embeddings of dimension {vectors.shape[1]} to {output}")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Training table: vectors or text, and a label column."),
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (.safetensors)."),
    labels: Optional[str] = typer.Option(None, help="Label column (default: label/y; none = one-class model)."),
    vectors: Optional[str] = typer.Option(None, help="Vector column (default: auto-detected)."),
    text: Optional[str] = typer.Option(None, help="Text column to embed instead of vectors."),
    encoder_file: Optional[Path] = _encoder_option(),
    covariance: str = typer.Option("tied", help="tied | full | diag"),
    shrinkage: str = typer.Option("auto", help="auto (Ledoit-Wolf) | oas | none | a number in [0, 1]"),
    score: str = typer.Option("auto", help="auto | mahalanobis | relative_mahalanobis | likelihood | low_variance_mahalanobis | covariance_ensemble | kernel_density"),
    priors: str = typer.Option("uniform", help="uniform | empirical"),
    target_tpr: float = typer.Option(0.95, help="Share of in-distribution rows to keep (0 < t < 1)."),
    reject: bool = typer.Option(True, help="--no-reject: never answer unknown (target_tpr=None)."),
    random_state: int = typer.Option(0, help="Seed of the cross-fitting that places the working point."),
    contamination: float = typer.Option(0.0, help="Share of training rows assumed anomalous and trimmed (robust fit)."),
    working_point: str = typer.Option("held_out", help="held_out (cross-fitted) | gaussian (F quantile; needs --shrinkage none)"),
    device: Optional[str] = typer.Option(None, help="Where to compute: cpu (default) | cuda | cuda:<n>."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Fit an OpenWorld model and save it.

    Vectors in .npy or Parquet files are streamed in chunks (constant memory,
    files larger than memory are fine); other inputs are read whole.
    """
    from openworld.estimator import OpenWorld

    try:
        model = OpenWorld(
            covariance=covariance,
            shrinkage=_parse_shrinkage(shrinkage),
            score=score,
            priors=priors,
            target_tpr=target_tpr if reject else None,
            random_state=random_state,
            contamination=contamination,
            working_point=working_point,
            device=device,
        )
        streamed = text is None and encoder_file is None and not contamination
        batches = _vector_batches(data, vectors, labels) if streamed else None
        if batches is not None:
            encoder = None
            model.fit_batches(_with_progress(batches, progress))
        else:
            X, y, encoder = _features(data, vectors, text, labels, progress, encoder_file=encoder_file)
            model.fit(X, y)
        from openworld.io.tables import feature_columns

        # named feature columns are matched by name when the model scores another file
        columns = () if encoder is not None else feature_columns(data, vector_column=vectors, label_column=labels)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(str(error))
    model.embedding_model_ = encoder
    model.feature_columns_ = list(columns) or None
    model.set_params(device=None)  # the file scores wherever it is loaded (--device there)
    model.save(output)
    _print_summary(
        f"fitted {output}",
        {
            "rows": int(round(float(model.statistics_.weights.sum()))),
            "features": model.n_features_in_,
            "classes": len(model.classes_),
            "covariance": covariance,
            "score": model.score_,
            "threshold": "none" if model.threshold_ is None else model.threshold_,
        },
    )


@app.command("score")
def score_command(
    model_path: Path = typer.Argument(..., help="Model written by `openworld fit`."),
    data: Path = typer.Argument(..., help="Table of vectors or text to score."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write predictions (.parquet, .csv, .npz)."),
    labels: Optional[str] = typer.Option(None, help="Label column, if present, to report accuracy."),
    vectors: Optional[str] = typer.Option(None, help="Vector column (default: auto-detected)."),
    text: Optional[str] = typer.Option(None, help="Text column to embed instead of vectors."),
    encoder_file: Optional[Path] = _encoder_option(),
    proba: bool = typer.Option(False, help="Also write the posterior of every class (a vector column)."),
    device: Optional[str] = typer.Option(None, help="Where to compute: cpu (default) | cuda | cuda:<n>."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Predict labels (or unknown), OOD scores and confidences for every row."""
    _check_output(output, table=True)
    model, X, y = _model_and_features(model_path, data, vectors, text, labels, progress, device, encoder_file)
    try:
        posteriors = model.predict_proba(X)
        predictions = model.predict(X)
        scores = model.score_samples(X)
    except ValueError as error:
        _fail(str(error))
    rejects = model.threshold_ is not None and model.target_tpr is not None  # what predict rejects by
    columns = {
        "prediction": predictions.astype(str),
        # from the score, not the prediction: a class may share unknown_label's name
        "unknown": scores < model.threshold_ if rejects else np.zeros(len(scores), dtype=bool),
        "score": scores,
        "confidence": posteriors.max(1),
    }
    if proba:
        columns["proba"] = posteriors
    from openworld.io.tables import write_table

    write_table(output, columns)
    summary = {"rows": X.shape[0], "unknown share": float(columns["unknown"].mean())}
    if y is not None:
        y, classes = common_label_type(y, model.classes_)  # "3" from a text column is class 3
        known = np.isin(y, classes)
        if known.any():
            best = classes[posteriors[known].argmax(1)]
            summary["accuracy on known classes (closed set)"] = float(np.mean(best == y[known]))
    _print_summary(f"scored {data} → {output}", summary)


@app.command("discover")
def discover_command(
    model_path: Path = typer.Argument(..., help="Model written by `openworld fit`."),
    data: Path = typer.Argument(..., help="Unlabelled table of vectors or text (known and new classes mixed)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write each row's cluster (.parquet, .csv, .npz)."),
    n_new: str = typer.Option("auto", help="Number of new classes: 'auto' estimates it, or an integer."),
    adopt: Optional[Path] = typer.Option(None, help="Also write the model with the new clusters adopted as classes here."),
    report: Optional[Path] = typer.Option(None, help="Write an HTML page: a 2-D projection coloured by cluster."),
    vectors: Optional[str] = typer.Option(None, help="Vector column (default: auto-detected)."),
    text: Optional[str] = typer.Option(None, help="Text column to embed instead of vectors."),
    encoder_file: Optional[Path] = _encoder_option(),
    device: Optional[str] = typer.Option(None, help="Where to compute: cpu (default) | cuda | cuda:<n>."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Find new classes among unlabelled rows: each row's known label or new cluster, and each new cluster's size
    and representative rows."""
    try:
        count = n_new if n_new == "auto" else int(n_new)
    except ValueError:
        _fail(f"--n-new must be 'auto' or an integer, got {n_new!r}")
    _check_output(output, table=True)
    _check_output(report)
    _check_output(adopt)
    model, X, _ = _model_and_features(model_path, data, vectors, text, None, progress, device, encoder_file)
    try:
        with console.status("discovering new classes"):
            result = model.discover(X, n_new=count)
    except ValueError as error:
        _fail(str(error))
    n_known = len(model.classes_)
    if adopt is not None:  # before any file is written: a refused adoption leaves no partial output
        _adopt(model, result)
    representative = np.zeros(len(result.labels), dtype=bool)
    for cluster in result.clusters:
        representative[cluster.representatives] = True
    from openworld.io.tables import write_table

    write_table(output, {"cluster": result.labels.astype(str), "new": result.is_new, "representative": representative})
    table = RichTable(title=f"{result.n_new} new classes in {data} → {output}")
    for column in ("cluster", "rows", "representative rows"):
        table.add_column(column)
    for cluster in result.clusters:
        table.add_row(str(cluster.name), str(cluster.size), ", ".join(str(i) for i in cluster.representatives))
    console.print(table)
    console.print(str(result.settings), highlight=False)  # the candidate discover chose on these rows
    if report is not None:
        from openworld.evaluation.report import write_discovery_html

        write_discovery_html(result, X, report, title=str(data))
        console.print(f"report written to {report}")
    if adopt is not None:
        model.set_params(device=None)  # a portable file, as `fit` writes
        model.save(adopt)
        console.print(f"model with {len(model.classes_) - n_known} adopted classes written to {adopt}")


def _adopt(model, result) -> None:
    """Adopt the discovery's new clusters into ``model``; a refusal, or an adopted model that would reject
    nothing where the original rejected, exits."""
    import warnings

    had_working_point = model.target_tpr is not None and model.threshold_ is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a dropped working point is an error below
            model.adopt(result)
    except ValueError as error:
        _fail(f"cannot adopt the new clusters: {error}")
    if had_working_point and model.threshold_ is None:
        _fail(f"adopting {result.n_new} new classes changes what score='auto' means for this model (now "
              f"{model.score_!r}), so its working point no longer holds and the adopted model would reject nothing; "
              "not written. Fit a model on labelled rows of every class instead, or adopt in Python and call "
              "set_working_point on held-out rows")


def _ood_mask(y: np.ndarray, classes: np.ndarray, ood_labels: list[str]) -> np.ndarray:
    """Rows whose label is one of ``ood_labels``; every other row must carry a class of the model."""
    if y.dtype.kind in "iu":
        try:
            wanted = np.array([int(value) for value in ood_labels], dtype=y.dtype)
        except ValueError:
            raise ValueError(f"--ood-label {ood_labels!r}: the label column holds integers") from None
    else:
        wanted = np.array(ood_labels, dtype=str)
    clash = [value for value in wanted.tolist() if value in set(classes.tolist())]
    if clash:
        raise ValueError(f"--ood-label {clash[0]!r} is a class the model was fitted on")
    is_ood = np.isin(y, wanted)
    strangers = np.unique(y[~is_ood & ~np.isin(y, classes)])
    if strangers.size:
        raise ValueError(
            f"label(s) {strangers[:10].tolist()!r} are neither classes of the model nor given with --ood-label "
            "(without --ood-label every unknown label counts as out-of-distribution)"
        )
    return is_ood


def _anomaly_labels(flags: np.ndarray, classes: np.ndarray, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and OOD mask from a 0/1 anomaly column, for a one-class model."""
    if classes.size != 1:
        raise ValueError(f"--anomaly-column needs a one-class model; this one has {classes.size} classes (use --ood-label)")
    values = set(np.unique(flags).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"--anomaly-column {column!r} must hold 0 (normal) and 1 (anomaly), found {sorted(values)[:5]!r}")
    is_ood = flags == 1
    labels = np.full(flags.shape, classes[0], dtype=classes.dtype)
    if classes.dtype.kind == "U" and classes[0] != "anomaly":  # anomalies listed as such, not under the normal class
        labels = np.where(is_ood, "anomaly", labels)
    return labels, is_ood


def _print_report(report) -> None:
    table = RichTable(title=f"evaluation: {report.title}", show_header=False)
    for key, value in report.summary().items():
        if value is None:
            text = "—"
        elif isinstance(value, float):
            text = f"{value:.4f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        table.add_row(key, text)
    Console().print(table)
    for note in report.notes:
        console.print(f"[bold yellow]note:[/] {note}")


@app.command("eval")
def eval_command(
    model_path: Path = typer.Argument(..., help="Model written by `openworld fit`."),
    data: Path = typer.Argument(..., help="Labelled table: rows of the model's classes and out-of-distribution rows."),
    labels: Optional[str] = typer.Option(None, help="Label column (default: label/y)."),
    vectors: Optional[str] = typer.Option(None, help="Vector column (default: auto-detected)."),
    text: Optional[str] = typer.Option(None, help="Text column to embed instead of vectors."),
    encoder_file: Optional[Path] = _encoder_option(),
    ood_label: Optional[list[str]] = typer.Option(
        None, "--ood-label", help="Label of out-of-distribution rows (repeatable). Default: every label the model does not know."
    ),
    anomaly_column: Optional[str] = typer.Option(
        None, help="For a one-class model: a column with 1 for anomalies and 0 for normal rows (e.g. y)."
    ),
    report_path: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    device: Optional[str] = typer.Option(None, help="Where to compute: cpu (default) | cuda | cuda:<n>."),
    progress: bool = typer.Option(True, help="Show progress bars."),
):
    """Accuracy, OOD detection (AUROC, AUPR, FPR@95), calibration and the working point on labelled data."""
    from openworld.evaluation.report import evaluate, write_html, write_json

    for path in (report_path, json_out):
        _check_output(path)
    if anomaly_column is not None and (labels is not None or ood_label):
        _fail("--anomaly-column replaces --labels and --ood-label: give one or the other")
    model, X, y = _model_and_features(model_path, data, vectors, text, anomaly_column or labels, progress, device,
                                      encoder_file)
    if y is None:
        _fail(f"{data} has no label column (name it with --labels): evaluation needs the true labels")
    try:
        if anomaly_column is not None:
            y, is_ood = _anomaly_labels(y, model.classes_, anomaly_column)
        else:
            is_ood = _ood_mask(*common_label_type(y, model.classes_), ood_label) if ood_label else None
        report = evaluate(model, X, y, is_ood=is_ood, title=str(data))
    except ValueError as error:
        _fail(str(error))
    _print_report(report)
    for path, write in ((json_out, write_json), (report_path, write_html)):
        if path is None:
            continue
        try:
            write(report, path)
        except OSError as error:
            _fail(f"cannot write {path}: {error.strerror or error}")
        console.print(f"wrote {path}")
