"""Elementwise, indexing, scan and reduction ops that torch-mlir lowers wrongly or not at all, in ATen ops it lowers."""
from __future__ import annotations

import functools
import math

import torch

from .registry import decomposes, register
from .values import _filled_like, _float_result

_aten = torch.ops.aten


@decomposes(_aten.hypot.default, top=True)
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


@decomposes(_aten.angle.default, top=True)
def _angle(x):
    """Real input: pi where x < 0, else 0 (NaN stays NaN); integers give the default float dtype, as natively."""
    f = x if x.is_floating_point() else x.to(torch.get_default_dtype())
    out = torch.where(f < 0, torch.full_like(f, math.pi), torch.zeros_like(f))
    return torch.where(torch.isnan(f), f, out)


_ISIN_MAX_PAIRS = 1 << 22


@decomposes(_aten.isin.Tensor_Tensor, top=True)
def _isin(elements, test_elements, *, assume_unique=False, invert=False):
    """Each element compared with every test element (exact; NaN matches nothing, as natively). Only where the
    comparison matrix stays small (4M pairs); larger calls run natively (PyTorch sorts there)."""
    if elements.numel() * max(test_elements.numel(), 1) > _ISIN_MAX_PAIRS:
        raise NotImplementedError("isin: too many pairs for the comparison matrix")
    hit = (elements.unsqueeze(-1) == test_elements.flatten()).any(-1)
    return hit.logical_not() if invert else hit


@decomposes(_aten.block_diag.default, top=True)
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


@decomposes(_aten.index_reduce.default, top=True)
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


def _fmax_fmin(a, b, is_max: bool):
    """The larger (smaller) ignoring a NaN unless both are; a when equal (so fmax(-0., 0.) is -0., as PyTorch's).
    (torch-mlir 20261001's own lowering fails for some broadcasts: tensor.cast of tensor<i1> to tensor<5xi1>.)"""
    dt = torch.result_type(a, b)
    a, b = a.to(dt), b.to(dt)
    keep_a = (a >= b) if is_max else (a <= b)
    if dt.is_floating_point:
        keep_a = keep_a | torch.isnan(b)
    return torch.where(keep_a, a, b)


@decomposes(_aten.searchsorted.Tensor, _aten.searchsorted.Scalar)
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


@decomposes(_aten.logsumexp.default)
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


@decomposes(_aten.frexp.Tensor)
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


# (torch-mlir's own lowerings of these crash the worker: SIGSEGV or "LLVM ERROR: out of memory")
@decomposes(_aten.scatter.reduce, _aten.scatter.value_reduce, only=True)
def _scatter_with_reduce(self, dim, index, src, reduce):
    """scatter(reduce='add' | 'multiply'), of a tensor or a number: scatter_reduce with the input included, which
    torch-mlir lowers (scatter.reduce's string argument stays an unlowered torch.constant)."""
    if not isinstance(src, torch.Tensor):
        src = _filled_like(index, src).to(self.dtype)
    return _scatter_reduce(self, dim, index, src, "sum" if reduce == "add" else "prod")


@decomposes(_aten.scatter_add.default, only=True)
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


# along dim -1 torch-mlir's lowering crashes
@decomposes(_aten.scatter.src, _aten.scatter.value, only=lambda a: a.get("dim", 0) < 0)
def _scatter_negative_dim(self, dim, index, src):
    """scatter along a negative dim, as the same op along the non-negative one (see _scatter_add); NotImplemented
    (trace the op itself) for a non-negative dim."""
    if dim >= 0:
        return NotImplemented
    return torch.scatter(self, dim % max(self.dim(), 1), index, src)


# (torch-mlir's lowering leaves a torch.constant.int)
@decomposes(_aten.diagonal_scatter.default, only=True)
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


# torch-mlir 20261001 divides by a zero size (SIGFPE in the lowering)
@decomposes(_aten.repeat.default, only=lambda a: _zero_sized_repeat(a.get("self"), a.get("repeats") or ()))
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


def _zero_sized_repeat(x, repeats) -> bool:
    return isinstance(x, torch.Tensor) and (0 in repeats or 0 in x.shape)


register([_aten.cummax.default], functools.partial(_cumulative_extreme, is_max=True), top=True)
register([_aten.cummin.default], functools.partial(_cumulative_extreme, is_max=False), top=True)
# (torch-mlir's fmax/fmin return b where a == b, so fmax(-0., 0.) is 0., PyTorch's -0.)
register([_aten.fmax.default], functools.partial(_fmax_fmin, is_max=True), only=True)
register([_aten.fmin.default], functools.partial(_fmax_fmin, is_max=False), only=True)
