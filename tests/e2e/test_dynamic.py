"""Shapes that change: a call family gets one kernel dynamic in the dims that vary (shapes.py), checked in the
worker at sizes that end in partial tiles and here on its first run at each new shape; answers equal native's."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config, shapes
from helpers import row


@pytest.fixture(autouse=True)
def fresh():
    """Each test starts with no call families: what an earlier test compiled would serve its shapes."""
    tme.reset_report()
    shapes.reset()


def _mm(n, k=16, m=6, seed=0):
    g = torch.Generator().manual_seed(seed + n)
    a, b = torch.randn(n, k, generator=g), torch.randn(k, m, generator=g)
    got = tme.unwrap(torch.mm(tme.wrap(a), tme.wrap(b)))
    torch.testing.assert_close(got, a @ b)


def test_auto_static_first_then_one_dynamic_kernel(caplog):
    with config.override(dynamic="auto"), caplog.at_level(logging.INFO, logger="torch_mlir_eager"):
        for n in (40, 41, 47, 64, 129, 200):
            _mm(n, k=23)
    r = row("aten.mm.default")
    # 40: static; 41: the dynamic kernel (dim 0 varied); every later size is bound to it, compiling nothing
    assert r["compiles"] == 2 and r["dynamic_compiles"] == 1, r
    assert r["mlir_calls"] == 6 and r["dynamic_calls"] == 5 and r["dynamic_shapes"] == 5, r
    lines = [r.getMessage() for r in caplog.records if "aten.mm.default" in r.getMessage()]
    assert len(lines) == 2, lines                    # one line per compile, the dynamic one saying why
    assert lines[1].startswith("aten.mm.default: dim 0 of arg 0 varies (40 -> 41): compiling a kernel dynamic in "
                               "it: compiled aten.mm.default"), lines
    # a size seen again hits the cache, like a static kernel
    _mm(47, k=23)
    assert row("aten.mm.default")["cache_hits"] == 1


def test_never_compiles_every_shape():
    with config.override(dynamic="never"):
        for n in (50, 51, 52):
            _mm(n, k=29)
    r = row("aten.mm.default")
    assert r["compiles"] == 3 and r["dynamic_compiles"] == 0 and r["dynamic_calls"] == 0


def test_always_is_dynamic_from_the_first_call():
    with config.override(dynamic="always"):
        for n in (50, 77):
            _mm(n, k=31, m=9)
    r = row("aten.mm.default")
    assert r["compiles"] == 1 and r["dynamic_compiles"] == 1 and r["dynamic_calls"] == 2, r


def test_always_keeps_a_conv_weight_static():
    """dynamic=always makes a conv dynamic in its activation dims only (batch, image size): with dynamic weight
    sizes it ran as plain loops (18-25x its static kernel in ResNet18)."""
    conv = torch.nn.Conv2d(4, 16, 3, padding=1, bias=False)
    with config.override(dynamic="always"), torch.no_grad():
        for h in (9, 12):
            x = torch.randn(2, 4, h, h)
            got = torch.nn.functional.conv2d(tme.wrap(x), tme.wrap(conv.weight), padding=1)
            torch.testing.assert_close(tme.unwrap(got), conv(x))
    r = row("aten.convolution.default")
    assert r["compiles"] == 1 and r["dynamic_calls"] == 2, r
    kernels = [k for fam in shapes._families.values() for _, k in fam.kernels]
    assert [k.dynamic for k in kernels] == [[(0, 2, 3), ()]], [k.dynamic for k in kernels]


def test_sizes_0_and_1_stay_static():
    """Broadcasting decides on sizes 1 and 0: a call with one there is another family, with its own kernel."""
    with config.override(dynamic="auto"):
        for n in (8, 9, 10):
            x, y = torch.randn(n, 37), torch.randn(n, 37)
            torch.testing.assert_close(tme.unwrap(torch.add(tme.wrap(x), tme.wrap(y))), x + y)
        x, y = torch.randn(1, 37), torch.randn(6, 37)            # broadcasts along dim 0
        torch.testing.assert_close(tme.unwrap(torch.add(tme.wrap(x), tme.wrap(y))), x + y)
        e = torch.randn(0, 37)
        torch.testing.assert_close(tme.unwrap(torch.add(tme.wrap(e), tme.wrap(e))), e + e)
    r = row("aten.add.Tensor")
    assert r["mlir_calls"] == 5 and r["dynamic_calls"] == 2 and r["fallback_calls"] == 0, r


def test_every_dtype_and_argument_wrapped():
    """Elementwise, reduction, softmax, cat (a KV cache's growth) and in-place, in each dtype they take."""
    with config.override(dynamic="auto"):
        for dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.float16, torch.bfloat16):
            for n in (12, 13, 19, 32):
                g = torch.Generator().manual_seed(n)
                a = (torch.randn(3, n, 8, generator=g) * 10).to(dtype)
                b = (torch.randn(3, n, 8, generator=g) * 10).to(dtype)
                wa, wb = tme.wrap(a.clone()), tme.wrap(b.clone())
                torch.testing.assert_close(tme.unwrap(torch.mul(wa, wb)), a * b)
                torch.testing.assert_close(tme.unwrap(torch.sum(wa, dim=1)), a.sum(dim=1))
                torch.testing.assert_close(tme.unwrap(torch.cat([wa, wb], dim=1)), torch.cat([a, b], 1))
                if dtype.is_floating_point:
                    torch.testing.assert_close(tme.unwrap(torch.softmax(wa, -1)), torch.softmax(a, -1))
                wa.add_(wb)
                torch.testing.assert_close(tme.unwrap(wa), a + b)
    t = tme.report().to_dict()["totals"]
    failed = {r["op"]: r["dynamic_failed"] for r in tme.report().to_dict()["ops"] if r["dynamic_failed"]}
    assert t["fallback_calls"] == 0 and t["dynamic_calls"] >= 6 * 3 * 4 + 4 * 3, (t, failed)


def test_a_shape_error_at_a_new_size_is_pytorchs_own():
    with config.override(dynamic="auto"):
        _mm(20, k=11)
        _mm(21, k=11)                      # the dynamic kernel
        a, b = torch.randn(22, 11), torch.randn(12, 6)
        with pytest.raises(RuntimeError) as info:
            torch.mm(tme.wrap(a), tme.wrap(b))
        assert info.value.__cause__ is None and info.value.__context__ is None
        with pytest.raises(RuntimeError) as want:
            torch.mm(a, b)
        assert str(info.value) == str(want.value)
        _mm(23, k=11)                      # still serves
    r = row("aten.mm.default")
    assert r["user_errors"] == 1 and r["dynamic_calls"] == 2, r


def _add_sizes(sizes, cols):
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        x, y = torch.randn(n, cols, generator=g), torch.randn(n, cols, generator=g)
        torch.testing.assert_close(tme.unwrap(torch.add(tme.wrap(x), tme.wrap(y))), x + y)
    return row("aten.add.Tensor")


def test_a_kernel_wrong_in_its_remainder_is_caught_in_the_worker():
    """The test hook breaks a dynamic kernel off multiples of 8 only: right at 8 and 16 (all its first call
    sees), wrong at 33, where the worker's partial-tile probe catches it; the op stays on static kernels."""
    with config.override(dynamic="auto", inject={"aten.add.Tensor": "remainder"}):
        r = _add_sizes((8, 16, 13, 27), cols=41)
    assert r["dynamic_calls"] == 0 and r["mlir_calls"] == 4 and r["compiles"] == 4 + 1, r
    assert "mismatch" in r["dynamic_failed"] and "size 33" in r["dynamic_failed"], r["dynamic_failed"]


def test_a_kernel_wrong_in_its_remainder_is_caught_on_its_first_run_at_a_size():
    """The same bug, here only (the worker's probes pass): the first run at 13 differs from native, native's
    answer is the result, and the op stays on static kernels."""
    with config.override(dynamic="auto", inject={"aten.add.Tensor": "remainder@host"}):
        r = _add_sizes((8, 16, 13, 27), cols=43)
    assert "mismatch at [(13, 43), (13, 43)]" in r["dynamic_failed"], r["dynamic_failed"]
    assert r["dynamic_calls"] == 1 and r["fallback_calls"] == 0, r        # 16 ran on it: 16 is a multiple of 8


def test_hook_makes_unchecked_kernels_wrong():
    """Control for the two tests above: the broken kernel bound without the checks does give a wrong answer."""
    from torch_mlir_eager import spec
    with config.override(dynamic="auto", inject={"aten.add.Tensor": "remainder@host"}):
        _add_sizes((8, 16), cols=47)
        x, y = torch.randn(13, 47), torch.randn(13, 47)
        key, _ = spec.flatten("aten.add.Tensor", (x, y), {})
        fam = shapes._families[shapes.generic(key)]
        from torch_mlir_eager.kernel import kernel_inputs, output_metas
        k = fam.kernels[-1][1].bind(kernel_inputs([x, y], None), output_metas([x + y], fam.kernels[-1][1].outputs))
        assert not torch.equal(k.run([x, y])[0], x + y)


def test_dynamic_kernels_persist_on_disk(tmp_path):
    code = f"""
import torch, torch_mlir_eager as tme
from torch_mlir_eager import config, disk_cache
with config.override(cache_dir={str(tmp_path)!r}, dynamic="auto"):
    for n in (30, 31, 45):
        a, b = torch.randn(n, 19), torch.randn(19, 5)
        torch.testing.assert_close(tme.unwrap(torch.mm(tme.wrap(a), tme.wrap(b))), a @ b)
    r = [x for x in tme.report().rows if x.op == "aten.mm.default"][0]
    print(r.compiles, r.dynamic_calls, disk_cache.get().loads)
"""
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for p in runs:
        assert p.returncode == 0, p.stderr[-2000:]
    first, second = (p.stdout.split() for p in runs)
    assert first == ["2", "2", "0"], first
    assert second == ["2", "2", "2"], second       # the static and the dynamic kernel, both loaded from disk


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="dynamic"):
        with config.override(dynamic="sometimes"):
            pass
    env = dict(os.environ, TORCH_MLIR_EAGER_DYNAMIC="sometimes")
    p = subprocess.run([sys.executable, "-c", "import torch_mlir_eager"], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "TORCH_MLIR_EAGER_DYNAMIC" in p.stderr


def test_report_shows_static_and_dynamic_kernels():
    with config.override(dynamic="auto"):
        for n in (60, 61, 62):
            _mm(n, k=13)
    rep = tme.report()
    text = str(rep)
    assert "dyn kernels" in text and "dyn calls" in text
    assert "1 of 2 compiles dynamic" in rep.summary()
    assert rep.to_dict()["ops"][0]["dynamic_calls"] == 2
    assert compiler.cache().info()["kernels"] > 0


def test_a_hot_size_gets_its_static_kernel(monkeypatch):
    """A shape that keeps coming back leaves the dynamic kernel for a static one after shapes.HOT_CALLS runs."""
    monkeypatch.setattr(shapes, "HOT_CALLS", 3)
    w = torch.randn(4, 3, 3, 3)
    with config.override(dynamic="auto"):
        for s in (10, 12) + (14,) * 5:
            x = torch.randn(1, 3, s, s)
            got = tme.unwrap(torch.nn.functional.conv2d(tme.wrap(x), tme.wrap(w)))
            torch.testing.assert_close(got, torch.nn.functional.conv2d(x, w), rtol=1e-4, atol=1e-4)
            y = tme.unwrap(torch.relu(tme.wrap(x)))
            torch.testing.assert_close(y, x.relu())
    r = row("aten.convolution.default")
    # 10 static, 12 dynamic; 14 three times on the dynamic kernel, then static (compiled once, then hits)
    assert r["compiles"] == 3 and r["dynamic_compiles"] == 1 and r["dynamic_calls"] == 1 + 3, r
    assert r["mlir_calls"] == 7 and r["cache_hits"] == 1 + 2, r
    relu = row("aten.relu.default")
    assert relu["compiles"] == 3 and relu["dynamic_calls"] == 1 + 3, relu


def test_result_sizes_that_differ_from_natives_never_run():
    """A dynamic kernel whose symbolic result sizes disagree with native's at a new shape (as a trace specialized
    on its first sizes would) is not run there: it would write past the results native sized."""
    from torch_mlir_eager import spec
    with config.override(dynamic="auto"):
        _mm(70, k=17)
        _mm(71, k=17)
        key, _ = spec.flatten("aten.mm.default", (torch.randn(72, 17), torch.randn(17, 6)), {})
        fam = shapes._families[shapes.generic(key)]
        assert fam.kernels[-1][1].result_sizes and isinstance(fam.kernels[-1][1].result_sizes[0][0], str), fam.kernels[-1][1].result_sizes
        fam.kernels[-1][1].result_sizes = [["71", 6]]          # specialized on the size it was compiled at
        _mm(72, k=17)
    r = row("aten.mm.default")
    assert "result sizes at [(72, 17), (17, 6)]: [(71, 6)]" in r["dynamic_failed"], r["dynamic_failed"]
    assert r["dynamic_calls"] == 1 and r["mlir_calls"] == 3, r


def test_another_layer_is_not_a_size_that_changes():
    """Two conv layers (other channels, other weights) share a call family but are two static kernels; a new image
    size then gives each layer a kernel dynamic in the spatial dims only (channels stay static: the schedule for
    dynamic image sizes needs them)."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(8, 3, 3, 3), torch.randn(16, 8, 3, 3)
    with config.override(dynamic="auto"):
        for s in (20, 28):
            x = torch.randn(1, 3, s, s)
            y = torch.nn.functional.conv2d(tme.wrap(x), tme.wrap(w1), padding=1)
            z = tme.unwrap(torch.nn.functional.conv2d(y, tme.wrap(w2), padding=1))
            want = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w1, padding=1), w2, padding=1)
            torch.testing.assert_close(z, want, rtol=1e-4, atol=1e-4)
    r = row("aten.convolution.default")
    assert r["compiles"] == 4 and r["dynamic_compiles"] == 2, r
    from torch_mlir_eager import spec
    key, _ = spec.flatten("aten.convolution.default", (torch.randn(1, 3, 9, 9), w1, None, [1, 1], [1, 1], [1, 1],
                                                       False, [0, 0], 1), {})
    templates = sorted(t for t, _ in shapes._families[shapes.generic(key)].kernels)
    assert templates == [((1, 3, -1, -1), (8, 3, 3, 3)), ((1, 8, -1, -1), (16, 8, 3, 3))], templates
