"""OpenVINO runtime for bundle graphs (optional extra `[openvino]`; numpy + openvino only, never torch).

`loader.compile_graph` is the one place a graph is compiled; `runner.OvSegmentRunner` drives a segment
graph under the shared ACT loop."""
