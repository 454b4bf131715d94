"""What this machine offers kernels: the CPU's vector width, an OpenMP runtime, a linker (read once, cached)."""
from __future__ import annotations

import functools
import os
import shutil
import sys
from typing import Optional


def avx512() -> bool:
    """Whether the JIT's host CPU has 512-bit vector registers (the JIT compiles for the host CPU)."""
    return " avx512f" in cpu_flags()


def openmp_runtime():
    """The LLVM-ABI OpenMP runtime (`__kmpc_*`) that threaded kernels call: PyPI's intel-openmp puts it in the
    environment's lib/. None when absent (threaded schedules are then not used)."""
    for base in (sys.prefix, sys.base_prefix):
        path = os.path.join(base, "lib", "libiomp5.so")
        if os.path.exists(path):
            return path
    return None


@functools.lru_cache(maxsize=1)
def linker() -> Optional[str]:
    """`ld`, which turns a kernel's JIT object code into a shared library (None: kernels are JIT-compiled)."""
    return shutil.which("ld")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> str:
    """The CPU's feature flags (/proc/cpuinfo): part of what decides a kernel's code."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((l for l in f if l.startswith("flags")), "")
    except OSError:
        return ""
