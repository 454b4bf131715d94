"""A TorchMLIRTensor is a tensor everywhere a user touches it, not only inside aten dispatch (issue 17).

Each test runs the same steps natively and through the package, both ways a user can (`tme.wrap` and `tme.enable()`),
and compares values, dtypes, layouts and exception types with native PyTorch; where kernels run, the report must show
calls through MLIR. The cases cover what PyTorch does to a tensor outside `__torch_dispatch__`: `.data`, `set_`,
`nn.Module._apply` conversions, state dicts and checkpoints, values leaving the tensor (numpy, format, DLPack),
copies and pickling, hooks, torch.func, autocast, DataLoader workers, parametrizations, and PyTorch's own subclass
invariants (test/test_subclass.py).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn
from torch.utils._pytree import tree_flatten

import torch_mlir_eager as tme
from helpers import row, totals


class Way:
    """How a program meets the package: `native` (the reference), `wrap` (wrapped tensors and modules) or `enable`
    (plain tensors under the dispatch mode)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return self.name

    @property
    def wraps(self) -> bool:
        return self.name == "wrap"

    def __call__(self, x):
        """A module, tensor or structure as this way hands it to the program."""
        return tme.wrap(x) if self.wraps else x

    def scope(self):
        return tme.enable() if self.name == "enable" else contextlib.nullcontext()


NATIVE = Way("native")


@pytest.fixture(params=["wrap", "enable"])
def way(request):
    tme.reset_report()
    return Way(request.param)


def same(fn, way, *, mlir=True, **tol):
    """fn(NATIVE) and fn(way) give equal results (values, dtypes, shapes; tensors compared as plain tensors); when
    `mlir`, the report shows calls through MLIR in the way's run. Returns the way's result."""
    want = fn(NATIVE)
    tme.reset_report()
    got = fn(way)
    g, g_spec = tree_flatten(_sizes_as_tuples(tme.unwrap(got)))
    w, w_spec = tree_flatten(_sizes_as_tuples(want))
    assert g_spec == w_spec
    for a, b in zip(g, w):
        if isinstance(b, (torch.Tensor, float)):
            torch.testing.assert_close(a, b, equal_nan=True, **tol)
        else:
            assert a == b           # dtypes, shapes, strides, flags, strings
    if mlir:
        assert totals()["mlir_calls"] > 0, tme.report()
    return got


def _sizes_as_tuples(x):
    if isinstance(x, (list, tuple)):
        return [_sizes_as_tuples(y) for y in x]
    if isinstance(x, dict):
        return {k: _sizes_as_tuples(v) for k, v in x.items()}
    return x


def raises_same(fn, way):
    """fn(NATIVE) raises; fn(way), in the way's scope, raises the same exception type, unchained."""
    with pytest.raises(Exception) as native:
        fn(NATIVE)
    with pytest.raises(type(native.value)) as ours, way.scope():
        fn(way)
    assert ours.value.__cause__ is None
    assert type(ours.value) is type(native.value)


def _convnet(seed=0):
    torch.manual_seed(seed)
    # no conv bias before the batch norm: its true gradient is 0, and Adam would turn rounding noise into steps
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))


def _linear(i=3, o=2, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(i, o)


def _image(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8).to(dtype)


def _all_wrapped(m: nn.Module) -> None:
    for t in [*m.parameters(), *m.buffers()]:
        assert isinstance(t, tme.TorchMLIRTensor), type(t)
        assert (t.dtype, t.shape, t.stride()) == (t.elem.dtype, t.elem.shape, t.elem.stride())
        assert t.data_ptr() == t.elem.data_ptr()


# ---- the table, row by row ----

def test_data_assignment_replaces_the_weights(way):
    def run(w):
        m = w(_linear(4, 2))
        with torch.no_grad():
            m.weight.data = torch.zeros(2, 4)
        with w.scope():
            return m(w(torch.ones(3, 4)))
    got = same(run, way)
    if way.wraps:
        torch.testing.assert_close(tme.unwrap(got), tme.unwrap(got)[:1].expand(3, 2))   # the bias alone


def test_data_get_aliases_and_set_accepts_a_wrapper(way):
    def run(w):
        a, b = w(torch.arange(6.).reshape(2, 3)), w(torch.ones(3))
        d = a.data
        a.data = b                              # a now shares b's storage, shape and dtype
        with w.scope():
            d[0, 0] = 7.0                       # .data shares the storage
            b.add_(1)
            return a, d, a.shape
    same(run, way)
    raises_same(lambda w: setattr(w(torch.ones(2)), "data", 3), way)
    raises_same(lambda w: setattr(nn.Parameter(w(torch.ones(2))), "data", torch.ones(2, dtype=torch.int64)), way)


CONVERSIONS = {
    "half": lambda m: m.half(), "double": lambda m: m.double(), "bfloat16": lambda m: m.bfloat16(),
    "float": lambda m: m.double().float(), "cpu": lambda m: m.cpu(),
    "to-dtype": lambda m: m.to(torch.float64), "to-device-dtype": lambda m: m.to("cpu", torch.float16),
    "to-tensor": lambda m: m.to(torch.zeros((), dtype=torch.float64)), "type": lambda m: m.type(torch.float64),
    "channels_last": lambda m: m.to(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("conversion", CONVERSIONS)
def test_module_conversions_convert_the_data(way, conversion):
    def run(w):
        m = w(_convnet())
        with w.scope():
            m(w(_image())).sum().backward()          # grads exist, and are converted too
            CONVERSIONS[conversion](m)
            p = next(m.parameters())
            out = m.eval()(w(_image(p.dtype)))
        if w.wraps:
            _all_wrapped(m)
        return out, [(t.dtype, t.stride()) for t in m.parameters()], [t.grad for t in m.parameters()]
    same(run, way, rtol=2e-2, atol=1e-2)


def test_module_methods_that_move_or_reset_tensors(way):
    def run(w):
        m = w(_convnet())
        with w.scope():
            m(w(_image())).sum().backward()
            m.zero_grad()
            grads = [p.grad for p in m.parameters()]
            m.requires_grad_(False)
            m.share_memory()
            shared = [t.is_shared() for t in m.parameters()]
            m.apply(lambda s: nn.init.constant_(s.weight, 0.5) if isinstance(s, nn.Linear) else None)
            empty = copy.deepcopy(m).to_empty(device="cpu")
            return m(w(_image())), grads, shared, [p.requires_grad for p in m.parameters()], \
                [(t.shape, t.dtype) for t in empty.parameters()]
    same(run, way)


VALUES = {
    "numpy": lambda x: x.numpy(), "asarray": lambda x: np.asarray(x), "asarray-dtype": lambda x: np.asarray(x, "f8"),
    "tolist": lambda x: x.tolist(), "item": lambda x: x[1].item(), "format-0d": lambda x: f"{x[1]:.4f}",
    "int": lambda x: int(x[1]), "float": lambda x: float(x[1]),
    "bool": lambda x: bool(x[1]), "index": lambda x: [10, 11, 12, 13][x.long()[2]], "complex": lambda x: complex(x[1]),
    "len-iter": lambda x: [len(x)] + [float(v) for v in x], "ufunc": lambda x: np.sin(x) + 0,
    "dlpack": lambda x: np.from_dlpack(x), "torch-dlpack": lambda x: torch.from_dlpack(x.__dlpack__()),
    "numpy-force": lambda x: x.detach().requires_grad_().numpy(force=True),
}


@pytest.mark.parametrize("what", VALUES)
def test_values_leave_the_tensor_as_they_leave_a_tensor(way, what):
    def run(w):
        x = w(torch.tensor([0.25, 0.5, 2.0]))
        with w.scope():
            v = VALUES[what](x)
        return torch.as_tensor(np.array(v)) if not isinstance(v, (str, torch.Tensor)) else v
    got = same(run, way, mlir=False)
    if way.wraps and what == "ufunc":
        assert isinstance(got, tme.TorchMLIRTensor)


@pytest.mark.parametrize("what", ["numpy-requires-grad", "format-nd-spec", "numpy-conj"])
def test_values_refused_as_pytorch_refuses_them(way, what):
    fn = {"numpy-requires-grad": lambda x: x.requires_grad_().numpy(), "format-nd-spec": lambda x: f"{x:.2f}",
          "numpy-conj": lambda x: (x * 1j).conj().numpy()}[what]
    raises_same(lambda w: fn(w(torch.tensor([0.25, 0.5]))), way)


def _load_elsewhere(path: str) -> dict:
    """torch.load with the defaults (weights_only) in a fresh interpreter that never imports torch_mlir_eager."""
    code = ("import sys, torch; sd = torch.load(sys.argv[1]); assert 'torch_mlir_eager' not in sys.modules; "
            "print({k: (type(v).__name__, str(v.dtype), v.sum().item()) for k, v in sd.items()})")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)


def test_checkpoint_of_a_wrapped_model_loads_anywhere_and_back(way, tmp_path):
    path = str(tmp_path / "sd.pt")

    def run(w):
        m = w(_convnet())
        with w.scope():
            m(w(_image())).sum().backward()
        torch.save(m.state_dict(), path)
        return {k: v for k, v in torch.load(path).items()}
    want = tme.unwrap(same(run, way))
    elsewhere = _load_elsewhere(path)
    assert {k: v[0] for k, v in elsewhere.items()} == {k: "Tensor" for k in want}
    for k, (_, dtype, total) in elsewhere.items():
        assert dtype == str(want[k].dtype) and total == pytest.approx(want[k].sum().item(), rel=1e-5, abs=1e-5)

    for assign in (False, True):
        def back(w):
            m = w(_convnet(seed=5))
            m.load_state_dict(torch.load(path), assign=assign)
            if w.wraps:
                _all_wrapped(m)
            with w.scope():
                return m.eval()(w(_image()))
        same(back, way)


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_with_swap_on_conversion(way, assign):
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        def run(w):
            m = w(_convnet(seed=5))
            weight = m[4].weight
            m.load_state_dict(_convnet().state_dict(), assign=assign)
            assert m[4].weight is weight                      # swapped in place: the same Python object
            m.half()
            if w.wraps:
                _all_wrapped(m)
            with w.scope():
                return m.eval()(w(_image(torch.float16)))
        same(run, way, rtol=2e-2, atol=1e-2)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


def test_a_replaced_parameter_stays_wrapped_and_keeps_its_identity(way):
    def run(w):
        m = w(_linear())
        p = nn.Parameter(torch.ones(2, 3))
        m.weight = p
        assert m.weight is p
        opt = torch.optim.SGD([p, m.bias], lr=0.5)           # the user's own object is what the module uses
        with w.scope():
            m(w(torch.ones(1, 3))).sum().backward()
            opt.step()
        if w.wraps:
            assert isinstance(m.weight, tme.TorchMLIRTensor)
        return p.detach()
    same(run, way)


def test_an_optimizer_made_before_wrap_trains_the_wrapped_model(way):
    def run(w):
        m = _convnet()
        held = m[4].weight
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        with w.scope():
            m(w(_image())).sum().backward()                  # grads exist before the wrap, and are kept
        m = w(m)
        assert m[4].weight is held
        for _ in range(2):
            with w.scope():
                m(w(_image())).sum().backward()
                opt.step()
        if w.wraps:
            _all_wrapped(m)
            tme.unwrap(m)
            assert type(held) is nn.Parameter and m[4].weight is held
        return [p.detach() for p in m.parameters()]
    same(run, way)


def test_tensor_split_with_a_wrapped_tensor_of_indices(way):
    # composites that read a tensor argument's data in C++ (not through an aten op)
    def run(w):
        x, idx = w(torch.arange(10.)), w(torch.tensor([2, 5]))
        with w.scope():
            return torch.tensor_split(x, idx), x.tensor_split(idx), torch.repeat_interleave(x, w(torch.arange(10))), \
                torch.narrow(x, 0, w(torch.tensor(3)), 4) * 2
    same(run, way)


def test_a_users_error_is_not_reported_as_a_gap(way):
    raises_same(lambda w: torch.mm(w(torch.ones(2, 3)), w(torch.ones(2, 3))), way)
    r = row("aten.mm.default")
    assert (r["fallback_calls"], r["user_errors"]) == (0, 1), r
    assert tme.report().summary().endswith("Op(s) not lowered: none")
    assert "user errors (native raised the same): 1 calls" in tme.report().summary()


COMPLEX = {
    "pinverse": lambda a: torch.pinverse(a), "linalg.pinv": lambda a: torch.linalg.pinv(a),
    "polar": lambda a: torch.linalg.svd(a)[0] @ torch.linalg.matrix_exp(a - a.mH),
    "matrix_sqrth": lambda a: torch.linalg.eigh(a @ a.mH)[1].mH,
    "lstsq": lambda a: torch.linalg.lstsq(a, a[:, :2]).solution,
    "pinv-grad": lambda a: torch.autograd.grad(torch.linalg.pinv(a).abs().sum(), a)[0],
}


@pytest.mark.parametrize("what", COMPLEX)
def test_complex_results_with_lazy_conjugation(way, what):
    # a lazy conj view taken inside an op's C++ must be read conjugated (pytorch issue 198118)
    def run(w):
        torch.manual_seed(0)
        a = w(torch.randn(4, 4, dtype=torch.complex64)).requires_grad_(what.endswith("grad"))
        with w.scope():
            return COMPLEX[what](a)
    same(run, way, mlir=False)


def test_complex_polar_and_matrix_sqrth_ops(way):
    from torch.testing._internal.common_methods_invocations import op_db
    for name in ("linalg.polar", "linalg.matrix_sqrth", "linalg.lstsq", "pinverse"):
        op = next(o for o in op_db if o.name == name and not o.variant_test_name)

        def run(w):
            torch.manual_seed(1234)
            s = next(iter(op.sample_inputs("cpu", torch.complex64)))
            with w.scope():
                return op(w(s.input), *w(s.args), **w(s.kwargs))
        same(run, way, mlir=False)


# ---- PyTorch's machinery over wrapped tensors ----

INITS = {
    "uniform_": lambda t: nn.init.uniform_(t, -1, 2), "normal_": lambda t: nn.init.normal_(t, 1, 3),
    "trunc_normal_": nn.init.trunc_normal_, "constant_": lambda t: nn.init.constant_(t, 0.3),
    "ones_": nn.init.ones_, "zeros_": nn.init.zeros_, "eye_": lambda t: nn.init.eye_(t[0, 0]),
    "dirac_": nn.init.dirac_, "xavier_uniform_": nn.init.xavier_uniform_, "xavier_normal_": nn.init.xavier_normal_,
    "kaiming_uniform_": nn.init.kaiming_uniform_, "kaiming_normal_": nn.init.kaiming_normal_,
    "orthogonal_": nn.init.orthogonal_, "sparse_": lambda t: nn.init.sparse_(t[0, 0], 0.5),
}


@pytest.mark.parametrize("init", INITS)
def test_nn_init(way, init):
    def run(w):
        torch.manual_seed(7)
        m = w(nn.Conv2d(4, 4, 3))
        with w.scope():
            INITS[init](m.weight)
        return m.weight.detach()
    same(run, way, mlir=False)


@pytest.mark.parametrize("optim", ["SGD", "Adam", "AdamW"])
def test_optimizer_state_dict_round_trip(way, optim):
    def step(w, m, opt):
        with w.scope():
            opt.zero_grad()
            nn.functional.cross_entropy(m(w(_image())), w(torch.tensor([1, 3]))).backward()
            opt.step()

    def run(w):
        make = {"SGD": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "Adam": lambda p: torch.optim.Adam(p, 1e-2),
                "AdamW": lambda p: torch.optim.AdamW(p, 1e-2)}[optim]
        m = w(_convnet())
        opt = make(m.parameters())
        for _ in range(2):
            step(w, m, opt)
        buf = io.BytesIO()
        torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf)
        m2 = w(_convnet(seed=3))
        m2.load_state_dict(ck["model"])
        opt2 = make(m2.parameters())
        opt2.load_state_dict(ck["opt"])
        for _ in range(2):
            step(w, m2, opt2)
        return [p.detach() for p in m2.parameters()]
    same(run, way, rtol=1e-4, atol=1e-5)


def test_deepcopy_copy_and_pickle(way):
    def run(w):
        m = w(_convnet())
        with w.scope():
            m(w(_image())).sum().backward()
        c = copy.deepcopy(m)
        with torch.no_grad():
            c[4].weight.add_(1.0)                      # the copy is independent
        if w.wraps:
            _all_wrapped(c)
            assert isinstance(c[4].weight, nn.Parameter) and c[4].weight.grad is None   # as nn.Parameter's
        x = w(torch.arange(4.))
        alias = copy.copy(x)
        alias[0] = 5.0                                 # copy.copy aliases, as for a plain tensor
        p = pickle.loads(pickle.dumps(w(torch.arange(3.)).requires_grad_()))
        with w.scope():
            return m.eval()(w(_image())), c.eval()(w(_image())), x, p, p.requires_grad, [t.grad for t in c.parameters()]
    same(run, way)


def test_hooks(way):
    def run(w):
        m = w(_convnet())
        seen = []
        m[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].sum()))
        m[2].register_forward_hook(lambda mod, args, out: out * 2)
        m[4].register_full_backward_hook(lambda mod, gin, gout: seen.append(gout[0].sum()))
        m[4].weight.register_hook(lambda g: g * 3)
        m[4].bias.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.sum()))
        with w.scope():
            m(w(_image())).sum().backward()
        return seen, [p.grad for p in m.parameters()]
    same(run, way)


def test_torch_func(way):
    def run(w):
        f = lambda v: (v.sin() * v).sum()
        x, y = w(torch.arange(6.).reshape(2, 3)), w(torch.linspace(0, 1, 4))
        with w.scope():
            return torch.func.grad(f)(x), torch.func.vmap(torch.outer)(x, w(torch.ones(2, 4))), \
                torch.func.jacrev(torch.sin)(y), torch.func.vmap(torch.func.grad(f))(x)
    same(run, way, mlir=False)


def test_autocast_cpu_bfloat16(way):
    def run(w):
        m = w(_convnet()).eval()
        with w.scope(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(w(_image()))
        assert out.dtype == torch.bfloat16
        return out
    same(run, way, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader(way, workers):
    from torch.utils.data import DataLoader, TensorDataset

    def collate(batch):                    # kernels run in the worker processes too
        xs, ys = zip(*batch)
        return torch.stack(xs).sin() * 2, torch.stack(ys)

    def run(w):
        torch.manual_seed(0)
        ds = TensorDataset(w(torch.randn(12, 3)), w(torch.arange(12)))
        g = torch.Generator().manual_seed(1)
        batches = []
        with w.scope():
            for x, y in DataLoader(ds, batch_size=5, shuffle=True, generator=g, num_workers=workers,
                                   collate_fn=collate if workers else None):
                if w.wraps:
                    assert isinstance(x, tme.TorchMLIRTensor) and isinstance(y, tme.TorchMLIRTensor)
                batches.append((x, y))
        return batches
    same(run, way, mlir=workers == 0)          # with workers, kernels run (and are counted) in the workers


def test_swap_tensors(way):
    def run(w):
        a, b, c = w(torch.ones(2)), torch.zeros(3), w(torch.arange(4.))
        torch.utils.swap_tensors(a, b)
        torch.utils.swap_tensors(b, c)
        with w.scope():
            return a + 1, b + 1, c + 1
    same(run, way)


def test_set_resize_and_out_resize(way):
    def run(w):
        a, src = w(torch.zeros(2)), w(torch.arange(6.))
        with w.scope():
            a.set_(src)
            b = w(torch.zeros(2)).set_(src.untyped_storage(), 2, (2, 2), (1, 2))
            c = w(torch.arange(3.))
            c.resize_(2)
            out = w(torch.empty(0))
            torch.add(w(torch.ones(2, 3)), w(torch.ones(3)), out=out)
            t = w(torch.arange(6.).reshape(2, 3))
            t.t_()
            t.unsqueeze_(0)
            return a + 1, b + 1, c * 2, out * 3, t + 1, (a.shape, b.shape, b.stride(), out.shape, t.shape, t.stride())
    same(run, way)


@pytest.mark.parametrize("leave", [False, True])
def test_parametrizations(way, leave):
    class Neg(nn.Module):
        def forward(self, x):
            return -x

    def run(w):
        m = w(_linear())
        parametrize.register_parametrization(m, "weight", Neg())
        if w.wraps:
            assert isinstance(m.weight, tme.TorchMLIRTensor)
        with w.scope():
            a = m(w(torch.ones(1, 3)))
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=leave)
        n = nn.utils.parametrizations.weight_norm(w(_linear(seed=1)))
        with w.scope():
            return a, m(w(torch.ones(1, 3))), n(w(torch.ones(1, 3)))
    same(run, way)


# ---- PyTorch's own subclass invariants (test/test_subclass.py, parametrize_tensor_cls) ----

@pytest.mark.parametrize("requires_grad", [False, True])
def test_param_invariants(requires_grad):
    x = tme.wrap(torch.randn(3)).requires_grad_(requires_grad)
    p = nn.Parameter(x, requires_grad=not requires_grad)
    assert isinstance(p, nn.Parameter) and isinstance(p, tme.TorchMLIRTensor)
    assert p.requires_grad is not requires_grad
    assert not isinstance(x, nn.Parameter) and x.requires_grad is requires_grad


@pytest.mark.parametrize("as_param", [False, True])
def test_deepcopy_repr_and_type_propagation(as_param):
    x = tme.wrap(torch.randn(3))
    if as_param:
        x = nn.Parameter(x)
    c = copy.deepcopy(x)
    assert c is not x and type(c) is type(x) and isinstance(c, nn.Parameter) is as_param
    torch.testing.assert_close(tme.unwrap(c), tme.unwrap(x))
    assert repr(x).count("TorchMLIRTensor(") == 1 and repr(x).count("Parameter") == int(as_param)
    out = x + torch.randn(3)
    assert isinstance(out, tme.TorchMLIRTensor) and not isinstance(out, nn.Parameter)


def test_module_optimization_with_parameter_containers():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.p1 = nn.Parameter(torch.randn(3))
            self.p_list = nn.ParameterList([torch.randn(3) for _ in range(3)])
            self.p_dict = nn.ParameterDict({"foo": torch.randn(3), "bar": torch.randn(3)})

        def forward(self, x):
            out = self.p1 + x
            for p in [*self.p_list, *self.p_dict.values()]:
                out = p + out
            return out

    def run(w):
        torch.manual_seed(0)
        m = w(M())
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m(w(torch.ones(3))).sum().backward()
        opt.step()
        return [p.detach() for p in m.parameters()]
    tme.reset_report()
    same(run, Way("wrap"))


def test_lazy_module_is_left_to_materialize(way):
    def run(w):
        torch.manual_seed(0)
        m = w(nn.LazyLinear(3))
        with w.scope():
            return m(w(torch.ones(2, 4)))
    same(run, way, mlir=way.name == "enable")
