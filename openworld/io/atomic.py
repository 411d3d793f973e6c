"""Writing a file so that no reader ever sees half of it: every file openworld writes (models, tables,
fine-tuned encoders, cached embeddings, reports) goes through here."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` for the caller to write (by name, as safetensors' ``save_file`` needs).

    Once written it is synced to disk, given the permissions a plain ``open`` gives (the umask: some writers
    create 0600 files) and renamed over ``path``. On any failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on an open binary file that replaces ``path`` only once it is whole."""
    with atomic_path(path) as temporary, open(temporary, "xb") as file:
        write(file)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 so that it replaces ``path`` only once whole (reports, JSON)."""
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def _umask() -> int:
    """The process's umask; read from /proc where it can be (setting it to read it races other threads)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
