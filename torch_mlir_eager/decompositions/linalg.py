"""Dense linear algebra (LU, Cholesky, triangular and LU solves, inverse, determinants; QR in qr.py) as unrolled
tensor ops: torch-mlir 20261001 has no lowering for any of LAPACK's routines.

Each routine runs LAPACK's own algorithm in the order LAPACK runs it, one step per row or column, unrolled at trace
time over the (static) matrix order, and batched over leading dims. The results are those of PyTorch's CPU kernels up
to rounding: the same pivots (the first largest magnitude in each column, as isamax), the same multipliers (a
column scaled by the pivot's reciprocal, as getf2), the same matrix factored (A^T where PyTorch factors that).
A matrix larger than MAX_ORDER is not unrolled (the call runs natively).

Rounding differs from LAPACK's (MKL fuses multiply-adds, and orders sums its own way), so a choice LAPACK makes on
values that rounding can reorder is not reproducible: two pivot candidates within rounding of each other (a tie, or
a column that cancels to noise), a Cholesky pivot within rounding of zero. Each factorization flags those (`risky`)
and the op's results say so: `info` set to -1, or a NaN planted in a result that is otherwise finite; the dispatcher
then runs the call natively (validate.INFO_CHECKED, validate.FLAGGED). So do matrices LAPACK leaves unfinished (not
positive definite: info > 0) and inputs holding NaN or infinities (validate.NONFINITE_UNSAFE).
"""
from __future__ import annotations

from typing import Optional

import torch

from .registry import register

_aten = torch.ops.aten

# Largest matrix order unrolled: each step is a handful of ops on the whole (trailing) matrix.
MAX_ORDER = 32
# A decision is risky when the margin it was made by is within ROUNDING * (step + 1) * eps * scale: the error of a
# value after that many elimination steps, twice (both candidates), with room for LAPACK's other summation order.
ROUNDING = 8.0


def _order(*ns: int) -> None:
    if max(ns, default=0) > MAX_ORDER:
        raise NotImplementedError(f"matrix order {max(ns)} > {MAX_ORDER}: not unrolled")


def _swap(x, k: int, p, rows: bool):
    """x with entries k and p (a [...] index tensor) of its last dim swapped (rows=False, x [..., m]), or with rows k
    and p swapped (rows=True, x [..., m, n])."""
    if rows:
        m, n = x.shape[-2:]
        xp = torch.gather(x, -2, p[..., None, None].expand(*x.shape[:-2], 1, n))
        xk = x[..., k:k + 1, :]
        i = torch.arange(m).view(m, 1)
        return torch.where(i == k, xp, torch.where(i == p[..., None, None], xk, x))
    m = x.shape[-1]
    xp = torch.gather(x, -1, p[..., None])
    xk = x[..., k:k + 1]
    i = torch.arange(m)
    return torch.where(i == k, xp, torch.where(i == p[..., None], xk, x))


def _lu(a):
    """LAPACK getrf: (LU [..., m, n], perm [..., m] int64 (row i of P^T A is row perm[i] of A), pivots [..., k]
    int32 (1-based, LAPACK's ipiv), info [...] int32 (first zero pivot, 1-based; 0 if none), risky [...] bool (a
    pivot chosen by less than rounding can decide))."""
    m, n = a.shape[-2:]
    _order(m, n)
    batch = a.shape[:-2]
    perm = torch.arange(m).expand(*batch, m)
    info = torch.zeros(batch, dtype=torch.int32)
    risky = torch.zeros(batch, dtype=torch.bool)
    eps, tiny = torch.finfo(a.dtype).eps, torch.finfo(a.dtype).tiny
    pivots = []
    for k in range(min(m, n)):
        p = torch.argmax(a[..., k:, k].abs(), -1) + k          # the first of equal magnitudes, as isamax
        a = _swap(a, k, p, rows=True)
        perm = _swap(perm, k, p, rows=False)
        pivots.append(p)
        piv = a[..., k:k + 1, k]
        info = torch.where((piv[..., 0] == 0) & (info == 0), k + 1, info)
        if k + 1 == m:
            continue
        below = a[..., k + 1:, k]
        # the pivot's lead over the next candidate, against what rounding may have moved either by
        scale = a.abs().amax((-2, -1))
        margin = piv[..., 0].abs() - below.abs().amax(-1)
        risky = risky | ((margin <= ROUNDING * (k + 1) * eps * scale) & (scale > 0))
        # getf2: scaled by the reciprocal unless the pivot is tiny; a zero pivot (its column is zero) leaves it
        scaled = torch.where(piv.abs() >= tiny, below * (1 / piv), below / piv)
        col = torch.where(piv == 0, below, scaled)
        trail = a[..., k + 1:, k + 1:] - col[..., :, None] * a[..., k:k + 1, k + 1:]
        a = torch.cat([a[..., :k + 1, :], torch.cat([a[..., k + 1:, :k], col[..., None], trail], -1)], -2)
    piv_t = (torch.stack(pivots, -1) + 1).to(torch.int32) if pivots else torch.zeros(*batch, 0, dtype=torch.int32)
    return a, perm, piv_t, info, risky


def _flag_info(info, risky):
    """info, -1 where the factorization is not certain to be LAPACK's (validate.INFO_CHECKED)."""
    return torch.where(risky, -1, info).to(torch.int32)


def _flag_nan(x, risky):
    """x with NaN planted where the factorization is not certain to be LAPACK's (validate.FLAGGED)."""
    return torch.where(risky.reshape(list(risky.shape) + [1] * (x.dim() - risky.dim())), float("nan"), x)


def _perm_of(pivots, m: int):
    """The permutation (row i of P^T A is row perm[i] of A) of LAPACK's 1-based row interchanges."""
    perm = torch.arange(m).expand(*pivots.shape[:-1], m)
    p = pivots.to(torch.int64) - 1
    for k in range(pivots.shape[-1]):
        perm = _swap(perm, k, p[..., k], rows=False)
    return perm


def _permutation_matrix(perm, dtype):
    """P with A = P L U: P[perm[i], i] = 1."""
    m = perm.shape[-1]
    if m == 0:
        return torch.empty(*perm.shape, 0, dtype=dtype)
    return (torch.arange(m).view(m, 1) == perm[..., None, :]).to(dtype)


def _rows(b, perm):
    """b's rows in the order perm: out[i] = b[perm[i]]."""
    return torch.gather(b, -2, perm[..., :, None].expand(*perm.shape, b.shape[-1]))


def _inverse_perm(perm):
    m = perm.shape[-1]
    onehot = perm[..., :, None] == torch.arange(m)              # [..., i, j]: perm[i] == j
    return (onehot.to(torch.int64) * torch.arange(m).view(m, 1)).sum(-2)


def _trsm(t, b, lower: bool, unit: bool):
    """X with T X = B (strsm Left, NoTrans): T [..., n, n] read only in its `lower` (or upper) triangle, B [..., n, r];
    batch dims broadcast. Column by column as LAPACK: x_j = b_j / t_jj, then b_j's share taken from the rows after
    (before, for an upper T) it."""
    batch = torch.broadcast_shapes(t.shape[:-2], b.shape[:-2])
    n, r = b.shape[-2:]
    t = t.expand(*batch, n, n)
    x = b.expand(*batch, n, r)
    for j in (range(n) if lower else reversed(range(n))):
        xj = x[..., j:j + 1, :]
        if not unit:
            xj = xj / t[..., j:j + 1, j:j + 1]
        if lower:
            rest = x[..., j + 1:, :] - t[..., j + 1:, j:j + 1] * xj
            x = torch.cat([x[..., :j, :], xj, rest], -2)
        else:
            rest = x[..., :j, :] - t[..., :j, j:j + 1] * xj
            x = torch.cat([rest, xj, x[..., j + 1:, :]], -2)
    return x


def _solve_triangular(t, b, upper: bool, left: bool, unit: bool, transpose: bool = False):
    """X with op(T) X = B (left) or X op(T) = B, op(T) = T or T^T."""
    if not left:                          # X T = B  <=>  T^T X^T = B^T
        return _solve_triangular(t, b.mT, upper, True, unit, not transpose).mT
    if transpose:
        return _trsm(t.mT, b, lower=upper, unit=unit)
    return _trsm(t, b, lower=not upper, unit=unit)


def _lu_solve(lu, perm, b, adjoint: bool):
    """X with A X = B (A^T X = B if adjoint) for A = P L U."""
    batch = torch.broadcast_shapes(lu.shape[:-2], b.shape[:-2])
    n = lu.shape[-1]
    lu = lu.expand(*batch, n, n)
    perm = perm.expand(*batch, n)
    b = b.expand(*batch, *b.shape[-2:])
    if not adjoint:                       # L U X = P^T B
        y = _trsm(lu, _rows(b, perm), lower=True, unit=True)
        return _trsm(lu, y, lower=False, unit=False)
    z = _trsm(lu.mT, b, lower=True, unit=False)             # U^T L^T P^T X = B
    w = _trsm(lu.mT, z, lower=False, unit=True)
    return _rows(w, _inverse_perm(perm))


def _eye_like(a, m: int, n: Optional[int] = None):
    """The m x n (m x m) identity in a's dtype, over a's batch dims."""
    n = m if n is None else n
    if m == 0:                  # (a view of a zero-size tensor divides by zero in torch-mlir 20261001's lowering)
        return a.new_empty((*a.shape[:-2], 0, n))
    return (torch.arange(m).view(m, 1) == torch.arange(n)).to(a.dtype).expand(*a.shape[:-2], m, n)


def _cholesky_lower(a):
    """LAPACK potrf (lower, reading A's lower triangle): (L, info), info the first non-positive pivot (1-based), or
    -1 where a pivot is within rounding of zero (LAPACK's sign for it may differ)."""
    n = a.shape[-1]
    _order(n)
    batch = a.shape[:-2]
    info = torch.zeros(batch, dtype=torch.int32)
    risky = torch.zeros(batch, dtype=torch.bool)
    eps = torch.finfo(a.dtype).eps
    scale = torch.tril(a).abs().amax((-2, -1)) if n else None
    cols = []
    for j in range(n):                    # `a` holds the trailing matrix still to factor
        d = a[..., 0:1, 0]
        info = torch.where(~(d[..., 0] > 0) & (info == 0), j + 1, info)
        risky = risky | (d[..., 0].abs() <= ROUNDING * (j + 1) * eps * scale)
        s = torch.sqrt(d)
        col = a[..., 1:, 0] * (1 / s)
        cols.append(torch.cat([torch.zeros(*batch, j, dtype=a.dtype), s, col], -1) if j else torch.cat([s, col], -1))
        a = a[..., 1:, 1:] - col[..., :, None] * col[..., None, :]
    if not cols:
        return torch.zeros(*batch, 0, 0, dtype=a.dtype), info
    return torch.stack(cols, -1), _flag_info(info, risky)


# ---- the aten ops ----

def lu_factor_ex(a, *, pivot=True, check_errors=False):
    if not pivot:
        raise NotImplementedError("LU without pivoting")        # PyTorch's CPU kernel refuses it too
    lu, _, pivots, info, risky = _lu(a)
    return lu, pivots, _flag_info(info, risky)


def linalg_lu(a, *, pivot=True):
    if not pivot:
        raise NotImplementedError("LU without pivoting")
    m, n = a.shape[-2:]
    k = min(m, n)
    lu, perm, _, _, risky = _lu(a)
    low = torch.tril(lu[..., :, :k], -1) + _eye_like(lu, m)[..., :, :k]
    return _flag_nan(_permutation_matrix(perm, a.dtype), risky), low, torch.triu(lu[..., :k, :])


def lu_unpack(lu, pivots, unpack_data=True, unpack_pivots=True):
    m, n = lu.shape[-2:]
    k = min(m, n)
    _order(m, n)
    if unpack_data:
        low = torch.tril(lu[..., :, :k], -1) + _eye_like(lu, m)[..., :, :k]
        up = torch.triu(lu[..., :k, :])
    else:
        low = up = lu.new_empty((0,))
    p = _permutation_matrix(_perm_of(pivots, m), lu.dtype) if unpack_pivots else lu.new_empty((0,))
    return p, low, up


def linalg_lu_solve(lu, pivots, b, *, left=True, adjoint=False):
    n = lu.shape[-1]
    _order(n)
    perm = _perm_of(pivots, n)
    if not left:                          # X A = B  <=>  A^T X^T = B^T
        return _lu_solve(lu, perm, b.mT, not adjoint).mT
    return _lu_solve(lu, perm, b, adjoint)


def lu_solve(b, lu, pivots):
    return linalg_lu_solve(lu, pivots, b)


def _vector_rhs(lu, b) -> bool:
    return b.dim() == 1 or (lu.dim() - 1 == b.dim() and tuple(b.shape) == tuple(lu.shape[:-1]))


def linalg_solve_ex(a, b, *, left=True, check_errors=False):
    """The LU and pivots returned are A's (torch 2.14 factors A itself, not A^T as its determinants do)."""
    lu, perm, pivots, info, risky = _lu(a)
    vector = _vector_rhs(lu, b)
    b_ = b.unsqueeze(-1) if vector else b
    x = _lu_solve(lu, perm, b_, False) if left else _lu_solve(lu, perm, b_.mT, True).mT
    return (x.squeeze(-1) if vector else x), lu, pivots, _flag_info(info, risky)


def linalg_inv_ex(a, *, check_errors=False):
    x, _, _, info = linalg_solve_ex(a, _eye_like(a, a.shape[-1]))
    return x, info


def linalg_solve_triangular(a, b, *, upper, left=True, unitriangular=False):
    _order(a.shape[-1])
    return _solve_triangular(a, b, upper, left, unitriangular)


def triangular_solve(b, a, upper=True, transpose=False, unitriangular=False):
    _order(a.shape[-1])
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.expand(*batch, *a.shape[-2:])
    return _solve_triangular(a, b, upper, True, unitriangular, transpose), a.clone()


def linalg_cholesky_ex(a, *, upper=False, check_errors=False):
    low, info = _cholesky_lower(a.mT if upper else a)      # U^T U = A: U^T is the factor of A^T's lower triangle
    return (low.mT if upper else low), info


def _cholesky_solve(b, f, upper: bool):
    """X with A X = B for A = L L^T (or U^T U)."""
    if upper:
        return _trsm(f, _trsm(f.mT, b, lower=True, unit=False), lower=False, unit=False)
    return _trsm(f.mT, _trsm(f, b, lower=True, unit=False), lower=False, unit=False)


def cholesky_solve(b, f, upper=False):
    _order(f.shape[-1])
    return _cholesky_solve(b, f, upper)


def cholesky_inverse(f, upper=False):
    n = f.shape[-1]
    _order(n)
    return _cholesky_solve(_eye_like(f, n), f, upper)


def _det_p(pivots):
    """det(P): -1 to the number of actual interchanges."""
    k = pivots.shape[-1]
    swaps = (pivots != torch.arange(1, k + 1, dtype=pivots.dtype)).to(torch.int64).sum(-1)
    return 1 - 2 * torch.remainder(swaps, 2)


def _det_factor(a):
    """The LU PyTorch computes for a determinant: of A^T (the same determinant) when A is contiguous."""
    lu, _, pivots, _, risky = _lu(a.mT if a.is_contiguous() else a)
    return lu, pivots, risky


def linalg_det(a):
    lu, pivots, risky = _det_factor(a)
    if a.shape[-1] == 0:                  # an empty product (reduced, it fails to lower)
        return torch.ones(a.shape[:-2], dtype=a.dtype), lu, pivots
    det = _det_p(pivots).to(a.dtype) * torch.prod(torch.diagonal(lu, 0, -2, -1), -1)
    return _flag_nan(det, risky), lu, pivots


def linalg_slogdet(a):
    lu, pivots, risky = _det_factor(a)
    if a.shape[-1] == 0:
        return torch.ones(a.shape[:-2], dtype=a.dtype), torch.zeros(a.shape[:-2], dtype=a.dtype), lu, pivots
    diag = torch.diagonal(lu, 0, -2, -1)
    sign = torch.prod(torch.sign(diag), -1) * _det_p(pivots).to(a.dtype)
    return sign, _flag_nan(torch.sum(torch.log(diag.abs()), -1), risky), lu, pivots


def _empty_results(fn):
    """fn, with results that are all zero-size (an empty batch, no right-hand sides) made directly: the steps that
    computed them are then dead code, dropped before import (torch-mlir 20261001's lowering of zero-size views
    divides by zero)."""
    def run(*args, **kwargs):
        r = fn(*args, **kwargs)
        rs = r if isinstance(r, tuple) else (r,)
        if all(x.numel() == 0 for x in rs):
            rs = tuple(torch.empty(x.shape, dtype=x.dtype) for x in rs)
        return rs if isinstance(r, tuple) else rs[0]
    return run


for _op, _fn in {_aten.linalg_lu_factor_ex.default: lu_factor_ex, _aten.linalg_lu.default: linalg_lu,
                 _aten.lu_unpack.default: lu_unpack, _aten.linalg_lu_solve.default: linalg_lu_solve,
                 _aten.lu_solve.default: lu_solve, _aten._linalg_solve_ex.default: linalg_solve_ex,
                 _aten.linalg_inv_ex.default: linalg_inv_ex,
                 _aten.linalg_solve_triangular.default: linalg_solve_triangular,
                 _aten.triangular_solve.default: triangular_solve,
                 _aten.linalg_cholesky_ex.default: linalg_cholesky_ex, _aten.cholesky_solve.default: cholesky_solve,
                 _aten.cholesky_inverse.default: cholesky_inverse,
                 _aten._linalg_det.default: linalg_det, _aten._linalg_slogdet.default: linalg_slogdet}.items():
    register([_op], _empty_results(_fn))
