"""Side effects the service tests count (imported by the apps, never by a worker's own code).

Each step execution appends one line ``MARK KEY STEP PID`` to ``BOX/effects`` (``B`` when
it begins, ``E`` when it ends), with one ``write`` on an ``O_APPEND`` file and an fsync, so
lines of concurrent processes never interleave and a SIGKILL loses none that was written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

CAP = 60.0
"""Longest a step waits for something the test is to do; past it the step raises."""


def record(box: str, key: str, step: object, mark: str = "B") -> int:
    fd = os.open(os.path.join(box, "effects"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{mark} {key} {step} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return os.getpid()


def lines(box: str) -> list[tuple[str, str, str, int]]:
    """Every recorded line as (mark, key, step, pid)."""
    try:
        with open(os.path.join(box, "effects")) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [(m, k, s, int(p)) for m, k, s, p in (line.split() for line in text.splitlines())]


def wait(what: str, ready: Callable[[], bool], cap: float = CAP) -> None:
    """Poll until ``ready()``; raise TimeoutError naming ``what`` after ``cap`` seconds."""
    end = time.monotonic() + cap
    while not ready():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up after {cap}s waiting for {what}")
        time.sleep(0.005)
