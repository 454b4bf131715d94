"""Pass pipelines as data (Torch -> Linalg-on-tensors -> LLVM dialect), run with failures turned into typed errors."""
from __future__ import annotations

import re

from .errors import CompileFailure

# What torch_mlir.fx.stateless_fx_import runs for LINALG_ON_TENSORS output.
TORCH_TO_LINALG = [
    "func.func(torch-match-quantized-custom-ops)",
    "torchdynamo-export-to-torch-backend-pipeline{extra-library=}",
    "torch-backend-to-linalg-on-tensors-backend-pipeline",
]

# Linalg-on-tensors -> LLVM dialect, plain loops (LLVM O3 vectorizes the simple ones). Destination-passing style:
# results become trailing out-params the caller allocates.
LINALG_TO_LLVM = [
    "func.func(refback-generalize-tensor-pad)",
    "func.func(refback-generalize-tensor-concat)",
    "func.func(tm-tensor-bufferize)",
    # Inputs are the caller's own tensor memory: `mark_inputs_readonly` makes them non-writable, so the analysis
    # copies only where a write would reach one (copy-before-write would copy at every tile write).
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    # Without modify-public-functions the public @main keeps returning its result.
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true}",
    "canonicalize",
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
    "func.func(arith-expand)",
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


def pipeline_text(passes) -> str:
    return "builtin.module(" + ",".join(passes) + ")"


_LOC = re.compile(r"loc\([^)]*\)|\"[^\"]*\":\d+:\d+:?")


def diagnostic(e: Exception) -> str:
    """The first error diagnostic of an MLIRError (or the exception's first line), without locations."""
    text = str(e)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in lines:
        if "error:" in l:
            msg = _LOC.sub("", l.split("error:", 1)[1]).strip()
            return msg.split(":", 1)[1].strip() if msg.startswith("unknown:") else (msg or l)
    for l in lines[1:]:
        if l.startswith("error") or "failed" in l or "illegal" in l:
            return _LOC.sub("", l).strip()
    return lines[0] if lines else type(e).__name__


def run(module, passes, category: str) -> None:
    from torch_mlir import passmanager
    with module.context:
        try:
            pm = passmanager.PassManager.parse(pipeline_text(passes))
            pm.run(module.operation)
        except Exception as e:
            raise CompileFailure(category, diagnostic(e)) from None


def to_linalg(module) -> None:
    run(module, TORCH_TO_LINALG, "lowering")


def mark_inputs_readonly(module) -> None:
    """Every function argument `bufferization.writable = false`: kernels never write into their inputs."""
    from torch_mlir import ir
    with module.context:
        for op in module.body.operations:
            if op.operation.name == "func.func":
                n = len(op.attributes["function_type"].value.inputs)
                ro = ir.DictAttr.get({"bufferization.writable": ir.BoolAttr.get(False)})
                op.attributes["arg_attrs"] = ir.ArrayAttr.get([ro] * n)


# TMTensor bufferization leaves `bufferization.to_tensor` ops that One-Shot Analysis refuses; for those modules,
# bufferize without the analysis (a copy before every write: slower, always correct).
LINALG_TO_LLVM_COPYING = [p.replace("one-shot-bufferize{", "one-shot-bufferize{copy-before-write ")
                          for p in LINALG_TO_LLVM]


def to_llvm(module):
    """The LLVM-dialect module for a Linalg module (which may be consumed): plain loops, DPS, C interface."""
    from torch_mlir import ir
    mark_inputs_readonly(module)
    with module.context:
        for op in module.body.operations:
            if op.operation.name == "func.func":
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    text = str(module)
    try:
        run(module, LINALG_TO_LLVM, "llvm")
        return module
    except CompileFailure:
        with module.context:
            module = ir.Module.parse(text)
        run(module, LINALG_TO_LLVM_COPYING, "llvm")
        return module
