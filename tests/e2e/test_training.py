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
