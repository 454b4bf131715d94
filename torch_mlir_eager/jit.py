"""JIT-compile a kernel's LLVM-dialect text in this process: the host's one use of torch_mlir, only where no shared
library of it loads (no linker on the machine, or an unresolved symbol)."""
from __future__ import annotations

import os
import threading

from torch_mlir import ir
from torch_mlir.execution_engine import ExecutionEngine

from .errors import CompileFailure
from .host import avx512, openmp_runtime


_jit_lock = threading.Lock()


def _shared_libs(llvm_ir: str) -> list:
    # OpenMP-dialect ops become __kmpc_* calls only when the module is translated to LLVM IR.
    if "omp.parallel" in llvm_ir or "__kmpc_" in llvm_ir:
        lib = openmp_runtime()
        if lib is None:
            raise CompileFailure("jit", "kernel needs an OpenMP runtime (pip install intel-openmp)")
        # Idle OpenMP workers spin 1 ms before sleeping (default 200 ms): long enough that back-to-back kernels of a
        # forward find them awake (waking sleeping workers per parallel region cost 64x576x3136 mm 950 us instead of
        # 800), short enough not to compete with torch's own thread pool for long.
        os.environ.setdefault("KMP_BLOCKTIME", "1")
        return [lib]
    return []


def engine(llvm_ir: str):
    """(context, module, ExecutionEngine, address of the packed entry point) for a kernel's LLVM-dialect text."""
    with _jit_lock:
        ctx = ir.Context()
        with ctx:
            try:
                module = ir.Module.parse(llvm_ir)
            except Exception as e:
                raise CompileFailure("jit", f"parse: {e}") from None
            _function_attrs(module)
            try:
                ee = ExecutionEngine(module, opt_level=3, shared_libs=_shared_libs(llvm_ir))
                addr = ee.raw_lookup("_mlir_ciface_main")
            except Exception as e:
                raise CompileFailure("jit", str(e)) from None
            if not addr:    # a symbol the kernel calls did not resolve (the JIT says which on stderr): calling 0 dies
                raise CompileFailure("jit", "the kernel's entry point did not link (an unresolved symbol)")
    return ctx, module, ee, addr


def _function_attrs(module) -> None:
    """LLVM attributes on each function. On AVX-512 hosts, 512-bit vectors in the loops LLVM vectorizes itself
    (elementwise ops, the exp and erf expansions, reductions): its default for these CPUs is 256 bits; explicit
    vector code (the GEMM tiles) is 512-bit either way. TORCH_MLIR_EAGER_TARGET_FEATURES, a test hook, compiles
    kernels as for another CPU ("-avx512bf16" as for one without AVX-512 BF16)."""
    attrs = (['["prefer-vector-width", "512"]'] if avx512() else []) + \
        [f'["target-features", "{f}"]' for f in [os.environ.get("TORCH_MLIR_EAGER_TARGET_FEATURES", "")] if f]
    if not attrs:
        return
    attr = ir.Attribute.parse("[" + ", ".join(attrs) + "]")
    for op in module.body.operations:
        if op.operation.name == "llvm.func" and len(op.regions[0].blocks) and "passthrough" not in op.attributes:
            op.attributes["passthrough"] = attr
