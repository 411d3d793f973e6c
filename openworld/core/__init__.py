"""The statistics core: moments, covariances, Gaussian heads, scores, working points (no I/O)."""
