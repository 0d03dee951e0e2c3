"""Torch-free backends behind one `SegmentRunner` contract (`hrm_edge.act`): ONNX Runtime and
TensorRT, and `solver`, which runs a bundle graph on either. The PyTorch reference runner is
`hrm_edge.model.runner`."""
