"""Serving: the solver model that Triton Inference Server runs from a repository (`hrm-edge serve` runs
one on the nvidia-pytriton wheel's server), one continuous ACT loop behind it (`hrm_edge.serving.service`)."""
