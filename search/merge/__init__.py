"""Merge engine: merge methods (``methods``, one file each, registered in ``METHODS``), their
kernels (``kernels``) and the in-place :class:`~search.merge.materializer.Materializer`.

Only ``methods`` is imported here (no torch); the kernels load on first use.
"""

from .methods import METHODS, MergeMethod, method_info

__all__ = ["METHODS", "MergeMethod", "method_info"]
