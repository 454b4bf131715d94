"""Per-op counts: calls through MLIR, fallbacks with their first reason per category, native-by-design calls."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import weakref
from typing import Dict


@dataclasses.dataclass
class OpStats:
    op: str
    mlir_calls: int = 0
    fallback_calls: int = 0
    native_calls: int = 0
    user_errors: int = 0              # calls that raised natively too: the user's own error, not a gap
    cache_hits: int = 0
    compiles: int = 0
    compile_s: float = 0.0
    reasons: Dict[str, str] = dataclasses.field(default_factory=dict)         # category -> first reason
    fallback_by_category: Dict[str, int] = dataclasses.field(default_factory=dict)
    native_reason: str = ""
    verified: int = 0                 # verify mode: MLIR results checked against native
    mismatches: int = 0               # ... that differed (native's result was returned; counted as fallbacks)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    repro: str = ""                   # dump-dir mode: the repro directory of the first failing key
    # Shapes that change (shapes.py): compiles and calls of kernels dynamic in some dims (the rest are static),
    # the concrete shapes a dynamic kernel was bound to, and why the op was left on static kernels, if it was
    dynamic_compiles: int = 0
    dynamic_calls: int = 0
    dynamic_shapes: int = 0
    dynamic_failed: str = ""

    @property
    def calls(self) -> int:
        return self.mlir_calls + self.fallback_calls + self.native_calls + self.user_errors

    def to_dict(self) -> dict:
        return {"op": self.op, "calls": self.calls, "mlir_calls": self.mlir_calls,
                "fallback_calls": self.fallback_calls, "native_calls": self.native_calls,
                "user_errors": self.user_errors, "cache_hits": self.cache_hits, "compiles": self.compiles,
                "compile_s": round(self.compile_s, 6), "reasons": dict(self.reasons),
                "fallback_by_category": dict(self.fallback_by_category),
                "native_reason": self.native_reason, "verified": self.verified, "mismatches": self.mismatches,
                "max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err, "repro": self.repro,
                "dynamic_compiles": self.dynamic_compiles, "dynamic_calls": self.dynamic_calls,
                "dynamic_shapes": self.dynamic_shapes, "dynamic_failed": self.dynamic_failed}


class Recorder:
    """The live counters; dispatch writes, `snapshot()` reads."""

    def __init__(self):
        self._rows: Dict[str, OpStats] = {}
        self._lock = threading.Lock()
        # a forked child (a DataLoader worker) counts on its own: a lock held in the parent at the fork is not kept
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: me() is not None and me()._new_lock())

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def _row(self, op: str) -> OpStats:
        row = self._rows.get(op)
        if row is None:
            row = self._rows.setdefault(op, OpStats(op))
        return row

    def native(self, op: str, why: str) -> None:
        with self._lock:
            row = self._row(op)
            row.native_calls += 1
            row.native_reason = row.native_reason or why

    def user_error(self, op: str) -> None:
        """A call that PyTorch itself refused (native raised): reported beside the share, never counted in it."""
        with self._lock:
            self._row(op).user_errors += 1

    def mlir(self, op: str, hit: bool, dynamic: bool = False) -> None:
        with self._lock:
            row = self._rows.get(op) or self._row(op)     # inline get: this runs on every cache hit
            row.mlir_calls += 1
            row.cache_hits += hit
            row.dynamic_calls += dynamic

    def compiled(self, op: str, seconds: float, dynamic: bool = False) -> None:
        with self._lock:
            row = self._row(op)
            row.compiles += 1
            row.compile_s += seconds
            row.dynamic_compiles += dynamic

    def bound(self, op: str) -> None:
        """A dynamic kernel checked against native at a new concrete shape and kept for it."""
        with self._lock:
            self._row(op).dynamic_shapes += 1

    def dynamic_failed(self, op: str, reason: str) -> None:
        """A dynamic kernel did not compile or failed a check: the op stays on static kernels for that family."""
        with self._lock:
            row = self._row(op)
            row.dynamic_failed = row.dynamic_failed or reason

    def fallback(self, op: str, category: str, reason: str) -> None:
        with self._lock:
            row = self._row(op)
            row.fallback_calls += 1
            row.fallback_by_category[category] = row.fallback_by_category.get(category, 0) + 1
            row.reasons.setdefault(category, reason)

    def verified(self, op: str) -> None:
        with self._lock:
            self._row(op).verified += 1

    def mismatch(self, op: str, abs_err: float, rel_err: float, reason: str) -> None:
        """A verified MLIR result that differed from native: native's result was returned (a fallback)."""
        with self._lock:
            row = self._row(op)
            row.mismatches += 1
            row.max_abs_err = max(row.max_abs_err, abs_err)
            row.max_rel_err = max(row.max_rel_err, rel_err)
        self.fallback(op, "mismatch", reason)

    def repro(self, op: str, path: str) -> None:
        with self._lock:
            row = self._row(op)
            row.repro = row.repro or path

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()

    def snapshot(self) -> "Report":
        with self._lock:
            return Report([dataclasses.replace(r, reasons=dict(r.reasons),
                                               fallback_by_category=dict(r.fallback_by_category))
                           for r in self._rows.values()])


class Report:
    """A frozen copy of the counts: `str()` is a table, `to_dict()` / `to_json()` the data."""

    def __init__(self, rows):
        self.rows = sorted(rows, key=lambda r: (-r.calls, r.op))

    def totals(self) -> dict:
        t = {k: sum(getattr(r, k) for r in self.rows)
             for k in ("calls", "mlir_calls", "fallback_calls", "native_calls", "user_errors", "cache_hits",
                       "compiles", "verified", "mismatches", "dynamic_compiles", "dynamic_calls", "dynamic_shapes")}
        t["compile_s"] = round(sum(r.compile_s for r in self.rows), 6)
        decided = t["mlir_calls"] + t["fallback_calls"]
        t["mlir_share"] = t["mlir_calls"] / decided if decided else 1.0
        t["native_share"] = t["native_calls"] / t["calls"] if t["calls"] else 0.0
        t["reasons"] = {}
        for r in self.rows:
            for cat, n in r.fallback_by_category.items():
                t["reasons"][cat] = t["reasons"].get(cat, 0) + n
        return t

    def to_dict(self) -> dict:
        return {"ops": [r.to_dict() for r in self.rows], "totals": self.totals()}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def fell_back(self) -> list:
        """Ops with fallbacks, most fallback calls first."""
        return sorted((r for r in self.rows if r.fallback_calls), key=lambda r: (-r.fallback_calls, r.op))

    def summary(self) -> str:
        """One line: the MLIR share, the native-by-design share beside it, and the ops that fell back."""
        t = self.totals()
        decided = t["mlir_calls"] + t["fallback_calls"]
        line = (f"torch-mlir-eager: {100 * t['mlir_share']:.1f}% of {decided} calls through MLIR "
                f"({t['mlir_calls']} MLIR, {t['fallback_calls']} fell back); "
                f"native by design (views, random, no tensor in/out, dynamic shapes): {t['native_calls']} calls "
                f"({100 * t['native_share']:.1f}% of all {t['calls']}); "
                + (f"user errors (native raised the same): {t['user_errors']} calls; " if t["user_errors"] else "")
                + f"compile {t['compile_s']:.2f} s"
                + (f" ({t['dynamic_compiles']} of {t['compiles']} compiles dynamic, serving {t['dynamic_shapes']} "
                   f"shapes; {t['dynamic_calls']} calls on dynamic kernels)" if t["dynamic_compiles"] else ""))
        failed = self.fell_back()
        parts = [f"{r.op} ({r.fallback_calls}: {', '.join(sorted(r.fallback_by_category))})" for r in failed]
        return line + ". Op(s) not lowered: " + (", ".join(parts) if parts else "none")

    def __str__(self) -> str:
        head = ("op", "calls", "mlir", "fallback", "native", "hits", "compiles", "compile_s", "dyn kernels",
                "dyn calls", "reasons")
        body = []
        for r in self.rows:
            why = "; ".join(f"{c}: {m}" for c, m in r.reasons.items())
            if r.native_calls and r.native_reason:
                why = (why + "; " if why else "") + f"native: {r.native_reason}"
            if r.user_errors:
                why = (why + "; " if why else "") + f"user error: {r.user_errors} (native raised the same)"
            if r.mismatches:
                why = f"verify: {r.mismatches} of {r.verified} differed (max abs {r.max_abs_err:.3g}, " \
                      f"rel {r.max_rel_err:.3g}); " + why
            if r.repro:
                why += f"; repro: {r.repro}"
            if r.dynamic_failed:
                why = (why + "; " if why else "") + f"static only: {r.dynamic_failed}"
            body.append((r.op, r.calls, r.mlir_calls, r.fallback_calls, r.native_calls, r.cache_hits,
                         r.compiles, f"{r.compile_s:.3f}", r.dynamic_compiles, r.dynamic_calls,
                         why if r.repro else why[:120]))
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head) - 1)]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)) + "  {}"
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-------")]
        lines += [fmt.format(*row) for row in body]
        return "\n".join(lines + ["", self.summary()])

    __repr__ = __str__


def markdown(d: dict) -> str:
    """A saved report (`Report.to_dict()`, e.g. from `python -m torch_mlir_eager run --json`) as a Markdown table:
    per op its calls, the MLIR share of those not native by design, and why the others did not run through MLIR."""
    t = d["totals"]
    lines = ["| op | calls | MLIR | fell back | native | MLIR % | compile s | reasons |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in d["ops"]:
        decided = r["mlir_calls"] + r["fallback_calls"]
        share = f"{100 * r['mlir_calls'] / decided:.1f}" if decided else "-"
        why = [f"{c} ({r['fallback_by_category'].get(c, 0)}): {m}" for c, m in r["reasons"].items()]
        if r["native_calls"] and r.get("native_reason"):
            why.append(f"native: {r['native_reason']}")
        if r.get("user_errors"):
            why.append(f"user error: {r['user_errors']} (native raised the same)")
        if r.get("mismatches"):
            why.insert(0, f"verify: {r['mismatches']} of {r['verified']} differed (max abs {r['max_abs_err']:.3g}, "
                          f"rel {r['max_rel_err']:.3g})")
        if r.get("repro"):
            why.append(f"repro: `{r['repro']}`")
        if r.get("dynamic_compiles"):
            why.append(f"dynamic: {r['dynamic_compiles']} kernels, {r['dynamic_calls']} calls, "
                       f"{r['dynamic_shapes']} shapes")
        if r.get("dynamic_failed"):
            why.append(f"static only: {r['dynamic_failed']}")
        cell = "; ".join(why).replace("|", "\\|")
        lines.append(f"| `{r['op']}` | {r['calls']} | {r['mlir_calls']} | {r['fallback_calls']} | "
                     f"{r['native_calls']} | {share} | {r['compile_s']:.3f} | {cell} |")
    decided = t["mlir_calls"] + t["fallback_calls"]
    lines += ["", f"**{100 * t['mlir_share']:.1f}% of {decided} calls through MLIR** ({t['mlir_calls']} MLIR, "
                  f"{t['fallback_calls']} fell back); native by design: {t['native_calls']} of {t['calls']} calls; "
                  f"compile {t['compile_s']:.2f} s."]
    return "\n".join(lines) + "\n"
