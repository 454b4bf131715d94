"""The package's layout: imports point down the layers, never in a cycle; the host side runs without torch_mlir;
files stay short and say their job in their first line."""
import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "torch_mlir_eager")

# Lowest first. A module may import modules of its own layer or lower ones (a layer's modules among themselves
# must not form a cycle either). The host side is everything but the worker side.
LAYERS = [
    ["errors", "config", "version", "host", "report"],          # ground floor
    ["spec", "validate"],                                        # what a call is; which calls are safe
    ["kernel", "jit", "cache"],                                  # kernels loaded and called; in memory
    ["disk_cache", "repro", "worker.protocol"],                  # on disk; replays; the worker's contract
    ["decompositions"],                                          # worker side from here ...
    ["build"],
    ["worker.server", "worker.client"],                          # ... to here (client is host side)
    ["compiler"],                                                # disk -> worker -> Kernel
    ["shapes"],                                                  # static or dynamic kernels per call family
    ["dispatch"],                                                # the hot path
    ["tensor"],
    ["__init__", "coverage", "__main__"],                        # public surface and tools
]
WORKER_SIDE = ("decompositions", "build", "worker.server")
# The host's only ways into the worker side and torch_mlir, each inside one function: compiling in this process
# (config isolate=False) and JIT-compiling a kernel no shared library of loads.
LAZY_OK = {("worker.client", "worker.server"), ("kernel", "jit")}


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, PKG)[:-3].replace(os.sep, ".")
                name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
                yield name, path


MODULES = dict(_modules())


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{name}: in no layer of LAYERS")


def _resolve(mod: str, node: ast.ImportFrom) -> list:
    """The package modules an ImportFrom names (relative imports resolved)."""
    if node.level == 0:
        if not (node.module or "").startswith("torch_mlir_eager"):
            return []
        base = node.module[len("torch_mlir_eager"):].lstrip(".")
    else:
        parts = mod.split(".") if mod != "__init__" else []
        is_pkg = MODULES.get(mod, "").endswith("__init__.py")
        up = parts if is_pkg else parts[:-1]
        up = up[:len(up) - (node.level - 1)] if node.level > 1 else up
        base = ".".join(up + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        cand = f"{base}.{alias.name}" if base else alias.name
        out.append(cand if cand in MODULES else base or "__init__")
    return out


def _imports(mod: str, path: str):
    """(imported package module, at module level?) per import of `mod`; torch_mlir imports as 'torch_mlir'."""
    tree = ast.parse(open(path).read())
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        level = id(node) in top
        if isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] == "torch_mlir":
                yield "torch_mlir", level
            for m in _resolve(mod, node):
                yield m, level
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch_mlir":
                    yield "torch_mlir", level
                elif a.name.startswith("torch_mlir_eager"):
                    yield a.name[len("torch_mlir_eager"):].lstrip(".") or "__init__", level


def _worker_side(name: str) -> bool:
    return any(name == w or name.startswith(w + ".") for w in WORKER_SIDE)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_point_down(mod):
    for dep, top in _imports(mod, MODULES[mod]):
        if dep == "torch_mlir":
            assert _worker_side(mod) or (not top and (mod, "jit") in LAZY_OK) or mod == "jit", \
                f"{mod} imports torch_mlir: only the worker side (and jit, lazily) may"
            continue
        if dep == mod or dep.startswith(mod + "."):
            continue                     # a package importing its own modules
        assert _layer(dep) <= _layer(mod), f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
        if _worker_side(dep) and not _worker_side(mod):
            assert not top and (mod, dep) in LAZY_OK, f"host module {mod} imports worker-side {dep}"


def test_no_import_cycle():
    graph = {m: {d for d, top in _imports(m, p) if top and d in MODULES and d != m} for m, p in MODULES.items()}
    for m in graph:              # a package's __init__ importing its own modules is not a cycle back to it
        graph[m] = {d for d in graph[m] if not (MODULES[m].endswith("__init__.py") and d.startswith(m + "."))}
    state: dict = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_short_file_with_a_one_line_job(mod):
    text = open(MODULES[mod]).read()
    assert text.count("\n") <= 400, f"{mod}: {text.count(chr(10))} lines (at most 400)"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.split("\n")[0].strip(), f"{mod}: no docstring saying its job"


def test_host_side_runs_without_torch_mlir():
    """Keys, cache, report, config and the worker's protocol work in a process where torch_mlir cannot be
    imported at all: the host side needs it only to compile."""
    host = [m for m in MODULES if not _worker_side(m) and m not in ("jit", "__main__", "coverage")]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch_mlir" or name.startswith("torch_mlir."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import importlib, torch
for m in {sorted(host)!r}:
    importlib.import_module("torch_mlir_eager" + ("" if m == "__init__" else "." + m))
from torch_mlir_eager import cache, config, spec
from torch_mlir_eager.report import Recorder
from torch_mlir_eager.errors import CompileFailure
from torch_mlir_eager.worker import protocol
key, tensors = spec.flatten("aten.add.Tensor", (torch.ones(2), 1.0), {{}})
c = cache.KernelCache()
c.put_failure(key, CompileFailure("lowering", "x"))
r = Recorder()
r.fallback("aten.add.Tensor", "lowering", "x")
with config.override(verify=True):
    assert config.get().verify
protocol.Request("aten.add.Tensor", (torch.ones(2), 1.0), {{}})
assert not any(m == "torch_mlir" or m.startswith("torch_mlir.") for m in sys.modules), "torch_mlir imported"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, TORCH_MLIR_EAGER_DISK_CACHE="0"))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
