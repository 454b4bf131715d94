"""Where a warm forward's time goes, per aten op, measured inside the model: each call through TorchMLIRTensor timed
around the dispatcher (dispatch.call_entry: guards, cache lookup, kernel, wrapping of nothing), and each native
call timed the same way from a dispatch mode. A tight loop over one kernel hides what the model sees (its inputs
just written by another op, caches holding other weights): elementwise calls run 2-3x slower inside the BERT layer
than alone, native's as well as ours.

    .venv/bin/python benchmarks/breakdown.py [--model bert|resnet18] [--forwards 100] [--shapes]

Prints per op: calls per forward, native us, ours us, the difference; then the forwards themselves (native, the
leanest interceptor, ours) and how much of ours is spent outside the dispatcher (the interceptor's own cost).
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

import torch_mlir_eager as tme  # noqa: E402
from torch_mlir_eager import dispatch  # noqa: E402


def _row(e, args, shapes: bool) -> str:
    """The table row of a call: the op's functional name (relu_ and relu share one), with its input shapes."""
    if not shapes:
        return e.fname
    return e.fname + " " + ",".join("x".join(map(str, t.shape)) for t in args if isinstance(t, torch.Tensor))


class _NativeTimer(TorchDispatchMode):
    def __init__(self, acc, cnt, shapes):
        super().__init__()
        self.acc, self.cnt, self.shapes = acc, cnt, shapes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        r = func(*args, **(kwargs or {}))
        row = _row(dispatch.entry(func), args, self.shapes)
        self.acc[row] += time.perf_counter() - t
        self.cnt[row] += 1
        return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["bert", "resnet18"], default="bert")
    ap.add_argument("--forwards", type=int, default=100)
    ap.add_argument("--shapes", action="store_true", help="a row per op and input shapes")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    if a.model == "bert":
        native, x = bench.BertLayer().eval(), torch.randn(1, 128, 256)
    else:
        import torchvision
        native, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224)
    n = a.forwards
    ours, lean = copy.deepcopy(native), bench.lean_wrap(copy.deepcopy(native))
    nat_acc, nat_cnt = collections.defaultdict(float), collections.defaultdict(int)
    our_acc, our_cnt = collections.defaultdict(float), collections.defaultdict(int)
    with torch.no_grad():
        tme.wrap(ours)
        xw, xl = tme.wrap(x), bench.LeanTensor(x)
        ours(xw)                                               # compiles
        t_nat, t_lean, t_ours = (bench.per_call(fn, max(n // 5, 1), reps=7) * 1e3
                                 for fn in (lambda: native(x), lambda: lean(xl), lambda: ours(xw)))
        with _NativeTimer(nat_acc, nat_cnt, a.shapes):
            for _ in range(n):
                native(x)
        inner = dispatch.call_entry

        def timed(e, args, kwargs):
            t = time.perf_counter()
            try:
                return inner(e, args, kwargs)
            finally:
                row = _row(e, args, a.shapes)
                our_acc[row] += time.perf_counter() - t
                our_cnt[row] += 1
        import torch_mlir_eager.tensor as tensor_mod
        inner_view = tensor_mod._view_of_self

        def timed_view(e, func, args):         # views of a wrapper skip call_entry (tensor._view_of_self)
            t = time.perf_counter()
            try:
                return inner_view(e, func, args)
            finally:
                row = _row(e, [args[0].elem], a.shapes)
                our_acc[row] += time.perf_counter() - t
                our_cnt[row] += 1
        tensor_mod.dispatch.call_entry, tensor_mod._view_of_self = timed, timed_view
        try:
            for _ in range(n):
                ours(xw)
        finally:
            tensor_mod.dispatch.call_entry, tensor_mod._view_of_self = inner, inner_view
    w = 76 if a.shapes else 44
    print(f"{'op':{w}s} {'calls':>5s} {'native us':>10s} {'ours us':>10s} {'diff us':>9s}")
    for op in sorted(set(nat_acc) | set(our_acc), key=lambda o: -(our_acc[o] - nat_acc[o])):
        calls = max(nat_cnt[op], our_cnt[op]) // n
        nat_us, our_us = nat_acc[op] / n * 1e6, our_acc[op] / n * 1e6
        print(f"{op[:w]:{w}s} {calls:5d} {nat_us:10.1f} {our_us:10.1f} {our_us - nat_us:+9.1f}")
    inside = sum(our_acc.values()) / n * 1e3
    print(f"\nforward: native {t_nat:.3f} ms, lean interceptor {t_lean:.3f} ms ({t_lean / t_nat:.2f}x), "
          f"ours {t_ours:.3f} ms ({t_ours / t_nat:.2f}x); inside the dispatcher {inside:.3f} ms per timed forward "
          f"(the rest of ours is the interceptor's own unwrap/wrap and the model's Python); "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
