"""Pass pipelines as data (Torch -> Linalg-on-tensors -> LLVM dialect), with the buffer rewrites between them."""
from __future__ import annotations

from torch_mlir import ir

from ..errors import CompileFailure
from . import passes, rewrites


# What torch_mlir.fx.stateless_fx_import runs for LINALG_ON_TENSORS output.
TORCH_TO_LINALG = [
    "func.func(torch-match-quantized-custom-ops)",
    "torchdynamo-export-to-torch-backend-pipeline{extra-library=}",
    "torch-backend-to-linalg-on-tensors-backend-pipeline",
]


# A step of a pipeline list that is not a pass: after bufferization, `write_results_in_place` and then
# `static_scratch` rewrite the buffers there.
BUFFER_REWRITES = "{buffer-rewrites}"


LINALG_TO_LLVM = [
    "func.func(refback-generalize-tensor-pad)",
    "func.func(refback-generalize-tensor-concat)",
    "func.func(tm-tensor-bufferize)",
    # Inputs are the caller's own tensor memory: `mark_inputs_readonly` makes them non-writable, so the analysis
    # copies only where a write would reach one (copy-before-write would copy at every tile write).
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    # Without modify-public-functions the public @main keeps returning its result.
    "buffer-results-to-out-params{hoist-static-allocs=true hoist-dynamic-allocs=true modify-public-functions=true}",
    "canonicalize",
    BUFFER_REWRITES,
    # Temporaries (and the result copy the hoisting leaves behind) get freed: no leak per call.
    "ownership-based-buffer-deallocation",
    "canonicalize",
    "buffer-deallocation-simplification",
    "bufferization-lower-deallocations",
    "canonicalize",
    "func.func(tm-tensor-to-loops)",
    # Before linalg-to-loops: a strided memref.copy would otherwise call memrefCopy, absent from the wheel.
    "func.func(refback-munge-memref-copy)",
    "func.func(convert-linalg-to-loops)",
    "func.func(lower-affine)",
    "convert-scf-to-cf",
    "func.func(refback-expand-ops-for-llvm)",
    # bf16 conversions as integer ops: LLVM would call libgcc's __truncsfbf2 on CPUs without AVX-512 BF16, which
    # the JIT does not link ("Symbols not found", the worker dies)
    "func.func(arith-expand{include-bf16=true})",
    "func.func(convert-math-to-llvm)",
    "convert-math-to-libm",
    "expand-strided-metadata",
    "finalize-memref-to-llvm",
    "lower-affine",
    "convert-bufferization-to-memref",
    "finalize-memref-to-llvm",
    "func.func(convert-arith-to-llvm)",
    "convert-index-to-llvm",
    "convert-vector-to-llvm",
    "convert-func-to-llvm",
    "convert-cf-to-llvm",
    "convert-complex-to-llvm",
    "convert-ub-to-llvm",
    "reconcile-unrealized-casts",
]


# TMTensor bufferization leaves `bufferization.to_tensor` ops that One-Shot Analysis refuses; for those modules,
# bufferize without the analysis (a copy before every write: slower, always correct).
LINALG_TO_LLVM_COPYING = [p.replace("one-shot-bufferize{", "one-shot-bufferize{copy-before-write ")
                          for p in LINALG_TO_LLVM]


def run(module, pipeline, category: str) -> None:
    """Run a pipeline list; a BUFFER_REWRITES entry splits it and runs the buffer rewrites in between."""
    if BUFFER_REWRITES in pipeline:
        i = pipeline.index(BUFFER_REWRITES)
        passes.run(module, pipeline[:i], category)
        try:
            rewrites.write_results_in_place(module)
            rewrites.static_scratch(module)
        except Exception as e:
            raise CompileFailure(category, f"buffer rewrites: {type(e).__name__}: {e}") from None
        passes.run(module, pipeline[i + 1:], category)
        return
    passes.run(module, pipeline, category)


def to_linalg(module) -> None:
    run(module, TORCH_TO_LINALG, "lowering")
    rewrites.drop_reciprocal_asserts(module)


def to_llvm(module, noalias: bool = False):
    """The LLVM-dialect module for a Linalg module (which may be consumed): plain loops, DPS, C interface.
    `noalias`: see `noalias_inputs`. (Splitting large loop nests across threads with scf.forall -> OpenMP was
    tried and measured slower: the outlined parallel body loses the noalias facts, so batch norm recomputed its
    per-channel rsqrt per element again, 854 us instead of 206.)"""
    ranks = rewrites.mark_inputs_readonly(module)
    with module.context:
        for op in module.body.operations:
            if rewrites.defined(op):
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    text = str(module)
    try:
        run(module, LINALG_TO_LLVM, "llvm")
    except CompileFailure:
        with module.context:
            module = ir.Module.parse(text)
        run(module, LINALG_TO_LLVM_COPYING, "llvm")
    if noalias:
        rewrites.noalias_inputs(module, ranks)
    return module


# What repro.sh replays for a failing stage, on that stage's dumped input: the pipeline text for torch-mlir-opt.
# (`to_llvm` also marks the inputs read-only and runs the buffer rewrites in the middle: Python, not passes.)
REPLAY = {"lowering": passes.pipeline_text(TORCH_TO_LINALG),
          "llvm": passes.pipeline_text(rewrites.FUSE + [p for p in LINALG_TO_LLVM if p != BUFFER_REWRITES])}
