"""Compiled kernels kept on disk across processes: LLVM-dialect IR plus, where a linker is installed, the JIT's
object code linked into a shared library, so that a second process loads a kernel in well under a millisecond
instead of compiling it again (a ResNet18 conv: ~70 ms of JIT alone).

Layout: <root>/<env>/<k[:2]>/<k>.json, .mlir, .so, where <env> hashes everything that decides the code (this
package's sources, torch, torch-mlir, the host CPU's flags, schedules and thread count) and <k> hashes the call's
cache key. The .json (written last: the commit point) holds the key, the kernel's tensor metadata and a SHA-256 of
each payload file: an entry whose hash does not match (corrupt, truncated, half-written) is deleted and compiled
again, never loaded. Nothing is unpickled. The root is created 0700 and refused if others may write to it.
Entries are evicted oldest-used first once the root holds more than `disk_cache_mb`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from importlib import metadata
from typing import Optional

import torch

from . import config
from .host import cpu_flags, linker
from .kernel import Kernel, TensorMeta, load_library
from .version import __version__

log = logging.getLogger(__name__)

FORMAT = 1
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()


def default_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torch_mlir_eager")


def root() -> Optional[str]:
    """The cache root in force, or None when the disk cache is off."""
    cfg = config.get()
    if not cfg.disk_cache:
        return None
    return cfg.cache_dir or default_root()


def _safe_dir(path: str) -> bool:
    """Create `path` (0700) if needed; it must be ours and writable by no one else (others could plant code)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        log.warning("disk cache off: %s: %s", path, e)
        return False
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        log.warning("disk cache off: %s is not owned by this user or is writable by others", path)
        return False
    return True


def _sources_hash() -> str:
    """The package's own sources (subpackages included), hashed: a kernel compiled by other code is not reused."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(_PKG_DIR)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    h.update(os.path.relpath(path, _PKG_DIR).encode() + b"\0" + f.read())
    return h.hexdigest()






def env_id(threads: int, schedules: bool) -> str:
    """Everything besides the call that decides a kernel's code, hashed."""
    try:
        tm = metadata.version("torch-mlir")
    except metadata.PackageNotFoundError:
        tm = "?"
    parts = [f"format {FORMAT}", __version__, _sources_hash(), torch.__version__, tm, cpu_flags(),
             f"threads {threads}", f"schedules {schedules}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def key_text(key) -> Optional[str]:
    """A stable text of the cache key, or None when some argument has no stable repr (an object's address)."""
    text = repr(key)
    return None if " at 0x" in text else text


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DiskCache:
    def __init__(self, path: str, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.loads = self.stores = self.corrupt = self.evictions = self.so_failures = 0
        self._size: Optional[int] = None       # bytes under path, scanned once, then kept up to date

    def _files(self, env: str, text: str) -> str:
        k = _sha(text.encode())
        return os.path.join(self.path, env, k[:2], k)

    # -- load --

    def load(self, env: str, key):
        """The kernel stored for key, or None (absent, unreadable or corrupt: a corrupt entry is removed)."""
        text = key_text(key)
        if text is None:
            return None
        base = self._files(env, text)
        try:
            with open(base + ".json", "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._drop(base, "unreadable metadata")
            return None
        try:
            if meta.get("format") != FORMAT or meta["key"] != text:
                return None                    # a hash collision or another format: leave it, compile anew
            with open(base + ".mlir", "rb") as f:
                ir = f.read()
            if _sha(ir) != meta["mlir_sha256"]:
                raise ValueError("IR hash mismatch")
            engine = None
            if meta.get("so_sha256"):
                with open(base + ".so", "rb") as f:
                    so = f.read()
                if _sha(so) != meta["so_sha256"]:
                    raise ValueError("object code hash mismatch")
                engine = load_library(so)
                if engine is None:
                    self.so_failures += 1          # the IR is JIT-compiled instead
            kernel = Kernel(ir.decode(), [_meta(m) for m in meta["inputs"]], [_meta(m) for m in meta["outputs"]],
                            input_perms=meta["input_perms"], inplace_safe=meta["inplace_safe"], engine=engine,
                            dynamic=meta.get("dynamic"), result_sizes=meta.get("result_sizes"),
                            size_symbols={k: tuple(v) for k, v in meta["size_symbols"].items()}
                            if meta.get("size_symbols") else None)
        except Exception as e:           # anything off: never run it, compile it again
            self._drop(base, f"{type(e).__name__}: {e}")
            return None
        self.loads += 1
        try:
            os.utime(base + ".json")     # last use, for eviction
        except OSError:
            pass
        return kernel

    def _drop(self, base: str, why: str) -> None:
        self.corrupt += 1
        log.warning("disk cache: dropping corrupt entry %s (%s)", base, why)
        for ext in (".json", ".mlir", ".so"):
            try:
                os.unlink(base + ext)
            except OSError:
                pass

    # -- store --

    def store(self, env: str, key, kernel, so: Optional[bytes] = None) -> None:
        """Keep `kernel` (and `so`, its object code as a shared library, when there is one)."""
        text = key_text(key)
        if text is None or not _safe_dir(self.path):
            return
        base = self._files(env, text)
        d = os.path.dirname(base)
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            ir = kernel.llvm_ir.encode()
            meta = {"format": FORMAT, "key": text, "op": str(key[0]), "mlir_sha256": _sha(ir),
                    "so_sha256": _sha(so) if so is not None else None,
                    "inputs": [_meta_json(m) for m in kernel.inputs],
                    "outputs": [_meta_json(m) for m in kernel.outputs],
                    "input_perms": kernel.input_perms, "inplace_safe": kernel.inplace_safe,
                    "dynamic": kernel.dynamic, "result_sizes": kernel.result_sizes,
                    "size_symbols": kernel.size_symbols}
            written = _write(base + ".mlir", ir)
            if so is not None:
                written += _write(base + ".so", so)
            written += _write(base + ".json", json.dumps(meta).encode())
        except OSError as e:
            log.warning("disk cache: cannot store %s: %s", base, e)
            return
        self.stores += 1
        with _lock:
            if self._size is None:
                self._size = self._scan()[1]
            else:
                self._size += written
            if self._size > self.max_bytes:
                self._evict()

    def _scan(self) -> tuple:
        """([(mtime of .json, base, bytes)], total bytes) of every entry under the root."""
        entries, total = [], 0
        for dirpath, _, files in os.walk(self.path):
            sizes: dict = {}
            for name in files:
                stem, ext = os.path.splitext(name)
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_size
                s = sizes.setdefault(stem, [0.0, 0])
                s[1] += st.st_size
                if ext == ".json":
                    s[0] = st.st_mtime
            entries += [(m, os.path.join(dirpath, stem), b) for stem, (m, b) in sizes.items()]
        return entries, total

    def _evict(self) -> None:
        entries, total = self._scan()
        for _, base, size in sorted(entries):
            if total <= self.max_bytes * 0.9:      # some headroom: not a scan per store once full
                break
            for ext in (".json", ".mlir", ".so"):
                try:
                    os.unlink(base + ext)
                except OSError:
                    pass
            total -= size
            self.evictions += 1
        self._size = total

    def info(self) -> dict:
        entries, total = self._scan() if os.path.isdir(self.path) else ([], 0)
        return {"path": self.path, "entries": len(entries), "bytes": total, "max_bytes": self.max_bytes,
                "linker": linker() is not None, "loads": self.loads, "stores": self.stores,
                "corrupt": self.corrupt, "evictions": self.evictions, "so_failures": self.so_failures}

    def clear(self) -> None:
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)
        with _lock:
            self._size = 0


def _write(path: str, data: bytes) -> int:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(data)


def _meta_json(m) -> Optional[dict]:
    if m is None:
        return None
    return {"shape": list(m.shape), "dtype": str(m.dtype).split(".")[-1], "strides": list(m.strides),
            "empty": m.empty}


def _meta(j):
    if j is None:
        return None
    dtype = getattr(torch, j["dtype"])
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a dtype: {j['dtype']}")
    return TensorMeta(j["shape"], dtype, j["strides"], j["empty"])


_disk: Optional[DiskCache] = None


def get() -> Optional[DiskCache]:
    """The process's disk cache for the root in force, or None (off, or the root is unusable)."""
    global _disk
    path = root()
    if path is None:
        return None
    if _disk is None or _disk.path != path:
        if not _safe_dir(path):
            return None
        _disk = DiskCache(path, int(config.get().disk_cache_mb * 1024 * 1024))
    return _disk
