"""The one decision point: native by design, or through MLIR (cache hit / compile) with a recorded fallback."""
from __future__ import annotations

import logging
import math

import torch
from torch.utils._python_dispatch import get_alias_info

from . import compiler, config, repro, shapes, spec, validate
from .errors import CompileFailure, StrictModeError
from .report import Recorder

log = logging.getLogger(__name__)
recorder = Recorder()


class OpEntry:
    """Everything the hot path needs about one OpOverload, resolved once (OpOverload hashing is slow Python)."""
    __slots__ = ("func", "plan", "fname", "check", "returns_list", "written", "write_in_place", "plain", "inplace",
                 "guard", "result_guard", "reads_own_view", "view_of_self")

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
        # The arguments the op writes (positions, or names of keyword-only ones), for ops whose writes may change an
        # argument's storage or metadata (set_, resize_, transpose_, out= that resizes, ...): the wrappers follow
        # their elems afterwards (tensor._follow_writes). In-place ops with a functional variant (add_, relu_)
        # write data only; views alias their input's storage through their elems: neither needs it.
        self.written = () if p.inplace else _written(func)
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


def _written(func) -> tuple:
    out, pos = [], 0
    for a in func._schema.arguments:
        if a.alias_info is not None and a.alias_info.is_write:
            out.append(a.name if a.kwarg_only else pos)
        pos += not a.kwarg_only
    return tuple(out)


VIEW_ONE, VIEW_LIST = 1, 2


def _view_of_self(func) -> int:
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
        kernel = shapes.kernel_for(recorder, key, p.name, p.functional, args, kwargs, tensors)
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
        recorder.mlir(p.name, hit, kernel.dynamic is not None)
    elif _verified(p, key, kernel, args, kwargs, outs, want):
        recorder.mlir(p.name, hit, kernel.dynamic is not None)
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
    out = _native_call(func, args, kwargs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _verified(p, key, kernel, args, kwargs, outs, want) -> bool:
    """Whether the kernel's results equal native's (within the tolerance kernels are qualified with). A kernel
    that differs is dropped from the cache and its key marked failed; the report gets the op's max errors."""
    recorder.verified(p.name)
    for got, w in zip(outs, want):
        if got is None or w is None:
            continue
        try:
            torch.testing.assert_close(got, w, equal_nan=True, check_stride=False, **validate.tolerance(p.functional, w))
        except AssertionError as e:
            abs_err, rel_err = _errors(got, w)
            reason = f"verify: max abs error {abs_err:.3g}, max rel error {rel_err:.3g} " \
                     f"({' '.join(str(e).split(chr(10))[1:2]).strip()})"
            failure = CompileFailure("mismatch", reason)
            recorder.mismatch(p.name, abs_err, rel_err, reason)
            if config._current.dump_dir:
                failure.repro = repro.write(repro.directory(config._current.dump_dir, p.name, key), p.functional,
                                            args, kwargs, "mismatch", reason, key, llvm_ir=kernel.llvm_ir)
                recorder.repro(p.name, failure.repro)
            compiler.cache().discard(key, failure)
            if kernel.dynamic is not None:
                shapes.found_wrong(recorder, key, p.name, reason)
            if config._current.strict:
                raise StrictModeError(p.name, "mismatch", reason)
            return False
    return True


def _errors(got, want) -> tuple:
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
        return call_native(p, p.native_reason, func, args, kwargs)
    try:
        return _run_mlir(e, func, args, kwargs)
    except CompileFailure as exc:
        failure = exc
    except _NoTensorInput:
        failure = None
    # Outside the handlers: PyTorch's own errors reach the user unchained.
    if failure is None:
        return call_native(p, "no tensor input", func, args, kwargs)
    log.debug("%s falls back (%s: %s)", p.name, failure.category, failure.reason)
    if config._current.strict and failure.category != "meta":
        _fell_back(p, failure)
        raise StrictModeError(p.name, failure.category, failure.reason)
    try:
        out = _native_call(func, args, kwargs)
    except Exception:
        # Native raises too: the user's own error (a bad shape, an index out of range), neither coverage nor a gap.
        recorder.user_error(p.name)
        raise
    _fell_back(p, failure)
    if config._current.strict:             # meta refused what native ran
        raise StrictModeError(p.name, failure.category, failure.reason)
    return out


def call_native(p, why: str, func, args, kwargs):
    """A call native by design, recorded as such (or as the user's error, when it raises)."""
    try:
        out = func(*args, **kwargs) if why == "view" else _native_call(func, args, kwargs)
    except Exception:
        recorder.user_error(p.name)
        raise
    recorder.native(p.name, why)
    return out


def _fell_back(p, failure: CompileFailure) -> None:
    recorder.fallback(p.name, failure.category, failure.reason)
    if failure.repro:
        recorder.repro(p.name, failure.repro)


_K = torch._C.DispatchKey
_LAZY_KEYS = torch._C.DispatchKeySet(_K.Conjugate) | torch._C.DispatchKeySet(_K.Negative) | \
    torch._C.DispatchKeySet(_K.ZeroTensor)


def _native_call(func, args, kwargs):
    """func natively. A __torch_dispatch__ handler runs with the Conjugate, Negative and ZeroTensor keys excluded, so
    a lazy conj view that a complex op's C++ takes internally (`mH` in linalg.pinv, polar, matrix_sqrth, lstsq) is
    read unconjugated: wrong numbers (pytorch issue 198118, any TorchDispatchMode). Calls with a complex tensor run
    with those keys back in force."""
    if not any(isinstance(a, torch.Tensor) and a.is_complex() or
               isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) and x.is_complex() for x in a)
               for a in (*args, *kwargs.values())):
        return func(*args, **kwargs)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                         torch._C._dispatch_tls_local_exclude_set() - _LAZY_KEYS):
        return func(*args, **kwargs)
