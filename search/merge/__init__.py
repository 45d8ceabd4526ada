"""Merge engine: merge methods (``methods``), the light method table (``info``) and the
in-place :class:`~search.merge.materializer.Materializer`.

Only ``info`` is imported here; the torch-based modules load on first use.
"""

from .info import METHODS, MethodInfo, method_info

__all__ = ["METHODS", "MethodInfo", "method_info"]
