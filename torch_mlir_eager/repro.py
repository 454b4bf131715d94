"""Dump-dir mode (TORCH_MLIR_EAGER_DUMP_DIR, config dump_dir): a directory per failing key that reproduces it.

The worker writes each stage's input as the compile reaches it (graph.txt, torch.mlir, linalg.mlir, llvm.mlir;
"decomposed." in front for the decomposed attempt) and the stage it is in (stage.txt), so that a crash or a hang
leaves the last stage's input behind. Here, after the failure: failure.txt (op, stage, diagnostic, key), the call's
own inputs (inputs.pt) with call.py that makes the same call in strict mode, and repro.sh: the torch-mlir-opt
command that runs the failing stage's pass pipeline on its input (or call.py where no pipeline is to blame).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import sys
from typing import Optional

import torch


def directory(dump_dir: str, op: str, key) -> str:
    """The key's repro directory (created)."""
    d = os.path.join(dump_dir, f"{op}-{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}")
    os.makedirs(d, exist_ok=True)
    return d


def torch_mlir_opt() -> str:
    spec = importlib.util.find_spec("torch_mlir")
    base = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else ""
    return os.path.join(base, "_mlir_libs", "torch-mlir-opt")


def _stage_command(d: str, category: str) -> tuple:
    """(stage, input file, pass pipeline) of the failing stage, or (stage, None, None) when no pipeline applies."""
    stage = category
    if category in ("crash", "timeout"):
        try:
            with open(os.path.join(d, "stage.txt")) as f:
                stage = f.read().strip() or category
        except OSError:
            pass
    pre = "decomposed." if stage.startswith("decomposed.") else ""
    name = stage[len(pre):]
    src = {"lowering": "torch.mlir", "llvm": "linalg.mlir"}.get(name)
    if src is None:
        return stage, None, None
    try:        # the worker wrote the pipelines it runs (build/lowering.REPLAY)
        with open(os.path.join(d, name + ".pipeline")) as f:
            return stage, pre + src, f.read()
    except OSError:
        return stage, None, None


def write(d: str, func, args, kwargs, category: str, reason: str, key, llvm_ir: Optional[str] = None) -> str:
    """Fill the key's directory after its failure; returns it. Never raises (a repro must not cost the call)."""
    try:
        if llvm_ir is not None:
            with open(os.path.join(d, "llvm.mlir"), "w") as f:
                f.write(llvm_ir)
        stage, src, pipeline = _stage_command(d, category)
        if src is not None and not os.path.exists(os.path.join(d, src)):
            src = "decomposed." + src          # only the decomposed attempt reached this stage
        with open(os.path.join(d, "failure.txt"), "w") as f:
            f.write(f"op: {func}\ncategory: {category}\nstage: {stage}\nreason: {reason}\nkey: {key!r}\n")
        try:
            torch.save((args, kwargs), os.path.join(d, "inputs.pt"))
            saved = True
        except Exception:
            saved = False
        ns, rest = str(func).split(".", 1)
        packet, overload = rest.rsplit(".", 1)
        with open(os.path.join(d, "call.py"), "w") as f:
            f.write(
                "# The failing call through torch_mlir_eager in strict mode: raises StrictModeError while it fails.\n"
                "import os, torch, torch_mlir_eager as tme\n"
                "here = os.path.dirname(os.path.abspath(__file__))\n"
                + ("args, kwargs = torch.load(os.path.join(here, 'inputs.pt'), weights_only=False)\n" if saved
                   else "raise SystemExit('the inputs could not be saved: see failure.txt for their key')\n")
                + f"op = torch.ops.{ns}.{packet}.{overload}\n"
                "with tme.config.override(strict=True, dump_dir='', disk_cache=False), tme.enable():\n"
                "    op(*args, **kwargs)\n"
                "print('no failure: the call ran through MLIR')\n")
        lines = ["#!/bin/sh", f"# {func}: {category} at stage {stage}: {reason}", "cd \"$(dirname \"$0\")\""]
        if src is not None and os.path.exists(os.path.join(d, src)):
            lines.append(f"{shlex.quote(torch_mlir_opt())} --pass-pipeline={shlex.quote(pipeline)} {src} "
                         f"-o /dev/null")
        else:
            lines.append(f"{shlex.quote(sys.executable)} call.py")
        path = os.path.join(d, "repro.sh")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(path, 0o755)
    except Exception:
        pass
    return d
