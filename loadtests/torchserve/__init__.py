"""TorchServe serving a model directory's PyTorch checkpoint (the benchmark's TorchServe row)."""
