"""Orthogonal polynomials (Chebyshev T/U/V/W and shifted, Hermite, Laguerre, Legendre): recurrences unrolled."""
from __future__ import annotations

import functools

import torch

from ..validate import POLY_MAX_DEGREE
from .registry import register
from .values import _filled_like, _float_result

_aten = torch.ops.aten


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


_OVERLOADS = ("default", "x_scalar", "n_scalar")
for _kind in "tuvw":
    for _shifted in (False, True):
        register([getattr(_aten, f"special_{'shifted_' if _shifted else ''}chebyshev_polynomial_{_kind}")],
                 functools.partial(_chebyshev, _kind, _shifted), overloads=_OVERLOADS)
register([_aten.special_hermite_polynomial_h], functools.partial(_hermite, True), overloads=_OVERLOADS)
register([_aten.special_hermite_polynomial_he], functools.partial(_hermite, False), overloads=_OVERLOADS)
register([_aten.special_laguerre_polynomial_l], _laguerre, overloads=_OVERLOADS)
register([_aten.special_legendre_polynomial_p], _legendre, overloads=_OVERLOADS)
