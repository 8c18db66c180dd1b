"""Schedules across worker processes, with real SIGKILL, on SQLite and on PostgreSQL.

The workers are tests/_sched_worker.py; each run's one step records its execution (with the
pid) in a file outside the store (tests/_effects.py). Tests wait for events in the store or
in files, never for a guessed time. The in-process tests are in tests/test_schedules.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from replaygen import Client, Store
from replaygen.schedules import tick_text

from . import _effects
from ._services_worker import close, open_store
from .pg import postgres_dsn

ROOT = Path(__file__).resolve().parent.parent
PATIENCE = 60.0
"""Longest a test waits for one event before it fails."""


class Workers:
    """One test's store, box of files and worker processes."""

    def __init__(self, box: Path, spec: str) -> None:
        self.box, self.spec = box, spec
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.dead: set[str] = set()  # killed, as the test meant
        self.store: Store = open_store(spec)

    def spawn(self, name: str, *options: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.box / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tests._sched_worker", self.spec, str(self.box), name,
                 *options], cwd=ROOT, env=env, stdout=out, stderr=out)
        return self.procs[name]

    def until(self, what: str, ready: Callable[[], object], dying: tuple[str, ...] = ()) -> None:
        """Poll ``ready()``; fail after PATIENCE, or at once if a worker exits that was not
        expected to (``dying``)."""
        end = time.monotonic() + PATIENCE
        while not ready():
            for name, proc in self.procs.items():
                if name not in (*dying, *self.dead) and proc.poll() not in (None, 0):
                    raise AssertionError(f"{name} exited with {proc.returncode} while the test "
                                         f"waited for {what}:\n{self.log(name)}")
            if time.monotonic() > end:
                raise AssertionError(f"gave up after {PATIENCE}s waiting for {what}\n"
                                     + "\n".join(f"--- {n}:\n{self.log(n)}" for n in self.procs))
            time.sleep(0.02)

    def ready(self, *names: str) -> None:
        self.until(f"{', '.join(names)} to be ready",
                   lambda: all((self.box / f"{n}.ready").exists() for n in names))

    def killed(self, name: str) -> None:
        """Wait for ``name`` to die by SIGKILL (it kills itself)."""
        self.until(f"{name} to kill itself", lambda: self.procs[name].poll() is not None, (name,))
        assert self.procs[name].returncode == -signal.SIGKILL, self.log(name)
        self.dead.add(name)

    def stop(self) -> None:
        (self.box / "stop").touch()
        for name, proc in self.procs.items():
            if name not in self.dead:
                assert proc.wait(timeout=PATIENCE) == 0, self.log(name)

    def state(self, run_id: str) -> str | None:
        record = self.store.get(run_id)
        return None if record is None else record.state

    def ticks(self) -> list[str]:
        return sorted(r.run_id for r in self.store.runs(limit=100_000)
                      if r.run_id.startswith("sched:beat:"))

    def notes(self) -> Counter[str]:
        """How many times each run's step ran."""
        return Counter(key for mark, key, _, _ in _effects.lines(str(self.box)) if mark == "B")

    def log(self, name: str) -> str:
        return (self.box / f"{name}.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        close(self.store)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workers]:
    """A fresh SQLite file, or a fresh schema in the test PostgreSQL database."""
    schema = dsn = None
    if request.param == "sqlite":
        spec: dict[str, str] = {"sqlite": str(tmp_path / "runs.db")}
    else:
        dsn, schema = postgres_dsn(), f"rgsched_{uuid.uuid4().hex[:12]}"
        spec = {"postgres": dsn, "schema": schema}
    box = tmp_path / "box"
    box.mkdir()
    w = Workers(box, json.dumps(spec))
    try:
        yield w
    finally:
        w.close()
        if schema is not None:
            from replaygen.stores.postgres import PostgresStore

            PostgresStore.drop_schema(dsn or "", schema)


@pytest.mark.slow
def test_three_worker_processes_fire_each_tick_of_an_every_schedule_exactly_once(
        workers: Workers) -> None:
    w = workers
    for name in ("a", "b", "c"):
        w.spawn(name, "--every", "1")
    w.ready("a", "b", "c")
    # The five ticks after all three serve: each must be fired, and its step run, once.
    first = math.ceil(time.time())
    wanted = [f"sched:beat:{tick_text(first + k)}" for k in range(5)]
    w.until("five ticks fired by three workers to complete",
            lambda: all(w.state(r) == "completed" for r in wanted))
    w.stop()
    ticks, notes = w.ticks(), w.notes()
    assert set(wanted) <= set(ticks)
    seconds = [datetime.strptime(t[len("sched:beat:"):], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp() for t in ticks]
    assert seconds == [seconds[0] + k for k in range(len(seconds))]  # no tick missed
    assert all(notes[r] == 1 for r in ticks if w.state(r) == "completed"), notes
    assert set(notes) <= set(ticks) and max(notes.values()) == 1  # none ran twice


@pytest.mark.slow
def test_a_worker_killed_right_before_and_right_after_starting_a_tick_fires_it_once(
        workers: Workers) -> None:
    w = workers
    hour = "2026-12-05T13:00:00Z"  # every life's clock starts at this tick: it is due
    at = datetime.fromisoformat(hour.replace("Z", "+00:00")).timestamp()
    run_id = f"sched:beat:{hour}"
    options = ("--every", "3600", "--overlap", "skip", "--gated", "--clock-at", str(at))
    w.spawn("before", *options, "--kill", "before")
    w.killed("before")  # between the scheduler's decision and the run being stored
    assert (w.box / "kills").read_text() == f"before {run_id}\n"
    assert w.state(run_id) is None
    w.spawn("after", *options, "--kill", "after")
    w.killed("after")  # the run is stored; its worker is dead
    assert (w.box / "kills").read_text().splitlines()[1] == f"after {run_id}"
    assert w.state(run_id) in ("pending", "waiting")  # its worker may have begun it
    w.spawn("last", *options)
    w.ready("last")  # its recover() resumes the run; its scheduler finds the tick fired
    w.until("the run to wait for its signal", lambda: w.state(run_id) == "waiting")
    Client(w.store).deliver(run_id, "go")
    w.until("the run to complete", lambda: w.state(run_id) == "completed")
    w.stop()
    assert w.ticks() == [run_id]
    assert w.notes() == {run_id: 1}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_crash_harness_schedule_scenario_passes(store: str) -> None:
    """``python -m crash --only schedule``: the same boundary, checked by the harness's
    invariants (the tick's run completes with the uncrashed result, no step re-executed)."""
    dsn = ["--dsn", postgres_dsn()] if store == "postgres" else []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "crash", "--only", "schedule", "--store", store,
                        *dsn], cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    [row] = [line for line in p.stdout.splitlines() if line.rstrip().endswith(("PASS", "FAIL"))]
    assert row.startswith("between a tick's computation and its start") and row.split()[-4:-2] == [
        "2", "2"] and row.endswith("PASS")  # two kills, two restarts
