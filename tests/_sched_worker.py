"""A worker process of the schedule tests: ``python -m tests._sched_worker STORE BOX NAME ...``

    --every N            the schedule ``beat`` ticks every N seconds (on the epoch grid)
    --overlap POLICY     its overlap policy (default: allow)
    --gated              its runs wait for the signal ``go`` before their step
    --clock-at T         the worker's clock starts at the instant T and runs at real speed
                         (every life of a killed worker starts at T again: the same tick is due)
    --kill before|after  SIGKILL this process right before, or right after, the ``start()`` of
                         a tick's run; the run id is noted first in BOX/kills

The worker builds ``Interpreter(store, workflows, schedules=[beat])``, calls ``recover()``,
writes BOX/NAME.ready, and serves until BOX/stop exists; then it shuts down gracefully. Each
run's one step records a line in BOX/effects (tests/_effects.py). STORE is JSON, as for
tests/_services_worker.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

from replaygen import Do, Interpreter, Schedule, Wait, current_step

from . import _effects
from ._services_worker import close, open_store, report, until


def note(box: str) -> int:
    return _effects.record(box, current_step().run_id, "note")


def beat(box: str) -> Any:
    return (yield Do("note", note, box))


def gated(box: str) -> Any:
    yield Wait("go")
    return (yield Do("note", note, box))


class StartedClock:
    """Reads ``start`` when built, then moves on at real speed."""

    def __init__(self, start: float) -> None:
        self._start, self._zero = start, time.monotonic()

    def now(self) -> float:
        return self._start + time.monotonic() - self._zero


def kill_at_start(box: str, when: str) -> None:
    """SIGKILL this process at the start() of a tick's run: the boundary between the
    scheduler's decision and the run being stored (``before``), or just after it (``after``)."""
    original = Interpreter.start

    def die(run_id: str) -> None:
        fd = os.open(os.path.join(box, "kills"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{when} {run_id}\n".encode())
        os.fsync(fd)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    def start(self: Interpreter, workflow: Any, *args: Any, run_id: str | None = None,
              **kwargs: Any) -> str:
        tick = run_id is not None and run_id.startswith("sched:")
        if tick and when == "before":
            die(str(run_id))
        done = original(self, workflow, *args, run_id=run_id, **kwargs)
        if tick and when == "after":
            die(done)
        return done

    Interpreter.start = start  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests._sched_worker")
    parser.add_argument("store")
    parser.add_argument("box")
    parser.add_argument("name")
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--overlap", default="allow")
    parser.add_argument("--gated", action="store_true")
    parser.add_argument("--clock-at", type=float)
    parser.add_argument("--kill", choices=("before", "after"))
    args = parser.parse_args()
    if args.kill:
        kill_at_start(args.box, args.kill)
    store = open_store(args.store)
    schedule = Schedule("beat", "gated" if args.gated else "beat", args.box, every=args.every,
                        overlap=args.overlap)
    interp = Interpreter(store, {"beat": beat, "gated": gated}, schedules=[schedule],
                         clock=None if args.clock_at is None else StartedClock(args.clock_at))
    interp.recover()
    report(os.path.join(args.box, f"{args.name}.ready"), {"worker": interp.worker_id})
    until("the stop file", lambda: os.path.exists(os.path.join(args.box, "stop")), cap=600.0)
    interp.shutdown(timeout=10)
    close(store)


if __name__ == "__main__":
    main()
