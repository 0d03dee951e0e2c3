"""Package a training run as a shipped demo checkpoint: model.pt with its card, CARD.md, eval.json/png.

    python scripts/package_demo.py RUN_DIR checkpoints/NAME --command "hrm-edge train ..."

The card's accuracy numbers are measured here by `hrm_edge.train.evaluate` (fp32 PyTorch reference on
the calib_data validation split), exactly what `hrm-edge eval` reproduces.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from hrm_edge.model.checkpoint import load_checkpoint, save_checkpoint
from hrm_edge.model.runner import TorchSegmentRunner
from hrm_edge.puzzles.datasets import calib_data_dir, load_puzzle_set
from hrm_edge.train.evaluate import evaluate, plot_report

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def table(report: dict) -> str:
    rows = ["| policy | exact | token | valid | mean segments | >1 segment |", "| --- | --- | --- | --- | --- | --- |"]
    for name, p in report["policies"].items():
        rows.append(f"| {name} | {100 * p['exact']:.1f}% | {100 * p['token']:.1f}% | {100 * p['valid']:.1f}% "
                    f"| {p['mean_segments']:.2f} | {100 * p['more_than_one_segment']:.0f}% |")
    names = list(report["policies"])
    rows += ["", "| bucket | n | " + " | ".join(f"exact ({n})" for n in names) + " | " +
             " | ".join(f"segments ({n})" for n in names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names * 2) + " |"]
    first = report["policies"][names[0]]["buckets"]
    for bucket, entry in first.items():
        exact = " | ".join(f"{100 * report['policies'][n]['buckets'][bucket]['exact']:.1f}%" for n in names)
        segs = " | ".join(f"{report['policies'][n]['buckets'][bucket]['mean_segments']:.2f}" for n in names)
        rows.append(f"| {bucket} | {entry['count']} | {exact} | {segs} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--command", required=True, help="The training command(s), for the card.")
    ap.add_argument("--note", default="", help="Extra text for the card (departures, limits).")
    ap.add_argument("--demo-puzzles", type=int, default=8)
    args = ap.parse_args()

    ck = load_checkpoint(args.run_dir / "model.pt")
    task = ck.task
    pset = load_puzzle_set(calib_data_dir(task), split="val")
    data_name = f"calib_data/{calib_data_dir(task).name}"
    report = evaluate(TorchSegmentRunner(ck.model.set_compute_dtype("float32")), pset, ck.config.halt_max_steps)
    report.update(checkpoint=str(args.out_dir / "model.pt"), data=data_name,
                  runtime="torch cpu float32")
    train = ck.card.get("train_config", {})
    threads = train.get("threads") or torch.get_num_threads()
    card = {
        "task": task, "family": ck.config.family, "parameters": ck.model.parameter_count(),
        "config": ck.config.to_dict(), "training_command": args.command, "seed": train.get("seed"),
        "train_steps": ck.card.get("step"), "puzzles_seen": ck.card.get("puzzles_seen"),
        "wall_minutes": ck.card.get("wall_minutes"), "hardware": f"{cpu_name()}, {threads} training thread(s)",
        "torch": str(torch.__version__), "data": ck.card.get("train_config", {}).get("extra", {}),
        "validation": f"{data_name} val ({len(pset)} puzzles, disjoint from calibration)",
        "accuracy": {name: {k: p[k] for k in ("exact", "token", "valid", "mean_segments", "more_than_one_segment")}
                     for name, p in report["policies"].items()},
        "recipe_departures": ck.card.get("recipe_departures"), "note": args.note,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out_dir / "model.pt", ck.model, task,
                    provenance={"trained_by": "hrm-edge train", "run": args.run_dir.name}, card=card)
    (args.out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    plot_report(report, str(args.out_dir / "eval.png"))
    codec = pset.codec
    demo = [codec.decode(t) for t in pset.inputs[np.linspace(0, len(pset) - 1, args.demo_puzzles).astype(int)]]
    separator = "\n\n" if any("\n" in text for text in demo) else "\n"  # grids (mazes) need blank lines
    (args.out_dir / "demo.txt").write_text(f"# {args.demo_puzzles} puzzles from {data_name} val\n"
                                           + separator.join(demo) + "\n")
    data_kind = ("generated mazes, dihedral augmentation" if task.startswith("maze")
                 else "generated unique puzzles, augmented, givens curriculum")
    md = [f"# {args.out_dir.name}", "", f"{ck.config.family.upper()} for `{task}`, "
          f"{card['parameters']:,} parameters, {ck.config.halt_max_steps} ACT segments at most.", "",
          "## Training", "", f"- command: `{args.command}`", f"- seed: {card['seed']}",
          f"- steps: {card['train_steps']}, puzzles seen: {card['puzzles_seen']}, wall time: "
          f"{card['wall_minutes']} min", f"- hardware: {card['hardware']}, torch {card['torch']}",
          f"- data: {data_kind} ({json.dumps(card['data'])})",
          f"- departures from the official recipe: {', '.join(card['recipe_departures'] or [])}", "",
          "## Accuracy (fp32 PyTorch reference, `hrm-edge eval` reproduces it)", "",
          f"On {card['validation']}.", "", table(report), "", "![eval](eval.png)", ""]
    if args.note:
        md += ["## Notes", "", args.note, ""]
    (args.out_dir / "CARD.md").write_text("\n".join(md))
    print(json.dumps(card["accuracy"], indent=1))


if __name__ == "__main__":
    main()
