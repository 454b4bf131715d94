"""Bounded LRU of compiled kernels plus negative entries for keys that failed, with counters."""
from __future__ import annotations

import threading
from typing import Any, Optional

import cachetools

from . import config
from .errors import CompileFailure


class _CountingLRU(cachetools.LRUCache):
    """An LRU that counts what it evicts (the least recently used kernel, dropped to make room)."""
    evictions = 0

    def popitem(self):
        item = super().popitem()
        self.evictions += 1
        return item


class KernelCache:
    def __init__(self, maxsize: Optional[int] = None, negative_maxsize: Optional[int] = None):
        cfg = config.get()
        self._kernels = _CountingLRU(maxsize or cfg.cache_size)
        self._failures = cachetools.LRUCache(negative_maxsize or cfg.negative_cache_size)
        self._lock = threading.Lock()
        self.hits = self.misses = self.negative_hits = 0

    def lookup(self, key) -> Any:
        """The kernel for key; raises the stored CompileFailure for a known-bad key; None on a miss."""
        with self._lock:
            try:
                k = self._kernels[key]          # one lookup on a hit (it also refreshes the LRU order)
                self.hits += 1
                return k
            except KeyError:
                pass
            f = self._failures.get(key)
            if f is not None:
                self.negative_hits += 1
                raise CompileFailure(f.category, f.reason)
            self.misses += 1
            return None

    def put(self, key, kernel) -> None:
        with self._lock:
            self._kernels[key] = kernel

    def put_failure(self, key, failure: CompileFailure) -> None:
        with self._lock:
            self._failures[key] = failure

    def drop(self, key) -> None:
        """Forget the kernel for key (the next call compiles or binds one anew)."""
        with self._lock:
            self._kernels.pop(key, None)

    def discard(self, key, failure: CompileFailure) -> None:
        """A kernel found wrong (verify mode): never used again; the key is a known failure from now on."""
        with self._lock:
            self._kernels.pop(key, None)
            self._failures[key] = failure

    def info(self) -> dict:
        with self._lock:
            return {"kernels": len(self._kernels), "kernel_maxsize": self._kernels.maxsize,
                    "failures": len(self._failures), "hits": self.hits, "misses": self.misses,
                    "evictions": self._kernels.evictions,
                    "negative_hits": self.negative_hits}

    def after_fork(self) -> None:
        """In a forked child: a lock another thread of the parent held at the fork would never be released."""
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._kernels.clear()
            self._failures.clear()
            self.hits = self.misses = self.negative_hits = self._kernels.evictions = 0
