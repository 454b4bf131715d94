import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# Kernels kept on disk go to a directory of this run's own (read when torch_mlir_eager is imported): no test sees
# kernels from an earlier run, or leaves any in the user's cache.
if "TORCH_MLIR_EAGER_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    _cache_dir = tempfile.mkdtemp(prefix="tme-test-cache-")
    os.environ["TORCH_MLIR_EAGER_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, True)


import pytest  # noqa: E402


@pytest.fixture
def ctx():
    """An MLIR context with the Torch dialect, for tests of the worker-side stages."""
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    c = ir.Context()
    torch_d.register_dialect(c)
    return c
