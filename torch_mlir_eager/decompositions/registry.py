"""The decomposition registry: each of our decompositions registered beside its definition, keyed by op name."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Union

import torch
from torch._decomp import core_aten_decompositions
from torch._decomp import decomposition_table as registered
from torch_mlir.extras.fx_decomp_util import get_decomposition_table

OpLike = Union[torch._ops.OpOverload, torch._ops.OpOverloadPacket]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One op's decomposition. `top`: used only for the call itself, never for the op met inside another op's
    decomposition. `general`: it is passed the tables' own decomposition of the op as `general=`. `only`: True, or a test of the call's
    bound arguments, where torch-mlir's direct lowering of the op is known wrong (or crashes): the call is then
    compiled through this decomposition only."""
    op: torch._ops.OpOverload
    fn: Callable
    top: bool = False
    general: bool = False
    only: Union[bool, Callable[[dict], bool]] = False


REGISTRY: Dict[str, Entry] = {}


def _overloads(op: OpLike, overloads) -> list:
    if isinstance(op, torch._ops.OpOverload):
        return [op]
    return [getattr(op, ov) for ov in (overloads or op.overloads())]


def register(ops, fn: Callable, *, top: bool = False, general: bool = False, only=False, overloads=()) -> None:
    """Register fn for each op (an OpOverload, or a packet: `overloads` of it, else all of them)."""
    for o in ops:
        for ov in _overloads(o, overloads):
            name = str(ov)
            if name in REGISTRY:
                raise ValueError(f"{name}: registered twice")
            REGISTRY[name] = Entry(ov, fn, top, general, only)


def decomposes(*ops: OpLike, top: bool = False, general: bool = False, only=False, overloads=()):
    """Decorator form of `register`."""
    def deco(fn):
        register(ops, fn, top=top, general=general, only=only, overloads=overloads)
        return fn
    return deco


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """torch-mlir's own table, widened with PyTorch's core-ATen decompositions and ours (not the `top` ones):
    the table every op of a traced decomposition is decomposed by."""
    t = dict(core_aten_decompositions())
    t.update(get_decomposition_table())
    t.update({e.op: e.fn for e in REGISTRY.values() if not e.top})
    return t


def for_op(func) -> dict:
    """The table for decomposing `func`: `table()`, plus PyTorch's registered decomposition of `func` itself when
    the table has none (only for the op at the top: its parts stay at the ATen level), plus our `top` form."""
    t = table()
    entry = REGISTRY.get(str(func))
    if func not in t and func in registered:
        t = dict(t)
        t[func] = registered[func]
    if entry is not None and entry.top:
        t = dict(t)
        t[func] = functools.partial(entry.fn, general=t.get(func)) if entry.general else entry.fn
    return t


def decompose_only(func, bound: dict) -> bool:
    """The op's direct lowering is known wrong (or crashes) for this call: compile our decomposition only."""
    entry = REGISTRY.get(str(func))
    if entry is None:
        return False
    return entry.only(bound) if callable(entry.only) else bool(entry.only)


def has(func) -> bool:
    return func in for_op(func)
