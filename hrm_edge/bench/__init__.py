"""`hrm-edge bench`: side-by-side measurements of product code paths. Never imported by product code.

Modules: `suite` (the run: settings to bench.json), `configs` (the runtime configurations),
`prepare` (models and their graphs), `launch` + `worker` (the measurement processes, both sides),
`pausing` (keeping other processes off the cores), `rows` (result rows, ratios, targets),
`report` (bench.md and the plots).
"""

from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]  # the source checkout: demo checkpoints, the workers' directory


def log(msg: str) -> None:
    """A progress line on stderr."""
    click.echo(msg, err=True)
