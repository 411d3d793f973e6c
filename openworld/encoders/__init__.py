"""Encoders turn raw inputs (text, images, tables) into embeddings of shape ``(n, d)``.

Each lives in its own submodule and imports its heavy dependencies (``transformers``,
``torchvision``) only when used, so ``import openworld`` stays fast and works without
the optional extras. For text::

    from openworld.encoders.text import TextEncoder, embed_texts
"""
