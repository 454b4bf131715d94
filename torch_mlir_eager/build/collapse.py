"""Loop dims collapsed: a dynamic generic's runs of dims that every operand reads contiguously become one loop."""
from __future__ import annotations

import math

from torch_mlir import ir
from torch_mlir.dialects import arith as arith_d, linalg as linalg_d, tensor as tensor_d

from .passes import run
from .rewrites import find_ops


def _dim_groups(op):
    """The loop dims of a linalg.generic (on tensors, no linalg.index) as runs to collapse into one dim each, or
    None: a run is consecutive loop dims of one iterator type, at least one of them dynamic, that every operand
    either indexes at consecutive positions in the same order or does not index at all."""
    if op.name != "linalg.generic" or len(op.regions[0].blocks) != 1 or \
            any(o.operation.name == "linalg.index" for o in op.regions[0].blocks[0].operations):
        return None
    its = [str(t) for t in op.attributes["iterator_types"]]
    maps = [ir.AffineMapAttr(m).value for m in op.attributes["indexing_maps"]]
    types = [v.type for v in op.operands]
    if not all(isinstance(t, ir.RankedTensorType) for t in map(ir.Type.maybe_downcast, types)) or \
            len(maps) != len(types):
        return None
    where = []                  # per operand: loop dim -> result position
    for mp in maps:
        pos = {}
        for i, e in enumerate(mp.results):
            if isinstance(e, ir.AffineDimExpr):
                if e.position in pos:           # a diagonal (d, d): its two tensor dims are not one run
                    return None
                pos[e.position] = i
            elif not isinstance(e, ir.AffineConstantExpr):
                return None
        where.append(pos)
    dynamic = [False] * len(its)
    for v, pos in zip(op.operands, where):
        shape = ir.RankedTensorType(v.type).shape
        for d, i in pos.items():
            dynamic[d] = dynamic[d] or shape[i] < 0

    def joins(d):           # loop dims d and d + 1 may be one dim
        return its[d] == its[d + 1] and all((d in p) == (d + 1 in p) and (d not in p or p[d + 1] == p[d] + 1)
                                            for p in where)
    groups, run = [], [0]
    for d in range(len(its) - 1):
        if joins(d):
            run.append(d + 1)
        else:
            groups.append(run)
            run = [d + 1]
    groups.append(run)
    if all(len(g) == 1 or not any(dynamic[d] for d in g) for g in groups):
        return None
    # runs without a dynamic dim stay as they are (static shapes keep their own loops)
    out = []
    for g in groups:
        out += [g] if any(dynamic[d] for d in g) else [[d] for d in g]
    return out


def dynamic_dims(module) -> int:
    """Each linalg.generic whose loop dims include runs that can be one dim (`_dim_groups`: a dynamic image's
    height and width, read contiguously by every operand that reads them) is rewritten over the collapsed
    operands (tensor.collapse_shape) with one loop per run, and its results expanded back. A reduction over a
    dynamic 7x7 (mean, batch norm's statistics) or a per-channel op over it then runs one loop of 49, which
    vectorizes, instead of a nest whose inner loop of 7 is all remainder. Returns how many generics changed."""
    with module.context:
        found = [(op, _dim_groups(op)) for op in find_ops(module, lambda op: op.name == "linalg.generic")]
    ops = [(op, groups) for op, groups in found if groups is not None]
    with module.context, ir.Location.unknown():
        for op, groups in ops:
            new_dim = {d: i for i, g in enumerate(groups) for d in g}
            maps = [ir.AffineMapAttr(m).value for m in op.attributes["indexing_maps"]]
            n_out = len(op.results)
            n_in = len(op.operands) - n_out
            new_operands, new_maps, reassocs = [], [], []
            with ir.InsertionPoint(op):
                for v, mp in zip(op.operands, maps):
                    t = ir.RankedTensorType(v.type)
                    reassoc, exprs, last = [], [], None
                    for i, e in enumerate(mp.results):
                        g = new_dim[e.position] if isinstance(e, ir.AffineDimExpr) else None
                        if g is not None and g == last:
                            reassoc[-1].append(i)
                            continue
                        reassoc.append([i])
                        exprs.append(ir.AffineDimExpr.get(g) if g is not None else e)
                        last = g
                    new_maps.append(ir.AffineMap.get(len(groups), 0, exprs))
                    reassocs.append(reassoc)
                    if len(reassoc) == len(t.shape):
                        new_operands.append(v)
                        continue
                    dyn = ir.ShapedType.get_dynamic_size()
                    shape = [dyn if any(t.shape[i] < 0 for i in r) else math.prod(t.shape[i] for i in r)
                             for r in reassoc]
                    ct = ir.RankedTensorType.get(shape, t.element_type)
                    new_operands.append(tensor_d.CollapseShapeOp(ct, v, _reassociation(reassoc)).result)
                new = linalg_d.GenericOp([v.type for v in new_operands[n_in:]], new_operands[:n_in],
                                         new_operands[n_in:], ir.ArrayAttr.get([ir.AffineMapAttr.get(m)
                                                                                 for m in new_maps]),
                                         ir.ArrayAttr.get([op.attributes["iterator_types"][g[0]] for g in groups]))
                for name in list(op.attributes):
                    name = getattr(name, "name", name)
                    if name not in ("indexing_maps", "iterator_types", "operandSegmentSizes"):
                        new.operation.attributes[name] = op.attributes[name]
                old_block = op.regions[0].blocks[0]
                block = new.regions[0].blocks.append(*[a.type for a in old_block.arguments])
                for a, b in zip(old_block.arguments, block.arguments):
                    a.replace_all_uses_with(b)
                for o in list(old_block.operations):
                    block.append(o)
                results = []
                for r, init, reassoc in zip(new.results, op.operands[n_in:], reassocs[n_in:]):
                    t = ir.RankedTensorType(init.type)
                    if len(reassoc) == len(t.shape):
                        results.append(r)
                        continue
                    sizes = [tensor_d.DimOp(init, _index(i)).result for i, d in enumerate(t.shape) if d < 0]
                    results.append(tensor_d.ExpandShapeOp(t, r, _reassociation(reassoc), sizes,
                                                          list(t.shape)).result)
            for old, r in zip(op.results, results):
                old.replace_all_uses_with(r)
            op.erase()
    if ops:
        run(module, ["canonicalize"], "llvm")
    return len(ops)


def _reassociation(groups):
    i64 = ir.IntegerType.get_signless(64)
    return ir.ArrayAttr.get([ir.ArrayAttr.get([ir.IntegerAttr.get(i64, i) for i in g]) for g in groups])


def _index(i: int):
    return arith_d.ConstantOp(ir.IndexType.get(), i).result
