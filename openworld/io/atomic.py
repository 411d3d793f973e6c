"""Writing a file so that no reader ever sees half of it: every file openworld writes (models, tables,
fine-tuned encoders, cached embeddings, reports) goes through here."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` for the caller to write (by name, as safetensors' ``save_file`` needs).

    Once written it is synced to disk, given the mode of the file it replaces (or, for a new file, the one a
    plain ``open`` gives under the umask: some writers create 0600 files) and renamed over ``path``. On any
    failure it is removed and ``path`` is left as it was. A symbolic link is followed, so the file it names
    is replaced and the link kept. A path that is no regular file (``/dev/null``, a pipe, a terminal) or lies
    under ``/dev`` or ``/proc`` (``/dev/stdout``) cannot be replaced: it is handed over to write into directly.
    """
    try:
        existing = os.stat(path)  # through a link
    except FileNotFoundError:
        existing = None
    special = existing is not None and not stat.S_ISREG(existing.st_mode) and not stat.S_ISDIR(existing.st_mode)
    if special or str(Path(path).absolute()).startswith(("/dev/", "/proc/")):  # /dev/stdout, /dev/fd/3 ...
        yield Path(path)
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no folder {path.parent}")
    temporary = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask()
        with contextlib.suppress(OSError):  # some filesystems (vfat, CIFS) refuse modes; the file is still whole
            os.chmod(temporary, mode)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on an open binary file that replaces ``path`` only once it is whole."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
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
