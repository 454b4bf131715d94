"""Issue 6, memory: N distinct shapes (default 10,000) through one op with a kernel cache of 256 entries (disk cache
off); prints RSS, the kernel libraries still mapped and the cache's counters along the way. Evicted kernels must
be freed (their libraries unmapped), so RSS stays bounded; hits, misses and evictions must be exact."""
import argparse
import os
import sys
import time

os.environ.setdefault("TORCH_MLIR_EAGER_CACHE_SIZE", "256")
os.environ["TORCH_MLIR_EAGER_DISK_CACHE"] = "0"

import torch  # noqa: E402

import torch_mlir_eager as tme  # noqa: E402
from torch_mlir_eager import compiler  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mapped_kernels() -> int:
    with open("/proc/self/maps") as f:
        return len({line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                    for line in f if "tme-kernel-" in line})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=10_000)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    first = None
    ok = True
    for i in range(a.shapes):
        x = torch.randn(i + 1)
        with tme.enable():
            got = torch.neg(x)
        if not torch.equal(got, -x):
            print(f"shape {i + 1}: result differs from native")
            ok = False
        if (i + 1) % max(1, a.shapes // 10) == 0:
            info = compiler.cache().info()
            rss = rss_mb()
            first = first if first is not None else rss
            print(f"{i + 1:>6} shapes  RSS {rss:7.1f} MB  kernel libraries mapped {mapped_kernels():>4}  cache "
                  f"{info['kernels']} / {info['kernel_maxsize']}  misses {info['misses']}  evictions "
                  f"{info['evictions']}  {time.perf_counter() - t0:.0f} s", flush=True)
    info = compiler.cache().info()
    rep = tme.report().to_dict()["totals"]
    exact = (info["misses"] == a.shapes and info["hits"] == 0 and info["kernels"] == min(a.shapes, 256)
             and info["evictions"] == max(0, a.shapes - 256) and rep["mlir_calls"] == a.shapes)
    grow = rss_mb() - first
    ok = ok and exact and grow < 50 and mapped_kernels() <= 256 + 2
    print(f"{'PASS' if ok else 'FAIL'} memory: {a.shapes} distinct shapes, cache of 256: RSS +{grow:.1f} MB after "
          f"the first tenth (target < 50), {mapped_kernels()} kernel libraries mapped, counts "
          f"{'exact' if exact else 'WRONG'} (misses {info['misses']}, evictions {info['evictions']}, "
          f"MLIR calls {rep['mlir_calls']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
