"""The application of the service tests: a module of ``@workflow`` workflows, as a user writes
one. A whole worker is ``import tests._service_app; Interpreter(store).recover()``.

Every step records itself in ``BOX/effects`` (see ``tests._effects``), so a test can count
executions per step and see which process ran each one.
"""

from __future__ import annotations

import os
import time
from typing import Any

from replaygen import Do, workflow

from . import _effects


def _step(box: str, key: str, i: int, hold: bool) -> int:
    _effects.record(box, key, i, "B")
    if hold:  # until the test opens BOX/open or BOX/open-KEY
        gates = (os.path.join(box, "open"), os.path.join(box, f"open-{key}"))
        _effects.wait(f"a gate of {key}", lambda: any(map(os.path.exists, gates)))
    _effects.record(box, key, i, "E")
    return i * i


@workflow
def order(box: str, key: str, steps: int, hold: int = -1) -> Any:
    """``steps`` steps; step ``hold`` blocks until the test opens its gate."""
    total = 0
    for i in range(steps):
        total += yield Do(f"step-{i}", _step, box, key, i, i == hold)
    return {"key": key, "total": total}


def _visit(box: str, key: str) -> int:
    _effects.record(box, key, "visit")
    # Keep the slot until two processes have run a step: a worker that claimed more runs than
    # it has free slots would leave its peer none, and this would give up (the test fails).
    _effects.wait("a second worker to run a step",
                  lambda: len({p for *_, p in _effects.lines(box)}) >= 2, cap=20.0)
    return os.getpid()


@workflow
def fan(box: str, key: str) -> Any:
    """One step; it says which process ran it."""
    pid = yield Do("visit", _visit, box, key)
    return {"key": key, "pid": pid}


def _nap(box: str, key: str, seconds: float) -> int:
    _effects.record(box, key, "nap")
    time.sleep(seconds)  # the work itself: the benchmark times how workers share it
    return os.getpid()


@workflow
def nap(box: str, key: str, seconds: float) -> Any:
    """One step of ``seconds`` of work (tests/bench/spread.py)."""
    return (yield Do("nap", _nap, box, key, seconds))
