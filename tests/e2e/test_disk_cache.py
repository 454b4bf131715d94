"""Kernels kept on disk (issue 6): a second process loads instead of compiling; corrupt entries are recompiled,
never run; the directory is private and size-bounded."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler, config, disk_cache

_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch_mlir_eager as tme
    from torch_mlir_eager import disk_cache
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        got = tme.unwrap(tme.wrap(model)(tme.wrap(x)))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    t = tme.report().to_dict()["totals"]
    print(json.dumps({"compile_s": t["compile_s"], "mlir_share": t["mlir_share"], "compiles": t["compiles"],
                      "loads": disk_cache.get().loads, "starts": __import__("torch_mlir_eager.compiler",
                      fromlist=["x"]).worker().starts}))
""")


def _run(cache_dir) -> dict:
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_second_process_loads_kernels_instead_of_compiling(tmp_path):
    first, second = _run(tmp_path / "c"), _run(tmp_path / "c")
    assert first["mlir_share"] == second["mlir_share"] == 1.0
    assert first["loads"] == 0 and first["starts"] == 1
    # every kernel came from disk: no compile worker was even started
    assert second["loads"] == second["compiles"] == first["compiles"] and second["starts"] == 0, (first, second)
    assert second["compile_s"] <= 0.25 * first["compile_s"], (first, second)
    assert oct(os.stat(tmp_path / "c").st_mode & 0o777) == "0o700"


def _entries(root, ext):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(ext))


@pytest.mark.parametrize("damage", ["flip a byte of the IR", "truncate the library", "garbage metadata",
                                    "remove the library"])
def test_corrupt_entry_is_recompiled_not_run(tmp_path, damage):
    root = tmp_path / "c"
    x, y = torch.randn(3, 5), torch.randn(3, 5)
    with config.override(cache_dir=str(root)):
        compiler.cache().clear()
        want = torch.atan2(x, y)
        with tme.enable():
            got = torch.atan2(x, y)
        torch.testing.assert_close(got, want)
        (meta,) = _entries(root, ".json")
        base = meta[:-len(".json")]
        if damage == "flip a byte of the IR":
            data = bytearray(open(base + ".mlir", "rb").read())
            data[len(data) // 2] ^= 0x20
            open(base + ".mlir", "wb").write(bytes(data))
        elif damage == "truncate the library":
            os.truncate(base + ".so", os.path.getsize(base + ".so") // 2)
        elif damage == "garbage metadata":
            open(meta, "w").write("{not json")
        else:
            os.unlink(base + ".so")
        disk = disk_cache.get()
        corrupt0, loads0 = disk.corrupt, disk.loads
        compiler.cache().clear()            # the next call looks on disk again
        tme.reset_report()
        with tme.enable():
            got = torch.atan2(x, y)
        torch.testing.assert_close(got, want)
        row = tme.report().to_dict()["ops"][0]
        assert row["mlir_calls"] == 1, tme.report()
        assert disk.corrupt == corrupt0 + 1 and disk.loads == loads0
        # recompiled and stored again: the entry is whole once more
        (meta2,) = _entries(root, ".json")
        assert json.load(open(meta2))["mlir_sha256"]
    compiler.cache().clear()


def test_size_bound_evicts_oldest(tmp_path):
    root = tmp_path / "c"
    with config.override(cache_dir=str(root), disk_cache_mb=0.2, dynamic="never"):    # a kernel per size
        disk = disk_cache.get()
        for n in range(3, 40):
            x = torch.randn(n, 3)
            want = x.sin()
            with tme.enable():
                got = torch.sin(x)
            torch.testing.assert_close(got, want)
        assert disk.evictions > 0
        assert disk.info()["bytes"] <= 0.2 * 1024 * 1024
        assert disk.info()["entries"] < 2 * (40 - 3)


def test_directory_others_can_write_is_refused(tmp_path):
    root = tmp_path / "open"
    root.mkdir()
    os.chmod(root, 0o777)
    with config.override(cache_dir=str(root)):
        assert disk_cache.get() is None
    with config.override(disk_cache=False):
        assert disk_cache.get() is None
