"""torch-mlir-eager: run unmodified PyTorch programs op by op through MLIR, with a safe fallback and a report."""
from __future__ import annotations

import atexit as _atexit
import logging as _logging
import sys as _sys

from . import config
from .report import Report
from .tensor import TorchMLIRTensor, enable, unwrap, wrap

__version__ = "0.1.0"

# INFO: one line per compile or load from disk; DEBUG: each fallback decision. Silent unless the application
# configures logging (a library's NullHandler: not even warnings reach stderr on their own).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())


def report() -> Report:
    """A snapshot of the per-op counts since start (or the last reset_report())."""
    from .dispatch import recorder
    return recorder.snapshot()


def reset_report() -> None:
    """Clear the counts; compiled kernels stay cached."""
    from .dispatch import recorder
    recorder.reset()


def cache_info() -> dict:
    from . import compiler
    return compiler.cache().info()


def _report_at_exit() -> None:
    r = report()
    if r.rows:
        print(r, file=_sys.stderr)


if config.get().report_at_exit:
    _atexit.register(_report_at_exit)

__all__ = ["TorchMLIRTensor", "wrap", "unwrap", "enable", "report", "reset_report", "Report", "cache_info",
           "config"]
