"""Turning user input into validated tensors, and results back into the user's type.

NumPy, pandas, Arrow and lists are checked by scikit-learn's ``check_array``
(the messages its users know); torch tensors are checked in place, on their
device, so CUDA input never makes a round trip through host memory.
Results follow the input: NumPy in, NumPy out; torch in, torch out on the
same device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_array, column_or_1d

Tensor = torch.Tensor


@dataclass(frozen=True)
class InputKind:
    """Where the input came from, so outputs can be returned in kind."""

    is_torch: bool
    device: torch.device


def _arrow_to_numpy(X):
    """Arrow tables, record batches and (fixed-size) list arrays → a 2-D NumPy array."""
    import pyarrow as pa

    if isinstance(X, pa.ChunkedArray):
        X = X.combine_chunks()
    if isinstance(X, (pa.Table, pa.RecordBatch)):
        if X.num_columns == 1 and _is_list_type(X.schema.field(0).type):
            return _arrow_to_numpy(X.column(0))
        return np.column_stack([np.asarray(c) for c in X.columns]) if X.num_columns else np.empty((X.num_rows, 0))
    if pa.types.is_fixed_size_list(X.type):
        return np.array(X.flatten().to_numpy(zero_copy_only=False).reshape(len(X), X.type.list_size))
    if _is_list_type(X.type):
        return np.array(X.to_pylist(), dtype=float)
    return X.to_numpy(zero_copy_only=False)


def _is_list_type(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _is_arrow(X) -> bool:
    return type(X).__module__.startswith("pyarrow")


def column_names(X) -> list[str] | None:
    """The feature columns' names of a pandas DataFrame or an Arrow table (every name a str), else None."""
    if _is_arrow(X) and hasattr(X, "column_names"):
        if X.num_columns == 1 and _is_list_type(X.schema.field(0).type):
            return None  # one column holding whole vectors: its features have no names
        names = list(X.column_names)
    elif type(X).__module__.startswith("pandas") and hasattr(X, "columns"):
        names = list(X.columns)
    else:
        return None
    return names if all(isinstance(n, str) for n in names) else None


def in_column_order(X, names: list[str] | None):
    """``X`` with its named columns in the order ``names`` (the fitted ones); unnamed input is taken as it is.

    A DataFrame whose columns come in another order would otherwise be read by position: wrong numbers,
    silently. A named column missing from ``X`` is an error naming it.
    """
    given = column_names(X) if names is not None else None
    if given is None or given == names:
        return X
    present = set(given)
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"X lacks {len(missing)} feature column(s) the model was fitted on: {missing[:5]!r} "
                         f"(fitted on {len(names)} named columns)")
    return X.select(names) if _is_arrow(X) else X[names]


def as_features(X, *, n_features: int | None = None, name: str = "OpenWorld", device=None) -> tuple[Tensor, InputKind]:
    """Validated float features ``(n, d)`` as a tensor, and the kind of the input.

    float64 input stays float64 (exactness checks rely on it); everything
    else computes in float32. Raises ValueError naming the problem: not 2-D,
    no rows, no features, NaN/Inf (with the first bad row), wrong width.
    """
    if isinstance(X, Tensor):
        kind = InputKind(True, X.device)
        X = X.detach()  # features, not a graph: a backbone's output called without no_grad is data too
        if X.dim() != 2:
            raise ValueError(
                f"Expected 2D array, got {X.dim()}D tensor of shape {tuple(X.shape)}. "
                "Reshape your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row."
            )
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(
                f"Found array with {X.shape[0]} sample(s) and {X.shape[1]} feature(s) (shape={tuple(X.shape)}) "
                "while a minimum of 1 is required."
            )
        if X.is_complex() or not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8)):
            raise ValueError(f"features must be real numbers, got a tensor of dtype {X.dtype}")
        T = X if X.dtype == torch.float64 else X.to(torch.float32)
        # A NaN or infinity makes its row's sum non-finite: one (n,) pass instead of an (n, d) mask; a sum
        # that overflowed with finite entries is cleared by the exact test on the flagged rows only.
        suspect = (~torch.isfinite(T.sum(dim=1))).nonzero().flatten()
        if suspect.numel() and not bool(torch.isfinite(T[suspect]).all()):
            rows = suspect[~torch.isfinite(T[suspect]).all(dim=1)]
            raise ValueError(
                f"Input X contains NaN or infinity in {rows.numel()} row(s) (first: row {int(rows[0])})."
            )
    else:
        kind = InputKind(False, torch.device("cpu"))
        if _is_arrow(X):
            X = _arrow_to_numpy(X)
        try:
            A = check_array(X, dtype=[np.float64, np.float32], ensure_all_finite=True, estimator=name)
        except ValueError as error:
            if "NaN" in str(error) or "infinity" in str(error):
                rows = np.flatnonzero(~np.isfinite(np.asarray(X, dtype=np.float64)).all(axis=1))
                raise ValueError(f"{error} {rows.size} row(s) affected (first: row {rows[0]}).") from None
            raise
        A = np.ascontiguousarray(A)
        T = torch.from_numpy(A if A.flags.writeable else A.copy())  # torch cannot wrap read-only memory
    if n_features is not None and T.shape[1] != n_features:
        raise ValueError(f"X has {T.shape[1]} features, but {name} is expecting {n_features} features as input.")
    if device is not None:
        T = T.to(device)
    return T, kind


def device_labels(y, n_rows: int, device) -> Tensor | None:
    """Integer labels in a tensor on ``device``, a GPU, validated there; None for any other labels.

    A fit on a GPU then never copies millions of labels to the host and back
    (the classes are found on the device).
    """
    if not isinstance(y, Tensor) or y.device.type == "cpu" or y.device != torch.device(device):
        return None
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return None  # as_labels names what is wrong, or accepts integral floats
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D (one label per row), got shape {tuple(y.shape)}")
    if y.shape[0] != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {y.shape[0]} labels")
    return y.long()


def as_labels(y, n_rows: int) -> np.ndarray:
    """Class labels ``(n,)`` as a NumPy array of str or int; anything else is a clear error."""
    if isinstance(y, Tensor):
        y = y.detach().cpu().numpy()
    elif _is_arrow(y):
        y = y.to_numpy(zero_copy_only=False) if hasattr(y, "to_numpy") else np.asarray(y)
    elif isinstance(y, (list, tuple)):
        y = np.asarray(y, dtype=object)  # np.asarray(["a", 1]) would silently make "1" a string
    y = np.asarray(getattr(y, "to_numpy", lambda: y)())
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per row), got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise ValueError(f"X has {n_rows} rows but y has {y.shape[0]} labels")
    if y.dtype.kind in "US":
        return y.astype(str)
    if y.dtype.kind == "O":
        kinds = {type(v) for v in y}
        if all(issubclass(k, str) for k in kinds):
            return y.astype(str)
        if all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
            return int64_labels(y)
        raise ValueError(f"Unknown label type: labels must all be str or all int, got {sorted(k.__name__ for k in kinds)}")
    if y.dtype.kind == "b":
        raise ValueError("Unknown label type: bool. Labels must be str or int class names.")
    if y.dtype.kind in "iu":
        return int64_labels(y)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))
        raise ValueError(f"y contains NaN or infinity in {bad.size} row(s) (first: row {bad[0]}): every row needs a class")
    if y.dtype.kind == "f" and type_of_target(y) in ("binary", "multiclass"):
        return int64_labels(y)  # integral floats such as 0.0 / 1.0 are class ids
    raise ValueError(
        f"Unknown label type: {type_of_target(y) if y.dtype.kind in 'fb' else y.dtype}. "
        "Labels must be str or int class names (continuous values are regression targets)."
    )


def int64_labels(y: np.ndarray) -> np.ndarray:
    """Integer class ids as int64; an id int64 cannot hold (a 64-bit hash in uint64, a huge whole float) is an
    error, not a silent wrap-around to another id."""
    low, high = -(2**63), 2**63 - 1
    values = [int(y.min()), int(y.max())] if y.size and y.dtype.kind in "iuf" else [int(v) for v in y.tolist()]
    outside = [v for v in values if not low <= v <= high]
    if outside:
        raise ValueError(f"class id {outside[0]} does not fit in int64 ({low} … {high}): give such ids (hashes, "
                         "for example) as strings")
    return y.astype(np.int64, copy=False)


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def common_label_type(labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` and ``classes`` (each str or int, as :func:`as_labels` gives) in one type, to compare them.

    A table file types each label column on its own: integer classes read from one file meet ``"3"`` and
    ``"oos"`` in another. When the kinds differ, both become text, integer-looking text written as the
    integer would be (``"07"`` is ``"7"``), so ``"3"`` matches class 3 and ``"oos"`` matches none.
    """
    if (labels.dtype.kind == "U") == (classes.dtype.kind == "U"):
        return labels, classes

    def text(values: np.ndarray) -> np.ndarray:
        if values.dtype.kind != "U":
            return values.astype(str)
        # ASCII digits only: str.isdigit also holds for "²" and "①", which int() refuses (or reads as another digit)
        out = values.astype(object)
        for i, value in enumerate(values.tolist()):
            if _INTEGER_TEXT.fullmatch(value.strip()):
                out[i] = str(int(value))
        return out.astype(str)

    return text(labels), text(classes)


def as_weights(sample_weight, n_rows: int, device, part_of_more: bool = False) -> Tensor | None:
    """Non-negative finite weights (n,) as float64, or None; ``part_of_more``: a chunk or an update, which
    may weigh nothing as long as the whole fit does not."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Tensor):
        w = sample_weight.detach().to(device=device, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64), device=device)
    if w.dim() != 1 or w.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        bad = (~torch.isfinite(w) | (w < 0)).nonzero().flatten()
        raise ValueError(f"sample_weight must be finite and non-negative: {bad.numel()} row(s) are not "
                         f"(first: row {int(bad[0])}, {float(w[bad[0]])})")
    if not part_of_more and float(w.sum()) <= 0:
        raise ValueError("sample_weight is zero for every row: no row carries any weight")
    return w


def to_output(values: Tensor, kind: InputKind):
    """A result tensor back in the input's kind (NumPy, or torch on the input's device)."""
    if kind.is_torch:
        return values.to(kind.device)
    return values.detach().cpu().numpy()
