"""The worker-side stages one by one: FX graph + importer, lowering, kernel marshalling, qualification."""
import pytest
import torch

from torch_mlir_eager.build import expansions, graph, importer, lowering, rewrites
from torch_mlir_eager.build.stages import compile_request
from torch_mlir_eager.worker.protocol import Compiled, Failed, Request
from torch_mlir_eager.errors import CompileFailure
from torch_mlir_eager.kernel import Kernel, TensorMeta

aten = torch.ops.aten


def _module(ctx, func, args):
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    g, _ = graph.one_node_graph(func, args, {}, tensors)
    return importer.import_graph(ctx, g)


def test_import_one_node(ctx):
    m = _module(ctx, aten.mm.default, (torch.randn(3, 4), torch.randn(4, 5)))
    text = str(m)
    assert "torch.aten.mm" in text and "!torch.vtensor<[3,5],f32>" in text


def test_meta_failure_is_typed(ctx):
    with pytest.raises(CompileFailure) as e:
        _module(ctx, aten.mm.default, (torch.randn(3, 4), torch.randn(5, 5)))
    assert e.value.category == "meta"


def test_lowering_to_linalg_and_llvm(ctx):
    m = _module(ctx, aten.add.Tensor, (torch.randn(2, 3), torch.randn(3)))
    lowering.to_linalg(m)
    assert "linalg.generic" in str(m)
    m = lowering.to_llvm(m)
    assert "llvm.func @main" in str(m) and "_mlir_ciface_main" in str(m)


def test_lowering_failure_is_typed(ctx):
    # No Torch-dialect op for an FFT: the importer emits torch.operator, which cannot be legalized.
    m = _module(ctx, aten._fft_r2c.default, (torch.randn(8), [0], 0, True))
    with pytest.raises(CompileFailure) as e:
        lowering.to_linalg(m)
    assert e.value.category == "lowering"


def test_kernel_runs_in_place_on_torch_memory(ctx):
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    m = _module(ctx, aten.mm.default, (a, b))
    lowering.to_linalg(m)
    m = lowering.to_llvm(m)
    k = Kernel(str(m), [TensorMeta.of(a), TensorMeta.of(b)], [TensorMeta((3, 5), torch.float32)])
    (out,) = k([a, b])
    torch.testing.assert_close(out, torch.mm(a, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("func,shapes", [
    (aten.relu.default, [(1, 512, 7, 7)]),
    (aten.add.Tensor, [(2, 3, 5, 7), (2, 3, 5, 7)]),
    (aten.mul.Tensor, [(1, 64, 14, 14), (1, 64, 14, 14)]),
])
def test_elementwise_nests_become_one_loop(ctx, func, shapes):
    """A purely elementwise op of rank >= 2 is lowered as one flat loop (LLVM vectorizes the innermost loop
    only), with the same results as native."""
    args = tuple(torch.randn(s) for s in shapes)
    m = _module(ctx, func, args)
    lowering.to_linalg(m)
    assert rewrites.flatten_elementwise(m) == 1
    text = str(m)
    n = 1
    for d in shapes[0]:
        n *= d
    assert f"tensor<{n}xf32>" in text and 'iterator_types = ["parallel"]' in text
    llvm = lowering.to_llvm(m)
    assert str(llvm).count('llvm.icmp "slt"') == 1        # one loop, not one per dim
    want = func(*args)
    k = Kernel(str(llvm), [TensorMeta.of(a) for a in args], [TensorMeta.of(want)])
    (out,) = k(list(args))
    torch.testing.assert_close(out, want)


def test_broadcasting_ops_keep_their_loop_nest(ctx):
    m = _module(ctx, aten.add.Tensor, (torch.randn(2, 3, 4), torch.randn(4)))
    lowering.to_linalg(m)
    assert rewrites.flatten_elementwise(m) == 0


def test_compile_request_qualifies_against_native(ctx):
    a = torch.randn(4, 4)
    ok = compile_request(ctx, Request(op="aten.tanh.default", args=(a,), kwargs={}))
    assert isinstance(ok, Compiled)
    bad = compile_request(ctx, Request(op="aten.tanh.default", args=(a,), kwargs={}, inject="wrong"))
    assert isinstance(bad, Failed) and bad.category == "mismatch"


def test_non_contiguous_output_strides(ctx):
    a = torch.randn(4, 3).t()           # elementwise ops keep the input's layout
    r = compile_request(ctx, Request(op="aten.neg.default", args=(a,), kwargs={}))
    llvm_ir, ins, outs = r.llvm_ir, r.inputs, r.outputs
    assert outs[0].strides == torch.neg(a).stride() and not outs[0].contiguous
    (out,) = Kernel(llvm_ir, ins, outs)([a.contiguous()])
    assert out.stride() == torch.neg(a).stride()
    torch.testing.assert_close(out, torch.neg(a))


def _parse(ctx, text):
    from torch_mlir import ir
    with ctx:
        return ir.Module.parse(text)


def test_large_temporaries_become_static_buffers_except_in_parallel_loops(ctx):
    m = _parse(ctx, """func.func @f() {
      scf.forall (%i) in (2) { %a = memref.alloc() : memref<100000xf32> }
      %b = memref.alloc() : memref<100000xf32>
      %c = memref.alloc() : memref<16xf32>
      return }""")
    assert rewrites.static_scratch(m) == 1
    text = str(m)
    # the per-thread buffer and the small one stay allocations; the large serial one is a global
    assert text.count("memref.alloc()") == 2 and "memref.get_global @tme_scratch0" in text


def test_result_computed_through_a_reshape_is_written_in_place(ctx):
    m = _parse(ctx, """func.func @f(%x: memref<2x6xf32>, %out: memref<2x2x3xf32>) {
      %t = memref.alloc() : memref<2x6xf32>
      memref.copy %x, %t : memref<2x6xf32> to memref<2x6xf32>
      %v = memref.expand_shape %t [[0], [1, 2]] output_shape [2, 2, 3] : memref<2x6xf32> into memref<2x2x3xf32>
      memref.copy %v, %out : memref<2x2x3xf32> to memref<2x2x3xf32>
      return }""")
    assert rewrites.write_results_in_place(m) == 1
    text = str(m)
    assert "memref.alloc" not in text and text.count("memref.copy") == 1 and "memref.collapse_shape %arg1" in text


def test_exp_and_erf_are_expanded_inline(ctx):
    m = _parse(ctx, """func.func @main(%x: f32, %y: f64) -> (f32, f32, f64) {
      %a = math.exp %x : f32
      %b = math.erf %x : f32
      %c = math.exp %y : f64
      return %a, %b, %c : f32, f32, f64 }""")
    assert expansions.expand_math(m) == 2
    text = str(m)
    # f32 exp and erf became arith ops in @main (no call, no helper function left); f64 keeps libm's exp
    assert "math.exp %arg1 : f64" in text and "math.erf" not in text and text.count("math.exp") == 1
    assert "call" not in text and "tme_exp_f32" not in text and "arith.divf" in text


def test_only_the_reduction_combiner_is_reassociated(ctx):
    m = _parse(ctx, """func.func @main(%x: tensor<4x8xf32>, %init: tensor<4xf32>) -> tensor<4xf32> {
      %r = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i)>],
          iterator_types = ["parallel", "reduction"]} ins(%x : tensor<4x8xf32>) outs(%init : tensor<4xf32>) {
      ^bb0(%in: f32, %acc: f32):
        %sq = arith.mulf %in, %in : f32
        %s = arith.addf %acc, %sq : f32
        linalg.yield %s : f32
      } -> tensor<4xf32>
      return %r : tensor<4xf32> }""")
    assert rewrites.reassociate_reductions(m) == 1
    text = str(m)
    assert "arith.addf %out, %1 fastmath<reassoc,contract> : f32" in text
    assert "arith.mulf %in, %in : f32" in text         # the math feeding the sum keeps its rounding


def test_bfloat16_conversions_need_no_libgcc(ctx):
    """LLVM lowers an f32 -> bf16 truncation to a call to __truncsfbf2 on CPUs without AVX-512 BF16; the JIT does
    not link libgcc, so the kernel died with "Symbols not found: [ __truncsfbf2 ]" (seen on an AVX2 host). Both
    pipelines expand bf16 conversions into integer ops (arith-expand include-bf16) instead. Checked on the LLVM
    dialect, not by running it (which would crash this process without the fix)."""
    from torch_mlir_eager.build.schedules.pipeline import VECTOR_TO_LLVM
    args = (torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(4, 64, dtype=torch.bfloat16))
    m = _module(ctx, aten.add.Tensor, args)
    lowering.to_linalg(m)
    text = str(lowering.to_llvm(m))
    assert "llvm.fadd" in text
    assert not any(("fptrunc" in line or "fpext" in line) and "bf16" in line for line in text.splitlines())
    assert "func.func(arith-expand{include-bf16=true})" in VECTOR_TO_LLVM


def test_a_dynamic_pointwise_kernel_may_write_in_place(ctx):
    """A dynamic pointwise kernel's size arithmetic (tensor.dim) does not stop it writing into its input: relu_
    and add_ ran on a result copied back (ResNet18 at dynamic=always: 48 ms of copies in a 240 ms forward)."""
    args = (torch.randn(1, 8, 20, 20),)
    r = compile_request(ctx, Request(op="aten.relu.default", args=args, kwargs={}, dynamic=((1, 2, 3),), threads=1))
    assert isinstance(r, Compiled) and r.dynamic and r.inplace_safe is True, r


def test_a_kernel_with_an_unresolved_symbol_fails_to_jit_cleanly():
    """The JIT answers a lookup whose module calls a symbol nobody defines with address 0 (and a line on stderr),
    not an exception: the worker called it and died (SIGSEGV) instead of failing the compile."""
    from torch_mlir_eager import jit
    src = """module {
  llvm.func @tme_nowhere()
  llvm.func @_mlir_ciface_main() attributes {llvm.emit_c_interface} {
    llvm.call @tme_nowhere() : () -> ()
    llvm.return
  }
}"""
    with pytest.raises(CompileFailure, match="did not link"):
        jit.engine(src)
