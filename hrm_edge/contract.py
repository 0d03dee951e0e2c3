"""The graph contract: the tensor names, dtypes and halting modes that every hrm-edge graph,
runtime and bundle agrees on. Standard library only; the one place these names are defined.

Shapes (B = batch, the only dynamic dimension, named `BATCH`; S = sequence length, P = S plus
the puzzle-embedding rows, D = hidden size, V = vocabulary, K = segments per unrolled call):

- segment: tokens int64 [B,S], puzzle_ids int64 [B], z_H, z_L float32 [B,P,D]
  -> z_H_out, z_L_out float32 [B,P,D], logits float32 [B,S,V], q_halt, q_continue float32 [B].
  The "x" variant takes x float32 [B,P,D] (the input embedding) instead of tokens/puzzle_ids,
  produced once per batch by the embed graph (tokens, puzzle_ids -> x).
- unrolled: the segment inputs plus halted bool [B] -> z_H_out, z_L_out, logits [B,S,V] of the
  last segment, q_halt, q_continue float32 [K,B], preds int64 [K,B,S].
- act_loop: tokens, puzzle_ids, max_steps int64 [], halt_mode int64 [] (`HALT_MODES`),
  threshold float32 [] (a logit) -> preds int64 [B,S], steps int64 [B], q_halt, q_continue [B].
"""

from __future__ import annotations

BATCH = "batch"

SEGMENT_INPUTS = ("tokens", "puzzle_ids", "z_H", "z_L")
SEGMENT_X_INPUTS = ("x", "z_H", "z_L")
SEGMENT_OUTPUTS = ("z_H_out", "z_L_out", "logits", "q_halt", "q_continue")
EMBED_INPUTS = ("tokens", "puzzle_ids")
EMBED_OUTPUTS = ("x",)
UNROLLED_OUTPUTS = (*SEGMENT_OUTPUTS, "preds")
LOOP_INPUTS = ("tokens", "puzzle_ids", "max_steps", "halt_mode", "threshold")
LOOP_OUTPUTS = ("preds", "steps", "q_halt", "q_continue")

# The act_loop graph's halt_mode input: 0 runs max_steps segments, 1 halts when
# q_halt > q_continue, 2 halts when q_halt >= threshold (a logit).
HALT_MODES = {"fixed": 0, "q": 1, "threshold": 2}

# Graph kinds a bundle holds, and the precisions a graph can have.
GRAPH_KINDS = ("segment", "unrolled", "act_loop", "embed")
PRECISIONS = ("fp32", "fp16", "int8")
# What an int8 graph was quantized for (its manifest `target`).
INT8_TARGETS = ("cpu", "tensorrt")

# ONNX Runtime's type strings of the float tensors a graph may carry (carry and logits).
ORT_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}

# Prefix of the metadata keys the exporter writes into every graph.
META_PREFIX = "hrm_edge."
