"""get_kernel(key, ...): a hit returns at once; a miss is compiled and qualified in the worker, then JIT-loaded."""
from __future__ import annotations

import atexit
import collections
import dataclasses
import logging
import os
import shutil
import threading
import time
from typing import Optional

import torch

from . import config, disk_cache, repro
from .cache import KernelCache
from .errors import CompileFailure
from .host import openmp_runtime
from .kernel import Kernel, load_library
from .worker.client import InProcess, WorkerClient
from .worker.protocol import Failed, Request

# The aten ops whose modules a contraction schedule may serve (build/schedules: conv2d, matmul): the host retries
# these without schedules after a crash or time-out. For other ops a retry would mostly repeat the failure
# (split-loops, which may serve any op, is plain loops cut in slices; a crash there stays a recorded fallback).
SCHEDULED_OPS = frozenset({"aten.convolution.default", "aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                           "aten.baddbmm.default"})

log = logging.getLogger(__name__)


_worker = WorkerClient()
_cache: Optional[KernelCache] = None
compile_seconds: collections.deque = collections.deque(maxlen=100_000)   # each successful compile, for medians
_cache_lock = threading.Lock()
atexit.register(_worker.close)


def kernel_threads() -> int:
    """Threads a scheduled kernel may use: torch's own setting (same thread count as native), when an OpenMP
    runtime is installed; else 1."""
    n = config.get().threads or torch.get_num_threads()
    return n if n > 1 and openmp_runtime() else 1


def cache() -> KernelCache:
    """The process-wide kernel cache, sized from the config in force at its first use."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = KernelCache()
    return _cache


def worker() -> WorkerClient:
    return _worker


_in_process = InProcess()


def _after_fork_in_child() -> None:
    global _cache_lock
    _worker.forget()
    _in_process.after_fork()
    _cache_lock = threading.Lock()
    if _cache is not None:
        _cache.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _compile(request: Request):
    return (_worker if config.get().isolate else _in_process).compile(request)


def _compile_retrying(func, request: Request):
    """The worker's reply; a crash or time-out of an op a schedule may serve is retried once with plain loops."""
    try:
        try:
            return _compile(request)
        except CompileFailure as e:
            if e.category not in ("timeout", "crash") or not request.schedules or request.op not in SCHEDULED_OPS:
                raise
            # A schedule may be what hung or crashed: once more with plain loops only.
            log.info("compile %s: %s; retrying without schedules", func, e)
            return _compile(dataclasses.replace(request, schedules=False))
    except CompileFailure:
        raise
    except Exception as e:   # e.g. an argument that cannot be sent to the worker
        raise CompileFailure("unsupported", f"cannot send call to the worker: {type(e).__name__}: {e}") from None


def compile_kernel(key, func, args, kwargs, tensors, dynamic=None, why: str = ""):
    """A kernel from disk, or compiled and qualified in the worker and loaded here (its shared library, or its LLVM
    IR JIT-compiled). Raises CompileFailure; caches either way. `dynamic`: per tensor, the dims the kernel takes at
    any size (shapes.py decides; `key` is then its generic key), `why` says why, at the head of the log line."""
    cfg = config.get()
    inject = cfg.inject.get(str(func), "")
    request = Request(str(func), args, kwargs, schedules=cfg.schedules, threads=kernel_threads(),
                      inject=inject, dynamic=tuple(tuple(d) for d in dynamic) if dynamic else ())
    if cfg.dump_dir:
        try:
            request.dump = repro.directory(cfg.dump_dir, str(func), key)
        except OSError as e:
            log.warning("dump dir %s: %s", cfg.dump_dir, e)
    t0 = time.perf_counter()
    # A kernel compiled by an earlier process (never while a test hook makes the worker misbehave)
    disk = disk_cache.get() if not request.inject else None
    env = disk_cache.env_id(request.threads, request.schedules) if disk is not None else None
    if disk is not None:
        kernel = disk.load(env, key)
        if kernel is not None:
            cache().put(key, kernel)
            compile_seconds.append(time.perf_counter() - t0)
            log.info("%sloaded %s %s -> %s from disk in %.1f ms", why, func, kernel.inputs, kernel.outputs,
                     1e3 * (time.perf_counter() - t0))
            return kernel
    try:
        reply = _compile_retrying(func, request)
        if isinstance(reply, Failed):
            raise CompileFailure(reply.category, reply.reason)
        engine = load_library(reply.so) if reply.so is not None else None   # None: JIT-compile the IR here
        kernel = Kernel(reply.llvm_ir, reply.inputs, reply.outputs, input_perms=reply.input_perms,
                        inplace_safe=reply.inplace_safe is True, engine=engine, dynamic=dynamic,
                        broken_remainder=inject.startswith("remainder"), result_sizes=reply.result_sizes,
                        size_symbols=reply.size_symbols)
    except CompileFailure as e:
        cache().put_failure(key, e)
        if request.dump:
            e.repro = repro.write(request.dump, func, args, kwargs, e.category, e.reason, key)
        log.info("%scompile %s failed after %.1f ms: %s", why, func, 1e3 * (time.perf_counter() - t0), e)
        raise
    cache().put(key, kernel)
    if request.dump:
        shutil.rmtree(request.dump, ignore_errors=True)      # dump dirs are for failing keys only
    if disk is not None:
        disk.store(env, key, kernel, reply.so if engine is not None else None)
    compile_seconds.append(time.perf_counter() - t0)
    log.info("%scompiled %s %s -> %s in %.1f ms (%s)", why, func, kernel.inputs, kernel.outputs,
             1e3 * (time.perf_counter() - t0), reply.summary())
    return kernel
