"""Kernel schedules (transform-dialect scripts) by op family, chosen and applied from one table of families.

`select(module)` picks a schedule for a Linalg-on-tensors module, or None for the plain loops of `lowering.py`.
A schedule that fails to apply falls back to the plain pipeline; one that hangs or crashes is caught by the worker's
time limit and the host retries the call without schedules (compiler.py).
"""
from __future__ import annotations

from typing import Optional

from torch_mlir import ir

from ...errors import CompileFailure
from ..rewrites import defined, mark_inputs_readonly, noalias_inputs
from . import conv, matmul, split
from .base import Schedule, _run
from .pipeline import AFTER_TILE, BUFFERIZE, SERIAL, THREADED, VECTOR_TO_LLVM, allow_fma

# Linalg op -> plan(op, static result shape, threads) -> Schedule or None: the module's one contraction decides.
PLANS = {**conv.PLANS, **matmul.PLANS}
# The same for a result with dynamic sizes (-1 in `shape`): a family's dynamic variant, or None (plain loops); these
# also take `hint`, the sizes of the call the kernel is compiled for (or None), for choices a size makes better.
DYNAMIC_PLANS = {**conv.DYNAMIC_PLANS, **matmul.DYNAMIC_PLANS}
# Family -> prepare(module copy, schedule) -> the transform script to run: rewrites the module first where the
# family needs its own form of the op (conv as im2col + GEMM, a packed right-hand side).
FAMILIES = {**conv.FAMILIES, **matmul.FAMILIES, **split.FAMILIES}
_CONTRACTION_PREFIXES = ("linalg.conv", "linalg.matmul", "linalg.batch")

__all__ = ["Schedule", "select", "to_llvm", "FAMILIES", "PLANS", "DYNAMIC_PLANS"]


def select(module, threads: int = 1, hint=None) -> Optional[Schedule]:
    """The schedule for this Linalg module, or None (plain loops); `threads` > 1 splits the work that many ways.
    `hint`: the call's result shapes, for a dynamic plan (the first of the op's rank and static sizes)."""
    func = next((op for op in module.body.operations if op.operation.name == "func.func"), None)
    if func is None:
        return None
    found = []

    def visit(op):
        if op.operation.name.startswith(_CONTRACTION_PREFIXES):
            found.append(op.operation)
        return ir.WalkResult.ADVANCE
    func.operation.walk(visit)
    if not found:
        return split.plan(module, func, threads)
    if len(found) != 1:
        return None
    op = found[0]
    shape = ir.RankedTensorType(op.results[0].type).shape
    if not any(d < 0 for d in shape):
        plan = PLANS.get(op.name)
        return None if plan is None else plan(op, shape, threads)
    plan = DYNAMIC_PLANS.get(op.name)
    if plan is None:
        return None
    sizes = next((h for h in hint or () if len(h) == len(shape) and all(d < 0 or d == s for d, s in zip(shape, h))),
                 None)
    return plan(op, shape, threads, sizes)


def to_llvm(module, schedule: Schedule, noalias: bool = True):
    """A new LLVM-dialect module: `module` (Linalg on tensors, left unchanged) with `schedule` applied.
    `noalias`: see rewrites.noalias_inputs (False for kernels that may write in place)."""
    ctx = module.context
    with ctx:
        try:
            copy = ir.Module.parse(str(module))
        except Exception as e:
            raise CompileFailure("llvm", f"schedule parse: {e}") from None
    script = FAMILIES[schedule.family](copy, schedule)
    with ctx:
        try:
            # the script's sequences join the module (text splicing would break on a trailing resource section)
            seqs = ir.Module.parse("module attributes {transform.with_named_sequence} {" + script + "}")
            m = copy
            m.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
            for op in seqs.body.operations:
                m.body.append(op.operation.clone())
        except Exception as e:
            raise CompileFailure("llvm", f"schedule parse: {e}") from None
    ranks = mark_inputs_readonly(m)
    _run(m, ["transform-interpreter{entry-point=tile}"], "tile")
    allow_fma(m)
    _run(m, AFTER_TILE + BUFFERIZE, "bufferize")
    _run(m, ["transform-interpreter{entry-point=lower}"], "lower")
    with ctx:
        for op in list(m.body.operations):
            if op.operation.name.startswith("transform."):
                op.operation.erase()
        for op in m.body.operations:
            if defined(op):
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    slot = THREADED.format(n=schedule.threads) if schedule.threads > 1 else SERIAL
    _run(m, [slot if p == "{threads}" else p for p in VECTOR_TO_LLVM], "llvm")
    if noalias:
        noalias_inputs(m, ranks)
    return m
