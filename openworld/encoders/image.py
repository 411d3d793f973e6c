"""Images to embeddings with any torch module, and a small CNN for 28 × 28 digits.

:class:`TorchEncoder` wraps a backbone (a torchvision model with its head
removed, :attr:`SmallCNN.backbone`, anything mapping a batch to ``(batch, …)``)
into the ``encode(inputs) -> (n, d)`` contract the rest of openworld uses.
:func:`train_small_cnn` trains :class:`SmallCNN` on the known classes only, so
its features have never seen the unknown ones (the open-set protocol on
MNIST-5k).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from openworld.encoders.progress import progress_bar

__all__ = ["SmallCNN", "TorchEncoder", "train_small_cnn"]

#: MNIST's pixel mean and standard deviation (on [0, 1] pixels), the usual input standardisation.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _as_batch_tensor(inputs) -> torch.Tensor:
    """``inputs: (n, …)`` NumPy or torch, floating point, as a tensor (no copy where possible)."""
    if isinstance(inputs, torch.Tensor):
        tensor = inputs.detach()
    else:
        array = np.asarray(inputs)
        if array.dtype == object:
            raise TypeError("images must be a numeric NumPy array or a torch tensor of shape (n, ...)")
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if tensor.dim() < 1:
        raise ValueError("images must have a leading batch axis: shape (n, ...)")
    if not tensor.is_floating_point():
        raise ValueError(
            f"images have dtype {tensor.dtype}; convert them to floating point in the range the module "
            "expects (e.g. pixels / 255 for [0, 1]) first"
        )
    if tensor.shape[0] == 0:
        raise ValueError("images is empty: there is nothing to encode")
    return tensor


class TorchEncoder:
    """Any ``torch.nn.Module`` as an encoder: ``encode(images: (n, …)) -> (n, d)`` float32 NumPy.

    The module runs in eval mode (restored afterwards) under
    ``torch.inference_mode``, ``batch_size`` rows at a time; outputs of shape
    ``(batch, …)`` are flattened to ``(batch, d)``. ``device=None`` runs where
    the module's parameters are (CPU for a parameter-free module); a device
    moves the module there. Inputs are cast to the module's floating dtype. A
    rich progress bar (stderr) shows when more than one batch is needed and
    ``progress`` is on. ``name`` keys embedding caches; it defaults to the
    module's class name.
    """

    def __init__(self, module: nn.Module, batch_size: int = 256, device=None, progress: bool = True, name: str | None = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.module = module
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.name = name if name is not None else f"torch:{type(module).__name__}"

    def __repr__(self) -> str:
        return (
            f"TorchEncoder({type(self.module).__name__}, batch_size={self.batch_size}, "
            f"device={self.device!r}, progress={self.progress})"
        )

    def encode(self, images, *, progress: bool | None = None) -> np.ndarray:
        """Embed ``images: (n, …)`` (NumPy or torch, floating point); returns float32 ``(n, d)``."""
        inputs = _as_batch_tensor(images)
        module = self.module
        if self.device is not None:
            module.to(self.device)
        device, dtype = _module_device(module), _module_dtype(module)
        n, size = inputs.shape[0], self.batch_size
        show = (self.progress if progress is None else progress) and n > size
        bar, task = progress_bar("Embedding images", n) if show else (None, None)
        parts = []
        modes = {part: part.training for part in module.modules()}  # each restored: a frozen BatchNorm stays frozen
        module.eval()
        try:
            if bar is not None:
                bar.start()
            with torch.inference_mode():
                for start in range(0, n, size):
                    batch = inputs[start : start + size].to(device=device, dtype=dtype)
                    out = module(batch)
                    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != batch.shape[0]:
                        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                        raise ValueError(f"the module returned {shape} for a batch of {batch.shape[0]}; expected (batch, ...)")
                    parts.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
                    if bar is not None:
                        bar.advance(task, batch.shape[0])
        finally:
            for part, training in modes.items():
                part.training = training
            if bar is not None:
                bar.stop()
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class _Standardise(nn.Module):
    """``(x − mean) / std`` inside the model, so raw [0, 1] pixels go in at training and serving alike."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """A small convnet for 28 × 28 single-channel digits: ``(n, 1, 28, 28)`` in [0, 1] → logits ``(n, C)``.

    Two conv–ReLU–pool blocks (16 and 32 channels) and one hidden layer of
    ``embedding_dim`` units; :meth:`features` (= :attr:`backbone`) is that
    hidden layer, the penultimate embedding ``(n, embedding_dim)``. Small so
    that it trains on a 2-core CPU in seconds. ``classes_`` (set by
    :func:`train_small_cnn`) maps logit columns to labels.
    """

    def __init__(self, n_classes: int = 10, embedding_dim: int = 64):
        super().__init__()
        self.backbone = nn.Sequential(
            _Standardise(MNIST_MEAN, MNIST_STD),
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 × 14
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7 × 7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, embedding_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(embedding_dim, n_classes)
        self.classes_ = np.arange(n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, embedding_dim) penultimate embedding."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) logits."""
        return self.head(self.backbone(x))


def train_small_cnn(
    images,
    labels,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    embedding_dim: int = 64,
    seed: int = 0,
    num_threads: int = 1,
) -> SmallCNN:
    """Train a :class:`SmallCNN` on ``images: (n, 1, 28, 28)`` in [0, 1] with int ``labels: (n,)``.

    Adam with cross-entropy, mini-batches reshuffled every epoch, on the CPU.
    The labels may be any ints (e.g. the known digits 0–5); the model's
    ``classes_`` holds them in logit-column order. Deterministic for a seed:
    initialisation and shuffling draw from ``seed`` alone (the global torch
    RNG is restored afterwards), no nondeterministic op is used, and training
    runs on ``num_threads`` intra-op threads (restored afterwards): with one,
    results do not depend on the machine's core count, and convolutions this
    small run no slower — on a shared 2-core CPU two threads were up to 20×
    slower when the other core was busy. 2,400 images × 8 epochs take a
    few seconds. Returns the model in eval mode.
    """
    x = _as_batch_tensor(images).to(torch.float32).cpu()
    if tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must have shape (n, 1, 28, 28), got {tuple(x.shape)}")
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be {x.shape[0]} ints, got shape {labels.shape} of dtype {labels.dtype}")
    classes, targets = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise ValueError("train_small_cnn needs at least 2 classes")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    y = torch.from_numpy(targets.astype(np.int64))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(num_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SmallCNN(n_classes=int(classes.size), embedding_dim=embedding_dim)
            model.classes_ = classes
            optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
            loss_fn = nn.CrossEntropyLoss()
            shuffler = torch.Generator().manual_seed(seed)
            model.train()
            for _ in range(epochs):
                order = torch.randperm(x.shape[0], generator=shuffler)
                for start in range(0, x.shape[0], batch_size):
                    idx = order[start : start + batch_size]
                    optimiser.zero_grad(set_to_none=True)
                    loss_fn(model(x[idx]), y[idx]).backward()
                    optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
