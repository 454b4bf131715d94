"""Householder QR (geqrf, householder_product, ormqr, linalg_qr) as unrolled tensor ops, LAPACK's order."""
from __future__ import annotations

import torch

from .linalg import ROUNDING, _empty_results, _eye_like, _flag_nan, _order
from .registry import register

_aten = torch.ops.aten


def _geqrf(a):
    """LAPACK geqr2: (reflectors and R in one [..., m, n], tau [..., min(m, n)], risky [...] bool). Column k's
    reflector (dlarfg): beta = -sign(alpha) * hypot(alpha, |x|), tau = (beta - alpha) / beta, v = x / (alpha -
    beta), or tau = 0 where x is zero; then applied to the columns after it. Risky: alpha's sign or x's being
    zero within rounding of the column's norm (either flips the reflection)."""
    m, n = a.shape[-2:]
    _order(m, n)
    batch = a.shape[:-2]
    eps = torch.finfo(a.dtype).eps
    risky = torch.zeros(batch, dtype=torch.bool)
    taus = []
    for k in range(min(m, n)):
        if k + 1 == m:                    # nothing below: H = I
            taus.append(torch.zeros(*batch, 1, dtype=a.dtype))
            continue
        alpha = a[..., k:k + 1, k]                                   # [..., 1]
        x = a[..., k + 1:, k]
        xnorm = torch.sqrt(torch.sum(x * x, -1, keepdim=True))
        norm = torch.sqrt(torch.sum(a[..., :, k] * a[..., :, k], -1))  # the whole column: what rounding acts on
        tol = ROUNDING * (k + 1) * eps * norm
        risky = risky | (((alpha[..., 0].abs() <= tol) | (xnorm[..., 0] <= tol)) & (norm > 0))
        beta = torch.where(alpha >= 0, -1.0, 1.0) * torch.sqrt(alpha * alpha + xnorm * xnorm)
        zero = xnorm == 0
        tau = torch.where(zero, 0.0, (beta - alpha) / beta)
        v_tail = torch.where(zero, x, x * (1 / (alpha - beta)))
        head = torch.where(zero, alpha, beta)
        taus.append(tau)
        v = torch.cat([torch.ones_like(alpha), v_tail], -1)        # [..., m - k]
        rest = a[..., k:, k + 1:]
        w = torch.sum(v[..., :, None] * rest, -2, keepdim=True)     # v^T A
        rest = rest - tau[..., None] * v[..., :, None] * w
        col = torch.cat([head, v_tail], -1)[..., :, None]
        a = torch.cat([a[..., :k, :], torch.cat([a[..., k:, :k], col, rest], -1)], -2)
    tau_t = torch.cat(taus, -1) if taus else torch.zeros(*batch, 0, dtype=a.dtype)
    return a, tau_t, risky


def _reflector(a, tau, i: int):
    """(v [..., m] with zeros above i and 1 at i, tau_i [..., 1]) of reflector i stored in a's column i."""
    parts = [torch.zeros(*a.shape[:-2], i, dtype=a.dtype)] if i else []
    parts += [torch.ones(*a.shape[:-2], 1, dtype=a.dtype), a[..., i + 1:, i]]
    return torch.cat(parts, -1), tau[..., i:i + 1]


def _apply_reflectors(a, tau, c, left: bool, transpose: bool):
    """Q C, Q^T C, C Q or C Q^T for Q = H_0 H_1 ... H_{k-1}, H_i = I - tau_i v_i v_i^T."""
    k = tau.shape[-1]
    forward = (left and transpose) or (not left and not transpose)
    for i in (range(k) if forward else reversed(range(k))):
        v, t = _reflector(a, tau, i)
        if left:
            c = c - t[..., None] * v[..., :, None] * torch.sum(v[..., :, None] * c, -2, keepdim=True)
        else:
            c = c - t[..., None] * torch.sum(c * v[..., None, :], -1, keepdim=True) * v[..., None, :]
    return c


def geqrf(a):
    out, tau, risky = _geqrf(a)
    return out, _flag_nan(tau, risky)


def householder_product(a, tau):
    m, n = a.shape[-2:]
    _order(m, n)
    a = a.expand(*torch.broadcast_shapes(a.shape[:-2], tau.shape[:-1]), m, n)
    return _apply_reflectors(a, tau, _eye_like(a, m, n), left=True, transpose=False)


def ormqr(a, tau, c, left=True, transpose=False):
    _order(*a.shape[-2:], *c.shape[-2:])
    return _apply_reflectors(a, tau, c, left, transpose)


def linalg_qr(a, mode="reduced"):
    m, n = a.shape[-2:]
    k = min(m, n)
    out, tau, risky = _geqrf(a)
    if mode == "complete":
        r = torch.triu(out)
        q = _apply_reflectors(out, tau, _eye_like(out, m), left=True, transpose=False)
    else:
        r = torch.triu(out[..., :k, :])
        q = a.new_empty((0,)) if mode == "r" else householder_product(out[..., :, :k], tau)
    return q, _flag_nan(r, risky)


for _op, _fn in {_aten.geqrf.default: geqrf, _aten.linalg_householder_product.default: householder_product,
                 _aten.ormqr.default: ormqr, _aten.linalg_qr.default: linalg_qr}.items():
    register([_op], _empty_results(_fn))
