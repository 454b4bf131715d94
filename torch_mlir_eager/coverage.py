"""What MLIR runs of PyTorch: PyTorch's OpInfo samples through TorchMLIRTensor, each compared with native PyTorch.

`python -m torch_mlir_eager.coverage [--dtype float32] [--samples 3] [--md out.md] [--json out.json]` prints one
line per OpInfo (full / partial / fallback / native / no sample) with the reasons its calls fell back, and a summary.
The OpInfo database needs `expecttest` (`pip install -e '.[test]'`). The differential test (tests/e2e/test_opinfo.py)
runs the same `run_op` and asserts that no sample differs from native.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Dict, List, Optional

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

from . import report, reset_report
from .tensor import unwrap
from .tensor import wrap as wrap_

# OpInfos whose outputs are undefined (uninitialized memory): compared by shape and dtype only.
UNINITIALIZED = frozenset({"empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided",
                           "empty_permuted", "nn.functional.dropout", "nn.functional.alpha_dropout",
                           "nn.functional.feature_alpha_dropout"})

# OpInfos a TorchMLIRTensor cannot run (none since the wrapper shares its elem's storage: C++ composite code that
# reads a tensor argument's data, as tensor_split does with a tensor of indices, reads the same memory).
WRAPPER_LIMITS: Dict[str, str] = {}

# Default tolerances of results in the low-precision float dtypes (torch.testing.assert_close's defaults for them).
LOW_PRECISION = {torch.float16: dict(rtol=1e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}

# Per-OpInfo tolerances looser than rtol 1e-4 / atol 1e-5, each with its reason (none needed so far).
# Keyed by (OpInfo name, dtype); each entry says why. Only bfloat16 so far: with 8 significant bits, one ulp of
# difference in one call (the rounding of a float32 sum that PyTorch adds in its own cascade order) can grow in a
# composite of several calls; every call in these composites is itself within bfloat16 tolerance of native (checked
# with verify mode).
TOLERANCES: Dict[tuple, dict] = {
    # 10 aten calls; the sum of squares of 125 values (~2800) differs by 1 ulp (16) from native's, the variance
    # then by 1.6%: 23.25 vs 22.875.
    ("masked.var", torch.bfloat16): dict(rtol=3e-2, atol=1e-5),
    # the same in float16 on AMD EPYC hosts (native's own float16 sums round there otherwise than on Intel's):
    # 28.1875 vs 28.21875, 2 ulp
    ("masked.var", torch.float16): dict(rtol=2e-3, atol=1e-5),
    # native's _trilinear rounds each pairwise product to bfloat16 before summing; ours sums float32 products (the
    # exact value is closer to ours): 0.0078 apart on one of 5 outputs.
    ("nn.functional.bilinear", torch.bfloat16): dict(rtol=1.6e-2, atol=1e-2),
}


@dataclasses.dataclass
class OpResult:
    name: str
    samples: int = 0                 # samples that ran natively without raising (each compared)
    raised: int = 0                  # samples that raise natively (the wrapped call must raise the same type)
    mlir: int = 0                    # calls through MLIR
    fallback: int = 0                # calls that fell back to native PyTorch
    native: int = 0                  # calls native by design (views, random, no tensor in/out, dynamic shapes)
    reasons: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)   # aten op -> category -> why
    mismatch: Optional[str] = None   # the first sample whose wrapped result or error differed from native
    dynamic: int = 0                 # MLIR calls that ran on a dynamic kernel (shapes.py)
    dynamic_failed: Dict[str, str] = dataclasses.field(default_factory=dict)   # aten op -> why it stayed static

    @property
    def status(self) -> str:
        if self.mismatch:
            return "MISMATCH"
        if self.name in WRAPPER_LIMITS:
            return "wrapper limit"
        if not self.samples and not self.raised:
            return "no sample"
        if self.mlir and not self.fallback:
            return "full"
        if self.mlir:
            return "partial"
        if self.fallback:
            return "fallback"
        return "native"


def name_of(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def ops_for(dtype: torch.dtype) -> list:
    from torch.testing._internal.common_methods_invocations import op_db
    return [op for op in op_db if dtype in op.supported_dtypes("cpu")]


def _run(fn, sample, wrap: bool):
    inp, args, kwargs = tree_map_only(torch.Tensor, lambda t: t.clone(), (sample.input, sample.args, sample.kwargs))
    if wrap:
        inp, args, kwargs = wrap_((inp, args, kwargs))
    torch.manual_seed(0)
    out = fn(inp, *args, **kwargs)
    # the arguments too: what the call wrote into them (in place, out=, or undeclared: training batch norm's
    # running statistics) is compared with what native wrote
    return unwrap((out, inp, [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]))


def _difference(name: str, got, want) -> Optional[str]:
    if name in UNINITIALIZED:
        g = [(t.shape, t.dtype) for t in tree_leaves(got) if isinstance(t, torch.Tensor)]
        w = [(t.shape, t.dtype) for t in tree_leaves(want) if isinstance(t, torch.Tensor)]
        return None if g == w else f"shapes/dtypes {g} != {w}"
    floats = [t.dtype for t in tree_leaves(want) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    # float16 / bfloat16 results: torch.testing's own defaults for the dtype (1 ulp is ~1e-3 / ~8e-3 relative)
    base = LOW_PRECISION.get(floats[0], {}) if floats else {}
    tol = {**base, **TOLERANCES.get((name, floats[0] if floats else None), {})}
    try:
        torch.testing.assert_close(got, want, rtol=tol.get("rtol", 1e-4), atol=tol.get("atol", 1e-5),
                                   equal_nan=True)
    except AssertionError as e:
        return " ".join(str(e).split("\n")[:3])
    return None


def run_op(op, dtype: torch.dtype = torch.float32, samples: int = 3) -> OpResult:
    """The first `samples` CPU samples of one OpInfo (seeded), natively and through TorchMLIRTensor, compared;
    the counts come from the report. Raises what `sample_inputs` raises."""
    name = name_of(op)
    res = OpResult(name)
    if name in WRAPPER_LIMITS:
        res.reasons = {"(not run)": {"wrapper limit": WRAPPER_LIMITS[name]}}
        return res
    torch.manual_seed(1234)                   # the same sample values every run: figures are reproducible
    batch = list(op.sample_inputs("cpu", dtype))[:samples]
    reset_report()
    for i, sample in enumerate(batch):
        try:
            want = _run(op.op, sample, wrap=False)
        except Exception as e:
            res.raised += 1
            try:
                _run(op.op, sample, wrap=True)
            except Exception as e2:
                if not isinstance(e2, type(e)) and res.mismatch is None:
                    res.mismatch = f"sample {i}: native raised {type(e).__name__}, wrapped {type(e2).__name__}"
            else:
                if res.mismatch is None:
                    res.mismatch = f"sample {i}: native raised {type(e).__name__}, wrapped did not"
            continue
        res.samples += 1
        try:
            got = _run(op.op, sample, wrap=True)
        except Exception as e:
            diff = f"native returned, wrapped raised {type(e).__name__}: {e}"
        else:
            diff = _difference(name, got, want)
        if diff and res.mismatch is None:
            res.mismatch = f"sample {i}: {diff}"
    rep = report().to_dict()
    t = rep["totals"]
    res.mlir, res.fallback, res.native = t["mlir_calls"], t["fallback_calls"], t["native_calls"]
    res.reasons = {r["op"]: r["reasons"] for r in rep["ops"] if r["reasons"]}
    res.dynamic = t["dynamic_calls"]
    res.dynamic_failed = {r["op"]: r["dynamic_failed"] for r in rep["ops"] if r["dynamic_failed"]}
    return res


def summary(results: List[OpResult]) -> str:
    compilable = [r for r in results if r.mlir + r.fallback]
    full = [r for r in compilable if r.status == "full"]
    mlir, fb = sum(r.mlir for r in results), sum(r.fallback for r in results)
    bad = [r.name for r in results if r.mismatch]
    return (f"OpInfos fully through MLIR: {len(full)} / {len(compilable)} = "
            f"{100 * len(full) / max(1, len(compilable)):.1f}% of those that issued a compilable call "
            f"({len(results)} run); calls through MLIR: {mlir} / {mlir + fb} = {100 * mlir / max(1, mlir + fb):.1f}%; "
            f"mismatches: {len(bad)}" + (f" ({', '.join(bad[:10])})" if bad else ""))


def markdown(results: List[OpResult], dtype: torch.dtype) -> str:
    lines = [f"# OpInfo coverage through MLIR, {str(dtype).replace('torch.', '')}", "", summary(results), "",
             "| OpInfo | status | MLIR calls | fell back | native by design | why it fell back |",
             "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r.name):
        why = "; ".join(f"{op.replace('aten.', '')}: " + ", ".join(f"{c}: {m[:80]}" for c, m in cats.items())
                        for op, cats in r.reasons.items())
        if r.mismatch:
            why = f"MISMATCH {r.mismatch[:120]}; " + why
        lines.append(f"| {r.name} | {r.status} | {r.mlir} | {r.fallback} | {r.native} | "
                     f"{why.replace('|', '/')[:300]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", help="torch dtype name (float32, float64, int64, int32, bool...)")
    ap.add_argument("--samples", type=int, default=3, help="samples per OpInfo")
    ap.add_argument("--ops", nargs="*", help="only these OpInfo names")
    ap.add_argument("--md", help="write the table as Markdown here")
    ap.add_argument("--json", help="write the results as JSON here")
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    results = []
    for op in ops_for(dtype):
        if a.ops and name_of(op) not in a.ops:
            continue
        try:
            r = run_op(op, dtype, a.samples)
        except Exception as e:                 # sample_inputs itself failed: nothing to compare
            r = OpResult(name_of(op))
            r.reasons = {"(not run)": {"sample_inputs": f"{type(e).__name__}: {e}"[:200]}}
        results.append(r)
        print(f"{r.name:45} {r.status:9} mlir {r.mlir:4} fell back {r.fallback:4} native {r.native:4}", flush=True)
    print(summary(results))
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(results, dtype))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dtype": a.dtype, "summary": summary(results),
                       "results": [dict(dataclasses.asdict(r), status=r.status) for r in results]}, f, indent=1)
    return 1 if any(r.mismatch for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
