"""Dump-dir mode (issue 6): each failing key leaves a directory whose repro.sh reproduces the failure with
torch-mlir-opt on the failing stage's input, and whose call.py repeats the call; the report links to it."""
import os
import subprocess
import sys

import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config

from helpers import row


def _fail(tmp_path, fn, *args):
    compiler.cache().clear()
    tme.reset_report()
    with config.override(dump_dir=str(tmp_path), disk_cache=False):
        want = fn(*args)
        with tme.enable():
            got = fn(*args)
    torch.testing.assert_close(got, want)
    (d,) = [os.path.join(tmp_path, n) for n in os.listdir(tmp_path)]
    return d


def test_lowering_failure_repro(tmp_path):
    d = _fail(tmp_path, torch.special.airy_ai, torch.linspace(-0.9, 0.9, 7))     # no Torch-dialect op for it
    assert row("aten.special_airy_ai.default")["repro"] == d
    files = set(os.listdir(d))
    assert {"torch.mlir", "failure.txt", "repro.sh", "call.py", "inputs.pt"} <= files, files
    assert "stage: lowering" in open(os.path.join(d, "failure.txt")).read()
    r = subprocess.run(["sh", os.path.join(d, "repro.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "failed to legalize operation 'torch.operator'" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, os.path.join(d, "call.py")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "StrictModeError" in r.stderr and "lowering" in r.stderr, r.stderr[-2000:]


def test_keys_that_compile_leave_no_dump(tmp_path):
    compiler.cache().clear()
    x = torch.randn(3, 4)
    with config.override(dump_dir=str(tmp_path), disk_cache=False):
        with tme.enable():
            got = torch.sin(x)
    torch.testing.assert_close(got, x.sin())
    assert os.listdir(tmp_path) == []


def test_crash_repro_names_the_stage_it_died_in(tmp_path):
    # torch-mlir 20261001 divides by zero lowering im2col (unfold) of an empty batch: the worker dies with SIGFPE
    d = _fail(tmp_path, lambda t: torch.nn.functional.unfold(t, 2), torch.randn(0, 1, 5, 5))
    text = open(os.path.join(d, "failure.txt")).read()
    assert "category: crash" in text and "stage: decomposed.lowering" in text, text
    r = subprocess.run(["sh", os.path.join(d, "repro.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + 8, (r.returncode, r.stderr[-1000:])      # SIGFPE, as in the worker
