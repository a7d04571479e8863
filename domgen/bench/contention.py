"""Busy processes beside a measurement: the normal state of a shared workstation or cluster node.

``busy_processes(n)`` starts ``n`` Python processes that each spin one core (what a colleague's test
run or a second job does to ours) and stops them when the block ends, on error too. Each also exits by
itself when its parent is gone, so an interrupted benchmark leaves nothing spinning.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

MAX_BUSY = 8  # a benchmark never starts more than this many busy processes

# Spins until its parent changes (the benchmark died and the child was re-parented).
_SPIN = "import os\np = os.getppid()\nwhile os.getppid() == p:\n    pass\n"


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """Run ``n`` (0..``MAX_BUSY``) one-core busy loops for the duration of the block; yields their pids."""
    if not 0 <= n <= MAX_BUSY:
        raise ValueError(f"--contention {n}: choose 0..{MAX_BUSY} busy processes")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONPATH": ""}))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def conditions(contention: int) -> dict[str, int]:
    """Measurement conditions: always idle, plus ``contention`` busy processes when asked."""
    return {"idle": 0, "contended": contention} if contention else {"idle": 0}
