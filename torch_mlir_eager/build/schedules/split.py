"""The split-loops family: big elementwise loop nests cut into one slice per thread."""
from __future__ import annotations

import math

from torch_mlir import ir

from ...errors import CompileFailure
from ..rewrites import find_ops
from .base import Schedule


# Elementwise loop nests (modules without a contraction or a reduction), after elementwise fusion: each
# linalg.generic big enough is split across threads along its outermost dim that has a slice per thread; the
# slices keep plain loops (LLVM vectorizes them as in the plain pipeline). Measured at 2 threads: add
# 1x64x56x56 65 -> 14 us (native 13), relu 1x64x112x112 229 -> 110 (native 107), gelu 1x128x1024 64 -> 27 (26).
SPLIT_MIN_ELEMENTS = 1 << 15


# A dynamic size counts as this many elements towards SPLIT_MIN_ELEMENTS (the sequence lengths and image sizes
# dynamic kernels serve are rarely smaller; a kernel too small to gain from threads loses a few microseconds).
DYNAMIC_EXTENT = 32


SPLIT_TAG = "tme.split{i}"        # one per generic to split, each with its own split


SPLIT_FORALL = """
  %s{i}_0 = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.split{i}}} in %root
    : (!transform.any_op) -> !transform.any_op
  %s{i}, %s{i}_forall = transform.structured.tile_using_forall %s{i}_0 num_threads [{counts}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)"""


SPLIT_SCRIPT = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
{splits}
  transform.yield
}}
transform.named_sequence @lower(%root: !transform.any_op {{transform.consumed}}) {{
  transform.yield
}}
"""


def _split_dim(g, threads: int):
    """The loop dim to split `g` (a linalg.generic) along, or None: the outermost static dim whose extent gives
    every thread a slice, else the outermost dynamic dim, where the op has at least SPLIT_MIN_ELEMENTS of work.
    Only elementwise generics (no reduction dim) without a math op on a broadcast input: in the OpenMP-outlined
    body LLVM no longer knows that the inputs do not alias the output, so it recomputes a per-channel rsqrt per
    element (batch norm: 854 us instead of 206) and keeps a reduction's accumulator in memory (layer norm 128x256:
    41 us instead of 13)."""
    its = [str(t) for t in g.attributes["iterator_types"]]
    if any("parallel" not in it for it in its):
        return None
    maps = [ir.AffineMapAttr(m).value for m in g.attributes["indexing_maps"]]
    n_in = len(g.operands) - len(g.results)
    ranges = [0] * len(its)          # -1: dynamic
    for v, mp in zip(g.operands, maps):
        t = ir.ShapedType(v.type)
        for e, size in zip(mp.results, t.shape):
            if isinstance(e, ir.AffineDimExpr):
                ranges[e.position] = -1 if size < 0 or ranges[e.position] < 0 else max(ranges[e.position], size)
    # (a dynamic generic's size is the function result's, which `plan` checked: flattened, it has lost its static
    # factors)
    if any(r == 0 for r in ranges) or (min(ranges) > 0 and math.prod(ranges) < SPLIT_MIN_ELEMENTS):
        return None
    inner = len(its) - 1
    broadcast = any(not any(isinstance(e, ir.AffineDimExpr) and e.position == inner for e in mp.results)
                    for mp in maps[:n_in])
    if broadcast and any(op.operation.name.startswith("math.") for op in g.regions[0].blocks[0].operations):
        return None
    # a static dim first (every thread's share the same at every size), then a dynamic one
    return next((d for d, r in enumerate(ranges) if r >= threads),
                next((d for d, r in enumerate(ranges) if r < 0), None))


def _elements(sizes) -> int:
    """Elements of a shape, a dynamic size (-1) counted as DYNAMIC_EXTENT."""
    return math.prod(DYNAMIC_EXTENT if d < 0 else d for d in sizes)


def split_loops(module, threads: int) -> str:
    """Tag each generic worth splitting (SPLIT_TAG) and return the SPLIT_SCRIPT that splits each along its dim
    (`_split_dim`); raises CompileFailure when none is worth it. The module's elementwise ops are fused and
    flattened already (lowering.flatten_elementwise)."""
    splits = []
    with module.context:
        for g in find_ops(module, lambda op: op.name == "linalg.generic"):
            d = _split_dim(g, threads)
            if d is None:
                continue
            i = len(splits)
            g.attributes[SPLIT_TAG.format(i=i)] = ir.UnitAttr.get()
            n = len(g.attributes["iterator_types"])
            counts = ", ".join(str(threads) if j == d else "0" for j in range(n))
            splits.append(SPLIT_FORALL.format(i=i, counts=counts))
    if not splits:
        raise CompileFailure("llvm", "split_loops: no loop nest big enough to split")
    return SPLIT_SCRIPT.format(splits="".join(splits))


def plan(module, func, threads: int):
    """split-loops for a module of elementwise work only (no contraction): one whose result is big enough (a dynamic
    size counted as DYNAMIC_EXTENT) and that has no reduction (splitting one measured slower, see _split_dim); else
    None."""
    if threads <= 1:
        return None
    results = func.attributes["function_type"].value.results
    def reduces(op):
        return op.name.startswith("linalg.") and "iterator_types" in op.attributes and \
            "reduction" in str(op.attributes["iterator_types"])
    if any(_elements(ir.ShapedType(t).shape) >= SPLIT_MIN_ELEMENTS for t in results) and \
            not find_ops(module, reduces):
        return Schedule("split-loops", "", threads)
    return None


FAMILIES = {"split-loops": lambda module, s: split_loops(module, s.threads)}
