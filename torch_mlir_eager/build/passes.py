"""Run a list of MLIR passes on a module; a failure becomes a CompileFailure whose reason is the first diagnostic."""
from __future__ import annotations

import re

from torch_mlir import passmanager

from ..errors import CompileFailure


def pipeline_text(passes) -> str:
    return "builtin.module(" + ",".join(passes) + ")"


_LOC = re.compile(r"loc\([^)]*\)|\"[^\"]*\":\d+:\d+:?")


def diagnostic(e: Exception) -> str:
    """The first error diagnostic of an MLIRError (or the exception's first line), without locations."""
    text = str(e)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in lines:
        if "error:" in l:
            msg = _LOC.sub("", l.split("error:", 1)[1]).strip()
            return msg.split(":", 1)[1].strip() if msg.startswith("unknown:") else (msg or l)
    for l in lines[1:]:
        if l.startswith("error") or "failed" in l or "illegal" in l:
            return _LOC.sub("", l).strip()
    return lines[0] if lines else type(e).__name__


def run(module, passes, category: str) -> None:
    """Run a pipeline (a list of pass strings) on the module in place."""
    if not passes:
        return
    with module.context:
        try:
            pm = passmanager.PassManager.parse(pipeline_text(passes))
            pm.run(module.operation)
        except Exception as e:
            raise CompileFailure(category, diagnostic(e)) from None
