"""A torch.fx graph -> a Torch-dialect MLIR module, by torch-mlir's FX importer."""
from __future__ import annotations

import torch.fx as fx
from torch_mlir.extras.fx_importer import FxImporter

from ..errors import CompileFailure


def import_graph(ctx, graph: fx.Graph):
    """The Torch-dialect module for a graph."""
    try:
        imp = FxImporter(context=ctx)
        imp.import_stateless_graph(graph, func_name="main")
    except Exception as e:
        raise CompileFailure("import", f"{type(e).__name__}: {e}") from None
    return imp.module
