"""Post-training INT8 quantization: ACT-aware calibration, the mixed-precision search, reports."""
