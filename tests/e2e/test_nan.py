"""NaN and zero after qualification (issue 6: never a wrong answer, never a crashed process). Each kernel here is
first compiled and qualified on NaN-free values, then called with NaNs (and zeros) placed where a lowering that
compares without NaN propagation, or asserts, would go wrong: every result must equal native PyTorch.
(torch-mlir 20261001 gets NaN wrong in clamp, max.dim, sort... : those calls run natively, validate.NONFINITE_UNSAFE;
its reciprocal aborted the process on 0 or NaN: the assert is dropped, build.rewrites.drop_reciprocal_asserts.)"""
import pytest
import torch

import torch_mlir_eager as tme

NAN = float("nan")
F = torch.nn.functional
A = torch.ops.aten

CASES = {
    "relu": lambda x, y: torch.relu(x),
    "clamp": lambda x, y: torch.clamp(x, -0.5, 0.5),
    "clamp_min": lambda x, y: torch.clamp_min(x, 0.1),
    "clamp_max": lambda x, y: torch.clamp_max(x, 0.1),
    "clampT": lambda x, y: torch.clamp(x, y - 1, y + 1),
    "hardtanh": lambda x, y: F.hardtanh(x),
    "relu6": lambda x, y: F.relu6(x),
    "amax": lambda x, y: x.amax(1),
    "amin": lambda x, y: x.amin(1),
    "max.dim": lambda x, y: x.max(1),
    "min.dim": lambda x, y: x.min(1),
    "max": lambda x, y: x.max(),
    "min": lambda x, y: x.min(),
    "maxpool": lambda x, y: F.max_pool2d(x.view(1, 1, 8, 8), 2),
    "maxpool_idx": lambda x, y: F.max_pool2d(x.view(1, 1, 8, 8), 2, return_indices=True),
    "amaxpool": lambda x, y: F.adaptive_max_pool2d(x.view(1,1,8,8), 3),
    "leaky": lambda x, y: F.leaky_relu(x),
    "elu": lambda x, y: F.elu(x),
    "softplus": lambda x, y: F.softplus(x),
    "threshold": lambda x, y: F.threshold(x, 0.1, 2.0),
    "maximum": lambda x, y: torch.maximum(x, y),
    "minimum": lambda x, y: torch.minimum(x, y),
    "fmax": lambda x, y: torch.fmax(x, y),
    "fmin": lambda x, y: torch.fmin(x, y),
    "topk": lambda x, y: x.topk(3, 1),
    "argmax": lambda x, y: x.argmax(1),
    "argmin": lambda x, y: x.argmin(1),
    "sort": lambda x, y: x.sort(1),
    "hardsigmoid": lambda x, y: F.hardsigmoid(x),
    "hardswish": lambda x, y: F.hardswish(x),
    "silu": lambda x, y: F.silu(x),
    "gelu": lambda x, y: F.gelu(x),
    "logsumexp": lambda x, y: x.logsumexp(1),
    "softmax": lambda x, y: x.softmax(1),
    "where_gt": lambda x, y: torch.where(x > y, x, y),
    "sign": lambda x, y: x.sign(),
    "round": lambda x, y: x.round(),
    "nan_to_num": lambda x, y: x.nan_to_num(),
    "cumsum": lambda x, y: x.cumsum(1),
    "aminmax": lambda x, y: torch.aminmax(x, dim=1),
    "median?": lambda x, y: x.sum(1),
    "mish": lambda x, y: F.mish(x),
    "heaviside": lambda x, y: torch.heaviside(x, y),
    "threshold_backward": lambda x, y: A.threshold_backward(y, x, 0.0),
    "hardtanh_backward": lambda x, y: A.hardtanh_backward(y, x, -1.0, 1.0),
    "leaky_relu_backward": lambda x, y: A.leaky_relu_backward(y, x, 0.01, False),
    "elu_backward": lambda x, y: A.elu_backward(y, 1.0, 1.0, 1.0, False, x),
    "softplus_backward": lambda x, y: A.softplus_backward(y, x, 1.0, 20.0),
    "hardswish_backward": lambda x, y: A.hardswish_backward(y, x),
    "hardsigmoid_backward": lambda x, y: A.hardsigmoid_backward(y, x),
    "silu_backward": lambda x, y: A.silu_backward(y, x),
    "gelu_backward": lambda x, y: A.gelu_backward(y, x),
    "sigmoid_backward": lambda x, y: A.sigmoid_backward(y, x.sigmoid()),
    "clamp_Tensor": lambda x, y: torch.clamp(y, min=x),
    "max.other": lambda x, y: torch.max(x, y),
    "min.other": lambda x, y: torch.min(x, y),
    "nanmean": lambda x, y: x.nanmean(1),
    "nansum": lambda x, y: x.nansum(1),
    "prelu": lambda x, y: torch.nn.functional.prelu(x, torch.tensor([0.25])),
    "rrelu_eval": lambda x, y: torch.nn.functional.rrelu(x, training=False),
    "celu": lambda x, y: torch.nn.functional.celu(x),
    "selu": lambda x, y: torch.nn.functional.selu(x),
    "softshrink": lambda x, y: torch.nn.functional.softshrink(x),
    "hardshrink": lambda x, y: torch.nn.functional.hardshrink(x),
    "tanhshrink": lambda x, y: torch.nn.functional.tanhshrink(x),
    "logsigmoid": lambda x, y: torch.nn.functional.logsigmoid(x),
    "mse": lambda x, y: torch.nn.functional.mse_loss(x, y),
    "huber": lambda x, y: torch.nn.functional.huber_loss(x, y),
    "smoothl1": lambda x, y: torch.nn.functional.smooth_l1_loss(x, y),
    "l1": lambda x, y: torch.nn.functional.l1_loss(x, y),
    "bce_logits": lambda x, y: torch.nn.functional.binary_cross_entropy_with_logits(x, y.sigmoid()),
    "ce": lambda x, y: torch.nn.functional.cross_entropy(x, torch.arange(8)),
    "max_pool2d_bwd":
        lambda x, y: A.max_pool2d_with_indices_backward(
            y[:4, :4].reshape(1, 1, 4, 4), x.view(1, 1, 8, 8), [2, 2], [2, 2], [0, 0], [1, 1], False,
            torch.nn.functional.max_pool2d(x.view(1, 1, 8, 8).nan_to_num(), 2, return_indices=True)[1]),
    "layer_norm": lambda x, y: torch.nn.functional.layer_norm(x, [8]),
    "batch_norm": lambda x, y: torch.nn.functional.batch_norm(x.view(1, 8, 8), torch.zeros(8), torch.ones(8)),
    "isin": lambda x, y: torch.isin(x, y),
    "cummax": lambda x, y: torch.cummax(x, 1),
    "hypot": lambda x, y: torch.hypot(x, y),
    "clamp_b": lambda x, y: torch.clamp(x, min=-1.0),
    "kthvalue": lambda x, y: x.kthvalue(2, 1),
    "msort": lambda x, y: x.msort(),
    "argsort": lambda x, y: x.argsort(1),
    "glu": lambda x, y: torch.nn.functional.glu(x),
    "dist": lambda x, y: torch.dist(x, y),
    "renorm": lambda x, y: torch.renorm(x, 2, 0, 1.0),
    "sgn": lambda x, y: x.sgn(),
    "copysign": lambda x, y: torch.copysign(x, y),
    "fmod": lambda x, y: torch.fmod(x, y),
    "remainder": lambda x, y: torch.remainder(x, y),
    "floor_divide": lambda x, y: torch.floor_divide(x, y),
    "xlogy": lambda x, y: torch.xlogy(x, y),
    "lerp": lambda x, y: torch.lerp(x, y, 0.3),
    "eq": lambda x, y: x == y,
    "ne": lambda x, y: x != y,
    "lt": lambda x, y: x < y,
    "ge": lambda x, y: x >= y,
    "isnan": lambda x, y: x.isnan(),
    "logical_and": lambda x, y: torch.logical_and(x, y),
    "logical_not": lambda x, y: torch.logical_not(x),
    "bool": lambda x, y: x.bool(),
    "any": lambda x, y: x.any(1),
    "all": lambda x, y: x.all(1),
    "to_int": lambda x, y: x.nan_to_num().to(torch.int32),
    "ceil": lambda x, y: x.ceil(),
    "trunc": lambda x, y: x.trunc(),
    "frac": lambda x, y: x.frac(),
    "abs": lambda x, y: x.abs(),
    "pow": lambda x, y: torch.pow(x, y),
    "atan2": lambda x, y: torch.atan2(x, y),
    "exp": lambda x, y: x.exp(),
    "erf": lambda x, y: x.erf(),
    "tanh": lambda x, y: x.tanh(),
    "sigmoid": lambda x, y: x.sigmoid(),
    "mean": lambda x, y: x.mean(1),
    "var": lambda x, y: x.var(1),
    "std": lambda x, y: x.std(1),
    "norm": lambda x, y: x.norm(dim=1),
    "prod": lambda x, y: x.prod(1),
    "mm": lambda x, y: x @ y,
    "bmm": lambda x, y: torch.bmm(x.view(1, 8, 8), y.view(1, 8, 8)),
    "conv": lambda x, y: torch.nn.functional.conv2d(x.view(1,1,8,8), y[:3,:3].reshape(1,1,3,3)),
    "avgpool": lambda x, y: torch.nn.functional.avg_pool2d(x.view(1,1,8,8), 2),
    "interp": lambda x, y: torch.nn.functional.interpolate(x.view(1,1,8,8), scale_factor=2, mode="bilinear"),
    "embedding": lambda x, y: torch.nn.functional.embedding(torch.tensor([1, 3]), x),
    "gather": lambda x, y: x.gather(1, torch.zeros(8, 2, dtype=torch.long)),
    "index_select": lambda x, y: x.index_select(0, torch.tensor([0, 2])),
    "scatter_add": lambda x, y: x.scatter_add(1, torch.zeros(8, 2, dtype=torch.long), y[:, :2]),
    "scatter_reduce_amax": lambda x, y: x.scatter_reduce(1, torch.zeros(8, 2, dtype=torch.long), y[:, :2], "amax"),
    "index_put": lambda x, y: x.index_put((torch.tensor([0, 1]),), y[:2]),
    "reciprocal": lambda x, y: torch.reciprocal(x),
    "rsqrt": lambda x, y: torch.rsqrt(x.abs()),
    "div": lambda x, y: x / y,
    "log": lambda x, y: torch.log(x.abs()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_nan_after_qualification(name):
    f = CASES[name]
    torch.manual_seed(0)
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    with tme.enable():
        f(x, y)                                   # compiled and qualified on NaN-free values
    for trial in range(4):
        x2, y2 = torch.randn(8, 8), torch.randn(8, 8)
        x2[torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))] = NAN
        if trial == 1:
            y2[torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))] = NAN
        if trial == 2:
            x2[0, :] = NAN
        if trial == 3:
            x2[torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))] = 0.0
            y2[torch.randint(0, 8, (5,)), torch.randint(0, 8, (5,))] = 0.0
        want = f(x2, y2)
        with tme.enable():
            got = f(x2, y2)
        torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{name}, trial {trial}: {m}")


INT_DIVISIONS = {
    "floor_divide": torch.floor_divide, "remainder": torch.remainder, "fmod": torch.fmod,
    "div_trunc": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"),
}


@pytest.mark.parametrize("name", list(INT_DIVISIONS))
def test_integer_zero_divisor_after_qualification_raises_like_native(name):
    """A kernel qualified on nonzero integer divisors would divide by zero on a later call (SIGFPE, the process
    dies) or return garbage where PyTorch raises: such a call runs natively and raises PyTorch's error."""
    f = INT_DIVISIONS[name]
    a, b = torch.randint(-9, 9, (6,)), torch.randint(1, 5, (6,))
    with tme.enable():
        f(a, b)
    b[2] = 0
    with pytest.raises(RuntimeError) as native:
        f(a, b)
    with pytest.raises(type(native.value), match="ZeroDivisionError"):
        with tme.enable():
            f(a, b)


HUGE = {
    "std": lambda x: torch.std(x, 1),
    "std_all": lambda x: torch.std(x),
    "std_mean": lambda x: torch.std_mean(x, 1),
    "var": lambda x: torch.var(x, 1),
    "var_mean": lambda x: torch.var_mean(x, 1),
    "layer_norm": lambda x: F.layer_norm(x, [16]),
    "layer_norm_affine": lambda x: F.layer_norm(x, [16], torch.linspace(-1, 1, 16), torch.linspace(0, 2, 16)),
    "group_norm": lambda x: F.group_norm(x.view(4, 4, 4), 2),
    "softmax": lambda x: torch.softmax(x, 1),
    "vector_norm": lambda x: torch.linalg.vector_norm(x, dim=1),
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_finite_values_after_qualification(name):
    """Finite values whose squares overflow float32: PyTorch accumulates such reductions in double, a kernel in float
    (std of a row holding 1e20 came out inf where native's is 2.5e19)."""
    f = HUGE[name]
    torch.manual_seed(0)
    with tme.enable():
        f(torch.randn(4, 16))                     # compiled and qualified on ordinary values
    for v in (1e20, -1e25, 1e30, 3e38):
        x = torch.randn(4, 16)
        x[0, 3] = x[1, 5] = x[1, 7] = v
        want = f(x)
        with tme.enable():
            got = f(x)
        torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{name}, {v}: {m}")
