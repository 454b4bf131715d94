"""The passes around a schedule's transform script: after tiling, bufferization, vectors to LLVM."""
from __future__ import annotations

from torch_mlir import ir

from ..lowering import BUFFER_REWRITES


# Stages after @tile (each a pass pipeline); @lower runs between the second and the third.
AFTER_TILE = [
    # a masked partial tile (base.PEELED) first: canonicalization would fold more than one op into a vector.mask
    "func.func(lower-vector-mask)",
    "canonicalize", "cse", "loop-invariant-subset-hoisting", "canonicalize",
]


BUFFERIZE = [
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    "canonicalize",      # folds expand_shape(collapse_shape(alloc)) so that the result is an alloc to hoist
    "buffer-results-to-out-params{hoist-static-allocs=true hoist-dynamic-allocs=true modify-public-functions=true}",
    "canonicalize", "cse",
    BUFFER_REWRITES,
    "ownership-based-buffer-deallocation", "canonicalize", "buffer-deallocation-simplification",
    "bufferization-lower-deallocations", "canonicalize",
]


VECTOR_TO_LLVM = [
    "canonicalize",
    "func.func(refback-munge-memref-copy)",       # before linalg-to-loops: no memrefCopy calls
    "func.func(convert-linalg-to-loops)",
    "canonicalize", "cse",
    "func.func(lower-vector-mask)",
    "func.func(lower-vector-multi-reduction)",     # the dot-product tile's final reduction across the vector
    "convert-vector-to-scf{full-unroll=true target-rank=1}",
    "func.func(lower-affine)",
    "{threads}",
    "convert-scf-to-cf",
    "func.func(refback-expand-ops-for-llvm)",      # as in the plain pipeline (split loop nests may hold any op)
    "func.func(arith-expand{include-bf16=true})",
    "expand-strided-metadata",
    "fold-memref-alias-ops",
    "lower-affine",
    "canonicalize", "cse",
    # outerproduct: 10x faster than `dot` for this tiling (shared notes, mlir-cpu-codegen.md).
    "convert-vector-to-llvm{vector-contract-lowering=outerproduct reassociate-fp-reductions=true}",
    # aligned_alloc keeps the pointer's provenance (no ptrtoint round trip): LLVM then knows a temporary does not
    # alias the arguments and vectorizes copies into it.
    "finalize-memref-to-llvm{use-aligned-alloc=true}",
    "func.func(convert-arith-to-llvm)",
    "convert-math-to-llvm",
    "convert-math-to-libm",
    "convert-index-to-llvm",
    "convert-openmp-to-llvm",
    "convert-func-to-llvm",
    "convert-cf-to-llvm",
    "convert-ub-to-llvm",
    "reconcile-unrealized-casts",
]


# The "{threads}" slot: forall loops become OpenMP parallel loops (canonicalize right after: alloca_scope blocks).
THREADED = "scf-forall-to-parallel,convert-scf-to-openmp{{num-threads={n}}},canonicalize"


SERIAL = "scf-forall-to-for"


def allow_fma(module) -> None:
    """Mark float multiplies and adds `contract`: LLVM then fuses the tile's multiply-add pairs into FMAs (without
    it, 8x32 at 64x576x3136 ran at 179 GFLOP/s instead of 299). A fused multiply-add rounds once instead of twice,
    which is what oneDNN and MKL do too; contractions are qualified with a tolerance for summation order anyway."""
    with module.context:
        contract = ir.Attribute.parse("#arith.fastmath<contract>")

        def visit(op):
            if op.name in ("arith.mulf", "arith.addf"):
                op.attributes["fastmath"] = contract
            return ir.WalkResult.ADVANCE
        module.operation.walk(visit)
