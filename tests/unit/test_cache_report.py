"""cache: bounded LRU + negative entries; report: counts, table and summary; config: override."""
import subprocess
import sys

import pytest

from torch_mlir_eager import config
from torch_mlir_eager.cache import KernelCache
from torch_mlir_eager.errors import CompileFailure
from torch_mlir_eager.report import Recorder


def test_cache_is_bounded_lru():
    c = KernelCache(maxsize=2, negative_maxsize=2)
    c.put("a", 1); c.put("b", 2)
    assert c.lookup("a") == 1          # a is now most recent
    c.put("c", 3)
    assert c.lookup("b") is None and c.lookup("a") == 1 and c.lookup("c") == 3
    info = c.info()
    assert info["kernels"] == 2 and info["hits"] == 3 and info["misses"] == 1


def test_negative_entries_raise_their_failure():
    c = KernelCache(maxsize=2, negative_maxsize=1)
    c.put_failure("k", CompileFailure("lowering", "failed to legalize\nmore"))
    with pytest.raises(CompileFailure) as e:
        c.lookup("k")
    assert e.value.category == "lowering" and e.value.reason == "failed to legalize"
    c.put_failure("k2", CompileFailure("crash", "x"))
    assert c.lookup("k") is None        # bounded: evicted
    assert c.info()["negative_hits"] == 1


def test_report_counts_and_summary():
    r = Recorder()
    for _ in range(3):
        r.mlir("aten.add.Tensor", hit=True)
    r.compiled("aten.add.Tensor", 0.5)
    r.fallback("aten.foo.default", "lowering", "failed to legalize torch.operator")
    r.fallback("aten.foo.default", "lowering", "other")
    r.fallback("aten.bar.default", "crash", "worker died")
    r.native("aten.view.default", "view")
    rep = r.snapshot()
    d = rep.to_dict()
    t = d["totals"]
    assert t["calls"] == t["mlir_calls"] + t["fallback_calls"] + t["native_calls"] == 7
    assert t["mlir_share"] == pytest.approx(3 / 6)
    rows = {row["op"]: row for row in d["ops"]}
    for key in ("op", "calls", "mlir_calls", "fallback_calls", "native_calls", "cache_hits", "compiles",
                "compile_s", "reasons"):
        assert key in rows["aten.foo.default"]
    assert rows["aten.foo.default"]["reasons"] == {"lowering": "failed to legalize torch.operator"}
    assert [row["op"] for row in d["ops"]][0] in ("aten.add.Tensor",)
    last = str(rep).splitlines()[-1]
    assert last == rep.summary()
    assert last.endswith("Op(s) not lowered: aten.foo.default (2: lowering), aten.bar.default (1: crash)")
    assert "50.0% of 6 calls through MLIR" in rep.summary()
    r.reset()
    assert r.snapshot().to_dict()["ops"] == []


def test_config_override_scoped():
    before = config.get().compile_timeout_s
    with config.override(compile_timeout_s=1.5) as c:
        assert c.compile_timeout_s == 1.5 == config.get().compile_timeout_s
    assert config.get().compile_timeout_s == before


def test_import_is_cheap():
    code = "import sys, torch_mlir_eager; print('torch_mlir' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_report_at_exit():
    code = ("import torch, torch_mlir_eager as tme\n"
            "with tme.enable():\n    torch.ones(3) + torch.ones(3)\n")
    env = {**__import__("os").environ, "TORCH_MLIR_EAGER_REPORT": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "aten.add.Tensor" in out.stderr and "Op(s) not lowered: none" in out.stderr
