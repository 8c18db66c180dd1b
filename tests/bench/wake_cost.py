"""What a commit that sleeps in the kernel costs the engine's own code: W1 on the in-memory
store, with each commit followed by nothing, a real ``pwrite`` + ``fdatasync`` of 8 KiB on
this disk, a 150 us ``time.sleep``, or a 150 us busy spin.

    python tests/bench/wake_cost.py [--steps 2000] [--reps 3]

Per variant: wall and CPU us per step, the bare cost of the wait alone (the same call in a
loop), and the engine's share (the difference). The engine does the same work in every
variant; what changes is whether its thread slept between steps. On this 2-core VM a thread
that slept in ``fdatasync`` runs the same Python about 1.7x slower afterwards (cold caches,
a vCPU woken), which is why W1 on SQLite FULL sits further from the bare commit floor than
W1 on NORMAL: the floor's loop has little Python to slow down.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import noop  # noqa: E402

from replaygen import Do, Interpreter  # noqa: E402
from replaygen.store import MemoryStore  # noqa: E402


def seq(n: int) -> Any:
    for i in range(n):
        yield Do(f"s{i}", noop, i)
    return n


class Waiting(MemoryStore):
    """The in-memory store, waiting in ``wait`` after each commit."""

    def __init__(self, wait: Callable[[], None]) -> None:
        super().__init__()
        self.wait = wait

    def commit(self, writes: Any) -> list[bool | None]:
        done = super().commit(writes)
        self.wait()
        return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    fd = os.open(os.path.join(tempfile.mkdtemp(), "scratch"), os.O_RDWR | os.O_CREAT)
    page = b"x" * 8192

    def fsync() -> None:
        os.pwrite(fd, page, 0)
        os.fdatasync(fd)

    def spin() -> None:
        end = time.perf_counter() + 150e-6
        while time.perf_counter() < end:
            pass

    waits: dict[str, Callable[[], None] | None] = {
        "none": None, "fdatasync": fsync, "sleep 150us": lambda: time.sleep(150e-6),
        "spin 150us": spin}
    n = args.steps
    for rep in range(args.reps):
        cells = []
        for name, wait in waits.items():
            store = MemoryStore() if wait is None else Waiting(wait)
            interp = Interpreter(store, {"seq": seq})
            interp.run("seq", 20)
            t0, c0 = time.perf_counter(), time.process_time()
            interp.run("seq", n)
            wall, cpu = (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6
            interp.shutdown()
            bare_wall = bare_cpu = 0.0
            if wait is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(n):
                    wait()
                bare_wall = (time.perf_counter() - t0) / n * 1e6
                bare_cpu = (time.process_time() - c0) / n * 1e6
            cells.append(f"{name}: {wall:.0f} wall / {cpu:.0f} CPU us a step, the wait alone "
                         f"{bare_wall:.0f} / {bare_cpu:.0f}, engine {wall - bare_wall:.0f} / "
                         f"{cpu - bare_cpu:.0f}")
        print(f"rep {rep + 1}:\n  " + "\n  ".join(cells), flush=True)
    os.close(fd)


if __name__ == "__main__":
    main()
