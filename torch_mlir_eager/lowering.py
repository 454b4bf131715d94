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

# A step of a pipeline list that is not a pass: after bufferization, `write_results_in_place` and then
# `static_scratch` rewrite the buffers there.
BUFFER_REWRITES = "{buffer-rewrites}"

# Linalg-on-tensors -> LLVM dialect, plain loops (LLVM O3 vectorizes the simple ones). Destination-passing style:
# results become trailing out-params the caller allocates.
LINALG_TO_LLVM = [
    # Decomposed ops (batch norm, layer norm, gelu...) arrive as chains of elementwise generics: one loop nest
    # instead of one pass over memory (and one temporary) per step.
    "func.func(linalg-fuse-elementwise-ops)",
    "func.func(refback-generalize-tensor-pad)",
    "func.func(refback-generalize-tensor-concat)",
    "func.func(tm-tensor-bufferize)",
    # Inputs are the caller's own tensor memory: `mark_inputs_readonly` makes them non-writable, so the analysis
    # copies only where a write would reach one (copy-before-write would copy at every tile write).
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    # Without modify-public-functions the public @main keeps returning its result.
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true}",
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


# Temporaries of at least this many bytes become static buffers of the kernel (see `static_scratch`).
SCRATCH_MIN_BYTES = 1 << 16


def static_scratch(module, min_bytes: int = SCRATCH_MIN_BYTES) -> int:
    """Replace each large statically shaped `memref.alloc` (a kernel's temporary: im2col columns, padded inputs,
    decomposed intermediates) by a private global buffer of the module, allocated once when the kernel is loaded.
    A heap block of megabytes is mmapped and zeroed by the OS on every call (measured: 7 MB of page clearing per
    64x56x56 conv call). Safe because a kernel never runs concurrently with itself (Kernel holds a lock per kernel)
    and is not re-entrant; allocations inside parallel loops (one per iteration, on several threads) are left.
    Run after bufferization, before deallocations are inserted (globals are not owned, so none are). Returns how
    many buffers were replaced."""
    from torch_mlir import ir
    from torch_mlir.dialects import memref as memref_d
    allocs = find_ops(module, lambda op: op.name == "memref.alloc" and not list(op.operands)
                      and not _in_parallel_region(op))
    replaced = 0
    with module.context, ir.Location.unknown():
        for op in allocs:
            t = ir.MemRefType(op.results[0].type)
            width = {"f64": 8, "i64": 8, "f32": 4, "i32": 4, "f16": 2, "bf16": 2, "i16": 2}.get(
                str(t.element_type), 1)
            size = width
            for d in t.shape:
                size *= d
            if size < min_bytes or ir.AffineMapAttr(t.layout).value != ir.AffineMap.get_identity(t.rank):
                continue
            name = f"tme_scratch{replaced}"
            g = ir.Operation.parse(f'memref.global "private" @{name} : {t} = uninitialized {{alignment = 64 : i64}}')
            ir.InsertionPoint.at_block_begin(module.body).insert(g)
            with ir.InsertionPoint(op):
                get = memref_d.GetGlobalOp(t, name)
            op.results[0].replace_all_uses_with(get.result)
            op.erase()
            replaced += 1
    return replaced


def find_ops(module, pred) -> list:
    """The operations of a module (nested included) for which pred(op) holds, in walk order."""
    from torch_mlir import ir
    found = []

    def visit(op):
        if pred(op):
            found.append(op)
        return ir.WalkResult.ADVANCE
    with module.context:
        module.operation.walk(visit)
    return found


def write_results_in_place(module) -> int:
    """A result computed into a temporary and then copied into the caller's out-param through a reshape
    (`memref.copy (expand_shape %tmp), %out`, left where the kernel works on a flattened view) is computed in
    the out-param itself: the temporary's uses take the out-param reshaped back, and the copy goes. Only where
    the out-param has no other use. Returns how many copies went."""
    from torch_mlir import ir
    from torch_mlir.dialects import memref as memref_d
    copies = find_ops(module, lambda op: op.name == "memref.copy")
    done = 0
    with module.context, ir.Location.unknown():
        for cp in copies:
            src, dst = cp.operands[0].maybe_downcast(), cp.operands[1].maybe_downcast()
            if not isinstance(dst, ir.BlockArgument) or len(list(dst.uses)) != 1 or not isinstance(src, ir.OpResult):
                continue
            view = getattr(src.owner, "operation", src.owner)
            base = view.operands[0].maybe_downcast() if view.operands else None
            if view.name != "memref.expand_shape" or not isinstance(base, ir.OpResult):
                continue
            alloc = getattr(base.owner, "operation", base.owner)
            if alloc.name != "memref.alloc" or list(alloc.operands) or len(list(view.results[0].uses)) != 1:
                continue
            with ir.InsertionPoint(alloc):
                flat = memref_d.CollapseShapeOp(alloc.results[0].type, dst, view.attributes["reassociation"])
            alloc.results[0].replace_all_uses_with(flat.result)
            cp.erase()
            view.erase()
            alloc.erase()
            done += 1
    return done


def _in_parallel_region(op) -> bool:
    """Inside a loop whose iterations may run on different threads: a buffer allocated there belongs to one
    iteration and must not become a shared static buffer."""
    parent = op.parent
    while parent is not None and parent.name != "func.func":
        if parent.name in ("scf.forall", "scf.parallel") or parent.name.startswith("omp."):
            return True
        parent = parent.parent
    return False


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
    """Run a pipeline list; a BUFFER_REWRITES entry splits it and runs the buffer rewrites in between."""
    from torch_mlir import passmanager
    if BUFFER_REWRITES in passes:
        i = passes.index(BUFFER_REWRITES)
        run(module, passes[:i], category)
        try:
            write_results_in_place(module)
            static_scratch(module)
        except Exception as e:
            raise CompileFailure(category, f"buffer rewrites: {type(e).__name__}: {e}") from None
        run(module, passes[i + 1:], category)
        return
    if not passes:
        return
    with module.context:
        try:
            pm = passmanager.PassManager.parse(pipeline_text(passes))
            pm.run(module.operation)
        except Exception as e:
            raise CompileFailure(category, diagnostic(e)) from None


def to_linalg(module) -> None:
    run(module, TORCH_TO_LINALG, "lowering")


def mark_inputs_readonly(module) -> list:
    """Every function argument `bufferization.writable = false`: kernels never write into their inputs.
    Returns the ranks of @main's inputs (for `noalias_inputs`)."""
    from torch_mlir import ir
    ranks = []
    with module.context:
        ro = ir.DictAttr.get({"bufferization.writable": ir.BoolAttr.get(False)})
        for op in module.body.operations:
            if op.operation.name == "func.func":
                inputs = op.attributes["function_type"].value.inputs
                op.attributes["arg_attrs"] = ir.ArrayAttr.get([ro] * len(inputs))
                if op.attributes["sym_name"].value == "main":
                    ranks = [ir.ShapedType(t).rank for t in inputs]
    return ranks


def noalias_inputs(module, ranks: list) -> None:
    """Mark the data pointers of @main's input memrefs `noalias` in the LLVM-dialect module: the promise that no
    input shares memory with an output, so that LLVM may keep input values in registers across stores (e.g. hoist
    a per-channel rsqrt out of the pixel loop) and vectorize copies without run-time overlap checks. Not for
    kernels that may write in place (`worker._single_pointwise`). (func-to-llvm drops `llvm.noalias` on memref
    arguments, hence here.)"""
    from torch_mlir import ir
    with module.context:
        for op in module.body.operations:
            if op.operation.name == "llvm.func" and op.attributes["sym_name"].value == "main":
                n = len(op.regions[0].blocks[0].arguments)
                attrs = [ir.DictAttr.get({}) for _ in range(n)]
                i = 0
                for r in ranks:      # descriptor fields: allocated ptr, aligned ptr, offset, sizes[r], strides[r]
                    attrs[i + 1] = ir.DictAttr.get({"llvm.noalias": ir.UnitAttr.get()})
                    i += 3 + 2 * r
                op.attributes["arg_attrs"] = ir.ArrayAttr.get(attrs)


# TMTensor bufferization leaves `bufferization.to_tensor` ops that One-Shot Analysis refuses; for those modules,
# bufferize without the analysis (a copy before every write: slower, always correct).
LINALG_TO_LLVM_COPYING = [p.replace("one-shot-bufferize{", "one-shot-bufferize{copy-before-write ")
                          for p in LINALG_TO_LLVM]


def to_llvm(module, noalias: bool = False):
    """The LLVM-dialect module for a Linalg module (which may be consumed): plain loops, DPS, C interface.
    `noalias`: see `noalias_inputs`. (Splitting large loop nests across threads with scf.forall -> OpenMP was
    tried and measured slower: the outlined parallel body loses the noalias facts, so batch norm recomputed its
    per-channel rsqrt per element again, 854 us instead of 206.)"""
    from torch_mlir import ir
    ranks = mark_inputs_readonly(module)
    with module.context:
        for op in module.body.operations:
            if op.operation.name == "func.func":
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    text = str(module)
    try:
        run(module, LINALG_TO_LLVM, "llvm")
    except CompileFailure:
        with module.context:
            module = ir.Module.parse(text)
        run(module, LINALG_TO_LLVM_COPYING, "llvm")
    if noalias:
        noalias_inputs(module, ranks)
    return module
