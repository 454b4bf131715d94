"""The wrapper alone against native PyTorch, over PyTorch's OpInfo database: every CPU sample of every OpInfo, with
every tensor among its input, args and kwargs wrapped, through the function, method and in-place variants, in
float32 and complex64 (the ten other dtypes under `-m slow`). Kernels are bypassed (each call runs
natively behind the wrapper, recorded as a fallback), so what is checked is the subclass itself: unwrapping and
rewrapping, aliasing, in-place and metadata writes, lazy conj/neg bits, C++ composites that read a tensor's data
(tensor_split with a tensor of indices), and PyTorch's exceptions. Results, and every tensor argument afterwards
(what the call wrote into it), must equal native's, and an error must be native's type. (Results are not all TorchMLIRTensors: factories, and
composites whose C++ makes a fresh tensor, such as linalg.norm of an empty matrix, return plain ones, as they
would for any subclass.)
test_opinfo.py runs the same samples with kernels.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._pytree import tree_leaves

from torch_mlir_eager import coverage, dispatch
from torch_mlir_eager.errors import CompileFailure

CI_DTYPES = ("float32", "complex64")
SLOW_DTYPES = ("float64", "complex128", "int64", "int32", "int16", "int8", "uint8", "bool", "float16", "bfloat16")
# outputs that are uninitialized memory or random draws: compared by shape and dtype only
UNCOMPARABLE = coverage.UNINITIALIZED | {"bernoulli", "normal", "normal.number_mean", "uniform", "cauchy",
                                         "exponential", "geometric", "log_normal", "normal.in_place", "rand_like",
                                         "randn_like", "randint_like", "randint", "multinomial",
                                         "nn.functional.rrelu", "randn", "rand"}


def _cases(dtypes):
    return [pytest.param(d, op, id=f"{d}-{coverage.name_of(op)}") for d in dtypes for op in coverage.ops_for(
        getattr(torch, d))]


@pytest.fixture
def no_kernels(monkeypatch):
    def native_only(e, func, args, kwargs):
        raise CompileFailure("unsupported", "kernels bypassed: the wrapper alone is under test")
    monkeypatch.setattr(dispatch, "_run_mlir", native_only)


def _check(op, dtype):
    name = coverage.name_of(op)
    torch.manual_seed(1234)
    try:
        samples = list(op.sample_inputs("cpu", getattr(torch, dtype)))
    except Exception as e:
        pytest.skip(f"sample_inputs failed: {e}")
    variants = [(v, f) for v, f in (("function", op.op), ("method", op.method_variant),
                                     ("in-place", op.inplace_variant)) if f is not None]
    for variant, fn in variants:
        for i, s in enumerate(samples):
            where = f"{name} {dtype} {variant} sample {i}"
            try:
                want = coverage._run(fn, s, wrap=False)
            except Exception as e:
                with pytest.raises(Exception) as ours:
                    coverage._run(fn, s, wrap=True)
                assert type(ours.value) is type(e), f"{where}: native raised {type(e).__name__}: {e}"
                continue
            got = coverage._run(fn, s, wrap=True)
            if name in UNCOMPARABLE:
                got, want = [[(t.shape, t.dtype) for t in tree_leaves(x) if isinstance(t, torch.Tensor)]
                             for x in (got, want)]
                assert got == want, where
            else:
                torch.testing.assert_close(got, want, equal_nan=True, check_layout=False, msg=lambda m: f"{where}: {m}")


@pytest.mark.parametrize("dtype,op", _cases(CI_DTYPES))
def test_wrapper_matches_native(no_kernels, dtype, op):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(op, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,op", _cases(SLOW_DTYPES))
def test_wrapper_matches_native_every_dtype(no_kernels, dtype, op):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(op, dtype)
