"""The one decision point: native by design, or through MLIR (cache hit / compile) with a recorded fallback."""
from __future__ import annotations

import logging
import math
import time

import torch

from . import compiler, config, spec, validate
from .errors import CompileFailure, StrictModeError
from .report import Recorder

log = logging.getLogger(__name__)
recorder = Recorder()


class OpEntry:
    """Everything the hot path needs about one OpOverload, resolved once (OpOverload hashing is slow Python)."""
    __slots__ = ("func", "plan", "fname", "check", "returns_list", "aliasing", "write_in_place", "plain", "inplace",
                 "guard", "result_guard", "reads_own_view", "view_pairs", "view_of_self")

    def __init__(self, func):
        p = spec.plan(func)
        r = func._schema.returns
        self.func = func            # keeps the object alive, so its id stays unique in the table
        self.plan = p
        self.fname = str(p.functional) if p.functional is not None else p.name
        self.check = validate.checker(p.functional) if p.functional is not None else None
        # A pointwise in-place op reads and writes each element at the same index: its kernel may write straight
        # into a contiguous destination (no temporary, no copy back).
        self.write_in_place = p.inplace and torch.Tag.pointwise in func.tags
        # Values a kernel gets wrong (NaN where the lowering mishandles it, an integer zero divisor): checked in
        # the inputs before the kernel runs (`guard`), or, where the results show them, after (`result_guard`;
        # not for results written straight into a destination, which may be an input native then needs).
        self.result_guard = validate.result_guard(p.functional) if p.functional is not None and not \
            self.write_in_place else None
        self.guard = validate.value_guard(p.functional, self.result_guard is not None) \
            if p.functional is not None else None
        self.returns_list = len(r) == 1 and str(r[0].type).startswith(("Tensor[]", "List[Tensor]"))
        # Wrapper outputs need PyTorch's aliasing fix-up only where the schema says a result aliases an input.
        self.aliasing = any(a.alias_info is not None for a in r) or bool(p.inplace or p.out_names)
        # A view op (results alias inputs read-only, nothing written): the (argument, result) index pairs whose
        # storages PyTorch's aliasing fix-up shares, done directly (return_and_correct_aliasing's general path
        # costs ~1 us more a call; BERT's layer makes 35 view calls).
        self.view_pairs = _view_pairs(func) if self.aliasing else None
        # VIEW_ONE / VIEW_LIST: a view (or _unsafe_view) of args[0], the op's only tensor argument, giving one tensor
        # or a list (view, t, expand, transpose, unbind, split, ...): the wrapper runs it without the general
        # unwrap, dispatcher and wrap (tensor.py), ~3 us of the ~11 such a call costs (BERT's layer makes 28).
        self.view_of_self = _view_of_self(func) if p.native_reason == "view" else 0
        # An input may be the destination's very view for in-place and pointwise ops; an out= of any other op
        # leaves every sharing to PyTorch (cat raises for some)
        self.reads_own_view = bool(p.inplace) or torch.Tag.pointwise in func.tags
        # A plain functional call: no destination to write, nothing unsupported (the hot path's common case).
        self.plain = not (p.unsupported or p.inplace or p.out_names)
        self.inplace = p.inplace


def _view_pairs(func):
    from torch.utils._python_dispatch import get_alias_info
    try:
        info = get_alias_info(func)
    except Exception:
        return None
    if info.outs_write_aliases or info.is_inplace_view_op or not info.read_only_alias_match_indexes:
        return None
    if len(func._schema.returns) != 1 or str(func._schema.returns[0].type) != "Tensor":
        return None            # one plain Tensor result (unbind, split: lists, left to the general path)
    return tuple(a for a, _ in info.read_only_alias_match_indexes)


VIEW_ONE, VIEW_LIST = 1, 2


def _view_of_self(func) -> int:
    from torch.utils._python_dispatch import get_alias_info
    args, rets = func._schema.arguments, func._schema.returns
    if not args or str(args[0].type) != "Tensor" or any("Tensor" in str(a.type) for a in args[1:]) or len(rets) != 1:
        return 0
    try:
        info = get_alias_info(func)
    except Exception:
        return 0
    if info.outs_write_aliases or info.is_inplace_view_op:
        return 0          # t_, transpose_, ...: they change args[0]'s own metadata
    pairs = list(info.read_only_alias_match_indexes)
    ret = str(rets[0].type)
    if ret == "Tensor" and pairs in ([(0, 0)], []):       # [] : _unsafe_view (a view PyTorch does not declare)
        return VIEW_ONE
    if ret in ("List[Tensor]", "Tensor[]") and pairs == [(0, 0)]:
        return VIEW_LIST
    return 0


_entries: dict = {}


def entry(func) -> OpEntry:
    e = _entries.get(id(func))
    if e is None:
        e = _entries[id(func)] = OpEntry(func)
    return e


def _run_mlir(e: OpEntry, func, args, kwargs):
    """The result through MLIR; raises CompileFailure for anything it cannot do correctly."""
    p = e.plan
    dests = None
    if not e.plain:                       # in-place, out= or not supported: the common case skips all three
        if p.unsupported:
            raise CompileFailure("unsupported", p.unsupported)
        if p.out_names:
            dests = [kwargs[n] for n in p.out_names]
            kwargs = {k: v for k, v in kwargs.items() if k not in p.out_names}
        else:
            dests = [args[0]]
    key, tensors = spec.flatten(e.fname, args, kwargs)
    if not tensors:
        if not dests:
            raise _NoTensorInput()
        raise CompileFailure("unsupported", "only the destination is a tensor")
    if dests and any(isinstance(d, torch.Tensor) and _overlaps_itself(d) for d in dests):
        raise CompileFailure("unsupported", "the destination overlaps itself")          # PyTorch raises
    if dests and not all(_no_partial_alias(d, tensors, e.reads_own_view) for d in dests
                         if isinstance(d, torch.Tensor)):
        raise CompileFailure("unsupported", "an input partially overlaps the destination")   # PyTorch decides
    if e.check is not None and not e.check(args, kwargs):
        raise CompileFailure("unsupported", "indices out of range, unchecked, or op known wrong: run natively")
    if e.guard is not None:
        why = e.guard(args, kwargs, tensors)
        if why is not None:
            raise CompileFailure("unsupported", why)
    cache = compiler.cache()
    kernel = cache.lookup(key)
    hit = kernel is not None
    if not hit:
        why = spec.unsupported(tensors)
        if why is not None:
            failure = CompileFailure("unsupported", why)
            cache.put_failure(key, failure)       # by key: the key holds each tensor's dtype and shape
            raise failure
        t0 = time.perf_counter()
        try:
            kernel = compiler.compile_kernel(key, p.functional, args, kwargs, tensors)
        finally:
            recorder.compiled(p.name, time.perf_counter() - t0)
    direct = False
    if dests is not None:
        for d, m in zip(dests, kernel.outputs):
            if m is None or not isinstance(d, torch.Tensor) or tuple(d.shape) != m.shape or d.dtype != m.dtype:
                raise CompileFailure("unsupported", "destination needs a resize or a cast")
        direct = e.write_in_place and kernel.inplace_safe and dests[0].is_contiguous()
    # Verify mode: native's result first (the kernel may write into args[0]), then compared with the kernel's.
    want = _native(p.functional, args, kwargs) if config._current.verify else None
    try:
        outs = kernel.run(tensors, dests if direct else None)
    except Exception as exc:
        failure = CompileFailure("runtime", f"{type(exc).__name__}: {exc}")
        cache.put_failure(key, failure)      # a kernel that raised is not tried again
        raise failure from None
    if e.result_guard is not None:
        why = e.result_guard(outs)
        if why is not None:
            raise CompileFailure("unsupported", why)
    if want is None:
        recorder.mlir(p.name, hit)
    elif _verified(p, key, kernel, args, kwargs, outs, want):
        recorder.mlir(p.name, hit)
    else:                                    # native's result instead (recorded as a fallback)
        outs, direct = want, False
    if dests is None:
        if e.returns_list:
            return outs
        return outs[0] if len(outs) == 1 else tuple(outs)
    if not direct:
        for d, o in zip(dests, outs):
            d.copy_(o)
    if p.inplace:
        return args[0]
    return dests[0] if len(dests) == 1 else tuple(dests)


def _overlaps_itself(t) -> bool:
    """Some elements of `t` share memory (an expanded view): PyTorch refuses to write into it. (2, "too hard to
    tell", is what PyTorch lets through too.)"""
    return torch._debug_has_internal_overlap(t) == 1


def _no_partial_alias(dest, tensors, exact_ok: bool = True) -> bool:
    """No input overlaps `dest`, except (`exact_ok`) as the very same view (which a pointwise kernel reads where it
    writes)."""
    base = dest.untyped_storage().data_ptr()
    for t in tensors:
        if t.untyped_storage().data_ptr() == base and (not exact_ok or
                t.data_ptr() != dest.data_ptr() or t.shape != dest.shape or t.stride() != dest.stride()):
            return False
    return True


def _native(func, args, kwargs) -> list:
    out = func(*args, **kwargs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _verified(p, key, kernel, args, kwargs, outs, want) -> bool:
    """Whether the kernel's results equal native's (within the tolerance kernels are qualified with). A kernel
    that differs is dropped from the cache and its key marked failed; the report gets the op's max errors."""
    from .worker import tolerance
    import torch
    recorder.verified(p.name)
    for got, w in zip(outs, want):
        if got is None or w is None:
            continue
        try:
            torch.testing.assert_close(got, w, equal_nan=True, check_stride=False, **tolerance(p.functional, w))
        except AssertionError as e:
            abs_err, rel_err = _errors(got, w)
            reason = f"verify: max abs error {abs_err:.3g}, max rel error {rel_err:.3g} " \
                     f"({' '.join(str(e).split(chr(10))[1:2]).strip()})"
            failure = CompileFailure("mismatch", reason)
            recorder.mismatch(p.name, abs_err, rel_err, reason)
            if config._current.dump_dir:
                from . import repro
                failure.repro = repro.write(repro.directory(config._current.dump_dir, p.name, key), p.functional,
                                            args, kwargs, "mismatch", reason, key, llvm_ir=kernel.llvm_ir)
                recorder.repro(p.name, failure.repro)
            compiler.cache().discard(key, failure)
            if config._current.strict:
                raise StrictModeError(p.name, "mismatch", reason)
            return False
    return True


def _errors(got, want) -> tuple:
    import torch
    if got.shape != want.shape:
        return math.inf, math.inf
    g, w = got.detach().double(), want.detach().double()
    d = (g - w).abs()
    d = torch.where(torch.isnan(g) & torch.isnan(w), torch.zeros_like(d), d).nan_to_num(nan=math.inf)
    if not d.numel():
        return 0.0, 0.0
    rel = d / w.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(d.max()), float(rel.max())


class _NoTensorInput(Exception):
    """A factory call (no tensor argument): native by design."""


def call(func, args: tuple, kwargs: dict):
    """Run one aten call on plain tensors: through MLIR when possible, natively otherwise."""
    return call_entry(entry(func), args, kwargs)


def call_entry(e: OpEntry, args: tuple, kwargs: dict):
    func, p = e.func, e.plan
    if p.native_reason is not None:
        recorder.native(p.name, p.native_reason)
        return func(*args, **kwargs)
    try:
        return _run_mlir(e, func, args, kwargs)
    except CompileFailure as exc:
        failure = exc
    except _NoTensorInput:
        recorder.native(p.name, "no tensor input")
        return func(*args, **kwargs)
    log.debug("%s falls back (%s: %s)", p.name, failure.category, failure.reason)
    recorder.fallback(p.name, failure.category, failure.reason)
    if failure.repro:
        recorder.repro(p.name, failure.repro)
    if config._current.strict:
        raise StrictModeError(p.name, failure.category, failure.reason)
    return func(*args, **kwargs)      # outside the handler: PyTorch's own errors reach the user unchained
