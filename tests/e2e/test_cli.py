"""The command line (issue 6): `run` a script with every aten call through MLIR, `report` a saved report as
Markdown, `cache info|clear`; and logging: an INFO line per compile, silence unless asked."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import torch

import torch_mlir_eager as tme
from torch_mlir_eager import compiler

SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    x = torch.randn(5, 8)
    with torch.no_grad():
        y = m(x)
    torch.save(y.clone(), sys.argv[1])
    if len(sys.argv) > 2:
        torch.randn(3, dtype=torch.complex64).neg()      # no MLIR path: strict mode raises here
""")


def _native_result():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    x = torch.randn(5, 8)
    with torch.no_grad():
        return m(x)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "torch_mlir_eager", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_run_script_through_mlir_and_render_report(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(SCRIPT)
    out, rep = tmp_path / "y.pt", tmp_path / "report.json"
    r = _cli("run", "--json", str(rep), "--verify", str(script), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), _native_result(), rtol=1e-4, atol=1e-5)
    assert "calls through MLIR" in r.stderr                 # the report, on stderr
    d = json.loads(rep.read_text())
    t = d["totals"]
    assert t["mlir_calls"] >= 5 and t["fallback_calls"] == 0 and t["verified"] == t["mlir_calls"], t
    md = _cli("report", str(rep))
    assert md.returncode == 0 and "| `aten.addmm.default` | 2 | 2 | 0 | 0 | 100.0 |" in md.stdout, md.stdout


def test_run_strict_fails_on_a_fallback(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(SCRIPT)
    r = _cli("run", "--strict", str(script), str(tmp_path / "y.pt"), "complex")
    assert r.returncode != 0 and "StrictModeError: aten.neg.default did not run through MLIR" in r.stderr


def test_cache_info_and_clear(tmp_path):
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(tmp_path / "c"))
    script = tmp_path / "model.py"
    script.write_text(SCRIPT)
    assert _cli("run", str(script), str(tmp_path / "y.pt"), env=env).returncode == 0
    info = _cli("cache", "info", env=env)
    n = int(info.stdout.split(": ", 1)[1].split()[0])
    assert info.returncode == 0 and n >= 4, info.stdout
    clear = _cli("cache", "clear", env=env)
    assert clear.returncode == 0 and f"removed {n} kernels" in clear.stdout
    assert _cli("cache", "info", env=env).stdout.split(": ", 1)[1].startswith("0 kernels")


def test_one_info_line_per_compile(caplog):
    compiler.cache().clear()
    x = torch.randn(3, 11)
    with caplog.at_level(logging.INFO, logger="torch_mlir_eager"):
        with tme.enable():
            got = torch.tanh(x)
            torch.tanh(x)                                  # a cache hit: no line
    torch.testing.assert_close(got, x.tanh())
    lines = [r.getMessage() for r in caplog.records if "aten.tanh.default" in r.getMessage()]
    assert len(lines) == 1 and ("compiled" in lines[0] or "loaded" in lines[0]) and " ms" in lines[0], lines


def test_silent_by_default(tmp_path):
    code = ("import torch, torch_mlir_eager as t\n"
            "with t.enable():\n    torch.special.airy_ai(torch.zeros(3)); torch.sin(torch.ones(2))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(tmp_path / "c")))
    assert r.returncode == 0 and r.stdout == "" and "torch_mlir_eager" not in r.stderr and "airy" not in r.stderr
