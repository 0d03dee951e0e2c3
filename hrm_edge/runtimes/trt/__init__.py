"""TensorRT backend: `check` (static graph check), `builder` (engines), `runner` (no torch)."""
