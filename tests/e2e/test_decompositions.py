"""Ops torch-mlir has no Torch-dialect op for, compiled through our own decompositions (decompositions/, top=True), against
native PyTorch on the values where a formula would go wrong: NaN, infinities, signed zeros, ties, overflow."""
import math

import pytest
import torch

import torch_mlir_eager as tme

from helpers import check_op, row

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _fresh_report():
    tme.reset_report()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hypot_edges(dtype):
    a = torch.tensor([3.0, 0.0, INF, NAN, -INF, 1e-30, 3e38, -2.0, 1e300 if dtype == torch.float64 else 1e30],
                     dtype=dtype)
    b = torch.tensor([4.0, 0.0, NAN, INF, 5.0, 1e-30, 3e38, 0.0, 1e300 if dtype == torch.float64 else 1e30],
                     dtype=dtype)
    check_op(torch.hypot, a, b, rtol=1e-6 if dtype == torch.float32 else 1e-12)
    check_op(torch.hypot, b.flip(0), a)                 # the kernel again, other values
    assert row("aten.hypot.default")["mlir_calls"] == 2


def test_angle_of_real_and_integer_tensors():
    check_op(torch.angle, torch.tensor([1.0, -2.0, 0.0, -0.0, NAN, -INF, INF]))
    check_op(torch.angle, torch.tensor([3, -1, 0]))
    assert row("aten.angle.default")["mlir_calls"] == 2


def test_isin_small_through_mlir_large_natively():
    x = torch.tensor([1.0, 2.0, NAN, 4.0, -0.0])
    t = torch.tensor([0.0, NAN, 4.0, 7.0])
    check_op(torch.isin, x, t)
    check_op(lambda a, b: torch.isin(a, b, invert=True), x, t)
    check_op(torch.isin, torch.randint(0, 50, (6, 7)), torch.randint(0, 50, (20,)))
    assert row("aten.isin.Tensor_Tensor")["mlir_calls"] == 3
    check_op(torch.isin, torch.randint(0, 9, (3000,)), torch.randint(0, 9, (2000,)))   # 6M pairs: native
    assert row("aten.isin.Tensor_Tensor")["fallback_calls"] == 1


def test_block_diag_mixed_ranks_and_dtypes():
    check_op(lambda *ts: torch.block_diag(*ts), torch.randn(2, 3), torch.tensor(5.0), torch.randn(4),
             torch.randint(0, 3, (2, 2)), torch.randn(0, 2))
    assert row("aten.block_diag.default")["mlir_calls"] == 1


@pytest.mark.parametrize("reduce", ["prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_index_reduce(reduce, include_self):
    x = torch.randn(5, 4)
    src = torch.randn(6, 4)
    idx = torch.tensor([0, 2, 2, 4, 0, 0])         # repeats, and rows 1 and 3 never hit
    check_op(lambda a, s: a.index_reduce(0, idx, s, reduce, include_self=include_self), x, src)
    check_op(lambda a, s: a.index_reduce(1, torch.tensor([3, 0, 3]), s, reduce, include_self=include_self),
             x, torch.randn(5, 3))
    assert row("aten.index_reduce.default")["mlir_calls"] == 2


@pytest.mark.parametrize("op", [torch.cummax, torch.cummin], ids=["cummax", "cummin"])
def test_cumulative_extremes_ties_nan_and_dims(op):
    v = torch.tensor([1.0, 3.0, 3.0, 1.0, NAN, 2.0, NAN, -INF, 5.0])
    check_op(lambda t: op(t, 0), v)
    check_op(lambda t: op(t, 0), torch.tensor([2, 2, 1, 1, 3, 3, 0]))              # ties: the last index
    x = torch.randint(0, 4, (3, 17, 5)).float()
    for d in (0, 1, -1):
        check_op(lambda t: op(t, d), x)
    check_op(lambda t: op(t, 0), torch.tensor(7.0))
    name = "aten.cummax.default" if op is torch.cummax else "aten.cummin.default"
    assert row(name)["mlir_calls"] == 6 and row(name)["fallback_calls"] == 0


def test_cumulative_extreme_kernel_on_new_values():
    # the doubling scan must not depend on the values the kernel was qualified with
    torch.manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 3, (64,)).float()
        x[torch.randint(0, 64, (2,))] = NAN
        check_op(lambda t: torch.cummax(t, 0), x)
    assert row("aten.cummax.default")["cache_hits"] >= 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op,fn", [("aten.lgamma.default", torch.lgamma), ("aten.erfc.default", torch.erfc)])
def test_c_library_functions(op, fn, dtype):
    """Ops computed by the C library (decompositions' _libm): poles, zeros, signs, tails, NaN and infinities, qualified on
    ordinary values first, and on an integer input."""
    check_op(fn, torch.linspace(0.25, 9.0, 12, dtype=dtype))
    edges = torch.tensor([0.0, -0.0, -1.0, -2.5, 1.0, 2.0, 0.5, 1e-30, 30.0, 1e10, 3e38, -3e38, NAN, INF, -INF, 7.0],
                         dtype=dtype)
    check_op(fn, edges)
    check_op(fn, edges.flip(0))                  # the kernel again
    check_op(fn, torch.arange(-3, 5))
    assert row(op)["mlir_calls"] == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", ["j0", "j1", "y0", "y1"])
def test_bessel_functions_within_the_range_where_libm_agrees(n, dtype):
    """The C library's Bessel functions agree with PyTorch's up to |x| = 65536 (float32) and 5 (float64): calls
    beyond, or with a NaN, run natively (validate.KNOWN_WRONG)."""
    fn = getattr(torch.special, f"bessel_{n}")
    limit = 5.0 if dtype == torch.float64 else 65536.0
    inside = torch.cat([torch.linspace(-limit, limit, 40, dtype=dtype), torch.tensor([0.0, -0.0, 1e-30], dtype=dtype)])
    check_op(fn, inside)
    check_op(fn, inside.flip(0))
    assert row(f"aten.special_bessel_{n}.default")["mlir_calls"] == 2
    for bad in (limit * 1.5, NAN, INF, -INF):
        check_op(fn, torch.where(inside == inside[3], torch.tensor(bad, dtype=dtype), inside))
    assert row(f"aten.special_bessel_{n}.default")["mlir_calls"] == 2


def test_nextafter_and_mvlgamma():
    a = torch.tensor([[0.0, -0.0, 1.0, NAN, INF, -INF, 1e-45, 3.4e38]]).repeat(2, 1)
    b = torch.tensor([1.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, INF])
    check_op(torch.nextafter, a, b, rtol=0, atol=0)                   # one ulp: exact
    check_op(torch.nextafter, b.view(1, 8), a, rtol=0, atol=0)
    assert row("aten.nextafter.default")["mlir_calls"] == 2
    check_op(lambda x: torch.mvlgamma(x, 3), torch.linspace(1.1, 20.0, 9))
    assert row("aten.mvlgamma.default")["mlir_calls"] == 1


def test_a_carrier_op_used_for_its_own_sake_is_refused():
    from torch.fx.experimental.proxy_tensor import make_fx

    from torch_mlir_eager.decompositions import libm
    from torch_mlir_eager.errors import CompileFailure

    def both(x):
        return libm._libm("erfc", x) + torch.ops.aten.erf.default(x)
    with pytest.raises(CompileFailure, match="besides its use as a carrier"):
        libm._traced(lambda: make_fx(both, tracing_mode="fake")(torch.randn(3)))
    gm = libm._traced(lambda: make_fx(lambda x: libm._libm("erfc", x) * 2, tracing_mode="fake")(
        torch.randn(3)))
    assert gm.graph.tme_libm == {"math.erf": "erfc"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["erfcx", "log_ndtr", "spherical_bessel_j0"])
def test_erfc_based_special_functions_over_their_whole_range(name, dtype):
    """Our float64 formulas (decompositions' _erfcx, _log_ndtr, _spherical_bessel_j0) against PyTorch's over 30 orders of
    magnitude each side, the asymptotic switch at 26, zeros, NaN and infinities, after qualifying on [-3, 3]."""
    fn = getattr(torch.special, name)
    mag = torch.logspace(-30, 38.5, 400, dtype=torch.float64)
    x = torch.cat([mag, -mag, torch.linspace(-40, 40, 401, dtype=torch.float64),
                   torch.tensor([26.0, 25.99, 26.01, 0.0, -0.0, NAN, INF, -INF], dtype=torch.float64)]).to(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    check_op(fn, torch.linspace(-3, 3, x.numel(), dtype=dtype), **tol)
    check_op(fn, x, **tol)
    assert row(f"aten.special_{name}.default")["mlir_calls"] == 2


POLYNOMIALS = [f"chebyshev_polynomial_{k}" for k in "tuvw"] + [f"shifted_chebyshev_polynomial_{k}" for k in "tuvw"] + [
    "hermite_polynomial_h", "hermite_polynomial_he", "laguerre_polynomial_l", "legendre_polynomial_p"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", POLYNOMIALS)
def test_orthogonal_polynomials_every_degree_and_edge(name, dtype):
    """Degrees -3 .. 16 (fractional ones truncate), at the interval's ends (+-1, 0 for the shifted kinds), just
    inside them, outside, NaN and infinities, against PyTorch; scalar degree and scalar x; a degree past
    validate.POLY_MAX_DEGREE runs natively."""
    fn = getattr(torch.special, name)
    xs = torch.tensor([-1.0, 1.0, 0.0, -0.0, 0.5, 0.3, -0.7, 0.999999, -0.999999, 1e-9, 1.5, -2.5, 7.0, NAN, INF, -INF,
                       0.25, 0.75], dtype=dtype)
    ns = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0, 2.7, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0, 16.0, 16.9],
                      dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    op = f"aten.special_{name}.default"
    check_op(fn, xs.view(-1, 1), ns.view(1, -1), **tol)                    # every x with every degree
    check_op(fn, xs.flip(0).view(-1, 1), ns.view(1, -1), **tol)
    assert row(op)["mlir_calls"] == 2
    check_op(lambda x: fn(x, 7), xs, **tol)
    check_op(lambda n: fn(0.3, n), ns, **tol)
    assert row(f"aten.special_{name}.n_scalar")["mlir_calls"] == 1
    assert row(f"aten.special_{name}.x_scalar")["mlir_calls"] == 1
    check_op(fn, xs.view(-1, 1), torch.tensor([3.0, 17.0], dtype=dtype))  # degree 17: natively
    assert row(op)["fallback_calls"] == 1


def test_copysign_and_signbit_read_the_sign_bit_of_zeros_and_nans():
    """libm's copysign through a carrier: -0.0 and a negative NaN keep their sign bit (assert_close cannot see
    it, so the bits are compared)."""
    neg_nan = -torch.tensor(NAN)
    a = torch.tensor([1.0, -2.0, 0.0, -0.0, NAN, 3.0, INF, 5.0])
    b = torch.cat([torch.tensor([-0.0, 0.0, -1.0, 1.0, 1.0, -INF, -3.0]), neg_nan.view(1)])
    for got, want in ((check_op(torch.copysign, a, b), torch.copysign(a, b)),
                      (check_op(torch.copysign, b, a), torch.copysign(b, a)),
                      (check_op(lambda x: torch.copysign(x, -1.5), a), torch.copysign(a, -1.5))):
        assert torch.equal(torch.signbit(tme.unwrap(got)), torch.signbit(want))
    for x in (a, b, b.double()):
        got = tme.unwrap(check_op(torch.signbit, x))
        assert torch.equal(got, torch.signbit(x))
    check_op(torch.signbit, torch.tensor([-3, 0, 4]))
    assert row("aten.copysign.Tensor")["mlir_calls"] == 2 and row("aten.copysign.Scalar")["mlir_calls"] == 1
    assert row("aten.signbit.default")["mlir_calls"] == 4


@pytest.mark.parametrize("fn", [torch.fmax, torch.fmin])
def test_fmax_fmin_nan_and_signed_zeros(fn):
    """A NaN loses unless both are; equal values give a (fmax(-0., 0.) is -0.): torch-mlir's own lowering returned
    b there, so these compile through ours only (decompositions/, only=True)."""
    a = torch.tensor([-0.0, 0.0, 1.0, NAN, NAN, 2.0, -INF, 3.0])
    b = torch.tensor([0.0, -0.0, NAN, 2.0, NAN, 2.0, INF, -1.0])
    for x, y in ((a, b), (b, a), (a.view(2, 4), b[:4]), (a.double(), b)):
        got = tme.unwrap(check_op(fn, x, y))
        assert torch.equal(torch.signbit(got), torch.signbit(fn(x, y)))
    check_op(fn, torch.tensor([3, -1, 5]), torch.tensor([2, 2, 2]))
    assert row(f"aten.{fn.__name__}.default")["mlir_calls"] == 5


BESSEL_IK = ["i0", "special.i0e", "special.i1", "special.i1e", "special.modified_bessel_i0",
             "special.modified_bessel_i1", "special.modified_bessel_k0", "special.modified_bessel_k1",
             "special.scaled_modified_bessel_k0", "special.scaled_modified_bessel_k1"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", BESSEL_IK)
def test_modified_bessel_functions_over_their_whole_range(name, dtype):
    """Series below 10-15, Hankel's expansion above (decompositions' _bessel_i/_bessel_k): against PyTorch from 1e-30 to
    3e38 both signs, across the switch points, where exp overflows (88.72 in float32, 709.78 in float64), at 0,
    NaN and infinities; qualified on [-3, 3] first."""
    fn = torch.i0 if name == "i0" else getattr(torch.special, name.split(".")[1])
    mag = torch.logspace(-30, 38.5, 300, dtype=torch.float64)
    x = torch.cat([mag, -mag, torch.linspace(-30, 30, 241, dtype=torch.float64),
                   torch.tensor([9.99, 10.0, 10.01, 14.99, 15.0, 15.01, 88.72, 88.7228, 88.72284, 88.723, 89.5, 91.9,
                                 92.1, 103.9, 104.1, 709.78, 709.79, 713.9, 714.1, 0.0, -0.0, NAN, INF, -INF],
                                dtype=torch.float64)]).to(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    check_op(fn, torch.linspace(-3, 3, x.numel(), dtype=dtype), **tol)
    check_op(fn, x, **tol)
    op = "aten.i0.default" if name == "i0" else f"aten.special_{name.split('.')[1]}.default"
    assert row(op)["mlir_calls"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_digamma_polygamma_over_their_whole_range(n, dtype):
    """PyTorch's recurrences and zeta sum re-expressed (decompositions' _digamma, _trigamma, _zeta64): from 1e-30 to 3e38,
    negative arguments down to -32 (zeta's longer sum), the poles (0, -0, negative integers), NaN and infinities;
    a negative non-integer below -32 runs natively for n >= 2."""
    fn = (lambda x: torch.polygamma(n, x)) if n else torch.digamma
    op = "aten.digamma.default" if n == 0 else "aten.polygamma.default"
    mag = torch.logspace(-30, 38.5, 200, dtype=torch.float64)
    x = torch.cat([mag, torch.linspace(-31.9, 30, 500, dtype=torch.float64), torch.arange(-4.0, 12.0),
                   torch.tensor([1.4616321, 0.5, 9.999, 10.0, 0.0, -0.0, NAN, INF, -INF], dtype=torch.float64)])
    x = x.to(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    check_op(fn, torch.linspace(0.5, 3, x.numel(), dtype=dtype), **tol)
    check_op(fn, x, **tol)
    assert row(op)["mlir_calls"] == 2
    if n >= 2:
        check_op(fn, torch.tensor([1.5, -40.5], dtype=dtype), **tol)
        assert row(op)["fallback_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hurwitz_zeta(dtype):
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    x = torch.tensor([1.0, 1.5, 2.0, 3.0, 7.5, 20.0, 0.5, -1.0, 50.0, NAN, INF], dtype=dtype).view(-1, 1)
    q = torch.cat([torch.logspace(-5, 5, 40, dtype=dtype), torch.tensor([0.0, -1.0, -2.0, -2.5, -31.5, 1.0, 0.5, NAN,
                                                                             INF], dtype=dtype)]).view(1, -1)
    check_op(torch.special.zeta, x, q, **tol)
    check_op(torch.special.zeta, 2.0, q, **tol)
    check_op(torch.special.zeta, x, 1.5, **tol)
    assert row("aten.special_zeta.default")["mlir_calls"] == 1
    assert row("aten.special_zeta.self_scalar")["mlir_calls"] == 1
    assert row("aten.special_zeta.other_scalar")["mlir_calls"] == 1
    check_op(torch.special.zeta, x, torch.tensor([-40.5], dtype=dtype), **tol)    # longer sum: natively
    assert row("aten.special_zeta.default")["fallback_calls"] == 1


@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_is_the_native_binary_search(right):
    """Our unrolled binary search (decompositions' _searchsorted) gives PyTorch's positions for duplicates, NaN, values
    outside the range, unsorted rows (the op's undefined case, still native's answer) and a sorter; 1-d and
    batched sequences, scalar values, int32 results."""
    torch.manual_seed(0)
    seq = torch.tensor([-INF, -1.0, 0.0, 0.0, 0.0, 2.5, 7.0, 7.0, INF, NAN])
    vals = torch.tensor([[-INF, -2.0, -1.0, 0.0, 1.0, 7.0, 8.0, INF, NAN, -0.0]])
    kw = dict(right=right)
    check_op(lambda s, v: torch.searchsorted(s, v, **kw), seq, vals, rtol=0, atol=0)
    check_op(lambda s, v: torch.searchsorted(s, v, **kw), seq.flip(0), vals, rtol=0, atol=0)      # unsorted
    rows = torch.sort(torch.randn(4, 13), -1).values
    rows[1] = torch.randn(13)                                                                   # an unsorted row
    check_op(lambda s, v: torch.searchsorted(s, v, out_int32=True, **kw), rows, torch.randn(4, 6), rtol=0, atol=0)
    perm = torch.randperm(10)
    check_op(lambda s, v, p: torch.searchsorted(s, v, sorter=p, **kw), seq[perm.argsort()], vals, perm,
             rtol=0, atol=0)
    check_op(lambda s: torch.searchsorted(s, 0.0, **kw), seq, rtol=0, atol=0)
    assert row("aten.searchsorted.Tensor")["mlir_calls"] == 4
    assert row("aten.searchsorted.Scalar")["mlir_calls"] == 1
    with pytest.raises(RuntimeError):          # an out-of-range sorter runs natively, which raises
        torch.searchsorted(tme.wrap(seq), tme.wrap(vals), sorter=tme.wrap(perm + 5), **kw)
    assert row("aten.searchsorted.Tensor")["mlir_calls"] == 4


def test_logsumexp_edges():
    x = torch.tensor([[1.0, 2.0, 3.0], [-INF, -INF, -INF], [INF, 1.0, 2.0], [NAN, 1.0, 2.0], [1e30, 1e30, -1e30]])
    check_op(lambda t: torch.logsumexp(t, 1), x)
    check_op(lambda t: torch.logsumexp(t, (0, 1), keepdim=True), x)
    check_op(lambda t: torch.logsumexp(t, 0), torch.tensor(3.5))
    check_op(lambda t: torch.logsumexp(t, 0, keepdim=True), torch.tensor(-INF))
    check_op(lambda t: torch.logsumexp(t, 1), torch.arange(12).view(3, 4))
    assert row("aten.logsumexp.default")["mlir_calls"] == 5


def test_repeat_of_empty_tensors_and_zero_repeats():
    """torch-mlir 20261001's repeat divides by zero lowering an empty result (SIGFPE): those calls compile
    through ours (decompositions' _repeat); the others keep torch-mlir's lowering."""
    for shape, reps in (((0,), (2,)), ((2,), (0,)), ((3, 0), (2, 3)), ((3, 2), (0, 2)), ((), (0, 2, 3))):
        check_op(lambda t: t.repeat(*reps), torch.randn(shape))
    check_op(lambda t: t.repeat(2, 1, 3), torch.randn(3, 2))
    r = row("aten.repeat.default")
    assert r["mlir_calls"] == 6 and r["fallback_calls"] == 0, r


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0, INF])
def test_cdist_and_pdist_both_of_pytorchs_ways(p):
    """Small inputs: each difference's p-norm; p = 2 with more than 25 rows (or compute_mode use_mm): the matrix
    product form PyTorch switches to (decompositions' _cdist). Duplicate rows give exact zeros."""
    torch.manual_seed(1)
    a, b = torch.randn(2, 7, 5), torch.randn(2, 4, 5)
    b[0, 1] = a[0, 2]
    check_op(lambda x, y: torch.cdist(x, y, p), a, b)
    big_a, big_b = torch.randn(30, 6), torch.randn(40, 6)
    check_op(lambda x, y: torch.cdist(x, y, p), big_a, big_b)
    if p == 2:
        check_op(lambda x, y: torch.cdist(x, y, compute_mode="use_mm_for_euclid_dist"), a, b)
        check_op(lambda x, y: torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist"), big_a, big_b)
    check_op(lambda x: torch.nn.functional.pdist(x, p), a[0])
    n = 4 if p == 2 else 2             # (use_mm calls aten._euclidean_dist itself)
    assert row("aten._cdist_forward.default")["mlir_calls"] + row("aten._euclidean_dist.default")["mlir_calls"] == n
    assert row("aten._cdist_forward.default")["fallback_calls"] == 0
    assert row("aten._pdist_forward.default")["mlir_calls"] == 1


# ---- dense linear algebra (decompositions/linalg.py, qr.py): LAPACK's algorithms unrolled ----

def _tol(dtype) -> dict:
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _all_through_mlir(*ops):
    for op in ops:
        assert row(op)["fallback_calls"] == 0 and row(op)["mlir_calls"] >= 1, row(op)


def _spd(*shape, dtype=torch.float64):
    x = torch.randn(*shape, dtype=dtype)
    return x @ x.mT + shape[-1] * torch.eye(shape[-1], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lu_factor_pivots_ties_singular_and_rectangular(dtype):
    torch.manual_seed(0)
    tight = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    lu_ex = torch.linalg.lu_factor_ex
    check_op(lu_ex, torch.randn(2, 3, 6, 6, dtype=dtype), **tight)
    check_op(lu_ex, torch.randn(4, 7, dtype=dtype), **tight)           # wide
    check_op(lu_ex, torch.randn(7, 4, dtype=dtype), **tight)           # tall
    check_op(torch.linalg.lu, torch.randn(3, 5, 4, dtype=dtype), **tight)
    check_op(lambda a: torch.lu_unpack(*torch.linalg.lu_factor(a)), torch.randn(2, 6, 4, dtype=dtype), **tight)
    _all_through_mlir("aten.linalg_lu_factor_ex.default", "aten.linalg_lu.default", "aten.lu_unpack.default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pivots_rounding_may_decide_run_natively(dtype):
    """A tie between pivot candidates (rows 1 and 2 of column 0), a column that cancels to rounding noise (column 1
    of a singular matrix: which noise is larger depends on the order of operations), a zero pivot: each call's
    kernel flags itself and native's factorization is returned."""
    ties = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 2.0, 1.0], [4.0, 4.0, 5.0]], dtype=dtype)
    noise = torch.tensor([[2.0, 4.0, 1.0], [1.0, 2.0, 3.0], [3.0, 6.0, 0.5]], dtype=dtype)
    for a in (ties, noise, torch.zeros(3, 3, dtype=dtype)):
        check_op(torch.linalg.lu_factor_ex, a, rtol=0, atol=0)
        check_op(torch.linalg.lu, a, rtol=0, atol=0)
    # det(A) factors A^T: exact zeros for `noise` (through MLIR), noise in this one's second column
    check_op(torch.linalg.det, noise, rtol=0, atol=0)
    check_op(torch.linalg.det, torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]], dtype=dtype),
             rtol=0, atol=0)
    assert row("aten.linalg_lu_factor_ex.default")["fallback_calls"] == 3    # the zero matrix: info 1
    assert row("aten.linalg_lu.default")["fallback_calls"] == 2      # the zero matrix: no choice, nothing flagged
    assert row("aten.linalg_lu.default")["mlir_calls"] == 1
    assert row("aten._linalg_det.default")["fallback_calls"] == 1
    assert row("aten._linalg_det.default")["mlir_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solves_inverse_and_determinants(dtype):
    torch.manual_seed(1)
    tol = _tol(dtype)
    a = torch.randn(3, 5, 5, dtype=dtype) + 3 * torch.eye(5, dtype=dtype)
    b = torch.randn(3, 5, 2, dtype=dtype)
    check_op(torch.linalg.solve, a, b, **tol)
    check_op(lambda a, b: torch.linalg.solve(a, b, left=False), a, b.mT, **tol)
    check_op(torch.linalg.solve, a[0], b[0, :, 0], **tol)              # a vector right-hand side
    check_op(torch.linalg.solve_ex, a, b, **tol)                       # with A's LU and pivots
    check_op(torch.linalg.inv, a, **tol)
    check_op(torch.linalg.det, a, **tol)
    check_op(torch.linalg.slogdet, a, **tol)
    check_op(torch.logdet, a @ a.mT, **tol)
    lu, piv = torch.linalg.lu_factor(a)
    for left in (True, False):
        for adjoint in (True, False):
            check_op(lambda lu, piv, b: torch.linalg.lu_solve(lu, piv, b, left=left, adjoint=adjoint),
                     lu, piv, b if left else b.mT, **tol)
    check_op(torch.linalg.det, torch.randn(0, 0, dtype=dtype))         # det of an empty matrix: 1
    _all_through_mlir("aten._linalg_solve_ex.default", "aten.linalg_inv_ex.default", "aten._linalg_det.default",
                      "aten._linalg_slogdet.default", "aten.linalg_lu_solve.default")


def test_singular_solves_run_natively():
    """A zero pivot: LAPACK divides by it and PyTorch raises (inv, solve) or returns info; the kernel's results are
    then replaced by native's."""
    singular = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    check_op(torch.linalg.inv_ex, singular)
    check_op(lambda a, b: torch.linalg.solve_ex(a, b), singular, torch.ones(2, 1))
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.inv(tme.wrap(singular))
    assert row("aten.linalg_inv_ex.default")["fallback_calls"] == 2
    assert row("aten._linalg_solve_ex.default")["fallback_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triangular_and_cholesky(dtype):
    torch.manual_seed(2)
    tol = _tol(dtype)
    t = torch.randn(2, 4, 4, dtype=dtype) + 4 * torch.eye(4, dtype=dtype)     # both triangles used, one read
    b = torch.randn(2, 4, 3, dtype=dtype)
    for upper in (True, False):
        for unit in (True, False):
            check_op(lambda t, b: torch.linalg.solve_triangular(t, b, upper=upper, unitriangular=unit), t, b, **tol)
            check_op(lambda t, b: torch.linalg.solve_triangular(t, b, upper=upper, left=False, unitriangular=unit),
                     t, b.mT, **tol)
            check_op(lambda b, t: torch.triangular_solve(b, t, upper=upper, transpose=True, unitriangular=unit),
                     b, t[0], **tol)                                    # batch dims broadcast
    a = _spd(3, 5, 5, dtype=dtype)
    a = a + 1e-3 * torch.randn_like(a)       # not exactly symmetric: each factor reads its own triangle
    for upper in (True, False):
        check_op(lambda a: torch.linalg.cholesky(a, upper=upper), a, **tol)
        f = torch.linalg.cholesky(a, upper=upper)
        check_op(lambda b, f: torch.cholesky_solve(b, f, upper=upper), torch.randn(3, 5, 2, dtype=dtype), f, **tol)
        check_op(lambda f: torch.cholesky_inverse(f, upper=upper), f[0], **tol)
    _all_through_mlir("aten.linalg_solve_triangular.default", "aten.triangular_solve.default",
                      "aten.linalg_cholesky_ex.default", "aten.cholesky_solve.default", "aten.cholesky_inverse.default")


def test_not_positive_definite_nan_and_bad_pivots_run_natively():
    not_pd = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    check_op(torch.linalg.cholesky_ex, not_pd)                          # LAPACK stops at column 2 (info 2)
    assert row("aten.linalg_cholesky_ex.default")["fallback_calls"] == 1
    check_op(torch.linalg.lu_factor_ex, torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))
    assert row("aten.linalg_lu_factor_ex.default")["fallback_calls"] == 1
    lu = torch.randn(3, 3)
    bad = torch.tensor([1, 7, 3], dtype=torch.int32)                    # a row that does not exist
    with pytest.raises(Exception):
        torch.lu_unpack(lu, bad)
    with pytest.raises(Exception):
        torch.lu_unpack(tme.wrap(lu), tme.wrap(bad))
    assert row("aten.lu_unpack.default")["mlir_calls"] == 0


def test_larger_matrices_than_unrolled_run_natively():
    from torch_mlir_eager.decompositions import linalg
    n = linalg.MAX_ORDER + 1
    a = torch.randn(n, n, dtype=torch.float64) + n * torch.eye(n, dtype=torch.float64)
    check_op(torch.linalg.det, a, rtol=1e-10, atol=1e-10)
    assert row("aten._linalg_det.default")["fallback_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_householder_qr_family(dtype):
    torch.manual_seed(3)
    tol = _tol(dtype)
    for shape in ((2, 6, 4), (4, 6), (5, 5)):
        a = torch.randn(*shape, dtype=dtype)
        check_op(torch.geqrf, a, **tol)
        for mode in ("reduced", "complete", "r"):
            check_op(lambda a: torch.linalg.qr(a, mode=mode), a, **tol)
    refl, tau = torch.geqrf(torch.randn(6, 4, dtype=dtype))
    check_op(torch.linalg.householder_product, refl, tau, **tol)
    for left in (True, False):
        for transpose in (True, False):
            c = torch.randn(6, 3, dtype=dtype) if left else torch.randn(3, 6, dtype=dtype)
            check_op(lambda r, t, c: torch.ormqr(r, t, c, left=left, transpose=transpose), refl, tau, c, **tol)
    _all_through_mlir("aten.geqrf.default", "aten.linalg_qr.default", "aten.linalg_householder_product.default",
                      "aten.ormqr.default")


def test_reflections_rounding_may_flip_run_natively():
    """An upper triangular column has nothing below its diagonal: LAPACK's reflection is the identity, or, if
    rounding left anything there, a sign flip of the whole row; a zero diagonal leaves the reflection's sign to
    rounding. Both run natively."""
    check_op(torch.linalg.qr, torch.triu(torch.randn(4, 4)) + 4 * torch.eye(4), rtol=0, atol=0)
    check_op(torch.geqrf, torch.tensor([[0.0, 1.0], [3.0, 2.0], [4.0, 3.0]]), rtol=0, atol=0)
    assert row("aten.linalg_qr.default")["fallback_calls"] == 1
    assert row("aten.geqrf.default")["fallback_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["erfinv", "ndtri"])
def test_inverse_error_functions_over_their_whole_domain(name, dtype):
    """From subnormals to 1 - eps, both signs, the exact branch points, and outside the domain."""
    f = torch.erfinv if name == "erfinv" else torch.special.ndtri
    fi = torch.finfo(dtype)
    low = -307 if dtype == torch.float64 else -37
    e = torch.logspace(low, 0, 400, dtype=torch.float64).to(dtype)
    near_one = (1 - torch.logspace(math.log10(fi.eps), -0.3, 200, dtype=torch.float64)).to(dtype)
    edges = torch.tensor([0.0, -0.0, 0.25, 0.5, 0.75, 1.0, -1.0, 1.5, -2.0, NAN, INF, fi.tiny, fi.tiny / 8],
                         dtype=dtype)
    x = torch.cat([e, -e, near_one, -near_one, edges, torch.rand(500, dtype=dtype)])
    rtol, atol = (2e-6, 1e-6) if dtype == torch.float32 else (1e-12, 1e-14)
    got = check_op(f, x, rtol=rtol, atol=atol)
    want = f(x)
    assert torch.equal(torch.signbit(tme.unwrap(got))[want == 0], torch.signbit(want)[want == 0])
    assert row(f"aten.{'erfinv' if name == 'erfinv' else 'special_ndtri'}.default")["mlir_calls"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_frexp_is_exact(dtype):
    fi = torch.finfo(dtype)
    x = torch.cat([torch.randn(500, dtype=torch.float64) * torch.logspace(-40, 40, 500, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1.0, 0.5, -1.0, 3.0, INF, -INF, NAN, fi.tiny, fi.max, -fi.max,
                                 fi.tiny / 2 ** 5, 1 - fi.eps / 2], dtype=torch.float64)]).to(dtype)
    if dtype == torch.float64:
        x = torch.cat([x, torch.tensor([5e-324, 1e-310, 1.7976931348623157e308])])
    got = tme.unwrap(check_op(torch.frexp, x, rtol=0, atol=0))
    assert torch.equal(torch.signbit(got[0]), torch.signbit(torch.frexp(x)[0]))
    assert row("aten.frexp.Tensor")["mlir_calls"] == 1


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_scatters_along_every_dim(dim):
    """scatter_add, scatter(reduce=) and scatter along a negative dim: torch-mlir's own lowerings of these crash
    the compile worker; they compile as scatter_reduce along the non-negative dim."""
    torch.manual_seed(4)
    x = torch.randn(4, 6)
    idx = torch.randint(0, 4 if dim in (0, -2) else 6, (3, 5))         # repeats: values add up, or multiply
    src = torch.randn(3, 5)
    check_op(lambda x, i, s: torch.scatter_add(x, dim, i, s), x, idx, src)
    check_op(lambda x, i, s: torch.scatter(x, dim, i, s, reduce="add"), x, idx, src)
    check_op(lambda x, i, s: torch.scatter(x, dim, i, s, reduce="multiply"), x, idx, src)
    check_op(lambda x, i: torch.scatter(x, dim, i, 2.5, reduce="multiply"), x, idx)
    check_op(lambda x, i, s: torch.scatter(x, dim, i.unique(dim=0)[:1], s[:1]), x, idx, src)   # one write each
    check_op(lambda x, i, s: torch.scatter_add(x, dim, i, s), x > 0, idx, src > 0)             # bool: or
    _all_through_mlir("aten.scatter_add.default", "aten.scatter.reduce", "aten.scatter.value_reduce",
                      "aten.scatter.src")


def test_diagonal_scatter_offsets_and_dims():
    x = torch.randn(3, 4, 5)
    for offset, d1, d2 in ((0, 1, 2), (2, 1, 2), (-2, 1, 2), (1, 0, 2), (-1, 2, 0), (0, -1, -3)):
        n = torch.diagonal(x, offset, d1, d2).shape
        check_op(lambda x, s: torch.diagonal_scatter(x, s, offset, d1, d2), x, torch.randn(n))
    assert row("aten.diagonal_scatter.default")["mlir_calls"] == 6
