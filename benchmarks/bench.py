"""Issue 4's targets measured against native PyTorch in the same run: prints a table and one summary line per target.

    python benchmarks/bench.py [--quick] [--mem-iters N] [--threads N]

1 hot path (cache hit on 4-element ops vs the leanest wrapper subclass), 2 kernels (ResNet18's distinct calls, MLIR
kernel vs native), 3 threads (reported), 4 whole model (ResNet18 and a BERT-like encoder layer, warm forward),
5 compile cost (median per new call, first ResNet18 forward), 6 memory (RSS over warm forwards, cache bounded).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, spec


class LeanTensor(torch.Tensor):
    """The cheapest possible interceptor: unwrap, call the native op, rewrap."""
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(), dtype=elem.dtype,
                                                device=elem.device)
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        un = lambda x: x.elem if isinstance(x, LeanTensor) else x
        out = func(*[un(a) for a in args], **{k: un(v) for k, v in (kwargs or {}).items()})
        if isinstance(out, (list, tuple)):       # unbind, split: each result wrapped, so later calls are seen too
            return type(out)(LeanTensor(o) if isinstance(o, torch.Tensor) else o for o in out)
        return LeanTensor(out) if isinstance(out, torch.Tensor) else out


class BertLayer(torch.nn.Module):
    """A BERT-style encoder layer written out (linear, softmax, layer_norm, gelu): PyTorch's fused fast path for
    nn.TransformerEncoderLayer would hide these ops in one native kernel."""

    def __init__(self, d: int = 256, heads: int = 4, ff: int = 1024):
        super().__init__()
        self.h = heads
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.ff1, self.ff2 = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = self.ln1(x + self.proj(y))
        return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))


def per_call(fn, n: int, reps: int = 5) -> float:
    """Seconds per call: the best of `reps` means over n calls. Starts after a 20 ms pause: the thread pool of
    whatever ran before (torch's libgomp after native calls, our libiomp5 after kernels) spins for a while after
    its last parallel region and, on a 2-core machine, slows the other side's first calls down (measured: a
    100 us 1x1 conv took 220-330 us right after native calls, ResNet's fc 89 us instead of 11)."""
    time.sleep(0.02)
    fn()
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def line(target: str, ok: bool, text: str) -> str:
    return f"[{'PASS' if ok else 'FAIL'}] {target}: {text}"


# ---------------------------------------------------------------------------------------------------------------

def hot_path(n: int) -> tuple:
    a, b = torch.randn(4), torch.randn(4)
    m1, m2 = torch.randn(2, 2), torch.randn(2, 2)
    cases = {"add": (torch.add, (a, b)), "mul": (torch.mul, (a, b)), "relu": (torch.relu, (a,)),
             "sum": (torch.sum, (a,)), "mm": (torch.mm, (m1, m2))}
    rows, ratios = [], []
    for name, (f, args) in cases.items():
        lean_args = [LeanTensor(x) for x in args]
        ours = tme.wrap(list(args))
        tme.reset_report()
        t_nat, t_lean, t_ours = interleaved([lambda: f(*args), lambda: f(*lean_args), lambda: f(*ours)], n, 5)
        assert tme.report().to_dict()["totals"]["mlir_calls"] > 0, f"{name} did not run through MLIR"
        ratios.append(t_ours / t_lean)
        rows.append((f"{name} 4 elems", t_nat * 1e6, t_lean * 1e6, t_ours * 1e6, t_ours / t_lean))
    worst = max(ratios)
    return rows, line("1 hot path", worst <= 1.5, f"cache hit / lean interceptor, worst {worst:.2f}x "
                      f"(target <= 1.5x), geomean {geomean(ratios):.2f}x")


class _Record(TorchDispatchMode):
    """Records each distinct call a native forward makes (key -> (func, args, kwargs))."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        p = spec.plan(func)
        if p.native_reason is None and p.functional is func:
            try:
                key, _ = spec.flatten(str(func), args, kwargs)
                self.calls.setdefault(key, (func, args, kwargs))
            except Exception:
                pass
        return out


def kernels(model, x, n: int) -> tuple:
    rec = _Record()
    with torch.no_grad(), rec:
        model(x)
    rows, ratios, conv_worst = [], [], 0.0
    for key, (func, args, kwargs) in rec.calls.items():
        try:
            kernel = compiler.cache().lookup(key)
        except Exception:
            kernel = None
        if kernel is None:
            continue
        _, tensors = spec.flatten(str(func), args, kwargs)
        ins = kernel.prepare(tensors)          # what dispatch passes: contiguous, or a transposed input's base
        t_nat = per_call(lambda: func(*args, **kwargs), n, reps=3)
        t_k = per_call(lambda: kernel(ins), n, reps=3)
        r = t_k / t_nat
        ratios.append(r)
        if "convolution" in str(func):
            conv_worst = max(conv_worst, r)
        shapes = ",".join("x".join(map(str, t.shape)) for t in tensors)
        rows.append((f"{str(func).replace('aten.', '')} {shapes}"[:60], t_nat * 1e6, t_k * 1e6, r))
    g = geomean(ratios)
    return rows, line("2 kernels", g <= 1.2 and conv_worst <= 2,
                      f"ResNet18 distinct calls ({len(ratios)}): geomean MLIR/native {g:.2f}x (target <= 1.2x), "
                      f"worst conv {conv_worst:.2f}x (target <= 2x)")


def interleaved(fns, n: int, reps: int) -> list:
    """Seconds per call of each fn: the best of `reps` rounds, each round timing every fn (n calls, after
    per_call's pause) in turn, so that a slow spell of the machine (this VM's timings drift by 20% or more over
    seconds, native's as well as ours) falls on both sides instead of on whichever was measured in it. Only for
    calls of a millisecond or more, or tiny single-threaded ones: right after a pause, small threaded kernels run
    several times slower for a few milliseconds (a 9 us batch norm took 60-70 us), so ResNet's kernel table keeps
    per_call's consecutive rounds."""
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], per_call(fn, n, reps=1))
    return best


def lean_wrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module with its parameters and buffers as LeanTensor: the model run through the cheapest interceptor."""
    for name, p in list(module.named_parameters(recurse=False)):
        setattr(module, name, torch.nn.Parameter(LeanTensor(p.data), requires_grad=False))
    for name, b in list(module.named_buffers(recurse=False)):
        setattr(module, name, LeanTensor(b))
    for child in module.children():
        lean_wrap(child)
    return module


def whole_model(name: str, make, x, n: int, target: float) -> tuple:
    torch.manual_seed(0)
    native = make().eval()
    model = copy.deepcopy(native)
    lean = lean_wrap(copy.deepcopy(native))
    with torch.no_grad():
        want = native(x)
        tme.wrap(model)
        xw = tme.wrap(x)
        tme.reset_report()
        t0 = time.perf_counter()
        got = tme.unwrap(model(xw))
        first = time.perf_counter() - t0
        xl = LeanTensor(x)
        t_nat, t_lean, t_ours = interleaved([lambda: native(x), lambda: lean(xl), lambda: model(xw)], n, reps=5)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    share = tme.report().to_dict()["totals"]["mlir_share"]
    r = t_ours / t_nat
    return model, xw, first, (name, t_nat * 1e3, t_lean * 1e3, t_ours * 1e3, r, share), \
        line(f"4 whole model, {name}", r <= target,
             f"warm forward {t_ours * 1e3:.1f} ms vs native {t_nat * 1e3:.1f} ms = {r:.2f}x (target <= {target}x); "
             f"{100 * share:.1f}% of calls through MLIR")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--mem-iters", type=int, default=100, help="warm ResNet18 forwards for the memory check "
                    "(the issue's figure is 1000)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    # Compile cost is measured compiling: kernels kept on disk by earlier runs would be loads
    # (benchmarks/persistent_cache.py measures those).
    with tme.config.override(disk_cache=False):
        return _main(a)


def _main(a) -> int:
    n = 200 if a.quick else 2000
    import torchvision

    summary = []
    t_start = time.perf_counter()
    from torch_mlir_eager import host
    print(f"threads: torch {torch.get_num_threads()} of {os.cpu_count()} cores; torch {torch.__version__}; "
          f"vector registers: {'AVX-512' if host.avx512() else 'AVX2 or narrower'} (register tiles follow them)")

    rows, s = hot_path(n)
    print("\n1. hot path (us per call)\n" + f"{'call':<16}{'native':>10}{'lean':>10}{'mlir':>10}{'mlir/lean':>11}")
    for r in rows:
        print(f"{r[0]:<16}{r[1]:>10.2f}{r[2]:>10.2f}{r[3]:>10.2f}{r[4]:>10.2f}x")
    summary.append(s)

    x = torch.randn(1, 3, 224, 224)
    resnet, xw, first, wrow, wline = whole_model("ResNet18 b1 224", torchvision.models.resnet18, x,
                                                 2 if a.quick else 5, 1.25)
    compiles = list(compiler.compile_seconds)
    tme.unwrap(resnet)                       # record the native forward's calls with plain parameters
    krows, kline = kernels(resnet, x, 3 if a.quick else 10)
    print("\n2. ResNet18 kernels (us per call)\n" + f"{'call':<60}{'native':>10}{'mlir':>10}{'ratio':>8}")
    for r in krows:
        print(f"{r[0]:<60}{r[1]:>10.1f}{r[2]:>10.1f}{r[3]:>7.2f}x")
    summary.append(kline)
    kt = compiler.kernel_threads()
    summary.append(line("3 threads", kt == torch.get_num_threads(),
                        f"scheduled MLIR kernels (conv, matmul, elementwise loops of >= 32K elements) use {kt} "
                        f"OpenMP thread(s), torch {torch.get_num_threads()}; reductions and small loops run on one"))

    bert = BertLayer
    tme.wrap(resnet)
    _, _, _, brow, bline = whole_model("BERT-like layer 1x128x256", bert, torch.randn(1, 128, 256),
                                       3 if a.quick else 10, 1.5)
    # The same layer at BERT-base's width (d 768, 12 heads, ff 3072): the kernels' share of the time, where the small
    # layer's is mostly the per-call cost of any interceptor (its lean/nat column). Reported beside the target line.
    _, _, _, base_row, _ = whole_model("BERT-base-sized 1x128x768", lambda: bert(768, 12, 3072),
                                       torch.randn(1, 128, 768), 2 if a.quick else 5, 1.5)
    bline += (f"; the lean interceptor alone takes {brow[2] / brow[1]:.2f}x; at BERT-base width (1x128x768) ours "
              f"takes {base_row[4]:.2f}x")
    # (lean: the model run through the cheapest possible interceptor, which no __torch_dispatch__ path can undercut)
    print("\n4. whole model (ms per forward)\n" + f"{'model':<28}{'native':>10}{'lean':>10}{'mlir':>10}{'ratio':>8}"
          f"{'lean/nat':>10}{'mlir %':>8}")
    for r in (wrow, brow, base_row):
        print(f"{r[0]:<28}{r[1]:>10.2f}{r[2]:>10.2f}{r[3]:>10.2f}{r[4]:>7.2f}x{r[2] / r[1]:>9.2f}x{100 * r[5]:>7.1f}%")
    summary += [wline, bline]

    med = statistics.median(compiles) if compiles else float("nan")
    summary.append(line("5 compile", med <= 0.150 and first <= 8,
                        f"median compile per new call {med * 1e3:.0f} ms over {len(compiles)} (target <= 150 ms); "
                        f"first ResNet18 forward {first:.2f} s incl. worker start-up (target <= 8 s)"))

    with torch.no_grad():
        for _ in range(10):
            resnet(xw)
        before = rss_mb()
        for _ in range(a.mem_iters):
            resnet(xw)
        after = rss_mb()
    info = tme.cache_info()
    summary.append(line("6 memory", after - before < 50 and info["kernels"] <= info["kernel_maxsize"],
                        f"RSS {before:.0f} -> {after:.0f} MB over {a.mem_iters} warm ResNet18 forwards after 10 "
                        f"(+{after - before:.1f} MB, target < 50); kernel cache {info['kernels']} / "
                        f"{info['kernel_maxsize']}"))
    print(f"\nbench took {time.perf_counter() - t_start:.0f} s\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
