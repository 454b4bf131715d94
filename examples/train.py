"""Train a small CNN and an MLP with every parameter and input a TorchMLIRTensor: forward and backward aten calls run
through MLIR; the losses match native PyTorch's from the same seed.

    .venv/bin/python examples/train.py [--steps 20]
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn as nn

import torch_mlir_eager as tme


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64), nn.Dropout(0.0), nn.Linear(64, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list:
    """SGD with momentum on cross-entropy; the loss of each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return losses


def compare(name: str, make, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple:
    """(native losses, MLIR losses, report) for `steps` training steps from the same seed."""
    torch.manual_seed(0)
    model = make()
    want = train(copy.deepcopy(model), x, y, steps)
    tme.reset_report()
    got = train(tme.wrap(copy.deepcopy(model)), tme.wrap(x), tme.wrap(y), steps)
    return want, got, tme.report()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(1)
    cases = [("small CNN", small_cnn, torch.randn(8, 3, 16, 16, generator=g)),
             ("MLP", mlp, torch.randn(16, 32, generator=g))]
    ok = True
    for name, make, x in cases:
        y = torch.randint(0, 10, (x.shape[0],), generator=g)
        want, got, rep = compare(name, make, x, y, a.steps)
        worst = max(abs(w - v) / max(abs(w), 1e-12) for w, v in zip(want, got))
        share = rep.to_dict()["totals"]["mlir_share"]
        print(f"{name}: losses native {want[0]:.5f} -> {want[-1]:.5f}, MLIR {got[0]:.5f} -> {got[-1]:.5f}; "
              f"worst relative difference {worst:.1e}")
        print("  " + rep.summary())
        ok &= worst <= 1e-4 and share >= 0.9
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
