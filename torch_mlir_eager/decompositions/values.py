"""Values our decompositions share: an op's floating result dtype, a tensor filled from a Python number."""
from __future__ import annotations

import torch


def _float_result(x, other=None):
    """The dtype of an elementwise op's result on x (and other, promoted), made floating (the default dtype)."""
    dt = x.dtype if other is None else torch.result_type(x, other)
    return dt if dt.is_floating_point else torch.get_default_dtype()


def _filled_like(t, value):
    """A float64 tensor of t's shape holding `value`, computed from t: constant ones (full_like) made torch-mlir
    20261001 fold zeta's sum into NaN, and crash (SIGSEGV) folding where()s on them."""
    t = t.to(torch.float64)
    return torch.where(torch.isfinite(t), t * 0, torch.zeros_like(t)) + float(value)
