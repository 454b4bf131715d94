"""Shared test helpers: run a call natively and through TorchMLIRTensor, compare with PyTorch, read the report."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map_only

import torch_mlir_eager as tme


def clone_tree(x):
    return tree_map_only(torch.Tensor, lambda t: t.clone(), x)


def totals() -> dict:
    return tme.report().to_dict()["totals"]


def row(op: str) -> dict:
    for r in tme.report().to_dict()["ops"]:
        if r["op"] == op:
            return r
    return {"op": op, "calls": 0, "mlir_calls": 0, "fallback_calls": 0, "native_calls": 0, "user_errors": 0,
            "reasons": {}}


def check_op(fn, *args, rtol=1e-4, atol=1e-5, **kwargs):
    """fn on plain tensors vs fn on TorchMLIRTensor: results equal (assert_close); returns the wrapped result."""
    want = fn(*clone_tree(args), **clone_tree(kwargs))
    got = fn(*tme.wrap(clone_tree(args)), **tme.wrap(clone_tree(kwargs)))
    got_plain = tme.unwrap(got)
    torch.testing.assert_close(got_plain, want, rtol=rtol, atol=atol, equal_nan=True)
    return got
