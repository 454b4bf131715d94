"""python -m torch_mlir_eager: run a script with every aten call going through MLIR, render a saved report, or
manage the kernel cache on disk.

  run [--json out.json] [--verify] [--strict] [--dump-dir DIR] script.py [args...]
  report out.json
  cache info | clear
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

import torch_mlir_eager as tme

from . import disk_cache
from .report import markdown


def _run(a) -> int:
    sys.argv = [a.script] + a.args
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.script)))
    kw = {"verify": a.verify, "strict": a.strict}
    if a.dump_dir:
        kw["dump_dir"] = os.path.abspath(a.dump_dir)
    code = 0
    tme.reset_report()
    with tme.config.override(**kw), tme.enable():
        try:
            runpy.run_path(a.script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    rep = tme.report()
    print(rep, file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            f.write(rep.to_json(indent=1))
    return code


def _report(a) -> int:
    with open(a.file) as f:
        print(markdown(json.load(f)), end="")
    return 0


def _cache(a) -> int:
    d = disk_cache.get()
    if d is None:
        print(f"disk cache off ({disk_cache.root() or 'TORCH_MLIR_EAGER_DISK_CACHE=0'})")
        return 1
    if a.action == "clear":
        before = d.info()
        d.clear()
        print(f"removed {before['entries']} kernels ({before['bytes'] / 1e6:.1f} MB) from {d.path}")
    else:
        i = d.info()
        print(f"{i['path']}: {i['entries']} kernels, {i['bytes'] / 1e6:.1f} MB of {i['max_bytes'] / 1e6:.0f} MB; "
              f"object code: {'yes (ld found)' if i['linker'] else 'no (no ld: IR only, JIT on load)'}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m torch_mlir_eager", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a script with every aten call on CPU tensors through MLIR; print the report")
    r.add_argument("--json", help="write the report as JSON to this file")
    r.add_argument("--verify", action="store_true", help="check every MLIR result against native PyTorch")
    r.add_argument("--strict", action="store_true", help="raise instead of falling back to native PyTorch")
    r.add_argument("--dump-dir", help="write a repro directory for every failing call")
    r.add_argument("script")
    r.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("report", help="render a saved JSON report as a Markdown table")
    p.add_argument("file")
    c = sub.add_parser("cache", help="the kernel cache on disk")
    c.add_argument("action", choices=["info", "clear"])
    a = ap.parse_args(argv)
    return {"run": _run, "report": _report, "cache": _cache}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
