"""The worker side: one call -> fx graph -> Torch MLIR -> Linalg -> LLVM -> a qualified kernel (imports torch_mlir)."""
