"""Helpers shared by the benchmark worker scripts. Standard library only: this module is also
imported by bench_dbos.py, which runs in DBOS's own virtual environment without replaygen."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

PAYLOAD = "x" * 80


def noop(i: int) -> dict[str, Any]:
    """The step every workload runs: a no-op returning a ~100-byte dict."""
    return {"i": i, "ok": True, "payload": PAYLOAD}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def emit(**fields: Any) -> None:
    """Report the measurement to the orchestrator: one JSON line on stdout, prefixed."""
    sys.stdout.write("RESULT " + json.dumps(fields) + "\n")
    sys.stdout.flush()




def now() -> float:
    return time.perf_counter()
