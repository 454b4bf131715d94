"""One aten call -> a Torch-dialect MLIR module, through a torch.fx graph and torch-mlir's FX importer (worker side)."""
from __future__ import annotations

import functools
import math
import operator
import threading

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from . import matrix
from .errors import CompileFailure
from .spec import map_tensors

_aten = torch.ops.aten


def _fake_call(func, args, kwargs, tensors):
    mode = FakeTensorMode()
    fakes = [mode.from_tensor(t) for t in tensors]
    it = iter(fakes)
    fargs = map_tensors((args, kwargs), lambda _t: next(it))
    try:
        with mode:
            out = func(*fargs[0], **fargs[1])
    except Exception as e:  # bad input (native raises the same) or a data-dependent output shape
        raise CompileFailure("meta", f"{type(e).__name__}: {e}") from None
    return fakes, out


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


def one_node_graph(func, args, kwargs, tensors, perms=None) -> tuple:
    """(graph, fake results): placeholders carry FakeTensor meta values; one call_function node on the OpOverload.
    `perms` (per tensor, None or p): that placeholder is the contiguous base t.permute(p), permuted back in the
    graph."""
    fakes, out = _fake_call(func, args, kwargs, tensors)
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
    return g, results


def _reduces_0d(func, tensors) -> bool:
    """The call reduces (or scans) its one tensor, a 0-d one, along a `dim` argument."""
    return (len(tensors) == 1 and tensors[0].dim() == 0
            and any(a.name == "dim" for a in func._schema.arguments))


@functools.lru_cache(maxsize=1)
def decomposition_table() -> dict:
    """torch-mlir's own table, widened with PyTorch's core-ATen decompositions for ops it leaves out."""
    from torch._decomp import core_aten_decompositions
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table
    table = dict(core_aten_decompositions())
    table.update(get_decomposition_table())
    # C library functions, inside any decomposition (mvlgamma's lgamma...): their carriers (see _libm)
    table.update({op: functools.partial(_libm, fn) for op, fn in _LIBM_UNARY.items()})
    table[_aten.nextafter.default] = _nextafter
    table.update({_aten.copysign.Tensor: _copysign, _aten.copysign.Scalar: _copysign,
                  _aten.signbit.default: _signbit})
    table.update({_aten.searchsorted.Tensor: _searchsorted, _aten.searchsorted.Scalar: _searchsorted,
                  _aten.logsumexp.default: _logsumexp, _aten.repeat.default: _repeat,
                  _aten._cdist_forward.default: _cdist, _aten._pdist_forward.default: _pdist})
    table.update({_aten.fmax.default: functools.partial(_fmax_fmin, is_max=True),
                  _aten.fmin.default: functools.partial(_fmax_fmin, is_max=False)})
    table.update({_aten.erfinv.default: _erfinv, _aten.special_erfinv.default: _erfinv,
                  _aten.special_ndtri.default: _ndtri, _aten.frexp.Tensor: _frexp})
    table.update({_aten.scatter.reduce: _scatter_with_reduce, _aten.scatter.value_reduce: _scatter_with_reduce,
                  _aten.scatter_add.default: _scatter_add, _aten.diagonal_scatter.default: _diagonal_scatter,
                  _aten.scatter.src: _scatter_negative_dim, _aten.scatter.value: _scatter_negative_dim})
    table.update({_aten.special_erfcx.default: _erfcx, _aten.special_log_ndtr.default: _log_ndtr,
                  _aten.special_spherical_bessel_j0.default: _spherical_bessel_j0})
    table.update(matrix.table())
    table.update(_polynomial_table())
    table.update(_bessel_table())
    table.update({_aten.digamma.default: _digamma, _aten.special_psi.default: _digamma,
                  _aten.special_digamma.default: _digamma, _aten.polygamma.default: _polygamma,
                  _aten.special_polygamma.default: _polygamma, _aten.special_zeta.default: _zeta,
                  _aten.special_zeta.self_scalar: _zeta, _aten.special_zeta.other_scalar: _zeta})
    return table


def decomposition_for(func) -> dict:
    """The table for decomposing `func`: the curated one, plus PyTorch's registered decomposition of `func`
    itself when the curated one has none (only for the op at the top: its parts stay at the ATen level), and our
    own form of eval batch norm."""
    from torch._decomp import decomposition_table as registered
    table = decomposition_table()
    if func not in table and func in registered:
        table = dict(table)
        table[func] = registered[func]
    if func in _EVAL_BATCH_NORM and func in table:
        table = dict(table)
        table[func] = functools.partial(_eval_batch_norm, table[func])
    if func in _OWN:
        table = dict(table)
        table[func] = functools.partial(_gelu, general=table.get(func)) if func is _aten.gelu.default else _OWN[func]
    return table


def _eval_batch_norm(general, x, weight, bias, mean, var, training, momentum, eps):
    """Eval batch norm as PyTorch's CPU kernel computes it: per channel alpha = weight / sqrt(var + eps) and
    beta = bias - mean * alpha, then y = x * alpha + beta. The per-channel terms are stacked into one [2, C] tensor
    first: elementwise fusion cannot pull them (and their rsqrt) into the loop over x, which stays a plain
    multiply-add that split-loops may share across threads (1x64x112x112: 208 us before, native 122).
    Training mode, or no running statistics: `general`, the table's own decomposition."""
    if training or mean is None or var is None:
        return general(x, weight, bias, mean, var, training, momentum, eps)
    alpha = torch.rsqrt(var + eps)
    if weight is not None:
        alpha = alpha * weight
    beta = -mean * alpha
    if bias is not None:
        beta = beta + bias
    ab = torch.stack([alpha, beta]).view([2, x.shape[1]] + [1] * (x.dim() - 2))
    y = x * ab[0] + ab[1]
    return y, x.new_zeros((0,)), x.new_zeros((0,))


def _native_mha(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, mask=None,
                need_weights=True, average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's inference fast path (ViT, nn.TransformerEncoderLayer in eval) written out in ATen
    ops, in PyTorch's CPU order: q, k, v projected with the packed weight and bias, q divided by sqrt(head dim),
    softmax(q k^T) v per head, heads merged, then the output projection. Batched (B, L, E) inputs without a mask
    only: anything else raises here and the call runs natively."""
    if mask is not None or query.dim() != 3:
        raise NotImplementedError("_native_multi_head_attention: only unmasked batched inputs are decomposed")
    b, lq, e = query.shape
    d = e // num_head
    w_q, w_k, w_v = qkv_weight.split(embed_dim)
    b_q, b_k, b_v = qkv_bias.split(embed_dim)

    def heads(x, w, bias):
        y = torch.nn.functional.linear(x, w, bias)
        return y.view(b, x.shape[1], num_head, d).transpose(1, 2)
    q = heads(query, w_q, b_q) / math.sqrt(d)
    k, v = heads(key, w_k, b_k), heads(value, w_v, b_v)
    att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, lq, e)
    out = torch.nn.functional.linear(out, proj_weight, proj_bias)
    if not need_weights:
        return out, None              # what PyTorch returns (an undefined tensor)
    return out, att.mean(dim=1) if average_attn_weights else att


def _softshrink(x, lambd=0.5):
    """PyTorch's CPU formula: x - lambd above lambd, x + lambd below -lambd, else x * 0 (-0.0, NaN kept)."""
    return torch.where(x > lambd, x - lambd, torch.where(x < -lambd, x + lambd, x * 0))


def _gelu(x, approximate="none", *, general=None):
    """The tanh approximation as PyTorch's CPU kernel computes it (torch-mlir's own lowering is off by up to 5e-5);
    the exact form is `general`'s, the table's own decomposition."""
    if approximate != "tanh":
        if general is None:
            raise NotImplementedError("no decomposition of the exact form")
        return general(x, approximate=approximate)
    beta = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5
    inner = beta * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1 + torch.tanh(inner))


def _renorm(x, p, dim, maxnorm):
    """Each slice along `dim` scaled to norm maxnorm where its p-norm exceeds it: PyTorch's factor
    maxnorm / (norm + 1e-7), the norm taken over every other dim."""
    dim = dim % x.dim()
    others = [d for d in range(x.dim()) if d != dim]
    a = x.abs()
    # the norm written out: torch-mlir lowers linalg_vector_norm with an abort() on a NaN input
    if p == math.inf:
        norm = a.amax(others, keepdim=True)
    elif p == -math.inf:
        norm = a.amin(others, keepdim=True)
    elif p == 0:
        norm = (a != 0).to(x.dtype).sum(others, keepdim=True)
    elif p == 1:
        norm = a.sum(others, keepdim=True)
    elif p == 2:
        norm = (a * a).sum(others, keepdim=True).sqrt()
    else:
        norm = a.pow(p).sum(others, keepdim=True).pow(1.0 / p)
    return x * torch.where(norm > maxnorm, maxnorm / (norm + 1e-7), torch.ones_like(norm))


def _hypot(a, b):
    """sqrt(a^2 + b^2) without overflow or underflow in the squares: m * sqrt(1 + (n / m)^2), m = max(|a|, |b|);
    0 where both are 0, inf where either is infinite (even beside a NaN), as C's hypot."""
    x, y = a.abs(), b.abs()
    bigger = x > y                       # (maximum / minimum would not propagate a NaN: validate.NONFINITE_UNSAFE)
    m, n = torch.where(bigger, x, y), torch.where(bigger, y, x)
    r = n / m
    h = m * torch.sqrt(1 + r * r)
    h = torch.where(m == 0, torch.zeros_like(h), h)
    return torch.where(torch.isinf(x) | torch.isinf(y), torch.full_like(h, math.inf), h)


def _angle(x):
    """Real input: pi where x < 0, else 0 (NaN stays NaN); integers give the default float dtype, as natively."""
    f = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    out = torch.where(f < 0, torch.full_like(f, math.pi), torch.zeros_like(f))
    return torch.where(torch.isnan(f), f, out)


_ISIN_MAX_PAIRS = 1 << 22


def _isin(elements, test_elements, *, assume_unique=False, invert=False):
    """Each element compared with every test element (exact; NaN matches nothing, as natively). Only where the
    comparison matrix stays small (4M pairs); larger calls run natively (PyTorch sorts there)."""
    if elements.numel() * max(test_elements.numel(), 1) > _ISIN_MAX_PAIRS:
        raise NotImplementedError("isin: too many pairs for the comparison matrix")
    hit = (elements.unsqueeze(-1) == test_elements.flatten()).any(-1)
    return hit.logical_not() if invert else hit


def _block_diag(tensors):
    """Blocks on the diagonal of a zero matrix: each block padded to the full width, the rows concatenated."""
    blocks = [t.view(1, 1) if t.dim() == 0 else t.view(1, -1) if t.dim() == 1 else t for t in tensors]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in blocks])
    cols = sum(t.shape[1] for t in blocks)
    rows, left = [], 0
    for t in blocks:                  # each block padded with zeros left and right (new_zeros would leave a
        c = t.shape[1]                # torch.constant.bool torch-mlir does not lower)
        rows.append(torch.nn.functional.pad(t.to(dtype), (left, cols - left - c)))
        left += c
    return torch.cat(rows, 0)


def _index_reduce(self, dim, index, source, reduce, *, include_self=True):
    """index_reduce as scatter_reduce with the index broadcast along the other dims (the index range is checked
    before every call, validate.py)."""
    shape = [1] * source.dim()
    if source.dim():
        shape[dim] = -1
    idx = index.view(shape).expand(source.shape)
    return torch.scatter_reduce(self, dim, idx, source, reduce, include_self=include_self)


def _cumulative_extreme(x, dim, is_max: bool):
    """cummax / cummin as a doubling scan (log2(n) elementwise steps of static shape): each position combines the
    summary of the segment before it, later winning ties. PyTorch's rule: a NaN sticks and the last NaN's index is
    kept; otherwise the last index of the extreme."""
    if x.dim() == 0:
        v, i = _cumulative_extreme(x.view(1), 0, is_max)
        return v.view(()), i.view(())
    dim = dim % x.dim()
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    pos = torch.arange(n).view(shape)
    v, i = x, pos.expand(x.shape)
    shift = 1
    while shift < n:
        pv = torch.cat([v.narrow(dim, 0, shift), v.narrow(dim, 0, n - shift)], dim)
        pi = torch.cat([i.narrow(dim, 0, shift), i.narrow(dim, 0, n - shift)], dim)
        later = torch.isnan(v) | (~torch.isnan(pv) & ((v >= pv) if is_max else (v <= pv))) | (pos < shift)
        v, i = torch.where(later, v, pv), torch.where(later, i, pi)
        shift *= 2
    return v, i


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


def _nextafter(x, other):
    return _libm("nextafter", x, other)


def _copysign(x, other):
    """|x| with the sign bit of other (a NaN's and -0's included): libm's copysign, in the promoted float dtype."""
    if not isinstance(other, torch.Tensor):
        other = torch.full_like(x, other, dtype=torch.result_type(x, other))
    dt = _float_result(x, other)
    return _libm("copysign", x.to(dt), other.to(dt))


def _fmax_fmin(a, b, is_max: bool):
    """The larger (smaller) ignoring a NaN unless both are; a when equal (so fmax(-0., 0.) is -0., as PyTorch's).
    (torch-mlir 20261001's own lowering fails for some broadcasts: tensor.cast of tensor<i1> to tensor<5xi1>.)"""
    dt = torch.result_type(a, b)
    a, b = a.to(dt), b.to(dt)
    keep_a = (a >= b) if is_max else (a <= b)
    if dt.is_floating_point:
        keep_a = keep_a | torch.isnan(b)
    return torch.where(keep_a, a, b)


def _searchsorted(sorted_sequence, self, *, out_int32=False, right=False, side=None, sorter=None):
    """PyTorch's binary search itself, unrolled (bit_length(S) halvings, each element's interval masked): the same
    positions for unsorted rows and NaN as the native op, not just for well-formed input."""
    seq = sorted_sequence
    upper = bool(right) or side == "right"
    n = seq.shape[-1]
    if not isinstance(self, torch.Tensor):       # searchsorted.Scalar: a value computed from seq (no 0-d constant)
        self = _filled_like(seq.reshape(-1)[:1], self).to(seq.dtype).reshape([])
    one_d = seq.dim() == 1
    vals = self.reshape(-1) if one_d else self
    start = torch.zeros(vals.shape, dtype=torch.int64)
    end = torch.full(vals.shape, n, dtype=torch.int64)
    for _ in range(n.bit_length()):
        active = start < end
        mid = start + torch.div(end - start, 2, rounding_mode="floor")
        pos = mid.clamp(max=max(n - 1, 0))
        if sorter is not None:
            pos = sorter[pos] if one_d else torch.gather(sorter, -1, pos)
        mid_val = seq[pos] if one_d else torch.gather(seq, -1, pos)
        go_right = ~(mid_val > vals) if upper else ~(mid_val >= vals)
        start = torch.where(active & go_right, mid + 1, start)
        end = torch.where(active & ~go_right, mid, end)
    res = start.reshape(self.shape) if one_d else start
    return res.to(torch.int32 if out_int32 else torch.int64)


def _logsumexp(x, dim, keepdim=False):
    """log(sum(exp(x - m))) + m with m the maximum (0 where infinite), as PyTorch; a 0-d x reduced as shape [1]
    (torch-mlir 20261001 fails on it: torch.constant.bool)."""
    if not x.is_floating_point():
        x = x.to(_float_result(x))
    if x.dim() == 0:
        return _logsumexp(x.reshape(1), [0], True).reshape([])
    dims = [d % x.dim() for d in ([dim] if isinstance(dim, int) else (dim or range(x.dim())))]
    m = torch.amax(x, dims, keepdim=True)
    m = torch.where(m.abs() == math.inf, torch.zeros_like(m), m)
    r = torch.log(torch.sum(torch.exp(x - m), dims, keepdim=True)) + m
    return r if keepdim else r.squeeze(dims)


def _pairwise(diff, p: float):
    """The p-norm over the last dim of a difference tensor, as PyTorch's distance kernels define it."""
    a = diff.abs()
    if p == 0:
        return (a != 0).to(diff.dtype).sum(-1)
    if p == math.inf:
        return a.amax(-1) if a.shape[-1] else a.sum(-1)
    if p == 1:
        return a.sum(-1)
    if p == 2:
        return torch.sqrt((diff * diff).sum(-1))
    return torch.pow(torch.pow(a, p).sum(-1), 1.0 / p)


def _cdist(x1, x2, p, compute_mode=None):
    """PyTorch's two ways: for p = 2 with more than 25 rows on a side (or compute_mode 1), the matrix-product form
    (|a|^2 - 2ab + |b|^2, clamped at 0); else each difference's p-norm."""
    rows = max(x1.shape[-2], x2.shape[-2])
    if p == 2 and (compute_mode == 1 or (compute_mode in (None, 0) and rows > 25)):
        n1 = (x1 * x1).sum(-1, keepdim=True)
        n2 = (x2 * x2).sum(-1, keepdim=True)
        a = torch.cat([-2 * x1, n1, torch.ones_like(n1)], -1)
        b = torch.cat([x2, torch.ones_like(n2), n2], -1)
        return torch.matmul(a, b.transpose(-1, -2)).clamp_min(0).sqrt()
    return _pairwise(x1.unsqueeze(-2) - x2.unsqueeze(-3), p)


def _pdist(x, p=2):
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    return _pairwise(x[i] - x[j], p)


def _signbit(x):
    """The sign bit, of NaN and -0 too (torch-mlir's signbit reads it through a bitcast it cannot lower)."""
    if not x.is_floating_point():
        return x < 0
    return _libm("copysign", torch.ones_like(x), x) < 0


def _float_result(x, other=None):
    """The dtype of an elementwise op's result on x (and other, promoted), made floating (the default dtype)."""
    dt = x.dtype if other is None else torch.result_type(x, other)
    return dt if dt.is_floating_point else torch.get_default_dtype()


def _erfcx64(d):
    """exp(d^2) erfc(d) for a float64 tensor: directly up to 26, then the asymptotic series (relative error of its
    first omitted term at 26: 2e-13), where exp(d^2) would overflow and erfc underflow."""
    big = d > 26.0
    safe = torch.where(big, torch.zeros_like(d), d)
    direct = torch.exp(safe * safe) * _libm("erfc", safe)
    inv = 1.0 / d
    t = inv * inv
    asym = inv * (1.0 / math.sqrt(math.pi)) * (1 - 0.5 * t * (1 - 1.5 * t * (1 - 2.5 * t * (1 - 3.5 * t))))
    return torch.where(big, asym, direct)


def _erfcx(x):
    return _erfcx64(x.to(torch.float64)).to(_float_result(x))


def _log_ndtr(x):
    """log of the standard normal CDF: log(erfcx(-x/sqrt2)/2) - x^2/2 in the left tail (x < -1), else
    log1p(-erfc(x/sqrt2)/2), in float64."""
    d = x.to(torch.float64)
    t = d * math.sqrt(0.5)
    low = torch.log(_erfcx64(-t) / 2) - d * d / 2
    high = torch.log1p(-_libm("erfc", t) / 2)
    return torch.where(d < -1, low, high).to(_float_result(x))


def _inverse_erf64(y):
    """x >= 0 with erf(x) = y, for y in [0, 0.5] (float64): Newton's method from the series' first two terms
    (1% off at 0.5), five steps."""
    x = y * (math.sqrt(math.pi) / 2) * (1 + (math.pi / 12) * y * y)
    for _ in range(5):
        x = x - (_libm("erf", x) - y) * (math.sqrt(math.pi) / 2) * torch.exp(x * x)
    return x


def _inverse_erfc64(z):
    """x >= 0.47 with erfc(x) = z, for z in (0, 0.5] (float64): Newton's method on log erfc = log erfcx - x^2 (no
    cancellation in the tail, and no subnormal erfc to lose digits in: z down to 5e-324) from Abramowitz and
    Stegun's 26.2.23 (4.5e-4 off), four steps."""
    t = torch.sqrt(-2 * torch.log(z / 2))
    x = (t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1 + t * (1.432788 + t * (0.189269 + t * 0.001308)))) \
        * math.sqrt(0.5)
    log_z = torch.log(z)
    for _ in range(4):
        ex = _erfcx64(x)
        x = x + (torch.log(ex) - x * x - log_z) * (math.sqrt(math.pi) / 2) * ex
    return x


def _erfinv(y):
    """Inverse erf: erf solved for |y| <= 0.5, erfc for 1 - |y| (exact) beyond; +-inf at +-1, NaN outside."""
    d = y.to(torch.float64)
    a = d.abs()
    small = a <= 0.5
    x_small = _inverse_erf64(torch.where(small, a, 0.25))
    z = 1 - a
    x_big = _inverse_erfc64(torch.where((z > 0) & (z < 0.5), z, 0.25))
    x = torch.where(small, x_small, torch.where(a == 1, math.inf, x_big))
    x = torch.where((a > 1) | torch.isnan(a), math.nan, x)
    return torch.where(_signbit(d), -x, x).to(_float_result(y))


def _ndtri(p):
    """Inverse of the standard normal CDF, -sqrt(2) erfc^-1(2p): erfc solved for 2p below 0.5 (and for 2(1 - p),
    exact, above 1.5), erf for 1 - 2p (exact) between; -inf at 0, +inf at 1, NaN outside."""
    d = p.to(torch.float64)
    mid = (d >= 0.25) & (d <= 0.75)
    y = 1 - 2 * d
    v = math.sqrt(2) * _inverse_erf64(torch.where(mid, y.abs(), 0.25))
    x_mid = torch.where(y > 0, -v, v)
    tail = torch.where(d < 0.5, d, 1 - d)
    u = math.sqrt(2) * _inverse_erfc64(torch.where((tail > 0) & (tail < 0.25), 2 * tail, 0.25))
    x = torch.where(mid, x_mid, torch.where(d < 0.5, -u, u))
    x = torch.where(d == 0, -math.inf, torch.where(d == 1, math.inf, x))
    return torch.where((d < 0) | (d > 1) | torch.isnan(d), math.nan, x).to(_float_result(p))


def _frexp(x):
    """(mantissa in [0.5, 1) with x's sign, int32 exponent) with x = mantissa * 2^exponent; x itself and 0 for
    zeros, infinities and NaN. Scaled by exact powers of two in float64 (a float64 input's subnormals need 2^1074:
    the first step is taken twice), no logarithm to round."""
    d = x.to(torch.float64)
    regular = torch.isfinite(d) & (d != 0)
    a = torch.where(regular, d.abs(), 1.0)
    e = torch.zeros(d.shape, dtype=torch.int32)
    for b in (512, 256, 128, 64, 32, 16, 8, 4, 2, 1):       # a >= 2^b: down to [0, 2)
        big = a >= 2.0 ** b
        a, e = torch.where(big, a * 2.0 ** -b, a), torch.where(big, e + b, e)
    for b in (512, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):  # a < 2^-b: up to [0.5, 2)
        small = a < 2.0 ** -b
        a, e = torch.where(small, a * 2.0 ** b, a), torch.where(small, e - b, e)
    one = a >= 1
    a, e = torch.where(one, a * 0.5, a), torch.where(one, e + 1, e)
    mantissa = torch.where(regular, torch.where(d < 0, -a, a), d)
    return mantissa.to(x.dtype), torch.where(regular, e, torch.zeros_like(e))


def _scatter_with_reduce(self, dim, index, src, reduce):
    """scatter(reduce='add' | 'multiply'), of a tensor or a number: scatter_reduce with the input included, which
    torch-mlir lowers (scatter.reduce's string argument stays an unlowered torch.constant)."""
    if not isinstance(src, torch.Tensor):
        src = _filled_like(index, src).to(self.dtype)
    return _scatter_reduce(self, dim, index, src, "sum" if reduce == "add" else "prod")


def _scatter_add(self, dim, index, src):
    """scatter_add as scatter_reduce(sum), along a non-negative dim: torch-mlir 20261001's scatters along dim -1
    crash the process (SIGSEGV, or "LLVM ERROR: out of memory")."""
    return _scatter_reduce(self, dim, index, src, "sum")


def _scatter_reduce(self, dim, index, src, reduce: str):
    """scatter_reduce with the input included, along the non-negative dim; bools summed (or multiplied) as int32
    and compared with 0, as PyTorch's logical or (and)."""
    dim = dim % max(self.dim(), 1)
    if self.dtype == torch.bool:
        r = torch.scatter_reduce(self.to(torch.int32), dim, index, src.to(torch.int32), reduce, include_self=True)
        return r != 0
    return torch.scatter_reduce(self, dim, index, src, reduce, include_self=True)


def _scatter_negative_dim(self, dim, index, src):
    """scatter along a negative dim, as the same op along the non-negative one (see _scatter_add); NotImplemented
    (trace the op itself) for a non-negative dim."""
    if dim >= 0:
        return NotImplemented
    return torch.scatter(self, dim % max(self.dim(), 1), index, src)


def _diagonal_scatter(x, src, offset=0, dim1=0, dim2=1):
    """x with src on its diagonal: both dims moved last, the diagonal chosen by a mask (col - row == offset) and
    src's element for each row (each column, for a negative offset) broadcast along the other dim."""
    nd = x.dim()
    d1, d2 = dim1 % nd, dim2 % nd
    rest = [d for d in range(nd) if d not in (d1, d2)]
    perm = rest + [d1, d2]
    xt = x.permute(perm)
    rows, cols = xt.shape[-2:]
    mask = (torch.arange(cols) - torch.arange(rows).view(rows, 1)) == offset
    n = src.shape[-1]
    src = src.to(x.dtype)
    if offset >= 0:          # row i holds src[i]
        pad = torch.cat([src, torch.zeros(*src.shape[:-1], rows - n, dtype=x.dtype)], -1) if rows > n else src
        vals = pad[..., :rows, None]
    else:                    # column j holds src[j]
        pad = torch.cat([src, torch.zeros(*src.shape[:-1], cols - n, dtype=x.dtype)], -1) if cols > n else src
        vals = pad[..., None, :cols]
    out = torch.where(mask, vals, xt)
    inv = [0] * nd
    for i, d in enumerate(perm):
        inv[d] = i
    return out.permute(inv).clone()


def _spherical_bessel_j0(x):
    """sin(x)/x; its Taylor series below |x| = 0.5 (no 0/0), 0 at infinities; in float64."""
    d = x.to(torch.float64)
    x2 = d * d
    series = 1 + x2 * (-1 / 6 + x2 * (1 / 120 + x2 * (-1 / 5040 + x2 * (1 / 362880 + x2 * (
        -1 / 39916800 + x2 * (1 / 6227020800))))))
    r = torch.where(d.abs() < 0.5, series, torch.sin(d) / d)
    return torch.where(torch.isinf(d), torch.zeros_like(d), r).to(_float_result(x))


# ---- modified Bessel functions I0, I1, K0, K1 (and exponentially scaled) in float64 ----
# Power series up to |x| = 10 (15 for I: all terms positive, no cancellation; K's logarithmic series loses at most
# 3.5e-8 relative there), Hankel's asymptotic series beyond (its smallest omitted term there: 5e-10). The scaled
# forms are computed as such (no exp to overflow); the plain ones multiply by exp(+-x) last, so they overflow or
# underflow where PyTorch's do (float32 inputs: where float32's exp does).
_SERIES_TERMS, _ASYM_TERMS = 60, 20


def _bessel_series(t, nu: int):
    """sum_k t^k / (k! (k+nu)!) for nu = 0, 1 (t = x^2/4)."""
    term = torch.ones_like(t)
    total = term
    for k in range(1, _SERIES_TERMS):
        term = term * t / float(k * (k + nu))
        total = total + term
    return total


def _hankel(x, nu: int, sign: float):
    """sum_k c_k / x^k with c_k = prod_j (4nu^2 - (2j-1)^2) / (8j), terms alternating by `sign` (-1 for I)."""
    inv = 1.0 / x
    total, c, p = torch.ones_like(x), 1.0, torch.ones_like(x)
    for k in range(1, _ASYM_TERMS + 1):
        c = c * (4 * nu * nu - (2 * k - 1) ** 2) / (8 * k) * sign
        p = p * inv
        total = total + c * p
    return total


def _bessel_i_scaled(a, nu: int):
    """exp(-a) I_nu(a) for a = |x| >= 0, float64."""
    small = a <= 15.0
    s = torch.where(small, a, torch.zeros_like(a))
    series = torch.exp(-s) * _bessel_series(s * s / 4, nu) * (s / 2 if nu else 1.0)
    b = torch.where(small, torch.full_like(a, 16.0), a)
    asym = _hankel(b, nu, -1.0) / torch.sqrt(2 * math.pi * b)
    return torch.where(small, series, asym)


def _bessel_k_scaled(a, nu: int):
    """exp(a) K_nu(a) for a > 0, float64."""
    small = a <= 10.0
    s = torch.where(small, a, torch.ones_like(a))
    t = s * s / 4
    log_half = torch.log(s / 2)
    euler = 0.5772156649015329
    # sum_k h_k t^k / (k! (k+nu)!): nu = 0: h_k = H_k; nu = 1: h_k = psi(k+1) + psi(k+2) = 2 H_k + 1/(k+1) - 2 euler
    term = torch.ones_like(t)
    h = 0.0
    acc = torch.zeros_like(t) if nu == 0 else term * (1.0 - 2 * euler)
    for k in range(1, _SERIES_TERMS):
        term = term * t / float(k * (k + nu))
        h += 1.0 / k
        acc = acc + term * (h if nu == 0 else 2 * h + 1.0 / (k + 1) - 2 * euler)
    if nu == 0:
        series = -(log_half + euler) * _bessel_series(t, 0) + acc
    else:
        series = 1 / s + log_half * (s / 2) * _bessel_series(t, 1) - (s / 4) * acc
    series = series * torch.exp(s)
    b = torch.where(small, torch.full_like(a, 11.0), a)
    asym = _hankel(b, nu, 1.0) * torch.sqrt(math.pi / (2 * b))
    return torch.where(small, series, asym)


def _exp_overflows(a, dt):
    """Where exp(a) is infinite in dtype dt (float32 inputs: float32's exp)."""
    return torch.isinf(torch.exp(a.to(dt)))


def _bessel_i(nu: int, scaled: bool, x):
    dt = _float_result(x)
    d = x.to(torch.float64)
    a = d.abs()
    r = _bessel_i_scaled(a, nu)
    if not scaled:
        r = torch.where(_exp_overflows(a, dt), torch.full_like(a, math.inf), r * torch.exp(a))
    # at +-inf: 0 scaled, NaN unscaled (PyTorch's exp(x) * series: inf * 0)
    r = torch.where(torch.isinf(a), torch.zeros_like(a) if scaled else torch.full_like(a, math.nan), r)
    if nu:
        r = torch.where(d < 0, -r, r)
    return r.to(dt)


def _bessel_k(nu: int, scaled: bool, x):
    dt = _float_result(x)
    d = x.to(torch.float64)
    pos = torch.where(d > 0, d, torch.ones_like(d))
    r = _bessel_k_scaled(pos, nu)
    if not scaled:
        r = r * torch.exp(-pos)
    r = torch.where(torch.isinf(d), torch.zeros_like(d), r)
    r = torch.where(d == 0, torch.full_like(d, math.inf),
                    torch.where((d < 0) | torch.isnan(d), torch.full_like(d, math.nan), r))
    return r.to(dt)


def _bessel_table() -> dict:
    return {_aten.i0.default: functools.partial(_bessel_i, 0, False),
            _aten.special_i0e.default: functools.partial(_bessel_i, 0, True),
            _aten.special_i1.default: functools.partial(_bessel_i, 1, False),
            _aten.special_i1e.default: functools.partial(_bessel_i, 1, True),
            _aten.special_modified_bessel_i0.default: functools.partial(_bessel_i, 0, False),
            _aten.special_modified_bessel_i1.default: functools.partial(_bessel_i, 1, False),
            _aten.special_modified_bessel_k0.default: functools.partial(_bessel_k, 0, False),
            _aten.special_modified_bessel_k1.default: functools.partial(_bessel_k, 1, False),
            _aten.special_scaled_modified_bessel_k0.default: functools.partial(_bessel_k, 0, True),
            _aten.special_scaled_modified_bessel_k1.default: functools.partial(_bessel_k, 1, True)}


# ---- digamma, trigamma, polygamma and Hurwitz zeta ----
# PyTorch's algorithms (Cephes-derived) re-expressed as tensor operations: digamma's and trigamma's recurrences run
# a bounded number of steps (each element's own steps masked), in the input's dtype with the same operations in
# the same order; zeta sums 9 terms and the Euler-Maclaurin tail in float64, as PyTorch does on the CPU. Arguments
# that need zeta's longer loop (a negative non-integer q) run natively (validate.KNOWN_WRONG).
_PSI_10 = 2.25175258906672110764
# digamma's asymptotic series: -B_2k / (2k) for k = 7 .. 1 (Horner order)
_PSI_ASYM = [-1 / 12, 691 / 32760, -1 / 132, 1 / 240, -1 / 252, 1 / 120, -1 / 12]
# zeta's Euler-Maclaurin divisors: (2k)! / B_2k, k = 1 .. 12
_BERNOULLI = [(1, 6), (-1, 30), (1, 42), (-1, 30), (5, 66), (-691, 2730), (7, 6), (-3617, 510), (43867, 798),
              (-174611, 330), (854513, 138), (-236364091, 2730)]
_ZETA_A = [math.factorial(2 * k + 2) * den / num for k, (num, den) in enumerate(_BERNOULLI)]
_MACHEP = 1.11022302462515654042e-16


def _digamma_at_least(v, result):
    """digamma for v > 0: push v to >= 10 (at most 10 steps), then the asymptotic series; `result` accumulates."""
    for _ in range(10):
        below = v < 10
        result = torch.where(below, result - 1 / v, result)
        v = torch.where(below, v + 1, v)
    z = 1 / (v * v)
    poly = torch.zeros_like(z)
    for c in _PSI_ASYM:
        poly = poly * z - c                     # the coefficients are stored negated above: -(-c) = c
    y = torch.where(v < 1.0e17, z * poly, torch.zeros_like(z))
    asym = result + torch.log(v) - 0.5 / v - y
    return torch.where(v == 10, result + _PSI_10, asym)


def _digamma(x):
    dt = _float_result(x)
    x = x.to(dt)
    one = torch.ones_like(x)
    integer = x == torch.trunc(x)
    r = (x - torch.trunc(x)).to(torch.float64)
    pi_over_tan = (math.pi / torch.tan(math.pi * r)).to(dt)
    neg = _digamma_at_least(torch.where(x < 0, 1 - x, one), torch.zeros_like(x)) - pi_over_tan
    pos = _digamma_at_least(torch.where(x > 0, x, one), torch.zeros_like(x))
    res = torch.where(x < 0, torch.where(integer, torch.full_like(x, math.nan), neg), pos)
    res = torch.where(x == 0, -1 / x, res)            # +0 -> -inf, -0 -> +inf
    return torch.where(torch.isnan(x), x, res)


def _trigamma(x):
    dt = _float_result(x)
    x = x.to(dt)
    low = x < 0.5
    pi = math.pi
    sin_pi_x = torch.sin(pi * x)
    result = torch.where(low, -(pi * pi) / (sin_pi_x * sin_pi_x), torch.zeros_like(x))
    x = torch.where(low, 1 - x, x)
    for _ in range(6):
        result = result + 1 / (x * x)
        x = x + 1
    ixx = 1 / (x * x)
    result = result + (1 + 1 / (2 * x) + ixx * (1. / 6 - ixx * (1. / 30 - ixx * (1. / 42)))) / x
    return torch.where(low, -result, result)


ZETA_MIN_Q = -32.0          # zeta's sum runs while q + i <= 9: a negative q below this runs natively


def _pow(a, y):
    """a ** y with C's pow semantics for a negative a and an integer y (the kernel's powf is exp(y log a): NaN)."""
    p = torch.pow(a.abs(), y)
    odd = torch.remainder(y, 2) == 1
    return torch.where((a < 0) & (y == torch.floor(y)), torch.where(odd, -p, p),
                       torch.where(a < 0, torch.full_like(p, math.nan), p))


def _zeta64(x, q):
    """Hurwitz zeta(x, q) in float64 for q >= ZETA_MIN_Q (others: natively, validate.KNOWN_WRONG)."""
    s = _pow(q, -x)
    a, b = q, torch.zeros_like(s)
    early = torch.zeros_like(s, dtype=torch.bool)       # returned the plain sum (its next term was negligible)
    for i in range(9 + int(-ZETA_MIN_Q) + 1):
        active = ~early if i < 9 else ~early & (a <= 9.0)   # PyTorch's while condition, per element
        a = torch.where(active, a + 1, a)
        b = torch.where(active, _pow(a, -x), b)
        s = torch.where(active, s + b, s)
        early = early | (active & (-_MACHEP * s < b) & (b < _MACHEP * s))
    w = a
    t_sum = s + b * w / (x - 1) - 0.5 * b
    fa, k = torch.ones_like(s), 0.0
    for i in range(12):
        fa = fa * (x + k)
        b = b / w
        t_sum = t_sum + fa * b / _ZETA_A[i]
        k += 1.0
        fa = fa * (x + k)
        b = b / w
        k += 1.0
    res = torch.where(early, s, t_sum)
    inf, nan = torch.full_like(res, math.inf), torch.full_like(res, math.nan)
    res = torch.where((q <= 0) & (q == torch.floor(q)), inf,
                      torch.where((q <= 0) & (x != torch.floor(x)), nan, res))
    return torch.where(x == 1, inf, torch.where(x < 1, nan, res))


def _filled_like(t, value):
    """A float64 tensor of t's shape holding `value`, computed from t: constant ones (full_like) made torch-mlir
    20261001 fold zeta's sum into NaN, and crash (SIGSEGV) folding where()s on them."""
    t = t.to(torch.float64)
    return torch.where(torch.isfinite(t), t * 0, torch.zeros_like(t)) + float(value)


def _zeta(x, q):
    dt = _float_result(x, q)
    if not isinstance(x, torch.Tensor):
        x = _filled_like(q, x)
    if not isinstance(q, torch.Tensor):
        q = _filled_like(x, q)
    return _zeta64(x.to(torch.float64), q.to(torch.float64)).to(dt)


def _exp_lgamma(v: float, dt) -> float:
    """exp(lgamma(v)) as PyTorch computes it for dtype dt: the C library's float or double functions."""
    import ctypes
    import ctypes.util
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    ct, suffix = (ctypes.c_double, "") if dt == torch.float64 else (ctypes.c_float, "f")
    lgamma, exp = getattr(libm, "lgamma" + suffix), getattr(libm, "exp" + suffix)
    for f in (lgamma, exp):
        f.restype, f.argtypes = ct, [ct]
    return exp(lgamma(v))


def _polygamma(n, x):
    if n == 0:
        return _digamma(x)
    if n == 1:
        return _trigamma(x)
    dt = _float_result(x)
    x = x.to(dt)
    factorial = _exp_lgamma(float(n) + 1, dt)
    q = x.to(torch.float64)
    z = _zeta64(_filled_like(q, n + 1), q).to(dt)
    return (1.0 if n % 2 else -1.0) * factorial * z


# ---- orthogonal polynomials of degree n (special.chebyshev_polynomial_t ... legendre_polynomial_p) ----
# PyTorch evaluates each element with a loop of n steps (a three-term recurrence), after special cases at the
# interval's ends and, for the Chebyshev kinds inside (-1, 1) past a degree, a trigonometric form. Ours unrolls the
# recurrence POLY_MAX_DEGREE steps and picks each element's step; a call with a degree above that (or not finite)
# runs natively (validate.KNOWN_WRONG). Same operations in the same order as PyTorch's, so equal results.
POLY_MAX_DEGREE = 16


def _poly_operands(x, n):
    """(x, n as float, n truncated to int64, the result dtype), scalars made tensors, both in the common dtype."""
    # A scalar x computed from n: torch-mlir 20261001 folding our where()s on a constant float64 x crashed
    # (SIGSEGV in DecomposeComplexOps).
    if not isinstance(x, torch.Tensor):
        x = _filled_like(n, x).to(_float_result(n))
    if not isinstance(n, torch.Tensor):
        n = torch.full_like(x, n, dtype=_float_result(x))
    dt = _float_result(x, n)
    x, n = x.to(dt), n.to(dt)
    ni = n.to(torch.int64)
    return x, ni, ni.to(dt), dt


def _select_step(ni, steps, x):
    """steps[k] where ni == k (k = 0 .. len(steps) - 1), 0 where ni < 0, broadcast over x and ni."""
    res = torch.zeros_like(x + ni.to(x.dtype))
    for k, v in enumerate(steps):
        res = torch.where(ni == k, v, res)
    return res


def _chebyshev(kind: str, shifted: bool, x, n):
    x, ni, nf, dt = _poly_operands(x, n)
    y = x + x - 1.0 if shifted else x
    two_y = y + y
    first = {"t": y, "u": two_y, "v": two_y - 1.0, "w": two_y + 1.0}[kind]
    steps = [torch.ones_like(y), first]
    for _ in range(2, POLY_MAX_DEGREE + 1):
        steps.append(two_y * steps[-1] - steps[-2])
    res = _select_step(ni, steps, x)
    even = ni % 2 == 0
    one, two_n1, n1 = torch.ones_like(nf), nf + nf + 1.0, nf + 1.0
    at_plus = {"t": one, "u": n1, "v": one, "w": two_n1}[kind]
    at_minus = {"t": torch.where(even, one, -one), "u": torch.where(even, n1, -n1),
                "v": torch.where(even, two_n1, -two_n1), "w": torch.where(even, one, -one)}[kind]
    theta = torch.acos(y)
    if kind == "t":
        trig = torch.cos(nf * theta)
    elif kind == "u":
        s = torch.sin(theta)
        trig = torch.where(s != 0, torch.sin(n1 * theta) / s, n1 * torch.cos(n1 * theta) / y)
    elif kind == "v":
        trig = torch.where(torch.sin(theta / 2) != 1, torch.cos((nf + 0.5) * theta) / torch.cos(theta / 2), at_minus)
    else:
        at_one = torch.where(even, one, -one) if shifted else torch.where(x > 0, two_n1, torch.where(even, one, -one))
        trig = torch.where(torch.cos(theta / 2) != 1, torch.sin((nf + 0.5) * theta) / torch.sin(theta / 2), at_one)
    above = {"t": 6, "u": 6 if shifted else 8, "v": 6 if shifted else 8, "w": 4 if shifted else 8}[kind]
    res = torch.where((ni > above) & (y.abs() < 1), trig, res)
    if shifted:
        res = torch.where(x == 0, at_minus, torch.where(x == 1, at_plus, res))
    else:
        res = torch.where(x.abs() == 1, torch.where(x > 0, at_plus, at_minus), res)
    return torch.where(ni < 0, torch.zeros_like(res), res)


def _hermite(physicists: bool, x, n):
    x, ni, _, _ = _poly_operands(x, n)
    steps = [torch.ones_like(x), x + x if physicists else x]
    for j in range(1, POLY_MAX_DEGREE):
        if physicists:
            steps.append((x + x) * steps[-1] - float(2 * j) * steps[-2])
        else:
            steps.append(x * steps[-1] - float(j) * steps[-2])
    return _select_step(ni, steps, x)


def _laguerre(x, n):
    x, ni, _, _ = _poly_operands(x, n)
    steps = [torch.ones_like(x), 1.0 - x]
    for k in range(1, POLY_MAX_DEGREE):
        steps.append((((1.0 - x) + float(k + k)) * steps[-1] - float(k) * steps[-2]) / float(k + 1))
    res = _select_step(ni, steps, x)
    return torch.where((x == 0) & (ni >= 0), torch.ones_like(res), res)


def _legendre(x, n):
    x, ni, _, _ = _poly_operands(x, n)
    steps = [torch.ones_like(x), x]
    for k in range(1, POLY_MAX_DEGREE):
        steps.append((x * float(k + k + 1) * steps[-1] - float(k) * steps[-2]) / float(k + 1))
    res = _select_step(ni, steps, x)
    edge = torch.where((x > 0) | (ni % 2 == 0), torch.ones_like(res), -torch.ones_like(res))
    return torch.where((x.abs() == 1) & (ni >= 0), edge, res)


def _polynomial_table() -> dict:
    table = {}
    for kind in "tuvw":
        for shifted in (False, True):
            op = getattr(_aten, f"special_{'shifted_' if shifted else ''}chebyshev_polynomial_{kind}")
            table[op] = functools.partial(_chebyshev, kind, shifted)
    table[_aten.special_hermite_polynomial_h] = functools.partial(_hermite, True)
    table[_aten.special_hermite_polynomial_he] = functools.partial(_hermite, False)
    table[_aten.special_laguerre_polynomial_l] = _laguerre
    table[_aten.special_legendre_polynomial_p] = _legendre
    return {getattr(packet, ov): fn for packet, fn in table.items() for ov in ("default", "x_scalar", "n_scalar")}


_LIBM_UNARY = {_aten.lgamma.default: "lgamma", _aten.erfc.default: "erfc", _aten.special_erfc.default: "erfc",
               _aten.special_bessel_j0.default: "j0", _aten.special_bessel_j1.default: "j1",
               _aten.special_bessel_y0.default: "y0", _aten.special_bessel_y1.default: "y1"}


# Our own decompositions of ops that neither table decomposes, or whose direct lowering torch-mlir 20261001 gets
# wrong (FORCED: those compile only through ours).
_OWN = {_aten._native_multi_head_attention.default: _native_mha, _aten.softshrink.default: _softshrink,
        _aten.gelu.default: _gelu, _aten.renorm.default: _renorm, _aten.hypot.default: _hypot,
        _aten.angle.default: _angle, _aten.isin.Tensor_Tensor: _isin, _aten.block_diag.default: _block_diag,
        _aten.index_reduce.default: _index_reduce,
        _aten.cummax.default: functools.partial(_cumulative_extreme, is_max=True),
        _aten.cummin.default: functools.partial(_cumulative_extreme, is_max=False)}
# (fmax/fmin: torch-mlir's returns b where a == b, so fmax(-0., 0.) is 0., PyTorch's -0.)
# (scatter with reduce=, scatter_add: torch-mlir's own lowerings crash the worker, SIGSEGV or "LLVM ERROR: out of
# memory"; diagonal_scatter's leaves a torch.constant.int)
FORCED = frozenset({_aten.softshrink.default, _aten.renorm.default, _aten.fmax.default, _aten.fmin.default,
                    _aten.scatter.reduce, _aten.scatter.value_reduce, _aten.scatter_add.default,
                    _aten.diagonal_scatter.default})


def decompose_only(func, kwargs) -> bool:
    """The op's direct lowering is known wrong (or crashes) for this call: compile our decomposition only."""
    if func is _aten.repeat.default:       # torch-mlir 20261001 divides by a zero size (SIGFPE in the lowering)
        x, reps = kwargs.get("self"), kwargs.get("repeats") or ()
        return isinstance(x, torch.Tensor) and (0 in reps or 0 in x.shape)
    if func in (_aten.scatter.src, _aten.scatter.value):     # along dim -1 torch-mlir's lowering crashes
        return kwargs.get("dim", 0) < 0
    return func in FORCED or (func is _aten.gelu.default and kwargs.get("approximate") == "tanh")


def _repeat(x, repeats):
    """x tiled: each dim viewed as (1, s) expanded to (r, s), then merged; an empty result made directly (views
    of zero-size tensors hit the same division by zero)."""
    shape = [1] * (len(repeats) - x.dim()) + list(x.shape)
    if 0 in repeats or 0 in shape:
        return x.new_empty([r * s_ for r, s_ in zip(repeats, shape)])
    x = x.reshape(shape)
    wide = []
    for s_ in shape:
        wide += [1, s_]
    big = []
    for r, s_ in zip(repeats, shape):
        big += [r, s_]
    return x.reshape(wide).expand(big).reshape([r * s_ for r, s_ in zip(repeats, shape)]).clone()

# Per-channel ops whose spatial dims may be traced as one (x viewed as N x C x H*W, the result viewed back): the
# kernel's inner loop then runs over H*W contiguous elements instead of W (7, 14, 28), which LLVM vectorizes
# (eval batch norm at 1x128x28x28: 30 us -> 13 us).
_EVAL_BATCH_NORM = frozenset({_aten.native_batch_norm.default})
_SPATIAL_FLAT = frozenset({_aten.native_batch_norm.default, _aten._native_batch_norm_legit_no_training.default,
                           _aten._native_batch_norm_legit.default, _aten._native_batch_norm_legit.no_stats})


def decomposed_graph(func, args, kwargs, tensors, perms=None) -> tuple:
    """(graph, fake results) of the op traced through a decomposition table: still one call -> one module.
    `perms`: as for `one_node_graph`."""
    from torch.fx.experimental.proxy_tensor import make_fx
    _, out = _fake_call(func, args, kwargs, tensors)
    results = _results(out)

    flat = func in _SPATIAL_FLAT and isinstance(args[0], torch.Tensor) and args[0].dim() > 3

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
        bases = _distinct(tensors if not perms else
                          [t if p is None else t.permute(p) for t, p in zip(tensors, perms)])
        gm = _traced(lambda: make_fx(fn, decomposition_table=decomposition_for(func), tracing_mode="fake")(*bases))
    except Exception as e:
        raise CompileFailure("import", f"decomposition: {type(e).__name__}: {e}") from None
    gm.graph.eliminate_dead_code()   # decompositions leave unused temporaries (zero-size stats, ...)
    return gm.graph, results


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


def upcast_graph(func, args, kwargs, tensors, perms=None, decompose: bool = False) -> tuple:
    """(graph, fake results) of the call with float16/bfloat16 tensor inputs converted to float32, the op (or its
    decomposition) run on them, and each result converted to native's dtype."""
    from torch.fx.experimental.proxy_tensor import make_fx
    _, out = _fake_call(func, args, kwargs, tensors)
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
        bases = _distinct(tensors if not perms else
                          [t if p is None else t.permute(p) for t, p in zip(tensors, perms)])
        table = decomposition_for(func) if decompose else {}
        gm = _traced(lambda: make_fx(fn, decomposition_table=table, tracing_mode="fake")(*bases))
    except Exception as e:
        raise CompileFailure("import", f"float32 upcast: {type(e).__name__}: {e}") from None
    gm.graph.eliminate_dead_code()
    return gm.graph, results


def import_graph(ctx, graph: fx.Graph):
    """The Torch-dialect module for a graph."""
    from torch_mlir.extras.fx_importer import FxImporter
    try:
        imp = FxImporter(context=ctx)
        imp.import_stateless_graph(graph, func_name="main")
    except Exception as e:
        raise CompileFailure("import", f"{type(e).__name__}: {e}") from None
    return imp.module


def has_decomposition(func) -> bool:
    return func in decomposition_for(func)
