"""``OpenWorld``: the scikit-learn-style estimator over class statistics.

The estimator validates input, keeps the per-class sufficient statistics
(:class:`~openworld.core.statistics.ClassStatistics`) and the labels, and
derives everything else — covariances, the Gaussian head, the background
Gaussian, the working point — from them. Learning and forgetting are
arithmetic on the statistics, so they equal a refit.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from functools import wraps
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from openworld.core import scores as score_functions
from openworld.core.accumulator import LabelledStatistics, RowSample
from openworld.core.arrays import (
    InputKind,
    as_features,
    as_labels,
    as_weights,
    column_names,
    device_labels,
    in_column_order,
    to_output,
)
from openworld.core.covariance import (
    CovarianceEstimate,
    background_covariance,
    low_variance_basis,
    estimate_covariance,
    validate_shrinkage,
    validate_structure,
)
from openworld.core.gaussian import GaussianHead, RelativeEnsemble, TiedRelativeScorer
from openworld.core.kernel_density import (
    KEPT_ROWS,
    KERNEL_DENSITY_ROWS,
    MIN_CALIBRATION_ROWS,
    KernelDensity,
    feature_moments,
)
from openworld.core.mixture import fit_class_components, segment_logsumexp, validate_components
from openworld.core.precision import tf32_products
from openworld.core.statistics import ClassStatistics, one_torch_thread, run_tasks
from openworld.core.working_point import HeldOutScores, validate_target_tpr
from openworld.io.persistence import ModelFileError, read_model_file, write_model_file

Tensor = torch.Tensor

ONE_CLASS_LABEL = "normal"
WORKING_POINT_ROWS = 20000  # held-out rows scored to place the threshold (±0.3 point at 95%)
WORKING_POINT_FOLDS = 5
AS_SAVED = object()  # OpenWorld.load: keep the saved device parameter


def kernel_rows(sample: RowSample) -> RowSample:
    """The rows a kernel density keeps, those of smallest priority (rows of positive weight only): up to
    ``KERNEL_DENSITY_ROWS`` for the density, then the rest of ``KEPT_ROWS`` held out of it for the working point."""
    if sample.rows is None or sample.rows.shape[0] == 0:
        raise ValueError("score='kernel_density' needs rows of positive sample weight to estimate a density from")
    return sample.capped(KEPT_ROWS)


def _package_version() -> str:
    from openworld import __version__

    return __version__


def _refuse_overflow(X: Tensor, scores: Tensor | None, log_joint: Tensor | None) -> None:
    """A clear error where finite rows lie so far out that their squared distances overflow the dtype:
    a NaN score (∞ − ∞) or no finite log joint would otherwise pass for a number (NaN is never below
    the threshold, so the row would be accepted as a known class)."""
    bad = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    if scores is not None:
        bad |= torch.isnan(scores)
    if log_joint is not None and log_joint.is_floating_point():
        best = log_joint.amax(1)
        bad |= torch.isnan(best) | (best == -math.inf)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"row(s) {rows[:10].tolist()} lie too far from every class to be scored in {X.dtype}: their squared "
            f"distances overflow (largest |value| {float(X[rows].abs().max()):.3g}). Rescale the features"
            + (", or pass float64 rows" if X.dtype != torch.float64 else "")
        )


def _one_update_at_a_time(method):
    """Run an update holding the model's update lock from its first check to its publication, so that what
    it checked and what it builds on are the same version (another update waits)."""

    @wraps(method)
    def holding_the_lock(self, *args, **kwargs):
        with self._update_lock():
            return method(self, *args, **kwargs)

    return holding_the_lock


def _on_one_version(method):
    """Run a reading method on the model as last published (:meth:`OpenWorld._published`): an update in
    another thread swaps in a new version meanwhile without changing the one being read."""

    @wraps(method)
    def on_published(self, *args, **kwargs):
        return method(self._published(), *args, **kwargs)

    return on_published


class OpenWorld(ClassifierMixin, BaseEstimator):
    """Open-world classifier on embeddings: class posteriors, "unknown", exact incremental learning.

    Parameters follow ``DESIGN.md``'s public contract. ``random_state`` seeds
    the cross-fitting that places the default working point.
    ``contamination`` is the share of training rows assumed to be anomalies:
    fit trims that share of each class's farthest rows and refits, a few
    times (the concentration steps of Rousseeuw & Van Driessen's fast MCD),
    by subtracting their statistics. ``working_point="gaussian"`` places the
    threshold at the quantile of the distance of a new row under the fitted
    Gaussian (Hotelling: ``(n + 1) d / (n − d) · F(d, n − d)``), exact for one
    class of Gaussian rows without shrinkage; the default, ``"held_out"``,
    uses cross-fitted scores and assumes no distribution.
    ``dropped_variance`` is the share of variance carried by the leading
    principal components that ``score="low_variance_mahalanobis"`` leaves out
    (Rippel et al. 2020). ``score="kernel_density"`` scores by a Gaussian
    kernel density over a sample of up to 4,096 fitted rows (normal data of
    many modes), and places its working point on up to 4,096 more held out of
    the density: the one score that keeps rows; ``partial_fit`` and ``forget``
    update the sample, ``unlearn`` is refused. An
    ``embedding_model_`` attribute, when set (the command line sets it), names
    the encoder the features came from, and ``feature_columns_`` the table
    columns that were the features (scored by name); both are saved with the model.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (200, 4)), rng.normal(4, 1, (200, 4))])
    >>> y = np.repeat(["cat", "dog"], 200)
    >>> model = OpenWorld(random_state=0).fit(X, y)
    >>> model.predict(np.array([[0.0, 0, 0, 0], [4, 4, 4, 4], [40, 40, 40, 40]])).tolist()
    ['cat', 'dog', 'unknown']

    Relative Mahalanobis (the default with two classes or more) cannot see
    directions in which the classes do not differ: a row far away along
    them keeps the score of its projection. ``score="mahalanobis"`` sees
    every direction.

    >>> far_sideways = np.array([[40.0, -40, 40, -40]])
    >>> model.predict(far_sideways).tolist()
    ['cat']
    >>> OpenWorld(score="mahalanobis", random_state=0).fit(X, y).predict(far_sideways).tolist()
    ['unknown']
    """

    def __init__(
        self,
        covariance: str = "tied",
        shrinkage="auto",
        components=1,
        score: str = "auto",
        priors="uniform",
        target_tpr: float | None = 0.95,
        unknown_label="unknown",
        calibration=None,
        device=None,
        random_state=None,
        dropped_variance: float = 0.5,
        contamination: float = 0.0,
        working_point: str = "held_out",
    ):
        self.covariance = covariance
        self.shrinkage = shrinkage
        self.components = components
        self.score = score
        self.priors = priors
        self.target_tpr = target_tpr
        self.unknown_label = unknown_label
        self.calibration = calibration
        self.device = device
        self.random_state = random_state
        self.dropped_variance = dropped_variance
        self.contamination = contamination
        self.working_point = working_point

    # ------------------------------------------------------------------ fitting

    @_one_update_at_a_time
    def fit(self, X, y=None, sample_weight=None):
        """Fit class statistics on ``X: (n, d)`` with labels ``y: (n,)`` (None = one class of normal rows)."""
        self._validate_params()
        with self._updating() as model:  # a refit that fails leaves the former model whole, not half replaced
            if model._is_mixture() or model.contamination:
                model._fit_from_rows(X, y, sample_weight)
            else:
                model._fit_chunks([(X, y, sample_weight)], chunked=False)
        return self

    @_one_update_at_a_time
    def fit_batches(self, batches):
        """Fit from an iterable of ``(X, y)`` or ``(X, y, sample_weight)`` chunks, in constant memory.

        Only the statistics and a fixed-size sample of rows (for the working
        point) are kept, so a file larger than memory can be streamed; the
        result equals ``fit`` on the concatenated chunks (chunks of no rows are
        skipped). ``y`` None in every chunk fits a one-class model. Mixtures and
        trimming need all rows at once and are refused here.
        """
        self._validate_params()
        if self._is_mixture() or self.contamination:
            raise ValueError("fit_batches needs components=1 and contamination=0 (mixtures and trimming revisit rows)")
        with self._updating() as model:
            model._fit_chunks(batches, chunked=True)
        return self

    def _fit_chunks(self, batches, chunked: bool):
        """Merge the chunks' statistics and row samples; ``chunked``: errors name the chunk."""
        rng = self._rng()
        state, sample, n_features, unlabelled = None, RowSample(WORKING_POINT_ROWS), None, None
        names = None  # the first chunk's column names, if it has any: later chunks are read by them
        for number, batch in enumerate(batches):
            if not isinstance(batch, (tuple, list)) or not 1 <= len(batch) <= 3:
                raise ValueError(f"chunk {number}: expected (X,), (X, y) or (X, y, sample_weight), got "
                                 f"{type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))
            X, y, sample_weight = tuple(batch) + (None,) * (3 - len(batch))
            try:
                if chunked and (X.shape[0] if hasattr(X, "shape") else len(X)) == 0:
                    continue
                if unlabelled is not None and (y is None) != unlabelled:
                    raise ValueError("y is None in some chunks but not in others: label every chunk, or none (one class)")
                unlabelled = y is None
                if state is None:
                    names = column_names(X)
                X = in_column_order(X, names)
                X, _ = as_features(X, n_features=n_features, name=type(self).__name__, device=self.device)
                labels = device_labels(y, X.shape[0], X.device)
                labels = self._labels_or_one_class(y, X.shape[0]) if labels is None else labels
                weights = as_weights(sample_weight, X.shape[0], X.device, part_of_more=chunked)
                part = LabelledStatistics.from_rows(X, labels, weights)
                # the running state is this loop's own: merged in place (refuses a change of label type)
                state = part if state is None else state.merge(part, in_place=True)
            except ValueError as error:
                raise ValueError(f"chunk {number}: {error}" if chunked else str(error)) from None
            n_features = X.shape[1]
            if self._needs_row_sample():
                sample = sample.offer(X, labels, weights, rng.random(X.shape[0]))
        if state is None:
            raise ValueError("no chunks to fit: the iterable of batches was empty (or every chunk had no rows)")
        self._name_features(names)
        return self._fit_from_state(state.sorted(), sample)

    def _name_features(self, names: list[str] | None) -> None:
        """``feature_names_in_`` (scikit-learn's name): the fitted columns' names, by which later input is read."""
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = np.asarray(names, dtype=object)

    def _named(self, X):
        """``X`` with its named columns in the fitted order (unnamed input as it is)."""
        names = getattr(self, "feature_names_in_", None)
        return X if names is None else in_column_order(X, names.tolist())

    def _uses_held_out_working_point(self) -> bool:
        return self.target_tpr is not None and self.working_point == "held_out"

    def _keeps_rows(self) -> bool:
        """The kernel density score keeps a sample of rows (the other scores only statistics)."""
        return self.score == "kernel_density"

    def _needs_row_sample(self) -> bool:
        return self._uses_held_out_working_point() or self._keeps_rows()

    def _fit_from_state(self, state: LabelledStatistics, sample: RowSample):
        """Finish a fit from merged statistics (sorted labels) and a row sample for the working point (chunks and
        partitions may weigh nothing, the whole fit may not)."""
        if float(state.statistics.weights.sum()) <= 0:
            raise ValueError("sample_weight is zero for every row: no row carries any weight")
        self.classes_ = state.labels
        self.n_features_in_ = state.statistics.n_features
        self.statistics_ = state.statistics
        self.component_class_ = np.arange(len(self.classes_))
        self.kernel_sample_ = kernel_rows(sample) if self._keeps_rows() else None
        # Small dense algebra and fold models: single-threaded torch, independent tasks on Python threads
        # (one on a GPU, where threads only contend to queue its kernels: 1.7 times faster measured on an H100).
        workers = 1 if self.statistics_.device.type == "cuda" else torch.get_num_threads()
        with one_torch_thread():
            if self._uses_held_out_working_point() and sample.rows is not None and not self._keeps_rows():
                self._place_working_point(sample, workers, refresh=True)  # the model's heads beside the fold models'
            else:
                self._refresh()
                self._place_working_point(sample, workers)
        return self

    def _place_working_point(self, sample: RowSample, workers: int | None = None, refresh: bool = False) -> None:
        """Threshold at the working point; ``refresh``: the heads are built here too (``_refresh``), as one more task."""
        self.threshold_, self.held_out_scores_ = None, None
        if self.target_tpr is not None and self.working_point == "gaussian":
            self.threshold_ = self._gaussian_threshold()
        elif self.target_tpr is not None and self._keeps_rows():
            self._place_kernel_working_point()
        elif self.target_tpr is not None:
            represented = float(self.statistics_.weights.sum())
            self.held_out_scores_ = self._cross_fitted_scores(sample, represented, workers, refresh)
            self.threshold_ = self.held_out_scores_.threshold(self.target_tpr)

    def _fit_from_rows(self, X, y, sample_weight):
        """The fits that revisit rows: mixtures (EM) and robust trimming."""
        self._name_features(column_names(X))
        X, _ = as_features(X, name=type(self).__name__, device=self.device)
        labels = self._labels_or_one_class(y, X.shape[0])
        self.kernel_sample_ = None  # set once the rows to keep are known (after trimming)
        self.classes_ = np.unique(labels)
        self.n_features_in_ = X.shape[1]
        class_index = self._class_index(labels, X.device)
        weights = as_weights(sample_weight, X.shape[0], X.device)
        if self._is_mixture():
            if weights is not None:
                raise ValueError("sample_weight is not supported with components != 1 (mixtures are fitted by EM)")
            self.statistics_, self.component_class_ = self._fit_components(X, class_index, np.arange(len(self.classes_)))
        else:
            self.statistics_ = LabelledStatistics.from_rows(X, labels, weights).sorted().statistics
            self.component_class_ = np.arange(len(self.classes_))
        self._refresh()
        if self.contamination:
            kept = self._trim(X, class_index, weights)
            X, labels = X[kept], labels[kept.cpu().numpy()]
            weights = None if weights is None else weights[kept]
        sample = RowSample(WORKING_POINT_ROWS)
        if self._needs_row_sample():
            sample = sample.offer(X, labels, weights, self._rng().random(X.shape[0]))
        if self._keeps_rows():  # the heads were built above; only the kernel density waited for the kept rows
            self.kernel_sample_ = kernel_rows(sample)
            self.kernel_density_ = self._kernel_density()
        self._place_working_point(sample)
        return self

    @_one_update_at_a_time
    def partial_fit(self, X, y=None, sample_weight=None, classes=None):
        """Add rows of known or new classes; the statistics equal a fit on all rows seen.

        ``classes`` is accepted for scikit-learn compatibility; labels are
        discovered from ``y`` as they come.
        """
        if not hasattr(self, "statistics_"):
            return self.fit(X, y, sample_weight)
        self._check_fitted()
        X, _ = as_features(self._named(X), n_features=self.n_features_in_, name=type(self).__name__, device=self.statistics_.device)
        labels = self._labels_or_one_class(y, X.shape[0])
        self._check_label_type(labels)
        weights = as_weights(sample_weight, X.shape[0], X.device, part_of_more=True)
        if self._is_mixture() and weights is not None:
            raise ValueError("sample_weight is not supported with components != 1 (mixtures are fitted by EM)")
        with self._updating() as model:
            model._partial_fit(X, labels, weights)
        return self

    def _partial_fit(self, X: Tensor, labels: np.ndarray, weights: Tensor | None) -> None:
        score_before = self.score_
        # Draws of this update: seeded by the weight fitted before it, so an update's rows do not get the
        # priorities the first fit's rows got (the row samples would keep the same positions of each batch).
        rng = self._rng(int(np.float64(self.statistics_.weights.sum()).view(np.int64)) & (2**63 - 1))
        new = np.setdiff1d(np.unique(labels), self.classes_)
        if new.size:
            merged = np.concatenate([self.classes_, new])
            order = np.argsort(merged, kind="stable")
            rank = np.argsort(order)  # old class index -> new class index
            self.classes_ = merged[order]
            if self._is_mixture():
                self.component_class_ = rank[self.component_class_]
            else:
                self.statistics_ = self.statistics_.padded(merged.size).select(order.tolist())
                self.component_class_ = np.arange(merged.size)
            if self.held_out_scores_ is not None:
                self.held_out_scores_ = self.held_out_scores_.remapped(rank[: order.size - new.size])
        class_index = self._class_index(labels, X.device)
        if self._is_mixture():
            self._partial_fit_components(X, class_index, new)
        else:
            self.statistics_ = self.statistics_.merge(self._accumulate(X, class_index, weights))
        if self._keeps_rows():
            fresh = RowSample(KEPT_ROWS).offer(X, labels, weights, rng.random(X.shape[0]))
            self.kernel_sample_ = kernel_rows(self.kernel_sample_.merge(fresh))
        self._refresh()
        if self.target_tpr is not None and self.working_point == "gaussian":
            self.threshold_ = self._gaussian_threshold()
        elif self.target_tpr is not None and self._keeps_rows():
            self._place_kernel_working_point()
        elif self.target_tpr is not None and not self._score_changed(score_before):  # else: scores dropped
            sample = RowSample(WORKING_POINT_ROWS).offer(X, labels, weights, rng.random(X.shape[0]))
            represented = float(X.shape[0]) if weights is None else float(weights.sum())
            fresh = self._cross_fitted_scores(sample, represented)
            old = self.held_out_scores_
            self.held_out_scores_ = fresh if old is None else old.combined(fresh, WORKING_POINT_ROWS, rng)
            self.threshold_ = self.held_out_scores_.threshold(self.target_tpr)

    @_one_update_at_a_time
    def forget(self, labels):
        """Drop whole classes exactly: the model equals a fit without their rows."""
        self._check_fitted()
        labels = np.atleast_1d(np.asarray(labels))
        missing = [label for label in labels.tolist() if label not in set(self.classes_.tolist())]
        if missing:
            raise ValueError(f"cannot forget unknown class(es) {missing!r}; known classes: {self.classes_.tolist()[:20]!r}")
        keep = ~np.isin(self.classes_, labels)
        if not keep.any():
            raise ValueError("cannot forget every class: at least one class must remain")
        if self.contamination:
            raise ValueError(
                "forget needs contamination=0: the trimmed fit chose the rows it dropped under a covariance "
                "pooled over every class, so a trimmed refit without these classes would keep other rows; "
                "refit on the remaining classes' rows instead"
            )
        present = self._class_weights(self.statistics_).cpu().numpy() > 0
        score_functions.resolve_score(self.score, int((present & keep).sum()))  # refuses what a fit on them would
        if self._keeps_rows() and np.isin(self.kernel_sample_.labels, labels).all():
            raise ValueError(
                "score='kernel_density': no sampled row of the remaining classes is left to estimate their "
                "density from; refit on their rows"
            )
        with self._updating() as model:
            model._keep_classes(keep)
        return self

    @_one_update_at_a_time
    def unlearn(self, X, y=None, sample_weight=None):
        """Remove rows that were fitted (deletion requests); equals a fit without them.

        A class left with no rows is dropped. The working point keeps its
        held-out scores (rows are not stored to re-score); call
        ``set_working_point`` on fresh rows after large deletions.
        """
        self._check_fitted()
        if self._keeps_rows():
            raise ValueError(
                "unlearn is exact only for scores derived from statistics: score='kernel_density' keeps a "
                "sample of rows, and a refit might have sampled others; refit without the rows instead"
            )
        if self._is_mixture():
            raise ValueError(
                "unlearn needs components=1: which mixture component a row fed cannot be undone "
                "without the rows the mixture was fitted on (forget a whole class instead)"
            )
        if self.contamination:
            raise ValueError(
                "unlearn needs contamination=0: the trimmed fit dropped rows it never counted, and which "
                "rows a refit would drop depends on those removed; refit without the rows instead"
            )
        X, _ = as_features(self._named(X), n_features=self.n_features_in_, name=type(self).__name__, device=self.statistics_.device)
        labels = self._labels_or_one_class(y, X.shape[0])
        self._check_label_type(labels)
        unknown = np.setdiff1d(np.unique(labels), self.classes_)
        if unknown.size:
            raise ValueError(f"cannot unlearn rows of class(es) never fitted: {unknown.tolist()[:10]!r}")
        weights = as_weights(sample_weight, X.shape[0], X.device)
        removed = self._accumulate(X, self._class_index(labels, X.device), weights)
        remaining = self.statistics_.subtract(removed)
        present = (self._class_weights(remaining) > 0).cpu().numpy()
        # Only classes this call empties are dropped: a class fitted with zero weight stays, as a refit keeps it.
        keep = present | ~(self._class_weights(self.statistics_) > 0).cpu().numpy()
        # Checked before anything changes: a refused unlearn leaves the model as it was.
        if not present.any():
            raise ValueError("unlearning these rows would leave no data: every class would be empty")
        score_functions.resolve_score(self.score, int(present.sum()))  # refuses what a fit on what remains would
        with self._updating() as model:
            model.statistics_ = remaining
            model._keep_classes(keep)
        return self

    def discover(self, X, n_new="auto", adopt=False, names=None, representatives=5, settings=None):
        """Find new classes among unlabelled rows ``X`` (known and new classes mixed).

        Returns a :class:`openworld.discovery.Discovery`: per row a known label or
        a new cluster's name, and per new cluster its size, center and the
        ``representatives`` rows nearest it (to name it). ``n_new``: ``"auto"``
        estimates the number of new classes, an int fixes it. ``adopt=True``
        adds the new clusters as classes (see :meth:`adopt`). ``settings`` (an
        :class:`openworld.discovery.Settings`) fixes the method's settings; by
        default they are picked on ``X`` by rediscovering classes hidden from a
        copy of the model (``result.settings`` says which; :mod:`openworld.discovery`).
        """
        from openworld.discovery import discover

        model = self._published()
        model._check_fitted()
        X, _ = as_features(model._named(X), n_features=model.n_features_in_, name=type(self).__name__,
                           device=model.statistics_.device)
        result = discover(model, X, n_new, settings=settings, representatives=representatives,
                          random_state=model.random_state)
        if adopt:
            self.adopt(result, names)
        return result

    @_one_update_at_a_time
    def adopt(self, discovery, names=None):
        """Add a discovery's new clusters as classes, from the rows assigned to them.

        Goes through :meth:`partial_fit`, so the statistics equal those of a fit
        with those rows labelled from the start, and the working point is placed
        as :meth:`partial_fit` places it (dropped, with a warning, when
        ``score="auto"`` changes meaning: a one-class model given new classes;
        :meth:`set_working_point` places it again); rows assigned to known classes are not absorbed
        (their labels are guesses). ``names``: a list (in ``discovery.clusters``
        order) or a dict from cluster name to class name, each name once (two
        clusters are not merged into one class); by default the
        clusters' own names (``"new-0"``, … or, for integer classes, the next
        integers). With mixtures, adding classes is the online EM of
        :meth:`partial_fit`, not a refit.
        """
        if not discovery.clusters:
            return self
        if discovery.rows is None:
            raise ValueError("this discovery was adopted already (adopt keeps none of its rows): discover again to "
                             "adopt its clusters into another model")
        old = discovery.names
        if names is None:
            mapping = dict(zip(old, old))
        elif isinstance(names, dict):
            unknown = [key for key in names if key not in old]
            if unknown:
                raise ValueError(f"names has keys {unknown[:10]!r} that are not new clusters of this discovery "
                                 f"({old[:10]!r})")
            mapping = {name: names.get(name, name) for name in old}
        elif isinstance(names, (str, bytes)):
            raise ValueError(f"names must be a list (one name per new cluster) or a dict, not the string {names!r}")
        else:
            names = list(names)
            if len(names) != len(old):
                raise ValueError(f"names has {len(names)} entries for {len(old)} new clusters")
            mapping = dict(zip(old, names))
        repeated = sorted(str(name) for name, count in Counter(mapping.values()).items() if count > 1)
        if repeated:
            raise ValueError(f"names gives {repeated[:10]!r} to more than one new cluster: each cluster becomes its "
                             "own class (adopt them under distinct names, or merge their rows and partial_fit)")
        chosen = [mapping[label] for label in discovery.labels[discovery.is_new].tolist()]
        labels = as_labels(np.array(chosen, dtype=object), len(chosen))
        self._check_label_type(labels)
        clash = np.unique(labels[np.isin(labels, self.classes_)])
        if clash.size:
            raise ValueError(f"new class names {clash.tolist()!r} are already classes of the model")
        self.partial_fit(discovery.rows, labels)
        discovery.rows = None
        return self

    @_one_update_at_a_time
    def set_working_point(self, X_val, target_tpr=None, sample_weight=None):
        """Place the threshold on held-out in-distribution rows ``X_val: (m, d)``.

        The threshold keeps ``target_tpr`` (or the estimator's) of rows like
        ``X_val``, each counted by its ``sample_weight`` (m,); this replaces the
        cross-fitted default.
        """
        self._check_fitted()
        target = self.target_tpr if target_tpr is None else target_tpr
        validate_target_tpr(target)
        if target is None:
            raise ValueError("set a target_tpr (the share of in-distribution rows to keep) first")
        X, _ = as_features(self._named(X_val), n_features=self.n_features_in_, name=type(self).__name__)
        weights = as_weights(sample_weight, X.shape[0], X.device)
        if weights is not None:  # rows of zero weight are not data
            positive = weights > 0
            X, weights = X[positive], weights[positive]
        with self._updating() as model:
            scores, log_joint = model._evaluate(X, want_log_joint=True)
            model.target_tpr = target
            model.held_out_scores_ = HeldOutScores(
                scores.double().cpu().numpy(), log_joint.argmax(1).cpu().numpy(), float(model.statistics_.weights.sum()),
                np.ones(X.shape[0]) if weights is None else weights.cpu().numpy(),
            )
            model.threshold_ = model.held_out_scores_.threshold(target)
        return self

    # ------------------------------------------------------------------ scoring

    @_on_one_version
    def decision_function(self, X):
        """(n, C) log joint densities ``log π_k + log N(x; μ_k, Σ_k)``; argmax is the class."""
        X, kind = self._features(X)
        _, log_joint = self._evaluate(X, want_log_joint=True, want_scores=False)
        return to_output(log_joint, kind)

    @_on_one_version
    def predict_proba(self, X):
        """(n, C) posteriors over the known classes, columns in ``classes_`` order."""
        X, kind = self._features(X)
        return to_output(torch.softmax(self._posterior_logits(X), dim=1), kind)

    @_on_one_version
    def predict_proba_and_score(self, X):
        """``predict_proba(X)`` and ``score_samples(X)`` in one pass over the rows (what a service
        answers per request): with a tied covariance the posteriors' product is shared."""
        X, kind = self._features(X)
        scores, logits = self._evaluate(X, want_log_joint=False, want_logits=True)
        return to_output(torch.softmax(logits, dim=1), kind), to_output(scores, kind)

    @_on_one_version
    def predict_log_proba(self, X):
        """(n, C) log posteriors (stable log-sum-exp)."""
        X, kind = self._features(X)
        return to_output(torch.log_softmax(self._posterior_logits(X), dim=1), kind)

    @_on_one_version
    def score_samples(self, X):
        """(n,) OOD score of ``self.score``; higher = more in-distribution."""
        X, kind = self._features(X)
        scores, _ = self._evaluate(X, want_log_joint=False)
        return to_output(scores, kind)

    @_on_one_version
    def predict(self, X):
        """(n,) labels (NumPy); ``unknown_label`` where the score falls below the working point."""
        X, _ = self._features(X)
        scores, best = self._evaluate(X, want_log_joint=False, want_argmax=True)
        best = best.cpu().numpy()
        labels = self.classes_[best]
        if self.threshold_ is None or self.target_tpr is None:
            return labels
        rejected = (scores < self.threshold_).cpu().numpy()
        if not rejected.any():
            return labels
        unknown = self.unknown_label.item() if isinstance(self.unknown_label, np.generic) else self.unknown_label
        # The label array keeps its dtype only for a label of its own kind that it holds exactly: True would
        # become class 1, and an int beyond int64 overflow.
        same_kind = (isinstance(unknown, str) and labels.dtype.kind == "U") or (
            type(unknown) is int and labels.dtype.kind == "i" and -(2**63) <= unknown < 2**63
        )
        out = labels.copy() if same_kind else labels.astype(object)
        if out.dtype.kind == "U":
            out = out.astype(f"<U{max(out.dtype.itemsize // 4, len(unknown))}")
        out[rejected] = unknown
        return out

    # ------------------------------------------------------------------ persistence

    @_on_one_version
    def save(self, path) -> None:
        """Write the model as one safetensors file with a JSON manifest (atomic; never pickle)."""
        self._check_fitted()
        tensors = {f"statistics.{k}": v for k, v in self.statistics_.as_dict().items()}
        tensors["component_class"] = torch.from_numpy(self.component_class_.astype(np.int64))
        held_out = None
        if self.held_out_scores_ is not None:
            tensors["held_out.values"] = torch.from_numpy(self.held_out_scores_.values)
            tensors["held_out.class_index"] = torch.from_numpy(self.held_out_scores_.class_index.astype(np.int64))
            tensors["held_out.weights"] = torch.from_numpy(self.held_out_scores_.weights.astype(np.float64))
            held_out = self.held_out_scores_.represents
        if self.kernel_sample_ is not None:
            sample = self.kernel_sample_
            tensors["kernel_sample.rows"] = sample.rows.cpu()
            tensors["kernel_sample.weights"] = sample.weights.cpu()
            tensors["kernel_sample.priorities"] = torch.from_numpy(np.asarray(sample.priorities, dtype=np.float64))
            tensors["kernel_sample.class_index"] = torch.from_numpy(np.searchsorted(self.classes_, sample.labels).astype(np.int64))
            tensors["kernel_sample.bandwidth"] = torch.tensor([self.kernel_density_.bandwidth], dtype=torch.float64)
            tensors["kernel_sample.limit"] = torch.tensor([sample.limit], dtype=torch.float64)
        params = self.get_params()
        params["priors"] = params["priors"] if isinstance(params["priors"], str) else np.asarray(params["priors"]).tolist()
        params["device"] = None if params["device"] is None else str(params["device"])
        for name, value in params.items():  # NumPy scalars (np.int64(3)) are written as the Python numbers they are
            if isinstance(value, np.generic):
                params[name] = value.item()
        if not isinstance(params["random_state"], (Integral, type(None))):
            params["random_state"] = None
        manifest = {
            "openworld_version": _package_version(),
            "params": params,
            "classes": self.classes_.tolist(),
            "label_kind": "str" if self.classes_.dtype.kind == "U" else "int",
            "n_features_in": self.n_features_in_,
            "threshold": self.threshold_,
            "held_out_represents": held_out,
            "embedding_model": getattr(self, "embedding_model_", None),
            "feature_columns": getattr(self, "feature_columns_", None),
            "feature_names_in": getattr(self, "feature_names_in_", np.array([])).tolist() or None,
        }
        write_model_file(path, tensors, manifest)

    @classmethod
    def load(cls, path, device=AS_SAVED) -> OpenWorld:
        """Read a model written by :meth:`save`; a damaged or foreign file is a clear error.

        ``device`` replaces the saved ``device`` parameter (a model fitted with
        ``device="cuda"`` loads on a machine without one with ``device=None``).
        """
        tensors, manifest = read_model_file(path)
        try:
            model = cls(**manifest["params"])
            if device is not AS_SAVED:
                model.set_params(device=device)
            model._validate_params()
            classes = manifest["classes"]
            model.classes_ = np.array(classes, dtype=str if manifest["label_kind"] == "str" else np.int64)
            model.n_features_in_ = int(manifest["n_features_in"])
            model.statistics_ = ClassStatistics(
                **{f: tensors[f"statistics.{f}"] for f in ClassStatistics.__dataclass_fields__}
            )
            model.component_class_ = tensors["component_class"].numpy()
            if (
                model.statistics_.means.shape != (model.component_class_.size, model.n_features_in_)
                or set(model.component_class_.tolist()) != set(range(len(classes)))
            ):
                raise ValueError("statistics do not match the classes and features in the manifest")
            model.threshold_ = manifest["threshold"]
            model.embedding_model_ = manifest["embedding_model"]
            model.feature_columns_ = manifest.get("feature_columns")  # files written before it was saved lack it
            model._name_features(manifest.get("feature_names_in"))
            model.held_out_scores_ = None
            model.kernel_sample_, bandwidth = None, None
            if "kernel_sample.rows" in tensors:
                class_index, rows = tensors["kernel_sample.class_index"].numpy(), tensors["kernel_sample.rows"]
                if rows.ndim != 2 or rows.shape[1] != model.n_features_in_ or not (
                    (class_index >= 0) & (class_index < len(classes))
                ).all():
                    raise ValueError("the kernel density's row sample does not match the classes and features")
                model.kernel_sample_ = RowSample(
                    KEPT_ROWS, rows, model.classes_[class_index], tensors["kernel_sample.weights"],
                    tensors["kernel_sample.priorities"].numpy(), float(tensors["kernel_sample.limit"][0]),
                )
                bandwidth = float(tensors["kernel_sample.bandwidth"][0])
            if model._keeps_rows() != (model.kernel_sample_ is not None):
                raise ValueError("score='kernel_density' needs its row sample, and only it keeps one")
            if manifest["held_out_represents"] is not None:
                values = tensors["held_out.values"].numpy()
                model.held_out_scores_ = HeldOutScores(
                    values,
                    tensors["held_out.class_index"].numpy(),
                    float(manifest["held_out_represents"]),
                    # files from before weighted scores: every score counted once, as they were then
                    tensors["held_out.weights"].numpy() if "held_out.weights" in tensors else np.ones(values.size),
                )
                if not values.size == model.held_out_scores_.class_index.size == model.held_out_scores_.weights.size:
                    raise ValueError("the held-out scores, their classes and their weights differ in length")
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{str(path)!r} has an incomplete or inconsistent manifest: {error}") from None
        model._refresh(kernel_bandwidth=bandwidth)  # the saved bandwidth: scores match the saved threshold
        return model

    # ------------------------------------------------------------------ internals

    def _validate_params(self) -> None:
        validate_structure(self.covariance)
        validate_shrinkage(self.shrinkage)
        validate_target_tpr(self.target_tpr)
        if self.score != "auto" and self.score not in score_functions.SCORES:
            score_functions.resolve_score(self.score, 2)
        validate_components(self.components)
        if isinstance(self.contamination, bool) or not isinstance(self.contamination, (int, float)) or not (
            0.0 <= self.contamination < 0.5
        ):
            raise ValueError(f"contamination must be a float in [0, 0.5), got {self.contamination!r}")
        if self.score == "kernel_density" and self._is_mixture():
            raise ValueError("score='kernel_density' needs components=1 (the kernel density is a mixture already)")
        if self.contamination and self._is_mixture():
            raise ValueError("contamination (robust trimming) needs components=1")
        if self.working_point not in ("held_out", "gaussian"):
            raise ValueError(f"working_point must be 'held_out' or 'gaussian', got {self.working_point!r}")
        if self.working_point == "gaussian" and (
            self._shrinks() or self.score not in ("auto", "mahalanobis") or self._is_mixture()
            or self.covariance == "diag" or self.contamination
        ):
            raise ValueError(
                "working_point='gaussian' is exact only for the Mahalanobis score of one Gaussian fitted on every "
                "row (shrinkage=None, score='mahalanobis' or 'auto', components=1, covariance 'tied' or 'full', "
                "contamination=0): its threshold is the distribution of that distance; use the held-out default "
                f"otherwise (got shrinkage={self.shrinkage!r}, score={self.score!r}, components={self.components!r}, "
                f"covariance={self.covariance!r}, contamination={self.contamination!r})"
            )
        if isinstance(self.dropped_variance, bool) or not isinstance(self.dropped_variance, (int, float)) or not (
            0.0 <= self.dropped_variance < 1.0
        ):
            raise ValueError(f"dropped_variance must be a float in [0, 1), got {self.dropped_variance!r}")
        if self.calibration is not None:
            raise ValueError(f"calibration={self.calibration!r}: post-hoc calibration is not available in this release")
        if isinstance(self.priors, str) and self.priors not in ("uniform", "empirical"):
            raise ValueError(f"priors must be 'uniform', 'empirical' or an array of class priors, got {self.priors!r}")
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:<n>', got {self.device!r}") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(
                    f"device={self.device!r} but no CUDA device is available here; use device=None (compute "
                    "where the input lives) or 'cpu' (OpenWorld.load(path, device=None) for a saved model)"
                )

    def _check_fitted(self) -> None:
        if not hasattr(self, "statistics_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first.")
        if self._keeps_rows() != (self.kernel_sample_ is not None):
            raise ValueError(
                "score was switched to or from 'kernel_density' after fitting: only a kernel density keeps rows, "
                "so refit with the new score"
            )

    def _features(self, X) -> tuple[Tensor, InputKind]:
        self._check_fitted()
        return as_features(self._named(X), n_features=self.n_features_in_, name=type(self).__name__, device=self.device)

    def _labels_or_one_class(self, y, n_rows: int) -> np.ndarray:
        if y is None:
            return np.full(n_rows, ONE_CLASS_LABEL)
        return as_labels(y, n_rows)

    def _check_label_type(self, labels: np.ndarray) -> None:
        if (labels.dtype.kind == "U") != (self.classes_.dtype.kind == "U"):
            raise ValueError(
                f"labels are {labels.dtype} but the model was fitted with {self.classes_.dtype} labels; "
                "use one label type (str or int) throughout"
            )

    def _class_index(self, labels: np.ndarray, device) -> Tensor:
        return torch.as_tensor(np.searchsorted(self.classes_, labels), device=device)

    def _rng(self, *salt: int) -> np.random.Generator:
        """The generator of ``random_state``; ``salt`` (ints) gives each update its own draws from the same seed."""
        seed = self.random_state
        if isinstance(seed, np.random.RandomState):
            seed = seed.randint(2**31)
        return np.random.default_rng(None if seed is None else [int(seed), *salt])

    def _accumulate(self, X: Tensor, class_index: Tensor, weights: Tensor | None) -> ClassStatistics:
        """Statistics of rows whose classes are known, aligned with ``classes_``."""
        return ClassStatistics.from_rows(X, class_index, len(self.classes_), weights)

    def _is_mixture(self) -> bool:
        return self.components != 1

    def _class_weights(self, stats: ClassStatistics) -> Tensor:
        """(C,) total weight of each class: the sum over its components."""
        index = torch.as_tensor(self.component_class_, device=stats.device)
        return torch.zeros(len(self.classes_), dtype=stats.weights.dtype, device=stats.device).index_add(
            0, index, stats.weights
        )

    def _component_log_priors(self, stats: ClassStatistics) -> Tensor:
        """(M,) log π_class + log(W_m / W_class): class prior times mixture weight."""
        class_weights = self._class_weights(stats)
        index = torch.as_tensor(self.component_class_, device=stats.device)
        within = torch.log(stats.weights / torch.clamp(class_weights[index], min=torch.finfo(stats.weights.dtype).tiny))
        return self._log_priors(class_weights)[index] + within

    def _log_priors(self, weights: Tensor) -> Tensor:
        present = weights > 0
        if isinstance(self.priors, str) and self.priors == "uniform":
            priors = present.to(weights.dtype)
        elif isinstance(self.priors, str):
            priors = weights.clone()
        else:
            priors = torch.as_tensor(np.asarray(self.priors, dtype=np.float64), device=weights.device)
            if priors.shape != weights.shape or bool((priors < 0).any()) or not bool(torch.isfinite(priors).all()):
                raise ValueError(
                    f"priors must be {weights.shape[0]} non-negative numbers, one per class in classes_ order"
                )
            priors = torch.where(present, priors, torch.zeros_like(priors))
        if float(priors.sum()) <= 0:
            raise ValueError("priors give zero probability to every class with data")
        return torch.log(priors / priors.sum())

    def _heads(self, stats) -> tuple[GaussianHead, GaussianHead | TiedRelativeScorer | RelativeEnsemble | None]:
        """Class head, and the second head a score may need, from statistics.

        The second head is the background Gaussian (relative Mahalanobis; for a
        tied covariance its difference from the class precision, which scores
        without whitening), the low-variance principal subspace of the pooled covariance
        (low-variance Mahalanobis), every structure's head and background
        (covariance ensemble); None for the other scores.
        """
        head, estimate = self._class_head(stats, self.covariance)
        background = None
        if self.score_ == "relative_mahalanobis":
            background = self._background(stats, head, estimate)
        elif self.score_ == "covariance_ensemble":
            members = []
            for structure in score_functions.ENSEMBLE_STRUCTURES:
                member, member_estimate = (
                    (head, estimate) if structure == self.covariance else self._class_head(stats, structure)
                )
                members.append((member, self._background(stats, member, member_estimate)))
            background = RelativeEnsemble(tuple(members))
        elif self.score_ == "low_variance_mahalanobis":
            background = GaussianHead.build_subspace(
                stats.means, low_variance_basis(estimate.pooled, self.dropped_variance), head.log_priors, head.center
            )
        return head, background

    def _class_head(self, stats, structure: str) -> tuple[GaussianHead, CovarianceEstimate]:
        """The Gaussian head of ``structure`` over the classes (or components) of ``stats``, and its covariances."""
        estimate = estimate_covariance(stats, structure, self.shrinkage)
        center = (stats.weights @ stats.means) / stats.weights.sum()
        names = self.classes_[self.component_class_].tolist()
        head = GaussianHead.build(
            stats.means, estimate, self._component_log_priors(stats), center, self._shrinks(), names
        )
        return head, estimate

    def _background(self, stats, head: GaussianHead, estimate: CovarianceEstimate) -> GaussianHead | TiedRelativeScorer:
        """Relative Mahalanobis's background Gaussian of all rows, in the head's structure's family."""
        if head.structure == "tied":
            return TiedRelativeScorer.build(head, stats.weights)
        mean, cov = background_covariance(stats, estimate.pooled)
        # The background takes the structure's family: diagonal for diag, a full matrix otherwise.
        bg_estimate = (
            CovarianceEstimate("diag", torch.diagonal(cov)[None], cov, torch.zeros(1, dtype=cov.dtype))
            if head.structure == "diag"
            else CovarianceEstimate("tied", cov, cov, torch.zeros(1, dtype=cov.dtype))
        )
        zero_log_prior = torch.zeros(1, dtype=cov.dtype, device=cov.device)
        return GaussianHead.build(mean[None], bg_estimate, zero_log_prior, head.center, self._shrinks())

    def _refresh(self, kernel_bandwidth: float | None = None) -> None:
        """Re-derive everything from the statistics (after fit, partial_fit, forget, unlearn, load);
        the kernel density from its row sample, with ``kernel_bandwidth`` or one chosen afresh."""
        overflowed = [name for name, value in self.statistics_.as_dict().items() if not bool(torch.isfinite(value).all())]
        if overflowed:
            raise ValueError(
                f"the rows' moments ({', '.join(overflowed)}) overflow: the features are too large for their "
                "dtype (float32 holds squares up to ~3e38); pass float64 rows, or rescale the features"
            )
        n_present = int((self._class_weights(self.statistics_) > 0).sum())
        self.score_ = score_functions.resolve_score(self.score, n_present)
        if self.score == "auto" and n_present == 1 and self._is_mixture():
            # One class of several components: the distance to the nearest component ignores
            # their weights and spreads; the mixture density is the model that was fitted.
            self.score_ = "likelihood"
        self.head_, self.score_head_ = self._heads(self.statistics_)
        self.kernel_density_ = None if self.kernel_sample_ is None else self._kernel_density(kernel_bandwidth)
        # Heads cast to other dtypes/devices, built on first use. Concurrent scorers may
        # both build one; the results are identical, so no lock is needed. A new dict per
        # version: a scorer still on the former version caches into the former one.
        self._device_heads = {}

    def _shrinks(self) -> bool:
        """Shrinkage of intensity 0 is none: a singular covariance is then an error, not a silent ridge."""
        return self.shrinkage is not None and not (isinstance(self.shrinkage, (int, float)) and self.shrinkage == 0)

    @contextmanager
    def _updating(self):
        """Run an update on a copy of the model and publish it in one step.

        The update works on a shallow copy (its attributes are replaced, never
        changed in place), whose attributes then replace this model's in one
        assignment of ``__dict__``: scoring threads, which read one published
        version (:meth:`_published`), see the old model or the new one, never a
        mix, and an update that fails leaves the model as it was. Updates of one
        model run one at a time (none is lost).
        """
        with self._update_lock():
            model = self._published(copy=True)
            yield model
            self.__dict__ = model.__dict__

    def _update_lock(self) -> threading.RLock:
        """This model's update lock (made on first use; copies of the model make their own)."""
        return self.__dict__.setdefault("_lock", threading.RLock())

    def _published(self, copy: bool = False) -> OpenWorld:
        """The model as last published: a view of its attributes' dict, which no update writes into (an
        update builds a new dict and swaps it in); ``copy``: a copy of that dict, for an update to build on."""
        view = object.__new__(type(self))
        view.__dict__ = dict(self.__dict__) if copy else self.__dict__
        return view

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_lock", None)  # a lock cannot be copied or pickled; the copy makes its own
        return state

    def _score_changed(self, score_before: str) -> bool:
        """Whether the resolved score changed in an update (``score="auto"``: one class ↔ several). Held-out
        scores of the former score say nothing about the new one: they are dropped, with a warning."""
        if self.score_ == score_before:
            return False
        if self.held_out_scores_ is not None and self.target_tpr is not None:
            warnings.warn(
                f"the model now has {len(self.classes_)} class(es), so score='auto' now means {self.score_!r}, "
                f"not {score_before!r}; the working point was placed on the former score and no longer holds. "
                "Nothing is rejected until set_working_point(X_val) places it on held-out rows.",
                UserWarning,
                stacklevel=4,
            )
        self.held_out_scores_, self.threshold_ = None, None
        return True

    def _keep_classes(self, keep: np.ndarray) -> None:
        index = np.flatnonzero(keep)
        new_index = np.full(keep.size, -1)
        new_index[index] = np.arange(index.size)
        components = np.flatnonzero(keep[self.component_class_])
        self.statistics_ = self.statistics_.select(components.tolist())
        self.component_class_ = new_index[self.component_class_[components]]
        if self._keeps_rows():
            self.kernel_sample_ = self.kernel_sample_.subset(np.flatnonzero(np.isin(self.kernel_sample_.labels, self.classes_[index])))
        self.classes_ = self.classes_[index]
        score_before = self.score_
        self._refresh()
        if self.target_tpr is not None and self.working_point == "gaussian":
            self.threshold_ = self._gaussian_threshold()
        elif self._keeps_rows():
            if self.target_tpr is not None:
                self._place_kernel_working_point()
        elif not self._score_changed(score_before) and self.held_out_scores_ is not None:  # else: dropped
            self.held_out_scores_ = self.held_out_scores_.remapped(new_index)
            if self.held_out_scores_.values.size == 0:
                self.held_out_scores_, self.threshold_ = None, None
            elif self.target_tpr is not None:
                self.threshold_ = self.held_out_scores_.threshold(self.target_tpr)

    def _heads_for(self, dtype: torch.dtype, device) -> tuple[GaussianHead, GaussianHead | None]:
        key = (dtype, str(device))
        cached = self._device_heads.get(key)
        if cached is None:
            cached = (
                self.head_.to(dtype, device),
                None if self.score_head_ is None else self.score_head_.to(dtype, device),
            )
            self._device_heads[key] = cached
        return cached

    def _posterior_logits(self, X: Tensor) -> Tensor:
        """(n, C) log joints up to a per-row constant: all that posteriors need.

        A tied covariance makes them linear in x (one n×d×C product); other
        structures go through the distances.
        """
        head, _ = self._heads_for(X.dtype, X.device)
        if head.structure != "tied":
            return self._evaluate(X, want_log_joint=True, want_scores=False)[1]
        step = head.chunk_rows()
        with tf32_products(True, X.device):  # a tied head
            if not self._is_mixture():  # each chunk's product writes its rows of the result: no concatenation
                out = torch.empty(X.shape[0], head.n_classes, dtype=X.dtype, device=X.device)
                for start in range(0, X.shape[0], step):
                    head.tied_logits(X[start : start + step], out=out[start : start + step])
                return out
            owners = torch.as_tensor(self.component_class_)
            return torch.cat([
                segment_logsumexp(head.tied_logits(X[start : start + step]), owners, len(self.classes_))
                for start in range(0, X.shape[0], step)
            ])

    def _score_chunk(self, X: Tensor, distances: Tensor, log_joint: Tensor, second: GaussianHead | None) -> Tensor:
        """(n,) OOD scores of a chunk from its distances (n, M) and log joints (n, C)."""
        if self.score_ == "mahalanobis":
            return score_functions.mahalanobis(distances)
        if self.score_ == "kernel_density":
            return self.kernel_density_.log_density(X)
        if self.score_ == "relative_mahalanobis":
            return score_functions.relative_mahalanobis(distances, second.squared_mahalanobis(X)[:, 0])
        if self.score_ == "low_variance_mahalanobis":
            return score_functions.mahalanobis(second.squared_mahalanobis(X))
        if self.score_ == "covariance_ensemble":
            return second.scores(X, known=(self.covariance, distances))
        return score_functions.likelihood(log_joint)

    def _evaluate(
        self, X: Tensor, *, want_log_joint: bool, want_argmax: bool = False, want_logits: bool = False,
        want_scores: bool = True, heads=None,
    ):
        """OOD scores (n,) (None unless wanted) and either log joints (n, C), log joints up to a per-row
        constant (``want_logits``: all that posteriors need), argmax classes (n,) or None.

        Chunk by chunk, so n × C never has to fit in memory at once beyond the output.
        A tied head's float32 products on CUDA run in TF32 (:mod:`openworld.core.precision`):
        its scores never subtract two distances. Per-class and diagonal heads' relative
        scores do, and keep full float32.
        """
        head, second = heads if heads is not None else self._heads_for(X.dtype, X.device)
        # The ensemble's per-class and diagonal members subtract two distances: no TF32 for them either.
        # So does the kernel density's expanded distance ‖x‖² − 2x·r + ‖r‖².
        exact = isinstance(second, RelativeEnsemble) or self.score_ == "kernel_density"
        with tf32_products(head.structure == "tied" and not exact, X.device):
            scores, extra = self._evaluate_chunks(X, head, second, want_log_joint, want_argmax, want_logits, want_scores)
        _refuse_overflow(X, scores, extra)
        return scores, extra

    def _evaluate_chunks(self, X, head, second, want_log_joint, want_argmax, want_logits, want_scores):
        relative_tied = isinstance(second, TiedRelativeScorer)
        owners = torch.as_tensor(self.component_class_)
        mixture = self._is_mixture()
        step = min(head.chunk_rows(), second.chunk_rows()) if isinstance(second, RelativeEnsemble) else head.chunk_rows()
        scores, extra = [], []
        # Logits of a tied model without components go straight into their rows of the result.
        direct = relative_tied and want_logits and not want_log_joint and not mixture
        logits_out = torch.empty(X.shape[0], head.n_classes, dtype=X.dtype, device=X.device) if direct else None
        for start in range(0, X.shape[0], step):
            chunk = X[start : start + step]
            if relative_tied and not want_log_joint:  # scores, logits and the argmax need no distances
                chunk_scores, logits = second.scores(
                    chunk, head, with_logits=want_logits or want_argmax,
                    out=None if logits_out is None else logits_out[start : start + step],
                )
                if want_scores:
                    scores.append(chunk_scores)
                if logits is not None and mixture:
                    logits = segment_logsumexp(logits, owners, len(self.classes_))
                if want_argmax:
                    extra.append(logits.argmax(1))
                elif want_logits and not direct:
                    extra.append(logits)
                continue
            if isinstance(second, RelativeEnsemble) and not (want_log_joint or want_logits or want_argmax):
                scores.append(second.scores(chunk))  # scores alone: the class head's distances are the ensemble's
                continue
            distances = head.squared_mahalanobis(chunk)
            log_joint = head.log_likelihoods(distances) + head.log_priors
            if mixture:
                log_joint = segment_logsumexp(log_joint, owners, len(self.classes_))
            if want_scores:
                if relative_tied:
                    scores.append(second.scores(chunk, head)[0])
                else:
                    scores.append(self._score_chunk(chunk, distances, log_joint, second))
            if want_log_joint or want_logits:
                extra.append(log_joint)
            elif want_argmax:
                extra.append(log_joint.argmax(1))
        if direct:
            return (torch.cat(scores) if scores else None), logits_out
        return (torch.cat(scores) if scores else None), (torch.cat(extra) if extra else None)

    def _own_class_distances(self, X: Tensor, class_index: Tensor) -> Tensor:
        """(n,) squared Mahalanobis distance of each row to its own class, chunk by chunk."""
        head = self._heads_for(X.dtype, X.device)[0]
        out = []
        for start in range(0, X.shape[0], head.chunk_rows()):
            part = slice(start, start + head.chunk_rows())
            D = head.squared_mahalanobis(X[part])
            out.append(D.gather(1, class_index[part, None].to(D.device))[:, 0])
        return torch.cat(out)

    def _kernel_density(self, bandwidth: float | None = None) -> KernelDensity:
        """The kernel density of the row sample's first rows, features scaled by their spread in the statistics."""
        sample, stats = self.kernel_sample_.capped(KERNEL_DENSITY_ROWS), self.statistics_
        center, scale = feature_moments(stats.weights, stats.means, stats.scatters)
        return KernelDensity.build(sample.rows, sample.weights, center, scale, bandwidth)

    def _place_kernel_working_point(self) -> None:
        """Threshold from the scores of kept rows the density never saw: the calibration rows held out of it
        (exchangeable with unseen rows, so the conformal rate holds), joined by the density rows' leave-one-out
        scores while fewer than ``MIN_CALIBRATION_ROWS`` are held out."""
        density_rows = self.kernel_sample_.capped(KERNEL_DENSITY_ROWS)
        held_out = self.kernel_sample_.beyond(KERNEL_DENSITY_ROWS)
        parts = [(self.kernel_density_.log_density(held_out.rows), held_out)]  # kept samples are never empty
        if held_out.rows.shape[0] < MIN_CALIBRATION_ROWS:
            parts.append((self.kernel_density_.log_density(density_rows.rows, leave_one_out=True), density_rows))
        self.held_out_scores_ = HeldOutScores(
            np.concatenate([scores.double().cpu().numpy() for scores, _ in parts]),
            np.searchsorted(self.classes_, np.concatenate([rows.labels for _, rows in parts])),
            float(self.statistics_.weights.sum()),
            np.concatenate([rows.weights.cpu().numpy() for _, rows in parts]),
        )
        self.threshold_ = self.held_out_scores_.threshold(self.target_tpr)

    def _trim(self, X: Tensor, class_index: Tensor, weights: Tensor | None, steps: int = 5) -> Tensor:
        """Drop the ``contamination`` share of each class's farthest rows, refit, repeat; returns the kept mask.

        Each step removes the trimmed rows' statistics from the full fit's, so it
        costs one covariance build; it stops when the trimmed set stops changing.
        """
        everything = self.statistics_
        labels = class_index.cpu().numpy()
        carried = np.ones(X.shape[0], dtype=bool) if weights is None else (weights > 0).cpu().numpy()
        trimmed = np.zeros(X.shape[0], dtype=bool)
        for _ in range(steps):
            distances = self._own_class_distances(X, class_index).double().cpu().numpy()
            new = np.zeros_like(trimmed)
            for k in np.unique(labels):
                rows = np.flatnonzero((labels == k) & carried)  # rows of zero weight are not data: never trimmed
                n_trim = int(np.floor(self.contamination * rows.size))
                if n_trim and rows.size - n_trim >= 1:
                    new[rows[np.argsort(distances[rows])[rows.size - n_trim :]]] = True
            if np.array_equal(new, trimmed):
                break
            trimmed = new
            rows = torch.as_tensor(np.flatnonzero(trimmed), device=X.device)
            removed = ClassStatistics.from_rows(
                X[rows], class_index[rows], len(self.classes_), None if weights is None else weights[rows]
            )
            self.statistics_ = everything.subtract(removed)
            self._refresh()
        return torch.as_tensor(~trimmed, device=X.device)

    def _gaussian_threshold(self) -> float:
        """Score threshold from the distribution of a new row's distance under the fitted Gaussian."""
        from scipy.stats import f as f_distribution

        if len(self.classes_) != 1:
            raise ValueError("working_point='gaussian' needs a one-class model (fit(X) without labels)")
        n, d = float(self.statistics_.weights[0]), self.n_features_in_
        if n <= d + 1:
            raise ValueError(f"working_point='gaussian' needs more rows than features (n={n:.0f}, d={d})")
        quantile = (n + 1) * d / (n - d) * f_distribution.ppf(self.target_tpr, d, n - d)
        return -float(quantile)

    def _fit_components(self, X: Tensor, class_index: Tensor, classes: np.ndarray) -> tuple[ClassStatistics, np.ndarray]:
        """EM per class in ``classes`` on its rows: component statistics and the class of each component."""
        parts, owners = [], []
        seed = int(self._rng().integers(2**31))
        for k in classes.tolist():
            rows = (class_index == k).nonzero().flatten()
            stats = fit_class_components(X[rows], self.components, self.covariance, self.shrinkage, seed)
            parts.append(stats.to(X.device))
            owners.append(np.full(stats.n_classes, k))
        return ClassStatistics.concat(parts), np.concatenate(owners)

    def _responsibilities(self, X: Tensor, class_index: Tensor) -> Tensor:
        """(n, M) responsibilities of each row among the components of its own class (E-step)."""
        head = self.head_.to(torch.float64, X.device)
        joint = head.log_likelihoods(head.squared_mahalanobis(X.double())) + head.log_priors
        own = torch.as_tensor(self.component_class_, device=X.device)[None, :] == class_index[:, None]
        joint = torch.where(own, joint, torch.full_like(joint, -torch.inf))
        return torch.softmax(joint, dim=1)

    def _partial_fit_components(self, X: Tensor, class_index: Tensor, new_classes: np.ndarray) -> None:
        """One online-EM step for known classes; EM from scratch for classes new in this batch."""
        new_index = np.searchsorted(self.classes_, new_classes)
        is_new = torch.as_tensor(np.isin(class_index.cpu().numpy(), new_index), device=X.device)
        if bool((~is_new).any()):
            old = ~is_new
            self.statistics_ = self.statistics_.merge(
                ClassStatistics.from_responsibilities(X[old], self._responsibilities(X[old], class_index[old]))
            )
        if new_index.size:
            stats, owners = self._fit_components(X, class_index, new_index)
            self.statistics_ = ClassStatistics.concat([self.statistics_, stats])
            self.component_class_ = np.concatenate([self.component_class_, owners])

    def _cross_fitted_scores(
        self, sample: RowSample, represented: float, workers: int | None = None, refresh: bool = False
    ) -> HeldOutScores:
        """Held-out scores of the sampled rows, each from a model without its fold.

        The fold's statistics are subtracted from the model's, so every fold
        model is exact and costs one covariance build, not a refit.
        ``represented`` is the weight of all the rows the sample stands for.
        Fold models are built, and their rows scored, as tasks on ``workers``
        threads (default: torch's thread count); with ``refresh`` the model's
        own heads (``_refresh``) are built as one more task, before any fold
        model's (which read the resolved score).
        """
        if sample.rows is None:
            if refresh:
                self._refresh()
            return HeldOutScores(np.empty(0), np.empty(0, dtype=np.int64), represented, np.empty(0))
        X, weights = sample.rows, sample.weights
        class_index = self._class_index(sample.labels, X.device)
        C = len(self.classes_)
        # Rows in priority order: each fold is a slice (a view, no gather).
        folds = [s if isinstance(s, slice) else torch.as_tensor(s, device=X.device) for s in sample.fold_selections(WORKING_POINT_FOLDS)]
        parts = [(X[rows], class_index[rows], weights[rows]) for rows in folds]
        pieces = max(1, torch.get_num_threads() if workers is None else workers)  # scoring tasks per fold
        refreshed = threading.Event()
        scored = {}  # (fold, piece) -> (scores, class indices, weights)

        def refresh_task():
            try:
                self._refresh()
            finally:
                refreshed.set()
            return []

        def fold_model(f, remaining):
            """The fold model's heads, then its rows' scoring in a piece (a view) per thread."""
            if float(remaining.weights.sum()) <= 0:
                return []
            refreshed.wait()  # _heads reads the resolved score; the refresh task was taken first
            head, second = self._heads(remaining)
            heads = head.to(X.dtype, X.device), second and second.to(X.dtype, X.device)
            X_f, index_f, weights_f = parts[f]
            return [
                lambda i=i, rows=rows, index=index, w=w: scored.__setitem__(
                    (f, i), (self._evaluate(rows, want_log_joint=False, heads=heads)[0], index, w)
                )
                for i, (rows, index, w) in enumerate(
                    zip(X_f.tensor_split(pieces), index_f.tensor_split(pieces), weights_f.tensor_split(pieces))
                )
                if rows.shape[0]
            ]

        def removed_rows(f):
            refreshed.wait()  # a mixture's responsibilities read the model's heads
            X_f, index_f, weights_f = parts[f]
            if self._is_mixture():
                # Responsibilities under the final parameters are not those of EM's last E-step: over a fold they
                # can exceed a small component's whole weight (SpamBase, wine). A fold removes at most all but a
                # millionth of it; the component then falls back on the pooled covariance (shrinkage).
                responsibilities = self._responsibilities(X_f, index_f)
                room = self.statistics_.weights.to(responsibilities) * (1 - 1e-6)
                share = (room / responsibilities.sum(0).clamp_min(torch.finfo(room.dtype).tiny)).clamp(max=1.0)
                return self.statistics_.subtract(ClassStatistics.from_responsibilities(X_f, responsibilities * share))
            return self.statistics_.subtract(ClassStatistics.from_rows(X_f, index_f, C, weights_f))

        tasks = [refresh_task] if refresh else []
        if not refresh:
            refreshed.set()
        if self.covariance == "tied" and not self._is_mixture() and self.score != "covariance_ensemble":
            # A tied model needs only pooled statistics of each fold model: no (C, d, d) arithmetic per fold
            # (the ensemble's per-class and diagonal members need the classes' own scatters).
            tasks += self.statistics_.pooled_without_tasks(parts, lambda f, pooled: [lambda: fold_model(f, pooled)])
        else:
            tasks += [lambda f=f: fold_model(f, removed_rows(f)) for f in range(len(parts))]
        with one_torch_thread():  # the tasks' own operations stay single-threaded (already so within a fit)
            run_tasks(tasks, pieces)
        values = [scored[key] for key in sorted(scored)]
        if not values:
            return HeldOutScores(np.empty(0), np.empty(0, dtype=np.int64), represented, np.empty(0))
        return HeldOutScores(
            torch.cat([v for v, _, _ in values]).double().cpu().numpy(),
            torch.cat([index for _, index, _ in values]).cpu().numpy(),
            represented,
            torch.cat([w for _, _, w in values]).cpu().numpy(),
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
