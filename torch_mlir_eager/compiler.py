"""get_kernel(key, ...): a hit returns at once; a miss is compiled and qualified in the worker, then JIT-loaded."""
from __future__ import annotations

import atexit
import collections
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from . import config, schedules
from .cache import KernelCache
from .errors import CompileFailure
from .worker import _HEADER, send

log = logging.getLogger(__name__)

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Forked:
    """A worker forked by the zygote, with the part of subprocess.Popen's interface WorkerClient uses. It is the
    zygote's child, so its exit status comes from the zygote."""

    def __init__(self, zygote: "_Zygote", pid: int, stdin, stdout):
        self._z, self.pid, self.stdin, self.stdout = zygote, pid, stdin, stdout
        self.returncode: Optional[int] = None

    def _status(self, verb: str) -> Optional[int]:
        if self.returncode is None:
            r = self._z.ask(f"{verb} {self.pid}".encode())
            if r is None:                      # the zygote is gone: so is its view of this child
                self.returncode = -signal.SIGKILL
            elif r != b"running":
                st = int(r)
                self.returncode = os.waitstatus_to_exitcode(st) if st >= 0 else -signal.SIGKILL
        return self.returncode

    def poll(self) -> Optional[int]:
        return self._status("poll")

    def wait(self) -> Optional[int]:
        return self._status("wait")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Zygote:
    """The fork server (worker.zygote): started once, warmed up once; each worker is a fork of it."""

    def __init__(self, stderr):
        import socket
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from torch_mlir_eager.worker import zygote; zygote({theirs.fileno()})"],
            env=dict(_worker_env(), OPENBLAS_NUM_THREADS="1"),   # numpy's BLAS would start a thread at import
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=(theirs.fileno(),))
        theirs.close()
        self._sock.settimeout(config.get().worker_start_timeout_s)
        try:
            ok = self._sock.recv(16) == b"ready"
        except OSError:
            ok = False
        self._sock.settimeout(30)
        if not ok:
            self.close()
            raise OSError("zygote did not start")

    def alive(self) -> bool:
        return self._proc.poll() is None

    def ask(self, msg: bytes, fds=()) -> Optional[bytes]:
        import socket
        try:
            socket.send_fds(self._sock, [msg], list(fds))
            return self._sock.recv(64) or None
        except OSError:
            return None

    def fork(self, stderr_fd: int) -> _Forked:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            pid = self.ask(b"fork", (in_r, out_w, stderr_fd))
        finally:
            os.close(in_r)
            os.close(out_w)
        if pid is None:
            os.close(in_w)
            os.close(out_r)
            raise OSError("zygote did not fork")
        return _Forked(self, int(pid), os.fdopen(in_w, "wb", buffering=0), os.fdopen(out_r, "rb", buffering=0))

    def close(self) -> None:
        self._sock.close()
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def _worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return env


class WorkerClient:
    """One compile worker, started lazily, reused, restarted after it dies or is killed for a time-out. Workers are
    forked from a warmed-up zygote (a restart costs a fork, not a new interpreter); without one, each is a new
    process."""

    def __init__(self):
        self._proc = None
        self._stderr = None
        self._zygote: Optional[_Zygote] = None
        self._zygote_stderr = None
        self._lock = threading.Lock()
        self.starts = 0

    def _new_process(self):
        if self._zygote is None or not self._zygote.alive():
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = None
            if self._zygote_stderr is None:
                self._zygote_stderr = tempfile.TemporaryFile()
            try:
                self._zygote = _Zygote(self._zygote_stderr)
            except OSError as e:
                log.info("no zygote (%s): workers start as new processes", e)
        if self._zygote is not None:
            try:
                return self._zygote.fork(self._stderr.fileno())
            except OSError as e:
                log.info("zygote fork failed (%s): a new process instead", e)
                self._zygote.close()
                self._zygote = None
        # -c, not -m: runpy's warning that the package already imported the module would be stderr's last line,
        # which a crash's reason quotes when the signal left no message of its own.
        return subprocess.Popen([sys.executable, "-c", "from torch_mlir_eager.worker import main; main()"],
                                env=_worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._stderr)

    def _start(self) -> None:
        if self._stderr is not None:
            self._stderr.close()          # the previous worker's log: one open file, not one per restart
        self._stderr = tempfile.TemporaryFile()
        self._proc = self._new_process()
        self.starts += 1
        reply = self._recv(config.get().worker_start_timeout_s, "worker start")
        if "ready" not in reply:
            self._kill()
            raise CompileFailure("crash", f"worker did not start: {reply}")

    def _kill(self) -> None:
        p, self._proc = self._proc, None
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 4096))
            lines = [l for l in self._stderr.read().decode(errors="replace").splitlines() if l.strip()]
        except (OSError, ValueError):
            return ""
        for l in reversed(lines):          # "LLVM ERROR: ..." says more than a trailing traceback line
            if "ERROR" in l or "error" in l:
                return l.strip()
        return lines[-1].strip() if lines else ""

    def _died(self) -> CompileFailure:
        p = self._proc
        code = p.wait() if p is not None else None
        self._kill()
        if code is not None and code < 0:
            try:
                what = signal.Signals(-code).name
            except ValueError:
                what = f"signal {-code}"
        else:
            what = f"exit code {code}"
        tail = self._stderr_tail()
        return CompileFailure("crash", f"worker died: {what}" + (f" ({tail})" if tail else ""))

    def _recv(self, timeout_s: float, what: str):
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s

        def read(n):
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self._kill()
                    raise CompileFailure("timeout", f"{what} exceeded {timeout_s:g} s")
                b = os.read(fd, min(n - got, 1 << 20))
                if not b:
                    raise self._died()
                chunks.append(b)
                got += len(b)
            return b"".join(chunks)

        import pickle
        return pickle.loads(read(_HEADER.unpack(read(_HEADER.size))[0]))

    def compile(self, request: dict) -> dict:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
            try:
                send(self._proc.stdin.fileno(), request)
            except (BrokenPipeError, OSError):
                raise self._died() from None
            return self._recv(config.get().compile_timeout_s, "compile")

    def close(self) -> None:
        with self._lock:
            self._kill()
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None

    def forget(self) -> None:
        """In a forked child (a DataLoader worker, multiprocessing): the worker and zygote are the parent's. The
        child must not use their inherited pipes (its requests and replies would interleave with the parent's, or
        a sibling's, and a kernel qualified for one call could be taken for another) nor kill them at exit: it
        drops them, untouched, and starts a worker of its own at its first compile."""
        self._proc = self._stderr = self._zygote = self._zygote_stderr = None
        self._lock = threading.Lock()


_worker = WorkerClient()
_cache: Optional[KernelCache] = None
compile_seconds: collections.deque = collections.deque(maxlen=100_000)   # each successful compile, for medians
_cache_lock = threading.Lock()
atexit.register(_worker.close)


def kernel_threads() -> int:
    """Threads a scheduled kernel may use: torch's own setting (same thread count as native), when an OpenMP
    runtime is installed; else 1."""
    import torch
    from .kernel import openmp_runtime
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


class _InProcess:
    """config isolate=False: compile in this process (no worker round trip; a crash or hang in torch-mlir or LLVM
    then takes the program down: for trusted setups only). One MLIR context, renewed as the worker renews its."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ctx, self._served = None, 0

    def compile(self, request: dict) -> dict:
        from . import worker as w
        with self._lock:
            if self._ctx is None or self._served % 200 == 0:
                from torch_mlir import ir
                from torch_mlir.dialects import torch as torch_d
                self._ctx = ir.Context()
                torch_d.register_dialect(self._ctx)
            self._served += 1
            if request.get("inject") in ("abort", "hang"):
                raise CompileFailure("unsupported", "fault injection needs an isolated worker")
            return w.compile_request(self._ctx, request)


_in_process = _InProcess()


def _after_fork_in_child() -> None:
    global _cache_lock
    _worker.forget()
    _in_process._lock = threading.Lock()
    _cache_lock = threading.Lock()
    if _cache is not None:
        _cache.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _compile(request: dict) -> dict:
    return (_worker if config.get().isolate else _in_process).compile(request)


def compile_kernel(key, func, args, kwargs, tensors):
    """A kernel from disk, or compiled and qualified in the worker and loaded here (its shared library, or its LLVM
    IR JIT-compiled). Raises CompileFailure; caches either way."""
    from . import disk_cache
    from .kernel import Kernel, load_library
    cfg = config.get()
    request = {"op": str(func), "args": args, "kwargs": kwargs, "inject": cfg.inject.get(str(func), ""),
               "schedules": cfg.schedules, "threads": kernel_threads()}
    if cfg.dump_dir:
        from . import repro
        try:
            request["dump"] = repro.directory(cfg.dump_dir, str(func), key)
        except OSError as e:
            log.warning("dump dir %s: %s", cfg.dump_dir, e)
    t0 = time.perf_counter()
    # A kernel compiled by an earlier process (never while a test hook makes the worker misbehave)
    disk = disk_cache.get() if not request["inject"] else None
    env = disk_cache.env_id(request["threads"], request["schedules"]) if disk is not None else None
    if disk is not None:
        kernel = disk.load(env, key)
        if kernel is not None:
            cache().put(key, kernel)
            compile_seconds.append(time.perf_counter() - t0)
            log.info("loaded %s %s -> %s from disk in %.1f ms", func, kernel.inputs, kernel.outputs,
                     1e3 * (time.perf_counter() - t0))
            return kernel
    try:
        try:
            try:
                reply = _compile(request)
            except CompileFailure as e:
                if e.category not in ("timeout", "crash") or not request["schedules"] \
                        or not schedules.may_apply(request["op"]):
                    raise
                # A schedule may be what hung or crashed: once more with plain loops only.
                log.info("compile %s: %s; retrying without schedules", func, e)
                reply = _compile(dict(request, schedules=False))
        except CompileFailure:
            raise
        except Exception as e:   # e.g. an argument that cannot be sent to the worker
            raise CompileFailure("unsupported", f"cannot send call to the worker: {type(e).__name__}: {e}")
        if "fail" in reply:
            raise CompileFailure(*reply["fail"])
        llvm_ir, ins, outs = reply["ok"]
        so = reply["info"].pop("so", None)     # the qualified object code, linked (None: no linker here)
        engine = load_library(so) if so is not None else None
        kernel = Kernel(llvm_ir, ins, outs, input_perms=reply["info"].get("input_perms"),
                        inplace_safe=reply["info"].get("inplace_safe") is True, engine=engine)
    except CompileFailure as e:
        cache().put_failure(key, e)
        if request.get("dump"):
            from . import repro
            e.repro = repro.write(request["dump"], func, args, kwargs, e.category, e.reason, key)
        log.info("compile %s failed after %.1f ms: %s", func, 1e3 * (time.perf_counter() - t0), e)
        raise
    cache().put(key, kernel)
    if request.get("dump"):
        shutil.rmtree(request["dump"], ignore_errors=True)      # dump dirs are for failing keys only
    if disk is not None:
        disk.store(env, key, kernel, so if engine is not None else None)
    compile_seconds.append(time.perf_counter() - t0)
    log.info("compiled %s %s -> %s in %.1f ms (%s)", func, kernel.inputs, kernel.outputs,
             1e3 * (time.perf_counter() - t0),
             ", ".join([f"{k} {1e3 * v:.1f} ms" for k, v in reply["times"].items()]
                       + [f"{k} {v}" for k, v in reply["info"].items()]))
    return kernel

