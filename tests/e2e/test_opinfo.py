"""Differential test over PyTorch's OpInfo database: every CPU sample, in each dtype of issue 5 (float32, float64,
int64, int32, bool, float16, bfloat16), through TorchMLIRTensor equals native (`coverage.run_op`, which also prints
the coverage table: `python -m torch_mlir_eager.coverage --dtype D`).

It also counts, per dtype, the OpInfos that ran fully through MLIR (every call that is not native by design
compiled, ran and matched) and asserts a floor on that share. TORCH_MLIR_EAGER_OPINFO_DTYPES=float32,int64 limits
the dtypes (default: all); TORCH_MLIR_EAGER_OPINFO_JSON=prefix saves the per-OpInfo results as prefix.<dtype>.json.
"""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from torch_mlir_eager import coverage

SAMPLES_PER_OP = 3

# Floors on OpInfos fully through MLIR among those that issued a compilable call (issue 5 asks 80% for float32;
# raised as coverage grows). Measured on torch 2.14.1 + torch-mlir 20261001 (seeded samples, reproducible), see
# the README's table.
# Measured (fully / compilable OpInfos, calls through MLIR, mismatches): float32 460/566 = 81.3%, 2276/2629 calls,
# 0; float64 450/566 = 79.5%, 0; int64 330/383 = 86.2%, 0; int32 320/372 = 86.0%, 0; bool 231/274 = 84.3%, 0;
# float16 360/451 = 79.8%, 0; bfloat16 372/455 = 81.8%, 0 (training batch norm runs natively since issue 17: its
# kernels did not update the running statistics).
FLOORS = {"float32": 0.81, "float64": 0.79, "int64": 0.85, "int32": 0.85, "bool": 0.83, "float16": 0.79,
          "bfloat16": 0.81}

_WANTED = os.environ.get("TORCH_MLIR_EAGER_OPINFO_DTYPES", ",".join(FLOORS)).split(",")
DTYPES = [d for d in FLOORS if d in _WANTED]
CASES = [(d, op) for d in DTYPES for op in coverage.ops_for(getattr(torch, d))]
RESULTS: dict = {d: {} for d in DTYPES}


@pytest.mark.parametrize("dtype,op", CASES, ids=[f"{d}-{coverage.name_of(op)}" for d, op in CASES])
def test_opinfo(dtype, op):
    name = coverage.name_of(op)
    if name in coverage.WRAPPER_LIMITS:
        pytest.xfail(coverage.WRAPPER_LIMITS[name])
    try:
        r = coverage.run_op(op, getattr(torch, dtype), SAMPLES_PER_OP)
    except Exception as e:
        pytest.skip(f"sample_inputs failed: {e}")
    # every sample equals native (or raises the same exception type as native)
    assert r.mismatch is None, f"{name} ({dtype}): {r.mismatch}"
    RESULTS[dtype][name] = r
    if not r.samples:
        pytest.skip("every sample raises natively")


@pytest.mark.parametrize("dtype", DTYPES)
def test_opinfo_floor(dtype):
    n_ops = sum(1 for d, _ in CASES if d == dtype)
    if len(RESULTS[dtype]) < n_ops * 0.9:
        pytest.skip("run the whole OpInfo sweep of this dtype to check its floor")
    results = list(RESULTS[dtype].values())
    compilable = [r for r in results if r.mlir + r.fallback > 0]
    fully = sorted(r.name for r in compilable if r.fallback == 0)
    summary = coverage.summary(results)
    print(f"\n{dtype}: {summary}")
    prefix = os.environ.get("TORCH_MLIR_EAGER_OPINFO_JSON")
    if prefix:
        with open(f"{prefix}.{dtype}.json", "w") as f:
            json.dump({"summary": summary, "fully": fully,
                       "results": {r.name: dataclasses.asdict(r) for r in results}}, f, indent=1)
    assert len(fully) / len(compilable) >= FLOORS[dtype], summary
