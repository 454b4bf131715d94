"""One aten call -> a torch.fx graph of it: the op itself, traced through decompositions, or computed in float32."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext, is_concrete_int

from .. import decompositions
from ..decompositions.libm import _traced
from ..errors import CompileFailure
from ..spec import map_tensors

_aten = torch.ops.aten


def fakes_for(tensors, dynamic=None) -> tuple:
    """(mode, fake tensors) for a call's tensors. `dynamic` (per tensor, the dims that vary): those dims become
    symbols of one ShapeEnv, so the graph's types say `?` there (the FX importer's rule for a SymInt); every other
    dim stays the call's own size."""
    if not dynamic or not any(dynamic):
        mode = FakeTensorMode()
        return mode, [mode.from_tensor(t) for t in tensors]
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fakes = []
    for t, dims in zip(_distinct(tensors), dynamic):
        sizes = [DimDynamic.DYNAMIC if i in dims else DimDynamic.STATIC for i in range(t.dim())]
        fakes.append(mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes)))
    return mode, fakes


def _fake_call(func, args, kwargs, tensors, dynamic=None):
    mode, fakes = fakes_for(tensors, dynamic)
    it = iter(fakes)
    fargs = map_tensors((args, kwargs), lambda _t: next(it))
    try:
        with mode:
            out = func(*fargs[0], **fargs[1])
    except Exception as e:  # bad input (native raises the same) or a data-dependent output shape
        raise CompileFailure("meta", f"{type(e).__name__}: {e}") from None
    return fakes, out


def size_exprs(inputs, results) -> tuple:
    """(per result, its sizes: an int, or the text of a symbolic size's expression; symbol -> (input, dim)): what
    a dynamic kernel's result sizes are at any input sizes, to check against native's at each new shape."""
    symbols = {}
    for i, f in enumerate(inputs):
        for d, s in enumerate(f.shape):
            if not is_concrete_int(s):
                symbols.setdefault(str(s.node.expr), (i, d))
    sizes = [[int(s) if is_concrete_int(s) else str(s.node.expr) for s in r.shape] for r in results]
    for r in results:
        for s in r.shape:
            if not is_concrete_int(s) and any(str(x) not in symbols for x in s.node.expr.free_symbols):
                raise CompileFailure("unsupported", f"a result size ({s}) is not a function of the input sizes")
    return sizes, symbols


def dims(shape) -> list:
    """A fake tensor's sizes as the importer types them: an int, or None for a symbolic (`?`) size."""
    return [d if is_concrete_int(d) else None for d in shape]


def computed(outs) -> list:
    """Per result, whether the kernel computes it: zero-size results hold no data and are allocated by the caller,
    unless every result is zero-size (an op on an empty batch): then the kernel returns the first one, and the call
    still runs through MLIR (lowering at zero sizes can fail: repeat of an empty tensor divides by zero). Only the
    first: empty results of one shape become one value in MLIR, returned twice, and bufferization crashes on that
    (linalg.lu of a 0x3x5 batch: SIGSEGV). None results (a gradient not asked for) are never computed and are
    returned as None."""
    some = any(o is not None and o.numel() > 0 for o in outs)
    if some:
        return [o is not None and o.numel() > 0 for o in outs]
    first = next((i for i, o in enumerate(outs) if o is not None), None)
    return [i == first for i in range(len(outs))]


def _results(out) -> list:
    """The results the kernel computes (see `computed`)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    for o in outs:
        if not isinstance(o, torch.Tensor) and o is not None:
            raise CompileFailure("unsupported", f"non-tensor result {type(o).__name__}")
    kept = [o for o, c in zip(outs, computed(outs)) if c]
    if not kept:
        raise CompileFailure("unsupported", "no tensor result")
    return kept


def _inverse(p) -> list:
    inv = [0] * len(p)
    for i, d in enumerate(p):
        inv[d] = i
    return inv


def one_node_graph(func, args, kwargs, tensors, perms=None, dynamic=None) -> tuple:
    """(graph, fake results): placeholders carry FakeTensor meta values; one call_function node on the OpOverload.
    `perms` (per tensor, None or p): that placeholder is the contiguous base t.permute(p), permuted back in the
    graph. `dynamic`: see `fakes_for`."""
    fakes, out = _fake_call(func, args, kwargs, tensors, dynamic)
    results = _results(out)
    g = fx.Graph()
    phs = []
    for i, f in enumerate(fakes):
        p = g.placeholder(f"arg{i}")
        perm = perms[i] if perms else None
        if perm is None:
            p.meta["val"] = f
        else:
            p.meta["val"] = f.permute(perm)
            p = g.call_function(torch.ops.aten.permute.default, (p, _inverse(perm)))
            p.meta["val"] = f
        phs.append(p)
    it = iter(phs)
    nargs, nkwargs = map_tensors((args, kwargs), lambda _t: next(it))
    lifted = _reduces_0d(func, tensors)
    if lifted:
        # A reduction along dim 0 of a 0-d tensor (amax, argmax, logsumexp, max.dim ...): torch-mlir 20261001 fails
        # on it ("torch.constant.int failed to legalize"); the same op on the one element viewed as shape [1]
        # lowers, and each result is viewed back to its 0-d (or keepdim) shape.
        x1 = g.call_function(torch.ops.aten.view.default, (nargs[0], [1]))
        x1.meta["val"] = fakes[0].view(1)
        nargs = (x1,) + tuple(nargs[1:])
        lifted_out = func(x1.meta["val"], *args[1:], **kwargs)
    node = g.call_function(func, tuple(nargs), dict(nkwargs))
    node.meta["val"] = lifted_out if lifted else out

    def result(n, want):
        if not lifted:
            return n
        v = g.call_function(torch.ops.aten.view.default, (n, list(want.shape)))
        v.meta["val"] = want
        return v
    if isinstance(out, (tuple, list)):
        outs = []
        for i, (r, c) in enumerate(zip(out, computed(out))):
            if not c:
                continue
            gi = g.call_function(operator.getitem, (node, i))
            gi.meta["val"] = lifted_out[i] if lifted else r
            outs.append(result(gi, r))
        g.output(tuple(outs))
    else:
        g.output((result(node, out),))
    g.tme_inputs = fakes        # the call's tensors as fakes: what the results' symbolic sizes refer to
    return g, results


def _reduces_0d(func, tensors) -> bool:
    """The call reduces (or scans) its one tensor, a 0-d one, along a `dim` argument."""
    return (len(tensors) == 1 and tensors[0].dim() == 0
            and any(a.name == "dim" for a in func._schema.arguments))


_SPATIAL_FLAT = frozenset({_aten.native_batch_norm.default, _aten._native_batch_norm_legit_no_training.default,
                           _aten._native_batch_norm_legit.default, _aten._native_batch_norm_legit.no_stats})


def decomposed_graph(func, args, kwargs, tensors, perms=None, dynamic=None) -> tuple:
    """(graph, fake results) of the op traced through a decomposition table: still one call -> one module.
    `perms`, `dynamic`: as for `one_node_graph`."""
    fakes, out = _fake_call(func, args, kwargs, tensors, dynamic)
    results = _results(out)

    flat = func in _SPATIAL_FLAT and isinstance(args[0], torch.Tensor) and args[0].dim() > 3 and not dynamic

    def fn(*ts):
        if perms:
            ts = [t if p is None else t.permute(_inverse(p)) for t, p in zip(ts, perms)]
        it = iter(ts)
        a, k = map_tensors((args, kwargs), lambda _t: next(it))
        if flat:
            shape = a[0].shape
            r = func(a[0].flatten(2), *a[1:], **k)
            r = (r[0].view(shape),) + tuple(r[1:])
        else:
            r = func(*a, **k)
        r = r if isinstance(r, (tuple, list)) else (r,)
        return tuple(x for x, c in zip(r, computed(r)) if c)

    try:
        gm = _traced(lambda: make_fx(fn, decomposition_table=decompositions.for_op(func), tracing_mode="fake")(
            *_trace_inputs(tensors, perms, dynamic)))
    except Exception as e:
        raise CompileFailure("import", f"decomposition: {type(e).__name__}: {e}") from None
    gm.graph.eliminate_dead_code()   # decompositions leave unused temporaries (zero-size stats, ...)
    gm.graph.tme_inputs = fakes
    return gm.graph, results


def base_dynamic(perms, dynamic):
    """`dynamic` for the bases a kernel takes (t.permute(p)): base dim j is the call's dim p[j]."""
    if not dynamic or not perms:
        return dynamic
    return [d if p is None else tuple(j for j, i in enumerate(p) if i in d) for d, p in zip(dynamic, perms)]


def _trace_inputs(tensors, perms, dynamic) -> list:
    """What make_fx traces with: each base a distinct tensor; fakes with symbolic dims where `dynamic` says."""
    bases = _distinct(tensors if not perms else [t if p is None else t.permute(p) for t, p in zip(tensors, perms)])
    if not dynamic or not any(dynamic):
        return bases
    return fakes_for(bases, base_dynamic(perms, dynamic))[1]


def _distinct(tensors) -> list:
    """The tensors to trace with, each a distinct object: make_fx gives one tensor passed twice (q, k and v all x
    in self-attention, mul(x, x)) one placeholder, and the kernel would then read input 0 where a later call
    passes different tensors. A repeat is replaced by an uninitialized tensor of the same metadata (tracing is
    fake: only metadata counts)."""
    seen, out = set(), []
    for t in tensors:
        if id(t) in seen:
            t = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
        seen.add(id(t))
        out.append(t)
    return out


# Half-precision calls are computed in float32 and rounded once at the end, as PyTorch's CPU kernels do (their
# "opmath" type): computing in float16 itself rounds every intermediate and, over a sum or a softmax, ends several
# ulps from native (the float16 OpInfo sweep: 50 mismatches before, none after).
HALF = (torch.float16, torch.bfloat16)


def needs_upcast(tensors, natives) -> bool:
    return any(t.dtype in HALF for t in tensors) or any(n is not None and n.dtype in HALF for n in natives)


def upcast_graph(func, args, kwargs, tensors, perms=None, decompose: bool = False, dynamic=None) -> tuple:
    """(graph, fake results) of the call with float16/bfloat16 tensor inputs converted to float32, the op (or its
    decomposition) run on them, and each result converted to native's dtype."""
    fakes, out = _fake_call(func, args, kwargs, tensors, dynamic)
    results = _results(out)
    wants = list(out) if isinstance(out, (tuple, list)) else [out]
    keep = computed(wants)

    def fn(*ts):
        if perms:
            ts = [t if p is None else t.permute(_inverse(p)) for t, p in zip(ts, perms)]
        ts = [t.to(torch.float32) if t.dtype in HALF else t for t in ts]
        it = iter(ts)
        a, k = map_tensors((args, kwargs), lambda _t: next(it))
        r = func(*a, **k)
        r = r if isinstance(r, (tuple, list)) else (r,)
        return tuple(x if x.dtype == w.dtype else x.to(w.dtype) for x, w, c in zip(r, wants, keep) if c)

    try:
        table = decompositions.for_op(func) if decompose else {}
        gm = _traced(lambda: make_fx(fn, decomposition_table=table, tracing_mode="fake")(
            *_trace_inputs(tensors, perms, dynamic)))
    except Exception as e:
        raise CompileFailure("import", f"float32 upcast: {type(e).__name__}: {e}") from None
    gm.graph.eliminate_dead_code()
    gm.graph.tme_inputs = fakes
    return gm.graph, results


# Ops whose kernels take a transposed input (a linear layer's weight.t(), k.transpose(-1, -2) in attention) as
# its contiguous base and permute it inside the kernel, instead of a transposed copy per call.
TAKES_TRANSPOSED = frozenset({"aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                              "aten.baddbmm.default"})


def transposed_rhs_perms(func, tensors, natives):
    """Per tensor, the permutation that untransposes the matmul's right-hand side, where the kernel should take it
    untransposed; None for the usual contiguous inputs. The scheduled kernel reads the base itself: the dot-product
    form for few rows (a linear layer at batch 1: 15 us instead of a 670 us weight copy), else a packing copy into
    the GEMM's panels (schedules.MATMUL_PACKED; BERT's 128x256 by 1024 linear: 277 us instead of 472 with
    PyTorch's transposed copy first). Also a right-hand side whose transpose is only row-contiguous (attention's
    k^T, a slice of the fused q/k/v projection): the kernel then gets its transpose copied row by row, which is
    what PyTorch's own copy would cost without the transposing (BERT's q k^T: 4x64x128).
    """
    if str(func) not in TAKES_TRANSPOSED or not tensors or not natives or natives[0] is None or natives[0].dim() < 2:
        return None
    rhs = tensors[-1]
    n = rhs.dim()
    if n < 2 or rhs.is_contiguous() or rhs.stride(-2) != 1 or rhs.size(-1) < 2:
        return None
    return [None] * (len(tensors) - 1) + [tuple(range(n - 2)) + (n - 1, n - 2)]
