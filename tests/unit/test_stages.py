"""The worker-side stages one by one: FX graph + importer, lowering, kernel marshalling, qualification."""
import pytest
import torch

from torch_mlir_eager import importer, lowering, worker
from torch_mlir_eager.errors import CompileFailure
from torch_mlir_eager.kernel import Kernel, TensorMeta

aten = torch.ops.aten


def _module(ctx, func, args):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    g, _ = importer.one_node_graph(func, args, {}, tensors)
    return importer.import_graph(ctx, g)


def test_import_one_node(ctx):
    m = _module(ctx, aten.mm.default, (torch.randn(3, 4), torch.randn(4, 5)))
    text = str(m)
    assert "torch.aten.mm" in text and "!torch.vtensor<[3,5],f32>" in text


def test_meta_failure_is_typed(ctx):
    with pytest.raises(CompileFailure) as e:
        _module(ctx, aten.mm.default, (torch.randn(3, 4), torch.randn(5, 5)))
    assert e.value.category == "meta"


def test_lowering_to_linalg_and_llvm(ctx):
    m = _module(ctx, aten.add.Tensor, (torch.randn(2, 3), torch.randn(3)))
    lowering.to_linalg(m)
    assert "linalg.generic" in str(m)
    m = lowering.to_llvm(m)
    assert "llvm.func @main" in str(m) and "_mlir_ciface_main" in str(m)


def test_lowering_failure_is_typed(ctx):
    # No Torch-dialect op for an FFT: the importer emits torch.operator, which cannot be legalized.
    m = _module(ctx, aten._fft_r2c.default, (torch.randn(8), [0], 0, True))
    with pytest.raises(CompileFailure) as e:
        lowering.to_linalg(m)
    assert e.value.category == "lowering"


def test_kernel_runs_in_place_on_torch_memory(ctx):
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    m = _module(ctx, aten.mm.default, (a, b))
    lowering.to_linalg(m)
    m = lowering.to_llvm(m)
    k = Kernel(str(m), [TensorMeta.of(a), TensorMeta.of(b)], [TensorMeta((3, 5), torch.float32)])
    (out,) = k([a, b])
    torch.testing.assert_close(out, torch.mm(a, b), rtol=1e-4, atol=1e-5)


def test_compile_request_qualifies_against_native(ctx):
    a = torch.randn(4, 4)
    ok = worker.compile_request(ctx, {"op": "aten.tanh.default", "args": (a,), "kwargs": {}})
    assert "ok" in ok
    bad = worker.compile_request(ctx, {"op": "aten.tanh.default", "args": (a,), "kwargs": {}, "inject": "wrong"})
    assert bad["fail"][0] == "mismatch"


def test_non_contiguous_output_strides(ctx):
    a = torch.randn(4, 3).t()           # elementwise ops keep the input's layout
    r = worker.compile_request(ctx, {"op": "aten.neg.default", "args": (a,), "kwargs": {}})
    llvm_ir, ins, outs = r["ok"]
    assert outs[0].strides == torch.neg(a).stride() and not outs[0].contiguous
    (out,) = Kernel(llvm_ir, ins, outs)([a.contiguous()])
    assert out.stride() == torch.neg(a).stride()
    torch.testing.assert_close(out, torch.neg(a))
