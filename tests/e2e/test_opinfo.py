"""Differential test over PyTorch's OpInfo database: every float32 CPU sample through TorchMLIRTensor equals native.

It also counts the OpInfos that ran fully through MLIR (every call that is not native by design compiled, ran and
matched) and asserts a floor on that share. Set TORCH_MLIR_EAGER_OPINFO_JSON=path to save the per-OpInfo results.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db

import torch_mlir_eager as tme
from helpers import clone_tree

SAMPLES_PER_OP = 3

# Floor on OpInfos fully through MLIR among those that issued a compilable call (the issue asks >= 45%, what
# torch-mlir lowers one op at a time with no help). Measured on torch 2.14.1 + torch-mlir 20261001:
# 295 / 573 = 51.5% of OpInfos fully through MLIR; 1888 / 2653 = 71.2% of calls (seeded samples, reproducible).
FLOOR = 0.50

# Per-op tolerances looser than rtol 1e-4 / atol 1e-5, each with its reason.
TOLERANCES = {}

# Outputs whose values are undefined (uninitialized memory): compared by shape and dtype only.
UNINITIALIZED = {"empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted",
                 "nn.functional.dropout", "nn.functional.alpha_dropout", "nn.functional.feature_alpha_dropout"}

# A wrapper subclass has no storage of its own: C++ composite code that reads a tensor argument's data directly
# (not through an aten op) cannot read a TorchMLIRTensor.
WRAPPER_LIMITS = {
    "tensor_split": "reads the data of a tensor `indices_or_sections` argument in C++ composite code",
}

OPS = [op for op in op_db if torch.float32 in op.supported_dtypes("cpu")]
RESULTS: dict = {}


def _name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _run(fn, sample, wrap: bool):
    inp, args, kwargs = clone_tree((sample.input, sample.args, sample.kwargs))
    if wrap:
        inp, args, kwargs = tme.wrap((inp, args, kwargs))
    torch.manual_seed(0)
    out = fn(inp, *args, **kwargs)
    return tme.unwrap(out)


def _compare(name, got, want):
    if name in UNINITIALIZED:
        got_t = [g for g in torch.utils._pytree.tree_leaves(got) if isinstance(g, torch.Tensor)]
        want_t = [w for w in torch.utils._pytree.tree_leaves(want) if isinstance(w, torch.Tensor)]
        assert [(g.shape, g.dtype) for g in got_t] == [(w.shape, w.dtype) for w in want_t]
        return
    tol = TOLERANCES.get(name, {})
    torch.testing.assert_close(got, want, rtol=tol.get("rtol", 1e-4), atol=tol.get("atol", 1e-5),
                               equal_nan=True)


@pytest.mark.parametrize("op", OPS, ids=_name)
def test_opinfo(op):
    name = _name(op)
    if name in WRAPPER_LIMITS:
        pytest.xfail(WRAPPER_LIMITS[name])
    torch.manual_seed(1234)                   # the same sample values every run: the floor is reproducible
    try:
        samples = list(op.sample_inputs("cpu", torch.float32))[:SAMPLES_PER_OP]
    except Exception as e:
        pytest.skip(f"sample_inputs failed: {e}")
    tme.reset_report()
    ran = 0
    for sample in samples:
        try:
            want = _run(op.op, sample, wrap=False)
        except Exception as e:
            with pytest.raises(type(e)):
                _run(op.op, sample, wrap=True)
            continue
        got = _run(op.op, sample, wrap=True)
        _compare(name, got, want)
        ran += 1
    t = tme.report().to_dict()["totals"]
    RESULTS[name] = {"mlir": t["mlir_calls"], "fallback": t["fallback_calls"], "native": t["native_calls"],
                     "reasons": {r["op"]: r["reasons"] for r in tme.report().to_dict()["ops"] if r["reasons"]}}
    if not ran:
        pytest.skip("every sample raises natively")


def test_opinfo_floor():
    if len(RESULTS) < len(OPS) * 0.9:
        pytest.skip("run the whole OpInfo sweep to check the floor")
    compilable = {k: v for k, v in RESULTS.items() if v["mlir"] + v["fallback"] > 0}
    fully = sorted(k for k, v in compilable.items() if v["fallback"] == 0)
    calls_mlir = sum(v["mlir"] for v in RESULTS.values())
    calls_fb = sum(v["fallback"] for v in RESULTS.values())
    share = len(fully) / len(compilable)
    summary = (f"OpInfos fully through MLIR: {len(fully)} / {len(compilable)} = {100 * share:.1f}% "
               f"(of {len(RESULTS)} run); calls through MLIR: {calls_mlir} / {calls_mlir + calls_fb} = "
               f"{100 * calls_mlir / max(1, calls_mlir + calls_fb):.1f}%")
    print("\n" + summary)
    path = os.environ.get("TORCH_MLIR_EAGER_OPINFO_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"summary": summary, "fully": fully, "results": RESULTS}, f, indent=1)
    assert share >= FLOOR, summary
