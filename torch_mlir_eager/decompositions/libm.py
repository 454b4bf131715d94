"""C library functions (lgamma, erfc, Bessel J/Y, nextafter, copysign) reached through carrier ops in a trace."""
from __future__ import annotations

import functools
import threading

import torch

from ..errors import CompileFailure
from .registry import decomposes, register
from .values import _float_result

_aten = torch.ops.aten


# ---- C library functions through carrier ops ----
# torch-mlir 20261001 lowers neither lgamma, erfc, the Bessel functions J0, J1, Y0, Y1 nor nextafter (the importer
# emits torch.operator). The C library computes each of them, as accurately as PyTorch's CPU kernels. Our
# decomposition traces the function as a *carrier*: an aten op that torch-mlir lowers to exactly one math-dialect
# op per element (erf -> math.erf ...). After Torch -> Linalg, lowering.call_libm replaces each carrier's math op
# by a call to the C function. A graph that also uses a carrier op for its own sake is refused: the swap would be
# ambiguous. A carrier that is not swapped computes the carrier's function, and qualification catches that.
_CARRIERS = {1: ((_aten.erf.default, "math.erf"), (_aten.tan.default, "math.tan"),
                 (_aten.expm1.default, "math.expm1"), (_aten.log1p.default, "math.log1p")),
             2: ((_aten.atan2.default, "math.atan2"),)}


_libm_trace = threading.local()


def _libm(fn: str, *xs):
    """`fn` of the C library applied elementwise to xs (float results), as its carrier op during a trace."""
    used = getattr(_libm_trace, "used", None)
    if used is None:
        raise CompileFailure("import", f"{fn}: the C library is reached only through a traced decomposition")
    if fn not in used:
        taken = {c for c, _ in used.values()}
        free = [c for c in _CARRIERS[len(xs)] if c[0] not in taken]
        if not free:
            raise CompileFailure("import", f"{fn}: no carrier op left")
        used[fn] = free[0]
    op, _ = used[fn]
    _libm_trace.calls[op] = _libm_trace.calls.get(op, 0) + 1
    return op(*xs)


def _traced(gm_fn):
    """Run a make_fx trace (`gm_fn()`), then attach the carriers it used: graph.tme_libm = {math op: C function}."""
    _libm_trace.used, _libm_trace.calls = {}, {}
    try:
        gm = gm_fn()
        used, calls = _libm_trace.used, _libm_trace.calls
    finally:
        _libm_trace.used = _libm_trace.calls = None
    for op, n in calls.items():
        if sum(1 for node in gm.graph.nodes if node.target is op) != n:
            raise CompileFailure("import", f"{op} appears in the graph besides its use as a carrier")
    gm.graph.tme_libm = {math: fn for fn, (_, math) in used.items()}
    return gm


@decomposes(_aten.nextafter.default)
def _nextafter(x, other):
    return _libm("nextafter", x, other)


@decomposes(_aten.copysign.Tensor, _aten.copysign.Scalar)
def _copysign(x, other):
    """|x| with the sign bit of other (a NaN's and -0's included): libm's copysign, in the promoted float dtype."""
    if not isinstance(other, torch.Tensor):
        other = torch.full_like(x, other, dtype=torch.result_type(x, other))
    dt = _float_result(x, other)
    return _libm("copysign", x.to(dt), other.to(dt))


@decomposes(_aten.signbit.default)
def _signbit(x):
    """The sign bit, of NaN and -0 too (torch-mlir's signbit reads it through a bitcast it cannot lower)."""
    if not x.is_floating_point():
        return x < 0
    return _libm("copysign", torch.ones_like(x), x) < 0


_LIBM_UNARY = {_aten.lgamma.default: "lgamma", _aten.erfc.default: "erfc", _aten.special_erfc.default: "erfc",
               _aten.special_bessel_j0.default: "j0", _aten.special_bessel_j1.default: "j1",
               _aten.special_bessel_y0.default: "y0", _aten.special_bessel_y1.default: "y1"}


for _op, _fn in _LIBM_UNARY.items():
    register([_op], functools.partial(_libm, _fn))
