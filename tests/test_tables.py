"""Reading and writing tables: round trips, auto-detection, streaming, errors.

Where it makes sense the reader is checked against an independent reference:
pyarrow or NumPy reading the same file directly.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from openworld.io.tables import Table, iter_vector_batches, read_table, write_table

rng = np.random.default_rng(0)
X32 = rng.standard_normal((7, 4)).astype(np.float32)
STR_LABELS = np.array(["cat", "dog", "cat", "emu", "dog", "cat", "emu"])
INT_LABELS = np.array([3, 1, 3, 0, 1, 3, 0], dtype=np.int64)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("labels", [STR_LABELS, INT_LABELS], ids=["str", "int"])
def test_parquet_round_trip_keeps_dtype_and_label_type(tmp_path, labels):
    path = tmp_path / "t.parquet"
    write_table(path, {"embedding": X32, "label": labels})
    table = read_table(path)
    assert table.vectors.dtype == np.float32
    np.testing.assert_array_equal(table.vectors, X32)
    np.testing.assert_array_equal(table.labels, labels)
    assert table.labels.dtype.kind == labels.dtype.kind
    assert table.texts is None and table.n_rows == 7
    # Reference: pyarrow sees a fixed-size-list column of float32.
    stored = pq.read_table(path)
    assert stored.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    np.testing.assert_array_equal(np.array(stored["embedding"].to_pylist(), dtype=np.float32), X32)


@pytest.mark.parametrize("labels", [STR_LABELS, INT_LABELS], ids=["str", "int"])
def test_csv_round_trip_one_column_per_dimension(tmp_path, labels):
    path = tmp_path / "t.csv"
    write_table(path, {"X": X32, "label": labels})
    stored = pa_csv.read_csv(path)  # reference
    assert stored.column_names == ["X_0", "X_1", "X_2", "X_3", "label"]
    table = read_table(path)
    assert table.vectors.dtype == np.float64  # CSV text has no width
    np.testing.assert_array_equal(table.vectors.astype(np.float32), X32)
    np.testing.assert_array_equal(table.labels, labels)
    assert table.labels.dtype.kind == labels.dtype.kind


@pytest.mark.parametrize("labels", [STR_LABELS, INT_LABELS], ids=["str", "int"])
def test_npz_round_trip(tmp_path, labels):
    path = tmp_path / "t.npz"
    write_table(path, {"X": X32, "y": labels})
    with np.load(path, allow_pickle=False) as reference:
        assert sorted(reference.files) == ["X", "y"]
        np.testing.assert_array_equal(reference["y"], labels)
    table = read_table(path)
    assert table.vectors.dtype == np.float32
    np.testing.assert_array_equal(table.vectors, X32)
    np.testing.assert_array_equal(table.labels, labels)
    assert table.labels.dtype.kind == labels.dtype.kind


def test_npz_alternative_names(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, embeddings=X32.astype(np.float64), labels=STR_LABELS)
    table = read_table(path)
    assert table.vectors.dtype == np.float64
    np.testing.assert_array_equal(table.vectors, X32)
    np.testing.assert_array_equal(table.labels, STR_LABELS)


def test_npy_reads_vectors_as_numpy_does(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, X32)
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, np.load(path))
    assert table.vectors.dtype == np.float32 and table.labels is None


def test_integer_npy_becomes_float64(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.arange(6).reshape(3, 2))
    table = read_table(path)
    assert table.vectors.dtype == np.float64
    np.testing.assert_array_equal(table.vectors, [[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npz"])
def test_texts_round_trip(tmp_path, suffix):
    texts = ["hello world", "a, quoted \"text\"", "ünïcode"]
    path = tmp_path / f"t{suffix}"
    write_table(path, {"text": texts, "label": ["greet", "quote", "misc"]})
    table = read_table(path)
    assert table.vectors is None
    assert table.texts == texts
    assert table.labels.tolist() == ["greet", "quote", "misc"]
    assert table.n_rows == 3


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path, {"embedding": X32})
    write_table(path, {"embedding": X32[:2]})  # replaces the file whole
    assert read_table(path).n_rows == 2
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path, {"embedding": X32})
    with pytest.raises(ValueError, match="cannot be stored"):
        write_table(path, {"embedding": X32, "bad": np.array([object()] * 7)})
    np.testing.assert_array_equal(read_table(path).vectors, X32)
    assert os.listdir(tmp_path) == ["t.parquet"]


# --- auto-detection ------------------------------------------------------------------


def test_hand_written_csv_numeric_columns_and_label(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text(
        "sepal_length,sepal_width,species,petal_length\n"
        "5.1,3.5,setosa,1.4\n"
        "7.0,3.2,versicolor,4.7\n"
        "6.3,3.3,virginica,6\n"
    )
    table = read_table(path, label_column="species")
    np.testing.assert_array_equal(table.vectors, [[5.1, 3.5, 1.4], [7.0, 3.2, 4.7], [6.3, 3.3, 6.0]])
    assert table.labels.tolist() == ["setosa", "versicolor", "virginica"]


def test_hand_written_csv_default_label_is_not_a_feature(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,0\n3,4,1\n")
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, [[1, 2], [3, 4]])
    assert table.labels.tolist() == [0, 1] and table.labels.dtype.kind == "i"


def test_label_preferred_over_y_which_then_is_a_feature(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,y,label\n1,2,a\n3,4,b\n")
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, [[1, 2], [3, 4]])
    assert table.labels.tolist() == ["a", "b"]


def test_file_without_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    assert read_table(path).labels is None


def test_csv_vector_cells_bracketed_and_space_separated(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('embedding,label\n"[0.5, -1e-3]",a\n"2 3",b\n" [ 4 ,5 ] ",c\n')
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, [[0.5, -1e-3], [2, 3], [4, 5]])
    assert table.labels.tolist() == ["a", "b", "c"]


def test_csv_bracketed_column_found_without_its_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,feats,text,label\n7,"[1,2]",hi,a\n8,"[3,4]",yo,b\n')
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, [[1, 2], [3, 4]])
    assert table.texts is None  # a vector column wins over text


def test_parquet_only_list_column_is_the_vector_column(tmp_path):
    path = tmp_path / "t.parquet"
    vectors = [[1.0, 2.0], [3.0, 4.0]]
    pq.write_table(pa.table({"id": [1, 2], "feats": vectors, "label": ["a", "b"]}), path)
    table = read_table(path)
    np.testing.assert_array_equal(table.vectors, vectors)
    assert table.vectors.dtype == np.float64


def test_parquet_named_vector_column_among_several_lists(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"other": [[9.0], [9.0]], "vector": [[1.0, 2.0], [3.0, 4.0]]}), path)
    np.testing.assert_array_equal(read_table(path).vectors, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(read_table(path, vector_column="other").vectors, [[9], [9]])


def test_parquet_text_column_when_no_vector_column(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"sentence": ["one", "two"], "score": [0.1, 0.2], "label": [1, 2]}), path)
    table = read_table(path)
    assert table.texts == ["one", "two"] and table.vectors is None
    assert table.labels.tolist() == [1, 2]


def test_parquet_numeric_columns_keep_float32(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"a": pa.array([1, 2], pa.float32()), "b": pa.array([3, 4], pa.float32()), "y": ["u", "v"]}),
        path,
    )
    table = read_table(path)
    assert table.vectors.dtype == np.float32
    np.testing.assert_array_equal(table.vectors, [[1, 3], [2, 4]])


def test_parquet_dictionary_labels_are_decoded(tmp_path):
    path = tmp_path / "t.parquet"
    labels = pa.array(["a", "b", "a"]).dictionary_encode()
    pq.write_table(pa.table({"embedding": [[1.0], [2.0], [3.0]], "label": labels}), path)
    assert read_table(path).labels.tolist() == ["a", "b", "a"]


def test_explicit_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"emb": [[1.0, 2.0]], "body": ["hi"], "cls": ["c"]}), path)
    table = read_table(path, vector_column="emb", label_column="cls")
    np.testing.assert_array_equal(table.vectors, [[1, 2]])
    assert table.labels.tolist() == ["c"] and table.texts is None
    table = read_table(path, text_column="body")
    assert table.texts == ["hi"] and table.vectors is None


# --- streaming -----------------------------------------------------------------------


def test_parquet_batches_equal_whole_read(tmp_path):
    path = tmp_path / "big.parquet"
    vectors = rng.standard_normal((10_000, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 10_000)
    # Small row groups so that batches cross row-group boundaries.
    table = pa.table(
        {
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 8),
            "label": labels,
        }
    )
    pq.write_table(table, path, row_group_size=3_333)
    batches = list(iter_vector_batches(path, batch_rows=1_000))
    assert all(0 < batch.n_rows <= 1_000 for batch in batches)
    whole = read_table(path)
    np.testing.assert_array_equal(np.concatenate([batch.vectors for batch in batches]), whole.vectors)
    np.testing.assert_array_equal(np.concatenate([batch.labels for batch in batches]), whole.labels)
    np.testing.assert_array_equal(whole.vectors, vectors)
    np.testing.assert_array_equal(whole.labels, labels)


def test_parquet_batches_stay_bounded_by_batch_rows(tmp_path):
    # One row group of 25 MB (what a single write produces): streaming must not load it whole.
    path = tmp_path / "big.parquet"
    write_table(path, {"embedding": np.ones((200_000, 32), np.float32)})
    baseline, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in iter_vector_batches(path, batch_rows=1_000):
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        rows += batch.n_rows
    assert rows == 200_000
    assert peak < 8e6, f"arrow held {peak / 1e6:.1f} MB for batches of 128 kB"


def test_parquet_batches_of_numeric_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(10.0), "b": -np.arange(10.0), "label": np.arange(10) % 2}), path)
    batches = list(iter_vector_batches(path, batch_rows=4))
    assert [batch.n_rows for batch in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), read_table(path).vectors)


def test_npy_batches_through_memory_map(tmp_path, monkeypatch):
    path = tmp_path / "v.npy"
    vectors = rng.standard_normal((2_500, 3))
    np.save(path, vectors)
    loads = []
    real_load = np.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    batches = list(iter_vector_batches(path, batch_rows=1_000))
    assert loads == ["r"]
    assert [batch.n_rows for batch in batches] == [1_000, 1_000, 500]
    assert all(type(batch.vectors) is np.ndarray for batch in batches)  # copies, not views of the map
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), vectors)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_csv_and_npz_batches(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    write_table(path, {"X": X32, "y": INT_LABELS})
    batches = list(iter_vector_batches(path, batch_rows=3))
    assert [batch.n_rows for batch in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), INT_LABELS)
    np.testing.assert_allclose(np.concatenate([b.vectors for b in batches]), X32, rtol=1e-7)


def test_parquet_batches_detect_ragged_rows_across_batches(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"embedding": [[1.0, 2.0]] * 5 + [[1.0]]}), path)
    batches = iter_vector_batches(path, batch_rows=5)
    next(batches)
    with pytest.raises(ValueError, match=r"t\.parquet: ragged vectors.*row 5 has 1 values"):
        next(batches)


def test_batches_refuse_text_only_files(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path, {"text": ["a", "b"]})
    with pytest.raises(ValueError, match="no vector column, only text"):
        iter_vector_batches(path)


# --- errors --------------------------------------------------------------------------


def test_unsupported_suffix_lists_supported(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"t\.json: unsupported file type '\.json'; supported: \.npy, \.npz, \.parquet, \.csv"):
        read_table(path)
    with pytest.raises(ValueError, match=r"unsupported file type '\.npy'; supported: \.parquet, \.csv, \.npz"):
        write_table(tmp_path / "t.npy", {"x": X32})


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.parquet"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        read_table(path)
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        iter_vector_batches(path)


def test_missing_named_column_lists_columns(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path, {"embedding": X32, "label": STR_LABELS})
    with pytest.raises(ValueError, match=r"t\.parquet: no column 'target'; columns present: 'embedding', 'label'"):
        read_table(path, label_column="target")
    with pytest.raises(ValueError, match=r"no column 'emb'; columns present"):
        iter_vector_batches(path, vector_column="emb")
    npz = tmp_path / "t.npz"
    write_table(npz, {"X": X32})
    with pytest.raises(ValueError, match=r"t\.npz: no array 'labels'; arrays present: 'X'"):
        read_table(npz, label_column="labels")


def test_ragged_vectors_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"embedding": [[1.0, 2.0], [3.0, 4.0], [5.0]]}), path)
    with pytest.raises(ValueError, match=r"t\.parquet: ragged vectors in column 'embedding': row 2 has 1 values, row 0 has 2"):
        read_table(path)
    csv = tmp_path / "t.csv"
    csv.write_text('embedding\n"[1, 2]"\n"[1, 2, 3]"\n')
    with pytest.raises(ValueError, match=r"t\.csv: ragged vectors in column 'embedding': row 1 has 3 values"):
        read_table(csv)


def test_unparseable_vector_cell_names_the_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('vector\n"[1, 2]"\n"[3, 4]"\n"[5, oops]"\n"[7, 8]"\n')
    with pytest.raises(ValueError, match=r"column 'vector' row 2 \('\[5, oops\]'\) is not a list of numbers"):
        read_table(path)


def test_non_numeric_feature_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,colour,label\n1,red,x\n2,blue,y\n")
    with pytest.raises(ValueError, match=r"t\.csv: feature column 'colour' is not numeric"):
        read_table(path)


def test_non_numeric_vector_values(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"embedding": [["a"], ["b"]]}), path)
    with pytest.raises(ValueError, match=r"column 'embedding' holds lists of string, not numbers"):
        read_table(path)


def test_no_vector_and_no_text_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("comment,label\nnice,a\nbad,b\n")
    with pytest.raises(ValueError, match=r"t\.csv: no vector column and no text column found; columns present: 'comment', 'label'"):
        read_table(path)
    npz = tmp_path / "t.npz"
    np.savez(npz, weights=X32)
    with pytest.raises(ValueError, match=r"t\.npz: no vector and no text array found; arrays present: 'weights'"):
        read_table(npz)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npy", ".npz"])
def test_zero_byte_file_is_empty(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"file is empty"):
        read_table(path)


def test_files_without_rows_are_empty(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,label\n")
    with pytest.raises(ValueError, match=r"t\.csv: file is empty \(no rows\)"):
        read_table(csv)
    parquet = tmp_path / "t.parquet"
    write_table(parquet, {"embedding": np.zeros((0, 3), np.float32)})
    with pytest.raises(ValueError, match=r"t\.parquet: file is empty \(no rows\)"):
        read_table(parquet)
    with pytest.raises(ValueError, match=r"file is empty"):
        iter_vector_batches(parquet)
    npy = tmp_path / "t.npy"
    np.save(npy, np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"t\.npy: file is empty \(no rows\)"):
        read_table(npy)


def test_npy_must_be_2d_numbers_without_pickle(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(3.0))
    with pytest.raises(ValueError, match=r"t\.npy: the array has shape \(3,\); expected 2-D"):
        read_table(path)
    np.save(path, np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"t\.npy: not a readable \.npy file of numbers"):
        read_table(path)
    with pytest.raises(ValueError, match=r"t\.npy: a \.npy file holds one unnamed array.*'label'"):
        read_table(tmp_path / "t.npy", label_column="label")


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, X=X32, y=np.array([1, "a", None] * 2 + [1], dtype=object))
    with pytest.raises(ValueError, match=r"t\.npz: array 'y' cannot be read without pickle"):
        read_table(path)
    with pytest.raises(ValueError, match=r"column 'y' holds Python objects"):
        write_table(path, {"X": X32, "y": np.array([None] * 7, dtype=object)})


def test_npz_labels_must_match_rows(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, X=X32, y=INT_LABELS[:3])
    with pytest.raises(ValueError, match=r"t\.npz: rows differ in number"):
        read_table(path)


def test_missing_labels_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"embedding": [[1.0], [2.0]], "label": ["a", None]}), path)
    with pytest.raises(ValueError, match=r"column 'label' row 1 is missing"):
        read_table(path)


def test_float_labels_are_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,0.5\n2,1.5\n")
    with pytest.raises(ValueError, match=r"label column 'label' holds double; labels are strings or integers"):
        read_table(path)


def test_write_errors(tmp_path):
    with pytest.raises(ValueError, match=r"columns differ in number of rows: \{'X': 7, 'y': 3\}"):
        write_table(tmp_path / "t.parquet", {"X": X32, "y": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"two columns would be named 'X_0'"):
        write_table(tmp_path / "t.csv", {"X": X32, "X_0": np.zeros(7)})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_table(tmp_path / "nowhere" / "t.csv", {"X": X32})


def test_table_invariants():
    with pytest.raises(ValueError, match="needs vectors or texts"):
        Table(labels=np.array([1]))
    with pytest.raises(ValueError, match="rows differ in number"):
        Table(vectors=np.zeros((2, 3)), labels=np.array([1]))
    assert Table(texts=["a", "b"]).n_rows == 2


def test_batch_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="batch_rows must be at least 1"):
        iter_vector_batches(tmp_path / "t.npy", batch_rows=0)


# --- missing values, pandas' index, flag columns --------------------------------------


def test_an_empty_csv_cell_in_the_label_or_text_column_is_a_missing_value(tmp_path):
    (tmp_path / "labels.csv").write_text("f0,f1,label\n0.1,0.2,a\n0.3,0.4,\n0.5,0.6,b\n")
    with pytest.raises(ValueError, match=r"column 'label' row 1 is empty"):
        read_table(tmp_path / "labels.csv")
    (tmp_path / "texts.csv").write_text('text,label\nhello,a\n"",b\n')
    with pytest.raises(ValueError, match=r"column 'text' row 1 is empty"):
        read_table(tmp_path / "texts.csv")


def test_a_pandas_index_stored_in_parquet_is_not_a_feature(tmp_path):
    """pandas writes a non-default index as a column named in the schema's pandas metadata."""
    table = pa.table({"f0": [0.1, 0.2, 0.3], "f1": [1.0, 2.0, 3.0], "__index_level_0__": [7, 3, 5], "label": ["a", "b", "a"]})
    metadata = {b"pandas": b'{"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}'}
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "frame.parquet")
    read = read_table(tmp_path / "frame.parquet")
    np.testing.assert_array_equal(read.vectors, np.array([[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]]))
    assert [batch.vectors.shape[1] for batch in iter_vector_batches(tmp_path / "frame.parquet")] == [2]


@pytest.mark.parametrize("flags", [pa.array([True, False, True]), pa.array([1.0, 0.0, 1.0])], ids=["bool", "float"])
def test_flag_columns_of_bools_or_whole_floats_are_integer_labels(tmp_path, flags):
    pq.write_table(pa.table({"embedding": pa.array([[0.0, 1.0]] * 3), "y": flags}), tmp_path / "flags.parquet")
    assert read_table(tmp_path / "flags.parquet").labels.tolist() == [1, 0, 1]
    pq.write_table(pa.table({"embedding": pa.array([[0.0, 1.0]] * 3), "y": [0.5, 0.0, 1.0]}), tmp_path / "real.parquet")
    with pytest.raises(ValueError, match="labels are strings or integers"):
        read_table(tmp_path / "real.parquet")


def test_feature_columns_are_taken_by_name_in_the_order_given(tmp_path):
    pq.write_table(pa.table({"b": [1.0, 2.0], "id": ["x", "y"], "a": [3.0, 4.0]}), tmp_path / "t.parquet")
    read = read_table(tmp_path / "t.parquet", feature_columns=["a", "b"])
    np.testing.assert_array_equal(read.vectors, np.array([[3.0, 1.0], [4.0, 2.0]]))
    with pytest.raises(ValueError, match=r"missing here: 'c'"):
        read_table(tmp_path / "t.parquet", feature_columns=["a", "c"])


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".parquet", ".csv"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_vectors_name_file_and_row(tmp_path, suffix, bad):
    X = rng.standard_normal((8, 3))
    X[5, 2] = bad
    X[7, 0] = bad
    path = tmp_path / f"t{suffix}"
    if suffix == ".npy":
        np.save(path, X)
    else:
        write_table(path, {"X": X, "y": np.arange(8)})
    word = {"nan": "NaN", "inf": "Inf", "-inf": "-Inf"}[str(bad)]
    message = rf"t\{suffix}: vectors hold {word} first at row 5, dimension 2"
    if suffix == ".csv" and word == "NaN":  # CSV readers take a "nan" cell as an empty one: the first column holding one
        message = r"t\.csv: column 'X_0' row 7 is missing"
    with pytest.raises(ValueError, match=message):
        read_table(path)
    if suffix in (".npz", ".csv"):  # read whole first: refused at the call
        with pytest.raises(ValueError, match=message):
            iter_vector_batches(path, batch_rows=3)
        return
    batches = iter_vector_batches(path, batch_rows=3)
    assert np.isfinite(next(batches).vectors).all()  # rows 0-2 are clean; the error comes with the batch holding row 5
    with pytest.raises(ValueError, match=message):
        next(batches)


def test_parquet_feature_columns_with_nan_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [0.5, float("nan"), 1.0], "label": [0, 1, 0]}), path)
    with pytest.raises(ValueError, match=r"t\.parquet: vectors hold NaN first at row 1, dimension 1"):
        read_table(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_an_empty_feature_cell_is_missing_not_nan(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "beta": [0.5, None, 1.0], "label": [0, 1, 0]}), path)
    else:
        path.write_text("a,beta,label\n1.0,0.5,0\n2.0,,1\n3.0,1.0,0\n")
    with pytest.raises(ValueError, match=rf"t\{suffix}: column 'beta' row 1 is missing"):
        read_table(path)


def test_finite_rows_whose_sum_overflows_are_read(tmp_path):
    X = np.full((4, 3), 3e38, dtype=np.float32)  # each value finite, each row's float32 sum infinite
    np.save(tmp_path / "t.npy", X)
    np.testing.assert_array_equal(read_table(tmp_path / "t.npy").vectors, X)
