"""hrm-edge: deploy Hierarchical Reasoning Model checkpoints to the edge."""
__version__ = "0.1.0"
