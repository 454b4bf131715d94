"""Training through MLIR (issue 5, target 3): 20 SGD-with-momentum steps of a small CNN and of an MLP, parameters and
inputs TorchMLIRTensor, give native PyTorch's losses from the same seed, with forward and backward calls through MLIR.
The models and the loop are examples/train.py's."""
import importlib.util
import os

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "train_example", os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train.py"))
train_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_example)


@pytest.mark.parametrize("make,shape,backward", [
    (train_example.small_cnn, (8, 3, 16, 16), {"convolution_backward", "max_pool2d_with_indices_backward",
                                               "native_batch_norm_backward", "threshold_backward"}),
    (train_example.mlp, (16, 32), {"gelu_backward", "native_layer_norm_backward", "mm"}),
], ids=["cnn", "mlp"])
def test_training_matches_native_with_backward_through_mlir(make, shape, backward):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    want, got, rep = train_example.compare(make.__name__, make, x, y, steps=20)
    for w, v in zip(want, got):
        assert abs(w - v) <= 1e-4 * max(abs(w), 1e-12) + 1e-7, (want, got)
    totals = rep.to_dict()["totals"]
    assert totals["mlir_share"] >= 0.9, rep
    through = {r["op"].split(".")[1] for r in rep.to_dict()["ops"] if r["mlir_calls"] and not r["fallback_calls"]}
    assert backward <= through, sorted(through)        # the backward ops too, not only the forward


def test_training_batch_norm_updates_its_running_statistics():
    # native_batch_norm writes running_mean and running_var although its schema does not say so: a kernel that
    # computes only its results left them as they were (and eval afterwards used the stale ones)
    import torch_mlir_eager as tme
    from helpers import row

    def run(wrap):
        torch.manual_seed(0)
        bn = torch.nn.BatchNorm2d(4)
        x = torch.randn(2, 4, 5, 5)
        m = tme.wrap(bn) if wrap else bn
        out = m(tme.wrap(x) if wrap else x)
        y = m.eval()(tme.wrap(x + 1) if wrap else x + 1)
        return [tme.unwrap(t) for t in (out, m.running_mean, m.running_var, m.num_batches_tracked, y)]

    want = run(False)
    tme.reset_report()
    got = run(True)
    torch.testing.assert_close(got, want)
    assert row("aten.native_batch_norm.default")["mlir_calls"] == 1          # eval: through MLIR
