"""Bad input (issue 6): every OpInfo error_inputs case raises the same exception type through TorchMLIRTensor as
natively (the MLIR path never swallows or changes a user's error); unsupported dtypes, sparse and meta tensors fall
back cleanly with the reason recorded."""
import pytest
import torch

import torch_mlir_eager as tme

from helpers import row

TRIED: list = []


def _error_cases():
    from torch.testing._internal.common_methods_invocations import op_db
    from torch_mlir_eager import coverage
    cases = []
    for op in op_db:
        if op.error_inputs_func is None:
            continue
        try:
            n = len(list(op.error_inputs("cpu")))
        except Exception:
            continue
        cases += [pytest.param(op, i, id=f"{coverage.name_of(op)}-{i}") for i in range(n)]
    return cases


def _error_input(op, i):
    """A fresh copy of the i-th error input (a failing call may have resized an `out=` that aliases its input)."""
    torch.manual_seed(0)
    return list(op.error_inputs("cpu"))[i].sample_input


@pytest.mark.parametrize("op,i", _error_cases())
def test_error_inputs_raise_like_native(op, i):
    s = _error_input(op, i)
    try:
        op.op(s.input, *s.args, **s.kwargs)
    except Exception as e:
        native = e
    else:
        pytest.skip("does not raise natively on this torch version")
    s = _error_input(op, i)
    tme.reset_report()
    with pytest.raises(Exception) as wrapped:
        op.op(*tme.wrap((s.input,) + tuple(s.args)), **tme.wrap(s.kwargs))
    assert isinstance(wrapped.value, type(native)), (type(native), type(wrapped.value), str(wrapped.value)[:300])
    TRIED.append(op.name)


@pytest.mark.parametrize("make,why", [
    (lambda: torch.randn(3, dtype=torch.complex64), "dtype torch.complex64"),
    (lambda: torch.randn(3).to(torch.float8_e4m3fn), "dtype torch.float8_e4m3fn"),
    (lambda: torch.randn(3).to(torch.uint8), "dtype torch.uint8"),
], ids=["complex", "float8", "uint8"])
def test_unsupported_dtype_falls_back_with_reason(make, why):
    x = make()
    tme.reset_report()
    with tme.enable():
        got = torch.clone(x)
    assert torch.equal(got.view(torch.uint8), x.view(torch.uint8)) if x.element_size() == 1 else torch.equal(got, x)
    r = row("aten.clone.default")
    assert r["fallback_calls"] == 1 and r["reasons"]["unsupported"] == why, r


def test_quantized_tensor_falls_back_with_reason():
    q = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
    tme.reset_report()
    with tme.enable():
        got = torch.dequantize(q)
    torch.testing.assert_close(got, q.dequantize())
    r = row("aten.dequantize.self")
    assert r["fallback_calls"] == 1 and "qint8" in r["reasons"]["unsupported"], r


def test_sparse_and_meta_tensors_fall_back_with_reason():
    sp = torch.randn(4, 4).relu().to_sparse()
    d = torch.randn(4, 3)
    tme.reset_report()
    with tme.enable():
        got = torch.sparse.mm(sp, d)
    torch.testing.assert_close(got, torch.sparse.mm(sp, d))
    assert any("layout torch.sparse_coo" in str(r["reasons"]) for r in tme.report().to_dict()["ops"]), tme.report()
    a, b = torch.empty(3, 4, device="meta"), torch.empty(3, 4, device="meta")
    tme.reset_report()
    with tme.enable():
        m = a + b
    assert m.device.type == "meta" and m.shape == (3, 4)
    r = row("aten.add.Tensor")
    assert r["fallback_calls"] == 1 and r["reasons"]["unsupported"] == "device meta", r
