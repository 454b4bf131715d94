"""The demo as a test: ResNet18 through TorchMLIRTensor gives PyTorch's top-3, logits within 1e-4 relative."""
import pytest
import torch

import torch_mlir_eager as tme

torchvision = pytest.importorskip("torchvision")


def test_resnet18_matches_pytorch():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "resnet18.py"
    spec = importlib.util.spec_from_file_location("resnet18_example", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = ex.synthetic_image()
    with torch.no_grad():
        want = model(x)
        tme.wrap(model)
        tme.reset_report()
        got = tme.unwrap(model(tme.TorchMLIRTensor(x)))
    assert [c for c, _ in ex.top3(got)] == [c for c, _ in ex.top3(want)]
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    t = tme.report().to_dict()["totals"]
    assert t["mlir_share"] >= 0.95, tme.report().summary()
    assert t["mlir_calls"] >= 60
