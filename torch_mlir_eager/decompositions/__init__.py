"""Our decompositions, each registered beside its definition (registry.py), grouped by kind of op.

Used by the worker side only (build/graph.py traces a call through them); importing this package registers them all.
"""
from . import bessel, common, libm, linalg, nn, polynomials, qr, special  # noqa: F401  (each registers its ops)
from .registry import REGISTRY, decompose_only, for_op, has, table

__all__ = ["REGISTRY", "decompose_only", "for_op", "has", "table"]
