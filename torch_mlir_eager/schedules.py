"""Per-op-family kernel schedules (transform-dialect scripts) and the pipelines that apply them (worker side).

`select(module)` picks a schedule for a Linalg-on-tensors module, or None for the plain loops of `lowering.py`.
A schedule that fails to apply falls back to the plain pipeline; one that hangs or crashes is caught by the worker's
time limit and the parent retries the call without schedules (compiler.py).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from .errors import CompileFailure
from .lowering import mark_inputs_readonly, pipeline_text

# Every schedule: a family-specific head finds the op (%{target}0) and may split it across threads (%{target});
# the shared tail tiles it to a register tile with a k step of 1, vectorizes only that tile, and lowers the
# contraction to outer products (FMAs). Vectorizing untiled ops (im2col, pad, fills) would build whole-tensor
# vectors: a known memory blow-up.
REGISTER_TILE = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
{head}
  {forall}
  %t, %l:{nloops} = transform.structured.tile_using_for %{target} tile_sizes [{tiles}, 0]
    : (!transform.any_op) -> (!transform.any_op{handles})
  %t2, %lk = transform.structured.tile_using_for %t tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %t2 : !transform.any_op
  %f = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  transform.apply_patterns to %f {{
    transform.apply_patterns.canonicalization
  }} : !transform.any_op
  transform.yield
}}
transform.named_sequence @lower(%root: !transform.any_op {{transform.consumed}}) {{
  %f0 = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  %f = transform.structured.hoist_redundant_vector_transfers %f0 : (!transform.any_op) -> !transform.any_op
  transform.yield
}}
"""

# conv2d NCHW/FCHW -> im2col + a GEMM generic (dims n, f, oh*ow, k), which is what gets register-tiled.
CONV2D_HEAD = """
  %conv = transform.structured.match ops{["linalg.conv_2d_nchw_fchw"]} in %root
    : (!transform.any_op) -> !transform.any_op
  %img2col, %res = transform.structured.convert_conv2d_to_img2col %conv
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  %gemm0 = transform.get_producer_of_operand %res[0] : (!transform.any_op) -> !transform.any_op"""

# matmul / batch_matmul: 4 x 16 reached 39.6 GFLOP/s at 256^3 on one core here, faster than MKL (shared notes).
MATMUL_HEAD = """
  %mm0 = transform.structured.match ops{{["{op}"]}} in %root : (!transform.any_op) -> !transform.any_op"""


def _script(head: str, target: str, tiles: list, split: list) -> str:
    """A register-tile schedule: `tiles` for the op's parallel dims (k, the last dim, is stepped by 1)."""
    n = len(tiles)
    return REGISTER_TILE.format(head=head, target=target, forall=_forall(f"{target}0", target, split + [0]),
                                tiles=", ".join(map(str, tiles)), nloops=n, handles=", !transform.any_op" * n,
                                ktile=", ".join(["0"] * n + ["1"]))


# Threads: the op is first split into `threads` slices (scf.forall -> OpenMP, run by intel-openmp's libiomp5);
# each slice is then register-tiled as above.
FORALL = ("%{out}, %forall = transform.structured.tile_using_forall %{src} num_threads [{counts}]"
          " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")
NO_FORALL = "%{out} = transform.merge_handles %{src} : !transform.any_op"


def _forall(src: str, out: str, counts) -> str:
    if max(counts) <= 1:
        return NO_FORALL.format(out=out, src=src)
    return FORALL.format(out=out, src=src, counts=", ".join(map(str, counts)))


# Stages after @tile (each a pass pipeline); @lower runs between the second and the third.
AFTER_TILE = [
    "canonicalize", "cse", "loop-invariant-subset-hoisting", "canonicalize",
]
BUFFERIZE = [
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true}",
    "canonicalize", "cse",
    "ownership-based-buffer-deallocation", "canonicalize", "buffer-deallocation-simplification",
    "bufferization-lower-deallocations", "canonicalize",
]
VECTOR_TO_LLVM = [
    "canonicalize",
    "func.func(refback-munge-memref-copy)",       # before linalg-to-loops: no memrefCopy calls
    "func.func(convert-linalg-to-loops)",
    "canonicalize", "cse",
    "func.func(lower-vector-mask)",
    "convert-vector-to-scf{full-unroll=true target-rank=1}",
    "func.func(lower-affine)",
    "{threads}",
    "convert-scf-to-cf",
    "expand-strided-metadata",
    "fold-memref-alias-ops",
    "lower-affine",
    "canonicalize", "cse",
    # outerproduct: 10x faster than `dot` for this tiling (shared notes, mlir-cpu-codegen.md).
    "convert-vector-to-llvm{vector-contract-lowering=outerproduct reassociate-fp-reductions=true}",
    "finalize-memref-to-llvm",
    "func.func(convert-arith-to-llvm)",
    "convert-math-to-llvm",
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


# The aten ops whose modules a schedule may serve: the parent retries these without schedules after a crash or
# time-out (for other ops a retry would only repeat the failure).
FAMILY_OPS = frozenset({"aten.convolution.default", "aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                        "aten.baddbmm.default"})


def may_apply(op_name: str) -> bool:
    return op_name in FAMILY_OPS


@dataclasses.dataclass(frozen=True)
class Schedule:
    family: str
    script: str
    threads: int = 1


def _tile_n(n: int) -> int:
    """The GEMM's vector width: 16 (two AVX2 registers) or 8 when they divide N, else the largest divisor <= 16."""
    return next(d for d in (16, 8) + tuple(range(15, 0, -1)) if n % d == 0)


def select(module, threads: int = 1) -> Optional[Schedule]:
    """The schedule for this Linalg module, or None (plain loops); `threads` > 1 splits the work that many ways."""
    from torch_mlir import ir
    func = next((op for op in module.body.operations if op.operation.name == "func.func"), None)
    if func is None:
        return None
    convs = []

    def visit(op):
        name = op.operation.name
        if name.startswith("linalg.conv") or name.startswith("linalg.matmul") or name.startswith("linalg.batch"):
            convs.append(op.operation)
        return ir.WalkResult.ADVANCE
    func.operation.walk(visit)
    if len(convs) != 1:
        return None
    op = convs[0]
    shape = ir.RankedTensorType(op.results[0].type).shape
    if any(d < 0 for d in shape):
        return None
    if op.name == "linalg.conv_2d_nchw_fchw" and shape[0] == 1:
        f, n = shape[1], shape[2] * shape[3]
        t = threads if f % threads == 0 else 1
        nt = _tile_n(n)
        # Rows of the register tile (output channels): measured on ResNet18's shapes, 8 rows beat 4 everywhere
        # and 16 rows win when the vector width is narrow (7x7 / 14x14 outputs); 12 fails to vectorize.
        mt = next(m for m in ((16, 8, 4, 1) if nt <= 8 else (8, 4, 1)) if (f // t) % m == 0)
        return Schedule("conv2d-im2col", _script(CONV2D_HEAD, "gemm", [1, mt, nt], [0, t, 0]), t)
    if op.name in ("linalg.matmul", "linalg.batch_matmul") and len(op.operands) == 3:
        batch = op.name == "linalg.batch_matmul"
        m, n = shape[-2], shape[-1]
        # Split the batch, else the rows, else the columns across threads, where the split is even.
        split = [0] * len(shape)
        t = 1
        for dim in ([0] if batch else []) + [len(shape) - 2, len(shape) - 1]:
            if threads > 1 and shape[dim] % threads == 0 and shape[dim] >= 2 * threads:
                split[dim], t = threads, threads
                break
        m_t = m // t if split[-2] else m
        n_t = n // t if split[-1] else n
        nt = _tile_n(n_t)
        mt = next(x for x in (4, 2, 1) if m_t % x == 0)     # 4 x 16: the tile measured best in the notes
        tiles = ([1] if batch else []) + [mt, nt]
        return Schedule("matmul", _script(MATMUL_HEAD.format(op=op.name), "mm", tiles, split), t)
    return None


def _run(module, passes, what: str) -> None:
    from torch_mlir import passmanager
    from .lowering import diagnostic
    with module.context:
        try:
            passmanager.PassManager.parse(pipeline_text(passes)).run(module.operation)
        except Exception as e:
            raise CompileFailure("llvm", f"schedule {what}: {diagnostic(e)}") from None


def to_llvm(module, schedule: Schedule):
    """A new LLVM-dialect module: `module` (Linalg on tensors, left unchanged) with `schedule` applied."""
    from torch_mlir import ir
    ctx = module.context
    with ctx:
        try:
            copy = ir.Module.parse(str(module))
            copy.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
            text = str(copy)                     # ends with the module's closing brace
            m = ir.Module.parse(text[:text.rindex("}")] + schedule.script + "}")
        except Exception as e:
            raise CompileFailure("llvm", f"schedule parse: {e}") from None
    mark_inputs_readonly(m)
    _run(m, ["transform-interpreter{entry-point=tile}"], "tile")
    _run(m, AFTER_TILE + BUFFERIZE, "bufferize")
    _run(m, ["transform-interpreter{entry-point=lower}"], "lower")
    with ctx:
        for op in list(m.body.operations):
            if op.operation.name.startswith("transform."):
                op.operation.erase()
        for op in m.body.operations:
            if op.operation.name == "func.func":
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    slot = THREADED.format(n=schedule.threads) if schedule.threads > 1 else SERIAL
    _run(m, [slot if p == "{threads}" else p for p in VECTOR_TO_LLVM], "llvm")
    return m
