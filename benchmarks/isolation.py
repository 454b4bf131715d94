"""Issue 6, isolation cost: every distinct call of the ResNet18 forward (batch 1, 224x224) compiled in the worker
process (the default) and in this process (config isolate=False), with the disk cache off, in alternating
rounds; prints the median compile time per call each way and the overhead (target <= 20%). Worker start-up is
not counted (the worker is started, and its first compile paid, before timing)."""
import statistics
import sys

import torch
import torchvision

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config


def calls():
    """Every aten call of the forward, recorded once with plain arguments."""
    rec = []

    class Rec(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            rec.append((func, args, kwargs or {}))
            return out
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    with torch.no_grad(), Rec():
        m(torch.randn(1, 3, 224, 224))
    return rec


def timed(recorded, isolate: bool) -> list:
    from torch_mlir_eager import dispatch
    compiler.cache().clear()
    times = []
    with config.override(isolate=isolate, disk_cache=False):
        for func, args, kwargs in recorded:
            before = list(compiler.compile_seconds)
            dispatch.call(func, args, kwargs)
            new = list(compiler.compile_seconds)[len(before):]
            times += new
    return times


def main() -> int:
    recorded = calls()
    with config.override(disk_cache=False):                    # start the worker and warm both paths
        with tme.enable():
            torch.add(torch.ones(3), 1)
    timed(recorded[:5], True)
    timed(recorded[:5], False)
    iso, inproc = [], []
    for _ in range(2):
        iso += timed(recorded, True)
        inproc += timed(recorded, False)
    a, b = statistics.median(iso), statistics.median(inproc)
    print(f"compiles per round: {len(iso) // 2}; median compile: worker {a * 1e3:.1f} ms, in process "
          f"{b * 1e3:.1f} ms; totals {sum(iso) / 2:.2f} s vs {sum(inproc) / 2:.2f} s")
    over = a / b - 1
    ok = over <= 0.20
    print(f"{'PASS' if ok else 'FAIL'} isolation: the worker process adds {100 * over:.1f}% to the median compile "
          f"(target <= 20%); total {100 * (sum(iso) / sum(inproc) - 1):.1f}%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
