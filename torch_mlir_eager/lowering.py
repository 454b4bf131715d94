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
# Decomposed ops (batch norm, layer norm, gelu...) arrive as chains of elementwise generics: one loop nest
# instead of one pass over memory (and one temporary) per step. Runs first (`flatten_elementwise`), not in
# LINALG_TO_LLVM: its reshape propagation would turn flattened loops back into nests.
FUSE = ["func.func(linalg-fuse-elementwise-ops)"]

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
SCRATCH_SYMBOL = "tme_scratch"     # their names: a kernel whose code has one is not re-entrant (kernel.py)


def static_scratch(module, min_bytes: int = SCRATCH_MIN_BYTES) -> int:
    """Replace each large statically shaped `memref.alloc` (a kernel's temporary: im2col columns, padded inputs,
    decomposed intermediates) by a private global buffer of the module, allocated once when the kernel is loaded.
    A heap block of megabytes is mmapped and zeroed by the OS on every call (measured: 7 MB of page clearing per
    64x56x56 conv call). Safe because such a kernel never runs concurrently with itself (Kernel calls it under a
    lock when its code names SCRATCH_SYMBOL); allocations inside parallel loops (one per iteration, on several
    threads) are left.
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
            name = f"{SCRATCH_SYMBOL}{replaced}"
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
    """A result computed into a temporary and then copied into the caller's out-param, directly (`memref.copy
    %tmp, %out`, left where the kernel writes the temporary through a collapsed view) or through a reshape
    (`memref.copy (expand_shape %tmp), %out`, where it works on a flattened view), is computed in the out-param
    itself: the temporary's uses take the out-param (reshaped back), and the copy goes. Only where the out-param
    has no other use. Returns how many copies went."""
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
            if view.name == "memref.alloc" and not list(view.operands) and src.type == dst.type:
                src.replace_all_uses_with(dst)
                cp.erase()
                view.erase()
                done += 1
                continue
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


def _horner(out: str, x: str, coeffs) -> str:
    """MLIR lines computing %out = polynomial in %x (f32), highest coefficient first, by Horner's rule."""
    lines = [f"  %{out}_c0 = arith.constant {coeffs[0]!r} : f32"]
    acc = f"%{out}_c0"
    for i, c in enumerate(coeffs[1:], 1):
        step = f"%{out}" if i == len(coeffs) - 1 else f"%{out}_a{i}"
        lines += [f"  %{out}_c{i} = arith.constant {c!r} : f32",
                  f"  %{out}_m{i} = arith.mulf {acc}, %{x} : f32",
                  f"  {step} = arith.addf %{out}_m{i}, %{out}_c{i} : f32"]
        acc = step
    return "\n".join(lines) + "\n"


def _clamped(lo: float, hi: float) -> str:
    """MLIR lines computing %x = %x0 clamped to [lo, hi]; NaN stays NaN (maximumf / minimumf propagate it)."""
    return (f"  %lo = arith.constant {lo!r} : f32\n  %hi = arith.constant {hi!r} : f32\n"
            "  %x1 = arith.maximumf %x0, %lo : f32\n  %x = arith.minimumf %x1, %hi : f32")


# Vectorizable f32 exp and erf, inlined where math.exp / math.erf were: LLVM lowers those to calls of libm's scalar
# expf / erff, which keep every loop that uses them scalar (softmax 4x128x128: 165 us against native's 20). The
# wheel has no polynomial-approximation pass, so the expansions are written here, in arith ops LLVM vectorizes.
# exp: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for e^r (Cephes' coefficients, about 1 ulp), and
# 2^n applied in two halves so that results down to subnormals and up to overflow come out right. NaN stays NaN.
EXP_F32 = """
func.func private @tme_exp_f32(%x0: f32) -> f32 {
""" + _clamped(-104.0, 89.0) + """
  %log2e = arith.constant 1.44269504088896341 : f32
  %half = arith.constant 0.5 : f32
  %t0 = arith.mulf %x, %log2e : f32
  %t1 = arith.addf %t0, %half : f32
  %fn = math.floor %t1 : f32
  %ln2hi = arith.constant 0.693359375 : f32
  %ln2lo = arith.constant -2.12194440e-4 : f32
  %r0 = arith.mulf %fn, %ln2hi : f32
  %r1 = arith.subf %x, %r0 : f32
  %r2 = arith.mulf %fn, %ln2lo : f32
  %r = arith.subf %r1, %r2 : f32
""" + _horner("e", "r", [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                         5.0000001201e-1]) + """
  %one = arith.constant 1.0 : f32
  %rr = arith.mulf %r, %r : f32
  %f0 = arith.mulf %e, %rr : f32
  %f1 = arith.addf %f0, %r : f32
  %poly = arith.addf %f1, %one : f32
  %n = arith.fptosi %fn : f32 to i32
  %c1i = arith.constant 1 : i32
  %bias = arith.constant 127 : i32
  %c23 = arith.constant 23 : i32
  %n1 = arith.shrsi %n, %c1i : i32
  %n2 = arith.subi %n, %n1 : i32
  %e1i = arith.addi %n1, %bias : i32
  %e2i = arith.addi %n2, %bias : i32
  %s1i = arith.shli %e1i, %c23 : i32
  %s2i = arith.shli %e2i, %c23 : i32
  %s1 = arith.bitcast %s1i : i32 to f32
  %s2 = arith.bitcast %s2i : i32 to f32
  %y0 = arith.mulf %poly, %s1 : f32
  %y = arith.mulf %y0, %s2 : f32
  %nan = arith.cmpf uno, %x0, %x0 : f32
  %res = arith.select %nan, %x0, %y : f32
  return %res : f32
}
"""

# erf: x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf is +-1 in f32 beyond), the rational form Eigen and XLA use
# for f32 (about 1e-7 absolute). NaN stays NaN (minimumf / maximumf propagate it).
ERF_F32 = """
func.func private @tme_erf_f32(%x0: f32) -> f32 {
""" + _clamped(-4.0, 4.0) + """
  %x2 = arith.mulf %x, %x : f32
""" + _horner("pe", "x2", [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                          -1.60960333262415e-02]) + """
  %p = arith.mulf %x, %pe : f32
""" + _horner("q", "x2", [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                         -7.37332916720468e-03, -1.42647390514189e-02]) + """
  %res = arith.divf %p, %q : f32
  return %res : f32
}
"""


def _contracted(text: str) -> str:
    """An expansion with its multiplies and adds marked `contract`: LLVM fuses each pair into one FMA (one rounding
    instead of two, as Sleef's and Eigen's versions do), which halves the dependent chain of Horner's rule (exp over
    4x128x128 on one thread: 35 us with separate multiplies and adds, native 9.6)."""
    import re
    return re.sub(r"(= arith\.(?:mulf|addf|subf) %\w+, %\w+) : f32", r"\1 fastmath<contract> : f32", text)


EXP_F32, ERF_F32 = _contracted(EXP_F32), _contracted(ERF_F32)
EXPANSIONS = {("math.exp", "f32"): ("tme_exp_f32", EXP_F32), ("math.erf", "f32"): ("tme_erf_f32", ERF_F32)}


def expand_math(module) -> int:
    """Replace f32 math.exp / math.erf anywhere in a Linalg module (generic bodies included) by EXP_F32 /
    ERF_F32, inlined. Returns how many ops were replaced."""
    from torch_mlir import ir
    from torch_mlir.dialects import func as func_d
    ops = find_ops(module, lambda op: (op.name, str(op.results[0].type) if len(op.results) == 1 else "")
                   in EXPANSIONS)
    if not ops:
        return 0
    with module.context, ir.Location.unknown():
        defined = set()
        for op in ops:
            name, text = EXPANSIONS[(op.name, str(op.results[0].type))]
            if name not in defined:
                module.body.append(ir.Operation.parse(text))
                defined.add(name)
            with ir.InsertionPoint(op):
                call = func_d.CallOp([op.results[0].type], name, [op.operands[0]])
            op.results[0].replace_all_uses_with(call.results[0])
            op.erase()
    run(module, ["inline", "symbol-dce"], "lowering")
    return len(ops)


# The ops that combine an element into a reduction's accumulator (the block argument of a reduction generic's init).
COMBINERS = frozenset({"arith.addf", "arith.mulf", "arith.maximumf", "arith.minimumf", "arith.maxnumf",
                       "arith.minnumf"})


def reassociate_reductions(module) -> int:
    """Mark each float reduction's combining op (acc = acc + x in a generic with a reduction dim) `reassoc`: LLVM
    then vectorizes the loop with one partial result per lane, where it otherwise adds one element at a time in
    order (sum over 256x1024 rows: 119 us instead of 8.6; layer norm 128x256: 34 us instead of 13). PyTorch's
    own CPU reductions are vectorized the same way, so neither order is the "right" one; results stay within the
    qualifying tolerance. Only the combining op is marked, not the math feeding it (an inlined exp stays exact).
    Returns how many ops were marked."""
    from torch_mlir import ir
    generics = find_ops(module, lambda op: op.name == "linalg.generic"
                        and "reduction" in str(op.attributes["iterator_types"]))
    marked = 0
    with module.context:
        fm = ir.Attribute.parse("#arith.fastmath<reassoc,contract>")
        for g in generics:
            block = g.regions[0].blocks[0]
            n_out = len(g.results)
            accs = list(block.arguments)[len(block.arguments) - n_out:]
            for op in block.operations:
                op = op.operation
                if op.name in COMBINERS and any(v == a for v in op.operands for a in accs):
                    op.attributes["fastmath"] = fm
                    marked += 1
    return marked


# Elementwise loop nests as one loop (`flatten_elementwise`): the transform script and the tag it matches.
FLAT_TAG = "tme.flat"
FLATTEN_SCRIPT = """
transform.named_sequence @flatten(%root: !transform.any_op {transform.consumed}) {
  %g = transform.structured.match ops{["linalg.generic"]} attributes{tme.flat} in %root
    : (!transform.any_op) -> !transform.any_op
  %f = transform.structured.flatten_elementwise %g : (!transform.any_op) -> !transform.any_op
  transform.yield
}
"""


def _flattenable(op) -> bool:
    """A linalg.generic of rank >= 2, all parallel, every operand read and written through the identity map of
    a static shape, and no linalg.index in its body: its elements may be visited as one flat run."""
    from torch_mlir import ir
    if op.name != "linalg.generic" or len(op.regions[0].blocks) != 1:
        return False
    its = list(op.attributes["iterator_types"])
    if len(its) < 2 or any("parallel" not in str(t) for t in its):
        return False
    identity = str(ir.AffineMap.get_identity(len(its)))
    if any(str(ir.AffineMapAttr(m).value) != identity for m in op.attributes["indexing_maps"]):
        return False
    if not all(ir.ShapedType(v.type).has_static_shape for v in op.operands):
        return False
    return not any(o.operation.name == "linalg.index" for o in op.regions[0].blocks[0].operations)


def flatten_elementwise(module) -> int:
    """Fuse elementwise chains, then turn each purely elementwise generic of rank >= 2 into one flat loop
    (collapse_shape views around a 1-d generic). convert-linalg-to-loops makes one loop per dim, and LLVM
    vectorizes only the innermost: over ResNet's 7-, 14-, 28- and 56-wide rows it ran mostly remainder code
    (relu 1x512x7x7: 9.5 us for 25K elements, native 2.1). Returns how many generics were flattened."""
    from torch_mlir import ir
    run(module, FUSE, "llvm")
    ops = find_ops(module, _flattenable)
    if not ops:
        return 0
    with module.context:
        before = str(module)
        script = ir.Module.parse("module attributes {transform.with_named_sequence} {" + FLATTEN_SCRIPT + "}")
        for op in ops:
            op.attributes[FLAT_TAG] = ir.UnitAttr.get()
        module.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
        for op in script.body.operations:
            module.body.append(op.operation.clone())
        try:
            run(module, ["transform-interpreter{entry-point=flatten}"], "llvm")
            flattened = len(ops)
        except CompileFailure:                  # the module as it was (nested loops)
            _replace_body(module, ir.Module.parse(before))
            flattened = 0
        for op in list(module.body.operations):
            if op.operation.name.startswith("transform."):
                op.operation.erase()
        if "transform.with_named_sequence" in module.operation.attributes:
            del module.operation.attributes["transform.with_named_sequence"]
        for op in find_ops(module, lambda o: FLAT_TAG in o.attributes):
            del op.attributes[FLAT_TAG]
    return flattened


def _replace_body(module, other) -> None:
    body = module.body
    for op in list(body.operations):
        op.operation.erase()
    for op in list(other.body.operations):
        body.append(op.operation.clone())


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


# torch-mlir 20261001 lowers aten.reciprocal to `cf.assert x != 0` (ordered: NaN fails it too) and 1 / x. The assert
# becomes an abort() in the kernel: reciprocal of a 0 or a NaN, in a later call than the one that qualified the
# kernel, would end the user's process. Without it, 1 / x is IEEE division: inf for 0, NaN for NaN, as PyTorch.
RECIPROCAL_ASSERT = "unimplemented: tensor with zero element"


def drop_reciprocal_asserts(module) -> int:
    """Erase reciprocal's assertions (RECIPROCAL_ASSERT); returns how many. Any other run-time assertion keeps
    its kernel from being used at all (worker._runtime_aborts)."""
    from torch_mlir import ir
    ops = find_ops(module, lambda op: op.name == "cf.assert" and "msg" in op.attributes and
                   ir.StringAttr(op.attributes["msg"]).value == RECIPROCAL_ASSERT)
    with module.context:
        for op in ops:
            op.erase()
    return len(ops)


def defined(op) -> bool:
    """A func.func with a body (not the declaration of a C function the kernel calls)."""
    op = op.operation
    return op.name == "func.func" and len(op.regions[0].blocks) > 0


def call_libm(module, carriers: dict) -> int:
    """Replace each math op named in `carriers` (math op -> C function, from importer._libm) by a call to the C
    function: `erfc` for f64, `erfcf` for f32 (float16/bfloat16 are computed in float32 before this). Returns how
    many calls were made."""
    from torch_mlir import ir
    from torch_mlir.dialects import func as func_d
    ops = find_ops(module, lambda op: op.name in carriers)
    declared: set = set()
    with module.context, ir.Location.unknown():
        for op in ops:
            t = op.results[0].type
            el = str(t)
            if el not in ("f32", "f64") or any(str(v.type) != el for v in op.operands):
                raise CompileFailure("lowering", f"{carriers[op.name]}: element type {el}")
            name = carriers[op.name] + ("f" if el == "f32" else "")
            if name not in declared:
                sig = ", ".join([el] * len(op.operands))
                decl = ir.Module.parse(f"func.func private @{name}({sig}) -> {el}").body.operations[0]
                module.body.append(decl.operation.clone())
                declared.add(name)
            with ir.InsertionPoint(op):
                call = func_d.CallOp([t], name, list(op.operands))
            op.results[0].replace_all_uses_with(call.results[0])
            op.erase()
    return len(ops)


def to_linalg(module) -> None:
    run(module, TORCH_TO_LINALG, "lowering")
    drop_reciprocal_asserts(module)


def mark_inputs_readonly(module) -> list:
    """Every function argument `bufferization.writable = false`: kernels never write into their inputs.
    Returns the ranks of @main's inputs (for `noalias_inputs`)."""
    from torch_mlir import ir
    ranks = []
    with module.context:
        ro = ir.DictAttr.get({"bufferization.writable": ir.BoolAttr.get(False)})
        for op in module.body.operations:
            if defined(op):
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
            if defined(op):
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
