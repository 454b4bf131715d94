"""The one decision point: native by design, or through MLIR (cache hit / compile) with a recorded fallback."""
from __future__ import annotations

import logging
import time

import torch

from . import compiler, spec, validate
from .errors import CompileFailure
from .report import Recorder

log = logging.getLogger(__name__)
recorder = Recorder()


def _returns_list(func) -> bool:
    r = func._schema.returns
    return len(r) == 1 and str(r[0].type).startswith(("Tensor[]", "List[Tensor]"))


def _run_mlir(p: spec.OpPlan, func, args, kwargs):
    """The result through MLIR; raises CompileFailure for anything it cannot do correctly."""
    if p.unsupported:
        raise CompileFailure("unsupported", p.unsupported)
    f = p.functional
    if p.out_names:
        dests = [kwargs[n] for n in p.out_names]
        kwargs = {k: v for k, v in kwargs.items() if k not in p.out_names}
    elif p.inplace:
        dests = [args[0]]
    else:
        dests = []
    key, tensors = spec.flatten(f, args, kwargs)
    if not tensors:
        raise CompileFailure("unsupported", "only the destination is a tensor")
    check = validate.checker(f)
    if check is not None and not check(args, kwargs):
        raise CompileFailure("unsupported", "indices out of range, unchecked, or op known wrong: run natively")
    cache = compiler.cache()
    kernel = cache.lookup(key)
    hit = kernel is not None
    if not hit:
        t0 = time.perf_counter()
        try:
            kernel = compiler.compile_kernel(key, f, args, kwargs, tensors)
        finally:
            recorder.compiled(p.name, time.perf_counter() - t0)
    for d, m in zip(dests, kernel.outputs):
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != m.shape or d.dtype != m.dtype:
            raise CompileFailure("unsupported", "destination needs a resize or a cast")
    try:
        outs = kernel([t if t.is_contiguous() else t.contiguous() for t in tensors])
    except Exception as e:
        failure = CompileFailure("runtime", f"{type(e).__name__}: {e}")
        cache.put_failure(key, failure)
        raise failure from None
    recorder.mlir(p.name, hit)
    if dests:
        for d, o in zip(dests, outs):
            d.copy_(o)
        if p.inplace:
            return args[0]
        return dests[0] if len(dests) == 1 else tuple(dests)
    if _returns_list(func):
        return outs
    return outs[0] if len(outs) == 1 else tuple(outs)


def call(func, args: tuple, kwargs: dict):
    """Run one aten call on plain tensors: through MLIR when possible, natively otherwise."""
    p = spec.plan(func)
    if p.native_reason is not None:
        recorder.native(p.name, p.native_reason)
        return func(*args, **kwargs)
    if not any(isinstance(x, torch.Tensor) for x in _leaves(args, kwargs)):
        recorder.native(p.name, "no tensor input")
        return func(*args, **kwargs)
    try:
        return _run_mlir(p, func, args, kwargs)
    except CompileFailure as e:
        failure = e
    log.debug("%s falls back (%s: %s)", p.name, failure.category, failure.reason)
    recorder.fallback(p.name, failure.category, failure.reason)
    return func(*args, **kwargs)      # outside the handler: PyTorch's own errors reach the user unchained


def _leaves(args, kwargs):
    for x in args:
        if isinstance(x, (list, tuple)):
            yield from x
        else:
            yield x
    yield from kwargs.values()
