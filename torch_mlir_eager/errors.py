"""Small typed failures: each carries the stage that failed and a short reason for the report."""
from __future__ import annotations

# Stages, in the order a call meets them; also the report's fallback categories.
CATEGORIES = ("unsupported", "meta", "import", "lowering", "llvm", "jit", "runtime",
              "crash", "timeout", "mismatch")


class CompileFailure(Exception):
    """The MLIR path cannot serve this call; the call runs natively and the report records why."""

    def __init__(self, category: str, reason: str):
        assert category in CATEGORIES, category
        self.category = category
        self.reason = first_line(reason)
        self.repro = ""          # dump-dir mode: the directory that reproduces this failure (repro.py)
        super().__init__(f"{category}: {self.reason}")


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of an error text, trimmed: a stable, short report key."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            return line[:limit]
    return "(no message)"


class StrictModeError(RuntimeError):
    """Strict mode (config.strict): a call that would have fallen back to native PyTorch, or whose MLIR result
    differed from native in verify mode, raises this instead."""

    def __init__(self, op: str, category: str, reason: str):
        self.op, self.category, self.reason = op, category, reason
        super().__init__(f"{op} did not run through MLIR ({category}: {reason})")
