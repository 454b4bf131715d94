"""spec: how ops are treated (from schema and tags) and the cache key."""
import math

import pytest
import torch

from torch_mlir_eager import spec
from torch_mlir_eager.errors import CompileFailure

aten = torch.ops.aten


@pytest.mark.parametrize("func,reason", [
    (aten.view.default, "view"), (aten._unsafe_view.default, "view"), (aten.t.default, "view"),
    (aten.transpose.int, "view"), (aten.expand.default, "view"), (aten.slice.Tensor, "view"),
    (aten.select.int, "view"), (aten.detach.default, "view"), (aten.as_strided.default, "view"),
    (aten.transpose_.default, "view"), (aten.bernoulli.p, "random"), (aten.native_dropout.default, "random"),
    (aten._local_scalar_dense.default, "no tensor result"),
    (aten.empty_like.default, "allocation (uninitialized result)"),
    (aten.nonzero.default, "dynamic output shape"), (aten.masked_select.default, "dynamic output shape"),
    (aten._unique2.default, "dynamic output shape"),
])
def test_native_by_design(func, reason):
    assert spec.plan(func).native_reason == reason


def test_static_shaped_calls_of_dynamic_tagged_ops_compile():
    # index.Tensor is tagged dynamic_output_shape for boolean masks; integer indices have a static result shape
    assert spec.plan(aten.index.Tensor).native_reason is None
    assert spec.plan(aten.one_hot.default).native_reason is None


def test_functional_ops_compile_as_themselves():
    p = spec.plan(aten.add.Tensor)
    assert p.native_reason is None and p.functional is aten.add.Tensor and not p.inplace and not p.out_names


def test_inplace_maps_to_functional():
    p = spec.plan(aten.add_.Tensor)
    assert p.inplace and p.functional is aten.add.Tensor
    assert spec.plan(aten.relu_.default).functional is aten.relu.default
    assert spec.plan(aten.copy_.default).functional is aten.copy.default


def test_out_maps_to_functional():
    p = spec.plan(aten.add.out)
    assert p.functional is aten.add.Tensor and p.out_names == ("out",)
    p = spec.plan(aten.max.dim_max)
    assert p.functional is aten.max.dim and p.out_names == ("max", "max_values")


def test_key_keeps_scalar_types_apart():
    a = torch.ones(2, 3)
    keys = {spec.flatten(aten.add.Tensor, (a, a), {"alpha": v})[0] for v in (1, 1.0, True, 2)}
    assert len(keys) == 4


def test_key_nan_and_negative_zero():
    a = torch.ones(2)
    k1 = spec.flatten(aten.add.Scalar, (a, math.nan), {})[0]
    k2 = spec.flatten(aten.add.Scalar, (a, float("nan")), {})[0]
    assert k1 == k2 and hash(k1) == hash(k2)
    assert spec.flatten(aten.add.Scalar, (a, 0.0), {})[0] != spec.flatten(aten.add.Scalar, (a, -0.0), {})[0]


def test_key_shape_dtype_layout():
    a = torch.ones(3, 4)
    k = lambda t: spec.flatten(aten.neg.default, (t,), {})[0]
    assert k(a) == k(torch.zeros(3, 4))
    assert k(a) != k(torch.ones(4, 3)) != k(a.double())
    assert k(a.t().contiguous()) != k(a.t())
    assert k(torch.ones(4, 6)[:, ::2]) != k(torch.ones(4, 6).t()[::2].t().contiguous())


def test_key_tensor_lists_flattened():
    a, b = torch.ones(2), torch.ones(3)
    key, tensors = spec.flatten(aten.cat.default, ([a, b], 0), {})
    assert tensors == [a, b] or all(x is y for x, y in zip(tensors, [a, b]))
    rebuilt = spec.map_tensors(([a, b], 0), lambda t: t.shape)
    assert rebuilt == ([torch.Size([2]), torch.Size([3])], 0)


@pytest.mark.parametrize("t,what", [(torch.ones(2, dtype=torch.complex64), "dtype"),
                                    (torch.ones(2, dtype=torch.uint8), "dtype")])
def test_unsupported_inputs(t, what):
    # In the key (checked on a miss, then cached as a failure by key) ...
    key, tensors = spec.flatten(aten.neg.default, (t,), {})
    assert what in spec.unsupported(tensors)
    assert spec.unsupported([torch.ones(2)]) is None


def test_unsupported_layout_never_keyed():
    # ... while a layout (or device) that a same-shaped key could share is refused before any lookup.
    with pytest.raises(CompileFailure) as e:
        spec.flatten(aten.neg.default, (torch.ones(2, 2).to_sparse(),), {})
    assert e.value.category == "unsupported" and "layout" in e.value.reason


def test_unsupported_dtype_falls_back_every_call():
    import torch_mlir_eager as tme
    x = torch.ones(3, dtype=torch.complex64)
    tme.reset_report()
    for _ in range(2):
        torch.testing.assert_close(tme.unwrap(torch.neg(tme.wrap(x))), torch.neg(x))
    (row,) = [r for r in tme.report().to_dict()["ops"] if r["op"] == "aten.neg.default"]
    assert row["fallback_calls"] == 2 and row["mlir_calls"] == 0 and "dtype" in row["reasons"]["unsupported"]


def test_zero_size_calls_run_through_mlir():
    # sum over an empty dim is zeros, max over one the identity: a kernel computes them (the empty input is passed
    # with its zero size). A call whose every result is empty (an empty batch) runs its kernel too, which returns
    # the empty results: lowering at zero sizes is part of what MLIR must get right.
    import torch_mlir_eager as tme
    x = torch.ones(0, 3)
    tme.reset_report()
    torch.testing.assert_close(tme.unwrap(tme.wrap(x).sum(0)), x.sum(0))
    torch.testing.assert_close(tme.unwrap(torch.cat([tme.wrap(x), tme.wrap(torch.ones(2, 3))])),
                               torch.cat([x, torch.ones(2, 3)]))
    torch.testing.assert_close(tme.unwrap(-tme.wrap(x)), -x)
    got = tme.unwrap(torch.max(tme.wrap(x), 1))
    torch.testing.assert_close(tuple(got), tuple(torch.max(x, 1)))
    t = tme.report().to_dict()["totals"]
    assert t["mlir_calls"] == 4 and t["fallback_calls"] == 0, tme.report()


@pytest.mark.parametrize("fn", [lambda t: torch.amax(t, 0), lambda t: torch.amax(t, 0, keepdim=True),
                                lambda t: torch.argmax(t), lambda t: torch.max(t, 0), lambda t: torch.cumsum(t, 0)],
                         ids=["amax", "amax-keepdim", "argmax", "max.dim", "cumsum"])
def test_reduction_of_a_0d_tensor_runs_through_mlir(fn):
    # torch-mlir fails on these along dim 0 of a 0-d tensor; the kernel runs the op on it viewed as shape [1]
    import torch_mlir_eager as tme
    x = torch.tensor(-1.5)
    tme.reset_report()
    torch.testing.assert_close(tme.unwrap(fn(tme.wrap(x))), fn(x))
    t = tme.report().to_dict()["totals"]
    assert t["mlir_calls"] == 1 and t["fallback_calls"] == 0, tme.report()


def test_margin_losses_with_checked_targets_run_through_mlir():
    # their `target` holds class positions: checked in range (validate.py) before the kernel reads them
    import torch_mlir_eager as tme
    x, t = torch.randn(4, 5), torch.tensor([0, 4, 2, 1])
    tme.reset_report()
    torch.testing.assert_close(tme.unwrap(torch.nn.functional.multi_margin_loss(tme.wrap(x), tme.wrap(t))),
                               torch.nn.functional.multi_margin_loss(x, t))
    assert tme.report().to_dict()["totals"]["mlir_calls"] == 1, tme.report()
    tme.reset_report()
    bad = torch.tensor([0, 5, 2, 1])           # out of range: PyTorch's own error, not a kernel reading past x
    with pytest.raises(RuntimeError):
        torch.nn.functional.multi_margin_loss(tme.wrap(x), tme.wrap(bad))
