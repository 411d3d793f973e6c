"""Small public benchmark datasets for open-world classification.

Loaders live in submodules (e.g. :mod:`openworld.datasets.clinc150`) and are imported
on demand, so ``import openworld`` stays cheap.
"""
