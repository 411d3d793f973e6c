"""Evaluation of open-world classifiers on labelled data.

:mod:`openworld.evaluation.report` scores a fitted model on rows whose labels
say which are in-distribution (a class the model knows) and which are
out-of-distribution (any other label, or an explicit mask), and gathers
accuracy, detection (AUROC, AUPR, FPR@95), calibration (ECE) and
working-point metrics into a report that is written as JSON or as one
self-contained HTML file (``openworld eval``).
"""
