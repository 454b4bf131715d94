"""The compile worker: a child process that builds, lowers, JITs and qualifies one kernel per request.

A crash (LLVM abort, segfault in a new kernel) or a hang kills only this process; the parent records it and goes on.
Run as `python -m torch_mlir_eager.worker`; messages are length-prefixed pickles on stdin / a private stdout fd.
"""
from __future__ import annotations

import functools
import importlib
import os
import pickle
import struct
import sys
import time

_HEADER = struct.Struct("<Q")


def send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def recv_blocking(fd: int):
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(head)[0])
    return pickle.loads(body)


def _read_exact(fd: int, n: int):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def resolve(name: str):
    """'aten.add.Tensor' -> torch.ops.aten.add.Tensor."""
    import torch
    ns, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, ns), op), overload)


# ---------------------------------------------------------------- the work, run in the child

# Contractions: a sum over K products in another order (blocked GEMM, oneDNN's conv algorithms) differs from
# native by ~eps * sqrt(K) * |term|, i.e. a few eps times the output's RMS, which exceeds a fixed atol once K is a
# few hundred. For these ops atol is 1e-5 (f32) times the output's RMS: ~16x above the typical reordering error,
# while a wrong kernel errs by O(RMS) and still fails.
CONTRACTIONS = frozenset({"aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.baddbmm.default",
                          "aten.addbmm.default", "aten.mv.default", "aten.addmv.default", "aten.dot.default",
                          "aten.vdot.default", "aten.convolution.default", "aten._convolution.default",
                          "aten.convolution_backward.default", "aten.linear.default", "aten.matmul.default",
                          "aten.tensordot.default", "aten.einsum.default", "aten._native_multi_head_attention.default"})


# Ops whose kernels take a transposed input (a linear layer's weight.t(), k.transpose(-1, -2) in attention) as
# its contiguous base and permute it inside the kernel, instead of a transposed copy per call.
TAKES_TRANSPOSED = frozenset({"aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                              "aten.baddbmm.default"})


def _transposed_rhs_perms(func, tensors, natives):
    """Per tensor, the permutation that untransposes the matmul's right-hand side, where the kernel should take it
    untransposed; None for the usual contiguous inputs. The scheduled kernel reads the base itself: the dot-product
    form for few rows (a linear layer at batch 1: 15 us instead of a 670 us weight copy), else a packing copy into
    the GEMM's panels (schedules.MATMUL_PACKED; BERT's 128x256 by 1024 linear: 277 us instead of 472 with
    PyTorch's transposed copy first). Also a right-hand side whose transpose is only row-contiguous (attention's
    k^T, a slice of the fused q/k/v projection): the kernel then gets its transpose copied row by row, which is
    what PyTorch's own copy would cost without the transposing (BERT's q k^T: 4x64x128).
    """
    if str(func) not in TAKES_TRANSPOSED or not tensors or not natives or natives[0] is None or natives[0].dim() < 2:
        return None
    rhs = tensors[-1]
    n = rhs.dim()
    if n < 2 or rhs.is_contiguous() or rhs.stride(-2) != 1 or rhs.size(-1) < 2:
        return None
    return [None] * (len(tensors) - 1) + [tuple(range(n - 2)) + (n - 1, n - 2)]


def tolerance(func, want) -> dict:
    """rtol/atol for qualifying a kernel against native PyTorch: tight, by dtype; integers and bools exact."""
    import torch
    tol = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7),
           torch.float16: dict(rtol=1e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
           }.get(want.dtype, dict(rtol=0, atol=0))
    if str(func) in CONTRACTIONS and want.is_floating_point() and want.numel():
        rms = float(want.detach().double().pow(2).mean().sqrt())
        if rms == rms:        # not NaN
            tol["atol"] = max(tol["atol"], tol["atol"] * rms)
    return tol


def _signature_check(module, inputs, outputs) -> None:
    """The lowered function's types must be the ones native PyTorch gives (else the kernel would overrun buffers)."""
    from .errors import CompileFailure
    from .kernel import MLIR_ELEMENT
    func = next(op for op in module.body.operations if op.operation.name == "func.func")
    ftype = func.attributes["function_type"].value
    for kind, types, metas in (("input", ftype.inputs, inputs), ("result", ftype.results, outputs)):
        if len(types) != len(metas):
            raise CompileFailure("meta", f"{kind} count {len(types)} != {len(metas)}")
        for t, m in zip(types, metas):
            want = f"tensor<{''.join(f'{d}x' for d in m.shape)}{MLIR_ELEMENT[m.dtype]}>"
            if str(t) != want:
                raise CompileFailure("meta", f"{kind} type {t} != native {want}")


def _single_pointwise(module) -> bool:
    """True when the Linalg function is one all-parallel linalg.generic that reads argument 0 through the identity
    map and returns its result: each output element depends only on the same element of argument 0, so the kernel
    may write into argument 0's memory (a pointwise in-place op). Anything else may stage results in the output."""
    from torch_mlir import ir
    func = next(op for op in module.body.operations if op.operation.name == "func.func")
    ops = [op.operation for op in func.regions[0].blocks[0].operations]
    generics = [op for op in ops if op.name == "linalg.generic"]
    others = [op for op in ops if op.name not in ("linalg.generic", "tensor.empty", "arith.constant", "func.return")]
    if len(generics) != 1 or others:
        return False
    g = generics[0]
    if any("parallel" not in str(t) for t in g.attributes["iterator_types"]):
        return False
    arg0 = func.regions[0].blocks[0].arguments[0]
    maps = list(g.attributes["indexing_maps"])
    n_in = len(g.operands) - len(g.results)
    reads_arg0 = [i for i in range(n_in) if g.operands[i] == arg0]
    if not reads_arg0 or any(not ir.AffineMapAttr(maps[i]).value.is_permutation or
                             str(ir.AffineMapAttr(maps[i]).value) != str(ir.AffineMapAttr(maps[-1]).value)
                             for i in reads_arg0):
        return False
    ret = ops[-1]
    return len(ret.operands) == 1 and ret.operands[0] == g.results[0]


# Bounds checks torch-mlir puts on gathered indices: they cannot fire, because an op reading positions from an index
# argument is compiled only with a range check that runs before every call (validate.py), and indices computed
# inside a kernel (argmax, pooling) are in range by construction.
_INDEX_ASSERTS = ("index must be larger or equal to 0", "index must be smaller than dim size")


def _runtime_aborts(llvm_ir: str) -> str:
    """The messages of the kernel's run-time assertions ("" if none). torch-mlir lowers some value checks to an
    abort() in the kernel (linalg_vector_norm: "unimplemented: tensor with zero element", reached with a NaN
    input): a first run that passes proves nothing about later values, and an abort would end the user's process,
    so such a kernel is never used."""
    if "llvm.call @abort" not in llvm_ir:
        return ""
    import re
    msgs = set()
    for codes in re.findall(r"@assert_msg\w*\(dense<\[([\d, ]+)\]>", llvm_ir):
        msgs.add(bytes(int(c) for c in codes.split(",") if int(c)).decode(errors="replace").strip())
    return "; ".join(sorted(msgs))[:200] or "abort()"


def _resampled(func, args, kwargs, tensors) -> tuple:
    """(tensors, natives) of the call with other values: each floating input refilled from a seeded normal
    distribution (same shape and strides), the others kept."""
    import torch
    from .spec import map_tensors
    g = torch.Generator().manual_seed(0)
    new = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(torch.randn(t.shape, generator=g))
           if t.is_floating_point() else t for t in tensors]
    it = iter(new)
    a, k = map_tensors((args, kwargs), lambda _t: next(it))
    out = func(*a, **k)
    return new, list(out) if isinstance(out, (tuple, list)) else [out]


def _qualify(func, tensors, natives, llvm_ir, in_metas, out_metas, inject: str, perms=None, link=True,
             resample=None):
    """JIT the kernel, run it on the call's inputs and compare with native PyTorch; raise if anything is off.
    Returns its object code as a shared library (or None): what was qualified is then exactly what the parent
    loads, instead of JIT-compiling the IR a second time. Where the results are ones the dispatcher replaces by
    native's (validate.result_guard: a NaN in a layer norm's row, a flagged factorization), they prove nothing:
    the kernel is qualified on `resample()`'s (tensors, natives) instead."""
    import torch
    from .errors import CompileFailure
    from .kernel import Kernel, link_library, load_library
    from .validate import result_guard
    aborts = _runtime_aborts(llvm_ir)
    if aborts and not all(m.startswith(_INDEX_ASSERTS) for m in aborts.split("; ")):
        raise CompileFailure("unsupported", f"kernel has a run-time check that aborts the process: {aborts}")
    kernel = Kernel(llvm_ir, in_metas, out_metas, input_perms=perms)
    so = link_library(kernel) if link else None
    engine = load_library(so) if so is not None else None
    if engine is not None:
        kernel = Kernel(llvm_ir, in_metas, out_metas, input_perms=perms, engine=engine)
    else:
        so = None
    try:
        outs = kernel.run(tensors)
    except Exception as e:
        raise CompileFailure("runtime", f"{type(e).__name__}: {e}") from None
    guard = result_guard(func)
    if guard is not None and resample is not None and guard(outs) is not None:
        tensors, natives = resample()
        try:
            outs = kernel.run(tensors)
        except Exception as e:
            raise CompileFailure("runtime", f"{type(e).__name__}: {e}") from None
        why = guard(outs)
        if why is not None:
            raise CompileFailure("unsupported", f"not qualified: other values were refused too ({why})")
    if inject == "wrong":
        outs = [o + 1 if o.dtype != torch.bool else ~o for o in outs]
    for got, want in zip(outs, natives):
        if want is None:
            continue
        try:
            torch.testing.assert_close(got, want, equal_nan=True, **tolerance(func, want))
        except AssertionError as e:
            raise CompileFailure("mismatch", " ".join(str(e).split("\n")[:3])) from None
    return so


def _dump(req: dict, name: str, text) -> None:
    """Dump-dir mode (repro.py): write a stage's input as it is reached, so that even a crash leaves the last one."""
    d = req.get("dump")
    if d:
        try:
            with open(os.path.join(d, name), "w") as f:
                f.write(text())
        except Exception:       # a repro must never cost the compile
            pass


def _attempt(ctx, func, args, kwargs, tensors, natives, decompose: bool, req: dict, times: dict, info: dict):
    from . import importer, lowering, schedules
    from .errors import CompileFailure
    from .kernel import MLIR_ELEMENT, TensorMeta

    inject = req.get("inject", "")
    t0 = time.perf_counter()
    perms = _transposed_rhs_perms(func, tensors, natives) if req.get("schedules", True) else None
    if perms is not None:
        info["input_perms"] = perms
    if importer.needs_upcast(tensors, natives):
        info["upcast"] = True
        graph, fakes = importer.upcast_graph(func, args, kwargs, tensors, perms, decompose)
    else:
        build = importer.decomposed_graph if decompose else importer.one_node_graph
        graph, fakes = build(func, args, kwargs, tensors, perms)
    for f in fakes:
        if f.dtype not in MLIR_ELEMENT:
            raise CompileFailure("unsupported", f"result dtype {f.dtype}")
    pre = "decomposed." if decompose else ""
    _dump(req, pre + "graph.txt", lambda: graph.python_code("self").src)
    _dump(req, "stage.txt", lambda: pre + "import")
    module = importer.import_graph(ctx, graph)
    t1 = time.perf_counter()
    _dump(req, pre + "torch.mlir", lambda: str(module))
    _dump(req, "stage.txt", lambda: pre + "lowering")
    lowering.to_linalg(module)
    if getattr(graph, "tme_libm", None):
        lowering.call_libm(module, graph.tme_libm)
    lowering.expand_math(module)
    lowering.reassociate_reductions(module)
    _dump(req, pre + "linalg.mlir", lambda: str(module))
    bases = tensors if perms is None else [t if p is None else t.permute(p) for t, p in zip(tensors, perms)]
    resample = functools.partial(_resampled, func, args, kwargs, tensors)
    in_metas = [TensorMeta(t.shape, t.dtype) for t in bases]
    out_metas = [TensorMeta.of(n, empty=not c) if n is not None else None
                 for n, c in zip(natives, importer.computed(natives))]
    _signature_check(module, in_metas, [m for m in out_metas if m is not None and not m.empty])
    info["inplace_safe"] = _single_pointwise(module)
    lowering.flatten_elementwise(module)
    _dump(req, pre + "flat.mlir", lambda: str(module))
    t2 = time.perf_counter()
    # A schedule first (if one fits and schedules are on); any failure of it falls back to the plain loops.
    sched = schedules.select(module, req.get("threads", 1)) if req.get("schedules", True) else None
    if sched is not None:
        try:
            _dump(req, "stage.txt", lambda: f"{pre}schedule {sched.family}")
            llvm_ir = str(schedules.to_llvm(module, sched, noalias=not info["inplace_safe"]))
            t3 = time.perf_counter()
            info["so"] = _qualify(func, tensors, natives, llvm_ir, in_metas, out_metas, inject, perms,
                                  req.get("link", True), resample)
            times.update(import_s=t1 - t0, linalg_s=t2 - t1, llvm_s=t3 - t2, jit_run_s=time.perf_counter() - t3)
            info["schedule"] = sched.family
            return llvm_ir, in_metas, out_metas
        except Exception as e:      # whatever went wrong with the schedule, plain loops come next
            info["schedule_failed"] = f"{sched.family}: {type(e).__name__}: {e}"
    t2 = time.perf_counter()
    _dump(req, "stage.txt", lambda: pre + "llvm")
    llvm_ir = str(lowering.to_llvm(module, noalias=not info["inplace_safe"]))
    t3 = time.perf_counter()
    _dump(req, pre + "llvm.mlir", lambda: llvm_ir)
    _dump(req, "stage.txt", lambda: pre + "jit")
    info["so"] = _qualify(func, tensors, natives, llvm_ir, in_metas, out_metas, inject, perms, req.get("link", True),
                          resample)
    times.update(import_s=t1 - t0, linalg_s=t2 - t1, llvm_s=t3 - t2, jit_run_s=time.perf_counter() - t3)
    info["schedule"] = "plain"
    return llvm_ir, in_metas, out_metas


def compile_request(ctx, req: dict) -> dict:
    """One request -> {"ok": (llvm_ir, in_metas, out_metas), "times": {stage: s}, "info": {...}} or
    {"fail": (category, reason)}. info: "schedule" used ("plain" or a family), "schedule_failed" (why a schedule
    was dropped), "inplace_safe" (the kernel may write into argument 0's memory), "decomposed"."""
    from . import importer
    from .errors import CATEGORIES, CompileFailure
    from .spec import flatten

    func = resolve(req["op"])
    args, kwargs, inject = req["args"], req["kwargs"], req.get("inject", "")
    if inject == "abort":
        os.abort()
    if inject == "hang":
        time.sleep(1e9)
    _, tensors = flatten(req["op"], args, kwargs)
    try:
        native = func(*args, **kwargs)
    except Exception as e:
        return {"fail": ("meta", f"native: {type(e).__name__}: {e}")}
    natives = list(native) if isinstance(native, (tuple, list)) else [native]
    import torch
    # None results (convolution_backward's unrequested gradients) are not computed; some result must be a tensor
    if not all(isinstance(n, torch.Tensor) or n is None for n in natives) or all(n is None for n in natives):
        return {"fail": ("unsupported", "non-tensor result")}
    attempts = [False] + ([True] if importer.has_decomposition(func) else [])
    if importer.decompose_only(func, dict(zip([a.name for a in func._schema.arguments], args)) | kwargs):
        attempts = [True]
    best = None
    for decompose in attempts:
        times: dict = {}
        info: dict = {"decomposed": decompose}
        try:
            llvm_ir, ins, outs = _attempt(ctx, func, args, kwargs, tensors, natives, decompose, req, times, info)
            return {"ok": (llvm_ir, ins, outs), "times": times, "info": info}
        except CompileFailure as e:
            failure = e
        except Exception as e:  # a bug on our side still must not take the user's call down
            failure = CompileFailure("import", f"{type(e).__name__}: {e}")
        # Keep the failure that got furthest: a wrong answer after decomposing matters more than a lowering gap.
        if best is None or CATEGORIES.index(failure.category) > CATEGORIES.index(best.category):
            best = failure
    return {"fail": (best.category, best.reason)}


def _warm() -> None:
    """Everything a worker pays once, before "ready": torch, the MLIR bindings, the decomposition tables."""
    for m in ("torch", "torch_mlir.ir", "torch_mlir.dialects.torch", "torch_mlir.passmanager",
              "torch_mlir.execution_engine", "torch_mlir_eager.kernel", "torch_mlir_eager.lowering",
              "torch_mlir_eager.schedules"):
        importlib.import_module(m)
    from . import importer
    importer.decomposition_table()


def _serve() -> None:
    # Protocol on a private copy of stdout; anything else printed (LLVM, warnings) goes to stderr.
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def new_context():
        c = ir.Context()
        torch_d.register_dialect(c)
        return c

    ctx, served = new_context(), 0
    send(proto_out, {"ready": os.getpid()})
    while True:
        req = recv_blocking(0)
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
    import torch
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    from . import importer, lowering
    ctx = ir.Context()
    ctx.enable_multithreading(False)
    torch_d.register_dialect(ctx)
    try:
        x = torch.ones(4)
        for build in (importer.one_node_graph, importer.decomposed_graph):
            graph, _ = build(torch.ops.aten.add.Tensor, (x, x), {}, [x, x])
            module = importer.import_graph(ctx, graph)
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
    import socket
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


if __name__ == "__main__":
    main()
