"""The contract between the host and a compile worker: typed messages, and their framing on a pipe (both sides).

A message is a length-prefixed pickle. The worker sends `Ready` once, then answers each `Request` with a
`Compiled` or a `Failed`. Both processes run this same module, so the classes unpickle as themselves.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import struct
from typing import Callable, List, Optional, Union

import torch

HEADER = struct.Struct("<Q")      # the body's length in bytes


@dataclasses.dataclass
class Request:
    """Compile one call: the op's name and the call's own arguments (tensors included: the kernel is qualified on
    them)."""
    op: str                         # "aten.add.Tensor"
    args: tuple
    kwargs: dict
    schedules: bool = True          # try a kernel schedule before the plain loops
    threads: int = 1                # threads a scheduled kernel may use
    dump: str = ""                  # a repro directory to write each stage's input into (repro.py), or ""
    link: bool = True               # link the qualified object code into a shared library
    inject: str = ""                # tests' fault injection: "abort", "hang", "wrong" or "remainder"
    # Per tensor argument, the dims the kernel must take at any size (`?` in its types); () = a static kernel
    dynamic: tuple = ()


@dataclasses.dataclass
class Compiled:
    """A kernel that compiled, ran on the call's inputs and matched native PyTorch."""
    llvm_ir: str
    inputs: list                    # kernel.TensorMeta per input, as the kernel takes it
    outputs: list                   # kernel.TensorMeta per result (None: a result not computed)
    so: Optional[bytes]             # the qualified object code as a shared library (None: no linker)
    schedule: str                   # "plain", or the schedule family used
    decomposed: bool                # compiled through a decomposition
    inplace_safe: bool              # the kernel may write into input 0's memory
    upcast: bool = False            # float16/bfloat16 computed in float32
    input_perms: Optional[list] = None   # per input, None or the permutation the kernel undoes itself
    schedule_failed: str = ""       # why the schedule tried first was dropped
    dynamic: bool = False           # some dims are `?`: qualified at the call's sizes and at qualify.PROBES
    result_sizes: Optional[list] = None     # dynamic: per computed result, int sizes or expressions' text ...
    size_symbols: Optional[dict] = None     # ... of these symbols: name -> (tensor argument, dim)
    times: dict = dataclasses.field(default_factory=dict)   # stage -> seconds

    def summary(self) -> str:
        """One log line's worth: stage times, then what was decided."""
        parts = [f"{k} {1e3 * v:.1f} ms" for k, v in self.times.items()]
        parts.append(f"schedule {self.schedule}")
        parts += [f"{f} {getattr(self, f)}" for f in ("dynamic", "decomposed", "inplace_safe", "upcast", "input_perms",
                                                      "schedule_failed") if getattr(self, f)]
        return ", ".join(parts)


@dataclasses.dataclass
class Failed:
    category: str                   # one of errors.CATEGORIES
    reason: str


@dataclasses.dataclass
class Ready:
    pid: int


Reply = Union[Compiled, Failed]


def resolve(name: str) -> torch._ops.OpOverload:
    """'aten.add.Tensor' -> torch.ops.aten.add.Tensor."""
    ns, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, ns), op), overload)


def send(fd: int, msg) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def receive(read: Callable[[int], Optional[bytes]]):
    """The next message, reading through `read(n)` (exactly n bytes, or None at end of file); None at EOF."""
    head = read(HEADER.size)
    if head is None:
        return None
    body = read(HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def read_exact(fd: int) -> Callable[[int], Optional[bytes]]:
    """A blocking `read` for `receive` on fd."""
    def read(n: int) -> Optional[bytes]:
        chunks: List[bytes] = []
        got = 0
        while got < n:
            b = os.read(fd, min(n - got, 1 << 20))
            if not b:
                return None
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)
    return read
