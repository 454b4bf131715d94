"""The matmul families: register-tiled GEMM (matmul), packed right-hand side (matmul-packed), dot products (matmul-dot)."""
from __future__ import annotations

from torch_mlir import ir

from ...errors import CompileFailure
from ..rewrites import find_ops
from .base import (MAC, TAIL, Schedule, _dot_script, _filled_init, _init_into, _fill_vec, _replace_with_call,
                   _script, _vectorize, _zero_init)
from .tiles import _dot_tile, _gemm_plan, _register_tile


# matmul / batch_matmul: 4 x 16 reached 39.6 GFLOP/s at 256^3 on one core here, faster than MKL (shared notes).
MATMUL_HEAD = """
  %mm0 = transform.structured.match ops{{["{op}"]}} in %root : (!transform.any_op) -> !transform.any_op"""


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
{msize}  %rhs_e = tensor.expand_shape %rhs [{rexp}] output_shape [{rshape}] : {bt} into tensor<{rtype}x{el}>
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


def _transposed_rhs(op):
    """The transpose's input when the matmul's right-hand side is linalg.transpose swapping the last two dims."""
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


def _bias_add(mm):
    """(the add, the bias) when the matmul's only use is a linalg.generic adding a bias [N], an input of the kernel,
    broadcast along the rows (addmm as torch-mlir lowers it: a matmul from zeros, then bias + product), else None."""
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


def pack_rhs(module, nt: int) -> bool:
    """Replace the module's one matmul / batch_matmul (float, static shapes but for the rows, which may be
    dynamic) by MATMUL_PACKED with panels of nt columns; a right-hand side that is linalg.transpose of an input is
    packed from that input directly."""
    mms = find_ops(module, lambda op: op.name in ("linalg.matmul", "linalg.batch_matmul") and len(op.operands) == 3)
    if len(mms) != 1:
        return False
    mm = mms[0]
    with module.context:
        w = _transposed_rhs(mm)
        rhs = w if w is not None else mm.operands[1]
        at, bt, ot = (ir.RankedTensorType(v.type) for v in (mm.operands[0], rhs, mm.operands[2]))
        if str(ot.element_type) not in ("f32", "f64") or any(d < 0 for d in bt.shape) or \
                any(d < 0 for t in (at, ot) for d in t.shape[:-2] + t.shape[-1:]):
            return False
    batch = mm.name == "linalg.batch_matmul"
    m, n, k = ot.shape[-2], ot.shape[-1], at.shape[-1]
    # dynamic rows: types say ?, the new tensors take the row count of the left-hand side
    msize = f"  %c_m = arith.constant {len(at.shape) - 2} : index\n  %rows = tensor.dim %lhs, %c_m : {at}\n" \
        if m < 0 else ""
    m_value, m_sizes, m = ("%rows", "%rows", "?") if m < 0 else (m, "", m)
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
                f"tensor<{n // nt}x{nt}x{el}>\n  %e2 = tensor.empty({m_sizes}) : {out4}\n"
                f"  %i2 = linalg.generic {{tme.init, indexing_maps = [affine_map<(m, np, j) -> (np, j)>, "
                f"affine_map<(m, np, j) -> (m, np, j)>], iterator_types = [\"parallel\", \"parallel\", \"parallel\"]}}"
                f" ins(%b2 : tensor<{n // nt}x{nt}x{el}>) outs(%e2 : {out4}) {{\n"
                f"  ^bb0(%a: {el}, %o: {el}):\n    linalg.yield %a : {el}\n  }} -> {out4}")
    elif zero_init:
        init = _zero_init("i2", out4, el, m_sizes)
    else:
        init = (f"  %i2 = tensor.expand_shape %init [{'[0], ' if batch else ''}[{d}], [{d + 1}, {d + 2}]] "
                f"output_shape [{str(ot.shape[0]) + ', ' if batch else ''}{m_value}, {n // nt}, {nt}] : {ot} into "
                f"{out4}")
    text = MATMUL_PACKED.format(
        msize=msize, init=init, mac=MAC.format(el=el), at=at, bt=bt, ot=ot, it=init_value.type, el=el, bd=bd,
        bread=bread, rexp=", ".join(map(str, rexp)), rshape=", ".join(map(str, rshape)),
        rtype="x".join(map(str, rshape)), bs=bs, bexp="[0], " if batch else "",
        par='"parallel", ' if batch else "", np=n // nt, nt=nt, k=k, m=m, d=d, d1=d + 1, d2=d + 2,
        pdims="j, k" if w is not None else "k, j")
    _replace_with_call(module, mm, text, "tme_mm", [mm.operands[0], rhs, init_value], ot, "pack_rhs")
    return True


def fold_transposed_rhs(module) -> bool:
    """Replace the module's matmul of (a, transpose(w)) by MATMUL_T on (a, w), inlined."""
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
{vectorize}""" + TAIL


# PACKED's register tile stepped along k and vectorized, for static rows (dynamic rows: base._vectorize's peel).
PACKED_VECTORIZE = """  {fill_vec}
  %t2, %lk = transform.structured.tile_using_for %t tile_sizes [{ktile}]
    : (!transform.any_op) -> (!transform.any_op, !transform.any_op)
  transform.structured.vectorize %t2 : !transform.any_op
"""


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
    packed (a transposed right-hand side's in 16 x 16 vector blocks) and register-tiled. Dynamic rows (-1 in
    `shape`): planned as STAND_IN_ROWS, never split across threads, and the register tiles' row loop peeled."""
    batch, m, n = list(shape[:-2]), shape[-2], shape[-1]
    rows_dynamic = m < 0
    m = STAND_IN_ROWS if rows_dynamic else m
    mt, nt = _register_tile(m, n)
    nb = len(batch)
    pw = n if fill and k <= WHOLE_PACK_K and n % 16 == 0 else nt            # panel width
    split = [0] * (nb + 4)                   # (batch..., m, np, j, k)
    if threads > 1 and pw == n and batch and batch[0] % threads == 0:
        split[0] = threads
    elif threads > 1 and (n // pw) % threads == 0:
        split[nb + 1] = threads
    elif threads > 1 and m % (threads * mt) == 0 and not rows_dynamic:
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
    ktile = ", ".join(["0"] * (nb + 3) + ["1"])
    if rows_dynamic:     # the row loop (%l#nb) peeled; a partial tile masked at the full tile's sizes
        vectorize = _vectorize(ktile, fill_vec, ([nb], 'ops{["linalg.generic"]} attributes{tme.gemm}',
                                                 [1] * nb + [mt, 1, nt]), fill="attributes{tme.init}")
    else:
        vectorize = PACKED_VECTORIZE.format(fill_vec=fill_vec, ktile=ktile)
    script = PACKED.format(forall=forall, panel=", ".join(map(str, [0] * nb + [0, 1, 0, 0])), pack_vec=pack_vec,
                          register="fuse" if fill_tiles else "tile_using_for", vectorize=vectorize,
                          tiles=", ".join(map(str, [1] * nb + [mt, 0, nt])), nloops=nb + 2,
                          handles=", !transform.any_op" * (nb + 2))
    return Schedule("matmul-packed", script, threads if any(split) else 1, pw)


def _dot_schedule(shape, threads: int) -> Schedule:
    """matmul-dot: few rows of a transposed right-hand side, as dot products; threads split batch, columns or rows."""
    batch, m, n = shape[:-2], shape[-2], shape[-1]
    mt, nt, kv = _dot_tile(m, n)
    split = [0] * len(shape)
    for dim in ([0] if batch else []) + [len(shape) - 1, len(shape) - 2]:
        if threads > 1 and shape[dim] % threads == 0 and (shape[dim] // threads) % \
                {len(shape) - 1: nt, len(shape) - 2: mt}.get(dim, 1) == 0:
            split[dim] = threads
            break
    return Schedule("matmul-dot", _dot_script("", [1] * len(batch) + [mt, nt], split, kv),
                    threads if any(split) else 1)


def plan(op, shape, threads: int):
    """The schedule for a linalg.matmul / batch_matmul of static `shape`, or None."""
    if len(op.operands) != 3:
        return None
    k = ir.RankedTensorType(op.operands[0].type).shape[-1]
    if _transposed_rhs(op) is not None:
        if shape[-2] > DOT_ROWS or k % 16:
            return _packed_schedule(shape, k, threads, fill=_filled_init(op))
        return _dot_schedule(shape, threads)
    tiles, split, panel, t = _gemm_plan(shape[:-2], shape[-2], shape[-1], k, threads)
    return Schedule("matmul", _script(MATMUL_HEAD.format(op=op.name), "mm", tiles, split, panel, _filled_init(op)), t)


# What a dynamic row count is planned as: a multiple of every register tile's rows (8, 16); columns likewise (32).
# Threads never split a dynamic dim (each thread's share would vary): the batch or the static dim instead.
STAND_IN_ROWS = 8 * 997
STAND_IN_COLUMNS = 32 * 997


def dynamic_plan(op, shape, threads: int, hint=None):
    """The schedule for a float linalg.matmul / batch_matmul with dynamic sizes (`shape`: the result's, -1 where
    dynamic): batch, rows, columns and K may vary. The static "matmul" family's plan for stand-in sizes, with the
    row loop, the column loop or both peeled (base.PEELED, PEELED_2D) where they vary: the full tiles keep the
    static kernel's vector code. A transposed right-hand side (a linear layer's weight) with static N and K and only
    the rows dynamic is packed as a static one is (_packed_schedule); in any other dynamic form its transpose runs
    as a loop of its own."""
    if len(op.operands) != 3:
        return None
    at = ir.RankedTensorType(op.operands[0].type)
    if str(at.element_type) not in ("f32", "f64"):
        return None
    if _transposed_rhs(op) is not None and shape[-2] < 0 and all(d >= 0 for d in shape[:-2] + shape[-1:]) and \
            at.shape[-1] >= 0 and at.shape[-1] % 16 == 0:
        # a linear layer over a varying number of rows: packed as the static kernel is (M = 512, N = 1024, K = 256:
        # 6.0 ms unpacked, its transpose a loop of its own, against 3.3 static)
        return _packed_schedule(shape, at.shape[-1], threads, fill=_filled_init(op))
    k = at.shape[-1] if at.shape[-1] >= 0 else 256
    r = len(shape)
    stand = [d if d >= 0 else STAND_IN_ROWS if i == r - 2 else STAND_IN_COLUMNS if i == r - 1 else 1
             for i, d in enumerate(shape)]
    tiles, split, panel, t = _gemm_plan(stand[:-2], stand[-2], stand[-1], k, threads)
    if any(c and shape[i] < 0 for i, c in enumerate(split)):
        split, t = [0] * len(split), 1
        if r == 3 and shape[0] > 0 and shape[0] % threads == 0 and threads > 1:
            split[0], t = threads, threads
    if shape[-1] < 0:
        panel = 0
    dims = tuple(d for d in (-2, -1) if shape[d] < 0)
    peel = f'ops{{["{op.name}"]}}' if dims else None
    return Schedule("matmul", _script(MATMUL_HEAD.format(op=op.name), "mm", tiles, split, panel, _filled_init(op),
                                      peel=peel, peel_dims=dims or (-2,)), t)


def _packed(module, s: Schedule) -> str:
    if not pack_rhs(module, s.panel_rows):
        raise CompileFailure("llvm", "schedule pack_rhs: no float matmul with static shapes")
    return s.script


def _folded(module, s: Schedule) -> str:
    if not fold_transposed_rhs(module):
        raise CompileFailure("llvm", "schedule fold_transposed_rhs: no matmul of a transposed input")
    return s.script


PLANS = {"linalg.matmul": plan, "linalg.batch_matmul": plan}
DYNAMIC_PLANS = {"linalg.matmul": dynamic_plan, "linalg.batch_matmul": dynamic_plan}
FAMILIES = {"matmul": lambda module, s: s.script, "matmul-packed": _packed, "matmul-dot": _folded}
