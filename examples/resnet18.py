"""ResNet18 run eagerly through MLIR, op by op, against native PyTorch: top-3 of both, and the report's summary.

    python examples/resnet18.py [--weights resnet18.pth] [--report]

Weights are seeded random unless a state-dict file is given; nothing is downloaded. The input is a deterministic
synthetic image. Exits non-zero when the top-3 lists differ or logits differ by more than 1e-4 relative.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import torch_mlir_eager as tme


def synthetic_image() -> torch.Tensor:
    """A smooth deterministic 224x224 RGB pattern, normalized like ImageNet inputs."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    img = torch.stack([torch.sin(6.28 * xs) * 0.5 + 0.5, ys, (xs * ys) ** 0.5])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return ((img - mean) / std).unsqueeze(0)


def top3(logits: torch.Tensor) -> list:
    probs = torch.softmax(logits, dim=1)[0]
    p, i = probs.topk(3)
    return [(int(c), float(q)) for c, q in zip(i, p)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="a torchvision resnet18 state_dict file (default: seeded random weights)")
    ap.add_argument("--report", action="store_true", help="print the whole per-op table")
    a = ap.parse_args(argv)

    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    if a.weights:
        model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    x = synthetic_image()

    with torch.no_grad():
        ref = model(x)
    print("PyTorch prediction:   ", top3(ref))

    tme.wrap(model)
    tme.reset_report()
    t0 = time.perf_counter()
    with torch.no_grad():
        y = tme.unwrap(model(tme.TorchMLIRTensor(x)))
    first = time.perf_counter() - t0
    print("torch-mlir prediction:", top3(y))

    rel = float((y - ref).abs().max() / ref.abs().max())
    same = [c for c, _ in top3(ref)] == [c for c, _ in top3(y)]
    rep = tme.report()
    print(rep if a.report else rep.summary())
    print(f"first forward (all compiles) {first:.2f} s; logits max abs diff / max |logit| = {rel:.2e}; "
          f"top-3 {'agree' if same else 'DIFFER'}")
    share = rep.totals()["mlir_share"]
    ok = same and rel <= 1e-4 and share >= 0.95
    if not ok:
        print("FAILED: top-3 must agree, logits within 1e-4 relative, >= 95% of calls through MLIR", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
