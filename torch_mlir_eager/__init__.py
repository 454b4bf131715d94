"""torch-mlir-eager: run unmodified PyTorch programs op by op through MLIR, with a safe fallback and a report."""
from __future__ import annotations

import atexit as _atexit
import logging as _logging
import sys as _sys

from . import config
from .report import Report
from . import compiler
from .dispatch import recorder
from .tensor import TorchMLIRTensor, enable, unwrap, wrap
from .version import __version__

# INFO: one line per compile or load from disk; DEBUG: each fallback decision. Silent unless the application
# configures logging (a library's NullHandler: not even warnings reach stderr on their own).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())


def report() -> Report:
    """A snapshot of the per-op counts since start (or the last reset_report())."""
    return recorder.snapshot()


def reset_report() -> None:
    """Clear the counts; compiled kernels stay cached."""
    recorder.reset()


def cache_info() -> dict:
    return compiler.cache().info()


def _report_at_exit() -> None:
    r = report()
    if r.rows:
        print(r, file=_sys.stderr)


if config.get().report_at_exit:
    _atexit.register(_report_at_exit)

__all__ = ["__version__", "TorchMLIRTensor", "wrap", "unwrap", "enable", "report", "reset_report", "Report", "cache_info",
           "config"]
