"""Benchmarks of openworld against peer detectors (``make bench-quality``).

This package must stay importable without openworld installed: the pytorch-ood
step (:mod:`benchmarks.peers_pytorch_ood`) runs in a separate environment
(``bench-env``) and imports only :mod:`benchmarks.store` from here.
"""
