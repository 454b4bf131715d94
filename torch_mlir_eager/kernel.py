"""A JIT-compiled kernel: LLVM-dialect text -> ExecutionEngine; torch tensors passed as memref descriptors, in place."""
from __future__ import annotations

import _ctypes
import ctypes
import functools
import math
import operator
import os
import struct
import subprocess
import tempfile
import threading
import weakref
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .errors import CompileFailure
from .host import linker, openmp_runtime

# The name of a kernel's static scratch buffers (build.rewrites.static_scratch): a kernel whose code has one is not
# re-entrant, so it runs under a lock.
SCRATCH_SYMBOL = "tme_scratch"

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

    def __init__(self, shape, dtype, strides=None, empty=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.strides = tuple(strides) if strides is not None else _contiguous_strides(self.shape)
        self.contiguous = self.strides == _contiguous_strides(self.shape) or len(self.shape) == 0
        # An output with no data, allocated by the caller and not passed to the kernel (importer.computed): a
        # zero-size one beside results with data.
        self.empty = 0 in self.shape if empty is None else empty

    @classmethod
    def of(cls, t: torch.Tensor, empty=None) -> "TensorMeta":
        return cls(t.shape, t.dtype, t.stride(), empty)

    def __reduce__(self):
        return (TensorMeta, (self.shape, self.dtype, self.strides, self.empty))

    def __repr__(self):
        return f"tensor[{'x'.join(map(str, self.shape))}:{MLIR_ELEMENT.get(self.dtype, self.dtype)}]"


def kernel_inputs(tensors, perms) -> list:
    """TensorMeta of each input as a kernel takes it (the base t.permute(p) where the kernel undoes a transpose)."""
    return [TensorMeta(t.shape if p is None else t.permute(p).shape, t.dtype)
            for t, p in zip(tensors, perms or [None] * len(tensors))]


def output_metas(natives, compiled) -> list:
    """TensorMeta of native's results for a call of a dynamic kernel compiled with results `compiled` (which says
    which are computed)."""
    if len(natives) != len(compiled):
        raise CompileFailure("meta", f"{len(natives)} results, the kernel has {len(compiled)}")
    out = []
    for n, m in zip(natives, compiled):
        if (n is None) != (m is None) or n is not None and n.dtype != m.dtype:
            raise CompileFailure("meta", "results differ from the dynamic kernel's")
        out.append(None if n is None else TensorMeta.of(n, empty=m.empty))
    return out


_SIZE_FUNCTIONS = {"__builtins__": {}, "Max": max, "Min": min, "FloorDiv": operator.floordiv, "Mod": operator.mod,
                   "PythonMod": operator.mod, "CeilDiv": lambda a, b: -(-a // b)}


def result_sizes(kernel: "Kernel", tensors) -> Optional[list]:
    """A dynamic kernel's computed results' sizes for a call's tensors, from the symbolic sizes its compile gave
    (None when there are none, or one cannot be evaluated)."""
    if kernel.result_sizes is None or kernel.size_symbols is None:
        return None
    env = {name: tensors[i].shape[d] for name, (i, d) in kernel.size_symbols.items()}
    try:
        return [tuple(s if isinstance(s, int) else int(eval(s, _SIZE_FUNCTIONS, env)) for s in shape)
                for shape in kernel.result_sizes]
    except Exception:
        return None


def _jit(llvm_ir: str) -> tuple:
    from . import jit           # torch_mlir, on the host only for a kernel no shared library of loads
    return jit.engine(llvm_ir)


def _call_source(n_in: int, perms: Optional[list], outputs: List[TensorMeta], serial: bool, consts: list) -> str:
    """Python source of a kernel's two entry points, unrolled for its arity: `run(tensors, outs=None)` takes the
    call's tensors (made contiguous, or permuted to the base the kernel takes, here), `call(ins, outs=None)` takes
    inputs already prepared. Unrolled code with every constant bound as a global costs ~1.2 us a call where loops
    and attribute lookups cost ~2.1 us: the cache-hit path of a 4-element op is ~9 us in all.

    Each thread has its own descriptor block (`tls`), so calls of one kernel from several threads run at the same
    time (the ctypes call releases the GIL), except for a `serial` kernel: one with static scratch buffers
    (lowering.static_scratch) runs under its lock, one call at a time."""
    ts = [f"t{i}" for i in range(n_in)]
    os_ = [f"o{i}" for i in range(len(outputs))]
    prep = [line for i in range(n_in) for line in (
        [] if perms is None or perms[i] is None else [f"    t{i} = t{i}.permute(P{i})"]) + [
        f"    if not t{i}.is_contiguous():", f"        t{i} = _dense(t{i})"]]
    passed = ts + [o for o, m in zip(os_, outputs) if m is not None and not m.empty]
    result = ", ".join(o if m is None or m.contiguous else f"_restride({o}, M{i})"
                       for i, (o, m) in enumerate(zip(os_, outputs)))
    body = [f"    {', '.join(ts)}, = tensors" if ts else "    pass",
            "    if outs is None:",
            *[f"        {o} = _empty_like(T{i})" if m is not None else f"        {o} = None"
              for i, (o, m) in enumerate(zip(os_, outputs))],
            "    else:",
            f"        {', '.join(os_)}, = outs",
            *[f"    p{v} = {v}.data_ptr()" for v in passed],
            "    try:",
            "        buf, packed = tls.block",
            "    except AttributeError:",
            "        buf, packed = tls.block = new_block()",
            f"    patch(buf, 0, {''.join(f'p{v}, p{v}, ' + ''.join(f'{c}, ' for c in k) for v, k in zip(passed, consts))})",
            *(["    with lock:", "        fn(packed)"] if serial else ["    fn(packed)"]),
            f"    return [{result}]"]
    return "\n".join(["def run(tensors, outs=None):", *body[:1], *prep, *body[1:],
                      "def call(tensors, outs=None):", *body])


def link_library(kernel: "Kernel") -> Optional[bytes]:
    """The kernel's JIT object code linked into a shared library (its bytes), or None (no linker, or it failed).
    Loading that library (`load_library`, ~0.3 ms) replaces a second JIT compile (a ResNet conv: ~70 ms) in the
    parent process and in later processes (disk_cache)."""
    ld, ee = linker(), kernel.engine
    if ld is None or ee is None or not hasattr(ee, "dump_to_object_file"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        obj, so = os.path.join(tmp, "k.o"), os.path.join(tmp, "k.so")
        try:
            ee.dump_to_object_file(obj)
            cmd = [ld, "-shared", "-o", so, obj]
            omp = openmp_runtime()
            if omp is not None and ("omp.parallel" in kernel.llvm_ir or "__kmpc_" in kernel.llvm_ir):
                cmd += [omp, "-rpath", os.path.dirname(omp)]
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode != 0:
                return None
            with open(so, "rb") as f:
                return f.read()
        except (OSError, subprocess.SubprocessError, RuntimeError):
            return None


def load_library(data: bytes) -> Optional[tuple]:
    """(None, None, library, address of the packed entry point) for Kernel(engine=...), from a library's bytes;
    None when it does not load here (a symbol the loader cannot resolve: the IR is then JIT-compiled). Each load
    is a private copy: two kernels must not share a library's static scratch buffers."""
    fd, tmp = tempfile.mkstemp(prefix="tme-kernel-", suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        lib = ctypes.CDLL(tmp)
        # ExecutionEngine's lookup of "_mlir_ciface_main" finds this packed wrapper (one void** argument).
        return None, None, lib, ctypes.cast(lib._mlir__mlir_ciface_main, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    finally:
        os.unlink(tmp)


def _dlclose(handle: int) -> None:
    try:
        _ctypes.dlclose(handle)
    except OSError:
        pass


# Copies around a kernel are numpy's, on the calling thread: torch's own copy is parallel above 32K elements, and
# its thread pool then spins beside the kernels' OpenMP workers on the same cores, each side slowing the other
# down (a BERT-base layer: 22 ms a forward with torch's copies of q, k and v, 11.5 without).
_NUMPY_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16,
                           torch.int8, torch.uint8, torch.bool})


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t."""
    if t.dtype in _NUMPY_DTYPES and not t.is_conj() and not t.is_neg():
        return torch.from_numpy(np.ascontiguousarray(t.detach().numpy()))
    return t.contiguous()


def _restride(out: torch.Tensor, m: TensorMeta) -> torch.Tensor:
    """A contiguous kernel output copied into the native result's strides."""
    r = torch.empty_strided(m.shape, m.strides, dtype=m.dtype)
    if m.dtype in _NUMPY_DTYPES:
        np.copyto(r.numpy(), out.numpy())
        return r
    return r.copy_(out)


def _break_remainder(run: Callable, dynamic: list) -> Callable:
    """Test hook (inject "remainder"): the kernel's first result made wrong in its last element whenever a dynamic
    dim's size is not a multiple of 8, as a bug in a partial tile or a remainder loop would: right at the sizes a
    first compile sees (multiples of 8), wrong at the others."""
    def broken(tensors, outs=None):
        res = run(tensors, outs)
        if any(t.shape[d] % 8 for t, ds in zip(tensors, dynamic) for d in ds) and res and res[0] is not None \
                and res[0].numel():
            flat = res[0].view(-1)
            flat[-1] = ~flat[-1] if flat.dtype == torch.bool else flat[-1] + 1
        return res
    return broken


class _Descriptors:
    """The memref descriptors `main` takes, laid out in one buffer: the descriptors, then one desc* cell per
    argument, then the packed argument array (pointers to the cells) whose address the packed entry point takes.
    `patch(buf, 0, allocated0, aligned0, *consts[0], allocated1, ...)` writes every descriptor whole in one C call
    (offset, sizes and strides are the constants `consts`: a struct format's pad bytes would write zeros over the
    sizes that a kernel with dynamic dims reads)."""

    def __init__(self, metas: List[TensorMeta]):
        types = [memref_struct(len(m.shape)) for m in metas]
        self.offsets = [sum(ctypes.sizeof(t) for t in types[:i]) for i in range(len(types))]
        size = sum(ctypes.sizeof(t) for t in types)
        n = len(metas)
        proto = ctypes.create_string_buffer(size + 16 * n + 8)
        self.consts = [(0, *m.shape, *_contiguous_strides(m.shape)) for m in metas]
        self.proto, self.size, self.n = proto.raw, size, n
        self.patch = struct.Struct("=" + "".join("qqq" + "qq" * len(m.shape) for m in metas)).pack_into

    def new_block(self) -> tuple:
        """(buffer, address of its packed argument array): one per thread."""
        buf = ctypes.create_string_buffer(self.proto, len(self.proto))
        base = ctypes.addressof(buf)
        cells = (ctypes.c_void_p * self.n).from_buffer(buf, self.size)
        packed = (ctypes.c_void_p * self.n).from_buffer(buf, self.size + 8 * self.n)
        cells[:] = [base + o for o in self.offsets]
        packed[:] = [base + self.size + 8 * i for i in range(self.n)]
        return buf, base + self.size + 8 * self.n


class Kernel:
    """Calls `main(inputs..., outputs...)` with descriptors built once; a call only patches data pointers.

    `input_perms`: per input, None or the permutation that turns the call's tensor (a transposed view) into the
    layout the kernel takes (contiguous: a weight's t() is then not copied per call; else copied, by `_dense`)."""

    def __init__(self, llvm_ir: str, inputs: List[TensorMeta], outputs: List[TensorMeta],
                 input_perms: Optional[list] = None, inplace_safe: bool = False, engine: Optional[tuple] = None,
                 dynamic: Optional[list] = None, parent: Optional["Kernel"] = None, broken_remainder: bool = False,
                 result_sizes: Optional[list] = None, size_symbols: Optional[dict] = None):
        self.llvm_ir = llvm_ir
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.input_perms = [tuple(p) if p is not None else None for p in input_perms] if input_perms else None
        self.inplace_safe = inplace_safe   # the kernel may write into input 0's memory (worker._single_pointwise)
        # `dynamic`: per input of the call, the dims whose size the code reads from its descriptor (None: a static
        # kernel). `inputs` and `outputs` are then one concrete call's; `bind` gives the same code for another.
        self.dynamic = [tuple(d) for d in dynamic] if dynamic else None
        self.result_sizes, self.size_symbols = result_sizes, size_symbols     # see `result_sizes`
        self._broken_remainder = broken_remainder
        if parent is not None:                   # a binding shares its parent's code, kept alive through it
            self._parent, self._lock = parent, parent._lock        # and its scratch buffers: one lock
            self._ctx, self._module, self._ee, self._addr = parent._ctx, parent._module, parent._ee, parent._addr
        else:
            self._lock = threading.Lock()
            # `engine`: (ctx, module, code, address of the packed entry point) already loaded (disk_cache: a
            # shared library of the JIT's object code); else the IR is JIT-compiled here.
            self._ctx, self._module, self._ee, self._addr = engine or _jit(llvm_ir)   # keep the code alive
            if engine is not None and hasattr(self._ee, "_handle"):
                weakref.finalize(self, _dlclose, self._ee._handle)     # an evicted kernel's library is unmapped
        addr = self._addr
        descs = _Descriptors(self.inputs + [m for m in self.outputs if m is not None and not m.empty])
        # torch.empty_like of a one-element tensor expanded to the shape: ~0.6 us per output instead of ~1.1 us for
        # torch.empty(shape, dtype=...) (keyword parsing), and it holds no memory of the output's size. An expanded
        # template is not dense, so empty_like gives contiguous strides; one of <= 1 element would keep its zero
        # strides, so those templates are real (tiny) tensors.
        templates = [None if m is None else torch.empty(m.shape, dtype=m.dtype) if math.prod(m.shape) <= 1 else
                     torch.empty((), dtype=m.dtype).expand(m.shape) for m in self.outputs]
        env = {"_empty_like": torch.empty_like, "_restride": _restride, "_dense": _dense, "tls": threading.local(),
               "lock": self._lock,
               "new_block": descs.new_block, "patch": descs.patch,
               "fn": ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr),
               **{f"T{i}": t for i, t in enumerate(templates)}, **{f"M{i}": m for i, m in enumerate(self.outputs)},
               **{f"P{i}": p for i, p in enumerate(self.input_perms or [])}}
        exec(_call_source(len(self.inputs), self.input_perms, self.outputs, SCRATCH_SYMBOL in llvm_ir, descs.consts), env)
        self.run: Callable = env.pop("run")      # popped: the functions' globals must not refer back to them
        self._call: Callable = env.pop("call")
        if broken_remainder and self.dynamic:
            self.run = _break_remainder(self.run, self.dynamic)

    def bind(self, inputs: List[TensorMeta], outputs: List[TensorMeta]) -> "Kernel":
        """This dynamic kernel's code for another concrete call: `inputs` (as the kernel takes them) and `outputs`
        (native's results' metadata) of that call. ~0.1 ms: descriptors and entry points, no compile."""
        return Kernel(self.llvm_ir, inputs, outputs, input_perms=self.input_perms, inplace_safe=self.inplace_safe,
                      dynamic=self.dynamic, parent=self, broken_remainder=self._broken_remainder,
                      result_sizes=self.result_sizes, size_symbols=self.size_symbols)

    @property
    def engine(self):
        """The ExecutionEngine (None for a kernel loaded from a library)."""
        return self._ee if self._module is not None else None

    def prepare(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The kernel's inputs for a call's tensors, as `run` makes them: contiguous, or a transposed view permuted
        back (and made contiguous), which the kernel permutes itself."""
        perms = self.input_perms or [None] * len(tensors)
        ts = [t if p is None else t.permute(p) for t, p in zip(tensors, perms)]
        return [t if t.is_contiguous() else _dense(t) for t in ts]

    def __call__(self, tensors: Sequence[torch.Tensor], outs: Optional[List[torch.Tensor]] = None
                 ) -> List[torch.Tensor]:
        """Run on prepared inputs of the compiled shapes; returns outputs with the native strides.
        `outs`: contiguous destinations of the output shapes and dtypes to write into instead of new tensors."""
        return self._call(tensors, outs)
