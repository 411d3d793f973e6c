"""Whether float32 matrix products on CUDA may use TF32, scoped to one call.

Scoring with a tied covariance runs its float32 products in TF32 (eight times
the float32 rate on an H100; AUROC equal to a float64 computation within 1e-7,
docs/performance-gpu.md); scores that subtract two distances (per-class and
diagonal covariances) and statistics never do (TF32 leaves 6e-5 in the scatters). torch's switch,
``torch.backends.cuda.matmul.allow_tf32``, is process-wide: calls wanting the
same setting run together, a call wanting the other waits until they end, and
the setting found before the first is restored when the last ends. A call
nested in another on the same thread keeps the outer setting. While a call
runs, other threads' float32 products on CUDA see its setting too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_STATE = threading.Condition()
_HELD = {"calls": 0, "setting": None, "before": None}
_DEPTH = threading.local()


@contextmanager
def tf32_products(enabled: bool, device):
    """Inside, float32 CUDA products use TF32 if ``enabled`` (no effect off CUDA)."""
    if torch.device(device).type != "cuda" or getattr(_DEPTH, "value", 0):
        yield
        return
    with _STATE:
        while _HELD["calls"] and _HELD["setting"] != enabled:
            _STATE.wait()
        if _HELD["calls"] == 0:
            _HELD["before"] = torch.backends.cuda.matmul.allow_tf32
            _HELD["setting"] = enabled
            torch.backends.cuda.matmul.allow_tf32 = enabled
        _HELD["calls"] += 1
    _DEPTH.value = 1
    try:
        yield
    finally:
        _DEPTH.value = 0
        with _STATE:
            _HELD["calls"] -= 1
            if _HELD["calls"] == 0:
                torch.backends.cuda.matmul.allow_tf32 = _HELD["before"]
                _STATE.notify_all()
