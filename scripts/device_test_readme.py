"""The device's commands in a bundle's README-device.md, as a bash script on stdout (scripts/device_test.sh).

Every ```bash block outside the sections whose heading names TensorRT, in order, verbatim: the README is what
`make device-test` runs, so a command that does not work there fails the test. Standard library only (it runs
on the host with whatever python3 is there).

Usage: python3 scripts/device_test_readme.py BUNDLE/README-device.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SKIPPED_SECTIONS = re.compile(r"tensorrt", re.IGNORECASE)  # needs the GPU and NVIDIA's bindings


def device_commands(readme: str) -> list[str]:
    """The lines of every ```bash block of `readme` outside a TensorRT section, in order."""
    commands: list[str] = []
    heading, block = "", None
    for line in readme.splitlines():
        if block is None and line.startswith("#"):
            heading = line
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            if not SKIPPED_SECTIONS.search(heading):
                commands += block
            block = None
        elif block is not None:
            block.append(line)
    if block is not None:
        raise SystemExit("error: README-device.md: a ```bash block is not closed")
    return commands


def main(path: str) -> None:
    commands = device_commands(Path(path).read_text())
    if not commands:
        raise SystemExit(f"error: {path}: no ```bash block outside the TensorRT section")
    print("\n".join(commands))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1])
