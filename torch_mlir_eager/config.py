"""Settings, read once from TORCH_MLIR_EAGER_* into a frozen value; `override(**kw)` changes them in a scope."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Mapping


@dataclasses.dataclass(frozen=True)
class Config:
    cache_size: int = 4096            # compiled kernels kept (LRU)
    negative_cache_size: int = 16384  # keys known to fail, kept so a failure is paid once
    compile_timeout_s: float = 60.0   # one compile + qualifying run in the worker
    worker_start_timeout_s: float = 180.0
    # Compile in a worker process (a crash or hang there is a recorded fallback). TORCH_MLIR_EAGER_ISOLATE=0
    # compiles in this process instead: no round trip, but a torch-mlir crash ends the program.
    isolate: bool = True
    report_at_exit: bool = False      # TORCH_MLIR_EAGER_REPORT=1
    verify: bool = False              # TORCH_MLIR_EAGER_VERIFY=1: check every MLIR result against native PyTorch
    strict: bool = False              # TORCH_MLIR_EAGER_STRICT=1: a fallback or a verify mismatch raises
    dump_dir: str = ""                # TORCH_MLIR_EAGER_DUMP_DIR: a repro per failing key (repro.py)
    disk_cache: bool = True           # keep compiled kernels on disk across processes (disk_cache.py)
    cache_dir: str = ""               # TORCH_MLIR_EAGER_CACHE_DIR; "" = $XDG_CACHE_HOME (~/.cache)/torch_mlir_eager
    disk_cache_mb: float = 1024.0     # TORCH_MLIR_EAGER_CACHE_MB: the disk cache's size bound
    schedules: bool = True            # per-op-family kernel schedules (schedules.py); 0 = plain loops only
    threads: int = 0                  # threads per scheduled kernel; 0 = torch.get_num_threads()
    # Kernels dynamic in the dims that vary (shapes.py): "auto" (static first; a dim that changes gets a dynamic
    # kernel), "always" (every dim of size >= 2 dynamic from the first call), "never" (one kernel per shape).
    dynamic: str = "auto"             # TORCH_MLIR_EAGER_DYNAMIC
    # Test hook: {"aten.op.overload": "abort" | "hang" | "wrong" | "remainder" | "remainder@host"} makes the worker
    # misbehave on that op ("remainder": a dynamic kernel wrong off multiples of 8, in the worker and here;
    # "remainder@host": here only).
    inject: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _from_env() -> Config:
    env = os.environ
    kw = {}
    if "TORCH_MLIR_EAGER_CACHE_SIZE" in env:
        kw["cache_size"] = int(env["TORCH_MLIR_EAGER_CACHE_SIZE"])
    if "TORCH_MLIR_EAGER_COMPILE_TIMEOUT" in env:
        kw["compile_timeout_s"] = float(env["TORCH_MLIR_EAGER_COMPILE_TIMEOUT"])
    kw["report_at_exit"] = _env_bool("TORCH_MLIR_EAGER_REPORT")
    kw["verify"] = _env_bool("TORCH_MLIR_EAGER_VERIFY")
    kw["strict"] = _env_bool("TORCH_MLIR_EAGER_STRICT")
    kw["dump_dir"] = env.get("TORCH_MLIR_EAGER_DUMP_DIR", "")
    if "TORCH_MLIR_EAGER_THREADS" in env:
        kw["threads"] = int(env["TORCH_MLIR_EAGER_THREADS"])
    if "TORCH_MLIR_EAGER_SCHEDULES" in env:
        kw["schedules"] = _env_bool("TORCH_MLIR_EAGER_SCHEDULES")
    if "TORCH_MLIR_EAGER_ISOLATE" in env:
        kw["isolate"] = _env_bool("TORCH_MLIR_EAGER_ISOLATE")
    if "TORCH_MLIR_EAGER_CACHE_DIR" in env:
        kw["cache_dir"] = env["TORCH_MLIR_EAGER_CACHE_DIR"]
    if "TORCH_MLIR_EAGER_DISK_CACHE" in env:
        kw["disk_cache"] = _env_bool("TORCH_MLIR_EAGER_DISK_CACHE")
    if "TORCH_MLIR_EAGER_CACHE_MB" in env:
        kw["disk_cache_mb"] = float(env["TORCH_MLIR_EAGER_CACHE_MB"])
    if "TORCH_MLIR_EAGER_DYNAMIC" in env:
        kw["dynamic"] = env["TORCH_MLIR_EAGER_DYNAMIC"].strip().lower()
    cfg = Config(**kw)
    _check(cfg)
    return cfg


DYNAMIC_MODES = ("auto", "always", "never")


def _check(cfg: Config) -> None:
    if cfg.dynamic not in DYNAMIC_MODES:
        raise ValueError(f"TORCH_MLIR_EAGER_DYNAMIC / dynamic= must be one of {', '.join(DYNAMIC_MODES)}, "
                         f"not {cfg.dynamic!r}")


_current = _from_env()


def get() -> Config:
    return _current


@contextlib.contextmanager
def override(**kw) -> Iterator[Config]:
    """Replace some settings inside a `with` block (not thread-local: meant for tests and scripts)."""
    global _current
    saved = _current
    new = dataclasses.replace(saved, **kw)
    _check(new)
    _current = new
    try:
        yield _current
    finally:
        _current = saved
