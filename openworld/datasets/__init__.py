"""Small public benchmark datasets for open-world classification.

Loaders live in submodules (e.g. :mod:`openworld.datasets.clinc150`) and are imported
on demand, so ``import openworld`` stays cheap.
"""

import os
from pathlib import Path

DATA_ENV = "OPENWORLD_DATA"


def data_folders(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders that may hold dataset ``name``: ``root`` (or ``$OPENWORLD_DATA``, else
    ``../shared/data/<name>`` relative to the working directory) itself, or its ``<name>/`` subfolder."""
    if root is not None:
        base = Path(root)
    elif os.environ.get(DATA_ENV):
        base = Path(os.environ[DATA_ENV])
    else:
        base = Path("..") / "shared" / "data" / name
    return [base, base / name]
