"""Serving: the solver model that Triton Inference Server (repository) and PyTriton (`hrm-edge serve`)
expose, one continuous ACT loop behind both (`hrm_edge.serving.service`)."""
