"""Tile arithmetic: register tiles by vector ISA, cache-sized panels, thread splits (no IR here)."""
from __future__ import annotations

from typing import Optional

from ...host import avx512


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
