"""PyTorch to ONNX: the graphs, their CPU fusion, and the bundle writer (needs torch)."""
