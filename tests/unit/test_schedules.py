"""schedules: which family a Linalg module gets, and that a schedule failure falls back to plain loops."""
import pytest
import torch

from torch_mlir_eager import validate
from torch_mlir_eager.build import graph, importer, lowering, schedules
from torch_mlir_eager.build.schedules import conv, matmul, tiles
from torch_mlir_eager.build.stages import compile_request
from torch_mlir_eager.worker.protocol import Compiled, Request

aten = torch.ops.aten


def _conv_args(c=8, f=8, h=10, k=3, stride=1, pad=1):
    x, w, b = torch.randn(1, c, h, h), torch.randn(f, c, k, k) * 0.1, torch.randn(f)
    return (x, w, b, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1)


def _linalg(ctx, func, args, dynamic=None):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    g, _ = graph.one_node_graph(func, args, {}, tensors, dynamic=dynamic)
    m = importer.import_graph(ctx, g)
    lowering.to_linalg(m)
    return m


def test_select_by_family(ctx):
    assert schedules.select(_linalg(ctx, aten.convolution.default, _conv_args())).family == "conv2d-panels"
    assert schedules.select(_linalg(ctx, aten.add.Tensor, (torch.randn(3), torch.randn(3)))) is None


@pytest.mark.parametrize("cfg", [dict(), dict(h=7, f=12), dict(k=1, stride=2, pad=0), dict(c=3, k=7, stride=2, pad=3)],
                         ids=["3x3", "odd-spatial", "1x1-s2", "7x7-s2"])
def test_scheduled_conv_qualifies(ctx, cfg):
    args = _conv_args(**cfg)
    r = compile_request(ctx, Request(op="aten.convolution.default", args=args, kwargs={}))
    assert isinstance(r, Compiled), r
    assert r.schedule == "conv2d-panels"


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_without_bias_starts_its_tiles_from_zeros(ctx, threads):
    # no bias: the conv's accumulator is a zero fill, fused into the panels and the register tiles
    args = list(_conv_args(c=16, f=16, h=8))
    args[2] = None
    r = compile_request(ctx, Request(op="aten.convolution.default", args=tuple(args), kwargs={},
                                     threads=threads))
    assert isinstance(r, Compiled), r
    assert r.schedule == "conv2d-panels" and not r.schedule_failed


def test_schedules_off_is_plain(ctx):
    r = compile_request(ctx, Request(op="aten.convolution.default", args=_conv_args(), kwargs={},
                                     schedules=False))
    assert r.schedule == "plain"


def test_broken_schedule_falls_back_to_plain(ctx, monkeypatch):
    monkeypatch.setattr(conv, "GEMM_MATCH", conv.GEMM_MATCH.replace("structured.match",
                                                                              "structured.no_such_match"))
    r = compile_request(ctx, Request(op="aten.convolution.default", args=_conv_args(), kwargs={}))
    assert isinstance(r, Compiled) and r.schedule == "plain"
    assert r.schedule_failed.startswith("conv2d-panels")


@pytest.mark.parametrize("a,b", [((128, 256), (256, 64)), ((1, 512), (512, 1000)), ((4, 32, 64), (4, 64, 32))],
                         ids=["mm", "mm-row", "bmm"])
def test_scheduled_matmul_qualifies(ctx, a, b):
    op = "aten.bmm.default" if len(a) == 3 else "aten.mm.default"
    r = compile_request(ctx, Request(op=op, args=(torch.randn(*a), torch.randn(*b)), kwargs={}))
    assert isinstance(r, Compiled), r
    assert r.schedule == "matmul"


def test_addmm_with_affine_map_aliases_gets_its_schedule(ctx):
    # addmm's Linalg module opens with #map aliases: the schedule must still be spliced in.
    args = (torch.randn(64), torch.randn(16, 32), torch.randn(64, 32).t())
    r = compile_request(ctx, Request(op="aten.addmm.default", args=args, kwargs={}))
    assert r.schedule in ("matmul", "matmul-dot") and not r.schedule_failed


def test_contraction_tolerance_scales_with_output_not_with_errors():
    # Reordered sums of K=1024 N(0,1) products differ by ~1e-5; a wrong value by O(RMS) still fails.
    want = torch.randn(64, 64) * 32
    tol = validate.tolerance(aten.mm.default, want)
    assert tol["rtol"] == 1e-4 and 1e-5 < tol["atol"] < 1e-3
    assert validate.tolerance(aten.add.Tensor, want)["atol"] == 1e-5


@pytest.mark.skipif(__import__("torch_mlir_eager.host", fromlist=["x"]).openmp_runtime() is None,
                    reason="no OpenMP runtime (intel-openmp) installed")
@pytest.mark.parametrize("op,args", [
    ("aten.convolution.default", _conv_args(c=8, f=16, h=12)),
    ("aten.mm.default", (torch.randn(64, 48), torch.randn(48, 32))),
    ("aten.bmm.default", (torch.randn(4, 16, 8), torch.randn(4, 8, 16))),
], ids=["conv", "mm", "bmm"])
def test_threaded_schedules_qualify(ctx, op, args):
    r = compile_request(ctx, Request(op=op, args=args, kwargs={}, threads=2))
    assert isinstance(r, Compiled), r
    assert r.schedule in ("conv2d-panels", "matmul")
    assert "omp.parallel" in r.llvm_ir


def test_narrow_conv_takes_the_dot_form(ctx):
    # A 7x7 output: no vector width divides its 49 columns, so the conv runs as dot products along k.
    r = compile_request(ctx, Request(op="aten.convolution.default", args=_conv_args(c=16, f=8, h=7),
                                     kwargs={}, threads=2))
    assert isinstance(r, Compiled), r
    assert r.schedule == "conv2d-dot"


def test_conv_columns_come_in_panels_of_whole_rows():
    rows, mt, nt = tiles._conv_panel(16, 16, 16, 72)
    assert 16 % rows == 0 and rows < 16 and (rows * 16) % nt == 0


@pytest.mark.parametrize("args,family", [
    ((torch.randn(1000), torch.randn(1, 512), torch.randn(1000, 512).t()), "matmul-dot"),    # few rows: dot form
    ((torch.randn(64), torch.randn(32, 512), torch.randn(64, 512).t()), "matmul-packed"),     # more: packed panels
    ((torch.randn(96), torch.randn(128, 40), torch.randn(96, 40).t()), "matmul-packed"),      # any K
], ids=["one-row", "rows32", "k40"])
def test_transposed_weight_is_taken_untransposed(ctx, args, family):
    r = compile_request(ctx, Request(op="aten.addmm.default", args=args, kwargs={}, threads=2))
    assert isinstance(r, Compiled), r
    assert r.schedule == family and r.input_perms == [None, None, (1, 0)]
    assert [tuple(m.shape) for m in r.inputs] == [tuple(args[0].shape), tuple(args[1].shape), (args[2].shape[1],
                                                                                               args[2].shape[0])]


@pytest.mark.skipif(__import__("torch_mlir_eager.host", fromlist=["x"]).openmp_runtime() is None,
                    reason="no OpenMP runtime (intel-openmp) installed")
@pytest.mark.parametrize("op,args", [
    ("aten.addmm.default", (torch.randn(256), torch.randn(32, 64), torch.randn(256, 64).t())),  # threads by panel
    ("aten.addmm.default", (torch.randn(48), torch.randn(64, 32), torch.randn(48, 32).t())),    # 3 panels: by rows
    ("aten.bmm.default", (torch.randn(3, 32, 16), torch.randn(3, 64, 16).transpose(1, 2))),     # batched, by rows
    ("aten.bmm.default", (torch.randn(4, 32, 16), torch.randn(4, 64, 16).transpose(1, 2))),     # by batch
    ("aten.bmm.default", (torch.randn(4, 32, 256), torch.randn(4, 64, 256).transpose(1, 2))),   # K > 128: panels
], ids=["by-panel", "by-rows", "bmm", "bmm-by-batch", "bmm-k256"])
def test_packed_matmul_packs_each_panel_in_its_loop(ctx, op, args):
    r = compile_request(ctx, Request(op=op, args=args, kwargs={}, threads=2))
    assert isinstance(r, Compiled), r
    assert r.schedule == "matmul-packed" and not r.schedule_failed
    assert "omp.parallel" in r.llvm_ir


def test_without_schedules_a_transposed_weight_is_copied_by_pytorch(ctx):
    args = (torch.randn(768), torch.randn(128, 256), torch.randn(768, 256).t())
    r = compile_request(ctx, Request(op="aten.addmm.default", args=args, kwargs={}, schedules=False))
    assert isinstance(r, Compiled) and r.input_perms is None and r.schedule == "plain"


@pytest.mark.parametrize("transposed,k", [(False, 40), (True, 40), (True, 48)],
                         ids=["plain", "transposed", "transposed-vector-pack"])
def test_packed_matmul_matches_native(ctx, transposed, k):
    # K % 16 == 0: a transposed right-hand side is packed in 16 x 16 blocks transposed in registers.
    from torch_mlir_eager.kernel import Kernel, TensorMeta
    torch.manual_seed(0)
    a = torch.randn(3, 24, k)
    b = torch.randn(3, 64, k).transpose(1, 2) if transposed else torch.randn(3, k, 64)
    perms = [None, (0, 2, 1)] if transposed else None
    base = b.transpose(1, 2) if transposed else b          # what the kernel takes: contiguous either way
    m = importer.import_graph(ctx, graph.one_node_graph(aten.bmm.default, (a, b), {}, [a, b], perms)[0])
    lowering.to_linalg(m)
    sched = schedules.select(m, 2) if transposed else matmul._packed_schedule((3, 24, 64), k, 2, transposed=False)
    assert sched.family == "matmul-packed"
    assert ("lower_transpose" in sched.script) == (transposed and k % 16 == 0)
    kern = Kernel(str(schedules.to_llvm(m, sched)), [TensorMeta.of(a), TensorMeta.of(base)],
                  [TensorMeta((3, 24, 64), torch.float32)])
    torch.testing.assert_close(kern([a, base])[0], torch.bmm(a, b), rtol=1e-4, atol=1e-4)


def test_large_elementwise_ops_are_split_across_threads_and_reductions_are_not(ctx):
    x, y = torch.randn(1, 64, 56, 56), torch.randn(1, 64, 56, 56)
    r = compile_request(ctx, Request(op="aten.add.Tensor", args=(x, y), kwargs={}, threads=2))
    assert isinstance(r, Compiled) and r.schedule == "split-loops", r
    r = compile_request(ctx, Request(op="aten._softmax.default", args=(x, -1, False), kwargs={},
                                     threads=2))
    assert isinstance(r, Compiled) and r.schedule == "plain"
    small = torch.randn(8, 8)
    r = compile_request(ctx, Request(op="aten.relu.default", args=(small,), kwargs={}, threads=2))
    assert isinstance(r, Compiled) and r.schedule == "plain"


def test_addmm_bias_becomes_the_accumulator(ctx):
    # torch-mlir lowers addmm to a matmul from zeros and a second pass adding the bias: packed, the matmul starts
    # from the bias instead, and the second pass is gone (the one addf left is the multiply-accumulate's).
    m = _linalg(ctx, aten.addmm.default, (torch.randn(64), torch.randn(32, 48), torch.randn(48, 64)))
    assert str(m).count("arith.addf") == 1 and "linalg.fill" in str(m)
    assert matmul.pack_rhs(m, 32)
    text = str(m)
    assert text.count("arith.addf") == 1 and "tme.init" in text and "linalg.fill" not in text


def test_addmm_with_scaled_bias_keeps_its_own_pass(ctx):
    args = (torch.randn(64), torch.randn(32, 48), torch.randn(48, 64))
    g, _ = graph.one_node_graph(aten.addmm.default, args, {"beta": 0.5}, list(args))
    m = importer.import_graph(ctx, g)
    lowering.to_linalg(m)
    assert matmul.pack_rhs(m, 32)
    assert str(m).count("arith.addf") == 2 and "arith.mulf" in str(m)


@pytest.mark.parametrize("case", [
    ("aten.mm.default", (torch.randn(37, 24), torch.randn(24, 64)), ((0,), ()), "matmul"),
    ("aten.mm.default", (torch.randn(40, 24), torch.randn(24, 64)), ((0, 1), (0,)), "matmul"),      # K too
    ("aten.bmm.default", (torch.randn(3, 21, 16), torch.randn(3, 16, 32)), ((0, 1), (0,)), "matmul"),
    ("aten.addmm.default", (torch.randn(48), torch.randn(9, 32), torch.randn(48, 32).t()), ((), (0,), ()),
     "matmul-packed"),
    ("aten.convolution.default", _conv_args(c=4, f=16, h=13), ((2, 3), (), ()), "conv2d-rows-dynamic"),
    ("aten.convolution.default", _conv_args(c=3, f=8, h=15, k=7, stride=2, pad=3)[:2] + (None,) +
     _conv_args()[3:], ((2, 3), ()), "conv2d-rows-dynamic"),
    # an image whose im2col is too big to take whole (conv.WHOLE_BYTES): by output row
    ("aten.convolution.default", _conv_args(c=64, f=16, h=32), ((2, 3), (), ()), "conv2d-rows-dynamic"),
    # rows and columns both dynamic (attention's q @ k^T, its k transposed): PEELED_2D
    ("aten.bmm.default", (torch.randn(4, 37, 16), torch.randn(4, 37, 16).transpose(1, 2)), ((1,), (2,)), "matmul"),
    ("aten.mm.default", (torch.randn(24, 16), torch.randn(16, 45)), ((), (1,)), "matmul"),           # columns only
    ("aten.add.Tensor", (torch.randn(4, 40, 512), torch.randn(4, 40, 512)), ((1,), (1,)), "split-loops"),
], ids=["mm-rows", "mm-rows-k", "bmm-batch-rows", "addmm-transposed", "conv-3x3", "conv-7x7-s2-nobias",
        "conv-by-row", "bmm-rows-columns", "mm-columns", "add-split"])
def test_dynamic_schedules_qualify(ctx, case):
    """Contractions with dynamic sizes get their families' schedules (peeled partial tiles), qualified at the
    call's sizes and at the partial-tile probes."""
    op, args, dyn, family = case
    r = compile_request(ctx, Request(op=op, args=args, kwargs={}, dynamic=dyn, threads=2))
    assert isinstance(r, Compiled), r
    assert r.dynamic and r.schedule == family, (r.schedule, r.schedule_failed)


def test_dynamic_results_are_written_into_the_callers_buffer(ctx):
    """A result with dynamic sizes is hoisted to the out-param the caller allocates (hoist-dynamic-allocs), not
    computed into a malloc'd buffer and copied (a dynamic add ran at 2x its static kernel)."""
    args = (torch.randn(4, 40, 64), torch.randn(4, 40, 64))
    r = compile_request(ctx, Request(op="aten.add.Tensor", args=args, kwargs={}, dynamic=((1,), (1,)), threads=1))
    assert isinstance(r, Compiled) and r.dynamic, r
    assert "llvm.call @malloc" not in r.llvm_ir and "llvm.call @aligned_alloc" not in r.llvm_ir


def test_dynamic_conv_form_follows_the_calls_sizes(ctx):
    """The dynamic conv plan takes the sizes of the call it is compiled for (the hint): a small image's im2col
    whole (panel_rows -1, CONV_WHOLE_DYNAMIC), a big one by output row, whose register tile, for a row narrower
    than the widest tile, is that row rounded up to whole vectors."""
    from torch_mlir_eager.host import avx512
    m = _linalg(ctx, aten.convolution.default, _conv_args(c=8, f=16, h=7), dynamic=((2, 3), (), ()))
    wide = schedules.select(m, 1)
    small = schedules.select(m, 1, [(1, 16, 7, 7)])
    tall = schedules.select(m, 1, [(1, 16, 4096, 7)])        # 72 x 4096*7 floats of im2col: by row
    assert wide.family == small.family == tall.family == "conv2d-rows-dynamic"
    assert small.panel_rows == -1 and wide.panel_rows == tall.panel_rows == 0
    vec = 16 if avx512() else 8
    assert f"tile_sizes [1, 16, {vec}, 0]" in tall.script or f"tile_sizes [1, 8, {vec}, 0]" in tall.script, \
        tall.script
    assert tall.script != wide.script


def test_static_scripts_are_unchanged_by_peeling():
    """The peeled variant is only for dynamic rows: a static plan's script has no peel."""
    from torch_mlir_eager.build.schedules.base import _script
    s = _script("", "mm", [8, 32], [0, 0])
    assert "loop.peel" not in s and "vector_sizes" not in s
    p = _script("", "mm", [8, 32], [0, 0], peel='ops{["linalg.matmul"]}')
    assert "transform.loop.peel %rows" in p and "vector_sizes [8, 32, 1]" in p


def test_dynamic_elementwise_kernels_run_one_flat_loop(ctx):
    """A dynamic elementwise kernel is flattened like a static one (one loop over all its elements, not a nest
    whose inner loop over a ?-wide row is mostly remainder code), and computed in the out-param: the flattened
    result's expand_shape(collapse_shape(alloc)) is the out-param (relu 1x512x?x? had a nest of 4, a malloc'd
    temporary and a 4-deep copy loop)."""
    args = (torch.randn(1, 512, 7, 7),)
    r = compile_request(ctx, Request(op="aten.relu.default", args=args, kwargs={}, dynamic=((2, 3),), threads=1))
    assert isinstance(r, Compiled) and r.dynamic, r
    assert r.llvm_ir.count('llvm.icmp "slt"') == 1, r.llvm_ir
    assert "llvm.call @malloc" not in r.llvm_ir and "llvm.call @aligned_alloc" not in r.llvm_ir


def _generics(m) -> list:
    from torch_mlir_eager.build.rewrites import find_ops
    return [[str(t) for t in op.attributes["iterator_types"]]
            for op in find_ops(m, lambda op: op.name == "linalg.generic")]


def test_dynamic_image_dims_collapse_into_one_loop(ctx):
    """A mean over a dynamic H x W (ResNet's pooling before fc) reduces over one loop of H*W, not a nest whose
    inner loop is 7 long (2.1-2.6x the static kernel); per-channel ops over it (batch norm) likewise. The kernel
    still qualifies against native."""
    from torch_mlir_eager.build import collapse
    x = torch.randn(1, 16, 7, 7)
    m = _linalg(ctx, aten.mean.dim, (x, [2, 3], True), dynamic=((2, 3),))
    assert any(g.count("#linalg.iterator_type<reduction>") == 2 for g in _generics(m)), _generics(m)
    assert collapse.dynamic_dims(m) >= 1
    assert any(g.count("#linalg.iterator_type<reduction>") == 1 and len(g) == 3 for g in _generics(m)), _generics(m)
    # static dims stay as they are
    s = _linalg(ctx, aten.mean.dim, (x, [2, 3], True))
    assert collapse.dynamic_dims(s) == 0
    args = (torch.randn(1, 16, 9, 7), torch.rand(16), torch.rand(16), torch.rand(16), torch.rand(16) + 0.5, False,
            0.1, 1e-5)
    for op, a, dyn in (("aten.mean.dim", (x, [2, 3], True), ((2, 3),)),
                       ("aten.native_batch_norm.default", args, ((2, 3), (), (), (), ()))):
        r = compile_request(ctx, Request(op=op, args=a, kwargs={}, dynamic=dyn, threads=1))
        assert isinstance(r, Compiled) and r.dynamic, r


def test_dynamic_linear_rows_are_packed_and_written_in_place(ctx):
    """A linear layer whose rows vary gets the static kernel's packed GEMM (M = 512, N = 1024, K = 256: 5.7 ms
    unpacked against 3.4 static), its bias in the register tiles, and writes its result into the out-param
    instead of a temporary copied after (static kernels too: the copy was a pass over the whole result)."""
    args = (torch.randn(64), torch.randn(40, 32), torch.randn(64, 32).t())
    for dyn in (None, ((), (0,), ())):
        kw = dict(dynamic=dyn) if dyn else {}
        r = compile_request(ctx, Request(op="aten.addmm.default", args=args, kwargs={}, threads=1, **kw))
        assert isinstance(r, Compiled) and r.schedule == "matmul-packed", r
        assert r.llvm_ir.count("llvm.call @aligned_alloc") == 1, dyn        # the panel's, not a result temporary


def test_eval_batch_norm_compiles_its_decomposition_only(ctx):
    """An eval batch norm goes straight to the decomposition (per-channel scale and shift, then one multiply-add
    per element): the direct lowering fails for static shapes and computes rsqrt per element for dynamic ones."""
    from torch_mlir_eager.decompositions import decompose_only
    func = aten.native_batch_norm.default
    names = [a.name for a in func._schema.arguments]
    x, w = torch.randn(1, 4, 5, 5), torch.rand(4)
    assert decompose_only(func, dict(zip(names, (x, w, w, w, w, False, 0.1, 1e-5))))
    assert not decompose_only(func, dict(zip(names, (x, w, w, w, w, True, 0.1, 1e-5))))
    assert not decompose_only(func, dict(zip(names, (x, w, w, None, None, False, 0.1, 1e-5))))
