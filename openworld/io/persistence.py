"""Model files: one safetensors file whose header carries a JSON manifest.

Tensors go through safetensors (no code runs on load, unlike pickle); the
manifest (format version, hyper-parameters, labels, working point) sits in
the header's metadata, with a SHA-256 of the manifest and the tensor bytes
so a garbled file fails loudly instead of giving wrong numbers. Writes go to a temporary file
beside the target and are renamed into place, so a crash never leaves half
a model under the real name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from openworld.io.atomic import atomic_path

FORMAT = "openworld.model"
FORMAT_VERSION = 1
MANIFEST_KEY = "openworld"


class ModelFileError(ValueError):
    """The file is not a readable openworld model of a supported version."""


def model_digest(tensors: dict[str, torch.Tensor], header: dict) -> str:
    """SHA-256 over the manifest (canonical JSON) and the names, dtypes, shapes and bytes of the tensors."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():  # an empty tensor has no bytes (and a stride view(uint8) refuses)
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_model_file(path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Atomically write ``tensors`` and the JSON ``manifest`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    header["sha256"] = model_digest(tensors, header)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={MANIFEST_KEY: json.dumps(header)})
    return path


def read_model_file(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and manifest from ``path``; ModelFileError names what is wrong with a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{str(path)!r} is not a readable model file (truncated or not safetensors): {error}") from None
    if MANIFEST_KEY not in metadata:
        raise ModelFileError(f"{str(path)!r} is a safetensors file but not an openworld model (no manifest)")
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{str(path)!r} has a damaged manifest: {error}") from None
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{str(path)!r} is not an openworld model (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} has model format version {manifest.get('format_version')!r}; "
            f"this openworld reads version {FORMAT_VERSION}"
        )
    recorded = manifest.pop("sha256", None)
    if model_digest(tensors, manifest) != recorded:
        raise ModelFileError(f"{str(path)!r} is damaged: its contents do not match the checksum in its manifest")
    return tensors, manifest
