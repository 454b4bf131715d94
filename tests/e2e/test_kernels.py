"""The scheduled kernel families end to end through TorchMLIRTensor, against native PyTorch: conv panels, the
dot-product conv and matmul forms and the packed matmul (a transposed weight taken as its contiguous base), batch
norm on flattened spatial dims, the vectorized exp / erf expansions and reassociated reductions."""
import os
import subprocess
import sys

import pytest
import torch

import torch_mlir_eager as tme


def _through_mlir(fn, *args):
    tme.reset_report()
    got = tme.unwrap(fn(*tme.wrap(list(args))))
    totals = tme.report().to_dict()["totals"]
    assert totals["fallback_calls"] == 0 and totals["mlir_calls"] > 0, tme.report()
    return got


@pytest.mark.parametrize("shape,weight,stride,pad", [
    ((1, 16, 14, 14), (32, 16, 3, 3), 1, 1),     # 14-wide rows: 16 x 14 tiles in row panels
    ((1, 32, 7, 7), (32, 32, 3, 3), 1, 1),       # 7x7: dot-product form
    ((2, 8, 16, 16), (16, 8, 3, 3), 2, 1),       # batch 2, stride 2
], ids=["rows14", "narrow7", "batch2-s2"])
def test_conv_matches_native(shape, weight, stride, pad):
    torch.manual_seed(0)
    x, w, b = torch.randn(shape), torch.randn(weight) * 0.1, torch.randn(weight[0])
    f = lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride=stride, padding=pad)
    want = f(x, w, b)
    got = _through_mlir(f, x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows,k", [(1, 512), (2, 64), (8, 1024), (64, 96), (128, 256)])
def test_linear_with_transposed_weight_matches_native(rows, k):
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, k), torch.randn(48, k) * 0.1, torch.randn(48)
    want = torch.nn.functional.linear(x, w, b)
    # the weight is called as w.t(): the kernel reads it untransposed, the caller's tensor stays as it is
    got = _through_mlir(torch.nn.functional.linear, x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # a second call with different values hits the same kernel and still matches
    x2 = torch.randn(rows, k)
    torch.testing.assert_close(_through_mlir(torch.nn.functional.linear, x2, w, b),
                               torch.nn.functional.linear(x2, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("s,d", [(16, 512), (40, 64)])
def test_attention_scores_with_transposed_keys_match_native(s, d):
    torch.manual_seed(0)
    q, k = torch.randn(2, s, d), torch.randn(2, s, d)
    f = lambda q, k: q @ k.transpose(-1, -2)
    torch.testing.assert_close(_through_mlir(f, q, k), f(q, k), rtol=1e-4, atol=1e-4)


def test_attention_heads_sliced_from_a_fused_projection_match_native():
    """q, k, v as views into one q/k/v projection (BERT's): k^T is neither contiguous nor a permutation of a
    contiguous tensor; the kernel takes it transposed back (copied row by row) and reads it as a transposed
    right-hand side. Values that change between calls: the copy is made per call."""
    torch.manual_seed(0)
    for _ in range(2):
        qkv = torch.randn(128, 3 * 256)
        q, k, v = qkv.view(1, 128, 3, 4, 64).permute(2, 0, 3, 1, 4)
        f = lambda q, k: (q @ k.transpose(-1, -2)).softmax(-1)
        torch.testing.assert_close(_through_mlir(f, q, k), f(q, k), rtol=1e-4, atol=1e-5)
    bmm = tme.report().to_dict()["ops"]
    assert [r for r in bmm if r["op"] == "aten.bmm.default"][0]["fallback_calls"] == 0


@pytest.mark.parametrize("hw,affine", [(7, True), (28, True), (64, True), (28, False)])
def test_batch_norm_eval_matches_native(hw, affine):
    # Eval batch norm is x * alpha + beta per channel (decompositions.nn._eval_batch_norm); at 64x64 the loop is split
    # across threads.
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(16, affine=affine).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    if affine:
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, 16, hw, hw)
    want = bn(x)
    tme.wrap(bn)
    got = _through_mlir(bn, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_batch_norm_training_still_matches_native():
    # Training mode keeps the table's own decomposition (batch statistics, running stats updated in place).
    torch.manual_seed(0)
    x = torch.randn(4, 8, 10, 10)
    rm, rv = torch.zeros(8), torch.ones(8)
    f = lambda x, rm, rv: torch.ops.aten.native_batch_norm.default(x, None, None, rm, rv, True, 0.1, 1e-5)
    want = f(x, rm.clone(), rv.clone())
    got = tme.unwrap(f(*tme.wrap([x, rm, rv])))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def _wide_f32_range(n: int = 1 << 18) -> torch.Tensor:
    """Float32 values spread over the whole range by bit pattern, plus the edges of exp and erf."""
    bits = torch.linspace(0, 2**32 - 1, n, dtype=torch.float64).to(torch.int64)
    x = (bits - (bits >= 2**31).to(torch.int64) * 2**32).to(torch.int32).view(torch.float32)
    edges = torch.tensor([0., -0., float("inf"), -float("inf"), float("nan"), 88.72283, 88.7229, 89., -87.33,
                          -103.9, -104.5, 1e-30, -1e-30, 1e-45, 3.9, 4.1, -4.1, 0.5, -0.5])
    return torch.cat([x, edges, torch.linspace(-12, 12, 4099)])


@pytest.mark.parametrize("fn,limit,atol", [(torch.exp, None, 1e-37), (torch.erf, None, 1e-37),
                                           (torch.sigmoid, None, 1e-37), (torch.nn.functional.gelu, 1e30, 2e-6)],
                         ids=["exp", "erf", "sigmoid", "gelu"])
def test_vectorized_exp_and_erf_match_native_over_the_float_range(fn, limit, atol):
    # exp and erf are our own polynomial expansions (build.expansions.expand_math), not libm: every float32 class
    # (subnormal results, overflow, infinities, NaN) must give PyTorch's answer. (gelu: native computes x * (1 +
    # erf) first and overflows to inf above 1.7e38 where torch-mlir's order does not; kept below that.)
    x = _wide_f32_range()
    if limit is not None:
        x = x[x.abs() <= limit]       # gelu: finite values only (NaN and infinities run natively: validate.py)
    got = _through_mlir(fn, x)
    torch.testing.assert_close(got, fn(x), rtol=2e-6, atol=atol, equal_nan=True)


def test_reductions_in_vectorized_order_match_native():
    torch.manual_seed(0)
    x = torch.randn(64, 1000) * 100
    for fn in (lambda t: t.sum(1), lambda t: t.amax(1), lambda t: torch.softmax(t / 100, -1),
               lambda t: torch.logsumexp(t / 100, -1), lambda t: torch.nn.functional.layer_norm(t, (1000,))):
        torch.testing.assert_close(_through_mlir(fn, x), fn(x), rtol=1e-4, atol=1e-4)


def test_split_elementwise_kernels_match_native_also_in_place():
    # large enough for split-loops (both threads write disjoint slices); relu_ may write into its own input
    torch.manual_seed(0)
    x, y = torch.randn(3, 50, 333), torch.randn(50, 333)
    for fn in (lambda a, b: a + b, lambda a, b: torch.nn.functional.gelu(a) * b, lambda a, b: a.exp() / b):
        torch.testing.assert_close(_through_mlir(fn, x, y), fn(x, y), rtol=1e-4, atol=1e-5)
    want = torch.relu(x)
    xw = tme.wrap(x.clone())
    tme.reset_report()
    xw.relu_()
    assert tme.report().to_dict()["totals"]["mlir_calls"] == 1
    torch.testing.assert_close(tme.unwrap(xw), want)


def test_one_kernel_called_from_many_threads_at_once():
    # Each thread patches its own descriptor block (kernel._Descriptors.new_block): calls of one kernel overlap, so
    # a shared block would hand one thread's pointers to another's call. The conv has a static im2col scratch
    # buffer (build.rewrites.static_scratch), so its calls must not overlap: they run under the kernel's lock.
    import threading
    a, b = torch.randn(64, 48), torch.randn(48, 40)
    x, w = torch.randn(1, 16, 32, 32), torch.randn(16, 16, 3, 3)
    conv = lambda x, w: torch.nn.functional.conv2d(x, w, padding=1)
    ops = [(torch.matmul, (a, b)), (torch.add, (a, a)), (conv, (x, w))]
    for f, args in ops:
        f(*tme.wrap(list(args)))                     # compiled once, before the threads start
    tme.reset_report()
    errors, calls = [], 100

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(calls):
            for f, args in ops:
                args = [torch.randn(t.shape, generator=g) for t in args]
                try:
                    torch.testing.assert_close(tme.unwrap(f(*tme.wrap(args))), f(*args), rtol=1e-4, atol=1e-4)
                except AssertionError as e:
                    errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    totals = tme.report().to_dict()["totals"]
    assert totals["mlir_calls"] == 4 * calls * len(ops) and totals["fallback_calls"] == 0 and totals["compiles"] == 0


def test_bfloat16_kernels_link_on_cpus_without_avx512_bf16(tmp_path):
    """LLVM's optimizer turns some bf16 arithmetic into f32 -> bf16 fptruncs, which a CPU without AVX-512 BF16 does
    with a call to libgcc's __truncsfbf2: neither the JIT nor the kernel library links libgcc, and on such a CPU
    (the CI host) heaviside, xlogy, sum and nll_loss in bf16 killed the worker ("Symbols not found"). Compiled here
    as for such a CPU (TORCH_MLIR_EAGER_TARGET_FEATURES), in a process of its own with a fresh kernel cache."""
    code = """
import torch, torch_mlir_eager as tme
g = torch.Generator().manual_seed(0)
a, b = (torch.randn(5, 1, generator=g).to(torch.bfloat16), torch.randn(5, generator=g).to(torch.bfloat16))
for f in (torch.heaviside, lambda x, y: torch.xlogy(x.abs(), y.abs() + 0.5), lambda x, y: (x * y).sum(dim=1), lambda x, y: x.float().to(torch.bfloat16)):
    torch.testing.assert_close(tme.unwrap(f(*tme.wrap([a, b]))), f(a, b))
t = tme.report().to_dict()["totals"]
print(t["mlir_calls"], t["fallback_calls"])
"""
    env = dict(os.environ, TORCH_MLIR_EAGER_TARGET_FEATURES="-avx512bf16,-avxneconvert,-amx-bf16",
               TORCH_MLIR_EAGER_CACHE_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    mlir, fallback = map(int, p.stdout.split())
    assert fallback == 0 and mlir >= 5, (p.stdout, p.stderr[-3000:])
