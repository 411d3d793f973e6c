"""Tables of embeddings, texts and labels, as the command line reads and writes them.

Users bring embeddings in whatever their pipeline produced: a NumPy array, an
``.npz`` of ``X``/``y``, a Parquet file with a list column, a CSV with one column
per dimension. Reading them all into one :class:`Table` keeps that variety out of
the models. Parquet and CSV go through pyarrow (pandas is not needed), NumPy files
never through pickle, and :func:`iter_vector_batches` streams files larger than
memory so that statistics can be accumulated chunk by chunk.
"""

from __future__ import annotations

import errno
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from openworld.core.arrays import int64_labels
from openworld.io.atomic import write_atomically

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "Table",
    "iter_vector_batches",
    "read_table",
    "write_table",
]

READ_SUFFIXES = (".npy", ".npz", ".parquet", ".csv")
WRITE_SUFFIXES = (".parquet", ".csv", ".npz")

# Column (or .npz array) names recognised when none is given, in order of preference.
VECTOR_NAMES = ("embedding", "embeddings", "vector", "vectors", "x", "X")
TEXT_NAMES = ("text", "texts", "sentence", "sentences", "utterance", "utterances")
LABEL_NAMES = ("label", "labels", "y")

# A CSV cell "[0.1, 0.2]" marks its column as a vector column without being named.
_BRACKETED = r"^\s*\[.*\]\s*$"


@dataclass(frozen=True, eq=False)
class Table:
    """Rows read from a file: vectors, texts or both, and optional labels.

    ``vectors``: (n, d) float32 or float64, the precision the file stored (integers
    become float64); ``texts``: n strings for an encoder to embed; ``labels``: (n,)
    str or int, as stored. ``eq=False``: arrays have no single truth value.
    """

    vectors: np.ndarray | None = None
    texts: list[str] | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.vectors is None and self.texts is None:
            raise ValueError("a Table needs vectors or texts")
        if self.vectors is not None and self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (rows, dimensions), got shape {self.vectors.shape}")
        if self.labels is not None and self.labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {self.labels.shape}")
        lengths = {
            name: len(value)
            for name, value in (("vectors", self.vectors), ("texts", self.texts), ("labels", self.labels))
            if value is not None
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f"rows differ in number: {lengths}")

    @property
    def n_rows(self) -> int:
        return len(self.vectors) if self.vectors is not None else len(self.texts)


@dataclass(frozen=True)
class _Layout:
    """Which columns of a Parquet/CSV schema hold what."""

    vector: str | None  # a list column: one vector per row
    features: tuple[str, ...]  # numeric columns that form the vector, in file order
    text: str | None
    label: str | None

    @property
    def columns(self) -> list[str]:
        names = [self.vector, *self.features, self.text, self.label]
        return [name for name in names if name is not None]


def read_table(
    path: str | os.PathLike[str],
    *,
    vector_column: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
) -> Table:
    """Read a whole ``.npy``, ``.npz``, Parquet or CSV file into a :class:`Table`.

    Unnamed columns are found as follows. Vectors: a list column named like
    ``embedding``/``vector``/``x`` or else the only list column (in CSV, cells such
    as ``"[0.1, 0.2]"`` or, in a column so named, ``"0.1 0.2"``). Text, only when
    there is no vector column: a string column named ``text``/``sentence``/
    ``utterance``. Neither: every numeric column but the label column (and a
    pandas index) is one dimension, in file order, or the ``feature_columns``
    named, in their order. Labels: ``label`` or ``y`` when present. In ``.npz``
    the same names pick arrays (``X``/``embeddings``, ``y``/``labels``); ``.npy``
    holds vectors only.
    """
    path, suffix = _checked_path(path, READ_SUFFIXES)
    if suffix == ".npy":
        given = [name for name in (vector_column, text_column, label_column) if name is not None]
        if given:
            raise ValueError(
                f"{path}: a .npy file holds one unnamed array of vectors, so it has no column "
                f"{given[0]!r}; use .npz, Parquet or CSV for labels or texts"
            )
        array = _load_npy(path, mmap=False)
        _check_vectors(path, array, "the array")
        return Table(vectors=_finite(path, _as_float(array), first_row=0))
    if suffix == ".npz":
        return _read_npz(path, vector_column, text_column, label_column)
    if suffix == ".parquet":
        with _parquet_file(path) as parquet:
            if parquet.metadata.num_rows == 0:
                raise ValueError(f"{path}: file is empty (no rows)")
            layout = _layout(path, parquet.schema_arrow, vector_column, text_column, label_column, feature_columns)
            table = parquet.read(columns=layout.columns)
    else:
        table = _read_csv(path, vector_column, text_column, label_column)
        layout = _layout(path, table.schema, vector_column, text_column, label_column, feature_columns)
    return _extract(path, table, layout, first_row=0)


def feature_columns(
    path: str | os.PathLike[str],
    *,
    vector_column: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> tuple[str, ...]:
    """The columns that :func:`read_table` takes as one feature each, in order; empty where the file holds a
    vector column, texts, or unnamed arrays (``.npy``, ``.npz``)."""
    path, suffix = _checked_path(path, READ_SUFFIXES)
    if suffix in (".npy", ".npz"):
        return ()
    if suffix == ".parquet":
        with _parquet_file(path) as parquet:
            return _layout(path, parquet.schema_arrow, vector_column, text_column, label_column).features
    table = _read_csv(path, vector_column, text_column, label_column)
    return _layout(path, table.schema, vector_column, text_column, label_column).features


def iter_vector_batches(
    path: str | os.PathLike[str],
    *,
    batch_rows: int = 65536,
    vector_column: str | None = None,
    label_column: str | None = None,
) -> Iterator[Table]:
    """Yield the file's vectors (and labels) in tables of at most ``batch_rows`` rows.

    For files larger than memory: Parquet is read batch by batch and ``.npy``
    through a memory map, so memory stays bounded by ``batch_rows`` (plus, for
    Parquet, about one data page per column). CSV and ``.npz`` are read whole first.
    Columns are found as in :func:`read_table`; texts are not streamed. The file
    is checked (existence, columns) at the call, not at the first batch.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    path, suffix = _checked_path(path, READ_SUFFIXES)
    if suffix == ".npy":
        if vector_column is not None or label_column is not None:
            name = vector_column if vector_column is not None else label_column
            raise ValueError(f"{path}: a .npy file holds one unnamed array of vectors, so it has no column {name!r}")
        array = _load_npy(path, mmap=True)
        _check_vectors(path, array, "the array")
        return _npy_batches(path, array, batch_rows)
    if suffix == ".parquet":
        with _parquet_file(path) as parquet:
            if parquet.metadata.num_rows == 0:
                raise ValueError(f"{path}: file is empty (no rows)")
            layout = _layout(path, parquet.schema_arrow, vector_column, None, label_column)
        if layout.text is not None:
            raise ValueError(_texts_only(path))
        return _parquet_batches(path, layout, batch_rows)
    table = read_table(path, vector_column=vector_column, label_column=label_column)
    if table.vectors is None:
        raise ValueError(_texts_only(path))
    return _table_batches(table, batch_rows)


def write_table(path: str | os.PathLike[str], columns: Mapping[str, np.ndarray | Sequence]) -> None:
    """Write named columns to ``.parquet``, ``.csv`` or ``.npz``, atomically.

    Each value has n rows: 1-D (labels, texts, scores) or 2-D (n, d) vectors. A 2-D
    array becomes a fixed-size-list column in Parquet, columns ``<name>_0`` …
    ``<name>_{d-1}`` in CSV, and an array as is in ``.npz`` (no pickle: object
    arrays are refused). The file appears complete or not at all: it is written
    to a temporary file in the same folder and renamed over ``path``.
    """
    path, suffix = _checked_path(path, WRITE_SUFFIXES, must_exist=False)
    if not columns:
        raise ValueError(f"{path}: nothing to write (no columns)")
    arrays = {name: np.asarray(value) for name, value in columns.items()}
    for name, array in arrays.items():
        if array.ndim not in (1, 2):
            raise ValueError(f"{path}: column {name!r} has shape {array.shape}; expected 1-D or 2-D")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: columns differ in number of rows: {lengths}")

    if suffix == ".npz":
        objects = [name for name, array in arrays.items() if array.dtype.hasobject]
        if objects:
            raise ValueError(f"{path}: column {objects[0]!r} holds Python objects, which .npz stores only by pickle")
        reserved = [name for name in ("file", "allow_pickle") if name in arrays]  # np.savez's own arguments
        if reserved:
            raise ValueError(f"{path}: {reserved[0]!r} cannot name an array in .npz; rename the column")
        write_atomically(path, lambda file: np.savez(file, **arrays))
        return
    table = pa.table(_arrow_columns(path, arrays, split_vectors=suffix == ".csv"))
    if suffix == ".parquet":
        write_atomically(path, lambda file: pq.write_table(table, file))
    else:
        write_atomically(path, lambda file: pa_csv.write_csv(table, file))


# --- paths and files -----------------------------------------------------------------


def _checked_path(
    path: str | os.PathLike[str], suffixes: tuple[str, ...], *, must_exist: bool = True
) -> tuple[Path, str]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ValueError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}; supported: {', '.join(suffixes)}"
        )
    if must_exist:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
        if not path.is_file():
            raise ValueError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: file is empty")
    elif not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", str(path.parent))
    return path, suffix


def _parquet_file(path: Path, **options: object) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, **options)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file: {error}") from error


def _load_npy(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npy file of numbers: {error}") from error


def _texts_only(path: Path) -> str:
    return f"{path}: no vector column, only text; iter_vector_batches streams vectors: embed the texts first"


# --- NumPy files ---------------------------------------------------------------------


def _check_vectors(path: Path, array: np.ndarray, what: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{path}: {what} has shape {array.shape}; expected 2-D (rows, dimensions)")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: {what} holds {array.dtype}, not numbers")
    if array.shape[0] == 0:
        raise ValueError(f"{path}: file is empty (no rows)")


def _finite(path: Path, vectors: np.ndarray, first_row: int) -> np.ndarray:
    """The vectors, once checked to hold no NaN or Inf: the error names the file and row, which the
    estimator, seeing only an array, cannot."""
    # As the estimator's own check: a NaN or Inf makes its row's sum non-finite, one (n,) pass instead of an
    # (n, d) mask on every streamed chunk; a sum that overflowed with finite entries is cleared row by row.
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(vectors.sum(axis=1)))
    bad = suspect[~np.isfinite(vectors[suspect]).all(axis=1)]
    if bad.size:
        row = int(bad[0])
        dimension = int((~np.isfinite(vectors[row])).argmax())
        value = vectors[row, dimension]
        word = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
        raise ValueError(f"{path}: vectors hold {word} first at row {first_row + row}, dimension {dimension}; "
                         "drop or impute such rows before fitting or scoring")
    return vectors


def _as_float(array: np.ndarray) -> np.ndarray:
    """Keep float32/float64 as stored; widen float16 to float32 and integers to float64."""
    if array.dtype in (np.float32, np.float64):
        return array
    return array.astype(np.float32 if array.dtype == np.float16 else np.float64)


def _npy_batches(path: Path, array: np.ndarray, batch_rows: int) -> Iterator[Table]:
    """Rows of a C-ordered .npy read with plain file reads.

    Pages of a memory map that were touched stay in the process's resident
    set, so streaming through one grows with the file; reads do not.
    """
    if array.dtype.hasobject or np.isfortran(array) or array.ndim != 2:
        for start in range(0, len(array), batch_rows):
            yield Table(vectors=_finite(path, _as_float(np.array(array[start : start + batch_rows])), first_row=start))
        return
    n_rows, d = array.shape
    with open(path, "rb") as handle:
        handle.seek(array.offset)
        for start in range(0, n_rows, batch_rows):
            rows = min(batch_rows, n_rows - start)
            chunk = np.fromfile(handle, dtype=array.dtype, count=rows * d).reshape(rows, d)
            yield Table(vectors=_finite(path, _as_float(chunk), first_row=start))


def _read_npz(path: Path, vector_column: str | None, text_column: str | None, label_column: str | None) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file: {error}") from error
    with archive:
        names = archive.files
        for given in (vector_column, text_column, label_column):
            if given is not None and given not in names:
                raise ValueError(f"{path}: no array {given!r}; arrays present: {_listing(names)}")
        vector = vector_column
        if vector is None and text_column is None:
            vector = next((name for name in VECTOR_NAMES if name in names), None)
        text = text_column
        if text is None and vector is None:
            text = next((name for name in TEXT_NAMES if name in names), None)
        if vector is None and text is None:
            raise ValueError(
                f"{path}: no vector and no text array found; arrays present: {_listing(names)}; "
                "expected 'X' or 'embeddings' (vectors) or 'text' (texts), or name one"
            )
        label = label_column if label_column is not None else _default_label(names, {vector, text})

        def load(name: str) -> np.ndarray:
            try:
                return archive[name]
            except ValueError as error:  # object arrays refuse to load without pickle
                raise ValueError(f"{path}: array {name!r} cannot be read without pickle: {error}") from error

        vectors = texts = labels = None
        if vector is not None:
            vectors = load(vector)
            _check_vectors(path, vectors, f"array {vector!r}")
            vectors = _finite(path, _as_float(vectors), first_row=0)
        if text is not None:
            array = load(text)
            if array.ndim != 1 or array.dtype.kind != "U":
                raise ValueError(f"{path}: array {text!r} ({array.dtype}, shape {array.shape}) is not 1-D text")
            if len(array) == 0:
                raise ValueError(f"{path}: file is empty (no rows)")
            texts = array.tolist()
        if label is not None:
            labels = load(label)
            if labels.ndim != 1 or labels.dtype.kind not in "iuU":
                raise ValueError(
                    f"{path}: labels {label!r} ({labels.dtype}, shape {labels.shape}) are not 1-D strings or integers"
                )
    try:
        return Table(vectors=vectors, texts=texts, labels=labels)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


# --- Parquet and CSV -----------------------------------------------------------------


def _read_csv(path: Path, vector_column: str | None, text_column: str | None, label_column: str | None) -> pa.Table:
    """Read a CSV; cells that hold lists of numbers become list<float64> columns."""
    try:
        table = pa_csv.read_csv(path)
    except pa.ArrowException as error:
        raise ValueError(f"{path}: not a readable CSV file: {error}") from error
    if table.num_rows == 0:
        raise ValueError(f"{path}: file is empty (no rows)")
    names = table.column_names
    if vector_column is not None:
        candidates = [vector_column] if vector_column in names else []
    elif text_column is None:
        label = label_column if label_column is not None else _default_label(names, set())
        candidates = [
            name
            for name in names
            if name != label
            and _is_string(table.schema.field(name).type)
            and (name in VECTOR_NAMES or pc.all(pc.match_substring_regex(table[name], _BRACKETED)).as_py())
        ]
    else:
        candidates = []
    for name in candidates:
        if _is_string(table.schema.field(name).type):
            index = names.index(name)
            table = table.set_column(index, name, _parse_vector_cells(path, name, table[name]))
    return table


def _parse_vector_cells(path: Path, name: str, cells: pa.ChunkedArray) -> pa.ChunkedArray:
    """``"[0.1, 0.2]"``, ``"0.1,0.2"`` or ``"0.1 0.2"`` → [0.1, 0.2], with pyarrow kernels."""
    stripped = pc.utf8_trim_whitespace(pc.utf8_trim(pc.utf8_trim_whitespace(cells), characters="[]"))
    parts = pc.split_pattern_regex(stripped, pattern=r"[\s,]+")
    target = pa.list_(pa.float64())

    def casts(array: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> bool:
        try:
            array.cast(kind)
        except pa.ArrowException:
            return False
        return True

    if casts(parts, target):
        return parts.cast(target)
    # Bisect the flat values (a sliced list array would cast all its values) for the first bad row.
    parts = parts.combine_chunks()
    values = parts.flatten()
    low, high = 0, len(values)
    while high - low > 1:
        middle = (low + high) // 2
        if casts(values.slice(low, middle - low), pa.float64()):
            low = middle
        else:
            high = middle
    row = pc.list_parent_indices(parts)[low].as_py()
    raise ValueError(f"{path}: column {name!r} row {row} ({cells[row].as_py()!r}) is not a list of numbers")


def _layout(
    path: Path,
    schema: pa.Schema,
    vector_column: str | None,
    text_column: str | None,
    label_column: str | None,
    feature_columns: Sequence[str] | None = None,
) -> _Layout:
    """``feature_columns``: where the vector is one column per feature, exactly these, in this order (the
    columns a model was fitted on), whatever else the file holds and in whatever order."""
    # pandas writes its index as a column (``__index_level_0__`` or the index's name): row numbers, not data
    index = {name for name in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(name, str)}
    names = [name for name in schema.names if name not in index or name in (vector_column, text_column, label_column)]
    for given in (vector_column, text_column, label_column):
        if given is not None and given not in names:
            raise ValueError(f"{path}: no column {given!r}; columns present: {_listing(names)}")
    if label_column is not None and label_column in (vector_column, text_column):
        raise ValueError(f"{path}: column {label_column!r} cannot be both the labels and the data")
    types = {name: _value_type(schema.field(name).type) for name in names}
    label = label_column if label_column is not None else _default_label(names, {vector_column, text_column})

    vector = vector_column
    if vector is not None and not _is_list(types[vector]):
        raise ValueError(f"{path}: column {vector!r} holds {types[vector]}, not one vector (a list of numbers) per row")
    if vector is None and text_column is None:
        lists = [name for name in names if name != label and _is_list(types[name])]
        named = [name for name in VECTOR_NAMES if name in lists]
        if len(lists) > 1 and not named:
            raise ValueError(f"{path}: several vector columns {lists}; choose one with vector_column=")
        vector = named[0] if named else (lists[0] if lists else None)

    text = text_column
    if text is None and vector is None:
        text = next((name for name in TEXT_NAMES if name in names and _is_string(types[name])), None)
    if text is not None and not _is_string(types[text]):
        raise ValueError(f"{path}: column {text!r} holds {types[text]}, not text")

    features: tuple[str, ...] = ()
    if vector is None and text is None and feature_columns:
        missing = [name for name in feature_columns if name not in names]
        if missing:
            raise ValueError(
                f"{path}: the model was fitted on the feature columns {_listing(list(feature_columns))}; "
                f"missing here: {_listing(missing)}"
            )
        features = tuple(feature_columns)
    elif vector is None and text is None:
        features = tuple(name for name in names if name != label)
    if features:
        if not any(_is_numeric(types[name]) for name in features):
            raise ValueError(
                f"{path}: no vector column and no text column found; columns present: {_listing(names)}; "
                "name one with vector_column= or text_column="
            )
        for name in features:
            if not _is_numeric(types[name]):
                raise ValueError(
                    f"{path}: feature column {name!r} is not numeric ({types[name]}); without a vector or text "
                    f"column every column but the label column ({label!r}) is a feature"
                )
    return _Layout(vector=vector, features=features, text=text, label=label)


def _extract(path: Path, data: pa.Table | pa.RecordBatch, layout: _Layout, first_row: int) -> Table:
    """Turn the columns named by ``layout`` into a Table; ``first_row`` numbers rows in errors."""
    vectors = texts = labels = None
    if layout.vector is not None:
        vectors = _list_vectors(path, layout.vector, _column(data, layout.vector), first_row)
    elif layout.features:
        columns = [_column(data, name) for name in layout.features]
        narrow = all(pa.types.is_floating(column.type) and column.type.bit_width <= 32 for column in columns)
        vectors = np.empty((data.num_rows, len(columns)), np.float32 if narrow else np.float64)
        for j, (name, column) in enumerate(zip(layout.features, columns)):
            _no_nulls(path, name, column, first_row)  # an empty cell: "missing", not NaN
            vectors[:, j] = _floats(column)
    if vectors is not None:
        _finite(path, vectors, first_row)
    if layout.text is not None:
        column = _column(data, layout.text)
        _no_nulls(path, layout.text, column, first_row)
        texts = column.to_pylist()
        _no_empty_strings(path, layout.text, np.asarray(texts, dtype=str), first_row)
    if layout.label is not None:
        column = _column(data, layout.label)
        _no_nulls(path, layout.label, column, first_row)
        if _is_string(column.type):
            labels = column.to_numpy(zero_copy_only=False).astype(str)
            _no_empty_strings(path, layout.label, labels, first_row)
        elif pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            labels = int64_labels(column.to_numpy(zero_copy_only=False, writable=True))
        elif pa.types.is_floating(column.type) and _whole_numbers(values := column.to_numpy(zero_copy_only=False)):
            labels = int64_labels(values)  # 0.0 / 1.0 flags written by tools that know no integers
        else:
            raise ValueError(f"{path}: label column {layout.label!r} holds {column.type}; labels are strings or integers")
    return Table(vectors=vectors, texts=texts, labels=labels)


def _list_vectors(path: Path, name: str, column: pa.Array, first_row: int) -> np.ndarray:
    """(n, d) floats from a list column; every row must have the same length d."""
    _no_nulls(path, name, column, first_row)
    if not _is_numeric(column.type.value_type):
        raise ValueError(f"{path}: column {name!r} holds lists of {column.type.value_type}, not numbers")
    if pa.types.is_fixed_size_list(column.type):
        dimension = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy()
        dimension = int(lengths[0])
        ragged = np.flatnonzero(lengths != dimension)
        if ragged.size:
            row = int(ragged[0])
            raise ValueError(
                f"{path}: ragged vectors in column {name!r}: row {first_row + row} has {lengths[row]} values, "
                f"row {first_row} has {dimension}"
            )
    return _floats(column.flatten()).reshape(len(column), dimension)


def _parquet_batches(path: Path, layout: _Layout, batch_rows: int) -> Iterator[Table]:
    # A buffered stream without pre-buffering reads pages as batches need them; otherwise
    # pyarrow loads a whole row group (all of a file written in one go) at once.
    with _parquet_file(path, buffer_size=1 << 20, pre_buffer=False) as parquet:
        first_row, dimension = 0, None
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=layout.columns):
            table = _extract(path, batch, layout, first_row)
            if dimension is None:
                dimension = table.vectors.shape[1]
            elif table.vectors.shape[1] != dimension:
                raise ValueError(
                    f"{path}: ragged vectors in column {layout.vector!r}: row {first_row} has "
                    f"{table.vectors.shape[1]} values, row 0 has {dimension}"
                )
            first_row += batch.num_rows
            yield table


def _table_batches(table: Table, batch_rows: int) -> Iterator[Table]:
    for start in range(0, table.n_rows, batch_rows):
        rows = slice(start, start + batch_rows)
        yield Table(vectors=table.vectors[rows], labels=None if table.labels is None else table.labels[rows])


def _arrow_columns(path: Path, arrays: dict[str, np.ndarray], *, split_vectors: bool) -> dict[str, pa.Array]:
    """Arrow columns for Parquet (2-D → fixed-size list) or CSV (2-D → one column per dimension)."""
    columns: dict[str, pa.Array] = {}

    def convert(name: str, values: np.ndarray) -> pa.Array:
        try:
            return pa.array(values)
        except (pa.ArrowException, TypeError) as error:
            raise ValueError(f"{path}: column {name!r} cannot be stored: {error}") from error

    def put(name: str, column: pa.Array) -> None:
        if name in columns:
            raise ValueError(f"{path}: two columns would be named {name!r}")
        columns[name] = column

    for name, array in arrays.items():
        if array.ndim == 1:
            put(name, convert(name, array))
        elif split_vectors:
            for i in range(array.shape[1]):
                put(f"{name}_{i}", convert(f"{name}_{i}", array[:, i]))
        else:
            flat = convert(name, np.ascontiguousarray(array).reshape(-1))
            put(name, pa.FixedSizeListArray.from_arrays(flat, array.shape[1]))
    return columns


# --- Arrow helpers -------------------------------------------------------------------


def _column(data: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    column = data.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):  # e.g. pandas categoricals saved to Parquet
        column = column.dictionary_decode()
    return column


def _floats(values: pa.Array) -> np.ndarray:
    """A writable NumPy copy: float32/float64 as stored, float16 → float32, other numbers → float64."""
    kind = values.type
    if not (pa.types.is_float32(kind) or pa.types.is_float64(kind)):
        values = values.cast(pa.float32() if pa.types.is_float16(kind) else pa.float64(), safe=False)
    return values.to_numpy(zero_copy_only=False, writable=True)


def _no_empty_strings(path: Path, name: str, values: np.ndarray, first_row: int) -> None:
    """An empty label or text is a missing value (an empty CSV cell reads as ``""``), not a class or a text."""
    empty = np.flatnonzero(np.char.str_len(values) == 0) if values.size else np.empty(0, int)
    if empty.size:
        raise ValueError(f"{path}: column {name!r} row {first_row + int(empty[0])} is empty (a missing value?)")


def _whole_numbers(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all() and (values == np.round(values)).all() and (np.abs(values) < 2**53).all())


def _no_nulls(path: Path, name: str, column: pa.Array, first_row: int) -> None:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column {name!r} row {first_row + row} is missing")


def _default_label(names: Sequence[str], taken: set[str | None]) -> str | None:
    return next((name for name in LABEL_NAMES if name in names and name not in taken), None)


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _listing(names: Sequence[str]) -> str:
    return ", ".join(map(repr, names)) if names else "(none)"
