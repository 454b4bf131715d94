"""Shapes that change: a kernel dynamic in the dims that vary, compiled once per call family, bound per shape.

A call family is a cache key with its tensors' sizes left out (`generic`): the op, each tensor's dtype, rank, layout
and which dims are 0 or 1, and every other argument. Policy (config `dynamic`):
- "auto": a family's first shape gets a static kernel (the fast path for shapes that repeat). A later shape that
  differs from the nearest one the family has a kernel for in a way that looks like sizes changing (`_plausible`:
  not another layer of the same op, whose weight differs too) gets a kernel dynamic in those dims (and in the
  dims that kernel was dynamic in), used for every later shape that differs only there.
- "always": every dim of size >= 2 is dynamic from the first call (a conv's or a matmul's: those of its
  ACTIVATION_DIMS). "never": one static kernel per shape.
Dims of size 0 and 1 stay static (broadcasting decides on them; a dynamic dim never broadcasts in torch-mlir's
lowering), so they are part of the family.

Checks: the worker qualifies a dynamic kernel at its first call's sizes and at sizes that end in partial tiles
(build/qualify.PROBES); here, the first run at each new concrete shape is compared with native PyTorch, whose
results also give that shape's output metadata. The bound kernel is then cached under the concrete key, so a hit
costs what a static hit does. A dynamic kernel that fails to compile or a check leaves its family on static
kernels (reported per op).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional

import cachetools
import torch

from . import compiler, config, validate
from .errors import CompileFailure
from .kernel import Kernel, kernel_inputs, output_metas, result_sizes
from .report import Recorder

log = logging.getLogger(__name__)


class _Family:
    """What one call family has seen: the shapes of its static kernels, its dynamic kernels (or why it has none)."""
    __slots__ = ("seen", "kernels", "failed", "hot")

    def __init__(self):
        self.seen: list = []                 # shapes (a tuple per tensor) its static kernels were compiled for
        self.kernels: list = []              # (template: sizes with -1 in the dynamic dims, dynamic Kernel)
        self.failed = ""                     # why the family stays static
        self.hot: Optional[set] = set()      # concrete keys to compile static next (None: never again)


# Re-specializing a hot size: in "auto" mode, a concrete shape that ran HOT_CALLS times on its family's dynamic
# kernel gets a static kernel of its own on its next call (a static schedule can be several times faster: a conv's,
# a batch norm's split across threads). Sizes that come once (a KV cache's steps) stay on the dynamic kernel;
# sizes that repeat (an image size served all day, and the layers of one model that share a family: ResNet's batch
# norms at 112 and 56 pixels) end on static kernels. The count costs a Python call per run, on those bound kernels
# only, until then.
HOT_CALLS = 32


_SEEN_KEPT = 64
_families: cachetools.LRUCache = cachetools.LRUCache(16384)
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()       # one another thread of the parent held at the fork would never be released


os.register_at_fork(after_in_child=_after_fork_in_child)


def found_wrong(recorder: Recorder, key: tuple, name: str, why: str) -> None:
    """A dynamic kernel's result differed from native's (verify mode): its family goes back to static kernels."""
    fam = _families.get(generic(key))
    if fam is not None and fam.kernels:
        _give_up(recorder, fam, name, why)


def reset() -> None:
    """Forget every family (tests; the kernel cache is cleared separately)."""
    with _lock:
        _families.clear()


def _generic_entry(x):
    if type(x) is tuple and len(x) == 3 and type(x[0]) is torch.Size:      # a tensor's (shape, dtype, layout)
        shape, dtype, layout = x
        small = tuple(s if s < 2 else -1 for s in shape)
        order = True if layout is True else tuple(sorted(range(len(shape)), key=lambda i: (-layout[i], i)))
        return ("tensor", small, dtype, order)
    return x


def generic(key: tuple) -> tuple:
    """The call family of a concrete cache key (spec.flatten): its tensors' sizes >= 2 left out."""
    return tuple(_generic_entry(x) for x in key)


def _template(shapes, dyn) -> tuple:
    return tuple(tuple(-1 if i in d else s for i, s in enumerate(shape)) for shape, d in zip(shapes, dyn))


def _serves(template: tuple, shapes) -> bool:
    return all(len(t) == len(s) and all(a == -1 or a == b for a, b in zip(t, s)) for t, s in zip(template, shapes))


def _changed(base: tuple, shapes) -> list:
    """(tensor, dim) of each size of `shapes` that differs from `base` (a -1 there matches any size)."""
    return [(n, i) for n, (t, s) in enumerate(zip(base, shapes)) for i, (a, b) in enumerate(zip(t, s))
            if a != -1 and a != b]


def _plausible(base: tuple, shapes, changed: list) -> bool:
    """Whether `changed` looks like one call's sizes changing (a longer sequence, a larger image), not another
    layer of the same op: all the changed sizes take one old -> new pair, or some tensor argument (a weight) kept
    its sizes. Another layer of a conv or a matmul changes its weight and its input's channels too."""
    pairs = {(base[n][i], shapes[n][i]) for n, i in changed}
    if len(pairs) == 1:
        return True
    touched = {n for n, _ in changed}
    return any(n not in touched and any(s >= 2 for s in shape) for n, shape in enumerate(shapes))


# Contractions with a weight: the dims a size change moves (rows; batch and image size), which are also the dims
# their dynamic schedules take. A change elsewhere (another layer's width, its weight's sizes) is another layer,
# which gets a static kernel of its own. (bmm and baddbmm have none: attention's sequence dims vary in both.)
ACTIVATION_DIMS = {"aten.convolution.default": {(0, 0), (0, 2), (0, 3)}, "aten.mm.default": {(0, 0)},
                   "aten.addmm.default": {(1, 0)}}


def _plan(fam: _Family, shapes, mode: str, op: str = ""):
    """(dims per tensor, the shape or template they vary from, the kernel it replaces or None) for a dynamic
    kernel for this call, or None for a static one. "auto": the nearest shape the family has a kernel for (its
    dynamic kernels' templates first), if the change from it is `_plausible`."""
    if mode == "always":
        # every dim of size >= 2, but a contraction's weight keeps its sizes (its dynamic schedules take only the
        # activation dims; with a dynamic weight a conv runs as plain loops, 18-25x its static kernel)
        allowed = ACTIVATION_DIMS.get(op)
        dyn = tuple(tuple(i for i, s in enumerate(shape) if s >= 2 and (allowed is None or (n, i) in allowed))
                    for n, shape in enumerate(shapes))
        return (dyn, None, None) if any(dyn) else None
    best = None
    for template, k in fam.kernels:
        c = _changed(template, shapes)
        if best is None or len(c) < len(best[1]):
            best = (template, c, k)
    for old in fam.seen:
        c = _changed(old, shapes)
        if best is None or len(c) < len(best[1]):
            best = (old, c, None)
    if best is None or not best[1] or not _plausible(best[0], shapes, best[1]):
        return None
    base, changed, replaced = best
    allowed = ACTIVATION_DIMS.get(op)
    if allowed is not None and not set(changed) <= allowed:
        return None
    dims = [set(i for i, s in enumerate(t) if s == -1) for t in base]
    for n, i in changed:
        dims[n].add(i)
    return tuple(tuple(sorted(d)) for d in dims), base, replaced


def _why(base, shapes, dyn) -> str:
    """`dim 0 of arg 0 varies (8 -> 9)` for the log: the tensor arguments' dims that made this kernel dynamic."""
    parts = []
    for n, (d, shape) in enumerate(zip(dyn, shapes)):
        for i in d:
            old = base[n][i] if base is not None else -1
            change = f"{old} -> {shape[i]}" if old not in (-1, shape[i]) else ""
            parts.append((f"dim {i} of arg {n}", change))
    if len(parts) == 1:
        what, change = parts[0]
        return what + " varies" + (f" ({change})" if change else "")
    text = ", ".join(w + (f" ({c})" if c else "") for w, c in parts[:4])
    return text + (f" and {len(parts) - 4} more" if len(parts) > 4 else "") + " vary"


def kernel_for(recorder: Recorder, key: tuple, name: str, func, args, kwargs, tensors) -> Kernel:
    """The kernel for a call whose concrete key missed the cache: a dynamic kernel of its family bound to its
    shapes, a new dynamic kernel, or a static one (compiled or from disk). Raises CompileFailure."""
    mode = config.get().dynamic
    if mode != "never" and tensors:
        g = generic(key)
        shapes = tuple(tuple(t.shape) for t in tensors)
        with _lock:
            fam = _families.get(g)
            if fam is None:
                fam = _families[g] = _Family()
        if fam.hot and key in fam.hot:
            fam.hot.discard(key)
            try:
                return _compile(recorder, key, name, func, args, kwargs, tensors,
                                why=f"{name}: {list(shapes)} ran {HOT_CALLS} times on a dynamic kernel: ")
            except CompileFailure:
                fam.hot = None       # the static compile failed: this family's sizes stay on the dynamic kernel
        for template, k in list(fam.kernels):
            if _serves(template, shapes):
                bound = _bind(recorder, fam, k, key, name, func, args, kwargs, tensors)
                if bound is not None:
                    return bound
                break
        plan = None if fam.failed else _plan(fam, shapes, mode, str(func))
        if plan is not None:
            dyn, base, replaced = plan
            why = f"{name}: {_why(base, shapes, dyn)}: compiling a kernel dynamic in " \
                  f"{'them' if sum(map(len, dyn)) > 1 else 'it'}: "
            template = _template(shapes, dyn)
            k = _compile(recorder, g + ("dynamic", template), name, func, args, kwargs, tensors, dyn, fam, why)
            if k is not None:
                fam.kernels = [(t, x) for t, x in fam.kernels if x is not replaced] + [(template, k)]
                bound = _bind(recorder, fam, k, key, name, func, args, kwargs, tensors)
                if bound is not None:
                    return bound
        if len(fam.seen) < _SEEN_KEPT:
            fam.seen.append(shapes)
    return _compile(recorder, key, name, func, args, kwargs, tensors)


def _compile(recorder: Recorder, key, name, func, args, kwargs, tensors, dyn=None, fam=None,
             why: str = "") -> Optional[Kernel]:
    """A static kernel (raises CompileFailure), or with `dyn` a dynamic one (None if it fails: `fam` stays
    static)."""
    t0 = time.perf_counter()
    try:
        return compiler.compile_kernel(key, func, args, kwargs, tensors, dynamic=dyn, why=why)
    except CompileFailure as e:
        if dyn is None or e.category == "meta" and e.reason.startswith("native:"):
            raise                    # static, or the user's own error (native raised): not the family's failure
        _give_up(recorder, fam, name, f"{e.category}: {e.reason}")
        return None
    finally:
        recorder.compiled(name, time.perf_counter() - t0, dynamic=dyn is not None)


def _give_up(recorder: Recorder, fam: _Family, name: str, why: str) -> None:
    fam.kernels, fam.failed = [], why[:300]
    recorder.dynamic_failed(name, fam.failed)
    log.info("%s: no dynamic kernel, static kernels from now on (%s)", name, fam.failed)


def _bind(recorder: Recorder, fam: _Family, k: Kernel, key, name, func, args, kwargs, tensors) -> Optional[Kernel]:
    """`k` bound to this call's shapes after its first run there matched native PyTorch, and cached under the
    concrete key; None where the result cannot be judged (values the dispatcher would refuse) or the check
    failed (the family then stays static)."""
    try:
        out = func(*args, **kwargs)
    except Exception as e:           # the user's own error: the dispatcher's fallback raises it again, natively
        raise CompileFailure("meta", f"native: {type(e).__name__}: {e}") from None
    want = list(out) if isinstance(out, (tuple, list)) else [out]
    shapes = [tuple(t.shape) for t in tensors]
    computed = [tuple(w.shape) for w, m in zip(want, k.outputs) if m is not None and not m.empty and w is not None]
    expected = result_sizes(k, tensors)
    if expected != computed:
        # A size the kernel computes otherwise than native (a trace that specialized on its first sizes): it would
        # write past the results native sized. Never run it there.
        _give_up(recorder, fam, name, f"result sizes at {shapes}: {expected} from its symbolic sizes, native "
                 f"{computed}")
        return None
    try:
        bound = k.bind(kernel_inputs(tensors, k.input_perms), output_metas(want, k.outputs))
        got = bound.run(tensors)
    except Exception as e:
        _give_up(recorder, fam, name, f"binding at {shapes}: {type(e).__name__}: {e}")
        return None
    guard = validate.result_guard(func)
    if guard is not None and guard(got) is not None:
        return None
    for g, w in zip(got, want):
        if w is None:
            continue
        try:
            torch.testing.assert_close(g, w, equal_nan=True, check_stride=False, **validate.tolerance(func, w))
        except AssertionError as e:
            _give_up(recorder, fam, name, f"mismatch at {shapes} on its first run there: "
                     + " ".join(str(e).split("\n")[1:3]).strip())
            return None
    if fam.hot is not None and config.get().dynamic == "auto":
        _count_runs(bound, key, fam)
    compiler.cache().put(key, bound)
    recorder.bound(name)
    return bound


def _count_runs(bound: Kernel, key, fam: _Family) -> None:
    """After HOT_CALLS runs, `bound` leaves the cache and its key is marked for a static compile (HOT_CALLS)."""
    run, count = bound.run, [0]

    def counted(tensors, outs=None):
        count[0] += 1
        if count[0] == HOT_CALLS and fam.hot is not None:
            fam.hot.add(key)
            compiler.cache().drop(key)
        return run(tensors, outs)
    bound.run = counted
