"""Per-op-family kernel schedules (transform-dialect scripts) and the pipelines that apply them (worker side).

`select(module)` picks a schedule for a Linalg-on-tensors module, or None for the plain loops of `lowering.py`.
A schedule that fails to apply falls back to the plain pipeline; one that hangs or crashes is caught by the worker's
time limit and the parent retries the call without schedules (compiler.py).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

from .errors import CompileFailure
from .lowering import BUFFER_REWRITES, defined, find_ops, mark_inputs_readonly, noalias_inputs

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
  %t2, %lk = transform.structured.tile_using_for %t tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %t2 : !transform.any_op
  {fill_vec}
""" + TAIL
FUSED_PANEL = ("%{target}p, %panels = transform.structured.fuse %{target} tile_sizes [{sizes}]"
               " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")


def _init_into(loop: str, match: str) -> str:
    """Script text fusing the accumulator's init (matched by `match`) into the scf.forall `loop`: each thread
    or panel then makes its own slice of it."""
    return (f"%init0 = transform.structured.match {match} in %root : (!transform.any_op) -> !transform.any_op\n"
            f"  %init1, %init_loop = transform.structured.fuse_into_containing_op %init0 into {loop}\n"
            "    : (!transform.any_op, !transform.any_op) -> (!transform.any_op, !transform.any_op)")


def _zero_init(name: str, ty: str, el) -> str:
    """MLIR lines making %{name}, a tensor of type `ty` filled with zeros and tagged tme.init (see _init_into)."""
    return (f"  %zero = arith.constant 0.0 : {el}\n  %{name}_e = tensor.empty() : {ty}\n"
            f"  %{name} = linalg.fill {{tme.init}} ins(%zero : {el}) outs(%{name}_e : {ty}) -> {ty}")


def _fill_vec(last: int, match: str) -> str:
    """Script text vectorizing the accumulator's init (matched by `match`) fused into the register tile %l#last."""
    return (f"%fills = transform.structured.match {match} in %l#{last} : (!transform.any_op) -> !transform.any_op\n"
            "  transform.structured.vectorize %fills : !transform.any_op")


# The dot form's im2col copy split across threads (by output rows).
COL_FORALL = ("%col_t, %col_forall = transform.structured.tile_using_forall %col num_threads [{counts}]"
              " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")

# The body of every GEMM generic below: acc + a * b.
MAC = """    ^bb0(%a: {el}, %b: {el}, %acc: {el}):
      %m = arith.mulf %a, %b : {el}
      %s = arith.addf %acc, %m : {el}
      linalg.yield %s : {el}"""

# The conv as im2col + GEMM, one column panel of r whole output rows at a time: each iteration of the forall
# (split across threads) copies its panel's im2col block col[n, c, kh, kw, rr, ow] = x[n, c, (pb * r + rr) * s +
# kh * d, ow * s + kw * d] (plain affine maps, contiguous along ow at stride 1, so LLVM vectorizes the copy; no
# floordiv/mod as in upstream `convert_conv2d_to_img2col`, whose gather stayed scalar) into a buffer of its own and
# multiplies it right away, while it is in the core's L2: out[n, f, panel] += w[f, c*kh*kw] x col[c*kh*kw, r*ow].
# Copying the whole column matrix first wrote it to memory and read it back (7.2 MB at 64x56x56 3x3: 927 us;
# by panel: 746, native 686). The conv's init (bias) is the GEMM's accumulator.
CONV_AS_PANELS = """
func.func private @tme_conv(%x: {xt}, %w: {wt}, %init: {ot}) -> {ot} {{
  %w2 = tensor.collapse_shape %w [[0], [1, 2, 3]] : {wt} into tensor<{f}x{k}x{el}>
{init}
  %r = scf.forall (%pb) in ({pb}) shared_outs(%o = %i1) -> (tensor<{n}x{f}x{p}x{el}>) {{
    %row = affine.apply affine_map<(d) -> (d * {rs})>(%pb)
    %c0 = affine.apply affine_map<(d) -> (d * {nc})>(%pb)
    %xs = tensor.extract_slice %x[0, 0, %row, 0] [{n}, {c}, {xh}, {xw}] [1, 1, 1, 1]
      : {xt} to tensor<{n}x{c}x{xh}x{xw}x{el}>
    %e = tensor.empty() : tensor<{n}x{c}x{kh}x{kw}x{r}x{ow}x{el}>
    %col = linalg.generic {{tme.im2col,
        indexing_maps = [affine_map<(n, c, kh, kw, rr, ow) -> (n, c, rr * {sh} + kh * {dh}, ow * {sw} + kw * {dw})>,
                         affine_map<(n, c, kh, kw, rr, ow) -> (n, c, kh, kw, rr, ow)>],
        iterator_types = ["parallel", "parallel", "parallel", "parallel", "parallel", "parallel"]}}
        ins(%xs : tensor<{n}x{c}x{xh}x{xw}x{el}>) outs(%e : tensor<{n}x{c}x{kh}x{kw}x{r}x{ow}x{el}>) {{
      ^bb0(%a: {el}, %b: {el}):
        linalg.yield %a : {el}
    }} -> tensor<{n}x{c}x{kh}x{kw}x{r}x{ow}x{el}>
    %colm = tensor.collapse_shape %col [[0], [1, 2, 3], [4, 5]]
      : tensor<{n}x{c}x{kh}x{kw}x{r}x{ow}x{el}> into tensor<{n}x{k}x{nc}x{el}>
    %os = tensor.extract_slice %o[0, 0, %c0] [{n}, {f}, {nc}] [1, 1, 1]
      : tensor<{n}x{f}x{p}x{el}> to tensor<{n}x{f}x{nc}x{el}>
    %g = linalg.generic {{tme.gemm,
        indexing_maps = [affine_map<(n, f, j, k) -> (f, k)>, affine_map<(n, f, j, k) -> (n, k, j)>,
                         affine_map<(n, f, j, k) -> (n, f, j)>],
        iterator_types = ["parallel", "parallel", "parallel", "reduction"]}}
        ins(%w2, %colm : tensor<{f}x{k}x{el}>, tensor<{n}x{k}x{nc}x{el}>) outs(%os : tensor<{n}x{f}x{nc}x{el}>) {{
{mac}
    }} -> tensor<{n}x{f}x{nc}x{el}>
    scf.forall.in_parallel {{
      tensor.parallel_insert_slice %g into %o[0, 0, %c0] [{n}, {f}, {nc}] [1, 1, 1]
        : tensor<{n}x{f}x{nc}x{el}> into tensor<{n}x{f}x{p}x{el}>
    }}
  }}
  %r2 = tensor.expand_shape %r [[0], [1], [2, 3]] output_shape [{n}, {f}, {oh}, {ow}]
    : tensor<{n}x{f}x{p}x{el}> into {ot}
  return %r2 : {ot}
}}
"""


# Narrow outputs (7x7: 49 columns, no vector width divides them) use the dot-product form instead: im2col
# transposed (colT[n, oh, ow, c, kh, kw], each output pixel's K values contiguous, like the weight's rows), and
# out[f, p] = sum_k w[f, k] * colT[p, k] vectorized along k (DOT_TILE).
CONV_AS_DOT = """
func.func private @tme_conv(%x: {xt}, %w: {wt}, %init: {ot}) -> {ot} {{
  %e = tensor.empty() : tensor<{n}x{oh}x{ow}x{c}x{kh}x{kw}x{el}>
  %col = linalg.generic {{tme.im2col,
      indexing_maps = [affine_map<(n, oh, ow, c, kh, kw) -> (n, c, oh * {sh} + kh * {dh}, ow * {sw} + kw * {dw})>,
                       affine_map<(n, oh, ow, c, kh, kw) -> (n, oh, ow, c, kh, kw)>],
      iterator_types = ["parallel", "parallel", "parallel", "parallel", "parallel", "parallel"]}}
      ins(%x : {xt}) outs(%e : tensor<{n}x{oh}x{ow}x{c}x{kh}x{kw}x{el}>) {{
    ^bb0(%a: {el}, %b: {el}):
      linalg.yield %a : {el}
  }} -> tensor<{n}x{oh}x{ow}x{c}x{kh}x{kw}x{el}>
  %colm = tensor.collapse_shape %col [[0], [1, 2], [3, 4, 5]]
    : tensor<{n}x{oh}x{ow}x{c}x{kh}x{kw}x{el}> into tensor<{n}x{p}x{k}x{el}>
  %w2 = tensor.collapse_shape %w [[0], [1, 2, 3]] : {wt} into tensor<{f}x{k}x{el}>
  %i1 = tensor.collapse_shape %init [[0], [1], [2, 3]] : {ot} into tensor<{n}x{f}x{p}x{el}>
  %r = linalg.generic {{tme.gemm,
      indexing_maps = [affine_map<(n, f, p, k) -> (f, k)>, affine_map<(n, f, p, k) -> (n, p, k)>,
                       affine_map<(n, f, p, k) -> (n, f, p)>],
      iterator_types = ["parallel", "parallel", "parallel", "reduction"]}}
      ins(%w2, %colm : tensor<{f}x{k}x{el}>, tensor<{n}x{p}x{k}x{el}>) outs(%i1 : tensor<{n}x{f}x{p}x{el}>) {{
{mac}
  }} -> tensor<{n}x{f}x{p}x{el}>
  %r2 = tensor.expand_shape %r [[0], [1], [2, 3]] output_shape [{n}, {f}, {oh}, {ow}]
    : tensor<{n}x{f}x{p}x{el}> into {ot}
  return %r2 : {ot}
}}
"""

# The dot-product tile: rows x columns of the output, each accumulating a 16-wide vector of partial sums over k
# (tile_reduction_using_for), reduced across the vector once after the k loop. 4 x 7 x 16 at 512x49x4608 ran
# at 219 GFLOP/s (1056 us) where the 16 x 7 outer-product tile reached 167.
# Outer-product tiles narrower than this go to the dot form (measured: 14x14 and 28x28 outputs are slower in it:
# 256x14x14 3x3 1282 us vs 899 with 16 x 14 outer products).
DOT_BELOW = 8
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


COL_HEAD = """
  %col = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.im2col}} in %root
    : (!transform.any_op) -> !transform.any_op
  {col_forall}"""


def _dot_script(head: str, tiles: list, split: list, kv: int = 16) -> str:
    """DOT_TILE for a tme.gemm generic with parallel dims `tiles` (then k, vectorized `kv` wide)."""
    n = len(tiles)
    return DOT_TILE.format(head=head, forall=_forall("gemm0", "gemm", split + [0]),
                           tiles=", ".join(map(str, tiles)), nloops=n, handles=", !transform.any_op" * n,
                           ktile=", ".join(["0"] * n + [str(kv)]))


# A matmul whose right-hand side is the transpose of an input (a linear layer's weight.t(), attention's
# k.transpose(-1, -2)), both operands contiguous along k: the dot-product form reads the weight rows directly.
# For up to DOT_ROWS rows; more rows pack the weight into GEMM panels instead (MATMUL_PACKED: at 128 rows and
# K = 256 the dot form took 504-636 us where packing took 277).
DOT_ROWS = 16
MATMUL_T = """
func.func private @tme_mm(%lhs: {at}, %rhs: {wt}, %init: {ot}) -> {ot} {{
  %r = linalg.generic {{tme.gemm,
      indexing_maps = [affine_map<({dims}, k) -> ({bd}m, k)>, affine_map<({dims}, k) -> ({bd}n, k)>,
                       affine_map<({dims}, k) -> ({dims})>],
      iterator_types = [{par}"parallel", "parallel", "reduction"]}}
      ins(%lhs, %rhs : {at}, {wt}) outs(%init : {ot}) {{
{mac}
  }} -> {ot}
  return %r : {ot}
}}
"""


# A matmul with its right-hand side packed first (what BLAS libraries do): B [k, n] (or, transposed, W [n, k]) is
# copied into panels P[np, k, j] of nt columns each (n = np * nt + j), so that the register tile's k loop walks one
# contiguous K x nt block (32 KB at K = 256) instead of rows N floats apart (every one in the same L1 set), and a
# transposed weight needs no separate transposed copy. The GEMM generic then reads P.
MATMUL_PACKED = """
func.func private @tme_mm(%lhs: {at}, %rhs: {bt}, %init: {it}) -> {ot} {{
  %rhs_e = tensor.expand_shape %rhs [{rexp}] output_shape [{rshape}] : {bt} into tensor<{rtype}x{el}>
  %e = tensor.empty() : tensor<{bs}{np}x{k}x{nt}x{el}>
  %p = linalg.generic {{tme.pack,
      indexing_maps = [affine_map<({bd}np, {pdims}) -> ({bread})>, affine_map<({bd}np, {pdims}) -> ({bd}np, k, j)>],
      iterator_types = [{par}"parallel", "parallel", "parallel"]}}
      ins(%rhs_e : tensor<{rtype}x{el}>) outs(%e : tensor<{bs}{np}x{k}x{nt}x{el}>) {{
    ^bb0(%a: {el}, %b: {el}):
      linalg.yield %a : {el}
  }} -> tensor<{bs}{np}x{k}x{nt}x{el}>
{init}
  %r = linalg.generic {{tme.gemm,
      indexing_maps = [affine_map<({bd}m, np, j, k) -> ({bd}m, k)>, affine_map<({bd}m, np, j, k) -> ({bd}np, k, j)>,
                       affine_map<({bd}m, np, j, k) -> ({bd}m, np, j)>],
      iterator_types = [{par}"parallel", "parallel", "parallel", "reduction"]}}
      ins(%lhs, %p : {at}, tensor<{bs}{np}x{k}x{nt}x{el}>) outs(%i2 : tensor<{bs}{m}x{np}x{nt}x{el}>) {{
{mac}
  }} -> tensor<{bs}{m}x{np}x{nt}x{el}>
  %r1 = tensor.collapse_shape %r [{bexp}[{d}], [{d1}, {d2}]] : tensor<{bs}{m}x{np}x{nt}x{el}> into {ot}
  return %r1 : {ot}
}}
"""

# Script text (not a template): the conv forms' GEMM generic as %gemm0.
GEMM_MATCH = """
  %gemm0 = transform.structured.match ops{["linalg.generic"]} attributes{tme.gemm} in %root
    : (!transform.any_op) -> !transform.any_op"""
# A transposed right-hand side's pack (P[np, k, j] = W[np, j, k]) in 16 x 16 blocks, each read as 16 row vectors
# and transposed in registers (vector shuffles) instead of element by element: 128x1024 @ (256x1024)^T 364-423 ->
# 211-232 us (native 202-237), 128x256 @ (1024x256)^T 273-321 -> 255-280.
PACK_TRANSPOSE = """
  %pack_t, %pack_l:3 = transform.structured.tile_using_for %pack tile_sizes [{sizes}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op, !transform.any_op, !transform.any_op)
  transform.structured.vectorize %pack_t : !transform.any_op
  %pack_f = transform.structured.match ops{{["func.func"]}} in %root : (!transform.any_op) -> !transform.any_op
  transform.apply_patterns to %pack_f {{
    transform.apply_patterns.vector.transfer_permutation_patterns
    transform.apply_patterns.vector.lower_transpose lowering_strategy = "shuffle_1d"
  }} : !transform.any_op"""


def pack_rhs(module, nt: int) -> bool:
    """Replace the module's one matmul / batch_matmul (float, static shapes) by MATMUL_PACKED with panels of nt
    columns; a right-hand side that is linalg.transpose of an input is packed from that input directly."""
    from torch_mlir import ir
    mms = find_ops(module, lambda op: op.name in ("linalg.matmul", "linalg.batch_matmul") and len(op.operands) == 3)
    if len(mms) != 1:
        return False
    mm = mms[0]
    with module.context:
        w = _transposed_rhs(mm)
        rhs = w if w is not None else mm.operands[1]
        at, bt, ot = (ir.RankedTensorType(v.type) for v in (mm.operands[0], rhs, mm.operands[2]))
        if str(ot.element_type) not in ("f32", "f64") or any(d < 0 for t in (at, bt, ot) for d in t.shape):
            return False
    batch = mm.name == "linalg.batch_matmul"
    m, n, k = ot.shape[-2], ot.shape[-1], at.shape[-1]
    zero_init = _filled_init(mm, zero=True)    # the GEMM then starts from its own fill (fusable; a reshape is not)
    if n % nt:
        return False
    bd = "b, " if batch else ""
    d = 1 if batch else 0
    # The right-hand side viewed with its N dim split into (panel, column): W [n, k] as [np, nt, k] (transposed)
    # or B [k, n] as [k, np, nt], so that the pack reads it through a plain permutation, which vectorizes.
    bsz = [ot.shape[0]] if batch else []
    if w is not None:
        bread, rshape = f"{bd}np, j, k", bsz + [n // nt, nt, k]
        rexp = ([[0]] if batch else []) + [[d, d + 1], [d + 2]]
    else:
        bread, rshape = f"{bd}k, np, j", bsz + [k, n // nt, nt]
        rexp = ([[0]] if batch else []) + [[d], [d + 1, d + 2]]
    bs, el = f"{ot.shape[0]}x" if batch else "", ot.element_type
    out4 = f"tensor<{bs}{m}x{n // nt}x{nt}x{el}>"        # the result with its N dim split into (panel, column)
    with module.context:
        bias = _bias_add(mm) if zero_init and not batch else None
    init_value = mm.operands[2]
    if bias is not None:
        # addmm's bias, added by a separate pass over the result after the matmul: the accumulator starts from it
        # instead (one pass less over the output, and the tiles start from it in registers)
        add, init_value = bias
        with module.context:
            add.results[0].replace_all_uses_with(mm.results[0])
            add.erase()
        init = (f"  %b2 = tensor.expand_shape %init [[0, 1]] output_shape [{n // nt}, {nt}] : {init_value.type} into "
                f"tensor<{n // nt}x{nt}x{el}>\n  %e2 = tensor.empty() : {out4}\n"
                f"  %i2 = linalg.generic {{tme.init, indexing_maps = [affine_map<(m, np, j) -> (np, j)>, "
                f"affine_map<(m, np, j) -> (m, np, j)>], iterator_types = [\"parallel\", \"parallel\", \"parallel\"]}}"
                f" ins(%b2 : tensor<{n // nt}x{nt}x{el}>) outs(%e2 : {out4}) {{\n"
                f"  ^bb0(%a: {el}, %o: {el}):\n    linalg.yield %a : {el}\n  }} -> {out4}")
    elif zero_init:
        init = _zero_init("i2", out4, el)
    else:
        init = (f"  %i2 = tensor.expand_shape %init [{'[0], ' if batch else ''}[{d}], [{d + 1}, {d + 2}]] "
                f"output_shape [{str(ot.shape[0]) + ', ' if batch else ''}{m}, {n // nt}, {nt}] : {ot} into {out4}")
    text = MATMUL_PACKED.format(
        init=init, mac=MAC.format(el=el), at=at, bt=bt, ot=ot, it=init_value.type, el=el, bd=bd, bread=bread,
        rexp=", ".join(map(str, rexp)), rshape=", ".join(map(str, rshape)), rtype="x".join(map(str, rshape)),
        bs=bs, bexp="[0], " if batch else "",
        par='"parallel", ' if batch else "", np=n // nt, nt=nt, k=k, m=m, d=d, d1=d + 1, d2=d + 2,
        pdims="j, k" if w is not None else "k, j")
    _replace_with_call(module, mm, text, "tme_mm", [mm.operands[0], rhs, init_value], ot, "pack_rhs")
    return True


def _bias_add(mm):
    """(the add, the bias) when the matmul's only use is a linalg.generic adding a bias [N], an input of the kernel,
    broadcast along the rows (addmm as torch-mlir lowers it: a matmul from zeros, then bias + product), else None."""
    from torch_mlir import ir
    uses = list(mm.results[0].uses)
    if len(uses) != 1:
        return None
    add = uses[0].owner
    add = getattr(add, "operation", add)
    if add.name != "linalg.generic" or len(add.operands) != 3 or len(add.results) != 1:
        return None
    maps = [ir.AffineMapAttr(a).value for a in add.attributes["indexing_maps"]]
    ident = ir.AffineMap.get_identity(2)
    if len(maps) != 3 or maps[2] != ident or any("parallel" not in str(t) for t in add.attributes["iterator_types"]):
        return None
    row = ir.AffineMap.get(2, 0, [ir.AffineDimExpr.get(1)])
    i_mm = 0 if add.operands[0] == mm.results[0] else 1 if add.operands[1] == mm.results[0] else None
    if i_mm is None or maps[i_mm] != ident or maps[1 - i_mm] != row:
        return None
    block = add.regions[0].blocks[0]
    ops = list(block.operations)
    if len(ops) != 2 or ops[0].name != "arith.addf" or ops[1].name != "linalg.yield" or \
            {ops[0].operands[0], ops[0].operands[1]} != {block.arguments[0], block.arguments[1]} or \
            ops[1].operands[0] != ops[0].result:
        return None
    bias = add.operands[1 - i_mm]
    if not isinstance(bias, ir.BlockArgument):
        return None          # computed (a scaled bias): it may come after the matmul, which then could not use it
    return add, bias


# matmul-packed's schedule: the GEMM split across threads by panel (or, where the panels do not share out evenly,
# by rows), then a loop over the panels, each packed right before its GEMM (the pack fused into the panel loop):
# the K x nt panel is written and read while it is in the core's L1/L2, where packing all of B first wrote it to
# memory and read it back. Measured (us, 2 threads, native MKL beside): 128x256 @ (768x256)^T 210 -> 180 (141),
# 128x768 @ (3072x768)^T 2107 -> 1943 (1652), 128x3072 @ (768x3072)^T 2076 -> 1774 (1752).
PACKED = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
  %pack0 = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.pack}} in %root
    : (!transform.any_op) -> !transform.any_op
  %gemm0 = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.gemm}} in %root
    : (!transform.any_op) -> !transform.any_op
  {forall}
  %gemmp, %panels = transform.structured.fuse %gemm tile_sizes [{panel}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  %pack = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.pack}} in %panels
    : (!transform.any_op) -> !transform.any_op
  {pack_vec}
  %t, %l:{nloops} = transform.structured.{register} %gemmp tile_sizes [{tiles}, 0]
    : (!transform.any_op) -> (!transform.any_op{handles})
  {fill_vec}
  %t2, %lk = transform.structured.tile_using_for %t tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %t2 : !transform.any_op
""" + TAIL
# The thread split, with the pack fused into it first: each thread packs the panels it multiplies (split by rows:
# all of them).
PACKED_FORALL = """%gemm, %forall = transform.structured.tile_using_forall %gemm0 num_threads [{counts}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  %pack1, %forall2 = transform.structured.fuse_into_containing_op %pack0 into %forall
    : (!transform.any_op, !transform.any_op) -> (!transform.any_op, !transform.any_op)"""
PACKED_SERIAL = "%gemm = transform.merge_handles %gemm0 : !transform.any_op"


# At a K this small (attention's q @ k^T: the head size), B is packed whole, one panel of all N columns, threads
# split the batch (or rows), and the register tiles start from zeros (the fill fused into them): per-panel packing
# cost more than it saved there (4x128x64 @ (4x128x64)^T: 46 us by panels of 32 columns, native 24).
WHOLE_PACK_K = 128


def _packed_schedule(shape, k: int, threads: int, transposed: bool = True, fill: bool = False) -> Schedule:
    """matmul-packed (PACKED): threads by panel, or by rows where the panels do not share out evenly; each panel
    packed (a transposed right-hand side's in 16 x 16 vector blocks) and register-tiled."""
    batch, m, n = list(shape[:-2]), shape[-2], shape[-1]
    mt, nt = _register_tile(m, n)
    nb = len(batch)
    pw = n if fill and k <= WHOLE_PACK_K and n % 16 == 0 else nt            # panel width
    split = [0] * (nb + 4)                   # (batch..., m, np, j, k)
    if threads > 1 and pw == n and batch and batch[0] % threads == 0:
        split[0] = threads
    elif threads > 1 and (n // pw) % threads == 0:
        split[nb + 1] = threads
    elif threads > 1 and m % (threads * mt) == 0:
        split[nb] = threads
    forall = PACKED_FORALL.format(counts=", ".join(map(str, split))) if any(split) else PACKED_SERIAL
    if any(split) and fill:
        forall += "\n  " + _init_into("%forall2", "attributes{tme.init}")
    pack_vec = PACK_TRANSPOSE.format(sizes=", ".join(map(str, [0] * nb + [1, 16, 16]))) \
        if transposed and pw % 16 == 0 and k % 16 == 0 else ""
    # The fill goes into the register tiles too (structured.fuse) once the pack is vectorized, i.e. no longer an op
    # that fusion would drag along into every row tile.
    fill_tiles = fill and bool(pack_vec)
    fill_vec = _fill_vec(nb + 1, "attributes{tme.init}") if fill_tiles else ""
    script = PACKED.format(forall=forall, panel=", ".join(map(str, [0] * nb + [0, 1, 0, 0])), pack_vec=pack_vec,
                          register="fuse" if fill_tiles else "tile_using_for", fill_vec=fill_vec,
                          tiles=", ".join(map(str, [1] * nb + [mt, 0, nt])), nloops=nb + 2,
                          handles=", !transform.any_op" * (nb + 2), ktile=", ".join(["0"] * (nb + 3) + ["1"]))
    return Schedule("matmul-packed", script, threads if any(split) else 1, pw)


# Elementwise loop nests (modules without a contraction or a reduction), after elementwise fusion: each
# linalg.generic big enough is split across threads along its outermost dim that has a slice per thread; the
# slices keep plain loops (LLVM vectorizes them as in the plain pipeline). Measured at 2 threads: add
# 1x64x56x56 65 -> 14 us (native 13), relu 1x64x112x112 229 -> 110 (native 107), gelu 1x128x1024 64 -> 27 (26).
SPLIT_MIN_ELEMENTS = 1 << 15
SPLIT_TAG = "tme.split{i}"        # one per generic to split, each with its own split
SPLIT_FORALL = """
  %s{i}_0 = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.split{i}}} in %root
    : (!transform.any_op) -> !transform.any_op
  %s{i}, %s{i}_forall = transform.structured.tile_using_forall %s{i}_0 num_threads [{counts}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)"""
SPLIT_SCRIPT = """
transform.named_sequence @tile(%root: !transform.any_op {{transform.consumed}}) {{
{splits}
  transform.yield
}}
transform.named_sequence @lower(%root: !transform.any_op {{transform.consumed}}) {{
  transform.yield
}}
"""


def _split_dim(g, threads: int):
    """The loop dim to split `g` (a linalg.generic) along, or None: the outermost dim whose extent gives every
    thread a slice, where the op has at least SPLIT_MIN_ELEMENTS of work. Only elementwise generics (no reduction
    dim) without a math op on a broadcast input: in the OpenMP-outlined body LLVM no longer knows that the inputs
    do not alias the output, so it recomputes a per-channel rsqrt per element (batch norm: 854 us instead of 206)
    and keeps a reduction's accumulator in memory (layer norm 128x256: 41 us instead of 13)."""
    from torch_mlir import ir
    its = [str(t) for t in g.attributes["iterator_types"]]
    if any("parallel" not in it for it in its):
        return None
    maps = [ir.AffineMapAttr(m).value for m in g.attributes["indexing_maps"]]
    n_in = len(g.operands) - len(g.results)
    ranges = [0] * len(its)
    for v, mp in zip(g.operands, maps):
        t = ir.ShapedType(v.type)
        for e, size in zip(mp.results, t.shape):
            if isinstance(e, ir.AffineDimExpr):
                ranges[e.position] = max(ranges[e.position], size)
    if any(r <= 0 for r in ranges) or math.prod(ranges) < SPLIT_MIN_ELEMENTS:
        return None
    inner = len(its) - 1
    broadcast = any(not any(isinstance(e, ir.AffineDimExpr) and e.position == inner for e in mp.results)
                    for mp in maps[:n_in])
    if broadcast and any(op.operation.name.startswith("math.") for op in g.regions[0].blocks[0].operations):
        return None
    return next((d for d, (it, r) in enumerate(zip(its, ranges)) if "parallel" in it and r >= threads), None)


def split_loops(module, threads: int) -> str:
    """Tag each generic worth splitting (SPLIT_TAG) and return the SPLIT_SCRIPT that splits each along its dim
    (`_split_dim`); raises CompileFailure when none is worth it. The module's elementwise ops are fused and
    flattened already (lowering.flatten_elementwise)."""
    from torch_mlir import ir
    splits = []
    with module.context:
        for g in find_ops(module, lambda op: op.name == "linalg.generic"):
            d = _split_dim(g, threads)
            if d is None:
                continue
            i = len(splits)
            g.attributes[SPLIT_TAG.format(i=i)] = ir.UnitAttr.get()
            n = len(g.attributes["iterator_types"])
            counts = ", ".join(str(threads) if j == d else "0" for j in range(n))
            splits.append(SPLIT_FORALL.format(i=i, counts=counts))
    if not splits:
        raise CompileFailure("llvm", "split_loops: no loop nest big enough to split")
    return SPLIT_SCRIPT.format(splits="".join(splits))


def _replace_with_call(module, op, func_text: str, name: str, operands, result_type, what: str) -> None:
    """Replace `op` (one result) by a call to the private function `func_text` defines, then inline it."""
    from torch_mlir import ir
    from torch_mlir.dialects import func as func_d
    with module.context, ir.Location.unknown():
        module.body.append(ir.Operation.parse(func_text))
        with ir.InsertionPoint(op):
            call = func_d.CallOp([result_type], name, list(operands))
        op.results[0].replace_all_uses_with(call.results[0])
        op.erase()
    _run(module, ["inline", "canonicalize"], what)


def _transposed_rhs(op):
    """The transpose's input when the matmul's right-hand side is linalg.transpose swapping the last two dims."""
    from torch_mlir import ir
    rhs = op.operands[1].maybe_downcast()
    if not isinstance(rhs, ir.OpResult):
        return None
    t = getattr(rhs.owner, "operation", rhs.owner)
    if t.name != "linalg.transpose":
        return None
    perm = [int(x) for x in ir.DenseI64ArrayAttr(t.attributes["permutation"])]
    n = len(perm)
    if perm != list(range(n - 2)) + [n - 1, n - 2]:
        return None
    return t.operands[0]


def fold_transposed_rhs(module) -> bool:
    """Replace the module's matmul of (a, transpose(w)) by MATMUL_T on (a, w), inlined."""
    from torch_mlir import ir
    mms = find_ops(module, lambda op: op.name in ("linalg.matmul", "linalg.batch_matmul")
                   and _transposed_rhs(op) is not None)
    if len(mms) != 1:
        return False
    mm = mms[0]
    with module.context:
        w = _transposed_rhs(mm)
        at, wt, ot = (ir.RankedTensorType(v.type) for v in (mm.operands[0], w, mm.operands[2]))
        batch = mm.name == "linalg.batch_matmul"
        text = MATMUL_T.format(mac=MAC.format(el=ot.element_type), at=at, wt=wt, ot=ot,
                               dims="b, m, n" if batch else "m, n", bd="b, " if batch else "",
                               par='"parallel", ' if batch else "")
        operands = [mm.operands[0], w, mm.operands[2]]
    _replace_with_call(module, mm, text, "tme_mm", operands, ot, "fold_transposed_rhs")
    return True


def conv_to_gemm(module, panel_rows: int = 0, dot: bool = False) -> bool:
    """Replace the module's one linalg.conv_2d_nchw_fchw (float) by a call to CONV_AS_PANELS (column panels of
    `panel_rows` output rows; 0: one panel) or CONV_AS_DOT, inlined. False when there is no such conv."""
    from torch_mlir import ir
    convs = find_ops(module, lambda op: op.name == "linalg.conv_2d_nchw_fchw")
    if len(convs) != 1:
        return False
    conv = convs[0]
    with module.context:
        xt, wt, ot = (ir.RankedTensorType(v.type) for v in list(conv.operands)[:3])
        if str(ot.element_type) not in ("f32", "f64") or any(d < 0 for t in (xt, wt, ot) for d in t.shape):
            return False
        strides = [int(v) for v in ir.DenseIntElementsAttr(conv.attributes["strides"])]
        dil = [int(v) for v in ir.DenseIntElementsAttr(conv.attributes["dilations"])]
    n, f, oh, ow = ot.shape
    _, c, kh, kw = wt.shape
    r = panel_rows or oh
    if oh % r:
        return False
    el, i1 = ot.element_type, f"tensor<{n}x{f}x{oh * ow}x{ot.element_type}>"
    if not dot and _filled_init(conv, zero=True):
        # the GEMM starts from its own zeros (fusable into the panels and the register tiles; a reshape is not)
        init = _zero_init("i1", i1, el)
    else:
        init = f"  %i1 = tensor.collapse_shape %init [[0], [1], [2, 3]] : {ot} into {i1}"
    text = (CONV_AS_DOT if dot else CONV_AS_PANELS).format(
        init=init, mac=MAC.format(el=el), xt=xt, wt=wt, ot=ot, el=el, n=n, c=c, kh=kh, kw=kw, oh=oh, ow=ow, f=f,
        k=c * kh * kw, p=oh * ow, sh=strides[0], sw=strides[1], dh=dil[0], dw=dil[1], r=r,
        pb=oh // r, nc=r * ow, rs=r * strides[0], xh=(r - 1) * strides[0] + (kh - 1) * dil[0] + 1, xw=xt.shape[3])
    _replace_with_call(module, conv, text, "tme_conv", list(conv.operands)[:3], ot, "conv_to_gemm")
    return True


# matmul / batch_matmul: 4 x 16 reached 39.6 GFLOP/s at 256^3 on one core here, faster than MKL (shared notes).
MATMUL_HEAD = """
  %mm0 = transform.structured.match ops{{["{op}"]}} in %root : (!transform.any_op) -> !transform.any_op"""


def _script(head: str, target: str, tiles: list, split: list, panel=0, fill: bool = False) -> str:
    """A register-tile schedule: `tiles` for the op's parallel dims (k, the last dim, is stepped by 1). `panel`: an
    int > 0 first cuts the last parallel dim (N) into panels of that width, so that a K x panel slice of the
    right-hand operand stays in cache while every row tile passes over it (without it each row tile streams all
    of it); a list gives the panel loop's tile sizes per parallel dim directly. `fill`: the op's accumulator is a
    linalg.fill, fused into every loop (REGISTER_TILE's structured.fuse)."""
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
    return REGISTER_TILE.format(
        head=head, target=target, forall=forall, panel=panel_text, register="fuse" if fill else "tile_using_for",
        tiles=", ".join(map(str, tiles)), nloops=loops, handles=", !transform.any_op" * loops,
        ktile=", ".join(["0"] * n + ["1"]), fill_vec=_fill_vec(loops - 1, 'ops{["linalg.fill"]}') if fill else "")


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


# Stages after @tile (each a pass pipeline); @lower runs between the second and the third.
AFTER_TILE = [
    "canonicalize", "cse", "loop-invariant-subset-hoisting", "canonicalize",
]
BUFFERIZE = [
    "one-shot-bufferize{bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    "canonicalize",      # folds expand_shape(collapse_shape(alloc)) so that the result is an alloc to hoist
    "buffer-results-to-out-params{hoist-static-allocs=true modify-public-functions=true}",
    "canonicalize", "cse",
    BUFFER_REWRITES,
    "ownership-based-buffer-deallocation", "canonicalize", "buffer-deallocation-simplification",
    "bufferization-lower-deallocations", "canonicalize",
]
VECTOR_TO_LLVM = [
    "canonicalize",
    "func.func(refback-munge-memref-copy)",       # before linalg-to-loops: no memrefCopy calls
    "func.func(convert-linalg-to-loops)",
    "canonicalize", "cse",
    "func.func(lower-vector-mask)",
    "func.func(lower-vector-multi-reduction)",     # the dot-product tile's final reduction across the vector
    "convert-vector-to-scf{full-unroll=true target-rank=1}",
    "func.func(lower-affine)",
    "{threads}",
    "convert-scf-to-cf",
    "func.func(refback-expand-ops-for-llvm)",      # as in the plain pipeline (split loop nests may hold any op)
    "func.func(arith-expand)",
    "expand-strided-metadata",
    "fold-memref-alias-ops",
    "lower-affine",
    "canonicalize", "cse",
    # outerproduct: 10x faster than `dot` for this tiling (shared notes, mlir-cpu-codegen.md).
    "convert-vector-to-llvm{vector-contract-lowering=outerproduct reassociate-fp-reductions=true}",
    # aligned_alloc keeps the pointer's provenance (no ptrtoint round trip): LLVM then knows a temporary does not
    # alias the arguments and vectorizes copies into it.
    "finalize-memref-to-llvm{use-aligned-alloc=true}",
    "func.func(convert-arith-to-llvm)",
    "convert-math-to-llvm",
    "convert-math-to-libm",
    "convert-index-to-llvm",
    "convert-openmp-to-llvm",
    "convert-func-to-llvm",
    "convert-cf-to-llvm",
    "convert-ub-to-llvm",
    "reconcile-unrealized-casts",
]
# The "{threads}" slot: forall loops become OpenMP parallel loops (canonicalize right after: alloca_scope blocks).
THREADED = "scf-forall-to-parallel,convert-scf-to-openmp{{num-threads={n}}},canonicalize"
SERIAL = "scf-forall-to-for"


# The aten ops whose modules a contraction schedule may serve: the parent retries these without schedules after a
# crash or time-out (for other ops a retry would mostly repeat the failure; split-loops, which may serve any op,
# is plain loops cut in slices, and a crash there stays a recorded fallback).
FAMILY_OPS = frozenset({"aten.convolution.default", "aten.mm.default", "aten.addmm.default", "aten.bmm.default",
                        "aten.baddbmm.default"})


def may_apply(op_name: str) -> bool:
    return op_name in FAMILY_OPS


@dataclasses.dataclass(frozen=True)
class Schedule:
    family: str
    script: str
    threads: int = 1
    panel_rows: int = 0        # conv2d-panels: output rows per panel (CONV_AS_PANELS); matmul-packed: panel width


@functools.lru_cache(maxsize=None)
def avx512() -> bool:
    """Whether the JIT's host CPU has 512-bit vector registers (the JIT compiles for the host CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(l.startswith("flags") and " avx512f" in l for l in f)
    except OSError:
        return False


# Register tiles (rows x columns, columns = the vector dim), best first, by vector ISA. AVX-512 (32 registers of
# 16 floats): 8 x 32 keeps 16 accumulators, measured 299 GFLOP/s on 2 cores at 64x576x3136 vs 227 for 8 x 16.
# AVX2 (16 registers of 8 floats): 8 x 16 for convs and 4 x 16 for matmuls, measured on the first machine.
TILES_AVX512 = ((8, 32), (8, 16), (16, 8), (8, 8))
TILES_AVX2 = ((8, 16), (4, 16), (16, 8), (8, 8))
# Conv panels also take 16 x 16 (16 accumulators, as 8 x 32): at 28x28 outputs (112-column panels, which no 32-wide
# tile divides) it ran 128x28x28 3x3 in 807-834 us where 8 x 16 took 873-902.
CONV_TILES_AVX512 = ((8, 32), (16, 16), (8, 16), (16, 8), (8, 8))
# Bytes of the right-hand operand one panel may hold (K x panel width): well inside a core's L2 (1-2 MB).
PANEL_BYTES = 512 * 1024


def _register_tile(m: int, n: int, tiles: Optional[tuple] = None) -> tuple:
    """The first register tile (of `tiles`, else the ISA's list) whose rows divide m and whose columns divide n
    (partial tiles do not vectorize); else the largest column divisor <= 16 with 16 rows or fewer (e.g. 16 x 7 for
    7x7 conv outputs)."""
    for mt, nt in tiles or (TILES_AVX512 if avx512() else TILES_AVX2):
        if m % mt == 0 and n % nt == 0:
            return mt, nt
    nt = next(d for d in range(16, 0, -1) if n % d == 0)
    # Accumulators must stay in registers: 16 rows of one 16-wide vector on AVX-512 (32 registers); on AVX2 a
    # column of up to 16 floats takes two of its 16 registers, so at most 6 rows of two or 12 rows of one.
    vec, budget = (16, 24) if avx512() else (8, 12)
    return next(r for r in (16, 8, 4, 2, 1) if m % r == 0 and r * -(-nt // vec) <= budget), nt


def _dot_tile(m: int, n: int) -> tuple:
    """(rows, columns, k vector width) of a dot-product tile: rows x columns accumulators of one vector each
    (AVX-512: 4 x 7 of 16 floats = 28 of 32 registers; AVX2: 2 x 6 of 8 floats = 12 of 16)."""
    rows, cols, kv = ((4, 2, 1), (7, 8, 6, 5, 4, 3, 2, 1), 16) if avx512() else ((2, 1), (6, 5, 4, 3, 2, 1), 8)
    return next(d for d in rows if m % d == 0), next(d for d in cols if n % d == 0), kv


def _panel(n: int, k: int, nt: int, elem_bytes: int = 4) -> int:
    """Panel width for the N dim: 0 (none) if K x n fits PANEL_BYTES, else the widest multiple of nt dividing n
    that fits."""
    if k * n * elem_bytes <= PANEL_BYTES:
        return 0
    best = 0
    for w in range(nt, n, nt):
        if n % w == 0 and k * w * elem_bytes <= PANEL_BYTES:
            best = w
    return best


def _gemm_plan(batch: list, m: int, n: int, k: int, threads: int) -> tuple:
    """(register tiles per parallel dim, thread split per parallel dim, N panel width, threads used) for a GEMM
    with leading batch dims: the thread split (batch, rows or columns, where it divides evenly) that leaves the
    largest register tile."""
    options = [(None, m, n)]
    if threads > 1:
        if batch and batch[0] % threads == 0:
            options.append((0, m, n))
        if m % threads == 0 and m >= 2 * threads:
            options.append((len(batch), m // threads, n))
        if n % threads == 0 and n >= 2 * threads:
            options.append((len(batch) + 1, m, n // threads))

    def score(opt):
        mt, nt = _register_tile(opt[1], opt[2])
        # A split is worth having unless it shrinks the tile; among splits, columns first (measured), then rows.
        return (mt * nt, nt, opt[0] is not None, opt[0] == len(batch) + 1)
    dim, m_t, n_t = max(options, key=score)
    mt, nt = _register_tile(m_t, n_t)
    split = [0] * (len(batch) + 2)
    if dim is not None:
        split[dim] = threads
    return [1] * len(batch) + [mt, nt], split, _panel(n_t, k, nt), threads if dim is not None else 1


def _conv_panel(f: int, oh: int, ow: int, k: int, threads: int = 1) -> tuple:
    """(rows per panel, register tile) for the conv GEMM [f, k] x [k, oh*ow] in panels of r whole output rows (r *
    ow columns, see CONV_AS_PANELS). Best register tile first (16- or 32-wide vectors over 14-wide over narrower),
    weighted by how evenly the panels share out over the threads, then panels that fit PANEL_BYTES, then narrower
    (measured: 256x14x14 3x3 815 us with 1-row panels, 1025 with 2)."""
    best = None
    for r in (d for d in range(1, oh + 1) if oh % d == 0):
        nc, pb = r * ow, oh // r
        mt, nt = _register_tile(f, nc, CONV_TILES_AVX512 if avx512() else None)
        width = nt if nt % 8 == 0 else (nt * 0.8 if nt > 8 else nt * 0.5)    # ragged vectors cost more
        balance = pb / (threads * -(-pb // threads))
        score = (mt * width * balance, k * nc * 4 <= PANEL_BYTES, -nc)
        if best is None or score > best[0]:
            best = (score, r, mt, nt)
    return best[1], best[2], best[3]


def _conv_schedule(shape, k: int, threads: int, fill: bool = False) -> Schedule:
    n, f, oh, ow = shape
    r, mt, nt = _conv_panel(f, oh, ow, k, threads)
    p = oh * ow
    if nt < DOT_BELOW and k % 16 == 0:
        # Narrow: the dot-product form (vectors along k). Threads split the output channels.
        dmt, dnt, kv = _dot_tile(f // threads if f % threads == 0 else f, p)
        t = threads if f % (threads * dmt) == 0 else 1
        col = (COL_FORALL.format(counts=f"0, {threads}") if threads > 1 else
               NO_FORALL.format(out="col_t", src="col"))
        script = _dot_script(COL_HEAD.format(col_forall=col), [1, dmt, dnt], [0, t, 0], kv)
        return Schedule("conv2d-dot", script, threads)
    # The panels' forall (in the template) is what the threads share; the script register-tiles each panel's GEMM.
    # A zero init (a conv without bias) goes into the panels and then into the register tiles (REGISTER_TILE).
    head = GEMM_MATCH
    if fill:
        head = ("\n  %conv_panels = transform.structured.match ops{[\"scf.forall\"]} in %root : (!transform.any_op) -> "
                "!transform.any_op\n  " + _init_into("%conv_panels", "attributes{tme.init}") + head)
    return Schedule("conv2d-panels", _script(head, "gemm", [1, mt, nt], [0, 0, 0], fill=fill),
                    threads if oh // r > 1 else 1, r)


def select(module, threads: int = 1) -> Optional[Schedule]:
    """The schedule for this Linalg module, or None (plain loops); `threads` > 1 splits the work that many ways."""
    from torch_mlir import ir
    func = next((op for op in module.body.operations if op.operation.name == "func.func"), None)
    if func is None:
        return None
    convs = []

    def visit(op):
        name = op.operation.name
        if name.startswith("linalg.conv") or name.startswith("linalg.matmul") or name.startswith("linalg.batch"):
            convs.append(op.operation)
        return ir.WalkResult.ADVANCE
    func.operation.walk(visit)
    if not convs and threads > 1:
        # Elementwise work only: with a reduction in the module, splitting measured slower (see _split_dim).
        results = func.attributes["function_type"].value.results
        if any(ir.ShapedType(t).has_static_shape and math.prod(ir.ShapedType(t).shape) >= SPLIT_MIN_ELEMENTS
               for t in results) and not find_ops(module, lambda op: op.name.startswith("linalg.") and
                                                  "reduction" in str(op.attributes["iterator_types"])
                                                  if "iterator_types" in op.attributes else False):
            return Schedule("split-loops", "", threads)
        return None
    if len(convs) != 1:
        return None
    op = convs[0]
    shape = ir.RankedTensorType(op.results[0].type).shape
    if any(d < 0 for d in shape):
        return None
    if op.name == "linalg.conv_2d_nchw_fchw":
        wshape = ir.RankedTensorType(op.operands[1].type).shape
        return _conv_schedule(shape, wshape[1] * wshape[2] * wshape[3], threads, _filled_init(op, zero=True))
    if op.name in ("linalg.matmul", "linalg.batch_matmul") and len(op.operands) == 3 and \
            _transposed_rhs(op) is not None:
        k = ir.RankedTensorType(op.operands[0].type).shape[-1]
        batch, m, n = shape[:-2], shape[-2], shape[-1]
        if m > DOT_ROWS or k % 16:
            return _packed_schedule(shape, k, threads, fill=_filled_init(op))
        mt, nt, kv = _dot_tile(m, n)
        split = [0] * len(shape)
        for dim in ([0] if batch else []) + [len(shape) - 1, len(shape) - 2]:
            if threads > 1 and shape[dim] % threads == 0 and (shape[dim] // threads) % \
                    {len(shape) - 1: nt, len(shape) - 2: mt}.get(dim, 1) == 0:
                split[dim] = threads
                break
        return Schedule("matmul-dot", _dot_script("", [1] * len(batch) + [mt, nt], split, kv),
                        threads if any(split) else 1)
    if op.name in ("linalg.matmul", "linalg.batch_matmul") and len(op.operands) == 3:
        batch = shape[:-2]
        k = ir.RankedTensorType(op.operands[0].type).shape[-1]
        tiles, split, panel, t = _gemm_plan(batch, shape[-2], shape[-1], k, threads)
        fill = _filled_init(op)
        return Schedule("matmul", _script(MATMUL_HEAD.format(op=op.name), "mm", tiles, split, panel, fill), t)
    return None


def _filled_init(op, zero: bool = False) -> bool:
    """The op's accumulator (its last operand) is made by the module's only linalg.fill (`zero`: of 0.0)."""
    from torch_mlir import ir
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


def _run(module, passes, what: str) -> None:
    from . import lowering
    try:
        lowering.run(module, passes, "llvm")
    except CompileFailure as e:
        raise CompileFailure("llvm", f"schedule {what}: {e.reason}") from None


def allow_fma(module) -> None:
    """Mark float multiplies and adds `contract`: LLVM then fuses the tile's multiply-add pairs into FMAs (without
    it, 8x32 at 64x576x3136 ran at 179 GFLOP/s instead of 299). A fused multiply-add rounds once instead of twice,
    which is what oneDNN and MKL do too; contractions are qualified with a tolerance for summation order anyway."""
    from torch_mlir import ir
    with module.context:
        contract = ir.Attribute.parse("#arith.fastmath<contract>")

        def visit(op):
            if op.name in ("arith.mulf", "arith.addf"):
                op.attributes["fastmath"] = contract
            return ir.WalkResult.ADVANCE
        module.operation.walk(visit)


def to_llvm(module, schedule: Schedule, noalias: bool = True):
    """A new LLVM-dialect module: `module` (Linalg on tensors, left unchanged) with `schedule` applied.
    `noalias`: see lowering.noalias_inputs (False for kernels that may write in place)."""
    from torch_mlir import ir
    ctx = module.context
    with ctx:
        try:
            copy = ir.Module.parse(str(module))
        except Exception as e:
            raise CompileFailure("llvm", f"schedule parse: {e}") from None
    if schedule.family.startswith("conv2d") and \
            not conv_to_gemm(copy, schedule.panel_rows, schedule.family == "conv2d-dot"):
        raise CompileFailure("llvm", "schedule conv_to_gemm: no float NCHW conv with static shapes")
    if schedule.family == "matmul-packed" and not pack_rhs(copy, schedule.panel_rows):
        raise CompileFailure("llvm", "schedule pack_rhs: no float matmul with static shapes")
    if schedule.family == "matmul-dot" and not fold_transposed_rhs(copy):
        raise CompileFailure("llvm", "schedule fold_transposed_rhs: no matmul of a transposed input")
    script = schedule.script
    if schedule.family == "split-loops":
        script = split_loops(copy, schedule.threads)
    with ctx:
        try:
            # the script's sequences join the module (text splicing would break on a trailing resource section)
            seqs = ir.Module.parse("module attributes {transform.with_named_sequence} {" + script + "}")
            m = copy
            m.operation.attributes["transform.with_named_sequence"] = ir.UnitAttr.get()
            for op in seqs.body.operations:
                m.body.append(op.operation.clone())
        except Exception as e:
            raise CompileFailure("llvm", f"schedule parse: {e}") from None
    ranks = mark_inputs_readonly(m)
    _run(m, ["transform-interpreter{entry-point=tile}"], "tile")
    allow_fma(m)
    _run(m, AFTER_TILE + BUFFERIZE, "bufferize")
    _run(m, ["transform-interpreter{entry-point=lower}"], "lower")
    with ctx:
        for op in list(m.body.operations):
            if op.operation.name.startswith("transform."):
                op.operation.erase()
        for op in m.body.operations:
            if defined(op):
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    slot = THREADED.format(n=schedule.threads) if schedule.threads > 1 else SERIAL
    _run(m, [slot if p == "{threads}" else p for p in VECTOR_TO_LLVM], "llvm")
    if noalias:
        noalias_inputs(m, ranks)
    return m
