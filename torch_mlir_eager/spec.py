"""What a call is: how an op is treated (native by design, functional, in-place, out=) and its cache key."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import torch

from .errors import CompileFailure

aten = torch.ops.aten
_STRIDED = torch.strided
_Tensor = torch.Tensor

# dtypes the MLIR path takes. uint8 is left out: torch-mlir 20261001 treats it as signed in casts (wrong results);
# complex crashes LLVM. float16/bfloat16 are tried: the worker qualifies every kernel before it is used.
SUPPORTED_DTYPES = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16,
                              torch.int64, torch.int32, torch.int16, torch.int8, torch.bool})

# Ops whose schema says "new tensor" but which PyTorch implements as a view of their input.
_VIEW_LIKE = frozenset({"aten._unsafe_view.default"})

# Ops tagged dynamic_output_shape whose usual calls have a static result shape (integer-tensor indexing, one_hot
# with num_classes): compiled; a call whose shape is data-dependent fails in the worker and falls back.
_STATIC_MOSTLY = frozenset({"aten.index.Tensor", "aten.one_hot.default"})

# Allocations whose result is uninitialized memory: the input gives only shape and dtype; nothing to compute.
_ALLOCATIONS = frozenset({"aten.empty_like.default", "aten.new_empty.default", "aten.new_empty_strided.default"})


@dataclasses.dataclass(frozen=True)
class OpPlan:
    """How one OpOverload is treated, derived once from its schema and tags."""
    name: str                                  # "aten.add.Tensor"
    native_reason: Optional[str]               # set: runs natively by design (view, random, ...)
    functional: Optional[torch._ops.OpOverload] = None  # op compiled; differs from the call for in-place / out=
    inplace: bool = False                      # result is written into args[0]
    out_names: tuple = ()                      # result(s) written into these kwargs
    unsupported: Optional[str] = None          # mutating op we do not functionalize


def _returns_tensor(schema) -> bool:
    return any("Tensor" in str(r.type) for r in schema.returns)


def _writes(schema) -> list:
    return [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]


def _signature(args) -> list:
    return [(a.name, str(a.type)) for a in args]


def _functional_overload(func, packet_name: str, want_args) -> Optional[torch._ops.OpOverload]:
    packet = getattr(aten, packet_name, None)
    if packet is None:
        return None
    want = _signature(want_args)
    for ov in packet.overloads():
        cand = getattr(packet, ov)
        if cand is func or _writes(cand._schema):
            continue
        if _signature(cand._schema.arguments) == want:
            return cand
    return None


@functools.lru_cache(maxsize=None)
def plan(func: torch._ops.OpOverload) -> OpPlan:
    name = str(func)
    schema = func._schema
    tags = set(func.tags)
    if func.is_view or name in _VIEW_LIKE:
        return OpPlan(name, "view")
    if torch.Tag.inplace_view in tags:
        return OpPlan(name, "view")
    if torch.Tag.nondeterministic_seeded in tags:
        return OpPlan(name, "random")
    if name in _ALLOCATIONS:
        return OpPlan(name, "allocation (uninitialized result)")
    if not _returns_tensor(schema):
        return OpPlan(name, "no tensor result")
    if (torch.Tag.dynamic_output_shape in tags or torch.Tag.data_dependent_output in tags) and \
            name not in _STATIC_MOSTLY:
        # nonzero, masked_select, unique, bincount, ...: the result's shape depends on the input's values, which no
        # shape-specialized kernel can have.
        return OpPlan(name, "dynamic output shape")
    writes = _writes(schema)
    if not writes:
        return OpPlan(name, None, functional=func)
    base = schema.name.split("::", 1)[1]
    if torch.Tag.inplace in tags and base.endswith("_") and [a.name for a in writes] == ["self"]:
        f = _functional_overload(func, base[:-1], schema.arguments)
        if f is not None:
            return OpPlan(name, None, functional=f, inplace=True)
    if torch.Tag.out in tags and all(a.kwarg_only for a in writes):
        keep = [a for a in schema.arguments if not (a.alias_info is not None and a.alias_info.is_write)]
        f = _functional_overload(func, base, keep)
        if f is not None and len(f._schema.returns) == len(writes):
            return OpPlan(name, None, functional=f, out_names=tuple(a.name for a in writes))
    return OpPlan(name, None, unsupported="op writes its arguments and has no functional variant")


# ---- arguments: one walk gives the tensors (kernel inputs, in order) and the cache key ----

def _tensor_key(t: torch.Tensor) -> tuple:
    # Hot path: a few cheap C calls. Device and layout are checked here (a CUDA or sparse tensor must never reach a
    # kernel compiled for a key it shares); dtype and zero sizes are in the key and checked on a miss (`unsupported`).
    if t.is_cpu and t.layout is _STRIDED:
        # Non-contiguous layouts keep their strides: native result strides (and so ours) depend on them.
        return (t.shape, t.dtype, True if t.is_contiguous() else t.stride())
    raise CompileFailure("unsupported", f"device {t.device}" if not t.is_cpu else f"layout {t.layout}")


def unsupported(tensors) -> Optional[str]:
    """Why a call's tensors cannot go to a kernel (checked on a cache miss; the failure is then cached by key)."""
    for t in tensors:
        if t.dtype not in SUPPORTED_DTYPES:       # quantized dtypes too
            return f"dtype {t.dtype}"
    return None


def _walk(x: Any, tensors: list, key: list) -> None:
    if isinstance(x, torch.Tensor):
        tensors.append(x)
        key.append(_tensor_key(x))
    elif isinstance(x, (list, tuple)):
        key.append((type(x), len(x)))
        for y in x:
            _walk(y, tensors, key)
    elif type(x) is float:
        key.append((float, repr(x)))      # repr keeps nan, -0.0 and inf apart and hashable
    else:
        key.append((type(x), x))          # 1, 1.0 and True stay distinct


def flatten(op, args: tuple, kwargs: dict) -> tuple:
    """(key, tensors): the key names the op, each tensor's shape/dtype/contiguity and every other argument.
    `op` is any hashable name of the op; the dispatcher passes the overload's name (a str hashes fastest)."""
    tensors: list = []
    key: list = [op]
    for a in args:                     # the top level inline: most calls are a few tensors and scalars
        if isinstance(a, _Tensor):
            tensors.append(a)
            # _tensor_key inlined (~0.1 us a tensor on the hot path); anything unusual goes through it
            key.append((a.shape, a.dtype, True if a.is_contiguous() else a.stride())
                       if a.is_cpu and a.layout is _STRIDED else _tensor_key(a))
        else:
            _walk(a, tensors, key)
    for k, v in kwargs.items():
        key.append(k)
        _walk(v, tensors, key)
    return tuple(key), tensors


def map_tensors(x: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Rebuild a structure of args with each tensor replaced by fn(tensor), in the order `flatten` lists them."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(map_tensors(y, fn) for y in x)
    if isinstance(x, dict):
        return {k: map_tensors(v, fn) for k, v in x.items()}
    return x
