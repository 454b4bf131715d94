"""Math ops replaced by code of ours: f32 exp and erf as vectorizable arith ops, libm carriers as C library calls."""
from __future__ import annotations

import re

from torch_mlir import ir
from torch_mlir.dialects import func as func_d

from ..errors import CompileFailure
from .passes import run
from .rewrites import find_ops



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
    return re.sub(r"(= arith\.(?:mulf|addf|subf) %\w+, %\w+) : f32", r"\1 fastmath<contract> : f32", text)


EXP_F32, ERF_F32 = _contracted(EXP_F32), _contracted(ERF_F32)
EXPANSIONS = {("math.exp", "f32"): ("tme_exp_f32", EXP_F32), ("math.erf", "f32"): ("tme_erf_f32", ERF_F32)}


def expand_math(module) -> int:
    """Replace f32 math.exp / math.erf anywhere in a Linalg module (generic bodies included) by EXP_F32 /
    ERF_F32, inlined. Returns how many ops were replaced."""
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


def call_libm(module, carriers: dict) -> int:
    """Replace each math op named in `carriers` (math op -> C function, from importer._libm) by a call to the C
    function: `erfc` for f64, `erfcf` for f32 (float16/bfloat16 are computed in float32 before this). Returns how
    many calls were made."""
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
