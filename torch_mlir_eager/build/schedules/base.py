"""What every schedule family shares: the Schedule record, the script text of register tiles, IR helpers."""
from __future__ import annotations

import dataclasses

from torch_mlir import ir
from torch_mlir.dialects import func as func_d

from ...errors import CompileFailure
from .. import lowering


@dataclasses.dataclass(frozen=True)
class Schedule:
    family: str
    script: str
    threads: int = 1
    panel_rows: int = 0        # conv2d-panels: output rows per panel (CONV_AS_PANELS); matmul-packed: panel width;
                               # conv2d-rows-dynamic: -1 for the whole image at once (CONV_WHOLE_DYNAMIC)


# Every schedule: a family-specific head finds the op (%{target}0) and may split it across threads (%{target});
# the shared tail tiles it to a register tile with a k step of 1, vectorizes only that tile, and lowers the
# contraction to outer products (FMAs). Vectorizing untiled ops (im2col, pad, fills) would build whole-tensor
# vectors: a known memory blow-up.
# The end of every @tile sequence (canonicalize the function) and the @lower sequence that runs after
# bufferization (hoist the accumulator tile's loads and stores out of the k loop: it stays in registers).
TAIL = """  %f = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  transform.apply_patterns to %f {{
    transform.apply_patterns.canonicalization
  }} : !transform.any_op
  transform.yield
}}
transform.named_sequence @lower(%root: !transform.any_op {{transform.consumed}}) {{
  %f0 = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  %f = transform.structured.hoist_redundant_vector_transfers %f0 : (!transform.any_op) -> !transform.any_op
  transform.yield
}}
"""


# {register}: tile_using_for, or for a matmul / batch_matmul whose accumulator starts as a linalg.fill of zeros,
# structured.fuse, which follows the accumulator through the tile loops' iter_args and fuses the fill into the
# register tile ({fill_vec} then vectorizes it there; _init_into and FUSED_PANEL take it through the thread
# split and the panel loop first): each tile starts from zeros in registers instead of reading back a whole output
# the fill first wrote to memory. At small K that pass cost as much as the multiply (measured, 2 threads: bmm
# 4x128x64 @ 4x64x128 48 -> 21.5 us, native 22; 4x512x64 @ 4x64x512 657 -> 390, native 348).
REGISTER_TILE = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
{head}
  {forall}
  {panel}
  %t, %l:{nloops} = transform.structured.{register} %{target}p tile_sizes [{tiles}, 0]
    : (!transform.any_op) -> (!transform.any_op{handles})
{vectorize}""" + TAIL


# The register tile stepped along k and vectorized (REGISTER_TILE's end for static shapes).
VECTORIZE = """  %t2, %lk = transform.structured.tile_using_for %t tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %t2 : !transform.any_op
  {fill_vec}
"""


# After a peel: canonicalize (the full tiles' loops get static bounds), then vectorize the full and partial tiles.
PEEL_TAIL = """  %fpeel = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  transform.apply_patterns to %fpeel {{
    transform.apply_patterns.canonicalization
  }} : !transform.any_op
{full}{part}"""


# Dynamic rows (M a `?`): the register tiles' row loop peeled into full tiles, which canonicalize to static shapes
# and vectorize as above, and one partial tile after them, vectorized with masks at the full tile's sizes. Full
# tiles keep the static kernel's code; the mask costs only in the last rows.
PEELED = """  %rows = transform.cast %l#{rows} : !transform.any_op to !transform.op<"scf.for">
  %full, %part = transform.loop.peel %rows : (!transform.op<"scf.for">) -> (!transform.any_op, !transform.any_op)
""" + PEEL_TAIL


# In one of the peeled loops (%{loop}): the contraction (`match`) stepped along k and vectorized (`sizes`: the
# vector sizes for a partial tile), then its fused accumulator fill, if any.
PEELED_TILE = """  %{loop}0 = transform.structured.match {match} in %{loop} : (!transform.any_op) -> !transform.any_op
  %{loop}1, %{loop}k = transform.structured.tile_using_for %{loop}0 tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %{loop}1{sizes} : !transform.any_op
"""


PEELED_FILL = """  %{loop}f = transform.structured.match {fill} in %{loop} : (!transform.any_op) -> !transform.any_op
  transform.structured.vectorize %{loop}f{sizes} : !transform.any_op
"""


# Two dynamic parallel dims (attention's q @ k^T: rows and columns): the row loop peeled, then the column loop
# inside the full rows (found from the contraction in it: a handle to a loop nested in a peeled one does not
# survive the peel); the tile that is full in both (%fc) keeps the static vector code, the three partial variants
# are matched in the whole function afterwards and vectorized with masks.
PEELED_2D = """  %rows = transform.cast %l#{rows} : !transform.any_op to !transform.op<"scf.for">
  %fr, %pr = transform.loop.peel %rows : (!transform.op<"scf.for">) -> (!transform.any_op, !transform.any_op)
  %fr0 = transform.structured.match {match} in %fr : (!transform.any_op) -> !transform.any_op
  %fr1 = transform.get_parent_op %fr0 {{op_name = "scf.for"}} : (!transform.any_op) -> !transform.any_op
  %cols = transform.cast %fr1 : !transform.any_op to !transform.op<"scf.for">
  %fc, %pc = transform.loop.peel %cols : (!transform.op<"scf.for">) -> (!transform.any_op, !transform.any_op)
""" + PEEL_TAIL


def _vectorize(ktile: str, fill_vec: str, peel=None, fill: str = 'ops{["linalg.fill"]}') -> str:
    """REGISTER_TILE's end: VECTORIZE, or with `peel` = (indices of the loops to peel among the tile loops (one:
    PEELED, two: PEELED_2D), the contraction's match text, register tile sizes per parallel dim). `fill`: the
    match text of the accumulator's init fused into the tiles (with `fill_vec`)."""
    if peel is None:
        return VECTORIZE.format(ktile=ktile, fill_vec=fill_vec)
    loops, match, tiles = peel

    def tile(loop: str, sizes: str) -> str:      # the contraction in `loop` (and its fill) vectorized at `sizes`
        text = PEELED_TILE.format(loop=loop, match=match, ktile=ktile, sizes=sizes)
        if fill_vec:
            text += PEELED_FILL.format(loop=loop, fill=fill,
                                       sizes=sizes and f" vector_sizes [{', '.join(map(str, tiles))}]")
        return text
    masked = f" vector_sizes [{', '.join(map(str, tiles + [1]))}]"
    # two peels: the tile full in both is %fc; the three partial ones are matched in the whole function
    full, part, template = ("fc", "root", PEELED_2D) if len(loops) == 2 else ("full", "part", PEELED)
    return template.format(rows=loops[0], match=match, full=tile(full, ""), part=tile(part, masked))


FUSED_PANEL = ("%{target}p, %panels = transform.structured.fuse %{target} tile_sizes [{sizes}]"
               " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")


def _init_into(loop: str, match: str) -> str:
    """Script text fusing the accumulator's init (matched by `match`) into the scf.forall `loop`: each thread
    or panel then makes its own slice of it."""
    return (f"%init0 = transform.structured.match {match} in %root : (!transform.any_op) -> !transform.any_op\n"
            f"  %init1, %init_loop = transform.structured.fuse_into_containing_op %init0 into {loop}\n"
            "    : (!transform.any_op, !transform.any_op) -> (!transform.any_op, !transform.any_op)")


def _zero_init(name: str, ty: str, el, sizes: str = "") -> str:
    """MLIR lines making %{name}, a tensor of type `ty` filled with zeros and tagged tme.init (see _init_into).
    `sizes`: the SSA values of its dynamic sizes, if any."""
    return (f"  %zero = arith.constant 0.0 : {el}\n  %{name}_e = tensor.empty({sizes}) : {ty}\n"
            f"  %{name} = linalg.fill {{tme.init}} ins(%zero : {el}) outs(%{name}_e : {ty}) -> {ty}")


def _fill_vec(last: int, match: str) -> str:
    """Script text vectorizing the accumulator's init (matched by `match`) fused into the register tile %l#last."""
    return (f"%fills = transform.structured.match {match} in %l#{last} : (!transform.any_op) -> !transform.any_op\n"
            "  transform.structured.vectorize %fills : !transform.any_op")


# The body of every GEMM generic below: acc + a * b.
MAC = """    ^bb0(%a: {el}, %b: {el}, %acc: {el}):
      %m = arith.mulf %a, %b : {el}
      %s = arith.addf %acc, %m : {el}
      linalg.yield %s : {el}"""


PANEL = ("%{target}p, %panels = transform.structured.tile_using_for %{target} tile_sizes [{sizes}]"
         " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")


# Threads: the op is first split into `threads` slices (scf.forall -> OpenMP, run by intel-openmp's libiomp5);
# each slice is then register-tiled as above.
FORALL = ("%{out}, %forall = transform.structured.tile_using_forall %{src} num_threads [{counts}]"
          " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")


NO_FORALL = "%{out} = transform.merge_handles %{src} : !transform.any_op"


def _forall(src: str, out: str, counts) -> str:
    if max(counts) <= 1:
        return NO_FORALL.format(out=out, src=src)
    return FORALL.format(out=out, src=src, counts=", ".join(map(str, counts)))


def _script(head: str, target: str, tiles: list, split: list, panel=0, fill: bool = False, peel=None,
            peel_dims: tuple = (-2,)) -> str:
    """A register-tile schedule: `tiles` for the op's parallel dims (k, the last dim, is stepped by 1). `panel`: an
    int > 0 first cuts the last parallel dim (N) into panels of that width, so that a K x panel slice of the
    right-hand operand stays in cache while every row tile passes over it (without it each row tile streams all
    of it); a list gives the panel loop's tile sizes per parallel dim directly. `fill`: the op's accumulator is a
    linalg.fill, fused into every loop (REGISTER_TILE's structured.fuse). `peel`: the op's match text, for a
    dynamic parallel dim (`peel_dims`, by default the rows: the dim before the last parallel one): PEELED; two
    dims (rows and columns): PEELED_2D."""
    n = len(tiles)
    if panel:
        sizes = ", ".join(map(str, panel + [0] if isinstance(panel, list) else [0] * (n - 1) + [panel, 0]))
        panel_text = (FUSED_PANEL if fill else PANEL).format(target=target, sizes=sizes)
    else:
        panel_text = NO_FORALL.format(out=f"{target}p", src=target)
    loops = sum(1 for t in tiles if t)
    forall = _forall(f"{target}0", target, split + [0])
    if fill and max(split) > 1:
        forall += "\n  " + _init_into("%forall", 'ops{["linalg.fill"]}')
    ktile = ", ".join(["0"] * n + ["1"])
    fill_vec = _fill_vec(loops - 1, 'ops{["linalg.fill"]}') if fill else ""
    at = [sum(1 for t in tiles[:d % n] if t) for d in sorted(d % n for d in peel_dims)]   # among the tile loops
    vec = _vectorize(ktile, fill_vec, None if peel is None else (at, peel, list(tiles)))
    return REGISTER_TILE.format(
        head=head, target=target, forall=forall, panel=panel_text, register="fuse" if fill else "tile_using_for",
        tiles=", ".join(map(str, tiles)), nloops=loops, handles=", !transform.any_op" * loops, vectorize=vec)


DOT_TILE = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
  {head}
  %gemm0 = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.gemm}} in %root
    : (!transform.any_op) -> !transform.any_op
  {forall}
  %t, %l:{nloops} = transform.structured.tile_using_for %gemm tile_sizes [{tiles}, 0]
    : (!transform.any_op) -> (!transform.any_op{handles})
  %fill, %split, %comb, %loop = transform.structured.tile_reduction_using_for %t by tile_sizes = [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op)
  transform.structured.vectorize %split : !transform.any_op
  transform.structured.vectorize %comb : !transform.any_op
  transform.structured.vectorize %fill : !transform.any_op
""" + TAIL


def _dot_script(head: str, tiles: list, split: list, kv: int = 16) -> str:
    """DOT_TILE for a tme.gemm generic with parallel dims `tiles` (then k, vectorized `kv` wide)."""
    n = len(tiles)
    return DOT_TILE.format(head=head, forall=_forall("gemm0", "gemm", split + [0]),
                           tiles=", ".join(map(str, tiles)), nloops=n, handles=", !transform.any_op" * n,
                           ktile=", ".join(["0"] * n + [str(kv)]))


# Script text (not a template): the conv forms' GEMM generic as %gemm0.
GEMM_MATCH = """
  %gemm0 = transform.structured.match ops{["linalg.generic"]} attributes{tme.gemm} in %root
    : (!transform.any_op) -> !transform.any_op"""


def _run(module, passes, what: str) -> None:
    try:
        lowering.run(module, passes, "llvm")
    except CompileFailure as e:
        raise CompileFailure("llvm", f"schedule {what}: {e.reason}") from None


def _replace_with_call(module, op, func_text: str, name: str, operands, result_type, what: str) -> None:
    """Replace `op` (one result) by a call to the private function `func_text` defines, then inline it."""
    with module.context, ir.Location.unknown():
        module.body.append(ir.Operation.parse(func_text))
        with ir.InsertionPoint(op):
            call = func_d.CallOp([result_type], name, list(operands))
        op.results[0].replace_all_uses_with(call.results[0])
        op.erase()
    _run(module, ["inline", "canonicalize"], what)


def _filled_init(op, zero: bool = False) -> bool:
    """The op's accumulator (its last operand) is made by the module's only linalg.fill (`zero`: of 0.0)."""
    init = op.operands[len(op.operands) - 1]
    if not isinstance(init, ir.OpResult):
        return False
    owner = getattr(init.owner, "operation", init.owner)
    if owner.name != "linalg.fill":
        return False
    if zero:
        value = owner.operands[0]
        const = getattr(value.owner, "operation", value.owner) if isinstance(value, ir.OpResult) else None
        if const is None or const.name != "arith.constant" or \
                not isinstance(const.attributes["value"], ir.FloatAttr) or const.attributes["value"].value != 0.0:
            return False
    func = owner.parent
    while func is not None and func.name != "func.func":
        func = func.parent
    fills = []

    def visit(o):
        if o.name == "linalg.fill":
            fills.append(o)
        return ir.WalkResult.ADVANCE
    if func is not None:
        func.walk(visit)
    return len(fills) == 1
