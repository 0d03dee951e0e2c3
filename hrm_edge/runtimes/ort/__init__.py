"""ONNX Runtime backend: `loader` builds sessions, `runner` drives the graphs (no torch)."""
