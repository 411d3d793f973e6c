"""openworld: open-world classification on pretrained embeddings.

Class-conditional Gaussians held as sufficient statistics give calibrated
class posteriors, an "unknown" decision at a chosen working point, and
learning or forgetting classes exactly, without stored examples.
"""

from openworld.estimator import OpenWorld

__version__ = "0.1.0"
__all__ = ["OpenWorld", "__version__"]
