"""`make gpu-test`: what hrm-edge can check on this machine's GPU, written to bench/results/gpu_test.json.

- No CUDA GPU: print what is missing, exit 0.
- PyTorch with CUDA (any torch >= 2.4; the project pins 2.13 only for the CPU wheel): the reference
  in fp32, bf16 and fp16 on the GPU, for the 27M Sudoku config (seeded, untrained) and for the
  demo checkpoint if present: logit max-abs error vs fp32 (one segment from the initial carry,
  and after the full fixed-step run), exact agreement of solutions with fp32 (and accuracy) on
  the calib_data val set, time per segment at batch 1 and 64.
- TensorRT (>= 10) and cuda-python as well: export the demo bundle if needed (`hrm-edge export`),
  `check-trt`, build FP16 (and INT8, where the bundle has a Q/DQ graph for TensorRT) engines,
  `verify --runtime trt` and `parity --runtime trt` on each, and time TensorRT segments against
  PyTorch CUDA eager (fp32, bf16) on the same puzzles. Without TensorRT it says exactly what is
  missing and still runs the PyTorch part.

Usage: python scripts/gpu_test.py [--checkpoint PATH] [--bundle DIR] [--out FILE] [--quick]
(`python scripts/gpu_test.py --cli ARGS...` runs the hrm-edge CLI with this checkout's modules.)
Exit code: 0 when every check that could run passed (missing GPU/TensorRT is not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = os.environ.get("HRM_EDGE_DEMO_CKPT", "checkpoints/sudoku6-demo/model.pt")
DEFAULT_BUNDLE = os.environ.get("HRM_EDGE_GPU_BUNDLE", "out/gpu_test/bundle")
DEFAULT_OUT = "bench/results/gpu_test.json"
DTYPES = ("float32", "bfloat16", "float16")


def bootstrap_imports() -> None:
    """Make `hrm_edge` importable from this checkout even where the package is not installed (the
    GPU machine's own torch, no virtualenv): every stage is a folder under hrm_edge/."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def run_cli(argv: list[str]) -> None:
    """The hrm-edge CLI, with `build` and `check-trt` added if the group does not have them yet."""
    bootstrap_imports()
    from hrm_edge.cli import trt as cli_trt
    from hrm_edge.cli.main import cli, main

    for command in (cli_trt.build, cli_trt.check_trt):
        if command.name not in cli.commands:
            cli.add_command(command)
    main(argv)


def cli_subprocess(args: list[str], timeout: float = 600) -> dict[str, Any]:
    """Run `hrm-edge ARGS` (through this script, so this checkout's modules are used)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", *args]
    print(f"$ hrm-edge {' '.join(args)}", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"args": args, "rc": None, "seconds": round(time.monotonic() - start, 1), "error": "timeout"}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    for line in tail:
        print(f"    {line}", flush=True)
    return {"args": args, "rc": proc.returncode, "seconds": round(time.monotonic() - start, 1), "output": tail}


# --- environment ---------------------------------------------------------------------------------------


def detect() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "missing": []}
    smi = shutil.which("nvidia-smi")
    env["nvidia_smi"] = None
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["nvidia_smi"] = f"failed: {exc}"
    else:
        env["missing"].append("nvidia-smi (no NVIDIA driver on PATH)")
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = props.name
            env["compute_capability"] = f"{props.major}.{props.minor}"
            env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        else:
            env["missing"].append(f"a CUDA device for torch {torch.__version__} (torch.cuda.is_available() is False)")
    except ImportError:
        env["torch"] = None
        env["cuda_available"] = False
        env["missing"].append("torch (pip install torch with CUDA)")
    try:
        import tensorrt as trt

        env["tensorrt"] = trt.__version__
    except ImportError as exc:
        env["tensorrt"] = None
        env["missing"].append(f"tensorrt (import failed: {exc}; install NVIDIA's tensorrt >= 10 wheel or JetPack)")
    cuda_python = None
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            importlib.import_module(mod)
            cuda_python = mod
            break
        except ImportError:
            continue
    env["cuda_python"] = cuda_python
    if cuda_python is None:
        env["missing"].append("cuda-python (pip install 'cuda-python>=12', the TensorRT runtime's CUDA API)")
    return env


# --- PyTorch on the GPU --------------------------------------------------------------------------------


def _val_set(task: str) -> Any:
    from hrm_edge.puzzles.datasets import load_puzzle_set

    return load_puzzle_set(ROOT / "calib_data" / task, split="val")


def _rows(tokens: Any, batch: int) -> Any:
    import numpy as np

    reps = -(-batch // len(tokens))
    return np.concatenate([tokens] * reps)[:batch]


def time_runner(runner: Any, tokens: Any, pids: Any, iters: int, warmup: int = 3) -> float:
    """Mean ms per `runner.step()` (one segment, q values back on the host) after `warmup` steps."""
    runner.start(tokens, pids)
    for _ in range(warmup):
        runner.step()
    start = time.perf_counter()
    for _ in range(iters):
        runner.step()
    return 1000 * (time.perf_counter() - start) / iters


def torch_precision_study(model: Any, pset: Any, label: str, quick: bool, device: str = "cuda") -> dict[str, Any]:
    import numpy as np
    import torch

    from hrm_edge.act import parse_policy, solve_in_batches
    from hrm_edge.model.runner import TorchSegmentRunner

    model = model.to(device).eval()
    cfg = model.config
    steps = cfg.halt_max_steps
    n = min(len(pset), 128 if quick else len(pset))
    tokens, pids, labels = pset.inputs[:n], pset.puzzle_ids[:n], pset.labels[:n] if pset.labels is not None else None
    probe = min(64, n)
    out: dict[str, Any] = {"model": label, "parameters": model.parameter_count(), "puzzles": n,
                           "policy": "fixed", "max_steps": steps, "dtypes": {}}
    ref_logits = ref_final = ref_pred = None
    fixed = parse_policy("fixed")
    for dtype in DTYPES:
        model.set_compute_dtype(dtype)
        runner = TorchSegmentRunner(model, device)
        entry: dict[str, Any] = {}
        with torch.inference_mode():
            runner.start(tokens[:probe], pids[:probe])
            runner.step()
            first = runner.logits(np.arange(probe))
            for _ in range(steps - 1):
                runner.step()
            final = runner.logits(np.arange(probe))
        res = solve_in_batches(runner, tokens, pids, fixed, steps, 64)
        if dtype == "float32":
            ref_logits, ref_final, ref_pred = first, final, res.predictions
        else:
            entry["logit_max_abs_err_segment1"] = float(np.abs(first - ref_logits).max())
            entry[f"logit_max_abs_err_segment{steps}"] = float(np.abs(final - ref_final).max())
            entry["exact_agreement_vs_fp32"] = float((res.predictions == ref_pred).all(axis=1).mean())
            entry["token_agreement_vs_fp32"] = float((res.predictions == ref_pred).mean())
        if labels is not None:
            entry["exact_accuracy"] = float((res.predictions == labels).all(axis=1).mean())
        entry["ms_per_segment"] = {}
        for batch in (1, 64):
            t = _rows(tokens, batch)
            entry["ms_per_segment"][str(batch)] = round(
                time_runner(runner, t, np.zeros(batch, np.int64), 10 if quick else 30), 3)
        out["dtypes"][dtype] = entry
        print(f"  {label} {dtype}: {json.dumps(entry)}", flush=True)
    model.set_compute_dtype("float32")
    torch.cuda.empty_cache()
    return out


# --- TensorRT ------------------------------------------------------------------------------------------


def tensorrt_study(env: dict[str, Any], ckpt: Path, bundle_dir: Path, quick: bool) -> dict[str, Any]:
    import numpy as np

    bootstrap_imports()
    from hrm_edge.bundle import open_bundle
    from hrm_edge.runtimes.trt.runner import TrtSegmentRunner, engine_dir_name, load_engine, version_tuple

    out: dict[str, Any] = {"steps": [], "engines": {}, "failures": []}

    def step(name: str, args: list[str], must_pass: bool = True) -> dict[str, Any]:
        res = cli_subprocess(args)
        res["name"] = name
        out["steps"].append(res)
        if must_pass and res.get("rc") != 0:
            out["failures"].append(f"{name}: rc {res.get('rc')}")
        return res

    if not (bundle_dir / "manifest.json").is_file():
        if not ckpt.exists():
            out["skipped"] = (f"no bundle at {bundle_dir} and no checkpoint at {ckpt} to export one from "
                              "(set HRM_EDGE_DEMO_CKPT or --checkpoint)")
            return out
        bundle_dir.parent.mkdir(parents=True, exist_ok=True)
        if step("export", ["export", str(ckpt), "-o", str(bundle_dir), "--force"])["rc"] != 0:
            return out
    bundle = open_bundle(bundle_dir)
    trt_mm = ".".join(str(v) for v in version_tuple(env["tensorrt"])[:2])
    step("check-trt", ["check-trt", str(bundle_dir), "--trt", trt_mm])
    precisions = ["fp16"]
    if any(g.kind == "segment" and g.precision == "int8" and g.target == "tensorrt" for g in bundle.graphs.values()):
        precisions.append("int8")
    else:
        out["int8"] = "skipped: the bundle has no int8 segment graph with target tensorrt"
    from hrm_edge.runtimes.trt.runner import current_environment

    engine_dir = bundle_dir / "engines" / engine_dir_name(current_environment())
    results_dir = ROOT / "bench" / "results"
    for precision in precisions:
        res = step(f"build {precision}", ["build", str(bundle_dir), "--precision", precision, "--batch", "1:64:64"])
        if res["rc"] != 0:
            continue
        sidecars = [json.loads(p.read_text()) for p in sorted(engine_dir.glob("*.engine.json"))]
        sidecar = next((s for s in sidecars if s.get("precision") == precision), None)
        if sidecar is None:
            out["failures"].append(f"build {precision}: no engine sidecar in {engine_dir}")
            continue
        engine = engine_dir / sidecar["engine"]
        graph = sidecar.get("bundle_graph")
        out["engines"][precision] = {k: sidecar.get(k) for k in ("engine", "bundle_graph", "tensorrt_version",
                                                                   "gpu_name", "compute_capability", "build_seconds",
                                                                   "engine_bytes", "batch")}
        step(f"verify {precision}", ["verify", str(bundle_dir), "--runtime", "trt", "--graph", graph,
                                     "--engine", str(engine)])
        parity_args = ["parity", str(bundle_dir), "--runtime", "trt", "--graph", graph, "--engine", str(engine),
                       "--out", str(results_dir / f"parity_trt_{precision}")]
        if quick:
            parity_args += ["--limit", "64"]
        step(f"parity {precision}", parity_args)
        try:  # time per segment: TensorRT, plain and with CUDA graphs
            h, l_init = bundle.carry_init()
            total_len = bundle.manifest.model.total_len
            pset = _val_set(bundle.task)
            timing = {}
            for graphs in (False, True):
                with TrtSegmentRunner(load_engine(engine), h, l_init, total_len, use_cuda_graph=graphs) as runner:
                    for batch in (1, 64):
                        t = _rows(pset.inputs, batch)
                        ms = time_runner(runner, t, np.zeros(batch, np.int64), 20 if quick else 100)
                        timing[f"{'cuda_graph' if graphs else 'plain'}_b{batch}"] = round(ms, 3)
            out["engines"][precision]["ms_per_segment"] = timing
            print(f"  TensorRT {precision}: {timing}", flush=True)
        except Exception as exc:
            out["failures"].append(f"timing {precision}: {type(exc).__name__}: {exc}")
    out["torch_eager_same_model"] = _torch_same_model(bundle, quick)
    return out


def _torch_same_model(bundle: Any, quick: bool) -> dict[str, Any]:
    """PyTorch CUDA eager time per segment of the bundle's source checkpoint (fp32, bf16)."""
    import numpy as np

    from hrm_edge.model.checkpoint import load_checkpoint
    from hrm_edge.model.runner import TorchSegmentRunner

    src = bundle.manifest.source_checkpoint.path if bundle.manifest.source_checkpoint else None
    if not src or not Path(src).exists():
        return {"skipped": f"source checkpoint {src!r} not found"}
    model = load_checkpoint(src, task=bundle.task).model.to("cuda").eval()
    pset = _val_set(bundle.task)
    timing = {}
    for dtype in ("float32", "bfloat16"):
        runner = TorchSegmentRunner(model.set_compute_dtype(dtype), "cuda")
        for batch in (1, 64):
            timing[f"{dtype}_b{batch}"] = round(
                time_runner(runner, _rows(pset.inputs, batch), np.zeros(batch, np.int64), 20 if quick else 100), 3)
    print(f"  torch eager (same checkpoint): {timing}", flush=True)
    return timing


# --- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=DEFAULT_CKPT, help="demo checkpoint (env HRM_EDGE_DEMO_CKPT)")
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle to build engines for (exported if missing)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="fewer puzzles and timing iterations")
    ap.add_argument("--preset", default="sudoku-27m", help="config of the seeded model (default sudoku-27m)")
    ap.add_argument("--device", default="cuda", help="torch device; 'cpu' dry-runs the PyTorch part without a GPU")
    args = ap.parse_args(argv)
    start = time.monotonic()
    ckpt, bundle = ROOT / args.checkpoint, ROOT / args.bundle
    env = detect()
    report: dict[str, Any] = {"environment": env, "failures": []}
    print(f"GPU test: torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), TensorRT {env.get('tensorrt')}, "
          f"cuda-python {env.get('cuda_python')}, GPU {env.get('gpu') or env.get('nvidia_smi')}", flush=True)
    for m in env["missing"]:
        print(f"  missing: {m}", flush=True)
    dry_run = not args.device.startswith("cuda")
    if not dry_run and not env.get("cuda_available") and not env.get("nvidia_smi"):
        print("no CUDA GPU here: nothing to test on a GPU (exit 0)")
        return 0
    if not dry_run and not env.get("cuda_available"):
        print("an NVIDIA driver is present but torch has no CUDA device: the PyTorch part is skipped", flush=True)
    else:
        bootstrap_imports()
        import torch

        from hrm_edge.model.config import preset_config
        from hrm_edge.model.hrm import HRM

        report["torch"] = {}
        try:
            torch.manual_seed(0)
            model = HRM(preset_config(args.preset))
            report["torch"][args.preset] = torch_precision_study(model, _val_set("sudoku"),
                                                                 f"{args.preset} (seeded, untrained)", args.quick,
                                                                 args.device)
            del model
        except Exception as exc:
            report["failures"].append(f"torch {args.preset}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        if ckpt.exists():
            try:
                from hrm_edge.model.checkpoint import load_checkpoint

                ck = load_checkpoint(ckpt)
                report["torch"]["demo"] = torch_precision_study(ck.model, _val_set(ck.task), str(args.checkpoint),
                                                                args.quick, args.device)
            except Exception as exc:
                report["failures"].append(f"torch demo: {type(exc).__name__}: {exc}")
                traceback.print_exc()
        else:
            report["torch"]["demo"] = {"skipped": f"no checkpoint at {ckpt} (set HRM_EDGE_DEMO_CKPT or --checkpoint)"}
    if dry_run:
        report["tensorrt"] = {"skipped": f"--device {args.device} (dry run)"}
    elif env.get("tensorrt") and env.get("cuda_python"):
        try:
            trt_report = tensorrt_study(env, ckpt, bundle, args.quick)
            report["tensorrt"] = trt_report
            report["failures"] += trt_report.get("failures", [])
        except Exception as exc:
            report["failures"].append(f"tensorrt: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    else:
        need = [m for m in env["missing"] if m.startswith(("tensorrt", "cuda-python"))]
        report["tensorrt"] = {"skipped": "missing: " + "; ".join(need)}
        print(f"TensorRT part skipped, missing: {'; '.join(need)}", flush=True)
    report["seconds"] = round(time.monotonic() - start, 1)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out} in {report['seconds']} s; {len(report['failures'])} failure(s)", flush=True)
    for f in report["failures"]:
        print(f"  FAIL {f}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--cli":
        run_cli(sys.argv[2:])
    sys.exit(main())
