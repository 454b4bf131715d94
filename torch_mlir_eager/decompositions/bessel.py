"""Modified Bessel functions I0, I1, K0, K1 (plain and exponentially scaled): series and Hankel's expansion."""
from __future__ import annotations

import functools
import math

import torch

from .registry import register
from .values import _float_result

_aten = torch.ops.aten


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


for _op, _fn, _nu, _scaled in (
        (_aten.i0, "i", 0, False), (_aten.special_i0e, "i", 0, True), (_aten.special_i1, "i", 1, False),
        (_aten.special_i1e, "i", 1, True), (_aten.special_modified_bessel_i0, "i", 0, False),
        (_aten.special_modified_bessel_i1, "i", 1, False), (_aten.special_modified_bessel_k0, "k", 0, False),
        (_aten.special_modified_bessel_k1, "k", 1, False), (_aten.special_scaled_modified_bessel_k0, "k", 0, True),
        (_aten.special_scaled_modified_bessel_k1, "k", 1, True)):
    register([_op.default], functools.partial(_bessel_i if _fn == "i" else _bessel_k, _nu, _scaled))
