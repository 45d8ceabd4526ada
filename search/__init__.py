"""mergesearch: automated search of layer-wise model-merge coefficients.

Importing this package is cheap: torch, ray and lm_eval are imported only by the
functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
