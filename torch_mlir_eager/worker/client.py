"""The host's side of a compile worker: start it (forked from a warmed-up zygote, else a new process), send it a
Request, wait for the Reply with a time limit, and turn a death or a hang into a CompileFailure."""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from .. import config
from ..errors import CompileFailure
from .protocol import Ready, Reply, Request, receive, send

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
    """The fork server (server.zygote): started once, warmed up once; each worker is a fork of it."""

    def __init__(self, stderr):
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from torch_mlir_eager.worker.server import zygote; zygote({theirs.fileno()})"],
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
        return subprocess.Popen([sys.executable, "-c", "from torch_mlir_eager.worker.server import main; main()"],
                                env=_worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._stderr)

    def _start(self) -> None:
        if self._stderr is not None:
            self._stderr.close()          # the previous worker's log: one open file, not one per restart
        self._stderr = tempfile.TemporaryFile()
        self._proc = self._new_process()
        self.starts += 1
        reply = self._recv(config.get().worker_start_timeout_s, "worker start")
        if not isinstance(reply, Ready):
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

        return receive(read)

    def compile(self, request: Request) -> Reply:
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


class InProcess:
    """config isolate=False: compile in this process (no worker round trip; a crash or hang in torch-mlir or LLVM
    then takes the program down: for trusted setups only). One MLIR context, renewed as the worker renews its."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ctx, self._served = None, 0

    def compile(self, request: Request) -> Reply:
        from . import server        # the worker side (torch_mlir) in this process: only when asked for
        with self._lock:
            if self._ctx is None or self._served % 200 == 0:
                self._ctx = server.new_context()
            self._served += 1
            if request.inject in ("abort", "hang"):
                raise CompileFailure("unsupported", "fault injection needs an isolated worker")
            return server.compile_request(self._ctx, request)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
