"""TorchMLIRTensor and the dispatch mode: unwrap -> dispatch.call -> wrap, keeping PyTorch's aliasing."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_map_only

from . import dispatch
from .spec import map_tensors

_ENTRIES = dispatch._entries      # read inline on every call (dispatch.entry fills it)


class TorchMLIRTensor(torch.Tensor):
    """A CPU tensor whose aten calls run through MLIR (or natively, recorded, when MLIR cannot)."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor, *, requires_grad=None):
        if isinstance(elem, TorchMLIRTensor):
            elem = elem.elem
        if not isinstance(elem, torch.Tensor):
            raise TypeError(f"TorchMLIRTensor wraps a torch.Tensor, got {type(elem).__name__}")
        if elem.layout is not torch.strided:
            raise TypeError(f"TorchMLIRTensor wraps strided (dense) tensors, got {elem.layout}")
        rg = elem.requires_grad if requires_grad is None else requires_grad
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=elem.device, requires_grad=rg)
        _mirror_lazy_bits(r, elem)
        r.elem = elem.detach() if elem.requires_grad else elem
        return r

    def __repr__(self, *, tensor_contents=None):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"TorchMLIRTensor({self.elem!r}{grad})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        e = _ENTRIES.get(id(func)) or dispatch.entry(func)
        if e.view_of_self and not kwargs and type(args[0]) is TorchMLIRTensor:
            return _view_of_self(e, func, args)
        uargs = tuple([a.elem if isinstance(a, TorchMLIRTensor) else
                       map_tensors(a, _unwrap_one) if isinstance(a, (list, tuple)) else a for a in args])
        ukwargs = map_tensors(kwargs, _unwrap_one) if kwargs else {}
        if e.inplace and type(args[0]) is TorchMLIRTensor:
            # relu_, add_, ...: the result is the input wrapper itself, its data written in place (what PyTorch's
            # return_and_correct_aliasing returns too, for ~12 us a call more).
            dispatch.call_entry(e, uargs, ukwargs)
            return args[0]
        out = _wrap_out(dispatch.call_entry(e, uargs, ukwargs))
        if e.aliasing:
            pairs = e.view_pairs
            if pairs is not None and type(out) is TorchMLIRTensor and \
                    all(type(args[i]) is TorchMLIRTensor for i in pairs):
                for i in pairs:                     # what return_and_correct_aliasing does for a view
                    torch._functionalize_unsafe_set(out, args[i])
                return out
            return return_and_correct_aliasing(func, args, kwargs or {}, out)
        return out


def _view_of_self(e, func, args):
    """A view of args[0] (dispatch.OpEntry.view_of_self), run natively by design: what call_entry, _wrap_out and the
    aliasing fix-up below do for it, without their generality. The results share args[0]'s storage."""
    a0 = args[0]
    out = func(a0.elem, *args[1:])
    dispatch.recorder.native(e.plan.name, "view")
    if e.view_of_self == dispatch.VIEW_ONE:
        r = _from_result(out)
        if e.aliasing:
            torch._functionalize_unsafe_set(r, a0)
        return r
    rs = [_from_result(o) for o in out]
    for r in rs:
        torch._functionalize_unsafe_set(r, a0)
    return type(out)(rs)


def _mirror_lazy_bits(r: torch.Tensor, elem: torch.Tensor) -> None:
    """Lazy conjugation/negation bits live on the tensor PyTorch's composite code sees: mirror them on the
    wrapper, or a conj view would skip resolve_conj and give wrong numbers. Only complex tensors carry them."""
    if elem.is_complex():
        torch._C._set_conj(r, elem.is_conj())
        torch._C._set_neg(r, elem.is_neg())


_CPU = torch.device("cpu")


def _from_result(elem: torch.Tensor) -> "TorchMLIRTensor":
    """Wrap an op's plain strided result: no autograd history below dispatch, so no requires_grad to carry.
    Hot path: each keyword given to _make_wrapper_subclass costs ~0.1-0.2 us, so a CPU result at offset 0 (every
    kernel output) passes no offset or device, and no strides either where they must be the default ones
    (contiguous with no size-1 dim, whose stride contiguity leaves free)."""
    dtype = elem.dtype
    if elem.is_cpu and not elem.storage_offset() and not dtype.is_complex:
        shape = elem.shape
        if elem.is_contiguous() and 1 not in shape:
            r = torch.Tensor._make_wrapper_subclass(TorchMLIRTensor, shape, dtype=dtype, device=_CPU)
        else:
            r = torch.Tensor._make_wrapper_subclass(TorchMLIRTensor, shape, strides=elem.stride(), dtype=dtype,
                                                    device=_CPU)
    else:
        r = torch.Tensor._make_wrapper_subclass(
            TorchMLIRTensor, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=dtype, device=elem.device)
        _mirror_lazy_bits(r, elem)
    r.elem = elem
    return r


def _unwrap_one(t):
    return t.elem if isinstance(t, TorchMLIRTensor) else t


def _wrap_out(out):
    if type(out) is torch.Tensor and out.layout is torch.strided and not out.requires_grad:
        return _from_result(out)
    if isinstance(out, torch.Tensor):
        return _wrap_one(out)
    if isinstance(out, (list, tuple)):
        return type(out)(_wrap_out(o) for o in out)
    return out


class _MLIRMode(TorchDispatchMode):
    """Plain tensors' aten calls go through the same path as TorchMLIRTensor's."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(t not in (torch.Tensor, nn.Parameter, TorchMLIRTensor) for t in types):
            return NotImplemented      # another subclass (FakeTensor, ...) handles itself
        if TorchMLIRTensor in types:   # here, not after NotImplemented: this mode stays off for our own calls
            return TorchMLIRTensor.__torch_dispatch__(func, types, args, kwargs)
        return dispatch.call(func, args, kwargs or {})


def enable() -> TorchDispatchMode:
    """`with tme.enable(): ...` sends every aten call on plain CPU tensors through MLIR."""
    return _MLIRMode()


def _swap_module_tensors(module: nn.Module, fn) -> nn.Module:
    memo = {}
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(fn(p.data), requires_grad=p.requires_grad)
                m._parameters[name] = memo[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = fn(b)
                m._buffers[name] = memo[id(b)]
    return module


def _wrap_one(t):
    # Sparse and other non-strided tensors stay plain: their calls run natively.
    if isinstance(t, TorchMLIRTensor) or t.layout is not torch.strided:
        return t
    return TorchMLIRTensor(t)


def wrap(x):
    """tensor -> TorchMLIRTensor; list/tuple/dict -> same structure wrapped; nn.Module -> wrapped in place.
    Non-strided (sparse) tensors are left as they are."""
    if isinstance(x, nn.Module):
        return _swap_module_tensors(x, _wrap_one)
    return tree_map_only(torch.Tensor, _wrap_one, x)


def unwrap(x):
    """The inverse of `wrap`: TorchMLIRTensor -> the plain tensor it holds, through structures and modules."""
    if isinstance(x, nn.Module):
        return _swap_module_tensors(x, _unwrap_one)
    if isinstance(x, torch.Tensor):
        return _unwrap_one(x)
    return tree_map_only(torch.Tensor, _unwrap_one, x)
