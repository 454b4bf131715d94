"""The compile worker: a child process that compiles and qualifies one kernel per request (build/stages.py).

A crash (LLVM abort, segfault in a new kernel) or a hang kills only this process; the host records it and goes on.
Started by worker/client.py, as a process of its own or forked from a warmed-up zygote; messages are protocol.py's,
on stdin and a private copy of stdout.
"""
from __future__ import annotations

import importlib
import os
import socket
import sys

import torch
from torch_mlir import ir
from torch_mlir.dialects import torch as torch_d

from .. import decompositions
from ..build import graph, importer, lowering
from ..build.stages import compile_request
from .protocol import Ready, read_exact, receive, send


def new_context() -> ir.Context:
    """An MLIR context with the Torch dialect registered."""
    c = ir.Context()
    torch_d.register_dialect(c)
    return c


def _warm() -> None:
    """Everything a worker pays once, before "ready" (torch, the MLIR bindings and build/ are imported with this
    module): the JIT's bindings and the decomposition table."""
    importlib.import_module("torch_mlir.execution_engine")
    decompositions.table()


def _serve() -> None:
    # Protocol on a private copy of stdout; anything else printed (LLVM, warnings) goes to stderr.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    ctx, served = new_context(), 0
    read = read_exact(0)
    send(proto_out, Ready(os.getpid()))
    while True:
        req = receive(read)
        if req is None:
            return
        if served and served % 200 == 0:   # the context interns every type and attribute: renew it
            ctx = new_context()
        served += 1
        send(proto_out, compile_request(ctx, req))


def main() -> None:
    _warm()
    _serve()


def _warm_compile() -> None:
    """One small call imported and lowered to the LLVM dialect, not JIT-compiled (an ExecutionEngine starts
    threads): what a fresh process pays on its first compile (FakeTensor, make_fx, pass registration; ~1 s) is
    then paid once, in the zygote, not by every worker forked after a crash."""
    ctx = ir.Context()
    ctx.enable_multithreading(False)
    torch_d.register_dialect(ctx)
    try:
        x = torch.ones(4)
        for build in (graph.one_node_graph, graph.decomposed_graph):
            g, _ = build(torch.ops.aten.add.Tensor, (x, x), {}, [x, x])
            module = importer.import_graph(ctx, g)
            lowering.to_linalg(module)
            lowering.to_llvm(module)
    except Exception:          # warming up is an optimization only
        pass


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def zygote(ctl_fd: int) -> None:
    """A warmed-up process that forks workers on request (a fork server): a worker restart after a crash or a
    time-out then costs a fork (~10-30 ms) instead of a new interpreter importing torch and MLIR (~1.2 s).
    Requests on the SOCK_SEQPACKET socket `ctl_fd`: b"fork" with the worker's stdin, stdout and stderr as
    SCM_RIGHTS fds -> its pid; b"wait PID" -> its wait status once it has exited; b"poll PID" -> the status or
    b"running". EOF (the parent is gone) ends it. Forking is safe here: this process never starts a thread."""
    _warm()
    _warm_compile()
    sock = socket.socket(fileno=ctl_fd)
    if _os_threads() != 1:            # a fork would copy a process whose other threads hold locks: refuse
        sock.send(b"threads")
        return
    sock.send(b"ready")
    done: dict = {}
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 64, 3)
        except OSError:
            return
        if not msg:
            return
        if msg == b"fork" and len(fds) == 3:
            pid = os.fork()
            if pid == 0:                      # the worker
                try:
                    sock.close()
                    for i, fd in enumerate(fds):
                        os.dup2(fd, i)
                        os.close(fd)
                    _serve()
                finally:
                    os._exit(0)
            for fd in fds:
                os.close(fd)
            sock.send(str(pid).encode())
            continue
        for fd in fds:
            os.close(fd)
        verb, _, arg = msg.partition(b" ")
        pid = int(arg or 0)
        if pid not in done:
            try:
                got, status = os.waitpid(pid, os.WNOHANG if verb == b"poll" else 0)
            except ChildProcessError:
                got, status = pid, -1
            if got:
                done[pid] = status
        sock.send(str(done[pid]).encode() if pid in done else b"running")
        if verb == b"wait":
            done.pop(pid, None)
