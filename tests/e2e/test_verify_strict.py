"""Verify mode (every MLIR result checked against native PyTorch, native's returned on a mismatch) and strict mode
(a fallback or a mismatch raises), issue 6."""
import os
import subprocess
import sys

import pytest
import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config, shapes
from torch_mlir_eager.errors import StrictModeError

from helpers import row


def _corrupt_kernel_of(fn, *args):
    """Run fn once through MLIR (compiling its kernel), then make that kernel add 1 to every result: a kernel that
    passed qualification and went wrong later, which only verify mode can catch."""
    compiler.cache().clear()
    shapes.reset()               # no call family from an earlier test: one static kernel, the only one cached
    with tme.enable():
        fn(*args)
    (kernel,) = list(compiler.cache()._kernels.values())
    run = kernel.run

    def wrong(tensors, outs=None):
        res = run(tensors, outs)
        for r in res:
            r.add_(1)
        return res
    kernel.run = wrong
    return kernel


def test_verify_returns_native_result_and_reports_the_error():
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    _corrupt_kernel_of(torch.add, x, y)
    tme.reset_report()
    with config.override(verify=True), tme.enable():
        got = torch.add(x, y)
    torch.testing.assert_close(got, x + y)
    r = row("aten.add.Tensor")
    assert r["verified"] == 1 and r["mismatches"] == 1 and r["fallback_calls"] == 1 and r["mlir_calls"] == 0, r
    assert abs(r["max_abs_err"] - 1.0) < 1e-6 and "verify" in r["reasons"]["mismatch"]
    # the wrong kernel is gone: without verify the key now falls back (no wrong answer either)
    with tme.enable():
        again = torch.add(x, y)
    torch.testing.assert_close(again, x + y)
    assert row("aten.add.Tensor")["fallback_calls"] == 2


def test_verify_of_a_direct_in_place_write_restores_native_values():
    x = torch.randn(6, 7)
    _corrupt_kernel_of(torch.relu_, x.clone())
    tme.reset_report()
    t = x.clone()
    with config.override(verify=True), tme.enable():
        torch.relu_(t)
    torch.testing.assert_close(t, x.relu())
    assert row("aten.relu_.default")["mismatches"] == 1


def test_verify_counts_correct_kernels_as_mlir():
    compiler.cache().clear()
    a, b = torch.randn(8, 3), torch.randn(3, 5)
    tme.reset_report()
    with config.override(verify=True), tme.enable():
        for _ in range(3):
            got = torch.mm(a, b)
    torch.testing.assert_close(got, a @ b)
    r = row("aten.mm.default")
    assert r["verified"] == 3 and r["mismatches"] == 0 and r["mlir_calls"] == 3


def test_strict_raises_instead_of_falling_back():
    z = torch.randn(3, dtype=torch.complex64)
    with config.override(strict=True):
        with pytest.raises(StrictModeError, match="aten.neg.default did not run through MLIR"):
            with tme.enable():
                torch.neg(z)
        with tme.enable():
            v = torch.randn(2, 6).view(3, 4)          # native by design: never an error
        assert v.shape == (3, 4)


def test_strict_verify_mismatch_raises():
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    _corrupt_kernel_of(torch.mul, x, y)
    with config.override(strict=True, verify=True), tme.enable():
        with pytest.raises(StrictModeError, match="mismatch"):
            torch.mul(x, y)


def test_modes_from_environment():
    code = "import torch_mlir_eager as t; c = t.config.get(); print(c.verify, c.strict, c.dump_dir)"
    env = dict(os.environ, TORCH_MLIR_EAGER_VERIFY="1", TORCH_MLIR_EAGER_STRICT="1", TORCH_MLIR_EAGER_DUMP_DIR="/x")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "/x"]
