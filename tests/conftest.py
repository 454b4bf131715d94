import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402


@pytest.fixture
def ctx():
    """An MLIR context with the Torch dialect, for tests of the worker-side stages."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    c = ir.Context()
    torch_d.register_dialect(c)
    return c
