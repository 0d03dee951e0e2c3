"""Prefix every line of stdin, and every tqdm refresh (a carriage return), with the seconds since start.

    hrm-edge export CKPT -o OUT --int8 2>&1 | python -u scripts/ts.py > log.txt
"""

import sys
import time


def main() -> None:
    t0 = time.time()
    buf = ""
    while True:
        ch = sys.stdin.read(1)
        if not ch:
            break
        if ch in "\r\n":
            if buf.strip():
                sys.stdout.write(f"{time.time() - t0:9.1f} {buf}\n")
                sys.stdout.flush()
            buf = ""
        else:
            buf += ch


if __name__ == "__main__":
    main()
