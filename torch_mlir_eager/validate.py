"""Which calls are safe to compile and run compiled (index ranges, values kernels get wrong), and how close is equal.

A compiled kernel does no bounds checks, so an out-of-range index would read or write outside a buffer. Before each
such call the indices are checked here; a call that fails the check runs natively (PyTorch raises its own error).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional

import numpy as np
import torch

# Schema argument names that hold positions into another tensor.
INDEX_ARG_NAMES = frozenset({"index", "indices", "target", "offsets", "sorter", "pivots", "LU_pivots"})


def _in_range(idx: torch.Tensor, size: int, negative_ok: bool) -> bool:
    if idx.numel() == 0:
        return True
    lo, hi = torch.aminmax(idx)
    return int(lo) >= (-size if negative_ok else 0) and int(hi) < size


def _dim_size(a: dict) -> int:
    t = a["self"]
    return t.size(a["dim"]) if t.dim() else 1


def _along_dim(a: dict) -> bool:
    return _in_range(a["index"], _dim_size(a), negative_ok=False)


def _index_list(a: dict) -> bool:
    self = a["self"]
    dims = self.shape
    for i, idx in enumerate(a["indices"]):
        if idx is None:
            continue
        if idx.dtype in (torch.bool, torch.uint8) or i >= len(dims):
            return False           # masks: data-dependent shapes; leave those to PyTorch
        if not _in_range(idx, dims[i], negative_ok=True):
            return False
    return True


def _nll(a: dict) -> bool:
    x, target, ignore = a["self"], a["target"], a["ignore_index"]
    classes = x.size(1) if x.dim() >= 2 else x.size(0)
    return _in_range(target[target != ignore], classes, negative_ok=False)


def every_overload(by_packet: dict) -> dict:
    """A table written per aten packet ("gather") keyed as every table here is: by each overload's name
    ("aten.gather.default", "aten.gather.out", ...)."""
    out = {}
    for base, value in by_packet.items():
        packet = getattr(torch.ops.aten, base)
        for overload in packet.overloads():
            out[str(getattr(packet, overload))] = value
    return out


# Op -> check(bound arguments) -> its index arguments are in range.
CHECKS: Dict[str, Callable[[dict], bool]] = every_overload({
    **{name: _along_dim for name in ("gather", "scatter", "scatter_add", "scatter_reduce", "index_select",
                                      "index_add", "index_copy", "index_fill", "index_reduce")},
    "embedding": lambda a: _in_range(a["indices"], a["weight"].size(0), negative_ok=False),
    "embedding_dense_backward": lambda a: _in_range(a["indices"], a["num_weights"], negative_ok=False),
    "take": lambda a: _in_range(a["index"], a["self"].numel(), negative_ok=True),
    **{name: _index_list for name in ("index", "_unsafe_index", "index_put", "_unsafe_index_put",
                                      "_index_put_impl")},
    **{name: _nll for name in ("nll_loss_forward", "nll_loss2d_forward", "nll_loss_backward",
                               "nll_loss2d_backward")},
    **{name: (lambda a: _in_range(a["indices"], math.prod(a["output_size"]), negative_ok=False))
       for name in ("max_unpool2d", "max_unpool3d")},
    "multi_margin_loss": lambda a: _in_range(a["target"], a["self"].size(-1), negative_ok=False),
    # a row's target classes, ended by the first -1
    "multilabel_margin_loss_forward": lambda a: a["target"].numel() == 0 or (
        int(a["target"].min()) >= -1 and int(a["target"].max()) < a["self"].size(-1)),
    "put": lambda a: _in_range(a["index"], a["self"].numel(), negative_ok=True),
    "searchsorted": lambda a: a.get("sorter") is None or _in_range(a["sorter"], a["sorted_sequence"].size(-1),
                                                                   negative_ok=False),
    # LAPACK's row interchanges (1-based): each a row of the factored matrix
    "lu_unpack": lambda a: _in_range(a["LU_pivots"] - 1, a["LU_data"].size(-2), negative_ok=False),
    "linalg_lu_solve": lambda a: _in_range(a["pivots"] - 1, a["LU"].size(-1), negative_ok=False),
    "lu_solve": lambda a: _in_range(a["LU_pivots"] - 1, a["LU_data"].size(-1), negative_ok=False),
    # the indices max pooling returned: positions in each (n, c) plane of the pooled input
    "max_pool2d_with_indices_backward":
        lambda a: _in_range(a["indices"], math.prod(a["self"].shape[-2:]), negative_ok=False),
    "max_pool3d_with_indices_backward":
        lambda a: _in_range(a["indices"], math.prod(a["self"].shape[-3:]), negative_ok=False),
})


# Limits of our decompositions' unrolled loops (decompositions/special.py, polynomials.py): a call beyond them runs
# natively (KNOWN_WRONG below).
ZETA_MIN_Q = -32.0          # zeta's sum runs while q + i <= 9: a negative q below this runs natively
POLY_MAX_DEGREE = 16


# Ops that torch-mlir 20261001 lowers to kernels whose wrong answers depend on the values (found by the one-op
# sweep in shared notes): a first matching run does not prove later ones right, so they always run natively.
# (softshrink, renorm and tanh-gelu were here: they now compile through our own decompositions only, see
# decompositions/, only=True.)
KNOWN_WRONG: Dict[str, Callable[[dict], bool]] = every_overload({
    "logcumsumexp": lambda a: True,
    # they update running_mean and running_var in place although their schemas do not say so (training batch
    # norm): a kernel computes their results only, and the running statistics would silently stay as they were
    "native_batch_norm": lambda a: bool(a.get("training")) and a.get("running_mean") is not None,
    "batch_norm_update_stats": lambda a: a.get("running_mean") is not None,
    # equal values come out in another order than PyTorch's (indices of ties differ), and a cheap check for ties
    # in the input does not exist
    "sort": lambda a: True,
    "topk": lambda a: True,
    "kthvalue": lambda a: True,
    "max_unpool2d": lambda a: True,
    "max_unpool3d": lambda a: True,
    "_embedding_bag_forward_only": lambda a: True,
    "_embedding_bag": lambda a: True,
    # computed by the C library (decompositions.libm), whose Bessel functions and PyTorch's own agree (1e-4 float32,
    # 1e-7 float64) only up to |x| = 65536 in float32 and 5 in float64 (measured over 60,000 arguments); beyond
    # that, or for a NaN or an infinity, the call runs natively
    **{f"special_bessel_{n}": lambda a: _beyond(a.get("self"), 65536.0, 5.0) for n in ("j0", "j1", "y0", "y1")},
    # Hurwitz zeta's sum runs until q + i > 9: a negative non-integer q (polygamma's x) needs more terms than
    # our kernels unroll (decompositions.special._zeta64)
    "special_zeta": lambda a: _zeta_long_sum(a.get("self"), a.get("other")),
    "polygamma": lambda a: a.get("n", 0) >= 2 and _negative_fraction(a.get("self")),
    "special_polygamma": lambda a: a.get("n", 0) >= 2 and _negative_fraction(a.get("self")),
    # orthogonal polynomials: our kernels unroll the recurrence up to POLY_MAX_DEGREE
    **{f"special_{name}_polynomial_{k}": lambda a: _degree_beyond(a.get("n"))
       for name, kinds in (("chebyshev", "tuvw"), ("shifted_chebyshev", "tuvw"), ("hermite", ("h", "he")),
                           ("laguerre", "l"), ("legendre", "p")) for k in kinds},
})


def _array(v):
    """A tensor's (or a Python number's) values as a numpy array; half types and integers as float64."""
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return (v if v.dtype in (torch.float32, torch.float64) else v.double()).numpy()
    return np.asarray(float(v))


def _fraction_below(a, limit: float):
    return (a < limit) & (a != np.floor(a))


def _negative_fraction(q) -> bool:
    """q holds a non-integer below ZETA_MIN_Q (zeta's sum over it is longer than our kernels unroll)."""
    return bool(_fraction_below(_array(q), ZETA_MIN_Q).any())


def _zeta_long_sum(x, q) -> bool:
    """Some zeta(x, q) element reaches the sum with a non-integer q below ZETA_MIN_Q: x an integer above 1
    (every other x gives NaN or inf before the sum)."""
    xa, qa = np.broadcast_arrays(_array(x), _array(q))
    return bool((_fraction_below(qa, ZETA_MIN_Q) & (xa > 1) & (xa == np.floor(xa))).any())


def _degree_beyond(n) -> bool:
    """A degree that truncates past POLY_MAX_DEGREE (or below minus it), or is not finite."""
    a = _array(n)
    return a.size > 0 and not bool(abs(a).max() < POLY_MAX_DEGREE + 1)


def _beyond(x, f32_limit: float, f64_limit: float) -> bool:
    """x holds a value (or NaN) outside [-limit, limit]; the limit by dtype (float64 or narrower)."""
    if not isinstance(x, torch.Tensor) or not x.numel():
        return False
    limit = f64_limit if x.dtype == torch.float64 or not x.is_floating_point() else f32_limit
    return not bool(abs(_array(x)).max() <= limit)


def _is_index_tensor(v) -> bool:
    if isinstance(v, (list, tuple)):
        return any(_is_index_tensor(x) for x in v)
    return isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex()


def _binder(schema) -> Callable[[tuple, dict], dict]:
    names = [a.name for a in schema.arguments]
    defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}

    def bind(args, kwargs) -> dict:
        bound = dict(defaults)
        bound.update(zip(names, args))
        bound.update(kwargs)
        return bound
    return bind


@functools.lru_cache(maxsize=None)
def checker(func) -> Optional[Callable]:
    """None when no call of the op needs a check; else a function (args, kwargs) -> safe to run compiled."""
    schema, name = func._schema, str(func)
    index_args = [a.name for a in schema.arguments if a.name in INDEX_ARG_NAMES and "Tensor" in str(a.type)]
    wrong = KNOWN_WRONG.get(name)
    if not index_args and wrong is None:
        return None
    check = CHECKS.get(name)
    bind = _binder(schema)

    def run(args, kwargs) -> bool:
        try:
            bound = bind(args, kwargs)
            if wrong is not None and wrong(bound):
                return False
            if not any(_is_index_tensor(bound.get(n)) for n in index_args):
                return True            # e.g. a float `target` of a loss: no positions are read from it
            return check is not None and bool(check(bound))
        except Exception:
            return False
    return run


# Ops whose torch-mlir 20261001 kernels give other answers than PyTorch when an input holds a NaN or an infinity:
# comparisons that do not propagate NaN (clamp/hardtanh/threshold return a number, max.dim/argmax pick another
# element), inf * 0 terms that PyTorch computes and the kernel skips or the other way round (transposed convolution,
# linear interpolation, grid sampling), statistics of infinite values (layer/group/batch norm, var_mean). Found by
# running each OpInfo sample through a kernel, then again with NaN, +-inf and zeros planted in its float inputs
# (tests/e2e/test_nan.py keeps the cases). A call with a non-finite floating input runs natively; finite calls are
# exact. Op -> None (always guarded) or a test of its arguments (guarded only then).
NONFINITE_UNSAFE: Dict[str, Optional[Callable[[dict], bool]]] = {
    **{name: None for name in (
        "aten.clamp.default", "aten.clamp.Tensor", "aten.clamp_min.default", "aten.clamp_min.Tensor",
        "aten.clamp_max.default", "aten.clamp_max.Tensor", "aten.hardtanh.default", "aten.threshold.default",
        "aten.hardshrink.default", "aten.maximum.default", "aten.minimum.default", "aten.max.other",
        "aten.min.other", "aten.max.dim", "aten.min.dim", "aten.argmax.default", "aten.argmin.default",
        "aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default",
        "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool3d.default",
        "aten.threshold_backward.default", "aten.elu_backward.default", "aten.softplus_backward.default",
        "aten.hardswish_backward.default", "aten.div.Tensor_mode", "aten.floor_divide.default",
        "aten.var_mean.correction", "aten.std_mean.correction", "aten._softmax_backward_data.default",
        "aten.native_group_norm.default", "aten.native_layer_norm.default", "aten.upsample_linear1d.default",
        "aten.upsample_bilinear2d.default", "aten.upsample_trilinear3d.default", "aten.gelu.default",
        "aten.bucketize.Tensor", "aten.grid_sampler_2d.default", "aten.grid_sampler_3d.default",
        "aten.logaddexp.default", "aten.logaddexp2.default", "aten._trilinear.default")},
    # matrix factorizations and solves (our own, see matrix.py): NaN and infinities decide pivots and 0 * inf
    # terms in LAPACK's own ways
    **{f"aten.{name}.default": None for name in (
        "linalg_lu_factor_ex", "linalg_lu", "lu_unpack", "linalg_lu_solve", "lu_solve", "_linalg_solve_ex",
        "linalg_inv_ex", "linalg_solve_triangular", "triangular_solve", "linalg_cholesky_ex", "cholesky_solve",
        "cholesky_inverse", "_linalg_det", "_linalg_slogdet", "geqrf", "linalg_householder_product", "ormqr",
        "linalg_qr")},
    "aten.convolution.default": lambda a: bool(a.get("transposed")),
    "aten.native_batch_norm.default": lambda a: bool(a.get("training")),
}


# Integer division by a tensor: PyTorch raises ZeroDivisionError for a zero divisor; a kernel would divide by zero
# (SIGFPE: the process dies) or return garbage. Op -> the divisor argument.
INT_DIVISORS = {"aten.div.Tensor_mode": "other", "aten.floor_divide.default": "other",
                "aten.remainder.Tensor": "other", "aten.remainder.Scalar_Tensor": "other", "aten.fmod.Tensor": "other"}

NONFINITE_REASON = "NaN or infinity in the input: torch-mlir's kernel for this op differs from PyTorch there"
ZERO_REASON = "integer division by zero: PyTorch raises"


# Ops of NONFINITE_UNSAFE whose kernel results show whether an input was non-finite, checked after the kernel ran
# instead of summing the inputs before (op -> the results to check): layer and group norm's per-row mean is NaN
# or infinite exactly where a row holds one (non-finite weight or bias give native's results: they enter each
# element alone); max pooling's values are NaN or infinite wherever a window held a NaN, a +inf, or only -inf
# (its indices are what differs then), and are a quarter of the input's size. In a BERT layer the input sums
# cost 86 us per forward for layer norm, the mean check 2; ResNet's max pool 283 us, its results' sum about 70.
# The standard deviation is checked the same way, for huge finite inputs too: PyTorch sums the squares in double,
# a kernel in the input's float type, where they overflow to inf (a row holding 1e20: native std 2.5e19, the kernel's
# inf); a non-finite std runs natively (a NaN or an infinite input gives one as well).
RESULT_CHECKED: Dict[str, tuple] = {
    "aten.native_layer_norm.default": (1,), "aten.native_group_norm.default": (1,),
    "aten.max_pool2d_with_indices.default": (0,), "aten.max_pool3d_with_indices.default": (0,),
    "aten.std.correction": (0,), "aten.std_mean.correction": (0,),
}


# Factorizations (matrix.py) whose `info` result (op -> its index) says LAPACK stopped early (a matrix that is not
# positive definite), divided by a zero pivot (a singular one), or that the kernel's pivoting is not certain to be
# LAPACK's (-1, our own flag): what LAPACK leaves then is not reproduced, or rounding may have decided otherwise.
INFO_CHECKED: Dict[str, int] = {"aten.linalg_cholesky_ex.default": 1, "aten.linalg_inv_ex.default": 1,
                                "aten._linalg_solve_ex.default": 3, "aten.linalg_lu_factor_ex.default": 2}
INFO_REASON = "singular, not positive definite, or a pivot or reflection rounding may decide: run natively"
# Factorizations without an `info` result: the kernel plants a NaN in this result (op -> its index) instead, where
# it is otherwise finite (finite inputs; a determinant that overflows also runs natively).
FLAGGED: Dict[str, int] = {"aten.linalg_lu.default": 0, "aten._linalg_det.default": 0,
                           "aten._linalg_slogdet.default": 1, "aten.geqrf.default": 1, "aten.linalg_qr.default": 1}


def result_guard(func) -> Optional[Callable]:
    """None, or check(outs) -> the reason this call's kernel results must be replaced by native's (or None)."""
    name = str(func)
    which, info, flagged = RESULT_CHECKED.get(name), INFO_CHECKED.get(name), FLAGGED.get(name)
    if which is None and info is None and flagged is None:
        return None

    def check(outs) -> Optional[str]:
        if which is not None and has_nonfinite([outs[i] for i in which]):
            return NONFINITE_REASON
        if info is not None and outs[info].numel() and outs[info].numpy().any():
            return INFO_REASON
        if flagged is not None and has_nonfinite([outs[flagged]]):
            return INFO_REASON
        return None
    return check


def value_guard(func, results_checked: bool = False) -> Optional[Callable]:
    """None, or check(args, kwargs, tensors) -> the reason this call's values must run natively (or None).
    `results_checked`: the call's results go through result_guard instead of the non-finite input check."""
    name = str(func)
    nonfinite = name in NONFINITE_UNSAFE and not (results_checked and name in RESULT_CHECKED)
    when = NONFINITE_UNSAFE.get(name)
    divisor = INT_DIVISORS.get(name)
    if not nonfinite and divisor is None:
        return None
    bind = _binder(func._schema)

    def check(args, kwargs, tensors) -> Optional[str]:
        if nonfinite and (when is None or when(bind(args, kwargs))) and has_nonfinite(tensors):
            return NONFINITE_REASON
        if divisor is not None:
            d = bind(args, kwargs).get(divisor)
            if isinstance(d, torch.Tensor) and not d.is_floating_point() and not d.is_complex() and \
                    d.numel() and not bool(d.all()):
                return ZERO_REASON
        return None
    return check


def has_nonfinite(tensors) -> bool:
    """Some floating tensor holds a NaN or an infinity: one sum per tensor (NaN or infinite then; a finite tensor
    whose sum overflows only sends a call PyTorch's way). The sum is numpy's, on this thread: a torch reduction would
    wake torch's own thread pool, whose spinning threads then slow the next MLIR kernels down for milliseconds (the
    BERT layer went from 2.2x to 5.3x native with torch.sum here)."""
    for t in tensors:
        if t.is_floating_point() and t.numel():
            if t.dtype in _NUMPY_FLOATS:
                if not np.isfinite(t.detach().numpy().sum()):
                    return True
            elif not torch.isfinite(t.sum()):
                return True
    return False


_NUMPY_FLOATS = frozenset({torch.float32, torch.float64, torch.float16})


# Contractions: a sum over K products in another order (blocked GEMM, oneDNN's conv algorithms) differs from
# native by ~eps * sqrt(K) * |term|, i.e. a few eps times the output's RMS, which exceeds a fixed atol once K is a
# few hundred. For these ops atol is 1e-5 (f32) times the output's RMS: ~16x above the typical reordering error,
# while a wrong kernel errs by O(RMS) and still fails.
CONTRACTIONS = frozenset({"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default",
                          "aten.addbmm.default", "aten.mv.default", "aten.addmv.default", "aten.dot.default",
                          "aten.vdot.default", "aten.convolution.default", "aten._convolution.default",
                          "aten.convolution_backward.default", "aten.linear.default", "aten.matmul.default",
                          "aten.tensordot.default", "aten.einsum.default", "aten._native_multi_head_attention.default"})


def tolerance(func, want) -> dict:
    """rtol/atol for qualifying a kernel against native PyTorch: tight, by dtype; integers and bools exact."""
    tol = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7),
           torch.float16: dict(rtol=1e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
           }.get(want.dtype, dict(rtol=0, atol=0))
    if str(func) in CONTRACTIONS and want.is_floating_point() and want.numel():
        rms = float(want.detach().double().pow(2).mean().sqrt())
        if rms == rms:        # not NaN
            tol["atol"] = max(tol["atol"], tol["atol"] * rms)
    return tol
