"""Special functions in float64 formulas: erfinv, ndtri, erfcx, log_ndtr, digamma, trigamma, polygamma, zeta."""
from __future__ import annotations

import ctypes
import ctypes.util
import math

import torch

from ..validate import ZETA_MIN_Q
from .libm import _libm, _signbit
from .registry import decomposes
from .values import _filled_like, _float_result

_aten = torch.ops.aten


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


@decomposes(_aten.special_erfcx.default)
def _erfcx(x):
    return _erfcx64(x.to(torch.float64)).to(_float_result(x))


@decomposes(_aten.special_log_ndtr.default)
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


@decomposes(_aten.erfinv.default, _aten.special_erfinv.default)
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


@decomposes(_aten.special_ndtri.default)
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


@decomposes(_aten.special_spherical_bessel_j0.default)
def _spherical_bessel_j0(x):
    """sin(x)/x; its Taylor series below |x| = 0.5 (no 0/0), 0 at infinities; in float64."""
    d = x.to(torch.float64)
    x2 = d * d
    series = 1 + x2 * (-1 / 6 + x2 * (1 / 120 + x2 * (-1 / 5040 + x2 * (1 / 362880 + x2 * (
        -1 / 39916800 + x2 * (1 / 6227020800))))))
    r = torch.where(d.abs() < 0.5, series, torch.sin(d) / d)
    return torch.where(torch.isinf(d), torch.zeros_like(d), r).to(_float_result(x))


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


@decomposes(_aten.digamma.default, _aten.special_psi.default, _aten.special_digamma.default)
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


@decomposes(_aten.special_zeta.default, _aten.special_zeta.self_scalar, _aten.special_zeta.other_scalar)
def _zeta(x, q):
    dt = _float_result(x, q)
    if not isinstance(x, torch.Tensor):
        x = _filled_like(q, x)
    if not isinstance(q, torch.Tensor):
        q = _filled_like(x, q)
    return _zeta64(x.to(torch.float64), q.to(torch.float64)).to(dt)


def _exp_lgamma(v: float, dt) -> float:
    """exp(lgamma(v)) as PyTorch computes it for dtype dt: the C library's float or double functions."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    ct, suffix = (ctypes.c_double, "") if dt == torch.float64 else (ctypes.c_float, "f")
    lgamma, exp = getattr(libm, "lgamma" + suffix), getattr(libm, "exp" + suffix)
    for f in (lgamma, exp):
        f.restype, f.argtypes = ct, [ct]
    return exp(lgamma(v))


@decomposes(_aten.polygamma.default, _aten.special_polygamma.default)
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
