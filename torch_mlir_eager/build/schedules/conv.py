"""The conv2d families: im2col + GEMM by column panels (conv2d-panels), or as dot products (conv2d-dot)."""
from __future__ import annotations

from torch_mlir import ir

from ...errors import CompileFailure
from ..rewrites import find_ops
from .base import (GEMM_MATCH, MAC, NO_FORALL, Schedule, _dot_script, _filled_init, _init_into, _replace_with_call,
                   _script, _zero_init)
from ...host import avx512
from .tiles import CONV_TILES_AVX512, PANEL_BYTES, _conv_panel, _dot_tile, _register_tile


# The dot form's im2col copy split across threads (by output rows).
COL_FORALL = ("%col_t, %col_forall = transform.structured.tile_using_forall %col num_threads [{counts}]"
              " : (!transform.any_op) -> (!transform.any_op, !transform.any_op)")


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


def _ragged_avx2(nt: int) -> bool:
    """An outer-product tile width that is not whole AVX2 vectors (8 floats) on a CPU without AVX-512: LLVM splits
    the rest into narrower pieces (14 = 8 + 4 + 2), which ran 256x14x14 3x3 at 25-31 ms (native 2.7; AVX-512 masks
    one 16-wide vector instead). Such convs take the dot-product form, which vectorizes along k."""
    return not avx512() and nt % 8 != 0


COL_HEAD = """
  %col = transform.structured.match ops{{["linalg.generic"]}} attributes{{tme.im2col}} in %root
    : (!transform.any_op) -> !transform.any_op
  {col_forall}"""


def _conv_attrs(conv) -> tuple:
    """(input, weight and output types, strides, dilations) of a linalg.conv_2d_nchw_fchw (in its context)."""
    xt, wt, ot = (ir.RankedTensorType(v.type) for v in list(conv.operands)[:3])
    strides = [int(v) for v in ir.DenseIntElementsAttr(conv.attributes["strides"])]
    dil = [int(v) for v in ir.DenseIntElementsAttr(conv.attributes["dilations"])]
    return xt, wt, ot, strides, dil


def _panels_head(fill: bool) -> str:
    """The GEMM match of the conv-as-GEMM scripts; with `fill`, the zero init fused into the panels' forall first."""
    if not fill:
        return GEMM_MATCH
    return ("\n  %conv_panels = transform.structured.match ops{[\"scf.forall\"]} in %root : (!transform.any_op) -> "
            "!transform.any_op\n  " + _init_into("%conv_panels", "attributes{tme.init}") + GEMM_MATCH)


def conv_to_gemm(module, panel_rows: int = 0, dot: bool = False) -> bool:
    """Replace the module's one linalg.conv_2d_nchw_fchw (float) by a call to CONV_AS_PANELS (column panels of
    `panel_rows` output rows; 0: one panel) or CONV_AS_DOT, inlined. False when there is no such conv."""
    convs = find_ops(module, lambda op: op.name == "linalg.conv_2d_nchw_fchw")
    if len(convs) != 1:
        return False
    conv = convs[0]
    with module.context:
        xt, wt, ot, strides, dil = _conv_attrs(conv)
    if str(ot.element_type) not in ("f32", "f64") or any(d < 0 for t in (xt, wt, ot) for d in t.shape):
        return False
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


# The head of both dynamic conv forms: the output's dynamic OH and OW (and P = OH * OW), the weight as F x K, the
# GEMM's accumulator %i1 (F x P).
CONV_DYNAMIC_HEAD = """
func.func private @tme_conv(%x: {xt}, %w: {wt}, %init: {ot}) -> {ot} {{
  %c2 = arith.constant 2 : index
  %c3 = arith.constant 3 : index
  %oh = tensor.dim %init, %c2 : {ot}
  %ow = tensor.dim %init, %c3 : {ot}
  %p = arith.muli %oh, %ow : index
  %w2 = tensor.collapse_shape %w [[0], [1, 2, 3]] : {wt} into tensor<{f}x{k}x{el}>
{init}
"""


# CONV_AS_PANELS for dynamic image sizes (H, W and so OH, OW are `?`; batch, channels and the kernel static): one
# output row per panel (the forall over OH, split across threads), OW columns each; the register tiles' column
# loop is peeled (base.PEELED): full tiles of the static vector code, one masked partial tile per row.
CONV_ROWS_DYNAMIC = CONV_DYNAMIC_HEAD + """  %xw = tensor.dim %x, %c3 : {xt}
  %r = scf.forall (%pb) in (%oh) shared_outs(%o = %i1) -> (tensor<{n}x{f}x?x{el}>) {{
    %row = affine.apply affine_map<(d) -> (d * {sh})>(%pb)
    %c0 = affine.apply affine_map<(d)[s] -> (d * s)>(%pb)[%ow]
    %xs = tensor.extract_slice %x[0, 0, %row, 0] [{n}, {c}, {xh}, %xw] [1, 1, 1, 1]
      : {xt} to tensor<{n}x{c}x{xh}x?x{el}>
    %e = tensor.empty(%ow) : tensor<{n}x{c}x{kh}x{kw}x1x?x{el}>
    %col = linalg.generic {{tme.im2col,
        indexing_maps = [affine_map<(n, c, kh, kw, rr, ow) -> (n, c, rr * {sh} + kh * {dh}, ow * {sw} + kw * {dw})>,
                         affine_map<(n, c, kh, kw, rr, ow) -> (n, c, kh, kw, rr, ow)>],
        iterator_types = ["parallel", "parallel", "parallel", "parallel", "parallel", "parallel"]}}
        ins(%xs : tensor<{n}x{c}x{xh}x?x{el}>) outs(%e : tensor<{n}x{c}x{kh}x{kw}x1x?x{el}>) {{
      ^bb0(%a: {el}, %b: {el}):
        linalg.yield %a : {el}
    }} -> tensor<{n}x{c}x{kh}x{kw}x1x?x{el}>
    %colm = tensor.collapse_shape %col [[0], [1, 2, 3], [4, 5]]
      : tensor<{n}x{c}x{kh}x{kw}x1x?x{el}> into tensor<{n}x{k}x?x{el}>
    %os = tensor.extract_slice %o[0, 0, %c0] [{n}, {f}, %ow] [1, 1, 1]
      : tensor<{n}x{f}x?x{el}> to tensor<{n}x{f}x?x{el}>
    %g = linalg.generic {{tme.gemm,
        indexing_maps = [affine_map<(n, f, j, k) -> (f, k)>, affine_map<(n, f, j, k) -> (n, k, j)>,
                         affine_map<(n, f, j, k) -> (n, f, j)>],
        iterator_types = ["parallel", "parallel", "parallel", "reduction"]}}
        ins(%w2, %colm : tensor<{f}x{k}x{el}>, tensor<{n}x{k}x?x{el}>) outs(%os : tensor<{n}x{f}x?x{el}>) {{
{mac}
    }} -> tensor<{n}x{f}x?x{el}>
    scf.forall.in_parallel {{
      tensor.parallel_insert_slice %g into %o[0, 0, %c0] [{n}, {f}, %ow] [1, 1, 1]
        : tensor<{n}x{f}x?x{el}> into tensor<{n}x{f}x?x{el}>
    }}
  }}
  %r2 = tensor.expand_shape %r [[0], [1], [2, 3]] output_shape [{n}, {f}, %oh, %ow]
    : tensor<{n}x{f}x?x{el}> into {ot}
  return %r2 : {ot}
}}
"""


# Small outputs (`WHOLE_BYTES`): the im2col of the whole image first, then one GEMM over all OH*OW columns, its
# column loop peeled: one output row per panel streams the whole weight once per row (256x14x14 3x3: 2.4 MB of
# weight 14 times), and a row of 7 or 14 columns is mostly partial tiles.
CONV_WHOLE_DYNAMIC = CONV_DYNAMIC_HEAD + """  %e = tensor.empty(%oh, %ow) : tensor<{n}x{c}x{kh}x{kw}x?x?x{el}>
  %col = linalg.generic {{tme.im2col,
      indexing_maps = [affine_map<(n, c, kh, kw, oh, ow) -> (n, c, oh * {sh} + kh * {dh}, ow * {sw} + kw * {dw})>,
                       affine_map<(n, c, kh, kw, oh, ow) -> (n, c, kh, kw, oh, ow)>],
      iterator_types = ["parallel", "parallel", "parallel", "parallel", "parallel", "parallel"]}}
      ins(%x : {xt}) outs(%e : tensor<{n}x{c}x{kh}x{kw}x?x?x{el}>) {{
    ^bb0(%a: {el}, %b: {el}):
      linalg.yield %a : {el}
  }} -> tensor<{n}x{c}x{kh}x{kw}x?x?x{el}>
  %colm = tensor.collapse_shape %col [[0], [1, 2, 3], [4, 5]]
    : tensor<{n}x{c}x{kh}x{kw}x?x?x{el}> into tensor<{n}x{k}x?x{el}>
  %g = linalg.generic {{tme.gemm,
      indexing_maps = [affine_map<(n, f, j, k) -> (f, k)>, affine_map<(n, f, j, k) -> (n, k, j)>,
                       affine_map<(n, f, j, k) -> (n, f, j)>],
      iterator_types = ["parallel", "parallel", "parallel", "reduction"]}}
      ins(%w2, %colm : tensor<{f}x{k}x{el}>, tensor<{n}x{k}x?x{el}>) outs(%i1 : tensor<{n}x{f}x?x{el}>) {{
{mac}
  }} -> tensor<{n}x{f}x?x{el}>
  %r2 = tensor.expand_shape %g [[0], [1], [2, 3]] output_shape [{n}, {f}, %oh, %ow]
    : tensor<{n}x{f}x?x{el}> into {ot}
  return %r2 : {ot}
}}
"""


# The whole image's im2col may take this many bytes (at the hint's sizes) for CONV_WHOLE_DYNAMIC.
WHOLE_BYTES = 2 << 20


# CONV_WHOLE_DYNAMIC's column panels: K x width of the im2col, whose rows lie OH*OW apart (every k step of a tile
# a new cache line): at most this many bytes. PANEL_BYTES (512 KB: 112 columns at K = 1152) took 1.40x the static
# kernel on 128x28x28 3x3 s2 (AVX2, one thread, best of 40), 16 columns 1.03-1.11x; 256x14x14 3x3 1.15-1.28x ->
# 1.07-1.17x, 512x7x7 3x3 1.20 -> 0.97-1.16.
WHOLE_PANEL_BYTES = 128 * 1024


def _dynamic_conv(module, s: Schedule) -> str:
    """Replace the module's one float linalg.conv_2d_nchw_fchw whose only dynamic sizes are spatial by
    CONV_ROWS_DYNAMIC, inlined."""
    convs = find_ops(module, lambda op: op.name == "linalg.conv_2d_nchw_fchw")
    if len(convs) != 1:
        raise CompileFailure("llvm", "schedule conv2d-rows-dynamic: not one conv")
    conv = convs[0]
    with module.context:
        xt, wt, ot, strides, dil = _conv_attrs(conv)
    n, f = ot.shape[:2]
    _, c, kh, kw = wt.shape
    el = ot.element_type
    if _filled_init(conv, zero=True):
        init = _zero_init("i1", f"tensor<{n}x{f}x?x{el}>", el, sizes="%p")
    else:
        init = f"  %i1 = tensor.collapse_shape %init [[0], [1], [2, 3]] : {ot} into tensor<{n}x{f}x?x{el}>"
    text = (CONV_WHOLE_DYNAMIC if s.panel_rows < 0 else CONV_ROWS_DYNAMIC).format(
        init=init, mac=MAC.format(el=el), xt=xt, wt=wt, ot=ot, el=el, n=n, c=c, kh=kh, kw=kw, f=f, k=c * kh * kw,
        sh=strides[0], sw=strides[1], dh=dil[0], dw=dil[1], xh=(kh - 1) * dil[0] + 1)
    _replace_with_call(module, conv, text, "tme_conv", list(conv.operands)[:3], ot, "conv2d-rows-dynamic")
    return s.script


# What a dynamic output width is planned as without a hint: a multiple of every register tile's columns.
STAND_IN_COLUMNS = 32 * 7


def dynamic_plan(op, shape, threads: int, hint=None):
    """conv2d-rows-dynamic for a float linalg.conv_2d_nchw_fchw with dynamic spatial sizes only, else None: the
    whole image at once (CONV_WHOLE_DYNAMIC, panel_rows -1) where its im2col at the hint's sizes is small, else by
    output row (CONV_ROWS_DYNAMIC). The row form's register tile width: the ISA's widest, or for an output row
    narrower than that (`hint`: the call's output sizes), the row rounded up to whole vectors, so that the row is
    one tile and not one mostly masked one
    (AVX2, 512x7x7 3x3: a 16-wide tile computed 16 columns for every 7)."""
    xt, wt = (ir.RankedTensorType(v.type) for v in list(op.operands)[:2])
    if str(xt.element_type) not in ("f32", "f64") or any(d < 0 for d in list(shape[:2]) + list(xt.shape[:2]) +
                                                          list(wt.shape)):
        return None
    f = shape[1]
    tiles = CONV_TILES_AVX512 if avx512() else None
    mt, nt = _register_tile(f, STAND_IN_COLUMNS, tiles)
    if not avx512() and f % 4 == 0:
        # AVX2: 8 x 16 takes all 16 vector registers for accumulators, which the masked and peeled code spills
        # (256x14x14 3x3: 2.05x the static kernel with 8 x 16, 1.36x with 4 x 16)
        mt, nt = 4, 16
    fill = _filled_init(op, zero=True)
    peel = 'ops{["linalg.generic"]} attributes{tme.gemm}'
    k = wt.shape[1] * wt.shape[2] * wt.shape[3]
    if hint is not None and hint[0] * k * hint[2] * hint[3] * 4 <= WHOLE_BYTES:
        # the whole image at once: threads split the output channels; the columns in panels whose K x width slice
        # of the im2col stays in L2 (WHOLE_PANEL_BYTES) while every row tile passes over it
        split = threads if threads > 1 and f % (threads * mt) == 0 else 1
        pw = max(nt, WHOLE_PANEL_BYTES // (k * 4) // nt * nt)
        panel = pw if k * hint[2] * hint[3] * 4 > PANEL_BYTES else 0
        script = _script(GEMM_MATCH, "gemm", [1, mt, nt], [0, split, 0], panel=panel, fill=fill, peel=peel,
                         peel_dims=(2,))
        return Schedule("conv2d-rows-dynamic", script, split, -1)
    if hint is not None and hint[3] < nt:
        vec = 16 if avx512() else 8
        mt, nt = _register_tile(f, -(-hint[3] // vec) * vec, tiles)
    script = _script(_panels_head(fill), "gemm", [1, mt, nt], [0, 0, 0], fill=fill, peel=peel, peel_dims=(2,))
    return Schedule("conv2d-rows-dynamic", script, threads)


def _conv_schedule(shape, k: int, threads: int, fill: bool = False) -> Schedule:
    n, f, oh, ow = shape
    r, mt, nt = _conv_panel(f, oh, ow, k, threads)
    p = oh * ow
    if (nt < DOT_BELOW or _ragged_avx2(nt)) and k % 16 == 0:
        # Narrow: the dot-product form (vectors along k). Threads split the output channels.
        dmt, dnt, kv = _dot_tile(f // threads if f % threads == 0 else f, p)
        t = threads if f % (threads * dmt) == 0 else 1
        col = (COL_FORALL.format(counts=f"0, {threads}") if threads > 1 else
               NO_FORALL.format(out="col_t", src="col"))
        script = _dot_script(COL_HEAD.format(col_forall=col), [1, dmt, dnt], [0, t, 0], kv)
        return Schedule("conv2d-dot", script, threads)
    # The panels' forall (in the template) is what the threads share; the script register-tiles each panel's GEMM.
    # A zero init (a conv without bias) goes into the panels and then into the register tiles (REGISTER_TILE).
    return Schedule("conv2d-panels", _script(_panels_head(fill), "gemm", [1, mt, nt], [0, 0, 0], fill=fill),
                    threads if oh // r > 1 else 1, r)


def plan(op, shape, threads: int) -> Schedule:
    """The schedule for a linalg.conv_2d_nchw_fchw of static `shape`."""
    wshape = ir.RankedTensorType(op.operands[1].type).shape
    return _conv_schedule(shape, wshape[1] * wshape[2] * wshape[3], threads, _filled_init(op, zero=True))


def _as_gemm(dot: bool):
    def prepare(module, s: Schedule) -> str:
        if not conv_to_gemm(module, s.panel_rows, dot):
            raise CompileFailure("llvm", "schedule conv_to_gemm: no float NCHW conv with static shapes")
        return s.script
    return prepare


PLANS = {"linalg.conv_2d_nchw_fchw": plan}
DYNAMIC_PLANS = {"linalg.conv_2d_nchw_fchw": dynamic_plan}
FAMILIES = {"conv2d-panels": _as_gemm(False), "conv2d-dot": _as_gemm(True), "conv2d-rows-dynamic": _dynamic_conv}
