"""IR rewrites between the passes: buffers reused, reductions reassociated, loop nests flattened, asserts dropped."""
from __future__ import annotations

from torch_mlir import ir
from torch_mlir.dialects import memref as memref_d

from ..errors import CompileFailure
from ..kernel import SCRATCH_SYMBOL
from .passes import run


def find_ops(module, pred) -> list:
    """The operations of a module (nested included) for which pred(op) holds, in walk order."""
    found = []

    def visit(op):
        if pred(op):
            found.append(op)
        return ir.WalkResult.ADVANCE
    with module.context:
        module.operation.walk(visit)
    return found


def defined(op) -> bool:
    """A func.func with a body (not the declaration of a C function the kernel calls)."""
    op = op.operation
    return op.name == "func.func" and len(op.regions[0].blocks) > 0


# Temporaries of at least this many bytes become static buffers of the kernel (see `static_scratch`).
SCRATCH_MIN_BYTES = 1 << 16


def static_scratch(module, min_bytes: int = SCRATCH_MIN_BYTES) -> int:
    """Replace each large statically shaped `memref.alloc` (a kernel's temporary: im2col columns, padded inputs,
    decomposed intermediates) by a private global buffer of the module, allocated once when the kernel is loaded.
    A heap block of megabytes is mmapped and zeroed by the OS on every call (measured: 7 MB of page clearing per
    64x56x56 conv call). Safe because such a kernel never runs concurrently with itself (Kernel calls it under a
    lock when its code names SCRATCH_SYMBOL); allocations inside parallel loops (one per iteration, on several
    threads) are left.
    Run after bufferization, before deallocations are inserted (globals are not owned, so none are). Returns how
    many buffers were replaced."""
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


def write_results_in_place(module) -> int:
    """A result computed into a temporary and then copied into the caller's out-param, directly (`memref.copy
    %tmp, %out`, left where the kernel writes the temporary through a collapsed view) or through a reshape
    (`memref.copy (expand_shape %tmp), %out`, where it works on a flattened view), is computed in the out-param
    itself: the temporary's uses take the out-param (reshaped back), and the copy goes. Only where the out-param
    has no other use. Returns how many copies went."""
    copies = find_ops(module, lambda op: op.name == "memref.copy")
    done = 0
    with module.context, ir.Location.unknown():
        for cp in copies:
            src, dst = cp.operands[0].maybe_downcast(), cp.operands[1].maybe_downcast()
            if not isinstance(dst, ir.BlockArgument) or len(list(dst.uses)) != 1 or not isinstance(src, ir.OpResult):
                continue
            view = getattr(src.owner, "operation", src.owner)
            # (a dynamic alloc copied whole into the out-param has the out-param's sizes)
            if view.name == "memref.alloc" and src.type == dst.type:
                src.replace_all_uses_with(dst)
                cp.erase()
                view.erase()
                done += 1
                continue
            base = view.operands[0].maybe_downcast() if view.operands else None
            if view.name == "memref.collapse_shape" and isinstance(base, ir.OpResult) and \
                    getattr(base.owner, "operation", base.owner).name == "memref.alloc" and \
                    len(list(view.results[0].uses)) == 1:
                # copy(collapse_shape(alloc)) (a packed GEMM's [m, panel, column] result): the alloc is the
                # out-param expanded (the alloc's dynamic sizes are the expansion's)
                alloc = getattr(base.owner, "operation", base.owner)
                t = ir.MemRefType(alloc.results[0].type)
                with ir.InsertionPoint(alloc):
                    grown = memref_d.ExpandShapeOp(t, dst, view.attributes["reassociation"], list(alloc.operands),
                                                   list(t.shape))
                alloc.results[0].replace_all_uses_with(grown.result)
                cp.erase()
                view.erase()
                alloc.erase()
                done += 1
                continue
            if view.name != "memref.expand_shape" or not isinstance(base, ir.OpResult):
                continue
            alloc = getattr(base.owner, "operation", base.owner)
            inner = alloc.operands[0].maybe_downcast() if alloc.operands else None
            if alloc.name == "memref.collapse_shape" and isinstance(inner, ir.OpResult) and \
                    getattr(inner.owner, "operation", inner.owner).name == "memref.alloc" and inner.type == dst.type \
                    and str(alloc.attributes["reassociation"]) == str(view.attributes["reassociation"]) and \
                    len(list(view.results[0].uses)) == 1:
                # expand_shape(collapse_shape(alloc)) of a dynamic shape (the fold that canonicalize does for a
                # static one: the sizes are the same values here under other names): the alloc is the out-param
                first = getattr(inner.owner, "operation", inner.owner)
                cp.erase()
                view.erase()
                inner.replace_all_uses_with(dst)
                first.erase()
                done += 1
                continue
            # (a dynamic alloc's sizes are the out-param's: the reshape of the one is the reshape of the other)
            if alloc.name != "memref.alloc" or len(list(view.results[0].uses)) != 1:
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


# Linalg-on-tensors -> LLVM dialect, plain loops (LLVM O3 vectorizes the simple ones). Destination-passing style:
# results become trailing out-params the caller allocates.
# Decomposed ops (batch norm, layer norm, gelu...) arrive as chains of elementwise generics: one loop nest
# instead of one pass over memory (and one temporary) per step. Runs first (`flatten_elementwise`), not in
# LINALG_TO_LLVM: its reshape propagation would turn flattened loops back into nests.
FUSE = ["func.func(linalg-fuse-elementwise-ops)"]


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
    """A linalg.generic of rank >= 2, all parallel, every operand read and written through the identity map (of
    a static or a dynamic shape), and no linalg.index in its body: its elements may be visited as one flat run."""
    if op.name != "linalg.generic" or len(op.regions[0].blocks) != 1:
        return False
    its = list(op.attributes["iterator_types"])
    if len(its) < 2 or any("parallel" not in str(t) for t in its):
        return False
    identity = str(ir.AffineMap.get_identity(len(its)))
    if any(str(ir.AffineMapAttr(m).value) != identity for m in op.attributes["indexing_maps"]):
        return False
    return not any(o.operation.name == "linalg.index" for o in op.regions[0].blocks[0].operations)


def flatten_elementwise(module) -> int:
    """Fuse elementwise chains, then turn each purely elementwise generic of rank >= 2 into one flat loop
    (collapse_shape views around a 1-d generic). convert-linalg-to-loops makes one loop per dim, and LLVM
    vectorizes only the innermost: over ResNet's 7-, 14-, 28- and 56-wide rows it ran mostly remainder code
    (relu 1x512x7x7: 9.5 us for 25K elements, native 2.1). Returns how many generics were flattened."""
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


# torch-mlir 20261001 lowers aten.reciprocal to `cf.assert x != 0` (ordered: NaN fails it too) and 1 / x. The assert
# becomes an abort() in the kernel: reciprocal of a 0 or a NaN, in a later call than the one that qualified the
# kernel, would end the user's process. Without it, 1 / x is IEEE division: inf for 0, NaN for NaN, as PyTorch.
RECIPROCAL_ASSERT = "unimplemented: tensor with zero element"


def drop_reciprocal_asserts(module) -> int:
    """Erase reciprocal's assertions (RECIPROCAL_ASSERT); returns how many. Any other run-time assertion keeps
    its kernel from being used at all (worker._runtime_aborts)."""
    ops = find_ops(module, lambda op: op.name == "cf.assert" and "msg" in op.attributes and
                   ir.StringAttr(op.attributes["msg"]).value == RECIPROCAL_ASSERT)
    with module.context:
        for op in ops:
            op.erase()
    return len(ops)


def mark_inputs_readonly(module) -> list:
    """Every function argument `bufferization.writable = false`: kernels never write into their inputs.
    Returns the ranks of @main's inputs (for `noalias_inputs`)."""
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


# f32 -> bf16 with round-to-nearest-even, NaN -> quiet NaN (as c10::BFloat16 and arith-expand round). noinline and
# optnone keep LLVM from folding it back into the fptrunc it stands for.
_TRUNCSFBF2 = """
llvm.func weak @__truncsfbf2(%x: f32) -> bf16 attributes {passthrough = ["noinline", "optnone"]} {
  %c16 = llvm.mlir.constant(16 : i32) : i32
  %c1 = llvm.mlir.constant(1 : i32) : i32
  %bias = llvm.mlir.constant(32767 : i32) : i32
  %nan = llvm.mlir.constant(32704 : i16) : i16
  %u = llvm.fcmp "uno" %x, %x : f32
  %b = llvm.bitcast %x : f32 to i32
  %lsb = llvm.lshr %b, %c16 : i32
  %odd = llvm.and %lsb, %c1 : i32
  %inc = llvm.add %odd, %bias : i32
  %sum = llvm.add %b, %inc : i32
  %hi = llvm.lshr %sum, %c16 : i32
  %h = llvm.trunc %hi : i32 to i16
  %r = llvm.select %u, %nan, %h : i1, i16
  %f = llvm.bitcast %r : i16 to bf16
  llvm.return %f : bf16
}"""


def define_bf16_truncation(module) -> None:
    """Define `__truncsfbf2` in an LLVM-dialect module that holds bf16 values. arith-expand turns the pipeline's own
    f32 -> bf16 truncations into integer ops, but LLVM's optimizer makes new ones (a bf16 `select` of an extended
    input and a constant became an fptrunc: heaviside, xlogy, sum, nll_loss), and on CPUs without AVX-512 BF16
    their code calls libgcc's __truncsfbf2, which neither the JIT nor the kernel library links (the worker died:
    "Symbols not found: [ __truncsfbf2 ]")."""
    with module.context:
        if any(op.operation.name == "llvm.func" and op.attributes["sym_name"].value == "__truncsfbf2"
               for op in module.body.operations):
            return
        for op in ir.Module.parse(_TRUNCSFBF2).body.operations:
            module.body.append(op.operation.clone())


def _size_arithmetic(op) -> bool:
    """A dynamic kernel's size bookkeeping (tensor.dim, scalar arith on sizes, cf.assert of a broadcast check): it
    reads no tensor data and writes none."""
    if op.name == "tensor.dim":
        return True
    if not (op.name.startswith("arith.") or op.name == "cf.assert"):
        return False
    return not any(str(v.type).startswith(("tensor<", "memref<", "vector<"))
                   for v in list(op.operands) + list(op.results))


def single_pointwise(module) -> bool:
    """True when the Linalg function is one all-parallel linalg.generic that reads argument 0 through the identity
    map and returns its result: each output element depends only on the same element of argument 0, so the kernel
    may write into argument 0's memory (a pointwise in-place op); a dynamic kernel's size arithmetic aside
    (without it, relu_ and add_ in ResNet18 at dynamic=always copied each result back: 48 ms of a 240 ms forward).
    Anything else may stage results in the output."""
    func = next(op for op in module.body.operations if op.operation.name == "func.func")
    ops = [op.operation for op in func.regions[0].blocks[0].operations]
    generics = [op for op in ops if op.name == "linalg.generic"]
    others = [op for op in ops if op.name not in ("linalg.generic", "tensor.empty", "arith.constant", "func.return")
              and not _size_arithmetic(op)]
    if len(generics) != 1 or others:
        return False
    g = generics[0]
    if any("parallel" not in str(t) for t in g.attributes["iterator_types"]):
        return False
    arg0 = func.regions[0].blocks[0].arguments[0]
    maps = list(g.attributes["indexing_maps"])
    n_in = len(g.operands) - len(g.results)
    reads_arg0 = [i for i in range(n_in) if g.operands[i] == arg0]
    if not reads_arg0 or any(not ir.AffineMapAttr(maps[i]).value.is_permutation or
                             str(ir.AffineMapAttr(maps[i]).value) != str(ir.AffineMapAttr(maps[-1]).value)
                             for i in reads_arg0):
        return False
    ret = ops[-1]
    return len(ret.operands) == 1 and ret.operands[0] == g.results[0]
