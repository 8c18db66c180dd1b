"""What always_replay costs: engine CPU per step with it off and on, for runs of 10, 100 and
1000 steps on a MemoryStore (no I/O, so the engine's own cost is what shows).

    python tests/bench/always_replay.py [--pairs 5]

Off and on alternate within each pair; the table gives medians of the pairs. A replay after
every step makes a run of n steps cost O(n^2): use always_replay in tests, not in production.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from replaygen import Do, Interpreter, MemoryStore


def noop(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "x" * 80}


def seq(n: int) -> Any:
    for i in range(n):
        yield Do(f"s{i}", noop, i)
    return n


def cpu_per_step(steps: int, always_replay: bool) -> float:
    interp = Interpreter(MemoryStore(), {"seq": seq}, always_replay=always_replay)
    start = time.process_time()
    assert interp.run("seq", steps) == steps
    spent = time.process_time() - start
    interp.shutdown()
    return spent / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    a = ap.parse_args()
    print("steps  off (us CPU/step)  on (us CPU/step)  on/off")
    for steps in (10, 100, 1000):
        off, on = [], []
        for pair in range(a.pairs):
            for flag in ((False, True) if pair % 2 == 0 else (True, False)):
                (on if flag else off).append(cpu_per_step(steps, flag))
        mo, mn = statistics.median(off), statistics.median(on)
        print(f"{steps:5d}  {mo:17.1f}  {mn:16.1f}  {mn / mo:6.1f}x")


if __name__ == "__main__":
    main()
