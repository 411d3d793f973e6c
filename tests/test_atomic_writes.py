"""The one writer every file goes through: whole files or none, links and special files respected.

Checked against the file system itself (``os.stat``, reading the files back), not against the writer.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest

from openworld.io.atomic import write_atomically, write_text_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def half_then_fail(file):
        file.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_atomically(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_new_file_honours_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text_atomically(tmp_path / "new.txt", "a")
        (tmp_path / "old.txt").write_text("a")
        os.chmod(tmp_path / "old.txt", 0o600)
        write_text_atomically(tmp_path / "old.txt", "b")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "old.txt").st_mode) == 0o600
    assert (tmp_path / "old.txt").read_text() == "b"


def test_a_link_is_kept_and_the_file_it_names_replaced(tmp_path):
    (tmp_path / "real.txt").write_text("old")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    write_text_atomically(tmp_path / "link.txt", "new")
    assert os.path.islink(tmp_path / "link.txt")
    assert (tmp_path / "real.txt").read_text() == "new"


def test_a_pipe_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text_atomically(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == ["through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_null_stays_a_device():
    write_text_atomically("/dev/null", "nothing")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_missing_folder_is_named_and_a_long_name_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no folder {tmp_path / 'absent'}"):
        write_text_atomically(tmp_path / "absent" / "x.json", "a")
    long_name = tmp_path / ("a" * 250)  # the temporary's own name must stay under the file system's 255
    write_text_atomically(long_name, "a")
    assert long_name.read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == [long_name.name]
