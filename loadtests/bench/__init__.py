"""Benchmark harness: the ONNX Runtime floor, maskserve and the Python reference server."""
