"""TorchMLIRTensor and the dispatch mode: unwrap -> dispatch.call -> wrap; outside dispatch the wrapper is a tensor."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from multiprocessing.reduction import ForkingPickler

from . import dispatch
from .spec import map_tensors

_ENTRIES = dispatch._entries      # read inline on every call (dispatch.entry fills it)
_DATA = torch._C.TensorBase.data  # PyTorch's own `.data` (get: a detached alias; set: set_data)


class TorchMLIRTensor(torch.Tensor):
    """A CPU tensor whose aten calls run through MLIR (or natively, recorded, when MLIR cannot).

    The wrapper and `elem`, the plain tensor each call runs on, are two views of one storage with the same sizes,
    strides and lazy conj/neg bits (what `detach()` makes): C++ code that reads a tensor's memory outside dispatch
    (composites such as `tensor_split` with a tensor of indices, DLPack, storages, `share_memory_`) reads `elem`'s.
    Whatever replaces a tensor's data or metadata outside a kernel keeps the two one: `.data =`, `set_`, `resize_`,
    out= resizes, `torch.utils.swap_tensors`, `nn.Module._apply` (`half()`, `to()`, ...), `load_state_dict`."""

    elem: torch.Tensor   # in __dict__, not a slot: swap_tensors with a plain tensor needs the same (no) slots

    @staticmethod
    def __new__(cls, elem: torch.Tensor, *, requires_grad=None):
        if isinstance(elem, TorchMLIRTensor):
            elem = elem.elem
        if not isinstance(elem, torch.Tensor):
            raise TypeError(f"TorchMLIRTensor wraps a torch.Tensor, got {type(elem).__name__}")
        if elem.layout is not torch.strided:
            raise TypeError(f"TorchMLIRTensor wraps strided (dense) tensors, got {elem.layout}")
        rg = elem.requires_grad if requires_grad is None else requires_grad
        if elem.requires_grad or type(elem) is not torch.Tensor:
            elem = elem.detach()                      # a plain alias, no autograd history (a Parameter's too)
        r = torch.Tensor._make_subclass(cls, elem, rg)
        r.elem = elem
        return r

    def __repr__(self, *, tensor_contents=None):
        grad = ", requires_grad=True" if self.requires_grad else ""
        param = "Parameter containing:\n" if self.__dict__.get("_is_param") else ""
        return f"{param}TorchMLIRTensor({self.elem!r}{grad})"

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
            # relu_, add_, ...: args[0]'s data written in place, its metadata unchanged; the result is the wrapper.
            dispatch.call_entry(e, uargs, ukwargs)
            return args[0]
        out = dispatch.call_entry(e, uargs, ukwargs)
        if e.written:
            return _follow_writes(e, args, kwargs or {}, out)
        return _wrap_out(out)

    # ---- a tensor outside aten dispatch: what torch.Tensor does in Python or C++ without an aten call ----

    @property
    def data(self):
        return _DATA.__get__(self)

    @data.setter
    def data(self, new):
        """`p.data = t` (also what `Module._apply` does for `half()`, `to()`, ...): p shares t's storage, sizes
        and dtype from now on, its elem too. PyTorch's own set_data checks the assignment and raises its errors."""
        elem = new.elem if isinstance(new, TorchMLIRTensor) else new
        _DATA.__set__(self, elem)
        self.elem = elem.detach() if elem.requires_grad or type(elem) is not torch.Tensor else elem

    @data.deleter
    def data(self):
        _DATA.__delete__(self)

    def numpy(self, *, force: bool = False):
        return _plain(self).numpy(force=force)

    def new(self, *args, **kwargs):
        """The legacy constructor (`x.new(storage)`, `x.new(2, 3)`): a TorchMLIRTensor, like every result of an op
        on one (DataLoader workers collate batches into `x.new(shared_storage)`)."""
        return _wrap_one(self.elem.new(*args, **kwargs))

    def tolist(self):
        return self.elem.tolist()

    def __array_wrap__(self, array, *rest):
        return _wrap_one(torch.Tensor.__array_wrap__(self, array))

    def __format__(self, format_spec):
        if self.dim() == 0 and not self.is_meta:
            return self.elem.item().__format__(format_spec)
        return object.__format__(self, format_spec)

    def __reduce_ex__(self, proto):
        """Pickled (torch.save, pickle, multiprocessing) as the plain tensor (or nn.Parameter) it is: a checkpoint
        of a wrapped model loads with the default torch.load (weights_only) anywhere, without this package."""
        return _plain_copy_of(self).__reduce_ex__(proto)

    def __copy__(self):
        """copy.copy: an alias of the same storage, as for a plain tensor (a Parameter stays one)."""
        r = TorchMLIRTensor(self.elem, requires_grad=self.requires_grad)
        r.__dict__.update((k, v) for k, v in self.__dict__.items() if k != "elem")
        return r

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        if self.__dict__.get("_is_param"):            # nn.Parameter's own deepcopy: a clone of the data, no grad
            new = nn.Parameter(TorchMLIRTensor(self.elem.clone(memory_format=torch.preserve_format)),
                               self.requires_grad)
            memo[id(self)] = new
            return new
        if not self.is_leaf:
            return torch.Tensor.__deepcopy__(self, memo)       # PyTorch's own error for non-leaves
        new = TorchMLIRTensor(copy.deepcopy(self.elem, memo), requires_grad=self.requires_grad)
        if self.grad is not None:
            new.grad = copy.deepcopy(self.grad, memo)
        for k, v in self.__dict__.items():
            if k != "elem":
                setattr(new, k, copy.deepcopy(v, memo))
        memo[id(self)] = new
        return new

    def module_load(self, other, assign=False):
        """load_state_dict under torch.__future__.set_swap_module_params_on_conversion(True): an assigned value is
        swapped in wrapped, so the module's parameter stays a TorchMLIRTensor (and the same Python object)."""
        if assign:
            return _wrap_one(other.detach())
        return torch.Tensor.module_load(self, other, assign=False)


def _plain(t: TorchMLIRTensor) -> torch.Tensor:
    """`elem`, or an alias of it that requires grad as `t` does (so PyTorch's own checks, e.g. numpy()'s, apply)."""
    return t.elem.detach().requires_grad_() if t.requires_grad else t.elem


def _plain_copy_of(t: TorchMLIRTensor) -> torch.Tensor:
    """A plain tensor sharing t's storage, with its requires_grad, parameter-ness and Python attributes."""
    p = _plain(t)
    state = {k: v for k, v in t.__dict__.items() if k not in ("elem", "_is_param")}
    if t.__dict__.get("_is_param"):
        p = nn.Parameter(t.elem, requires_grad=t.requires_grad)
    elif p is t.elem and state:
        p = p.detach()                 # attributes go on an alias, not on elem
    p.__dict__.update(state)
    return p


def _rewrap(plain: torch.Tensor):
    t = TorchMLIRTensor(plain)
    return nn.Parameter(t, requires_grad=plain.requires_grad) if isinstance(plain, nn.Parameter) else t


def _reduce_for_multiprocessing(t: TorchMLIRTensor):
    """Between processes (DataLoader workers, multiprocessing queues) a TorchMLIRTensor arrives wrapped: its plain
    tensor goes by torch's own shared-memory reduction and is wrapped again on arrival (that process imported
    this package: it unpickles a batch of it)."""
    return _rewrap, (_plain_copy_of(t),)


ForkingPickler.register(TorchMLIRTensor, _reduce_for_multiprocessing)


def _view_of_self(e, func, args):
    """A view of args[0] (dispatch.OpEntry.view_of_self), run natively by design: what call_entry and _wrap_out do
    for it, without their generality. The results share args[0]'s storage (their elems are views of its elem)."""
    out = func(args[0].elem, *args[1:])
    dispatch.recorder.native(e.plan.name, "view")
    if e.view_of_self == dispatch.VIEW_ONE:
        return _from_result(out)
    return type(out)([_from_result(o) for o in out])


def _follow_writes(e, args, kwargs, out):
    """After an op that writes its arguments (set_, resize_, transpose_, out=, ...): each written wrapper takes its
    elem's storage and metadata (set_ and resize_ replace them, an out= destination may be resized), and is what
    the op returns where it returns that elem (PyTorch returns the argument itself)."""
    same = {}
    for i in e.written:
        a = (args[i] if i < len(args) else None) if type(i) is int else kwargs.get(i)
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, TorchMLIRTensor):
                _DATA.__set__(t, t.elem)
                same[id(t.elem)] = t
            elif isinstance(t, torch.Tensor):
                same[id(t)] = t
    return _map_out(out, same)


def _map_out(out, same):
    if isinstance(out, torch.Tensor):
        w = same.get(id(out))
        return _wrap_out(out) if w is None else w
    if isinstance(out, (list, tuple)):
        return type(out)(_map_out(o, same) for o in out)
    return out


def _from_result(elem: torch.Tensor) -> "TorchMLIRTensor":
    """Wrap an op's plain result (no autograd history below dispatch, so no requires_grad to carry): an alias of
    its storage and metadata, made in C++ (cheaper than _make_wrapper_subclass with sizes, strides and device)."""
    r = torch.Tensor._make_subclass(TorchMLIRTensor, elem)
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


# Types the mode runs as plain tensors: those with no __torch_dispatch__ of their own are plain below it (Parameter,
# a lazy module's UninitializedParameter, a user's __torch_function__-only subclass).
_PLAIN_TYPES = (torch.Tensor, nn.Parameter, TorchMLIRTensor)
_NO_DISPATCH = torch.Tensor.__torch_dispatch__


class _MLIRMode(TorchDispatchMode):
    """Plain tensors' aten calls go through the same path as TorchMLIRTensor's."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(t not in _PLAIN_TYPES and t.__torch_dispatch__ is not _NO_DISPATCH for t in types):
            return NotImplemented      # another dispatch subclass (FakeTensor, ...) handles itself
        if TorchMLIRTensor in types:   # here, not after NotImplemented: this mode stays off for our own calls
            return TorchMLIRTensor.__torch_dispatch__(func, types, args, kwargs)
        return dispatch.call(func, args, kwargs or {})


def enable() -> TorchDispatchMode:
    """`with tme.enable(): ...` sends every aten call on plain CPU tensors through MLIR."""
    return _MLIRMode()


# ---- modules ----

def _converted(t: torch.Tensor, fn, or_new: bool) -> torch.Tensor:
    """t wrapped or unwrapped (`fn`), as the same Python object where PyTorch lets torch.utils.swap_tensors change
    it in place (so an optimizer, or a user, holding t holds the module's tensor still), its .grad converted along;
    where PyTorch refuses (weak references, other holders of its C++ tensor): a new object (`or_new`), or t as it
    was."""
    new = fn(t.detach())
    param = isinstance(t, nn.Parameter)
    if param:
        new = nn.Parameter(new, requires_grad=t.requires_grad)
    grad = t.grad if param else None
    try:
        if grad is not None:
            t.grad = None                  # a .grad holds the tensor too: swap_tensors would refuse
        torch.utils.swap_tensors(t, new)
    except RuntimeError:
        if grad is not None:
            t.grad = grad
        if not or_new:
            return t
        t = new
    if grad is not None:
        t.grad = fn(grad)
    return t


def _keep_wrapped(module: nn.Module, name: str, value: torch.Tensor, table: str) -> None:
    """A parameter or buffer of a wrapped module replaced by a plain tensor (load_state_dict(assign=True), or
    `module.weight = nn.Parameter(t)`) is wrapped in place, as `wrap` did to the one it replaces. It stays plain
    (its calls then run natively) where it cannot be changed in place: a new object in the module would leave an
    optimizer that holds the user's one stepping a tensor the module no longer uses."""
    old = module.__dict__.get(table, {}).get(name)
    if isinstance(old, TorchMLIRTensor) and not isinstance(value, TorchMLIRTensor) and \
            value.layout is torch.strided:
        _converted(value, _wrap_one, or_new=False)
    return None


_HOOKS = (nn.modules.module.register_module_parameter_registration_hook(
              lambda m, n, v: _keep_wrapped(m, n, v, "_parameters")),
          nn.modules.module.register_module_buffer_registration_hook(
              lambda m, n, v: _keep_wrapped(m, n, v, "_buffers")))


def _swap_module_tensors(module: nn.Module, fn) -> nn.Module:
    """Each parameter and buffer of module and its submodules converted by fn, in place where PyTorch allows
    (`_converted`); a tensor tied to several places is converted once."""
    memo = {}
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for name, t in list(table.items()):
                if t is None or nn.parameter.is_lazy(t):      # a lazy module's, until its first forward
                    continue
                if id(t) not in memo:
                    memo[id(t)] = _converted(t, fn, or_new=True)
                table[name] = memo[id(t)]
    return module


def _wrap_one(t):
    # Sparse and other non-strided tensors stay plain: their calls run natively.
    if isinstance(t, TorchMLIRTensor) or t.layout is not torch.strided:
        return t
    return TorchMLIRTensor(t)


def wrap(x):
    """tensor -> TorchMLIRTensor; list/tuple/dict -> same structure wrapped; nn.Module -> its parameters and buffers
    wrapped in place, each the same Python object where PyTorch allows (an optimizer made before still steps them);
    one later replaced by a plain tensor is wrapped too. Non-strided (sparse) tensors stay plain."""
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
