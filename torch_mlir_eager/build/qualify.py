"""Qualify a kernel: run it on the call's own inputs and compare with native PyTorch before anyone may use it."""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import torch

from ..errors import CompileFailure
from ..kernel import MLIR_ELEMENT, Kernel, kernel_inputs, link_library, load_library, output_metas
from ..spec import map_tensors
from ..validate import result_guard, tolerance


@dataclasses.dataclass
class Call:
    """The call being compiled, as the worker received it, with native PyTorch's results for it."""
    func: torch._ops.OpOverload
    args: tuple
    kwargs: dict
    tensors: list                   # the tensor arguments, in order (spec.flatten)
    natives: list                   # native PyTorch's results (None: a result not computed)

    def resampled(self) -> "Call":
        """The call with other values: each floating input refilled from a seeded normal distribution (same shape
        and strides), the others kept; its natives recomputed."""
        g = torch.Generator().manual_seed(0)
        new = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(torch.randn(t.shape, generator=g))
               if t.is_floating_point() else t for t in self.tensors]
        it = iter(new)
        a, k = map_tensors((self.args, self.kwargs), lambda _t: next(it))
        out = self.func(*a, **k)
        return dataclasses.replace(self, tensors=new, natives=list(out) if isinstance(out, (tuple, list)) else [out])


@dataclasses.dataclass
class Lowered:
    """A kernel in the LLVM dialect, with the tensors it takes and gives."""
    llvm_ir: str
    inputs: list                    # TensorMeta per input
    outputs: list                   # TensorMeta per result (None: not computed)
    perms: Optional[list] = None    # per input, None or the permutation the kernel undoes itself
    dynamic: Optional[list] = None  # per input of the call, the dims the kernel takes at any size (None: static)


def _signature_check(module, inputs, outputs) -> None:
    """The lowered function's types must be the ones native PyTorch gives (else the kernel would overrun buffers).
    `inputs`, `outputs`: (sizes, dtype) per tensor, a size None where the type must say `?`."""
    func = next(op for op in module.body.operations if op.operation.name == "func.func")
    ftype = func.attributes["function_type"].value
    for kind, types, metas in (("input", ftype.inputs, inputs), ("result", ftype.results, outputs)):
        if len(types) != len(metas):
            raise CompileFailure("meta", f"{kind} count {len(types)} != {len(metas)}")
        for t, (shape, dtype) in zip(types, metas):
            want = f"tensor<{''.join('?x' if d is None else f'{d}x' for d in shape)}{MLIR_ELEMENT[dtype]}>"
            if str(t) != want:
                raise CompileFailure("meta", f"{kind} type {t} != native {want}")


# Bounds checks torch-mlir puts on gathered indices: they cannot fire, because an op reading positions from an index
# argument is compiled only with a range check that runs before every call (validate.py), and indices computed
# inside a kernel (argmax, pooling) are in range by construction.
_INDEX_ASSERTS = ("index must be larger or equal to 0", "index must be smaller than dim size")


# Checks torch-mlir puts on dynamic sizes, by message: broadcasts of equal dims, a matmul's contracting dims, a
# view's inferred dim, broadcast sizes taken from the kernel's own tensors (never negative). They should not fire,
# because a dynamic kernel runs at a new shape only after native PyTorch ran that very call (shapes._bind) and so
# accepted its sizes; dims of size 0 and 1, where torch-mlir's checks are stricter than PyTorch's broadcasting,
# are never dynamic. Not proven: such a kernel must also pass at two probe sizes in the worker (where an abort
# costs a worker), and one did fire there (view_copy, "mismatching contracting dimension"). Value checks ("tensor
# with zero element") are never allowed.
_SHAPE_CHECK = re.compile(r"^(mismatched size for broadcast|mismatching contracting dimension.*|must have at most "
                          r"one inferred \(negative\) dimension|negative values not allowed in new dimensions|"
                          r"unimplemented: dynamic negative broadcast sizes)$")


def _runtime_aborts(llvm_ir: str) -> str:
    """The messages of the kernel's run-time assertions ("" if none). torch-mlir lowers some value checks to an
    abort() in the kernel (linalg_vector_norm: "unimplemented: tensor with zero element", reached with a NaN
    input): a first run that passes proves nothing about later values, and an abort would end the user's process,
    so such a kernel is never used."""
    if "llvm.call @abort" not in llvm_ir:
        return ""
    msgs = set()
    for codes in re.findall(r"@assert_msg\w*\(dense<\[([\d, ]+)\]>", llvm_ir):
        msgs.add(bytes(int(c) for c in codes.split(",") if int(c)).decode(errors="replace").strip())
    return "; ".join(sorted(msgs))[:200] or "abort()"


def _run(kernel: Kernel, tensors) -> list:
    try:
        return kernel.run(tensors)
    except Exception as e:
        raise CompileFailure("runtime", f"{type(e).__name__}: {e}") from None


def qualify(call: Call, k: Lowered, link: bool = True, inject: str = "") -> Optional[bytes]:
    """JIT the kernel, run it on the call's inputs and compare with native PyTorch; raise if anything is off.
    Returns its object code as a shared library (or None): what was qualified is then exactly what the parent
    loads, instead of JIT-compiling the IR a second time. Where the results are ones the dispatcher replaces by
    native's (validate.result_guard: a NaN in a layer norm's row, a flagged factorization), they prove nothing:
    the kernel is qualified on `call.resampled()` instead."""
    aborts = _runtime_aborts(k.llvm_ir)
    messages = aborts.split("; ") if aborts else []
    shape_checks = any(_SHAPE_CHECK.search(m) for m in messages)
    if not all(m.startswith(_INDEX_ASSERTS) or k.dynamic and _SHAPE_CHECK.search(m) for m in messages):
        raise CompileFailure("unsupported", f"kernel has a run-time check that aborts the process: {aborts}")
    broken = inject == "remainder"
    kernel = Kernel(k.llvm_ir, k.inputs, k.outputs, input_perms=k.perms, dynamic=k.dynamic, broken_remainder=broken)
    so = link_library(kernel) if link else None
    engine = load_library(so) if so is not None else None
    if engine is not None:
        kernel = Kernel(k.llvm_ir, k.inputs, k.outputs, input_perms=k.perms, engine=engine, dynamic=k.dynamic,
                        broken_remainder=broken)
    else:
        so = None
    _check(kernel, call, inject)
    if k.dynamic:
        found = probes(call, k.dynamic)
        if shape_checks and len(found) < 2:
            # its shape checks must have run at other sizes (one fired in view_copy's kernel where native ran)
            raise CompileFailure("unsupported", f"dynamic kernel's shape checks ({aborts}) ran at "
                                 f"{len(found)} other sizes, not 2")
        for size, probe in found:
            bound = kernel.bind(kernel_inputs(probe.tensors, k.perms), output_metas(probe.natives, k.outputs))
            _check(bound, probe, inject, f"dynamic kernel at size {size} of its dynamic dims: ")
    return so


def _check(kernel: Kernel, call: Call, inject: str, what: str = "") -> None:
    outs = _run(kernel, call.tensors)
    guard = result_guard(call.func)
    if guard is not None and guard(outs) is not None:
        call = call.resampled()
        outs = _run(kernel, call.tensors)
        why = guard(outs)
        if why is not None:
            raise CompileFailure("unsupported", f"not qualified: other values were refused too ({why})")
    if inject == "wrong":
        outs = [o + 1 if o.dtype != torch.bool else ~o for o in outs]
    for got, want in zip(outs, call.natives):
        if want is None:
            continue
        try:
            torch.testing.assert_close(got, want, equal_nan=True, **tolerance(call.func, want))
        except AssertionError as e:
            raise CompileFailure("mismatch", what + " ".join(str(e).split("\n")[:3])) from None


# Sizes a dynamic kernel is checked at besides its first call's, each the smallest dynamic size moved there (the
# others moved by as much, so sizes that were equal stay equal): 1 past a multiple of 32 (so of 16 and 8 too), 1
# below one, a prime. A partial tile or a remainder loop is where dynamic code goes wrong.
PROBES = (33, 31, 13)


def probes(call: Call, dynamic) -> list:
    """(size, Call) at each of PROBES that native PyTorch accepts; inputs refilled by repeating their own values
    (in the domain the op takes: indices in range, positive where a log needs it)."""
    sizes = sorted({t.shape[d] for t, ds in zip(call.tensors, dynamic) for d in ds})
    if not sizes:
        return []
    found = []
    for size in PROBES:
        delta = size - sizes[0]
        if delta == 0:
            continue
        new = [_refilled(t, [s + delta if i in ds else s for i, s in enumerate(t.shape)])
               for t, ds in zip(call.tensors, dynamic)]
        it = iter(new)
        a, kw = map_tensors((call.args, call.kwargs), lambda _t: next(it))
        try:
            out = call.func(*a, **kw)
        except Exception:        # sizes native refuses (a relation between dims other than equality)
            continue
        found.append((size, dataclasses.replace(call, args=a, kwargs=kw, tensors=new,
                                                natives=list(out) if isinstance(out, (tuple, list)) else [out])))
    return found


def _refilled(t: torch.Tensor, shape) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    n = 1
    for s in shape:
        n *= s
    if not flat.numel() or not n:
        return torch.zeros(shape, dtype=t.dtype)
    return flat[torch.arange(n) % flat.numel()].reshape(shape).clone()
