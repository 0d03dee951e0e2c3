"""Quantization-aware fine-tuning on a seeded sudoku-tiny checkpoint: a resumed run ends where an
uninterrupted one does, the run is recorded on the card, the training pool holds no calibration or
validation puzzle, and `export --int8 --qat-steps` gates the INT8 graph against the ORIGINAL checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hrm_edge.bundle import open_bundle
from hrm_edge.model.checkpoint import load_checkpoint
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.quant.qat import QatConfig, QatError, qat_spec, run_qat, site_absmax, smoothing
from hrm_edge.quant.quantize import qat_advice
from hrm_edge.train.data import SudokuPool
from tests.cli_helpers import one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = QatConfig(steps=4, batch_size=4, pool_size=12, checkpoint_every=2, warmup_steps=2, calib_batches=1)


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_ckpt, tmp_path):
    ck = load_checkpoint(tiny_ckpt)
    straight = run_qat(ck, tmp_path / "straight", CFG, progress=False)
    run_qat(load_checkpoint(tiny_ckpt), tmp_path / "split", QatConfig(**{**CFG.__dict__, "steps": 2}), progress=False)
    resumed = run_qat(load_checkpoint(tiny_ckpt), tmp_path / "split", CFG, resume=True, progress=False)
    assert straight.steps == resumed.steps == 4
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    original = ck.model.state_dict()
    assert any(not torch.equal(a[k], original[k]) for k in a)  # it did fine-tune


def test_a_finished_run_is_not_overwritten_without_resume(tiny_ckpt, tmp_path, capsys):
    args = ("qat", str(tiny_ckpt), "-o", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2", "--pool-size",
            "8", "--no-progress")
    assert run_cli(capsys, *args)[0] == 0
    assert "holds a QAT run already" in one_line_error(capsys, *args)
    with pytest.raises(QatError):
        run_qat(load_checkpoint(tiny_ckpt), tmp_path / "run", CFG, progress=False)


def test_the_card_records_steps_data_and_time(tiny_ckpt, tmp_path):
    result = run_qat(load_checkpoint(tiny_ckpt), tmp_path / "run", QatConfig(**{**CFG.__dict__, "steps": 2}),
                     progress=False)
    qat = load_checkpoint(result.checkpoint).card["qat"]
    assert qat["steps"] == 2 and qat["flavour"] == "cpu" and qat["minutes"] >= 0
    assert "calib/val puzzles removed" in qat["data"]
    assert qat["source_sha256"] == load_checkpoint(tiny_ckpt).provenance["sha256"]


def test_the_training_pool_holds_no_calibration_or_validation_puzzle(tiny_ckpt, tmp_path):
    run_qat(load_checkpoint(tiny_ckpt), tmp_path / "run", QatConfig(**{**CFG.__dict__, "steps": 1}), progress=False)
    pool = SudokuPool.load(tmp_path / "run" / "pool.npz")
    held_out = {bytes((p - 1).astype(np.int8)) for s in ("calib", "val")
                for p in load_puzzle_set(calib_data_dir("sudoku"), split=s).inputs}
    assert len(pool.puzzles) > 0 and not any(bytes(p) in held_out for p in pool.puzzles.astype(np.int8))


def test_tensorrt_sites_use_symmetric_int8_with_calibrated_scales(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt).model.float().eval()
    tokens = load_puzzle_set(calib_data_dir("sudoku"), split="calib").inputs[:4]
    absmax = site_absmax(model, tokens)
    smooth = smoothing(model, absmax, 0.85)
    spec = qat_spec("tensorrt", absmax, smooth)
    calls = model.config.H_cycles * model.config.L_cycles  # L-level calls per segment
    assert len(absmax["inner.L_level.layers.0.self_attn.qkv_proj"]) == calls
    site = next(s for s in spec if s.module == "inner.L_level.layers.0.self_attn.qkv_proj" and s.call == 1)
    assert site.act.kind == "static" and site.act.zero_point == 0 and site.act.levels == (-128, 127)
    assert site.act.scale == pytest.approx(float(absmax[site.module][1].max()) / 127)
    down = next(s for s in spec if s.module.endswith("mlp.down_proj"))
    assert down.smooth is not None and down.act.scale == pytest.approx(
        float((absmax[down.module][down.call] / down.smooth).max()) / 127)


def test_sites_with_row_scales_quantize_each_row_on_its_own(tiny_ckpt):
    model = load_checkpoint(tiny_ckpt).model.float().eval()
    absmax = site_absmax(model, load_puzzle_set(calib_data_dir("sudoku"), split="calib").inputs[:4])
    row, tensor = qat_spec("cpu", absmax, {}, "row"), qat_spec("cpu", absmax, {})
    assert {s.act.kind for s in row} == {"row"} and {s.act.kind for s in tensor} == {"dynamic"}
    assert {s.act.kind for s in qat_spec("tensorrt", absmax, {}, "row")} == {"row"}  # the same integers


def test_a_run_resumes_only_with_its_own_activation_scales(tiny_ckpt, tmp_path):
    run_qat(load_checkpoint(tiny_ckpt), tmp_path / "run", QatConfig(**{**CFG.__dict__, "steps": 1}), progress=False)
    with pytest.raises(QatError, match="tensor activation scales"):
        run_qat(load_checkpoint(tiny_ckpt), tmp_path / "run",
                QatConfig(**{**CFG.__dict__, "steps": 2, "activation_scale": "row"}), resume=True, progress=False)


def test_export_qat_steps_gates_against_the_original_checkpoint(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "bundle"
    code, _, err = run_cli(capsys, "export", str(tiny_ckpt), "-o", str(out), "--int8", "--qat-steps", "2",
                           "--calib-size", "16", "--no-fp16", "--golden", "4", "--no-search")
    assert "QAT (cpu): 2 step(s)" in err
    b = open_bundle(out)
    assert b.manifest.card["qat"]["steps"] == 2  # the bundle is the fine-tuned model, and says so
    report = json.loads((tmp_path / "bundle-parity" / "parity.json").read_text())
    assert report["checkpoint"] == str(tiny_ckpt)  # the gate's reference: the original checkpoint
    also = json.loads((tmp_path / "bundle-parity-vs-qat" / "parity.json").read_text())
    assert also["checkpoint"] == str(tmp_path / "bundle-qat" / "model.pt")
    [gate] = b.manifest.gates
    assert gate.precision == "int8" and gate.puzzles > 0
    assert code in (0, 1)  # an untrained model may fail the gate; the gate ran against the original either way


def test_qat_steps_without_int8_is_a_usage_error(tiny_ckpt, tmp_path, capsys):
    error = one_line_error(capsys, "export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--qat-steps", "2")
    assert "--qat-steps needs --int8" in error


def test_export_names_the_qat_command_beyond_a_tenth_of_the_sites_in_float():
    assert qat_advice(5, 50) is None  # 10%: plain post-training quantization stays the default
    line = qat_advice(36, 50)  # the HRM 6x6 demo's cpu search before QAT
    assert line.startswith("note: 36 of 50 INT8 sites compute in float") and "--qat-steps" in line
    assert "the gate still measures against CKPT" in line  # what QAT costs under the promise, said up front
    assert "\n" not in line
