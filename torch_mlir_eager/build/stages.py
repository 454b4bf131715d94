"""The staged compile of one call: graph, Torch MLIR, Linalg, rewrites, then LLVM (a schedule, else plain loops),
each kernel qualified against native PyTorch. One Request in, one Compiled or Failed out."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, List

import torch

from .. import decompositions
from ..errors import CATEGORIES, CompileFailure
from ..kernel import MLIR_ELEMENT, TensorMeta
from ..spec import flatten
from ..worker.protocol import Compiled, Failed, Reply, Request, resolve
from . import collapse, expansions, graph, importer, lowering, rewrites, schedules
from .qualify import Call, Lowered, _signature_check, qualify


def _dump(req: Request, name: str, text: Callable[[], str]) -> None:
    """Dump-dir mode (repro.py): write a stage's input as it is reached, so that even a crash leaves the last one."""
    if req.dump:
        try:
            with open(os.path.join(req.dump, name), "w") as f:
                f.write(text())
        except Exception:       # a repro must never cost the compile
            pass


@dataclasses.dataclass
class _Tail:
    """A way from the Linalg module to a qualified kernel: a schedule family's, or the plain loops (the last)."""
    name: str                                   # "plain" or the family
    stage: str                                  # what stage.txt says while it runs
    lower: Callable                             # module -> LLVM-dialect module
    dump: str = ""                              # the file its LLVM-dialect input is dumped to, if any


def _tails(module, req: Request, noalias: bool, pre: str, hint=None) -> List[_Tail]:
    sched = schedules.select(module, req.threads, hint) if req.schedules else None
    plain = _Tail("plain", pre + "llvm", lambda m: lowering.to_llvm(m, noalias=noalias), pre + "llvm.mlir")
    if sched is None:
        return [plain]
    return [_Tail(sched.family, f"{pre}schedule {sched.family}",
                  lambda m: schedules.to_llvm(m, sched, noalias=noalias)), plain]


def _graph(call: Call, perms, decompose: bool, upcast: bool, dynamic):
    c = (call.func, call.args, call.kwargs, call.tensors, perms)
    if upcast:
        return graph.upcast_graph(*c, decompose, dynamic=dynamic)
    return (graph.decomposed_graph if decompose else graph.one_node_graph)(*c, dynamic=dynamic)


def _attempt(ctx, call: Call, req: Request, decompose: bool) -> Compiled:
    t0 = time.perf_counter()
    perms = graph.transposed_rhs_perms(call.func, call.tensors, call.natives) if req.schedules else None
    upcast = graph.needs_upcast(call.tensors, call.natives)
    dynamic = list(req.dynamic) if any(req.dynamic) else None
    g, fakes = _graph(call, perms, decompose, upcast, dynamic)
    for f in fakes:
        if f.dtype not in MLIR_ELEMENT:
            raise CompileFailure("unsupported", f"result dtype {f.dtype}")
    pre = "decomposed." if decompose else ""
    _dump(req, pre + "graph.txt", lambda: g.python_code("self").src)
    _dump(req, "stage.txt", lambda: pre + "import")
    module = importer.import_graph(ctx, g)
    t1 = time.perf_counter()
    _dump(req, pre + "torch.mlir", lambda: str(module))
    for stage, pipeline in lowering.REPLAY.items():
        _dump(req, stage + ".pipeline", lambda: pipeline)
    _dump(req, "stage.txt", lambda: pre + "lowering")
    lowering.to_linalg(module)
    if getattr(g, "tme_libm", None):
        expansions.call_libm(module, g.tme_libm)
    expansions.expand_math(module)
    rewrites.reassociate_reductions(module)
    _dump(req, pre + "linalg.mlir", lambda: str(module))
    bases = call.tensors if perms is None else [t if p is None else t.permute(p) for t, p in zip(call.tensors, perms)]
    ins = [TensorMeta(t.shape, t.dtype) for t in bases]
    outs = [TensorMeta.of(n, empty=not c) if n is not None else None
            for n, c in zip(call.natives, graph.computed(call.natives))]
    sizes = symbols = None
    if dynamic:     # the types say `?` where the sizes are symbols
        sizes, symbols = graph.size_exprs(g.tme_inputs, fakes)
        in_types = [([None if i in d else s for i, s in enumerate(m.shape)], m.dtype)
                    for m, d in zip(ins, graph.base_dynamic(perms, dynamic))]
        out_types = [(graph.dims(f.shape), f.dtype) for f in fakes]
    else:
        in_types = [(m.shape, m.dtype) for m in ins]
        out_types = [(m.shape, m.dtype) for m in outs if m is not None and not m.empty]
    _signature_check(module, in_types, out_types)
    inplace_safe = rewrites.single_pointwise(module)
    rewrites.flatten_elementwise(module)
    if dynamic:
        collapse.dynamic_dims(module)
    _dump(req, pre + "flat.mlir", lambda: str(module))
    failed = ""
    tails = _tails(module, req, not inplace_safe, pre, [tuple(m.shape) for m in outs if m is not None] or None)
    for tail in tails:
        t2 = time.perf_counter()
        try:
            _dump(req, "stage.txt", lambda: tail.stage)
            lowered = tail.lower(module)
            llvm_ir = str(lowered)
            if "bf16" in llvm_ir:
                rewrites.define_bf16_truncation(lowered)
                llvm_ir = str(lowered)
            t3 = time.perf_counter()
            if tail.dump:
                _dump(req, tail.dump, lambda: llvm_ir)
                _dump(req, "stage.txt", lambda: pre + "jit")
            so = qualify(call, Lowered(llvm_ir, ins, outs, perms, dynamic), req.link, req.inject)
        except Exception as e:      # whatever went wrong with a schedule, plain loops come next
            if tail is tails[-1]:
                raise
            failed = f"{tail.name}: {type(e).__name__}: {e}"
            continue
        times = dict(import_s=t1 - t0, linalg_s=t2 - t1, llvm_s=t3 - t2, jit_run_s=time.perf_counter() - t3)
        return Compiled(llvm_ir, ins, outs, so, schedule=tail.name, dynamic=bool(dynamic), result_sizes=sizes,
                        size_symbols=symbols, decomposed=decompose, inplace_safe=inplace_safe,
                        upcast=upcast, input_perms=perms, schedule_failed=failed, times=times)
    raise AssertionError("unreachable: the plain tail raises or returns")


def compile_request(ctx, req: Request) -> Reply:
    """One request -> Compiled, or Failed with the failure that got furthest over the attempts (the op itself, then
    its decomposition)."""
    func = resolve(req.op)
    if req.inject == "abort":
        os.abort()
    if req.inject == "hang":
        time.sleep(1e9)
    _, tensors = flatten(req.op, req.args, req.kwargs)
    try:
        native = func(*req.args, **req.kwargs)
    except Exception as e:
        return Failed("meta", f"native: {type(e).__name__}: {e}")
    natives = list(native) if isinstance(native, (tuple, list)) else [native]
    # None results (convolution_backward's unrequested gradients) are not computed; some result must be a tensor
    if not all(isinstance(n, torch.Tensor) or n is None for n in natives) or all(n is None for n in natives):
        return Failed("unsupported", "non-tensor result")
    call = Call(func, req.args, req.kwargs, tensors, natives)
    attempts = [False] + ([True] if decompositions.has(func) else [])
    if decompositions.decompose_only(func, dict(zip([a.name for a in func._schema.arguments], req.args)) | req.kwargs):
        attempts = [True]
    best = None
    for decompose in attempts:
        try:
            return _attempt(ctx, call, req, decompose)
        except CompileFailure as e:
            failure = e
        except Exception as e:  # a bug on our side still must not take the user's call down
            failure = CompileFailure("import", f"{type(e).__name__}: {e}")
        # Keep the failure that got furthest: a wrong answer after decomposing matters more than a lowering gap.
        if best is None or CATEGORIES.index(failure.category) > CATEGORIES.index(best.category):
            best = failure
    return Failed(best.category, best.reason)
