"""Faults in the MLIR path end in a recorded fallback with the right category, and the test process survives.

A test hook (`config.override(inject={op: kind})`) makes the compile worker abort, hang, or qualify a wrong kernel.
Each test uses its own shapes so no earlier cache entry answers for it.
"""
import os

import pytest
import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config
from torch_mlir_eager.worker.protocol import Request
from helpers import row


@pytest.fixture(autouse=True)
def fresh_report():
    tme.reset_report()


def _sigmoid(shape):
    x = torch.randn(*shape)
    got = tme.unwrap(torch.sigmoid(tme.wrap(x)))
    torch.testing.assert_close(got, torch.sigmoid(x))     # native answer: correct despite the fault
    return row("aten.sigmoid.default")


def test_worker_abort_is_a_crash_fallback():
    _sigmoid((7, 10))                       # the worker is up before the fault
    tme.reset_report()
    starts = compiler.worker().starts
    with config.override(inject={"aten.sigmoid.default": "abort"}, dynamic="never"):   # one compile, one crash
        r = _sigmoid((7, 11))
    assert r["fallback_calls"] == 1 and r["mlir_calls"] == 0
    assert "crash" in r["reasons"] and "SIGABRT" in r["reasons"]["crash"]
    # The next compile restarts the worker and goes through MLIR.
    r = _sigmoid((7, 12))
    assert r["mlir_calls"] == 1 and compiler.worker().starts == starts + 1


def test_hang_past_the_limit_is_a_timeout_fallback():
    with config.override(inject={"aten.sigmoid.default": "hang"}, compile_timeout_s=3):
        r = _sigmoid((5, 13))
    assert r["fallback_calls"] == 1 and "timeout" in r["reasons"]
    assert _sigmoid((5, 14))["mlir_calls"] == 1


def test_wrong_kernel_is_a_mismatch_fallback():
    with config.override(inject={"aten.sigmoid.default": "wrong"}):
        r = _sigmoid((3, 17))
    assert r["fallback_calls"] == 1 and "mismatch" in r["reasons"]


def test_failures_are_negative_cached():
    with config.override(inject={"aten.sigmoid.default": "wrong"}):
        _sigmoid((3, 19))
    r = _sigmoid((3, 19))                   # no inject now: the known failure is not retried
    assert r["fallback_calls"] == 2 and r["compiles"] == 1 and r["mlir_calls"] == 0


def test_real_native_crash_in_lowering_survives():
    # torch-mlir 20261001 aborts ("LLVM ERROR") lowering a cast to complex (refused before lowering), and
    # divides by zero lowering im2col (unfold) of an empty batch: SIGFPE in the worker, a crash fallback.
    x = torch.randn(0, 1, 5, 5)
    got = tme.unwrap(torch.nn.functional.unfold(tme.wrap(x), 2))
    assert got.shape == torch.nn.functional.unfold(x, 2).shape
    r = row("aten.im2col.default")
    assert r["fallback_calls"] == 1 and r["reasons"]["crash"] == "worker died: SIGFPE", r
    y = torch.randn(2, 3)
    got = tme.unwrap(tme.wrap(y).to(torch.complex64))
    torch.testing.assert_close(got, y.to(torch.complex64))
    assert row("aten._to_copy.default")["fallback_calls"] == 1


def test_killed_worker_restarts():
    compiler.worker().compile(Request("aten.neg.default", (torch.ones(2),), {}))
    os.kill(compiler.worker()._proc.pid, 9)
    r = _sigmoid((9, 2))
    assert r["mlir_calls"] + r["fallback_calls"] == 1
    assert _sigmoid((9, 3))["mlir_calls"] == 1


def test_a_forked_child_compiles_with_a_worker_of_its_own():
    # A DataLoader worker is a fork: over the parent's inherited pipes, its requests and replies would interleave
    # with the parent's (or a sibling's), and a kernel qualified for one call could be taken for another.
    _sigmoid((3, 29))                       # the parent's worker is up
    parent = compiler.worker()._proc
    assert parent is not None and parent.poll() is None
    pid = os.fork()
    if pid == 0:                            # the child: a new worker, a right answer through MLIR
        code = 1
        try:
            fresh = compiler.worker()._proc is None
            tme.reset_report()
            r = _sigmoid((3, 31))
            code = 0 if fresh and r["mlir_calls"] == 1 and compiler.worker()._proc is not parent else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.poll() is None and compiler.worker()._proc is parent     # the parent's own is untouched
    tme.reset_report()
    assert _sigmoid((3, 37))["mlir_calls"] == 1
