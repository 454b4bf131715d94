"""A JIT-compiled kernel: LLVM-dialect text -> ExecutionEngine; torch tensors passed as memref descriptors, in place."""
from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import threading
from typing import List, Optional, Sequence

import torch

from .errors import CompileFailure

# torch dtype -> MLIR element type as torch-mlir emits it at the Linalg level (signless integers).
MLIR_ELEMENT = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
                torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.bool: "i1"}


@functools.lru_cache(maxsize=None)
def memref_struct(rank: int) -> type:
    """The ctypes layout of a ranked memref descriptor: ptr, ptr, offset, sizes[rank], strides[rank]."""
    fields = [("allocated", ctypes.c_void_p), ("aligned", ctypes.c_void_p), ("offset", ctypes.c_int64)]
    if rank:
        fields += [("sizes", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
    return type(f"MemRef{rank}D", (ctypes.Structure,), {"_fields_": fields})


def _contiguous_strides(shape: Sequence[int]) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


class TensorMeta:
    __slots__ = ("shape", "dtype", "strides", "contiguous", "empty")

    def __init__(self, shape, dtype, strides=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.strides = tuple(strides) if strides is not None else _contiguous_strides(self.shape)
        self.contiguous = self.strides == _contiguous_strides(self.shape) or len(self.shape) == 0
        self.empty = 0 in self.shape      # no data: allocated by the caller, not passed to the kernel

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorMeta":
        return cls(t.shape, t.dtype, t.stride())

    def __reduce__(self):
        return (TensorMeta, (self.shape, self.dtype, self.strides))

    def __repr__(self):
        return f"tensor[{'x'.join(map(str, self.shape))}:{MLIR_ELEMENT.get(self.dtype, self.dtype)}]"


def base_permutation(t: torch.Tensor):
    """For a non-contiguous tensor that is a permutation of a contiguous one (t(), transpose, permute), the dims
    order `p` with t.permute(p) contiguous (a view, no copy); else None."""
    if t.dim() < 2 or t.is_contiguous():
        return None
    p = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    return tuple(p) if t.permute(p).is_contiguous() else None


_jit_lock = threading.Lock()


def openmp_runtime():
    """The LLVM-ABI OpenMP runtime (`__kmpc_*`) that threaded kernels call: PyPI's intel-openmp puts it in the
    environment's lib/. None when absent (threaded schedules are then not used)."""
    for base in (sys.prefix, sys.base_prefix):
        path = os.path.join(base, "lib", "libiomp5.so")
        if os.path.exists(path):
            return path
    return None


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


def _engine(llvm_ir: str):
    from torch_mlir import ir
    from torch_mlir.execution_engine import ExecutionEngine
    with _jit_lock:
        ctx = ir.Context()
        with ctx:
            try:
                module = ir.Module.parse(llvm_ir)
            except Exception as e:
                raise CompileFailure("jit", f"parse: {e}") from None
            try:
                ee = ExecutionEngine(module, opt_level=3, shared_libs=_shared_libs(llvm_ir))
                addr = ee.raw_lookup("_mlir_ciface_main")
            except Exception as e:
                raise CompileFailure("jit", str(e)) from None
    return ctx, module, ee, addr


class Kernel:
    """Calls `main(inputs..., outputs...)` with descriptors built once; a call only patches data pointers."""

    def __init__(self, llvm_ir: str, inputs: List[TensorMeta], outputs: List[TensorMeta]):
        self.llvm_ir = llvm_ir
        self.inputs, self.outputs = list(inputs), list(outputs)
        self._ctx, self._module, self._ee, addr = _engine(llvm_ir)   # keep the engine (and its code) alive
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr)
        metas = self.inputs + [m for m in self.outputs if not m.empty]
        self._descs = []
        for m in metas:
            d = memref_struct(len(m.shape))()
            if m.shape:
                d.sizes[:] = list(m.shape)
                d.strides[:] = list(_contiguous_strides(m.shape))
            self._descs.append(d)
        self._cells = [ctypes.pointer(d) for d in self._descs]           # desc*; the packed args point at these
        self._packed = (ctypes.c_void_p * len(metas))(
            *[ctypes.cast(ctypes.pointer(c), ctypes.c_void_p) for c in self._cells])
        self._lock = threading.Lock()
        self._packed_addr = ctypes.addressof(self._packed)
        self._in_descs = self._descs[:len(self.inputs)]
        self._out_descs = self._descs[len(self.inputs):]
        self._no_empty = not any(m.empty for m in self.outputs)
        # torch.empty_like of a one-element tensor expanded to the shape: ~0.6 us per output instead of ~1.1 us for
        # torch.empty(shape, dtype=...) (keyword parsing), and it holds no memory of the output's size. An expanded
        # template is not dense, so empty_like gives contiguous strides; one of <= 1 element would keep its zero
        # strides, so those templates are real (tiny) tensors.
        self._templates = [torch.empty(m.shape, dtype=m.dtype) if math.prod(m.shape) <= 1 else
                           torch.empty((), dtype=m.dtype).expand(m.shape) for m in self.outputs]
        self.inplace_safe = False      # set by the compiler when the worker proved it (worker._single_pointwise)
        self.input_perms = None        # per input, None or the permutation that gives the contiguous base it takes
        self._all_contiguous = all(m.contiguous for m in self.outputs)

    def prepare(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The kernel's inputs for a call's tensors: contiguous, or (input_perms) the contiguous base of a
        transposed view, which the kernel permutes itself (no transposed copy of a weight per call)."""
        if self.input_perms is None:
            return [t.contiguous() for t in tensors]       # contiguous() returns the tensor itself when it is
        return [t.contiguous() if p is None else t.permute(p) for t, p in zip(tensors, self.input_perms)]

    def __call__(self, tensors: Sequence[torch.Tensor], outs: Optional[List[torch.Tensor]] = None
                 ) -> List[torch.Tensor]:
        """Run on contiguous inputs of the compiled shapes; returns outputs with the native strides.
        `outs`: contiguous destinations of the output shapes and dtypes to write into instead of new tensors."""
        if outs is None:
            outs = [torch.empty_like(t) for t in self._templates]
        with self._lock:
            for d, t in zip(self._in_descs, tensors):
                d.allocated = d.aligned = t.data_ptr()
            for d, o in zip(self._out_descs, outs if self._no_empty else [o for o in outs if o.numel()]):
                d.allocated = d.aligned = o.data_ptr()
            self._fn(self._packed_addr)
        if self._all_contiguous:
            return outs
        return [o if m.contiguous else torch.empty_strided(m.shape, m.strides, dtype=m.dtype).copy_(o)
                for o, m in zip(outs, self.outputs)]
